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

Cell size "auto" (segment's default: images whose cells come out far from the
model's size are tried rescaled) against the image as it is, on nuclei far from
the model's size, and how often the kept pass was the better one::

    python scripts/pretrain.py sizes src/napari_unet/models/default.pt

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

from napari_unet import (
    iter_train,
    load_model,
    metrics,
    predict_tiled,
    probabilities_to_labels,
    save_model,
    segment,
)
from napari_unet.core.augment import AugmentConfig
from napari_unet.core.cellsize import median_cell_diameter
from napari_unet.core.decode import MIN_SHARE, grow_cells
from napari_unet.core.split import SPLIT_DEPTH
from napari_unet.core.synthetic import make_sample
from napari_unet.core.training import new_model
from napari_unet.core.training.validate import is_better

#: The training pool: (kind, share of the images, generator arguments drawn per image).
POOL_SHARES = {"nuclei": 1.0, "membranes": 0.0, "phase": 0.0}  # --shares changes it
POOL_SHAPE = (384, 384)
DTYPES = ("uint8", "uint16", "float32")
#: Share of the nuclei images drawn as packed colonies (``--packed``); the others take every
#: generator default (scattered or clustered, touching 0-1, density 0.05-0.45).
PACKED_SHARE = 0.5
#: Ranges of the packed colonies: pressed together (touching), and dense.
PACKED_TOUCHING = (0.5, 1.0)
PACKED_DENSITY = (0.3, 0.5)
#: Zoom range and largest free rotation of the pretraining augmentation (``--scale``,
#: ``--rotation``); the other augmentations keep the engine's defaults.
PRETRAIN_SCALE = (0.7, 1.4)
PRETRAIN_ROTATION = 45.0
#: Nuclear radius range of the pool's nuclei images (``--radius``), and their photon range
#: (``--photons``; None: the generator's own, 10-3000 photons, log-uniform).
POOL_RADIUS = (4.0, 26.0)
POOL_PHOTONS: tuple[float, float] | None = None

_KIND_TEXT = {
    "nuclei": "widefield fluorescence nuclei (radius {radius} px, scattered or in colonies packed "
              "so that they flatten against each other, mitotic figures, chromatin texture, "
              "nucleoli, dim next to bright, debris, defocus varying across the field, uneven "
              "background, vignetting, Poisson-Gaussian camera noise{photons})",
    "membranes": "packed cells outlined by membranes (EM-like dark membranes or membrane-stain "
                 "bright outlines, cell radius 8-24 px)",
    "phase": "phase-contrast-like cells with halos (radius 8-20 px)",
}


def trained_on(shares: dict[str, float], packed: float = PACKED_SHARE,
               scale: tuple[float, float] = PRETRAIN_SCALE,
               radius: tuple[float, float] = POOL_RADIUS,
               photons: tuple[float, float] | None = POOL_PHOTONS) -> str:
    """The plain-words description of the pool stored in the model's metadata."""
    words = {"radius": f"{radius[0]:g}-{radius[1]:g}",
             "photons": "" if photons is None else
             f" at {photons[0]:g}-{photons[1]:g} photons per unit of brightness"}
    kinds = [f"{round(100 * v)}% {_KIND_TEXT[k].format(**words)}"
             for k, v in shares.items() if v > 0]
    extra = ""
    if shares.get("nuclei", 0) > 0 and packed > 0:
        extra = (f"; {round(100 * packed)}% of the nuclei images are packed colonies (touching "
                 f"{PACKED_TOUCHING[0]}-{PACKED_TOUCHING[1]}, density {PACKED_DENSITY[0]}-"
                 f"{PACKED_DENSITY[1]})")
    return ("Synthetic microscopy made by napari_unet.core.synthetic only (no real images): "
            + "; ".join(kinds) + extra + "; uint8, uint16 (8-, 12- and 16-bit data) and "
            "float32 images of 384x384 px; random elastic, flip, rotation, scale "
            f"({scale[0]}-{scale[1]}) and gray-value augmentation.")


def pretrain_augment(a: argparse.Namespace) -> AugmentConfig:
    """The augmentation of a pretraining run: the engine's, with a wider zoom and rotation."""
    return AugmentConfig(scale_range=tuple(a.scale), max_rotation=float(a.rotation))


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


def _pool_sample(job: tuple[str, Any, dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    kind, seed, kw = job
    return make_sample(kind, POOL_SHAPE, seed=np.random.default_rng(seed), **kw)


def training_pool(n_images: int, seed: int, shares: dict[str, float] | None = None,
                  packed: float = PACKED_SHARE, radius: tuple[float, float] = POOL_RADIUS,
                  photons: tuple[float, float] | None = POOL_PHOTONS
                  ) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    """The seeded pool of synthetic training images and labels.

    A share ``packed`` of the nuclei images are packed colonies (see
    :data:`PACKED_TOUCHING`, :data:`PACKED_DENSITY`); the others take every
    generator default. Nuclei images draw their typical radius in ``radius`` and,
    when ``photons`` is given, their photon count log-uniformly in it (else the
    generator's range); without ``photons`` the pool is the one earlier models had.
    """
    shares = POOL_SHARES if shares is None else shares
    root = np.random.SeedSequence(seed)
    g = np.random.default_rng(root.spawn(1)[0])
    kinds = [k for k in shares if shares[k] > 0]
    counts = {k: int(round(shares[k] * n_images)) for k in kinds}
    children = root.spawn(sum(counts.values()))
    jobs = []  # every random choice is drawn here, in order, so workers change nothing
    for kind in kinds:
        for _ in range(counts[kind]):
            kw: dict[str, Any] = {"dtype": DTYPES[int(g.integers(len(DTYPES)))]}
            if kind == "nuclei":
                kw["radius"] = tuple(float(r) for r in radius)
                if photons is not None:
                    kw["photons"] = float(np.exp(g.uniform(np.log(photons[0]),
                                                           np.log(photons[1]))))
                if g.random() < packed:
                    kw.update(layout="clustered", touching=float(g.uniform(*PACKED_TOUCHING)),
                              density=float(g.uniform(*PACKED_DENSITY)))
            jobs.append((kind, children[len(jobs)], kw))
    workers = min(len(jobs), max(1, (os.cpu_count() or 1) - 1))
    if workers > 2:  # a GPU machine's cores (the same images as one process makes)
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            pairs = list(pool.map(_pool_sample, jobs, chunksize=4))
    else:
        pairs = [_pool_sample(job) for job in jobs]
    images, labels = [p[0] for p in pairs], [p[1] for p in pairs]
    # interleave kinds so that the validation split (the last planes) holds every kind
    order = np.random.default_rng(seed + 1).permutation(len(images))
    return [images[j] for j in order], [labels[j] for j in order], counts


def pool_cell_diameter(labels: list[np.ndarray]) -> float:
    """The median over the pool's images of each image's median cell diameter (pixels)."""
    return round(float(np.median([median_cell_diameter(lab) for lab in labels if lab.any()])), 1)


def description(shares: dict[str, float], target_mode: str = "binary") -> str:
    """What the model is for, in one sentence (stored in its metadata)."""
    what = {"nuclei": "nuclei in 2-D fluorescence images", "membranes": "membrane-outlined cells",
            "phase": "phase-contrast cells"}
    kinds = " and ".join(what[k] for k, v in shares.items() if v > 0)
    classes = ("classes background / cell, trained with 1-px gaps carved between touching "
               "cells" if target_mode == "binary" else
               "classes background / interior / boundary (a 1-px boundary on each cell's rim "
               "and along its contacts)")
    return (f"napari-unet default U-Net (depth 4, 16 base channels, valid convolutions) for "
            f"{kinds}; {classes}.")


def recipe(a: argparse.Namespace) -> str:
    """The full command that reproduces the model (every option spelled out)."""
    shares = " ".join(a.shares) if a.shares else "nuclei=1"
    return (f"python scripts/pretrain.py train --steps {a.steps} --images {a.images} "
            f"--shares {shares} --packed {a.packed} --target-mode {a.target_mode} "
            f"--patch {a.patch} --batch {a.batch} --lr {a.lr} --scale {a.scale[0]} {a.scale[1]} "
            f"--rotation {a.rotation} --validate-every {a.validate_every} --seed {a.seed} "
            f"--threads {a.threads} --device {a.device}"
            + (f" --radius {a.radius[0]:g} {a.radius[1]:g}"
               if tuple(getattr(a, "radius", POOL_RADIUS)) != POOL_RADIUS else "")
            + (f" --photons {a.photons[0]:g} {a.photons[1]:g}"
               if getattr(a, "photons", None) else "")
            + (f" --max-time {a.max_time:g}" if getattr(a, "max_time", None) else "")
            + (f" --start {a.start}" if getattr(a, "start", None) else ""))


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


# ----------------------------------------------------------------------------- decoding

#: How class probabilities become cells in :func:`evaluate`. ``"grow"`` is napari-unet's
#: decoding (:func:`napari_unet.probabilities_to_labels`, what ``segment`` does today):
#: components of the cell class grown back over the carved gaps, or, for three classes,
#: interior components grown into the boundary class. ``"watershed"`` (three classes only)
#: is :func:`seeded_watershed`. ``"hysteresis"`` (two classes) is :func:`hysteresis_cells`.
#: ``"grow"`` includes segment's cutting of merged nuclei (:mod:`napari_unet.core.split`)
#: at depth :data:`SPLIT` (``evaluate --split``; 0: components and growing only).
DECODERS = ("grow", "watershed", "hysteresis")
SPLIT = SPLIT_DEPTH
#: Seed probability of the ``"hysteresis"`` decoder (``evaluate --seed-threshold``).
HYSTERESIS_SEED = 0.9
#: Cell probability threshold of the ``"grow"`` decoder (segment's default; ``evaluate
#: --threshold`` tries others).
GROW_THRESHOLD = 0.5
#: Share of the median cell size under which the ``"grow"`` decoder drops a cell away from
#: the image border (segment's default; ``evaluate --min-share`` tries others).
MIN_SHARE_EVAL = MIN_SHARE


def drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """``labels`` without the objects under ``min_size`` pixels, renumbered from 1 (int32)."""
    sizes = np.bincount(labels.ravel())
    keep = sizes >= max(int(min_size), 1)
    keep[0] = False
    relabel = np.zeros(sizes.size, np.int32)
    relabel[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return relabel[labels]


def seeded_watershed(probabilities: np.ndarray, classes: tuple[str, ...], *,
                     threshold: float = 0.5, min_size: int = 16) -> np.ndarray:
    """Cells of a three-class model (background / interior / boundary) by a seeded watershed.

    A prototype for napari-unet's decoding, kept here until it moves into the core:

    1. **Seeds**: 4-connected components of ``interior >= threshold``.
    2. **Foreground**: pixels whose background probability is at most ``1 - threshold``
       (interior and boundary together are at least ``threshold``).
    3. **Flooding**: a watershed of the foreground from the seeds on the relief
       ``1 - interior``, so that touching cells meet where the interior probability is
       lowest (on the predicted boundary between them), however wide it is.
    4. Foreground components that hold no seed (a dim nucleus whose interior stayed
       under the threshold) become cells of their own.
    5. Cells smaller than ``min_size`` pixels are dropped.

    ``probabilities`` is ``(n_classes, row, col)``; returns int32 labels numbered from 1.
    """
    from skimage.measure import label as cc_label
    from skimage.segmentation import watershed

    names = [str(c).lower() for c in classes]
    if "interior" not in names or "background" not in names:
        raise ValueError(f"seeded_watershed needs background and interior classes, not {classes}")
    interior = np.asarray(probabilities[names.index("interior")], np.float32)
    foreground = np.asarray(probabilities[names.index("background")]) <= 1 - threshold
    seeds = cc_label(interior >= threshold, connectivity=1)
    foreground |= seeds > 0
    labels = watershed(1 - interior, markers=seeds, mask=foreground, connectivity=1)
    rest = cc_label(foreground & (labels == 0), connectivity=1)
    labels = np.where(rest > 0, rest + labels.max(), labels)
    return drop_small(labels, min_size)


def hysteresis_cells(probabilities: np.ndarray, classes: tuple[str, ...], *,
                     seed_threshold: float = HYSTERESIS_SEED, threshold: float = 0.5,
                     min_size: int = 16, grow: int = 4) -> np.ndarray:
    """Cells of a two-class model from confident seeds (a prototype, not segment's rule).

    Seeds are the components of ``cell >= seed_threshold`` (of at least ``min_size // 2``
    pixels), so that a thin, less confident bridge between touching nuclei does not join
    them; each seed is then grown over the pixels of ``cell >= threshold`` within
    ``grow·√2`` pixels (napari-unet's bounded growth, the nearest seed wins).
    Returns int32 labels numbered from 1.
    """
    from skimage.measure import label as cc_label

    names = [str(c).lower() for c in classes]
    cell = np.asarray(probabilities[names.index("cell") if "cell" in names else -1])
    seeds = drop_small(cc_label(cell >= seed_threshold, connectivity=1), int(min_size) // 2)
    labels = grow_cells(seeds, (cell >= threshold) | (seeds > 0), grow)
    return drop_small(labels, min_size)


def decode(probabilities: np.ndarray, model: Any, decoder: str = "grow") -> np.ndarray:
    """Labels of one plane's probabilities with one of :data:`DECODERS` (segment's defaults:
    threshold 0.5, smallest cell 16 px, grow by the training gap plus one, cut merged nuclei
    at depth :data:`SPLIT`)."""
    if decoder == "grow":
        grow = int(model.metadata.get("target", {}).get("gap", 1)) + 1
        return probabilities_to_labels(probabilities, model.classes, threshold=GROW_THRESHOLD,
                                       min_size=16, grow=grow, split=SPLIT,
                                       min_share=MIN_SHARE_EVAL)
    if decoder == "watershed":
        return seeded_watershed(probabilities, model.classes, threshold=0.5, min_size=16)
    if decoder == "hysteresis":
        return hysteresis_cells(probabilities, model.classes, seed_threshold=HYSTERESIS_SEED)
    raise ValueError(f"decoder must be one of {DECODERS}, not {decoder!r}")


def segment_with(image: np.ndarray, model: Any, decoder: str, probs: Any = None
                 ) -> tuple[np.ndarray, Any]:
    """Labels of an image by one of :data:`DECODERS`, and its tiled prediction (``probs``,
    made once and passed on to the next decoder). "grow" is what
    :func:`napari_unet.segment` gives (its defaults, cell size included:
    :func:`~napari_unet.core.cellsize.iter_segment_sized`; the threshold and the cut's
    depth are ``evaluate``'s)."""
    if decoder == "grow":  # evaluate's --threshold and --split, else segment's defaults
        return segment(image, model, threshold=GROW_THRESHOLD, min_size=16, split=SPLIT,
                       min_share=MIN_SHARE_EVAL), probs
    probs = predict_tiled(model, image) if probs is None else probs
    return decode(probs, model, decoder), probs


def heldout_f1(model: Any, decoders: tuple[str, ...] = ("grow",), n: int = 6, seed: int = 7,
               kinds: tuple[str, ...] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Instance F1 at IoU 0.5 (pooled over ``n`` images) per decoder, kind and condition;
    each image is segmented by :func:`segment_with`."""
    out: dict[str, dict[str, dict[str, float]]] = {d: {} for d in decoders}
    for kind, conditions in HELDOUT.items():
        if kinds is not None and kind not in kinds:
            continue
        for name, kw, _novel in conditions:
            counts = {d: [0, 0, 0] for d in decoders}
            for image, truth in heldout_images(kind, kw, n, seed):
                probs = None
                for d in decoders:
                    labels, probs = segment_with(image, model, d, probs)
                    r = metrics.match(truth, labels, 0.5)
                    c = counts[d]
                    c[0], c[1], c[2] = c[0] + r.tp, c[1] + r.fp, c[2] + r.fn
            for d, (tp, fp, fn) in counts.items():
                out[d].setdefault(kind, {})[name] = 2 * tp / max(2 * tp + fp + fn, 1)
    return out


def evaluate(model: Any, n: int = 6, seed: int = 7, decoder: str = "grow",
             kinds: tuple[str, ...] | None = None) -> dict[str, dict[str, float]]:
    """Instance F1 at IoU 0.5 (pooled over ``n`` images) per kind and condition."""
    return heldout_f1(model, (decoder,), n, seed, kinds)[decoder]


def _print_eval(res: dict[str, dict[str, float]]) -> None:
    print(f"{'kind':10s} {'condition':32s} {'in training?':>12s} {'F1@0.5':>7s}")
    for kind, conds in res.items():
        novel = {name: nov for name, _, nov in HELDOUT[kind]}
        for name, f1 in conds.items():
            print(f"{kind:10s} {name:32s} {'no' if novel[name] else 'yes':>12s} {f1:7.3f}")


# ----------------------------------------------------------------------------- commands


def _shares(a: argparse.Namespace) -> dict[str, float]:
    shares = dict(POOL_SHARES)
    for item in a.shares or []:
        kind, _, value = item.partition("=")
        if kind not in shares:
            raise SystemExit(f"--shares: unknown kind {kind!r}; use {tuple(shares)}")
        shares[kind] = float(value)
    total = sum(shares.values())
    return {k: v / total for k, v in shares.items()}


def _pool_ranges(a: argparse.Namespace
                 ) -> tuple[tuple[float, float], tuple[float, float] | None]:
    """The pool's radius and photon ranges (``--radius``, ``--photons``) as tuples."""
    return tuple(a.radius), None if a.photons is None else tuple(a.photons)


def _set_threads(a: argparse.Namespace) -> None:
    if getattr(a, "threads", 0):
        torch.set_num_threads(int(a.threads))
    a.threads = torch.get_num_threads()


def pretrain(a: argparse.Namespace, images: list[np.ndarray], labels: list[np.ndarray],
             checkpoint_dir: str | Path | None, resume: str | Path | None,
             start: Any = None) -> tuple[Any, Any]:
    """One pretraining run of the recipe in ``a``, from ``start`` (a model of an earlier
    stage) or a new network: (the best model, the TrainResult)."""
    torch.manual_seed(a.seed)
    gen = iter_train(
        images, labels,
        None if resume else (start if start is not None else new_model(a.target_mode)),
        max_steps=a.steps,
        max_time=getattr(a, "max_time", None),
        patch_shape=a.patch, batch_size=a.batch, lr=a.lr, final_lr_fraction=0.05,
        validation=0.1, validate_every=a.validate_every, seed=a.seed, device=a.device,
        checkpoint_dir=checkpoint_dir, checkpoint_every=250, resume=resume,
        target_mode=a.target_mode, augment=pretrain_augment(a),
    )
    start, last = time.perf_counter(), 0.0
    for rec in gen:
        now = time.perf_counter()
        if rec.val_f1 is not None or now - last > 60:
            last = now
            print(f"{now - start:7.0f} s  step {rec.step}/{rec.total}  loss {rec.loss}  "
                  f"val F1 {rec.val_f1}", flush=True)
    result = gen.result
    print(f"trained {result.steps} steps in {result.seconds:.0f} s (resumes included); best "
          f"val F1 {result.best_val_f1} at step {result.best_step}", flush=True)
    return result.model, result


def heldout_metadata(heldout: dict[str, dict[str, float]], eval_seconds: float
                     ) -> dict[str, Any]:
    """The held-out figures a model file records (:func:`model_metadata`)."""
    return {
        "heldout_f1": {k: {c: round(v, 4) for c, v in d.items()} for k, d in heldout.items()},
        "heldout_eval_seconds": round(eval_seconds, 1),
    }


def model_metadata(a: argparse.Namespace, result: Any, labels: list[np.ndarray],
                   heldout: dict[str, dict[str, float]], eval_seconds: float) -> dict[str, Any]:
    """What the model file records: what it is, the recipe, hardware, time and figures."""
    shares = _shares(a)
    return {
        "name": "default",
        "description": description(shares, a.target_mode),
        "trained_on": trained_on(shares, a.packed, tuple(a.scale), *_pool_ranges(a)),
        "recipe": recipe(a),
        "hardware": _hardware(),
        "torch": torch.__version__,
        "pretraining_seconds": round(result.seconds, 1),
        **heldout_metadata(heldout, eval_seconds),
        # the cell size the model knows best: Segment layer's "cell diameter" rescales to it
        "cell_diameter": pool_cell_diameter(labels),
        # nuclei touch as round objects: segment cuts the ones the network merged
        **({"split": SPLIT_DEPTH} if {k for k, v in shares.items() if v > 0} == {"nuclei"}
           else {}),
    }


def cmd_train(a: argparse.Namespace) -> int:
    _set_threads(a)
    t0 = time.perf_counter()
    images, labels, counts = training_pool(a.images, a.seed, _shares(a), a.packed,
                                           *_pool_ranges(a))
    print(f"pool: {len(images)} images {counts} in {time.perf_counter() - t0:.1f} s", flush=True)
    start = load_model(a.start) if a.start else None  # training works on a copy of it
    best, result = pretrain(a, images, labels, a.checkpoint_dir, a.resume, start)
    meta = model_metadata(a, result, labels, {}, 0.0)
    # scored as the file will segment: with the cell size and cut it records
    best.metadata.update({k: meta[k] for k in ("cell_diameter", "split") if k in meta})
    t1 = time.perf_counter()
    heldout = evaluate(best, n=a.eval_images)
    _print_eval(heldout)
    meta.update(heldout_metadata(heldout, time.perf_counter() - t1))
    if start is not None:  # pretraining continued: the earlier stage's recipe stays on record
        first = start.metadata
        meta["recipe"] += f"; continued from {first.get('recipe', a.start)}"
        meta["pretraining_seconds"] = round(
            result.seconds + float(first.get("pretraining_seconds", 0.0)), 1)
        meta["hardware"] = f"{meta['hardware']}; earlier stage: {first.get('hardware', '?')}"
    best.metadata["training"]["started_from"] = (
        "new" if not a.start else f"pretraining stage {Path(a.start).name}")
    path = save_model(best, a.output, weights_dtype="float16", **meta)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


#: The options of ``compare-targets``: (name, target mode, decoder).
TARGET_OPTIONS: list[tuple[str, str, str]] = [
    ("binary: 2 classes, carved 1-px gaps, components grown back", "binary", "grow"),
    ("boundary: 3 classes, interior components grown into the boundary", "boundary", "grow"),
    ("watershed: 3 classes, seeded watershed from the interior", "boundary", "watershed"),
]


def real_f1(model: Any, pairs: list[tuple[str, str]], decoders: tuple[str, ...]
            ) -> dict[str, float]:
    """F1@0.5 pooled over real annotated images (reported, never used to choose)."""
    from napari_unet.io import read_image

    counts = {d: [0, 0, 0] for d in decoders}
    for image_path, labels_path in pairs:
        image, truth = np.asarray(read_image(image_path)), np.asarray(read_image(labels_path))
        probs = None
        for d in decoders:
            labels, probs = segment_with(image, model, d, probs)
            r = metrics.match(truth, labels, 0.5)
            c = counts[d]
            c[0], c[1], c[2] = c[0] + r.tp, c[1] + r.fp, c[2] + r.fn
    return {d: 2 * tp / max(2 * tp + fp + fn, 1) for d, (tp, fp, fn) in counts.items()}


def cmd_compare(a: argparse.Namespace) -> int:
    """Binary targets vs three classes vs seeded watershed: same pool, seed and budget."""
    _set_threads(a)
    out = Path(a.output)
    modes = [m for m in ("binary", "boundary") if not a.only or m in a.only]
    pool: tuple | None = None
    models: dict[str, Any] = {}
    for mode in modes:
        folder = out / mode
        path = folder / "model.pt"
        if path.exists():
            models[mode] = load_model(path)
            print(f"{mode}: {path} (trained before)", flush=True)
            continue
        if a.evaluate_only:
            continue
        if pool is None:
            pool = training_pool(a.images, a.seed, _shares(a), a.packed, *_pool_ranges(a))
            print(f"pool: {len(pool[0])} images {pool[2]}", flush=True)
        a.target_mode = mode
        ckpt = folder / "ckpt"
        resume = ckpt if (ckpt / "last.ckpt").exists() else None
        print(f"== {mode}: training{' (resumed)' if resume else ''}", flush=True)
        best, result = pretrain(a, pool[0], pool[1], ckpt, resume)
        best.metadata["training"]["started_from"] = "new"
        meta = model_metadata(a, result, pool[1], {}, 0.0)
        meta["name"] = f"compare-{mode}"
        models[mode] = load_model(save_model(best, path, weights_dtype="float16", **meta))
    if a.train_only or not models:
        return 0
    rows = [(name, mode, dec) for name, mode, dec in TARGET_OPTIONS if mode in models]
    results: dict[str, dict[str, float]] = {}
    real: dict[str, float] = {}
    for mode, model in models.items():
        decs = tuple(dec for _, m, dec in rows if m == mode)
        res = heldout_f1(model, decs, a.eval_images, a.eval_seed, kinds=("nuclei",))
        for dec in decs:
            results[f"{mode}/{dec}"] = res[dec]["nuclei"]
        if a.real:
            for dec, f1 in real_f1(model, [tuple(a.real[i:i + 2]) for i in range(
                    0, len(a.real), 2)], decs).items():
                real[f"{mode}/{dec}"] = f1
    conditions = [name for name, _, _ in HELDOUT["nuclei"]]
    head = "| option | " + " | ".join(conditions) + " |" + (" real image |" if real else "")
    print(f"\nnuclei held-out sets ({a.eval_images} images of 384x384 per condition, seed "
          f"{a.eval_seed}), F1@0.5; {a.steps} steps of {a.batch}x{a.patch}^2 patches, pool "
          f"{a.images} images, seed {a.seed}")
    print(head)
    print("|" + "---|" * (len(conditions) + 1 + bool(real)))
    for name, mode, dec in rows:
        key = f"{mode}/{dec}"
        cells = " | ".join(f"{results[key][c]:.3f}" for c in conditions)
        print(f"| {name} | {cells} |" + (f" {real[key]:.3f} |" if real else ""))
    if a.json:
        Path(a.json).write_text(json.dumps({"heldout": results, "real": real}, indent=1))
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    global HYSTERESIS_SEED, GROW_THRESHOLD, SPLIT, MIN_SHARE_EVAL
    _set_threads(a)
    HYSTERESIS_SEED, GROW_THRESHOLD = a.seed_threshold, a.threshold
    SPLIT, MIN_SHARE_EVAL = a.split, a.min_share
    model = load_model(a.model)
    t = time.perf_counter()
    res = evaluate(model, n=a.images, seed=a.seed, decoder=a.decoder)
    _print_eval(res)
    print(f"({time.perf_counter() - t:.0f} s, {a.images} images per condition, seed {a.seed})")
    if a.real:
        pairs = list(zip(a.real[::2], a.real[1::2]))
        f1 = real_f1(model, pairs, (a.decoder,))[a.decoder]
        res["real"] = {"annotated images given": f1}
        print(f"real annotated images ({len(pairs)}): F1@0.5 {f1:.3f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


def cmd_rescore(a: argparse.Namespace) -> int:
    """Score a model file on the held-out sets as ``segment`` decodes today, and record the
    figures in the file (its recipe, weights and everything else unchanged)."""
    _set_threads(a)
    model = load_model(a.model)
    t = time.perf_counter()
    heldout = evaluate(model, n=a.eval_images)
    _print_eval(heldout)
    model.metadata.update(heldout_metadata(heldout, time.perf_counter() - t))
    path = save_model(model, a.output or a.model, weights_dtype="float16")
    print(f"wrote {path}: held-out figures of today's segment recorded")
    return 0


#: Nuclei far from the packaged model's size, noisy or not (``sizes``): name, generator
#: arguments, seeds.
SIZE_CONDITIONS: list[tuple[str, dict[str, Any], tuple[int, ...]]] = [
    ("radius 2.5-3 px", {"radius": (2.5, 3.0)}, (8,)),
    ("radius 3-4 px", {"radius": (3.0, 4.0)}, (7, 8, 11)),
    ("radius 4-5 px", {"radius": (4.0, 5.0)}, (8,)),
    ("radius 5-7 px", {"radius": (5.0, 7.0)}, (8,)),
    ("radius 7-10 px", {"radius": (7.0, 10.0)}, (8,)),
    ("radius 3-4 px, packed", {"radius": (3.0, 4.0), "layout": "clustered", "touching": 1.0,
                               "density": 0.5}, (8,)),
    ("radius 3-5 px, 10 photons", {"radius": (3.0, 5.0), "photons": 10.0}, (8,)),
    ("radius 4-6 px, 5 photons", {"radius": (4.0, 6.0), "photons": 5.0}, (8,)),
    ("3 photons", {"photons": 3.0}, (8,)),
    ("5 photons", {"photons": 5.0}, (8,)),
    ("radius 30-40 px", {"radius": (30.0, 40.0)}, (7, 8)),
    ("radius 40-55 px", {"radius": (40.0, 55.0)}, (7, 8)),
    ("radius 55-70 px", {"radius": (55.0, 70.0)}, (7, 8)),
]


def cmd_sizes(a: argparse.Namespace) -> int:
    """Cell size "auto" against the image as it is, and how often its choice was right."""
    from napari_unet.core import run_to_completion
    from napari_unet.core.cellsize import auto_scale, iter_segment_sized, model_cell_diameter

    _set_threads(a)
    model = load_model(a.model)
    reference = model_cell_diameter(model)
    print(f"{'nuclei':28s} {'seed':>4s} {'as is':>6s} {'auto':>6s}  rescaled images")
    tried = right = 0
    for name, kw, seeds in SIZE_CONDITIONS:
        for seed in seeds:
            counts = {k: [0, 0, 0] for k in ("as is", "auto")}
            rescaled = 0
            for image, truth in heldout_images("nuclei", kw, a.images, seed):
                as_is = segment(image, model, diameter=0)
                auto = run_to_completion(iter_segment_sized(image, model))
                for key, labels in (("as is", as_is), ("auto", auto.labels)):
                    r = metrics.match(truth, labels, 0.5)
                    c = counts[key]
                    c[0], c[1], c[2] = c[0] + r.tp, c[1] + r.fp, c[2] + r.fn
                factor = auto_scale(as_is, model)
                if factor == 1.0 or reference is None:
                    continue
                # the pass auto did not keep, to see whether it kept the better one
                other = as_is if auto.scale != 1.0 else segment(
                    image, model, diameter=reference / factor)
                f1_kept = metrics.match(truth, auto.labels, 0.5).f1
                tried += 1
                right += f1_kept >= metrics.match(truth, other, 0.5).f1
                rescaled += auto.scale != 1.0
            f1 = {k: 2 * tp / max(2 * tp + fp + fn, 1) for k, (tp, fp, fn) in counts.items()}
            print(f"{name:28s} {seed:4d} {f1['as is']:6.3f} {f1['auto']:6.3f}  {rescaled} of "
                  f"{a.images}", flush=True)
    print(f"images tried rescaled: {tried}; the kept pass was the better (or as good) in "
          f"{right}")
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


def finetune_case(kw: dict[str, Any], cells: int, seed: int, size: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, slice]:
    """One fine-tuning condition: the held-out image and its true labels, the labels of the
    painted top band (the cells that reach into it, labelled inside it; ``cells`` whole
    cells, at most a third of the image's, to leave most for scoring), the band's height,
    and the rows scored (below the band)."""
    image, truth = next(heldout_images("nuclei", kw, 1, seed, (size, size)))
    n_all = np.count_nonzero(np.unique(truth))
    band = _annotated_rows(truth, min(cells, n_all // 3))
    inside = np.unique(truth[:band])
    inside = inside[inside > 0]
    labels = np.where(np.isin(truth, inside) & (np.arange(size)[:, None] < band), truth, 0)
    return image, truth, labels, band, slice(band + 8, None)


def keep_by_rule(checks: list[tuple[int, float, float, float]], cells: int | None,
                 fine_tuning: bool) -> tuple[int, float, float, float]:
    """The check a run keeps under the engine's rule (:func:`is_better`), from the
    ``(step, val F1, val loss, test F1)`` of every check, the start's first."""
    kept = checks[0]
    for c in checks[1:]:
        if is_better(c[1], c[2], kept[1], kept[2], cells, fine_tuning=fine_tuning):
            kept = c
    return kept


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
        image, truth, labels, band, test = finetune_case(kw, a.cells, a.seed, a.size)
        region = (0, 0, band, a.size)

        def score(model: Any, image: np.ndarray = image, truth: np.ndarray = truth,
                  test: slice = test) -> float:
            return metrics.match(truth[test], segment(image, model)[test], 0.5).f1

        row, kept, checks = [score(pretrained)], [], []
        ft_cells: int | None = None
        for start in (pretrained, None):
            if start is None and a.trajectory:
                row.append(float("nan"))
                kept.append("not trained (--trajectory)")
                break
            gen = iter_train(image, labels, start if start is not None else new_model(),
                             regions=[region], max_time=a.seconds, seed=a.seed,
                             lr=a.lr if start is not None else None,
                             final_lr_fraction=a.final_lr if start is not None else None)
            for rec in gen:
                if a.trajectory and rec.val_f1 is not None and rec.phase == "train":
                    # the weights just checked (no step runs before the next record)
                    checks.append((rec.step, rec.val_f1, rec.val_loss, gen.current_model()))
            row.append(score(gen.result.model))
            r = gen.result
            if start is not None:
                ft_cells = r.val_cells  # the fine-tuned run's held-out cells
            start_f1 = "-" if r.start_val_f1 is None else f"{r.start_val_f1:.2f}"
            kept.append(f"step {r.best_step}/{r.steps}" + (
                "" if r.best_val_f1 is None else f" (val F1 {r.best_val_f1:.2f} on "
                f"{r.val_cells} cells, start {start_f1})"))
        n_painted = np.count_nonzero(np.unique(labels))
        n_test = np.count_nonzero(np.unique(truth[test]))
        print(f"{name:28s} {n_painted:5d} {n_test:5d} {row[0]:10.3f} {row[1]:10.3f} "
              f"{row[2]:8.3f}   kept: fine-tuned {kept[0]}; new net {kept[1]}", flush=True)
        if a.trajectory and checks:
            scored = [(step, vf, vl, score(m)) for step, vf, vl, m in checks]
            for step, vf, vl, tf in scored:
                print(f"    check at step {step:4d}: val F1 {vf:.3f}  val loss {vl:.4f}  "
                      f"test F1 {tf:.3f}")
            by_f1 = keep_by_rule(scored, ft_cells, fine_tuning=False)
            by_rule = keep_by_rule(scored, ft_cells, fine_tuning=True)
            print(f"    out of the box {row[0]:.3f}; kept by the highest F1: step {by_f1[0]} "
                  f"(test {by_f1[3]:.3f}); kept by the rule: step {by_rule[0]} (test "
                  f"{by_rule[3]:.3f}); best check {max(c[3] for c in scored):.3f}", flush=True)
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


def _recipe_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--packed", type=float, default=PACKED_SHARE,
                   help="share of the nuclei images drawn as packed colonies")
    p.add_argument("--patch", type=int, default=192)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--scale", type=float, nargs=2, default=PRETRAIN_SCALE,
                   metavar=("LOW", "HIGH"), help="zoom range of the augmentation")
    p.add_argument("--rotation", type=float, default=PRETRAIN_ROTATION,
                   help="largest free rotation (degrees) on top of the 90-degree turns")
    p.add_argument("--radius", type=float, nargs=2, default=POOL_RADIUS, metavar=("LOW", "HIGH"),
                   help="nuclear radius range (pixels) of the pool's nuclei images")
    p.add_argument("--photons", type=float, nargs=2, default=POOL_PHOTONS,
                   metavar=("LOW", "HIGH"),
                   help="photon range (log-uniform) of the pool's nuclei images "
                        "(default: the generator's, 10-3000)")
    p.add_argument("--validate-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=2015)
    p.add_argument("--max-time", type=float, default=None,
                   help="stop after this many seconds of training even before --steps "
                        "(a cap for a lent GPU's time); the learning rate decays to its end "
                        "along whichever of --steps and --max-time comes first")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (0: torch's default); the same count gives the same "
                   "weights")


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
    _recipe_options(t)
    t.add_argument("--target-mode", choices=("binary", "boundary"), default="binary")
    t.add_argument("--eval-images", type=int, default=6)
    t.add_argument("--checkpoint-dir", default=None)
    t.add_argument("--resume", default=None)
    t.add_argument("--start", default=None, metavar="MODEL",
                   help="continue pretraining from this model file's weights (a second "
                   "stage, e.g. on the CPU with a decaying rate after a capped GPU run)")
    t.set_defaults(func=cmd_train)
    c = sub.add_parser("compare-targets", help="binary targets vs three classes vs seeded "
                       "watershed, trained with the same pool, seed and budget")
    c.add_argument("-o", "--output", required=True,
                   help="folder for the models (<mode>/model.pt) and their checkpoints; a "
                   "rerun resumes unfinished runs and reuses finished ones")
    c.add_argument("--steps", type=int, default=1500)
    c.add_argument("--images", type=int, default=300, help="size of the synthetic pool")
    c.add_argument("--shares", nargs="*", metavar="KIND=SHARE")
    _recipe_options(c)
    c.add_argument("--only", nargs="*", choices=("binary", "boundary"),
                   help="train (or evaluate) only these target modes")
    c.add_argument("--train-only", action="store_true", help="train, do not evaluate")
    c.add_argument("--evaluate-only", action="store_true",
                   help="evaluate the models trained before, train none")
    c.add_argument("--eval-images", type=int, default=6)
    c.add_argument("--eval-seed", type=int, default=7)
    c.add_argument("--real", nargs="*", default=[], metavar="PATH",
                   help="pairs of real annotated images (image labels ...): F1 reported too")
    c.add_argument("--json", default=None)
    c.set_defaults(func=cmd_compare, target_mode="binary", device="auto")
    e = sub.add_parser("evaluate", help="F1 per kind on held-out synthetic images")
    e.add_argument("model")
    e.add_argument("--images", type=int, default=6)
    e.add_argument("--seed", type=int, default=7)
    e.add_argument("--decoder", choices=DECODERS, default="grow",
                   help="grow: napari-unet's decoding (as segment); watershed: the seeded "
                   "watershed prototype (three-class models)")
    e.add_argument("--threshold", type=float, default=GROW_THRESHOLD,
                   help="cell probability threshold of the grow decoder (segment's default)")
    e.add_argument("--seed-threshold", type=float, default=HYSTERESIS_SEED,
                   help="seed probability of the hysteresis decoder")
    e.add_argument("--split", type=float, default=SPLIT_DEPTH,
                   help="segment's cutting of merged nuclei in the grow decoder: the depth of "
                   "a second centre, as a share of the cell's largest distance to its rim "
                   "(0: no cutting, the decoding before it)")
    e.add_argument("--min-share", type=float, default=MIN_SHARE,
                   help="segment's dropping of cells far smaller than the image's typical one "
                   "(share of the median cell size; 0: none, the decoding before it)")
    e.add_argument("--real", nargs="*", default=[], metavar="PATH",
                   help="pairs of real annotated images (image labels ...): F1 reported too")
    e.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    e.add_argument("--json", default=None)
    e.set_defaults(func=cmd_evaluate)
    r = sub.add_parser("rescore", help="score a model file on the held-out sets with today's "
                       "segment and record the figures in it")
    r.add_argument("model")
    r.add_argument("-o", "--output", default=None, help="write here (default: the model file)")
    r.add_argument("--eval-images", type=int, default=6)
    r.add_argument("--threads", type=int, default=0)
    r.set_defaults(func=cmd_rescore)
    z = sub.add_parser("sizes", help="cell size 'auto' against the image as it is, on nuclei "
                       "far from the model's size")
    z.add_argument("model")
    z.add_argument("--images", type=int, default=6, help="images per condition and seed")
    z.add_argument("--threads", type=int, default=0)
    z.set_defaults(func=cmd_sizes)
    f = sub.add_parser("finetune", help="out of the box vs fine-tuned on a few dozen cells")
    f.add_argument("model")
    f.add_argument("--seconds", type=float, default=120.0)
    f.add_argument("--cells", type=int, default=36, help="labelled cells to fine-tune on")
    f.add_argument("--size", type=int, default=1024)
    f.add_argument("--seed", type=int, default=11)
    f.add_argument("--only", nargs="*", help="run only these conditions (by name)")
    f.add_argument("--trajectory", action="store_true",
                   help="score every checked model of the fine-tuning run on the test cells, "
                        "and say which one each keep rule would keep (no new network)")
    f.add_argument("--lr", type=float, default=None,
                   help="peak learning rate of the fine-tuning (default: the engine's)")
    f.add_argument("--final-lr", type=float, default=None,
                   help="the fine-tuning's learning rate at the end of its time, as a share of "
                   "its peak (cosine decay; default: the engine's)")
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
