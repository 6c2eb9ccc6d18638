"""Cutting apart cells that hold two or more touching nuclei.

A U-Net trained with gaps carved between touching nuclei still merges some of
them, most often in packed colonies where the gap is faint. A merged pair has
the shape of a peanut: the distance from its inside to its rim has two deep
peaks with a saddle between them. The rule, applied to each cell on its own:

1. **Distance**: the cell's *interior* is its pixels whose four neighbours are
   in the cell too (its rim is left out, so touching cells are apart). The
   Euclidean distance of each pixel to the nearest pixel outside the interior
   is smoothed by a Gaussian of sigma 1 px.
2. **Centres**: the cell's *h*-maxima (peaks that stand at least *h* above the
   saddle to any higher peak), with ``h = max(2 px, depth × the cell's largest
   distance)``: scaled to the cell, so that a large irregular nucleus is not
   cut at its bumps while two small touching ones are. The h-maxima are only
   looked for in cells with two separate peaks (plateaus no lower than their
   neighbours in the cell) that reach that height, found for the whole image
   at once; most cells have one and are passed over.
3. **Cut**: a cell with two or more centres is cut by a watershed of the
   distance from its centres. A part smaller than ``min_size`` pixels gives up
   its centre and the watershed is redone, so no pixel is lost; a cell left
   with one centre is not cut.

Only cells whose bounding box fits in :data:`MAX_SIDE` × :data:`MAX_SIDE`
pixels are looked at, so that an image cut into blocks needs to see only that
far around a block (:func:`split_halo`) to cut the same cells the same way.

Numbering: the first part of a cut cell (in raster order of the parts' first
pixels) keeps the cell's id; the other parts get new ids after the highest id,
in the order of their cell's id and then their own raster order
(:func:`number_splits`).

Decision and measurements: docs/models.md ("Cutting merged nuclei apart, chosen
by measurement").
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

try:  # the same distances as scipy's, five to ten times faster
    import edt as _edt
except ImportError:  # pragma: no cover - edt is a dependency; scipy stands in
    _edt = None

__all__ = [
    "SPLIT_DEPTH",
    "MAX_SIDE",
    "MIN_DEPTH",
    "Split",
    "split_halo",
    "find_splits",
    "number_splits",
    "apply_splits",
    "split_cells",
]

#: Default depth: how far a second centre must stand above its saddle, as a share of the
#: cell's largest distance to its rim (:func:`split_cells`).
SPLIT_DEPTH = 0.35
#: Cells whose bounding box is larger than this (pixels, either side) are never cut.
MAX_SIDE = 256
#: A centre stands at least this many pixels above its saddle, however small the cell.
MIN_DEPTH = 2.0
_SIGMA = 1.0  # smoothing of the distance
_REACH = 4 * _SIGMA + 8  # pixels beyond a cell whose labels the smoothed distance reads


@dataclass(frozen=True)
class Split:
    """One cell cut into parts.

    Attributes
    ----------
    cell : int
        The cell's id.
    origin : (int, int)
        Row and column of ``parts[0, 0]`` in the plane.
    parts : numpy.ndarray
        Over the cell's bounding box: 0 outside the cell, else the part
        ``1..n`` (raster order of the parts' first pixels).
    plane : int
        The plane of a stack (0 for a 2D image).
    """

    cell: int
    origin: tuple[int, int]
    parts: np.ndarray
    plane: int = 0

    @property
    def n_parts(self) -> int:
        return int(self.parts.max())

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        """``(row0, row1, col0, col1)`` of the bounding box in the plane."""
        r, c = self.origin
        return r, r + self.parts.shape[0], c, c + self.parts.shape[1]


def split_halo(grow_halo: int = 0) -> int:
    """Pixels around a block that a block must see to cut its cells as in one piece.

    A cell that may be cut fits in :data:`MAX_SIDE` pixels and starts (its
    bounding box's top-left corner) in the block; the smoothed distance near it
    reads labels a little further; ``grow_halo`` keeps the reasoning valid for
    cells whose grown pixels are not all connected.
    """
    return int(MAX_SIDE + _REACH + 2 * max(int(grow_halo), 0) + 2)


def _interior(labels: np.ndarray) -> np.ndarray:
    """Cell pixels whose four neighbours carry the same id (outside the image: no cell)."""
    p = np.pad(labels, 1)
    c = p[1:-1, 1:-1]
    inner = c > 0
    inner &= p[:-2, 1:-1] == c
    inner &= p[2:, 1:-1] == c
    inner &= p[1:-1, :-2] == c
    inner &= p[1:-1, 2:] == c
    return inner


def _smoothed_distance(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interior mask and the smoothed distance of the interior to its rim."""
    inner = _interior(labels)
    if _edt is not None:
        dist = _edt.edt(inner.view(np.uint8), black_border=False,
                        parallel=min(4, os.cpu_count() or 1))
    else:
        dist = ndi.distance_transform_edt(inner).astype(np.float32)
    return inner, ndi.gaussian_filter(dist, _SIGMA)


_NEIGHBOURS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def _candidates(labels: np.ndarray, inner: np.ndarray, dist: np.ndarray,
                depth: float) -> np.ndarray:
    """Ids of the cells that have two separate peaks high enough to be centres.

    A peak is a plateau of interior pixels no lower than any neighbour of the
    same cell; a cell's centres (h-maxima) are among its peaks that reach
    ``max(MIN_DEPTH, depth × its highest peak)``, so only cells with two such
    peaks can be cut: they alone go on to the exact test.
    """
    h, w = labels.shape
    lab = np.pad(labels, 1)
    dpad = np.pad(dist, 1)
    width = w + 2
    flat_l, flat_d = lab.reshape(-1), dpad.reshape(-1)
    at = np.flatnonzero(inner & (dist >= MIN_DEPTH))
    if len(at) == 0:
        return np.zeros(0, np.int64)
    rows, cols = np.divmod(at, w)
    at = (rows + 1) * width + cols + 1
    own_l, own_d = flat_l[at], flat_d[at]
    peak = np.ones(len(at), bool)
    for dr, dc in _NEIGHBOURS:
        nb = at + dr * width + dc
        peak &= (flat_l[nb] != own_l) | (flat_d[nb] <= own_d)
    at, cell, value = at[peak], own_l[peak], own_d[peak]
    if len(at) < 2:
        return np.zeros(0, np.int64)
    mask = np.zeros(lab.shape, bool)
    mask.reshape(-1)[at] = True
    plateaus, _ = ndi.label(mask, structure=np.ones((3, 3), bool))
    plateau = plateaus.reshape(-1)[at]
    # the highest peak of each cell, and the height a second centre needs
    ids, inverse = np.unique(cell, return_inverse=True)
    top = np.zeros(len(ids), np.float32)
    np.maximum.at(top, inverse, value)
    need = np.maximum(MIN_DEPTH, depth * top)
    high = value >= need[inverse]
    pairs = np.unique(np.stack([inverse[high], plateau[high]]), axis=1)
    counts = np.bincount(pairs[0], minlength=len(ids))
    return ids[counts >= 2].astype(np.int64)


def _cut(mine: np.ndarray, dist: np.ndarray, depth: float, min_size: int) -> np.ndarray | None:
    """Parts ``1..n`` of one cell (its box), or None if it is not cut."""
    d = np.where(mine, dist, np.float32(0))
    markers, k = ndi.label(h_maxima(d, max(MIN_DEPTH, depth * float(d.max()))) & mine)
    while k > 1:
        parts = watershed(-d, markers, mask=mine)
        sizes = np.bincount(parts.reshape(-1), minlength=k + 1)[1:]
        small = sizes < max(int(min_size), 1)
        if not small.any():
            # number the parts in raster order of their first pixels
            first = np.unique(parts[parts > 0], return_index=True)[1]
            order = np.argsort(np.flatnonzero(parts > 0)[first], kind="stable")
            table = np.zeros(k + 1, np.int32)
            table[1 + order] = np.arange(1, k + 1, dtype=np.int32)
            return table[parts]
        # the smallest part gives up its centre; the others are flooded again
        drop = np.zeros(k + 1, bool)
        drop[1 + int(np.argmin(np.where(small, sizes, np.iinfo(np.int64).max)))] = True
        keep = np.flatnonzero(~drop[1:]) + 1
        table = np.zeros(k + 1, np.int32)
        table[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
        markers, k = table[markers], len(keep)
    return None


def find_splits(
    labels: np.ndarray,
    depth: float = SPLIT_DEPTH,
    min_size: int = 16,
    *,
    owned: tuple[int, int, int, int] | None = None,
    whole: tuple[int, int, int, int] | None = None,
    origin: tuple[int, int] = (0, 0),
    plane: int = 0,
) -> list[Split]:
    """The cells of ``labels`` that the rule cuts (see the module docstring).

    Parameters
    ----------
    labels : numpy.ndarray
        2D non-negative integer labels; not modified.
    depth : float
        Share of a cell's largest distance to its rim by which a second centre
        must stand above its saddle; 0 cuts nothing.
    min_size : int
        Smallest part, in pixels.
    owned : (int, int, int, int), optional
        ``(row0, row1, col0, col1)`` in ``labels``: only cells whose bounding
        box starts there are looked at (a block, with ``labels`` the block and
        its :func:`split_halo`). Default: all.
    whole : (int, int, int, int), optional
        ``(row0, row1, col0, col1)`` in ``labels``: only cells whose bounding
        box lies inside are looked at. A window of a larger image passes itself
        less a margin wider than the growing distance on its sides inside the
        image, so that a cell seen there is the whole cell. Default: all.
    origin : (int, int)
        Position of ``labels[0, 0]`` in the plane (for the splits' origins).
    plane : int
        Plane of a stack, recorded in the splits.

    Returns
    -------
    list of Split
        In the order of the cells' ids.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be a 2D integer array, got {labels.dtype} {labels.shape}")
    if depth <= 0 or labels.size == 0 or not labels.any():
        return []
    if labels.dtype not in (np.int32, np.int64):
        labels = labels.astype(np.int64 if labels.max() > np.iinfo(np.int32).max else np.int32)
    inner, dist = _smoothed_distance(labels)
    cells = _candidates(labels, inner, dist, float(depth))
    if len(cells) == 0:
        return []
    low = int(cells.min())
    boxes = ndi.find_objects(np.where((labels >= low) & (labels <= cells.max()),
                                      labels - (low - 1), 0))
    splits = []
    for cell in cells.tolist():
        box = boxes[cell - low]
        r0, c0 = box[0].start, box[1].start
        if box[0].stop - r0 > MAX_SIDE or box[1].stop - c0 > MAX_SIDE:
            continue
        if owned is not None and not (owned[0] <= r0 < owned[1] and owned[2] <= c0 < owned[3]):
            continue
        if whole is not None and not (whole[0] <= r0 and box[0].stop <= whole[1]
                                      and whole[2] <= c0 and box[1].stop <= whole[3]):
            continue
        mine = labels[box] == cell
        parts = _cut(mine, dist[box], float(depth), min_size)
        if parts is not None:
            small = parts.astype(np.min_scalar_type(int(parts.max())))
            splits.append(Split(cell, (origin[0] + r0, origin[1] + c0), small, plane))
    return splits


def number_splits(splits: list[Split], n_cells: int) -> tuple[list[Split], np.ndarray, int]:
    """New ids for the parts: ``(splits sorted by plane and cell, first new id of each, n)``.

    The parts after the first of each cut cell are numbered from ``n_cells + 1``
    in the order of their cell's id (planes in order); ``n`` is the count of
    cells afterwards.
    """
    ordered = sorted(splits, key=lambda s: (s.plane, s.cell))
    extra = np.array([s.n_parts - 1 for s in ordered], np.int64)
    starts = n_cells + 1 + np.concatenate([[0], np.cumsum(extra)[:-1]]).astype(np.int64) \
        if len(ordered) else np.zeros(0, np.int64)
    total = n_cells + int(extra.sum())
    if total > np.iinfo(np.int32).max:  # pragma: no cover - 2 billion cells
        raise ValueError("more than 2**31 cells: the labels do not fit int32")
    return ordered, starts, total


def apply_splits(labels: np.ndarray, splits: list[Split], starts: np.ndarray,
                 origin: tuple[int, int] = (0, 0)) -> int:
    """Write the parts' ids into ``labels`` (in place, where it overlaps the splits).

    ``labels`` is a piece of a plane whose ``[0, 0]`` lies at ``origin``;
    ``splits`` and ``starts`` come from :func:`number_splits`. Returns the count
    of pixels changed.
    """
    changed = 0
    h, w = labels.shape
    for split, start in zip(splits, starts.tolist()):
        r0, r1, c0, c1 = split.bounds
        a0, a1 = max(r0, origin[0]), min(r1, origin[0] + h)
        b0, b1 = max(c0, origin[1]), min(c1, origin[1] + w)
        if a0 >= a1 or b0 >= b1:
            continue
        parts = split.parts[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0]
        view = labels[a0 - origin[0] : a1 - origin[0], b0 - origin[1] : b1 - origin[1]]
        where = (parts > 1) & (view == split.cell)
        view[where] = parts[where].astype(np.int64) + (start - 2)
        changed += int(where.sum())
    return changed


def split_cells(labels: np.ndarray, depth: float = SPLIT_DEPTH, min_size: int = 16) -> np.ndarray:
    """Labels with the cells that hold two or more nuclei cut apart.

    Parameters
    ----------
    labels : numpy.ndarray
        2D non-negative integer labels, or a stack of them ``(plane, row, col)``
        numbered through the stack; not modified.
    depth : float
        How far a second centre must stand above its saddle, as a share of the
        cell's largest distance to its rim (see the module docstring); 0 cuts
        nothing.
    min_size : int
        Smallest part, in pixels.

    Returns
    -------
    numpy.ndarray
        int32 labels: cut cells keep their id for their first part, and the
        other parts are numbered after the highest id.

    Examples
    --------
    Two discs that touch along a short contact make one cell, cut in two:

    >>> rows, cols = np.mgrid[:24, :40]
    >>> def disc(c):
    ...     return (rows - 12) ** 2 + (cols - c) ** 2 <= 81
    >>> two = disc(11) | disc(28)
    >>> cut = split_cells(two.astype(np.int32))
    >>> np.unique(cut).tolist(), int(cut[12, 11]), int(cut[12, 28])
    ([0, 1, 2], 1, 2)
    """
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3) or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be 2D or 3D integer labels, got {labels.dtype} "
                         f"{labels.shape}")
    out = labels.astype(np.int32)
    planes = out if out.ndim == 3 else out[None]
    splits = [s for z in range(planes.shape[0])
              for s in find_splits(planes[z], depth, min_size, plane=z)]
    ordered, starts, _ = number_splits(splits, int(labels.max(initial=0)))
    for z in range(planes.shape[0]):
        mine = [i for i, s in enumerate(ordered) if s.plane == z]
        apply_splits(planes[z], [ordered[i] for i in mine], starts[mine])
    return out
