"""Run workflows shared by the CLI, the demo and tuning: config -> data -> fit -> evaluate -> run dir.

A run directory holds::

    config.yaml        the validated config snapshot (written first)
    history.csv        per-epoch training history (the Trainer rewrites it atomically)
    tensorboard/       TensorBoard scalars
    checkpoints/       training checkpoints (resume)
    model/             the fitted Recommender (recommender.json written last)
    ids.npz            raw user/item ids (+ titles) for the model's indices
    learning_curve.png
    metrics.json       written LAST and atomically: its presence marks a complete run
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from tfmf import distributed
from tfmf.config import RunConfig
from tfmf.data.interactions import InteractionData


@dataclass
class RunResult:
    """What a run produced."""

    run_dir: str | None
    metrics: dict
    history: list = field(default_factory=list)
    model: object = None


def new_run_dir(cfg: RunConfig) -> str:
    """``output_dir/run_name`` or ``output_dir/<model>-<source>-<timestamp>``."""
    name = cfg.run_name
    if not name:
        src = os.path.splitext(os.path.basename(cfg.data.source))[0]
        name = f"{cfg.model_name}-{src}-{time.strftime('%Y%m%d-%H%M%S')}"
    return os.path.join(cfg.output_dir, name)


def prepare_run_dir(run_dir: str, cfg: RunConfig, resume: bool = False) -> None:
    """Creates the directory and snapshots the config; refuses to overwrite a finished run."""
    from tfmf.errors import ConfigError

    try:
        os.makedirs(run_dir, exist_ok=True)
        probe = os.path.join(run_dir, ".write-test")
        with open(probe, "w") as fh:
            fh.write("")
        os.remove(probe)
    except OSError as exc:
        raise ConfigError(f"cannot write run directory {run_dir!r}: {exc.strerror}",
                          key="output_dir") from None
    if not resume and os.path.exists(os.path.join(run_dir, "metrics.json")):
        raise ConfigError(f"run directory {run_dir!r} already holds a finished run; "
                          "choose another run_name or output_dir", key="run_name")
    if resume:
        _check_resumable(run_dir, cfg)
    if resume and os.path.exists(os.path.join(run_dir, "metrics.json")):
        # The snapshot below describes the continued run: the old metrics no longer match it,
        # and metrics.json must only mark a complete run.
        os.remove(os.path.join(run_dir, "metrics.json"))
    _atomic_write(os.path.join(run_dir, "config.yaml"), cfg.to_yaml())


def _check_resumable(run_dir: str, cfg: RunConfig) -> None:
    """Refuses to resume with model or data settings other than the run's snapshot.

    The checkpoint holds tensors shaped by them (embedding sizes, id spaces): restoring into
    another shape fails deep in TensorFlow. ``train.*`` may change (e.g. more epochs).
    """
    from tfmf.config import load_config, to_dict
    from tfmf.errors import ConfigError

    snapshot = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(snapshot):
        return  # nothing recorded; the Trainer reports a missing checkpoint itself
    old = load_config(snapshot)
    if old.model_name != cfg.model_name:
        raise ConfigError(f"cannot resume run {run_dir!r}: it trained {old.model_name!r}, the "
                          f"config asks for {cfg.model_name!r}", key="model.name")
    # Where the data lives (data_dir, download) may change between machines; what it is may not.
    where = {"data_dir", "download"}
    for section in ("model", "data"):
        was, now = to_dict(getattr(old, section)), to_dict(getattr(cfg, section))
        for key in sorted((set(was) | set(now)) - (where if section == "data" else set())):
            if was.get(key) != now.get(key):
                raise ConfigError(
                    f"cannot resume run {run_dir!r} with {section}.{key}={now.get(key)!r}: it "
                    f"was trained with {was.get(key)!r} (only train.* settings may change on "
                    "resume)", key=f"{section}.{key}")


def load_data(cfg: RunConfig) -> InteractionData:
    from tfmf.data.loading import load_dataset

    return load_dataset(cfg.data)


def splits_for(cfg: RunConfig, data: InteractionData):
    """All (train, test) folds the config's split describes (a list)."""
    from tfmf.data.splits import make_splits

    return list(make_splits(data, cfg.data.split, data_dir=cfg.data.data_dir))


def first_split(cfg: RunConfig, data: InteractionData):
    """Only the first fold (train/evaluate/tune use one): later folds are never built."""
    from tfmf.data.splits import make_splits

    return next(iter(make_splits(data, cfg.data.split, data_dir=cfg.data.data_dir)))


def train(cfg: RunConfig, run_dir: str | None = None, *, resume: bool = False,
          data: InteractionData | None = None) -> RunResult:
    """Fits the configured model on the first split's training part and evaluates it.

    Args:
      cfg: validated run config.
      run_dir: where to write (None: a new directory under ``cfg.output_dir``).
      resume: continue training from the last checkpoint in ``run_dir``.
      data: preloaded data (skips loading ``cfg.data``).

    Returns:
      RunResult with test metrics (empty when the split is "none").
    """
    from tfmf.evaluation import evaluate
    from tfmf.evaluation.model_selection import build_model, split_parts

    run_dir = run_dir or new_run_dir(cfg)
    chief = distributed.is_chief()
    if chief:
        prepare_run_dir(run_dir, cfg, resume=resume)
    data = data if data is not None else load_data(cfg)
    train_part, test = split_parts(first_split(cfg, data))
    _check_split_sizes(cfg, data, train_part, test)
    model = build_model(cfg.model_name, cfg.model)
    validation = test if isinstance(test, InteractionData) and not test.implicit else None
    model.fit(train_part, cfg.train, validation=validation, run_dir=run_dir, resume=resume)
    metrics = evaluate(model, test, cfg.eval) if test is not None else {}
    if chief:
        with atomic_directory(os.path.join(run_dir, "model")) as tmp:
            model.save(tmp)
        save_id_maps(os.path.join(run_dir, "ids.npz"), data)
        plot_learning_curve(model.history, os.path.join(run_dir, "learning_curve.png"))
        write_metrics(run_dir, {"model": cfg.model_name, "data": data.name,
                                "n_train": train_part.nnz, "metrics": metrics})
    return RunResult(run_dir=run_dir, metrics=metrics, history=model.history, model=model)


def _check_split_sizes(cfg: RunConfig, data: InteractionData, train_part, test) -> None:
    """Raises DataError when the split left nothing to train on or to evaluate (NaN metrics).

    Raises:
      DataError: naming the data source and the split settings to change.
    """
    from tfmf.errors import DataError

    # A StrongSplit is evaluated on its targets; a (train, test) pair on its test part.
    held_out = getattr(test, "target", test)
    for part, what in ((train_part, "training"), (held_out, "test")):
        if isinstance(part, InteractionData) and part.nnz == 0:
            raise DataError(
                f"the {cfg.data.split.kind} split of {data.nnz} interaction(s) left no {what} "
                "interactions; use more data or change data.split (e.g. test_fraction)",
                path=cfg.data.source)


def cross_validate(cfg: RunConfig, run_dir: str | None = None, *,
                   data: InteractionData | None = None, verbose: bool = True):
    """Runs every fold of the config's split; writes metrics.json with per-fold + summary."""
    from tfmf.errors import ConfigError
    from tfmf.evaluation.model_selection import cross_validate as cv

    if cfg.data.split.kind == "none":
        raise ConfigError("cross-validation needs held-out data; choose a split kind other "
                          "than 'none'", key="data.split.kind")
    data = data if data is not None else load_data(cfg)
    if run_dir is not None and distributed.is_chief():
        prepare_run_dir(run_dir, cfg)
    result = cv(cfg.model_name, cfg.model, splits_for(cfg, data), train_config=cfg.train,
                eval_config=cfg.eval, run_dir=run_dir, verbose=verbose)
    if run_dir is not None and distributed.is_chief():
        write_metrics(run_dir, {"model": cfg.model_name, "data": data.name, **result.to_dict()})
    return result


# --------------------------------------------------------------------------- saved runs
@dataclass
class LoadedRun:
    """A finished run read back from disk (see :func:`load_run`)."""

    run_dir: str
    config: RunConfig
    model: object
    ids: dict
    metrics: dict


def load_run(run_dir: str, overrides: list[str] | None = None) -> LoadedRun:
    """Reads a finished run: config snapshot (+ ``--set`` overrides), fitted model, id maps.

    Raises:
      FileNotFoundError: the directory, or a file a finished run must hold, is missing (named).
      ConfigError: the config snapshot no longer validates.
    """
    from tfmf.config import load_config
    from tfmf.models.base import Recommender

    if not os.path.isdir(run_dir):
        raise FileNotFoundError(errno.ENOENT, "run directory not found", run_dir)
    # metrics.json is written last: without it model/ may be stale (a killed --resume keeps
    # the previous model while config.yaml already describes the continued run).
    for name in ("config.yaml", os.path.join("model", "recommender.json"), "ids.npz",
                 "metrics.json"):
        path = os.path.join(run_dir, name)
        if not os.path.exists(path):
            raise FileNotFoundError(
                errno.ENOENT, "not a finished run (train it, or --resume it, first): missing", path)
    cfg = load_config(os.path.join(run_dir, "config.yaml"), overrides)
    model = Recommender.load(os.path.join(run_dir, "model"))
    with open(os.path.join(run_dir, "metrics.json")) as fh:
        metrics = json.load(fh)
    return LoadedRun(run_dir, cfg, model, load_id_maps(os.path.join(run_dir, "ids.npz")), metrics)


def evaluate_run(run: LoadedRun, data: InteractionData | None = None) -> dict:
    """Re-evaluates a loaded run on the test part of its config's first split.

    Raises:
      DataError: the data's id space differs from the one the model was trained on.
    """
    from tfmf.errors import DataError
    from tfmf.evaluation import evaluate
    from tfmf.evaluation.model_selection import split_parts

    cfg = run.config
    data = data if data is not None else load_data(cfg)
    same = (data.n_users == len(run.ids["user_ids"]) and data.n_items == len(run.ids["item_ids"])
            and np.array_equal(data.user_ids, run.ids["user_ids"])
            and np.array_equal(data.item_ids, run.ids["item_ids"]))
    if not same:
        raise DataError("the data's users/items differ from those the run was trained on "
                        f"({data.n_users}x{data.n_items} vs {len(run.ids['user_ids'])}x"
                        f"{len(run.ids['item_ids'])}); evaluate with the run's data",
                        path=cfg.data.source)
    _, test = split_parts(first_split(cfg, data))
    if test is None:
        raise DataError("the run's split is 'none': there is no test part to evaluate on "
                        "(override with --set data.split.kind=holdout)", path=cfg.data.source)
    return evaluate(run.model, test, cfg.eval)


# --------------------------------------------------------------------------- files
class atomic_directory:
    """Context manager: a temp directory beside ``path`` that replaces ``path`` on success.

    Readers never see a half-written directory: on error the temp dir is removed; on success an
    existing ``path`` is moved aside, the temp dir renamed into place, and the old one deleted.
    """

    def __init__(self, path: str):
        self.path = os.path.abspath(os.fspath(path))

    def __enter__(self) -> str:
        parent = os.path.dirname(self.path)
        os.makedirs(parent, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix=os.path.basename(self.path) + ".tmp-", dir=parent)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        old = None
        if os.path.lexists(self.path):
            old = self.tmp + ".old"
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False


def save_id_maps(path: str, data: InteractionData) -> None:
    arrays = {"user_ids": data.user_ids, "item_ids": data.item_ids}
    if data.item_titles is not None:
        arrays["item_titles"] = data.item_titles
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_id_maps(path: str) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def write_metrics(run_dir: str, payload: dict) -> None:
    """metrics.json, atomically: a reader never sees a partial file."""
    _atomic_write(os.path.join(run_dir, "metrics.json"),
                  json.dumps(payload, indent=2, default=_json_default))


def plot_learning_curve(history: list[dict], path: str) -> None:
    """Loss (and validation metrics) per epoch as a PNG; skipped when there is no history."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    # Sampling fits (bayesian_mf) have no objective; they log the train RMSE of each draw.
    train_keys = [k for k in ("loss", "data") if k in history[0]] or [
        k for k in ("rmse",) if k in history[0]]
    for key in train_keys:
        ax.plot(epochs, [h[key] for h in history], label=f"train {key}")
    val_keys = [k for k in history[-1] if k.startswith("val_")]
    if val_keys:
        ax2 = ax.twinx()
        for k in val_keys:
            ax2.plot(epochs, [h.get(k, np.nan) for h in history], "--", label=k)
        ax2.legend(loc="upper right")
    ax.set_xlabel("epoch")
    if train_keys:
        ax.legend(loc="upper left")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)


def _atomic_write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
