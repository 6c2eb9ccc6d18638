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


def contact_lengths(labels: np.ndarray) -> dict[tuple[int, int], int]:
    """Contact length (4-adjacent pixel pairs) of every pair of touching cells."""
    pairs: dict[tuple[int, int], int] = {}
    for a, b in ((labels[1:], labels[:-1]), (labels[:, 1:], labels[:, :-1])):
        sel = (a != b) & (a > 0) & (b > 0)
        lo = np.minimum(a[sel], b[sel]).astype(np.int64)
        hi = np.maximum(a[sel], b[sel]).astype(np.int64)
        keys, counts = np.unique(lo * (labels.max() + 1) + hi, return_counts=True)
        for key, count in zip(keys.tolist(), counts.tolist()):
            pair = divmod(key, int(labels.max()) + 1)
            pairs[pair] = pairs.get(pair, 0) + count
    return pairs


def packing(labels: np.ndarray) -> tuple[float, float]:
    """Share of the cells that touch another, and the median contact length of the
    touching pairs relative to the median equivalent radius."""
    n = int(labels.max())
    pairs = contact_lengths(labels)
    touching = np.zeros(n + 1, bool)
    for a, b in pairs:
        touching[a] = touching[b] = True
    radius = np.sqrt(np.median(np.bincount(labels.ravel())[1:]) / np.pi)
    length = np.median(list(pairs.values())) / radius if pairs else 0.0
    return float(touching[1:].mean()), float(length)


PACKED = dict(layout="clustered", touching=1.0, density=0.5)


def test_packed_clusters_touch_along_long_contacts():
    shares, lengths = [], []
    for seed in range(3):
        _, labels = synthetic_nuclei((192, 192), rng=seed, radius=(8.0, 12.0), **PACKED)
        assert_exact_labels(labels, (192, 192))
        share, length = packing(labels)
        shares.append(share)
        lengths.append(length)
    # nearly every nucleus is pressed against others, along a contact longer than its radius
    assert min(shares) > 0.85, shares
    assert np.median(lengths) > 1.0, lengths
    # loosely clustered nuclei touch less and along shorter contacts
    loose = [packing(synthetic_nuclei((192, 192), rng=s, radius=(8.0, 12.0), layout="clustered",
                                      touching=0.3, density=0.5)[1]) for s in range(3)]
    assert np.median([ln for _, ln in loose]) < 0.7 * np.median(lengths)
    # and apart means apart, clustered or not
    _, apart = synthetic_nuclei((192, 192), rng=0, radius=(8.0, 12.0), layout="clustered",
                                touching=0.0, density=0.5, irregularity=0.0, elongation=0.0)
    assert apart.max() > 10 and contacts(apart) == 0


def test_touching_share_follows_the_requested_touching():
    def share(touching):
        return np.mean([packing(synthetic_nuclei((160, 160), rng=s, layout="random",
                                                 touching=touching, density=0.35,
                                                 radius=(7.0, 9.0))[1])[0] for s in range(3)])

    apart, some, pressed = share(0.0), share(0.5), share(1.0)
    assert apart == 0.0
    assert 0.1 < some < pressed - 0.1
    assert pressed > 0.6


def test_density_sets_the_covered_area():
    def cover(density):
        return np.mean([(synthetic_nuclei((160, 160), rng=s, density=density, layout="random",
                                          radius=(6.0, 8.0))[1] > 0).mean() for s in range(3)])

    low, high = cover(0.1), cover(0.4)
    assert 0.05 < low < 0.16
    assert 0.28 < high < 0.5


def test_pressed_nuclei_keep_their_area():
    # the same nuclei apart and pressed into clusters: flattening moves area to the free
    # side (swelling) instead of losing the overlap, so sizes stay about the same
    kw = dict(n_cells=60, radius=(9.0, 9.5), size_spread=0.0, mitotic=0.0, rng=4)
    _, apart = synthetic_nuclei((224, 224), touching=0.0, layout="random", **kw)
    _, pressed = synthetic_nuclei((224, 224), touching=1.0, layout="clustered", **kw)
    area = lambda lab: np.median(np.bincount(lab.ravel())[1:])  # noqa: E731
    assert packing(pressed)[0] > 0.8
    assert area(pressed) > 0.85 * area(apart)


def test_contacts_are_labelled_where_pixels_meet():
    # touching nuclei meet with no background between them (no carved gaps): background
    # pixels squeezed between two different nuclei are rare next to the contact lines
    for seed in range(3):
        _, labels = synthetic_nuclei((192, 192), rng=seed, **PACKED)
        gap = 0
        for a, b, c in ((labels[:-2], labels[1:-1], labels[2:]),
                        (labels[:, :-2], labels[:, 1:-1], labels[:, 2:])):
            gap += np.count_nonzero((b == 0) & (a > 0) & (c > 0) & (a != c))
        touching = contacts(labels)
        assert touching > 0.05 * np.count_nonzero(labels)
        assert gap < 0.1 * touching, (seed, gap, touching)


def test_sizes_and_elongations_vary_within_one_image():
    from skimage.measure import regionprops

    _, labels = synthetic_nuclei((256, 256), rng=2, radius=(5.0, 20.0), size_spread=0.3,
                                 elongation=0.7, touching=0.0, mitotic=0.0, density=0.3)
    props = [pr for pr in regionprops(labels) if pr.area > 20]
    radii = np.sqrt([pr.area / np.pi for pr in props])
    aspect = [pr.axis_major_length / pr.axis_minor_length for pr in props]
    assert np.percentile(radii, 90) / np.percentile(radii, 10) > 1.5
    assert np.median(aspect) > 1.3 and max(aspect) > 2.0
    _, round_ = synthetic_nuclei((256, 256), rng=2, radius=(5.0, 20.0), size_spread=0.3,
                                 elongation=0.0, irregularity=0.0, touching=0.0, mitotic=0.0,
                                 density=0.3)
    aspect0 = [pr.axis_major_length / pr.axis_minor_length
               for pr in regionprops(round_) if pr.area > 20]
    assert np.median(aspect0) < 1.15


def test_mitotic_figures_are_bright_bars_and_pairs():
    from skimage.measure import regionprops

    kw = dict(n_cells=40, radius=(10, 11), touching=0.0, layout="random", rng=3)
    _, interphase = synthetic_nuclei((256, 256), mitotic=0.0, **kw)
    _, mitoses = synthetic_nuclei((256, 256), mitotic=1.0, **kw)
    aspect = [pr.axis_major_length / max(pr.axis_minor_length, 1) for pr in regionprops(mitoses)]
    assert sum(a > 2.0 for a in aspect) >= 8  # metaphase and anaphase bars
    assert mitoses.max() > interphase.max()  # anaphases are two nuclei each


def image_for(**kw):
    """A float32 image with little noise (photons, read noise) unless overridden."""
    base = dict(photons=5000.0, read_noise=0.0, dtype="float32", level=0.3)
    base.update(kw)
    return synthetic_nuclei((160, 160), **base)


def per_cell(image, labels, func):
    return np.array([func(image[labels == i]) for i in range(1, labels.max() + 1)])


def test_texture_and_nucleoli_are_visible_inside_nuclei():
    kw = dict(rng=5, radius=(12.0, 14.0), blur=0.6, defocus=0.0, mitotic=0.0, n_cells=10,
              touching=0.0)
    smooth, labels = image_for(texture=0.0, nucleoli=0.0, **kw)
    rough, labels2 = image_for(texture=0.3, nucleoli=0.0, **kw)
    holes, labels3 = image_for(texture=0.0, nucleoli=0.9, **kw)
    np.testing.assert_array_equal(labels, labels2)
    np.testing.assert_array_equal(labels, labels3)
    core = ndi.binary_erosion(labels > 0, iterations=4)
    cv = lambda im: np.median(per_cell(im * core, labels * core, lambda v: v.std() / v.mean()))  # noqa: E731
    assert cv(rough) > 2 * cv(smooth)
    # nucleoli: dark holes, far below the nucleus' own median
    dark = lambda im: np.mean(per_cell(im * core, labels * core,  # noqa: E731
                                       lambda v: (v < 0.6 * np.median(v)).mean()))
    assert dark(holes) > 0.02 > dark(smooth)


def test_dim_nuclei_lie_next_to_bright_ones():
    kw = dict(rng=6, n_cells=40, touching=0.3, brightness_spread=0.05, mitotic=0.0,
              texture=0.0, nucleoli=0.0)
    even, labels = image_for(dim=0.0, **kw)
    mixed, labels2 = image_for(dim=0.5, **kw)
    np.testing.assert_array_equal(labels, labels2)
    ratio = lambda im: np.percentile(per_cell(im, labels, np.mean), 90) / np.percentile(  # noqa: E731
        per_cell(im, labels, np.mean), 10)
    assert ratio(mixed) > 1.5 * ratio(even)


def test_debris_is_unlabelled_and_off_the_nuclei():
    clean, none = image_for(rng=7, n_cells=0, debris=0.0, background=0.01)
    dusty, none2 = image_for(rng=7, n_cells=0, debris=4.0, background=0.01)
    assert none.max() == none2.max() == 0
    assert dusty.max() > 3 * clean.max()
    kw = dict(rng=7, n_cells=30, texture=0.0, nucleoli=0.0, photons=1e7)  # next to no noise
    image, labels = image_for(debris=4.0, **kw)
    plain, labels2 = image_for(debris=0.0, **kw)
    np.testing.assert_array_equal(labels, labels2)
    # specks stay a few pixels away from the nuclei
    assert np.abs(image - plain)[labels > 0].max() < 0.05 * image[labels > 0].mean()


def test_defocus_blurs_some_places_more_than_others():
    kw = dict(rng=8, n_cells=40, touching=0.0, texture=0.0, nucleoli=0.0, debris=0.0,
              photons=1e7)
    sharp, labels = image_for(defocus=0.0, blur=0.6, **kw)
    varying, labels2 = image_for(defocus=3.0, blur=0.6, **kw)
    uniform, _ = image_for(defocus=0.0, blur=2.1, **kw)
    np.testing.assert_array_equal(labels, labels2)
    # the extra blur of each 32 x 32 block: the sigma that best turns the sharp image into it
    sigmas = np.linspace(0, 3.5, 15)
    blurred = np.stack([ndi.gaussian_filter(sharp, s) for s in sigmas])
    cells = (labels > 0).reshape(5, 32, 5, 32).mean(axis=(1, 3)) > 0.05

    def extra_blur(image):
        err = ((blurred - image) ** 2).reshape(len(sigmas), 5, 32, 5, 32).sum(axis=(2, 4))
        return sigmas[err.argmin(axis=0)][cells]

    assert np.ptp(extra_blur(uniform)) < 0.3  # the control: the same blur everywhere
    assert np.ptp(extra_blur(varying)) > 1.5  # sharp in places, far out of focus in others


def test_vignetting_and_background_shape_the_empty_field():
    flat, _ = image_for(rng=9, n_cells=0, background=0.3, gradient=0.0, vignetting=0.0,
                        debris=0.0)
    vign, _ = image_for(rng=9, n_cells=0, background=0.3, gradient=0.0, vignetting=0.8,
                        debris=0.0)
    spread = lambda im: np.percentile(im, 95) / np.percentile(im, 5)  # noqa: E731
    assert spread(vign) > 1.5 * spread(flat)
    smooth = lambda im: ndi.uniform_filter(im, 9)  # noqa: E731
    assert (smooth(vign) <= smooth(flat) * 1.05).all()  # vignetting only darkens
    brighter, _ = image_for(rng=9, n_cells=0, background=0.6, gradient=0.0, vignetting=0.0,
                            debris=0.0)
    np.testing.assert_allclose(brighter.mean(), 2 * flat.mean(), rtol=0.05)


def test_poisson_gaussian_noise_grows_with_the_signal():
    # shot noise: the variance of the background grows with its level; read noise adds a floor
    def noise(background, read_noise, photons=50.0):
        image, _ = synthetic_nuclei((128, 128), rng=10, n_cells=0, background=background,
                                    gradient=0.0, vignetting=0.0, debris=0.0, photons=photons,
                                    read_noise=read_noise, dtype="float32", level=0.5)
        return np.diff(image, axis=1).std() / np.sqrt(2) / 0.5

    assert noise(0.4, 0.0) > 1.6 * noise(0.1, 0.0)  # ~ sqrt(level / photons)
    np.testing.assert_allclose(noise(0.4, 0.0), np.sqrt(0.4 / 50), rtol=0.25)
    assert noise(0.1, 0.1) > 1.5 * noise(0.1, 0.0)


def test_integer_images_use_a_small_part_of_their_range():
    # as stored by microscopes: 8-bit data in a uint16 file, offsets, few distinct values
    image, labels = synthetic_nuclei((128, 128), rng=11, dtype="uint16", level=40.0,
                                     offset=0.0, background=0.3)
    assert image.max() < 256
    assert np.unique(image).size < 256
    offset, _ = synthetic_nuclei((128, 128), rng=11, dtype="uint16", level=1000.0,
                                 offset=100.0, background=0.01, photons=1000.0, read_noise=0.01)
    assert np.percentile(offset, 5) > 90
    # drawn at random: uint16 images hold 8-bit, 12-bit or 16-bit ranges; uint8 rarely fills
    tops = [synthetic_nuclei((64, 64), rng=s, dtype="uint16")[0].max() for s in range(16)]
    assert min(tops) < 256 and 256 < max(tops) and any(4095 < t for t in tops)
    tops8 = [synthetic_nuclei((64, 64), rng=s, dtype="uint8")[0].max() for s in range(16)]
    assert np.median(tops8) < 200


def test_every_feature_is_fixed_by_the_seed():
    kw = dict(mitotic=0.3, dim=0.3, nucleoli=0.5, debris=2.0, defocus=2.0, vignetting=0.4,
              dtype="uint16", **PACKED)
    a, la = synthetic_nuclei((96, 96), rng=12, **kw)
    b, lb = synthetic_nuclei((96, 96), rng=12, **kw)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert_exact_labels(la, (96, 96))


def test_new_arguments_are_checked():
    with pytest.raises(ValueError, match="dim"):
        synthetic_nuclei((32, 32), dim=1.5, rng=0)
    with pytest.raises(ValueError, match="nucleoli"):
        synthetic_nuclei((32, 32), nucleoli=-0.1, rng=0)
    with pytest.raises(ValueError, match="vignetting"):
        synthetic_nuclei((32, 32), vignetting=0.95, rng=0)
    with pytest.raises(ValueError, match="defocus"):
        synthetic_nuclei((32, 32), defocus=-1.0, rng=0)
    with pytest.raises(ValueError, match="level"):
        synthetic_nuclei((32, 32), level=0.0, rng=0)


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
