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
* :class:`EpochTensorBoard`: Keras' TensorBoard callback; a full disk ends the fit with a
  :class:`~tfmf.fileio.DiskFullError` that says what is kept.
* :class:`EpochBackup`: Keras' BackupAndRestore saving every N epochs and at the last one,
  keeping the last :data:`KEEP_CHECKPOINTS` (resume falls back to the previous one when the
  latest is corrupt, see :func:`completed_epochs`).
* :class:`SyncStart`: on a resumed Horovod fit, rank 0's restored state on every rank before
  the first step.
* :class:`StopOnSignal`: SIGTERM/SIGINT end the fit at the next epoch boundary, after that
  epoch's checkpoint, with :class:`~tfmf.errors.Interrupted` (every Horovod rank together).
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import sys
import time
from typing import Callable

import numpy as np
import tensorflow as tf
import tf_keras

from tfmf import distributed
from tfmf.errors import CheckpointError, Interrupted, TrainingDiverged
from tfmf.fileio import DiskFullError, disk_full_reason, is_disk_full
from tfmf.training.optimizers import create_slots, current_lr

#: Checkpoints EpochBackup keeps: the latest and one before it to fall back to.
KEEP_CHECKPOINTS = 2


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
        size = os.path.getsize(self.filename) if os.path.exists(self.filename) else 0
        try:
            super().on_epoch_end(epoch + 1, logs)
        except (tf.errors.OpError, OSError) as exc:
            if not is_disk_full(exc):
                raise
            # Drop the part of the row that reached the file: history.csv stays parseable.
            try:
                self.csv_file.close()
            except (tf.errors.OpError, OSError):
                pass  # the buffered rest of the row cannot be written either
            os.truncate(self.filename, size)
            raise training_disk_full(exc, self.filename, f"epoch {epoch + 1}'s row of",
                                     os.path.dirname(self.filename)) from None


class EpochTensorBoard(tf_keras.callbacks.TensorBoard):
    """Keras' TensorBoard callback whose writes, on a full disk, end the fit with a
    :class:`~tfmf.fileio.DiskFullError` naming the run directory's last checkpoint."""

    def _guard(self, hook, *args):
        try:
            return hook(*args)
        except (tf.errors.OpError, OSError) as exc:
            if not is_disk_full(exc):
                raise
            raise training_disk_full(exc, self.log_dir, "TensorBoard scalars in",
                                     os.path.dirname(os.path.abspath(self.log_dir))) from None

    def on_train_begin(self, logs=None):
        self._guard(super().on_train_begin, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._guard(super().on_epoch_end, epoch, logs)

    def on_train_end(self, logs=None):
        self._guard(super().on_train_end, logs)


def training_disk_full(exc: BaseException, path: str, what: str,
                       run_dir: str) -> DiskFullError:
    """The error a fit raises when ``what`` ``path`` could not be written for lack of space.

    It names the run directory's last checkpoint (kept: nothing older than it is lost) and the
    command that continues the run once space is freed.
    """
    try:
        done = completed_epochs(os.path.join(run_dir, "checkpoints"))
    except CheckpointError:
        done = None
    kept = (f"the last checkpoint (epoch {done}) is kept and the run directory is valid: free "
            f"space, then continue with `tfmf train --resume {run_dir}`" if done else
            "the run has no checkpoint yet: free space, then train it again")
    return DiskFullError(f"cannot write {what} {path}: {disk_full_reason(exc)}", path, kept)


class EpochBackup(tf_keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore that keeps its checkpoints and saves every ``every`` epochs.

    The backup is kept after training, so a finished run can be resumed with more epochs. The
    last ``keep`` checkpoints are kept (Keras keeps one): a resume whose latest checkpoint is
    corrupt falls back to the one before (:func:`completed_epochs`). A save that fails for
    lack of space removes its partial files and raises :class:`~tfmf.fileio.DiskFullError`;
    the previous checkpoints are untouched (TensorFlow deletes old ones only after a save
    succeeded).

    Args:
      backup_dir: where the checkpoints live (``backup_dir/chief``).
      every: save every N epochs (and always at the last epoch).
      epochs: the fit's total epochs.
      keep: how many checkpoints to keep.
    """

    def __init__(self, backup_dir: str, every: int, epochs: int, keep: int = KEEP_CHECKPOINTS):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=False)
        self.every, self.epochs, self.keep = max(1, int(every)), int(epochs), max(1, int(keep))

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        state = self._training_state
        # The same tf.train.Checkpoint (model, optimizer, epoch counters) under a manager that
        # keeps `keep` checkpoints; only one process writes here (rank 0), so read == write.
        manager = tf.train.CheckpointManager(state.read_checkpoint_manager.checkpoint,
                                             directory=os.path.join(self.backup_dir, "chief"),
                                             max_to_keep=self.keep)
        state.read_checkpoint_manager = state.write_checkpoint_manager = manager

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0 or epoch + 1 == self.epochs:
            self._backup(epoch=epoch)

    def _backup(self, epoch, batch=0):
        chief = os.path.join(self.backup_dir, "chief")
        before = set(os.listdir(chief)) if os.path.isdir(chief) else set()
        try:
            super()._backup(epoch, batch)
        except (tf.errors.OpError, OSError) as exc:
            if not is_disk_full(exc):
                raise
            # TensorFlow leaves its ckpt-N_temp/ (and, when the merge failed, ckpt-N files):
            # remove what this save added so only complete checkpoints remain.
            for name in set(os.listdir(chief)) - before if os.path.isdir(chief) else ():
                target = os.path.join(chief, name)
                if os.path.isdir(target):
                    shutil.rmtree(target, ignore_errors=True)
                elif name != "checkpoint":
                    os.remove(target)
            raise training_disk_full(exc, chief, f"the checkpoint of epoch {epoch + 1} to",
                                     os.path.dirname(os.path.abspath(self.backup_dir))
                                     ) from None


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
            # Every rank waits for rank 0's checkpoint: horovodrun terminates the other ranks
            # as soon as one exits non-zero, which must not cut rank 0's save short.
            distributed.barrier()
            name = signal_name(self.received) if self.received else "a signal to another rank"
            self._stopping()
            raise Interrupted(epoch + 1, name)

    def _stopping(self) -> None:
        """Restores the previous handlers (Keras skips on_train_end when a callback raises);
        under horovodrun, whose SIGTERM to the other ranks follows the first rank's exit, the
        remaining ranks ignore further SIGTERM/SIGINT so they exit with their message."""
        import signal

        self.on_train_end()
        if distributed.is_distributed():
            for name in self.SIGNALS:
                signal.signal(getattr(signal, name), signal.SIG_IGN)

    def on_train_end(self, logs=None):
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _checkpoint_number(prefix: str) -> int:
    m = re.search(r"-(\d+)$", prefix)
    return int(m.group(1)) if m else -1


def checkpoint_prefixes(chief_dir: str) -> list[str]:
    """Every checkpoint under ``chief_dir`` (``ckpt-N`` prefixes), oldest first.

    Read from the files on disk (``ckpt-N.index``), not only from TensorFlow's ``checkpoint``
    state file, so a damaged state file still leaves the checkpoints findable.
    """
    found = {p[:-len(".index")] for p in glob.glob(os.path.join(chief_dir, "ckpt-*.index"))}
    return sorted(found, key=_checkpoint_number)


def _read_checkpoint(prefix: str, verify: bool) -> int:
    """Epochs a BackupAndRestore checkpoint holds; raises TF/lookup errors when unreadable."""
    reader = tf.train.load_checkpoint(prefix)
    if verify:
        # TensorFlow checks each tensor's CRC32C as it reads it.
        for key in reader.get_variable_to_shape_map():
            reader.get_tensor(key)
    return int(reader.get_tensor("ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE")) + 1


_UNREADABLE = (tf.errors.OpError, ValueError, KeyError, IndexError)


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "message", None) or str(exc)
    return reason.splitlines()[0][:200] if reason else type(exc).__name__


def completed_epochs(backup_dir: str, verify: bool = False) -> int | None:
    """Epochs the BackupAndRestore checkpoint under ``backup_dir`` holds (None: no checkpoint).

    Without ``verify`` this reads the latest checkpoint's epoch counter only. With ``verify``
    (a resume) every tensor of the latest checkpoint is read first; when that fails (a
    truncated or corrupt file) the previous checkpoint is tried, and so on (EpochBackup keeps
    :data:`KEEP_CHECKPOINTS`). A fallback prints a warning on stderr, moves the unreadable
    checkpoint's files to ``backup_dir/corrupt/`` and points TensorFlow's ``checkpoint`` state
    file at the good one, which Keras' BackupAndRestore then restores.

    Args:
      backup_dir: the directory given to BackupAndRestore.
      verify: check the checkpoint reads completely, falling back to an earlier one.

    Raises:
      CheckpointError: no checkpoint can be read (each one named, with TensorFlow's reason).
    """
    chief = os.path.join(backup_dir, "chief")
    try:
        latest = tf.train.latest_checkpoint(chief)
    except _UNREADABLE:  # a damaged state file: the checkpoints on disk still count
        latest = None
    latest = os.path.normpath(latest) if latest else None
    prefixes = [os.path.normpath(p) for p in checkpoint_prefixes(chief)]
    if latest is not None and latest not in prefixes:
        prefixes.append(latest)  # named by the state file, its index missing: reported below
    if not prefixes:
        return None
    if not verify:
        try:
            return _read_checkpoint(latest or prefixes[-1], verify=False)
        except _UNREADABLE as exc:
            raise CheckpointError(f"the checkpoint {latest or prefixes[-1]} cannot be read "
                                  f"({_reason(exc)})", path=latest or prefixes[-1]) from None
    bad: list[tuple[str, str]] = []
    for prefix in reversed(prefixes):
        try:
            done = _read_checkpoint(prefix, verify=True)
        except _UNREADABLE as exc:
            bad.append((prefix, _reason(exc)))
            continue
        if bad or prefix != latest:
            _fall_back(backup_dir, prefix, done, bad)
        return done
    if len(bad) == 1:
        prefix, reason = bad[0]
        raise CheckpointError(
            f"the checkpoint {prefix} cannot be restored ({reason}) and there is no earlier "
            "one to fall back to: train again without --resume (or into a new run "
            "directory)", path=prefix)
    listed = "; ".join(f"{p} ({r})" for p, r in bad)
    raise CheckpointError(
        f"none of the {len(bad)} checkpoints under {chief} can be restored: {listed}; train "
        "again without --resume (or into a new run directory)", path=bad[0][0])


def _fall_back(backup_dir: str, good: str, done: int, bad: list[tuple[str, str]]) -> None:
    """Makes ``good`` the checkpoint BackupAndRestore restores; moves the ``bad`` ones aside."""
    chief = os.path.join(backup_dir, "chief")
    moved = os.path.join(backup_dir, "corrupt")
    for prefix, reason in bad:
        os.makedirs(moved, exist_ok=True)
        for f in glob.glob(glob.escape(prefix) + ".*"):
            os.replace(f, os.path.join(moved, os.path.basename(f)))
        print(f"tfmf: warning: the checkpoint {prefix} cannot be restored ({reason}); "
              f"resuming from the previous one, {good} (epoch {done}); the unreadable files "
              f"were moved to {moved}", file=sys.stderr, flush=True)
    keep = [p for p in checkpoint_prefixes(chief)
            if _checkpoint_number(p) <= _checkpoint_number(good)]
    # With timestamps newer than last_preserved, TensorFlow's manager still rotates them.
    stamps = [os.path.getmtime(p + ".index") for p in keep]
    tf.compat.v1.train.update_checkpoint_state(
        chief, good, all_model_checkpoint_paths=keep, all_model_checkpoint_timestamps=stamps,
        last_preserved_timestamp=min(stamps) - 1.0)
