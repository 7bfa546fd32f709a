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


def with_bad_row(clean: str, bad: bytes = b"17,2,four,1\n") -> tuple[str, int]:
    """A copy of ``clean`` with ``bad`` inserted as the middle line; (path, its line number)."""
    path = clean[:-4] + "-badrow.csv"
    meta = path + ".line"
    if os.path.exists(path) and os.path.exists(meta):
        with open(meta) as fh:
            return path, int(fh.read())
    size = os.path.getsize(clean)
    with open(clean, "rb") as src, open(path + ".tmp", "wb") as out:
        head = src.read(size // 2)
        head += src.readline()
        line = head.count(b"\n") + 1
        out.write(head)
        out.write(bad)
        while chunk := src.read(64 << 20):
            out.write(chunk)
    os.replace(path + ".tmp", path)
    with open(meta, "w") as fh:
        fh.write(str(line))
    return path, line


# ----------------------------------------------------------------------------- measured work
# Each runs in a fresh spawned process (run_isolated), so ru_maxrss is that reader's peak.
def _peak_rss() -> int:
    """This process's peak RSS in bytes: VmHWM, the high-water mark of its own address space.

    Not ``ru_maxrss``: Linux carries that across fork + exec, so a child spawned by a big
    parent (the benchmark process, TensorFlow loaded) would report the parent's size.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _idle_rss() -> int:
    """RSS after importing what every reader imports (numpy, pandas, pyarrow, scipy)."""
    import pandas  # noqa: F401
    import pyarrow.csv  # noqa: F401
    import scipy.sparse  # noqa: F401

    return _peak_rss()


def measure_tfmf(path: str, csr: bool = False, rank: int = 0, size: int = 1) -> dict:
    """tfmf's public loader on ``path`` (+ the CSR the models train on when ``csr``)."""
    base = _idle_rss()
    from tfmf.config import DataConfig
    from tfmf.data.loading import load_dataset
    from tfmf.errors import DataError

    t0 = time.perf_counter()
    try:
        data = load_dataset(DataConfig(source=path), rank=rank, size=size)
    except DataError as e:
        return {"seconds": time.perf_counter() - t0, "peak_rss": _peak_rss(), "idle_rss": base,
                "rows": None, "error": str(e)}
    load_s = time.perf_counter() - t0
    if csr:
        data.to_csr()
    return {"seconds": time.perf_counter() - t0, "load_seconds": load_s, "peak_rss": _peak_rss(),
            "idle_rss": base, "rows": data.nnz, "users": data.n_users, "items": data.n_items,
            "error": None}


def measure_cli(path: str) -> dict:
    """``tfmf data inspect PATH`` as a user runs it: a new process, imports included."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "tfmf", "data", "inspect", path, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    import resource

    # The largest child of this fresh worker: the CLI process (at least the worker's size,
    # which it starts as a fork of; far below a CLI read's peak).
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    import json

    rows = json.loads(out)["ratings"] if proc.returncode == 0 else None
    return {"seconds": seconds, "peak_rss": peak, "idle_rss": 0, "rows": rows,
            "error": None if proc.returncode == 0 else err.decode()[-200:]}


def measure_peer(path: str, csr: bool = True) -> dict:
    """pandas.read_csv, then (``csr``) category codes for ids and a scipy CSR."""
    base = _idle_rss()
    import pandas as pd
    import scipy.sparse as sp

    import warnings

    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # mixed-type columns of the bad-row file
            df = pd.read_csv(path)
    except Exception as e:  # noqa: BLE001 - what the peer says about a bad file
        return {"seconds": time.perf_counter() - t0, "peak_rss": _peak_rss(), "idle_rss": base,
                "rows": None, "error": f"{type(e).__name__}: {e}"[:160]}
    load_s = time.perf_counter() - t0
    rows = len(df)
    if csr:
        u = df.iloc[:, 0].astype("category").cat.codes.to_numpy()
        i = df.iloc[:, 1].astype("category").cat.codes.to_numpy()
        m = sp.csr_matrix((df.iloc[:, 2].to_numpy(np.float32), (u, i)))
        rows = m.nnz
    return {"seconds": time.perf_counter() - t0, "load_seconds": load_s, "peak_rss": _peak_rss(),
            "idle_rss": base, "rows": rows, "error": None}


def measure_convert(path: str, out: str, shards: int) -> dict:
    base = _idle_rss()
    from tfmf.config import DataConfig
    from tfmf.data.loading import load_dataset
    from tfmf.data.shards import write_shards

    t0 = time.perf_counter()
    write_shards(load_dataset(DataConfig(source=path)), out, shards, source=path)
    return {"seconds": time.perf_counter() - t0, "peak_rss": _peak_rss(), "idle_rss": base}


def _best(fn, repeats: int, *a, **kw) -> dict:
    from pipelines.benchmark import run_isolated

    runs = [run_isolated(fn, *a, **kw) for _ in range(repeats)]
    best = min(runs, key=lambda r: r["seconds"])
    best["peak_rss"] = max(r["peak_rss"] for r in runs)  # memory: the worst run
    return best


def _row(what: str, r: dict, n: int, clean: dict | None = None, peer: dict | None = None
         ) -> dict:
    from pipelines.benchmark import ratio

    gb = r["peak_rss"] / 1e9
    row = {"reader": what, "rows": r.get("rows"), "seconds": round(r["seconds"], 2),
           "peak RSS GB": round(gb, 3),
           "B/rating": round(r["peak_rss"] / n, 1),
           "B/rating over imports": round((r["peak_rss"] - r["idle_rss"]) / n, 1)}
    if peer is not None:
        row["x_peer time"] = ratio(r["seconds"], peer["seconds"])
        row["x_peer RSS"] = ratio(r["peak_rss"], peer["peak_rss"])
    if clean is not None:
        row["x_clean time"] = ratio(r["seconds"], clean["seconds"])
        row["x_clean RSS"] = ratio(r["peak_rss"], clean["peak_rss"])
    if r.get("error"):
        row["error"] = r["error"][:200]
    return row


def _read_suite(args, shape: tuple[int, int, int], with_peer: bool) -> dict:
    tiny = args.scale == "tiny"
    repeats = 1 if tiny else 2
    t0 = time.perf_counter()
    path = cached_csv(args.out, shape)
    gen_s = time.perf_counter() - t0
    bad, bad_line = with_bad_row(path)
    notes = [f"file: {path} ({os.path.getsize(path) / 1e6:.0f} MB; generated or found in "
             f"{gen_s:.0f} s); every reader runs in a fresh process (peak RSS is its own), "
             f"best of {repeats} for time, worst for RSS"]
    tfmf_load = _best(measure_tfmf, repeats, path)
    n = tfmf_load["rows"]
    tfmf_csr = _best(measure_tfmf, repeats, path, csr=True)
    peer = peer_load = None
    if with_peer:
        peer = _best(measure_peer, repeats, path)
        peer_load = _best(measure_peer, repeats, path, csr=False)
    rows = [_row("tfmf load_dataset", tfmf_load, n, peer=peer),
            _row("tfmf load_dataset + to_csr", tfmf_csr, n, peer=peer),
            _row("tfmf data inspect (CLI, new process)", _best(measure_cli, 1, path), n,
                 peer=peer)]
    if with_peer:
        rows += [_row("pandas.read_csv + scipy CSR (peer)", peer, n, peer=peer),
                 _row("pandas.read_csv alone", peer_load, n, peer=peer)]
    bad_tfmf = _best(measure_tfmf, repeats, bad)
    expect = f"{bad}:{bad_line}: "
    bad_rows = [_row("tfmf load_dataset, bad row in the middle", bad_tfmf, n, clean=tfmf_load)]
    if with_peer:
        bad_rows.append(_row("pandas.read_csv, bad row in the middle", _best(
            measure_peer, 1, bad, csr=False), n, clean=peer_load))
    ok = bool(bad_tfmf.get("error")) and expect in bad_tfmf["error"]
    notes.append(f"bad row at line {bad_line}: tfmf's error {'names' if ok else 'DOES NOT name'}"
                 f" {expect!r}")
    out_dir = path[:-4] + "-shards"
    import shutil

    shutil.rmtree(out_dir, ignore_errors=True)
    shard_rows = [_row("tfmf data convert (12 shards)", run_isolated_convert(path, out_dir), n,
                       clean=tfmf_load)]
    for rank, size in ((0, 1), (0, 2), (0, 3)):
        r = _best(measure_tfmf, repeats, out_dir, rank=rank, size=size)
        shard_rows.append(_row(f"shards: rank {rank} of {size}", r, n, clean=tfmf_load))
    return {"tables": {f"Reading a {n:,}-row ratings CSV ({shape[0]:,} x {shape[1]:,})": rows,
                       "One malformed row in the middle": bad_rows,
                       "Parquet shards (tfmf data convert), per rank": shard_rows},
            "notes": notes}


def run_isolated_convert(path: str, out_dir: str) -> dict:
    from pipelines.benchmark import run_isolated

    return run_isolated(measure_convert, path, out_dir, 12)


def _register():
    from pipelines.benchmark import suite

    @suite("speed-read")
    def speed_read(args) -> dict:
        """ML-20M-shaped CSV through the public loader vs pandas + scipy (issue 18, 17, 14)."""
        return _read_suite(args, TINY_SHAPE if args.scale == "tiny" else ML20M_CSV_SHAPE, True)

    @suite("scale-read")
    def scale_read(args) -> dict:
        """Netflix-shaped CSV: load peak RSS per rating (issue 14); no peer (pandas needs
        several times the memory)."""
        return _read_suite(args, TINY_SHAPE if args.scale == "tiny" else NETFLIX_SHAPE, False)


_register()


if __name__ == "__main__":  # pragma: no cover - manual generation
    import sys

    print(cached_csv(sys.argv[1] if len(sys.argv) > 1 else "runs/bench", ML20M_CSV_SHAPE))
