"""``speed-vae``: tfmf's Mult-VAE vs a PyTorch Mult-VAE (Cornac's VAECF), in one run.

    python -m pipelines.benchmark speed-vae --scale full --out runs/bench

The peer is Cornac's ``VAECF`` (``likelihood="mult"``), installed by the ``bench`` extra with the
CPU build of torch. Each peer measurement runs in its own spawned process (torch and
TensorFlow never share a process or a thread pool); torch uses its default threads (one per
core).

Two scales:

* ML-100K strong generalization (real data, the ``implicit-ml100k`` protocol and folds):
  tfmf's configs/ml100k_mult_vae.yaml vs VAECF with the same network (``dims`` [200]: no
  hidden layer, 200 latent dims, tanh), batch, epochs, Adam learning rate and data; fit
  seconds (wall and CPU) and NDCG@100 / Recall@20 of the held-out users, who are scored by
  both from their fold-in rows (VAECF through its own ``encode`` / ``decode``). tfmf also in
  mixed_bfloat16, to show what bfloat16 does to accuracy.
* ML-20M shape (synthetic ``implicit_power_law`` with ML-20M's binarized users, items and
  positives, as pipelines/vae_epoch_ml20m.py): users/s of a training epoch ([600, 200],
  batch 500: configs/ml20m_mult_vae.yaml), tfmf float32 and mixed_bfloat16 and the peer, and
  each one's share of this CPU's float32 matmul FLOP/s (measured in the same run) at the
  model's FLOPs per user (pipelines/benchmark.py ``vae_flops_per_user``: the same count for
  both, so the share is a "model FLOPs utilisation").

What VAECF does differently (it is the library's own training loop, timed as a user runs it):
its KL weight is a constant ``beta`` (no annealing: set to the config's ``anneal_cap``); its
input is neither L2-normalised nor dropped out; each batch is densified on the host
(``toarray``) and the first layer is a dense matmul over all items; it iterates users in a fixed
order. Same layer widths, activation, likelihood, optimizer, batch, epochs and data.
"""
from __future__ import annotations

import os
import resource

import numpy as np
import scipy.sparse as sp

from pipelines.benchmark import CONFIGS, ML20M_SHAPE, Timer, matmul_flops, ratio, suite, \
    vae_flops_per_user

#: batches per ML-20M-shape epoch timed (as the throughput suite: 30 batches of 500); the
#: peer's dense steps are ~2x slower, so it times fewer (its users/s is a per-step rate too)
SHAPE_STEPS = 30
PEER_SHAPE_STEPS = 10
#: torch threads of the peer (0: torch's default, one per core). On a machine shared with other
#: work, one thread is several times faster for torch than two (its OpenMP barriers wait for a
#: descheduled thread): set TFMF_PEER_THREADS=1 there and say so.
PEER_THREADS = int(os.environ.get("TFMF_PEER_THREADS", "0"))
#: ML-100K folds the peer fits (0: all of tfmf's); its ratios use tfmf's mean over the same folds
PEER_FOLDS = int(os.environ.get("TFMF_PEER_FOLDS", "0"))


# --------------------------------------------------------------------------- the peer
def _cornac_dataset(csr: sp.csr_matrix, seed: int = 0):
    """A Cornac Dataset of the rows of ``csr`` that have entries (raw ids = tfmf indices)."""
    from cornac.data import Dataset

    coo = csr.tocoo()
    triples = list(zip(coo.row.tolist(), coo.col.tolist(), np.ones(coo.nnz).tolist()))
    return Dataset.from_uir(triples, seed=seed)


def _vaecf(params: dict, n_epochs: int):
    from cornac.models import VAECF

    dims = list(params["dims"])
    return VAECF(k=dims[-1], autoencoder_structure=dims[:-1], act_fn=params["activation"],
                 likelihood="mult", n_epochs=n_epochs, batch_size=params["batch_size"],
                 learning_rate=params["learning_rate"], beta=params["beta"],
                 seed=params["seed"], verbose=False)


def cornac_folds(folds: list[tuple[sp.csr_matrix, sp.csr_matrix]], params: dict) -> list[dict]:
    """VAECF fitted on each fold's training rows; scores of the fold's held-out rows.

    Args:
      folds: (training CSR [n_users, n_items], held-out users' fold-in CSR [n_test, n_items]).
      params: dims, activation, batch_size, learning_rate, beta, seed, epochs.

    Returns:
      Per fold: fit_s, cpu_s (the ``VAECF.fit`` call) and ``scores`` [n_test, n_items]
      (float32; items VAECF never saw in training score below every other item).
    """
    import torch

    if params.get("threads"):
        torch.set_num_threads(int(params["threads"]))
    out = []
    for train, fold_in in folds:
        ds = _cornac_dataset(train, params["seed"])
        model = _vaecf(params, params["epochs"])
        with Timer() as t:
            model.fit(ds)
        cols = np.full(train.shape[1], -1, np.int64)  # tfmf item -> Cornac column
        for raw, idx in ds.iid_map.items():
            cols[int(raw)] = idx
        x = fold_in.tocoo()
        keep = cols[x.col] >= 0
        dense = np.zeros((fold_in.shape[0], ds.num_items), np.float32)
        dense[x.row[keep], cols[x.col[keep]]] = 1.0  # VAECF binarises its input the same way
        with torch.no_grad():
            z, _ = model.vae.encode(torch.from_numpy(dense))
            probs = model.vae.decode(z).numpy()
        scores = np.full((fold_in.shape[0], train.shape[1]), -1.0, np.float32)
        known = cols >= 0
        scores[:, known] = probs[:, cols[known]]
        out.append({"fit_s": t.wall, "cpu_s": t.cpu, "scores": scores,
                    "threads": torch.get_num_threads(), "torch": torch.__version__})
    return out


def cornac_epoch(csr: sp.csr_matrix, params: dict) -> dict:
    """Users/s of VAECF's training loop: a first epoch (warm-up), then a second one timed."""
    import cornac
    import torch
    from cornac.models.vaecf.vaecf import learn

    if params.get("threads"):
        torch.set_num_threads(int(params["threads"]))
    ds = _cornac_dataset(csr, params["seed"])
    model = _vaecf(params, 1)
    with Timer() as first:
        model.fit(ds)
    with Timer() as t:
        learn(model.vae, ds, n_epochs=1, batch_size=params["batch_size"],
              learn_rate=params["learning_rate"], beta=params["beta"], verbose=False,
              device=torch.device("cpu"))
    n = ds.num_users
    return {"n_users": n, "epoch1_s": first.wall, "epoch_s": t.wall, "cpu_s": t.cpu,
            "users_per_s": n / t.wall, "users_per_cpu_s": n / t.cpu,
            "cores_busy": t.cpu / t.wall, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "cornac": cornac.__version__,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2}


def _peer_available() -> str | None:
    try:
        import cornac.models.vaecf.vaecf  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        return f"{exc} (pip install -e '.[bench]')"
    return None


def _peer_params(model_cfg, train_cfg, epochs: int | None = None) -> dict:
    return {"dims": list(model_cfg.dims), "activation": model_cfg.activation,
            "batch_size": train_cfg.batch_size, "learning_rate": train_cfg.learning_rate,
            "beta": model_cfg.anneal_cap, "seed": train_cfg.seed,
            "epochs": train_cfg.epochs if epochs is None else epochs}


# --------------------------------------------------------------------------- ML-100K
def _fold_csr(split):
    test_users = np.asarray(split.test_users, np.int64)
    return split.train.to_csr(), split.fold_in.to_csr()[test_users]


class _Scores:
    """A fitted-model stand-in for tfmf's evaluation: precomputed scores of the held-out rows."""

    task = "implicit"

    def __init__(self, scores: np.ndarray):
        self.scores, self.at = scores, 0

    def score(self, users, user_items):
        n = user_items.shape[0]
        out = self.scores[self.at:self.at + n]
        self.at += n
        return out


def ml100k_rows(args, tiny: bool, notes: list[str]) -> list[dict] | None:
    import dataclasses

    from pipelines.benchmark import run_isolated
    from pipelines.ml100k_implicit import model_config, protocol_folds
    from tfmf import registry
    from tfmf.data.movielens import find_movielens
    from tfmf.evaluation import evaluate

    if find_movielens("ml-100k", args.data_dir) is None:
        return None
    data_set = [f"data.data_dir={args.data_dir}"] if args.data_dir else []
    base, folds = protocol_folds(data_set)
    folds = folds[:1] if tiny else folds
    extra = ["train.epochs=2"] if tiny else []
    cfg = model_config("mult_vae", extra)
    eval_cfg = dataclasses.replace(base.eval, metrics=["ndcg", "recall"], ks=[20, 100])
    keys = ("ndcg@100", "recall@20")
    per: dict[str, list[dict]] = {}
    for precision in ("float32", "mixed_bfloat16"):
        train_cfg = dataclasses.replace(cfg.train, precision=precision)
        rows = []
        for split in folds:
            model = registry.create(cfg.model_name, cfg.model)
            with Timer() as t:
                model.fit(split.train, train_cfg)
            res = evaluate(model, split, eval_cfg)
            rows.append({"fit_s": t.wall, "cpu_s": t.cpu, **{k: res[k] for k in keys}})
            print(f"tfmf mult_vae {precision}: fit {t.wall:.1f}s (cpu {t.cpu:.1f}s) "
                  f"ndcg@100 {res['ndcg@100']:.4f}", flush=True)
        per[f"tfmf|Mult-VAE {precision}"] = rows
    missing = _peer_available()
    if missing:
        notes.append(f"Cornac/torch not importable: peer rows skipped ({missing}).")
    else:
        params = _peer_params(cfg.model, cfg.train)
        peer_folds = folds[:PEER_FOLDS] if PEER_FOLDS else folds
        peer = run_isolated(cornac_folds, [_fold_csr(s) for s in peer_folds], params)
        rows = []
        for split, r in zip(peer_folds, peer):
            res = evaluate(_Scores(r["scores"]), split, eval_cfg)
            rows.append({"fit_s": r["fit_s"], "cpu_s": r["cpu_s"], **{k: res[k] for k in keys}})
            print(f"cornac VAECF: fit {r['fit_s']:.1f}s (cpu {r['cpu_s']:.1f}s) "
                  f"ndcg@100 {res['ndcg@100']:.4f}", flush=True)
        per[f"cornac / torch {peer[0]['torch']}|VAECF (mult) float32, "
            f"{peer[0]['threads']} thread(s)"] = rows
    out = []
    for label, rows in per.items():
        lib, model = label.split("|")
        col = lambda k: np.array([r[k] for r in rows], np.float64)
        out.append({"library": lib, "model": model, "folds": len(rows),
                    "ndcg@100": float(col("ndcg@100").mean()),
                    "ndcg@100 std": float(col("ndcg@100").std()),
                    "recall@20": float(col("recall@20").mean()),
                    "fit_s": float(col("fit_s").mean()), "fit_s max": float(col("fit_s").max()),
                    "cpu_s": float(col("cpu_s").mean())})
    peer_row = next((r for r in out if r["library"].startswith("cornac")), None)
    n_peer = peer_row["folds"] if peer_row else 0
    for r, (label, rows) in zip(out, per.items()):
        # Same folds on both sides of a ratio (the peer may fit fewer: TFMF_PEER_FOLDS).
        same = np.array([q["fit_s"] for q in rows[:n_peer]]).mean() if n_peer else None
        same_cpu = np.array([q["cpu_s"] for q in rows[:n_peer]]).mean() if n_peer else None
        r["fit_x_peer"] = ratio(same, peer_row and peer_row["fit_s"])
        r["cpu_x_peer"] = ratio(same_cpu, peer_row and peer_row["cpu_s"])
    m, t = cfg.model, cfg.train
    notes.append(
        f"ML-100K: {len(folds)} user fold(s) of the implicit-ml100k protocol; "
        f"configs/ml100k_mult_vae.yaml: dims {list(m.dims)}, dropout {m.dropout}, KL annealed "
        f"to {m.anneal_cap} over {m.total_anneal_steps} steps, batch {t.batch_size}, "
        f"{t.epochs} epochs, Adam {t.learning_rate}, steps_per_execution "
        f"{t.steps_per_execution}; VAECF: k={m.dims[-1]}, autoencoder_structure="
        f"{list(m.dims[:-1])}, act_fn={m.activation}, beta={m.anneal_cap} (constant), same "
        "batch, epochs and learning rate. fit_s: wall seconds of fit (tfmf includes tracing; "
        "no per-epoch validation in this config), cpu_s: process CPU seconds.")
    return out


# --------------------------------------------------------------------------- ML-20M shape
def shape_rows(tiny: bool, notes: list[str]) -> list[dict]:
    from pipelines.benchmark import run_isolated
    from pipelines.vae_epoch_ml20m import measure
    from tfmf.config import load_config
    from tfmf.data.synthetic import implicit_power_law

    shape = (2000, 1000, 20_000) if tiny else ML20M_SHAPE
    steps = 3 if tiny else SHAPE_STEPS
    n = 256 if tiny else 2048
    roof = [matmul_flops(n, "float32", 2 if tiny else 5)["gflop_per_s"]]
    cfg = load_config(os.path.join(CONFIGS, "ml20m_mult_vae.yaml"))
    runs = []
    for precision in ("float32", "mixed_bfloat16"):
        kw = {"steps": steps, "shape": shape, "overrides": [f"train.precision={precision}"]}
        r = measure(**kw) if tiny else run_isolated(measure, **kw)
        runs.append(("tfmf", f"Mult-VAE {precision}", r))
        print(f"tfmf {precision}: {r['users_per_s']:.0f} users/s", flush=True)
    missing = _peer_available()
    if missing:
        notes.append(f"Cornac/torch not importable: peer row skipped ({missing}).")
    else:
        data = implicit_power_law(*shape, seed=0)
        csr = data.to_csr()
        del data
        active = np.flatnonzero(np.diff(csr.indptr) > 0)
        pick = np.sort(np.random.default_rng(1).choice(
            active, min(len(active), min(steps, PEER_SHAPE_STEPS) * cfg.train.batch_size),
            replace=False))
        sub = csr[pick]
        del csr
        r = run_isolated(cornac_epoch, sub, _peer_params(cfg.model, cfg.train, 1))
        runs.append((f"cornac {r['cornac']} / torch {r['torch']}",
                     f"VAECF (mult) float32, {r['threads']} thread(s)", r))
        print(f"cornac VAECF: {r['users_per_s']:.0f} users/s", flush=True)
    roof.append(matmul_flops(n, "float32", 2 if tiny else 5)["gflop_per_s"])
    peak = max(roof)
    ref = runs[0][2]
    fl = vae_flops_per_user(list(cfg.model.dims), ref["n_items"],
                            ref["nnz"] / ref["n_active_users"])
    rows = []
    for lib, model, r in runs:
        achieved = r["users_per_s"] * fl["flops"] / 1e9
        rows.append({"library": lib, "model": model, "users timed": r["n_users"],
                     "users/s": r["users_per_s"], "users/CPU-s": r["users_per_cpu_s"],
                     "cores busy": r["cores_busy"], "model GFLOP/s": achieved,
                     "x_fp32_matmul_peak": achieved / peak,
                     "peak RSS GB": r["peak_rss_gb"]})
    peer = next((r for r in rows if r["library"].startswith("cornac")), None)
    for r in rows:
        r["x_peer users/s"] = ratio(r["users/s"], peer and peer["users/s"])
        r["x_peer users/CPU-s"] = ratio(r["users/CPU-s"], peer and peer["users/CPU-s"])
    notes += [
        f"ML-20M shape: implicit_power_law{shape}, configs/ml20m_mult_vae.yaml "
        f"({list(cfg.model.dims)}, batch {cfg.train.batch_size}, Adam "
        f"{cfg.train.learning_rate}). tfmf: pipelines/vae_epoch_ml20m.py's measure(), the "
        f"first {steps} batches of each epoch, the 2nd epoch timed, each precision in its own "
        f"process; VAECF: {min(steps, PEER_SHAPE_STEPS) * cfg.train.batch_size} users drawn "
        "at random (seed 1) from "
        "the same data, one warm-up epoch then one timed epoch of its own training loop, in "
        "its own process.",
        f"x_fp32_matmul_peak: users/s x {fl['flops'] / 1e6:.1f} MFLOP/user ({fl['formula']}) "
        f"/ this CPU's {n}^3 float32 tf.matmul FLOP/s ({peak:.0f} GFLOP/s, best of the "
        f"measurements before and after the epochs: {', '.join(f'{g:.0f}' for g in roof)}). "
        "Cornac's dense first layer does more FLOPs than that count; the share is "
        "per model FLOP, the same for both. cores busy = CPU s / wall s of the timed epoch.",
    ]
    return rows


@suite("speed-vae")
def speed_vae(args) -> dict:
    tiny = args.scale == "tiny"
    notes: list[str] = []
    tables = {}
    ml = ml100k_rows(args, tiny, notes)
    if ml is None:
        notes.append("ML-100K not found: its table is skipped.")
    else:
        tables["ML-100K strong generalization, Mult-VAE fit per fold"] = ml
    tables["ML-20M shape, Mult-VAE training epoch"] = shape_rows(tiny, notes)
    notes.append("Ratios (x_peer, fit_x_peer) compare rows of this run; wall seconds on a "
                 "shared machine are noisy, CPU seconds (all threads) are beside them.")
    return {"tables": tables, "notes": notes}
