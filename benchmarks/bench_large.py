"""Peak memory and wall time of segmenting a large lazy image into a zarr array on disk.

The image (uint8, cells on a jittered grid, noise) is a dask array generated block by
block from a seed, so it never exists in memory as a whole; it is segmented with
``napari_unet.segment(image, model, out="labels.zarr")``, block by block, and the labels
are written to a zarr array on disk (chunks = blocks). Each size runs in a fresh process,
which reports its peak resident memory (``ru_maxrss``), its memory before segmenting
(Python, torch and the model loaded) and the wall time.

The network is the packaged default model if there is one, else a new randomly
initialised base-16 network from ``new_model()`` (depth 4, the default training
architecture): a random network gives meaningless cells, but the same memory and time.

Usage::

    python benchmarks/bench_large.py                     # 4096² and 16384² (long on a CPU)
    python benchmarks/bench_large.py --sizes 1024 2048   # a quick check
    python benchmarks/bench_large.py --block 1024 --tile 512
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GRID = 24  # one cell per 24x24 square


def _hash(a: np.ndarray, b: np.ndarray, salt: float) -> np.ndarray:
    """A cheap deterministic pseudo-random number in [0, 1) per grid square."""
    x = np.sin(a * 12.9898 + b * 78.233 + salt * 37.719) * 43758.5453
    return x - np.floor(x)


def synthetic_block(r0: int, r1: int, c0: int, c1: int, seed: int) -> np.ndarray:
    """Rows r0:r1, cols c0:c1 of the synthetic image: the same wherever it is cut."""
    rows = np.arange(r0, r1)[:, None]
    cols = np.arange(c0, c1)[None, :]
    gi, gj = rows // GRID, cols // GRID
    cy = gi * GRID + GRID / 2 + 4 * (_hash(gi, gj, seed) - 0.5)
    cx = gj * GRID + GRID / 2 + 4 * (_hash(gi, gj, seed + 1) - 0.5)
    radius = 5 + 4 * _hash(gi, gj, seed + 2)
    present = _hash(gi, gj, seed + 3) < 0.8
    inside = ((rows - cy) ** 2 + (cols - cx) ** 2 < radius**2) & present
    noise = np.random.default_rng((seed, r0, c0)).normal(0, 8, inside.shape)
    return np.clip(30 + 140 * inside + noise, 0, 255).astype(np.uint8)


def lazy_image(size: int, chunk: int = 1024, seed: int = 0):
    """A size x size dask array computed chunk by chunk from the seed."""
    import dask.array as da

    def make(block_info=None):
        (r0, r1), (c0, c1) = block_info[None]["array-location"]
        return synthetic_block(r0, r1, c0, c1, seed)

    return da.map_blocks(make, chunks=((chunk,) * -(-size // chunk),) * 2, dtype=np.uint8,
                         meta=np.empty((0, 0), np.uint8))[:size, :size]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(size: int, block: int | None, tile: int | None, folder: str) -> None:
    import torch

    from napari_unet.core import packaged_model_path
    from napari_unet.core.blocks import iter_segment_blocks
    from napari_unet.core.loading import load_model
    from napari_unet.core.training import new_model

    path = packaged_model_path()
    if path is not None:
        model, which = load_model(path), f"packaged default model ({path.name})"
    else:
        torch.manual_seed(0)
        model, which = new_model(), "random-init new_model() (base 16, depth 4)"
    image = lazy_image(size)
    before = current_rss_mib()
    gen = iter_segment_blocks(image, model, out=Path(folder) / "labels.zarr", block_shape=block,
                              tile_shape=tile, device="cpu")
    before_usage = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    last = -1
    try:
        while True:
            p = next(gen)
            tenth = 10 * p.done // max(p.total, 1)
            if tenth != last:
                last = tenth
                print(f"  {size}: {p.phase} {p.done}/{p.total} "
                      f"({time.perf_counter() - start:.0f} s, {current_rss_mib():.0f} MiB)",
                      file=sys.stderr, flush=True)
    except StopIteration as stop:
        result = stop.value
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    labels = result.labels
    on_disk = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
    # a small check that the labels are there: the cells of the first block
    first = np.asarray(labels[: min(512, size), : min(512, size)])
    print(json.dumps({
        "size": size, "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime - before_usage.ru_utime
        - before_usage.ru_stime,
        "peak_rss_mib": peak_rss_mib(),
        "rss_before_mib": before, "n_cells": result.n_cells, "model": which,
        "chunks": list(labels.chunks), "labels_on_disk_mib": on_disk / 2**20,
        "torch_threads": torch.get_num_threads(), "first_block_ids": int(len(np.unique(first))),
        "image_gib_uint8": size * size / 2**30, "labels_gib_int32": 4 * size * size / 2**30,
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--block", type=int, help="block side (default: the library's)")
    parser.add_argument("--tile", type=int, help="tile side (default: automatic)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.block, args.tile, args.folder)
        return
    print(f"machine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
    rows = []
    for size in args.sizes:
        folder = tempfile.mkdtemp(prefix="bench-large-")
        try:
            cmd = [sys.executable, __file__, "--child", str(size), "--folder", folder]
            if args.block:
                cmd += ["--block", str(args.block)]
            if args.tile:
                cmd += ["--tile", str(args.tile)]
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"model: {rows[0]['model']}; torch threads: {rows[0]['torch_threads']}; "
          f"chunks (= blocks): {rows[0]['chunks']}")
    print(f"{'image':>13} {'image+labels':>13} {'peak RSS':>9} {'RSS before':>11} "
          f"{'wall time':>10} {'CPU time':>9} {'Mpx/s':>6} {'cells':>9}")
    for r in rows:
        whole = r["image_gib_uint8"] + r["labels_gib_int32"]
        print(f"{r['size']:>6}x{r['size']:<6} {whole:>9.2f} GiB "
              f"{r['peak_rss_mib'] / 1024:>5.2f} GiB "
              f"{r['rss_before_mib'] / 1024:>7.2f} GiB {r['seconds']:>8.0f} s "
              f"{r['cpu_seconds']:>7.0f} s "
              f"{r['size'] ** 2 / r['seconds'] / 1e6:>6.2f} {r['n_cells']:>9}")
    print(f"load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
