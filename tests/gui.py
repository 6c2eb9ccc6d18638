"""Drive napari and the napari-unet docks as a user does: mouse drags on the canvas,
clicks on buttons, choices in combo boxes. Only public napari API and Qt."""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import QEvent, QPoint, QPointF, Qt
from qtpy.QtGui import QMouseEvent
from qtpy.QtWidgets import QApplication, QComboBox, QDockWidget, QPushButton, QWidget

from napari_unet._widgets._common import camera_of as camera  # the widgets' own


def canvas_widget(viewer: Any) -> QWidget:
    """The Qt widget of the (shown) viewer's canvas, found through Qt, not napari internals."""
    found = [w for top in QApplication.topLevelWidgets() for w in top.findChildren(QWidget)
             if type(w).__name__ == "CanvasBackendDesktop" and w.isVisible()]
    assert len(found) == 1, f"expected one shown canvas, found {len(found)}"
    return found[0]


def dock_of(widget: Any) -> QDockWidget:
    """The QDockWidget that holds a napari-unet widget."""
    w = widget.native
    while w is not None and not isinstance(w, QDockWidget):
        w = w.parentWidget()
    assert w is not None, "the widget is not docked"
    return w



def canvas_point(viewer: Any, layer: Any, data_point: Any) -> QPointF:
    """Where a pixel of ``layer`` (data coordinates, row, col) is on the canvas widget."""
    world = np.asarray(layer.data_to_world(np.asarray(data_point, float)), float)[-2:]
    cam = camera(viewer)
    center = np.asarray(cam.center, float)[-2:]
    h, w = viewer.canvas.size
    y, x = (world - center) * cam.zoom + np.array([h, w]) / 2
    return QPointF(float(x), float(y))


def _send(widget: QWidget, kind: QEvent.Type, pos: QPointF, button: Any, buttons: Any) -> None:
    glob = QPointF(widget.mapToGlobal(QPoint(int(pos.x()), int(pos.y()))))
    event = QMouseEvent(kind, pos, glob, button, buttons, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, event)


def drag(qtbot: Any, viewer: Any, layer: Any, points: list[Any], steps: int = 6) -> None:
    """Press the left button at the first point, move through the others, release."""
    canvas = canvas_widget(viewer)
    pts = [canvas_point(viewer, layer, p) for p in points]
    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    _send(canvas, QEvent.Type.MouseMove, pts[0], none, none)
    _send(canvas, QEvent.Type.MouseButtonPress, pts[0], left, left)
    for a, b in zip(pts[:-1], pts[1:]):
        for t in np.linspace(0, 1, steps + 1)[1:]:
            p = QPointF(a.x() + t * (b.x() - a.x()), a.y() + t * (b.y() - a.y()))
            _send(canvas, QEvent.Type.MouseMove, p, none, left)
            qtbot.wait(5)
    _send(canvas, QEvent.Type.MouseButtonRelease, pts[-1], left, none)
    qtbot.wait(20)


def click(qtbot: Any, button: Any) -> None:
    """Click a magicgui PushButton (or a QPushButton) with the mouse."""
    native = getattr(button, "native", button)
    assert isinstance(native, QPushButton)
    assert native.isEnabled(), f"{native.text()!r} is disabled"
    qtbot.mouseClick(native, Qt.MouseButton.LeftButton)


def choose(combo: Any, text: str) -> None:
    """Pick the entry shown as ``text`` in a magicgui ComboBox, as the user does."""
    native: QComboBox = combo.native
    index = native.findText(text)
    assert index >= 0, f"{text!r} not in {[native.itemText(i) for i in range(native.count())]}"
    native.setCurrentIndex(index)
    native.activated.emit(index)
