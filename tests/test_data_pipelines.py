"""tf.data pipelines: content, deterministic per-epoch shuffles, sharding, sparse user rows."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import tensorflow as tf
from hypothesis import given, settings, strategies as st

from tfmf.data.pipelines import rating_dataset, shard_indices, steps_per_epoch, user_rows
from tfmf.data.synthetic import explicit_low_rank, implicit_power_law


@pytest.fixture(scope="module")
def data():
    return explicit_low_rank(50, 30, 3, 0.1, 0.3, seed=0)[0]  # 450 ratings


def _check_shards(n, batch_size, size, seed=0, epoch=0, shuffle=True):
    steps = steps_per_epoch(n, batch_size, size)
    assert steps == -(-(-(-n // size)) // batch_size)
    per_rank = [shard_indices(n, batch_size, rank=r, size=size, seed=seed, epoch=epoch,
                              shuffle=shuffle) for r in range(size)]
    for batches in per_rank:
        assert len(batches) == steps
        assert all(len(b) <= batch_size for b in batches)
    # A rank with fewer examples than steps repeats its own examples (never an empty batch).
    uniq = [np.unique(np.concatenate(b)) if b else np.empty(0, np.int64) for b in per_rank]
    everything = np.concatenate(uniq)
    if n >= size:
        np.testing.assert_array_equal(np.sort(everything), np.arange(n))  # disjoint and covering
    else:
        assert set(everything.tolist()) == set(range(n))
    if n > 0:
        assert all(len(b) > 0 for batches in per_rank for b in batches)
    return per_rank


@pytest.mark.parametrize("n,batch_size,size", [
    (10, 3, 1), (10, 3, 4), (1030, 1024, 1), (2049, 1024, 2), (7, 1, 3), (3, 8, 5),
    (0, 4, 2), (100, 10, 3), (1025, 512, 2), (9, 4, 2)])
def test_shard_awkward_combos(n, batch_size, size):
    _check_shards(n, batch_size, size)


def test_shard_remainder_policy():
    # 9 examples, 2 ranks, batch 4: rank 0 has 5 -> [4, 1]; rank 1 has 4 -> split to [2, 2].
    r0, r1 = _check_shards(9, 4, 2)
    assert [len(b) for b in r0] == [4, 1] and [len(b) for b in r1] == [2, 2]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 300), batch_size=st.integers(1, 64), size=st.integers(1, 8),
       seed=st.integers(0, 5), epoch=st.integers(0, 5), shuffle=st.booleans())
def test_shard_property(n, batch_size, size, seed, epoch, shuffle):
    per_rank = _check_shards(n, batch_size, size, seed, epoch, shuffle)
    # Exactly one pass over each example unless the rank had fewer examples than steps.
    steps = steps_per_epoch(n, batch_size, size)
    for r, batches in enumerate(per_rank):
        shard_len = len(range(r, n, size))
        if shard_len >= steps:
            assert sum(map(len, batches)) == shard_len


def test_shuffle_is_per_epoch_and_deterministic():
    a0 = np.concatenate(shard_indices(100, 7, seed=1, epoch=0))
    a1 = np.concatenate(shard_indices(100, 7, seed=1, epoch=1))
    assert not np.array_equal(a0, a1)
    np.testing.assert_array_equal(a0, np.concatenate(shard_indices(100, 7, seed=1, epoch=0)))
    np.testing.assert_array_equal(np.concatenate(shard_indices(100, 7, shuffle=False)),
                                  np.arange(100))


def _collect(ds, keys):
    out = {k: [] for k in keys}
    for b in ds:
        for k in keys:
            out[k].append(b[k].numpy())
    return out


def test_rating_dataset_content(data):
    ds = rating_dataset(data, 64, seed=3, epoch=2)
    spec = ds.element_spec
    assert spec["user_id"].dtype == tf.int32 and spec["rating"].dtype == tf.float32
    got = _collect(ds, ["user_id", "item_id", "rating"])
    order = np.concatenate(shard_indices(data.nnz, 64, seed=3, epoch=2))
    np.testing.assert_array_equal(np.concatenate(got["user_id"]), data.users[order])
    np.testing.assert_array_equal(np.concatenate(got["item_id"]), data.items[order])
    np.testing.assert_array_equal(np.concatenate(got["rating"]), data.values[order])
    assert len(got["user_id"]) == steps_per_epoch(data.nnz, 64)
    again = _collect(rating_dataset(data, 64, seed=3, epoch=2, prefetch=False), ["user_id"])
    np.testing.assert_array_equal(np.concatenate(again["user_id"]), data.users[order])


def test_rating_dataset_sharded(data):
    seen = []
    for r in range(3):
        ds = rating_dataset(data, 50, rank=r, size=3, seed=1)
        got = _collect(ds, ["user_id", "item_id"])
        assert len(got["user_id"]) == steps_per_epoch(data.nnz, 50, 3)
        seen.append(np.concatenate(got["user_id"]).astype(np.int64) * data.n_items
                    + np.concatenate(got["item_id"]))
    keys = np.concatenate(seen)
    np.testing.assert_array_equal(np.sort(keys),
                                  np.sort(data.users.astype(np.int64) * data.n_items + data.items))


def test_user_rows_match_csr(data):
    csr = data.to_csr()
    target = sp.random(csr.shape[0], csr.shape[1], density=0.1, format="csr", random_state=0,
                       dtype=np.float32)
    users = np.array([0, 3, 5, 7, 11, 13, 17, 19, 23])
    ds = user_rows(csr, 4, users=users, target=target, seed=5)
    total = 0
    for b in ds:
        u = b["user_index"].numpy()
        for key, m in (("items", csr), ("target", target)):
            st_ = b[key]
            assert st_.dense_shape.numpy().tolist() == [len(u), csr.shape[1]]
            assert st_.values.shape[0] == m[u].nnz  # nnz == interactions of those users
            want = m[u].tocoo()
            got = sp.coo_matrix((st_.values.numpy(), st_.indices.numpy().T),
                                shape=(len(u), csr.shape[1]))
            assert (got != want).nnz == 0
            # Canonical row-major order (what tf.sparse ops expect).
            flat = st_.indices.numpy() @ np.array([csr.shape[1], 1])
            assert np.all(np.diff(flat) > 0)
        total += len(u)
    assert total == len(users)


def test_user_rows_sharded_cover_all_users():
    d = implicit_power_law(101, 40, 1000, seed=0)
    csr = d.to_csr()
    seen, nnz = [], 0
    for r in range(2):
        for b in user_rows(csr, 16, rank=r, size=2, seed=9, epoch=1):
            seen.append(b["user_index"].numpy())
            nnz += int(tf.size(b["items"].values))
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(101))
    assert nnz == csr.nnz
