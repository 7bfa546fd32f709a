"""KerasTuner searches: space validation, cross-validated trials, strategies, report, resume."""
from __future__ import annotations

import json
import math

import tfmf  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import pytest
import yaml

from tfmf.config import load_config
from tfmf.errors import ConfigError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

BASELINE_SPACE = {
    "model.reg_user": {"type": "float", "min": 1.0, "max": 50.0, "log": True},
    "model.iterations": {"type": "int", "min": 1, "max": 5},
}


def baseline_cfg(**tune) -> "tfmf.config.RunConfig":
    """bias_baseline on the sample's holdout: closed-form fits, so trials take milliseconds."""
    raw_tune = {"strategy": "random", "max_trials": 2, "inner_folds": 2, "space": BASELINE_SPACE}
    raw_tune.update(tune)
    return load_config(raw={"model": {"name": "bias_baseline"},
                            "data": {"source": "sample", "split": {"kind": "holdout", "seed": 0}},
                            "tune": raw_tune})


@pytest.fixture(scope="module")
def sample():
    from tfmf.data.sample import load_sample

    return load_sample()


def check_png(path) -> None:
    with open(path, "rb") as fh:
        data = fh.read()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 1024, path


# --------------------------------------------------------------------------- space
@pytest.mark.parametrize("name,spec,needle", [
    ("model.nope", {"type": "float", "min": 0.1, "max": 1.0}, "no field 'nope'"),
    ("train.nope", {"type": "float", "min": 0.1, "max": 1.0}, "no field 'nope'"),
    ("eval.ks", {"type": "choice", "values": [[10]]}, "model.<field> or train.<field>"),
    ("model.reg_user", {"type": "float", "min": 5.0, "max": 1.0}, "min < max"),
    ("model.reg_user", {"type": "float", "min": 0.0, "max": 1.0, "log": True}, "min > 0"),
    ("model.reg_user", {"type": "float", "min": -1.0, "max": 1.0}, "must be >= 0"),
    ("model.iterations", {"type": "int", "min": 1.5, "max": 4}, "integers"),
    ("model.reg_user", {"type": "choice", "values": []}, "non-empty"),
    ("model.reg_user", {"type": "gaussian", "min": 1, "max": 2}, "float, int or choice"),
    ("model.reg_user", {"type": "float", "min": 1, "max": 2, "step": 1}, "unknown key"),
    ("train.optimizer", {"type": "choice", "values": ["adam", "rmsprop"]}, "must be one of"),
])
def test_space_errors_name_the_entry(name, spec, needle):
    from tfmf.tuning.space import parse_space

    cfg = baseline_cfg(space={name: spec})
    with pytest.raises(ConfigError) as err:
        parse_space(cfg)
    assert err.value.key == f"tune.space.{name}"
    assert needle in str(err.value)


def test_space_declares_and_applies_model_and_train_fields():
    import keras_tuner as kt

    from tfmf.tuning.space import apply_values, declare, parse_space

    cfg = baseline_cfg(space={**BASELINE_SPACE,
                              "train.learning_rate": {"type": "float", "min": 1e-3, "max": 0.1,
                                                      "log": True},
                              "train.optimizer": {"type": "choice", "values": ["adam", "sgd"]}})
    specs = parse_space(cfg)
    hp = kt.HyperParameters()
    declare(hp, specs)
    assert [h.name for h in hp.space] == [s.name for s in specs]
    assert hp.space[0].sampling == "log" and hp.space[1].sampling == "linear"
    new = apply_values(cfg, {"model.reg_user": 3.5, "model.iterations": 2,
                             "train.learning_rate": 0.02, "train.optimizer": "sgd",
                             "tuner/epochs": 7, "tuner/bracket": 1})
    assert (new.model.reg_user, new.model.iterations) == (3.5, 2)
    assert (new.train.learning_rate, new.train.optimizer, new.train.epochs) == (0.02, "sgd", 7)
    assert cfg.model.reg_user == 15.0 and cfg.train.epochs == 20  # the base is not modified


def test_default_spaces_validate_for_each_model():
    from tfmf.tuning.space import parse_space

    for name in ("bias_baseline", "mf", "biased_mf", "mult_vae"):
        cfg = load_config(raw={"model": {"name": name}})
        specs = parse_space(cfg)
        assert specs and all(s.section in ("model", "train") for s in specs)


def test_narrow_is_log_aware_and_clipped():
    from tfmf.tuning.space import ParamSpec, narrow

    specs = [ParamSpec("model.l2", "float", 1e-4, 1.0, log=True),
             ParamSpec("model.embedding_dim", "choice", values=[8, 16, 32, 64]),
             ParamSpec("train.batch_size", "int", 64, 4096),
             ParamSpec("model.init_stddev", "float", 0.01, 0.5)]
    top = [{"model.l2": 1e-3, "model.embedding_dim": 16, "train.batch_size": 100,
            "model.init_stddev": 0.1},
           {"model.l2": 1e-2, "model.embedding_dim": 32, "train.batch_size": 120,
            "model.init_stddev": 0.1}]
    l2, dim, bs, std = narrow(specs, top, margin=0.5)
    # log space: [1e-3, 1e-2] widened by half a decade on each side
    assert l2.min == pytest.approx(10 ** -3.5) and l2.max == pytest.approx(10 ** -1.5)
    assert dim.values == [16, 32]
    assert bs.type == "int" and bs.min == 64 and 64 <= bs.min < 100 and 120 < bs.max < 4096
    # identical values: width floored at 10% of the range, centred on the value
    assert std.min < 0.1 < std.max and std.max - std.min == pytest.approx(0.098, rel=1e-6)


def test_objectives_and_directions():
    from tfmf.tuning.tuner import parse_objective

    assert parse_objective("rmse").direction == "min"
    assert parse_objective("mae").direction == "min"
    ndcg = parse_objective("ndcg@50")
    assert (ndcg.direction, ndcg.k, ndcg.base) == ("max", 50, "ndcg")
    assert parse_objective("recall@20").direction == "max"
    for bad in ("auc", "ndcg", "ndcg@0", "rmse@10"):
        with pytest.raises(ConfigError) as err:
            parse_objective(bad)
        assert err.value.key == "tune.objective"


# --------------------------------------------------------------------------- folds
def test_inner_folds_use_only_the_training_part(sample):
    from tfmf.evaluation.model_selection import split_parts
    from tfmf.runner import splits_for
    from tfmf.tuning.tuner import inner_folds, training_part

    cfg = baseline_cfg(inner_folds=3)
    train = training_part(cfg, sample)
    _, test = split_parts(splits_for(cfg, sample)[0])
    folds = inner_folds(cfg, train)
    assert len(folds) == 3
    key = lambda d: set(zip(d.users.tolist(), d.items.tolist()))
    test_pairs, train_pairs = key(test), key(train)
    held_out = set()
    for tr, va in folds:
        assert not (key(tr) | key(va)) & test_pairs
        assert tr.nnz + va.nnz == train.nnz
        held_out |= key(va)
    assert held_out == train_pairs  # every training rating validated exactly once overall


# --------------------------------------------------------------------------- searches
def test_small_biased_mf_search_report_and_best_config_trains(tmp_path, sample, capsys):
    """Acceptance: a real 2-trial, 2-fold biased MF search; its best config trains unchanged."""
    from tfmf.runner import train
    from tfmf.tuning import run_tuning

    cfg = load_config("configs/sample_biased_mf_tune.yaml",
                      ["tune.max_trials=2", "tune.inner_folds=2", "train.epochs=1",
                       f"output_dir={tmp_path / 'runs'}"])
    res = run_tuning(cfg, str(tmp_path / "tune"), data=sample)
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("trial ")]
    assert [ln.split(" | ")[0] for ln in lines] == ["trial 1/2 (id 0)", "trial 2/2 (id 1)"]
    assert all("rmse" in ln and "±" in ln and "best" in ln for ln in lines)

    table = json.loads((tmp_path / "tune" / "trials.json").read_text())
    rows = table["trials"]
    assert table["objective"] == "rmse" and table["direction"] == "min"
    assert [r["trial_id"] for r in rows] == ["0", "1"]
    for r in rows:
        assert r["status"] == "COMPLETED"
        assert set(r["hyperparameters"]) == {"model.l2", "model.embedding_dim",
                                             "train.learning_rate"}
        assert len(r["folds"]) == 2 and all(0.5 < f < 2.0 for f in r["folds"])
        assert r["mean"] == pytest.approx(np.mean(r["folds"]))
        assert r["std"] == pytest.approx(np.std(r["folds"]))
        assert (r["min"], r["max"]) == (min(r["folds"]), max(r["folds"]))
        assert r["seconds"] > 0
    csv_lines = (tmp_path / "tune" / "trials.csv").read_text().splitlines()
    assert csv_lines[0].split(",")[:3] == ["trial_id", "stage", "status"]
    assert "fold_2" in csv_lines[0] and len(csv_lines) == 3
    best = min(rows, key=lambda r: r["mean"])
    assert res.best_score == best["mean"] and res.best_values == best["hyperparameters"]

    best_cfg = load_config(tmp_path / "tune" / "best_config.yaml")
    assert best_cfg.model.l2 == pytest.approx(best["hyperparameters"]["model.l2"])
    assert best_cfg.model.embedding_dim == best["hyperparameters"]["model.embedding_dim"]
    assert best_cfg.train.learning_rate == pytest.approx(
        best["hyperparameters"]["train.learning_rate"])
    run = train(best_cfg, str(tmp_path / "best_run"), data=sample)
    assert math.isfinite(run.metrics["rmse"]) and run.metrics["rmse"] < 1.5

    plots = res.files["plots"]
    names = {p.split("/")[-1] for p in plots}
    assert {"objective_per_trial.png", "parallel_coordinates.png",
            "objective_vs_model_l2.png", "objective_vs_model_embedding_dim.png",
            "objective_vs_train_learning_rate.png"} == names
    for p in plots:
        check_png(p)


def test_resume_runs_only_the_missing_trials(tmp_path, sample):
    from tfmf.tuning import run_tuning

    out = str(tmp_path / "tune")
    first = run_tuning(baseline_cfg(strategy="bayesian", max_trials=2), out, data=sample,
                       progress=False)
    assert first.new_trials == ["0", "1"]
    # "Interrupted" after 2 trials: rerunning with a larger budget reloads the project.
    second = run_tuning(baseline_cfg(strategy="bayesian", max_trials=3), out, data=sample,
                        progress=False)
    assert second.new_trials == ["2"]
    assert [r["trial_id"] for r in second.trials] == ["0", "1", "2"]
    assert [r["mean"] for r in second.trials[:2]] == [r["mean"] for r in first.trials]
    # overwrite: a fresh search
    third = run_tuning(baseline_cfg(strategy="bayesian", max_trials=2, overwrite=True), out,
                       data=sample, progress=False)
    assert third.new_trials == ["0", "1"] and len(third.trials) == 2


def test_two_stage_refines_inside_the_best_trials_ranges(tmp_path, sample):
    from tfmf.tuning import run_tuning

    res = run_tuning(baseline_cfg(strategy="two_stage", max_trials=4, refine_trials=3),
                     str(tmp_path / "tune"), data=sample, progress=False)
    stage1 = [r for r in res.trials if r["stage"] == 1]
    stage2 = [r for r in res.trials if r["stage"] == 2]
    assert len(stage1) == 4 and len(stage2) == 3
    assert len({r["trial_id"] for r in res.trials}) == 7
    summary = json.loads((tmp_path / "tune" / "summary.json").read_text())
    space2 = {s["name"]: s for s in summary["spaces"]["stage2"]}
    top3 = sorted(stage1, key=lambda r: r["mean"])[:3]
    for name in BASELINE_SPACE:
        lo, hi = space2[name]["min"], space2[name]["max"]
        top_vals = [r["hyperparameters"][name] for r in top3]
        assert lo <= min(top_vals) and max(top_vals) <= hi  # the best trials stay inside
        assert BASELINE_SPACE[name]["min"] <= lo and hi <= BASELINE_SPACE[name]["max"]
        assert all(lo <= r["hyperparameters"][name] <= hi for r in stage2)
    reg = space2["model.reg_user"]
    assert math.log(reg["max"] / reg["min"]) < math.log(50.0)  # actually narrowed
    best = min(res.trials, key=lambda r: r["mean"])
    assert res.best_values == best["hyperparameters"]


def test_hyperband_epochs_drive_train_epochs(tmp_path, sample):
    from tfmf.tuning import run_tuning

    res = run_tuning(baseline_cfg(strategy="hyperband", max_epochs=3), str(tmp_path / "tune"),
                     data=sample, progress=False)
    epochs = {r["hyperparameters"]["tuner/epochs"] for r in res.trials}
    assert epochs == {1, 3}  # factor 3: brackets of 1 and 3 epochs
    assert res.best_config.train.epochs == res.best_values["tuner/epochs"]
    saved = yaml.safe_load((tmp_path / "tune" / "best_config.yaml").read_text())
    assert saved["train"]["epochs"] == res.best_values["tuner/epochs"]


def test_ranking_objective_is_maximised_on_user_folds(tmp_path):
    """An implicit model tunes on user folds and keeps the trial with the highest ndcg."""
    from tfmf.tuning import run_tuning

    cfg = load_config(raw={
        "model": {"name": "ease"},
        "data": {"source": "sample", "implicit": True, "binarize_threshold": 4.0,
                 "split": {"kind": "strong", "test_fraction": 0.2, "seed": 0}},
        "tune": {"strategy": "random", "max_trials": 3, "inner_folds": 2, "objective": "ndcg@20",
                 "space": {"model.l2": {"type": "float", "min": 1.0, "max": 2000.0,
                                        "log": True}}}})
    res = run_tuning(cfg, str(tmp_path / "tune"), progress=False)
    assert res.direction == "max"
    means = [r["mean"] for r in res.trials]
    assert all(0.0 < m < 1.0 for m in means) and len(set(means)) == 3
    assert res.best_score == max(means)


def test_failed_trials_are_recorded_and_skipped(tmp_path, sample, capsys):
    """A trial whose fit raises is FAILED in the table (with the error); the best is the other."""
    from dataclasses import dataclass

    from tfmf import registry
    from tfmf.models.baselines import BiasBaseline
    from tfmf.tuning import run_tuning

    @dataclass
    class BrittleConfig:
        reg_user: float = 15.0
        reg_item: float = 10.0
        iterations: int = 10
        explode: bool = False

        def validate(self, key: str) -> None:
            pass

    class Brittle(BiasBaseline):
        config_class = BrittleConfig

        def fit(self, train, train_config=None, **kw):
            if self.config.explode:
                raise FloatingPointError("diverged on purpose")
            return super().fit(train, train_config, **kw)

    if "_brittle_baseline" not in registry._MODELS:
        registry.register("_brittle_baseline")(Brittle)
    cfg = load_config(raw={"model": {"name": "_brittle_baseline"},
                           "data": {"source": "sample", "split": {"kind": "holdout"}},
                           "tune": {"strategy": "random", "max_trials": 2, "inner_folds": 2,
                                    "space": {"model.explode": {"type": "choice",
                                                                "values": [True, False]}}}})
    res = run_tuning(cfg, str(tmp_path / "tune"), data=sample)
    by_status = {r["status"]: r for r in res.trials}
    assert set(by_status) == {"FAILED", "COMPLETED"}
    failed = by_status["FAILED"]
    assert failed["hyperparameters"] == {"model.explode": True} and failed["mean"] is None
    assert "diverged on purpose" in failed["message"]
    assert res.best_values == {"model.explode": False}
    assert "FAILED FloatingPointError: diverged on purpose" in capsys.readouterr().out
    csv_text = (tmp_path / "tune" / "trials.csv").read_text()
    assert "FAILED" in csv_text and "COMPLETED" in csv_text


def test_first_trial_is_the_starting_config(tmp_path, sample):
    from tfmf.tuning import run_tuning

    cfg = load_config(raw={"model": {"name": "bias_baseline", "reg_user": 7.0, "iterations": 3},
                           "data": {"source": "sample", "split": {"kind": "holdout"}},
                           "tune": {"strategy": "bayesian", "max_trials": 3, "inner_folds": 2,
                                    "space": BASELINE_SPACE}})
    res = run_tuning(cfg, str(tmp_path / "tune"), data=sample, progress=False)
    assert res.trials[0]["hyperparameters"] == {"model.reg_user": 7.0, "model.iterations": 3}
    assert all(r["hyperparameters"] != res.trials[0]["hyperparameters"] for r in res.trials[1:])
