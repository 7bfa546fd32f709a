"""Recommenders whose parameters live in a tf_keras model fitted by Keras' ``fit``."""
from __future__ import annotations

import abc
import json
import os

import numpy as np
import tensorflow as tf
import tf_keras

from tfmf import distributed
from tfmf.config import TrainConfig, from_dict, to_dict
from tfmf.data.interactions import InteractionData
from tfmf.models.base import Recommender
from tfmf.training import fit as fitting
from tfmf.training.precision import precision_policy


class KerasRecommender(Recommender):
    """A Recommender whose parameters live in ``self.model`` (a tf_keras.Model).

    Gradient-trained subclasses implement :meth:`build_model` (a
    :class:`~tfmf.training.model.ComponentLossModel`), :meth:`make_dataset` and
    :meth:`steps_per_epoch`; ``fit`` seeds, builds the model under the precision policy,
    compiles it and runs :func:`tfmf.training.fit.fit` -- Keras' ``fit`` with the config's
    callbacks. Sweep estimators (ALS, Gibbs) call :meth:`fit_keras` with a sweep model.
    """

    #: Validation key that early stopping and restore_best watch, and its direction.
    monitor: str | None = None
    monitor_mode: str = "min"

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self.model: tf_keras.Model | None = None
        self.train_config: TrainConfig | None = None
        self.best_epoch: int | None = None

    @abc.abstractmethod
    def build_model(self, train: InteractionData, train_config: TrainConfig) -> tf_keras.Model:
        """A fresh Keras model (its variables created, so checkpoints restore into it)."""

    def make_dataset(self, train: InteractionData, train_config: TrainConfig, *, epoch,
                     rank: int, size: int) -> tf.data.Dataset:
        """This rank's batches, one pass per epoch, epoch e seeded by (seed, e)."""
        raise NotImplementedError

    def steps_per_epoch(self, train: InteractionData, train_config: TrainConfig, size: int) -> int:
        """Batches per epoch on every rank (equal across ranks)."""
        raise NotImplementedError

    def fit(self, train: InteractionData, train_config: TrainConfig | None = None, *,
            validation: InteractionData | None = None, run_dir=None, callbacks=(),
            resume: bool = False):
        cfg = train_config or TrainConfig()
        self._begin(train, cfg)
        with precision_policy(cfg.precision):
            self.model = self.build_model(train, cfg)
        distributed.init()
        steps = self.steps_per_epoch(train, cfg, distributed.size())
        fitting.compile_model(self.model, cfg, steps)
        dataset = self.make_dataset(train, cfg, epoch=fitting.epoch_of(self.model, steps),
                                    rank=distributed.rank(), size=distributed.size())
        return self.fit_keras(dataset, cfg, steps_per_epoch=steps, validation=validation,
                              run_dir=run_dir, callbacks=callbacks, resume=resume)

    def _begin(self, train: InteractionData, cfg: TrainConfig) -> None:
        """Remembers the config and training data, and seeds everything."""
        self.train_config = cfg
        self._remember_training_data(train)
        fitting.seed_everything(cfg.seed, cfg.deterministic)

    def fit_keras(self, dataset: tf.data.Dataset, cfg: TrainConfig, *, steps_per_epoch: int,
                  validation: InteractionData | None, run_dir, callbacks, resume: bool,
                  model: tf_keras.Model | None = None):
        """Runs the one epoch loop on a compiled model (default ``self.model``; a sweep model
        for ALS/Gibbs); sets ``history`` and ``best_epoch``."""
        val_fn = (lambda: self.validation_metrics(validation)) if validation is not None else None
        result = fitting.fit(model or self.model, dataset, cfg, steps_per_epoch=steps_per_epoch,
                             run_dir=run_dir, callbacks=callbacks, validation=val_fn,
                             monitor=self.monitor, mode=self.monitor_mode, resume=resume)
        self.history, self.best_epoch = result.history, result.best_epoch
        return self

    # ------------------------------------------------------------------ persistence
    def _save_state(self, path: str) -> None:
        """Weights as a TF checkpoint plus the training config used to build the model."""
        with open(os.path.join(path, "train_config.json"), "w") as fh:
            json.dump(to_dict(self.train_config or TrainConfig()), fh, indent=2)
        tf.train.Checkpoint(model=self.model).write(os.path.join(path, "weights", "model"))

    def _load_state(self, path: str) -> None:
        with open(os.path.join(path, "train_config.json")) as fh:
            cfg = from_dict(TrainConfig, json.load(fh), "train")
        self.train_config = cfg
        with precision_policy(cfg.precision):
            self.model = self.build_model(self._shape_only_data(), cfg)
        tf.train.Checkpoint(model=self.model).read(
            os.path.join(path, "weights", "model")).expect_partial()

    def _shape_only_data(self) -> InteractionData:
        """An empty container with the fitted id-space sizes (for rebuilding the model)."""
        return InteractionData(
            users=np.zeros(0, np.int32), items=np.zeros(0, np.int32),
            values=np.zeros(0, np.float32), user_ids=np.arange(self.n_users),
            item_ids=np.arange(self.n_items))
