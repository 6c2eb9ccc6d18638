"""Benchmark of the synthetic image generator (napari_unet.core.synthetic).

Pretraining generates its pool of images before it trains, so the generator must
make hundreds of 256²-384² images in a minute or two on a 2-core machine. Prints,
measured in one run on this machine:

* images per second for every kind at each size, in one process, with the ratio
  to one ``scipy.ndimage.gaussian_filter`` (sigma 2) of an image of that size,
  the baseline (a machine-independent cost: "the generator costs N blurs");
* images per second of nuclei with packed clusters (the slowest nuclei case);
* images per second with one worker process per core (as a pool can be made),
  and the seconds that 300 nuclei images of 384² take that way.

Usage::

    python benchmarks/bench_synthetic.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from scipy import ndimage as ndi

from napari_unet.core.synthetic import KINDS, make_sample

PACKED = {"layout": "clustered", "touching": 1.0, "density": 0.5}


def _rate(kind: str, size: int, n: int, **kw) -> float:
    make_sample(kind, (size, size), seed=10_000, **kw)  # warm up
    start = time.perf_counter()
    for seed in range(n):
        make_sample(kind, (size, size), seed=seed, **kw)
    return n / (time.perf_counter() - start)


def _baseline(size: int, repeats: int = 20) -> float:
    image = np.random.default_rng(0).random((size, size), dtype=np.float32)
    ndi.gaussian_filter(image, 2.0)
    start = time.perf_counter()
    for _ in range(repeats):
        ndi.gaussian_filter(image, 2.0)
    return (time.perf_counter() - start) / repeats


def _one(args: tuple[int, int]) -> int:
    seed, size = args
    image, labels = make_sample("nuclei", (size, size), seed=seed)
    return int(labels.max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images")
    args = parser.parse_args()
    n = 8 if args.quick else 30
    print(f"{'kind':24s} {'size':>5s} {'images/s':>9s} {'ms/image':>9s} {'x blur':>7s}")
    for size in (256, 384):
        blur = _baseline(size)
        cases = [(kind, {}) for kind in KINDS] + [("nuclei packed clusters", PACKED)]
        for name, kw in cases:
            kind = name.split()[0]
            rate = _rate(kind, size, n, **kw)
            print(f"{name:24s} {size:5d} {rate:9.1f} {1000 / rate:9.1f} "
                  f"{1 / rate / blur:7.0f}", flush=True)
    workers = os.cpu_count() or 1
    count = 2 * n if args.quick else 300
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_one, [(10_000 + i, 64) for i in range(workers)]))  # start the workers
        start = time.perf_counter()
        list(pool.map(_one, [(i, 384) for i in range(count)], chunksize=4))
        seconds = time.perf_counter() - start
    print(f"\n{count} nuclei images of 384² with {workers} worker processes: {seconds:.1f} s "
          f"({count / seconds:.1f} images/s)")


if __name__ == "__main__":
    main()
