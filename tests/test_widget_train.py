"""The Train on current labels widget in a real napari viewer (under Xvfb in CI)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_unet.core.synthetic import make_sample
from napari_unet.core.training import new_model

pytest.importorskip("napari")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    monkeypatch.setenv("NAPARI_UNET_MODELS_DIR", str(folder))
    return folder


@pytest.fixture
def tiny_start(tmp_path):
    """A small network to start from, so that CPU steps take milliseconds."""
    from napari_unet import save_model

    return save_model(new_model(depth=2, base_channels=8), tmp_path / "start.pt")


@pytest.fixture
def viewer_with_data(make_napari_viewer, models_dir):
    viewer = make_napari_viewer()
    image, labels = make_sample("nuclei", (128, 128), seed=3, layout="clustered")
    viewer.add_image(image, name="nuclei")
    viewer.add_labels(labels, name="painted")
    return viewer


def dock(viewer, name):
    return viewer.window.add_plugin_dock_widget("napari-unet", name)[1]


def configure(w, tiny_start, steps):
    from napari_unet._widgets._common import NEW_FILE

    w.start.value = NEW_FILE
    w.start_file.value = tiny_start
    w.budget_kind.value = "steps"
    w.budget.value = steps
    w.device.value = "cpu"


def test_short_training_saves_a_model_offered_in_segment(viewer_with_data, tiny_start, qtbot,
                                                          models_dir):
    viewer = viewer_with_data
    w = dock(viewer, "Train on current labels")
    segment = dock(viewer, "Segment layer")
    assert [layer.name for layer in w.images.value] == ["nuclei"]
    assert [layer.name for layer in w.labels.value] == ["painted"]
    configure(w, tiny_start, 12)
    w.model_name.value = "my nuclei"
    painted_before = viewer.layers["painted"].data.copy()
    w.train()
    assert w.running and not w.train_button.enabled and w.cancel_button.enabled
    w.train()  # a second run is refused politely, not started
    qtbot.waitUntil(lambda: not w.running, timeout=180_000)
    assert w.saved_path == models_dir / "my-nuclei.pt" and w.saved_path.exists()
    assert len(w.plot.loss) >= 10  # the plot followed the run
    assert w.progress.value == 1000 and "all steps done: 12 steps" in w.status.value
    assert any("my-nuclei" in str(c) for c in segment.model.choices)
    np.testing.assert_array_equal(viewer.layers["painted"].data, painted_before)


def test_cancel_keeps_the_best_model(viewer_with_data, tiny_start, qtbot, models_dir):
    w = dock(viewer_with_data, "Train on current labels")
    configure(w, tiny_start, 100_000)
    w.train()
    qtbot.waitUntil(lambda: len(w.plot.loss) >= 3, timeout=120_000)
    t = time.perf_counter()
    w.cancel()
    qtbot.waitUntil(lambda: not w.running, timeout=60_000)
    print(f"cancel took {time.perf_counter() - t:.2f} s")
    assert w.saved_path is not None and w.saved_path.exists()
    assert "cancelled" in w.status.value


def test_mismatched_layers_are_refused(make_napari_viewer, models_dir):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((50, 60), np.float32), name="img")
    viewer.add_labels(np.zeros((40, 40), np.int32), name="lab")
    w = dock(viewer, "Train on current labels")
    w.train()
    assert not w.running and "do not match" in w.status.value


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


def test_viewer_stays_responsive_while_training(viewer_with_data, tiny_start, qtbot):
    """A main-thread timer keeps firing during training (the event loop is not blocked)."""
    from qtpy.QtCore import QTimer

    w = dock(viewer_with_data, "Train on current labels")
    configure(w, tiny_start, 40)
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
