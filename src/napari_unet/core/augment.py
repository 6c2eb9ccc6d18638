"""Data augmentation for U-Net training, on the training device.

One random geometric transform per patch moves the image, the instance labels
and the annotation mask identically: one sampling grid is built and used by
:func:`torch.nn.functional.grid_sample` for all three (bilinear for the image,
nearest-neighbour for labels and mask, so label ids survive unchanged). The
transform combines

* the elastic deformation of the paper (Ronneberger et al. 2015, section 3.1):
  random displacement vectors on a coarse 3×3 grid, drawn from a Gaussian with
  10 pixels standard deviation, turned into a smooth per-pixel displacement by
  bicubic interpolation;
* flips, rotations by multiples of 90°, a small free rotation and a scaling.

Gray-value changes (gain, offset, gamma, Gaussian noise) are then applied to
the image only. Geometric parameters are drawn on the CPU with a numpy
generator (a few numbers per patch), so a seeded run is reproducible on any
device; the dense work (grid, sampling, noise) runs on the device.

The training engine computes the targets and the boundary weight map *after*
warping, from the warped labels (see :mod:`napari_unet.core.training`), so the
weights always describe the cells the network actually sees.
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
    "sample_geometry",
    "sampling_grid",
    "warp",
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

    def source_padding(self, out_shape: Sequence[int]) -> tuple[int, int]:
        """Pixels of extra context per side to read around a patch of ``out_shape``.

        Enough that the rotated, zoomed-out and displaced patch stays within the
        window read (displacements are clipped at 3σ on the coarse grid).
        """
        if not self.is_geometric:
            return (0, 0)
        theta = math.radians(min(self.max_rotation, 45.0))
        spread = (abs(math.cos(theta)) + abs(math.sin(theta))) / min(self.scale_range)
        half = max(out_shape) / 2 * spread + 3.3 * self.elastic_sigma + 2
        return tuple(max(0, int(math.ceil(half - n / 2))) for n in out_shape)  # type: ignore


@dataclass(frozen=True)
class Geometry:
    """Random geometric transforms of a batch of patches.

    ``matrix`` (n, 2, 2) maps centred output (row, col) offsets to source
    offsets; ``displacement`` (n, 2, g, g) holds the coarse elastic
    displacements in pixels (row, col).
    """

    matrix: np.ndarray
    displacement: np.ndarray

    def __len__(self) -> int:
        return len(self.matrix)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    if lo == hi:
        return np.full(n, float(lo))
    return np.exp(rng.uniform(math.log(lo), math.log(hi), n))


def sample_geometry(n: int, config: AugmentConfig, rng: np.random.Generator) -> Geometry:
    """Draw the geometric transforms of ``n`` patches."""
    angle = np.zeros(n)
    if config.rot90:
        angle += rng.integers(0, 4, n) * (np.pi / 2)
    if config.max_rotation > 0:
        angle += np.radians(rng.uniform(-config.max_rotation, config.max_rotation, n))
    flips = np.ones((n, 2))
    if config.flip:
        flips = rng.choice([-1.0, 1.0], size=(n, 2))
    zoom = _log_uniform(rng, *config.scale_range, n)
    cos, sin = np.cos(angle), np.sin(angle)
    rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    matrix = rot * flips[:, None, :] / zoom[:, None, None]
    g = int(config.elastic_grid)
    if config.elastic_sigma > 0:
        s = float(config.elastic_sigma)
        disp = np.clip(rng.normal(0.0, s, (n, 2, g, g)), -3 * s, 3 * s)
    else:
        disp = np.zeros((n, 2, g, g))
    return Geometry(matrix.astype(np.float32), disp.astype(np.float32))


def sampling_grid(
    geometry: Geometry,
    source_shape: Sequence[int],
    out_shape: Sequence[int],
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """The ``grid_sample`` grid (n, rows, cols, 2) of a batch of transformed patches.

    The output patch of ``out_shape`` is centred on the centre of the source
    window of ``source_shape``; the identity transform samples the source
    window's central pixels exactly (no interpolation) when both shapes have
    the same parity. Coordinates are for ``align_corners=True``.
    """
    ho, wo = (int(s) for s in out_shape)
    hs, ws = (int(s) for s in source_shape)
    n = len(geometry)
    u = torch.arange(ho, device=device, dtype=torch.float32) - (ho - 1) / 2
    v = torch.arange(wo, device=device, dtype=torch.float32) - (wo - 1) / 2
    uu, vv = torch.meshgrid(u, v, indexing="ij")
    offsets = torch.stack([uu, vv], 0).reshape(2, -1)  # (2, P) row, col
    m = torch.as_tensor(geometry.matrix, device=device)
    src = torch.einsum("nij,jp->nip", m, offsets).reshape(n, 2, ho, wo)
    if np.any(geometry.displacement):
        disp = torch.as_tensor(geometry.displacement, device=device)
        src = src + F.interpolate(disp, size=(ho, wo), mode="bicubic", align_corners=True)
    rows = src[:, 0] + (hs - 1) / 2
    cols = src[:, 1] + (ws - 1) / 2
    grid = torch.stack(
        [2 * cols / max(ws - 1, 1) - 1, 2 * rows / max(hs - 1, 1) - 1], dim=-1
    )
    return grid


def warp(x: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Sample ``x`` (n, c, rows, cols) at ``grid``, mirroring beyond the borders.

    Use ``mode="nearest"`` for label ids and masks: every output value is then
    one of the input values.
    """
    return F.grid_sample(x, grid.to(x.dtype), mode=mode, padding_mode="reflection",
                         align_corners=True)


def augment_intensity(
    x: torch.Tensor, config: AugmentConfig, rng: np.random.Generator
) -> torch.Tensor:
    """Random gamma, gain, offset and noise for a batch of images (n, c, rows, cols).

    Returns a new tensor; ``x`` is not modified. Gamma is applied within each
    patch's own gray-value range, so the range is kept.
    """
    n = x.shape[0]
    dev = x.device
    shape = (n,) + (1,) * (x.ndim - 1)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=x.dtype, device=dev).reshape(shape)

    gamma = _log_uniform(rng, *config.gamma_range, n)
    gain = _log_uniform(rng, *config.gain_range, n)
    offset = rng.uniform(-config.max_offset, config.max_offset, n) if config.max_offset else \
        np.zeros(n)
    noise = rng.uniform(0, config.max_noise, n) if config.max_noise else np.zeros(n)
    noise_seed = int(rng.integers(0, 2**62))
    out = x
    if config.gamma_range != (1.0, 1.0):
        flat = x.reshape(n, -1)
        lo = flat.min(dim=1).values.reshape(shape)
        hi = flat.max(dim=1).values.reshape(shape)
        span = (hi - lo).clamp_min(1e-6)
        out = lo + span * ((x - lo) / span).clamp(0, 1) ** t(gamma)
    out = out * t(gain) + t(offset)
    if config.max_noise > 0:
        gen = torch.Generator(device=dev)
        gen.manual_seed(noise_seed)
        out = out + torch.randn(x.shape, generator=gen, device=dev, dtype=x.dtype) * t(noise)
    return out


def augment_pair(
    image: Any,
    labels: Any,
    config: AugmentConfig | None = None,
    *,
    seed: int | np.random.Generator | None = None,
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
    seed : int or numpy.random.Generator, optional
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
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    img = np.asarray(image, dtype=np.float32)
    lab = np.asarray(labels)
    if img.ndim == 2:
        img = img[None]
    if img.ndim != 3 or lab.ndim != 2 or img.shape[1:] != lab.shape:
        raise ValueError(
            f"augment_pair needs a (row, col) or (channel, row, col) image and (row, col) "
            f"labels of the same size, got {np.shape(image)} and {lab.shape}"
        )
    ids, inverse = np.unique(lab, return_inverse=True)
    dev = torch.device(device)
    x = torch.from_numpy(img[None].copy()).to(dev)
    planes = [inverse.reshape(lab.shape).astype(np.float32)]
    if mask is not None:
        planes.append(np.asarray(mask, dtype=np.float32))
    y = torch.from_numpy(np.stack(planes)[None]).to(dev)
    geometry = sample_geometry(1, config, rng)
    grid = sampling_grid(geometry, lab.shape, lab.shape, dev)
    xw = warp(x, grid, "bilinear")
    yw = warp(y, grid, "nearest")
    if config.is_intensity:
        xw = augment_intensity(xw, config, rng)
    out_img = xw[0].cpu().numpy()
    out_img = out_img[0] if np.ndim(image) == 2 else out_img
    out_lab = ids[yw[0, 0].round().long().cpu().numpy()].astype(lab.dtype, copy=False)
    if mask is None:
        return out_img, out_lab
    return out_img, out_lab, yw[0, 1].cpu().numpy() > 0.5
