"""Benchmark of the training engine on the CPU (or another device).

Prints, measured in one run:

* training steps/s of the paper's valid U-Net (depth 4) with 16 and with 64 base
  channels, on 256×256 target patches (444×444 network input), batch 4, and
  the share of a step spent making the batch (reading patches, augmenting on
  the device, computing targets and weight maps from the warped labels);
* a learning curve: instance F1 (IoU 0.5) on held-out synthetic images of
  touching nuclei against training wall-clock time, training the default new
  model from scratch with the default settings (or those given).

Usage::

    python benchmarks/bench_training.py                 # ~5 minutes on 2 cores
    python benchmarks/bench_training.py --quick         # smoke test, ~1 minute
    python benchmarks/bench_training.py --skip-speed --seconds 300 --optimizer sgd
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from napari_unet.core import training
from napari_unet.core.decode import probabilities_to_labels
from napari_unet.core.metrics import match_planes
from napari_unet.core.synthetic import make_sample
from napari_unet.core.tiling import predict_tiled
from napari_unet.core.training import DEFAULT_MODEL_CONFIG, iter_train, new_model


def nuclei(seeds, size):
    pairs = [make_sample("nuclei", (size, size), seed=int(s), touching=0.8, density=0.35)
             for s in seeds]
    return [p[0] for p in pairs], [p[1] for p in pairs]


# ------------------------------------------------------------------ step speed
def step_speed(base: int, patch: int, batch: int, steps: int, device: str) -> dict:
    """Seconds per step and the share of it spent making the batch."""
    images, labels = nuclei(range(2), 512)
    model = new_model(base_channels=base)
    run = iter_train(images, labels, model, patch_shape=patch, batch_size=batch,
                     validation=0, device=device, seed=0, max_steps=10**9)
    trainer = run._trainer  # the parts of one step, timed apart
    planes, _ = trainer._prepare()
    probs = np.array([p.n_train for p in planes], float)
    probs /= probs.sum()
    rng = np.random.default_rng(0)
    dev = trainer.device
    net = trainer.model.to(dev).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    t_batch = t_step = 0.0
    for k in range(steps + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        x, target, weight = trainer._batch(planes, probs, batch, (patch, patch), rng)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        trainer._step(net, opt, None, x, target, weight, k, False)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if k:
            t_batch += t1 - t0
            t_step += t2 - t1
    # the batch without augmentation, to show what augmentation costs
    trainer.opts["augment"] = type(trainer.opts["augment"]).off()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer._batch(planes, probs, batch, (patch, patch), rng)
    t_plain = (time.perf_counter() - t0) / steps
    total = (t_batch + t_step) / steps
    return {
        "base": base, "in": list(x.shape[-2:]), "out": list(target.shape[-2:]),
        "s_per_step": total, "steps_per_s": 1 / total, "batch_s": t_batch / steps,
        "batch_share": t_batch / (t_batch + t_step), "batch_no_aug_s": t_plain,
        "net_s": t_step / steps,
        "out_mpx_per_s": batch * patch * patch / total / 1e6,
    }


# -------------------------------------------------------------- learning curve
def evaluate(model, images, labels, device) -> tuple[float, float]:
    preds = []
    for image in images:
        probs = predict_tiled(model, image, device=device)
        preds.append(probabilities_to_labels(probs, model.classes, grow=2))
    r = match_planes(labels, preds, 0.5)
    return r.f1, r.average_precision


def learning_curve(seconds: float, n_points: int, device: str, options: dict,
                   n_train: int, size: int, seed: int = 0) -> list[dict]:
    images, labels = nuclei(range(n_train), size)
    test_images, test_labels = nuclei(range(1000, 1004), 256)
    model = new_model(target_mode=options.get("target_mode", "binary"),
                      base_channels=options.pop("base", DEFAULT_MODEL_CONFIG["base_channels"]),
                      dropout=options.pop("dropout", DEFAULT_MODEL_CONFIG["dropout"]))
    run = iter_train(images, labels, model, max_time=seconds, validation=0, device=device,
                     seed=seed, **options)
    marks = list(np.linspace(seconds / n_points, seconds, n_points))
    snaps = []
    for p in run:
        if p.phase == "train" and marks and p.elapsed >= marks[0]:
            snaps.append((p.elapsed, p.step, p.loss, run.best_model()))
            marks.pop(0)
    result = run.result
    if not snaps or snaps[-1][1] != result.steps:
        last = result.history[-1]
        snaps.append((last.elapsed, last.step, last.loss, result.model))
    rows = []
    for elapsed, step, loss, snap in snaps:
        f1, ap = evaluate(snap, test_images, test_labels, device)
        rows.append({"seconds": elapsed, "step": step, "loss": loss, "f1": f1, "ap": ap})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller, for a smoke test")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seconds", type=float, help="learning-curve training time "
                        "(default 180, --quick 30)")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-curve", action="store_true")
    parser.add_argument("--optimizer", help="adam or sgd (default: the engine's)")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--base", type=int, help="base channels of the trained model")
    parser.add_argument("--patch", type=int, help="training patch (default: the engine's)")
    parser.add_argument("--batch", type=int, help="batch size (default: the engine's)")
    parser.add_argument("--loss", help="weighted_ce or weighted_ce+dice")
    parser.add_argument("--target-mode", help="binary (carved gaps, the default) or boundary "
                        "(background / interior / boundary classes)")
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--dropout", type=float, help="dropout of the trained model")
    parser.add_argument("--constant-lr", action="store_true",
                        help="no warm-up and no decay of the learning rate")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.constant_lr:
        training.WARMUP_STEPS, training.FINAL_LR_FRACTION = 1, 1.0
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    out: dict = {}
    if not args.skip_speed:
        patch, batch, steps = (128, 2, 1) if args.quick else (256, 4, 3)
        print(f"\nTraining step speed: valid U-Net depth 4, target patch {patch}x{patch}, "
              f"batch {batch}")
        print(f"{'base':>5} {'input':>9} {'s/step':>8} {'steps/s':>8} {'out Mpx/s':>10} "
              f"{'batch s':>8} {'share':>6} {'no-aug s':>9}")
        out["speed"] = []
        for base in (16, 64):
            r = step_speed(base, patch, batch, 1 if base == 64 else steps, args.device)
            out["speed"].append(r)
            print(f"{base:>5} {r['in'][0]:>4}x{r['in'][1]:<4} {r['s_per_step']:>8.2f} "
                  f"{r['steps_per_s']:>8.3f} {r['out_mpx_per_s']:>10.3f} {r['batch_s']:>8.3f} "
                  f"{100 * r['batch_share']:>5.1f}% {r['batch_no_aug_s']:>9.3f}")
            sys.stdout.flush()
    if not args.skip_curve:
        seconds = args.seconds or (30.0 if args.quick else 180.0)
        options = {k: v for k, v in {
            "optimizer": args.optimizer, "lr": args.lr, "base": args.base,
            "patch_shape": args.patch, "batch_size": args.batch, "loss": args.loss,
            "dropout": args.dropout, "target_mode": args.target_mode,
        }.items() if v is not None}
        if args.no_augment:
            options["augment"] = False
        n_train, size = (2, 192) if args.quick else (6, 256)
        print(f"\nLearning curve: from scratch on {n_train} synthetic {size}x{size} images of "
              f"touching nuclei, F1 (IoU 0.5) on 4 held-out 256x256 images; "
              f"{json.dumps(options) if options else 'default settings'}")
        rows = learning_curve(seconds, 3 if args.quick else 6, args.device, dict(options),
                              n_train, size, args.seed)
        out["curve"] = rows
        print(f"{'seconds':>8} {'steps':>6} {'loss':>7} {'F1':>6} {'AP':>6}")
        for r in rows:
            print(f"{r['seconds']:>8.0f} {r['step']:>6} {r['loss']:>7.3f} {r['f1']:>6.3f} "
                  f"{r['ap']:>6.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
