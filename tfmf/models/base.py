"""The recommender API shared by every model and backend (fit, predict, score, recommend,
recalculate_user, save/load), in the spirit of the ``implicit`` library.

Indices everywhere are the contiguous ones of :class:`~tfmf.data.InteractionData`; raw ids are
mapped at the edges (CLI, export) with the id maps saved next to the model.
"""
from __future__ import annotations

import abc
import json
import os
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from tfmf import memory
from tfmf.data.interactions import InteractionData


class Recommender(abc.ABC):
    """Base class of every registered model.

    Subclasses set ``config_class`` (a dataclass of hyperparameters, the single source of their
    defaults) and implement ``fit`` and ``score``; explicit-rating models also ``predict``.

    Args:
      config: an instance of ``config_class`` (None: its defaults).
      **overrides: field overrides applied on top of ``config``.
    """

    config_class: ClassVar[type]
    name: ClassVar[str] = ""
    #: "explicit" (predicts ratings), "implicit" (ranks items) or "both".
    task: ClassVar[str] = "both"

    def __init__(self, config: Any = None, **overrides: Any):
        import dataclasses

        cfg = config if config is not None else self.config_class()
        if overrides:
            cfg = dataclasses.replace(cfg, **overrides)
        if hasattr(cfg, "validate"):
            cfg.validate("model")
        self.config = cfg
        self.n_users = 0
        self.n_items = 0
        # Interactions seen at fit time, used to filter known users' recommendations.
        self._seen: sp.csr_matrix | None = None
        self.history: list[dict] = []

    # ------------------------------------------------------------------ training
    @abc.abstractmethod
    def fit(self, train: InteractionData, train_config=None, *, validation: InteractionData | None = None,
            run_dir: str | None = None, callbacks=(), resume: bool = False) -> "Recommender":
        """Fits the model on ``train``.

        Args:
          train: training interactions.
          train_config: a :class:`tfmf.config.TrainConfig` (None: defaults).
          validation: held-out *validation* interactions (or a StrongSplit of validation
            users) for per-epoch metrics, early stopping and restore_best -- never the test
            part.
          run_dir: directory (or :class:`tfmf.rundir.RunDir`) for checkpoints, history and
            TensorBoard logs (None: none).
          callbacks: Keras callbacks.
          resume: continue from the last checkpoint in ``run_dir``.

        Returns:
          self.
        """

    def validation_metrics(self, validation) -> dict[str, float]:
        """Per-epoch validation metrics (keys ``val_*``): RMSE/MAE of an explicit model on
        validation ratings, NDCG@100/Recall@20 on validation users (or held-out items) else."""
        from tfmf.evaluation import validation_metrics

        return validation_metrics(self, validation,
                                  batch_size=getattr(self.config, "eval_batch_size", 1024))

    @memory.large_blocks_unmapped()
    def _remember_training_data(self, train: InteractionData) -> None:
        self.n_users, self.n_items = train.n_users, train.n_items
        self._seen = train.to_csr()

    # ------------------------------------------------------------------ inference
    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Predicted ratings for (user, item) index pairs (explicit models)."""
        raise NotImplementedError(f"{type(self).__name__} does not predict ratings")

    @abc.abstractmethod
    def score(self, users: np.ndarray | None = None, user_items: sp.csr_matrix | None = None
              ) -> np.ndarray:
        """Scores of every item for a batch of users: float32 [batch, n_items].

        Args:
          users: known user indices (None when scoring fold-in rows).
          user_items: CSR rows [batch, n_items] of interactions to fold in (unseen users), or
            to condition on (Mult-VAE always encodes from rows).

        Returns:
          float32 array [batch, n_items]. Callers batch users so no all-users matrix exists.
        """

    def recalculate_user(self, user_items: sp.csr_matrix) -> np.ndarray:
        """Latent representation of new users from their interactions (fold-in)."""
        raise NotImplementedError(f"{type(self).__name__} has no fold-in")

    def export_spec(self):
        """How :mod:`tfmf.export` writes this fitted model as a SavedModel.

        Returns:
          A ``tfmf.export.FactorSpec`` (scores are a dot product of user and item vectors) or
          ``tfmf.export.RowSpec`` (scores are a TF function of interaction rows); None when
          the model cannot be exported.
        """
        return None

    def recommend(self, users: np.ndarray | None = None, k: int = 10,
                  user_items: sp.csr_matrix | None = None, filter_seen: bool = True,
                  batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item indices and scores per user, excluding already-seen items.

        Args:
          users: known user indices; their training interactions are filtered.
          k: how many items; capped at the number of items.
          user_items: interactions of new users (fold-in), also filtered when filter_seen.
          filter_seen: drop seen items from the ranking.
          batch_size: users per scoring batch.

        Returns:
          (items int32 [n, k'], scores float32 [n, k']) with k' = min(k, n_items).
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if users is None and user_items is None:
            raise ValueError("give users (known) or user_items (fold-in)")
        n = len(users) if users is not None else user_items.shape[0]
        k = min(int(k), self.n_items)
        out_items = np.empty((n, k), np.int32)
        out_scores = np.empty((n, k), np.float32)
        for start in range(0, n, batch_size):
            sl = slice(start, min(n, start + batch_size))
            u = None if users is None else np.asarray(users)[sl]
            rows = None if user_items is None else user_items[sl]
            scores = np.array(self.score(u, rows), dtype=np.float32, copy=True)
            if filter_seen:
                seen = rows if rows is not None else self._seen[u]
                if seen is not None and seen.nnz:
                    r, c = seen.nonzero()
                    scores[r, c] = -np.inf
            out_items[sl], out_scores[sl] = top_k(scores, k)
        return out_items, out_scores

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Writes the model to directory ``path`` (config + weights/arrays)."""
        from tfmf.config import to_dict

        from tfmf.fileio import atomic_write_json

        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        meta = {"model": self.name, "config": to_dict(self.config),
                "n_users": self.n_users, "n_items": self.n_items}
        self._save_state(path)
        if self._seen is not None:
            sp.save_npz(os.path.join(path, "seen.npz"), self._seen)
        atomic_write_json(os.path.join(path, "recommender.json"), meta)  # last: marks complete

    @staticmethod
    def load(path: str | os.PathLike) -> "Recommender":
        """Loads any registered model saved with :meth:`save`."""
        from tfmf import registry
        from tfmf.config import from_dict

        path = os.fspath(path)
        with open(os.path.join(path, "recommender.json")) as fh:
            meta = json.load(fh)
        cls = registry.get(meta["model"])
        obj = cls(from_dict(cls.config_class, meta["config"], "model"))
        obj.n_users, obj.n_items = meta["n_users"], meta["n_items"]
        seen = os.path.join(path, "seen.npz")
        obj._seen = sp.load_npz(seen).tocsr() if os.path.exists(seen) else None
        obj._load_state(path)
        return obj

    def _save_state(self, path: str) -> None:
        raise NotImplementedError

    def _load_state(self, path: str) -> None:
        raise NotImplementedError


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-k of a [b, n] array, sorted descending; ties broken by lower index."""
    b, n = scores.shape
    k = min(k, n)
    if k < n:
        # argpartition alone picks an arbitrary subset of the ties at the k-th value; keep
        # everything above it plus the lowest-index ties (tf.math.top_k's rule, which the
        # ranking metrics and the SavedModel use).
        s = np.where(np.isnan(scores), -np.inf, scores)
        kth = -np.partition(-s, k - 1, axis=1)[:, k - 1:k]
        above, tie = s > kth, s == kth
        need = k - above.sum(axis=1, keepdims=True)
        keep = above | (tie & (np.cumsum(tie, axis=1) <= need))
        part = np.nonzero(keep)[1].reshape(b, k)
    else:
        part = np.broadcast_to(np.arange(n), (b, n)).copy()
    part_scores = np.take_along_axis(scores, part, axis=1)
    # lexsort: primary key -score, secondary key index (stable, deterministic ties).
    order = np.lexsort((part, -part_scores), axis=1)
    idx = np.take_along_axis(part, order, axis=1).astype(np.int32)
    return idx, np.take_along_axis(part_scores, order, axis=1).astype(np.float32)
