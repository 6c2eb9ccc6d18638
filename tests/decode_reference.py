"""The decoding of napari-unet up to e43b0d5, kept as the reference for the exactness tests
and for ``benchmarks/bench_segment.py``: whole-image ``expand_labels`` (an EDT with the
feature transform) and minimum/maximum filters with a disk footprint.

Not used by the package. Do not change it: the new decoding must give the same labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label as cc_label
from skimage.morphology import disk
from skimage.segmentation import expand_labels


def reference_grow(labels: np.ndarray, region: np.ndarray | None, grow: int) -> np.ndarray:
    """The old ``instances._grow``: two-class when ``region`` is None, else three-class."""
    if grow <= 0 or not labels.any():
        return labels
    if region is not None:
        expanded = expand_labels(labels, distance=grow * np.sqrt(2))
        return np.where(region & (labels == 0), expanded, labels).astype(np.int32)
    expanded = expand_labels(labels, distance=grow)
    footprint = disk(grow)
    highest = ndi.maximum_filter(labels, footprint=footprint)
    sentinel = np.iinfo(np.int32).max
    lowest = ndi.minimum_filter(np.where(labels == 0, sentinel, labels), footprint=footprint)
    gap = (labels == 0) & (lowest != sentinel) & (highest != lowest)
    return np.where(gap, expanded, labels).astype(np.int32)


def reference_probabilities_to_labels(
    probs: np.ndarray, classes: Sequence[str] = ("background", "cell"), *,
    threshold: float = 0.5, min_size: int = 16, grow: int = 2,
) -> np.ndarray:
    """The old ``probabilities_to_labels`` of one plane, ``(n_classes, row, col)``."""
    names = [c.lower() for c in classes]
    region = None
    if "interior" in names:
        seeds = probs[names.index("interior")] >= threshold
        region = seeds | (probs[names.index("boundary")] >= threshold) if "boundary" in names \
            else seeds
    else:
        fg_index = names.index("cell") if "cell" in names else len(names) - 1
        seeds = probs[fg_index] >= threshold
    labels = cc_label(seeds, connectivity=1).astype(np.int32)
    if min_size > 1 and labels.any():
        sizes = np.bincount(labels.ravel())
        keep = sizes >= min_size
        keep[0] = False
        relabel = np.zeros(len(sizes), dtype=np.int32)
        relabel[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        labels = relabel[labels]
    return reference_grow(labels, region, grow)
