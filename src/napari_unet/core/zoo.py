"""Where models live: the ones shipped with the plugin and the ones a user trained.

User models go to a per-user folder that follows the platform's conventions
(never the working directory):

* Linux: ``$XDG_DATA_HOME/napari-unet/models`` (``~/.local/share/napari-unet/models``)
* macOS: ``~/Library/Application Support/napari-unet/models``
* Windows: ``%LOCALAPPDATA%\\napari-unet\\models``

The environment variable ``NAPARI_UNET_MODELS_DIR`` overrides it.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoints import FORMAT_NAME, packaged_models_dir

__all__ = [
    "ModelInfo",
    "user_models_dir",
    "list_models",
    "safe_model_name",
    "free_model_path",
    "rename_model",
    "delete_model",
]


def user_models_dir(create: bool = False) -> Path:
    """The folder where models trained by this user are saved."""
    override = os.environ.get("NAPARI_UNET_MODELS_DIR")
    if override:
        path = Path(override)
    elif sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        path = Path(base) / "napari-unet" / "models"
    elif sys.platform == "darwin":
        path = Path.home() / "Library" / "Application Support" / "napari-unet" / "models"
    else:
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        path = Path(base) / "napari-unet" / "models"
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class ModelInfo:
    """A model file and what it says about itself (without building the network)."""

    name: str
    path: Path
    source: str  # "packaged" or "user"
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    def __str__(self) -> str:
        return f"{self.name} ({self.source})"

    @property
    def training(self) -> dict[str, Any]:
        """The record of the model's last training run (empty if none)."""
        return dict(self.metadata.get("training") or {})

    @property
    def trained_on(self) -> str | None:
        """What the model (or the model it was fine-tuned from) was trained on."""
        return self.metadata.get("trained_on")

    @property
    def date(self) -> str | None:
        """When the last training run ended (ISO 8601, UTC)."""
        return self.training.get("date")

    @property
    def seconds(self) -> float | None:
        """How long the last training run took, in seconds."""
        value = self.metadata.get("pretraining_seconds", self.training.get("seconds"))
        return None if value is None else float(value)

    @property
    def val_f1(self) -> float | None:
        """Best validation F1 (IoU 0.5) of the last training run."""
        value = self.training.get("best_val_f1")
        return None if value is None else float(value)

    def summary(self) -> str:
        """One line: name, source, when, how long, validation F1, where it started."""
        parts = [str(self)]
        if self.date:
            parts.append(f"trained {self.date[:16].replace('T', ' ')} UTC")
        if self.seconds is not None:
            parts.append(f"{self.seconds / 60:.1f} min")
        if self.training.get("steps"):
            parts.append(f"{self.training['steps']} steps")
        if self.val_f1 is not None:
            parts.append(f"validation F1 {self.val_f1:.2f}")
        start = self.training.get("started_from")
        if start and start != "new":
            parts.append(f"fine-tuned from {Path(str(start)).stem}")
        return ", ".join(parts)


def _read_metadata(path: Path) -> dict[str, Any] | None:
    if path.suffix == ".zip":  # a bioimage.io package written by export_bioimageio
        from .bioimageio import read_bioimageio_package

        try:
            net = read_bioimageio_package(path)
        except Exception:  # noqa: BLE001 - not ours or damaged: not listed
            return None
        meta = dict(net.metadata)
        meta.pop("path", None)
        meta.setdefault("config", dict(net.config))
        return meta
    try:
        payload = torch.load(path, map_location="meta", weights_only=True)
    except Exception:  # noqa: BLE001 - unreadable files are simply not listed
        return None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        return None
    meta = dict(payload.get("metadata") or {})
    meta.setdefault("config", payload.get("config"))
    return meta


def list_models() -> list[ModelInfo]:
    """The packaged models, then the user's models (newest first).

    Model files (``.pt``) and bioimage.io packages written by napari-unet
    (``.zip``) in the user folder are listed; files that are not readable
    napari-unet models are skipped.
    """
    found: list[ModelInfo] = []
    packaged = packaged_models_dir()
    for path in sorted(packaged.glob("*.pt")):
        meta = _read_metadata(path)
        if meta is not None:
            found.append(ModelInfo(path.stem, path, "packaged", meta))
    user = user_models_dir()
    if user.is_dir():
        files = sorted([*user.glob("*.pt"), *user.glob("*.zip")],
                       key=lambda p: p.stat().st_mtime, reverse=True)
        for path in files:
            meta = _read_metadata(path)
            if meta is not None:
                found.append(ModelInfo(path.stem, path, "user", meta))
    return found


def safe_model_name(text: str) -> str:
    """A file name from a model name: letters, digits, ``._-``; other runs become ``-``.

    >>> safe_model_name("my nuclei (v2)")
    'my-nuclei-v2'
    """
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text).strip()).strip("-.")
    return name or "model"


def free_model_path(name: str, folder: Path | None = None, suffix: str = ".pt") -> Path:
    """A path for a new model named ``name`` in the user's models folder (or ``folder``)
    that no file has yet: ``name.pt``, else ``name-2.pt``, ``name-3.pt``, ..."""
    folder = user_models_dir(create=True) if folder is None else Path(folder)
    stem = safe_model_name(name)
    path = folder / f"{stem}{suffix}"
    n = 2
    while path.exists():
        path = folder / f"{stem}-{n}{suffix}"
        n += 1
    return path


def _user_model(path: Any) -> Path:
    path = Path(path)
    folder = user_models_dir()
    if path.parent.resolve() != folder.resolve() or path.suffix not in (".pt", ".zip"):
        raise ValueError(f"{path} is not a model in your models folder ({folder}); only those "
                         "can be renamed or deleted here")
    if not path.is_file():
        raise FileNotFoundError(f"the model file {path} no longer exists")
    return path


def rename_model(path: Any, new_name: str) -> Path:
    """Rename a model of the user's models folder; returns its new path.

    The name is made file-safe (:func:`safe_model_name`); an existing model of
    that name is never replaced (FileExistsError).
    """
    path = _user_model(path)
    target = path.with_name(safe_model_name(new_name) + path.suffix)
    if target == path:
        return path
    if target.exists():
        raise FileExistsError(f"a model named {target.stem!r} exists already; choose another name")
    os.rename(path, target)  # same folder: atomic, and refuses nothing silently on POSIX
    return target


def delete_model(path: Any) -> None:
    """Delete a model of the user's models folder (never a packaged model)."""
    _user_model(path).unlink()
