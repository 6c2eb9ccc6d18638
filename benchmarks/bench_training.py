"""Benchmark of the training engine, with an earlier commit's engine measured in the same run.

Prints:

* **Step speed** of the paper's valid U-Net (depth 4) with 16 and 64 base channels
  on 256×256 target patches (444×444 network input), batch 4 on the CPU (on a GPU
  also the automatic batch): the time to make a batch and to take an optimiser
  step, measured apart (synchronised), the host share of a step (making the
  batch, everything the device waits for), target megapixels per second, and the
  end-to-end speed of the real loop (``iter_train``, which synchronises only for
  its progress records). The baseline engine (``--baseline``, default the commit
  before the device-batch engine) is measured with its own benchmark script from
  a temporary ``git worktree``.
* **Learning curves**: from scratch on six 256×256 synthetic images of touching
  nuclei, instance F1 (IoU 0.5) on four held-out images against training time,
  for each seed, for this engine and the baseline (the same data, saved once and
  read by both; only public API is used, so both engines run the same code).
* **Fine-tuning the sample** (``--sample-seconds``): the packaged model on the
  napari sample's annotated region, steps made in that time.

Usage::

    python benchmarks/bench_training.py                       # CPU, ~15 minutes
    python benchmarks/bench_training.py --quick               # smoke test
    python benchmarks/bench_training.py --device cuda --seconds 60 --sample-seconds 60
    python benchmarks/bench_training.py --baseline none       # this engine only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "e43b0d5"  # the last commit of the engine that recomputed targets per step


# ------------------------------------------------------------------ data
def nuclei(seeds, size):
    from napari_unet.core.synthetic import make_sample

    pairs = [make_sample("nuclei", (size, size), seed=int(s), touching=0.8, density=0.35)
             for s in seeds]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ------------------------------------------------------------------ step speed
def step_speed(base: int, patch: int, batch: int | None, steps: int, device: str) -> dict:
    """Batch making and optimiser step timed apart, and the real loop's speed."""
    from napari_unet.core.training import TrainConfig, iter_train, new_model
    from napari_unet.core.training.loop import Trainer
    from napari_unet.core.training.setup import (
        io_shapes,
        make_optimizer,
        patch_and_batch,
        precision,
    )
    from napari_unet.core.training.step import train_step

    images, labels = nuclei(range(2), 512)
    model = new_model(base_channels=base)
    config = TrainConfig(patch_shape=patch, batch_size=batch, validation=0, device=device,
                         seed=0)
    trainer = Trainer(images, labels, model, config)
    batches = trainer.prepare().batches
    dev = trainer.device
    net = trainer.model.to(dev).train()
    amp = precision(dev)
    (p, _), n = patch_and_batch(net, trainer.plane_shapes, config, dev, amp)
    in_shape, out_shape = io_shapes(net, (p, p))
    opt = make_optimizer(net, config, dev)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    t_batch = t_step = 0.0
    for k in range(steps + 2):  # two warm-ups
        sync(device)
        t0 = time.perf_counter()
        b = batches.sample(n, in_shape, out_shape)
        sync(device)
        t1 = time.perf_counter()
        train_step(net, opt, scaler, b, "weighted_ce", amp, None)
        sync(device)
        t2 = time.perf_counter()
        if k >= 2:
            t_batch += t1 - t0
            t_step += t2 - t1
    total = (t_batch + t_step) / steps
    # the real loop: records throttled, no synchronisation per step
    loop_steps = max(steps, 10) if dev.type == "cpu" else 300
    run = iter_train(images, labels, new_model(base_channels=base), max_steps=loop_steps + 5,
                     patch_shape=patch, batch_size=n, validation=0, device=device, seed=1)
    marks = []
    for rec in run:
        if rec.phase == "train":
            marks.append((rec.step, rec.elapsed))
    first = next(m for m in marks if m[0] >= 5)
    loop_rate = (marks[-1][0] - first[0]) / max(marks[-1][1] - first[1], 1e-9)
    return {
        "engine": "device batches", "base": base, "batch": n, "in": list(in_shape),
        "out": list(out_shape), "s_per_step": total, "steps_per_s": 1 / total,
        "batch_s": t_batch / steps, "host_share": t_batch / (t_batch + t_step),
        "net_s": t_step / steps, "out_mpx_per_s": n * out_shape[0] * out_shape[1] / total / 1e6,
        "loop_steps_per_s": loop_rate,
        "loop_mpx_per_s": loop_rate * n * out_shape[0] * out_shape[1] / 1e6,
        "precision": str(amp).replace("torch.", "") if amp else "float32",
    }


def print_speed(rows: list[dict]) -> None:
    print(f"{'engine':<16} {'base':>4} {'batch':>5} {'input':>9} {'s/step':>8} {'steps/s':>8} "
          f"{'Mpx/s':>7} {'batch s':>8} {'host':>6} {'loop steps/s':>13} {'loop Mpx/s':>10}")
    for r in rows:
        loop = r.get("loop_steps_per_s")
        print(f"{r['engine']:<16} {r['base']:>4} {r['batch']:>5} {r['in'][0]:>4}x{r['in'][1]:<4} "
              f"{r['s_per_step']:>8.3f} {r['steps_per_s']:>8.2f} {r['out_mpx_per_s']:>7.2f} "
              f"{r['batch_s']:>8.3f} {100 * r['host_share']:>5.1f}% "
              f"{'' if loop is None else f'{loop:.2f}':>13} "
              f"{'' if loop is None else format(r['loop_mpx_per_s'], '.2f'):>10}")
    sys.stdout.flush()


# -------------------------------------------------------------- learning curve
def learning_curve(data: Path, seconds: float, n_points: int, device: str, seed: int,
                   threads: int | None) -> list[dict]:
    """Train from scratch on the saved images; F1 on the saved test images over time.

    Uses only public API (the same in both engines)."""
    from napari_unet import iter_train, predict_tiled, probabilities_to_labels
    from napari_unet.core.metrics import match_planes
    from napari_unet.core.training import new_model

    if threads:
        torch.set_num_threads(threads)
    z = np.load(data)
    n = int(z["n_train"])
    images = [z[f"image{k}"] for k in range(n)]
    labels = [z[f"labels{k}"] for k in range(n)]
    tests = [(z[f"test_image{k}"], z[f"test_labels{k}"]) for k in range(int(z["n_test"]))]
    torch.manual_seed(seed)
    run = iter_train(images, labels, new_model(), max_time=seconds, validation=0,
                     device=device, seed=seed)
    marks = list(np.linspace(seconds / n_points, seconds, n_points))
    snaps = []
    for p in run:
        if p.phase == "train" and marks and p.elapsed >= marks[0]:
            snaps.append((p.elapsed, p.step, run.best_model()))
            while marks and p.elapsed >= marks[0]:
                marks.pop(0)
    result = run.result
    if not snaps or snaps[-1][1] != result.steps:
        snaps.append((result.seconds, result.steps, result.model))
    rows = []
    for elapsed, step, model in snaps:
        preds = [probabilities_to_labels(predict_tiled(model, img, device=device),
                                         model.classes, grow=2) for img, _ in tests]
        r = match_planes([t for _, t in tests], preds, 0.5)
        rows.append({"seconds": float(elapsed), "step": int(step), "f1": float(r.f1)})
    return rows


def save_curve_data(path: Path, quick: bool) -> None:
    n_train, size = (2, 192) if quick else (6, 256)
    images, labels = nuclei(range(n_train), size)
    tests, truth = nuclei(range(1000, 1004), 256)
    arrays = {"n_train": n_train, "n_test": len(tests)}
    for k in range(n_train):
        arrays[f"image{k}"], arrays[f"labels{k}"] = images[k], labels[k]
    for k in range(len(tests)):
        arrays[f"test_image{k}"], arrays[f"test_labels{k}"] = tests[k], truth[k]
    np.savez(path, **arrays)


# ------------------------------------------------------------------ baseline
class Baseline:
    """An earlier commit in a temporary git worktree, run in subprocesses; or a folder
    holding that commit's ``src`` and ``benchmarks`` (``git archive``), for machines
    without the repository's history."""

    def __init__(self, commit: str) -> None:
        self.commit, self.own = commit, not Path(commit).is_dir()
        if not self.own:
            self.folder = Path(commit).resolve()
            self.commit = (self.folder / "COMMIT").read_text().strip() if (
                self.folder / "COMMIT").exists() else self.folder.name
            return
        self.folder = Path(tempfile.mkdtemp(prefix="napari-unet-baseline-"))
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f",
                        str(self.folder), commit], check=True, capture_output=True)

    def env(self) -> dict:
        return {**os.environ, "PYTHONPATH": str(self.folder / "src")}

    def speed(self, device: str, quick: bool) -> list[dict]:
        out = self.folder / "speed.json"
        cmd = [sys.executable, str(self.folder / "benchmarks" / "bench_training.py"),
               "--skip-curve", "--device", device, "--json", str(out)]
        if quick:
            cmd.append("--quick")
        subprocess.run(cmd, check=True, env=self.env(), capture_output=True)
        rows = json.loads(out.read_text())["speed"]
        for r in rows:
            r.update(engine=f"baseline {self.commit}", batch=4 if not quick else 2,
                     host_share=r["batch_share"])
        return rows

    def curve(self, data: Path, seconds: float, n_points: int, device: str, seed: int,
              threads: int | None) -> list[dict]:
        out = self.folder / f"curve{seed}.json"
        cmd = [sys.executable, __file__, "--curve-only", str(data), "--seconds", str(seconds),
               "--points", str(n_points), "--device", device, "--seed", str(seed),
               "--json", str(out)]
        if threads:
            cmd += ["--threads", str(threads)]
        subprocess.run(cmd, check=True, env=self.env(), capture_output=True)
        return json.loads(out.read_text())

    def close(self) -> None:
        if not self.own:
            return
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                        str(self.folder)], capture_output=True)


def sample_finetune(seconds: float, device: str) -> dict:
    """The packaged model fine-tuned on the napari sample's annotated region."""
    from napari_unet import iter_train
    from napari_unet._sample import nuclei_sample

    layers = nuclei_sample()
    image = next(d for d, _, kind in layers if kind == "image")
    labels = next(d for d, _, kind in layers if kind == "labels")
    shapes = [(d, m) for d, m, kind in layers if kind == "shapes"]
    regions = None
    if shapes:
        rect = np.asarray(shapes[0][0][0])
        r0, c0 = np.floor(rect.min(axis=0)).astype(int)
        r1, c1 = np.ceil(rect.max(axis=0)).astype(int)
        regions = [(r0, c0, r1, c1)]
    run = iter_train(image, labels, None, regions=regions, max_time=seconds, device=device,
                     seed=0)
    for _ in run:
        pass
    r = run.result
    return {"seconds": seconds, "steps": r.steps, "best_val_f1": r.best_val_f1,
            "start_val_f1": r.start_val_f1, "val_cells": r.val_cells,
            "batch": r.history[-1].batch_size if r.history else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller, for a smoke test")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seconds", type=float, help="learning-curve training time "
                        "(default 120, --quick 20)")
    parser.add_argument("--points", type=int, default=4, help="points per learning curve")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--seed", type=int, default=0, help="(with --curve-only)")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-curve", action="store_true")
    parser.add_argument("--sample-seconds", type=float, default=0,
                        help="fine-tune the packaged model on the sample this long (0: skip)")
    parser.add_argument("--baseline", default=BASELINE,
                        help=f"commit to compare with (default {BASELINE}; a folder holding its "
                             "src and benchmarks; 'none' to skip)")
    parser.add_argument("--curve-only", metavar="DATA", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seconds = args.seconds or (20.0 if args.quick else 120.0)
    if args.curve_only:  # a learning curve in this process (the baseline's subprocess)
        rows = learning_curve(Path(args.curve_only), seconds, args.points, args.device,
                              args.seed, args.threads)
        Path(args.json).write_text(json.dumps(rows))
        return 0
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}"
          + (f" ({torch.cuda.get_device_name(0)})" if args.device.startswith("cuda") else ""))
    baseline = None if args.baseline == "none" else Baseline(args.baseline)
    out: dict = {}
    try:
        if not args.skip_speed:
            patch, batch, steps = (128, 2, 2) if args.quick else (256, 4, 3)
            print(f"\nStep speed: valid U-Net depth 4, target patch {patch}x{patch}")
            rows = []
            for base in (16, 64):
                rows.append(step_speed(base, patch, batch, steps, args.device))
                if args.device.startswith("cuda"):  # and the batch the engine picks
                    rows.append(step_speed(base, patch, None, 20, args.device))
            if baseline is not None:
                rows += baseline.speed(args.device, args.quick)
            out["speed"] = rows
            print_speed(rows)
            if baseline is not None:
                for base in (16, 64):
                    new = next(r for r in rows if r["base"] == base and r["batch"] == batch)
                    old = next(r for r in rows if r["base"] == base and "baseline" in r["engine"])
                    print(f"base {base}: {old['s_per_step'] / new['s_per_step']:.2f}x the "
                          f"baseline's steps/s at batch {batch}")
        if not args.skip_curve:
            data = Path(tempfile.mkdtemp(prefix="napari-unet-curve-")) / "data.npz"
            save_curve_data(data, args.quick)
            print(f"\nLearning curves: from scratch, {seconds:.0f} s, F1 (IoU 0.5) on 4 "
                  "held-out 256x256 images of touching nuclei")
            curves = {}
            for seed in args.seeds:
                curves[f"this engine, seed {seed}"] = learning_curve(
                    data, seconds, args.points, args.device, seed, args.threads)
                if baseline is not None:
                    curves[f"baseline {baseline.commit}, seed {seed}"] = baseline.curve(
                        data, seconds, args.points, args.device, seed, args.threads)
            out["curves"] = curves
            for name, rows in curves.items():
                points = "  ".join(f"{r['seconds']:>4.0f}s/{r['step']:>5} steps F1 {r['f1']:.3f}"
                                   for r in rows)
                print(f"{name:<28} {points}")
            finals = {name: rows[-1]["f1"] for name, rows in curves.items()}
            for label in ("this engine", "baseline"):
                vals = [v for k, v in finals.items() if k.startswith(label)]
                if vals:
                    print(f"final F1, {label}: mean {np.mean(vals):.3f} "
                          f"({', '.join(f'{v:.3f}' for v in vals)})")
        if args.sample_seconds:
            r = sample_finetune(args.sample_seconds, args.device)
            out["sample"] = r
            print(f"\nFine-tuning the packaged model on the sample for {r['seconds']:.0f} s: "
                  f"{r['steps']} steps (batch {r['batch']}), validation F1 "
                  f"{r['start_val_f1']} -> {r['best_val_f1']} on {r['val_cells']} cells")
    finally:
        if baseline is not None:
            baseline.close()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
