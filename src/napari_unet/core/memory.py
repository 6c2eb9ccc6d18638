"""Running out of accelerator memory: one back-off rule for prediction and training.

On a GPU (CUDA or Apple MPS) an out-of-memory error is not the end of the
work: the batch is halved first, down to one, then the spatial size of a tile
(prediction) or a patch (training) is halved, and the work goes on. Every
caller (tiled prediction, block-wise segmentation, training) asks one
:class:`Backoff` what to try next, so the rule and its messages live here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["Backoff", "is_out_of_memory", "release_cached_memory", "OutOfDeviceMemory"]


class OutOfDeviceMemory(torch.OutOfMemoryError):
    """Out of memory even with a batch of one and the smallest size; the message says what to do."""


def is_out_of_memory(err: BaseException, device: torch.device | str) -> bool:
    """True for an out-of-memory error of an accelerator that backing off can help.

    CUDA raises :class:`torch.OutOfMemoryError`; Apple MPS raises a RuntimeError
    that says "out of memory". On the CPU nothing is backed off (a MemoryError is
    a real limit of the machine).
    """
    kind = torch.device(device).type
    if kind == "cpu":
        return False
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def release_cached_memory(device: torch.device | str) -> None:
    """Give the allocator's cached blocks back (after an out-of-memory error)."""
    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.empty_cache()
    elif kind == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


@dataclass
class Backoff:
    """The batch size and the spatial size to try next after running out of memory.

    Parameters
    ----------
    batch : int
        Items (tiles or patches) per forward pass now.
    shape : (int, int)
        Spatial size now (a tile's network input, or a training patch).
    shrink : callable
        Returns the next smaller valid size for a size, or the same size when
        there is none.
    unit : str
        What ``shape`` measures, for messages ("tiles", "patches").

    Examples
    --------
    >>> b = Backoff(4, (256, 256), lambda s: (max(16, s[0] // 2), max(16, s[1] // 2)), "patches")
    >>> b.next("cpu"), b.next("cpu"), b.next("cpu")
    ('batch size 2', 'batch size 1', 'patches of 128x128')
    """

    batch: int
    shape: tuple[int, int]
    shrink: Callable[[tuple[int, int]], tuple[int, int]]
    unit: str = "tiles"

    def next(self, device: torch.device | str) -> str:
        """Release cached memory and step down once; returns what is used now.

        Raises
        ------
        OutOfDeviceMemory
            When the batch is 1 and the size cannot shrink any further.
        """
        release_cached_memory(device)
        if self.batch > 1:
            self.batch //= 2
            return f"batch size {self.batch}"
        smaller = tuple(int(s) for s in self.shrink(tuple(self.shape)))
        if smaller == tuple(self.shape):
            raise OutOfDeviceMemory(
                f"the {torch.device(device).type.upper()} device ran out of memory even with "
                f"one item of {self.unit} of {self.shape[0]}x{self.shape[1]} pixels; close "
                "other programs that use it, or use the CPU (device 'cpu')"
            )
        self.shape = (smaller[0], smaller[1])
        return f"{self.unit} of {self.shape[0]}x{self.shape[1]}"
