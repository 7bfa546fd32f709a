"""Explicit matrix factorization (tfmf.models.mf): losses, sparse updates, fit, fold-in, I/O."""
import tfmf  # noqa: F401  (Keras 2 before TensorFlow)

import dataclasses
import os

import numpy as np
import pytest
import scipy.sparse as sp
import tensorflow as tf

from tfmf.config import TrainConfig, load_config
from tfmf.data.synthetic import explicit_low_rank
from tfmf.errors import ConfigError
from tfmf.models import regularizers
from tfmf.models.base import Recommender
from tfmf.models.mf import (MF, BiasedMatrixFactorization, BiasedMF, BiasedMFConfig,
                            MatrixFactorization, MFConfig, ridge_fold_in)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quiet(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=64, learning_rate=0.01, verbose=0, checkpoint_every=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def small():
    """A tiny explicit dataset on the 1..5 scale, split 90/10 (same id space)."""
    data, _ = explicit_low_rank(60, 40, rank=3, noise=0.3, density=0.3, seed=1,
                                rating_scale=(1.0, 5.0))
    mask = np.random.default_rng(0).random(data.nnz) < 0.9
    return data.subset(mask), data.subset(~mask)


def _batch(users, items, ratings):
    return {"user_id": tf.constant(users, tf.int32), "item_id": tf.constant(items, tf.int32),
            "rating": tf.constant(ratings, tf.float32)}


# ------------------------------------------------------------------------------ config
def test_config_validation_names_the_key():
    with pytest.raises(ConfigError) as e:
        BiasedMF(embedding_dim=0)
    assert e.value.key == "model.embedding_dim"
    with pytest.raises(ConfigError) as e:
        load_config(raw={"model": {"name": "biased_mf", "l2_mode": "dense"}})
    assert e.value.key == "model.l2_mode"
    with pytest.raises(ConfigError) as e:
        load_config(raw={"model": {"name": "mf", "bias_l2": 0.1}})  # plain MF has no biases
    assert e.value.key == "model.bias_l2"


@pytest.mark.parametrize("name", ["ml100k_biased_mf", "ml100k_mf", "sample_biased_mf"])
def test_shipped_configs_load(name):
    cfg = load_config(os.path.join(ROOT, "configs", f"{name}.yaml"))
    assert cfg.model_name in ("mf", "biased_mf")
    assert cfg.eval.metrics == ["rmse", "mae"]


# ------------------------------------------------------------------------------ losses
def test_loss_components_match_numpy():
    cfg = BiasedMFConfig(embedding_dim=3, l2=0.1, gramian=0.5, bias_l2=0.2)
    m = BiasedMatrixFactorization(6, 5, cfg, seed=3, global_mean=3.0)
    m.user_bias.embeddings.assign(np.arange(6, dtype=np.float32)[:, None] / 10)
    m.item_bias.embeddings.assign(-np.arange(5, dtype=np.float32)[:, None] / 10)
    users, items, r = [0, 5, 5, 2], [1, 1, 4, 3], [4.0, 2.0, 5.0, 1.0]
    out = {k: v.numpy() for k, v in m.compute_losses(_batch(users, items, r)).items()}
    U, V = m.user_factors.numpy(), m.item_factors.numpy()
    bu, bi = m.user_bias.embeddings.numpy()[:, 0], m.item_bias.embeddings.numpy()[:, 0]
    pred = 3.0 + bu[users] + bi[items] + (U[users] * V[items]).sum(1)
    np.testing.assert_allclose(out["data"], np.mean((pred - r) ** 2), rtol=1e-5)
    np.testing.assert_allclose(
        out["l2"], 0.1 * ((U[users] ** 2).sum(1).mean() + (V[items] ** 2).sum(1).mean()), rtol=1e-5)
    np.testing.assert_allclose(out["gramian"], 0.5 * ((U @ V.T) ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(out["bias_l2"], 0.2 * ((bu[users] ** 2).mean()
                                                      + (bi[items] ** 2).mean()), rtol=1e-5)
    np.testing.assert_allclose(out["loss"], out["data"] + out["l2"] + out["gramian"]
                               + out["bias_l2"], rtol=1e-6)


def test_frobenius_mode_penalises_whole_tables():
    m = MatrixFactorization(6, 5, MFConfig(embedding_dim=2, l2=0.3, l2_mode="frobenius"))
    out = m.compute_losses(_batch([0], [0], [1.0]))
    want = 0.3 * regularizers.frobenius_l2(m.user_factors, m.item_factors).numpy()
    np.testing.assert_allclose(out["l2"].numpy(), want, rtol=1e-6)


def test_huber_vs_mse():
    users, items, r = [0, 1, 2], [0, 1, 2], [5.0, 1.0, 3.2]
    losses = {}
    for kind in ("mse", "huber"):
        cfg = BiasedMFConfig(embedding_dim=2, l2=0.0, loss=kind, huber_delta=1.0)
        m = BiasedMatrixFactorization(3, 3, cfg, global_mean=3.0)
        m.user_embedding.embeddings.assign(np.zeros((3, 2), np.float32))  # prediction = 3.0
        losses[kind] = m.compute_losses(_batch(users, items, r))["data"].numpy()
    err = np.abs(np.array(r) - 3.0)  # 2.0, 2.0, 0.2
    np.testing.assert_allclose(losses["mse"], np.mean(err ** 2), rtol=1e-6)
    huber = np.where(err <= 1.0, 0.5 * err ** 2, err - 0.5)
    np.testing.assert_allclose(losses["huber"], np.mean(huber), rtol=1e-6)
    assert losses["huber"] < losses["mse"]  # outliers weigh linearly


def test_batch_mode_gradients_are_sparse_and_gramian_dense():
    def grads(cfg):
        m = BiasedMatrixFactorization(8, 6, cfg, global_mean=3.0)
        with tf.GradientTape() as tape:
            loss = m.compute_losses(_batch([1, 3], [2, 2], [4.0, 2.0]), training=True)["loss"]
        return dict(zip(["U", "V", "bu", "bi"], tape.gradient(
            loss, [m.user_factors, m.item_factors, m.user_bias.embeddings,
                   m.item_bias.embeddings])))

    g = grads(BiasedMFConfig(embedding_dim=2, l2=0.1, bias_l2=0.1))
    assert all(isinstance(x, tf.IndexedSlices) for x in g.values())
    assert set(g["U"].indices.numpy().tolist()) == {1, 3}
    assert set(g["V"].indices.numpy().tolist()) == {2}
    g = grads(BiasedMFConfig(embedding_dim=2, l2=0.1, gramian=1.0))
    assert not isinstance(g["U"], tf.IndexedSlices)  # documented: the Gramian is dense
    assert np.all(np.abs(g["U"].numpy()).sum(1) > 0)


# ------------------------------------------------------------------------------ training
@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "adam"])
def test_sparse_updates_leave_unseen_rows_untouched(small, optimizer):
    from tfmf.data.pipelines import rating_dataset, steps_per_epoch
    from tfmf.training.optimizers import make_optimizer

    train, _ = small
    train = train.subset(train.items != 7)  # item 7 never appears in a batch
    cfg = _quiet(optimizer=optimizer, epochs=1, clipnorm=1.0)
    mcfg = BiasedMFConfig(embedding_dim=4, l2=0.05, bias_l2=0.01)
    model = BiasedMatrixFactorization(train.n_users, train.n_items, mcfg, seed=0, global_mean=3.0)
    before = model.item_factors.numpy().copy()
    # Plain Keras: compile + fit on the public pipeline.
    model.compile(optimizer=make_optimizer(cfg, 1))
    model.fit(rating_dataset(train, cfg.batch_size, seed=0), epochs=1, verbose=0)
    after = model.item_factors.numpy()
    np.testing.assert_array_equal(after[7], before[7])  # random init, never in a batch
    assert not np.array_equal(after[0], before[0])


def test_rows_without_training_data_predict_biases_only(small):
    train, _ = small
    train = train.subset(train.items != 7)
    m = BiasedMF(embedding_dim=4, gramian=0.1, clip_predictions=False).fit(train, _quiet())
    assert not m.model.item_factors.numpy()[7].any()  # zeroed at build, stays zero
    users = np.arange(5)
    mu = float(m.model.global_mean.numpy())
    bu = m.model.user_bias.embeddings.numpy()[users, 0]
    np.testing.assert_allclose(m.predict(users, np.full(5, 7)), mu + bu, rtol=1e-6)


def test_history_logs_loss_components_and_validation(small):
    train, test = small
    model = BiasedMF(embedding_dim=4, l2=0.05, gramian=0.1, bias_l2=0.01)
    model.fit(train, _quiet(epochs=4), validation=test)
    assert len(model.history) == 4
    for row in model.history:
        for key in ("loss", "data", "l2", "gramian", "bias_l2", "val_rmse", "val_mae"):
            assert key in row and np.isfinite(row[key]), key
        assert row["gramian"] > 0 and row["l2"] > 0
        np.testing.assert_allclose(row["loss"], row["data"] + row["l2"] + row["gramian"]
                                   + row["bias_l2"], rtol=1e-4)
    assert model.history[-1]["data"] < model.history[0]["data"]
    assert model.history[-1]["val_rmse"] < model.history[0]["val_rmse"]


def test_recovers_low_rank_truth_to_noise_level():
    sigma = 0.5
    # ~216 training ratings per user: the least-squares excess error sigma^2 * d / n stays small.
    data, _ = explicit_low_rank(500, 300, rank=10, noise=sigma, density=0.8, seed=0)
    mask = np.random.default_rng(1).random(data.nnz) < 0.9
    train, test = data.subset(mask), data.subset(~mask)
    model = MF(embedding_dim=10, l2=0.01, init_stddev=0.3)
    model.fit(train, _quiet(epochs=10, batch_size=1024, learning_rate=0.01, schedule="cosine"))
    pred = model.predict(test.users, test.items)
    rmse = float(np.sqrt(np.mean((pred - test.values) ** 2)))
    assert rmse <= 1.05 * sigma, rmse


def test_mixed_precision_fit(small):
    train, test = small
    model = BiasedMF(embedding_dim=4)
    model.fit(train, _quiet(precision="mixed_float16"), validation=test)
    assert model.model.user_embedding.compute_dtype == "float16"
    pred = model.predict(test.users, test.items)
    assert pred.dtype == np.float32 and np.isfinite(pred).all()
    assert model.history[-1]["val_rmse"] < 1.5


# ------------------------------------------------------------------------------ inference
@pytest.fixture(scope="module")
def fitted(small):
    train, _ = small
    return BiasedMF(embedding_dim=4, clip_predictions=False).fit(train, _quiet(epochs=3))


def test_score_matches_predict_and_clipping(fitted, small):
    _, test = small
    users = np.array([0, 3, 5])
    s = fitted.score(users)
    assert s.shape == (3, fitted.n_items) and s.dtype == np.float32
    items = np.array([1, 2, 7])
    np.testing.assert_allclose(s[np.arange(3), items], fitted.predict(users, items), rtol=1e-5)
    clipped = BiasedMF(dataclasses.replace(fitted.config, clip_predictions=True))
    clipped.model, clipped.rating_scale = fitted.model, (1.0, 5.0)
    p = clipped.predict(test.users, test.items)
    assert p.min() >= 1.0 and p.max() <= 5.0


def test_save_load_round_trip(fitted, small, tmp_path):
    _, test = small
    fitted.save(tmp_path / "m")
    loaded = Recommender.load(tmp_path / "m")
    assert isinstance(loaded, BiasedMF) and loaded.rating_scale == fitted.rating_scale
    np.testing.assert_array_equal(loaded.predict(test.users, test.items),
                                  fitted.predict(test.users, test.items))
    np.testing.assert_array_equal(loaded.score(np.arange(5)), fitted.score(np.arange(5)))
    assert float(loaded.model.global_mean.numpy()) == float(fitted.model.global_mean.numpy())


def test_recommend_excludes_seen_items(fitted, small):
    train, _ = small
    users = np.arange(10)
    items, scores = fitted.recommend(users, k=fitted.n_items)
    seen = train.to_csr()
    for row, u in enumerate(users):
        rec = set(items[row][np.isfinite(scores[row])].tolist())
        assert rec.isdisjoint(seen[u].indices.tolist())
        assert len(rec) == fitted.n_items - seen[u].nnz


def test_fold_in_ridge_matches_lstsq(fitted):
    rng = np.random.default_rng(2)
    rows = sp.random(3, fitted.n_items, density=0.3, random_state=3, format="csr",
                     data_rvs=lambda n: rng.integers(1, 6, n).astype(float))
    lam = 0.7
    fitted.config.fold_in_l2 = lam
    try:
        P = fitted.recalculate_user(rows)
        s = fitted.score(None, rows)
    finally:
        fitted.config.fold_in_l2 = None
    V = fitted.model.item_factors.numpy().astype(np.float64)
    bi = fitted.model.item_bias.embeddings.numpy()[:, 0]
    mu = float(fitted.model.global_mean.numpy())
    d = V.shape[1]
    for r in range(3):
        cols, vals = rows[r].indices, rows[r].data
        A = np.vstack([V[cols], np.sqrt(lam) * np.eye(d)])  # ridge as augmented least squares
        b = np.concatenate([vals - mu - bi[cols], np.zeros(d)])
        want = np.linalg.lstsq(A, b, rcond=None)[0]
        np.testing.assert_allclose(P[r], want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s, P @ V.T.astype(np.float32) + mu + bi[None, :], rtol=1e-4,
                               atol=1e-4)


def test_ridge_fold_in_empty_row_is_zero():
    V = np.random.default_rng(0).standard_normal((4, 2))
    rows = sp.csr_matrix(np.array([[0, 0, 0, 0], [3.0, 0, 1.0, 0]]))
    P = ridge_fold_in(V, rows, np.array([1e-6, 0.5]))
    assert not P[0].any() and P[1].any()


def test_plain_mf_has_no_bias_terms(small):
    train, test = small
    m = MF(embedding_dim=4).fit(train, _quiet(epochs=1))
    assert [v.shape for v in m.model.trainable_variables] == [(train.n_users, 4),
                                                               (train.n_items, 4)]
    out = m.model.compute_losses(_batch([0], [0], [3.0]))
    assert float(out["bias_l2"]) == 0.0


@pytest.mark.slow
def test_ml100k_u1_shipped_config():
    from tfmf.data.splits import official_folds
    from tfmf.errors import DataError

    cfg = load_config(os.path.join(ROOT, "configs", "ml100k_biased_mf.yaml"),
                      overrides=["train.verbose=0", "train.checkpoint_every=0"])
    try:
        train, test = next(official_folds(["u1"]))
    except (DataError, FileNotFoundError) as exc:
        pytest.skip(f"ML-100K not available: {exc}")
    model = BiasedMF(cfg.model).fit(train, cfg.train)
    from tfmf.evaluation.rating import evaluate_ratings

    assert evaluate_ratings(model, test)["rmse"] <= 0.92  # measured 0.9150


@pytest.mark.parametrize("l2_mode", ["batch", "frobenius"])
def test_biased_without_biases_and_default_fold_in(small, l2_mode):
    train, _ = small
    m = BiasedMF(embedding_dim=3, use_bias=False, l2_mode=l2_mode, clip_predictions=False)
    m.fit(train, _quiet(epochs=1))
    assert len(m.model.trainable_variables) == 2  # factors only; mu is frozen
    users, items = np.array([0, 1]), np.array([2, 3])
    np.testing.assert_allclose(m.score(users)[[0, 1], items], m.predict(users, items), rtol=1e-5)
    rows = train.to_csr()[:4]
    P = m.recalculate_user(rows)  # lambda derived from l2 (per row count or mean count)
    assert P.shape == (4, 3) and np.isfinite(P).all()
