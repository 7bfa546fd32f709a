"""Synthetic generators and the embedded sample."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tfmf.data.sample import load_sample
from tfmf.data.synthetic import explicit_low_rank, implicit_power_law

ROOT = Path(__file__).resolve().parents[1]


def test_explicit_truth_rmse_matches_noise():
    data, truth = explicit_low_rank(400, 300, rank=5, noise=0.4, density=0.2, seed=1)
    assert data.nnz == 24_000 and (data.n_users, data.n_items) == (400, 300)
    assert truth.U.shape == (400, 5) and truth.V.shape == (300, 5)
    resid = data.values - truth.ratings(data.users, data.items)
    assert np.sqrt(np.mean(resid ** 2)) == pytest.approx(0.4, rel=0.03)
    # Unique pairs, CSR order.
    key = data.users.astype(np.int64) * data.n_items + data.items
    assert np.all(np.diff(key) > 0)


def test_explicit_rating_scale_and_determinism():
    a, truth = explicit_low_rank(100, 80, 3, 0.3, 0.1, seed=7, rating_scale=(1, 5))
    b, _ = explicit_low_rank(100, 80, 3, 0.3, 0.1, seed=7, rating_scale=(1, 5))
    np.testing.assert_array_equal(a.values, b.values)
    assert a.values.min() >= 1 and a.values.max() <= 5 and a.rating_scale == (1.0, 5.0)
    resid = a.values - truth.ratings(a.users, a.items, clip=True)
    assert np.sqrt(np.mean(resid ** 2)) <= 0.3 * 1.05


def test_implicit_power_law_shape_and_popularity():
    d = implicit_power_law(2000, 1000, 50_000, popularity_exponent=1.0, activity_exponent=0.5,
                           seed=3)
    assert d.nnz == 50_000 and d.implicit and np.all(d.values == 1)
    key = d.users.astype(np.int64) * d.n_items + d.items
    assert np.all(np.diff(key) > 0)  # distinct pairs
    counts = np.sort(np.bincount(d.items, minlength=1000))[::-1]
    # Zipf-like: the top 10% of items hold far more than 10% of interactions.
    assert counts[:100].sum() > 0.4 * d.nnz
    again = implicit_power_law(2000, 1000, 50_000, 1.0, 0.5, seed=3)
    np.testing.assert_array_equal(again.items, d.items)


def test_sample_loads_with_titles():
    d = load_sample()
    s = d.summary()
    assert 500 <= s["users"] <= 700 and 300 <= s["items"] <= 500 and s["ratings"] == 30_000
    assert set(np.unique(d.values)) <= {1, 2, 3, 4, 5} and d.rating_scale == (1.0, 5.0)
    assert d.item_titles[0] == f"Item {d.item_ids[0]}" and d.timestamps is not None


def test_sample_regenerates_byte_identical(tmp_path):
    pkg = ROOT / "tfmf" / "data" / "sample"
    subprocess.run([sys.executable, "-m", "pipelines.make_sample", "--out", str(tmp_path)],
                   cwd=ROOT, check=True, capture_output=True)
    for name in ("sample.csv.gz", "items.json"):
        assert (tmp_path / name).read_bytes() == (pkg / name).read_bytes(), name
    assert (pkg / "sample.csv.gz").stat().st_size < 2_000_000
