"""How a training run ended, in numbers: which model was kept, and against what start.

A run keeps a model only when it is better than the kept one on the held-out
cells (:func:`~napari_unet.core.training.validate.is_better`), so the kept model
is never worse than the starting model *on the held-out cells*; but the last steps may
be, and a run that never beat its start keeps the start. :func:`summarize_run`
sets these facts side by side for a truthful report (the GUI's status line).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .training.validate import clearly_better

__all__ = ["RunSummary", "summarize_run", "WORSE_BY"]

#: A last validation F1 this much below the start's counts as "worse than it started".
WORSE_BY = 0.05


@dataclass(frozen=True)
class RunSummary:
    """The end of a training run.

    Attributes
    ----------
    stopped_reason : str
        As :class:`~napari_unet.core.training.TrainResult` says.
    steps : int
    seconds : float
    kept_step : int or None
        The step of the kept model (None: never validated, the final model is kept).
    kept_f1 : float or None
        Its validation F1.
    start_f1 : float or None
        Validation F1 of the starting model, when it was measured (fine-tuning).
    last_f1 : float or None
        The last validation F1 of the run.
    last_step : int or None
    val_cells : int or None
        Cells the last validation was measured on: as the engine says, else the
        estimate passed in.
    changed : bool
        The kept model is not the starting model.
    improved : bool
        It changed and its validation F1 is higher than the starting model's (or
        there was none to compare with): worth keeping without asking.
    worse : bool
        The last validation is more than :data:`WORSE_BY` below the start's.
    """

    stopped_reason: str
    steps: int
    seconds: float
    kept_step: int | None
    kept_f1: float | None
    start_f1: float | None
    last_f1: float | None
    last_step: int | None
    val_cells: int | None
    changed: bool
    improved: bool
    worse: bool


def summarize_run(result: Any, records: Iterable[Any] = (), start_step: int = 0) -> RunSummary:
    """Sum up a run from its :class:`TrainResult` and the progress records seen.

    ``records`` are the :class:`TrainProgress` records yielded during the run (the
    result's ``history`` is used as well); ``start_step`` is the step the run
    started at (0, or the step of a resumed checkpoint). The starting model's F1
    is the result's ``start_val_f1`` (else a validation at ``start_step``).

    A kept model counts as *improved* on a fine-tuned start only when its
    validation F1 beats the start's by more than chance: more than two cells'
    worth (:func:`~napari_unet.core.training.validate.clearly_better`, for the
    ``n`` held-out cells the engine reports).
    """
    validated: dict[int, Any] = {}
    for rec in [*records, *getattr(result, "history", [])]:
        if getattr(rec, "val_f1", None) is not None:
            validated[int(rec.step)] = rec  # the latest record of a step wins
    start = validated.get(int(start_step))
    last_step = max(validated) if validated else None
    last = validated[last_step] if last_step is not None else None
    kept = result.best_step
    kept_f1 = None if result.best_val_f1 is None else float(result.best_val_f1)
    start_f1 = getattr(result, "start_val_f1", None)
    if start_f1 is None and start is not None:
        start_f1 = start.val_f1
    start_f1 = None if start_f1 is None else float(start_f1)
    last_f1 = None if last is None else float(last.val_f1)
    cells = getattr(result, "val_cells", None) or getattr(last, "val_cells", None)
    changed = result.steps > start_step if kept is None else int(kept) > int(start_step)
    if kept is None:  # never validated: a complete run is taken on trust
        improved = changed and result.stopped_reason in ("max_steps", "max_time")
    else:  # an equal F1 (say 1.00 on a few cells) is no evidence of a better model
        improved = changed and (start_f1 is None or (
            kept_f1 is not None and clearly_better(kept_f1, start_f1, cells)))
    worse = start_f1 is not None and last_f1 is not None and last_f1 < start_f1 - WORSE_BY
    return RunSummary(
        stopped_reason=str(result.stopped_reason), steps=int(result.steps),
        seconds=float(result.seconds), kept_step=None if kept is None else int(kept),
        kept_f1=kept_f1, start_f1=start_f1, last_f1=last_f1, last_step=last_step,
        val_cells=cells, changed=changed, improved=improved, worse=worse,
    )
