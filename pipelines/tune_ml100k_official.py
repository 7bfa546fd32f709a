"""Nested evaluation of a tuned model on the official ML-100K folds.

For each official fold u1..u5: tune inside its training part (``u<k>.base``, split into
``tune.inner_folds`` inner folds; ``u<k>.test`` is never seen by the search), train the best
config on the whole ``u<k>.base`` and evaluate it on ``u<k>.test``. The mean test RMSE over the
outer folds is an unbiased estimate of "biased MF + this tuning procedure".

    python pipelines/tune_ml100k_official.py --out runs/nested-ml100k
    python pipelines/tune_ml100k_official.py --folds u1 u2 --set tune.max_trials=4

Writes per fold ``OUT/<fold>/`` (the search: trials.csv, best_config.yaml, plots) and
``OUT/nested.json`` (per-fold best hyperparameters, inner-CV score, test metrics, seconds),
and prints the outer-fold table. Reruns resume finished searches (KerasTuner reload).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import tfmf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from tfmf.config import load_config
from tfmf.errors import TfmfError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def nested_fold(cfg, fold: str, out_dir: str, data, progress: bool = True) -> dict:
    """Tunes on ``fold``'s training part, refits the best config on all of it, tests it.

    Args:
      cfg: run config with an official split (its ``folds`` are replaced by ``[fold]``).
      fold: official fold name (u1..u5).
      out_dir: the fold's tuning directory.
      data: the full ML-100K InteractionData (official folds share its id space).
      progress: per-trial lines.

    Returns:
      A row: fold, test metrics, inner-CV best score, best hyperparameters, seconds.
    """
    import dataclasses

    from tfmf.evaluation.model_selection import cross_validate
    from tfmf.runner import splits_for
    from tfmf.tuning import run_tuning

    split = dataclasses.replace(cfg.data.split, kind="official", folds=[fold])
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, split=split))
    t0 = time.perf_counter()
    res = run_tuning(cfg, out_dir, data=data, progress=progress)
    tune_s = time.perf_counter() - t0
    best = res.best_config
    # The refit sees u<k>.base only (no validation data) and is scored once on u<k>.test.
    test = cross_validate(best.model_name, best.model, splits_for(best, data),
                          train_config=best.train, eval_config=best.eval, verbose=False)
    row = {"fold": fold, **{k: v for k, v in test.per_fold[0].items() if k != "fold"},
           f"inner_{res.objective}": res.best_score, "tune_seconds": tune_s,
           "n_trials": len(res.trials), "best": res.best_values}
    print(f"{fold}: test " + " ".join(f"{k}={test.per_fold[0][k]:.4f}" for k in best.eval.metrics
                                      if k in test.per_fold[0])
          + f" | inner {res.objective} {res.best_score:.4f} | {len(res.trials)} trials, "
          f"{tune_s:.0f}s tuning | best {res.best_values}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "ml100k_biased_mf_tune.yaml"))
    p.add_argument("--out", default=os.path.join("runs", "nested-ml100k"))
    p.add_argument("--folds", nargs="+", default=None, help="outer folds (default: the config's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. tune.max_trials=4 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no per-trial lines")
    args = p.parse_args(argv)

    from tfmf.evaluation.model_selection import CVResult
    from tfmf.runner import load_data

    try:
        cfg = load_config(args.config, overrides=args.set)
        folds = args.folds or list(cfg.data.split.folds)
        data = load_data(cfg)
        t0 = time.perf_counter()
        rows = [nested_fold(cfg, f, os.path.join(args.out, f), data, progress=not args.quiet)
                for f in folds]
    except TfmfError as exc:
        print(exc, file=sys.stderr)
        return 2
    total = time.perf_counter() - t0
    table = CVResult(per_fold=[{k: v for k, v in r.items() if k != "best"} for r in rows])
    budget = {"strategy": cfg.tune.strategy, "max_trials": cfg.tune.max_trials,
              "refine_trials": cfg.tune.refine_trials if cfg.tune.strategy == "two_stage" else 0,
              "inner_folds": cfg.tune.inner_folds, "epochs": cfg.train.epochs}
    print(f"\nnested evaluation of tuned {cfg.model_name} on ML-100K folds {', '.join(folds)} "
          f"({args.config}; budget {budget}; {total:.0f}s)")
    print(table.table())
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "nested.json"), "w") as fh:
        json.dump({"config": args.config, "overrides": args.set, "budget": budget,
                   "seconds": total, "folds": rows, "summary": table.summary()}, fh, indent=2,
                  default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
