"""The training engine: fine-tune (or train) a U-Net on painted instance labels.

Each step draws a batch of patches centred on random annotated pixels, reads
each with the context the valid network needs (mirrored at image borders),
augments image, labels and annotation mask with one random transform on the
training device (:mod:`napari_unet.core.augment`), computes the targets and the
boundary weight map of the paper from the *warped* labels on the CPU
(:func:`~napari_unet.core.weightmap.training_targets`), and takes one optimiser
step on the pixel-wise softmax cross-entropy weighted by that map (optionally
plus a Dice term). Pixels outside the annotated area have weight 0 and the
ignore class, so they never contribute. Every few steps the model is evaluated
on held-out annotation (whole planes, or a strip of each plane) by seamless
tiled prediction and instance matching; the model with the best validation F1
(ties: the lower validation loss) is the result.

Cancelling
----------
:func:`iter_train` returns a :class:`TrainingRun`, a generator of
:class:`TrainProgress` records whose return value is a :class:`TrainResult`.
Closing it (``run.close()``, or dropping it) stops training at once (the
generator is suspended between two steps, so at most the step under way
finishes) and still produces the result: ``run.result`` holds the best model
so far with ``stopped_reason="cancelled"``, and with a ``checkpoint_dir`` the
best model (``best.pt``) and a resumable checkpoint (``last.ckpt``) are written
there as well::

    run = iter_train(images, labels, max_time=600, checkpoint_dir="ckpt")
    for progress in run:
        if user_pressed_stop:
            run.close()
            break
    model = run.result.model        # best so far, also in ckpt/best.pt

``iter_train(..., resume="ckpt")`` continues such a run (weights, optimiser
state, step count, elapsed time and random state).

Defaults, and the measurement behind them
-----------------------------------------
Learning curves (``benchmarks/bench_training.py``: from scratch on six 256×256
synthetic images of touching nuclei, 240 s on 2 CPU threads, instance F1 at
IoU 0.5 on four held-out images) gave: Adam 3e-3 0.64 / 0.61 (two seeds),
Adam 1e-3 0.56 / 0.55, Adam 1e-2 0.41, SGD momentum 0.99 at 1e-2 0.43;
16 base channels 0.64 against 0.53 for 32 (a third of the steps in the same
time); a cosine decay of the learning rate did not help (0.68 with a constant
rate). In an earlier run at Adam 1e-3, 128×128 target patches in batches of 4
beat 256×256 in batches of 2 (0.54 against 0.40) and dropout 0.5 did not help
(0.49). Hence: a new model is a valid depth-4 U-Net with 16 base channels and
no dropout, trained with Adam at 3e-3 after a 50-step linear warm-up (kept as
a safeguard when fine-tuning), at a constant rate.
"""

from __future__ import annotations

import copy
import datetime
import math
import os
import time
from collections.abc import Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._utils import resolve_device, run_to_completion
from .augment import AugmentConfig, augment_intensity, sample_geometry, sampling_grid, warp
from .checkpoints import atomic_torch_save, load_model, packaged_model_path, save_model
from .decode import probabilities_to_labels
from .metrics import MatchResult, match
from .model import UNet, copy_model, default_class_names, model_from_dict
from .normalize import Normalization
from .tiling import ImageLayout, iter_predict_tiled, reflect_index
from .weightmap import IGNORE_INDEX, class_weight_table, training_targets

__all__ = [
    "TrainProgress",
    "TrainResult",
    "TrainingRun",
    "iter_train",
    "train",
    "new_model",
    "training_loss",
    "DEFAULT_MODEL_CONFIG",
    "CHECKPOINT_NAME",
    "BEST_MODEL_NAME",
]

OPTIMIZERS = ("adam", "sgd")
LOSSES = ("weighted_ce", "weighted_ce+dice")
TARGET_MODES = {"binary": 2, "boundary": 3}
DEFAULT_LR = {"adam": 3e-3, "sgd": 1e-2}
#: Architecture of a new model (see the module notes for the measurement behind it):
#: depth 4 keeps the paper's 92-pixel context per side (good for cells up to ~60 px).
DEFAULT_MODEL_CONFIG: dict[str, Any] = {
    "depth": 4, "base_channels": 16, "padding": "valid", "norm": None, "dropout": 0.0,
    "upsample": "transposed",
}
#: Linear learning-rate warm-up (steps) and the fraction of the peak rate reached at the end.
WARMUP_STEPS = 50
FINAL_LR_FRACTION = 1.0
CHECKPOINT_NAME = "last.ckpt"
BEST_MODEL_NAME = "best.pt"
_CHECKPOINT_FORMAT = "napari-unet-training-checkpoint"
# patch (target pixels per side) and batch size on CPU and Apple MPS
_CPU_PATCH, _CPU_BATCH = 128, 4
_MPS_PATCH, _MPS_BATCH = 192, 4
_CUDA_PATCH, _CUDA_MAX_BATCH = 256, 8
_MAX_VAL_PIXELS = 2**22
_VAL_MIN_SIZE = 16


# ======================================================================= records
@dataclass(frozen=True)
class TrainProgress:
    """One progress record of :func:`iter_train` (small; safe to send between threads).

    Attributes
    ----------
    step : int
        Optimiser steps done (in the whole run, resumed runs included).
    total : int or None
        ``max_steps`` if given, else None.
    elapsed : float
        Seconds of training so far (resumed runs included).
    eta : float or None
        Estimated seconds left (None when the run has no step or time limit).
    loss : float or None
        Training loss of this step.
    val_loss, val_f1 : float or None
        Validation loss and instance F1 (IoU 0.5), when measured at this step.
    best_val_f1 : float or None
        Best validation F1 so far.
    lr : float or None
        Learning rate of this step.
    batch_size : int
    patch_shape : (int, int)
        Target (output) pixels of a training patch.
    phase : str
        ``"prepare"``, ``"train"`` or ``"validate"`` (validation records repeat the
        step and say in ``message`` how far the validation is).
    message : str or None
        Notices, for example that the batch was halved after running out of memory.
    """

    step: int
    total: int | None
    elapsed: float
    eta: float | None = None
    loss: float | None = None
    val_loss: float | None = None
    val_f1: float | None = None
    best_val_f1: float | None = None
    lr: float | None = None
    batch_size: int = 0
    patch_shape: tuple[int, int] = (0, 0)
    phase: str = "train"
    message: str | None = None

    @property
    def fraction(self) -> float | None:
        """Fraction of the run done (0..1), or None for a run without limits."""
        if self.eta is None:
            return None
        return min(1.0, self.elapsed / max(self.elapsed + self.eta, 1e-9))


@dataclass
class TrainResult:
    """What :func:`train` returns (and ``TrainingRun.result`` holds after a run).

    Attributes
    ----------
    model : UNet
        The model with the best validation F1 (ties: lower validation loss), or
        the final model when there was no validation; on the CPU, in evaluation
        mode, with ``metadata["target"]`` and ``metadata["training"]`` set.
    history : list of TrainProgress
        One record per step (``phase == "train"``).
    path : pathlib.Path or None
        Where the best model was saved (``checkpoint_dir/best.pt``), if anywhere.
    stopped_reason : str
        ``"max_steps"``, ``"max_time"``, ``"cancelled"``, or why training stopped
        early (a non-finite loss, running out of memory).
    best_step : int or None
        The step of the returned model.
    best_val_f1 : float or None
    steps : int
    seconds : float
    """

    model: UNet
    history: list[TrainProgress]
    path: Path | None
    stopped_reason: str
    best_step: int | None = None
    best_val_f1: float | None = None
    steps: int = 0
    seconds: float = 0.0


# ================================================================= the model
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


# ================================================================== the loss
def training_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    kind: str = "weighted_ce",
) -> torch.Tensor:
    """Weighted pixel-wise softmax cross-entropy (plus a foreground Dice term).

    Parameters
    ----------
    logits : torch.Tensor
        ``(batch, n_classes, row, col)`` network output.
    target : torch.Tensor
        ``(batch, row, col)`` class indices, ``IGNORE_INDEX`` (255) where not annotated.
    weight : torch.Tensor
        ``(batch, row, col)`` per-pixel weights (0 where not annotated).
    kind : {"weighted_ce", "weighted_ce+dice"}
        ``"weighted_ce"`` is ``sum(w * CE) / sum(w)`` over the batch; the Dice
        variant adds ``1 - Dice`` of the soft foreground (all classes but
        background) over the annotated pixels.

    Returns
    -------
    torch.Tensor
        A scalar; 0 (with a gradient) when no pixel is annotated.

    Examples
    --------
    >>> logits = torch.zeros(1, 2, 2, 2)
    >>> target = torch.tensor([[[0, 1], [255, 1]]])
    >>> weight = torch.tensor([[[1.0, 1.0], [0.0, 2.0]]])
    >>> round(float(training_loss(logits, target, weight)), 4)  # ln 2
    0.6931
    """
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, not {kind!r}")
    logits = logits.float()
    target = target.long()
    annotated = target != IGNORE_INDEX
    w = weight.float() * annotated
    ce = F.cross_entropy(logits, target, reduction="none", ignore_index=IGNORE_INDEX)
    wsum = w.sum()
    loss = (ce * w).sum() / wsum.clamp_min(1e-8)
    if kind == "weighted_ce+dice":
        fg = 1.0 - torch.softmax(logits, dim=1)[:, 0]
        m = annotated.float()
        t = ((target >= 1) & annotated).float()
        inter = (fg * t).sum()
        denom = (fg * m).sum() + t.sum()
        loss = loss + 1.0 - (2.0 * inter + 1.0) / (denom + 1.0)
    return loss


# ============================================================ input checking
def _as_list(value: Any, name: str) -> tuple[list[Any], bool]:
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


def _check_labels(lab: Any, i: int) -> np.ndarray:
    if not (hasattr(lab, "shape") and hasattr(lab, "dtype")) and not isinstance(lab, np.ndarray):
        raise ValueError(f"labels {i} must be an array, not {type(lab).__name__}")
    a = np.asarray(lab)
    if a.dtype == bool:
        from skimage.measure import label as cc_label

        return cc_label(a, connectivity=1).astype(np.int32) if a.ndim == 2 else np.stack(
            [cc_label(p, connectivity=1) for p in a]).astype(np.int32)
    if not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"labels {i} must be integer instance ids, not of dtype {a.dtype}")
    if not np.issubdtype(a.dtype, np.integer):
        if not np.isfinite(a).all() or not np.array_equal(a, np.round(a)):
            raise ValueError(
                f"labels {i} hold non-integer values; labels are whole-number cell ids "
                "(0 = background), for example a napari Labels layer"
            )
    if a.size and a.min() < 0:
        raise ValueError(f"labels {i} hold negative ids; use 0 for background and 1, 2, ... "
                         "for cells")
    if a.size and a.max() > np.iinfo(np.int32).max:
        raise ValueError(f"labels {i} hold ids above 2**31; relabel them (skimage relabel)")
    return a.astype(np.int32, copy=False)


def _region_mask(region: Any, shape: tuple[int, ...], i: int) -> np.ndarray | None:
    """A bool mask of ``shape`` (labels' shape) from a mask or a list of rectangles."""
    if region is None:
        return None
    if isinstance(region, np.ndarray) and region.dtype == bool or (
        hasattr(region, "dtype") and np.dtype(region.dtype) == bool
    ):
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
    if rects is None or rects.ndim == 1 and rects.size == want:
        rects = None if rects is None else rects[None]
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
        plane = ()
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


# ===================================================================== data
@dataclass
class _Plane:
    image: np.ndarray  # (C, H, W) float32, normalised
    labels: np.ndarray  # (H, W) int32
    train: np.ndarray  # (H, W) bool
    name: str
    val: np.ndarray | None = None
    _bbox: tuple[int, int, int, int] | None = None
    _flat: np.ndarray | None = None
    n_train: int = 0

    def finish(self) -> None:
        self.n_train = int(self.train.sum())
        self._flat = None
        if self.n_train:
            rows = np.flatnonzero(self.train.any(axis=1))
            cols = np.flatnonzero(self.train.any(axis=0))
            self._bbox = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)

    def draw_centre(self, rng: np.random.Generator) -> tuple[int, int]:
        """A uniformly random annotated (training) pixel."""
        r0, r1, c0, c1 = self._bbox  # type: ignore[misc]
        if self.n_train > 0.02 * (r1 - r0) * (c1 - c0):
            for _ in range(16):
                rr = rng.integers(r0, r1, 64)
                cc = rng.integers(c0, c1, 64)
                hit = np.flatnonzero(self.train[rr, cc])
                if hit.size:
                    return int(rr[hit[0]]), int(cc[hit[0]])
        if self._flat is None:
            self._flat = np.flatnonzero(self.train)
        k = int(self._flat[rng.integers(len(self._flat))])
        return divmod(k, self.train.shape[1])


def _window(array: np.ndarray, r0: int, c0: int, h: int, w: int) -> np.ndarray:
    """``array[..., r0:r0+h, c0:c0+w]`` with mirrored context beyond the borders."""
    rows, cols = array.shape[-2:]
    if r0 >= 0 and c0 >= 0 and r0 + h <= rows and c0 + w <= cols:
        return array[..., r0 : r0 + h, c0 : c0 + w]
    r = reflect_index(np.arange(r0, r0 + h), rows)
    c = reflect_index(np.arange(c0, c0 + w), cols)
    return array[..., r[:, None], c[None, :]]


@dataclass
class _ValPlane:
    image: np.ndarray  # (C, h, w) window with context
    context: tuple[int, int]  # pixels of context before the val bbox
    gt: np.ndarray  # (h0, w0) labels of the val bbox, 0 outside val mask
    mask: np.ndarray  # (h0, w0) bool val mask
    target: np.ndarray  # (h0, w0) uint8
    weight: np.ndarray  # (h0, w0) float32


class _PreNormalised(Normalization):
    """Planes are normalised once for training; prediction must not do it again."""

    def stats(self, plane: Any) -> tuple[float, float]:  # noqa: D102
        return 0.0, 1.0


def _remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    if not labels.any():
        return labels
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    return np.where(small[labels], 0, labels) if small.any() else labels


# ================================================================ the run object
class TrainingRun(Generator[TrainProgress, None, TrainResult]):
    """The generator returned by :func:`iter_train`, with the result kept on it.

    Iterate it for :class:`TrainProgress` records; its return value (the
    ``StopIteration`` value, or ``yield from``) is the :class:`TrainResult`.
    After it ends (finished, stopped, closed or garbage-collected), ``result``
    holds the same :class:`TrainResult`; ``close()`` therefore never loses the
    best model so far.
    """

    def __init__(self, trainer: _Trainer) -> None:
        self._trainer = trainer
        self._gen = trainer.run()

    def send(self, value: None) -> TrainProgress:
        return self._gen.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> TrainProgress:  # type: ignore
        if val is None and tb is None:
            return self._gen.throw(typ)
        return self._gen.throw(typ, val, tb)  # pragma: no cover - deprecated form

    def close(self) -> None:
        self._gen.close()

    @property
    def result(self) -> TrainResult | None:
        """The :class:`TrainResult` once the run has ended, else None."""
        return self._trainer.result

    @property
    def history(self) -> list[TrainProgress]:
        """Progress records of the steps so far."""
        return self._trainer.history

    def best_model(self) -> UNet:
        """A copy of the best model so far (the current one if none was validated yet)."""
        return self._trainer.best_copy()


# ================================================================== the trainer
class _Trainer:
    """Holds the state of one training run; :meth:`run` is the generator."""

    def __init__(self, images: Any, labels: Any, model: Any, opts: dict[str, Any]) -> None:
        self.opts = opts
        self.result: TrainResult | None = None
        self.history: list[TrainProgress] = []
        self._check_options()
        self.device = resolve_device(opts["device"])
        self.checkpoint: dict[str, Any] | None = None
        if opts["resume"] is not None:
            if model is not None:
                raise ValueError("pass either model= or resume=, not both: a resumed run "
                                 "continues the checkpoint's model")
            self.checkpoint = _read_checkpoint(opts["resume"])
            saved = self.checkpoint["settings"]
            for key in ("seed", "optimizer", "lr", "loss", "gap", "target_mode", "w0", "sigma",
                        "validation"):
                opts[key] = saved[key]
            opts["final_lr_fraction"] = saved.get("final_lr_fraction")
            if opts["patch_shape"] is None and saved.get("patch_shape"):
                opts["patch_shape"] = tuple(saved["patch_shape"])
            if opts["batch_size"] is None and saved.get("batch_size"):
                opts["batch_size"] = int(saved["batch_size"])
            start = model_from_dict(self.checkpoint["model"])
            self.started_from = saved.get("started_from", "checkpoint")
        else:
            start, self.started_from = self._start_model(model)
        n_classes = TARGET_MODES[opts["target_mode"]]
        if start.n_classes != n_classes:
            raise ValueError(
                f"the model has {start.n_classes} output classes but target_mode="
                f"{opts['target_mode']!r} needs {n_classes}; use target_mode="
                f"{'boundary' if start.n_classes == 3 else 'binary'!r} or a new model"
            )
        self.start_model = start
        self.model = copy_model(start)
        if opts["seed"] is None:
            opts["seed"] = int(np.random.SeedSequence().entropy % 2**63)
        self.seed = int(opts["seed"])
        self.images, self.labels, self.regions, self.layouts = self._check_data(images, labels)
        self._best: dict[str, Any] | None = None
        self._executor: ThreadPoolExecutor | None = None

    # ---------------------------------------------------------------- options
    def _check_options(self) -> None:
        o = self.opts
        if o["optimizer"] not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, not {o['optimizer']!r}")
        if o["loss"] not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, not {o['loss']!r}")
        if o["target_mode"] not in TARGET_MODES:
            raise ValueError(f"target_mode must be one of {tuple(TARGET_MODES)}, not "
                             f"{o['target_mode']!r}")
        for key in ("max_steps", "batch_size", "checkpoint_every", "validate_every"):
            v = o[key]
            if v is not None and (not isinstance(v, (int, np.integer)) or isinstance(v, bool)
                                  or v < 1):
                raise ValueError(f"{key} must be a positive whole number or None, not {v!r}")
        if o["max_time"] is not None and not float(o["max_time"]) > 0:
            raise ValueError(f"max_time must be a positive number of seconds, not "
                             f"{o['max_time']!r}")
        if o["lr"] is not None and not float(o["lr"]) > 0:
            raise ValueError(f"lr must be positive, not {o['lr']!r}")
        flr = o["final_lr_fraction"]
        if flr is not None and not 0.0 <= float(flr) <= 1.0:
            raise ValueError(f"final_lr_fraction must be in [0, 1], not {flr!r}")
        if not 0.0 <= float(o["validation"]) < 1.0:
            raise ValueError(f"validation must be a fraction in [0, 1), not {o['validation']!r}")
        if o["gap"] not in (0, 1, 2) or o["target_mode"] == "boundary" and o["gap"] == 0:
            raise ValueError(f"gap must be 0, 1 or 2 pixels (1 or 2 for target_mode="
                             f"'boundary'), not {o['gap']!r}")
        if float(o["w0"]) < 0 or not float(o["sigma"]) > 0:
            raise ValueError("w0 must be >= 0 and sigma > 0")
        aug = o["augment"]
        if aug is True:
            o["augment"] = AugmentConfig()
        elif aug is False or aug is None:
            o["augment"] = AugmentConfig.off()
        elif not isinstance(aug, AugmentConfig):
            raise ValueError(f"augment must be True, False or an AugmentConfig, not {aug!r}")
        if o["patch_shape"] is not None:
            p = o["patch_shape"]
            p = (p, p) if np.isscalar(p) else tuple(p)
            if len(p) != 2 or any(int(s) < 1 for s in p):
                raise ValueError(f"patch_shape must be one or two positive sizes, not "
                                 f"{o['patch_shape']!r}")
            o["patch_shape"] = tuple(int(s) for s in p)

    def _start_model(self, model: Any) -> tuple[UNet, str]:
        if model is None:
            packaged = packaged_model_path("default")
            if packaged is not None:
                default = load_model(packaged)
                if default.n_classes == TARGET_MODES[self.opts["target_mode"]]:
                    return default, "default"
            return new_model(self.opts["target_mode"]), "new"
        if isinstance(model, UNet):
            return copy_model(model), str(model.metadata.get("path", "model"))
        if isinstance(model, (str, os.PathLike)):
            return load_model(model), str(model)
        raise ValueError(f"model must be None, a UNet or a model file path, not "
                         f"{type(model).__name__}")

    # ------------------------------------------------------------------- data
    def _check_data(self, images: Any, labels: Any) -> tuple[list, list, list, list]:
        imgs, single = _as_list(images, "images")
        labs, _ = _as_list(labels, "labels")
        if len(imgs) != len(labs):
            raise ValueError(f"{len(imgs)} image(s) but {len(labs)} label image(s): give one "
                             "label image per image")
        regions = self.opts["regions"]
        if regions is None:
            regions = [None] * len(imgs)
        elif single:
            regions = [regions]
        elif not isinstance(regions, (list, tuple)) or len(regions) != len(imgs):
            raise ValueError(f"regions must be a list with one entry (mask, rectangles or "
                             f"None) per image: {len(imgs)} entries")
        layouts, checked, masks = [], [], []
        for i, (img, lab) in enumerate(zip(imgs, labs)):
            if not (hasattr(img, "shape") and hasattr(img, "dtype")):
                raise ValueError(f"image {i} must be an array, not {type(img).__name__}")
            if not (np.issubdtype(np.dtype(img.dtype), np.number) or img.dtype == bool):
                raise ValueError(f"image {i} must be numeric, not of dtype {img.dtype}")
            try:
                layout = ImageLayout.infer(img.shape, self.start_model.in_channels)
            except ValueError as err:
                raise ValueError(f"image {i}: {err}") from None
            lab = _check_labels(lab, i)
            if lab.shape != layout.spatial_shape:
                raise ValueError(
                    f"image {i} has shape {tuple(img.shape)} (read as axes "
                    f"{layout.axes!r}, {'planes x ' if 'z' in layout.axes else ''}rows x "
                    f"columns {layout.spatial_shape}) but labels {i} have shape {lab.shape}; "
                    "each label image must have one id per pixel of its image"
                )
            layouts.append(layout)
            checked.append(lab)
            masks.append(_region_mask(regions[i], lab.shape, i))
        return imgs, checked, masks, layouts

    def _prepare(self) -> tuple[list[_Plane], list[_ValPlane]]:
        """Normalise and split the annotated planes (train / validation)."""
        norm = self.model.normalization
        c = self.model.in_channels
        planes: list[_Plane] = []
        for i, (img, lab, region, layout) in enumerate(
            zip(self.images, self.labels, self.regions, self.layouts)
        ):
            stack = lab.ndim == 3
            for z in range(layout.n_planes):
                lab2 = lab[z] if stack else lab
                reg2 = None if region is None else (region[z] if stack else region)
                if reg2 is not None and reg2.any():
                    annotated = reg2
                elif lab2.any():
                    annotated = np.ones(lab2.shape, dtype=bool)
                else:
                    continue
                name = f"image {i}" + (f", plane {z}" if stack else "")
                sample = layout.read(img, z, *layout.sample_slices(), c)
                try:
                    stats = [norm.stats(ch) for ch in sample]
                except ValueError as err:
                    raise ValueError(f"{name}: {err}") from None
                full = layout.read(img, z, slice(None), slice(None), c)
                plane = np.stack([norm.apply(ch, s) for ch, s in zip(full, stats)])
                if not np.isfinite(plane).all():
                    raise ValueError(
                        f"{name} contains NaN or infinite values; replace them (for example "
                        "with numpy.nan_to_num) before training"
                    )
                # consecutive ids: small, exact in float32 grid sampling, cheap to index
                ids, inverse = np.unique(lab2, return_inverse=True)
                seq = (inverse.reshape(lab2.shape) + (0 if ids[0] == 0 else 1)).astype(np.int32)
                planes.append(_Plane(plane, seq, annotated.copy(), name))
        if not planes:
            raise ValueError(
                "nothing to train on: every label image is empty (all 0) and no region marks "
                "an annotated area; paint some cells, or pass regions= to mark where the "
                "labels (even all background) are complete"
            )
        held = self._split_validation(planes)
        planes = [p for p in planes if p.train.any()]
        if not planes:
            raise ValueError("all the annotation was held out for validation; annotate more, "
                             "or pass validation=0")
        for p in planes:
            p.finish()
        self.class_weights = self._class_weights(planes)
        vals, pixels = [], 0
        for p, val in held:
            if pixels > _MAX_VAL_PIXELS:
                break
            vals.append(self._val_plane(p, val))
            pixels += int(val.sum())
        return planes, vals

    def _split_validation(self, planes: list[_Plane]) -> list[tuple[_Plane, np.ndarray]]:
        """Hold out whole planes, or a strip of each plane; returns (plane, val mask) pairs."""
        frac = float(self.opts["validation"])
        if frac <= 0:
            return []
        rng = np.random.default_rng([self.seed, 1])
        n = len(planes)
        held: list[tuple[_Plane, np.ndarray]] = []
        if n >= 2 and n * frac >= 1:
            for k in rng.permutation(n)[: max(1, int(round(n * frac)))]:
                held.append((planes[k], planes[k].train.copy()))
                planes[k].train = np.zeros_like(planes[k].train)
        else:
            total = sum(int(p.train.sum()) for p in planes)
            if total < 64 * 64:
                return []
            for p in planes:
                val = _strip(p.train, frac, rng)
                if val is not None:
                    held.append((p, val))
                    p.train = p.train & ~val
        return held

    def _val_plane(self, p: _Plane, val: np.ndarray) -> _ValPlane:
        rows = np.flatnonzero(val.any(axis=1))
        cols = np.flatnonzero(val.any(axis=0))
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        m = self.model.margin + 8
        image = np.ascontiguousarray(_window(p.image, r0 - m, c0 - m, r1 - r0 + 2 * m,
                                             c1 - c0 + 2 * m))
        mask = val[r0:r1, c0:c1]
        gt = np.where(mask, p.labels[r0:r1, c0:c1], 0)
        target, weight = self._targets(p.labels[r0:r1, c0:c1], mask)
        gt = _remove_small(gt, _VAL_MIN_SIZE)
        return _ValPlane(image, (m, m), gt, mask.copy(), target, weight)

    def _targets(self, labels: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class map and weight map of labels annotated where ``mask`` is True."""
        o = self.opts
        ignore = None
        if not mask.all():
            ignore = int(labels.max()) + 1
            labels = np.where(mask, labels, ignore)
        return training_targets(
            labels, gap=int(o["gap"]), w0=float(o["w0"]), sigma=float(o["sigma"]),
            class_weights=self.class_weights, ignore_value=ignore, mode=o["target_mode"],
        )

    def _class_weights(self, planes: list[_Plane]) -> Any:
        """Class weights that balance the class frequencies of all the training annotation."""
        counts = np.zeros(TARGET_MODES[self.opts["target_mode"]], dtype=np.float64)
        budget = 2**24
        for p in planes:
            if budget <= 0:
                break
            cls, _ = training_targets(
                np.where(p.train, p.labels, int(p.labels.max()) + 1) if not p.train.all()
                else p.labels,
                gap=int(self.opts["gap"]), w0=0.0, sigma=float(self.opts["sigma"]),
                class_weights=None,
                ignore_value=None if p.train.all() else int(p.labels.max()) + 1,
                mode=self.opts["target_mode"],
            )
            counts += np.bincount(cls[cls != IGNORE_INDEX].ravel(), minlength=len(counts))[
                : len(counts)]
            budget -= cls.size
        # balanced over all the training annotation (not per patch), at most 10:1
        table = class_weight_table(counts, "balanced").astype(np.float64)
        table = np.minimum(table, 10 * table.min())
        return tuple(float(w) for w in table)

    # -------------------------------------------------------------- geometry
    def _shapes(self, patch: tuple[int, int]) -> tuple[tuple, tuple, tuple, tuple]:
        """(input shape, output shape, output offset in the input, label window extra)."""
        model = self.model
        if model.padding == "valid":
            in_shape = model.valid_input_shape(patch)
        else:
            s = model.stride
            in_shape = tuple(int(math.ceil(max(n, s) / s) * s) for n in patch)
        out_shape = model.output_shape(in_shape)
        offset = tuple((i - o) // 2 for i, o in zip(in_shape, out_shape))
        want = int(math.ceil(3 * float(self.opts["sigma"]))) + int(self.opts["gap"]) + 2
        extra = tuple(max(0, want - off) for off in offset)
        return in_shape, out_shape, offset, extra

    def _auto_patch_batch(self, planes: list[_Plane]) -> tuple[tuple[int, int], int]:
        largest = (max(p.labels.shape[0] for p in planes), max(p.labels.shape[1] for p in planes))
        dev = self.device
        patch = self.opts["patch_shape"]
        batch = self.opts["batch_size"]
        if dev.type == "cuda":
            default_patch, default_batch = _CUDA_PATCH, None
        elif dev.type == "mps":
            default_patch, default_batch = _MPS_PATCH, _MPS_BATCH
        else:
            default_patch, default_batch = _CPU_PATCH, _CPU_BATCH
        if patch is None:
            # never much larger than the images need
            patch = tuple(int(min(default_patch, max(16, math.ceil(n / 8) * 8)))
                          for n in largest)
        if batch is None:
            if default_batch is not None:
                batch = default_batch
            else:
                free, _ = torch.cuda.mem_get_info(dev)
                in_shape = self._shapes(patch)[0]
                per = _train_memory(self.model, in_shape)
                batch = int(max(1, min(_CUDA_MAX_BATCH, (0.5 * free) // per)))
        return tuple(patch), int(batch)  # type: ignore[return-value]

    # ------------------------------------------------------------ batches
    def _batch(
        self, planes: list[_Plane], probs: np.ndarray, n: int, patch: tuple[int, int],
        rng: np.random.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        in_shape, out_shape, offset, extra = self._shapes(patch)
        lab_shape = tuple(i + 2 * e for i, e in zip(in_shape, extra))
        aug: AugmentConfig = self.opts["augment"]
        pad = aug.source_padding(lab_shape)
        src = tuple(s + 2 * p for s, p in zip(lab_shape, pad))
        imgs, labs, masks = [], [], []
        for k in rng.choice(len(planes), size=n, p=probs):
            p = planes[k]
            cy, cx = p.draw_centre(rng)
            r0, c0 = cy - src[0] // 2, cx - src[1] // 2
            imgs.append(_window(p.image, r0, c0, *src))
            labs.append(_window(p.labels, r0, c0, *src))
            masks.append(_window(p.train, r0, c0, *src))
        dev = self.device
        x = torch.from_numpy(np.stack(imgs)).to(dev)
        ex = tuple(e + q for e, q in zip(extra, pad))  # image window inside the source
        if aug.is_geometric:
            geometry = sample_geometry(n, aug, rng)
            grid = sampling_grid(geometry, src, lab_shape, dev)
            img_grid = grid[:, extra[0] : extra[0] + in_shape[0],
                            extra[1] : extra[1] + in_shape[1]]
            x = warp(x, img_grid, "bilinear")
            y = torch.from_numpy(np.stack([np.stack(labs), np.stack(masks)], 1).astype(
                np.float32)).to(dev)
            y = warp(y, grid, "nearest").cpu().numpy()
            lab_w = np.rint(y[:, 0]).astype(np.int32)
            mask_w = y[:, 1] > 0.5
        else:
            x = x[:, :, ex[0] : ex[0] + in_shape[0], ex[1] : ex[1] + in_shape[1]]
            lab_w = np.stack(labs)
            mask_w = np.stack(masks)
        if aug.is_intensity:
            x = augment_intensity(x, aug, rng)
        # targets from the warped labels, over the output area plus weight-map context
        ctx = self._ctx(offset, extra)
        t0 = [e + off - c for e, off, c in zip(extra, offset, ctx)]
        sl = (slice(t0[0], t0[0] + out_shape[0] + 2 * ctx[0]),
              slice(t0[1], t0[1] + out_shape[1] + 2 * ctx[1]))
        crop = (slice(ctx[0], ctx[0] + out_shape[0]), slice(ctx[1], ctx[1] + out_shape[1]))

        def targets_of(k: int) -> tuple[np.ndarray, np.ndarray]:
            cls, w = self._targets(lab_w[k][sl], mask_w[k][sl])
            return cls[crop], w[crop]

        pool = self._pool()
        done = list(pool.map(targets_of, range(n)) if pool else map(targets_of, range(n)))
        targets = [t for t, _ in done]
        weights = [w for _, w in done]
        target = torch.from_numpy(np.stack(targets).astype(np.int64)).to(dev)
        weight = torch.from_numpy(np.stack(weights).astype(np.float32)).to(dev)
        return x.contiguous(), target, weight

    def _pool(self) -> ThreadPoolExecutor | None:
        """Threads for the CPU-side targets while a GPU trains (None on the CPU itself)."""
        cpus = os.cpu_count() or 1
        if self.device.type == "cpu" or cpus < 4:
            return None
        if self._executor is None:
            self._executor = ThreadPoolExecutor(min(8, cpus - 2),
                                                thread_name_prefix="napari-unet-targets")
        return self._executor

    def _ctx(self, offset: tuple, extra: tuple) -> tuple[int, int]:
        want = int(math.ceil(3 * float(self.opts["sigma"]))) + int(self.opts["gap"]) + 2
        return tuple(min(want, off + e) for off, e in zip(offset, extra))  # type: ignore

    # ------------------------------------------------------------ validation
    def _validate(
        self, vals: list[_ValPlane], record: dict[str, Any]
    ) -> Generator[TrainProgress, None, tuple[float, float]]:
        model = self.model
        pooled = MatchResult(0, 0, 0, 0, 0, 0.5)
        loss_sum, weight_sum = 0.0, 0.0
        grow = int(self.opts["gap"]) + 1
        for k, v in enumerate(vals):
            gen = iter_predict_tiled(model, v.image, device=self.device, axes="cyx",
                                     normalization=_PreNormalised())
            try:
                while True:
                    tiles = next(gen)
                    yield TrainProgress(
                        **{**record, "phase": "validate",
                           "message": f"validating: plane {k + 1}/{len(vals)}, tile "
                                      f"{tiles.done}/{tiles.total}"})
            except StopIteration as stop:
                probs = stop.value
            finally:
                gen.close()
            h, w = v.gt.shape
            cr, cc = v.context
            probs = probs[:, cr : cr + h, cc : cc + w]
            ok = v.target != IGNORE_INDEX
            p_true = np.take_along_axis(
                probs, np.where(ok, v.target, 0)[None].astype(np.int64), 0)[0]
            loss_sum += float((v.weight * -np.log(np.clip(p_true, 1e-7, 1.0)))[ok].sum())
            weight_sum += float(v.weight[ok].sum())
            pred = probabilities_to_labels(probs, model.classes, threshold=0.5,
                                           min_size=_VAL_MIN_SIZE, grow=grow)
            pred = _remove_small(np.where(v.mask, pred, 0), _VAL_MIN_SIZE)
            pooled = pooled + match(v.gt, pred, 0.5)
        return loss_sum / max(weight_sum, 1e-8), pooled.f1

    # ------------------------------------------------------------ snapshots
    def best_copy(self) -> UNet:
        """The best validated model so far, else the current one (else the start model,
        should the current weights have become non-finite)."""
        twin = copy_model(self.model)
        if self._best is not None:
            twin.load_state_dict(self._best["state_dict"])
        elif not all(torch.isfinite(p).all() for p in twin.parameters()):
            twin.load_state_dict(self.start_model.state_dict())
        return twin.eval()

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    # ------------------------------------------------------------------ run
    def run(self) -> Generator[TrainProgress, None, TrainResult]:
        o = self.opts
        t_start = time.perf_counter()
        yield TrainProgress(0 if self.checkpoint is None else int(self.checkpoint["step"]),
                            o["max_steps"], 0.0, phase="prepare",
                            message="preparing the training data")
        planes, vals = self._prepare()
        counts = np.array([p.n_train for p in planes], dtype=np.float64)
        probs = counts / counts.sum()
        patch, batch = self._auto_patch_batch(planes)
        dev = self.device
        model = self.model.to(dev).train()
        lr0 = float(o["lr"] or DEFAULT_LR[o["optimizer"]])
        if o["optimizer"] == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=lr0)
        else:
            opt = torch.optim.SGD(model.parameters(), lr=lr0, momentum=0.99)
        amp = dev.type == "cuda"
        scaler = torch.amp.GradScaler("cuda") if amp else None
        rng = np.random.default_rng([self.seed, 2])
        step, elapsed0 = 0, 0.0
        best_f1: float | None = None
        if self.checkpoint is not None:
            ck = self.checkpoint
            opt.load_state_dict(ck["optimizer"])
            if scaler is not None and ck.get("scaler"):
                scaler.load_state_dict(ck["scaler"])
            rng.bit_generator.state = ck["rng"]
            step, elapsed0 = int(ck["step"]), float(ck["elapsed"])
            self.history = [TrainProgress(**_record_from_dict(h)) for h in ck["history"]]
            if ck.get("best"):
                self._best = dict(ck["best"])
                best_f1 = self._best["val_f1"]
            if ck.get("patch_shape"):
                patch = tuple(ck["patch_shape"])
        max_steps, max_time = o["max_steps"], o["max_time"]
        ckpt_dir = None if o["checkpoint_dir"] is None else Path(o["checkpoint_dir"])
        if ckpt_dir is not None:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
        message: str | None = None
        if not vals:
            message = "no validation: the final model is kept" if o["validation"] else None
        stopped = "cancelled"
        last_val_step, last_val_time, val_seconds = step, 0.0, None
        start_step = step
        pending: tuple[torch.Tensor, ...] | None = None
        t_run = time.perf_counter()
        state = {"step": step}

        def elapsed() -> float:
            return elapsed0 + time.perf_counter() - t_start

        def record(**kw: Any) -> dict[str, Any]:
            e = elapsed()
            eta = None
            done = state["step"] - start_step
            if max_steps is not None and done > 0:
                eta = (max_steps - state["step"]) * (time.perf_counter() - t_run) / done
            if max_time is not None:
                left = max(0.0, float(max_time) - e)
                eta = left if eta is None else min(eta, left)
            base = {"step": state["step"], "total": max_steps, "elapsed": e, "eta": eta,
                    "best_val_f1": best_f1, "batch_size": batch, "patch_shape": tuple(patch)}
            base.update(kw)
            return base

        def save_checkpoint() -> None:
            if ckpt_dir is not None:
                self._write_checkpoint(ckpt_dir, opt, scaler, rng, state["step"], elapsed(),
                                       patch, batch)

        def validate_due() -> bool:
            if not vals or state["step"] == last_val_step:
                return False
            every = o["validate_every"]
            if every is not None:
                return state["step"] % every == 0
            since = state["step"] - last_val_step
            if val_seconds is None:
                return since >= 20
            return since >= 5 and time.perf_counter() - last_val_time >= 6 * val_seconds

        try:
            # A trained model we fine-tune is evaluated before training: if training
            # never beats it, it is what we return.
            if vals and self.start_model.metadata and self._best is None:
                t = time.perf_counter()
                vl, vf = yield from self._validate(vals, record())
                val_seconds, last_val_time = time.perf_counter() - t, time.perf_counter()
                self._best = {"state_dict": self._snapshot(), "val_f1": vf, "val_loss": vl,
                              "step": step}
                best_f1 = vf
                yield TrainProgress(**record(val_loss=vl, val_f1=vf, best_val_f1=best_f1,
                                             message="validation of the starting model"))
            while True:
                if max_steps is not None and state["step"] >= max_steps:
                    stopped = "max_steps"
                    break
                if max_time is not None and elapsed() >= float(max_time):
                    stopped = "max_time"
                    break
                lr = lr0 * _schedule(state["step"], max_steps, elapsed(), max_time,
                                     o["final_lr_fraction"])
                for group in opt.param_groups:
                    group["lr"] = lr
                oom = False
                try:
                    if pending is None:
                        pending = self._batch(planes, probs, batch, patch, rng)
                    step_seed = int(rng.integers(0, 2**62))
                    loss = self._step(model, opt, scaler, *pending, step_seed, amp)
                    pending = None
                except torch.OutOfMemoryError:
                    oom = True
                if oom:
                    opt.zero_grad(set_to_none=True)
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
                    if batch > 1:
                        batch //= 2
                        what = f"batch size {batch}"
                        if pending is not None:  # retry with half of the same batch
                            pending = tuple(t[:batch] for t in pending)
                    else:
                        pending = None
                        smaller = tuple(max(16, s // 2) for s in patch)
                        if smaller == tuple(patch):
                            stopped = "out of memory even with one 16x16 patch"
                            break
                        patch = smaller
                        what = f"patches of {patch[0]}x{patch[1]}"
                    message = f"out of memory: continuing with {what}"
                    continue
                if not math.isfinite(loss):
                    stopped = (
                        f"the loss became {loss} at step {state['step'] + 1} (diverged): try a "
                        "lower learning rate; the last good model is kept"
                    )
                    break
                state["step"] += 1
                val_loss = val_f1 = None
                if validate_due() or (max_steps is not None and state["step"] >= max_steps):
                    if vals:
                        t = time.perf_counter()
                        val_loss, val_f1 = yield from self._validate(vals, record(loss=loss,
                                                                                  lr=lr))
                        val_seconds = time.perf_counter() - t
                        last_val_time, last_val_step = time.perf_counter(), state["step"]
                        if self._is_better(val_f1, val_loss):
                            self._best = {"state_dict": self._snapshot(), "val_f1": val_f1,
                                          "val_loss": val_loss, "step": state["step"]}
                            best_f1 = val_f1
                            if ckpt_dir is not None:
                                self._save_best(ckpt_dir, "running", elapsed(), len(planes))
                rec = TrainProgress(**record(loss=loss, lr=lr, val_loss=val_loss,
                                             val_f1=val_f1, message=message))
                message = None
                self.history.append(rec)
                if ckpt_dir is not None and state["step"] % int(o["checkpoint_every"]) == 0:
                    save_checkpoint()
                yield rec
            # a final validation, so the last steps count too
            if vals and stopped in ("max_time",) and last_val_step != state["step"]:
                vl, vf = yield from self._validate(vals, record())
                last_val_step = state["step"]
                if self._is_better(vf, vl):
                    self._best = {"state_dict": self._snapshot(), "val_f1": vf,
                                  "val_loss": vl, "step": state["step"]}
                    best_f1 = vf
                if self.history:
                    self.history[-1] = TrainProgress(**{**asdict(self.history[-1]),
                                                        "val_loss": vl, "val_f1": vf,
                                                        "best_val_f1": best_f1})
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=False)
                self._executor = None
            self.model.to("cpu")
            self.result = self._finish(stopped, elapsed(), len(planes), ckpt_dir)
            if ckpt_dir is not None:
                save_checkpoint()
        return self.result

    def _is_better(self, f1: float, loss: float) -> bool:
        if self._best is None:
            return True
        return (f1, -loss) > (self._best["val_f1"], -self._best["val_loss"])

    def _step(self, model: UNet, opt: torch.optim.Optimizer, scaler: Any, x: torch.Tensor,
              target: torch.Tensor, weight: torch.Tensor, seed: int, amp: bool) -> float:
        dev = self.device
        # Dropout draws from torch's global generator: seed it for this step from our
        # own random state (reproducible, resumable) without disturbing the caller's.
        if dev.type == "cuda":
            devices = [dev.index if dev.index is not None else torch.cuda.current_device()]
        else:
            devices = []
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            torch.manual_seed(seed)
            with torch.autocast(device_type=dev.type if amp else "cpu", dtype=torch.float16,
                                enabled=amp):
                logits = model(x)
            loss = training_loss(logits, target, weight, self.opts["loss"])
            value = float(loss.detach())
            if not math.isfinite(value):
                return value
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
        return value

    # ------------------------------------------------------------ outputs
    def _final_model(self, stopped: str, seconds: float, n_planes: int) -> UNet:
        out = self.best_copy()
        o = self.opts
        last_val = next((h for h in reversed(self.history) if h.val_f1 is not None), None)
        losses = [h.loss for h in self.history[-20:] if h.loss is not None]
        meta = dict(out.metadata)
        meta.pop("path", None)
        previous = meta.pop("training", None)
        if previous:
            meta.setdefault("training_history", []).append(previous)
        meta["target"] = {"mode": o["target_mode"], "gap": int(o["gap"]), "w0": float(o["w0"]),
                          "sigma": float(o["sigma"])}
        meta["training"] = {
            "steps": self.history[-1].step if self.history else 0,
            "seconds": round(seconds, 1),
            "device": str(self.device),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "n_images": len(self.images),
            "n_planes": n_planes,
            "started_from": self.started_from,
            "optimizer": o["optimizer"],
            "lr": float(o["lr"] or DEFAULT_LR[o["optimizer"]]),
            "loss": o["loss"],
            "final_loss": float(np.mean(losses)) if losses else None,
            "best_val_f1": None if self._best is None else self._best["val_f1"],
            "best_val_loss": None if self._best is None else self._best["val_loss"],
            "best_step": None if self._best is None else self._best["step"],
            "final_val_f1": None if last_val is None else last_val.val_f1,
            "seed": self.seed,
            "augment": bool(o["augment"].is_geometric or o["augment"].is_intensity),
            "stopped_reason": stopped,
        }
        out.metadata = meta
        return out

    def _save_best(self, ckpt_dir: Path, stopped: str, seconds: float, n_planes: int) -> Path:
        return save_model(self._final_model(stopped, seconds, n_planes),
                          ckpt_dir / BEST_MODEL_NAME)

    def _finish(self, stopped: str, seconds: float, n_planes: int,
                ckpt_dir: Path | None) -> TrainResult:
        model = self._final_model(stopped, seconds, n_planes)
        path = None
        if ckpt_dir is not None:
            path = save_model(model, ckpt_dir / BEST_MODEL_NAME)
        return TrainResult(
            model=model, history=list(self.history), path=path, stopped_reason=stopped,
            best_step=model.metadata["training"]["best_step"],
            best_val_f1=model.metadata["training"]["best_val_f1"],
            steps=model.metadata["training"]["steps"], seconds=seconds,
        )

    def _write_checkpoint(self, ckpt_dir: Path, opt: torch.optim.Optimizer, scaler: Any,
                          rng: np.random.Generator, step: int, elapsed: float,
                          patch: tuple[int, int], batch: int) -> Path:
        o = self.opts
        m = self.model
        payload = {
            "format": _CHECKPOINT_FORMAT,
            "version": 1,
            "model": {
                "config": dict(m.config),
                "state_dict": {k: v.detach().cpu().clone() for k, v in m.state_dict().items()},
                "normalization": m.normalization.to_dict(),
                "classes": list(m.classes),
                "metadata": copy.deepcopy(dict(self.start_model.metadata)),
            },
            "optimizer": opt.state_dict(),
            "scaler": None if scaler is None else scaler.state_dict(),
            "rng": rng.bit_generator.state,
            "step": int(step),
            "elapsed": float(elapsed),
            "patch_shape": list(patch),
            "history": [_record_to_dict(h) for h in self.history],
            "best": self._best,
            "settings": {
                "seed": self.seed, "optimizer": o["optimizer"], "lr": o["lr"],
                "loss": o["loss"], "gap": int(o["gap"]), "target_mode": o["target_mode"],
                "w0": float(o["w0"]), "sigma": float(o["sigma"]),
                "validation": float(o["validation"]), "patch_shape": list(patch),
                "final_lr_fraction": o["final_lr_fraction"],
                "batch_size": int(batch), "started_from": self.started_from,
            },
        }
        return atomic_torch_save(payload, ckpt_dir / CHECKPOINT_NAME)


# ==================================================================== helpers
def _schedule(step: int, max_steps: int | None, elapsed: float, max_time: float | None,
              final_fraction: float | None = None) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to ``final_fraction``.

    ``final_fraction`` defaults to FINAL_LR_FRACTION; the decay follows the step
    or time limit (whichever is nearer), and there is none without a limit.
    """
    warm = min(1.0, (step + 1) / max(WARMUP_STEPS, 1))
    fracs = []
    if max_steps:
        fracs.append(step / max_steps)
    if max_time:
        fracs.append(elapsed / float(max_time))
    if not fracs:
        return warm
    f = min(1.0, max(fracs))
    low = FINAL_LR_FRACTION if final_fraction is None else float(final_fraction)
    return warm * (low + (1 - low) * 0.5 * (1 + math.cos(math.pi * f)))


def _strip(mask: np.ndarray, frac: float, rng: np.random.Generator) -> np.ndarray | None:
    """The ``frac`` of the annotated pixels at one end of the longer annotated extent."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    axis = 0 if rows[-1] - rows[0] >= cols[-1] - cols[0] else 1
    per = mask.sum(axis=1 - axis)
    from_end = bool(rng.integers(2))
    if from_end:
        per = per[::-1]
    cum = np.cumsum(per)
    first = int(np.flatnonzero(per)[0])
    cut = max(int(np.searchsorted(cum, frac * cum[-1])), first + 15)  # at least 16 px thick
    if cut >= len(cum) or cum[cut] > 0.5 * cum[-1]:
        return None  # too little annotation in this plane to hold some out
    coord = np.arange(mask.shape[axis])
    sel = coord >= mask.shape[axis] - 1 - cut if from_end else coord <= cut
    sel = sel[:, None] if axis == 0 else sel[None, :]
    return mask & sel


def _train_memory(model: UNet, in_shape: Sequence[int]) -> float:
    """Rough bytes per sample of a mixed-precision training step."""
    rows, cols = in_shape
    c = model.config["base_channels"]
    total = 0.0
    for level in range(model.depth + 1):
        total += 8 * c * 2**level * rows * cols / 4**level
    return 1.5 * 4 * total + 64 * 2**20 / 16


def _record_to_dict(r: TrainProgress) -> dict[str, Any]:
    d = asdict(r)
    d["patch_shape"] = list(d["patch_shape"])
    return d


def _record_from_dict(d: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(TrainProgress)}
    d = {k: v for k, v in d.items() if k in names}
    d["patch_shape"] = tuple(d.get("patch_shape", (0, 0)))
    return d


def _read_checkpoint(path: Any) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT_NAME
    if not p.is_file():
        raise FileNotFoundError(f"no training checkpoint at {p} (resume= takes the "
                                f"checkpoint_dir of an earlier run or its {CHECKPOINT_NAME})")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means "not a checkpoint"
        raise ValueError(f"{p} is not a readable training checkpoint: "
                         f"{str(err).splitlines()[0][:200] if str(err) else type(err).__name__}"
                         ) from None
    if not isinstance(ck, dict) or ck.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(f"{p} is not a napari-unet training checkpoint (to fine-tune a model "
                         "file, pass it as model= instead of resume=)")
    return ck


# ================================================================ public API
def iter_train(
    images: Any,
    labels: Any,
    model: UNet | str | os.PathLike | None = None,
    *,
    regions: Any = None,
    max_steps: int | None = None,
    max_time: float | None = None,
    patch_shape: int | Sequence[int] | None = None,
    batch_size: int | None = None,
    optimizer: str = "adam",
    lr: float | None = None,
    loss: str = "weighted_ce",
    augment: bool | AugmentConfig = True,
    validation: float = 0.1,
    validate_every: int | None = None,
    device: str | torch.device | None = "auto",
    seed: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 250,
    resume: str | os.PathLike | None = None,
    final_lr_fraction: float | None = None,
    gap: int = 1,
    target_mode: str = "binary",
    w0: float = 10.0,
    sigma: float = 5.0,
) -> TrainingRun:
    """Train a U-Net step by step: a generator of :class:`TrainProgress` records.

    Returns a :class:`TrainingRun` (a generator) whose return value is a
    :class:`TrainResult`; see :func:`train` for the parameters. Arguments, label
    values and data shapes are checked at once (ValueError); problems found only
    while preparing the pixels (NaN values, no annotation at all) are raised
    during iteration, right after the first record (``phase == "prepare"``).
    Closing the run stops training within one step; ``run.result`` then holds
    the best model so far (see the module notes).
    """
    opts = dict(
        regions=regions, max_steps=max_steps, max_time=max_time, patch_shape=patch_shape,
        batch_size=batch_size, optimizer=optimizer, lr=lr, loss=loss, augment=augment,
        validation=validation, validate_every=validate_every, device=device, seed=seed,
        checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, resume=resume,
        gap=gap, target_mode=target_mode, w0=w0, sigma=sigma,
        final_lr_fraction=final_lr_fraction,
    )
    return TrainingRun(_Trainer(images, labels, model, opts))


def train(
    images: Any,
    labels: Any,
    model: UNet | str | os.PathLike | None = None,
    *,
    max_steps: int | None = None,
    max_time: float | None = None,
    **options: Any,
) -> TrainResult:
    """Train (or fine-tune) a U-Net on images with painted instance labels.

    Parameters
    ----------
    images : array or list of arrays
        2D images ``(row, col)`` or stacks ``(plane, row, col)`` (also channels
        or colour, as for :func:`~napari_unet.predict_tiled`); any numeric dtype;
        numpy, dask or zarr. Each plane is normalised with the model's
        :class:`~napari_unet.Normalization` before patches are drawn.
    labels : array or list of arrays
        Integer instance labels of the same (plane,) row, col shape: 0 is
        background, each cell has its own id. Planes whose labels are all 0 and
        that no region marks are skipped.
    model : UNet, path or None
        The model to fine-tune (copied; the caller's model is never changed), a
        model file, or None for the packaged pretrained model when there is one,
        else a new :func:`new_model`.
    max_steps : int, optional
        Stop after this many optimiser steps (in the whole run, resumes included).
    max_time : float, optional
        Stop after this many seconds (plus one final validation). :func:`train`
        needs ``max_steps`` or ``max_time``; :func:`iter_train` without either
        runs until it is closed.
    regions : optional
        Where the labels are complete, per image: a bool mask of the labels'
        shape, or rectangles ``(r0, c0, r1, c1)`` (``(plane, r0, c0, r1, c1)`` for
        stacks; half-open pixel ranges). Outside them the loss ignores every
        pixel. A plane that no region marks counts whole when it has labels.
        For a list of images give a list with one entry (or None) per image.
    patch_shape : int or (int, int), optional
        Target pixels of a training patch (the network sees them plus
        ``model.margin`` context on each side). Default: 128 on CPU, 256 on CUDA,
        never much larger than the images.
    batch_size : int, optional
        Patches per step. Default: 4 on CPU and MPS; on CUDA as many as fit in
        half the free memory. On CUDA out-of-memory errors the batch, then the
        patch, is halved and training goes on (said in a progress message).
    optimizer : {"adam", "sgd"}
        Adam, or SGD with momentum 0.99 as in the paper.
    lr : float, optional
        Learning rate (default 3e-3 for Adam, 1e-2 for SGD), reached after a
        50-step linear warm-up and then kept (see ``final_lr_fraction``).
    final_lr_fraction : float, optional
        With a step or time limit, decay the learning rate along a cosine to
        this fraction of ``lr`` at the end (default ``FINAL_LR_FRACTION``, 1.0:
        no decay, which suits short fine-tuning; long pretraining uses ~0.05).
    loss : {"weighted_ce", "weighted_ce+dice"}
        See :func:`training_loss`.
    augment : bool or AugmentConfig
        Random elastic deformation, flips, rotations, scaling and gray-value changes.
    validation : float
        Fraction of the annotation held out to pick the best model: whole planes
        when there are enough of them, else a strip of each plane; 0 for none.
    validate_every : int, optional
        Validate every this many steps; by default as often as keeps validation
        under about 15 % of the time (pass a number for fully reproducible runs).
    device : str
        ``"auto"`` (CUDA, then Apple MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"mps"``.
        CUDA trains in mixed precision.
    seed : int, optional
        Makes the run reproducible (sampling, augmentation, dropout, the split).
    checkpoint_dir : path, optional
        Where to keep ``last.ckpt`` (every ``checkpoint_every`` steps and at the
        end, written atomically) and ``best.pt`` (the best model so far).
    checkpoint_every : int
        Steps between checkpoints.
    resume : path, optional
        A ``checkpoint_dir`` (or its ``last.ckpt``) to continue: weights,
        optimiser state, step count, elapsed time and random state are restored,
        as are the seed, optimiser, learning rate, loss, target settings and
        validation split of the original run.
    gap, target_mode, w0, sigma
        Targets and weight map (:func:`~napari_unet.core.weightmap.training_targets`):
        ``gap`` pixels of background carved between touching cells, ``"binary"``
        (background / cell) or ``"boundary"`` (background / interior / boundary)
        classes, and the weight map's ``w0`` and ``sigma``.

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        For bad arguments or data: mismatched shapes (naming the pair), no
        annotation, NaN values, non-integer or negative labels, or a model whose
        classes do not fit ``target_mode``.

    Examples
    --------
    >>> from napari_unet.core.synthetic import make_sample
    >>> image, labels = make_sample("nuclei", (64, 64), seed=0)
    >>> result = train(image, labels, UNet(depth=2, base_channels=4, dropout=0.0),
    ...                max_steps=2, patch_shape=32, batch_size=1, validation=0, device="cpu")
    >>> result.stopped_reason, result.model.metadata["target"]["gap"]
    ('max_steps', 1)
    """
    if max_steps is None and max_time is None:
        raise ValueError("train() needs max_steps or max_time (or both); it would never stop")
    return run_to_completion(
        iter_train(images, labels, model, max_steps=max_steps, max_time=max_time, **options)
    )
