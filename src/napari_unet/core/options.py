"""The settings of a segmentation (:class:`SegmentOptions`) and its progress records.

One frozen, validated record holds every setting of a segmentation run, so
that :func:`~napari_unet.segment`, the block engine, the batch of files and the
command line share one signature; the entry points still take the settings as
keyword arguments::

    nu.segment(image, model, threshold=0.4, block_shape=1024)
    nu.segment(image, model, SegmentOptions(threshold=0.4, block_shape=1024))
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from .decode import MIN_SHARE

__all__ = ["SegmentOptions", "SegmentProgress"]


class SegmentProgress(NamedTuple):
    """Progress of a segmentation: units done and in all, and the phase.

    A unit is one tile predicted (phase ``"predict"``), one block labelled
    (phase ``"label"``) or one block looked at for merged nuclei to cut, twice
    (phase ``"split"``); in phase ``"merge"`` the cells are joined across block
    borders.
    """

    done: int
    total: int
    phase: str = "predict"


def _count(name: str, value: Any, minimum: int) -> int:
    """A whole number of at least ``minimum`` (numpy integers and integral floats too)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not float(value).is_integer():
        raise ValueError(f"{name} must be a whole number, not {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be {minimum} or more, not {value!r}")
    return int(value)


def split_depth(name: str, value: Any) -> float:
    """0 (no cutting) or a depth in (0, 1) for :mod:`~napari_unet.core.split`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be 0 (off) or a depth between 0 and 1, not {value!r}")
    return float(value)


def _pair(name: str, value: Any) -> tuple[int, int] | None:
    """None, one size for both axes, or (rows, cols); every size at least 1."""
    if value is None:
        return None
    sizes = [value, value] if isinstance(value, numbers.Real) else list(value)
    if len(sizes) != 2:
        raise ValueError(f"{name} must be one or two sizes (rows, cols), not {value!r}")
    rows, cols = (_count(name, s, 1) for s in sizes)
    return rows, cols


@dataclass(frozen=True)
class SegmentOptions:
    """Every setting of a segmentation, checked when it is made.

    Parameters
    ----------
    tile_shape : int or (int, int), optional
        Input tile size of the network (default: automatic, from the memory).
    batch_size : int, optional
        Tiles per forward pass (default: automatic).
    device : str, optional
        ``"auto"`` (or None), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"mps"``.
    axes : str, optional
        Axes of the image, e.g. ``"zyx"`` or ``"yxc"`` (default: inferred).
    threshold : float
        Probability from which a pixel counts as cell (or interior).
    min_size : int
        Cells smaller than this (in pixels) are dropped as noise.
    min_share : float
        Cells smaller than this share of the median cell size (in pixels) of
        their image (or plane) are dropped too, unless they touch the image
        border: debris, specks of noise, the glow around a very bright nucleus
        (:func:`~napari_unet.core.decode.typical_cells`). 0 keeps them.
    grow : int, optional
        Pixels by which cells are grown back over the carved gaps; None means
        the model's training gap plus one (:meth:`grow_for`).
    block_shape : int or (int, int), optional
        Output pixels per block, rounded down to whole tiles (default about
        2048): what is held in memory at once, and the unit of parallel work.
    split : float, optional
        Cut apart cells that hold two or more touching nuclei the network
        merged: how deep a second centre must be, as a share of the cell's
        largest distance to its rim (:mod:`~napari_unet.core.split`); 0
        switches cutting off. None means the model's choice (:meth:`split_for`:
        on for the packaged nuclei model and models trained from it).
    diameter : float, optional
        The typical diameter of the cells, in pixels: the image is rescaled so
        that its cells get the size the model was trained on, and the labels
        come back at the image's size. None (the default) decides from the
        image: when the cells come out smaller than half the model's size (or
        larger than twice it), the image is segmented again, rescaled to that
        bound, and that result is kept if the network is surer of it; 0
        segments the image as it is. Rescaling needs the image and labels in memory; with an ``out``
        array or a cluster the image is segmented as it is
        (:func:`~napari_unet.core.cellsize.iter_segment_sized`).

    Examples
    --------
    >>> SegmentOptions(threshold=0.4, tile_shape=512).tile_shape
    (512, 512)
    >>> SegmentOptions(threshold=1.5)
    Traceback (most recent call last):
    ...
    ValueError: threshold must be a probability between 0 and 1, not 1.5
    """

    tile_shape: tuple[int, int] | None = None
    batch_size: int | None = None
    device: str | None = None
    axes: str | None = None
    threshold: float = 0.5
    min_size: int = 16
    min_share: float = MIN_SHARE
    grow: int | None = None
    block_shape: tuple[int, int] | None = None
    split: float | None = None
    diameter: float | None = None

    def __post_init__(self) -> None:
        put = object.__setattr__  # frozen: the normalised values are set once, here
        put(self, "tile_shape", _pair("tile_shape", self.tile_shape))
        put(self, "block_shape", _pair("block_shape", self.block_shape))
        if self.batch_size is not None:
            put(self, "batch_size", _count("batch_size", self.batch_size, 1))
        if self.grow is not None:
            put(self, "grow", _count("grow", self.grow, 0))
        put(self, "min_size", _count("min_size", self.min_size, 0))
        share = self.min_share
        if isinstance(share, bool) or not isinstance(share, numbers.Real) \
                or not 0.0 <= float(share) < 1.0:
            raise ValueError(f"min_share must be 0 (off) or a share between 0 and 1, "
                             f"not {share!r}")
        put(self, "min_share", float(share))
        threshold = self.threshold
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) \
                or not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be a probability between 0 and 1, not {threshold}")
        put(self, "threshold", float(threshold))
        if self.split is not None:
            put(self, "split", split_depth("split", self.split))
        if self.diameter is not None:
            d = self.diameter
            if isinstance(d, bool) or not isinstance(d, numbers.Real) or not (
                    np.isfinite(d) and d >= 0):
                raise ValueError(f"diameter must be a number of pixels (0: as it is), not {d}")
            put(self, "diameter", float(d))
        if isinstance(self.device, torch.device):
            put(self, "device", str(self.device))
        if self.device is not None:
            if not isinstance(self.device, str) or self.device.lower().split(":")[0] not in (
                    "auto", "cpu", "cuda", "mps"):
                raise ValueError(
                    f"unknown device {self.device!r}: use 'auto', 'cpu', 'cuda' or 'mps'"
                )
        if self.axes is not None and not isinstance(self.axes, str):
            raise ValueError(f"axes must be a string such as 'zyx' or 'yxc', not {self.axes!r}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The settings' names (the keyword arguments the entry points accept)."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def merge(cls, options: SegmentOptions | Mapping[str, Any] | None = None,
              settings: Mapping[str, Any] | None = None, *, caller: str = "segment") -> (
            SegmentOptions):
        """``options`` (default: all defaults) with the keyword ``settings`` put over it.

        Unknown names raise a TypeError that lists the known ones, as a
        function's signature would.
        """
        if options is None:
            options = cls()
        elif isinstance(options, Mapping):
            settings = {**options, **(settings or {})}
            options = cls()
        elif not isinstance(options, cls):
            raise TypeError(
                f"{caller}() options must be a SegmentOptions, not {type(options).__name__}"
            )
        if not settings:
            return options
        unknown = sorted(set(settings) - set(cls.names()))
        if unknown:
            raise TypeError(
                f"{caller}() got an unexpected keyword argument {unknown[0]!r}; the settings "
                f"are {', '.join(cls.names())}"
            )
        return dataclasses.replace(options, **settings)

    def grow_for(self, model: Any) -> int:
        """The growing distance for ``model``: :attr:`grow`, or its training gap plus one."""
        if self.grow is not None:
            return self.grow
        gap = getattr(model, "metadata", {}).get("target", {}).get("gap", 1)
        return int(gap) + 1

    def split_for(self, model: Any) -> float:
        """The depth of the cut for ``model``: :attr:`split`, or the one it records (0: none).

        A model records ``metadata["split"]`` when its cells are round objects that
        touch, such as nuclei: the packaged model does, and models trained from it
        keep it.
        """
        if self.split is not None:
            return self.split
        recorded = (getattr(model, "metadata", None) or {}).get("split", 0.0)
        return split_depth("the model's recorded split", recorded)

    def as_dict(self) -> dict[str, Any]:
        """The settings as keyword arguments."""
        return {name: getattr(self, name) for name in self.names()}

