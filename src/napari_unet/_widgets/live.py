"""Live training: the U-Net keeps training while the user paints, and a "live prediction"
layer shows what it sees now.

:class:`LiveSession` is the Train widget's helper for a live run. In the main
thread it only listens and schedules:

* a finished edit of the painted labels (a stroke on mouse release, a fill,
  erasing, undo: napari's ``paint`` event) sends a copy of the labels to the
  running training at once (large stacks: when painting pauses)
  (:meth:`~napari_unet.core.training.TrainingRun.update`), which takes it in
  between two steps; other changes (a new array, the annotated-regions Shapes
  layer, data changed in place) restart a short timer and are sent when they
  pause. Labels identical to the last ones sent are not sent again;
* every few seconds, and soon after the view moves, the current weights
  predict the part of the current plane on the canvas (with the network's
  context around it) in a background worker, and the result is written into
  the "live prediction" layer: cell outlines, or the cell probability. The
  user's labels are never touched. The periodic prediction waits at least as
  long as the last one took, so that on a CPU it never takes more than half
  of the machine from training.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from qtpy.QtCore import QThreadPool, QTimer

from ..core import SegmentOptions, iter_segment
from ..core.model import cell_probability
from ._common import camera_of, current_plane, spatial_shape, start_worker, visible_region

__all__ = ["LiveSession", "OUTLINES", "PROBABILITY", "LIVE_NAME", "is_live_layer"]

OUTLINES, PROBABILITY = "cell outlines", "cell probability"
LIVE_NAME = "live prediction"
#: The metadata key and value that mark the live prediction layer.
LIVE_MARK = "napari-unet"


def is_live_layer(layer: Any) -> bool:
    """True for the live prediction layer of a live run: the model's current guess,
    never labels to train on."""
    meta = getattr(layer, "metadata", None) or {}
    return meta.get(LIVE_MARK) == LIVE_NAME


#: Milliseconds of quiet after a change other than a finished stroke (a new array,
#: the annotated regions) before the labels go to training.
EDIT_DELAY_MS = 300
#: Labels up to this many pixels are sent as soon as a stroke ends; larger ones (a big
#: stack, whose copy takes a while) wait for painting to pause like other changes.
SEND_AT_ONCE_PIXELS = 1 << 22  # 2048 x 2048: the copy takes a few ms
#: Milliseconds between live predictions (a new one only if the model or the view changed).
PREDICT_EVERY_MS = 2500
#: Milliseconds after the view moves before the visible part is predicted.
VIEW_DELAY_MS = 400


class LiveSession:
    """Connects one live training run to the viewer (main thread only).

    Parameters
    ----------
    viewer : napari.Viewer
    run : TrainingRun
        The running training (its worker is started by the Train widget).
    image, labels : napari layers
        The image and the Labels layer being painted (image 0 of the run).
    regions : napari Shapes layer or None
        The annotated regions, if chosen.
    rectangles : callable
        ``rectangles(shapes, labels)``: the regions as the engine takes them.
    show : str
        :data:`OUTLINES` or :data:`PROBABILITY`.
    device : str
        Where the live prediction runs (the training device).
    on_lost : callable, optional
        ``on_lost(reason)`` when the image or the painted labels are deleted from
        the viewer: the Train widget stops the run and says why.
    """

    def __init__(self, viewer: Any, run: Any, image: Any, labels: Any, regions: Any,
                 rectangles: Any, show: str = OUTLINES, device: str = "auto",
                 on_lost: Any = None) -> None:
        self.viewer, self.run = viewer, run
        self.image, self.labels, self.regions = image, labels, regions
        self._rectangles = rectangles
        self.show = show
        self.device = device
        self.closed = False
        self._on_lost = on_lost
        self._region_kept: Any = None  # the regions as they were when their layer was deleted
        self.sent: dict[int, float] = {}  # update version -> when the edit was sent
        self.refreshes: list[tuple[float, float]] = []  # (model snapshot time, shown time)
        self._predicting: Any = None
        self._last_sent: tuple[np.ndarray, Any] | None = None
        self._predict_started = 0.0
        self._next_periodic = 0.0  # the periodic prediction waits until then
        self._view_dirty = True
        self._last_step = -1
        self._step = 0
        self._edit = QTimer()
        self._edit.setSingleShot(True)
        self._edit.setInterval(EDIT_DELAY_MS)
        self._edit.timeout.connect(self.send_labels)
        self._tick = QTimer()
        self._tick.setInterval(PREDICT_EVERY_MS)
        self._tick.timeout.connect(self._periodic)
        self._view = QTimer()
        self._view.setSingleShot(True)
        self._view.setInterval(VIEW_DELAY_MS)
        self._view.timeout.connect(self.predict)
        labels.events.paint.connect(self._on_stroke)
        for event in (labels.events.data, labels.events.set_data):
            event.connect(self._on_edit)
        if regions is not None:
            regions.events.data.connect(self._on_edit)
        self._camera = camera_of(viewer)
        self._camera.events.center.connect(self._on_view)
        self._camera.events.zoom.connect(self._on_view)
        viewer.dims.events.current_step.connect(self._on_view)
        viewer.layers.events.removed.connect(self._on_removed)
        self._tick.start()
        self.layer = self._make_layer()

    # ------------------------------------------------------------ layer
    def _make_layer(self) -> Any:
        shape = spatial_shape(self.image)
        name = LIVE_NAME
        old = next((layer for layer in self.viewer.layers if layer.name == name), None)
        if old is not None:
            self.viewer.layers.remove(old)
        kw = dict(name=name, scale=self.image.scale, translate=self.image.translate,
                  metadata={LIVE_MARK: LIVE_NAME})
        if self.show == PROBABILITY:
            layer = self.viewer.add_image(np.zeros(shape, np.float32), colormap="magma",
                                          contrast_limits=(0, 1), opacity=0.5,
                                          blending="additive", **kw)
        else:
            layer = self.viewer.add_labels(np.zeros(shape, np.int32), opacity=0.9, **kw)
            layer.contour = 1
        # the user's labels stay the active layer, so the next drag still paints
        self.viewer.layers.selection.active = self.labels
        return layer

    def set_show(self, show: str) -> None:
        """Show outlines or probability from now on (a new layer, predicted at once)."""
        if self.closed or (show == self.show and self.layer is not None):
            return
        self.show, self.layer = show, None  # the old layer's removal is ours, not the user's
        self.layer = self._make_layer()
        self._tick.start()
        self._view_dirty = True
        self.predict()

    def _on_removed(self, event: Any) -> None:
        """A layer was deleted: the preview stops with its layer; the regions stay as they
        were (their area is where the labels are complete); without the image or the
        labels, live training ends."""
        if self.closed:
            return
        gone = event.value
        if gone is self.layer:
            self.layer = None
            self._tick.stop()
            self._view.stop()
        elif gone is self.regions:
            self._region_kept = self._rectangles(self.regions, self.labels) or None
            self.regions.events.data.disconnect(self._on_edit)
            self.regions = None
        elif gone is self.labels or gone is self.image:
            what = "painted labels" if gone is self.labels else "image"
            reason = f"the {what} layer '{gone.name}' was removed"
            self.close()
            if self._on_lost is not None:
                self._on_lost(reason)

    # ------------------------------------------------------------ edits
    def _on_edit(self, *_: Any) -> None:
        if not self.closed:
            self._edit.start()  # restart: wait until the changes pause

    def _on_stroke(self, *_: Any) -> None:
        if self.closed:
            return
        if self.labels.data.size > SEND_AT_ONCE_PIXELS:
            self._edit.start()
        else:  # a finished edit: no need to wait
            self._edit.stop()
            self.send_labels()

    def send_labels(self) -> int | None:
        """Give the running training the labels as they are now."""
        if self.closed or self.run is None:
            return None
        labels = np.array(self.labels.data, copy=True)
        region = self._region_kept
        if self.regions is not None:
            region = self._rectangles(self.regions, self.labels) or None
        last = self._last_sent
        if last is not None and last[1] == region and np.array_equal(last[0], labels):
            return None  # nothing new (a redraw after the stroke that was just sent)
        try:
            version = self.run.update(0, labels, region)
        except (ValueError, RuntimeError):
            return None  # ended, or labels that cannot be used: the next edit tries again
        self._last_sent = (labels, region)
        self.sent[version] = time.perf_counter()
        self._view_dirty = True
        return version

    # ------------------------------------------------------------ prediction
    def step_done(self, step: int) -> None:
        """Told by the Train widget after each progress record."""
        self._step = int(step)

    def _on_view(self, *_: Any) -> None:
        if not self.closed:
            self._view_dirty = True
            self._view.start()

    def _periodic(self) -> None:
        if time.perf_counter() >= self._next_periodic:
            self.predict()

    def predict(self) -> None:
        """Predict the visible part of the current plane with the weights as they are now
        (in a worker; skipped while one runs, or when neither model nor view changed)."""
        if self.closed or self._predicting is not None or self.run is None or (
                self.layer is None):
            return
        if self._step == self._last_step and not self._view_dirty:
            return
        try:
            plane = current_plane(self.viewer, self.image)
            rows, cols = visible_region(self.viewer, self.image)
        except ValueError:
            return
        data = self.image.data[0] if self.image.multiscale else self.image.data
        run, device, step = self.run, self.device, self._step
        # the network as it is now, on the view: never a second, rescaled pass
        options = SegmentOptions(device=device, diameter=0)
        h, w = spatial_shape(self.image)[-2:]

        def work():
            t_model = time.perf_counter()
            model = run.current_model(device)
            m = model.margin  # the network's context around the view, where the image has it
            r0, r1 = max(rows.start - m, 0), min(rows.stop + m, h)
            c0, c1 = max(cols.start - m, 0), min(cols.stop + m, w)
            window = np.asarray(data[(*plane, slice(r0, r1), slice(c0, c1))])
            labels, probs = yield from iter_segment(window, model, options,
                                                    return_probabilities=True)
            cut = (slice(rows.start - r0, rows.stop - r0), slice(cols.start - c0,
                                                                 cols.stop - c0))
            prob = cell_probability(probs, model.classes)[cut]
            return plane, rows, cols, labels[cut], prob, t_model

        self._last_step, self._view_dirty = step, False
        self._predict_started = time.perf_counter()
        self._predicting = start_worker(work, on_yield=lambda _: None, on_return=self._show,
                                        on_error=self._on_error, on_finish=self._finished)

    def _show(self, result: Any) -> None:
        if self.closed or result is None or self.layer is None:
            return
        plane, rows, cols, labels, prob, t_model = result
        index = (*plane, rows, cols)
        data = self.layer.data
        if self.show == PROBABILITY:
            data[index] = prob
        else:
            data[index] = labels
        self.layer.refresh()
        self.refreshes.append((t_model, time.perf_counter()))

    def _on_error(self, err: Exception) -> None:
        pass  # a preview that failed is simply not shown; training goes on

    def _finished(self) -> None:
        self._predicting = None
        now = time.perf_counter()
        self._next_periodic = now + (now - self._predict_started)

    # ------------------------------------------------------------ end
    def close(self) -> None:
        """Stop listening and predicting (the layer stays, the user's labels untouched)."""
        if self.closed:
            return
        self.closed = True
        for timer in (self._edit, self._tick, self._view):
            timer.stop()
        self.labels.events.paint.disconnect(self._on_stroke)
        for event in (self.labels.events.data, self.labels.events.set_data):
            event.disconnect(self._on_edit)
        if self.regions is not None:
            self.regions.events.data.disconnect(self._on_edit)
        self._camera.events.center.disconnect(self._on_view)
        self._camera.events.zoom.disconnect(self._on_view)
        self.viewer.dims.events.current_step.disconnect(self._on_view)
        self.viewer.layers.events.removed.disconnect(self._on_removed)
        worker, self._predicting = self._predicting, None
        if worker is not None:  # stops between two tiles; wait for it, so that nothing
            worker.quit()      # outlives the viewer
            deadline = time.perf_counter() + 30.0
            while worker.is_running and time.perf_counter() < deadline:
                QThreadPool.globalInstance().waitForDone(20)
        self.run = None
