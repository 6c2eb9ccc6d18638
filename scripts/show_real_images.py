"""Segment real images that ship with scikit-image and take napari screenshots.

The default model never saw a real image (it is trained on synthetic data only);
these pictures show by eye how it generalises. Run under a (virtual) display::

    xvfb-run -a -s "-screen 0 1600x1200x24" python scripts/show_real_images.py -o docs/images

Images (all from ``skimage.data``, nothing downloaded):

* ``cell``: a phase-contrast-like image of a single cell in saline (660 x 550);
* ``ihc``: immunohistochemistry of a tissue section (colour); its haematoxylin
  (nuclei) channel is separated by colour deconvolution (``rgb2hed``) first;
* ``coins``: Greek coins, not microscopy at all: bright round objects on a dark
  background, a classic test of blob segmentation.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from skimage import data
from skimage.color import rgb2hed

from napari_unet import load_model, segment


def images() -> list[tuple[str, np.ndarray, str]]:
    ihc = data.immunohistochemistry()
    hematoxylin = rgb2hed(ihc)[..., 0]
    return [
        ("cell", data.cell(), "phase-contrast-like cell (skimage.data.cell)"),
        ("ihc_nuclei", hematoxylin, "IHC haematoxylin channel (skimage.data.immunohistochemistry)"),
        ("coins", data.coins(), "coins (skimage.data.coins), not microscopy"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="docs/images")
    parser.add_argument("--model", default="default")
    args = parser.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model)

    import napari

    app = napari.qt.get_qapp()
    for name, image, title in images():
        t = time.perf_counter()
        labels = segment(image, model)
        print(f"{name}: {image.shape} {image.dtype}, {labels.max()} objects in "
              f"{time.perf_counter() - t:.1f} s")
        viewer = napari.Viewer(show=True, title=title)
        viewer.window.resize(1100, 800)
        viewer.add_image(image, name=name)
        viewer.add_labels(labels, name=f"{name} labels (default model)", opacity=0.5)
        for _ in range(20):
            app.processEvents()
            time.sleep(0.02)
        path = out / f"real_{name}.png"
        viewer.screenshot(str(path), canvas_only=True, flash=False)
        print("wrote", path)
        viewer.close()


if __name__ == "__main__":
    main()
