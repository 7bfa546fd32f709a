"""Horovod data parallelism for Keras ``fit()``; a no-op in one process.

Horovod is initialised only when the process was started by ``horovodrun`` (it sets
``HOROVOD_RANK``), so the same code trains single-process unchanged and never needs Horovod
installed for that: nothing here imports ``horovod`` until :func:`init` runs under horovodrun.

How a fit is distributed (``tfmf/training/fit.py``), all through Horovod's own Keras pieces
(:mod:`tfmf.horovod_keras` binds them to tf_keras):

* **Gradients.** The optimizer is ``hvd.DistributedOptimizer``, which averages gradients over
  ranks inside ``_compute_gradients``. With mixed_float16 it sits *inside* the
  ``LossScaleOptimizer``: scaled loss -> gradients (allreduce of *scaled* grads) -> unscale ->
  apply; every rank sees the same (possibly non-finite) averaged gradients, so the dynamic loss
  scale skips or applies a step identically everywhere.
* **Sparse embedding gradients.** Embedding lookups produce ``tf.IndexedSlices``. By default
  (``sparse_as_dense=False``) Horovod *allgathers* their values and indices instead of
  allreducing a dense [rows, dim] tensor, so traffic per step is ``size * batch * dim`` rather
  than ``n_users * dim``; ``TrainConfig.sparse_as_dense=True`` densifies them and uses one
  allreduce, cheaper only for small tables. Mult-VAE's first-layer kernel gradient is dense.
* **Initial state.** ``BroadcastGlobalVariablesCallback(0)`` copies rank 0's model and optimizer
  variables to every rank after the first batch (every rank starts from the same seed).
* **Metrics.** ``MetricAverageCallback`` averages the epoch logs over ranks before any callback
  reads them; validation runs on rank 0 and is broadcast (:class:`tfmf.training.callbacks.
  Validation`), so early stopping stops every rank together.
* **Side effects.** Only rank 0 (:func:`is_chief`) prints progress, writes history, TensorBoard,
  the model and the metrics; each rank keeps its own BackupAndRestore checkpoint.

* **Data.** On a sharded source each rank reads only its shards (``tfmf.runner.
  reads_per_rank``); :func:`max_over_ranks` agrees on the step count and
  :func:`sum_over_ranks` pools counts and metrics.

Failure behaviour: if one rank dies, Gloo's peers get a connection error on the next collective
and horovodrun terminates the job with a non-zero exit; ``HOROVOD_GLOO_TIMEOUT_SECONDS`` bounds
the wait for a peer that hangs instead of dying (see ``pipelines/horovodrun_local.sh``).
"""
from __future__ import annotations

import os
from typing import Any, Iterable

_hvd = None


def launched_by_horovod() -> bool:
    """True inside a horovodrun-launched process (Gloo sets HOROVOD_RANK, MPI OMPI_*)."""
    return "HOROVOD_RANK" in os.environ or "OMPI_COMM_WORLD_RANK" in os.environ


def init() -> None:
    """Initialises Horovod once when launched by horovodrun; otherwise does nothing.

    Also pins one GPU per local rank when GPUs are visible (a no-op on CPU hosts).

    Raises:
      ImportError: launched by horovodrun but ``horovod.tensorflow`` cannot be imported.
    """
    global _hvd
    if _hvd is not None or not launched_by_horovod():
        return
    try:
        import horovod.tensorflow as hvd
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("launched by horovodrun but horovod.tensorflow is not importable; "
                          "install it with `make install` (builds horovod against TF)") from exc
    hvd.init()
    _pin_gpu(hvd.local_rank())
    _hvd = hvd


def _pin_gpu(local_rank: int) -> None:
    """One GPU per process, chosen by local rank (Horovod's recommended layout)."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return
    try:
        tf.config.experimental.set_memory_growth(gpus[local_rank % len(gpus)], True)
        tf.config.set_visible_devices(gpus[local_rank % len(gpus)], "GPU")
    except RuntimeError:
        # Devices were already initialised (init() called late): keep TF's placement.
        pass


def is_distributed() -> bool:
    """True when more than one Horovod rank takes part."""
    return _hvd is not None and _hvd.size() > 1


def rank() -> int:
    """This process's rank (0 in one process)."""
    return _hvd.rank() if _hvd is not None else 0


def size() -> int:
    """Number of ranks (1 in one process)."""
    return _hvd.size() if _hvd is not None else 1


def local_rank() -> int:
    """Rank within this host (0 in one process)."""
    return _hvd.local_rank() if _hvd is not None else 0


def is_chief() -> bool:
    """Rank 0 alone logs, shows progress bars, writes checkpoints and exports."""
    return rank() == 0


def distributed_optimizer(optimizer, sparse_as_dense: bool = False):
    """Horovod's DistributedOptimizer around ``optimizer`` (``optimizer`` itself in one process).

    Args:
      optimizer: a tf_keras legacy optimizer.
      sparse_as_dense: densify IndexedSlices and allreduce them (default: allgather the rows).
    """
    if not is_distributed():
        return optimizer
    from tfmf import horovod_keras

    return horovod_keras.DistributedOptimizer(optimizer, sparse_as_dense=sparse_as_dense)


def keras_callbacks() -> list:
    """Horovod's broadcast and metric-averaging callbacks for tf_keras ([] in one process).

    MetricAverageCallback comes first among the two so that every later callback (history,
    early stopping, TensorBoard) reads rank-averaged logs.
    """
    if not is_distributed():
        return []
    from tfmf import horovod_keras

    return [horovod_keras.BroadcastGlobalVariablesCallback(0),
            horovod_keras.MetricAverageCallback()]


def broadcast_variables(variables: Iterable) -> None:
    """Copies rank 0's values into every rank's variables (no-op in one process)."""
    variables = list(variables)
    if is_distributed() and variables:
        _hvd.broadcast_variables(variables, root_rank=0)


def broadcast_object(obj: Any, name: str | None = None) -> Any:
    """Rank 0's picklable ``obj`` on every rank (``obj`` itself in one process)."""
    if not is_distributed():
        return obj
    return _hvd.broadcast_object(obj, root_rank=0, name=name)


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is True on any rank (so all ranks stop together)."""
    if not is_distributed():
        return bool(flag)
    import tensorflow as tf

    total = _hvd.allreduce(tf.constant([1.0 if flag else 0.0], tf.float32), op=_hvd.Sum,
                           name="tfmf_any_rank")
    return bool(total.numpy()[0] > 0)


def barrier() -> None:
    """Blocks until every rank reaches it (no-op in one process)."""
    if is_distributed():
        # horovod.tensorflow has no barrier(); a tiny allreduce synchronises just the same.
        import tensorflow as tf

        _hvd.allreduce(tf.zeros([1]), op=_hvd.Sum, name="tfmf_barrier")


def sum_over_ranks(values, name: str = "tfmf_sum") -> "np.ndarray":
    """Elementwise float64 sum of ``values`` over ranks (``values`` itself in one process).

    Every rank must call it with the same length, in the same order of collectives.
    """
    import numpy as np

    arr = np.asarray(values, np.float64)
    if not is_distributed():
        return arr
    import tensorflow as tf

    return _hvd.allreduce(tf.constant(arr), op=_hvd.Sum, name=name).numpy()


def max_over_ranks(value: int, name: str = "tfmf_max") -> int:
    """The largest ``value`` of any rank, on every rank (``value`` in one process)."""
    if not is_distributed():
        return int(value)
    import tensorflow as tf

    return int(_hvd.allreduce(tf.constant([int(value)], tf.int64), op=_hvd.Max,
                              name=name).numpy()[0])
