"""The boundary weight map: exact against brute force, incremental = full, targets."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.draw import disk, ellipse
from skimage.segmentation import expand_labels

from napari_unet.core.weightmap import (
    IGNORE_INDEX,
    WeightMapCache,
    boundary_weight_map,
    carve_gaps,
    cutoff_distance,
    training_targets,
)


def brute_border(plane, w0=10.0, sigma=5.0, sampling=(1.0, 1.0)):
    """Distance from every pixel to every cell (one full EDT per cell), the two smallest,
    the formula, on background pixels only (float64)."""
    ids = [i for i in np.unique(plane) if i != 0]
    if len(ids) < 2:
        return np.zeros(plane.shape)
    d = np.sort(np.stack([ndi.distance_transform_edt(plane != i, sampling=sampling)
                          for i in ids]), axis=0)
    border = w0 * np.exp(-((d[0] + d[1]) ** 2) / (2 * sigma**2))
    return np.where(plane == 0, border, 0.0)


def brute_force(labels, w0=10.0, sigma=5.0, sampling=(1.0, 1.0)):
    """The reference weight map and its border term (stacks plane by plane)."""
    fg = (labels > 0).astype(int)
    counts = np.bincount(fg.ravel(), minlength=2)
    present = counts > 0
    table = np.ones(2)
    table[present] = counts.sum() / (present.sum() * counts[present])
    planes = [labels] if labels.ndim == 2 else list(labels)
    border = np.stack([brute_border(p, w0, sigma, sampling) for p in planes])
    border = border.reshape(labels.shape)
    return table[fg] + border, border


def check_exact(labels, w0=10.0, sigma=5.0, sampling=None):
    before = labels.copy()
    fast = boundary_weight_map(labels, w0=w0, sigma=sigma, sampling=sampling)
    np.testing.assert_array_equal(labels, before)  # input untouched
    ref, border = brute_force(labels, w0, sigma, sampling or (1.0, 1.0))
    assert fast.dtype == np.float32 and fast.shape == labels.shape
    matters = border > 1e-6 * w0
    # where the border term matters: equal to brute force within 1e-4
    assert np.abs(fast - ref)[matters].max(initial=0) <= 1e-4
    # elsewhere the border term (below 1e-6 w0) is dropped: w_c alone, to float32
    assert np.abs(fast - ref)[~matters].max(initial=0) <= 1e-6 * w0 + 1e-5
    assert matters.sum() > 0 or len(np.unique(labels)) < 3
    return fast


def touching_disks(shape=(120, 140), n=25, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    for i in range(1, n + 1):
        rr, cc = disk((rng.uniform(0, shape[0]), rng.uniform(0, shape[1])), rng.uniform(4, 12),
                      shape=shape)
        labels[rr, cc] = i
    return expand_labels(labels, 2)  # grow them into each other: many contacts


def voronoi_cells(size, n, seed=0, fill=0.55):
    """Random seeds grown into each other (Voronoi-like): large cells in contact."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), np.int32)
    pts = rng.integers(0, size, (n, 2))
    labels[pts[:, 0], pts[:, 1]] = np.arange(1, n + 1)
    return expand_labels(labels, fill * size / np.sqrt(n))


def test_touching_disks():
    check_exact(touching_disks())


@pytest.mark.parametrize("seed", [0, 1])
def test_voronoi_cells_larger_than_the_cutoff(seed):
    labels = voronoi_cells(160, 12, seed)
    assert ((labels[:, 1:] != labels[:, :-1]) & (labels[:, 1:] > 0)
            & (labels[:, :-1] > 0)).any()  # they touch
    check_exact(labels, sigma=3.0)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32,
                                   np.uint32, np.int64, np.uint64, ">i4"])
def test_any_integer_dtype(dtype):
    labels = touching_disks((48, 56), 9, seed=2)
    labels = (labels % 100).astype(dtype)
    check_exact(labels, sigma=3.0)


def test_bool_labels_are_one_cell_per_blob():
    """A bool mask is read as one cell per connected blob (the one rule of core.labels)."""
    from skimage.measure import label as connected

    mask = np.zeros((30, 40), bool)
    mask[5:15, 5:15] = mask[5:15, 17:30] = True  # two blobs, 2 pixels apart
    np.testing.assert_array_equal(boundary_weight_map(mask, class_weights=None),
                                  boundary_weight_map(connected(mask, connectivity=1),
                                                      class_weights=None))
    assert boundary_weight_map(mask, class_weights=None)[10, 16] > 5, "a ridge between them"


def test_huge_ids_and_no_background_anywhere():
    labels = np.zeros((12, 14), np.int64)
    labels[:, :5], labels[:, 5:9], labels[:, 9:] = 10**12, 10**12 + 7, 2**40
    np.testing.assert_array_equal(boundary_weight_map(labels, class_weights=None), 1.0)
    labels[3:6, 4:10] = 0
    check_exact(labels, sigma=2.0)
    check_exact(labels.astype(np.uint64) + np.uint64(2**63) * (labels > 0), sigma=2.0)


def test_ellipses_non_sequential_ids_and_uint8():
    labels = np.zeros((90, 100), np.uint8)
    for k, (r, c, a, b, rot) in enumerate([(30, 30, 20, 8, 0.3), (45, 50, 12, 25, 1.2),
                                           (70, 80, 10, 15, 0.0)]):
        rr, cc = ellipse(r, c, a, b, shape=labels.shape, rotation=rot)
        labels[rr, cc] = [7, 200, 31][k]
    check_exact(labels, sigma=4.0)


def test_cells_touching_the_image_border_and_one_pixel_cells():
    labels = np.zeros((40, 50), np.int64)
    labels[:10, :12] = 3
    labels[:10, 12:20] = 9
    labels[39, 49] = 4
    labels[20, 20] = 5
    labels[22, 20] = 6
    labels[35:, :5] = 8
    check_exact(labels, sigma=3.0)


def test_non_convex_cells():
    labels = np.zeros((60, 60), np.int32)
    labels[10:50, 10:15] = 1
    labels[10:15, 10:50] = 1  # an L
    labels[20:45, 20:45] = 2
    labels[30:40, 30:50] = 0  # a C-shaped cell
    labels[32:38, 32:48] = 3  # a cell inside the C
    check_exact(labels)


def test_anisotropic_sampling():
    check_exact(touching_disks((60, 70), 10, seed=3), sigma=4.0, sampling=(2.0, 0.7))


def test_random_sizes_and_parameters():
    rng = np.random.default_rng(7)
    for seed in range(4):
        sigma = rng.uniform(1.5, 8)
        check_exact(touching_disks((64, 80), int(rng.integers(2, 20)), seed=seed), sigma=sigma,
                    w0=rng.uniform(1, 20))


def test_zero_or_one_cell_gives_class_balance_only():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = boundary_weight_map(np.zeros((20, 30), np.int32))
        np.testing.assert_array_equal(empty, 1.0)
        one = np.zeros((20, 30), np.int32)
        one[5:10, 5:10] = 4
        w = boundary_weight_map(one)
    assert np.isfinite(w).all()
    np.testing.assert_allclose(np.unique(w), [600 / (2 * 575), 600 / (2 * 25)], rtol=1e-6)


def test_stack_is_plane_by_plane_and_input_untouched():
    a, b = touching_disks((50, 60), 8, 1), touching_disks((50, 60), 8, 2)
    stack = np.stack([a, b, np.zeros_like(a)])
    before = stack.copy()
    w = boundary_weight_map(stack, class_weights=None)
    np.testing.assert_array_equal(stack, before)
    np.testing.assert_array_equal(w[0], boundary_weight_map(a, class_weights=None))
    np.testing.assert_array_equal(w[1], boundary_weight_map(b, class_weights=None))
    np.testing.assert_array_equal(w[2], 1.0)
    check_exact(stack, sigma=3.0, sampling=(1.5, 1.0))  # balance over the whole stack


def test_class_weights_options():
    labels = touching_disks((50, 60), 8, 1)
    base = boundary_weight_map(labels, class_weights=None)
    explicit = boundary_weight_map(labels, class_weights={0: 1.0, 1: 3.0})
    np.testing.assert_allclose(explicit - base, np.where(labels > 0, 2.0, 0.0), atol=1e-5)
    with pytest.raises(ValueError, match="class_weights"):
        boundary_weight_map(labels, class_weights="median")


def test_bad_input():
    with pytest.raises(ValueError, match="integer"):
        boundary_weight_map(np.full((5, 5), 0.5))
    for bad in (np.zeros((2, 2, 2, 2), int), np.zeros((2, 2, 2, 2)), np.zeros(5, bool)):
        with pytest.raises(ValueError, match="2D"):
            boundary_weight_map(bad)
    with pytest.raises(ValueError, match="sampling"):
        boundary_weight_map(np.zeros((5, 5), int), sampling=(1, -1))
    with pytest.raises(ValueError, match="sigma"):
        boundary_weight_map(np.zeros((5, 5), int), sigma=0)
    with pytest.raises(ValueError, match="w0"):
        boundary_weight_map(np.zeros((5, 5), int), w0=-1)
    with pytest.raises(ValueError, match="ignore_value"):
        boundary_weight_map(np.array([[0, 1], [2, -1]]))
    with pytest.raises(ValueError, match="needs 2 weights"):
        boundary_weight_map(np.zeros((5, 5), int), class_weights=[1, 2, 3])
    # whole-number floats are accepted as ids
    labels = touching_disks((30, 40), 5, 0)
    np.testing.assert_array_equal(boundary_weight_map(labels.astype(float)),
                                  boundary_weight_map(labels))


def test_cutoff_is_where_the_term_is_negligible():
    sigma = 5.0
    d = cutoff_distance(sigma)
    assert np.exp(-(d**2) / (2 * sigma**2)) == pytest.approx(1e-6)


# --------------------------------------------------------------------- cache
def paint_stroke(labels, rng, width, value):
    r0, c0 = rng.integers(0, labels.shape[0]), rng.integers(0, labels.shape[1])
    r1, c1 = np.clip([r0 + rng.integers(-60, 60), c0 + rng.integers(-60, 60)], 0,
                     np.array(labels.shape) - 1)
    box = [labels.shape[0], labels.shape[1], 0, 0]
    for t in np.linspace(0, 1, 20):
        rr, cc = disk((r0 + t * (r1 - r0), c0 + t * (c1 - c0)), width / 2, shape=labels.shape)
        labels[rr, cc] = value
        if len(rr):
            box = [min(box[0], rr.min()), min(box[1], cc.min()), max(box[2], rr.max() + 1),
                   max(box[3], cc.max() + 1)]
    return (slice(box[0], box[2]), slice(box[1], box[3]))


def test_incremental_updates_equal_full_recomputation():
    rng = np.random.default_rng(11)
    labels = touching_disks((160, 200), 40, seed=5)
    cache = WeightMapCache(labels, sigma=4.0)
    np.testing.assert_array_equal(cache.weights, boundary_weight_map(labels, sigma=4.0))
    for k in range(12):
        value = 0 if k % 4 == 3 else int(rng.integers(1, 60))  # paint, new cells, erase
        box = paint_stroke(labels, rng, int(rng.integers(3, 30)), value)
        region = cache.update(labels, box)
        np.testing.assert_array_equal(cache.weights, boundary_weight_map(labels, sigma=4.0))
        assert all(isinstance(s, slice) for s in region)


def test_cache_region_covers_every_change_and_accepts_indices():
    rng = np.random.default_rng(3)
    labels = touching_disks((120, 150), 25, seed=8)
    kw = dict(w0=8.0, sigma=3.0, class_weights={0: 1.0, 1: 2.0}, sampling=(1.3, 0.8))
    cache = WeightMapCache(labels, **kw)
    for k in range(6):
        before = boundary_weight_map(labels, **kw)
        edited = labels.copy()
        rr, cc = disk(tuple(rng.integers(10, 110, 2)), int(rng.integers(2, 9)),
                      shape=labels.shape)
        edited[rr, cc] = 0 if k == 2 else 90 + k
        changed = np.nonzero(edited != labels)
        region = cache.update(edited, changed if k % 2 else (rr, cc))
        labels = edited
        after = boundary_weight_map(labels, **kw)
        np.testing.assert_allclose(cache.weights, after, rtol=0, atol=1e-6)
        outside = np.ones(labels.shape, bool)
        outside[region] = False
        np.testing.assert_array_equal(before[outside], after[outside])
        assert not cache.balance_changed  # explicit class weights never change
    assert cache.update(labels, (np.array([], int), np.array([], int))) == (slice(0, 0),) * 2


def test_cache_follows_the_balance_and_wider_ids():
    labels = np.zeros((60, 60), np.uint8)
    labels[10:30, 10:30] = 1
    cache = WeightMapCache(labels)
    _ = cache.weights
    edited = labels.astype(np.int32)
    edited[10:30, 30:50] = 1000  # beyond uint8, and doubles the foreground
    cache.update(edited, (slice(10, 30), slice(30, 50)))
    assert cache.balance_changed
    np.testing.assert_array_equal(cache.weights, boundary_weight_map(edited))
    with pytest.raises(ValueError, match="positive"):
        cache.update(edited - 1)


def test_cache_without_box_and_bad_shape():
    labels = touching_disks((40, 50), 5, 0)
    cache = WeightMapCache(labels)
    labels[:, :10] = 0
    cache.update(labels)
    np.testing.assert_array_equal(cache.weights, boundary_weight_map(labels))
    with pytest.raises(ValueError, match="changed shape"):
        cache.update(np.zeros((3, 3), int))
    with pytest.raises(ValueError, match="2D"):
        WeightMapCache(np.zeros((2, 5, 5), int))


# ------------------------------------------------------------------- targets
def test_carving_separates_touching_cells():
    labels = touching_disks()
    for gap in (1, 2):
        carved = carve_gaps(labels, gap)
        assert set(np.unique(carved)) <= set(np.unique(labels))
        components = ndi.label(carved > 0)[0]  # 4-connectivity
        for comp in range(1, components.max() + 1):
            assert len(np.unique(carved[components == comp])) == 1
    one = np.zeros((3, 6), int)
    one[:, :3], one[:, 3:] = 1, 2
    assert (carve_gaps(one, 1) == 0).sum() == 3 and (carve_gaps(one, 2) == 0).sum() == 6
    np.testing.assert_array_equal(carve_gaps(one, 0), one)


def test_targets_binary_with_weights_on_the_carved_gaps():
    labels = touching_disks()
    classes, weights = training_targets(labels, gap=1)
    assert classes.dtype == np.uint8 and weights.dtype == np.float32
    carved = carve_gaps(labels, 1)
    np.testing.assert_array_equal(classes, (carved > 0).astype(np.uint8))
    np.testing.assert_allclose(weights, boundary_weight_map(carved), atol=1e-6)
    gaps = (labels > 0) & (carved == 0)
    assert weights[gaps].mean() > 3 * weights[labels == 0].mean()


def test_targets_ignore_value():
    labels = touching_disks((60, 70), 10, 4)
    labels[:20] = -1
    classes, weights = training_targets(labels, ignore_value=-1)
    assert (classes[:20] == IGNORE_INDEX).all() and (weights[:20] == 0).all()
    assert set(np.unique(classes[20:])) <= {0, 1}
    # a positive label value as "not annotated"; balance over annotated pixels only
    labels[:20] = 77
    classes2, weights2 = training_targets(labels, ignore_value=77)
    np.testing.assert_array_equal(classes2, classes)
    np.testing.assert_array_equal(weights2, weights)
    annotated = classes != IGNORE_INDEX
    _, plain = training_targets(labels, ignore_value=77, w0=0)
    sums = [plain[annotated & (classes == c)].sum() for c in (0, 1)]
    assert sums[0] == pytest.approx(sums[1], rel=1e-4) and sums[0] > 0
    with pytest.raises(ValueError, match="ignore_value"):
        training_targets(np.where(labels == 77, -1, labels))


def test_targets_gap_zero_and_stacks():
    labels = np.stack([touching_disks((40, 50), 6, s) for s in (0, 1)])
    classes, weights = training_targets(labels, gap=0, class_weights=None, w0=5, sigma=2)
    np.testing.assert_array_equal(classes, (labels > 0).astype(np.uint8))
    np.testing.assert_allclose(weights, brute_force(labels, 5, 2)[1] + 1, atol=1e-4)
    classes, _ = training_targets(labels, gap=2)
    np.testing.assert_array_equal(classes, carve_gaps(labels, 2) > 0)
    with pytest.raises(ValueError, match="gap"):
        training_targets(labels, gap=5)


def test_targets_boundary_mode():
    labels = touching_disks((60, 70), 10, 4)
    classes, weights = training_targets(labels, mode="boundary", gap=1)
    assert set(np.unique(classes)) == {0, 1, 2}
    np.testing.assert_array_equal(classes > 0, labels > 0)
    # interiors never touch another cell's interior or the background
    interior = np.where(classes == 1, labels, 0)
    components = ndi.label(interior > 0)[0]
    for comp in range(1, components.max() + 1):
        assert len(np.unique(interior[components == comp])) == 1
    # three balanced classes: each carries the same total weight
    _, plain = training_targets(labels, mode="boundary", gap=2, w0=0)
    classes2, _ = training_targets(labels, mode="boundary", gap=2)
    sums = [plain[classes2 == c].sum() for c in (0, 1, 2)]
    np.testing.assert_allclose(sums, sums[0], rtol=1e-4)
    assert (classes2 == 2).sum() > (classes == 2).sum()  # a wider boundary
    # the border term sits on the separating pixels: background and boundary, not interiors;
    # the boundary along a contact gets about w0, the rim of a cell far from others nothing
    border = weights - training_targets(labels, mode="boundary", gap=1, w0=0)[1]
    assert (border[classes == 1] == 0).all() and border[labels == 0].max() > 1
    contact = (classes == 2) & (ndi.grey_dilation(labels, size=3) != ndi.grey_erosion(
        np.where(labels == 0, labels.max() + 1, labels), size=3)) & (
        ndi.grey_erosion(np.where(labels == 0, labels.max() + 1, labels), size=3) <= labels.max())
    assert contact.any() and border[contact].min() > 8  # w0 = 10, d2 = 1 or 2 px
    lone = np.zeros((40, 40), np.int32)
    lone[10:30, 10:30] = 1
    lone_classes, lone_weights = training_targets(lone, mode="boundary", w0=10)
    _, lone_plain = training_targets(lone, mode="boundary", w0=0)
    np.testing.assert_array_equal(lone_weights, lone_plain)  # one cell: no border term
    with pytest.raises(ValueError, match="mode"):
        training_targets(labels, mode="three")
