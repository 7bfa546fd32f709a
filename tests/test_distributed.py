"""Horovod data parallelism: single-process no-op behaviour and real `horovodrun --gloo` runs.

The acceptance tests launch this very file under horovodrun (``python tests/test_distributed.py
worker <mode> <out_dir>``); each rank writes ``<out_dir>/rank<r>.json`` and the test process
asserts on the files, so one launch serves several assertions. Nothing is mocked.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import tfmf  # noqa: F401  (selects Keras 2 before TensorFlow)
import tensorflow as tf
import tf_keras
from tfmf import distributed
from tfmf.config import TrainConfig
from tfmf.training import fit as fitting
from tfmf.training.fit import seed_everything
from tfmf.training.model import ComponentLossModel
from tfmf.training.optimizers import LinearWarmup, current_lr, make_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
HOROVODRUN = os.path.join(os.path.dirname(PY), "horovodrun")
N_USERS, N_ITEMS, DIM = 30, 20, 4
B = 16                  # per-rank batch
N_ODD = 203             # not divisible by 2 * B: ranks get uneven example counts
N_EVEN = 8 * 2 * B      # 256: every batch full, so np=2/B and np=1/2B see the same batches


# --------------------------------------------------------------------------- shared helpers
class TinyMF(ComponentLossModel):
    """r = u . v with a non-trainable step counter (like Mult-VAE's anneal_step)."""

    loss_components = ("loss", "data")

    def __init__(self, seed: int = 0):
        super().__init__()
        init = lambda s: tf_keras.initializers.RandomNormal(0.0, 0.5, seed=s)
        self.users = tf_keras.layers.Embedding(N_USERS, DIM, embeddings_initializer=init(seed))
        self.items = tf_keras.layers.Embedding(N_ITEMS, DIM, embeddings_initializer=init(seed + 1))
        self.users.build((None,))
        self.items.build((None,))
        self.seen = tf.Variable(0, dtype=tf.int64, trainable=False, name="seen")

    def compute_losses(self, batch, training=True):
        u, v = self.users(batch["user_id"]), self.items(batch["item_id"])
        pred = tf.cast(tf.reduce_sum(u * v, axis=-1), tf.float32)
        data = tf.reduce_mean(tf.square(pred - batch["rating"]))
        if training:
            self.seen.assign_add(1)
        return {"loss": data, "data": data}


def toy_data(n: int):
    """n rating triples from a rank-2 truth plus noise (deterministic) as InteractionData."""
    from tfmf.data.interactions import InteractionData

    rng = np.random.default_rng(7)
    p, q = rng.normal(size=(N_USERS, 2)), rng.normal(size=(N_ITEMS, 2))
    u = rng.integers(0, N_USERS, n)
    i = rng.integers(0, N_ITEMS, n)
    r = (p[u] * q[i]).sum(1) + 0.1 * rng.normal(size=n)
    return InteractionData(users=u, items=i, values=r, user_ids=np.arange(N_USERS),
                           item_ids=np.arange(N_ITEMS))


def full_loss(weights: list, data) -> float:
    """Mean squared error of TinyMF weights [users, items, seen] on all of ``data``."""
    P, Q = np.asarray(weights[0]), np.asarray(weights[1])
    pred = (P[data.users] * Q[data.items]).sum(1)
    return float(np.mean((pred - data.values) ** 2))


def fit_toy(cfg: TrainConfig, n: int, *, rank: int, size: int, init_seed: int = 0,
            run_dir: str | None = None, callbacks=()) -> tuple[TinyMF, list, dict]:
    """Trains TinyMF on this rank's shard through tfmf's Keras fit and tfmf.data.pipelines;
    returns (model, history, {epoch: the example indices this rank saw})."""
    from tfmf.data.pipelines import rating_dataset, steps_per_epoch
    from tfmf.training.precision import precision_policy

    data = toy_data(n)
    steps = steps_per_epoch(n, cfg.batch_size, size)
    seed_everything(init_seed)
    with precision_policy(cfg.precision):
        model = TinyMF(seed=init_seed)
    fitting.compile_model(model, cfg, steps)
    # The pipeline's batches carry no example ids: record which ratings a rank saw from the
    # (user, item) pairs of its batches, epoch by epoch (pairs are unique in toy_data's
    # positions because each position is looked up by its triple).
    pos = {(int(u), int(i), float(np.float32(r))): k
           for k, (u, i, r) in enumerate(zip(data.users, data.items, data.values))}
    shards: dict[int, list[int]] = {}

    class Record(tf_keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            ds = rating_dataset(data, cfg.batch_size, seed=cfg.seed, epoch=epoch, rank=rank,
                                size=size, shuffle=cfg.shuffle, prefetch=False)
            shards[epoch] = [pos[(int(u), int(i), float(r))] for b in ds
                             for u, i, r in zip(b["user_id"].numpy(), b["item_id"].numpy(),
                                                b["rating"].numpy())]

    ds = rating_dataset(data, cfg.batch_size, seed=cfg.seed, epoch=fitting.epoch_of(model, steps),
                        rank=rank, size=size, shuffle=cfg.shuffle, prefetch=False)
    res = fitting.fit(model, ds, cfg, steps_per_epoch=steps, run_dir=run_dir,
                      callbacks=[Record(), *callbacks])
    return model, res.history, shards


RUN_CONFIG = """
model: {name: biased_mf, embedding_dim: 8, l2: 0.02}
data: {source: sample, split: {kind: holdout, test_fraction: 0.2, seed: 0}}
train: {epochs: 2, batch_size: 512, optimizer: adam, learning_rate: 0.01, verbose: 0}
"""
ADAM_F16 = dict(epochs=3, batch_size=B, optimizer="adam", learning_rate=0.05, shuffle=True,
                precision="mixed_float16", initial_loss_scale=2.0 ** 24, verbose=0, seed=3)
SGD_F32 = dict(epochs=3, batch_size=B, optimizer="sgd", learning_rate=0.1, shuffle=False,
               precision="float32", verbose=0, seed=3)


# --------------------------------------------------------------------------- worker (horovodrun)
class _KillRank1(tf_keras.callbacks.Callback):
    """Rank 1 SIGKILLs itself at the end of epoch 2 (a crashed worker mid-training)."""

    def __init__(self, out_dir: str):
        super().__init__()
        self.out_dir = out_dir

    def on_epoch_end(self, epoch, logs=None):
        if distributed.rank() == 1 and epoch + 1 == 2:
            with open(os.path.join(self.out_dir, "killed_at"), "w") as fh:
                fh.write(repr(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)


def worker(mode: str, out_dir: str) -> None:
    distributed.init()
    r, s = distributed.rank(), distributed.size()
    if mode == "kill":
        fit_toy(TrainConfig(**{**SGD_F32, "epochs": 200}), N_ODD, rank=r, size=s,
                callbacks=[_KillRank1(out_dir)])
        return
    # 1) Adam + mixed_float16 starting from an overflowing loss scale, shuffled shards of an
    #    uneven dataset, and a *rank-dependent* initialisation: only the broadcast after the
    #    first step can make the ranks agree.
    if mode == "keras":
        return keras_worker(out_dir)
    cfg = TrainConfig(**ADAM_F16)
    model, history, shards = fit_toy(cfg, N_ODD, rank=r, size=s, init_seed=100 + r,
                                     run_dir=os.path.join(out_dir, f"run_rank{r}"))
    opt = model.optimizer
    out = {
        "rank": r, "size": s, "chief": distributed.is_chief(),
        "weights": [v.numpy().tolist() for v in model.variables],
        "optimizer": [np.asarray(v.numpy()).tolist() for v in opt.variables()],
        "loss_scale": float(opt.loss_scale.numpy()),
        "shards": shards,
        "steps": [h["steps"] for h in history],
        "loss": [h["loss"] for h in history],
    }
    # 2) Plain SGD, no shuffle, constant LR, same init: the np=1 / batch 2B comparison.
    model2, history2, _ = fit_toy(TrainConfig(**SGD_F32), N_EVEN, rank=r, size=s, init_seed=0)
    out["sgd_weights"] = [v.numpy().tolist() for v in model2.variables]
    out["sgd_steps"] = [h["steps"] for h in history2]
    # 3) A real model end to end: runner.train -> KerasRecommender.fit -> rating_dataset shards,
    #    once with a per-rank run dir (only rank 0 may write) and once via the entry point.
    from pipelines import horovod_train
    from tfmf import runner
    from tfmf.config import load_config

    cfg_path = os.path.join(out_dir, "mf.yaml")
    if r == 0:
        with open(cfg_path, "w") as fh:
            fh.write(RUN_CONFIG)
    distributed.barrier()
    res = runner.train(load_config(cfg_path), os.path.join(out_dir, f"runner_rank{r}"))
    out["mf_weights"] = [v.numpy().tolist() for v in res.model.model.variables]
    out["mf_steps"] = [h["steps"] for h in res.history]
    out["mf_n_train"] = int(res.model._seen.nnz)
    out["entry_rc"] = horovod_train.main(["--config", cfg_path, "--run-dir",
                                          os.path.join(out_dir, "entry"), "--set",
                                          "train.epochs=1"])
    # 4) Shards read per rank (tfmf data convert): each rank holds only its own rows.
    out["per_rank"] = per_rank_worker(out_dir, r)
    with open(os.path.join(out_dir, f"rank{r}.json"), "w") as fh:
        json.dump(out, fh)


#: (model config, split, train) of the per-rank shard runs; 7 shards: uneven ranks.
PER_RANK = {
    "biased_mf": ("{name: biased_mf, embedding_dim: 8, l2: 0.02}",
                  "{kind: holdout, test_fraction: 0.2, seed: 0}", 256, "[rmse, mae]"),
    "mult_vae": ("{name: mult_vae, dims: [16, 8]}",
                 "{kind: strong, test_fraction: 0.2, seed: 0}", 16, "[ndcg, recall]"),
}


def per_rank_worker(out_dir: str, r: int) -> dict:
    """runner.train on a sharded source under horovodrun: what each rank read and trained on."""
    from tfmf import runner
    from tfmf.config import DataConfig, load_config
    from tfmf.data.loading import load_dataset
    from tfmf.data.shards import write_shards

    shards = os.path.join(out_dir, "sample-shards")
    if r == 0:
        write_shards(load_dataset(DataConfig(source="sample")), shards, n_shards=7)
    distributed.barrier()
    res = {}
    for name, (model, split, batch, metrics) in PER_RANK.items():
        cfg_path = os.path.join(out_dir, f"per_rank_{name}.yaml")
        if r == 0:
            with open(cfg_path, "w") as fh:
                fh.write(f"model: {model}\ndata: {{source: {shards}, split: {split}}}\n"
                         f"train: {{epochs: 2, batch_size: {batch}, optimizer: adam, "
                         f"learning_rate: 0.01, verbose: 0}}\neval: {{metrics: {metrics}}}\n")
        distributed.barrier()
        cfg = load_config(cfg_path)
        data = runner.load_data(cfg, per_rank=True)
        _, fit_part, _, _ = runner._rank_fit_part(cfg, data)
        run = runner.train(cfg, os.path.join(out_dir, f"per_rank_{name}"))
        model_ = run.model
        res[name] = {
            "partition": list(data.partition) if data.partition else None,
            "rows": int(data.nnz), "users": sorted(set(data.users.tolist())),
            "fit_rows": int(fit_part.nnz),
            "fit_users": int(np.count_nonzero(np.bincount(fit_part.users))),
            "seen_nnz": int(model_._seen.nnz),
            "iterations": int(model_.model.optimizer.iterations.numpy()),
            "weights": [float(np.asarray(v.numpy(), np.float64).sum())
                        for v in model_.model.trainable_variables],
            "metrics": run.metrics}
    return res


def keras_worker(out_dir: str) -> None:
    """A user's own Keras script: compile + fit with Horovod's optimizer and callbacks only.

    Rank-dependent initialisation and data: only BroadcastGlobalVariablesCallback and the
    gradient allreduce can make the ranks agree. Each rank also reports the epoch logs that
    MetricAverageCallback averaged and the LR that LearningRateWarmupCallback set.
    """
    from tfmf import horovod_keras as hk
    from tfmf.data.pipelines import rating_dataset

    r = hk.rank()
    data = toy_data(N_EVEN)
    seed_everything(0)
    out = {}
    for sparse_as_dense in (False, True):
        model = TinyMF(seed=10 + r + (7 if sparse_as_dense else 0))
        model.compile(optimizer=hk.DistributedOptimizer(
            tf_keras.optimizers.legacy.SGD(0.05, momentum=0.5), sparse_as_dense=sparse_as_dense),
            steps_per_execution=3)
        hist = model.fit(rating_dataset(data, B, seed=1, rank=r, size=hk.size()), epochs=3,
                         verbose=0,
                         callbacks=[hk.BroadcastGlobalVariablesCallback(0),
                                    hk.MetricAverageCallback(),
                                    hk.LearningRateWarmupCallback(initial_lr=0.05,
                                                                  warmup_epochs=2)])
        key = "dense" if sparse_as_dense else "sparse"
        out[key] = {"weights": [v.numpy().tolist() for v in model.variables],
                    "optimizer": [np.asarray(v.numpy()).tolist()
                                  for v in model.optimizer.variables()],
                    "loss": [float(x) for x in hist.history["loss"]],
                    "lr": [float(x) for x in hist.history["lr"]]}
    with open(os.path.join(out_dir, f"keras_rank{r}.json"), "w") as fh:
        json.dump(out, fh)


def horovodrun(np_: int, args: list[str], timeout: float, env: dict | None = None):
    """Runs ``horovodrun --gloo -np N -H localhost:N python ...``; returns (proc, seconds)."""
    if not os.path.exists(HOROVODRUN):
        pytest.skip("horovodrun is not installed in this environment")
    cmd = [HOROVODRUN, "--gloo", "-np", str(np_), "-H", f"localhost:{np_}",
           "--start-timeout", "30", PY] + args
    # One TF thread per op pool and rank: two ranks share this 2-core box (as the launcher does).
    full_env = {**os.environ, "HOROVOD_GLOO_TIMEOUT_SECONDS": "30", "CUDA_VISIBLE_DEVICES": "",
                "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (full_env.get("PYTHONPATH"), ROOT) if p)
    t0 = time.perf_counter()
    # start_new_session + killpg: the hard guard must not leave orphaned ranks behind.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"horovodrun did not finish within {timeout}s (hang)")
    proc.stdout_text = stdout
    return proc, time.perf_counter() - t0


# --------------------------------------------------------------------------- single process
def test_single_process_is_a_noop():
    distributed.init()  # not launched by horovodrun: must not initialise anything
    assert not distributed.launched_by_horovod()
    assert (distributed.size(), distributed.rank(), distributed.local_rank()) == (1, 0, 0)
    assert distributed.is_chief() and not distributed.is_distributed()
    assert distributed.broadcast_object({"x": 1}) == {"x": 1}
    opt = make_optimizer(TrainConfig(), 1)
    assert distributed.distributed_optimizer(opt) is opt
    assert distributed.keras_callbacks() == []


def test_tfmf_trains_with_horovod_unimportable(tmp_path):
    """sys.modules['horovod'] = None makes every `import horovod` fail, as if not installed."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules["horovod"] = None
        import tfmf, tfmf.distributed as d, tfmf.runner, tfmf.training.fit
        sys.path.insert(0, {os.path.join(ROOT, "tests")!r})
        import test_distributed as t
        from tfmf.config import TrainConfig
        d.init()
        assert d.size() == 1 and d.rank() == 0 and d._hvd is None
        model, history, shards = t.fit_toy(TrainConfig(**t.SGD_F32), t.N_ODD, rank=0, size=1)
        assert history[-1]["loss"] < history[0]["loss"]
        assert sorted(shards[0]) == list(range(t.N_ODD))
        try:
            import horovod.tensorflow
        except ImportError:
            pass
        else:
            raise SystemExit("horovod should be unimportable")
        import os
        os.environ["HOROVOD_RANK"] = "0"   # claims a horovodrun launch: must explain itself
        try:
            d.init()
        except ImportError as e:
            assert "horovodrun" in str(e)
        else:
            raise SystemExit("expected ImportError")
        print("OK")
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOROVOD_", "OMPI_"))}
    res = subprocess.run([PY, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip().endswith("OK")


def test_lr_scaling_warmup_ramps_from_base_to_scaled_lr():
    cfg = TrainConfig(learning_rate=0.01, warmup_steps=10, optimizer="sgd")
    opt = make_optimizer(cfg, steps_per_epoch=5, lr_scale=4.0)
    sched = opt._get_hyper("learning_rate")
    assert isinstance(sched, LinearWarmup)
    lrs = [float(sched(s)) for s in range(12)]
    # Starts at (just above) the single-worker LR, reaches 4x at the end of warm-up, then flat.
    assert lrs[0] == pytest.approx(0.04 * (0.25 + 0.75 / 10))
    assert lrs[9] == pytest.approx(0.04) and lrs[11] == pytest.approx(0.04)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))
    # Without scaling the ramp still starts near zero (the previous behaviour).
    plain = make_optimizer(cfg, steps_per_epoch=5)._get_hyper("learning_rate")
    assert float(plain(0)) == pytest.approx(0.001)
    assert current_lr(make_optimizer(TrainConfig(learning_rate=0.01), 5, lr_scale=2.0)) == \
        pytest.approx(0.02)


def test_launcher_scripts_build_the_documented_commands(tmp_path):
    env = {**os.environ, "DRY_RUN": "1"}
    local = subprocess.run(["bash", "pipelines/horovodrun_local.sh", "2", "configs/x.yaml",
                            "--set", "train.epochs=1"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=30)
    assert local.returncode == 0, local.stderr
    assert "--gloo -np 2 -H localhost:2" in local.stdout
    assert "pipelines.horovod_train --config configs/x.yaml --set train.epochs=1" in local.stdout
    multi = subprocess.run(["bash", "pipelines/horovodrun_multihost.sh", "host1:4,host2:4",
                            "configs/x.yaml"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=30)
    assert multi.returncode == 0, multi.stderr
    assert "-np 8 -H host1:4,host2:4" in multi.stdout and "--gloo" not in multi.stdout
    gloo = subprocess.run(["bash", "pipelines/horovodrun_multihost.sh", "host1:2,host2:2",
                           "configs/x.yaml"], cwd=ROOT, env={**env, "USE_GLOO": "1"},
                          capture_output=True, text=True, timeout=30)
    assert "--gloo -np 4 -H host1:2,host2:2" in gloo.stdout


# --------------------------------------------------------------------------- horovodrun
@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("hvd2")
    # Generous hang guard: ~40 s on an idle 2-core box, slower when the CPU is shared.
    proc, secs = horovodrun(2, [os.path.abspath(__file__), "worker", "train", str(out)],
                            timeout=300)
    assert proc.returncode == 0, proc.stdout_text[-4000:]
    ranks = [json.load(open(out / f"rank{r}.json")) for r in range(2)]
    return out, ranks, secs


@pytest.mark.slow
@pytest.mark.horovod
def test_all_ranks_end_with_identical_state(two_rank_run):
    out, (r0, r1), _ = two_rank_run
    assert (r0["size"], r0["rank"], r1["rank"]) == (2, 0, 1) and r0["chief"] and not r1["chief"]
    # Different initialisations per rank, identical after training: broadcast + averaging work
    # for embeddings (sparse allgather path), the step counter and Adam's slots/iterations.
    for a, b in zip(r0["weights"] + r0["optimizer"], r1["weights"] + r1["optimizer"]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(r0["sgd_weights"], r1["sgd_weights"]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The float16 loss scale started at 2**24 (overflowing), dropped, and agrees on both ranks.
    assert r0["loss_scale"] == r1["loss_scale"] < 2.0 ** 24
    assert all(np.isfinite(np.asarray(w, float)).all() for w in r0["weights"])
    assert r0["loss"][-1] < r0["loss"][0] and r0["loss"] == r1["loss"]  # averaged metrics
    # Only rank 0 wrote checkpoints / history / TensorBoard.
    assert os.path.isdir(out / "run_rank0" / "checkpoints")
    assert (out / "run_rank0" / "history.csv").exists()
    assert not os.path.exists(out / "run_rank1") or not os.listdir(out / "run_rank1")


@pytest.mark.slow
@pytest.mark.horovod
def test_a_users_keras_script_with_horovods_own_callbacks(tmp_path):
    """compile + fit with hvd.DistributedOptimizer (sparse and sparse_as_dense),
    BroadcastGlobalVariablesCallback, MetricAverageCallback and LearningRateWarmupCallback
    (bound to tf_keras by tfmf.horovod_keras) under a real horovodrun: identical weights."""
    proc, _ = horovodrun(2, [os.path.abspath(__file__), "worker", "keras", str(tmp_path)],
                         timeout=300)
    assert proc.returncode == 0, proc.stdout_text[-4000:]
    r0, r1 = (json.load(open(tmp_path / f"keras_rank{r}.json")) for r in range(2))
    for key in ("sparse", "dense"):
        a, b = r0[key], r1[key]
        assert len(a["weights"]) == 3
        for x, y in zip(a["weights"] + a["optimizer"], b["weights"] + b["optimizer"]):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert a["loss"] == b["loss"]  # MetricAverageCallback: the same averaged logs
        assert a["loss"][-1] < a["loss"][0]
        # Warm-up from 0.05 / 2 towards 0.05 over 2 epochs (per batch, so the last epoch ends
        # a fraction of a batch short of it).
        assert a["lr"] == b["lr"]
        assert 0.025 < a["lr"][0] < a["lr"][1] <= a["lr"][2] == pytest.approx(0.05, rel=0.05)


@pytest.mark.slow
@pytest.mark.horovod
def test_real_model_through_runner_and_entry_point(two_rank_run):
    from tfmf.data.pipelines import steps_per_epoch

    out, (r0, r1), _ = two_rank_run
    for a, b in zip(r0["mf_weights"], r1["mf_weights"]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert r0["mf_steps"] == r1["mf_steps"] == [steps_per_epoch(r0["mf_n_train"], 512, 2)] * 2
    # runner.train writes the run directory on rank 0 only.
    run0 = out / "runner_rank0"
    for name in ("config.yaml", "metrics.json", "history.csv", "model", "checkpoints"):
        assert (run0 / name).exists(), name
    assert not (out / "runner_rank1").exists()
    # pipelines/horovod_train.py: both ranks succeed and share rank 0's run directory.
    assert r0["entry_rc"] == r1["entry_rc"] == 0
    metrics = json.loads((out / "entry" / "metrics.json").read_text())
    assert 0.5 < metrics["metrics"]["rmse"] < 1.2


@pytest.mark.slow
@pytest.mark.horovod
def test_shards_are_disjoint_cover_the_data_and_steps_match(two_rank_run):
    from tfmf.data.pipelines import steps_per_epoch

    _, (r0, r1), _ = two_rank_run
    for epoch in ("0", "1", "2"):
        a, b = set(r0["shards"][epoch]), set(r1["shards"][epoch])
        assert not a & b
        assert a | b == set(range(N_ODD))
    assert r0["shards"]["0"] != r0["shards"]["1"]  # reshuffled per epoch
    # 203 ratings, batch 16, 2 ranks: equal step counts, and the job ended (rc 0 above).
    expected = steps_per_epoch(N_ODD, B, 2)
    assert r0["steps"] == r1["steps"] == [expected] * 3
    assert r0["sgd_steps"] == r1["sgd_steps"] == [N_EVEN // (2 * B)] * 3


@pytest.mark.slow
@pytest.mark.horovod
def test_shards_read_per_rank_train_with_equal_steps(two_rank_run):
    """Gradient models on a sharded source: every rank reads only its shards (disjoint users,
    together all rows), trains on its own rows with the same step count, and rank 0 saves the
    seen items of every rank's training rows; the ranks end with identical weights."""
    import math

    from tfmf.config import DataConfig
    from tfmf.data.loading import load_dataset

    out, (r0, r1), _ = two_rank_run
    full = load_dataset(DataConfig(source="sample"))
    for name, (_, _, batch, _) in PER_RANK.items():
        a, b = r0["per_rank"][name], r1["per_rank"][name]
        assert a["partition"] == [0, 2] and b["partition"] == [1, 2]
        assert not set(a["users"]) & set(b["users"])
        assert a["rows"] + b["rows"] == full.nnz and max(a["rows"], b["rows"]) < full.nnz
        examples = (a["fit_rows"], b["fit_rows"]) if name == "biased_mf" else \
            (a["fit_users"], b["fit_users"])
        assert examples[0] != examples[1]  # uneven ranks: the step count is still equal
        steps = math.ceil(max(examples) / batch)
        assert a["iterations"] == b["iterations"] == 2 * steps, name
        assert a["weights"] == b["weights"], name
        # Rank 1 kept only its own training rows; rank 0 saved everyone's.
        assert b["seen_nnz"] == b["fit_rows"]
        assert a["seen_nnz"] == a["fit_rows"] + b["fit_rows"]
        saved = json.loads((out / f"per_rank_{name}" / "metrics.json").read_text())
        assert saved["n_train"] == a["seen_nnz"]
        assert a["metrics"] == b["metrics"] == saved["metrics"]
        assert (out / f"per_rank_{name}" / "model").exists()
    assert 0.5 < r0["per_rank"]["biased_mf"]["metrics"]["rmse"] < 1.5
    assert 0.0 < r0["per_rank"]["mult_vae"]["metrics"]["ndcg@100"] <= 1.0


@pytest.mark.slow
@pytest.mark.horovod
def test_two_ranks_batch_b_match_one_rank_batch_2b(two_rank_run):
    """np=2 x batch B and np=1 x batch 2B: same SGD trajectory up to float rounding.

    Plain SGD on a per-batch *mean* loss with a constant LR: the Horovod-averaged gradient of
    two equal-size rank batches equals the gradient of their union's mean, so when the union of
    the ranks' step-s batches is np=1's step-s batch (256 = 8 x 2B, no shuffle) the weights
    follow the same path; only the summation order differs. Tolerance: full-data loss within
    1e-4 relative and weights within 1e-4 absolute (float32 rounding over 24 steps is ~1e-6).
    """
    _, (r0, _), _ = two_rank_run
    model, _, shards = fit_toy(TrainConfig(**{**SGD_F32, "batch_size": 2 * B}), N_EVEN,
                               rank=0, size=1, init_seed=0)
    single = [v.numpy() for v in model.variables]
    data = toy_data(N_EVEN)
    two = full_loss(r0["sgd_weights"], data)
    one = full_loss(single, data)
    assert two == pytest.approx(one, rel=1e-4)
    assert two < full_loss([v.numpy() for v in TinyMF(seed=0).variables], data) * 0.9
    for a, b in zip(r0["sgd_weights"][:2], single[:2]):
        np.testing.assert_allclose(np.asarray(a), b, atol=1e-4)


@pytest.mark.slow
@pytest.mark.horovod
def test_killed_rank_ends_the_job_instead_of_hanging(tmp_path):
    proc, _ = horovodrun(2, [os.path.abspath(__file__), "worker", "kill", str(tmp_path)],
                         timeout=120)
    ended = time.time()
    assert proc.returncode != 0, proc.stdout_text[-3000:]
    killed_at = float((tmp_path / "killed_at").read_text())
    # The surviving rank must not wait forever in its next collective (Gloo timeout 30 s).
    assert ended - killed_at < 60, f"job ended {ended - killed_at:.0f}s after the kill"
    print(f"horovodrun exited {ended - killed_at:.1f}s after rank 1 was killed")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "worker":
        worker(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: test_distributed.py worker <train|kill|keras> <out_dir>")
