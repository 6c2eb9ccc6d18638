"""bioimage.io model packages: export, validation with bioimageio.spec, loading back.

CI installs the ``bioimageio`` extra, so the export tests run there; loading a
package must work without it (tested by hiding bioimageio.spec).
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import zipfile

import numpy as np
import pytest
import tifffile
import torch
import yaml

from napari_unet import (
    ModelFileError,
    Normalization,
    UNet,
    export_bioimageio,
    load_model,
    predict_tiled,
    save_model,
)
from napari_unet.cli import main
from napari_unet.core.bioimageio import INSTALL_HINT, SCALE_RANGE_EPS, _write_package_folder

TRAINED_ON = "synthetic nuclei (napari_unet.core.synthetic), 64x64 px, for a test"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(3)
    net = UNet(depth=2, base_channels=4)
    net.normalization = Normalization(low=2.0, high=99.5)
    net.classes = ("background", "nucleus")
    path = tmp_path_factory.mktemp("bioimageio") / "tiny.pt"
    return save_model(net, path, trained_on=TRAINED_ON, target={"gap": 1}, split=0.35,
                      training={"steps": 3, "seconds": 1.5, "optimizer": "adam", "lr": 1e-3})


@pytest.fixture(scope="module")
def package(model_file):
    return export_bioimageio(model_file, model_file.with_name("tiny.zip"),
                             authors=["Ada Lovelace", {"name": "B. Brox", "affiliation": "X"}])


@pytest.fixture(scope="module")
def loadable_package(request, model_file):
    """The exported package; without bioimageio.spec, the same files zipped unvalidated."""
    try:
        import bioimageio.spec  # noqa: F401
    except ImportError:
        folder = model_file.with_name("unvalidated")
        _write_package_folder(model_file, folder)
        return _zip_folder(folder, model_file.with_name("unvalidated.zip"))
    return request.getfixturevalue("package")


def _zip_folder(folder, path):
    with zipfile.ZipFile(path, "w") as zf:
        for file in sorted(folder.iterdir()):
            zf.write(file, file.name)
    return path


def _unzip(path, tmp_path):
    out = tmp_path / "unzipped"
    with zipfile.ZipFile(path) as zf:
        zf.extractall(out)
    return out


def _rewrite(src, dst, replace):
    """Copy a zip, passing each member's bytes through ``replace(name, data)``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, replace(name, zin.read(name)))
    return dst


# ------------------------------------------------------------------ export
def test_package_validates_with_bioimageio_spec(package, model_file):
    from bioimageio.spec import InvalidDescr, load_description
    from bioimageio.spec.model.v0_5 import ModelDescr, ParameterizedSize, SizeReference

    descr = load_description(package, perform_io_checks=True)
    summary = descr.validation_summary
    assert not isinstance(descr, InvalidDescr), summary.format()
    assert isinstance(descr, ModelDescr)
    assert summary.status == "valid-format"  # the best bioimageio.spec alone gives
    assert not [e for d in summary.details for e in d.errors]

    net = load_model(model_file)
    (inp,), (out,) = descr.inputs, descr.outputs
    assert [a.type for a in inp.axes] == ["batch", "channel", "space", "space"]
    assert [str(a.id) for a in inp.axes[2:]] == ["y", "x"]
    size = inp.axes[2].size
    assert isinstance(size, ParameterizedSize) and size.step == net.stride
    assert net.output_shape((size.min, size.min + 3 * size.step))  # valid sizes
    with pytest.raises(ValueError):
        net.output_shape((size.min - 1,))  # and the smallest
    scale_range = next(p for p in inp.preprocessing if p.id == "scale_range")
    assert (scale_range.kwargs.min_percentile, scale_range.kwargs.max_percentile) == (2.0, 99.5)
    assert [str(a) for a in scale_range.kwargs.axes] == ["y", "x"]
    assert list(out.axes[1].channel_names) == ["background", "nucleus"]
    for axis in out.axes[2:]:
        assert isinstance(axis.size, SizeReference)
        assert axis.size.offset == -2 * net.margin and str(axis.size.tensor_id) == "input"
    assert out.data.range == (0.0, 1.0)
    weights = descr.weights
    assert weights.pytorch_state_dict is not None and weights.torchscript is not None
    assert weights.pytorch_state_dict.architecture.kwargs == net.config
    assert {str(c.doi) for c in descr.cite} >= {"10.1007/978-3-319-24574-4_28"}
    assert str(descr.license) == "CC-BY-4.0"
    assert [a.name for a in descr.authors] == ["Ada Lovelace", "B. Brox"]
    assert descr.covers and descr.documentation is not None
    assert descr.training_data is not None and descr.training_data.description == TRAINED_ON
    assert {"unet", "pytorch", "napari-unet"} <= set(descr.tags)


def test_validation_fails_on_a_broken_package(package, tmp_path):
    """The check above has teeth: a wrong output size is caught by the test tensors."""
    from bioimageio.spec import InvalidDescr, load_description

    def shift_offset(name, data):
        if name != "rdf.yaml":
            return data
        rdf = yaml.safe_load(data)
        for axis in rdf["outputs"][0]["axes"][2:]:
            axis["size"]["offset"] += 4
        return yaml.safe_dump(rdf).encode()

    broken = _rewrite(package, tmp_path / "broken.zip", shift_offset)
    assert isinstance(load_description(broken, perform_io_checks=True), InvalidDescr)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_architecture_and_test_tensors_stand_alone(package, tmp_path):
    """The architecture file needs only torch, and reproduces the test output."""
    folder = _unzip(package, tmp_path)
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    entry = rdf["weights"]["pytorch_state_dict"]
    source = (folder / entry["architecture"]["source"]).read_text()
    assert "napari_unet" not in "".join(
        line for line in source.splitlines() if line.lstrip().startswith(("import", "from")))
    spec = importlib.util.spec_from_file_location("standalone_unet", folder /
                                                  entry["architecture"]["source"])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = getattr(module, entry["architecture"]["callable"])(**entry["architecture"]["kwargs"])
    net.load_state_dict(torch.load(folder / entry["source"], weights_only=True))
    net.eval()

    test_in = np.load(folder / "test_input.npy")
    test_out = np.load(folder / "test_output.npy")
    assert test_in.dtype == test_out.dtype == np.float32
    lo, hi = np.percentile(test_in, [2.0, 99.5], axis=(-2, -1), keepdims=True)
    x = ((test_in - lo) / (hi - lo + SCALE_RANGE_EPS)).astype(np.float32)
    with torch.no_grad():
        probs = net(torch.from_numpy(x)).numpy()
        traced = torch.jit.load(str(folder / rdf["weights"]["torchscript"]["source"]))
        traced_probs = traced(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(probs, test_out, atol=1e-5)
    np.testing.assert_allclose(traced_probs, test_out, atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert test_out.shape[-2:] == tuple(n - 2 * net.margin for n in test_in.shape[-2:])
    assert test_in.shape[-1] - 2 * net.margin >= 128  # a real image, not a speck
    readme = (folder / "README.md").read_text()
    assert "## Validation" in readme
    assert "cut at their waist (depth 0.35" in " ".join(readme.split())  # as the model records


# ------------------------------------------------------------------ loading
def test_load_model_reads_the_package_without_the_extra(loadable_package, model_file,
                                                        tmp_path, monkeypatch):
    package = loadable_package
    for name in ("bioimageio", "bioimageio.spec"):
        monkeypatch.setitem(sys.modules, name, None)  # as if the extra were not installed
    original = load_model(model_file)
    loaded = load_model(package)
    assert isinstance(loaded, UNet) and not loaded.training
    assert loaded.config == original.config
    for (k, a), (k2, b) in zip(original.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and b.dtype == a.dtype
        assert torch.equal(a, b), k
    assert next(loaded.parameters()).dtype == torch.float32
    assert loaded.normalization == Normalization(low=2.0, high=99.5)
    assert loaded.classes == ("background", "nucleus")
    meta = {k: v for k, v in loaded.metadata.items() if k != "path"}
    assert meta == {k: v for k, v in original.metadata.items() if k != "path"}
    assert loaded.metadata["path"] == str(package)

    image = np.random.default_rng(0).normal(100, 20, (70, 90)).astype(np.float32)
    np.testing.assert_array_equal(predict_tiled(loaded, image, device="cpu"),
                                  predict_tiled(original, image, device="cpu"))
    # an unzipped package (a folder with rdf.yaml) loads too
    folder = load_model(_unzip(package, tmp_path))
    assert torch.equal(folder.head.weight, original.head.weight)


def test_packages_are_written_and_read_without_the_extra(model_file, tmp_path, monkeypatch):
    """Only validating and zipping need bioimageio.spec; a package folder loads as is."""
    for name in ("bioimageio", "bioimageio.spec"):
        monkeypatch.setitem(sys.modules, name, None)
    rdf = _write_package_folder(model_file, tmp_path / "pkg", torchscript=False)
    original = load_model(model_file)
    for source in (rdf.parent, _zip_folder(rdf.parent, tmp_path / "pkg.zip")):
        loaded = load_model(source)
        assert loaded.config == original.config and loaded.classes == original.classes
        assert all(torch.equal(a, b) for a, b in zip(original.state_dict().values(),
                                                     loaded.state_dict().values()))


def test_foreign_zips_are_refused_clearly(loadable_package, tmp_path, capsys):
    package = loadable_package
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as zf:
        zf.writestr("hello.txt", "not a model")
    with pytest.raises(ModelFileError, match="neither a napari-unet model file nor a bioimage"):
        load_model(plain)

    def strip_ours(name, data):
        if name != "rdf.yaml":
            return data
        rdf = yaml.safe_load(data)
        del rdf["config"]["napari_unet"]
        return yaml.safe_dump(rdf).encode()

    other = _rewrite(package, tmp_path / "other.zip", strip_ours)
    with pytest.raises(ModelFileError, match="not one exported by napari-unet"):
        load_model(other)
    assert main(["info", str(other)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not one exported by napari-unet" in err

    truncated = _rewrite(package, tmp_path / "truncated.zip",
                         lambda name, data: data[:100] if name == "weights.pt" else data)
    with pytest.raises(ModelFileError, match="damaged"):
        load_model(truncated)

    def change_weights(name, data):
        if name != "weights.pt":
            return data
        state = torch.load(io.BytesIO(data), weights_only=True)
        state["head.bias"] += 1
        buf = io.BytesIO()
        torch.save(state, buf)
        return buf.getvalue()

    with zipfile.ZipFile(package) as zf:
        hashed = "sha256" in yaml.safe_load(zf.read("rdf.yaml"))["weights"]["pytorch_state_dict"]
    if hashed:  # validated packages record the SHA-256 of every file
        changed = _rewrite(package, tmp_path / "changed.zip", change_weights)
        with pytest.raises(ModelFileError, match="damaged.*SHA-256"):
            load_model(changed)


# --------------------------------------------------------------------- CLI
def test_cli_round_trip(model_file, tmp_path, capsys):
    out = tmp_path / "cli.zip"
    code = main(["export-bioimageio", str(model_file), "-o", str(out), "--name",
                 "CLI test model", "--author", "Jane Doe", "--no-torchscript"])
    assert code == 0, capsys.readouterr().err
    assert "bioimage.io model package" in capsys.readouterr().out
    with zipfile.ZipFile(out) as zf:
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        sidecar = json.loads(zf.read(rdf["config"]["napari_unet"]["file"]))
    assert rdf["name"] == "CLI test model" and rdf["authors"] == [{"name": "Jane Doe"}]
    assert set(rdf["weights"]) == {"pytorch_state_dict"}
    assert sidecar["classes"] == ["background", "nucleus"]
    assert main(["info", str(out)]) == 0
    assert "nucleus" in capsys.readouterr().out
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, np.random.default_rng(0).integers(0, 255, (60, 70), np.uint8))
    assert main(["segment", str(image), "-o", str(tmp_path / "labels.tif"), "--model",
                 str(out), "--device", "cpu", "-q"]) == 0, capsys.readouterr().err
    assert tifffile.imread(tmp_path / "labels.tif").shape == (60, 70)
    capsys.readouterr()

    for args, message in [
        (["-o", str(out)], "exists; pass --overwrite"),
        (["-o", str(tmp_path / "model.rdf")], "a bioimage.io package is a .zip file"),
        (["-o", str(tmp_path / "x.zip"), "--name", "a/b"], "invalid name"),
    ]:
        assert main(["export-bioimageio", str(model_file), *args]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err, err


def test_missing_extra_is_named_in_one_line(model_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "bioimageio.spec", None)
    with pytest.raises(ImportError, match="napari-unet\\[bioimageio\\]"):
        export_bioimageio(model_file, tmp_path / "m.zip")
    assert main(["export-bioimageio", str(model_file), "-o", str(tmp_path / "m.zip")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and INSTALL_HINT in err
    assert not (tmp_path / "m.zip").exists()


def test_packages_in_the_models_folder_are_listed(loadable_package, tmp_path, monkeypatch):
    import shutil

    from napari_unet import list_models

    monkeypatch.setenv("NAPARI_UNET_MODELS_DIR", str(tmp_path))
    shutil.copy(loadable_package, tmp_path / "shared.zip")
    (tmp_path / "other.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty, foreign zip
    user = [info for info in list_models() if info.source == "user"]
    assert [info.name for info in user] == ["shared"]
    assert user[0].trained_on == TRAINED_ON
    assert load_model(user[0].path).config == load_model(loadable_package).config


def test_cover_shows_the_cell_probability_of_a_three_class_model(tmp_path):
    """The cover's right half is the class segmentation grows cells from (the interior)."""
    import imageio.v3 as iio
    from blocks_helpers import as_image, passthrough_unet

    net = passthrough_unet(three_class=True)
    truth = np.zeros((96, 96), np.int32)
    truth[20:60, 20:60] = 1
    folder = tmp_path / "pkg"
    _write_package_folder(net, folder, test_image=as_image(truth, True), torchscript=False)
    cover = iio.imread(folder / "cover.png").astype(float) / 255
    right = cover[:, cover.shape[1] // 2:]
    out = np.load(folder / "test_output.npy")[0]
    n = right.shape[0]
    np.testing.assert_allclose(right, np.clip(out[1, :n, :n], 0, 1), atol=1 / 255 + 1e-6)
