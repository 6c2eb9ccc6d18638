"""Sample data for napari's File > Open Sample menu (generated, nothing downloaded)."""

from __future__ import annotations

from typing import Any

__all__ = ["nuclei_sample"]


def nuclei_sample() -> list[tuple[Any, dict[str, Any], str]]:
    """A synthetic fluorescence image of touching nuclei with a few cells labelled.

    The image and labels come from :mod:`napari_unet.core.synthetic`; only about
    a quarter of the cells are labelled, as a biologist would start.
    """
    from .core.synthetic import make_sample, partial_labels

    image, labels = make_sample("nuclei", shape=(512, 512), seed=2015, layout="clustered",
                                touching=0.7, density=0.3)
    few = partial_labels(labels, fraction=0.25, rng=2015)
    return [
        (image, {"name": "nuclei"}, "image"),
        (few, {"name": "nuclei labels", "opacity": 0.6}, "labels"),
    ]
