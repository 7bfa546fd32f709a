"""pipelines/bench_scale.py: every stage's config validates, and the load stage's figures.

The suites themselves run for minutes to hours (``scale-ml20m``/``scale-netflix``); their
``--scale tiny`` smoke run takes ~1.5 minutes, too long here. These checks are the cheap part.
"""
from __future__ import annotations

import json

import pytest

from pipelines import bench_scale
from tfmf.config import config_from_dict


@pytest.mark.parametrize("stage", list(bench_scale.MODELS))
def test_every_stage_config_validates(stage, tmp_path):
    raw = bench_scale._raw_config(str(tmp_path / "shards"), stage, str(tmp_path), 138_493, False)
    cfg = config_from_dict(json.loads(json.dumps(raw)))
    assert cfg.model_name == stage and cfg.train.verbose == 0
    explicit = bench_scale.MODELS[stage][1]
    assert cfg.data.split.kind == ("holdout" if explicit else "strong")
    if not explicit:  # 10,000 held-out users, on the positives
        assert round(cfg.data.split.test_fraction * 138_493) == bench_scale.HELD_OUT_USERS
        assert cfg.data.binarize_threshold == 4.0


def test_load_stage_reads_and_converts(tmp_path):
    from pipelines.bench_data import write_ratings_csv
    from tfmf.data.shards import read_manifest

    csv = str(tmp_path / "r.csv")
    rows = write_ratings_csv(csv, 300, 120, 9_000, seed=1)
    out = bench_scale.stage_load_convert(csv, str(tmp_path / "shards"))
    assert out["rows"] == rows and out["users"] == 300
    assert 0 < out["load_peak_rss"] <= out["peak_rss"]
    m = read_manifest(tmp_path / "shards")
    assert m["nnz"] == rows and len(m["shards"]) == 12
