"""Throughput of segmentation on a dask LocalCluster of one and of two worker processes.

The same work runs on a cluster of 1, then 2 worker processes (one thread, so one
torch thread, each), measured in one run, and the throughput is printed as a ratio to
the one-worker run:

* **blocks**: one lazy image (the generated image of ``bench_large.py``), its blocks
  as tasks, labels written to a zarr array on disk;
* **files**: a batch of TIFF files, one task per file (``napari-unet segment --scheduler``).

Each cluster is warmed up first (workers started, torch imported, the model sent),
so the figures are the steady throughput. For reference, the same image is also
segmented in this process without a cluster (torch using all cores).

The network is the packaged default model if there is one, else a new randomly
initialised base-16 network (``new_model()``); a random network gives meaningless cells
but the same work.

Usage::

    python benchmarks/bench_distributed.py                  # 2048² image, 8 files of 768²
    python benchmarks/bench_distributed.py --size 1024 --files 4 --file-size 512   # quicker
    python benchmarks/bench_distributed.py --workers 1 2 4  # on a bigger machine
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_large import lazy_image, synthetic_block  # noqa: E402


def the_model():
    import torch

    from napari_unet.core import packaged_model_path
    from napari_unet.core.loading import load_model
    from napari_unet.core.training import new_model

    path = packaged_model_path()
    if path is not None:
        return load_model(path), f"packaged default model ({path.name})"
    torch.manual_seed(0)
    return new_model(), "random-init new_model() (base 16, depth 4)"


def run_blocks(client, model, image, block: int, tile: int, folder: Path) -> float:
    from napari_unet import segment

    out = folder / f"labels-{time.monotonic_ns()}.zarr"
    start = time.perf_counter()
    segment(image, model, client=client, out=out, block_shape=block, tile_shape=tile,
            device="cpu")
    return time.perf_counter() - start


def run_files(client, model, files: list[Path], folder: Path, tile: int) -> float:
    from napari_unet.batch import iter_segment_files, output_path

    out = folder / f"out-{time.monotonic_ns()}"
    out.mkdir()
    jobs = [(f, output_path(f, out, "tif")) for f in files]
    start = time.perf_counter()
    results = list(iter_segment_files(jobs, model, client=client, tile_shape=tile,
                                      device="cpu"))
    seconds = time.perf_counter() - start
    failed = [r for r in results if r.status != "done"]
    if failed:
        raise RuntimeError(failed[0].summary())
    return seconds


def main() -> None:
    import tifffile

    from napari_unet import segment
    from napari_unet.core.distributed import local_client

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="image side (blocks mode)")
    parser.add_argument("--block", type=int, default=512, help="block side (blocks mode)")
    parser.add_argument("--tile", type=int, default=348, help="tile side")
    parser.add_argument("--files", type=int, default=8, help="number of files (files mode)")
    parser.add_argument("--file-size", type=int, default=768, help="side of each file")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    model, which = the_model()
    folder = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    try:
        image = lazy_image(args.size, chunk=args.block)
        files = []
        for k in range(args.files):
            path = folder / f"image{k:02d}.tif"
            tifffile.imwrite(path, synthetic_block(0, args.file_size, 0, args.file_size, k + 1))
            files.append(path)
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
              f"model: {which}")
        print(f"blocks: {args.size}x{args.size} image, blocks of {args.block}, tiles of "
              f"{args.tile}; files: {args.files} TIFFs of {args.file_size}x{args.file_size}")
        start = time.perf_counter()
        segment(image, model, out=folder / "local.zarr", block_shape=args.block,
                tile_shape=args.tile, device="cpu")
        local = time.perf_counter() - start
        mpx_image = args.size**2 / 1e6
        mpx_files = args.files * args.file_size**2 / 1e6
        print(f"in this process, no cluster ({__import__('torch').get_num_threads()} torch "
              f"threads): blocks {mpx_image / local:.3f} Mpx/s")
        rows = []
        for n in args.workers:
            with local_client(n) as client:
                warm = lazy_image(2 * args.block, chunk=args.block)
                run_blocks(client, model, warm, args.block, args.tile, folder)  # warm up
                blocks = run_blocks(client, model, image, args.block, args.tile, folder)
                batch = run_files(client, model, files, folder, args.tile)
            rows.append((n, mpx_image / blocks, mpx_files / batch, blocks, batch))
            print(f"  {n} worker(s): blocks {blocks:.1f} s, files {batch:.1f} s", flush=True)
        base_blocks, base_files = rows[0][1], rows[0][2]
        print(f"{'workers':>7} {'blocks Mpx/s':>13} {'ratio':>6} {'files Mpx/s':>12} "
              f"{'ratio':>6}")
        for n, b, f, _, _ in rows:
            print(f"{n:>7} {b:>13.3f} {b / base_blocks:>6.2f} {f:>12.3f} {f / base_files:>6.2f}")
        print(f"load average now {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
