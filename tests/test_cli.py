"""The command line, end to end on a small image."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import disks_image, run_failing

from napari_unet import UNet, probabilities_to_labels, save_model
from napari_unet.cli import main

SCRIPT = Path(sys.executable).parent / "napari-unet"


@pytest.fixture
def model_file(tmp_path):
    return save_model(UNet(depth=2, base_channels=4), tmp_path / "model.pt", target={"gap": 1})


def test_help_from_console_script():
    assert SCRIPT.exists(), "the console script is installed with the package"
    out = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, check=True)
    assert "segment" in out.stdout and "usage: napari-unet" in out.stdout
    out = subprocess.run([str(SCRIPT), "segment", "--help"], capture_output=True, text=True,
                         check=True)
    for flag in ("--model", "--tile", "--device", "--overwrite", "-o", "--split", "--diameter",
                 "--min-share"):
        assert flag in out.stdout
    from napari_unet.core.split import SPLIT_DEPTH

    assert f"{SPLIT_DEPTH} for the packaged" in " ".join(out.stdout.split())  # the truth


def test_segment_end_to_end(tmp_path, image_file, model_file, capsys):
    out = tmp_path / "labels.tif"
    overlay = tmp_path / "overlay.png"
    probs_path = tmp_path / "probs.tif"
    code = main(["segment", str(image_file), "-o", str(out), "--model", str(model_file),
                 "--tile", "100", "--device", "cpu", "--overlay", str(overlay),
                 "--probabilities", str(probs_path)])
    assert code == 0
    labels = tifffile.imread(out)
    probs = tifffile.imread(probs_path)
    assert labels.shape == (70, 90) and labels.dtype == np.int32
    assert probs.shape == (2, 70, 90)
    np.testing.assert_array_equal(labels, probabilities_to_labels(probs, grow=2, split=0))
    import imageio.v3 as iio

    picture = iio.imread(overlay)
    assert picture.shape == (70, 90, 3) and picture.dtype == np.uint8
    captured = capsys.readouterr()
    assert "cells" in captured.out and "labels.tif" in captured.out


def test_segment_as_a_real_process(tmp_path, image_file, model_file):
    out = tmp_path / "labels.tif"
    result = subprocess.run(
        [str(SCRIPT), "segment", str(image_file), "-o", str(out), "--model", str(model_file)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert out.exists()
    assert "segmenting" in result.stderr  # the progress bar


def test_existing_output_is_not_overwritten(tmp_path, image_file, model_file, capsys):
    out = tmp_path / "labels.tif"
    out.write_bytes(b"precious")
    err = run_failing(["segment", str(image_file), "-o", str(out), "--model", str(model_file)],
                      capsys)
    assert "exists" in err and "--overwrite" in err
    assert out.read_bytes() == b"precious"
    assert main(["segment", str(image_file), "-o", str(out), "--model", str(model_file),
                 "--overwrite", "-q"]) == 0
    assert tifffile.imread(out).shape == (70, 90)


def test_bad_settings_are_one_line_and_nothing_is_written(tmp_path, image_file, model_file,
                                                          capsys):
    out = tmp_path / "o.tif"
    for flags, words in [(["--threshold", "1.5"], "threshold must be a probability"),
                         (["--grow", "-1"], "grow must be 0 or more"),
                         (["--min-size", "-3"], "min_size must be 0 or more"),
                         (["--block", "0"], "block_shape must be 1 or more"),
                         (["--split", "1.5"], "split must be 0 (off) or a depth"),
                         (["--diameter", "-3"], "diameter must be a number of pixels"),
                         (["--min-share", "1"], "min_share must be 0 (off) or a share")]:
        err = run_failing(["segment", str(image_file), "-o", str(out), "--model",
                           str(model_file), *flags], capsys)
        assert words in err, err
    assert not out.exists()


def test_unreadable_input(tmp_path, model_file, capsys):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff")
    err = run_failing(["segment", str(bad), "-o", str(tmp_path / "o.tif"), "--model",
                       str(model_file)], capsys)
    assert "cannot read" in err
    err = run_failing(["segment", str(tmp_path / "missing.tif"), "-o", str(tmp_path / "o.tif"),
                       "--model", str(model_file)], capsys)
    assert "no such file" in err


def test_wrong_dimensions(tmp_path, model_file, capsys):
    path = tmp_path / "5d.npy"
    np.save(path, np.zeros((2, 2, 2, 8, 8), np.uint8))
    err = run_failing(["segment", str(path), "-o", str(tmp_path / "o.tif"), "--model",
                       str(model_file)], capsys)
    assert "5 dimensions" in err


def test_bad_model_file(tmp_path, image_file, capsys):
    bad = tmp_path / "m.pt"
    bad.write_bytes(b"junk")
    err = run_failing(["segment", str(image_file), "-o", str(tmp_path / "o.tif"), "--model",
                       str(bad)], capsys)
    assert "not a readable model file" in err


def test_unavailable_device(tmp_path, image_file, model_file, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    err = run_failing(["segment", str(image_file), "-o", str(tmp_path / "o.tif"), "--model",
                       str(model_file), "--device", "cuda"], capsys)
    assert "not available" in err


def test_info(model_file, capsys):
    assert main(["info", str(model_file)]) == 0
    out = capsys.readouterr().out
    assert "margin" in out and "depth=2" in out


def test_stack_input(tmp_path, model_file):
    image, _ = disks_image((40, 50))
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.stack([image] * 3))
    out = tmp_path / "labels.tif"
    assert main(["segment", str(path), "-o", str(out), "--model", str(model_file), "-q",
                 "--overlay", str(tmp_path / "o.png")]) == 0
    assert tifffile.imread(out).shape == (3, 40, 50)


def test_debug_environment_variable_shows_traceback(tmp_path, model_file, monkeypatch):
    monkeypatch.setitem(os.environ, "NAPARI_UNET_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["segment", str(tmp_path / "missing.tif"), "-o", str(tmp_path / "o.tif"),
              "--model", str(model_file)])


def test_weightmap_command(tmp_path, capsys):
    from conftest import disks_image

    from napari_unet.core.weightmap import boundary_weight_map, training_targets

    _, labels = disks_image((60, 80), n=15)
    path = tmp_path / "labels.tif"
    tifffile.imwrite(path, labels.astype(np.uint16))
    out = tmp_path / "w.tif"
    assert main(["weightmap", str(path), "-o", str(out), "--w0", "8", "--sigma", "3"]) == 0
    np.testing.assert_allclose(tifffile.imread(out), boundary_weight_map(labels, 8, 3))
    assert main(["weightmap", str(path), "-o", str(out), "--gap", "1", "--overwrite"]) == 0
    np.testing.assert_allclose(tifffile.imread(out), training_targets(labels, gap=1)[1])
    err = run_failing(["weightmap", str(path), "-o", str(out)], capsys)
    assert "exists" in err


def test_sample_photons_makes_dim_noisy_images(tmp_path, capsys):
    """--photons sets the signal: fewer photons, noisier images of the same nuclei."""
    snr = []
    for photons in ("5", "2000"):
        out = tmp_path / photons
        assert main(["sample", "-o", str(out), "-n", "1", "--size", "96", "--seed", "3",
                     "--photons", photons]) == 0
        image = tifffile.imread(out / "nuclei_000.tif").astype(float)
        labels = tifffile.imread(out / "nuclei_000_labels.tif")
        inside = image[labels > 0]
        snr.append((inside.mean() - image[labels == 0].mean()) / inside.std())
    assert snr[0] < 0.5 * snr[1]
    err = run_failing(["sample", "-o", str(tmp_path / "p"), "--kind", "phase", "--photons", "5"],
                      capsys)
    assert "--photons" in err


def test_axes_come_from_the_file_or_the_guess_is_said(tmp_path, model_file, capsys):
    """A (3, H, W) image: an ImageJ TIFF's own axes are used; without them, one line says
    what was assumed and how to choose otherwise."""
    image, _ = disks_image((40, 50))
    stack = np.stack([image] * 3).astype(np.uint16)
    plain, imagej, channels = (tmp_path / f"{n}.tif" for n in ("plain", "imagej", "cyx"))
    tifffile.imwrite(plain, stack, photometric="minisblack")
    tifffile.imwrite(imagej, stack, imagej=True, metadata={"axes": "ZYX"})
    tifffile.imwrite(channels, stack, imagej=True, metadata={"axes": "CYX"})

    def segment(path, *extra):
        code = main(["segment", str(path), "-o", str(tmp_path / f"{path.stem}_l.tif"),
                     "--model", str(model_file), "--overwrite", *extra])
        return code, capsys.readouterr()

    code, out = segment(plain)
    assert code == 0 and "read as zyx" in out.out and "--axes" in out.out
    code, out = segment(imagej)
    assert code == 0 and "axes zyx from the file's metadata" in out.out
    code, out = segment(plain, "--axes", "zyx")
    assert code == 0 and "read as" not in out.out and "metadata" not in out.out
    # the file says channels: a one-channel model refuses them in one line, no guessing
    code, out = segment(channels)
    assert code == 2 and "channel" in out.err and len(out.err.strip().splitlines()) == 1


def test_min_share_keeps_or_drops_a_speck(tmp_path, capsys):
    """A 16-px speck among 30x30 cells: dropped by default, kept with --min-share 0."""
    from blocks_helpers import passthrough_unet

    model = save_model(passthrough_unet(), tmp_path / "pass.pt", target={"gap": 1})
    image = np.zeros((120, 160), np.uint16)
    image[10:40, 10:40] = image[10:40, 60:90] = image[70:100, 20:50] = 100
    image[100:104, 140:144] = 100
    tifffile.imwrite(tmp_path / "img.tif", image)
    counts = []
    for flags in ([], ["--min-share", "0"]):
        out = tmp_path / f"labels{len(flags)}.tif"
        assert main(["segment", str(tmp_path / "img.tif"), "-o", str(out), "--model",
                     str(model), "--diameter", "0", *flags]) == 0
        labels = tifffile.imread(out)
        counts.append((int(labels.max()), int(labels[102, 142])))
    capsys.readouterr()
    assert counts[0][0] == 3 and counts[0][1] == 0
    assert counts[1][0] == 4 and counts[1][1] > 0
