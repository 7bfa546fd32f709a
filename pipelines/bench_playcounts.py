"""``implicit-playcounts``: implicit data with play counts (non-binary confidence) and known
structure, scored by the ML-100K strong-generalization protocol (5 user folds, 80% fold-in).

The data (:func:`play_counts`): power-law item popularity, low-rank user/item preferences and
Poisson play counts. User u consumes ``n_u`` (log-normal) distinct items drawn without
replacement with weights ``pop_i * exp(a_ui)``, ``a_ui = s * u . v``; each consumed item gets
``1 + Poisson(exp(c + k a_ui))`` plays, so the counts carry preference information beyond
exposure. Held-out targets are a random 20% of a user's consumed items (binary relevance).

Every tfmf model runs with its shipped ML-100K config unchanged (as a new user would try it);
the implicit library's ALS gets iALS's settings (as in ``implicit-ml100k``). The values are the
counts for every model that reads values (iALS confidence ``1 + alpha * r``, the VAEs'
multinomial and RecVAE's beta); EASE binarizes (its config).

    python -m pipelines.benchmark implicit-playcounts --scale full
"""
from __future__ import annotations

import time

import numpy as np

from pipelines.benchmark import IMPLICIT_METRICS, _cv_row, ratio, suite

MODELS = ("ials", "ease", "edlae", "mult_vae", "recvae", "popularity")


def play_counts(n_users: int = 1000, n_items: int = 1500, rank: int = 8, scale: float = 2.0,
                popularity_exponent: float = 0.9, mean_items: float = 40.0,
                count_offset: float = 0.0,
                count_scale: float = 0.5, seed: int = 0):
    """Synthetic play counts (module docstring); returns InteractionData (values = counts).

    Args:
      n_users, n_items, rank: shape of the preference model.
      scale: ``s``, the spread of the affinities ``a_ui`` (unit-variance ``u . v`` times s).
      popularity_exponent: item popularity ``rank ** -exponent`` (ranks shuffled over ids).
      mean_items: median of the log-normal number of distinct items per user.
      count_offset, count_scale: ``c``, ``k``: the Poisson mean of extra plays is
        ``exp(c + k * a_ui)``.
      seed: RNG seed.
    """
    from tfmf.data.interactions import InteractionData

    rng = np.random.default_rng(seed)
    U = rng.normal(0, 1 / np.sqrt(np.sqrt(rank)), (n_users, rank))
    V = rng.normal(0, 1 / np.sqrt(np.sqrt(rank)), (n_items, rank))
    affinity = scale * (U @ V.T)
    pop = rng.permutation(np.arange(1, n_items + 1) ** -float(popularity_exponent))
    n_u = np.clip(np.rint(mean_items * np.exp(0.6 * rng.normal(size=n_users))), 10,
                  n_items // 4).astype(int)
    # Weighted sampling without replacement: top-n_u of log-weight + Gumbel noise.
    keys = np.log(pop)[None, :] + affinity + rng.gumbel(size=(n_users, n_items))
    order = np.argsort(-keys, axis=1)
    users = np.concatenate([np.full(k, u) for u, k in enumerate(n_u)])
    items = np.concatenate([order[u, :k] for u, k in enumerate(n_u)])
    counts = 1 + rng.poisson(np.exp(count_offset + count_scale * affinity[users, items]))
    return InteractionData(users=users.astype(np.int32), items=items.astype(np.int32),
                           values=counts.astype(np.float32),
                           user_ids=np.arange(n_users, dtype=np.int64),
                           item_ids=np.arange(n_items, dtype=np.int64), implicit=True)


@suite("implicit-playcounts")
def implicit_playcounts(args) -> dict:
    from threadpoolctl import threadpool_limits

    from pipelines.als_vs_implicit import fit_implicit
    from pipelines.ml100k_implicit import MODELS as CONFIGS
    from pipelines.ml100k_implicit import compare, model_config
    from tfmf.data.splits import user_folds
    from tfmf.evaluation import evaluate

    tiny = args.scale == "tiny"
    data = play_counts(200, 300, mean_items=20.0) if tiny else play_counts()
    folds = list(user_folds(data, 5, fold_in_fraction=0.8, seed=0))
    if tiny:
        folds = folds[:1]
    base = model_config("ease", [])
    tiny_sets = {"mult_vae": ["train.epochs=1"], "recvae": ["train.epochs=1"],
                 "ials": ["model.iterations=1"]}
    rows, per_fold = [], {}
    for name in MODELS:
        cv = compare([name], tiny_sets.get(name, []) if tiny else [], folds, base.eval)[name]
        rows.append(_cv_row("tfmf", name, cv.per_fold, IMPLICIT_METRICS))
        per_fold[name] = cv.per_fold
    notes = []
    try:
        import implicit  # noqa: F401
    except ImportError:
        notes.append("implicit library not installed (pip install implicit): its row skipped.")
    else:
        ials = model_config("ials", tiny_sets["ials"] if tiny else []).model
        peer = []
        for k, split in enumerate(folds, start=1):
            with threadpool_limits(1, "blas"):
                t0 = time.perf_counter()
                model, _ = fit_implicit(split, ials, seed=0, threads=0)
                fit_s = time.perf_counter() - t0
            peer.append({"fold": k, **evaluate(model, split, base.eval), "fit_seconds": fit_s})
        rows.append(_cv_row("implicit", "als", peer, IMPLICIT_METRICS))
        per_fold["implicit als"] = peer
    ref = next(r for r in rows if r["model"] == "ials")
    for row in rows:
        row["fit_x_ials"] = ratio(row["fit_s"], ref["fit_s"])
    counts = data.values
    notes += [
        f"play_counts(): {data.n_users} users, {data.n_items} items, {data.nnz} (user, item) "
        f"pairs, plays per pair mean {counts.mean():.2f}, max {counts.max():.0f} (rank-8 "
        "preferences, popularity exponent 0.9, Poisson counts); see pipelines/bench_playcounts.py.",
        f"{len(folds)} user fold(s); each held-out user's items split 80% fold-in / 20% targets "
        "(binary relevance); metrics are means over the folds, seen items excluded.",
        "Configs (unchanged ML-100K ones): " + ", ".join(
            f"{m}: {CONFIGS[m][0].rsplit('/', 1)[-1]}" for m in MODELS if CONFIGS[m][1] is not None)
        + "; implicit's ALS: iALS's factors, regularization, iterations and alpha + 1.",
    ]
    title = f"Synthetic play counts, strong generalization ({len(folds)} user folds)"
    return {"tables": {title: rows}, "notes": notes, "per_fold": per_fold}
