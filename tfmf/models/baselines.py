"""Non-learned baselines: the bias (global/user/item mean) predictor and popularity.

EASE lives in :mod:`tfmf.models.ease`.
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


@dataclass
class BiasBaselineConfig:
    """Damped-mean baseline r_ui = mu + b_u + b_i (Koren 2010, sec. 2.1).

    Attributes:
      reg_user / reg_item: shrinkage of the user / item offsets toward 0.
      iterations: alternating passes (b_i given b_u, then b_u given b_i).
    """

    reg_user: float = 15.0
    reg_item: float = 10.0
    iterations: int = 10

    def validate(self, key: str) -> None:
        check(self.reg_user >= 0, f"{key}.reg_user", "must be >= 0")
        check(self.reg_item >= 0, f"{key}.reg_item", "must be >= 0")
        check(self.iterations >= 1, f"{key}.iterations", "must be >= 1")


@register("bias_baseline")
class BiasBaseline(Recommender):
    """Global mean + regularized user and item offsets, fit in closed form."""

    config_class = BiasBaselineConfig
    task = "explicit"

    def fit(self, train: InteractionData, train_config=None, *, validation=None, run_dir=None,
            callbacks=(), resume=False):
        self._remember_training_data(train)
        c = self.config
        u, i, r = train.users, train.items, train.values.astype(np.float64)
        self.mu = float(r.mean())
        self.bu = np.zeros(train.n_users)
        self.bi = np.zeros(train.n_items)
        cnt_u = np.bincount(u, minlength=train.n_users)
        cnt_i = np.bincount(i, minlength=train.n_items)
        for _ in range(c.iterations):
            self.bi = np.bincount(i, r - self.mu - self.bu[u], train.n_items) / (cnt_i + c.reg_item)
            self.bu = np.bincount(u, r - self.mu - self.bi[i], train.n_users) / (cnt_u + c.reg_user)
        self.rating_scale = train.rating_scale
        return self

    def predict(self, users, items):
        return (self.mu + self.bu[np.asarray(users)] + self.bi[np.asarray(items)]).astype(np.float32)

    def score(self, users=None, user_items=None):
        from tfmf import memory

        n = len(users) if users is not None else user_items.shape[0]
        memory.preflight(memory.score_block_bytes(n, self.n_items),
                         f"scoring {n:,} users x {self.n_items:,} items", "eval.batch_size")
        bu = self.bu[np.asarray(users)] if users is not None else np.zeros(n)
        return (self.mu + bu[:, None] + self.bi[None, :]).astype(np.float32)

    def export_spec(self):
        from tfmf.models.serving import FactorSpec

        return FactorSpec.with_offsets(np.zeros((self.n_users, 0)), np.zeros((self.n_items, 0)),
                                       self.mu + self.bu, self.bi)

    def _save_state(self, path):
        np.savez(os.path.join(path, "state.npz"), mu=self.mu, bu=self.bu, bi=self.bi,
                 scale=np.array(self.rating_scale or (np.nan, np.nan), np.float64))

    def _load_state(self, path):
        with np.load(os.path.join(path, "state.npz")) as z:
            self.mu, self.bu, self.bi = float(z["mu"]), z["bu"], z["bi"]
            s = z["scale"]
            self.rating_scale = None if np.isnan(s).any() else (float(s[0]), float(s[1]))


@dataclass
class PopularityConfig:
    """Items ranked by how many users interacted with them (same list for everyone)."""

    def validate(self, key: str) -> None:
        pass


@register("popularity")
class Popularity(Recommender):
    """Most-popular items; the floor every personalised model must beat."""

    config_class = PopularityConfig
    task = "implicit"

    def fit(self, train: InteractionData, train_config=None, *, validation=None, run_dir=None,
            callbacks=(), resume=False):
        self._remember_training_data(train)
        self.counts = np.bincount(train.items, minlength=train.n_items).astype(np.float32)
        return self

    def score(self, users=None, user_items: sp.csr_matrix | None = None):
        n = len(users) if users is not None else user_items.shape[0]
        return np.broadcast_to(self.counts, (n, self.n_items))

    def recalculate_user(self, user_items):
        return np.zeros((user_items.shape[0], 0), np.float32)

    def export_spec(self):
        from tfmf.models.serving import FactorSpec

        return FactorSpec.with_offsets(np.zeros((self.n_users, 0)), np.zeros((self.n_items, 0)),
                                       None, self.counts)

    def _save_state(self, path):
        np.save(os.path.join(path, "counts.npy"), self.counts)

    def _load_state(self, path):
        self.counts = np.load(os.path.join(path, "counts.npy"))
