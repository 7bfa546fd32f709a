"""The one epoch loop: Keras' ``fit``, set up from a :class:`~tfmf.config.TrainConfig`.

Every iterative estimator runs here: gradient models (MF, biased MF, Mult-VAE/DAE) one
minibatch per step, ALS and Gibbs sweeps one sweep per step (:class:`~tfmf.training.model.
SweepModel`). What a config asks for becomes stock Keras pieces:

====================================  =====================================================
``optimizer``, ``learning_rate``...   a tf_keras legacy optimizer (+ LossScaleOptimizer for
                                      mixed_float16, + Horovod's DistributedOptimizer)
``steps_per_execution``               ``compile(steps_per_execution=...)``
``early_stopping_patience``           ``EarlyStopping`` on the model's validation monitor
``restore_best``                      :class:`~tfmf.training.callbacks.RestoreBest`
``checkpoint_every`` + a run dir      ``BackupAndRestore`` (resume: bitwise, see below)
a run dir                             ``CSVLogger`` (history.csv) and ``TensorBoard``
``verbose``                           Keras' progress bar (1) or one line per epoch (2)
====================================  =====================================================

plus tfmf's own callbacks (divergence naming, lr/seconds, validation metrics).

Resume is bitwise: a dataset built with ``epoch=epoch_of(model, steps)`` reads the epoch from
the optimizer's restored step counter when Keras opens each epoch's iterator, so a resumed run
sees exactly the batches, in the same order, that an uninterrupted run sees from that epoch on,
and Keras splits each epoch into the same ``steps_per_execution`` calls.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import tensorflow as tf
import tf_keras

from tfmf import distributed
from tfmf.config import TrainConfig
from tfmf.errors import ConfigError
from tfmf.training import callbacks as cb
from tfmf.training.optimizers import create_slots, make_optimizer
from tfmf.training.precision import wrap_optimizer


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seeds Python, NumPy and TensorFlow; optionally enables TF op determinism."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    tf_keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def compile_model(model: tf_keras.Model, cfg: TrainConfig, steps_per_epoch: int, *,
                  run_eagerly: bool = False) -> None:
    """``model.compile`` with the optimizer, precision and Horovod wrapping of ``cfg``.

    Args:
      model: a :class:`~tfmf.training.model.ComponentLossModel` (or any Keras model).
      cfg: training settings.
      steps_per_epoch: steps per epoch on this rank (for schedules).
      run_eagerly: sweep models (NumPy inside the step) run eagerly, one step per call.
    """
    distributed.init()
    lr_scale = float(distributed.size()) if cfg.scale_lr_by_world_size else 1.0
    optimizer = distributed.distributed_optimizer(make_optimizer(cfg, steps_per_epoch, lr_scale),
                                                  cfg.sparse_as_dense)
    optimizer = wrap_optimizer(optimizer, cfg.precision, cfg.initial_loss_scale)
    model.compile(optimizer=optimizer, run_eagerly=run_eagerly,
                  steps_per_execution=1 if run_eagerly else cfg.steps_per_execution)
    if not run_eagerly:
        # Slots now, not in the first compiled call: tf.function traces a function that
        # creates variables twice, and the multi-step train function is a fit's costliest trace.
        create_slots(model.optimizer, model.trainable_variables)


def epoch_of(model: tf_keras.Model, steps_per_epoch: int) -> Callable[[], tf.Tensor]:
    """The epoch (int64 tensor) a compiled model is in, from its optimizer's step counter.

    Pass it as ``epoch=`` to :mod:`tfmf.data.pipelines` so each epoch's order is seeded by
    ``(seed, epoch)``, also after a resume.
    """
    steps = tf.constant(max(1, int(steps_per_epoch)), tf.int64)
    return lambda: tf.cast(model.optimizer.iterations, tf.int64) // steps


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
      history: one dict per epoch (``epoch`` 1-based), including the epochs before a resume.
      best_epoch: the epoch ``restore_best`` restored (None when not selecting).
    """

    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None


def fit(model: tf_keras.Model, dataset: tf.data.Dataset, cfg: TrainConfig, *,
        steps_per_epoch: int, run_dir=None, callbacks: Iterable = (),
        validation: Callable[[], dict] | None = None, monitor: str | None = None,
        mode: str = "min", resume: bool = False) -> FitResult:
    """Runs ``model.fit`` for ``cfg.epochs`` with tfmf's and the config's callbacks.

    Args:
      model: a compiled Keras model (:func:`compile_model`).
      dataset: this rank's batches; each epoch is one pass (its cardinality is the step count).
      cfg: training settings.
      steps_per_epoch: batches per epoch on every rank.
      run_dir: a :class:`tfmf.rundir.RunDir` (or path) for history.csv, TensorBoard and the
        BackupAndRestore checkpoint; None keeps everything in memory.
      callbacks: more Keras callbacks (run after tfmf's, before the checkpoint writers).
      validation: () -> {"val_...": float} on *validation* data, once per epoch.
      monitor: the key early stopping / restore_best watch (default: the first ``val_`` key).
      mode: "min" or "max" for ``monitor``.
      resume: continue from the checkpoint in ``run_dir`` (its epoch and state).

    Returns:
      A :class:`FitResult`.

    Raises:
      TrainingDiverged: the loss or the weights became NaN/inf (the last checkpoint is kept).
      FileNotFoundError: ``resume`` without a checkpoint.
      ConfigError: early stopping / restore_best without validation data.
    """
    from tfmf.rundir import RunDir

    rd = RunDir(run_dir) if run_dir is not None and not isinstance(run_dir, RunDir) else run_dir
    chief = distributed.is_chief()
    selecting = cfg.early_stopping_patience is not None or cfg.restore_best
    if selecting and validation is None:
        raise ConfigError("early stopping and restore_best select epochs on validation data, "
                          "and this fit has none: set train.validation_fraction (explicit "
                          "splits) or data.split.validation_users (user splits)",
                          key="train.validation_fraction")
    key = monitor
    backup_dir = None
    start = 0
    if rd is not None and cfg.checkpoint_every and getattr(model, "resumable", True) and chief:
        # Only rank 0 writes (and restores) the checkpoint; the other ranks get its state
        # from the broadcast at the start of training (cb.SyncStart).
        backup_dir = rd.checkpoints
    if resume:
        done = cb.completed_epochs(backup_dir, verify=True) if backup_dir else None
        if done is None and chief:
            where = rd.checkpoints if rd is not None else "(no run directory)"
            raise FileNotFoundError(f"nothing to resume: no checkpoint under {where}")
        start = distributed.broadcast_object(done or 0, "tfmf_start_epoch")
        if rd is not None and chief:
            rd.trim_history(start)

    steps = max(1, int(steps_per_epoch))
    cbs: list = distributed.keras_callbacks()
    cbs += [cb.DivergenceGuard(steps), cb.EpochInfo(steps)]
    if validation is not None:
        cbs.append(cb.Validation(validation))
    cbs += list(callbacks)
    restore = None
    if selecting:
        key = monitor or "val_loss"
        if cfg.early_stopping_patience is not None:
            cbs.append(tf_keras.callbacks.EarlyStopping(
                monitor=key, mode=mode, patience=cfg.early_stopping_patience,
                start_from_epoch=getattr(model, "early_stopping_start", 0)))
        if cfg.restore_best:
            restore = cb.RestoreBest(key, mode)
            cbs.append(restore)
    if rd is not None and chief:
        os.makedirs(rd.path, exist_ok=True)
        # History before the checkpoint: a kill between the two leaves a row the resumed run
        # trims and redoes, never a checkpoint whose row is lost.
        cbs.append(cb.EpochCSVLogger(rd.history, append=resume))
        cbs.append(cb.EpochTensorBoard(rd.tensorboard, write_graph=False, profile_batch=0))
    backup = None
    if backup_dir is not None:
        backup = cb.EpochBackup(backup_dir, cfg.checkpoint_every, cfg.epochs)
        cbs.append(backup)
    if resume and distributed.is_distributed():
        cbs.append(cb.SyncStart())  # after the restore: every rank continues from rank 0's state
    if rd is not None:
        cbs.append(cb.StopOnSignal(backup))  # last: the epoch's checkpoint exists when it stops
    verbose = cfg.verbose if chief else 0
    keras_history = model.fit(dataset, epochs=cfg.epochs, callbacks=cbs, verbose=verbose,
                              initial_epoch=start)
    rows = history_rows(keras_history)
    if resume and rd is not None and chief:
        rows = rd.read_history()
    return FitResult(rows, restore.best_epoch if restore is not None else None)


def history_rows(keras_history) -> list[dict]:
    """Keras' History as one dict per epoch with a 1-based ``epoch``."""
    hist = keras_history.history
    epochs = keras_history.epoch
    return [{"epoch": int(e) + 1, **{k: float(v[i]) for k, v in hist.items() if i < len(v)}}
            for i, e in enumerate(epochs)]
