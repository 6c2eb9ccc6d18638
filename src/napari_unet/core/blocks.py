"""Segmenting images larger than memory, block by block, with one id per cell.

The image is cut into blocks of whole tiles (:class:`~napari_unet.core.tiling.BlockGrid`)
and segmented in passes over the blocks, so that only a few blocks are in
memory at once, and the blocks of one pass can run in parallel (on a dask
cluster, see :mod:`napari_unet.core.distributed`):

1. **Predict and label** each block: its input window is read once (the tiles'
   context included, mirrored at the image border), the probabilities are
   predicted tile by tile on the same tile grid as a one-piece pass (so they
   are the same, bit for bit), thresholded, and the connected components of
   the block are labelled. Components smaller than ``min_size`` that do not
   touch the block's border are dropped at once (they are whole). The block's
   local ids go to the output array; a small :class:`BlockSummary` comes back:
   the size and first pixel of each local component, and thin strips of local
   ids along the block's four sides.
2. **Merge** (small data, in one process): local components that touch across
   a block face (4-connectivity, as within a block) are joined by union-find
   (connected components of the graph of facing pairs); a cell is kept when its
   total size is at least ``min_size``; cells are numbered in the raster order
   of their first pixel, which is how a one-piece labelling numbers them.
3. **Grow**: each block maps its local ids to the final ids, takes a halo of
   ``grow`` pixels from its neighbours' strips, grows the cells back over the
   carved gaps (:func:`~napari_unet.core.decode.grow_cells`) and writes the
   final labels over its local ids.

4. **Cut merged nuclei** (:mod:`~napari_unet.core.split`, unless ``split`` is
   0): each block reads its final labels with a halo of
   :func:`~napari_unet.core.split.split_halo` pixels and finds the cuts of the
   cells whose bounding box starts in it (a cell that may be cut is smaller
   than the halo, so it is whole there); the cuts (small) are numbered in one
   process, and each block writes the parts' ids into its own pixels.

Every per-pixel decision sees the same data as in a one-piece segmentation (a
pixel's growth, ties between equally near cells included, depends only on the
pixels within the growing distance), so the result equals
``probabilities_to_labels(predict_tiled(...))`` exactly, ids included, for any
block size.

:func:`plan_segmentation` works out the device, tiles, batch and block grid
once (:class:`SegmentPlan`); a caller that needs the grid first (to create an
output chunked like the blocks) passes its plan on to :func:`iter_segment_blocks`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import warnings
from collections.abc import Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from skimage.measure import label as cc_label

from ._utils import resolve_device
from .decode import (
    count_labels,
    grow_cells,
    grow_halo,
    is_three_class,
    map_labels,
    rim_labels,
    seeds_and_region,
    typical_cells,
)
from .memory import Backoff, is_out_of_memory
from .model import UNet, place_model
from .options import SegmentOptions, SegmentProgress
from .split import Split, apply_splits, find_splits, number_splits, split_halo
from .tiling import (
    BlockGrid,
    ImageLayout,
    WindowReader,
    check_image,
    level0,
    plan_tiles,
    plane_stats,
    predict_region,
    resolve_tiles,
    smaller_tile,
)

__all__ = [
    "SegmentProgress",
    "SegmentPlan",
    "plan_segmentation",
    "BlockSegmentation",
    "BlockSummary",
    "iter_segment_blocks",
    "create_zarr_array",
]

_KEY = tuple[int, int, int]  # (plane, block row, block col)


class BlockSegmentation(NamedTuple):
    """What :func:`iter_segment_blocks` returns."""

    labels: Any
    probabilities: Any
    n_cells: int
    #: the factor the image was rescaled by before segmenting (1.0: as it is), see
    #: :func:`~napari_unet.core.cellsize.iter_segment_sized`
    scale: float = 1.0


@dataclass(frozen=True)
class SegmentPlan:
    """What a segmentation decides once, from the image, the model and the options.

    Made by :func:`plan_segmentation`; :func:`iter_segment_blocks` takes one
    (e.g. from a caller that had to know the block grid first, to create
    an output chunked like the blocks) so that it is not worked out twice.

    Attributes
    ----------
    layout : ImageLayout
        The image's axes, planes and channels.
    device : torch.device
        Where the network runs.
    batch : int
        Tiles per forward pass.
    grid : BlockGrid
        The blocks (of whole tiles of the tile plan).
    classes : tuple of str
        The model's classes.
    threshold, min_size, grow : float, int, int
        The labelling rule (``grow`` resolved from the model if not given).
    block_request : (int, int) or None
        The block size asked for, to lay the blocks out again with smaller tiles.
    overlap : bool
        Decode on the host while the network runs: label a block in a second
        thread while the next one is predicted, and grow blocks in threads (by
        default on a GPU, whose host is otherwise idle; not on the CPU, where
        the network uses every core). The labels are the same either way.
    split : float
        Depth of the rule that cuts merged nuclei apart; 0: off.
    min_share : float
        Cells under this share of the median cell size of their plane are
        dropped unless they touch the image border (decided when the blocks'
        components are merged, on whole cells); 0: off.
    """

    layout: ImageLayout
    device: torch.device
    batch: int
    grid: BlockGrid
    classes: tuple[str, ...]
    threshold: float
    min_size: int
    grow: int
    block_request: tuple[int, int] | None = None
    overlap: bool = False
    split: float = 0.0
    min_share: float = 0.0

    @property
    def three_class(self) -> bool:
        return is_three_class(self.classes)

    @property
    def halo(self) -> int:
        """Pixels of the neighbouring blocks that decide how a block's cells are grown."""
        return grow_halo(self.grow, self.classes)

    @property
    def split_halo(self) -> int:
        """Pixels around a block that decide how its cells are cut (:func:`split_halo`)."""
        return split_halo(self.halo)

    @property
    def has_planes(self) -> bool:
        return "z" in self.layout.axes

    @property
    def strip(self) -> int:
        return max(self.halo, 1)  # the outermost row is needed to join cells across faces

    def index(self, plane: int, r0: int, r1: int, c0: int, c1: int) -> tuple:
        return (*((plane,) if self.has_planes else ()), slice(r0, r1), slice(c0, c1))

    def chunks(self, leading: tuple[int, ...] = ()) -> tuple[int, ...]:
        """Chunks of an output array with one chunk per block (blocks can be written at once).

        ``leading`` are the chunks of axes before the planes (the classes of
        the probabilities).
        """
        return (*leading, *((1,) if self.has_planes else ()), *self.grid.block_shape)

    def keys(self) -> list[_KEY]:
        """All blocks, ``(plane, block row, block col)``, in order."""
        return [(z, i, j) for z in range(self.layout.n_planes) for i, j in self.grid.indices()]


def plan_segmentation(
    image: Any, model: UNet, options: SegmentOptions | None = None, *, out: Any = None
) -> SegmentPlan:
    """Tiles, batch, device and blocks for segmenting ``image`` with ``model``.

    Parameters
    ----------
    image : array-like
        The image, or a multiscale list (level 0 is segmented).
    model : UNet
        The network.
    options : SegmentOptions, optional
        The settings (default: all defaults).
    out : array-like, optional
        The labels' target: if it is chunked and no ``block_shape`` is asked
        for, blocks follow its chunks.

    Returns
    -------
    SegmentPlan
    """
    if not isinstance(model, UNet):
        raise TypeError(f"model must be a napari_unet.UNet, not {type(model).__name__}")
    options = SegmentOptions() if options is None else options
    image = level0(image)
    check_image(image)
    dev = resolve_device(options.device)
    layout = ImageLayout.infer(image.shape, model.in_channels, options.axes)
    grow = options.grow_for(model)
    classes = tuple(model.classes)
    tiles, batch = resolve_tiles(model, layout.plane_shape, dev, layout.n_planes,
                                 options.tile_shape, options.batch_size)
    block_shape = options.block_shape
    if block_shape is None and out is not None and getattr(out, "chunks", None) is not None \
            and not isinstance(out, np.ndarray):
        block_shape = (int(out.chunks[-2]), int(out.chunks[-1]))
    grid = BlockGrid.make(plan_tiles(model, layout.plane_shape, tiles), layout.plane_shape,
                          block_shape, min_side=grow_halo(grow, classes), min_tiles=batch)
    return SegmentPlan(layout, dev, batch, grid, classes, options.threshold, options.min_size,
                       grow, block_shape, overlap=dev.type != "cpu",
                       split=options.split_for(model), min_share=options.min_share)


@dataclass
class BlockSummary:
    """What the merge step needs from one labelled block (small: no whole block).

    Attributes
    ----------
    key : (int, int, int)
        ``(plane, block row, block col)``.
    bounds : (int, int, int, int)
        The block's pixels ``(row0, row1, col0, col1)`` in its plane.
    sizes : numpy.ndarray
        int64 pixels of local components ``1..n``.
    first : numpy.ndarray
        int64 raster index (``row * width + col`` in the plane) of each local
        component's first pixel.
    strips : dict of str to numpy.ndarray
        Local ids along the ``"top"``, ``"bottom"``, ``"left"`` and ``"right"``
        sides, as wide as the growing halo (at least one pixel). In
        three-class mode -1 marks region pixels that are no kept component.
    """

    key: _KEY
    bounds: tuple[int, int, int, int]
    sizes: np.ndarray
    first: np.ndarray
    strips: dict[str, np.ndarray]

    @property
    def n(self) -> int:
        return len(self.sizes)


# ---------------------------------------------------------------- pass 1: label
def _first_pixels(local: np.ndarray, n: int, r0: int, c0: int, width: int) -> np.ndarray:
    """Raster index in the plane of the first pixel of local ids 1..n (4-connected cells)."""
    if n == 0:
        return np.zeros(0, np.int64)
    # a cell's first pixel has neither its upper nor its left neighbour in the cell, and
    # 4-neighbours of a cell pixel are in the same cell or background: look at those only
    cells = local > 0
    corner = cells.copy()
    corner[1:] &= ~cells[:-1]
    corner[:, 1:] &= ~cells[:, :-1]
    pos = np.flatnonzero(corner)
    ids, first = np.unique(local.reshape(-1)[pos], return_index=True)
    if len(ids) != n:  # pragma: no cover - defensive: every id has a first pixel
        raise AssertionError("local ids are not 1..n")
    rows, cols = np.divmod(pos[first].astype(np.int64), local.shape[1])
    return (r0 + rows) * width + (c0 + cols)


def _local_components(
    probs: np.ndarray, plan: SegmentPlan, r0: int, c0: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local ids of one block, with the sizes and first pixels of the ids kept."""
    seeds, region = seeds_and_region(probs, plan.classes, plan.threshold)
    lab, n = cc_label(seeds, connectivity=1, return_num=True)
    del seeds
    sizes = np.zeros(0, np.int64)
    if n:
        counts = count_labels(lab, n)
        keep = counts >= max(plan.min_size, 1)
        # a component on the block's border may continue in the next block: decide later
        keep[rim_labels(lab)] = True
        keep[0] = False
        sizes = counts[keep].astype(np.int64)
        if keep[1:].all():
            local = lab.astype(np.int32, copy=False)
        else:
            relabel = np.zeros(n + 1, np.int32)
            n = int(keep.sum())
            relabel[keep] = np.arange(1, n + 1, dtype=np.int32)
            local = map_labels(relabel, lab)
    else:
        local = np.zeros(lab.shape, np.int32)
    del lab
    first = _first_pixels(local, n, r0, c0, width)
    if region is not None:
        np.copyto(local, -1, where=region & (local == 0))
    return local, sizes, first


def _strips(local: np.ndarray, width: int) -> dict[str, np.ndarray]:
    h = min(width, local.shape[0])
    w = min(width, local.shape[1])
    return {
        "top": local[:h].copy(),
        "bottom": local[local.shape[0] - h :].copy(),
        "left": local[:, :w].copy(),
        "right": local[:, local.shape[1] - w :].copy(),
    }


def _iter_predict_block(
    model: UNet,
    image: Any,
    plan: SegmentPlan,
    key: _KEY,
    stats: list[tuple[float, float]],
    device: torch.device,
) -> Generator[int, None, np.ndarray]:
    """Pass 1a for one block: its probabilities; yields tiles done."""
    plane, i, j = key
    grid = plan.grid
    r0, r1, c0, c1 = grid.bounds(i, j)
    origins = grid.origins(i, j)
    reader = WindowReader.for_tiles(plan.layout, image, plane, grid.plan, origins,
                                    model.in_channels)
    probs = np.empty((model.n_classes, r1 - r0, c1 - c0), np.float32)
    yield from predict_region(
        model, reader, grid.plan, origins, (r0, c0), stats, plan.batch, device, probs
    )
    return probs


def _label_block(
    plan: SegmentPlan, key: _KEY, probs: np.ndarray, out: Any, probabilities_out: Any
) -> BlockSummary:
    """Pass 1b for one block: label locally, write local ids (and probabilities)."""
    plane, i, j = key
    r0, r1, c0, c1 = plan.grid.bounds(i, j)
    if probabilities_out is not None:
        probabilities_out[(slice(None), *plan.index(plane, r0, r1, c0, c1))] = probs
    local, sizes, first = _local_components(probs, plan, r0, c0, plan.grid.plane_shape[1])
    del probs
    out[plan.index(plane, r0, r1, c0, c1)] = local
    return BlockSummary(key, (r0, r1, c0, c1), sizes, first, _strips(local, plan.strip))


# ------------------------------------------------------------------ pass 2: merge
@dataclass
class _Numbering:
    offsets: dict[_KEY, int]
    mapping: np.ndarray  # provisional global id (offset + local id) -> final id
    n_cells: int

    def block_map(self, summary: BlockSummary) -> np.ndarray:
        """Local id -> final id for one block (index 0 -> 0)."""
        o = self.offsets[summary.key]
        m = self.mapping[o : o + summary.n + 1].copy()
        m[0] = 0
        return m


def _border_ids(summary: BlockSummary, plane_shape: tuple[int, int]) -> np.ndarray:
    """Local ids of a block's components that touch the image border."""
    r0, r1, c0, c1 = summary.bounds
    sides = [summary.strips[name][index] for name, index, on in (
        ("top", np.s_[0, :], r0 == 0), ("bottom", np.s_[-1, :], r1 == plane_shape[0]),
        ("left", np.s_[:, 0], c0 == 0), ("right", np.s_[:, -1], c1 == plane_shape[1])) if on]
    ids = np.concatenate(sides) if sides else np.zeros(0, np.int32)
    return ids[ids > 0]


def _merge(
    summaries: dict[_KEY, BlockSummary], plane_shape: tuple[int, int], min_size: int,
    min_share: float = 0.0,
) -> _Numbering:
    """Join components across block faces, apply ``min_size`` and ``min_share``
    (:func:`~napari_unet.core.decode.typical_cells`, per plane), number in raster order."""
    keys = sorted(summaries)
    offsets: dict[_KEY, int] = {}
    total = 0
    for key in keys:
        offsets[key] = total
        total += summaries[key].n
    sizes = np.zeros(total + 1, np.int64)
    first = np.zeros(total + 1, np.int64)
    plane_pixels = plane_shape[0] * plane_shape[1]
    for key in keys:
        s, o = summaries[key], offsets[key]
        sizes[o + 1 : o + 1 + s.n] = s.sizes
        first[o + 1 : o + 1 + s.n] = s.first + key[0] * plane_pixels
    us, vs = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for key in keys:
        s = summaries[key]
        plane, i, j = key
        for other_key, mine, theirs in (
            ((plane, i, j + 1), s.strips["right"][:, -1], "left"),
            ((plane, i + 1, j), s.strips["bottom"][-1, :], "top"),
        ):
            other = summaries.get(other_key)
            if other is None:
                continue
            facing = other.strips[theirs]
            facing = facing[:, 0] if theirs == "left" else facing[0, :]
            both = (mine > 0) & (facing > 0)
            us.append(mine[both].astype(np.int64) + offsets[key])
            vs.append(facing[both].astype(np.int64) + offsets[other_key])
    u, v = np.concatenate(us), np.concatenate(vs)
    graph = sparse.coo_matrix((np.ones(len(u), np.int8), (u, v)), shape=(total + 1,) * 2)
    n_comp, comp = connected_components(graph, directed=False)
    comp_size = np.bincount(comp, weights=sizes, minlength=n_comp)
    comp_first = np.full(n_comp, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(comp_first, comp, first)
    keep = comp_size >= max(min_size, 1)
    keep[comp[0]] = False  # the background
    if min_share > 0:
        border = np.zeros(n_comp, bool)
        for key in keys:
            border[comp[_border_ids(summaries[key], plane_shape).astype(np.int64)
                        + offsets[key]]] = True
        cells = np.flatnonzero(keep)  # grouped by plane: one median per plane
        planes = comp_first[cells] // plane_pixels
        by_plane = np.argsort(planes, kind="stable")
        cells = cells[by_plane]
        _, starts = np.unique(planes[by_plane], return_index=True)
        for mine in np.split(cells, starts[1:]):
            keep[mine] = typical_cells(comp_size[mine], np.ones(len(mine), bool),
                                       border[mine], min_share)
    kept = np.flatnonzero(keep)
    order = kept[np.argsort(comp_first[kept], kind="stable")]
    final = np.zeros(n_comp, np.int64)
    final[order] = np.arange(1, len(order) + 1)
    if len(order) > np.iinfo(np.int32).max:  # pragma: no cover - 2 billion cells
        raise ValueError("more than 2**31 cells: the labels do not fit int32")
    return _Numbering(offsets, final[comp].astype(np.int32), len(order))


# ------------------------------------------------------------------- pass 3: grow
def _apply_map(local: np.ndarray, block_map: np.ndarray, three_class: bool,
               out: np.ndarray | None = None) -> np.ndarray:
    """Final ids of local ids; -1 keeps marking region pixels (three-class).

    In three-class mode a local component that the merge dropped (too small)
    is region too: cells may grow over it.
    """
    table = np.empty(len(block_map) + 1, np.int32)
    table[1:] = block_map  # table[local + 1]; local 0 -> block_map[0] = 0
    table[0] = -1 if three_class else 0
    if three_class:
        table[2:][block_map[1:] == 0] = -1
    return map_labels(table, local, out, shift=1)


def _window(grid: BlockGrid, i: int, j: int, halo: int) -> tuple[int, int, int, int]:
    r0, r1, c0, c1 = grid.bounds(i, j)
    h, w = grid.plane_shape
    return max(0, r0 - halo), min(h, r1 + halo), max(0, c0 - halo), min(w, c1 + halo)


def _halo_pieces(
    plan: SegmentPlan,
    key: _KEY,
    summaries: dict[_KEY, BlockSummary],
    numbering: _Numbering,
) -> list[tuple[int, int, np.ndarray]]:
    """The neighbours' final ids around a block: ``(row0, col0, ids)`` pieces of its halo."""
    if plan.halo == 0:
        return []
    plane, i, j = key
    wr0, wr1, wc0, wc1 = _window(plan.grid, i, j, plan.halo)
    pieces = []
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            nb = summaries.get((plane, i + di, j + dj))
            if (di == 0 and dj == 0) or nb is None:
                continue
            nr0, nr1, nc0, nc1 = nb.bounds
            a0, a1, b0, b1 = max(wr0, nr0), min(wr1, nr1), max(wc0, nc0), min(wc1, nc1)
            if a0 >= a1 or b0 >= b1:
                continue
            if di == -1:
                strip = nb.strips["bottom"]
                s0, t0 = nr1 - strip.shape[0], nc0
            elif di == 1:
                strip, s0, t0 = nb.strips["top"], nr0, nc0
            elif dj == -1:
                strip = nb.strips["right"]
                s0, t0 = nr0, nc1 - strip.shape[1]
            else:
                strip, s0, t0 = nb.strips["left"], nr0, nc0
            if a0 < s0 or a1 > s0 + strip.shape[0] or b0 < t0 or b1 > t0 + strip.shape[1]:
                raise AssertionError("a block is smaller than the growing halo")  # not reached
            piece = strip[a0 - s0 : a1 - s0, b0 - t0 : b1 - t0]
            pieces.append((a0, b0, _apply_map(piece, numbering.block_map(nb), plan.three_class)))
    return pieces


def _grow_block(
    plan: SegmentPlan,
    key: _KEY,
    out: Any,
    block_map: np.ndarray,
    pieces: list[tuple[int, int, np.ndarray]],
) -> None:
    """Pass 3 for one block: local ids -> final ids, grown with the halo, written back."""
    plane, i, j = key
    r0, r1, c0, c1 = plan.grid.bounds(i, j)
    index = plan.index(plane, r0, r1, c0, c1)
    local = np.asarray(out[index])
    if plan.grow <= 0:
        mapped = _apply_map(local, block_map, plan.three_class)
        out[index] = np.maximum(mapped, 0, out=mapped)
        return
    wr0, wr1, wc0, wc1 = _window(plan.grid, i, j, plan.halo)
    window = np.zeros((wr1 - wr0, wc1 - wc0), np.int32)
    _apply_map(local, block_map, plan.three_class,
               out=window[r0 - wr0 : r1 - wr0, c0 - wc0 : c1 - wc0])
    del local
    for a0, b0, piece in pieces:
        window[a0 - wr0 : a0 - wr0 + piece.shape[0], b0 - wc0 : b0 - wc0 + piece.shape[1]] = piece
    region = None
    if plan.three_class:
        region = window != 0
        np.maximum(window, 0, out=window)
    grown = grow_cells(window, region, plan.grow)
    out[index] = grown[r0 - wr0 : r1 - wr0, c0 - wc0 : c1 - wc0]


# ------------------------------------------------------------------- pass 4: cut
def _find_block_splits(plan: SegmentPlan, key: _KEY, out: Any) -> list[Split]:
    """Pass 4a for one block (here or in a dask worker): the cuts of the cells whose
    bounding box starts in it."""
    plane, i, j = key
    r0, r1, c0, c1 = plan.grid.bounds(i, j)
    wr0, wr1, wc0, wc1 = _window(plan.grid, i, j, plan.split_halo)
    window = np.asarray(out[plan.index(plane, wr0, wr1, wc0, wc1)])
    # a cell is whole here if it keeps off the window's sides inside the image by more
    # than the growing distance (its grown pixels lie that near its connected seeds)
    h, w = plan.grid.plane_shape
    m = plan.halo + 1
    whole = (m if wr0 > 0 else 0, wr1 - wr0 - (m if wr1 < h else 0),
             m if wc0 > 0 else 0, wc1 - wc0 - (m if wc1 < w else 0))
    return find_splits(window, plan.split, plan.min_size,
                       owned=(r0 - wr0, r1 - wr0, c0 - wc0, c1 - wc0), whole=whole,
                       origin=(wr0, wc0), plane=plane)


def _apply_block_splits(plan: SegmentPlan, key: _KEY, out: Any, splits: list[Split],
                        starts: np.ndarray) -> int:
    """Pass 4c for one block (here or in a dask worker): the parts' ids written into the
    block's own pixels."""
    plane, i, j = key
    r0, r1, c0, c1 = plan.grid.bounds(i, j)
    index = plan.index(plane, r0, r1, c0, c1)
    block = np.array(out[index])
    if apply_splits(block, splits, starts, origin=(r0, c0)):
        out[index] = block
    return 1


def _split_jobs(plan: SegmentPlan, splits: list[Split], n_cells: int
                ) -> tuple[list[tuple], int]:
    """Number the cuts; the (key, its cuts, their first ids) of each block they reach."""
    ordered, starts, n = number_splits(splits, n_cells)
    bh, bw = plan.grid.block_shape
    reach: dict[_KEY, list[int]] = {}
    for k, split in enumerate(ordered):
        r0, r1, c0, c1 = split.bounds
        for i in range(r0 // bh, (r1 - 1) // bh + 1):
            for j in range(c0 // bw, (c1 - 1) // bw + 1):
                reach.setdefault((split.plane, i, j), []).append(k)
    jobs = [(key, [ordered[k] for k in ks], starts[ks]) for key, ks in sorted(reach.items())]
    return jobs, n


# ---------------------------------------------------------------- outputs
def create_zarr_array(
    path: str | Path, shape: Sequence[int], chunks: Sequence[int], dtype: Any
) -> Any:
    """A new zarr array on disk (zarr 2 or 3), filled with zeros; refuses an existing path."""
    try:
        import zarr
    except ImportError:
        raise ImportError(
            "writing zarr output needs zarr: pip install zarr (or napari-unet[io])"
        ) from None
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; remove it first, or pass an open array as out")
    return zarr.open_array(
        store=str(path), mode="w-", shape=tuple(int(s) for s in shape),
        chunks=tuple(int(c) for c in chunks), dtype=dtype, fill_value=0,
    )


def _check_target(name: str, array: Any, shape: tuple[int, ...], integer: bool) -> None:
    if not (hasattr(array, "shape") and hasattr(array, "__setitem__")):
        raise TypeError(
            f"{name} must be a writable array (numpy, zarr, memory-mapped) or a path for a new "
            f"zarr array, not {type(array).__name__}"
        )
    if tuple(array.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(array.shape)} but the result needs {shape}")
    dtype = np.dtype(array.dtype)
    if integer and dtype not in (np.dtype(np.int32), np.dtype(np.int64)):
        raise ValueError(
            f"{name} has dtype {dtype} but labels need a signed 32 or 64 bit integer; "
            "create it with dtype='int32'"
        )
    if not integer and dtype.kind != "f":
        raise ValueError(f"{name} has dtype {dtype}; probabilities need float32")


def _aligned(array: Any, grid: BlockGrid, has_planes: bool) -> bool:
    """True when no two blocks share a chunk of ``array`` (safe for parallel writes)."""
    chunks = getattr(array, "chunks", None)
    if chunks is None or isinstance(array, np.ndarray):
        return isinstance(array, np.ndarray)
    chunks = tuple(int(c if np.isscalar(c) else c[0]) for c in chunks)
    spatial = chunks[-2:]
    if has_planes and chunks[-3] != 1:
        return False
    return all(b % c == 0 for b, c in zip(grid.block_shape, spatial))


# ------------------------------------------------------------------ the engine
def _worker_label_block(
    model: Any, image: Any, plan: SegmentPlan, key: _KEY, stats: list[tuple[float, float]],
    device: Any, out: Any, probabilities_out: Any,
) -> BlockSummary:
    """Pass 1 of one block in a dask worker (module level, so workers can import it)."""
    import dask

    from ._utils import run_to_completion
    from .distributed import worker_setup

    worker_setup()
    net = model.value
    dev = resolve_device(device)
    place_model(net.eval(), dev)
    with dask.config.set(scheduler="synchronous"):  # read the window in this task's thread
        probs = run_to_completion(_iter_predict_block(net, image.value, plan, key, stats, dev))
    return _label_block(plan, key, probs, out, probabilities_out)


def _worker_grow_block(
    plan: SegmentPlan, key: _KEY, out: Any, block_map: np.ndarray,
    pieces: list[tuple[int, int, np.ndarray]],
) -> int:
    """Pass 3 of one block in a dask worker."""
    _grow_block(plan, key, out, block_map, pieces)
    return 1


def iter_segment_blocks(
    image: Any,
    model: UNet,
    options: SegmentOptions | None = None,
    *,
    out: Any = None,
    probabilities: Any = None,
    client: Any = None,
    plan: SegmentPlan | None = None,
    **settings: Any,
) -> Generator[SegmentProgress, None, BlockSegmentation]:
    """Segment an image block by block; yields :class:`SegmentProgress`.

    The engine behind :func:`~napari_unet.segment` (see there and the module
    docstring). ``options`` (a :class:`SegmentOptions`) and keyword ``settings``
    (its field names: ``tile_shape``, ``threshold``, ...) say how. ``out`` is
    None (a new numpy array), a writable array of the image's spatial shape and
    dtype int32, or a path for a new zarr array chunked like the blocks.
    ``probabilities`` is None, True (a numpy array), an array or a path
    likewise. ``client`` (a ``dask.distributed.Client`` or a scheduler address)
    runs the blocks on a dask cluster; its workers must reach the image and
    ``out`` (without ``out``, a temporary zarr array on this machine's disk is
    used, which only a local cluster can reach). ``plan`` is the
    :func:`plan_segmentation` of this image, model and options, if the caller
    has it already.

    Returns a :class:`BlockSegmentation` ``(labels, probabilities, n_cells)``;
    the cells are numbered ``1..n_cells``. Closing the generator stops between
    two batches of tiles (or, on a cluster, cancels the blocks not yet done);
    what was written to ``out`` is then incomplete.
    """
    options = SegmentOptions.merge(options, settings, caller="iter_segment_blocks")
    if not isinstance(model, UNet):
        raise TypeError(f"model must be a napari_unet.UNet, not {type(model).__name__}")
    image = level0(image)
    if plan is None:
        plan = plan_segmentation(image, model, options, out=out)
    else:
        check_image(image)
        if ImageLayout.infer(image.shape, model.in_channels, options.axes) != plan.layout:
            raise ValueError("the segmentation plan was made for another image or model")
    layout = plan.layout
    spatial = layout.spatial_shape

    temporary: list[Path] = []  # removed at the end
    created: list[Path] = []  # outputs made here: removed if the run fails or is stopped
    try:
        labels_out, to_numpy = _target("out", out, spatial, plan.chunks(), np.int32, client,
                                       temporary, created)
        probs_out, probs_to_numpy = None, False
        if probabilities is not None and probabilities is not False:
            probs_out, probs_to_numpy = _target(
                "probabilities", probabilities, (model.n_classes, *spatial),
                plan.chunks((model.n_classes,)), np.float32, client, temporary, created,
            )
        if client is not None:
            for name, target in (("out", labels_out), ("probabilities", probs_out)):
                if target is not None and not _aligned(target, plan.grid, plan.has_planes):
                    lead = tuple(target.shape[:1]) if name == "probabilities" else ()
                    raise ValueError(
                        f"{name} has chunks {tuple(target.chunks)} that do not line up with "
                        f"the blocks of {plan.grid.block_shape} pixels, so blocks written at "
                        "once would overwrite each other; give a path instead (a zarr array "
                        f"chunked like the blocks is made), or create it with chunks "
                        f"{plan.chunks(lead)}"
                    )
        stats = [plane_stats(layout, image, z, model.normalization, model.in_channels)
                 for z in range(layout.n_planes)]
        if client is None:
            numbering = yield from _run_local(model, image, plan, stats, labels_out, probs_out)
        else:
            from .distributed import connect

            with connect(client) as dask_client:
                numbering = yield from _run_distributed(
                    dask_client, model, image, plan, stats, options.device, labels_out,
                    probs_out,
                )
        labels = np.asarray(labels_out[...]) if to_numpy else labels_out
        probs = np.asarray(probs_out[...]) if probs_to_numpy else probs_out
        return BlockSegmentation(labels, probs, numbering.n_cells)
    except BaseException:
        for path in created:
            shutil.rmtree(path, ignore_errors=True)
        raise
    finally:
        for path in temporary:
            shutil.rmtree(path, ignore_errors=True)


def _target(
    name: str, given: Any, shape: tuple, chunks: tuple, dtype: Any, client: Any,
    temporary: list[Path], created: list[Path],
) -> tuple[Any, bool]:
    """The array to write into, and whether to return it as numpy at the end."""
    if given is None or given is True:
        if client is None:
            return np.zeros(shape, dtype), False
        folder = Path(tempfile.mkdtemp(prefix="napari-unet-"))
        temporary.append(folder)
        return create_zarr_array(folder / f"{name}.zarr", shape, chunks, dtype), True
    if isinstance(given, (str, Path)):
        array = create_zarr_array(given, shape, chunks, dtype)
        created.append(Path(given))
        return array, False
    _check_target(name, given, shape, integer=np.dtype(dtype).kind == "i")
    return given, False


class _Replan(Exception):
    """A GPU ran out of memory with one tile per batch: start again with smaller tiles."""


def _run_local(
    model: UNet, image: Any, plan: SegmentPlan, stats: list, out: Any, probs_out: Any,
) -> Generator[SegmentProgress, None, _Numbering]:
    """Pass 1 to 3 in this process.

    With ``plan.overlap`` (a GPU, whose host is idle while the network runs),
    decoding overlaps the network: a block is labelled in a second thread while
    the next block is predicted (at most two blocks' probabilities are held), and
    the blocks are grown in a few threads when their writes cannot collide.
    Otherwise one thing runs at a time. The result is the same either way.
    """
    was_training = model.training
    model_device = next(model.parameters()).device
    dev = plan.device
    place_model(model.eval(), dev)
    layout = plan.layout
    backoff = Backoff(plan.batch, plan.grid.plan.in_shape,
                      partial(smaller_tile, model, layout.plane_shape))
    overlap = plan.overlap
    labeller = ThreadPoolExecutor(1, thread_name_prefix="napari-unet-label") if overlap else None
    try:
        while True:
            keys = plan.keys()
            total = plan.grid.plan.total * layout.n_planes + len(keys) * (
                3 if plan.split > 0 else 1)
            done = 0
            yield SegmentProgress(0, total, "predict")
            summaries: dict[_KEY, BlockSummary] = {}
            pending: tuple[_KEY, Future] | None = None
            try:
                for key in keys:
                    while True:
                        block = _iter_predict_block(model, image, plan, key, stats[key[0]], dev)
                        start = done
                        try:
                            while True:
                                try:
                                    n = next(block)
                                except StopIteration as stop:
                                    probs = stop.value
                                    break
                                done += n
                                yield SegmentProgress(done, total, "predict")
                            break
                        except (torch.OutOfMemoryError, RuntimeError) as err:
                            if not is_out_of_memory(err, dev):
                                raise
                            what = backoff.next(dev)
                            plan = dataclasses.replace(plan, batch=backoff.batch)
                            if backoff.shape != plan.grid.plan.in_shape:
                                raise _Replan from None
                            done = start
                            warnings.warn(f"GPU out of memory; going on with {what}",
                                          ResourceWarning, stacklevel=3)
                    if labeller is None:
                        summaries[key] = _label_block(plan, key, probs, out, probs_out)
                    else:
                        if pending is not None:
                            summaries[pending[0]] = pending[1].result()
                        pending = (key, labeller.submit(_label_block, plan, key, probs, out,
                                                        probs_out))
                    del probs
                if pending is not None:
                    summaries[pending[0]] = pending[1].result()
            except _Replan:
                if pending is not None:  # let it finish before the blocks are written anew
                    futures_wait([pending[1]])
                tiles = plan_tiles(model, layout.plane_shape, backoff.shape)
                grid = BlockGrid.make(tiles, layout.plane_shape, plan.block_request,
                                      min_side=plan.halo, min_tiles=plan.batch)
                plan = dataclasses.replace(plan, grid=grid)
                warnings.warn(f"GPU out of memory; starting again with tiles of "
                              f"{tiles.in_shape[0]}x{tiles.in_shape[1]}", ResourceWarning,
                              stacklevel=3)
                continue
            break
    finally:
        if labeller is not None:  # a stopped or failed run: wait for the block in hand
            labeller.shutdown(wait=True, cancel_futures=True)
        model.to(model_device)
        model.train(was_training)
    yield SegmentProgress(done, total, "merge")
    numbering = _merge(summaries, layout.plane_shape, plan.min_size, plan.min_share)
    jobs = ((plan, key, out, numbering.block_map(summaries[key]),
             _halo_pieces(plan, key, summaries, numbering)) for key in keys)
    # blocks are written in threads when their writes cannot collide (and the host is idle
    # while a GPU runs); finding the cuts only reads, after the network: threads always
    writes = overlap and len(keys) > 1 and _aligned(out, plan.grid, plan.has_planes)
    pool = ThreadPoolExecutor(min(4, os.cpu_count() or 1), thread_name_prefix="napari-unet-grow") \
        if len(keys) > 1 and (writes or plan.split > 0) else None
    writer = pool.map if writes and pool is not None else map
    try:
        for _ in writer(_run_job, ((_grow_block, job) for job in jobs)):
            done += 1
            yield SegmentProgress(done, total, "label")
        if plan.split > 0:
            splits: list[Split] = []
            reader = map if pool is None else pool.map
            for found in reader(_run_job, ((_find_block_splits, (plan, key, out))
                                           for key in keys)):
                splits.extend(found)
                done += 1
                yield SegmentProgress(done, total, "split")
            cuts, numbering.n_cells = _split_jobs(plan, splits, numbering.n_cells)
            for _ in writer(_run_job, ((_apply_block_splits, (plan, key, out, mine, starts))
                                       for key, mine, starts in cuts)):
                pass
            done += len(keys)
            yield SegmentProgress(done, total, "split")
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return numbering


def _run_job(job: tuple) -> Any:
    function, arguments = job
    return function(*arguments)


def _run_distributed(
    client: Any, model: UNet, image: Any, plan: SegmentPlan, stats: list, device: Any,
    out: Any, probs_out: Any,
) -> Generator[SegmentProgress, None, _Numbering]:
    from .distributed import Shared, submit_all

    keys = plan.keys()
    total = plan.grid.plan.total * plan.layout.n_planes + len(keys) * (
        3 if plan.split > 0 else 1)
    done = 0
    yield SegmentProgress(0, total, "predict")
    shared_model = client.scatter(Shared(model), broadcast=True)
    shared_image = client.scatter(Shared(image), broadcast=False)
    # each worker resolves the device itself (its GPUs, not this machine's)
    arguments = [
        (shared_model, shared_image, plan, key, stats[key[0]], device, out, probs_out)
        for key in keys
    ]
    summaries: dict[_KEY, BlockSummary] = {}
    for k, summary in submit_all(client, _worker_label_block, arguments):
        summaries[keys[k]] = summary
        done += len(plan.grid.origins(*keys[k][1:]))
        yield SegmentProgress(done, total, "predict")
    del shared_model, shared_image
    yield SegmentProgress(done, total, "merge")
    numbering = _merge(summaries, plan.layout.plane_shape, plan.min_size,
                       plan.min_share)
    arguments = [
        (plan, key, out, numbering.block_map(summaries[key]),
         _halo_pieces(plan, key, summaries, numbering))
        for key in keys
    ]
    for _ in submit_all(client, _worker_grow_block, arguments):
        done += 1
        yield SegmentProgress(done, total, "label")
    if plan.split > 0:
        splits: list[Split] = []
        for _, found in submit_all(client, _find_block_splits,
                                   [(plan, key, out) for key in keys]):
            splits.extend(found)
            done += 1
            yield SegmentProgress(done, total, "split")
        cuts, numbering.n_cells = _split_jobs(plan, splits, numbering.n_cells)
        for _ in submit_all(client, _apply_block_splits,
                            [(plan, key, out, mine, starts) for key, mine, starts in cuts]):
            pass
        done += len(keys)
        yield SegmentProgress(done, total, "split")
    return numbering
