"""The public face of the training engine: :func:`iter_train`, :func:`train` and
:class:`TrainingRun`."""

from __future__ import annotations

import os
from collections.abc import Generator, Sequence
from typing import Any

import torch

from .._utils import run_to_completion
from ..augment import AugmentConfig
from ..model import UNet
from .config import TrainConfig
from .loop import Trainer
from .records import TrainProgress, TrainResult

__all__ = ["TrainingRun", "iter_train", "train"]


class TrainingRun(Generator[TrainProgress, None, TrainResult]):
    """The generator returned by :func:`iter_train`, with the result kept on it.

    Iterate it for :class:`TrainProgress` records; its return value (the
    ``StopIteration`` value, or ``yield from``) is the :class:`TrainResult`.
    After it ends (finished, stopped, closed or garbage-collected), ``result``
    holds the same :class:`TrainResult`; ``close()`` therefore never loses the
    best model so far.
    """

    def __init__(self, trainer: Trainer) -> None:
        self._trainer = trainer
        self._gen = trainer.run()

    def send(self, value: None) -> TrainProgress:
        return self._gen.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> TrainProgress:  # type: ignore
        if val is None and tb is None:
            return self._gen.throw(typ)
        return self._gen.throw(typ, val, tb)  # pragma: no cover - deprecated form

    def close(self) -> None:
        self._gen.close()

    @property
    def result(self) -> TrainResult | None:
        """The :class:`TrainResult` once the run has ended, else None."""
        return self._trainer.result

    @property
    def history(self) -> list[TrainProgress]:
        """Progress records of the steps so far."""
        return self._trainer.history

    def best_model(self) -> UNet:
        """A copy of the best model so far (the current one if none was validated yet)."""
        return self._trainer.best_copy()

    def current_model(self, device: str | torch.device | None = None) -> UNet:
        """A copy of the weights as they are now (for a live preview), on ``device``
        (default the CPU); safe to call from another thread while training runs."""
        return self._trainer.snapshot(device)

    def update(self, image_index: int, labels: Any, region: Any = None) -> int:
        """Give the running training new labels for one of its images (live training).

        Safe to call from any thread while the run goes on: the labels are
        checked at once (ValueError for a wrong shape or bad ids) and copied, and
        the training thread takes them in between two steps, recomputing the
        targets of the changed area only. New cells, erased cells and changed
        regions all count. Cells painted in the held-out area are held out too.

        Parameters
        ----------
        image_index : int
            Which image of ``iter_train``'s ``images`` (0 for a single image).
        labels : array
            All the labels of that image, as they are now.
        region : optional
            Where they are complete, as for ``regions`` of :func:`iter_train`
            (None: the whole image, or the whole labelled planes of a stack).

        Returns
        -------
        int
            The update's version; progress records carry ``labels_version``, the
            last update training includes, and ``applied_version`` says it too.
        """
        return self._trainer.update(image_index, labels, region)

    @property
    def applied_version(self) -> int:
        """The last label update that training includes (0: none yet)."""
        t = self._trainer
        return t._early_version if t.set is None else t.set.applied_version

    @property
    def update_times(self) -> dict[int, tuple[float, float]]:
        """Per update version: when it was queued and when training took it in
        (``time.perf_counter`` seconds)."""
        t = self._trainer
        return {} if t.set is None else dict(t.set.update_times)


def iter_train(
    images: Any,
    labels: Any,
    model: UNet | str | os.PathLike | None = None,
    *,
    regions: Any = None,
    max_steps: int | None = None,
    max_time: float | None = None,
    patch_shape: int | Sequence[int] | None = None,
    batch_size: int | None = None,
    optimizer: str = "adam",
    lr: float | None = None,
    loss: str = "weighted_ce",
    augment: bool | AugmentConfig = True,
    validation: float = 0.1,
    validate_every: int | None = None,
    device: str | torch.device | None = "auto",
    seed: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 250,
    resume: str | os.PathLike | None = None,
    final_lr_fraction: float | None = None,
    gap: int = 1,
    target_mode: str = "binary",
    w0: float = 10.0,
    sigma: float = 5.0,
    report_interval: float = 0.1,
    max_batch: int = 16,
) -> TrainingRun:
    """Train a U-Net step by step: a generator of :class:`TrainProgress` records.

    Returns a :class:`TrainingRun` (a generator) whose return value is a
    :class:`TrainResult`; see :func:`train` for the parameters. Arguments, label
    values and data shapes are checked at once (ValueError); problems found only
    while preparing the pixels (NaN values, no annotation at all) are raised
    during iteration, right after the first record (``phase == "prepare"``).
    Closing the run stops training within one step; ``run.result`` then holds
    the best model so far (see the module notes).
    """
    config = TrainConfig(
        max_steps=max_steps, max_time=max_time, patch_shape=patch_shape,
        batch_size=batch_size, optimizer=optimizer, lr=lr, loss=loss, augment=augment,
        validation=validation, validate_every=validate_every, device=device, seed=seed,
        checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, resume=resume,
        gap=gap, target_mode=target_mode, w0=w0, sigma=sigma,
        final_lr_fraction=final_lr_fraction, report_interval=report_interval,
        max_batch=max_batch,
    )
    return TrainingRun(Trainer(images, labels, model, config, regions))


def train(
    images: Any,
    labels: Any,
    model: UNet | str | os.PathLike | None = None,
    *,
    max_steps: int | None = None,
    max_time: float | None = None,
    **options: Any,
) -> TrainResult:
    """Train (or fine-tune) a U-Net on images with painted instance labels.

    Parameters
    ----------
    images : array or list of arrays
        2D images ``(row, col)`` or stacks ``(plane, row, col)`` (also channels
        or colour, as for :func:`~napari_unet.predict_tiled`); any numeric dtype;
        numpy, dask or zarr. Each plane is normalised with the model's
        :class:`~napari_unet.Normalization` before patches are drawn.
    labels : array or list of arrays
        Integer instance labels of the same (plane,) row, col shape: 0 is
        background, each cell has its own id. Planes whose labels are all 0 and
        that no region marks are skipped.
    model : UNet, path or None
        The model to fine-tune (copied; the caller's model is never changed), a
        model file, or None for the packaged pretrained model when there is one,
        else a new :func:`new_model`.
    max_steps : int, optional
        Stop after this many optimiser steps (in the whole run, resumes included).
    max_time : float, optional
        Stop after this many seconds (plus one final validation). :func:`train`
        needs ``max_steps`` or ``max_time``; :func:`iter_train` without either
        runs until it is closed.
    regions : optional
        Where the labels are complete, per image: a bool mask of the labels'
        shape, or rectangles ``(r0, c0, r1, c1)`` (``(plane, r0, c0, r1, c1)`` for
        stacks; half-open pixel ranges). Outside them the loss ignores every
        pixel. A plane that no region marks counts whole when it has labels.
        For a list of images give a list with one entry (or None) per image.
    patch_shape : int or (int, int), optional
        Target pixels of a training patch (the network sees them plus
        ``model.margin`` context on each side). Default: 128 on CPU, 256 on CUDA,
        never much larger than the images.
    batch_size : int, optional
        Patches per step. Default: 4 on CPU and MPS; on CUDA as many as fit in
        70 % of the free memory, at most ``max_batch``. On GPU out-of-memory
        errors the batch, then the patch, is halved and training goes on (said
        in a progress message).
    optimizer : {"adam", "sgd"}
        Adam, or SGD with momentum 0.99 as in the paper.
    lr : float, optional
        Learning rate (default 3e-3 for Adam, 1e-2 for SGD), reached after a
        50-step linear warm-up and then kept (see ``final_lr_fraction``). From a
        trained model the default is gentler, so that a few painted cells do not
        pull it away from what it knew: ``FINETUNE_LR`` (3e-4 for Adam, 1e-3 for
        SGD), and for live training (neither ``max_steps`` nor ``max_time``, so the
        rate never decays) ``LIVE_FINETUNE_LR`` (1e-3 for Adam, 3e-3 for SGD).
    final_lr_fraction : float, optional
        With a step or time limit, decay the learning rate along a cosine to
        this fraction of ``lr`` at the end (default ``FINAL_LR_FRACTION``, 1.0:
        no decay, which suits short fine-tuning; long pretraining uses ~0.05).
    loss : {"weighted_ce", "weighted_ce+dice"}
        See :func:`training_loss`.
    augment : bool or AugmentConfig
        Random elastic deformation, flips, rotations, scaling and gray-value changes.
    validation : float
        The share of the painted cells held out (whole, in compact groups of
        tiles) to pick the best model; at least 30 cells wherever 120 or more
        are painted, never more than half, none with fewer than 8 cells; 0 for
        no validation. Records and the result say how many cells F1 is
        measured on (``val_cells``).
    validate_every : int, optional
        Validate every this many steps; by default as often as keeps validation
        under about 15 % of the time (pass a number for fully reproducible runs).
    device : str
        ``"auto"`` (CUDA, then Apple MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"mps"``.
        CUDA trains in mixed precision (bfloat16 where the GPU has it), with
        cuDNN autotuning; the training data is kept on the GPU (in pinned host
        memory when it would take more than 30 % of the free GPU memory).
    seed : int, optional
        Makes the run reproducible (sampling, augmentation, dropout, the split).
    checkpoint_dir : path, optional
        Where to keep ``last.ckpt`` (every ``checkpoint_every`` steps and at the
        end, written atomically) and ``best.pt`` (the best model so far).
    checkpoint_every : int
        Steps between checkpoints.
    resume : path, optional
        A ``checkpoint_dir`` (or its ``last.ckpt``) to continue: weights,
        optimiser state, step count, elapsed time and random state are restored,
        as are the seed, optimiser, learning rate, loss, target settings and
        validation split of the original run.
    gap, target_mode, w0, sigma
        Targets and weight map (:func:`~napari_unet.core.weightmap.training_targets`):
        ``gap`` pixels of background carved between touching cells, ``"binary"``
        (background / cell) or ``"boundary"`` (background / interior / boundary)
        classes, and the weight map's ``w0`` and ``sigma``.
    report_interval : float
        Seconds between progress records (0: one per step); each record holds
        the mean loss of its steps. The loss is read back from the device only
        then.
    max_batch : int
        The largest automatic batch on a GPU.

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        For bad arguments or data: mismatched shapes (naming the pair), no
        annotation, NaN values, non-integer or negative labels, or a model whose
        classes do not fit ``target_mode``.

    Examples
    --------
    >>> from napari_unet.core.synthetic import make_sample
    >>> image, labels = make_sample("nuclei", (64, 64), seed=0)
    >>> result = train(image, labels, UNet(depth=2, base_channels=4, dropout=0.0),
    ...                max_steps=2, patch_shape=32, batch_size=1, validation=0, device="cpu")
    >>> result.stopped_reason, result.model.metadata["target"]["gap"]
    ('max_steps', 1)
    """
    if max_steps is None and max_time is None:
        raise ValueError("train() needs max_steps or max_time (or both); it would never stop")
    return run_to_completion(
        iter_train(images, labels, model, max_steps=max_steps, max_time=max_time, **options)
    )
