"""Train/test splits (Surprise / scikit-learn style). Every split keeps the parent's id space.

Interaction splits (:class:`KFold`, :func:`holdout`, :func:`temporal_split`,
:func:`official_folds`) yield ``(train, test)`` InteractionData pairs. User splits
(:func:`strong_generalization`, :func:`user_folds`) yield :class:`StrongSplit`: training users'
interactions, and for held-out users a per-user fold-in / target split. Subsets keep rows in the
parent's order; all randomness is seeded.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from tfmf.config import SplitConfig
from tfmf.data.interactions import InteractionData
from tfmf.errors import DataError

Pair = tuple[InteractionData, InteractionData]


@dataclass
class StrongSplit:
    """A strong-generalization split.

    Attributes:
      train: all interactions of the training users.
      fold_in: the held-out users' interactions shown to the model (e.g. to infer a user
        embedding).
      target: the held-out users' remaining interactions, to be predicted.
      test_users: sorted int32 indices of the held-out users.
    """

    train: InteractionData
    fold_in: InteractionData
    target: InteractionData
    test_users: np.ndarray


def _mask_split(data: InteractionData, test_mask: np.ndarray) -> Pair:
    return data.subset(~test_mask), data.subset(test_mask)


def _check_fraction(value: float, name: str) -> None:
    if not 0.0 < value < 1.0:
        raise DataError(f"{name} must be in (0, 1), got {value}")


class KFold:
    """K folds over interactions: every interaction is in exactly one test fold.

    Args:
      n_splits: number of folds (>= 2).
      shuffle: permute interactions (seeded) before cutting folds.
      seed: RNG seed.
    """

    def __init__(self, n_splits: int = 5, shuffle: bool = True, seed: int = 0):
        if n_splits < 2:
            raise DataError(f"n_splits must be >= 2, got {n_splits}")
        self.n_splits, self.shuffle, self.seed = n_splits, shuffle, seed

    def split(self, data: InteractionData) -> Iterator[Pair]:
        """Yields (train, test) for each fold; fold sizes differ by at most one."""
        if data.nnz < self.n_splits:
            raise DataError(f"{data.nnz} interactions cannot make {self.n_splits} folds")
        order = (np.random.default_rng(self.seed).permutation(data.nnz) if self.shuffle
                 else np.arange(data.nnz))
        fold_of = np.empty(data.nnz, np.int32)
        position = np.arange(data.nnz, dtype=np.int64)
        position *= self.n_splits
        position //= data.nnz
        fold_of[order] = position
        del position, order
        for k in range(self.n_splits):
            yield _mask_split(data, fold_of == k)


def holdout(data: InteractionData, test_fraction: float = 0.2, seed: int = 0) -> Pair:
    """A random (train, test) split with ``round(test_fraction * nnz)`` test interactions."""
    _check_fraction(test_fraction, "test_fraction")
    n_test = int(round(test_fraction * data.nnz))
    mask = np.zeros(data.nnz, bool)
    mask[np.random.default_rng(seed).permutation(data.nnz)[:n_test]] = True
    return _mask_split(data, mask)


def official_folds(names=("u1", "u2", "u3", "u4", "u5"),
                   data_dir: str | os.PathLike | None = None,
                   data: InteractionData | None = None) -> Iterator[Pair]:
    """The official ML-100K folds (u1..u5, ua, ub) as (train, test) splits of ``data``.

    ``data`` (default: u.data, loaded once) keeps its id space and any transform applied to it
    (binarize, filters); see :func:`tfmf.data.movielens.load_ml100k_fold`.
    """
    from tfmf.data.movielens import load_ml100k_fold, load_movielens

    if data is None:
        data = load_movielens("ml-100k", data_dir)
    for name in names:
        yield load_ml100k_fold(name, data_dir, data)


_CHUNK = 1 << 22  # rows per vectorized step in the per-row passes (bounds temporaries)


def _rank_within_user(users: np.ndarray, sort_key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int32 rank of each row among its user's rows by sort_key, row count of each user).

    Ties in ``sort_key`` keep row order (lexsort is stable). The rank is filled chunk by
    chunk, so the temporaries are a few bytes per row of one chunk, not of the whole data.
    """
    order = np.lexsort((sort_key, users))
    counts = np.bincount(users, minlength=int(users.max()) + 1 if len(users) else 0)
    starts = np.cumsum(counts) - counts
    rank = np.empty(len(users), np.int32)
    for lo in range(0, len(users), _CHUNK):
        rows = order[lo:lo + _CHUNK]
        rank[rows] = np.arange(lo, lo + len(rows)) - starts[users[rows]]
    return rank, counts


def _rank_at_least(rank: np.ndarray, users: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Bool per row: ``rank >= threshold[user]`` (threshold per user), chunk by chunk."""
    out = np.empty(len(rank), bool)
    for lo in range(0, len(rank), _CHUNK):
        hi = lo + _CHUNK
        np.greater_equal(rank[lo:hi], threshold[users[lo:hi]], out=out[lo:hi])
    return out


def temporal_split(data: InteractionData, test_fraction: float = 0.2,
                   mode: str = "user") -> Pair:
    """Tests on the most recent interactions.

    Args:
      data: interactions with timestamps.
      test_fraction: share held out.
      mode: "user": each user's last ``round(test_fraction * n_u)`` interactions, at least one
        when the user has >= 2 and never all of them; "global": the latest
        ``round(test_fraction * nnz)`` interactions overall (a time cutoff; ties at the cutoff
        are broken by row order).

    Returns:
      (train, test).
    """
    _check_fraction(test_fraction, "test_fraction")
    if data.timestamps is None:
        raise DataError(f"temporal split needs timestamps; {data.name or 'the data'} has none")
    if mode == "global":
        n_test = int(round(test_fraction * data.nnz))
        order = np.argsort(data.timestamps, kind="stable")
        mask = np.zeros(data.nnz, bool)
        mask[order[data.nnz - n_test:]] = True
        return _mask_split(data, mask)
    if mode != "user":
        raise DataError(f"temporal mode must be 'user' or 'global', got {mode!r}")
    # lexsort is stable, so equal timestamps keep row order. Per-user counts: the same
    # arithmetic as per row, on n_users values.
    rank, count = _rank_within_user(data.users, data.timestamps)
    n_test = np.clip(np.rint(test_fraction * count), (count >= 2).astype(np.int64),
                     np.maximum(count - 1, 0))
    return _mask_split(data, _rank_at_least(rank, data.users, count - n_test))


def _fold_in_target(data: InteractionData, test_users: np.ndarray, fold_in_fraction: float,
                    rng: np.random.Generator) -> StrongSplit:
    """Splits data by user; held-out users' rows go fold-in/target at random per user.

    A held-out user with n >= 2 interactions gets ``min(max(1, round(f * n)), n - 1)`` fold-in
    rows (so at least one target); a user with a single interaction is all fold-in.
    """
    held = np.zeros(data.n_users, bool)
    held[test_users] = True
    is_test = held[data.users]
    rank, count = _rank_within_user(data.users, rng.random(data.nnz))
    n_fold_in = np.where(count >= 2, np.clip(np.rint(fold_in_fraction * count), 1, count - 1),
                         count)  # per user
    target = _rank_at_least(rank, data.users, n_fold_in)
    del rank
    target &= is_test
    return StrongSplit(train=data.subset(~is_test), fold_in=data.subset(is_test & ~target),
                       target=data.subset(target),
                       test_users=np.sort(test_users).astype(np.int32))


def _active_users(data: InteractionData) -> np.ndarray:
    return np.flatnonzero(np.bincount(data.users, minlength=data.n_users) > 0)


def strong_generalization(data: InteractionData, test_fraction_users: float = 0.2,
                          fold_in_fraction: float = 0.8, seed: int = 0) -> StrongSplit:
    """Holds out ``round(test_fraction_users * active users)`` users (at least one, not all).

    Args:
      data: interactions.
      test_fraction_users: share of users (with interactions) held out.
      fold_in_fraction: share of a held-out user's items given as fold-in.
      seed: RNG seed.
    """
    _check_fraction(test_fraction_users, "test_fraction_users")
    _check_fraction(fold_in_fraction, "fold_in_fraction")
    rng = np.random.default_rng(seed)
    active = _active_users(data)
    if len(active) < 2:
        raise DataError("strong generalization needs at least 2 users with interactions")
    n_test = int(np.clip(round(test_fraction_users * len(active)), 1, len(active) - 1))
    return _fold_in_target(data, rng.permutation(active)[:n_test], fold_in_fraction, rng)


def user_folds(data: InteractionData, n_folds: int = 5, fold_in_fraction: float = 0.8,
               seed: int = 0) -> Iterator[StrongSplit]:
    """K folds over users: every user with interactions is held out in exactly one fold."""
    _check_fraction(fold_in_fraction, "fold_in_fraction")
    rng = np.random.default_rng(seed)
    active = _active_users(data)
    if n_folds < 2 or len(active) < n_folds:
        raise DataError(f"{len(active)} users cannot make {n_folds} user folds (need >= 2)")
    for fold in np.array_split(rng.permutation(active), n_folds):
        yield _fold_in_target(data, fold, fold_in_fraction, rng)


def first_split(data: InteractionData, cfg: SplitConfig,
                data_dir: str | os.PathLike | None = None) -> Pair | StrongSplit:
    """Only the first fold of :func:`make_splits` (later folds are never built)."""
    return next(iter(make_splits(data, cfg, data_dir=data_dir)))


def make_splits(data: InteractionData, cfg: SplitConfig,
                data_dir: str | os.PathLike | None = None) -> Iterator[Pair | StrongSplit]:
    """Dispatches on ``cfg.kind``.

    Yields:
      ``(train, test)`` pairs for none (all data, test None), holdout, kfold, official and
      temporal; :class:`StrongSplit` for strong (one) and user_folds (``n_folds``).
    """
    kind = cfg.kind
    if kind == "none":
        yield data, None  # nothing held out: train-only runs
    elif kind == "holdout":
        yield holdout(data, cfg.test_fraction, cfg.seed)
    elif kind == "kfold":
        yield from KFold(cfg.n_folds, True, cfg.seed).split(data)
    elif kind == "official":
        yield from official_folds(cfg.folds, data_dir, data)
    elif kind == "temporal":
        yield temporal_split(data, cfg.test_fraction, cfg.temporal_mode)
    elif kind == "strong":
        yield strong_generalization(data, cfg.test_fraction, cfg.fold_in_fraction, cfg.seed)
    elif kind == "user_folds":
        yield from user_folds(data, cfg.n_folds, cfg.fold_in_fraction, cfg.seed)
    else:
        raise DataError(f"unknown split kind {kind!r}")


def carve_validation(fold, *, fraction: float = 0.0, users: float = 0.0,
                     fold_in_fraction: float = 0.8, seed: int = 0):
    """Splits a validation part off a fold's *training* part; the test part is untouched.

    Model selection (per-epoch metrics, early stopping, restore_best, tuning) reads only this
    validation part, so the test part is scored once, at the end.

    Args:
      fold: a (train, test) pair or a StrongSplit.
      fraction: for (train, test) pairs, the share of the training ratings held out at random
        (seeded) as validation ratings; 0: none.
      users: for a StrongSplit, validation users taken from the training users: a count
        (>= 1) or a share of them (< 1); they are split fold-in/target like test users; 0:
        none.
      fold_in_fraction: fold-in share of a validation user's interactions.
      seed: RNG seed (the split's seed gives the same validation part on every run).

    Returns:
      ``(fit_train, validation, test)``: the data to fit on, the validation part
      (InteractionData, StrongSplit, or None) and the fold's test part.
    """
    if isinstance(fold, tuple):
        train, test = fold
        if not fraction:
            return train, None, test
        fit_train, validation = holdout(train, fraction, seed + 7919)
        return fit_train, validation, test
    train, test = fold.train, fold
    if not users:
        return train, None, test
    active = _active_users(train)
    n_val = int(users) if users >= 1 else int(round(users * len(active)))
    if not 1 <= n_val < len(active):
        raise DataError(f"data.split.validation_users={users} leaves {len(active)} training "
                        "users with no room for validation users (need at least 1 and fewer "
                        "than all)")
    rng = np.random.default_rng(seed + 7919)
    validation = _fold_in_target(train, rng.permutation(active)[:n_val], fold_in_fraction, rng)
    return validation.train, validation, test
