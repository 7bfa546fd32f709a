"""Distributed ALS / iALS (tfmf.models.als + als_distributed) under real ``horovodrun --gloo``.

The tests launch this file (``python tests/test_als_distributed.py worker <mode> <out_dir>``)
once in one plain process and once under ``horovodrun -np 2``; each run's rank 0 writes the
factors after three sweeps of every solver variant, each rank the entries of the training
matrix it keeps. Nothing is mocked.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
HOROVODRUN = os.path.join(os.path.dirname(PY), "horovodrun")
#: (label, ALSSolver keyword arguments); iALS and explicit (biased) ALS, both solvers.
VARIANTS = [
    ("ials_cg", dict(alpha=4.0, solver="cg", regularization=0.5, weighted_lambda=False)),
    ("ials_cholesky", dict(alpha=4.0, solver="cholesky", regularization=0.5,
                           weighted_lambda=True)),
    ("als_biased_cholesky", dict(biased=True, solver="cholesky", regularization=0.1,
                                 weighted_lambda=True)),
    ("als_cg", dict(solver="cg", regularization=0.1, weighted_lambda=True)),
    # Rows read per rank: each rank is given only its users' rows (local_rows).
    ("ials_cg_local", dict(alpha=4.0, solver="cg", regularization=0.5, weighted_lambda=False,
                           local_rows=True)),
    ("als_biased_cholesky_local", dict(biased=True, solver="cholesky", regularization=0.1,
                                       weighted_lambda=True, local_rows=True)),
]
SWEEPS, DIM = 3, 6


def _data(implicit: bool):
    from tfmf.data.synthetic import explicit_low_rank, implicit_power_law

    if implicit:
        return implicit_power_law(120, 90, 1500, seed=3).to_csr()
    data, _ = explicit_low_rank(110, 80, rank=3, noise=0.2, density=0.15, seed=4)
    return data.to_csr()


def worker(mode: str, out_dir: str) -> None:
    import tfmf  # noqa: F401  (Keras 2 before TensorFlow)
    import tensorflow as tf

    from tfmf import distributed
    from tfmf.models.als import ALSSolver

    distributed.init()
    rank = distributed.rank()
    out: dict[str, np.ndarray] = {}
    held = {}
    for label, kw in VARIANTS:
        implicit = "alpha" in kw
        train = _data(implicit)
        mu = float(train.data.mean()) if kw.get("biased") else 0.0
        if kw.get("local_rows") and distributed.size() > 1:
            # What a rank reads from shards: a contiguous, rank-ordered block of users (uneven).
            cut = int(train.shape[0] * 0.4)
            lo, hi = (0, cut) if rank == 0 else (cut, train.shape[0])
            keep = np.zeros(train.shape[0], np.float32)
            keep[lo:hi] = 1
            import scipy.sparse as sp

            train = sp.csr_matrix(sp.diags(keep) @ train)
            train.eliminate_zeros()
        solver = ALSSolver(train, mu=mu, chunk_size=16, **kw)
        held[label] = int(sum(len(b.cols) for b in solver.users.blocks)
                          + sum(len(b.cols) for b in solver.items.blocks))
        # Ranks start differently: the solver must take rank 0's start (as one process does).
        rng = np.random.default_rng(rank)
        U = tf.constant(0.1 * rng.standard_normal((train.shape[0], DIM)), tf.float32)
        V = tf.constant(0.1 * rng.standard_normal((train.shape[1], DIM)), tf.float32)
        bu = tf.fill([train.shape[0]], float(rank)) if kw.get("biased") else None
        bi = tf.fill([train.shape[1]], float(rank)) if kw.get("biased") else None
        sweeps = 10_000 if mode == "kill" else SWEEPS
        for sweep in range(sweeps):
            U, bu = solver.user_step(U, V, bu, bi)
            V, bi = solver.item_step(U, V, bu, bi)
            losses = solver.losses(U, V, bu, bi)
            if mode == "kill" and rank == 1 and sweep == 2:
                with open(os.path.join(out_dir, "killed_at"), "w") as fh:
                    fh.write(repr(time.time()))
                os.kill(os.getpid(), signal.SIGKILL)  # mid-fit, between two collectives
        out[f"{label}_U"], out[f"{label}_V"] = np.asarray(U), np.asarray(V)
        if bu is not None:
            out[f"{label}_bu"], out[f"{label}_bi"] = np.asarray(bu), np.asarray(bi)
        out[f"{label}_loss"] = np.array(losses["loss"])
        held[f"{label}_total"] = 2 * int(solver.nnz)
    if rank == 0:
        np.savez(os.path.join(out_dir, "factors.npz"), **out)
    with open(os.path.join(out_dir, f"held{rank}.json"), "w") as fh:
        json.dump({"size": distributed.size(), **held}, fh)


def _env() -> dict:
    env = {**os.environ, "HOROVOD_GLOO_TIMEOUT_SECONDS": "30", "CUDA_VISIBLE_DEVICES": "",
           "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), ROOT) if p)
    return env


def _run(cmd: list[str], timeout: float) -> subprocess.Popen:
    # start_new_session + killpg: a hang must not leave orphaned ranks behind.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        proc.stdout_text, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{cmd[0]} did not finish within {timeout}s (hang)")
    return proc


def _horovodrun(np_: int, mode: str, out_dir, timeout: float) -> subprocess.Popen:
    if not os.path.exists(HOROVODRUN):
        pytest.skip("horovodrun is not installed in this environment")
    return _run([HOROVODRUN, "--gloo", "-np", str(np_), "-H", f"localhost:{np_}",
                 "--start-timeout", "30", PY, os.path.abspath(__file__), "worker", mode,
                 str(out_dir)], timeout)


@pytest.mark.slow
@pytest.mark.horovod
def test_two_ranks_reach_the_single_process_factors(tmp_path):
    single, dist = tmp_path / "single", tmp_path / "np2"
    single.mkdir()
    dist.mkdir()
    proc = _run([PY, os.path.abspath(__file__), "worker", "train", str(single)], 120)
    assert proc.returncode == 0, proc.stdout_text[-3000:]
    proc = _horovodrun(2, "train", dist, 120)
    assert proc.returncode == 0, proc.stdout_text[-3000:]
    want, got = np.load(single / "factors.npz"), np.load(dist / "factors.npz")
    assert sorted(want.files) == sorted(got.files)
    for key in want.files:
        scale = float(np.abs(want[key]).max())
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-4 * scale,
                                   err_msg=key)
    # Each rank keeps only its users' rows and its items' columns: about half the entries.
    held = [json.loads((dist / f"held{r}.json").read_text()) for r in range(2)]
    one = json.loads((single / "held0.json").read_text())
    assert held[0]["size"] == 2 and one["size"] == 1
    for label, _ in VARIANTS:
        assert one[label] == one[f"{label}_total"]
        assert held[0][label] + held[1][label] == one[label]
        assert max(h[label] for h in held) <= 0.6 * one[label], (label, held)


@pytest.mark.slow
@pytest.mark.horovod
def test_a_killed_rank_ends_the_distributed_fit_non_zero(tmp_path):
    proc = _horovodrun(2, "kill", tmp_path, 120)
    ended = time.time()
    assert proc.returncode != 0, proc.stdout_text[-3000:]
    killed_at = float((tmp_path / "killed_at").read_text())
    assert ended - killed_at < 60, f"job ended {ended - killed_at:.0f}s after the kill"


#: iALS through the runner (tfmf train's path), sized so a sweep takes a noticeable time.
RESTART_ITERATIONS = 10
RESTART_CONFIG = {
    "model": {"name": "ials", "factors": 8, "iterations": RESTART_ITERATIONS, "solver": "cg",
              "seed": 5},
    "data": {"source": "synthetic-implicit", "split": {"kind": "none"},
             "synthetic": {"n_users": 4000, "n_items": 1500, "nnz": 120_000, "seed": 2}},
    "train": {"verbose": 0, "checkpoint_every": 1},
}


def _restart_config(run_dir: str) -> dict:
    """RESTART_CONFIG on the shards beside ``run_dir`` (read per rank under horovodrun)."""
    shards = os.path.join(os.path.dirname(run_dir), "shards")
    return {**RESTART_CONFIG, "data": {"source": shards, "split": {"kind": "none"}}}


def _write_restart_shards(tmp_path) -> None:
    from tfmf.config import config_from_dict
    from tfmf.data.loading import load_dataset
    from tfmf.data.shards import write_shards

    cfg = config_from_dict(RESTART_CONFIG)
    write_shards(load_dataset(cfg.data), tmp_path / "shards", n_shards=5)


def fit_worker(run_dir: str, resume: bool) -> None:
    """``runner.train`` of RESTART_CONFIG (under horovodrun or in one process)."""
    import tfmf  # noqa: F401

    from tfmf import distributed, runner
    from tfmf.config import config_from_dict

    distributed.init()
    with open(f"{run_dir}.pid{distributed.rank()}", "w") as fh:
        fh.write(str(os.getpid()))
    cfg = config_from_dict(_restart_config(run_dir))
    if distributed.size() > 1:
        assert runner.reads_per_rank(cfg)
    runner.train(cfg, run_dir, resume=resume)


def _history(run_dir) -> list[list[str]]:
    path = os.path.join(run_dir, "history.csv")
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [line.rstrip("\n").split(",") for line in fh.readlines()[1:] if line.strip()]


def _factors(run_dir) -> dict[str, np.ndarray]:
    from tfmf.runner import load_run

    m = load_run(str(run_dir)).model.model
    return {"U": np.asarray(m.user_factors), "V": np.asarray(m.item_factors)}


@pytest.mark.slow
@pytest.mark.horovod
def test_a_restart_after_a_killed_rank_resumes_from_the_last_completed_sweep(tmp_path):
    """horovodrun -np 2 iALS through the runner on shards read per rank (each rank holds its
    users' rows and its items' columns); rank 1 is SIGKILLed from outside mid-fit; the job
    exits non-zero within 60 s; ``--resume`` continues from the last checkpointed sweep (the
    sweeps before it are not redone) and ends with one process's uninterrupted factors."""
    from tfmf.training.callbacks import completed_epochs

    if not os.path.exists(HOROVODRUN):
        pytest.skip("horovodrun is not installed in this environment")
    _write_restart_shards(tmp_path)
    run = tmp_path / "np2"
    cmd = [HOROVODRUN, "--gloo", "-np", "2", "-H", "localhost:2", "--start-timeout", "30", PY,
           os.path.abspath(__file__), "fit", str(run)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 180
        while len(_history(run)) < 2 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the job ended before rank 1 could be killed"
        done_at_kill = len(_history(run))
        assert 2 <= done_at_kill < RESTART_ITERATIONS
        os.kill(int((tmp_path / "np2.pid1").read_text()), signal.SIGKILL)
        killed_at = time.time()
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode != 0, out[-3000:]
    assert time.time() - killed_at < 60
    completed = completed_epochs(str(run / "checkpoints"), verify=True)
    assert completed is not None and done_at_kill <= completed < RESTART_ITERATIONS, completed
    before = _history(run)[:completed]
    resumed = _run(cmd + ["--resume"], 300)
    assert resumed.returncode == 0, resumed.stdout_text[-3000:]
    after = _history(run)
    assert [int(r[0]) for r in after] == list(range(1, RESTART_ITERATIONS + 1))
    # The completed sweeps' rows (with their own timings) are kept, not recomputed.
    assert after[:completed] == before
    single = tmp_path / "np1"
    proc1 = _run([PY, os.path.abspath(__file__), "fit", str(single)], 300)
    assert proc1.returncode == 0, proc1.stdout_text[-3000:]
    want, got = _factors(single), _factors(run)
    for key in want:
        scale = float(np.abs(want[key]).max())
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-4 * scale,
                                   err_msg=key)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "worker":
        worker(sys.argv[2], sys.argv[3])
    elif len(sys.argv) in (3, 4) and sys.argv[1] == "fit":
        fit_worker(sys.argv[2], resume=sys.argv[3:] == ["--resume"])
    else:
        sys.exit("usage: test_als_distributed.py worker <train|kill> <out_dir> | "
                 "fit <run_dir> [--resume]")
