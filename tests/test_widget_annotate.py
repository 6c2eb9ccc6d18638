"""The Annotate widget in a real napari viewer: live preview of what training will learn."""

from __future__ import annotations

import numpy as np
import pytest
from gui import camera, click, drag

from napari_unet.core.weightmap import border_term, carve_gaps

pytest.importorskip("napari")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def setup(make_napari_viewer):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.random.default_rng(0).random((80, 90)), name="img",
                             scale=(0.5, 0.5))
    w = viewer.window.add_plugin_dock_widget("napari-unet", "Annotate")[1]
    return viewer, w, image


def settle(qtbot, w):
    qtbot.waitUntil(lambda: not w.busy, timeout=10_000)


def expected_border(labels):
    """What training weights beyond the class balance: the border term on carved targets."""
    return border_term(carve_gaps(np.asarray(labels), 1))


def test_create_layer_new_cell_and_count(setup, qtbot):
    viewer, w, image = setup
    assert w.image.value is image  # preselected: the viewer's only image
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


def test_layers_are_preselected_when_docked_before_or_after(make_napari_viewer):
    """Item 8: the dock chooses the image and its labels whether they came first or later."""
    viewer = make_napari_viewer()
    w = viewer.window.add_plugin_dock_widget("napari-unet", "Annotate")[1]
    assert w.image.value is None and w.labels.value is None
    image = viewer.add_image(np.zeros((40, 50), np.float32), name="cells")
    viewer.add_labels(np.zeros((10, 10), np.int32), name="other size")
    labels = viewer.add_labels(np.zeros((40, 50), np.int32), name="cells labels")
    assert w.image.value is image
    assert w.labels.value is labels  # the one of the image's size
    viewer2 = make_napari_viewer()
    viewer2.add_image(np.zeros((40, 50), np.float32), name="x")
    lab2 = viewer2.add_labels(np.zeros((40, 50), np.int32), name="x labels")
    w2 = viewer2.window.add_plugin_dock_widget("napari-unet", "Annotate")[1]
    assert w2.labels.value is lab2 and w2.image.value.name == "x"


def test_new_cell_makes_the_next_drag_paint(make_napari_viewer, qtbot):
    """Item 8: after 'New cell' the first drag paints (it does not pan the view)."""
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((100, 100), np.float32), name="img")
    labels = viewer.add_labels(np.zeros((100, 100), np.int32), name="img labels")
    viewer.add_points([[5, 5]], name="some other layer")  # now the active layer
    w = viewer.window.add_plugin_dock_widget("napari-unet", "Annotate")[1]
    labels.mode = "pan_zoom"
    qtbot.wait(100)
    center = tuple(camera(viewer).center)
    click(qtbot, w.new_cell)
    assert viewer.layers.selection.active == labels and labels.mode == "paint"
    labels.brush_size = 6
    drag(qtbot, viewer, labels, [(50, 30), (50, 60)])
    assert (np.asarray(labels.data) == 1).sum() > 100
    assert tuple(camera(viewer).center) == center


def test_preview_shows_the_ridge_between_touching_cells(make_napari_viewer, qtbot):
    """Item 5: two touching cells painted with mouse drags, each with its own number: the
    preview glows between them, is dark inside them, and is computed on the carved targets
    that training uses (it equals the border term of the carved labels)."""
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((120, 120), np.float32), name="img")
    w = viewer.window.add_plugin_dock_widget("napari-unet", "Annotate")[1]
    labels = w.create_labels_layer()
    labels.brush_size = 12
    before = {layer.name for layer in viewer.layers}
    w.preview.native.click()
    added = [layer for layer in viewer.layers if layer.name not in before]
    assert len(added) == 1
    preview = added[0]
    click(qtbot, w.new_cell)
    drag(qtbot, viewer, labels, [(60, 30), (60, 50)])  # cell 1: columns ~24..56
    click(qtbot, w.new_cell)
    drag(qtbot, viewer, labels, [(60, 62), (60, 90)])  # cell 2 overlaps: they touch
    settle(qtbot, w)
    data = np.asarray(labels.data)
    assert set(np.unique(data)) == {0, 1, 2}
    contact = carve_gaps(data, 1) != data  # the pixels training carves between the cells
    assert contact.sum() >= 8
    shown = np.asarray(preview.data)
    w0 = w.w0.value
    assert shown[contact].min() > 0.5 * w0  # the ridge glows ...
    inside = (carve_gaps(data, 1) > 0)
    assert shown[inside].max() == 0  # ... and the cells stay dark: the ridge stands out
    assert shown.max() == pytest.approx(shown[contact].max())
    assert preview.contrast_limits[1] <= w0  # on its own scale, not w_c's
    np.testing.assert_allclose(shown, expected_border(data), atol=1e-6)


def test_overlays_lie_above_the_labels_which_stay_active(setup, qtbot):
    """Polish: the training target overlay is shown over the painted labels."""
    viewer, w, _ = setup
    labels = w.create_labels_layer()
    w.show_target.value = True
    w.preview.value = True
    names = [layer.name for layer in viewer.layers]
    assert names.index("img labels training target") > names.index("img labels")
    assert names.index("img labels border weight") > names.index("img labels")
    assert viewer.layers.selection.active == labels


def test_preview_follows_paint_fill_and_erase(setup, qtbot):
    viewer, w, _ = setup
    labels = w.create_labels_layer()
    labels.brush_size = 10
    w.preview.value = True
    w.show_target.value = True
    preview = viewer.layers["img labels border weight"]
    target = viewer.layers["img labels training target"]
    assert viewer.layers.selection.active == labels  # painting goes on without a click
    labels.paint((30, 30), 1)
    labels.paint((30, 39), 2)  # touching the first cell
    labels.paint((60, 70), 3)
    labels.fill((5, 85), 4)    # fill the background: a huge cell
    labels.paint((5, 85), 0)   # erase part of it
    settle(qtbot, w)
    data = np.asarray(labels.data)
    np.testing.assert_allclose(preview.data, expected_border(data), atol=1e-6)
    np.testing.assert_array_equal(target.data, carve_gaps(data, 1) > 0)
    assert w.last_update_ms is not None
    labels.undo()
    settle(qtbot, w)
    np.testing.assert_allclose(preview.data, expected_border(np.asarray(labels.data)),
                               atol=1e-6)
    w.w0.value = 20.0  # the settings change the preview and its colour scale
    np.testing.assert_allclose(preview.data, border_term(carve_gaps(np.asarray(labels.data), 1),
                                                         w0=20.0), atol=1e-5)
    assert preview.contrast_limits[1] == 20.0
    w.preview.value = False
    assert "img labels border weight" not in viewer.layers


def test_preview_on_the_current_plane_of_a_stack(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    stack = np.zeros((3, 50, 60), np.int32)
    labels = viewer.add_labels(stack, name="cells")
    w = viewer.window.add_plugin_dock_widget("napari-unet", "Annotate")[1]
    assert w.labels.value is labels
    w.preview.value = True
    viewer.dims.set_current_step(0, 2)
    labels.brush_size = 8
    labels.paint((2, 20, 20), 1)
    labels.paint((2, 20, 27), 2)
    settle(qtbot, w)
    preview = viewer.layers["cells border weight"].data
    np.testing.assert_allclose(preview[2], expected_border(labels.data[2]), atol=1e-6)
    assert preview[0].max() == 0  # planes not shown are not computed


def test_mark_annotated_region_adds_a_rectangle_layer(setup, qtbot):
    viewer, w, _ = setup
    w.create_labels_layer()
    click(qtbot, w.regions_button)
    layer = viewer.layers["annotated regions"]
    assert layer.mode == "add_rectangle" and viewer.layers.selection.active == layer
    np.testing.assert_allclose(layer.scale, (0.5, 0.5))
    click(qtbot, w.regions_button)  # a second click selects it again, no second layer
    assert [x.name for x in viewer.layers].count("annotated regions") == 1


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
    assert w.labels.value is labels
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
    np.testing.assert_allclose(viewer.layers["cells border weight"].data,
                               expected_border(labels.data), atol=1e-5)
