"""The napari views of napari-unet: thin dock widgets over :mod:`napari_unet.core`.

Only code here imports Qt, magicgui or napari. Widgets never touch a layer from a
worker thread: workers yield progress and return results, and the main-thread
callbacks change the layers.
"""

from __future__ import annotations

from .segment import SegmentWidget

__all__ = ["SegmentWidget"]
