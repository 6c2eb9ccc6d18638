"""Take the screenshots of the user guide from a real napari viewer.

Run under a (virtual) display of a laptop's size: ``xvfb-run -a -s "-screen 0 1600x1200x24"
python scripts/make_screenshots.py -o docs/images``. It opens the sample data and uses each
widget as a biologist would, with every default: clicks on the buttons, mouse drags on the
canvas to paint, a short training run, segmenting. It saves one PNG of the whole window per
step and prints each widget's status line, to be read with the pictures.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="docs/images")
    parser.add_argument("--train-minutes", type=float, default=1.5)
    args = parser.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("NAPARI_UNET_MODELS_DIR", tempfile.mkdtemp())

    import napari
    from qtpy.QtCore import QEvent, QPoint, QPointF, Qt
    from qtpy.QtGui import QMouseEvent
    from qtpy.QtWidgets import QApplication, QDockWidget, QWidget

    from napari_unet._widgets._common import camera_of

    app = napari.qt.get_qapp()

    def pump(seconds: float = 0.3) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.01)

    def shot(viewer: napari.Viewer, name: str) -> None:
        pump(0.5)
        viewer.screenshot(str(out / name), canvas_only=False, flash=False)
        print("wrote", out / name)

    def click(button) -> None:
        button.native.click()
        pump(0.1)

    def wait(widget) -> None:
        while widget.running:
            pump(0.2)

    def dock_of(widget) -> QDockWidget:
        w = widget.native
        while not isinstance(w, QDockWidget):
            w = w.parentWidget()
        return w

    def canvas() -> QWidget:
        return next(w for top in QApplication.topLevelWidgets()
                    for w in top.findChildren(QWidget)
                    if type(w).__name__ == "CanvasBackendDesktop" and w.isVisible())

    def drag(viewer: napari.Viewer, layer, points) -> None:
        """A mouse drag on the canvas through data points (row, col) of ``layer``."""
        target = canvas()
        cam = camera_of(viewer)
        h, w = viewer.canvas.size

        def at(p):
            world = np.asarray(layer.data_to_world(np.asarray(p, float)))[-2:]
            y, x = (world - np.asarray(cam.center)[-2:]) * cam.zoom + (h / 2, w / 2)
            return QPointF(float(x), float(y))

        def send(kind, pos, button, buttons):
            glob = QPointF(target.mapToGlobal(QPoint(int(pos.x()), int(pos.y()))))
            QApplication.sendEvent(target, QMouseEvent(kind, pos, glob, button, buttons,
                                                       Qt.KeyboardModifier.NoModifier))

        left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
        pts = [at(p) for p in points]
        send(QEvent.Type.MouseButtonPress, pts[0], left, left)
        for a, b in zip(pts[:-1], pts[1:]):
            for t in np.linspace(0, 1, 8)[1:]:
                send(QEvent.Type.MouseMove, a + (b - a) * float(t), none, left)
                pump(0.01)
        send(QEvent.Type.MouseButtonRelease, pts[-1], left, none)
        pump(0.2)

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 1000)
    viewer.open_sample("napari-unet", "nuclei")
    labels = viewer.layers["nuclei labels"]
    region = viewer.layers["annotated region"]
    shot(viewer, "01_sample.png")

    # 0b. Segment layer with the pretrained model shipped with the plugin, before training
    _, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment layer")
    click(segment.run_button)
    wait(segment)
    print("Segment:", segment.status.value)
    labels.visible = region.visible = False
    shot(viewer, "01b_default_model.png")
    viewer.layers.remove(viewer.layers[-1])
    labels.visible = region.visible = True
    dock_of(segment).hide()  # shown again for step 3

    # 1. Annotate: paint two touching nuclei, each with its own number, border weights on.
    # The strokes follow the two nuclei as a user traces them (planned from the generator's
    # full labels): back and forth across each nucleus.
    from scipy import ndimage as ndi

    from napari_unet._sample import sample_with_truth

    truth = sample_with_truth()[1]
    _, annotate = viewer.window.add_plugin_dock_widget("napari-unet", "Annotate")
    camera_of(viewer).center = (298, 196)
    camera_of(viewer).zoom = 3.2
    pump(0.5)
    click(annotate.preview)
    labels.brush_size = 10
    for cell in (28, 2):  # two touching nuclei outside the labelled corner
        inner = ndi.binary_erosion(truth == cell, iterations=3)
        rows = np.flatnonzero(inner.any(axis=1))[::4]
        path = []
        for k, r in enumerate(rows):
            cols = np.flatnonzero(inner[r])
            ends = [(r, cols[0]), (r, cols[-1])]
            path += ends[::-1] if k % 2 else ends
        click(annotate.new_cell)
        drag(viewer, labels, path)
    while annotate.busy:
        pump(0.05)
    pump(1.0)  # the cell count follows when painting pauses
    shot(viewer, "02_annotate_weight_map.png")
    click(annotate.preview)
    viewer.reset_view()
    dock_of(annotate).hide()

    # 2. Train on current labels, with every default but a shorter budget
    _, train = viewer.window.add_plugin_dock_widget("napari-unet", "Train on current labels")
    print("Train preselects:", [x.name for x in train.images.value],
          [x.name for x in train.labels.value], train.regions.value)
    train.minutes.value = args.train_minutes
    click(train.train_button)
    start = time.perf_counter()
    while train.running and time.perf_counter() - start < args.train_minutes * 60 * 0.6:
        pump(0.2)
    shot(viewer, "03_training.png")
    wait(train)
    print("Train:", train.status.value)
    shot(viewer, "04_trained.png")
    if train.saved_path is None and train.save_button.visible:
        click(train.save_button)  # keep it anyway, to show it in step 3
        print("Train:", train.status.value)

    # 3. Segment layer with the model just trained
    dock_of(segment).show()
    segment.model.reset_choices()
    if train.saved_path is not None:
        segment.model.value = train.saved_path
    click(segment.run_button)
    wait(segment)
    print("Segment:", segment.status.value)
    labels.visible = region.visible = False
    shot(viewer, "05_segmented.png")
    viewer.close()


if __name__ == "__main__":
    main()
