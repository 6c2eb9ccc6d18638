"""The boundary weight map of the U-Net paper, at live speed, and training targets.

Ronneberger et al. (2015) train with a pixel-wise loss weighted by

    w(x) = w_c(x) + w0 · exp(-(d1(x) + d2(x))² / (2σ²))

where ``d1`` and ``d2`` are the distances to the nearest and the second nearest
cell, and ``w_c`` balances the class frequencies. The border term makes the
network learn the thin background gaps between touching cells.

Where the border term applies
-----------------------------
The border term is added to **background pixels only** (label 0), as in the
paper's Fig. 3d, where the high weights sit in the gaps between touching
cells; pixels inside a cell get the class-balance term alone. In training
targets it goes on the pixels that separate cells (:func:`border_classes`):
the background with its carved gaps (two classes), and also the boundary
class (three classes: background / interior / boundary), whose pixels lie
along the contacts between touching cells; there ``d1`` is 0 and ``d2`` the
distance to the other cell, so the boundary of a contact gets about ``w0``
and the rim of a lone cell next to nothing. ``d1`` and ``d2``
are Euclidean distances (in units of ``sampling``) from the pixel's centre to
the centre of the nearest pixel of the nearest cell and of the nearest pixel
of the second nearest (different) cell.

Speed
-----
The border term is below ``1e-6 · w0`` wherever ``d1 + d2 > D`` with
``D = σ·sqrt(2 ln 10⁶) ≈ 5.26 σ``, and it is set to exactly 0 there. So only
cells closer than ``D`` to a pixel matter. Each cell gets one small Euclidean
distance transform over its bounding box grown by ``D``, and the two smallest
distances per pixel are kept; both cells that matter at a pixel reach it, so
``d1`` and ``d2`` are exact wherever ``d1 + d2 <= D``. Cells with no other
cell within ``D`` are skipped. The cost grows with the image area (the
windows), not with cells × pixels, and small windows stay in the CPU cache.
:class:`WeightMapCache` recomputes only the neighbourhood of an edit, with a
result identical to a full computation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .labels import check_labels, check_nonnegative

__all__ = [
    "boundary_weight_map",
    "border_term",
    "class_weight_table",
    "carve_gaps",
    "training_targets",
    "target_classes",
    "WeightMapCache",
    "IGNORE_INDEX",
    "cutoff_distance",
    "border_classes",
]

#: Class value of pixels that are not annotated in training targets (weight 0 there).
IGNORE_INDEX = 255

_EPS_FRACTION = 1e-6  # border terms below this fraction of w0 are set to 0


#: Target classes that get the border term, per target mode (see the module notes).
BORDER_CLASSES = {"binary": (0,), "boundary": (0, 2)}


def border_classes(mode: str) -> tuple[int, ...]:
    """The target classes the border term is added to: the pixels that separate cells.

    >>> border_classes("binary"), border_classes("boundary")
    ((0,), (0, 2))
    """
    try:
        return BORDER_CLASSES[mode]
    except KeyError:
        raise ValueError(f"mode must be 'binary' or 'boundary', not {mode!r}") from None


def cutoff_distance(sigma: float) -> float:
    """``D``: beyond ``d1 + d2 > D`` the border term is below ``1e-6 · w0`` and set to 0."""
    return float(sigma) * math.sqrt(2.0 * math.log(1.0 / _EPS_FRACTION))


_NEGATIVE_HINT = (
    "; mark unannotated pixels with ignore_value= in training_targets, or set them to 0")


def _as_labels(labels: Any, name: str = "labels") -> np.ndarray:
    return check_labels(labels, name, nonnegative=False)


def _check_nonnegative(lab: np.ndarray, name: str = "labels") -> None:
    check_nonnegative(lab, name, _NEGATIVE_HINT)


def _check_params(w0: float, sigma: float) -> None:
    if not (math.isfinite(float(w0)) and float(w0) >= 0):
        raise ValueError(f"w0 must be a finite number >= 0 (10 in the paper), not {w0!r}")
    if not (math.isfinite(float(sigma)) and float(sigma) > 0):
        raise ValueError(f"sigma must be a finite distance > 0 (5 pixels in the paper), "
                         f"not {sigma!r}")


def _sampling(sampling: Any) -> tuple[float, float]:
    if sampling is None:
        return (1.0, 1.0)
    s = np.broadcast_to(np.asarray(sampling, dtype=float), (2,)) if np.ndim(sampling) == 0 \
        else np.asarray(sampling, dtype=float)[-2:]
    if s.shape != (2,) or np.any(s <= 0):
        raise ValueError(f"sampling must be one positive spacing or (row, col) spacings, "
                         f"not {sampling!r}")
    return (float(s[0]), float(s[1]))


def border_term(
    labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0, sampling: Any = None,
    *, inside_cells: bool = False,
) -> np.ndarray:
    """The border term ``w0·exp(-(d1+d2)²/(2σ²))`` of a 2D label image (0 inside cells).

    Exact (to float32) where it exceeds ``1e-6·w0``, exactly 0 elsewhere; see the
    module notes for how it is computed. With ``inside_cells`` the term is also
    given on cell pixels (where ``d1`` is 0 and ``d2`` the distance to the nearest
    other cell): a smooth field that can be interpolated when it is warped, and
    that equals the weight map's border term wherever the pixel is background.
    """
    lab = _as_labels(labels)
    if lab.ndim != 2:
        raise ValueError(f"border_term takes one 2D plane, got shape {lab.shape}; "
                         "use boundary_weight_map for stacks")
    _check_params(w0, sigma)
    _check_nonnegative(lab)
    spacing = _sampling(sampling)
    out = np.zeros(lab.shape, np.float32)
    if w0 == 0 or lab.size == 0:
        return out
    big = cutoff_distance(sigma)
    if lab.max() > lab.size:  # huge ids: renumber (0 stays 0) so that find_objects stays small
        uniq, inverse = np.unique(lab, return_inverse=True)
        lab = inverse.reshape(lab.shape) + (0 if uniq[0] == 0 else 1)
    objects = ndi.find_objects(lab)
    ids = [i + 1 for i, sl in enumerate(objects) if sl is not None]
    if len(ids) < 2:
        return out
    background = lab == 0
    if not background.any() and not inside_cells:
        return out
    # the two smallest distances to cells, over the cells whose reach covers a pixel
    d1 = np.full(lab.shape, np.inf, np.float32)
    d2 = np.full(lab.shape, np.inf, np.float32)
    pad = [int(math.ceil(big / s)) + 1 for s in spacing]
    h, w = lab.shape
    for i in ids:
        rs, cs = objects[i - 1]
        win = (slice(max(rs.start - pad[0], 0), min(rs.stop + pad[0], h)),
               slice(max(cs.start - pad[1], 0), min(cs.stop + pad[1], w)))
        sub = lab[win]
        not_i = sub != i
        if not (not_i & (sub != 0)).any():
            continue  # no other cell within reach: i matters to nobody's d1 + d2 <= D
        dist = ndi.distance_transform_edt(not_i, sampling=spacing).astype(np.float32)
        v1, v2 = d1[win], d2[win]
        np.minimum(v2, np.maximum(v1, dist), out=v2)
        np.minimum(v1, dist, out=v1)
    total = d1 + d2
    near = (total <= big) if inside_cells else background & (total <= big)
    t = total[near].astype(np.float64)
    out[near] = (w0 * np.exp(-(t**2) / (2.0 * sigma**2))).astype(np.float32)
    return out


def class_weight_table(
    counts: Sequence[int], class_weights: Any = "balanced"
) -> np.ndarray:
    """Per-class weights ``w_c`` from class pixel counts.

    ``"balanced"`` gives each present class ``total / (n_present · count)``, so that
    every class carries the same total weight (absent classes get 1); None gives 1
    everywhere; a sequence or mapping ``{class: weight}`` is used as given.
    """
    counts = np.asarray(counts, dtype=np.float64)
    n = len(counts)
    if class_weights is None:
        return np.ones(n, np.float32)
    if isinstance(class_weights, str):
        if class_weights != "balanced":
            raise ValueError(f"class_weights must be 'balanced', None or per-class weights, "
                             f"not {class_weights!r}")
        present = counts > 0
        table = np.ones(n)
        if present.any():
            table[present] = counts.sum() / (present.sum() * counts[present])
        return table.astype(np.float32)
    if isinstance(class_weights, Mapping):
        table = np.ones(n)
        for k, v in class_weights.items():
            if not 0 <= int(k) < n:
                raise ValueError(f"class_weights names class {k}, but there are {n} classes")
            table[int(k)] = float(v)
        return table.astype(np.float32)
    table = np.asarray(class_weights, dtype=np.float64)
    if table.shape != (n,):
        raise ValueError(f"class_weights needs {n} weights (one per class), got {table.shape}")
    return table.astype(np.float32)


def boundary_weight_map(
    labels: Any,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: Any = "balanced",
    sampling: Any = None,
) -> np.ndarray:
    """The U-Net weight map ``w = w_c + w0·exp(-(d1+d2)²/(2σ²))`` of instance labels.

    Parameters
    ----------
    labels : array-like of int
        2D ``(row, col)`` instance labels or a stack ``(plane, row, col)``
        (computed plane by plane); 0 is background, any other value a cell (ids
        need not be sequential); any integer dtype. Not modified.
    w0 : float
        Height of the border term (10 in the paper).
    sigma : float
        Width of the border term, in units of ``sampling`` (5 pixels in the paper).
    class_weights : "balanced", None, sequence or mapping
        ``w_c`` for background (class 0) and cells (class 1): ``"balanced"`` for
        inverse class frequencies (computed over the whole array), None for 1, or
        explicit weights such as ``{0: 1.0, 1: 2.0}``.
    sampling : float or (float, float), optional
        Pixel spacing (row, col) for anisotropic pixels.

    Returns
    -------
    numpy.ndarray
        float32 weights of the labels' shape. The border term is added on
        background pixels only and is exactly 0 where ``d1 + d2`` exceeds
        :func:`cutoff_distance` (there it would be below ``1e-6·w0``). With fewer
        than two cells only ``w_c`` remains.

    Examples
    --------
    Two touching squares: the background pixels next to their contact get the
    highest border weight (w_c = 1 here, to show the border term alone):

    >>> labels = np.zeros((7, 9), dtype=np.uint16)
    >>> labels[2:5, 1:4] = 1
    >>> labels[2:5, 5:8] = 2
    >>> w = boundary_weight_map(labels, w0=10, sigma=2, class_weights=None)
    >>> print(np.round(w, 1))
    [[1.  1.1 1.2 1.5 1.8 1.5 1.2 1.1 1. ]
     [1.  1.4 2.1 3.7 4.7 3.7 2.1 1.4 1. ]
     [1.1 1.  1.  1.  7.1 1.  1.  1.  1.1]
     [1.1 1.  1.  1.  7.1 1.  1.  1.  1.1]
     [1.1 1.  1.  1.  7.1 1.  1.  1.  1.1]
     [1.  1.4 2.1 3.7 4.7 3.7 2.1 1.4 1. ]
     [1.  1.1 1.2 1.5 1.8 1.5 1.2 1.1 1. ]]

    The gap column is one pixel from each cell: ``1 + 10·exp(-(1+1)²/(2·2²)) ≈ 7.1``.
    """
    lab = _as_labels(labels)
    _check_params(w0, sigma)
    _check_nonnegative(lab)
    _sampling(sampling)
    fg = lab > 0
    n_fg = int(np.count_nonzero(fg))
    table = class_weight_table([fg.size - n_fg, n_fg], class_weights)
    out = np.where(fg, table[1], table[0]).astype(np.float32, copy=False)
    del fg
    planes = [lab] if lab.ndim == 2 else list(lab)
    views = [out] if lab.ndim == 2 else list(out)
    for plane, view in zip(planes, views):
        view += border_term(plane, w0, sigma, sampling)
    return out


def carve_gaps(labels: Any, gap: int = 1) -> np.ndarray:
    """Instance labels with thin background gaps carved between touching cells.

    ``gap=1`` removes the pixels of the cell with the larger id that touch
    (4-neighbourhood) a different cell, leaving a one-pixel gap; ``gap=2`` removes
    the touching pixels on both sides; 0 carves nothing. After carving, no two
    cells are 4-connected, so connected components separate them. Works plane by
    plane on stacks; the input is not modified.

    >>> carve_gaps(np.array([[1, 1, 2, 2]]), gap=1)
    array([[1, 1, 0, 2]])
    """
    lab = _as_labels(labels)
    if gap not in (0, 1, 2):
        raise ValueError(f"gap must be 0, 1 or 2 pixels, not {gap}")
    out = lab.copy()
    if gap == 0:
        return out
    carve = np.zeros(lab.shape, bool)
    for a, b, la, lb in _neighbour_pairs(lab):
        contact = (la != lb) & (la > 0) & (lb > 0)
        if gap == 2:
            carve[a] |= contact
            carve[b] |= contact
        else:
            carve[a] |= contact & (la > lb)
            carve[b] |= contact & (lb > la)
    out[carve] = 0
    return out


def training_targets(
    labels: Any,
    *,
    gap: int = 1,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: Any = "balanced",
    ignore_value: int | None = None,
    mode: str = "binary",
    sampling: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Class targets and the weight map to train the U-Net on, from instance labels.

    Parameters
    ----------
    labels : array-like of int
        Instance labels (2D or a stack); 0 is background.
    gap : {0, 1, 2}
        ``"binary"`` mode: background pixels carved between touching cells
        (:func:`carve_gaps`). ``"boundary"`` mode: width of the boundary class.
    w0, sigma, class_weights, sampling
        As for :func:`boundary_weight_map`, computed on the carved targets (the
        carved gaps are background and get the high border weights); in
        ``"boundary"`` mode the border term goes on background and boundary
        pixels (:func:`border_classes`). With ``ignore_value`` set, the class
        balance counts annotated pixels only.
    ignore_value : int, optional
        Label value of pixels that are not annotated: they get class
        :data:`IGNORE_INDEX` and weight 0, and count as background for distances.
    mode : {"binary", "boundary"}
        ``"binary"``: background 0 / cell 1, with carved gaps. ``"boundary"``:
        background 0 / interior 1 / boundary 2, where boundary pixels are cell
        pixels within ``gap`` pixels (4-neighbour steps) of the background or of
        another cell.

    Returns
    -------
    classes : numpy.ndarray of uint8
    weights : numpy.ndarray of float32

    Examples
    --------
    >>> labels = np.array([[0, 1, 1, 2, 2, 0]])
    >>> classes, weights = training_targets(labels, w0=0, class_weights=None)
    >>> classes
    array([[0, 1, 1, 0, 1, 0]], dtype=uint8)
    """
    lab = _as_labels(labels)
    if mode not in ("binary", "boundary"):
        raise ValueError(f"mode must be 'binary' or 'boundary', not {mode!r}")
    _check_params(w0, sigma)
    ignore = np.zeros(lab.shape, bool) if ignore_value is None else lab == ignore_value
    if ignore.any():
        lab = np.where(ignore, 0, lab)
    _check_nonnegative(lab)
    classes, cells = target_classes(lab, gap=gap, mode=mode)
    n_classes = 2 if mode == "binary" else 3
    annotated = ~ignore
    counts = np.bincount(classes[annotated].ravel(), minlength=n_classes)[:n_classes]
    table = class_weight_table(counts, class_weights)
    weights = table[classes].astype(np.float32)
    planes = [cells] if cells.ndim == 2 else list(cells)
    views = [weights] if cells.ndim == 2 else list(weights)
    kinds = [classes] if cells.ndim == 2 else list(classes)
    on = border_classes(mode)
    for plane, view, kind in zip(planes, views, kinds):
        term = border_term(plane, w0, sigma, sampling, inside_cells=mode == "boundary")
        view += np.where(np.isin(kind, on), term, 0).astype(np.float32)
    classes[ignore] = IGNORE_INDEX
    weights[ignore] = 0.0
    return classes, weights


def target_classes(labels: Any, *, gap: int = 1, mode: str = "binary") -> tuple[np.ndarray,
                                                                               np.ndarray]:
    """The class of every pixel in the training targets, and the cells the border term sees.

    ``"binary"``: background 0 / cell 1 after :func:`carve_gaps`; the cells are
    the carved labels. ``"boundary"``: background 0 / interior 1 / boundary 2,
    where boundary pixels are cell pixels within ``gap`` 4-neighbour steps of the
    background or of another cell; the cells are the labels themselves. The rule
    of :func:`training_targets` (which adds weights and the ignore class).

    >>> classes, cells = target_classes(np.array([[0, 1, 1, 2, 2, 0]]))
    >>> classes, cells
    (array([[0, 1, 1, 0, 1, 0]], dtype=uint8), array([[0, 1, 1, 0, 2, 0]]))
    """
    lab = _as_labels(labels)
    if mode not in ("binary", "boundary"):
        raise ValueError(f"mode must be 'binary' or 'boundary', not {mode!r}")
    if mode == "binary":
        cells = carve_gaps(lab, gap)
        return (cells > 0).astype(np.uint8), cells
    if gap < 1:
        raise ValueError("the boundary mode needs gap >= 1 (the boundary width)")
    inner = lab.copy()
    for _ in range(int(gap)):
        inner[_edges(inner)] = 0
    classes = np.where(lab > 0, 2, 0).astype(np.uint8)
    classes[inner > 0] = 1
    return classes, lab


def _changed_box(box: Any, shape: tuple[int, int]) -> tuple[slice, slice]:
    """Row and column slices (step 1, within ``shape``) covering ``box``."""
    if box is None:
        return (slice(0, shape[0]), slice(0, shape[1]))
    if len(box) != 2:
        raise ValueError(f"the changed region needs (rows, cols) slices or index arrays, "
                         f"got {len(box)} items; pass the 2D box of the edit")
    out = []
    for item, n in zip(box, shape):
        if isinstance(item, slice):
            start, stop, step = item.indices(n)
            if step != 1:
                raise ValueError("the changed box must use slices of step 1")
            out.append(slice(start, max(stop, start)))
            continue
        idx = np.asarray(item)
        if not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"changed indices must be integers, not {idx.dtype}")
        if idx.size == 0:
            return (slice(0, 0), slice(0, 0))
        lo, hi = int(idx.min()), int(idx.max())
        if lo < -n or hi >= n:
            raise ValueError(f"changed indices {lo}..{hi} lie outside the image ({n} pixels)")
        idx = np.where(idx < 0, idx + n, idx)
        out.append(slice(int(idx.min()), int(idx.max()) + 1))
    return (out[0], out[1])


def _neighbour_pairs(lab: np.ndarray) -> Any:
    """For rows then columns: the index of each pixel, of its next 4-neighbour, and their values.

    Yields ``(a, b, lab[a], lab[b])`` with ``a``/``b`` index tuples into ``lab``.
    """
    for axis in (lab.ndim - 2, lab.ndim - 1):
        a = [slice(None)] * lab.ndim
        b = [slice(None)] * lab.ndim
        a[axis] = slice(None, -1)
        b[axis] = slice(1, None)
        yield tuple(a), tuple(b), lab[tuple(a)], lab[tuple(b)]


def _edges(lab: np.ndarray) -> np.ndarray:
    """Cell pixels with a 4-neighbour of another value (background or another cell).

    The image border does not count as background.
    """
    out = np.zeros(lab.shape, bool)
    for a, b, la, lb in _neighbour_pairs(lab):
        differ = la != lb
        out[a] |= differ & (la > 0)
        out[b] |= differ & (lb > 0)
    return out


class WeightMapCache:
    """The weight map of one 2D label image, kept up to date edit by edit.

    After an edit, :meth:`update` recomputes the border term only within reach of
    the changed pixels (the changed box grown by :func:`cutoff_distance`), using
    the labels in a margin of that size around it, and updates the class counts
    from the changed box. The result is identical to :func:`boundary_weight_map`
    of the edited labels.

    Parameters
    ----------
    labels : array-like of int
        A 2D label image (copied).
    w0, sigma, class_weights, sampling
        As for :func:`boundary_weight_map`.

    Examples
    --------
    >>> labels = np.zeros((64, 64), np.int32)
    >>> labels[10:20, 10:20] = 1
    >>> cache = WeightMapCache(labels)
    >>> labels[10:20, 20:30] = 2          # paint a second, touching cell
    >>> region = cache.update(labels, (slice(10, 20), slice(20, 30)))
    >>> bool(np.array_equal(cache.weights, boundary_weight_map(labels)))
    True
    """

    def __init__(
        self,
        labels: Any,
        w0: float = 10.0,
        sigma: float = 5.0,
        class_weights: Any = "balanced",
        sampling: Any = None,
    ) -> None:
        lab = _as_labels(labels)
        if lab.ndim != 2:
            raise ValueError(f"WeightMapCache holds one 2D plane, got shape {lab.shape}; "
                             "make one cache per plane of a stack")
        _check_params(w0, sigma)
        _check_nonnegative(lab)
        self.w0, self.sigma, self.class_weights = float(w0), float(sigma), class_weights
        self.sampling = _sampling(sampling)
        self.labels = lab.copy()
        self.border = border_term(self.labels, w0, sigma, self.sampling)
        fg = self.labels > 0
        self.counts = np.array([fg.size - int(fg.sum()), int(fg.sum())], dtype=np.int64)
        self._table = class_weight_table(self.counts, class_weights)
        self._weights: np.ndarray | None = None
        self._reach = [int(math.ceil(cutoff_distance(sigma) / s)) + 1 for s in self.sampling]
        #: True when the last update changed the class-balance weights (so every pixel's
        #: weight changed a little, not only those in the returned region).
        self.balance_changed = False

    @property
    def weights(self) -> np.ndarray:
        """The full float32 weight map (composed on first access after an update)."""
        if self._weights is None:
            self._weights = self._compose(self.labels, self.border)
        return self._weights

    def _compose(self, labels: np.ndarray, border: np.ndarray) -> np.ndarray:
        out = np.where(labels > 0, self._table[1], self._table[0]).astype(np.float32)
        out += border
        return out

    def region_weights(self, region: Sequence[slice]) -> np.ndarray:
        """The weight map in a region, without composing the whole map."""
        r = tuple(region)
        return self._compose(self.labels[r], self.border[r])

    def update(self, labels: Any, box: Any = None) -> tuple[slice, slice]:
        """Bring the map up to date after an edit.

        Parameters
        ----------
        labels : array-like of int
            The edited 2D label image (the whole plane).
        box : (slice, slice) or (array, array), optional
            Where the labels changed: the bounding box of the changed pixels as
            ``(rows, cols)`` slices, or the changed pixels' indices as two integer
            arrays (rows, cols), as napari's paint event gives them. None means
            anywhere. Every changed pixel must lie inside it.

        Returns
        -------
        (slice, slice)
            The neighbourhood of ``box`` where the border term may have changed.
            When :attr:`balance_changed` is True the class-balance term of every
            pixel changed too (slightly, for a small edit); :attr:`weights` is then
            composed again on its next access.
        """
        lab = _as_labels(labels)
        if lab.shape != self.labels.shape:
            raise ValueError(f"the labels changed shape ({self.labels.shape} -> {lab.shape}); "
                             "make a new WeightMapCache")
        h, w = lab.shape
        rs, cs = _changed_box(box, (h, w))
        if rs.start >= rs.stop or cs.start >= cs.stop:  # nothing changed
            self.balance_changed = False
            return (slice(0, 0), slice(0, 0))
        _check_nonnegative(lab[rs, cs])
        if not np.can_cast(lab.dtype, self.labels.dtype):  # e.g. ids beyond the old dtype
            wider = np.promote_types(lab.dtype, self.labels.dtype)
            self.labels = self.labels.astype(wider if wider.kind in "iu" else lab.dtype)
        old_fg = int(np.count_nonzero(self.labels[rs, cs]))
        self.labels[rs, cs] = lab[rs, cs]
        new_fg = int(np.count_nonzero(self.labels[rs, cs]))
        self.counts += np.array([old_fg - new_fg, new_fg - old_fg])
        # pixels whose border term may change, and the labels they depend on
        inner = [(max(s.start - r, 0), min(s.stop + r, n))
                 for s, r, n in zip((rs, cs), self._reach, (h, w))]
        outer = [(max(a - r, 0), min(b + r, n))
                 for (a, b), r, n in zip(inner, self._reach, (h, w))]
        sub = border_term(self.labels[outer[0][0]:outer[0][1], outer[1][0]:outer[1][1]],
                          self.w0, self.sigma, self.sampling)
        ir = slice(inner[0][0], inner[0][1])
        ic = slice(inner[1][0], inner[1][1])
        self.border[ir, ic] = sub[inner[0][0] - outer[0][0]:inner[0][1] - outer[0][0],
                                  inner[1][0] - outer[1][0]:inner[1][1] - outer[1][0]]
        table = class_weight_table(self.counts, self.class_weights)
        self.balance_changed = not np.array_equal(table, self._table)
        if self.balance_changed:
            self._table = table
            self._weights = None  # every pixel's w_c changed: compose again when asked
        elif self._weights is not None:
            self._weights[ir, ic] = self.region_weights((ir, ic))
        return (ir, ic)
