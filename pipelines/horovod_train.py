"""Training entry point run by horovodrun: one process per rank, the same code as `tfmf train`.

    horovodrun --gloo -np 2 -H localhost:2 python -m pipelines.horovod_train \
        --config configs/sample_biased_mf.yaml --set train.epochs=5 --run-dir runs/mf-hvd

Every rank loads the config and the data -- only its own shards when the source was written by
`tfmf data convert` (tfmf.runner.reads_per_rank) -- trains on its part (tfmf.data.pipelines
shards by rank/size) with gradients averaged by Horovod (tfmf.distributed; ALS/iALS: row blocks,
tfmf.models.als_distributed); rank 0 alone writes the run
directory (config snapshot, checkpoints, history, model, metrics.json) and prints. Without
horovodrun it simply trains in one process.
"""
from __future__ import annotations

import argparse
import json
import sys

import tfmf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from tfmf import distributed
from tfmf.errors import TfmfError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="run config YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. train.epochs=5 (repeatable)")
    p.add_argument("--run-dir", default=None,
                   help="run directory (default: output_dir/run_name or a timestamped name)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    args = p.parse_args(argv)
    # Initialise first: GPU pinning must happen before TensorFlow touches the devices.
    distributed.init()
    from tfmf import runner
    from tfmf.config import load_config

    try:
        cfg = load_config(args.config, overrides=args.overrides)
        # The default name has a timestamp: take rank 0's so all ranks share one directory.
        run_dir = distributed.broadcast_object(args.run_dir or runner.new_run_dir(cfg),
                                               "tfmf_run_dir")
        result = runner.train(cfg, run_dir, resume=args.resume)
    except TfmfError as exc:
        print(f"error (rank {distributed.rank()}): {exc}", file=sys.stderr)
        return 2
    if distributed.is_chief():
        print(json.dumps({"run_dir": result.run_dir, "world_size": distributed.size(),
                          "metrics": result.metrics}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
