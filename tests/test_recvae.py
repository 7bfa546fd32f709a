"""RecVAE: alternating phases inside Keras' fit, composite prior, user-scaled beta, bitwise
resume, fold-in/save/load and the SavedModel's recommend_from_items."""
import numpy as np
import pytest
import scipy.sparse as sp

import tfmf  # noqa: F401  (before TensorFlow)
import tensorflow as tf

from tfmf.config import TrainConfig, load_config
from tfmf.data.interactions import InteractionData
from tfmf.data.sparse import csr_to_sparse_tensor
from tfmf.errors import ConfigError
from tfmf.models.base import Recommender
from tfmf.models.recvae import RecVAE, RecVAEConfig, RecVAEModel


def tiny_data(n_users=48, n_items=30, seed=0):
    """Two user groups preferring disjoint item halves; activity varies by user."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(n_users):
        half = np.arange(n_items // 2) + (n_items // 2) * (u % 2)
        chosen = rng.choice(half, 3 + u % 6, replace=False)
        users += [u] * len(chosen)
        items += list(chosen)
    return InteractionData(users=users, items=items, values=np.ones(len(users)),
                           user_ids=np.arange(n_users), item_ids=np.arange(n_items),
                           implicit=True)


def small_cfg(**kw):
    return RecVAEConfig(**{"hidden_dim": 16, "latent_dim": 4, "n_layers": 3,
                           "encoder_epochs": 2, "decoder_epochs": 1, **kw})


def train_cfg(**kw):
    return TrainConfig(**{"epochs": 6, "batch_size": 16, "learning_rate": 1e-2, "verbose": 0,
                          "checkpoint_every": 0, "seed": 3, **kw})


def snapshot(model: RecVAEModel):
    return {name: [w.numpy().copy() for w in layer.weights]
            for name, layer in (("enc", model.encoder), ("old", model.encoder_old),
                                ("dec", model.decoder))}


def changed(a, b) -> bool:
    return any(not np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.slow
def test_phases_update_only_their_half_and_refresh_the_prior():
    """Epochs 1-2 move only the encoder, epoch 3 only the decoder; the prior's encoder is
    copied from the encoder at the encoder -> decoder switch and is frozen otherwise."""
    import tf_keras

    d = tiny_data()
    m = RecVAE(small_cfg())
    snaps = []

    class Snap(tf_keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snaps.append(snapshot(self.model))

    m.fit(d, train_cfg(epochs=6), callbacks=[Snap()])
    phases = [h["encoder_phase"] for h in m.history]
    assert phases == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    for e in (1, 3, 4):  # 0-based epochs 1, 3, 4: encoder epochs after the first
        assert changed(snaps[e]["enc"], snaps[e - 1]["enc"])
        assert not changed(snaps[e]["dec"], snaps[e - 1]["dec"])
        assert not changed(snaps[e]["old"], snaps[e - 1]["old"])
    for e in (2, 5):  # decoder epochs: the prior is the encoder of the epoch before
        assert changed(snaps[e]["dec"], snaps[e - 1]["dec"])
        assert not changed(snaps[e]["enc"], snaps[e - 1]["enc"])
        for old, enc in zip(snaps[e]["old"], snaps[e - 1]["enc"]):
            np.testing.assert_array_equal(old, enc)
    assert m.history[-1]["nll"] < m.history[0]["nll"]
    # The halves partition the trainable variables; the prior's copy is not trainable.
    model = m.model
    assert len(model.trainable_variables) == (len(model.encoder.trainable_variables)
                                              + len(model.decoder.trainable_variables))
    assert not model.encoder_old.trainable_variables


def test_beta_is_gamma_times_user_activity_and_prior_is_a_normalized_mixture():
    d = tiny_data()
    model = RecVAEModel(d.n_items, small_cfg(gamma=0.1), seed=0)
    model.build_all()
    csr = d.to_csr()
    out = model.compute_losses({"items": csr_to_sparse_tensor(csr)}, training=False)
    np.testing.assert_allclose(float(out["beta"]), 0.1 * csr.sum(1).mean(), rtol=1e-5)
    const = RecVAEModel(d.n_items, small_cfg(gamma=0.0, beta=0.3), seed=0)
    const.build_all()
    out = const.compute_losses({"items": csr_to_sparse_tensor(csr)}, training=False)
    assert float(out["beta"]) == pytest.approx(0.3)
    # The composite prior is a proper density along each latent axis (the same row, with its
    # old-posterior component, at every grid point).
    grid = np.linspace(-400.0, 400.0, 200_001, dtype=np.float32)
    z = tf.constant(np.repeat(grid[:, None], 4, axis=1))
    rows = tf.SparseTensor(np.stack([np.arange(len(grid)), np.full(len(grid), 3)], 1),
                           np.ones(len(grid), np.float32), [len(grid), d.n_items])
    density = np.exp(model.log_prior(rows, z).numpy())
    assert density.shape == (len(grid), 4)
    np.testing.assert_allclose(np.trapz(density, grid, axis=0), 1.0, atol=2e-3)


@pytest.mark.slow
def test_resume_is_bitwise(tmp_path):
    d = tiny_data()
    full = RecVAE(small_cfg()).fit(d, train_cfg(epochs=5))
    part = RecVAE(small_cfg())
    part.fit(d, train_cfg(epochs=2, checkpoint_every=1), run_dir=str(tmp_path / "run"))
    part = RecVAE(small_cfg())
    part.fit(d, train_cfg(epochs=5, checkpoint_every=1), run_dir=str(tmp_path / "run"),
             resume=True)
    for a, b in zip(full.model.variables, part.model.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    assert [h["encoder_phase"] for h in part.history] == [1.0, 1.0, 0.0, 1.0, 1.0]


@pytest.mark.slow
def test_fold_in_save_load_and_savedmodel_recommend_from_items(tmp_path):
    from tfmf.export import export_model

    d = tiny_data()
    m = RecVAE(small_cfg()).fit(d, train_cfg(epochs=3))
    users = np.array([0, 5, 7])
    known = m.score(users)
    np.testing.assert_allclose(known, m.score(None, d.to_csr()[users]), rtol=1e-6)
    assert m.recalculate_user(d.to_csr()[users]).shape == (3, 4)
    m.save(tmp_path / "m")
    m2 = Recommender.load(tmp_path / "m")
    assert isinstance(m2, RecVAE) and m2.config == m.config
    np.testing.assert_allclose(m2.score(users), known, rtol=1e-6)
    out = str(tmp_path / "saved")
    info = export_model(m, d.user_ids, d.item_ids, out, k=5)
    assert "recommend_from_items" in info["signatures"]
    loaded = tf.saved_model.load(out)
    fold = [1, 4, 9]
    got = loaded.signatures["recommend_from_items"](
        items=tf.constant(np.asarray(d.item_ids)[fold]))
    row = sp.csr_matrix((np.ones(3), ([0, 0, 0], fold)), shape=(1, d.n_items))
    want = m.recommend(user_items=row, k=5)[0][0]
    np.testing.assert_array_equal(np.asarray(got["item_ids"]).astype(np.int64).ravel(),
                                  np.asarray(d.item_ids)[want])


def test_empty_batch_and_bad_config():
    d = tiny_data()
    model = RecVAEModel(d.n_items, small_cfg(), seed=0)
    model.build_all()
    empty = tf.SparseTensor(np.zeros((0, 2), np.int64), np.zeros(0, np.float32), [0, d.n_items])
    out = model.compute_losses({"items": empty}, training=True)
    assert float(out["nll"]) == 0.0 and float(out["kl"]) == 0.0
    with pytest.raises(ConfigError, match="model.mixture_weights"):
        load_config(raw={"model": {"name": "recvae", "mixture_weights": [0.5, 0.6, 0.1]}})
    with pytest.raises(ConfigError, match="model.decoder_epochs"):
        load_config(raw={"model": {"name": "recvae", "decoder_epochs": 0}})
