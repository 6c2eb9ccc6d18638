"""Instance matching metrics on hand-made cases."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_unet.core.labels import check_labels
from napari_unet.core.metrics import MatchResult, iou_table, match, match_planes


def two_cells() -> np.ndarray:
    gt = np.zeros((20, 30), np.int32)
    gt[2:10, 2:12] = 1
    gt[2:10, 15:28] = 2
    return gt


def test_perfect_match_with_other_ids_and_dtype():
    gt = two_cells()
    pred = np.where(gt == 1, 70, np.where(gt == 2, 5, 0)).astype(np.uint16)
    r = match(gt, pred)
    assert (r.tp, r.fp, r.fn) == (2, 0, 0)
    assert r.precision == r.recall == r.f1 == r.average_precision == 1.0
    assert r.mean_matched_iou == pytest.approx(1.0)


def test_split_cell():
    gt = two_cells()
    pred = gt.copy()
    pred[2:10, 2:7] = 3  # cell 1 split in two halves: IoU 0.5 each
    pred[2:10, 7:12] = 4
    r = match(gt, pred, iou_threshold=0.6)
    assert (r.tp, r.fp, r.fn) == (1, 2, 1)
    assert r.f1 == pytest.approx(2 / (2 + 3))
    assert r.average_precision == pytest.approx(1 / 4)
    # at IoU 0.5 exactly one half may match cell 1, never both
    r = match(gt, pred, iou_threshold=0.5)
    assert (r.tp, r.fp, r.fn) == (2, 1, 0)


def test_merged_cells():
    gt = two_cells()
    pred = np.zeros_like(gt)
    pred[2:10, 2:28] = 1
    r = match(gt, pred, iou_threshold=0.3)
    assert (r.tp, r.fp, r.fn) == (1, 0, 1)  # the merge covers cell 2 with IoU 0.5
    assert r.mean_matched_iou == pytest.approx(104 / 208)
    r = match(gt, pred)
    assert (r.tp, r.fp, r.fn) == (1, 0, 1)
    assert match(gt, pred, iou_threshold=0.51).tp == 0


def test_empty_cases_give_no_warnings_or_nan():
    gt = two_cells()
    empty = np.zeros_like(gt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        both = match(empty, empty)
        none_found = match(gt, empty)
        only_fp = match(empty, gt)
    assert both.f1 == both.precision == both.recall == both.average_precision == 1.0
    assert both.mean_matched_iou == 1.0
    assert (none_found.tp, none_found.fn, none_found.f1, none_found.recall) == (0, 2, 0.0, 0.0)
    assert (only_fp.fp, only_fp.f1, only_fp.precision) == (2, 0.0, 0.0)
    for r in (both, none_found, only_fp):
        assert all(np.isfinite(v) for v in r.as_dict().values())


def test_optimal_assignment_below_half_iou():
    # gt A overlaps X (IoU 0.5) and Y (1/3); gt B overlaps only X (0.25). Greedy by
    # IoU gives X to A and leaves B and Y unmatched; the optimal matching finds two pairs.
    gt = np.array([[1, 1, 1, 1, 1, 1, 2, 2, 2, 2]])
    pred = np.array([[9, 9, 7, 7, 7, 7, 7, 7, 0, 0]])
    r = match(gt, pred, iou_threshold=0.25)
    assert r.tp == 2 and r.fp == 0 and r.fn == 0
    assert r.mean_matched_iou == pytest.approx((1 / 3 + 0.25) / 2)


def test_iou_table_is_sparse_and_exact():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 500, (300, 300))
    pred = (gt + rng.integers(0, 2, gt.shape)) % 500
    gt_ids, pred_ids, rows, cols, iou = iou_table(gt, pred)
    assert len(rows) < len(gt_ids) * len(pred_ids) / 50  # only overlapping pairs
    a, b = gt_ids[rows[0]], pred_ids[cols[0]]
    inter = np.sum((gt == a) & (pred == b))
    union = np.sum((gt == a) | (pred == b))
    assert iou[0] == pytest.approx(inter / union)


def test_match_planes_pools_counts():
    gt = np.stack([two_cells(), np.zeros((20, 30), np.int32)])
    pred = np.stack([two_cells(), two_cells()])
    r = match_planes(gt, pred)
    assert isinstance(r, MatchResult)
    assert (r.tp, r.fp, r.fn) == (2, 2, 0)
    assert r == match(gt[0], pred[0]) + match(gt[1], pred[1])


def test_bad_inputs():
    gt = two_cells()
    with pytest.raises(ValueError, match="same shape"):
        match(gt, gt[:5])
    with pytest.raises(ValueError, match="negative"):
        match(gt, -gt)
    with pytest.raises(ValueError, match="non-integer"):
        match(gt, gt + 0.5)
    with pytest.raises(ValueError, match="iou_threshold"):
        match(gt, gt, iou_threshold=0)
    n_blobs = len(np.unique(check_labels(gt > 0))) - 1
    assert match(gt > 0, gt > 0).tp == n_blobs  # a bool mask: one object per blob
