"""``scale-ml20m`` / ``scale-netflix``: every model end to end on one big ratings file (issue 14).

    nice -n 10 python -m pipelines.benchmark scale-ml20m --scale full --out runs/bench
    nice -n 10 python -m pipelines.benchmark scale-netflix --scale full --out runs/bench
    python -m pipelines.benchmark scale --scale full      # every scale-* suite (scale-read too)

A synthetic ``ratings.csv``-shaped file (``userId,movieId,rating,timestamp``; ML-20M shape
138,493 x 26,744 x 20M, Netflix shape 480,189 x 17,770 x 100M) is written once in bounded
memory (:func:`pipelines.bench_data.write_ratings_csv`), then each stage runs in its own
spawned process, so its peak RSS (VmHWM) is its own:

* ``load + convert``: the CSV through the public loader (``load_dataset``: peak RSS per rating
  at the end of the read), then ``tfmf data convert``'s :func:`write_shards` (12 shards).
* one stage per model, through :func:`tfmf.runner.train` on the shards (``data.source``: the
  shard directory): biased MF (1 epoch) and ALS (3 sweeps)
  on a 10% rating holdout (RMSE, MAE); iALS (3 sweeps), Mult-VAE (1 epoch) and EASE on the
  positives (ratings >= 4) with 10,000 held-out users (80% fold-in, 20% targets; NDCG@100,
  Recall@20/50). Each is fitted, evaluated on the held-out part and saved, then exported in a
  second process (:func:`stage_export`, as ``tfmf export`` runs), with its own peak RSS.
* peers on the same data and split: the ``implicit`` library's ALS (3 iterations, CG) and
  Surprise's SVD (1 epoch). Surprise keeps Python tuples per rating (~300 B/rating): beyond
  ``SURPRISE_MAX`` training ratings it is fitted on the first users' ratings up to that count
  and its time is scaled per rating (said in the notes).

Each stage's result is appended to ``<out>/scale-<shape>-stages.json`` as soon as it ends, so a
long run that is stopped keeps what it measured.
"""
from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np

from pipelines.bench_data import NETFLIX_SHAPE, _peak_rss, cached_csv

#: (users, items, rows) of the generated files.
SHAPES = {"ml20m": (138_493, 26_744, 20_000_263), "netflix": NETFLIX_SHAPE}
TINY_SHAPE = (3_000, 1_200, 120_000)
#: Most training ratings Surprise is given (its Trainset holds ~300 B/rating in Python objects).
SURPRISE_MAX = 20_000_000
HELD_OUT_USERS = 10_000
GB = 1e9

#: model stage -> (model section, explicit?, train overrides)
MODELS = {
    "biased_mf": ({"name": "biased_mf", "embedding_dim": 100}, True,
                  # Adagrad: its sparse update touches only the batch's rows; the legacy
                  # Adam decays both slots of the whole table every step (133 ms a step of
                  # 8192 at ML-20M shape, measured).
                  {"epochs": 1, "batch_size": 8192, "optimizer": "adagrad",
                   "learning_rate": 0.05}),
    "als": ({"name": "als", "factors": 64, "iterations": 3, "solver": "cg"}, True, {}),
    "ials": ({"name": "ials", "factors": 64, "iterations": 3, "solver": "cg"}, False, {}),
    "mult_vae": ({"name": "mult_vae", "dims": [600, 200], "eval_batch_size": 1000}, False,
                 {"epochs": 1, "batch_size": 500}),
    "ease": ({"name": "ease", "l2": 500.0}, False, {}),
}


def _raw_config(shards: str, stage: str, out: str, n_users: int, tiny: bool) -> dict:
    model, explicit, train = MODELS[stage]
    if tiny:
        model = {**model, **({"iterations": 1} if "iterations" in model else {})}
    data: dict = {"source": shards}
    if explicit:
        data["split"] = {"kind": "holdout", "test_fraction": 0.1, "seed": 0}
        metrics = {"metrics": ["rmse", "mae"]}
    else:
        held = min(HELD_OUT_USERS, max(1, n_users // 10))
        data["binarize_threshold"] = 4.0
        data["split"] = {"kind": "strong", "test_fraction": held / n_users,
                         "fold_in_fraction": 0.8, "seed": 0}
        metrics = {"metrics": ["ndcg", "recall"], "ks": [20, 50, 100], "batch_size": 1000}
    return {"model": model, "data": data,
            "train": {"verbose": 0, "seed": 0, "checkpoint_every": 1, **train},
            "eval": metrics, "output_dir": out, "run_name": stage}


# ----------------------------------------------------------------------------- stages
# Each runs in a fresh spawned process (pipelines.benchmark.run_isolated).
def stage_load_convert(csv: str, shards: str, n_shards: int = 12) -> dict:
    """The CSV through ``load_dataset`` (peak RSS at the end of the read), then shards."""
    from tfmf.config import DataConfig
    from tfmf.data.loading import load_dataset
    from tfmf.data.shards import write_shards

    base = _peak_rss()
    t0 = time.perf_counter()
    data = load_dataset(DataConfig(source=csv))
    load_s, load_peak = time.perf_counter() - t0, _peak_rss()
    shutil.rmtree(shards, ignore_errors=True)
    t1 = time.perf_counter()
    write_shards(data, shards, n_shards, source=csv)
    return {"rows": data.nnz, "users": data.n_users, "items": data.n_items,
            "load_seconds": load_s, "load_peak_rss": load_peak, "idle_rss": base,
            "convert_seconds": time.perf_counter() - t1, "peak_rss": _peak_rss(),
            "seconds": time.perf_counter() - t0}


def stage_model(shards: str, stage: str, out: str, n_users: int, tiny: bool) -> dict:
    """One model through the public runner (load, split, fit, evaluate, save).

    ``runner.train`` loads the data itself (as ``tfmf train`` does, so it drops the loaded
    rows once they are split); the stage seconds are its own ``load ... s`` lines.
    """
    import contextlib
    import io
    import re
    import sys

    import tfmf  # noqa: F401
    import tensorflow  # noqa: F401

    from tfmf import progress, runner
    from tfmf.config import config_from_dict

    base = _peak_rss()
    cfg = config_from_dict(_raw_config(shards, stage, out, n_users, tiny))
    run_dir = os.path.join(out, stage)
    shutil.rmtree(run_dir, ignore_errors=True)
    progress.configure(True)
    lines = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(lines):
        result = runner.train(cfg, run_dir)
    train_s = time.perf_counter() - t0
    sys.stderr.write(lines.getvalue())
    stages = {m.group(1): float(m.group(2))
              for m in re.finditer(r"^(\w+) \.\.\. ([0-9.]+) s$", lines.getvalue(), re.M)}
    fit_s = float(sum(h.get("seconds", 0.0) for h in result.history))
    with open(os.path.join(run_dir, "metrics.json")) as fh:
        n_train = json.load(fh).get("n_train")
    return {"rows": n_train, "stage_seconds": stages, "load_seconds": stages.get("load"),
            "fit_seconds": stages.get("fit", fit_s), "epoch_seconds": fit_s,
            "evaluate_seconds": stages.get("evaluate"),
            "split_fit_eval_save_seconds": train_s,
            "metrics": result.metrics, "idle_rss": base, "peak_rss": _peak_rss(),
            "seconds": time.perf_counter() - t0}


def stage_export(run_dir: str) -> dict:
    """``tfmf export`` of a finished stage's run directory, in its own process as a user runs
    it (so its peak RSS is the export's, not the training's plus the export's)."""
    import tfmf  # noqa: F401
    import tensorflow  # noqa: F401

    from tfmf.export import export_run

    base = _peak_rss()
    t0 = time.perf_counter()
    export_run(run_dir, os.path.join(run_dir, "export"), k=100)
    return {"export_seconds": time.perf_counter() - t0, "export_idle_rss": base,
            "export_peak_rss": _peak_rss()}


def _split(shards: str, stage: str, out: str, n_users: int, tiny: bool):
    """(data, fit part, test part) exactly as the tfmf stage ``stage`` splits the shards."""
    from tfmf import runner
    from tfmf.config import config_from_dict
    from tfmf.data.splits import carve_validation

    cfg = config_from_dict(_raw_config(shards, stage, out, n_users, tiny))
    data = runner.load_data(cfg)
    fold = runner.first_split(cfg, data)
    fit_part, _, test = carve_validation(fold)
    return data, fit_part, test


def stage_implicit(shards: str, out: str, n_users: int, tiny: bool) -> dict:
    """The implicit library's ALS (3 iterations, CG, 64 factors) on iALS's training part."""
    base = _peak_rss()
    from threadpoolctl import threadpool_limits
    from implicit.cpu.als import AlternatingLeastSquares

    t0 = time.perf_counter()
    _, fit_part, test = _split(shards, "ials", out, n_users, tiny)
    csr = fit_part.to_csr()
    del fit_part
    load_s = time.perf_counter() - t0
    iters = MODELS["ials"][0]["iterations"] if not tiny else 1
    model = AlternatingLeastSquares(factors=64, regularization=30.0, alpha=6.0,
                                    iterations=iters, use_cg=True, random_state=0,
                                    num_threads=os.cpu_count() or 1)
    with threadpool_limits(1, "blas"):
        t1 = time.perf_counter()
        model.fit(csr, show_progress=False)
        fit_s = time.perf_counter() - t1
    return {"rows": int(csr.nnz), "load_seconds": load_s, "fit_seconds": fit_s,
            "idle_rss": base, "peak_rss": _peak_rss(), "seconds": time.perf_counter() - t0}


def stage_surprise(shards: str, out: str, n_users: int, tiny: bool,
                   max_ratings: int = SURPRISE_MAX) -> dict:
    """Surprise SVD (1 epoch, 100 factors) on biased MF's training part (capped, see module)."""
    base = _peak_rss()
    import pandas as pd
    from surprise import SVD, Dataset, Reader

    t0 = time.perf_counter()
    _, fit_part, test = _split(shards, "biased_mf", out, n_users, tiny)
    n_train = fit_part.nnz
    # The first users' ratings up to the cap (whole users; the shards hold users in order).
    keep = np.ones(n_train, bool)
    if n_train > max_ratings:
        cum = np.cumsum(np.bincount(fit_part.users, minlength=fit_part.n_users))
        keep = fit_part.users < int(np.searchsorted(cum, max_ratings, "right"))
    df = pd.DataFrame({"user": fit_part.users[keep].astype(np.int64),
                       "item": fit_part.items[keep].astype(np.int64),
                       "rating": fit_part.values[keep].astype(np.float64)})
    subset = bool(not keep.all())
    lo, hi = fit_part.clip_range()
    del fit_part, keep
    trainset = Dataset.load_from_df(df, Reader(rating_scale=(lo, hi))).build_full_trainset()
    del df
    build_s = time.perf_counter() - t0
    algo = SVD(random_state=0, n_epochs=1)
    t1 = time.perf_counter()
    algo.fit(trainset)
    fit_s = time.perf_counter() - t1
    return {"rows": int(trainset.n_ratings), "train_rows": int(n_train),
            "subset": subset, "load_seconds": build_s, "fit_seconds": fit_s,
            "fit_seconds_per_rating": fit_s / max(1, trainset.n_ratings),
            "idle_rss": base, "peak_rss": _peak_rss(), "seconds": time.perf_counter() - t0}


# ----------------------------------------------------------------------------- the suite
def _isolated(fn, *a) -> dict:
    from pipelines.benchmark import run_isolated

    t0 = time.perf_counter()
    try:
        r = run_isolated(fn, *a)
    except Exception as e:  # noqa: BLE001 - a stage that dies (OOM kill, crash) is a result
        r = {"error": f"{type(e).__name__}: {e}"[:300], "peak_rss": None, "rows": None}
    r["process_seconds"] = time.perf_counter() - t0
    return r


def _gb(x) -> float | None:
    return None if x is None else round(x / GB, 3)


def run_scale(args, shape_name: str) -> dict:
    from pipelines.benchmark import ratio

    tiny = args.scale == "tiny"
    shape = TINY_SHAPE if tiny else SHAPES[shape_name]
    # TFMF_SCALE_STAGES="ials,ease": (re)run only those stages, keep the logged others.
    stages_only = [s for s in os.environ.get("TFMF_SCALE_STAGES", "").split(",") if s]
    t0 = time.perf_counter()
    csv = cached_csv(args.out, shape)
    gen_s = time.perf_counter() - t0
    work = os.path.join(args.out, f"scale-{shape_name}-{args.scale}")
    shards = os.path.join(work, "shards")
    os.makedirs(work, exist_ok=True)
    log_path = os.path.join(args.out, f"scale-{shape_name}-{args.scale}-stages.json")
    done: dict = {}
    if stages_only and os.path.exists(log_path):
        with open(log_path) as fh:
            done = json.load(fh)

    def record(name: str, r: dict) -> dict:
        done[name] = r
        with open(log_path + ".tmp", "w") as fh:
            json.dump(done, fh, indent=1, default=float)
        os.replace(log_path + ".tmp", log_path)
        print(f"[scale-{shape_name}] {name}: " + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
            if k not in ("metrics",)) + (f" metrics={r.get('metrics')}" if "metrics" in r
                                         else ""), flush=True)
        return r

    def want(name: str) -> bool:
        return not stages_only or name in stages_only

    if want("load") or not os.path.exists(os.path.join(shards, "manifest.json")):
        record("load", _isolated(stage_load_convert, csv, shards))
    done.setdefault("load", {})
    n_users = done["load"].get("users") or shape[0]
    n = done["load"].get("rows") or shape[2]
    for stage in MODELS:
        if want(stage):
            r = _isolated(stage_model, shards, stage, work, n_users, tiny)
            if not r.get("error"):
                e = _isolated(stage_export, os.path.join(work, stage))
                r.update({k: v for k, v in e.items() if k != "process_seconds"}
                         if not e.get("error") else {"error": "export: " + e["error"]})
            record(stage, r)
    if want("implicit"):
        record("implicit", _isolated(stage_implicit, shards, work, n_users, tiny))
    if want("surprise"):
        record("surprise", _isolated(stage_surprise, shards, work, n_users, tiny))

    load = done["load"]
    rows = [{"stage": "load CSV (load_dataset)", "rows": load.get("rows"),
             "seconds": load.get("load_seconds"), "peak RSS GB": _gb(load.get("load_peak_rss")),
             "B/rating": None if not load.get("load_peak_rss") else
             round(load["load_peak_rss"] / n, 1), "error": load.get("error")},
            {"stage": "load + convert to 12 shards", "rows": load.get("rows"),
             "seconds": load.get("seconds"), "peak RSS GB": _gb(load.get("peak_rss")),
             "B/rating": None if not load.get("peak_rss") else round(load["peak_rss"] / n, 1),
             "error": load.get("error")}]
    for stage in (*MODELS, "implicit", "surprise"):
        r = done.get(stage)
        if r is None:
            continue
        m = r.get("metrics") or {}
        rows.append({"stage": stage, "rows": r.get("rows"),
                     "seconds": r.get("seconds"), "fit s": r.get("fit_seconds"),
                     "load s": r.get("load_seconds"), "eval s": r.get("evaluate_seconds"),
                     "export s": r.get("export_seconds"), "peak RSS GB": _gb(r.get("peak_rss")),
                     "export peak RSS GB": _gb(r.get("export_peak_rss")),
                     "rmse": m.get("rmse"), "ndcg@100": m.get("ndcg@100"),
                     "recall@20": m.get("recall@20"), "error": r.get("error")})
    for row in rows:
        if not row.get("error"):
            row.pop("error", None)
    ratios = []
    ials, imp = done.get("ials", {}), done.get("implicit", {})
    if ials.get("fit_seconds") and imp.get("fit_seconds"):
        ratios.append({"tfmf": "ials fit (3 sweeps)", "peer": "implicit ALS (3 iterations)",
                       "tfmf s": ials["fit_seconds"], "peer s": imp["fit_seconds"],
                       "x_peer": ratio(ials["fit_seconds"], imp["fit_seconds"])})
    mf, svd = done.get("biased_mf", {}), done.get("surprise", {})
    if mf.get("fit_seconds") and svd.get("fit_seconds"):
        per_mf = mf["fit_seconds"] / max(1, svd.get("train_rows") or mf["rows"])
        ratios.append({"tfmf": "biased_mf fit (1 epoch)", "peer": "Surprise SVD (1 epoch)"
                       + (f", on {svd['rows']:,} of {svd['train_rows']:,} ratings"
                          if svd.get("subset") else ""),
                       "tfmf s": mf["fit_seconds"],
                       "peer s": svd["fit_seconds"] if not svd.get("subset") else
                       svd["fit_seconds_per_rating"] * svd["train_rows"],
                       "x_peer": ratio(per_mf, svd["fit_seconds_per_rating"])})
    peaks = [max(r.get("peak_rss") or 0, r.get("export_peak_rss") or 0) for r in done.values()]
    notes = [f"file: {csv} ({os.path.getsize(csv) / 1e6:.0f} MB, {n:,} rows; generated or "
             f"found in {gen_s:.0f} s); stages in their own spawned processes, peak RSS = "
             "VmHWM of that process (interpreter, TensorFlow and the data included)",
             f"largest peak RSS of any stage: {max(peaks) / GB:.2f} GB; load: "
             f"{(load.get('load_peak_rss') or 0) / n:.1f} B/rating",
             f"stage log: {log_path}"]
    if svd.get("subset"):
        notes.append(f"Surprise SVD was fitted on the first {svd['rows']:,} of the "
                     f"{svd['train_rows']:,} training ratings (its Trainset of Python tuples "
                     f"does not fit beside the data at full size); its 'peer s' is scaled per "
                     "rating to the full training set.")
    return {"tables": {f"scale-{shape_name}: {n:,} ratings, {n_users:,} users, "
                       f"{load.get('items') or shape[1]:,} items, per stage": rows,
                       "time ratios (same run)": ratios},
            "notes": notes, "stages": done}


def _register():
    from pipelines.benchmark import suite

    @suite("scale-ml20m")
    def scale_ml20m(args) -> dict:
        """ML-20M shape (138k x 27k x 20M) end to end: every model, peers (issue 14)."""
        return run_scale(args, "ml20m")

    @suite("scale-netflix")
    def scale_netflix(args) -> dict:
        """Netflix shape (480k x 17.8k x 100M) end to end: every model, peers (issue 14)."""
        return run_scale(args, "netflix")


_register()
