"""Mult-VAE / Mult-DAE: loss, KL annealing, sparse-only input path, determinism, persistence."""
import numpy as np
import pytest
import scipy.sparse as sp

import tfmf  # noqa: F401  (before TensorFlow)
import tensorflow as tf

from tfmf.config import TrainConfig
from tfmf.data.interactions import InteractionData
from tfmf.data.sparse import csr_to_sparse_tensor
from tfmf.models.base import Recommender
from tfmf.models.vae import MultDAE, MultVAE, MultVAEConfig, MultVAEModel
from tfmf.training.precision import precision_policy


def tiny_data(n_users=48, n_items=30, seed=0):
    """Two user groups preferring disjoint item halves (learnable structure)."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(n_users):
        half = np.arange(n_items // 2) + (n_items // 2) * (u % 2)
        chosen = rng.choice(half, 6, replace=False)
        users += [u] * len(chosen)
        items += list(chosen)
    return InteractionData(users=users, items=items, values=np.ones(len(users)),
                           user_ids=np.arange(n_users), item_ids=np.arange(n_items),
                           implicit=True)


def batch(data, rows=None):
    csr = data.to_csr() if rows is None else data.to_csr()[rows]
    return {"items": csr_to_sparse_tensor(csr)}


def small_cfg(**kw):
    return MultVAEConfig(**{"dims": [16, 4], "total_anneal_steps": 20, **kw})


def train_cfg(**kw):
    return TrainConfig(**{"epochs": 30, "batch_size": 16, "learning_rate": 1e-2, "verbose": 0,
                          "checkpoint_every": 0, "seed": 3, **kw})


@pytest.mark.parametrize("cls", [MultVAE, MultDAE])
def test_loss_decreases_and_ranks_the_right_half(cls):
    d = tiny_data()
    m = cls(small_cfg(variational=cls is MultVAE, dropout=0.2)).fit(d, train_cfg())
    first, last = m.history[0]["nll"], m.history[-1]["nll"]
    assert last < 0.8 * first
    assert set(m.history[-1]) >= {"loss", "nll", "kl", "beta", "l2"}
    # Fold in a new user of group 0: the unseen items of group 0 must outrank group 1's.
    row = sp.csr_matrix((np.ones(3), ([0, 0, 0], [0, 1, 2])), shape=(1, d.n_items))
    s = m.score(None, row)[0]
    assert s.shape == (d.n_items,)
    assert s[3:15].mean() > s[15:].mean() + 1.0


def test_kl_annealing_schedule_is_linear_then_capped():
    d = tiny_data()
    model = MultVAEModel(d.n_items, small_cfg(total_anneal_steps=4, anneal_cap=0.3), seed=0)
    betas = [float(model.compute_losses(batch(d), training=True)["beta"]) for _ in range(7)]
    np.testing.assert_allclose(betas, [0.0, 0.25, 0.3, 0.3, 0.3, 0.3, 0.3], atol=1e-7)
    assert int(model.anneal_step.numpy()) == 7
    # Evaluation does not advance the schedule.
    model.compute_losses(batch(d), training=False)
    assert int(model.anneal_step.numpy()) == 7
    no_anneal = MultVAEModel(d.n_items, small_cfg(total_anneal_steps=0, anneal_cap=0.2), seed=0)
    assert float(no_anneal.compute_losses(batch(d))["beta"]) == pytest.approx(0.2)


def test_anneal_step_and_rng_are_checkpointed(tmp_path):
    d = tiny_data()
    model = MultVAEModel(d.n_items, small_cfg(), seed=5)
    for _ in range(3):
        model.compute_losses(batch(d), training=True)
    path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ck"))
    names = [n for n, _ in tf.train.list_variables(path)]
    assert any("anneal_step" in n for n in names) and any("rng" in n for n in names)
    after = model.compute_losses(batch(d), training=True)["loss"]
    twin = MultVAEModel(d.n_items, small_cfg(), seed=999)
    twin(batch(d)["items"])  # create variables, then restore
    tf.train.Checkpoint(model=twin).read(path).assert_consumed()
    assert int(twin.anneal_step.numpy()) == 3
    # Same weights, same schedule step, same generator state: the resumed step is identical.
    assert float(twin.compute_losses(batch(d), training=True)["loss"]) == float(after)


def test_dropout_touches_only_values_and_first_layer_gets_sparse():
    d = tiny_data()
    model = MultVAEModel(d.n_items, small_cfg(dropout=0.5), seed=1)
    x = batch(d)["items"]
    out = model.prepare_input(x, training=True)
    assert isinstance(out, tf.SparseTensor)
    np.testing.assert_array_equal(out.indices.numpy(), x.indices.numpy())
    # Every row has 6 ones: normalized value 1/sqrt(6), kept ones scaled by 1 / (1 - 0.5).
    vals = out.values.numpy()
    kept = vals != 0
    assert 0.3 < kept.mean() < 0.7
    np.testing.assert_allclose(vals[kept], 2.0 / np.sqrt(6.0), rtol=1e-6)
    clean = model.prepare_input(x, training=False).values.numpy()
    np.testing.assert_allclose(clean, 1.0 / np.sqrt(6.0), rtol=1e-6)

    seen = []
    layer = model.encoder_in
    original = layer.call

    def spy(inputs, *args, **kwargs):
        seen.append(type(inputs))
        return original(inputs, *args, **kwargs)

    layer.call = spy
    model.compute_losses({"items": x}, training=True)
    model(x, training=False)
    assert seen and all(issubclass(t, tf.SparseTensor) for t in seen)


def test_same_seed_same_losses_different_seed_differs():
    d = tiny_data()

    def losses(seed):
        tf.keras.utils.set_random_seed(0)  # same initial weights every time
        m = MultVAEModel(d.n_items, small_cfg(), seed=seed)
        return [float(m.compute_losses(batch(d), training=True)["loss"]) for _ in range(3)]

    a = losses(1)
    assert losses(1) == a
    assert losses(2) != a  # the model-owned generator drives dropout and epsilon


def test_dae_has_no_kl_and_deterministic_code():
    d = tiny_data()
    model = MultVAEModel(d.n_items, small_cfg(variational=False), seed=0)
    out = model.compute_losses(batch(d), training=True)
    assert float(out["kl"]) == 0.0 and float(out["beta"]) == 0.0
    assert float(out["loss"]) == pytest.approx(float(out["nll"]) + float(out["l2"]))
    mu, logvar = model.encode(batch(d)["items"])
    assert logvar is None and mu.shape == (d.n_users, 4)
    with pytest.raises(Exception, match="variational"):
        MultDAE(variational=True)


def test_score_known_users_equals_fold_in_and_save_load(tmp_path):
    d = tiny_data()
    m = MultVAE(small_cfg(lam=1e-3)).fit(d, train_cfg(epochs=3))
    users = np.array([0, 5, 7])
    known = m.score(users)
    np.testing.assert_allclose(known, m.score(None, d.to_csr()[users]), rtol=1e-6)
    z = m.recalculate_user(d.to_csr()[users])
    assert z.shape == (3, 4)
    m.save(tmp_path / "vae")
    m2 = Recommender.load(tmp_path / "vae")
    assert isinstance(m2, MultVAE) and m2.config == m.config
    np.testing.assert_allclose(m2.score(users), known, rtol=1e-6)
    np.testing.assert_allclose(m2.recalculate_user(d.to_csr()[users]), z, rtol=1e-6)
    items, _ = m2.recommend(users, k=5)
    seen = d.to_csr()[users].toarray()
    assert not seen[np.arange(3)[:, None], items].any()


def test_mixed_precision_loss_is_float32_and_finite():
    d = tiny_data()
    with precision_policy("mixed_float16"):
        model = MultVAEModel(d.n_items, small_cfg(), seed=0)
    with tf.GradientTape() as tape:
        out = model.compute_losses(batch(d), training=True)
    grads = tape.gradient(out["loss"], model.trainable_variables)
    assert model.decoder_layers[0].compute_dtype == "float16"
    assert all(v.dtype == tf.float32 for v in out.values())
    assert np.isfinite(float(out["loss"])) and all(g is not None for g in grads)


def test_empty_batch_gives_zero_loss_not_nan():
    d = tiny_data()
    model = MultVAEModel(d.n_items, small_cfg(), seed=0)
    empty = tf.SparseTensor(np.zeros((0, 2), np.int64), np.zeros(0, np.float32), [0, d.n_items])
    out = model.compute_losses({"items": empty}, training=True)
    assert float(out["nll"]) == 0.0 and float(out["kl"]) == 0.0


def test_validation_on_held_out_users_is_logged_per_epoch():
    from tfmf.data.splits import strong_generalization

    d = tiny_data(n_users=60)
    split = strong_generalization(d, 0.25, 0.5, seed=0)
    m = MultVAE(small_cfg()).fit(split.train, train_cfg(epochs=2), validation=split)
    assert [sorted(k for k in h if k.startswith("val_")) for h in m.history] == \
        [["val_ndcg@100", "val_recall@20"]] * 2
    assert 0.0 < m.history[-1]["val_ndcg@100"] <= 1.0
