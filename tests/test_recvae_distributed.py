"""RecVAE under a real ``horovodrun --gloo -np 2``: both ranks end with identical weights and
optimizer state (the alternating phases take the same branch on every rank, gradients are
averaged, the prior's encoder copy is the same).

The test launches this file as the worker (``python tests/test_recvae_distributed.py worker
<out_dir>``); each rank writes ``<out_dir>/rank<r>.json``.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_distributed import horovodrun  # noqa: E402

CONFIG = """
model: {name: recvae, hidden_dim: 32, latent_dim: 8, n_layers: 2, encoder_epochs: 1,
        decoder_epochs: 1}
data: {source: sample, binarize_threshold: 4.0, min_user_interactions: 5,
       split: {kind: strong, test_fraction: 0.2, fold_in_fraction: 0.8, seed: 0}}
train: {epochs: 3, batch_size: 32, optimizer: adam, learning_rate: 0.005, verbose: 0, seed: 1}
eval: {metrics: [ndcg, recall], ks: [20, 100]}
"""


def worker(out_dir: str) -> None:
    import tfmf  # noqa: F401
    from tfmf import distributed, runner
    from tfmf.config import load_config

    distributed.init()
    r = distributed.rank()
    path = os.path.join(out_dir, "recvae.yaml")
    if r == 0:
        with open(path, "w") as fh:
            fh.write(CONFIG)
    distributed.barrier()
    res = runner.train(load_config(path), os.path.join(out_dir, f"run_rank{r}"))
    model = res.model.model
    out = {"weights": [v.numpy().tolist() for v in model.variables],
           "names": [v.name for v in model.variables],
           "optimizer": [np.asarray(v.numpy()).tolist() for v in model.optimizer.variables()],
           "phases": [h["encoder_phase"] for h in res.history],
           "steps": [h["steps"] for h in res.history],
           "ndcg": res.metrics.get("ndcg@100") if isinstance(res.metrics, dict) else None}
    with open(os.path.join(out_dir, f"rank{r}.json"), "w") as fh:
        json.dump(out, fh)


@pytest.mark.slow
@pytest.mark.horovod
def test_two_ranks_end_with_identical_recvae_state(tmp_path):
    proc, _ = horovodrun(2, [os.path.abspath(__file__), "worker", str(tmp_path)], timeout=400)
    assert proc.returncode == 0, proc.stdout_text[-4000:]
    r0, r1 = (json.load(open(tmp_path / f"rank{r}.json")) for r in range(2))
    assert r0["names"] == r1["names"] and any("encoder_old" in n for n in r0["names"])
    for name, a, b in zip(r0["names"], r0["weights"], r1["weights"]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
    for a, b in zip(r0["optimizer"], r1["optimizer"]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert r0["phases"] == r1["phases"] == [1.0, 0.0, 1.0]
    assert r0["steps"] == r1["steps"]
    assert all(np.isfinite(np.asarray(w, float)).all() for w in r0["weights"])


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    worker(sys.argv[2])
