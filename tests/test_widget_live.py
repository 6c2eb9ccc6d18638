"""Live training in a real viewer: tick 'live', start, paint with the mouse while the model
trains; the strokes join training, the live prediction layer follows the view, Stop offers
to save, and the user's labels are never touched by the preview."""

from __future__ import annotations

import numpy as np
import pytest
from gui import click, drag

from napari_unet.core.synthetic import make_sample

pytest.importorskip("napari")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def live_widget(make_napari_viewer, models_dir, qtbot):
    from napari_unet._widgets.train import TrainWidget

    viewer = make_napari_viewer(show=True)
    image, labels = make_sample("nuclei", (160, 160), seed=3, layout="random", density=0.3)
    painted = labels.copy()
    painted[:, 80:] = 0  # the left half is painted
    viewer.add_image(image, name="nuclei")
    layer = viewer.add_labels(painted, name="painted")
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, area="right")
    assert widget.start.value == "default", "the pretrained model is the default start"
    widget.regions.value = None
    viewer.layers.selection.active = layer
    return viewer, widget, layer, labels


def start_live(widget, qtbot):
    """Tick 'live', start, and wait for the first live prediction: the session."""
    widget.live.value = True
    click(qtbot, widget.train_button)
    widget._confirmed and click(qtbot, widget.train_button)  # "train anyway" if it warned
    qtbot.waitUntil(lambda: widget.session is not None and bool(widget.session.refreshes),
                    timeout=120000)
    return widget.session


def test_live_training_takes_in_strokes_and_shows_its_prediction(live_widget, qtbot):
    from napari_unet._widgets.live import EDIT_DELAY_MS, LIVE_NAME

    viewer, widget, layer, truth = live_widget
    widget.live.value = True  # the user ticks 'live'
    assert not widget.budget.visible and widget.train_button.text == "Start live training"
    click(qtbot, widget.train_button)
    widget._confirmed and click(qtbot, widget.train_button)  # "train anyway" if it warned
    qtbot.waitUntil(lambda: widget.session is not None and widget.run is not None,
                    timeout=30000)
    session = widget.session
    assert viewer.layers.selection.active is layer, "painting goes on in the user's layer"
    live = viewer.layers[LIVE_NAME]
    qtbot.waitUntil(lambda: bool(session.refreshes), timeout=120000)  # the first prediction
    assert live.data.any()
    # the user paints a new cell in the unpainted half with the mouse
    layer.mode = "paint"
    layer.selected_label = int(layer.data.max()) + 1
    layer.brush_size = 6
    before = np.array(layer.data, copy=True)
    drag(qtbot, viewer, layer, [(40, 110), (46, 116), (40, 122)])
    painted = np.array(layer.data, copy=True)
    assert (painted != before).any(), "the drag painted"
    assert len(session.sent) == 1, "a finished stroke goes to training on mouse release"
    version = max(session.sent)
    qtbot.wait(3 * EDIT_DELAY_MS)  # redraws after the stroke send nothing new
    assert list(session.sent) == [version], "the same labels are not sent twice"
    qtbot.waitUntil(lambda: widget.run is not None and widget.run.applied_version >= version,
                    timeout=60000)
    queued, applied = widget.run.update_times[version]
    assert applied - queued < 60
    np.testing.assert_array_equal(layer.data, painted), "the preview never touches the labels"
    # the view moves: the visible part is predicted again
    n = len(session.refreshes)
    from gui import camera

    camera(viewer).zoom = camera(viewer).zoom * 2
    qtbot.waitUntil(lambda: len(session.refreshes) > n, timeout=120000)
    click(qtbot, widget.cancel_button)  # "Stop"
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    assert widget.session is None
    assert "Live training stopped" in widget.status.value
    assert not widget.progress.visible, "no progress bar stuck at 0 % after live training"
    kept = widget.result.best_step
    if kept == 0:  # nothing beat the pretrained start on the held-out cells yet
        assert "starting model" in widget.status.value and not widget.save_button.visible
    else:
        assert widget.save_button.visible, "Stop offers to save the kept model"
        assert f"step {kept}" in widget.status.value
    np.testing.assert_array_equal(layer.data, painted)
    assert widget.result.model.metadata["training"]["steps"] > 0


def test_deleting_layers_during_live_training(live_widget, qtbot):
    """Deleting the live prediction layer stops the preview, not training; deleting the
    painted labels stops live training like Stop, says why, and keeps the model."""
    from napari_unet._widgets.live import LIVE_NAME

    viewer, widget, layer, _ = live_widget
    session = start_live(widget, qtbot)
    viewer.layers.remove(viewer.layers[LIVE_NAME])  # the user deletes the preview
    n = len(session.refreshes)
    session.predict()  # a refresh is due: nothing is drawn, nothing fails
    qtbot.wait(500)
    assert LIVE_NAME not in [x.name for x in viewer.layers], "a deleted preview stays deleted"
    assert widget.worker is not None and widget.session is session, "training goes on"
    assert len(session.refreshes) == n
    viewer.layers.remove(layer)  # the user deletes the labels being painted
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    assert widget.session is None
    assert "painted labels" in widget.status.value and "removed" in widget.status.value
    assert widget.result is not None and widget.result.model is not None


def test_the_live_prediction_is_never_preselected_as_labels(live_widget, qtbot):
    """The painted labels are deleted while the live prediction layer stays: the Train
    widget must not pick the model's own guess as the labels of the next run."""
    from napari_unet._widgets.live import LIVE_NAME

    viewer, widget, layer, _ = live_widget
    start_live(widget, qtbot)
    viewer.layers.remove(layer)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    assert LIVE_NAME in [x.name for x in widget.labels.choices], "still there to pick"
    assert widget.labels.value == [], "but not picked for the user"


def test_deleting_the_region_layer_keeps_its_area(live_widget, qtbot):
    """The annotated region says where the labels are complete: deleting its Shapes layer
    during live training must not turn the unpainted rest of the image into background."""
    viewer, widget, layer, _ = live_widget
    shapes = viewer.add_shapes([np.array([[0, 0], [0, 79], [159, 79], [159, 0]], float)],
                               shape_type="rectangle", name="annotated region",
                               metadata={"napari-unet": "annotated regions"})
    viewer.layers.selection.active = layer
    widget.regions.value = shapes
    widget.live.value = True
    click(qtbot, widget.train_button)
    widget._confirmed and click(qtbot, widget.train_button)
    qtbot.waitUntil(lambda: widget.session is not None and widget.run is not None,
                    timeout=60000)
    session, run = widget.session, widget.run
    sent = []
    update = run.update
    run.update = lambda i, labels, region=None: sent.append(region) or update(i, labels, region)
    session.send_labels()
    viewer.layers.remove(shapes)
    data = np.array(layer.data, copy=True)
    data[5:9, 5:9] = data.max() + 1  # an edit after the region layer is gone
    layer.data = data
    qtbot.waitUntil(lambda: len(sent) == 2, timeout=5000)
    assert sent[0] is not None and sent[1] == sent[0], "the area stays as it was"
    assert widget.worker is not None, "training goes on"
    click(qtbot, widget.cancel_button)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)


def test_switching_the_live_prediction_to_probability(live_widget, qtbot):
    """The 'live prediction' combo box works during a run: the layer becomes the cell
    probability (an Image layer with values in [0, 1]), and back to outlines."""
    from napari_unet._widgets.live import LIVE_NAME, OUTLINES, PROBABILITY

    viewer, widget, layer, _ = live_widget
    session = start_live(widget, qtbot)
    assert type(viewer.layers[LIVE_NAME]).__name__ == "Labels"
    n = len(session.refreshes)
    widget.live_show.value = PROBABILITY  # the user picks it in the combo box
    qtbot.waitUntil(lambda: len(session.refreshes) > n, timeout=120000)
    live = viewer.layers[LIVE_NAME]
    assert type(live).__name__ == "Image"
    assert [x.name for x in viewer.layers].count(LIVE_NAME) == 1
    values = np.asarray(live.data)
    assert values.max() > 0.5 and values.min() >= 0 and values.max() <= 1
    assert viewer.layers.selection.active is layer, "painting goes on in the user's layer"
    widget.live_show.value = OUTLINES
    assert type(viewer.layers[LIVE_NAME]).__name__ == "Labels"
    assert widget.worker is not None and widget.session is session
    click(qtbot, widget.cancel_button)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
