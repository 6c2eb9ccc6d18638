"""Loading a model, whatever its file: the one entry point above both formats.

:func:`load_model` reads napari-unet model files (:mod:`.checkpoints`) and
bioimage.io packages written by napari-unet (:mod:`.bioimageio`, which holds the
dispatch between the two, :func:`~.bioimageio.read_model_or_package`, and uses it
to export). Checkpoints never import bioimageio, so there is no import circle.
"""

from __future__ import annotations

import os

from .bioimageio import read_model_or_package
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
    return read_model_or_package(path, device)
