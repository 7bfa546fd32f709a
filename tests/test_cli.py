"""The `tfmf` CLI: help, configs, error handling/exit codes, train -> evaluate -> recommend.

Commands run in-process through ``tfmf.cli.main`` (capsys); only the checks that need a fresh
interpreter (no TensorFlow import for --help, `python -m tfmf` exit codes) use subprocesses.
"""
from __future__ import annotations

import glob
import inspect
import json
import os
import re
import subprocess
import sys

import pytest

import tfmf  # noqa: F401
from tfmf import registry
from tfmf.cli import build_parser, main
from tfmf.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))
SAMPLE_CONFIG = os.path.join(ROOT, "configs", "sample_bias_baseline.yaml")


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- help / imports
def test_help_does_not_import_tensorflow():
    code = ("import sys\nfrom tfmf.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "assert 'tensorflow' not in sys.modules, 'tfmf --help imported TensorFlow'\n"
            "print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "usage: tfmf" in res.stdout and res.stdout.strip().endswith("ok")


@pytest.mark.parametrize("command", [["data", "inspect"], ["train"], ["cv"], ["evaluate"], ["tune"],
                                     ["recommend"], ["export"], ["benchmark"]])
def test_every_subcommand_has_help_with_examples(capsys, command):
    with pytest.raises(SystemExit) as exc:
        main(command + ["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: tfmf {' '.join(command)}")
    assert "example" in out


def test_parser_lists_all_subcommands():
    text = build_parser().format_help()
    for cmd in ("data", "train", "cv", "evaluate", "tune", "recommend", "export", "benchmark"):
        assert cmd in text


# --------------------------------------------------------------------------- configs
def test_every_config_file_loads():
    assert CONFIGS, "no configs/*.yaml"
    for path in CONFIGS:
        cfg = load_config(path)
        assert cfg.model_name in registry.names(), path


def test_every_registered_model_has_a_config():
    covered = {load_config(p).model_name for p in CONFIGS}
    missing = sorted(set(registry.names()) - covered)
    assert not missing, f"models without a configs/*.yaml: {missing}"


@pytest.mark.parametrize("body, needle", [
    ("model: {name: bias_baseline}\ntrain: {epochz: 3}\n", "train.epochz"),
    ("model: {name: bias_baseline}\ntrain: {epochs: three}\n", "train.epochs"),
    ("model: {name: bias_baseline, reg_user: [1]}\n", "model.reg_user"),
    ("model: {name: no_such_model}\n", "model.name"),
    ("model: {name: bias_baseline\n", "line"),
])
def test_config_errors_exit_2_naming_the_key(capsys, tmp_path, body, needle):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(body)
    code, out, err = run(capsys, "train", "--config", cfg, "--run-dir", tmp_path / "run")
    assert code == 2
    assert needle in err and str(cfg) in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_bad_override_exits_2_naming_the_key(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--config", SAMPLE_CONFIG, "--set", "train.lr=0.1",
                       "--run-dir", tmp_path / "run")
    assert code == 2 and "train.lr" in err


def test_missing_config_file_via_python_m(tmp_path):
    missing = tmp_path / "nope.yaml"
    res = subprocess.run([sys.executable, "-m", "tfmf", "train", "--config", str(missing)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "config file not found" in res.stderr and str(missing) in res.stderr


def test_unwritable_output_dir_exits_2(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")  # a directory cannot be created below a file (even as root)
    code, _, err = run(capsys, "train", "--config", SAMPLE_CONFIG, "--quiet",
                       "--set", f"output_dir={blocker}/runs")
    assert code == 2 and "output_dir" in err and str(blocker) in err


@pytest.mark.parametrize("cmd, extra", [("evaluate", []), ("recommend", ["--user", "1"]),
                                        ("export", ["--out", "exported"])])
def test_missing_run_dir_exits_2(capsys, tmp_path, cmd, extra):
    code, _, err = run(capsys, cmd, tmp_path / "no-run", *extra)
    assert code == 2
    assert "run directory not found" in err and str(tmp_path / "no-run") in err


def test_resume_without_checkpoint_exits_2(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--resume", tmp_path / "missing")
    assert code == 2 and "run directory not found" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "train", "--resume", tmp_path / "empty")
    assert code == 2 and "config.yaml" in err


def test_tune_command_wiring(capsys, tmp_path):
    try:
        from tfmf.tuning import run_tuning
    except ImportError:
        code, _, err = run(capsys, "tune", "--config", SAMPLE_CONFIG)
        assert code == 2 and "tuning is not available" in err
        return
    # The CLI calls run_tuning(cfg, out_dir, progress=...): the signature must accept that.
    inspect.signature(run_tuning).bind(load_config(SAMPLE_CONFIG), str(tmp_path), progress=False)


def test_benchmark_command_wiring(capsys):
    if not os.path.exists(os.path.join(ROOT, "pipelines", "benchmark.py")):
        code, _, err = run(capsys, "benchmark", "ml100k")
        assert code == 2 and "benchmark" in err
        return
    from tfmf.cli import _import_benchmark

    assert callable(_import_benchmark().main)


# --------------------------------------------------------------------------- data inspect
def test_data_inspect_sample_json(capsys):
    code, out, err = run(capsys, "data", "inspect", "sample", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["ratings"] > 0 and info["users"] > 0 and info["items"] > 0
    assert 0 < info["density"] <= 1
    assert info["rating_scale"] == [1.0, 5.0]


def test_data_inspect_with_data_overrides(capsys):
    code, out, err = run(capsys, "data", "inspect", "sample", "--json",
                         "--set", "data.binarize_threshold=4")
    assert code == 0, err
    info = json.loads(out)
    full = json.loads(run(capsys, "data", "inspect", "sample", "--json")[1])
    assert info["implicit"] is True and 0 < info["ratings"] < full["ratings"]
    code, _, err = run(capsys, "data", "inspect", "sample", "--set", "data.binarize=4")
    assert code == 2 and "data.binarize" in err


def test_data_inspect_bad_file_exits_2_naming_file_and_line(capsys, tmp_path):
    f = tmp_path / "r.csv"
    f.write_text("user,item,rating\n1,1,4\n2,1,not-a-number\n")
    code, _, err = run(capsys, "data", "inspect", f)
    assert code == 2 and str(f) in err and ":3" in err


# --------------------------------------------------------------------------- a trained run
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """The sample bias baseline trained through the CLI (closed form: fast)."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--config", SAMPLE_CONFIG, "--run-dir", str(run_dir), "--quiet"]) == 0
    return run_dir


def test_train_writes_a_complete_run_dir(trained_run):
    for name in ("config.yaml", "metrics.json", "ids.npz", "model/recommender.json"):
        assert (trained_run / name).exists(), name
    leftovers = [p for p in os.listdir(trained_run) if ".tmp" in p]
    assert not leftovers
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["model"] == "bias_baseline" and 0.5 < metrics["metrics"]["rmse"] < 1.5


def test_cv_writes_per_fold_and_summary(capsys, tmp_path):
    run_dir = tmp_path / "cv"
    code, out, err = run(capsys, "cv", "--config", SAMPLE_CONFIG, "--run-dir", run_dir, "--quiet",
                         "--set", "data.split={kind: kfold, n_folds: 2, seed: 1}")
    assert code == 0, err
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [f["fold"] for f in metrics["per_fold"]] == [1, 2]
    assert set(metrics["summary"]["rmse"]) == {"mean", "min", "max", "std"}
    assert "mean" in out and "std" in out


def test_train_refuses_to_overwrite_a_finished_run(capsys, trained_run):
    code, _, err = run(capsys, "train", "--config", SAMPLE_CONFIG, "--run-dir", trained_run)
    assert code == 2 and "already holds a finished run" in err


def test_evaluate_reproduces_training_metrics(capsys, trained_run):
    code, out, err = run(capsys, "evaluate", trained_run, "--json", "--quiet")
    assert code == 0, err
    again = json.loads(out)
    saved = json.loads((trained_run / "metrics.json").read_text())["metrics"]
    assert again.keys() == saved.keys()
    for k in saved:
        assert again[k] == pytest.approx(saved[k], rel=1e-6)


def test_recommend_known_user_with_titles(capsys, trained_run):
    code, out, err = run(capsys, "recommend", trained_run, "--user", "1", "--k", "5", "--json")
    assert code == 0, err
    res = json.loads(out)
    recs = res["recommendations"]
    assert len(recs) == 5 and [r["rank"] for r in recs] == [1, 2, 3, 4, 5]
    scores = [r["score"] for r in recs]
    assert scores == sorted(scores, reverse=True)
    assert all(r["title"] == f"Item {r['item']}" for r in recs)
    # Items user 1 rated in training are never recommended.
    from tfmf.runner import load_run

    loaded = load_run(str(trained_run))
    uidx = list(loaded.ids["user_ids"]).index(1)
    seen = set(loaded.ids["item_ids"][loaded.model._seen[uidx].indices].tolist())
    assert seen and not seen & {r["item"] for r in recs}


def test_recommend_caps_k_at_catalogue_with_warning(capsys, trained_run):
    code, out, err = run(capsys, "recommend", trained_run, "--user", "1", "--k", "100000",
                         "--json")
    assert code == 0
    n_items = json.loads((trained_run / "model" / "recommender.json").read_text())["n_items"]
    assert "warning" in err and str(n_items) in err
    assert json.loads(out)["k"] == n_items


def test_recommend_fold_in_items(capsys, trained_run):
    code, out, err = run(capsys, "recommend", trained_run, "--items", "1", "2", "3", "--k", "4",
                         "--json")
    assert code == 0, err
    items = [r["item"] for r in json.loads(out)["recommendations"]]
    assert len(items) == 4 and not {1, 2, 3} & set(items)


@pytest.mark.parametrize("args, needle", [
    (["--user", "999999"], "unknown user id"),
    (["--user", "abc"], "unknown user id 'abc'"),
    (["--items", "1", "424242"], "unknown item id 424242"),
    (["--user", "1", "--k", "0"], "--k must be >= 1"),
])
def test_recommend_user_errors_exit_2(capsys, trained_run, args, needle):
    code, out, err = run(capsys, "recommend", trained_run, *args)
    assert code == 2 and needle in err and "Traceback" not in err


def test_export_refuses_to_replace_a_non_export_dir(capsys, trained_run, tmp_path):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    code, _, err = run(capsys, "export", trained_run, "--out", target)
    assert code == 2 and str(target) in err
    assert (target / "notes.txt").read_text() == "keep me"


def test_unexpected_error_exits_1_with_traceback(capsys, trained_run, monkeypatch):
    from tfmf import runner

    def boom(*a, **k):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(runner, "evaluate_run", boom)
    code, _, err = run(capsys, "evaluate", trained_run)
    assert code == 1 and "Traceback" in err and "kaboom" in err


# --------------------------------------------------------------------------- output
STAGE_LINE = r"^{} \.\.\. \d+\.\d\d s$"
#: What TensorFlow's C++ side prints on start-up (absl and TF log formats, CUDA, oneDNN, TRT).
TF_NOISE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:|^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] "
                      r"|I0000|W0000|E0000|cuda|cuDNN|cuBLAS|cuFFT|oneDNN|TF-TRT|absl::",
                      re.MULTILINE)


def _tfmf_subprocess(*argv, env_extra=None, timeout=600):
    """`python -m tfmf ARGV` from the repository root, without a TF_CPP_MIN_LOG_LEVEL."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(env_extra or {})
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "tfmf", *map(str, argv)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_train_prints_no_tensorflow_log_lines(tmp_path):
    """Issue 16's acceptance: the biased MF sample run (one epoch) shows only tfmf's output."""
    res = _tfmf_subprocess("train", "--config", "configs/sample_biased_mf.yaml",
                           "--run-dir", tmp_path / "run", "--set", "train.epochs=1")
    assert res.returncode == 0, res.stderr[-3000:]
    for stream in (res.stdout, res.stderr):
        hit = TF_NOISE.search(stream)
        assert hit is None, stream[max(0, hit.start() - 200):hit.end() + 200]
    assert re.search(STAGE_LINE.format("load"), res.stderr, re.MULTILINE), res.stderr
    assert "rmse" in res.stdout


def test_verbose_shows_what_tensorflow_prints(tmp_path):
    """--verbose hands TensorFlow's logging back: whatever a bare `import tensorflow` prints
    on this machine (CUDA plugin lines on the pip wheels) appears again."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    bare = subprocess.run([sys.executable, "-c", "import tensorflow"], env=env,
                          capture_output=True, text=True, timeout=300)
    if not TF_NOISE.search(bare.stderr):
        pytest.skip("this TensorFlow build prints nothing on import")
    res = _tfmf_subprocess("--verbose", "train", "--config", SAMPLE_CONFIG,
                           "--run-dir", tmp_path / "run")
    assert res.returncode == 0, res.stderr[-3000:]
    assert TF_NOISE.search(res.stderr), res.stderr
    # The user's own level wins over the default, in both directions.
    res = _tfmf_subprocess("train", "--config", SAMPLE_CONFIG, "--run-dir", tmp_path / "run2",
                           env_extra={"TF_CPP_MIN_LOG_LEVEL": "0"})
    assert res.returncode == 0 and TF_NOISE.search(res.stderr), res.stderr


def test_stage_lines_and_quiet(capsys, tmp_path):
    code, out, err = run(capsys, "train", "--config", SAMPLE_CONFIG, "--run-dir", tmp_path / "a")
    assert code == 0, err
    assert re.search(STAGE_LINE.format("load"), err, re.MULTILINE), err
    assert "load ..." not in out  # stdout holds results only
    code, out, err = run(capsys, "evaluate", tmp_path / "a")
    assert code == 0, err
    for name in ("load", "evaluate"):
        assert re.search(STAGE_LINE.format(name), err, re.MULTILINE), err
    code, _, err = run(capsys, "evaluate", tmp_path / "a", "--quiet")
    assert code == 0 and " ... " not in err, err


def test_verbose_is_a_global_flag():
    args = build_parser().parse_args(["--verbose", "data", "inspect", "sample"])
    assert args.verbose is True
    assert build_parser().parse_args(["data", "inspect", "sample"]).verbose is False
