"""`make demo`: train every model that has a sample config on the embedded sample data and
print one metrics table.

Each configs/sample_*.yaml is a complete run (holdout split of the sample dataset); runs go
to runs/demo/<config name>.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import time

import tfmf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from tfmf.config import load_config
from tfmf.errors import TfmfError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--configs", nargs="*", help="config files (default: configs/sample_*.yaml)")
    p.add_argument("--output-dir", default=os.path.join(ROOT, "runs", "demo"))
    args = p.parse_args(argv)
    from tfmf import runner

    paths = args.configs or sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "sample_*.yaml"))
                                   if not p.endswith("_tune.yaml"))  # tuning configs: tfmf tune
    if not paths:
        print("no configs/sample_*.yaml found", file=sys.stderr)
        return 2
    rows = []
    for path in paths:
        name = os.path.splitext(os.path.basename(path))[0]
        cfg = load_config(path, overrides=["train.verbose=0"])
        run_dir = os.path.join(args.output_dir, name)
        shutil.rmtree(run_dir, ignore_errors=True)  # the demo always starts fresh
        t0 = time.perf_counter()
        try:
            res = runner.train(cfg, run_dir)
        except TfmfError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            return 2
        rows.append((cfg.model_name, res.metrics, time.perf_counter() - t0))
        print(f"trained {cfg.model_name} ({name}) in {rows[-1][2]:.1f}s -> {run_dir}", flush=True)
    print()
    print(format_table(rows))
    return 0


def format_table(rows) -> str:
    """One table per group of models sharing a metric set (rating vs ranking models)."""
    from tfmf.tables import format_table as table

    groups: dict[tuple, list] = {}
    for row in rows:
        groups.setdefault(tuple(row[1]), []).append(row)
    return "\n\n".join(
        table([{"model": name, **m, "seconds": s} for name, m, s in group], float_format=".4f",
              columns=["model", *metrics, "seconds"], formats={"seconds": ".1f"})
        for metrics, group in groups.items())


if __name__ == "__main__":
    sys.exit(main())
