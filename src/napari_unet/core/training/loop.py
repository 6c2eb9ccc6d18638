"""The training loop: steps, validation, out-of-memory back-off, records, the result.

One :class:`Trainer` holds a run. :meth:`Trainer.run` is the generator behind
:func:`~napari_unet.iter_train`. The GPU is never made to wait for the host:
batches are made on the device (:mod:`.batches`), the loss stays on the device
and is read back only when a progress record is due (at most every
``report_interval`` seconds), and a non-finite loss found then rolls the
weights back to the last record's.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import torch

from .._utils import resolve_device
from ..checkpoints import save_model
from ..memory import Backoff, OutOfDeviceMemory, is_out_of_memory
from ..model import UNet, copy_model, place_model
from ..outputs import exclusive_lock
from . import config as cfg_module
from .checkpoint import (
    BEST_MODEL_NAME,
    CHECKPOINT_NAME,
    checkpoint_history,
    checkpoint_model,
    read_checkpoint,
    write_checkpoint,
)
from .config import TrainConfig
from .data import check_data
from .records import TrainProgress, TrainResult, training_metadata
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
from .step import train_step
from .trainset import TrainingSet, checked_update
from .validate import is_better, validate

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
        if config.lr is None and start.metadata.get("training"):  # from a trained model
            live = config.max_steps is None and config.max_time is None
            rates = cfg_module.LIVE_FINETUNE_LR if live else cfg_module.FINETUNE_LR
            config = config.replace(lr=rates[config.optimizer])
        self.config = config
        self.seed = int(config.seed)  # type: ignore[arg-type]
        self.start_model = start
        self.model = copy_model(start)
        self.data = check_data(images, labels, regions, start.in_channels)
        self.best: dict[str, Any] | None = None
        self.start_val_f1: float | None = None
        self.set: TrainingSet | None = None
        self._update_lock = threading.Lock()
        self._early_version = 0
        #: Where the training data is kept: "auto", "device" or "host" (see DeviceBatches).
        self.storage = "auto"

    # ------------------------------------------------------------ preparation
    def prepare(self) -> TrainingSet:
        """Planes, validation split, targets (once), validation windows, device batches."""
        with self._update_lock:
            self.set = TrainingSet(self.data, self.model, self.config, self.seed, self.device,
                                   self.storage)
            self.set.queued_version = self.set.applied_version = self._early_version
        return self.set

    @property
    def val_cells(self) -> int | None:
        return None if self.set is None else self.set.val_cells

    @property
    def fine_tunes(self) -> bool:
        """Training starts from a trained model: it is validated before the first step, and
        only a better model replaces it
        (:func:`~napari_unet.core.training.validate.is_better` with ``fine_tuning``)."""
        return bool(self.start_model.metadata)

    @property
    def n_planes(self) -> int:
        return 0 if self.set is None else self.set.n_planes

    @property
    def plane_shapes(self) -> list[tuple[int, int]]:
        return [] if self.set is None else self.set.plane_shapes

    # ------------------------------------------------------------------ run
    def run(self) -> Generator[TrainProgress, None, TrainResult]:  # noqa: C901 - the loop
        c, dev = self.config, self.device
        t_start = time.perf_counter()
        ck = self.checkpoint
        step = 0 if ck is None else int(ck["step"])
        elapsed0 = 0.0 if ck is None else float(ck["elapsed"])
        yield TrainProgress(step, c.max_steps, 0.0, phase="prepare",
                            message="preparing the training data")
        tset = self.prepare()
        batches, windows = tset.batches, tset.windows
        model = place_model(self.model, dev).train()
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
        held = contextlib.ExitStack()
        if ckpt_dir is not None:  # one run at a time writes a checkpoint folder
            held.enter_context(exclusive_lock(ckpt_dir / CHECKPOINT_NAME,
                                              "writing training checkpoints to"))
        st = {"step": step, "patch": patch, "batch": batch}
        start_step, t_run = step, time.perf_counter()
        stopped, message = "cancelled", None
        if not windows and c.validation > 0:
            message = "too few cells to hold some out for validation: the final model is kept"
        last = {"val_step": step, "val_time": 0.0, "val_seconds": None, "ckpt_step": step,
                "time": time.perf_counter(), "step": step}
        good = [p.detach().clone() for p in model.parameters()]  # weights at the last record
        stale = False  # the held-out cells changed since the kept model was measured
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
                    "val_cells": self.val_cells, "labels_version": tset.applied_version}
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

        def revalidate() -> Generator[TrainProgress, None, None]:
            """The held-out cells changed: measure the kept and the start model again."""
            nonlocal stale
            stale = False
            for which in ("best", "start"):
                if which == "best" and self.best is None or which == "start" and (
                        self.start_val_f1 is None):
                    continue
                twin = copy_model(self.start_model) if which == "start" else self.best_copy()
                vl, vf = yield from validate(twin.to(dev), windows, dev, c.gap + 1,
                                             lambda text: record(phase="validate",
                                                                 message=text))
                if which == "start":
                    self.start_val_f1 = vf
                else:
                    self.best.update(val_f1=vf, val_loss=vl)  # type: ignore[union-attr]

        def keep_if_better(val_loss: float, val_f1: float) -> None:
            if self.best is None or is_better(
                    val_f1, val_loss, self.best["val_f1"], self.best["val_loss"],
                    self.val_cells, fine_tuning=self.fine_tunes):
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
            if windows and self.fine_tunes and self.best is None:
                vl, vf = yield from validation(record())
                self.start_val_f1 = vf
                self.best = {"state_dict": self._snapshot(), "val_f1": vf, "val_loss": vl,
                             "step": st["step"]}
                yield record(val_loss=vl, val_f1=vf, best_val_f1=vf,
                             message="validation of the starting model")
            def take_updates() -> None:
                """Labels changed (live training): taken in between two steps."""
                nonlocal batches, windows, stale, message
                if tset.has_pending:
                    applied = tset.apply()
                    batches, windows = tset.batches, tset.windows
                    stale |= applied.validation_changed
                    message = applied.message or message or (
                        f"your edits are included (update {applied.version})")

            while True:
                take_updates()
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
                take_updates()  # before a validation, so that edits do not wait for it too
                if due_val and windows:
                    if stale:
                        yield from revalidate()
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
            try:
                self.result = self._finish(stopped, elapsed(), ckpt_dir)
                if ckpt_dir is not None:
                    save_checkpoint()
            finally:
                held.close()
        return self.result

    # ------------------------------------------------------------ live changes
    def update(self, image_index: int, labels: Any, region: Any = None) -> int:
        """Queue new labels for an image (see :meth:`TrainingRun.update`)."""
        if self.result is not None:
            raise RuntimeError("this training run has ended; start a new one")
        with self._update_lock:
            if self.set is None:  # not prepared yet: the new labels are the data
                i, lab, reg = checked_update(self.data, image_index, labels, region)
                self.data.labels[i], self.data.regions[i] = lab, reg
                self._early_version += 1
                return self._early_version
            return self.set.queue(image_index, labels, region)

    def snapshot(self, device: Any = None) -> UNet:
        """A copy of the current weights, in evaluation mode (for a live preview)."""
        twin = copy_model(self.model).eval()
        return twin if device is None else twin.to(resolve_device(device))

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
        best = self.best or {}
        facts = {
            "steps": self.history[-1].step if self.history else 0,
            "seconds": round(seconds, 1), "device": str(self.device),
            "n_images": len(self.data.images), "n_planes": self.n_planes,
            "started_from": self.started_from, "best_val_f1": best.get("val_f1"),
            "best_val_loss": best.get("val_loss"), "best_step": best.get("step"),
            "start_val_f1": self.start_val_f1, "val_cells": self.val_cells,
            "seed": self.seed, "stopped_reason": stopped,
        }
        out.metadata = training_metadata(
            out.metadata, self.config, self.history, facts,
            None if self.set is None else self.set.cell_diameter)
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
