"""``tfmf train --dry-run``: the memory each stage of a run needs, per registered model.

Above the models (it reads their configs and constants); the formulas and the preflight check
itself are :mod:`tfmf.memory`, which the models call before large allocations.
"""
from __future__ import annotations

import os
from typing import Callable

from tfmf.memory import (DEFAULT_MARGIN, GB, HELD_BYTES_PER_RATING, available_bytes, check_fits,
                         data_bytes, ease_fit_bytes, ease_key, factor_table_bytes,
                         gibbs_workspace_bytes, score_block_bytes, vae_bytes)

#: (what, bytes, config key that shrinks it)
Stage = tuple[str, int, str]


# --------------------------------------------------------------------------- whole runs
def _mf(cfg, n_users, n_items, nnz) -> list[Stage]:
    return [("embedding tables + Adam slots",
             factor_table_bytes(n_users, n_items, cfg.model.embedding_dim), "model.embedding_dim")]


def _als(cfg, n_users, n_items, nnz) -> list[Stage]:
    m = cfg.model
    d = m.factors + 1
    work = m.chunk_size * d * d * 4 * 3 + m.chunk_size * 256 * d * 4 * 2
    return [("factor tables", factor_table_bytes(n_users, n_items, m.factors, copies=2),
             "model.factors"),
            ("batched solve workspace", work, "model.chunk_size")]


def _bayesian(cfg, n_users, n_items, nnz) -> list[Stage]:
    m = cfg.model
    return [("Gibbs workspace + posterior mean",
             gibbs_workspace_bytes(n_users, n_items, m.factors, m.chunk_size, m.posterior_rank),
             "model.factors")]


def _vae(cfg, n_users, n_items, nnz) -> list[Stage]:
    return [("encoder/decoder tables + batch logits",
             vae_bytes(n_items, list(cfg.model.dims), cfg.train.batch_size), "train.batch_size")]


def _recvae(cfg, n_users, n_items, nnz) -> list[Stage]:
    m = cfg.model
    # Two encoders (the prior's is a frozen copy) + decoder: the VAE estimate of the widths,
    # plus one more first-layer table.
    return [("encoders/decoder tables + batch logits",
             vae_bytes(n_items, [m.hidden_dim, m.latent_dim], cfg.train.batch_size)
             + 4 * n_items * m.hidden_dim, "train.batch_size")]


def _ease(cfg, n_users, n_items, nnz) -> list[Stage]:
    from tfmf.models.ease import CPU_SOLVER, DENSE_USER_SHARE

    solver = cfg.model.solver if cfg.model.solver != "auto" else CPU_SOLVER
    return [(f"EASE item x item matrices ({cfg.model.dtype}, solver {solver})",
             ease_fit_bytes(n_items, cfg.model.dtype, solver, nnz, DENSE_USER_SHARE),
             ease_key(cfg.model.dtype))]


def _small(cfg, n_users, n_items, nnz) -> list[Stage]:
    return [("model tables", 8 * 3 * (n_users + n_items), "")]


#: registry model name -> f(cfg, n_users, n_items, nnz) -> stages of its fit.
MODEL_ESTIMATES: dict[str, Callable] = {
    "mf": _mf, "biased_mf": _mf, "als": _als, "ials": _als, "bayesian_mf": _bayesian,
    "bayesian_svdpp": _bayesian,
    "mult_vae": _vae, "mult_dae": _vae, "recvae": _recvae, "ease": _ease, "popularity": _small,
    "bias_baseline": _small,
}


def estimate_run(cfg, n_users: int, n_items: int, nnz: int) -> list[Stage]:
    """Peak-memory estimates of a run's stages (loading, fit, evaluation), in order.

    Args:
      cfg: a validated RunConfig.
      n_users, n_items, nnz: the data's counts.

    Returns:
      [(stage, bytes, key)] where key is the config key that shrinks the stage ("" if none).
    """
    stages: list[Stage] = [("read ratings", data_bytes(nnz), "data.source"),
                           ("interactions held", HELD_BYTES_PER_RATING * nnz, "data.source")]
    fit = MODEL_ESTIMATES.get(cfg.model_name, _small)
    stages += [(f"fit: {what}", b, key) for what, b, key in fit(cfg, n_users, n_items, nnz)]
    stages.append(("evaluation score blocks", score_block_bytes(cfg.eval.batch_size, n_items),
                   "eval.batch_size"))
    return stages


def first_misfit(stages: list[Stage], margin: int = DEFAULT_MARGIN) -> str | None:
    """The preflight message of the first stage that does not fit (None when all fit)."""
    for what, b, key in stages:
        msg = check_fits(b, what, key or "the data", margin)
        if msg is not None:
            return msg
    return None


# --------------------------------------------------------------------------- dry run
def synthetic_counts(data_cfg) -> tuple[int, int, int] | None:
    """(n_users, n_items, nnz) of a synthetic source straight from its config (no data built),
    None for other sources."""
    s = data_cfg.synthetic
    if data_cfg.source == "synthetic-implicit":
        return s.n_users, s.n_items, s.nnz
    if data_cfg.source == "synthetic-explicit":
        return s.n_users, s.n_items, int(round(s.density * s.n_users * s.n_items))
    return None


def estimate_file_ratings(path: str, probe: int = 1 << 16) -> int | None:
    """Rough row count of a text ratings file (file size / mean length of its first lines);
    None when ``path`` is not a plain file (a dataset name, Parquet, compressed)."""
    if not os.path.isfile(path) or path.endswith((".parquet", ".gz", ".zip")):
        return None
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(probe)
    lines = max(1, head.count(b"\n"))
    return int(size / (len(head) / lines))


def dry_run_table(cfg, n_users: int, n_items: int, nnz: int,
                  margin: int = DEFAULT_MARGIN) -> tuple[list[dict], str | None]:
    """The rows ``tfmf train --dry-run`` prints, and the first misfit's message (or None)."""
    budget = available_bytes() - margin
    stages = estimate_run(cfg, n_users, n_items, nnz)
    rows = [{"stage": what, "GB": b / GB, "fits": "yes" if b <= budget else "NO",
             "shrink with": key} for what, b, key in stages]
    return rows, first_misfit(stages, margin)
