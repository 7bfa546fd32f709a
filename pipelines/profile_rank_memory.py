"""Where a rank's data RSS peaks: per-phase high-water marks of one ALS/iALS rank (issue 14).

    python -m pipelines.profile_rank_memory SHARDS STAGE OUT N_USERS           # one process
    horovodrun --gloo -np 2 -H localhost:2 python -m pipelines.profile_rank_memory ...

Runs what ``scale-horovod``'s data mode measures (load this rank's shards, split, the seen
CSR, the solver's row blocks) with a thread sampling VmRSS every 2 ms, and prints, per phase,
the largest RSS above the idle process (interpreter, TensorFlow, pyarrow, Horovod started).
The solver's build is split into its pieces (the alltoall of the items' columns, the row
views, the per-row penalties) by wrapping those functions.
"""
from __future__ import annotations

import json
import sys
import threading
import time


def _rss() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Sampler:
    """Largest VmRSS seen per phase label (a background thread, every ``period`` s)."""

    def __init__(self, period: float = 0.002):
        self.label, self.peaks, self.period = "idle", {}, period
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop:
            r = _rss()
            if r > self.peaks.get(self.label, 0):
                self.peaks[self.label] = r
            time.sleep(self.period)

    def phase(self, label: str):
        r = _rss()
        self.peaks[self.label] = max(self.peaks.get(self.label, 0), r)
        self.label = label

    def stop(self) -> dict:
        self.phase("end")
        self._stop = True
        self._t.join()
        return self.peaks


def _wrap(owner, name: str, sampler: Sampler, label: str):
    fn = getattr(owner, name)

    def wrapped(*a, **kw):
        prev = sampler.label
        sampler.phase(label)
        try:
            return fn(*a, **kw)
        finally:
            sampler.phase(prev)

    setattr(owner, name, wrapped)


def main(shards: str, stage: str, out: str, n_users: int) -> None:
    import tfmf  # noqa: F401
    import tensorflow  # noqa: F401

    import pyarrow.parquet  # noqa: F401
    import scipy.sparse  # noqa: F401

    from pipelines.bench_scale import _raw_config
    from pipelines.bench_scale_horovod import build_rank_data, held_entries
    from tfmf import distributed
    from tfmf.config import config_from_dict
    from tfmf.models import als, als_distributed

    distributed.init()
    distributed.barrier()
    s = Sampler()
    time.sleep(0.05)
    _wrap(als_distributed.Group, "exchange_columns", s, "solver: alltoall items' columns")
    _wrap(als, "row_regularization", s, "solver: row penalties")
    _wrap(als, "_Side", s, "solver: row blocks (_Side)")
    cfg = config_from_dict(_raw_config(shards, stage, out, n_users, False))
    solver = build_rank_data(cfg, s.phase)
    peaks = s.stop()
    idle = peaks.pop("idle")
    rec = {"rank": distributed.rank(), "size": distributed.size(), "idle_rss": idle,
           "above_idle_by_phase": {k: v - idle for k, v in peaks.items()},
           "entries": held_entries(solver)}
    print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
