"""Named benchmark suites: tfmf side by side with its peers, one table and one JSON per suite.

    python -m pipelines.benchmark SUITE [--scale tiny|full] [--out runs/bench] [--with-svdpp]
    tfmf benchmark SUITE --scale tiny

Suites (``all`` runs every one; horovod only when horovodrun is installed):

* ``explicit-ml100k``: tfmf MF, biased MF and ALS vs Surprise's SVD (SVD++ with
  ``--with-svdpp``; slow) on the official ML-100K folds u1..u5: RMSE, MAE, fit seconds, and the
  seconds each tfmf model needs on u1 to reach Surprise SVD's u1 RMSE (from the per-epoch
  ``val_rmse`` history; those seconds include the per-epoch validation).
* ``implicit-ml100k``: Mult-VAE, Mult-DAE, iALS, EASE, popularity and the ``implicit``
  library's ALS in the 5-user-fold strong-generalization protocol (ratings >= 4, users with
  >= 5 positives, 80/20 fold-in/target): NDCG@100, Recall@20, Recall@50, fit seconds.
* ``throughput``: this CPU's TensorFlow matmul FLOP/s (float32, bfloat16), Mult-VAE users/s
  on ML-20M-shaped synthetic data with its FLOPs per user and share of the float32 roofline,
  MF ratings/s on ML-100K-sized synthetic ratings, peak RSS.
* ``pipeline``: a Mult-VAE train step fed sparse rows vs the same rows densified (first layer
  as ``tf.sparse.to_dense`` + matmul), the first layer alone, the input pipeline alone, and a
  training epoch with prefetch on vs off (NVIDIA's GPU case study reports 12.5x and 1.8x).
* ``precision`` / ``horovod``: pipelines/bench_precision_horovod.py's suites.

Every figure is a ratio or a side-by-side row of one run (absolute times sit next to their
ratio). Each JSON records the date, machine (nproc, CPU model, RAM), TensorFlow version and the
command. ``--scale tiny`` runs each suite in seconds (1 fold, 1 epoch, tiny synthetic data) as a
smoke test; its numbers mean nothing. Suites that need ML-100K are skipped (with a JSON saying
so) when no copy is found.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
from typing import Callable

import numpy as np

import tfmf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from tfmf.tables import format_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
#: ML-20M after binarizing at 4 and keeping users with >= 5 positives (VAE-CF's data).
ML20M_SHAPE = (136_677, 20_108, 10_000_000)
#: suite name -> (function(args) -> result dict, needs ML-100K)
SUITES: dict[str, tuple[Callable[[argparse.Namespace], dict], bool]] = {}


# Run as `python -m pipelines.benchmark`, this module is __main__: let the suite modules'
# `from pipelines.benchmark import suite` register into this copy, not a second one.
sys.modules.setdefault("pipelines.benchmark", sys.modules[__name__])


def load_suite_modules() -> None:
    """Imports every ``pipelines/bench_*.py``: each registers its suites with :func:`suite`."""
    import importlib
    import pkgutil

    here = os.path.dirname(os.path.abspath(__file__))
    for info in pkgutil.iter_modules([here]):
        if info.name.startswith("bench_"):
            importlib.import_module(f"pipelines.{info.name}")


def suite(name: str, needs_ml100k: bool = False):
    """Registers a suite function under ``name``."""
    def deco(fn):
        SUITES[name] = (fn, needs_ml100k)
        return fn
    return deco


# --------------------------------------------------------------------------- machine / output
def machine_info() -> dict:
    """nproc, CPU model, RAM, TensorFlow / Python versions of this machine."""
    import tensorflow as tf

    cpu, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as fh:
            info = dict(line.split(":", 1) for line in fh.read().split("\n\n")[0].splitlines()
                        if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        cpu, flags = info.get("model name", cpu), set(info.get("flags", "").split())
    except OSError:
        pass
    ram_gb = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    ram_gb = round(int(line.split()[1]) / 1024 ** 2, 1)
                    break
    except OSError:
        pass
    simd = sorted(f for f in flags if f in ("avx2", "fma", "avx512f", "avx512_bf16",
                                            "avx512_fp16", "amx_bf16", "amx_tile"))
    return {"nproc": os.cpu_count(), "cpu_model": cpu, "ram_gb": ram_gb, "simd": simd,
            "tf_version": tf.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


class Timer:
    """``with Timer() as t:`` -> ``t.wall`` and ``t.cpu`` (process CPU, all threads) seconds."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu
        return False


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is 0."""
    if a is None or b is None or b == 0 or not (math.isfinite(a) and math.isfinite(b)):
        return None
    return float(a) / float(b)


def markdown(result: dict) -> str:
    """The docs/BENCHMARKS.md section body of one suite's result."""
    m = result["machine"]
    lines = [f"Command: `{result['command']}`  ", f"Date: {result['date']} "
             f"({result['wall_seconds']:.0f} s); {m['nproc']} CPUs ({m['cpu_model']}), "
             f"{m['ram_gb']} GB RAM, TensorFlow {m['tf_version']}", ""]
    if result.get("skipped"):
        lines.append(f"Skipped: {result['skipped']}")
    for title, rows in result.get("tables", {}).items():
        lines += [f"**{title}**", "", format_table(rows, markdown=True), ""]
    lines += [f"* {n}" for n in result.get("notes", [])]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- explicit-ml100k
#: tfmf rows of explicit-ml100k: label -> config file
EXPLICIT = {"mf": "ml100k_mf.yaml", "biased_mf": "ml100k_biased_mf.yaml", "als": "ml100k_als.yaml",
            "bayesian_mf": "ml100k_bayesian_mf.yaml"}
# Bayesian rows of issues #15/#18: SVD++ (implicit feedback from the training pairs only),
# timeSVD++ flipped (+ item-side implicit, user-day and item-bin biases; predictions read the
# query's timestamp), and Bayesian MF with a shorter, narrower chain (the speed row).
EXPLICIT.update({"bayesian_mf_fast": "ml100k_bayesian_mf_fast.yaml",
                 "bayesian_svdpp": "ml100k_bayesian_svdpp.yaml",
                 "bayesian_timesvdpp_flipped": "ml100k_bayesian_timesvdpp_flipped.yaml"})
#: --scale tiny overrides per tfmf row (seconds instead of minutes; numbers meaningless)
_TINY = {"als": ["model.iterations=1"], "bayesian_mf": ["model.burn_in=1", "model.samples=2"]}
_TINY.update({k: _TINY["bayesian_mf"] for k in EXPLICIT if k.startswith("bayesian_")})
EXPLICIT_METRICS = ("rmse", "mae")
#: Surprise SVD's RMSE on u1, the time-to-target goal when Surprise is not installed.
SVD_U1_RMSE = 0.938


def surprise_fold(algo, train, test) -> dict:
    """Fits a Surprise algorithm on ``train`` (InteractionData) and scores ``test``.

    Returns:
      ``{"rmse", "mae", "fit_seconds"}``; ratings are predicted with Surprise's own ``predict``
      (clipped to the rating scale, global mean for unknown ids), ids are tfmf's indices.
    """
    import pandas as pd
    from surprise import Dataset, Reader

    lo, hi = train.clip_range()
    df = pd.DataFrame({"user": train.users.astype(np.int64), "item": train.items.astype(np.int64),
                       "rating": train.values.astype(np.float64)})
    trainset = Dataset.load_from_df(df, Reader(rating_scale=(lo, hi))).build_full_trainset()
    t0 = time.perf_counter()
    algo.fit(trainset)
    fit_s = time.perf_counter() - t0
    est = np.array([algo.predict(u, i).est for u, i in zip(test.users.tolist(),
                                                           test.items.tolist())])
    err = est - test.values.astype(np.float64)
    return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err))),
            "fit_seconds": fit_s}


def _cv_row(library: str, model: str, per_fold: list[dict], metrics: tuple[str, ...]) -> dict:
    """Mean over folds of ``metrics`` (std of the first) and of fit seconds, as a table row."""
    col = lambda k: np.array([r[k] for r in per_fold], np.float64)
    row = {"library": library, "model": model, "folds": len(per_fold)}
    for k in metrics:
        row[k] = float(col(k).mean())
        if k == metrics[0]:
            row[f"{k} std"] = float(col(k).std())
    row["fit_s"] = float(col("fit_seconds").mean())
    return row


@suite("explicit-ml100k", needs_ml100k=True)
def explicit_ml100k(args) -> dict:
    from pipelines.ml100k_explicit import target_run
    from tfmf.config import load_config
    from tfmf.data.splits import official_folds
    from tfmf.evaluation.model_selection import cross_validate

    tiny = args.scale == "tiny"
    names = ["u1"] if tiny else ["u1", "u2", "u3", "u4", "u5"]
    data_set = [f"data.data_dir={args.data_dir}"] if args.data_dir else []
    folds = list(official_folds(names, args.data_dir))
    rows, notes, folds_out, ttts = [], [], {}, {}
    try:
        from surprise import SVD, SVDpp
    except ImportError:
        peers = []
        notes.append("scikit-surprise not installed (pip install scikit-surprise): Surprise "
                     f"rows skipped; time-to-target uses RMSE {SVD_U1_RMSE} (its SVD on u1).")
    else:
        epochs = 1 if tiny else 20
        peers = [("SVD", lambda: SVD(random_state=0, n_epochs=epochs))]
        if args.with_svdpp:
            peers.append(("SVD++", lambda: SVDpp(random_state=0, n_epochs=epochs)))
    for label, make in peers:
        per_fold = [{"fold": k + 1, **surprise_fold(make(), tr, te)}
                    for k, (tr, te) in enumerate(folds)]
        row = _cv_row("surprise", label, per_fold, EXPLICIT_METRICS)
        folds_out[f"surprise {label}"] = per_fold
        # Surprise reaches its own u1 RMSE at the end of its u1 fit.
        row.update({"u1_rmse": per_fold[0]["rmse"], "ttt_epoch": 1 if tiny else 20,
                    "ttt_s": per_fold[0]["fit_seconds"]})
        rows.append(row)
        print(f"surprise {label}: rmse {row['rmse']:.4f} fit {row['fit_s']:.1f}s", flush=True)
    svd = rows[0] if rows else {"fit_s": None, "ttt_s": None, "u1_rmse": SVD_U1_RMSE}
    target = svd["u1_rmse"]
    for label, path in EXPLICIT.items():
        if getattr(args, "rows", None) and label not in args.rows.split(","):
            continue
        tiny_set = _TINY.get(label, ["train.epochs=1", "train.batch_size=2048"]) if tiny else []
        cfg = load_config(os.path.join(CONFIGS, path),
                          overrides=["train.verbose=0", *data_set, *tiny_set])
        cv = cross_validate(cfg.model_name, cfg.model, folds, train_config=cfg.train,
                            eval_config=cfg.eval)
        ttt = target_run(cfg, names[0], target)
        row = _cv_row("tfmf", label, cv.per_fold, EXPLICIT_METRICS)
        folds_out[label], ttts[label] = cv.per_fold, ttt
        row.update({"u1_rmse": cv.per_fold[0]["rmse"], "ttt_epoch": ttt["epoch"],
                    "ttt_s": ttt["seconds"] if ttt["epoch"] is not None else None})
        if ttt["epoch"] is None:
            notes.append(f"tfmf {label} did not reach Surprise SVD's u1 RMSE {target:.4f} in "
                         f"{ttt['epochs_run']} epochs (best {ttt['best_val_rmse']:.4f}).")
        rows.append(row)
    for row in rows:
        row["fit_x_svd"] = ratio(row["fit_s"], svd["fit_s"])
        row["ttt_x_svd"] = ratio(row["ttt_s"], svd["ttt_s"])
    notes += [
        f"Folds {', '.join(names)} of ML-100K (official u*.base/u*.test); every library fits "
        "the same training ratings in this process.",
        "fit_s: mean wall seconds per fold of fit() (tfmf includes tf.function tracing); "
        "fit_x_svd: fit_s / Surprise SVD's fit_s.",
        f"ttt_s: seconds on u1 until the test RMSE first reaches Surprise SVD's u1 RMSE "
        f"({target:.4f}); for tfmf it sums the per-epoch times of a run validated on u1 after "
        "every epoch (so it includes that validation); for Surprise it is its u1 fit time. "
        "ttt_x_svd: ttt_s / SVD's.",
        f"Surprise SVD: defaults (100 factors, lr 0.005, reg 0.02), {1 if tiny else 20} "
        "epochs, random_state 0."
        + ("" if args.with_svdpp else " SVD++ skipped (slow; --with-svdpp)."),
        "tfmf configs: " + ", ".join(f"{k}: configs/{v}" for k, v in EXPLICIT.items()) + ".",
    ]
    return {"tables": {"ML-100K official folds (explicit ratings)": rows}, "notes": notes,
            "target_rmse": target, "per_fold": folds_out, "time_to_target": ttts}


# --------------------------------------------------------------------------- implicit-ml100k
IMPLICIT_MODELS = ("mult_vae", "mult_dae", "ials", "ease", "popularity", "recvae", "edlae")
IMPLICIT_METRICS = ("ndcg@100", "recall@20", "recall@50")


@suite("implicit-ml100k", needs_ml100k=True)
def implicit_ml100k(args) -> dict:
    from threadpoolctl import threadpool_limits

    from pipelines.als_vs_implicit import fit_implicit
    from pipelines.ml100k_implicit import MODELS, compare, model_config, protocol_folds
    from tfmf.evaluation import evaluate

    tiny = args.scale == "tiny"
    data_set = [f"data.data_dir={args.data_dir}"] if args.data_dir else []
    base, folds = protocol_folds(data_set)
    if tiny:
        folds = folds[:1]
    tiny_sets = {"mult_vae": ["train.epochs=1"], "mult_dae": ["train.epochs=1"],
                 "recvae": ["train.epochs=1"], "ials": ["model.iterations=1"]}
    rows, notes, per_fold = [], [], {}
    for name in IMPLICIT_MODELS:
        extra = tiny_sets.get(name, []) if tiny else []
        cv = compare([name], extra, folds, base.eval)[name]
        rows.append(_cv_row("tfmf", name, cv.per_fold, IMPLICIT_METRICS))
        per_fold[name] = cv.per_fold
    try:
        import implicit  # noqa: F401
    except ImportError:
        notes.append("implicit library not installed (pip install implicit): its row skipped.")
    else:
        ials = model_config("ials", tiny_sets["ials"] if tiny else []).model
        rows_implicit = []
        for k, split in enumerate(folds, start=1):
            # implicit asks for single-threaded BLAS (it parallelises over users itself).
            with threadpool_limits(1, "blas"):
                t0 = time.perf_counter()
                model, _ = fit_implicit(split, ials, seed=0, threads=0)
                fit_s = time.perf_counter() - t0
            rows_implicit.append({"fold": k, **evaluate(model, split, base.eval),
                                  "fit_seconds": fit_s})
        rows.append(_cv_row("implicit", "als", rows_implicit, IMPLICIT_METRICS))
        per_fold["implicit als"] = rows_implicit
    ref = next(r for r in rows if r["model"] == "ials")
    for row in rows:
        row["fit_x_ials"] = ratio(row["fit_s"], ref["fit_s"])
    notes += [
        f"{len(folds)} user fold(s) of ML-100K (ratings >= 4 positive, users with >= 5 "
        "positives); each held-out user's positives split 80% fold-in / 20% targets; metrics "
        "are means over the folds, seen items excluded.",
        "fit_s: mean wall seconds per fold of fit() (tfmf includes tf.function tracing); "
        "fit_x_ials: fit_s / tfmf iALS's fit_s.",
        "Configs: " + ", ".join(f"{m}: {os.path.relpath(MODELS[m][0], ROOT)}"
                                for m in IMPLICIT_MODELS if MODELS[m][1] is not None)
        + " (popularity: no hyperparameters); "
        "implicit's ALS gets "
        "iALS's factors, regularization, iterations and alpha + 1 (implicit >= 0.5 uses "
        "c = alpha * r, tfmf c = 1 + alpha * r), all cores, BLAS limited to one thread.",
    ]
    title = f"ML-100K strong generalization ({len(folds)} user folds)"
    return {"tables": {title: rows}, "notes": notes, "per_fold": per_fold}


# --------------------------------------------------------------------------- throughput
def matmul_flops(n: int, dtype: str, repeats: int = 5) -> dict:
    """Best-of-``repeats`` FLOP/s of one n x n x n TensorFlow matmul (2 n^3 FLOPs) on CPU."""
    import tensorflow as tf

    g = tf.random.Generator.from_seed(0)
    a = tf.cast(g.normal([n, n]), dtype)
    b = tf.cast(g.normal([n, n]), dtype)
    times = []
    for _ in range(repeats + 1):  # the first call is a warm-up (kernel selection, allocation)
        t0 = time.perf_counter()
        c = tf.matmul(a, b)  # eager CPU ops run synchronously
        float(c[0, 0])
        times.append(time.perf_counter() - t0)
    best = min(times[1:])
    return {"dtype": dtype, "n": n, "best_s": best, "gflop_per_s": 2 * n ** 3 / best / 1e9}


def vae_flops_per_user(dims: list[int], n_items: int, nnz_per_user: float,
                       variational: bool = True) -> dict:
    """Training FLOPs per user of Mult-VAE's layers (tfmf.models.vae.MultVAEModel).

    Dense layers cost 2·in·out FLOPs forward and twice that backward (input and kernel
    gradients): 6·in·out. The first layer is a sparse-dense matmul over the row's nnz items
    and has no input gradient: 4·nnz·dims[0]. Softmax, KL and elementwise ops are ignored
    (< 1% for ML-20M's 20k items).
    """
    code = lambda d: 2 * d if variational else d
    widths = [dims[0] if len(dims) > 1 else code(dims[-1])]
    for i, d in enumerate(dims[1:]):
        widths.append(code(d) if i == len(dims) - 2 else d)
    dense = list(zip(widths[:-1], widths[1:]))  # encoder after the first layer
    dec = [dims[-1], *reversed(dims[:-1]), n_items]
    dense += list(zip(dec[:-1], dec[1:]))
    dense_macs = sum(a * b for a, b in dense)
    first_macs = nnz_per_user * widths[0]
    return {"dense_flops": 6.0 * dense_macs, "first_layer_flops": 4.0 * first_macs,
            "flops": 6.0 * dense_macs + 4.0 * first_macs,
            "formula": f"6*({' + '.join(f'{a}*{b}' for a, b in dense)}) + 4*nnz_u*{widths[0]}"}


def run_isolated(fn: Callable, *a, **kw):
    """``fn(*a, **kw)`` in a fresh spawned process (clean peak RSS and TF runtime)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
        return ex.submit(fn, *a, **kw).result()


def explicit_ml100k_shaped(seed: int = 0):
    """(train, test) 80/20 holdout of synthetic low-rank ratings shaped like ML-100K."""
    from tfmf.data.splits import holdout
    from tfmf.data.synthetic import explicit_low_rank

    data, _ = explicit_low_rank(943, 1682, rank=8, noise=0.5, density=100_000 / (943 * 1682),
                                seed=seed, rating_scale=(1.0, 5.0))
    return holdout(data, 0.2, seed=seed)


@suite("throughput")
def throughput(args) -> dict:
    from pipelines.bench_precision_horovod import train_and_score
    from pipelines.vae_epoch_ml20m import measure

    tiny = args.scale == "tiny"
    notes = []
    # MF first: its rows must not depend on what the bigger runs leave behind.
    split = explicit_ml100k_shaped()
    mf_rows = []
    runs = (("mf", 1024), ("biased_mf", 1024), ("biased_mf", 256))
    for model, batch in runs[:2] if tiny else runs:
        r = train_and_score(model, "float32", 2 if tiny else 6, split=split, time_steps=True,
                            train_overrides={"batch_size": batch})
        mf_rows.append({"model": model, "batch": batch, "epoch ratings/s": r["ratings_per_s"],
                        "step ratings/s": r["ratings_per_s_step"], "step_ms": r["step_ms"],
                        "rmse": r["rmse"]})
    for r in mf_rows:
        r["step x_first"] = ratio(r["step ratings/s"], mf_rows[0]["step ratings/s"])

    n = 256 if tiny else 2048
    mm = [matmul_flops(n, dtype, 2 if tiny else 5) for dtype in ("float32", "bfloat16")]
    for r in mm:
        r["x_float32"] = ratio(r["gflop_per_s"], mm[0]["gflop_per_s"])

    shape = (2000, 1000, 20_000) if tiny else ML20M_SHAPE
    steps = 3 if tiny else 30
    kw = {"steps": steps, "shape": shape}
    vae = measure(**kw) if tiny else run_isolated(measure, **kw)
    fl = vae_flops_per_user(vae["dims"], vae["n_items"], vae["nnz"] / vae["n_active_users"])
    achieved = vae["users_per_s"] * fl["flops"]
    vae_rows = [{"model": vae["model"], "dims": str(vae["dims"]), "batch": vae["batch_size"],
                 "steps timed": vae["steps"], "users/s": vae["users_per_s"],
                 "full epoch s (extrap.)": vae["full_epoch_s"],
                 "users/CPU-s": vae["users_per_cpu_s"], "cores busy": vae["cores_busy"],
                 "MFLOP/user": fl["flops"] / 1e6, "GFLOP/s": achieved / 1e9,
                 "x_fp32_matmul_peak": ratio(achieved, mm[0]["gflop_per_s"] * 1e9),
                 "peak RSS GB": vae["peak_rss_gb"],
                 "dense input GB": shape[0] * shape[1] * 4 / 1e9}]
    notes += [
        "MF: synthetic rank-8 ratings with ML-100K's shape (943 x 1682, 100k ratings, 80/20 "
        "holdout), Adam, 32 dims, float32. 'epoch ratings/s' is over the epochs after the "
        "first (which pays for tracing); 'step ratings/s' times the bare compiled train step "
        "on one batch (median of 30). step x_first: step ratings/s relative to the first row.",
        f"matmul: {n}x{n}x{n} tf.matmul, best of {2 if tiny else 5} after a warm-up, "
        "2 n^3 FLOPs; x_float32: relative to float32.",
        f"Mult-VAE: configs/ml20m_mult_vae.yaml on implicit_power_law{shape}"
        + ("" if tiny else " (ML-20M's users, items and positives)")
        + f", {steps} steps per epoch timed on the 2nd epoch and "
        "extrapolated to a full epoch (users/s is measured, the epoch time is not).",
        f"Mult-VAE FLOPs per user = {fl['formula']} (dense layers fwd+bwd 3 x 2 x in x out; "
        "the sparse first layer 2 x 2 x nnz x width, no input gradient); x_fp32_matmul_peak = "
        "achieved FLOP/s / this CPU's measured float32 matmul FLOP/s.",
        "peak RSS: maximum resident memory of the process running the Mult-VAE measurement "
        + ("(this process)" if tiny else "(a fresh spawned process: data generation + "
                                         "pipeline + model)")
        + "; 'dense input GB' is what a dense float32 users x items matrix would take.",
    ]
    return {"tables": {"MF ratings/s (ML-100K-shaped)": mf_rows, "TF matmul on this CPU": mm,
                       "Mult-VAE on ML-20M-shaped data": vae_rows},
            "notes": notes, "vae": vae, "vae_flops": fl}


# --------------------------------------------------------------------------- pipeline
def _dense_input_vae():
    """MultVAE whose first layer densifies the sparse batch (tf.sparse.to_dense + matmul)."""
    import tensorflow as tf

    from tfmf.models.vae import MultVAE, SparseDense

    class DenseInput(SparseDense):
        """What a model without sparse support does: the whole batch as a dense matrix."""

        def call(self, x):
            kernel = tf.cast(self.kernel, x.values.dtype)
            return tf.matmul(tf.sparse.to_dense(x), kernel) + tf.cast(self.bias, x.values.dtype)

    class DenseInputVAE(MultVAE):
        def build_model(self, train, train_config):
            model = super().build_model(train, train_config)
            old = model.encoder_in
            model.encoder_in = DenseInput(old.units, old.input_dim, name="encoder_in")
            return model

    return DenseInputVAE


def first_layer_seconds(x, units: int, dense: bool, n_steps: int) -> tuple[float, float]:
    """(median, min) seconds of the first layer's forward + kernel gradient on batch ``x``."""
    import tensorflow as tf

    w = tf.Variable(tf.random.Generator.from_seed(0).normal([int(x.dense_shape[1]), units]) * 0.01)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            h = (tf.matmul(tf.sparse.to_dense(x), w) if dense
                 else tf.sparse.sparse_dense_matmul(x, w))
            loss = tf.reduce_sum(tf.tanh(h))
        return tape.gradient(loss, w)[0, 0]

    times = []
    for i in range(n_steps + 2):
        t0 = time.perf_counter()
        float(step(x))
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(np.min(times))


def input_epoch_seconds(csr, batch: int, prefetch: bool, densify: bool) -> float:
    """Wall seconds of one epoch of tfmf.data.pipelines.user_rows alone (no model)."""
    import tensorflow as tf

    from tfmf.data.pipelines import user_rows

    ds = user_rows(csr, batch, seed=0, prefetch=prefetch)
    if densify:
        ds = ds.map(lambda b: tf.sparse.to_dense(b["items"]))
    t0 = time.perf_counter()
    for _ in ds:
        pass
    return time.perf_counter() - t0


@suite("pipeline")
def pipeline(args) -> dict:
    from pipelines.bench_precision_horovod import step_seconds
    from pipelines.vae_epoch_ml20m import capped, measure
    from tfmf.config import load_config
    from tfmf.data.pipelines import user_rows
    from tfmf.data.synthetic import implicit_power_law
    from tfmf.models.vae import MultVAE

    tiny = args.scale == "tiny"
    # ML-20M's items and mean positives per user (73) with fewer users: per-batch cost is
    # that of ML-20M, the epoch is short.
    n_users = 1000 if tiny else 20_000
    n_items = 1000 if tiny else ML20M_SHAPE[1]
    nnz = n_users * (20 if tiny else ML20M_SHAPE[2] // ML20M_SHAPE[0])
    data = implicit_power_law(n_users, n_items, nnz, seed=0)
    csr = data.to_csr()
    cfg = load_config(os.path.join(CONFIGS, "ml20m_mult_vae.yaml"),
                      overrides=["train.verbose=0", "train.checkpoint_every=0", "train.epochs=1",
                                 "train.restore_best=false"])  # timing only: no validation
    n_steps = 2 if tiny else 15
    reps = 1 if tiny else 2
    # Power-law activity makes batch sizes in nnz vary ~10x: time the batch with the median
    # nnz of the epoch's first 40, the same one for every variant.
    batches = [b for _, b in zip(range(40), user_rows(csr, cfg.train.batch_size, seed=0))]
    nnzs = [int(b["items"].values.shape[0]) for b in batches]
    batch = batches[int(np.argsort(nnzs)[len(nnzs) // 2])]
    batch_nnz = int(batch["items"].values.shape[0])

    step_rows = []
    for label, cls in (("sparse (tfmf)", MultVAE), ("densified", _dense_input_vae())):
        rec = capped(cls, 1)(cfg.model).fit(data, cfg.train)  # builds the model, traces once
        med, best = step_seconds(rec, data, cfg.train, n_steps=n_steps, warmup=2, batch=batch)
        step_rows.append({"input": label, "what": "Mult-VAE train step", "ms": 1e3 * med,
                          "ms best": 1e3 * best})
    for label, dense in (("sparse (tfmf)", False), ("densified", True)):
        med, best = first_layer_seconds(batch["items"], cfg.model.dims[0], dense, n_steps)
        step_rows.append({"input": label, "what": "first layer fwd+bwd alone", "ms": 1e3 * med,
                          "ms best": 1e3 * best})
    n_batches = math.ceil(n_users / cfg.train.batch_size)
    for label, dense in (("sparse (tfmf)", False), ("densified", True)):
        times = [input_epoch_seconds(csr, cfg.train.batch_size, True, dense) for _ in range(reps)]
        step_rows.append({"input": label, "what": "input pipeline alone (per batch)",
                          "ms": 1e3 * float(np.median(times)) / n_batches,
                          "ms best": 1e3 * min(times) / n_batches})
    for r in step_rows:
        ref = next(q for q in step_rows if q["what"] == r["what"])
        r["densified / sparse (best)"] = ratio(r["ms best"], ref["ms best"])

    # Alternate off/on so drift in the machine's load hits both; keep each setting's best.
    runs: dict[bool, list[dict]] = {True: [], False: []}
    for _ in range(reps):
        for on in (False, True):
            runs[on].append(measure(steps=2 if tiny else 20, data=data,
                                    overrides=[f"train.prefetch={str(on).lower()}"]))
    pf_rows = []
    for on in (True, False):
        best = max(runs[on], key=lambda r: r["users_per_s"])
        pf_rows.append({"what": "Mult-VAE training epoch", "prefetch": on,
                        "users/s": best["users_per_s"],
                        "all users/s": " ".join(f"{r['users_per_s']:.0f}" for r in runs[on]),
                        "users/CPU-s": best["users_per_cpu_s"],
                        "cores busy": best["cores_busy"]})
    for on in (True, False):
        s = min(input_epoch_seconds(csr, cfg.train.batch_size, on, False) for _ in range(reps))
        pf_rows.append({"what": "input pipeline alone", "prefetch": on, "users/s": n_users / s})
    for r in pf_rows:
        off = next(q for q in pf_rows if q["what"] == r["what"] and not q["prefetch"])
        r["x_prefetch_off"] = ratio(r["users/s"], off["users/s"])

    notes = [
        f"Data: implicit_power_law({n_users}, {n_items}, {nnz}) (ML-20M's items and mean "
        f"positives per user), Mult-VAE {cfg.model.dims}, batch {cfg.train.batch_size}, "
        "float32 (configs/ml20m_mult_vae.yaml).",
        f"Timed batch: the one with the median nnz ({batch_nnz}) of the first 40 of an "
        f"epoch (the power law's heavy users make batches range {min(nnzs)}..{max(nnzs)} nnz).",
        "Train step: the model's compiled Keras train_step on that batch, median ('ms') and best of "
        f"{n_steps}. tfmf's model only takes SparseTensor rows, so 'densified' feeds the same "
        "sparse batch and its first layer calls tf.sparse.to_dense then a dense matmul (the "
        "densification is inside the step, as a dense-input model would pay it on the host).",
        "First layer alone: forward + kernel gradient of x @ W (W: n_items x "
        f"{cfg.model.dims[0]}), sparse_dense_matmul vs to_dense + matmul. Input pipeline "
        "alone: ms per batch of iterating user_rows (densified: + map(tf.sparse.to_dense)).",
        f"Prefetch: two training epochs of {2 if tiny else 20} steps (second timed) with "
        f"train.prefetch on / off, alternated {reps}x, best users/s kept ('all users/s' lists "
        "every run; 'cores busy' = CPU seconds / wall seconds, < 2 means another process had "
        "a core); the 'input pipeline alone' rows iterate user_rows without a model.",
        "NVIDIA's VAE-CF case study (GPU) reports 12.5x from sparse input and 1.8x from "
        "prefetching; on this CPU the model's compute dominates (see ratios).",
    ]
    return {"tables": {"Sparse vs densified input (ms per batch)": step_rows,
                       "Prefetch on vs off": pf_rows}, "notes": notes}


# --------------------------------------------------------------------------- precision / horovod
@suite("precision")
def precision(args) -> dict:
    from pipelines.bench_precision_horovod import SYNTHETIC_OVERRIDES, precision_suite

    tiny = args.scale == "tiny"
    if tiny:
        raw = precision_suite(("biased_mf",), epochs=2, data="sample")
    else:
        raw = precision_suite(epochs=3, data="synthetic", **SYNTHETIC_OVERRIDES)
    rows = []
    for r in raw:
        unit = "ratings" if "ratings_per_s" in r else "users"
        quality = ({"rmse": r["rmse"]} if unit == "ratings"
                   else {"ndcg@20": r["ndcg@20"], "recall@20": r["recall@20"]})
        rows.append({"model": r["model"], "precision": r["precision"], **quality,
                     "unit": unit, "epoch /s": r[f"{unit}_per_s"],
                     "step /s": r[f"{unit}_per_s_step"], "step_ms": r["step_ms"],
                     "loss_scale": r["loss_scale"], "finite": r["weights_finite"]})
    for r in rows:
        ref = next(q for q in rows if q["model"] == r["model"] and q["precision"] == "float32")
        r["step x_float32"] = ratio(r["step /s"], ref["step /s"])
        r["epoch x_float32"] = ratio(r["epoch /s"], ref["epoch /s"])
    notes = [
        ("Embedded sample" if tiny else "Synthetic 4000 users x 2000 items, ~400k low-rank "
         "ratings") + ", 80/20 holdout; MF/biased MF: Adam, 32 dims"
        + ("" if tiny else ", batch 8192; Mult-VAE [600, 200], batch 256") + ".",
        "epoch /s: examples (unit) per second over the epochs after the first; step /s: bare "
        "compiled train step on one batch (median of 30); x_float32: relative to float32 of "
        "the same model. Quality on the holdout: RMSE, or NDCG@20 / Recall@20.",
        "mixed_float16 on a CPU without native fp16 matmuls is emulated and slower; "
        "mixed_bfloat16 uses AVX512_BF16 / AMX where the CPU has them.",
    ]
    return {"tables": {"float32 vs mixed_bfloat16 vs mixed_float16": rows}, "notes": notes,
            "raw": raw}


def horovodrun_available() -> bool:
    """horovodrun beside this Python (where horovodrun_multihost.sh looks) or on PATH, and
    horovod.tensorflow importable."""
    beside = os.path.join(os.path.dirname(sys.executable), "horovodrun")
    if not os.access(beside, os.X_OK) and shutil.which("horovodrun") is None:
        return False
    try:
        import horovod.tensorflow  # noqa: F401
    except Exception:  # ImportError, or a Horovod built without TensorFlow
        return False
    return True


@suite("horovod")
def horovod(args) -> dict:
    from pipelines.bench_precision_horovod import horovod_suite

    if not horovodrun_available():
        return {"skipped": "horovodrun / horovod.tensorflow not installed", "tables": {},
                "notes": []}
    tiny = args.scale == "tiny"
    # tiny: one np=2 launch (the Gloo allreduce path), 2 epochs.
    rows = (horovod_suite((2,), overrides=("train.epochs=2",), variants=()) if tiny
            else horovod_suite((1, 2)))
    base = next((r for r in rows if r["np"] == 1), None)
    for r in rows:
        r["x_np1"] = ratio(r["ratings_per_s"], base and base["ratings_per_s"])
    notes = ["horovodrun --gloo -np N -H localhost:N on this host, biased MF on the embedded "
             "sample (80/20 holdout), batch 1024 per rank; each rank gets cores/N TF threads.",
             "wall_s: launch to exit (includes Python/TF start-up); ratings_per_s: global, "
             "over the epochs after the first; x_np1: relative to np=1."]
    return {"tables": {"Horovod np=1 vs np=2 (one host)": rows}, "notes": notes}


# --------------------------------------------------------------------------- driver
def run_suite(name: str, args: argparse.Namespace, command: str) -> dict:
    """Runs one suite; prints its tables and writes ``<out>/<name>-<scale>.json`` (+ .md)."""
    fn, needs_ml100k = SUITES[name]
    print(f"\n=== {name} (scale {args.scale})", flush=True)
    t0 = time.perf_counter()
    result: dict = {"tables": {}, "notes": []}
    if needs_ml100k:
        from tfmf.data.movielens import find_movielens

        if find_movielens("ml-100k", args.data_dir) is None:
            result["skipped"] = "ML-100K not found (set $TFMF_DATA_DIR or --data-dir)"
    if not result.get("skipped"):
        result = fn(args)
    result = {"suite": name, "scale": args.scale,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": command, "machine": machine_info(),
              "wall_seconds": time.perf_counter() - t0, **result}
    if result.get("skipped"):
        print(f"skipped: {result['skipped']}")
    for title, rows in result["tables"].items():
        print(f"\n{title}\n{format_table(rows)}")
    for n in result["notes"]:
        print(f"* {n}")
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"{name}-{args.scale}")
    with open(stem + ".json", "w") as fh:
        json.dump(result, fh, indent=2, default=str)
    with open(stem + ".md", "w") as fh:
        fh.write(markdown(result))
    print(f"({result['wall_seconds']:.0f} s; wrote {stem}.json)", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:  # `tfmf benchmark SUITE -- ARGS` passes the separator through
        argv.remove("--")
    p = argparse.ArgumentParser(prog="python -m pipelines.benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    load_suite_modules()
    p.add_argument("suite", choices=["all", "speed", "scale", *SUITES],
                   help="a suite; all: every one but scale-*; speed / scale: every speed-* / scale-* suite")
    p.add_argument("--scale", choices=["tiny", "full"], default="full",
                   help="tiny: seconds-long smoke run; full: the documented measurement")
    p.add_argument("--out", default=os.path.join("runs", "bench"),
                   help="directory for <suite>-<scale>.json/.md (default runs/bench)")
    p.add_argument("--with-svdpp", action="store_true",
                   help="explicit-ml100k: also run Surprise SVD++ (minutes per fold)")
    p.add_argument("--data-dir", default=None, help="directory holding ml-100k/")
    p.add_argument("--rows", default=None,
                   help="explicit-ml100k: only these tfmf rows (comma-separated; default all)")
    args = p.parse_args(argv)
    command = "python -m pipelines.benchmark " + shlex.join(argv)
    if args.suite == "all":
        # The scale-* suites take hours (Netflix shape): `scale` runs them on purpose.
        names = [n for n in SUITES if not n.startswith("scale-")]
    elif args.suite in ("speed", "scale"):
        names = [n for n in SUITES if n.startswith(args.suite + "-")]
    else:
        names = [args.suite]
    if args.suite == "all" and not horovodrun_available():
        names.remove("horovod")
        print("horovod suite skipped: horovodrun not installed")
    for name in names:
        run_suite(name, args, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
