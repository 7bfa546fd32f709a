"""load_dataset / inspect dispatch."""
from __future__ import annotations

import pytest

from tfmf.config import DataConfig, SyntheticConfig
from tfmf.data.loading import inspect, load_dataset
from tfmf.errors import DataError


def test_sources(tmp_path):
    assert load_dataset(DataConfig(source="sample")).nnz == 30_000
    syn = SyntheticConfig(n_users=50, n_items=20, nnz=300, density=0.1)
    assert load_dataset(DataConfig(source="synthetic-implicit", synthetic=syn)).nnz == 300
    assert load_dataset(DataConfig(source="synthetic-explicit", synthetic=syn)).nnz == 100
    p = tmp_path / "r.tsv"
    p.write_text("1\t1\t5\n1\t2\t2\n2\t1\t4\n3\t3\t1\n")
    d = load_dataset(DataConfig(source=str(p), binarize_threshold=4))
    assert d.implicit and d.nnz == 2
    d = load_dataset(DataConfig(source=str(p), min_user_interactions=2))
    assert (d.n_users, d.n_items, d.nnz) == (1, 2, 2)
    with pytest.raises(DataError, match="not a known dataset"):
        load_dataset(DataConfig(source=str(tmp_path / "nope.csv")))


def test_inspect(ml100k_dir, monkeypatch):
    monkeypatch.setenv("TFMF_DATA_DIR", str(ml100k_dir))
    s = inspect("ml-100k")
    assert (s["ratings"], s["users"], s["items"]) == (100_000, 943, 1682)
