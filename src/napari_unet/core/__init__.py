"""The headless engine of napari-unet: numpy, scipy, scikit-image and torch only.

Nothing here imports Qt or napari, so everything works in scripts, on clusters
and in tests without a display.
"""

from __future__ import annotations

from ._utils import available_devices, resolve_device, run_to_completion
from .checkpoints import ModelFileError, load_model, packaged_model_path, save_model
from .instances import iter_segment, probabilities_to_labels, segment
from .model import InvalidInputShapeError, UNet
from .normalize import Normalization
from .tiling import ImageLayout, TileProgress, iter_predict_tiled, plan_tiles, predict_tiled

__all__ = [
    "UNet",
    "InvalidInputShapeError",
    "Normalization",
    "predict_tiled",
    "iter_predict_tiled",
    "TileProgress",
    "ImageLayout",
    "plan_tiles",
    "segment",
    "iter_segment",
    "probabilities_to_labels",
    "save_model",
    "load_model",
    "packaged_model_path",
    "ModelFileError",
    "available_devices",
    "resolve_device",
    "run_to_completion",
]
