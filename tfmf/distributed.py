"""Horovod data parallelism behind a small API the Trainer uses; a no-op in one process.

Horovod is initialised only when the process was started by ``horovodrun`` (it sets
``HOROVOD_RANK``), so the same code trains single-process unchanged and never needs Horovod
installed for that.
"""
from __future__ import annotations

import os

import numpy as np

_hvd = None


def launched_by_horovod() -> bool:
    """True inside a horovodrun-launched process."""
    return "HOROVOD_RANK" in os.environ or "OMPI_COMM_WORLD_RANK" in os.environ


def init() -> None:
    """Initialises Horovod once when launched by horovodrun; otherwise does nothing."""
    global _hvd
    if _hvd is not None or not launched_by_horovod():
        return
    import horovod.tensorflow as hvd

    hvd.init()
    _hvd = hvd


def is_distributed() -> bool:
    return _hvd is not None and _hvd.size() > 1


def rank() -> int:
    return _hvd.rank() if _hvd is not None else 0


def size() -> int:
    return _hvd.size() if _hvd is not None else 1


def local_rank() -> int:
    return _hvd.local_rank() if _hvd is not None else 0


def is_chief() -> bool:
    """Rank 0 alone logs, shows progress bars, writes checkpoints and exports."""
    return rank() == 0


def wrap_tape(tape, sparse_as_dense: bool = False):
    """DistributedGradientTape averaging gradients over ranks (identity in one process).

    Embedding gradients are IndexedSlices; Horovod allgathers them (values + indices) instead
    of densifying, so traffic scales with the rows in the batch, not with the catalogue size.
    ``sparse_as_dense=True`` switches to a dense allreduce (cheaper for small tables).
    """
    if not is_distributed():
        return tape
    return _hvd.DistributedGradientTape(tape, sparse_as_dense=sparse_as_dense)


def broadcast_variables(variables) -> None:
    """Copies rank 0's values into every rank (after the first step creates slot variables)."""
    if is_distributed():
        _hvd.broadcast_variables(variables, root_rank=0)


def allreduce_mean(values: dict[str, float]) -> dict[str, float]:
    """Averages a dict of scalars over ranks (identity in one process)."""
    if not is_distributed() or not values:
        return values
    import tensorflow as tf

    keys = sorted(values)
    vec = tf.constant([float(values[k]) for k in keys], tf.float64)
    avg = _hvd.allreduce(vec, op=_hvd.Average, name="tfmf_metrics").numpy()
    return {k: float(v) for k, v in zip(keys, np.asarray(avg))}


def barrier() -> None:
    if is_distributed():
        _hvd.join()
