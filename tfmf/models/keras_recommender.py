"""Shared glue for Recommenders backed by a Keras model trained by the one Trainer."""
from __future__ import annotations

import abc
import os

import tensorflow as tf
import tf_keras

from tfmf import distributed
from tfmf.config import TrainConfig
from tfmf.data.interactions import InteractionData
from tfmf.models.base import Recommender
from tfmf.training.precision import precision_policy
from tfmf.training.trainer import Trainer, seed_everything


class KerasRecommender(Recommender):
    """A Recommender whose parameters live in ``self.model`` (a tf_keras.Model).

    Subclasses implement :meth:`build_model`, :meth:`make_dataset` and :meth:`steps_per_epoch`;
    ``fit`` seeds, builds the model under the precision policy and runs the Trainer.
    ``validation_metrics`` (optional) returns per-epoch validation metrics.
    """

    #: Trainer monitor key and direction for early stopping.
    monitor: str | None = None
    monitor_mode: str = "min"

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self.model: tf_keras.Model | None = None
        self.train_config: TrainConfig | None = None
        self.trainer: Trainer | None = None

    @abc.abstractmethod
    def build_model(self, train: InteractionData, train_config: TrainConfig) -> tf_keras.Model:
        """A fresh Keras model with ``compute_loss(batch, training)``."""

    @abc.abstractmethod
    def make_dataset(self, train: InteractionData, train_config: TrainConfig, epoch: int,
                     rank: int, size: int) -> tf.data.Dataset:
        """This rank's batches for ``epoch`` (seeded by epoch)."""

    @abc.abstractmethod
    def steps_per_epoch(self, train: InteractionData, train_config: TrainConfig, size: int) -> int:
        """Batches per epoch on every rank (equal across ranks)."""

    def validation_metrics(self, validation: InteractionData) -> dict[str, float]:
        """Per-epoch validation metrics, keys prefixed ``val_`` (default: none)."""
        return {}

    def fit(self, train: InteractionData, train_config: TrainConfig | None = None, *,
            validation: InteractionData | None = None, run_dir: str | None = None,
            callbacks=(), resume: bool = False):
        cfg = train_config or TrainConfig()
        self.train_config = cfg
        self._remember_training_data(train)
        seed_everything(cfg.seed, cfg.deterministic)
        with precision_policy(cfg.precision):
            self.model = self.build_model(train, cfg)
        distributed.init()
        rank, size = distributed.rank(), distributed.size()
        steps = self.steps_per_epoch(train, cfg, size)
        self.trainer = Trainer(cfg, run_dir=run_dir, callbacks=callbacks)
        val_fn = (lambda: self.validation_metrics(validation)) if validation is not None else None
        self.history = self.trainer.fit(
            self.model, lambda epoch: self.make_dataset(train, cfg, epoch, rank, size),
            steps_per_epoch=steps, validation_fn=val_fn, monitor=self.monitor,
            mode=self.monitor_mode, resume=resume)
        return self

    # ------------------------------------------------------------------ persistence
    def _save_state(self, path: str) -> None:
        """Weights as a TF checkpoint plus the training config used to build the model."""
        from tfmf.config import to_dict
        import json

        with open(os.path.join(path, "train_config.json"), "w") as fh:
            json.dump(to_dict(self.train_config or TrainConfig()), fh, indent=2)
        tf.train.Checkpoint(model=self.model).write(os.path.join(path, "weights", "model"))

    def _load_state(self, path: str) -> None:
        import json

        from tfmf.config import from_dict

        with open(os.path.join(path, "train_config.json")) as fh:
            cfg = from_dict(TrainConfig, json.load(fh), "train")
        self.train_config = cfg
        with precision_policy(cfg.precision):
            self.model = self.build_model(self._shape_only_data(), cfg)
        tf.train.Checkpoint(model=self.model).read(
            os.path.join(path, "weights", "model")).expect_partial()

    def _shape_only_data(self) -> InteractionData:
        """An empty container with the fitted id-space sizes (for rebuilding the model)."""
        import numpy as np

        return InteractionData(
            users=np.zeros(0, np.int32), items=np.zeros(0, np.int32),
            values=np.zeros(0, np.float32), user_ids=np.arange(self.n_users),
            item_ids=np.arange(self.n_items))
