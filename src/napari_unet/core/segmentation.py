"""The ``segment`` entry point: a model file or network, an image, and instance labels out.

Above the engine: :func:`segment` loads the model and runs
:func:`~napari_unet.core.cellsize.iter_segment_sized` (the cell size: the image
as it is, or rescaled for its cells), which runs
:func:`~napari_unet.core.blocks.iter_segment_blocks` (tiled prediction block by
block, then :mod:`~napari_unet.core.decode`'s rule), with the settings of a
:class:`~napari_unet.core.options.SegmentOptions`.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from ._utils import run_to_completion
from .cellsize import iter_segment_sized
from .loading import load_model
from .model import UNet
from .options import SegmentOptions, SegmentProgress

__all__ = ["iter_segment", "segment"]


def iter_segment(
    image: Any,
    model: UNet | str | None = None,
    options: SegmentOptions | None = None,
    *,
    return_probabilities: bool = False,
    out: Any = None,
    probabilities_out: Any = None,
    client: Any = None,
    **settings: Any,
) -> Generator[SegmentProgress, None, Any]:
    """Generator form of :func:`segment`: yields :class:`SegmentProgress`, returns the labels.

    Closing the generator (``gen.close()``) stops between two batches of tiles.
    """
    options = SegmentOptions.merge(options, settings, caller="iter_segment")
    net = load_model("default" if model is None else model)
    probabilities: Any = probabilities_out
    if probabilities is None and return_probabilities:
        probabilities = True
    result = yield from iter_segment_sized(image, net, options, probabilities=probabilities,
                                           out=out, client=client)
    if return_probabilities:
        return result.labels, result.probabilities
    return result.labels


def segment(
    image: Any,
    model: UNet | str | None = None,
    options: SegmentOptions | None = None,
    *,
    return_probabilities: bool = False,
    out: Any = None,
    probabilities_out: Any = None,
    client: Any = None,
    **settings: Any,
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
    options : SegmentOptions, optional
        The settings below as one record; keyword settings are put over it.
    return_probabilities : bool
        Also return the ``(n_classes, *spatial)`` probabilities.
    out : array-like or path, optional
        Where to write the labels: a writable int32 array of the image's spatial
        shape (numpy, memory-mapped, zarr), or the path of a new zarr array
        (chunked like the blocks). By default a new numpy array.
    probabilities_out : array-like or path, optional
        Where to write the probabilities, likewise (float32), so that they need
        not fit in memory; they are returned if ``return_probabilities`` is set.
    client : dask.distributed.Client or str, optional
        Run the blocks on this dask cluster (or the scheduler at this address).
        Its workers must reach the image and ``out`` (a shared file system or
        object store); without ``out`` a temporary zarr array on this machine
        is used, which only a local cluster reaches.
    **settings
        The fields of :class:`SegmentOptions`: ``tile_shape``, ``batch_size``,
        ``device``, ``axes`` (as for :func:`~napari_unet.predict_tiled`);
        ``threshold``, ``min_size``, ``grow`` (as for
        :func:`probabilities_to_labels`; ``grow`` defaults to the model's
        training gap plus one); ``block_shape`` (output pixels per block,
        rounded down to whole tiles, default about 2048: what is held in memory
        at once, and the unit of parallel work); ``split`` (cutting merged
        nuclei apart); ``diameter`` (the cells' size in pixels: the image is
        rescaled to the model's cell size; by default, cells that come out
        smaller than half the model's, or larger than twice it, are tried
        rescaled, see :class:`SegmentOptions`; 0 segments the image as it is).

    Returns
    -------
    array or (array, array)
        int32 labels of the image's spatial shape (0 = background): ``out`` if
        given, else a numpy array; and the probabilities if asked for.

    Examples
    --------
    >>> import numpy as np
    >>> net = UNet(depth=2, base_channels=4)
    >>> image = np.random.default_rng(0).integers(0, 255, (60, 90), dtype=np.uint8)
    >>> whole = segment(image, net, tile_shape=48)
    >>> in_blocks = segment(image, net, SegmentOptions(tile_shape=48, block_shape=32))
    >>> whole.dtype, bool((whole == in_blocks).all())
    (dtype('int32'), True)
    """
    return run_to_completion(
        iter_segment(
            image, model, options, return_probabilities=return_probabilities, out=out,
            probabilities_out=probabilities_out, client=client, **settings,
        )
    )
