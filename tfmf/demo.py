"""`make demo` / `tfmf demo`: train every model that has a sample config on the embedded sample
data and print one metrics table.

Each configs/sample_*.yaml is a complete run (holdout split of the sample dataset); runs go
to runs/demo/<config name>. The configs come from the source checkout's configs/ or, in an
installed wheel, from ``<prefix>/share/tfmf/configs`` (setup.cfg's data_files). Each table compares the models with its group's baseline: RMSE
relative to the bias baseline (below 1 is better) and NDCG@100 relative to popularity (above 1
is better).

Measured (`python -m pipelines.demo`, 2 vCPUs; seconds vary with load)::

    model            rmse     mae  vs bias_baseline
    als            0.7183  0.5748             0.791
    bayesian_mf    0.7185  0.5732             0.791
    bias_baseline  0.9086  0.7505             1.000
    biased_mf      0.7448  0.5954             0.820
    mf             0.7631  0.6195             0.840

    model       ndcg@20  recall@20  ndcg@100  recall@100  vs popularity
    ease         0.4010     0.4697    0.5146      0.8154          1.449
    ials         0.3843     0.4700    0.5098      0.8530          1.435
    mult_dae     0.3975     0.4679    0.5197      0.8482          1.463
    mult_vae     0.4086     0.4774    0.5295      0.8550          1.491
    popularity   0.2460     0.2910    0.3552      0.6296          1.000
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import sysconfig
import time

import tfmf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from tfmf.config import load_config
from tfmf.errors import TfmfError

#: The source checkout tfmf/ lives in (holds configs/ and pipelines/ when run from a clone).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_dir() -> str | None:
    """configs/ of the source checkout, else the installed ``<prefix>/share/tfmf/configs``."""
    for d in (os.path.join(ROOT, "configs"),
              os.path.join(sysconfig.get_path("data"), "share", "tfmf", "configs")):
        if glob.glob(os.path.join(d, "sample_*.yaml")):
            return d
    return None


def default_output_dir() -> str:
    """runs/demo in the source checkout; ./runs/demo for an installed package."""
    base = ROOT if os.path.isdir(os.path.join(ROOT, "configs")) else os.getcwd()
    return os.path.join(base, "runs", "demo")


def sample_configs() -> list[str]:
    """configs/sample_*.yaml except the tuning configs (those run with `tfmf tune`)."""
    d = config_dir()
    if d is None:
        return []
    return sorted(p for p in glob.glob(os.path.join(d, "sample_*.yaml"))
                  if not p.endswith("_tune.yaml"))


def run_configs(paths: list[str], output_dir: str) -> list[tuple[str, dict, float]]:
    """Trains each config into ``output_dir/<config name>`` (fresh) and collects its metrics.

    Returns:
      (model name, test metrics, seconds) per config, in order.

    Raises:
      TfmfError: a config or run failed (printed with the config's name first).
    """
    from tfmf import runner

    rows = []
    for path in paths:
        name = os.path.splitext(os.path.basename(path))[0]
        cfg = load_config(path, overrides=["train.verbose=0"])
        run_dir = os.path.join(output_dir, name)
        shutil.rmtree(run_dir, ignore_errors=True)  # the demo always starts fresh
        t0 = time.perf_counter()
        try:
            res = runner.train(cfg, run_dir)
        except TfmfError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            raise
        rows.append((cfg.model_name, res.metrics, time.perf_counter() - t0))
        print(f"trained {cfg.model_name} ({name}) in {rows[-1][2]:.1f}s -> {run_dir}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tfmf demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)
    return run(args)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The demo's options (shared by ``python -m pipelines.demo`` and ``tfmf demo``)."""
    p.add_argument("--configs", nargs="*", help="config files (default: configs/sample_*.yaml)")
    p.add_argument("--output-dir", default=None,
                   help="where the runs go (default: runs/demo in the checkout, else ./runs/demo)")


def run(args) -> int:
    """Trains the configs named by ``args`` and prints the table; returns the exit code."""
    args.output_dir = args.output_dir or default_output_dir()
    paths = args.configs or sample_configs()
    if not paths:
        print("no configs/sample_*.yaml found (neither in a source checkout nor in "
              f"{os.path.join(sysconfig.get_path('data'), 'share', 'tfmf', 'configs')})",
              file=sys.stderr)
        return 2
    try:
        rows = run_configs(paths, args.output_dir)
    except TfmfError:
        return 2  # run_configs printed which config failed and why
    print()
    print(format_table(rows))
    return 0


#: Per metric group: (baseline model, metric compared). A group without its baseline in the run
#: gets no comparison column.
BASELINES = {"rmse": ("bias_baseline", "rmse"), "ndcg@100": ("popularity", "ndcg@100")}


def relative_to_baseline(rows) -> dict[str, float]:
    """model -> its metric divided by its group's baseline's (see :data:`BASELINES`).

    Args:
      rows: (model name, metrics dict, seconds) tuples as :func:`main` collects them.

    Returns:
      One ratio per model whose group's baseline was trained in the same run.
    """
    ratios = {}
    for metric, (base, key) in BASELINES.items():
        group = {name: m for name, m, _ in rows if metric in m}
        if base in group and group[base].get(key):
            ratios.update({name: m[key] / group[base][key] for name, m in group.items()})
    return ratios


def format_table(rows) -> str:
    """One table per group of models sharing a metric set (rating vs ranking models)."""
    from tfmf.tables import format_table as table

    ratios = relative_to_baseline(rows)
    groups: dict[tuple, list] = {}
    for row in rows:
        groups.setdefault(tuple(row[1]), []).append(row)
    out = []
    for metrics, group in groups.items():
        extra = [f"vs {base}" for metric, (base, _) in BASELINES.items()
                 if metric in metrics and any(name == base for name, _, _ in group)]
        out.append(table(
            [{"model": name, **m, **({extra[0]: ratios[name]} if extra else {}), "seconds": s}
             for name, m, s in group],
            float_format=".4f", columns=["model", *metrics, *extra, "seconds"],
            formats={"seconds": ".1f", **{e: ".3f" for e in extra}}))
    return "\n\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
