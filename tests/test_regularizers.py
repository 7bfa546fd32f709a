"""Regularizers of tfmf.models.regularizers against NumPy, and where their gradients go."""
import tfmf  # noqa: F401  (Keras 2 before TensorFlow)

import numpy as np
import pytest
import tensorflow as tf

from tfmf.models import regularizers


@pytest.fixture
def tables():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((7, 3)).astype(np.float32),
            rng.standard_normal((5, 3)).astype(np.float32))


def test_batch_l2_matches_numpy(tables):
    U, V = tables
    u_rows, v_rows = U[[0, 2, 2, 6]], V[[1, 1, 4, 0]]
    bias = np.array([0.5, -1.0, 2.0, 0.0], np.float32)  # 1-D rows (biases) are allowed
    want = ((u_rows ** 2).sum(1).mean() + (v_rows ** 2).sum(1).mean() + (bias ** 2).mean())
    got = regularizers.batch_l2(tf.constant(u_rows), tf.constant(v_rows), tf.constant(bias))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    assert regularizers.batch_l2().numpy() == 0.0


def test_frobenius_l2_matches_numpy(tables):
    U, V = tables
    want = (U ** 2).sum() / U.shape[0] + (V ** 2).sum() / V.shape[0]
    np.testing.assert_allclose(regularizers.frobenius_l2(U, V).numpy(), want, rtol=1e-6)


def test_gramian_is_mean_squared_score_over_all_pairs(tables):
    U, V = tables
    brute = ((U @ V.T) ** 2).mean()  # the N x M scores the Gramian form never materialises
    np.testing.assert_allclose(regularizers.gramian(U, V).numpy(), brute, rtol=1e-5)
    gu, gv = U.T @ U, V.T @ V
    np.testing.assert_allclose(regularizers.gramian(U, V).numpy(),
                               (gu * gv).sum() / (len(U) * len(V)), rtol=1e-5)


def test_low_precision_inputs_give_float32(tables):
    U, V = tables
    for fn, args in ((regularizers.batch_l2, (U, V)), (regularizers.frobenius_l2, (U, V)),
                     (regularizers.gramian, (U, V))):
        out = fn(*(tf.constant(a, tf.float16) for a in args))
        assert out.dtype == tf.float32
        np.testing.assert_allclose(out.numpy(), fn(*args).numpy(), rtol=2e-3)


def test_batch_l2_gradient_reaches_only_batch_rows(tables):
    U, _ = tables
    var = tf.Variable(U)
    idx = tf.constant([1, 4, 4])
    with tf.GradientTape() as tape:
        loss = regularizers.batch_l2(tf.gather(var, idx))
    g = tape.gradient(loss, var)
    assert isinstance(g, tf.IndexedSlices)
    assert set(g.indices.numpy().tolist()) == {1, 4}
    dense = tf.convert_to_tensor(g).numpy()
    untouched = [r for r in range(len(U)) if r not in (1, 4)]
    assert not dense[untouched].any()
    # d/du mean_b ||u_b||^2 = 2 u * count / b
    np.testing.assert_allclose(dense[4], 2 * U[4] * 2 / 3, rtol=1e-6)
    np.testing.assert_allclose(dense[1], 2 * U[1] / 3, rtol=1e-6)


def test_table_penalties_have_dense_gradients(tables):
    U, V = tables
    u, v = tf.Variable(U), tf.Variable(V)
    for fn in (regularizers.frobenius_l2, regularizers.gramian):
        with tf.GradientTape() as tape:
            loss = fn(u, v)
        gu, gv = tape.gradient(loss, [u, v])
        assert isinstance(gu, tf.Tensor) and np.all(np.abs(gu.numpy()).sum(1) > 0)
        assert np.all(np.abs(gv.numpy()).sum(1) > 0)
