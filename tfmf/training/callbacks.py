"""What tfmf adds to Keras' ``fit``, as callbacks (the loop itself is Keras').

* :class:`DivergenceGuard`: stops with :class:`~tfmf.errors.TrainingDiverged` naming the epoch
  and the step inside it of the first non-finite loss (even inside a multi-step compiled call),
  or non-finite weights at an epoch's end; it runs before any checkpoint callback, so the last
  good checkpoint is kept.
* :class:`EpochInfo`: adds ``lr``, ``steps`` and ``seconds`` to each epoch's logs.
* :class:`Validation`: adds validation metrics (``val_rmse``, ``val_ndcg@100``, ...) computed by
  a function, once on rank 0 and broadcast so early stopping decides alike on every rank.
* :class:`RestoreBest`: restores the weights of the best validated epoch at the end.
* :class:`EpochCSVLogger`: Keras' CSVLogger with 1-based epochs (as printed and plotted).
* :class:`EpochBackup`: Keras' BackupAndRestore saving every N epochs and at the last one.
* :class:`SyncStart`: on a resumed Horovod fit, rank 0's restored state on every rank before
  the first step.
* :class:`StopOnSignal`: SIGTERM/SIGINT end the fit at the next epoch boundary, after that
  epoch's checkpoint, with :class:`~tfmf.errors.Interrupted` (every Horovod rank together).
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import tensorflow as tf
import tf_keras

from tfmf import distributed
from tfmf.errors import Interrupted, TrainingDiverged
from tfmf.training.optimizers import create_slots, current_lr


class DivergenceGuard(tf_keras.callbacks.Callback):
    """Raises TrainingDiverged at the first non-finite loss or weights (module docstring).

    Args:
      steps_per_epoch: steps in an epoch (to turn the global step into epoch and step).
    """

    def __init__(self, steps_per_epoch: int):
        super().__init__()
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self._epoch = 0

    def on_train_begin(self, logs=None):
        if hasattr(self.model, "reset_divergence"):
            self.model.reset_divergence()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        bad = getattr(self.model, "first_bad_step", -1)
        if bad >= 0:
            value = float((logs or {}).get("loss", float("nan")))
            raise TrainingDiverged(bad // self.steps_per_epoch + 1,
                                   bad % self.steps_per_epoch + 1, value)

    def on_epoch_end(self, epoch, logs=None):
        # The epoch's last update can overflow the weights after a finite loss: stop before
        # they reach a checkpoint, the saved model or the metrics.
        for v in self.model.trainable_variables:
            if v.dtype.is_floating and not bool(tf.reduce_all(tf.math.is_finite(v))):
                raise TrainingDiverged(epoch + 1, self.steps_per_epoch, float("nan"))


class EpochInfo(tf_keras.callbacks.Callback):
    """Adds ``lr`` (at the epoch's end), ``steps`` and wall ``seconds`` to the epoch logs."""

    def __init__(self, steps_per_epoch: int):
        super().__init__()
        self.steps_per_epoch = int(steps_per_epoch)
        self._t0 = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        if not getattr(self.model, "sweeps", False):  # a sweep model's optimizer is unused
            logs["lr"] = current_lr(self.model.optimizer)
            logs["steps"] = self.steps_per_epoch
        logs["seconds"] = time.perf_counter() - self._t0


class Validation(tf_keras.callbacks.Callback):
    """Adds ``metrics_fn()`` (keys ``val_*``) to each epoch's logs.

    Computed on rank 0 only (the weights are identical on every rank) and broadcast, so every
    rank's early stopping sees the same numbers.

    Args:
      metrics_fn: () -> {"val_rmse": ...} evaluated on held-out *validation* data.
    """

    def __init__(self, metrics_fn: Callable[[], dict]):
        super().__init__()
        self.metrics_fn = metrics_fn

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        val = self.metrics_fn() if distributed.is_chief() else None
        logs.update(distributed.broadcast_object(val, "tfmf_validation"))


class RestoreBest(tf_keras.callbacks.Callback):
    """Keeps the weights of the best epoch by ``monitor`` and restores them at the end.

    Args:
      monitor: a validation key of the logs (e.g. ``val_rmse``).
      mode: "min" or "max".
    """

    def __init__(self, monitor: str, mode: str = "min"):
        super().__init__()
        self.monitor, self.mode = monitor, mode
        self.best: float | None = None
        self.best_epoch: int | None = None  # 1-based
        self._weights = None

    def on_epoch_end(self, epoch, logs=None):
        cur = (logs or {}).get(self.monitor)
        if cur is None or not np.isfinite(cur):
            return
        if self.best is None or (cur < self.best if self.mode == "min" else cur > self.best):
            self.best, self.best_epoch = float(cur), epoch + 1
            self._weights = self.model.get_weights()

    def on_train_end(self, logs=None):
        if self._weights is not None:
            self.model.set_weights(self._weights)


class EpochCSVLogger(tf_keras.callbacks.CSVLogger):
    """Keras' CSVLogger writing the 1-based epoch that the console and the plots show.

    Its columns are the first epoch's keys (stock CSVLogger adds a ``val_`` twin of every key
    when the first epoch has none, which would fill history.csv with NA columns).
    """

    def on_epoch_end(self, epoch, logs=None):
        if self.keys is None and logs:
            self.keys = sorted(logs)
        super().on_epoch_end(epoch + 1, logs)


class EpochBackup(tf_keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore that keeps its checkpoint and saves every ``every`` epochs.

    The backup is kept after training, so a finished run can be resumed with more epochs.

    Args:
      backup_dir: where the checkpoint lives.
      every: save every N epochs (and always at the last epoch).
      epochs: the fit's total epochs.
    """

    def __init__(self, backup_dir: str, every: int, epochs: int):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=False)
        self.every, self.epochs = max(1, int(every)), int(epochs)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0 or epoch + 1 == self.epochs:
            self._backup(epoch=epoch)


class SyncStart(tf_keras.callbacks.Callback):
    """Broadcasts rank 0's model, optimizer (slots included) and loss-scale state at the start.

    Only rank 0 restores a checkpoint; Horovod's BroadcastGlobalVariablesCallback syncs after
    the first batch, which is too late for a resumed run (the first steps would average
    gradients of fresh weights). Slots are created first so rank 0's restored values exist.
    """

    def on_train_begin(self, logs=None):
        from tfmf.training.precision import loss_scale_variables

        opt = self.model.optimizer
        create_slots(opt, self.model.trainable_variables)
        distributed.broadcast_variables(self.model.variables)
        distributed.broadcast_variables(opt.variables() + loss_scale_variables(opt))


def signal_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


class StopOnSignal(tf_keras.callbacks.Callback):
    """SIGTERM / SIGINT (a scheduler's preemption, Ctrl-C): finish the current epoch, let the
    checkpoint callbacks save it, then raise :class:`~tfmf.errors.Interrupted`.

    The epoch boundary is the safe point: ``--resume`` continues from there to the same
    weights as an uninterrupted run (bitwise). Place it after the checkpoint callbacks. Under
    Horovod the ranks agree (an allreduce of the flag) so they all stop after the same epoch.
    A second signal stops at once (KeyboardInterrupt; the previous checkpoint stays). The
    previous handlers are restored when training ends.
    """

    SIGNALS = ("SIGTERM", "SIGINT")

    def __init__(self, backup: "EpochBackup | None" = None):
        super().__init__()
        self.backup = backup  # saves the stopping epoch when it is not one it saves anyway
        self.received: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.received is not None:  # a second signal: stop now (the last checkpoint stays)
            raise KeyboardInterrupt(f"second {signal_name(signum)} while stopping")
        self.received = signum

    def on_train_begin(self, logs=None):
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for name in self.SIGNALS:
            sig = getattr(signal, name)
            self._previous[sig] = signal.signal(sig, self._handle)

    def on_epoch_end(self, epoch, logs=None):
        if distributed.any_rank(self.received is not None):
            if self.backup is not None and (epoch + 1) % self.backup.every:
                self.backup._backup(epoch=epoch)
            name = signal_name(self.received) if self.received else "a peer's signal"
            raise Interrupted(epoch + 1, name)

    def on_train_end(self, logs=None):
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def completed_epochs(backup_dir: str, verify: bool = False) -> int | None:
    """Epochs a BackupAndRestore checkpoint under ``backup_dir`` holds (None: no checkpoint).

    Args:
      backup_dir: the directory given to BackupAndRestore.
      verify: read every tensor of the checkpoint first (a resume must not start from a
        truncated or corrupt file; TensorFlow checks each tensor's CRC32C as it reads it).

    Raises:
      CheckpointError: the checkpoint cannot be read (named, with TensorFlow's reason).
    """
    import os

    from tfmf.errors import CheckpointError

    latest = tf.train.latest_checkpoint(os.path.join(backup_dir, "chief"))
    if latest is None:
        return None
    try:
        reader = tf.train.load_checkpoint(latest)
        if verify:
            for key in reader.get_variable_to_shape_map():
                reader.get_tensor(key)
        return int(reader.get_tensor("ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE")) + 1
    except (tf.errors.OpError, ValueError, KeyError, IndexError) as exc:
        reason = getattr(exc, "message", None) or str(exc)
        raise CheckpointError(
            f"the checkpoint {latest} cannot be restored ({reason.splitlines()[0][:200]}); "
            "Keras keeps only the latest backup, so there is no earlier one to fall back to: "
            "train again without --resume (or into a new run directory)", path=latest) from None
