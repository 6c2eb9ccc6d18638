"""The "Annotate" dock widget: paint cells with a live preview of the U-Net weight map."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    Container,
    FloatSpinBox,
    Label,
    PushButton,
    create_widget,
)
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QTimer

from ..core.weightmap import WeightMapCache, carve_gaps
from ._common import current_plane

if TYPE_CHECKING:
    import napari

__all__ = ["AnnotateWidget", "changed_box"]

PREVIEW_SUFFIX = " weight map"
TARGET_SUFFIX = " training target"


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


class AnnotateWidget(Container):
    """Paint instance labels with a live preview of the U-Net boundary weight map.

    Pick the image and the Labels layer to paint on (or create one that matches
    the image). **New cell** (or the ``n`` key on the Labels layer) selects the
    next free label, so each cell gets its own id. Tick **show weight map** to see
    the training weight map of the paper: bright where the network is pushed to
    separate touching cells (the narrow background gaps between cells). It follows
    every stroke, fill and erase; on a stack it shows the current plane.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        import napari

        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.image = create_widget(annotation=napari.layers.Image | None, label="image",
                                   options={"nullable": True})
        self.labels = create_widget(annotation=napari.layers.Labels | None, label="labels",
                                    options={"nullable": True})
        self.create_button = PushButton(text="Create labels layer for the image")
        self.new_cell = PushButton(text="New cell (n)")
        self.count = Label(label="cells", value="0")
        self.preview = CheckBox(text="show weight map (live)", value=False)
        self.show_target = CheckBox(text="show training target (with carved gaps)",
                                    value=False)
        self.w0 = FloatSpinBox(label="w0", min=0, max=100, step=1, value=10.0)
        self.sigma = FloatSpinBox(label="σ (pixels)", min=0.5, max=50, step=0.5, value=5.0)
        self.timing = Label(label="", value="")
        self.extend([self.image, self.labels, self.create_button, self.new_cell, self.count,
                     self.preview, self.show_target, self.w0, self.sigma, self.timing])
        self.create_button.changed.connect(self.create_labels_layer)
        self.new_cell.changed.connect(self.select_new_cell)
        self.labels.changed.connect(self._on_labels_changed)
        self.preview.changed.connect(self._on_preview_toggled)
        self.show_target.changed.connect(self._on_preview_toggled)
        self.w0.changed.connect(self._on_params_changed)
        self.sigma.changed.connect(self._on_params_changed)
        self.viewer.dims.events.current_step.connect(self._on_plane_changed)
        self._connected: Any = None
        self._caches: dict[tuple[int, ...], WeightMapCache] = {}
        self._preview_layer: Any = None
        self._target_layer: Any = None
        self.last_update_ms: float | None = None
        # after painting pauses, bring the class-balance term of the whole plane up to date
        self._full_refresh = QTimer(self.native)
        self._full_refresh.setSingleShot(True)
        self._full_refresh.setInterval(400)
        self._full_refresh.timeout.connect(self._when_idle)
        # napari emits the paint event before it writes the new values: apply the
        # changes once the event loop is back (which also merges quick successive events)
        self._pending_box: tuple[slice, ...] | None = None
        self._pending_diff = False  # undo, redo and scripts change data without paint events
        self._idle_refresh = False
        self._apply = QTimer(self.native)
        self._apply.setSingleShot(True)
        self._apply.setInterval(0)
        self._apply.timeout.connect(self._apply_pending)
        self.native.destroyed.connect(self._disconnect_all)
        self._on_labels_changed(self.labels.value)

    def _when_idle(self) -> None:
        """Work that can wait until painting pauses: the cell count, the class balance."""
        self._update_count()
        if self._idle_refresh:
            self._idle_refresh = False
            self._refresh_plane()

    def _disconnect_all(self, *_: Any) -> None:
        """Stop listening to the viewer and the layer once the dock widget is gone."""
        self._full_refresh.stop()
        self._apply.stop()
        self.viewer.dims.events.current_step.disconnect(self._on_plane_changed)
        if self._connected is not None:
            self._connected.events.paint.disconnect(self._on_paint)
            self._connected.events.data.disconnect(self._on_data_replaced)
            self._connected.events.set_data.disconnect(self._on_set_data)
            self._connected = None

    # ----------------------------------------------------------------- layers
    def create_labels_layer(self) -> Any:
        """Add an empty Labels layer matching the chosen image (shape, scale, translate)."""
        image = self.image.value
        if image is None:
            show_warning("napari-unet: choose an image layer first")
            return None
        shape = tuple(image.level_shapes[0][: image.ndim])
        layer = self.viewer.add_labels(np.zeros(shape, dtype=np.int32),
                                       name=f"{image.name} labels", scale=image.scale,
                                       translate=image.translate)
        layer.brush_size = 8
        layer.mode = "paint"
        self.labels.reset_choices()
        self.labels.value = layer
        self.select_new_cell()
        return layer

    def select_new_cell(self, *_: Any) -> None:
        """Select the next free label id, so the next stroke starts a new cell."""
        layer = self.labels.value
        if layer is None:
            return
        layer.selected_label = int(np.max(layer.data)) + 1 if layer.data.size else 1
        if layer.mode not in ("paint", "fill"):
            layer.mode = "paint"

    def _on_labels_changed(self, layer: Any) -> None:
        if self._connected is not None:
            self._connected.events.paint.disconnect(self._on_paint)
            self._connected.events.data.disconnect(self._on_data_replaced)
            self._connected.events.set_data.disconnect(self._on_set_data)
        self._connected = layer
        self._caches.clear()
        self._remove_preview_layers()
        if layer is None:
            self.count.value = "0"
            return
        layer.events.paint.connect(self._on_paint)
        layer.events.data.connect(self._on_data_replaced)
        layer.events.set_data.connect(self._on_set_data)
        layer.bind_key("n", lambda _layer: self.select_new_cell(), overwrite=True)
        self._update_count()
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
        if self.preview.value and self._preview_layer is None:
            self._preview_layer = self.viewer.add_image(
                np.zeros(layer.data.shape, np.float32), name=layer.name + PREVIEW_SUFFIX,
                colormap="inferno", blending="additive", opacity=0.8, scale=layer.scale,
                translate=layer.translate, contrast_limits=(0.0, self.w0.value + 2.0),
            )
            self._reselect(layer)
        if self.show_target.value and self._target_layer is None:
            self._target_layer = self.viewer.add_image(
                np.zeros(layer.data.shape, np.uint8), name=layer.name + TARGET_SUFFIX,
                colormap="green", blending="additive", opacity=0.5, contrast_limits=(0, 1),
                scale=layer.scale, translate=layer.translate,
            )
            self._reselect(layer)
        self._refresh_plane()

    def _reselect(self, layer: Any) -> None:
        """Keep the Labels layer selected (and on top) so painting goes on without a click."""
        layers = self.viewer.layers
        layers.move(layers.index(layer), len(layers))
        layers.selection.active = layer

    def _cache_for(self, index: tuple[int, ...]) -> WeightMapCache:
        cache = self._caches.get(index)
        if cache is None:
            cache = WeightMapCache(self._plane(index), w0=self.w0.value, sigma=self.sigma.value)
            self._caches[index] = cache
        return cache

    def _refresh_plane(self, box: tuple[slice, ...] | None = None) -> None:
        """Bring the preview layers up to date on the current plane (or only near ``box``)."""
        if self.labels.value is None or (self._preview_layer is None
                                         and self._target_layer is None):
            return
        t = time.perf_counter()
        index = self._plane_index()
        plane = self._plane(index)
        if self._preview_layer is not None:
            cache = self._cache_for(index)
            if box is None:  # the cache follows every edit; show all of it
                self._preview_layer.data[index] = cache.weights
            else:
                region = cache.update(plane, box)
                self._preview_layer.data[index + region] = cache.region_weights(region)
                if cache.balance_changed:
                    self._idle_refresh = True
            self._preview_layer.refresh()
        if self._target_layer is not None:
            h, w = plane.shape
            if box is None:
                inner = (slice(0, h), slice(0, w))
            else:  # carving looks one pixel around each changed pixel
                inner = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n))
                              for s, n in zip(box, (h, w)))
            outer = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n))
                          for s, n in zip(inner, (h, w)))
            carved = carve_gaps(plane[outer], 1) > 0
            crop = tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer))
            self._target_layer.data[index + inner] = carved[crop]
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
        for key, cache in list(self._caches.items()):
            changed = cache.labels != self._plane(key)
            if not changed.any():
                continue
            if key != index:
                del self._caches[key]
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
        self._full_refresh.start()  # (re)start the countdown to the idle work
        if box is None and diff:  # a paint event brings its own box; else look for changes
            box = self._changed_since_cached()
        if box is None:
            return
        index = self._plane_index()
        if layer.ndim > 2:
            for key in list(self._caches):  # other planes edited (e.g. by undo): recompute
                if key != index and all(s.start <= k < s.stop for s, k in zip(box[:-2], key)):
                    del self._caches[key]
            if not all(s.start <= i < s.stop for s, i in zip(box[:-2], index)):
                return
        self._refresh_plane(box[-2:])

    def _on_data_replaced(self, *_: Any) -> None:
        self._caches.clear()
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
        self._caches.clear()
        self._refresh_plane()

    def _on_plane_changed(self, *_: Any) -> None:
        if self.labels.value is not None and self.labels.value.ndim > 2:
            self._refresh_plane()
