"""Horovod data parallelism behind a small API the Trainer uses; a no-op in one process.

Horovod is initialised only when the process was started by ``horovodrun`` (it sets
``HOROVOD_RANK``), so the same code trains single-process unchanged and never needs Horovod
installed for that: nothing here imports ``horovod`` until :func:`init` runs under horovodrun.

What the Trainer does with it (``tfmf/training/trainer.py``), per step and per epoch:

* **Gradients.** The GradientTape is wrapped in ``hvd.DistributedGradientTape``, which averages
  gradients over ranks inside ``tape.gradient``. With mixed_float16 the order is
  ``scaled loss -> tape.gradient (allreduce of *scaled* grads) -> unscale -> apply``; every rank
  then sees the same (possibly non-finite) averaged gradients, so the dynamic loss scale skips
  or applies the step identically everywhere and stays in sync without extra communication.
* **Sparse embedding gradients.** Embedding lookups produce ``tf.IndexedSlices``. By default
  (``sparse_as_dense=False``) Horovod *allgathers* their values and indices instead of
  allreducing a dense [rows, dim] tensor, so traffic per step is ``size * batch * dim`` (rows
  touched by the batch) rather than ``n_users * dim`` / ``n_items * dim``; the legacy optimizers
  then update only those rows. ``TrainConfig.sparse_as_dense=True`` densifies them first and uses
  one allreduce, which is cheaper when the tables are small (a few thousand rows) or the batch
  touches most rows. Mult-VAE's first layer is a sparse-dense matmul whose kernel gradient is
  already dense, so the option does not change it.
* **Initial state.** After the first step of a fit (when optimizer slots exist) all model
  variables (trainable and not, e.g. the global mean and Mult-VAE ``anneal_step``), all
  optimizer variables (``iterations``, Adam/Adagrad slots) and the dynamic loss-scale state are
  broadcast from rank 0, so every rank continues from rank 0's exact state even if their
  initialisations differed.
* **Metrics.** Epoch means of the loss components are averaged over ranks; validation runs on
  rank 0 and its metrics are broadcast, and a stop requested on any rank (early stopping, a
  callback) stops all ranks together.
* **Side effects.** Only rank 0 (:func:`is_chief`) logs, shows progress bars, writes checkpoints,
  history, TensorBoard and exports.

Failure behaviour: if one rank dies, Gloo's peers get a connection error on the next collective
and horovodrun terminates the job with a non-zero exit; ``HOROVOD_GLOO_TIMEOUT_SECONDS`` bounds
the wait for a peer that hangs instead of dying (see ``pipelines/horovodrun_local.sh``).
"""
from __future__ import annotations

import os
from typing import Any, Iterable

import numpy as np

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


def wrap_tape(tape, sparse_as_dense: bool = False):
    """DistributedGradientTape averaging gradients over ranks (identity in one process).

    Args:
      tape: the ``tf.GradientTape`` that recorded the (scaled) loss.
      sparse_as_dense: densify IndexedSlices and allreduce them (default: allgather the rows).

    Returns:
      A tape whose ``gradient`` returns rank-averaged gradients.
    """
    if not is_distributed():
        return tape
    return _hvd.DistributedGradientTape(tape, sparse_as_dense=sparse_as_dense)


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


def allreduce_mean(values: dict[str, float]) -> dict[str, float]:
    """Averages a dict of scalars over ranks (identity in one process)."""
    if not is_distributed() or not values:
        return values
    import tensorflow as tf

    keys = sorted(values)
    vec = tf.constant([float(values[k]) for k in keys], tf.float64)
    avg = _hvd.allreduce(vec, op=_hvd.Average, name="tfmf_metrics").numpy()
    return {k: float(v) for k, v in zip(keys, np.asarray(avg))}


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
