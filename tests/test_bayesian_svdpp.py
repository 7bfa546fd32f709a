"""Bayesian SVD++ / timeSVD++ flipped (tfmf.models.bayesian with the implicit and time terms):
planted implicit and time structure recovered better than by plain Bayesian MF, fold-in,
save/load/export round trips, configs, and ML-100K when present."""
import tfmf  # noqa: F401  (Keras 2 before TensorFlow)

import os

import numpy as np
import pytest
import tensorflow as tf

from tfmf.config import TrainConfig, load_config
from tfmf.data.interactions import InteractionData
from tfmf.data.splits import holdout
from tfmf.errors import ConfigError
from tfmf.evaluation import evaluate
from tfmf.models import bayesian
from tfmf.models.base import Recommender

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET = TrainConfig(verbose=0, seed=3)
SHORT = dict(factors=4, burn_in=8, samples=20, posterior_rank=32, noise_precision=2.0)


def planted(seed: int = 0, n_users: int = 300, n_items: int = 120, per_user: int = 6,
            mood: float = 0.6):
    """Ratings whose user taste is visible in *which* items a user rated.

    Two user groups pick 90% of their few items from "their" half of the catalogue and rate
    their half +1 and the other half -1 from the middle (plus small rank-2 structure and
    noise 0.5): from a few noisy ratings a user's taste factor is uncertain, from the items'
    identity (shared by the whole group) it is not. Each rating's day carries a second offset
    per (user, day) session (std ``mood``).
    """
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 2, n_users)
    U, V = rng.normal(0, 0.4, (n_users, 2)), rng.normal(0, 0.4, (n_items, 2))
    users, items, values, days = [], [], [], []
    for u in range(n_users):
        own = np.arange(n_items) % 2 == group[u]
        p = np.where(own, 0.9 / own.sum(), 0.1 / (~own).sum())
        chosen = rng.choice(n_items, per_user, replace=False, p=p)
        session = rng.integers(0, 2, per_user)  # two rating days per user
        offset = rng.normal(0, mood, 2)
        r = 3 + np.where(own[chosen], 1.0, -1.0) + V[chosen] @ U[u] + offset[session] \
            + rng.normal(0, 0.5, per_user)
        users += [u] * per_user
        items += chosen.tolist()
        values += r.tolist()
        days += (session + 10 * u).tolist()
    return InteractionData(users=np.array(users, np.int32), items=np.array(items, np.int32),
                           values=np.array(values, np.float32),
                           timestamps=np.array(days, np.int64) * 86400 + 3600,
                           user_ids=np.arange(n_users), item_ids=np.arange(n_items))


@pytest.fixture(scope="module")
def split():
    return holdout(planted(), test_fraction=0.2, seed=1)


@pytest.fixture(scope="module")
def flipped(split):
    train, _ = split
    return bayesian.BayesianSVDpp(implicit_item=True, time_user_day=True, time_item_bins=2,
                                  clip_predictions=False, **SHORT).fit(train, QUIET)


def test_svdpp_recovers_planted_implicit_structure_better_than_bmf(split):
    train, test = split
    plain = bayesian.BayesianMF(clip_predictions=False, **SHORT).fit(train, QUIET)
    svdpp = bayesian.BayesianSVDpp(clip_predictions=False, **SHORT).fit(train, QUIET)
    a, b = evaluate(plain, test)["rmse"], evaluate(svdpp, test)["rmse"]
    assert b < a - 0.008, (a, b)


def test_user_day_bias_recovers_planted_sessions(split, flipped):
    train, test = split
    untimed = bayesian.BayesianSVDpp(implicit_item=True, clip_predictions=False, **SHORT)
    untimed.fit(train, QUIET)
    timed_rmse, untimed_rmse = evaluate(flipped, test)["rmse"], evaluate(untimed, test)["rmse"]
    assert timed_rmse < untimed_rmse - 0.01, (timed_rmse, untimed_rmse)
    # Without the query's timestamp the model is the exported, time-averaged factor model.
    assert flipped.uses_timestamps
    np.testing.assert_allclose(flipped.predict(test.users, test.items),
                               flipped.model({"user_id": tf.constant(test.users),
                                              "item_id": tf.constant(test.items)}).numpy(),
                               rtol=1e-6)


def test_implicit_fold_in_uses_the_rated_items(split):
    """A folded-in user's bias comes mostly from which items they rated (the implicit prior):
    the two planted groups get offsets of opposite sign even with a single rating each."""
    train, _ = split
    m = bayesian.BayesianSVDpp(**SHORT).fit(train, QUIET)
    users = np.arange(40)
    rows = train.to_csr()[users]
    P, bias = m.fold_in(rows)
    assert P.shape == (40, SHORT["posterior_rank"]) and bias.shape == (40,)
    trained = m.score(users)
    folded = m.score(None, rows)
    corr = [np.corrcoef(trained[i], folded[i])[0, 1] for i in range(len(users))]
    assert np.median(corr) > 0.8, corr
    # Same items, no ratings at all (values at the global mean): the prior alone separates.
    only = rows.copy()
    only.data[:] = float(m.model.global_mean.numpy())
    _, b = m.fold_in(only)
    trained_b = m.model.user_bias.embeddings.numpy()[users, 0]
    assert np.corrcoef(b, trained_b)[0, 1] > 0.7


def test_save_load_and_export_round_trip(tmp_path, split, flipped):
    from tfmf.export import export_model

    train, test = split
    flipped.save(tmp_path / "m")
    back = Recommender.load(tmp_path / "m")
    assert type(back) is bayesian.BayesianSVDpp and back.config == flipped.config
    for ts in (None, test.timestamps):
        np.testing.assert_allclose(back.predict(test.users, test.items, ts),
                                   flipped.predict(test.users, test.items, ts), rtol=1e-6)
    np.testing.assert_allclose(back.fold_in(train.to_csr()[:5])[1],
                               flipped.fold_in(train.to_csr()[:5])[1], rtol=1e-5)
    # The SavedModel serves the effective factors (implicit terms folded in).
    export_model(flipped, train.user_ids, train.item_ids, str(tmp_path / "saved"), k=4)
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    users = np.arange(5)
    want_idx, _ = flipped.recommend(users, k=4)
    got = loaded.signatures["recommend"](users=tf.constant(train.user_ids[users]))
    np.testing.assert_array_equal(got["item_ids"].numpy(), train.item_ids[want_idx])


def test_time_terms_without_timestamps_are_a_config_error():
    data = planted(per_user=3, n_users=20)
    data.timestamps = None
    with pytest.raises(ConfigError) as e:
        bayesian.BayesianSVDpp(time_user_day=True, **SHORT).fit(data, QUIET)
    assert e.value.key == "model.time_user_day"


@pytest.mark.parametrize("raw,key", [
    ({"name": "bayesian_svdpp", "implicit_precision": 0.0}, "model.implicit_precision"),
    ({"name": "bayesian_svdpp", "time_item_bins": -1}, "model.time_item_bins"),
])
def test_config_errors_name_the_key(raw, key):
    with pytest.raises(ConfigError) as e:
        load_config(raw={"model": raw})
    assert e.value.key == key


@pytest.mark.parametrize("name", ["ml100k_bayesian_svdpp", "ml100k_bayesian_timesvdpp_flipped",
                                  "ml100k_bayesian_mf_fast"])
def test_shipped_configs_load(name):
    cfg = load_config(os.path.join(ROOT, "configs", f"{name}.yaml"))
    assert cfg.model_name in ("bayesian_svdpp", "bayesian_mf")


@pytest.mark.slow
def test_ml100k_u1_flipped_beats_bayesian_mf(ml100k_dir):
    """A short chain of the shipped timeSVD++ flipped config beats Bayesian MF's u1 0.904."""
    from tfmf.data.splits import official_folds

    cfg = load_config(os.path.join(ROOT, "configs", "ml100k_bayesian_timesvdpp_flipped.yaml"),
                      overrides=["model.burn_in=10", "model.samples=30"])
    train, test = next(official_folds(["u1"], data_dir=ml100k_dir))
    m = bayesian.BayesianSVDpp(cfg.model).fit(train, QUIET)
    assert evaluate(m, test)["rmse"] < 0.900
