"""napari-unet: paint, train and segment with the U-Net (Ronneberger et al. 2015) in napari.

The public API works without a viewer::

    import napari_unet as nu
    model = nu.train(image, labels, max_time=120).model
    labels = nu.segment(other_image, model)

Everything importable from here lives in :mod:`napari_unet.core`, which never
imports Qt or napari; the napari widgets live in ``napari_unet._widgets``.
"""

from __future__ import annotations

from .core import (
    ImageLayout,
    InvalidInputShapeError,
    ModelFileError,
    ModelInfo,
    Normalization,
    SegmentOptions,
    SegmentProgress,
    TileProgress,
    TrainingRun,
    TrainProgress,
    TrainResult,
    UNet,
    WeightMapCache,
    available_devices,
    boundary_weight_map,
    cell_class_index,
    cell_probability,
    export_bioimageio,
    iter_predict_tiled,
    iter_segment,
    iter_train,
    list_models,
    load_model,
    metrics,
    predict_tiled,
    probabilities_to_labels,
    save_model,
    segment,
    split_cells,
    train,
    training_targets,
    user_models_dir,
)

__version__ = "0.1.0"

__all__ = [
    "UNet",
    "InvalidInputShapeError",
    "cell_class_index",
    "cell_probability",
    "Normalization",
    "predict_tiled",
    "iter_predict_tiled",
    "TileProgress",
    "ImageLayout",
    "segment",
    "iter_segment",
    "SegmentProgress",
    "SegmentOptions",
    "probabilities_to_labels",
    "split_cells",
    "boundary_weight_map",
    "WeightMapCache",
    "training_targets",
    "train",
    "iter_train",
    "TrainProgress",
    "TrainResult",
    "TrainingRun",
    "metrics",
    "save_model",
    "load_model",
    "ModelFileError",
    "export_bioimageio",
    "list_models",
    "ModelInfo",
    "user_models_dir",
    "available_devices",
]
