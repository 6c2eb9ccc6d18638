"""Tests of the synthetic microscopy generator (napari_unet.core.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.core.synthetic import (
    KINDS,
    iter_samples,
    make_sample,
    partial_labels,
    synthetic_membranes,
    synthetic_nuclei,
    synthetic_phase_contrast,
)

SHAPE = (96, 112)


def assert_exact_labels(labels: np.ndarray, shape: tuple[int, int]) -> int:
    """int32, ids 0..N without gaps, every cell one 4-connected component. Returns N."""
    assert labels.shape == shape
    assert labels.dtype == np.int32
    ids = np.unique(labels)
    n = int(labels.max())
    assert ids.min() >= 0
    np.testing.assert_array_equal(ids[ids > 0], np.arange(1, n + 1))
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        assert sl is not None, f"cell {i} is empty"
        _, pieces = ndi.label(labels[sl] == i)
        assert pieces == 1, f"cell {i} has {pieces} pieces"
    return n


def contacts(labels: np.ndarray) -> int:
    """Number of 4-adjacent pixel pairs that belong to two different cells."""
    count = 0
    for a, b in ((labels[1:], labels[:-1]), (labels[:, 1:], labels[:, :-1])):
        count += int(np.count_nonzero((a != b) & (a > 0) & (b > 0)))
    return count


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_sample(kind):
    image, labels = make_sample(kind, shape=SHAPE, seed=5)
    again, labels2 = make_sample(kind, shape=SHAPE, seed=np.random.default_rng(5))
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(labels, labels2)


@pytest.mark.parametrize("kind", KINDS)
def test_different_seeds_differ(kind):
    a, la = make_sample(kind, shape=SHAPE, seed=1)
    b, lb = make_sample(kind, shape=SHAPE, seed=2)
    assert not np.array_equal(a, b)
    assert not np.array_equal(la, lb)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(8, 8), (37, 53), (100, 33), 64])
def test_kinds_at_odd_shapes(kind, shape):
    image, labels = make_sample(kind, shape=shape, seed=3)
    expected = (shape, shape) if isinstance(shape, int) else shape
    assert image.shape == expected
    assert_exact_labels(labels, expected)


@pytest.mark.parametrize("kind", KINDS)
def test_labels_are_exact_over_many_seeds(kind):
    total = 0
    for seed in range(6):
        _, labels = make_sample(kind, shape=SHAPE, seed=seed)
        total += assert_exact_labels(labels, SHAPE)
    assert total > 10


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("dtype", "top"), [("uint8", 255), ("uint16", 65535), (np.float32, 1.0)]
)
def test_dtype_and_range(kind, dtype, top):
    image, _ = make_sample(kind, shape=(48, 40), seed=11, dtype=dtype)
    assert image.dtype == np.dtype(dtype)
    assert image.shape == (48, 40)
    assert np.isfinite(image).all()
    assert image.min() >= 0 and image.max() <= top
    assert image.max() > image.min()  # not a flat image


@pytest.mark.parametrize("kind", ["membranes", "phase"])
def test_uint16_membranes_and_phase_use_a_12_bit_camera_range(kind):
    images = [make_sample(kind, (64, 64), seed=s, dtype="uint16")[0] for s in range(4)]
    assert all(im.max() <= 4095 for im in images)
    assert max(im.max() for im in images) > 255  # more than 8 bits are used
    assert all(np.median(im) >= 60 for im in images)  # camera offset


def test_invalid_arguments():
    with pytest.raises(ValueError, match="dtype"):
        synthetic_nuclei((32, 32), dtype="int64", rng=0)
    with pytest.raises(ValueError, match="density"):
        synthetic_nuclei((32, 32), density=2.0, rng=0)
    with pytest.raises(ValueError, match="radius"):
        synthetic_nuclei((32, 32), radius=(10, 5), rng=0)
    with pytest.raises(ValueError, match="shape"):
        synthetic_nuclei((4, 32), rng=0)
    with pytest.raises(ValueError, match="layout"):
        synthetic_nuclei((32, 32), layout="grid", rng=0)
    with pytest.raises(ValueError, match="style"):
        synthetic_membranes((32, 32), style="confocal", rng=0)
    with pytest.raises(ValueError, match="polarity"):
        synthetic_phase_contrast((32, 32), polarity=2, rng=0)
    with pytest.raises(ValueError, match="unknown kind"):
        make_sample("histology")


# ------------------------------------------------------------------------------ nuclei


def test_nuclei_are_brighter_than_background():
    for seed in range(8):
        image, labels = synthetic_nuclei(SHAPE, rng=seed, dtype="float32")
        if labels.max() == 0:
            continue
        assert image[labels > 0].mean() > image[labels == 0].mean(), seed


def test_inverted_nuclei_are_darker_than_background():
    image, labels = synthetic_nuclei(SHAPE, rng=4, invert=True, n_cells=15)
    assert labels.max() > 0
    assert image[labels > 0].mean() < image[labels == 0].mean()


def test_clustered_dense_nuclei_touch():
    for seed in range(4):
        _, labels = synthetic_nuclei(
            (128, 128), layout="clustered", touching=0.8, density=0.35, rng=seed
        )
        assert contacts(labels) > 0, seed
    _, labels = synthetic_nuclei((128, 128), layout="random", touching=1.0, density=0.4, rng=0)
    assert contacts(labels) > 0


def test_apart_ellipses_never_touch():
    _, labels = synthetic_nuclei(
        (128, 128), touching=0.0, layout="random", irregularity=0.0, elongation=0.0,
        density=0.3, rng=2,
    )
    assert labels.max() > 5
    assert contacts(labels) == 0


def test_n_cells_and_radius_control_geometry():
    _, none = synthetic_nuclei((64, 64), n_cells=0, rng=0)
    assert none.max() == 0
    _, few = synthetic_nuclei((128, 128), n_cells=6, radius=(8, 9), touching=0.0, rng=0)
    assert 1 <= few.max() <= 6
    _, small = synthetic_nuclei((128, 128), radius=(4, 5), density=0.2, rng=0)
    _, large = synthetic_nuclei((128, 128), radius=(14, 16), density=0.2, rng=0)
    area = lambda lab: np.median(np.bincount(lab.ravel())[1:])  # noqa: E731
    assert area(small) < area(large)
    assert small.max() > large.max()


def test_mitotic_cells_are_smaller_and_brighter():
    kw = dict(n_cells=30, radius=(9, 10), brightness_spread=0.1, background=0.01, rng=7)
    image0, lab0 = synthetic_nuclei((160, 160), mitotic=0.0, dtype="float32", **kw)
    image1, lab1 = synthetic_nuclei((160, 160), mitotic=1.0, dtype="float32", **kw)
    area = lambda lab: np.median(np.bincount(lab.ravel())[1:])  # noqa: E731
    assert area(lab1) < area(lab0)
    assert image1[lab1 > 0].mean() > image0[lab0 > 0].mean()


def test_fixing_noise_keeps_the_cells():
    a, la = synthetic_nuclei(SHAPE, rng=9, photons=10.0, read_noise=0.05)
    b, lb = synthetic_nuclei(SHAPE, rng=9, photons=5000.0, read_noise=0.0)
    np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(a, b)
    # less noise: smaller pixel-to-pixel differences inside the cells
    rough = lambda im, lab: np.abs(np.diff(im.astype(float), axis=1))[lab[:, 1:] > 0].mean()  # noqa: E731
    assert rough(b, lb) < rough(a, la)


# --------------------------------------------------------------------------- membranes


@pytest.mark.parametrize("style", ["em", "fluorescence"])
def test_membranes_separate_every_cell(style):
    image, labels = synthetic_membranes((120, 100), style=style, rng=3)
    n = assert_exact_labels(labels, (120, 100))
    assert n > 5
    # membranes are background and keep cells apart even diagonally
    _, components = ndi.label(labels > 0, structure=np.ones((3, 3)))
    assert components == n
    assert contacts(labels) == 0
    membrane = ndi.binary_dilation(labels > 0) & (labels == 0)
    inside = labels > 0
    if style == "em":
        assert image[membrane].mean() < image[inside].mean()
    else:
        assert image[membrane].mean() > image[inside].mean()


def test_membrane_width_is_honoured():
    _, thin = synthetic_membranes((128, 128), style="em", membrane_width=1, rng=1)
    _, thick = synthetic_membranes((128, 128), style="em", membrane_width=6, rng=1)
    assert (thin == 0).mean() < (thick == 0).mean()


def test_membrane_gaps_leave_cells_out():
    _, full = synthetic_membranes((128, 128), style="fluorescence", gaps=0.0, rng=2)
    _, holes = synthetic_membranes((128, 128), style="fluorescence", gaps=0.5, rng=2)
    assert holes.max() < full.max()


# ------------------------------------------------------------------------------- phase


@pytest.mark.parametrize("polarity", [1, -1])
def test_phase_polarity(polarity):
    image, labels = synthetic_phase_contrast(SHAPE, polarity=polarity, n_cells=8, rng=4)
    assert labels.max() > 0
    background = np.median(image[labels == 0])
    assert np.sign(image[labels > 0].mean() - background) == -polarity


def test_phase_elongated_cells():
    _, labels = synthetic_phase_contrast((160, 160), elongated=1.0, n_cells=6, touching=0,
                                         rng=1)
    from skimage.measure import regionprops

    ratios = [
        p.axis_major_length / max(p.axis_minor_length, 1)
        for p in regionprops(labels)
        if p.area > 40
    ]
    assert max(ratios) > 2


# --------------------------------------------------------------------- dispatch, partial


def test_kinds_dispatch():
    assert KINDS == ("nuclei", "membranes", "phase")
    generators = [synthetic_nuclei, synthetic_membranes, synthetic_phase_contrast]
    for kind, func in zip(KINDS, generators):
        image, labels = make_sample(kind, shape=(40, 40), seed=0, dtype="uint16")
        direct, direct_labels = func((40, 40), rng=0, dtype="uint16")
        np.testing.assert_array_equal(image, direct)
        np.testing.assert_array_equal(labels, direct_labels)


def test_iter_samples_is_reproducible_and_prefix_stable():
    three = list(iter_samples("nuclei", 3, seed=4, shape=(32, 32)))
    two = list(iter_samples("nuclei", 2, seed=4, shape=(32, 32)))
    assert len(three) == 3
    for (a, la), (b, lb) in zip(two, three):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(three[0][0], three[1][0])
    endless = iter_samples("phase", seed=0, shape=(16, 16))
    assert len([next(endless) for _ in range(3)]) == 3
    with pytest.raises(ValueError):
        next(iter_samples("nope", 1))


def test_partial_labels_keeps_whole_cells():
    _, labels = synthetic_nuclei((128, 128), density=0.3, rng=1)
    n = labels.max()
    few = partial_labels(labels, fraction=0.3, rng=0)
    assert few.dtype == labels.dtype and few.shape == labels.shape
    k = few.max()
    assert k == round(0.3 * n)
    np.testing.assert_array_equal(np.unique(few), np.arange(k + 1))
    for i in range(1, k + 1):
        original = np.unique(labels[few == i])
        assert original.size == 1 and original[0] > 0
        np.testing.assert_array_equal(few == i, labels == original[0])  # the whole cell
    kept = partial_labels(labels, fraction=0.3, rng=0, relabel=False)
    assert set(np.unique(kept)) <= set(np.unique(labels))
    np.testing.assert_array_equal(kept > 0, few > 0)
    np.testing.assert_array_equal(partial_labels(labels, 1.0, rng=0), labels)
    assert partial_labels(labels, 0.0, rng=0).max() == 0
    assert partial_labels(labels, 0.01, rng=0).max() == 1  # at least one cell
    np.testing.assert_array_equal(
        partial_labels(labels, 0.5, rng=3), partial_labels(labels, 0.5, rng=3)
    )
    with pytest.raises(ValueError):
        partial_labels(labels, 1.5)
