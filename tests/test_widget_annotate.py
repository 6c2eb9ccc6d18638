"""The Annotate widget in a real napari viewer: live weight-map preview follows every edit."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.core.weightmap import boundary_weight_map, carve_gaps

pytest.importorskip("napari")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def setup(make_napari_viewer):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.random.default_rng(0).random((80, 90)), name="img",
                             scale=(0.5, 0.5))
    w = viewer.window.add_plugin_dock_widget("napari-unet", "Annotate")[1]
    w.reset_choices()
    w.image.value = image
    return viewer, w


def settle(qtbot, w):
    qtbot.waitUntil(lambda: not w.busy, timeout=10_000)


def test_create_layer_new_cell_and_count(setup, qtbot):
    viewer, w = setup
    labels = w.create_labels_layer()
    assert labels.data.shape == (80, 90) and labels.data.dtype == np.int32
    np.testing.assert_allclose(labels.scale, (0.5, 0.5))
    assert w.labels.value == labels  # (magicgui may hand out a weak proxy)
    assert labels.selected_label == 1
    labels.paint((20, 20), 1)
    w.select_new_cell()
    assert labels.selected_label == 2
    labels.paint((21, 25), 2)
    settle(qtbot, w)
    qtbot.waitUntil(lambda: w.count.value == "2", timeout=5000)  # counted when painting pauses


def test_preview_follows_paint_fill_and_erase(setup, qtbot):
    viewer, w = setup
    labels = w.create_labels_layer()
    labels.brush_size = 10
    w.preview.value = True
    w.show_target.value = True
    preview = viewer.layers["img labels weight map"]
    target = viewer.layers["img labels training target"]
    assert viewer.layers.selection.active == labels  # painting goes on without a click
    labels.paint((30, 30), 1)
    labels.paint((30, 39), 2)  # touching the first cell
    labels.paint((60, 70), 3)
    labels.fill((5, 85), 4)    # fill the background: a huge cell
    labels.paint((5, 85), 0)   # erase part of it
    settle(qtbot, w)
    qtbot.wait(600)  # the debounced refresh of the class-balance term
    data = np.asarray(labels.data)
    np.testing.assert_allclose(preview.data, boundary_weight_map(data), atol=1e-6)
    np.testing.assert_array_equal(target.data, carve_gaps(data, 1) > 0)
    assert w.last_update_ms is not None
    labels.undo()
    settle(qtbot, w)
    qtbot.wait(600)
    np.testing.assert_allclose(preview.data, boundary_weight_map(np.asarray(labels.data)),
                               atol=1e-6)
    w.preview.value = False
    assert "img labels weight map" not in viewer.layers


def test_preview_on_the_current_plane_of_a_stack(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    stack = np.zeros((3, 50, 60), np.int32)
    labels = viewer.add_labels(stack, name="cells")
    w = viewer.window.add_plugin_dock_widget("napari-unet", "Annotate")[1]
    w.reset_choices()
    w.labels.value = labels
    w.preview.value = True
    viewer.dims.set_current_step(0, 2)
    labels.brush_size = 8
    labels.paint((2, 20, 20), 1)
    labels.paint((2, 20, 27), 2)
    settle(qtbot, w)
    qtbot.wait(600)
    preview = viewer.layers["cells weight map"].data
    np.testing.assert_allclose(preview[2], boundary_weight_map(np.asarray(labels.data[2])),
                               atol=1e-6)
    assert preview[0].max() == 0  # planes not shown are not computed


def test_preview_latency_on_a_large_image(make_napari_viewer, qtbot):
    """Paint strokes on 2048x2048 with ~1000 cells; report the preview update time."""
    from skimage.segmentation import expand_labels

    rng = np.random.default_rng(0)
    seeds = np.zeros((2048, 2048), np.int32)
    pts = rng.integers(0, 2048, (1000, 2))
    seeds[pts[:, 0], pts[:, 1]] = np.arange(1, 1001)
    viewer = make_napari_viewer()
    labels = viewer.add_labels(expand_labels(seeds, 36), name="cells")
    w = viewer.window.add_plugin_dock_widget("napari-unet", "Annotate")[1]
    w.reset_choices()
    w.labels.value = labels
    w.preview.value = True
    labels.brush_size = 40
    times = []
    for k in range(8):
        r, c = rng.integers(100, 1900, 2)
        labels.paint((r, c), int(rng.integers(1, 1001)) if k % 3 else 0)
        settle(qtbot, w)
        times.append(w.last_update_ms)
    print(f"preview update after a 40 px dab on 2048x2048, 1000 cells: median "
          f"{np.median(times):.1f} ms, max {np.max(times):.1f} ms")
    assert all(t is not None for t in times)
