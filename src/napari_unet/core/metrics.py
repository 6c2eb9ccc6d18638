"""Instance segmentation metrics: one-to-one matching of objects by IoU.

Objects of the ground truth and of a prediction are matched one to one so that
as many pairs as possible have an intersection over union (IoU) of at least
``iou_threshold`` (among those, the matching with the largest total IoU; found
with :func:`scipy.optimize.linear_sum_assignment`). Matched pairs are true
positives, unmatched predicted objects false positives and unmatched true
objects false negatives. The overlaps come from one contingency table of the
two label images (``numpy.unique`` over pixel pairs), never from loops over
objects and pixels, so matching thousands of cells takes milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from .labels import check_labels

__all__ = ["MatchResult", "match", "match_planes", "iou_table"]


@dataclass(frozen=True)
class MatchResult:
    """Counts and scores of one matching (see :func:`match`).

    Attributes
    ----------
    tp, fp, fn : int
        Matched pairs, unmatched predicted objects, unmatched true objects.
    n_true, n_pred : int
        Objects in the ground truth and in the prediction.
    iou_threshold : float
        The IoU from which a pair may be matched.
    matched_iou_sum : float
        Sum of the IoU of the matched pairs (to combine results exactly).

    Ratios with a zero denominator are defined without warnings: precision is
    1 when nothing was predicted, recall is 1 when there was nothing to find,
    and all scores are 1 when both images are empty.
    """

    tp: int
    fp: int
    fn: int
    n_true: int
    n_pred: int
    iou_threshold: float
    matched_iou_sum: float = 0.0

    @property
    def precision(self) -> float:
        """TP / (TP + FP)."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        """TP / (TP + FN)."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        """2 TP / (2 TP + FP + FN), the harmonic mean of precision and recall."""
        denom = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denom if denom else 1.0

    @property
    def average_precision(self) -> float:
        """TP / (TP + FP + FN), the "average precision" of the cell tracking/DSB challenges."""
        denom = self.tp + self.fp + self.fn
        return self.tp / denom if denom else 1.0

    @property
    def mean_matched_iou(self) -> float:
        """Mean IoU of the matched pairs (0 without matches, 1 when both images are empty)."""
        if self.tp:
            return self.matched_iou_sum / self.tp
        return 1.0 if self.n_true == 0 and self.n_pred == 0 else 0.0

    def __add__(self, other: MatchResult) -> MatchResult:
        """Pool the counts of two matchings (for example of two planes or images)."""
        if not isinstance(other, MatchResult):
            return NotImplemented
        if other.iou_threshold != self.iou_threshold:
            raise ValueError("cannot pool matchings made at different IoU thresholds")
        return MatchResult(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn,
            self.n_true + other.n_true, self.n_pred + other.n_pred, self.iou_threshold,
            self.matched_iou_sum + other.matched_iou_sum,
        )

    def as_dict(self) -> dict[str, Any]:
        """All counts and scores as a plain dict."""
        return {
            "tp": self.tp, "fp": self.fp, "fn": self.fn, "n_true": self.n_true,
            "n_pred": self.n_pred, "precision": self.precision, "recall": self.recall,
            "f1": self.f1, "average_precision": self.average_precision,
            "mean_matched_iou": self.mean_matched_iou, "iou_threshold": self.iou_threshold,
        }


def _as_labels(array: Any, name: str) -> np.ndarray:
    return check_labels(array, name, ndim=None).astype(np.int64, copy=False)


def iou_table(
    gt_labels: Any, pred_labels: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Overlapping object pairs and their IoU, from one sparse contingency table.

    Returns
    -------
    gt_ids, pred_ids : numpy.ndarray
        The object ids (without 0) of each image.
    rows, cols : numpy.ndarray
        Indices into ``gt_ids`` and ``pred_ids`` of every overlapping pair.
    iou : numpy.ndarray
        The IoU of each of those pairs.

    Examples
    --------
    >>> gt = np.array([[1, 1, 0, 2]])
    >>> pred = np.array([[3, 0, 0, 3]])
    >>> gt_ids, pred_ids, rows, cols, iou = iou_table(gt, pred)
    >>> gt_ids.tolist(), pred_ids.tolist(), rows.tolist(), cols.tolist(), iou.tolist()
    ([1, 2], [3], [0, 1], [0, 0], [0.3333333333333333, 0.5])
    """
    gt = _as_labels(gt_labels, "gt_labels")
    pred = _as_labels(pred_labels, "pred_labels")
    if gt.shape != pred.shape:
        raise ValueError(
            f"gt_labels and pred_labels must have the same shape, got {gt.shape} and "
            f"{pred.shape}"
        )
    g_ids, g_inv, g_area = np.unique(gt.ravel(), return_inverse=True, return_counts=True)
    p_ids, p_inv, p_area = np.unique(pred.ravel(), return_inverse=True, return_counts=True)
    g_inv = g_inv.ravel()
    p_inv = p_inv.ravel()
    # drop background: index shift so that object k of gt_ids is row k
    g_off = 1 if g_ids.size and g_ids[0] == 0 else 0
    p_off = 1 if p_ids.size and p_ids[0] == 0 else 0
    both = (g_inv >= g_off) & (p_inv >= p_off)
    pair = g_inv[both].astype(np.int64) * len(p_ids) + p_inv[both]
    pairs, inter = np.unique(pair, return_counts=True)
    rows = pairs // len(p_ids) - g_off
    cols = pairs % len(p_ids) - p_off
    ga = g_area[g_off:]
    pa = p_area[p_off:]
    iou = inter / (ga[rows] + pa[cols] - inter)
    return g_ids[g_off:], p_ids[p_off:], rows, cols, iou


def match(gt_labels: Any, pred_labels: Any, iou_threshold: float = 0.5) -> MatchResult:
    """Match true and predicted objects one to one by IoU and count TP, FP and FN.

    Parameters
    ----------
    gt_labels, pred_labels : array-like
        Label images of the same shape (any dimension; 0 = background, any
        integer dtype, or bool for a single object). A stack is matched as one
        volume: use :func:`match_planes` to match plane by plane.
    iou_threshold : float
        Pairs with an IoU of at least this may be matched (in (0, 1]).

    Returns
    -------
    MatchResult
        With ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``f1``,
        ``average_precision`` (TP / (TP + FP + FN)) and ``mean_matched_iou``.

    Examples
    --------
    A perfect match, and a merge (two true cells predicted as one):

    >>> gt = np.array([[1, 1, 0, 2, 2]])
    >>> match(gt, gt).f1
    1.0
    >>> merged = match(gt, np.array([[5, 5, 5, 5, 5]]))
    >>> merged.tp, merged.fp, merged.fn
    (0, 1, 2)
    """
    t = float(iou_threshold)
    if not 0.0 < t <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], not {iou_threshold}")
    gt_ids, pred_ids, rows, cols, iou = iou_table(gt_labels, pred_labels)
    n_true, n_pred = len(gt_ids), len(pred_ids)
    ok = iou >= t
    rows, cols, iou = rows[ok], cols[ok], iou[ok]
    if len(iou) == 0:
        return MatchResult(0, n_pred, n_true, n_true, n_pred, t, 0.0)
    # Above IoU 0.5 every object has at most one candidate: the matching is unique.
    if t > 0.5:
        tp, total = len(iou), float(iou.sum())
    else:
        # Only objects with a candidate take part; maximise the number of matches
        # first, then the total IoU (each match is worth more than any IoU sum).
        r_ids, r = np.unique(rows, return_inverse=True)
        c_ids, c = np.unique(cols, return_inverse=True)
        big = float(min(len(r_ids), len(c_ids)) + 1)
        score = np.zeros((len(r_ids), len(c_ids)))
        score[r.ravel(), c.ravel()] = big + iou
        ri, ci = linear_sum_assignment(score, maximize=True)
        chosen = score[ri, ci] > 0
        tp, total = int(chosen.sum()), float((score[ri, ci][chosen] - big).sum())
    return MatchResult(tp, n_pred - tp, n_true - tp, n_true, n_pred, t, total)


def match_planes(
    gt_labels: Any, pred_labels: Any, iou_threshold: float = 0.5
) -> MatchResult:
    """Match a stack (or a sequence of images) plane by plane and pool the counts.

    ``gt_labels`` and ``pred_labels`` are ``(plane, row, col)`` arrays or
    sequences of 2D label images of the same shapes.
    """
    pairs: Iterable[tuple[Any, Any]] = zip(gt_labels, pred_labels)
    n_gt, n_pred = len(gt_labels), len(pred_labels)
    if n_gt != n_pred:
        raise ValueError(f"{n_gt} ground-truth planes but {n_pred} predicted planes")
    total = MatchResult(0, 0, 0, 0, 0, float(iou_threshold))
    for g, p in pairs:
        total = total + match(g, p, iou_threshold)
    return total
