"""The training engine: fine-tune (or train) a U-Net on painted instance labels.

What happens in a run
---------------------
1. **Data, once** (:mod:`.data`, :mod:`.split`): every annotated plane is
   normalised with the model's normalisation; some painted cells are held out
   for validation (whole cells, in compact groups of tiles, at least 30 where
   120 or more are painted); the targets of the paper (classes with thin gaps
   carved between touching cells, and the border term of the weight map
   ``w0·exp(-(d1+d2)²/2σ²)``) are computed once per plane, as the paper does,
   and the class-balance weights once over all training pixels.
2. **Batches on the device** (:mod:`.batches`): all of it is kept as tensors on
   the training device; each step draws patch centres among the training
   pixels, gives every patch a random elastic deformation, flip, rotation and
   scaling, and reads image, cell ids and border term through that transform in
   one pass, carves the gaps in the warped ids and changes gray values. No
   host→device copy of image data and no host synchronisation happen per step.
3. **Steps** (:mod:`.loop`): pixel-wise softmax cross-entropy weighted by the
   warped weight map (:mod:`.loss`), Adam (or SGD with momentum 0.99, as in the
   paper), mixed precision on CUDA. The loss is read back only for a progress
   record (at most about ten a second), so the GPU never waits for the host.
   Out-of-memory errors halve the batch, then the patch, and training goes on
   (:class:`~napari_unet.core.memory.Backoff`).
4. **Validation** (:mod:`.validate`): the held-out cells are segmented as
   :func:`~napari_unet.segment` would. A new network keeps the model with the
   best F1 (ties: lower validation loss); a fine-tuned trained model is replaced
   only by a model whose F1 is clearly better, or that is no worse in F1 and in
   validation loss and better in one
   (:func:`~napari_unet.core.training.validate.is_better`). A trained model
   being fine-tuned is validated before the first step, so training never
   returns something worse than it started from.

Cancelling
----------
:func:`iter_train` returns a :class:`TrainingRun`, a generator of
:class:`TrainProgress` records whose return value is a :class:`TrainResult`.
Closing it (``run.close()``, or dropping it) stops training at once (the
generator is suspended between two records, so at most the steps since the
last record finish) and still produces the result: ``run.result`` holds the
best model so far with ``stopped_reason="cancelled"``, and with a
``checkpoint_dir`` the best model (``best.pt``) and a resumable checkpoint
(``last.ckpt``) are written there as well::

    run = iter_train(images, labels, max_time=600, checkpoint_dir="ckpt")
    for progress in run:
        if user_pressed_stop:
            run.close()
            break
    model = run.result.model        # best so far, also in ckpt/best.pt

``iter_train(..., resume="ckpt")`` continues such a run (weights, optimiser
state, step count, elapsed time and random state).

Defaults, and the measurement behind them
-----------------------------------------
Learning curves (``benchmarks/bench_training.py``: from scratch on six 256×256
synthetic images of touching nuclei, 240 s on 2 CPU threads, instance F1 at
IoU 0.5 on four held-out images) gave: Adam 3e-3 0.64 / 0.61 (two seeds),
Adam 1e-3 0.56 / 0.55, Adam 1e-2 0.41, SGD momentum 0.99 at 1e-2 0.43;
16 base channels 0.64 against 0.53 for 32 (a third of the steps in the same
time); a cosine decay of the learning rate did not help (0.68 with a constant
rate). In an earlier run at Adam 1e-3, 128×128 target patches in batches of 4
beat 256×256 in batches of 2 (0.54 against 0.40) and dropout 0.5 did not help
(0.49). Hence: a new model is a valid depth-4 U-Net with 16 base channels and
no dropout, trained with Adam at 3e-3 after a 50-step linear warm-up (kept as
a safeguard when fine-tuning), at a constant rate.
"""

from __future__ import annotations

from .api import TrainingRun, iter_train, train
from .checkpoint import BEST_MODEL_NAME, CHECKPOINT_NAME
from .config import DEFAULT_MODEL_CONFIG, TrainConfig, new_model
from .loss import training_loss
from .records import TrainProgress, TrainResult

__all__ = [
    "TrainProgress",
    "TrainResult",
    "TrainingRun",
    "TrainConfig",
    "iter_train",
    "train",
    "new_model",
    "training_loss",
    "DEFAULT_MODEL_CONFIG",
    "CHECKPOINT_NAME",
    "BEST_MODEL_NAME",
]
