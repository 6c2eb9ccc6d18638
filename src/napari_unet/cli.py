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

import numpy as np

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
    n_cells = int(labels.max())  # ids run 1..N through the whole image or stack
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


# ---------------------------------------------------------------------- train
def _cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .core import save_model
    from .core.training import iter_train
    from .io import read_image

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise CliError(f"{out} exists; pass --overwrite to replace it")
    if len(args.images) != len(args.labels):
        raise CliError(f"{len(args.images)} image(s) but {len(args.labels)} label image(s): "
                       "give one labels file per image, in the same order")
    max_steps, max_time = args.steps, args.time
    if max_steps is None and max_time is None:
        max_time = 600.0
        if not args.quiet:
            print("napari-unet train: no --steps or --time given; training for 10 minutes",
                  file=sys.stderr)
    images = [read_image(p) for p in args.images]
    labels = [read_image(p) for p in args.labels]
    run = iter_train(
        images, labels, args.start, max_steps=max_steps, max_time=max_time,
        patch_shape=args.patch, batch_size=args.batch_size, device=args.device, seed=args.seed,
        validation=args.validation, checkpoint_dir=args.checkpoint_dir, resume=args.resume,
    )
    by_steps = max_steps is not None
    bar = None if args.quiet else tqdm(
        total=max_steps if by_steps else float(max_time), desc="training", file=sys.stderr,
        unit="step" if by_steps else "s", leave=True,
        bar_format=None if by_steps else "{l_bar}{bar}| {n:.0f}/{total:.0f} s{postfix}",
    )
    interrupted = False
    try:
        for p in run:
            if bar is None:
                continue
            if p.message and p.phase != "validate":
                bar.write(f"napari-unet train: {p.message}", file=sys.stderr)
            bar.n = p.step if by_steps else min(p.elapsed, float(max_time))
            post = {} if p.loss is None else {"loss": f"{p.loss:.3f}"}
            if p.best_val_f1 is not None:
                post["val F1"] = f"{p.best_val_f1:.3f}"
            if p.phase == "validate":
                post["validating"] = "…"
            bar.set_postfix(post, refresh=False)
            bar.refresh()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if bar is not None:
            bar.close()
        run.close()
    result = run.result
    if result is None:  # pragma: no cover - stopped before it could start
        return 130
    save_model(result.model, out)
    f1 = "" if result.best_val_f1 is None else (
        f"; best validation F1 {result.best_val_f1:.3f} at step {result.best_step}")
    print(f"trained {result.steps} steps in {result.seconds:.0f} s "
          f"({'interrupted' if interrupted else result.stopped_reason}){f1} -> {out}")
    return 130 if interrupted else 0


def _add_train(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train or fine-tune a model on images with instance labels",
        description="Train (or fine-tune with --from) a U-Net on images and their instance "
        "labels (0 = background, one id per cell) and write the model with the best "
        "validation F1. Ctrl-C stops early and still writes the best model so far.",
    )
    p.add_argument("--images", nargs="+", required=True, help="training images")
    p.add_argument("--labels", nargs="+", required=True,
                   help="instance label images, one per image, same order and size")
    p.add_argument("-o", "--output", required=True, help="model file to write (.pt)")
    p.add_argument("--from", dest="start", metavar="MODEL",
                   help="model file to fine-tune (default: the pretrained model shipped with "
                   "the plugin, else a new network)")
    p.add_argument("--steps", type=int, help="stop after this many steps")
    p.add_argument("--time", type=float, metavar="SECONDS",
                   help="stop after this many seconds (default 600 without --steps)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--batch-size", type=int, help="patches per step (default: automatic)")
    p.add_argument("--patch", type=int, help="target pixels per patch side (default: automatic)")
    p.add_argument("--seed", type=int, help="random seed, for a reproducible run")
    p.add_argument("--validation", type=float, default=0.1,
                   help="fraction of the annotation held out to pick the best model")
    p.add_argument("--checkpoint-dir", help="keep resumable checkpoints and the best model here")
    p.add_argument("--resume", metavar="DIR", help="continue the run checkpointed in DIR")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)


# --------------------------------------------------------------------- sample
def _cmd_sample(args: argparse.Namespace) -> int:
    from .core.synthetic import iter_samples
    from .io import write_image

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    names = [(out / f"{args.kind}_{i:03d}.tif", out / f"{args.kind}_{i:03d}_labels.tif")
             for i in range(args.n)]
    for paths in names:
        for path in paths:
            if path.exists() and not args.overwrite:
                raise CliError(f"{path} exists; pass --overwrite to replace it")
    extra = {"layout": "clustered"} if args.kind == "nuclei" and args.clustered else {}
    samples = iter_samples(args.kind, n=args.n, seed=args.seed, shape=(args.size, args.size),
                           **extra)
    for (image_path, labels_path), (image, labels) in zip(names, samples):
        write_image(image_path, image, overwrite=args.overwrite)
        write_image(labels_path, labels, overwrite=args.overwrite)
    print(f"wrote {args.n} {args.kind} images with their labels to {out}")
    return 0


def _add_sample(sub: Any) -> None:
    p = sub.add_parser(
        "sample",
        help="write generated sample images with their exact labels",
        description="Write synthetic microscopy images and their exact instance labels "
        "(generated, nothing is downloaded): NAME_000.tif and NAME_000_labels.tif, ...",
    )
    p.add_argument("-o", "--output", required=True, help="folder to write to")
    p.add_argument("--kind", default="nuclei", choices=["nuclei", "membranes", "phase"])
    p.add_argument("-n", type=int, default=4, help="number of images")
    p.add_argument("--size", type=int, default=256, help="image size in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clustered", action="store_true", help="nuclei in touching clusters")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.set_defaults(func=_cmd_sample)


# ------------------------------------------------------------------- evaluate
def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .core.metrics import match, match_planes
    from .io import read_image

    truth = read_image(args.truth)
    pred = read_image(args.prediction)
    if truth.shape != pred.shape:
        raise CliError(f"the truth {truth.shape} and the prediction {pred.shape} differ in shape")
    m = match_planes(truth, pred, args.iou) if args.planes else match(truth, pred, args.iou)
    print(f"IoU threshold {args.iou}: {m.n_true} true and {m.n_pred} predicted cells, "
          f"TP {m.tp}, FP {m.fp}, FN {m.fn}, precision {m.precision:.3f}, "
          f"recall {m.recall:.3f}, F1 {m.f1:.3f}, mean matched IoU {m.mean_matched_iou:.3f}")
    return 0


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="compare predicted labels with true labels",
                       description="Match cells one to one by IoU and print instance F1.")
    p.add_argument("truth", help="true labels")
    p.add_argument("prediction", help="predicted labels")
    p.add_argument("--iou", type=float, default=0.5, help="IoU from which cells match")
    p.add_argument("--planes", action="store_true", help="match a stack plane by plane")
    p.set_defaults(func=_cmd_evaluate)


# ------------------------------------------------------------------ weightmap
def _cmd_weightmap(args: argparse.Namespace) -> int:
    from .core.weightmap import boundary_weight_map, training_targets
    from .io import read_image, write_image

    out = Path(args.output)
    _check_output(out, args.overwrite)
    labels = read_image(args.labels)
    sampling = tuple(args.sampling) if args.sampling else None
    class_weights = None if args.no_balance else "balanced"
    start = time.perf_counter()
    if args.gap is None:
        weights = boundary_weight_map(np.asarray(labels), w0=args.w0, sigma=args.sigma,
                                      class_weights=class_weights, sampling=sampling)
    else:
        _, weights = training_targets(np.asarray(labels), gap=args.gap, w0=args.w0,
                                      sigma=args.sigma, class_weights=class_weights,
                                      sampling=sampling)
    write_image(out, weights, overwrite=args.overwrite)
    print(f"{args.labels}: weight map {weights.shape} (max {weights.max():.2f}) in "
          f"{time.perf_counter() - start:.2f} s -> {out}")
    return 0


def _add_weightmap(sub: Any) -> None:
    p = sub.add_parser(
        "weightmap",
        help="write the U-Net boundary weight map of instance labels",
        description="Write the weight map w = w_c + w0*exp(-(d1+d2)^2/(2 sigma^2)) of the U-Net "
        "paper (float32 TIFF): high in the background gaps between touching cells.",
    )
    p.add_argument("labels", help="instance labels (0 = background)")
    p.add_argument("-o", "--output", required=True, help="weights file to write (.tif)")
    p.add_argument("--w0", type=float, default=10.0, help="height of the border term")
    p.add_argument("--sigma", type=float, default=5.0, help="width of the border term (px)")
    p.add_argument("--sampling", type=float, nargs=2, metavar=("ROW", "COL"),
                   help="pixel spacing, for anisotropic pixels")
    p.add_argument("--no-balance", action="store_true", help="w_c = 1 instead of balancing "
                   "the class frequencies")
    p.add_argument("--gap", type=int, choices=[0, 1, 2],
                   help="compute it on training targets with gaps of this width carved "
                   "between touching cells")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=_cmd_weightmap)


COMMANDS: list[Callable[[Any], None]] = [
    _add_segment, _add_train, _add_weightmap, _add_sample, _add_evaluate, _add_info,
]


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
