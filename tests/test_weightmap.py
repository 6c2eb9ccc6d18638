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


def brute_force(labels, w0=10.0, sigma=5.0, sampling=(1.0, 1.0)):
    """Distances from every pixel to every cell, the two smallest, the formula; bg only."""
    ids = [i for i in np.unique(labels) if i != 0]
    fg = (labels > 0).astype(int)
    counts = np.bincount(fg.ravel(), minlength=2)
    present = counts > 0
    table = np.ones(2)
    table[present] = counts.sum() / (present.sum() * counts[present])
    w = table[fg]
    if len(ids) >= 2:
        d = np.sort(np.stack([ndi.distance_transform_edt(labels != i, sampling=sampling)
                              for i in ids]), axis=0)
        border = w0 * np.exp(-((d[0] + d[1]) ** 2) / (2 * sigma**2))
        w = w + np.where(labels == 0, border, 0)
    return w


def check_exact(labels, w0=10.0, sigma=5.0, sampling=None):
    fast = boundary_weight_map(labels, w0=w0, sigma=sigma, sampling=sampling)
    ref = brute_force(labels, w0, sigma, sampling or (1.0, 1.0))
    assert fast.dtype == np.float32 and fast.shape == labels.shape
    # where the border term matters, equal within 1e-4; elsewhere it is below 1e-6 w0
    np.testing.assert_allclose(fast, ref, atol=1e-4 + 1e-6 * w0)
    return fast


def touching_disks(shape=(120, 140), n=25, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    for i in range(1, n + 1):
        rr, cc = disk((rng.uniform(0, shape[0]), rng.uniform(0, shape[1])), rng.uniform(4, 12),
                      shape=shape)
        labels[rr, cc] = i
    return expand_labels(labels, 2)  # grow them into each other: many contacts


def test_touching_disks():
    check_exact(touching_disks())


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
    stack = np.stack([a, b])
    before = stack.copy()
    w = boundary_weight_map(stack, class_weights=None)
    np.testing.assert_array_equal(stack, before)
    np.testing.assert_allclose(w[0], boundary_weight_map(a, class_weights=None))
    np.testing.assert_allclose(w[1], boundary_weight_map(b, class_weights=None))


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
    with pytest.raises(ValueError, match="2D"):
        boundary_weight_map(np.zeros((2, 2, 2, 2), int))
    with pytest.raises(ValueError, match="sampling"):
        boundary_weight_map(np.zeros((5, 5), int), sampling=(1, -1))


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
    with pytest.raises(ValueError, match="mode"):
        training_targets(labels, mode="three")
