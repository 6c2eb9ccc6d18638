"""Training settings, checked once: :class:`TrainConfig`, and the architecture of a new model."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from ..augment import AugmentConfig
from ..model import UNet, default_class_names

__all__ = [
    "TrainConfig",
    "new_model",
    "DEFAULT_MODEL_CONFIG",
    "TARGET_MODES",
    "OPTIMIZERS",
    "LOSSES",
    "DEFAULT_LR",
    "LIVE_FINETUNE_LR",
    "FINETUNE_LR",
    "WARMUP_STEPS",
    "FINAL_LR_FRACTION",
]

OPTIMIZERS = ("adam", "sgd")
LOSSES = ("weighted_ce", "weighted_ce+dice")
#: Output classes of each target mode.
TARGET_MODES = {"binary": 2, "boundary": 3}
DEFAULT_LR = {"adam": 3e-3, "sgd": 1e-2}
#: The rate of live training (no step or time limit, so no decay) from a trained model. At
#: the default rate a few painted cells pulled the pretrained model away from what it knew:
#: the loss jumped when the warm-up ended, and the live prediction of 42 nuclei fell from F1
#: 0.80 to 0.50. Fine-tuned for 60 steps on 8 images, the last model scored 0.67 at 1e-3
#: against 0.47 at 3e-3 (scripts/make_live_screenshots.py; docs/guide.md, live training).
LIVE_FINETUNE_LR = {"adam": 1e-3, "sgd": 3e-3}
#: The rate of a run with a step or time limit from a trained model. At the default rate the
#: loss of the pretrained model rose threefold during the warm-up, and validation kept an early
#: model: fine-tuned for 120 s on a 2-core CPU from the packaged model (segment's cut on), the
#: quickstart's new image scored 0.704 at 3e-3 and 0.769 at 3e-4 (0.763 out of the box), packed
#: clusters 0.775 and 0.839 (0.867 out of the box), nuclei as in training 0.985 and 0.970 (0.868)
#: (PHOTONS=8 bash scripts/quickstart.sh; python scripts/pretrain.py finetune default.pt
#: [--lr 0.0003]).
FINETUNE_LR = {"adam": 3e-4, "sgd": 1e-3}
#: Architecture of a new model (see the package notes for the measurement behind it):
#: depth 4 keeps the paper's 92-pixel context per side (good for cells up to ~60 px).
DEFAULT_MODEL_CONFIG: dict[str, Any] = {
    "depth": 4, "base_channels": 16, "padding": "valid", "norm": None, "dropout": 0.0,
    "upsample": "transposed",
}
#: Linear learning-rate warm-up (steps) and the fraction of the peak rate reached at the end.
WARMUP_STEPS = 50
FINAL_LR_FRACTION = 1.0


def new_model(target_mode: str = "binary", in_channels: int = 1, **config: Any) -> UNet:
    """A freshly initialised U-Net with the default training architecture.

    ``DEFAULT_MODEL_CONFIG`` (depth 4, 16 base channels, valid padding, no
    normalisation) updated with ``config``; 2 classes for ``"binary"`` targets
    (background, cell), 3 for ``"boundary"`` (background, interior, boundary).

    >>> new_model().config["base_channels"], new_model("boundary").classes
    (16, ('background', 'interior', 'boundary'))
    """
    if target_mode not in TARGET_MODES:
        raise ValueError(f"target_mode must be one of {tuple(TARGET_MODES)}, not {target_mode!r}")
    cfg = {**DEFAULT_MODEL_CONFIG, **config}
    model = UNet(in_channels=in_channels, n_classes=TARGET_MODES[target_mode], **cfg)
    model.classes = default_class_names(model.n_classes)
    return model


def _positive_int(name: str, value: Any, optional: bool = True) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive whole number{' or None' * optional}, "
                         f"not {value!r}")
    return int(value)


def _positive_float(name: str, value: Any, what: str) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be {what}, not {value!r}")
    return v


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run, validated once when it is made.

    The fields are the keyword arguments of :func:`~napari_unet.train` (see there
    for their meaning), plus:

    report_interval : float
        Seconds between two progress records of :func:`~napari_unet.iter_train`
        (0: one record per step). However fast the steps are, a viewer gets at
        most about ten records a second; each record carries the mean loss of
        the steps since the previous one.
    max_batch : int
        The largest batch chosen automatically on a GPU (from its free memory).

    ``TrainConfig(**kwargs)`` raises ValueError naming the first bad setting.
    """

    max_steps: int | None = None
    max_time: float | None = None
    patch_shape: tuple[int, int] | None = None
    batch_size: int | None = None
    optimizer: str = "adam"
    lr: float | None = None
    loss: str = "weighted_ce"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    validation: float = 0.1
    validate_every: int | None = None
    device: Any = "auto"
    seed: int | None = None
    checkpoint_dir: str | os.PathLike | None = None
    checkpoint_every: int = 250
    resume: str | os.PathLike | None = None
    final_lr_fraction: float | None = None
    gap: int = 1
    target_mode: str = "binary"
    w0: float = 10.0
    sigma: float = 5.0
    report_interval: float = 0.1
    max_batch: int = 16

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, not {self.optimizer!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, not {self.loss!r}")
        if self.target_mode not in TARGET_MODES:
            raise ValueError(f"target_mode must be one of {tuple(TARGET_MODES)}, not "
                             f"{self.target_mode!r}")
        for name in ("max_steps", "batch_size", "validate_every"):
            set_(self, name, _positive_int(name, getattr(self, name)))
        for name in ("checkpoint_every", "max_batch"):
            set_(self, name, _positive_int(name, getattr(self, name), optional=False))
        set_(self, "max_time", _positive_float("max_time", self.max_time,
                                               "a positive number of seconds"))
        set_(self, "lr", _positive_float("lr", self.lr, "positive"))
        flr = self.final_lr_fraction
        if flr is not None and not 0.0 <= float(flr) <= 1.0:
            raise ValueError(f"final_lr_fraction must be in [0, 1], not {flr!r}")
        if not 0.0 <= float(self.validation) < 1.0:
            raise ValueError(f"validation must be a fraction in [0, 1), not {self.validation!r}")
        set_(self, "validation", float(self.validation))
        if self.gap not in (0, 1, 2) or self.target_mode == "boundary" and self.gap == 0:
            raise ValueError(f"gap must be 0, 1 or 2 pixels (1 or 2 for target_mode="
                             f"'boundary'), not {self.gap!r}")
        set_(self, "gap", int(self.gap))
        if not (math.isfinite(float(self.w0)) and float(self.w0) >= 0) or not (
                math.isfinite(float(self.sigma)) and float(self.sigma) > 0):
            raise ValueError("w0 must be >= 0 and sigma > 0")
        set_(self, "w0", float(self.w0))
        set_(self, "sigma", float(self.sigma))
        aug = self.augment
        if aug is True:
            set_(self, "augment", AugmentConfig())
        elif aug is False or aug is None:
            set_(self, "augment", AugmentConfig.off())
        elif not isinstance(aug, AugmentConfig):
            raise ValueError(f"augment must be True, False or an AugmentConfig, not {aug!r}")
        if self.patch_shape is not None:
            p = self.patch_shape
            p = (p, p) if np.isscalar(p) else tuple(p)  # type: ignore[assignment]
            if len(p) != 2 or any(not isinstance(s, (int, np.integer)) or int(s) < 1 for s in p):
                raise ValueError(f"patch_shape must be one or two positive whole sizes, not "
                                 f"{self.patch_shape!r}")
            set_(self, "patch_shape", (int(p[0]), int(p[1])))
        if not float(self.report_interval) >= 0:
            raise ValueError(f"report_interval must be 0 or more seconds, not "
                             f"{self.report_interval!r}")
        if self.seed is not None:
            set_(self, "seed", int(self.seed))

    # ------------------------------------------------------------- derived
    @property
    def n_classes(self) -> int:
        """Output classes the targets need."""
        return TARGET_MODES[self.target_mode]

    @property
    def peak_lr(self) -> float:
        """The learning rate after the warm-up."""
        return float(self.lr or DEFAULT_LR[self.optimizer])

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some settings changed (validated again)."""
        return replace(self, **changes)

    # ---------------------------------------------------------- checkpoints
    #: Settings a resumed run takes from its checkpoint (they define the run).
    RESUMED = ("seed", "optimizer", "lr", "loss", "gap", "target_mode", "w0", "sigma",
               "validation", "final_lr_fraction")

    def to_dict(self) -> dict[str, Any]:
        """Plain values (for checkpoints): everything but the paths and the device."""
        d = asdict(self)
        d["augment"] = asdict(self.augment)
        for key in ("checkpoint_dir", "resume", "device"):
            d.pop(key)
        d["patch_shape"] = None if self.patch_shape is None else list(self.patch_shape)
        return d

    def resumed(self, saved: Mapping[str, Any]) -> TrainConfig:
        """This config with the run-defining settings of a checkpoint's ``settings``."""
        changes = {k: saved[k] for k in self.RESUMED if k in saved}
        if self.patch_shape is None and saved.get("patch_shape"):
            changes["patch_shape"] = tuple(saved["patch_shape"])
        if self.batch_size is None and saved.get("batch_size"):
            changes["batch_size"] = int(saved["batch_size"])
        aug = saved.get("augment")
        if isinstance(aug, Mapping):
            names = {f.name for f in fields(AugmentConfig)}
            changes["augment"] = AugmentConfig(**{
                k: tuple(v) if isinstance(v, list) else v for k, v in aug.items() if k in names})
        return self.replace(**changes)


def as_patch(value: int | Sequence[int]) -> tuple[int, int]:
    """(rows, cols) from one size or two."""
    p = (value, value) if np.isscalar(value) else tuple(value)  # type: ignore[arg-type]
    return int(p[0]), int(p[1])  # type: ignore[index]
