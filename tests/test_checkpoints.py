"""Model files: round trip, metadata, and clear errors for anything else."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from napari_unet import ModelFileError, Normalization, UNet, load_model, predict_tiled, save_model


def test_round_trip_keeps_everything(tmp_path, rng):
    net = UNet(in_channels=2, n_classes=3, depth=2, base_channels=4, padding="same",
               norm="batch", upsample="bilinear", dropout=0.2)
    net.normalization = Normalization(low=2.0, high=99.0)
    net.metadata = {"trained_on": "synthetic nuclei", "steps": 12}
    path = save_model(net, tmp_path / "sub" / "m.pt", validation_f1=np.float32(0.5))
    loaded = load_model(path)
    assert loaded.config == net.config
    assert loaded.classes == ("background", "interior", "boundary")
    assert loaded.normalization == Normalization(low=2.0, high=99.0)
    assert loaded.metadata["trained_on"] == "synthetic nuclei"
    assert loaded.metadata["validation_f1"] == pytest.approx(0.5)
    assert not loaded.training
    for (k, a), b in zip(net.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    image = rng.normal(size=(2, 40, 40)).astype(np.float32)
    np.testing.assert_array_equal(predict_tiled(net.eval(), image), predict_tiled(loaded, image))
    assert not list(tmp_path.glob("sub/.*tmp")), "no temporary file left behind"


def test_a_copy_knows_its_own_file_not_the_one_it_was_copied_from(tmp_path):
    net = UNet(depth=2, base_channels=4)
    first = load_model(save_model(net, tmp_path / "first.pt"))
    assert first.metadata["path"] == str(tmp_path / "first.pt")
    copy = load_model(save_model(first, tmp_path / "copy.pt"))  # e.g. "Save this model"
    assert copy.metadata["path"] == str(tmp_path / "copy.pt")
    payload = torch.load(tmp_path / "copy.pt", map_location="cpu", weights_only=True)
    assert "path" not in payload["metadata"], "where a file lies is not stored in it"


def test_float16_storage_halves_the_file_and_loads_as_float32(tmp_path, rng):
    net = UNet(depth=2, base_channels=8, norm="batch").eval()
    full = save_model(net, tmp_path / "full.pt")
    half = save_model(net, tmp_path / "half.pt", weights_dtype="float16")
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = load_model(half)
    for (k, a), b in zip(net.state_dict().items(), loaded.state_dict().values()):
        assert b.dtype == a.dtype, k  # float32 weights, int64 batch-norm counter
        torch.testing.assert_close(b, a.half().to(a.dtype) if a.is_floating_point() else a)
    image = rng.normal(size=(40, 40)).astype(np.float32)
    np.testing.assert_allclose(predict_tiled(loaded, image), predict_tiled(net, image), atol=2e-2)
    with pytest.raises(ValueError, match="weights_dtype"):
        save_model(net, tmp_path / "x.pt", weights_dtype="int8")


def test_unserialisable_metadata_is_refused(tmp_path):
    with pytest.raises(ValueError, match="plain values"):
        save_model(UNet(depth=1, base_channels=2), tmp_path / "m.pt", bad=object())
    assert not (tmp_path / "m.pt").exists()


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model file"):
        load_model(tmp_path / "nope.pt")


def test_truncated_file(tmp_path):
    path = save_model(UNet(depth=1, base_channels=2), tmp_path / "m.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="not a readable model file"):
        load_model(path)


def test_garbage_file(tmp_path):
    path = tmp_path / "m.pt"
    path.write_bytes(b"\x89PNG not a model at all" * 10)
    with pytest.raises(ModelFileError, match="not a readable model file"):
        load_model(path)


def test_foreign_torch_file(tmp_path):
    path = tmp_path / "state.pt"
    torch.save(UNet(depth=1, base_channels=2).state_dict(), path)
    with pytest.raises(ModelFileError, match="not a napari-unet model file"):
        load_model(path)


class Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_pickled_code_is_never_run(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": "napari-unet-model", "x": Evil()}, path, pickle_protocol=2)
    with pytest.raises(ModelFileError):
        load_model(path)
    assert "code ran" not in capsys.readouterr().out
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ModelFileError):
        load_model(path)
    assert "code ran" not in capsys.readouterr().out


def test_damaged_weights(tmp_path):
    path = save_model(UNet(depth=1, base_channels=2), tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["config"]["base_channels"] = 3
    torch.save(payload, path)
    with pytest.raises(ModelFileError, match="damaged"):
        load_model(path)


def test_newer_format(tmp_path):
    path = save_model(UNet(depth=1, base_channels=2), tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, path)
    with pytest.raises(ModelFileError, match="newer napari-unet"):
        load_model(path)


def test_overwriting_is_atomic(tmp_path):
    path = save_model(UNet(depth=1, base_channels=2), tmp_path / "m.pt", version=1)
    save_model(UNet(depth=1, base_channels=2), path, version=2)
    assert load_model(path).metadata["version"] == 2
