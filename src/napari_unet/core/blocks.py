"""Segmenting images larger than memory, block by block, with one id per cell.

The image is cut into blocks of whole tiles (:class:`~napari_unet.core.tiling.BlockGrid`)
and segmented in two passes over the blocks, so that only a few blocks are in
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
   carved gaps (:func:`~napari_unet.probabilities_to_labels`' rule) and writes
   the final labels over its local ids.

Every per-pixel decision sees the same data as in a one-piece segmentation, so
the result equals ``probabilities_to_labels(predict_tiled(...))`` exactly, ids
included, for any block size.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Generator, Sequence
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
from .instances import SegmentProgress, _grow, _is_three_class, _seeds_and_region, grow_halo
from .memory import Backoff, is_out_of_memory
from .model import UNet
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


@dataclass(frozen=True)
class _Options:
    classes: tuple[str, ...]
    threshold: float
    min_size: int
    grow: int
    halo: int
    has_planes: bool

    @property
    def three_class(self) -> bool:
        return _is_three_class(self.classes)

    @property
    def strip(self) -> int:
        return max(self.halo, 1)  # the outermost row is needed to join cells across faces

    def index(self, plane: int, r0: int, r1: int, c0: int, c1: int) -> tuple:
        return (*((plane,) if self.has_planes else ()), slice(r0, r1), slice(c0, c1))


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
    """Raster index in the plane of the first pixel of local ids 1..n."""
    if n == 0:
        return np.zeros(0, np.int64)
    flat = local.ravel()
    pos = np.flatnonzero(flat > 0)
    vals = flat[pos]
    # ids are numbered in raster order of their first pixel, so the running maximum
    # steps up by one exactly at each id's first pixel
    running = np.maximum.accumulate(vals)
    starts = np.flatnonzero(np.diff(running, prepend=0) > 0)
    if len(starts) != n or running[starts[-1]] != n:  # pragma: no cover - defensive
        _, starts = np.unique(vals, return_index=True)
    rows, cols = np.divmod(pos[starts].astype(np.int64), local.shape[1])
    return (r0 + rows) * width + (c0 + cols)


def _local_components(
    probs: np.ndarray, opt: _Options, r0: int, c0: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local ids of one block, with the sizes and first pixels of the ids kept."""
    seeds, region = _seeds_and_region(probs, opt.classes, opt.threshold)
    lab = cc_label(seeds, connectivity=1)
    n = int(lab.max())
    sizes = np.zeros(0, np.int64)
    if n:
        counts = np.bincount(lab.ravel(), minlength=n + 1)
        keep = counts >= max(opt.min_size, 1)
        # a component on the block's border may continue in the next block: decide later
        keep[np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])] = True
        keep[0] = False
        relabel = np.zeros(n + 1, np.int32)
        n = int(keep.sum())
        relabel[keep] = np.arange(1, n + 1, dtype=np.int32)
        local = relabel[lab]
        sizes = counts[keep].astype(np.int64)
    else:
        local = np.zeros(lab.shape, np.int32)
    del lab
    if region is not None:
        local[region & (local == 0)] = -1
    return local, sizes, _first_pixels(local, n, r0, c0, width)


def _strips(local: np.ndarray, width: int) -> dict[str, np.ndarray]:
    h = min(width, local.shape[0])
    w = min(width, local.shape[1])
    return {
        "top": local[:h].copy(),
        "bottom": local[local.shape[0] - h :].copy(),
        "left": local[:, :w].copy(),
        "right": local[:, local.shape[1] - w :].copy(),
    }


def _iter_label_block(
    model: UNet,
    image: Any,
    layout: ImageLayout,
    grid: BlockGrid,
    key: _KEY,
    stats: list[tuple[float, float]],
    opt: _Options,
    batch: int,
    device: torch.device,
    out: Any,
    probabilities_out: Any,
) -> Generator[int, None, BlockSummary]:
    """Pass 1 for one block: predict, label locally, write local ids; yields tiles done."""
    plane, i, j = key
    r0, r1, c0, c1 = grid.bounds(i, j)
    origins = grid.origins(i, j)
    reader = WindowReader.for_tiles(layout, image, plane, grid.plan, origins, model.in_channels)
    probs = np.empty((model.n_classes, r1 - r0, c1 - c0), np.float32)
    yield from predict_region(
        model, reader, grid.plan, origins, (r0, c0), stats, batch, device, probs
    )
    del reader
    if probabilities_out is not None:
        probabilities_out[(slice(None), *opt.index(plane, r0, r1, c0, c1))] = probs
    local, sizes, first = _local_components(probs, opt, r0, c0, grid.plane_shape[1])
    del probs
    out[opt.index(plane, r0, r1, c0, c1)] = local
    return BlockSummary(key, (r0, r1, c0, c1), sizes, first, _strips(local, opt.strip))


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


def _merge(
    summaries: dict[_KEY, BlockSummary], plane_shape: tuple[int, int], min_size: int
) -> _Numbering:
    """Join components across block faces, apply ``min_size``, number in raster order."""
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
    kept = np.flatnonzero(keep)
    order = kept[np.argsort(comp_first[kept], kind="stable")]
    final = np.zeros(n_comp, np.int64)
    final[order] = np.arange(1, len(order) + 1)
    if len(order) > np.iinfo(np.int32).max:  # pragma: no cover - 2 billion cells
        raise ValueError("more than 2**31 cells: the labels do not fit int32")
    return _Numbering(offsets, final[comp].astype(np.int32), len(order))


# ------------------------------------------------------------------- pass 3: grow
def _apply_map(local: np.ndarray, block_map: np.ndarray, three_class: bool) -> np.ndarray:
    """Final ids of local ids; -1 keeps marking region pixels (three-class)."""
    result = np.zeros(local.shape, np.int32)
    cells = local > 0
    result[cells] = block_map[local[cells]]
    if three_class:
        result[(local != 0) & (result == 0)] = -1
    return result


def _window(grid: BlockGrid, i: int, j: int, halo: int) -> tuple[int, int, int, int]:
    r0, r1, c0, c1 = grid.bounds(i, j)
    h, w = grid.plane_shape
    return max(0, r0 - halo), min(h, r1 + halo), max(0, c0 - halo), min(w, c1 + halo)


def _halo_pieces(
    grid: BlockGrid,
    key: _KEY,
    summaries: dict[_KEY, BlockSummary],
    numbering: _Numbering,
    opt: _Options,
) -> list[tuple[int, int, np.ndarray]]:
    """The neighbours' final ids around a block: ``(row0, col0, ids)`` pieces of its halo."""
    if opt.halo == 0:
        return []
    plane, i, j = key
    wr0, wr1, wc0, wc1 = _window(grid, i, j, opt.halo)
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
            pieces.append((a0, b0, _apply_map(piece, numbering.block_map(nb), opt.three_class)))
    return pieces


def _grow_block(
    grid: BlockGrid,
    key: _KEY,
    out: Any,
    block_map: np.ndarray,
    pieces: list[tuple[int, int, np.ndarray]],
    opt: _Options,
) -> None:
    """Pass 3 for one block: local ids -> final ids, grown with the halo, written back."""
    plane, i, j = key
    r0, r1, c0, c1 = grid.bounds(i, j)
    index = opt.index(plane, r0, r1, c0, c1)
    mapped = _apply_map(np.asarray(out[index]), block_map, opt.three_class)
    if opt.grow <= 0:
        out[index] = np.maximum(mapped, 0)
        return
    wr0, wr1, wc0, wc1 = _window(grid, i, j, opt.halo)
    window = np.zeros((wr1 - wr0, wc1 - wc0), np.int32)
    window[r0 - wr0 : r1 - wr0, c0 - wc0 : c1 - wc0] = mapped
    for a0, b0, piece in pieces:
        window[a0 - wr0 : a0 - wr0 + piece.shape[0], b0 - wc0 : b0 - wc0 + piece.shape[1]] = piece
    region = window != 0 if opt.three_class else None
    grown = _grow(np.maximum(window, 0), region, opt.grow)
    out[index] = grown[r0 - wr0 : r1 - wr0, c0 - wc0 : c1 - wc0]


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


def _chunks_for(grid: BlockGrid, has_planes: bool, leading: tuple[int, ...] = ()) -> tuple:
    return (*leading, *((1,) if has_planes else ()), *grid.block_shape)


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
    model: Any, image: Any, layout: ImageLayout, grid: BlockGrid, key: _KEY,
    stats: list[tuple[float, float]], opt: _Options, batch: int, device: Any, out: Any,
    probabilities_out: Any,
) -> BlockSummary:
    """Pass 1 of one block in a dask worker (module level, so workers can import it)."""
    import dask

    from ._utils import run_to_completion
    from .distributed import worker_setup

    worker_setup()
    net = model.value
    dev = resolve_device(device)
    net.eval().to(dev)
    with dask.config.set(scheduler="synchronous"):  # read the window in this task's thread
        return run_to_completion(
            _iter_label_block(net, image.value, layout, grid, key, stats, opt, batch, dev,
                              out, probabilities_out)
        )


def _worker_grow_block(
    grid: BlockGrid, key: _KEY, out: Any, block_map: np.ndarray,
    pieces: list[tuple[int, int, np.ndarray]], opt: _Options,
) -> int:
    """Pass 3 of one block in a dask worker."""
    _grow_block(grid, key, out, block_map, pieces, opt)
    return 1


def iter_segment_blocks(
    image: Any,
    model: UNet,
    *,
    tile_shape: int | Sequence[int] | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    axes: str | None = None,
    threshold: float = 0.5,
    min_size: int = 16,
    grow: int | None = None,
    out: Any = None,
    probabilities: Any = None,
    block_shape: int | Sequence[int] | None = None,
    client: Any = None,
) -> Generator[SegmentProgress, None, BlockSegmentation]:
    """Segment an image block by block; yields :class:`SegmentProgress`.

    The engine behind :func:`~napari_unet.segment` (see there and the module
    docstring). ``out`` is None (a new numpy array), a writable array of the
    image's spatial shape and dtype int32, or a path for a new zarr array
    chunked like the blocks. ``probabilities`` is None, True (a numpy array),
    an array or a path likewise. ``client`` (a ``dask.distributed.Client`` or a
    scheduler address) runs the blocks on a dask cluster; its workers must
    reach the image and ``out`` (without ``out``, a temporary zarr array on
    this machine's disk is used, which only a local cluster can reach).

    Returns a :class:`BlockSegmentation` ``(labels, probabilities, n_cells)``;
    the cells are numbered ``1..n_cells``. Closing the generator stops between
    two batches of tiles (or, on a cluster, cancels the blocks not yet done);
    what was written to ``out`` is then incomplete.
    """
    if not isinstance(model, UNet):
        raise TypeError(f"model must be a napari_unet.UNet, not {type(model).__name__}")
    image = level0(image)
    check_image(image)
    dev = resolve_device(device)
    layout = ImageLayout.infer(image.shape, model.in_channels, axes)
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be a probability between 0 and 1, not {threshold}")
    if grow is None:
        grow = int(model.metadata.get("target", {}).get("gap", 1)) + 1
    if int(grow) < 0 or int(min_size) < 0:
        raise ValueError(f"grow and min_size must be 0 or more, not {grow} and {min_size}")
    classes = tuple(model.classes)
    opt = _Options(classes, float(threshold), int(min_size), int(grow),
                   grow_halo(int(grow), classes), "z" in layout.axes)
    n_planes, plane_shape = layout.n_planes, layout.plane_shape
    spatial = layout.spatial_shape
    tiles, batch = resolve_tiles(model, plane_shape, dev, n_planes, tile_shape, batch_size)
    plan = plan_tiles(model, plane_shape, tiles)
    if block_shape is None and out is not None and getattr(out, "chunks", None) is not None \
            and not isinstance(out, np.ndarray):
        block_shape = tuple(int(c) for c in out.chunks[-2:])
    grid = BlockGrid.make(plan, plane_shape, block_shape, min_side=opt.halo, min_tiles=batch)

    temporary: list[Path] = []  # removed at the end
    created: list[Path] = []  # outputs made here: removed if the run fails or is stopped
    try:
        labels_out, to_numpy = _labels_target(out, spatial, grid, opt, client, temporary,
                                              created)
        probs_out, probs_to_numpy = _probabilities_target(
            probabilities, (model.n_classes, *spatial), grid, opt, client, temporary, created
        )
        if client is not None:
            for name, target in (("out", labels_out), ("probabilities", probs_out)):
                if target is not None and not _aligned(target, grid, opt.has_planes):
                    lead = tuple(target.shape[:1]) if name == "probabilities" else ()
                    raise ValueError(
                        f"{name} has chunks {tuple(target.chunks)} that do not line up with "
                        f"the blocks of {grid.block_shape} pixels, so blocks written at once "
                        "would overwrite each other; give a path instead (a zarr array chunked "
                        "like the blocks is made), or create it with chunks "
                        f"{_chunks_for(grid, opt.has_planes, lead)}"
                    )
        stats = [plane_stats(layout, image, z, model.normalization, model.in_channels)
                 for z in range(n_planes)]
        keys = [(z, i, j) for z in range(n_planes) for i, j in grid.indices()]
        if client is None:
            summaries, numbering, done, total = yield from _run_local(
                model, image, layout, grid, keys, stats, opt, batch, dev, labels_out,
                probs_out, block_shape,
            )
        else:
            from .distributed import connect

            with connect(client) as dask_client:
                summaries, numbering, done, total = yield from _run_distributed(
                    dask_client, model, image, layout, grid, keys, stats, opt, batch, device,
                    labels_out, probs_out,
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


def _labels_target(
    out: Any, spatial: tuple, grid: BlockGrid, opt: _Options, client: Any,
    temporary: list[Path], created: list[Path],
) -> tuple[Any, bool]:
    return _target("out", out, spatial, _chunks_for(grid, opt.has_planes), np.int32, client,
                   temporary, created)


def _probabilities_target(
    probabilities: Any, shape: tuple, grid: BlockGrid, opt: _Options, client: Any,
    temporary: list[Path], created: list[Path],
) -> tuple[Any, bool]:
    if probabilities is None or probabilities is False:
        return None, False
    return _target("probabilities", probabilities, shape,
                   _chunks_for(grid, opt.has_planes, (shape[0],)), np.float32, client,
                   temporary, created)


class _Replan(Exception):
    """A GPU ran out of memory with one tile per batch: start again with smaller tiles."""


def _run_local(
    model: UNet, image: Any, layout: ImageLayout, grid: BlockGrid, keys: list[_KEY],
    stats: list, opt: _Options, batch: int, dev: torch.device, out: Any, probs_out: Any,
    block_shape: Any,
) -> Generator[SegmentProgress, None, tuple]:
    was_training = model.training
    model_device = next(model.parameters()).device
    model.eval().to(dev)
    backoff = Backoff(batch, grid.plan.in_shape, partial(smaller_tile, model, layout.plane_shape))
    try:
        while True:
            total = grid.plan.total * layout.n_planes + len(keys)
            done = 0
            yield SegmentProgress(0, total, "predict")
            summaries: dict[_KEY, BlockSummary] = {}
            try:
                for key in keys:
                    while True:
                        block = _iter_label_block(model, image, layout, grid, key, stats[key[0]],
                                                  opt, batch, dev, out, probs_out)
                        start = done
                        try:
                            while True:
                                try:
                                    n = next(block)
                                except StopIteration as stop:
                                    summaries[key] = stop.value
                                    break
                                done += n
                                yield SegmentProgress(done, total, "predict")
                            break
                        except (torch.OutOfMemoryError, RuntimeError) as err:
                            if not is_out_of_memory(err, dev):
                                raise
                            what = backoff.next(dev)
                            batch = backoff.batch
                            if backoff.shape != grid.plan.in_shape:
                                raise _Replan from None
                            done = start
                            warnings.warn(f"GPU out of memory; going on with {what}",
                                          ResourceWarning, stacklevel=3)
            except _Replan:
                plan = plan_tiles(model, layout.plane_shape, backoff.shape)
                grid = BlockGrid.make(plan, layout.plane_shape, block_shape, min_side=opt.halo,
                                      min_tiles=batch)
                keys = [(z, i, j) for z in range(layout.n_planes) for i, j in grid.indices()]
                warnings.warn(f"GPU out of memory; starting again with tiles of "
                              f"{plan.in_shape[0]}x{plan.in_shape[1]}", ResourceWarning,
                              stacklevel=3)
                continue
            break
    finally:
        model.to(model_device)
        model.train(was_training)
    yield SegmentProgress(done, total, "merge")
    numbering = _merge(summaries, layout.plane_shape, opt.min_size)
    for key in keys:
        pieces = _halo_pieces(grid, key, summaries, numbering, opt)
        _grow_block(grid, key, out, numbering.block_map(summaries[key]), pieces, opt)
        done += 1
        yield SegmentProgress(done, total, "label")
    return summaries, numbering, done, total


def _run_distributed(
    client: Any, model: UNet, image: Any, layout: ImageLayout, grid: BlockGrid,
    keys: list[_KEY], stats: list, opt: _Options, batch: int, device: Any, out: Any,
    probs_out: Any,
) -> Generator[SegmentProgress, None, tuple]:
    from .distributed import Shared, submit_all

    if isinstance(device, torch.device):
        device = str(device)
    total = grid.plan.total * layout.n_planes + len(keys)
    done = 0
    yield SegmentProgress(0, total, "predict")
    shared_model = client.scatter(Shared(model), broadcast=True)
    shared_image = client.scatter(Shared(image), broadcast=False)
    arguments = [
        (shared_model, shared_image, layout, grid, key, stats[key[0]], opt, batch, device, out,
         probs_out)
        for key in keys
    ]
    summaries: dict[_KEY, BlockSummary] = {}
    for k, summary in submit_all(client, _worker_label_block, arguments):
        summaries[keys[k]] = summary
        done += len(grid.origins(*keys[k][1:]))
        yield SegmentProgress(done, total, "predict")
    del shared_model, shared_image
    yield SegmentProgress(done, total, "merge")
    numbering = _merge(summaries, layout.plane_shape, opt.min_size)
    arguments = [
        (grid, key, out, numbering.block_map(summaries[key]),
         _halo_pieces(grid, key, summaries, numbering, opt), opt)
        for key in keys
    ]
    for _ in submit_all(client, _worker_grow_block, arguments):
        done += 1
        yield SegmentProgress(done, total, "label")
    return summaries, numbering, done, total
