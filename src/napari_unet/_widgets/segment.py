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
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
)
from napari.utils.notifications import show_error, show_info

from ..core import SegmentOptions, available_devices, load_model
from ..core._utils import is_lazy_array
from ..core.blocks import iter_segment_blocks
from ..core.cellsize import (
    describe_scale,
    iter_segment_sized,
    model_cell_diameter_of,
    scale_for_cell_size,
)
from ..core.decode import MIN_SHARE
from ..core.model import cell_probability
from ..core.regions import lazy, pyramid, region_outputs
from ..core.split import SPLIT_DEPTH
from ..core.zoo import list_models
from ._common import (
    NEW_FILE,
    DockLifetime,
    layer_region,
    model_choices,
    models_changed,
    scroll_area,
    section,
    shape_text,
    spatial_shape,
    start_worker,
    wrap_label,
)
from .annotate import layer_choices

if TYPE_CHECKING:
    import napari

__all__ = ["SegmentWidget", "is_lazy_layer"]

FILL = "fill unlabelled pixels only"
REPLACE = "replace labels in the region"
_PHASES = {"predict": "predicting tiles", "merge": "joining cells across blocks",
           "label": "labelling blocks", "split": "cutting merged nuclei apart",
           "rescale": "small or large cells: segmenting again, rescaled"}


def is_lazy_layer(layer: Any) -> bool:
    """True for a layer whose data is not in memory: multiscale, dask, zarr."""
    return bool(getattr(layer, "multiscale", False)) or is_lazy_array(layer.data)


def model_label(model: Any, source: Any) -> str:
    """A short name for a model: its recorded name, else its file's name."""
    name = (model.metadata or {}).get("name")
    return str(name) if name else Path(str(source)).stem


class SegmentWidget(Container):
    """Segment an image layer with a U-Net model; the result goes to a Labels layer.

    By default a new Labels layer named after the image and the model is added
    (same scale and translate). When an existing Labels layer is chosen, the
    result is written into it as one undoable step, either only where it is
    still 0 or replacing it. **cell probability**, **smallest cell** and **cell
    diameter** tune how probabilities become cells, as in cellpose and StarDist.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        import napari

        super().__init__(labels=False)
        self.viewer = napari_viewer
        self.image = ComboBox(label="image", choices=layer_choices(
            napari_viewer, napari.layers.Image, nullable=False),
            tooltip="the image layer to segment")
        self.model = ComboBox(label="model", choices=model_choices,
                              tooltip="the pretrained nuclei model shipped with the plugin, a "
                                      "model you trained (Train on current labels), or a file")
        self.model_file = FileEdit(label="model file", mode="r", filter="*.pt *.zip",
                                   visible=False, tooltip="a napari-unet model file (.pt) or "
                                                          "bioimage.io package (.zip)")
        self.threshold = FloatSpinBox(
            label="cell probability", min=0.05, max=0.95, step=0.05, value=0.5,
            tooltip="pixels at least this likely to be cell count as cell: lower it when "
                    "cells come out too small or are missed, raise it when background is "
                    "taken for cells")
        self.min_size = SpinBox(
            label="smallest cell (px)", min=0, max=1_000_000, step=4, value=16,
            tooltip="objects smaller than this many pixels (area) are dropped as noise")
        self.fragments = CheckBox(
            text="drop small fragments", value=True,
            tooltip="drop objects under a tenth of the area of the image's typical cell "
                    "(debris, specks of noise, the glow around a very bright nucleus), except "
                    "at the image border, where cells are cut; untick to keep every object "
                    "of at least the smallest cell size")
        self.split = CheckBox(
            text="split touching nuclei", value=True,
            tooltip="cut a cell that holds two touching nuclei apart at the waist between "
                    "them; untick to keep every cell as the network found it")
        self.diameter = FloatSpinBox(
            label="cell diameter (px)", min=0, max=2000, step=1, value=0,
            tooltip=self._diameter_tip(None))
        # 0 reads "auto": the image decides (cells far from the model's size are rescaled)
        self.diameter.native.setSpecialValueText("auto")
        self.output = ComboBox(label="write into", choices=self._output_choices,
                               tooltip="a new Labels layer, or one of yours: the result is "
                                       "then written into it as one undoable step")
        self.mode = ComboBox(label="how", choices=[FILL, REPLACE], visible=False,
                             tooltip="keep your cells and fill only where the layer is 0, or "
                                     "overwrite the region (one undo step either way)")
        self.current_plane = CheckBox(text="current plane only", value=False,
                                      tooltip="of a stack, only the plane shown now")
        self.visible_only = CheckBox(text="visible region only", value=False,
                                     tooltip="only the part of the image shown on the canvas")
        self.probabilities = CheckBox(text="add probability map", value=False,
                                      tooltip="also add an image of each pixel's probability "
                                              "of being cell")
        self.run_button = PushButton(text="Segment layer",
                                     tooltip="segment in the background; the cells appear in "
                                             "a Labels layer")
        self.cancel_button = PushButton(text="Cancel", enabled=False,
                                        tooltip="stop between two tiles; nothing is changed")
        buttons = Container(widgets=[self.run_button, self.cancel_button],
                            layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.status = Label(label="", value="", tooltip="what segmenting does, and what it found")
        wrap_label(self.status)
        self.tile = SpinBox(label="tile size", min=0, max=16384, step=4, value=0,
                            tooltip="network input size of one tile; 0 = automatic from the "
                                    "memory available (recommended)")
        self.device = ComboBox(label="device", choices=["auto", *available_devices()],
                               tooltip="auto: a GPU if this computer has one, else the CPU")
        options = Container(widgets=[self.tile, self.device], labels=True)
        self.form = Container(widgets=[
            self.image, self.model, self.model_file, self.threshold, self.min_size,
            self.fragments, self.split, self.diameter, self.output, self.mode, self.current_plane,
            self.visible_only, self.probabilities, buttons, self.status,
        ], labels=True)
        layout = self.form.native.layout()
        layout.addWidget(section("options", options.native))
        layout.addStretch(1)
        self.margins = (0, 0, 0, 0)
        self.native.layout().addWidget(scroll_area(self.form.native))

        self.model.changed.connect(self._on_model_changed)
        self.output.changed.connect(lambda v: setattr(self.mode, "visible", v is not None))
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.worker: Any = None
        self.pbar: Any = None
        self.done_units = 0
        self.last_result: Any = None
        models_changed.connect(self.refresh_models)
        self.lifetime = DockLifetime(self.native, self._on_dock_closed)
        self._on_model_changed(self.model.value)
        self.reset_choices()

    def _output_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        import napari

        return [("new layer", None)] + [(layer.name, layer) for layer in self.viewer.layers
                                        if isinstance(layer, napari.layers.Labels)]

    def reset_choices(self, *_: Any) -> None:
        """Re-read the viewer's layers (napari calls this when layers change)."""
        if not self.lifetime.closed:
            self.form.reset_choices()

    # ----------------------------------------------------------------- helpers
    @staticmethod
    def _diameter_tip(size: float | None) -> str:
        learned = "" if size is None else f" (this model learned cells of about {size:.0f} px)"
        return ("the typical diameter of the cells in this image, in pixels: the image is "
                f"rescaled so that its cells get the size the model learned{learned}. auto: "
                "when the cells come out smaller than half that size (or larger than twice "
                "it), the image is segmented again, rescaled, and that result is kept if the "
                "network is surer of it; to use the image as it is, type the model's size")

    def _on_model_changed(self, value: Any) -> None:
        self.model_file.visible = value == NEW_FILE
        info = next((m for m in list_models() if m.path == value), None)
        size = None if info is None else model_cell_diameter_of(info.metadata)
        self.diameter.tooltip = self._diameter_tip(size)
        if info is not None:  # on for models of touching nuclei (they record it), else off
            try:
                self.split.value = SegmentOptions().split_for(info) > 0
            except ValueError:  # a bad record: Segment layer says so when it runs
                self.split.value = True

    def refresh_models(self) -> None:
        """Re-read the list of models (after a training run saved a new one)."""
        if not self.lifetime.closed:
            self.model.reset_choices()

    def _model_path(self) -> Path | str:
        value = self.model.value
        if value == NEW_FILE:
            path = Path(self.model_file.value)
            if not path.is_file():
                raise ValueError("choose the model file under 'model file' first (or a model "
                                 "from the list)")
            return path
        if value is None:
            return "default"
        return value

    def _check_tile(self, model: Any) -> None:
        """Refuse tiles so small that the network's context makes segmenting crawl."""
        tile = int(self.tile.value)
        if tile == 0:
            return
        smallest = int(model.valid_input_shape((2 * model.margin,))[0])
        if tile < smallest:
            out = max(tile - 2 * model.margin, 0)
            raise ValueError(
                f"a tile size of {tile} leaves only {out} pixels of result per tile side (the "
                f"model needs {model.margin} pixels of context on each side), which makes "
                f"segmenting many times slower: use 0 (automatic) or at least {smallest}")

    @property
    def running(self) -> bool:
        return self.worker is not None

    def _on_dock_closed(self) -> None:
        models_changed.disconnect(self.refresh_models)
        if self.worker is not None:
            self.worker.quit()
        if self.pbar is not None:
            self.pbar.close()
            self.pbar = None

    # --------------------------------------------------------------------- run
    def run(self) -> None:
        """Start segmenting in a background worker (the button's action)."""
        from napari.utils import cancelable_progress

        if self.running:
            show_info("napari-unet: a segmentation is already running")
            return
        layer = self.image.value
        if layer is None:
            self._fail("open an image first (File > Open), then choose it under 'image'")
            return
        try:
            source = self._model_path()
            model = load_model(source)
            self._check_tile(model)
            diameter = float(self.diameter.value) or None  # None: auto
            factor = scale_for_cell_size(model, diameter)
            data, index = layer_region(self.viewer, layer, self.current_plane.value,
                                       self.visible_only.value)
        except (ValueError, OSError) as err:
            self._fail(str(err))
            return
        target = self.output.value
        spatial = spatial_shape(layer)
        if target is not None and tuple(target.data.shape) != spatial:
            self._fail(
                f"the Labels layer '{target.name}' ({shape_text(target.data.shape)}) does not "
                f"match the image ({shape_text(spatial)}): choose a Labels layer of the "
                "image's size under 'write into', or 'new layer'")
            return
        axes = "yxc" if layer.rgb and data.ndim == 3 else None
        if layer.rgb and data.ndim == 4:
            axes = "zyxc"
        # a lazy layer goes block by block into a zarr array on disk, never into memory
        lazy = target is None and is_lazy_layer(layer)
        if lazy and factor != 1.0:
            self._fail(f"'cell diameter' needs an image in memory, and '{layer.name}' is read "
                       "from disk piece by piece: set the cell diameter to auto, or tick "
                       "'visible region only' on a small part")
            return
        with_probs = self.probabilities.value
        try:  # ticked: the model's depth of cut, or the usual one if it records none
            split = (SegmentOptions().split_for(model) or SPLIT_DEPTH) if self.split.value \
                else 0.0
        except ValueError as err:
            self._fail(f"{err}: untick 'split touching nuclei', or use another model")
            return
        options = SegmentOptions(tile_shape=self.tile.value or None, device=self.device.value,
                                 axes=axes, threshold=float(self.threshold.value),
                                 min_size=int(self.min_size.value), split=split,
                                 min_share=MIN_SHARE if self.fragments.value else 0.0,
                                 diameter=diameter)
        context = {"layer": layer, "index": index, "output": target, "lazy": lazy,
                   "mode": self.mode.value, "probabilities": with_probs, "model": model,
                   "name": model_label(model, source), "folder": None,
                   "diameter": diameter}

        def work():
            folder = Path(tempfile.mkdtemp(prefix="napari-unet-")) if lazy else None
            context["folder"] = folder  # removed by _on_finished if the run is cancelled
            try:
                if folder is not None:
                    labels, out, probs_full, probs = region_outputs(
                        folder, spatial, index, model.n_classes if with_probs else None)
                    result = yield from iter_segment_blocks(data, model, options, out=out,
                                                            probabilities=probs)
                    atexit.register(shutil.rmtree, str(folder), True)
                    return result, labels, probs_full, folder
                result = yield from iter_segment_sized(
                    data, model, options, probabilities=with_probs or None)
                return result, None, None, None
            except BaseException:  # cancelled or failed: leave nothing behind
                if folder is not None:
                    shutil.rmtree(folder, ignore_errors=True)
                raise

        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.done_units = 0
        scale = describe_scale(factor, diameter)
        scale = f" ({scale})" if scale else ""
        self.status.value = f"segmenting {layer.name} with {context['name']}{scale}…"
        self.pbar = cancelable_progress(total=0, desc=f"Segment layer: {layer.name}",
                                        cancel_callback=self.cancel)
        self.worker = start_worker(
            work,
            on_yield=self._on_progress,
            on_return=lambda result: self._on_done(result, context),
            on_error=self._on_error,
            on_finish=lambda: self._on_finished(context),
        )

    def _fail(self, message: str) -> None:
        """One problem, said once: in the status line and in one notification."""
        message = message[:1].upper() + message[1:]
        self.status.value = message
        show_error(f"napari-unet: {message}")

    def cancel(self) -> None:
        """Stop the running segmentation between two batches of tiles."""
        if self.worker is not None:
            self.worker.quit()
            if not self.lifetime.closed:
                self.status.value = "cancelling…"

    def _on_progress(self, p: Any) -> None:
        if self.lifetime.closed:
            return
        self.done_units = int(p.done)
        phase = _PHASES.get(getattr(p, "phase", "predict"), "")
        self.status.value = f"{phase}: {p.done} / {p.total}"
        pbar = self.pbar  # last: napari's progress may process events (and end the run)
        if pbar is not None:
            if pbar.total != int(p.total) or int(p.done) < pbar.n:  # a new pass
                pbar.total = int(p.total)
                pbar.n = 0
            pbar.set_description(phase)
            pbar.update(int(p.done) - pbar.n)

    def _on_error(self, err: Exception) -> None:
        if not self.lifetime.closed:
            self._fail(f"segmentation failed: {self._explain(err)}")

    def _explain(self, err: BaseException) -> str:
        """A segmentation error in the widget's words."""
        text = str(err)
        if "NaN" in text:
            return "the image has NaN or infinite pixels; replace them with numbers first"
        if "out of memory" in text.lower():
            return ("the computer ran out of memory: choose a smaller tile size under options, "
                    "or tick 'visible region only'")
        return text

    def _on_finished(self, context: dict[str, Any]) -> None:
        cancelled = self.worker is not None and getattr(self.worker, "abort_requested", False)
        folder = context.get("folder")
        if cancelled and folder is not None:  # the stopped generator's temporary zarr arrays
            shutil.rmtree(folder, ignore_errors=True)
        self.worker = None
        if self.pbar is not None:
            self.pbar.close()
            self.pbar = None
        if self.lifetime.closed:
            return
        if cancelled:
            self.status.value = "Cancelled; nothing was changed."
        self.run_button.enabled = True
        self.cancel_button.enabled = False

    def _on_done(self, result: Any, ctx: dict[str, Any]) -> None:
        if self.lifetime.closed:
            return
        try:
            self._show_result(result, ctx)
        except Exception as err:  # noqa: BLE001 - a callback must never take the viewer down
            self._fail(f"could not add the result: {err}")

    def _show_result(self, result: Any, ctx: dict[str, Any]) -> None:
        segmentation, zarr_labels, zarr_probs, folder = result
        labels, probs = segmentation.labels, segmentation.probabilities
        layer = ctx["layer"]
        index = ctx["index"]
        spatial = spatial_shape(layer)
        model = ctx["model"]
        name = f"{layer.name} ({ctx['name']} model)"
        prob_name = f"{layer.name} cell probability ({ctx['name']} model)"
        n_cells = int(segmentation.n_cells)
        target = ctx["output"]
        multiscale = bool(getattr(layer, "multiscale", False))
        if ctx["lazy"]:
            shapes = [tuple(s[: layer.ndim]) for s in layer.level_shapes]
            levels = pyramid(zarr_labels, shapes) if multiscale else zarr_labels
            self.last_result = self.viewer.add_labels(
                levels, name=name, scale=layer.scale, translate=layer.translate,
                multiscale=multiscale)
            if ctx["probabilities"]:
                cell = cell_probability(lazy(zarr_probs), model.classes)
                self.viewer.add_image(
                    pyramid(cell, shapes) if multiscale else cell, name=prob_name,
                    colormap="magma", blending="additive", contrast_limits=(0, 1),
                    scale=layer.scale, translate=layer.translate, multiscale=multiscale)
            self.status.value = f"{n_cells} cells found in {layer.name} (stored in {folder})"
            show_info(f"napari-unet: {n_cells} cells found in {layer.name}")
            return
        if target is None:
            full = np.zeros(spatial, dtype=np.int32)
            full[index] = labels
            self.last_result = self.viewer.add_labels(
                full, name=name, scale=layer.scale, translate=layer.translate)
        else:
            self._write_into(target, labels, index, ctx["mode"])
            self.last_result = target
        if ctx["probabilities"]:
            full_p = np.zeros(spatial, dtype=np.float32)
            full_p[index] = cell_probability(probs, model.classes)
            self.viewer.add_image(full_p, name=prob_name, colormap="magma",
                                  blending="additive", contrast_limits=(0, 1),
                                  scale=layer.scale, translate=layer.translate)
        where = "" if target is None else f", written into {target.name}"
        scale = describe_scale(segmentation.scale, ctx["diameter"])
        where += f" ({scale})" if scale else ""
        self.status.value = f"{n_cells} cells found in {layer.name}{where}"
        show_info(f"napari-unet: {n_cells} cells found in {layer.name}")

    def _write_into(self, target: Any, labels: np.ndarray, index: tuple, mode: str) -> None:
        """Write into an existing Labels layer as one undo step; ids never collide."""
        region_shape = target.data[index].shape
        if region_shape != labels.shape:
            raise ValueError(
                f"the Labels layer '{target.name}' ({shape_text(target.data.shape)}) does not "
                "match the image; choose a matching layer or a new one")
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
