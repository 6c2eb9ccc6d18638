"""GPU paths: run where CUDA is available (CI has none; see the closing notes for GPU runs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet import UNet, predict_tiled
from napari_unet.core.tiling import _auto_tile_and_batch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def exact_float32():
    """Plain float32 (no TF32) so GPU results can be compared with the CPU's."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def test_cuda_matches_cpu_and_batches_tiles(rng):
    model = UNet(depth=3, base_channels=8).eval()
    image = rng.normal(size=(700, 500)).astype(np.float32)
    cpu = predict_tiled(model, image, tile_shape=300, device="cpu")
    gpu = predict_tiled(model, image, tile_shape=300, batch_size=4, device="cuda")
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)
    assert next(model.parameters()).device.type == "cpu", "the model is left where it was"


def test_auto_tiles_use_gpu_memory(rng):
    model = UNet(depth=4, base_channels=16).eval()
    tile, batch = _auto_tile_and_batch(model, (4096, 4096), torch.device("cuda"), 1)
    assert tile[0] >= 1024 and batch > 1
    image = rng.normal(size=(1500, 1300)).astype(np.float32)
    auto = predict_tiled(model, image, device="cuda")
    np.testing.assert_allclose(auto, predict_tiled(model, image, tile_shape=400, device="cuda"),
                               atol=1e-4)


def test_out_of_memory_retries_with_smaller_batches_then_tiles(rng):
    """Ask for far more than the GPU holds: the plane is redone with less, not failed."""
    model = UNet(depth=4, base_channels=64).eval()
    image = rng.normal(size=(9000, 9000)).astype(np.float32)
    with pytest.warns(ResourceWarning, match="out of memory"):
        probs = predict_tiled(model, image, tile_shape=4096, batch_size=64, device="cuda")
    assert probs.shape == (2, 9000, 9000) and np.isfinite(probs).all()
    reference = predict_tiled(model, image, tile_shape=1024, batch_size=2, device="cuda")
    np.testing.assert_allclose(probs, reference, atol=1e-4)
