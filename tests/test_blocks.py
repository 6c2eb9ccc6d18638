"""Block-by-block segmentation equals one-piece segmentation, ids included, and stays lazy."""

from __future__ import annotations

import numpy as np
import pytest
from blocks_helpers import as_image, border_cells, passthrough_unet
from scipy import ndimage as ndi

from napari_unet import UNet, predict_tiled, probabilities_to_labels, segment
from napari_unet.core.blocks import iter_segment_blocks
from napari_unet.core.options import SegmentProgress
from napari_unet.core.segmentation import iter_segment
from napari_unet.core.tiling import BlockGrid, plan_tiles

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def one_piece(net, image, tile, **kw):
    """The reference: predict the whole image, then label it in one piece."""
    probs = predict_tiled(net, image, tile_shape=tile)
    return probabilities_to_labels(probs, net.classes, **kw)


@pytest.mark.parametrize("three_class", [False, True])
def test_cells_on_block_borders_and_corners_get_one_id(three_class):
    net = passthrough_unet(three_class)
    shape, tile = (150, 170), 80
    truth, kept, grid = border_cells(net, shape, tile, block=40)
    assert grid.n_blocks[0] >= 3 and grid.n_blocks[1] >= 3
    image = as_image(truth, three_class)
    reference = one_piece(net, image, tile, min_size=16, grow=2)
    for block in (grid.block_shape, (20, 60), 1, 10_000):
        labels = segment(image, net, tile_shape=tile, block_shape=block, min_size=16, grow=2)
        np.testing.assert_array_equal(labels, reference, err_msg=f"blocks of {block}")
    if three_class:
        return
    # against the design: every cell of 16 pixels or more is one id, the others are gone
    assert labels.max() == len(kept)
    for i in range(1, truth.max() + 1):
        ids = np.unique(labels[truth == i])
        if i in kept:
            assert len(ids) == 1 and ids[0] > 0, f"cell {i} got ids {ids}"
        else:
            assert set(ids) == {0}, f"cell {i} of {np.sum(truth == i)} pixels was kept"
    # and the numbering is one-piece labelling's: raster order of the first pixel (of the
    # cells before they are grown back over the gaps)
    seeds = np.where(truth > 0, labels, 0).ravel()
    firsts = [np.flatnonzero(seeds == k)[0] for k in range(1, labels.max() + 1)]
    assert firsts == sorted(firsts)


def test_random_network_in_blocks_equals_one_piece(rng):
    """A real (random) network, many irregular cells, a stack: the same labels exactly."""
    net = UNet(depth=2, base_channels=4).eval()
    planes = [ndi.gaussian_filter(rng.normal(size=(120, 140)), 2.5) for _ in range(2)]
    image = np.stack(planes).astype(np.float32)
    tile = 48
    probs = predict_tiled(net, image, tile_shape=tile)
    threshold = float(np.percentile(probs[1], 55))  # many cells of all shapes
    reference = probabilities_to_labels(probs, net.classes, threshold=threshold, min_size=6,
                                        grow=2, split=0.35)
    assert reference.max() > 30
    for block in ((36, 36), (72, 1000), 1):
        labels = segment(image, net, tile_shape=tile, block_shape=block, threshold=threshold,
                         min_size=6, grow=2, split=0.35)
        np.testing.assert_array_equal(labels, reference, err_msg=f"blocks of {block}")
    # ids are unique through the stack
    assert not set(np.unique(labels[0])[1:]) & set(np.unique(labels[1])[1:])


def test_decoding_overlapped_with_the_network_gives_the_same_result(rng, tmp_path):
    """The GPU schedule (a block labelled in a thread while the next is predicted, blocks
    grown in threads), run here on the CPU: the same labels and probabilities, into numpy
    and into a zarr array chunked like the blocks; stopping it leaves no thread behind."""
    import dataclasses
    import threading

    from napari_unet.core.blocks import plan_segmentation
    from napari_unet.core.options import SegmentOptions

    net = UNet(depth=2, base_channels=4).eval()
    image = ndi.gaussian_filter(rng.normal(size=(2, 150, 170)), 2.5).astype(np.float32)
    probs = predict_tiled(net, image, tile_shape=48)
    threshold = float(np.percentile(probs[1], 55))
    options = SegmentOptions(tile_shape=48, block_shape=40, threshold=threshold, min_size=6,
                             grow=2)
    plan = plan_segmentation(image, net, options)
    assert not plan.overlap, "the CPU runs one thing at a time"
    assert plan.grid.total >= 9
    fast = dataclasses.replace(plan, overlap=True)

    def run(p, **kw):
        gen = iter_segment_blocks(image, net, options, plan=p, probabilities=True, **kw)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                return stop.value

    reference = run(plan)
    assert reference.n_cells > 30
    for kw in ({}, {"out": tmp_path / "labels.zarr"}):
        got = run(fast, **kw)
        np.testing.assert_array_equal(np.asarray(got.labels[...]), reference.labels)
        np.testing.assert_array_equal(got.probabilities, reference.probabilities)
        assert got.n_cells == reference.n_cells
    before = threading.active_count()
    gen = iter_segment_blocks(image, net, options, plan=fast)
    for _ in range(4):
        next(gen)
    gen.close()
    assert threading.active_count() == before
    assert not [t for t in threading.enumerate() if t.name.startswith("napari-unet-")]


def test_default_blocks_hold_a_gpu_batch_of_tiles():
    net = UNet(depth=2, base_channels=4)
    plan = plan_tiles(net, (3000, 3000), (400, 400))
    assert plan.step == (336, 336) and plan.n_tiles == (9, 9)
    assert BlockGrid.make(plan, (3000, 3000)).block_tiles == (6, 6)  # about 2048 pixels
    assert BlockGrid.make(plan, (3000, 3000), min_tiles=64).block_tiles == (8, 8)
    assert BlockGrid.make(plan, (3000, 3000), 100, min_tiles=64).block_tiles == (1, 1)
    assert BlockGrid.make(plan, (3000, 3000), 100, min_side=900).block_tiles == (3, 3)


def test_lazy_input_into_zarr_output(tmp_path):
    da = pytest.importorskip("dask.array")
    zarr = pytest.importorskip("zarr")
    net = passthrough_unet()
    truth, _, grid = border_cells(net, (130, 150), 80, block=40)
    image = as_image(truth, False)
    expected = segment(image, net, tile_shape=80, min_size=16, grow=2)
    lazy = da.from_array(image, chunks=(32, 32))
    labels, probs = segment(lazy, net, tile_shape=80, block_shape=40, min_size=16, grow=2,
                            out=tmp_path / "labels.zarr",
                            probabilities_out=tmp_path / "probs.zarr",
                            return_probabilities=True)
    assert isinstance(labels, zarr.Array) and labels.dtype == np.int32
    assert tuple(labels.chunks) == grid.block_shape  # one chunk per block
    np.testing.assert_array_equal(labels[...], expected)
    assert tuple(probs.chunks) == (2, *grid.block_shape)
    np.testing.assert_allclose(probs[...], predict_tiled(net, image, tile_shape=80), atol=1e-6)
    reopened = zarr.open_array(str(tmp_path / "labels.zarr"), mode="r")
    np.testing.assert_array_equal(reopened[...], expected)
    # an open zarr array (of any chunks) works too, on this machine
    target = zarr.open_array(str(tmp_path / "mine.zarr"), mode="w", shape=image.shape,
                             chunks=(50, 50), dtype="int32")
    assert segment(image, net, tile_shape=80, out=target, min_size=16, grow=2) is target
    np.testing.assert_array_equal(target[...], expected)


class CountingImage:
    """An array-like that records the windows read from it."""

    def __init__(self, data):
        self.data, self.shape, self.dtype = data, data.shape, data.dtype
        self.reads: list[int] = []

    def __getitem__(self, key):
        out = self.data[key]
        if not any(isinstance(k, slice) and k.step is not None for k in key):  # not the stats
            self.reads.append(out.size)
        return out


def test_each_block_reads_its_window_once(rng):
    net = UNet(depth=2, base_channels=4).eval()
    image = CountingImage(rng.normal(size=(300, 260)).astype(np.float32))
    grid = BlockGrid.make(plan_tiles(net, image.shape, (64, 64)), image.shape, 96)
    labels = segment(image, net, tile_shape=64, block_shape=96)
    assert labels.shape == image.shape
    assert len(image.reads) == grid.total  # one read per block, not per tile
    window = (grid.block_shape[0] + 64) * (grid.block_shape[1] + 64)
    assert max(image.reads) <= window < image.data.size / 2


def test_multiscale_input_segments_level_zero(rng):
    net = UNet(depth=2, base_channels=4).eval()
    image = rng.normal(size=(80, 90)).astype(np.float32)
    levels = [image, image[::2, ::2], image[::4, ::4]]
    np.testing.assert_array_equal(segment(levels, net, tile_shape=48),
                                  segment(image, net, tile_shape=48))
    probs = predict_tiled(net, levels, tile_shape=48)
    assert probs.shape == (2, 80, 90)
    with pytest.raises(ValueError, match="multiscale list of arrays"):
        segment([[1, 2], [3, 4]], net)


def test_progress_phases_and_cancel(rng):
    net = UNet(depth=2, base_channels=4).eval()
    image = rng.normal(size=(120, 130)).astype(np.float32)
    grid = BlockGrid.make(plan_tiles(net, image.shape, (48, 48)), image.shape, 40)
    records = list(iter_segment(image, net, tile_shape=48, block_shape=40, split=0.35))
    assert all(isinstance(r, SegmentProgress) for r in records)
    # a block is labelled once, then looked at twice for merged nuclei to cut
    assert records[-1].done == records[-1].total == grid.plan.total + 3 * grid.total
    dones = [r.done for r in records]
    assert dones == sorted(dones)
    assert [r.phase for r in records if r.phase != "predict"][0] == "merge"
    assert records[-1].phase == "split"
    records = list(iter_segment(image, net, tile_shape=48, block_shape=40))  # records no cut
    assert records[-1].done == records[-1].total == grid.plan.total + grid.total
    assert records[-1].phase == "label"
    # closing the generator stops between two batches of tiles
    gen = iter_segment_blocks(image, net, tile_shape=48, block_shape=40)
    next(gen)
    next(gen)
    gen.close()
    with pytest.raises(StopIteration):
        next(gen)


def test_bad_outputs_are_refused_clearly(tmp_path, rng):
    net = UNet(depth=2, base_channels=4).eval()
    image = rng.normal(size=(40, 50)).astype(np.float32)
    with pytest.raises(ValueError, match="out has shape"):
        segment(image, net, out=np.zeros((40, 51), np.int32))
    with pytest.raises(ValueError, match="dtype='int32'"):
        segment(image, net, out=np.zeros((40, 50), np.uint8))
    with pytest.raises(TypeError, match="writable array"):
        segment(image, net, out=42)
    (tmp_path / "there.zarr").mkdir()
    with pytest.raises(FileExistsError, match="exists"):
        segment(image, net, out=tmp_path / "there.zarr")
    with pytest.raises(ValueError, match="block_shape"):
        segment(image, net, block_shape=(0, 4))
    with pytest.raises(ValueError, match="threshold"):
        segment(image, net, threshold=2)
    bad = image.copy()
    bad[5, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        segment(bad, net, out=tmp_path / "new.zarr")
    assert not (tmp_path / "new.zarr").exists()  # no half-written output is left


def test_predict_tiled_writes_out_block_by_block(rng):
    net = UNet(depth=2, base_channels=4).eval()
    image = rng.normal(size=(200, 180)).astype(np.float32)

    class CountingOut(np.ndarray):
        writes = 0

        def __setitem__(self, key, value):
            type(self).writes += 1
            super().__setitem__(key, value)

    out = np.zeros((2, 200, 180), np.float32).view(CountingOut)
    grid = BlockGrid.make(plan_tiles(net, image.shape, (48, 48)), image.shape, 64)
    predict_tiled(net, image, tile_shape=48, out=out, block_shape=64)
    assert CountingOut.writes == grid.total < grid.plan.total
    np.testing.assert_allclose(np.asarray(out), predict_tiled(net, image, tile_shape=48),
                               atol=1e-6)


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("max_side", [40, None])
def test_merged_nuclei_cut_across_block_borders_as_in_one_piece(tmp_path, max_side,
                                                                monkeypatch):
    """The packaged model on packed nuclei: cells cut apart (pass 4) near and across block
    borders and corners give the labels of one piece, ids included, into numpy or zarr,
    one thing at a time or overlapped, in a stack. A small largest side to cut makes the
    windows of pass 4 far smaller than the image, with many cells too large."""
    import dataclasses

    from napari_unet import load_model
    from napari_unet.core import split

    if max_side is not None:
        monkeypatch.setattr(split, "MAX_SIDE", max_side)
    from napari_unet.core.blocks import plan_segmentation
    from napari_unet.core.options import SegmentOptions
    from napari_unet.core.split import find_splits
    from napari_unet.core.synthetic import make_sample

    model = load_model("default")
    image = np.stack([make_sample("nuclei", (200, 230), seed=s, layout="clustered",
                                  touching=0.5, density=0.5)[0] for s in (21, 22)])
    tile = 252  # 68 output pixels: blocks of one or two tiles
    probs = predict_tiled(model, image, tile_shape=tile)
    whole = probabilities_to_labels(probs, model.classes, min_size=16, grow=2)
    uncut = probabilities_to_labels(probs, model.classes, min_size=16, grow=2, split=0)
    assert whole.max() > uncut.max()  # merged nuclei were cut
    cut_boxes = [s.bounds for z in range(2) for s in find_splits(uncut[z])]
    assert any(r0 // 68 != (r1 - 1) // 68 or c0 // 68 != (c1 - 1) // 68
               for r0, r1, c0, c1 in cut_boxes)  # some cut cells lie across block borders
    for block in ((68, 68), (136, 68)):
        labels = segment(image, model, tile_shape=tile, block_shape=block)
        np.testing.assert_array_equal(labels, whole, err_msg=f"blocks of {block}")
    options = SegmentOptions(tile_shape=tile, block_shape=68)
    fast = dataclasses.replace(plan_segmentation(image, model, options), overlap=True)
    gen = iter_segment_blocks(image, model, options, plan=fast, out=tmp_path / "l.zarr")
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            result = stop.value
            break
    np.testing.assert_array_equal(np.asarray(result.labels[...]), whole)
    assert result.n_cells == whole.max()


@pytest.mark.parametrize("three_class", [False, True])
def test_fragments_are_dropped_in_blocks_as_in_one_piece(three_class):
    """min_share looks at whole cells: a speck cut by block borders is dropped as a
    whole, a small cell cut by the image border is kept, in any block layout."""
    net = passthrough_unet(three_class)
    shape, tile = (120, 150), 80
    truth = np.zeros(shape, np.int32)
    k = 0
    for r in range(4, 110, 22):
        for c in range(4, 140, 28):
            if (r, c) != (48, 60):
                k += 1
                truth[r:r + 12, c:c + 12] = k
    specks = [(39, 19), (84, 78)]  # 3x3 = 9 px: under a tenth of 144 px, across blocks
    for r, c in specks:
        k += 1
        truth[r:r + 3, c:c + 3] = k
    k += 1
    truth[55:58, 147:150] = k  # 9 px on the image's right border, in the last blocks
    image = as_image(truth, three_class)
    reference = one_piece(net, image, tile, min_size=4, grow=2)
    for block in ((40, 40), 1, (40, 1000), 10_000):
        labels = segment(image, net, tile_shape=tile, block_shape=block, min_size=4, grow=2)
        np.testing.assert_array_equal(labels, reference, err_msg=f"blocks of {block}")
    if three_class:
        return
    for r, c in specks:
        assert (labels[r:r + 3, c:c + 3] == 0).all()
    assert (labels[55:58, 147:150] > 0).all()
    kept = segment(image, net, tile_shape=tile, block_shape=40, min_size=4, grow=2,
                   min_share=0)
    assert kept.max() == labels.max() + 2


def test_fragments_are_judged_per_plane_in_blocks():
    """Plane 1 holds only cells as small as plane 0's specks: they are its typical cells."""
    net = passthrough_unet()
    truth = np.zeros((2, 90, 120), np.int32)
    for k, (r, c) in enumerate([(5, 5), (5, 40), (40, 5), (40, 40), (60, 80)]):
        truth[0, r:r + 12, c:c + 12] = k + 1
    truth[0, 30:33, 100:103] = 9  # a speck
    for k, c in enumerate(range(10, 110, 10)):
        truth[1, 44:47, c:c + 3] = k + 1
    image = (truth > 0).astype(np.float32)
    reference = one_piece(net, image, 80, min_size=4, grow=2)
    labels = segment(image, net, tile_shape=80, block_shape=40, min_size=4, grow=2)
    np.testing.assert_array_equal(labels, reference)
    assert len(np.unique(labels[0])) - 1 == 5 and len(np.unique(labels[1])) - 1 == 10
