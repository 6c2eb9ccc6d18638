"""Blocks and files on a dask ``LocalCluster`` of two worker processes."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from blocks_helpers import as_image, border_cells, passthrough_unet

from napari_unet import save_model, segment
from napari_unet.cli import main
from napari_unet.io import read_image

distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def client():
    from napari_unet.core.distributed import local_client

    with local_client(2) as c:  # two worker processes, one thread each
        yield c


@pytest.fixture
def net():
    return passthrough_unet()


def test_blocks_on_the_cluster_equal_the_local_result(client, net, tmp_path):
    truth, kept, grid = border_cells(net, (150, 170), 80, 40)
    image = as_image(truth, False)
    local = segment(image, net, tile_shape=80, block_shape=40, min_size=16, grow=2)
    assert local.max() == len(kept)
    on_cluster = segment(image, net, tile_shape=80, block_shape=40, min_size=16, grow=2,
                         client=client)
    assert isinstance(on_cluster, np.ndarray)
    np.testing.assert_array_equal(on_cluster, local)
    # into a zarr array the workers write to, from a lazy image, with a scheduler address
    da = pytest.importorskip("dask.array")
    lazy = da.from_array(image, chunks=(50, 50))
    out = segment(lazy, net, tile_shape=80, block_shape=40, min_size=16, grow=2,
                  out=tmp_path / "labels.zarr", client=client.scheduler.address)
    np.testing.assert_array_equal(out[...], local)
    # the workers did the blocks
    assert client.run(lambda: 1) and len(client.scheduler_info()["workers"]) == 2


def test_merged_nuclei_are_cut_on_the_cluster_as_locally(client, net, tmp_path):
    """Peanuts (two touching discs, one blob of probability) across block borders and
    corners: the workers find and write the cuts (pass 4) as one process does."""
    rows, cols = np.mgrid[:150, :170]
    image = np.zeros((150, 170), np.float32)
    for r, c in ((40, 34), (80, 76), (33, 120), (118, 40), (120, 115)):  # near block corners
        for dc in (-6, 6):
            image[(rows - r) ** 2 + (cols - c - dc) ** 2 <= 64] = 1.0
    local = segment(image, net, tile_shape=80, block_shape=40, min_size=16, grow=2, split=0.35)
    assert local.max() == 10  # every peanut was cut in two
    uncut = segment(image, net, tile_shape=80, block_shape=40, min_size=16, grow=2)
    assert uncut.max() == 5  # a network that records no cut
    on_cluster = segment(image, net, tile_shape=80, block_shape=40, min_size=16, grow=2,
                         split=0.35, out=tmp_path / "cut.zarr", client=client)
    np.testing.assert_array_equal(on_cluster[...], local)


def test_three_class_stack_on_the_cluster(client):
    net = passthrough_unet(three_class=True)
    truth, _, _ = border_cells(net, (110, 120), 80, 40)
    image = np.stack([as_image(truth, True), as_image(truth[::-1], True)])
    local = segment(image, net, tile_shape=80, block_shape=40, grow=2)
    np.testing.assert_array_equal(
        segment(image, net, tile_shape=80, block_shape=40, grow=2, client=client), local)


def test_out_with_chunks_across_blocks_is_refused_on_a_cluster(client, net, tmp_path):
    image = as_image(border_cells(net, (100, 100), 80, 40)[0], False)
    out = zarr.open_array(str(tmp_path / "l.zarr"), mode="w", shape=image.shape,
                          chunks=(30, 30), dtype="int32")
    with pytest.raises(ValueError, match="do not line up with the blocks"):
        segment(image, net, tile_shape=80, block_shape=40, out=out, client=client)


def test_batch_command_on_a_scheduler(client, net, tmp_path, capsys):
    model = save_model(net, tmp_path / "pass.pt")
    folder = tmp_path / "in"
    folder.mkdir()
    expected = {}
    for k in range(3):
        truth, _, _ = border_cells(net, (100, 90 + 10 * k), 80, 40, seed=k)
        image = (as_image(truth, False) * 255).astype(np.uint8)
        tifffile.imwrite(folder / f"im{k}.tif", image)
        expected[k] = segment(image, net, tile_shape=80, grow=2)
    (folder / "im9.tif").write_bytes(b"broken")
    code = main(["segment", str(folder), "-o", str(tmp_path / "out"), "--model", str(model),
                 "--tile", "80", "--grow", "2", "--scheduler", client.scheduler.address,
                 "--format", "zarr", "-q"])
    report = capsys.readouterr().out
    assert code == 1 and "im9.tif: failed: cannot read" in report
    assert "4 files: 3 segmented" in report
    for k, labels in expected.items():
        np.testing.assert_array_equal(read_image(tmp_path / "out" / f"im{k}_labels.ome.zarr")[...],
                                      labels)
    # one file on the cluster: its blocks are the tasks
    out = tmp_path / "one.tif"
    assert main(["segment", str(folder / "im1.tif"), "-o", str(out), "--model", str(model),
                 "--tile", "80", "--block", "40", "--grow", "2", "--scheduler",
                 client.scheduler.address, "-q"]) == 0
    np.testing.assert_array_equal(tifffile.imread(out), expected[1])


def test_workers_option_starts_a_local_cluster(net, tmp_path, capsys):
    model = save_model(net, tmp_path / "pass.pt")
    truth, _, _ = border_cells(net, (100, 120), 80, 40)
    image = (as_image(truth, False) * 255).astype(np.uint8)
    for k in range(2):
        tifffile.imwrite(tmp_path / f"im{k}.tif", image)
    assert main(["segment", str(tmp_path / "im*.tif"), "-o", str(tmp_path / "out"), "--model",
                 str(model), "--tile", "80", "--workers", "1", "-q"]) == 0
    assert "2 files: 2 segmented" in capsys.readouterr().out
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "im1_labels.tif"),
                                  segment(image, net, tile_shape=80))


def test_unreachable_scheduler_is_one_clear_line(tmp_path, net, capsys):
    model = save_model(net, tmp_path / "pass.pt")
    np.save(tmp_path / "x.npy", np.zeros((20, 20), np.uint8))
    code = main(["segment", str(tmp_path / "x.npy"), "-o", str(tmp_path / "x.tif"), "--model",
                 str(model), "--scheduler", "tcp://127.0.0.1:9", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot reach the dask scheduler" in err
    assert len(err.strip().splitlines()) == 1
