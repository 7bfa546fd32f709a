"""Sharded storage (`tfmf data convert`): per-rank reading covers every row exactly once, the
global id space is kept, and missing/changed/corrupt files are named."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from tfmf.config import DataConfig
from tfmf.data.interactions import InteractionData
from tfmf.data.loading import load_dataset
from tfmf.data.shards import read_manifest, read_shards, shards_for_rank, write_shards
from tfmf.data.synthetic import implicit_power_law
from tfmf.errors import ConfigError, DataError


def _data() -> InteractionData:
    """Power-law users (a few heavy ones), string user ids, timestamps, titles, ratings."""
    base = implicit_power_law(400, 120, 6000, 1.0, 1.0, seed=3)
    rng = np.random.default_rng(0)
    return InteractionData.from_raw(
        np.array([f"u{u:04d}" for u in base.users]), base.items * 10 + 7,
        rng.integers(1, 6, base.nnz).astype(float), rng.integers(0, 10**9, base.nnz),
        rating_scale=(1, 5), item_titles={i * 10 + 7: f"Item {i}" for i in range(120)},
        name="syn")


def _rows(d: InteractionData) -> np.ndarray:
    out = np.stack([d.users.astype(np.int64), d.items, (d.values * 2).astype(np.int64),
                    d.timestamps], axis=1)
    return out[np.lexsort(out.T[::-1])]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    data = _data()
    out = tmp_path_factory.mktemp("shards") / "syn"
    write_shards(data, out, n_shards=6, source="memory")
    return data, out


@pytest.mark.parametrize("size", [1, 2, 3])
def test_ranks_cover_every_row_exactly_once(converted, size):
    data, out = converted
    parts = [read_shards(out, r, size) for r in range(size)]
    for p in parts:  # the global id space on every rank
        assert p.n_users == data.n_users and p.n_items == data.n_items
        np.testing.assert_array_equal(p.user_ids, data.user_ids)
        np.testing.assert_array_equal(p.item_ids, data.item_ids)
        np.testing.assert_array_equal(p.item_titles, data.item_titles)
        assert p.rating_scale == (1.0, 5.0) and not p.implicit
    np.testing.assert_array_equal(_rows(InteractionData(
        users=np.concatenate([p.users for p in parts]),
        items=np.concatenate([p.items for p in parts]),
        values=np.concatenate([p.values for p in parts]),
        timestamps=np.concatenate([p.timestamps for p in parts]),
        user_ids=data.user_ids, item_ids=data.item_ids)), _rows(data))
    # whole users per rank: no user on two ranks
    owners = [set(np.unique(p.users)) for p in parts]
    assert sum(len(o) for o in owners) == len(set().union(*owners))
    sizes = np.array([p.nnz for p in parts])
    heaviest = np.bincount(data.users).max()
    assert sizes.max() - sizes.min() <= 2 * heaviest + data.nnz // 6, sizes


@pytest.mark.parametrize("size", [2, 3, 4])
def test_per_rank_training_rows_cover_every_row_once_with_equal_steps(converted, size):
    """What each rank trains on when it reads its own shards: the ranks' user ranges are
    contiguous and cover all users, each epoch's batches (equal in number on every rank, none
    larger than the batch size) hold every row of the dataset exactly once."""
    import math

    from tfmf.data.pipelines import local_batches
    from tfmf.data.shards import rank_user_range

    data, out = converted
    parts = [read_shards(out, r, size) for r in range(size)]
    ranges = [rank_user_range(out, r, size) for r in range(size)]
    assert ranges[0][0] == 0 and ranges[-1][1] == data.n_users
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    for p, (lo, hi), r in zip(parts, ranges, range(size)):
        assert p.partition == (r, size)
        assert p.subset(p.values >= 3).partition == (r, size)  # splits keep it
        assert lo <= p.users.min() and p.users.max() < hi
    batch = 128
    steps = math.ceil(max(p.nnz for p in parts) / batch)
    seen = []
    for p in parts:
        batches = local_batches(p.nnz, batch, steps)
        assert len(batches) == steps and all(0 < len(b) <= batch for b in batches)
        pos = np.concatenate(batches)
        assert sorted(pos.tolist()) == list(range(p.nnz))  # each local row once
        seen.append(np.stack([p.users[pos], p.items[pos]], 1))
    keys = np.concatenate(seen).astype(np.int64)
    keys = keys[:, 0] * data.n_items + keys[:, 1]
    want = data.users.astype(np.int64) * data.n_items + data.items
    np.testing.assert_array_equal(np.sort(keys), np.sort(want))
    assert read_shards(out, 0, 1).partition is None  # one process: the whole dataset


def test_local_batches_degenerate_sizes():
    from tfmf.data.pipelines import local_batches

    assert [len(b) for b in local_batches(10, 4, 3)] == [4, 4, 2]
    assert [len(b) for b in local_batches(9, 4, 4)] == [3, 2, 2, 2]
    assert [b.tolist() for b in local_batches(2, 4, 3)] == [[0], [1], [0]]
    with pytest.raises(ValueError, match="no rows"):
        local_batches(0, 4, 3)


def test_manifest_and_loader(converted):
    data, out = converted
    m = read_manifest(out / "manifest.json")
    assert m["nnz"] == data.nnz and m["n_users"] == data.n_users and len(m["shards"]) == 6
    assert sum(s["rows"] for s in m["shards"]) == data.nnz
    assert all(len(s["sha256"]) == 64 for s in m["shards"])
    whole = load_dataset(DataConfig(source=str(out)))
    np.testing.assert_array_equal(_rows(whole), _rows(data))
    rank1 = load_dataset(DataConfig(source=str(out / "manifest.json")), rank=1, size=2)
    assert rank1.nnz == read_shards(out, 1, 2).nnz < data.nnz
    pos = load_dataset(DataConfig(source=str(out), binarize_threshold=4), rank=0, size=3)
    assert pos.implicit and pos.n_users == data.n_users
    with pytest.raises(ConfigError, match="data.min_user_interactions"):
        load_dataset(DataConfig(source=str(out), min_user_interactions=3), rank=0, size=2)


def test_assignment_is_contiguous_and_disjoint():
    for n in (1, 5, 12):
        for size in range(1, n + 1):
            got = [list(shards_for_rank(n, r, size)) for r in range(size)]
            assert sum(got, []) == list(range(n))
            assert max(map(len, got)) - min(map(len, got)) <= 1
    with pytest.raises(DataError, match="cannot feed 4 ranks"):
        shards_for_rank(3, 0, 4)


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_missing_changed_and_corrupt_files_are_named(converted, tmp_path):
    _, out = converted
    d = _copy(out, tmp_path / "a")
    os.remove(d / "part-00004.parquet")
    with pytest.raises(DataError) as ei:
        read_shards(d, 2, 3)  # rank 2 of 3 reads parts 4 and 5
    assert ei.value.path == str(d / "part-00004.parquet") and "missing" in str(ei.value)
    read_shards(d, 0, 3)  # other ranks never touch it

    d = _copy(out, tmp_path / "b")
    raw = bytearray((d / "part-00001.parquet").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (d / "part-00001.parquet").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="checksum mismatch") as ei:
        read_shards(d)
    assert ei.value.path == str(d / "part-00001.parquet")

    d = _copy(out, tmp_path / "c")
    (d / "user_ids.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(DataError, match="checksum mismatch") as ei:
        read_shards(d)
    assert ei.value.path == str(d / "user_ids.parquet")

    d = _copy(out, tmp_path / "d")
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="corrupt manifest") as ei:
        read_shards(d)
    assert ei.value.path == str(d / "manifest.json")

    d = _copy(out, tmp_path / "e")
    m = json.loads((d / "manifest.json").read_text())
    m["version"] = 99
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="version 99"):
        read_shards(d)


def test_convert_refuses_a_non_empty_output(converted, tmp_path):
    data, out = converted
    with pytest.raises(DataError, match="not an empty directory"):
        write_shards(data, out)
    assert not [n for n in os.listdir(out.parent) if ".tmp-" in n]


def test_cli_convert_then_train_source(tmp_path, capsys):
    import subprocess

    csv = tmp_path / "r.csv"
    csv.write_text("user,item,rating\n" + "".join(
        f"{u},{i},{1 + (u + i) % 5}\n" for u in range(30) for i in range(0, 40, 3)))
    out = tmp_path / "shards"
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
    code = ("import sys; from tfmf.cli import main; rc = main(sys.argv[1:]); "
            "assert 'tensorflow' not in sys.modules, 'data convert imported TensorFlow'; "
            "sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code, "data", "convert", str(csv), "--out",
                          str(out), "--shards", "4", "--set", "data.rating_scale=[1,5]"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "wrote 4 shard(s)" in res.stdout
    m = read_manifest(out)
    assert m["nnz"] == 30 * 14 and m["rating_scale"] == [1.0, 5.0]
    res = subprocess.run([sys.executable, "-c", code, "data", "convert", str(csv), "--out",
                          str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2 and f"{out}: output exists" in res.stderr


def test_filtered_and_timestamp_free_reads_match_the_full_read(converted):
    """min_rating filters shard by shard (what binarize_threshold keeps); timestamps=False
    drops only that column; load_dataset's binarized shards equal a binarized full read."""
    data, out = converted
    for rank, size in ((0, 1), (1, 3)):
        full = read_shards(out, rank, size)
        kept = read_shards(out, rank, size, min_rating=4, timestamps=False)
        assert kept.timestamps is None and kept.partition == full.partition
        sel = full.values >= 4
        np.testing.assert_array_equal(kept.users, full.users[sel])
        np.testing.assert_array_equal(kept.items, full.items[sel])
        np.testing.assert_array_equal(kept.values, full.values[sel])
    pos = load_dataset(DataConfig(source=str(out), binarize_threshold=4), timestamps=False)
    want = data.binarize(4)
    assert pos.implicit and pos.rating_scale is None and (pos.values == 1).all()
    np.testing.assert_array_equal(np.sort(pos.users.astype(np.int64) * data.n_items + pos.items),
                                  np.sort(want.users.astype(np.int64) * data.n_items
                                          + want.items))
