"""``tfmf tune --quick``: each model's key hyperparameters picked on the user's own data, within
a wall-clock budget, so a new dataset does not inherit ML-100K's tuning.

Protocol (the runner's, :mod:`tfmf.runner`): the config's first split gives (train, test). A
validation part is carved from *train* only -- validation users for user splits (strong,
user_folds), validation ratings for rating splits -- with the config's own
``data.split.validation_users`` / ``train.validation_fraction`` when set, else
``VALIDATION_USERS`` / ``VALIDATION_FRACTION``. Every trial fits on the rest of train and is
scored on that validation part (NDCG@100 for ranking models, RMSE for rating models). The
search is KerasTuner's Bayesian optimisation whose first trial is the starting config
(:class:`~tfmf.tuning.tuner.BaseConfigFirst`), over the space of
:mod:`tfmf.tuning.quick_spaces`. Then the chosen config is trained by
:func:`tfmf.runner.train` -- exactly as ``tfmf train --config <run>/config.yaml`` would --
and the test part is scored once, at the end. Nothing before that final evaluation reads the
test part.

Budget: ``budget_seconds`` of wall clock for the whole command (data loading, every model's
search and final fit). Models share what is left evenly. A model's search stops before a trial
that would not leave room for the final fit (estimated from the trials' own times), and a
trial still running at that point is stopped at its next epoch boundary (ALS sweeps and SGD
epochs alike; closed-form fits such as EASE are short and run to the end). The search then
ends cleanly with the best trial so far; at least the first trial (the starting config) runs.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from dataclasses import dataclass, field

from tfmf.config import EvalConfig, RunConfig, load_config
from tfmf.errors import ConfigError
from tfmf.tuning import quick_spaces
from tfmf.tuning import report
from tfmf.tuning import space as space_mod

#: Validation users (share of the training users) when the config sets none.
VALIDATION_USERS = 0.15
#: Validation ratings (share of the training ratings) when the config sets none.
VALIDATION_FRACTION = 0.1
#: Default wall-clock budget of ``tfmf tune --quick`` (seconds): under 10 minutes in all.
DEFAULT_BUDGET = 480.0
#: Default trial cap per model.
DEFAULT_MAX_TRIALS = 12
#: The final fit is estimated as this multiple of the slowest trial (it sees more data).
FINAL_FIT_FACTOR = 1.3
#: Share of a model's budget kept for the search report and the final run's files.
REPORT_SHARE = 0.03
#: Share of a model's budget its first trial (the starting config) may use before it is cut.
FIRST_TRIAL_SHARE = 0.45

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|m|min|h)?\s*$")


def parse_budget(text: str | float | int) -> float:
    """``480``, ``90s``, ``8m``, ``1.5h`` -> seconds.

    Raises:
      ConfigError: (key ``--budget``) not a positive duration.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        m = _DURATION.match(str(text))
        if not m:
            raise ConfigError(f"must be a duration such as 480, 90s, 8m or 1h, got {text!r}",
                              key="--budget")
        seconds = float(m.group(1)) * {"s": 1, "sec": 1, None: 1, "m": 60, "min": 60,
                                       "h": 3600}[m.group(2)]
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ConfigError(f"must be a positive duration (an empty budget leaves no time for "
                          f"even one trial), got {text!r}", key="--budget")
    return seconds


# --------------------------------------------------------------------------- budget
class Budget:
    """Wall-clock accounting of one model's search and final fit.

    Args:
      seconds: this model's share of the budget.
      start: ``time.monotonic()`` at which it started.
    """

    def __init__(self, seconds: float, start: float | None = None):
        self.seconds = float(seconds)
        self.start = time.monotonic() if start is None else start
        self.trial_seconds: list[float] = []
        self.best_score: float | None = None
        self.best_seconds: float | None = None  # the best trial's: the final fit retrains it

    def record(self, seconds: float, score: float | None = None, better=None) -> None:
        """A finished trial's wall seconds; ``score`` (None: not a candidate) becomes the
        best when ``better(score, best)``."""
        self.trial_seconds.append(seconds)
        if score is not None and math.isfinite(score) and (
                self.best_score is None or better(score, self.best_score)):
            self.best_score, self.best_seconds = score, seconds

    @property
    def end(self) -> float:
        return self.start + self.seconds

    def final_estimate(self) -> float:
        """Seconds to keep for the final fit."""
        if self.best_seconds is None:
            return self.seconds * (1.0 - FIRST_TRIAL_SHARE)
        # The final fit retrains the best trial's config on a little more data; + the report,
        # plots and run-directory writes around it. (A slower trial can only become the best
        # if its own final fit fits: see _deadline_callback.)
        return FINAL_FIT_FACTOR * self.best_seconds + REPORT_SHARE * self.seconds

    def may_start_trial(self) -> bool:
        """Whether one more (average) trial and the final fit still fit in the budget."""
        if not self.trial_seconds:
            return True  # the starting config always runs: there is no best so far without it
        # Wall time per trial so far, the oracle's own work (Gaussian process, state files)
        # included.
        now = time.monotonic()
        mean = (now - self.start) / len(self.trial_seconds)
        return now + mean + self.final_estimate() <= self.end

    def trial_deadline(self) -> float:
        """When a running trial is stopped (at its next epoch boundary)."""
        if not self.trial_seconds:
            return self.start + FIRST_TRIAL_SHARE * self.seconds
        return self.end - self.final_estimate()


def _oracle_classes():
    """KerasTuner oracle with the repository's mixins plus the budget stop (built lazily:
    KerasTuner and TensorFlow load only when a search runs)."""
    import keras_tuner as kt
    from keras_tuner.engine import trial as trial_module

    from tfmf.tuning.tuner import BaseConfigFirst, RestartSafe

    class BudgetStop:
        """Oracle mixin: no new trial once the budget cannot fit one plus the final fit."""

        budget: Budget | None = None

        def populate_space(self, trial_id):
            if self.budget is not None and not self.budget.may_start_trial():
                return {"status": trial_module.TrialStatus.STOPPED, "values": None}
            return super().populate_space(trial_id)

    class QuickOracle(BudgetStop, RestartSafe, BaseConfigFirst,
                      kt.oracles.BayesianOptimizationOracle):
        """Bayesian optimisation: first the starting config, a few random points, then the
        Gaussian process; stops on the trial cap or the budget."""

    return QuickOracle


def _deadline_callback(budget: Budget, *, early_stopping: bool, first: bool):
    """A Keras callback that stops a trial at an epoch boundary when the budget runs out.

    With early stopping the final fit trains at most the epochs done so far, so the trial
    stops once ``now + FINAL_FIT_FACTOR * elapsed`` passes the end of the budget (its best
    epoch so far stays a valid choice). A fixed-length trial (ALS sweeps) stops, and fails,
    once its projected length plus its own final fit would pass the end; the first trial (the
    starting config) is exempt, there being no best without it. Every trial also stops at
    ``budget.trial_deadline()``.
    """
    import tf_keras

    hard = budget.trial_deadline()

    class Deadline(tf_keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.fired = False
            self.too_slow = False

        def on_train_begin(self, logs=None):
            self.t0 = time.monotonic()
            self.after_first = None
            self.done = 0

        def on_epoch_end(self, epoch, logs=None):
            now = time.monotonic()
            self.done += 1
            elapsed = now - self.t0
            if self.done == 1:
                self.after_first = now
            stop = now >= hard
            if early_stopping:
                stop = stop or now + FINAL_FIT_FACTOR * elapsed >= budget.end
            elif not first and self.done >= 2:
                # Per-sweep time without the first sweep (it pays for tracing).
                per = (now - self.after_first) / (self.done - 1)
                total = self.params.get("epochs") or self.done
                projected = elapsed + per * (total - self.done)
                self.too_slow = self.t0 + (1.0 + FINAL_FIT_FACTOR) * projected > budget.end
                stop = stop or self.too_slow
            if stop:
                self.fired = True
                self.model.stop_training = True

    return Deadline()


def _tuner_class():
    from keras_tuner.engine import base_tuner

    class QuickTuner(base_tuner.BaseTuner):
        """Each trial: fit on the fit part, score the validation part once.

        Args:
          oracle / hypermodel: KerasTuner's (a :class:`~tfmf.tuning.tuner.ConfigHyperModel`).
          fit_part / validation: the carved training part and its validation part.
          objective: a :class:`~tfmf.tuning.tuner.Objective`.
          eval_config: metrics computed on the validation part.
          budget: the model's :class:`Budget`.
          early_stopping: trials select their epoch count on the validation part.
          progress: one line per finished trial.
        """

        def __init__(self, oracle, hypermodel, *, fit_part, validation, objective,
                     eval_config: EvalConfig, budget: Budget, early_stopping: bool,
                     directory: str, progress: bool):
            self.fit_part, self.validation = fit_part, validation
            self.objective, self.eval_config = objective, eval_config
            self.budget, self.early_stopping, self.progress = budget, early_stopping, progress
            super().__init__(oracle, hypermodel, directory=directory, project_name="search",
                             overwrite=True)

        def run_trial(self, trial, *args, **kwargs) -> dict[str, float]:
            from tfmf import registry
            from tfmf.evaluation import evaluate

            cfg = self.hypermodel.build(trial.hyperparameters)
            train_cfg = dataclasses.replace(cfg.train, verbose=0)
            if self.early_stopping:
                train_cfg = dataclasses.replace(
                    train_cfg, restore_best=True,
                    early_stopping_patience=quick_spaces.patience(train_cfg.epochs))
            deadline = _deadline_callback(self.budget, early_stopping=self.early_stopping,
                                          first=not self.budget.trial_seconds)
            t0 = time.monotonic()
            model = registry.create(cfg.model_name, cfg.model)
            # Only epoch selection reads the validation part during the fit; other models are
            # scored on it once, below.
            model.fit(self.fit_part, train_cfg,
                      validation=self.validation if self.early_stopping else None,
                      callbacks=[deadline])
            if deadline.too_slow:
                # Reported as the worst score so far (not as a failure, which the Gaussian
                # process ignores and would propose again), and never chosen (see rows_of).
                seconds = time.monotonic() - t0
                self.budget.record(seconds)
                worst = self.worst_score()
                out = report.fold_metrics(self.objective.name, [worst], seconds)
                out.update({"epochs": float(deadline.done), "cut": 1.0, "too_slow": 1.0})
                return out
            metrics = evaluate(model, self.validation, self.eval_config)
            seconds = time.monotonic() - t0
            self.budget.record(seconds, metrics[self.objective.name], self.objective.better)
            out = report.fold_metrics(self.objective.name, [metrics[self.objective.name]],
                                      seconds)
            out.update({f"val_{k}": float(v) for k, v in metrics.items()})
            history = getattr(model, "history", None) or []
            epochs = getattr(model, "best_epoch", None) or len(history) or train_cfg.epochs
            out["epochs"] = float(epochs)
            out["cut"] = float(deadline.fired)
            return out

        def worst_score(self) -> float:
            """The worst objective of the completed trials (0 / 1e9 before any)."""
            seen = [t.metrics.get_last_value(self.objective.name)
                    for t in self.oracle.trials.values()
                    if t.status == "COMPLETED" and t.metrics.exists(self.objective.name)]
            if not seen:
                return 0.0 if self.objective.direction == "max" else 1e9
            return min(seen) if self.objective.direction == "max" else max(seen)

        def on_trial_begin(self, trial) -> None:
            pass

        def on_trial_end(self, trial) -> None:
            self.oracle.end_trial(trial)
            self.save()
            if self.progress:
                done = self.oracle.get_trial(trial.trial_id)
                best = [t for t in self.oracle.get_best_trials(self.oracle.max_trials)
                        if not t.metrics.exists("too_slow")][:1]
                if done.metrics.exists("too_slow"):
                    print(f"{self.hypermodel.base.model_name}: trial {int(done.trial_id) + 1} "
                          f"(id {done.trial_id}) | "
                          f"{report.format_values(done.hyperparameters.values)} | stopped after "
                          f"{done.metrics.get_last_value('epochs'):.0f} epochs: its fit plus "
                          "its final fit would overrun the budget", flush=True)
                    return
                line = report.progress_line(done, best[0] if best else None,
                                            self.objective.name, self.oracle.max_trials,
                                            f"{self.hypermodel.base.model_name}:")
                print(line.replace(" ± 0.0000", ""), flush=True)

    return QuickTuner


# --------------------------------------------------------------------------- one model
@dataclass
class QuickResult:
    """One model's quick search.

    Attributes:
      model: registry name.
      run_dir: the final run's directory (config.yaml is the chosen config).
      objective: validation metric optimised (``ndcg@100`` or ``rmse``).
      direction: "max" or "min".
      base_score: the starting config's validation score (trial 0).
      best_score: the chosen config's validation score.
      best_values: chosen hp values (``train.epochs`` included when early-stopped).
      chosen: the chosen RunConfig.
      trials: trials run (completed or not); stopped_by: "budget", "max_trials" or "space".
      test_metrics: the final run's metrics on the test part (scored once).
      search_seconds / final_seconds / seconds: wall time of the search, the final fit, all.
      notes: warnings (e.g. a starting value outside the quick range).
    """

    model: str
    run_dir: str
    objective: str
    direction: str
    base_score: float | None = None
    best_score: float | None = None
    best_values: dict = field(default_factory=dict)
    chosen: RunConfig | None = None
    trials: int = 0
    stopped_by: str = ""
    test_metrics: dict = field(default_factory=dict)
    search_seconds: float = 0.0
    final_seconds: float = 0.0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def row(self) -> dict:
        """A line of the summary table."""
        row = {"model": self.model, "trials": self.trials, "stopped_by": self.stopped_by,
               f"default val {self.objective}": self.base_score,
               f"chosen val {self.objective}": self.best_score}
        row.update({f"test {k}": v for k, v in self.test_metrics.items()})
        row.update({"search_s": self.search_seconds, "final_s": self.final_seconds})
        return row


def objective_for(cfg: RunConfig, fold, name: str | None):
    """The validation objective: ``name`` if given, else RMSE for a rating model on a rating
    split and NDCG@100 otherwise."""
    from tfmf import registry
    from tfmf.tuning.tuner import parse_objective

    if name:
        try:
            return parse_objective(name)
        except ConfigError as exc:
            raise ConfigError(exc.reason, key="--objective") from None
    task = registry.get(cfg.model_name).task
    ratings = isinstance(fold, tuple) and not bool(fold[0].implicit)
    return parse_objective("rmse" if task in ("explicit", "both") and ratings else "ndcg@100")


def carve(cfg: RunConfig, fold):
    """``(fit_part, validation, how)``: the validation part of the fold's training part (the
    config's own when it sets one, so the final run validates on the same part)."""
    from tfmf.data.splits import carve_validation

    split = cfg.data.split
    if isinstance(fold, tuple):
        fraction = cfg.train.validation_fraction or VALIDATION_FRACTION
        fit_part, validation, _ = carve_validation(fold, fraction=fraction, seed=split.seed)
        how = f"{fraction:g} of the training ratings"
    else:
        users = split.validation_users or VALIDATION_USERS
        fit_part, validation, _ = carve_validation(fold, users=users,
                                                   fold_in_fraction=split.fold_in_fraction,
                                                   seed=split.seed)
        how = f"{users:g} {'users' if users >= 1 else 'of the training users'}"
    return fit_part, validation, how


def _specs(cfg: RunConfig) -> tuple[list, bool]:
    """The model's quick space as validated ParamSpecs, and whether epochs are early-stopped."""
    space = quick_spaces.quick_space(cfg.model_name)
    values = {name: getattr(cfg.model if name.startswith("model.") else cfg.train,
                            name.split(".", 1)[1], None) for name in space.params}
    entries, early = quick_spaces.resolve(space, values, schedule=cfg.train.schedule,
                                          epochs=cfg.train.epochs)
    probe = dataclasses.replace(cfg, tune=dataclasses.replace(cfg.tune, space=entries))
    return space_mod.parse_space(probe), early


def tune_model(cfg: RunConfig, data, fold, model_dir: str, budget: Budget, *, train,
               max_trials: int = DEFAULT_MAX_TRIALS, objective: str | None = None,
               progress: bool = True) -> QuickResult:
    """Quick search for ``cfg``'s model, then the final run in ``model_dir``.

    Args:
      cfg: the starting config (its values are trial 0).
      data: the loaded dataset; ``fold``: the config's first split of it.
      model_dir: the final run directory (the search lives in ``model_dir/search``).
      budget: this model's wall-clock budget.
      train: the final fit, ``tfmf.runner.train`` (passed in: tuning sits below the runner).
      max_trials: trial cap.
      objective: validation metric (None: RMSE for rating models, else NDCG@100).
      progress: print a line per trial.

    Returns:
      A QuickResult.
    """
    from tfmf.tuning.tuner import ConfigHyperModel, MAX_INITIAL_POINTS

    import warnings

    specs, early = _specs(cfg)
    obj = objective_for(cfg, fold, objective)
    fit_part, validation, how = carve(cfg, fold)
    result = QuickResult(model=cfg.model_name, run_dir=model_dir, objective=obj.name,
                         direction=obj.direction)
    for s in specs:
        if space_mod.current_value(cfg, s) is None and s.name != "train.epochs":
            result.notes.append(f"{cfg.model_name}: the starting {s.name} lies outside the quick "
                                f"range; trial 0 uses {s.min if s.numeric else s.values[0]!r}")
    search_dir = os.path.join(model_dir, "search")
    os.makedirs(search_dir, exist_ok=True)
    eval_cfg = dataclasses.replace(cfg.eval, metrics=[obj.base] + (
        ["recall"] if obj.base == "ndcg" else ["mae"] if obj.base == "rmse" else []),
        ks=sorted({obj.k, 20} - {None}) if obj.k else cfg.eval.ks)
    oracle_cls = _oracle_classes()
    import keras_tuner as kt

    initial = max(2, min(len(specs) + 1, MAX_INITIAL_POINTS, max_trials - 1))
    oracle = oracle_cls(objective=kt.Objective(obj.name, obj.direction), max_trials=max_trials,
                        num_initial_points=initial, seed=cfg.tune.seed * 10 + 1,
                        max_consecutive_failed_trials=max_trials + 1)
    oracle.budget = budget
    tuner = _tuner_class()(oracle, ConfigHyperModel(cfg, specs), fit_part=fit_part,
                           validation=validation, objective=obj, eval_config=eval_cfg,
                           budget=budget, early_stopping=early, directory=search_dir,
                           progress=progress)
    if progress:
        print(f"{cfg.model_name}: quick search over {', '.join(s.name for s in specs)}"
              + (" (+ epochs by early stopping)" if early else "")
              + f" on validation {how}; objective {obj.name}; at most {max_trials} trials, "
              f"{budget.seconds:.0f} s", flush=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="sklearn.gaussian_process")
        tuner.search()
    search_end = time.monotonic()
    result.search_seconds = search_end - budget.start

    rows = report.trial_rows(tuner.oracle, obj.name)
    for r in rows:
        m = tuner.oracle.trials[r["trial_id"]].metrics
        r["epochs"] = m.get_last_value("epochs") if m.exists("epochs") else None
        if m.exists("too_slow"):
            r["status"] = "TOO_SLOW"  # stopped early: its score is a placeholder, never chosen
            r["message"] = "stopped: this config's fit plus its final fit would overrun the budget"
    result.trials = len(rows)
    result.stopped_by = ("max_trials" if len(rows) >= max_trials else
                         "budget" if not budget.may_start_trial() else "space")
    best = report.best_rows(rows, obj.direction, 1)
    if not best:
        raise RuntimeError(f"no quick-search trial of {cfg.model_name} completed; see "
                           f"{os.path.join(search_dir, 'trials.json')}: "
                           + "; ".join(r["message"] for r in rows if r["message"]))
    first = next((r for r in rows if r["trial_id"] == min(x["trial_id"] for x in rows)), None)
    result.base_score = first["mean"] if first and first["status"] == "COMPLETED" else None
    values = dict(best[0]["hyperparameters"])
    if early:
        epochs = tuner.oracle.trials[best[0]["trial_id"]].metrics.get_last_value("epochs")
        values["train.epochs"] = int(epochs)
    result.best_values, result.best_score = values, best[0]["mean"]
    result.chosen = space_mod.apply_values(cfg, values)
    report.write_report(search_dir, rows, specs, obj.name, obj.direction, result.chosen,
                        extra={"strategy": "quick", "validation": how,
                               "early_stopping_epochs": early, "chosen": values,
                               "stopped_by": result.stopped_by,
                               "budget_seconds": budget.seconds})
    # The final run: the chosen config trained as `tfmf train` would, test scored once.
    res = train(result.chosen, model_dir, data=data)
    result.final_seconds = time.monotonic() - search_end
    result.seconds = time.monotonic() - budget.start
    result.test_metrics = dict(res.metrics)
    return result


# --------------------------------------------------------------------------- command
def model_config(cfg: RunConfig, name: str) -> RunConfig:
    """``cfg`` for model ``name``: itself when it already is; else its data, eval, train and
    tune sections with ``name``'s Config defaults (the single source of defaults).

    Raises:
      ConfigError: (key ``--model``) an unknown model.
    """
    if name == cfg.model_name:
        return cfg
    from tfmf import registry

    try:
        registry.get(name)
    except KeyError as exc:
        raise ConfigError(str(exc.args[0]), key="--model") from None
    raw = cfg.to_dict()
    raw["model"] = {"name": name}
    return load_config(raw=raw)


def check_request(cfg: RunConfig, out_dir: str, models: list[str] | None,
                  max_trials: int) -> list[RunConfig]:
    """Validates a quick request before any data is loaded; returns one config per model.

    Raises:
      ConfigError: see :func:`run_quick`.
    """
    from tfmf.rundir import RunDir

    if isinstance(max_trials, bool) or not isinstance(max_trials, int) or max_trials < 1:
        raise ConfigError(f"must be >= 1, got {max_trials!r}", key="--max-trials")
    names = list(dict.fromkeys(models or [cfg.model_name]))
    if not names:
        raise ConfigError("needs at least one model name", key="--model")
    configs = []
    for name in names:
        mcfg = model_config(cfg, name)
        try:
            quick_spaces.quick_space(name)
        except ConfigError as exc:
            raise ConfigError(exc.reason, key="--model" if models else "model.name") from None
        configs.append(mcfg)
    if cfg.data.split.kind == "none":
        raise ConfigError("tune --quick scores the chosen config on the test part once, at "
                          "the end; choose a split with one (e.g. user_folds, holdout)",
                          key="data.split.kind")
    for name in names:
        if RunDir(os.path.join(out_dir, name)).finished():
            raise ConfigError(f"{os.path.join(out_dir, name)!r} already holds a finished run; "
                              "choose another --run-dir", key="--run-dir")
    return configs


def run_quick(cfg: RunConfig, out_dir: str, *, models: list[str] | None = None,
              budget_seconds: float = DEFAULT_BUDGET, max_trials: int = DEFAULT_MAX_TRIALS,
              objective: str | None = None, data=None, train=None, progress: bool = True,
              start: float | None = None) -> list[QuickResult]:
    """Quick-tunes each model on ``cfg``'s data and trains the chosen configs.

    Args:
      cfg: the starting config (data, split, eval; its model unless ``models`` is given).
      out_dir: the tuning directory: ``<out_dir>/<model>/`` is each final run (its
        config.yaml the chosen config, reusable by ``tfmf train --config``) with the search in
        ``<out_dir>/<model>/search/``; ``<out_dir>/summary.json`` and ``table.txt`` sum up.
      models: registry names (default: the config's model).
      budget_seconds: wall clock for everything, shared by the models.
      max_trials: trial cap per model.
      objective: validation metric (None: per model, see :func:`objective_for`).
      data: preloaded InteractionData (skips loading ``cfg.data``).
      train: the final fit, ``(cfg, run_dir, data=...) -> RunResult``: ``tfmf.runner.train``
        (the CLI passes it; tuning sits below the runner and does not import it).
      progress: print progress.
      start: ``time.monotonic()`` the budget counts from (default: now).

    Returns:
      One QuickResult per model.

    Raises:
      ConfigError: unknown model or one without a quick space (key ``--model``), an empty
        budget (``--budget``) or trial cap (``--max-trials``), a split with no test part
        (``data.split.kind``), a finished run already in a model's directory.
    """
    from tfmf.data.loading import load_dataset, run_timestamps
    from tfmf.data.splits import make_splits
    from tfmf.fileio import atomic_write_text, json_default
    from tfmf.tables import format_table

    if train is None:
        raise TypeError("run_quick needs train=tfmf.runner.train (the final fit)")

    start = time.monotonic() if start is None else start
    budget_seconds = parse_budget(budget_seconds)
    configs = check_request(cfg, out_dir, models, max_trials)
    if data is None:
        data = load_dataset(cfg.data, timestamps=run_timestamps(cfg.data))
    # The first split only, as tfmf train uses (the runner's first_split).
    fold = next(iter(make_splits(data, cfg.data.split, data_dir=cfg.data.data_dir)))
    results = []
    for k, mcfg in enumerate(configs):
        now = time.monotonic()
        share = (start + budget_seconds - now) / (len(configs) - k)
        if share <= 0:
            raise ConfigError(f"the budget ran out before {mcfg.model_name} could start "
                              f"({budget_seconds:.0f} s for {len(configs)} model(s))",
                              key="--budget")
        res = tune_model(mcfg, data, fold, os.path.join(out_dir, mcfg.model_name),
                         Budget(share, now), train=train, max_trials=max_trials,
                         objective=objective, progress=progress)
        results.append(res)
    table = format_table([r.row() for r in results], float_format=".4f",
                         formats={"search_s": ".1f", "final_s": ".1f"})
    chosen = "\n".join(f"{r.model}: {report.format_values(r.best_values)}  ->  "
                       f"{os.path.join(r.run_dir, 'config.yaml')}" for r in results)
    atomic_write_text(os.path.join(out_dir, "table.txt"), table + "\n\n" + chosen + "\n")
    atomic_write_text(os.path.join(out_dir, "summary.json"), json.dumps(
        {"budget_seconds": budget_seconds, "max_trials": max_trials,
         "seconds": time.monotonic() - start,
         "models": [{**{f.name: getattr(r, f.name) for f in dataclasses.fields(r)
                        if f.name != "chosen"},
                     "config": os.path.join(r.run_dir, "config.yaml")} for r in results]},
        indent=2, default=json_default))
    return results


__all__ = ["run_quick", "check_request", "tune_model", "parse_budget", "Budget", "QuickResult",
           "DEFAULT_BUDGET", "DEFAULT_MAX_TRIALS"]
