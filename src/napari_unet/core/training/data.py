"""Training data: checking the input, normalised planes, and their targets computed once.

Every annotated plane becomes a :class:`Plane`: the normalised image, the
instance labels (renumbered 1..n; 0 outside the annotated area), the
annotated area, and the *border term* of the paper's weight map computed once
on the whole plane from the targets' cells (the carved labels). Batches warp
these with each patch's transform (:mod:`.batches`), so no distance transform
runs during training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..labels import check_labels
from ..normalize import Normalization
from ..tiling import ImageLayout
from ..weightmap import border_term, class_weight_table, cutoff_distance, target_classes
from .config import TrainConfig

__all__ = ["Plane", "TrainingData", "as_list", "region_mask", "check_data", "prepare_planes",
           "plane_targets", "update_plane_targets", "class_weights", "plane_ids",
           "annotated_area", "MAX_ID"]


def as_list(value: Any, name: str) -> tuple[list[Any], bool]:
    """(items, was_single) for a single array or a list/tuple of arrays."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{name} is an empty list: give at least one image")
        return list(value), False
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return [value], True
    raise ValueError(
        f"{name} must be an array or a list of arrays (numpy, dask or zarr), not "
        f"{type(value).__name__}"
    )


def region_mask(region: Any, shape: tuple[int, ...], i: int) -> np.ndarray | None:
    """A bool mask of ``shape`` (the labels' shape) from a mask or a list of rectangles."""
    if region is None:
        return None
    if hasattr(region, "dtype") and np.dtype(region.dtype) == bool:
        mask = np.asarray(region)
        if mask.shape != shape:
            raise ValueError(
                f"region mask {i} has shape {mask.shape} but labels {i} have shape {shape}; "
                "a region mask marks the annotated pixels of its label image"
            )
        return mask
    try:
        rects = np.asarray(region, dtype=np.float64)
    except (TypeError, ValueError):
        rects = None
    stack = len(shape) == 3
    want = 5 if stack else 4
    if rects is not None and rects.ndim == 1 and rects.size == want:
        rects = rects[None]
    if rects is None or rects.ndim != 2 or rects.shape[1] != want:
        form = "(plane, r0, c0, r1, c1)" if stack else "(r0, c0, r1, c1)"
        raise ValueError(
            f"regions for image {i} must be a bool mask of shape {shape} or a list of "
            f"rectangles {form}, got {np.shape(region)}"
        )
    mask = np.zeros(shape, dtype=bool)
    for k, rect in enumerate(rects):
        if not np.isfinite(rect).all():
            raise ValueError(f"rectangle {k} of image {i} is not finite: {rect.tolist()}")
        plane: tuple[int, ...] = ()
        if stack:
            z = int(round(rect[0]))
            if not 0 <= z < shape[0]:
                raise ValueError(f"rectangle {k} of image {i} names plane {z}, but the image "
                                 f"has {shape[0]} planes")
            plane, rect = (z,), rect[1:]
        r0, c0, r1, c1 = (int(round(v)) for v in rect)
        r0, r1 = sorted((r0, r1))
        c0, c1 = sorted((c0, c1))
        r0, c0 = max(r0, 0), max(c0, 0)
        r1, c1 = min(r1, shape[-2]), min(c1, shape[-1])
        if r1 <= r0 or c1 <= c0:
            raise ValueError(
                f"rectangle {k} of image {i} ({rects[k].tolist()}) is empty or lies outside the "
                f"image of {shape[-2]}x{shape[-1]} pixels"
            )
        mask[(*plane, slice(r0, r1), slice(c0, c1))] = True
    return mask


@dataclass
class TrainingData:
    """The checked input of a run: images, labels, region masks and layouts, per image."""

    images: list[Any]
    labels: list[np.ndarray]
    regions: list[np.ndarray | None]
    layouts: list[ImageLayout]


def check_data(images: Any, labels: Any, regions: Any, in_channels: int) -> TrainingData:
    """Check images, labels and regions against each other; one-line ValueErrors."""
    imgs, single = as_list(images, "images")
    labs, _ = as_list(labels, "labels")
    if len(imgs) != len(labs):
        raise ValueError(f"{len(imgs)} image(s) but {len(labs)} label image(s): give one "
                         "label image per image")
    if regions is None:
        regions = [None] * len(imgs)
    elif single:
        regions = [regions]
    elif not isinstance(regions, (list, tuple)) or len(regions) != len(imgs):
        raise ValueError(f"regions must be a list with one entry (mask, rectangles or "
                         f"None) per image: {len(imgs)} entries")
    data = TrainingData([], [], [], [])
    for i, (img, lab) in enumerate(zip(imgs, labs)):
        if not (hasattr(img, "shape") and hasattr(img, "dtype")):
            raise ValueError(f"image {i} must be an array, not {type(img).__name__}")
        if not (np.issubdtype(np.dtype(img.dtype), np.number) or img.dtype == bool):
            raise ValueError(f"image {i} must be numeric, not of dtype {img.dtype}")
        try:
            layout = ImageLayout.infer(img.shape, in_channels)
        except ValueError as err:
            raise ValueError(f"image {i}: {err}") from None
        lab = check_labels(lab, f"labels {i}")
        if lab.shape != layout.spatial_shape:
            raise ValueError(
                f"image {i} has shape {tuple(img.shape)} (read as axes "
                f"{layout.axes!r}, {'planes x ' if 'z' in layout.axes else ''}rows x "
                f"columns {layout.spatial_shape}) but labels {i} have shape {lab.shape}; "
                "each label image must have one id per pixel of its image"
            )
        data.images.append(img)
        data.labels.append(lab)
        data.regions.append(region_mask(regions[i], lab.shape, i))
        data.layouts.append(layout)
    return data


@dataclass
class Plane:
    """One annotated plane, ready for training.

    Attributes
    ----------
    image : numpy.ndarray
        ``(C, H, W)`` float32, normalised.
    labels : numpy.ndarray
        ``(H, W)`` int32 cell ids 1..n (consecutive), 0 for background and outside
        the annotated area.
    annotated : numpy.ndarray
        ``(H, W)`` bool: where the labels are complete.
    name : str
        "image 0" or "image 0, plane 3", for messages.
    source : (int, int)
        Image index and plane index it came from.
    """

    image: np.ndarray
    labels: np.ndarray
    annotated: np.ndarray
    name: str
    source: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int]:
        return self.labels.shape  # type: ignore[return-value]


#: Cell ids up to this are kept as they are; larger ones are renumbered 1..n per plane.
MAX_ID = 2**20


def plane_ids(labels: np.ndarray) -> np.ndarray:
    """The plane's cell ids as int32: kept when they are small (so that later edits of the
    same labels keep their ids), else renumbered 1..n (0 stays 0)."""
    if labels.size == 0 or int(labels.max()) <= MAX_ID:
        return labels.astype(np.int32, copy=False)
    ids, inverse = np.unique(labels, return_inverse=True)
    return (inverse.reshape(labels.shape) + (0 if ids[0] == 0 else 1)).astype(np.int32)


def annotated_area(labels: np.ndarray, region: np.ndarray | None) -> np.ndarray | None:
    """Where one plane's labels are complete: its region, else the whole plane when it has
    labels, else None (nothing to train on in this plane)."""
    if region is not None and region.any():
        return np.array(region, dtype=bool)
    if labels.any():
        return np.ones(labels.shape, dtype=bool)
    return None


def prepare_planes(data: TrainingData, normalization: Normalization,
                   in_channels: int) -> list[Plane]:
    """Normalise the annotated planes; planes with no labels and no region are skipped."""
    planes: list[Plane] = []
    for i, (img, lab, region, layout) in enumerate(
        zip(data.images, data.labels, data.regions, data.layouts)
    ):
        stack = lab.ndim == 3
        for z in range(layout.n_planes):
            lab2 = lab[z] if stack else lab
            reg2 = None if region is None else (region[z] if stack else region)
            annotated = annotated_area(lab2, reg2)
            if annotated is None:
                continue
            name = f"image {i}" + (f", plane {z}" if stack else "")
            sample = layout.read(img, z, *layout.sample_slices(), in_channels)
            try:
                stats = [normalization.stats(ch) for ch in sample]
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
            full = layout.read(img, z, slice(None), slice(None), in_channels)
            image = np.stack([normalization.apply(ch, s) for ch, s in zip(full, stats)])
            if not np.isfinite(image).all():
                raise ValueError(
                    f"{name} contains NaN or infinite values; replace them (for example "
                    "with numpy.nan_to_num) before training"
                )
            labels = plane_ids(np.where(annotated, lab2, 0))
            planes.append(Plane(image.astype(np.float32, copy=False), labels, annotated, name,
                                (i, z)))
    return planes


def plane_targets(labels: np.ndarray, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """A plane's target classes and the border term ``w0·exp(-(d1+d2)²/2σ²)``, once.

    The border term is computed on the cells of the targets (carved in binary
    mode), as in :func:`~napari_unet.core.weightmap.training_targets`, and given
    inside the cells too (``d1 = 0`` there): batches warp it bilinearly and apply
    it to the separating pixels only (background, and the boundary class of
    three-class targets: :func:`~napari_unet.core.weightmap.border_classes`), so
    a one-pixel gap keeps its full weight instead of being averaged with the
    cells beside it.
    """
    classes, cells = target_classes(labels, gap=config.gap, mode=config.target_mode)
    return classes, border_term(cells, config.w0, config.sigma, inside_cells=True)


def update_plane_targets(labels: np.ndarray, classes: np.ndarray, border: np.ndarray,
                         box: tuple[slice, slice], config: TrainConfig) -> tuple[slice, slice]:
    """Bring a plane's targets up to date after its labels changed inside ``box``.

    Only the neighbourhood of the edit is recomputed: the pixels whose class or
    border term can change (``box`` grown by the border term's reach and the
    gap), from the labels around them (grown once more). ``classes`` and
    ``border`` are changed in place and equal :func:`plane_targets` of the new
    labels. Returns the region that was rewritten.
    """
    h, w = labels.shape
    grow = int(math.ceil(cutoff_distance(config.sigma))) + 2 + config.gap
    inner = [(max(s.start - grow, 0), min(s.stop + grow, n)) for s, n in zip(box, (h, w))]
    outer = [(max(a - grow, 0), min(b + grow, n)) for (a, b), n in zip(inner, (h, w))]
    window = (slice(*outer[0]), slice(*outer[1]))
    cls, border_w = plane_targets(labels[window], config)
    cut = tuple(slice(a - o[0], b - o[0]) for (a, b), o in zip(inner, outer))
    region = (slice(*inner[0]), slice(*inner[1]))
    classes[region] = cls[cut]
    border[region] = border_w[cut]
    return region


def class_weights(classes: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                  n_classes: int) -> tuple[float, ...]:
    """Class weights ``w_c`` that balance the class frequencies of all the training pixels.

    Counted once over all the planes' training pixels (``masks``), not per patch,
    and limited to 10:1.
    """
    counts = np.zeros(n_classes, dtype=np.float64)
    for cls, mask in zip(classes, masks):
        counts += np.bincount(cls[mask].ravel(), minlength=n_classes)[:n_classes]
    table = class_weight_table(counts, "balanced").astype(np.float64)
    table = np.minimum(table, 10 * table.min())
    return tuple(float(w) for w in table)
