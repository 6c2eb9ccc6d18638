"""Live training without a viewer: labels change while a run goes on (TrainingRun.update)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet import UNet, iter_train
from napari_unet.core.synthetic import make_sample
from napari_unet.core.training import TrainConfig
from napari_unet.core.training import data as data_module
from napari_unet.core.training.loop import Trainer
from napari_unet.core.training.trainset import TrainingSet


@pytest.fixture(scope="module")
def scene():
    image, labels = make_sample("nuclei", (192, 192), seed=7, layout="random",
                                density=0.35)
    return image, labels.astype(np.int32)


def tiny() -> UNet:
    return UNet(depth=2, base_channels=4, dropout=0.0)


OPTS = dict(patch_shape=32, batch_size=2, device="cpu", seed=0, report_interval=0)


def fresh_set(image, labels, region, validation=0.0):
    trainer = Trainer(image, labels, tiny(), TrainConfig(validation=validation, **OPTS),
                      region)
    return trainer.prepare()


def assert_same_set(live: TrainingSet, fresh: TrainingSet):
    for k in range(len(fresh.planes)):
        np.testing.assert_array_equal(live.planes[k].labels, fresh.planes[k].labels)
        np.testing.assert_array_equal(live.targets[k][0], fresh.targets[k][0])
        np.testing.assert_allclose(live.targets[k][1], fresh.targets[k][1], atol=1e-6)
        np.testing.assert_array_equal(live.train[k], fresh.train[k])
    a, b = live.batches, fresh.batches
    torch.testing.assert_close(a.labels, b.labels)
    torch.testing.assert_close(a.border, b.border, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.train, b.train)
    torch.testing.assert_close(a.centres, b.centres)
    torch.testing.assert_close(a.class_table, b.class_table)


def run_until(run, version, limit=200):
    for _, record in zip(range(limit), run):
        if run.applied_version >= version:
            return record
    raise AssertionError(f"update {version} was not taken in within {limit} records")


def test_new_cells_erased_cells_and_regions_join_the_running_training(scene):
    image, labels = scene
    painted = labels.copy()
    painted[:, 96:] = 0  # the left half is painted, the right half not yet
    left = [(0, 0, 192, 96)]
    run = iter_train(image, painted, tiny(), regions=left, validation=0, **OPTS)
    for _, _ in zip(range(3), run):
        pass
    tset = run._trainer.set
    # paint the right half too, and erase one cell on the left
    more = labels.copy()
    gone = int(np.unique(more[:, :96][more[:, :96] > 0])[0])
    more[more == gone] = 0
    version = run.update(0, more, [(0, 0, 192, 192)])
    record = run_until(run, version)
    assert record.labels_version == version
    assert_same_set(tset, fresh_set(image, more, [(0, 0, 192, 192)]))
    queued, applied = run.update_times[version]
    assert applied >= queued
    assert record.step == 3, "taken in before the next step, without a restart"
    run.close()


def test_only_the_edited_neighbourhood_is_recomputed(scene, monkeypatch):
    image, labels = scene
    run = iter_train(image, labels, tiny(), validation=0, **OPTS)
    next(run), next(run)
    windows = []
    real = data_module.plane_targets

    def spy(lab, config):
        windows.append(lab.shape)
        return real(lab, config)

    monkeypatch.setattr(data_module, "plane_targets", spy)
    edited = labels.copy()
    edited[100:106, 100:108] = 999  # a small new cell
    version = run.update(0, edited)
    run_until(run, version)
    assert windows and max(h * w for h, w in windows) < 0.5 * labels.size
    monkeypatch.setattr(data_module, "plane_targets", real)
    assert_same_set(run._trainer.set, fresh_set(image, edited, None))
    run.close()


def test_held_out_area_stays_and_holds_new_cells(scene):
    image, labels = scene
    run = iter_train(image, labels, tiny(), validation=0.3, validate_every=2, **OPTS)
    for _, _ in zip(range(4), run):
        pass
    tset = run._trainer.set
    area = next(a for a in tset.areas if a is not None)
    before = tset.val_cells
    rows, cols = np.nonzero(area & (labels == 0))
    r, c = int(rows[len(rows) // 2]), int(cols[len(cols) // 2])
    edited = labels.copy()
    blob = np.zeros_like(labels, bool)
    blob[max(r - 4, 0):r + 4, max(c - 4, 0):c + 4] = True
    blob &= labels == 0
    edited[blob] = 5000
    version = run.update(0, edited)
    run_until(run, version)
    if blob.sum() >= 16:
        assert tset.val_cells == before + 1, "a cell painted in the held-out area is held out"
    assert not (tset.train[0] & blob).any()
    run.close()


def test_a_plane_painted_later_joins_a_stack():
    pairs = [make_sample("nuclei", (64, 64), seed=s, layout="random", density=0.35)
             for s in range(3)]
    stack = np.stack([p[0] for p in pairs])
    labels = np.stack([p[1] for p in pairs]).astype(np.int32)
    partial = labels.copy()
    partial[2] = 0
    run = iter_train(stack, partial, tiny(), validation=0, **OPTS)
    next(run), next(run)
    assert run._trainer.n_planes == 2
    version = run.update(0, labels)
    run_until(run, version)
    assert run._trainer.n_planes == 3
    run.close()
    assert run.result.model.metadata["training"]["n_planes"] == 3


def test_bad_updates_are_refused_at_once(scene):
    image, labels = scene
    run = iter_train(image, labels, tiny(), max_steps=2, validation=0, **OPTS)
    with pytest.raises(ValueError, match="same size"):
        next(run)
        run.update(0, labels[:10])
    with pytest.raises(ValueError, match="image_index 3"):
        run.update(3, labels)
    with pytest.raises(ValueError, match="negative"):
        run.update(0, -labels)
    for _ in run:
        pass
    with pytest.raises(RuntimeError, match="ended"):
        run.update(0, labels)


def test_erasing_everything_keeps_training_on_what_was_there(scene):
    image, labels = scene
    run = iter_train(image, labels, tiny(), validation=0, **OPTS)
    next(run), next(run)
    version = run.update(0, np.zeros_like(labels))
    record = run_until(run, version)
    messages = [record.message] + [r.message for _, r in zip(range(3), run)]
    assert any(m and "nothing painted is left" in m for m in messages)
    run.close()
    assert run.result.steps >= 3


def test_current_model_is_a_copy_of_the_weights_now(scene):
    image, labels = scene
    run = iter_train(image, labels, tiny(), validation=0, **OPTS)
    for _, _ in zip(range(4), run):
        pass
    snap = run.current_model()
    live = run._trainer.model
    for a, b in zip(snap.parameters(), live.parameters()):
        torch.testing.assert_close(a, b.detach().cpu())
    next(run)
    assert not all(torch.equal(a, b.detach().cpu())
                   for a, b in zip(snap.parameters(), live.parameters())), "a copy"
    assert not snap.training
    run.close()


def test_training_from_a_trained_model_uses_the_gentler_rates(scene):
    """From a trained model: live training (no limit, no decay) takes LIVE_FINETUNE_LR, a
    run with a limit the still lower FINETUNE_LR; a new network or an explicit lr keep
    theirs."""
    from napari_unet.core.training.config import DEFAULT_LR, FINETUNE_LR, LIVE_FINETUNE_LR

    image, labels = scene
    trained = tiny()
    trained.metadata["training"] = {"steps": 10}
    cases = [(trained, {}, LIVE_FINETUNE_LR["adam"]), (tiny(), {}, DEFAULT_LR["adam"]),
             (trained, {"max_steps": 5}, FINETUNE_LR["adam"]),
             (tiny(), {"max_steps": 5}, DEFAULT_LR["adam"]),
             (trained, {"lr": 5e-3}, 5e-3)]
    for model, extra, lr in cases:
        run = iter_train(image, labels, model, validation=0, **OPTS, **extra)
        for _, _record in zip(range(3), run):
            pass
        run.close()
        assert run.result.model.metadata["training"]["lr"] == lr
    assert FINETUNE_LR["adam"] < LIVE_FINETUNE_LR["adam"] < DEFAULT_LR["adam"]
