"""Memory estimates and the preflight check that runs before large allocations.

Every estimate is in bytes and names the config key that shrinks it, so a run that cannot fit
stops *before* allocating, with a message such as::

    EASE fit (20,108 items, float64, solver lapack) needs 4.9 GB but 3.1 GB are available
    (psutil available memory minus a 1.0 GB margin); change model.dtype: float32 ...

instead of being killed by the kernel or crashing half-way. The estimates are deliberately
simple upper bounds of the dominant arrays (the n x n matrices of EASE, the dense score blocks of
evaluation, the Gibbs workspaces, parameter tables, data loading); small objects are ignored.

:func:`estimate_run` gathers the stages of a whole run for ``tfmf train --dry-run``; the
per-model estimates are keyed by registry name in :data:`MODEL_ESTIMATES` (one place).
"""
from __future__ import annotations

import contextlib
import os

from tfmf.errors import MemoryBudgetError

GB = 1e9
#: Kept free for the interpreter, TensorFlow and everything not estimated (bytes).
DEFAULT_MARGIN = 1.0 * GB
#: Peak RSS per rating read from a CSV file (measured: 3.3 GB for a 16M-row ML-20M-shaped CSV,
#: issue #14); an upper bound for the data stage until the lean reader lands.
LOAD_BYTES_PER_RATING = 205
#: Bytes per rating held after loading (int32 user + int32 item + float32 value + int64 time)
#: plus the CSR copy models keep of their training interactions.
HELD_BYTES_PER_RATING = 20 + 8



def available_bytes() -> int:
    """Memory the process may still allocate: psutil's ``available`` (or $TFMF_MEMORY_LIMIT
    bytes when set, e.g. to model a smaller machine or a container limit)."""
    limit = os.environ.get("TFMF_MEMORY_LIMIT")
    if limit:
        return int(float(limit))
    import psutil

    return int(psutil.virtual_memory().available)


def _gb(n: float) -> str:
    return f"{n / GB:.1f} GB"


def check_fits(needed: int, what: str, key: str, margin: int = DEFAULT_MARGIN) -> str | None:
    """The preflight message when ``needed`` bytes exceed available memory minus ``margin``,
    else None."""
    budget = available_bytes() - margin
    if needed <= budget:
        return None
    return (f"{what} needs {_gb(needed)} but {_gb(max(budget, 0))} are available (psutil "
            f"available memory minus a {_gb(margin)} margin); change {key} (or free memory)")


def preflight(needed_bytes: int, what: str, key: str, margin: int = DEFAULT_MARGIN) -> None:
    """Raises before a large allocation that would not fit in memory.

    Args:
      needed_bytes: the estimate of what the step allocates.
      what: the step, for the message (e.g. "EASE fit (20,108 items, float64)").
      key: the config key (with a suggested value) that shrinks it, e.g. ``model.dtype: float32``.
      margin: bytes kept free for everything not estimated.

    Raises:
      MemoryBudgetError: (a ConfigError naming ``key``) with GB needed vs available.
    """
    msg = check_fits(int(needed_bytes), what, key, margin)
    if msg is not None:
        raise MemoryBudgetError(msg, key=key.split(":")[0].strip(), needed=int(needed_bytes),
                                available=available_bytes() - margin)


# --------------------------------------------------------------------------- per-step estimates
def _itemsize(dtype: str) -> int:
    return 8 if str(dtype) == "float64" else 4


def ease_fit_bytes(n_items: int, dtype: str = "float32", solver: str = "blocked",
                   nnz: int = 0, dense_share: float = 0.05) -> int:
    """Peak bytes of an EASE fit: the Gram/inverse matrix (in place) plus the larger of

    * the Gram assembly's temporaries: the dense block of heavy users (at most
      ``nnz / dense_share`` entries: EASE's ``DENSE_USER_SHARE``, see tfmf.models.ease) and
      three CSR copies of X;
    * the solver's workspace (blocked: n^2/2; tensorflow on the host: ~4 matrices; lapack:
      row blocks only);
    * for float64, the float32 copy of B.
    """
    sq = n_items * n_items
    isz = _itemsize(dtype)
    extra = {"blocked": 0.5 * sq * isz, "lapack": 2048 * n_items * isz,
             "tensorflow": 4.0 * sq * isz}.get(solver, 4.0 * sq * isz)
    gram = nnz / dense_share * isz + 3 * 12 * nnz
    b_copy = 4 * sq if isz == 8 else 0
    return int(sq * isz + max(extra, b_copy, gram))


def ease_key(dtype: str) -> str:
    """The key to suggest when EASE does not fit."""
    if str(dtype) == "float64":
        return "model.dtype: float32"
    return "data.min_item_interactions (fewer items)"


def score_block_bytes(batch_size: int, n_items: int) -> int:
    """Dense score blocks of evaluation/recommend: float32 [batch, n_items] plus the top-K
    temporaries (masked copy, partition, masks), ~4 such blocks."""
    return int(4 * 4 * batch_size * n_items)


def data_bytes(nnz: int) -> int:
    """Peak bytes of reading ``nnz`` ratings from a text file."""
    return int(LOAD_BYTES_PER_RATING * nnz)


def factor_table_bytes(n_users: int, n_items: int, dim: int, copies: int = 4) -> int:
    """Embedding tables (users + items) x dim float32, times ``copies`` (weights, gradients and
    Adam's two slots)."""
    return int(4 * copies * (n_users + n_items) * (dim + 1))


def gibbs_workspace_bytes(n_users: int, n_items: int, factors: int, chunk_size: int,
                          posterior_rank: int) -> int:
    """Bayesian MF: batched (d+1)^2 precision matrices and their Cholesky factors per chunk,
    padded rating chunks, the factor tables, and the float64 low-rank posterior mean with its
    SVD workspace."""
    d = factors + 1
    per_chunk = chunk_size * d * d * 8 * 3 + chunk_size * 256 * d * 4 * 2
    tables = 2 * 4 * (n_users + n_items) * d
    posterior = 3 * 8 * (n_users + n_items) * (posterior_rank + d)
    return int(per_chunk + tables + posterior)


def vae_bytes(n_items: int, dims: list[int], batch_size: int) -> int:
    """Mult-VAE/DAE: the two n_items x dims[0] tables (encoder input, decoder output) with
    gradients and Adam slots, plus the dense batch x n_items logits/softmax/gradient blocks."""
    tables = 4 * 4 * 2 * n_items * (dims[0] + 1)
    blocks = 4 * 4 * batch_size * n_items
    return int(tables + blocks)


# glibc's mallopt parameters (malloc.h) and its ceiling for the dynamic mmap threshold (64-bit).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 << 20
#: Blocks at least this large get their own mapping while data is built (the ALS solver's
#: row blocks are 2 MB arrays).
UNMAP_THRESHOLD = 1 << 20
_LIBC = None
_depth = 0


def _mallopt(param: int, value: int) -> bool:
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        except (OSError, AttributeError):
            _LIBC = False
    return bool(_LIBC) and _LIBC.mallopt(param, int(value)) == 1


@contextlib.contextmanager
def large_blocks_unmapped(threshold: int = UNMAP_THRESHOLD):
    """Inside: every heap block of ``threshold`` bytes or more gets its own mapping, returned to
    the OS when freed (glibc ``mallopt(M_MMAP_THRESHOLD)``, process-wide; a no-op off glibc).

    Why: glibc raises its mmap threshold after a large block is freed (up to 32 MB), so later
    arrays below that size are carved from arena heaps between blocks still in use. Building a
    rank's data (decoding shards, splitting, the seen CSR, the alltoall of columns, the solver's
    row blocks) makes and drops such arrays in an order that depends on thread timing, and the
    arenas' holes set the peak: the same iALS rank measured 0.35-0.44 GB of data RSS from run
    to run, and 0.327 GB in every run with the threshold fixed (docs/profiles/rank_memory.txt).

    On leaving, the thresholds are fixed where glibc's dynamic rule ends up after a large free
    (mmap 32 MB, trim 64 MB) rather than at 1 MB: training steps allocate and free MB-sized
    tensors every step, and mapping each afresh cost Mult-VAE's ML-100K fit ~20% (measured).
    """
    global _depth
    if _depth == 0 and not _mallopt(_M_MMAP_THRESHOLD, threshold):
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            _mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD_MAX)
            _mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
