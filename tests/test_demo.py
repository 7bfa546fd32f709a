"""The demo on the embedded sample: learned models beat the baselines (issue 16's acceptance).

The fast test trains the closed-form models (seconds); the slow one runs every sample config
exactly as `make demo` does.
"""
from __future__ import annotations

import os

import pytest

import tfmf  # noqa: F401
from tfmf import demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RANKING = {"ease", "ials", "mult_vae", "mult_dae"}
RATING = {"mf", "biased_mf", "als", "bayesian_mf"}


def _config(name: str) -> str:
    return os.path.join(ROOT, "configs", f"sample_{name}.yaml")


def _check(rows) -> None:
    ratios = demo.relative_to_baseline(rows)
    metrics = {name: m for name, m, _ in rows}
    for name in RANKING & set(metrics):
        # NDCG@100 at least 1.2x popularity's (measured ~1.5x for every model).
        assert ratios[name] >= 1.2, (name, metrics[name]["ndcg@100"], metrics["popularity"])
    for name in RATING & set(metrics):
        assert metrics[name]["rmse"] < metrics["bias_baseline"]["rmse"] - 0.05, (
            name, metrics[name]["rmse"], metrics["bias_baseline"]["rmse"])


def test_closed_form_models_beat_the_baselines(tmp_path, capsys):
    names = ["popularity", "ease", "ials", "bias_baseline", "als"]
    rows = demo.run_configs([_config(n) for n in names], str(tmp_path))
    assert [r[0] for r in rows] == names
    _check(rows)
    table = demo.format_table(rows)
    assert "vs popularity" in table and "vs bias_baseline" in table


def test_baseline_column_needs_the_baseline():
    rows = [("mf", {"rmse": 0.9, "mae": 0.7}, 1.0)]
    assert demo.relative_to_baseline(rows) == {}
    assert "vs" not in demo.format_table(rows)


@pytest.mark.slow
def test_every_sample_config_beats_its_baseline(tmp_path, capsys):
    rows = demo.run_configs(demo.sample_configs(), str(tmp_path))
    assert RANKING | RATING | {"popularity", "bias_baseline"} <= {r[0] for r in rows}
    _check(rows)
