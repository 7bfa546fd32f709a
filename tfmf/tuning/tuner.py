"""Cross-validated KerasTuner search: every trial is scored on inner folds of the training data.

The search is driven by a real KerasTuner oracle (Bayesian optimisation, random search,
Hyperband); :class:`CVTuner` subclasses ``keras_tuner``'s ``BaseTuner`` (the base of
``keras_tuner.Tuner`` and of its ``SklearnTuner``: our models are Recommenders, not Keras models
to ``fit``) with a ``run_trial`` that calls
:func:`tfmf.evaluation.model_selection.cross_validate` on the inner folds and reports the mean
objective, with per-fold values, min, max and std as extra trial metrics.

Distributed tuning uses KerasTuner's own chief/worker protocol (``KERASTUNER_TUNER_ID``,
``KERASTUNER_ORACLE_IP``, ``KERASTUNER_ORACLE_PORT``): the chief serves the oracle over gRPC,
workers (``tuner0``, ``tuner1``, ...) ask it for trials. The chief runs KerasTuner's
``OracleServicer`` with a short poll instead of ``oracle_chief.start_server``'s 30 s sleep and
30 s linger, and only exits once every worker that connected has been told to stop.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tfmf.config import EvalConfig, RunConfig
from tfmf.errors import ConfigError
from tfmf.tuning import report
from tfmf.tuning import space as space_mod

import keras_tuner as kt  # noqa: E402  (after tfmf: Keras 2 is selected)
from keras_tuner.distribute import utils as dist_utils
from keras_tuner.engine import base_tuner
from keras_tuner.engine import trial as trial_module

#: Ranking metrics (maximised); rating metrics (rmse, mae) are minimised.
from tfmf.evaluation import RANKING_METRICS, RATING_METRICS  # noqa: E402
#: Random trials before the Gaussian process of the Bayesian oracle takes over.
MAX_INITIAL_POINTS = 3
#: How many of the best first-stage trials define the second-stage ranges of two_stage.
TOP_TRIALS = 3


# --------------------------------------------------------------------------- objective
@dataclass(frozen=True)
class Objective:
    """The metric a search optimises.

    Attributes:
      name: the metric key as evaluate() returns it (``rmse``, ``ndcg@100``).
      direction: "min" or "max".
      k: the cut-off of a ranking metric (None for rating metrics).
    """

    name: str
    direction: str
    k: int | None = None

    @property
    def base(self) -> str:
        return self.name.split("@")[0]

    def better(self, a: float, b: float) -> bool:
        return a < b if self.direction == "min" else a > b


def parse_objective(name: str) -> Objective:
    """``rmse``/``mae`` (min) or ``ndcg@K``/``recall@K``/``precision@K``/``map@K`` (max)."""
    if name in RATING_METRICS:
        return Objective(name, "min")
    base, _, k = name.partition("@")
    if base in RANKING_METRICS and k.isdigit() and int(k) >= 1:
        return Objective(name, "max", int(k))
    raise ConfigError(f"unknown objective {name!r}; use rmse, mae, or ndcg@K, recall@K, "
                      "precision@K, map@K", key="tune.objective")


def trial_eval_config(cfg: RunConfig, objective: Objective) -> EvalConfig:
    """The run's EvalConfig reduced to the objective (trials compute nothing else)."""
    ks = [objective.k] if objective.k is not None else cfg.eval.ks
    return dataclasses.replace(cfg.eval, metrics=[objective.base], ks=ks)


# --------------------------------------------------------------------------- data
def training_part(cfg: RunConfig, data):
    """The training part of the config's (first) split: the only data a search ever sees."""
    from tfmf.data.splits import first_split
    from tfmf.evaluation.model_selection import split_parts

    train, _ = split_parts(first_split(data, cfg.data.split, data_dir=cfg.data.data_dir))
    return train


def inner_folds(cfg: RunConfig, train) -> list:
    """``tune.inner_folds`` folds of ``train``: :class:`~tfmf.data.splits.KFold` on the
    interactions for rating models, user folds (held-out users split into fold-in/target) for
    implicit ones. Seeded by ``tune.seed`` so every trial (and worker) sees the same folds."""
    from tfmf import registry
    from tfmf.data.splits import KFold, user_folds

    k, seed = cfg.tune.inner_folds, cfg.tune.seed
    if bool(train.implicit) or registry.get(cfg.model_name).task == "implicit":
        return list(user_folds(train, k, cfg.data.split.fold_in_fraction, seed))
    return list(KFold(k, shuffle=True, seed=seed).split(train))


# --------------------------------------------------------------------------- KerasTuner parts
class ConfigHyperModel(kt.HyperModel):
    """A HyperModel over a tfmf run config: ``build(hp)`` returns the trial's RunConfig.

    The "model" a trial trains is fully described by its config; ``cross_validate`` builds a
    fresh Recommender from it for every fold.

    Args:
      base: the run config the hyperparameter values are applied to.
      specs: the search space.
    """

    def __init__(self, base: RunConfig, specs: list[space_mod.ParamSpec]):
        super().__init__(name=f"tfmf_{base.model_name}")
        self.base = base
        self.specs = specs

    def declare_hyperparameters(self, hp) -> None:
        space_mod.declare(hp, self.specs, self.base)

    def build(self, hp) -> RunConfig:
        return space_mod.apply_values(self.base, hp.values)


def _atomic_json(path: str, state: dict) -> None:
    """Writes ``state`` as JSON to ``path`` through a temporary file and a rename, so a process
    killed mid-write leaves the previous file, never a truncated one."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class RestartSafe:
    """Oracle mixin: state files are written atomically, and a restarted search never reruns a
    completed trial nor forgets a started one.

    KerasTuner 1.3.5 writes ``trial_*/trial.json`` and ``oracle.json`` in place and in that
    order; on reload it sends every trial that ``oracle.json`` lists as ongoing to the retry
    queue. A chief killed between the two writes of ``end_trial`` would therefore rerun a trial
    whose ``trial.json`` already says COMPLETED; :meth:`reload` drops those from the queue. One
    killed between the two writes of ``create_trial`` leaves a RUNNING ``trial.json`` that
    ``oracle.json`` does not know: it would stay RUNNING for ever (and count towards
    ``max_trials``); :meth:`reload` queues it for a retry. (Whether the project is reloaded at
    all is decided by the tuner's own file, see :class:`CVTuner`.)
    """

    def save(self):
        _atomic_json(self._get_oracle_fname(), self.get_state())

    def _save_trial(self, trial):
        _atomic_json(os.path.join(self._get_trial_dir(trial.trial_id), "trial.json"),
                     trial.get_state())

    def reload(self):
        super().reload()
        done = {tid for tid, t in self.trials.items() if t.status in _FINISHED}
        for tid in [t for t in self._retry_queue if t in done]:
            self._retry_queue.remove(tid)
            if tid not in self.end_order:
                self.end_order.append(tid)
        for tid, t in sorted(self.trials.items()):
            if (t.status == trial_module.TrialStatus.RUNNING and tid not in self._retry_queue
                    and tid not in self.end_order):
                self._retry_queue.append(tid)
                if tid not in self.start_order:
                    self.start_order.append(tid)
        if self._retry_queue:
            print(f"resuming the search: retrying interrupted trial(s) "
                  f"{', '.join(sorted(self._retry_queue))}", flush=True)


_FINISHED = (trial_module.TrialStatus.COMPLETED, trial_module.TrialStatus.FAILED)


class BaseConfigFirst:
    """Oracle mixin: the first trial runs the hp defaults, i.e. the config's own values (see
    :func:`tfmf.tuning.space.declare`; a value outside the space falls back to KerasTuner's
    default, the range minimum or first choice), so a search starts from the hand-set config
    and reports it if nothing beats it; later trials are the oracle's own."""

    def populate_space(self, trial_id):
        values = {hp.name: hp.default for hp in self.hyperparameters.space}
        if not self.trials and values and not self._duplicate(values):
            return {"status": trial_module.TrialStatus.RUNNING, "values": values}
        return super().populate_space(trial_id)


class BaseFirstRandomSearchOracle(RestartSafe, BaseConfigFirst, kt.oracles.RandomSearchOracle):
    """Random search whose first trial is the starting config."""


class RandomSearchOracle(RestartSafe, kt.oracles.RandomSearchOracle):
    """KerasTuner's random search with restart-safe state files."""


class BaseFirstBayesianOracle(RestartSafe, BaseConfigFirst,
                              kt.oracles.BayesianOptimizationOracle):
    """Bayesian optimisation whose first (random-phase) trial is the starting config."""


class HyperbandOracle(RestartSafe, kt.oracles.HyperbandOracle):
    """KerasTuner's Hyperband with restart-safe state files."""


def make_oracle(strategy: str, cfg: RunConfig, objective: Objective, max_trials: int,
                n_params: int, stage: int = 1):
    """A KerasTuner oracle for ``strategy`` (bayesian | random | hyperband).

    ``stage`` offsets the seed so a second stage does not replay the first one's samples;
    a first stage starts with the config's own values (:class:`BaseConfigFirst`).
    """
    obj = kt.Objective(objective.name, objective.direction)
    # KerasTuner replaces a falsy seed with a random one: shift so tune.seed=0 stays fixed.
    common = dict(objective=obj, seed=cfg.tune.seed * 10 + stage,
                  max_consecutive_failed_trials=5)
    if strategy == "random":
        cls = BaseFirstRandomSearchOracle if stage == 1 else RandomSearchOracle
        return cls(max_trials=max_trials, **common)
    if strategy == "bayesian":
        # KerasTuner's default (3 random points per dimension) would spend a small budget on
        # random search alone; a few points are enough to fit the Gaussian process.
        initial = max(2, min(n_params + 1, MAX_INITIAL_POINTS, max_trials - 1))
        return BaseFirstBayesianOracle(max_trials=max_trials, num_initial_points=initial,
                                       **common)
    if strategy == "hyperband":
        return HyperbandOracle(max_epochs=cfg.tune.max_epochs, factor=3,
                                          hyperband_iterations=1, **common)
    raise ConfigError(f"unknown strategy {strategy!r}", key="tune.strategy")


def role() -> str:
    """``chief`` / ``worker`` under KerasTuner's distributed env variables, else ``local``."""
    if dist_utils.is_chief_oracle():
        return "chief"
    return "worker" if dist_utils.has_chief_oracle() else "local"


@contextlib.contextmanager
def _no_chief_server():
    """Hides KERASTUNER_ORACLE_IP while BaseTuner.__init__ runs on the chief, which would
    otherwise block in ``oracle_chief.start_server`` (see :func:`serve_oracle`)."""
    saved = os.environ.pop("KERASTUNER_ORACLE_IP", None) if role() == "chief" else None
    try:
        yield
    finally:
        if saved is not None:
            os.environ["KERASTUNER_ORACLE_IP"] = saved


class CVTuner(base_tuner.BaseTuner):
    """Runs each trial as a cross-validation on fixed inner folds.

    Args:
      oracle: a KerasTuner oracle.
      hypermodel: a :class:`ConfigHyperModel`.
      folds: the inner (train, validation) folds, built once so every trial sees the same.
      objective: what to report.
      directory / project_name / overwrite: KerasTuner project (``overwrite=False`` resumes).
      executions: repeats of the CV per trial with seeds ``train.seed + e`` (averaged).
      progress: print one line per finished trial.
      label: prefix of the progress lines (e.g. "stage 2").
    """

    def __init__(self, oracle, hypermodel: ConfigHyperModel, folds: list, objective: Objective, *,
                 directory: str, project_name: str, overwrite: bool = False, executions: int = 1,
                 progress: bool = True, label: str = ""):
        self.folds = folds
        self.objective = objective
        self.executions = max(1, int(executions))
        self.progress = progress
        self.label = label
        self.max_trials = oracle.max_trials
        self.new_trials: list[str] = []
        worker = role() == "worker"
        tuner_file = os.path.join(directory, project_name,
                                  f"{os.environ.get('KERASTUNER_TUNER_ID', 'tuner0')}.json")
        oracle_file = os.path.join(directory, project_name, "oracle.json")
        if not (worker or overwrite) and os.path.exists(oracle_file) and \
                not os.path.exists(tuner_file):
            # BaseTuner reloads a project only when the tuner's own file exists, and KerasTuner
            # writes that file after the oracle's at the end of the first trial: a search killed
            # in between (or a chief, which never ends a trial itself) would start afresh and
            # rerun its completed trials. The oracle's state is what counts.
            _atomic_json(tuner_file, {})
        with _no_chief_server():
            super().__init__(oracle, hypermodel, directory=directory, project_name=project_name,
                             overwrite=overwrite and not worker)
        if worker:
            fast_reconnect(self.oracle)
        else:
            self.save()  # oracle.json and the tuner's file exist before the first trial starts

    def save(self) -> None:
        if not self._is_worker():
            self.oracle.save()
        _atomic_json(self._get_tuner_fname(), self.get_state())

    def run_trial(self, trial, *args, **kwargs) -> dict[str, float]:
        # A worker tells the chief it is alive while it runs a trial (see serve_oracle).
        with _heartbeat(self.oracle, trial.trial_id) if role() == "worker" else \
                contextlib.nullcontext():
            return self._run_cv_trial(trial)

    def _run_cv_trial(self, trial) -> dict[str, float]:
        from tfmf.evaluation.model_selection import cross_validate

        cfg = self.hypermodel.build(trial.hyperparameters)
        eval_cfg = trial_eval_config(cfg, self.objective)
        t0 = time.perf_counter()
        per_fold = np.zeros(len(self.folds))
        runs = []
        for e in range(self.executions):
            # Trials are silent and keep nothing on disk; only the search report is written.
            train_cfg = dataclasses.replace(cfg.train, seed=cfg.train.seed + e, verbose=0)
            res = cross_validate(cfg.model_name, cfg.model, self.folds, train_config=train_cfg,
                                 eval_config=eval_cfg, verbose=False)
            per_fold += [row[self.objective.name] for row in res.per_fold]
            runs.append(res.to_dict())
        per_fold /= self.executions
        seconds = time.perf_counter() - t0
        metrics = report.fold_metrics(self.objective.name, per_fold, seconds)
        # Worker-side record of who ran the trial (the oracle's trial.json holds the metrics).
        path = os.path.join(self.project_dir, f"trial_{trial.trial_id}", f"cv_{self.tuner_id}.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            json.dump({"trial_id": trial.trial_id, "tuner_id": self.tuner_id,
                       "hyperparameters": dict(trial.hyperparameters.values),
                       "metrics": metrics, "executions": runs}, fh, indent=2,
                      default=report.json_default)
        return metrics

    def on_trial_begin(self, trial) -> None:
        pass  # KerasTuner's Display tables are replaced by one line per trial (on_trial_end).

    def on_trial_end(self, trial) -> None:
        self.oracle.end_trial(trial)
        self.save()
        self.new_trials.append(trial.trial_id)
        if self.progress:
            done = self.oracle.get_trial(trial.trial_id)
            best = self.oracle.get_best_trials(1)
            print(report.progress_line(done, best[0] if best else None, self.objective.name,
                                       self.max_trials, self.label), flush=True)


# --------------------------------------------------------------------------- chief server
def _env_seconds(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@contextlib.contextmanager
def _heartbeat(client, trial_id: str):
    """While the block runs, asks the chief for ``trial_id`` every $TFMF_TUNE_HEARTBEAT seconds
    (default 5): the chief takes any request naming a running trial as a sign of life."""
    import threading

    stop = threading.Event()
    every = _env_seconds("TFMF_TUNE_HEARTBEAT", 5.0)

    def beat():
        while not stop.wait(every):
            try:
                client.get_trial(trial_id)
            except Exception:  # noqa: BLE001  (chief briefly away: the next beat retries)
                pass

    t = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(timeout=every + 1.0)


def serve_oracle(oracle, poll: float = 0.5, linger: float | None = None,
                 workers: int | None = None, wait_missing: float = 120.0) -> None:
    """Serves ``oracle`` to workers over gRPC until the search is over (the chief's job).

    Uses KerasTuner's ``OracleServicer``. The search is over once the oracle has stopped, no
    trial is running and every worker that asked for a trial has been told to stop. Then the
    chief returns as soon as ``workers`` workers have been told to stop; when the count is
    unknown (0) it waits ``linger`` seconds for late workers instead, and a known count that
    never shows up is waited for at most ``wait_missing`` seconds.

    A worker that dies mid-trial is detected by its silence: workers send a heartbeat while
    they run a trial (:func:`_heartbeat`), and a running trial whose worker has not been heard
    from for $TFMF_TUNE_WORKER_LEASE seconds (default 60) is ended as lost: KerasTuner marks it
    FAILED (no retries configured) with a message naming the worker, the search carries on with
    the other workers, and a late result from that worker is ignored. Workers that went silent
    are not waited for at the end.

    Args:
      oracle: the chief's oracle (with its project dir set).
      poll: seconds between checks.
      linger: grace period for late workers (default $TFMF_TUNE_CHIEF_LINGER or 5 s).
      workers: expected number of workers (default $TFMF_TUNE_WORKERS or 0: unknown).
      wait_missing: the most the chief waits for expected workers that never connected.
    """
    from concurrent import futures

    import grpc
    from keras_tuner import protos
    from keras_tuner.distribute import oracle_chief

    env = os.environ
    linger = float(env.get("TFMF_TUNE_CHIEF_LINGER", 5.0)) if linger is None else linger
    lease = _env_seconds("TFMF_TUNE_WORKER_LEASE", 60.0)
    workers = int(env.get("TFMF_TUNE_WORKERS", 0)) if workers is None else workers

    class Servicer(oracle_chief.OracleServicer):
        def __init__(self, oracle):
            super().__init__(oracle)
            self.seen: set[str] = set()
            self.stopped: set[str] = set()
            self.last: dict[str, float] = {}
            self.lost: set[str] = set()       # trial ids ended because their worker went silent
            self.silent: set[str] = set()     # tuner ids presumed dead

        def alive(self, tuner_id: str) -> None:
            self.last[tuner_id] = time.monotonic()
            self.silent.discard(tuner_id)

        def GetTrial(self, request, context):
            for tuner_id, t in list(self.oracle.ongoing_trials.items()):
                if t.trial_id == request.trial_id:
                    self.alive(tuner_id)
            return super().GetTrial(request, context)

        def UpdateTrial(self, request, context):
            if request.trial_id in self.lost:  # the trial was given up on: keep it failed
                return protos.get_service().UpdateTrialResponse(
                    trial=self.oracle.get_trial(request.trial_id).to_proto())
            return super().UpdateTrial(request, context)

        def EndTrial(self, request, context):
            if request.trial.trial_id in self.lost:
                print(f"chief: ignoring the late result of lost trial {request.trial.trial_id}",
                      flush=True)
                return protos.get_service().EndTrialResponse()
            return super().EndTrial(request, context)

        def reap(self, lease: float) -> None:
            """Ends running trials whose worker has been silent for more than ``lease`` s."""
            now = time.monotonic()
            for tuner_id, t in list(self.oracle.ongoing_trials.items()):
                quiet = now - self.last.get(tuner_id, now)
                if quiet <= lease:
                    continue
                t.status = trial_module.TrialStatus.INVALID
                t.message = (f"worker {tuner_id} stopped responding while running trial "
                             f"{t.trial_id} (no heartbeat for {quiet:.0f} s); trial lost")
                self.lost.add(t.trial_id)
                self.silent.add(tuner_id)
                self.oracle.end_trial(t)
                print(f"chief: WARNING {t.message}; status "
                      f"{self.oracle.get_trial(t.trial_id).status}", flush=True)

        def CreateTrial(self, request, context):
            self.alive(request.tuner_id)
            trial = self.oracle.create_trial(request.tuner_id)
            self.seen.add(request.tuner_id)
            if trial.status == trial_module.TrialStatus.STOPPED:
                self.stop_triggered = True
                self.stopped.add(request.tuner_id)
            return protos.get_service().CreateTrialResponse(trial=trial.to_proto())

    address = f"{env['KERASTUNER_ORACLE_IP']}:{env['KERASTUNER_ORACLE_PORT']}"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = Servicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    if server.add_insecure_port(address) == 0:
        raise RuntimeError(f"chief cannot listen on {address} (port in use?)")
    server.start()
    print(f"chief: oracle serving on {address}", flush=True)
    over_since = None
    try:
        while True:
            time.sleep(poll)
            servicer.reap(lease)
            over = (servicer.stop_triggered and not oracle.ongoing_trials
                    and servicer.seen - servicer.silent <= servicer.stopped)
            if not over:
                over_since = None
                continue
            over_since = over_since or time.monotonic()
            waited = time.monotonic() - over_since
            if workers and len(servicer.stopped | servicer.silent) >= workers:
                break
            if (not workers and waited >= linger) or waited >= wait_missing:
                if workers:
                    print(f"chief: WARNING only {len(servicer.stopped)} of {workers} workers "
                          "connected", flush=True)
                break
    finally:
        server.stop(grace=2).wait()
    print(f"chief: search over, workers {sorted(servicer.seen)} stopped", flush=True)


def fast_reconnect(client) -> None:
    """Re-opens a worker's OracleClient channel with short reconnect back-off.

    gRPC backs off exponentially (up to 2 min) while the chief is not up yet, so a worker
    started long before its chief could sleep through the whole search.
    """
    import grpc
    from keras_tuner import protos

    address = f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"
    channel = grpc.insecure_channel(address, options=[
        ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 1000)])
    client.stub = protos.get_service_grpc().OracleStub(channel)


# --------------------------------------------------------------------------- search
@dataclass
class TuneResult:
    """What a search produced.

    Attributes:
      out_dir: the tuning directory.
      role: local | chief | worker (workers write no report).
      objective / direction: the optimised metric.
      best_values: hp values of the best trial.
      best_score: its mean objective over the inner folds.
      best_config: the run config with the best values applied (as in best_config.yaml).
      trials: one row per trial (see :func:`tfmf.tuning.report.trial_rows`).
      new_trials: ids of trials run by this process (resumed searches skip finished ones).
      files: report files written.
    """

    out_dir: str
    role: str
    objective: str
    direction: str
    best_values: dict = field(default_factory=dict)
    best_score: float | None = None
    best_config: RunConfig | None = None
    trials: list[dict] = field(default_factory=list)
    new_trials: list[str] = field(default_factory=list)
    files: dict[str, Any] = field(default_factory=dict)


def _search_stage(cfg: RunConfig, out_dir: str, folds: list, specs, objective: Objective,
                  strategy: str, max_trials: int, project: str, progress: bool, label: str,
                  stage: int = 1):
    oracle = make_oracle(strategy, cfg, objective, max_trials, len(specs), stage)
    tuner = CVTuner(oracle, ConfigHyperModel(cfg, specs), folds, objective, directory=out_dir,
                    project_name=project, overwrite=cfg.tune.overwrite,
                    executions=cfg.tune.executions_per_trial, progress=progress, label=label)
    with warnings.catch_warnings():
        # The Bayesian oracle's Gaussian-process fit warns on every trial of a small search
        # when a length scale hits its bound; that is expected, not actionable.
        warnings.filterwarnings("ignore", module="sklearn.gaussian_process")
        if role() == "chief":
            serve_oracle(tuner.oracle)
        else:
            tuner.search()
    return tuner


def run_tuning(cfg: RunConfig, out_dir: str, *, data=None, progress: bool = True) -> TuneResult:
    """Searches hyperparameters with cross-validated trials and writes the report.

    Trials train on ``tune.inner_folds`` folds of the training part of the config's split
    (the test part is never touched). ``overwrite=False`` (default) resumes a search found in
    ``out_dir``.

    Args:
      cfg: validated run config (``tune`` section: strategy, budget, objective, space).
      out_dir: the tuning directory (KerasTuner projects + report).
      data: preloaded InteractionData (skips loading ``cfg.data``).
      progress: print one line per trial.

    Returns:
      A TuneResult. Its report files (local run or chief): trials.csv, trials.json,
      best_config.yaml (a full run config ``tfmf train --config`` accepts), summary.json,
      and PNG plots.

    Raises:
      ConfigError: bad search space, objective or strategy.
    """
    objective = parse_objective(cfg.tune.objective)
    specs = space_mod.parse_space(cfg)
    strategy, me = cfg.tune.strategy, role()
    if strategy == "two_stage" and me != "local":
        raise ConfigError("two_stage runs locally only; use bayesian/random/hyperband for "
                          "distributed tuning", key="tune.strategy")
    if data is None:
        from tfmf.data.loading import load_dataset, run_timestamps

        data = load_dataset(cfg.data, timestamps=run_timestamps(cfg.data))
    folds = inner_folds(cfg, training_part(cfg, data))
    os.makedirs(out_dir, exist_ok=True)
    if me != "worker":
        report.atomic_write(os.path.join(out_dir, "config.yaml"), cfg.to_yaml())
    if me == "worker":
        print(f"worker {os.environ['KERASTUNER_TUNER_ID']}: ready", flush=True)

    rows, new, stage_specs = [], [], {}
    if strategy == "two_stage":
        t1 = _search_stage(cfg, out_dir, folds, specs, objective, "bayesian", cfg.tune.max_trials,
                           "stage1", progress, "stage 1")
        rows1 = report.trial_rows(t1.oracle, objective.name, stage=1)
        best = report.best_rows(rows1, objective.direction, TOP_TRIALS)
        narrowed = space_mod.narrow(specs, [r["hyperparameters"] for r in best])
        stage_specs = {"stage1": [s.to_dict() | {"name": s.name} for s in specs],
                       "stage2": [s.to_dict() | {"name": s.name} for s in narrowed]}
        t2 = _search_stage(cfg, out_dir, folds, narrowed, objective, "random",
                           cfg.tune.refine_trials, "stage2", progress, "stage 2", stage=2)
        rows = rows1 + report.trial_rows(t2.oracle, objective.name, stage=2)
        new = [f"stage1/{t}" for t in t1.new_trials] + [f"stage2/{t}" for t in t2.new_trials]
    else:
        max_trials = cfg.tune.max_trials
        tuner = _search_stage(cfg, out_dir, folds, specs, objective, strategy, max_trials,
                              "search", progress, "")
        new = list(tuner.new_trials)
        if me != "worker":
            rows = report.trial_rows(tuner.oracle, objective.name)

    result = TuneResult(out_dir=out_dir, role=me, objective=objective.name,
                        direction=objective.direction, trials=rows, new_trials=new)
    if me == "worker":
        return result
    best = report.best_rows(rows, objective.direction, 1)
    if not best:
        raise RuntimeError(f"no trial completed in {out_dir}; see the trial messages in "
                           "trials.json")
    result.best_values = best[0]["hyperparameters"]
    result.best_score = best[0]["mean"]
    result.best_config = space_mod.apply_values(cfg, result.best_values)
    result.files = report.write_report(out_dir, rows, specs, objective.name, objective.direction,
                                       result.best_config, extra={"strategy": strategy,
                                                                  "spaces": stage_specs,
                                                                  "inner_folds": len(folds)})
    if progress:
        print(f"best {objective.name} = {result.best_score:.4f} with "
              f"{report.format_values(result.best_values)}; best config: "
              f"{result.files['best_config']}", flush=True)
    return result
