"""Holding out annotation for validation: compact groups of tiles with enough whole cells.

The annotated area is cut into square tiles a few cells wide. Each cell belongs
to the tile that holds its centre. Starting from a random tile, the nearest
tiles are held out until they hold enough cells: the larger of ``validation``
times the cells painted and ``min(30, a quarter of them)``, so that validation
F1 is measured on at least 30 cells wherever the data has 120 or more, and
never on more than half of them. A held-out cell is held out whole (also the
part of it that lies in a neighbouring tile), and a training cell stays whole
in training, so no cell is cut in two. With fewer than :data:`MIN_CELLS` cells
nothing is held out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Split", "split_validation", "apply_area", "MIN_CELLS", "TARGET_CELLS"]

#: With fewer painted cells than this, nothing is held out for validation.
MIN_CELLS = 8
#: Validation aims at this many held-out cells (when there are four times as many).
TARGET_CELLS = 30


@dataclass
class Split:
    """Per plane: the pixels to train on, those held out (None: none), and the held-out
    area (the chosen tiles; None: none), which stays when labels change later."""

    train: list[np.ndarray]
    val: list[np.ndarray | None]
    val_cells: int
    cells: int
    areas: list[np.ndarray | None] | None = None

    @property
    def has_validation(self) -> bool:
        return self.val_cells > 0


def _centres(labels: np.ndarray, min_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, row, col) of the centre of each cell of at least ``min_size`` pixels."""
    n = int(labels.max())
    flat = labels.ravel()
    rows, cols = np.divmod(np.arange(flat.size), labels.shape[1])
    count = np.bincount(flat, minlength=n + 1)[1:]
    r = np.bincount(flat, weights=rows, minlength=n + 1)[1:]
    c = np.bincount(flat, weights=cols, minlength=n + 1)[1:]
    present = count >= max(min_size, 1)
    ids = np.flatnonzero(present) + 1
    return ids, r[present] / count[present], c[present] / count[present]


def tile_side(labels: Sequence[np.ndarray]) -> int:
    """A tile holds a handful of cells: four median cell diameters, 32 to 256 pixels."""
    areas = np.concatenate([np.bincount(lab.ravel())[1:] for lab in labels])
    areas = areas[areas > 0]
    if areas.size == 0:
        return 128
    side = 4 * math.sqrt(float(np.median(areas)))
    return int(min(256, max(32, 8 * round(side / 8))))


def split_validation(
    labels: Sequence[np.ndarray],
    annotated: Sequence[np.ndarray],
    fraction: float,
    seed: int,
    min_size: int = 16,
) -> Split:
    """Hold out compact groups of tiles with whole cells (see the module notes).

    Parameters
    ----------
    labels : sequence of (H, W) int arrays
        Per plane, cell ids 1..n (consecutive), 0 for background.
    annotated : sequence of (H, W) bool arrays
        Per plane, where the labels are complete.
    fraction : float
        The share of the cells to hold out at least (0: none).
    seed : int
        Makes the choice reproducible.
    min_size : int
        Cells smaller than this (pixels) are not counted (validation ignores them).
    """
    train = [a.copy() for a in annotated]
    val: list[np.ndarray | None] = [None] * len(labels)
    found = [_centres(lab, min_size) for lab in labels]
    cells = sum(len(ids) for ids, _, _ in found)
    if fraction <= 0 or cells < MIN_CELLS:
        return Split(train, val, 0, cells)
    target = max(math.ceil(fraction * cells), min(TARGET_CELLS, cells // 4))
    target = min(target, cells // 2)
    side = tile_side(labels)
    rng = np.random.default_rng([int(seed), 1])
    order: list[tuple[int, int, int, np.ndarray]] = []  # (plane, tile row, tile col, ids)
    for p in rng.permutation(len(labels)):
        lab, ann = labels[p], annotated[p]
        h, w = lab.shape
        nr, nc = -(-h // side), -(-w // side)
        ids, rr, cc = found[p]
        tile_of = (np.minimum(rr // side, nr - 1) * nc + np.minimum(cc // side, nc - 1)).astype(
            np.int64)
        has_annotation = np.array([[ann[i * side:(i + 1) * side, j * side:(j + 1) * side].any()
                                    for j in range(nc)] for i in range(nr)]).ravel()
        with_cells = np.unique(tile_of)
        if with_cells.size == 0:
            continue
        start = int(rng.choice(with_cells))
        ti, tj = np.divmod(np.arange(nr * nc), nc)
        dist = (ti - start // nc) ** 2 + (tj - start % nc) ** 2 + rng.random(nr * nc) * 0.5
        for t in np.argsort(dist, kind="stable"):
            if has_annotation[t]:
                order.append((int(p), int(t // nc), int(t % nc), ids[tile_of == t]))
    held = 0
    chosen: dict[int, list[tuple[int, int, np.ndarray]]] = {}
    for p, i, j, ids in order:
        if held >= target:
            break
        if held + len(ids) > max(target, cells // 2):
            continue
        chosen.setdefault(p, []).append((i, j, ids))
        held += len(ids)
    if held == 0:
        return Split(train, val, 0, cells)
    areas: list[np.ndarray | None] = [None] * len(labels)
    for p, tiles in chosen.items():
        area = np.zeros(labels[p].shape, bool)
        for i, j, _ in tiles:
            area[i * side:(i + 1) * side, j * side:(j + 1) * side] = True
        areas[p] = area
        train[p], val[p], _ = apply_area(labels[p], annotated[p], area, min_size)
    return Split(train, val, held, cells, areas)


def apply_area(labels: np.ndarray, annotated: np.ndarray, area: np.ndarray | None,
               min_size: int = 16) -> tuple[np.ndarray, np.ndarray | None, int]:
    """(train mask, held-out mask or None, held-out cells) of one plane for a held-out area.

    The cells whose centre lies in ``area`` are held out whole, with the
    background of the area; everything else annotated is for training. Used for
    the first split and again whenever the labels change (live training), so the
    held-out area stays where it was.
    """
    if area is None:
        return annotated.copy(), None, 0
    ids, rr, cc = _centres(labels, min_size)
    inside = area[rr.astype(np.int64), cc.astype(np.int64)] if ids.size else np.zeros(0, bool)
    val_ids = np.zeros(int(labels.max()) + 1, bool)
    val_ids[ids[inside]] = True
    small = np.bincount(labels.ravel(), minlength=len(val_ids)) < max(min_size, 1)
    small[0] = False
    in_val = val_ids[labels]
    mask = annotated & ((area & ((labels == 0) | small[labels])) | in_val)
    return annotated & ~mask, mask, int(inside.sum())
