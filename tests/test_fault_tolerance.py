"""Fault tolerance (issue 10): SIGKILL mid-epoch then ``--resume`` reaches the uninterrupted
result; kills around checkpoint saves never leave a corrupt latest checkpoint or history.csv;
a diverging run stops with TrainingDiverged (exit 2), writes no metrics, keeps a usable
checkpoint.

The kill tests run real ``python -m tfmf train`` processes on the embedded sample data.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import tfmf  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
from tfmf.cli import main

ROOT = Path(__file__).resolve().parents[1]
MF_CONFIG = ROOT / "configs" / "sample_biased_mf.yaml"
# sample: 30000 ratings, holdout 20% -> 24000 training ratings = 24 steps of 1000 per epoch.
STEPS_PER_EPOCH_AT_1000 = 24

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------- helpers
def _train_argv(run_dir: Path, *sets: str) -> list[str]:
    argv = ["train", "--config", str(MF_CONFIG), "--run-dir", str(run_dir), "--quiet"]
    for s in sets:
        argv += ["--set", s]
    return argv


def _spawn(argv: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "tfmf", *argv], stdout=fh,
                                stderr=subprocess.STDOUT, env=env, cwd=log.parent)


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    rc = proc.wait(timeout=timeout)
    assert rc == 0, log.read_text()[-3000:]


def _latest_epoch(run_dir: Path) -> int:
    """Epochs the latest (BackupAndRestore) checkpoint holds (0 when there is none yet)."""
    from tfmf.errors import CheckpointError
    from tfmf.training.callbacks import completed_epochs

    try:
        return completed_epochs(str(run_dir / "checkpoints")) or 0
    except CheckpointError:
        return 0  # caught between the index and the data file of a first save


def _wait_for_checkpoint(proc: subprocess.Popen, run_dir: Path, after_epoch: int, log: Path,
                         timeout: float = 120) -> None:
    """Polls until a checkpoint newer than ``after_epoch`` exists (the process must still run)."""
    deadline = time.monotonic() + timeout
    while _latest_epoch(run_dir) <= after_epoch:
        assert proc.poll() is None, "training ended before its checkpoint:\n" + log.read_text()
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.02)


def _kill(proc: subprocess.Popen) -> None:
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def _history_epochs(run_dir: Path) -> list[int]:
    with open(run_dir / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:  # every value parses: no half-written file
        [float(v) for v in r.values() if v]
    return [int(r["epoch"]) for r in rows]


def _assert_latest_checkpoint_restores(run_dir: Path) -> int:
    """Reads every tensor of the latest checkpoint; returns the epochs it holds."""
    latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints" / "chief"))
    assert latest is not None
    saved = tf.Variable(0, dtype=tf.int64)
    tf.train.Checkpoint(ckpt_saved_epoch=saved).read(latest).expect_partial() \
        .assert_existing_objects_matched()
    reader = tf.train.load_checkpoint(latest)
    for key in reader.get_variable_to_shape_map():
        value = reader.get_tensor(key)  # raises on a truncated data file
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.isfinite(value).all(), f"{key} is not finite in {latest}"
    return int(saved.numpy()) + 1


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())["metrics"]


# --------------------------------------------------------------------------- SIGKILL + resume
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    sets = ("train.deterministic=true", "train.batch_size=32", "train.epochs=4",
            "train.verbose=0")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    log_s, log_k = tmp_path / "straight.log", tmp_path / "killed.log"
    # The reference run goes alongside the victim (2 cores: each is mostly single-threaded).
    ref = _spawn(_train_argv(straight, *sets), log_s)
    victim = _spawn(_train_argv(killed, *sets), log_k)
    try:
        _wait_for_checkpoint(victim, killed, 0, log_k)
        time.sleep(0.25)  # into epoch 2 (~0.7 s per epoch)
        _kill(victim)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert not (killed / "metrics.json").exists() and not (killed / "model").exists()
    interrupted_at = _assert_latest_checkpoint_restores(killed)
    assert 1 <= interrupted_at < 4

    resumed = _spawn(["train", "--resume", str(killed), "--quiet"], log_k)
    _finish(resumed, log_k)
    _finish(ref, log_s)
    a, b = _metrics(killed), _metrics(straight)
    assert a.keys() == b.keys() == {"rmse", "mae"}
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-6), k
    assert _history_epochs(killed) == _history_epochs(straight) == [1, 2, 3, 4]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_stops_at_the_epoch_boundary_and_resume_matches(tmp_path, sig):
    """A scheduler's SIGTERM (or Ctrl-C) mid-epoch: the epoch ends, its checkpoint is written,
    the command exits 2 naming the signal; --resume then reaches the uninterrupted result."""
    sets = ("train.deterministic=true", "train.batch_size=32", "train.epochs=4",
            "train.checkpoint_every=2", "train.verbose=0")
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    log_s, log_k = tmp_path / "straight.log", tmp_path / "stopped.log"
    ref = _spawn(_train_argv(straight, *sets), log_s)
    victim = _spawn(_train_argv(stopped, *sets), log_k)
    try:
        # Wait until epoch 1 is under way (its TensorBoard file exists), then signal.
        deadline = time.monotonic() + 120
        while not (stopped / "tensorboard").exists():
            assert victim.poll() is None, log_k.read_text()
            assert time.monotonic() < deadline, "training did not start in time"
            time.sleep(0.05)
        time.sleep(0.2)
        victim.send_signal(sig)
        rc = victim.wait(timeout=180)
    finally:
        if victim.poll() is None:
            victim.kill()
    out = log_k.read_text()
    assert rc == 2, out[-3000:]
    name = signal.Signals(sig).name
    assert f"stopped by {name} after epoch" in out and "--resume" in out
    stopped_at = int(out.split(f"stopped by {name} after epoch ")[1].split(";")[0])
    assert 1 <= stopped_at < 4
    # checkpoint_every=2, yet the stopping epoch was saved: nothing is lost.
    assert _assert_latest_checkpoint_restores(stopped) == stopped_at
    assert _history_epochs(stopped) == list(range(1, stopped_at + 1))
    assert not (stopped / "metrics.json").exists() and not (stopped / ".lock").exists()
    _finish(_spawn(["train", "--resume", str(stopped), "--quiet"], log_k), log_k)
    _finish(ref, log_s)
    a, b = _metrics(stopped), _metrics(straight)
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-6), k
    assert _history_epochs(stopped) == [1, 2, 3, 4]


def test_kills_around_checkpoint_saves_never_corrupt_the_latest(tmp_path):
    # Tiny epochs (6 steps + validation + a save each): a random kill often lands in a save.
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    sets = ("train.batch_size=4096", "train.epochs=1000", "train.checkpoint_every=1",
            "train.verbose=0", "train.schedule=constant",
            "model.embedding_dim=8")
    rng = np.random.default_rng(0)
    argv = _train_argv(run_dir, *sets)
    done = 0
    for _ in range(3):
        proc = _spawn(argv, log)
        try:
            _wait_for_checkpoint(proc, run_dir, done, log)
            time.sleep(float(rng.uniform(0.0, 0.4)))
            _kill(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
        epoch = _assert_latest_checkpoint_restores(run_dir)
        assert epoch > done
        epochs = _history_epochs(run_dir)
        # history.csv is written before each save: it never lags the checkpoint.
        assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) >= epoch
        assert not (run_dir / "metrics.json").exists()
        done = epoch
        argv = ["train", "--resume", str(run_dir), "--quiet"]
    # The resumed run finishes from the last checkpoint (a few more epochs).
    _finish(_spawn(argv + ["--set", f"train.epochs={done + 2}"], log), log)
    assert _history_epochs(run_dir) == list(range(1, done + 3))
    assert np.isfinite(_metrics(run_dir)["rmse"])


# --------------------------------------------------------------------------- SIGTERM, horovodrun
HOROVODRUN = Path(sys.executable).with_name("horovodrun")


def _horovodrun(run_dir: Path, log: Path, *extra: str) -> subprocess.Popen:
    """``horovodrun --gloo -np 2 python -m pipelines.horovod_train --run-dir RUN ...``."""
    cmd = [str(HOROVODRUN), "--gloo", "-np", "2", "-H", "localhost:2", "--start-timeout", "60",
           sys.executable, "-m", "pipelines.horovod_train", "--run-dir", str(run_dir), *extra]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "HOROVOD_GLOO_TIMEOUT_SECONDS": "60",
           "CUDA_VISIBLE_DEVICES": "", "TF_NUM_INTRAOP_THREADS": "1",
           "TF_NUM_INTEROP_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with open(log, "ab") as fh:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _rank_pid(launcher: subprocess.Popen, rank: int, log: Path, timeout: float = 120) -> int:
    """The pid of the Python process of ``rank`` under ``launcher`` (from its environment)."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert launcher.poll() is None, log.read_text()[-3000:]
        for child in psutil.Process(launcher.pid).children(recursive=True):
            try:
                if ("pipelines.horovod_train" in child.cmdline()
                        and child.environ().get("HOROVOD_RANK") == str(rank)):
                    return child.pid
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        time.sleep(0.1)
    raise AssertionError("rank process not found")


def _end(proc: subprocess.Popen, log: Path, timeout: float = 240) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail("horovodrun did not finish in time (hang):\n" + log.read_text()[-3000:])


@pytest.mark.horovod
@pytest.mark.skipif(not HOROVODRUN.exists(), reason="horovodrun is not installed")
def test_sigterm_to_one_horovod_rank_stops_all_ranks_and_resume_matches(tmp_path):
    """A scheduler's SIGTERM to rank 1 only, under ``horovodrun --gloo -np 2``: both ranks stop
    after the same epoch, once rank 0 has written its checkpoint, and exit 2 with the message;
    ``--resume`` under horovodrun then reaches the weights of an uninterrupted run (bitwise)."""
    sets = [a for s in ("train.deterministic=true", "train.batch_size=128", "train.epochs=4",
                        "train.checkpoint_every=2", "train.verbose=0")
            for a in ("--set", s)]
    args = ["--config", str(MF_CONFIG), *sets]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    log_s, log_k = tmp_path / "straight.log", tmp_path / "stopped.log"
    ref = _horovodrun(straight, log_s, *args)
    victim = _horovodrun(stopped, log_k, *args)
    try:
        rank1 = _rank_pid(victim, 1, log_k)
        deadline = time.monotonic() + 180
        # Epoch 1 has ended on rank 0, so rank 1 is inside the fit too (its handler is in
        # place: a signal before the fit starts ends a rank at once, like any process).
        while not (stopped / "history.csv").exists() or \
                len((stopped / "history.csv").read_text().splitlines()) < 2:
            assert victim.poll() is None, log_k.read_text()[-3000:]
            assert time.monotonic() < deadline, "training did not start in time"
            time.sleep(0.05)
        os.kill(rank1, signal.SIGTERM)
        rc = _end(victim, log_k)
    finally:
        if victim.poll() is None:
            os.killpg(victim.pid, signal.SIGKILL)
    out = log_k.read_text()
    assert rc != 0, out[-3000:]
    # No rank prints a traceback (horovodrun itself reports the non-zero exit with one), and
    # rank 0 reaches its own exit message, which it prints only after the epoch's checkpoint
    # is saved (horovodrun may terminate it right after that, before reporting its exit code,
    # so "Process 0 exit ..." is not always printed).
    assert not [ln for ln in out.splitlines() if ln.startswith("[") and "Traceback" in ln]
    assert "Process 1 exit with status code 2." in out, out[-3000:]
    msg1 = "error (rank 1): stopped by SIGTERM after epoch "
    msg0 = "error (rank 0): stopped by a signal to another rank after epoch "
    assert msg1 in out and msg0 in out, out[-3000:]
    n1 = int(out.split(msg1)[1].split(";")[0])
    n0 = int(out.split(msg0)[1].split(";")[0])
    assert n0 == n1 and 1 <= n1 < 4, out[-3000:]
    assert "--resume" in out.split(msg0)[1].splitlines()[0]
    # checkpoint_every=2, yet the stopping epoch was saved before any rank exited.
    assert _assert_latest_checkpoint_restores(stopped) == n1
    assert _history_epochs(stopped) == list(range(1, n1 + 1))
    assert not (stopped / "metrics.json").exists() and not (stopped / ".lock").exists()

    resumed = _horovodrun(stopped, log_k, "--config", str(MF_CONFIG), "--resume", *sets)
    assert _end(resumed, log_k) == 0, log_k.read_text()[-3000:]
    assert _end(ref, log_s) == 0, log_s.read_text()[-3000:]
    assert _history_epochs(stopped) == _history_epochs(straight) == [1, 2, 3, 4]
    assert _metrics(stopped) == _metrics(straight)
    a, b = _weights(stopped / "model"), _weights(straight / "model")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# --------------------------------------------------------------------------- corrupt checkpoint
def test_resume_falls_back_from_a_corrupt_latest_checkpoint_to_the_same_weights(tmp_path,
                                                                               capsys):
    """The latest of the two kept checkpoints is truncated: --resume warns, restarts from the
    previous one and still reaches the weights of an uninterrupted run (bitwise)."""
    sets = ("train.deterministic=true", "train.schedule=constant", "train.verbose=0")
    run, straight = tmp_path / "run", tmp_path / "straight"
    assert main(_train_argv(run, *sets, "train.epochs=3")) == 0, capsys.readouterr().err
    chief = run / "checkpoints" / "chief"
    assert sorted(p.name for p in chief.glob("*.index")) == ["ckpt-2.index", "ckpt-3.index"]
    data = chief / "ckpt-3.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    code = main(["train", "--resume", str(run), "--quiet", "--set", "train.epochs=5"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert (f"tfmf: warning: the checkpoint {chief / 'ckpt-3'} cannot be restored" in err
            and f"resuming from the previous one, {chief / 'ckpt-2'} (epoch 2)" in err), err
    moved = run / "checkpoints" / "corrupt"
    assert sorted(p.name for p in moved.iterdir()) == ["ckpt-3.data-00000-of-00001",
                                                      "ckpt-3.index"]
    assert main(_train_argv(straight, *sets, "train.epochs=5")) == 0, capsys.readouterr().err
    assert _history_epochs(run) == _history_epochs(straight) == [1, 2, 3, 4, 5]
    assert _metrics(run) == _metrics(straight)
    a, b = _weights(run / "model"), _weights(straight / "model")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # The kept pair rotates on as before: the last two saves.
    assert sorted(p.name for p in chief.glob("*.index")) == ["ckpt-4.index", "ckpt-5.index"]


# --------------------------------------------------------------------------- divergence
@pytest.mark.parametrize("boundary, huge, epoch", [
    # The LR jumps mid-epoch 3: the loss becomes non-finite there.
    (2 * STEPS_PER_EPOCH_AT_1000 + 5, "1.0e6", 3),
    # The LR becomes inf for the very last step of epoch 2: that step's loss is still finite,
    # but its update leaves non-finite weights, which must not be checkpointed or saved.
    (2 * STEPS_PER_EPOCH_AT_1000 - 2, ".inf", 2),
])
def test_divergence_stops_cleanly_and_keeps_a_usable_checkpoint(tmp_path, capsys, boundary,
                                                                huge, epoch):
    run_dir = tmp_path / "run"
    code = main(_train_argv(run_dir, "train.optimizer=sgd", "train.batch_size=1000",
                            "train.epochs=4", "train.schedule=piecewise",
                            f"train.boundaries=[{boundary}]", f"train.values=[0.01, {huge}]"))
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"training diverged at epoch {epoch}, step" in err and "Traceback" not in err
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "model").exists()
    # The last good checkpoint (end of the previous epoch) restores with finite weights...
    assert _assert_latest_checkpoint_restores(run_dir) == epoch - 1
    # ...and training resumes from it once the learning rate is fixed.
    code = main(["train", "--resume", str(run_dir), "--quiet", "--set", "train.schedule=constant",
                 "--set", "train.learning_rate=0.01"])
    assert code == 0, capsys.readouterr().err
    assert 0.5 < _metrics(run_dir)["rmse"] < 1.5
    assert _history_epochs(run_dir) == [1, 2, 3, 4]


# --------------------------------------------------------------------------- full disk
def _mount_tmpfs(where: Path, size: str) -> str | None:
    """Mounts a size-limited tmpfs at ``where``; returns why not when this host forbids it."""
    where.mkdir()
    try:
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, text=True, timeout=30)
    except OSError as exc:  # no mount(8)
        return f"mount -t tmpfs: {exc}"
    if res.returncode != 0:
        return f"mount -t tmpfs -o size={size} failed: {res.stderr.strip() or res.returncode}"
    return None


@pytest.fixture
def small_fs(tmp_path):
    """A real 8 MB filesystem (tmpfs with a size) under tmp_path; skipped where mounting is not
    permitted (not root, no CAP_SYS_ADMIN, a container without mount rights)."""
    fs = tmp_path / "fs"
    why = _mount_tmpfs(fs, "8m")
    if why is not None:
        pytest.skip(f"no size-limited filesystem: {why}")
    try:
        yield fs
    finally:
        subprocess.run(["umount", "-l", str(fs)], capture_output=True, timeout=30)


def _free(fs: Path) -> int:
    st = os.statvfs(fs)
    return st.f_bavail * st.f_frsize


def _fill(fs: Path, leave: int) -> None:
    """Allocates fs/filler so that about ``leave`` bytes stay free (tmpfs counts 4 KB pages)."""
    filler = fs / "filler"
    if filler.exists():
        filler.unlink()
    n = _free(fs) - leave
    if n > 0:
        fd = os.open(filler, os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            os.posix_fallocate(fd, 0, n)
        finally:
            os.close(fd)
    assert _free(fs) <= leave + 8192


def _unfill(fs: Path) -> None:
    (fs / "filler").unlink()


def _leftovers(run_dir: Path) -> list[str]:
    """Temporary files or directories a failed write could have left behind."""
    return [str(p) for p in run_dir.rglob("*") if ".tmp" in p.name or p.name.endswith("_temp")]


def _weights(model_dir: Path) -> dict:
    reader = tf.train.load_checkpoint(str(model_dir / "weights" / "model"))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}


def test_full_disk_during_training_export_and_metrics_keeps_the_run_valid(small_fs, tmp_path,
                                                                          capsys):
    """Writes that fail for lack of space on a real 8 MB filesystem: the end-of-run model/, a
    mid-training checkpoint, a SavedModel export, metrics.json, history.csv and config.yaml.
    Each ends with exit 2 and a message naming the file and what is kept, never a traceback;
    the previous checkpoint and the run directory stay valid, and once space is freed
    ``--resume`` reaches the same weights as an uninterrupted run."""
    from tfmf.fileio import DiskFullError
    from tfmf.rundir import RunDir

    sets = ("train.deterministic=true", "train.schedule=constant", "train.verbose=0")
    run = small_fs / "run"

    def fails(argv, *expected):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, err
        assert "Traceback" not in err and err.count("tfmf: error: ") == 1, err
        for text in expected:
            assert text in err, err
        return err

    # 1. Two checkpoints fit, model/ (~0.45 MB) does not: the run is left resumable.
    _fill(small_fs, 1000 * 1024)
    fails(_train_argv(run, *sets, "train.epochs=2"), f"cannot write {run / 'model'}: No space "
          "left on device", "the run is not finished (no metrics.json) and its last checkpoint "
          f"is kept: free space, then `tfmf train --resume {run}` finishes it")
    assert not (run / "metrics.json").exists() and not (run / "model").exists()
    assert not (run / ".lock").exists() and _leftovers(run) == []
    assert _assert_latest_checkpoint_restores(run) == 2
    _unfill(small_fs)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0, capsys.readouterr().err
    assert _history_epochs(run) == [1, 2] and (run / "metrics.json").exists()
    capsys.readouterr()

    # 2. A checkpoint mid-training (~0.4 MB) does not fit: the previous one is kept.
    _fill(small_fs, 100 * 1024)
    fails(["train", "--resume", str(run), "--quiet", "--set", "train.epochs=4"],
          f"cannot write the checkpoint of epoch 3 to {run / 'checkpoints' / 'chief'}: No space "
          "left on device", "the last checkpoint (epoch 2) is kept and the run directory is "
          f"valid: free space, then continue with `tfmf train --resume {run}`")
    assert _assert_latest_checkpoint_restores(run) == 2 and _leftovers(run) == []
    assert sorted(p.name for p in (run / "checkpoints" / "chief").glob("*.index")) == [
        "ckpt-1.index", "ckpt-2.index"]
    assert _history_epochs(run)[:2] == [1, 2] and not (run / ".lock").exists()
    _unfill(small_fs)
    assert main(["train", "--resume", str(run), "--quiet", "--set", "train.epochs=4"]) == 0, \
        capsys.readouterr().err
    straight = tmp_path / "straight"
    assert main(_train_argv(straight, *sets, "train.epochs=4")) == 0, capsys.readouterr().err
    assert _history_epochs(run) == _history_epochs(straight) == [1, 2, 3, 4]
    assert _metrics(run) == _metrics(straight)
    a, b = _weights(run / "model"), _weights(straight / "model")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    capsys.readouterr()

    # 3. A SavedModel export: a first one succeeds, a second one into the same place does not
    # fit and the first is kept as it was.
    out = small_fs / "export"
    assert main(["export", str(run), "--out", str(out)]) == 0, capsys.readouterr().err
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    _fill(small_fs, 100 * 1024)
    fails(["export", str(run), "--out", str(out)], f"cannot write {out}: No space left on "
          "device; its previous version is kept unchanged and no partial file remains")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert _leftovers(small_fs) == []

    # 4. metrics.json, history.csv and config.yaml on a disk with no page left.
    _fill(small_fs, 0)
    rd = RunDir(run)
    metrics, history = (run / "metrics.json").read_text(), (run / "history.csv").read_text()
    with pytest.raises(DiskFullError, match=r"cannot write .*metrics\.json: No space left on "
                       r"device; its previous version is kept unchanged"):
        rd.write_metrics({"metrics": {}})
    with pytest.raises(DiskFullError, match=r"history\.csv: No space left on device.*"
                       r"free space, then `tfmf train --resume"):
        rd.trim_history(2)
    assert (run / "metrics.json").read_text() == metrics
    assert (run / "history.csv").read_text() == history
    fails(_train_argv(small_fs / "new", *sets), "No space left on device", "nothing was written")
    assert _leftovers(small_fs) == [] and _metrics(run) == _metrics(straight)
