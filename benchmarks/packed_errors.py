"""Why cells are missed on the packed-clusters held-out set, and whether the network's
probability shows where merged nuclei touch.

For the packaged model (or ``--model``) on the "packed clusters" row of ``scripts/pretrain.py
evaluate`` (6 images, ``--seed``), every true nucleus that no segmented cell matches at IoU 0.5
is put in one of four kinds:

* **merged**: the cell that covers most of it also covers at least half of another nucleus;
* **split**: two or more cells each cover at least a fifth of it;
* **missed**: no cell covers 30 % of it;
* **outline**: one cell covers it, but drawn too small or too large for IoU 0.5.

Then the cell probability on the pixels where two true nuclei touch: inside merged cells,
and where the segmentation did keep them apart (quantiles 10/25/50/75/90 %).

Usage::

    python benchmarks/packed_errors.py [--seed 7] [--model default]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import pretrain  # noqa: E402  (the held-out sets)

from napari_unet import cell_probability, load_model, segment  # noqa: E402
from napari_unet.core import metrics  # noqa: E402

#: The kinds of miss, in the order printed.
KINDS = ("merged", "split", "missed", "outline")


def error_kinds(truth: np.ndarray, labels: np.ndarray) -> dict[str, int]:
    """How many true cells of each kind of miss (see the module notes)."""
    nt, npd = int(truth.max()) + 1, int(labels.max()) + 1
    flat = truth.ravel().astype(np.int64) * npd + labels.ravel()
    overlap = np.bincount(flat, minlength=nt * npd).reshape(nt, npd)
    area_t, area_p = overlap.sum(1), overlap.sum(0)
    iou = overlap / np.maximum(area_t[:, None] + area_p[None, :] - overlap, 1)
    kinds = dict.fromkeys(KINDS, 0)
    for t in range(1, nt):
        if area_t[t] == 0 or iou[t, 1:].max() >= 0.5:
            continue
        cover = overlap[t, 1:]
        if cover.max() < 0.3 * area_t[t]:
            kinds["missed"] += 1
            continue
        p = 1 + int(np.argmax(cover))
        others = (overlap[1:, p] >= 0.5 * area_t[1:]) & (np.arange(1, nt) != t)
        if others.any():
            kinds["merged"] += 1
        elif np.count_nonzero(cover >= 0.2 * area_t[t]) >= 2:
            kinds["split"] += 1
        else:
            kinds["outline"] += 1
    return kinds


def contact_probabilities(truth: np.ndarray, labels: np.ndarray, cell: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Cell probability on pixels of a true nucleus whose right or lower neighbour belongs to
    another: (inside one segmented cell, between two segmented cells)."""
    merged, apart = [], []
    for a, b, la, lb, p in (
            (truth[:, :-1], truth[:, 1:], labels[:, :-1], labels[:, 1:], cell[:, :-1]),
            (truth[:-1], truth[1:], labels[:-1], labels[1:], cell[:-1])):
        touch = (a > 0) & (b > 0) & (a != b)
        merged.append(p[touch & (la == lb) & (la > 0)])
        apart.append(p[touch & (la != lb)])
    return np.concatenate(merged), np.concatenate(apart)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--model", default="default")
    a = p.parse_args()
    model = load_model(a.model)
    kw = next(k for name, k, _ in pretrain.HELDOUT["nuclei"] if name == "packed clusters")
    tp = fp = fn = 0
    kinds = dict.fromkeys(KINDS, 0)
    merged, apart = [], []
    for image, truth in pretrain.heldout_images("nuclei", kw, 6, a.seed):
        labels, probs = segment(image, model, return_probabilities=True)  # one prediction
        r = metrics.match(truth, labels, 0.5)
        tp, fp, fn = tp + r.tp, fp + r.fp, fn + r.fn
        for k, v in error_kinds(truth, labels).items():
            kinds[k] += v
        m, s = contact_probabilities(truth, labels, cell_probability(probs, model.classes))
        merged.append(m)
        apart.append(s)
    print(f"packed clusters, seed {a.seed}: F1 {2 * tp / (2 * tp + fp + fn):.3f} "
          f"({tp} found, {fp} false, {fn} missed)")
    print("missed nuclei by kind: " + ", ".join(f"{k} {v}" for k, v in kinds.items()))
    q = (0.1, 0.25, 0.5, 0.75, 0.9)
    for name, values in (("inside merged cells", merged), ("kept apart", apart)):
        v = np.concatenate(values)
        print(f"cell probability where nuclei touch, {name} ({v.size} px): "
              + " / ".join(f"{x:.2f}" for x in np.quantile(v, q)))


if __name__ == "__main__":
    main()
