"""Share a model as a bioimage.io model package, and read such packages back.

:func:`export_bioimageio` writes a `bioimage.io <https://bioimage.io>`_ model
package (a zip file described by ``rdf.yaml``, format 0.5) that other
bioimage.io-aware tools (bioimageio.core, ilastik, deepImageJ, the BioImage
Model Zoo) can run: the weights in PyTorch state-dict form (and TorchScript), a
self-contained copy of the architecture source, a test input with the model's
output for it, a cover picture, a README, the training data description and the
citation of the U-Net paper. Writing it needs the optional ``bioimageio.spec``
package (``pip install "napari-unet[bioimageio]"``), which also validates the
package before it is written.

Reading a package written by napari-unet needs nothing extra: every package
carries a ``napari_unet.json`` file (architecture, normalisation, classes,
training record) named in ``config.napari_unet`` of its ``rdf.yaml``, so
:func:`napari_unet.load_model` rebuilds exactly the network that was exported,
without importing bioimageio.spec and without running code from the package.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import io
import json
import os
import re
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoints import (
    FORMAT_NAME,
    FORMAT_VERSION,
    ModelFileError,
    check_finite,
    read_model,
    ready_model,
    stored_metadata,
)
from .model import UNet, cell_probability, declared_parameters, model_from_dict
from .normalize import Normalization
from .outputs import atomic_output

__all__ = [
    "export_bioimageio",
    "is_bioimageio_package",
    "read_bioimageio_package",
    "read_model_or_package",
    "INSTALL_HINT",
    "UNET_CITATION",
]

#: How to get what exporting needs.
INSTALL_HINT = 'pip install "napari-unet[bioimageio]"'

#: The paper every package cites.
UNET_CITATION: tuple[dict[str, str], ...] = (
    {
        "text": "Ronneberger, O., Fischer, P. and Brox, T. (2015). U-Net: Convolutional "
        "Networks for Biomedical Image Segmentation. MICCAI 2015, LNCS 9351, pp. 234-241.",
        "doi": "10.1007/978-3-319-24574-4_28",
    },
    {
        "text": "Ronneberger, O., Fischer, P. and Brox, T. (2015). U-Net: Convolutional "
        "Networks for Biomedical Image Segmentation. arXiv:1505.04597.",
        "doi": "10.48550/arXiv.1505.04597",
    },
)

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
#: Written format versions (bioimageio.spec 0.5.14 reads them; newer 0.5.x update them).
MODEL_FORMAT_VERSION = "0.5.14"
DATASET_FORMAT_VERSION = "0.3.4"
CONFIG_KEY = "napari_unet"
SIDECAR_NAME = "napari_unet.json"
WEIGHTS_NAME = "weights.pt"
TORCHSCRIPT_NAME = "weights_torchscript.pt"
ARCHITECTURE_NAME = "napari_unet_architecture.py"
ARCHITECTURE_CALLABLE = "UNetProbabilities"
#: ``eps`` of bioimage.io's ``scale_range``: (x - p_low) / (p_high - p_low + eps).
SCALE_RANGE_EPS = 1e-6
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_+\- ()]")
#: The most bytes of a package's text files (rdf.yaml, napari_unet.json) that are read.
MAX_TEXT_BYTES = 16 << 20


# ====================================================================== reading
def _rdf_name(names: Sequence[str]) -> str | None:
    return next((n for n in RDF_NAMES if n in names), None)


def read_model_or_package(path: str | os.PathLike | UNet = "default",
                          device: str | None = None) -> UNet:
    """A model file, ``"default"``, a UNet (returned as it is) or a bioimage.io package
    written by napari-unet: the one dispatch between the two formats, behind
    :func:`napari_unet.core.loading.load_model`."""
    if not isinstance(path, UNet) and str(path) != "default" and is_bioimageio_package(
            Path(path)):  # a .zip (or folder) from export_bioimageio
        return ready_model(read_bioimageio_package(path), device)
    return read_model(path, device)


def is_bioimageio_package(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a bioimage.io package: a zip or a folder with an ``rdf.yaml``.

    PyTorch model files are zip archives too; they are told apart by the
    ``rdf.yaml`` (or ``bioimageio.yaml``) at the top of the archive.
    """
    path = Path(path)
    if path.is_dir():
        return any((path / n).is_file() for n in RDF_NAMES)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return _rdf_name(zf.namelist()) is not None
    except (zipfile.BadZipFile, OSError):
        return False


class _Package:
    """Files of a package, from a zip archive or a folder."""

    def __init__(self, path: Path):
        self.path = path
        self._zip = None if path.is_dir() else zipfile.ZipFile(path)

    def names(self) -> list[str]:
        if self._zip is not None:
            return self._zip.namelist()
        return [p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()]

    def read(self, name: str, limit: int = MAX_TEXT_BYTES) -> bytes:
        """The bytes of ``name``, refused if it would unpack to more than ``limit``."""
        name = str(name).replace("\\", "/")
        if name.startswith("./"):
            name = name[2:]
        if "://" in name:
            raise ModelFileError(
                f"{self.path} refers to a remote file ({name}); napari-unet only loads "
                "self-contained packages"
            )
        if name.startswith("/") or ".." in Path(name).parts:
            raise ModelFileError(f"{self.path} refers to a file outside the package: {name}")
        try:
            size = (self._zip.getinfo(name).file_size if self._zip is not None
                    else (self.path / name).stat().st_size)
            if size > limit:
                raise ModelFileError(
                    f"{self.path}: {name} would unpack to {size / 1e6:,.0f} MB, more than it "
                    f"can hold ({limit / 1e6:,.0f} MB); the package is damaged or not from "
                    "napari-unet"
                )
            if self._zip is not None:
                with self._zip.open(name) as f:  # never more than the limit, whatever it says
                    data = f.read(limit + 1)
                if len(data) > limit:
                    raise ModelFileError(f"{self.path}: {name} is larger than it says")
                return data
            return (self.path / name).read_bytes()
        except (KeyError, FileNotFoundError):
            raise ModelFileError(
                f"{self.path} is an incomplete bioimage.io package: {name} is missing"
            ) from None

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def _not_ours(path: Path, why: str) -> ModelFileError:
    return ModelFileError(
        f"{path} is a bioimage.io model package, but not one exported by napari-unet ({why}); "
        "napari-unet can only load packages written by `napari-unet export-bioimageio`. "
        "Run other packages with a bioimage.io tool such as bioimageio.core or ilastik"
    )


def read_bioimageio_package(path: str | os.PathLike) -> UNet:
    """The UNet of a bioimage.io package written by :func:`export_bioimageio`.

    Needs neither bioimageio.spec nor a network connection, and runs no code from
    the package: the weights are read with ``torch.load(weights_only=True)`` and
    checked against their SHA-256 in ``rdf.yaml``. Normally called through
    :func:`napari_unet.load_model`.

    Raises
    ------
    ModelFileError
        If the file is not a bioimage.io package written by napari-unet, or is damaged.
    """
    import yaml

    path = Path(path)
    try:
        pkg = _Package(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise ModelFileError(f"{path} is not a readable zip archive: {err}") from None
    try:
        rdf_name = _rdf_name(pkg.names())
        if rdf_name is None:
            raise ModelFileError(
                f"{path} is a zip archive but neither a napari-unet model file nor a "
                "bioimage.io model package (it has no rdf.yaml); export a model with "
                "`napari-unet export-bioimageio` or save one with save_model"
            )
        try:
            rdf = yaml.safe_load(pkg.read(rdf_name))
        except yaml.YAMLError as err:
            raise ModelFileError(f"{path}: {rdf_name} is not valid YAML: {err}") from None
        if not isinstance(rdf, dict) or rdf.get("type") != "model":
            raise ModelFileError(
                f"{path} is a bioimage.io package, but not of a model "
                f"(type {rdf.get('type') if isinstance(rdf, dict) else None!r})"
            )
        ours = (rdf.get("config") or {}).get(CONFIG_KEY)
        if not isinstance(ours, dict) or ours.get("format") != FORMAT_NAME:
            raise _not_ours(path, f"its {rdf_name} has no config.{CONFIG_KEY} section")
        if int(ours.get("format_version", 0)) > FORMAT_VERSION:
            raise ModelFileError(
                f"{path} was written by a newer napari-unet (format version "
                f"{ours['format_version']}); update napari-unet to read it"
            )
        weights = (rdf.get("weights") or {}).get("pytorch_state_dict") or {}
        if not weights.get("source"):
            raise _not_ours(path, "it has no pytorch_state_dict weights")
        try:
            sidecar = json.loads(pkg.read(str(ours.get("file", SIDECAR_NAME))))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ModelFileError(f"{path}: {SIDECAR_NAME} is damaged: {err}") from None
        if not isinstance(sidecar, dict):
            raise ModelFileError(f"{path}: {SIDECAR_NAME} is damaged (not a mapping)")
        try:  # the architecture it declares bounds the weights, before they are read
            n_weights = declared_parameters(sidecar.get("config"))
        except (TypeError, ValueError) as err:
            raise ModelFileError(f"{path}: {str(err).splitlines()[0]}") from None
        expected = weights.get("sha256")
        if not expected:
            raise ModelFileError(
                f"{path} has no SHA-256 for its weights {weights['source']}, which every "
                "package from napari-unet records: it was changed after export; export it again"
            )
        blob = pkg.read(str(weights["source"]), 4 * n_weights + (16 << 20))
    finally:
        pkg.close()
    if hashlib.sha256(blob).hexdigest() != str(expected):
        raise ModelFileError(
            f"{path} is damaged: the weights file {weights['source']} does not match the "
            "SHA-256 recorded in the package"
        )
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        model = model_from_dict({**sidecar, "state_dict": state})
    except Exception as err:  # noqa: BLE001 - anything here means a damaged package
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelFileError(
            f"{path} is a damaged napari-unet bioimage.io package: {reason[:200]}"
        ) from None
    check_finite(model, path)
    model.metadata["path"] = str(path)
    return model


# ====================================================================== writing
def _import_spec() -> Any:
    try:
        import bioimageio.spec as spec
    except ImportError as err:
        raise ImportError(
            f"exporting a bioimage.io package needs the bioimageio.spec package "
            f"({err.name or 'bioimageio.spec'} is missing): {INSTALL_HINT}"
        ) from None
    return spec


def architecture_source() -> str:
    """A self-contained Python file that defines the UNet (for the package).

    Generated from :mod:`napari_unet.core.model`, with its one relative import
    (the normalisation, which bioimage.io applies as preprocessing instead)
    replaced by a stand-in, and with ``UNetProbabilities``: the same network,
    with the same weights, returning softmax class probabilities.
    """
    from . import model as model_module

    src = Path(model_module.__file__).read_text(encoding="utf-8")
    stub = (
        "\nclass Normalization:  # stand-in: bioimage.io applies it as preprocessing\n"
        "    def __init__(self, low=1.0, high=99.8, method=\"percentile\"):\n"
        "        self.low, self.high, self.method = low, high, method\n\n"
    )
    src, n = re.subn(r"^from \.normalize import Normalization\n", stub, src, flags=re.M)
    if n != 1 or re.search(r"^\s*(from|import) \.", src, flags=re.M):
        raise RuntimeError(
            "cannot make a self-contained copy of napari_unet/core/model.py: its imports "
            "changed; update napari_unet.core.bioimageio.architecture_source"
        )
    header = (
        "# The U-Net of napari-unet (https://pypi.org/project/napari-unet), copied from\n"
        "# napari_unet/core/model.py for this bioimage.io package. BSD-3-Clause license.\n"
        "# Needs only PyTorch. Build it with UNetProbabilities(**kwargs) and load the\n"
        "# pytorch_state_dict weights; call .eval() before predicting.\n"
    )
    tail = (
        "\n\nclass UNetProbabilities(UNet):\n"
        '    """The UNet with a softmax over the classes: per-pixel class probabilities.\n\n'
        "    Same parameters and weights (state dict keys) as :class:`UNet`.\n"
        '    """\n\n'
        "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n"
        "        return torch.softmax(super().forward(x), dim=1)\n"
    )
    return header + src + tail


def _size_contract(net: UNet) -> tuple[int, int, int, int]:
    """``(min, step, offset, halo)`` of each spatial axis, in bioimage.io terms.

    Valid input sizes are ``min + n * step``; the output is ``input + offset``
    (``offset = -2 * margin`` for valid convolutions); ``halo`` output pixels per
    side are to be cropped (same-padded networks only, whose borders see zeros).
    """
    step = net.stride
    smallest = next(m for m in range(1, 100_000) if net._trace(m))
    offset = net._trace(smallest)[0] - smallest  # type: ignore[index]
    halo = net.margin if net.padding == "same" else 0
    size = smallest
    while size + offset - 2 * halo < 1:
        size += step
    for k in range(4):  # valid sizes are this arithmetic progression
        n = size + k * step
        traced = net._trace(n)
        if traced is None or traced[0] != n + offset:  # pragma: no cover - guarded
            raise RuntimeError(f"input size {n} breaks the size contract min + n*step")
    return size, step, offset, halo


def _bioimageio_normalize(image: np.ndarray, norm: Normalization) -> np.ndarray:
    """bioimage.io's ``scale_range`` over (y, x), per channel: what consumers compute."""
    x = image.astype(np.float64)
    lo = np.percentile(x, norm.low, axis=(-2, -1), keepdims=True)
    hi = np.percentile(x, norm.high, axis=(-2, -1), keepdims=True)
    return ((x - lo) / (hi - lo + SCALE_RANGE_EPS)).astype(np.float32)


def _test_input(net: UNet, image: Any, seed: int) -> np.ndarray:
    """A ``(channel, y, x)`` float32 image of a valid size for the test tensors."""
    size, step, offset, _ = _size_contract(net)
    if image is None:
        from .synthetic import make_sample

        n = size + step * max(0, -(-(128 - offset - size) // step))  # output >= 128 px
        image, _ = make_sample("nuclei", shape=(n, n), seed=seed)
        image = np.repeat(np.asarray(image)[None], net.in_channels, axis=0)
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3 or image.shape[0] != net.in_channels:
        raise ValueError(
            f"the test image must be (row, col) or (channel, row, col) with "
            f"{net.in_channels} channel(s) for this model, not of shape {image.shape}"
        )
    if not np.isfinite(image).all():
        raise ValueError("the test image contains NaN or infinite values")
    shape = []
    for n in image.shape[1:]:
        # the largest valid size that fits (at most 1024 px), or the smallest one
        k = max(0, (min(int(n), 1024) - size) // step)
        shape.append(size + k * step)
    pads = [(0, 0)] + [(max(0, (t - n) // 2), max(0, t - n - (t - n) // 2))
                       for t, n in zip(shape, image.shape[1:])]
    if any(p != (0, 0) for p in pads):
        image = np.pad(image, pads, mode="reflect" if min(image.shape[1:]) > 1 else "edge")
    r0 = (image.shape[1] - shape[0]) // 2
    c0 = (image.shape[2] - shape[1]) // 2
    return np.ascontiguousarray(image[:, r0:r0 + shape[0], c0:c0 + shape[1]], np.float32)


def _cover(test_in: np.ndarray, test_out: np.ndarray, crop: int,
           classes: Sequence[str]) -> np.ndarray:
    """Input (same field of view as the output) and the cell probability, side by side."""
    left = test_in[0, crop:test_in.shape[1] - crop, crop:test_in.shape[2] - crop] if crop \
        else test_in[0]
    lo, hi = np.percentile(left, [1, 99.8])
    left = np.clip((left - lo) / max(hi - lo, 1e-12), 0, 1)
    right = cell_probability(test_out[0], classes)
    rows = min(left.shape[0], right.shape[0])
    cols = min(left.shape[1], right.shape[1], rows)  # square panels: a 2:1 cover
    rows = cols
    panel = np.concatenate([left[:rows, :cols], right[:rows, :cols]], axis=1)
    return (np.clip(panel, 0, 1) * 255).round().astype(np.uint8)


def _clean_name(text: str) -> str:
    name = re.sub(r"\s+", " ", _NAME_CHARS.sub(" ", text)).strip()
    if len(name) < 5:
        name = f"napari-unet {name}".strip()
    return name[:64].strip()


def _authors(authors: Any) -> list[dict[str, Any]]:
    if authors is None:
        return [{"name": "napari-unet contributors"}]
    if isinstance(authors, (str, dict)):
        authors = [authors]
    out = []
    for a in authors:
        if isinstance(a, str):
            a = {"name": a}
        if not isinstance(a, dict) or not a.get("name"):
            raise ValueError(
                "authors must be names or dicts with a 'name' (and optionally "
                f"'affiliation', 'email', 'orcid', 'github_user'), not {a!r}"
            )
        if "/" in str(a["name"]):
            raise ValueError(f"an author name may not contain '/': {a['name']!r}")
        out.append({k: str(v) for k, v in a.items() if v is not None})
    return out


def _describe(net: UNet, margin: int, offset: int) -> str:
    classes = ", ".join(net.classes)
    conv = "valid (unpadded)" if net.padding == "valid" else "zero-padded"
    text = (
        f"U-Net (Ronneberger et al. 2015) for 2D cell segmentation, trained with napari-unet. "
        f"Depth {net.depth}, {net.config['base_channels']} base channels, {conv} convolutions. "
        f"Input: {net.in_channels}-channel image, scaled per image so that its "
        f"{net.normalization.low:g} and {net.normalization.high:g} percentiles become 0 and 1. "
        f"Output: per-pixel class probabilities ({classes})"
    )
    if offset:
        text += f", {margin} px per side smaller than the input (pad the image for context)"
    return text + "."


def _readme(net: UNet, meta: dict[str, Any], name: str, description: str,
            contract: tuple[int, int, int, int], test_shape: tuple[int, ...]) -> str:
    size, step, offset, halo = contract
    norm = net.normalization
    training = meta.get("training") if isinstance(meta.get("training"), dict) else {}
    lines = [
        f"# {name}", "", description, "",
        "This package was written by `napari-unet export-bioimageio`. It holds a U-Net "
        "(Ronneberger, Fischer and Brox 2015) trained with "
        "[napari-unet](https://pypi.org/project/napari-unet), a napari plugin to paint, train "
        "and segment with the U-Net.", "",
        "## Input", "",
        f"- axes batch, channel ({net.in_channels}), y, x; float32;",
        f"- valid sizes along y and x: {size} + n × {step} pixels (n = 0, 1, 2, ...);",
        f"- normalisation (preprocessing `scale_range` over y and x, per image and channel): "
        f"(x − p{norm.low:g}) / (p{norm.high:g} − p{norm.low:g} + {SCALE_RANGE_EPS:g}), "
        f"where pXX is the XXth percentile of the image, not clipped. napari-unet itself "
        "divides by (p_high − p_low) without the epsilon, and summarises planes of more than "
        "4 megapixels from a regular subsample; the difference is negligible.", "",
        "## Output", "",
        f"- axes batch, channel (classes: {', '.join(net.classes)}), y, x; float32 "
        "probabilities in [0, 1] that sum to 1 over the classes (softmax of the network's "
        "logits, included in the architecture `UNetProbabilities`);",
    ]
    if offset:
        lines.append(
            f"- valid convolutions: the output is {-offset} px smaller than the input along y "
            f"and x ({-offset // 2} px per side). To predict a whole image, mirror-pad it by "
            f"{-offset // 2} px per side (and up to a valid size), or tile it with tiles "
            f"overlapping by {-offset} px; napari-unet does this seamlessly."
        )
    if halo:
        lines.append(f"- crop {halo} px per side (the halo): the zero padding affects them.")
    lines += [
        "", "## Instance labels", "",
        "napari-unet turns the probabilities into instance labels (one number per cell): "
        "connected components of the cell probability, grown back over the thin background "
        "gaps the network learnt to draw between touching cells"
        + (f", then cells that hold two touching nuclei are cut at their waist (depth "
           f"{meta['split']}: `split` in the napari-unet metadata)" if meta.get("split") else "")
        + ". `napari-unet segment IMAGE -o labels.tif --model THIS.zip` does it.", "",
        "## Training data", "",
        str(meta.get("trained_on") or "Not recorded: the model file did not say what the "
            "model was trained on."), "",
    ]
    if training:
        lines += ["## Training", ""]
        lines += [f"- {k}: {v}" for k, v in training.items()]
        lines.append("")
    lines += [
        "## Validation", "",
        "The test input (`test_input.npy`, a synthetic image unless another was given) and the "
        "model's output for it (`test_output.npy`) let any bioimage.io consumer check that it "
        "reproduces this model. To measure how well the model segments your images, label a "
        "few cells by hand and compare with `napari-unet evaluate true_labels.tif "
        "labels.tif` (instance F1 at IoU 0.5).",
    ]
    for key in ("best_val_f1", "final_val_f1"):
        if training.get(key) is not None:
            lines.append(f"Training record: {key.replace('_', ' ')} = {training[key]:.3f}.")
    if meta.get("heldout_f1"):
        lines += ["", f"Held-out instance F1 (IoU 0.5): {meta['heldout_f1']}"]
    lines += [
        "", "## Using this package", "",
        "- napari-unet: `napari_unet.load_model(\"THIS.zip\")` or "
        "`napari-unet segment image.tif -o labels.tif --model THIS.zip`;",
        "- bioimage.io-aware tools, for example bioimageio.core (Python, or the command "
        "`bioimageio predict`), ilastik's Neural Network workflow, deepImageJ in Fiji (which "
        "uses the TorchScript weights) and the BioImage Model Zoo website.", "",
        f"Test tensors: input {test_shape}.", "",
        "## Citation", "",
        f"{UNET_CITATION[0]['text']} doi:{UNET_CITATION[0]['doi']}", "",
    ]
    return "\n".join(lines)


def _trace_torchscript(net: torch.nn.Module, x: torch.Tensor, path: Path) -> bool:
    """Write TorchScript weights (traced: sizes stay dynamic); False if tracing fails."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(net, x, check_trace=False)
            torch.jit.save(traced, str(path))
    except Exception:  # noqa: BLE001 - optional extra weights
        return False
    return True


def export_bioimageio(
    model: UNet | str | os.PathLike,
    path: str | os.PathLike,
    *,
    name: str | None = None,
    description: str | None = None,
    authors: Sequence[str | dict[str, Any]] | str | None = None,
    test_image: Any = None,
    license: str = "CC-BY-4.0",
    tags: Sequence[str] = (),
    git_repo: str | None = None,
    torchscript: bool = True,
    seed: int = 0,
) -> Path:
    """Write a model as a bioimage.io model package (a ``.zip``), validated.

    Parameters
    ----------
    model : UNet, str or path-like
        The network, a model file, or ``"default"`` for the packaged model.
    path : str or path-like
        The ``.zip`` to write (replaced if it exists).
    name : str, optional
        Name shown by bioimage.io tools (letters, digits, spaces and ``_+-()``;
        5 to 128 characters). Default: from the model's metadata or file name.
    description : str, optional
        One paragraph (at most 1024 characters). Default: generated from the
        architecture, normalisation and classes.
    authors : str, dict or list of them, optional
        Who made the model; a dict may add ``affiliation``, ``email``, ``orcid``
        and ``github_user`` (which bioimageio.spec checks online). Default:
        "napari-unet contributors".
    test_image : array-like, optional
        ``(row, col)`` or ``(channel, row, col)`` image for the test input and
        the cover: centre-cropped (or mirror-padded) to a valid size. Default: a
        synthetic nuclei image (``make_sample("nuclei")``).
    license : str
        SPDX identifier of the package's license (weights and description);
        the architecture source in it is napari-unet's, BSD-3-Clause.
    tags : sequence of str
        Tags added to the default ones (unet, pytorch, 2d, segmentation, ...).
    git_repo : str, optional
        URL of the repository where the model is developed.
    torchscript : bool
        Also include TorchScript weights (for deepImageJ and other consumers
        without Python), traced from the PyTorch weights.
    seed : int
        Seed of the synthetic test image.

    Returns
    -------
    pathlib.Path
        The package written.

    Raises
    ------
    ImportError
        If bioimageio.spec is not installed (``pip install "napari-unet[bioimageio]"``).
    ValueError
        If the package does not validate, or an argument is invalid.

    Notes
    -----
    The package is validated by ``bioimageio.spec.load_description`` with
    ``perform_io_checks=True`` (files present, SHA-256 hashes, test tensors
    against the declared shapes and data types), before and after zipping.
    Without a network connection, checks of remote resources are skipped: the
    ``git_repo`` URL and an author's ``github_user`` are not looked up (a
    ``github_user`` then fails validation). Running the model on its test input
    is not part of bioimageio.spec; ``bioimageio.core``'s ``test_model`` does it.
    """
    spec = _import_spec()
    from bioimageio.spec import InvalidDescr, load_description, save_bioimageio_package

    path = Path(path)
    if path.suffix.lower() != ".zip":
        raise ValueError(f"a bioimage.io package is a .zip file; got {path}")
    with tempfile.TemporaryDirectory(prefix="napari-unet-bioimageio-") as tmp:
        rdf_path = _write_package_folder(
            model, Path(tmp), name=name, description=description, authors=authors,
            test_image=test_image, license=license, tags=tags, git_repo=git_repo,
            torchscript=torchscript, seed=seed,
        )
        descr = load_description(rdf_path, perform_io_checks=True)
        if isinstance(descr, InvalidDescr):
            raise ValueError(
                f"the bioimage.io description does not validate (bioimageio.spec "
                f"{spec.__version__}): {_first_error(descr)}"
            )
        # save_bioimageio_package validates the zip again, and refuses an invalid one
        with atomic_output(path, overwrite=True) as tmp_zip:
            save_bioimageio_package(descr, output_path=tmp_zip)
    return path


def _write_package_folder(
    model: UNet | str | os.PathLike,
    folder: Path,
    *,
    name: str | None = None,
    description: str | None = None,
    authors: Sequence[str | dict[str, Any]] | str | None = None,
    test_image: Any = None,
    license: str = "CC-BY-4.0",
    tags: Sequence[str] = (),
    git_repo: str | None = None,
    torchscript: bool = True,
    seed: int = 0,
) -> Path:
    """Write the files of a package and its ``rdf.yaml`` into ``folder`` (unvalidated).

    Needs no bioimageio.spec: :func:`export_bioimageio` validates and zips the result.
    Returns the path of ``rdf.yaml``.
    """
    import imageio.v3 as iio
    import tifffile
    import yaml

    source_name = None if isinstance(model, UNet) else str(model)
    net = copy.deepcopy(read_model_or_package(model)).cpu().float().eval()
    try:
        check_finite(net, "the model" if source_name is None else source_name)
    except ModelFileError as err:
        raise ValueError(str(err)) from None
    meta = stored_metadata(dict(net.metadata))
    norm = net.normalization
    if norm.high <= 1.0:
        raise ValueError(
            f"bioimage.io's scale_range needs an upper percentile above 1, but this model "
            f"normalises to the {norm.high} percentile"
        )
    if name is None:
        stem = meta.get("name") or (Path(source_name).stem if source_name else None) or "U-Net"
        name = _clean_name(f"napari-unet {stem}")
    elif _NAME_CHARS.search(name) or not 5 <= len(name) <= 128:
        raise ValueError(
            f"invalid name {name!r}: use 5 to 128 letters, digits, spaces and _+-()"
        )
    contract = _size_contract(net)
    size, step, offset, halo = contract
    if description is None:
        description = meta.get("description") or _describe(net, -offset // 2, offset)
    description = str(description)
    if len(description) > 1024:
        raise ValueError(f"the description has {len(description)} characters; at most 1024")
    authors_list = _authors(authors)

    test_in = _test_input(net, test_image, seed)
    prob_net = _probabilities_net(net)
    with torch.no_grad():
        x = torch.from_numpy(_bioimageio_normalize(test_in, norm)[None])
        test_out = prob_net(x).numpy().astype(np.float32)

    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
               d / WEIGHTS_NAME)
    (d / ARCHITECTURE_NAME).write_text(architecture_source(), encoding="utf-8")
    np.save(d / "test_input.npy", test_in[None])
    np.save(d / "test_output.npy", test_out)
    tifffile.imwrite(d / "sample_input.tif", test_in[None], photometric="minisblack")
    tifffile.imwrite(d / "sample_output.tif", test_out, photometric="minisblack")
    iio.imwrite(d / "cover.png", _cover(test_in, test_out, max(0, -offset // 2), net.classes))
    readme = _readme(net, meta, name, description, contract, tuple(test_in[None].shape))
    (d / "README.md").write_text(readme, encoding="utf-8")
    sidecar = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": dict(net.config),
        "normalization": norm.to_dict(),
        "classes": list(net.classes),
        "metadata": meta,
    }
    (d / SIDECAR_NAME).write_text(json.dumps(sidecar, indent=1), encoding="utf-8")

    torch_version = torch.__version__.split("+")[0]
    weights: dict[str, Any] = {
        "pytorch_state_dict": {
            "source": WEIGHTS_NAME,
            "sha256": hashlib.sha256((d / WEIGHTS_NAME).read_bytes()).hexdigest(),
            "architecture": {
                "source": ARCHITECTURE_NAME,
                "callable": ARCHITECTURE_CALLABLE,
                "kwargs": dict(net.config),
            },
            "pytorch_version": torch_version,
        }
    }
    if torchscript and _trace_torchscript(prob_net, x, d / TORCHSCRIPT_NAME):
        weights["torchscript"] = {
            "source": TORCHSCRIPT_NAME,
            "pytorch_version": torch_version,
            "parent": "pytorch_state_dict",
            "comment": "traced with torch.jit.trace; input sizes stay dynamic",
        }

    axes_in = [
        {"type": "batch"},
        {"type": "channel", "channel_names": [f"channel{i}" for i in range(net.in_channels)]},
        *({"type": "space", "id": a, "size": {"min": size, "step": step}} for a in ("y", "x")),
    ]
    axes_out: list[dict[str, Any]] = [
        {"type": "batch"},
        {"type": "channel", "channel_names": list(net.classes)},
    ]
    for a in ("y", "x"):
        ax: dict[str, Any] = {
            "type": "space", "id": a,
            "size": {"tensor_id": "input", "axis_id": a, "offset": int(offset)},
        }
        if halo:
            ax["halo"] = int(halo)
        axes_out.append(ax)

    training = meta.get("training") if isinstance(meta.get("training"), dict) else {}
    training_details: dict[str, Any] = {
        "training_preprocessing": f"percentile normalisation ({norm.low:g}, {norm.high:g}) per "
        "image" + ("; random elastic, flip, rotation, scale and gray-value augmentation"
                   if training.get("augment") else ""),
        "loss_function": {
            None: "pixel-wise softmax cross-entropy weighted by the U-Net boundary weight map",
            "weighted_ce": "pixel-wise softmax cross-entropy weighted by the U-Net boundary "
            "weight map",
            "weighted_ce+dice": "weighted cross-entropy (U-Net boundary weight map) plus Dice",
        }.get(training.get("loss"), str(training.get("loss"))),
    }
    if training.get("optimizer"):
        training_details["optimizer"] = str(training["optimizer"])
    if training.get("lr") is not None:
        training_details["initial_learning_rate"] = float(training["lr"])
    if training.get("seconds") is not None:
        training_details["training_duration"] = round(float(training["seconds"]) / 3600, 4)

    rdf: dict[str, Any] = {
        "type": "model",
        "format_version": MODEL_FORMAT_VERSION,
        "name": name,
        "description": description,
        "authors": authors_list,
        "cite": [dict(c) for c in UNET_CITATION],
        "license": license,
        "documentation": {"source": "README.md"},
        "covers": [{"source": "cover.png"}],
        "tags": _tags(net, tags),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "attachments": [{"source": SIDECAR_NAME}],
        "inputs": [{
            "id": "input",
            "description": "image, normalised by per-image percentiles (preprocessing)",
            "axes": axes_in,
            "data": {"type": "float32"},
            "test_tensor": {"source": "test_input.npy"},
            "sample_tensor": {"source": "sample_input.tif"},
            "preprocessing": [{
                "id": "scale_range",
                "kwargs": {
                    "axes": ["y", "x"],
                    "min_percentile": float(norm.low),
                    "max_percentile": float(norm.high),
                    "eps": SCALE_RANGE_EPS,
                },
            }],
        }],
        "outputs": [{
            "id": "probabilities",
            "description": (f"class probabilities ({', '.join(net.classes)}), softmax over "
                            "the channel axis")[:128],
            "axes": axes_out,
            "data": {"type": "float32", "range": [0.0, 1.0]},
            "test_tensor": {"source": "test_output.npy"},
            "sample_tensor": {"source": "sample_output.tif"},
        }],
        "weights": weights,
        "config": {
            "bioimageio": {
                "architecture_type": "U-Net (2D)",
                "architecture_description": "U-Net (Ronneberger et al. 2015), "
                + ", ".join(f"{k}={v}" for k, v in net.config.items()),
                "task": "semantic-segmentation",
                "model_parameter_count": int(net.n_parameters()),
                "training": training_details,
            },
            CONFIG_KEY: {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "file": SIDECAR_NAME,
                "margin": int(-offset // 2),
                "classes": list(net.classes),
            },
        },
    }
    if meta.get("trained_on"):
        rdf["training_data"] = {
            "type": "dataset",
            "format_version": DATASET_FORMAT_VERSION,
            "name": _clean_name(f"Training data of {name}"),
            "description": str(meta["trained_on"])[:1024],
            "authors": authors_list,
            "license": license,
            "tags": ["training-data", "napari-unet"],
        }
    if git_repo:
        rdf["git_repo"] = str(git_repo)
    rdf_path = d / "rdf.yaml"
    rdf_path.write_text(yaml.safe_dump(rdf, sort_keys=False, allow_unicode=True),
                        encoding="utf-8")
    return rdf_path


def _first_error(descr: Any) -> str:
    summary = descr.validation_summary
    for detail in summary.details:
        for err in detail.errors:
            loc = ".".join(str(p) for p in err.loc)
            msg = f"{loc}: {err.msg}" if loc else str(err.msg)
            if re.search(r"Errno|connect|resolve|timed? ?out", msg, flags=re.I):
                msg += (" (bioimageio.spec looks up an author's github_user on the "
                        "internet: leave it out when offline)")
            return msg
    return str(summary.status)


def _tags(net: UNet, extra: Sequence[str]) -> list[str]:
    tags = ["unet", "pytorch", "2d", "semantic-segmentation", "instance-segmentation",
            "cells", "nuclei", "fluorescence-light-microscopy", "napari", "napari-unet"]
    for t in extra:
        if t not in tags:
            tags.append(str(t))
    return tags


def _probabilities_net(net: UNet) -> torch.nn.Module:
    class _Probabilities(torch.nn.Module):
        def __init__(self, inner: UNet):
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.inner(x), dim=1)

    return _Probabilities(net).eval()


