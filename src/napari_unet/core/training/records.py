"""What a training run reports while it runs (:class:`TrainProgress`) and at its end
(:class:`TrainResult`)."""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..model import UNet

__all__ = ["TrainProgress", "TrainResult", "record_to_dict", "record_from_dict",
           "training_metadata"]


@dataclass(frozen=True)
class TrainProgress:
    """One progress record of :func:`~napari_unet.iter_train` (small; safe to send between
    threads).

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
        Mean training loss of the steps since the previous record.
    val_loss, val_f1 : float or None
        Validation loss and instance F1 (IoU 0.5), when measured at this step.
    val_cells : int or None
        Number of held-out cells the validation F1 is measured on.
    best_val_f1 : float or None
        Validation F1 of the model kept so far (not always the highest measured:
        see :func:`~napari_unet.core.training.validate.is_better`).
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
    steps_per_second : float or None
        Training speed over the steps since the previous record.
    labels_version : int
        The last label update (:meth:`TrainingRun.update`) training includes.
    """

    step: int
    total: int | None
    elapsed: float
    eta: float | None = None
    loss: float | None = None
    val_loss: float | None = None
    val_f1: float | None = None
    val_cells: int | None = None
    best_val_f1: float | None = None
    lr: float | None = None
    batch_size: int = 0
    patch_shape: tuple[int, int] = (0, 0)
    phase: str = "train"
    message: str | None = None
    steps_per_second: float | None = None
    labels_version: int = 0

    @property
    def fraction(self) -> float | None:
        """Fraction of the run done (0..1), or None for a run without limits."""
        if self.eta is None:
            return None
        return min(1.0, self.elapsed / max(self.elapsed + self.eta, 1e-9))


@dataclass
class TrainResult:
    """What :func:`~napari_unet.train` returns (and ``TrainingRun.result`` holds after a run).

    Attributes
    ----------
    model : UNet
        The kept model: the last validated model that was better than the one
        kept before it (:func:`~napari_unet.core.training.validate.is_better`:
        for a fine-tuned trained model, clearly better in F1, or no worse in F1
        and in validation loss and better in one; for a new network, the best F1),
        or the final model when there was no validation; on the CPU, in evaluation
        mode, with ``metadata["target"]`` and ``metadata["training"]`` set.
    history : list of TrainProgress
        The training records reported (``phase == "train"``): one per step with
        ``report_interval=0``, else at most about ten a second.
    path : pathlib.Path or None
        Where the best model was saved (``checkpoint_dir/best.pt``), if anywhere.
    stopped_reason : str
        ``"max_steps"``, ``"max_time"``, ``"cancelled"``, or why training stopped
        early (a non-finite loss, running out of memory).
    best_step : int or None
        The step of the returned model (0: the starting model was kept).
    best_val_f1 : float or None
    start_val_f1 : float or None
        Validation F1 of the model training started from (a trained model that is
        fine-tuned), measured on the same held-out cells.
    val_cells : int or None
        Number of held-out cells validation is measured on.
    steps : int
    seconds : float
    """

    model: UNet
    history: list[TrainProgress]
    path: Path | None
    stopped_reason: str
    best_step: int | None = None
    best_val_f1: float | None = None
    start_val_f1: float | None = None
    val_cells: int | None = None
    steps: int = 0
    seconds: float = 0.0

    @property
    def improved(self) -> bool | None:
        """True when the returned model validates better than the start model (None when
        either was not validated)."""
        if self.best_val_f1 is None or self.start_val_f1 is None:
            return None
        return self.best_step != 0 and self.best_val_f1 > self.start_val_f1


def record_to_dict(r: TrainProgress) -> dict[str, Any]:
    """Plain values of a record (for checkpoints)."""
    d = asdict(r)
    d["patch_shape"] = list(d["patch_shape"])
    return d


def record_from_dict(d: dict[str, Any]) -> TrainProgress:
    """The record of :func:`record_to_dict`'s values (unknown keys ignored)."""
    names = {f.name for f in fields(TrainProgress)}
    d = {k: v for k, v in d.items() if k in names}
    d["patch_shape"] = tuple(d.get("patch_shape", (0, 0)))
    return TrainProgress(**d)


def training_metadata(metadata: dict[str, Any], config: Any, history: list[TrainProgress],
                      facts: dict[str, Any], cell_diameter: float | None) -> dict[str, Any]:
    """A trained model's metadata: the start model's, its earlier training record moved to
    ``training_history``, the targets it learned, the cell size it was tuned on, and this
    run's record (``facts`` plus the settings and final figures)."""
    meta = dict(metadata)
    meta.pop("path", None)
    previous = meta.pop("training", None)
    if previous:
        meta.setdefault("training_history", []).append(previous)
    c = config
    meta["target"] = {"mode": c.target_mode, "gap": c.gap, "w0": c.w0, "sigma": c.sigma}
    if cell_diameter:  # the cells it was tuned on (Segment's "cell diameter")
        meta["cell_diameter"] = cell_diameter
    last_val = next((h for h in reversed(history) if h.val_f1 is not None), None)
    losses = [h.loss for h in history[-20:] if h.loss is not None]
    meta["training"] = {
        **facts,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "optimizer": c.optimizer,
        "lr": c.peak_lr,
        "loss": c.loss,
        "final_loss": float(sum(losses) / len(losses)) if losses else None,
        "final_val_f1": None if last_val is None else last_val.val_f1,
        "augment": bool(c.augment.is_geometric or c.augment.is_intensity),
    }
    return meta
