"""The training set of a run: planes, targets, validation split and device batches, kept up
to date while labels change (live training).

:class:`TrainingSet` prepares everything once (:mod:`.data`, :mod:`.split`,
:mod:`.batches`). :meth:`TrainingSet.queue` takes new labels for an image from
any thread; the training thread calls :meth:`TrainingSet.apply` between two
steps, which recomputes the targets of the changed area only
(:func:`.data.update_plane_targets`), writes them into the device buffers,
redraws the patch centres and, when held-out cells changed, the validation
windows. The held-out area (the tiles chosen at the start) stays where it
is: a cell painted there later is held out too.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..cellsize import median_cell_diameter
from ..labels import check_labels
from ..model import UNet
from .batches import DeviceBatches
from .config import TrainConfig
from .data import (
    Plane,
    TrainingData,
    annotated_area,
    class_weights,
    plane_ids,
    plane_targets,
    prepare_planes,
    region_mask,
    update_plane_targets,
)
from .split import apply_area, split_validation
from .validate import ValWindow, make_window

__all__ = ["TrainingSet", "Applied", "checked_update"]


@dataclass
class Applied:
    """What :meth:`TrainingSet.apply` changed."""

    version: int = 0
    planes: int = 0
    pixels: int = 0
    validation_changed: bool = False
    rebuilt: bool = False
    seconds: float = 0.0
    message: str | None = None


@dataclass
class _Pending:
    version: int
    labels: Any
    region: Any
    queued: float = field(default_factory=time.perf_counter)
    #: earlier updates of the same image that this one replaces (version, queued at)
    replaced: list[tuple[int, float]] = field(default_factory=list)


def checked_update(data: TrainingData, image_index: int, labels: Any,
                   region: Any) -> tuple[int, np.ndarray, np.ndarray | None]:
    """(image index, labels copy, region mask) of a label update, checked against the run's
    data: one-line ValueErrors for an unknown image, another shape or bad ids."""
    i = int(image_index)
    if not 0 <= i < len(data.labels):
        raise ValueError(f"image_index {image_index} is not one of the {len(data.labels)} "
                         "images of this run")
    lab = check_labels(labels, f"labels {i}")
    if lab.shape != data.labels[i].shape:
        raise ValueError(f"labels {i} now have shape {lab.shape} but the image's labels had "
                         f"{data.labels[i].shape}; give labels of the same size")
    return i, np.array(lab, copy=True), region_mask(region, lab.shape, i)


class TrainingSet:
    """Planes, targets, validation windows and device batches of one run."""

    def __init__(self, data: TrainingData, model: UNet, config: TrainConfig, seed: int,
                 device: torch.device, storage: str = "auto") -> None:
        self.data, self.model, self.config, self.seed = data, model, config, seed
        self.device, self.storage = device, storage
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self.queued_version = 0
        self.applied_version = 0
        #: version -> (queued at, applied at), perf_counter seconds
        self.update_times: dict[int, tuple[float, float]] = {}
        self.batches: DeviceBatches | None = None
        self._build(first=True)

    # ------------------------------------------------------------- building
    def _build(self, first: bool = False) -> None:
        c = self.config
        planes = prepare_planes(self.data, self.model.normalization, self.model.in_channels)
        if not planes:
            raise ValueError(
                "nothing to train on: every label image is empty (all 0) and no region marks "
                "an annotated area; paint some cells, or mark where the labels (even all "
                "background) are complete"
            )
        old_areas = None if first else {self.planes[k].source: a
                                        for k, a in enumerate(self.areas)}
        if first:
            split = split_validation([p.labels for p in planes], [p.annotated for p in planes],
                                     c.validation, self.seed)
            areas = split.areas or [None] * len(planes)
        else:  # the held-out area stays where it was
            areas = [old_areas.get(p.source) for p in planes]
        self.planes: list[Plane] = planes
        self.areas: list[np.ndarray | None] = list(areas)
        self.targets = [plane_targets(p.labels, c) for p in planes]
        self.train: list[np.ndarray] = []
        self.val: list[np.ndarray | None] = []
        for p, area in zip(planes, self.areas):
            train, val, _ = apply_area(p.labels, p.annotated, area)
            self.train.append(train)
            self.val.append(val)
        if not any(m.any() for m in self.train):
            raise ValueError("all the annotation was held out for validation; annotate more, "
                             "or train without validation")
        self.index = {p.source: k for k, p in enumerate(planes)}
        self.table = self._table()
        self.windows = self._windows()
        state = None if self.batches is None else self.batches.state()
        if self.batches is not None:
            self.batches.close()
        self.batches = DeviceBatches(
            planes, self.train, [t[1] for t in self.targets], self.table, gap=c.gap,
            mode=c.target_mode, augment=c.augment, device=self.device, seed=self.seed,
            storage=self.storage,
        )
        if state is not None:
            self.batches.set_state(state)

    def _table(self) -> tuple[float, ...]:
        return class_weights([t[0] for t in self.targets], self.train, self.config.n_classes)

    def _windows(self) -> list[ValWindow]:
        return [make_window(p.image, p.labels, self.val[k], *self.targets[k], self.table,
                            self.model.margin, self.config.target_mode)
                for k, p in enumerate(self.planes) if self.val[k] is not None]

    # ------------------------------------------------------------- facts
    @property
    def val_cells(self) -> int | None:
        """Held-out cells validation is measured on (None: no validation)."""
        return sum(w.n_cells for w in self.windows) if self.windows else None

    @property
    def n_planes(self) -> int:
        """Planes with pixels to train on."""
        return sum(1 for m in self.train if m.any())

    @property
    def plane_shapes(self) -> list[tuple[int, int]]:
        return [p.shape for k, p in enumerate(self.planes) if self.train[k].any()]

    @property
    def cell_diameter(self) -> float | None:
        """Median diameter (pixels) of the painted cells."""
        sizes = [median_cell_diameter(p.labels) for p in self.planes if p.labels.any()]
        return round(float(np.median(sizes)), 1) if sizes else None

    # ------------------------------------------------------------- updates
    def queue(self, image_index: int, labels: Any, region: Any = None) -> int:
        """Take new labels (and optionally a region) for one image, from any thread.

        Checked at once (ValueError); applied by the training thread between two
        steps. Returns the version number of the update.
        """
        i, lab, reg = checked_update(self.data, image_index, labels, region)
        with self._lock:
            self.queued_version += 1
            item = _Pending(self.queued_version, lab, reg)
            earlier = self._pending.get(i)
            if earlier is not None:  # not taken in yet: this one includes it
                item.replaced = [*earlier.replaced, (earlier.version, earlier.queued)]
            self._pending[i] = item
            return self.queued_version

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def apply(self) -> Applied:
        """Apply the queued labels (the training thread, between steps)."""
        t0 = time.perf_counter()
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return Applied(version=self.applied_version)
        done = Applied()
        old_val = [None if v is None else v.copy() for v in self.val]
        old_train = [m.copy() for m in self.train]
        old_data = {i: (self.data.labels[i], self.data.regions[i]) for i in pending}
        rebuild = False
        writes: list[tuple[int, tuple[slice, slice]]] = []
        for i, item in pending.items():
            self.data.labels[i] = item.labels
            self.data.regions[i] = item.region
            rebuild |= self._apply_image(i, writes, done)
        if rebuild:
            try:
                self._build()
                done.rebuilt = True
            except ValueError:  # nothing left to train on: keep the labels as they were
                for i, (lab, reg) in old_data.items():
                    self.data.labels[i], self.data.regions[i] = lab, reg
                self._build()
                done.rebuilt = True
                done.message = ("nothing painted is left to train on: training goes on with "
                                "the labels as they were")
        else:
            if not any(m.any() for m in self.train):
                # everything erased: keep training on the labels as they were
                self.train = old_train
                done.message = ("nothing painted is left to train on: training goes on with "
                                "the labels as they were")
            assert self.batches is not None
            for k, region in writes:
                p = self.planes[k]
                self.batches.write_plane(k, region, p.labels, self.targets[k][1], self.train[k])
            for k, m in enumerate(self.train):  # held-out cells may have moved anywhere
                self.batches.write_train(k, m)
            self.table = self._table()
            self.batches.set_class_table(self.table)
            self.batches.refresh_centres()
        changed = done.rebuilt or any(
            (a is None) != (b is None) or (a is not None and not np.array_equal(a, b))
            for a, b in zip(old_val, self.val))
        if changed or writes:
            self.windows = self._windows()
        done.validation_changed = bool(changed)
        now = time.perf_counter()
        for item in pending.values():
            for version, queued in [*item.replaced, (item.version, item.queued)]:
                self.update_times[version] = (queued, now)
        done.version = self.applied_version = max(item.version for item in pending.values())
        done.seconds = now - t0
        return done

    def _apply_image(self, i: int, writes: list, done: Applied) -> bool:
        """Bring one image's planes up to date; True when the set must be rebuilt."""
        lab, region = self.data.labels[i], self.data.regions[i]
        stack = lab.ndim == 3
        for z in range(lab.shape[0] if stack else 1):
            lab2 = lab[z] if stack else lab
            reg2 = None if region is None else (region[z] if stack else region)
            ann = annotated_area(lab2, reg2)
            k = self.index.get((i, z))
            if k is None or ann is None:
                if k is None and ann is None:
                    continue
                return True  # a plane appears or disappears
            p = self.planes[k]
            ids = plane_ids(np.where(ann, lab2, 0))
            differ = (ids != p.labels) | (ann != p.annotated)
            if not differ.any():
                continue
            rows = np.flatnonzero(differ.any(axis=1))
            cols = np.flatnonzero(differ.any(axis=0))
            box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
            p.labels, p.annotated = ids, ann
            classes, border = self.targets[k]
            written = update_plane_targets(ids, classes, border, box, self.config)
            self.train[k], self.val[k], _ = apply_area(ids, ann, self.areas[k])
            writes.append((k, written))
            done.planes += 1
            done.pixels += int(differ.sum())
        return False
