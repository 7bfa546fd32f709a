"""Bias baseline and popularity against direct NumPy computations."""
import numpy as np

import tfmf  # noqa: F401
from tfmf.data.interactions import InteractionData
from tfmf.models.base import Recommender, top_k
from tfmf.models.baselines import BiasBaseline, Popularity


def data():
    rng = np.random.default_rng(0)
    u = rng.integers(0, 30, 400)
    i = rng.integers(0, 20, 400)
    r = np.clip(np.round(3 + 0.05 * (u - 15) - 0.08 * (i - 10) + rng.normal(0, 0.5, 400)), 1, 5)
    return InteractionData.from_raw(u, i, r, rating_scale=(1, 5), duplicates="last")


def test_bias_baseline_solves_its_normal_equations():
    d = data()
    m = BiasBaseline(reg_user=2.0, reg_item=3.0, iterations=200).fit(d)
    resid = d.values - m.predict(d.users, d.items)
    # Stationarity of the regularized least squares: sum of residuals = reg * bias.
    np.testing.assert_allclose(np.bincount(d.users, resid, d.n_users), 2.0 * m.bu, atol=1e-3)
    np.testing.assert_allclose(np.bincount(d.items, resid, d.n_items), 3.0 * m.bi, atol=1e-3)


def test_bias_baseline_save_load(tmp_path):
    d = data()
    m = BiasBaseline().fit(d)
    m.save(tmp_path / "m")
    m2 = Recommender.load(tmp_path / "m")
    np.testing.assert_allclose(m.predict(d.users, d.items), m2.predict(d.users, d.items))


def test_popularity_recommends_most_popular_unseen():
    d = data()
    m = Popularity().fit(d)
    counts = np.bincount(d.items, minlength=d.n_items)
    items, scores = m.recommend(np.array([0, 1]), k=5)
    seen = d.to_csr()
    for row, u in enumerate([0, 1]):
        assert not set(items[row]) & set(seen[u].indices)
        unseen = [j for j in np.argsort(-counts, kind="stable") if j not in set(seen[u].indices)]
        assert sorted(counts[items[row]], reverse=True) == list(counts[items[row]])
        assert counts[items[row][0]] == counts[unseen[0]]


def test_top_k_breaks_ties_by_index():
    s = np.array([[1.0, 3.0, 3.0, 0.5, 3.0]])
    idx, val = top_k(s, 3)
    assert idx.tolist() == [[1, 2, 4]] and val.tolist() == [[3.0, 3.0, 3.0]]
