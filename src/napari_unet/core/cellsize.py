"""Cell size: how large the cells of some labels are, and segmenting at the model's scale.

A U-Net recognises cells of the sizes it was trained on. A model file records
the median diameter of its training cells (``metadata["cell_diameter"]``, in
pixels); an image whose cells are much larger or smaller is segmented better
after rescaling it so that its cells have that size, as cellpose does with its
"diameter". :func:`iter_segment_scaled` does that and maps the result back to
the image's pixels; :func:`iter_segment_sized` decides the factor from a
segmentation's ``diameter`` setting, or from the image itself
(:func:`auto_scale`): cells much smaller than the model's are enlarged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from typing import Any

import numpy as np

from .blocks import BlockSegmentation, iter_segment_blocks
from .model import UNet, cell_probability
from .options import SegmentOptions, SegmentProgress
from .tiling import ImageLayout

__all__ = [
    "median_cell_diameter",
    "model_cell_diameter",
    "model_cell_diameter_of",
    "scale_for_cell_size",
    "iter_segment_scaled",
    "auto_scale",
    "iter_segment_sized",
    "describe_scale",
    "unsure_share",
    "AUTO_MAX_PIXELS",
    "SMALL_CELLS",
    "LARGE_CELLS",
    "MAX_ENLARGE",
]

#: Cells whose median diameter comes out below this share of the model's are
#: segmented again, enlarged to this share of the model's diameter (measured on
#: nuclei of radius 3-4 px with the packaged model's GPU stage, whose training
#: cells have a median diameter of 20.5 px: F1 0.74 as they are, 0.86 enlarged
#: ×1.5-2, 0.81 ×3, 0.76 ×3.5; see docs/models.md).
SMALL_CELLS = 0.5

#: Cells whose median diameter comes out above this many times the model's are
#: tried shrunk to that size (the same comparison decides which pass is kept).
LARGE_CELLS = 2.0

#: The largest factor :func:`auto_scale` enlarges (or shrinks) by.
MAX_ENLARGE = 3.0

#: Images of more pixels than this (4096²) are not tried enlarged: both passes'
#: probabilities are held in memory to compare them.
AUTO_MAX_PIXELS = 4096 * 4096

#: Cell probabilities between these two are "unsure" (:func:`unsure_share`).
UNSURE = (0.2, 0.8)


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
        top = int(plane.max(initial=0))
        if 0 < top <= plane.size and plane.min() >= 0:  # ids 1..n, as segmentations number
            counts = np.bincount(plane.ravel(), minlength=top + 1)[1:]
            areas.append(counts[counts > 0])
        else:
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
    return BlockSegmentation(labels.astype(np.int32, copy=False), probs, int(ids.size),
                             float(factor))


def auto_scale(labels: Any, model: UNet) -> float:
    """The factor to rescale an image by whose segmentation at its own size is ``labels``.

    1.0, unless the cells' median diameter (:func:`median_cell_diameter`) lies
    outside :data:`SMALL_CELLS` .. :data:`LARGE_CELLS` times the model's
    (:func:`model_cell_diameter`): then the factor that brings it to the
    nearer bound, at most :data:`MAX_ENLARGE` either way. 1.0 also when the
    model does not record its cell size or there are no cells.

    >>> net = UNet(depth=2, base_channels=4)
    >>> net.metadata["cell_diameter"] = 20.0
    >>> labels = np.zeros((200, 200), np.int32)
    >>> labels[10:15, 10:15], labels[30:35, 30:35] = 1, 2
    >>> round(auto_scale(labels, net), 2)  # 5.6 px cells, enlarged to 10 px
    1.77
    >>> labels[:, :] = 0; labels[10:30, 10:30] = 1
    >>> auto_scale(labels, net)  # 22.6 px: as they are
    1.0
    >>> labels[:, :] = 0; labels[:80, :80] = 1
    >>> round(auto_scale(labels, net), 2)  # 90 px cells, shrunk to 40 px
    0.44
    """
    reference = model_cell_diameter(model)
    if reference is None:
        return 1.0
    found = median_cell_diameter(labels)
    low, high = SMALL_CELLS * reference, LARGE_CELLS * reference
    if found <= 0 or low <= found <= high:
        return 1.0
    factor = (low if found < low else high) / found
    return float(np.clip(factor, 1 / MAX_ENLARGE, MAX_ENLARGE))


def iter_segment_sized(
    image: Any,
    model: UNet,
    options: SegmentOptions | None = None,
    *,
    probabilities: Any = None,
    out: Any = None,
    client: Any = None,
    plan: Any = None,
    **settings: Any,
) -> Generator[SegmentProgress, None, BlockSegmentation]:
    """Segment an image at the scale its ``diameter`` setting asks for.

    ``options.diameter`` (a :class:`SegmentOptions` field) decides:

    - a number of pixels: the image is rescaled by :func:`scale_for_cell_size`;
    - 0: the image is segmented as it is;
    - None (the default): it is segmented as it is, and when its cells come
      out far smaller or larger than the model's, once more rescaled by
      :func:`auto_scale`; the rescaled result is kept when the network is
      surer of it, that is when fewer pixels have an unsure cell probability
      (:func:`unsure_share`). Enlarging helps small nuclei but hurts noisy
      images, whose noise it turns into blobs; the network's certainty tells
      the two apart (``python scripts/pretrain.py sizes``: with the packaged
      model, the kept pass was the better or as good for 67 of 81 held-out
      images tried, and no condition lost; see docs/models.md). Only an image
      in memory (a numpy array of at most :data:`AUTO_MAX_PIXELS`) is tried
      rescaled; a dask or zarr image is segmented as it is.

    With ``out``, ``client`` or a ``probabilities`` array to write into (as for
    :func:`~napari_unet.core.blocks.iter_segment_blocks`, which also takes
    ``plan``), the image is segmented block by block as it is, and a
    ``diameter`` is refused (ValueError).

    The result's ``scale`` is the factor used. Yields the engine's progress
    records (a second pass starts them again, in phase ``"rescale"``) and returns a
    :class:`~napari_unet.core.blocks.BlockSegmentation` in the image's pixels.
    """
    options = SegmentOptions.merge(options, settings, caller="iter_segment_sized")
    if out is not None or client is not None or probabilities not in (None, True):
        # written block by block, or on a cluster: the image as it is
        if options.diameter:
            raise ValueError("a cell diameter rescales the image in memory, so it cannot be "
                             "used when the labels or probabilities are written block by block "
                             "(out=, a .zarr output) or on a cluster: leave the diameter unset")
        return (yield from iter_segment_blocks(image, model, options, out=out,
                                               probabilities=probabilities, client=client,
                                               plan=plan))
    if options.diameter:
        factor = scale_for_cell_size(model, options.diameter)
        return (yield from iter_segment_scaled(image, model, factor, options,
                                               probabilities=probabilities))
    if options.diameter == 0 or not isinstance(image, np.ndarray) \
            or image.size > AUTO_MAX_PIXELS or model_cell_diameter(model) is None:
        return (yield from iter_segment_blocks(image, model, options,
                                               probabilities=probabilities))
    first = yield from iter_segment_blocks(image, model, options, probabilities=True)
    factor = auto_scale(first.labels, model)
    if factor != 1.0:
        second = yield from _as_phase(
            iter_segment_scaled(image, model, factor, options, probabilities=True), "rescale")
        if unsure_share(second.probabilities, model) < unsure_share(first.probabilities,
                                                                    model):
            first = second
    return first if probabilities else first._replace(probabilities=None)


def _as_phase(gen: Generator[SegmentProgress, None, Any], phase: str
              ) -> Generator[SegmentProgress, None, Any]:
    """``gen``'s progress records, all of them in ``phase``; returns its result."""
    while True:
        try:
            record = next(gen)
        except StopIteration as stop:
            return stop.value
        yield record._replace(phase=phase)


def unsure_share(probabilities: Any, model: UNet) -> float:
    """The share of pixels whose cell probability lies between the :data:`UNSURE` bounds.

    ``probabilities`` are a segmentation's ``(n_classes, ...)`` class probabilities.
    """
    cell = cell_probability(np.asarray(probabilities), model.classes)
    low, high = UNSURE
    return float(np.mean((cell > low) & (cell < high))) if cell.size else 0.0


def describe_scale(factor: float, diameter: float | None = None) -> str:
    """How a segmentation was rescaled, in a few words ("" when it was not).

    >>> describe_scale(1.74)
    'enlarged ×1.74: the cells are small for this model'
    >>> describe_scale(0.44)
    'shrunk ×0.44: the cells are large for this model'
    >>> describe_scale(0.5, 40.0)
    'rescaled ×0.50 for the cell diameter'
    """
    if factor == 1.0:
        return ""
    if diameter:
        return f"rescaled ×{factor:.2f} for the cell diameter"
    if factor < 1.0:
        return f"shrunk ×{factor:.2f}: the cells are large for this model"
    return f"enlarged ×{factor:.2f}: the cells are small for this model"
