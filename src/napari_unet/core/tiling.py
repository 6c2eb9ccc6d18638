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
memory-mapped or zarr) ``out`` array.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from ._utils import resolve_device, run_to_completion
from .model import UNet
from .normalize import Normalization

__all__ = [
    "TileProgress",
    "ImageLayout",
    "TilePlan",
    "iter_predict_tiled",
    "predict_tiled",
    "reflect_index",
    "plan_tiles",
    "estimate_tile_memory",
]

# RGB(A) to luminance (ITU-R BT.709), for gray-value models given a colour image.
_LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)


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
        batch = int(max(1, min(16, budget // max(per_tile, 1), plan.total * n_planes)))
    return tile, batch


# --------------------------------------------------------------- prediction
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
) -> Generator[TileProgress, None, Any]:
    """Generator form of :func:`predict_tiled`: yields :class:`TileProgress`, returns the result.

    Closing the generator (``gen.close()``) stops between two batches of tiles.
    See :func:`predict_tiled` for the parameters.
    """
    if not isinstance(model, UNet):
        raise TypeError(f"model must be a napari_unet.UNet, not {type(model).__name__}")
    dev = resolve_device(device)
    layout = ImageLayout.infer(image.shape, model.in_channels, axes)
    if not np.issubdtype(np.dtype(image.dtype), np.number) and np.dtype(image.dtype) != bool:
        raise ValueError(f"the image must be numeric, not of dtype {image.dtype}")
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

    if tile_shape is None:
        tiles, auto_batch = _auto_tile_and_batch(model, plane_shape, dev, n_planes)
        batch = int(batch_size or auto_batch)
    else:
        tiles = (tile_shape, tile_shape) if np.isscalar(tile_shape) else tuple(tile_shape)
        if len(tiles) != 2:
            raise ValueError(f"tile_shape must be one or two sizes (rows, cols), not {tile_shape}")
        batch = int(batch_size or 1)
    if batch < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")

    was_training = model.training
    model.eval()
    model_device = next(model.parameters()).device
    model.to(dev)
    try:
        plan = plan_tiles(model, plane_shape, tiles)
        done = 0
        total = plan.total * n_planes
        yield TileProgress(0, total)
        plane = 0
        while plane < n_planes:
            sample = layout.read(image, plane, *layout.sample_slices(), model.in_channels)
            stats = [norm.stats(channel) for channel in sample]
            try:
                for progress in _predict_plane(
                    model, image, layout, plane, plan, stats, batch, dev, result
                ):
                    done += progress
                    yield TileProgress(done, total)
            except torch.OutOfMemoryError:
                if dev.type != "cuda":
                    raise
                torch.cuda.empty_cache()
                if batch > 1:
                    batch //= 2
                    what = f"batch size {batch}"
                else:
                    smaller = tuple(max(1, s // 2) for s in plan.in_shape)
                    new_plan = plan_tiles(model, plane_shape, smaller)
                    if new_plan.in_shape == plan.in_shape:
                        raise
                    plan = new_plan
                    what = f"tiles of {plan.in_shape[0]}x{plan.in_shape[1]}"
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


def _predict_plane(
    model: UNet,
    image: Any,
    layout: ImageLayout,
    plane: int,
    plan: TilePlan,
    stats: list[tuple[float, float]],
    batch: int,
    device: torch.device,
    result: Any,
) -> Generator[int, None, None]:
    """Predict one plane tile batch by tile batch, yielding the tiles done per batch."""
    h, w = layout.plane_shape
    offsets = np.array([s[0] for s in stats], dtype=np.float32)[:, None, None]
    scales = np.array([s[1] for s in stats], dtype=np.float32)[:, None, None]
    origins = plan.origins()
    dtype = next(model.parameters()).dtype  # float32 usually; float64 for exactness checks
    plane_index = (plane,) if "z" in layout.axes else ()
    for start in range(0, len(origins), batch):
        chunk = origins[start : start + batch]
        tiles = []
        for r0, c0 in chunk:
            rows = np.arange(r0 - plan.offset[0], r0 - plan.offset[0] + plan.in_shape[0])
            cols = np.arange(c0 - plan.offset[1], c0 - plan.offset[1] + plan.in_shape[1])
            tile = _read_tile(layout, image, plane, rows, cols, model.in_channels)
            if not np.isfinite(tile).all():
                raise ValueError(
                    "the image contains NaN or infinite values; replace them (for example "
                    "with numpy.nan_to_num) before segmenting"
                )
            tiles.append((tile - offsets) / scales)
        x = torch.from_numpy(np.stack(tiles)).to(device=device, dtype=dtype)
        with torch.inference_mode():
            probs = torch.softmax(model(x), dim=1)
        cr, cc = plan.crop
        probs = probs[:, :, cr : cr + plan.out_shape[0], cc : cc + plan.out_shape[1]]
        probs = probs.float().cpu().numpy()
        for k, (r0, c0) in enumerate(chunk):
            r1 = min(r0 + plan.step[0], h)
            c1 = min(c0 + plan.step[1], w)
            result[(slice(None), *plane_index, slice(r0, r1), slice(c0, c1))] = probs[
                k, :, : r1 - r0, : c1 - c0
            ]
        yield len(chunk)


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
) -> Any:
    """Class probabilities of a whole image by seamless overlap-tile prediction.

    Parameters
    ----------
    model : UNet
        The network (its weights are not changed; it is left on its device).
    image : array-like
        2D ``(row, col)``, a stack ``(plane, row, col)`` predicted plane by plane,
        channels ``(channel, row, col)`` or colour ``(row, col, 3)``; any numeric
        dtype; numpy, dask or zarr (only the windows each tile needs are read).
    tile_shape : int or (int, int), optional
        Network input size of one tile (572 in the paper). Invalid sizes are
        rounded to the nearest valid one. By default the largest tile that fits
        the memory available (free GPU memory on CUDA, a 2 GiB budget on CPU).
    batch_size : int, optional
        Tiles per forward pass; by default 1 on CPU and as many as fit on a GPU.
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
        ``(n_classes, *spatial)``), so the result need not fit in memory.

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
            axes=axes, normalization=normalization, out=out,
        )
    )
