"""Hyperparameter selection on validation users only, for the implicit user-fold protocol.

    python -m pipelines.select_implicit --config configs/ml100k_recvae.yaml \\
        --grid model.hidden_dim=200,600 --grid train.learning_rate=5e-4,1e-3

For every fold of the config's user folds, a validation part is carved out of the fold's
*training* users (``tfmf.data.splits.carve_validation``: ``--validation-users`` of them, split
80% fold-in / 20% targets like test users); each candidate is fitted on the remaining training
users and scored on those validation users after every epoch (gradient models) or once
(closed-form models). The fold's test users are never read. The table gives, per candidate,
the validation NDCG@100 / Recall@20 averaged over the folds at the best mean epoch, and each
fold's own best candidate (so a per-fold choice can be compared with the shared one).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

import numpy as np

import tfmf  # noqa: F401  (Keras 2 before TensorFlow)
from tfmf.config import load_config


def candidates(grid: list[str]) -> list[list[str]]:
    """``["a=1,2", "b=x"]`` -> every combination as override lists."""
    axes = []
    for g in grid:
        key, _, values = g.partition("=")
        axes.append([f"{key}={v}" for v in values.split(",")])
    return [list(c) for c in itertools.product(*axes)] if axes else [[]]


def validation_curves(config_path: str, overrides: list[str], folds, val_users: float,
                      seed: int) -> list[list[dict]]:
    """Per fold, the per-epoch validation metrics of one candidate (a closed-form model: one
    row)."""
    from tfmf import registry
    from tfmf.data.splits import carve_validation
    from tfmf.evaluation import validation_metrics

    cfg = load_config(config_path, overrides=["train.verbose=0", *overrides])
    out = []
    for fold in folds:
        fit_train, validation, _test = carve_validation(fold, users=val_users, seed=seed)
        model = registry.create(cfg.model_name, cfg.model)
        model.fit(fit_train, cfg.train, validation=validation)
        hist = [h for h in (getattr(model, "history", None) or []) if "val_ndcg@100" in h]
        if not hist:
            hist = [{"epoch": 1, **validation_metrics(model, validation)}]
        out.append(hist)
    return out


def summarize(curves: list[list[dict]]) -> dict:
    """Best mean-over-folds epoch of the validation NDCG@100 curves."""
    n = min(len(c) for c in curves)
    ndcg = np.array([[h["val_ndcg@100"] for h in c[:n]] for c in curves])
    recall = np.array([[h.get("val_recall@20", np.nan) for h in c[:n]] for c in curves])
    best = int(np.argmax(ndcg.mean(0)))
    return {"epoch": best + 1, "val_ndcg@100": float(ndcg.mean(0)[best]),
            "val_ndcg@100_std": float(ndcg[:, best].std()),
            "val_recall@20": float(recall.mean(0)[best]),
            "per_fold": [float(x) for x in ndcg[:, best]],
            "last_epoch_ndcg": float(ndcg.mean(0)[-1]),
            "curve": [round(float(x), 5) for x in ndcg.mean(0)]}


def main(argv: list[str] | None = None) -> int:
    from pipelines.ml100k_implicit import protocol_folds

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a hyperparameter axis (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--folds", type=int, default=5, help="use the first N user folds")
    p.add_argument("--validation-users", type=float, default=0.2,
                   help="validation users per fold: a share (< 1) or count of training users")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    _, folds = protocol_folds()
    folds = folds[:args.folds]
    results = []
    for cand in candidates(args.grid):
        t0 = time.perf_counter()
        curves = validation_curves(args.config, [*args.set, *cand], folds,
                                   args.validation_users, args.seed)
        row = {"candidate": " ".join(cand) or "(config)", **summarize(curves),
               "seconds": time.perf_counter() - t0}
        results.append(row)
        print(f"{row['candidate']:<60} epoch {row['epoch']:>4}  val ndcg@100 "
              f"{row['val_ndcg@100']:.4f} ± {row['val_ndcg@100_std']:.4f}  recall@20 "
              f"{row['val_recall@20']:.4f}  last {row['last_epoch_ndcg']:.4f}  "
              f"({row['seconds']:.0f} s)", flush=True)
    best = max(results, key=lambda r: r["val_ndcg@100"])
    print(f"\nbest (mean over folds' validation users): {best['candidate']} at epoch "
          f"{best['epoch']}: {best['val_ndcg@100']:.4f}")
    per_fold_best = [max(results, key=lambda r: r["per_fold"][k])["candidate"]
                     for k in range(len(folds))]
    print("per-fold best:", per_fold_best)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"results": results, "per_fold_best": per_fold_best}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
