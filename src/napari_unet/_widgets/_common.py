"""Pieces shared by the napari-unet widgets: model choices, the region of a layer shown,
worker wiring, and the layout helpers that keep the docks small."""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any

import numpy as np
from psygnal import Signal
from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QComboBox, QFrame, QScrollArea, QSizePolicy, QWidget

from ..core.regions import pixels_in_view
from ..core.zoo import list_models

__all__ = [
    "model_choices", "layer_region", "visible_region", "current_plane", "start_worker",
    "NEW_FILE", "models_changed", "shape_text", "scroll_area", "section", "wrap_label",
    "DockLifetime", "share_dock_height", "camera_of", "reset_and_preselect",
]

NEW_FILE = "Model file…"


class _ModelEvents:
    changed = Signal()


#: Emitted (in the main thread) when a model was saved, renamed or deleted.
models_changed = _ModelEvents().changed


def model_choices(_widget: Any = None) -> list[tuple[str, Any]]:
    """(label, value) pairs for a model ComboBox: packaged and user models, then a file."""
    choices: list[tuple[str, Any]] = [(str(info), info.path) for info in list_models()]
    choices.append((NEW_FILE, NEW_FILE))
    return choices


def shape_text(shape: Sequence[Any]) -> str:
    """A shape in plain numbers, ``512 × 512`` (never ``np.int64(512)``)."""
    return " × ".join(str(int(n)) for n in shape)


def spatial_shape(layer: Any) -> tuple[int, ...]:
    """The (plane,) row, col shape of an image layer's full-resolution level, as ints."""
    shape = layer.level_shapes[0] if hasattr(layer, "level_shapes") else layer.data.shape
    return tuple(int(n) for n in shape[: layer.ndim])


def current_plane(viewer: Any, layer: Any) -> tuple[int, ...]:
    """Index of the plane of ``layer`` shown now (its leading axes); () for a 2D layer."""
    shape = spatial_shape(layer) if hasattr(layer, "level_shapes") else layer.data.shape
    point = layer.world_to_data(viewer.dims.point)
    return tuple(int(np.clip(round(point[a]), 0, shape[a] - 1)) for a in range(layer.ndim - 2))


def camera_of(viewer: Any) -> Any:
    """The viewer's camera model (``viewer.scene.camera`` in napari >= 0.9)."""
    scene = getattr(viewer, "scene", None)  # napari >= 0.9; viewer.camera before
    return scene.camera if scene is not None else viewer.camera


def visible_region(viewer: Any, layer: Any) -> tuple[slice, slice]:
    """The rows and columns of ``layer`` (full resolution) shown on the canvas now.

    From napari's public models only: the camera's centre and zoom and the canvas
    size (``viewer.canvas``, napari >= 0.9); older napari versions give the
    layer's ``corner_pixels`` instead. Rotated, scaled and translated layers are
    covered (all four corners of the view are mapped into the layer).
    """
    shape = spatial_shape(layer)
    ndim = layer.ndim
    world_ndim = len(viewer.dims.point)
    displayed = list(viewer.dims.displayed)[-2:]
    data_axes = [a - (world_ndim - ndim) for a in displayed]
    if data_axes != [ndim - 2, ndim - 1]:
        raise ValueError("'visible region only' needs the image's rows and columns on the "
                         "canvas; reset the axes order (the transpose button) first")
    canvas = getattr(viewer, "canvas", None)
    size = getattr(canvas, "size", None)
    if size is None:  # napari < 0.9: no canvas model; corner_pixels is public there
        corners = np.asarray(layer.corner_pixels, float)[:, -2:]
        if getattr(layer, "multiscale", False):
            corners = corners * np.asarray(layer.downsample_factors[layer.data_level])[-2:]
        return pixels_in_view(corners, shape[-2:])  # type: ignore[return-value]
    if getattr(canvas, "grid", None) is not None and canvas.grid.enabled:
        size = canvas.viewbox_size(viewer.layers)
    camera = camera_of(viewer)
    center = np.asarray(camera.center, float)[-2:]
    half = np.asarray(size, float)[-2:] / max(float(camera.zoom), 1e-12) / 2
    point = np.asarray(viewer.dims.point, float)
    corners = []
    for dr in (-1, 1):
        for dc in (-1, 1):
            world = point.copy()
            world[displayed] = center + half * (dr, dc)
            corners.append(np.asarray(layer.world_to_data(world), float)[-2:])
    return pixels_in_view(np.array(corners), shape[-2:])  # type: ignore[return-value]


def _level0(layer: Any) -> Any:
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def layer_region(
    viewer: Any, layer: Any, plane_only: bool, visible_only: bool
) -> tuple[Any, tuple[slice | int, ...]]:
    """The part of an image layer to segment, and where it sits in the layer.

    Returns the (possibly lazy) data and the index into the layer's spatial axes:
    the whole layer, only the plane shown now (stacks), only the region visible on
    the canvas, or both.
    """
    data = _level0(layer)
    ndim = layer.ndim  # spatial axes; an RGB layer's colour axis is extra
    index: list[slice | int] = [slice(None)] * ndim
    if plane_only:
        index[: ndim - 2] = current_plane(viewer, layer)
    if visible_only:
        index[ndim - 2:] = visible_region(viewer, layer)
    return data[tuple(index)], tuple(index)


def start_worker(
    generator_function: Callable[[], Generator[Any, Any, Any]],
    *,
    on_yield: Callable[[Any], None],
    on_return: Callable[[Any], None],
    on_error: Callable[[Exception], None],
    on_finish: Callable[[], None],
) -> Any:
    """Run a core generator in a napari thread worker; every callback runs in the main thread.

    Errors go to ``on_error`` only: the worker neither raises them again in the
    main thread (which aborts a script without an event loop) nor shows its own
    notification, so each problem is reported once, in the widget's words. The
    worker is registered with napari's task list, so closing the viewer asks
    first and stops it.
    """
    from napari.qt.threading import create_worker
    from superqt.utils import GeneratorWorker

    worker = create_worker(
        generator_function, _start_thread=False, _worker_class=GeneratorWorker,
        _connect={"yielded": on_yield, "returned": on_return, "errored": on_error,
                  "finished": on_finish},
    )
    worker.start()
    return worker


# ------------------------------------------------------------------ layout helpers
def scroll_area(content: QWidget, min_height: int = 240) -> QScrollArea:
    """``content`` in a frameless vertical scroll area: a dock can then be made short.

    The area is as wide as the content needs (no sideways scrolling) and at
    least ``min_height`` (or the content's height) high; the rest scrolls when
    the screen is short.
    """
    from qtpy.QtCore import Qt

    area = _ScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setWidget(content)
    area.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
    for combo in content.findChildren(QComboBox):  # long entries must not widen the dock
        combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(14)
    area.setMinimumHeight(min(content.sizeHint().height(), min_height))
    return area


class _ScrollArea(QScrollArea):
    """A scroll area that asks for its content's full height (Qt's own caps it)."""

    def sizeHint(self):  # noqa: N802 - Qt's name
        from qtpy.QtCore import QSize

        inner = self.widget().sizeHint() if self.widget() is not None else QSize(0, 0)
        bar = self.verticalScrollBar().sizeHint().width()
        return QSize(inner.width() + bar, inner.height() + 2)

    def minimumSizeHint(self):  # noqa: N802 - Qt's name
        from qtpy.QtCore import QSize

        # as wide as the content needs, so that nothing is cut off at the right
        inner = self.widget().minimumSizeHint() if self.widget() is not None else QSize(0, 0)
        bar = self.verticalScrollBar().sizeHint().width()
        return QSize(inner.width() + bar, self.minimumHeight())


def share_dock_height(widget: QWidget) -> None:
    """Share the height of the dock column among the docks in it, by what each needs.

    Qt gives a dock added below others only its minimum height; this asks the
    window (with Qt's public ``QMainWindow.resizeDocks``) for each dock's
    natural height, scaled down to what the column holds.
    """
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QDockWidget, QMainWindow

    dock = widget.parentWidget()
    window = dock.parentWidget() if dock is not None else None
    if not isinstance(dock, QDockWidget) or not isinstance(window, QMainWindow) \
            or dock.isFloating():
        return
    area = window.dockWidgetArea(dock)
    docks = [d for d in window.findChildren(QDockWidget)
             if d.isVisible() and not d.isFloating() and window.dockWidgetArea(d) == area
             and abs(d.x() - dock.x()) < 4]
    if len(docks) < 2:
        return
    wants = [max(d.widget().sizeHint().height() if d.widget() else 0, d.minimumHeight())
             + (d.titleBarWidget().sizeHint().height() if d.titleBarWidget() else 0)
             for d in docks]
    room = sum(d.height() for d in docks)
    scale = min(1.0, room / max(sum(wants), 1))
    window.resizeDocks(docks, [max(int(w * scale), d.minimumHeight())
                               for w, d in zip(wants, docks)], Qt.Orientation.Vertical)


def section(title: str, content: QWidget, expanded: bool = False) -> QWidget:
    """A collapsible section (a click on its title shows or hides ``content``)."""
    from superqt import QCollapsible

    box = QCollapsible(title)
    box.setDuration(0)
    box.addWidget(content)
    if expanded:
        box.expand(animate=False)
    else:
        box.collapse(animate=False)
    return box


def wrap_label(label: Any) -> None:
    """Let a magicgui Label wrap long text instead of widening the dock."""
    native = label.native
    native.setWordWrap(True)
    native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    native.setMinimumWidth(50)
    from qtpy.QtCore import Qt

    native.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)


class DockLifetime(QObject):
    """Calls ``on_close`` once, when the widget leaves its dock or is destroyed.

    napari's dock close button takes the widget out of the window (its parent
    becomes None) rather than deleting it; closing the viewer deletes it. Either
    way the widget's workers must stop and their callbacks must not touch it.
    """

    def __init__(self, widget: QWidget, on_close: Callable[[], None]) -> None:
        super().__init__(widget)
        self._on_close = on_close
        self._docked = False
        self._share_pending = False
        self.closed = False
        widget.installEventFilter(self)
        widget.destroyed.connect(self._close)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.Show and self._share_pending:
            from qtpy.QtCore import QTimer

            self._share_pending = False  # once per docking: the user's sizes win after that
            QTimer.singleShot(0, lambda: None if self.closed else share_dock_height(obj))
        if event.type() == QEvent.Type.ParentChange:
            if obj.parent() is not None:
                self._docked = True
                self._share_pending = True
            elif self._docked:
                self._close()
        return False

    def _close(self, *_: Any) -> None:
        if not self.closed:
            self.closed = True
            self._on_close()


def reset_and_preselect(widget: Any) -> None:
    """Re-read the viewer's layers into a dock's choices, then let it choose its defaults.

    For the docks that preselect layers: ``widget`` has ``lifetime`` (a
    :class:`DockLifetime`), ``form`` (its magicgui container), ``preselect()`` and a
    ``preselecting`` flag (set meanwhile, so that choices made here are not taken for
    the user's)."""
    if widget.lifetime.closed:
        return
    widget.preselecting = True
    try:
        widget.form.reset_choices()
        widget.preselect()
    finally:
        widget.preselecting = False
