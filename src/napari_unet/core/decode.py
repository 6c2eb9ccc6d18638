"""From class probabilities to instance labels: thresholds, components and growing.

The rule (for a two-class model, background / cell):

1. **Foreground**: pixels whose cell probability is at least ``threshold``.
2. **Cells**: connected components of the foreground with 4-connectivity, so
   that a one-pixel diagonal gap still separates two cells. Components smaller
   than ``min_size`` pixels are dropped, and so are those smaller than
   ``min_share`` times the median size of the plane's components (debris, the
   glow around a very bright nucleus, specks of noise: pieces far smaller than
   the cells of the image) unless they touch the image border, where cells
   are cut (:func:`typical_cells`).
3. **Grow back over the gaps**: the U-Net is trained on targets in which
   touching cells are separated by thin background gaps (``gap`` pixels carved
   out of the cells). Background pixels within ``grow`` pixels of *two or more*
   different cells are given to the nearest cell, which closes the carved gaps;
   the border between a cell and real background is not moved.

For a three-class model (background / interior / boundary) the cells are the
connected components of the interior class, grown by up to ``grow`` pixels
(``grow·√2`` diagonally, to reach cell corners) into the boundary class.

4. **Cut merged nuclei apart**: a cell whose distance to its rim has two or
   more deep centres is cut between them (:mod:`~napari_unet.core.split`;
   ``split=0`` switches this off).

"Nearest" is the Euclidean distance between pixel centres; when several cell
pixels are equally near, the leftmost of them wins, and of those the topmost
(the smallest column, then the smallest row). This is the choice of
``skimage.segmentation.expand_labels`` (the feature transform of
``scipy.ndimage.distance_transform_edt``), which napari-unet used before, so
the labels are unchanged; it depends only on pixels within the growing
distance, so an image cut into blocks gives the same labels as in one piece.

Growing touches only the pixels near the cells, with a cost bounded by the
growing distance (:func:`grow_cells`): no whole-image distance transform.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from skimage.measure import label as cc_label

from .split import SPLIT_DEPTH, split_cells

__all__ = [
    "probabilities_to_labels",
    "typical_cells",
    "rim_labels",
    "MIN_SHARE",
    "seeds_and_region",
    "is_three_class",
    "grow_reach",
    "grow_halo",
    "grow_cells",
    "reach_offsets",
    "count_labels",
    "map_labels",
]


_ROWS_PIXELS = 1 << 18  # pixels per slice of rows in whole-image passes (cache-sized)


def _row_slices(shape: tuple[int, ...]) -> list[slice]:
    """Slices of rows of about ``_ROWS_PIXELS`` pixels: numpy's temporaries stay in cache."""
    step = max(1, _ROWS_PIXELS // max(int(np.prod(shape[1:])), 1))
    return [slice(r, r + step) for r in range(0, shape[0], step)]


def count_labels(labels: np.ndarray, n: int) -> np.ndarray:
    """Pixels of each id ``0..n`` of non-negative integer labels (a ``bincount`` by slices).

    >>> count_labels(np.array([[0, 1, 1], [2, 0, 1]]), 2)
    array([2, 3, 1])
    """
    counts = np.zeros(n + 1, np.intp)
    for rows in _row_slices(labels.shape):
        counts += np.bincount(labels[rows].reshape(-1), minlength=n + 1)
    return counts


def map_labels(table: np.ndarray, labels: np.ndarray, out: np.ndarray | None = None,
               shift: int = 0) -> np.ndarray:
    """``table[labels + shift]``, by slices of rows, into ``out`` (a new array by default).

    ``shift`` lets a table cover negative labels (``table[0]`` is label ``-shift``).

    >>> map_labels(np.array([0, 5, 7]), np.array([[0, 1], [2, 2]]))
    array([[0, 5],
           [7, 7]])
    """
    if out is None:
        out = np.empty(labels.shape, table.dtype)
    for rows in _row_slices(labels.shape):
        index = labels[rows]
        if shift:
            index = index + shift
        np.take(table, index, out=out[rows], mode="clip")
    return out


def rim_labels(labels: np.ndarray) -> np.ndarray:
    """The labels on the outermost rows and columns of a 2D array (with repeats, 0 included).

    >>> rim_labels(np.array([[1, 0, 0], [0, 2, 0], [0, 0, 3]]))
    array([1, 0, 0, 0, 0, 3, 1, 0, 0, 0, 0, 3])
    """
    return np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])


#: Default ``min_share``: components under this share of the median component size of
#: their plane (in pixels; 0.1 of the area is 0.32 of the diameter) are dropped, unless
#: they touch the image border. Mitotic figures, smaller than the nuclei around them, stay.
MIN_SHARE = 0.1


def typical_cells(sizes: np.ndarray, kept: np.ndarray, border: np.ndarray,
                  share: float) -> np.ndarray:
    """The components of ``kept`` that are not far smaller than the plane's typical one.

    A component is dropped when it is smaller than ``share`` times the median
    size of the kept components and does not touch the image border (a cell cut
    by the border may be small).

    Parameters
    ----------
    sizes : numpy.ndarray
        Pixels of each component (index 0, the background, is not looked at
        unless it is kept).
    kept : numpy.ndarray
        Boolean, the components kept so far (by ``min_size``), same length.
    border : numpy.ndarray
        Boolean, the components touching the image border, same length.
    share : float
        Share of the median size; 0 keeps ``kept`` as it is.

    Returns
    -------
    numpy.ndarray
        A new boolean array: ``kept`` less the small components.

    Examples
    --------
    >>> typical_cells(np.array([0, 100, 90, 110, 10, 10]), np.array([0, 1, 1, 1, 1, 1], bool),
    ...               np.array([0, 0, 0, 0, 0, 1], bool), 0.2)
    array([False,  True,  True,  True, False,  True])
    """
    kept = np.asarray(kept, bool).copy()
    if share <= 0 or not kept.any():
        return kept
    typical = float(np.median(np.asarray(sizes)[kept]))
    kept &= (np.asarray(sizes) >= share * typical) | np.asarray(border, bool)
    return kept


def is_three_class(classes: Sequence[str]) -> bool:
    """True for a model with an interior and a boundary class (cells grow into the boundary)."""
    return "interior" in [c.lower() for c in classes]


def seeds_and_region(
    probs: np.ndarray, classes: Sequence[str], threshold: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """Seed pixels of the cells, and for three-class models the region they may grow into.

    Parameters
    ----------
    probs : numpy.ndarray
        ``(n_classes, row, col)`` probabilities of one plane.
    classes : sequence of str
        The meaning of the classes.
    threshold : float
        Probability from which a pixel counts as cell (or interior, or boundary).

    Returns
    -------
    (numpy.ndarray, numpy.ndarray or None)
        Boolean seeds, and the boolean region (seeds included) for a three-class
        model, else None.
    """
    names = [c.lower() for c in classes]
    if "interior" in names:
        seeds = probs[names.index("interior")] >= threshold
        region = seeds | (probs[names.index("boundary")] >= threshold) if "boundary" in names \
            else seeds
        return seeds, region
    fg_index = names.index("cell") if "cell" in names else len(names) - 1
    return probs[fg_index] >= threshold, None


def grow_reach(grow: int, three_class: bool) -> float:
    """Largest distance over which a cell is grown: ``grow``, or ``grow·√2`` for three classes.

    Boundary pixels at a cell's corners lie diagonally off the interior: the
    three-class rule reaches them too.
    """
    return grow * np.sqrt(2) if three_class else float(grow)


def grow_halo(grow: int, classes: Sequence[str]) -> int:
    """Pixels around a pixel that decide how it is grown: the halo a block needs."""
    return int(np.ceil(grow_reach(max(int(grow), 0), is_three_class(classes))))


@lru_cache(maxsize=32)
def reach_offsets(reach: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Offsets ``(rows, cols, squared distances)`` within ``reach`` of a pixel, in tie order.

    All ``(dr, dc) != (0, 0)`` with ``sqrt(dr² + dc²) <= reach`` (compared in
    float64 as a distance transform does), sorted by squared distance, then
    column offset, then row offset: scanning them in this order, the first
    labelled pixel met is the nearest one, leftmost then topmost on ties.
    The arrays are read-only.

    >>> rows, cols, d2 = reach_offsets(1.0)
    >>> list(zip(rows.tolist(), cols.tolist()))
    [(0, -1), (-1, 0), (1, 0), (0, 1)]
    """
    k = int(np.floor(reach))
    rows, cols = np.mgrid[-k : k + 1, -k : k + 1]
    rows, cols = rows.ravel(), cols.ravel()
    d2 = rows * rows + cols * cols
    inside = (d2 > 0) & (np.sqrt(d2.astype(np.float64)) <= reach)
    rows, cols, d2 = rows[inside], cols[inside], d2[inside]
    order = np.lexsort((rows, cols, d2))
    result = tuple(np.ascontiguousarray(a[order], dtype=np.int64) for a in (rows, cols, d2))
    for a in result:
        a.setflags(write=False)
    return result  # type: ignore[return-value]


def _dilate_disk(padded: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``padded`` dilated by the offsets (a digital disk), as row segments: O(radius) passes."""
    half = {}  # row offset -> half width of the disk on that row
    for r, c in zip(rows.tolist(), cols.tolist()):
        half[abs(r)] = max(half.get(abs(r), 0), abs(c))
    width = padded.copy()  # dilated along the rows by the current half width
    near = np.zeros_like(padded)
    w = 0
    for r in sorted(half, reverse=True):  # outer rows are the narrowest
        while w < half[r]:
            w += 1
            width[:, w:] |= padded[:, :-w]
            width[:, :-w] |= padded[:, w:]
        if r == 0:
            near |= width
        else:
            near[r:] |= width[:-r]
            near[:-r] |= width[r:]
    return near


_CHUNK = 1 << 16  # pixels looked at together: their arrays stay in the CPU's cache


def _gather(flat: np.ndarray, start: int, at: np.ndarray) -> np.ndarray:
    """``flat[start + at]`` without building the index array (``at`` is in range)."""
    return np.take(flat[start:], at, mode="clip")


def _two_cells(flat: np.ndarray, at: np.ndarray, starts: list[int]) -> np.ndarray:
    """Mask of the pixels that see two different non-zero labels at the offsets."""
    high = np.zeros(len(at), np.int32)
    low = np.full(len(at), np.iinfo(np.uint32).max, np.uint32)
    one = np.uint32(1)
    for start in starts:
        v = _gather(flat, start, at)
        np.maximum(high, v, out=high)
        v = v.view(np.uint32)
        v -= one  # background (0) becomes the largest uint32: never the minimum
        np.minimum(low, v, out=low)
    high = high.view(np.uint32)
    high -= one  # no cell in reach: wraps to the largest uint32, equal to low
    return high != low


def _first_label(flat: np.ndarray, at: np.ndarray, starts: list[int],
                 d2: np.ndarray) -> np.ndarray:
    """The first non-zero label met from each pixel, scanning the offsets in their order.

    Pixels are dropped as soon as a ring of equal distance gives them a label.
    """
    found = np.zeros(len(at), np.int32)
    todo = np.arange(len(at))
    i, n = 0, len(d2)
    while i < n and len(at):
        ring = _gather(flat, starts[i], at)
        j = i + 1
        while j < n and d2[j] == d2[i]:
            np.copyto(ring, _gather(flat, starts[j], at), where=ring == 0)
            j += 1
        hit = ring != 0
        found[todo[hit]] = ring[hit]
        miss = ~hit
        todo, at = todo[miss], at[miss]
        i = j
    return found


def grow_cells(labels: np.ndarray, region: np.ndarray | None, grow: int) -> np.ndarray:
    """Grow cells back over the carved gaps (two-class) or into ``region`` (three-class).

    Two-class (``region`` None): every background pixel that has at least two
    different cells within ``grow`` pixels takes the label of the nearest cell.
    Three-class: every pixel of ``region`` that is not a cell takes the label of
    the nearest cell within ``grow·√2`` pixels, if there is one. Nearest is
    leftmost, then topmost, on ties (see the module docstring).

    The whole image is only looked at by a few byte-wide mask passes (which
    background pixels are within the growing distance of a cell: a dilation
    done as ``O(grow)`` row-segment passes); the labels at the offsets of a disk
    of that radius are gathered only for those pixels, in cache-sized chunks.
    No distance transform or feature transform is computed.

    Parameters
    ----------
    labels : numpy.ndarray
        2D integer labels, 0 = background; not modified.
    region : numpy.ndarray or None
        Boolean region a three-class model's cells may grow into, or None.
    grow : int
        Growing distance in pixels; 0 returns the labels as they are.

    Returns
    -------
    numpy.ndarray
        New int32 labels.

    Examples
    --------
    >>> labels = np.array([[1, 1, 0, 2, 2, 0, 0, 3]])
    >>> grow_cells(labels, None, 1)  # the gap between 1 and 2 closes; 3 stays apart
    array([[1, 1, 1, 2, 2, 0, 0, 3]], dtype=int32)
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "iub":
        raise ValueError(f"labels must be a 2D integer array, got {labels.dtype} {labels.shape}")
    grow = int(grow)
    if grow <= 0 or labels.size == 0:
        return labels.astype(np.int32)
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high > np.iinfo(np.int32).max:
        raise ValueError(f"labels must be 0 (background) or a positive int32 id, not {low}..{high}")
    if high == 0:
        return labels.astype(np.int32)
    three_class = region is not None
    if three_class:
        region = np.asarray(region, bool)
        if region.shape != labels.shape:
            raise ValueError(f"region has shape {region.shape}, labels {labels.shape}")
    rows, cols, d2 = reach_offsets(grow_reach(grow, three_class))
    k = int(max(np.abs(rows).max(), np.abs(cols).max()))
    h, w = labels.shape
    width = w + 2 * k
    padded = np.zeros((h + 2 * k, width), np.int32)
    inner = padded[k : k + h, k : k + w]
    inner[...] = labels
    flat = padded.reshape(-1)
    # the pixels that may change, as flat indices into the padded image
    if three_class:
        todo = np.zeros(padded.shape, bool)
        np.logical_and(region, inner == 0, out=todo[k : k + h, k : k + w])
    else:
        cells = padded != 0
        todo = _dilate_disk(cells, rows, cols)
        todo &= ~cells
        todo[:k] = todo[h + k :] = False
        todo[:, :k] = todo[:, w + k :] = False
    # flat[starts[i] + at] is the label at offset i of the pixel at flat index base + at
    base = k * width + k
    starts = [base + r * width + c for r, c in zip(rows.tolist(), cols.tolist())]
    at = np.flatnonzero(todo) - base
    del todo
    where, what = [], []
    for s in range(0, len(at), _CHUNK):
        part = at[s : s + _CHUNK]
        if not three_class:
            part = part[_two_cells(flat, part, starts)]
        where.append(part)
        what.append(_first_label(flat, part, starts, d2))
    if where:  # written once all is read: growing looks at the cells as they were
        flat[np.concatenate(where) + base] = np.concatenate(what)
    return inner


def _labels_2d(
    probs: np.ndarray, classes: Sequence[str], threshold: float, min_size: int, grow: int,
    min_share: float,
) -> np.ndarray:
    """Instances of one plane from ``(n_classes, row, col)`` probabilities."""
    seeds, region = seeds_and_region(probs, classes, threshold)
    labels, n = cc_label(seeds, connectivity=1, return_num=True)
    if (min_size > 1 or min_share > 0) and n:
        sizes = count_labels(labels, n)
        keep = sizes >= min_size
        keep[0] = False
        if min_share > 0:
            border = np.zeros(n + 1, bool)
            border[rim_labels(labels)] = True
            keep = typical_cells(sizes, keep, border, min_share)
        if not keep[1:].all():
            relabel = np.zeros(n + 1, dtype=np.int32)
            relabel[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
            labels = map_labels(relabel, labels)
    return grow_cells(labels, region, grow)


def probabilities_to_labels(
    probabilities: np.ndarray,
    classes: Sequence[str] = ("background", "cell"),
    *,
    threshold: float = 0.5,
    min_size: int = 16,
    grow: int = 2,
    split: float = SPLIT_DEPTH,
    min_share: float = MIN_SHARE,
) -> np.ndarray:
    """Instance labels from class probabilities (see the module docstring for the rule).

    Parameters
    ----------
    probabilities : numpy.ndarray
        ``(n_classes, row, col)`` or ``(n_classes, plane, row, col)``; planes are
        labelled separately and numbered on from one plane to the next, so ids are
        unique in the whole stack.
    classes : sequence of str
        The meaning of the classes: ``("background", "cell")`` or
        ``("background", "interior", "boundary")``.
    threshold : float
        Probability from which a pixel counts as cell (or interior).
    min_size : int
        Smaller components (in pixels) are dropped as noise.
    grow : int
        Pixels by which cells are grown back over carved gaps (two-class) or into
        the boundary class (three-class); 0 switches growing off.
    split : float
        How deep a second centre of a cell must be, as a share of the cell's
        largest distance to its rim, for the cell to be cut apart
        (:func:`~napari_unet.core.split.split_cells`); 0 switches cutting off.
        The other parts of a cut cell are numbered after the last cell.
    min_share : float
        Components smaller than this share of the median size of their plane's
        components are dropped too, unless they touch the image border
        (:func:`typical_cells`); 0 keeps them.

    Returns
    -------
    numpy.ndarray
        int32 labels, 0 = background, cells numbered from 1.

    Examples
    --------
    Two cells separated by a one-pixel gap are grown back to touch:

    >>> p = np.zeros((2, 5, 9), np.float32)
    >>> p[1, 1:4, 1:4] = p[1, 1:4, 5:8] = 1.0
    >>> p[0] = 1 - p[1]
    >>> probabilities_to_labels(p, min_size=1, grow=1)
    array([[0, 0, 0, 0, 0, 0, 0, 0, 0],
           [0, 1, 1, 1, 1, 2, 2, 2, 0],
           [0, 1, 1, 1, 1, 2, 2, 2, 0],
           [0, 1, 1, 1, 1, 2, 2, 2, 0],
           [0, 0, 0, 0, 0, 0, 0, 0, 0]], dtype=int32)
    """
    probs = np.asarray(probabilities)
    if probs.ndim not in (3, 4) or probs.shape[0] != len(classes):
        raise ValueError(
            f"probabilities must be (n_classes={len(classes)}, [plane,] row, col), "
            f"got shape {probs.shape}"
        )
    if probs.ndim == 3:
        out = _labels_2d(probs, classes, threshold, int(min_size), int(grow),
                         float(min_share))
    else:
        out = np.zeros(probs.shape[1:], dtype=np.int32)
        next_id = 0
        for z in range(probs.shape[1]):
            lab = _labels_2d(probs[:, z], classes, threshold, int(min_size), int(grow),
                             float(min_share))
            out[z] = np.where(lab > 0, lab + next_id, 0)
            next_id = int(out[z].max(initial=next_id))
    return split_cells(out, split, int(min_size)) if split > 0 else out
