"""Model files: one file with the weights, the architecture, the normalisation,
the meaning of the classes and the training record.

A model file is a ``torch.save`` dictionary of tensors and plain values only,
loaded with ``weights_only=True``: opening a model file never runs code from it.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .model import (
    MAX_PARAMETERS,
    UNet,
    model_from_dict,
    model_to_dict,
    non_finite_weights,
    place_model,
)
from .outputs import open_atomic

__all__ = [
    "ModelFileError",
    "save_model",
    "atomic_torch_save",
    "jsonable",
    "stored_metadata",
    "read_model",
    "ready_model",
    "zip_but_not_torch",
    "packaged_model_path",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAX_MODEL_BYTES",
    "check_torch_file",
    "check_finite",
]

#: The most bytes a model file may unpack to: the weights of :data:`MAX_PARAMETERS`
#: float32 parameters, plus room for the description.
MAX_MODEL_BYTES = 4 * MAX_PARAMETERS + (64 << 20)
#: The most bytes of the pickled description (``data.pkl``) of a torch file.
MAX_PICKLE_BYTES = 16 << 20

FORMAT_NAME = "napari-unet-model"
FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A file that is not a (readable) napari-unet model."""


def packaged_models_dir() -> Path:
    """The folder of the models shipped inside the package."""
    return Path(str(resources.files("napari_unet"))) / "models"


def packaged_model_path(name: str = "default") -> Path | None:
    """Path of a model shipped inside the package, or None if there is none."""
    path = packaged_models_dir() / f"{name}.pt"
    return path if path.is_file() else None


def jsonable(value: Any, what: str) -> Any:
    """``value`` as plain JSON values (numpy scalars, arrays and paths made Python ones).

    Raises a ValueError naming ``what`` if it holds anything else.
    """
    try:
        return json.loads(json.dumps(value, default=_to_builtin))
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{what} must be plain values (numbers, strings, lists, dicts): {err}"
        ) from None


def _to_builtin(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not a plain value")


def save_model(
    model: UNet, path: str | os.PathLike, *, weights_dtype: str = "float32",
    overwrite: bool = True, **metadata: Any
) -> Path:
    """Write a model file.

    Parameters
    ----------
    model : UNet
        The network. Its ``normalization``, ``classes`` and ``metadata``
        attributes are stored with it.
    path : str or path-like
        Where to write. The file is written to a temporary name and renamed, so
        a crash never leaves a half-written model behind.
    weights_dtype : {"float32", "float16"}
        Precision of the stored floating-point weights. ``"float16"`` halves the
        file (used for the packaged model); :func:`load_model` always returns a
        float32 network.
    overwrite : bool
        Replace an existing file (only once the new one is complete). False
        creates the file exclusively: an existing file raises ``FileExistsError``.
    **metadata
        Extra plain values stored with the model (merged over ``model.metadata``),
        for example what it was trained on.

    Returns
    -------
    pathlib.Path
        The path written.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> net = UNet(depth=2, base_channels=4)
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny.pt"
    >>> _ = save_model(net, path, trained_on="nothing yet")
    >>> read_model(path).metadata["trained_on"]
    'nothing yet'
    """
    if not isinstance(model, UNet):
        raise TypeError(f"save_model needs a napari_unet.UNet, not {type(model).__name__}")
    if weights_dtype not in ("float32", "float16"):
        raise ValueError(f"weights_dtype must be 'float32' or 'float16', not {weights_dtype!r}")
    store = torch.float16 if weights_dtype == "float16" else torch.float32
    path = Path(path)
    payload = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
               **model_to_dict(model, store)}
    payload["metadata"] = stored_metadata({**payload["metadata"], **metadata})
    return atomic_torch_save(payload, path, overwrite=overwrite)


def stored_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """A model's metadata as a file stores it: plain values, without ``"path"``.

    Where a model was read from is set when it is read (a copy saved elsewhere would
    otherwise name the file it was copied from); model files and bioimage.io packages
    both store this.
    """
    return jsonable({k: v for k, v in metadata.items() if k != "path"}, "model metadata")


def atomic_torch_save(payload: Any, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """``torch.save`` to a temporary sibling, fsync, then rename: never a half-written file.

    The file gets the permissions of the umask (normally readable by all), and
    with ``overwrite=False`` it is created exclusively: an existing ``path``
    raises :class:`~napari_unet.core.outputs.OutputExistsError`.
    """
    path = Path(path)
    with open_atomic(path, "wb", overwrite=overwrite) as f:
        torch.save(payload, f)
    return path


def read_model(path: str | os.PathLike | UNet = "default", device: str | None = None) -> UNet:
    """A napari-unet model file (``path``, ``"default"`` or a UNet, returned as it is) as
    :func:`napari_unet.core.loading.load_model` reads it, minus bioimage.io packages: the
    parameters, result and errors are those of that function (a bioimage.io zip given here
    is refused as not a model file)."""
    if isinstance(path, UNet):
        return path
    if str(path) == "default":
        packaged = packaged_model_path("default")
        if packaged is None:
            raise ModelFileError(
                "no pretrained default model ships with this version of napari-unet yet; "
                "pass a model file (for example one written by save_model or "
                "`napari-unet train`)"
            )
        path = packaged
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    check_torch_file(path, MAX_MODEL_BYTES, "model file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure here means "not a model file"
        if zip_but_not_torch(path):
            raise ModelFileError(
                f"{path} is a zip archive, but neither a napari-unet model file nor a "
                "bioimage.io model package (it has no rdf.yaml)"
            ) from None
        raise ModelFileError(
            f"{path} is not a readable model file (damaged, truncated, another format, or "
            f"it holds code, which napari-unet never runs){torch_load_reason(path, err)}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise ModelFileError(
            f"{path} is not a napari-unet model file (a model file written by save_model "
            "holds the weights with the architecture and normalisation; a bare PyTorch "
            "state dict or another tool's checkpoint cannot be used directly)"
        )
    if int(payload.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} was written by a newer napari-unet (format version "
            f"{payload['format_version']}); update napari-unet to read it"
        )
    try:
        model = model_from_dict(payload)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ModelFileError(
            f"{path} is a damaged napari-unet model file: {str(err).splitlines()[0]}"
        ) from None
    check_finite(model, path)
    model.metadata["path"] = str(path)
    return ready_model(model, device)


def check_finite(model: UNet, path: Any) -> None:
    """Refuse a model whose weights hold NaN or infinite values (it cannot segment)."""
    bad = non_finite_weights(model)
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise ModelFileError(
            f"{path} holds NaN or infinite weights ({bad[0]}{more}): it cannot segment; use a "
            "model saved before its training diverged, or train again"
        )


def check_torch_file(path: Path, max_bytes: int, what: str) -> None:
    """Refuse a file that would unpack to more than ``max_bytes``, before reading it.

    A torch file is a zip archive: the sizes its entries declare are checked
    (a small file can declare huge entries); other files by their size.
    """
    import zipfile

    try:
        size = path.stat().st_size
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                infos = zf.infolist()
            total = sum(i.file_size for i in infos)
            pickle = max((i.file_size for i in infos if i.filename.endswith(".pkl")),
                         default=0)
        else:
            total, pickle = size, 0
    except (OSError, zipfile.BadZipFile, ValueError):
        return  # torch.load says what is wrong with it
    if total > max_bytes or pickle > MAX_PICKLE_BYTES:
        raise ModelFileError(
            f"{path} would unpack to {max(total, pickle) / 1e6:,.0f} MB, more than a "
            f"napari-unet {what} can hold ({max_bytes / 1e6:,.0f} MB): it is damaged or not "
            f"a napari-unet {what}"
        )


def torch_load_reason(path: Path, err: BaseException) -> str:
    """``": reason"`` for a failed ``torch.load``, without PyTorch's advice on weights_only."""
    text = str(err).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        head = b""
    if not head.startswith((b"PK", b"\x80")):
        return ": it is not a PyTorch file"
    if "weights only load failed" in text.lower() or "weights_only" in text:
        detail = next((ln.split(":", 1)[1].strip() for ln in lines
                       if ln.startswith("WeightsUnpickler error:")), "")
        return f": it holds objects other than weights ({detail[:150]})" if detail else (
            ": it holds objects other than weights")
    reason = lines[0] if lines else type(err).__name__
    return f": {reason.split('. ')[0][:200]}"


def ready_model(model: UNet, device: str | None) -> UNet:
    """A model just read, in evaluation mode, and on ``device`` when one is given (with
    that device's weight layout: :func:`~napari_unet.core.model.place_model`)."""
    model.eval()
    if device is not None:
        from ._utils import resolve_device

        place_model(model, resolve_device(device))
    return model


def zip_but_not_torch(path: str | os.PathLike) -> bool:
    """A zip archive that is not a ``torch.save`` file (which has a ``*/data.pkl``)."""
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as zf:
            return not any(n.endswith("data.pkl") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
