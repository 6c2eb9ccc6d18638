"""Cutting merged nuclei apart (core.split): the rule, its numbering, and its locality."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet import SegmentOptions, metrics
from napari_unet.core.split import (
    MAX_SIDE,
    SPLIT_DEPTH,
    apply_splits,
    find_splits,
    number_splits,
    split_cells,
    split_halo,
)
from napari_unet.core.synthetic import make_sample


def merge_touching(truth: np.ndarray) -> np.ndarray:
    """Each nucleus merged with the touching nucleus of lowest id above it (pairs and chains),
    as a U-Net that misses faint gaps does; numbered in raster order."""
    n = int(truth.max())
    parent = np.arange(n + 1)
    pairs = set()
    for a, b in ((truth[:, :-1], truth[:, 1:]), (truth[:-1], truth[1:])):
        touch = (a != b) & (a > 0) & (b > 0)
        pairs |= {(min(u, v), max(u, v)) for u, v in zip(a[touch].tolist(), b[touch].tolist())}
    taken = set()
    for u, v in sorted(pairs):
        if u not in taken and v not in taken:
            parent[v] = u
            taken |= {u, v}
    merged = parent[truth]
    return _raster(merged)


def _raster(labels: np.ndarray) -> np.ndarray:
    ids, first = np.unique(labels.reshape(-1), return_index=True)
    order = ids[ids > 0][np.argsort(first[ids > 0])]
    table = np.zeros(labels.max() + 1, np.int32)
    table[order] = np.arange(1, len(order) + 1)
    return table[labels]


@pytest.fixture(scope="module")
def packed():
    # nuclei that touch along short contacts: merged, they make peanuts (long, flat contacts
    # leave no waist to cut at: the network has to see those gaps itself)
    _, truth = make_sample("nuclei", (320, 352), seed=3, layout="clustered", touching=0.2,
                           density=0.4)
    return truth.astype(np.int32), merge_touching(truth.astype(np.int32))


def f1(truth, labels):
    r = metrics.match(truth, labels, 0.5)
    return 2 * r.tp / (2 * r.tp + r.fp + r.fn)


def test_merged_nuclei_are_cut_and_single_ones_are_not(packed):
    truth, merged = packed
    assert merged.max() < 0.8 * truth.max()  # many nuclei merged
    before = merged.copy()
    cut = split_cells(merged)
    np.testing.assert_array_equal(merged, before)  # input untouched
    assert cut.dtype == np.int32
    assert f1(truth, merged) < 0.85 < 0.9 < f1(truth, cut)
    # no pixel is lost or added, and every part is a piece of one merged cell
    np.testing.assert_array_equal(cut > 0, merged > 0)
    assert all(len(np.unique(merged[cut == i])) == 1 for i in np.unique(cut)[1:])
    # true single nuclei are (almost) never cut
    assert f1(truth, split_cells(truth)) > 0.98
    np.testing.assert_array_equal(split_cells(merged, depth=0), merged)


def test_numbering_keeps_ids_and_appends_parts(packed):
    _, merged = packed
    cut = split_cells(merged, min_size=16)
    n = int(merged.max())
    splits = find_splits(merged)
    assert splits and [s.cell for s in splits] == sorted(s.cell for s in splits)
    assert int(cut.max()) == n + sum(s.n_parts - 1 for s in splits)
    assert set(np.unique(cut[cut > 0]).tolist()) == set(range(1, int(cut.max()) + 1))
    first = splits[0]
    r0, r1, c0, c1 = first.bounds
    box = cut[r0:r1, c0:c1]
    # the first part (raster order) keeps the id; the next parts follow the last cell
    assert box[first.parts == 1].tolist() == [first.cell] * int((first.parts == 1).sum())
    assert set(np.unique(box[first.parts == 2]).tolist()) == {n + 1}
    for split in splits:  # a part under min_size gave its pixels to a neighbouring part
        assert np.bincount(split.parts.reshape(-1))[1:].min() >= 16


def test_public_api():
    import napari_unet

    assert napari_unet.split_cells is split_cells and "split_cells" in napari_unet.__all__


def test_any_integer_dtype_and_stacks(packed):
    _, merged = packed
    cut = split_cells(merged)
    np.testing.assert_array_equal(split_cells(merged.astype(np.uint16)), cut)
    stack = np.stack([merged, np.where(merged > 0, merged + merged.max(), 0)])
    both = split_cells(stack)
    n, extra = int(stack.max()), int(cut.max() - merged.max())
    assert both.max() == n + 2 * extra  # the parts of both planes follow the stack's last id
    np.testing.assert_array_equal(both[0][cut <= merged.max()], cut[cut <= merged.max()])
    with pytest.raises(ValueError, match="integer"):
        split_cells(merged.astype(float))


@pytest.mark.parametrize("block", [40, 64, (48, 96)])
@pytest.mark.parametrize("max_side", [36, MAX_SIDE])
def test_blocks_with_their_halo_cut_as_one_piece(packed, block, max_side, monkeypatch):
    """Each block sees its window (block + split_halo), looks at the cells starting in it,
    and writes only its own pixels: the same labels as one piece, ids included. With a
    small largest side, windows are much smaller than the image and many cells too large."""
    from napari_unet.core import split

    monkeypatch.setattr(split, "MAX_SIDE", max_side)
    _, merged = packed
    grow = 2
    whole = split_cells(merged)
    h, w = merged.shape
    bh, bw = (block, block) if np.isscalar(block) else block
    halo, m = split_halo(grow), grow + 1
    found, crossing = [], 0
    for r in range(0, h, bh):
        for c in range(0, w, bw):
            wr0, wr1, wc0, wc1 = max(0, r - halo), min(h, r + bh + halo), max(0, c - halo), \
                min(w, c + bw + halo)
            inside = (m if wr0 else 0, wr1 - wr0 - (m if wr1 < h else 0),
                      m if wc0 else 0, wc1 - wc0 - (m if wc1 < w else 0))
            got = find_splits(merged[wr0:wr1, wc0:wc1], owned=(r - wr0, r + bh - wr0,
                              c - wc0, c + bw - wc0), whole=inside, origin=(wr0, wc0))
            found += got
            crossing += sum(s.bounds[1] > r + bh or s.bounds[3] > c + bw for s in got)
    assert crossing > 0  # cells cut across block borders were met
    ordered, starts, n = number_splits(found, int(merged.max()))
    assert n == whole.max()
    out = merged.copy()
    for r in range(0, h, bh):
        for c in range(0, w, bw):
            piece = out[r:r + bh, c:c + bw].copy()
            apply_splits(piece, ordered, starts, origin=(r, c))
            out[r:r + bh, c:c + bw] = piece
    np.testing.assert_array_equal(out, whole)


def test_cells_larger_than_the_largest_side_are_not_cut():
    rows, cols = np.mgrid[:2 * MAX_SIDE, : 4 * MAX_SIDE]
    r = MAX_SIDE * 0.6
    two = ((rows - MAX_SIDE) ** 2 + (cols - 1.1 * MAX_SIDE) ** 2 <= r * r) | \
        ((rows - MAX_SIDE) ** 2 + (cols - 2.1 * MAX_SIDE) ** 2 <= r * r)
    np.testing.assert_array_equal(split_cells(two.astype(np.int32)), two.astype(np.int32))
    small = two[::4, ::4].astype(np.int32)  # the same shape, a quarter the size: cut
    assert split_cells(small).max() == 2


def test_the_option_is_checked_and_the_model_decides_by_default():
    from napari_unet import UNet, load_model

    assert load_model("default").metadata["split"] == SPLIT_DEPTH  # the nuclei model cuts
    net = UNet(depth=2, base_channels=4)
    assert SegmentOptions().split is None and SegmentOptions().split_for(net) == 0.0
    net.metadata = {"split": 0.4}
    assert SegmentOptions().split_for(net) == 0.4
    assert SegmentOptions(split=0).split_for(net) == 0.0
    for bad in (-0.1, 1.0, True, "deep"):
        with pytest.raises(ValueError, match="split must be 0"):
            SegmentOptions(split=bad)
    net.metadata = {"split": 2}
    with pytest.raises(ValueError, match="the model's recorded split must be 0"):
        SegmentOptions().split_for(net)


def test_two_merged_nuclei_are_cut_but_one_large_irregular_one_is_not():
    """Two small round nuclei decoded as one cell are cut into two along their neck; one
    large nucleus with a bump (a second, shallow distance peak) stays whole, where a fixed
    depth of 2 px cuts it too."""
    from skimage.draw import disk

    labels = np.zeros((140, 130), np.int32)
    for centre in ((20, 20), (20, 37)):  # radius 10, centres 17 px apart: a narrow neck
        labels[disk(centre, 10, shape=labels.shape)] = 1
    labels[disk((90, 60), 35, shape=labels.shape)] = 2
    labels[disk((90, 103), 10, shape=labels.shape)] = 2  # a bump on the large one
    cut = split_cells(labels)
    assert cut[20, 20] != cut[20, 37] and cut[20, 20] > 0 and cut[20, 37] > 0
    assert len(np.unique(cut[labels == 1])) == 2
    assert len(np.unique(cut[labels == 2])) == 1, "the large nucleus is one cell"
    assert (cut[labels == 0] == 0).all()
    fixed = split_cells(labels, depth=0.01)  # h = max(2 px, 1 %): 2 px
    assert len(np.unique(fixed[labels == 2])) == 2, "a fixed depth cuts its bump off"


def test_without_the_edt_package_scipy_gives_the_same_cuts(packed, monkeypatch):
    from napari_unet.core import split

    _, merged = packed
    fast = split_cells(merged)
    monkeypatch.setattr(split, "_edt", None)
    np.testing.assert_array_equal(split_cells(merged), fast)
