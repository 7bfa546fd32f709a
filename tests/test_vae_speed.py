"""Mult-VAE's fused output layer + multinomial NLL, and the speed-vae suite's PyTorch peer."""
import numpy as np
import pytest
import scipy.sparse as sp

import tfmf  # noqa: F401  (before TensorFlow)
import tensorflow as tf

from tfmf.models.vae import MultVAEConfig, MultVAEModel, multinomial_nll


def _case(seed=0, b=7, d=5, n=40):
    rng = np.random.default_rng(seed)
    h = tf.constant(rng.normal(size=(b, d)), tf.float32)
    kernel = tf.Variable(rng.normal(size=(d, n)), dtype=tf.float32)
    bias = tf.Variable(rng.normal(size=(n,)), dtype=tf.float32)
    dense = (rng.random((b, n)) < 0.2) * rng.integers(1, 3, (b, n))
    dense[3] = 0  # an empty row contributes nothing
    return h, kernel, bias, tf.sparse.from_dense(tf.constant(dense, tf.float32))


def test_fused_nll_and_its_gradients_equal_log_softmax_plus_gather():
    h, kernel, bias, x = _case()
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(h)
        ref = -tf.reduce_sum(tf.gather_nd(tf.nn.log_softmax(h @ kernel + bias), x.indices)
                             * x.values) * 1.7
        fused = multinomial_nll(h, kernel, bias, x) * 1.7
    np.testing.assert_allclose(float(fused), float(ref), rtol=1e-6)
    for a, b in zip(tape.gradient(ref, [h, kernel, bias]), tape.gradient(fused, [h, kernel, bias])):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-5)


def test_fused_nll_is_stable_for_large_logits_and_bfloat16_inputs():
    h, kernel, bias, x = _case(1)
    big = multinomial_nll(h * 300.0, kernel, bias, x)  # logits ~1e3: exp would overflow
    assert np.isfinite(float(big))
    ref = float(multinomial_nll(h, kernel, bias, x))
    low = multinomial_nll(tf.cast(h, tf.bfloat16), tf.cast(kernel, tf.bfloat16),
                          tf.cast(bias, tf.bfloat16), x)
    assert low.dtype == tf.float32 and abs(float(low) - ref) < 0.02 * abs(ref)


def test_model_loss_uses_the_fused_nll_and_no_l2_pass_at_lam_zero():
    h, kernel, bias, x = _case(2, n=30)
    model = MultVAEModel(30, MultVAEConfig(dims=[8, 4], dropout=0.0, lam=0.0), seed=0)
    model(x, training=False)
    out = model.compute_losses({"items": x}, training=False)
    logits = model(x, training=False)
    ref = -tf.reduce_sum(tf.gather_nd(tf.nn.log_softmax(logits), x.indices) * x.values) / 7.0
    np.testing.assert_allclose(float(out["nll"]), float(ref), rtol=1e-5)
    assert float(out["l2"]) == 0.0
    decayed = MultVAEModel(30, MultVAEConfig(dims=[8, 4], lam=0.5), seed=0)
    decayed(x, training=False)
    kernels = [decayed.encoder_in.kernel] + [v.kernel for v in decayed.encoder_layers
                                             + decayed.decoder_layers]
    want = 0.5 * sum(float(tf.reduce_sum(k ** 2)) for k in kernels)
    assert float(decayed.compute_losses({"items": x})["l2"]) == pytest.approx(want, rel=1e-5)


@pytest.mark.slow
def test_cornac_peer_learns_and_scores_fold_in_rows_in_tfmf_item_order():
    pytest.importorskip("cornac")
    pytest.importorskip("torch")
    from pipelines.bench_vae import cornac_epoch, cornac_folds
    from pipelines.benchmark import run_isolated

    # Two user groups on disjoint item halves; item 0 never appears in training, so Cornac's
    # columns are a permutation of a subset of tfmf's items (the mapping must be undone).
    rng = np.random.default_rng(0)
    n_users, n_items = 120, 40
    rows, cols = [], []
    for u in range(n_users):
        half = np.arange(1, n_items // 2) if u % 2 == 0 else np.arange(n_items // 2, n_items)
        chosen = rng.choice(half, 8, replace=False)
        rows += [u] * 8
        cols += list(chosen)
    train = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), (n_users, n_items))
    fold_in = sp.csr_matrix((np.ones(3, np.float32), ([0, 0, 0], [1, 2, 3])), (1, n_items))
    params = {"dims": [16, 4], "activation": "tanh", "batch_size": 20, "learning_rate": 0.01,
              "beta": 0.2, "seed": 0, "epochs": 40}
    (res,) = run_isolated(cornac_folds, [(train, fold_in)], params)
    s = res["scores"][0]
    assert s.shape == (n_items,) and res["fit_s"] > 0
    assert s[4:20].mean() > s[20:].mean()  # group 0's unseen items outrank group 1's
    assert s[0] < s[1:].min()  # never-trained item last
    ep = run_isolated(cornac_epoch, train, {**params, "epochs": 1})
    assert ep["n_users"] == n_users and ep["users_per_s"] > 0
