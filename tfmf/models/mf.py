"""Explicit-feedback matrix factorization: plain (``mf``) and biased (``biased_mf``).

The Keras models are :class:`~tfmf.training.model.ComponentLossModel` subclasses trained by
Keras' ``fit`` (``model.compile(optimizer=...); model.fit(tfmf.data.rating_dataset(train))``);
their data loss is a TensorFlow Recommenders ``tfrs.tasks.Ranking`` task (MSE or Huber on the
rating). They are not ``tfrs.models.Model`` subclasses because TFRS's ``compute_loss`` returns
one scalar, while history and TensorBoard log every named component (``loss``, ``data``,
``l2``, ``gramian``, ``bias_l2``) per epoch.

One factor model, several estimators: :class:`FactorRecommender` owns the fitted factors
(user/item factors, biases, global mean) and everything done with them -- predict, score,
recommend, fold-in, save/load, SavedModel export. SGD (``mf``, ``biased_mf``), ALS (``als``,
``ials``, :mod:`tfmf.models.als`) and Gibbs sampling (``bayesian_mf``,
:mod:`tfmf.models.bayesian`) are only different ways of producing it.

Sparse updates: with ``l2_mode="batch"`` and ``gramian=0`` every gradient is an
``tf.IndexedSlices`` over the rows in the batch, so SGD/Adagrad apply row-wise (Adam's legacy
sparse update still decays its moment slots densely). ``l2_mode="frobenius"`` or ``gramian>0``
depend on whole tables, so their gradients are dense [n, d] every step; that is inherent to
those penalties, and cheap for MovieLens-sized catalogues.

Mixed precision: factor embeddings compute in the policy's compute dtype (float16/bfloat16),
the dot product too; biases, the global mean, losses and regularizers are float32.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras

from tfmf.config import TrainConfig, check
from tfmf.data.interactions import InteractionData
from tfmf.models import regularizers
from tfmf.models.keras_recommender import KerasRecommender
from tfmf.registry import register
from tfmf.training.model import ComponentLossModel
from tfmf.training.precision import precision_policy


# --------------------------------------------------------------------------- configs
@dataclass
class MFConfig:
    """Hyperparameters of plain matrix factorization ``r_ui = u . v``.

    Attributes:
      embedding_dim: latent dimension d.
      init_stddev: standard deviation of the normal initialisation of the factors.
      l2: weight of the L2 penalty on the factors.
      l2_mode: "batch": ``mean_b(||u_b||^2 + ||v_b||^2)`` over the rows in each batch
        (frequency-weighted, sparse gradients); "frobenius": the JAX seed's
        ``||U||^2 / n_users + ||V||^2 / n_items`` (uniform per row, dense gradients).
      gramian: weight of ``sum((U^T U) * (V^T V)) / (N M)`` (Krichene et al. 2018): the mean
        squared score over all user-item pairs.
      loss: data loss on ratings: "mse" or "huber". Keras' Huber is ``0.5 e^2`` inside
        ``huber_delta``, half the MSE gradient, so halve ``l2``/``gramian``/``bias_l2`` (or
        double the learning rate) to keep the same balance when switching.
      huber_delta: Huber transition point (in rating units).
      clip_predictions: clip ``predict`` to the rating scale seen at fit time.
      fold_in_l2: ridge lambda for :meth:`recalculate_user`; None derives it from ``l2``
        (``l2 * n_ratings`` of the row for batch L2, ``l2 * mean ratings per user`` for
        frobenius) so folded-in users are regularised like trained ones.
    """

    embedding_dim: int = 64
    init_stddev: float = 0.1
    l2: float = 0.05
    l2_mode: Literal["batch", "frobenius"] = "batch"
    gramian: float = 0.0
    loss: Literal["mse", "huber"] = "mse"
    huber_delta: float = 1.0
    clip_predictions: bool = True
    fold_in_l2: float | None = None

    def validate(self, key: str) -> None:
        check(self.embedding_dim >= 1, f"{key}.embedding_dim", "must be >= 1")
        check(self.init_stddev > 0, f"{key}.init_stddev", "must be > 0")
        check(self.l2 >= 0, f"{key}.l2", "must be >= 0")
        check(self.gramian >= 0, f"{key}.gramian", "must be >= 0")
        check(self.huber_delta > 0, f"{key}.huber_delta", "must be > 0")
        check(self.fold_in_l2 is None or self.fold_in_l2 > 0, f"{key}.fold_in_l2", "must be > 0")


@dataclass
class BiasedMFConfig(MFConfig):
    """Biased MF ``r_ui = mu + b_u + b_i + u . v`` (Koren et al. 2009).

    Attributes:
      use_bias: learn the user and item offsets (False: global mean + dot product).
      bias_l2: weight of the L2 penalty on the offsets (same ``l2_mode`` as the factors).
    """

    use_bias: bool = True
    bias_l2: float = 0.0

    def validate(self, key: str) -> None:
        super().validate(key)
        check(self.bias_l2 >= 0, f"{key}.bias_l2", "must be >= 0")


def rating_loss(kind: str, huber_delta: float = 1.0) -> tf_keras.losses.Loss:
    """The Keras loss behind the Ranking task: mean squared error or Huber."""
    if kind == "mse":
        return tf_keras.losses.MeanSquaredError()
    if kind == "huber":
        return tf_keras.losses.Huber(delta=huber_delta)
    raise ValueError(f"loss must be 'mse' or 'huber', got {kind!r}")


# --------------------------------------------------------------------------- Keras models
def build_eagerly(*layers: tf_keras.layers.Layer) -> None:
    """Creates layer variables now, so checkpoints restore into a freshly built model."""
    for layer in layers:
        layer.build((None,))


class MatrixFactorization(ComponentLossModel):
    """``r_ui = u . v`` with a TFRS Ranking task as the data loss.

    Variables are created in the constructor (no lazy build), so a checkpoint can be restored
    into a freshly constructed model.

    Args:
      n_users, n_items: table sizes.
      config: an :class:`MFConfig` (None: its defaults).
      seed: initialisation seed (users use ``seed``, items ``seed + 1``).
      **kwargs: MFConfig fields (e.g. ``embedding_dim=32``) or Keras Model arguments.
    """

    loss_components = ("loss", "data", "l2", "gramian", "bias_l2")
    config_class = MFConfig

    def __init__(self, n_users: int, n_items: int, config: MFConfig | None = None, seed: int = 0,
                 **kwargs):
        fields = {f.name for f in dataclasses.fields(self.config_class)}
        overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
        config = dataclasses.replace(config or self.config_class(), **overrides)
        config.validate("model")
        super().__init__(**kwargs)
        self.config = config
        self.n_users, self.n_items = int(n_users), int(n_items)
        d = config.embedding_dim
        init = lambda s: tf_keras.initializers.RandomNormal(stddev=config.init_stddev, seed=s)
        self.user_embedding = tf_keras.layers.Embedding(
            self.n_users, d, embeddings_initializer=init(seed), name="user_embedding")
        self.item_embedding = tf_keras.layers.Embedding(
            self.n_items, d, embeddings_initializer=init(seed + 1), name="item_embedding")
        # The task is a Layer: under a mixed policy it would cast the labels to float16.
        with precision_policy("float32"):
            self.task = tfrs.tasks.Ranking(loss=rating_loss(config.loss, config.huber_delta))
        build_eagerly(self.user_embedding, self.item_embedding)
        self.built = True  # every variable exists: checkpoints restore into a fresh model

    @property
    def user_factors(self) -> tf.Variable:
        return self.user_embedding.embeddings

    @property
    def item_factors(self) -> tf.Variable:
        return self.item_embedding.embeddings

    def _forward(self, batch: dict) -> tuple[tf.Tensor, list[tf.Tensor], list[tf.Tensor]]:
        """(float32 predictions [b], gathered factor rows, gathered bias rows)."""
        u = self.user_embedding(batch["user_id"])
        v = self.item_embedding(batch["item_id"])
        dot = tf.cast(tf.reduce_sum(u * v, axis=-1), tf.float32)
        return dot, [u, v], []

    def call(self, inputs: dict, training: bool = False) -> tf.Tensor:
        """Predicted ratings float32 [b] for ``{"user_id": int[b], "item_id": int[b]}``."""
        return self._forward(inputs)[0]

    def _bias_penalty(self, bias_rows: list[tf.Tensor]) -> tf.Tensor:
        return tf.constant(0.0, tf.float32)

    # Offsets around the dot product, used by scoring, fold-in and export (float32).
    def user_offsets(self, idx: tf.Tensor) -> tf.Tensor:
        """[b, 1] added to known users' scores (here 0)."""
        return tf.zeros((tf.shape(idx)[0], 1))

    def new_user_offsets(self, n: int) -> tf.Tensor:
        """[n, 1] added to folded-in users' scores, before their own bias (here 0)."""
        return tf.zeros((n, 1))

    def item_offsets(self) -> tf.Tensor:
        """[1, n_items] added to every user's scores (here 0)."""
        return tf.zeros((1, self.n_items))

    def entry_offsets(self, items: np.ndarray) -> np.ndarray:
        """float64 [n]: the part of each rating of ``items`` the factors do not explain."""
        return np.zeros(len(items))

    def compute_losses(self, batch: dict, training: bool = False) -> dict[str, tf.Tensor]:
        """Total loss and its weighted components for a rating batch.

        Returns:
          ``{"loss", "data", "l2", "gramian", "bias_l2"}`` float32 scalars; ``loss`` is the sum
          of the others.
        """
        cfg = self.config
        pred, rows, bias_rows = self._forward(batch)
        labels = tf.cast(batch["rating"], tf.float32)
        data = self.task(labels=labels[:, None], predictions=pred[:, None], training=training,
                         compute_metrics=False)
        zero = tf.constant(0.0, tf.float32)
        l2 = zero
        if cfg.l2 > 0:
            reg = (regularizers.batch_l2(*rows) if cfg.l2_mode == "batch"
                   else regularizers.frobenius_l2(self.user_factors, self.item_factors))
            l2 = cfg.l2 * reg
        gram = zero
        if cfg.gramian > 0:
            gram = cfg.gramian * regularizers.gramian(self.user_factors, self.item_factors)
        bias = self._bias_penalty(bias_rows)
        data = tf.cast(data, tf.float32)
        return {"loss": data + l2 + gram + bias, "data": data, "l2": l2, "gramian": gram,
                "bias_l2": bias}


class BiasedMatrixFactorization(MatrixFactorization):
    """``r_ui = mu + b_u + b_i + u . v``; ``mu`` is the (frozen) training mean.

    Args:
      n_users, n_items, config, seed: as :class:`MatrixFactorization` (config a BiasedMFConfig).
      global_mean: ``mu``; restored from checkpoints like the other weights.
    """

    config_class = BiasedMFConfig

    def __init__(self, n_users: int, n_items: int, config: BiasedMFConfig | None = None,
                 seed: int = 0, global_mean: float = 0.0, **kwargs):
        super().__init__(n_users, n_items, config, seed, **kwargs)
        config = self.config
        if config.use_bias:
            # Offsets stay float32 under mixed precision: 4.0 + 0.001 is not representable in fp16.
            self.user_bias = tf_keras.layers.Embedding(
                self.n_users, 1, embeddings_initializer="zeros", dtype="float32", name="user_bias")
            self.item_bias = tf_keras.layers.Embedding(
                self.n_items, 1, embeddings_initializer="zeros", dtype="float32", name="item_bias")
            build_eagerly(self.user_bias, self.item_bias)
        self.global_mean = tf.Variable(float(global_mean), trainable=False, dtype=tf.float32,
                                       name="global_mean")

    def _forward(self, batch: dict):
        dot, rows, _ = super()._forward(batch)
        pred = dot + self.global_mean
        bias_rows: list[tf.Tensor] = []
        if self.config.use_bias:
            bu = self.user_bias(batch["user_id"])[:, 0]
            bi = self.item_bias(batch["item_id"])[:, 0]
            pred = pred + bu + bi
            bias_rows = [bu, bi]
        return pred, rows, bias_rows

    def _bias_penalty(self, bias_rows: list[tf.Tensor]) -> tf.Tensor:
        cfg = self.config
        if not (cfg.use_bias and cfg.bias_l2 > 0):
            return super()._bias_penalty(bias_rows)
        reg = (regularizers.batch_l2(*bias_rows) if cfg.l2_mode == "batch"
               else regularizers.frobenius_l2(self.user_bias.embeddings, self.item_bias.embeddings))
        return cfg.bias_l2 * reg

    def user_offsets(self, idx: tf.Tensor) -> tf.Tensor:
        out = tf.fill((tf.shape(idx)[0], 1), self.global_mean)
        if self.config.use_bias:
            out += tf.gather(self.user_bias.embeddings, idx)
        return out

    def new_user_offsets(self, n: int) -> tf.Tensor:
        return tf.fill((n, 1), self.global_mean)

    def item_offsets(self) -> tf.Tensor:
        if not self.config.use_bias:
            return super().item_offsets()
        return self.item_bias.embeddings[:, 0][None, :]

    def entry_offsets(self, items: np.ndarray) -> np.ndarray:
        off = np.full(len(items), float(self.global_mean.numpy()))
        if self.config.use_bias:
            off += self.item_bias.embeddings.numpy()[items, 0]
        return off


# --------------------------------------------------------------------------- Recommenders
def ridge_fold_in(V: np.ndarray, user_items: sp.csr_matrix, lam: np.ndarray | float,
                  targets: np.ndarray | None = None) -> np.ndarray:
    """Per-row ridge regression ``p = (V_S^T V_S + lam I)^{-1} V_S^T r_S`` on rated items S.

    Args:
      V: [n_items, d] item factors.
      user_items: CSR [b, n_items] ratings to fit.
      lam: ridge lambda, scalar or one per row.
      targets: values to regress instead of ``user_items.data`` (same order), e.g. ratings
        minus biases.

    Returns:
      float32 [b, d] user factors (zeros for empty rows).
    """
    V = np.asarray(V, np.float64)
    b, d = user_items.shape[0], V.shape[1]
    r = np.asarray(user_items.data if targets is None else targets, np.float64)
    lam = np.broadcast_to(np.asarray(lam, np.float64), (b,))
    out = np.zeros((b, d), np.float32)
    indptr, cols = user_items.indptr, user_items.indices
    diag = np.arange(d)
    # One d x d system per row (each row rated a different item set); memory stays O(d^2).
    for row in np.flatnonzero(np.diff(indptr)):
        s = slice(indptr[row], indptr[row + 1])
        Vs = V[cols[s]]
        A = Vs.T @ Vs
        A[diag, diag] += lam[row]
        out[row] = np.linalg.solve(A, Vs.T @ r[s])
    return out


class FactorRecommender(KerasRecommender):
    """The fitted factor model, ``mu + b_u + b_i + p_u . q_i`` (module docstring), and all
    inference with it; estimators subclass it and define only how it is fitted.

    ``self.model`` is a :class:`MatrixFactorization` or :class:`BiasedMatrixFactorization`
    (built from :meth:`factor_config`); predictions clip to the fit-time rating scale.
    """

    task = "explicit"
    monitor = "val_rmse"

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self.rating_scale: tuple[float, float] | None = None

    def factor_config(self) -> MFConfig:
        """The config of the factor model (``BiasedMFConfig`` for a biased one): the model's
        own for SGD; ALS and Bayesian MF map theirs onto it (dimension, init)."""
        return self.config

    def build_model(self, train: InteractionData, train_config: TrainConfig) -> MatrixFactorization:
        cfg = self.factor_config()
        if isinstance(cfg, BiasedMFConfig):
            # Empty (shape-only) data when loading: mu is then restored from the checkpoint.
            mu = float(train.values.mean()) if train.nnz else 0.0
            model = BiasedMatrixFactorization(train.n_users, train.n_items, cfg,
                                              seed=train_config.seed, global_mean=mu)
        else:
            model = MatrixFactorization(train.n_users, train.n_items, cfg, seed=train_config.seed)
        if train.nnz:
            # Users/items without training ratings would keep their random initial factors
            # (batch L2 never reaches them) and add noise to their predictions: zero them so
            # they predict the bias terms only.
            for table, idx, n in ((model.user_factors, train.users, train.n_users),
                                  (model.item_factors, train.items, train.n_items)):
                unseen = np.flatnonzero(np.bincount(idx, minlength=n) == 0)
                if len(unseen):
                    zeros = tf.zeros((len(unseen), cfg.embedding_dim), table.dtype)
                    table.scatter_update(tf.IndexedSlices(zeros, tf.constant(unseen, tf.int32)))
        return model

    def _remember_training_data(self, train: InteractionData) -> None:
        super()._remember_training_data(train)
        self.rating_scale = train.clip_range()

    # ------------------------------------------------------------------ inference
    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Ratings float32 [n] for index pairs, clipped to the fit-time scale if configured."""
        batch = {"user_id": tf.constant(np.asarray(users, np.int32)),
                 "item_id": tf.constant(np.asarray(items, np.int32))}
        pred = self.model(batch).numpy()
        if self.factor_config().clip_predictions and self.rating_scale is not None:
            pred = np.clip(pred, *self.rating_scale)
        return pred.astype(np.float32)

    def score(self, users: np.ndarray | None = None, user_items: sp.csr_matrix | None = None
              ) -> np.ndarray:
        """Predicted ratings of every item, float32 [batch, n_items] (unclipped, for ranking).

        Known users use their trained factors; ``user_items`` rows are folded in with
        :meth:`fold_in` (factors, and a bias where the estimator solves one).
        """
        m = self.model
        V = tf.cast(m.item_factors, tf.float32)
        if users is not None:
            idx = tf.constant(np.asarray(users, np.int32))
            P = tf.cast(tf.gather(m.user_factors, idx), tf.float32)
            row_off = m.user_offsets(idx)
        else:
            P, bias = self.fold_in(user_items)
            P = tf.convert_to_tensor(P, tf.float32)
            row_off = m.new_user_offsets(user_items.shape[0])
            if bias is not None:
                row_off += tf.reshape(tf.cast(bias, tf.float32), [-1, 1])
        return (tf.matmul(P, V, transpose_b=True) + row_off + m.item_offsets()).numpy()

    def fold_in(self, user_items: sp.csr_matrix):
        """(factors [b, d], per-row biases [b] or None) of new users, for :meth:`score`.

        Default: :meth:`recalculate_user` and no bias; ALS also solves each row's bias.
        """
        return self.recalculate_user(user_items), None

    def fold_in_lambda(self, rows: sp.csr_matrix) -> np.ndarray:
        """The ridge lambda per row for :meth:`recalculate_user`: ``fold_in_l2``, or derived
        from ``l2`` so folded-in users are regularised like trained ones."""
        cfg = self.factor_config()
        if cfg.fold_in_l2 is not None:
            return np.full(rows.shape[0], cfg.fold_in_l2)
        if cfg.l2_mode == "batch":
            return cfg.l2 * np.diff(rows.indptr)
        per_user = self._seen.nnz / max(1, self.n_users) if self._seen is not None else 1.0
        return np.full(rows.shape[0], cfg.l2 * per_user)

    def recalculate_user(self, user_items: sp.csr_matrix) -> np.ndarray:
        """Factors float32 [b, d] of new users by ridge regression on their ratings.

        Solves ``(V_S^T V_S + lam I) p = V_S^T (r_S - offsets)`` per row with the trained item
        factors V held fixed (``lam`` from :meth:`fold_in_lambda`).
        """
        rows = sp.csr_matrix(user_items)
        rows.sort_indices()
        lam = np.maximum(self.fold_in_lambda(rows), 1e-6)  # keeps empty rows / l2=0 solvable
        V = tf.cast(self.model.item_factors, tf.float32).numpy()
        return ridge_fold_in(V, rows, lam, self.fold_in_targets(rows))

    def fold_in_targets(self, rows: sp.csr_matrix) -> np.ndarray:
        """What the fold-in regresses on: ratings minus the non-factor terms."""
        return rows.data.astype(np.float64) - self.model.entry_offsets(rows.indices)

    def export_spec(self):
        from tfmf.models.serving import FactorSpec

        m = self.model
        users = tf.range(self.n_users)
        return FactorSpec.with_offsets(tf.cast(m.user_factors, tf.float32).numpy(),
                                       tf.cast(m.item_factors, tf.float32).numpy(),
                                       m.user_offsets(users).numpy(),
                                       (m.item_offsets() + tf.zeros((1, self.n_items))).numpy())

    # ------------------------------------------------------------------ persistence
    def _save_state(self, path: str) -> None:
        super()._save_state(path)
        with open(os.path.join(path, "mf_state.json"), "w") as fh:
            json.dump({"rating_scale": list(self.rating_scale) if self.rating_scale else None}, fh)

    def _load_state(self, path: str) -> None:
        with open(os.path.join(path, "mf_state.json")) as fh:
            scale = json.load(fh)["rating_scale"]
        self.rating_scale = tuple(scale) if scale else None
        super()._load_state(path)


@register("mf")
class MF(FactorRecommender):
    """Plain matrix factorization ``u . v`` trained by SGD/Adagrad/Adam with Keras' ``fit``."""

    config_class = MFConfig

    def make_dataset(self, train, train_config, *, epoch, rank, size):
        from tfmf.data.pipelines import rating_dataset

        c = train_config
        return rating_dataset(train, c.batch_size, seed=c.seed, epoch=epoch, rank=rank,
                              size=size, shuffle=c.shuffle, prefetch=c.prefetch)

    def steps_per_epoch(self, train, train_config, size):
        from tfmf.data.pipelines import steps_per_epoch

        # Rows read per rank (train.partition): ranks agree on the largest rank's count.
        return steps_per_epoch(train.nnz, train_config.batch_size, size,
                               local=train.partition is not None and size > 1)


@register("biased_mf")
class BiasedMF(MF):
    """Biased matrix factorization ``mu + b_u + b_i + u . v`` trained by SGD/Adagrad/Adam."""

    config_class = BiasedMFConfig
