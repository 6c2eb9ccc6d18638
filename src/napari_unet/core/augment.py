"""Data augmentation for U-Net training, computed on the training device.

One random transform per patch moves the image and everything the targets are
made of (instance labels, annotation mask, the precomputed boundary weight
term) identically. The transform combines

* the elastic deformation of the paper (Ronneberger et al. 2015, section 3.1):
  random displacement vectors on a coarse 3×3 grid, drawn from a Gaussian with
  10 pixels standard deviation, turned into a smooth per-pixel displacement by
  bicubic interpolation;
* flips, rotations by multiples of 90°, a small free rotation and a scaling.

:func:`source_coordinates` turns a batch of transforms into the coordinates
(in pixels of the source plane) at which each patch pixel is read, and
:func:`gather_bilinear` / :func:`gather_nearest` read them, mirroring beyond
the plane's borders exactly as tiled prediction does. They read from *flat*
buffers that hold many planes of different sizes one after the other (a
:class:`PlaneTable` says where each starts), so one call samples a whole batch
drawn from many images. Nearest-neighbour reading returns input values only,
so instance ids survive unchanged. Gray-value changes (gain, offset, gamma,
Gaussian noise) are then applied to the image only (:func:`augment_intensity`).

Random numbers come from a :class:`torch.Generator` on the sampling device, so
a batch is made without any host synchronisation and a seeded run is
reproducible on the same device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "AugmentConfig",
    "Geometry",
    "PlaneTable",
    "random_geometry",
    "source_coordinates",
    "reflect",
    "gather_bilinear",
    "gather_nearest",
    "nearest_index",
    "augment_intensity",
    "augment_pair",
]


@dataclass(frozen=True)
class AugmentConfig:
    """What :func:`augment_pair` and the training engine randomise.

    Parameters
    ----------
    elastic_sigma : float
        Standard deviation (pixels) of the random displacements on the coarse
        grid (10 in the paper); 0 switches the elastic deformation off.
    elastic_grid : int
        Points per side of the coarse displacement grid (3 in the paper).
    flip : bool
        Random horizontal and vertical flips.
    rot90 : bool
        Random rotations by 0, 90, 180 or 270 degrees.
    max_rotation : float
        Largest further rotation (degrees, either way).
    scale_range : (float, float)
        Range of the zoom factor (drawn log-uniformly); 1.2 shows cells 20 % larger.
    gain_range : (float, float)
        Range of the gray-value gain (log-uniform).
    max_offset : float
        Largest gray-value offset (the images are normalised to about 0..1).
    gamma_range : (float, float)
        Range of the gamma exponent (log-uniform), applied within each patch's
        own gray-value range.
    max_noise : float
        Largest standard deviation of added Gaussian noise (drawn uniformly).
    """

    elastic_sigma: float = 10.0
    elastic_grid: int = 3
    flip: bool = True
    rot90: bool = True
    max_rotation: float = 15.0
    scale_range: tuple[float, float] = (0.85, 1.18)
    gain_range: tuple[float, float] = (0.8, 1.25)
    max_offset: float = 0.1
    gamma_range: tuple[float, float] = (0.7, 1.43)
    max_noise: float = 0.04

    def __post_init__(self) -> None:
        if self.elastic_sigma < 0 or self.max_rotation < 0 or self.max_offset < 0 \
                or self.max_noise < 0:
            raise ValueError("augmentation strengths must not be negative")
        if int(self.elastic_grid) < 2:
            raise ValueError(f"elastic_grid must be 2 or more, not {self.elastic_grid}")
        for name in ("scale_range", "gain_range", "gamma_range"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be (low, high) with 0 < low <= high, not {lo, hi}")

    @classmethod
    def off(cls) -> AugmentConfig:
        """No augmentation at all (the identity)."""
        return cls(
            elastic_sigma=0.0, flip=False, rot90=False, max_rotation=0.0,
            scale_range=(1.0, 1.0), gain_range=(1.0, 1.0), max_offset=0.0,
            gamma_range=(1.0, 1.0), max_noise=0.0,
        )

    def geometric_only(self) -> AugmentConfig:
        """The same geometric transforms without gray-value changes."""
        return replace(self, gain_range=(1.0, 1.0), max_offset=0.0, gamma_range=(1.0, 1.0),
                       max_noise=0.0)

    @property
    def is_geometric(self) -> bool:
        """True when some geometric transform is switched on."""
        return bool(
            self.elastic_sigma > 0 or self.flip or self.rot90 or self.max_rotation > 0
            or self.scale_range != (1.0, 1.0)
        )

    @property
    def is_intensity(self) -> bool:
        """True when some gray-value change is switched on."""
        return bool(
            self.gain_range != (1.0, 1.0) or self.max_offset > 0
            or self.gamma_range != (1.0, 1.0) or self.max_noise > 0
        )



@dataclass(frozen=True)
class Geometry:
    """Random geometric transforms of a batch of patches (tensors on one device).

    ``matrix`` (n, 2, 2) maps centred patch (row, col) offsets to source
    offsets; ``displacement`` (n, 2, g, g) holds the coarse elastic
    displacements in pixels (row, col), or is None without elastic deformation.
    """

    matrix: torch.Tensor
    displacement: torch.Tensor | None

    def __len__(self) -> int:
        return int(self.matrix.shape[0])

    @classmethod
    def identity(cls, n: int, device: str | torch.device = "cpu") -> Geometry:
        """No transform: patches are read pixel for pixel."""
        return cls(torch.eye(2, device=device).expand(n, 2, 2).contiguous(), None)


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator, dev: Any) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=dev)


def _log_uniform(n: int, lo: float, hi: float, gen: torch.Generator, dev: Any) -> torch.Tensor:
    if lo == hi:
        return torch.full((n,), float(lo), device=dev)
    return torch.exp(_uniform(n, math.log(lo), math.log(hi), gen, dev))


def random_geometry(n: int, config: AugmentConfig, generator: torch.Generator) -> Geometry:
    """Draw the geometric transforms of ``n`` patches on ``generator``'s device."""
    dev = generator.device
    angle = torch.zeros(n, device=dev)
    if config.rot90:
        angle = angle + torch.randint(0, 4, (n,), generator=generator, device=dev) * (
            math.pi / 2)
    if config.max_rotation > 0:
        r = math.radians(config.max_rotation)
        angle = angle + _uniform(n, -r, r, generator, dev)
    zoom = _log_uniform(n, *config.scale_range, generator, dev)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    matrix = rot / zoom[:, None, None]
    if config.flip:
        flips = torch.where(torch.rand(n, 2, generator=generator, device=dev) < 0.5, -1.0, 1.0)
        matrix = matrix * flips[:, None, :]
    disp = None
    if config.elastic_sigma > 0:
        s = float(config.elastic_sigma)
        g = int(config.elastic_grid)
        disp = (torch.randn(n, 2, g, g, generator=generator, device=dev) * s).clamp(-3 * s, 3 * s)
    return Geometry(matrix, disp)


def source_coordinates(
    geometry: Geometry, centres: torch.Tensor, shape: Sequence[int]
) -> torch.Tensor:
    """Source (row, col) coordinates of every pixel of a batch of transformed patches.

    Parameters
    ----------
    geometry : Geometry
        One transform per patch.
    centres : torch.Tensor
        ``(n, 2)`` source pixel (row, col) at the centre of each patch: patch
        pixel ``(rows // 2, cols // 2)`` is read there.
    shape : (int, int)
        Patch size.

    Returns
    -------
    torch.Tensor
        float32 ``(n, 2, rows, cols)``. Without elastic deformation, rotations by
        multiples of 90° and flips give whole-pixel coordinates, so those patches
        are read without interpolation.
    """
    rows, cols = (int(v) for v in shape)
    dev = geometry.matrix.device
    u = torch.arange(rows, device=dev, dtype=torch.float32) - rows // 2
    v = torch.arange(cols, device=dev, dtype=torch.float32) - cols // 2
    uu, vv = torch.meshgrid(u, v, indexing="ij")
    offsets = torch.stack([uu, vv], 0).reshape(2, -1)
    n = len(geometry)
    src = torch.einsum("nij,jp->nip", geometry.matrix.float(), offsets).reshape(n, 2, rows, cols)
    if geometry.displacement is not None:
        disp = geometry.displacement.float()
        g = disp.shape[-1]
        kernels = _bicubic_kernels(g, rows, cols, dev)  # (g*g, rows*cols)
        field = disp.reshape(n * 2, g * g) @ kernels
        src = src + field.reshape(n, 2, rows, cols)
    return src + centres.to(dev, torch.float32)[:, :, None, None]


_KERNELS: dict[tuple, torch.Tensor] = {}


def _bicubic_kernels(g: int, rows: int, cols: int, device: torch.device) -> torch.Tensor:
    """How each point of a g×g grid spreads over rows×cols under bicubic interpolation
    (``align_corners=True``): ``(g*g, rows*cols)``, so that upsampling a batch of
    grids is one small matrix product (exactly :func:`torch.nn.functional.interpolate`,
    which is linear in its input)."""
    key = (g, rows, cols, str(device))
    kernels = _KERNELS.get(key)
    if kernels is None:
        basis = torch.eye(g * g, device=device).reshape(g * g, 1, g, g)
        kernels = F.interpolate(basis, size=(rows, cols), mode="bicubic",
                                align_corners=True).reshape(g * g, rows * cols)
        if len(_KERNELS) > 32:
            _KERNELS.clear()
        _KERNELS[key] = kernels
    return kernels


@dataclass(frozen=True)
class PlaneTable:
    """Where the planes of a flat buffer start, and their sizes (integer tensors).

    The tensors are int32 when all the planes together hold fewer than 2**31
    pixels (half the memory traffic of int64 indices), else int64.
    """

    offsets: torch.Tensor
    heights: torch.Tensor
    widths: torch.Tensor

    @classmethod
    def of(cls, shapes: Sequence[Sequence[int]], device: str | torch.device = "cpu") -> PlaneTable:
        """The table of planes of the given (rows, cols) shapes stored one after the other."""
        sizes = [int(h) * int(w) for h, w in shapes]
        dtype = torch.int32 if sum(sizes) < 2**31 - 2**20 else torch.int64
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        return cls(torch.as_tensor(offsets, dtype=dtype, device=device),
                   torch.as_tensor([int(h) for h, _ in shapes], dtype=dtype, device=device),
                   torch.as_tensor([int(w) for _, w in shapes], dtype=dtype, device=device))

    @property
    def total(self) -> int:
        """Pixels of all planes together."""
        return int((self.offsets[-1] + self.heights[-1] * self.widths[-1]).item())

    def plane_of(self, flat_index: torch.Tensor) -> torch.Tensor:
        """The plane that holds each flat index."""
        return torch.searchsorted(self.offsets, flat_index.to(self.offsets.dtype),
                                  right=True) - 1

    def to(self, device: str | torch.device) -> PlaneTable:
        return PlaneTable(self.offsets.to(device), self.heights.to(device),
                          self.widths.to(device))

    def per_patch(self, plane: torch.Tensor, ndim: int) -> tuple[torch.Tensor, ...]:
        """Offset, height and width of each patch's plane, shaped to broadcast over
        ``ndim - 1`` trailing axes."""
        shape = (-1,) + (1,) * (ndim - 1)
        return (self.offsets[plane].reshape(shape), self.heights[plane].reshape(shape),
                self.widths[plane].reshape(shape))


def reflect(index: torch.Tensor, n: torch.Tensor | int) -> torch.Tensor:
    """Integer coordinates mirrored into ``[0, n)`` (numpy's "reflect": the edge pixel is
    not repeated), as tiled prediction pads; ``n`` may be a tensor that broadcasts.

    >>> reflect(torch.arange(-3, 7), 4).tolist()
    [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
    """
    period = torch.clamp(torch.as_tensor(2 * n - 2), min=1)
    m = torch.remainder(index, period)
    return torch.where(m < n, m, period - m)


def _take(buffer: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``buffer[idx]`` for (N,) buffers, ``(n, C, ...)`` for (C, N) ones."""
    if buffer.ndim == 1:
        return buffer[idx]
    return buffer[:, idx].transpose(0, 1)


def nearest_index(table: PlaneTable, plane: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Flat buffer index of the pixel nearest to each coordinate (mirrored at borders)."""
    off, h, w = table.per_patch(plane, coords.ndim - 1)
    dtype = table.offsets.dtype
    r = reflect(torch.round(coords[:, 0]).to(dtype), h)
    c = reflect(torch.round(coords[:, 1]).to(dtype), w)
    return off + r * w + c


def gather_nearest(
    buffer: torch.Tensor, table: PlaneTable, plane: torch.Tensor, coords: torch.Tensor
) -> torch.Tensor:
    """Values of a flat buffer at the nearest pixels of ``coords``, mirrored at borders.

    ``buffer`` is ``(N,)`` or ``(C, N)`` (planes one after the other, as ``table``
    says); ``plane`` ``(n,)`` says which plane each patch reads; ``coords``
    ``(n, 2, rows, cols)`` are source coordinates. Returns ``(n, rows, cols)`` or
    ``(n, C, rows, cols)`` values of the buffer's dtype: input values only.
    """
    return _take(buffer, nearest_index(table, plane, coords))


def gather_bilinear(
    buffer: torch.Tensor, table: PlaneTable, plane: torch.Tensor, coords: torch.Tensor
) -> torch.Tensor:
    """Bilinear interpolation of a flat float buffer at ``coords`` (see :func:`gather_nearest`).

    Exact at whole-pixel coordinates. Returns float32.
    """
    off, h, w = table.per_patch(plane, coords.ndim - 1)
    dtype = table.offsets.dtype
    r, c = coords[:, 0], coords[:, 1]
    r0, c0 = torch.floor(r), torch.floor(c)
    fr, fc = r - r0, c - c0
    r0, c0 = r0.to(dtype), c0.to(dtype)
    row_a = off + reflect(r0, h) * w
    row_b = off + reflect(r0 + 1, h) * w
    col_a, col_b = reflect(c0, w), reflect(c0 + 1, w)
    if buffer.ndim == 2:
        fr, fc = fr[:, None], fc[:, None]
    v00 = _take(buffer, row_a + col_a).float()
    v01 = _take(buffer, row_a + col_b).float()
    top = torch.lerp(v00, v01, fc)
    v10 = _take(buffer, row_b + col_a).float()
    v11 = _take(buffer, row_b + col_b).float()
    return torch.lerp(top, torch.lerp(v10, v11, fc), fr)


def augment_intensity(
    x: torch.Tensor, config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """Random gamma, gain, offset and noise for a batch of images (n, c, rows, cols).

    Returns a new tensor; ``x`` is not modified. Gamma is applied within each
    patch's own gray-value range, so the range is kept. ``generator`` must be on
    ``x``'s device.
    """
    n = x.shape[0]
    dev = x.device
    shape = (n,) + (1,) * (x.ndim - 1)
    out = x
    if config.gamma_range != (1.0, 1.0):
        gamma = _log_uniform(n, *config.gamma_range, generator, dev).reshape(shape)
        flat = x.reshape(n, -1)
        lo = flat.amin(dim=1).reshape(shape)
        hi = flat.amax(dim=1).reshape(shape)
        span = (hi - lo).clamp_min(1e-6)
        out = lo + span * ((x - lo) / span).clamp(0, 1) ** gamma.to(x.dtype)
    if config.gain_range != (1.0, 1.0):
        out = out * _log_uniform(n, *config.gain_range, generator, dev).reshape(shape)
    if config.max_offset > 0:
        o = config.max_offset
        out = out + _uniform(n, -o, o, generator, dev).reshape(shape)
    if config.max_noise > 0:
        sd = _uniform(n, 0.0, config.max_noise, generator, dev).reshape(shape)
        out = out + torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype) * sd
    return out if out is not x else x.clone()


def augment_pair(
    image: Any,
    labels: Any,
    config: AugmentConfig | None = None,
    *,
    seed: int | None = None,
    mask: Any = None,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, ...]:
    """Augment one 2D image with its instance labels (and mask), as training does.

    The output has the input's shape; context beyond the borders is mirrored.

    Parameters
    ----------
    image : array-like
        ``(row, col)`` or ``(channel, row, col)``, any numeric dtype (returned as
        float32; gray-value changes assume an image normalised to about 0..1).
    labels : array-like
        ``(row, col)`` integer instance labels (0 = background).
    config : AugmentConfig, optional
        What to randomise (default: everything, as in training).
    seed : int, optional
        For reproducible transforms.
    mask : array-like of bool, optional
        An annotation mask moved with the labels.
    device : str or torch.device
        Where to compute.

    Returns
    -------
    (image, labels) or (image, labels, mask)
        float32 image, labels of the input's dtype holding only ids of the
        input, and the bool mask if one was given.

    Examples
    --------
    >>> lab = np.zeros((64, 64), np.int32); lab[10:30, 10:30] = 7; lab[35:60, 30:50] = 3
    >>> img, out = augment_pair(lab > 0, lab, seed=0)
    >>> set(np.unique(out)) <= {0, 3, 7}
    True
    """
    config = AugmentConfig() if config is None else config
    img = np.asarray(image, dtype=np.float32)
    lab = np.asarray(labels)
    if img.ndim == 2:
        img = img[None]
    if img.ndim != 3 or lab.ndim != 2 or img.shape[1:] != lab.shape:
        raise ValueError(
            f"augment_pair needs a (row, col) or (channel, row, col) image and (row, col) "
            f"labels of the same size, got {np.shape(image)} and {lab.shape}"
        )
    dev = torch.device(device)
    gen = torch.Generator(device=dev)
    gen.manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
    ids, inverse = np.unique(lab, return_inverse=True)
    h, w = lab.shape
    table = PlaneTable.of([(h, w)], dev)
    plane = torch.zeros(1, dtype=torch.long, device=dev)
    centre = torch.tensor([[h // 2, w // 2]], device=dev)
    geometry = random_geometry(1, config, gen) if config.is_geometric else Geometry.identity(1,
                                                                                           dev)
    coords = source_coordinates(geometry, centre, (h, w))
    x = gather_bilinear(torch.from_numpy(img.reshape(img.shape[0], -1)).to(dev), table, plane,
                        coords)
    if config.is_intensity:
        x = augment_intensity(x, config, gen)
    index = torch.from_numpy(inverse.reshape(-1).astype(np.int64)).to(dev)
    out_lab = ids[gather_nearest(index, table, plane, coords)[0].cpu().numpy()]
    out_img = x[0].cpu().numpy()
    out_img = out_img[0] if np.ndim(image) == 2 else out_img
    out_lab = out_lab.astype(lab.dtype, copy=False)
    if mask is None:
        return out_img, out_lab
    m = torch.from_numpy(np.asarray(mask, dtype=bool).reshape(-1)).to(dev)
    return out_img, out_lab, gather_nearest(m, table, plane, coords)[0].cpu().numpy()
