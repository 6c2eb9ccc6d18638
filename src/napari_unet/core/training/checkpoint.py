"""Training checkpoints: everything needed to continue a run exactly (``last.ckpt``).

A checkpoint is a ``torch.save`` dictionary of tensors and plain values, read
with ``weights_only=True`` (no code from the file ever runs) and written
atomically, so a run killed at any moment leaves the previous checkpoint whole.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..checkpoints import MAX_MODEL_BYTES, atomic_torch_save, check_torch_file
from ..model import UNet, model_from_dict, model_to_dict
from .records import TrainProgress, record_from_dict, record_to_dict

__all__ = ["CHECKPOINT_NAME", "BEST_MODEL_NAME", "FORMAT", "write_checkpoint",
           "read_checkpoint", "checkpoint_model", "checkpoint_history"]

CHECKPOINT_NAME = "last.ckpt"
BEST_MODEL_NAME = "best.pt"
FORMAT = "napari-unet-training-checkpoint"
VERSION = 2


def write_checkpoint(
    folder: Path,
    *,
    model: UNet,
    start_metadata: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    scaler: Any,
    generators: dict[str, torch.Tensor],
    step: int,
    elapsed: float,
    patch: tuple[int, int],
    batch: int,
    history: list[TrainProgress],
    best: dict[str, Any] | None,
    start_val_f1: float | None,
    settings: dict[str, Any],
) -> Path:
    """Write ``folder/last.ckpt`` atomically; returns its path."""
    state = model_to_dict(model)
    state["metadata"] = dict(start_metadata)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model": state,
        "optimizer": optimizer.state_dict(),
        "scaler": None if scaler is None else scaler.state_dict(),
        "generators": generators,
        "step": int(step),
        "elapsed": float(elapsed),
        "patch_shape": list(patch),
        "batch_size": int(batch),
        "history": [record_to_dict(h) for h in history],
        "best": best,
        "start_val_f1": start_val_f1,
        "settings": settings,
    }
    return atomic_torch_save(payload, folder / CHECKPOINT_NAME)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint written by :func:`write_checkpoint` (``path``: the file or its folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT_NAME
    if not p.is_file():
        raise FileNotFoundError(f"no training checkpoint at {p} (resume= takes the "
                                f"checkpoint_dir of an earlier run or its {CHECKPOINT_NAME})")
    # the weights, two optimizer moments and the best weights: bounded before reading
    check_torch_file(p, 4 * MAX_MODEL_BYTES, "training checkpoint")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means "not a checkpoint"
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else \
            type(err).__name__
        raise ValueError(f"{p} is not a readable training checkpoint: {reason}") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise ValueError(f"{p} is not a napari-unet training checkpoint (to fine-tune a model "
                         "file, pass it as model= instead of resume=)")
    if int(ck.get("version", 0)) != VERSION:
        raise ValueError(f"{p} was written by another version of napari-unet's training "
                         f"engine (checkpoint version {ck.get('version')}); start a new run "
                         "from its best.pt model instead (model=...best.pt)")
    return ck


def checkpoint_model(ck: dict[str, Any]) -> UNet:
    """The model of a checkpoint, with the metadata of the model the run started from."""
    return model_from_dict(ck["model"])


def checkpoint_history(ck: dict[str, Any]) -> list[TrainProgress]:
    """The progress records of a checkpoint."""
    return [record_from_dict(h) for h in ck.get("history", [])]
