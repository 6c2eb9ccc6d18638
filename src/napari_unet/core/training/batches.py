"""Training batches made on the training device, in one pass, from data kept there.

All the training planes are packed once into flat buffers (one after the
other, any sizes): the normalised image, the cell ids, the border term of the
weight map (computed once per plane, :mod:`.data`) and the mask of training
pixels. A batch is then a handful of tensor operations on the device:

1. patch centres are drawn uniformly among the training pixels of all planes;
2. each patch gets a random transform (elastic deformation, flips, rotations,
   scaling; :mod:`~napari_unet.core.augment`), and one coordinate field per
   patch says where each of its pixels is read;
3. the image is read there bilinearly, the cell ids and the training mask by
   nearest neighbour (so ids survive), the border term bilinearly;
4. the gaps between touching cells are carved in the *warped* ids (a few
   comparisons of neighbours), which keeps every gap one pixel wide whatever
   the zoom; nearest-neighbour warping of precomputed classes would lose some
   of them when a patch is shrunk;
5. the weights are ``w_c[class] + border term`` on the pixels that separate
   cells (background; with three classes also the boundary class, see
   :func:`~napari_unet.core.weightmap.border_classes`): the paper's weight
   map; 0 outside the training pixels;
6. gray values are changed (gamma, gain, offset, noise).

No host synchronisation and no host→device copy of image data happens per
step. A training set too large for the device's free memory stays in pinned
host memory: batches are then made on the CPU, one ahead, and copied to the
device asynchronously.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from ..augment import (
    AugmentConfig,
    Geometry,
    PlaneTable,
    augment_intensity,
    gather_bilinear,
    nearest_index,
    random_geometry,
    source_coordinates,
)
from ..weightmap import IGNORE_INDEX, border_classes
from .data import Plane

__all__ = ["DeviceBatches", "carve_classes", "Batch"]

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

#: Keep the training data on the GPU when it takes at most this share of its free memory.
DEVICE_SHARE = 0.3


def _neighbours(lab: torch.Tensor) -> Any:
    """For rows then columns: views of each pixel and its next 4-neighbour (n, h, w)."""
    for axis in (1, 2):
        n = lab.shape[axis]
        yield axis, lab.narrow(axis, 0, n - 1), lab.narrow(axis, 1, n - 1)


def carve_classes(labels: torch.Tensor, gap: int, mode: str) -> torch.Tensor:
    """Target classes of a batch of instance labels ``(n, h, w)``, on their device.

    The rule of :func:`~napari_unet.core.weightmap.target_classes`: in
    ``"binary"`` mode background 0 / cell 1 with ``gap`` pixels carved between
    touching cells (gap 1: the pixels of the cell with the larger id), in
    ``"boundary"`` mode background 0 / interior 1 / boundary 2 (cell pixels
    within ``gap`` steps of another value). Pixels on the patch's outer border
    see no neighbour outside it: give ``gap`` pixels more than needed and crop.
    """
    if mode == "binary":
        cells = labels > 0
        if gap > 0:
            carve = torch.zeros_like(cells)
            for axis, a, b in _neighbours(labels):
                contact = (a != b) & (a > 0) & (b > 0)
                ca = contact if gap == 2 else contact & (a > b)
                cb = contact if gap == 2 else contact & (b > a)
                n = labels.shape[axis]
                carve.narrow(axis, 0, n - 1).logical_or_(ca)
                carve.narrow(axis, 1, n - 1).logical_or_(cb)
            cells = cells & ~carve
        return cells.to(torch.uint8)
    inner = labels.clone()
    for _ in range(int(gap)):
        edges = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
        for axis, a, b in _neighbours(inner):
            differ = a != b
            n = labels.shape[axis]
            edges.narrow(axis, 0, n - 1).logical_or_(differ & (a > 0))
            edges.narrow(axis, 1, n - 1).logical_or_(differ & (b > 0))
        inner = torch.where(edges, torch.zeros_like(inner), inner)
    classes = torch.where(labels > 0, 2, 0).to(torch.uint8)
    return torch.where(inner > 0, torch.ones_like(classes), classes)


def _crop(coords: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The central ``shape`` of a coordinate field (same centre pixel)."""
    h, w = coords.shape[-2:]
    a, b = (h - int(shape[0])) // 2, (w - int(shape[1])) // 2
    return coords[..., a : a + int(shape[0]), b : b + int(shape[1])]


class DeviceBatches:
    """Random augmented training batches from planes kept as tensors.

    Parameters
    ----------
    planes : sequence of Plane
        The training planes (their image and cell ids).
    train_masks : sequence of (H, W) bool arrays
        Per plane, the pixels whose loss counts (annotated, not held out).
    borders : sequence of (H, W) float32 arrays
        Per plane, the border term of its targets (:func:`.data.plane_border`).
    class_table : sequence of float
        ``w_c`` per class.
    gap, mode : int, str
        How classes are made from the warped cell ids (:func:`carve_classes`).
    augment : AugmentConfig
    device : torch.device
        The training device: batches are returned there.
    seed : int
        Seeds the random generator of the storage device.
    storage : "auto", "device" or "host"
        Where the data is kept: on the training device (default when it takes
        at most ``DEVICE_SHARE`` of a GPU's free memory), or in pinned host memory.
    """

    def __init__(
        self,
        planes: Sequence[Plane],
        train_masks: Sequence[np.ndarray],
        borders: Sequence[np.ndarray],
        class_table: Sequence[float],
        *,
        gap: int,
        mode: str,
        augment: AugmentConfig,
        device: torch.device,
        seed: int,
        storage: str = "auto",
    ) -> None:
        self.device = device
        self.gap, self.mode, self.augment = int(gap), mode, augment
        self.context = max(1, int(gap)) if mode == "boundary" else 1
        image = np.concatenate([p.image.reshape(p.image.shape[0], -1) for p in planes], axis=1)
        labels = np.concatenate([p.labels.ravel() for p in planes])
        border = np.concatenate([np.asarray(b, np.float32).ravel() for b in borders])
        train = np.concatenate([np.asarray(m, bool).ravel() for m in train_masks])
        centres = np.flatnonzero(train)
        if centres.size == 0:
            raise ValueError("no training pixels are left")
        nbytes = image.nbytes + labels.nbytes + border.nbytes + train.nbytes + 8 * centres.size
        self.storage = self._choose_storage(storage, nbytes)
        host = self.storage.type == "cpu" and device.type != "cpu"

        def put(a: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(np.ascontiguousarray(a))
            return t.pin_memory() if host else t.to(self.storage)

        self.image = put(image.astype(np.float32, copy=False))
        self.labels = put(labels.astype(np.int32, copy=False))
        self.border = put(border)
        self.train = put(train)
        self.centres = put(centres.astype(np.int64))
        self.table = PlaneTable.of([p.shape for p in planes], self.storage)
        self.shapes = [tuple(p.shape) for p in planes]
        self.offsets = np.concatenate([[0], np.cumsum([h * w for h, w in self.shapes])[:-1]])
        self._host = host
        self.class_table = torch.as_tensor(list(class_table), dtype=torch.float32,
                                           device=self.storage)
        self.generator = torch.Generator(device=self.storage)
        self.generator.manual_seed(int(seed) % 2**63)
        self.nbytes = int(nbytes)
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: tuple[tuple, Future] | None = None
        self._before_ahead = self.generator.get_state()

    def _choose_storage(self, storage: str, nbytes: int) -> torch.device:
        if storage not in ("auto", "device", "host"):
            raise ValueError(f"storage must be 'auto', 'device' or 'host', not {storage!r}")
        if self.device.type == "cpu" or storage == "device":
            return self.device
        if storage == "host":
            return torch.device("cpu")
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            if nbytes > DEVICE_SHARE * free:
                return torch.device("cpu")
        return self.device

    @property
    def streamed(self) -> bool:
        """True when the data stays in host memory and batches are copied to the device."""
        return self.storage.type != self.device.type

    # ------------------------------------------------------------ sampling
    def span(self, in_shape: Sequence[int], out_shape: Sequence[int]) -> tuple[int, int]:
        """The patch size whose coordinates cover the input and the labels' context."""
        q = self.context
        return (max(int(in_shape[0]), int(out_shape[0]) + 2 * q),
                max(int(in_shape[1]), int(out_shape[1]) + 2 * q))

    def draw(self, n: int, span: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Random patches: the plane of each and its source coordinates ``(n, 2, *span)``.

        Centres are drawn uniformly among the training pixels of all planes.
        """
        g, dev = self.generator, self.storage
        k = torch.randint(int(self.centres.shape[0]), (n,), generator=g, device=dev)
        flat = self.centres[k]
        plane = self.table.plane_of(flat)
        local = flat - self.table.offsets[plane]
        width = self.table.widths[plane]
        centre = torch.stack([local // width, local % width], 1)
        aug = self.augment
        geometry = random_geometry(n, aug, g) if aug.is_geometric else Geometry.identity(n, dev)
        return plane, source_coordinates(geometry, centre, span)

    def read(self, plane: torch.Tensor, coords: torch.Tensor, in_shape: Sequence[int],
             out_shape: Sequence[int]) -> Batch:
        """The batch read through ``coords``: image, target classes and weights (no gray-value
        changes)."""
        q = self.context
        ho, wo = int(out_shape[0]), int(out_shape[1])
        x = gather_bilinear(self.image, self.table, plane, _crop(coords, in_shape))
        near = nearest_index(self.table, plane, _crop(coords, (ho + 2 * q, wo + 2 * q)))
        classes = carve_classes(self.labels[near], self.gap, self.mode)[:, q : q + ho,
                                                                        q : q + wo]
        train = self.train[near[:, q : q + ho, q : q + wo]]
        border = gather_bilinear(self.border, self.table, plane, _crop(coords, out_shape))
        separating = classes == border_classes(self.mode)[0]
        for c in border_classes(self.mode)[1:]:
            separating |= classes == c
        weight = self.class_table[classes.long()] + torch.where(separating, border, 0.0)
        weight = torch.where(train, weight, 0.0)
        target = torch.where(train, classes, torch.full_like(classes, IGNORE_INDEX))
        return x, target, weight

    def make(self, n: int, in_shape: Sequence[int], out_shape: Sequence[int]) -> Batch:
        """One batch on the storage device: ``x`` (n, C, *in_shape) float32, ``target``
        (n, *out_shape) uint8 classes (IGNORE_INDEX where the loss ignores the pixel)
        and ``weight`` (n, *out_shape) float32."""
        plane, coords = self.draw(n, self.span(in_shape, out_shape))
        x, target, weight = self.read(plane, coords, in_shape, out_shape)
        if self.augment.is_intensity:
            x = augment_intensity(x, self.augment, self.generator)
        return x, target, weight

    def sample(self, n: int, in_shape: Sequence[int], out_shape: Sequence[int]) -> Batch:
        """One batch on the training device (streamed data: made one batch ahead on the
        CPU in a background thread and copied asynchronously)."""
        if not self.streamed:
            return self.make(n, in_shape, out_shape)
        key = (int(n), tuple(int(s) for s in in_shape), tuple(int(s) for s in out_shape))
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="napari-unet-batches")
        if self._ahead is not None and self._ahead[0] == key:
            batch = self._ahead[1].result()
        else:
            if self._ahead is not None:
                self._ahead[1].result()  # same generator: finish it before drawing again
            batch = self.make(*key)
        self._before_ahead = self.generator.get_state()
        self._ahead = (key, self._pool.submit(self.make, *key))
        return tuple(t.pin_memory().to(self.device, non_blocking=True)  # type: ignore
                     for t in batch)

    def close(self) -> None:
        """Stop the background thread of streamed batches."""
        if self._pool is not None:
            if self._ahead is not None:
                self._ahead[1].cancel()
            self._pool.shutdown(wait=True)
            self._pool = None
            self._ahead = None

    # ------------------------------------------------------------ changes
    def _plane_view(self, buffer: torch.Tensor, k: int) -> torch.Tensor:
        h, w = self.shapes[k]
        o = int(self.offsets[k])
        return buffer[o : o + h * w].view(h, w)

    def _put(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.storage)

    def write_plane(self, k: int, region: tuple[slice, slice], labels: np.ndarray,
                    border: np.ndarray, train: np.ndarray) -> None:
        """Write a plane's new cell ids and border term in ``region``, and its training mask."""
        self._settle()
        self._plane_view(self.labels, k)[region] = self._put(labels[region].astype(np.int32))
        self._plane_view(self.border, k)[region] = self._put(border[region].astype(np.float32))
        self.write_train(k, train)

    def write_train(self, k: int, train: np.ndarray) -> None:
        """Replace a plane's training mask (call :meth:`refresh_centres` after)."""
        self._settle()
        self._plane_view(self.train, k)[...] = self._put(np.asarray(train, bool))

    def set_class_table(self, table: Sequence[float]) -> None:
        """New class-balance weights ``w_c``."""
        self.class_table = torch.as_tensor(list(table), dtype=torch.float32,
                                           device=self.storage)

    def refresh_centres(self) -> None:
        """Draw patch centres among the training pixels as they are now (one host
        synchronisation: call it when the labels changed, not per step)."""
        self._settle()
        centres = torch.nonzero(self.train).squeeze(1)
        if centres.numel():
            self.centres = centres
            if self._host:
                self.centres = self.centres.pin_memory()

    def _settle(self) -> None:
        """Wait for a batch being made ahead (it reads the buffers), and drop it."""
        if self._ahead is not None:
            self._ahead[1].result()
            self._ahead = None
            self.generator.set_state(self._before_ahead)

    # ------------------------------------------------------------ state
    def state(self) -> torch.Tensor:
        """The random generator's state (for checkpoints)."""
        if self._ahead is not None:  # a batch drawn ahead: the state from before it
            self._ahead[1].result()
            return self._before_ahead.clone()
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        """Continue from a state of :meth:`state` (a batch drawn ahead is dropped)."""
        if self._ahead is not None:
            self._ahead[1].result()
            self._ahead = None
        self.generator.set_state(state)
