"""pipelines/bench_data.py: the speed-read suite at --scale tiny writes its three tables, and the
generated ratings file has the promised shape (no timing is asserted)."""
from __future__ import annotations

import json

import numpy as np

import tfmf  # noqa: F401  (Keras 2 before TensorFlow)
from pipelines import benchmark as bench
from pipelines.bench_data import with_bad_row, write_ratings_csv


def test_generator_is_bounded_sorted_and_deterministic(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    rows = write_ratings_csv(str(a), 300, 200, 12_000, seed=1, users_per_block=64)
    write_ratings_csv(str(b), 300, 200, 12_000, seed=1, users_per_block=64)
    assert a.read_bytes() == b.read_bytes()
    from tfmf.data.readers import read_table

    d = read_table(a)
    assert d.nnz == rows and abs(rows - 12_000) <= 120 and d.n_users == 300
    assert np.bincount(d.users).min() >= 20  # ML-20M's minimum activity
    assert set(np.unique(d.values * 2)) <= set(range(1, 11))  # half stars
    bad, line = with_bad_row(str(a))
    lines = open(bad).read().splitlines()
    assert lines[line - 1] == "17,2,four,1" and len(lines) == rows + 2


def test_speed_read_tiny(tmp_path):
    assert bench.main(["speed-read", "--scale", "tiny", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "speed-read-tiny.json").read_text())
    tables = result["tables"]
    (main_title,) = [t for t in tables if t.startswith("Reading a")]
    readers = [r["reader"] for r in tables[main_title]]
    assert readers == ["tfmf load_dataset", "tfmf load_dataset + to_csr",
                       "tfmf data inspect (CLI, new process)",
                       "pandas.read_csv + scipy CSR (peer)", "pandas.read_csv alone"]
    for r in tables[main_title]:
        assert r["seconds"] > 0 and r["peak RSS GB"] > 0 and r["B/rating"] > 0
    bad = tables["One malformed row in the middle"][0]
    assert ".csv:" in bad["error"] and "non-numeric rating 'four'" in bad["error"]
    shards = tables["Parquet shards (tfmf data convert), per rank"]
    assert [r["reader"] for r in shards][0] == "tfmf data convert (12 shards)"
    n = tables[main_title][0]["rows"]
    by = {r["reader"]: r for r in shards}
    assert by["shards: rank 0 of 1"]["rows"] == n
    assert 0.3 * n < by["shards: rank 0 of 2"]["rows"] < 0.7 * n
    assert 0.2 * n < by["shards: rank 0 of 3"]["rows"] < 0.45 * n
    assert any("names" in n and "DOES NOT" not in n for n in result["notes"])
