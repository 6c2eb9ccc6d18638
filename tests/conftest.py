from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def disks_image(shape=(96, 128), n=12, radius=(5, 10), seed=0):
    """A small gray image of bright disks with its exact instance labels."""
    from skimage.draw import disk

    r = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    for i in range(1, n + 1):
        rad = r.uniform(*radius)
        cy, cx = r.uniform(0, shape[0]), r.uniform(0, shape[1])
        rr, cc = disk((cy, cx), rad, shape=shape)
        free = labels[rr, cc] == 0
        labels[rr[free], cc[free]] = i
    image = (labels > 0) * 150.0 + 20 + r.normal(0, 5, shape)
    return image.astype(np.float32), labels


@pytest.fixture
def one_torch_thread():
    """Tiny networks: one torch thread is fastest, and immune to other load on the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    """An empty user models folder (NAPARI_UNET_MODELS_DIR) for the test."""
    folder = tmp_path / "models"
    monkeypatch.setenv("NAPARI_UNET_MODELS_DIR", str(folder))
    return folder


def run_failing(args, capsys):
    """Run the command line on ``args``: it must fail with exit code 2 and one line, no
    traceback; returns that line."""
    from napari_unet.cli import main

    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.fixture
def image_file(tmp_path):
    """A small uint16 TIFF of disks."""
    import tifffile

    image, _ = disks_image((70, 90))
    path = tmp_path / "image.tif"
    tifffile.imwrite(path, image.astype(np.uint16))
    return path
