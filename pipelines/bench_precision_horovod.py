"""Benchmarks: precision (float32 / mixed_bfloat16 / mixed_float16) and Horovod np=1 vs np=2.

    python -m pipelines.bench_precision_horovod                 # both tables
    python -m pipelines.bench_precision_horovod precision --epochs 4
    python -m pipelines.bench_precision_horovod horovod --np 1 2

``precision_suite`` trains MF, biased MF and Mult-VAE on the embedded sample under each policy
and reports quality (RMSE for MF, NDCG@20 / Recall@20 for Mult-VAE on a 20% holdout) and
steady-state throughput (ratings/s or users/s over the epochs after the first, which pays for
tracing). ``horovod_suite`` launches ``horovodrun --gloo -np N -H localhost:N`` on
``pipelines.horovod_train`` for each N and reports wall time and per-rank throughput from the
run's history.csv. Both return rows (dicts) for pipelines/benchmark.py.

Timings are of this machine only; there are no timing assertions in the tests.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import tfmf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from tfmf.tables import format_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
#: model -> (model overrides, TrainConfig overrides, unit of throughput)
MODELS = {
    "mf": ({"embedding_dim": 32, "l2": 0.02},
           {"optimizer": "adam", "learning_rate": 0.01, "batch_size": 1024}, "ratings"),
    "biased_mf": ({"embedding_dim": 32, "l2": 0.02},
                  {"optimizer": "adam", "learning_rate": 0.01, "batch_size": 1024}, "ratings"),
    "mult_vae": ({"dims": [200, 50], "total_anneal_steps": 200},
                 {"optimizer": "adam", "learning_rate": 1e-3, "batch_size": 64}, "users"),
}


def sample_split(seed: int = 0, data: str = "sample"):
    """(train, test) 80/20 holdout of the embedded sample (explicit ratings).

    ``data="synthetic"`` uses 4000 users x 2000 items x ~400k low-rank ratings instead, big
    enough for throughput to reflect compute rather than per-step overhead.
    """
    from tfmf.data.splits import holdout

    if data == "synthetic":
        from tfmf.data.synthetic import explicit_low_rank

        full, _ = explicit_low_rank(4000, 2000, rank=8, noise=0.5, density=0.05, seed=seed,
                                    rating_scale=(1.0, 5.0))
    else:
        from tfmf.data.sample import load_sample

        full = load_sample()
    return holdout(full, 0.2, seed=seed)


def step_seconds(rec, train, cfg, n_steps: int = 30, warmup: int = 5,
                 batch=None) -> tuple[float, float]:
    """(median, min) seconds of the model's Keras ``train_step`` on one fixed batch of ``rec``.

    Times only the compiled step (forward, backward, loss scaling, update), synchronised by
    reading the loss, so it reflects compute in the precision rather than input pipeline,
    Python or tracing overhead; the median and min are robust to other processes on the CPU.
    ``batch`` is the batch to time (default: the first batch of epoch 0).
    """
    import tensorflow as tf

    from tfmf.training.fit import compile_model

    if rec.model.optimizer is None:
        compile_model(rec.model, cfg, 100)
    step = tf.function(rec.model.train_step, reduce_retracing=True)
    if batch is None:
        batch = next(iter(rec.make_dataset(train, cfg, epoch=0, rank=0, size=1)))
    times = []
    for i in range(warmup + n_steps):
        t0 = time.perf_counter()
        step(batch)["loss"].numpy()  # one host copy per step, as fit() reads its logs
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(np.min(times))


def train_and_score(model_name: str, precision: str, epochs: int, *, split=None,
                    train_overrides: dict | None = None, model_overrides: dict | None = None,
                    seed: int = 0, time_steps: bool = False) -> dict:
    """Fits one model under one precision policy and scores it on the holdout.

    Args:
      model_name: a key of :data:`MODELS` (mf, biased_mf, mult_vae).
      precision: float32 | mixed_float16 | mixed_bfloat16.
      epochs: training epochs.
      split: (train, test) InteractionData (default: :func:`sample_split`).
      train_overrides / model_overrides: on top of :data:`MODELS`' settings.
      seed: TrainConfig seed.
      time_steps: also time the bare train step (:func:`step_seconds`) after fitting.

    Returns:
      A row: model, precision, quality metrics, throughput (examples/s over the epochs after
      the first, and per bare step when ``time_steps``), final loss, and the loss scale for
      mixed_float16.
    """
    from tfmf import registry
    from tfmf.config import EvalConfig, TrainConfig
    from tfmf.evaluation import evaluate

    model_kw, train_kw, unit = MODELS[model_name]
    train, test = split if split is not None else sample_split()
    cls = registry.get(model_name)
    rec = cls(cls.config_class(**{**model_kw, **(model_overrides or {})}))
    cfg = TrainConfig(**{**train_kw, "epochs": epochs, "precision": precision, "verbose": 0,
                         "seed": seed, **(train_overrides or {})})
    t0 = time.perf_counter()
    rec.fit(train, cfg)
    fit_s = time.perf_counter() - t0
    if unit == "ratings":
        metrics = evaluate(rec, test, EvalConfig(metrics=["rmse", "mae"]))
        n_examples = train.nnz
    else:
        metrics = evaluate(rec, test, EvalConfig(metrics=["ndcg", "recall"], ks=[20]))
        n_examples = int((np.bincount(train.users, minlength=train.n_users) > 0).sum())
    steady = [h["seconds"] for h in rec.history[1:]] or [rec.history[0]["seconds"]]
    opt = rec.model.optimizer
    scale = float(opt.loss_scale.numpy()) if hasattr(opt, "loss_scale") else None
    weights_finite = all(np.isfinite(v.numpy()).all() for v in rec.model.variables
                         if v.dtype.is_floating)
    row = {"model": model_name, "precision": precision, **metrics,
           f"{unit}_per_s": n_examples / float(np.mean(steady)), "fit_s": fit_s,
           "final_loss": rec.history[-1]["loss"], "loss_scale": scale,
           "weights_finite": weights_finite}
    if time_steps:
        med, best = step_seconds(rec, train, cfg)
        row.update({"step_ms": 1e3 * med, f"{unit}_per_s_step": cfg.batch_size / med,
                    "step_ms_min": 1e3 * best})
    return {**row, "recommender": rec}


#: precision_suite keyword arguments for data="synthetic": the paper's Mult-VAE widths and
#: larger batches, so the step is dominated by matmuls (where the precision matters), not by
#: per-step overhead.
SYNTHETIC_OVERRIDES = {
    "model_overrides": {"mult_vae": {"dims": [600, 200]}},
    "train_overrides": {"mf": {"batch_size": 8192}, "biased_mf": {"batch_size": 8192},
                        "mult_vae": {"batch_size": 256}},
}


def precision_suite(models=("mf", "biased_mf", "mult_vae"), precisions=PRECISIONS,
                    epochs: int = 4, seed: int = 0, data: str = "sample",
                    train_overrides: dict | None = None,
                    model_overrides: dict | None = None) -> list[dict]:
    """Quality and throughput of every (model, precision) pair; a list of rows.

    Args:
      models, precisions: what to compare.
      epochs: training epochs (throughput is measured on epochs 2..).
      seed: split and training seed.
      data: "sample" (the embedded sample) or "synthetic" (see :func:`sample_split`).
      train_overrides / model_overrides: per model name, on top of :data:`MODELS`.
    """
    train_overrides, model_overrides = train_overrides or {}, model_overrides or {}
    split = sample_split(seed, data)
    rows = []
    for name in models:
        for prec in precisions:
            row = train_and_score(name, prec, epochs, split=split, seed=seed, time_steps=True,
                                  train_overrides=train_overrides.get(name),
                                  model_overrides=model_overrides.get(name))
            row.pop("recommender")
            rows.append({"data": data, **row})
    return rows


#: extra runs at the largest np: (label, --set overrides)
HOROVOD_VARIANTS = (
    ("sparse_as_dense", ("train.sparse_as_dense=true",)),
    ("scaled LR + warm-up", ("train.scale_lr_by_world_size=true", "train.warmup_steps=20")),
)


def horovod_suite(nps=(1, 2), config: str | None = None, overrides=(),
                  variants=HOROVOD_VARIANTS, timeout: float = 600.0) -> list[dict]:
    """Runs pipelines/horovodrun_local.sh for each N; wall time and per-epoch throughput.

    Args:
      nps: process counts to compare (each rank uses cores/N TensorFlow threads).
      config: run config (default: biased MF on the sample, 5 epochs, batch 1024 per rank).
      overrides: extra ``--set`` overrides for every run.
      variants: (label, overrides) runs added at ``max(nps)``.
      timeout: seconds per launch.

    Returns:
      Rows: np, variant, wall_s (launch to exit, including start-up), epoch_s (mean epoch time
      after the first), ratings_per_s (global), final loss, test rmse/mae.
    """
    import json

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if config is None:
            config = os.path.join(tmp, "bench.yaml")
            with open(config, "w") as fh:
                fh.write("model: {name: biased_mf, embedding_dim: 32, l2: 0.02}\n"
                         "data: {source: sample, split: {kind: holdout, test_fraction: 0.2}}\n"
                         "train: {epochs: 5, batch_size: 1024, optimizer: adam, "
                         "learning_rate: 0.01, checkpoint_every: 0}\n")
        runs = [(n, "-", ()) for n in nps] + [(max(nps), label, extra)
                                              for label, extra in variants]
        for k, (n, label, extra) in enumerate(runs):
            run_dir = os.path.join(tmp, f"run{k}")
            cmd = ["bash", os.path.join(ROOT, "pipelines", "horovodrun_local.sh"), str(n),
                   config, "--run-dir", run_dir, "--set", "train.verbose=0"]
            for o in (*overrides, *extra):
                cmd += ["--set", o]
            t0 = time.perf_counter()
            res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                                 env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
            wall = time.perf_counter() - t0
            if res.returncode != 0:
                raise RuntimeError(f"np={n} failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
            with open(os.path.join(run_dir, "history.csv")) as fh:
                hist = list(csv.DictReader(fh))
            with open(os.path.join(run_dir, "metrics.json")) as fh:
                metrics = json.load(fh)
            epoch_s = float(np.mean([float(h["seconds"]) for h in hist[1:]]))
            rows.append({"np": n, "variant": label, "wall_s": wall, "epoch_s": epoch_s,
                         "ratings_per_s": metrics["n_train"] / epoch_s,
                         "final_loss": float(hist[-1]["loss"]),
                         **{k: v for k, v in metrics["metrics"].items()}})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", nargs="?", default="all", choices=["all", "precision", "horovod"])
    p.add_argument("--epochs", type=int, default=4, help="precision suite epochs")
    p.add_argument("--models", nargs="*", default=list(MODELS))
    p.add_argument("--data", default="sample", choices=["sample", "synthetic"])
    p.add_argument("--np", dest="nps", type=int, nargs="*", default=[1, 2])
    args = p.parse_args(argv)
    if args.suite in ("all", "precision"):
        print(f"precision ({args.data} data, 80/20 holdout, {args.epochs} epochs)")
        kw = SYNTHETIC_OVERRIDES if args.data == "synthetic" else {}
        print(format_table(precision_suite(args.models, epochs=args.epochs, data=args.data, **kw)),
              flush=True)
    if args.suite in ("all", "horovod"):
        print("\nhorovodrun --gloo on this host (biased MF, sample)")
        print(format_table(horovod_suite(args.nps)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
