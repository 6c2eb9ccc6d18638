"""Pieces shared by the napari-unet widgets: model choices, regions of a layer, worker wiring."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import numpy as np
from psygnal import Signal

from ..core.zoo import list_models

__all__ = [
    "model_choices", "layer_region", "current_plane", "start_worker", "NEW_FILE", "models_changed",
]

NEW_FILE = "Model file…"


class _ModelEvents:
    changed = Signal()


#: Emitted (in the main thread) when a model was saved to the user's models folder.
models_changed = _ModelEvents().changed


def model_choices(_widget: Any = None) -> list[tuple[str, Any]]:
    """(label, value) pairs for a model ComboBox: packaged and user models, then a file."""
    choices: list[tuple[str, Any]] = [(str(info), info.path) for info in list_models()]
    choices.append((NEW_FILE, NEW_FILE))
    return choices


def current_plane(viewer: Any, layer: Any) -> tuple[int, ...]:
    """Index of the plane of ``layer`` shown now (its leading axes); () for a 2D layer."""
    shape = layer.level_shapes[0] if hasattr(layer, "level_shapes") else layer.data.shape
    point = layer.world_to_data(viewer.dims.point)
    return tuple(int(np.clip(round(point[a]), 0, shape[a] - 1)) for a in range(layer.ndim - 2))


def _level0(layer: Any) -> Any:
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def layer_region(
    viewer: Any, layer: Any, plane_only: bool, visible_only: bool
) -> tuple[Any, tuple[slice | int, ...]]:
    """The part of an image layer to segment, and where it sits in the layer.

    Returns the (possibly lazy) data and the index into the layer's spatial axes:
    the whole layer, only the plane shown now (stacks), only the region visible on
    the canvas, or both.
    """
    data = _level0(layer)
    ndim = layer.ndim  # spatial axes; an RGB layer's colour axis is extra
    index: list[slice | int] = [slice(None)] * ndim
    if plane_only:
        index[: ndim - 2] = current_plane(viewer, layer)
    if visible_only:
        center = np.asarray(viewer.camera.center)[-2:]
        size = np.asarray(getattr(viewer, "_canvas_size", (600, 800)), float)[-2:]
        half = size / max(float(viewer.camera.zoom), 1e-9) / 2
        world = np.array(viewer.dims.point, float)
        corners = []
        for corner in (center - half, center + half):
            w = world.copy()
            w[-2:] = corner
            corners.append(np.asarray(layer.world_to_data(w))[-2:])
        lo = np.floor(np.minimum(*corners)).astype(int)
        hi = np.ceil(np.maximum(*corners)).astype(int)
        for k, axis in enumerate((ndim - 2, ndim - 1)):
            a, b = np.clip([lo[k], hi[k]], 0, data.shape[axis])
            if b <= a:
                raise ValueError("no part of the image is visible on the canvas")
            index[axis] = slice(int(a), int(b))
    return data[tuple(index)], tuple(index)


def start_worker(
    generator_function: Callable[[], Generator[Any, Any, Any]],
    *,
    on_yield: Callable[[Any], None],
    on_return: Callable[[Any], None],
    on_error: Callable[[Exception], None],
    on_finish: Callable[[], None],
) -> Any:
    """Run a core generator in a napari thread worker; every callback runs in the main thread."""
    from napari.qt.threading import create_worker

    worker = create_worker(generator_function, _start_thread=False)
    worker.yielded.connect(on_yield)
    worker.returned.connect(on_return)
    worker.errored.connect(on_error)
    worker.finished.connect(on_finish)
    worker.start()
    return worker

