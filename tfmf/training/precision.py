"""Precision policies: float32, mixed_float16 (with dynamic loss scaling), mixed_bfloat16."""
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


def cast_sparse(x: tf.SparseTensor, dtype) -> tf.SparseTensor:
    """Casts a SparseTensor's values (a float16 SparseTensor must meet float16 kernels)."""
    return tf.SparseTensor(x.indices, tf.cast(x.values, dtype), x.dense_shape)
