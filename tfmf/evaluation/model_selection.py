"""Model selection in the style of scikit-learn / Surprise: fit per fold, report the spread."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from tfmf import registry
from tfmf.evaluation import evaluate


@dataclass
class CVResult:
    """Per-fold metrics plus their mean/min/max/std.

    Attributes:
      per_fold: one dict per fold (metrics, ``fit_seconds``, ``fold``).
    """

    per_fold: list[dict] = field(default_factory=list)

    def metric_names(self) -> list[str]:
        names: list[str] = []
        for row in self.per_fold:
            names += [k for k, v in row.items()
                      if k not in names and k != "fold" and isinstance(v, (int, float))]
        return names

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for name in self.metric_names():
            vals = np.array([r[name] for r in self.per_fold if name in r], np.float64)
            out[name] = {"mean": float(vals.mean()), "min": float(vals.min()),
                         "max": float(vals.max()), "std": float(vals.std())}
        return out

    def mean(self, name: str) -> float:
        return self.summary()[name]["mean"]

    def to_dict(self) -> dict:
        return {"per_fold": self.per_fold, "summary": self.summary()}

    def table(self) -> str:
        """A plain-text table: one row per fold, then mean/min/max/std."""
        from tfmf.tables import format_table

        names = self.metric_names()
        rows = [{"fold": str(r.get("fold", i + 1)), **{n: r.get(n) for n in names}}
                for i, r in enumerate(self.per_fold)]
        summ = self.summary()
        rows += [{"fold": stat, **{n: summ[n][stat] for n in names}}
                 for stat in ("mean", "min", "max", "std")]
        return format_table(rows, float_format=".4f", columns=["fold", *names])


def split_parts(fold) -> tuple[Any, Any]:
    """(train, test) of a fold given as a tuple or a StrongSplit-like object."""
    if isinstance(fold, tuple):
        return fold
    return fold.train, fold


def cross_validate(model_name: str, model_config, folds: Iterable, *, train_config=None,
                   eval_config=None, run_dir: str | None = None, verbose: bool = True,
                   validation_users: float = 0.0, seed: int = 0) -> CVResult:
    """Fits a fresh model on each fold's training part and evaluates it on the held-out part.

    When ``train_config.validation_fraction`` (rating folds) or ``validation_users`` (user
    folds) is set, each fold's training part gives up a validation part for per-epoch metrics,
    early stopping and restore_best; the held-out part is scored once, after the fit.

    Args:
      model_name: registry name (e.g. "biased_mf").
      model_config: the model's Config dataclass instance (None: defaults).
      folds: (train, test) pairs or StrongSplit objects, e.g. from tfmf.data.splits.
      train_config: tfmf.config.TrainConfig for gradient/ALS models.
      eval_config: tfmf.config.EvalConfig.
      run_dir: if given, each fold trains in ``run_dir/fold_<k>``.
      verbose: print one line per fold.
      validation_users: validation users per user fold (count, or share < 1).
      seed: seed of the validation parts.

    Returns:
      A CVResult with per-fold and summary statistics.
    """
    from tfmf.data.splits import carve_validation

    result = CVResult()
    fraction = getattr(train_config, "validation_fraction", 0.0) if train_config else 0.0
    for k, fold in enumerate(folds, start=1):
        train, validation, test = carve_validation(fold, fraction=fraction,
                                                   users=validation_users, seed=seed)
        model = registry.create(model_name, model_config)
        fold_dir = os.path.join(run_dir, f"fold_{k}") if run_dir else None
        t0 = time.perf_counter()
        model.fit(train, train_config, validation=validation, run_dir=fold_dir)
        fit_s = time.perf_counter() - t0
        metrics = evaluate(model, test, eval_config)
        row = {"fold": k, **metrics, "fit_seconds": fit_s}
        result.per_fold.append(row)
        if verbose:
            print(f"fold {k}: " + " ".join(f"{m}={v:.4f}" for m, v in row.items()
                                          if isinstance(v, float)), flush=True)
    if not result.per_fold:
        raise ValueError("cross_validate got no folds")
    return result
