"""Setting a run up: the model to start from, patch and batch sizes, optimiser, precision."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from .. import checkpoints
from ..loading import load_model
from ..model import UNet, copy_model
from .config import TARGET_MODES, TrainConfig, new_model

__all__ = ["start_model", "patch_and_batch", "io_shapes", "make_optimizer", "precision",
           "lr_factor", "smaller_patch", "CPU_PATCH", "CPU_BATCH", "CUDA_PATCH"]

# patch (target pixels per side) and batch size on CPU and Apple MPS; patch on CUDA
CPU_PATCH, CPU_BATCH = 128, 4
MPS_PATCH, MPS_BATCH = 192, 4
CUDA_PATCH = 256
MIN_PATCH = 16


def start_model(model: Any, config: TrainConfig) -> tuple[UNet, str]:
    """The model training starts from (a copy), and what it was, for the record.

    None means the packaged pretrained model when its classes fit the target
    mode, else a new network.
    """
    if model is None:
        packaged = checkpoints.packaged_model_path("default")
        if packaged is not None:
            default = load_model(packaged)
            if default.n_classes == TARGET_MODES[config.target_mode]:
                return default, "default"
        return new_model(config.target_mode), "new"
    if isinstance(model, UNet):
        return copy_model(model), str(model.metadata.get("path", "model"))
    if isinstance(model, (str, os.PathLike)):
        return load_model(model), str(model)
    raise ValueError(f"model must be None, a UNet or a model file path, not "
                     f"{type(model).__name__}")


def io_shapes(model: UNet, patch: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Network input and output shape for a target patch of ``patch`` pixels."""
    if model.padding == "valid":
        in_shape = model.valid_input_shape(patch)
    else:
        s = model.stride
        in_shape = tuple(int(math.ceil(max(n, s) / s) * s) for n in patch)
    out_shape = model.output_shape(in_shape)
    return (int(in_shape[0]), int(in_shape[1])), (int(out_shape[0]), int(out_shape[1]))


def smaller_patch(patch: tuple[int, int]) -> tuple[int, int]:
    """Half the patch, not below 16 pixels (the spatial step of the out-of-memory back-off)."""
    return max(MIN_PATCH, patch[0] // 2), max(MIN_PATCH, patch[1] // 2)


def precision(device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a training step: bfloat16 on CUDA GPUs that have it, else
    float16 (with loss scaling); None (float32) on the CPU and Apple MPS."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _probe_batch(model: UNet, in_shape: tuple[int, int], device: torch.device,
                 amp: torch.dtype | None, max_batch: int) -> int:
    """The batch that fits in about 70 % of the GPU's free memory, from one measured step."""
    probe = 2
    try:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        x = torch.zeros(probe, model.in_channels, *in_shape, device=device)
        with nullcontext() if amp is None else torch.autocast("cuda", dtype=amp):
            out = model(x)
        out.float().mean().backward()
        peak = torch.cuda.max_memory_allocated(device)
    except torch.OutOfMemoryError:
        return 1
    finally:
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
    per_sample = max((peak - base) / probe, 1.0)
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(max_batch, (0.7 * free) // per_sample)))


def patch_and_batch(model: UNet, plane_shapes: Sequence[Sequence[int]], config: TrainConfig,
                    device: torch.device, amp: torch.dtype | None) -> tuple[tuple[int, int], int]:
    """Patch and batch size: as configured, else the device's defaults (on CUDA the batch
    that fits its free memory, up to ``config.max_batch``). The model must be on ``device``."""
    largest = (max(s[0] for s in plane_shapes), max(s[1] for s in plane_shapes))
    default_patch = {"cuda": CUDA_PATCH, "mps": MPS_PATCH}.get(device.type, CPU_PATCH)
    patch = config.patch_shape
    if patch is None:  # never much larger than the images need
        patch = tuple(int(min(default_patch, max(MIN_PATCH, math.ceil(n / 8) * 8)))
                      for n in largest)
    batch = config.batch_size
    if batch is None:
        if device.type == "cuda":
            batch = _probe_batch(model, io_shapes(model, patch)[0], device, amp,
                                 config.max_batch)
        else:
            batch = MPS_BATCH if device.type == "mps" else CPU_BATCH
    return (int(patch[0]), int(patch[1])), int(batch)


def make_optimizer(model: UNet, config: TrainConfig, device: torch.device
                   ) -> torch.optim.Optimizer:
    """Adam, or SGD with momentum 0.99 (the paper); fused kernels on CUDA."""
    extra = {"fused": True} if device.type == "cuda" else {}
    lr = config.peak_lr
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, **extra)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.99, **extra)


def lr_factor(step: int, config: TrainConfig, elapsed: float, warmup: int,
              final_fraction: float) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to ``final_fraction``.

    The decay follows the step or time limit (whichever is nearer); without a
    limit there is none.
    """
    warm = min(1.0, (step + 1) / max(warmup, 1))
    fracs = []
    if config.max_steps:
        fracs.append(step / config.max_steps)
    if config.max_time:
        fracs.append(elapsed / float(config.max_time))
    if not fracs:
        return warm
    f = min(1.0, max(fracs))
    low = final_fraction if config.final_lr_fraction is None else float(config.final_lr_fraction)
    return warm * (low + (1 - low) * 0.5 * (1 + math.cos(math.pi * f)))


def new_seed() -> int:
    """A fresh random seed (when none is given)."""
    return int(np.random.SeedSequence().entropy % 2**63)
