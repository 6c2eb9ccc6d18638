"""Seams in float32: max |tiled - one whole-image pass| for the paper's network.

Usage: python benchmarks/check_seams.py [--size 900] [--base 64]
Prints the largest difference in class probability between seamless tiled
prediction at several tile sizes and one forward pass over the whole mirror-
padded image, in float32 on this CPU (the float64 version is in the tests).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from napari_unet import UNet, predict_tiled
from napari_unet.core.tiling import reflect_index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=900)
    parser.add_argument("--base", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = UNet(base_channels=args.base).eval()
    image = np.random.default_rng(0).integers(0, 4096, (args.size, args.size + 37), np.uint16)
    x = model.normalization.apply(image)
    size = model.valid_input_shape(image.shape)
    off = model.margin
    rows = reflect_index(np.arange(-off, size[0] - off), image.shape[0])
    cols = reflect_index(np.arange(-off, size[1] - off), image.shape[1])
    with torch.inference_mode():
        padded = torch.from_numpy(np.ascontiguousarray(x[rows[:, None], cols[None, :]]))
        whole = torch.softmax(model(padded[None, None]), 1)[0].numpy()
    whole = whole[:, : image.shape[0], : image.shape[1]]
    print(f"U-Net depth 4, base {args.base}, float32, image {image.shape}")
    for tile in (204, 380, 572, 828):
        diff = np.abs(predict_tiled(model, image, tile_shape=tile) - whole).max()
        print(f"  tile {tile:>4}: max |tiled - whole| = {diff:.2e}")


if __name__ == "__main__":
    main()
