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
    # channels-last weights are the CPU's layout only; the GPU ran with the usual one
    assert model.down[0][0].weight.is_contiguous()


def test_auto_tiles_use_gpu_memory(rng):
    model = UNet(depth=4, base_channels=16).eval()
    tile, batch = _auto_tile_and_batch(model, (4096, 4096), torch.device("cuda"), 1)
    assert tile[0] >= 1024 and batch == 1  # one large tile fills a GPU
    # smaller tiles (a smaller plane) go in batches that together fill the GPU as well
    tile, batch = _auto_tile_and_batch(model, (2048, 2048), torch.device("cuda"), 1)
    assert batch > 1
    image = rng.normal(size=(1500, 1300)).astype(np.float32)
    auto = predict_tiled(model, image, device="cuda")
    np.testing.assert_allclose(auto, predict_tiled(model, image, tile_shape=400, device="cuda"),
                               atol=1e-4)


def test_out_of_memory_retries_with_smaller_batches_then_tiles(rng):
    """Ask for far more than the GPU holds: the plane is redone with less, not failed.

    Whatever the card's size (an H200 holds nine 4096² tiles of this network), all but
    6 GiB of its free memory is taken first, as another program on the GPU would."""
    model = UNet(depth=4, base_channels=64).eval()
    image = rng.normal(size=(9000, 9000)).astype(np.float32)
    free, _ = torch.cuda.mem_get_info()
    hog = torch.empty(max(free - 6 * 2**30, 0), dtype=torch.uint8, device="cuda")
    try:
        with pytest.warns(ResourceWarning, match="out of memory"):
            probs = predict_tiled(model, image, tile_shape=4096, batch_size=64, device="cuda")
    finally:
        del hog
        torch.cuda.empty_cache()
    assert probs.shape == (2, 9000, 9000) and np.isfinite(probs).all()
    reference = predict_tiled(model, image, tile_shape=1024, batch_size=2, device="cuda")
    np.testing.assert_allclose(probs, reference, atol=1e-4)


def test_segment_overlaps_decoding_with_the_network_and_gives_the_same_labels(rng):
    """On a GPU a block is labelled while the next is predicted (a batch is read while the
    one before runs): the labels are those of the probabilities it returns, and those
    are the CPU's."""
    from scipy import ndimage as ndi

    from napari_unet import probabilities_to_labels, segment
    from napari_unet.core.blocks import plan_segmentation
    from napari_unet.core.options import SegmentOptions

    model = UNet(depth=3, base_channels=8).eval()
    image = ndi.gaussian_filter(rng.normal(size=(700, 620)), 3).astype(np.float32)
    cpu = predict_tiled(model, image, tile_shape=200, device="cpu")
    threshold = float(np.percentile(cpu[1], 55))
    settings = dict(tile_shape=200, batch_size=2, block_shape=250, threshold=threshold,
                    min_size=6, grow=2, split=0.35, device="cuda")
    plan = plan_segmentation(image, model, SegmentOptions(**settings))
    assert plan.overlap and plan.grid.total >= 4 and plan.grid.plan.total > 2 * plan.batch
    labels, probs = segment(image, model, return_probabilities=True, **settings)
    np.testing.assert_allclose(probs, cpu, atol=1e-4)
    reference = probabilities_to_labels(probs, model.classes, threshold=threshold, min_size=6,
                                        grow=2, split=0.35)  # cuts made in threads too
    assert reference.max() > 20
    np.testing.assert_array_equal(labels, reference)


# ------------------------------------------------------------------ training
def _nuclei(n=2, size=256):
    from napari_unet.core.synthetic import make_sample

    pairs = [make_sample("nuclei", (size, size), seed=s, touching=0.8, density=0.35)
             for s in range(n)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def test_training_data_stays_on_the_gpu_and_batches_are_made_there():
    from napari_unet.core.training import TrainConfig
    from napari_unet.core.training.loop import Trainer
    from napari_unet.core.training.setup import io_shapes

    images, labels = _nuclei()
    trainer = Trainer(images, labels, UNet(depth=3, base_channels=8, dropout=0.0),
                      TrainConfig(device="cuda", validation=0, seed=0))
    batches = trainer.prepare().batches
    assert batches.storage.type == "cuda" and not batches.streamed
    assert batches.image.is_cuda and batches.centres.is_cuda
    in_shape, out_shape = io_shapes(trainer.model, (128, 128))
    x, target, weight = batches.sample(8, in_shape, out_shape)
    assert x.is_cuda and target.is_cuda and weight.is_cuda
    assert x.shape == (8, 1, *in_shape) and target.shape == (8, *out_shape)


def test_streamed_training_data_gives_the_same_batches_as_the_cpu():
    """Data too large for the GPU stays in pinned host memory: batches are made on the CPU,
    one ahead, and copied; the same seed gives the same batches as CPU training."""
    from napari_unet.core.training import TrainConfig
    from napari_unet.core.training.loop import Trainer
    from napari_unet.core.training.setup import io_shapes

    images, labels = _nuclei()
    net = UNet(depth=3, base_channels=8, dropout=0.0)
    streamed = Trainer(images, labels, net, TrainConfig(device="cuda", validation=0, seed=0))
    streamed.storage = "host"
    gpu_batches = streamed.prepare().batches
    cpu_batches = Trainer(images, labels, net,
                          TrainConfig(device="cpu", validation=0, seed=0)).prepare().batches
    assert gpu_batches.streamed and gpu_batches.image.is_pinned()
    in_shape, out_shape = io_shapes(net, (96, 96))
    for _ in range(3):  # the second and third come from the batch made ahead
        got = gpu_batches.sample(4, in_shape, out_shape)
        want = cpu_batches.sample(4, in_shape, out_shape)
        assert all(t.is_cuda for t in got)
        for a, b in zip(got, want):
            torch.testing.assert_close(a.cpu(), b)
    gpu_batches.close()


def test_training_in_mixed_precision_with_the_automatic_batch():
    from napari_unet import train

    images, labels = _nuclei(2, 384)
    result = train(images, labels, UNet(depth=4, base_channels=16, dropout=0.0),
                   max_steps=60, device="cuda", seed=0, validation=0.3)
    assert result.steps == 60 and result.history[-1].batch_size >= 2
    assert np.isfinite([h.loss for h in result.history]).all()
    assert result.val_cells and result.best_val_f1 is not None
    assert next(result.model.parameters()).device.type == "cpu"
    assert result.model.metadata["training"]["device"].startswith("cuda")


def test_training_out_of_memory_backs_off_for_real():
    """A batch far beyond the GPU's memory: halved until it fits, and training goes on."""
    from napari_unet import train

    images, labels = _nuclei(1, 1024)
    result = train(images, labels, UNet(depth=4, base_channels=64, dropout=0.0),
                   max_steps=3, patch_shape=1024, batch_size=4096, device="cuda", seed=0,
                   validation=0, report_interval=0)
    assert result.steps == 3
    notes = [h.message for h in result.history if h.message]
    assert notes and "out of memory" in notes[0]
    assert result.history[-1].batch_size < 4096
