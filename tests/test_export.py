"""SavedModel export: the score/recommend signatures agree with the Recommender and `tfmf
recommend`, and load in a fresh process that never imports tfmf."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tfmf  # noqa: F401
import tensorflow as tf

from tfmf.cli import main
from tfmf.data.interactions import InteractionData
from tfmf.export import FactorSpec, export_model
from tfmf.models.baselines import BiasBaseline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name: str) -> str:
    path = os.path.join(ROOT, "configs", f"sample_{name}.yaml")
    if not os.path.exists(path):
        pytest.skip(f"{path} not written yet")
    return path


@pytest.fixture(scope="module")
def tiny():
    """Explicit ratings with string item ids and int user ids, and a fitted bias baseline."""
    rng = np.random.default_rng(0)
    n = 600
    users = rng.integers(0, 40, n) * 7 + 3
    items = np.array([f"item-{i:03d}" for i in rng.integers(0, 30, n)])
    data = InteractionData.from_raw(users, items, rng.integers(1, 6, n).astype(float),
                                    rating_scale=(1, 5), duplicates="last")
    model = BiasBaseline().fit(data)
    return data, model


def test_factor_spec_offsets_are_an_exact_dot_product():
    rng = np.random.default_rng(1)
    P, Q = rng.normal(size=(5, 3)), rng.normal(size=(7, 3))
    a, b = rng.normal(size=5), rng.normal(size=7)
    spec = FactorSpec.with_offsets(P, Q, a, b)
    expected = P @ Q.T + a[:, None] + b[None, :]
    np.testing.assert_allclose(spec.user_vectors @ spec.item_vectors.T, expected, rtol=1e-5,
                               atol=1e-5)
    assert spec.user_vectors.shape == (5, 5) and spec.item_vectors.dtype == np.float32


def test_export_signatures_match_the_model(tiny, tmp_path):
    data, model = tiny
    out = str(tmp_path / "saved")
    info = export_model(model, data.user_ids, data.item_ids, out, k=5)
    assert info["signatures"] == ["recommend", "score"]
    assert info["user_id_dtype"] == "int64" and info["item_id_dtype"] == "string"
    loaded = tf.saved_model.load(out)

    users = np.arange(data.n_users)
    want_idx, want_scores = model.recommend(users, k=5)
    got = loaded.signatures["recommend"](users=tf.constant(data.user_ids, tf.int64))
    assert got["item_ids"].shape == (data.n_users, 5)
    np.testing.assert_array_equal(got["item_ids"].numpy().astype(str), data.item_ids[want_idx])
    np.testing.assert_allclose(got["scores"].numpy(), want_scores, rtol=1e-5)

    u = np.array([0, 3, 7]); i = np.array([1, 1, 29])
    got = loaded.signatures["score"](users=tf.constant(data.user_ids[u], tf.int64),
                                     items=tf.constant(data.item_ids[i]))["scores"].numpy()
    np.testing.assert_allclose(got, model.score(u)[np.arange(3), i], rtol=1e-5)

    with pytest.raises(tf.errors.InvalidArgumentError, match="unknown user id"):
        loaded.signatures["recommend"](users=tf.constant([10 ** 9], tf.int64))
    with pytest.raises(tf.errors.InvalidArgumentError, match="unknown item id"):
        loaded.signatures["score"](users=tf.constant(data.user_ids[:1], tf.int64),
                                   items=tf.constant(["nope"]))


def test_numpy_top_k_breaks_ties_like_tf_top_k():
    # tfmf recommend (numpy) and the SavedModel (tf.math.top_k) must agree on tied scores.
    from tfmf.models.base import top_k

    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, (50, 37)).astype(np.float32)
    for k in (1, 5, 36, 37):
        idx, vals = top_k(scores, k)
        ref = tf.math.top_k(scores, k=k)
        np.testing.assert_array_equal(idx, ref.indices.numpy())
        np.testing.assert_array_equal(vals, ref.values.numpy())


def test_popularity_export_with_tied_scores(tiny, tmp_path):
    from tfmf.models.baselines import Popularity

    data, _ = tiny
    model = Popularity().fit(data)
    export_model(model, data.user_ids, data.item_ids, str(tmp_path / "pop"), k=7)
    got = tf.saved_model.load(str(tmp_path / "pop")).signatures["recommend"](
        users=tf.constant(data.user_ids, tf.int64))
    want, want_scores = model.recommend(np.arange(data.n_users), k=7)
    np.testing.assert_array_equal(got["item_ids"].numpy().astype(str), data.item_ids[want])
    np.testing.assert_array_equal(got["scores"].numpy(), want_scores)


def test_export_caps_k_and_replaces_atomically(tiny, tmp_path):
    data, model = tiny
    out = str(tmp_path / "saved")
    export_model(model, data.user_ids, data.item_ids, out, k=3)
    info = export_model(model, data.user_ids, data.item_ids, out, k=10 ** 6)
    assert info["k"] == data.n_items
    assert sorted(os.listdir(tmp_path)) == ["saved"]  # no temp or old directories left
    got = tf.saved_model.load(out).signatures["recommend"](
        users=tf.constant(data.user_ids[:2], tf.int64))
    assert got["item_ids"].shape == (2, data.n_items)
    # k = catalogue size: each row ends with the user's seen items, scored -inf, like
    # Recommender.recommend; the finite part is exactly the unseen items.
    seen = data.to_csr()[:2]
    want_idx, want_scores = model.recommend(np.arange(2), k=data.n_items)
    scores = got["scores"].numpy()
    np.testing.assert_array_equal(np.isinf(scores), np.isinf(want_scores))
    for r in range(2):
        n_seen = seen[r].nnz
        assert n_seen > 0 and np.isneginf(scores[r, -n_seen:]).all()
        assert np.isfinite(scores[r, :-n_seen]).all()


def test_export_failure_leaves_nothing(tiny, tmp_path):
    data, model = tiny
    with pytest.raises(ValueError, match="id maps"):
        export_model(model, data.user_ids[:-1], data.item_ids, str(tmp_path / "saved"))
    assert os.listdir(tmp_path) == []

    class NoExport(BiasBaseline):
        def export_spec(self):
            return None

    m = NoExport().fit(data)
    with pytest.raises(ValueError, match="does not support"):
        export_model(m, data.user_ids, data.item_ids, str(tmp_path / "saved"))
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- end to end
MODELS = {
    "biased_mf": ["train.epochs=1", "model.embedding_dim=8"],
    "mult_vae": ["train.epochs=1", "model.dims=[32,8]", "eval.metrics=[ndcg]", "eval.ks=[10]"],
}

_LOADER = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    queries = json.loads(sys.argv[1])
    out = {}
    for name, q in queries.items():
        m = tf.saved_model.load(q["path"])
        sig = m.signatures["recommend"]
        dtype = sig.structured_input_signature[1]["users"].dtype
        r = sig(users=tf.constant(q["users"], dtype))
        res = {"items": r["item_ids"].numpy().tolist(), "scores": r["scores"].numpy().tolist()}
        if "fold_in" in q:
            f = m.signatures["recommend_from_items"]
            idt = f.structured_input_signature[1]["items"].dtype
            fr = f(items=tf.constant(q["fold_in"], idt))
            res["fold_in"] = fr["item_ids"].numpy().tolist()
            res["fold_in_titles"] = [t.decode() for t in fr["titles"].numpy().tolist()]
        out[name] = res
    assert "tfmf" not in sys.modules
    print(json.dumps(out, default=lambda b: b.decode()))
""")


@pytest.fixture(scope="module")
def exported_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    runs = {}
    for name, sets in MODELS.items():
        config = _config(name)
        run_dir, saved = base / name, base / f"{name}-saved"
        args = ["train", "--config", config, "--run-dir", str(run_dir), "--quiet"]
        for s in sets:
            args += ["--set", s]
        assert main(args) == 0
        assert main(["export", str(run_dir), "--out", str(saved), "--k", "10"]) == 0
        runs[name] = (run_dir, saved)
    return runs


def _cli_json(capsys, *argv) -> dict:
    assert main([str(a) for a in argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_saved_model_in_fresh_process_matches_tfmf_recommend(exported_runs, capsys):
    from tfmf.rundir import load_id_maps

    queries, expected = {}, {}
    for name, (run_dir, saved) in exported_runs.items():
        ids = load_id_maps(str(run_dir / "ids.npz"))
        users = ids["user_ids"][[0, 5, 17]].tolist()
        queries[name] = {"path": str(saved), "users": users}
        expected[name] = [
            _cli_json(capsys, "recommend", run_dir, "--user", u, "--k", 10, "--json")
            ["recommendations"] for u in users]
        if name == "mult_vae":
            fold = ids["item_ids"][[2, 9, 30]].tolist()
            queries[name]["fold_in"] = fold
            expected[name + "/fold_in"] = _cli_json(
                capsys, "recommend", run_dir, "--items", *fold, "--k", 10, "--json"
            )["recommendations"]
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    res = subprocess.run([sys.executable, "-c", _LOADER, json.dumps(queries)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    for name in exported_runs:
        for row, recs in enumerate(expected[name]):
            assert got[name]["items"][row] == [r["item"] for r in recs], (name, row)
            np.testing.assert_allclose(got[name]["scores"][row], [r["score"] for r in recs],
                                       rtol=1e-4, atol=1e-4)
    fold = expected["mult_vae/fold_in"]
    assert got["mult_vae"]["fold_in"] == [r["item"] for r in fold]
    assert got["mult_vae"]["fold_in_titles"] == [r["title"] for r in fold]


@pytest.mark.slow
def test_every_registered_model_exports_and_matches_recommend(tiny, tmp_path):
    """The export hook of every model: SavedModel top-k == Recommender.recommend."""
    import scipy.sparse as sp

    from tfmf import registry
    from tfmf.config import TrainConfig

    data, _ = tiny
    fold = ["item-003", "item-011"]
    row = sp.csr_matrix((np.ones(2), ([0, 0], data.item_index(fold))), shape=(1, data.n_items))
    for name in registry.names():
        model = registry.get(name)().fit(data, TrainConfig(epochs=1, batch_size=256, verbose=0))
        out = str(tmp_path / name)
        info = export_model(model, data.user_ids, data.item_ids, out, k=5)
        loaded = tf.saved_model.load(out)
        got = loaded.signatures["recommend"](users=tf.constant(data.user_ids[:8], tf.int64))
        want, want_scores = model.recommend(np.arange(8), k=5)
        np.testing.assert_array_equal(got["item_ids"].numpy().astype(str), data.item_ids[want],
                                      err_msg=name)
        np.testing.assert_allclose(got["scores"].numpy(), want_scores, rtol=1e-4, atol=1e-4,
                                   err_msg=name)
        u, i = np.array([0, 4, 7]), np.array([2, 2, 29])
        got = loaded.signatures["score"](users=tf.constant(data.user_ids[u], tf.int64),
                                         items=tf.constant(data.item_ids[i]))["scores"]
        np.testing.assert_allclose(got.numpy(), model.score(u)[np.arange(3), i], rtol=1e-4,
                                   atol=1e-4, err_msg=name)
        if "recommend_from_items" in info["signatures"]:
            got = loaded.signatures["recommend_from_items"](items=tf.constant(fold))
            want = model.recommend(user_items=row, k=5)[0][0]
            np.testing.assert_array_equal(got["item_ids"].numpy().astype(str),
                                          data.item_ids[want], err_msg=name)
