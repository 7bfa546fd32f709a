"""``scale-horovod``: ALS / iALS per-rank peak RSS and time under ``horovodrun --gloo -np 2``.

    nice -n 10 python -m pipelines.benchmark scale-horovod --scale full --out runs/bench

On the ML-20M-shaped shards of ``scale-ml20m`` (written by that suite; converted here if
missing), each model is trained through :func:`tfmf.runner.train` exactly as in
``scale-ml20m`` (3 sweeps, same split and settings), once in one process and once under
``horovodrun --gloo -np 2`` where every rank reads only its shards
(:func:`tfmf.runner.reads_per_rank`): it holds its users' rows and, after one alltoall, its
items' columns. Each process reports its VmHWM after importing tfmf, TensorFlow, pyarrow and scipy ("idle")
and at the end; "data RSS" is the difference (the rows, CSR blocks, factor tables and
solver temporaries, and rank 0's re-assembly of everyone's seen items before saving).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from pipelines.bench_data import _peak_rss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GB = 1e9


def worker(shards: str, stage: str, out: str, n_users: int) -> None:
    """One rank (or the one process): runner.train of a scale-ml20m stage; writes its json."""
    import tfmf  # noqa: F401
    import tensorflow  # noqa: F401

    from pipelines.bench_scale import _raw_config
    from tfmf import distributed, runner
    from tfmf.config import config_from_dict

    import pyarrow.parquet  # noqa: F401  (the readers' imports belong to "idle")
    import scipy.sparse  # noqa: F401

    distributed.init()
    idle = _peak_rss()
    raw = _raw_config(shards, stage, out, n_users, False)
    raw["run_name"] = f"{stage}-np{distributed.size()}"
    cfg = config_from_dict(raw)
    run_dir = distributed.broadcast_object(os.path.join(out, raw["run_name"]), "run_dir")
    t0 = time.perf_counter()
    result = runner.train(cfg, run_dir)
    seconds = time.perf_counter() - t0
    rec = {"rank": distributed.rank(), "size": distributed.size(), "idle_rss": idle,
           "peak_rss": _peak_rss(), "seconds": seconds,
           "fit_seconds": float(sum(h.get("seconds", 0.0) for h in result.history)),
           "per_rank": runner.reads_per_rank(cfg), "metrics": result.metrics}
    with open(os.path.join(out, f"{raw['run_name']}-rank{distributed.rank()}.json"), "w") as fh:
        json.dump(rec, fh)


def data_worker(shards: str, stage: str, out: str, n_users: int) -> None:
    """The data a rank holds to train: runner.train's load and split, the model's seen CSR
    and the ALS solver's row blocks (users' rows, items' columns), built exactly as a fit
    builds them; the peak RSS of that, without any sweep (the solver's workspace is not data).
    """
    import tfmf  # noqa: F401
    import tensorflow  # noqa: F401

    from pipelines.bench_scale import _raw_config
    from tfmf import distributed, runner
    from tfmf.config import config_from_dict

    import pyarrow.parquet  # noqa: F401  (the readers' imports belong to "idle")
    import scipy.sparse  # noqa: F401

    distributed.init()
    # Horovod's runtime (background thread, Gloo contexts, buffers) starts with the first
    # collective: part of "idle", like TensorFlow's, not of the data.
    distributed.barrier()
    idle = _peak_rss()
    cfg = config_from_dict(_raw_config(shards, stage, out, n_users, False))
    t0 = time.perf_counter()
    solver = build_rank_data(cfg)
    held = held_entries(solver)
    rec = {"rank": distributed.rank(), "size": distributed.size(), "idle_rss": idle,
           "peak_rss": _peak_rss(), "seconds": time.perf_counter() - t0,
           "per_rank": runner.reads_per_rank(cfg), "held_entries": held,
           "total_entries": 2 * int(solver.nnz)}
    with open(os.path.join(out, f"data-{stage}-np{distributed.size()}-rank{distributed.rank()}"
                                ".json"), "w") as fh:
        json.dump(rec, fh)


def build_rank_data(cfg, phase=lambda label: None):
    """What a rank holds to train, built as ``runner.train`` and the model's fit build it:
    this rank's rows (load), its split, the model's seen CSR and the ALS solver's row blocks.
    ``phase(label)`` is called before each step (the memory profiler's hook). Returns the
    solver."""
    from tfmf import registry, runner

    phase("load (read_shards)")
    data = runner.load_data(cfg, per_rank=True)
    phase("split")
    _, fit_part, _, _ = runner._rank_fit_part(cfg, data)
    data = runner._ids_only(data)  # as runner.train does once the data is split
    phase("seen CSR")
    model = registry.create(cfg.model_name, cfg.model)
    model._remember_training_data(fit_part)
    phase("solver: other")
    return model._solver(model._seen, 0.0, fit_part.partition is not None)


def held_entries(solver) -> int:
    """Entries of the training matrix in this rank's row blocks (its users' rows and its
    items' columns)."""
    return int(sum(len(b.cols) for side in (solver.users, solver.items) for b in side.blocks))


def _launch(np_: int, shards: str, stage: str, out: str, n_users: int,
            mode: str = "worker") -> list[dict]:
    py = sys.executable
    cmd = [py, "-m", "pipelines.bench_scale_horovod", mode, shards, stage, out,
           str(n_users)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), ROOT) if p)
    if np_ > 1:
        # One TF thread per op pool and rank: the ranks share the host's cores.
        env.update(HOROVOD_GLOO_TIMEOUT_SECONDS="120", TF_NUM_INTRAOP_THREADS="1",
                   TF_NUM_INTEROP_THREADS="1")
        cmd = [os.path.join(os.path.dirname(py), "horovodrun"), "--gloo", "-np", str(np_),
               "-H", f"localhost:{np_}", "--start-timeout", "60"] + cmd
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return [{"error": (proc.stdout + proc.stderr)[-400:]}]
    prefix = "data-" if mode == "data" else ""
    return [json.load(open(os.path.join(out, f"{prefix}{stage}-np{np_}-rank{r}.json")))
            for r in range(np_)]


def run(args) -> dict:
    from pipelines.bench_scale import SHAPES, TINY_SHAPE, stage_load_convert
    from pipelines.bench_data import cached_csv
    from pipelines.benchmark import ratio, run_isolated

    tiny = args.scale == "tiny"
    shape = TINY_SHAPE if tiny else SHAPES["ml20m"]
    work = os.path.join(args.out, f"scale-ml20m-{args.scale}")
    shards = os.path.join(work, "shards")
    if not os.path.exists(os.path.join(shards, "manifest.json")):
        run_isolated(stage_load_convert, cached_csv(args.out, shape), shards)
    with open(os.path.join(shards, "manifest.json")) as fh:
        n_users = json.load(fh)["n_users"]
    out = os.path.join(args.out, f"scale-horovod-{args.scale}")
    os.makedirs(out, exist_ok=True)
    rows, notes, data_rows = [], [], []
    # TFMF_SCALE_HOROVOD_MODES="data": only the data rows (each launch takes ~1 minute).
    modes = os.environ.get("TFMF_SCALE_HOROVOD_MODES", "data,fit").split(",")

    def runs(stage: str, mode: str):
        """np=1 then each np=2 rank: (record, its data RSS, np=1's data RSS); errors -> notes."""
        one = _launch(1, shards, stage, out, n_users, mode)[0]
        two = _launch(2, shards, stage, out, n_users, mode)
        base = one.get("peak_rss", 0) - one.get("idle_rss", 0)
        for rec in [one] + two:
            if "error" in rec:
                notes.append(f"{stage} {mode}: {rec['error']}")
                continue
            yield rec, rec["peak_rss"] - rec["idle_rss"], base, one

    for stage in ("ials", "als") if "data" in modes else ():
        for rec, data, base, one in runs(stage, "data"):
            data_rows.append({"model": stage, "np": rec["size"], "rank": rec["rank"],
                              "per-rank read": rec["per_rank"],
                              "entries held": rec["held_entries"],
                              "x_np1 entries": ratio(rec["held_entries"],
                                                     one.get("held_entries")),
                              "peak RSS GB": rec["peak_rss"] / GB,
                              "data RSS GB": data / GB, "x_np1 data RSS": ratio(data, base)})
            print(data_rows[-1], flush=True)
    for stage in ("ials", "als") if "fit" in modes else ():
        for rec, data, base, _ in runs(stage, "worker"):
            m = rec["metrics"]
            rows.append({"model": stage, "np": rec["size"], "rank": rec["rank"],
                         "per-rank read": rec["per_rank"], "seconds": rec["seconds"],
                         "fit s": rec["fit_seconds"], "peak RSS GB": rec["peak_rss"] / GB,
                         "data RSS GB": data / GB, "x_np1 data RSS": ratio(data, base),
                         "ndcg@100 / rmse": m.get("ndcg@100", m.get("rmse"))})
            print(rows[-1], flush=True)
    notes.append(f"shards: {shards} (12 shards of the scale-ml20m file; 3 sweeps, the "
                 "scale-ml20m split and settings); np=2: two ranks on this host, one TF "
                 "thread per pool each; np=1: default threads")
    tables = {}
    if data_rows:
        tables["Data per rank (load, split, seen CSR, solver row blocks; no sweep)"] = data_rows
    if rows:
        tables["Whole fit, one process vs 2 Horovod ranks (per-rank peak RSS)"] = rows
    return {"tables": tables, "notes": notes}


def _register():
    from pipelines.benchmark import suite

    @suite("scale-horovod")
    def scale_horovod(args) -> dict:
        """ALS / iALS per-rank data RSS under horovodrun -np 2 vs one process (issue 14)."""
        return run(args)


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] in ("worker", "data"):
    (worker if sys.argv[1] == "worker" else data_worker)(sys.argv[2], sys.argv[3], sys.argv[4],
                                                         int(sys.argv[5]))
elif __name__ != "__main__":
    _register()
