"""Reading and writing images for the command line and scripts (no Qt, no napari).

TIFF through tifffile, PNG/JPEG through imageio, ``.npy`` through numpy and
zarr stores lazily through zarr (when installed).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["read_image", "write_image", "label_overlay", "write_overlay"]

_TIFF = (".tif", ".tiff")
_PICTURES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def read_image(path: str | os.PathLike) -> Any:
    """Read an image file; zarr stores stay lazy.

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

            return tifffile.imread(path)
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".zarr" or (path.is_dir() and any(
            (path / marker).exists() for marker in (".zarray", "zarr.json", ".zgroup")
        )):
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
        raise ValueError(f"cannot read {path} as an image: {err}") from None
    raise ValueError(
        f"cannot read {path}: unknown image format {suffix or '(no extension)'}; "
        "use TIFF, PNG, JPEG, .npy or zarr"
    )


def write_image(path: str | os.PathLike, data: np.ndarray, *, overwrite: bool = False) -> Path:
    """Write TIFF (zlib-compressed), ``.npy`` or PNG; refuses to overwrite unless asked."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite (overwrite=True) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix in _TIFF:
        import tifffile

        tifffile.imwrite(path, np.asarray(data), compression="zlib", photometric="minisblack")
    elif suffix == ".npy":
        np.save(path, np.asarray(data))
    elif suffix == ".png":
        import imageio.v3 as iio

        iio.imwrite(path, np.asarray(data))
    else:
        raise ValueError(f"cannot write {path}: use a .tif, .npy or .png file name")
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
