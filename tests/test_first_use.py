"""A first-time user's round: open the sample, train with every default, segment."""

from __future__ import annotations

import numpy as np
import pytest
from gui import choose, click

pytest.importorskip("napari")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_training_with_every_default_on_the_sample_does_not_make_it_worse(
        make_napari_viewer, tmp_path, monkeypatch, qtbot):
    """Open the sample, dock Train and Segment, change nothing but a short budget, train,
    and segment with the model the widgets then offer: on all the sample's nuclei (the
    generator knows them, the sample shows one corner's) it is at least as good as the
    packaged model it started from."""
    from napari_unet._sample import sample_with_truth
    from napari_unet.core.metrics import match

    monkeypatch.setenv("NAPARI_UNET_MODELS_DIR", str(tmp_path / "models"))
    viewer = make_napari_viewer()
    viewer.open_sample("napari-unet", "nuclei")
    _, train = viewer.window.add_plugin_dock_widget("napari-unet", "Train on current labels")
    _, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment layer")
    # the only change: a short budget, in steps (a time budget would depend on the load)
    choose(train.budget_kind, "steps")
    train.steps.value = 60
    click(qtbot, train.train_button)
    assert train.running, train.status.value
    qtbot.waitUntil(lambda: not train.running, timeout=900_000)
    result = train.result
    assert result is not None and result.steps > 0, train.status.value
    print(train.status.value)

    def segmented(model_choice) -> np.ndarray:
        segment.model.value = model_choice
        click(qtbot, segment.run_button)
        qtbot.waitUntil(lambda: not segment.running, timeout=300_000)
        return np.asarray(viewer.layers[-1].data)

    packaged = segment.model.choices[0]
    assert "default" in str(packaged)
    offered = train.saved_path if train.saved_path is not None else packaged
    _, truth = sample_with_truth()
    before = match(truth, segmented(packaged), 0.5).f1
    after = match(truth, segmented(offered), 0.5).f1
    print(f"F1 on all {truth.max()} nuclei: packaged {before:.3f}, after training {after:.3f} "
          f"({result.steps} steps, kept step {result.best_step})")
    assert after >= before
