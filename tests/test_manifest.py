"""The npe2 manifest is valid, installed and points at real code."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_top_level_manifest_is_a_link_to_the_package_manifest():
    link = ROOT / "napari.yaml"
    assert link.is_symlink()
    assert link.resolve() == (ROOT / "src" / "napari_unet" / "napari.yaml").resolve()


def test_manifest_validates_and_is_discovered():
    npe2 = pytest.importorskip("npe2")
    pm = npe2.PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-unet")
    assert manifest.display_name == "U-Net"
    assert {"Segmentation", "Annotation"} <= set(manifest.categories)
    npe2.PluginManifest.from_file(ROOT / "napari.yaml").validate_imports()


def test_sample_data_command():
    npe2 = pytest.importorskip("npe2")
    pm = npe2.PluginManager.instance()
    pm.discover()
    sample = pm.get_manifest("napari-unet").contributions.sample_data[0]
    layers = pm.get_command(sample.command).exec()
    (image, _, image_kind), (labels, _, labels_kind), (shapes, _, shapes_kind) = layers
    assert (image_kind, labels_kind, shapes_kind) == ("image", "labels", "shapes")
    assert image.shape == labels.shape == (512, 512)
    assert np.issubdtype(labels.dtype, np.integer)
    # every cell reaching into the rectangle is labelled, whole; none elsewhere
    from napari_unet._sample import SAMPLE_REGION
    from napari_unet.core.synthetic import make_sample

    _, truth = make_sample("nuclei", shape=(512, 512), seed=2015, layout="clustered",
                           touching=0.7, density=0.3)
    r0, c0, r1, c1 = SAMPLE_REGION
    np.testing.assert_array_equal(labels[r0:r1, c0:c1], truth[r0:r1, c0:c1])
    assert 10 < len(np.unique(labels)) - 1 < len(np.unique(truth)) - 1
    np.testing.assert_array_equal(shapes[0].min(axis=0), [r0, c0])


@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a (virtual) display")
def test_sample_opens_in_a_real_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-unet", "nuclei")
    assert [layer.name for layer in viewer.layers] == ["nuclei", "nuclei labels",
                                                       "annotated region"]
