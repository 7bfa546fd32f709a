"""``tfmf tune --quick``: the spaces, the CLI end to end on tiny data (real KerasTuner, real
fits), test users never reaching the selection, budget exhaustion, and bad input."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml

import tfmf  # noqa: F401  (Keras 2 before TensorFlow)
from tfmf.cli import main
from tfmf.config import load_config
from tfmf.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_USERS, N_HITS, BLOCKS, BLOCK = 300, 6, 6, 10


def write_blocks(path, test_users=()) -> None:
    """Users like one of six blocks of ten items (five each) plus an occasional hit (six items
    everybody plays now and then). Users in ``test_users`` instead hold all six hits and two
    random items: on them a popularity-like EASE (large lambda) wins, while the block users
    prefer a small one -- so a selection that peeked at them would move."""
    hits = np.arange(N_HITS)
    rows = []
    for u in range(N_USERS):
        rng = np.random.default_rng([0, u])  # per user: other users' rows never change
        if u in test_users:
            items = np.concatenate([hits, rng.choice(np.arange(N_HITS, N_HITS + BLOCKS * BLOCK),
                                                     2, replace=False)])
        else:
            items = N_HITS + (u % BLOCKS) * BLOCK + rng.choice(BLOCK, 5, replace=False)
            items = np.concatenate([items, hits[rng.random(N_HITS) < 0.1]])
        rows += [f"{u},{i},1" for i in np.unique(items)]
    with open(path, "w") as fh:
        fh.write("user,item,value\n" + "\n".join(rows) + "\n")


def write_config(path, source, model: dict) -> str:
    raw = {"model": model,
           "data": {"source": str(source), "implicit": True,
                    "split": {"kind": "user_folds", "n_folds": 5, "seed": 0}},
           "train": {"verbose": 0},
           "eval": {"metrics": ["ndcg", "recall"], "ks": [20, 100]}}
    with open(path, "w") as fh:
        yaml.safe_dump(raw, fh)
    return str(path)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def trials(run_dir, model="ease"):
    with open(os.path.join(run_dir, model, "search", "trials.json")) as fh:
        return [(t["hyperparameters"], t["mean"]) for t in json.load(fh)["trials"]]


# --------------------------------------------------------------------------- spaces
def test_quick_spaces_validate_and_contain_the_shipped_configs():
    """Each space names real fields with valid ranges, and the shipped ML-100K config of the
    model lies inside, so its values are a search's first trial."""
    from tfmf.tuning.quick import _specs
    from tfmf.tuning.quick_spaces import QUICK_SPACES
    from tfmf.tuning.space import current_value

    for name in QUICK_SPACES:
        shipped = os.path.join(ROOT, "configs", f"ml100k_{name}.yaml")
        cfg = load_config(shipped if os.path.exists(shipped) else None,
                          [] if os.path.exists(shipped) else [f"model.name={name}"])
        specs, _ = _specs(cfg)
        assert specs, name
        if os.path.exists(shipped):
            outside = [s.name for s in specs if current_value(cfg, s) is None]
            assert not outside, (name, outside)


def test_relative_ranges_follow_the_config_and_schedules_search_epochs():
    from tfmf.tuning.quick import _specs

    cfg = load_config(os.path.join(ROOT, "configs", "ml100k_biased_mf.yaml"))  # SGD lr 5, cosine
    specs = {s.name: s for s in _specs(cfg)[0]}
    assert specs["train.learning_rate"].min == pytest.approx(1.0)
    assert specs["train.learning_rate"].max == pytest.approx(25.0)
    # a cosine schedule ties the decay to the epoch count: searched, not early-stopped
    assert (specs["train.epochs"].min, specs["train.epochs"].max) == (12, 50)
    vae = load_config(os.path.join(ROOT, "configs", "ml100k_mult_vae.yaml"))
    vae_specs, early = _specs(vae)
    assert early and "train.epochs" not in {s.name for s in vae_specs}


# --------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_quick_tune_never_sees_the_test_users(tmp_path, capsys):
    """Two datasets that differ only in the test users' rows: the same trials, scores and
    choice, although the altered test users would prefer another lambda; only the final test
    score moves. The chosen config is a `tfmf train` config that reproduces the final run."""
    from tfmf.evaluation import evaluate
    from tfmf.models.ease import EASE
    from tfmf.runner import first_split, load_data

    write_blocks(tmp_path / "a.csv")
    cfg_a = write_config(tmp_path / "a.yaml", tmp_path / "a.csv", {"name": "ease", "l2": 500.0})
    cfg = load_config(cfg_a)
    data = load_data(cfg)
    fold = first_split(cfg, data)
    test_users = {int(u) for u in data.user_ids[np.unique(fold.target.users)]}
    write_blocks(tmp_path / "b.csv", test_users)
    cfg_b = write_config(tmp_path / "b.yaml", tmp_path / "b.csv", {"name": "ease", "l2": 500.0})

    results = {}
    for tag, path in (("a", cfg_a), ("b", cfg_b)):
        out = tmp_path / f"run_{tag}"
        code, stdout, err = run(capsys, "tune", "--quick", "--config", path, "--budget", "60",
                                "--max-trials", "5", "--run-dir", out, "--quiet")
        assert code == 0, err
        assert "chosen val ndcg@100" in stdout and "test ndcg@100" in stdout  # the table
        with open(out / "summary.json") as fh:
            results[tag] = json.load(fh)["models"][0]
        results[tag]["trials_seen"] = trials(out)
    a, b = results["a"], results["b"]
    assert a["trials_seen"] == b["trials_seen"]  # every trial's values and validation score
    assert a["best_values"] == b["best_values"]
    assert a["test_metrics"]["ndcg@100"] != b["test_metrics"]["ndcg@100"]

    # The altered test users would have picked a different lambda among the trials' values.
    cfg2 = load_config(cfg_b)
    data2 = load_data(cfg2)
    fold2 = first_split(cfg2, data2)
    tried = sorted({v["model.l2"] for v, _ in b["trials_seen"]})
    on_test = {l2: evaluate(EASE(l2=l2).fit(fold2.train), fold2, cfg2.eval)["ndcg@100"]
               for l2 in tried}
    assert max(on_test, key=on_test.get) != b["best_values"]["model.l2"]

    # The chosen config is the final run's snapshot; `tfmf train` on it gives the same score.
    chosen = os.path.join(tmp_path, "run_b", "ease", "config.yaml")
    assert load_config(chosen).model.l2 == b["best_values"]["model.l2"]
    code, stdout, err = run(capsys, "train", "--config", chosen, "--run-dir",
                            tmp_path / "retrain", "--quiet")
    assert code == 0, err
    with open(tmp_path / "retrain" / "metrics.json") as fh:
        again = json.load(fh)["metrics"]
    assert again["ndcg@100"] == pytest.approx(b["test_metrics"]["ndcg@100"], abs=1e-6)


@pytest.mark.slow
def test_budget_exhaustion_ends_with_the_best_so_far(tmp_path, capsys):
    """A budget shorter than one iALS fit: the first trial is stopped at a sweep boundary, no
    other trial starts, and the search still ends with a chosen config and a final run."""
    write_blocks(tmp_path / "a.csv")
    path = write_config(tmp_path / "a.yaml", tmp_path / "a.csv",
                        {"name": "ials", "factors": 16, "iterations": 60})
    code, stdout, err = run(capsys, "tune", "--quick", "--config", path, "--budget", "3s",
                            "--run-dir", tmp_path / "run", "--quiet")
    assert code == 0, err
    with open(tmp_path / "run" / "summary.json") as fh:
        res = json.load(fh)["models"][0]
    assert res["stopped_by"] == "budget" and res["trials"] == 1
    with open(tmp_path / "run" / "ials" / "search" / "trials.json") as fh:
        (trial,) = json.load(fh)["trials"]
    assert trial["status"] == "COMPLETED"
    assert os.path.exists(tmp_path / "run" / "ials" / "metrics.json")
    assert load_config(tmp_path / "run" / "ials" / "config.yaml").model.factors == 16


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("argv,needle", [
    (["--budget", "0"], "--budget: must be a positive duration"),
    (["--budget=-5m"], "--budget: must be a duration"),
    (["--budget", "soon"], "--budget: must be a duration"),
    (["--max-trials", "0"], "--max-trials: must be >= 1"),
    (["--model", "nope"], "--model: unknown model 'nope'"),
    (["--model", "popularity"], "--model: model 'popularity' has no hyperparameters"),
    (["--model", ","], "--model: needs at least one model name"),
    (["--set", "data.split.kind=none"], "data.split.kind: tune --quick scores"),
    (["--objective", "auc"], "--objective: unknown objective 'auc'"),
])
def test_bad_input_names_the_flag_and_writes_nothing(tmp_path, capsys, argv, needle):
    write_blocks(tmp_path / "a.csv")
    path = write_config(tmp_path / "a.yaml", tmp_path / "a.csv", {"name": "ease"})
    code, _, err = run(capsys, "tune", "--quick", "--config", path, "--run-dir",
                       tmp_path / "run", *argv)
    assert code == 2, err
    assert needle in err
    assert not os.path.exists(tmp_path / "run")


def test_quick_flags_without_quick_are_refused(tmp_path, capsys):
    path = write_config(tmp_path / "a.yaml", "sample", {"name": "ease"})
    code, _, err = run(capsys, "tune", "--config", path, "--budget", "5m")
    assert code == 2 and "--budget apply to tune --quick only" in err


def test_parse_budget_units():
    from tfmf.tuning.quick import parse_budget

    assert [parse_budget(t) for t in ("480", "90s", "8m", "1.5h", 30)] == [480, 90, 480, 5400, 30]
    with pytest.raises(ConfigError) as err:
        parse_budget("0s")
    assert err.value.key == "--budget"
