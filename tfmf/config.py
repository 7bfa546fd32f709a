"""Config dataclasses: the single source of defaults, and strict YAML validation.

A run config is YAML whose sections map 1:1 onto these dataclasses::

    model: {name: biased_mf, embedding_dim: 64, ...}   # fields of the model's own Config
    data:  {source: ml-100k, split: {kind: official}}
    train: {epochs: 30, learning_rate: 0.01, ...}
    eval:  {ks: [20, 50, 100]}
    tune:  {...}

Unknown keys and wrong types raise :class:`ConfigError` naming the dotted key; ``--set
section.key=value`` overrides are applied before validation.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from tfmf.errors import ConfigError


#: Metric names EvalConfig, the evaluators and the tuner's objectives all read from here.
RATING_METRICS = ("rmse", "mae")
RANKING_METRICS = ("ndcg", "recall", "precision", "map")


# --------------------------------------------------------------------------- sections
@dataclass
class SplitConfig:
    """How interactions are split into train/test.

    Attributes:
      kind: none | holdout | kfold (random k-fold on interactions) | official (ML-100K u1..u5,
        ua, ub) | temporal | strong (held-out users, fold-in/target) | user_folds (every user
        held out once over n_folds user folds, each split fold-in/target).
      n_folds: folds for kfold / user_folds.
      folds: official fold names used when kind == official.
      test_fraction: holdout / temporal test share; for strong, the share of users held out.
      temporal_mode: temporal split per user (last interactions of each user) or by a global
        time cutoff.
      fold_in_fraction: share of a held-out user's items given to the model (rest are targets).
      validation_users: for strong / user_folds, validation users taken from the training
        users (a count >= 1, or a share < 1), split fold-in/target like the test users; they
        drive per-epoch NDCG, early stopping and restore_best (0: none). Splits of ratings use
        ``train.validation_fraction`` instead.
      seed: RNG seed.
    """

    kind: Literal["none", "holdout", "kfold", "official", "temporal", "strong", "user_folds"] = "kfold"
    n_folds: int = 5
    folds: list[str] = field(default_factory=lambda: ["u1", "u2", "u3", "u4", "u5"])
    test_fraction: float = 0.2
    temporal_mode: Literal["user", "global"] = "user"
    fold_in_fraction: float = 0.8
    validation_users: float = 0.0
    seed: int = 0

    def validate(self, key: str) -> None:
        _check(self.n_folds >= 2, f"{key}.n_folds", "must be >= 2")
        _check(self.validation_users >= 0, f"{key}.validation_users", "must be >= 0")
        _check(0.0 < self.test_fraction < 1.0, f"{key}.test_fraction", "must be in (0, 1)")
        _check(0.0 < self.fold_in_fraction < 1.0, f"{key}.fold_in_fraction", "must be in (0, 1)")


@dataclass
class SyntheticConfig:
    """Parameters of the synthetic generators (data.source = synthetic-explicit/-implicit)."""

    n_users: int = 1000
    n_items: int = 500
    rank: int = 10
    noise: float = 0.5
    density: float = 0.05
    nnz: int = 100_000
    popularity_exponent: float = 1.0
    activity_exponent: float = 1.0
    seed: int = 0


@dataclass
class DataConfig:
    """Where interactions come from and how they are prepared.

    Attributes:
      source: "sample", a MovieLens name (ml-100k, ml-1m, ml-10m, ml-20m, ml-25m, ml-latest,
        ml-latest-small), "synthetic-explicit", "synthetic-implicit", or a file path
        (.csv/.tsv/.txt/.parquet, optionally .gz).
      data_dir: directory holding MovieLens copies (default: $TFMF_DATA_DIR, then
        ../shared/data beside the project, then ~/.tfmf/data).
      download: allow downloading a missing MovieLens copy (checksum verified).
      format: file format for paths; auto infers from the extension.
      delimiter: field separator for csv/tsv (auto by default).
      header: whether the file has a header row (None: auto-detect).
      columns: mapping of user/item/rating/timestamp to column names (or 0-based indices).
      rating_scale: declared [min, max]; values outside are errors.
      duplicates: policy for repeated (user, item) pairs: error | last | mean.
      implicit: treat the data as implicit feedback (rating column optional).
      binarize_threshold: keep ratings >= threshold as positives (implicit models).
      min_user_interactions / min_item_interactions: drop sparser users/items (after
        binarizing) and re-index.
    """

    source: str = "sample"
    data_dir: str | None = None
    download: bool = False
    format: Literal["auto", "csv", "tsv", "parquet"] = "auto"
    delimiter: str | None = None
    header: bool | None = None
    columns: dict[str, str] = field(default_factory=dict)
    rating_scale: list[float] | None = None
    duplicates: Literal["error", "last", "mean"] = "error"
    implicit: bool = False
    binarize_threshold: float | None = None
    min_user_interactions: int = 0
    min_item_interactions: int = 0
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    split: SplitConfig = field(default_factory=SplitConfig)

    def validate(self, key: str) -> None:
        _check(bool(self.source), f"{key}.source", "must not be empty")
        if self.rating_scale is not None:
            _check(len(self.rating_scale) == 2 and self.rating_scale[0] < self.rating_scale[1],
                   f"{key}.rating_scale", "must be [min, max] with min < max")
        bad = set(self.columns) - {"user", "item", "rating", "timestamp"}
        _check(not bad, f"{key}.columns", f"unknown column role(s) {sorted(bad)}; "
               "use user, item, rating, timestamp")
        _check(self.min_user_interactions >= 0, f"{key}.min_user_interactions", "must be >= 0")
        _check(self.min_item_interactions >= 0, f"{key}.min_item_interactions", "must be >= 0")
        self.split.validate(f"{key}.split")


@dataclass
class TrainConfig:
    """Training, read by the one epoch loop (:func:`tfmf.training.fit.fit`, Keras' ``fit``).

    Attributes:
      epochs: passes over the training data.
      batch_size: examples (ratings or users) per step, per Horovod rank.
      optimizer: sgd | adagrad | adam.
      learning_rate: base learning rate.
      momentum: SGD momentum.
      schedule: constant | step (base * decay_rate ** floor((1 + step) / decay_steps), as in
        the JAX seed) | exponential | cosine | inverse_time | piecewise.
      decay_rate / decay_steps: schedule parameters (decay_rate is the JAX seed's decay_pct,
        decay_steps its period).
      boundaries / values: piecewise-constant schedule.
      warmup_steps: linear warm-up before the schedule (useful with Horovod LR scaling).
      clipnorm / clipvalue: gradient clipping.
      precision: float32 | mixed_float16 | mixed_bfloat16.
      initial_loss_scale: starting dynamic loss scale for mixed_float16.
      seed: seed for initialisation, shuffling and dropout.
      deterministic: enable TF op determinism (bitwise-repeatable runs, slower).
      shuffle / prefetch: input pipeline switches.
      checkpoint_every: save the BackupAndRestore checkpoint every N epochs and at the last one
        (0 disables it, and with it ``--resume``).
      early_stopping_patience: stop after N epochs without validation improvement.
      restore_best: end with the weights of the best validated epoch.
      validation_fraction: share of the *training* ratings held out (seeded) as validation
        for per-epoch metrics, early stopping and restore_best, for splits of ratings
        (holdout, kfold, official, temporal). User splits take validation users instead
        (``data.split.validation_users``). The test part never reaches model selection.
      scale_lr_by_world_size: multiply the LR by the number of Horovod ranks.
      sparse_as_dense: Horovod: densify embedding gradients and allreduce them instead of
        allgathering the touched rows (cheaper only for small tables; see tfmf.distributed).
      verbose: 0 quiet, 1 progress bar, 2 one line per epoch.
      steps_per_execution: train steps run inside one compiled call (as Keras'
        ``steps_per_execution``): the same batches and updates, with the per-step Python and
        host-copy overhead paid once per call (ML-100K biased MF epochs ~1.5-1.9x faster at
        16 than at 1 on this 2-vCPU CPU, and 64 trims Keras' per-call Python further: see
        ``speed-keras-loop`` in docs/BENCHMARKS.md). Losses are still checked step by step.
    """

    epochs: int = 20
    batch_size: int = 1024
    optimizer: Literal["sgd", "adagrad", "adam"] = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.0
    schedule: Literal["constant", "step", "exponential", "cosine", "inverse_time", "piecewise"] = "constant"
    decay_rate: float = 0.5
    decay_steps: int = 1000
    boundaries: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    warmup_steps: int = 0
    clipnorm: float | None = None
    clipvalue: float | None = None
    precision: Literal["float32", "mixed_float16", "mixed_bfloat16"] = "float32"
    initial_loss_scale: float = 2.0 ** 15
    seed: int = 42
    deterministic: bool = False
    shuffle: bool = True
    prefetch: bool = True
    checkpoint_every: int = 1
    early_stopping_patience: int | None = None
    restore_best: bool = False
    validation_fraction: float = 0.0
    scale_lr_by_world_size: bool = False
    sparse_as_dense: bool = False
    verbose: int = 1
    steps_per_execution: int = 64

    def validate(self, key: str) -> None:
        _check(self.epochs >= 1, f"{key}.epochs", "must be >= 1")
        _check(self.steps_per_execution >= 1, f"{key}.steps_per_execution", "must be >= 1")
        _check(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")
        _check(0 < self.learning_rate < float("inf"), f"{key}.learning_rate",
               "must be > 0 (and finite)")
        _check(self.momentum >= 0, f"{key}.momentum", "must be >= 0")
        _check(self.decay_steps >= 1, f"{key}.decay_steps", "must be >= 1")
        _check(self.decay_rate > 0, f"{key}.decay_rate", "must be > 0")
        _check(self.warmup_steps >= 0, f"{key}.warmup_steps", "must be >= 0")
        _check(self.clipnorm is None or self.clipnorm > 0, f"{key}.clipnorm", "must be > 0")
        _check(self.clipvalue is None or self.clipvalue > 0, f"{key}.clipvalue", "must be > 0")
        _check(self.checkpoint_every >= 0, f"{key}.checkpoint_every", "must be >= 0")
        _check(0.0 <= self.validation_fraction < 1.0, f"{key}.validation_fraction",
               "must be in [0, 1)")
        if self.schedule == "piecewise":
            _check(len(self.values) == len(self.boundaries) + 1, f"{key}.values",
                   "piecewise needs len(values) == len(boundaries) + 1")


@dataclass
class EvalConfig:
    """Evaluation settings.

    Attributes:
      metrics: names among rmse, mae, ndcg, recall, precision, map (ranking metrics at each K).
      ks: cut-offs for ranking metrics.
      batch_size: users (or ratings) scored per batch; never an all-users x all-items matrix.
      clip_predictions: clip rating predictions to the rating scale.
      exclude_seen: drop fold-in/training items from rankings.
    """

    metrics: list[str] = field(default_factory=lambda: ["rmse", "mae"])
    ks: list[int] = field(default_factory=lambda: [20, 50, 100])
    batch_size: int = 1024
    clip_predictions: bool = True
    exclude_seen: bool = True

    def validate(self, key: str) -> None:
        known = set(RATING_METRICS + RANKING_METRICS)
        bad = [m for m in self.metrics if m not in known]
        _check(not bad, f"{key}.metrics", f"unknown metric(s) {bad}; known: {sorted(known)}")
        _check(all(k >= 1 for k in self.ks), f"{key}.ks", "every K must be >= 1")
        _check(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")


@dataclass
class TuneConfig:
    """KerasTuner search settings (see tfmf.tuning).

    Attributes:
      strategy: bayesian | random | hyperband | two_stage (Bayesian, then random search in
        ranges narrowed around the best trials).
      max_trials: trials (per stage for two_stage).
      refine_trials: random-search trials of the second stage of two_stage.
      inner_folds: folds of the training data each trial is scored on.
      objective: metric to optimise (rmse, mae minimised; ndcg@K, recall@K maximised).
      space: hyperparameter ranges, name -> {type: float|int|choice, min, max, log, values}.
      executions_per_trial, seed, overwrite: KerasTuner options.
      max_epochs: hyperband's maximum epochs per trial.
    """

    strategy: Literal["bayesian", "random", "hyperband", "two_stage"] = "bayesian"
    max_trials: int = 10
    refine_trials: int = 5
    inner_folds: int = 3
    objective: str = "rmse"
    space: dict[str, dict] = field(default_factory=dict)
    executions_per_trial: int = 1
    max_epochs: int = 20
    seed: int = 0
    overwrite: bool = False

    def validate(self, key: str) -> None:
        _check(self.max_trials >= 1, f"{key}.max_trials", "must be >= 1")
        _check(self.inner_folds >= 2, f"{key}.inner_folds", "must be >= 2")


@dataclass
class RunConfig:
    """A whole run: model (name + its own Config), data, train, eval, tune, output."""

    model_name: str = "biased_mf"
    model: Any = None  # the registered model's Config dataclass instance
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    output_dir: str = "runs"
    run_name: str | None = None

    def __post_init__(self) -> None:
        if self.model is None:
            from tfmf import registry

            self.model = registry.get(self.model_name).config_class()

    def to_dict(self) -> dict:
        """Plain dict in the YAML layout (model section flattened with its name)."""
        out = {
            "model": {"name": self.model_name, **to_dict(self.model)},
            "data": to_dict(self.data),
            "train": to_dict(self.train),
            "eval": to_dict(self.eval),
            "tune": to_dict(self.tune),
            "output_dir": self.output_dir,
        }
        if self.run_name is not None:
            out["run_name"] = self.run_name
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------- loading
_TOP_LEVEL = {"model", "data", "train", "eval", "tune", "output_dir", "run_name"}


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                raw: dict | None = None) -> RunConfig:
    """Reads and validates a run config.

    Args:
      path: YAML file (None: all defaults).
      overrides: ``section.key=value`` strings (values parsed as YAML scalars/lists).
      raw: an already-parsed dict, used instead of ``path``.

    Returns:
      A validated RunConfig.

    Raises:
      ConfigError: missing/unreadable file, YAML syntax, unknown key, wrong type, bad value.
    """
    source = os.fspath(path) if path is not None else None
    if raw is None:
        raw = {}
        if source is not None:
            if not os.path.isfile(source):
                raise ConfigError("config file not found", path=source)
            try:
                with open(source, encoding="utf-8") as fh:
                    raw = yaml.safe_load(fh) or {}
            except yaml.YAMLError as exc:
                line = getattr(getattr(exc, "problem_mark", None), "line", None)
                where = f" at line {line + 1}" if line is not None else ""
                raise ConfigError(f"invalid YAML{where}: {exc}", path=source) from None
            except OSError as exc:
                raise ConfigError(f"cannot read config: {exc.strerror}", path=source) from None
    raw = copy.deepcopy(raw)
    if not isinstance(raw, dict):
        raise ConfigError("top level must be a mapping of sections", path=source)
    for item in overrides or []:
        apply_override(raw, item, source)
    return config_from_dict(raw, source)


def load_data_config(source: str, overrides: list[str] | None = None) -> DataConfig:
    """A DataConfig for ``source`` with ``data.*`` overrides, validated like a run config's
    data section -- without resolving a model (so no model module, and no TensorFlow, loads).

    Raises:
      ConfigError: an override outside ``data`` or a bad data key.
    """
    raw: dict = {"data": {"source": source}}
    for item in overrides or []:
        apply_override(raw, item)
    extra = sorted(set(raw) - {"data"})
    if extra:
        raise ConfigError("only data.* settings apply here", key=extra[0])
    return from_dict(DataConfig, raw["data"] or {}, "data")


def config_from_dict(raw: dict, source: str | None = None) -> RunConfig:
    """Validates a parsed config dict into a RunConfig (see load_config)."""
    from tfmf import registry

    unknown = sorted(set(raw) - _TOP_LEVEL)
    if unknown:
        raise ConfigError(f"unknown section; expected one of {sorted(_TOP_LEVEL)}",
                          key=unknown[0], path=source)
    model_raw = raw.get("model") or {}
    if not isinstance(model_raw, dict):
        raise ConfigError("must be a mapping with a 'name'", key="model", path=source)
    model_raw = dict(model_raw)
    name = model_raw.pop("name", RunConfig.model_name)
    try:
        model_cls = registry.get(name)
    except KeyError as exc:
        raise ConfigError(str(exc.args[0]), key="model.name", path=source) from None
    try:
        model_cfg = from_dict(model_cls.config_class, model_raw, "model")
        cfg = RunConfig(
            model_name=name,
            model=model_cfg,
            data=from_dict(DataConfig, raw.get("data") or {}, "data"),
            train=from_dict(TrainConfig, raw.get("train") or {}, "train"),
            eval=from_dict(EvalConfig, raw.get("eval") or {}, "eval"),
            tune=from_dict(TuneConfig, raw.get("tune") or {}, "tune"),
            output_dir=_coerce(raw.get("output_dir", "runs"), str, "output_dir"),
            run_name=_coerce(raw.get("run_name"), str | None, "run_name"),
        )
    except ConfigError as exc:
        if exc.path is None and source is not None:
            raise ConfigError(exc.reason, key=exc.key, path=source) from None
        raise
    return cfg


def apply_override(raw: dict, item: str, source: str | None = None) -> None:
    """Applies one ``a.b.c=value`` override to a raw config dict in place."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value", path=source)
    dotted, _, text = item.partition("=")
    keys = [k for k in dotted.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {item!r} has an empty key", path=source)
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node = raw
    for k in keys[:-1]:
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        if not isinstance(nxt, dict):
            raise ConfigError("is not a section; cannot set a key inside it", key=dotted, path=source)
        node = nxt
    node[keys[-1]] = value


# --------------------------------------------------------------------------- generic
def from_dict(cls: type, raw: dict, key: str):
    """Builds dataclass ``cls`` from ``raw``, checking keys and types; calls ``validate``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"must be a mapping, got {type(raw).__name__}", key=key)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(raw) - names)
    if unknown:
        known = ", ".join(sorted(names))
        raise ConfigError(f"unknown key (known keys: {known})", key=f"{key}.{unknown[0]}")
    kwargs = {}
    for name, value in raw.items():
        kwargs[name] = _coerce(value, hints[name], f"{key}.{name}")
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate(key)
    return obj


def to_dict(obj) -> dict:
    """A dataclass as plain YAML-safe data."""
    return _plain(dataclasses.asdict(obj))


def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(value, tp, key: str):
    """Checks ``value`` against type hint ``tp`` (ints are accepted for floats)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as exc:
                errors.append(exc.reason)
        raise ConfigError(errors[0] if len(errors) == 1 else "; ".join(errors), key=key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"must be one of {list(args)}, got {value!r}", key=key)
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"must be a list, got {_tname(value)}", key=key)
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"must be a mapping, got {_tname(value)}", key=key)
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"must be true or false, got {_tname(value)} {value!r}", key=key)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"must be an integer, got {_tname(value)} {value!r}", key=key)
        return value
    if tp is float:
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            value = float(value)  # PyYAML (YAML 1.1) reads 1e-3 and 1.0e6 as strings
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"must be a number, got {_tname(value)} {value!r}", key=key)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"must be a string, got {_tname(value)} {value!r}", key=key)
        return value
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"must be a mapping, got {_tname(value)}", key=key)
        return value
    return value


def _tname(v) -> str:
    return "null" if v is None else type(v).__name__


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(message, key=key)


def check(ok: bool, key: str, message: str) -> None:
    """For model Config.validate methods: raise ConfigError(message) at ``key`` if not ok."""
    _check(ok, key, message)
