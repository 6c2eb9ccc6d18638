"""The "Train on current labels" dock widget: fine-tune a U-Net in a background worker."""

from __future__ import annotations

import datetime
import time
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
    LineEdit,
    ProgressBar,
    PushButton,
    Select,
    SpinBox,
)
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QAbstractItemView

from ..core import available_devices, packaged_model_path, save_model
from ..core.regions import annotation_coverage
from ..core.report import RunSummary, summarize_run
from ..core.training import iter_train, new_model
from ..core.zoo import delete_model, free_model_path, list_models, rename_model, user_models_dir
from ._common import (
    NEW_FILE,
    DockLifetime,
    models_changed,
    reset_and_preselect,
    scroll_area,
    section,
    shape_text,
    spatial_shape,
    start_worker,
    wrap_label,
)
from ._plot import LossPlot
from .annotate import is_regions_layer, layer_choices
from .live import OUTLINES, PROBABILITY, LiveSession, is_live_layer

if TYPE_CHECKING:
    import napari

__all__ = ["TrainWidget", "rectangles_from_shapes", "MIN_COVERAGE"]

SCRATCH = "new network (from scratch)"
PRETRAINED = "pretrained (shipped with the plugin)"
MINUTES, STEPS = "minutes", "steps"
#: Below this fraction of the image near painted cells, training without annotated
#: regions would learn most unpainted cells as background: the widget warns first.
MIN_COVERAGE = 0.5
_STOPPED = {"max_time": "Time is up", "max_steps": "All steps done", "cancelled": "Cancelled"}


def _start_choices(_widget: Any = None) -> list[tuple[str, Any]]:
    """Models to start training from: the pretrained one, the user's, scratch, a file."""
    choices: list[tuple[str, Any]] = []
    if packaged_model_path("default") is not None:
        choices.append((PRETRAINED, "default"))
    choices += [(str(info), info.path) for info in list_models() if info.source == "user"]
    choices += [(SCRATCH, SCRATCH), (NEW_FILE, NEW_FILE)]
    return choices


def _user_model_choices(_widget: Any = None) -> list[tuple[str, Any]]:
    return [(info.name, info.path) for info in list_models() if info.source == "user"] or \
        [("(no model trained yet)", None)]


def rectangles_from_shapes(shapes: Any, labels: Any) -> list[tuple[int, ...]]:
    """Bounding rectangles of a Shapes layer's shapes, in a Labels layer's pixel coordinates.

    2D labels give ``(r0, c0, r1, c1)``; stacks give ``(plane, r0, c0, r1, c1)`` with the
    plane the shape was drawn on. Ranges are half-open and clipped to the layer.
    """
    rects = []
    shape = labels.data.shape
    for vertices in shapes.data:
        world = np.array([shapes.data_to_world(v) for v in vertices])
        local = np.array([labels.world_to_data(w) for w in world])
        lo = np.floor(local.min(axis=0)[-2:]).astype(int)
        hi = np.ceil(local.max(axis=0)[-2:]).astype(int)
        lo = np.clip(lo, 0, shape[-2:])
        hi = np.clip(hi, 0, shape[-2:])
        if np.any(hi <= lo):
            continue
        rect = (int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1]))
        if len(shape) == 3:
            plane = int(np.clip(round(float(local[0, 0])), 0, shape[0] - 1))
            rect = (plane, *rect)
        rects.append(rect)
    return rects


def _checkable(select: Select) -> None:
    """Rows with a check box that one click ticks or unticks (no Ctrl needed)."""
    view = select.native
    view.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)

    def sync(*_: Any) -> None:
        view.blockSignals(True)
        for i in range(view.count()):
            item = view.item(i)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if item.isSelected()
                               else Qt.CheckState.Unchecked)
        view.blockSignals(False)

    def from_check(item: Any) -> None:
        item.setSelected(item.checkState() == Qt.CheckState.Checked)

    view.selectionModel().selectionChanged.connect(sync)  # (magicgui blocks the view's)
    view.itemChanged.connect(from_check)
    view.model().rowsInserted.connect(sync)
    sync()


class TrainWidget(Container):
    """Fine-tune a U-Net on the labels painted so far, in the background.

    The image, its painted labels and a Shapes layer of annotated regions are
    chosen for you when the viewer has them (click rows to tick several images,
    paired in order with the ticked labels). Outside the annotated regions
    nothing counts, so unpainted cells are not learned as background; without
    them the whole image counts, and the widget warns first when most of it is
    unpainted. Choose the model to start from and a time or step budget, then
    press **Train on current labels**. The labels are copied when training
    starts, so painting can go on. A model that beats its start is saved in your
    models folder and offered at once in Segment layer; **Your models** renames
    and deletes them.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        import napari

        super().__init__(labels=False)
        self.viewer = napari_viewer

        def layers_of(kind: type) -> Any:
            return lambda _w=None: [(layer.name, layer) for layer in self.viewer.layers
                                    if isinstance(layer, kind)]

        self.images = Select(label="images", choices=layers_of(napari.layers.Image),
                             tooltip="the image(s) to learn from; click to tick or untick")
        self.labels = Select(label="labels", choices=layers_of(napari.layers.Labels),
                             tooltip="the Labels layer(s) you painted, one per ticked image, "
                                     "in the same order")
        self.regions = ComboBox(
            label="annotated regions", choices=layer_choices(napari_viewer, napari.layers.Shapes),
            tooltip="a Shapes layer with rectangles around the areas where every cell is "
                    "painted: only there does training learn (Annotate > Mark annotated "
                    "region). 'none': the whole image counts, unpainted pixels as background")
        self.start = ComboBox(label="start from", choices=_start_choices,
                              tooltip="the pretrained nuclei model, one of your models, a new "
                                      "network (for cells unlike nuclei) or a model file")
        self.start_file = FileEdit(label="model file", mode="r", filter="*.pt *.zip",
                                   visible=False, tooltip="a napari-unet model file (.pt) or "
                                                          "bioimage.io package (.zip)")
        self.minutes = FloatSpinBox(label="minutes", min=0.1, max=10_000, step=0.5, value=2.0,
                                    tooltip="train for this many minutes")
        self.steps = SpinBox(label="steps", min=1, max=1_000_000, step=50, value=500,
                             visible=False, tooltip="train for this many steps (batches)")
        self.budget_kind = ComboBox(label="unit", choices=[MINUTES, STEPS], value=MINUTES,
                                    tooltip="stop after a time or after a number of steps")
        budget = Container(widgets=[self.minutes, self.steps, self.budget_kind],
                           layout="horizontal", labels=False, label="stop after")
        budget.margins = (0, 0, 0, 0)
        self.budget = budget
        self.live = CheckBox(text="live: keep training while I paint", value=False,
                             tooltip="training goes on until you stop it, takes in every "
                                     "stroke within a second, and a 'live prediction' layer "
                                     "shows what the model finds in the view now")
        self.live_show = ComboBox(label="live prediction", choices=[OUTLINES, PROBABILITY],
                                  value=OUTLINES, visible=False,
                                  tooltip="show the cells the model finds now as outlines, "
                                          "or its cell probability")
        self.train_button = PushButton(text="Train on current labels",
                                       tooltip="start training in the background; you can "
                                               "go on looking and painting")
        self.cancel_button = PushButton(text="Cancel", enabled=False,
                                        tooltip="stop after the step under way; the best "
                                                "model so far is kept")
        buttons = Container(widgets=[self.train_button, self.cancel_button],
                            layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.save_button = PushButton(text="Save this model", visible=False,
                                      tooltip="save the model of this run in your models "
                                              "folder although it did not beat its start")
        self.progress = ProgressBar(label="progress", min=0, max=1000, value=0,
                                    tooltip="the share of the time or steps done")
        self.status = Label(label="", value="", tooltip="what training does, and how it ended")
        wrap_label(self.status)
        self.device = ComboBox(label="device", choices=["auto", *available_devices()],
                               tooltip="auto: a GPU if this computer has one, else the CPU")
        self.model_name = LineEdit(label="save as", value="",
                                   tooltip="name of the new model (default: the labels "
                                           "layer's name and the time)")
        options = Container(widgets=[self.device, self.model_name], labels=True)
        # your models: rename, delete, where they are
        self.models = ComboBox(label="model", choices=_user_model_choices,
                               tooltip="the models you trained (newest first)")
        self.models_path = Label(label="file", value="", tooltip="where the model is kept")
        wrap_label(self.models_path)
        self.rename_to = LineEdit(label="new name", value="",
                                  tooltip="the name to give the chosen model")
        self.rename_button = PushButton(text="Rename", tooltip="rename the chosen model")
        self.delete_button = PushButton(text="Delete", tooltip="delete the chosen model's file "
                                                               "(click twice)")
        manage = Container(widgets=[self.rename_button, self.delete_button],
                           layout="horizontal", labels=False)
        manage.margins = (0, 0, 0, 0)
        models = Container(widgets=[self.models, self.models_path, self.rename_to, manage],
                           labels=True)
        self.form = Container(widgets=[
            self.images, self.labels, self.regions, self.start, self.start_file, budget,
            self.live, self.live_show, buttons, self.save_button, self.progress, self.status,
        ], labels=True)
        self.plot = LossPlot()
        layout = self.form.native.layout()
        self.plot_section = section("loss and validation plot", self.plot, expanded=True)
        layout.addWidget(self.plot_section)
        layout.addWidget(section("options", options.native))
        self.models_section = section("your models", models.native)
        layout.addWidget(self.models_section)
        layout.addStretch(1)
        self.margins = (0, 0, 0, 0)
        self.native.layout().addWidget(scroll_area(self.form.native))
        for select in (self.images, self.labels):
            select.native.setMaximumHeight(64)
            _checkable(select)

        self.start.changed.connect(lambda v: setattr(self.start_file, "visible", v == NEW_FILE))
        self.budget_kind.changed.connect(self._on_budget_kind)
        self.live.changed.connect(self._on_live_toggled)
        self.live_show.changed.connect(
            lambda v: self.session is not None and self.session.set_show(v))
        self.train_button.changed.connect(self.train)
        self.cancel_button.changed.connect(self.cancel)
        self.save_button.changed.connect(self.save_result)
        self.regions.changed.connect(self._on_regions_changed)
        for widget in (self.images, self.labels, self.regions):
            widget.changed.connect(self._reset_confirmation)
        self.models.changed.connect(self._on_model_selected)
        self.rename_button.changed.connect(self.rename_selected)
        self.delete_button.changed.connect(self.delete_selected)
        models_changed.connect(self._refresh_models)
        self.lifetime = DockLifetime(self.native, self._on_dock_closed)
        self._delete_armed = QTimer(self.native)
        self._delete_armed.setSingleShot(True)
        self._delete_armed.setInterval(5000)
        self._delete_armed.timeout.connect(self._disarm_delete)
        self.worker: Any = None
        self.run: Any = None
        self.result: Any = None
        self.saved_path: Path | None = None
        self._confirmed: Any = None
        self._regions_touched = False
        self.preselecting = False
        self._validations: list[Any] = []
        self._last_val: tuple[int, float] | None = None
        self._start_step = 0
        self._regions_used = False
        self._name = "model"
        self.session: LiveSession | None = None
        self._was_live = False
        self._lost: str | None = None
        self.reset_choices()
        self._on_model_selected(self.models.value)

    # ---------------------------------------------------------------- helpers
    def reset_choices(self, *_: Any) -> None:
        """Re-read the viewer's layers (napari calls this when layers change)."""
        reset_and_preselect(self)

    def _refresh_models(self, *_: Any) -> None:
        if self.lifetime.closed:
            return
        self.start.reset_choices()
        self.models.reset_choices()
        self._on_model_selected(self.models.value)

    def preselect(self) -> None:
        """The first image, a labels layer of its size and a regions layer, when unset."""
        if not self.images.value and self.images.choices:
            self.images.value = [self.images.choices[0]]
        # never the live prediction layer: the model's guess, not labels the user painted
        labels = [lab for lab in self.labels.choices if not is_live_layer(lab)]
        if not self.labels.value and labels:
            if self.images.value:
                shape = spatial_shape(self.images.value[0])
                labels = [lab for lab in labels if tuple(lab.data.shape) == shape] or labels
            self.labels.value = [labels[0]]
        if self.regions.value is None and not self._regions_touched:
            marked = [s for s in self.regions.choices if s is not None and is_regions_layer(s)]
            if marked:
                self.regions.value = marked[0]

    def _on_regions_changed(self, *_: Any) -> None:
        if not self.preselecting:
            self._regions_touched = True

    def _on_budget_kind(self, kind: str) -> None:
        self.minutes.visible = kind == MINUTES
        self.steps.visible = kind == STEPS

    def _on_live_toggled(self, live: bool) -> None:
        self.budget.visible = not live
        self.live_show.visible = live
        self._reset_confirmation()

    def _reset_confirmation(self, *_: Any) -> None:
        self._confirmed = None
        self.train_button.text = ("Start live training" if self.live.value
                                  else "Train on current labels")

    @property
    def running(self) -> bool:
        return self.worker is not None

    def _start_model(self) -> Any:
        value = self.start.value
        if value == SCRATCH:
            return "scratch"
        if value == NEW_FILE:
            path = Path(self.start_file.value)
            if not path.is_file():
                raise ValueError("choose the model file to start from under 'model file' (or "
                                 "another choice under 'start from')")
            return path
        return value

    def _gather(self) -> tuple[list[Any], list[np.ndarray], list[Any] | None]:
        """The chosen layers' data, checked; every problem said in the widget's words."""
        images = list(self.images.value)
        labels = list(self.labels.value)
        if not images or not labels:
            raise ValueError("tick the image under 'images' and the Labels layer you painted "
                             "under 'labels'")
        if len(images) != len(labels):
            raise ValueError(
                f"{len(images)} image(s) but {len(labels)} labels layer(s) are ticked: tick "
                "one labels layer per image, in the same order")
        data, masks = [], []
        for image, lab in zip(images, labels):
            if image.rgb:
                raise ValueError(f"the image '{image.name}' is in colour (RGB); training needs "
                                 "a gray image (for example one channel: Layers > Split RGB)")
            spatial = spatial_shape(image)
            if tuple(lab.data.shape) != spatial:
                raise ValueError(
                    f"the labels '{lab.name}' ({shape_text(lab.data.shape)}) do not match the "
                    f"image '{image.name}' ({shape_text(spatial)}): tick the labels painted "
                    "on that image")
            pixels = image.data[0] if image.multiscale else image.data
            if isinstance(pixels, np.ndarray) and pixels.dtype.kind == "f" \
                    and not np.isfinite(pixels).all():
                raise ValueError(f"the image '{image.name}' has NaN or infinite pixels; "
                                 "replace them with numbers before training")
            data.append(pixels)
            masks.append(np.array(lab.data, copy=True))  # a snapshot: painting may go on
        regions = None
        if self.regions.value is not None:
            regions = [rectangles_from_shapes(self.regions.value, lab) or None for lab in labels]
            if all(r is None for r in regions):
                raise ValueError(
                    f"the Shapes layer '{self.regions.value.name}' has no rectangle over the "
                    "image: draw rectangles around the areas where every cell is painted, or "
                    "choose 'none' under 'annotated regions'")
        elif not any(m.any() for m in masks):
            raise ValueError(
                f"nothing is painted in '{labels[0].name}' yet: paint some cells (Annotate), "
                "or choose under 'annotated regions' a Shapes layer with rectangles around "
                "areas that are completely painted")
        return data, masks, regions

    def _explain(self, err: BaseException) -> str:
        """A training error in the widget's words."""
        text = str(err)
        if "held out for validation" in text:
            return ("too little is painted to train and also check the result: paint more "
                    "cells, or draw larger annotated regions")
        if "nothing to train on" in text:
            return ("nothing is painted in the chosen labels or annotated regions: paint some "
                    "cells, or draw rectangles around completely painted areas")
        if "NaN" in text:
            return "the image has NaN or infinite pixels; replace them with numbers first"
        if "out of memory" in text.lower():
            return ("the computer ran out of memory: close other programs, train on a smaller "
                    "image, or choose 'cpu' under options > device")
        names = [layer.name for layer in self.images.value]
        for i, name in enumerate(names):
            text = text.replace(f"image {i}", f"the image '{name}'")
        return text.split("; pass ")[0].split(", or pass ")[0]

    def _coverage_warning(self, masks: list[np.ndarray]) -> str | None:
        """Why training on the whole image would mislead, when most of it is unpainted."""
        coverage = min(annotation_coverage(m) for m in masks)
        if coverage >= MIN_COVERAGE:
            return None
        return (f"Most of the image is not painted (the labels speak for about "
                f"{coverage:.0%} of it) and no annotated region is chosen, so training would "
                "learn every unpainted cell as background. Draw a rectangle around the "
                "completely painted area (Annotate > Mark annotated region) and choose it "
                "under 'annotated regions', or click 'Train anyway' to use the whole image.")

    # ---------------------------------------------------------------- actions
    def train(self) -> None:
        """Start training in a background worker (the button's action)."""
        if self.running:
            show_info("napari-unet: a training run is already going on; wait for it or "
                      "cancel it first")
            return
        try:
            images, labels, regions = self._gather()
            start = self._start_model()
        except (ValueError, OSError) as err:
            self._fail(str(err))
            return
        if regions is None:
            key = (tuple(id(x) for x in self.images.value),
                   tuple(id(x) for x in self.labels.value))
            warning = self._coverage_warning(labels)
            if warning is not None and self._confirmed != key:
                self._confirmed = key
                self.train_button.text = "Train anyway (whole image)"
                self.status.value = warning
                show_warning(f"napari-unet: {warning}")
                return
        self._reset_confirmation()
        live = bool(self.live.value)
        self._was_live = live
        self._lost = None
        if live and len(images) != 1:
            self._fail("live training follows one image and its labels: tick one image and "
                       "one labels layer")
            return
        try:
            model: Any = new_model() if start == "scratch" else start
            limits: dict[str, Any] = {}  # live: until stopped
            if not live:
                limits = ({"max_time": float(self.minutes.value) * 60.0}
                          if self.budget_kind.value == MINUTES
                          else {"max_steps": int(self.steps.value)})
            self.run = iter_train(images, labels, model, regions=regions,
                                  device=self.device.value, **limits)
        except (ValueError, OSError) as err:
            self._fail(self._explain(err))
            return
        self._name = self.model_name.value.strip() or (
            f"{self.labels.value[0].name} {datetime.datetime.now():%Y-%m-%d %H%M}")
        self._regions_used = regions is not None
        run = self.run

        def work():
            return (yield from run)

        self.plot.clear()
        self.saved_path = None
        self.result = None
        self.save_button.visible = False
        self._validations = []
        self._last_val = None
        self._start_step = 0
        self.train_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.value = 0
        self.progress.visible = not live
        self.cancel_button.text = "Stop" if live else "Cancel"
        self.status.value = "preparing…"
        self._started = time.perf_counter()
        self.worker = start_worker(work, on_yield=self._on_progress, on_return=lambda _: None,
                                   on_error=self._on_error, on_finish=self._on_finished)
        if live:
            self.session = LiveSession(
                self.viewer, run, self.images.value[0], self.labels.value[0],
                self.regions.value, rectangles_from_shapes, show=self.live_show.value,
                device=self.device.value, on_lost=self._live_lost)

    def _fail(self, message: str) -> None:
        """One problem, said once: in the status line and in one notification."""
        message = message[:1].upper() + message[1:]
        self.status.value = message
        show_error(f"napari-unet: {message}")

    def _live_lost(self, reason: str) -> None:
        """The image or the painted labels of a live run were deleted: stop, say why."""
        self._lost = reason
        self.session = None  # it closed itself
        self.cancel()

    def cancel(self) -> None:
        """Stop training after the step under way; the best model so far is kept."""
        if self.worker is not None:
            self.worker.quit()
            self.status.value = "stopping…"

    def _on_dock_closed(self) -> None:
        """The dock was closed: stop the run, save nothing, forget the viewer."""
        models_changed.disconnect(self._refresh_models)
        self._end_session()
        if self.worker is not None:
            self.worker.quit()

    # -------------------------------------------------------------- callbacks
    def _end_session(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    def _on_progress(self, p: Any) -> None:
        if self.lifetime.closed:
            return
        if self.session is not None:
            self.session.step_done(p.step)
        if p.phase == "prepare":
            self._start_step = int(p.step)
        if p.fraction is not None:
            self.progress.value = int(1000 * p.fraction)
        if p.phase == "train" and p.loss is not None:
            self.plot.add(p.step, loss=p.loss)
        if p.val_f1 is not None:
            self.plot.add(p.step, f1=p.val_f1)
            self._validations.append(p)
            self._last_val = (int(p.step), float(p.val_f1))
        if p.phase == "validate":
            self.status.value = "checking the model on the held-out cells…"
        elif p.phase == "train":
            parts = [f"step {p.step}" + (f" of {p.total}" if p.total else "")]
            if p.loss is not None:
                parts.append(f"loss {p.loss:.3f}")
            if self._last_val is not None:
                best = "" if p.best_val_f1 is None else f" (kept model {p.best_val_f1:.2f})"
                parts.append(f"validation F1 {self._last_val[1]:.2f}{best}")
            if p.eta is not None:
                parts.append(f"{p.eta:.0f} s left")
            if self.session is not None:
                parts.insert(0, "live")
                if p.labels_version:
                    parts.append(f"{p.labels_version} edit(s) included")
            self.status.value = " · ".join(parts)
        if p.message and p.phase == "train" and "memory" in p.message:
            show_info(f"napari-unet: {p.message}")  # the batch or patch was made smaller

    def _on_error(self, err: Exception) -> None:
        if self.lifetime.closed:
            return
        self._fail(f"training failed: {self._explain(err)}")

    def _on_finished(self) -> None:
        run, self.run = self.run, None
        self.worker = None
        self._end_session()
        self.progress.visible = not self._was_live  # a live run has no end to show
        self.cancel_button.text = "Cancel"
        if run is not None:
            run.close()  # after a cancel this makes the best model so far the result
        if self.lifetime.closed:
            return  # the dock is gone: nothing is saved, nothing is shown
        self.train_button.enabled = True
        self.cancel_button.enabled = False
        result = None if run is None else run.result
        if result is None:
            return
        self.result = result
        summary = summarize_run(result, self._validations, self._start_step)
        if summary.last_step is not None and (
                self._last_val is None or (summary.last_step, summary.last_f1) != self._last_val):
            self.plot.add(summary.last_step, f1=summary.last_f1)  # the final validation too
        if result.stopped_reason in ("max_steps", "max_time"):
            self.progress.value = 1000
        self._report(summary)

    def _report(self, summary: RunSummary) -> None:
        """Say truthfully how the run ended, which model was kept, and where it is."""
        why = _STOPPED.get(summary.stopped_reason, f"Stopped early: {summary.stopped_reason}")
        if self._was_live and summary.stopped_reason == "cancelled":
            why = "Live training stopped" + (f" ({self._lost})" if self._lost else "")
        head = f"{why} after {summary.steps} steps in {summary.seconds:.0f} s."
        cells = "" if summary.val_cells is None else f" on {summary.val_cells} held-out cells"
        if summary.kept_step is None:
            quality = "It was not checked on held-out cells (too little is painted for that)."
        else:
            quality = (f"The model of step {summary.kept_step} is kept: validation F1 "
                       f"{summary.kept_f1:.2f}{cells}")
            quality += ("." if summary.start_f1 is None else
                        f"; the starting model had {summary.start_f1:.2f}.")
        if summary.worse:
            hint = ("" if self._regions_used else " If not every cell is painted, choose "
                    "an annotated region (Annotate > Mark annotated region).")
            show_warning(f"napari-unet: training made the model worse on the held-out cells "
                         f"(validation F1 {summary.start_f1:.2f} at the start, "
                         f"{summary.last_f1:.2f} at the end).{hint}")
        if self._was_live and summary.changed:  # offer, don't decide: the user painted along
            self.save_button.visible = True
            self.status.value = f"{head} {quality} 'Save this model' keeps it."
            return
        if not summary.improved:
            self.save_button.visible = summary.changed
            if not summary.changed:
                kept = "It is the starting model: nothing was saved."
            elif summary.kept_step is None:
                kept = "Nothing was saved; 'Save this model' keeps it."
            else:
                kept = ("That is not clearly better than the starting model (a few held-out "
                        "cells cannot tell), so nothing was saved; 'Save this model' keeps it "
                        "anyway. Painting more cells makes the check surer.")
            self.status.value = f"{head} {quality} {kept}"
            return
        path = self.save_result()
        if path is not None:
            self.status.value = (f"{head} {quality} Saved as '{path.stem}' in {path.parent}; "
                                 "choose it in Segment layer.")

    def save_result(self) -> Path | None:
        """Save the last run's model in the user's models folder (the Save button's action)."""
        result = self.result
        if result is None:
            return None
        try:
            path = free_model_path(self._name)
            result.model.metadata["name"] = path.stem
            self.saved_path = save_model(result.model, path)
        except OSError as err:
            self._fail(f"could not save the model: {err}")
            return None
        self.save_button.visible = False
        self.status.value = f"Saved as '{path.stem}' in {path.parent}."
        show_info(f"napari-unet: model '{path.stem}' saved; choose it in Segment layer")
        models_changed.emit()
        return self.saved_path

    # ------------------------------------------------------------- your models
    def _on_model_selected(self, path: Any) -> None:
        self._disarm_delete()
        has = path is not None
        self.models_path.value = str(path) if has else f"models are saved in {user_models_dir()}"
        self.rename_to.value = Path(path).stem if has else ""
        for widget in (self.rename_to, self.rename_button, self.delete_button):
            widget.enabled = has

    def rename_selected(self) -> Path | None:
        """Rename the chosen model file to the name typed under 'new name'."""
        path = self.models.value
        if path is None:
            return None
        try:
            new = rename_model(path, self.rename_to.value)
        except (ValueError, OSError) as err:
            self._fail(str(err))
            return None
        models_changed.emit()
        self.models.value = new
        self.status.value = f"Renamed to '{new.stem}'."
        return new

    def delete_selected(self) -> None:
        """Delete the chosen model file (a second click within 5 s confirms)."""
        path = self.models.value
        if path is None:
            return
        if not self._delete_armed.isActive():
            self.delete_button.text = f"Click again to delete '{Path(path).stem}'"
            self._delete_armed.start()
            return
        self._disarm_delete()
        try:
            delete_model(path)
        except (ValueError, OSError) as err:
            self._fail(str(err))
            return
        self.status.value = f"Deleted '{Path(path).stem}'."
        models_changed.emit()

    def _disarm_delete(self) -> None:
        self._delete_armed.stop()
        self.delete_button.text = "Delete"
