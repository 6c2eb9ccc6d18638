"""Regions of an image (core.regions), cell sizes (core.cellsize), the live training-target
preview (core.preview), run summaries (core.report) and which class is "cell" (core.model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet.core.cellsize import (
    iter_segment_scaled,
    median_cell_diameter,
    model_cell_diameter,
    scale_for_cell_size,
)
from napari_unet.core.model import UNet, cell_class_index, cell_probability
from napari_unet.core.preview import TargetPreview
from napari_unet.core.regions import (
    RegionView,
    annotation_coverage,
    pixels_in_view,
    pyramid,
    region_outputs,
)
from napari_unet.core.report import summarize_run
from napari_unet.core.weightmap import border_term, carve_gaps


def test_cell_class_is_decided_in_one_place():
    assert cell_class_index(("background", "cell")) == 1
    assert cell_class_index(("background", "interior", "boundary")) == 1
    assert cell_class_index(("Background", "Boundary", "Interior")) == 2
    assert cell_class_index(("bg", "a", "b")) == 2
    probs = np.stack([np.full((2, 3), v, np.float32) for v in (0.1, 0.7, 0.2)])
    assert cell_probability(probs, ("background", "interior", "boundary")).max() == \
        pytest.approx(0.7)
    assert float(cell_probability(torch.from_numpy(probs[:2]), ("bg", "cell"))[0, 0]) == \
        pytest.approx(0.7)
    with pytest.raises(ValueError, match="3 classes but the model has 2"):
        cell_probability(probs, ("background", "cell"))


def test_pixels_in_view_covers_every_pixel_shown_even_partly():
    # pixel i spans [i - 0.5, i + 0.5]: a view from 9.7 shows pixel 10 (9.5..10.5) but not 9
    assert pixels_in_view([[9.7, 0.2], [20.2, 30.6]], (100, 100)) == (slice(10, 21),
                                                                      slice(0, 32))
    assert pixels_in_view([[9.4, -50], [9.6, 500]], (100, 100)) == (slice(9, 11),
                                                                    slice(0, 100))
    rotated = [[0, 10], [10, 0], [20, 10], [10, 20]]  # a diamond: its bounding box
    assert pixels_in_view(rotated, (50, 50)) == (slice(0, 21), slice(0, 21))
    with pytest.raises(ValueError, match="no part"):
        pixels_in_view([[200, 200], [300, 300]], (100, 100))


def test_region_view_writes_into_the_window():
    full = np.zeros((4, 10, 12), np.int32)
    view = RegionView(full, (2, slice(3, 8), slice(None)))
    assert view.shape == (5, 12) and view.ndim == 2
    view[...] = 1
    view[1:3, 4] = 9
    assert full.sum() == 5 * 12 - 2 + 2 * 9
    assert (full[2, 4:6, 4] == 9).all() and full[1].max() == 0
    np.testing.assert_array_equal(view[0], full[2, 3])


def test_pyramid_and_region_outputs(tmp_path):
    pytest.importorskip("zarr")
    labels, region, probs, probs_region = region_outputs(tmp_path, (3, 64, 80),
                                                         (1, slice(10, 20), slice(None)), 2)
    assert labels.shape == (3, 64, 80) and probs.shape == (2, 3, 64, 80)
    region[...] = 7
    probs_region[1] = 0.5
    assert int(np.asarray(labels).sum()) == 7 * 10 * 80
    assert float(np.asarray(probs)[1, 1, 10:20].mean()) == 0.5 and float(
        np.asarray(probs)[0].sum()) == 0
    levels = pyramid(labels, [(3, 64, 80), (3, 32, 40), (3, 16, 20)])
    assert [tuple(x.shape) for x in levels] == [(3, 64, 80), (3, 32, 40), (3, 16, 20)]
    np.testing.assert_array_equal(np.asarray(levels[1]), np.asarray(labels)[:, ::2, ::2])
    assert (tmp_path / "labels.zarr").exists()
    with pytest.raises(FileExistsError):
        region_outputs(tmp_path, (3, 64, 80), (0,))


def test_annotation_coverage_tells_a_painted_corner_from_a_painted_image():
    from napari_unet._sample import SAMPLE_REGION, nuclei_sample, sample_with_truth

    _, truth = sample_with_truth()
    corner = nuclei_sample()[1][0]
    assert annotation_coverage(truth) > 0.8  # every nucleus painted
    assert annotation_coverage(corner) < 0.5  # one corner painted
    r0, c0, r1, c1 = SAMPLE_REGION
    assert annotation_coverage(corner) > 0.8 * (r1 - r0) * (c1 - c0) / truth.size
    assert annotation_coverage(np.zeros((30, 30), int)) == 0.0
    stack = np.zeros((3, 40, 40), int)
    stack[1] = 1  # only labelled planes count, as in training
    assert annotation_coverage(stack) == 1.0


def test_cell_diameter_and_scale():
    labels = np.zeros((100, 100), int)
    labels[:10, :10] = 1  # area 100: diameter 11.28
    labels[50:70, 50:70] = 2  # 400: 22.57
    labels[80:90, 0:10] = 3
    assert median_cell_diameter(labels) == pytest.approx(2 * np.sqrt(100 / np.pi))
    assert median_cell_diameter(np.zeros((5, 5), int)) == 0.0
    net = UNet(depth=2, base_channels=4)
    assert model_cell_diameter(net) is None
    with pytest.raises(ValueError, match="does not record"):
        scale_for_cell_size(net, 30)
    assert scale_for_cell_size(net, 0) == 1.0
    net.metadata = {"cell_diameter": 20.0}
    assert scale_for_cell_size(net, 40) == 0.5
    with pytest.raises(ValueError, match="8 times"):
        scale_for_cell_size(net, 500)


def test_segmenting_at_the_models_cell_size_maps_back_to_the_image(one_torch_thread):
    from blocks_helpers import passthrough_unet

    from napari_unet.core._utils import run_to_completion

    net = passthrough_unet()
    image = np.zeros((90, 120), np.float32)
    image[10:50, 10:50] = 1
    image[60:80, 70:110] = 1
    result = run_to_completion(iter_segment_scaled(image, net, 0.5, min_size=16,
                                                   probabilities=True))
    assert result.labels.shape == image.shape and result.n_cells == 2
    assert result.probabilities.shape == (2, *image.shape)
    found = result.labels > 0
    assert (found == (image > 0)).mean() > 0.97  # the same cells, to a pixel or two


def test_target_preview_follows_edits_exactly():
    rng = np.random.default_rng(0)
    lab = np.zeros((90, 100), np.int32)
    preview = TargetPreview(lab)
    for _ in range(30):
        r, c, s = rng.integers(0, 90), rng.integers(0, 100), rng.integers(2, 15)
        box = (slice(r, min(r + s, 90)), slice(c, min(c + s, 100)))
        lab[box] = rng.integers(0, 6)
        region = preview.update(lab, box)
        assert region[0].start <= box[0].start and region[0].stop >= box[0].stop
        np.testing.assert_array_equal(preview.target, carve_gaps(lab, 1) > 0)
        np.testing.assert_allclose(preview.border, border_term(carve_gaps(lab, 1)), atol=1e-6)


def test_run_summary_of_a_real_run(one_torch_thread):
    from napari_unet.core.synthetic import make_sample
    from napari_unet.core.training import iter_train, new_model

    image, labels = make_sample("nuclei", (96, 96), seed=1)
    net = new_model(depth=2, base_channels=4)
    net.metadata = {"training": {"steps": 1}}  # a trained model: validated first
    run = iter_train(image, labels, net, max_steps=6, validate_every=3, seed=0,
                     device="cpu", patch_shape=48, batch_size=2)
    seen = list(run)
    result = run.result
    s = summarize_run(result, seen, 0)
    vals = {r.step: r.val_f1 for r in [*seen, *result.history] if r.val_f1 is not None}
    assert s.start_f1 == vals[0] and s.last_step == max(vals) and s.last_f1 == vals[max(vals)]
    assert s.kept_step == result.best_step and s.steps == 6
    assert s.changed == (result.best_step > 0)
    assert s.improved == (s.changed and s.kept_f1 > s.start_f1)
    assert s.worse == (s.last_f1 < s.start_f1 - 0.05)


def test_user_models_are_renamed_and_deleted_safely(tmp_path, monkeypatch):
    from napari_unet import save_model
    from napari_unet.core.checkpoints import packaged_model_path
    from napari_unet.core.zoo import delete_model, free_model_path, list_models, rename_model

    monkeypatch.setenv("NAPARI_UNET_MODELS_DIR", str(tmp_path))
    a = save_model(UNet(depth=1, base_channels=2), free_model_path("my cells"))
    b = save_model(UNet(depth=1, base_channels=2), free_model_path("my cells"))
    assert (a.name, b.name) == ("my-cells.pt", "my-cells-2.pt")
    with pytest.raises(FileExistsError, match="exists already"):
        rename_model(b, "my cells")
    c = rename_model(b, "nuclei (v2)")
    assert c.name == "nuclei-v2.pt" and c.exists() and not b.exists()
    delete_model(c)
    assert [m.name for m in list_models() if m.source == "user"] == ["my-cells"]
    packaged = packaged_model_path("default")
    if packaged is not None:
        with pytest.raises(ValueError, match="not a model in your models folder"):
            delete_model(packaged)
        assert packaged.exists()


def test_small_cells_are_enlarged_and_mapped_back(one_torch_thread):
    """The default ``diameter`` (None): cells much smaller than the model's are segmented
    again, enlarged; 0 keeps the image as it is; a number rescales for that size."""
    import dask.array as da
    from blocks_helpers import passthrough_unet

    from napari_unet.core._utils import run_to_completion
    from napari_unet.core.blocks import iter_segment_blocks
    from napari_unet.core.cellsize import auto_scale, iter_segment_sized, unsure_share
    from napari_unet.core.segmentation import segment

    net = passthrough_unet()
    net.metadata = {"cell_diameter": 40.0}
    image = np.zeros((96, 128), np.float32)
    for r in range(8, 90, 20):
        for c in range(8, 120, 20):
            image[r:r + 7, c:c + 7] = 1  # 7 px squares: diameter 7.9, under half of 40
    as_is = run_to_completion(iter_segment_blocks(image, net, min_size=16,
                                                  probabilities=True))
    factor = auto_scale(as_is.labels, net)
    assert factor == pytest.approx(20.0 / median_cell_diameter(as_is.labels))
    enlarged = run_to_completion(iter_segment_scaled(image, net, factor, min_size=16,
                                                     probabilities=True))
    assert enlarged.scale == pytest.approx(factor) and enlarged.labels.shape == image.shape
    assert enlarged.n_cells == as_is.n_cells == 30
    assert ((enlarged.labels > 0) == (image > 0)).mean() > 0.98  # the same cells, mapped back
    # this network is as sure of the squares at their own size (probabilities 0 or 1) as
    # enlarged: the image is kept as it is
    assert unsure_share(as_is.probabilities, net) == 0.0
    auto = run_to_completion(iter_segment_sized(image, net, min_size=16))
    assert auto.scale == 1.0 and (auto.labels == as_is.labels).all()
    assert auto.probabilities is None  # not asked for: the comparison's are dropped
    # (the packaged model keeps small nuclei enlarged: test_default_model.py)
    assert (segment(image, net, min_size=16) == auto.labels).all()  # segment's default
    kept = run_to_completion(iter_segment_sized(image, net, min_size=16, diameter=0))
    assert kept.scale == 1.0 and (kept.labels == as_is.labels).all()
    told = run_to_completion(iter_segment_sized(image, net, min_size=16, diameter=10))
    assert told.scale == 4.0 and told.n_cells == 30
    lazy = run_to_completion(iter_segment_sized(da.from_array(image, chunks=64), net,
                                                min_size=16))
    assert lazy.scale == 1.0 and (np.asarray(lazy.labels) == as_is.labels).all()
    big = np.kron(image, np.ones((4, 4), np.float32))  # 28 px cells: left as they are
    assert run_to_completion(iter_segment_sized(big, net, min_size=16)).scale == 1.0
    with pytest.raises(ValueError, match="in memory"):
        segment(image, net, out=np.zeros(image.shape, np.int32), diameter=10)
    with pytest.raises(ValueError, match="diameter must be a number"):
        segment(image, net, diameter=-3)


def test_median_cell_diameter_of_any_numbering():
    labels = np.zeros((2, 40, 40), np.int64)
    labels[0, :10, :10], labels[0, 20:25, 20:25] = 7, 2**40  # sparse, huge ids
    labels[1, :4, :4] = 1
    same = labels.copy()
    same[0][same[0] == 2**40] = 3
    expected = 2 * np.sqrt(np.median([100, 25, 16]) / np.pi)
    assert median_cell_diameter(labels) == pytest.approx(expected)
    assert median_cell_diameter(same) == pytest.approx(expected)


def test_cell_diameter_on_a_stack_and_colour(one_torch_thread):
    """Rescaling for a cell diameter keeps a stack's planes and a colour image's shape."""
    from blocks_helpers import passthrough_unet

    from napari_unet.core._utils import run_to_completion
    from napari_unet.core.cellsize import iter_segment_sized

    net = passthrough_unet()
    net.metadata = {"cell_diameter": 40.0}
    plane = np.zeros((60, 80), np.float32)
    plane[10:17, 10:17] = plane[30:37, 50:57] = 1
    stack = np.stack([plane, plane[:, ::-1], np.zeros_like(plane)])
    told = run_to_completion(iter_segment_sized(stack, net, min_size=16, diameter=10))
    assert told.scale == 4.0 and told.labels.shape == stack.shape and told.n_cells == 4
    assert not told.labels[2].any()
    auto = run_to_completion(iter_segment_sized(stack, net, min_size=16))
    assert auto.labels.shape == stack.shape and auto.n_cells == 4
