"""Take the screenshots of the user guide from a real napari viewer.

Run under a (virtual) display: ``xvfb-run -a -s "-screen 0 1600x1000x24" python
scripts/make_screenshots.py -o docs/images``. It opens the sample data, uses each
widget as a biologist would (paint with the live weight-map preview, train for a
short while, segment) and saves one PNG of the whole window per step.
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
    parser.add_argument("--train-seconds", type=float, default=90.0)
    args = parser.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("NAPARI_UNET_MODELS_DIR", tempfile.mkdtemp())

    import napari

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

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    viewer.open_sample("napari-unet", "nuclei")
    image, labels = viewer.layers["nuclei"], viewer.layers["nuclei labels"]
    shot(viewer, "01_sample.png")

    # Segment layer with the pretrained model shipped with the plugin, before any training
    _, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment layer")
    segment.reset_choices()
    segment.image.value = image
    segment.run()
    while segment.running:
        pump(0.2)
    labels.visible = False
    viewer.layers["annotated region"].visible = False
    shot(viewer, "01b_default_model.png")
    viewer.layers.remove(viewer.layers[-1])
    labels.visible = True
    viewer.layers["annotated region"].visible = True
    from qtpy.QtWidgets import QDockWidget

    segment_dock = segment.native
    while segment_dock is not None and not isinstance(segment_dock, QDockWidget):
        segment_dock = segment_dock.parentWidget()
    segment_dock.hide()  # shown again for step 3

    # Annotate: paint two touching cells with the live weight map on
    _, annotate = viewer.window.add_plugin_dock_widget("napari-unet", "Annotate")
    annotate.reset_choices()
    annotate.image.value = image
    annotate.labels.value = labels
    annotate.preview.value = True
    pump(0.5)
    annotate.select_new_cell()
    labels.brush_size = 14
    rng = np.random.default_rng(1)
    for r, c in [(400, 90), (412, 104)]:
        annotate.select_new_cell()
        for dr, dc in rng.normal(0, 2, (6, 2)):
            labels.paint((r + dr, c + dc), labels.selected_label)
    while annotate.busy:
        app.processEvents()
    viewer.camera.center = (380, 120)
    viewer.camera.zoom = 2.2
    shot(viewer, "02_annotate_weight_map.png")
    annotate.preview.value = False
    viewer.camera.center = (256, 256)
    viewer.camera.zoom = 1.0

    # Train on current labels
    _, train = viewer.window.add_plugin_dock_widget("napari-unet", "Train on current labels")
    train.reset_choices()
    train.images.value = [image]
    train.labels.value = [labels]
    train.regions.value = viewer.layers["annotated region"]
    train.budget_kind.value = "minutes"
    train.budget.value = args.train_seconds / 60
    train.model_name.value = "my nuclei"
    train.train()
    start = time.perf_counter()
    while train.running and time.perf_counter() - start < args.train_seconds * 0.6:
        pump(0.2)
    shot(viewer, "03_training.png")
    while train.running:
        pump(0.2)
    shot(viewer, "04_trained.png")

    # Segment layer with the model just trained
    segment_dock.show()
    segment.reset_choices()
    segment.image.value = image
    segment.model.value = train.saved_path
    segment.run()
    while segment.running:
        pump(0.2)
    labels.visible = False
    viewer.layers["annotated region"].visible = False
    shot(viewer, "05_segmented.png")
    viewer.close()


if __name__ == "__main__":
    main()
