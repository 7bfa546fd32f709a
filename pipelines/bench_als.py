"""``speed-ials``: tfmf iALS vs the implicit library's ALS, side by side in one run, three scales.

    python -m pipelines.benchmark speed-ials --scale full --out runs/bench
    python -m pipelines.bench_als --scales ml100k mid --solvers cg     # one part, printed

Scales (the data every library fits is the same matrix in the same process):

* ``ml100k``: real ML-100K, ratings >= 4 positive, users with >= 5 positives, the 5 user folds
  of configs/ml100k_ials.yaml (80% fold-in / 20% targets); total fit seconds per fold and
  NDCG@100 over the folds, 15 iterations.
* ``mid``: a mid-size catalogue, synthetic power-law implicit data of 600 users x 6,300 items
  x 60,000 positives, the same 5-user-fold protocol.
* ``ml20m``: ML-20M shape, 136,677 users x 26,744 items x 7.4M positives (synthetic power law),
  3 iterations: seconds per iteration (median of the iterations after the first), NDCG@100 of
  2% held-out users folded in.

Settings: factors 64, regularization 30 (plain lambda), tfmf alpha 5 (= implicit alpha 6:
implicit >= 0.5 uses confidence ``alpha r``, tfmf ``1 + alpha r``; identical objectives on binary
data), the same iterations; each solver pair is run (tfmf cholesky vs implicit's Cholesky,
``use_cg=False``; tfmf cg vs implicit's conjugate gradient, both 3 steps). Threads: implicit
``num_threads=2`` with its BLAS limited to one thread (as it asks); TensorFlow's default pools
(nproc = 2 here). Folds alternate between the libraries so machine-load drift hits both.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import tfmf  # noqa: F401  (Keras 2 before TensorFlow)
from pipelines.benchmark import ratio, suite

#: name -> (n_users, n_items, positives) of the synthetic scales.
SHAPES = {"mid": (600, 6_300, 60_000), "ml20m": (136_677, 26_744, 7_400_000)}
TINY_SHAPES = {"mid": (120, 600, 3_000), "ml20m": (2_000, 1_500, 40_000)}
#: (factors, regularization, tfmf alpha): configs/ml100k_ials.yaml.
SETTING = (64, 30.0, 5.0)


def _folds(scale: str, tiny: bool, data_dir: str | None):
    """(description, list of StrongSplits) of a small scale."""
    from tfmf.data.splits import user_folds

    if scale == "ml100k":
        from tfmf.data.movielens import load_movielens

        data = (load_movielens("ml-100k", data_dir).binarize(4.0)
                .compact(min_user_interactions=5))
    else:
        from tfmf.data.synthetic import implicit_power_law

        data = implicit_power_law(*(TINY_SHAPES if tiny else SHAPES)[scale], seed=0)
    folds = list(user_folds(data, 5, fold_in_fraction=0.8, seed=0))
    desc = f"{data.n_users} users x {data.n_items} items x {data.nnz} positives"
    return desc, folds[:1] if tiny else folds


def _fit_tfmf(train, solver: str, iterations: int, threads_note: list) -> tuple[object, float,
                                                                                list[float]]:
    from tfmf.config import TrainConfig
    from tfmf.models.als import IALS, IALSConfig

    factors, reg, alpha = SETTING
    cfg = IALSConfig(factors=factors, regularization=reg, alpha=alpha, iterations=iterations,
                     solver=solver, cg_steps=3, weighted_lambda=False, init_stddev=0.01)
    t0 = time.perf_counter()
    model = IALS(cfg).fit(train, TrainConfig(seed=0, verbose=0))
    return model, time.perf_counter() - t0, [h["solve_seconds"] for h in model.history]


def _fit_implicit(train, solver: str, iterations: int) -> tuple[object, float, list[float]]:
    from threadpoolctl import threadpool_limits

    from pipelines.als_vs_implicit import ImplicitAdapter
    from implicit.cpu.als import AlternatingLeastSquares

    factors, reg, alpha = SETTING
    times: list[float] = []
    model = AlternatingLeastSquares(factors=factors, regularization=reg, alpha=1.0 + alpha,
                                    iterations=iterations, use_cg=solver == "cg",
                                    random_state=0, num_threads=2)
    model.cg_steps = 3
    csr = train.to_csr()
    with threadpool_limits(1, "blas"):
        t0 = time.perf_counter()
        model.fit(csr, show_progress=False, callback=lambda it, s, loss: times.append(s))
        fit_s = time.perf_counter() - t0
    return ImplicitAdapter(model), fit_s, times


def _ndcg(model, split) -> float:
    from tfmf.config import EvalConfig
    from tfmf.evaluation import evaluate

    return float(evaluate(model, split, EvalConfig(metrics=["ndcg"], ks=[100],
                                                   batch_size=1024))["ndcg@100"])


def small_scale(scale: str, tiny: bool, data_dir, solvers) -> tuple[list[dict], str]:
    desc, folds = _folds(scale, tiny, data_dir)
    iterations = 1 if tiny else 15
    per = {(s, lib): {"fit": [], "ndcg": []} for s in solvers for lib in ("tfmf", "implicit")}
    for split in folds:
        for solver in solvers:
            for lib in ("tfmf", "implicit"):
                if lib == "tfmf":
                    model, fit_s, _ = _fit_tfmf(split.train, solver, iterations, [])
                else:
                    model, fit_s, _ = _fit_implicit(split.train, solver, iterations)
                per[solver, lib]["fit"].append(fit_s)
                per[solver, lib]["ndcg"].append(_ndcg(model, split))
    rows = []
    for (solver, lib), r in per.items():
        rows.append({"scale": scale, "solver": solver, "library": lib, "folds": len(folds),
                     "fit_s/fold": float(np.mean(r["fit"])),
                     "first fold s": r["fit"][0], "ndcg@100": float(np.mean(r["ndcg"]))})
    for row in rows:
        peer = next(q for q in rows if q["solver"] == row["solver"] and q["library"] == "implicit")
        row["x_implicit"] = ratio(row["fit_s/fold"], peer["fit_s/fold"])
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in row.items()), flush=True)
    return rows, f"{scale}: {desc}, {len(folds)} user fold(s), {iterations} iterations"


def large_scale(tiny: bool, solvers) -> tuple[list[dict], str]:
    from tfmf.data.splits import user_folds
    from tfmf.data.synthetic import implicit_power_law

    shape = (TINY_SHAPES if tiny else SHAPES)["ml20m"]
    data = implicit_power_law(*shape, seed=0)
    split = next(iter(user_folds(data, 50, fold_in_fraction=0.8, seed=0)))  # 2% held out
    iterations = 2 if tiny else 3
    rows = []
    for solver in solvers:
        for lib in ("tfmf", "implicit"):
            fit = _fit_tfmf if lib == "tfmf" else _fit_implicit
            args = (split.train, solver, iterations) + (([],) if lib == "tfmf" else ())
            model, fit_s, times = fit(*args)
            rows.append({"scale": "ml20m", "solver": solver, "library": lib,
                         "s/iter": float(np.median(times[1:])), "first iter s": times[0],
                         "fit_s": fit_s, "ndcg@100": _ndcg(model, split)})
            print(rows[-1], flush=True)
    for row in rows:
        peer = next(q for q in rows if q["solver"] == row["solver"] and q["library"] == "implicit")
        row["x_implicit"] = ratio(row["s/iter"], peer["s/iter"])
    return rows, (f"ml20m: implicit_power_law{shape}, {len(split.test_users)} held-out users "
                  f"(2%), {iterations} iterations; s/iter: median of iterations 2..")


@suite("speed-ials")
def speed_ials(args) -> dict:
    try:
        import implicit  # noqa: F401
    except ImportError:
        return {"tables": {}, "notes": ["implicit not installed (pip install implicit): skipped"]}
    tiny = args.scale == "tiny"
    scales = getattr(args, "scales", None) or ["ml100k", "mid", "ml20m"]
    solvers = getattr(args, "solvers", None) or ["cholesky", "cg"]
    tables, notes = {}, []
    from tfmf.data.movielens import find_movielens

    for scale in scales:
        if scale == "ml100k" and find_movielens("ml-100k", args.data_dir) is None:
            notes.append("ML-100K not found (TFMF_DATA_DIR): ml100k scale skipped.")
            continue
        if scale == "ml20m":
            # implicit's Cholesky path takes ~30 s an iteration at this shape: CG only.
            rows, note = large_scale(tiny, [s for s in solvers if s == "cg"] or ["cg"])
            tables["ML-20M shape: seconds per iteration"] = rows
        else:
            rows, note = small_scale(scale, tiny, args.data_dir, solvers)
            tables[f"{scale}: fit seconds per fold"] = rows
        notes.append(note)
    notes += [
        "Same data, factors 64, regularization 30, alpha 5 (implicit alpha 6), 3 CG steps; "
        "implicit num_threads=2 (BLAS 1 thread), TensorFlow default pools on 2 CPUs.",
        "fit_s/fold: wall seconds of fit() (tfmf includes tf.function tracing and its "
        "per-iteration loss); x_implicit: tfmf / implicit of the same solver, same run.",
    ]
    return {"tables": tables, "notes": notes}


def main(argv=None) -> None:
    from tfmf.tables import format_table

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", default="full", choices=["tiny", "full"])
    p.add_argument("--scales", nargs="+", choices=["ml100k", "mid", "ml20m"])
    p.add_argument("--solvers", nargs="+", choices=["cholesky", "cg"])
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    out = speed_ials(args)
    for title, rows in out["tables"].items():
        print(f"\n{title}\n{format_table(rows, markdown=True)}")
    print("\n".join(out["notes"]))


if __name__ == "__main__":
    main()
