"""EASE (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data").

Closed form: with the item Gram matrix G = X^T X + lambda I and P = G^{-1},
B = I - P / diag(P) (column-wise), i.e. B_ij = -P_ij / P_jj off the diagonal and B_jj = 0.
Scores of any user (known or folded in) are ``x_u @ B``. Memory is O(n_items^2): ML-20M's 20k
items need one 1.6 GB float32 matrix, not catalogues of millions.

How the n x n work is done (the whole cost of a fit; every step works in place on one matrix):

1. **Gram assembly.** ``X^T X`` costs ``sum_u nnz_u^2`` as a sparse product, but a user who
   touched a large share of the catalogue costs ``nnz_u^2`` there and only ``n^2`` multiply-adds
   at dense-GEMM speed (tens of GFLOP/s vs ~1e8 sparse products/s). Users with more than
   ``DENSE_USER_SHARE`` of the items are therefore gathered into a dense block ``D`` and added as
   ``D^T D`` (GEMM, row block by row block); the rest is a sparse product written straight into
   the dense rows of G (no sparse n x n intermediate).
2. **Inverse.** G is symmetric positive definite. Three solvers give the same P:

   * ``lapack``: Cholesky ``potrf`` then ``potri`` (P from the factor: n^3 flops in all, half of
     an LU inverse's 2 n^3, and no identity right-hand side). OpenBLAS's *threaded* ``potrf``
     segfaults on SPD matrices of order >= 16,000 on some CPUs (its parallel SYRK), so both
     LAPACK calls run with BLAS limited to one thread (threadpoolctl, around these calls only).
   * ``blocked``: Schur-complement recursion built from GEMMs, which are safe multithreaded::

         G = [[A, C], [C^T, D]],  W = A^{-1} C,  S = D - C^T W,
         P = [[A^{-1} + W S^{-1} W^T, -W S^{-1}], [-(W S^{-1})^T, S^{-1}]]

     with A^{-1} and S^{-1} computed recursively, leaves of order <= ``leaf`` by ``lapack``.
     4/3 n^3 flops, all in threaded GEMM (single-threaded LAPACK only on small leaves).
   * ``tensorflow``: ``tf.linalg.cholesky`` + ``tf.linalg.cholesky_solve`` on the device in
     use, so a GPU runs it unchanged.

   ``solver: auto`` picks ``tensorflow`` when TensorFlow sees a GPU, else :data:`CPU_SOLVER`
   (the one that measured fastest here; see docs/BENCHMARKS.md, "speed-ease").
3. **Weights.** ``B = -P / diag(P)`` column-wise with a zero diagonal, in place.

**EDLAE** (Steck 2020, "Autoencoders that don't overfit towards the Identity"): training the
same zero-diagonal item-item model as a denoising autoencoder that drops each input entry with
probability p (emphasis on the dropped entries) marginalizes, in closed form, into EASE with a
per-item penalty: ``G = X^T X + Lambda`` with ``Lambda = l2 I + p / (1 - p) diagMat(X^T X)``.
Popular items (large ``G_jj``) are shrunk more, which a single lambda cannot do. ``dropout: 0``
is plain EASE. The cost is one extra pass over the diagonal.

float32 halves memory and (on CPUs with AVX-512) the time; with the penalty lambda of EASE
(hundreds) G is well conditioned and float32 keeps the float64 top-K (measured in the
``speed-ease`` suite).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from tfmf.config import check
from tfmf.data.interactions import InteractionData
from tfmf.models.base import Recommender
from tfmf.registry import register

SOLVERS = ("auto", "lapack", "blocked", "tensorflow")
#: The CPU solver ``auto`` selects: measured fastest on the benchmark machine (speed-ease,
#: ML-20M shape: lapack 277 s, blocked 503 s, numpy's float64 inverse 1,273 s; on 2 shared
#: cores the recursion's extra 1/3 of flops is not paid back by its second thread).
CPU_SOLVER = "lapack"
#: Users with more than this share of the catalogue go to the dense part of the Gram assembly.
DENSE_USER_SHARE = 0.05
#: Order of the diagonal blocks the ``blocked`` solver hands to single-threaded LAPACK.
LEAF = 2048
#: Rows of G assembled per step (bounds the sparse/dense temporaries to ROW_BLOCK x n).
ROW_BLOCK = 1024


@dataclass
class EASEConfig:
    """Hyperparameters of EASE.

    Attributes:
      l2: the L2 penalty lambda added to the Gram diagonal (Steck used 500 on ML-20M;
        ML-100K-sized data prefers a few hundred too).
      dropout: EDLAE's dropout probability p (module docstring): adds
        ``p / (1 - p) * (X^T X)_jj`` to the Gram diagonal; 0 is plain EASE.
      binarize: use 1.0 for every interaction instead of its value.
      dtype: float32 (half the memory and time; same top-K as float64 at EASE's penalties) or
        float64.
      solver: auto (TensorFlow on a GPU, else the fastest CPU solver), lapack (Cholesky +
        potri, single BLAS thread), blocked (Schur-complement recursion on threaded GEMMs), or
        tensorflow (tf.linalg on the device in use).
    """

    l2: float = 500.0
    dropout: float = 0.0
    binarize: bool = True
    dtype: str = "float32"
    solver: str = "auto"

    def validate(self, key: str) -> None:
        check(self.l2 > 0, f"{key}.l2", "must be > 0")
        check(0.0 <= self.dropout < 1.0, f"{key}.dropout", "must be in [0, 1)")
        check(self.dtype in ("float32", "float64"), f"{key}.dtype", "must be float32 or float64")
        check(self.solver in SOLVERS, f"{key}.solver", f"must be one of {', '.join(SOLVERS)}")


# --------------------------------------------------------------------------- Gram assembly
def item_gram(x: sp.csr_matrix, dtype: str | np.dtype, l2: float = 0.0,
              dense_share: float = DENSE_USER_SHARE, row_block: int = ROW_BLOCK) -> np.ndarray:
    """Dense ``X^T X + l2 I`` (C order, ``dtype``) without a sparse n x n intermediate.

    Args:
      x: users x items CSR matrix.
      dtype: float32 or float64 of the result.
      l2: added to the diagonal.
      dense_share: users with more than ``dense_share * n_items`` interactions are added by
        dense GEMM (see the module docstring); 1.0 disables that.
      row_block: rows of G per step.

    Returns:
      float array [n_items, n_items].
    """
    dtype = np.dtype(dtype)
    x = sp.csr_matrix(x, dtype=dtype)
    n = x.shape[1]
    nnz_u = np.diff(x.indptr)
    heavy = nnz_u > dense_share * n
    light = x[~heavy] if heavy.any() else x
    light_t = light.T.tocsr()
    dense = x[heavy].toarray() if heavy.any() else None  # [h, n], h is small by construction
    g = np.empty((n, n), dtype)
    for i0 in range(0, n, row_block):
        i1 = min(n, i0 + row_block)
        (light_t[i0:i1] @ light).toarray(out=g[i0:i1])
        if dense is not None:
            g[i0:i1] += dense[:, i0:i1].T @ dense
    g[np.diag_indices(n)] += dtype.type(l2)
    return g


# --------------------------------------------------------------------------- SPD inverses
def _symmetrize_from_upper_f(g: np.ndarray, block: int = 2048) -> None:
    """LAPACK wrote one triangle (its upper in Fortran order = our lower in C order): mirror it
    into the other, block by block (temporaries of block x n, never a second n x n)."""
    n = g.shape[0]
    for j0 in range(0, n, block):
        j1 = min(n, j0 + block)
        # Rows j0:j1 right of the diagonal block <- columns j0:j1 below it.
        g[j0:j1, j1:] = g[j1:, j0:j1].T
        d = g[j0:j1, j0:j1]
        d[...] = np.tril(d) + np.tril(d, -1).T


def spd_inverse_lapack(g: np.ndarray) -> np.ndarray:
    """Inverse of the SPD matrix ``g`` in place: ``potrf`` + ``potri`` with one BLAS thread.

    One thread because OpenBLAS's threaded Cholesky segfaults at orders >= 16,000 on this
    class of CPU (see the module docstring); the limit covers these two calls only.

    Raises:
      np.linalg.LinAlgError: g is not positive definite.
    """
    from scipy.linalg import lapack
    from threadpoolctl import threadpool_limits

    a = g.T  # C-order g is F-order g.T == g: LAPACK works on it without a copy
    potrf, potri = lapack.get_lapack_funcs(("potrf", "potri"), (a,))
    with threadpool_limits(1, user_api="blas"):
        c, info = potrf(a, lower=False, overwrite_a=True, clean=False)
        if info != 0:
            raise np.linalg.LinAlgError(f"Gram matrix not positive definite (potrf info={info})")
        c, info = potri(c, lower=False, overwrite_c=True)
        if info != 0:
            raise np.linalg.LinAlgError(f"potri failed (info={info})")
    if not np.shares_memory(c, g):  # only for non-contiguous views (blocked solver leaves)
        g[...] = c.T
    _symmetrize_from_upper_f(g)
    return g


def spd_inverse_blocked(g: np.ndarray, leaf: int = LEAF) -> np.ndarray:
    """Inverse of the SPD matrix ``g`` in place by Schur-complement recursion on GEMMs.

    Extra memory: n^2 / 2 at the top level (W and one product), less below.
    """
    n = g.shape[0]
    if n <= leaf:
        if g.flags.c_contiguous:
            return spd_inverse_lapack(g)
        tmp = np.ascontiguousarray(g)
        g[...] = spd_inverse_lapack(tmp)
        return g
    h = n // 2
    a, c, d = g[:h, :h], g[:h, h:], g[h:, h:]
    spd_inverse_blocked(a, leaf)          # a <- A^-1
    w = a @ c                             # W = A^-1 C              [h, m]
    d -= c.T @ w                          # d <- S = D - C^T W
    spd_inverse_blocked(d, leaf)          # d <- S^-1
    c[...] = w @ d                        # c <- W S^-1  (C itself is no longer needed)
    for r0 in range(0, h, ROW_BLOCK):     # a += (W S^-1) W^T, row blocks bound the temporary
        r1 = min(h, r0 + ROW_BLOCK)
        a[r0:r1] += c[r0:r1] @ w.T
    del w
    np.negative(c, out=c)
    g[h:, :h] = c.T
    return g


def spd_inverse_tf(g: np.ndarray) -> np.ndarray:
    """Inverse of the SPD matrix ``g`` with TensorFlow (GPU when present); returns a new array.

    Cholesky then ``cholesky_solve`` against the identity on the device; host memory holds g
    and the result.
    """
    import tensorflow as tf

    n = g.shape[0]
    gt = tf.convert_to_tensor(g)
    chol = tf.linalg.cholesky(gt)
    del gt
    if not bool(tf.reduce_all(tf.math.is_finite(tf.linalg.diag_part(chol)))):
        raise np.linalg.LinAlgError("Gram matrix not positive definite (tf.linalg.cholesky)")
    p = tf.linalg.cholesky_solve(chol, tf.eye(n, dtype=chol.dtype))
    del chol
    return p.numpy()


def gpu_available() -> bool:
    """Whether TensorFlow sees a GPU (imports TensorFlow)."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def resolve_solver(solver: str) -> str:
    """``auto`` -> ``tensorflow`` with a GPU, else :data:`CPU_SOLVER`; other names unchanged."""
    if solver != "auto":
        return solver
    return "tensorflow" if gpu_available() else CPU_SOLVER


def spd_inverse(g: np.ndarray, solver: str = "auto") -> np.ndarray:
    """Inverse of SPD ``g`` by ``solver`` (in place except ``tensorflow``); see the module doc."""
    solver = resolve_solver(solver)
    if solver == "lapack":
        return spd_inverse_lapack(g)
    if solver == "blocked":
        return spd_inverse_blocked(g)
    if solver == "tensorflow":
        return spd_inverse_tf(g)
    raise ValueError(f"unknown solver {solver!r}")


def ease_weights(p: np.ndarray) -> np.ndarray:
    """``B = -P / diag(P)`` column-wise with a zero diagonal, in place on ``p``."""
    diag = np.diag(p).copy()
    p /= -diag[None, :]
    np.fill_diagonal(p, 0.0)
    return p


# --------------------------------------------------------------------------- the model
@register("ease")
class EASE(Recommender):
    """Item-item linear autoencoder with a zero diagonal, solved in closed form."""

    config_class = EASEConfig
    task = "implicit"

    def fit(self, train: InteractionData, train_config=None, *, validation=None, run_dir=None,
            callbacks=(), resume=False):
        from tfmf import memory

        self._remember_training_data(train)
        c = self.config
        solver = resolve_solver(c.solver)
        memory.preflight(memory.ease_fit_bytes(train.n_items, c.dtype, solver, train.nnz,
                                               DENSE_USER_SHARE),
                         f"EASE fit ({train.n_items:,} items, {c.dtype}, solver {solver})",
                         memory.ease_key(c.dtype))
        g = item_gram(self._prepare(self._seen), c.dtype, c.l2)
        if c.dropout > 0:
            # EDLAE: the Gram diagonal is X^T X's plus l2; scale its X^T X part by 1/(1-p).
            d = np.diag_indices(g.shape[0])
            g[d] += (g[d] - g.dtype.type(c.l2)) * g.dtype.type(c.dropout / (1.0 - c.dropout))
        p = spd_inverse(g, solver)
        del g
        b = ease_weights(p)
        self.B = b if b.dtype == np.float32 else b.astype(np.float32)
        self.solver_used = solver
        return self

    def _prepare(self, rows) -> sp.csr_matrix:
        x = sp.csr_matrix(rows, dtype=np.float32)
        if self.config.binarize:
            x = x.copy()
            x.data[:] = 1.0
        return x

    def _rows(self, users, user_items) -> sp.csr_matrix:
        if user_items is not None:
            return self._prepare(user_items)
        if users is None:
            raise ValueError("give users (known) or user_items (fold-in)")
        return self._prepare(self._seen[np.asarray(users)])

    def score(self, users=None, user_items=None) -> np.ndarray:
        """``rows @ B`` for fold-in rows or the training rows of known users."""
        from tfmf import memory

        n = len(users) if user_items is None else user_items.shape[0]
        memory.preflight(memory.score_block_bytes(n, self.n_items),
                         f"scoring {n:,} users x {self.n_items:,} items", "eval.batch_size")
        return np.asarray(self._rows(users, user_items) @ self.B, dtype=np.float32)

    def recalculate_user(self, user_items) -> np.ndarray:
        """EASE has no latent space: a user is their (binarized) item row, returned dense."""
        return self._prepare(user_items).toarray()

    def export_spec(self):
        import tensorflow as tf

        from tfmf.models.serving import RowSpec

        B = tf.Variable(self.B, trainable=False, name="B")
        binarize = self.config.binarize
        return RowSpec(lambda x: tf.sparse.sparse_dense_matmul(
            tf.SparseTensor(x.indices, tf.ones_like(x.values), x.dense_shape) if binarize else x,
            B), [B])

    def _save_state(self, path):
        np.save(os.path.join(path, "B.npy"), self.B)

    def _load_state(self, path):
        self.B = np.load(os.path.join(path, "B.npy"))
