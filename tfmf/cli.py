"""The ``tfmf`` command line: data inspection, training, evaluation, tuning, recommendation,
SavedModel export and benchmarks.

Heavy modules (TensorFlow, the models) are imported inside the subcommands, so ``tfmf --help``
answers instantly. Exit codes: 0 success, 2 a user mistake (bad config key, bad data file,
unknown id, missing run directory, unwritable output; the message on stderr names the file,
line or key), 1 an unexpected error (with a traceback), 130 interrupted.

Output: results on stdout; on stderr one ``<stage> ... <seconds> s`` line per stage (load,
split, fit, evaluate, save; off with ``--quiet``) and progress bars on a terminal.
TensorFlow's C++ start-up lines and Python warnings are hidden unless ``tfmf --verbose`` (or a
``TF_CPP_MIN_LOG_LEVEL`` set in the environment, which is always respected).
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import traceback

import tfmf  # noqa: F401  (selects Keras 2 before anything imports TensorFlow)
from tfmf import progress
from tfmf.errors import TfmfError

PROG = "tfmf"
_RUN_DIR_HELP = "a finished run directory (written by tfmf train)"


class CliError(TfmfError):
    """A user mistake detected by the CLI itself (unknown id, unusable argument)."""


# --------------------------------------------------------------------------- helpers
def _print_json(obj) -> None:
    from tfmf.fileio import json_default as _json_default

    print(json.dumps(obj, indent=2, default=_json_default))


def _print_metrics(metrics: dict) -> None:
    for k, v in metrics.items():
        print(f"{k:>14s}  {v:.4f}" if isinstance(v, float) else f"{k:>14s}  {v}")


def _warn(msg: str) -> None:
    print(f"{PROG}: warning: {msg}", file=sys.stderr)


def _load_config(args, path: str | None):
    from tfmf.config import load_config

    overrides = list(args.set or [])
    if getattr(args, "quiet", False):
        overrides.append("train.verbose=0")
    return load_config(path, overrides)


def _load_data(cfg):
    """The config's dataset, loaded under the "load" stage line (the runner then skips it)."""
    from tfmf import runner

    with progress.stage("load"):
        return runner.load_data(cfg)


class _EvalProgress:
    """A tqdm counter of rows scored while a model is evaluated.

    Wraps the model instance's ``score``/``predict`` (the evaluation loops call them once per
    batch), so evaluation code needs no progress hooks of its own.
    """

    def __init__(self, model, enabled: bool = True):
        self.model, self.enabled = model, enabled and sys.stderr.isatty()

    def __enter__(self):
        if not self.enabled:
            return self
        from tqdm.auto import tqdm

        self.bar = tqdm(desc="evaluating", unit=" rows", leave=False, dynamic_ncols=True)
        for name in ("score", "predict"):
            original = getattr(self.model, name)

            def wrapped(*a, _f=original, **kw):
                out = _f(*a, **kw)
                self.bar.update(len(out))
                return out

            setattr(self.model, name, wrapped)
        return self

    def __exit__(self, *exc):
        if self.enabled:
            for name in ("score", "predict"):
                self.model.__dict__.pop(name, None)
            self.bar.close()
        return False


def _to_index(values: list[str], known, kind: str):
    """CLI strings -> the run's indices; ids keep the dataset's type (ints stay ints).

    Raises:
      CliError: an id the run does not know (named).
    """
    import numpy as np

    from tfmf.data.interactions import _lookup

    raw = np.array(values)
    if known.dtype.kind in "iu":
        try:
            raw = np.array([int(v) for v in values], dtype=np.int64)
        except ValueError:
            bad = next(v for v in values if not v.strip().lstrip("+-").isdigit())
            raise CliError(f"unknown {kind} id {bad!r}: this dataset's {kind} ids are "
                           "integers") from None
    try:
        return _lookup(known, raw, kind)
    except KeyError as exc:
        raise CliError(f"{exc.args[0]} (the run knows {len(known)} {kind}s)") from None


# --------------------------------------------------------------------------- commands
def cmd_data_inspect(args) -> int:
    from tfmf.config import load_data_config
    from tfmf.data.loading import inspect

    # A DataConfig validated like a run config's data section (so --set data.* works).
    data_cfg = load_data_config(args.source, args.set)
    info = inspect(data_cfg)
    if args.json:
        _print_json(info)
    else:
        for k, v in info.items():
            print(f"{k:>16s}  {v:.6g}" if isinstance(v, float) else f"{k:>16s}  {v}")
    return 0


def cmd_train_dry_run(args) -> int:
    """``tfmf train --dry-run``: memory estimates per stage (tfmf.memory), no training; exits
    2 with the preflight message when a stage does not fit."""
    from tfmf import dryrun, memory, runner
    from tfmf.errors import MemoryBudgetError
    from tfmf.tables import format_table

    path = args.config or (os.path.join(args.resume, "config.yaml") if args.resume else None)
    if path is None:
        raise CliError("train --dry-run needs --config FILE (or --resume RUN_DIR)")
    cfg = _load_config(args, path)
    counts, how = dryrun.synthetic_counts(cfg.data), "from the config"
    if counts is None:
        guess = dryrun.estimate_file_ratings(cfg.data.source)
        if guess is not None:  # a big file: check that reading it fits before reading it
            memory.preflight(memory.data_bytes(guess), f"reading ~{guess:,} ratings from "
                             f"{cfg.data.source}", "data.source")
        data = runner.load_data(cfg)
        counts, how = (data.n_users, data.n_items, data.nnz), "loaded"
    n_users, n_items, nnz = counts
    rows, misfit = dryrun.dry_run_table(cfg, n_users, n_items, nnz)
    print(f"dry run: {cfg.model_name} on {cfg.data.source}: {n_users:,} users, {n_items:,} "
          f"items, {nnz:,} interactions ({how})")
    print(f"available: {memory.available_bytes() / memory.GB:.1f} GB minus a "
          f"{memory.DEFAULT_MARGIN / memory.GB:.1f} GB margin")
    print(format_table(rows, float_format=".3g"))
    if misfit is not None:
        raise MemoryBudgetError(misfit)
    print("dry run: every stage fits; nothing was trained")
    return 0


def cmd_data_convert(args) -> int:
    import time

    from tfmf.data.loading import load_dataset
    from tfmf.data.shards import write_shards

    from tfmf.config import load_data_config

    cfg = load_data_config(args.source, args.set)
    t0 = time.perf_counter()
    data = load_dataset(cfg)
    t1 = time.perf_counter()
    manifest = write_shards(data, args.out, args.shards, source=args.source)
    t2 = time.perf_counter()
    print(f"read {data.nnz:,} ratings ({data.n_users:,} users x {data.n_items:,} items) in "
          f"{t1 - t0:.1f} s; wrote {len(manifest['shards'])} shard(s) to {args.out} in "
          f"{t2 - t1:.1f} s")
    return 0


def cmd_train(args) -> int:
    from tfmf import runner

    if getattr(args, "dry_run", False):
        return cmd_train_dry_run(args)
    if args.resume:
        if args.cv:
            raise CliError("--resume continues one training run; it cannot be combined with --cv")
        if args.run_dir and os.path.abspath(args.run_dir) != os.path.abspath(args.resume):
            raise CliError("--resume RUN_DIR trains in RUN_DIR; drop --run-dir")
        if not os.path.isdir(args.resume):
            raise FileNotFoundError(errno.ENOENT, "run directory not found", args.resume)
        snapshot = os.path.join(args.resume, "config.yaml")
        if not args.config and not os.path.exists(snapshot):
            raise FileNotFoundError(errno.ENOENT, "nothing to resume: no config snapshot", snapshot)
        if not os.path.isdir(os.path.join(args.resume, "checkpoints")):
            raise CliError(f"nothing to resume: {args.resume} has no checkpoints/ (models fitted "
                           "in closed form -- bias_baseline, popularity, ease, als, ials -- do "
                           "not checkpoint; train them again instead)")
        cfg = _load_config(args, args.config or snapshot)
        res = runner.train(cfg, args.resume, resume=True, data=_load_data(cfg))
    elif args.config is None:
        raise CliError("train needs --config FILE (or --resume RUN_DIR)")
    else:
        cfg = _load_config(args, args.config)
        run_dir = args.run_dir or runner.new_run_dir(cfg)
        if args.cv:
            result = runner.cross_validate(cfg, run_dir, verbose=not args.quiet,
                                           data=_load_data(cfg))
            print(result.table())
            print(f"run directory: {run_dir}")
            return 0
        res = runner.train(cfg, run_dir, data=_load_data(cfg))
    _print_metrics(res.metrics)
    print(f"run directory: {res.run_dir}")
    return 0


def cmd_evaluate(args) -> int:
    from tfmf import runner

    with progress.stage("load"):
        run = runner.load_run(args.run_dir, args.set)
    with progress.stage("evaluate"), _EvalProgress(run.model, enabled=not args.quiet):
        metrics = runner.evaluate_run(run)
    if args.json:
        _print_json(metrics)
    else:
        _print_metrics(metrics)
    return 0


def cmd_tune_quick(args) -> int:
    """``tfmf tune --quick``: a budgeted search per model on validation users/ratings of the
    config's data, then the chosen config trained and scored on the test part once."""
    import time

    from tfmf.errors import ConfigError
    from tfmf.runner import new_run_dir, train
    from tfmf.tuning import quick

    start = time.monotonic()
    budget = quick.parse_budget(args.budget if args.budget is not None else quick.DEFAULT_BUDGET)
    max_trials = quick.DEFAULT_MAX_TRIALS if args.max_trials is None else args.max_trials
    models = [m.strip() for spec in (args.model or []) for m in spec.split(",") if m.strip()]
    if args.model is not None and not models:
        raise ConfigError("needs at least one model name", key="--model")
    cfg = _load_config(args, args.config)
    out_dir = args.run_dir
    if out_dir is None:
        default = new_run_dir(cfg)
        out_dir = os.path.join(os.path.dirname(default), "quick-" + os.path.basename(default))
    # Every flag and key is checked before the data loads: a mistake costs nothing.
    quick.check_request(cfg, out_dir, models or None, max_trials)
    if args.objective:
        quick.objective_for(cfg, None, args.objective)
    results = quick.run_quick(cfg, out_dir, models=models or None, budget_seconds=budget,
                              max_trials=max_trials, objective=args.objective,
                              data=_load_data(cfg), train=train, progress=not args.quiet,
                              start=start)
    with open(os.path.join(out_dir, "table.txt")) as fh:
        print(fh.read().rstrip())
    for r in results:
        for note in r.notes:
            _warn(note)
    print(f"tuning directory: {out_dir} ({time.monotonic() - start:.0f} s of a "
          f"{budget:.0f} s budget); reuse a chosen config with tfmf train --config "
          f"{os.path.join(out_dir, results[0].model, 'config.yaml')}")
    return 0


def cmd_tune(args) -> int:
    if args.quick:
        return cmd_tune_quick(args)
    quick_only = [flag for flag, v in (("--budget", args.budget), ("--max-trials", args.max_trials),
                                       ("--model", args.model), ("--objective", args.objective))
                  if v is not None]
    if quick_only:
        raise CliError(f"{', '.join(quick_only)} apply to tune --quick only (the full search "
                       "reads the config's tune section: tune.max_trials, tune.objective)")
    try:
        from tfmf.tuning import run_tuning
    except ImportError as exc:
        raise CliError(f"hyperparameter tuning is not available in this installation "
                       f"(tfmf.tuning.run_tuning: {exc})") from None
    from tfmf.runner import new_run_dir

    cfg = _load_config(args, args.config)
    out_dir = args.run_dir
    if out_dir is None:
        default = new_run_dir(cfg)
        out_dir = os.path.join(os.path.dirname(default), "tune-" + os.path.basename(default))
    result = run_tuning(cfg, out_dir, progress=not args.quiet)
    if getattr(result, "best_score", None) is not None:
        print(f"best {result.objective}: {result.best_score:.4f} with {result.best_values}")
        print(f"best config: {os.path.join(out_dir, 'best_config.yaml')}")
    print(f"tuning directory: {out_dir}")
    return 0


def cmd_recommend(args) -> int:
    import numpy as np
    import scipy.sparse as sp

    from tfmf import runner

    run = runner.load_run(args.run_dir)
    model, ids = run.model, run.ids
    if args.k < 1:
        raise CliError(f"--k must be >= 1, got {args.k}")
    k = args.k
    if k > model.n_items:
        _warn(f"--k {k} exceeds the catalogue ({model.n_items} items); returning {model.n_items}")
        k = model.n_items
    if args.items:
        cols = np.unique(_to_index(args.items, ids["item_ids"], "item"))
        rows = sp.csr_matrix((np.ones(len(cols), np.float32), (np.zeros(len(cols), int), cols)),
                             shape=(1, model.n_items))
        try:
            idx, scores = model.recommend(user_items=rows, k=k)
        except NotImplementedError as exc:
            raise CliError(f"model {model.name!r} cannot fold in a new user: {exc}") from None
        who = {"items": list(args.items)}
    else:
        users = _to_index([args.user], ids["user_ids"], "user")
        idx, scores = model.recommend(users, k=k)
        who = {"user": args.user}
    titles = ids.get("item_titles")
    recs = []
    # Seen items score -inf: they fill a K beyond the unseen items and are no
    # recommendations (and -Infinity is not valid JSON).
    finite = np.isfinite(scores[0])
    for rank, (i, s) in enumerate(zip(idx[0][finite], scores[0][finite]), start=1):
        rec = {"rank": rank, "item": ids["item_ids"][i].item(), "score": float(s)}
        if titles is not None:
            rec["title"] = str(titles[i])
        recs.append(rec)
    if args.json:
        _print_json({**who, "k": k, "recommendations": recs})
    else:
        for r in recs:
            title = f"  {r['title']}" if "title" in r else ""
            print(f"{r['rank']:>4d}  {r['item']!s:>10}  {r['score']:9.4f}{title}")
    return 0


def cmd_export(args) -> int:
    from tfmf.export import export_run

    if args.k < 1:
        raise CliError(f"--k must be >= 1, got {args.k}")
    with progress.stage("export"):
        info = export_run(args.run_dir, args.out, k=args.k)
    if info["k"] < args.k:
        _warn(f"--k {args.k} exceeds the catalogue; the export returns {info['k']} items")
    print(f"exported SavedModel to {info['path']} (signatures: {', '.join(info['signatures'])}; "
          f"k={info['k']})")
    return 0


def cmd_benchmark(args) -> int:
    try:
        bench = _import_benchmark()
    except ImportError as exc:
        raise CliError("benchmarks need the repository's pipelines/ package "
                       f"(run from a source checkout): {exc}") from None
    rc = bench.main([args.suite, *args.args])
    return int(rc or 0)


def _import_benchmark():
    """``pipelines.benchmark`` from the path, or from the source checkout tfmf lives in."""
    import importlib

    try:
        return importlib.import_module("pipelines.benchmark")
    except ModuleNotFoundError as exc:
        if exc.name not in ("pipelines", "pipelines.benchmark"):
            raise
    root = os.path.dirname(os.path.dirname(os.path.abspath(tfmf.__file__)))
    if not os.path.isfile(os.path.join(root, "pipelines", "benchmark.py")):
        raise ImportError(f"no pipelines/benchmark.py beside {root}")
    sys.path.insert(0, root)
    return importlib.import_module("pipelines.benchmark")


# --------------------------------------------------------------------------- parser
def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable), e.g. --set train.epochs=5 "
                        "--set model.embedding_dim=32; values are YAML (lists: [10,20])")


def _add_run_args(p: argparse.ArgumentParser, config_required: bool, run_dir_help: str,
                  quiet_help: str = "no progress output (train.verbose=0)") -> None:
    """--config, --set, --run-dir and --quiet, shared by train, cv and tune."""
    p.add_argument("--config", metavar="FILE", required=config_required,
                   help="YAML run config (see configs/)")
    _add_set(p)
    p.add_argument("--run-dir", metavar="DIR", help=run_dir_help)
    p.add_argument("--quiet", action="store_true", help=quiet_help)


class _Formatter(argparse.HelpFormatter):
    """Wraps descriptions to the terminal; keeps the line breaks of the examples epilogs."""

    def _fill_text(self, text, width, indent):
        if text.startswith("example"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=_Formatter,
        description="Matrix factorization and Mult-VAE recommenders on TensorFlow/Keras 2.",
        epilog="examples:\n"
               "  tfmf data inspect ml-100k\n"
               "  tfmf train --config configs/sample_biased_mf.yaml --set train.epochs=5\n"
               "  tfmf cv --config configs/ml100k_biased_mf.yaml\n"
               "  tfmf recommend runs/biased_mf-sample-20250101-120000 --user 42 --k 10\n"
               "  tfmf export runs/biased_mf-sample-20250101-120000 --out exported/mf\n"
               "  tfmf demo   # every model on the embedded sample, one table\n"
               "run `tfmf COMMAND --help` for each command's options.\n"
               "exit codes: 0 ok, 2 user error (message names the file/line/key), 1 bug.")
    p.add_argument("--version", action="version", version=f"%(prog)s {tfmf.__version__}")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show TensorFlow's own logging (C++ start-up lines, Python warnings), "
                        "hidden by default; a TF_CPP_MIN_LOG_LEVEL set in the environment wins")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    # data
    data = sub.add_parser("data", help="inspect and convert datasets", formatter_class=_Formatter,
                          description="Dataset utilities.")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True
    di = dsub.add_parser(
        "inspect", help="counts, density and rating scale of a dataset", formatter_class=_Formatter,
        description="Loads a dataset (a name such as sample / ml-100k / synthetic-explicit, or a "
                    "CSV/TSV/Parquet path) and prints ratings, users, items, density and the "
                    "rating scale.",
        epilog="examples:\n  tfmf data inspect sample\n  tfmf data inspect ratings.csv --json")
    di.add_argument("source", metavar="PATH_OR_NAME")
    di.add_argument("--json", action="store_true", help="print JSON")
    _add_set(di)
    di.set_defaults(func=cmd_data_inspect)
    dc = dsub.add_parser(
        "convert", help="write a dataset as Parquet shards with id maps and a manifest",
        formatter_class=_Formatter,
        description="Loads a dataset (as `data inspect` does, with --set data.* options such as "
                    "binarize_threshold or min_user_interactions applied) and writes DIR/"
                    "part-*.parquet (users in contiguous blocks of about equal row counts), "
                    "user_ids.parquet, item_ids.parquet and manifest.json (counts, schema, "
                    "files with row counts and sha256). Use DIR as data.source: under "
                    "horovodrun each rank reads only its own shards.",
        epilog="examples:\n  tfmf data convert ratings.csv --out ratings-shards\n"
               "  tfmf data convert ml-20m --out ml20m --shards 24")
    dc.add_argument("source", metavar="PATH_OR_NAME")
    dc.add_argument("--out", required=True, metavar="DIR", help="directory to create")
    dc.add_argument("--shards", type=int, default=12, metavar="N",
                    help="number of shard files (default 12: even over 1, 2, 3, 4, 6, 12 ranks)")
    _add_set(dc)
    dc.set_defaults(func=cmd_data_convert)

    # train
    tr = sub.add_parser(
        "train", help="train a model from a YAML config", formatter_class=_Formatter,
        description="Trains the configured model on the first split's training part, evaluates "
                    "it on the test part and writes a run directory: config.yaml, history.csv, "
                    "tensorboard/, checkpoints/, model/, ids.npz, learning_curve.png and "
                    "metrics.json (written last; its presence marks a complete run).",
        epilog="examples:\n"
               "  tfmf train --config configs/sample_biased_mf.yaml\n"
               "  tfmf train --config configs/ml100k_biased_mf.yaml --cv   # every fold\n"
               "  tfmf train --resume runs/my-run --set train.epochs=40   # continue training\n"
               "  tensorboard --logdir runs/")
    _add_run_args(tr, False, "where to write (default: OUTPUT_DIR/RUN_NAME or a timestamped name)")
    tr.add_argument("--resume", metavar="RUN_DIR",
                    help="continue RUN_DIR from its last checkpoint (optimizer state and epoch); "
                         "uses RUN_DIR/config.yaml unless --config is given")
    tr.add_argument("--cv", action="store_true",
                    help="cross-validate over every fold of the split (one sub-run per fold)")
    tr.add_argument("--dry-run", action="store_true",
                    help="print the memory each stage needs (and the data's counts) without "
                         "training; exit 2 if a stage does not fit")
    tr.set_defaults(func=cmd_train)

    # cv (= train --cv)
    cv = sub.add_parser(
        "cv", help="cross-validate a config over every fold (= train --cv)",
        formatter_class=_Formatter,
        description="Fits a fresh model on every fold of the config's split (official ML-100K "
                    "folds, k-fold, user folds...) and prints per-fold metrics with their mean, "
                    "min, max and std; metrics.json in the run directory holds them all.",
        epilog="example:\n  tfmf cv --config configs/ml100k_biased_mf.yaml --run-dir runs/mf-cv")
    _add_run_args(cv, True, "where to write (one fold_<k>/ per fold)")
    cv.set_defaults(func=cmd_train, cv=True, resume=None)

    # evaluate
    ev = sub.add_parser(
        "evaluate", help="re-evaluate a saved run", formatter_class=_Formatter,
        description="Loads RUN_DIR's model and config and evaluates it on the test part of the "
                    "config's split (--set changes e.g. eval.metrics or eval.ks, not the split).",
        epilog="example:\n  tfmf evaluate runs/my-run --set 'eval.metrics=[rmse,ndcg]' --json")
    ev.add_argument("run_dir", metavar="RUN_DIR", help=_RUN_DIR_HELP)
    _add_set(ev)
    ev.add_argument("--json", action="store_true", help="print JSON")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=cmd_evaluate)

    # tune
    tu = sub.add_parser(
        "tune", help="hyperparameter search (KerasTuner)", formatter_class=_Formatter,
        description="Runs the search described by the config's tune section over the model's "
                    "hyperparameters, scoring each trial by inner cross-validation. With "
                    "--quick: a search within a wall-clock budget over each model's key "
                    "hyperparameters (tfmf/tuning/quick_spaces.py), every trial scored on "
                    "validation users (user splits) or validation ratings (rating splits) "
                    "carved from the training part; the chosen config is then trained as "
                    "`tfmf train` would and scored on the test part once. Writes "
                    "RUN_DIR/<model>/config.yaml (the chosen config), the final run beside it, "
                    "the search in RUN_DIR/<model>/search/ and RUN_DIR/table.txt.",
        epilog="examples:\n  tfmf tune --config configs/ml100k_biased_mf.yaml "
               "--set tune.max_trials=20\n"
               "  tfmf tune --quick --config my_data_ials.yaml --budget 8m\n"
               "  tfmf tune --quick --config my_data_ials.yaml --model ials,ease --budget 10m")
    _add_run_args(tu, True, "tuning directory (KerasTuner projects, trials.csv, "
                  "best_config.yaml); an existing search there is resumed (default: "
                  "OUTPUT_DIR/tune-... or OUTPUT_DIR/quick-...)",
                  "no per-trial/per-epoch output (train.verbose=0)")
    tu.add_argument("--quick", action="store_true",
                    help="budgeted search of each model's key hyperparameters on validation "
                         "users/ratings, then the chosen config trained and tested once")
    tu.add_argument("--budget", metavar="DURATION",
                    help="--quick: wall clock for the whole command, shared by the models "
                         "(seconds, or 90s, 8m, 1h; default 8m)")
    tu.add_argument("--max-trials", type=int, metavar="N",
                    help="--quick: trial cap per model (default 12)")
    tu.add_argument("--model", action="append", metavar="NAME[,NAME]",
                    help="--quick: models to tune on the config's data (repeatable; default "
                         "the config's model; another model starts from its Config defaults)")
    tu.add_argument("--objective", metavar="METRIC",
                    help="--quick: validation metric (default ndcg@100, rmse for rating "
                         "models on rating splits)")
    tu.set_defaults(func=cmd_tune)

    # recommend
    rc = sub.add_parser(
        "recommend", help="top-K items for a user (or for a list of items)",
        formatter_class=_Formatter,
        description="Top-K unseen items for a known user of RUN_DIR, or, with --items, for a new "
                    "user who interacted with the given items (fold-in). Ids are the dataset's "
                    "raw ids; titles are shown when the dataset has them. A K larger than the "
                    "catalogue is capped at the number of items (with a warning).",
        epilog="examples:\n  tfmf recommend runs/my-run --user 196 --k 5\n"
               "  tfmf recommend runs/my-run --items 50 181 --json")
    rc.add_argument("run_dir", metavar="RUN_DIR", help=_RUN_DIR_HELP)
    who = rc.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", metavar="RAW_ID", help="raw id of a known user")
    who.add_argument("--items", nargs="+", metavar="RAW_ID",
                     help="raw ids of items a new user interacted with (fold-in)")
    rc.add_argument("--k", type=int, default=10, help="how many items (default 10)")
    rc.add_argument("--json", action="store_true", help="print JSON")
    rc.set_defaults(func=cmd_recommend)

    # export
    ex = sub.add_parser(
        "export", help="write a SavedModel with score/recommend signatures",
        formatter_class=_Formatter,
        description="Exports RUN_DIR's model as a TensorFlow SavedModel that maps raw ids itself "
                    "and loads with plain tf.saved_model.load. Signatures: score(users, items), "
                    "recommend(users) -> top-K unseen items, and for Mult-VAE/DAE and EASE "
                    "recommend_from_items(items). The directory appears only when complete.",
        epilog="example:\n  tfmf export runs/my-run --out exported/my-model --k 50\n"
               "  python -c \"import tensorflow as tf; "
               "m = tf.saved_model.load('exported/my-model');"
               " print(m.signatures['recommend'](users=tf.constant([196], tf.int64)))\"")
    ex.add_argument("run_dir", metavar="RUN_DIR", help=_RUN_DIR_HELP)
    ex.add_argument("--out", metavar="DIR", required=True, help="SavedModel directory")
    ex.add_argument("--k", type=int, default=100,
                    help="top-K of recommend (default 100; capped at the number of items)")
    ex.set_defaults(func=cmd_export)

    # benchmark
    bm = sub.add_parser(
        "benchmark", help="run a benchmark suite (pipelines/benchmark.py)",
        formatter_class=_Formatter,
        description="Delegates to pipelines/benchmark.py of the source checkout (suites: "
                    "explicit-ml100k, implicit-ml100k, throughput, pipeline, precision, "
                    "horovod, all); arguments after SUITE are passed through.",
        epilog="examples:\n  tfmf benchmark explicit-ml100k --scale tiny\n"
               "  tfmf benchmark all -- --help")
    bm.add_argument("suite", metavar="SUITE")
    bm.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the suite")
    bm.set_defaults(func=cmd_benchmark)

    # demo
    from tfmf import demo

    de = sub.add_parser(
        "demo", help="train every sample config and print one comparison table",
        formatter_class=_Formatter,
        description="Trains each configs/sample_*.yaml model on the embedded sample (seconds to "
                    "a minute each) and prints RMSE next to the bias baseline and NDCG@100 next "
                    "to popularity. Works from a source checkout and from an installed wheel.",
        epilog="examples:\n  tfmf demo\n  tfmf demo --output-dir /tmp/demo")
    demo.add_arguments(de)
    de.set_defaults(func=demo.run)
    return p


# --------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> int:
    """Runs the CLI; returns the exit code (the console script passes it to sys.exit)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Before any subcommand imports TensorFlow: its C++ logging level is read once, at load.
    tfmf.configure_tf_logging(verbose=args.verbose)
    was = progress.configure(not getattr(args, "quiet", False))
    try:
        return args.func(args)
    except TfmfError as exc:
        return _fail(exc)
    except OSError as exc:
        # Missing run directory / unreadable or unwritable path: name the file.
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(f"{exc.strerror or exc}{where}")
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001  (a bug: show everything)
        traceback.print_exc()
        print(f"{PROG}: unexpected error (a bug; please report it with the traceback above)",
              file=sys.stderr)
        return 1
    finally:
        progress.configure(was)  # in-process callers (tests, notebooks) get their default back


def _fail(message) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
