"""Search report: trials table (CSV + JSON), best config YAML, progress lines and PNG plots."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re

import numpy as np

from tfmf.config import RunConfig
from tfmf.evaluation.model_selection import CVResult
from tfmf.fileio import atomic_write_text as atomic_write
from tfmf.fileio import json_default

#: KerasTuner bookkeeping hps kept in the table (Hyperband's epochs budget is a real setting).
KEPT_TUNER_HPS = ("tuner/epochs",)


# --------------------------------------------------------------------------- metrics
def fold_metrics(name: str, per_fold, seconds: float) -> dict[str, float]:
    """The metrics a trial reports: mean objective (``name``), its per-fold values, min, max,
    std (from :class:`CVResult`'s summary), and wall seconds."""
    per_fold = [float(v) for v in per_fold]
    summ = CVResult(per_fold=[{name: v} for v in per_fold]).summary()[name]
    out = {name: summ["mean"], f"{name}_min": summ["min"], f"{name}_max": summ["max"],
           f"{name}_std": summ["std"], "seconds": float(seconds)}
    out.update({f"{name}_fold{k}": v for k, v in enumerate(per_fold, start=1)})
    return out


def last_line(message: str | None) -> str:
    """The last line of a failed trial's traceback (the exception)."""
    lines = (message or "").strip().splitlines()
    return lines[-1] if lines else ""


def _values(trial) -> dict:
    return {k: v for k, v in trial.hyperparameters.values.items()
            if not k.startswith("tuner/") or k in KEPT_TUNER_HPS}


def trial_rows(oracle, name: str, stage: int | None = None) -> list[dict]:
    """One row per trial of a (local) KerasTuner oracle, in trial-id order.

    Args:
      oracle: the oracle (holding every trial, e.g. the chief's or a local one).
      name: the objective metric.
      stage: two-stage search stage (ids become ``s<stage>-<id>``).

    Returns:
      Dicts with trial_id, stage, status, hyperparameters, folds (per-fold objective), mean,
      min, max, std, seconds and message (failure traceback tail).
    """
    rows = []
    for tid in sorted(oracle.trials):
        t = oracle.trials[tid]
        m = t.metrics

        def get(key):
            return float(m.get_last_value(key)) if m.exists(key) else None

        folds, k = [], 1
        while m.exists(f"{name}_fold{k}"):
            folds.append(get(f"{name}_fold{k}"))
            k += 1
        rows.append({
            "trial_id": tid if stage is None else f"s{stage}-{tid}",
            "stage": stage,
            "status": str(t.status),
            "hyperparameters": _values(t),
            "folds": folds,
            "mean": get(name),
            "min": get(f"{name}_min"),
            "max": get(f"{name}_max"),
            "std": get(f"{name}_std"),
            "seconds": get("seconds"),
            "message": last_line(t.message),
        })
    return rows


def best_rows(rows: list[dict], direction: str, n: int = 1) -> list[dict]:
    """The ``n`` best completed rows by mean objective."""
    ok = [r for r in rows if r["status"] == "COMPLETED" and r["mean"] is not None
          and math.isfinite(r["mean"])]
    return sorted(ok, key=lambda r: r["mean"] if direction == "min" else -r["mean"])[:n]


def format_values(values: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in values.items())


def progress_line(trial, best, name: str, max_trials: int | None, label: str = "") -> str:
    """``[label] trial n/N (id <trial_id>) | hps | name mean ± std | best so far (id)`` for one
    finished trial (n counts from 1; ids are KerasTuner's, as in trials.csv)."""
    n = int(trial.trial_id) + 1
    head = f"{label + ' ' if label else ''}trial {n}/{max_trials or '?'} (id {trial.trial_id})"
    hps = format_values(_values(trial))
    m = trial.metrics
    if trial.status == "COMPLETED" and m.exists(name):
        mean, std = m.get_last_value(name), m.get_last_value(f"{name}_std")
        secs = m.get_last_value("seconds")
        res = f"{name} {mean:.4f} ± {std:.4f}  ({secs:.1f}s)"
    else:
        res = f"{trial.status} {last_line(trial.message)}"
    best_txt = (f"best {best.score:.4f} (id {best.trial_id})"
                if best is not None and best.score is not None else "best -")
    return f"{head} | {hps} | {res} | {best_txt}"


# --------------------------------------------------------------------------- files
def hp_names(rows: list[dict], specs) -> list[str]:
    names = [s.name for s in specs]
    for r in rows:
        names += [k for k in r["hyperparameters"] if k not in names]
    return names


def trials_csv(rows: list[dict], names: list[str]) -> str:
    n_folds = max((len(r["folds"]) for r in rows), default=0)
    header = (["trial_id", "stage", "status"] + names + [f"fold_{k}" for k in range(1, n_folds + 1)]
              + ["mean", "min", "max", "std", "seconds"])
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for r in rows:
        folds = r["folds"] + [None] * (n_folds - len(r["folds"]))
        w.writerow([r["trial_id"], r["stage"], r["status"]]
                   + [r["hyperparameters"].get(n) for n in names] + folds
                   + [r[k] for k in ("mean", "min", "max", "std", "seconds")])
    return buf.getvalue()


def write_report(out_dir: str, rows: list[dict], specs, name: str, direction: str,
                 best_config: RunConfig, extra: dict | None = None) -> dict:
    """Writes trials.csv, trials.json, best_config.yaml, summary.json and the plots.

    Returns:
      Paths written: ``{"trials_csv", "trials_json", "best_config", "summary", "plots": [...]}``.
    """
    names = hp_names(rows, specs)
    best = best_rows(rows, direction, 1)[0]
    files = {k: os.path.join(out_dir, f) for k, f in (
        ("trials_csv", "trials.csv"), ("trials_json", "trials.json"),
        ("best_config", "best_config.yaml"), ("summary", "summary.json"))}
    atomic_write(files["trials_csv"], trials_csv(rows, names))
    atomic_write(files["trials_json"], json.dumps(
        {"objective": name, "direction": direction, "trials": rows}, indent=2,
        default=json_default))
    atomic_write(files["best_config"], best_config.to_yaml())
    summary = {"objective": name, "direction": direction, "best_trial": best["trial_id"],
               "best_mean": best["mean"], "best_std": best["std"],
               "best_hyperparameters": best["hyperparameters"], "n_trials": len(rows),
               "n_completed": sum(r["status"] == "COMPLETED" for r in rows), **(extra or {})}
    atomic_write(files["summary"], json.dumps(summary, indent=2, default=json_default))
    files["plots"] = plot_trials(out_dir, rows, specs, name, direction)
    return files


# --------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    from tfmf.fileio import atomic_write as write_atomically

    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=80))
    _pyplot().close(fig)
    return path


def _position(spec, values: list) -> tuple[np.ndarray, bool]:
    """Plot coordinates of hp values (choices by index) and whether the axis is log."""
    if spec is not None and spec.type == "choice":
        return np.array([spec.values.index(v) if v in spec.values else np.nan
                         for v in values], float), False
    return np.array(values, float), bool(spec is not None and spec.log)


def plot_trials(out_dir: str, rows: list[dict], specs, name: str, direction: str) -> list[str]:
    """objective_per_trial.png, objective_vs_<hp>.png (one per hp), parallel_coordinates.png.

    Only completed trials are drawn. Returns the paths written.
    """
    plt = _pyplot()
    ok = [r for r in rows if r["status"] == "COMPLETED" and r["mean"] is not None]
    if not ok:
        return []
    paths = []
    by_name = {s.name: s for s in specs}
    mean = np.array([r["mean"] for r in ok])
    std = np.array([r["std"] or 0.0 for r in ok])
    best_so_far = (np.minimum if direction == "min" else np.maximum).accumulate(mean)

    fig, ax = plt.subplots(figsize=(6, 4))
    x = np.arange(1, len(ok) + 1)
    ax.errorbar(x, mean, yerr=std, fmt="o", capsize=3, label=f"mean {name} ± std")
    ax.step(x, best_so_far, where="post", label="best so far")
    ax.set_xticks(x, [r["trial_id"] for r in ok], rotation=45, fontsize=7)
    ax.set_xlabel("trial")
    ax.set_ylabel(name)
    ax.legend()
    fig.tight_layout()
    paths.append(_save(fig, os.path.join(out_dir, "objective_per_trial.png")))

    names = hp_names(ok, specs)
    for hp in names:
        spec = by_name.get(hp)
        xs, log = _position(spec, [r["hyperparameters"].get(hp, np.nan) for r in ok])
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.errorbar(xs, mean, yerr=std, fmt="o", capsize=3)
        if log:
            ax.set_xscale("log")
        if spec is not None and spec.type == "choice":
            ax.set_xticks(range(len(spec.values)), [str(v) for v in spec.values])
        ax.set_xlabel(hp)
        ax.set_ylabel(name)
        fig.tight_layout()
        fname = "objective_vs_" + re.sub(r"[^A-Za-z0-9]+", "_", hp).strip("_") + ".png"
        paths.append(_save(fig, os.path.join(out_dir, fname)))

    # Parallel coordinates: each hp scaled to [0, 1] over its range (log-aware), objective last.
    cols, labels = [], []
    for hp in names:
        spec = by_name.get(hp)
        xs, log = _position(spec, [r["hyperparameters"].get(hp, np.nan) for r in ok])
        if spec is not None and spec.type == "choice":
            lo, hi = 0.0, max(1.0, len(spec.values) - 1.0)
        elif spec is not None:
            lo, hi = float(spec.min), float(spec.max)
        else:
            lo, hi = np.nanmin(xs), np.nanmax(xs)
        if log:
            xs, lo, hi = np.log(xs), np.log(lo), np.log(hi)
        cols.append((xs - lo) / (hi - lo) if hi > lo else np.full_like(xs, 0.5))
        labels.append(hp)
    span = mean.max() - mean.min()
    cols.append((mean - mean.min()) / span if span > 0 else np.full_like(mean, 0.5))
    labels.append(name)
    grid = np.stack(cols, axis=1)
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(labels)), 4))
    cmap = plt.get_cmap("viridis_r" if direction == "min" else "viridis")
    for row, v in zip(grid, cols[-1]):
        ax.plot(range(len(labels)), row, "-o", color=cmap(v), alpha=0.8, markersize=3)
    for j in range(len(labels)):
        ax.axvline(j, color="grey", lw=0.5)
    ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("scaled value (range of the search space)")
    ax.set_title(f"{name}: {mean.min():.4f} .. {mean.max():.4f} (colour = {name})", fontsize=9)
    fig.tight_layout()
    paths.append(_save(fig, os.path.join(out_dir, "parallel_coordinates.png")))
    return paths
