"""Every model a fine-tuning run checks, scored on cells it never saw, against the start.

Two measurements behind docs/models.md ("Fine-tuning on a few of your cells"):

* ``quickstart``: the quickstart's fine-tuning (its eight labelled images, 120 s, seed 0,
  the packaged model as start), each checked model scored (F1@0.5) on the quickstart's new
  image. Run ``bash scripts/quickstart.sh`` first: it writes the images to ``out/``.
* ``schedule``: the quickstart's fine-tuning with another learning-rate schedule (``--lr``,
  ``--final-lr``: cosine decay to that share of the peak over the 120 s), once per seed; the
  kept and the last model scored on the new image. Without ``--lr`` and ``--final-lr`` it is
  the engine's default (3e-4, no decay).
* ``average``: the packed-clusters run of ``scripts/pretrain.py finetune`` (72 painted
  cells of a 1024 x 1024 image, seed 11), for a fixed number of steps without validation;
  the last weights, their exponential averages and their mean from step 50 on, scored on
  the 1362 cells below the painted band.

Usage::

    python benchmarks/finetune_checks.py quickstart [--out out] [--seconds 120]
    python benchmarks/finetune_checks.py schedule [--lr 1e-3 --final-lr 0.05] [--seeds 0 1 2 3]
    python benchmarks/finetune_checks.py average [--steps 200] [--lr 3e-4]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import pretrain  # noqa: E402  (the held-out images and the finetune band)

from napari_unet import load_model, segment  # noqa: E402
from napari_unet.core import metrics  # noqa: E402
from napari_unet.core.training import iter_train  # noqa: E402


def f1(truth: np.ndarray, image: np.ndarray, model, rows: slice = slice(None)) -> float:
    """F1@0.5 of the model's segmentation of ``image`` against ``truth``, on ``rows``."""
    return metrics.match(truth[rows], segment(image, model)[rows], 0.5).f1


def quickstart_data(folder: str) -> tuple[list, list, np.ndarray, np.ndarray]:
    """The quickstart's eight training images and labels, its new image and its truth."""
    out = Path(folder)
    paths = sorted((out / "train").glob("nuclei_00?.tif"))
    if not paths:
        raise SystemExit(f"no quickstart images in {out}/train: run bash scripts/quickstart.sh")
    images = [tifffile.imread(p) for p in paths]
    labels = [tifffile.imread(p.with_name(p.stem + "_labels.tif")) for p in paths]
    return (images, labels, tifffile.imread(out / "new" / "nuclei_000.tif"),
            tifffile.imread(out / "new" / "nuclei_000_labels.tif"))


def quickstart(a: argparse.Namespace) -> None:
    images, labels, new, truth = quickstart_data(a.out)
    start = load_model("default")
    print(f"out of the box: new image F1 {f1(truth, new, start):.3f}", flush=True)
    gen = iter_train(images, labels, start, max_time=a.seconds, seed=0)
    checks = [(r.step, r.val_f1, r.val_loss, gen.current_model())
              for r in gen if r.val_f1 is not None and r.phase == "train"]
    r = gen.result
    print(f"{r.steps} steps in {r.seconds:.0f} s; kept step {r.best_step} "
          f"({r.val_cells} held-out cells)")
    for step, vf, vl, model in checks:
        print(f"  step {step:4d}: val F1 {vf:.3f}  val loss {vl:.4f}  "
              f"new image F1 {f1(truth, new, model):.3f}", flush=True)
    print(f"kept model: new image F1 {f1(truth, new, r.model):.3f}")


def schedule(a: argparse.Namespace) -> None:
    images, labels, new, truth = quickstart_data(a.out)
    print(f"out of the box: new image F1 {f1(truth, new, load_model('default')):.3f}; "
          f"peak rate {a.lr or 'default'}, final share {a.final_lr or 'default'}", flush=True)
    for seed in a.seeds:
        gen = iter_train(images, labels, load_model("default"), max_time=a.seconds, seed=seed,
                         lr=a.lr, final_lr_fraction=a.final_lr)
        for _ in gen:
            pass
        r = gen.result
        print(f"  seed {seed}: {r.steps} steps, kept step {r.best_step}: new image F1 "
              f"{f1(truth, new, r.model):.3f}; last model "
              f"{f1(truth, new, gen.current_model()):.3f}", flush=True)


def toward(average: dict | None, state: dict, weight: float) -> dict:
    """``average`` moved toward ``state`` by ``weight`` (a copy of ``state`` at first)."""
    if average is None:
        return {k: v.float().clone() for k, v in state.items()}
    for k, v in state.items():
        average[k].lerp_(v.float(), weight)
    return average


def average(a: argparse.Namespace) -> None:
    name, kw = pretrain.FINETUNE_CONDITIONS[1]  # packed clusters
    seed, size = 11, 1024  # pretrain.py finetune's defaults, as its 36 painted cells
    image, truth, labels, band, test = pretrain.finetune_case(kw, 36, seed, size)
    start = load_model("default")

    def score(state: dict | None = None) -> float:
        model = start
        if state is not None:
            model = copy.deepcopy(start)
            model.load_state_dict(state)
        return f1(truth, image, model, test)

    print(f"{name}: out of the box {score():.3f}", flush=True)
    gen = iter_train(image, labels, start, regions=[(0, 0, band, size)], max_steps=a.steps,
                     seed=seed, lr=a.lr, validation=0, report_interval=0)
    ema: dict[float, dict | None] = {0.95: None, 0.99: None}
    mean, n_mean, last = None, 0, -1
    for rec in gen:
        if rec.phase != "train" or rec.step == last:
            continue
        last = rec.step
        state = gen.current_model().state_dict()  # a copy
        for d in ema:
            ema[d] = toward(ema[d], state, 1 - d)
        if rec.step >= 50:
            n_mean += 1
            mean = toward(mean, state, 1 / n_mean)
        if rec.step % 50 == 0 and rec.step >= 100 or rec.step == a.steps:
            row = [f"last {score(state):.3f}"] + [f"average {d} {score(e):.3f}"
                                                  for d, e in ema.items()]
            if mean is not None:
                row.append(f"mean from step 50 {score(mean):.3f}")
            print(f"  step {rec.step:4d}: " + "  ".join(row), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quickstart")
    q.add_argument("--out", default=str(ROOT / "out"))
    q.add_argument("--seconds", type=float, default=120.0)
    q.set_defaults(func=quickstart)
    s = sub.add_parser("schedule")
    s.add_argument("--out", default=str(ROOT / "out"))
    s.add_argument("--seconds", type=float, default=120.0)
    s.add_argument("--lr", type=float, default=None)
    s.add_argument("--final-lr", type=float, default=None)
    s.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    s.set_defaults(func=schedule)
    v = sub.add_parser("average")
    v.add_argument("--steps", type=int, default=200)
    v.add_argument("--lr", type=float, default=3e-4)
    v.set_defaults(func=average)
    a = p.parse_args()
    a.func(a)


if __name__ == "__main__":
    main()
