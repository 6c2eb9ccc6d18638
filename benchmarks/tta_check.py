"""Test-time augmentation, measured: the packaged model's probabilities averaged over the
eight flips and quarter turns of each image (or the first four: the quarter turns), against
one pass, on the nuclei held-out sets of ``scripts/pretrain.py evaluate`` (6 images per
condition, F1@0.5 pooled, segment's defaults otherwise).

Usage::

    python benchmarks/tta_check.py [--seed 7] [--views 1 4 8]

Prints one row per number of views: the six nuclei conditions (as in training, large, tiny,
very noisy, 16-bit, packed clusters) and the seconds the row took (prediction time grows with
the views). Behind the "tried, not adopted" note in docs/models.md.
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import pretrain  # noqa: E402  (the held-out sets and their scoring)

from napari_unet import load_model  # noqa: E402
from napari_unet.core.model import UNet  # noqa: E402


def averaged_over_views(model: UNet, views: int) -> UNet:
    """``model``, whose forward pass returns the log of its class probabilities averaged over
    ``views`` turned and flipped copies of the input, each turned back (valid convolutions
    crop all sides alike, so the views line up exactly). Prediction takes the softmax of the
    output, which gives back the averaged probabilities."""
    one_pass = model.forward

    def forward(self: UNet, x: torch.Tensor) -> torch.Tensor:
        total = None
        for k in range(views):
            turns, flip = k % 4, k >= 4
            y = torch.rot90(x, turns, (-2, -1))
            y = torch.flip(y, (-1,)) if flip else y
            p = torch.softmax(one_pass(y), 1)
            p = torch.flip(p, (-1,)) if flip else p
            p = torch.rot90(p, -turns, (-2, -1))
            total = p if total is None else total + p
        return torch.log((total / views).clamp_min(1e-8))

    model.forward = types.MethodType(forward, model)  # type: ignore[method-assign]
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=7, help="seed of the held-out sets")
    p.add_argument("--views", type=int, nargs="+", default=[1, 4, 8], choices=range(1, 9))
    a = p.parse_args()
    for views in a.views:
        model = averaged_over_views(load_model("default"), views)
        t = time.perf_counter()
        rows = pretrain.evaluate(model, n=6, seed=a.seed, kinds=("nuclei",))["nuclei"]
        print(f"{views} view(s), seed {a.seed}: "
              + " / ".join(f"{f:.3f}" for f in rows.values())
              + f"  ({time.perf_counter() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
