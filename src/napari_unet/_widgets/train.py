"""The "Train on current labels" dock widget: fine-tune a U-Net in a background worker."""

from __future__ import annotations

import datetime
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    Select,
    create_widget,
)
from napari.utils.notifications import show_error, show_info, show_warning

from ..core import available_devices, packaged_model_path, save_model
from ..core.training import iter_train, new_model
from ..core.zoo import list_models, user_models_dir
from ._common import NEW_FILE, models_changed, start_worker
from ._plot import LossPlot

if TYPE_CHECKING:
    import napari

__all__ = ["TrainWidget", "rectangles_from_shapes"]

SCRATCH = "new network (from scratch)"
PRETRAINED = "pretrained (shipped with the plugin)"
MINUTES, STEPS = "minutes", "steps"


def _start_choices(_widget: Any = None) -> list[tuple[str, Any]]:
    choices: list[tuple[str, Any]] = []
    if packaged_model_path("default") is not None:
        choices.append((PRETRAINED, "default"))
    choices += [(str(info), info.path) for info in list_models() if info.source == "user"]
    choices += [(SCRATCH, SCRATCH), (NEW_FILE, NEW_FILE)]
    return choices


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


def _safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text.strip()).strip("-.")
    return name or "model"


class TrainWidget(Container):
    """Fine-tune a U-Net on the labels painted so far, in the background.

    Pick the image layer(s) and the matching labels layer(s) (paired in order), an
    optional Shapes layer whose rectangles say where the labels are complete (else
    whole images, or whole labelled planes of a stack, count), the model to start
    from, a time or step budget and the device, then press **Train on current
    labels**. The labels are copied when training starts, so painting can go on.
    The trained model is saved in the user's models folder and offered at once in
    the Segment layer widget.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        import napari

        super().__init__(labels=True)
        self.viewer = napari_viewer

        def layers_of(kind: type) -> Any:
            return lambda _w=None: [(layer.name, layer) for layer in self.viewer.layers
                                    if isinstance(layer, kind)]

        self.images = Select(label="images", choices=layers_of(napari.layers.Image))
        self.labels = Select(label="labels", choices=layers_of(napari.layers.Labels))
        self.regions = create_widget(annotation=napari.layers.Shapes | None,
                                     label="annotated regions", options={"nullable": True})
        self.start = ComboBox(label="start from", choices=_start_choices)
        self.start_file = FileEdit(label="model file", mode="r", filter="*.pt *.zip",
                                   visible=False)
        self.budget_kind = ComboBox(label="stop after", choices=[MINUTES, STEPS], value=MINUTES)
        self.budget = FloatSpinBox(label="", min=0.1, max=100_000, step=1, value=2.0)
        self.device = ComboBox(label="device", choices=["auto", *available_devices()])
        self.model_name = LineEdit(label="save as", value="")
        self.train_button = PushButton(text="Train on current labels")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=1000, value=0)
        self.status = Label(label="", value="")
        self.extend([
            self.images, self.labels, self.regions, self.start, self.start_file,
            self.budget_kind, self.budget, self.device, self.model_name, self.train_button,
            self.cancel_button, self.progress, self.status,
        ])
        self.plot = LossPlot()
        self.native.layout().addWidget(self.plot)
        self.images.native.setMaximumHeight(80)
        self.labels.native.setMaximumHeight(80)
        self.start.changed.connect(lambda v: setattr(self.start_file, "visible", v == NEW_FILE))
        self.budget_kind.changed.connect(self._on_budget_kind)
        self.train_button.changed.connect(self.train)
        self.cancel_button.changed.connect(self.cancel)
        models_changed.connect(self._refresh_start_choices)
        self.native.destroyed.connect(
            lambda *_: models_changed.disconnect(self._refresh_start_choices))
        self.worker: Any = None
        self.run: Any = None
        self.saved_path: Path | None = None
        self._started = 0.0
        self._preselect()

    # ---------------------------------------------------------------- helpers
    def _refresh_start_choices(self, *_: Any) -> None:
        self.start.reset_choices()

    def _preselect(self) -> None:
        """Select the first image and labels layers, so the common case needs no clicks."""
        self.reset_choices()
        for select in (self.images, self.labels):
            if not select.value and select.choices:
                select.value = [select.choices[0]]

    def _on_budget_kind(self, kind: str) -> None:
        self.budget.step = 1 if kind == MINUTES else 50
        self.budget.value = 2.0 if kind == MINUTES else 500

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
                raise ValueError("choose the model file to start from")
            return path
        return value

    def _gather(self) -> tuple[list[Any], list[np.ndarray], list[Any] | None]:
        images = list(self.images.value)
        labels = list(self.labels.value)
        if not images or not labels:
            raise ValueError("choose at least one image layer and its labels layer")
        if len(images) != len(labels):
            raise ValueError(
                f"{len(images)} image layer(s) but {len(labels)} labels layer(s) are chosen: "
                "choose one labels layer per image, in the same order"
            )
        data, masks = [], []
        for image, lab in zip(images, labels):
            spatial = tuple(image.level_shapes[0][: image.ndim])
            if tuple(lab.data.shape) != spatial:
                raise ValueError(
                    f"the labels {lab.name!r} (shape {tuple(lab.data.shape)}) do not match the "
                    f"image {image.name!r} (shape {spatial}); pair layers of the same size"
                )
            data.append(image.data[0] if image.multiscale else image.data)
            masks.append(np.array(lab.data, copy=True))  # a snapshot: painting may go on
        regions = None
        if self.regions.value is not None:
            regions = [rectangles_from_shapes(self.regions.value, lab) or None for lab in labels]
            if all(r is None for r in regions):
                raise ValueError(
                    f"the Shapes layer {self.regions.value.name!r} has no rectangle over the "
                    "labels; draw rectangles around the fully annotated areas, or choose none"
                )
        return data, masks, regions

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
            model: Any = new_model() if start == "scratch" else start
            budget = float(self.budget.value)
            limits = ({"max_time": budget * 60.0} if self.budget_kind.value == MINUTES
                      else {"max_steps": int(budget)})
            rgb = [layer.rgb for layer in self.images.value]
            if any(rgb):
                raise ValueError("colour (RGB) images are not supported for training yet; "
                                 "convert the image to gray values first")
            self.run = iter_train(images, labels, model, regions=regions,
                                  device=self.device.value, **limits)
        except (ValueError, OSError) as err:
            self.status.value = str(err)
            show_error(f"napari-unet: {err}")
            return
        name = self.model_name.value.strip() or (
            f"{self.labels.value[0].name} {datetime.datetime.now():%Y-%m-%d %H%M}")
        self._name = _safe_name(name)
        run = self.run

        def work():
            return (yield from run)

        self.plot.clear()
        self.saved_path = None
        self.train_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.value = 0
        self.status.value = "preparing…"
        self._started = time.perf_counter()
        self.worker = start_worker(work, on_yield=self._on_progress, on_return=lambda _: None,
                                   on_error=self._on_error, on_finish=self._on_finished)

    def cancel(self) -> None:
        """Stop training after the step under way; the best model so far is kept."""
        if self.worker is not None:
            self.worker.quit()
            self.status.value = "stopping…"

    # -------------------------------------------------------------- callbacks
    def _on_progress(self, p: Any) -> None:
        if p.fraction is not None:
            self.progress.value = int(1000 * p.fraction)
        if p.phase == "train":
            self.plot.add(p.step, loss=p.loss)
        if p.val_f1 is not None:
            self.plot.add(p.step, f1=p.val_f1)
        left = "" if p.eta is None else f", {p.eta:.0f} s left"
        loss = "" if p.loss is None else f", loss {p.loss:.3f}"
        best = "" if p.best_val_f1 is None else f", best F1 {p.best_val_f1:.2f}"
        what = "validating" if p.phase == "validate" else f"step {p.step}"
        self.status.value = f"{what}{loss}{best}{left}"
        if p.message and p.phase != "validate":
            show_info(f"napari-unet: {p.message}")

    def _on_error(self, err: Exception) -> None:
        self.status.value = f"training failed: {err}"
        show_error(f"napari-unet: training failed: {err}")

    def _on_finished(self) -> None:
        run, self.run = self.run, None
        self.worker = None
        self.train_button.enabled = True
        self.cancel_button.enabled = False
        if run is None:
            return
        run.close()  # after a cancel this makes the best model so far the result
        result = run.result
        if result is None:
            return
        try:
            folder = user_models_dir(create=True)
            path = folder / f"{self._name}.pt"
            n = 2
            while path.exists():
                path = folder / f"{self._name}-{n}.pt"
                n += 1
            result.model.metadata["name"] = path.stem
            self.saved_path = save_model(result.model, path)
        except OSError as err:
            show_error(f"napari-unet: could not save the model: {err}")
            return
        self.progress.value = 1000
        f1 = "" if result.best_val_f1 is None else f", validation F1 {result.best_val_f1:.2f}"
        why = {"max_time": "time is up", "max_steps": "all steps done"}.get(
            result.stopped_reason, result.stopped_reason)
        self.status.value = (f"{why}: {result.steps} steps in "
                             f"{result.seconds:.0f} s{f1}; saved as {path.stem}")
        if result.stopped_reason not in ("max_steps", "max_time", "cancelled"):
            show_warning(f"napari-unet: training stopped early: {result.stopped_reason}")
        show_info(f"napari-unet: model {path.stem!r} saved{f1}; choose it in Segment layer")
        models_changed.emit()
