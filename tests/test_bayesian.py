"""Gibbs-sampled Bayesian biased MF (tfmf.models.bayesian): the conditionals against NumPy,
the compressed posterior mean against the exact one, recovery of a known truth, I/O."""
import tfmf  # noqa: F401  (Keras 2 before TensorFlow)

import os

import numpy as np
import pytest
import scipy.sparse as sp
import tensorflow as tf

from tfmf.config import TrainConfig, load_config
from tfmf.data.splits import holdout
from tfmf.data.synthetic import explicit_low_rank
from tfmf.errors import ConfigError
from tfmf.models import bayesian
from tfmf.models.base import Recommender
import tf_keras

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET = TrainConfig(verbose=0, seed=3)


@pytest.fixture(scope="module")
def ratings():
    """(train, test) of rank-3 ratings on 1..5 with noise 0.3, ~20 ratings per user."""
    data, _ = explicit_low_rank(80, 60, rank=3, noise=0.3, density=0.4, seed=1,
                                rating_scale=(1.0, 5.0))
    return holdout(data, test_fraction=0.15, seed=0)


def _small(**kw) -> bayesian.BayesianMF:
    base = dict(factors=3, burn_in=5, samples=15, posterior_rank=16, noise_precision=10.0)
    return bayesian.BayesianMF(**{**base, **kw})


# ------------------------------------------------------------------------------ conditionals
def test_row_draw_is_mean_plus_cholesky_shaped_noise():
    """Each row's draw x satisfies A (x - A^-1 b) = L z with A = L L^T: mean and covariance
    A^-1 exactly, for A = Lambda + a X^T X and b = Lambda m + a X^T (r - offset)."""
    rng = np.random.default_rng(0)
    m = sp.random(12, 9, density=0.5, format="coo", random_state=1, dtype=np.float32)
    m.data = rng.integers(1, 6, m.nnz).astype(np.float32)
    m.row[:3] = 0  # a long row next to short (and empty) ones: several buckets and groups
    other = rng.standard_normal((9, 5)).astype(np.float32)  # [factors (4), bias]
    q = rng.standard_normal((5, 5))
    prec = q @ q.T + 4 * np.eye(5)
    mean = rng.standard_normal(5)
    a, mu = 1.7, 3.0
    groups, inverse = bayesian.row_layout(m.row, m.col, 12, 9, chunk_size=5)
    assert len(groups) == 3
    seed = tf.constant([4, 2], tf.int64)
    targets = tf.constant(np.r_[m.data - mu, 0].astype(np.float32))
    draws = bayesian.draw_rows(groups, inverse, tf.constant(other), targets,
                               tf.constant(mean, tf.float32), tf.constant(prec, tf.float32), a,
                               seed).numpy()
    # The z the sampler used: one stateless draw per group, rows in the group's order.
    z_of_row = np.empty((12, 5))
    for g, group in enumerate(groups):
        z = tf.random.stateless_normal([len(group.rows), 5, 1], bayesian._seed(seed, g))
        z_of_row[group.rows] = z.numpy()[..., 0]
    design = np.c_[other[:, :4], np.ones(9)].astype(np.float64)
    for r in range(12):
        s = m.row == r
        X = design[m.col[s]]
        A = prec + a * X.T @ X
        b = prec @ mean + a * X.T @ (m.data[s] - mu - other[m.col[s], 4])
        centre = np.linalg.solve(A, b)
        L = np.linalg.cholesky(A)
        np.testing.assert_allclose(A @ (draws[r] - centre), L @ z_of_row[r], rtol=1e-3,
                                   atol=2e-3)


def test_row_layout_covers_every_rating_once_with_little_padding():
    rng = np.random.default_rng(0)
    lengths = np.r_[0, rng.integers(1, 120, 60)]
    rows = np.repeat(np.arange(len(lengths)), lengths)
    cols = rng.integers(0, 50, len(rows))
    groups, inverse = bayesian.row_layout(rows, cols, len(lengths), 50, chunk_size=16)
    seen, padded = [], 0
    for group in groups:
        for c, r in group.buckets:
            c, r = c.numpy(), r.numpy()
            real = r < len(rows)
            np.testing.assert_array_equal(c[real], cols[r[real]])
            assert (c[~real] == 50).all()  # padding points at the zero design row
            seen.append(r[real])
            padded += r.size
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(len(rows)))
    assert padded < 1.4 * len(rows) and sum(len(g.buckets) for g in groups) > 4
    order = np.concatenate([g.rows for g in groups])
    np.testing.assert_array_equal(order[inverse.numpy()], np.arange(len(lengths)))


def test_normal_wishart_concentrates_on_the_rows_moments():
    rng = np.random.default_rng(0)
    cov = np.array([[2.0, 0.6, 0.0], [0.6, 1.0, 0.2], [0.0, 0.2, 0.5]])
    loc = np.array([1.0, -2.0, 0.5])
    rows = tf.constant(rng.multivariate_normal(loc, cov, size=20000), tf.float32)
    draws = [bayesian.normal_wishart(rows, 2.0, tf.constant([0, k], tf.int64)) for k in range(20)]
    means = [d[0].numpy() for d in draws]
    precs = [d[1].numpy() for d in draws]
    np.testing.assert_allclose(np.mean(means, 0), loc, atol=0.05)
    np.testing.assert_allclose(np.linalg.inv(np.mean(precs, 0)), cov, atol=0.05)
    for _, prec, G in draws[:3]:  # the returned factor is the precision's Cholesky factor
        np.testing.assert_allclose(G.numpy() @ G.numpy().T, prec.numpy(), rtol=1e-4, atol=1e-4)
    # With a few rows the Wishart draws vary: the prior is not ignored.
    few = [bayesian.normal_wishart(rows[:5], 2.0, tf.constant([1, k], tf.int64))[1][0, 0]
           for k in range(20)]
    assert np.std(few) > 0.05


def test_implicit_link_draw_has_the_matrix_normal_posterior_mean():
    """Y = (X^T X + lambda I)^-1 X^T A on average over the injected noise."""
    rng = np.random.default_rng(0)
    coo = sp.random(30, 12, density=0.3, format="coo", random_state=2)
    X = bayesian.implicit_features(coo.row, coo.col, 30, 12)
    np.testing.assert_allclose(np.asarray((X.multiply(X)).sum(1)).ravel()[np.diff(X.indptr) > 0],
                               1.0, rtol=1e-6)  # rows scaled by |N(u)|^-1/2
    rows = rng.standard_normal((30, 3)).astype(np.float32)
    system = bayesian.implicit_system(X, 2.0)
    G = tf.linalg.cholesky(tf.eye(3) * 4.0)
    Xt = bayesian._sparse_tensor(X)
    draws = np.mean([bayesian.draw_link(Xt, system, tf.constant(rows), G, 2.0,
                                        tf.constant([0, k], tf.int64)).numpy()
                     for k in range(400)], 0)
    K = (X.T @ X).toarray() + 2.0 * np.eye(12)
    want = np.linalg.solve(K, X.T @ rows)
    np.testing.assert_allclose(draws, want, atol=0.03)


# ------------------------------------------------------------------------------ posterior mean
def test_low_rank_mean_is_exact_until_truncated():
    rng = np.random.default_rng(0)
    draws = [(rng.standard_normal((30, 2)), rng.standard_normal((20, 2))) for _ in range(5)]
    exact = np.mean([P @ Q.T for P, Q in draws], axis=0)
    full, small = bayesian.LowRankMean(rank=10), bayesian.LowRankMean(rank=4)
    for P, Q in draws:
        full.add(P, Q)
        small.add(P, Q)
    P, Q = full.factors()
    np.testing.assert_allclose(P @ Q.T, exact, atol=1e-4)
    assert full.truncated_energy == pytest.approx(0.0, abs=1e-12)
    # Truncating the running sum at every step stays close to the best rank-4 approximation.
    u, s, vt = np.linalg.svd(exact)
    best = (u[:, :4] * s[:4]) @ vt[:4]
    P, Q = small.factors()
    err, best_err = np.linalg.norm(P @ Q.T - exact), np.linalg.norm(best - exact)
    assert best_err <= err <= 1.5 * best_err
    assert 0.0 < small.truncated_energy < 1.0
    # Buffering draws (folded in three at a time) keeps the exact mean.
    buffered = bayesian.LowRankMean(rank=10, buffer=3)
    for P, Q in draws:
        buffered.add(P, Q)
    P, Q = buffered.factors()
    np.testing.assert_allclose(P @ Q.T, exact, atol=1e-4)


# ------------------------------------------------------------------------------ fit
def test_recovers_low_rank_truth_to_noise_level():
    sigma = 0.5
    # The same data as the SGD MF test: ~216 ratings per user, ~360 per item.
    data, _ = explicit_low_rank(500, 300, rank=10, noise=sigma, density=0.8, seed=0)
    train, test = holdout(data, test_fraction=0.1, seed=1)
    m = bayesian.BayesianMF(factors=10, burn_in=10, samples=40, posterior_rank=64,
                            noise_precision=1 / sigma ** 2, clip_predictions=False)
    m.fit(train, QUIET)
    rmse = float(np.sqrt(np.mean((m.predict(test.users, test.items) - test.values) ** 2)))
    assert rmse <= 1.05 * sigma, rmse


def test_stored_model_predicts_the_running_posterior_mean(ratings):
    train, test = ratings
    m = _small(posterior_rank=64).fit(train, QUIET, validation=test)
    h = m.history
    assert len(h) == 20 and {"rmse", "val_rmse", "val_mae", "seconds"} <= set(h[0])
    pred = m.predict(test.users, test.items)
    rmse = float(np.sqrt(np.mean((pred - test.values) ** 2)))
    # 15 draws x 3 factors = 45 <= 64: the compression is exact.
    assert rmse == pytest.approx(h[-1]["val_rmse"], abs=1e-4)
    assert h[-1]["truncated_energy"] == pytest.approx(0.0, abs=1e-9)
    # Averaging draws beats the single draw the burn-in ends with.
    assert h[-1]["val_rmse"] < h[4]["val_rmse"]


def test_same_seed_same_model_and_other_seed_differs(ratings):
    train, test = ratings
    a = _small().fit(train, QUIET).predict(test.users, test.items)
    b = _small().fit(train, QUIET).predict(test.users, test.items)
    c = _small(seed=11).fit(train, QUIET).predict(test.users, test.items)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4


def test_callback_stops_the_sampler(ratings):
    class StopAt(tf_keras.callbacks.Callback):  # a stock Keras callback stops the chain
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = epoch + 1 >= 8

    train, test = ratings
    m = _small().fit(train, QUIET, callbacks=[StopAt()])
    assert len(m.history) == 8
    assert np.isfinite(m.predict(test.users, test.items)).all()


def test_fold_in_reproduces_known_users(ratings):
    train, _ = ratings
    m = _small(samples=30).fit(train, QUIET)
    users = np.arange(20)
    rows = train.to_csr()[users]
    trained, folded = m.score(users), m.score(None, rows)
    # The fold-in has no user offset and a Gaussian prior instead of the sampled posterior,
    # but from the same ratings it must rank items much like the trained user rows do.
    corr = [np.corrcoef(trained[i], folded[i])[0, 1] for i in range(len(users))]
    assert np.median(corr) > 0.9, corr


def test_save_load_and_export_round_trip(tmp_path, ratings):
    from tfmf.export import export_model

    train, test = ratings
    m = _small().fit(train, QUIET)
    m.save(tmp_path / "m")
    back = Recommender.load(tmp_path / "m")
    assert type(back) is bayesian.BayesianMF and back.config == m.config
    np.testing.assert_allclose(back.predict(test.users, test.items),
                               m.predict(test.users, test.items), rtol=1e-6)
    export_model(m, train.user_ids, train.item_ids, str(tmp_path / "saved"), k=4)
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    users = np.arange(5)
    want_idx, _ = m.recommend(users, k=4)
    got = loaded.signatures["recommend"](users=tf.constant(train.user_ids[users]))
    np.testing.assert_array_equal(got["item_ids"].numpy(), train.item_ids[want_idx])


def test_history_written_to_run_dir(tmp_path, ratings):
    train, _ = ratings
    _small(burn_in=1, samples=2).fit(train, QUIET, run_dir=str(tmp_path))
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,rmse") and len(lines) == 4


# ------------------------------------------------------------------------------ config
@pytest.mark.parametrize("raw,key", [
    ({"name": "bayesian_mf", "factors": 0}, "model.factors"),
    ({"name": "bayesian_mf", "noise_precision": 0.0}, "model.noise_precision"),
    ({"name": "bayesian_mf", "samples": 0}, "model.samples"),
    ({"name": "bayesian_mf", "l2": 0.1}, "model.l2"),  # not an SGD model
])
def test_config_errors_name_the_key(raw, key):
    with pytest.raises(ConfigError) as e:
        load_config(raw={"model": raw})
    assert e.value.key == key


@pytest.mark.parametrize("name", ["ml100k_bayesian_mf", "ml100k_bayesian_mf_tune"])
def test_shipped_configs_load(name):
    assert load_config(os.path.join(ROOT, "configs", f"{name}.yaml")).model_name == "bayesian_mf"


# ------------------------------------------------------------------------------ real data
@pytest.mark.slow
def test_ml100k_u1_rmse_beats_sgd_biased_mf(ml100k_dir):
    """A short chain (10 + 40 sweeps) already beats the tuned SGD biased MF's u1 RMSE 0.915."""
    from tfmf.data.splits import official_folds
    from tfmf.evaluation import evaluate

    cfg = load_config(os.path.join(ROOT, "configs", "ml100k_bayesian_mf.yaml"),
                      overrides=["model.burn_in=10", "model.samples=40"])
    train, test = next(official_folds(["u1"], data_dir=ml100k_dir))
    m = bayesian.BayesianMF(cfg.model).fit(train, QUIET)
    assert evaluate(m, test)["rmse"] < 0.912
