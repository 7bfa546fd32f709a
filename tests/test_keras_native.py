"""Keras-native training: tfmf's Keras models under plain ``compile()`` + ``fit()`` with stock
callbacks only, and the validation protocol (the test part never reaches model selection)."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

import tfmf
import tensorflow as tf
import tf_keras
from tfmf.data.sample import load_sample
from tfmf.data.splits import holdout

STOCK = ("ModelCheckpoint", "BackupAndRestore", "EarlyStopping", "TensorBoard", "CSVLogger",
         "TerminateOnNaN")


def _stock_callbacks(tmp_path, monitor: str):
    cb = tf_keras.callbacks
    return [cb.ModelCheckpoint(str(tmp_path / "ckpt" / "w-{epoch:02d}"), save_weights_only=True),
            cb.BackupAndRestore(str(tmp_path / "backup")),
            cb.EarlyStopping(monitor=monitor, patience=5),
            cb.TensorBoard(str(tmp_path / "tb"), profile_batch=0),
            cb.CSVLogger(str(tmp_path / "history.csv")),
            cb.TerminateOnNaN()]


@pytest.fixture(scope="module")
def split():
    return holdout(load_sample(), 0.2, seed=0)


def test_biased_mf_with_plain_fit_and_stock_callbacks(tmp_path, split):
    """The README's script: a user's own compile/fit with every stock callback."""
    train, test = split
    model = tfmf.models.BiasedMatrixFactorization(
        train.n_users, train.n_items, embedding_dim=16, l2=0.02,
        global_mean=float(train.values.mean()))
    model.compile(optimizer=tf_keras.optimizers.Adam(0.01))
    callbacks = _stock_callbacks(tmp_path, "val_loss")
    assert [type(c).__name__ for c in callbacks] == list(STOCK)
    hist = model.fit(tfmf.data.rating_dataset(train, batch_size=1024), epochs=3,
                     validation_data=tfmf.data.rating_dataset(test, test.nnz, shuffle=False),
                     callbacks=callbacks, verbose=0)
    # train_step/test_step log every loss component, on training and validation batches.
    for key in ("loss", "data", "l2", "gramian", "bias_l2", "val_loss", "val_data"):
        assert len(hist.history[key]) == 3, key
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert hist.history["val_data"][-1] < hist.history["val_data"][0]
    with open(tmp_path / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2] and "bias_l2" in rows[0]
    assert tf.train.latest_checkpoint(str(tmp_path / "ckpt")).endswith("w-03")
    assert any(f.startswith("events") for _, _, fs in os.walk(tmp_path / "tb") for f in fs)
    # The prediction is the model's: the RMSE through the Keras call matches the test loss.
    batch = next(iter(tfmf.data.rating_dataset(test, test.nnz, shuffle=False)))
    mse = float(tf.reduce_mean(tf.square(model(batch) - batch["rating"])))
    assert mse == pytest.approx(hist.history["val_data"][-1], rel=1e-4)

    # BackupAndRestore resumes a second fit with more epochs where the first stopped.
    more = model.fit(tfmf.data.rating_dataset(train, batch_size=1024), epochs=4, verbose=0,
                     callbacks=[tf_keras.callbacks.BackupAndRestore(str(tmp_path / "b2"))])
    assert len(more.history["loss"]) == 4


def test_mult_vae_with_plain_fit_and_stock_callbacks(tmp_path, split):
    train, _ = split
    csr = train.to_csr()
    csr.data[:] = 1.0
    model = tfmf.models.MultVAEModel(train.n_items, dims=[64, 16], total_anneal_steps=20)
    rows = tfmf.data.user_rows(csr, 64, seed=0)
    model(next(iter(rows))["items"])  # build before BackupAndRestore looks at it
    model.compile(optimizer=tf_keras.optimizers.Adam(1e-2))
    hist = model.fit(rows, epochs=4, verbose=0, callbacks=_stock_callbacks(tmp_path, "loss"))
    for key in ("loss", "nll", "kl", "beta", "l2"):
        assert len(hist.history[key]) == 4, key
    assert hist.history["nll"][-1] < hist.history["nll"][0]
    assert hist.history["beta"][-1] > hist.history["beta"][0] > 0  # annealed by the model
    assert (tmp_path / "history.csv").exists()
    assert tf.train.latest_checkpoint(str(tmp_path / "ckpt")) is not None


def test_pipeline_reshuffles_every_pass_and_replays(split):
    train, _ = split
    ds = tfmf.data.rating_dataset(train, 4096, seed=3)
    first, second = ([int(b["user_id"][0]) for b in ds] for _ in range(2))
    assert first != second  # a new order per epoch...
    again = tfmf.data.rating_dataset(train, 4096, seed=3)
    assert [int(b["user_id"][0]) for b in again] == first  # ...replayed by the same seed
    fixed = tfmf.data.rating_dataset(train, 4096, seed=3, epoch=1)
    assert [int(b["user_id"][0]) for b in fixed] == second


# --------------------------------------------------------------------------- the protocol
def _flip_test_ratings(data, seed=0):
    """The data with its holdout test ratings replaced by 6 - r (same rows, same split)."""
    from tfmf.data.interactions import InteractionData

    n_test = int(round(0.2 * data.nnz))
    test_rows = np.random.default_rng(seed).permutation(data.nnz)[:n_test]
    values = data.values.copy()
    values[test_rows] = 6.0 - values[test_rows]
    return InteractionData(users=data.users, items=data.items, values=values,
                           user_ids=data.user_ids, item_ids=data.item_ids,
                           rating_scale=data.rating_scale, name=data.name)


def test_the_test_part_never_reaches_model_selection(tmp_path):
    """Same training/validation data, two test parts that disagree about which epoch is best
    (true ratings vs 6 - r): the chosen epoch, the history and the weights do not change."""
    from tfmf.config import load_config
    from tfmf.runner import train

    cfg = load_config(None, [
        "model.name=biased_mf", "model.embedding_dim=8", "data.source=sample",
        "data.split={kind: holdout, test_fraction: 0.2, seed: 0}",
        "train.epochs=6", "train.batch_size=1024", "train.learning_rate=0.02",
        "train.validation_fraction=0.2", "train.restore_best=true",
        "train.early_stopping_patience=2", "train.verbose=0", "train.deterministic=true"])
    data = load_sample()
    runs = [train(cfg, str(tmp_path / name), data=d)
            for name, d in (("true", data), ("flipped", _flip_test_ratings(data)))]
    a, b = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("true", "flipped"))
    assert a["best_epoch"] == b["best_epoch"] is not None
    assert a["n_validation"] == b["n_validation"] == int(round(0.2 * a["n_train"] / 0.8))
    assert [h["val_rmse"] for h in runs[0].history] == [h["val_rmse"] for h in runs[1].history]
    for x, y in zip(runs[0].model.model.get_weights(), runs[1].model.model.get_weights()):
        np.testing.assert_array_equal(x, y)
    # The test parts do disagree, and are scored once, after selection.
    assert b["metrics"]["rmse"] > a["metrics"]["rmse"] + 0.5
    # restore_best: the stored model is the best validated epoch's, not the last one's.
    best = a["best_epoch"]
    vals = [h["val_rmse"] for h in runs[0].history]
    assert vals[best - 1] == min(vals)


def test_strong_split_holds_out_validation_users(tmp_path):
    """Validation users are neither test users nor fitted on; NDCG@K on them per epoch."""
    from tfmf.config import load_config
    from tfmf.data.splits import carve_validation, make_splits
    from tfmf.runner import train

    cfg = load_config(None, [
        "model.name=mult_vae", "model.dims=[32]", "data.source=sample",
        "data.binarize_threshold=3.5",
        "data.split={kind: strong, test_fraction: 0.2, validation_users: 60, seed: 1}",
        "train.epochs=3", "train.batch_size=64", "train.verbose=0", "train.restore_best=true",
        "eval.metrics=[ndcg, recall]", "eval.ks=[20]"])
    res = train(cfg, str(tmp_path / "run"))
    assert [sorted(k for k in h if k.startswith("val_")) for h in res.history] == \
        [["val_ndcg@100", "val_recall@20"]] * 3
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["n_validation"] > 0 and 1 <= metrics["best_epoch"] <= 3
    # The parts: validation users come from the training users only.
    from tfmf.data.loading import load_dataset

    split = next(iter(make_splits(load_dataset(cfg.data), cfg.data.split)))
    fit_part, validation, test = carve_validation(split, users=60, seed=1)
    fitted = set(np.unique(fit_part.users))
    val_users = set(validation.test_users.tolist())
    assert len(val_users) == 60 and not val_users & fitted
    assert not val_users & set(test.test_users.tolist())
    assert fitted | val_users == set(np.unique(split.train.users))


def test_validation_settings_are_checked():
    from tfmf.config import load_config
    from tfmf.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.validation_fraction=1.5"])
    assert e.value.key == "train.validation_fraction"
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.split.validation_users=-1"])
    assert e.value.key == "data.split.validation_users"


def test_the_readme_keras_example_runs(tmp_path, monkeypatch):
    """The README's compile/fit snippet, executed as written."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"<!-- keras-example -->\s*```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    hist = namespace["history"].history
    assert {"loss", "data", "l2", "bias_l2", "val_loss", "val_data"} <= set(hist)
    assert hist["val_data"][-1] < hist["val_data"][0]
    assert (tmp_path / "history.csv").exists()
