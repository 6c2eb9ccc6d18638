"""The core never imports Qt or napari."""

from __future__ import annotations

import json
import subprocess
import sys

GUI_MODULES = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "vispy",
               "superqt", "app_model", "npe2")


def test_core_imports_no_gui():
    code = (
        "import sys, json\n"
        "import napari_unet, napari_unet.core, napari_unet.cli, napari_unet.io\n"
        "from napari_unet.core import *\n"
        "import pkgutil, importlib, napari_unet.core as c\n"
        "for m in pkgutil.iter_modules(c.__path__):\n"
        "    importlib.import_module('napari_unet.core.' + m.name)\n"
        f"bad = sorted({{m.split('.')[0] for m in sys.modules}} & set({list(GUI_MODULES)!r}))\n"
        "print(json.dumps(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_public_api():
    import napari_unet

    for name in ["UNet", "predict_tiled", "iter_predict_tiled", "segment", "save_model",
                 "load_model"]:
        assert name in napari_unet.__all__
        obj = getattr(napari_unet, name)
        assert obj.__doc__ and "Parameters" in obj.__doc__ or name == "iter_predict_tiled"
