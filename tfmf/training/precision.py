"""Precision policies: float32, mixed_float16 (with dynamic loss scaling), mixed_bfloat16.

Rules every model follows (MF, biased MF and Mult-VAE do):

* Variables stay float32; layers compute in the policy's compute dtype (float16/bfloat16).
* A sparse input is cast with :func:`cast_sparse` to the compute dtype before it meets a
  kernel (``sparse_dense_matmul`` needs both operands in one dtype).
* Logits are cast to float32 before softmax / log-likelihood; losses, regularisers and metrics
  are computed in float32 (``ComponentLossModel`` also casts every loss component to float32).
* mixed_float16 wraps the optimizer in a dynamic ``LossScaleOptimizer`` (its ``minimize`` scales
  the loss, takes gradients, unscales, applies; overflowing steps are skipped and the scale
  halves).
  bfloat16 has float32's exponent range, so it needs no loss scaling.
"""
from __future__ import annotations

import contextlib

import tensorflow as tf
import tf_keras

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


@contextlib.contextmanager
def precision_policy(name: str):
    """Sets the Keras global dtype policy while a model is built, then restores it.

    Layers capture the policy at construction, so only model building needs the scope.
    """
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {name!r}")
    mp = tf_keras.mixed_precision
    previous = mp.global_policy()
    mp.set_global_policy(name)
    try:
        yield mp.Policy(name)
    finally:
        mp.set_global_policy(previous)


def compute_dtype(name: str) -> tf.DType:
    """The dtype layers compute in under policy ``name``."""
    return {"float32": tf.float32, "mixed_float16": tf.float16,
            "mixed_bfloat16": tf.bfloat16}[name]


def wrap_optimizer(optimizer, precision: str, initial_scale: float = 2.0 ** 15):
    """Wraps with dynamic loss scaling for float16 (bfloat16 has float32's range: no need)."""
    if precision != "mixed_float16":
        return optimizer
    return tf_keras.mixed_precision.LossScaleOptimizer(
        optimizer, dynamic=True, initial_scale=initial_scale)


def loss_scale_variables(optimizer) -> list[tf.Variable]:
    """The dynamic loss-scale state (current scale, good-step counter); [] when unscaled."""
    state = getattr(optimizer, "_loss_scale", None)
    if not isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer) or not hasattr(
            state, "_weights"):
        return []
    return list(state._weights.values())


def cast_sparse(x: tf.SparseTensor, dtype) -> tf.SparseTensor:
    """Casts a SparseTensor's values (a float16 SparseTensor must meet float16 kernels)."""
    return tf.SparseTensor(x.indices, tf.cast(x.values, dtype), x.dense_shape)
