"""Bayesian biased matrix factorization fitted by Gibbs sampling ("bayesian_mf").

The model is biased MF with priors (Salakhutdinov & Mnih 2008, BPMF; the offsets are one more
coordinate of each row, as in Bayesian factorization machines):

    r_ui ~ N(mu + b_u + b_i + p_u . q_i, 1 / noise_precision)
    [p_u, b_u] ~ N(m_U, Lambda_U^-1)         [q_i, b_i] ~ N(m_V, Lambda_V^-1)
    (m, Lambda) ~ Normal-Wishart(0, beta0, I, d + 1) for each side

with ``mu`` the training mean (fixed). A sweep draws each side's ``(m, Lambda)`` from its
Normal-Wishart conditional, then every user's ``[p_u, b_u]`` from its Gaussian conditional
given the items, then every item's given the users. The row conditionals are ALS's ridge
systems with the prior in place of lambda, plus a Cholesky-shaped noise draw, batched over the
same padded chunks of CSR rows (:func:`tfmf.models.als.chunk_rows`); nothing is densified.

Why sample instead of minimising: the prediction is the posterior mean of the rating, averaged
over the draws after burn-in, and the priors adapt the regularization per dimension; on
ML-100K this beats the best-tuned SGD biased MF by about 0.01 RMSE (docs/BENCHMARKS.md).

The averaged dot product ``(1/S) sum_s P_s Q_s^T`` has rank up to ``S d``. It is kept
compressed to rank ``posterior_rank`` by an exact truncated SVD of the running low-rank sum
(QR of both sides, SVD of the small core; :class:`LowRankMean`), so the fitted model is an
ordinary :class:`~tfmf.models.mf.BiasedMF` of dimension ``posterior_rank`` and predict, score,
recommend, save/load and export are BiasedMF's. The share of the spectrum's energy dropped by
the truncation is reported as ``truncated_energy``.

Each sweep is one step of the one epoch loop (:class:`GibbsSweeps` under Keras' ``fit``), so
history, callbacks, early stopping (after burn-in) and progress are the gradient models'. The
factor model holds the current draw during burn-in and the running posterior mean after it,
so per-sweep validation scores exactly what would be stored. The chain state (draws, running
sums, generator) is not checkpointed: a fit does not resume; refit.

The sampler is single-process float32 (``train.precision`` is ignored); under horovodrun every
rank runs the same chain, so launch it as one process.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.stats
import tensorflow as tf
from threadpoolctl import threadpool_limits

from tfmf.config import TrainConfig, check
from tfmf.data.interactions import InteractionData
from tfmf.errors import TrainingDiverged
from tfmf.models.als import RowChunk, chunk_rows, gather_rows_back
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
      chunk_size: rows per batched draw; bounds memory.
      seed: sampler seed (None: TrainConfig.seed).
      clip_predictions: clip ``predict`` to the fit-time rating scale.
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

    def validate(self, key: str) -> None:
        check(self.factors >= 1, f"{key}.factors", "must be >= 1")
        check(self.noise_precision > 0, f"{key}.noise_precision", "must be > 0")
        check(self.burn_in >= 0, f"{key}.burn_in", "must be >= 0")
        check(self.samples >= 1, f"{key}.samples", "must be >= 1")
        check(self.posterior_rank >= 1, f"{key}.posterior_rank", "must be >= 1")
        check(self.beta0 > 0, f"{key}.beta0", "must be > 0")
        check(self.init_stddev > 0, f"{key}.init_stddev", "must be > 0")
        check(self.chunk_size >= 1, f"{key}.chunk_size", "must be >= 1")


# --------------------------------------------------------------------------- conditionals
def sample_normal_wishart(rows: np.ndarray, beta0: float, rng: np.random.Generator
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Draws ``(m, Lambda)`` from their Normal-Wishart conditional given the current rows.

    Prior: ``Lambda ~ Wishart(W0 = I, nu0 = D)``, ``m | Lambda ~ N(0, (beta0 Lambda)^-1)``.

    Args:
      rows: float [n, D] current draws of one side (factors with the bias column).
      beta0: prior strength of the mean.
      rng: the sampler's generator.

    Returns:
      (mean [D], precision [D, D]), float64.
    """
    rows = np.asarray(rows, np.float64)
    n, dim = rows.shape
    xbar = rows.mean(axis=0)
    centred = rows - xbar
    beta, nu = beta0 + n, dim + n
    scale_inv = np.eye(dim) + centred.T @ centred + (beta0 * n / beta) * np.outer(xbar, xbar)
    scale = np.linalg.inv(scale_inv)
    precision = scipy.stats.wishart(df=nu, scale=(scale + scale.T) / 2).rvs(random_state=rng)
    precision = np.atleast_2d(precision)
    cov = np.linalg.inv(beta * precision)
    mean = rng.multivariate_normal(n * xbar / beta, (cov + cov.T) / 2)
    return mean, precision


@tf.function(reduce_retracing=True)
def _draw_chunk(other, offset, prior_precision, prior_shift, noise_precision, cols, vals, mask,
                noise):
    """One Gaussian draw per row: N(A^-1 b, A^-1) with A = Lambda + a X^T X,
    b = Lambda m + a X^T (r - offset), X the row's gathered design rows."""
    design = tf.gather(other, cols) * mask[..., None]
    target = (vals - tf.gather(offset, cols)) * mask
    lhs = noise_precision * tf.matmul(design, design, transpose_a=True) + prior_precision[None]
    rhs = (noise_precision * tf.matmul(design, target[..., None], transpose_a=True)
           + prior_shift[None, :, None])
    chol = tf.linalg.cholesky(lhs)
    mean = tf.linalg.cholesky_solve(chol, rhs)
    # x = L^-T z has covariance (L L^T)^-1 = A^-1.
    draw = tf.linalg.triangular_solve(chol, noise[..., None], lower=True, adjoint=True)
    return tf.squeeze(mean + draw, -1)


def draw_rows(chunks: list[RowChunk], other: tf.Tensor, offset: tf.Tensor, mean: np.ndarray,
              precision: np.ndarray, noise_precision: float, n_rows: int,
              rng: np.random.Generator) -> tf.Tensor:
    """One Gibbs half-step: every row's ``[factors, bias]`` from its Gaussian conditional.

    Args:
      chunks: the rows' ratings, from :func:`~tfmf.models.als.chunk_rows`.
      other: float32 [n_cols, D] the other side's ``[factors, 1]``.
      offset: float32 [n_cols] ``mu + other bias`` subtracted from the ratings.
      mean, precision: the side's prior ``m`` [D] and ``Lambda`` [D, D].
      noise_precision: 1 / rating noise variance.
      n_rows: rows of this side.
      rng: the sampler's generator (noise is drawn in NumPy so runs replay exactly).

    Returns:
      float32 [n_rows, D].
    """
    dim = int(other.shape[1])
    lam = tf.constant(precision, tf.float32)
    shift = tf.constant(precision @ mean, tf.float32)
    a = tf.constant(noise_precision, tf.float32)
    parts = [_draw_chunk(other, offset, lam, shift, a, *c.tensors(),
                         tf.constant(rng.standard_normal((len(c.rows), dim)), tf.float32))
             for c in chunks]
    return gather_rows_back(parts, chunks, n_rows, dim)


# --------------------------------------------------------------------------- posterior mean
class LowRankMean:
    """Running mean of products ``P_s Q_s^T`` kept as a rank-``rank`` factorization.

    ``add`` appends a draw's factors to the running sum and re-compresses exactly: with
    ``L = [left, P]`` and ``R = [right, Q]``, ``L = Q_L R_L`` and ``R = Q_R R_R`` (thin QR),
    the SVD ``R_L R_R^T = X S Y^T`` of the small core gives ``L R^T = (Q_L X) S (Q_R Y)^T``,
    truncated to the ``rank`` largest singular values. No users x items matrix is formed.

    Args:
      rank: rank kept.
    """

    def __init__(self, rank: int):
        self.rank = int(rank)
        self.count = 0
        self.left: np.ndarray | None = None   # [n_users, k], orthonormal columns
        self.right: np.ndarray | None = None  # [n_items, k], orthonormal columns
        self.singular: np.ndarray | None = None  # [k] of the running *sum*
        self.dropped_energy = 0.0  # sum of squared singular values truncated so far
        self.total_energy = 0.0

    def add(self, P: np.ndarray, Q: np.ndarray) -> None:
        """Adds one draw ``P Q^T`` (P [n_users, d], Q [n_items, d])."""
        P, Q = np.asarray(P, np.float64), np.asarray(Q, np.float64)
        if self.left is None:
            L, R = P, Q
        else:
            L = np.concatenate([self.left * self.singular, P], axis=1)
            R = np.concatenate([self.right, Q], axis=1)
        ql, rl = np.linalg.qr(L)
        qr, rr = np.linalg.qr(R)
        x, s, yt = np.linalg.svd(rl @ rr.T)
        k = min(self.rank, len(s))
        self.dropped_energy += float(np.sum(s[k:] ** 2))
        self.total_energy = float(np.sum(s ** 2)) + self.dropped_energy
        self.left, self.singular, self.right = ql @ x[:, :k], s[:k], qr @ yt[:k].T
        self.count += 1

    def factors(self, rank: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(P [n_users, rank], Q [n_items, rank]) with ``P Q^T`` the running mean.

        The scale is split evenly (``sqrt(s / count)`` on both sides); columns past the
        current rank are zero.
        """
        rank = self.rank if rank is None else rank
        n_u, n_i = self.left.shape[0], self.right.shape[0]
        P, Q = np.zeros((n_u, rank)), np.zeros((n_i, rank))
        k = min(rank, len(self.singular))
        root = np.sqrt(self.singular[:k] / self.count)
        P[:, :k] = self.left[:, :k] * root
        Q[:, :k] = self.right[:, :k] * root
        return P.astype(np.float32), Q.astype(np.float32)

    @property
    def truncated_energy(self) -> float:
        """Share of the (accumulated) squared singular values dropped by truncation."""
        return self.dropped_energy / self.total_energy if self.total_energy > 0 else 0.0


# --------------------------------------------------------------------------- the chain
class GibbsSweeps(SweepModel):
    """One Gibbs sweep per ``fit`` step (module docstring), written into a factor model.

    Args:
      factors: the BiasedMatrixFactorization (dimension ``posterior_rank``) that holds the
        current draw during burn-in and the posterior mean after it.
      config: the sampler's hyperparameters.
      by_user: CSR [n_users, n_items] training ratings (sorted indices).
      mu: the fixed global mean.
      seed: the chain's seed.
    """

    resumable = False
    loss_components = ("rmse",)

    def __init__(self, factors, config: BayesianMFConfig, by_user: sp.csr_matrix, mu: float,
                 seed: int):
        super().__init__()
        c = self.config = config
        self.early_stopping_start = c.burn_in
        self.factors, self.mu = factors, mu
        by_item = by_user.T.tocsr()
        by_item.sort_indices()
        n_u, n_i, d = by_user.shape[0], by_user.shape[1], c.factors
        self.user_chunks = chunk_rows(by_user, c.chunk_size)
        self.item_chunks = chunk_rows(by_item, c.chunk_size)
        self.rng = np.random.default_rng(seed)
        # Rows are [factors, bias]; the other side enters as [factors, 1] with offset mu + bias.
        users = np.c_[self.rng.normal(0, c.init_stddev, (n_u, d)), np.zeros(n_u)]
        items = np.c_[self.rng.normal(0, c.init_stddev, (n_i, d)), np.zeros(n_i)]
        self.users = tf.constant(users.astype(np.float32))
        self.items = tf.constant(items.astype(np.float32))
        self.ones_u, self.ones_i = tf.ones([n_u, 1]), tf.ones([n_i, 1])
        self.posterior = LowRankMean(c.posterior_rank)
        self.bias_sum_u, self.bias_sum_i = np.zeros(n_u), np.zeros(n_i)
        coo = by_user.tocoo()
        self.train_pairs = (coo.row, coo.col, coo.data.astype(np.float64))
        self.built = True  # its variables are the (built) factor model's

    def sweep(self, epoch: int) -> dict[str, float]:
        c, mu, d = self.config, self.mu, self.config.factors
        rng, users, items = self.rng, self.users, self.items
        # One BLAS thread for the small NumPy algebra: OpenBLAS threads contending with TF's
        # pool made a 1682 x 178 QR 10x slower (0.2 s instead of 0.018 s).
        with threadpool_limits(limits=1, user_api="blas"):
            m_u, lam_u = sample_normal_wishart(users.numpy(), c.beta0, rng)
            users = draw_rows(self.user_chunks, tf.concat([items[:, :d], self.ones_i], 1),
                              mu + items[:, d], m_u, lam_u, c.noise_precision,
                              int(users.shape[0]), rng)
            m_i, lam_i = sample_normal_wishart(items.numpy(), c.beta0, rng)
            items = draw_rows(self.item_chunks, tf.concat([users[:, :d], self.ones_u], 1),
                              mu + users[:, d], m_i, lam_i, c.noise_precision,
                              int(items.shape[0]), rng)
            self.users, self.items = users, items
            U, V = users.numpy(), items.numpy()
            tr_u, tr_i, tr_r = self.train_pairs
            rmse = float(np.sqrt(np.mean((tr_r - _predict(U, V, mu, tr_u, tr_i)) ** 2)))
            if epoch >= c.burn_in:
                self.posterior.add(U[:, :d], V[:, :d])
                self.bias_sum_u += U[:, d]
                self.bias_sum_i += V[:, d]
                self.assign_posterior()
            else:
                self._assign(*_padded(U[:, :d], V[:, :d], c.posterior_rank), U[:, d], V[:, d])
        return {"rmse": rmse}

    def assign_posterior(self) -> None:
        """The running posterior mean (rank ``posterior_rank``) into the factor model."""
        n = self.posterior.count
        P, Q = self.posterior.factors()
        self._assign(P, Q, self.bias_sum_u / n, self.bias_sum_i / n)

    def _assign(self, P, Q, bu, bi) -> None:
        m = self.factors
        m.user_factors.assign(P)
        m.item_factors.assign(Q)
        m.user_bias.embeddings.assign(np.asarray(bu, np.float32)[:, None])
        m.item_bias.embeddings.assign(np.asarray(bi, np.float32)[:, None])


def _padded(P: np.ndarray, Q: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """A draw's factors widened (zeros) or cut to the factor model's dimension."""
    out = []
    for X in (P, Q):
        Y = np.zeros((X.shape[0], rank), np.float32)
        k = min(rank, X.shape[1])
        Y[:, :k] = X[:, :k]
        out.append(Y)
    return out[0], out[1]


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

        memory.preflight(memory.gibbs_workspace_bytes(train.n_users, train.n_items, c.factors,
                                                      c.chunk_size, c.posterior_rank),
                         f"Gibbs sampler ({train.n_users:,} x {train.n_items:,}, "
                         f"{c.factors} factors)", "model.factors")
        self._begin(train, cfg)
        self.model = self.build_model(train, cfg)
        by_user = sp.csr_matrix(self._seen, dtype=np.float32)
        by_user.sort_indices()
        chain = GibbsSweeps(self.model, c, by_user, float(self.model.global_mean.numpy()),
                            cfg.seed)
        compile_model(chain, cfg, steps_per_epoch=1, run_eagerly=True)
        self.fit_keras(sweep_dataset(), cfg, steps_per_epoch=1, validation=validation,
                       run_dir=run_dir, callbacks=callbacks, resume=False, model=chain)
        if chain.posterior.count == 0:  # stopped during burn-in: keep the last draw
            U, V = chain.users.numpy(), chain.items.numpy()
            chain.posterior.add(U[:, :c.factors], V[:, :c.factors])
            chain.bias_sum_u, chain.bias_sum_i = U[:, c.factors], V[:, c.factors]
            chain.assign_posterior()
        self.truncated_energy = chain.posterior.truncated_energy
        if self.history:
            self.history[-1]["truncated_energy"] = self.truncated_energy
        return self

    # ------------------------------------------------------------------ fold-in
    def recalculate_user(self, user_items: sp.csr_matrix) -> np.ndarray:
        """Posterior-mean factors float32 [b, posterior_rank] of new users.

        Bayesian linear regression of each row's ratings (minus ``mu`` and item offsets) on the
        posterior-mean item factors, with a zero-mean Gaussian prior whose per-dimension
        variance is the trained users' mean square in that dimension and the model's noise
        precision: a ridge solve in coordinates where the prior is isotropic.
        """
        rows = sp.csr_matrix(user_items)
        rows.sort_indices()
        P = self.model.user_factors.numpy().astype(np.float64)
        scale = np.sqrt(np.mean(P ** 2, axis=0)) if len(P) else np.ones(P.shape[1])
        scale = np.maximum(scale, 1e-8)  # unused dimensions: a tight prior keeps them at 0
        V = self.model.item_factors.numpy().astype(np.float64) * scale
        z = ridge_fold_in(V, rows, 1.0 / self.config.noise_precision, self.fold_in_targets(rows))
        return (z * scale).astype(np.float32)


def _predict(U: np.ndarray, V: np.ndarray, mu: float, users: np.ndarray, items: np.ndarray
             ) -> np.ndarray:
    """``mu + b_u + b_i + p_u . q_i`` (float64 [n]) for index pairs, rows ``[factors, bias]``.

    The products run in float32 (the draws' precision); only the sum is widened.
    """
    u, v = U[users], V[items]
    dot = np.einsum("nd,nd->n", u[:, :-1], v[:, :-1])
    return mu + (u[:, -1] + v[:, -1] + dot).astype(np.float64)
