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


def test_a_model_stage_then_its_export_in_a_process_of_its_own(tmp_path):
    """EASE through the runner, then ``stage_export`` (what the suite runs in a second
    process): a SavedModel whose top-k is the saved model's, with the export's own peak RSS."""
    import numpy as np
    import tensorflow as tf

    from pipelines.bench_data import write_ratings_csv
    from tfmf.runner import load_run

    csv = str(tmp_path / "r.csv")
    write_ratings_csv(csv, 400, 150, 12_000, seed=2)
    shards = str(tmp_path / "shards")
    bench_scale.stage_load_convert(csv, shards)
    r = bench_scale.stage_model(shards, "ease", str(tmp_path), 400, True)
    assert r["metrics"]["ndcg@100"] > 0 and "export_seconds" not in r
    e = bench_scale.stage_export(str(tmp_path / "ease"))
    assert 0 < e["export_idle_rss"] <= e["export_peak_rss"]
    run = load_run(str(tmp_path / "ease"))
    user = int(run.ids["user_ids"][0])
    served = tf.saved_model.load(str(tmp_path / "ease" / "export"))
    got = served.signatures["recommend"](users=tf.constant([user], tf.int64))
    want = run.model.recommend(np.array([0]), k=100)[0]
    np.testing.assert_array_equal(got["item_ids"].numpy()[0][:5],
                                  run.ids["item_ids"][np.asarray(want)[0][:5]])
