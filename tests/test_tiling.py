"""Seamless overlap-tile prediction equals one forward pass over the mirrored image.

The networks here compute in float64, so that a seam (an error of the tiling) would show far
above the rounding noise: in float32, convolution algorithms that differ with the tile size
(e.g. Winograd in oneDNN) already differ by ~1e-4 between two tile sizes on some CPUs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet import Normalization, UNet, iter_predict_tiled, predict_tiled
from napari_unet.core.tiling import ImageLayout, _smallest_tile, plan_tiles, reflect_index


@pytest.fixture(autouse=True)
def float64_networks():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


EXACT = 1e-6  # float64; the issue asks for 1e-4 in float32


def whole_image_pass(model: UNet, image2d: np.ndarray) -> np.ndarray:
    """Reference: normalise, mirror-pad to one valid size, run the network once, crop."""
    x = model.normalization.apply(image2d)
    h, w = x.shape
    off = model.margin
    if model.padding == "valid":
        size, crop = model.valid_input_shape((h, w)), 0
    else:
        size, crop = [_smallest_tile(model, n) for n in (h, w)], off
    rows = reflect_index(np.arange(-off, size[0] - off), h)
    cols = reflect_index(np.arange(-off, size[1] - off), w)
    padded = torch.from_numpy(np.ascontiguousarray(x[rows[:, None], cols[None, :]]))
    padded = padded.to(next(model.parameters()).dtype)
    with torch.inference_mode():
        probs = torch.softmax(model.eval()(padded[None, None]), dim=1)[0].numpy()
    return probs[:, crop : crop + h, crop : crop + w]


NETS = {
    "valid-d2": dict(depth=2, base_channels=4),
    "valid-d3-bilinear": dict(depth=3, base_channels=3, upsample="bilinear"),
    "same-d2": dict(depth=2, base_channels=4, padding="same"),
    "same-d3-batchnorm-bilinear": dict(depth=3, base_channels=3, padding="same", norm="batch",
                                       upsample="bilinear"),
}


@pytest.mark.parametrize("net_name", list(NETS))
@pytest.mark.parametrize("shape", [(1, 1), (1, 29), (29, 1), (2, 3), (23, 41), (64, 64),
                                   (97, 35), (130, 77)])
def test_tiled_equals_whole_image_pass(net_name, shape, rng):
    model = UNet(**NETS[net_name]).eval()
    for m in model.modules():  # give batch norm non-trivial running statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    image = rng.normal(100, 20, shape).astype(np.float32)
    reference = whole_image_pass(model, image)
    smallest = _smallest_tile(model, model.stride)
    for tile in [1, smallest, smallest + 7, 61, 100, (smallest, 150), 400]:
        probs = predict_tiled(model, image, tile_shape=tile)
        assert probs.shape == (2, *shape) and probs.dtype == np.float32
        np.testing.assert_allclose(probs, reference, atol=EXACT, err_msg=f"tile {tile}")
    auto = predict_tiled(model, image)
    np.testing.assert_allclose(auto, reference, atol=EXACT)


def test_paper_tile_on_paper_network_is_seamless(rng):
    """The paper's network (in float32, as used) with its 572x572 tiles, 2x2 tiles."""
    model = UNet(base_channels=2).float().eval()
    image = rng.integers(0, 4096, (500, 430), dtype=np.uint16)
    plan = plan_tiles(model, image.shape, (572, 572))
    assert plan.total == 4 and plan.in_shape[0] <= 572
    np.testing.assert_allclose(
        predict_tiled(model, image, tile_shape=572), whole_image_pass(model, image), atol=5e-4
    )


def test_group_norm_tiles_are_close_not_exact(rng):
    model = UNet(depth=2, base_channels=8, padding="same", norm="group").eval()
    image = rng.normal(size=(90, 90)).astype(np.float32)
    tiled = predict_tiled(model, image, tile_shape=60)
    assert np.isfinite(tiled).all() and np.allclose(tiled.sum(0), 1, atol=1e-5)


def test_reflect_index_matches_numpy_pad():
    for n in [1, 2, 5]:
        x = np.arange(n)
        padded = np.pad(x, 7, mode="reflect") if n > 1 else np.zeros(n + 14, int)
        np.testing.assert_array_equal(reflect_index(np.arange(-7, n + 7), n), padded)


def test_progress_and_cancel(rng):
    model = UNet(depth=2, base_channels=4)
    image = rng.normal(size=(200, 200)).astype(np.float32)
    gen = iter_predict_tiled(model, image, tile_shape=60)
    first = next(gen)
    assert first == (0, first.total) and first.total > 4
    second = next(gen)
    assert second.done == 1
    gen.close()  # cancelling between tiles is just closing the generator
    with pytest.raises(StopIteration):
        next(gen)
    steps = []
    gen = iter_predict_tiled(model, image, tile_shape=60, batch_size=3)
    try:
        while True:
            steps.append(next(gen))
    except StopIteration as stop:
        result = stop.value
    assert steps[-1].done == steps[-1].total and result.shape == (2, 200, 200)
    assert all(b.done - a.done <= 3 for a, b in zip(steps, steps[1:]))


def test_model_state_is_restored(rng):
    model = UNet(depth=1, base_channels=2).train()
    predict_tiled(model, rng.normal(size=(30, 30)))
    assert model.training


# ---------------------------------------------------------------- layouts
def test_stack_is_predicted_plane_by_plane(rng):
    model = UNet(depth=2, base_channels=4).eval()
    stack = rng.normal(size=(3, 40, 50)).astype(np.float32)
    stack[1] *= 100  # each plane is normalised on its own
    probs = predict_tiled(model, stack, tile_shape=64)
    assert probs.shape == (2, 3, 40, 50)
    for z in range(3):
        np.testing.assert_allclose(probs[:, z], whole_image_pass(model, stack[z]), atol=EXACT)


def test_channels_first_and_rgb(rng):
    model = UNet(in_channels=3, depth=2, base_channels=4).eval()
    cyx = rng.normal(size=(3, 40, 50)).astype(np.float32)
    yxc = np.moveaxis(cyx, 0, -1).copy()
    a = predict_tiled(model, cyx, tile_shape=64)
    b = predict_tiled(model, yxc, tile_shape=64)
    assert a.shape == b.shape == (2, 40, 50)
    np.testing.assert_allclose(a, b, atol=1e-5)
    rgba = np.concatenate([yxc, np.ones((40, 50, 1), np.float32)], axis=-1)
    np.testing.assert_allclose(predict_tiled(model, rgba, tile_shape=64), b, atol=1e-5)


def test_rgb_image_with_gray_model_uses_luminance(rng):
    model = UNet(depth=2, base_channels=4).eval()
    gray = rng.integers(0, 255, (40, 50)).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    np.testing.assert_allclose(
        predict_tiled(model, rgb, tile_shape=64), predict_tiled(model, gray, tile_shape=64),
        atol=1e-4,
    )


def test_layout_inference_and_errors():
    assert ImageLayout.infer((10, 20), 1).axes == "yx"
    assert ImageLayout.infer((5, 10, 20), 1).axes == "zyx"
    assert ImageLayout.infer((10, 20, 3), 1).gray_from_rgb
    assert ImageLayout.infer((2, 10, 20), 2).axes == "cyx"
    assert ImageLayout.infer((4, 2, 10, 20), 2).axes == "zcyx"
    with pytest.raises(ValueError, match="takes 1 channel"):
        ImageLayout.infer((3, 10, 20), 1, axes="cyx")
    with pytest.raises(ValueError, match="4 dimensions|5 dimensions"):
        ImageLayout.infer((1, 2, 3, 4, 5), 1)
    with pytest.raises(ValueError, match="takes 2 channel"):
        ImageLayout.infer((10, 20), 2)
    with pytest.raises(ValueError, match="axes='zz'"):
        ImageLayout.infer((10, 20), 1, axes="zz")
    with pytest.raises(ValueError, match="empty"):
        ImageLayout.infer((0, 20), 1)


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.uint16, np.int16, np.int32, np.uint32, np.float16, np.float32,
              np.float64, bool]
)
def test_any_numeric_dtype_and_input_untouched(dtype, rng):
    model = UNet(depth=2, base_channels=4).eval()
    image = (rng.random((37, 45)) * 200).astype(dtype)
    before = image.copy()
    probs = predict_tiled(model, image, tile_shape=64)
    assert probs.dtype == np.float32 and np.isfinite(probs).all()
    np.testing.assert_array_equal(image, before)
    if dtype is not bool:
        np.testing.assert_allclose(
            probs, predict_tiled(model, image.astype(np.float64), tile_shape=64), atol=1e-4
        )


def test_nan_is_refused_clearly(rng):
    model = UNet(depth=1, base_channels=2)
    image = rng.normal(size=(30, 30))
    image[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        predict_tiled(model, image)
    with pytest.raises(ValueError, match="numeric"):
        predict_tiled(model, np.array([["a"] * 4] * 4))


def test_normalization_is_the_models(rng):
    model = UNet(depth=2, base_channels=4).eval()
    image = rng.normal(size=(40, 40)).astype(np.float32)
    default = predict_tiled(model, image)
    model.normalization = Normalization(low=0, high=100)
    changed = predict_tiled(model, image)
    assert not np.allclose(default, changed, atol=1e-4)
    np.testing.assert_allclose(
        changed, predict_tiled(model, image, normalization=Normalization(0, 100)), atol=1e-6
    )


# ------------------------------------------------------------- lazy input
class CountingArray:
    """An array-like that records its reads, to prove tiles are read lazily.

    Reads with a step (the subsample for the normalisation statistics) are counted apart.
    """

    def __init__(self, data):
        self.data, self.shape, self.dtype = data, data.shape, data.dtype
        self.largest, self.strided = 0, 0

    def __getitem__(self, key):
        out = self.data[key]
        if any(isinstance(k, slice) and k.step is not None for k in key):
            self.strided += 1
        else:
            self.largest = max(self.largest, out.size)
        return out


def test_dask_and_zarr_input_are_read_tile_by_tile(rng):
    da = pytest.importorskip("dask.array")
    zarr = pytest.importorskip("zarr")
    model = UNet(depth=2, base_channels=4).eval()
    image = rng.normal(size=(300, 260)).astype(np.float32)
    expected = predict_tiled(model, image, tile_shape=80)
    lazy = da.from_array(image, chunks=(64, 64))
    np.testing.assert_allclose(predict_tiled(model, lazy, tile_shape=80), expected, atol=1e-5)
    z = zarr.zeros(image.shape, chunks=(64, 64), dtype=image.dtype)
    z[:] = image
    np.testing.assert_allclose(predict_tiled(model, z, tile_shape=80), expected, atol=1e-5)
    counting = CountingArray(image)
    np.testing.assert_allclose(predict_tiled(model, counting, tile_shape=80), expected, atol=1e-5)
    assert counting.largest <= 80 * 80 < image.size / 10


def test_statistics_of_large_planes_come_from_a_subsample(monkeypatch, rng):
    from napari_unet.core import tiling

    model = UNet(depth=2, base_channels=4).eval()
    image = CountingArray(rng.normal(size=(300, 260)).astype(np.float32))
    original = tiling.ImageLayout.sample_slices
    monkeypatch.setattr(tiling.ImageLayout, "sample_slices",
                        lambda self, max_pixels=0: original(self, max_pixels=5000))
    predict_tiled(model, image, tile_shape=80)
    assert image.strided == 1 and image.largest <= 80 * 80


def test_out_array_receives_result(rng, tmp_path):
    model = UNet(depth=2, base_channels=4).eval()
    image = rng.normal(size=(50, 60)).astype(np.float32)
    out = np.lib.format.open_memmap(tmp_path / "p.npy", mode="w+", dtype=np.float32,
                                    shape=(2, 50, 60))
    result = predict_tiled(model, image, out=out)
    assert result is out
    np.testing.assert_allclose(np.asarray(out), predict_tiled(model, image), atol=1e-6)
    with pytest.raises(ValueError, match="out has shape"):
        predict_tiled(model, image, out=np.empty((2, 5, 5), np.float32))


def test_unknown_device_is_clear(rng):
    model = UNet(depth=1, base_channels=2)
    with pytest.raises(ValueError, match="unknown device"):
        predict_tiled(model, rng.normal(size=(20, 20)), device="tpu")
