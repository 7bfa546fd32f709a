"""The one training loop every gradient-trained model uses.

A model is any ``tf_keras.Model`` with ``compute_loss(batch, training) -> dict`` whose
``"loss"`` entry is minimised and whose other entries (``data``, ``l2``, ``gramian``, ``kl``...)
are logged separately per epoch. The Trainer owns: optimizer + schedule, precision (loss
scaling), Horovod (gradient averaging, broadcast, metric averaging, rank-0 side effects),
NaN stop, checkpoints and resume, history CSV, TensorBoard scalars, progress bar and early
stopping.
"""
from __future__ import annotations

import csv
import io
import os
import random
import time
from typing import Callable, Iterable

import numpy as np
import tensorflow as tf
import tf_keras

from tfmf import distributed
from tfmf.config import TrainConfig
from tfmf.errors import TrainingDiverged
from tfmf.training.optimizers import current_lr, make_optimizer
from tfmf.training.precision import loss_scale_variables, wrap_optimizer


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seeds Python, NumPy and TensorFlow; optionally enables TF op determinism."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    tf_keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def _all_finite(variables) -> bool:
    """True when every floating-point variable holds only finite values."""
    return all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in variables
               if v.dtype.is_floating)


class Callback:
    """Hook called by the Trainer at the end of every epoch (rank 0 and others alike)."""

    def on_epoch_end(self, trainer: "Trainer", epoch: int, logs: dict) -> None:
        """``epoch`` is 1-based; set ``trainer.stop_training = True`` to stop."""


class Trainer:
    """Fits a model with ``compute_loss`` using a :class:`TrainConfig`.

    Args:
      config: training settings.
      run_dir: where checkpoints (``checkpoints/``), ``history.csv`` and TensorBoard logs
        (``tensorboard/``) go; None keeps everything in memory.
      callbacks: :class:`Callback` instances.
    """

    def __init__(self, config: TrainConfig, run_dir: str | None = None,
                 callbacks: Iterable[Callback] = ()):
        self.config = config
        self.run_dir = run_dir
        self.callbacks = list(callbacks)
        self.history: list[dict] = []
        self.stop_training = False
        self.optimizer = None
        self._best: float | None = None  # early stopping: best monitored value so far
        self._bad_epochs = 0

    # ------------------------------------------------------------------ public
    def fit(self, model: tf_keras.Model, make_dataset: Callable[[int], tf.data.Dataset], *,
            steps_per_epoch: int, validation_fn: Callable[[], dict] | None = None,
            monitor: str | None = None, mode: str = "min", resume: bool = False) -> list[dict]:
        """Trains ``model`` for ``config.epochs`` epochs.

        Args:
          model: a Keras model with ``compute_loss(batch, training)``.
          make_dataset: ``epoch -> tf.data.Dataset`` for this rank (seeded by epoch so a
            resumed run replays the same order).
          steps_per_epoch: batches per epoch on this rank (for schedules and progress).
          validation_fn: called after each epoch; returns metrics (e.g. ``{"val_rmse": ..}``).
          monitor: history key for early stopping (default: first validation metric).
          mode: "min" or "max" for ``monitor``.
          resume: restore the latest checkpoint in ``run_dir`` and continue from its epoch.

        Returns:
          The history: one dict per epoch (train loss components, validation metrics, lr, time).

        Raises:
          TrainingDiverged: the loss became NaN/inf (the last good checkpoint is kept).
        """
        cfg = self.config
        distributed.init()
        world = distributed.size()
        lr_scale = float(world) if cfg.scale_lr_by_world_size else 1.0
        optimizer = wrap_optimizer(make_optimizer(cfg, steps_per_epoch, lr_scale),
                                   cfg.precision, cfg.initial_loss_scale)
        self.optimizer = optimizer
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_var)
        manager = None
        if self.run_dir is not None:
            manager = tf.train.CheckpointManager(
                ckpt, os.path.join(self.run_dir, "checkpoints"), max_to_keep=cfg.keep_checkpoints)
        start_epoch = 0
        if resume:
            latest = manager.latest_checkpoint if manager is not None else None
            # Only rank 0 writes checkpoints; other ranks (possibly on hosts without the
            # run directory) take rank 0's state from the broadcast after the first step.
            if latest is None and distributed.is_chief():
                raise FileNotFoundError(
                    f"nothing to resume: no checkpoint under {self.run_dir}/checkpoints")
            if latest is not None:
                # expect_partial: slot variables are created lazily at the first step.
                ckpt.restore(latest).expect_partial()
            start_epoch = distributed.broadcast_object(int(epoch_var.numpy()), "tfmf_start_epoch")
            epoch_var.assign(start_epoch)
            self.history = [h for h in self._read_history() if h["epoch"] <= start_epoch]

        train_step, loss_names = self.make_train_step(model, optimizer)
        run_steps = self.make_multi_step(train_step, loss_names)
        writer = self.summary_writer()
        synced = not distributed.is_distributed()
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            sums: dict[str, float] = {}
            n_steps = 0
            dataset = make_dataset(epoch)
            if distributed.is_distributed():
                # A rank with an extra batch would wait forever in its allreduce.
                dataset = dataset.take(steps_per_epoch)
            iterator = iter(dataset)
            bar = self._progress(steps_per_epoch, epoch)
            while True:
                if n_steps == 0:
                    # Each epoch's first step runs on its own: it creates the optimizer slots and
                    # fixes the loss names, and a resumed run splits the epoch into the same
                    # calls as an uninterrupted one (bitwise-equal results under determinism).
                    batch = iterator.get_next_as_optional()
                    if not batch.has_value():
                        break
                    losses, requested = train_step(batch.get_value())[None], 1
                    if not synced:
                        # Under Horovod every rank continues from rank 0's exact state (weights,
                        # non-trainable state such as biases and anneal counters, iterations,
                        # slots, loss scale).
                        distributed.broadcast_variables(model.variables)
                        distributed.broadcast_variables(
                            optimizer.variables() + loss_scale_variables(optimizer))
                        synced = True
                else:
                    requested = cfg.steps_per_execution
                    losses = run_steps(iterator, tf.constant(requested))
                rows = losses.numpy()
                total = rows[:, loss_names.index("loss")]
                if not np.isfinite(total).all():
                    bad = int(np.argmin(np.isfinite(total)))
                    raise TrainingDiverged(epoch + 1, n_steps + bad + 1, float(total[bad]))
                n_steps += len(rows)
                for k, v in zip(loss_names, rows.astype(np.float64).sum(axis=0).tolist()):
                    sums[k] = sums.get(k, 0.0) + v
                if bar is not None:
                    bar.update(len(rows))
                if len(rows) < requested:  # the iterator ran out: the epoch is over
                    break
            if bar is not None:
                bar.close()
            if distributed.is_distributed() and n_steps != steps_per_epoch:
                raise RuntimeError(
                    f"rank {distributed.rank()} ran {n_steps} steps in epoch {epoch + 1}, expected "
                    f"{steps_per_epoch}: every rank must get the same number of batches "
                    "(see tfmf.data.pipelines.steps_per_epoch)")
            if not _all_finite(model.trainable_variables):
                # The epoch's last update can overflow the weights after a finite loss: stop
                # before they reach a checkpoint, the saved model or the metrics.
                raise TrainingDiverged(epoch + 1, n_steps, float("nan"))
            logs = distributed.allreduce_mean({k: v / max(1, n_steps) for k, v in sums.items()})
            logs["steps"] = n_steps
            logs["lr"] = current_lr(optimizer)
            if validation_fn is not None:
                # Computed once on rank 0 (the weights are identical everywhere) and broadcast,
                # so early stopping decides alike on all ranks.
                val = validation_fn() if distributed.is_chief() else None
                logs.update(distributed.broadcast_object(val, "tfmf_validation"))
            logs["seconds"] = time.perf_counter() - t0
            row = {"epoch": epoch + 1, **logs}
            self.record_epoch(row, writer)
            epoch_var.assign(epoch + 1)
            if manager is not None and distributed.is_chief() and (
                    (cfg.checkpoint_every and (epoch + 1) % cfg.checkpoint_every == 0)
                    or epoch + 1 == cfg.epochs):
                # History first: a kill between the two leaves a history row the resumed run
                # drops and redoes, never a checkpoint whose history row is lost.
                self.write_history()
                manager.save(checkpoint_number=epoch + 1)
            if self.after_epoch(row, monitor=monitor, mode=mode,
                                validated=validation_fn is not None):
                break
        self.finish(writer)
        return self.history

    # ------------------------------------------------------------------ internals
    def make_train_step(self, model, optimizer):
        """The compiled step: ``batch -> float32 [n_components]`` plus the component names.

        Public so benchmarks time exactly the step ``fit`` runs.
        """
        scaled = isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer)
        sparse_as_dense = self.config.sparse_as_dense

        names: list[str] = []  # loss component names, fixed at the first trace

        # reduce_retracing: SparseTensor batches vary in nnz; one trace serves them all.
        @tf.function(reduce_retracing=True)
        def train_step(batch):
            with tf.GradientTape() as tape:
                losses = model.compute_loss(batch, training=True)
                loss = tf.cast(losses["loss"], tf.float32)
                target = optimizer.get_scaled_loss(loss) if scaled else loss
            # Order for mixed_float16: scale -> gradient (allreduced inside) -> unscale -> apply.
            tape = distributed.wrap_tape(tape, sparse_as_dense)
            variables = model.trainable_variables
            grads = tape.gradient(target, variables)
            if scaled:
                grads = optimizer.get_unscaled_gradients(grads)
            optimizer.apply_gradients(
                [(g, v) for g, v in zip(grads, variables) if g is not None])
            if not names:
                names.extend(sorted(losses))
            # One stacked vector: a single device-to-host copy per step, not one per component.
            return tf.stack([tf.cast(losses[k], tf.float32) for k in names])

        return train_step, names

    @staticmethod
    def make_multi_step(train_step, loss_names: list[str]):
        """``(iterator, n) -> float32 [m, n_components]``: up to ``n`` steps in one call.

        Runs ``train_step`` on the iterator's next batches inside one ``tf.function`` (fewer
        Python round trips and host copies; the same updates), stopping early when the
        iterator is exhausted (``m < n``). Traced once: ``n`` is a tensor and every epoch's
        iterator has the same element spec.
        """

        @tf.function
        def run_steps(iterator, n):
            out = tf.TensorArray(tf.float32, size=0, dynamic_size=True,
                                 element_shape=tf.TensorShape([len(loss_names)]))
            for i in tf.range(n):
                batch = iterator.get_next_as_optional()
                if not batch.has_value():
                    break
                out = out.write(i, train_step(batch.get_value()))
            return out.stack()

        return run_steps

    def _progress(self, total: int, epoch: int):
        """A tqdm bar advanced by the steps of each call (None unless verbose == 1, rank 0)."""
        if self.config.verbose != 1 or not distributed.is_chief():
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=f"epoch {epoch + 1}/{self.config.epochs}",
                    leave=False, unit="step", dynamic_ncols=True)

    # The epoch bookkeeping below is public so closed-form and sampling fits (ALS, Gibbs)
    # report, call back and stop exactly like gradient-trained ones.
    def record_epoch(self, row: dict, writer) -> None:
        """Appends an epoch's row to the history and logs it (console, TensorBoard)."""
        self.history.append(row)
        self.log_epoch(row, writer)

    def after_epoch(self, row: dict, *, monitor: str | None = None, mode: str = "min",
                    validated: bool = False) -> bool:
        """Runs the callbacks and early stopping for a recorded epoch.

        Args:
          row: the epoch's history row (``epoch`` 1-based).
          monitor: key for early stopping (default: the first ``val_`` key of the row).
          mode: "min" or "max".
          validated: whether the row carries validation metrics (early stopping needs them).

        Returns:
          True when training should stop (on every rank alike).
        """
        for cb in self.callbacks:
            cb.on_epoch_end(self, row["epoch"], row)
        if self.config.early_stopping_patience is not None and validated:
            key = monitor or next((k for k in row if k.startswith("val_")), None)
            cur = row.get(key)
            if cur is not None:
                best = self._best
                if best is None or (cur < best if mode == "min" else cur > best):
                    self._best, self._bad_epochs = cur, 0
                else:
                    self._bad_epochs += 1
                if self._bad_epochs >= self.config.early_stopping_patience:
                    self.stop_training = True
        # A callback may stop one rank only; the others must not wait for it.
        self.stop_training = distributed.any_rank(self.stop_training)
        return self.stop_training

    def finish(self, writer) -> None:
        """Flushes TensorBoard and writes ``history.csv`` (rank 0, with a run_dir)."""
        if writer is not None:
            writer.flush()
        if self.run_dir is not None and distributed.is_chief():
            self.write_history()

    def summary_writer(self):
        """TensorBoard writer under ``run_dir/tensorboard`` (rank 0 only; None otherwise)."""
        if self.run_dir is None or not distributed.is_chief():
            return None
        return tf.summary.create_file_writer(os.path.join(self.run_dir, "tensorboard"))

    def log_epoch(self, row: dict, writer) -> None:
        """Writes one epoch's scalars to TensorBoard and, if verbose, a console line."""
        if not distributed.is_chief():
            return
        if writer is not None:
            with writer.as_default(step=row["epoch"]):
                for k, v in row.items():
                    if k != "epoch" and isinstance(v, (int, float)):
                        tf.summary.scalar(k, v)
        if self.config.verbose >= 1:
            parts = [f"{k}={v:.4f}" for k, v in row.items()
                     if k not in ("epoch", "steps") and isinstance(v, float)]
            print(f"epoch {row['epoch']}/{self.config.epochs}: " + " ".join(parts), flush=True)

    def _history_path(self) -> str:
        return os.path.join(self.run_dir, "history.csv")

    def write_history(self) -> None:
        """history.csv, replaced atomically so a kill never leaves half a file."""
        keys: list[str] = []
        for row in self.history:
            keys += [k for k in row if k not in keys]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(self.history)
        os.makedirs(self.run_dir, exist_ok=True)
        tmp = self._history_path() + ".tmp"
        with open(tmp, "w", newline="") as fh:
            fh.write(buf.getvalue())
        os.replace(tmp, self._history_path())

    def _read_history(self) -> list[dict]:
        if self.run_dir is None or not os.path.exists(self._history_path()):
            return []
        with open(self._history_path(), newline="") as fh:
            rows = list(csv.DictReader(fh))
        out = []
        for r in rows:
            conv = {}
            for k, v in r.items():
                if v in ("", None):
                    continue
                conv[k] = int(v) if k in ("epoch", "steps") else float(v)
            out.append(conv)
        return out
