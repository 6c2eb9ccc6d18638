"""Cell size: how large the cells of some labels are, and segmenting at the model's scale.

A U-Net recognises cells of the sizes it was trained on. A model file records
the median diameter of its training cells (``metadata["cell_diameter"]``, in
pixels); an image whose cells are much larger or smaller is segmented better
after rescaling it so that its cells have that size, as cellpose does with its
"diameter". :func:`iter_segment_scaled` does that and maps the result back to
the image's pixels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from typing import Any

import numpy as np

from .blocks import BlockSegmentation, iter_segment_blocks
from .model import UNet
from .options import SegmentOptions, SegmentProgress
from .tiling import ImageLayout

__all__ = [
    "median_cell_diameter",
    "model_cell_diameter",
    "model_cell_diameter_of",
    "scale_for_cell_size",
    "iter_segment_scaled",
]


def median_cell_diameter(labels: Any) -> float:
    """Median equivalent diameter (``2·sqrt(area/π)``, pixels) of the cells of labels.

    Each plane of a stack is measured on its own (an id in two planes is two
    cells). 0.0 when there is no cell.

    >>> labels = np.zeros((40, 40), int)
    >>> labels[:10, :10] = 1
    >>> labels[20:30, 20:30] = 2
    >>> round(median_cell_diameter(labels), 2)
    11.28
    """
    lab = np.asarray(labels)
    if lab.ndim < 2:
        raise ValueError(f"labels must be 2D or a stack, not of shape {lab.shape}")
    areas = []
    for plane in lab.reshape(-1, *lab.shape[-2:]):
        ids, counts = np.unique(plane[plane > 0], return_counts=True)
        areas.append(counts[ids > 0])
    sizes = np.concatenate(areas) if areas else np.zeros(0)
    if sizes.size == 0:
        return 0.0
    return float(2.0 * np.sqrt(np.median(sizes) / np.pi))


def model_cell_diameter(model: UNet) -> float | None:
    """The median diameter (pixels) of the cells a model was trained on, if it records it."""
    return model_cell_diameter_of(model.metadata)


def model_cell_diameter_of(metadata: Any) -> float | None:
    """:func:`model_cell_diameter` from a model's metadata (e.g. ``ModelInfo.metadata``)."""
    value = (metadata or {}).get("cell_diameter")
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) and value > 0 else None


def scale_for_cell_size(model: UNet, diameter: float | None) -> float:
    """The factor to rescale an image by so that cells of ``diameter`` pixels get the
    model's cell size (1.0 when ``diameter`` is None or 0).

    Raises
    ------
    ValueError
        If the model does not record its cell size, or the factor would be
        outside 1/8..8.
    """
    if not diameter:
        return 1.0
    if not (np.isfinite(diameter) and diameter > 0):
        raise ValueError(f"the cell diameter must be a positive number of pixels, not {diameter}")
    reference = model_cell_diameter(model)
    if reference is None:
        raise ValueError("this model does not record the size of the cells it was trained on, "
                         "so it cannot be rescaled to a cell size")
    factor = reference / float(diameter)
    if not 1 / 8 <= factor <= 8:
        raise ValueError(f"cells of {diameter:g} pixels are more than 8 times smaller or larger "
                         f"than the model's ({reference:.0f} pixels)")
    return factor


def _nearest_indices(n_out: int, n_in: int) -> np.ndarray:
    """For each of ``n_out`` pixels, the nearest of ``n_in`` pixels spanning the same field."""
    idx = np.floor((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.intp)
    return np.clip(idx, 0, n_in - 1)


def _resample_nearest(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``array`` (``(..., row, col)``) sampled to ``shape`` by nearest neighbour."""
    rows = _nearest_indices(shape[0], array.shape[-2])
    cols = _nearest_indices(shape[1], array.shape[-1])
    return array[..., rows[:, None], cols[None, :]]


def iter_segment_scaled(
    image: Any,
    model: UNet,
    factor: float,
    options: SegmentOptions | None = None,
    *,
    probabilities: Any = None,
    **settings: Any,
) -> Generator[SegmentProgress, None, BlockSegmentation]:
    """Segment an image rescaled by ``factor`` and map the result back to its pixels.

    The rows and columns of the image (read into memory) are resampled
    linearly, with anti-aliasing when shrinking; the labels come back by
    nearest neighbour and the probabilities by nearest neighbour too, so both
    have the image's spatial shape. ``options`` (a :class:`SegmentOptions`)
    and keyword ``settings`` (its field names) say how to segment, as for
    :func:`~napari_unet.core.blocks.iter_segment_blocks`; ``min_size`` is in
    the image's pixels. ``probabilities`` is None or True (the result is in
    memory: no ``out``). Yields the engine's progress records and returns its
    :class:`~napari_unet.core.blocks.BlockSegmentation`.
    """
    from skimage.transform import resize

    if "out" in settings:
        raise ValueError("a rescaled segmentation is returned in memory; out= is not supported")
    options = SegmentOptions.merge(options, settings, caller="iter_segment_scaled")
    data = np.asarray(image)
    layout = ImageLayout.infer(data.shape, model.in_channels, options.axes)
    options = dataclasses.replace(options, axes=layout.axes)
    if abs(factor - 1.0) < 1e-6:
        return (yield from iter_segment_blocks(data, model, options,
                                               probabilities=probabilities))
    plane = layout.plane_shape
    scaled = tuple(max(1, int(round(n * factor))) for n in plane)
    shape = list(data.shape)
    shape[layout.axes.index("y")], shape[layout.axes.index("x")] = scaled
    small = resize(data.astype(np.float32, copy=False), tuple(shape), order=1,
                   preserve_range=True, anti_aliasing=factor < 1).astype(np.float32)
    small_options = dataclasses.replace(
        options, min_size=max(1, int(round(options.min_size * factor * factor))))
    result = yield from iter_segment_blocks(small, model, small_options,
                                            probabilities=probabilities)
    labels = _resample_nearest(np.asarray(result.labels), plane)
    probs = result.probabilities
    if probs is not None and not isinstance(probs, bool):
        probs = _resample_nearest(np.asarray(probs), plane)
    # a cell thinner than a pixel may vanish when shrinking back: keep ids 1..n
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if ids.size and (ids[-1] != ids.size):
        lookup = np.zeros(int(ids[-1]) + 1, np.int32)
        lookup[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
        labels = lookup[labels]
    return BlockSegmentation(labels.astype(np.int32, copy=False), probs, int(ids.size))
