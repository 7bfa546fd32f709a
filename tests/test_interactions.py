"""InteractionData: indexing, duplicates policy, conversions, persistence."""
import numpy as np
import pytest

import tfmf  # noqa: F401
import tensorflow as tf
from tfmf.data.interactions import InteractionData
from tfmf.data.sparse import csr_rows_coo, csr_to_sparse_tensor
from tfmf.errors import DataError


def small():
    return InteractionData.from_raw(["b", "a", "c", "a"], [10, 20, 10, 30], [1, 2, 3, 4],
                                    timestamps=[5, 6, 7, 8], rating_scale=(1, 5), name="t")


def test_indices_are_sorted_raw_ids():
    d = small()
    assert list(d.user_ids) == ["a", "b", "c"] and list(d.item_ids) == [10, 20, 30]
    assert d.users.dtype == np.int32 and d.values.dtype == np.float32
    assert d.timestamps.dtype == np.int64
    np.testing.assert_array_equal(d.user_index(["c", "a"]), [2, 0])
    np.testing.assert_array_equal(d.item_index([30, 10]), [2, 0])
    with pytest.raises(KeyError, match="unknown user id 'zz'"):
        d.user_index(["zz"])
    with pytest.raises(KeyError, match="unknown item id 99"):
        d.item_index([99])


@pytest.mark.parametrize("policy,expected", [("last", 4.0), ("mean", 2.5)])
def test_duplicate_policies(policy, expected):
    d = InteractionData.from_raw([1, 1, 2], [7, 7, 7], [1, 4, 5], timestamps=[1, 9, 3],
                                 duplicates=policy)
    assert d.nnz == 2
    row = d.to_csr()[d.user_index([1])[0]].toarray().ravel()
    assert row[d.item_index([7])[0]] == pytest.approx(expected)
    assert d.timestamps.max() == 9


def test_duplicate_error_names_line():
    with pytest.raises(DataError) as ei:
        InteractionData.from_raw([1, 2, 1], [7, 7, 7], [1, 2, 3], source="f.csv",
                                 line_numbers=np.array([2, 3, 4]))
    assert ei.value.path == "f.csv" and ei.value.line == 4
    assert "first seen at line 2" in str(ei.value)


@pytest.mark.parametrize("vals,msg", [([1, np.nan], "NaN"), ([1, np.inf], "NaN/inf"),
                                      ([1, 6], "outside the declared scale")])
def test_value_validation(vals, msg):
    with pytest.raises(DataError, match=msg) as ei:
        InteractionData.from_raw([1, 2], [1, 2], vals, rating_scale=(1, 5), source="x",
                                 line_numbers=np.array([10, 11]))
    assert ei.value.line == 11


def test_empty_input():
    with pytest.raises(DataError, match="empty"):
        InteractionData.from_raw([], [], [], source="e.csv")


def test_csr_and_sparse_tensor_agree():
    d = small()
    csr = d.to_csr()
    st = d.to_sparse_tensor()
    assert isinstance(st, tf.SparseTensor)
    np.testing.assert_allclose(tf.sparse.to_dense(st).numpy(), csr.toarray())
    rows = np.array([2, 0])
    r, c, v = csr_rows_coo(csr, rows)
    np.testing.assert_allclose(
        csr_to_sparse_tensor(csr[rows]).values.numpy(), v)
    assert len(v) == csr[rows].nnz


def test_subset_keeps_id_space_and_compact_reindexes():
    d = small()
    s = d.subset(d.values > 2)
    assert s.n_users == d.n_users and s.nnz == 2
    c = d.compact(min_user_interactions=2)
    assert list(c.user_ids) == ["a"] and c.n_items == 2 and c.nnz == 2
    np.testing.assert_array_equal(c.item_ids, [20, 30])


def test_binarize():
    b = small().binarize(3)
    assert b.implicit and b.nnz == 2 and np.all(b.values == 1)


def test_save_load_round_trip(tmp_path):
    d = small()
    d.save(tmp_path / "d.npz")
    e = InteractionData.load(tmp_path / "d.npz")
    for f in ("users", "items", "values", "timestamps", "user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(d, f), getattr(e, f))
    assert e.rating_scale == (1.0, 5.0) and e.name == "t"


def test_clip_range_prefers_the_declared_scale_then_the_observed_values():
    d = InteractionData.from_raw([1, 2, 2], [5, 5, 6], [2.0, 3.5, 4.0])
    assert d.clip_range() == (2.0, 4.0)
    scaled = InteractionData.from_raw([1, 2], [5, 6], [2.0, 3.0], rating_scale=(1, 5))
    assert scaled.clip_range() == (1.0, 5.0)
    assert d.subset(np.zeros(d.nnz, bool)).clip_range() is None
