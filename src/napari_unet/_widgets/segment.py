"""The "Segment layer" dock widget: tiled U-Net prediction of an image layer into labels.

Lazy layers (dask or zarr data, multiscale pyramids) are segmented block by block into
a zarr array in a temporary folder, which backs the new Labels layer: the image and the
labels are never loaded whole, and the worker thread only writes to that array; the
layers are added in the main thread once it is done.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
    create_widget,
)
from napari.utils.notifications import show_error, show_info, show_warning

from ..core import available_devices, load_model
from ..core._utils import is_lazy_array
from ..core.blocks import create_zarr_array, iter_segment_blocks
from ._common import NEW_FILE, layer_region, model_choices, models_changed, start_worker

if TYPE_CHECKING:
    import napari

__all__ = ["SegmentWidget"]

FILL = "fill unlabelled pixels only"
REPLACE = "replace labels in the region"
_PHASES = {"predict": "predicting tiles", "merge": "joining cells across blocks",
           "label": "labelling blocks"}


def is_lazy_layer(layer: Any) -> bool:
    """True for a layer whose data is not in memory: multiscale, dask, zarr."""
    return bool(getattr(layer, "multiscale", False)) or is_lazy_array(layer.data)


class RegionView:
    """A writable window ``index`` of a larger array, indexed in the window's coordinates.

    Lets the block engine write the result of a region (one plane, the visible part)
    straight into a full-size zarr array.
    """

    def __init__(self, array: Any, index: tuple) -> None:
        self.array = array
        self.index = tuple(index) + (slice(None),) * (len(array.shape) - len(index))
        self.starts, shape = [], []
        for idx, n in zip(self.index, array.shape):
            if isinstance(idx, slice):
                start, stop, _ = idx.indices(n)
                self.starts.append(start)
                shape.append(stop - start)
        self.shape = tuple(shape)
        self.dtype = array.dtype

    def _full(self, key: Any) -> tuple:
        key = key if isinstance(key, tuple) else (key,)
        if key == (Ellipsis,):
            key = ()
        key = key + (slice(None),) * (len(self.shape) - len(key))
        full, k = [], 0
        for idx in self.index:
            if not isinstance(idx, slice):
                full.append(idx)
                continue
            part, start, n = key[k], self.starts[k], self.shape[k]
            if isinstance(part, slice):
                a, b, _ = part.indices(n)
                full.append(slice(start + a, start + b))
            else:
                full.append(start + int(part))
            k += 1
        return tuple(full)

    def __getitem__(self, key: Any) -> Any:
        return self.array[self._full(key)]

    def __setitem__(self, key: Any, value: Any) -> None:
        self.array[self._full(key)] = value


class SegmentWidget(Container):
    """Segment an image layer with a U-Net model; the result goes to a Labels layer.

    By default a new Labels layer named after the image is added (same scale and
    translate). When an existing Labels layer is chosen, the result is written into
    it as one undoable step, either only where it is still 0 or replacing it.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        import napari

        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.image = create_widget(annotation=napari.layers.Image, label="image")
        self.model = ComboBox(label="model", choices=model_choices)
        self.model_file = FileEdit(label="model file", mode="r", filter="*.pt *.zip",
                                   visible=False)
        self.tile = SpinBox(label="tile size", min=0, max=16384, step=4, value=0,
                            tooltip="network input size of one tile; 0 = automatic from "
                            "the memory available")
        self.device = ComboBox(label="device", choices=["auto", *available_devices()])
        self.output = create_widget(annotation=napari.layers.Labels | None, label="write into",
                                    options={"nullable": True})
        self.mode = ComboBox(label="", choices=[FILL, REPLACE], visible=False)
        self.current_plane = CheckBox(text="current plane only", value=False)
        self.visible_only = CheckBox(text="visible region only", value=False)
        self.probabilities = CheckBox(text="add probability map", value=False)
        self.run_button = PushButton(text="Segment layer")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0, visible=False)
        self.status = Label(label="", value="")
        self.extend([
            self.image, self.model, self.model_file, self.tile, self.device, self.output,
            self.mode, self.current_plane, self.visible_only, self.probabilities,
            self.run_button, self.cancel_button, self.progress, self.status,
        ])
        self.output.native.setToolTip("none: add a new Labels layer")
        self.model.changed.connect(self._on_model_changed)
        self.output.changed.connect(lambda v: setattr(self.mode, "visible", v is not None))
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.worker: Any = None
        self.last_result: Any = None
        self._on_model_changed(self.model.value)
        models_changed.connect(self.refresh_models)
        self.native.destroyed.connect(lambda *_: models_changed.disconnect(self.refresh_models))

    # ----------------------------------------------------------------- helpers
    def _on_model_changed(self, value: Any) -> None:
        self.model_file.visible = value == NEW_FILE

    def refresh_models(self) -> None:
        """Re-read the list of models (after a training run saved a new one)."""
        self.model.reset_choices()

    def _model_path(self) -> Path | str:
        value = self.model.value
        if value == NEW_FILE:
            path = Path(self.model_file.value)
            if not path.is_file():
                raise ValueError("choose a model file first (or pick a model from the list)")
            return path
        if value is None:
            return "default"
        return value

    @property
    def running(self) -> bool:
        return self.worker is not None

    # --------------------------------------------------------------------- run
    def run(self) -> None:
        """Start segmenting in a background worker (the button's action)."""
        if self.running:
            show_info("napari-unet: a segmentation is already running")
            return
        layer = self.image.value
        if layer is None:
            show_warning("napari-unet: add or choose an image layer to segment")
            return
        try:
            model = load_model(self._model_path())
            data, index = layer_region(self.viewer, layer, self.current_plane.value,
                                       self.visible_only.value)
        except (ValueError, OSError) as err:
            self.status.value = str(err)
            show_error(f"napari-unet: {err}")
            return
        target = self.output.value
        spatial = tuple(layer.level_shapes[0][: layer.ndim])
        if target is not None and tuple(target.data.shape) != spatial:
            self.status.value = (
                f"the Labels layer {target.name!r} has shape {tuple(target.data.shape)} but "
                f"the image has {spatial}; choose a matching Labels layer, or none for a new one"
            )
            show_error(f"napari-unet: {self.status.value}")
            return
        axes = "yxc" if layer.rgb and data.ndim == 3 else None
        if layer.rgb and data.ndim == 4:
            axes = "zyxc"
        tile = self.tile.value or None
        device = self.device.value
        with_probs = self.probabilities.value
        # a lazy layer goes block by block into a zarr array on disk, never into memory
        lazy = target is None and is_lazy_layer(layer)
        context = {"layer": layer, "index": index, "output": target, "lazy": lazy,
                   "mode": self.mode.value, "probabilities": with_probs, "model": model}

        def work():
            folder = Path(tempfile.mkdtemp(prefix="napari-unet-")) if lazy else None
            context["folder"] = folder  # removed by _on_finished if the run is cancelled
            try:
                out = probs = None
                if folder is not None:
                    chunks = (1,) * (len(spatial) - 2) + (1024, 1024)
                    labels = create_zarr_array(folder / "labels.zarr", spatial, chunks, "int32")
                    out = RegionView(labels, index)
                    if with_probs:
                        full = create_zarr_array(folder / "probabilities.zarr",
                                                 (model.n_classes, *spatial),
                                                 (model.n_classes, *chunks), "float32")
                        probs = RegionView(full, (slice(None), *index))
                result = yield from iter_segment_blocks(
                    data, model, tile_shape=tile, device=device, axes=axes, out=out,
                    probabilities=probs if lazy else (with_probs or None),
                )
            except BaseException:  # cancelled or failed: leave nothing behind
                if folder is not None:
                    shutil.rmtree(folder, ignore_errors=True)
                raise
            if folder is not None:
                atexit.register(shutil.rmtree, str(folder), True)
                return result, labels, full if with_probs else None, folder
            return result, None, None, None

        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.visible = True
        self.progress.value = 0
        self.status.value = f"segmenting {layer.name}…"
        self.worker = start_worker(
            work,
            on_yield=self._on_progress,
            on_return=lambda result: self._on_done(result, context),
            on_error=self._on_error,
            on_finish=lambda: self._on_finished(context),
        )

    def cancel(self) -> None:
        """Stop the running segmentation between two batches of tiles."""
        if self.worker is not None:
            self.worker.quit()
            self.status.value = "cancelling…"

    def _on_progress(self, p: Any) -> None:
        self.progress.max = max(int(p.total), 1)
        self.progress.value = int(p.done)
        phase = _PHASES.get(getattr(p, "phase", "predict"), "")
        self.status.value = f"{phase}: {p.done} / {p.total}"

    def _on_error(self, err: Exception) -> None:
        show_error(f"napari-unet: segmentation failed: {err}")
        self.status.value = f"failed: {err}"

    def _on_finished(self, context: dict[str, Any] | None = None) -> None:
        if self.worker is not None and getattr(self.worker, "abort_requested", False):
            self.status.value = "cancelled; nothing was changed"
            folder = (context or {}).get("folder")
            if folder is not None:  # the stopped generator's temporary zarr arrays
                shutil.rmtree(folder, ignore_errors=True)
        self.worker = None
        self.run_button.enabled = True
        self.cancel_button.enabled = False
        self.progress.visible = False

    def _on_done(self, result: Any, ctx: dict[str, Any]) -> None:
        try:
            self._show_result(result, ctx)
        except Exception as err:  # noqa: BLE001 - a callback must never take the viewer down
            show_error(f"napari-unet: could not add the result: {err}")

    def _show_result(self, result: Any, ctx: dict[str, Any]) -> None:
        segmentation, zarr_labels, zarr_probs, folder = result
        labels, probs = segmentation.labels, segmentation.probabilities
        layer = ctx["layer"]
        index = ctx["index"]
        spatial = tuple(layer.level_shapes[0][: layer.ndim])
        model = ctx["model"]
        n_cells = int(segmentation.n_cells)
        target = ctx["output"]
        if ctx["lazy"]:
            self._add_lazy(layer, zarr_labels, zarr_probs, model, ctx["probabilities"])
            self.status.value = f"{n_cells} cells found in {layer.name} (stored in {folder})"
            show_info(f"napari-unet: {n_cells} cells found in {layer.name}")
            return
        if target is None:
            full = np.zeros(spatial, dtype=np.int32)
            full[index] = labels
            new = self.viewer.add_labels(
                full, name=f"{layer.name} labels", scale=layer.scale, translate=layer.translate,
            )
            self.last_result = new
        else:
            self._write_into(target, labels, index, ctx["mode"])
            self.last_result = target
        if ctx["probabilities"]:
            names = [c.lower() for c in model.classes]
            k = names.index("cell") if "cell" in names else len(names) - 1
            full_p = np.zeros(spatial, dtype=np.float32)
            full_p[index] = probs[k]
            self.viewer.add_image(full_p, name=f"{layer.name} probability", colormap="magma",
                                  blending="additive", contrast_limits=(0, 1),
                                  scale=layer.scale, translate=layer.translate)
        self.status.value = f"{n_cells} cells found in {layer.name}"
        show_info(f"napari-unet: {n_cells} cells found in {layer.name}")

    def _add_lazy(self, layer: Any, labels: Any, probs: Any, model: Any, with_probs: bool) -> None:
        """Add zarr-backed layers; a pyramid of strided views when the image is multiscale."""
        import dask.array as da

        def levels(array: Any) -> Any:
            if not getattr(layer, "multiscale", False):
                return array
            shapes = [tuple(s[: layer.ndim]) for s in layer.level_shapes]
            base = da.from_zarr(array)
            pyramid = [base]
            for shape in shapes[1:]:
                steps = [max(1, round(a / b)) for a, b in zip(shapes[0], shape)]
                pyramid.append(base[tuple(slice(None, None, s) for s in steps)])
            return pyramid

        self.last_result = self.viewer.add_labels(
            levels(labels), name=f"{layer.name} labels", scale=layer.scale,
            translate=layer.translate, multiscale=getattr(layer, "multiscale", False),
        )
        if with_probs:
            names = [c.lower() for c in model.classes]
            k = names.index("cell") if "cell" in names else len(names) - 1
            cell = da.from_zarr(probs)[k]
            if getattr(layer, "multiscale", False):
                shapes = [tuple(s[: layer.ndim]) for s in layer.level_shapes]
                cell = [cell] + [
                    cell[tuple(slice(None, None, max(1, round(a / b))) for a, b in
                               zip(shapes[0], shape))] for shape in shapes[1:]
                ]
            self.viewer.add_image(cell, name=f"{layer.name} probability", colormap="magma",
                                  blending="additive", contrast_limits=(0, 1),
                                  scale=layer.scale, translate=layer.translate,
                                  multiscale=getattr(layer, "multiscale", False))

    def _write_into(self, target: Any, labels: np.ndarray, index: tuple, mode: str) -> None:
        """Write into an existing Labels layer as one undo step; ids never collide."""
        region_shape = target.data[index].shape
        if region_shape != labels.shape:
            raise ValueError(
                f"the Labels layer {target.name!r} (shape {target.data.shape}) does not match "
                "the image; choose a matching layer or write to a new one"
            )
        existing = np.asarray(target.data[index])
        offset = int(np.max(target.data)) if np.size(target.data) else 0
        new_ids = np.where(labels > 0, labels + offset, 0)
        if mode == FILL:
            where = (existing == 0) & (new_ids > 0)
        else:
            where = np.ones(labels.shape, bool)
        local = np.nonzero(where)
        coords, k = [], 0
        for idx in index:  # back from the region to the layer's coordinates
            if isinstance(idx, int):
                coords.append(np.full(local[0].shape, idx))
            else:
                coords.append(local[k] + (idx.start or 0))
                k += 1
        with target.block_history():
            target.data_setitem(tuple(coords), new_ids[local].astype(target.data.dtype))
