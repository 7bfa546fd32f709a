"""RecVAE (Shenbin, Alekseev, Tutubalina & Nikolenko 2020, "RecVAE: a New Variational
Autoencoder for Top-N Recommendations with Implicit Feedback") as a tf_keras model trained by
Keras' ``fit``, beside Mult-VAE (:mod:`tfmf.models.vae`, whose sparse input path it shares).

What differs from Mult-VAE:

* **Encoder**: ``h_1 = LN(swish(W_1 x))``, ``h_k = LN(swish(W_k h_{k-1} + h_1 + ... + h_{k-1}))``
  (densely connected blocks with layer norm, ``eps`` 0.1), then linear heads for the mean and
  log-variance. ``x`` is the L2-normalized row with dropout on its values; the first layer is
  the same sparse-dense matmul (:class:`~tfmf.models.vae.SparseDense`). The decoder is one
  linear layer to item logits (multinomial likelihood, as Mult-VAE).
* **Composite prior**: ``p(z | x) = w_1 N(0, I) + w_2 q_old(z | x) + w_3 N(0, e^10 I)``, where
  ``q_old`` is the encoder's posterior as it was at the end of the last encoder phase (its
  weights are a frozen copy, refreshed at every encoder -> decoder switch). The KL of the ELBO
  is estimated with the sampled ``z``: ``log q(z | x) - log p(z | x)`` summed over the latent.
* **User-scaled beta**: the KL weight of user u is ``gamma * |I_u|`` (the sum of the row's
  values), so heavy users are regularized more; ``gamma = 0`` falls back to a constant ``beta``.
* **Alternating updates**: ``encoder_epochs`` epochs update only the encoder (input dropout on),
  then ``decoder_epochs`` epochs update only the decoder (dropout off), repeatedly.

How the alternation lives inside Keras' ``fit``: one optimizer (the compiled one, so Horovod's
DistributedOptimizer and the LossScaleOptimizer wrap it as for every other model) applies the
gradients of the phase's variables only; the phase is a function of the optimizer's step
counter (``epoch = iterations // steps_per_epoch``), so a resumed run is in the same phase at
the same step and BackupAndRestore resumes it bitwise, and every rank of a Horovod job takes
the same branch. Adam's slots of the idle half are untouched (a zero gradient would still move
them). The only difference from two separate optimizers is that Adam's bias correction counts
all steps rather than the phase's own (it matters only in the first few hundred steps).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
import tf_keras

from tfmf.config import TrainConfig, check
from tfmf.data.interactions import InteractionData
from tfmf.models.vae import MultVAE, SparseDense, prepare_rows
from tfmf.registry import register
from tfmf.training.model import ComponentLossModel
from tfmf.training.precision import cast_sparse

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass
class RecVAEConfig:
    """Hyperparameters of RecVAE (defaults: the paper's ML-20M settings).

    Attributes:
      hidden_dim: width of the encoder's dense blocks (600).
      latent_dim: latent size (200).
      n_layers: dense blocks of the encoder (5).
      dropout: dropout rate on the input's values during encoder epochs (0.5).
      gamma: KL weight per interaction: user u's beta is ``gamma * |I_u|`` (0.005); 0 uses
        ``beta`` for every user.
      beta: constant KL weight when ``gamma`` is 0.
      mixture_weights: weights of the prior's standard normal, old posterior and wide normal
        components (3/20, 3/4, 1/10); they must sum to 1.
      wide_logvar: log-variance of the wide component (10).
      layer_norm_eps: epsilon of the encoder's layer norms (0.1).
      encoder_epochs: epochs of encoder updates per cycle (3).
      decoder_epochs: epochs of decoder updates per cycle (1).
      eval_batch_size: users per scoring batch.
    """

    hidden_dim: int = 600
    latent_dim: int = 200
    n_layers: int = 5
    dropout: float = 0.5
    gamma: float = 0.005
    beta: float = 0.2
    mixture_weights: list[float] = field(default_factory=lambda: [0.15, 0.75, 0.1])
    wide_logvar: float = 10.0
    layer_norm_eps: float = 0.1
    encoder_epochs: int = 3
    decoder_epochs: int = 1
    eval_batch_size: int = 1024

    def validate(self, key: str) -> None:
        check(self.hidden_dim >= 1, f"{key}.hidden_dim", "must be >= 1")
        check(self.latent_dim >= 1, f"{key}.latent_dim", "must be >= 1")
        check(self.n_layers >= 1, f"{key}.n_layers", "must be >= 1")
        check(0.0 <= self.dropout < 1.0, f"{key}.dropout", "must be in [0, 1)")
        check(self.gamma >= 0, f"{key}.gamma", "must be >= 0")
        check(self.beta >= 0, f"{key}.beta", "must be >= 0")
        w = list(self.mixture_weights)
        check(len(w) == 3 and all(x > 0 for x in w) and abs(sum(w) - 1.0) < 1e-6,
              f"{key}.mixture_weights", "must be 3 positive weights summing to 1")
        check(self.layer_norm_eps > 0, f"{key}.layer_norm_eps", "must be > 0")
        check(self.encoder_epochs >= 1, f"{key}.encoder_epochs", "must be >= 1")
        check(self.decoder_epochs >= 1, f"{key}.decoder_epochs", "must be >= 1")
        check(self.eval_batch_size >= 1, f"{key}.eval_batch_size", "must be >= 1")


def log_normal(z: tf.Tensor, mu, logvar) -> tf.Tensor:
    """Elementwise log N(z; mu, exp(logvar))."""
    return -0.5 * (logvar + _LOG_2PI + tf.square(z - mu) * tf.exp(-logvar))


class LayerNorm(tf_keras.layers.Layer):
    """``(h - mean) / sqrt(var + eps) * gamma + beta`` over the last axis.

    Written out rather than ``tf_keras.layers.LayerNormalization``, whose CPU kernel (a fused
    batch norm) gave run-to-run differences in the last bit, which would break bitwise resume.

    Args:
      units: width of the normalized axis.
      epsilon: added to the variance.
    """

    def __init__(self, units: int, epsilon: float, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)
        self.gamma = self.add_weight("gamma", shape=(units,), initializer="ones")
        self.beta = self.add_weight("beta", shape=(units,), initializer="zeros")

    def call(self, h: tf.Tensor) -> tf.Tensor:
        h32 = tf.cast(h, tf.float32)
        mean = tf.reduce_mean(h32, axis=-1, keepdims=True)
        var = tf.reduce_mean(tf.square(h32 - mean), axis=-1, keepdims=True)
        out = (h32 - mean) * tf.math.rsqrt(var + self.epsilon) * self.gamma + self.beta
        return tf.cast(out, h.dtype)


class RecVAEEncoder(tf_keras.layers.Layer):
    """Densely connected swish + layer-norm blocks over a sparse input; (mean, log-variance).

    Args:
      n_items: input width.
      cfg: a :class:`RecVAEConfig`.
    """

    def __init__(self, n_items: int, cfg: RecVAEConfig, **kwargs):
        super().__init__(**kwargs)
        self.first = SparseDense(cfg.hidden_dim, n_items, name="fc1")
        self.blocks = [tf_keras.layers.Dense(cfg.hidden_dim, name=f"fc{k + 2}")
                       for k in range(cfg.n_layers - 1)]
        self.norms = [LayerNorm(cfg.hidden_dim, cfg.layer_norm_eps, name=f"ln{k + 1}")
                      for k in range(cfg.n_layers)]
        self.mu = tf_keras.layers.Dense(cfg.latent_dim, name="mu")
        self.logvar = tf_keras.layers.Dense(cfg.latent_dim, name="logvar")

    def call(self, x: tf.SparseTensor):
        h = self.norms[0](tf.nn.silu(self.first(x)))
        total = h
        for dense, norm in zip(self.blocks, self.norms[1:]):
            h = norm(tf.nn.silu(dense(h) + total))
            total = total + h
        return (tf.cast(self.mu(h), tf.float32), tf.cast(self.logvar(h), tf.float32))


class RecVAEModel(ComponentLossModel):
    """The Keras model: encoder, frozen old encoder (the prior's), decoder, phased train step.

    Args:
      n_items: catalogue size.
      config: a :class:`RecVAEConfig`.
      seed: seed of the model-owned random generator (dropout masks and epsilon; a tracked
        variable, so checkpoints continue its stream).
      steps_per_epoch: steps of one epoch on this rank: the phases are counted in epochs of
        this many optimizer steps (a user's own ``fit`` passes its dataset's length).
      **kwargs: RecVAEConfig fields or Keras Model arguments.
    """

    loss_components = ("loss", "nll", "kl", "beta", "encoder_phase")

    def __init__(self, n_items: int, config: RecVAEConfig | None = None, seed: int = 0,
                 steps_per_epoch: int = 1, **kwargs):
        fields = {f.name for f in dataclasses.fields(RecVAEConfig)}
        overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
        config = dataclasses.replace(config or RecVAEConfig(), **overrides)
        config.validate("model")
        super().__init__(**kwargs)
        self.n_items = int(n_items)
        self.cfg = config
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.encoder = RecVAEEncoder(self.n_items, config, name="encoder")
        self.encoder_old = RecVAEEncoder(self.n_items, config, name="encoder_old")
        self.encoder_old.trainable = False
        self.decoder = tf_keras.layers.Dense(self.n_items, name="decoder")
        self.rng = tf.random.Generator.from_seed(int(seed))
        self._log_w = [math.log(w) for w in config.mixture_weights]

    def build_all(self) -> None:
        """Creates every variable (a one-row dummy batch) and starts the prior's encoder as a
        copy of the encoder."""
        dummy = tf.SparseTensor(np.zeros((1, 2), np.int64), np.ones(1, np.float32),
                                [1, self.n_items])
        self(dummy, training=False)
        self.encoder_old(prepare_rows(dummy, 0.0, self.rng, self.compute_dtype))
        self.refresh_prior()

    def refresh_prior(self):
        """encoder_old <- encoder (the composite prior's posterior component)."""
        return tf.group([old.assign(new) for old, new in
                         zip(self.encoder_old.weights, self.encoder.weights)])

    # ------------------------------------------------------------------ pieces
    def encode(self, x: tf.SparseTensor, training: bool = False, dropout=None):
        """(mean, log-variance), float32; ``dropout`` (default the config's while training)."""
        rate = (self.cfg.dropout if training else 0.0) if dropout is None else dropout
        return self.encoder(prepare_rows(x, rate, self.rng, self.compute_dtype))

    def decode(self, z: tf.Tensor) -> tf.Tensor:
        return tf.cast(self.decoder(tf.cast(z, self.compute_dtype)), tf.float32)

    def call(self, x: tf.SparseTensor, training: bool = False) -> tf.Tensor:
        """Item logits [batch, n_items] from the latent mean (sampled z while training)."""
        mu, logvar = self.encode(x, training)
        z = mu + tf.exp(0.5 * logvar) * self.rng.normal(tf.shape(mu)) if training else mu
        return self.decode(z)

    def log_prior(self, x: tf.SparseTensor, z: tf.Tensor) -> tf.Tensor:
        """Elementwise log of the composite prior at ``z`` [batch, latent]."""
        old_mu, old_logvar = self.encoder_old(prepare_rows(x, 0.0, self.rng, self.compute_dtype))
        old_mu, old_logvar = tf.stop_gradient(old_mu), tf.stop_gradient(old_logvar)
        parts = [log_normal(z, 0.0, 0.0) + self._log_w[0],
                 log_normal(z, old_mu, old_logvar) + self._log_w[1],
                 log_normal(z, 0.0, self.cfg.wide_logvar) + self._log_w[2]]
        return tf.reduce_logsumexp(tf.stack(parts, axis=-1), axis=-1)

    def phase(self, step) -> tuple[tf.Tensor, tf.Tensor]:
        """(encoder phase?, first step of a decoder phase?) at optimizer step ``step``."""
        step = tf.cast(step, tf.int64)
        spe = tf.constant(self.steps_per_epoch, tf.int64)
        cycle = self.cfg.encoder_epochs + self.cfg.decoder_epochs
        pos = (step // spe) % cycle
        enc = pos < self.cfg.encoder_epochs
        switch = tf.logical_and(tf.equal(pos, self.cfg.encoder_epochs), tf.equal(step % spe, 0))
        return enc, switch

    def compute_losses(self, batch, training: bool = True, encoder_phase=True
                       ) -> dict[str, tf.Tensor]:
        """Negative ELBO with the composite prior on a batch ``{"items": SparseTensor, ...}``.

        Args:
          batch: the user rows.
          training: sample z and drop out the input (encoder phase only).
          encoder_phase: bool or bool tensor: the input dropout is on only in encoder phases.

        Returns:
          {"loss", "nll", "kl", "beta", "encoder_phase"}: nll and kl (already weighted by each
          user's beta) are means over the batch's users; beta is the batch's mean user weight.
        """
        x = batch["items"] if isinstance(batch, dict) else batch
        x = cast_sparse(x, tf.float32)
        n_rows = tf.cast(x.dense_shape[0], tf.int32)
        n_safe = tf.maximum(tf.cast(n_rows, tf.float32), 1.0)  # empty last batch: 0, not NaN
        enc = tf.cast(encoder_phase, tf.bool)
        rate = tf.where(enc, self.cfg.dropout, 0.0) if training else 0.0
        mu, logvar = self.encode(x, training, dropout=rate)
        z = mu + tf.exp(0.5 * logvar) * self.rng.normal(tf.shape(mu)) if training else mu
        log_probs = tf.nn.log_softmax(self.decode(z), axis=-1)
        nll = -tf.reduce_sum(tf.gather_nd(log_probs, x.indices) * x.values) / n_safe
        if self.cfg.gamma > 0:
            weight = self.cfg.gamma * tf.math.unsorted_segment_sum(x.values, x.indices[:, 0],
                                                                   n_rows)
        else:
            weight = tf.fill([n_rows], tf.constant(self.cfg.beta, tf.float32))
        kl_u = tf.reduce_sum(log_normal(z, mu, logvar) - self.log_prior(x, z), axis=-1)
        kl = tf.reduce_sum(weight * kl_u) / n_safe
        return {"loss": nll + kl, "nll": nll, "kl": kl,
                "beta": tf.reduce_sum(weight) / n_safe, "encoder_phase": tf.cast(enc, tf.float32)}

    def train_step(self, batch):
        step = self.optimizer.iterations.read_value()
        enc, switch = self.phase(step)
        # The prior's encoder is the encoder at the end of the encoder phase just finished.
        tf.cond(switch, self.refresh_prior, tf.no_op)
        with tf.GradientTape() as tape:
            losses = self.compute_losses(batch, training=True, encoder_phase=enc)
            loss = tf.cast(losses["loss"], tf.float32)
        # All gradients in one call (Horovod allreduces there, loss scaling unscales there),
        # then only the phase's half is applied.
        grads_and_vars = self.optimizer._compute_gradients(loss, self.trainable_variables,
                                                           tape=tape)
        encoder_refs = {v.ref() for v in self.encoder.trainable_variables}
        enc_gv = [(g, v) for g, v in grads_and_vars if v.ref() in encoder_refs]
        dec_gv = [(g, v) for g, v in grads_and_vars if v.ref() not in encoder_refs]
        tf.cond(enc, lambda: self._apply(enc_gv), lambda: self._apply(dec_gv))
        return self.record(losses, step)

    def _apply(self, grads_and_vars):
        self.optimizer.apply_gradients(grads_and_vars)
        return tf.constant(True)


@register("recvae")
class RecVAE(MultVAE):
    """RecVAE recommender: Mult-VAE's pipelines, scoring and export with RecVAE's model."""

    config_class = RecVAEConfig

    def build_model(self, train: InteractionData, train_config: TrainConfig) -> RecVAEModel:
        from tfmf import distributed, memory

        c = self.config
        memory.preflight(memory.vae_bytes(train.n_items, [c.hidden_dim, c.latent_dim],
                                          train_config.batch_size),
                         f"{self.name} ({train.n_items:,} items, hidden {c.hidden_dim})",
                         "train.batch_size")
        distributed.init()
        steps = (self.steps_per_epoch(train, train_config, distributed.size())
                 if train.nnz else 1)
        model = RecVAEModel(train.n_items, c, seed=train_config.seed, steps_per_epoch=steps,
                            name=self.name)
        model.build_all()
        self._scorer = None
        return model

    def recalculate_user(self, user_items) -> np.ndarray:
        """Latent means [batch, latent_dim] of new rows."""
        out = self._batched(self._rows(None, user_items), self._fns()[1])
        return out.reshape(-1, self.config.latent_dim).astype(np.float32, copy=False)

    def export_spec(self):
        from tfmf.models.serving import RowSpec

        model = self.model
        # The prior's encoder is training-only: the SavedModel carries encoder + decoder.
        variables = model.encoder.weights + model.decoder.weights
        return RowSpec(lambda x: model(x, training=False), variables)
