"""Peak RSS of one user_rows epoch over ML-20M-shaped implicit data vs its dense size.

Usage: python -m pipelines.measure_pipeline_memory [--users 136677 --items 20108
       --nnz 10000000 --batch 500]
"""
from __future__ import annotations

import argparse
import resource
import time

import tfmf  # noqa: F401  (Keras 2 before TensorFlow)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--users", type=int, default=136_677)
    p.add_argument("--items", type=int, default=20_108)
    p.add_argument("--nnz", type=int, default=10_000_000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import tensorflow as tf

    from tfmf.data.pipelines import user_rows
    from tfmf.data.synthetic import implicit_power_law

    tf.constant(0)  # initialise the runtime so its memory is in the baseline
    print(f"after TF import:          peak RSS {_peak_mb():8.0f} MB")
    t = time.time()
    data = implicit_power_law(args.users, args.items, args.nnz, 1.0, 1.0, args.seed)
    csr = data.to_csr()
    del data
    print(f"generated {csr.nnz:,} nnz in {time.time() - t:.1f} s; peak RSS {_peak_mb():8.0f} MB")
    t = time.time()
    steps = nnz = 0
    for batch in user_rows(csr, args.batch, seed=args.seed):
        steps += 1
        nnz += int(tf.size(batch["items"].values))
    dense_gb = args.users * args.items * 4 / 1e9
    print(f"user_rows epoch: {steps} batches, {nnz:,} nnz (csr {csr.nnz:,}) in "
          f"{time.time() - t:.1f} s")
    print(f"peak RSS {_peak_mb() / 1024:.2f} GB vs dense float32 matrix {dense_gb:.1f} GB")


if __name__ == "__main__":
    main()
