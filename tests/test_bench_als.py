"""pipelines/bench_als.py: the speed-ials suite at --scale tiny writes its rows (no timings
asserted: benchmarks are not tests)."""
from __future__ import annotations

import json

import pytest

import tfmf  # noqa: F401  (Keras 2 before TensorFlow)
from pipelines import benchmark as bench


def test_speed_ials_tiny_reports_both_libraries_per_scale_and_solver(tmp_path):
    pytest.importorskip("implicit")
    assert bench.main(["speed-ials", "--scale", "tiny", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "speed-ials-tiny.json").read_text())
    tables = result["tables"]
    assert "ML-20M shape: seconds per iteration" in tables and "mid: fit seconds per fold" in tables
    for title, rows in tables.items():
        assert {r["library"] for r in rows} == {"tfmf", "implicit"}, title
        for row in rows:
            assert 0.0 <= row["ndcg@100"] <= 1.0 and row["x_implicit"] > 0
    solvers = {r["solver"] for r in tables["mid: fit seconds per fold"]}
    assert solvers == {"cholesky", "cg"}
