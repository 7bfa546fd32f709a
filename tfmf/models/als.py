"""Alternating least squares for explicit ratings ("als") and implicit feedback ("ials").

TensorFlow 2 lost the WALS solver with ``tf.contrib``; this module provides one. Each
half-step solves, for every row ``u`` (a user, or an item on the other half-step), the ridge
system

    (G + sum_j a_uj y_j y_j^T + lambda_u I) x_u = sum_j t_uj y_j

over the row's observed entries ``j`` with fixed factors ``y`` of the other side. The data
never becomes a dense users x items matrix. Two solvers:

* ``cholesky`` (exact): rows are grouped by length (powers of two) and cut into chunks of at
  most ``chunk_size`` rows, each padded only to its own longest row (less than 2x padding);
  a chunk's Gram matrices are one batched matmul of its gathered, padded factors, then
  ``tf.linalg.cholesky`` / ``cholesky_solve`` on ``[n, d, d]``. O(nnz d^2 + n d^3).
* ``cg`` (``cg_steps`` warm-started conjugate-gradient steps, matrix-free, as the implicit
  library's default): ``A p`` is a per-entry dot product ``y_j . p_u`` and a sorted segment
  sum back to the rows, over flat blocks of contiguous CSR rows (no padding, at most 2^19
  entries a block, so one call per half-step at ML-100K). O(nnz d) per step. The steps are
  unrolled into one traced call per block: at small scales a half-step costs the ops it
  dispatches, not their arithmetic (profile: docs/profiles/ials.txt). The item step also
  returns the observed-entry loss of its result, so the sweep's loss needs no extra pass.

Every kernel is traced once per process (input signatures with unknown sizes), for every
chunk, block, fold and fit. Under Horovod the rows are split over ranks
(:mod:`tfmf.models.als_distributed`).

* Explicit ALS (Zhou et al. 2008): ``G = 0``, ``a = 1``, ``t = r - offset``. Biased ALS
  solves for ``[bias, factors]`` against ``[1, y_j]`` (an augmented column of ones) with
  ``offset = mu + b_j``; the global mean ``mu`` is fixed to the training mean.
* Weighted ALS for implicit feedback (Hu, Koren, Volinsky 2008): confidence ``c = 1 + alpha r``
  on observed entries, weight 1 and preference 0 everywhere else. The sum over *all* items is
  the Gramian ``G = Y^T Y`` computed once per half-step (Rendle et al. 2021), so the observed
  entries only add ``a = c - 1 = alpha r`` and ``t = c``.

Regularization ``lambda_u``: with ``weighted_lambda`` it is ``regularization`` times the total
loss weight of the row, i.e. ``lambda * n_u`` for explicit data (the weighted-lambda of Zhou
et al., which is what the SGD models' per-rating L2 amounts to) and
``lambda * (n_other + alpha * sum_j r_uj)`` for iALS (Rendle et al.'s frequency-scaled
``(|I_u| + alpha_0 |I|)^nu`` with ``nu = 1`` in Hu et al.'s parametrisation); otherwise it is
the plain ``lambda``.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
import tensorflow as tf

from tfmf import memory
from tfmf.config import TrainConfig, check
from tfmf.data.interactions import InteractionData
from tfmf.models.mf import BiasedMatrixFactorization, BiasedMFConfig, FactorRecommender, MFConfig
from tfmf.registry import register
from tfmf.training.fit import compile_model
from tfmf.training.model import SweepModel, sweep_dataset

# A chunk holds at most chunk_size * this many padded entries, so a chunk of very long rows
# (the head of a power-law distribution) is split further and memory stays bounded.
_PADDED_ENTRIES_PER_ROW = 256


# --------------------------------------------------------------------------- configs
@dataclass
class _ALSCommonConfig:
    """Fields shared by explicit and implicit ALS (defaults of each model: tuned on ML-100K).

    Attributes:
      factors: latent dimension k.
      regularization: ridge strength lambda (see ``weighted_lambda``).
      iterations: full sweeps (users then items); ALS ignores TrainConfig.epochs.
      init_stddev: standard deviation of the Gaussian initial factors.
      chunk_size: rows (users or items) solved per batched call; bounds memory.
      solver: cholesky (exact) or cg (``cg_steps`` warm-started conjugate-gradient steps,
        matrix-free: O(nnz k) per step instead of forming k x k systems).
      cg_steps: conjugate-gradient steps per half-step when solver == cg.
      seed: initialisation seed (None: TrainConfig.seed).
      weighted_lambda: scale lambda by each row's total loss weight (module docstring).
      clip_predictions: clip ``predict`` to the fit-time rating scale (explicit data).
    """

    factors: int = 32
    regularization: float = 0.12
    iterations: int = 15
    init_stddev: float = 0.1
    chunk_size: int = 1024
    solver: Literal["cholesky", "cg"] = "cholesky"
    cg_steps: int = 3
    seed: int | None = None
    weighted_lambda: bool = True
    clip_predictions: bool = True

    def validate(self, key: str) -> None:
        check(self.factors >= 1, f"{key}.factors", "must be >= 1")
        check(self.regularization > 0, f"{key}.regularization",
              "must be > 0 (the ridge systems of empty rows would be singular)")
        check(self.iterations >= 1, f"{key}.iterations", "must be >= 1")
        check(self.init_stddev > 0, f"{key}.init_stddev", "must be > 0")
        check(self.chunk_size >= 1, f"{key}.chunk_size", "must be >= 1")
        check(self.cg_steps >= 1, f"{key}.cg_steps", "must be >= 1")


@dataclass
class ALSConfig(_ALSCommonConfig):
    """Explicit-rating ALS (see _ALSCommonConfig for the shared fields).

    Attributes:
      biased: learn user/item biases around the (fixed) training mean.
    """

    biased: bool = True


@dataclass
class IALSConfig(_ALSCommonConfig):
    """Implicit-feedback weighted ALS (see _ALSCommonConfig for the shared fields).

    Attributes:
      alpha: confidence slope, c_ui = 1 + alpha * r_ui on observed entries.
    """

    factors: int = 64
    regularization: float = 30.0
    weighted_lambda: bool = False
    init_stddev: float = 0.01
    alpha: float = 5.0

    def validate(self, key: str) -> None:
        super().validate(key)
        check(self.alpha >= 0, f"{key}.alpha", "must be >= 0")


# --------------------------------------------------------------------------- sparse rows
def _upload_once(self) -> tuple[tf.Tensor, ...]:
    """The arrays named by ``_uploaded`` as TF constants, uploaded once and reused every
    half-step (the ``tensors()`` method of RowChunk and RowBlock)."""
    if self._tensors is None:
        self._tensors = tuple(tf.constant(getattr(self, name)) for name in self._uploaded)
    return self._tensors


@dataclass
class RowChunk:
    """A chunk of CSR rows padded to its longest row.

    Attributes:
      rows: int32 [n] row indices.
      cols: int32 [n, L] column indices (0 where padded).
      vals: float32 [n, L] values (0 where padded).
      mask: float32 [n, L] 1 for real entries.
    """

    rows: np.ndarray
    cols: np.ndarray
    vals: np.ndarray
    mask: np.ndarray
    _tensors: tuple | None = dataclasses.field(default=None, repr=False, compare=False)
    _uploaded = ("cols", "vals", "mask")
    tensors = _upload_once


def chunk_rows(m: sp.csr_matrix, chunk_size: int) -> list[RowChunk]:
    """Cuts the rows of ``m`` into padded chunks with little padding.

    Rows are grouped by length into powers of two (``[2^j, 2^(j+1))``), so a chunk padded to
    its longest row holds less than twice its real entries; groups are split into chunks of at
    most ``chunk_size`` rows and ``chunk_size * 256`` padded entries (long rows get smaller
    chunks, bounding memory).

    Args:
      m: CSR matrix [n_rows, n_cols].
      chunk_size: most rows per chunk.

    Returns:
      Chunks covering every row exactly once (empty rows included).
    """
    m = sp.csr_matrix(m)
    lengths = np.diff(m.indptr)
    order = np.argsort(lengths, kind="stable").astype(np.int32)
    group = np.floor(np.log2(np.maximum(lengths[order], 1))).astype(np.int64)
    budget = chunk_size * _PADDED_ENTRIES_PER_ROW
    chunks = []
    for rows in np.split(order, np.flatnonzero(np.diff(group)) + 1):
        if len(rows) == 0:
            continue
        per_chunk = max(1, min(chunk_size, budget // max(1, int(lengths[rows[-1]]))))
        chunks += [_pad(m, rows[s:s + per_chunk]) for s in range(0, len(rows), per_chunk)]
    return chunks


def _pad(m: sp.csr_matrix, rows: np.ndarray) -> RowChunk:
    lengths = np.diff(m.indptr)[rows]
    width = max(1, int(lengths.max()) if len(rows) else 1)
    slot = np.arange(width)[None, :]
    mask = slot < lengths[:, None]
    pos = np.where(mask, m.indptr[rows][:, None] + slot, 0)
    if m.nnz == 0:
        cols = np.zeros(mask.shape, np.int32)
        vals = np.zeros(mask.shape, np.float32)
    else:
        cols = np.where(mask, m.indices[pos], 0).astype(np.int32)
        vals = np.where(mask, m.data[pos], 0).astype(np.float32)
    return RowChunk(rows.astype(np.int32), cols, vals, mask.astype(np.float32))


def row_regularization(m: sp.csr_matrix, regularization: float, weighted: bool,
                       alpha: float | None = None) -> np.ndarray:
    """lambda_u per row of ``m`` (module docstring): plain, or scaled by the row's loss weight.

    Args:
      m: CSR rows [n_rows, n_cols].
      regularization: lambda.
      weighted: scale by the row's total loss weight.
      alpha: iALS confidence slope (None: explicit rows, every rating weighs 1).

    Returns:
      float32 [n_rows].
    """
    n = m.shape[0]
    if not weighted:
        return np.full(n, regularization, np.float32)
    if alpha is None:
        # max(., 1): an empty row still gets a (small) ridge, keeping its system definite.
        weight = np.maximum(np.diff(m.indptr), 1)
    else:
        weight = m.shape[1] + alpha * np.asarray(m.sum(axis=1)).ravel()
    return (regularization * weight).astype(np.float32)


# --------------------------------------------------------------------------- flat row blocks
#: Most observed entries per flat block: bounds the few [entries, d] temporaries of a CG
#: call (~0.5 GB at d = 64) while keeping the calls per half-step few (one at ML-100K).
_BLOCK_ENTRIES = 1 << 19


@dataclass
class RowBlock:
    """Contiguous CSR rows ``[start, stop)`` as their flat observed entries (no padding).

    Attributes:
      start, stop: the block's rows of the matrix it was cut from.
      seg: int32 [e] row of each entry within the block (0 .. stop - start - 1), sorted.
      cols: int32 [e] column indices.
      vals: float32 [e] values.
    """

    start: int
    stop: int
    seg: np.ndarray
    cols: np.ndarray
    vals: np.ndarray
    _tensors: tuple | None = dataclasses.field(default=None, repr=False, compare=False)
    _uploaded = ("seg", "cols", "vals")
    tensors = _upload_once


def block_rows(m: sp.csr_matrix, max_entries: int = _BLOCK_ENTRIES) -> list[RowBlock]:
    """Cuts the rows of ``m`` into contiguous blocks of at most ``max_entries`` entries.

    A row longer than ``max_entries`` gets a block of its own. Every row (empty ones too) is
    in exactly one block; blocks are in row order.

    Args:
      m: CSR matrix [n_rows, n_cols] with sorted indices.
      max_entries: most observed entries per block.

    Returns:
      The blocks (one empty block for a matrix without rows).
    """
    indptr = np.asarray(m.indptr, np.int64)
    n = m.shape[0]
    blocks, start = [], 0
    while start < n or not blocks:
        stop = int(np.searchsorted(indptr, indptr[start] + max_entries, side="right")) - 1
        stop = min(n, max(stop, start + 1))
        lo, hi = indptr[start], indptr[stop]
        seg = np.repeat(np.arange(stop - start, dtype=np.int32), np.diff(indptr[start:stop + 1]))
        blocks.append(RowBlock(start, stop, seg, m.indices[lo:hi].astype(np.int32),
                               m.data[lo:hi].astype(np.float32)))
        start = stop
        if n == 0:
            break
    return blocks


# --------------------------------------------------------------------------- TF kernels
def _chunk_system(other, offset, cols, vals, mask, alpha, implicit: bool):
    """Gathered design [n, L, d], per-entry Gram weights a [n, L] and targets t [n, L]."""
    design = tf.gather(other, cols) * mask[..., None]
    if implicit:
        a = alpha * vals * mask
        t = (1.0 + alpha * vals) * mask
    else:
        a = mask
        t = (vals - tf.gather(offset, cols)) * mask
    return design, a, t


def _solve_chunk_cholesky(other, offset, gramian, lam, cols, vals, mask, alpha, implicit: bool):
    design, a, t = _chunk_system(other, offset, cols, vals, mask, alpha, implicit)
    d = tf.shape(other)[1]
    # Per-row Gram matrices sum_j a_j y_j y_j^T as one batched matmul over the padded rows.
    lhs = tf.matmul(design * a[..., None], design, transpose_a=True)
    lhs += gramian[None] + lam[:, None, None] * tf.eye(d, dtype=other.dtype)[None]
    rhs = tf.matmul(design, t[..., None], transpose_a=True)
    return tf.squeeze(tf.linalg.cholesky_solve(tf.linalg.cholesky(lhs), rhs), -1)


def _solve_block_cg(other, offset, gramian, lam, seg, cols, vals, x0, alpha, steps: int,
                    implicit: bool, with_loss: bool):
    """``steps`` CG steps from ``x0`` for the rows of one flat block, matrix-free.

    ``A p = G p + sum_j a_j (y_j . p) y_j + lambda p`` is two passes over the block's gathered
    design rows ``y_j`` (a per-entry dot product, then a sorted segment sum back to rows);
    ``b - A x0`` is fused into one such pair, and the steps are unrolled (``steps`` is a
    Python int), so a block is one call of a few dozen large ops: at small scales the cost of
    a half-step is the number of ops dispatched, not their arithmetic.

    Returns:
      (x [n, d], observed loss, sum of squared observed scores): the loss terms of the new
      ``x`` (zeros unless ``with_loss``), so the sweep's loss needs no extra pass.
    """
    n = tf.shape(x0)[0]
    design = tf.gather(other, cols)
    if implicit:
        a = alpha * vals
        t = 1.0 + a
    else:
        a = tf.ones_like(vals)
        t = vals - tf.gather(offset, cols)

    def proj(p):  # y_j . p_row(j) per entry
        return tf.reduce_sum(design * tf.gather(p, seg), axis=1)

    def back(w):  # sum_j w_j y_j per row (empty trailing rows padded with zeros)
        s = tf.math.segment_sum(w[:, None] * design, seg)
        return tf.pad(s, [[0, n - tf.shape(s)[0]], [0, 0]])

    def ridge(p):
        out = lam[:, None] * p
        return out + tf.matmul(p, gramian) if implicit else out

    tiny = tf.constant(1e-20, other.dtype)
    x = x0
    r = back(t - a * proj(x)) - ridge(x)
    p = r
    rs = tf.reduce_sum(r * r, axis=1, keepdims=True)
    for k in range(steps):
        ap = back(a * proj(p)) + ridge(p)
        step = rs / tf.maximum(tf.reduce_sum(p * ap, axis=1, keepdims=True), tiny)
        x += step * p
        if k + 1 < steps:
            r -= step * ap
            rs_new = tf.reduce_sum(r * r, axis=1, keepdims=True)
            p = r + rs_new / tf.maximum(rs, tiny) * p
            rs = rs_new
    observed = squared = tf.constant(0.0, other.dtype)
    if with_loss:
        pred = proj(x)
        observed = _observed_loss(pred, a, t, implicit)
        squared = tf.reduce_sum(tf.square(pred))
    return x, observed, squared


def _observed_loss(pred, a, t, implicit: bool):
    if implicit:  # confidence 1 + a, preference 1 (t = 1 + a)
        return tf.reduce_sum((1.0 + a) * tf.square(1.0 - pred))
    return tf.reduce_sum(tf.square(t - pred))


def _block_loss_terms(rows, other, offset, seg, cols, vals, alpha, implicit: bool):
    """(observed-entry loss, sum of squared observed scores) of one flat block of rows."""
    pred = tf.reduce_sum(tf.gather(other, cols) * tf.gather(rows, seg), axis=1)
    if implicit:
        a = alpha * vals
        t = 1.0 + a
    else:
        a, t = tf.ones_like(vals), vals - tf.gather(offset, cols)
    return _observed_loss(pred, a, t, implicit), tf.reduce_sum(tf.square(pred))


_F32, _I32 = tf.float32, tf.int32
#: Input signatures with unknown sizes: each kernel is traced once per static variant for the
#: whole process (every chunk, block, fold and fit), never per shape.
_SIGNATURES = {
    "cholesky": [((None, None), _F32), ((None,), _F32), ((None, None), _F32), ((None,), _F32),
                 ((None, None), _I32), ((None, None), _F32), ((None, None), _F32), ((), _F32)],
    "cg": [((None, None), _F32), ((None,), _F32), ((None, None), _F32), ((None,), _F32),
           ((None,), _I32), ((None,), _I32), ((None,), _F32), ((None, None), _F32), ((), _F32)],
    "loss": [((None, None), _F32), ((None, None), _F32), ((None,), _F32), ((None,), _I32),
             ((None,), _I32), ((None,), _F32), ((), _F32)],
}
_KERNELS = {"cholesky": _solve_chunk_cholesky, "cg": _solve_block_cg, "loss": _block_loss_terms}
_TRACED: dict = {}


def _kernel(kind: str, **static):
    """The traced kernel ``kind`` for the static (Python) arguments ``static``."""
    key = (kind, tuple(sorted(static.items())))
    if key not in _TRACED:
        fn = _KERNELS[kind]
        sig = [tf.TensorSpec(shape, dtype) for shape, dtype in _SIGNATURES[kind]]
        # No autograph: the kernels' only branches and loops are on Python values.
        _TRACED[key] = tf.function(functools.partial(fn, **static), input_signature=sig,
                                   autograph=False)
    return _TRACED[key]


def solve_rows(chunks: list[RowChunk] | None, other, lam: np.ndarray, *, n_rows: int,
               offset=None, alpha: float | None = None, solver: str = "cholesky",
               x0=None, cg_steps: int = 3, blocks: list[RowBlock] | None = None,
               gramian=None) -> tf.Tensor:
    """One ALS half-step: every row's ridge solution against fixed ``other`` factors.

    Cholesky assembles each row's system over padded ``chunks`` (batched matmuls); CG runs
    matrix-free over flat ``blocks`` (built from ``chunks`` when not given).

    Args:
      chunks: the rows' observed entries, from :func:`chunk_rows` (cholesky; may be None for
        cg when ``blocks`` are given).
      other: float32 [n_cols, d] fixed design rows y_j (with a leading ones column for
        biased ALS).
      lam: float32 [n_rows] lambda_u (see :func:`row_regularization`).
      n_rows: number of rows to solve.
      offset: float32 [n_cols] subtracted from explicit ratings (mu + other bias); None: 0.
      alpha: iALS confidence slope; None for explicit ALS. iALS adds the Gramian of all of
        ``other`` (the unobserved entries, preference 0, weight 1).
      solver: "cholesky" or "cg".
      x0: float32 [n_rows, d] warm start for CG (None: zeros).
      cg_steps: CG steps.
      blocks: the rows as flat blocks (:func:`block_rows`) for cg.
      gramian: float32 [d, d] ``other^T other`` when already known (iALS); None: computed.

    Returns:
      float32 [n_rows, d] solutions.
    """
    if solver not in ("cholesky", "cg"):
        raise ValueError(f"solver must be cholesky or cg, got {solver!r}")
    other = tf.convert_to_tensor(other, tf.float32)
    d = int(other.shape[1])
    implicit = alpha is not None
    if gramian is None:
        gramian = (tf.matmul(other, other, transpose_a=True) if implicit
                   else tf.zeros((d, d), tf.float32))
    offset = tf.zeros(other.shape[0], tf.float32) if offset is None else tf.convert_to_tensor(
        offset, tf.float32)
    alpha_t = tf.constant(0.0 if alpha is None else alpha, tf.float32)
    if solver == "cg":
        if blocks is None:
            blocks = block_rows(_chunks_to_csr(chunks, n_rows, int(other.shape[0])))
        x0 = (tf.zeros((n_rows, d), tf.float32) if x0 is None
              else tf.convert_to_tensor(x0, tf.float32))
        return _solve_blocks_cg(blocks, other, offset, gramian, tf.constant(lam), x0, alpha_t, cg_steps,
                                implicit, with_loss=False)[0]
    parts = []
    for c in chunks:
        args = (other, offset, gramian, tf.constant(lam[c.rows]), *c.tensors(), alpha_t)
        parts.append(_kernel("cholesky", implicit=implicit)(*args))
    return gather_rows_back(parts, chunks, n_rows, d)


def _solve_blocks_cg(blocks, other, offset, gramian, lam, x0, alpha_t, cg_steps, implicit,
                     with_loss):
    """CG over every block; (x [rows, d], observed loss, squared scores) with loss terms
    summed on the device (one host sync for the whole half-step, by the caller)."""
    parts, observed, squared = [], 0.0, 0.0
    kernel = _kernel("cg", steps=int(cg_steps), implicit=implicit, with_loss=with_loss)
    for b in blocks:
        x, o, s = kernel(other, offset, gramian, lam[b.start:b.stop], *b.tensors(),
                         x0[b.start:b.stop], alpha_t)
        parts.append(x)
        observed, squared = observed + o, squared + s
    x = parts[0] if len(parts) == 1 else tf.concat(parts, 0)
    return x, observed, squared


def _chunks_to_csr(chunks: list[RowChunk], n_rows: int, n_cols: int) -> sp.csr_matrix:
    """The CSR matrix that ``chunks`` were cut from (for callers passing only chunks)."""
    rows = np.concatenate([np.repeat(c.rows, c.mask.shape[1]) for c in chunks] or [[]])
    keep = np.concatenate([c.mask.ravel() > 0 for c in chunks] or [[]]).astype(bool)
    cols = np.concatenate([c.cols.ravel() for c in chunks] or [[]])[keep]
    vals = np.concatenate([c.vals.ravel() for c in chunks] or [[]])[keep]
    m = sp.csr_matrix((vals, (rows[keep], cols)), shape=(n_rows, n_cols), dtype=np.float32)
    m.sort_indices()
    return m


def gather_rows_back(parts: list[tf.Tensor], chunks: list[RowChunk], n_rows: int,
                     dim: int) -> tf.Tensor:
    """Per-chunk results [len(chunk.rows), dim] reassembled in row order: [n_rows, dim]."""
    if not parts:  # no rows (e.g. an empty fold-in batch)
        return tf.zeros((n_rows, dim), tf.float32)
    order = np.concatenate([c.rows for c in chunks])
    inverse = np.empty(n_rows, np.int64)
    inverse[order] = np.arange(len(order))
    return tf.gather(tf.concat(parts, 0), inverse)


# --------------------------------------------------------------------------- the solver
def _row_view(m: sp.csr_matrix, start: int, stop: int) -> sp.csr_matrix:
    """Rows ``[start, stop)`` of a CSR sharing its indices and data (``m[start:stop]`` copies
    them: a second copy of a rank's entries)."""
    a, b = int(m.indptr[start]), int(m.indptr[stop])
    return sp.csr_matrix((m.data[a:b], m.indices[a:b], m.indptr[start:stop + 1] - a),
                         shape=(stop - start, m.shape[1]), copy=False)


class _Side:
    """One side's training rows as this process holds them: the rows ``[start, stop)`` of the
    factor table it solves (all rows in one process, its own block under Horovod), as flat
    blocks (CG, losses) and, for Cholesky, padded chunks."""

    def __init__(self, m: sp.csr_matrix, start: int, stop: int, lam: np.ndarray,
                 chunk_size: int | None):
        self.start, self.stop = start, stop
        self.lam = lam
        self.lam_t = tf.constant(lam)
        self.blocks = block_rows(m)
        self.chunks = chunk_rows(m, chunk_size) if chunk_size else None


class ALSSolver:
    """Alternating ridge solves on one training matrix (explicit, biased or implicit).

    Factors are float32 tensors; with ``biased`` every row's solution is ``[bias, factors]``
    against the other side's ``[1, factors]`` and ``offset = mu + other bias``.

    Under Horovod (``distributed``), rank ``r`` of ``s`` owns a contiguous block of users and
    one of items (balanced by observed entries), keeps only those users' rows (CSR) and those
    items' columns of the training matrix, solves only its own rows and allgathers the
    solutions, so every rank ends each half-step with the full factor table; the iALS
    Gramian is the allreduced sum of the ranks' block Gramians and the loss terms are
    allreduced too. The result equals the single-process solver's up to float32 summation
    order.

    Args:
      train: CSR [n_users, n_items] of ratings (explicit) or interaction strengths r (implicit).
      regularization: lambda.
      weighted_lambda: scale lambda per row (module docstring).
      alpha: iALS confidence slope; None for explicit ALS.
      biased: learn biases (explicit only).
      mu: fixed global offset of explicit predictions (the training mean for biased ALS).
      chunk_size: rows per batched Cholesky solve.
      solver: "cholesky" or "cg".
      cg_steps: CG steps per half-step.
      distributed: split the rows over Horovod ranks; None: when
        :func:`tfmf.distributed.is_distributed`.
      local_rows: under Horovod, ``train`` holds only this rank's users' rows (read per
        rank): the user block is those users, the item block's columns come from every rank
        by alltoall, and ``nnz`` is summed over ranks (:mod:`tfmf.models.als_distributed`).
    """

    @memory.large_blocks_unmapped()  # the sides' row blocks are built here
    def __init__(self, train: sp.csr_matrix, *, regularization: float, weighted_lambda: bool,
                 alpha: float | None = None, biased: bool = False, mu: float = 0.0,
                 chunk_size: int = 1024, solver: str = "cholesky", cg_steps: int = 3,
                 distributed: bool | None = None, local_rows: bool = False):
        if alpha is not None and biased:
            raise ValueError("biased ALS is for explicit ratings (alpha must be None)")
        if solver not in ("cholesky", "cg"):
            raise ValueError(f"solver must be cholesky or cg, got {solver!r}")
        from tfmf.models import als_distributed as dist

        self.dist = dist.Group.current() if distributed is None else dist.Group.make(
            distributed)
        train = sp.csr_matrix(train, dtype=np.float32)
        train.sort_indices()
        self.n_users, self.n_items = train.shape
        self.nnz = train.nnz
        self.alpha, self.biased, self.mu = alpha, biased, float(mu)
        self.solver, self.cg_steps = solver, cg_steps
        self._reg, self._weighted, self._chunk_size = regularization, weighted_lambda, chunk_size
        local = local_rows and self.dist.size > 1
        item_counts = np.bincount(train.indices, minlength=self.n_items)
        if local:
            u0, u1 = self.dist.local_user_range(np.asarray(train.indptr))
            item_counts = np.rint(self.dist.allreduce_sum(
                tf.constant(item_counts, tf.float64), "als_item_counts").numpy()).astype(np.int64)
            self.nnz = int(item_counts.sum())
        else:
            u0, u1 = self.dist.own_range(np.asarray(train.indptr))
        item_ranges = self.dist.ranges(np.concatenate([[0], np.cumsum(item_counts)]))
        i0, i1 = item_ranges[self.dist.rank]
        users = _row_view(train, u0, u1) if self.dist.size > 1 else train
        # This rank's items' columns as rows; the full matrix is not kept (caller's copy).
        if local:
            items = self.dist.exchange_columns(train, item_ranges)
        else:
            items = (train[:, i0:i1] if self.dist.size > 1 else train).T.tocsr()
        del train
        users.sort_indices()
        items.sort_indices()
        chunks = chunk_size if solver == "cholesky" else None
        self.users = _Side(users, u0, u1, row_regularization(users, regularization,
                                                             weighted_lambda, alpha), chunks)
        self.items = _Side(items, i0, i1, row_regularization(items, regularization,
                                                             weighted_lambda, alpha), chunks)
        self._loss_cache = None
        self._synced: set[str] = set()

    # Backwards-compatible views (single process: the whole sides).
    @property
    def user_chunks(self) -> list[RowChunk] | None:
        return self.users.chunks

    @property
    def item_chunks(self) -> list[RowChunk] | None:
        return self.items.chunks

    @property
    def user_lam(self) -> np.ndarray:
        return self.users.lam

    @property
    def item_lam(self) -> np.ndarray:
        return self.items.lam

    def _design(self, factors, bias):
        """Rows as solved/used: [bias, factors] when biased, else factors."""
        factors = tf.convert_to_tensor(factors, tf.float32)
        if not self.biased:
            return factors
        return tf.concat([tf.reshape(tf.cast(bias, tf.float32), [-1, 1]), factors], axis=1)

    def _other(self, factors, bias):
        """(design [n, d], offset [n]) of the fixed side."""
        factors = tf.convert_to_tensor(factors, tf.float32)
        if not self.biased:
            return factors, tf.fill([tf.shape(factors)[0]], self.mu)
        ones = tf.ones([tf.shape(factors)[0], 1], tf.float32)
        return tf.concat([ones, factors], axis=1), self.mu + tf.cast(tf.reshape(bias, [-1]),
                                                                     tf.float32)

    def _gramian(self, design, other_side: _Side, name: str):
        """``design^T design`` of the fixed side (iALS): under Horovod each rank's block
        Gramian, allreduced."""
        if self.alpha is None:
            d = int(design.shape[1])
            return tf.zeros((d, d), tf.float32)
        if self.dist.size == 1:
            return tf.matmul(design, design, transpose_a=True)
        own = design[other_side.start:other_side.stop]
        return self.dist.allreduce_sum(tf.matmul(own, own, transpose_a=True), name)

    def _half_step(self, side: _Side, other_side: _Side, rows, row_bias, other, other_bias,
                   name: str, with_loss: bool):
        if self.dist.size > 1 and name not in self._synced:
            # Every rank must start from rank 0's factors (initialisations may differ).
            rows, other = (self.dist.broadcast(self._design(x, b), f"als_start_{name}{k}")
                           for k, (x, b) in enumerate(((rows, row_bias), (other, other_bias))))
            if self.biased:
                rows, row_bias, other, other_bias = (rows[:, 1:], rows[:, 0], other[:, 1:],
                                                     other[:, 0])
            self._synced.add(name)  # once per half-step kind (its warm start too)
        design, offset = self._other(other, other_bias)
        gramian = self._gramian(design, other_side, f"als_gram_{name}")
        x0 = self._design(rows, row_bias)[side.start:side.stop]
        alpha_t = tf.constant(self.alpha or 0.0, tf.float32)
        implicit = self.alpha is not None
        n_own = side.stop - side.start
        loss = None
        if self.solver == "cg":
            sol, observed, squared = _solve_blocks_cg(side.blocks, design, offset, gramian,
                                                      side.lam_t, x0, alpha_t, self.cg_steps,
                                                      implicit, with_loss)
            loss = (observed, squared) if with_loss else None
        else:
            sol = solve_rows(side.chunks, design, side.lam, n_rows=n_own, offset=offset,
                             alpha=self.alpha, solver="cholesky", gramian=gramian)
        if self.dist.size > 1:
            sol = self.dist.allgather_rows(sol, f"als_rows_{name}")
        if self.biased:
            return (sol[:, 1:], sol[:, 0]), loss
        return (sol, row_bias), loss

    def user_step(self, U, V, bu=None, bi=None) -> tuple[tf.Tensor, tf.Tensor | None]:
        """New (user factors, user biases) given item factors/biases (biases None if unbiased)."""
        out, _ = self._half_step(self.users, self.items, U, bu, V, bi, "users", False)
        return out

    def item_step(self, U, V, bu=None, bi=None) -> tuple[tf.Tensor, tf.Tensor | None]:
        """New (item factors, item biases) given user factors/biases.

        With CG the observed-entry loss terms of the result are computed in the same pass and
        kept for :meth:`losses` of exactly these ``U, bu`` and the returned ``V, bi``.
        """
        (V_new, bi_new), loss = self._half_step(self.items, self.users, V, bi, U, bu, "items",
                                                self.solver == "cg")
        self._loss_cache = None if loss is None else (U, bu, V_new, bi_new, loss)
        return V_new, bi_new

    def fold_in(self, user_items: sp.csr_matrix, V, bi=None, *, solver: str | None = None):
        """(factors, biases or None) of new users against fixed item factors, one ridge each.

        Uses the training lambda rule and alpha; ``solver`` None means the training solver
        (CG then starts from zeros, so it needs enough ``cg_steps`` to converge). Runs in this
        process only (every rank holds the full item factors).
        """
        rows = sp.csr_matrix(user_items, dtype=np.float32)
        rows.sort_indices()
        lam = row_regularization(rows, self._reg, self._weighted, self.alpha)
        design, offset = self._other(V, bi)
        solver = solver or self.solver
        if solver == "cg":
            sol = solve_rows(None, design, lam, n_rows=rows.shape[0], offset=offset,
                             alpha=self.alpha, solver="cg", cg_steps=self.cg_steps,
                             blocks=block_rows(rows))
        else:
            sol = solve_rows(chunk_rows(rows, self._chunk_size), design, lam,
                             n_rows=rows.shape[0], offset=offset, alpha=self.alpha,
                             solver=solver, cg_steps=self.cg_steps)
        if self.biased:
            return sol[:, 1:], sol[:, 0]
        return sol, None

    def losses(self, U, V, bu=None, bi=None) -> dict[str, float]:
        """Objective per observed entry: ``loss = data + l2 (+ gramian for iALS)``.

        ``data`` is the mean squared error on the ratings (explicit) or the confidence-weighted
        error on the observed entries (iALS); ``gramian`` is the unobserved entries' squared
        scores; ``l2`` the ridge penalties. Under Horovod every rank gets the global values.
        """
        rows = self._design(U, bu)
        other, offset = self._other(V, bi)
        cache = self._loss_cache
        if cache is not None and all(a is b for a, b in zip(cache[:4], (U, bu, V, bi))):
            observed, squared = cache[4]  # the item step's pass over these very factors
        else:
            alpha = tf.constant(self.alpha or 0.0, tf.float32)
            observed = squared = tf.constant(0.0, tf.float32)
            loss_kernel = _kernel("loss", implicit=self.alpha is not None)
            for b in self.users.blocks:
                own = rows[self.users.start + b.start:self.users.start + b.stop]
                o, s = loss_kernel(own, other, offset, *b.tensors(), alpha)
                observed, squared = observed + o, squared + s
        items = self._design(V, bi)
        own_u = rows[self.users.start:self.users.stop]
        own_i = items[self.items.start:self.items.stop]
        l2 = (tf.reduce_sum(self.users.lam * tf.reduce_sum(tf.square(own_u), 1))
              + tf.reduce_sum(self.items.lam * tf.reduce_sum(tf.square(own_i), 1)))
        all_sq = tf.constant(0.0, tf.float32)
        if self.alpha is not None:
            # All-pairs squared scores through the Gramian, minus the observed ones.
            all_sq = tf.reduce_sum(tf.matmul(own_u, tf.matmul(other, other, transpose_a=True))
                                   * own_u)
        terms = tf.cast(tf.stack([observed, squared, l2, all_sq]), tf.float64)
        if self.dist.size > 1:
            terms = self.dist.allreduce_sum(terms, "als_losses")
        observed, squared, l2, all_sq = (float(v) for v in terms.numpy())
        n = max(1, self.nnz)
        out = {"data": observed / n, "l2": l2 / n}
        if self.alpha is not None:
            out["gramian"] = (all_sq - squared) / n
        out["loss"] = sum(out.values())
        return {"loss": out.pop("loss"), **out}


# --------------------------------------------------------------------------- Recommenders
class ALSSweeps(SweepModel):
    """One ALS sweep (users, then items) per ``fit`` step, written into a factor model.

    The factor model's variables are the whole state, so a BackupAndRestore checkpoint of
    this model resumes a fit at its last completed sweep.

    Args:
      factors: the Keras factor model (MatrixFactorization or BiasedMatrixFactorization).
      solver: the ridge solver over the training matrix.
      biased: solve biases (explicit ALS).
      implicit: iALS (no train RMSE).
    """

    def __init__(self, factors, solver: ALSSolver, *, biased: bool, implicit: bool):
        names = ("loss", "data", "l2") + (("gramian",) if implicit else ("rmse",))
        super().__init__(loss_components=names + ("solve_seconds",))
        self.factors, self.solver = factors, solver
        self.biased, self.implicit = biased, implicit
        self.built = True  # its variables are the (built) factor model's

    def parameters(self):
        """(U, V, user bias or None, item bias or None) of the factor model."""
        m = self.factors
        if self.biased:
            return (m.user_factors, m.item_factors, m.user_bias.embeddings[:, 0],
                    m.item_bias.embeddings[:, 0])
        return m.user_factors, m.item_factors, None, None

    def sweep(self, epoch: int) -> dict[str, float]:
        t0 = time.perf_counter()
        U, V, bu, bi = self.parameters()
        U, bu = self.solver.user_step(U, V, bu, bi)
        V, bi = self.solver.item_step(U, V, bu, bi)
        solve_s = time.perf_counter() - t0
        m = self.factors
        m.user_factors.assign(U)
        m.item_factors.assign(V)
        if bu is not None:
            m.user_bias.embeddings.assign(tf.reshape(bu, [-1, 1]))
            m.item_bias.embeddings.assign(tf.reshape(bi, [-1, 1]))
        row = self.solver.losses(U, V, bu, bi)
        if not self.implicit:
            row["rmse"] = float(np.sqrt(row["data"]))
        row["solve_seconds"] = solve_s
        return row


class _ALSFit:
    """ALS training and fold-in for the factor recommenders of :mod:`tfmf.models.mf`.

    Mixed in before :class:`~tfmf.models.mf.FactorRecommender`: ``fit`` runs the alternating
    solves under the one epoch loop (:class:`ALSSweeps`, one sweep per epoch) writing into the
    factor model, so predict/score/recommend/save/load/export are the factor model's.
    """

    #: True for weighted ALS on implicit feedback (config has ``alpha``).
    implicit: bool = False

    def factor_config(self) -> MFConfig:
        """The factor model's config (sizes, init; the loss fields are unused by ALS)."""
        c = self.config
        common = dict(embedding_dim=c.factors, init_stddev=c.init_stddev, l2=c.regularization,
                      clip_predictions=c.clip_predictions)
        if self.implicit:
            return MFConfig(**common)
        if not c.biased:
            return MFConfig(**common)  # unbiased ALS is plain MF (r = u . v, like "mf")
        return BiasedMFConfig(**common, use_bias=True, bias_l2=c.regularization)

    #: Under horovodrun a sharded source is read per rank (tfmf.runner.reads_per_rank).
    distributed_rows = True

    def _solver(self, train: sp.csr_matrix, mu: float = 0.0, local_rows: bool = False
                ) -> ALSSolver:
        c = self.config
        return ALSSolver(train, regularization=c.regularization, weighted_lambda=c.weighted_lambda,
                         alpha=c.alpha if self.implicit else None,
                         biased=not self.implicit and c.biased, mu=mu, chunk_size=c.chunk_size,
                         solver=c.solver, cg_steps=c.cg_steps, local_rows=local_rows)

    def _biased(self) -> bool:
        return isinstance(self.model, BiasedMatrixFactorization)

    def _mu(self) -> float:
        return float(self.model.global_mean.numpy()) if self._biased() else 0.0

    def fit(self, train: InteractionData, train_config: TrainConfig | None = None, *,
            validation: InteractionData | None = None, run_dir=None, callbacks=(),
            resume: bool = False):
        """Alternates ``config.iterations`` user and item solves, one sweep per epoch.

        Of ``train_config``, ``epochs`` is replaced by ``config.iterations`` and ``precision``
        by float32; ``seed`` is ``config.seed`` when given. History rows have ``loss`` and its
        components, train ``rmse`` (explicit), ``val_*`` when ``validation`` is given,
        ``solve_seconds`` and ``seconds``. Checkpoints, resume, callbacks and early stopping
        are the epoch loop's (:func:`tfmf.training.fit.fit`).
        """
        c = self.config
        cfg = dataclasses.replace(train_config or TrainConfig(), precision="float32",
                                  epochs=c.iterations)
        if c.seed is not None:
            cfg = dataclasses.replace(cfg, seed=c.seed)
        self._begin(train, cfg)
        self.model = self.build_model(train, cfg)  # its initializer gives the starting factors
        local = train.partition is not None
        if local and self._biased():
            # This rank's rows only: the global mean is the ranks' pooled mean.
            from tfmf import distributed

            total, count = distributed.sum_over_ranks([float(np.sum(train.values, dtype=np.float64)),
                                                       train.nnz], "als_global_mean")
            self.model.global_mean.assign(total / max(1.0, count))
        sweeper = ALSSweeps(self.model, self._solver(self._seen, self._mu(), local),
                            biased=self._biased(), implicit=self.implicit)
        compile_model(sweeper, cfg, steps_per_epoch=1, run_eagerly=True)
        return self.fit_keras(sweep_dataset(), cfg, steps_per_epoch=1, validation=validation,
                              run_dir=run_dir, callbacks=callbacks, resume=resume, model=sweeper)

    # ------------------------------------------------------------------ fold-in
    def fold_in(self, user_items: sp.csr_matrix) -> tuple[tf.Tensor, tf.Tensor | None]:
        """(factors [b, k], biases [b] or None) of new users; exact (Cholesky) ridge solves
        with the training lambda rule against the fixed item factors."""
        m = self.model
        bi = m.item_bias.embeddings[:, 0] if self._biased() else None
        # A solver without training rows carries the lambda rule, alpha and bias handling.
        solver = self._solver(sp.csr_matrix((0, self.n_items), dtype=np.float32), self._mu())
        # Exact solves: CG from zero (there is no previous estimate) would need many steps.
        return solver.fold_in(user_items, m.item_factors, bi, solver="cholesky")

    def recalculate_user(self, user_items: sp.csr_matrix) -> np.ndarray:
        """Factors float32 [b, factors] of new users from their interactions (fold-in).

        One ridge system per row against the trained item factors, with the same lambda rule,
        confidence (iALS) and Gramian as training; biased ALS also solves each row's bias
        (used by :meth:`score`).
        """
        return self.fold_in(user_items)[0].numpy()


@register("als")
class ALS(_ALSFit, FactorRecommender):
    """Explicit-rating (biased) matrix factorization fitted by alternating least squares."""

    config_class = ALSConfig


@register("ials")
class IALS(_ALSFit, FactorRecommender):
    """Weighted ALS for implicit feedback (Hu et al. 2008) with the Gramian trick."""

    config_class = IALSConfig
    task = "implicit"
    implicit = True
    monitor = "val_ndcg@100"
    monitor_mode = "max"
