"""Untrusted model files get bounds before anything is read or allocated; clear one-liners."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import numpy as np
import pytest
import tifffile
import torch
import yaml
from conftest import disks_image, run_failing

from napari_unet import ModelFileError, UNet, load_model, save_model
from napari_unet.core import checkpoints
from napari_unet.core.checkpoints import FORMAT_NAME, FORMAT_VERSION
from napari_unet.core.model import model_to_dict


def tiny():
    return UNet(depth=1, base_channels=2)


def test_a_small_file_declaring_a_huge_network_is_refused_before_allocating(tmp_path):
    path = tmp_path / "huge.pt"
    torch.save({"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                "config": {"depth": 6, "base_channels": 1024}}, path)
    assert path.stat().st_size < 10_000
    with pytest.raises(ModelFileError, match="declares 127,396,157,442 weights"):
        load_model(path)
    torch.save({"format": FORMAT_NAME, "config": {"depth": 6, "base_channels": 4096}}, path)
    with pytest.raises(ModelFileError, match="base_channels=4096 is outside 1 to 1024"):
        load_model(path)


def test_a_torch_zip_whose_entries_unpack_too_large_is_refused(tmp_path, monkeypatch):
    path = save_model(tiny(), tmp_path / "m.pt")
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("m/data/99", bytes(8 << 20))  # 8 MB of zeros, a few kB packed
    assert path.stat().st_size < 1 << 20
    monkeypatch.setattr(checkpoints, "MAX_MODEL_BYTES", 4 << 20)
    with pytest.raises(ModelFileError, match="would unpack to 8 MB"):
        load_model(path)


def package(path, net, *, weights=None, sha=True, rdf_extra=b""):
    """A bioimage.io zip as napari-unet writes it (without the files loading ignores)."""
    blob = io.BytesIO()
    torch.save(net.state_dict(), blob)
    blob = blob.getvalue() if weights is None else weights
    d = model_to_dict(net)
    sidecar = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": d["config"],
               "normalization": d["normalization"], "classes": d["classes"], "metadata": {}}
    source = {"source": "weights.pt"}
    if sha:
        source["sha256"] = hashlib.sha256(blob).hexdigest()
    rdf = {"type": "model", "format_version": "0.5.14", "name": "test model",
           "weights": {"pytorch_state_dict": source},
           "config": {"napari_unet": {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                                      "file": "napari_unet.json"}}}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("rdf.yaml", yaml.safe_dump(rdf).encode() + rdf_extra)
        zf.writestr("napari_unet.json", json.dumps(sidecar))
        zf.writestr("weights.pt", blob)
    return path


def test_a_bioimageio_package_is_read_back(tmp_path):
    net = tiny()
    back = load_model(package(tmp_path / "ok.zip", net))
    for a, b in zip(net.parameters(), back.parameters()):
        assert torch.equal(a, b)


def test_bioimageio_entries_are_bounded_before_reading(tmp_path):
    net = tiny()
    bomb = package(tmp_path / "bomb.zip", net, weights=bytes(40 << 20))
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(ModelFileError, match="weights.pt would unpack to 42 MB"):
        load_model(bomb)
    text_bomb = package(tmp_path / "text.zip", net, rdf_extra=b"\n" + b" " * (20 << 20))
    with pytest.raises(ModelFileError, match="rdf.yaml would unpack to 21 MB"):
        load_model(text_bomb)


def test_a_bioimageio_package_without_or_with_a_wrong_sha256_is_refused(tmp_path):
    net, other = tiny(), tiny()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    swapped = io.BytesIO()
    torch.save(other.state_dict(), swapped)
    path = package(tmp_path / "nosha.zip", net, weights=swapped.getvalue(), sha=False)
    with pytest.raises(ModelFileError, match="no SHA-256"):
        load_model(path)


def test_nan_or_infinite_weights_are_refused(tmp_path, image_file, capsys):
    net = tiny()
    with torch.no_grad():
        net.head.weight[0, 0, 0, 0] = float("nan")
    path = save_model(net, tmp_path / "nan.pt")
    with pytest.raises(ModelFileError, match="NaN or infinite weights"):
        load_model(path)
    err = run_failing(["segment", str(image_file), "-o", str(tmp_path / "l.tif"), "--model",
                       str(path), "-q"], capsys)
    assert "NaN or infinite" in err and not (tmp_path / "l.tif").exists()
    with torch.no_grad():
        net.head.weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(ModelFileError, match="NaN or infinite weights"):
        load_model(package(tmp_path / "inf.zip", net))


def test_export_refuses_nan_weights(tmp_path):
    pytest.importorskip("bioimageio.spec")
    from napari_unet import export_bioimageio

    net = tiny()
    with torch.no_grad():
        net.head.bias[0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        export_bioimageio(net, tmp_path / "p.zip", torchscript=False)
    assert not (tmp_path / "p.zip").exists()


def test_random_bytes_as_a_model(tmp_path, image_file, capsys):
    path = tmp_path / "random.pt"
    path.write_bytes(np.random.default_rng(0).integers(1, 128, 4000, dtype=np.uint8).tobytes())
    err = run_failing(["segment", str(image_file), "-o", str(tmp_path / "l.tif"), "--model",
                       str(path), "-q"], capsys)
    assert "not a PyTorch file" in err
    assert "weights_only" not in err.lower() and "weights only" not in err.lower()


def test_workers_0_is_refused(tmp_path, image_file, capsys):
    err = run_failing(["segment", str(image_file), "-o", str(tmp_path / "l.tif"),
                       "--workers", "0", "-q"], capsys)
    assert "--workers must be 1 or more" in err


def test_out_of_memory_is_one_line_naming_the_fix(tmp_path, image_file, capsys):
    labels = tmp_path / "lab.tif"
    tifffile.imwrite(labels, disks_image((70, 90))[1])
    start = save_model(tiny(), tmp_path / "start.pt")
    err = run_failing(["train", "--images", str(image_file), "--labels", str(labels),
                       "--from", str(start), "-o", str(tmp_path / "m.pt"), "--patch", "100000",
                       "--steps", "1", "--device", "cpu", "-q"], capsys)
    assert "not enough memory" in err and "GiB asked for" in err and "--patch" in err


def test_complex_and_empty_images_are_refused_in_one_line(tmp_path, capsys):
    model = save_model(tiny(), tmp_path / "m.pt")
    complex_image = tmp_path / "complex.tif"
    tifffile.imwrite(complex_image, np.full((40, 50), 1 + 2j, np.complex64))
    err = run_failing(["segment", str(complex_image), "-o", str(tmp_path / "a.tif"), "--model",
                       str(model), "-q"], capsys)
    assert "complex-valued" in err and "numpy.abs" in err
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"II*\x00\x00\x00\x00\x00")  # a TIFF header with no page
    err = run_failing(["segment", str(empty), "-o", str(tmp_path / "b.tif"), "--model",
                       str(model), "-q"], capsys)
    assert "holds no image (0 pages)" in err
    from napari_unet import segment

    with pytest.raises(ValueError, match="complex-valued"):
        segment(np.ones((40, 50), np.complex128), tiny())
