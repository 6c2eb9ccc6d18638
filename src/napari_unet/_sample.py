"""Sample data for napari's File > Open Sample menu (generated, nothing downloaded)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["nuclei_sample", "sample_with_truth", "SAMPLE_REGION"]

#: The rectangle (r0, c0, r1, c1) of the sample in which every cell is labelled.
SAMPLE_REGION = (0, 0, 200, 240)


def sample_with_truth() -> tuple[np.ndarray, np.ndarray]:
    """The sample image and the labels of *all* its nuclei (the sample shows one corner's)."""
    from .core.synthetic import make_sample

    return make_sample("nuclei", shape=(512, 512), seed=2015, layout="clustered",
                       touching=0.7, density=0.3)


def nuclei_sample() -> list[tuple[Any, dict[str, Any], str]]:
    """A synthetic fluorescence image of touching nuclei, labelled in one corner.

    Every cell that reaches into the rectangle :data:`SAMPLE_REGION` is labelled
    (whole), the rest of the image is not, and a Shapes layer holds the rectangle:
    exactly what Train on current labels needs as "annotated regions", so the
    paint → train → segment loop can be tried at once.
    """
    image, labels = sample_with_truth()
    r0, c0, r1, c1 = SAMPLE_REGION
    inside = np.unique(labels[r0:r1, c0:c1])
    inside = inside[inside > 0]
    partial = np.where(np.isin(labels, inside), labels, 0).astype(np.int32)
    rectangle = np.array([[r0, c0], [r0, c1 - 1], [r1 - 1, c1 - 1], [r1 - 1, c0]], float)
    return [
        (image, {"name": "nuclei"}, "image"),
        (partial, {"name": "nuclei labels", "opacity": 0.6}, "labels"),
        ([rectangle], {"name": "annotated region", "shape_type": "rectangle",
                       "face_color": "transparent", "edge_color": "yellow",
                       "edge_width": 2, "metadata": {"napari-unet": "annotated regions"}},
         "shapes"),
    ]
