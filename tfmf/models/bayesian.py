"""Bayesian biased MF and SVD++ by Gibbs sampling ("bayesian_mf", "bayesian_svdpp").

The base model is biased MF with priors (Salakhutdinov & Mnih 2008, BPMF; the offsets are one
more coordinate of each row, as in Bayesian factorization machines):

    r_ui ~ N(mu + b_u + b_i + p_u . q_i, 1 / noise_precision)
    [p_u, b_u] ~ N(m_U, Lambda_U^-1)         [q_i, b_i] ~ N(m_V, Lambda_V^-1)
    (m, Lambda) ~ Normal-Wishart(0, beta0, I, d + 1) for each side

with ``mu`` the training mean (fixed). A sweep draws each side's ``(m, Lambda)`` from its
Normal-Wishart conditional, then every user's ``[p_u, b_u]`` from its Gaussian conditional
given the items, then every item's given the users. The row conditionals are ALS's ridge
systems with the prior in place of lambda, plus a Cholesky-shaped noise draw: with ``X`` the
row's design rows ``[q_i, 1]`` and ``t`` its ratings minus ``mu + b_i``,

    A = Lambda + a X^T X,   b = Lambda m + a X^T t,   x = L^-T (L^-1 b + z),  A = L L^T,

so ``x ~ N(A^-1 b, A^-1)`` (``z`` standard normal, ``a`` the noise precision).

**SVD++ (implicit feedback).** Koren's SVD++ scores ``(p_u + |N(u)|^-1/2 sum_{j in N(u)} y_j)
. q_i`` with ``N(u)`` the items ``u`` rated in training (not their values). Written for the
*effective* user row ``a_u = p_u + Y^T x_u`` (``x_u`` the normalised indicator of ``N(u)``,
``Y`` [n_items, d + 1], bias column included, so the implicit items also shift ``b_u``), the
same generative model reads

    a_u ~ N(m_U + Y^T x_u, Lambda_U^-1),     y_j ~ N(0, (lambda_Y Lambda_U)^-1)

i.e. the implicit feedback is the prior mean of the user's row, as side information in Macau
(Simm et al. 2015). Every conditional stays conjugate: ``a_u`` is the BPMF draw with a per-row
prior mean; ``(m_U, Lambda_U)`` are drawn from the deviations ``a_u - Y^T x_u`` with
``lambda_Y Y^T Y`` added to the Wishart scale and ``n_items`` to its degrees of freedom; and
``Y`` given the rows is matrix-normal, drawn in one linear solve by noise injection:

    (X^T X + lambda_Y I) Y = X^T (A - 1 m^T + E_1) + sqrt(lambda_Y) E_2, rows of E ~ N(0, Lambda^-1)

(the right-hand side has covariance ``(X^T X + lambda_Y I) (x) Lambda^-1``, so ``Y`` has the
posterior's). ``X`` never changes, so ``X^T X + lambda_Y I`` [n_items, n_items] is factored
once per fit; a sweep adds one sparse product and two triangular solves of width d + 1.
The *flipped* variant (Rendle, Zhang & Koren 2019: "Bayesian timeSVD++ flipped") adds the
mirror term on the item side, ``c_i ~ N(m_V + Z^T w_i, Lambda_V^-1)`` with ``w_i`` the
normalised indicator of the users who rated ``i`` (``implicit_item``; the system is then
[n_users, n_users]). The rows the sampler draws *are* the effective factors, so the fitted model
is again ``mu + b_u + b_i + a_u . c_i``: SVD++ exports, scores and serves as a plain factor
model. Only training pairs feed ``N(u)``; test pairs never do.

Why sample instead of minimising: the prediction is the posterior mean of the rating, averaged
over the draws after burn-in, and the priors adapt the regularization per dimension; on
ML-100K this beats the best-tuned SGD biased MF by about 0.01 RMSE (docs/BENCHMARKS.md).

The averaged dot product ``(1/S) sum_s P_s Q_s^T`` has rank up to ``S d``. It is kept
compressed to rank ``posterior_rank`` by an exact truncated SVD of the running low-rank sum
(QR of both sides, SVD of the small core; :func:`low_rank_add`), so the fitted model is an
ordinary :class:`~tfmf.models.mf.BiasedMF` of dimension ``posterior_rank`` and predict, score,
recommend, save/load and export are BiasedMF's. The share of the spectrum's energy dropped by
the truncation is reported as ``truncated_energy``.

**Where the time goes** (docs/profiles/bayes_sweep.txt). A sweep is one traced TensorFlow
function: both sides' Normal-Wishart draws (Bartlett decomposition), the Gram matrices over
rows bucketed by length (one batched matmul per bucket; padding points at a zero row, so no
masks), one batched Cholesky and two batched triangular solves per chunk of rows, the implicit
solves, the train RMSE and the posterior update, with stateless random draws keyed by
``(seed, sweep)``. Nothing leaves the device between sweeps, so the same code runs on a GPU;
on this CPU TensorFlow's batched float32 Cholesky (18 ms for 2,625 matrices of order 51) is
3-4x faster than NumPy's stacked LAPACK calls, so there is no NumPy path. float32 throughout:
the systems are well conditioned (``Lambda`` is their floor) and float64 doubled the time.

Each sweep is one step of the one epoch loop (:class:`GibbsSweeps` under Keras' ``fit``), so
history, callbacks, early stopping (after burn-in) and progress are the gradient models'. The
factor model holds the current draw during burn-in and the running posterior mean after it,
so per-sweep validation scores exactly what would be stored. The chain state (draws, running
sums) is not checkpointed: a fit does not resume; refit.

The sampler is single-process float32 (``train.precision`` is ignored); under horovodrun every
rank runs the same chain, so launch it as one process.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import tensorflow as tf

from tfmf.config import TrainConfig, check
from tfmf.data.interactions import InteractionData
from tfmf.models.mf import BiasedMFConfig, FactorRecommender, ridge_fold_in
from tfmf.registry import register
from tfmf.training.fit import compile_model
from tfmf.training.model import SweepModel, sweep_dataset


@dataclass
class BayesianMFConfig:
    """Hyperparameters of Gibbs-sampled Bayesian biased MF (defaults: tuned on ML-100K u1).

    Attributes:
      factors: latent dimension d of each draw.
      noise_precision: 1 / variance of the rating noise (fixed: sampling it from the training
        residuals overfits them; on ML-100K u1 a sampled precision settled at 1.97 and scored
        0.003 RMSE worse than the fixed 1.5).
      burn_in: sweeps discarded before averaging.
      samples: sweeps averaged into the posterior mean after burn-in.
      posterior_rank: rank of the stored posterior-mean factorization (the Keras model's
        embedding dimension).
      beta0: prior strength of the hyper-mean (Normal-Wishart beta0).
      init_stddev: standard deviation of the initial factors.
      chunk_size: rows per batched Cholesky; bounds memory.
      seed: sampler seed (None: TrainConfig.seed).
      clip_predictions: clip ``predict`` to the fit-time rating scale.
      implicit_user: SVD++: the items a user rated in training set the prior mean of the
        user's row (module docstring).
      implicit_item: the "flipped" term: the users who rated an item set the prior mean of the
        item's row.
      implicit_precision: lambda_Y, the prior precision of the implicit weights relative to
        the side's Lambda.
      time_user_day: timeSVD++'s per-day user bias ``b_{u,day}`` (needs timestamps; the
        query's timestamp is an input of ``predict``).
      time_item_bins: timeSVD++'s item bias per time bin ``b_{i,bin(t)}``: the number of
        equal-width bins over the training period (0: none).
      day_seconds: length of a "day" in timestamp units (86400: Unix seconds).
    """

    factors: int = 50
    noise_precision: float = 1.5
    burn_in: int = 30
    samples: int = 170
    posterior_rank: int = 128
    beta0: float = 2.0
    init_stddev: float = 0.1
    chunk_size: int = 1024
    seed: int | None = None
    clip_predictions: bool = True
    implicit_user: bool = False
    implicit_item: bool = False
    implicit_precision: float = 1.0
    time_user_day: bool = False
    time_item_bins: int = 0
    day_seconds: int = 86400

    def validate(self, key: str) -> None:
        check(self.factors >= 1, f"{key}.factors", "must be >= 1")
        check(self.noise_precision > 0, f"{key}.noise_precision", "must be > 0")
        check(self.burn_in >= 0, f"{key}.burn_in", "must be >= 0")
        check(self.samples >= 1, f"{key}.samples", "must be >= 1")
        check(self.posterior_rank >= 1, f"{key}.posterior_rank", "must be >= 1")
        check(self.beta0 > 0, f"{key}.beta0", "must be > 0")
        check(self.init_stddev > 0, f"{key}.init_stddev", "must be > 0")
        check(self.chunk_size >= 1, f"{key}.chunk_size", "must be >= 1")
        check(self.implicit_precision > 0, f"{key}.implicit_precision", "must be > 0")
        check(self.time_item_bins >= 0, f"{key}.time_item_bins", "must be >= 0")
        check(self.day_seconds >= 1, f"{key}.day_seconds", "must be >= 1")


@dataclass
class BayesianSVDppConfig(BayesianMFConfig):
    """Bayesian SVD++: :class:`BayesianMFConfig` with the user-side implicit term on
    (``implicit_item: true`` adds the flipped item-side term). Defaults: see the YAMLs."""

    implicit_user: bool = True


# --------------------------------------------------------------------------- data layout
@dataclass
class RowGroup:
    """Rows solved in one batched Cholesky, their ratings cut into length buckets.

    Attributes:
      rows: int32 [n] row indices (ascending length).
      buckets: per bucket ``(cols [B, L], ratings [B, L])`` int32 tensors; padded slots point
        at the zero row ``n_cols`` of the design and the zero target ``nnz``.
    """

    rows: np.ndarray
    buckets: list


def row_layout(row_of: np.ndarray, col_of: np.ndarray, n_rows: int, n_cols: int,
               chunk_size: int) -> tuple[list[RowGroup], tf.Tensor]:
    """Cuts one side's ratings into groups of ``chunk_size`` rows and length buckets.

    Rows are sorted by length; a bucket is padded to its longest row and holds rows up to
    ``max(1.25 L, L + 8)`` for its shortest length ``L`` (little padding, few buckets), at most
    ``chunk_size * 256`` padded entries.

    Args:
      row_of, col_of: int [nnz] the row and column of each rating (rating k is entry k).
      n_rows, n_cols: the side's sizes.
      chunk_size: most rows per group.

    Returns:
      (groups, inverse): ``inverse`` int32 [n_rows] maps a row to its position in the
      concatenated groups' rows.
    """
    row_of = np.asarray(row_of, np.int64)
    nnz = len(row_of)
    order = np.argsort(row_of, kind="stable")
    counts = np.bincount(row_of, minlength=n_rows)
    starts = np.concatenate([[0], np.cumsum(counts)])
    by_len = np.argsort(counts, kind="stable")
    budget = chunk_size * 256
    groups = []
    for g0 in range(0, n_rows, chunk_size):
        rows = by_len[g0:g0 + chunk_size]
        lens = counts[rows]
        buckets, b0 = [], 0
        while b0 < len(rows):
            first = max(1, int(lens[b0]))
            cap = max(int(first * 1.25), first + 8)
            b1 = int(np.searchsorted(lens, cap, side="right"))
            width = max(1, int(lens[min(b1, len(rows)) - 1]))
            b1 = max(b0 + 1, min(b1, b0 + max(1, budget // width)))
            width = max(1, int(lens[b1 - 1]))
            slot = np.arange(width)[None, :]
            mask = slot < lens[b0:b1, None]
            pos = np.minimum(starts[rows[b0:b1], None] + slot, max(nnz - 1, 0))
            ratings = np.where(mask, order[pos] if nnz else 0, nnz)
            cols = np.where(mask, np.asarray(col_of)[ratings.clip(0, max(nnz - 1, 0))]
                            if nnz else 0, n_cols)
            buckets.append((tf.constant(cols.astype(np.int32)),
                            tf.constant(ratings.astype(np.int32))))
            b0 = b1
        groups.append(RowGroup(rows.astype(np.int32), buckets))
    inverse = np.empty(n_rows, np.int32)
    inverse[by_len] = np.arange(n_rows, dtype=np.int32)
    return groups, tf.constant(inverse)


def implicit_features(pairs_rows: np.ndarray, pairs_cols: np.ndarray, n_rows: int,
                      n_cols: int) -> sp.csr_matrix:
    """``X`` [n_rows, n_cols]: row r's indicator of the columns it touched, scaled by
    ``|N(r)|^-1/2`` (Koren's SVD++ normalisation); duplicates count once."""
    m = sp.csr_matrix((np.ones(len(pairs_rows)), (pairs_rows, pairs_cols)),
                      shape=(n_rows, n_cols))
    m.data[:] = 1.0
    m.sum_duplicates()
    m.data[:] = 1.0
    n = np.diff(m.indptr)
    m.data *= np.repeat(1.0 / np.sqrt(np.maximum(n, 1)), n)
    m.sort_indices()
    return m


def _sparse_tensor(m: sp.csr_matrix) -> tf.SparseTensor:
    coo = m.tocoo()
    idx = np.stack([coo.row, coo.col], 1).astype(np.int64)
    return tf.SparseTensor(idx, coo.data.astype(np.float32), m.shape)


def implicit_system(X: sp.csr_matrix, precision: float) -> tf.Tensor:
    """Cholesky factor float32 [F, F] of ``X^T X + lambda_Y I`` (factored once per fit)."""
    K = (X.T @ X).toarray()
    K[np.diag_indices_from(K)] += precision
    return tf.linalg.cholesky(tf.constant(K, tf.float32))


class TimeGroups:
    """The timeSVD++ bias groups of ratings: (user, day) and (item, time bin).

    Args:
      config: the sampler's config (``time_user_day``, ``time_item_bins``, ``day_seconds``).
      users, items, timestamps: int [nnz] the training ratings.
      n_items: items in the id space.
    """

    def __init__(self, config: BayesianMFConfig, users, items, timestamps, n_items: int):
        self.user_day, self.bins = bool(config.time_user_day), int(config.time_item_bins)
        self.day_seconds = int(config.day_seconds)
        ts = np.asarray(timestamps, np.int64)
        self.t_min, self.t_max = (int(ts.min()), int(ts.max())) if len(ts) else (0, 0)
        self.day_keys = np.zeros(0, np.int64)
        if self.user_day:
            self.day_keys = np.unique(self._day_key(users, ts))
        self.n_items = int(n_items)

    def _day_key(self, users, ts) -> np.ndarray:
        return np.asarray(users, np.int64) * (1 << 32) + (np.asarray(ts, np.int64)
                                                           // self.day_seconds)

    def day_group(self, users, ts) -> np.ndarray:
        """int64 [n] the (user, day) group of each pair, -1 for a day unseen in training."""
        key = self._day_key(users, ts)
        pos = np.searchsorted(self.day_keys, key).clip(0, max(len(self.day_keys) - 1, 0))
        hit = len(self.day_keys) > 0
        return np.where(hit & (self.day_keys[pos] == key) if hit else False, pos, -1)

    def bin_group(self, items, ts) -> np.ndarray:
        """int64 [n] the (item, bin) group of each pair (times outside training clip)."""
        span = max(self.t_max - self.t_min + 1, 1)
        b = ((np.asarray(ts, np.int64) - self.t_min) * self.bins // span).clip(0, self.bins - 1)
        return np.asarray(items, np.int64) * self.bins + b

    @property
    def n_day_groups(self) -> int:
        return len(self.day_keys)

    @property
    def n_bin_groups(self) -> int:
        return self.n_items * self.bins


def draw_group_bias(residual: tf.Tensor, groups: tf.Tensor, counts: tf.Tensor,
                    precision: tf.Tensor, noise_precision: float, seed: tf.Tensor
                    ) -> tuple[tf.Tensor, tf.Tensor]:
    """One-hot group biases (each rating in one group) from their Gaussian conditional, and
    their prior precision from its Gamma(1, 1) conditional.

    ``b_g ~ N(a S_g / (lambda + a n_g), 1 / (lambda + a n_g))`` with ``S_g`` the group's sum
    of residuals (ratings minus every other term); groups never share a rating, so all are
    drawn at once. Then ``lambda ~ Gamma(1 + G/2, 1 + sum_g b_g^2 / 2)``.

    Returns:
      (biases float32 [G], precision float32 []).
    """
    n = int(counts.shape[0])
    post = precision + noise_precision * counts
    sums = tf.math.unsorted_segment_sum(residual, groups, n)
    bias = (noise_precision * sums / post
            + tf.random.stateless_normal([n], _seed(seed, 0)) / tf.sqrt(post))
    rate = 1.0 + 0.5 * tf.reduce_sum(tf.square(bias))
    new_precision = tf.random.stateless_gamma([], _seed(seed, 1), alpha=1.0 + 0.5 * n) / rate
    return bias, new_precision


# --------------------------------------------------------------------------- conditionals
def _seed(base: tf.Tensor, k: int) -> tf.Tensor:
    """Stateless seed [2] for random draw ``k`` of the sweep whose base is ``(seed, sweep)``."""
    return tf.stack([base[0], base[1] * 64 + k])


def normal_wishart(rows: tf.Tensor, beta0: float, seed: tf.Tensor, link: tf.Tensor | None = None,
                   link_precision: float = 0.0) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Draws ``(m, Lambda)`` from their Normal-Wishart conditional given one side's rows.

    Prior: ``Lambda ~ Wishart(W0 = I, nu0 = D)``, ``m | Lambda ~ N(0, (beta0 Lambda)^-1)``;
    with ``link`` (the SVD++ weights, ``y_j ~ N(0, (lambda_Y Lambda)^-1)``) their scatter
    joins the Wishart's. The Wishart draw is Bartlett's: ``Lambda = (C^-T B)(C^-T B)^T`` with
    ``C C^T`` the posterior scale's inverse and ``B`` lower triangular (chi on the diagonal,
    standard normals below).

    Args:
      rows: float32 [n, D] the side's current rows (minus their implicit prior means).
      beta0: prior strength of the mean.
      seed: int [2] stateless seed.
      link: float32 [F, D] implicit weights of this side, or None.
      link_precision: lambda_Y.

    Returns:
      (mean [D], precision [D, D], chol(precision) [D, D]), float32.
    """
    n, dim = int(rows.shape[0]), int(rows.shape[1])
    xbar = tf.reduce_mean(rows, 0)
    centred = rows - xbar
    beta = beta0 + n
    scale_inv = (tf.eye(dim) + tf.matmul(centred, centred, transpose_a=True)
                 + (beta0 * n / beta) * xbar[:, None] * xbar[None, :])
    df = float(dim + n)
    if link is not None:
        scale_inv += link_precision * tf.matmul(link, link, transpose_a=True)
        df += float(link.shape[0])
    C = tf.linalg.cholesky(0.5 * (scale_inv + tf.transpose(scale_inv)))
    chi2 = 2.0 * tf.random.stateless_gamma([dim], _seed(seed, 0),
                                           alpha=(df - tf.range(dim, dtype=tf.float32)) / 2.0)
    below = tf.linalg.band_part(tf.random.stateless_normal([dim, dim], _seed(seed, 1)), -1, 0)
    bartlett = tf.linalg.set_diag(below, tf.sqrt(chi2))
    root = tf.linalg.triangular_solve(C, bartlett, lower=True, adjoint=True)
    precision = tf.matmul(root, root, transpose_b=True)
    G = tf.linalg.cholesky(precision)
    z = tf.random.stateless_normal([dim, 1], _seed(seed, 2))
    mean = n * xbar / beta + tf.linalg.triangular_solve(G, z, lower=True, adjoint=True)[:, 0] \
        / np.sqrt(beta)
    return mean, precision, G


def draw_rows(groups: list[RowGroup], inverse: tf.Tensor, other: tf.Tensor, targets: tf.Tensor,
              prior_mean: tf.Tensor, precision: tf.Tensor, noise_precision: float,
              seed: tf.Tensor) -> tf.Tensor:
    """One Gibbs half-step: every row's ``[factors, bias]`` from its Gaussian conditional.

    Args:
      groups, inverse: the side's layout (:func:`row_layout`).
      other: float32 [n_cols, D] the other side's rows ``[factors, bias]``; the design row is
        ``[factors, 1]`` and the bias joins the offset.
      targets: float32 [nnz + 1] ratings minus ``mu`` (and a trailing 0 for padded slots).
      prior_mean: float32 [n_rows, D] or [D] the rows' prior mean.
      precision: float32 [D, D] the side's Lambda.
      noise_precision: 1 / rating noise variance.
      seed: int [2] stateless seed.

    Returns:
      float32 [n_rows, D].
    """
    dim = int(other.shape[1])
    design = tf.concat([other[:, :-1], tf.ones_like(other[:, :1])], 1)
    design = tf.concat([design, tf.zeros([1, dim])], 0)  # the padding row
    col_offset = tf.concat([other[:, -1], tf.zeros([1])], 0)
    shift = tf.matmul(tf.reshape(prior_mean, [-1, dim]), precision)  # Lambda symmetric
    parts = []
    for g, group in enumerate(groups):
        grams, rhs = [], []
        for cols, ratings in group.buckets:
            X = tf.gather(design, cols)
            t = tf.gather(targets, ratings) - tf.gather(col_offset, cols)
            grams.append(tf.matmul(X, X, transpose_a=True))
            rhs.append(tf.matmul(X, t[..., None], transpose_a=True))
        A = noise_precision * tf.concat(grams, 0) + precision[None]
        b = noise_precision * tf.concat(rhs, 0)
        if shift.shape[0] == 1:
            b += shift[0][None, :, None]
        else:
            b += tf.gather(shift, group.rows)[..., None]
        chol = tf.linalg.cholesky(A)
        half = tf.linalg.triangular_solve(chol, b, lower=True)
        z = tf.random.stateless_normal(tf.shape(half), _seed(seed, g))
        # x = L^-T (L^-1 b + z): mean A^-1 b, covariance (L L^T)^-1 = A^-1.
        parts.append(tf.linalg.triangular_solve(chol, half + z, lower=True, adjoint=True)[..., 0])
    return tf.gather(tf.concat(parts, 0), inverse)


def draw_link(X: tf.SparseTensor, system: tf.Tensor, rows: tf.Tensor, G: tf.Tensor,
              link_precision: float, seed: tf.Tensor) -> tf.Tensor:
    """The implicit weights ``Y`` [F, D] given the rows (matrix-normal; module docstring).

    Args:
      X: [n, F] implicit features of the side's rows.
      system: chol(X^T X + lambda_Y I) [F, F].
      rows: float32 [n, D] the rows minus the hyper-mean ``m``.
      G: chol(Lambda) [D, D]; noise rows ``G^-T z`` have covariance ``Lambda^-1``.
      link_precision: lambda_Y.
      seed: int [2] stateless seed.
    """
    n, dim = int(rows.shape[0]), int(rows.shape[1])
    F = int(system.shape[0])

    def noise(k, count):
        z = tf.random.stateless_normal([dim, count], _seed(seed, k))
        return tf.transpose(tf.linalg.triangular_solve(G, z, lower=True, adjoint=True))

    rhs = (tf.sparse.sparse_dense_matmul(X, rows + noise(10, n), adjoint_a=True)
           + np.sqrt(link_precision) * noise(11, F))
    return tf.linalg.cholesky_solve(system, rhs)


# --------------------------------------------------------------------------- posterior mean
def low_rank_add(left: tf.Tensor, singular: tf.Tensor, right: tf.Tensor, P: tf.Tensor,
                 Q: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Adds ``P Q^T`` to the running sum ``left diag(singular) right^T`` and re-truncates.

    With ``L = [left s, P]`` and ``R = [right, Q]``, ``L = Q_L R_L`` and ``R = Q_R R_R`` (thin
    QR); the SVD ``R_L R_R^T = X S Y^T`` of the small core gives ``L R^T = (Q_L X) S (Q_R
    Y)^T``, truncated to the rank of ``left``. No users x items matrix is formed; unused
    columns stay zero.

    Returns:
      (left, singular, right, dropped, total): the new factors, the squared singular values
      dropped and the core's total squared singular values.
    """
    rank = int(left.shape[1])
    ql, rl = tf.linalg.qr(tf.concat([left * singular, P], 1))
    qr_, rr = tf.linalg.qr(tf.concat([right, Q], 1))
    s, x, y = tf.linalg.svd(tf.matmul(rl, rr, transpose_b=True))
    keep = min(rank, int(s.shape[0]))
    new_left, new_right = tf.matmul(ql, x[:, :keep]), tf.matmul(qr_, y[:, :keep])
    if keep < rank:
        new_left = tf.pad(new_left, [[0, 0], [0, rank - keep]])
        new_right = tf.pad(new_right, [[0, 0], [0, rank - keep]])
    new_s = tf.pad(s[:keep], [[0, rank - keep]])
    total = tf.reduce_sum(tf.square(s))
    return new_left, new_s, new_right, total - tf.reduce_sum(tf.square(s[:keep])), total


class LowRankMean:
    """Running mean of products ``P_s Q_s^T`` kept as a rank-``rank`` factorization.

    Draws are buffered and folded in by one :func:`low_rank_add` per ``buffer`` draws (one QR
    pair and one core SVD instead of one per draw; folding several draws at once also
    truncates less often). :meth:`factors` folds the buffer in first, so it always returns
    the mean of every draw added.

    Args:
      rank: rank kept.
      buffer: draws held before folding them in (1: fold every draw).
    """

    def __init__(self, rank: int, buffer: int = 1):
        self.rank, self.buffer = int(rank), max(1, int(buffer))
        self.count = 0
        self.left = self.right = self.singular = None
        self.dropped_energy = 0.0  # sum of squared singular values truncated so far
        self.total_energy = 0.0
        self._pending: list = []
        self._add = tf.function(low_rank_add, autograph=False)

    def add(self, P, Q) -> None:
        """Adds one draw ``P Q^T`` (P [n_users, d], Q [n_items, d])."""
        P, Q = tf.convert_to_tensor(P, tf.float32), tf.convert_to_tensor(Q, tf.float32)
        self._pending.append((P, Q))
        self.count += 1
        if len(self._pending) >= self.buffer:
            self.flush()

    def flush(self) -> None:
        """Folds the buffered draws into the truncated sum."""
        if not self._pending:
            return
        P = tf.concat([p for p, _ in self._pending], 1)
        Q = tf.concat([q for _, q in self._pending], 1)
        self._pending = []
        if self.left is None:
            self.left = tf.zeros([P.shape[0], self.rank])
            self.right = tf.zeros([Q.shape[0], self.rank])
            self.singular = tf.zeros([self.rank])
        self.left, self.singular, self.right, dropped, total = self._add(
            self.left, self.singular, self.right, P, Q)
        self.dropped_energy += float(dropped)
        self.total_energy = float(total) + self.dropped_energy

    def factors(self, rank: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(P [n_users, rank], Q [n_items, rank]) float32 with ``P Q^T`` the running mean
        (scale split evenly, ``sqrt(s / count)`` on both sides)."""
        self.flush()
        rank = self.rank if rank is None else rank
        root = tf.sqrt(self.singular / max(self.count, 1))
        P, Q = (self.left * root).numpy(), (self.right * root).numpy()
        return _widen(P, rank), _widen(Q, rank)

    @property
    def truncated_energy(self) -> float:
        """Share of the (accumulated) squared singular values dropped by truncation."""
        return self.dropped_energy / self.total_energy if self.total_energy > 0 else 0.0


def _widen(X: np.ndarray, rank: int) -> np.ndarray:
    """``X`` widened (zeros) or cut to ``rank`` columns, float32."""
    Y = np.zeros((X.shape[0], rank), np.float32)
    k = min(rank, X.shape[1])
    Y[:, :k] = X[:, :k]
    return Y


# --------------------------------------------------------------------------- the chain
class _Side:
    """One side's fixed data: layout, implicit features and their factored system."""

    def __init__(self, rows, cols, n_rows, n_cols, chunk_size, implicit: bool,
                 precision: float):
        self.n = n_rows
        self.groups, self.inverse = row_layout(rows, cols, n_rows, n_cols, chunk_size)
        self.X = self.system = None
        if implicit:
            X = implicit_features(rows, cols, n_rows, n_cols)
            self.X, self.system = _sparse_tensor(X), implicit_system(X, precision)


class GibbsSweeps(SweepModel):
    """One Gibbs sweep per ``fit`` step (module docstring), written into a factor model.

    Args:
      factors: the BiasedMatrixFactorization (dimension ``posterior_rank``) that holds the
        current draw during burn-in and the posterior mean after it.
      config: the sampler's hyperparameters.
      train: the training ratings (timestamps needed for the time terms).
      mu: the fixed global mean.
      seed: the chain's seed.
      track: keep the factor model at the current draw / running mean after every sweep
        (validation or callbacks read it); otherwise draws are buffered and the model is
        written once, at the end.
    """

    resumable = False
    loss_components = ("rmse",)

    def __init__(self, factors, config: BayesianMFConfig, train: InteractionData, mu: float,
                 seed: int, track: bool = True):
        super().__init__()
        c = self.config = config
        self.track = track
        self.early_stopping_start = c.burn_in
        self.factors, self.mu = factors, mu
        u, i = train.users.astype(np.int64), train.items.astype(np.int64)
        n_u, n_i, d = train.n_users, train.n_items, c.factors
        self.user_side = _Side(u, i, n_u, n_i, c.chunk_size, c.implicit_user,
                               c.implicit_precision)
        self.item_side = _Side(i, u, n_i, n_u, c.chunk_size, c.implicit_item,
                               c.implicit_precision)
        self.pairs = (tf.constant(u.astype(np.int32)), tf.constant(i.astype(np.int32)))
        self.targets = tf.constant(np.r_[train.values.astype(np.float64) - mu, 0.0]
                                   .astype(np.float32))
        self.time = None
        if c.time_user_day or c.time_item_bins:
            if train.timestamps is None:
                from tfmf.errors import ConfigError

                raise ConfigError("the time terms need timestamps and the training data has "
                                  "none", key="model.time_user_day")
            self.time = TimeGroups(c, u, i, train.timestamps, n_i)
        self.time_state = {}
        self.time_fixed = {}
        if self.time is not None and self.time.user_day:
            g = self.time.day_group(u, train.timestamps)
            self.time_fixed["day"] = (tf.constant(g), tf.constant(
                np.bincount(g, minlength=self.time.n_day_groups).astype(np.float32)))
            self.time_state["day"] = (tf.zeros([self.time.n_day_groups]), tf.constant(10.0))
        if self.time is not None and self.time.bins:
            g = self.time.bin_group(i, train.timestamps)
            self.time_fixed["bin"] = (tf.constant(g), tf.constant(
                np.bincount(g, minlength=self.time.n_bin_groups).astype(np.float32)))
            self.time_state["bin"] = (tf.zeros([self.time.n_bin_groups]), tf.constant(10.0))
        self.time_sums = {k: tf.zeros_like(v[0]) for k, v in self.time_state.items()}
        rng = np.random.default_rng(seed)
        self.seed = int(seed) % (2 ** 31)
        # Rows are [factors, bias]; the other side enters as [factors, 1] with offset mu + bias.
        users = np.c_[rng.normal(0, c.init_stddev, (n_u, d)), np.zeros(n_u)]
        items = np.c_[rng.normal(0, c.init_stddev, (n_i, d)), np.zeros(n_i)]
        self.users = tf.constant(users.astype(np.float32))
        self.items = tf.constant(items.astype(np.float32))
        self.link_user = tf.zeros([n_i, d + 1]) if c.implicit_user else None
        self.link_item = tf.zeros([n_u, d + 1]) if c.implicit_item else None
        self.posterior = LowRankMean(c.posterior_rank,
                                    1 if track else max(1, 3 * c.posterior_rank // d))
        self.bias_sum_u, self.bias_sum_i = tf.zeros([n_u]), tf.zeros([n_i])
        self._sweep = tf.function(self._sweep_graph, autograph=False)
        self.on_assign = None  # called after the factor model is written (time terms)
        self.built = True  # its variables are the (built) factor model's

    def _half(self, side: _Side, rows, other, link, targets, seed):
        c = self.config
        prior = tf.sparse.sparse_dense_matmul(side.X, link) if link is not None else 0.0
        mean, precision, G = normal_wishart(rows - prior, c.beta0, _seed(seed, 0), link,
                                            c.implicit_precision)
        rows = draw_rows(side.groups, side.inverse, other, targets, prior + mean,
                         precision, c.noise_precision, _seed(seed, 1))
        if link is not None:
            link = draw_link(side.X, side.system, rows - mean, G, c.implicit_precision,
                             _seed(seed, 2))
        return rows, link

    def _time_offsets(self, time_state) -> tf.Tensor:
        """float32 [nnz] every rating's time biases."""
        off = tf.zeros_like(self.targets[:-1])
        for name, (bias, _) in time_state.items():
            off += tf.gather(bias, self.time_fixed[name][0])
        return off

    def _sweep_graph(self, users, items, link_user, link_item, time_state, sweep):
        c = self.config
        base = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(sweep, tf.int64)])
        ratings = self.targets[:-1]
        targets = tf.concat([ratings - self._time_offsets(time_state), [0.0]], 0) \
            if time_state else self.targets
        users, link_user = self._half(self.user_side, users, items, link_user, targets,
                                      _seed(base, 0))
        items, link_item = self._half(self.item_side, items, users, link_item, targets,
                                      _seed(base, 1))
        u, i = self.pairs
        U, V = tf.gather(users, u), tf.gather(items, i)
        pred = tf.reduce_sum(U[:, :-1] * V[:, :-1], 1) + U[:, -1] + V[:, -1]
        time_state = dict(time_state)
        for k, name in enumerate(sorted(time_state)):
            others = self._time_offsets({n: v for n, v in time_state.items() if n != name})
            groups, counts = self.time_fixed[name]
            time_state[name] = draw_group_bias(ratings - pred - others, groups, counts,
                                               time_state[name][1], c.noise_precision,
                                               _seed(base, 2 + k))
        if time_state:
            pred += self._time_offsets(time_state)
        rmse = tf.sqrt(tf.reduce_mean(tf.square(ratings - pred)))
        return users, items, link_user, link_item, time_state, rmse

    def sweep(self, epoch: int) -> dict[str, float]:
        c, d = self.config, self.config.factors
        (self.users, self.items, self.link_user, self.link_item, self.time_state,
         rmse) = self._sweep(self.users, self.items, self.link_user, self.link_item,
                             self.time_state, tf.constant(epoch, tf.int64))
        if epoch >= c.burn_in:
            for name, (bias, _) in self.time_state.items():
                self.time_sums[name] += bias
            self.posterior.add(self.users[:, :d], self.items[:, :d])
            self.bias_sum_u += self.users[:, d]
            self.bias_sum_i += self.items[:, d]
            if self.track:
                self.assign_posterior()
        elif self.track:
            r = c.posterior_rank
            self._assign(_widen(self.users[:, :d].numpy(), r), _widen(self.items[:, :d].numpy(), r),
                         self.users[:, d], self.items[:, d])
        return {"rmse": float(rmse)}

    def finish(self) -> None:
        """Writes the posterior mean into the factor model (stopped during burn-in: the last
        draw becomes it)."""
        if self.posterior.count == 0:
            d = self.config.factors
            self.posterior.add(self.users[:, :d], self.items[:, :d])
            self.bias_sum_u, self.bias_sum_i = self.users[:, d], self.items[:, d]
            self.time_sums = {n: b for n, (b, _) in self.time_state.items()}
        self.assign_posterior()

    def time_means(self) -> dict[str, np.ndarray]:
        """The time biases by kind ("day", "bin"), float32: the current draw during burn-in,
        the running posterior mean after it."""
        n = self.posterior.count
        if n == 0:
            return {name: bias.numpy() for name, (bias, _) in self.time_state.items()}
        return {name: (total / n).numpy() for name, total in self.time_sums.items()}

    def assign_posterior(self) -> None:
        """The running posterior mean (rank ``posterior_rank``) into the factor model."""
        n = self.posterior.count
        P, Q = self.posterior.factors()
        self._assign(P, Q, self.bias_sum_u / n, self.bias_sum_i / n)

    def _assign(self, P, Q, bu, bi) -> None:
        m = self.factors
        m.user_factors.assign(P)
        m.item_factors.assign(Q)
        m.user_bias.embeddings.assign(tf.reshape(tf.cast(bu, tf.float32), [-1, 1]))
        m.item_bias.embeddings.assign(tf.reshape(tf.cast(bi, tf.float32), [-1, 1]))
        if self.on_assign is not None:
            self.on_assign(self)


# --------------------------------------------------------------------------- Recommender
@register("bayesian_mf")
class BayesianMF(FactorRecommender):
    """Biased MF whose prediction is the posterior mean under Gibbs sampling (module docs)."""

    config_class = BayesianMFConfig

    def factor_config(self) -> BiasedMFConfig:
        """The factor model: a biased MF of dimension posterior_rank."""
        c = self.config
        return BiasedMFConfig(embedding_dim=c.posterior_rank, init_stddev=c.init_stddev,
                              clip_predictions=c.clip_predictions)

    def fit(self, train: InteractionData, train_config: TrainConfig | None = None, *,
            validation: InteractionData | None = None, run_dir=None, callbacks=(),
            resume: bool = False):
        """Runs ``burn_in + samples`` Gibbs sweeps and keeps the posterior mean.

        Of ``train_config``, ``epochs`` is replaced by the number of sweeps and ``precision``
        by float32; ``seed`` is ``config.seed`` when given. History rows: ``epoch``, train
        ``rmse`` of the current draw, ``val_rmse``/``val_mae`` of the factor model (the
        current draw during burn-in, the running posterior mean after it) when
        ``validation`` is given, and ``seconds``. Early stopping counts after burn-in only.
        ``self.truncated_energy`` is the share of the posterior mean's spectrum dropped.

        Raises:
          ValueError: ``resume`` (the chain state is not checkpointed).
        """
        c = self.config
        if resume:
            raise ValueError(f"{self.name} does not resume from checkpoints; refit")
        cfg = dataclasses.replace(train_config or TrainConfig(), precision="float32",
                                  epochs=c.burn_in + c.samples)
        if c.seed is not None:
            cfg = dataclasses.replace(cfg, seed=c.seed)
        from tfmf import memory

        implicit = (4 * 2 * train.n_items ** 2 if c.implicit_user else 0) \
            + (4 * 2 * train.n_users ** 2 if c.implicit_item else 0)
        memory.preflight(memory.gibbs_workspace_bytes(train.n_users, train.n_items, c.factors,
                                                      c.chunk_size, c.posterior_rank)
                         + implicit,
                         f"Gibbs sampler ({train.n_users:,} x {train.n_items:,}, "
                         f"{c.factors} factors"
                         + (", implicit systems" if implicit else "") + ")", "model.factors")
        self._begin(train, cfg)
        self.model = self.build_model(train, cfg)
        chain = GibbsSweeps(self.model, c, train, float(self.model.global_mean.numpy()),
                            cfg.seed, track=validation is not None or bool(callbacks))
        self.time_terms = None
        chain.on_assign = self._take_time_terms
        compile_model(chain, cfg, steps_per_epoch=1, run_eagerly=True)
        self.fit_keras(sweep_dataset(), cfg, steps_per_epoch=1, validation=validation,
                       run_dir=run_dir, callbacks=callbacks, resume=False, model=chain)
        chain.finish()
        chain.on_assign = None
        self.truncated_energy = chain.posterior.truncated_energy
        if self.history:
            self.history[-1]["truncated_energy"] = self.truncated_energy
        self._implicit_fold_in = None
        return self

    # ------------------------------------------------------------------ time terms
    def _take_time_terms(self, chain: GibbsSweeps) -> None:
        """The chain's time biases (what the factor model now holds) into ``time_terms``."""
        if chain.time is None:
            return
        t, means = chain.time, chain.time_means()
        self.time_terms = {"t_min": t.t_min, "t_max": t.t_max, "day_keys": t.day_keys,
                           "day_bias": means.get("day", np.zeros(0, np.float32)),
                           "bin_bias": means.get("bin", np.zeros(0, np.float32))}

    @property
    def uses_timestamps(self) -> bool:
        """Whether ``predict`` reads the query's timestamps (the timeSVD++ terms)."""
        c = self.config
        return bool(c.time_user_day or c.time_item_bins)

    def _time_groups(self) -> TimeGroups:
        g = TimeGroups(self.config, np.zeros(0), np.zeros(0), np.zeros(0), self.n_items)
        tt = self.time_terms
        g.t_min, g.t_max, g.day_keys = int(tt["t_min"]), int(tt["t_max"]), tt["day_keys"]
        return g

    def predict(self, users: np.ndarray, items: np.ndarray,
                timestamps: np.ndarray | None = None) -> np.ndarray:
        """Ratings float32 [n]; with the time terms and ``timestamps`` (the queries' times)
        the bias of the user's day (0 for a day not in training) and of the item's time bin
        are added. Without timestamps, the time-averaged factor model (what is exported)."""
        pred = super().predict(users, items)
        if timestamps is None or getattr(self, "time_terms", None) is None:
            return pred
        base = self.model({"user_id": tf.constant(np.asarray(users, np.int32)),
                           "item_id": tf.constant(np.asarray(items, np.int32))}).numpy()
        g, tt = self._time_groups(), self.time_terms
        extra = np.zeros(len(base), np.float64)
        if g.user_day and len(tt["day_bias"]):
            day = g.day_group(users, timestamps)
            extra += np.where(day >= 0, tt["day_bias"][day.clip(0)], 0.0)
        if g.bins and len(tt["bin_bias"]):
            extra += tt["bin_bias"][g.bin_group(items, timestamps)]
        pred = base + extra
        if self.config.clip_predictions and self.rating_scale is not None:
            pred = np.clip(pred, *self.rating_scale)
        return pred.astype(np.float32)

    def _save_state(self, path: str) -> None:
        super()._save_state(path)
        if getattr(self, "time_terms", None) is not None:
            np.savez(os.path.join(path, "time_terms.npz"), **self.time_terms)

    def _load_state(self, path: str) -> None:
        super()._load_state(path)
        file = os.path.join(path, "time_terms.npz")
        self.time_terms = None
        if os.path.exists(file):
            with np.load(file) as z:
                self.time_terms = {k: z[k] for k in z.files}

    # ------------------------------------------------------------------ fold-in
    def fold_in(self, user_items: sp.csr_matrix):
        """(factors, biases) of new users: :meth:`recalculate_user`; with ``implicit_user``
        the rated items also set the prior mean of the factors and of the bias."""
        if not self.config.implicit_user:
            return self.recalculate_user(user_items), None
        return self._implicit_fold_in_rows(user_items)

    def recalculate_user(self, user_items: sp.csr_matrix) -> np.ndarray:
        """Posterior-mean factors float32 [b, posterior_rank] of new users.

        Bayesian linear regression of each row's ratings (minus ``mu`` and item offsets) on the
        posterior-mean item factors, with a zero-mean Gaussian prior whose per-dimension
        variance is the trained users' mean square in that dimension and the model's noise
        precision: a ridge solve in coordinates where the prior is isotropic. With
        ``implicit_user`` the prior is centred on the implicit prediction (:meth:`fold_in`).
        """
        if self.config.implicit_user:
            return self._implicit_fold_in_rows(user_items)[0]
        rows = sp.csr_matrix(user_items)
        rows.sort_indices()
        P = self.model.user_factors.numpy().astype(np.float64)
        scale = np.sqrt(np.mean(P ** 2, axis=0)) if len(P) else np.ones(P.shape[1])
        scale = np.maximum(scale, 1e-8)  # unused dimensions: a tight prior keeps them at 0
        V = self.model.item_factors.numpy().astype(np.float64) * scale
        z = ridge_fold_in(V, rows, 1.0 / self.config.noise_precision, self.fold_in_targets(rows))
        return (z * scale).astype(np.float32)

    def _implicit_prior(self):
        """(mean [r + 1], weights [n_items, r + 1], scale [r + 1]) of the fold-in prior: the
        trained users' posterior-mean ``[p_u, b_u]`` regressed on their implicit features by
        the SVD++ link's ridge system (cached; rebuilt from the training matrix after load)."""
        if getattr(self, "_implicit_fold_in", None) is None:
            m = self.model
            T = np.c_[m.user_factors.numpy(), m.user_bias.embeddings.numpy()].astype(np.float64)
            seen = self._seen.tocoo()
            X = implicit_features(seen.row, seen.col, self.n_users, self.n_items)
            K = (X.T @ X).toarray()
            K[np.diag_indices_from(K)] += self.config.implicit_precision
            mean = T.mean(axis=0)
            W = scipy.linalg.cho_solve(scipy.linalg.cho_factor(K), X.T @ (T - mean))
            resid = T - mean - X @ W
            scale = np.maximum(np.sqrt(np.mean(resid ** 2, axis=0)), 1e-8)
            self._implicit_fold_in = (mean, W, scale)
        return self._implicit_fold_in

    def _implicit_fold_in_rows(self, user_items: sp.csr_matrix):
        rows = sp.csr_matrix(user_items)
        rows.sort_indices()
        mean, W, scale = self._implicit_prior()
        coo = rows.tocoo()
        X = implicit_features(coo.row, coo.col, rows.shape[0], self.n_items)
        prior = mean + X @ W  # [b, r + 1]
        m = self.model
        V = np.c_[m.item_factors.numpy(), np.ones(self.n_items)].astype(np.float64)
        targets = self.fold_in_targets(rows) - np.einsum(
            "nd,nd->n", V[rows.indices], np.repeat(prior, np.diff(rows.indptr), axis=0))
        z = ridge_fold_in(V * scale, rows, 1.0 / self.config.noise_precision, targets)
        x = prior + z * scale
        return x[:, :-1].astype(np.float32), x[:, -1].astype(np.float32)


@register("bayesian_svdpp")
class BayesianSVDpp(BayesianMF):
    """Bayesian SVD++ (and, with ``implicit_item``, its flipped variant): module docstring."""

    config_class = BayesianSVDppConfig
