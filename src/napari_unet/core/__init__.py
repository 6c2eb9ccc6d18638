"""The headless engine of napari-unet: numpy, scipy, scikit-image and torch only.

Nothing here imports Qt or napari, so everything works in scripts, on clusters
and in tests without a display.
"""

from __future__ import annotations

from . import metrics
from ._utils import available_devices, resolve_device, run_to_completion
from .augment import AugmentConfig, augment_pair
from .bioimageio import export_bioimageio
from .blocks import BlockSegmentation, SegmentPlan, iter_segment_blocks, plan_segmentation
from .checkpoints import ModelFileError, packaged_model_path, save_model
from .decode import probabilities_to_labels
from .loading import load_model
from .metrics import MatchResult, match
from .model import InvalidInputShapeError, UNet, cell_class_index, cell_probability
from .normalize import Normalization
from .options import SegmentOptions, SegmentProgress
from .segmentation import iter_segment, segment
from .split import split_cells
from .tiling import (
    BlockGrid,
    ImageLayout,
    TileProgress,
    iter_predict_tiled,
    plan_tiles,
    predict_tiled,
)
from .training import TrainingRun, TrainProgress, TrainResult, iter_train, new_model, train
from .weightmap import WeightMapCache, boundary_weight_map, training_targets
from .zoo import ModelInfo, list_models, user_models_dir

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
    "plan_tiles",
    "segment",
    "iter_segment",
    "SegmentProgress",
    "SegmentOptions",
    "iter_segment_blocks",
    "plan_segmentation",
    "SegmentPlan",
    "BlockSegmentation",
    "BlockGrid",
    "probabilities_to_labels",
    "split_cells",
    "boundary_weight_map",
    "WeightMapCache",
    "training_targets",
    "iter_train",
    "train",
    "new_model",
    "TrainProgress",
    "TrainResult",
    "TrainingRun",
    "metrics",
    "match",
    "MatchResult",
    "AugmentConfig",
    "augment_pair",
    "save_model",
    "load_model",
    "packaged_model_path",
    "ModelFileError",
    "export_bioimageio",
    "list_models",
    "ModelInfo",
    "user_models_dir",
    "available_devices",
    "resolve_device",
    "run_to_completion",
]
