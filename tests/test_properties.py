"""Property-based tests (issue 10) that complement tests/test_data_splits.py (which already
covers KFold, temporal and user folds): holdout and strong-generalization splits, ranking-metric
bounds, and raw-id mappings (from_raw, save/load, the CSV reader)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings, strategies as st

import tfmf  # noqa: F401  (Keras 2 before TensorFlow)
from test_data_splits import _assert_partition, _assert_strong, datasets
from tfmf.data.interactions import InteractionData
from tfmf.data.readers import read_table
from tfmf.data.splits import holdout, strong_generalization
from tfmf.errors import DataError
from tfmf.evaluation.ranking import ranking_metrics

FEW = settings(max_examples=50, deadline=None)


# --------------------------------------------------------------------------- splits
@FEW
@given(d=datasets(), frac=st.floats(0.01, 0.99), seed=st.integers(0, 1000))
def test_holdout_partitions_with_the_requested_size(d, frac, seed):
    train, test = holdout(d, frac, seed=seed)
    _assert_partition(d, [train, test])
    assert test.nnz == int(round(frac * d.nnz))
    again = holdout(d, frac, seed=seed)[1]
    np.testing.assert_array_equal(test.users, again.users)  # seeded
    np.testing.assert_array_equal(test.items, again.items)


@FEW
@given(d=datasets(), users=st.floats(0.01, 0.99), f=st.floats(0.01, 0.99),
       seed=st.integers(0, 1000))
def test_strong_generalization_partitions_each_held_out_user(d, users, f, seed):
    active = np.flatnonzero(np.bincount(d.users, minlength=d.n_users))
    if len(active) < 2:
        with pytest.raises(DataError):
            strong_generalization(d, users, f, seed)
        return
    s = strong_generalization(d, users, f, seed)
    _assert_strong(d, s, f)
    assert 1 <= len(s.test_users) <= len(active) - 1
    assert len(s.test_users) == int(np.clip(round(users * len(active)), 1, len(active) - 1))
    assert np.isin(s.test_users, active).all()


# --------------------------------------------------------------------------- ranking metrics
@st.composite
def ranking_cases(draw):
    n_users, n_items = draw(st.integers(1, 8)), draw(st.integers(1, 15))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    scores = rng.normal(size=(n_users, n_items)).astype(np.float32)
    if draw(st.booleans()):
        scores = np.round(scores)  # many ties
    targets = rng.random((n_users, n_items)) < draw(st.floats(0.05, 1.0))
    exclude = (rng.random((n_users, n_items)) < draw(st.floats(0.0, 0.5))) & ~targets
    ks = draw(st.lists(st.integers(1, 20), min_size=1, max_size=3, unique=True))
    return scores, targets, exclude, ks


@FEW
@given(case=ranking_cases())
def test_ranking_metrics_lie_in_unit_interval(case):
    scores, targets, exclude, ks = case
    got = ranking_metrics(scores, sp.csr_matrix(targets), ks, exclude=sp.csr_matrix(exclude))
    has = targets.any(axis=1)
    for name, v in got.items():
        assert np.isnan(v[~has]).all(), name  # users without targets are skipped
        assert ((v[has] >= -1e-6) & (v[has] <= 1 + 1e-6)).all(), (name, v)


@FEW
@given(case=ranking_cases())
def test_perfect_ranking_scores_one(case):
    _, targets, _, ks = case
    rng = np.random.default_rng(0)
    # Every target scores above every non-target.
    scores = targets + 0.5 * rng.random(targets.shape).astype(np.float32)
    got = ranking_metrics(scores, sp.csr_matrix(targets), ks)
    has = targets.any(axis=1)
    n_t = targets.sum(axis=1)
    for k in ks:
        for name in ("ndcg", "recall", "map"):
            np.testing.assert_allclose(got[f"{name}@{k}"][has], 1.0, rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(got[f"precision@{k}"][has], np.minimum(n_t[has], k) / k,
                                   rtol=1e-5)


# --------------------------------------------------------------------------- id mappings
@st.composite
def raw_interactions(draw):
    """Rows over pools of raw ids: int64 ids (up to the int64 max) or string ids."""
    def pool(label):
        if draw(st.booleans()):
            ids = draw(st.lists(st.integers(0, 2 ** 63 - 1), min_size=1, max_size=12, unique=True))
        else:
            ids = draw(st.lists(st.text("abcxyz019_", min_size=1, max_size=6), min_size=1,
                                max_size=12, unique=True))
            ids = [label + s for s in ids]  # a letter first: the reader keeps them as strings
        return ids
    users, items = pool("u"), pool("i")
    n = draw(st.integers(1, 40))
    rows = draw(st.lists(st.tuples(st.sampled_from(users), st.sampled_from(items),
                                   st.integers(1, 5)), min_size=n, max_size=n))
    return rows


def _last_value(rows) -> dict:
    return {(u, i): float(r) for u, i, r in rows}  # later rows win ("last")


def _triples(d: InteractionData) -> dict:
    return {(d.user_ids[u].item(), d.item_ids[i].item()): float(v)
            for u, i, v in zip(d.users, d.items, d.values)}


@FEW
@given(rows=raw_interactions())
def test_id_maps_round_trip_through_from_raw_and_save_load(tmp_path_factory, rows):
    raw_u = [r[0] for r in rows]
    raw_i = [r[1] for r in rows]
    d = InteractionData.from_raw(raw_u, raw_i, [r[2] for r in rows], duplicates="last")
    path = tmp_path_factory.mktemp("ids") / "d.npz"
    d.save(path)
    for data in (d, InteractionData.load(path)):
        assert list(data.user_ids) == sorted(set(raw_u))
        assert list(data.item_ids) == sorted(set(raw_i))
        uidx, iidx = data.user_index(np.array(raw_u)), data.item_index(np.array(raw_i))
        assert [data.user_ids[k].item() for k in uidx] == raw_u
        assert [data.item_ids[k].item() for k in iidx] == raw_i
        assert _triples(data) == _last_value(rows)
    with pytest.raises(KeyError):
        d.user_index(np.array(["not-an-id"] if isinstance(raw_u[0], str) else [-1]))
    small = [u for u in raw_u if isinstance(u, int) and u < 2 ** 52]
    if small:  # a non-integral float never matches an integer id (1.5 is not user 1)
        with pytest.raises(KeyError):
            d.user_index(np.array([small[0] + 0.5]))


@settings(max_examples=20, deadline=None)
@given(rows=raw_interactions())
def test_csv_reader_returns_the_rows_written(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("csv") / "r.csv"
    path.write_text("user,item,rating\n" + "".join(f"{u},{i},{r}\n" for u, i, r in rows))
    d = read_table(path, duplicates="last")
    assert _triples(d) == _last_value(rows)
