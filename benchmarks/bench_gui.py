"""How the viewer feels while napari-unet works: preview latency and responsiveness.

Run under a (virtual) display, e.g. ``xvfb-run -a python benchmarks/bench_gui.py``.
Prints, measured in one run in a real napari viewer:

* **preview latency**: from a 40-px brush dab on a 2048×2048 Labels layer with
  ~1000 cells until the border-weight preview layer holds the new values and the
  canvas has been redrawn (median and max over dabs);
* **responsiveness during training**: how late a 10 ms main-thread timer fires
  while the Train widget trains the default network on the sample data in its
  background worker (median, p99, max lateness), and how long Cancel takes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-seconds", type=float, default=60.0)
    parser.add_argument("--dabs", type=int, default=20)
    args = parser.parse_args()
    os.environ.setdefault("NAPARI_UNET_MODELS_DIR", tempfile.mkdtemp())

    import napari
    from qtpy.QtCore import QTimer
    from skimage.segmentation import expand_labels

    app = napari.qt.get_qapp()

    def pump(seconds: float = 0.0) -> None:
        end = time.perf_counter() + seconds
        while True:
            app.processEvents()
            if time.perf_counter() >= end:
                return
            time.sleep(0.002)

    # ------------------------------------------------------------ preview latency
    viewer = napari.Viewer(show=True)
    rng = np.random.default_rng(0)
    seeds = np.zeros((2048, 2048), np.int32)
    pts = rng.integers(0, 2048, (1000, 2))
    seeds[pts[:, 0], pts[:, 1]] = np.arange(1, 1001)
    labels = viewer.add_labels(expand_labels(seeds, 36), name="cells")
    labels.brush_size = 40
    drawn = [0.0]
    scene = viewer.window._qt_viewer.canvas._scene_canvas
    scene.events.draw.connect(lambda _e: drawn.__setitem__(0, time.perf_counter()))
    pump(1.0)

    def dabs(n: int, busy=lambda: False) -> list[float]:
        """ms from a dab until the canvas has been drawn with everything up to date."""
        times = []
        for _ in range(n):
            r, c = rng.integers(100, 1900, 2)
            t = time.perf_counter()
            labels.paint((int(r), int(c)), int(rng.integers(1, 1001)))
            while busy():  # the preview (if any) has not taken the edit yet
                app.processEvents()
            ready = time.perf_counter()
            while drawn[0] < ready:  # the end of the first draw after that
                app.processEvents()
            times.append((drawn[0] - t) * 1000)
            pump(0.1)
        return times

    baseline = dabs(args.dabs)
    _, annotate = viewer.window.add_plugin_dock_widget("napari-unet", "Annotate")
    assert annotate.labels.value is labels  # chosen by the widget
    t = time.perf_counter()
    annotate.preview.value = True
    pump(1.0)
    print(f"preview switched on (full map of 2048x2048, 1000 cells) in "
          f"{time.perf_counter() - t - 1.0:.2f} s")
    total = dabs(args.dabs, busy=lambda: annotate.busy)
    inside = annotate.last_update_ms
    print(f"a 40 px dab without the preview (napari alone): median {np.median(baseline):.1f} ms"
          " from the stroke to the drawn canvas")
    print(f"with the live preview: median {np.median(total):.1f} ms, max {np.max(total):.1f} ms "
          f"(the cache update and layer write alone: {inside:.1f} ms for the last dab)")
    viewer.close()
    pump(0.5)

    # ----------------------------------------------------- training responsiveness
    viewer = napari.Viewer(show=True)
    viewer.open_sample("napari-unet", "nuclei")
    _, train = viewer.window.add_plugin_dock_widget("napari-unet", "Train on current labels")
    assert train.regions.value is viewer.layers["annotated region"]  # chosen by the widget
    train.budget_kind.value = "minutes"
    train.minutes.value = args.train_seconds / 60
    train.device.value = "cpu"
    late: list[float] = []
    last = [time.perf_counter()]
    timer = QTimer()
    timer.setInterval(10)

    def tick() -> None:
        now = time.perf_counter()
        late.append(now - last[0] - 0.010)
        last[0] = now

    timer.timeout.connect(tick)
    pump(0.5)
    timer.start()
    train.train()
    while train.running and len(train.plot.loss) < 1:
        pump(0.1)
    late.clear()  # measure during training steps (not the set-up)
    start = time.perf_counter()
    while train.running and time.perf_counter() - start < args.train_seconds * 0.8:
        pump(0.1)
    steps = len(train.plot.loss)
    lateness = np.array(late) * 1000
    t = time.perf_counter()
    train.cancel()
    while train.running:
        pump(0.01)
    cancel_s = time.perf_counter() - t
    timer.stop()
    print(f"timer (10 ms) lateness while training on the CPU ({steps} steps in "
          f"{time.perf_counter() - start:.0f} s): median {np.median(lateness):.1f} ms, "
          f"p99 {np.percentile(lateness, 99):.1f} ms, max {lateness.max():.1f} ms "
          f"over {len(lateness)} ticks")
    print(f"cancel: training stopped and the best model was kept {cancel_s:.2f} s after "
          f"Cancel ({train.status.value})")
    viewer.close()


if __name__ == "__main__":
    main()
