"""The ``napari-unet`` command line: argparse over the same core calls as the plugin.

Errors a user can fix (a missing file, a wrong shape, an output that exists)
end with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser"]

EXIT_USAGE = 2


class CliError(Exception):
    """An error to report in one line."""


def _progress(generator: Generator[Any, Any, Any], desc: str, quiet: bool) -> Any:
    """Drive a core progress generator with a tqdm bar on stderr; return its result."""
    from tqdm import tqdm

    bar = None
    try:
        while True:
            try:
                p = next(generator)
            except StopIteration as stop:
                return stop.value
            if quiet:
                continue
            if bar is None:
                bar = tqdm(total=p.total, desc=desc, unit="tile", file=sys.stderr, leave=True)
            if bar.total != p.total:
                bar.total = p.total
            bar.n = p.done
            bar.refresh()
    finally:
        if bar is not None:
            bar.close()
        generator.close()


def _check_output(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise CliError(f"{path} exists; pass --overwrite to replace it")
    if path.suffix.lower() not in (".tif", ".tiff", ".npy", ".png"):
        raise CliError(f"cannot write {path}: use a .tif or .npy output file name")


# -------------------------------------------------------------------- segment
def _cmd_segment(args: argparse.Namespace) -> int:
    from .core import iter_segment, load_model
    from .io import read_image, write_image, write_overlay

    out = Path(args.output)
    _check_output(out, args.overwrite)
    for extra in (args.probabilities, args.overlay):
        if extra is not None:
            _check_output(Path(extra), args.overwrite)
    model = load_model(args.model) if args.model else load_model("default")
    image = read_image(args.image)
    start = time.perf_counter()
    labels, probs = _progress(
        iter_segment(
            image, model, tile_shape=args.tile, batch_size=args.batch_size, device=args.device,
            axes=args.axes, threshold=args.threshold, min_size=args.min_size, grow=args.grow,
            return_probabilities=True,
        ),
        "segmenting",
        args.quiet,
    )
    elapsed = time.perf_counter() - start
    write_image(out, labels, overwrite=args.overwrite)
    if args.probabilities:
        write_image(args.probabilities, probs, overwrite=args.overwrite)
    if args.overlay:
        write_overlay(args.overlay, image, labels, overwrite=args.overwrite)
    n_cells = len(set(labels.ravel().tolist()) - {0}) if labels.ndim == 3 else int(labels.max())
    print(f"{args.image}: {n_cells} cells in {elapsed:.1f} s -> {out}")
    return 0


def _add_segment(sub: Any) -> None:
    p = sub.add_parser(
        "segment",
        help="segment an image into instance labels",
        description="Segment an image with seamless overlap-tiled U-Net prediction and write "
        "int32 instance labels (0 = background).",
    )
    p.add_argument("image", help="input image (TIFF, PNG, JPEG, .npy or zarr)")
    p.add_argument("-o", "--output", required=True, help="labels file to write (.tif or .npy)")
    p.add_argument("--model", help="model file (default: the pretrained model shipped with "
                   "the plugin)")
    p.add_argument("--tile", type=int, help="tile size in input pixels (default: automatic "
                   "from the memory available)")
    p.add_argument("--batch-size", type=int, help="tiles per forward pass (default: automatic)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--axes", help="axes of the image if the guess is wrong, e.g. zyx, cyx, yxc")
    p.add_argument("--threshold", type=float, default=0.5, help="cell probability threshold")
    p.add_argument("--min-size", type=int, default=16, help="drop cells smaller than this "
                   "(pixels)")
    p.add_argument("--grow", type=int, help="pixels to grow cells back over the carved gaps "
                   "(default: from the model)")
    p.add_argument("--probabilities", help="also write the class probabilities here (.tif)")
    p.add_argument("--overlay", help="also write a PNG picture of the labels over the image")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_segment)


# ----------------------------------------------------------------------- info
def _cmd_info(args: argparse.Namespace) -> int:
    from .core import load_model

    model = load_model(args.model)
    print(f"model:          {args.model}")
    print(f"architecture:   {', '.join(f'{k}={v}' for k, v in model.config.items())}")
    print(f"parameters:     {model.n_parameters():,}")
    print(f"margin:         {model.margin} px per side")
    print(f"classes:        {', '.join(model.classes)}")
    norm = model.normalization
    print(f"normalisation:  percentiles {norm.low} to {norm.high}")
    for key, value in sorted(model.metadata.items()):
        print(f"{key + ':':<16}{value}")
    return 0


def _add_info(sub: Any) -> None:
    p = sub.add_parser("info", help="describe a model file")
    p.add_argument("model", help="model file, or 'default'")
    p.set_defaults(func=_cmd_info)


COMMANDS: list[Callable[[Any], None]] = [_add_segment, _add_info]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``napari-unet``."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="napari-unet",
        description="U-Net segmentation of microscopy images, headless: the engine of the "
        "napari-unet plugin.",
    )
    parser.add_argument("--version", action="version", version=f"napari-unet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-unet`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("napari-unet: interrupted", file=sys.stderr)
        return 130
    except (CliError, ValueError, TypeError, OSError, RuntimeError) as err:
        if os.environ.get("NAPARI_UNET_DEBUG"):
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"napari-unet {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
