"""``python -m tfmf.tuning --config F --out DIR [--set k=v ...]``: one search process.

Used by ``pipelines/distributed_tune.sh`` for the chief and every worker (the role comes from
KerasTuner's KERASTUNER_TUNER_ID / KERASTUNER_ORACLE_IP / KERASTUNER_ORACLE_PORT), and usable
locally without the ``tfmf`` console script.
"""
from __future__ import annotations

import argparse
import sys

from tfmf.errors import TfmfError


def main(argv: list[str] | None = None) -> int:
    """Parses arguments, runs the search, returns the exit code (2 on user errors)."""
    p = argparse.ArgumentParser(prog="python -m tfmf.tuning", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="run config YAML with a tune section")
    p.add_argument("--out", required=True, help="tuning directory (resumed if it exists)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no per-trial progress lines")
    args = p.parse_args(argv)
    from tfmf.config import load_config
    from tfmf.tuning import run_tuning

    try:
        cfg = load_config(args.config, args.overrides)
        run_tuning(cfg, args.out, progress=not args.quiet)
    except TfmfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
