"""napari-unet: paint, train and segment with the U-Net (Ronneberger et al. 2015) in napari.

The public API works without a viewer::

    import napari_unet as nu
    labels = nu.segment(image, model="my_model.pt")

Everything importable from here lives in :mod:`napari_unet.core`, which never
imports Qt or napari; the napari widgets live in ``napari_unet._widgets``.
"""

from __future__ import annotations

from .core import (
    ImageLayout,
    InvalidInputShapeError,
    ModelFileError,
    Normalization,
    TileProgress,
    UNet,
    available_devices,
    iter_predict_tiled,
    iter_segment,
    load_model,
    predict_tiled,
    probabilities_to_labels,
    save_model,
    segment,
)

__version__ = "0.1.0"

__all__ = [
    "UNet",
    "InvalidInputShapeError",
    "Normalization",
    "predict_tiled",
    "iter_predict_tiled",
    "TileProgress",
    "ImageLayout",
    "segment",
    "iter_segment",
    "probabilities_to_labels",
    "save_model",
    "load_model",
    "ModelFileError",
    "available_devices",
]
