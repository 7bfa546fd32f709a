"""Keras models whose loss is a dict of named components, trained by ``fit()``.

A model subclasses :class:`ComponentLossModel`, declares its ``loss_components`` (``"loss"``,
the total that is minimised, first) and implements ``compute_losses(batch, training)``. Its
``train_step`` is the whole of tfmf's gradient loop::

    losses = compute_losses(batch)                    # {"loss", "data", "l2", ...}
    optimizer.minimize(losses["loss"], trainable_variables, tape=tape)

so precision and Horovod live in the optimizer (``LossScaleOptimizer`` scales the loss and
unscales the gradients; ``hvd.DistributedOptimizer`` averages them across ranks), and Keras'
``fit`` runs everything else: ``steps_per_execution``, callbacks, history, TensorBoard. All
components are averaged over the epoch in one vector tracker, so history and TensorBoard log
every one; ``test_step`` reports the same components on validation batches (``val_loss``, ...).

Cost: a compiled call of ``steps_per_execution`` steps adds, per step, one stack, one finite
check and two variable updates to ``compute_losses`` + ``minimize``; the logs dict is built
once per call. Measured against the hand-written loop this replaced, on the same step body
and in the same run (``python -m pipelines.benchmark speed-keras-loop``), the CPU time per
step is the same within noise (docs/BENCHMARKS.md).

Iterative estimators that are not gradient steps (ALS solves, Gibbs sweeps) subclass
:class:`SweepModel`: one ``fit`` step performs one sweep over the data, and the same callbacks,
checkpoints, early stopping and history apply.

Divergence: the first step whose total loss is non-finite is recorded (``first_bad_step``) so
:class:`tfmf.training.callbacks.DivergenceGuard` can name it even when several steps ran in one
compiled call. The trackers and that marker are kept out of Keras' attribute tracking: they
are not weights, are never checkpointed and never exported.
"""
from __future__ import annotations

import tensorflow as tf
import tf_keras


_NEVER = 2 ** 62  # the divergence marker's "no bad step yet"


class _Untracked:
    """A plain holder Keras does not look into (its contents are not weights)."""


class ComponentMeans(tf_keras.metrics.Metric):
    """Epoch means of all loss components in one vector whose last entry counts the steps:
    one update a step, not two per component (a train step of MF is ~1 ms of small ops on a
    CPU, so each op counts)."""

    def __init__(self, names: tuple[str, ...], **kwargs):
        super().__init__(name="loss_components", **kwargs)
        self.names = tuple(names)
        self.sums = self.add_weight("sums", shape=(len(self.names) + 1,), initializer="zeros")

    def update_state(self, values: tf.Tensor, count=1.0) -> None:
        """Adds ``values`` (the sum of ``count`` steps' components) to the epoch sums."""
        self.sums.assign_add(tf.concat([values, tf.reshape(tf.cast(count, values.dtype), [1])],
                                       0))

    def result(self) -> tf.Tensor:
        return self.sums[:-1] / tf.maximum(self.sums[-1], 1.0)

    def reset_state(self) -> None:
        self.sums.assign(tf.zeros_like(self.sums))


class ComponentLossModel(tf_keras.Model):
    """Base of tfmf's gradient-trained Keras models (module docstring).

    Subclasses set ``loss_components`` (or pass ``loss_components=`` when the names depend on
    the instance) and implement :meth:`compute_losses`.
    """

    #: Names of the loss components ``compute_losses`` returns; "loss" is the total.
    loss_components: tuple[str, ...] = ("loss",)

    def __init__(self, *args, loss_components: tuple[str, ...] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        state = _Untracked()
        names = tuple(loss_components or type(self).loss_components)
        with tf.init_scope():
            state.means = ComponentMeans(names)
            state.first_bad = tf.Variable(_NEVER, dtype=tf.int64, trainable=False)
        self._tfmf = state

    def compute_losses(self, batch, training: bool = False) -> dict[str, tf.Tensor]:
        """The loss components of a batch (float32 scalars keyed by ``loss_components``)."""
        raise NotImplementedError

    @property
    def metrics(self):
        # Keras resets these at every epoch start, so logs are epoch means.
        return [self._tfmf.means] + super().metrics

    @property
    def first_bad_step(self) -> int:
        """0-based global step of the first non-finite total loss (-1: none)."""
        bad = int(self._tfmf.first_bad.numpy())
        return -1 if bad == _NEVER else bad

    def reset_divergence(self) -> None:
        self._tfmf.first_bad.assign(_NEVER)

    def record(self, losses: dict, step) -> dict[str, tf.Tensor]:
        """Updates the trackers and the divergence marker; returns the logs of this step."""
        values, bad_at = self.step_values(losses, step)
        self._add(values, bad_at, 1.0)
        return self.epoch_logs()

    def step_values(self, losses: dict, step) -> tuple[tf.Tensor, tf.Tensor]:
        """(the components stacked in ``loss_components`` order, ``step`` if the watched one
        is not finite else "never"). The marker watches the first component (``loss``; a
        Gibbs sweep's train ``rmse``)."""
        values = tf.stack([tf.cast(losses[name], tf.float32) for name in self._tfmf.means.names])
        return values, tf.where(tf.math.is_finite(values[0]), _NEVER, tf.cast(step, tf.int64))

    def _add(self, values, bad_at, count) -> None:
        """Adds ``count`` steps' summed ``values`` to the epoch sums; the marker keeps the first
        bad step (a minimum: "never" is its reset value)."""
        self._tfmf.means.update_state(values, count)
        marker = self._tfmf.first_bad
        marker.assign(tf.minimum(marker, bad_at))

    def epoch_logs(self) -> dict[str, tf.Tensor]:
        """The epoch means so far, keyed by component name (what Keras hands callbacks)."""
        means = self._tfmf.means
        return dict(zip(means.names, tf.unstack(means.result())))

    def minimize_step(self, batch) -> dict[str, tf.Tensor]:
        """One optimizer step on ``batch``; returns its loss components."""
        with tf.GradientTape() as tape:
            losses = self.compute_losses(batch, training=True)
            loss = tf.cast(losses["loss"], tf.float32)
        self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
        return losses

    def train_step(self, batch):
        step = self.optimizer.iterations.read_value()
        return self.record(self.minimize_step(batch), step)

    def test_step(self, batch):
        return self.record(self.compute_losses(batch, training=False), -1)

    def make_train_function(self, force: bool = False):
        """Keras' multi-step train function, with the step traced once instead of twice.

        Keras runs ``for _ in tf.range(steps_per_execution): outputs = step(iterator)`` with
        ``outputs`` first bound inside the loop, so AutoGraph traces the whole train step
        twice (once to learn the loop's variables) -- the costliest part of a short fit. Here
        the step is a ``tf.function`` of its own, called once before the loop and
        ``steps_per_execution - 1`` times inside it: one trace, the same steps and updates,
        and Keras' execution variable (truncated at an epoch's end) is read at every call.
        """
        spe = self._steps_per_execution
        plain = (spe is None or self.run_eagerly or self._cluster_coordinator is not None
                 or self.autotune_steps_per_execution or self._distribution_strategy is not None
                 or int(spe.numpy()) == 1)
        if plain:
            return super().make_train_function(force)
        if self.train_function is not None and not force:
            return self.train_function

        if type(self).train_step is not ComponentLossModel.train_step:
            # A subclass's own step runs in Keras' loop (step inlined in the loop body): RecVAE's
            # step (two conditionals, the prior's encoder) was not bitwise repeatable as a
            # nested function called before and inside the loop; Keras' loop is.
            return super().make_train_function(force)

        @tf.function(reduce_retracing=True)
        def one_step(iterator):
            step = self.optimizer.iterations.read_value()
            return self.step_values(self.minimize_step(next(iterator)), step)

        @tf.function(reduce_retracing=True)
        def train_function(iterator):
            # Sums and the first bad step are carried through the loop as tensors and written
            # to the trackers once per call: no variable update per step.
            n = tf.identity(spe)  # this call's steps (Keras truncates it at an epoch's end)
            total, bad = one_step(iterator)
            for _ in tf.range(n - 1):
                values, bad_i = one_step(iterator)
                total, bad = total + values, tf.minimum(bad, bad_i)
            self._add(total, bad, tf.cast(n, tf.float32))
            self._train_counter.assign_add(tf.cast(n, self._train_counter.dtype))
            # The logs once per call, not once per step: they are epoch means anyway.
            return self.epoch_logs()

        self.train_tf_function = self.train_function = train_function
        return train_function


class SweepModel(ComponentLossModel):
    """An estimator whose ``fit`` step is one sweep (ALS solves, a Gibbs sweep).

    Compiled with ``run_eagerly=True`` and fitted on :func:`sweep_dataset` (one element per
    epoch), so a sweep may mix TensorFlow with NumPy/SciPy. Subclasses implement :meth:`sweep`.
    The optimizer Keras requires at ``compile`` is never applied.
    """

    sweeps = True
    #: Whether the sweep state is all in variables (a BackupAndRestore checkpoint resumes it).
    resumable: bool = True
    #: Epochs before which early stopping does not count (e.g. Gibbs burn-in).
    early_stopping_start: int = 0

    def sweep(self, epoch: int) -> dict[str, float]:
        """Runs sweep ``epoch`` (0-based); returns every name of ``loss_components``."""
        raise NotImplementedError

    def train_step(self, batch):
        step = self.optimizer.iterations.read_value()
        losses = self.sweep(int(step))
        self.optimizer.iterations.assign_add(1)  # one "step" per sweep: epoch == iterations
        return self.record(losses, step)


def sweep_dataset() -> tf.data.Dataset:
    """One dummy element: a SweepModel's epoch is a single step."""
    return tf.data.Dataset.from_tensors(tf.zeros([1], tf.float32))
