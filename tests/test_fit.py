"""The one epoch loop (Keras' fit set up by tfmf.training.fit): loss components, schedules,
NaN stop, checkpoints and resume, callbacks, early stopping, steps_per_execution."""
import math

import numpy as np
import pytest

import tfmf  # noqa: F401
import tensorflow as tf
import tf_keras
from tfmf.config import TrainConfig
from tfmf.errors import ConfigError, TrainingDiverged
from tfmf.training import fit as fitting
from tfmf.training.model import ComponentLossModel
from tfmf.training.optimizers import StepDecay, make_optimizer


class Tiny(ComponentLossModel):
    """y = w . emb(u): enough to exercise the loop."""

    loss_components = ("loss", "data", "l2")

    def __init__(self):
        super().__init__()
        self.emb = tf_keras.layers.Embedding(50, 3, embeddings_initializer=tf_keras.initializers.RandomNormal(0, 0.1, seed=1))
        self.out = tf_keras.layers.Dense(1, kernel_initializer=tf_keras.initializers.RandomNormal(0, 0.1, seed=2))
        self.emb.build((None,))
        self.out.build((None, 3))

    def compute_losses(self, batch, training=False):
        pred = tf.cast(tf.squeeze(self.out(self.emb(batch["u"])), -1), tf.float32)
        data = tf.reduce_mean(tf.square(pred - batch["y"]))
        reg = 1e-3 * tf.reduce_sum(tf.square(tf.cast(self.emb.embeddings, tf.float32)))
        return {"loss": data + reg, "data": data, "l2": reg}


U = np.arange(400, dtype=np.int32) % 50
Y = (U % 5).astype(np.float32)


def make_ds(model, u=U, y=Y, shuffle=True):
    """Epoch e is shuffled by (0, e), e read from the optimizer's step count (resumable)."""
    epoch = fitting.epoch_of(model, 10)
    ds = tf.data.Dataset.from_tensors(0).map(lambda _: epoch())

    def one(e):
        d = tf.data.Dataset.from_tensor_slices({"u": u, "y": y})
        if shuffle:
            d = d.shuffle(400, seed=tf.cast(e, tf.int64) + 1, reshuffle_each_iteration=False)
        return d.batch(40)

    return ds.flat_map(one).apply(tf.data.experimental.assert_cardinality(10))


def fit(cfg, run_dir=None, resume=False, callbacks=(), model_cls=Tiny, validation=None, **kw):
    fitting.seed_everything(cfg.seed, cfg.deterministic)
    m = model_cls()
    fitting.compile_model(m, cfg, 10)
    res = fitting.fit(m, kw.pop("dataset", None) or make_ds(m), cfg, steps_per_epoch=10,
                      run_dir=run_dir, resume=resume, callbacks=callbacks, validation=validation,
                      **kw)
    return m, res.history


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
    ckpt = tf.train.latest_checkpoint(str(tmp_path / "checkpoints" / "chief"))
    if ei.value.epoch > 1:
        # The last good checkpoint restores to finite weights.
        m = Tiny()
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
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_resume_without_a_checkpoint_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        fit(TrainConfig(epochs=2, verbose=0), run_dir=str(tmp_path), resume=True)


def test_a_stock_callback_can_stop_and_early_stopping_watches_validation():
    class StopAt2(tf_keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == 2:
                self.model.stop_training = True

    _, h = fit(TrainConfig(epochs=5, verbose=0), callbacks=[StopAt2()])
    assert len(h) == 2
    vals = iter([1.0, 0.9, 0.95, 0.96, 0.97, 0.5])
    _, h = fit(TrainConfig(epochs=6, verbose=0, early_stopping_patience=2),
               validation=lambda: {"val_rmse": next(vals)}, monitor="val_rmse")
    assert len(h) == 4
    assert [r["val_rmse"] for r in h] == [1.0, 0.9, 0.95, 0.96]


def test_restore_best_ends_with_the_best_validated_weights():
    snapshots = []

    class Snap(tf_keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append([w.copy() for w in self.model.get_weights()])

    vals = iter([1.0, 0.8, 0.9, 0.95])
    m, h = fit(TrainConfig(epochs=4, verbose=0, restore_best=True, learning_rate=0.05),
               validation=lambda: {"val_rmse": next(vals)}, monitor="val_rmse",
               callbacks=[Snap()])
    assert len(h) == 4
    for got, want in zip(m.get_weights(), snapshots[1]):  # epoch 2 had the best val_rmse
        np.testing.assert_array_equal(got, want)
    assert not all(np.array_equal(a, b) for a, b in zip(m.get_weights(), snapshots[-1]))


def test_selection_without_validation_names_the_key():
    with pytest.raises(ConfigError) as e:
        fit(TrainConfig(epochs=2, verbose=0, early_stopping_patience=1))
    assert e.value.key == "train.validation_fraction"


@pytest.mark.parametrize("k", [3, 7, 10, 64])
def test_steps_per_execution_runs_the_same_steps(k):
    """k steps per compiled call: same batches, same number of steps, same result as k = 1
    (10 steps an epoch: k = 3 leaves a remainder, 10 hits the epoch end exactly, 64 exceeds it)."""
    base = dict(epochs=3, learning_rate=0.05, verbose=0, deterministic=True)
    one, h1 = fit(TrainConfig(**base, steps_per_execution=1))
    many, hk = fit(TrainConfig(**base, steps_per_execution=k))
    assert [r["steps"] for r in hk] == [r["steps"] for r in h1] == [10, 10, 10]
    assert int(many.optimizer.iterations.numpy()) == int(one.optimizer.iterations.numpy()) == 30
    np.testing.assert_allclose([r["loss"] for r in hk], [r["loss"] for r in h1], rtol=1e-5)
    for a, b in zip(one.variables, many.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


class NanAt(Tiny):
    """Finite losses except at the step whose batch holds user 49 as its first example."""

    def compute_losses(self, batch, training=False):
        out = super().compute_losses(batch, training)
        bad = tf.equal(batch["u"][0], 49)
        return {k: tf.where(bad, tf.constant(float("nan")), v) for k, v in out.items()}


def test_divergence_inside_a_multi_step_call_names_its_step():
    u = np.arange(400, dtype=np.int32) % 49  # no 49 ...
    u[7 * 40] = 49  # ... except first in the 8th batch
    y = (u % 5).astype(np.float32)
    cfg = TrainConfig(epochs=2, verbose=0, steps_per_execution=5)
    fitting.seed_everything(0)
    m = NanAt()
    fitting.compile_model(m, cfg, 10)
    with pytest.raises(TrainingDiverged) as ei:
        fitting.fit(m, make_ds(m, u, y, shuffle=False), cfg, steps_per_epoch=10)
    assert (ei.value.epoch, ei.value.step) == (1, 8)


class Counting(Tiny):
    traces = 0

    def compute_losses(self, batch, training=False):
        Counting.traces += 1  # runs once per trace, never per step
        return super().compute_losses(batch, training)


def test_a_multi_step_fit_traces_the_train_step_once():
    Counting.traces = 0
    m, h = fit(TrainConfig(epochs=3, learning_rate=0.05, verbose=0, steps_per_execution=4),
               model_cls=Counting)
    assert Counting.traces == 1 and len(h) == 3
    assert int(m.optimizer.iterations.numpy()) == 30  # 10 steps an epoch: 4 + 4 + 2


def test_loss_trackers_are_not_weights():
    m = Tiny()
    assert len(m.weights) == 3  # embeddings, kernel, bias: no tracker state
    (means,) = m.metrics  # one tracker of all components, reset by Keras every epoch
    assert means.names == ("loss", "data", "l2")


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_resume_from_a_corrupt_checkpoint_refuses_clearly(tmp_path, damage):
    from tfmf.errors import CheckpointError

    fit(TrainConfig(epochs=2, learning_rate=0.05, verbose=0), run_dir=str(tmp_path))
    chief = tmp_path / "checkpoints" / "chief"
    # Every kept checkpoint is damaged (a single bad one falls back: test_fault_tolerance.py).
    for data in sorted(chief.glob("*.data-*")):
        raw = bytearray(data.read_bytes())
        if damage == "truncate":
            raw = raw[: len(raw) // 2]
        else:
            raw[len(raw) // 2] ^= 0xFF  # one flipped byte: the tensor's CRC32C no longer matches
        data.write_bytes(bytes(raw))
    before = (tmp_path / "history.csv").read_text()
    with pytest.raises(CheckpointError) as e:
        fit(TrainConfig(epochs=4, learning_rate=0.05, verbose=0), run_dir=str(tmp_path),
            resume=True)
    assert str(chief) in str(e.value) and "without --resume" in str(e.value)
    assert (tmp_path / "history.csv").read_text() == before  # the run dir is left as it was
