"""Augmentation moves image, labels and mask together and keeps every cell's identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import disks_image
from scipy import ndimage as ndi

from napari_unet.core.augment import (
    AugmentConfig,
    Geometry,
    PlaneTable,
    augment_intensity,
    augment_pair,
    gather_bilinear,
    gather_nearest,
    random_geometry,
    reflect,
    source_coordinates,
)
from napari_unet.core.tiling import reflect_index


@pytest.fixture
def cells():
    image, labels = disks_image((160, 160), n=18, radius=(7, 12), seed=3)
    return image / 170.0, labels


def test_elastic_deformation_keeps_each_cell(cells):
    image, labels = cells
    elastic = AugmentConfig(flip=False, rot90=False, max_rotation=0, scale_range=(1, 1))
    for seed in range(4):
        _, out = augment_pair(image, labels, elastic.geometric_only(), seed=seed)
        ids = set(np.unique(out).tolist())
        assert ids <= set(np.unique(labels).tolist()), "no new ids"
        checked = 0
        for i in ids - {0}:
            before = labels == i
            rows, cols = np.nonzero(before)
            if min(rows.min(), cols.min()) < 25 or max(rows.max(), cols.max()) > 135:
                continue  # cells near the border may be pushed out or mirrored in
            after = out == i
            ratio = after.sum() / before.sum()
            assert 0.5 < ratio < 2.0, f"cell {i}: area changed by {ratio:.2f}"
            comp, n = ndi.label(after)
            largest = np.bincount(comp.ravel())[1:].max()
            assert largest >= 0.95 * after.sum(), f"cell {i} was torn apart"
            checked += 1
        assert checked >= 5


def test_full_augmentation_moves_image_labels_and_mask_together(cells):
    image, labels = cells
    for seed in range(3):
        img, out, mask = augment_pair(labels > 0, labels, AugmentConfig().geometric_only(),
                                      seed=seed, mask=labels > 0)
        assert set(np.unique(out)) <= set(np.unique(labels))
        np.testing.assert_array_equal(mask, out > 0)  # one grid for labels and mask
        agree = np.mean((img > 0.5) == (out > 0))  # bilinear vs nearest: edges may differ
        assert agree > 0.97
        assert img.dtype == np.float32 and out.dtype == labels.dtype


def test_identity_and_reproducibility(cells):
    image, labels = cells
    img, out = augment_pair(image, labels, AugmentConfig.off(), seed=0)
    np.testing.assert_array_equal(out, labels)
    np.testing.assert_allclose(img, image, atol=1e-4)
    a = augment_pair(image, labels, seed=5)
    b = augment_pair(image, labels, seed=5)
    c = augment_pair(image, labels, seed=6)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[1], c[1])


def test_large_ids_survive_nearest_sampling():
    labels = np.zeros((64, 64), np.int64)
    labels[10:30, 10:30] = 2**40 + 3
    labels[35:60, 30:55] = 123_456_789
    _, out = augment_pair(labels > 0, labels, seed=1)
    assert set(np.unique(out)) <= {0, 2**40 + 3, 123_456_789}


def test_identity_reads_pixel_centres_exactly_from_planes_of_any_size():
    """Two planes of different sizes in one flat buffer; patches read from both."""
    a = torch.arange(12 * 10, dtype=torch.float32).reshape(12, 10)
    b = 1000 + torch.arange(7 * 9, dtype=torch.float32).reshape(7, 9)
    flat = torch.cat([a.ravel(), b.ravel()])
    table = PlaneTable.of([(12, 10), (7, 9)])
    plane = torch.tensor([0, 1])
    centres = torch.tensor([[6, 5], [3, 4]])
    coords = source_coordinates(Geometry.identity(2), centres, (8, 6))
    near = gather_nearest(flat, table, plane, coords)
    torch.testing.assert_close(near[0], a[2:10, 2:8])
    rows = reflect_index(np.arange(-1, 7), 7)
    cols = reflect_index(np.arange(1, 7), 9)
    torch.testing.assert_close(near[1], b[rows[:, None], cols[None, :]])  # mirrored at the top
    torch.testing.assert_close(gather_bilinear(flat, table, plane, coords), near)


def test_reflection_matches_tiled_prediction_padding():
    idx = torch.arange(-25, 40)
    for n in (1, 2, 5, 13):
        np.testing.assert_array_equal(reflect(idx, n).numpy(), reflect_index(idx.numpy(), n))


def test_bilinear_interpolates_and_nearest_only_copies(rng):
    plane = torch.from_numpy(rng.random((20, 30)).astype(np.float32))
    table = PlaneTable.of([(20, 30)])
    coords = torch.tensor([[5.25, 7.5]]).reshape(1, 2, 1, 1)
    value = gather_bilinear(plane.ravel(), table, torch.tensor([0]), coords)[0, 0, 0]
    expected = (0.75 * (plane[5, 7] + plane[5, 8]) / 2 + 0.25 * (plane[6, 7] + plane[6, 8]) / 2)
    torch.testing.assert_close(value, expected)
    geo = random_geometry(8, AugmentConfig(), torch.Generator().manual_seed(0))
    coords = source_coordinates(geo, torch.full((8, 2), 10), (16, 16))
    near = gather_nearest(plane.ravel(), table, torch.zeros(8, dtype=torch.long), coords)
    assert set(near.unique().tolist()) <= set(plane.ravel().tolist())


def test_random_geometry_is_reproducible_and_varied():
    cfg = AugmentConfig()
    a = random_geometry(16, cfg, torch.Generator().manual_seed(3))
    b = random_geometry(16, cfg, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a.matrix, b.matrix)
    torch.testing.assert_close(a.displacement, b.displacement)
    det = torch.linalg.det(a.matrix)
    zoom = 1 / det.abs().sqrt()
    assert (det < 0).any() and (det > 0).any(), "flips happen"
    lo, hi = cfg.scale_range
    assert ((zoom >= lo - 1e-4) & (zoom <= hi + 1e-4)).all() and zoom.std() > 0.02
    assert a.displacement.abs().max() <= 3 * cfg.elastic_sigma + 1e-4
    assert 5 < a.displacement.std() < 15, "the paper's sigma of 10 pixels"


def test_intensity_changes_do_not_modify_the_input():
    x = torch.rand(3, 1, 16, 16)
    before = x.clone()
    y = augment_intensity(x, AugmentConfig(), torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, before)
    assert y.shape == x.shape and torch.isfinite(y).all() and not torch.equal(x, y)
    same = augment_intensity(x, AugmentConfig(), torch.Generator().manual_seed(0))
    torch.testing.assert_close(y, same)


def test_bad_arguments():
    with pytest.raises(ValueError, match="scale_range"):
        AugmentConfig(scale_range=(0, 1))
    with pytest.raises(ValueError, match="same size"):
        augment_pair(np.zeros((10, 10)), np.zeros((10, 12), int))
