"""The three docks together on a 1600 x 1200 screen: they fit, and long messages wrap."""

from __future__ import annotations

import pytest
from gui import click, dock_of

from napari_unet.core.training import new_model

pytest.importorskip("napari")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_three_docks_fit_the_screen_and_keep_the_canvas(make_napari_viewer, models_dir,
                                                        tmp_path, qtbot):
    """Items 11 and 2: Annotate, Train and Segment docked at once fit a 1200 px high
    screen with room for the canvas; training, its long status and Cancel leave the
    canvas as it was."""
    from napari_unet import save_model
    from napari_unet._widgets._common import NEW_FILE

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1500, 1100)
    viewer.open_sample("napari-unet", "nuclei")
    widgets = [viewer.window.add_plugin_dock_widget("napari-unet", name)[1]
               for name in ("Annotate", "Train on current labels", "Segment layer")]
    qtbot.wait(500)
    window = widgets[0].native.window()
    screen = window.screen().availableGeometry()
    assert window.frameGeometry().height() <= screen.height()
    assert window.frameGeometry().width() <= screen.width()
    docks = [dock_of(w) for w in widgets]
    assert sum(d.minimumSizeHint().height() for d in docks) < 0.8 * window.height()
    for d in docks:
        assert d.isVisible() and d.height() >= d.minimumSizeHint().height()
    assert viewer.canvas.size[0] > 600 and viewer.canvas.size[1] > 700
    # the plot is optional: its section folds away
    train = widgets[1]
    before = train.form.native.sizeHint().height()
    train.plot_section.collapse(animate=False)
    qtbot.wait(50)
    assert train.form.native.sizeHint().height() < before - 100
    train.plot_section.expand(animate=False)
    # a training run and its Cancel do not narrow the canvas
    canvas = viewer.canvas.size
    train.start.value = NEW_FILE
    train.start_file.value = save_model(new_model(depth=2, base_channels=4),
                                        tmp_path / "tiny.pt")
    train.device.value = "cpu"
    click(qtbot, train.train_button)
    qtbot.waitUntil(lambda: len(train.plot.loss) >= 2, timeout=120_000)
    click(qtbot, train.cancel_button)
    qtbot.waitUntil(lambda: not train.running, timeout=60_000)
    qtbot.wait(300)
    assert len(train.status.value) > 100  # a long report, wrapped in the dock
    assert viewer.canvas.size == canvas
    assert window.frameGeometry().width() <= screen.width()


def test_every_control_says_what_it_does(make_napari_viewer, models_dir):
    """Polish: each control of the three docks has its own tooltip (w0 and σ explained)."""
    from magicgui.widgets import Container

    viewer = make_napari_viewer()
    missing, seen = [], set()
    for name in ("Annotate", "Train on current labels", "Segment layer"):
        widget = viewer.window.add_plugin_dock_widget("napari-unet", name)[1]
        stack = [widget.form]
        while stack:
            for child in stack.pop():
                if isinstance(child, Container):
                    stack.append(child)
                    continue
                label = getattr(child, "label", "") or getattr(child, "text", "")
                if not child.tooltip:
                    missing.append(f"{name}: {label or type(child).__name__}")
                else:
                    seen.add(child.tooltip)
    assert not missing, missing
    annotate = viewer.window.add_plugin_dock_widget("napari-unet", "Annotate")[1]
    assert "U-Net paper" in annotate.w0.tooltip and "pixels" in annotate.sigma.tooltip
    assert len(seen) > 30  # one each, not one for all
