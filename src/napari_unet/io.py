"""Reading and writing images for the command line and scripts (no Qt, no napari).

TIFF through tifffile, PNG/JPEG through imageio, ``.npy`` through numpy and
zarr stores (OME-Zarr included) lazily through zarr (when installed); labels and
probabilities too large for memory are written as OME-Zarr, block by block.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .core.outputs import atomic_output, remove_path

__all__ = [
    "read_image", "write_image", "label_overlay", "write_overlay", "create_ome_zarr", "is_zarr",
    "remove_output", "LazyTiff", "file_axes",
]

_TIFF = (".tif", ".tiff")

#: TIFF files larger than this are read window by window (:class:`LazyTiff`), not loaded.
LAZY_TIFF_BYTES = 1 << 30


class LazyTiff:
    """A TIFF file read window by window through tifffile's zarr interface.

    For TIFFs larger than memory (whole-slide scans, mosaics): indexing reads
    only the tiles or strips needed. The first (full-resolution) level of a
    pyramidal TIFF is used. It pickles as its path, so dask workers open the
    file themselves.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self._array: Any = None
        array = self._open()
        self.shape = tuple(array.shape)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def _open(self) -> Any:
        if self._array is None:
            import tifffile
            import zarr

            opened = zarr.open(tifffile.imread(self.path, aszarr=True), mode="r")
            if not hasattr(opened, "shape"):  # a pyramid: its first level
                opened = opened[sorted(opened.array_keys())[0]]
            self._array = opened
        return self._array

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self._open()[key])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self[...]
        return data if dtype is None else data.astype(dtype)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "shape": self.shape, "dtype": self.dtype, "ndim": self.ndim}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._array = None

    def __repr__(self) -> str:
        return f"LazyTiff({self.path!r}, shape={self.shape}, dtype={self.dtype})"
_PICTURES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


#: TIFF axis letters (tifffile's series axes, from ImageJ or OME metadata) as napari-unet's
#: axes: planes (Z, and time or a sequence when there is no Z), channels (C, or S for the
#: samples of a colour pixel), rows and columns.
_TIFF_AXES = {"Y": "y", "X": "x", "Z": "z", "C": "c", "S": "c", "T": "z", "I": "z"}


def file_axes(path: str | os.PathLike) -> str | None:
    """The axes a TIFF file declares in its ImageJ or OME metadata, as napari-unet writes
    them (e.g. ``"cyx"``, ``"zyx"``, ``"yxc"``); None when the file says nothing usable.

    Plain TIFFs without such metadata (tifffile then reports a generic axis ``Q``), axes
    napari-unet cannot segment along, and files that are not TIFFs give None.
    """
    path = Path(path)
    if path.suffix.lower() not in _TIFF or not path.is_file():
        return None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not (tif.is_imagej or tif.is_ome) or not tif.series:
                return None
            axes = tif.series[0].axes.upper()
    except Exception:  # noqa: BLE001 - unreadable files are reported by read_image
        return None
    if any(a not in _TIFF_AXES for a in axes):
        return None
    mapped = "".join(_TIFF_AXES[a] for a in axes)
    return mapped if len(set(mapped)) == len(mapped) else None


def read_image(path: str | os.PathLike) -> Any:
    """Read an image file; zarr stores and TIFFs over 1 GiB (:class:`LazyTiff`) stay lazy.

    Raises
    ------
    FileNotFoundError
        If the path does not exist.
    ValueError
        If the file cannot be read as an image, with the reason.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in _TIFF:
            import tifffile

            if path.stat().st_size > LAZY_TIFF_BYTES:
                try:
                    return LazyTiff(path)
                except ImportError:  # no zarr: read it whole
                    pass
            _check_tiff_pages(path)
            return tifffile.imread(path)
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if is_zarr(path):
            import zarr

            store = zarr.open(str(path), mode="r")
            if hasattr(store, "shape"):
                return store
            first = sorted(store.array_keys())
            if not first:
                raise ValueError("the zarr group holds no array")
            return store[first[0]]
        if suffix in _PICTURES:
            import imageio.v3 as iio

            return iio.imread(path)
    except (ValueError, OSError, KeyError, TypeError) as err:
        if "holds no image" in str(err):
            raise
        raise ValueError(f"cannot read {path} as an image: {err}") from None
    raise ValueError(
        f"cannot read {path}: unknown image format {suffix or '(no extension)'}; "
        "use TIFF, PNG, JPEG, .npy or zarr"
    )


def _check_tiff_pages(path: Path) -> None:
    """Refuse a TIFF without pages in one line (tifffile would only log a warning)."""
    import logging

    import tifffile

    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with tifffile.TiffFile(path) as tif:
            empty = not tif.pages
    finally:
        logger.setLevel(level)
    if empty:
        raise ValueError(f"the TIFF file {path} holds no image (0 pages); save the image again")


def is_zarr(path: str | os.PathLike) -> bool:
    """True for a path named ``*.zarr`` or a folder that holds a zarr array or group."""
    path = Path(path)
    return path.suffix.lower() == ".zarr" or (path.is_dir() and any(
        (path / marker).exists() for marker in (".zarray", "zarr.json", ".zgroup")
    ))


def remove_output(path: str | os.PathLike) -> None:
    """Delete an output file or zarr folder."""
    remove_path(path)


def create_ome_zarr(
    path: str | os.PathLike,
    shape: Sequence[int],
    chunks: Sequence[int],
    dtype: Any,
    axes: str,
    *,
    labels: bool = True,
    name: str | None = None,
) -> Any:
    """A new single-resolution OME-Zarr image (NGFF 0.4) to write into block by block.

    The group at ``path`` holds one array ``"0"`` (zarr format 2, ``/``
    separated chunk keys) and the ``multiscales`` metadata, plus
    ``image-label`` metadata for label images, so OME-Zarr readers (napari
    with napari-ome-zarr, Fiji's MoBIE/n5-viewer, ``ome-zarr-py``) open it.
    Returns the zarr array, filled with zeros. Refuses an existing path.

    Parameters
    ----------
    path : path
        Where to create the group (conventionally ``*.ome.zarr``).
    shape, chunks, dtype
        Of the array.
    axes : str
        One letter per dimension from ``t``, ``c``, ``z``, ``y``, ``x``.
    labels : bool
        Mark it as a label image (integer ids).
    name : str, optional
        The image's name in the metadata (default: the file name).
    """
    try:
        import zarr
    except ImportError:
        raise ImportError(
            "writing OME-Zarr needs zarr: pip install zarr (or napari-unet[io])"
        ) from None
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; pass --overwrite (overwrite=True) to replace it")
    if len(axes) != len(shape) or not set(axes) <= set("tczyx"):
        raise ValueError(f"axes {axes!r} do not describe an array of shape {tuple(shape)}")
    kinds = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
    meta_axes = [{"name": a, "type": kinds[a]} for a in axes]  # no units: pixels
    shape = tuple(int(s) for s in shape)
    chunks = tuple(int(c) for c in chunks)
    if int(zarr.__version__.split(".")[0]) >= 3:
        group = zarr.open_group(str(path), mode="w-", zarr_format=2)
        array = group.create_array(
            name="0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )
    else:  # pragma: no cover - zarr 2
        group = zarr.open_group(str(path), mode="w-")
        array = group.create_dataset(
            "0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0, dimension_separator="/",
        )
    group.attrs["multiscales"] = [{
        "version": "0.4",
        "name": name or path.name.split(".")[0],
        "axes": meta_axes,
        "datasets": [{
            "path": "0",
            "coordinateTransformations": [{"type": "scale", "scale": [1.0] * len(shape)}],
        }],
    }]
    if labels:
        group.attrs["image-label"] = {"version": "0.4"}
    return array


def write_image(path: str | os.PathLike, data: np.ndarray, *, overwrite: bool = False) -> Path:
    """Write TIFF (zlib-compressed), ``.npy`` or PNG; refuses to overwrite unless asked.

    The file is written under a temporary sibling name and renamed when complete
    (:mod:`napari_unet.core.outputs`): an interrupted or failed write never leaves
    a half-written file, and an existing file is replaced only by a complete one.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (*_TIFF, ".npy", ".png"):
        raise ValueError(f"cannot write {path}: use a .tif, .npy or .png file name")
    data = np.asarray(data)
    with atomic_output(path, overwrite=overwrite) as tmp:
        if suffix in _TIFF:
            import tifffile

            tifffile.imwrite(tmp, data, compression="zlib", photometric="minisblack")
        elif suffix == ".npy":
            with open(tmp, "xb") as f:
                np.save(f, data)
        else:
            import imageio.v3 as iio

            iio.imwrite(tmp, data, extension=".png")
    return path


def _display_gray(image: np.ndarray) -> np.ndarray:
    """A 2D float image in [0, 1] for display (percentile-stretched, colour averaged)."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        img = img[..., :3].mean(axis=-1)
    lo, hi = np.percentile(img, [0.5, 99.5]) if img.size else (0.0, 1.0)
    return np.clip((img - lo) / max(float(hi - lo), 1e-12), 0, 1)


def label_overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.35) -> np.ndarray:
    """An RGB uint8 picture of a 2D image with coloured cells and their outlines."""
    from skimage.color import label2rgb
    from skimage.segmentation import find_boundaries

    gray = _display_gray(image)
    labels = np.asarray(labels)
    if gray.shape != labels.shape:
        raise ValueError(f"image {gray.shape} and labels {labels.shape} differ in shape")
    rgb = label2rgb(labels, image=gray, alpha=alpha, bg_label=0, image_alpha=1.0, kind="overlay")
    edges = find_boundaries(labels, mode="inner")
    rgb[edges] = (1.0, 1.0, 0.2)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def write_overlay(
    path: str | os.PathLike, image: Any, labels: np.ndarray, *, overwrite: bool = False
) -> Path:
    """Save :func:`label_overlay` as a PNG (the middle plane of a stack)."""
    image = np.asarray(image)
    labels = np.asarray(labels)
    if labels.ndim == 3:  # a stack: show its middle plane
        mid = labels.shape[0] // 2
        image = image[mid] if image.shape[0] == labels.shape[0] else image
        labels = labels[mid]
    elif image.ndim == 3 and image.shape[-1] not in (3, 4):  # channels first: show the first
        image = image[0]
    return write_image(path, label_overlay(image, labels), overwrite=overwrite)
