"""Parts of an image: the pixels a view shows, windows of larger arrays, pyramids, coverage.

Geometry that the napari widgets need but that holds no napari or Qt: which
pixels lie inside a rectangle given in continuous data coordinates, a writable
window into a full-size output array, the strided pyramid of a result, the
on-disk outputs of a region, and how much of an image some labels cover.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "RegionView",
    "lazy",
    "pixels_in_view",
    "pyramid",
    "region_outputs",
    "annotation_coverage",
]


def pixels_in_view(
    corners: Any, shape: Sequence[int]
) -> tuple[slice, ...]:
    """The pixels of an array that a rectangular view shows, as one slice per axis.

    Parameters
    ----------
    corners : array-like, (n_corners, n_axes)
        The corners of the view in the array's continuous data coordinates,
        where pixel ``i`` covers ``[i - 0.5, i + 0.5]`` (napari's convention). All
        four corners of a 2D view, so that a rotated view is covered too.
    shape : sequence of int
        The array's shape along the same axes.

    Returns
    -------
    tuple of slice
        Every pixel that the view shows, even partly, clipped to the array.

    Raises
    ------
    ValueError
        If the view shows no pixel of the array.

    Examples
    --------
    >>> pixels_in_view([[9.7, -3.0], [20.2, 40.0]], (100, 30))
    (slice(10, 21, None), slice(0, 30, None))
    """
    pts = np.asarray(corners, dtype=float)
    if pts.ndim != 2 or pts.shape[1] != len(shape):
        raise ValueError(f"corners must be (n_corners, {len(shape)}) coordinates, "
                         f"not of shape {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError("the view's corners are not finite")
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    out = []
    for a, b, n in zip(lo, hi, shape):
        start = int(np.clip(np.floor(a + 0.5), 0, n))
        stop = int(np.clip(np.ceil(b + 0.5), 0, n))
        if stop <= start:
            raise ValueError("the view shows no part of the image")
        out.append(slice(start, stop))
    return tuple(out)


class RegionView:
    """A writable window ``index`` of a larger array, indexed in the window's coordinates.

    Lets the segmentation engine write the result of a region (one plane, the
    part shown) straight into a full-size (zarr) array.

    Examples
    --------
    >>> full = np.zeros((3, 4, 5), int)
    >>> view = RegionView(full, (1, slice(1, 3), slice(None)))
    >>> view.shape
    (2, 5)
    >>> view[0, 2:4] = 7
    >>> np.argwhere(full == 7).tolist()
    [[1, 1, 2], [1, 1, 3]]
    """

    def __init__(self, array: Any, index: tuple) -> None:
        self.array = array
        self.index = tuple(index) + (slice(None),) * (len(array.shape) - len(index))
        self.starts: list[int] = []
        shape = []
        for idx, n in zip(self.index, array.shape):
            if isinstance(idx, slice):
                start, stop, step = idx.indices(n)
                if step != 1:
                    raise ValueError("a region is made of slices of step 1 and single indices")
                self.starts.append(start)
                shape.append(max(stop - start, 0))
        self.shape = tuple(shape)
        self.dtype = array.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _full(self, key: Any) -> tuple:
        key = key if isinstance(key, tuple) else (key,)
        if key == (Ellipsis,):
            key = ()
        key = key + (slice(None),) * (len(self.shape) - len(key))
        full, k = [], 0
        for idx in self.index:
            if not isinstance(idx, slice):
                full.append(idx)
                continue
            part, start, n = key[k], self.starts[k], self.shape[k]
            if isinstance(part, slice):
                a, b, _ = part.indices(n)
                full.append(slice(start + a, start + b))
            else:
                full.append(start + int(part))
            k += 1
        return tuple(full)

    def __getitem__(self, key: Any) -> Any:
        return self.array[self._full(key)]

    def __setitem__(self, key: Any, value: Any) -> None:
        self.array[self._full(key)] = value


def lazy(array: Any) -> Any:
    """A dask view of an array (zarr arrays keep their chunks); dask arrays as they are."""
    import dask.array as da

    if isinstance(array, da.Array):
        return array
    chunks = getattr(array, "chunks", None)
    return da.from_array(array, chunks=chunks if isinstance(chunks, tuple) else "auto")


def pyramid(array: Any, level_shapes: Sequence[Sequence[int]]) -> list[Any]:
    """Strided views of a full-resolution array, one per level of an image's pyramid.

    ``level_shapes`` are the (spatial) shapes of the image's levels, largest
    first; level ``k`` of the result takes every ``round(shape_0 / shape_k)``-th
    pixel (nearest neighbour, as labels need). The views are lazy (dask) and
    read the array only where shown.

    Examples
    --------
    >>> levels = pyramid(np.arange(64).reshape(8, 8), [(8, 8), (4, 4), (2, 2)])
    >>> [tuple(level.shape) for level in levels]
    [(8, 8), (4, 4), (2, 2)]
    """
    base = lazy(array)
    shapes = [tuple(int(s) for s in shape) for shape in level_shapes]
    if not shapes:
        return [base]
    levels = [base]
    for shape in shapes[1:]:
        steps = [max(1, round(a / b)) for a, b in zip(shapes[0], shape)]
        levels.append(base[tuple(slice(None, None, s) for s in steps)])
    return levels


def region_outputs(
    folder: str | Path,
    spatial_shape: Sequence[int],
    index: tuple,
    n_classes: int | None = None,
    chunk: int = 1024,
) -> tuple[Any, RegionView, Any, RegionView | None]:
    """Full-size zarr outputs in ``folder`` and windows into them for one region.

    Returns ``(labels, labels_region, probabilities, probabilities_region)``:
    an int32 labels array of ``spatial_shape`` (``labels.zarr``) and, when
    ``n_classes`` is given, a float32 ``(n_classes, *spatial_shape)``
    probabilities array (``probabilities.zarr``, else None), both chunked by
    planes of ``chunk`` × ``chunk``, and the :class:`RegionView` of each that the
    region ``index`` (into the spatial axes) writes into.
    """
    from .blocks import create_zarr_array

    folder = Path(folder)
    spatial = tuple(int(s) for s in spatial_shape)
    chunks = (1,) * (len(spatial) - 2) + (chunk, chunk)
    labels = create_zarr_array(folder / "labels.zarr", spatial, chunks, "int32")
    probs = probs_region = None
    if n_classes is not None:
        probs = create_zarr_array(folder / "probabilities.zarr", (int(n_classes), *spatial),
                                  (int(n_classes), *chunks), "float32")
        probs_region = RegionView(probs, (slice(None), *index))
    return labels, RegionView(labels, index), probs, probs_region


def annotation_coverage(labels: Any, reach: float | None = None) -> float:
    """The fraction of an image that painted labels speak for.

    A pixel counts when it lies within ``reach`` pixels of a painted cell
    (default: twice the median cell diameter, at least 8 pixels): where every
    cell is painted, unpainted pixels nearby are truly background. Only planes
    of a stack that hold labels count, as in training. 0 for empty labels.

    A low value means that most of the image is unpainted, so that training on
    the whole image would teach the network that the cells there are background.

    Examples
    --------
    >>> labels = np.zeros((200, 200), int)
    >>> labels[10:20, 10:20] = 1
    >>> round(annotation_coverage(labels), 2)  # a 10 px cell speaks for ~23 px around it
    0.04
    """
    lab = np.asarray(labels)
    planes = [lab] if lab.ndim == 2 else [p for p in lab.reshape(-1, *lab.shape[-2:])]
    covered = total = 0.0
    for plane in planes:
        fg = plane > 0
        if not fg.any():
            continue
        if reach is None:
            from .cellsize import median_cell_diameter

            r = max(8.0, 2.0 * median_cell_diameter(plane))
        else:
            r = float(reach)
        # on a coarse grid: the distance only needs to be right to a few pixels
        step = max(1, int(max(plane.shape) // 512))
        small = ~fg[::step, ::step] if step > 1 else ~fg
        if step > 1:  # a coarse pixel counts as painted if any of its pixels is
            h, w = small.shape
            pad = np.zeros((h * step, w * step), bool)
            pad[: plane.shape[0], : plane.shape[1]] = fg
            small = ~pad.reshape(h, step, w, step).any(axis=(1, 3))
        near = ndi.distance_transform_edt(small) * step <= r
        covered += float(near.mean()) * plane.size
        total += plane.size
    return covered / total if total else 0.0
