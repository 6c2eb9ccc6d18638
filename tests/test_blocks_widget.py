"""The Segment layer widget on lazy layers (dask, zarr, multiscale): block by block, on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from blocks_helpers import as_image, border_cells, passthrough_unet

from napari_unet import save_model, segment

pytest.importorskip("napari")
da = pytest.importorskip("dask.array")
zarr = pytest.importorskip("zarr")
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture
def net():
    return passthrough_unet()


@pytest.fixture
def widget(make_napari_viewer, tmp_path, monkeypatch, net):
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setenv("NAPARI_UNET_MODELS_DIR", str(folder))
    save_model(net, folder / "pass.pt")
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-unet", "Segment layer")
    w.reset_choices()
    w.model.value = next(v for v in w.model.choices if isinstance(v, Path) and v.name == "pass.pt")
    return viewer, w


def wait_done(qtbot, w):
    qtbot.waitUntil(lambda: not w.running, timeout=60_000)


def test_dask_layer_is_segmented_into_a_zarr_backed_layer(widget, qtbot, net):
    viewer, w = widget
    truth, kept, _ = border_cells(net, (300, 280), 80, 40)
    image = as_image(truth, False)
    layer = viewer.add_image(da.from_array(image, chunks=(64, 64)), name="lazy", scale=(2, 2))
    w.reset_choices()
    w.image.value = layer
    w.tile.value = 80
    w.probabilities.value = True
    seen = []
    w.run()
    qtbot.waitUntil(lambda: seen.append(w.status.value) or not w.running, timeout=60_000)
    labels = viewer.layers["lazy (pass model)"]
    assert isinstance(labels.data, zarr.Array)  # on disk, not in memory
    np.testing.assert_array_equal(labels.data[...], segment(image, net, tile_shape=80))
    assert labels.data[...].max() == len(kept)
    np.testing.assert_allclose(labels.scale, layer.scale)
    assert viewer.layers["lazy cell probability (pass model)"].data.shape == image.shape
    assert f"{len(kept)} cells found" in w.status.value and "stored in" in w.status.value


def test_multiscale_layer_gives_a_multiscale_labels_layer(widget, qtbot, net):
    viewer, w = widget
    truth, _, _ = border_cells(net, (256, 256), 80, 40)
    image = as_image(truth, False)
    levels = [da.from_array(image, chunks=64), da.from_array(image[::2, ::2], chunks=64),
              da.from_array(image[::4, ::4], chunks=64)]
    layer = viewer.add_image(levels, name="pyramid", multiscale=True)
    w.reset_choices()
    w.image.value = layer
    w.tile.value = 80
    w.run()
    wait_done(qtbot, w)
    labels = viewer.layers["pyramid (pass model)"]
    assert labels.multiscale and len(labels.data) == 3
    assert [tuple(s) for s in labels.level_shapes] == [(256, 256), (128, 128), (64, 64)]
    expected = segment(image, net, tile_shape=80)
    np.testing.assert_array_equal(np.asarray(labels.data[0]), expected)
    np.testing.assert_array_equal(np.asarray(labels.data[2]), expected[::4, ::4])


def test_current_plane_of_a_lazy_stack(widget, qtbot, net):
    viewer, w = widget
    truth, _, _ = border_cells(net, (100, 110), 80, 40)
    image = as_image(truth, False)
    stack = da.from_array(np.stack([image, image[::-1], image[:, ::-1]]), chunks=(1, 50, 50))
    viewer.add_image(stack, name="stack")
    viewer.dims.set_current_step(0, 1)
    w.reset_choices()
    w.image.value = viewer.layers["stack"]
    w.tile.value = 80
    w.current_plane.value = True
    w.run()
    wait_done(qtbot, w)
    labels = viewer.layers["stack (pass model)"].data
    assert labels.shape == (3, 100, 110)
    assert labels[0].max() == 0 and labels[2].max() == 0
    np.testing.assert_array_equal(labels[1], segment(image[::-1], net, tile_shape=80))


def test_cancel_on_a_lazy_layer_leaves_nothing(widget, qtbot, monkeypatch, tmp_path):
    import tempfile

    viewer, w = widget
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    image = np.random.default_rng(0).normal(size=(900, 900)).astype(np.float32)
    viewer.add_image(da.from_array(image, chunks=300), name="big")
    w.reset_choices()
    w.image.value = viewer.layers["big"]
    w.tile.value = 80
    w.run()
    qtbot.waitUntil(lambda: w.done_units >= 1, timeout=30_000)
    w.cancel()
    wait_done(qtbot, w)
    assert [layer.name for layer in viewer.layers] == ["big"]
    assert "Cancelled" in w.status.value
    assert list((tmp_path / "tmp").iterdir()) == []  # the temporary zarr is gone
