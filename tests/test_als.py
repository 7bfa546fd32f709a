"""ALS / iALS (tfmf.models.als): half-steps and fold-in against dense NumPy solves, CG, fit, I/O."""
import tfmf  # noqa: F401  (Keras 2 before TensorFlow)

import os

import numpy as np
import pytest
import scipy.sparse as sp

from tfmf.config import TrainConfig, load_config
from tfmf.data.splits import holdout
from tfmf.data.synthetic import explicit_low_rank
from tfmf.errors import ConfigError
from tfmf.models import als
from tfmf.models.base import Recommender

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET = TrainConfig(verbose=0, seed=3)


def _matrix(n_rows=25, n_cols=18, density=0.3, seed=0, values=(1, 6)) -> sp.csr_matrix:
    """Random sparse ratings; row 0 is left empty (its system is the pure ridge)."""
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_rows, n_cols)) < density) * rng.integers(*values, (n_rows, n_cols))
    dense[0] = 0
    return sp.csr_matrix(dense.astype(np.float32))


def _dense_ridge(gram, rhs, lam):
    return np.linalg.solve(gram + lam * np.eye(len(rhs)), rhs)


@pytest.fixture(scope="module")
def ratings():
    """(train, test) of low-rank ratings on 1..5 with noise 0.3, ~20 ratings per user."""
    data, _ = explicit_low_rank(80, 60, rank=3, noise=0.3, density=0.4, seed=1,
                                rating_scale=(1.0, 5.0))
    return holdout(data, test_fraction=0.15, seed=0)


# ------------------------------------------------------------------------------ sparse rows
def test_chunk_rows_covers_every_row_once_and_respects_the_budget():
    m = _matrix(40, 30, density=0.4)
    chunks = als.chunk_rows(m, chunk_size=4)
    rows = np.concatenate([c.rows for c in chunks])
    assert sorted(rows.tolist()) == list(range(40))
    for c in chunks:
        assert len(c.rows) <= 4 and c.mask.size <= max(4 * 256, c.mask.shape[1])
        assert c.mask.size <= 2 * max(c.mask.sum(), len(c.rows))  # length groups: < 2x padding
        for r, cols, vals, mask in zip(c.rows, c.cols, c.vals, c.mask):
            row = m[r]
            np.testing.assert_array_equal(cols[mask > 0], row.indices)
            np.testing.assert_array_equal(vals[mask > 0], row.data)


def test_row_regularization_rules():
    m = _matrix()
    n_u = np.diff(m.indptr)
    np.testing.assert_allclose(als.row_regularization(m, 0.5, False), 0.5)
    np.testing.assert_allclose(als.row_regularization(m, 0.5, True), 0.5 * np.maximum(n_u, 1))
    np.testing.assert_allclose(als.row_regularization(m, 0.5, True, alpha=2.0),
                               0.5 * (m.shape[1] + 2.0 * np.asarray(m.sum(1)).ravel()), rtol=1e-6)


# ------------------------------------------------------------------------------ half-steps
@pytest.mark.parametrize("weighted", [True, False])
def test_explicit_user_step_equals_dense_solve(weighted):
    m = _matrix()
    rng = np.random.default_rng(1)
    V = rng.standard_normal((m.shape[1], 4)).astype(np.float32)
    s = als.ALSSolver(m, regularization=0.3, weighted_lambda=weighted, chunk_size=6)
    U, _ = s.user_step(np.zeros((m.shape[0], 4), np.float32), V)
    D = m.toarray()
    for u in range(m.shape[0]):
        seen = D[u] != 0
        lam = 0.3 * (max(seen.sum(), 1) if weighted else 1)
        np.testing.assert_allclose(U[u], _dense_ridge(V[seen].T @ V[seen], V[seen].T @ D[u, seen],
                                                      lam), rtol=1e-4, atol=1e-4)


def test_biased_user_step_solves_bias_and_factors_jointly():
    m = _matrix()
    rng = np.random.default_rng(2)
    V = rng.standard_normal((m.shape[1], 3)).astype(np.float32)
    bi = rng.standard_normal(m.shape[1]).astype(np.float32)
    mu = 3.2
    s = als.ALSSolver(m, regularization=0.2, weighted_lambda=True, biased=True, mu=mu, chunk_size=7)
    U, bu = s.user_step(np.zeros((m.shape[0], 3), np.float32), V,
                        np.zeros(m.shape[0], np.float32), bi)
    D = m.toarray()
    X = np.hstack([np.ones((m.shape[1], 1)), V])  # augmented column of ones
    for u in range(m.shape[0]):
        seen = D[u] != 0
        t = D[u, seen] - mu - bi[seen]
        sol = _dense_ridge(X[seen].T @ X[seen], X[seen].T @ t, 0.2 * max(seen.sum(), 1))
        np.testing.assert_allclose(bu[u], sol[0], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(U[u], sol[1:], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("weighted", [True, False])
def test_ials_user_step_equals_dense_weighted_solve(weighted):
    """The Gramian + observed-correction system equals the full Hu et al. dense system."""
    m = _matrix(values=(1, 4))
    rng = np.random.default_rng(3)
    V = (0.3 * rng.standard_normal((m.shape[1], 5))).astype(np.float32)
    alpha, lam = 4.0, 0.05
    s = als.ALSSolver(m, regularization=lam, weighted_lambda=weighted, alpha=alpha, chunk_size=5)
    U, _ = s.user_step(np.zeros((m.shape[0], 5), np.float32), V)
    D = m.toarray()
    for u in range(m.shape[0]):
        c = 1.0 + alpha * D[u]  # confidence on every item (1 where unobserved)
        p = (D[u] > 0).astype(np.float64)
        lam_u = lam * c.sum() if weighted else lam
        np.testing.assert_allclose(U[u], _dense_ridge(V.T @ (c[:, None] * V), V.T @ (c * p), lam_u),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("alpha", [None, 3.0])
def test_cg_converges_to_the_cholesky_solution(alpha):
    m = _matrix(30, 20)
    rng = np.random.default_rng(4)
    V = (0.5 * rng.standard_normal((20, 4))).astype(np.float32)
    x0 = np.zeros((30, 4), np.float32)
    kw = dict(regularization=0.1, weighted_lambda=True, alpha=alpha, chunk_size=8)
    exact, _ = als.ALSSolver(m, **kw).user_step(x0, V)
    errors = []
    for steps in (1, 2, 8):  # k = 4 unknowns: CG is exact after 4 steps in exact arithmetic
        approx, _ = als.ALSSolver(m, solver="cg", cg_steps=steps, **kw).user_step(x0, V)
        errors.append(float(np.abs(approx - exact).max()))
    assert errors[0] > errors[-1]
    assert errors[-1] < 1e-3


def test_block_rows_cover_every_row_once_within_the_budget():
    m = _matrix(40, 30, density=0.4)
    m.sort_indices()
    blocks = als.block_rows(m, max_entries=25)
    assert blocks[0].start == 0 and blocks[-1].stop == 40
    assert all(a.stop == b.start for a, b in zip(blocks, blocks[1:]))
    for b in blocks:
        assert len(b.cols) <= 25 or b.stop - b.start == 1  # only a lone long row may exceed
        rebuilt = sp.csr_matrix((b.vals, (b.seg, b.cols)), shape=(b.stop - b.start, 30))
        np.testing.assert_array_equal(rebuilt.toarray(), m[b.start:b.stop].toarray())
    assert len(als.block_rows(sp.csr_matrix((0, 5), dtype=np.float32))) == 1


@pytest.mark.parametrize("alpha,biased", [(None, False), (None, True), (2.0, False)])
def test_cg_with_enough_steps_equals_the_dense_numpy_solve(alpha, biased):
    """Flat-block CG (several blocks, warm start) against a dense solve of the normal equations."""
    m = _matrix(30, 20, values=(1, 4))
    rng = np.random.default_rng(6)
    k = 3
    V = (0.5 * rng.standard_normal((20, k))).astype(np.float32)
    bi = rng.standard_normal(20).astype(np.float32) if biased else None
    x0 = rng.standard_normal((30, k)).astype(np.float32)
    b0 = rng.standard_normal(30).astype(np.float32) if biased else None
    s = als.ALSSolver(m, regularization=0.2, weighted_lambda=True, alpha=alpha, biased=biased,
                      mu=1.5 if biased else 0.0, solver="cg", cg_steps=12)
    s.users.blocks = als.block_rows(m, max_entries=40)  # several blocks
    assert len(s.users.blocks) > 3
    U, bu = s.user_step(x0, V, b0, bi)
    D = m.toarray().astype(np.float64)
    X = np.hstack([np.ones((20, 1)), V]) if biased else V.astype(np.float64)
    for u in range(30):
        seen = D[u] != 0
        if alpha is None:
            t = D[u, seen] - (1.5 + bi[seen] if biased else 0.0)
            want = _dense_ridge(X[seen].T @ X[seen], X[seen].T @ t, 0.2 * max(seen.sum(), 1))
        else:
            c = 1.0 + alpha * D[u]
            want = _dense_ridge(X.T @ (c[:, None] * X), X.T @ (c * seen), 0.2 * c.sum())
        got = np.concatenate([[bu[u]], U[u]]) if biased else U[u]
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("alpha,biased", [(None, True), (3.0, False)])
def test_losses_from_the_item_step_equal_a_fresh_pass(alpha, biased):
    m = _matrix(30, 20, values=(1, 4))
    rng = np.random.default_rng(7)
    kw = dict(regularization=0.1, weighted_lambda=False, alpha=alpha, biased=biased,
              mu=2.0 if biased else 0.0)
    s = als.ALSSolver(m, solver="cg", **kw)
    U = (0.3 * rng.standard_normal((30, 4))).astype(np.float32)
    V = (0.3 * rng.standard_normal((20, 4))).astype(np.float32)
    bu = np.zeros(30, np.float32) if biased else None
    bi = np.zeros(20, np.float32) if biased else None
    U, bu = s.user_step(U, V, bu, bi)
    V, bi = s.item_step(U, V, bu, bi)
    cached = s.losses(U, V, bu, bi)
    fresh = als.ALSSolver(m, solver="cholesky", **kw).losses(U, V, bu, bi)
    assert cached.keys() == fresh.keys()
    for key in cached:
        np.testing.assert_allclose(cached[key], fresh[key], rtol=1e-4)
    # The dense objective itself.
    D = m.toarray().astype(np.float64)
    Un, Vn = np.asarray(U, np.float64), np.asarray(V, np.float64)
    P = Un @ Vn.T
    if biased:
        P += 2.0 + np.asarray(bu)[:, None] + np.asarray(bi)[None]
        data = ((D - P)[D != 0] ** 2).sum()
    else:
        data = ((1 + alpha * D) * ((D != 0) - P) ** 2).sum()
    l2 = 0.1 * ((Un ** 2).sum() + (Vn ** 2).sum())
    if biased:
        l2 += 0.1 * ((np.asarray(bu) ** 2).sum() + (np.asarray(bi) ** 2).sum())
    np.testing.assert_allclose(cached["loss"], (data + l2) / m.nnz, rtol=1e-4)


def test_row_ranges_are_contiguous_balanced_and_cover_all_rows():
    from tfmf.models.als_distributed import Group

    indptr = np.concatenate([[0], np.cumsum([50, 0, 0, 1, 1, 1, 1, 30, 2, 2, 0, 0])])
    for size in (1, 2, 3, 5):
        ranges = [Group(r, size).own_range(indptr) for r in range(size)]
        assert ranges[0][0] == 0 and ranges[-1][1] == 12
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert Group(0, 2).ranges(np.zeros(1, np.int64)) == [(0, 0), (0, 0)]


# ------------------------------------------------------------------------------ models
def test_als_objective_never_increases_and_rmse_drops(ratings):
    train, test = ratings
    m = als.ALS(factors=3, regularization=0.05, iterations=12).fit(train, QUIET, validation=test)
    loss = [h["loss"] for h in m.history]
    assert [h["epoch"] for h in m.history] == list(range(1, 13))
    assert all(b <= a * (1 + 1e-4) for a, b in zip(loss, loss[1:])), loss  # exact ALS is monotone
    rmse = [h["rmse"] for h in m.history]
    assert rmse[-1] < 0.6 * rmse[0]
    assert m.history[-1]["val_rmse"] < m.history[0]["val_rmse"]
    # Noise is 0.3; the bias baseline scores ~0.87 on such a split.
    assert m.history[-1]["val_rmse"] < 0.45
    assert {"data", "l2", "seconds", "solve_seconds"} <= set(m.history[-1])


def test_unbiased_als_is_plain_mf(ratings):
    train, _ = ratings
    m = als.ALS(factors=3, biased=False, iterations=2).fit(train, QUIET)
    U, V = m.model.user_factors.numpy(), m.model.item_factors.numpy()
    u, i = train.users[:20], train.items[:20]
    np.testing.assert_allclose(m.predict(u, i), np.clip((U[u] * V[i]).sum(1), 1, 5), rtol=1e-5)


def test_cg_solver_fits_about_as_well_as_cholesky(ratings):
    train, test = ratings
    runs = [als.ALS(factors=3, iterations=6, solver=s, cg_steps=3).fit(train, QUIET,
                                                                          validation=test)
            for s in ("cholesky", "cg")]
    chol, cg = (r.history[-1]["val_rmse"] for r in runs)
    assert cg < 1.05 * chol


def test_als_fold_in_matches_numpy_ridge(ratings):
    train, _ = ratings
    m = als.ALS(factors=3, regularization=0.1, iterations=3).fit(train, QUIET)
    rows = train.to_csr()[[2, 5, 7]]
    V = m.model.item_factors.numpy()
    bi = m.model.item_bias.embeddings.numpy()[:, 0]
    mu = float(m.model.global_mean.numpy())
    X = np.hstack([np.ones((V.shape[0], 1)), V])
    P = m.recalculate_user(rows)
    scores = m.score(None, rows)
    for r in range(rows.shape[0]):
        idx = rows[r].indices
        sol = _dense_ridge(X[idx].T @ X[idx], X[idx].T @ (rows[r].data - mu - bi[idx]),
                           0.1 * len(idx))
        np.testing.assert_allclose(P[r], sol[1:], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(scores[r], mu + bi + sol[0] + V @ sol[1:], rtol=1e-4, atol=1e-4)


def test_ials_fold_in_matches_numpy_and_recommends_unseen():
    data, _ = explicit_low_rank(40, 30, rank=3, noise=0.1, density=0.3, seed=5)
    implicit = data.binarize(0.0)
    m = als.IALS(factors=4, regularization=0.5, alpha=5.0, iterations=4).fit(implicit, QUIET)
    assert m.history[-1]["loss"] <= m.history[0]["loss"]
    assert "gramian" in m.history[-1]
    rows = implicit.to_csr()[:4]
    V = m.model.item_factors.numpy().astype(np.float64)
    P = m.recalculate_user(rows)
    for r in range(4):
        c = 1.0 + 5.0 * rows[r].toarray().ravel()
        p = (c > 1).astype(np.float64)
        np.testing.assert_allclose(P[r], _dense_ridge(V.T @ (c[:, None] * V), V.T @ (c * p), 0.5),
                                   rtol=1e-3, atol=1e-4)
    items, scores = m.recommend(user_items=rows, k=5)
    for r in range(4):
        assert not set(items[r]) & set(rows[r].indices)
        np.testing.assert_allclose(scores[r], (V @ P[r])[items[r]], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["als", "ials"])
def test_save_load_round_trip(tmp_path, ratings, name):
    train, _ = ratings
    data = train if name == "als" else train.binarize(3.5)
    m = (als.ALS(factors=3, iterations=2) if name == "als"
         else als.IALS(factors=3, iterations=2)).fit(data, QUIET)
    m.save(tmp_path / name)
    back = Recommender.load(tmp_path / name)
    assert type(back) is type(m) and back.config == m.config
    users = np.arange(10)
    np.testing.assert_allclose(back.score(users), m.score(users), rtol=1e-6)
    np.testing.assert_allclose(back.predict(data.users[:9], data.items[:9]),
                               m.predict(data.users[:9], data.items[:9]), rtol=1e-6)
    rows = data.to_csr()[:3]
    np.testing.assert_allclose(back.score(None, rows), m.score(None, rows), rtol=1e-5, atol=1e-6)


def test_export_serves_the_als_scores(tmp_path, ratings):
    import tensorflow as tf

    from tfmf.export import export_model

    train, _ = ratings
    m = als.ALS(factors=3, iterations=2).fit(train, QUIET)
    export_model(m, train.user_ids, train.item_ids, str(tmp_path / "saved"), k=4)
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    users = np.arange(6)
    want_idx, want_scores = m.recommend(users, k=4)
    got = loaded.signatures["recommend"](users=tf.constant(train.user_ids[users]))
    np.testing.assert_array_equal(got["item_ids"].numpy(), train.item_ids[want_idx])
    np.testing.assert_allclose(got["scores"].numpy(), want_scores, rtol=1e-5)


def test_history_written_to_run_dir(tmp_path, ratings):
    train, _ = ratings
    als.ALS(factors=2, iterations=2).fit(train, QUIET, run_dir=str(tmp_path))
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,") and len(lines) == 3
    assert {"loss", "data", "l2", "rmse", "solve_seconds"} <= set(lines[0].split(","))
    assert [line.split(",")[0] for line in lines[1:]] == ["1", "2"]


# ------------------------------------------------------------------------------ config
@pytest.mark.parametrize("raw,key", [
    ({"name": "als", "factors": 0}, "model.factors"),
    ({"name": "ials", "solver": "lu"}, "model.solver"),
    ({"name": "als", "alpha": 3.0}, "model.alpha"),  # explicit ALS has no alpha
    ({"name": "ials", "regularization": 0.0}, "model.regularization"),
])
def test_config_errors_name_the_key(raw, key):
    with pytest.raises(ConfigError) as e:
        load_config(raw={"model": raw})
    assert e.value.key == key


@pytest.mark.parametrize("name,model", [("ml100k_als", "als"), ("ml100k_ials", "ials")])
def test_shipped_configs_load(name, model):
    cfg = load_config(os.path.join(ROOT, "configs", f"{name}.yaml"))
    assert cfg.model_name == model


# ------------------------------------------------------------------------------ real data
@pytest.mark.slow
def test_ml100k_u1_rmse(ml100k_dir):
    from tfmf.data.splits import official_folds
    from tfmf.evaluation import evaluate

    cfg = load_config(os.path.join(ROOT, "configs", "ml100k_als.yaml"))
    train, test = next(official_folds(["u1"], data_dir=ml100k_dir))
    m = als.ALS(cfg.model).fit(train, QUIET)
    assert evaluate(m, test)["rmse"] < 0.935  # u1 is the hardest official fold
