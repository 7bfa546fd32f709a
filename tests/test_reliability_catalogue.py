"""Reliability catalogue (issue 10): input a user can get wrong -> a clear error, exit 2, and no
output that looks complete.

Each case builds its scenario in ``tmp_path`` and returns the CLI arguments, the fragments the
error must contain (``file:line`` for data, the dotted key for configs) and the outputs that must
not look finished (a run directory without metrics.json / model/, an absent export directory).
docs/RELIABILITY.md lists the same cases with their messages.

The cases run in-process through ``tfmf.cli.main`` (TensorFlow is imported once); a few repeat
through ``python -m tfmf`` to prove the real process exit code.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import tfmf  # noqa: F401  (Keras 2 before TensorFlow)
from tfmf.cli import main

ROOT = Path(__file__).resolve().parents[1]
BASELINE_CONFIG = ROOT / "configs" / "sample_bias_baseline.yaml"
# 12 users x 10 items, ratings 1..5: enough rows for a holdout split of a valid file.
GOOD_ROWS = "".join(f"{u},{i},{1 + (u * 7 + i) % 5}\n" for u in range(1, 13) for i in range(1, 11))


@dataclass
class Scenario:
    """What one catalogue case runs and expects.

    Attributes:
      argv: CLI arguments.
      needles: fragments the stderr message must contain.
      code: expected exit code (2: user error; 0 for documented lenient behaviour).
      run_dirs: run directories that must not look finished (no metrics.json, no model/).
      absent: paths (exports) that must not exist afterwards.
    """

    argv: list
    needles: list
    code: int = 2
    run_dirs: list = field(default_factory=list)
    absent: list = field(default_factory=list)


CASES: dict[str, Callable[[Path, Path], Scenario]] = {}


def case(name: str):
    """Registers a scenario builder ``(tmp_path, finished_run) -> Scenario`` under ``name``."""
    def deco(fn):
        CASES[name] = fn
        return fn
    return deco


# --------------------------------------------------------------------------- builders
def _train_on_file(tmp: Path, filename: str, text: str | bytes | None, line: int | None,
                   fragment: str, data_yaml: str = "") -> Scenario:
    """Writes a data file (None: none) and a config reading it; the error names ``file:line``."""
    path = tmp / filename
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    cfg = tmp / "run.yaml"
    cfg.write_text("model: {name: bias_baseline}\n"
                   f"data:\n  source: {path}\n  split: {{kind: holdout, seed: 0}}\n{data_yaml}")
    run_dir = tmp / "run"
    where = f"{path}:{line}: " if line is not None else f"{path}: "
    return Scenario(["train", "--config", cfg, "--run-dir", run_dir, "--quiet"],
                    [where, fragment], run_dirs=[run_dir])


def _train_with_config(tmp: Path, body: str | None, key: str, fragment: str,
                       sets: tuple = ()) -> Scenario:
    """A bad config (YAML ``body`` or ``--set`` overrides); the error must name the key."""
    cfg = tmp / "bad.yaml"
    if body is not None:
        cfg.write_text(body)
    run_dir = tmp / "run"
    argv = ["train", "--config", cfg, "--run-dir", run_dir, "--quiet"]
    for s in sets:
        argv += ["--set", s]
    return Scenario(argv, [str(cfg), key, fragment], run_dirs=[run_dir])


# --------------------------------------------------------------------------- data files
H = "user,item,rating\n"
_GZ = gzip.compress((H + GOOD_ROWS).encode())
_PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64)


def _zip_bytes() -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("ratings.csv", H + GOOD_ROWS)
    return buf.getvalue()


_ZIP = _zip_bytes()
# name, file name, content (None: no file), line named in the error (None: file only),
# message fragment, extra `data:` YAML.
DATA_CASES = [
    ("non_numeric_rating", "r.csv", H + "1,1,4\n2,1,four\n", 3, "non-numeric rating 'four'", ""),
    ("non_numeric_timestamp", "r.csv", "user,item,rating,timestamp\n1,1,4,100\n2,1,3,yesterday\n",
     3, "non-numeric timestamp 'yesterday'", ""),
    ("non_integer_numeric_id", "r.csv", H + "1,1,4\n1.5,1,3\n", 3,
     "user id 1.5 is not an int64 integer or a string", ""),
    ("missing_rating_column", "r.csv", "user,item\n1,1\n2,1\n", 1, "missing rating column", ""),
    ("missing_named_column", "r.csv", H + "1,1,4\n", 1, "missing column 'stars' for rating",
     "  columns: {rating: stars}\n"),
    # A semicolon file is sniffed and read; a delimiter set by hand is obeyed.
    ("wrong_delimiter", "r.csv", "user;item;rating\n1;1;4\n2;1;3\n", 1,
     "only one column found using delimiter ','; wrong delimiter?", "  delimiter: ','\n"),
    ("too_few_fields", "r.csv", H + "1,1,4\n2,1\n", 3, "too few fields: expected 3, found 2", ""),
    ("too_many_fields", "r.csv", H + "1,1,4\n2,1,3,7\n", 3, "too many fields: expected 3, found 4",
     ""),
    ("nan_rating", "r.csv", H + "1,1,4\n2,1,nan\n", 3, "rating is NaN or missing", ""),
    ("empty_rating_field", "r.csv", H + "1,1,4\n2,1,\n", 3, "rating is NaN or missing", ""),
    ("inf_rating", "r.csv", H + "1,1,4\n2,1,inf\n", 3, "rating is infinite", ""),
    ("rating_outside_scale", "r.csv", H + "1,1,4\n2,1,7\n", 3,
     "rating 7 outside the declared scale [1, 5]", "  rating_scale: [1, 5]\n"),
    ("negative_user_id", "r.csv", H + "1,1,4\n-2,1,3\n", 3, "negative user id -2", ""),
    ("negative_item_id", "r.tsv", "1\t1\t4\n2\t-5\t3\n", 2, "negative item id -5", ""),
    ("overflowing_user_id", "r.csv", H + "1,1,4\n99999999999999999999,1,3\n", 3,
     "user id 99999999999999999999 overflows int64", ""),
    ("overflowing_item_id_int64_max_plus_1", "r.csv", H + "1,1,4\n2,9223372036854775808,3\n", 3,
     "item id 9223372036854775808 overflows int64", ""),
    ("duplicate_pair_policy_error", "r.csv", H + "1,1,4\n2,1,3\n1,1,5\n", 4,
     "duplicate (user, item) pair (first seen at line 2)", ""),
    ("empty_file", "r.csv", "", None, "empty file", ""),
    ("header_only_file", "r.csv", H, 1, "header only: no data rows", ""),
    ("truncated_gz", "r.csv.gz", _GZ[: len(_GZ) // 2], None,
     "truncated or corrupt gzip file", ""),
    ("corrupt_parquet", "r.parquet", b"PAR1 not really parquet", None,
     "cannot read Parquet file", ""),
    ("missing_data_file", "nope.csv", None, None, "no such file, and not a known dataset name", ""),
    ("png_given_as_data", "ratings.csv", _PNG, None, "not a ratings table: this is a PNG image",
     ""),
    ("zip_given_as_data", "ml-latest-small.csv", _ZIP, None,
     "not a ratings table: this is a zip archive (unzip it first)", ""),
    ("binary_file_given_as_data", "r.dat", b"1,1,4\n\x00\x01\x02\x00binary", None,
     "binary data (NUL bytes)", ""),
    # Two rows: a 20% holdout rounds to zero test rows (metrics would be NaN).
    ("split_leaves_no_test_data", "r.csv", H + "1,1,4\n2,1,3\n", None,
     "left no test interactions", ""),
]
for _name, *_spec in DATA_CASES:
    CASES[_name] = lambda tmp, run, spec=tuple(_spec): _train_on_file(tmp, *spec)




@case("directory_given_as_data")
def _(tmp, run):
    folder = tmp / "ml-latest-small"
    folder.mkdir()
    (folder / "ratings.csv").write_text(H + GOOD_ROWS)
    sc = _train_on_file(tmp, "unused.csv", None, None, "is a directory, not a ratings file")
    (tmp / "run.yaml").write_text((tmp / "run.yaml").read_text().replace(
        str(tmp / "unused.csv"), str(folder)))
    sc.needles[0] = f"{folder}: "
    return sc


# --------------------------------------------------------------------------- configs
# name, YAML body (None: no file), key named in the error, message fragment, --set overrides.
MF = "model: {name: biased_mf}\n"
CONFIG_CASES = [
    ("negative_learning_rate", MF + "train: {learning_rate: -0.1}\n", "train.learning_rate",
     "must be > 0", ()),
    ("infinite_learning_rate", MF + "train: {learning_rate: .inf}\n", "train.learning_rate",
     "must be > 0 (and finite)", ()),
    ("zero_latent_dimension", "model: {name: biased_mf, embedding_dim: 0}\n",
     "model.embedding_dim", "must be >= 1", ()),
    ("unknown_model_name", "model: {name: svdpp}\n", "model.name", "unknown model 'svdpp'", ()),
    ("unknown_config_key", MF + "train: {epochz: 3}\n", "train.epochz", "unknown key", ()),
    ("wrong_value_type", MF + "train: {epochs: three}\n", "train.epochs",
     "must be an integer, got str 'three'", ()),
    ("invalid_yaml", "model: {name: biased_mf\ntrain: {epochs: 3}\n", "", "invalid YAML at line",
     ()),
    ("bad_set_override", MF, "train.epochs", "must look like section.key=value",
     ("train.epochs",)),
    ("out_of_range_split_fraction", MF, "data.split.test_fraction", "must be in (0, 1)",
     ("data.split.test_fraction=1.5",)),
    ("unknown_duplicates_policy", MF + "data: {duplicates: first}\n", "data.duplicates",
     "must be one of ['error', 'last', 'mean'], got 'first'", ()),
    ("unknown_eval_metric", MF + "eval: {metrics: [rmse, auc]}\n", "eval.metrics",
     "unknown metric(s) ['auc']", ()),
    ("missing_config_file", None, "", "config file not found", ()),
]
for _name, *_spec in CONFIG_CASES:
    CASES[_name] = lambda tmp, run, spec=tuple(_spec): _train_with_config(tmp, *spec)


# --------------------------------------------------------------------------- output paths
@case("output_dir_under_a_regular_file")
def _(tmp, run):
    blocker = tmp / "a_file"
    blocker.write_text("x")  # root can chmod past 0500, but nobody can mkdir below a file
    return Scenario(["train", "--config", BASELINE_CONFIG, "--quiet",
                     "--set", f"output_dir={blocker}/runs"],
                    ["output_dir", str(blocker), "Not a directory"])


@case("run_dir_under_a_regular_file")
def _(tmp, run):
    blocker = tmp / "a_file"
    blocker.write_text("x")
    return Scenario(["train", "--config", BASELINE_CONFIG, "--quiet",
                     "--run-dir", blocker / "run"],
                    [str(blocker / "run"), "cannot write run directory"])


@case("export_over_a_regular_file")
def _(tmp, run):
    target = tmp / "notes.txt"
    target.write_text("keep me")
    return Scenario(["export", run, "--out", target],
                    [str(target), "refusing to replace a file"])


@case("export_below_a_regular_file")
def _(tmp, run):
    blocker = tmp / "a_file"
    blocker.write_text("x")
    return Scenario(["export", run, "--out", blocker / "model"],
                    ["cannot export below a regular file", str(blocker)], absent=[blocker / "model"])


# --------------------------------------------------------------------------- finished runs
# recommend on the finished run: name, arguments, message fragments, exit code.
RECOMMEND_CASES = [
    ("unknown_user_at_recommend", ("--user", "999999"),
     ("unknown user id 999999", "the run knows 600 users"), 2),
    ("non_numeric_user_id_where_ids_are_integers", ("--user", "alice"),
     ("unknown user id 'alice'", "ids are integers"), 2),
    ("unknown_item_in_fold_in", ("--items", "1", "424242"), ("unknown item id 424242",), 2),
    ("k_zero_at_recommend", ("--user", "1", "--k", "0"), ("--k must be >= 1",), 2),
    # Documented: capped at the number of items with a warning (exit 0).
    ("k_larger_than_catalogue", ("--user", "1", "--k", "100000", "--json"),
     ("warning: --k 100000 exceeds the catalogue (400 items)",), 0),
]
for _name, _args, _needles, _code in RECOMMEND_CASES:
    CASES[_name] = lambda tmp, run, a=_args, n=_needles, c=_code: Scenario(
        ["recommend", run, *a], list(n), code=c)


@case("k_zero_at_export")
def _(tmp, run):
    out = tmp / "exported"
    return Scenario(["export", run, "--out", out, "--k", "0"], ["--k must be >= 1"],
                    absent=[out])


@case("train_into_a_finished_run_dir")
def _(tmp, run):
    return Scenario(["train", "--config", BASELINE_CONFIG, "--run-dir", run, "--quiet"],
                    ["run_name", "already holds a finished run"])


@case("resume_of_a_run_without_checkpoints")
def _(tmp, run):
    closed_form = tmp / "baseline"  # bias_baseline is fitted in closed form: no checkpoints/
    shutil.copytree(run, closed_form)
    return Scenario(["train", "--resume", closed_form, "--quiet"],
                    ["nothing to resume", "has no checkpoints/"])


@case("missing_run_dir")
def _(tmp, run):
    return Scenario(["evaluate", tmp / "no-run"], ["run directory not found", str(tmp / "no-run")])


@case("export_of_a_run_killed_during_training")
def _(tmp, run):
    # What a SIGKILL mid-training leaves: config snapshot, checkpoints, no model/ or metrics.
    partial = tmp / "partial"
    partial.mkdir()
    shutil.copy(run / "config.yaml", partial / "config.yaml")
    (partial / "checkpoints").mkdir()
    out = tmp / "exported"
    return Scenario(["export", partial, "--out", out],
                    ["not a finished run", str(partial / "model" / "recommender.json")],
                    absent=[out])


@case("export_of_a_resume_killed_during_training")
def _(tmp, run):
    # `train --resume` removes metrics.json first; killed before the end, the directory still
    # holds the previous model/, which no longer matches its config: not exportable.
    partial = tmp / "resumed"
    shutil.copytree(run, partial)
    (partial / "metrics.json").unlink()
    out = tmp / "exported"
    return Scenario(["export", partial, "--out", out],
                    ["not a finished run", str(partial / "metrics.json")], absent=[out])


# --------------------------------------------------------------------------- the test
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """The sample bias baseline (closed form: ~1 s) trained through the CLI."""
    run_dir = tmp_path_factory.mktemp("catalogue") / "run"
    assert main(["train", "--config", str(BASELINE_CONFIG), "--run-dir", str(run_dir),
                 "--quiet"]) == 0
    return run_dir


def _assert_nothing_looks_complete(sc: Scenario, tmp: Path) -> None:
    for d in sc.run_dirs:
        assert not (d / "metrics.json").exists(), f"{d} looks finished"
        assert not (d / "model").exists(), f"{d} holds a model"
    for p in sc.absent:
        assert not p.exists(), f"{p} was written"
        if p.parent.is_dir():  # atomic writers leave no half-written siblings either
            assert not [n for n in os.listdir(p.parent) if n.startswith(p.name + ".tmp")]


def test_catalogue_covers_enough_cases():
    assert len(CASES) >= 20


@pytest.mark.parametrize("name", list(CASES))
def test_catalogue(name, tmp_path, finished_run, capsys):
    sc = CASES[name](tmp_path, finished_run)
    code = main([str(a) for a in sc.argv])
    out, err = capsys.readouterr()
    assert code == sc.code, err
    for needle in sc.needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    assert "Traceback" not in err
    if sc.code == 2:
        assert err.startswith("tfmf: error: ") and not out
        _assert_nothing_looks_complete(sc, tmp_path)
    # The finished run used by the recommend/export cases is never modified.
    assert (finished_run / "metrics.json").exists()


def test_k_larger_than_catalogue_returns_every_unseen_item(finished_run, capsys):
    assert main(["recommend", str(finished_run), "--user", "1", "--k", "100000", "--json"]) == 0

    def strict(name):
        raise AssertionError(f"{name} is not valid JSON")

    res = json.loads(capsys.readouterr().out, parse_constant=strict)
    from tfmf.runner import load_run

    run = load_run(str(finished_run))
    model = run.model
    seen = set(model._seen[0].indices.tolist())  # raw id 1 is the smallest: index 0
    assert res["k"] == model.n_items
    # Every unseen item, best first; the seen ones are filtered, not listed with -inf.
    items = [r["item"] for r in res["recommendations"]]
    assert len(items) == model.n_items - len(seen) == len(set(items))
    assert not seen & set(np.searchsorted(run.ids["item_ids"], items).tolist())
    scores = [r["score"] for r in res["recommendations"]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("policy, expected", [("last", {(1, 1): 2.0, (2, 1): 3.0}),
                                              ("mean", {(1, 1): 3.5, (2, 1): 3.0})])
def test_duplicates_accepted_under_last_and_mean(tmp_path, capsys, policy, expected):
    from tfmf.config import DataConfig
    from tfmf.data.loading import load_dataset

    # "last" is the last line in the file (not the latest timestamp); mean keeps the latest ts.
    f = tmp_path / "dups.csv"
    f.write_text("user,item,rating,timestamp\n1,1,5,200\n2,1,3,50\n1,1,2,100\n")
    d = load_dataset(DataConfig(source=str(f), duplicates=policy))
    got = {(d.user_ids[u].item(), d.item_ids[i].item()): float(v)
           for u, i, v in zip(d.users, d.items, d.values)}
    assert got == expected
    ts = dict(zip(zip(d.users.tolist(), d.items.tolist()), d.timestamps.tolist()))
    assert ts[(0, 0)] == (100 if policy == "last" else 200)
    code = main(["data", "inspect", str(f), "--json", "--set", f"data.duplicates={policy}"])
    assert code == 0 and json.loads(capsys.readouterr().out)["ratings"] == 2


def test_scientific_notation_is_a_number():
    # PyYAML (YAML 1.1) parses 1e-3 as a string; configs and --set accept it as a float.
    from tfmf.config import load_config

    cfg = load_config(raw={"train": {"learning_rate": "1e-3", "schedule": "piecewise",
                                     "boundaries": [10], "values": ["1.0e6", "5E-1"]}})
    assert cfg.train.learning_rate == 1e-3 and cfg.train.values == [1e6, 0.5]


def test_unreadable_data_file_names_the_path(tmp_path):
    """A file the user may not read: its own message, exit 2 (run as nobody when root, since
    root reads through permissions)."""
    import stat
    import tempfile

    cmd = [sys.executable, "-m", "tfmf", "data", "inspect"]
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: permissions cannot bite")
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    folder = Path(tempfile.mkdtemp(prefix="tfmf-unreadable-"))
    try:
        folder.chmod(0o755)
        f = folder / "ratings.csv"
        f.write_text(H + GOOD_ROWS)
        f.chmod(0)
        env = dict(os.environ, PYTHONPATH=str(ROOT), HOME=str(folder))
        res = subprocess.run([*cmd, str(f)], capture_output=True, text=True, timeout=180,
                             cwd=folder, env=env)
        assert res.returncode == 2, res.stderr
        assert f"{f}: permission denied: cannot read this file" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
        assert stat.S_IMODE(f.stat().st_mode) == 0
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# The real process exit code, for one data, one config and one run-time case.
@pytest.mark.parametrize("name", ["nan_rating", "unknown_config_key", "unknown_user_at_recommend"])
def test_python_m_tfmf_exit_code(name, tmp_path, finished_run):
    sc = CASES[name](tmp_path, finished_run)
    res = subprocess.run([sys.executable, "-m", "tfmf", *map(str, sc.argv)], capture_output=True,
                         text=True, timeout=180, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    for needle in sc.needles:
        assert needle in res.stderr
    assert "Traceback" not in res.stderr
    _assert_nothing_looks_complete(sc, tmp_path)
