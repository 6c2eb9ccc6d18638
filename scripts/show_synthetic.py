"""Render a PNG contact sheet of synthetic samples of every kind, to look at.

Each row shows one kind; each cell of the grid is a sample image (contrast
stretched to its 0.5-99.8 percentiles) next to the same image with the label
boundaries drawn in colour.

    python scripts/show_synthetic.py -o /tmp/synthetic.png
    python scripts/show_synthetic.py -o /tmp/nuclei.png --kinds nuclei --seeds 8 --size 384
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np
from skimage.segmentation import find_boundaries

from napari_unet.core.synthetic import KINDS, make_sample

__all__ = ["contact_sheet", "main"]

_GAP = 6


def _stretch(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, (0.5, 99.8))
    return np.clip((image.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)


def _overlay(gray: np.ndarray, labels: np.ndarray) -> np.ndarray:
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    edges = find_boundaries(labels, mode="inner")
    # A colour per cell, so that touching cells are told apart.
    palette = np.random.default_rng(0).uniform(0.3, 1.0, (int(labels.max()) + 1, 3))
    palette[:, 0] = 1.0
    rgb[edges] = palette[labels[edges]]
    return rgb


def contact_sheet(
    kinds: Sequence[str], seeds: Sequence[int], shape: tuple[int, int], **kwargs
) -> tuple[np.ndarray, dict[str, float]]:
    """An RGB uint8 grid (kinds x seeds, image | overlay) and mean ms per sample."""
    h, w = shape
    tile_w = 2 * w + 2
    sheet = np.full(
        (len(kinds) * (h + _GAP) + _GAP, len(seeds) * (tile_w + _GAP) + _GAP, 3), 0.15, np.float32
    )
    timings = {}
    for i, kind in enumerate(kinds):
        spent = 0.0
        for j, seed in enumerate(seeds):
            start = time.perf_counter()
            image, labels = make_sample(kind, shape=shape, seed=seed, **kwargs)
            spent += time.perf_counter() - start
            gray = _stretch(image)
            y = _GAP + i * (h + _GAP)
            x = _GAP + j * (tile_w + _GAP)
            sheet[y : y + h, x : x + w] = gray[..., None]
            sheet[y : y + h, x + w + 2 : x + tile_w] = _overlay(gray, labels)
        timings[kind] = 1000 * spent / len(seeds)
    return (sheet * 255).round().astype(np.uint8), timings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="/tmp/synthetic.png", help="PNG file to write")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--seeds", type=int, default=4, help="samples per kind")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--size", type=int, nargs="+", default=[256], help="rows [cols]")
    parser.add_argument("--dtype", default="uint8", choices=["uint8", "uint16", "float32"])
    args = parser.parse_args(argv)
    shape = (args.size[0], args.size[-1])
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    sheet, timings = contact_sheet(args.kinds, list(seeds), shape, dtype=args.dtype)

    import imageio.v3 as iio

    iio.imwrite(args.output, sheet)
    for kind, ms in timings.items():
        print(f"{kind:>10}: {ms:7.1f} ms per {shape[0]}x{shape[1]} sample")
    print(f"wrote {args.output} ({sheet.shape[1]}x{sheet.shape[0]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
