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
from tfmf.models.als import chunk_rows
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
    m = sp.random(12, 9, density=0.5, format="csr", random_state=1, dtype=np.float32)
    m.data = rng.integers(1, 6, m.nnz).astype(np.float32)
    other = rng.standard_normal((9, 4)).astype(np.float32)
    offset = rng.standard_normal(9).astype(np.float32)
    q = rng.standard_normal((4, 4))
    prec = q @ q.T + 4 * np.eye(4)
    mean = rng.standard_normal(4)
    a = 1.7
    noise_rng = np.random.default_rng(5)
    draws = bayesian.draw_rows(chunk_rows(m, 5), tf.constant(other), tf.constant(offset), mean,
                               prec, a, 12, np.random.default_rng(5)).numpy()
    # Same chunk order, same generator: the z the sampler used.
    zs = np.concatenate([noise_rng.standard_normal((len(c.rows), 4)) for c in chunk_rows(m, 5)])
    order = np.concatenate([c.rows for c in chunk_rows(m, 5)])
    z_of_row = np.empty_like(zs)
    z_of_row[order] = zs
    for r in range(12):
        s = slice(m.indptr[r], m.indptr[r + 1])
        X = other[m.indices[s]].astype(np.float64)
        A = prec + a * X.T @ X
        b = prec @ mean + a * X.T @ (m.data[s] - offset[m.indices[s]])
        mu = np.linalg.solve(A, b)
        L = np.linalg.cholesky(A)
        np.testing.assert_allclose(A @ (draws[r] - mu), L @ z_of_row[r], rtol=1e-3, atol=1e-3)


def test_normal_wishart_concentrates_on_the_rows_moments():
    rng = np.random.default_rng(0)
    cov = np.array([[2.0, 0.6, 0.0], [0.6, 1.0, 0.2], [0.0, 0.2, 0.5]])
    loc = np.array([1.0, -2.0, 0.5])
    rows = rng.multivariate_normal(loc, cov, size=20000)
    means, precs = zip(*(bayesian.sample_normal_wishart(rows, 2.0, rng) for _ in range(20)))
    np.testing.assert_allclose(np.mean(means, 0), loc, atol=0.05)
    np.testing.assert_allclose(np.linalg.inv(np.mean(precs, 0)), cov, atol=0.05)
    # With a few rows the Wishart draws vary: the prior is not ignored.
    few = [bayesian.sample_normal_wishart(rows[:5], 2.0, rng)[1][0, 0] for _ in range(20)]
    assert np.std(few) > 0.05


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
    np.testing.assert_allclose(P @ Q.T, exact, atol=1e-5)
    assert full.truncated_energy == pytest.approx(0.0, abs=1e-12)
    # Truncating the running sum at every step stays close to the best rank-4 approximation.
    u, s, vt = np.linalg.svd(exact)
    best = (u[:, :4] * s[:4]) @ vt[:4]
    P, Q = small.factors()
    err, best_err = np.linalg.norm(P @ Q.T - exact), np.linalg.norm(best - exact)
    assert best_err <= err <= 1.5 * best_err
    assert 0.0 < small.truncated_energy < 1.0


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
