"""The recipe that makes napari-unet's packaged default model, and its evaluation.

No weights or data sets can be downloaded, so the default model is trained on
the project's own synthetic microscopy (:mod:`napari_unet.core.synthetic`): a
fixed, seeded pool of fluorescence nuclei, membrane-outlined cells (EM-like and
membrane stain) and phase-contrast cells, in several dtypes and dynamic ranges.
Everything is determined by ``--seed``; on the same machine and thread count the
same command gives the same weights.

Train (writes the model file, with the recipe, hardware and time in its metadata)::

    python scripts/pretrain.py train --steps 3000 -o src/napari_unet/models/default.pt

Evaluate any model on held-out synthetic images of every kind, including
variations that were not in the training pool (sizes, noise, contrast)::

    python scripts/pretrain.py evaluate src/napari_unet/models/default.pt

Fine-tuning check (a few dozen labelled cells of one new image, then F1 on the
rest of it; compares out of the box, fine-tuned, and a new network)::

    python scripts/pretrain.py finetune src/napari_unet/models/default.pt --seconds 120

The held-out sets themselves (the same seeds as ``evaluate``): their statistics
(nuclei, touching share, contact length, coverage) and a digest that shows they
are reproduced exactly, optionally written as TIFF images and labels::

    python scripts/pretrain.py heldout -o /tmp/heldout
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_unet import iter_train, load_model, metrics, save_model, segment
from napari_unet.core.cellsize import median_cell_diameter
from napari_unet.core.synthetic import make_sample
from napari_unet.core.training import new_model

#: The training pool: (kind, share of the images, generator arguments drawn per image).
POOL_SHARES = {"nuclei": 1.0, "membranes": 0.0, "phase": 0.0}  # --shares changes it
POOL_SHAPE = (384, 384)
DTYPES = ("uint8", "uint16", "float32")

_KIND_TEXT = {
    "nuclei": "widefield fluorescence nuclei (radius 4-26 px, scattered or in colonies packed "
              "so that they flatten against each other, mitotic figures, chromatin texture, "
              "nucleoli, dim next to bright, debris, defocus varying across the field, uneven "
              "background, vignetting, Poisson-Gaussian camera noise)",
    "membranes": "packed cells outlined by membranes (EM-like dark membranes or membrane-stain "
                 "bright outlines, cell radius 8-24 px)",
    "phase": "phase-contrast-like cells with halos (radius 8-20 px)",
}


def trained_on(shares: dict[str, float]) -> str:
    """The plain-words description of the pool stored in the model's metadata."""
    kinds = [f"{round(100 * v)}% {_KIND_TEXT[k]}" for k, v in shares.items() if v > 0]
    return ("Synthetic microscopy made by napari_unet.core.synthetic only (no real images): "
            + "; ".join(kinds) + "; uint8, uint16 (8-, 12- and 16-bit data) and float32 "
            "images of 384x384 px; "
            "random elastic, flip, rotation, scale and gray-value augmentation.")


def _hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    threads = torch.get_num_threads()
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA), host CPU {cpu}"
    return f"CPU only: {cpu}, {threads} torch threads ({os.cpu_count()} logical cores)"


def training_pool(n_images: int, seed: int, shares: dict[str, float] | None = None
                  ) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    """The seeded pool of synthetic training images and labels."""
    shares = POOL_SHARES if shares is None else shares
    root = np.random.SeedSequence(seed)
    g = np.random.default_rng(root.spawn(1)[0])
    kinds = [k for k in shares if shares[k] > 0]
    counts = {k: int(round(shares[k] * n_images)) for k in kinds}
    images, labels = [], []
    children = root.spawn(sum(counts.values()))
    i = 0
    for kind in kinds:
        for _ in range(counts[kind]):
            rng = np.random.default_rng(children[i])
            i += 1
            kw: dict[str, Any] = {"dtype": DTYPES[int(g.integers(len(DTYPES)))]}
            if kind == "nuclei":
                kw["radius"] = (4.0, 26.0)
            image, lab = make_sample(kind, POOL_SHAPE, seed=rng, **kw)
            images.append(image)
            labels.append(lab)
    # interleave kinds so that the validation split (the last planes) holds every kind
    order = np.random.default_rng(seed + 1).permutation(len(images))
    return [images[j] for j in order], [labels[j] for j in order], counts


def pool_cell_diameter(labels: list[np.ndarray]) -> float:
    """The median over the pool's images of each image's median cell diameter (pixels)."""
    return round(float(np.median([median_cell_diameter(lab) for lab in labels if lab.any()])), 1)


def description(shares: dict[str, float]) -> str:
    """What the model is for, in one sentence (stored in its metadata)."""
    what = {"nuclei": "nuclei in 2-D fluorescence images", "membranes": "membrane-outlined cells",
            "phase": "phase-contrast cells"}
    kinds = " and ".join(what[k] for k, v in shares.items() if v > 0)
    return (f"napari-unet default U-Net (depth 4, 16 base channels, valid convolutions) for "
            f"{kinds}; classes background / cell, trained with 1-px gaps carved between "
            "touching cells.")


def recipe(a: argparse.Namespace) -> str:
    """The full command that reproduces the model (every option spelled out)."""
    shares = " ".join(a.shares) if a.shares else "nuclei=1"
    return (f"python scripts/pretrain.py train --steps {a.steps} --images {a.images} "
            f"--shares {shares} --patch {a.patch} --batch {a.batch} --lr {a.lr} "
            f"--validate-every {a.validate_every} --seed {a.seed} --device {a.device}")


# --------------------------------------------------------------------- held-out sets

#: Held-out test conditions per kind: name, generator arguments, whether the
#: condition lies outside the training distribution. "packed clusters" are colonies
#: pressed together: nearly every nucleus touches others, flattened along contacts
#: longer than its radius (see the ``heldout`` command for the figures).
HELDOUT: dict[str, list[tuple[str, dict[str, Any], bool]]] = {
    "nuclei": [
        ("as in training", {"radius": (4.0, 26.0)}, False),
        ("large nuclei r 30-40", {"radius": (30.0, 40.0)}, True),
        ("tiny nuclei r 3-4", {"radius": (3.0, 4.0)}, True),
        ("very noisy (5 photons)", {"photons": 5.0}, True),
        ("uint16, strong background", {"dtype": "uint16", "photons": 400.0,
                                       "background": 0.5}, True),
        ("packed clusters", {"layout": "clustered", "touching": 1.0, "density": 0.5}, True),
    ],
    "membranes": [
        ("as in training", {}, False),
        ("large cells r 28-40", {"radius": (28.0, 40.0)}, True),
        ("noisy", {"photons": 3.0}, True),
    ],
    "phase": [
        ("as in training", {}, False),
        ("large cells r 24-32", {"radius": (24.0, 32.0)}, True),
        ("noisy", {"noise": 0.25}, True),
    ],
}


HELDOUT_SHAPE = (384, 384)


def heldout_images(kind: str, kw: dict[str, Any], n: int, seed: int,
                   shape: tuple[int, int] = HELDOUT_SHAPE
                   ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``n`` held-out samples: seeds far from the training pool's stream."""
    root = np.random.SeedSequence([seed, 10_000])
    for child in root.spawn(n):
        yield make_sample(kind, shape, seed=np.random.default_rng(child), **kw)


def heldout_stats(labels: list[np.ndarray]) -> dict[str, float]:
    """Packing of a held-out set: nuclei per image, share of nuclei touching another,
    median contact length of a touching nucleus over its equivalent radius, coverage."""
    n = touching = 0
    ratios: list[float] = []
    cover = 0.0
    for lab in labels:
        m = int(lab.max()) + 1
        length = np.zeros(m)
        for a, b in ((lab[1:], lab[:-1]), (lab[:, 1:], lab[:, :-1])):
            sel = (a != b) & (a > 0) & (b > 0)
            length += np.bincount(a[sel], minlength=m) + np.bincount(b[sel], minlength=m)
        radius = np.sqrt(np.bincount(lab.ravel(), minlength=m) / np.pi)
        present = radius[1:] > 0
        n += int(present.sum())
        hit = (length[1:] > 0) & present
        touching += int(hit.sum())
        ratios += list(length[1:][hit] / radius[1:][hit])
        cover += float((lab > 0).mean())
    return {"nuclei per image": n / max(len(labels), 1),
            "touching %": 100 * touching / max(n, 1),
            "contact / radius": float(np.median(ratios)) if ratios else 0.0,
            "coverage %": 100 * cover / max(len(labels), 1)}


def evaluate(model: Any, n: int = 6, seed: int = 7) -> dict[str, dict[str, float]]:
    """Instance F1 at IoU 0.5 (pooled over ``n`` images) per kind and condition."""
    out: dict[str, dict[str, float]] = {}
    for kind, conditions in HELDOUT.items():
        out[kind] = {}
        for name, kw, _novel in conditions:
            tp = fp = fn = 0
            for image, truth in heldout_images(kind, kw, n, seed):
                pred = segment(image, model)
                r = metrics.match(truth, pred, 0.5)
                tp, fp, fn = tp + r.tp, fp + r.fp, fn + r.fn
            out[kind][name] = 2 * tp / max(2 * tp + fp + fn, 1)
    return out


def _print_eval(res: dict[str, dict[str, float]]) -> None:
    print(f"{'kind':10s} {'condition':32s} {'in training?':>12s} {'F1@0.5':>7s}")
    for kind, conds in res.items():
        novel = {name: nov for name, _, nov in HELDOUT[kind]}
        for name, f1 in conds.items():
            print(f"{kind:10s} {name:32s} {'no' if novel[name] else 'yes':>12s} {f1:7.3f}")


# ----------------------------------------------------------------------------- commands


def cmd_train(a: argparse.Namespace) -> int:
    torch.manual_seed(a.seed)
    t0 = time.perf_counter()
    shares = dict(POOL_SHARES)
    for item in a.shares or []:
        kind, _, value = item.partition("=")
        if kind not in shares:
            raise SystemExit(f"--shares: unknown kind {kind!r}; use {tuple(shares)}")
        shares[kind] = float(value)
    total = sum(shares.values())
    shares = {k: v / total for k, v in shares.items()}
    images, labels, counts = training_pool(a.images, a.seed, shares)
    print(f"pool: {len(images)} images {counts} in {time.perf_counter() - t0:.1f} s", flush=True)
    model = new_model()
    start = time.perf_counter()
    gen = iter_train(
        images, labels, None if a.resume else model, max_steps=a.steps, patch_shape=a.patch,
        batch_size=a.batch, lr=a.lr, final_lr_fraction=0.05, validation=0.1,
        validate_every=a.validate_every, seed=a.seed, device=a.device,
        checkpoint_dir=a.checkpoint_dir, checkpoint_every=250, resume=a.resume,
    )
    last = 0.0
    for rec in gen:
        now = time.perf_counter()
        if rec.val_f1 is not None or now - last > 60:
            last = now
            print(f"{now - start:7.0f} s  step {rec.step}/{rec.total}  loss {rec.loss}  "
                  f"val F1 {rec.val_f1}", flush=True)
    result = gen.result
    seconds = time.perf_counter() - start
    best = result.model
    print(f"trained {result.steps} steps in {seconds:.0f} s; best val F1 {result.best_val_f1} "
          f"at step {result.best_step}", flush=True)
    t1 = time.perf_counter()
    heldout = evaluate(best, n=a.eval_images)
    _print_eval(heldout)
    meta = {
        "name": "default",
        "description": description(shares),
        "trained_on": trained_on(shares),
        "recipe": recipe(a),
        "hardware": _hardware(),
        "torch": torch.__version__,
        "pretraining_seconds": round(seconds, 1),
        "heldout_f1": {k: {c: round(v, 4) for c, v in d.items()} for k, d in heldout.items()},
        "heldout_eval_seconds": round(time.perf_counter() - t1, 1),
        # the cell size the model knows best: Segment layer's "cell diameter" rescales to it
        "cell_diameter": pool_cell_diameter(labels),
    }
    best.metadata["training"]["started_from"] = "new"  # a new network, not a model file
    path = save_model(best, a.output, weights_dtype="float16", **meta)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    model = load_model(a.model)
    t = time.perf_counter()
    res = evaluate(model, n=a.images, seed=a.seed)
    _print_eval(res)
    print(f"({time.perf_counter() - t:.0f} s, {a.images} images per condition, seed {a.seed})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


FINETUNE_CONDITIONS: list[tuple[str, dict[str, Any]]] = [
    ("nuclei as in training", {"radius": (4.0, 26.0)}),
    ("packed clusters", {"layout": "clustered", "touching": 1.0, "density": 0.5}),
]


def _annotated_rows(labels: np.ndarray, n_cells: int) -> int:
    """Smallest top band (rows) that holds ``n_cells`` whole cells."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    last_row = np.zeros(int(labels.max()) + 1, int)
    rows = np.nonzero(labels)[0]
    np.maximum.at(last_row, labels[labels > 0], rows)
    ends = np.sort(last_row[ids])
    return int(ends[min(n_cells, ends.size) - 1]) + 1


def cmd_finetune(a: argparse.Namespace) -> int:
    """Out of the box vs fine-tuned on a few dozen cells vs a new network, same budget."""
    pretrained = load_model(a.model)
    print(f"{'condition':28s} {'cells':>5s} {'test':>5s} {'out of box':>10s} {'fine-tuned':>10s} "
          f"{'new net':>8s}")
    print(f"(cells: labelled cells in the annotated top band; test: cells below it, where F1@0.5 "
          f"is measured; {a.seconds:.0f} s of training each)")
    for name, kw in FINETUNE_CONDITIONS:
        if a.only and name not in a.only:
            continue
        image, truth = next(heldout_images("nuclei", kw, 1, a.seed, (a.size, a.size)))
        n_all = np.count_nonzero(np.unique(truth))
        band = _annotated_rows(truth, min(a.cells, n_all // 3))  # leave most cells for testing
        inside = np.unique(truth[:band])
        inside = inside[inside > 0]
        labels = np.where(np.isin(truth, inside) & (np.arange(a.size)[:, None] < band), truth, 0)
        region = (0, 0, band, a.size)
        test = slice(band + 8, None)  # evaluate below the band

        def score(model: Any, image: np.ndarray = image, truth: np.ndarray = truth,
                  test: slice = test) -> float:
            return metrics.match(truth[test], segment(image, model)[test], 0.5).f1

        row = [score(pretrained)]
        for start in (pretrained, None):
            gen = iter_train(image, labels, start if start is not None else new_model(),
                             regions=[region], max_time=a.seconds, seed=a.seed)
            for _ in gen:
                pass
            row.append(score(gen.result.model))
        n_test = np.count_nonzero(np.unique(truth[test]))
        print(f"{name:28s} {inside.size:5d} {n_test:5d} {row[0]:10.3f} {row[1]:10.3f} "
              f"{row[2]:8.3f}", flush=True)
    return 0


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def cmd_heldout(a: argparse.Namespace) -> int:
    """Statistics and digests of the held-out sets; with -o, write them as TIFFs."""
    from napari_unet.io import write_image

    out = Path(a.output) if a.output else None
    partial = None
    if out is not None:
        if out.exists() and not a.overwrite:
            print(f"error: {out} exists; pass --overwrite to replace it", file=sys.stderr)
            return 2
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
    print(f"{'kind':10s} {'condition':28s} {'nuclei/img':>10s} {'touching %':>10s} "
          f"{'contact/r':>9s} {'cover %':>7s}  digest")
    for kind, conditions in HELDOUT.items():
        for name, kw, _novel in conditions:
            digest = hashlib.sha256()
            labels = []
            for i, (image, lab) in enumerate(heldout_images(kind, kw, a.images, a.seed)):
                digest.update(image.tobytes())
                digest.update(lab.tobytes())
                labels.append(lab)
                if partial is not None:
                    folder = partial / kind / _slug(name)
                    write_image(folder / f"image_{i:03d}.tif", image)
                    write_image(folder / f"labels_{i:03d}.tif", lab)
            st = heldout_stats(labels)
            print(f"{kind:10s} {name:28s} {st['nuclei per image']:10.0f} {st['touching %']:10.0f} "
                  f"{st['contact / radius']:9.2f} {st['coverage %']:7.0f}  "
                  f"{digest.hexdigest()[:12]}", flush=True)
    if out is not None and partial is not None:
        (partial / "README.txt").write_text(
            f"Held-out sets of scripts/pretrain.py: {a.images} images per condition, seed "
            f"{a.seed}, {HELDOUT_SHAPE[0]}x{HELDOUT_SHAPE[1]} px; image_NNN.tif with its exact "
            "labels labels_NNN.tif, one folder per kind and condition.\n")
        old = out.with_name(out.name + ".old")
        if out.exists():
            out.rename(old)
        partial.rename(out)
        shutil.rmtree(old, ignore_errors=True)
        print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the default model from synthetic data")
    t.add_argument("-o", "--output", default="src/napari_unet/models/default.pt")
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--images", type=int, default=200, help="size of the synthetic pool")
    t.add_argument("--shares", nargs="*", metavar="KIND=SHARE",
                   help="mix of kinds in the pool, e.g. nuclei=0.55 membranes=0.2 phase=0.25 "
                   "(default: nuclei only)")
    t.add_argument("--patch", type=int, default=192)
    t.add_argument("--batch", type=int, default=4)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--validate-every", type=int, default=500)
    t.add_argument("--seed", type=int, default=2015)
    t.add_argument("--device", default="auto")
    t.add_argument("--eval-images", type=int, default=6)
    t.add_argument("--checkpoint-dir", default=None)
    t.add_argument("--resume", default=None)
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("evaluate", help="F1 per kind on held-out synthetic images")
    e.add_argument("model")
    e.add_argument("--images", type=int, default=6)
    e.add_argument("--seed", type=int, default=7)
    e.add_argument("--json", default=None)
    e.set_defaults(func=cmd_evaluate)
    f = sub.add_parser("finetune", help="out of the box vs fine-tuned on a few dozen cells")
    f.add_argument("model")
    f.add_argument("--seconds", type=float, default=120.0)
    f.add_argument("--cells", type=int, default=36, help="labelled cells to fine-tune on")
    f.add_argument("--size", type=int, default=1024)
    f.add_argument("--seed", type=int, default=11)
    f.add_argument("--only", nargs="*", help="run only these conditions (by name)")
    f.set_defaults(func=cmd_finetune)
    h = sub.add_parser("heldout", help="statistics and digests of the held-out sets; with -o, "
                       "write them as TIFF images and labels")
    h.add_argument("-o", "--output", default=None, help="folder to write the sets to")
    h.add_argument("--images", type=int, default=6)
    h.add_argument("--seed", type=int, default=7)
    h.add_argument("--overwrite", action="store_true")
    h.set_defaults(func=cmd_heldout)
    a = p.parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    raise SystemExit(main())
