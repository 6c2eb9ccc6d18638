"""The training loop: steps, validation, out-of-memory back-off, records, the result.

One :class:`Trainer` holds a run. :meth:`Trainer.run` is the generator behind
:func:`~napari_unet.iter_train`. The GPU is never made to wait for the host:
batches are made on the device (:mod:`.batches`), the loss stays on the device
and is read back only when a progress record is due (at most every
``report_interval`` seconds), and a non-finite loss found then rolls the
weights back to the last record's.
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._utils import resolve_device
from ..cellsize import median_cell_diameter
from ..checkpoints import save_model
from ..memory import Backoff, OutOfDeviceMemory, is_out_of_memory
from ..model import UNet, copy_model
from . import config as cfg_module
from .batches import DeviceBatches
from .checkpoint import (
    BEST_MODEL_NAME,
    checkpoint_history,
    checkpoint_model,
    read_checkpoint,
    write_checkpoint,
)
from .config import TrainConfig
from .data import check_data, class_weights, plane_targets, prepare_planes
from .records import TrainProgress, TrainResult
from .setup import (
    io_shapes,
    lr_factor,
    make_optimizer,
    new_seed,
    patch_and_batch,
    precision,
    smaller_patch,
    start_model,
)
from .split import split_validation
from .step import train_step
from .validate import make_window, validate

__all__ = ["Trainer"]


class Trainer:
    """The state of one training run; :meth:`run` is the generator."""

    def __init__(self, images: Any, labels: Any, model: Any, config: TrainConfig,
                 regions: Any = None) -> None:
        self.device = resolve_device(config.device)
        self.result: TrainResult | None = None
        self.history: list[TrainProgress] = []
        self.checkpoint: dict[str, Any] | None = None
        if config.resume is not None:
            if model is not None:
                raise ValueError("pass either model= or resume=, not both: a resumed run "
                                 "continues the checkpoint's model")
            self.checkpoint = read_checkpoint(config.resume)
            saved = self.checkpoint["settings"]
            config = config.resumed(saved)
            start = checkpoint_model(self.checkpoint)
            self.started_from = str(saved.get("started_from", "checkpoint"))
        else:
            start, self.started_from = start_model(model, config)
        if start.n_classes != config.n_classes:
            raise ValueError(
                f"the model has {start.n_classes} output classes but target_mode="
                f"{config.target_mode!r} needs {config.n_classes}; use target_mode="
                f"{'boundary' if start.n_classes == 3 else 'binary'!r} or a new model"
            )
        if config.seed is None:
            config = config.replace(seed=new_seed())
        self.config = config
        self.seed = int(config.seed)  # type: ignore[arg-type]
        self.start_model = start
        self.model = copy_model(start)
        self.data = check_data(images, labels, regions, start.in_channels)
        self.best: dict[str, Any] | None = None
        self.start_val_f1: float | None = None
        self.val_cells: int | None = None
        self.cell_diameter: float | None = None
        self.n_planes = 0
        #: Where the training data is kept: "auto", "device" or "host" (see DeviceBatches).
        self.storage = "auto"
        self.plane_shapes: list[tuple[int, int]] = []

    # ------------------------------------------------------------ preparation
    def prepare(self) -> tuple[DeviceBatches, list]:
        """Planes, validation split, targets (once), validation windows, device batches."""
        c = self.config
        planes = prepare_planes(self.data, self.model.normalization, self.model.in_channels)
        if not planes:
            raise ValueError(
                "nothing to train on: every label image is empty (all 0) and no region marks "
                "an annotated area; paint some cells, or mark where the labels (even all "
                "background) are complete"
            )
        split = split_validation([p.labels for p in planes], [p.annotated for p in planes],
                                 c.validation, self.seed)
        targets = [plane_targets(p.labels, c) for p in planes]
        keep = [k for k, m in enumerate(split.train) if m.any()]
        if not keep:
            raise ValueError("all the annotation was held out for validation; annotate more, "
                             "or train without validation")
        table = class_weights([targets[k][0] for k in keep], [split.train[k] for k in keep],
                              c.n_classes)
        windows = [make_window(p.image, p.labels, split.val[k], *targets[k], table,
                               self.model.margin)
                   for k, p in enumerate(planes) if split.val[k] is not None]
        self.val_cells = sum(w.n_cells for w in windows) if windows else None
        self.n_planes = len(keep)
        sizes = [median_cell_diameter(p.labels) for p in planes if p.labels.any()]
        self.cell_diameter = round(float(np.median(sizes)), 1) if sizes else None
        self.plane_shapes = [planes[k].shape for k in keep]
        batches = DeviceBatches(
            [planes[k] for k in keep], [split.train[k] for k in keep],
            [targets[k][1] for k in keep], table, gap=c.gap, mode=c.target_mode,
            augment=c.augment, device=self.device, seed=self.seed, storage=self.storage,
        )
        return batches, windows

    # ------------------------------------------------------------------ run
    def run(self) -> Generator[TrainProgress, None, TrainResult]:  # noqa: C901 - the loop
        c, dev = self.config, self.device
        t_start = time.perf_counter()
        ck = self.checkpoint
        step = 0 if ck is None else int(ck["step"])
        elapsed0 = 0.0 if ck is None else float(ck["elapsed"])
        yield TrainProgress(step, c.max_steps, 0.0, phase="prepare",
                            message="preparing the training data")
        batches, windows = self.prepare()
        model = self.model.to(dev).train()
        amp = precision(dev)
        patch, batch = patch_and_batch(model, self.plane_shapes, c, dev, amp)
        opt = make_optimizer(model, c, dev)
        scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
        dropout_rng = torch.Generator().manual_seed(self.seed + 3)
        if ck is not None:
            opt.load_state_dict(ck["optimizer"])
            if scaler is not None and ck.get("scaler"):
                scaler.load_state_dict(ck["scaler"])
            gens = ck.get("generators", {})
            if "batches" in gens:
                batches.set_state(gens["batches"])
            if "dropout" in gens:
                dropout_rng.set_state(gens["dropout"])
            self.history = checkpoint_history(ck)
            self.best = ck.get("best")
            self.start_val_f1 = ck.get("start_val_f1")
            patch, batch = tuple(ck["patch_shape"]), int(ck["batch_size"])  # type: ignore
        backoff = Backoff(batch, patch, smaller_patch, "patches")
        in_shape, out_shape = io_shapes(model, patch)
        has_dropout = any(isinstance(m, torch.nn.Dropout2d) for m in model.modules())
        benchmark = torch.backends.cudnn.benchmark
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True
        ckpt_dir = None if c.checkpoint_dir is None else Path(c.checkpoint_dir)
        if ckpt_dir is not None:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
        st = {"step": step, "patch": patch, "batch": batch}
        start_step, t_run = step, time.perf_counter()
        stopped, message = "cancelled", None
        if not windows and c.validation > 0:
            message = "too few cells to hold some out for validation: the final model is kept"
        last = {"val_step": step, "val_time": 0.0, "val_seconds": None, "ckpt_step": step,
                "time": time.perf_counter(), "step": step}
        good = [p.detach().clone() for p in model.parameters()]  # weights at the last record
        acc, acc_n = torch.zeros((), device=dev), 0

        def elapsed() -> float:
            return elapsed0 + time.perf_counter() - t_start

        def record(**kw: Any) -> TrainProgress:
            e, done = elapsed(), st["step"] - start_step
            eta = None
            if c.max_steps is not None and done > 0:
                eta = (c.max_steps - st["step"]) * (time.perf_counter() - t_run) / done
            if c.max_time is not None:
                left = max(0.0, float(c.max_time) - e)
                eta = left if eta is None else min(eta, left)
            best = None if self.best is None else self.best["val_f1"]
            base = {"step": st["step"], "total": c.max_steps, "elapsed": e, "eta": eta,
                    "best_val_f1": best, "batch_size": st["batch"],
                    "patch_shape": tuple(st["patch"]),
                    "val_cells": self.val_cells}
            return TrainProgress(**{**base, **kw})

        def validation(rec: TrainProgress) -> Generator[TrainProgress, None, tuple]:
            t = time.perf_counter()
            grow = c.gap + 1
            result = yield from validate(
                model, windows, dev, grow,
                lambda text: TrainProgress(**{**rec.__dict__, "phase": "validate",
                                              "message": text}))
            model.train()
            last.update(val_seconds=time.perf_counter() - t, val_time=time.perf_counter(),
                        val_step=st["step"])
            return result

        def keep_if_better(val_loss: float, val_f1: float) -> None:
            if self.best is None or (val_f1, -val_loss) > (self.best["val_f1"],
                                                           -self.best["val_loss"]):
                self.best = {"state_dict": self._snapshot(), "val_f1": val_f1,
                             "val_loss": val_loss, "step": st["step"]}
                if ckpt_dir is not None:
                    save_model(self._final_model("running", elapsed()),
                               ckpt_dir / BEST_MODEL_NAME)

        def validation_due() -> bool:
            if not windows or st["step"] == last["val_step"]:
                return False
            if c.max_steps is not None and st["step"] >= c.max_steps:
                return True
            if c.validate_every is not None:
                return st["step"] % c.validate_every == 0
            since = st["step"] - last["val_step"]
            if last["val_seconds"] is None:
                return since >= 20
            return since >= 5 and time.perf_counter() - last["val_time"] >= 6 * last[
                "val_seconds"]

        def save_checkpoint() -> None:
            if ckpt_dir is not None:
                write_checkpoint(
                    ckpt_dir, model=model, start_metadata=dict(self.start_model.metadata),
                    optimizer=opt, scaler=scaler,
                    generators={"batches": batches.state(), "dropout": dropout_rng.get_state()},
                    step=st["step"], elapsed=elapsed(), patch=st["patch"], batch=st["batch"],
                    history=self.history, best=self.best, start_val_f1=self.start_val_f1,
                    settings={**c.to_dict(), "started_from": self.started_from,
                              "batch_size": st["batch"], "patch_shape": list(st["patch"])},
                )
                last["ckpt_step"] = st["step"]

        try:
            # A trained model we fine-tune is validated first: if training never beats it,
            # it is what we return.
            if windows and self.start_model.metadata and self.best is None:
                vl, vf = yield from validation(record())
                self.start_val_f1 = vf
                self.best = {"state_dict": self._snapshot(), "val_f1": vf, "val_loss": vl,
                             "step": st["step"]}
                yield record(val_loss=vl, val_f1=vf, best_val_f1=vf,
                             message="validation of the starting model")
            while True:
                if c.max_steps is not None and st["step"] >= c.max_steps:
                    stopped = "max_steps"
                    break
                if c.max_time is not None and elapsed() >= float(c.max_time):
                    stopped = "max_time"
                    break
                lr = c.peak_lr * lr_factor(st["step"], c, elapsed(), cfg_module.WARMUP_STEPS,
                                           cfg_module.FINAL_LR_FRACTION)
                for group in opt.param_groups:
                    group["lr"] = lr
                seed = (int(torch.randint(0, 2**62, (1,), generator=dropout_rng))
                        if has_dropout else None)
                try:
                    loss = train_step(model, opt, scaler,
                                      batches.sample(st["batch"], in_shape, out_shape),
                                      c.loss, amp, seed)
                except (torch.OutOfMemoryError, RuntimeError) as err:
                    if not is_out_of_memory(err, dev):
                        raise
                    opt.zero_grad(set_to_none=True)
                    try:
                        what = backoff.next(dev)
                    except OutOfDeviceMemory as oom:
                        stopped = str(oom)
                        break
                    st["batch"], st["patch"] = backoff.batch, backoff.shape
                    in_shape, out_shape = io_shapes(model, st["patch"])
                    message = f"out of memory: continuing with {what}"
                    continue
                acc += loss
                acc_n += 1
                st["step"] += 1
                now = time.perf_counter()
                due_val = validation_due()
                if not (due_val or message or now - last["time"] >= c.report_interval
                        or st["step"] - last["ckpt_step"] >= c.checkpoint_every
                        or c.max_steps is not None and st["step"] >= c.max_steps):
                    continue
                mean = float(acc) / acc_n  # the one read-back of the loss
                if not math.isfinite(mean):
                    with torch.no_grad():
                        for p, g in zip(model.parameters(), good):
                            p.copy_(g)
                    st["step"] = last["step"]
                    stopped = (f"the loss became {mean} at step {st['step'] + 1} (diverged): "
                               "try a lower learning rate; the last good model is kept")
                    break
                with torch.no_grad():
                    for p, g in zip(model.parameters(), good):
                        g.copy_(p)
                speed = (st["step"] - last["step"]) / max(now - last["time"], 1e-9)
                last.update(time=now, step=st["step"])
                acc, acc_n = torch.zeros((), device=dev), 0
                val_loss = val_f1 = None
                if due_val:
                    val_loss, val_f1 = yield from validation(record(loss=mean, lr=lr))
                    keep_if_better(val_loss, val_f1)
                rec = record(loss=mean, lr=lr, val_loss=val_loss, val_f1=val_f1,
                             message=message, steps_per_second=speed)
                message = None
                self.history.append(rec)
                if ckpt_dir is not None and st["step"] - last["ckpt_step"] >= c.checkpoint_every:
                    save_checkpoint()
                yield rec
            # a final validation, so that the last steps count too (and the plot shows it)
            if windows and stopped == "max_time" and last["val_step"] != st["step"]:
                vl, vf = yield from validation(record())
                keep_if_better(vl, vf)
                rec = record(loss=self.history[-1].loss if self.history else None,
                             val_loss=vl, val_f1=vf)
                self.history.append(rec)
                yield rec
        finally:
            torch.backends.cudnn.benchmark = benchmark
            batches.close()
            self.model.to("cpu")
            self.result = self._finish(stopped, elapsed(), ckpt_dir)
            if ckpt_dir is not None:
                save_checkpoint()
        return self.result

    # ------------------------------------------------------------ helpers
    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def best_copy(self) -> UNet:
        """The best validated model so far, else the current one (else the start model,
        should the current weights have become non-finite)."""
        twin = copy_model(self.model)
        if self.best is not None:
            twin.load_state_dict(self.best["state_dict"])
        elif not all(torch.isfinite(p).all() for p in twin.parameters()):
            twin.load_state_dict(self.start_model.state_dict())
        return twin.eval()

    def _final_model(self, stopped: str, seconds: float) -> UNet:
        out = self.best_copy()
        c = self.config
        last_val = next((h for h in reversed(self.history) if h.val_f1 is not None), None)
        losses = [h.loss for h in self.history[-20:] if h.loss is not None]
        meta = dict(out.metadata)
        meta.pop("path", None)
        previous = meta.pop("training", None)
        if previous:
            meta.setdefault("training_history", []).append(previous)
        meta["target"] = {"mode": c.target_mode, "gap": c.gap, "w0": c.w0, "sigma": c.sigma}
        if self.cell_diameter:  # the cells it was tuned on (Segment's "cell diameter")
            meta["cell_diameter"] = self.cell_diameter
        best = self.best or {}
        meta["training"] = {
            "steps": self.history[-1].step if self.history else 0,
            "seconds": round(seconds, 1),
            "device": str(self.device),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "n_images": len(self.data.images),
            "n_planes": self.n_planes,
            "started_from": self.started_from,
            "optimizer": c.optimizer,
            "lr": c.peak_lr,
            "loss": c.loss,
            "final_loss": float(np.mean(losses)) if losses else None,
            "best_val_f1": best.get("val_f1"),
            "best_val_loss": best.get("val_loss"),
            "best_step": best.get("step"),
            "final_val_f1": None if last_val is None else last_val.val_f1,
            "start_val_f1": self.start_val_f1,
            "val_cells": self.val_cells,
            "seed": self.seed,
            "augment": bool(c.augment.is_geometric or c.augment.is_intensity),
            "stopped_reason": stopped,
        }
        out.metadata = meta
        return out

    def _finish(self, stopped: str, seconds: float, ckpt_dir: Path | None) -> TrainResult:
        model = self._final_model(stopped, seconds)
        path = None
        if ckpt_dir is not None:
            path = save_model(model, ckpt_dir / BEST_MODEL_NAME)
        tr = model.metadata["training"]
        return TrainResult(
            model=model, history=list(self.history), path=path, stopped_reason=stopped,
            best_step=tr["best_step"], best_val_f1=tr["best_val_f1"],
            start_val_f1=self.start_val_f1, val_cells=self.val_cells,
            steps=tr["steps"], seconds=seconds,
        )
