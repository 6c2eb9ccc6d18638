"""The held-out evaluation sets of scripts/pretrain.py: fixed, reproducible, really packed."""

from __future__ import annotations

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
