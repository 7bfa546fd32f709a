"""Regenerates the embedded sample dataset (tfmf/data/sample/) byte-identically.

Usage: python -m pipelines.make_sample [--out DIR]
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import tfmf  # noqa: F401  (sets the Keras 2 environment before anything imports TF)
from tfmf.data.sample import write_sample

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tfmf" / "data" / "sample"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = parser.parse_args(argv)
    for path in write_sample(args.out):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        print(f"{path}  {path.stat().st_size} bytes  sha256:{digest}")


if __name__ == "__main__":
    main()
