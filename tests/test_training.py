"""The training engine: learning, cancel/resume, sparse regions, bad input, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet import UNet, load_model, save_model
from napari_unet.core import checkpoints
from napari_unet.core._utils import run_to_completion
from napari_unet.core.augment import AugmentConfig
from napari_unet.core.normalize import Normalization
from napari_unet.core.synthetic import make_sample
from napari_unet.core.training import (
    CHECKPOINT_NAME,
    DEFAULT_MODEL_CONFIG,
    TrainConfig,
    TrainProgress,
    iter_train,
    loop,
    step,
    train,
    training_loss,
)
from napari_unet.core.training.loop import Trainer
from napari_unet.core.training.setup import io_shapes
from napari_unet.core.training.validate import clear_margin
from napari_unet.core.weightmap import IGNORE_INDEX


def tiny(n_classes: int = 2) -> UNet:
    return UNet(depth=2, base_channels=4, dropout=0.0, n_classes=n_classes)


@pytest.fixture(scope="module")
def nuclei():
    # scattered at a fixed density: a clustered layout may leave a small image nearly empty
    pairs = [make_sample("nuclei", (80, 80), seed=s, layout="random", density=0.3)
             for s in range(2)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


FAST = dict(patch_shape=32, batch_size=2, device="cpu", validation=0, report_interval=0)


def weights(model: UNet) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor], atol: float = 0.0) -> bool:
    return all(torch.allclose(x, y, atol=atol, rtol=0) for x, y in zip(a, b))


# --------------------------------------------------------------------- learning
def test_loss_goes_down(nuclei):
    images, labels = nuclei
    model = UNet(depth=2, base_channels=8, dropout=0.0)
    before = weights(model)
    result = train(images, labels, model, max_steps=150, patch_shape=48, batch_size=4,
                   augment=False, validation=0, device="cpu", seed=0, report_interval=0)
    losses = [h.loss for h in result.history]
    assert len(losses) == 150 and result.stopped_reason == "max_steps"
    assert np.mean(losses[-15:]) < 0.6 * np.mean(losses[:15])
    assert same(weights(model), before), "the caller's model is not changed"
    assert not same(weights(result.model), before)


def test_result_model_records_and_validation(nuclei, tmp_path):
    images, labels = nuclei
    start = tiny()
    start.normalization = Normalization(low=2.0, high=99.0)
    records = []
    run = iter_train(images, labels, start, max_steps=8, validate_every=4, validation=0.5,
                     patch_shape=32, batch_size=2, device="cpu", seed=3, gap=2,
                     report_interval=0)
    for p in run:
        assert isinstance(p, TrainProgress)
        records.append(p)
    result = run.result
    assert [r.phase for r in records][0] == "prepare"
    steps = [r for r in records if r.phase == "train"]
    assert [r.step for r in steps][-8:] == list(range(1, 9))
    assert all(r.total == 8 and r.batch_size == 2 and r.patch_shape == (32, 32) for r in steps)
    assert steps[-1].eta == pytest.approx(0.0) and steps[-1].fraction == pytest.approx(1.0)
    assert any(r.phase == "validate" for r in records)
    measured = [r for r in steps if r.val_f1 is not None]
    assert {r.step for r in measured} >= {4, 8} and all(0 <= r.val_f1 <= 1 for r in measured)
    assert result.val_cells >= 5 and all(r.val_cells == result.val_cells for r in measured)
    model = result.model
    assert not model.training and next(model.parameters()).device.type == "cpu"
    assert model.normalization == start.normalization
    meta = model.metadata
    assert meta["target"] == {"mode": "binary", "gap": 2, "w0": 10.0, "sigma": 5.0}
    tr = meta["training"]
    assert tr["steps"] == 8 and tr["n_images"] == 2 and tr["device"] == "cpu"
    assert tr["best_step"] == result.best_step and tr["best_val_f1"] == result.best_val_f1
    assert {"seconds", "date", "final_val_f1", "final_loss", "seed"} <= set(tr)
    reloaded = load_model(save_model(model, tmp_path / "m.pt"))
    assert reloaded.metadata["target"]["gap"] == 2


def test_validation_holds_out_whole_cells_of_a_stack():
    pairs = [make_sample("nuclei", (64, 64), seed=10 + s) for s in range(10)]
    stack = np.stack([p[0] for p in pairs])
    labels = np.stack([p[1] for p in pairs])
    result = run_to_completion(iter_train(
        stack, labels, tiny(), max_steps=2, validation=0.1, validate_every=2, patch_shape=32,
        batch_size=1, device="cpu", seed=0))
    cells = sum(int((np.bincount(p.ravel())[1:] >= 16).sum()) for p in labels)  # not tiny
    assert min(30, cells // 4) <= result.val_cells <= cells // 2
    assert result.history[-1].val_f1 is not None and result.history[-1].val_cells > 0
    assert result.model.metadata["training"]["val_cells"] == result.val_cells


@pytest.mark.parametrize("start", ["trained", "new"])
def test_which_model_is_kept(nuclei, monkeypatch, start):
    # scripted validations (loss, F1): the rule, not the network, is tested; m is two
    # cells' worth of F1 on the held-out cells
    script, calls = [], []

    def scripted(model, windows, device, grow, notify):
        yield notify("validating")
        if not script:
            m = clear_margin(sum(w.n_cells for w in windows))
            assert 0 < m <= 0.3
            script.extend([(0.30, 0.10), (0.25, 0.10 + m / 2), (0.27, 0.10 + m),
                           (0.24, 0.10 + m / 2), (0.40, 0.10 + 2.1 * m), (0.45, 0.10 + 2.5 * m)])
        calls.append(script[len(calls)])
        return calls[-1]

    monkeypatch.setattr(loop, "validate", scripted)
    model = tiny()
    if start == "trained":
        model.metadata = {"name": "trained"}  # validated before the first step
    images, labels = nuclei
    result = run_to_completion(iter_train(
        images, labels, model, max_steps=6 - (start == "trained"), validate_every=1,
        validation=0.3, patch_shape=32, batch_size=1, device="cpu", seed=0, report_interval=0))
    assert len(calls) == 6
    assert clear_margin(result.val_cells) == pytest.approx((calls[1][1] - 0.1) * 2)
    kept = [r.best_val_f1 for r in result.history]
    if start == "trained":
        # 1: a cell more and a lower loss; 2: a cell more but a worse fit; 3: the F1 of 1 and
        # a better fit; 4: clearly more cells, with a worse fit; 5: less than two cells more
        # than 4 and a worse fit
        assert result.start_val_f1 == calls[0][1]
        assert result.best_step == 4 and result.best_val_f1 == calls[4][1]
        assert kept == [calls[k][1] for k in (1, 1, 3, 4, 4)]
    else:  # a new network: the higher F1 wins
        assert result.best_step == 6 and result.best_val_f1 == calls[5][1]
        assert kept == [calls[k][1] for k in (0, 1, 2, 2, 4, 5)]


# ------------------------------------------------------------- cancel and resume
def test_cancel_keeps_the_best_model(nuclei, tmp_path):
    images, labels = nuclei
    run = iter_train(images, labels, tiny(), max_steps=1000, validate_every=2, validation=0.3,
                     checkpoint_dir=tmp_path, patch_shape=32, batch_size=2, device="cpu",
                     seed=0, report_interval=0)
    for p in run:
        if p.phase == "train" and p.step == 5:
            run.close()
    result = run.result
    assert result.stopped_reason == "cancelled" and result.steps == 5
    assert result.best_step in (2, 4) and result.best_val_f1 is not None
    best = load_model(tmp_path / "best.pt")
    assert best.metadata["training"]["best_step"] == result.best_step
    for a, b in zip(best.state_dict().values(), result.model.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert (tmp_path / CHECKPOINT_NAME).is_file()
    with pytest.raises(StopIteration):
        next(run)


def test_resume_continues_exactly(nuclei, tmp_path):
    images, labels = nuclei
    start = tiny()
    common = dict(FAST, seed=7, max_steps=6)
    straight = train(images, labels, start, **common)
    run = iter_train(images, labels, start, checkpoint_dir=tmp_path, **common)
    for p in run:
        if p.step == 3:
            run.close()  # cancelled: the checkpoint is written on the way out
    ck = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert ck["step"] == 3 and ck["optimizer"]["state"]  # Adam moments are kept
    resumed = train(images, labels, resume=tmp_path, **{**common, "seed": None})
    assert run.result.steps == 3 and resumed.steps == 6
    assert [h.step for h in resumed.history] == list(range(1, 7))
    np.testing.assert_allclose([h.loss for h in resumed.history],
                               [h.loss for h in straight.history], rtol=1e-5)
    assert same(weights(resumed.model), weights(straight.model), atol=1e-6)


# --------------------------------------------------------------- sparse regions
def test_labels_outside_regions_have_no_effect(nuclei):
    image, labels = nuclei[0][0], nuclei[1][0]
    rect = [(0, 0, 80, 40)]  # annotation complete in the left half only
    wrong = labels.copy()
    rng = np.random.default_rng(0)
    wrong[:, 40:] = rng.integers(0, 50, (80, 40))  # garbage outside the region
    opts = dict(FAST, max_steps=4, seed=1, augment=True)
    start = tiny()
    a = train(image, labels, start, regions=rect, **opts)
    b = train(image, wrong, start, regions=rect, **opts)
    mask = np.zeros((80, 80), bool)
    mask[:, :40] = True
    c = train(image, wrong, start, regions=mask, **opts)
    assert [h.loss for h in a.history] == [h.loss for h in b.history]
    assert same(weights(a.model), weights(b.model))
    assert same(weights(a.model), weights(c.model))
    full = train(image, wrong, start, **opts)  # without regions the garbage counts
    assert not same(weights(a.model), weights(full.model))


def test_batches_ignore_unannotated_pixels_and_align_targets(nuclei):
    labels = nuclei[1][0]
    image = (labels > 0).astype(np.float32)
    region = np.zeros(labels.shape, bool)
    region[10:70, 5:60] = True
    geo = AugmentConfig().geometric_only()
    trainer = Trainer(image, labels, tiny(), TrainConfig(augment=geo, **FAST), region)
    batches = trainer.prepare().batches
    in_shape, out_shape = io_shapes(trainer.model, (32, 32))
    x, target, weight = batches.make(6, in_shape, out_shape)
    assert x.shape == (6, 1, *in_shape) and target.shape == weight.shape == (6, *out_shape)
    ignored = target == IGNORE_INDEX
    assert ignored.any() and (~ignored).any()
    assert (weight[ignored] == 0).all() and (weight[~ignored] > 0).all()
    rigid = AugmentConfig(elastic_sigma=0).geometric_only()  # no displacement of the centre
    batches.augment = rigid
    _, centred, _ = batches.make(16, in_shape, out_shape)
    middle = centred[:, out_shape[0] // 2, out_shape[1] // 2]
    assert (middle != IGNORE_INDEX).all(), "every patch is centred on a training pixel"
    m = trainer.model.margin
    inner = x[:, 0, m:-m, m:-m] > 0.5  # the image under the target patch
    cell = target == 1
    assert (inner[cell]).float().mean() > 0.97, "targets lie on the warped cells"
    assert (target[~inner & ~ignored] == 0).float().mean() > 0.97


def test_skips_unlabelled_planes_unless_a_region_marks_them():
    pairs = [make_sample("nuclei", (64, 64), seed=s) for s in range(3)]
    stack = np.stack([p[0] for p in pairs])
    labels = np.stack([p[1] for p in pairs])
    labels[1] = 0
    opts = dict(FAST, max_steps=1)
    assert train(stack, labels, tiny(), **opts).model.metadata["training"]["n_planes"] == 2
    marked = train(stack, labels, tiny(), regions=[(1, 0, 0, 64, 64)], **opts)
    assert marked.model.metadata["training"]["n_planes"] == 3


# ------------------------------------------------------------------------- loss
def test_weighted_loss_ignores_and_weighs():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 5, 5, requires_grad=True)
    target = torch.randint(0, 2, (2, 5, 5))
    weight = torch.rand(2, 5, 5) + 0.5
    target[0, :2] = IGNORE_INDEX
    weight[0, :2] = 0
    loss = training_loss(logits, target, weight)
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none",
                                           ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(loss, (ce * weight).sum() / weight.sum())
    loss.backward()
    assert (logits.grad[0, :, :2] == 0).all(), "ignored pixels get no gradient"
    both = training_loss(logits, target, weight, "weighted_ce+dice")
    assert both > loss
    with pytest.raises(ValueError, match="loss must be"):
        training_loss(logits, target, weight, "mse")


def test_non_finite_loss_stops_and_keeps_a_good_model(nuclei, monkeypatch):
    images, labels = nuclei
    calls = {"n": 0}
    real = training_loss

    def exploding(*args, **kw):
        calls["n"] += 1
        loss = real(*args, **kw)
        return loss * float("nan") if calls["n"] >= 3 else loss

    monkeypatch.setattr(step, "training_loss", exploding)
    result = train(images, labels, tiny(), max_steps=10, **FAST, seed=0)
    assert "loss became nan" in result.stopped_reason and result.steps == 2
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_out_of_memory_halves_the_batch(nuclei, monkeypatch):
    images, labels = nuclei
    real = UNet.forward

    def small_memory(self, x):
        if x.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, x)

    monkeypatch.setattr(UNet, "forward", small_memory)
    monkeypatch.setattr(loop, "is_out_of_memory",  # a GPU's error, simulated on the CPU
                        lambda err, device: isinstance(err, torch.OutOfMemoryError))
    result = train(images, labels, tiny(), max_steps=2, **{**FAST, "batch_size": 4})
    notes = [h.message for h in result.history if h.message]
    assert result.steps == 2 and notes and "batch size 1" in notes[0]
    assert result.history[-1].batch_size == 1


def test_boundary_mode_and_dice_loss(nuclei):
    images, labels = nuclei
    result = train(images, labels, tiny(3), max_steps=2, target_mode="boundary",
                   loss="weighted_ce+dice", optimizer="sgd", **FAST)
    assert result.model.metadata["target"]["mode"] == "boundary"
    assert np.isfinite([h.loss for h in result.history]).all()


def test_default_model_is_new_when_nothing_is_packaged(nuclei, monkeypatch):
    monkeypatch.setattr(checkpoints, "packaged_model_path", lambda name="default": None)
    images, labels = nuclei
    result = train(images[0], labels[0], max_steps=1, **{**FAST, "batch_size": 1})
    assert result.model.config == UNet(**{**DEFAULT_MODEL_CONFIG, "n_classes": 2}).config
    assert result.model.metadata["training"]["started_from"] == "new"


def test_model_none_fine_tunes_the_packaged_model(nuclei, monkeypatch, tmp_path):
    packaged = tiny()
    packaged.metadata = {"name": "default", "trained_on": "test"}
    path = save_model(packaged, tmp_path / "default.pt")
    monkeypatch.setattr(checkpoints, "packaged_model_path", lambda name="default": path)
    images, labels = nuclei
    result = train(images[0], labels[0], max_steps=1, **{**FAST, "batch_size": 1})
    assert result.model.config == packaged.config
    assert result.model.metadata["training"]["started_from"] == "default"
    assert result.model.metadata["trained_on"] == "test"
    # a target mode the packaged model cannot do starts a new network instead
    result = train(images[0], labels[0], max_steps=1, target_mode="boundary",
                   **{**FAST, "batch_size": 1})
    assert result.model.n_classes == 3
    assert result.model.metadata["training"]["started_from"] == "new"


# -------------------------------------------------------------------- bad input
def test_bad_inputs_give_clear_errors(nuclei):
    images, labels = nuclei
    img, lab = images[0], labels[0]
    with pytest.raises(ValueError, match=r"image 1 has shape \(80, 80\).*labels 1 have shape "
                                         r"\(80, 79\)"):
        iter_train(images, [lab, lab[:, :79]], tiny(), **FAST)
    with pytest.raises(ValueError, match="2 image.*1 label"):
        iter_train(images, [lab], tiny(), **FAST)
    with pytest.raises(ValueError, match="nothing to train on"):
        train(img, np.zeros_like(lab), tiny(), max_steps=1, **FAST)
    nan = img.astype(np.float32)
    nan[3, 3] = np.nan
    with pytest.raises(ValueError, match="image 0.*NaN"):
        train(nan, lab, tiny(), max_steps=1, **FAST)
    with pytest.raises(ValueError, match="images must be an array"):
        iter_train("image.tif", lab, tiny(), **FAST)
    with pytest.raises(ValueError, match="labels 0 must be an array"):
        iter_train([img], [None], tiny(), **FAST)
    with pytest.raises(ValueError, match="negative"):
        iter_train(img, -lab, tiny(), **FAST)
    with pytest.raises(ValueError, match="non-integer"):
        iter_train(img, lab + 0.5, tiny(), **FAST)
    with pytest.raises(ValueError, match="optimizer must be"):
        iter_train(img, lab, tiny(), optimizer="rmsprop", **FAST)
    with pytest.raises(ValueError, match="needs 3"):
        iter_train(img, lab, tiny(), target_mode="boundary", **FAST)
    with pytest.raises(ValueError, match="never stop"):
        train(img, lab, tiny(), **FAST)
    with pytest.raises(ValueError, match="outside the image"):
        iter_train(img, lab, tiny(), regions=[(100, 100, 120, 120)], **FAST)
    with pytest.raises(ValueError, match="rectangles"):
        iter_train(img, lab, tiny(), regions=np.zeros((3, 3)), **FAST)
    with pytest.raises(ValueError, match="either model= or resume="):
        iter_train(img, lab, tiny(), resume="somewhere", **FAST)
    with pytest.raises(FileNotFoundError, match="no training checkpoint"):
        iter_train(img, lab, resume="/nonexistent/dir", **FAST)
    with pytest.raises(ValueError, match="max_steps must be"):
        iter_train(img, lab, tiny(), max_steps=0, **FAST)


# ------------------------------------------------------------------------- CLI
def test_cli_train(tmp_path, nuclei, capsys):
    import tifffile

    from napari_unet.cli import main

    images, labels = nuclei
    paths = []
    for k in range(2):
        tifffile.imwrite(tmp_path / f"i{k}.tif", images[k])
        tifffile.imwrite(tmp_path / f"l{k}.tif", labels[k])
        paths.append((str(tmp_path / f"i{k}.tif"), str(tmp_path / f"l{k}.tif")))
    start = save_model(tiny(), tmp_path / "start.pt")
    out = tmp_path / "trained.pt"
    args = ["train", "--images", paths[0][0], paths[1][0], "--labels", paths[0][1],
            paths[1][1], "-o", str(out), "--from", str(start), "--steps", "2", "--patch", "32",
            "--batch-size", "1", "--device", "cpu", "--seed", "0", "--validation", "0"]
    assert main(args) == 0
    assert load_model(out).metadata["training"]["steps"] == 2
    assert "trained 2 steps" in capsys.readouterr().out
    assert main(args) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    bad = ["train", "--images", paths[0][0], "--labels", paths[0][1], paths[1][1], "-o",
           str(tmp_path / "x.pt")]
    assert main(bad) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "1 image(s) but 2 label image(s)" in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_mixed_precision_with_automatic_batch(nuclei):
    images, labels = nuclei
    result = train(images, labels, tiny(), max_steps=20, device="cuda", seed=0,
                   validate_every=10, validation=0.3)
    assert result.steps == 20 and result.history[-1].batch_size >= 2
    assert np.isfinite([h.loss for h in result.history]).all()
    assert result.history[-1].val_f1 is not None
    assert next(result.model.parameters()).device.type == "cpu"
    assert result.model.metadata["training"]["device"].startswith("cuda")
