"""Benchmark of seamless overlap-tile prediction on the CPU (or another device).

Prints, measured in one run:

* megapixels/s of ``predict_tiled`` on a 2048×2048 image at its automatic tile
  size and at fixed tile sizes, next to one whole-image forward pass of the
  same network over the mirror-padded image, and their ratio (the tiling
  overhead);
* the network's FLOPs per output pixel and the achieved GFLOP/s, next to a
  torch matmul's GFLOP/s measured in the same run;
* peak memory (RSS) of ``predict_tiled`` for a 2048×2048 and an 8192×8192
  image, each in a fresh process, with the input and output arrays' own size
  taken off: the working memory must not grow with the image.

Usage::

    python benchmarks/bench_predict.py              # base 32 network, ~5 minutes on 2 cores
    python benchmarks/bench_predict.py --base 64    # the paper's network (4x slower)
    python benchmarks/bench_predict.py --quick      # smaller image, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import torch

from napari_unet import UNet, predict_tiled
from napari_unet.core.tiling import _auto_tile_and_batch, plan_tiles, reflect_index


def image_of(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4096, (size, size), dtype=np.uint16)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    torch.mm(a, b)
    return 2 * n**3 / best_of(lambda: torch.mm(a, b), repeats) / 1e9


def whole_image_pass(model: UNet, image: np.ndarray, device: torch.device) -> float:
    """Seconds of one forward pass over the whole mirror-padded image (no tiling)."""
    x = model.normalization.apply(image)
    size = model.valid_input_shape(image.shape)
    off = model.margin
    rows = reflect_index(np.arange(-off, size[0] - off), image.shape[0])
    cols = reflect_index(np.arange(-off, size[1] - off), image.shape[1])
    padded = torch.from_numpy(np.ascontiguousarray(x[rows[:, None], cols[None, :]]))[None, None]
    padded = padded.to(device)
    model.to(device)
    t = time.perf_counter()
    with torch.inference_mode():
        torch.softmax(model(padded), dim=1).cpu()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


RSS_CHILD = r"""
import json, sys, numpy as np, torch
from napari_unet import UNet, predict_tiled

def hwm():
    # peak resident memory of this process (VmHWM), in bytes
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM"))

size, base, tile = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
model = UNet(base_channels=base).eval()
image = np.random.default_rng(0).integers(0, 4096, (size, size), dtype=np.uint16)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak to the current resident memory
before = hwm()
probs = predict_tiled(model, image, tile_shape=tile if tile else None, device="cpu")
print(json.dumps({"peak": hwm(), "before": before, "output": probs.nbytes}))
"""


def rss_of(size: int, base: int, tile: int) -> dict:
    out = subprocess.run([sys.executable, "-c", RSS_CHILD, str(size), str(base), str(tile)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--base", type=int, default=32, help="base channels of the U-Net")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--tiles", type=int, nargs="*", default=[380, 572, 828])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rss-base", type=int, default=8,
                        help="base channels of the network for the memory runs")
    parser.add_argument("--rss-sizes", type=int, nargs="*", default=[2048, 8192])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.size, args.base, args.tiles, args.rss_sizes = 512, 8, [380], [512, 1024]

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = UNet(depth=args.depth, base_channels=args.base).eval()
    image = image_of(args.size)
    mpix = image.size / 1e6
    print(f"napari-unet prediction benchmark: torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {device}")
    print(f"network: U-Net depth {args.depth}, base {args.base} channels, valid padding, "
          f"{model.n_parameters() / 1e6:.2f} M parameters, margin {model.margin} px")
    print(f"image: {args.size}x{args.size} ({mpix:.2f} Mpx)\n")

    gflops_mm = matmul_gflops()
    tile_probe = model.valid_input_shape((1024, 1024))
    flops_px = model.flops(tile_probe) / np.prod(model.output_shape(tile_probe))
    print(f"torch matmul (2048^3, float32): {gflops_mm:8.1f} GFLOP/s")
    print(f"network cost: {flops_px / 1e6:.3f} MFLOP per output pixel "
          f"(for large tiles; the tiling overhead comes on top)\n")

    whole = whole_image_pass(model, image, device)
    whole = min(whole, whole_image_pass(model, image, device))
    whole_flops = model.flops(model.valid_input_shape(image.shape))
    print(f"{'run':<28}{'tile (in)':>11}{'tiles':>7}{'seconds':>9}{'Mpx/s':>8}"
          f"{'GFLOP/s':>9}{'vs whole':>10}")
    print(f"{'whole image, one pass':<28}{'-':>11}{1:>7}{whole:9.2f}{mpix / whole:8.3f}"
          f"{whole_flops / whole / 1e9:9.1f}{1.0:10.2f}")

    auto_tile, _ = _auto_tile_and_batch(model, image.shape, device, 1)
    runs = [("predict_tiled, automatic", None)] + [
        (f"predict_tiled, tile {t}", t) for t in args.tiles
    ]
    for name, tile in runs:
        plan = plan_tiles(model, image.shape, tile and (tile, tile) or auto_tile)
        predict_tiled(model, image[:64, :64], tile_shape=tile, device=device)  # warm-up
        seconds = best_of(lambda tile=tile: predict_tiled(model, image, tile_shape=tile,
                                                           device=device), 1)
        work = model.flops(plan.in_shape) * plan.total
        print(f"{name:<28}{plan.in_shape[0]:>11}{plan.total:>7}{seconds:9.2f}"
              f"{mpix / seconds:8.3f}{work / seconds / 1e9:9.1f}{seconds / whole:10.2f}")

    print(f"\npeak memory (RSS), fresh process each, U-Net base {args.rss_base}, "
          "automatic tiles, CPU:")
    print("(before = after imports, model and input image; working = peak - before - output)")
    print(f"{'image':>12}{'before':>10}{'peak RSS':>11}{'output':>10}{'working':>10}")
    for size in args.rss_sizes:
        r = rss_of(size, args.rss_base, 0)
        working = r["peak"] - r["before"] - r["output"]
        print(f"{size:>7}x{size:<4}{r['before'] / 2**20:7.0f} MB{r['peak'] / 2**20:8.0f} MB"
              f"{r['output'] / 2**20:7.0f} MB{working / 2**20:7.0f} MB")


if __name__ == "__main__":
    main()
