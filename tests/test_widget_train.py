"""The Train on current labels widget in a real napari viewer (under Xvfb in CI)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from gui import choose, click, dock_of

from napari_unet.core.synthetic import make_sample
from napari_unet.core.training import new_model

pytest.importorskip("napari")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def tiny_start(tmp_path):
    """A small network to start from, so that CPU steps take milliseconds."""
    from napari_unet import save_model

    return save_model(new_model(depth=2, base_channels=8), tmp_path / "start.pt")


@pytest.fixture
def tiny_trained(tmp_path):
    """A small network with a training record, as a trained model has: training then
    validates it before the first step, as it does when fine-tuning."""
    from napari_unet import save_model

    net = new_model(depth=2, base_channels=8)
    net.metadata = {"name": "tiny", "training": {"steps": 1}}
    return save_model(net, tmp_path / "trained.pt")


@pytest.fixture
def viewer_with_data(make_napari_viewer, models_dir):
    viewer = make_napari_viewer()
    image, labels = make_sample("nuclei", (128, 128), seed=3, layout="clustered")
    viewer.add_image(image, name="nuclei")
    viewer.add_labels(labels, name="painted")
    return viewer


@pytest.fixture
def notifications():
    """Every notification napari shows (toasts), as (severity, message)."""
    from napari.utils.notifications import notification_manager

    seen = []

    def keep(notification):
        seen.append((str(notification.severity), str(notification.message)))

    notification_manager.notification_ready.connect(keep)
    yield seen
    notification_manager.notification_ready.disconnect(keep)


def dock(viewer, name):
    return viewer.window.add_plugin_dock_widget("napari-unet", name)[1]


def configure(w, tiny_start, steps):
    from napari_unet._widgets._common import NEW_FILE

    w.start.value = NEW_FILE
    w.start_file.value = tiny_start
    choose(w.budget_kind, "steps")
    w.steps.value = steps
    w.device.value = "cpu"


def test_short_training_saves_a_model_offered_in_segment(viewer_with_data, tiny_start, qtbot,
                                                          models_dir):
    viewer = viewer_with_data
    w = dock(viewer, "Train on current labels")
    segment = dock(viewer, "Segment layer")
    assert [layer.name for layer in w.images.value] == ["nuclei"]
    assert [layer.name for layer in w.labels.value] == ["painted"]
    configure(w, tiny_start, 20)
    assert not w.steps.native.isHidden() and w.minutes.native.isHidden()  # whole steps
    w.model_name.value = "my nuclei"
    painted_before = viewer.layers["painted"].data.copy()
    click(qtbot, w.train_button)
    assert w.running and not w.train_button.enabled and w.cancel_button.enabled
    w.train()  # a second run is refused politely, not started
    qtbot.waitUntil(lambda: not w.running, timeout=180_000)
    result = w.result
    assert result is not None and result.steps == 20
    assert len(w.plot.loss) >= 10  # the plot followed the run
    assert w.progress.value == 1000 and "All steps done after 20 steps" in w.status.value
    if w.saved_path is None:  # not clearly better than its start: the user may keep it
        assert "nothing was saved" in w.status.value and not list(models_dir.glob("*.pt"))
        click(qtbot, w.save_button)
    assert w.saved_path == models_dir / "my-nuclei.pt", w.status.value
    assert w.saved_path.exists() and w.save_button.native.isHidden()
    assert str(models_dir) in w.status.value and "'my-nuclei'" in w.status.value
    assert any("my-nuclei" in str(c) for c in segment.model.choices)
    assert w.models.value == w.saved_path  # listed under 'your models', with its path
    np.testing.assert_array_equal(viewer.layers["painted"].data, painted_before)


def test_cancel_reports_the_kept_step_and_the_start(viewer_with_data, tiny_trained, qtbot,
                                                    models_dir):
    """Item 7: after Cancel the status names the kept model's step, its F1 next to the
    starting model's, and where it was saved; the plot ends on the same validation."""
    w = dock(viewer_with_data, "Train on current labels")
    configure(w, tiny_trained, 100_000)
    click(qtbot, w.train_button)
    qtbot.waitUntil(lambda: len(w.plot.f1) >= 3, timeout=300_000)
    t = time.perf_counter()
    click(qtbot, w.cancel_button)
    qtbot.waitUntil(lambda: not w.running, timeout=60_000)
    print(f"cancel took {time.perf_counter() - t:.2f} s")
    result = w.result
    status = w.status.value
    assert status.startswith(f"Cancelled after {result.steps} steps")
    assert w.progress.value < 1000  # not "100 %" after a cancel
    start_f1 = w.plot.f1[0][1]
    assert w.plot.f1[0][0] == 0 and f"the starting model had {start_f1:.2f}" in status
    assert f"The model of step {result.best_step} is kept" in status
    assert f"validation F1 {result.best_val_f1:.2f}" in status
    last = next(h for h in reversed(result.history) if h.val_f1 is not None)
    assert w.plot.f1[-1] == (last.step, last.val_f1)  # the plot ends where the run did
    if result.best_step > 0 and result.best_val_f1 > start_f1:  # better: saved
        assert w.saved_path.exists() and str(w.saved_path.parent) in status
    else:  # not better: nothing saved, and said so; kept only if the user asks
        assert w.saved_path is None and "nothing was saved" in status
        assert (not w.save_button.native.isHidden()) == (result.best_step > 0)


def test_error_is_shown_once_in_the_widgets_words(make_napari_viewer, models_dir, qtbot,
                                                  notifications):
    """Items 2, 3, 4: a training error is one notification, in the widget's words, and
    the long status wraps instead of widening the dock."""
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1500, 1000)
    viewer.add_image(np.random.default_rng(0).random((64, 64)).astype(np.float32),
                     name="cells")
    viewer.add_labels(np.zeros((64, 64), np.int32), name="cells labels")
    w = dock(viewer, "Train on current labels")
    qtbot.wait(300)
    width, canvas = dock_of(w).width(), viewer.canvas.size
    click(qtbot, w.train_button)
    qtbot.wait(300)
    assert not w.running
    status = w.status.value
    assert "paint some cells" in status and "'annotated regions'" in status
    assert "=" not in status and "pass " not in status  # no Python-API words
    errors = [m for s, m in notifications if s == "error"]
    assert len(errors) == 1 and errors[0].endswith(status)
    assert abs(dock_of(w).width() - width) <= 2  # wrapped, not widened
    assert viewer.canvas.size == canvas
    assert w.native.window().width() <= 1600


def test_error_in_the_worker_is_reported_once_and_not_raised(make_napari_viewer, models_dir,
                                                              tiny_start, qtbot, notifications):
    """Item 3: an error found while training (NaN pixels in a lazy image) is one toast; it
    is not raised again in the main thread (pytest-qt would fail the test if it were)."""
    da = pytest.importorskip("dask.array")
    viewer = make_napari_viewer()
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    image[5, 5] = np.nan
    viewer.add_image(da.from_array(image, chunks=32), name="cells")
    labels = np.zeros((64, 64), np.int32)
    labels[20:30, 20:30] = 1
    viewer.add_labels(labels, name="cells labels")
    w = dock(viewer, "Train on current labels")
    configure(w, tiny_start, 5)
    w.regions.value = None
    click(qtbot, w.train_button)
    if not w.running:  # the coverage warning: train anyway
        click(qtbot, w.train_button)
    qtbot.waitUntil(lambda: not w.running, timeout=60_000)
    qtbot.wait(200)
    errors = [m for s, m in notifications if s == "error"]
    assert len(errors) == 1, errors
    assert "NaN" in errors[0] and "training failed" in errors[0].lower()


def test_a_script_without_an_event_loop_survives_a_training_error(tmp_path, tiny_start):
    """Item 3: the error must not be raised again in a Qt callback, which aborts PyQt."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(f"""
        import os, time
        os.environ["NAPARI_UNET_MODELS_DIR"] = {str(tmp_path / 'models')!r}
        import numpy as np, dask.array as da, napari
        from napari_unet._widgets._common import NEW_FILE
        viewer = napari.Viewer(show=False)
        image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
        image[3, 3] = np.nan
        viewer.add_image(da.from_array(image, chunks=32), name="cells")
        labels = np.zeros((64, 64), np.int32)
        labels[:, :40] = 1
        viewer.add_labels(labels, name="cells labels")
        _, w = viewer.window.add_plugin_dock_widget("napari-unet", "Train on current labels")
        w.start.value = NEW_FILE
        w.start_file.value = {str(tiny_start)!r}
        w.budget_kind.value = "steps"
        w.steps.value = 3
        w.train()
        app = napari.qt.get_qapp()
        end = time.time() + 60
        while (w.running or not w.status.value) and time.time() < end:
            app.processEvents()
            time.sleep(0.01)
        print("STATUS:", w.status.value)
        viewer.close()
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "STATUS: Training failed" in proc.stdout


def test_mismatched_layers_are_refused(make_napari_viewer, models_dir):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((50, 60), np.float32), name="img")
    viewer.add_labels(np.zeros((40, 40), np.int32), name="lab")
    w = dock(viewer, "Train on current labels")
    w.train()
    assert not w.running and "do not match" in w.status.value
    assert "(40 × 40)" in w.status.value and "(50 × 60)" in w.status.value  # no np.int64


def test_sample_preselects_its_annotated_region_and_warns_without_it(
        make_napari_viewer, models_dir, tiny_start, qtbot):
    """Item 6: on the sample the annotated region is chosen; with 'none' chosen, the
    widget warns that most of the image is unpainted before it trains on it."""
    viewer = make_napari_viewer()
    w = dock(viewer, "Train on current labels")  # docked before the layers exist
    viewer.open_sample("napari-unet", "nuclei")
    assert [x.name for x in w.images.value] == ["nuclei"]
    assert [x.name for x in w.labels.value] == ["nuclei labels"]
    assert w.regions.value is viewer.layers["annotated region"]
    from qtpy.QtCore import Qt

    row = w.images.native.item(0)  # rows with a tick box: they look selectable
    assert row.checkState() == Qt.CheckState.Checked and row.isSelected()
    configure(w, tiny_start, 3)
    choose(w.regions, "none")
    click(qtbot, w.train_button)
    assert not w.running
    assert "Most of the image is not painted" in w.status.value
    assert "'annotated regions'" in w.status.value
    assert w.train_button.text.startswith("Train anyway")
    click(qtbot, w.train_button)  # the user insists: it trains on the whole image
    assert w.running
    qtbot.waitUntil(lambda: not w.running, timeout=120_000)
    assert w.train_button.text == "Train on current labels"


def test_rectangles_from_shapes_in_label_pixels(make_napari_viewer):
    from napari_unet._widgets.train import rectangles_from_shapes

    viewer = make_napari_viewer()
    labels = viewer.add_labels(np.zeros((100, 120), np.int32), scale=(2, 2))
    shapes = viewer.add_shapes([[[20, 40], [60, 100]]], shape_type="rectangle")
    assert rectangles_from_shapes(shapes, labels) == [(10, 20, 30, 50)]
    stack = viewer.add_labels(np.zeros((5, 50, 60), np.int32), name="stack")
    shapes3 = viewer.add_shapes([[[2, 5, 5], [2, 5, 25], [2, 15, 25], [2, 15, 5]]],
                                shape_type="rectangle", ndim=3)
    assert rectangles_from_shapes(shapes3, stack) == [(2, 5, 5, 15, 25)]


def test_models_can_be_saved_renamed_and_deleted(viewer_with_data, tiny_start, qtbot,
                                                 models_dir):
    """Item 9: the models list shows the path, renames and deletes (with a second click)."""
    from napari_unet import save_model

    models_dir.mkdir()
    save_model(new_model(depth=2, base_channels=4), models_dir / "first.pt")
    w = dock(viewer_with_data, "Train on current labels")
    segment = dock(viewer_with_data, "Segment layer")
    assert w.models.value == models_dir / "first.pt"
    assert w.models_path.value == str(models_dir / "first.pt")
    w.rename_to.value = "nuclei v2"
    click(qtbot, w.rename_button)
    assert (models_dir / "nuclei-v2.pt").exists() and not (models_dir / "first.pt").exists()
    assert w.models.value == models_dir / "nuclei-v2.pt"
    assert any(getattr(c, "name", "") == "nuclei-v2.pt" for c in segment.model.choices)
    click(qtbot, w.delete_button)
    assert (models_dir / "nuclei-v2.pt").exists()  # the first click only asks
    assert w.delete_button.text.startswith("Click again")
    click(qtbot, w.delete_button)
    assert not (models_dir / "nuclei-v2.pt").exists()
    assert w.models.value is None and not w.delete_button.enabled


def test_closing_the_dock_stops_training_and_saves_nothing(viewer_with_data, tiny_start,
                                                           qtbot, models_dir, notifications):
    """Item 10: a closed dock's worker stops; no model is saved, no error appears."""
    from qtpy.QtCore import QThreadPool

    w = dock(viewer_with_data, "Train on current labels")
    configure(w, tiny_start, 100_000)
    click(qtbot, w.train_button)
    qtbot.waitUntil(lambda: len(w.plot.loss) >= 2, timeout=60_000)
    worker = w.worker
    viewer_with_data.window.remove_dock_widget(dock_of(w))  # what the dock's x button does
    qtbot.waitUntil(lambda: worker.abort_requested, timeout=5000)
    assert QThreadPool.globalInstance().waitForDone(60_000)
    qtbot.wait(200)
    assert not list(Path(models_dir).glob("*.pt"))
    assert not [m for s, m in notifications if s == "error"]


def test_viewer_stays_responsive_while_training(viewer_with_data, tiny_start, qtbot):
    """A main-thread timer keeps firing during training (the event loop is not blocked)."""
    from qtpy.QtCore import QTimer

    w = dock(viewer_with_data, "Train on current labels")
    configure(w, tiny_start, 20)
    late, last = [], [time.perf_counter()]
    timer = QTimer()
    timer.setInterval(20)

    def tick():
        now = time.perf_counter()
        late.append(now - last[0] - 0.020)
        last[0] = now

    timer.timeout.connect(tick)
    timer.start()
    w.train()
    qtbot.waitUntil(lambda: not w.running, timeout=180_000)
    timer.stop()
    p99 = float(np.percentile(late, 99)) * 1000
    print(f"timer lateness during training: median {np.median(late) * 1000:.1f} ms, "
          f"p99 {p99:.1f} ms over {len(late)} ticks")
    assert len(late) > 10
