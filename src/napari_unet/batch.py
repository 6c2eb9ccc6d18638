"""Segmenting many files: which inputs, which outputs, one summary per file (no Qt, no napari).

Used by ``napari-unet segment`` with several inputs, a folder or a glob; also
usable from scripts::

    from napari_unet.batch import expand_inputs, output_path, segment_file
    for image in expand_inputs(["data/*.tif"]):
        print(segment_file(image, output_path(image, "labels/", "zarr"), "my_model.pt").summary())

Each file is read, segmented block by block (:func:`napari_unet.segment`) and
written to TIFF or OME-Zarr; OME-Zarr is written block by block, so its memory
does not grow with the image. A file whose output exists is skipped unless
``overwrite`` is set, and a file that fails is reported without stopping the
others. On a dask cluster (:func:`iter_segment_files` with a client) each file
is one task.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .core.options import SegmentOptions, SegmentProgress

__all__ = [
    "FileResult", "expand_inputs", "output_path", "iter_segment_file", "segment_file",
    "iter_segment_files", "IMAGE_SUFFIXES",
]

#: File name endings read as images when a folder is given.
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy", ".zarr")
_GLOB = set("*?[")


@dataclass
class FileResult:
    """What happened to one input file.

    ``status`` is ``"done"``, ``"skipped"`` (the output exists) or ``"failed"``
    (``error`` says why, in one line).
    """

    input: str
    output: str
    status: str
    n_cells: int = 0
    seconds: float = 0.0
    error: str = ""
    #: how the image's axes were chosen, for images of 3 or more dimensions, and how it
    #: was rescaled for its cells' size
    note: str = ""

    def summary(self) -> str:
        """One line for the batch report."""
        if self.status == "done":
            note = f" ({self.note})" if self.note else ""
            return (f"{self.input}: {self.n_cells} cells in {self.seconds:.1f} s -> "
                    f"{self.output}{note}")
        if self.status == "skipped":
            return f"{self.input}: skipped, {self.output} exists (--overwrite replaces it)"
        return f"{self.input}: failed: {self.error}"


def _is_image_entry(path: Path) -> bool:
    name = path.name.lower()
    if name.startswith("."):
        return False
    if path.is_dir():
        from .io import is_zarr

        return is_zarr(path)
    return name.endswith(IMAGE_SUFFIXES)


def expand_inputs(items: Sequence[str | os.PathLike]) -> list[Path]:
    """Input files from file names, folders (the images in them) and glob patterns.

    Order is kept (folders and patterns sorted), duplicates dropped. A file
    that does not exist is kept, to be reported as failed; a folder without
    images or a pattern that matches nothing is an error.

    >>> expand_inputs(["a.tif", "a.tif", "b.tif"])
    [PosixPath('a.tif'), PosixPath('b.tif')]
    """
    found: list[Path] = []
    for item in items:
        text = str(item)
        path = Path(text)
        if path.is_dir() and not _is_image_entry(path):
            entries = sorted(p for p in path.iterdir() if _is_image_entry(p))
            if not entries:
                raise ValueError(
                    f"no images in the folder {path} (looked for {', '.join(IMAGE_SUFFIXES)})"
                )
            found.extend(entries)
        elif not path.exists() and _GLOB & set(text):
            matches = sorted(Path(m) for m in glob.glob(text))
            matches = [m for m in matches if m.is_file() or _is_image_entry(m)]
            if not matches:
                raise ValueError(f"no files match {text}")
            found.extend(matches)
        else:
            found.append(path)
    unique: list[Path] = []
    seen: set[Path] = set()
    for path in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def _stem(path: Path) -> str:
    name = path.name
    for ending in (".ome.zarr", ".ome.tiff", ".ome.tif"):
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return path.stem


def output_path(input: str | os.PathLike, folder: str | os.PathLike, fmt: str = "tif",
                what: str = "labels") -> Path:
    """Where the result of ``input`` goes in ``folder``: ``NAME_labels.tif`` or ``.ome.zarr``.

    >>> output_path("data/cells.ome.tif", "out", "zarr")
    PosixPath('out/cells_labels.ome.zarr')
    """
    if fmt not in ("tif", "zarr"):
        raise ValueError(f"unknown output format {fmt!r}: use 'tif' or 'zarr'")
    ending = ".tif" if fmt == "tif" else ".ome.zarr"
    return Path(folder) / f"{_stem(Path(input))}_{what}{ending}"


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _check_writable(path: Path) -> None:
    from .io import is_zarr

    if not (is_zarr(path) or path.suffix.lower() in (".tif", ".tiff", ".npy")):
        raise ValueError(f"cannot write {path}: use a .tif, .npy or .zarr (OME-Zarr) file name")


def iter_segment_file(
    input: str | os.PathLike,
    output: str | os.PathLike,
    model: Any,
    options: SegmentOptions | None = None,
    *,
    overwrite: bool = False,
    probabilities: str | os.PathLike | None = None,
    overlay: str | os.PathLike | None = None,
    client: Any = None,
    **settings: Any,
) -> Generator[SegmentProgress, None, FileResult]:
    """Segment one file into ``output`` (TIFF, ``.npy`` or OME-Zarr); yields progress.

    Returns a :class:`FileResult`: ``"skipped"`` if ``output`` exists and not
    ``overwrite``. Errors (an unreadable file, a wrong shape) are raised; see
    :func:`segment_file` for the form that reports them. ``options`` (a
    :class:`~napari_unet.core.options.SegmentOptions`) and keyword ``settings``
    (``tile_shape``, ``block_shape``, ``device``, ``threshold``, ...) say how to
    segment, as for :func:`napari_unet.segment`; ``client`` runs the blocks on a
    dask cluster.
    """
    from .core.blocks import plan_segmentation
    from .core.cellsize import describe_scale, iter_segment_sized
    from .core.loading import load_model
    from .core.outputs import OutputSet, check_outputs
    from .io import create_ome_zarr, is_zarr, read_image, write_image, write_overlay

    options = SegmentOptions.merge(options, settings, caller="segment_file")

    input, output = Path(input), Path(output)
    start = time.perf_counter()
    named = [("labels", output), ("probabilities", probabilities), ("overlay", overlay)]
    check_outputs([input], named)
    if output.exists() and not overwrite:
        # complete: outputs only get their name once written to the end
        return FileResult(str(input), str(output), "skipped")
    extras = [Path(p) for p in (probabilities, overlay) if p is not None]
    _check_writable(output)
    if probabilities is not None:
        _check_writable(Path(probabilities))
    if overlay is not None and Path(overlay).suffix.lower() != ".png":
        raise ValueError(f"cannot write the overlay {overlay}: use a .png file name")
    for path in extras:
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    net = load_model(model)
    image = read_image(input)
    options, note = axes_of_file(input, image.shape, net.in_channels, options)
    plan = plan_segmentation(image, net, options)  # the blocks, once: zarr chunks follow them
    spatial = plan.layout.spatial_shape
    axes = "zyx"[3 - len(spatial):]
    out: Any = None
    probs_out: Any = None if probabilities is None else True
    # everything is written under temporary sibling names and renamed at the end: an
    # interrupted run leaves no output that a rerun would skip, and an old output is
    # replaced only once the new one is complete
    with OutputSet(overwrite=overwrite) as outputs:
        tmp_output = outputs.add(output)
        tmp_probs = None if probabilities is None else outputs.add(probabilities)
        tmp_overlay = None if overlay is None else outputs.add(overlay)
        if is_zarr(output):
            out = create_ome_zarr(tmp_output, spatial, plan.chunks(), np.int32, axes,
                                  name=_stem(output))
        if tmp_probs is not None and is_zarr(probabilities):
            probs_out = create_ome_zarr(tmp_probs, (net.n_classes, *spatial),
                                        plan.chunks((net.n_classes,)), np.float32, "c" + axes,
                                        labels=False, name=_stem(Path(probabilities)))
        # in memory, the cells' size may call for a rescaled second pass
        result = yield from iter_segment_sized(image, net, options, probabilities=probs_out,
                                               out=out, client=client, plan=plan)
        if out is None:
            write_image(tmp_output, result.labels)
        if tmp_probs is not None and not is_zarr(probabilities):
            write_image(tmp_probs, result.probabilities)
        if tmp_overlay is not None:
            write_overlay(tmp_overlay, np.asarray(image), np.asarray(result.labels))
        outputs.commit()
    note = "; ".join(n for n in (note, describe_scale(result.scale, options.diameter)) if n)
    return FileResult(str(input), str(output), "done", int(result.n_cells),
                      time.perf_counter() - start, note=note)


def axes_of_file(path: str | os.PathLike, shape: Sequence[int], in_channels: int,
                 options: SegmentOptions) -> tuple[SegmentOptions, str]:
    """The axes of an image file of 3 or more dimensions, and a note saying how they were
    chosen: ``options.axes`` when given; else the axes the file declares (ImageJ or OME
    metadata, :func:`~napari_unet.io.file_axes`); else the guess of
    :meth:`~napari_unet.core.tiling.ImageLayout.infer`, which the note names together with
    how to choose otherwise (``--axes``)."""
    from dataclasses import replace

    from .core.tiling import ImageLayout
    from .io import file_axes

    if options.axes is not None or len(shape) < 3:
        return options, ""
    found = file_axes(path)
    if found is not None and len(found) == len(shape):
        return replace(options, axes=found), f"axes {found} from the file's metadata"
    try:
        guessed = ImageLayout.infer(shape, in_channels).axes
    except ValueError:
        return options, ""  # segmenting says what is wrong with the shape
    return options, (f"the file does not say its axes: shape {tuple(int(n) for n in shape)} "
                     f"read as {guessed}; pass --axes (e.g. zyx, cyx or yxc) if that is wrong")


def segment_file(
    input: str | os.PathLike, output: str | os.PathLike, model: Any, **kwargs: Any
) -> FileResult:
    """:func:`iter_segment_file` run to the end; an error becomes a ``"failed"`` result.

    Safe to run in a dask worker: it uses the worker's threads for torch and
    reads lazy images in its own thread.
    """
    import dask

    from .core._utils import run_to_completion
    from .core.distributed import Shared, worker_setup

    worker_setup()
    if isinstance(model, Shared):
        model = model.value
    start = time.perf_counter()
    try:
        with dask.config.set(scheduler="synchronous"):
            return run_to_completion(iter_segment_file(input, output, model, **kwargs))
    except Exception as err:  # noqa: BLE001 - reported per file; the batch goes on
        return FileResult(str(input), str(output), "failed", seconds=time.perf_counter() - start,
                          error=_one_line(err))


def iter_segment_files(
    jobs: Sequence[tuple[Any, ...]],
    model: Any,
    *,
    client: Any = None,
    **kwargs: Any,
) -> Generator[FileResult, None, None]:
    """Segment files; yields a :class:`FileResult` per file as it ends.

    ``jobs`` are ``(input, output)`` pairs, or ``(input, output, options)``
    with options of that file only (e.g. its ``probabilities`` path). Without
    ``client`` the files are done here one after the other; with a
    ``dask.distributed.Client`` (or a scheduler address) each file is one task
    on the cluster, and results come in the order the files finish. The
    workers must reach the files. ``kwargs`` go to :func:`iter_segment_file`.
    """
    from .core.loading import load_model

    net = load_model(model)
    specs = [(str(job[0]), str(job[1]), {**kwargs, **(job[2] if len(job) > 2 else {})})
             for job in jobs]
    if client is None:
        for input, output, options in specs:
            yield segment_file(input, output, net, **options)
        return
    from .core.distributed import Shared, connect, submit_all

    with connect(client) as dask_client:
        shared = dask_client.scatter(Shared(net), broadcast=True)
        arguments = [(i, o, shared, options) for i, o, options in specs]
        for _, result in submit_all(dask_client, _file_task, arguments):
            yield result


def _file_task(input: str, output: str, model: Any, kwargs: dict) -> FileResult:
    """One file in a dask worker (module level, so workers can import it)."""
    return segment_file(input, output, model, **kwargs)
