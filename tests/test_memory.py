"""The one out-of-memory back-off, as prediction and block-wise segmentation use it.

A GPU is simulated on the CPU: a network that raises ``torch.OutOfMemoryError`` for
batches or tiles above a size, with the back-off switched on for the CPU device.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet import UNet, predict_tiled, segment
from napari_unet.core import blocks, memory, tiling
from napari_unet.core.memory import Backoff, OutOfDeviceMemory, is_out_of_memory


class SmallMemoryUNet(UNet):
    """Raises out-of-memory for more than ``max_batch`` tiles or inputs above ``max_side``."""

    max_batch = 1
    max_side = 10**9
    calls: list

    def forward(self, x):  # noqa: D102
        self.calls.append(tuple(x.shape))
        if x.shape[0] > self.max_batch or max(x.shape[-2:]) > self.max_side:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return super().forward(x)


@pytest.fixture
def backoff_on_cpu(monkeypatch):
    """Treat the simulated errors on the CPU as a GPU's, in every module that backs off."""
    def oom(err, device):
        return isinstance(err, torch.OutOfMemoryError)

    for module in (tiling, blocks):
        monkeypatch.setattr(module, "is_out_of_memory", oom)


def small_net(max_batch=1, max_side=10**9):
    torch.manual_seed(7)  # the same weights every time
    net = SmallMemoryUNet(depth=2, base_channels=4, dropout=0.0).eval()
    net.max_batch, net.max_side, net.calls = max_batch, max_side, []
    return net


def test_backoff_halves_the_batch_then_the_size_then_gives_up():
    b = Backoff(3, (100, 100), lambda s: (max(40, s[0] // 2), max(40, s[1] // 2)), "patches")
    assert [b.next("cpu") for _ in range(3)] == ["batch size 1", "patches of 50x50",
                                                  "patches of 40x40"]
    with pytest.raises(OutOfDeviceMemory, match="even with one item of patches of 40x40"):
        b.next("cpu")


def test_only_accelerator_errors_count():
    err = torch.OutOfMemoryError("x")
    assert is_out_of_memory(err, "cuda") and not is_out_of_memory(err, "cpu")
    assert is_out_of_memory(RuntimeError("MPS backend out of memory"), "mps")
    assert not is_out_of_memory(RuntimeError("shape mismatch"), "mps")


def test_prediction_backs_off_batch_then_tile(backoff_on_cpu, rng):
    image = rng.normal(size=(150, 130)).astype(np.float32)
    reference = predict_tiled(small_net(), image, tile_shape=60, batch_size=1)
    net = small_net(max_batch=1, max_side=70)
    with pytest.warns(ResourceWarning, match="out of memory") as warned:
        probs = predict_tiled(net, image, tile_shape=120, batch_size=4)
    np.testing.assert_allclose(probs, reference, atol=1e-5)
    text = " ".join(str(w.message) for w in warned)
    assert "batch size 2" in text and "batch size 1" in text and "tiles of" in text
    assert max(s[-1] for s in net.calls[-3:]) <= 70


def test_block_segmentation_backs_off_and_gives_identical_labels(backoff_on_cpu, rng):
    image = rng.normal(size=(140, 150)).astype(np.float32)
    net = small_net()
    reference = segment(image, net, tile_shape=60, batch_size=1, block_shape=64)
    tight = small_net(max_batch=1, max_side=70)
    with pytest.warns(ResourceWarning, match="out of memory"):
        labels = segment(image, tight, tile_shape=120, batch_size=2, block_shape=64)
    np.testing.assert_array_equal(labels, reference)


def test_no_memory_at_all_gives_one_clear_error(backoff_on_cpu, rng):
    image = rng.normal(size=(80, 80)).astype(np.float32)
    with pytest.raises(OutOfDeviceMemory, match="use the CPU"), \
            pytest.warns(ResourceWarning):
        predict_tiled(small_net(max_side=1), image, tile_shape=60, batch_size=2)


def test_cpu_out_of_memory_is_not_backed_off(rng):
    """On the CPU an allocation failure is a real limit: it is raised, not retried."""
    net = small_net(max_batch=0)
    with pytest.raises(torch.OutOfMemoryError):
        predict_tiled(net, rng.normal(size=(60, 60)).astype(np.float32), tile_shape=60)
    assert len(net.calls) == 1
    assert memory.is_out_of_memory(torch.OutOfMemoryError(), "cpu") is False
