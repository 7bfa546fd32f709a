"""Data-layer benchmark suites: reading big ratings files through the public loader.

* ``speed-read``: a MovieLens-20M-shaped synthetic ratings CSV (138,493 users x 26,744 items x
  16M rows, ``userId,movieId,rating,timestamp`` like ``ratings.csv``) read back by
  :func:`tfmf.data.loading.load_dataset` and, in the same run, by ``pandas.read_csv`` + a
  scipy CSR (the peer). Each reader runs in a fresh process, so its peak RSS is its own.
  Also: the same file with one malformed row in the middle (how long until the file:line
  error, at what peak RSS), and the Parquet shards of ``tfmf data convert`` read per rank.
* ``scale-read``: the same for a Netflix-shaped file (480,189 x 17,770 x 100M): load peak RSS
  per rating.

Generated files are cached under ``<out>/cache/`` (reruns skip generation). ``--scale tiny``
uses ~200k rows.
"""
from __future__ import annotations

import os
import time

import numpy as np

#: (users, items, rows) of the generated files.
ML20M_CSV_SHAPE = (138_493, 26_744, 16_000_000)
NETFLIX_SHAPE = (480_189, 17_770, 100_480_507)
TINY_SHAPE = (2_000, 1_500, 200_000)
_TS0, _TS1 = 789_652_009, 1_427_784_002  # ML-20M's timestamp range


def write_ratings_csv(path: str, n_users: int, n_items: int, nnz: int, seed: int = 0,
                      users_per_block: int = 4096) -> int:
    """Writes a ratings CSV shaped like MovieLens' ``ratings.csv``, in bounded memory.

    Users are written in ascending id order, each user's items ascending (like ML-20M); user
    activity and item popularity follow Zipf-like laws (``power_law_sampler``), every user has at
    least ``min(20, n_items)`` ratings (ML-20M's minimum), ratings are half stars 0.5..5 and
    item raw ids are sparse (ML-style gaps). Memory is one block of users at a time.

    Args:
      path: output file (written to ``path + '.tmp'`` then renamed).
      n_users, n_items, nnz: shape (``nnz`` is met within a fraction of a percent).
      seed: RNG seed.
      users_per_block: users generated and written per step.

    Returns:
      The number of rows written.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from tfmf.data.synthetic import power_law_sampler

    rng = np.random.default_rng(seed)
    # Expected activity per user: Zipf weights over a random permutation of users.
    w = 1.0 / np.arange(1, n_users + 1, dtype=np.float64) ** 0.8
    w = w[rng.permutation(n_users)]
    low, cap = min(20, n_items), max(min(20, n_items), n_items // 5)
    counts = np.full(n_users, low, np.int64)
    for _ in range(20):  # spread the rest by weight; what the capped users cannot take, again
        free = counts < cap
        extra = nnz - counts.sum()
        if extra <= 0 or not free.any():
            break
        add = np.floor(extra * w * free / (w * free).sum()).astype(np.int64)
        if not add.any():
            add[np.flatnonzero(free)[:extra]] = 1
        counts = np.minimum(counts + add, cap)
    draw_item = power_law_sampler(n_items, 0.9, rng)
    item_raw = np.sort(rng.choice(np.arange(1, 5 * n_items + 1), n_items, replace=False))
    written = 0
    tmp = path + ".tmp"
    schema = pa.schema([("userId", pa.int64()), ("movieId", pa.int64()), ("rating", pa.string()),
                        ("timestamp", pa.int64())])
    half_stars = np.array([f"{0.5 * k:.1f}" for k in range(1, 11)], dtype=object)
    star_p = np.array([1, 3, 2, 7, 4, 14, 11, 26, 8, 24], np.float64)
    star_p /= star_p.sum()
    with open(tmp, "wb") as fh:
        fh.write(b"userId,movieId,rating,timestamp\n")
    opts = pacsv.WriteOptions(include_header=False, quoting_style="none")
    with open(tmp, "ab") as fh, pacsv.CSVWriter(fh, schema, write_options=opts) as out:
        for lo in range(0, n_users, users_per_block):
            block = np.arange(lo, min(n_users, lo + users_per_block))
            want = counts[block]
            # Oversample, keep each user's first distinct draws up to its count.
            users = np.repeat(block, 2 * want + 8)
            items = draw_item(len(users))
            key = np.unique(users * np.int64(n_items) + items)
            u, i = key // n_items, key % n_items
            start = np.searchsorted(u, block)
            rank = np.arange(len(u)) - np.repeat(start, np.diff(np.append(start, len(u))))
            keep = rank < counts[u]
            u, i = u[keep], i[keep]
            stars = rng.choice(10, len(u), p=star_p)
            ts = rng.integers(_TS0, _TS1, len(u))
            table = pa.table({"userId": u + 1, "movieId": item_raw[i],
                              "rating": pa.array(half_stars[stars], pa.string()),
                              "timestamp": ts}, schema=schema)
            out.write_table(table)
            written += len(u)
    os.replace(tmp, path)
    return written


def cached_csv(out_dir: str, shape: tuple[int, int, int], seed: int = 0) -> str:
    """The generated CSV for ``shape`` under ``<out_dir>/cache/`` (written once)."""
    n_users, n_items, nnz = shape
    path = os.path.join(out_dir, "cache", f"ratings-{n_users}x{n_items}x{nnz}-s{seed}.csv")
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        t0 = time.perf_counter()
        rows = write_ratings_csv(path, n_users, n_items, nnz, seed)
        print(f"generated {path}: {rows:,} rows in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


if __name__ == "__main__":  # pragma: no cover - manual generation
    import sys

    print(cached_csv(sys.argv[1] if len(sys.argv) > 1 else "runs/bench", ML20M_CSV_SHAPE))
