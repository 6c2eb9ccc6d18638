"""Helpers for the block, batch and cluster tests: a network that passes its input through,
and images with cells placed on block borders and corners."""

from __future__ import annotations

import numpy as np
import torch
from skimage.draw import disk
from skimage.segmentation import find_boundaries

from napari_unet import Normalization, UNet
from napari_unet.core.tiling import BlockGrid, plan_tiles


def passthrough_unet(three_class: bool = False, depth: int = 2, padding: str = "valid",
                     gain: float = 40.0) -> UNet:
    """A real U-Net whose weights make its probabilities a function of the pixel itself.

    Two classes: ``p(cell) = sigmoid(gain * (x - 0.5))`` for the normalised pixel
    value x (0 background, 1 cell). Three classes: x = 1 is interior, 0.5 boundary,
    0 background. Only the top level's convolutions are non-zero (centre taps), so
    the tiled prediction path is exercised for real while the cells are known.
    """
    net = UNet(depth=depth, base_channels=2, n_classes=3 if three_class else 2,
               padding=padding)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        first, top = net.down[0], net.up_convs[-1]
        for double in (first, top):
            convs = [m for m in double if isinstance(m, torch.nn.Conv2d)]
            convs[0].weight[0, 0, 1, 1] = 1.0
            convs[1].weight[0, 0, 1, 1] = 1.0
            if three_class:  # channel 1: relu(x - 0.75), non-zero in the interior only
                if double is first:
                    convs[0].weight[1, 0, 1, 1] = 1.0
                    convs[0].bias[1] = -0.75
                else:
                    convs[0].weight[1, 1, 1, 1] = 1.0
                convs[1].weight[1, 1, 1, 1] = 1.0
        if three_class:
            net.head.weight[1, 1] = 4 * gain
            net.head.bias[1] = -0.5 * gain
            net.head.weight[2, 0] = gain
            net.head.weight[2, 1] = -8 * gain
            net.head.bias[2] = -0.25 * gain
        else:
            net.head.weight[1, 0] = gain
            net.head.bias[1] = -0.5 * gain
    net.normalization = Normalization(low=0.0, high=100.0)
    if three_class:
        net.classes = ("background", "interior", "boundary")
    return net.eval()


def border_cells(net: UNet, shape: tuple[int, int], tile: int, block: int, seed: int = 0):
    """Cells on the borders and corners of the blocks ``segment(..., block_shape=block)`` uses.

    Returns ``(truth, kept, grid)``: instance labels of the designed cells (one id
    per cell, 1-pixel gaps between touching cells), the ids that are at least 16
    pixels (the others must vanish), and the block grid.
    """
    grid = BlockGrid.make(plan_tiles(net, shape, (tile, tile)), shape, block, min_side=3)
    rows = [grid.bounds(i, 0)[0] for i in range(1, grid.n_blocks[0])]
    cols = [grid.bounds(0, j)[2] for j in range(1, grid.n_blocks[1])]
    truth = np.zeros(shape, np.int32)
    free = np.ones(shape, bool)  # keep a one-pixel gap around every cell drawn

    def put(mask: np.ndarray) -> None:
        if not (mask & ~free).any() and mask.any():
            truth[mask] = truth.max() + 1
            grown = np.zeros_like(mask)
            rr, cc = np.nonzero(mask)
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    grown[np.clip(rr + dr, 0, shape[0] - 1), np.clip(cc + dc, 0, shape[1] - 1)] = 1
            free[grown] = False

    def rect(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        m = np.zeros(shape, bool)
        m[max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)] = True
        return m

    for r in rows:
        for c in cols:
            m = np.zeros(shape, bool)
            m[disk((r - 0.5, c - 0.5), 4.5, shape=shape)] = True
            put(m)  # a cell on a block corner, in four blocks
    for r in rows:
        c = cols[0] // 2 if cols else shape[1] // 2
        put(rect(r - 6, r - 1, c - 4, c + 4))  # touching pair, the gap is the row above
        put(rect(r, r + 6, c - 4, c + 4))  # the border: each cell in its own block
        put(rect(r - 1, r + 1, c + 8, c + 14))  # 12 pixels across the border: dropped
        put(rect(r - 2, r + 2, c + 17, c + 22))  # 20 pixels, 10 on each side: kept
    for c in cols:
        r = rows[0] // 2 if rows else shape[0] // 2
        put(rect(r - 4, r + 4, c - 5, c))  # touching pair with the gap on the border column
        put(rect(r - 4, r + 4, c + 1, c + 7))
        put(rect(r + 9, r + 13, c - 3, c + 3))  # a cell across a vertical border
    # a one-pixel-wide staircase across several blocks
    m = np.zeros(shape, bool)
    r, c = 2, 2
    while r < shape[0] - 2 and c < shape[1] - 2:
        m[r, c] = m[r, c + 1] = True
        r, c = r + 1, c + 1
    put(m)
    # cells touching only diagonally across a block corner stay two cells
    if rows and cols:
        r, c = rows[-1], cols[-1]
        put(rect(r - 5, r, c + 3, c + 8) & ~rect(r - 1, r, c + 3, c + 4))
    rng = np.random.default_rng(seed)
    for _ in range(60):  # and random cells anywhere, on the image border too
        m = np.zeros(shape, bool)
        m[disk(rng.uniform(0, shape), rng.uniform(2, 7), shape=shape)] = True
        put(m)
    sizes = np.bincount(truth.ravel())
    kept = [i for i in range(1, len(sizes)) if sizes[i] >= 16]
    return truth, kept, grid


def as_image(truth: np.ndarray, three_class: bool) -> np.ndarray:
    """The image a pass-through network turns into the designed cells."""
    if not three_class:
        return (truth > 0).astype(np.float32)
    image = (truth > 0).astype(np.float32)
    image[find_boundaries(truth, mode="inner")] = 0.5
    return image
