"""Validation: the held-out cells predicted as segmentation will predict them.

Each plane with held-out annotation gives one window (the bounding box of its
held-out pixels, with the network's context around it, mirrored at the image
border). The window is predicted by seamless tiled prediction and turned into
cells by the same decoding as :func:`~napari_unet.segment`; a predicted cell
counts when most of it lies in the held-out area. Instance F1 (IoU 0.5) is
pooled over all windows, with the weighted cross-entropy as validation loss.

Which model a run keeps is :func:`is_better`: when a trained model is fine-tuned,
a model replaces the kept one when its F1 is clearly better, or when it is no
worse on both measures and better on one of them; a new network keeps the best F1.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..decode import probabilities_to_labels
from ..metrics import MatchResult, match
from ..model import UNet
from ..normalize import Normalization
from ..options import SegmentOptions
from ..tiling import iter_predict_tiled, reflect_index
from ..weightmap import IGNORE_INDEX, border_classes

__all__ = ["ValWindow", "make_window", "validate", "is_better", "clearly_better",
           "clear_margin", "CLEAR_CELLS", "MIN_SIZE"]

#: Cells (true and predicted) smaller than this (pixels) are not counted.
MIN_SIZE = 16


#: A validation F1 is clearly better than another when it is higher by more than this
#: many cells' worth: ``CLEAR_CELLS / n`` for ``n`` held-out cells (:func:`clear_margin`).
CLEAR_CELLS = 2.0


def clear_margin(cells: int | None) -> float:
    """How much higher a validation F1 on ``cells`` held-out cells must be to count as
    clearly better (0 when the number of cells is unknown)."""
    return CLEAR_CELLS / cells if cells else 0.0


def clearly_better(f1: float, than: float, cells: int | None) -> bool:
    """Whether a validation F1 on ``cells`` held-out cells beats ``than`` by more than
    chance (by more than :func:`clear_margin`)."""
    return f1 > than + clear_margin(cells)


def is_better(val_f1: float, val_loss: float, kept_f1: float, kept_loss: float,
              cells: int | None = None, fine_tuning: bool = True) -> bool:
    """Whether a newly validated model replaces the kept one.

    When a trained model is fine-tuned, the new model replaces the kept one when
    its F1 is clearly better (by more than :func:`clear_margin`, two cells'
    worth), or when it is no worse in F1 *and* no worse in validation loss, and
    better in one of them. On a few dozen held-out cells the F1 moves by whole
    cells and goes up and down from one validation to the next by chance; the
    weighted loss over the held-out pixels says whether the network really fits
    them better. A model that wins one cell while fitting the pixels worse is not
    kept, so fine-tuning that does not help keeps the model it started from
    (measured: on packed clusters, 72 painted cells, 19 held out, the F1 of the
    validations swung between 0.70 and 0.89 while the loss and the F1 on 1,362
    other cells stayed at or below the start's).

    A new network has no good start to protect, and its loss can rise while it
    learns to find cells: there the higher F1 wins (ties: the lower loss).

    Parameters
    ----------
    val_f1, val_loss : float
        The new validation.
    kept_f1, kept_loss : float
        The kept model's validation (on the same held-out cells).
    cells : int, optional
        The number of held-out cells.
    fine_tuning : bool
        Whether training started from a trained model (validated before the
        first step), or from a new network.

    Returns
    -------
    bool

    Examples
    --------
    >>> is_better(0.85, 0.20, 0.80, 0.25, cells=20)
    True
    >>> is_better(0.85, 0.26, 0.80, 0.25, cells=20)  # one cell more, fits the pixels worse
    False
    >>> is_better(0.80, 0.20, 0.80, 0.25, cells=20)  # the same cells, fitted better
    True
    >>> is_better(0.95, 0.30, 0.80, 0.25, cells=20)  # clearly more cells
    True
    >>> is_better(0.85, 0.26, 0.80, 0.25, cells=20, fine_tuning=False)
    True
    """
    if not fine_tuning:
        return (val_f1, -val_loss) > (kept_f1, -kept_loss)
    if clearly_better(val_f1, kept_f1, cells):
        return True
    no_worse = val_f1 >= kept_f1 and val_loss <= kept_loss
    return no_worse and (val_f1 > kept_f1 or val_loss < kept_loss)


class PreNormalised(Normalization):
    """Planes are normalised once for training; prediction must not do it again."""

    def stats(self, plane: Any) -> tuple[float, float]:  # noqa: D102
        return 0.0, 1.0


@dataclass
class ValWindow:
    """One held-out window: the image with context and what it is compared with."""

    image: np.ndarray  # (C, h + 2m, w + 2m)
    context: int  # m
    gt: np.ndarray  # (h, w) held-out cells (0 elsewhere)
    mask: np.ndarray  # (h, w) held-out pixels
    target: np.ndarray  # (h, w) uint8 classes, IGNORE_INDEX outside the mask
    weight: np.ndarray  # (h, w) float32, 0 outside the mask

    @property
    def n_cells(self) -> int:
        return int(len(np.unique(self.gt)) - 1)


def window(array: np.ndarray, r0: int, c0: int, h: int, w: int) -> np.ndarray:
    """``array[..., r0:r0+h, c0:c0+w]`` with mirrored context beyond the borders."""
    rows, cols = array.shape[-2:]
    if r0 >= 0 and c0 >= 0 and r0 + h <= rows and c0 + w <= cols:
        return array[..., r0 : r0 + h, c0 : c0 + w]
    r = reflect_index(np.arange(r0, r0 + h), rows)
    c = reflect_index(np.arange(c0, c0 + w), cols)
    return array[..., r[:, None], c[None, :]]


def _remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    if not labels.any():
        return labels
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    return np.where(small[labels], 0, labels) if small.any() else labels


def make_window(image: np.ndarray, labels: np.ndarray, mask: np.ndarray, classes: np.ndarray,
                border: np.ndarray, table: tuple[float, ...], margin: int,
                mode: str = "binary") -> ValWindow:
    """The validation window of one plane's held-out ``mask``.

    ``classes`` and ``border`` are the plane's target classes and border term
    (whole plane), ``table`` the class weights, ``margin`` the context the
    network needs, ``mode`` the target mode (which classes get the border term:
    :func:`~napari_unet.core.weightmap.border_classes`).
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    m = int(margin) + 8
    img = np.ascontiguousarray(window(image, r0 - m, c0 - m, r1 - r0 + 2 * m, c1 - c0 + 2 * m))
    box = (slice(r0, r1), slice(c0, c1))
    sub = mask[box]
    gt = _remove_small(np.where(sub, labels[box], 0), MIN_SIZE)
    cls = classes[box]
    separating = np.isin(cls, border_classes(mode))
    weight = (np.asarray(table, np.float32)[cls] + np.where(separating, border[box], 0)).astype(
        np.float32)
    target = np.where(sub, cls, IGNORE_INDEX).astype(np.uint8)
    return ValWindow(img, m, gt, sub.copy(), target, np.where(sub, weight, 0).astype(np.float32))


def _held_out_cells(pred: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Predicted cells with at least half of their pixels in the held-out area."""
    if not pred.any():
        return pred
    total = np.bincount(pred.ravel())
    inside = np.bincount(pred[mask].ravel(), minlength=len(total))
    keep = inside * 2 >= total
    keep[0] = False
    return np.where(keep[pred] & mask, pred, 0)


def validate(
    model: UNet,
    windows: list[ValWindow],
    device: torch.device,
    grow: int,
    notify: Callable[[str], Any],
) -> Generator[Any, None, tuple[float, float]]:
    """(validation loss, pooled F1) of ``model``; yields ``notify(message)`` between tiles."""
    pooled = MatchResult(0, 0, 0, 0, 0, 0.5)
    loss_sum, weight_sum = 0.0, 0.0
    split = SegmentOptions().split_for(model)  # cells decoded as segment will decode them
    for k, v in enumerate(windows):
        gen = iter_predict_tiled(model, v.image, device=device, axes="cyx",
                                 normalization=PreNormalised())
        try:
            while True:
                tiles = next(gen)
                yield notify(f"validating: window {k + 1}/{len(windows)}, tile "
                             f"{tiles.done}/{tiles.total}")
        except StopIteration as stop:
            probs = stop.value
        finally:
            gen.close()
        h, w = v.gt.shape
        c = v.context
        probs = probs[:, c : c + h, c : c + w]
        ok = v.target != IGNORE_INDEX
        p_true = np.take_along_axis(probs, np.where(ok, v.target, 0)[None].astype(np.int64),
                                    0)[0]
        loss_sum += float((v.weight * -np.log(np.clip(p_true, 1e-7, 1.0)))[ok].sum())
        weight_sum += float(v.weight[ok].sum())
        pred = probabilities_to_labels(probs, model.classes, threshold=0.5, min_size=MIN_SIZE,
                                       grow=grow, split=split)
        pred = _remove_small(_held_out_cells(pred, v.mask), MIN_SIZE)
        pooled = pooled + match(v.gt, pred, 0.5)
    return loss_sum / max(weight_sum, 1e-8), pooled.f1
