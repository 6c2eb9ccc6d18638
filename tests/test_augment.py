"""Augmentation moves image, labels and mask together and keeps every cell's identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import disks_image
from scipy import ndimage as ndi

from napari_unet.core.augment import (
    AugmentConfig,
    augment_intensity,
    augment_pair,
    sample_geometry,
    sampling_grid,
    warp,
)


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


def test_grid_identity_samples_pixel_centres():
    geo = sample_geometry(2, AugmentConfig.off(), np.random.default_rng(0))
    x = torch.arange(2 * 1 * 12 * 10, dtype=torch.float32).reshape(2, 1, 12, 10)
    grid = sampling_grid(geo, (12, 10), (8, 6))
    out = warp(x, grid, "nearest")
    torch.testing.assert_close(out, x[:, :, 2:10, 2:8])
    torch.testing.assert_close(warp(x, grid, "bilinear"), x[:, :, 2:10, 2:8], atol=1e-3,
                               rtol=0)


def test_source_padding_covers_the_transformed_patch():
    cfg = AugmentConfig()
    pad = cfg.source_padding((100, 100))
    src = (100 + 2 * pad[0], 100 + 2 * pad[1])
    rng = np.random.default_rng(0)
    geo = sample_geometry(64, cfg, rng)
    grid = sampling_grid(geo, src, (100, 100))
    assert grid.abs().max() <= 1.0, "no sample point falls outside the window read"
    assert AugmentConfig.off().source_padding((50, 60)) == (0, 0)


def test_intensity_changes_do_not_modify_the_input():
    x = torch.rand(3, 1, 16, 16)
    before = x.clone()
    y = augment_intensity(x, AugmentConfig(), np.random.default_rng(0))
    torch.testing.assert_close(x, before)
    assert y.shape == x.shape and torch.isfinite(y).all() and not torch.equal(x, y)
    same = augment_intensity(x, AugmentConfig(), np.random.default_rng(0))
    torch.testing.assert_close(y, same)


def test_bad_arguments():
    with pytest.raises(ValueError, match="scale_range"):
        AugmentConfig(scale_range=(0, 1))
    with pytest.raises(ValueError, match="same size"):
        augment_pair(np.zeros((10, 10)), np.zeros((10, 12), int))
