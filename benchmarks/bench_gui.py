"""How the viewer feels while napari-unet works: preview latency and responsiveness.

Run under a (virtual) display, e.g. ``xvfb-run -a python benchmarks/bench_gui.py``.
Prints, measured in one run in a real napari viewer:

* **preview latency**: from a 40-px brush dab on a 2048×2048 Labels layer with
  ~1000 cells until the border-weight preview layer holds the new values and the
  canvas has been redrawn (median and max over dabs);
* **responsiveness during training**: how late a 10 ms main-thread timer fires
  while the Train widget trains the default network on the sample data in its
  background worker (median, p99, max lateness), and how long Cancel takes;
* **live training** (``--live-seconds``): on a 1024×1024 image with a painted
  corner, live training runs while whole cells are painted one by one (each an
  undoable edit of the Labels layer, as a fill or a brush gives): the time from
  an edit to its inclusion in training (median, max), the time from a snapshot of
  the model to the refreshed live prediction of the 1024×1024 view (median, max),
  the timer lateness during live mode, and the dab-to-canvas latency of painting
  during live mode against before it.
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
    parser.add_argument("--live-seconds", type=float, default=90.0,
                        help="live-training section length (0: skip)")
    parser.add_argument("--skip-training", action="store_true",
                        help="skip the preview and training sections")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    os.environ.setdefault("NAPARI_UNET_MODELS_DIR", tempfile.mkdtemp())

    import napari
    from qtpy.QtCore import QTimer

    app = napari.qt.get_qapp()

    def pump(seconds: float = 0.0) -> None:
        end = time.perf_counter() + seconds
        while True:
            app.processEvents()
            if time.perf_counter() >= end:
                return
            time.sleep(0.002)

    if not args.skip_training:
        preview_and_training(args, app, pump, QTimer, rng=np.random.default_rng(0))
    if args.live_seconds:
        live(args, app, pump, QTimer)


def preview_and_training(args, app, pump, QTimer, rng) -> None:  # noqa: N803 - a class
    import napari
    from skimage.segmentation import expand_labels

    # ------------------------------------------------------------ preview latency
    viewer = napari.Viewer(show=True)
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
    timer, late, _ = timer_lateness(QTimer)
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


def timer_lateness(QTimer):  # noqa: N803 - a class
    """A 10 ms main-thread timer and the list of its lateness (seconds) per tick."""
    late: list[float] = []
    last = [time.perf_counter()]
    timer = QTimer()
    timer.setInterval(10)

    def tick() -> None:
        now = time.perf_counter()
        late.append(now - last[0] - 0.010)
        last[0] = now

    timer.timeout.connect(tick)
    return timer, late, last


def live(args, app, pump, QTimer) -> None:  # noqa: N803 - a class
    """Live training on a 1024x1024 view while cells are painted one by one, the annotated
    region growing from a corner as the user would paint it."""
    import napari

    from napari_unet.core.synthetic import make_sample

    image, truth = make_sample("nuclei", (1024, 1024), seed=11, layout="clustered",
                               density=0.3)

    def rectangle(side: int) -> np.ndarray:
        return np.array([[0, 0], [0, side - 1], [side - 1, side - 1], [side - 1, 0]], float)

    def cells_in(side: int) -> np.ndarray:
        found = np.unique(truth[:side, :side])
        return found[found > 0]

    first = cells_in(256)
    painted = np.where(np.isin(truth, first), truth, 0).astype(np.int32)
    viewer = napari.Viewer(show=True)
    viewer.add_image(image, name="nuclei")
    labels = viewer.add_labels(painted, name="nuclei labels")
    regions = viewer.add_shapes([rectangle(256)], shape_type="rectangle",
                                name="annotated region", face_color="transparent",
                                edge_color="yellow",
                                metadata={"napari-unet": "annotated regions"})
    viewer.reset_view()
    _, train = viewer.window.add_plugin_dock_widget("napari-unet", "Train on current labels")
    train.regions.value = regions
    train.device.value = args.device
    train.live.value = True
    viewer.layers.selection.active = labels
    pump(1.0)
    rng = np.random.default_rng(1)
    drawn = [0.0]
    scene = viewer.window._qt_viewer.canvas._scene_canvas
    scene.events.draw.connect(lambda _e: drawn.__setitem__(0, time.perf_counter()))

    def dab() -> float:
        """ms from a 20 px dab (far from the cells being painted) to the drawn canvas;
        the dab is undone after."""
        r, c = rng.integers(900, 1000, 2)
        t = time.perf_counter()
        labels.paint((int(r), int(c)), int(labels.data.max()) + 1)
        ready = time.perf_counter()
        while drawn[0] < ready:
            app.processEvents()
        ms = (drawn[0] - t) * 1000
        labels.undo()
        pump(0.3)
        return ms

    labels.brush_size = 20
    before = [dab() for _ in range(10)]
    timer, late, _ = timer_lateness(QTimer)
    timer.start()
    train.train()
    while train.session is None or not train.session.refreshes:
        pump(0.1)
    late.clear()
    session = train.session
    start = time.perf_counter()
    edits: list[float] = []
    during: list[float] = []
    side, done = 256, set(first.tolist())
    while time.perf_counter() - start < args.live_seconds and side < 1024:
        side = min(side + 128, 1024)
        for cell in cells_in(side):
            if cell in done or time.perf_counter() - start > args.live_seconds:
                continue
            done.add(cell)
            where = np.nonzero(truth == cell)
            edits.append(time.perf_counter())
            labels.data_setitem(where, int(cell))  # one undoable edit, like a fill
            pump(0.6)
            if len(edits) % 8 == 0:
                during.append(dab())
        regions.data = [rectangle(side)]  # the user drags the region over what is painted
        pump(0.6)
    pump(3.0)
    lateness = np.array(late) * 1000
    # edit -> inclusion: an update carries every edit made before it was sent
    times = train.run.update_times if train.run is not None else {}
    sent = sorted(session.sent.items())
    included, k = [], 0
    for version, sent_at in sent:
        batch = []
        while k < len(edits) and edits[k] <= sent_at:
            batch.append(edits[k])
            k += 1
        if version in times:
            included += [times[version][1] - t for t in batch]
    refresh = [shown - snap for snap, shown in session.refreshes[1:]]
    steps = session._step
    train.cancel()
    while train.running:
        pump(0.05)
    timer.stop()
    print(f"\nLive training on {args.device}: {steps} steps in "
          f"{time.perf_counter() - start:.0f} s while {len(edits)} cells were painted one by "
          f"one and the annotated region grew to {side}x{side}; view 1024x1024")
    if included:
        inc = np.array(included)
        print(f"  edit -> included in training: median {np.median(inc):.2f} s, "
              f"p90 {np.percentile(inc, 90):.2f} s, max {inc.max():.2f} s, "
              f"{int((inc > 1).sum())} over 1 s, over {len(inc)} edits "
              f"(each cell one finished edit, sent when it ends)")
    if refresh:
        print(f"  model snapshot -> refreshed live prediction of the 1024x1024 view: median "
              f"{np.median(refresh):.2f} s, max {np.max(refresh):.2f} s over "
              f"{len(refresh)} refreshes")
    print(f"  timer (10 ms) lateness during live mode: median {np.median(lateness):.1f} ms, "
          f"p99 {np.percentile(lateness, 99):.1f} ms, max {lateness.max():.1f} ms over "
          f"{len(lateness)} ticks")
    if during:
        print(f"  a 20 px dab to the drawn canvas: median {np.median(before):.1f} ms before "
              f"live mode, {np.median(during):.1f} ms during it ({len(during)} dabs)")
    print(f"  {train.status.value}")
    viewer.close()


if __name__ == "__main__":
    main()
