"""The "Annotate" dock widget: paint cells with a live preview of what training will learn."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    PushButton,
)
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QTimer

from ..core.preview import TargetPreview
from ..core.training import TrainConfig
from ._common import (
    DockLifetime,
    current_plane,
    reset_and_preselect,
    scroll_area,
    section,
    spatial_shape,
    wrap_label,
)

if TYPE_CHECKING:
    import napari

__all__ = ["AnnotateWidget", "changed_box", "REGIONS_NAME", "is_regions_layer",
           "add_regions_layer"]

PREVIEW_SUFFIX = " border weight"
TARGET_SUFFIX = " training target"
#: Gap carved between touching cells by training (the engine's default).
TRAINING_GAP = TrainConfig().gap
#: Name and metadata mark of a Shapes layer that outlines completely annotated areas.
REGIONS_NAME = "annotated regions"
REGIONS_MARK = "napari-unet"


def is_regions_layer(layer: Any) -> bool:
    """True for a Shapes layer that marks annotated regions (made here, or so named)."""
    meta = getattr(layer, "metadata", None) or {}
    return meta.get(REGIONS_MARK) == REGIONS_NAME or "annotated" in layer.name.lower()


def add_regions_layer(viewer: Any, like: Any) -> Any:
    """A new Shapes layer for the rectangles around completely painted areas."""
    layer = viewer.add_shapes(
        name=REGIONS_NAME, ndim=like.ndim, scale=like.scale[-like.ndim:],
        translate=like.translate[-like.ndim:], face_color="transparent",
        edge_color="yellow", edge_width=2, metadata={REGIONS_MARK: REGIONS_NAME},
    )
    layer.mode = "add_rectangle"
    return layer


def changed_box(atoms: list[Any], ndim: int) -> tuple[slice, ...] | None:
    """Bounding box (slices over the layer's axes) of the pixels a paint event changed."""
    lo = np.full(ndim, np.iinfo(np.int64).max)
    hi = np.full(ndim, -1)
    for atom in atoms:
        key = getattr(atom, "slice_key", None)
        if key is not None:  # a masked paint atom: its bounding box is given
            starts = [s.start or 0 for s in key]
            stops = [s.stop for s in key]
        else:
            indices = atom[0]
            if len(indices) == 0 or np.size(indices[0]) == 0:
                continue
            starts = [int(np.min(i)) for i in indices]
            stops = [int(np.max(i)) + 1 for i in indices]
        lo = np.minimum(lo, starts)
        hi = np.maximum(hi, stops)
    if np.any(hi < 0):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def layer_choices(viewer: Any, kind: type, nullable: bool = True) -> Any:
    """A ComboBox choices callable: the viewer's layers of one kind (by name)."""
    def choices(_widget: Any = None) -> list[tuple[str, Any]]:
        found = [(layer.name, layer) for layer in viewer.layers if isinstance(layer, kind)]
        return ([("none", None)] if nullable else []) + found
    return choices


class AnnotateWidget(Container):
    """Paint instance labels with a live preview of what training will learn.

    Pick the image and the Labels layer to paint on (the first ones are chosen
    for you), or create a Labels layer that matches the image. **New cell** (or
    the ``n`` key on the Labels layer) selects the next free label and the
    Labels layer, so each cell gets its own id and the next drag paints. Tick
    **show border weights** to see where training pushes hardest: the narrow
    gaps it carves between touching cells glow. **show training target** shows
    the cells as training sees them, with those gaps. Both follow every stroke,
    fill and erase; on a stack they show the current plane.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        import napari

        super().__init__(labels=False)
        self.viewer = napari_viewer
        self.image = ComboBox(label="image", choices=layer_choices(napari_viewer,
                                                                   napari.layers.Image),
                              tooltip="the image you paint cells of")
        self.labels = ComboBox(label="labels", choices=layer_choices(napari_viewer,
                                                                     napari.layers.Labels),
                               tooltip="the Labels layer you paint on; each cell gets its "
                                       "own number")
        self.create_button = PushButton(text="Create labels layer for the image",
                                        tooltip="an empty Labels layer of the image's size "
                                                "and position, with the paint brush")
        self.new_cell = PushButton(text="New cell (n)",
                                   tooltip="choose the next free number and the paint brush: "
                                           "the next stroke starts a new cell (key n)")
        self.count = Label(label="cells", value="0", tooltip="cells painted so far")
        self.regions_button = PushButton(
            text="Mark annotated region",
            tooltip="add a Shapes layer and draw rectangles around the areas where every "
                    "cell is painted; training then learns only there (choose it in Train)")
        self.preview = CheckBox(
            text="show border weights (live)", value=False,
            tooltip="where training pushes hardest: the gaps carved between touching cells "
                    "glow. No glow between two touching cells means they have one number")
        self.show_target = CheckBox(
            text="show training target", value=False,
            tooltip="the cells as training learns them: your cells with a one-pixel gap of "
                    "background carved where two cells touch")
        self.w0 = FloatSpinBox(
            label="border weight w0", min=0, max=100, step=1, value=10.0,
            tooltip="how much more the gaps between touching cells count in training than "
                    "other pixels (10 in the U-Net paper)")
        self.sigma = FloatSpinBox(
            label="border width σ (px)", min=0.5, max=50, step=0.5, value=5.0,
            tooltip="how far the extra weight reaches from the cells, in pixels (5 in the "
                    "U-Net paper; about a third of a cell's radius)")
        self.timing = Label(label="", value="", tooltip="how long the last preview update took")
        settings = Container(widgets=[self.w0, self.sigma, self.timing], labels=True)
        settings.margins = (0, 0, 0, 0)
        self.form = Container(widgets=[
            self.image, self.labels, self.create_button, self.new_cell, self.count,
            self.regions_button, self.preview, self.show_target,
        ], labels=True)
        wrap_label(self.timing)
        self.form.native.layout().addWidget(section("weight map settings", settings.native))
        self.form.native.layout().addStretch(1)
        self.margins = (0, 0, 0, 0)
        self.native.layout().addWidget(scroll_area(self.form.native))

        self.create_button.changed.connect(self.create_labels_layer)
        self.new_cell.changed.connect(self.select_new_cell)
        self.regions_button.changed.connect(self.mark_annotated_region)
        self.labels.changed.connect(self._on_labels_changed)
        self.preview.changed.connect(self._on_preview_toggled)
        self.show_target.changed.connect(self._on_preview_toggled)
        self.w0.changed.connect(self._on_params_changed)
        self.sigma.changed.connect(self._on_params_changed)
        self.viewer.dims.events.current_step.connect(self._on_plane_changed)
        self._connected: Any = None
        self._previews: dict[tuple[int, ...], TargetPreview] = {}
        self._preview_layer: Any = None
        self._target_layer: Any = None
        self.last_update_ms: float | None = None
        # after painting pauses, update the cell count
        self._idle = QTimer(self.native)
        self._idle.setSingleShot(True)
        self._idle.setInterval(400)
        self._idle.timeout.connect(self._update_count)
        # napari emits the paint event before it writes the new values: apply the
        # changes once the event loop is back (which also merges quick successive events)
        self._pending_box: tuple[slice, ...] | None = None
        self._pending_diff = False  # undo, redo and scripts change data without paint events
        self._apply = QTimer(self.native)
        self._apply.setSingleShot(True)
        self._apply.setInterval(0)
        self._apply.timeout.connect(self._apply_pending)
        self.lifetime = DockLifetime(self.native, self._disconnect_all)
        self.preselecting = False
        self._user_chose = False
        self.image.changed.connect(self._on_user_choice)
        self.labels.changed.connect(self._on_user_choice)
        self.reset_choices()

    def reset_choices(self, *_: Any) -> None:
        """Re-read the viewer's layers (napari calls this when layers change)."""
        reset_and_preselect(self)

    def _on_user_choice(self, *_: Any) -> None:
        if not self.preselecting:
            self._user_chose = True

    def preselect(self) -> None:
        """Choose the first image and a Labels layer of its size, until the user chooses."""
        if self.image.value is None:
            images = [v for v in self.image.choices if v is not None]
            if images:
                self.image.value = images[0]
        image = self.image.value
        current = self.labels.value
        fits = current is not None and (
            image is None or tuple(current.data.shape) == spatial_shape(image))
        if fits or (current is not None and self._user_chose):
            return
        labels = [v for v in self.labels.choices if v is not None]
        if image is not None:
            labels = [lab for lab in labels
                      if tuple(lab.data.shape) == spatial_shape(image)] or labels
        if labels and labels[0] is not current:
            self.labels.value = labels[0]

    def _disconnect_all(self) -> None:
        """Stop listening to the viewer and the layer once the dock widget is gone."""
        self._idle.stop()
        self._apply.stop()
        self.viewer.dims.events.current_step.disconnect(self._on_plane_changed)
        self._connect_labels(None)

    # ----------------------------------------------------------------- layers
    def create_labels_layer(self) -> Any:
        """Add an empty Labels layer matching the chosen image (shape, scale, translate)."""
        image = self.image.value
        if image is None:
            show_warning("napari-unet: open an image first (File > Open), then create its "
                         "labels layer")
            return None
        layer = self.viewer.add_labels(np.zeros(spatial_shape(image), dtype=np.int32),
                                       name=f"{image.name} labels", scale=image.scale,
                                       translate=image.translate)
        layer.brush_size = 8
        self.reset_choices()
        self.labels.value = layer
        self.select_new_cell()
        return layer

    def select_new_cell(self, *_: Any) -> None:
        """Select the next free label id and the Labels layer: the next drag paints a new cell."""
        layer = self.labels.value
        if layer is None:
            show_warning("napari-unet: choose the labels layer to paint on first (or create "
                         "one for the image)")
            return
        layer.selected_label = int(np.max(layer.data)) + 1 if layer.data.size else 1
        layer.visible = True
        self.viewer.layers.selection.active = layer
        if layer.mode not in ("paint", "fill"):
            layer.mode = "paint"

    def mark_annotated_region(self, *_: Any) -> Any:
        """Add (or select) the Shapes layer of annotated regions, ready to draw rectangles."""
        like = self.labels.value or self.image.value
        if like is None:
            show_warning("napari-unet: open an image first")
            return None
        from napari.layers import Shapes

        existing = [layer for layer in self.viewer.layers
                    if isinstance(layer, Shapes) and is_regions_layer(layer)]
        layer = existing[0] if existing else add_regions_layer(self.viewer, like)
        layer.mode = "add_rectangle"
        self.viewer.layers.selection.active = layer
        show_info("napari-unet: draw a rectangle around each area where every cell is painted; "
                  "choose this layer under 'annotated regions' in Train")
        return layer

    def _connect_labels(self, layer: Any) -> None:
        if self._connected is not None:
            self._connected.events.paint.disconnect(self._on_paint)
            self._connected.events.data.disconnect(self._on_data_replaced)
            self._connected.events.set_data.disconnect(self._on_set_data)
        self._connected = layer
        if layer is not None:
            layer.events.paint.connect(self._on_paint)
            layer.events.data.connect(self._on_data_replaced)
            layer.events.set_data.connect(self._on_set_data)
            layer.bind_key("n", lambda _layer: self.select_new_cell(), overwrite=True)

    def _on_labels_changed(self, layer: Any) -> None:
        if layer is self._connected:
            return
        self._connect_labels(layer)
        self._previews.clear()
        self._remove_preview_layers()
        self._update_count()
        if layer is not None:
            self._on_preview_toggled()

    def _update_count(self) -> None:
        layer = self.labels.value
        if layer is None:
            self.count.value = "0"
            return
        data = np.asarray(layer.data)
        top = int(data.max()) if data.size else 0
        if 0 <= data.min() and top < 4 * data.size:  # cheap for ordinary ids
            n = int(np.count_nonzero(np.bincount(data.ravel(), minlength=1)[1:]))
        else:
            n = int(np.count_nonzero(np.unique(data)))
        self.count.value = str(n)

    # ---------------------------------------------------------------- preview
    def _plane_index(self) -> tuple[int, ...]:
        return current_plane(self.viewer, self.labels.value)

    def _plane(self, index: tuple[int, ...]) -> np.ndarray:
        return np.asarray(self.labels.value.data[index])

    def _remove_preview_layers(self) -> None:
        for attr in ("_preview_layer", "_target_layer"):
            layer = getattr(self, attr)
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
            setattr(self, attr, None)

    def _on_preview_toggled(self, *_: Any) -> None:
        layer = self.labels.value
        if layer is None:
            return
        if not self.preview.value and self._preview_layer is not None:
            if self._preview_layer in self.viewer.layers:
                self.viewer.layers.remove(self._preview_layer)
            self._preview_layer = None
        if not self.show_target.value and self._target_layer is not None:
            if self._target_layer in self.viewer.layers:
                self.viewer.layers.remove(self._target_layer)
            self._target_layer = None
        if self.show_target.value and self._target_layer is None:
            self._target_layer = self.viewer.add_image(
                np.zeros(layer.data.shape, np.uint8), name=layer.name + TARGET_SUFFIX,
                colormap="green", blending="additive", opacity=0.5, contrast_limits=(0, 1),
                scale=layer.scale, translate=layer.translate,
            )
        if self.preview.value and self._preview_layer is None:
            self._preview_layer = self.viewer.add_image(
                np.zeros(layer.data.shape, np.float32), name=layer.name + PREVIEW_SUFFIX,
                colormap="inferno", blending="additive", opacity=0.9, scale=layer.scale,
                translate=layer.translate, contrast_limits=self._border_limits(),
            )
        self._keep_painting(layer)
        self._refresh_plane()

    def _border_limits(self) -> tuple[float, float]:
        # the border term alone, on its own scale: the gaps between touching cells are
        # about 0.5 to 0.9 of w0 and stand out at once
        return (0.0, max(float(self.w0.value), 1e-3))

    def _keep_painting(self, labels: Any) -> None:
        """Previews above the labels (visible over the paint), the labels still active."""
        layers = self.viewer.layers
        for overlay in (self._target_layer, self._preview_layer):
            if overlay is not None and overlay in layers:
                layers.move(layers.index(overlay), len(layers))
        layers.selection.active = labels

    def _preview_for(self, index: tuple[int, ...]) -> TargetPreview:
        preview = self._previews.get(index)
        if preview is None:
            preview = TargetPreview(self._plane(index), gap=TRAINING_GAP, w0=self.w0.value,
                                    sigma=self.sigma.value)
            self._previews[index] = preview
        return preview

    def _refresh_plane(self, box: tuple[slice, ...] | None = None) -> None:
        """Bring the preview layers up to date on the current plane (or only near ``box``)."""
        if self.labels.value is None or (self._preview_layer is None
                                         and self._target_layer is None):
            return
        t = time.perf_counter()
        index = self._plane_index()
        preview = self._preview_for(index)
        if box is None:
            region: tuple[slice, ...] = (slice(None), slice(None))
        else:
            region = preview.update(self._plane(index), box)
        if self._preview_layer is not None:
            self._preview_layer.data[index + region] = preview.border[region]
            self._preview_layer.refresh()
        if self._target_layer is not None:
            self._target_layer.data[index + region] = preview.target[region]
            self._target_layer.refresh()
        self.last_update_ms = (time.perf_counter() - t) * 1000
        self.timing.value = f"preview updated in {self.last_update_ms:.0f} ms"

    # ---------------------------------------------------------------- events
    def _on_paint(self, event: Any) -> None:
        box = changed_box(event.value, self.labels.value.ndim)
        if box is None:
            return
        if self._pending_box is not None:
            box = tuple(slice(min(a.start, b.start), max(a.stop, b.stop))
                        for a, b in zip(self._pending_box, box))
        self._pending_box = box
        self._apply.start()

    def _on_set_data(self, *_: Any) -> None:
        self._pending_diff = True
        self._apply.start()

    @property
    def busy(self) -> bool:
        """True while an edit waits to be applied to the preview."""
        return self._pending_box is not None or self._pending_diff

    def _changed_since_cached(self) -> tuple[slice, ...] | None:
        """Box of what changed without a paint event (undo, redo); stale planes are dropped."""
        index = self._plane_index()
        box = None
        for key, preview in list(self._previews.items()):
            changed = preview.labels != self._plane(key)
            if not changed.any():
                continue
            if key != index:
                del self._previews[key]
                continue
            rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
            box = key + (slice(int(rows[0]), int(rows[-1]) + 1),
                         slice(int(cols[0]), int(cols[-1]) + 1))
        return box

    def _apply_pending(self) -> None:
        box, self._pending_box = self._pending_box, None
        diff, self._pending_diff = self._pending_diff, False
        layer = self.labels.value
        if layer is None:
            return
        self._idle.start()  # (re)start the countdown to the cell count
        if box is None and diff:  # a paint event brings its own box; else look for changes
            box = self._changed_since_cached()
        if box is None:
            return
        index = self._plane_index()
        if layer.ndim > 2:
            for key in list(self._previews):  # other planes edited (e.g. by undo): recompute
                if key != index and all(s.start <= k < s.stop for s, k in zip(box[:-2], key)):
                    del self._previews[key]
            if not all(s.start <= i < s.stop for s, i in zip(box[:-2], index)):
                return
        self._refresh_plane(box[-2:])

    def _on_data_replaced(self, *_: Any) -> None:
        self._previews.clear()
        self._update_count()
        if self._preview_layer is not None and (
            self._preview_layer.data.shape != self.labels.value.data.shape
        ):
            show_info("napari-unet: the labels changed shape; the preview starts over")
            self._remove_preview_layers()
            self._on_preview_toggled()
            return
        self._refresh_plane()

    def _on_params_changed(self, *_: Any) -> None:
        self._previews.clear()
        if self._preview_layer is not None:
            self._preview_layer.contrast_limits = self._border_limits()
        self._refresh_plane()

    def _on_plane_changed(self, *_: Any) -> None:
        if self.labels.value is not None and self.labels.value.ndim > 2:
            self._refresh_plane()
