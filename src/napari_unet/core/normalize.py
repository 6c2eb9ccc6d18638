"""Per-image intensity normalisation, stored with a model so training and prediction agree.

Microscopy images come in every dtype and dynamic range (8-bit, 12-bit in
16-bit containers, floats). The network sees ``(x - p_low) / (p_high - p_low)``
where ``p_low`` and ``p_high`` are percentiles of the image itself, computed for
each plane and each channel separately. Large planes are summarised from a
regular subsample so that lazy (dask, zarr) images are never loaded whole.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["Normalization"]

# Planes with more pixels than this are summarised from a strided subsample.
_MAX_STAT_PIXELS = 2**22


@dataclass(frozen=True)
class Normalization:
    """Percentile-based intensity normalisation.

    Parameters
    ----------
    low, high : float
        Percentiles (0–100) mapped to 0 and 1. Values outside are not clipped,
        so bright cells stay brighter than 1.

    Examples
    --------
    >>> norm = Normalization(low=0.0, high=100.0)
    >>> norm.apply(np.array([[10, 20], [30, 50]], dtype=np.uint16))
    array([[0.  , 0.25],
           [0.5 , 1.  ]], dtype=float32)
    """

    low: float = 1.0
    high: float = 99.8
    method: str = "percentile"

    def __post_init__(self) -> None:
        if self.method != "percentile":
            raise ValueError(f"unknown normalisation method {self.method!r}")
        if not 0.0 <= self.low < self.high <= 100.0:
            raise ValueError(
                f"normalisation percentiles must satisfy 0 <= low < high <= 100, "
                f"got low={self.low}, high={self.high}"
            )

    def to_dict(self) -> dict[str, Any]:
        """A plain dict, for model files."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Normalization:
        """Inverse of :meth:`to_dict`; None gives the default."""
        return cls() if d is None else cls(**d)

    def stats(self, plane: Any) -> tuple[float, float]:
        """``(offset, scale)`` of one 2D plane (numpy, dask or zarr; large ones subsampled).

        ``scale`` is ``p_high - p_low``, or 1 where the plane is constant.
        """
        rows, cols = plane.shape[-2:]
        step = max(1, int(np.ceil(np.sqrt(rows * cols / _MAX_STAT_PIXELS))))
        sample = np.asarray(plane[::step, ::step]).astype(np.float64, copy=False)
        finite = np.isfinite(sample)
        if not finite.all():
            raise ValueError(
                "the image contains NaN or infinite values; replace them (for example "
                "with numpy.nan_to_num) before segmenting"
            )
        if sample.size == 0:
            return 0.0, 1.0
        lo, hi = np.percentile(sample, [self.low, self.high])
        scale = float(hi - lo)
        if not scale > 0:
            scale = 1.0
        return float(lo), scale

    def apply(self, plane: Any, stats: tuple[float, float] | None = None) -> np.ndarray:
        """Normalised float32 copy of a plane (the input is never modified)."""
        offset, scale = self.stats(plane) if stats is None else stats
        out = np.asarray(plane, dtype=np.float32) - np.float32(offset)
        out /= np.float32(scale)
        return out
