"""The Segment layer widget in a real napari viewer (under Xvfb in CI)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import disks_image
from gui import camera

from napari_unet import UNet, save_model, segment

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
    w.model.value = tiny_model(w)
    return viewer, w


def tiny_model(w):
    return next(c for c in w.model.choices if getattr(c, "name", "") == "tiny.pt")


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
    w.model.value = tiny_model(w)
    w.probabilities.value = True
    w.run()
    assert w.running and not w.run_button.enabled
    wait_done(qtbot, w)
    labels = viewer.layers["cells (tiny model)"]  # named after the image and the model
    assert labels.data.shape == image.shape and labels.data.dtype == np.int32
    np.testing.assert_allclose(labels.scale, layer.scale)
    np.testing.assert_allclose(labels.translate, layer.translate)
    probs = viewer.layers["cells cell probability (tiny model)"]
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
    w.tile.value = 80
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
    assert "(10 × 10) does not match the image (50 × 60)" in w.status.value
    assert len(viewer.layers) == 2


def test_cancel_keeps_layers_unchanged(widget, qtbot):
    viewer, w = widget
    viewer.add_image(np.random.default_rng(0).normal(size=(900, 900)).astype(np.float32),
                     name="big")
    w.reset_choices()
    w.tile.value = 80
    w.run()
    qtbot.waitUntil(lambda: w.done_units >= 1, timeout=30_000)
    w.cancel()
    wait_done(qtbot, w)
    assert [layer.name for layer in viewer.layers] == ["big"]
    assert "Cancelled" in w.status.value


def test_current_plane_of_a_stack(widget, qtbot):
    viewer, w = widget
    image, _ = disks_image((60, 70))
    viewer.add_image(np.stack([image * 0.5, image, image * 2]), name="stack")
    viewer.dims.set_current_step(0, 1)
    w.reset_choices()
    w.current_plane.value = True
    w.run()
    wait_done(qtbot, w)
    labels = viewer.layers[-1].data
    assert labels.shape == (3, 60, 70)
    assert labels[0].max() == 0 and labels[2].max() == 0


# ------------------------------------------------------------------------------ issue 13
@pytest.fixture
def passthrough(models_dir):
    """Models whose probabilities follow the pixel values (tests/blocks_helpers.py)."""
    from blocks_helpers import passthrough_unet

    two = passthrough_unet()
    two.metadata = {"name": "pass", "cell_diameter": 20.0, "split": 0.35}  # a nuclei model
    save_model(two, models_dir / "pass.pt")
    three = passthrough_unet(three_class=True)
    three.metadata = {"name": "pass3"}
    save_model(three, models_dir / "pass3.pt")
    return models_dir


def choose_model(w, name):
    w.model.reset_choices()
    w.model.value = next(c for c in w.model.choices if getattr(c, "name", "") == name)


@pytest.mark.parametrize(("zoom", "pan"), [(0.5, (0, 0)), (1.0, (40, -60)), (2.0, (0, 0)),
                                           (4.0, (0, 0)), (4.0, (-150, 220)), (3.0, (90, 90))])
def test_visible_region_is_what_the_canvas_shows(make_napari_viewer, passthrough, qtbot,
                                                 zoom, pan):
    """Item 1: 'visible region only' segments the rows and columns on the canvas, at
    several zooms and pans, for a scaled and translated layer; napari's own view of the
    layer (its corner pixels) agrees to the pixel."""
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1300, 900)
    image = np.random.default_rng(0).random((600, 700)).astype(np.float32)
    layer = viewer.add_image(image, name="img", scale=(0.8, 0.8), translate=(10, -20))
    _, w = viewer.window.add_plugin_dock_widget("napari-unet", "Segment layer")
    choose_model(w, "pass.pt")
    w.probabilities.value = True
    w.min_size.value = 0
    viewer.reset_view()
    cam = camera(viewer)
    cam.zoom = cam.zoom * zoom
    cam.center = (cam.center[-2] + pan[0], cam.center[-1] + pan[1])
    qtbot.wait(300)
    w.visible_only.native.click()
    w.run_button.native.click()
    wait_done(qtbot, w)
    probs = np.asarray(viewer.layers["img cell probability (pass model)"].data)
    rows = np.flatnonzero((probs > 0).any(axis=1))
    cols = np.flatnonzero((probs > 0).any(axis=0))
    # napari's own view of the layer: the data pixels at the canvas corners
    corners = np.asarray(layer.corner_pixels)
    assert abs(rows[0] - corners[0, 0]) <= 1 and abs(rows[-1] - corners[1, 0]) <= 1
    assert abs(cols[0] - corners[0, 1]) <= 1 and abs(cols[-1] - corners[1, 1]) <= 1
    # and the region is a full rectangle: everything in it, nothing outside
    assert (probs[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] > 0).all()
    if zoom >= 2:
        assert len(rows) < 600 and len(cols) < 700  # a part, not the whole image


def test_three_class_probability_shows_the_cell_interior(widget, passthrough, qtbot):
    """Item 13: the probability layer of a three-class model is the interior class, the
    class that segmentation grows cells from (core.model.cell_probability)."""
    from blocks_helpers import as_image
    from skimage.segmentation import find_boundaries

    viewer, w = widget
    truth = np.zeros((60, 80), np.int32)
    truth[10:30, 10:30] = 1
    truth[35:55, 40:70] = 2
    viewer.add_image(as_image(truth, three_class=True), name="img")
    choose_model(w, "pass3.pt")
    w.probabilities.value = True
    w.run()
    wait_done(qtbot, w)
    probs = np.asarray(viewer.layers["img cell probability (pass3 model)"].data)
    boundary = find_boundaries(truth, mode="inner")
    interior = (truth > 0) & ~boundary
    assert probs[interior].min() > 0.9  # the interior is bright ...
    assert probs[boundary].max() < 0.1  # ... the boundary ring is not
    labels = np.asarray(viewer.layers["img (pass3 model)"].data)
    assert labels.max() == 2


def test_threshold_min_size_and_cell_diameter(widget, passthrough, qtbot):
    """Item 12: the controls cellpose and StarDist users expect change the result."""
    viewer, w = widget
    image = np.zeros((120, 160), np.float32)
    image[10:40, 10:40] = 1.0     # a bright cell
    image[60:90, 60:90] = 0.45    # a faint cell: cell probability about 0.12
    image[100:104, 140:144] = 1.0  # a speck of 16 pixels
    layer = viewer.add_image(image, name="img")
    choose_model(w, "pass.pt")

    def cells():
        w.run()
        wait_done(qtbot, w)
        return np.asarray(viewer.layers[-1].data)

    assert w.fragments.value  # by default the speck is a fragment: far under a tenth
    w.min_size.value = 1      # of the typical cell (the median of 900 and 16 px)
    assert cells().max() == 1
    w.fragments.native.click()  # unticked: 'smallest cell' alone decides
    assert not w.fragments.value
    assert cells().max() == 2  # the bright cell and the speck
    w.threshold.value = 0.1
    assert cells().max() == 3  # the faint one too
    w.min_size.value = 50
    found = cells()
    assert found.max() == 2 and found[102, 142] == 0  # the speck is dropped
    # cells of 30 px with a model that knows cells of 20 px: rescaled by 2/3, and back
    w.diameter.value = 30
    w.threshold.value = 0.5
    w.min_size.value = 16
    found = cells()
    assert "rescaled" in w.status.value or "cells found" in w.status.value
    assert found.shape == image.shape and found.max() == 1
    overlap = (found > 0) & (image == 1.0)
    assert overlap.sum() / (image[10:40, 10:40] > 0).sum() > 0.9
    choose_model(w, "tiny.pt")  # a model that does not record its cell size
    w.run()
    assert not w.running and "does not record the size" in w.status.value
    del layer


def test_split_touching_nuclei_is_on_and_can_be_switched_off(widget, passthrough, qtbot):
    """Two nuclei that touch at a narrow waist make one blob of probability: ticked (the
    default of a nuclei model, which records it), the box cuts it in two; a click on it
    keeps it whole. A model that records no cut (a new network's) unticks it."""
    viewer, w = widget
    rows, cols = np.mgrid[:60, :90]
    image = (((rows - 30) ** 2 + (cols - 30) ** 2 <= 144)
             | ((rows - 30) ** 2 + (cols - 52) ** 2 <= 144)).astype(np.float32)
    viewer.add_image(image, name="pair")
    choose_model(w, "pass.pt")
    assert w.split.value and "touching nuclei" in w.split.text
    w.run()
    wait_done(qtbot, w)
    cut = np.asarray(viewer.layers[-1].data)
    assert cut.max() == 2 and cut[30, 30] != cut[30, 52]
    assert "2 cells" in w.status.value
    w.split.native.click()
    assert not w.split.value
    w.run()
    wait_done(qtbot, w)
    whole = np.asarray(viewer.layers[-1].data)
    assert whole.max() == 1 and (whole > 0).sum() == (cut > 0).sum()
    w.split.native.click()
    choose_model(w, "tiny.pt")
    assert not w.split.value
    choose_model(w, "pass.pt")
    assert w.split.value


def test_too_small_tiles_are_refused_in_plain_words(widget, qtbot):
    viewer, w = widget
    viewer.add_image(np.zeros((50, 60), np.float32), name="img")
    w.tile.value = 40
    w.run()
    assert not w.running
    assert "tile size of 40" in w.status.value and "at least 80" in w.status.value


def test_closing_the_viewer_while_segmenting_shows_no_error(make_napari_viewer, models_dir,
                                                            qtbot):
    """Item 10: no 'wrapped C/C++ object has been deleted' after the viewer is closed."""
    from napari.utils.notifications import notification_manager
    from qtpy.QtCore import QThreadPool

    seen = []
    notification_manager.notification_ready.connect(
        lambda n: seen.append((str(n.severity), str(n.message))))
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).normal(size=(900, 900)).astype(np.float32),
                     name="big")
    _, w = viewer.window.add_plugin_dock_widget("napari-unet", "Segment layer")
    w.model.value = tiny_model(w)
    w.tile.value = 80
    w.run()
    qtbot.waitUntil(lambda: w.done_units >= 1, timeout=30_000)
    viewer.close()
    assert QThreadPool.globalInstance().waitForDone(60_000)
    qtbot.wait(300)
    assert not [m for s, m in seen if s in ("error", "warning")], seen


def test_small_nuclei_with_every_default(widget, qtbot):
    """A first-time user with the packaged model and tiny nuclei: 'cell diameter' reads
    'auto', the image is tried enlarged, and the status says it was."""
    from napari_unet.core import checkpoints
    from napari_unet.core.synthetic import make_sample

    if checkpoints.packaged_model_path("default") is None:
        pytest.skip("no packaged default model")
    viewer, w = widget
    image, truth = make_sample("nuclei", (192, 192), seed=4_242, radius=(3.0, 4.0))
    viewer.add_image(image, name="small nuclei")
    w.reset_choices()
    w.model.value = checkpoints.packaged_model_path("default")  # the first choice
    assert w.diameter.value == 0 and w.diameter.native.text() == "auto"
    w.run()
    wait_done(qtbot, w)
    assert "small for this model" in w.status.value and "enlarged ×1." in w.status.value
    found = np.asarray(viewer.layers[-1].data)
    assert (found == segment(image, "default")).all()
