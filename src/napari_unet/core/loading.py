"""Loading a model, whatever its file: the one entry point above both formats.

:func:`load_model` reads napari-unet model files (:mod:`.checkpoints`) and
bioimage.io packages written by napari-unet (:mod:`.bioimageio`); it sits above
both modules, so neither needs the other to load a model.
"""

from __future__ import annotations

import os
from pathlib import Path

from .bioimageio import is_bioimageio_package, read_bioimageio_package
from .checkpoints import place_model, read_model
from .model import UNet

__all__ = ["load_model"]


def load_model(path: str | os.PathLike | UNet = "default", device: str | None = None) -> UNet:
    """Read a model file written by :func:`~napari_unet.save_model`, or a bioimage.io package.

    Parameters
    ----------
    path : str, path-like or UNet
        A model file, a bioimage.io package (``.zip`` or folder) written by
        :func:`napari_unet.export_bioimageio`, or ``"default"`` for the model
        shipped with the plugin. A UNet is returned as it is.
    device : str, optional
        Where to put the weights (default: the CPU).

    Returns
    -------
    UNet
        The network in evaluation mode, with ``normalization``, ``classes`` and
        ``metadata`` set from the file.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    ModelFileError
        If the file is damaged, truncated or not a napari-unet model (or a
        bioimage.io package that napari-unet did not write).
    """
    if not isinstance(path, UNet) and str(path) != "default" and is_bioimageio_package(
            Path(path)):  # a .zip (or folder) from export_bioimageio
        return place_model(read_bioimageio_package(path), device)
    return read_model(path, device)
