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
                bar = tqdm(total=p.total, desc=desc, unit="step", file=sys.stderr, leave=True)
            if bar.total != p.total:
                bar.total = p.total
            bar.n = p.done
            phase = getattr(p, "phase", None)
            if phase and phase != "predict":
                bar.set_postfix_str(phase, refresh=False)
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
_LABEL_SUFFIXES = (".tif", ".tiff", ".npy", ".zarr")


def _segment_options(args: argparse.Namespace) -> Any:
    from .core.options import SegmentOptions

    return SegmentOptions(tile_shape=args.tile, batch_size=args.batch_size, device=args.device,
                          axes=args.axes, threshold=args.threshold, min_size=args.min_size,
                          min_share=args.min_share, grow=args.grow, block_shape=args.block,
                          split=args.split, diameter=args.diameter)


def _is_batch(args: argparse.Namespace) -> bool:
    """Several inputs, a folder, a pattern or a folder output: one output per input."""
    from .io import is_zarr

    if len(args.images) > 1:
        return True
    item = Path(args.images[0])
    if (item.is_dir() and not is_zarr(item)) or (not item.exists() and set("*?[") & set(
            args.images[0])):
        return True
    out = Path(args.output)
    return out.suffix.lower() not in _LABEL_SUFFIXES or (out.is_dir() and not is_zarr(out))


def _cluster(args: argparse.Namespace) -> Any:
    """A context giving the dask client to run on (or None: here, in this process)."""
    from contextlib import nullcontext

    if args.workers is not None and args.workers < 1:
        raise CliError(f"--workers must be 1 or more, not {args.workers} (leave it out to "
                       "run in this process)")
    if args.scheduler and args.workers:
        raise CliError("give --scheduler or --workers, not both")
    if args.scheduler:
        from .core.distributed import connect

        return connect(args.scheduler)
    if args.workers:
        from .core.distributed import local_client

        return local_client(args.workers)
    return nullcontext(None)


def _cmd_segment(args: argparse.Namespace) -> int:
    from .batch import (
        FileResult,
        expand_inputs,
        iter_segment_file,
        iter_segment_files,
        output_path,
    )
    from .core import load_model

    options = _segment_options(args)
    if not _is_batch(args):
        from .core.outputs import check_outputs

        out = Path(args.output)
        check_outputs(args.images, [("labels", out), ("--probabilities", args.probabilities),
                                    ("--overlay", args.overlay)])
        for path in (out, args.probabilities, args.overlay):
            if path is not None and Path(path).exists() and not args.overwrite:
                raise CliError(f"{path} exists; pass --overwrite to replace it")
        model = load_model(args.model or "default")
        with _cluster(args) as client:
            result = _progress(
                iter_segment_file(args.images[0], out, model, overwrite=args.overwrite,
                                  probabilities=args.probabilities, overlay=args.overlay,
                                  client=client, options=options),
                "segmenting", args.quiet,
            )
        print(result.summary())
        return 0

    inputs = expand_inputs(args.images)
    folder = Path(args.output)
    if folder.suffix and not folder.is_dir():
        if len(inputs) == 1:
            raise CliError(f"cannot write {folder}: use a .tif, .npy or .zarr (OME-Zarr) file "
                           "name, or a folder")
        raise CliError(f"with several inputs -o is a folder, not {folder}: each input gets "
                       f"its own NAME_labels.{'tif' if args.format == 'tif' else 'ome.zarr'}")
    jobs = []
    for image in inputs:
        extra: dict[str, Any] = {}
        if args.probabilities:
            extra["probabilities"] = output_path(image, args.probabilities, args.format,
                                                 "probabilities")
        if args.overlay:
            extra["overlay"] = Path(args.overlay) / f"{output_path(image, '.').stem}_overlay.png"
        jobs.append((image, output_path(image, folder, args.format), extra))
    outputs = [str(j[1].resolve()) for j in jobs]
    if len(set(outputs)) < len(outputs):
        same = sorted({o for o in outputs if outputs.count(o) > 1})
        raise CliError(f"two inputs would write the same output {same[0]}; rename one of them")
    for path in {folder, *(Path(p) for p in (args.probabilities, args.overlay) if p)}:
        path.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model or "default")
    start = time.perf_counter()
    results: list[FileResult] = []
    with _cluster(args) as client:
        if client is None:
            for image, out, extra in jobs:
                try:
                    result = _progress(
                        iter_segment_file(image, out, model, options,
                                          overwrite=args.overwrite, **extra),
                        f"segmenting {image.name}", args.quiet,
                    )
                except KeyboardInterrupt:
                    raise
                except Exception as err:  # noqa: BLE001 - reported; the other files go on
                    if os.environ.get("NAPARI_UNET_DEBUG"):
                        raise
                    message = str(err).strip().splitlines()[0] if str(err).strip() else \
                        type(err).__name__
                    result = FileResult(str(image), str(out), "failed", error=message)
                print(result.summary(), flush=True)
                results.append(result)
        else:
            if not args.quiet:
                print(f"napari-unet segment: {len(jobs)} files on {client}", file=sys.stderr)
            for result in iter_segment_files(jobs, model, client=client,
                                             overwrite=args.overwrite, options=options):
                print(result.summary(), flush=True)
                results.append(result)
    done = [r for r in results if r.status == "done"]
    failed = [r for r in results if r.status == "failed"]
    skipped = len(results) - len(done) - len(failed)
    print(f"{len(results)} files: {len(done)} segmented ({sum(r.n_cells for r in done)} cells), "
          f"{skipped} skipped, {len(failed)} failed, in {time.perf_counter() - start:.1f} s")
    return 1 if failed else 0


def _add_segment(sub: Any) -> None:
    from .core.decode import MIN_SHARE

    p = sub.add_parser(
        "segment",
        help="segment images into instance labels (one file, many, a folder or a glob)",
        description="Segment images with seamless overlap-tiled U-Net prediction and write "
        "int32 instance labels (0 = background). One input and a file name after -o writes "
        "that file; several inputs, a folder or a quoted glob pattern write one "
        "NAME_labels.tif (or .ome.zarr) per input into the folder -o, skip outputs that exist "
        "(unless --overwrite), go on past a failing file and print one line per file. "
        "Exit status: 0, or 1 if a file failed (2 for a usage error).",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="input images (TIFF, PNG, JPEG, .npy, zarr / OME-Zarr), folders of "
                   "them, or quoted glob patterns such as 'data/*.tif'")
    p.add_argument("-o", "--output", required=True,
                   help="labels file (.tif, .npy, or .zarr for OME-Zarr written block by "
                   "block) for one input; a folder for several")
    p.add_argument("--format", choices=["tif", "zarr"], default="tif",
                   help="output format with a folder output: tif or zarr (OME-Zarr, for images "
                   "larger than memory); default tif")
    p.add_argument("--model", help="model file (default: the pretrained model shipped with "
                   "the plugin)")
    p.add_argument("--tile", type=int,
                   help="tile size in input pixels (default: automatic "
                   "from the memory available)")
    p.add_argument("--block", type=int,
                   help="block size in output pixels: what is held in "
                   "memory at once, and the unit of work on a cluster (default about 2048)")
    p.add_argument("--batch-size", type=int,
                   help="tiles per forward pass (default: automatic)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--axes", help="axes of the image if the guess is wrong, e.g. zyx, cyx, yxc")
    p.add_argument("--threshold", type=float, default=0.5, help="cell probability threshold")
    p.add_argument("--min-size", type=int, default=16, help="drop cells smaller than this "
                   "(pixels)")
    p.add_argument("--min-share", type=float, default=MIN_SHARE, metavar="SHARE",
                   help="drop cells smaller than this share of the image's median cell area, "
                   "away from the image border: debris, noise, the glow around very bright "
                   f"nuclei (default {MIN_SHARE}; 0 keeps them)")
    p.add_argument("--grow", type=int, help="pixels to grow cells back over the carved gaps "
                   "(default: from the model)")
    p.add_argument("--split", type=float, metavar="DEPTH",
                   help="cut apart cells that hold two touching nuclei: how deep the second "
                   "centre must be, as a share of the cell's radius (default: the model's "
                   "choice, 0.35 for the packaged nuclei model and models trained from it; 0 "
                   "keeps every cell whole)")
    p.add_argument("--diameter", type=float, metavar="PIXELS",
                   help="the typical diameter of the cells, in pixels: the image is rescaled so "
                   "that its cells get the model's size (default: automatic, cells that come "
                   "out smaller than half the model's size or larger than twice it are tried "
                   "rescaled, kept if the network is surer of them; 0 segments the image as it "
                   "is). Rescaling needs .tif outputs and no cluster")
    p.add_argument("--probabilities", help="also write the class probabilities here (a .tif or "
                   ".zarr file; a folder with several inputs)")
    p.add_argument("--overlay", help="also write a PNG picture of the labels over the image "
                   "(a folder with several inputs)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on the dask cluster whose scheduler is at ADDRESS (e.g. "
                   "tcp://host:8786): each file, or each block of a single file, is a task")
    p.add_argument("--workers", type=int, metavar="N",
                   help="run on a local dask cluster of N worker processes")
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


def _cmd_models(args: argparse.Namespace) -> int:
    from .core import list_models, user_models_dir

    found = list_models()
    for info in found:
        print(info.summary())
        print(f"    {info.path}")
        if args.verbose and info.trained_on:
            print(f"    trained on: {info.trained_on}")
    if not found:
        print("no models found")
    print(f"(user models folder: {user_models_dir()})")
    return 0


def _add_models(sub: Any) -> None:
    p = sub.add_parser("models", help="list the packaged and your trained models")
    p.add_argument("-v", "--verbose", action="store_true", help="also say what each was "
                   "trained on")
    p.set_defaults(func=_cmd_models)


# ---------------------------------------------------------------------- train
def _cmd_train(args: argparse.Namespace) -> int:
    from .core.outputs import check_folder_writable, check_outputs, exclusive_lock

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
    check_outputs([*args.images, *args.labels, args.start], [("model", out)])
    # before any training: a folder that cannot be written would lose the whole run, and
    # a second `train -o` of the same file must not mix with this one
    check_folder_writable(out.parent, "the model")
    if args.checkpoint_dir:
        check_folder_writable(args.checkpoint_dir, "checkpoints")
    with exclusive_lock(out, "training a model into"):
        return _train_locked(args, out, max_steps, max_time)


def _train_locked(args: argparse.Namespace, out: Path, max_steps: int | None,
                  max_time: float | None) -> int:
    from tqdm import tqdm

    from .core import save_model
    from .core.outputs import OutputExistsError
    from .core.training import iter_train
    from .io import read_image

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
                post["kept val F1"] = f"{p.best_val_f1:.3f}"
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
    try:
        save_model(result.model, out, overwrite=args.overwrite)
    except OutputExistsError:  # created meanwhile by something else: keep both
        kept = out
        out = out.with_name(f"{out.stem}-{time.strftime('%Y%m%d-%H%M%S')}{out.suffix}")
        save_model(result.model, out, overwrite=False)
        print(f"napari-unet train: {kept} appeared during training; the new model is "
              f"written to {out} instead", file=sys.stderr)
    f1 = "" if result.best_val_f1 is None else (
        f"; kept the model of step {result.best_step} (validation F1 "
        f"{result.best_val_f1:.3f})")
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
    p.add_argument("--batch-size", type=int,
                   help="patches per step (default: automatic)")
    p.add_argument("--patch", type=int,
                   help="target pixels per patch side (default: automatic)")
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
    extra: dict[str, Any] = {"layout": "clustered"} if args.kind == "nuclei" and args.clustered \
        else {}
    if args.photons is not None:
        if args.kind == "phase" or not args.photons > 0:
            raise CliError("--photons needs --kind nuclei or membranes and a number above 0, "
                           "e.g. --photons 8 for dim, noisy images")
        extra["photons"] = float(args.photons)
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
    p.add_argument("--photons", type=float, default=None,
                   help="signal: photons per unit of brightness (default: random per image, "
                        "10 to 3000); 5 to 10 gives dim, noisy images, like gentle live imaging")
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
    _add_segment, _add_train, _add_weightmap, _add_sample, _add_evaluate, _add_info, _add_models,
]



# ---------------------------------------------------------- export-bioimageio
def _cmd_export_bioimageio(args: argparse.Namespace) -> int:
    from .core.bioimageio import export_bioimageio

    out = Path(args.output)
    if out.suffix.lower() != ".zip":
        raise CliError(f"cannot write {out}: a bioimage.io package is a .zip file")
    if out.exists() and not args.overwrite:
        raise CliError(f"{out} exists; pass --overwrite to replace it")
    test_image = None
    if args.test_image:
        from .io import read_image

        test_image = np.asarray(read_image(args.test_image))
    try:
        path = export_bioimageio(
            args.model, out, name=args.name, description=args.description,
            authors=args.author or None, test_image=test_image, license=args.license,
            tags=args.tag or (), git_repo=args.git_repo, torchscript=not args.no_torchscript,
        )
    except ImportError as err:
        raise CliError(str(err)) from None
    from bioimageio.spec import __version__ as spec_version

    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): a bioimage.io model package, "
          f"valid for bioimageio.spec {spec_version}")
    return 0


def _add_export_bioimageio(sub: Any) -> None:
    p = sub.add_parser(
        "export-bioimageio",
        help="write a model as a bioimage.io model package (.zip)",
        description="Write a bioimage.io model package (weights, architecture, test image and "
        "output, README, citation) that bioimage.io tools (bioimageio.core, ilastik, "
        "deepImageJ) can run, validated with bioimageio.spec (pip install "
        "\"napari-unet[bioimageio]\"). napari-unet loads it back with --model PACKAGE.zip.",
    )
    p.add_argument("model", help="model file, or 'default'")
    p.add_argument("-o", "--output", required=True, help="package to write (.zip)")
    p.add_argument("--name", help="model name (letters, digits, spaces, _+-(); default: from "
                   "the model)")
    p.add_argument("--description", help="one-paragraph description (default: generated)")
    p.add_argument("--author", action="append", metavar="NAME",
                   help="author (repeat for several; default: napari-unet contributors)")
    p.add_argument("--test-image", help="image for the test input and cover (default: a "
                   "generated nuclei image)")
    p.add_argument("--license", default="CC-BY-4.0", help="SPDX license of the package "
                   "(default CC-BY-4.0)")
    p.add_argument("--tag", action="append", metavar="TAG", help="extra tag (repeatable)")
    p.add_argument("--git-repo", help="URL of the model's repository")
    p.add_argument("--no-torchscript", action="store_true",
                   help="leave out the TorchScript weights (smaller package)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing package")
    p.set_defaults(func=_cmd_export_bioimageio)


COMMANDS.append(_add_export_bioimageio)


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


#: How to ask for less memory, per command.
_LESS_MEMORY = {
    "segment": "use a smaller --grow, --tile, --block or --batch-size, or a smaller image",
    "train": "use a smaller --patch or --batch-size, or smaller images",
}


def _is_memory_error(err: BaseException) -> bool:
    """A MemoryError, or PyTorch's "can't allocate memory" / "out of memory" errors."""
    if isinstance(err, MemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text)


def _memory_message(args: argparse.Namespace, err: BaseException) -> str:
    """One line for an out-of-memory error: the size asked for, and how to ask for less."""
    import re

    text = str(err)
    asked = ""
    found = re.search(r"allocate ([0-9.]+ ?[KMGTP]?i?B)\b", text)
    if found:
        asked = f" ({found.group(1)} asked for)"
    else:
        found = re.search(r"allocate (\d+) bytes", text)
        if found:
            asked = f" ({int(found.group(1)) / 2**30:,.1f} GiB asked for)"
    fix = _LESS_MEMORY.get(args.command, "use smaller inputs")
    return f"not enough memory{asked}: {fix}"


class Terminated(KeyboardInterrupt):
    """SIGTERM (what a cluster's scheduler sends at a job's time limit), as an interruption."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-unet`` console script; returns the exit status."""
    import signal
    import threading

    parser = build_parser()
    args = parser.parse_args(argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM stops like Ctrl+C: unfinished outputs are removed, training keeps its best
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.func(args) or 0)
    except Terminated:
        print("napari-unet: stopped (SIGTERM); unfinished outputs were not kept",
              file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("napari-unet: interrupted", file=sys.stderr)
        return 130
    except (CliError, ValueError, TypeError, OSError, RuntimeError, MemoryError) as err:
        if os.environ.get("NAPARI_UNET_DEBUG"):
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if _is_memory_error(err):
            message = _memory_message(args, err)
        print(f"napari-unet {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
