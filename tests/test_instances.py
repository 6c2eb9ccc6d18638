"""Probabilities to instances, and segment()."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import disks_image
from skimage.segmentation import find_boundaries

import napari_unet as nu
from napari_unet import ModelFileError, UNet, probabilities_to_labels, save_model, segment


def probs_from_labels(labels: np.ndarray, carve: bool = True) -> np.ndarray:
    """Ideal two-class probabilities with 1-px gaps carved between touching cells."""
    fg = labels > 0
    if carve:  # a cell pixel with a 4-neighbour in another cell becomes background
        padded = np.pad(labels, 1)
        for dr, dc in [(0, 1), (1, 0), (1, 2), (2, 1)]:
            nb = padded[dr : dr + labels.shape[0], dc : dc + labels.shape[1]]
            fg &= ~((nb != labels) & (nb > 0))
    p = np.zeros((2, *labels.shape), np.float32)
    p[1] = fg
    p[0] = 1 - p[1]
    return p


def tiling_labels() -> np.ndarray:
    """Squares that touch their neighbours, next to isolated ones."""
    labels = np.zeros((40, 60), np.int32)
    labels[5:15, 5:15] = 1
    labels[5:15, 15:25] = 2
    labels[15:25, 5:15] = 3
    labels[25:35, 40:50] = 4
    return labels


def test_touching_cells_are_separated_and_grown_back():
    labels = tiling_labels()
    carved = probs_from_labels(labels)
    assert probabilities_to_labels(carved, min_size=1, grow=0).max() == 4  # gaps separate
    result = probabilities_to_labels(carved, min_size=1, grow=2)
    assert result.max() == 4
    for cell in range(1, 5):  # each cell comes back whole, one-to-one
        found = np.bincount(result[labels == cell]).argmax()
        a, b = result == found, labels == cell
        iou = (a & b).sum() / (a | b).sum()
        assert found > 0 and iou > 0.95, (cell, iou)
    # only where three cells meet can a pixel or two of background be claimed
    assert ((result > 0) != (labels > 0)).sum() <= 4
    assert (result[labels == 0] > 0).sum() <= 4


def test_isolated_cells_do_not_grow_into_background():
    labels = np.zeros((30, 30), np.int32)
    labels[10:20, 10:20] = 1
    result = probabilities_to_labels(probs_from_labels(labels), min_size=1, grow=3)
    np.testing.assert_array_equal(result, labels)


def test_min_size_and_threshold():
    p = np.zeros((2, 20, 20), np.float32)
    p[1, 2:4, 2:4] = 0.9  # 4 px
    p[1, 10:20, 10:20] = 0.6
    p[0] = 1 - p[1]
    assert probabilities_to_labels(p, min_size=5, min_share=0).max() == 1
    assert probabilities_to_labels(p, min_size=1, min_share=0).max() == 2
    assert probabilities_to_labels(p, min_size=1, min_share=0, threshold=0.7).max() == 1
    # the 4-px speck is under a tenth of the typical size (the median of 4 and 100 px)
    assert probabilities_to_labels(p, min_size=1).max() == 1


def fragments_image(shape=(60, 80)):
    """Probabilities of six 8x8 cells, two 2x2 specks and a 2x2 cell cut by the border."""
    labels = np.zeros(shape, np.int32)
    for k, (r, c) in enumerate([(5, 5), (5, 20), (5, 40), (30, 5), (30, 20), (30, 40)]):
        labels[r:r + 8, c:c + 8] = k + 1
    labels[45:47, 60:62] = 7  # a speck: 4 px, under a tenth of 64 px
    labels[20:22, 65:67] = 8
    labels[0:2, 70:72] = 9  # on the border: a cut cell, kept
    return labels


def test_min_share_drops_fragments_away_from_the_border():
    labels = fragments_image()
    probs = probs_from_labels(labels)
    kept = probabilities_to_labels(probs, min_size=1, grow=0)
    assert kept.max() == 7
    assert (kept[45:47, 60:62] == 0).all() and (kept[20:22, 65:67] == 0).all()
    assert (kept[0:2, 70:72] > 0).all()
    everything = probabilities_to_labels(probs, min_size=1, grow=0, min_share=0)
    assert everything.max() == 9
    # a share of 0.05 keeps the specks (4 px >= 3.2 px); min_size still applies
    assert probabilities_to_labels(probs, min_size=1, grow=0, min_share=0.05).max() == 9
    assert probabilities_to_labels(probs, min_size=5, grow=0, min_share=0.05).max() == 6


def test_min_share_is_decided_per_plane():
    small = np.zeros((60, 80), np.int32)  # plane 2: cells as small as plane 1's specks
    for k, c in enumerate(range(5, 75, 8)):
        small[30:32, c:c + 2] = k + 1
    probs = np.stack([probs_from_labels(fragments_image()), probs_from_labels(small)], axis=1)
    out = probabilities_to_labels(probs, min_size=1, grow=0)
    assert len(np.unique(out[0])) - 1 == 7 and len(np.unique(out[1])) - 1 == 9


def test_stack_ids_are_unique():
    labels = tiling_labels()
    p = np.stack([probs_from_labels(labels)] * 3, axis=1)
    result = probabilities_to_labels(p, min_size=1, grow=2)
    assert result.shape == (3, 40, 60) and result.dtype == np.int32
    assert len(np.unique(result)) == 13


def test_three_class_rule():
    labels = tiling_labels()
    boundary = find_boundaries(labels, mode="inner")
    p = np.zeros((3, *labels.shape), np.float32)
    p[2] = boundary
    p[1] = (labels > 0) & ~boundary
    p[0] = labels == 0
    result = probabilities_to_labels(p, ("background", "interior", "boundary"), min_size=1,
                                     grow=1)
    assert result.max() == 4
    np.testing.assert_array_equal(result > 0, labels > 0)
    assert len(set(zip(labels.ravel().tolist(), result.ravel().tolist()))) == 5


def test_shape_mismatch_is_clear():
    with pytest.raises(ValueError, match="n_classes=2"):
        probabilities_to_labels(np.zeros((3, 4, 4)))


def test_segment_without_packaged_model_says_so(monkeypatch):
    monkeypatch.setattr(nu.core.checkpoints, "packaged_model_path", lambda name="default": None)
    with pytest.raises(ModelFileError, match="no pretrained default model"):
        segment(np.zeros((30, 30)))


def test_segment_with_model_file(tmp_path):
    image, _ = disks_image()
    net = UNet(depth=2, base_channels=4)
    path = save_model(net, tmp_path / "m.pt", target={"gap": 1})
    labels, probs = segment(image, path, return_probabilities=True)
    assert labels.shape == image.shape and labels.dtype == np.int32
    assert probs.shape == (2, *image.shape)
    # the grow of its gap; no cut, which it does not record
    np.testing.assert_array_equal(labels, probabilities_to_labels(probs, min_size=16, grow=2,
                                                                  split=0))
    save_model(net, tmp_path / "nuclei.pt", target={"gap": 1}, split=0.3)
    labels, probs = segment(image, tmp_path / "nuclei.pt", return_probabilities=True)
    np.testing.assert_array_equal(labels, probabilities_to_labels(probs, min_size=16, grow=2,
                                                                  split=0.3))
