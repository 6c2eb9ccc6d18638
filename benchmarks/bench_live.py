"""Live training without a viewer: label updates and live predictions on any device.

The headless half of ``bench_gui.py``'s live section, for machines without
napari (a lent GPU): a 1024×1024 image of synthetic nuclei, its top-left 256×256
corner painted; live training (``iter_train`` with no limits, run in a thread as
the Train widget's worker does) takes new cells one by one through
``TrainingRun.update`` while the painted region grows, and the main thread
keeps predicting the whole 1024×1024 view with the current weights
(``TrainingRun.current_model`` then ``segment``), as the live prediction layer does:
after each prediction it waits as long as that one took, as the widget does.

Prints:

* training steps per second during live mode;
* update → included in training (the training thread took the new labels in and
  recomputed their targets): median and max;
* model snapshot → labels and probabilities of the 1024×1024 view: median and max
  (the widget adds drawing the layer to this).

Usage::

    python benchmarks/bench_live.py                      # CPU, 60 s
    python benchmarks/bench_live.py --device cuda --seconds 30
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--every", type=float, default=1.0,
                        help="seconds between two label updates")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    import torch

    from napari_unet import iter_train, segment
    from napari_unet.core.synthetic import make_sample

    size = int(args.size)
    image, truth = make_sample("nuclei", (size, size), seed=3, touching=0.7, density=0.35)
    side = 256

    def painted(side: int) -> np.ndarray:
        """The cells that lie wholly inside the top-left side x side corner."""
        inside = np.zeros(int(truth.max()) + 1, bool)
        inside[np.unique(truth[:side, :side])] = True
        inside[np.unique(truth[side:, :])] = False
        inside[np.unique(truth[:, side:])] = False
        inside[0] = False
        return np.where(inside[truth], truth, 0)

    labels = painted(side)
    run = iter_train(image, labels, None, regions=[(0, 0, side, side)], device=args.device,
                     seed=0)
    steps = [0]
    stop = threading.Event()

    def worker() -> None:  # the Train widget's worker: iterate, stop between two yields
        for rec in run:
            steps[0] = rec.step
            if stop.is_set():
                break
        run.close()

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    while steps[0] == 0:  # targets made, first steps taken
        time.sleep(0.05)
    start, step0 = time.perf_counter(), steps[0]
    sent: dict[int, float] = {}
    refresh: list[float] = []
    next_update = next_predict = start
    rng = np.random.default_rng(0)
    done = set(np.unique(labels).tolist())
    while time.perf_counter() - start < args.seconds:
        now = time.perf_counter()
        if now >= next_update:
            if side < size and len(done) >= len(np.unique(painted(side))):
                side = min(side + 128, size)
            todo = sorted(set(np.unique(painted(side)).tolist()) - done)
            if todo:  # one whole new cell, as a fill would paint it
                cell = int(rng.choice(todo))
                done.add(cell)
                labels = np.where(truth == cell, truth, labels)
            version = run.update(0, labels, [(0, 0, side, side)])
            sent[version] = time.perf_counter()
            next_update = now + args.every
        if now < next_predict:
            time.sleep(0.01)
            continue
        t = time.perf_counter()
        model = run.current_model(args.device)
        segment(image, model, device=args.device, return_probabilities=True)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        refresh.append(time.perf_counter() - t)
        next_predict = time.perf_counter() + refresh[-1]  # the widget's pause after each one
    elapsed, n_steps = time.perf_counter() - start, steps[0] - step0
    stop.set()
    thread.join(timeout=120)
    times = run.update_times
    included = [times[v][1] - t for v, t in sent.items() if v in times]
    figures = {
        "device": args.device, "seconds": round(elapsed, 1),
        "steps_per_s": round(n_steps / elapsed, 2), "updates": len(sent),
        "included_median_s": round(float(np.median(included)), 3) if included else None,
        "included_max_s": round(float(np.max(included)), 3) if included else None,
        "not_included": len(sent) - len(included),
        "refresh_median_s": round(float(np.median(refresh)), 3) if refresh else None,
        "refresh_max_s": round(float(np.max(refresh)), 3) if refresh else None,
        "refreshes": len(refresh), "view": f"{size}x{size}",
    }
    print(f"Live training on {args.device}, {elapsed:.0f} s: {n_steps} steps "
          f"({figures['steps_per_s']} steps/s) while {len(sent)} label updates were sent "
          f"(one new cell each, the region growing to {side}x{side})")
    if included:
        print(f"  update -> included in training: median {figures['included_median_s']:.3f} s, "
              f"max {figures['included_max_s']:.3f} s ({figures['not_included']} not yet "
              f"included when the run stopped)")
    print(f"  model snapshot -> labels and probabilities of the {size}x{size} view: median "
          f"{figures['refresh_median_s']:.2f} s, max {figures['refresh_max_s']:.2f} s over "
          f"{len(refresh)} refreshes (drawing the layer comes on top in the widget)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
