"""Seamless overlap-tile prediction (Ronneberger et al. 2015, Fig. 2).

The image is mirrored at its borders to give border pixels their missing
context, cut into overlapping input tiles, and each tile's output is written to
the part of the result it is responsible for. Two facts make the stitched
result *exactly* equal to one forward pass of the network over the whole
mirror-padded image:

* every tile gets ``model.margin`` pixels of real (or mirrored) context on each
  side, so no output pixel sees a tile border, and
* tiles start at multiples of ``model.stride`` (``2**depth``) from one common
  origin, so every tile sees the max-pooling grid where the whole-image pass
  sees it (a U-Net commutes with shifts by multiples of its stride only).

The last tiles simply run on past the image into more mirrored context. Only
the windows a tile needs are read, so dask and zarr images are never loaded
whole, and the result can be written into a pre-allocated (for example
memory-mapped or zarr) ``out`` array, one :class:`BlockGrid` block (a group of
whole tiles) at a time.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import numpy as np
import torch

from ._utils import resolve_device, run_to_completion
from .memory import Backoff, is_out_of_memory
from .model import UNet, place_model
from .normalize import Normalization

__all__ = [
    "TileProgress",
    "ImageLayout",
    "TilePlan",
    "BlockGrid",
    "iter_predict_tiled",
    "predict_tiled",
    "reflect_index",
    "plan_tiles",
    "estimate_tile_memory",
    "smaller_tile",
]

# RGB(A) to luminance (ITU-R BT.709), for gray-value models given a colour image.
_LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)

#: Default side of a block (output pixels), rounded down to whole tiles: what is held in
#: memory at once when an image is predicted or segmented block by block.
DEFAULT_BLOCK_SIDE = 2048

#: Input pixels of one automatic GPU batch: enough to keep a GPU busy (one 1564² tile of the
#: default network runs as fast per pixel as nine, measured on an H100).
BATCH_PIXELS = 2**22


class TileProgress(NamedTuple):
    """Progress of a tiled prediction: tiles done and tiles in all."""

    done: int
    total: int


def reflect_index(index: np.ndarray, n: int) -> np.ndarray:
    """Map any integer coordinates into ``[0, n)`` by mirroring at the borders.

    Mirroring excludes the edge pixel itself (numpy's ``"reflect"`` mode) and
    repeats periodically, so windows of any size are defined consistently.

    >>> reflect_index(np.arange(-3, 7), 4)
    array([3, 2, 1, 0, 1, 2, 3, 2, 1, 0])
    """
    index = np.asarray(index)
    if n == 1:
        return np.zeros_like(index)
    period = 2 * n - 2
    m = np.mod(index, period)
    return np.where(m < n, m, period - m)


# --------------------------------------------------------------------- layout
@dataclass(frozen=True)
class ImageLayout:
    """How an input array maps onto (plane, channel, row, col).

    Attributes
    ----------
    axes : str
        The array's axes, from ``z`` (plane), ``c`` (channel), ``y`` (row) and
        ``x`` (column), for example ``"zyx"`` or ``"yxc"``.
    gray_from_rgb : bool
        True when a colour image is turned into gray values for a 1-channel model.
    """

    axes: str
    shape: tuple[int, ...]
    gray_from_rgb: bool = False

    @property
    def n_planes(self) -> int:
        return self.shape[self.axes.index("z")] if "z" in self.axes else 1

    @property
    def n_channels(self) -> int:
        return self.shape[self.axes.index("c")] if "c" in self.axes else 1

    @property
    def plane_shape(self) -> tuple[int, int]:
        return self.shape[self.axes.index("y")], self.shape[self.axes.index("x")]

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape of one class of the result: ``(plane, row, col)`` or ``(row, col)``."""
        return ((self.n_planes,) if "z" in self.axes else ()) + self.plane_shape

    @classmethod
    def infer(cls, shape: Sequence[int], in_channels: int, axes: str | None = None) -> ImageLayout:
        """Work out the axes of an image for a model with ``in_channels`` inputs.

        2D arrays are ``yx``. 3D arrays are a colour image ``yxc`` when the last
        axis has 3 or 4 entries and the others more; channels first ``cyx`` when
        the model takes several channels and the first axis has that many; else a
        stack of planes ``zyx``. 4D arrays are ``zyxc`` (colour stack) or
        ``zcyx``. Pass ``axes`` to say it explicitly.
        """
        shape = tuple(int(s) for s in shape)
        if axes is None:
            nd = len(shape)
            if nd == 2:
                axes = "yx"
            elif nd == 3:
                if shape[-1] in (3, 4) and min(shape[:2]) > 4 and in_channels in (1, 3):
                    axes = "yxc"
                elif in_channels > 1 and shape[0] == in_channels:
                    axes = "cyx"
                else:
                    axes = "zyx"
            elif nd == 4:
                if shape[-1] in (3, 4) and min(shape[1:3]) > 4 and in_channels in (1, 3):
                    axes = "zyxc"
                else:
                    axes = "zcyx"
            else:
                raise ValueError(
                    f"cannot segment an image of {nd} dimensions (shape {shape}): give a 2D "
                    "image (row, col), a stack (plane, row, col), channels (channel, row, col) "
                    "or colour (row, col, 3); for other layouts pass axes=, e.g. axes='zcyx'"
                )
        axes = axes.lower()
        if len(axes) != len(shape) or sorted(set(axes)) != sorted(axes) or not set(axes) <= set(
            "zcyx"
        ) or "y" not in axes or "x" not in axes:
            raise ValueError(
                f"axes={axes!r} does not describe an array of shape {shape}: use one letter per "
                "dimension from 'z' (plane), 'c' (channel), 'y' (row), 'x' (column), "
                "with 'y' and 'x' present"
            )
        layout = cls(axes, shape)
        if min(layout.plane_shape) < 1:
            raise ValueError(f"the image is empty (shape {shape})")
        n_c = layout.n_channels
        if n_c != in_channels:
            if in_channels == 1 and n_c in (3, 4) and axes.endswith("c"):
                return cls(axes, shape, gray_from_rgb=True)
            if in_channels == 3 and n_c == 4 and axes.endswith("c"):
                return layout  # RGBA: alpha is dropped when reading
            raise ValueError(
                f"the model takes {in_channels} channel(s) but the image (shape {shape}, "
                f"axes {axes!r}) has {n_c}; choose a {in_channels}-channel image, or pass "
                "axes= if the layout was guessed wrong"
            )
        return layout

    def read(
        self, array: Any, plane: int, rows: slice, cols: slice, in_channels: int
    ) -> np.ndarray:
        """Read one window of one plane as float32 ``(channel, row, col)``."""
        index: list[Any] = []
        for a in self.axes:
            index.append({"z": plane, "c": slice(None), "y": rows, "x": cols}[a])
        block = np.asarray(array[tuple(index)])
        kept = [a for a in self.axes if a != "z"]
        if "c" not in kept:
            block = block[None]
        else:
            block = np.moveaxis(block, kept.index("c"), 0)
        block = block.astype(np.float32, copy=False)
        if self.gray_from_rgb:
            block = np.tensordot(_LUMA, block[:3], axes=1)[None]
        elif block.shape[0] != in_channels:
            block = block[:in_channels]
        return block

    def sample_slices(self, max_pixels: int = 2**22) -> tuple[slice, slice]:
        """Row and column slices of a regular subsample of a plane of at most ~max_pixels."""
        rows, cols = self.plane_shape
        step = max(1, int(np.ceil(np.sqrt(rows * cols / max_pixels))))
        return slice(None, None, step), slice(None, None, step)


# ----------------------------------------------------------------- tile plan
@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one plane lie.

    ``in_shape`` is the network input of one tile, ``step`` the distance between
    tile origins (a multiple of the network's stride), ``offset`` the context
    before the first pixel, ``crop`` where the usable output starts inside the
    network's output, and ``n_tiles`` the tiles per axis.
    """

    in_shape: tuple[int, int]
    out_shape: tuple[int, int]
    step: tuple[int, int]
    offset: tuple[int, int]
    crop: tuple[int, int]
    n_tiles: tuple[int, int]

    @property
    def total(self) -> int:
        return self.n_tiles[0] * self.n_tiles[1]

    def origins(self) -> list[tuple[int, int]]:
        """Output-pixel origins of all tiles, row-major."""
        return [
            (i * self.step[0], j * self.step[1])
            for i in range(self.n_tiles[0])
            for j in range(self.n_tiles[1])
        ]



@dataclass(frozen=True)
class BlockGrid:
    """Blocks of whole tiles of one :class:`TilePlan`: the unit of work for large images.

    A block is ``block_tiles`` tiles of the plan in each direction, so block
    borders fall on tile borders and every tile is computed exactly as in a
    one-piece pass over the plane: a result assembled block by block equals the
    one-piece result bit for bit. Blocks are numbered ``(i, j)`` in row-major
    order; the last block of a row or column may be smaller.

    Examples
    --------
    >>> net = UNet(depth=2, base_channels=4)
    >>> plan = plan_tiles(net, (100, 70), (64, 64))
    >>> plan.step
    (20, 24)
    >>> grid = BlockGrid.make(plan, (100, 70), block_shape=(48, 48))
    >>> grid.block_shape, grid.n_blocks
    ((40, 48), (3, 2))
    >>> grid.bounds(2, 1)
    (80, 100, 48, 70)
    """

    plan: TilePlan
    plane_shape: tuple[int, int]
    block_tiles: tuple[int, int]

    @classmethod
    def make(
        cls,
        plan: TilePlan,
        plane_shape: Sequence[int],
        block_shape: int | Sequence[int] | None = None,
        min_side: int = 1,
        min_tiles: int = 1,
    ) -> BlockGrid:
        """Blocks of about ``block_shape`` output pixels (rounded down to whole tiles).

        ``min_side`` is the smallest block side allowed (a halo that must fit in
        one neighbouring block); blocks never exceed the plane. By default
        (``block_shape`` None) a block holds at least ``min_tiles`` tiles, so
        that a GPU can predict a whole batch of tiles at once.
        """
        if block_shape is None:
            target = (DEFAULT_BLOCK_SIDE, DEFAULT_BLOCK_SIDE)
        elif np.isscalar(block_shape):
            target = (int(block_shape), int(block_shape))  # type: ignore[arg-type]
        else:
            target = tuple(int(b) for b in block_shape)  # type: ignore[union-attr]
        if len(target) != 2 or min(target) < 1:
            raise ValueError(
                f"block_shape must be one or two positive sizes (rows, cols), not {block_shape}"
            )
        per_axis = math.ceil(math.sqrt(max(int(min_tiles), 1))) if block_shape is None else 1
        k = []
        for t, step, n in zip(target, plan.step, plan.n_tiles):
            want = max(1, t // step, -(-int(min_side) // step), per_axis)
            k.append(int(min(want, n)))
        return cls(plan, (int(plane_shape[0]), int(plane_shape[1])), (k[0], k[1]))

    @property
    def block_shape(self) -> tuple[int, int]:
        """Size of a full block in output pixels (a multiple of the tile step)."""
        return (
            self.block_tiles[0] * self.plan.step[0],
            self.block_tiles[1] * self.plan.step[1],
        )

    @property
    def n_blocks(self) -> tuple[int, int]:
        """Blocks per axis."""
        return (
            -(-self.plan.n_tiles[0] // self.block_tiles[0]),
            -(-self.plan.n_tiles[1] // self.block_tiles[1]),
        )

    @property
    def total(self) -> int:
        """Blocks per plane."""
        return self.n_blocks[0] * self.n_blocks[1]

    def indices(self) -> list[tuple[int, int]]:
        """All ``(i, j)`` block indices, row-major."""
        return [(i, j) for i in range(self.n_blocks[0]) for j in range(self.n_blocks[1])]

    def bounds(self, i: int, j: int) -> tuple[int, int, int, int]:
        """Output pixels ``(row0, row1, col0, col1)`` of block ``(i, j)``, clipped to the plane."""
        bh, bw = self.block_shape
        h, w = self.plane_shape
        return i * bh, min((i + 1) * bh, h), j * bw, min((j + 1) * bw, w)

    def origins(self, i: int, j: int) -> list[tuple[int, int]]:
        """Origins of the plan's tiles that make up block ``(i, j)``, row-major."""
        kr, kc = self.block_tiles
        nr, nc = self.plan.n_tiles
        sr, sc = self.plan.step
        return [
            (a * sr, b * sc)
            for a in range(i * kr, min((i + 1) * kr, nr))
            for b in range(j * kc, min((j + 1) * kc, nc))
        ]


def _axis_geometry(model: UNet, n_in: int) -> tuple[int, int, int]:
    """For a valid network input length: (usable output length, offset, crop)."""
    if model.padding == "valid":
        return model.output_shape((n_in,))[0], model.margin, 0
    model.output_shape((n_in,))  # raises for sizes that are not a multiple of the stride
    margin = model.margin
    return n_in - 2 * margin, margin, margin


def _smallest_tile(model: UNet, min_usable: int) -> int:
    """Smallest valid input length whose usable output is at least ``min_usable``."""
    if model.padding == "valid":
        return model.valid_input_shape((max(min_usable, 1),))[0]
    s = model.stride
    return int(math.ceil((max(min_usable, 1) + 2 * model.margin) / s) * s)


def _largest_tile(model: UNet, max_in: int) -> int:
    """Largest valid input length not above ``max_in`` with a usable output of one stride."""
    lo = _smallest_tile(model, model.stride)
    n = max(int(max_in), lo)
    while n > lo:
        try:
            usable = _axis_geometry(model, n)[0]
        except ValueError:
            usable = 0
        if usable >= model.stride:
            return n
        n -= 1
    return lo


def plan_tiles(model: UNet, plane_shape: Sequence[int], tile_shape: Sequence[int]) -> TilePlan:
    """Tiles of at most ``tile_shape`` input pixels that cover ``plane_shape`` seamlessly.

    ``tile_shape`` is the network input size of one tile (572 in the paper). An
    invalid size is rounded down to the nearest valid one, a too small one up
    to the smallest that gives a usable output of one stride; a tile is never
    made larger than the whole plane needs.
    """
    ins, outs, steps, offs, crops, counts = [], [], [], [], [], []
    for n, t in zip(plane_shape, tile_shape):
        t = _largest_tile(model, int(t))
        usable = _axis_geometry(model, t)[0]
        step = (usable // model.stride) * model.stride
        count = int(math.ceil(n / step))
        # Balance: the smallest tile that still covers the plane in `count` tiles.
        step = int(math.ceil(n / count / model.stride) * model.stride)
        t = min(t, _smallest_tile(model, step))
        usable, off, crop = _axis_geometry(model, t)
        count = int(math.ceil(n / step))
        ins.append(t)
        outs.append(usable)
        steps.append(step)
        offs.append(off)
        crops.append(crop)
        counts.append(count)
    return TilePlan(tuple(ins), tuple(outs), tuple(steps), tuple(offs), tuple(crops), tuple(counts))


def smaller_tile(
    model: UNet, plane_shape: Sequence[int], in_shape: Sequence[int]
) -> tuple[int, int]:
    """The network input of the tiles planned at half the size of ``in_shape`` (the same
    input when no smaller tile is possible): the spatial step of the out-of-memory back-off."""
    half = tuple(max(1, int(s) // 2) for s in in_shape)
    return plan_tiles(model, plane_shape, half).in_shape


def estimate_tile_memory(model: UNet, tile_shape: Sequence[int], batch_size: int = 1) -> int:
    """Rough peak bytes of a float32 inference forward pass on one batch of tiles.

    Counts the skip tensors kept for the way up plus the largest layer's input,
    output and concatenation, with a 1.5× safety factor.
    """
    rows, cols = (int(s) for s in tile_shape)
    c = model.config["base_channels"]
    skips = 0.0
    peak_layer = 0.0
    for level in range(model.depth + 1):
        scale = 4**level
        act = c * 2**level * rows * cols / scale
        if level < model.depth:
            skips += act
        peak_layer = max(peak_layer, 4 * act)  # conv input, output, concat (2x), ReLU in place
    return int(1.5 * 4 * batch_size * (skips + peak_layer))


def _auto_tile_and_batch(
    model: UNet, plane_shape: Sequence[int], device: torch.device, n_planes: int
) -> tuple[tuple[int, int], int]:
    """Tile size and batch size from the memory available on the device."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = 0.6 * free
        max_side = 2048
    else:
        budget = float(2 * 2**30)  # a conservative CPU working-set budget
        max_side = 1024
    # Largest square tile (never above what the plane needs) within the budget.
    need = [_smallest_tile(model, n) for n in plane_shape]
    side = max_side
    while side > 0 and estimate_tile_memory(model, (min(side, need[0]), min(side, need[1]))) > (
        budget
    ):
        side = int(side * 0.85)
    tile = (max(min(side, need[0]), 1), max(min(side, need[1]), 1))
    batch = 1
    if device.type != "cpu":
        plan = plan_tiles(model, plane_shape, tile)
        per_tile = estimate_tile_memory(model, plan.in_shape)
        # a batch only has to fill the GPU: more tiles than that add nothing, and make the
        # blocks (which hold a batch) so large that decoding them cannot overlap the network
        filling = max(1, BATCH_PIXELS // (plan.in_shape[0] * plan.in_shape[1]))
        batch = int(max(1, min(16, filling, budget // max(per_tile, 1), plan.total * n_planes)))
    return tile, batch


# --------------------------------------------------------------- prediction
def level0(image: Any) -> Any:
    """The full-resolution level of a multiscale image (a napari multiscale layer's data,
    or a list of arrays from large to small); any other image is returned as it is.

    >>> big, small = np.zeros((8, 8)), np.zeros((4, 4))
    >>> level0([big, small]) is big, level0(big) is big
    (True, True)
    """
    if isinstance(image, (list, tuple)) or type(image).__name__ == "MultiScaleData":
        if len(image) == 0 or not hasattr(image[0], "shape"):
            raise ValueError(
                "the image must be an array (numpy, dask or zarr) or a multiscale list of "
                "arrays from large to small, not a list of numbers; wrap it in numpy.asarray"
            )
        return image[0]
    return image


def check_image(image: Any) -> None:
    """Refuse what cannot be segmented: no array, or a non-numeric dtype."""
    if not (hasattr(image, "shape") and hasattr(image, "dtype")):
        raise TypeError(
            f"the image must be an array (numpy, dask or zarr), not {type(image).__name__}; "
            "wrap it in numpy.asarray"
        )
    if not np.issubdtype(np.dtype(image.dtype), np.number) and np.dtype(image.dtype) != bool:
        raise ValueError(f"the image must be numeric, not of dtype {image.dtype}")
    if np.issubdtype(np.dtype(image.dtype), np.complexfloating):
        raise ValueError(
            f"the image is complex-valued ({image.dtype}); segment its magnitude (numpy.abs) "
            "or its real part, saved as a real-valued image"
        )
    if 0 in tuple(image.shape):
        raise ValueError(f"the image is empty (shape {tuple(image.shape)}): it holds no pixels")


def plane_stats(
    layout: ImageLayout, image: Any, plane: int, norm: Normalization, in_channels: int
) -> list[tuple[float, float]]:
    """Normalisation statistics of one plane, per channel, from a regular subsample."""
    sample = layout.read(image, plane, *layout.sample_slices(), in_channels)
    return [norm.stats(channel) for channel in sample]


def resolve_tiles(
    model: UNet,
    plane_shape: Sequence[int],
    device: torch.device,
    n_planes: int,
    tile_shape: int | Sequence[int] | None,
    batch_size: int | None,
) -> tuple[tuple[int, int], int]:
    """The tile size and batch size to use: as given, or automatic from the memory."""
    if tile_shape is None:
        tiles, auto_batch = _auto_tile_and_batch(model, plane_shape, device, n_planes)
        batch = int(batch_size or auto_batch)
    else:
        tiles = (tile_shape, tile_shape) if np.isscalar(tile_shape) else tuple(tile_shape)
        if len(tiles) != 2:
            raise ValueError(f"tile_shape must be one or two sizes (rows, cols), not {tile_shape}")
        batch = int(batch_size or 1)
    if batch < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    return (int(tiles[0]), int(tiles[1])), batch


def _read_tile(
    layout: ImageLayout,
    image: Any,
    plane: int,
    rows: np.ndarray,
    cols: np.ndarray,
    in_channels: int,
) -> np.ndarray:
    """The mirror-padded window at the given (virtual) row and column coordinates."""
    h, w = layout.plane_shape
    r = reflect_index(rows, h)
    c = reflect_index(cols, w)
    r0, r1, c0, c1 = int(r.min()), int(r.max()) + 1, int(c.min()), int(c.max()) + 1
    block = layout.read(image, plane, slice(r0, r1), slice(c0, c1), in_channels)
    return block[:, (r - r0)[:, None], (c - c0)[None, :]]


class WindowReader:
    """Reads the input of many tiles from one window of the image, read once.

    For a block of tiles, the window is everything its tiles need (their
    context included, mirrored at the image border), so a lazy image (dask,
    zarr) is read once per block instead of once per (overlapping) tile.
    Calling it with virtual row and column coordinates returns the same values
    as reading that tile directly from the image.
    """

    def __init__(
        self,
        layout: ImageLayout,
        image: Any,
        plane: int,
        rows: tuple[int, int],
        cols: tuple[int, int],
        in_channels: int,
    ) -> None:
        h, w = layout.plane_shape
        self.shape = (h, w)
        r = reflect_index(np.arange(*rows), h)
        c = reflect_index(np.arange(*cols), w)
        self.r0, self.c0 = int(r.min()), int(c.min())
        self.data = layout.read(
            image, plane, slice(self.r0, int(r.max()) + 1), slice(self.c0, int(c.max()) + 1),
            in_channels,
        )

    def __call__(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        r = reflect_index(rows, self.shape[0]) - self.r0
        c = reflect_index(cols, self.shape[1]) - self.c0
        return self.data[:, r[:, None], c[None, :]]

    @classmethod
    def for_tiles(
        cls,
        layout: ImageLayout,
        image: Any,
        plane: int,
        plan: TilePlan,
        origins: Sequence[tuple[int, int]],
        in_channels: int,
    ) -> WindowReader:
        """The window that holds the input of the tiles at ``origins``."""
        rows = [o[0] for o in origins]
        cols = [o[1] for o in origins]
        return cls(
            layout, image, plane,
            (min(rows) - plan.offset[0], max(rows) - plan.offset[0] + plan.in_shape[0]),
            (min(cols) - plan.offset[1], max(cols) - plan.offset[1] + plan.in_shape[1]),
            in_channels,
        )


def predict_region(
    model: UNet,
    read_tile: Callable[[np.ndarray, np.ndarray], np.ndarray],
    plan: TilePlan,
    origins: Sequence[tuple[int, int]],
    corner: tuple[int, int],
    stats: list[tuple[float, float]],
    batch: int,
    device: torch.device,
    buffer: np.ndarray,
) -> Generator[int, None, None]:
    """Predict the tiles at ``origins`` into ``buffer``, whose pixel (0, 0) is ``corner``.

    ``read_tile(rows, cols)`` gives the ``(channel, row, col)`` input at virtual
    (mirrored) coordinates; the model must be in eval mode on ``device``. Yields
    the number of tiles done after each batch.

    On a CUDA device the host never waits for the GPU while it has work to do:
    the next batch is read and normalised while the GPU computes the current one,
    both copies go through pinned memory without blocking, and only the copy
    back of a batch's result is waited for (an event), never the batch queued
    behind it. The numbers computed are the same as one batch at a time.
    """
    offsets = np.array([s[0] for s in stats], dtype=np.float32)[:, None, None]
    scales = np.array([s[1] for s in stats], dtype=np.float32)[:, None, None]
    dtype = next(model.parameters()).dtype  # float32 usually; float64 for exactness checks
    ahead = device.type == "cuda"
    bh, bw = buffer.shape[-2:]
    cr, cc = plan.crop

    def launch(chunk: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, Any]:
        host = torch.empty((len(chunk), len(stats), *plan.in_shape), dtype=torch.float32,
                           pin_memory=ahead)
        tiles = host.numpy()
        for k, (r0, c0) in enumerate(chunk):
            rows = np.arange(r0 - plan.offset[0], r0 - plan.offset[0] + plan.in_shape[0])
            cols = np.arange(c0 - plan.offset[1], c0 - plan.offset[1] + plan.in_shape[1])
            tile = read_tile(rows, cols)
            if not np.isfinite(tile).all():
                raise ValueError(
                    "the image contains NaN or infinite values; replace them (for example "
                    "with numpy.nan_to_num) before segmenting"
                )
            np.subtract(tile, offsets, out=tiles[k])
            np.divide(tiles[k], scales, out=tiles[k])
        x = host.to(device=device, non_blocking=ahead).to(dtype)
        with torch.inference_mode():
            probs = torch.softmax(model(x), dim=1)
            probs = probs[:, :, cr : cr + plan.out_shape[0], cc : cc + plan.out_shape[1]]
            if not ahead:
                return probs.float().cpu(), None
            result = torch.empty(probs.shape, dtype=torch.float32, pin_memory=True)
            result.copy_(probs, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return result, done

    def finish(chunk: Sequence[tuple[int, int]], result: torch.Tensor, done: Any) -> int:
        if done is not None:
            done.synchronize()  # this batch's copy only, not the batch queued behind it
        probs = result.numpy()
        for k, (r0, c0) in enumerate(chunk):
            a, b = r0 - corner[0], c0 - corner[1]
            a1, b1 = min(a + plan.step[0], bh), min(b + plan.step[1], bw)
            buffer[:, a:a1, b:b1] = probs[k, :, : a1 - a, : b1 - b]
        return len(chunk)

    pending = None
    for start in range(0, len(origins), batch):
        chunk = origins[start : start + batch]
        launched = (chunk, *launch(chunk))
        if pending is not None:
            yield finish(*pending)
        if ahead:
            pending = launched
        else:
            yield finish(*launched)
    if pending is not None:
        yield finish(*pending)


def iter_predict_tiled(
    model: UNet,
    image: Any,
    tile_shape: int | Sequence[int] | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    *,
    axes: str | None = None,
    normalization: Normalization | None = None,
    out: Any = None,
    block_shape: int | Sequence[int] | None = None,
) -> Generator[TileProgress, None, Any]:
    """Generator form of :func:`predict_tiled`: yields :class:`TileProgress`, returns the result.

    Closing the generator (``gen.close()``) stops between two batches of tiles.
    See :func:`predict_tiled` for the parameters.
    """
    if not isinstance(model, UNet):
        raise TypeError(f"model must be a napari_unet.UNet, not {type(model).__name__}")
    image = level0(image)
    check_image(image)
    dev = resolve_device(device)
    layout = ImageLayout.infer(image.shape, model.in_channels, axes)
    norm = normalization or model.normalization
    n_planes = layout.n_planes
    plane_shape = layout.plane_shape
    result_shape = (model.n_classes, *layout.spatial_shape)
    if out is None:
        result = np.empty(result_shape, dtype=np.float32)
    else:
        if tuple(out.shape) != result_shape:
            raise ValueError(
                f"out has shape {tuple(out.shape)} but the result needs {result_shape} "
                "(n_classes, *spatial)"
            )
        result = out
    tiles, batch = resolve_tiles(model, plane_shape, dev, n_planes, tile_shape, batch_size)

    was_training = model.training
    model.eval()
    model_device = next(model.parameters()).device
    place_model(model, dev)
    try:
        plan = plan_tiles(model, plane_shape, tiles)
        grid = BlockGrid.make(plan, plane_shape, block_shape, min_tiles=batch)
        done = 0
        total = plan.total * n_planes
        yield TileProgress(0, total)
        plane = 0
        plane_index = (lambda z: (z,)) if "z" in layout.axes else (lambda z: ())
        while plane < n_planes:
            stats = plane_stats(layout, image, plane, norm, model.in_channels)
            read = partial(_read_tile, layout, image, plane, in_channels=model.in_channels)
            try:
                for i, j in grid.indices():
                    r0, r1, c0, c1 = grid.bounds(i, j)
                    buffer = np.empty((model.n_classes, r1 - r0, c1 - c0), np.float32)
                    for n in predict_region(
                        model, read, plan, grid.origins(i, j), (r0, c0), stats, batch, dev,
                        buffer,
                    ):
                        done += n
                        yield TileProgress(done, total)
                    index = (slice(None), *plane_index(plane), slice(r0, r1), slice(c0, c1))
                    result[index] = buffer
            except (torch.OutOfMemoryError, RuntimeError) as err:
                if not is_out_of_memory(err, dev):
                    raise
                backoff = Backoff(batch, plan.in_shape, partial(smaller_tile, model, plane_shape))
                what = backoff.next(dev)
                batch = backoff.batch
                if backoff.shape != plan.in_shape:
                    plan = plan_tiles(model, plane_shape, backoff.shape)
                    grid = BlockGrid.make(plan, plane_shape, block_shape, min_tiles=batch)
                warnings.warn(
                    f"GPU out of memory; retrying plane {plane} with {what}",
                    ResourceWarning,
                    stacklevel=2,
                )
                done = plane * plan.total
                total = plan.total * n_planes
                yield TileProgress(done, total)
                continue
            plane += 1
    finally:
        model.to(model_device)
        model.train(was_training)
    return result


def predict_tiled(
    model: UNet,
    image: Any,
    tile_shape: int | Sequence[int] | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    *,
    axes: str | None = None,
    normalization: Normalization | None = None,
    out: Any = None,
    block_shape: int | Sequence[int] | None = None,
) -> Any:
    """Class probabilities of a whole image by seamless overlap-tile prediction.

    Parameters
    ----------
    model : UNet
        The network (its weights are not changed; it is left on its device).
    image : array-like
        2D ``(row, col)``, a stack ``(plane, row, col)`` predicted plane by plane,
        channels ``(channel, row, col)`` or colour ``(row, col, 3)``; any numeric
        dtype; numpy, dask or zarr (only the windows each tile needs are read), or
        a multiscale list of arrays such as a napari multiscale layer's data (its
        full-resolution level 0 is predicted).
    tile_shape : int or (int, int), optional
        Network input size of one tile (572 in the paper). Invalid sizes are
        rounded to the nearest valid one. By default the largest tile that fits
        the memory available (free GPU memory on CUDA, a 2 GiB budget on CPU).
    batch_size : int, optional
        Tiles per forward pass; by default 1 on CPU, and on a GPU as many as make
        about 4 million input pixels (:data:`BATCH_PIXELS`) and fit its free
        memory: one of the largest tiles.
        On a CUDA out-of-memory error the batch, then the tile, is halved and the
        plane predicted again, with a ``ResourceWarning``.
    device : str or torch.device, optional
        ``"auto"`` (default), ``"cpu"``, ``"cuda"`` or ``"mps"``.
    axes : str, optional
        The image's axes (``"yx"``, ``"zyx"``, ``"cyx"``, ``"yxc"``, ``"zcyx"``, ...)
        when the guess of :meth:`ImageLayout.infer` is not right.
    normalization : Normalization, optional
        Defaults to the one stored with the model.
    out : array-like, optional
        Where to write the result (e.g. a memory-mapped or zarr array of shape
        ``(n_classes, *spatial)``), so the result need not fit in memory. It is
        written one block at a time.
    block_shape : int or (int, int), optional
        Output pixels per block (rounded down to whole tiles; default about
        2048): the most of the result held in memory at once.

    Returns
    -------
    numpy.ndarray or the ``out`` array
        float32 probabilities ``(n_classes, *spatial)``, summing to 1 over classes.

    Examples
    --------
    >>> net = UNet(depth=2, base_channels=4)
    >>> image = np.random.default_rng(0).integers(0, 255, (50, 70), dtype=np.uint8)
    >>> probs = predict_tiled(net, image, tile_shape=64)
    >>> probs.shape, probs.dtype
    ((2, 50, 70), dtype('float32'))
    >>> bool(np.allclose(probs.sum(axis=0), 1, atol=1e-5))
    True
    """
    return run_to_completion(
        iter_predict_tiled(
            model, image, tile_shape, batch_size, device,
            axes=axes, normalization=normalization, out=out, block_shape=block_shape,
        )
    )
