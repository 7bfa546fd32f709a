"""Optimizers and learning-rate schedules built from a TrainConfig."""
from __future__ import annotations

import math

import tensorflow as tf
import tf_keras

from tfmf.config import TrainConfig


@tf_keras.utils.register_keras_serializable(package="tfmf")
class StepDecay(tf_keras.optimizers.schedules.LearningRateSchedule):
    """``base_lr * decay_rate ** floor((1 + step) / decay_steps)`` (the JAX seed's step decay).

    Args:
      base_lr: learning rate at step 0.
      decay_rate: multiplicative factor per period (the seed's ``decay_pct``).
      decay_steps: period in steps.
    """

    def __init__(self, base_lr: float, decay_rate: float, decay_steps: int):
        self.base_lr, self.decay_rate, self.decay_steps = base_lr, decay_rate, decay_steps

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        return self.base_lr * tf.pow(self.decay_rate, tf.floor((1.0 + step) / self.decay_steps))

    def get_config(self):
        return {"base_lr": self.base_lr, "decay_rate": self.decay_rate,
                "decay_steps": self.decay_steps}


@tf_keras.utils.register_keras_serializable(package="tfmf")
class LinearWarmup(tf_keras.optimizers.schedules.LearningRateSchedule):
    """Linear ramp to the wrapped schedule over ``warmup_steps``.

    The multiplier goes from ``start_fraction + (1 - start_fraction) / warmup_steps`` at step 0
    to 1 at ``warmup_steps - 1``. With Horovod LR scaling, :func:`make_schedule` uses
    ``start_fraction = 1 / world_size``: the ramp starts at the single-worker LR and reaches
    the scaled LR (Goyal et al. 2017, "Accurate, Large Minibatch SGD").

    Args:
      schedule: float or schedule reached after the warm-up.
      warmup_steps: length of the ramp in steps.
      start_fraction: multiplier the ramp starts from (0: from ~0).
    """

    def __init__(self, schedule, warmup_steps: int, start_fraction: float = 0.0):
        self.schedule, self.warmup_steps = schedule, warmup_steps
        self.start_fraction = float(start_fraction)

    def __call__(self, step):
        step_f = tf.cast(step, tf.float32)
        after = self.schedule(step) if callable(self.schedule) else tf.constant(self.schedule)
        ramp = tf.minimum(1.0, (step_f + 1.0) / float(self.warmup_steps))
        frac = self.start_fraction + (1.0 - self.start_fraction) * ramp
        return tf.cast(after, tf.float32) * frac

    def get_config(self):
        return {"schedule": self.schedule, "warmup_steps": self.warmup_steps,
                "start_fraction": self.start_fraction}


def make_schedule(cfg: TrainConfig, steps_per_epoch: int, lr_scale: float = 1.0):
    """The learning rate (float or schedule) for ``cfg``; ``lr_scale`` multiplies it.

    With ``lr_scale > 1`` (Horovod ``scale_lr_by_world_size``) and ``warmup_steps``, the warm-up
    ramps from the unscaled LR to the scaled one.
    """
    lr = cfg.learning_rate * lr_scale
    total = max(1, cfg.epochs * max(1, steps_per_epoch))
    sched = tf_keras.optimizers.schedules
    if cfg.schedule == "constant":
        out = lr
    elif cfg.schedule == "step":
        out = StepDecay(lr, cfg.decay_rate, cfg.decay_steps)
    elif cfg.schedule == "exponential":
        out = sched.ExponentialDecay(lr, cfg.decay_steps, cfg.decay_rate)
    elif cfg.schedule == "inverse_time":
        out = sched.InverseTimeDecay(lr, cfg.decay_steps, cfg.decay_rate)
    elif cfg.schedule == "cosine":
        out = sched.CosineDecay(lr, total)
    elif cfg.schedule == "piecewise":
        out = sched.PiecewiseConstantDecay(list(cfg.boundaries), [v * lr_scale for v in cfg.values])
    else:  # validated by the config; kept for direct callers
        raise ValueError(f"unknown schedule {cfg.schedule!r}")
    if cfg.warmup_steps > 0:
        out = LinearWarmup(out, cfg.warmup_steps,
                           start_fraction=1.0 / lr_scale if lr_scale > 1.0 else 0.0)
    return out


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int, lr_scale: float = 1.0):
    """A tf_keras optimizer for ``cfg`` (clipping included).

    Legacy-namespace optimizers are used because their sparse (IndexedSlices) updates touch
    only the embedding rows in the batch, which matters for large item catalogues, and because
    Horovod 0.28's Keras integration targets them.
    """
    lr = make_schedule(cfg, steps_per_epoch, lr_scale)
    kw = {}
    if cfg.clipnorm is not None:
        kw["clipnorm"] = cfg.clipnorm
    if cfg.clipvalue is not None:
        kw["clipvalue"] = cfg.clipvalue
    opts = tf_keras.optimizers.legacy
    if cfg.optimizer == "sgd":
        return opts.SGD(learning_rate=lr, momentum=cfg.momentum, **kw)
    if cfg.optimizer == "adagrad":
        return opts.Adagrad(learning_rate=lr, **kw)
    if cfg.optimizer == "adam":
        return opts.Adam(learning_rate=lr, **kw)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def current_lr(optimizer) -> float:
    """The learning rate the optimizer uses at its current step."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    lr = inner._get_hyper("learning_rate") if hasattr(inner, "_get_hyper") else inner.learning_rate
    if isinstance(lr, tf_keras.optimizers.schedules.LearningRateSchedule):
        lr = lr(inner.iterations)
    val = float(tf.keras.backend.get_value(lr)) if not isinstance(lr, float) else lr
    return val if math.isfinite(val) else float("nan")


def create_slots(optimizer, variables) -> None:
    """Creates ``optimizer``'s slot variables for ``variables`` now (restored values fill them).

    Works through LossScaleOptimizer and Horovod's DistributedOptimizer (a subclass).
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if hasattr(inner, "_create_all_weights"):  # tf_keras legacy optimizers
        with tf.name_scope(inner._name):
            inner._create_all_weights(variables)
    elif hasattr(inner, "build"):
        inner.build(variables)
