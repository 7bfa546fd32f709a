"""The run directory's owner: lock (live and stale), atomic writes, the finished-run check."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tfmf.errors import ConfigError
from tfmf.fileio import atomic_write, atomic_write_text
from tfmf.rundir import LOCK, RunDir


def test_a_live_owner_keeps_the_directory_and_a_stale_lock_is_taken_over(tmp_path):
    rd = RunDir(tmp_path / "run")
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.makedirs(rd.path)
        (tmp_path / "run" / LOCK).write_text(f"{owner.pid}\n")
        with pytest.raises(ConfigError) as e:
            rd.prepare("model: {name: mf}\n")
        assert str(owner.pid) in str(e.value) and e.value.key == "run_name"
        assert not (tmp_path / "run" / "config.yaml").exists()  # nothing written
    finally:
        owner.kill()
        owner.wait()
    # The owner is gone: its lock is stale, and the next run takes it.
    rd.prepare("model: {name: mf}\n")
    assert (tmp_path / "run" / LOCK).read_text().strip() == str(os.getpid())
    assert (tmp_path / "run" / "config.yaml").read_text() == "model: {name: mf}\n"
    rd.unlock()
    assert not (tmp_path / "run" / LOCK).exists()


def test_two_cli_runs_into_one_directory(tmp_path):
    """A second `tfmf train` into a directory in use exits 2 naming the owner's pid."""
    run = tmp_path / "run"
    first = RunDir(run)
    first.prepare("model: {name: mf}\n")
    try:
        config = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs",
                              "sample_biased_mf.yaml")
        res = subprocess.run([sys.executable, "-m", "tfmf", "train", "--config", config,
                              "--run-dir", str(run), "--set", "train.epochs=1", "--quiet"],
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 2, res.stderr[-2000:]
        assert f"in use by process {os.getpid()}" in res.stderr
    finally:
        first.unlock()


def test_a_failed_atomic_write_leaves_the_previous_file(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_text(path, "old")

    def broken(tmp):
        with open(tmp, "w") as fh:
            fh.write("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(path, broken)
    assert path.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["metrics.json"]  # no temporary left behind


def test_finished_run_check_names_the_missing_file(tmp_path):
    rd = RunDir(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        rd.check_finished()
    assert "config.yaml" in str(e.value)
