"""EASE against its defining equations, plus fold-in scoring and persistence."""
import numpy as np
import pytest
import scipy.sparse as sp

import tfmf  # noqa: F401
from tfmf.data.interactions import InteractionData
from tfmf.models.base import Recommender
from tfmf.models.ease import EASE


def data(seed=0, n_users=40, n_items=15):
    rng = np.random.default_rng(seed)
    x = rng.random((n_users, n_items)) < 0.3
    u, i = np.nonzero(x)
    return InteractionData(users=u, items=i, values=rng.integers(1, 6, len(u)),
                           user_ids=np.arange(n_users), item_ids=np.arange(n_items)), x


def test_ease_matches_closed_form_and_stationarity():
    d, x = data()
    lam = 7.0
    m = EASE(l2=lam).fit(d)
    X = x.astype(np.float64)  # binarized: values 1..5 are ignored
    P = np.linalg.inv(X.T @ X + lam * np.eye(X.shape[1]))
    B = np.eye(X.shape[1]) - P / np.diag(P)[None, :]
    np.testing.assert_allclose(m.B, B, atol=1e-5)
    assert np.all(np.diag(m.B) == 0)
    # KKT of min ||X - XB||^2 + lam ||B||^2 s.t. diag(B) = 0: off-diagonal gradient vanishes.
    grad = -X.T @ (X - X @ m.B.astype(np.float64)) + lam * m.B
    off = ~np.eye(X.shape[1], dtype=bool)
    np.testing.assert_allclose(grad[off], 0.0, atol=1e-4)


def test_ease_fold_in_scores_and_save_load(tmp_path):
    d, x = data(1)
    m = EASE(l2=3.0, dtype="float32").fit(d)
    users = np.array([2, 9])
    rows = sp.csr_matrix(x[users].astype(np.float32))
    np.testing.assert_allclose(m.score(users), x[users] @ m.B, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.score(None, rows), m.score(users), rtol=1e-6)
    m.save(tmp_path / "ease")
    m2 = Recommender.load(tmp_path / "ease")
    np.testing.assert_allclose(m2.score(None, rows), m.score(None, rows))
    items, _ = m2.recommend(None, k=4, user_items=rows)
    assert not x[users][np.arange(2)[:, None], items].any()


@pytest.mark.slow
def test_ease_beats_popularity_on_ml100k_strong_generalization(ml100k_dir):
    from tfmf.config import EvalConfig
    from tfmf.data.movielens import load_movielens
    from tfmf.data.splits import user_folds
    from tfmf.evaluation.ranking import evaluate_strong
    from tfmf.models.baselines import Popularity

    data = load_movielens("ml-100k", ml100k_dir).binarize(4.0).compact(5)
    split = next(user_folds(data, 5, 0.8, seed=0))
    cfg = EvalConfig(metrics=["ndcg"], ks=[100])
    ease = evaluate_strong(EASE(l2=300.0).fit(split.train), split, cfg)["ndcg@100"]
    pop = evaluate_strong(Popularity().fit(split.train), split, cfg)["ndcg@100"]
    # Measured on this fold: EASE 0.474 (l2=500), popularity 0.279.
    assert ease > 0.44 and pop < 0.32 and ease > pop + 0.1


# --------------------------------------------------------------------------- solvers
def gram_case(n_users=300, n_items=500, seed=0, lam=5.0):
    rng = np.random.default_rng(seed)
    x = (rng.random((n_users, n_items)) < 0.05).astype(np.float32)
    x[:3] = 1.0  # users with every item: the dense part of the Gram assembly
    return sp.csr_matrix(x), x.astype(np.float64).T @ x + lam * np.eye(n_items), lam


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_item_gram_dense_and_sparse_parts_match_xtx(dtype):
    from tfmf.models.ease import item_gram

    x, ref, lam = gram_case()
    for share in (0.05, 1.0):  # with and without the dense-user path
        g = item_gram(x, dtype, lam, dense_share=share, row_block=128)
        assert g.dtype == np.dtype(dtype) and g.flags.c_contiguous
        np.testing.assert_array_equal(g, ref.astype(dtype))


@pytest.mark.parametrize("solver", ["lapack", "blocked", "tensorflow"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_solver_inverts_the_gram_matrix(solver, dtype):
    from tfmf.models.ease import item_gram, spd_inverse, spd_inverse_blocked

    x, ref, lam = gram_case()
    g = item_gram(x, dtype, lam)
    # Small leaves so the recursion (three levels) is exercised, not only the LAPACK leaf.
    p = spd_inverse_blocked(g, leaf=64) if solver == "blocked" else spd_inverse(g, solver)
    P = np.linalg.inv(ref)
    tol = 1e-12 if dtype == "float64" else 1e-5
    assert np.abs(p - P).max() <= tol * np.abs(P).max()
    # LAPACK and TF mirror one triangle; the recursion's diagonal blocks are symmetric to
    # rounding.
    assert np.abs(p - p.T).max() <= tol * np.abs(P).max()


def test_fit_is_the_same_model_with_every_solver_and_auto_picks_the_cpu_solver():
    from tfmf.models import ease

    d, _ = data(3, n_users=80, n_items=40)
    fits = {s: EASE(l2=4.0, dtype="float64", solver=s).fit(d) for s in ("lapack", "blocked",
                                                                        "tensorflow", "auto")}
    for s, m in fits.items():
        np.testing.assert_allclose(m.B, fits["lapack"].B, atol=1e-6, err_msg=s)
    # No GPU on the test machine: auto is the CPU solver; with a GPU it would be tensorflow.
    assert fits["auto"].solver_used == ("tensorflow" if ease.gpu_available() else ease.CPU_SOLVER)


def test_not_positive_definite_is_a_clear_error():
    from tfmf.models.ease import spd_inverse

    for solver in ("lapack", "blocked", "tensorflow"):
        g = -np.eye(50)
        with pytest.raises(np.linalg.LinAlgError, match="positive definite"):
            spd_inverse(g, solver)


def test_bad_solver_is_a_config_error():
    from tfmf.errors import ConfigError

    with pytest.raises(ConfigError, match="model.solver"):
        EASE(solver="magma")
