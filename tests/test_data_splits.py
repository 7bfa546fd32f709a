"""Splits: disjoint and covering, same id space, every user held out exactly once."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tfmf.config import SplitConfig
from tfmf.data.interactions import InteractionData
from tfmf.data.splits import (KFold, StrongSplit, holdout, make_splits, official_folds,
                              strong_generalization, temporal_split, user_folds)
from tfmf.data.synthetic import explicit_low_rank
from tfmf.errors import DataError


def _data(n_users=60, n_items=40, density=0.2, seed=0) -> InteractionData:
    d, _ = explicit_low_rank(n_users, n_items, 3, 0.1, density, seed)
    d.timestamps = np.random.default_rng(seed).integers(0, 50, d.nnz)  # many ties on purpose
    return d


def _keys(d: InteractionData) -> np.ndarray:
    return d.users.astype(np.int64) * d.n_items + d.items


def _assert_partition(parent: InteractionData, parts: list[InteractionData]) -> None:
    keys = np.concatenate([_keys(p) for p in parts])
    assert len(keys) == parent.nnz and len(np.unique(keys)) == parent.nnz
    np.testing.assert_array_equal(np.sort(keys), np.sort(_keys(parent)))
    for p in parts:
        assert (p.n_users, p.n_items) == (parent.n_users, parent.n_items)
        assert p.user_ids is parent.user_ids


def _assert_strong(d: InteractionData, s: StrongSplit, fold_in_fraction: float) -> None:
    _assert_partition(d, [s.train, s.fold_in, s.target])
    held = np.zeros(d.n_users, bool)
    held[s.test_users] = True
    assert not held[s.train.users].any()
    assert held[s.fold_in.users].all() and held[s.target.users].all()
    counts = np.bincount(d.users, minlength=d.n_users)
    n_target = np.bincount(s.target.users, minlength=d.n_users)
    n_fold_in = np.bincount(s.fold_in.users, minlength=d.n_users)
    many = held & (counts >= 2)
    assert (n_target[many] >= 1).all() and (n_fold_in[many] >= 1).all()
    assert (n_target[held & (counts == 1)] == 0).all()


# --------------------------------------------------------------------------- examples
def test_kfold_partitions_test_sets():
    d = _data()
    folds = list(KFold(5, seed=3).split(d))
    assert len(folds) == 5
    _assert_partition(d, [test for _, test in folds])
    for train, test in folds:
        _assert_partition(d, [train, test])
        assert abs(test.nnz - d.nnz / 5) <= 1
    again = list(KFold(5, seed=3).split(d))
    np.testing.assert_array_equal(_keys(folds[2][1]), _keys(again[2][1]))
    unshuffled = list(KFold(4, shuffle=False).split(d))
    np.testing.assert_array_equal(_keys(unshuffled[0][1]), _keys(d)[: d.nnz // 4])


def test_holdout_fraction():
    d = _data()
    train, test = holdout(d, 0.25, seed=1)
    _assert_partition(d, [train, test])
    assert test.nnz == round(0.25 * d.nnz)


def test_temporal_user_mode_takes_each_users_latest():
    d = _data()
    train, test = temporal_split(d, 0.2, mode="user")
    _assert_partition(d, [train, test])
    for u in np.unique(test.users):
        assert test.timestamps[test.users == u].min() >= train.timestamps[train.users == u].max()
    counts = np.bincount(d.users, minlength=d.n_users)
    n_train = np.bincount(train.users, minlength=d.n_users)
    assert (n_train[counts >= 1] >= 1).all()  # nobody loses all training data


def test_temporal_global_cutoff():
    d = _data()
    train, test = temporal_split(d, 0.3, mode="global")
    _assert_partition(d, [train, test])
    assert test.nnz == round(0.3 * d.nnz) and test.timestamps.min() >= train.timestamps.max()
    d.timestamps = None
    with pytest.raises(DataError, match="timestamps"):
        temporal_split(d, 0.3)


def test_strong_generalization_and_user_folds():
    d = _data()
    s = strong_generalization(d, 0.25, 0.8, seed=2)
    _assert_strong(d, s, 0.8)
    assert len(s.test_users) == round(0.25 * d.n_users)
    folds = list(user_folds(d, 4, 0.5, seed=0))
    held = np.concatenate([f.test_users for f in folds])
    np.testing.assert_array_equal(np.sort(held), np.arange(d.n_users))  # each user exactly once
    for f in folds:
        _assert_strong(d, f, 0.5)


def test_make_splits_dispatch():
    d = _data()
    counts = {kind: len(list(make_splits(d, SplitConfig(kind=kind, n_folds=3))))
              for kind in ("none", "holdout", "kfold", "temporal", "strong", "user_folds")}
    assert counts == {"none": 1, "holdout": 1, "kfold": 3, "temporal": 1, "strong": 1,
                      "user_folds": 3}


def test_official_folds(ml100k_dir):
    from tfmf.data.movielens import load_movielens

    official = list(official_folds(["u2", "ub"], ml100k_dir))
    assert [t.nnz for _, t in official] == [20_000, 9_430]
    full = load_movielens("ml-100k", ml100k_dir)
    cfg = SplitConfig(kind="official", folds=["u3"])
    (train, test), = make_splits(full, cfg, data_dir=ml100k_dir)
    assert (train.nnz, test.nnz, train.n_users) == (80_000, 20_000, 943)
    # The split is of the data passed in: a binarized copy splits into the binarized fold.
    (btrain, btest), = make_splits(full.binarize(4.0), cfg, data_dir=ml100k_dir)
    assert btest.nnz == int((test.values >= 4.0).sum())
    assert btrain.nnz == int((train.values >= 4.0).sum())
    assert set(np.unique(btest.values)) == {1.0}


def test_official_folds_reject_other_data(ml100k_dir):
    d = _data()
    d = d.subset(np.zeros(d.nnz, bool))  # no rows: certainly none of u1.test's pairs
    with pytest.raises(DataError, match="official folds split ML-100K only"):
        next(official_folds(["u1"], ml100k_dir, data=d))


# --------------------------------------------------------------------------- properties
@st.composite
def datasets(draw):
    n_users = draw(st.integers(2, 30))
    n_items = draw(st.integers(1, 20))
    density = draw(st.floats(0.05, 1.0))
    seed = draw(st.integers(0, 10_000))
    d = _data(n_users, n_items, density, seed)
    return d


@settings(max_examples=40, deadline=None)
@given(d=datasets(), k=st.integers(2, 6), seed=st.integers(0, 100))
def test_kfold_property(d, k, seed):
    if d.nnz < k:
        with pytest.raises(DataError):
            list(KFold(k, seed=seed).split(d))
        return
    folds = list(KFold(k, seed=seed).split(d))
    _assert_partition(d, [t for _, t in folds])
    sizes = [t.nnz for _, t in folds]
    assert max(sizes) - min(sizes) <= 1


@settings(max_examples=40, deadline=None)
@given(d=datasets(), frac=st.floats(0.05, 0.95), mode=st.sampled_from(["user", "global"]))
def test_temporal_property(d, frac, mode):
    train, test = temporal_split(d, frac, mode=mode)
    _assert_partition(d, [train, test])


@settings(max_examples=40, deadline=None)
@given(d=datasets(), n_folds=st.integers(2, 5), f=st.floats(0.05, 0.95), seed=st.integers(0, 99))
def test_user_folds_property(d, n_folds, f, seed):
    active = np.unique(d.users)
    if len(active) < n_folds:
        with pytest.raises(DataError):
            list(user_folds(d, n_folds, f, seed))
        return
    folds = list(user_folds(d, n_folds, f, seed))
    np.testing.assert_array_equal(np.sort(np.concatenate([x.test_users for x in folds])), active)
    for x in folds:
        _assert_strong(d, x, f)
