"""The training loss: the paper's pixel-wise weighted softmax cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..weightmap import IGNORE_INDEX
from .config import LOSSES

__all__ = ["training_loss"]


def training_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    kind: str = "weighted_ce",
) -> torch.Tensor:
    """Weighted pixel-wise softmax cross-entropy (plus a foreground Dice term).

    Parameters
    ----------
    logits : torch.Tensor
        ``(batch, n_classes, row, col)`` network output.
    target : torch.Tensor
        ``(batch, row, col)`` class indices, ``IGNORE_INDEX`` (255) where not annotated.
    weight : torch.Tensor
        ``(batch, row, col)`` per-pixel weights (0 where not annotated).
    kind : {"weighted_ce", "weighted_ce+dice"}
        ``"weighted_ce"`` is ``sum(w * CE) / sum(w)`` over the batch; the Dice
        variant adds ``1 - Dice`` of the soft foreground (all classes but
        background) over the annotated pixels.

    Returns
    -------
    torch.Tensor
        A scalar; 0 (with a gradient) when no pixel is annotated.

    Examples
    --------
    >>> logits = torch.zeros(1, 2, 2, 2)
    >>> target = torch.tensor([[[0, 1], [255, 1]]])
    >>> weight = torch.tensor([[[1.0, 1.0], [0.0, 2.0]]])
    >>> round(float(training_loss(logits, target, weight)), 4)  # ln 2
    0.6931
    """
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, not {kind!r}")
    logits = logits.float()
    target = target.long()
    annotated = target != IGNORE_INDEX
    w = weight.float() * annotated
    ce = F.cross_entropy(logits, target, reduction="none", ignore_index=IGNORE_INDEX)
    wsum = w.sum()
    loss = (ce * w).sum() / wsum.clamp_min(1e-8)
    if kind == "weighted_ce+dice":
        fg = 1.0 - torch.softmax(logits, dim=1)[:, 0]
        m = annotated.float()
        t = ((target >= 1) & annotated).float()
        inter = (fg * t).sum()
        denom = (fg * m).sum() + t.sum()
        loss = loss + 1.0 - (2.0 * inter + 1.0) / (denom + 1.0)
    return loss
