"""What training will see in painted labels, kept up to date stroke by stroke.

Training does not learn the painted labels as they are: it carves a thin gap of
background between touching cells and weights the loss with the paper's border
term ``w0·exp(-(d1+d2)²/2σ²)``, which is high in those gaps
(:func:`~napari_unet.core.weightmap.training_targets`). :class:`TargetPreview`
holds both for one 2D plane and updates only the neighbourhood of an edit, so a
viewer can show them live while the user paints.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .weightmap import WeightMapCache, carve_gaps

__all__ = ["TargetPreview"]


class TargetPreview:
    """The carved training target of a 2D label plane and its border weights.

    Parameters
    ----------
    labels : array-like of int
        A 2D label plane (copied).
    gap : {0, 1, 2}
        Pixels carved between touching cells, as in training (1 by default).
    w0, sigma : float
        The border term's height and width (pixels), as in training.

    Attributes
    ----------
    target : numpy.ndarray of bool
        The pixels training teaches as "cell" (the labels with the gaps carved).
    border : numpy.ndarray of float32
        The border term on the carved target: highest in the gaps between
        touching cells, 0 inside cells and far from them. The class-balance term
        that training adds is left out: it is flat within each class and would
        drown the ridge.

    Examples
    --------
    Two touching cells: the carved gap between them gets the highest weight.

    >>> labels = np.zeros((20, 30), np.int32)
    >>> labels[5:15, 5:15] = 1
    >>> labels[5:15, 15:25] = 2
    >>> preview = TargetPreview(labels)
    >>> bool(preview.target[10, 15]), float(preview.border[10, 15]) > 5
    (False, True)
    """

    def __init__(self, labels: Any, gap: int = 1, w0: float = 10.0, sigma: float = 5.0) -> None:
        lab = np.array(labels, copy=True)
        if lab.ndim != 2:
            raise ValueError(f"TargetPreview holds one 2D plane, got shape {lab.shape}")
        self.gap = int(gap)
        self.labels = lab
        self._carved = carve_gaps(lab, self.gap)
        self._cache = WeightMapCache(self._carved, w0=w0, sigma=sigma, class_weights=None)

    @property
    def target(self) -> np.ndarray:
        return self._carved > 0

    @property
    def border(self) -> np.ndarray:
        return self._cache.border

    def update(self, labels: Any, box: tuple[slice, slice] | None = None) -> tuple[slice, slice]:
        """Follow an edit of the labels; returns the region where the preview changed.

        ``box`` is the bounding box of the changed pixels (None: anywhere).
        """
        lab = np.asarray(labels)
        if lab.shape != self.labels.shape:
            raise ValueError(f"the labels changed shape ({self.labels.shape} -> {lab.shape}); "
                             "make a new TargetPreview")
        h, w = lab.shape
        if box is None:
            box = (slice(0, h), slice(0, w))
        rs, cs = box
        # carving looks at the 4-neighbours: the carved target changes up to one pixel
        # around the edit, and needs the labels one pixel further out
        inner = (slice(max(rs.start - 1, 0), min(rs.stop + 1, h)),
                 slice(max(cs.start - 1, 0), min(cs.stop + 1, w)))
        outer = (slice(max(inner[0].start - 1, 0), min(inner[0].stop + 1, h)),
                 slice(max(inner[1].start - 1, 0), min(inner[1].stop + 1, w)))
        if not np.can_cast(lab.dtype, self.labels.dtype):
            self.labels = self.labels.astype(np.promote_types(lab.dtype, self.labels.dtype))
            self._carved = self._carved.astype(self.labels.dtype)
        self.labels[box] = lab[box]
        carved = carve_gaps(self.labels[outer], self.gap)
        crop = tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer))
        self._carved[inner] = carved[crop]
        changed = self._cache.update(self._carved, inner)
        return (slice(min(changed[0].start, inner[0].start), max(changed[0].stop, inner[0].stop)),
                slice(min(changed[1].start, inner[1].start), max(changed[1].stop, inner[1].stop)))
