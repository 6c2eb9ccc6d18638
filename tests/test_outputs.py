"""Never lose or fake a result: atomic outputs, safe --overwrite, interrupted runs, locks."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from blocks_helpers import passthrough_unet
from conftest import disks_image, run_failing

from napari_unet import UNet, load_model, save_model
from napari_unet.cli import main
from napari_unet.core.outputs import (
    OutputExistsError,
    OutputLockedError,
    OutputSet,
    SameFileError,
    atomic_output,
    check_outputs,
    exclusive_lock,
    publish,
)
from napari_unet.io import write_image

zarr = pytest.importorskip("zarr")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def hidden(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith("."))


@pytest.fixture
def model_file(tmp_path):
    return save_model(passthrough_unet(), tmp_path / "pass.pt")


@pytest.fixture
def image_file(tmp_path):
    image, _ = disks_image((70, 90))
    path = tmp_path / "image.tif"
    tifffile.imwrite(path, (image * 1.2).astype(np.uint8))
    return path


# ------------------------------------------------------------------ the module
def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "labels.tif"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_output(target, overwrite=True) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert hidden(tmp_path) == []
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_image(target, np.zeros((4, 4), np.uint8))
    assert target.read_bytes() == b"old"


def test_publishing_without_overwrite_never_replaces_a_file_that_appeared(tmp_path):
    target = tmp_path / "a.tif"
    with pytest.raises(OutputExistsError), atomic_output(target) as tmp:
        tmp.write_bytes(b"new")
        target.write_bytes(b"someone else's")
    assert target.read_bytes() == b"someone else's"
    assert hidden(tmp_path) == []


def test_a_zarr_store_replaces_the_old_one_only_when_complete(tmp_path):
    old = tmp_path / "out.zarr"
    old.mkdir()
    (old / "marker").write_text("old")
    outputs = OutputSet(overwrite=True)
    with outputs:
        tmp = outputs.add(old)
        tmp.mkdir()
        (tmp / "marker").write_text("new")
        assert (old / "marker").read_text() == "old"
        outputs.commit()
    assert (old / "marker").read_text() == "new"
    assert hidden(tmp_path) == []
    new = tmp_path / "new"
    new.mkdir()
    with pytest.raises(OutputExistsError):
        publish(new, old)


def test_files_follow_the_umask_not_0600(tmp_path):
    before = os.umask(0o022)
    try:
        model = save_model(UNet(depth=1, base_channels=2), tmp_path / "m.pt")
        labels = write_image(tmp_path / "l.tif", np.zeros((4, 4), np.int32))
        from napari_unet.core import train

        image, labels_ = disks_image((48, 48), n=4)
        train(image, labels_, UNet(depth=1, base_channels=2), max_steps=1, validation=0,
              patch_shape=32, batch_size=1, checkpoint_dir=tmp_path / "ckpt", device="cpu")
    finally:
        os.umask(before)
    for path in (model, labels, tmp_path / "ckpt" / "last.ckpt", tmp_path / "ckpt" / "best.pt"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_same_and_colliding_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    img = tmp_path / "img.zarr"
    img.mkdir()
    (tmp_path / "link.zarr").symlink_to(img)
    for out in (img, tmp_path / "sub" / ".." / "img.zarr", tmp_path / "link.zarr",
                img / "0"):
        with pytest.raises(SameFileError, match="would replace the input"):
            check_outputs([img], [("labels", out)])
    with pytest.raises(SameFileError, match="same file"):
        check_outputs([img], [("labels", tmp_path / "x.tif"),
                              ("probabilities", tmp_path / "sub" / ".." / "x.tif")])
    check_outputs([img], [("labels", tmp_path / "x.tif"), ("probabilities", tmp_path / "p.tif")])


def test_a_lock_admits_one_writer_and_is_released(tmp_path):
    target = tmp_path / "m.pt"
    with exclusive_lock(target):
        with pytest.raises(OutputLockedError, match="another process"), \
                exclusive_lock(target):
            pass
    with exclusive_lock(target):  # free again
        pass
    assert hidden(tmp_path) == []


# ----------------------------------------------------------- segment: the CLI
def test_input_as_output_is_refused_and_the_input_kept(tmp_path, model_file, capsys):
    image = (disks_image((70, 90))[0]).astype(np.uint8)
    store = tmp_path / "img.zarr"
    z = zarr.open_array(str(store), mode="w", shape=image.shape, chunks=(32, 32),
                        dtype=image.dtype)
    z[:] = image
    (tmp_path / "sub").mkdir()
    for out in (store, tmp_path / "sub" / ".." / "img.zarr"):
        err = run_failing(["segment", str(store), "-o", str(out), "--model", str(model_file),
                           "--overwrite", "-q"], capsys)
        assert "would replace the input" in err
    np.testing.assert_array_equal(np.asarray(zarr.open_array(str(store), mode="r")), image)
    tif = tmp_path / "img.tif"
    tifffile.imwrite(tif, image)
    err = run_failing(["segment", str(tif), "-o", f"{tmp_path}/./img.tif", "--model",
                       str(model_file), "--overwrite", "-q"], capsys)
    np.testing.assert_array_equal(tifffile.imread(tif), image)


def test_colliding_outputs_are_refused(tmp_path, image_file, model_file, capsys):
    out = tmp_path / "x.tif"
    err = run_failing(["segment", str(image_file), "-o", str(out), "--model", str(model_file),
                       "--probabilities", str(out), "-q"], capsys)
    assert "same file" in err
    assert not out.exists()


def test_overwrite_replaces_only_after_success(tmp_path, image_file, model_file, capsys,
                                               monkeypatch):
    out = tmp_path / "labels.tif"
    probs = tmp_path / "probs.tif"
    assert main(["segment", str(image_file), "-o", str(out), "--model", str(model_file),
                 "--probabilities", str(probs), "-q"]) == 0
    old, old_probs = out.read_bytes(), probs.read_bytes()
    capsys.readouterr()
    # a bad setting: refused up front
    run_failing(["segment", str(image_file), "-o", str(out), "--model", str(model_file),
                 "--overwrite", "--threshold", "5", "-q"], capsys)
    assert out.read_bytes() == old
    # a failure in the middle of the work: the old outputs stay as they were

    import napari_unet.core.cellsize as cellsize

    def failing(*args, **kwargs):
        yield from ()
        raise RuntimeError("the device went away")

    # the engine, as segment_file reaches it (through the cell-size step)
    monkeypatch.setattr(cellsize, "iter_segment_blocks", failing)
    err = run_failing(["segment", str(image_file), "-o", str(out), "--model", str(model_file),
                       "--probabilities", str(probs), "--overwrite", "-q"], capsys)
    assert "device went away" in err
    assert out.read_bytes() == old and probs.read_bytes() == old_probs
    assert hidden(tmp_path) == []


@pytest.fixture
def stack_folder(tmp_path):
    """A folder with one 48-plane stack: a few seconds of work in 64-pixel blocks."""
    from skimage.draw import disk

    rng = np.random.default_rng(0)
    image = np.zeros((48, 192, 192), np.uint8)
    for z in range(48):
        for _ in range(20):
            rr, cc = disk(rng.uniform(0, 192, 2), rng.uniform(4, 9), shape=image.shape[1:])
            image[z, rr, cc] = 200
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "stack.tif", image)
    return folder


def _cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    return [sys.executable, "-m", "napari_unet.cli", *map(str, args)], env


def _chunks_written(folder):
    """Whether any zarr store (finished or not, hidden or not) in folder holds a chunk."""
    for store in Path(folder).iterdir():
        if store.is_dir() and any(p.is_file() for p in (store / "0").rglob("*")):
            return True
    return False


def _default_sigint():
    """Ctrl+C works in the child even when the tests run in the background (SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _kill_while_writing(command, env, folder, sig):
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=_default_sigint)
    try:
        while proc.poll() is None and not (folder.exists() and _chunks_written(folder)):
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be interrupted: " + \
            proc.stderr.read().decode()[-2000:]
        proc.send_signal(sig)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_an_interrupted_zarr_output_is_redone(tmp_path, stack_folder, model_file, sig):
    out = tmp_path / "out"
    command, env = _cli("segment", stack_folder, "-o", out, "--format", "zarr", "--model",
                        model_file, "--block", "64", "--tile", "64", "-q")
    proc = _kill_while_writing(command, env, out, sig)
    assert proc.returncode != 0
    assert not (out / "stack_labels.ome.zarr").exists()  # nothing that looks finished
    rerun = subprocess.run(command, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "1 segmented" in rerun.stdout and "0 skipped" in rerun.stdout, rerun.stdout
    assert hidden(out) == []  # the unfinished store of the killed run is gone
    labels = np.asarray(zarr.open(str(out / "stack_labels.ome.zarr"), mode="r")["0"])
    assert labels.shape == (48, 192, 192) and labels.max() > 0


def test_ctrl_c_with_dask_workers_leaves_no_output_that_blocks_a_rerun(
        tmp_path, stack_folder, model_file):
    pytest.importorskip("distributed")
    out = tmp_path / "labels.ome.zarr"
    command, env = _cli("segment", stack_folder / "stack.tif", "-o", out, "--model",
                        model_file, "--block", "64", "--tile", "64", "--workers", "2", "-q")
    proc = _kill_while_writing(command, env, tmp_path, signal.SIGINT)
    assert proc.returncode != 0
    assert not out.exists()
    command, env = _cli("segment", stack_folder / "stack.tif", "-o", out, "--model",
                        model_file, "--block", "64", "--tile", "64", "-q")
    rerun = subprocess.run(command, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "cells" in rerun.stdout and "skipped" not in rerun.stdout
    assert [n for n in hidden(tmp_path) if "partial" in n] == []


# ------------------------------------------------------------------ train
def _train_args(tmp_path, out, *extra):
    image, labels = disks_image((64, 64), n=5)
    tifffile.imwrite(tmp_path / "ti.tif", image)
    tifffile.imwrite(tmp_path / "tl.tif", labels)
    start = save_model(UNet(depth=1, base_channels=2), tmp_path / "start.pt")
    return ["train", "--images", str(tmp_path / "ti.tif"), "--labels", str(tmp_path / "tl.tif"),
            "--from", str(start), "-o", str(out), "--device", "cpu", "--patch", "32",
            "--batch-size", "1", "--validation", "0", "-q", *extra]


def test_train_checks_its_output_folder_before_training(tmp_path, capsys, monkeypatch):
    import napari_unet.core.training as training

    def no_training(*args, **kwargs):
        raise AssertionError("training started although the model could not be written")

    monkeypatch.setattr(training, "iter_train", no_training)
    (tmp_path / "afile").write_text("not a folder")
    err = run_failing(_train_args(tmp_path, tmp_path / "afile" / "m.pt", "--steps", "1"),
                      capsys)
    assert "cannot write the model in the folder" in err


def test_a_second_writer_of_a_model_fails_clearly(tmp_path, capsys):
    out = tmp_path / "same.pt"
    args = _train_args(tmp_path, out, "--time", "300", "--checkpoint-dir",
                       str(tmp_path / "ckpt"))
    command, env = _cli(*args)
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while first.poll() is None and not (tmp_path / "ckpt" / ".last.ckpt.lock").exists():
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read().decode()[-2000:]
        err = run_failing(_train_args(tmp_path, out, "--steps", "1"), capsys)
        assert "another process is training" in err
        err = run_failing(_train_args(tmp_path, tmp_path / "other.pt", "--steps", "1",
                                      "--checkpoint-dir", str(tmp_path / "ckpt")), capsys)
        assert "another process is writing training checkpoints" in err
        first.send_signal(signal.SIGTERM)  # stops like Ctrl+C and keeps the model so far
        first.wait(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 130, first.stderr.read().decode()[-2000:]
    assert load_model(out).config["base_channels"] == 2
    assert not (tmp_path / "other.pt").exists()
