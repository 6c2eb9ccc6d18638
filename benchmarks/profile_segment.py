"""Where the time of one ``segment`` goes: cProfile of a warm run (after one run that
starts CUDA), the functions with the most own time, and the wall time.

Usage::

    python benchmarks/profile_segment.py --device cuda --size 4096
    python benchmarks/profile_segment.py --size 2048 --batch-size 1 --tiles-per-block 1
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--tiles-per-block", type=int, help="blocks of NxN tiles")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    import torch

    sys.path.insert(0, str(HERE))
    from bench_segment import image_of

    from napari_unet import segment
    from napari_unet.core import load_model, packaged_model_path
    from napari_unet.core.blocks import plan_segmentation
    from napari_unet.core.options import SegmentOptions

    model = load_model(packaged_model_path())
    image = image_of(args.size)
    kw = {"device": args.device, "batch_size": args.batch_size}
    if args.tiles_per_block:
        step = plan_segmentation(image, model, SegmentOptions(**kw)).grid.plan.step
        kw["block_shape"] = (args.tiles_per_block * step[0], args.tiles_per_block * step[1])
    plan = plan_segmentation(image, model, SegmentOptions(**kw))
    print(f"{args.size}² on {args.device}: tiles {plan.grid.plan.in_shape} -> "
          f"{plan.grid.plan.out_shape}, {plan.grid.plan.total} tiles, batch {plan.batch}, "
          f"{plan.grid.total} blocks of {plan.grid.block_tiles} tiles, overlap {plan.overlap}")

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    t = time.perf_counter()
    segment(image, model, **kw)
    sync()
    print(f"first run (CUDA start included): {time.perf_counter() - t:.3f} s")
    profiler = cProfile.Profile()
    t = time.perf_counter()
    profiler.enable()
    segment(image, model, **kw)
    sync()
    profiler.disable()
    wall = time.perf_counter() - t
    print(f"profiled run: {wall:.3f} s, {args.size ** 2 / wall / 1e6:.2f} Mpx/s "
          "(main thread only below; decoding threads are not profiled)")
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(args.top)
    print(text.getvalue())


if __name__ == "__main__":
    main()
