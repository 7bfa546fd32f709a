"""Top-K ranking metrics in TensorFlow, computed one batch of users at a time.

Per user with target set T (|T| >= 1) and the top-K list r_1..r_K (ties broken by the lower
item index, as ``tf.math.top_k`` does), with hit_j = [r_j in T] and m = min(K, |T|):

* NDCG@K = sum_j hit_j / log2(j + 1), divided by the ideal DCG sum_{j<=m} 1 / log2(j + 1).
* Recall@K = sum_j hit_j / m (Liang et al. 2018: the min keeps a perfect ranking at 1.0).
* Precision@K = sum_j hit_j / K.
* AP@K = sum_j hit_j * Precision@j / m, so a perfect ranking scores 1.0; MAP@K is its mean
  over users (the normalization of the usual "AP@K" of Kaggle / ml_metrics).

Users without targets are skipped (they count in no mean). Items to exclude (fold-in or
training items) are set to -inf before ranking. No [all users x all items] matrix is ever built:
the largest array is [batch, n_items].
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import tensorflow as tf

from tfmf.data.interactions import InteractionData
from tfmf.data.sparse import csr_rows_coo

from tfmf.config import RANKING_METRICS  # noqa: E402  (single list of names)


def _csr(x) -> sp.csr_matrix:
    m = x.to_csr() if isinstance(x, InteractionData) else sp.csr_matrix(x)
    m.sort_indices()
    return m


def _row_indices(rows: sp.csr_matrix) -> np.ndarray:
    """[nnz, 2] (row, col) int64 indices of a CSR batch."""
    r, c, _ = csr_rows_coo(rows, np.arange(rows.shape[0]))
    return np.stack([r, c], axis=1)


def mask_items(scores: tf.Tensor, exclude: sp.csr_matrix | None) -> tf.Tensor:
    """``scores`` with the nonzero entries of the CSR batch ``exclude`` set to -inf."""
    if exclude is None or exclude.nnz == 0:
        return scores
    idx = _row_indices(exclude)
    return tf.tensor_scatter_nd_update(scores, idx, tf.fill([len(idx)], float("-inf")))


@tf.function(reduce_retracing=True)
def _hits_and_counts(scores: tf.Tensor, target_idx: tf.Tensor, k: int):
    """hits [b, k] float32 (is the j-th ranked item a target) and |T| [b] float32."""
    b = tf.shape(scores)[0]
    targets = tf.scatter_nd(target_idx, tf.ones([tf.shape(target_idx)[0]], tf.bool),
                            tf.cast(tf.shape(scores), tf.int64))
    top = tf.math.top_k(scores, k=k, sorted=True).indices
    hits = tf.cast(tf.gather(targets, top, batch_dims=1), tf.float32)
    n_targets = tf.math.unsorted_segment_sum(
        tf.ones([tf.shape(target_idx)[0]], tf.float32), target_idx[:, 0], b)
    return hits, n_targets


def metrics_from_hits(hits: tf.Tensor, n_targets: tf.Tensor, ks, metrics=RANKING_METRICS
                      ) -> dict[str, tf.Tensor]:
    """Per-user metric values [b] for every K in ``ks`` from ranked hits [b, max(ks)].

    Args:
      hits: float32 [b, K_max], 1.0 where the j-th ranked item is a target.
      n_targets: float32 [b], |T| per user.
      ks: cut-offs (each <= hits.shape[1]; larger ones are clipped to it).
      metrics: names among ndcg, recall, precision, map.

    Returns:
      ``{"ndcg@10": [b], ...}``.
    """
    kmax = int(hits.shape[1])
    pos = tf.range(1, kmax + 1, dtype=tf.float32)
    discount = 1.0 / (tf.math.log(pos + 1.0) / tf.math.log(2.0))
    ideal_cum = tf.cumsum(discount)  # ideal DCG with m relevant items = ideal_cum[m - 1]
    dcg_cum = tf.cumsum(hits * discount, axis=1)
    hits_cum = tf.cumsum(hits, axis=1)
    prec_at_j = hits_cum / pos
    ap_cum = tf.cumsum(hits * prec_at_j, axis=1)
    out: dict[str, tf.Tensor] = {}
    for k in ks:
        kk = min(int(k), kmax)
        m = tf.minimum(n_targets, float(kk))
        m_safe = tf.maximum(m, 1.0)
        for name in metrics:
            if name == "ndcg":
                ideal = tf.gather(ideal_cum, tf.cast(m_safe, tf.int32) - 1)
                val = dcg_cum[:, kk - 1] / ideal
            elif name == "recall":
                val = hits_cum[:, kk - 1] / m_safe
            elif name == "precision":
                val = hits_cum[:, kk - 1] / float(k)
            elif name == "map":
                val = ap_cum[:, kk - 1] / m_safe
            else:
                raise ValueError(f"unknown ranking metric {name!r}; known: {RANKING_METRICS}")
            out[f"{name}@{k}"] = val
    return out


def ranking_metrics(scores, targets: sp.csr_matrix, ks, metrics=RANKING_METRICS,
                    exclude: sp.csr_matrix | None = None) -> dict[str, np.ndarray]:
    """Per-user metrics for one batch.

    Args:
      scores: float [b, n_items] (array or tensor).
      targets: CSR [b, n_items], nonzeros = relevant items.
      ks: cut-offs.
      metrics: names among ndcg, recall, precision, map.
      exclude: CSR [b, n_items] of items removed from the ranking (set to -inf), or None.

    Returns:
      ``{"ndcg@K": float64 [b], ...}``; users with no targets get NaN.
    """
    scores = tf.convert_to_tensor(scores, tf.float32)
    scores = mask_items(scores, exclude)
    n_items = int(scores.shape[1])
    kmax = min(max(int(k) for k in ks), n_items)
    hits, n_t = _hits_and_counts(scores, tf.constant(_row_indices(_csr(targets)).reshape(-1, 2)),
                                 kmax)
    vals = metrics_from_hits(hits, n_t, ks, metrics)
    has = n_t.numpy() > 0
    return {k: np.where(has, v.numpy().astype(np.float64), np.nan) for k, v in vals.items()}


def _requested(eval_cfg) -> list[str]:
    """Ranking metrics asked for (all of them if the config lists only rating metrics)."""
    wanted = [m for m in eval_cfg.metrics if m in RANKING_METRICS]
    return wanted or list(RANKING_METRICS)


def _evaluate_rows(score_fn, users: np.ndarray, targets: sp.csr_matrix,
                   exclude: sp.csr_matrix | None, eval_cfg) -> dict[str, float]:
    """Means over users (with >= 1 target) of every metric, scoring ``batch_size`` at a time."""
    from tfmf import memory

    metrics = _requested(eval_cfg)
    memory.preflight(memory.score_block_bytes(min(eval_cfg.batch_size, len(users)),
                                              targets.shape[1]),
                     f"ranking evaluation ({eval_cfg.batch_size} users x {targets.shape[1]:,} "
                     "items per block)", "eval.batch_size")
    sums: dict[str, float] = {}
    count = 0
    for s in range(0, len(users), eval_cfg.batch_size):
        sl = slice(s, s + eval_cfg.batch_size)
        scores = score_fn(users[sl], sl)
        ex = exclude[sl] if (exclude is not None and eval_cfg.exclude_seen) else None
        per_user = ranking_metrics(scores, targets[sl], eval_cfg.ks, metrics, ex)
        for k, v in per_user.items():
            sums[k] = sums.get(k, 0.0) + float(np.nansum(v))
        count += int(np.diff(targets[sl].indptr).astype(bool).sum())
    return {k: v / max(count, 1) for k, v in sums.items()}


def evaluate_strong(model, split, eval_cfg=None) -> dict[str, float]:
    """Strong generalization: held-out users are scored from their fold-in items only.

    Args:
      model: a fitted Recommender whose ``score(None, rows)`` folds rows in.
      split: an object with ``fold_in`` and ``target`` (InteractionData or CSR, full id space)
        and optionally ``test_users`` (default: users with targets).
      eval_cfg: tfmf.config.EvalConfig (metrics, ks, batch_size, exclude_seen).

    Returns:
      ``{"ndcg@100": .., "recall@20": .., ...}`` averaged over held-out users.
    """
    from tfmf.config import EvalConfig

    cfg = eval_cfg or EvalConfig()
    fold_in, target = _csr(split.fold_in), _csr(split.target)
    users = getattr(split, "test_users", None)
    if users is None:
        users = np.flatnonzero(np.diff(target.indptr) > 0)
    users = np.asarray(users, np.int64)
    rows_in, rows_t = fold_in[users], target[users]
    return _evaluate_rows(lambda u, sl: model.score(None, rows_in[sl]), users, rows_t, rows_in, cfg)


def evaluate_known_users(model, test: InteractionData, eval_cfg=None) -> dict[str, float]:
    """Ranking metrics for users seen at training time; their training items are excluded.

    Args:
      model: a fitted Recommender (``model._seen`` holds the training interactions).
      test: held-out interactions of known users (every test interaction counts as relevant:
        binarize explicit ratings first if only high ratings should).
      eval_cfg: tfmf.config.EvalConfig.

    Returns:
      ``{"ndcg@K": .., ...}`` averaged over test users.
    """
    from tfmf.config import EvalConfig

    cfg = eval_cfg or EvalConfig()
    target = _csr(test)
    users = np.flatnonzero(np.diff(target.indptr) > 0)
    seen = model._seen[users] if model._seen is not None else None
    return _evaluate_rows(lambda u, sl: model.score(u, None), users, target[users], seen, cfg)
