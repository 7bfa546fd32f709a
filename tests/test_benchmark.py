"""pipelines/benchmark.py: every suite at --scale tiny writes the expected JSON rows/columns.

Benchmarks are not tests: nothing here asserts a timing, only that each suite runs end to end,
records the machine and command, and reports the rows it promises (ML-100K suites skip cleanly
without the data).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import tfmf  # noqa: F401  (Keras 2 before TensorFlow)
from pipelines import benchmark as bench

#: suite -> {table title prefix: (row labels column, expected labels, required columns)}
EXPECTED = {
    "explicit-ml100k": {"ML-100K official folds": (
        "model", ["SVD", "mf", "biased_mf", "als", "bayesian_mf", "bayesian_mf_fast",
                  "bayesian_svdpp", "bayesian_timesvdpp_flipped"],
        ["library", "rmse", "mae", "fit_s", "u1_rmse", "ttt_s", "fit_x_svd", "ttt_x_svd"])},
    "implicit-ml100k": {"ML-100K strong generalization": (
        "model", ["mult_vae", "mult_dae", "ials", "ease", "popularity", "recvae", "edlae", "als"],
        ["library", "ndcg@100", "recall@20", "recall@50", "fit_s", "fit_x_ials"])},
    "implicit-playcounts": {"Synthetic play counts": (
        "model", ["ials", "ease", "edlae", "mult_vae", "recvae", "popularity", "als"],
        ["library", "ndcg@100", "recall@20", "recall@50", "fit_s", "fit_x_ials"])},
    "throughput": {
        "MF ratings/s": ("model", ["mf", "biased_mf"], ["epoch ratings/s", "step ratings/s"]),
        "TF matmul": ("dtype", ["float32", "bfloat16"], ["gflop_per_s", "x_float32"]),
        "Mult-VAE": ("model", ["mult_vae"], ["users/s", "MFLOP/user", "x_fp32_matmul_peak",
                                             "peak RSS GB"])},
    "pipeline": {
        "Sparse vs densified": ("input", ["sparse (tfmf)", "densified"] * 3,
                                ["what", "ms", "ms best", "densified / sparse (best)"]),
        "Prefetch": ("prefetch", [True, False, True, False], ["what", "users/s",
                                                              "x_prefetch_off"])},
    "precision": {"float32 vs": ("precision", ["float32", "mixed_bfloat16", "mixed_float16"],
                                 ["model", "rmse", "step /s", "step x_float32"])},
}


def run_tiny(tmp_path, suite: str, *extra: str) -> dict:
    assert bench.main([suite, "--scale", "tiny", "--out", str(tmp_path), *extra]) == 0
    with open(tmp_path / f"{suite}-tiny.json") as fh:
        result = json.load(fh)
    assert (tmp_path / f"{suite}-tiny.md").read_text().startswith("Command: `python -m")
    return result


def check_record(result: dict, suite: str) -> None:
    assert result["suite"] == suite and result["scale"] == "tiny"
    assert result["command"].startswith(f"python -m pipelines.benchmark {suite} --scale tiny")
    assert result["date"][:2] == "20"
    machine = result["machine"]
    assert machine["nproc"] == os.cpu_count() and machine["cpu_model"]
    assert machine["tf_version"].startswith("2.") and machine["ram_gb"] > 0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, request):
    """suite -> its tiny result, each suite run once per module."""
    cache: dict[str, dict] = {}

    def get(suite: str) -> dict:
        if suite not in cache:
            extra = []
            if bench.SUITES[suite][1]:  # needs ML-100K: skip when absent
                extra = ["--data-dir", str(request.getfixturevalue("ml100k_dir"))]
            cache[suite] = run_tiny(tmp_path_factory.mktemp(suite), suite, *extra)
        return cache[suite]

    return get


@pytest.mark.parametrize("suite", list(EXPECTED))
def test_suite_tiny(tiny, suite):
    if suite in ("implicit-ml100k", "implicit-playcounts"):
        pytest.importorskip("implicit")
    if suite == "explicit-ml100k":
        pytest.importorskip("surprise")
    result = tiny(suite)
    check_record(result, suite)
    assert "skipped" not in result
    tables = result["tables"]
    assert len(tables) == len(EXPECTED[suite])
    for prefix, (label_col, labels, columns) in EXPECTED[suite].items():
        (title,) = [t for t in tables if t.startswith(prefix)]
        rows = tables[title]
        assert [r[label_col] for r in rows] == labels
        for col in columns:
            assert all(col in r for r in rows), (title, col)
    assert result["notes"]


def test_ratios_are_relative_to_their_reference(tiny):
    """Ratio columns are 1 on the reference row and equal value / reference elsewhere."""
    (rows,) = tiny("precision")["tables"].values()
    ref = rows[0]
    assert ref["precision"] == "float32" and ref["step x_float32"] == 1.0
    for r in rows[1:]:
        assert r["step x_float32"] == pytest.approx(r["step /s"] / ref["step /s"])
        assert r["finite"] is True and np.isfinite(r["rmse"])
    assert rows[2]["loss_scale"] > 0  # mixed_float16 runs with a loss scale


def test_missing_ml100k_skips_cleanly(tmp_path):
    empty = tmp_path / "no-data"
    empty.mkdir()
    for suite in ("explicit-ml100k", "implicit-ml100k"):
        result = run_tiny(tmp_path, suite, "--data-dir", str(empty))
        check_record(result, suite)
        assert "ML-100K not found" in result["skipped"] and result["tables"] == {}


def test_cli_delegates_with_separator(tmp_path, capsys):
    from tfmf.cli import main

    empty = tmp_path / "no-data"
    empty.mkdir()
    code = main(["benchmark", "explicit-ml100k", "--", "--scale", "tiny", "--out", str(tmp_path),
                 "--data-dir", str(empty)])
    assert code == 0 and "skipped: ML-100K not found" in capsys.readouterr().out
    with open(tmp_path / "explicit-ml100k-tiny.json") as fh:
        assert json.load(fh)["command"].endswith(f"--data-dir {empty}")


def test_unknown_suite_is_a_usage_error():
    with pytest.raises(SystemExit) as exc:
        bench.main(["no-such-suite"])
    assert exc.value.code == 2


def test_vae_flops_per_user_formula():
    n_items, nnz = 20_108, 73.0
    vae = bench.vae_flops_per_user([600, 200], n_items, nnz)
    dense = 600 * 400 + 200 * 600 + 600 * n_items  # encoder 600->2*200, decoder 200->600->items
    assert vae["flops"] == 6 * dense + 4 * nnz * 600
    assert vae["formula"] == f"6*(600*400 + 200*600 + 600*{n_items}) + 4*nnz_u*600"
    dae = bench.vae_flops_per_user([600, 200], n_items, nnz, variational=False)
    assert dae["dense_flops"] == 6 * (600 * 200 + 200 * 600 + 600 * n_items)
    shallow = bench.vae_flops_per_user([200], 1000, 10.0)  # n_items -> 2*200 code -> n_items
    assert shallow["flops"] == 6 * 200 * 1000 + 4 * 10.0 * 400


def test_densified_first_layer_matches_sparse_model():
    """The pipeline suite's dense-input Mult-VAE computes the same function as tfmf's."""
    import tensorflow as tf

    from tfmf.config import TrainConfig
    from tfmf.data.synthetic import implicit_power_law
    from tfmf.models.vae import MultVAE, MultVAEConfig

    data = implicit_power_law(40, 30, 200, seed=1)
    cfg, tcfg = MultVAEConfig(dims=[8, 4]), TrainConfig(seed=3)
    sparse = MultVAE(cfg).build_model(data, tcfg)
    dense = bench._dense_input_vae()(cfg).build_model(data, tcfg)
    assert type(dense.encoder_in).__name__ == "DenseInput"
    assert len(dense.trainable_variables) == len(sparse.trainable_variables)
    dense.encoder_in.kernel.assign(sparse.encoder_in.kernel)
    for a, b in zip(dense.encoder_layers + dense.decoder_layers,
                    sparse.encoder_layers + sparse.decoder_layers):
        a.set_weights(b.get_weights())
    csr = data.to_csr()[:10].tocoo()
    x = tf.SparseTensor(np.stack([csr.row, csr.col], 1).astype(np.int64),
                        csr.data.astype(np.float32), csr.shape)
    x = tf.sparse.reorder(x)
    np.testing.assert_allclose(dense(x).numpy(), sparse(x).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.horovod
def test_horovod_tiny(tmp_path):
    if not bench.horovodrun_available():
        pytest.skip("horovodrun not installed")
    result = run_tiny(tmp_path, "horovod")
    check_record(result, "horovod")
    (rows,) = result["tables"].values()
    assert [r["np"] for r in rows] == [2] and rows[0]["ratings_per_s"] > 0
    assert np.isfinite(rows[0]["final_loss"])
