"""How a fitted model is served: the two scorer shapes :mod:`tfmf.export` can write.

A model's :meth:`~tfmf.models.base.Recommender.export_spec` returns one of these; they live
here, below the models, so models never import the exporter (which sits above the runner).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np


@dataclass
class FactorSpec:
    """Dot-product scorer: ``score(u, i) = user_vectors[u] . item_vectors[i]``.

    Attributes:
      user_vectors: float32 [n_users, d].
      item_vectors: float32 [n_items, d].
    """

    user_vectors: np.ndarray
    item_vectors: np.ndarray

    @classmethod
    def with_offsets(cls, user_factors, item_factors, user_offsets=None, item_offsets=None
                     ) -> "FactorSpec":
        """``P Q^T + a 1^T + 1 b^T`` as a single dot product of augmented vectors.

        Appends ``[a_u, 1]`` to user rows and ``[1, b_i]`` to item rows, so
        ``[p, a, 1] . [q, 1, b] = p . q + a + b`` (global mean and user bias go in ``a``).

        Args:
          user_factors: [n_users, d] (d may be 0).
          item_factors: [n_items, d].
          user_offsets: [n_users] or [n_users, 1] per-user additive term (None: 0).
          item_offsets: [n_items] or [1, n_items] per-item additive term (None: 0).
        """
        P = np.asarray(user_factors, np.float32)
        Q = np.asarray(item_factors, np.float32)
        n_u, n_i = P.shape[0], Q.shape[0]
        a = np.zeros(n_u, np.float32) if user_offsets is None else \
            np.asarray(user_offsets, np.float32).reshape(n_u)
        b = np.zeros(n_i, np.float32) if item_offsets is None else \
            np.asarray(item_offsets, np.float32).reshape(n_i)
        ones_u, ones_i = np.ones((n_u, 1), np.float32), np.ones((n_i, 1), np.float32)
        return cls(np.hstack([P, a[:, None], ones_u]), np.hstack([Q, ones_i, b[:, None]]))


@dataclass
class RowSpec:
    """Scorer of interaction rows.

    Attributes:
      score_rows: TF-traceable ``SparseTensor float32 [b, n_items] -> float32 [b, n_items]``.
      variables: every variable ``score_rows`` reads (saved with the SavedModel).
    """

    score_rows: Callable
    variables: Sequence = field(default_factory=list)
