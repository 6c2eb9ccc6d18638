"""The Segment layer widget in a real napari viewer (under Xvfb in CI)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import disks_image

from napari_unet import UNet, save_model

pytest.importorskip("napari")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setenv("NAPARI_UNET_MODELS_DIR", str(folder))
    save_model(UNet(depth=2, base_channels=4), folder / "tiny.pt", target={"gap": 1})
    return folder


@pytest.fixture
def widget(make_napari_viewer, models_dir):
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-unet", "Segment layer")
    return viewer, w


def wait_done(qtbot, w, timeout=60_000):
    qtbot.waitUntil(lambda: not w.running, timeout=timeout)


def test_segment_into_new_labels_layer(widget, qtbot):
    viewer, w = widget
    image, _ = disks_image((90, 110))
    layer = viewer.add_image(image, name="cells", scale=(0.5, 0.25), translate=(3, 4))
    w.reset_choices()
    assert w.image.value is layer
    names = [c.name for c in w.model.choices if hasattr(c, "name")]
    assert "tiny.pt" in names  # the user's model is offered (after the packaged one, if any)
    w.model.value = next(c for c in w.model.choices if getattr(c, "name", "") == "tiny.pt")
    w.probabilities.value = True
    w.run()
    assert w.running and not w.run_button.enabled
    wait_done(qtbot, w)
    labels = viewer.layers["cells labels"]
    assert labels.data.shape == image.shape and labels.data.dtype == np.int32
    np.testing.assert_allclose(labels.scale, layer.scale)
    np.testing.assert_allclose(labels.translate, layer.translate)
    probs = viewer.layers["cells probability"]
    assert probs.data.shape == image.shape
    assert w.run_button.enabled and not w.cancel_button.enabled


def test_write_into_existing_layer_is_one_undo_step(widget, qtbot):
    viewer, w = widget
    image, _ = disks_image((90, 110))
    viewer.add_image(image, name="cells")
    painted = np.zeros(image.shape, np.int32)
    painted[10:30, 10:30] = 7
    target = viewer.add_labels(painted.copy(), name="mine")
    w.reset_choices()
    w.image.value = viewer.layers["cells"]
    w.output.value = target
    w.tile.value = 64
    w.run()
    wait_done(qtbot, w)
    after = np.asarray(target.data).copy()
    np.testing.assert_array_equal(after[10:30, 10:30], 7)  # user labels are kept
    assert set(np.unique(after[painted == 0])) - {0} <= set(range(8, 10_000))
    target.undo()
    np.testing.assert_array_equal(target.data, painted)


def test_mismatched_target_is_refused(widget, qtbot):
    viewer, w = widget
    viewer.add_image(np.zeros((50, 60), np.float32), name="img")
    target = viewer.add_labels(np.zeros((10, 10), np.int32), name="small")
    w.reset_choices()
    w.image.value = viewer.layers["img"]
    w.output.value = target
    w.run()
    assert not w.running
    assert "has shape (10, 10)" in w.status.value and len(viewer.layers) == 2


def test_cancel_keeps_layers_unchanged(widget, qtbot):
    viewer, w = widget
    viewer.add_image(np.random.default_rng(0).normal(size=(900, 900)).astype(np.float32),
                     name="big")
    w.reset_choices()
    w.tile.value = 60
    w.run()
    qtbot.waitUntil(lambda: w.progress.value >= 1, timeout=30_000)
    w.cancel()
    wait_done(qtbot, w)
    assert [layer.name for layer in viewer.layers] == ["big"]
    assert "cancelled" in w.status.value


def test_current_plane_of_a_stack(widget, qtbot):
    viewer, w = widget
    image, _ = disks_image((60, 70))
    viewer.add_image(np.stack([image * 0.5, image, image * 2]), name="stack")
    viewer.dims.set_current_step(0, 1)
    w.reset_choices()
    w.current_plane.value = True
    w.run()
    wait_done(qtbot, w)
    labels = viewer.layers["stack labels"].data
    assert labels.shape == (3, 60, 70)
    assert labels[0].max() == 0 and labels[2].max() == 0
