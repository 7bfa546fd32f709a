"""The one training loop: loss components, schedules, NaN stop, checkpoints and resume."""
import math

import numpy as np
import pytest

import tfmf  # noqa: F401
import tensorflow as tf
import tf_keras
from tfmf.config import TrainConfig
from tfmf.errors import TrainingDiverged
from tfmf.training.optimizers import StepDecay, make_optimizer
from tfmf.training.trainer import Callback, Trainer, seed_everything


class Tiny(tf_keras.Model):
    """y = w . emb(u): enough to exercise the loop."""

    def __init__(self):
        super().__init__()
        self.emb = tf_keras.layers.Embedding(50, 3, embeddings_initializer=tf_keras.initializers.RandomNormal(0, 0.1, seed=1))
        self.out = tf_keras.layers.Dense(1, kernel_initializer=tf_keras.initializers.RandomNormal(0, 0.1, seed=2))

    def compute_loss(self, batch, training=False):
        pred = tf.cast(tf.squeeze(self.out(self.emb(batch["u"])), -1), tf.float32)
        data = tf.reduce_mean(tf.square(pred - batch["y"]))
        reg = 1e-3 * tf.reduce_sum(tf.square(tf.cast(self.emb.embeddings, tf.float32)))
        return {"loss": data + reg, "data": data, "l2": reg}


U = np.arange(400, dtype=np.int32) % 50
Y = (U % 5).astype(np.float32)


def make_ds(epoch):
    return tf.data.Dataset.from_tensor_slices({"u": U, "y": Y}).shuffle(400, seed=epoch).batch(40)


def fit(cfg, run_dir=None, resume=False, callbacks=()):
    seed_everything(cfg.seed)
    m = Tiny()
    h = Trainer(cfg, run_dir=run_dir, callbacks=callbacks).fit(m, make_ds, steps_per_epoch=10,
                                                               resume=resume)
    return m, h


def test_loss_components_logged_and_decrease():
    _, h = fit(TrainConfig(epochs=4, learning_rate=0.05, verbose=0))
    assert [r["epoch"] for r in h] == [1, 2, 3, 4]
    for r in h:
        assert set(r) >= {"loss", "data", "l2", "lr", "steps", "seconds"}
        assert r["loss"] == pytest.approx(r["data"] + r["l2"], rel=1e-5)
        assert r["steps"] == 10
    assert h[-1]["data"] < h[0]["data"]


def test_step_decay_formula():
    s = StepDecay(0.1, 0.5, 10)
    for step in (0, 8, 9, 10, 25, 99):
        assert float(s(step)) == pytest.approx(0.1 * 0.5 ** math.floor((1 + step) / 10))
    opt = make_optimizer(TrainConfig(schedule="step", learning_rate=0.1, decay_rate=0.5,
                                     decay_steps=10), steps_per_epoch=10)
    assert isinstance(opt.learning_rate, StepDecay) or hasattr(opt, "_get_hyper")


def test_divergence_names_epoch_and_step_and_keeps_checkpoint(tmp_path):
    cfg = TrainConfig(epochs=30, learning_rate=1e3, optimizer="sgd", verbose=0)
    with pytest.raises(TrainingDiverged) as ei:
        fit(cfg, run_dir=str(tmp_path))
    assert ei.value.epoch >= 1 and ei.value.step >= 1
    assert f"epoch {ei.value.epoch}, step {ei.value.step}" in str(ei.value)
    ckpt = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    if ei.value.epoch > 1:
        # The last good checkpoint restores to finite weights.
        m = Tiny()
        m.compute_loss({"u": U[:2], "y": Y[:2]})
        tf.train.Checkpoint(model=m).read(ckpt).expect_partial()
        assert all(np.isfinite(v.numpy()).all() for v in m.variables)


def test_resume_reaches_same_weights(tmp_path):
    full, _ = fit(TrainConfig(epochs=4, learning_rate=0.05, verbose=0, deterministic=True))
    fit(TrainConfig(epochs=2, learning_rate=0.05, verbose=0, deterministic=True),
        run_dir=str(tmp_path))
    resumed, h = fit(TrainConfig(epochs=4, learning_rate=0.05, verbose=0, deterministic=True),
                     run_dir=str(tmp_path), resume=True)
    assert [r["epoch"] for r in h] == [1, 2, 3, 4]
    for a, b in zip(full.variables, resumed.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


def test_callback_can_stop_and_early_stopping():
    class StopAt2(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            if epoch == 2:
                trainer.stop_training = True

    _, h = fit(TrainConfig(epochs=5, verbose=0), callbacks=[StopAt2()])
    assert len(h) == 2
    seed_everything(0)
    vals = iter([1.0, 0.9, 0.95, 0.96, 0.97, 0.5])
    h = Trainer(TrainConfig(epochs=6, verbose=0, early_stopping_patience=2)).fit(
        Tiny(), make_ds, steps_per_epoch=10, validation_fn=lambda: {"val_rmse": next(vals)})
    assert len(h) == 4


@pytest.mark.parametrize("k", [3, 7, 10, 64])
def test_steps_per_execution_runs_the_same_steps(k):
    """k steps per compiled call: same batches, same number of steps, same result as k = 1
    (10 steps an epoch: k = 3 leaves a remainder, 10 hits the epoch end exactly, 64 exceeds it)."""
    base = dict(epochs=3, learning_rate=0.05, verbose=0, deterministic=True)
    one, h1 = fit(TrainConfig(**base, steps_per_execution=1))
    many, hk = fit(TrainConfig(**base, steps_per_execution=k))
    assert [r["steps"] for r in hk] == [r["steps"] for r in h1] == [10, 10, 10]
    np.testing.assert_allclose([r["loss"] for r in hk], [r["loss"] for r in h1], rtol=1e-5)
    for a, b in zip(one.variables, many.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


class NanAt(Tiny):
    """Finite losses except at the step whose batch holds user 49 as its first example."""

    def compute_loss(self, batch, training=False):
        out = super().compute_loss(batch, training)
        bad = tf.equal(batch["u"][0], 49)
        return {k: tf.where(bad, tf.constant(float("nan")), v) for k, v in out.items()}


def test_divergence_inside_a_multi_step_call_names_its_step():
    u = np.arange(400, dtype=np.int32) % 49  # no 49 ...
    u[7 * 40] = 49  # ... except first in the 8th batch
    y = (u % 5).astype(np.float32)
    ds = lambda e: tf.data.Dataset.from_tensor_slices({"u": u, "y": y}).batch(40)
    seed_everything(0)
    with pytest.raises(TrainingDiverged) as ei:
        Trainer(TrainConfig(epochs=2, verbose=0, steps_per_execution=5)).fit(
            NanAt(), ds, steps_per_epoch=10)
    assert (ei.value.epoch, ei.value.step) == (1, 8)
