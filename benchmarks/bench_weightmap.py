"""Benchmark of the boundary weight map (Ronneberger et al. 2015) on touching cells.

Prints, measured in one run on this machine:

* the typical implementation (one full-image distance transform per cell, then
  the two smallest distances per pixel), timed on a subset of the cells and
  extrapolated linearly to all of them (it is linear in the number of cells);
* ours (:func:`napari_unet.core.weightmap.boundary_weight_map`);
* one ``scipy.ndimage.distance_transform_edt`` of the whole image, the baseline;

for 512² (~60 cells), 1024² (~250) and 2048² (~1000) touching cells, and the
time of an incremental :class:`WeightMapCache` update after brush strokes of
10, 40 and 100 px width (~200 px long) in the 2048² image.

Usage::

    python benchmarks/bench_weightmap.py [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage as ndi
from skimage.draw import disk
from skimage.segmentation import expand_labels

from napari_unet.core.weightmap import WeightMapCache, boundary_weight_map


def touching_cells(size: int, n_cells: int, seed: int = 0) -> np.ndarray:
    """~n_cells touching cells: random seeds grown into each other, some background left."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), np.int32)
    points = rng.uniform(0, size, (n_cells, 2))
    labels[points[:, 0].astype(int), points[:, 1].astype(int)] = np.arange(1, n_cells + 1)
    spacing = size / np.sqrt(n_cells)
    grown = expand_labels(labels, distance=0.55 * spacing)
    return grown.astype(np.int32)


def per_cell_edt(labels: np.ndarray, ids: np.ndarray, w0=10.0, sigma=5.0) -> np.ndarray:
    """The common implementation: a full distance transform per cell."""
    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    for i in ids:
        d = ndi.distance_transform_edt(labels != i)
        d2 = np.minimum(d2, np.maximum(d1, d))
        d1 = np.minimum(d1, d)
    return w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2)) * (labels == 0)


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def stroke(labels, rng, width, value, length=200):
    """Paint a brush stroke: a polyline of 3 segments (~``length`` px in all) of disks of
    diameter ``width``. Returns the changed bounding box."""
    h, w = labels.shape
    point = np.array([rng.uniform(width, h - width), rng.uniform(width, w - width)])
    angle = rng.uniform(0, 2 * np.pi)
    rows, cols = [], []
    for _ in range(3):
        angle += rng.uniform(-1.0, 1.0)
        end = np.clip(point + length / 3 * np.array([np.sin(angle), np.cos(angle)]), 0,
                      np.array([h - 1, w - 1]))
        for t in np.linspace(0, 1, max(int(length / 3 / max(width / 4, 1)), 2)):
            rr, cc = disk(tuple(point + t * (end - point)), width / 2, shape=labels.shape)
            rows.append(rr)
            cols.append(cc)
        point = end
    rr, cc = np.concatenate(rows), np.concatenate(cols)
    labels[rr, cc] = value
    return (slice(int(rr.min()), int(rr.max()) + 1), slice(int(cc.min()), int(cc.max()) + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sizes = [(512, 60), (1024, 250)] if args.quick else [(512, 60), (1024, 250), (2048, 1000)]

    print("boundary weight map, w0=10, sigma=5 px; times are the best of "
          f"{args.repeats} runs")
    print(f"{'image':>10}{'cells':>7}{'per-cell EDT':>15}{'ours':>9}{'1 EDT':>9}"
          f"{'ours/EDT':>10}{'per-cell/ours':>15}")
    for size, n in sizes:
        labels = touching_cells(size, n)
        ids = np.unique(labels)
        ids = ids[ids > 0]
        subset = ids[: max(len(ids) // 10, 5)]
        t_sub = best(lambda subset=subset, labels=labels: per_cell_edt(labels, subset), 1)
        t_naive = t_sub * len(ids) / len(subset)
        t_ours = best(lambda labels=labels: boundary_weight_map(labels), args.repeats)
        t_edt = best(lambda labels=labels: ndi.distance_transform_edt(labels == 0), args.repeats)
        print(f"{size:>5}x{size:<4}{len(ids):>7}{t_naive:>13.2f} s{t_ours:>7.3f} s"
              f"{t_edt:>7.3f} s{t_ours / t_edt:>10.2f}{t_naive / t_ours:>14.0f}x")
    print("(per-cell EDT timed on a tenth of the cells and extrapolated linearly)")

    size, n = sizes[-1]
    labels = touching_cells(size, n, seed=1)
    cache = WeightMapCache(labels)
    rng = np.random.default_rng(0)
    ids = np.unique(labels)
    print(f"\nincremental update after a brush stroke, {size}x{size} with {len(ids) - 1} cells "
          "(median of 15 strokes, each painting an existing or new cell or erasing;\n"
          " 'update' = WeightMapCache.update, '+ read' adds reading the changed region's "
          "weights as the napari preview does):")
    for width in (10, 40, 100):
        times, reads = [], []
        for k in range(15):
            value = 0 if k % 5 == 4 else int(rng.choice(ids[1:])) if k % 2 else int(ids[-1]) + k
            box = stroke(labels, rng, width, value)
            t = time.perf_counter()
            region = cache.update(labels, box)
            times.append(time.perf_counter() - t)
            cache.region_weights(region)
            reads.append(time.perf_counter() - t)
        print(f"  {width:>3} px stroke: update median {np.median(times) * 1000:5.1f} ms "
              f"(max {np.max(times) * 1000:5.1f}), + read median "
              f"{np.median(reads) * 1000:5.1f} ms")
    assert np.array_equal(cache.weights, boundary_weight_map(labels)), "cache != full"
    print("  (after all strokes the cache equals a full recomputation exactly)")


if __name__ == "__main__":
    main()
