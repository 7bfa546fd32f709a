"""`tfmf train --resume`: a run stopped after N epochs and resumed to M reaches the same weights
as an uninterrupted M-epoch run (deterministic mode; data order is seeded by (seed, epoch))."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

import tfmf  # noqa: F401

from tfmf.cli import main
from tfmf.config import load_config

MODEL = "biased_mf"
SETTINGS = [
    f"model.name={MODEL}",
    "model.embedding_dim=8",
    "data.source=sample",
    "data.split={kind: holdout, test_fraction: 0.2, seed: 0}",
    "train.deterministic=true",
    "train.batch_size=2048",
    "train.optimizer=adam",
    "train.learning_rate=0.01",
    "train.schedule=exponential",  # the LR depends on the restored step count
    "train.decay_steps=20",
    "train.decay_rate=0.9",
    "train.verbose=0",
]


@pytest.fixture(autouse=True, scope="module")
def _determinism():
    from tensorflow.python.framework import config as tf_config

    was_enabled = tf_config.is_op_determinism_enabled()
    yield
    # enable_op_determinism is process-global and has no public "off" switch: restore the
    # previous state so later test modules (unseeded random ops) are unaffected.
    if not was_enabled:
        tf_config.disable_op_determinism()


def _train(run_dir, epochs: int, resume: bool = False) -> int:
    args = ["train", "--set", f"train.epochs={epochs}"]
    for s in SETTINGS:
        args += ["--set", s]
    if resume:
        args += ["--resume", str(run_dir)]
    else:
        base = run_dir.parent / "base.yaml"
        base.write_text("output_dir: runs\n")
        args += ["--config", str(base), "--run-dir", str(run_dir)]
    return main(args)


def _weights(run_dir) -> list[np.ndarray]:
    from tfmf.models.base import Recommender

    model = Recommender.load(os.path.join(run_dir, "model"))
    return model.model.get_weights()


def test_resume_reaches_the_uninterrupted_weights(tmp_path):
    interrupted, straight = tmp_path / "interrupted", tmp_path / "straight"
    assert _train(interrupted, epochs=1) == 0
    first = json.loads((interrupted / "metrics.json").read_text())
    assert _train(interrupted, epochs=3, resume=True) == 0
    assert _train(straight, epochs=3) == 0

    a, b = _weights(interrupted), _weights(straight)
    assert len(a) == len(b) >= 4
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)

    # The resumed run continued (epochs 2-3), it did not restart: history has 3 epochs whose
    # first is the interrupted run's.
    with open(interrupted / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    with open(straight / "history.csv") as fh:
        ref = list(csv.DictReader(fh))
    np.testing.assert_allclose([float(r["loss"]) for r in rows], [float(r["loss"]) for r in ref],
                               rtol=1e-6)
    # metrics.json, the config snapshot and the learning curve describe the finished 3-epoch run.
    final = json.loads((interrupted / "metrics.json").read_text())
    assert final["metrics"] != first["metrics"]
    assert final["metrics"] == json.loads((straight / "metrics.json").read_text())["metrics"]
    assert load_config(str(interrupted / "config.yaml")).train.epochs == 3
    for name in ("learning_curve.png", "tensorboard", "checkpoints"):
        assert (interrupted / name).exists(), name
    assert not [p for p in os.listdir(interrupted) if ".tmp" in p]


def test_resume_of_a_run_without_checkpoints_fails_cleanly(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(f"model: {{name: {MODEL}}}\n")
    code = main(["train", "--resume", str(run_dir), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "nothing to resume" in err and str(run_dir) in err


def test_resume_with_other_model_settings_is_refused_before_touching_the_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert _train(run_dir, epochs=1) == 0
    before = {p: (run_dir / p).read_bytes() for p in ("metrics.json", "config.yaml")}
    args = ["train", "--resume", str(run_dir), "--quiet", "--set", "train.epochs=2"]
    for s in SETTINGS + ["model.embedding_dim=16"]:
        args += ["--set", s]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "model.embedding_dim" in err and "16" in err and "8" in err
    # The finished 1-epoch run is still intact: metrics and snapshot as they were.
    assert {p: (run_dir / p).read_bytes() for p in before} == before


def test_resume_may_move_the_data(tmp_path):
    """data_dir/download say where the data is, not what it is: they may change on resume."""
    from tfmf.runner import check_resumable

    run_dir = tmp_path / "run"
    assert _train(run_dir, epochs=1) == 0
    cfg = load_config(str(run_dir / "config.yaml"), overrides=["data.data_dir=/elsewhere",
                                                                "data.download=true"])
    check_resumable(str(run_dir), cfg)  # no error
