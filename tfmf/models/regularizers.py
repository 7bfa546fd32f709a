"""Regularizers of factor models as pure functions of tensors (each unit-tested vs NumPy).

Every function returns a float32 scalar whatever the inputs' dtype: under a mixed-precision
policy embeddings are gathered in float16/bfloat16, but penalties are summed in float32 so
small squared norms do not underflow.
"""
from __future__ import annotations

import tensorflow as tf


def _f32(x) -> tf.Tensor:
    return tf.cast(x, tf.float32)


def _sum_sq(x: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(tf.square(_f32(x)))


def batch_l2(*rows: tf.Tensor) -> tf.Tensor:
    """Per-batch weighted L2: ``sum_t mean_b ||rows_t[b]||^2``.

    Applied to the embedding rows gathered for a batch (e.g. ``batch_l2(u_rows, v_rows)``), a row
    is penalised once per occurrence in the batch, i.e. in proportion to its frequency in the
    data (the classic SGD-MF regularizer, Koren et al. 2009). Its gradient reaches only the rows
    in the batch, so embedding gradients stay sparse (``tf.IndexedSlices``).

    Args:
      *rows: tensors [b, ...] of gathered rows (biases may be [b] or [b, 1]).

    Returns:
      float32 scalar (0 if no tensors are given).
    """
    total = tf.constant(0.0, tf.float32)
    for r in rows:
        r = _f32(r)
        b = tf.maximum(tf.cast(tf.shape(r)[0], tf.float32), 1.0)
        total += tf.reduce_sum(tf.square(r)) / b
    return total


def frobenius_l2(*tables: tf.Tensor) -> tf.Tensor:
    """Row-averaged Frobenius norm: ``sum_t ||T_t||_F^2 / n_rows(T_t)``.

    ``frobenius_l2(U, V)`` is the JAX seed's ``||U||^2 / n_users + ||V||^2 / n_items``: every row
    is penalised equally whatever its frequency, and the gradient is dense over whole tables.

    Args:
      *tables: full parameter tables [n, ...].

    Returns:
      float32 scalar.
    """
    total = tf.constant(0.0, tf.float32)
    for t in tables:
        n = tf.maximum(tf.cast(tf.shape(t)[0], tf.float32), 1.0)
        total += _sum_sq(t) / n
    return total


def gramian(U: tf.Tensor, V: tf.Tensor) -> tf.Tensor:
    """Global orthogonality / "unobserved pairs" penalty of Krichene et al. (2018).

    ``sum((U^T U) * (V^T V)) / (N * M)`` equals the mean over *all* N x M user-item pairs of the
    squared predicted score ``(u . v)^2``, computed in O((N + M) d^2) through the two d x d
    Gramians instead of the N x M score matrix. It pulls predictions of unobserved pairs toward
    zero (for explicit data: toward the bias terms). Its gradient is dense over both tables.

    Args:
      U: [N, d] user factors.
      V: [M, d] item factors.

    Returns:
      float32 scalar.
    """
    U, V = _f32(U), _f32(V)
    n = tf.maximum(tf.cast(tf.shape(U)[0], tf.float32), 1.0)
    m = tf.maximum(tf.cast(tf.shape(V)[0], tf.float32), 1.0)
    gu = tf.matmul(U, U, transpose_a=True)
    gv = tf.matmul(V, V, transpose_a=True)
    return tf.reduce_sum(gu * gv) / (n * m)
