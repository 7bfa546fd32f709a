"""EASE (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data").

Closed form: with the item Gram matrix G = X^T X + lambda I and P = G^{-1},
B = I - P / diag(P) (column-wise), i.e. B_ij = -P_ij / P_jj off the diagonal and B_jj = 0.
Scores of any user (known or folded in) are ``x_u @ B``. Memory is O(n_items^2): fine for
ML-20M's 20k items in float32 (1.6 GB), not for catalogues of millions.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from tfmf.config import check
from tfmf.data.interactions import InteractionData
from tfmf.models.base import Recommender
from tfmf.registry import register


@dataclass
class EASEConfig:
    """Hyperparameters of EASE.

    Attributes:
      l2: the L2 penalty lambda added to the Gram diagonal (Steck used 500 on ML-20M;
        ML-100K-sized data prefers a few hundred too).
      binarize: use 1.0 for every interaction instead of its value.
      dtype: float64 (exact) or float32 (half the memory on large catalogues).
    """

    l2: float = 500.0
    binarize: bool = True
    dtype: str = "float64"

    def validate(self, key: str) -> None:
        check(self.l2 > 0, f"{key}.l2", "must be > 0")
        check(self.dtype in ("float32", "float64"), f"{key}.dtype", "must be float32 or float64")


@register("ease")
class EASE(Recommender):
    """Item-item linear autoencoder with a zero diagonal, solved in closed form."""

    config_class = EASEConfig
    task = "implicit"

    def fit(self, train: InteractionData, train_config=None, *, validation=None, run_dir=None,
            callbacks=(), resume=False):
        self._remember_training_data(train)
        c = self.config
        x = self._prepare(self._seen).astype(c.dtype)
        g = (x.T @ x).toarray()
        g[np.diag_indices_from(g)] += c.l2
        # G is symmetric positive definite: invert through its Cholesky factor (in place).
        p = scipy.linalg.cho_solve(scipy.linalg.cho_factor(g, overwrite_a=True),
                                   np.eye(g.shape[0], dtype=g.dtype), overwrite_b=True)
        del g
        b = p / (-np.diag(p))[None, :]
        np.fill_diagonal(b, 0.0)
        self.B = b.astype(np.float32)
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
