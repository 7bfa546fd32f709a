"""One run, end to end, for the CLI, the demo and tuning: config -> data -> fit -> evaluate.

The run directory's layout and files belong to :mod:`tfmf.rundir`; this module decides what
goes into them. Protocol: the config's split gives (train, test); a validation part is carved
out of train (``train.validation_fraction`` for ratings, ``data.split.validation_users`` for
user splits) and is the only data that model selection -- per-epoch metrics, early stopping,
restore_best -- ever sees. The test part is scored once, at the end.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from tfmf import distributed, memory, progress, registry
from tfmf.config import RunConfig
from tfmf.data.interactions import InteractionData
from tfmf.rundir import RunDir


@dataclass
class RunResult:
    """What a run produced."""

    run_dir: str | None
    metrics: dict
    history: list = field(default_factory=list)
    model: object = None


def new_run_dir(cfg: RunConfig) -> str:
    """``output_dir/run_name`` or ``output_dir/<model>-<source>-<timestamp>``."""
    return RunDir.new(cfg.output_dir, cfg.run_name, cfg.model_name, cfg.data.source).path


def check_resumable(run_dir: RunDir | str, cfg: RunConfig) -> None:
    """Refuses to resume with model or data settings other than the run's snapshot.

    The checkpoint holds tensors shaped by them (embedding sizes, id spaces): restoring into
    another shape fails deep in TensorFlow. ``train.*`` may change (e.g. more epochs).
    """
    from tfmf.config import load_config, to_dict
    from tfmf.errors import ConfigError
    from tfmf.rundir import CONFIG

    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    snapshot = rd.file(CONFIG)
    if not os.path.exists(snapshot):
        return  # nothing recorded; the fit reports a missing checkpoint itself
    old = load_config(snapshot)
    if old.model_name != cfg.model_name:
        raise ConfigError(f"cannot resume run {rd.path!r}: it trained {old.model_name!r}, the "
                          f"config asks for {cfg.model_name!r}", key="model.name")
    # Where the data lives (data_dir, download) may change between machines; what it is may not.
    where = {"data_dir", "download"}
    for section in ("model", "data"):
        was, now = to_dict(getattr(old, section)), to_dict(getattr(cfg, section))
        for key in sorted((set(was) | set(now)) - (where if section == "data" else set())):
            if was.get(key) != now.get(key):
                raise ConfigError(
                    f"cannot resume run {rd.path!r} with {section}.{key}={now.get(key)!r}: it "
                    f"was trained with {was.get(key)!r} (only train.* settings may change on "
                    "resume)", key=f"{section}.{key}")


def reads_per_rank(cfg: RunConfig) -> bool:
    """Whether each Horovod rank reads only its own shards of ``cfg.data`` for training.

    True under horovodrun (more than one rank) for a sharded source (``tfmf data convert``)
    and a model trained data-parallel on minibatches (MF, biased MF, Mult-VAE/DAE) or by
    distributed row blocks (ALS, iALS): each rank then holds only its shards' rows, never the
    full interaction set. Other models (and one process) read everything.
    """
    from tfmf.data.loading import is_sharded
    from tfmf.models.keras_recommender import KerasRecommender

    if distributed.size() <= 1 or not is_sharded(cfg.data.source):
        return False
    cls = registry.get(cfg.model_name)
    if getattr(cls, "distributed_rows", False):
        return True  # ALS / iALS: row blocks per rank (tfmf.models.als_distributed)
    return (isinstance(cls, type) and issubclass(cls, KerasRecommender)
            and cls.make_dataset is not KerasRecommender.make_dataset)


@memory.large_blocks_unmapped()
def load_data(cfg: RunConfig, per_rank: bool = False) -> InteractionData:
    """``cfg.data`` loaded; with ``per_rank`` (and :func:`reads_per_rank`), only this rank's
    shards (``data.partition`` says so; indices and id maps stay global)."""
    from tfmf.data.loading import load_dataset, run_timestamps

    ts = run_timestamps(cfg.data)
    if per_rank and reads_per_rank(cfg):
        distributed.init()
        return load_dataset(cfg.data, distributed.rank(), distributed.size(), timestamps=ts)
    return load_dataset(cfg.data, timestamps=ts)


@memory.large_blocks_unmapped()
def _rank_fit_part(cfg: RunConfig, data: InteractionData):
    """(fold, fit part, validation, test) of ``data`` as :func:`train` splits it."""
    from tfmf.data.splits import carve_validation

    fold = first_split(cfg, data)
    fit_part, validation, test = carve_validation(
        fold, fraction=cfg.train.validation_fraction, users=cfg.data.split.validation_users,
        fold_in_fraction=cfg.data.split.fold_in_fraction, seed=cfg.data.split.seed)
    return fold, fit_part, validation, test


def assemble_training_rows(cfg: RunConfig, size: int):
    """The CSR of every rank's training rows (what each rank fitted on), rebuilt on one rank.

    Each rank's split is a deterministic function of its own shards and the config, so one
    rank can redo it for all: it reads the ranks' shards one after another (one rank's rows
    at a time plus the growing result). Used by rank 0 after training, so the saved model's
    seen items (ranking exclusion, export) cover every user.
    """
    import scipy.sparse as sp

    from tfmf.data.loading import load_dataset, run_timestamps

    parts = []
    shape = None
    for r in range(size):
        rows = load_dataset(cfg.data, r, size, timestamps=run_timestamps(cfg.data))
        _, fit_part, _, _ = _rank_fit_part(cfg, rows)
        del rows
        part = fit_part.to_csr()
        shape = part.shape
        # Ranks own disjoint, rank-ordered user ranges: keep this rank's rows only.
        rows = np.flatnonzero(np.diff(part.indptr))
        lo, hi = (int(rows[0]), int(rows[-1]) + 1) if len(rows) else (0, 0)
        parts.append((lo, hi, part[lo:hi]))
        del fit_part, part
    out = []
    at = 0
    for lo, hi, block in sorted(parts, key=lambda p: p[0]):
        if lo > at:
            out.append(sp.csr_matrix((lo - at, shape[1]), dtype=np.float32))
        out.append(block)
        at = hi
    if at < shape[0]:
        out.append(sp.csr_matrix((shape[0] - at, shape[1]), dtype=np.float32))
    return sp.vstack(out, format="csr")


def combine_metrics(metrics: dict, test) -> dict:
    """Metrics of every rank's own test part, combined (rows read per rank).

    Rating metrics are weighted by the rank's test ratings (RMSE through its squares),
    ranking metrics by the rank's evaluated users: the figures one evaluation over the union
    of the test parts gives. One collective (every rank calls it).
    """
    held = getattr(test, "target", test)
    if hasattr(test, "test_users"):
        users = len(test.test_users)
    else:
        users = int(np.count_nonzero(np.bincount(held.users, minlength=held.n_users)))
    keys = sorted(metrics)
    weights = [held.nnz if k in ("rmse", "mae") else users for k in keys]
    values = [metrics[k] ** 2 if k == "rmse" else metrics[k] for k in keys]
    sums = distributed.sum_over_ranks([w * v for w, v in zip(weights, values)] + weights,
                                      "tfmf_metrics")
    n = len(keys)
    out = {}
    for j, k in enumerate(keys):
        mean = sums[j] / sums[n + j] if sums[n + j] else float("nan")
        out[k] = float(np.sqrt(mean) if k == "rmse" else mean)
    return out


def splits_for(cfg: RunConfig, data: InteractionData):
    """All (train, test) folds the config's split describes (a list)."""
    from tfmf.data.splits import make_splits

    return list(make_splits(data, cfg.data.split, data_dir=cfg.data.data_dir))


def first_split(cfg: RunConfig, data: InteractionData):
    """Only the first fold (train/evaluate/tune use one): later folds are never built."""
    from tfmf.data.splits import first_split as first

    return first(data, cfg.data.split, data_dir=cfg.data.data_dir)


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

    rd = RunDir(run_dir or new_run_dir(cfg))
    chief = distributed.is_chief()
    if chief:
        rd.prepare(cfg.to_yaml(), resume=resume, check_resumable=lambda d: check_resumable(d, cfg))
    try:
        loaded = data is None
        if loaded:
            with progress.stage("load"):
                data = load_data(cfg, per_rank=True)
        with progress.stage("split"):
            fold, fit_part, validation, test = _rank_fit_part(cfg, data)
        _check_split_sizes(cfg, data, fit_part, test)
        if loaded:
            # The split holds copies of every row; keep only the id maps of the whole set.
            data = _ids_only(data)
        model = registry.create(cfg.model_name, cfg.model)
        with progress.stage("fit"):
            model.fit(fit_part, cfg.train, validation=validation, run_dir=rd, resume=resume)
        # The test part, once: nothing above saw it.
        with progress.stage("evaluate"):
            metrics = evaluate(model, test, cfg.eval) if test is not None else {}
        n_train = fit_part.nnz
        if data.partition is not None:
            # Each rank holds only its shards' rows: its test part and its training rows.
            if test is not None:
                metrics = combine_metrics(metrics, test)
            n_train = int(distributed.sum_over_ranks([n_train], "tfmf_n_train")[0])
        if chief:
            with progress.stage("save"):
                if data.partition is not None:
                    del fold, fit_part, test
                    model._seen = assemble_training_rows(cfg, data.partition[1])
                    fit_part = None
                _save_run(rd, cfg, data, model, fit_part, validation, metrics, n_train)
    finally:
        rd.unlock()
    return RunResult(run_dir=rd.path, metrics=metrics, history=model.history, model=model)


def _save_run(rd: RunDir, cfg: RunConfig, data, model, fit_part, validation, metrics,
              n_train: int | None = None) -> None:
    """The finished run's files, metrics.json last."""
    rd.save_model(model)
    rd.save_ids(data)
    rd.plot_learning_curve(model.history)
    n_train = fit_part.nnz if n_train is None else n_train
    rd.write_metrics({"model": cfg.model_name, "data": data.name, "n_train": n_train,
                      "n_validation": _size(validation),
                      "best_epoch": getattr(model, "best_epoch", None), "metrics": metrics})


def _ids_only(data: InteractionData) -> InteractionData:
    """``data`` without its rows (id maps, name and scale kept: what a saved run needs)."""
    import dataclasses

    empty = np.zeros(0, np.int32)
    return dataclasses.replace(data, users=empty, items=empty, values=np.zeros(0, np.float32),
                               timestamps=None)


def _size(part) -> int:
    """Interactions in a validation part (0 for none; a StrongSplit counts its targets)."""
    if part is None:
        return 0
    return int(getattr(part, "target", part).nnz)


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
    rd = RunDir(run_dir) if run_dir is not None and distributed.is_chief() else None
    if rd is not None:
        rd.prepare(cfg.to_yaml())
    try:
        result = cv(cfg.model_name, cfg.model, splits_for(cfg, data), train_config=cfg.train,
                    eval_config=cfg.eval, run_dir=run_dir, verbose=verbose,
                    validation_users=cfg.data.split.validation_users, seed=cfg.data.split.seed)
        if rd is not None:
            rd.write_metrics({"model": cfg.model_name, "data": data.name, **result.to_dict()})
    finally:
        if rd is not None:
            rd.unlock()
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
    from tfmf.rundir import CONFIG

    rd = RunDir(run_dir)
    rd.check_finished()
    cfg = load_config(rd.file(CONFIG), overrides)
    model = Recommender.load(rd.model_path())
    return LoadedRun(run_dir, cfg, model, rd.load_ids(), rd.read_metrics())


def evaluate_run(run: LoadedRun, data: InteractionData | None = None) -> dict:
    """Re-evaluates a loaded run on the test part of its config's first split.

    Raises:
      DataError: the data's id space differs from the one the model was trained on.
    """
    from tfmf.errors import DataError
    from tfmf.evaluation import evaluate

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
    test = first_split(cfg, data)
    test = test[1] if isinstance(test, tuple) else test
    if test is None:
        raise DataError("the run's split is 'none': there is no test part to evaluate on "
                        "(override with --set data.split.kind=holdout)", path=cfg.data.source)
    return evaluate(run.model, test, cfg.eval)
