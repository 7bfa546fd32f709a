"""Mult-VAE and Mult-DAE (Liang et al. 2018, "Variational Autoencoders for Collaborative
Filtering") as tf_keras models trained by Keras' ``fit`` (``compile()`` + ``fit()``).

The input is a batch of users' item rows as a ``tf.SparseTensor`` [batch, n_items]; it is never
densified: rows are L2-normalized and dropped out on their *values*, and the first encoder layer
is a sparse-dense matmul. The decoder produces logits over all items, a log-softmax turns them
into a multinomial, and the log-likelihood gathers that log-softmax at the input's entries only.

Mult-VAE: ``loss = nll + beta * kl + l2`` with ``beta = min(anneal_cap, step / total_anneal_steps)``
(linear KL annealing). Mult-DAE shares the code path with a deterministic encoder and no KL.

Training fuses the output layer with the multinomial log-likelihood (:func:`multinomial_nll`).
With logits ``o = h W + b`` [batch, n_items], a row's input ``x`` (nonzero at its items) and
``s = sum(x)``::

    -log p(x) = -sum_i x_i (o_i - lse(o)) = s * lse(o) - sum_{i in x} x_i o_i
    d/do      = s * softmax(o) - x

so the forward pass needs the dense logits once (for the log-sum-exp) and their values at the
input's entries only, and the backward pass one dense [batch, n_items] matrix,
``s * softmax(o)``, with the sparse ``x`` subtracted in place at its entries, which feeds the
two matmuls of the gradients of ``h`` and ``W``. A stock ``log_softmax`` + gather keeps the
dense log-probabilities, scatters the gathered gradient into a zero dense matrix and runs the
log-softmax gradient over it: three more dense passes over a batch's [batch, n_items] (on
ML-20M, 40 MB each at batch 500) per step.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import tensorflow as tf
import tf_keras

from tfmf.config import TrainConfig, check
from tfmf.data.interactions import InteractionData
from tfmf.data.sparse import csr_to_sparse_tensor
from tfmf.models.keras_recommender import KerasRecommender
from tfmf.registry import register
from tfmf.training.model import ComponentLossModel
from tfmf.training.precision import cast_sparse


@dataclass
class MultVAEConfig:
    """Hyperparameters of Mult-VAE / Mult-DAE.

    Attributes:
      dims: encoder widths after the input, the last one being the latent size; the decoder
        mirrors them (default [600, 200]: n_items -> 600 -> 200 -> 600 -> n_items).
      dropout: dropout rate on the input's values (0.5 in the paper).
      lam: L2 weight decay on all kernels (added as ``lam * sum(W ** 2)``, the paper's
        ``2 * tf.contrib.layers.l2_regularizer(lam)``).
      anneal_cap: largest KL weight beta.
      total_anneal_steps: steps over which beta grows linearly from 0 (0: beta = anneal_cap).
      variational: True for Mult-VAE, False for Mult-DAE (deterministic encoder, no KL).
      activation: hidden-layer nonlinearity (tanh in the paper).
      eval_batch_size: users per scoring batch in ``score`` / ``recalculate_user`` calls.
    """

    dims: list[int] = field(default_factory=lambda: [600, 200])
    dropout: float = 0.5
    lam: float = 0.0
    anneal_cap: float = 0.2
    total_anneal_steps: int = 200_000
    variational: bool = True
    activation: str = "tanh"
    eval_batch_size: int = 1024

    def validate(self, key: str) -> None:
        check(len(self.dims) >= 1 and all(d >= 1 for d in self.dims), f"{key}.dims",
              "must be a non-empty list of positive widths")
        check(0.0 <= self.dropout < 1.0, f"{key}.dropout", "must be in [0, 1)")
        check(self.lam >= 0, f"{key}.lam", "must be >= 0")
        check(0.0 <= self.anneal_cap, f"{key}.anneal_cap", "must be >= 0")
        check(self.total_anneal_steps >= 0, f"{key}.total_anneal_steps", "must be >= 0")
        check(self.activation in ("tanh", "relu", "sigmoid", "elu", "selu", "swish"),
              f"{key}.activation", "must be one of tanh, relu, sigmoid, elu, selu, swish")
        check(self.eval_batch_size >= 1, f"{key}.eval_batch_size", "must be >= 1")


@dataclass
class MultDAEConfig(MultVAEConfig):
    """Mult-DAE: same fields, deterministic encoder (``variational`` False), weight decay on."""

    variational: bool = False
    lam: float = 0.01 / 500  # the paper's lam / batch_size

    def validate(self, key: str) -> None:
        super().validate(key)
        check(not self.variational, f"{key}.variational", "must be false for mult_dae "
              "(use mult_vae for the variational model)")


def l2_normalize_rows(x: tf.SparseTensor) -> tf.SparseTensor:
    """Each row divided by its L2 norm, computed on the values (no densifying)."""
    rows = x.indices[:, 0]
    n_rows = tf.cast(x.dense_shape[0], tf.int32)
    sq = tf.math.unsorted_segment_sum(tf.square(x.values), rows, n_rows)
    inv = tf.math.rsqrt(tf.maximum(sq, tf.constant(1e-12, sq.dtype)))
    return tf.SparseTensor(x.indices, x.values * tf.gather(inv, rows), x.dense_shape)


def prepare_rows(x: tf.SparseTensor, rate, rng: tf.random.Generator,
                 dtype) -> tf.SparseTensor:
    """Encoder input: rows L2-normalized, values dropped out at ``rate`` (inverted dropout).

    Args:
      x: [batch, n_items] rows.
      rate: dropout rate (a float, or a float32 scalar tensor; 0 disables it). A float 0 draws
        nothing from ``rng``; a tensor always draws, so the stream does not depend on its value.
      rng: the model-owned generator (checkpointed, so a resumed run continues its stream).
      dtype: the compute dtype of the result.
    """
    x = l2_normalize_rows(cast_sparse(x, tf.float32))
    if isinstance(rate, tf.Tensor) or rate > 0:
        rate = tf.cast(rate, tf.float32)
        keep = rng.uniform(tf.shape(x.values), dtype=tf.float32) >= rate
        x = tf.SparseTensor(x.indices, tf.where(keep, x.values / (1.0 - rate), 0.0),
                            x.dense_shape)
    return cast_sparse(x, dtype)


def multinomial_nll(h: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor,
                    x: tf.SparseTensor) -> tf.Tensor:
    """Summed multinomial negative log-likelihood of rows ``x`` under ``softmax(h W + b)``.

    Equals ``-sum(gather_nd(log_softmax(h @ kernel + bias), x.indices) * x.values)`` (module
    docstring for the derivation) without materialising the log-probabilities or a dense
    gradient of the gather.

    Args:
      h: [batch, d] last hidden layer (compute dtype: float32 or bfloat16/float16).
      kernel: [d, n_items] output kernel, bias: [n_items] (same dtype as ``h``).
      x: [batch, n_items] SparseTensor of float32 values (any order of its entries).

    Returns:
      float32 scalar: the sum over the batch's rows (divide by the batch size for a mean).
    """
    n_rows = tf.shape(h)[0]
    rowsum = tf.math.unsorted_segment_sum(x.values, x.indices[:, 0], n_rows)
    return _fused_nll(h, kernel, bias, x.indices, x.values, rowsum)


@tf.custom_gradient
def _fused_nll(h, kernel, bias, indices, values, rowsum):
    # matmul + bias_add back to back: grappler fuses them into one oneDNN _FusedMatMul.
    logits = tf.cast(tf.nn.bias_add(tf.matmul(h, kernel), bias), tf.float32)
    top = tf.stop_gradient(tf.reduce_max(logits, axis=1))
    # exp(o - max) is kept for the backward pass (it is softmax up to a per-row scale).
    expo = tf.exp(logits - top[:, None])
    total = tf.reduce_sum(expo, axis=1)
    lse = top + tf.math.log(total)
    nll = tf.reduce_sum(lse * rowsum) - tf.reduce_sum(tf.gather_nd(logits, indices) * values)

    def grad(upstream):
        upstream = tf.cast(upstream, tf.float32)
        d_logits = expo * (upstream * rowsum / total)[:, None]
        # Subtract x at its entries; the scatter updates the (single-use) buffer in place.
        d_logits = tf.tensor_scatter_nd_sub(d_logits, indices, values * upstream)
        d_low = tf.cast(d_logits, h.dtype)
        d_h = tf.matmul(d_low, kernel, transpose_b=True)
        d_kernel = tf.matmul(h, d_low, transpose_a=True)
        d_bias = tf.cast(tf.reduce_sum(d_logits, axis=0), bias.dtype)
        return d_h, d_kernel, d_bias, None, None, None

    return nll, grad


class SparseDense(tf_keras.layers.Layer):
    """Dense layer whose input is a ``tf.SparseTensor`` (first encoder layer over items).

    Args:
      units: output width.
      input_dim: number of items (rows of the kernel).
    """

    def __init__(self, units: int, input_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.units, self.input_dim = units, input_dim
        self.kernel = self.add_weight("kernel", shape=(input_dim, units),
                                      initializer="glorot_uniform")
        self.bias = self.add_weight("bias", shape=(units,), initializer="zeros")

    def call(self, x: tf.SparseTensor) -> tf.Tensor:
        # Cost is O(nnz * units): only the kernel rows of present items are touched.
        kernel = tf.cast(self.kernel, x.values.dtype)
        return tf.sparse.sparse_dense_matmul(x, kernel) + tf.cast(self.bias, x.values.dtype)


class MultVAEModel(ComponentLossModel):
    """The Keras model: encoder, reparameterization, decoder and the (annealed) ELBO.

    Args:
      n_items: catalogue size.
      config: a :class:`MultVAEConfig` (``variational`` selects VAE vs DAE).
      seed: seed of the model-owned random generator (dropout masks and epsilon), which is a
        tracked variable so checkpoints (and resumed runs) continue its stream.
      **kwargs: MultVAEConfig fields (e.g. ``dims=[200]``) or Keras Model arguments.
    """

    loss_components = ("loss", "nll", "kl", "beta", "l2")

    def __init__(self, n_items: int, config: MultVAEConfig | None = None, seed: int = 0,
                 **kwargs):
        import dataclasses

        fields = {f.name for f in dataclasses.fields(MultVAEConfig)}
        overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
        config = dataclasses.replace(config or MultVAEConfig(), **overrides)
        config.validate("model")
        super().__init__(**kwargs)
        self.n_items = int(n_items)
        self.cfg = config
        self.variational = bool(config.variational)
        dims = list(config.dims)
        act = config.activation
        latent = dims[-1]
        self.encoder_in = SparseDense(dims[0] if len(dims) > 1 else self._code_width(latent),
                                      self.n_items, name="encoder_in")
        enc = []
        for i, d in enumerate(dims[1:]):
            last = i == len(dims) - 2
            enc.append(tf_keras.layers.Dense(self._code_width(d) if last else d,
                                             activation=None if last else act,
                                             name=f"encoder_{i + 1}"))
        self.encoder_layers = enc
        dec = [tf_keras.layers.Dense(d, activation=act, name=f"decoder_{i}")
               for i, d in enumerate(reversed(dims[:-1]))]
        dec.append(tf_keras.layers.Dense(self.n_items, name="decoder_out"))
        self.decoder_layers = dec
        self.anneal_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="anneal_step")
        self.rng = tf.random.Generator.from_seed(int(seed))
        self._activation = tf_keras.activations.get(act)

    def _code_width(self, latent: int) -> int:
        # The VAE's encoder outputs mean and log-variance side by side.
        return 2 * latent if self.variational else latent

    # ------------------------------------------------------------------ pieces
    def prepare_input(self, x: tf.SparseTensor, training: bool) -> tf.SparseTensor:
        """Casts to the compute dtype, L2-normalizes rows and drops out values (training)."""
        return prepare_rows(x, self.cfg.dropout if training else 0.0, self.rng,
                            self.compute_dtype)

    def encode(self, x: tf.SparseTensor, training: bool = False):
        """(mean, log-variance) for the VAE, (code, None) for the DAE; both float32."""
        h = self.encoder_in(self.prepare_input(x, training))
        if self.encoder_layers:
            h = self._activation(h)
        for layer in self.encoder_layers:
            h = layer(h)
        h = tf.cast(h, tf.float32)
        if not self.variational:
            # The paper's DAE applies tanh to every layer but the last of the whole network.
            return self._activation(h), None
        latent = self.cfg.dims[-1]
        return h[:, :latent], h[:, latent:]

    def decode(self, z: tf.Tensor) -> tf.Tensor:
        """Item logits (float32) from latent codes."""
        h = tf.cast(z, self.compute_dtype)
        for layer in self.decoder_layers:
            h = layer(h)
        return tf.cast(h, tf.float32)

    def beta(self) -> tf.Tensor:
        """Current KL weight: linear ramp to ``anneal_cap`` over ``total_anneal_steps``."""
        cap = tf.constant(self.cfg.anneal_cap, tf.float32)
        if not self.variational:
            return tf.zeros([], tf.float32)
        if self.cfg.total_anneal_steps <= 0:
            return cap
        frac = tf.cast(self.anneal_step, tf.float32) / float(self.cfg.total_anneal_steps)
        return tf.minimum(cap, frac)

    def sample(self, mu: tf.Tensor, logvar: tf.Tensor | None, training: bool) -> tf.Tensor:
        """Reparameterized z = mu + sigma * eps while training; the mean otherwise."""
        if not (training and self.variational):
            return mu
        return mu + tf.exp(0.5 * logvar) * self.rng.normal(tf.shape(mu), dtype=tf.float32)

    def call(self, x: tf.SparseTensor, training: bool = False) -> tf.Tensor:
        """Logits [batch, n_items]; the latent mean is used when not training."""
        mu, logvar = self.encode(x, training)
        return self.decode(self.sample(mu, logvar, training))

    def l2_penalty(self) -> tf.Tensor:
        """``lam * sum(W ** 2)`` over every kernel (biases are not decayed, as in the paper)."""
        if self.cfg.lam == 0:
            # A zero weight still costs a pass over every kernel forward and backward (25M
            # parameters on ML-20M) for nothing.
            return tf.zeros([], tf.float32)
        dense = self.encoder_layers + self.decoder_layers
        kernels = [self.encoder_in.kernel] + [layer.kernel for layer in dense]
        return self.cfg.lam * tf.add_n([tf.reduce_sum(tf.square(tf.cast(k, tf.float32)))
                                        for k in kernels])

    def compute_losses(self, batch, training: bool = True) -> dict[str, tf.Tensor]:
        """Negative (annealed) ELBO on a batch ``{"items": SparseTensor, ...}``.

        Returns:
          {"loss", "nll", "kl", "beta", "l2"}: nll and kl are means over the batch's users.
        """
        x = batch["items"] if isinstance(batch, dict) else batch
        x = cast_sparse(x, tf.float32)
        n_rows = tf.cast(x.dense_shape[0], tf.int32)
        # Means over the batch's users; a rank may get an empty last batch (Horovod), which
        # must give 0, not NaN.
        n_safe = tf.maximum(tf.cast(n_rows, tf.float32), 1.0)
        mu, logvar = self.encode(x, training)
        if self.variational:
            kl = tf.reduce_sum(0.5 * (-logvar + tf.exp(logvar) + tf.square(mu) - 1.0)) / n_safe
        else:
            kl = tf.zeros([], tf.float32)
        # Multinomial log-likelihood: only the input's nonzero entries contribute, and the
        # output layer is fused with it (multinomial_nll).
        h = tf.cast(self.sample(mu, logvar, training), self.compute_dtype)
        for layer in self.decoder_layers[:-1]:
            h = layer(h)
        out = self.decoder_layers[-1]
        if not out.built:  # compute_losses before any call()
            out.build(tf.TensorShape([None, h.shape[-1]]))
        nll = multinomial_nll(h, tf.cast(out.kernel, h.dtype), tf.cast(out.bias, h.dtype),
                              x) / n_safe
        beta = self.beta()
        l2 = self.l2_penalty()
        if training:
            self.anneal_step.assign_add(1)
        return {"loss": nll + beta * kl + l2, "nll": nll, "kl": kl, "beta": beta, "l2": l2}


@register("mult_vae")
class MultVAE(KerasRecommender):
    """Mult-VAE recommender: scores any user from their item row (fold-in by construction).

    Known users are scored from the training rows remembered at fit (``self._seen``).
    """

    config_class = MultVAEConfig
    task = "implicit"
    monitor = "val_ndcg@100"
    monitor_mode = "max"
    _scorer = None  # compiled scoring function, built on first use after (re)building the model

    # ------------------------------------------------------------------ KerasRecommender
    def build_model(self, train: InteractionData, train_config: TrainConfig) -> MultVAEModel:
        from tfmf import memory

        memory.preflight(memory.vae_bytes(train.n_items, list(self.config.dims),
                                          train_config.batch_size),
                         f"{self.name} ({train.n_items:,} items, dims {list(self.config.dims)})",
                         "train.batch_size")
        model = MultVAEModel(train.n_items, self.config, seed=train_config.seed, name=self.name)
        # Create every variable now (a one-row dummy batch) so checkpoints restore eagerly.
        dummy = tf.SparseTensor(np.zeros((1, 2), np.int64), np.ones(1, np.float32),
                                [1, train.n_items])
        model(dummy, training=False)
        self._scorer = None
        return model

    def _train_users(self, train: InteractionData) -> np.ndarray:
        """Users with at least one training row (held-out users of a strong split have none)."""
        counts = np.bincount(train.users, minlength=train.n_users)
        return np.flatnonzero(counts > 0).astype(np.int32)

    def make_dataset(self, train, train_config, *, epoch, rank, size):
        from tfmf.data.pipelines import user_rows

        return user_rows(self._seen, train_config.batch_size, users=self._train_users(train),
                         seed=train_config.seed, epoch=epoch, rank=rank, size=size,
                         shuffle=train_config.shuffle, prefetch=train_config.prefetch,
                         local=train.partition is not None)

    def steps_per_epoch(self, train, train_config, size):
        from tfmf.data.pipelines import steps_per_epoch

        # Rows read per rank (train.partition): ranks agree on the largest rank's count.
        return steps_per_epoch(len(self._train_users(train)), train_config.batch_size, size,
                               local=train.partition is not None and size > 1)

    # ------------------------------------------------------------------ inference
    def _rows(self, users, user_items) -> sp.csr_matrix:
        if user_items is not None:
            return sp.csr_matrix(user_items, dtype=np.float32)
        if users is None:
            raise ValueError("give users (known) or user_items (fold-in)")
        if self._seen is None:
            raise ValueError("model is not fitted: no training rows to encode known users from")
        return self._seen[np.asarray(users)]

    def _batched(self, rows: sp.csr_matrix, fn) -> np.ndarray:
        step = self.config.eval_batch_size
        parts = [fn(csr_to_sparse_tensor(rows[s:s + step])).numpy()
                 for s in range(0, rows.shape[0], step)]
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    def _fns(self):
        if self._scorer is None:
            model = self.model
            # reduce_retracing: one trace serves every batch size / nnz.
            self._scorer = (
                tf.function(lambda x: model(x, training=False), reduce_retracing=True),
                tf.function(lambda x: model.encode(x, training=False)[0], reduce_retracing=True))
        return self._scorer

    def score(self, users=None, user_items=None) -> np.ndarray:
        """Decoder logits [batch, n_items] from the rows of ``user_items`` or known ``users``."""
        if self.model is None:
            raise ValueError("model is not fitted")
        out = self._batched(self._rows(users, user_items), self._fns()[0])
        return out.reshape(-1, self.n_items).astype(np.float32, copy=False)

    def recalculate_user(self, user_items) -> np.ndarray:
        """Latent means [batch, latent] (Mult-DAE: the deterministic code) of new rows."""
        out = self._batched(self._rows(None, user_items), self._fns()[1])
        return out.reshape(-1, self.config.dims[-1]).astype(np.float32, copy=False)

    def export_spec(self):
        from tfmf.models.serving import RowSpec

        model = self.model
        return RowSpec(lambda x: model(x, training=False), model.variables)


@register("mult_dae")
class MultDAE(MultVAE):
    """Mult-DAE: Mult-VAE's code path with a deterministic encoder and no KL term."""

    config_class = MultDAEConfig
