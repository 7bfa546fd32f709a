"""pipelines/bench_ease.py (``speed-ease``) at --scale tiny: every table and column it promises."""
import json

import pytest

import tfmf  # noqa: F401
from pipelines import benchmark as bench


@pytest.mark.slow
def test_speed_ease_tiny(tmp_path):
    assert bench.main(["speed-ease", "--scale", "tiny", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "speed-ease-tiny.json").read_text())
    tables = result["tables"]
    shape = next(rows for title, rows in tables.items() if title.startswith("ML-20M shape"))
    assert [r["library"] for r in shape] == ["numpy", "tfmf", "tfmf"]
    for r in shape:
        assert r["outcome"] == "ok" and r["fit_x_numpy"] > 0 and 0.9 <= r["top-20 overlap"] <= 1
    mid = next(rows for title, rows in tables.items() if title.startswith("Synthetic"))
    assert {r["library"] for r in mid} == {"tfmf", "numpy"}
    ndcg = [r["ndcg@100"] for r in mid]
    assert max(ndcg) - min(ndcg) < 1e-3  # float32 tfmf ranks like the float64 peer
