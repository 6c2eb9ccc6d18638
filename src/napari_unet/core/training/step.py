"""One optimiser step on the training device."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from ..model import UNet
from .loss import training_loss

__all__ = ["train_step"]


def train_step(model: UNet, opt: torch.optim.Optimizer, scaler: Any, batch: tuple,
               loss_kind: str, amp: torch.dtype | None, dropout_seed: int | None
               ) -> torch.Tensor:
    """One optimiser step; returns the loss as a (detached) tensor on the device."""
    x, target, weight = batch
    dev = x.device
    forked = nullcontext()
    if dropout_seed is not None:  # dropout draws from torch's global generator: fork it
        devices = [dev.index or 0] if dev.type == "cuda" else []
        forked = torch.random.fork_rng(devices=devices, device_type=dev.type)
    with forked:
        if dropout_seed is not None:
            torch.manual_seed(dropout_seed)
        with (nullcontext() if amp is None else torch.autocast(device_type=dev.type, dtype=amp)):
            logits = model(x)
        loss = training_loss(logits, target.long(), weight, loss_kind)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
    return loss.detach()
