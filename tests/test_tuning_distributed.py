"""Distributed KerasTuner search: a chief and two workers as real processes on localhost."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MAX_TRIALS = 4
TIMEOUT_S = 150


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_chief_and_two_workers_run_every_trial_exactly_once(tmp_path):
    config = tmp_path / "tune.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name": "bias_baseline"},
        "data": {"source": "sample", "split": {"kind": "holdout", "seed": 0}},
        "tune": {"strategy": "random", "max_trials": MAX_TRIALS, "inner_folds": 2,
                 "space": {"model.reg_user": {"type": "float", "min": 1.0, "max": 50.0,
                                              "log": True},
                           "model.reg_item": {"type": "float", "min": 1.0, "max": 50.0,
                                              "log": True}}}}))
    out = tmp_path / "tune"
    logs = tmp_path / "logs"
    logs.mkdir()
    port = free_port()
    procs: dict[str, subprocess.Popen] = {}

    def launch(tuner_id: str) -> None:
        env = dict(os.environ, KERASTUNER_TUNER_ID=tuner_id, KERASTUNER_ORACLE_IP="127.0.0.1",
                   KERASTUNER_ORACLE_PORT=str(port), TFMF_TUNE_WORKERS="2")
        log = open(logs / f"{tuner_id}.log", "w")
        procs[tuner_id] = subprocess.Popen(
            [sys.executable, "-m", "tfmf.tuning", "--config", str(config), "--out", str(out)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    try:
        # All three start together: workers retry the chief with short back-off, and the chief
        # (told TFMF_TUNE_WORKERS=2) serves until both workers have been told to stop.
        for name in ("tuner0", "tuner1", "chief"):
            launch(name)
        deadline = time.monotonic() + TIMEOUT_S
        for name, p in procs.items():
            rc = p.wait(timeout=max(1.0, deadline - time.monotonic()))
            assert rc == 0, f"{name} failed:\n{(logs / f'{name}.log').read_text()[-3000:]}"
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()

    rows = json.loads((out / "trials.json").read_text())["trials"]
    ids = [r["trial_id"] for r in rows]
    assert len(ids) == MAX_TRIALS and len(set(ids)) == MAX_TRIALS
    assert all(r["status"] == "COMPLETED" and len(r["folds"]) == 2 for r in rows)
    # Each trial's results were produced by exactly one worker ...
    runners = {}
    for tid in ids:
        records = sorted((out / "search" / f"trial_{tid}").glob("cv_*.json"))
        assert len(records) == 1, (tid, records)
        rec = json.loads(records[0].read_text())
        assert rec["trial_id"] == tid and rec["tuner_id"] in ("tuner0", "tuner1")
        assert rec["metrics"]["rmse"] == pytest.approx(
            next(r["mean"] for r in rows if r["trial_id"] == tid))
        runners[tid] = rec["tuner_id"]
    # ... and reported exactly once (one progress line per trial across the workers).
    reported = []
    for w in ("tuner0", "tuner1"):
        for line in (logs / f"{w}.log").read_text().splitlines():
            m = re.match(rf"trial \d+/{MAX_TRIALS} \(id (\d+)\) \|", line)
            if m:
                reported.append((m.group(1), w))
    assert sorted(reported) == sorted(runners.items())
    # The chief wrote the report and a best config that loads.
    from tfmf.config import load_config

    best = load_config(out / "best_config.yaml")
    assert best.model.reg_user == pytest.approx(
        min(rows, key=lambda r: r["mean"])["hyperparameters"]["model.reg_user"])
    assert "search over" in (logs / "chief.log").read_text()
