"""From class probabilities to instance labels, and the ``segment`` entry point.

The rule (for a two-class model, background / cell):

1. **Foreground**: pixels whose cell probability is at least ``threshold``.
2. **Cells**: connected components of the foreground with 4-connectivity, so
   that a one-pixel diagonal gap still separates two cells. Components smaller
   than ``min_size`` pixels are dropped.
3. **Grow back over the gaps**: the U-Net is trained on targets in which
   touching cells are separated by thin background gaps (``gap`` pixels carved
   out of the cells). Background pixels within ``grow`` pixels of *two or more*
   different cells are given to the nearest cell, which closes the carved gaps;
   the border between a cell and real background is not moved.

For a three-class model (background / interior / boundary) the cells are the
connected components of the interior class, grown by up to ``grow`` pixels
(``grow·√2`` diagonally, to reach cell corners) into the boundary class.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.measure import label as cc_label
from skimage.morphology import disk
from skimage.segmentation import expand_labels

from ._utils import run_to_completion
from .checkpoints import load_model
from .model import UNet


class SegmentProgress(NamedTuple):
    """Progress of a segmentation: units done and in all, and the phase.

    A unit is one tile predicted (phase ``"predict"``) or one block labelled
    (phase ``"label"``); in phase ``"merge"`` the cells are joined across block
    borders.
    """

    done: int
    total: int
    phase: str = "predict"

__all__ = ["probabilities_to_labels", "iter_segment", "segment", "SegmentProgress"]


def _seeds_and_region(
    probs: np.ndarray, classes: Sequence[str], threshold: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """Seed pixels of the cells, and for three-class models the region they may grow into."""
    names = [c.lower() for c in classes]
    if "interior" in names:
        seeds = probs[names.index("interior")] >= threshold
        region = seeds | (probs[names.index("boundary")] >= threshold) if "boundary" in names \
            else seeds
        return seeds, region
    fg_index = names.index("cell") if "cell" in names else len(names) - 1
    return probs[fg_index] >= threshold, None


def _is_three_class(classes: Sequence[str]) -> bool:
    return "interior" in [c.lower() for c in classes]


def _grow_distance(grow: int, three_class: bool) -> float:
    # boundary pixels at a cell's corners lie diagonally off the interior: reach them too
    return grow * np.sqrt(2) if three_class else float(grow)


def grow_halo(grow: int, classes: Sequence[str]) -> int:
    """Pixels around a pixel that decide how it is grown: the halo a block needs."""
    return int(np.ceil(_grow_distance(max(int(grow), 0), _is_three_class(classes))))


def _grow(labels: np.ndarray, region: np.ndarray | None, grow: int) -> np.ndarray:
    """Grow cells back over the carved gaps (two-class) or into ``region`` (three-class)."""
    if grow <= 0 or not labels.any():
        return labels
    if region is not None:
        expanded = expand_labels(labels, distance=_grow_distance(grow, True))
        return np.where(region & (labels == 0), expanded, labels).astype(np.int32)
    expanded = expand_labels(labels, distance=grow)
    # background pixels that have two different cells within `grow` pixels
    footprint = disk(grow)
    highest = ndi.maximum_filter(labels, footprint=footprint)
    sentinel = np.iinfo(np.int32).max
    lowest = ndi.minimum_filter(np.where(labels == 0, sentinel, labels), footprint=footprint)
    gap = (labels == 0) & (lowest != sentinel) & (highest != lowest)
    return np.where(gap, expanded, labels).astype(np.int32)


def _labels_2d(
    probs: np.ndarray, classes: Sequence[str], threshold: float, min_size: int, grow: int
) -> np.ndarray:
    """Instances of one plane from ``(n_classes, row, col)`` probabilities."""
    seeds, region = _seeds_and_region(probs, classes, threshold)
    labels = cc_label(seeds, connectivity=1).astype(np.int32)
    if min_size > 1 and labels.any():
        sizes = np.bincount(labels.ravel())
        keep = sizes >= min_size
        keep[0] = False
        relabel = np.zeros(len(sizes), dtype=np.int32)
        relabel[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        labels = relabel[labels]
    return _grow(labels, region, grow)


def probabilities_to_labels(
    probabilities: np.ndarray,
    classes: Sequence[str] = ("background", "cell"),
    *,
    threshold: float = 0.5,
    min_size: int = 16,
    grow: int = 2,
) -> np.ndarray:
    """Instance labels from class probabilities (see the module docstring for the rule).

    Parameters
    ----------
    probabilities : numpy.ndarray
        ``(n_classes, row, col)`` or ``(n_classes, plane, row, col)``; planes are
        labelled separately and numbered on from one plane to the next, so ids are
        unique in the whole stack.
    classes : sequence of str
        The meaning of the classes: ``("background", "cell")`` or
        ``("background", "interior", "boundary")``.
    threshold : float
        Probability from which a pixel counts as cell (or interior).
    min_size : int
        Smaller components (in pixels) are dropped as noise.
    grow : int
        Pixels by which cells are grown back over carved gaps (two-class) or into
        the boundary class (three-class); 0 switches growing off.

    Returns
    -------
    numpy.ndarray
        int32 labels, 0 = background, cells numbered from 1.

    Examples
    --------
    Two cells separated by a one-pixel gap are grown back to touch:

    >>> p = np.zeros((2, 5, 9), np.float32)
    >>> p[1, 1:4, 1:4] = p[1, 1:4, 5:8] = 1.0
    >>> p[0] = 1 - p[1]
    >>> probabilities_to_labels(p, min_size=1, grow=1)
    array([[0, 0, 0, 0, 0, 0, 0, 0, 0],
           [0, 1, 1, 1, 1, 2, 2, 2, 0],
           [0, 1, 1, 1, 1, 2, 2, 2, 0],
           [0, 1, 1, 1, 1, 2, 2, 2, 0],
           [0, 0, 0, 0, 0, 0, 0, 0, 0]], dtype=int32)
    """
    probs = np.asarray(probabilities)
    if probs.ndim not in (3, 4) or probs.shape[0] != len(classes):
        raise ValueError(
            f"probabilities must be (n_classes={len(classes)}, [plane,] row, col), "
            f"got shape {probs.shape}"
        )
    if probs.ndim == 3:
        return _labels_2d(probs, classes, threshold, int(min_size), int(grow))
    out = np.zeros(probs.shape[1:], dtype=np.int32)
    next_id = 0
    for z in range(probs.shape[1]):
        lab = _labels_2d(probs[:, z], classes, threshold, int(min_size), int(grow))
        out[z] = np.where(lab > 0, lab + next_id, 0)
        next_id = int(out[z].max(initial=next_id))
    return out


def iter_segment(
    image: Any,
    model: UNet | str | None = None,
    *,
    tile_shape: int | Sequence[int] | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    axes: str | None = None,
    threshold: float = 0.5,
    min_size: int = 16,
    grow: int | None = None,
    return_probabilities: bool = False,
    out: Any = None,
    probabilities_out: Any = None,
    block_shape: int | Sequence[int] | None = None,
    client: Any = None,
) -> Generator[SegmentProgress, None, Any]:
    """Generator form of :func:`segment`: yields :class:`SegmentProgress`, returns the labels.

    Closing the generator (``gen.close()``) stops between two batches of tiles.
    """
    from .blocks import iter_segment_blocks

    net = load_model("default" if model is None else model)
    probabilities: Any = probabilities_out
    if probabilities is None and return_probabilities:
        probabilities = True
    result = yield from iter_segment_blocks(
        image, net, tile_shape=tile_shape, batch_size=batch_size, device=device, axes=axes,
        threshold=threshold, min_size=min_size, grow=grow, out=out, probabilities=probabilities,
        block_shape=block_shape, client=client,
    )
    if return_probabilities:
        return result.labels, result.probabilities
    return result.labels


def segment(
    image: Any,
    model: UNet | str | None = None,
    *,
    tile_shape: int | Sequence[int] | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    axes: str | None = None,
    threshold: float = 0.5,
    min_size: int = 16,
    grow: int | None = None,
    return_probabilities: bool = False,
    out: Any = None,
    probabilities_out: Any = None,
    block_shape: int | Sequence[int] | None = None,
    client: Any = None,
) -> Any:
    """Instance labels of an image: tiled U-Net prediction, then :func:`probabilities_to_labels`.

    The image is processed in blocks of whole tiles, so an image larger than
    memory (dask or zarr) can be segmented into a zarr ``out`` with memory
    that depends on the block size only; the result is the same as segmenting
    it in one piece, ids included: a cell across a block border gets one id,
    and ids run from 1 through the whole image (and stack).

    Parameters
    ----------
    image : array-like
        As for :func:`~napari_unet.predict_tiled` (2D, stack, channels or colour;
        numpy, dask or zarr; or a multiscale list of arrays such as a napari
        multiscale layer's data, whose full-resolution level 0 is segmented).
    model : UNet, str or path, optional
        A network, a model file, or None for the pretrained model shipped with
        the plugin.
    tile_shape, batch_size, device, axes
        Passed to :func:`~napari_unet.predict_tiled`.
    threshold, min_size, grow
        As for :func:`probabilities_to_labels`; ``grow`` defaults to the
        model's training gap plus one.
    return_probabilities : bool
        Also return the ``(n_classes, *spatial)`` probabilities.
    out : array-like or path, optional
        Where to write the labels: a writable int32 array of the image's spatial
        shape (numpy, memory-mapped, zarr), or the path of a new zarr array
        (chunked like the blocks). By default a new numpy array.
    probabilities_out : array-like or path, optional
        Where to write the probabilities, likewise (float32), so that they need
        not fit in memory; they are returned if ``return_probabilities`` is set.
    block_shape : int or (int, int), optional
        Output pixels per block, rounded down to whole tiles (default about
        2048): what is held in memory at once, and the unit of parallel work.
    client : dask.distributed.Client or str, optional
        Run the blocks on this dask cluster (or the scheduler at this address).
        Its workers must reach the image and ``out`` (a shared file system or
        object store); without ``out`` a temporary zarr array on this machine
        is used, which only a local cluster reaches.

    Returns
    -------
    array or (array, array)
        int32 labels of the image's spatial shape (0 = background): ``out`` if
        given, else a numpy array; and the probabilities if asked for.

    Examples
    --------
    >>> net = UNet(depth=2, base_channels=4)
    >>> image = np.random.default_rng(0).integers(0, 255, (60, 90), dtype=np.uint8)
    >>> whole = segment(image, net, tile_shape=48)
    >>> in_blocks = segment(image, net, tile_shape=48, block_shape=32)
    >>> whole.dtype, bool((whole == in_blocks).all())
    (dtype('int32'), True)
    """
    return run_to_completion(
        iter_segment(
            image, model, tile_shape=tile_shape, batch_size=batch_size, device=device,
            axes=axes, threshold=threshold, min_size=min_size, grow=grow,
            return_probabilities=return_probabilities, out=out,
            probabilities_out=probabilities_out, block_shape=block_shape, client=client,
        )
    )
