"""Screenshots of live training for the user guide: the live prediction improving as cells
are painted.

Run under a (virtual) display: ``xvfb-run -a -s "-screen 0 1600x1200x24" python
scripts/make_live_screenshots.py --kind phase -o docs/images`` (the guide's pictures: a
phase-contrast image, which the pretrained nuclei model does not know). The generated image
is opened with the cells of one corner painted (at least as many as some can be held out
from) inside an annotated region; Live training is ticked in the Train widget and
started. Then cells are painted one by one (each a whole cell, as a fill or a few brush
strokes give), the annotated region is dragged over them, and a screenshot is taken after
each round, with the F1 of the live prediction against the image's true cells printed next
to it. The last picture shows
the panel after Stop.
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
    parser.add_argument("--kind", default="nuclei", help="generator kind of the image")
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--round-seconds", type=float, default=60.0,
                        help="training time after each round of painting")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--first-cells", type=int, default=None,
                        help="cells painted before live training starts (default: the "
                             "fewest from which some are held out for validation)")
    parser.add_argument("--start", default="default",
                        help="'default' (the pretrained model) or 'scratch'")
    parser.add_argument("--radius", type=float, nargs=2, default=(16.0, 22.0),
                        help="nucleus radius range of the generated image (pixels)")
    parser.add_argument("--photons", type=float, default=None,
                        help="signal of the generated image (default: the generator's random "
                             "choice; 5 to 10 gives dim, noisy images)")
    args = parser.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("NAPARI_UNET_MODELS_DIR", tempfile.mkdtemp())

    import napari

    from napari_unet._widgets.train import SCRATCH
    from napari_unet.core.metrics import match
    from napari_unet.core.synthetic import make_sample

    app = napari.qt.get_qapp()

    def pump(seconds: float = 0.3) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.01)

    kw: dict = {"radius": tuple(args.radius)} if args.kind == "nuclei" else {}
    if args.photons is not None:
        kw["photons"] = args.photons
    image, truth = make_sample(args.kind, (args.size, args.size), seed=args.seed, **kw)

    def cells_in(side: int) -> np.ndarray:
        found = np.unique(truth[:side, :side])
        return found[found > 0]

    def rectangle(side: int) -> np.ndarray:
        return np.array([[0, 0], [0, side - 1], [side - 1, side - 1], [side - 1, 0]], float)

    from napari_unet.core.training.split import MIN_CELLS

    side = args.size // 5  # the first corner: grown until some cells can be held out
    need = MIN_CELLS if args.first_cells is None else args.first_cells
    while len(cells_in(side)) < need and side < args.size:
        side += 16
    first = cells_in(side)
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1600, 1100)
    viewer.add_image(image, name="cells")
    labels = viewer.add_labels(np.where(np.isin(truth, first), truth, 0).astype(np.int32),
                               name="cells labels", opacity=0.5)
    regions = viewer.add_shapes([rectangle(side)], shape_type="rectangle",
                                name="annotated region", face_color="transparent",
                                edge_color="yellow", edge_width=3,
                                metadata={"napari-unet": "annotated regions"})
    viewer.reset_view()
    _, train = viewer.window.add_plugin_dock_widget("napari-unet", "Train on current labels")
    if args.start == "scratch":
        train.start.value = SCRATCH
    train.regions.value = regions
    train.live.value = True
    viewer.layers.selection.active = labels
    pump(1.0)
    train.train_button.native.click()
    while train.session is None or not train.session.refreshes:
        pump(0.2)
    session = train.session

    def shot(name: str, what: str) -> None:
        n = len(session.refreshes)
        while len(session.refreshes) == n:  # a prediction with the weights as they are now
            pump(0.2)
        pump(0.5)
        live = np.asarray(viewer.layers["live prediction"].data)
        f1 = match(truth, live, 0.5).f1
        viewer.screenshot(str(out / name), canvas_only=False, flash=False)
        print(f"wrote {out / name}: {what}; live prediction F1 {f1:.2f} on all "
              f"{int(truth.max())} cells; {train.status.value}")

    shot("06_live_start.png", f"{len(first)} cells painted")
    painted = set(first.tolist())
    for k in range(1, args.rounds):
        side = min(args.size, side + args.size // 5)
        for cell in cells_in(side):
            if int(cell) not in painted:
                painted.add(int(cell))
                labels.data_setitem(np.nonzero(truth == cell), int(cell))
                pump(0.3)
        regions.data = [rectangle(side)]
        pump(args.round_seconds)
        shot(f"06_live_round{k}.png", f"{len(painted)} cells painted")
    train.cancel_button.native.click()
    while train.running:
        pump(0.2)
    pump(1.0)
    viewer.screenshot(str(out / "06_live_stopped.png"), canvas_only=False, flash=False)
    print(f"wrote {out / '06_live_stopped.png'}: {train.status.value}")
    viewer.close()


if __name__ == "__main__":
    main()
