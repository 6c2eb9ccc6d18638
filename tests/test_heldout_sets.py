"""The held-out evaluation sets of scripts/pretrain.py: fixed, reproducible, really packed."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pretrain.py"


@pytest.fixture(scope="module")
def pretrain():
    spec = importlib.util.spec_from_file_location("pretrain_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def condition(pretrain, kind, name):
    return next(kw for n, kw, _ in pretrain.HELDOUT[kind] if n == name)


def test_the_nuclei_conditions_are_kept(pretrain):
    names = [name for name, _, _ in pretrain.HELDOUT["nuclei"]]
    assert names == ["as in training", "large nuclei r 30-40", "tiny nuclei r 3-4",
                     "very noisy (5 photons)", "uint16, strong background", "packed clusters"]
    assert set(pretrain.HELDOUT) == {"nuclei", "membranes", "phase"}


def test_heldout_images_are_reproduced_exactly(pretrain):
    kw = condition(pretrain, "nuclei", "as in training")
    first = list(pretrain.heldout_images("nuclei", kw, 2, seed=7, shape=(96, 96)))
    again = list(pretrain.heldout_images("nuclei", kw, 2, seed=7, shape=(96, 96)))
    other = list(pretrain.heldout_images("nuclei", kw, 2, seed=8, shape=(96, 96)))
    for (a, la), (b, lb) in zip(first, again):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(first[0][0], first[1][0])  # two different images
    assert not np.array_equal(first[0][0], other[0][0])  # the seed matters


def test_packed_clusters_are_packed(pretrain):
    packed = condition(pretrain, "nuclei", "packed clusters")
    usual = condition(pretrain, "nuclei", "as in training")
    labels = [lab for _, lab in pretrain.heldout_images("nuclei", packed, 2, 7, (192, 192))]
    st = pretrain.heldout_stats(labels)
    assert st["touching %"] > 85
    assert st["contact / radius"] > 1.5  # flattened along contacts longer than a radius
    base = pretrain.heldout_stats(
        [lab for _, lab in pretrain.heldout_images("nuclei", usual, 2, 7, (192, 192))])
    assert st["contact / radius"] > 1.5 * base["contact / radius"]


def test_heldout_stats_measures_contacts(pretrain):
    lab = np.zeros((20, 30), np.int32)
    lab[2:12, 2:12] = 1
    lab[2:12, 12:22] = 2  # touching 1 along 10 pixels
    lab[15:19, 25:29] = 3  # alone
    st = pretrain.heldout_stats([lab])
    assert st["nuclei per image"] == 3
    assert st["touching %"] == pytest.approx(200 / 3)
    assert st["contact / radius"] == pytest.approx(10 / np.sqrt(100 / np.pi))


def test_hysteresis_prototype_splits_a_weak_bridge_that_growing_keeps(pretrain):
    """Two confident nuclei joined by a less confident bridge: segment's rule (components of
    p >= 0.5 grown back) sees one cell, the hysteresis prototype two, each grown back over
    the bridge and never into the background; a lone dim speck is dropped by size."""
    p = np.zeros((2, 20, 30), np.float32)
    p[1, 2:10, 2:10] = p[1, 2:10, 11:19] = 0.95
    p[1, 2:10, 10] = 0.6  # the bridge
    p[1, 15:17, 25:27] = 0.95  # 4 px: under min_size
    p[0] = 1 - p[1]

    class Model:
        classes = ("background", "cell")
        metadata: dict = {}

    grown = pretrain.decode(p, Model(), "grow")
    cells = pretrain.hysteresis_cells(p, Model.classes, min_size=16)
    assert grown[5, 5] == grown[5, 15] != 0, "the rule of segment joins them"
    assert cells.max() == 2 and cells[5, 5] != cells[5, 15]
    assert cells[5, 10] in (cells[5, 5], cells[5, 15]), "the bridge goes to a neighbour"
    assert (cells[p[1] < 0.5] == 0).all(), "nothing grows into the background"
    assert cells[15, 25] == 0


def test_pool_radius_and_photon_ranges_are_drawn_and_recorded(pretrain, monkeypatch):
    drawn = []
    real = pretrain._pool_sample

    def spy(job):
        drawn.append(job[2])
        return real((job[0], job[1], {**job[2], "radius": (4.0, 5.0)}))  # small, fast images

    monkeypatch.setattr(pretrain, "POOL_SHAPE", (48, 48))
    monkeypatch.setattr(pretrain, "_pool_sample", spy)
    images, _, _ = pretrain.training_pool(6, seed=3)
    assert all(kw["radius"] == (4.0, 26.0) and "photons" not in kw for kw in drawn)
    drawn.clear()
    again, _, _ = pretrain.training_pool(6, seed=3, radius=(3.0, 26.0), photons=(3.0, 3000.0))
    assert all(kw["radius"] == (3.0, 26.0) and 3.0 <= kw["photons"] <= 3000.0 for kw in drawn)
    assert len({round(kw["photons"]) for kw in drawn}) == len(drawn)  # drawn per image
    text = pretrain.trained_on({"nuclei": 1.0}, 0.5, (0.7, 1.4), (3.0, 26.0), (3.0, 3000.0))
    assert "radius 3-26 px" in text and "3-3000 photons" in text
    args = argparse.Namespace(
        steps=10, images=6, shares=None, packed=0.5, target_mode="binary", patch=192, batch=4,
        lr=3e-3, scale=(0.7, 1.4), rotation=45.0, validate_every=500, seed=3, threads=0,
        device="auto", radius=(3.0, 26.0), photons=(3.0, 3000.0))
    assert "--radius 3 26 --photons 3 3000" in pretrain.recipe(args)


def test_rescore_records_todays_figures_and_keeps_the_rest(pretrain, tmp_path, capsys):
    """``rescore`` writes the held-out figures of today's segment into a model file; the
    weights, recipe and everything else stay as they were."""
    import torch

    from napari_unet import UNet, load_model, save_model

    torch.manual_seed(0)
    path = save_model(UNet(depth=2, base_channels=4), tmp_path / "m.pt", weights_dtype="float16",
                      recipe="python scripts/pretrain.py train --seed 1", target={"gap": 1},
                      heldout_f1={"nuclei": {"as in training": -1.0}})
    before = load_model(path)
    out = tmp_path / "rescored.pt"
    assert pretrain.main(["rescore", str(path), "-o", str(out), "--eval-images", "1",
                          "--threads", "1"]) == 0
    assert "held-out figures" in capsys.readouterr().out
    after = load_model(out)
    for a, b in zip(before.state_dict().values(), after.state_dict().values()):
        assert torch.equal(a, b)
    assert after.metadata["recipe"] == before.metadata["recipe"]
    assert set(after.metadata["heldout_f1"]) == set(pretrain.HELDOUT)
    scores = [f1 for kind in after.metadata["heldout_f1"].values() for f1 in kind.values()]
    assert all(0.0 <= f1 <= 1.0 for f1 in scores)
    assert load_model(path).metadata["heldout_f1"] == {"nuclei": {"as in training": -1.0}}
