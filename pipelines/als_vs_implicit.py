"""tfmf iALS vs the `implicit` library's ALS: seconds per iteration and NDCG@100, same protocol.

Protocol (as configs/ml100k_ials.yaml): ML-100K ratings >= 4 are positives, users with >= 5
positives, 5 user folds (``tfmf.data.splits.user_folds``); every held-out user is folded in
from 80% of their items against the trained item factors and ranked on the other 20%
(``tfmf.evaluation.evaluate``, seen items excluded). Both libraries fit the same training
matrices with the same factors/regularization/iterations on the same CPU threads.

Confidence: tfmf uses Hu et al.'s ``c = 1 + alpha r``; implicit >= 0.5 uses ``c = alpha r``, so
on binary data tfmf ``alpha = a`` is implicit ``alpha = 1 + a`` (identical objectives).

Run (implicit is the `bench` extra: ``pip install implicit``)::

    python pipelines/als_vs_implicit.py                     # tuned + reference settings
    python pipelines/als_vs_implicit.py --settings reference --iterations 15
"""
from __future__ import annotations

import argparse
import os
import time

# implicit warns (and slows down) when OpenBLAS multithreads inside its own thread pool.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import tfmf  # noqa: E402,F401  (Keras 2 before TensorFlow)
import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from tfmf.config import EvalConfig, TrainConfig, load_config  # noqa: E402
from tfmf.data.movielens import load_movielens  # noqa: E402
from tfmf.data.splits import user_folds  # noqa: E402
from tfmf.evaluation import evaluate  # noqa: E402
from tfmf.models.als import IALS, IALSConfig  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: (factors, regularization, tfmf alpha) per named setting; "reference" is implicit's
#: factors=64, regularization=0.1, alpha=10 (i.e. tfmf alpha 9).
SETTINGS = {"reference": (64, 0.1, 9.0)}


class ImplicitAdapter:
    """Just enough of the Recommender API (``score``) for tfmf.evaluation to rank implicit's
    model: held-out users are folded in with its own ``recalculate_user``."""

    task = "implicit"

    def __init__(self, model):
        self.model = model

    def score(self, users=None, user_items: sp.csr_matrix | None = None) -> np.ndarray:
        rows = sp.csr_matrix(user_items, dtype=np.float32)
        P = self.model.recalculate_user(np.arange(rows.shape[0]), rows)
        return np.asarray(P) @ np.asarray(self.model.item_factors).T


def fit_tfmf(split, cfg: IALSConfig, seed: int) -> tuple[object, list[float]]:
    model = IALS(cfg).fit(split.train, TrainConfig(seed=seed, verbose=0))
    return model, [h["solve_seconds"] for h in model.history]


def fit_implicit(split, cfg: IALSConfig, seed: int, threads: int) -> tuple[object, list[float]]:
    from implicit.cpu.als import AlternatingLeastSquares

    times: list[float] = []
    model = AlternatingLeastSquares(
        factors=cfg.factors, regularization=cfg.regularization, alpha=1.0 + cfg.alpha,
        iterations=cfg.iterations, use_cg=cfg.solver == "cg", random_state=seed,
        num_threads=threads)
    model.cg_steps = cfg.cg_steps
    model.fit(split.train.to_csr(), show_progress=False,
              callback=lambda it, seconds, loss: times.append(seconds))
    return ImplicitAdapter(model), times


def run(args) -> list[dict]:
    data = (load_movielens("ml-100k", args.data_dir).binarize(4.0)
            .compact(min_user_interactions=5))
    folds = list(user_folds(data, 5, fold_in_fraction=0.8, seed=args.seed))[:args.folds]
    print(f"ML-100K implicit: {data.n_users} users, {data.n_items} items, {data.nnz} positives;"
          f" {len(folds)} user folds", flush=True)
    tuned = load_config(os.path.join(ROOT, "configs", "ml100k_ials.yaml")).model
    settings = {"tuned": (tuned.factors, tuned.regularization, tuned.alpha), **SETTINGS}
    ecfg = EvalConfig(metrics=["ndcg", "recall"], ks=[20, 100], batch_size=1024)
    rows = []
    for name in args.settings:
        factors, reg, alpha = settings[name]
        for solver in args.solvers:
            cfg = IALSConfig(factors=factors, regularization=reg, alpha=alpha,
                             iterations=args.iterations, solver=solver, cg_steps=3,
                             weighted_lambda=False)
            for lib in args.libraries:
                per_iter, ndcg, recall = [], [], []
                for split in folds:
                    if lib == "tfmf":
                        model, times = fit_tfmf(split, cfg, args.seed)
                    else:
                        model, times = fit_implicit(split, cfg, args.seed, args.threads)
                    # The first tfmf iteration includes tf.function tracing: report the median.
                    per_iter.append(float(np.median(times)))
                    res = evaluate(model, split, ecfg)
                    ndcg.append(res["ndcg@100"])
                    recall.append(res["recall@20"])
                row = {"setting": name, "factors": factors, "reg": reg, "alpha (tfmf)": alpha,
                       "solver": solver, "library": lib, "s/iter": float(np.mean(per_iter)),
                       "ndcg@100": float(np.mean(ndcg)), "ndcg@100 std": float(np.std(ndcg)),
                       "recall@20": float(np.mean(recall))}
                rows.append(row)
                print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in row.items()), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        out.append("| " + " | ".join(f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k])
                                     for k in keys) + " |")
    return "\n".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=None, help="directory holding ml-100k/")
    p.add_argument("--settings", nargs="+", default=["tuned", "reference"],
                   choices=["tuned", *SETTINGS])
    p.add_argument("--solvers", nargs="+", default=["cholesky", "cg"], choices=["cholesky", "cg"])
    p.add_argument("--libraries", nargs="+", default=["tfmf", "implicit"],
                   choices=["tfmf", "implicit"])
    p.add_argument("--iterations", type=int, default=15)
    p.add_argument("--folds", type=int, default=5, help="use the first N of the 5 user folds")
    p.add_argument("--threads", type=int, default=0, help="implicit's threads (0: all cores)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    rows = run(args)
    print()
    print(markdown(rows))
    print(f"\n({time.perf_counter() - t0:.0f} s total)")


if __name__ == "__main__":
    main()
