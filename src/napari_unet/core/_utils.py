"""Small shared helpers of the core: devices, generators, array checks."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = ["resolve_device", "available_devices", "run_to_completion", "is_lazy_array"]

R = TypeVar("R")


def available_devices() -> list[str]:
    """Devices this machine can compute on, best first (``"cuda"``, ``"mps"``, ``"cpu"``)."""
    devices = []
    if torch.cuda.is_available():
        devices.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    devices.append("cpu")
    return devices


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``/None, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` into a device.

    ``"auto"`` (or None) picks CUDA, then Apple MPS, then the CPU. Asking for a
    device this machine lacks raises a ValueError that lists the available ones.
    """
    if isinstance(device, torch.device):
        return device
    name = "auto" if device is None else str(device).lower()
    if name == "auto":
        return torch.device(available_devices()[0])
    kind = name.split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'mps'")
    if kind not in available_devices():
        raise ValueError(
            f"device {device!r} is not available on this machine; available: "
            f"{', '.join(available_devices())} (or 'auto')"
        )
    return torch.device(name)


def run_to_completion(generator: Generator[Any, Any, R]) -> R:
    """Exhaust a progress generator and return its result (the blocking form)."""
    while True:
        try:
            next(generator)
        except StopIteration as stop:
            return stop.value


def is_lazy_array(array: Any) -> bool:
    """True for array-likes that are not numpy arrays (dask, zarr, h5py, memmap-free views)."""
    return not isinstance(array, np.ndarray) and hasattr(array, "shape") and hasattr(
        array, "dtype"
    )
