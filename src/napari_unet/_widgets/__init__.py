"""The napari views of napari-unet: thin dock widgets over :mod:`napari_unet.core`.

Only code here imports Qt, magicgui or napari. Widgets never touch a layer from a
worker thread: workers yield progress and return results, and the main-thread
callbacks change the layers.
"""

from __future__ import annotations

from .annotate import AnnotateWidget
from .segment import SegmentWidget
from .train import TrainWidget

__all__ = ["AnnotateWidget", "SegmentWidget", "TrainWidget"]
