"""The device-batch pipeline: targets computed once and warped agree with targets
recomputed on the warped labels; cell ids survive; regions are respected; the
validation split holds out whole cells; progress records are throttled."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet import UNet
from napari_unet.core.augment import AugmentConfig, gather_nearest
from napari_unet.core.synthetic import make_sample
from napari_unet.core.training import TrainConfig, iter_train
from napari_unet.core.training.batches import carve_classes
from napari_unet.core.training.loop import Trainer
from napari_unet.core.training.setup import io_shapes
from napari_unet.core.training.split import split_validation
from napari_unet.core.weightmap import IGNORE_INDEX, target_classes, training_targets


def tiny() -> UNet:
    return UNet(depth=2, base_channels=4, dropout=0.0)


@pytest.fixture(scope="module")
def packed():
    """Densely packed, touching nuclei: many carved gaps."""
    image, labels = make_sample("nuclei", (160, 160), seed=4, touching=1.0, density=0.5)
    return image, labels


def trainer_for(image, labels, region=None, model=None, **options):
    config = TrainConfig(device="cpu", validation=0, seed=0, **options)
    trainer = Trainer(image, labels, model or tiny(), config, region)
    batches = trainer.prepare().batches
    return trainer, batches


@pytest.mark.parametrize(("mode", "gap"), [("binary", 1), ("binary", 2), ("boundary", 1),
                                           ("boundary", 2)])
def test_device_carving_equals_the_numpy_rule(mode, gap, rng):
    labels = rng.integers(0, 6, (3, 40, 50)).astype(np.int32)
    labels[:, 10:20, 10:30] = 7  # a large cell touching the random ones
    got = carve_classes(torch.from_numpy(labels), gap, mode).numpy()
    for k in range(3):
        want, _ = target_classes(labels[k], gap=gap, mode=mode)
        # the patch's outer ring sees no neighbours beyond it: compare inside it
        np.testing.assert_array_equal(got[k, gap:-gap, gap:-gap], want[gap:-gap, gap:-gap])


@pytest.mark.parametrize("mode", ["binary", "boundary"])
def test_precomputed_targets_equal_recomputed_ones_under_exact_transforms(packed, mode):
    """Flips and quarter turns permute pixels: the warped precomputed targets must equal
    targets computed from scratch on the transformed image (the map is isotropic)."""
    image, labels = packed
    exact = AugmentConfig(elastic_sigma=0, max_rotation=0, scale_range=(1, 1)).geometric_only()
    model = UNet(depth=2, base_channels=4, dropout=0.0, n_classes=3 if mode == "boundary" else 2)
    trainer, batches = trainer_for(image, labels, model=model, augment=exact, target_mode=mode,
                                   gap=1 if mode == "binary" else 2)
    in_shape, out_shape = io_shapes(model, (40, 40))
    plane, coords = batches.draw(12, batches.span(in_shape, out_shape))
    _, target, weight = batches.read(plane, coords, in_shape, out_shape)
    table = batches.class_table.numpy()
    want_cls, want_w = training_targets(trainer_labels(trainer), gap=trainer.config.gap,
                                        class_weights=table, mode=mode)
    flat_cls = torch.from_numpy(want_cls.ravel().astype(np.int64))
    flat_w = torch.from_numpy(want_w.ravel())
    inner = crop(coords, out_shape)
    np.testing.assert_array_equal(target.numpy(), gather_nearest(flat_cls, batches.table, plane,
                                                                 inner).numpy())
    np.testing.assert_allclose(weight.numpy(), gather_nearest(flat_w, batches.table, plane,
                                                              inner).numpy(), rtol=1e-5)


def trainer_labels(trainer):
    return trainer.data.labels[0]


def crop(coords, shape):
    h, w = coords.shape[-2:]
    a, b = (h - shape[0]) // 2, (w - shape[1]) // 2
    return coords[..., a:a + shape[0], b:b + shape[1]]


def test_warped_targets_agree_with_targets_of_the_warped_labels(packed):
    """Under the full augmentation (elastic, rotation, zoom) the classes are exactly those of
    the warped cell ids, and the warped weight map is close to the one recomputed on them
    (measured: about 10 % mean difference, correlation 0.98; the elastic deformation
    stretches the precomputed ridges with the cells, as in the paper)."""
    image, labels = packed
    trainer, batches = trainer_for(image, labels, augment=AugmentConfig().geometric_only())
    in_shape, out_shape = io_shapes(trainer.model, (112, 112))
    plane, coords = batches.draw(16, batches.span(in_shape, out_shape))
    _, target, weight = batches.read(plane, coords, in_shape, out_shape)
    ids = torch.from_numpy(trainer.data.labels[0].ravel().astype(np.int64))
    warped = gather_nearest(ids, batches.table, plane, crop(coords, out_shape))
    assert set(warped.unique().tolist()) <= set(np.unique(labels).tolist()), "ids survive"
    table = batches.class_table.numpy()
    diffs, corr = [], []
    for k in range(16):
        cls, w = training_targets(warped[k].numpy(), gap=1, class_weights=table)
        # the patch's outer ring sees no neighbour beyond it when recomputed
        np.testing.assert_array_equal(target[k].numpy()[1:-1, 1:-1], cls[1:-1, 1:-1])
        # the recomputation sees no cells beyond the patch (the precomputed map does):
        # compare farther in than the map's reach
        ours, theirs = weight[k].numpy()[28:-28, 28:-28], w[28:-28, 28:-28]
        diffs.append(np.abs(ours - theirs).mean() / theirs.mean())
        if theirs.std() > 0:
            corr.append(np.corrcoef(ours.ravel(), theirs.ravel())[0, 1])
    assert np.median(diffs) < 0.15 and np.median(corr) > 0.95


def test_without_augmentation_batches_hold_exactly_the_precomputed_targets(packed):
    image, labels = packed
    trainer, batches = trainer_for(image, labels, augment=False)
    in_shape, out_shape = io_shapes(trainer.model, (64, 64))
    plane, coords = batches.draw(8, batches.span(in_shape, out_shape))
    x, target, weight = batches.read(plane, coords, in_shape, out_shape)
    table = batches.class_table.numpy()
    cls, w = training_targets(trainer.data.labels[0], gap=1, class_weights=table)
    inner = crop(coords, out_shape)
    r, c = inner[:, 0].long().numpy(), inner[:, 1].long().numpy()
    inside = (r.min(axis=(1, 2)) >= 0) & (c.min(axis=(1, 2)) >= 0) & (
        r.max(axis=(1, 2)) < 160) & (c.max(axis=(1, 2)) < 160)
    assert inside.any()
    for k in np.flatnonzero(inside):
        np.testing.assert_array_equal(target[k].numpy(), cls[r[k], c[k]])
        np.testing.assert_allclose(weight[k].numpy(), w[r[k], c[k]], rtol=1e-6)


def test_gaps_between_touching_cells_survive_shrinking(packed):
    """Zoomed-out patches: carving after the warp keeps every contact separated, which
    nearest-neighbour warping of precomputed classes would not."""
    image, labels = packed
    shrink = AugmentConfig(elastic_sigma=0, flip=False, rot90=False, max_rotation=10,
                           scale_range=(0.8, 0.8)).geometric_only()
    trainer, batches = trainer_for(image, labels, augment=shrink)
    in_shape, out_shape = io_shapes(trainer.model, (64, 64))
    plane, coords = batches.draw(16, batches.span(in_shape, out_shape))
    _, target, _ = batches.read(plane, coords, in_shape, out_shape)
    ids = torch.from_numpy(trainer.data.labels[0].ravel().astype(np.int64))
    warped = gather_nearest(ids, batches.table, plane, crop(coords, out_shape)).numpy()
    classes_of_warped_precomputed = gather_nearest(
        torch.from_numpy(target_classes(trainer.data.labels[0])[0].ravel().astype(np.int64)),
        batches.table, plane, crop(coords, out_shape)).numpy()

    def bridges(cls):
        cells = np.where(cls == 1, warped, 0)
        a, b = cells[:, :, :-1], cells[:, :, 1:]
        c, d = cells[:, :-1, :], cells[:, 1:, :]
        return int(((a != b) & (a > 0) & (b > 0)).sum() + ((c != d) & (c > 0) & (d > 0)).sum())

    assert bridges(target.numpy()) == 0
    assert bridges(classes_of_warped_precomputed) > 0  # what warping classes would lose


def test_regions_are_respected(packed):
    image, labels = packed
    region = np.zeros(labels.shape, bool)
    region[:, :70] = True
    garbage = labels.copy()
    garbage[:, 70:] = np.random.default_rng(0).integers(0, 40, (160, 90))
    trainer, batches = trainer_for(image, garbage, region=region)
    trainer2, batches2 = trainer_for(image, labels, region=region)
    in_shape, out_shape = io_shapes(trainer.model, (32, 32))
    a = batches.make(8, in_shape, out_shape)
    b = batches2.make(8, in_shape, out_shape)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)  # labels outside the region change nothing
    assert (a[2][a[1] == IGNORE_INDEX] == 0).all()


def test_validation_split_holds_out_whole_cells():
    labels, annotated = [], []
    for s in range(4):
        _, lab = make_sample("nuclei", (256, 256), seed=s, density=0.35)
        ids, inv = np.unique(lab, return_inverse=True)
        labels.append(inv.reshape(lab.shape).astype(np.int32))
        annotated.append(np.ones(lab.shape, bool))
    cells = sum(int((np.bincount(x.ravel())[1:] >= 16).sum()) for x in labels)
    assert cells >= 120
    split = split_validation(labels, annotated, 0.1, seed=0)
    assert 30 <= split.val_cells <= cells // 2
    for lab, train, val in zip(labels, split.train, split.val):
        if val is None:
            continue
        assert not (train & val).any() and ((train | val) == 1).all()
        for i in np.unique(lab[val]):
            if i:
                assert val[lab == i].all(), f"cell {i} is cut between training and validation"
    again = split_validation(labels, annotated, 0.1, seed=0)
    assert all((a is None and b is None) or np.array_equal(a, b)
               for a, b in zip(split.val, again.val))
    few = split_validation([labels[0][:40, :40]], [annotated[0][:40, :40]], 0.1, seed=0)
    assert few.val_cells == 0 and few.val == [None]


def test_progress_records_are_throttled(packed):
    image, labels = packed
    common = dict(patch_shape=16, batch_size=1, validation=0, device="cpu", seed=0)
    start = tiny()
    run = iter_train(image, labels, start, max_steps=12, report_interval=10**6, **common)
    records = [p for p in run if p.phase == "train"]
    assert [r.step for r in records] == [12], "one record: the last step's"
    every = iter_train(image, labels, start, max_steps=12, report_interval=0, **common)
    losses = [p.loss for p in every if p.phase == "train"]
    assert len(losses) == 12
    assert records[0].loss == pytest.approx(np.mean(losses), rel=1e-5), "the mean of its steps"
    timed = iter_train(image, labels, tiny(), max_steps=30, report_interval=0.3, **common)
    times = [p.elapsed for p in timed if p.phase == "train"]
    assert all(b - a >= 0.3 for a, b in zip(times[:-2], times[1:-1]))
