"""The embedded sample dataset: small explicit ratings shipped as package data.

``tfmf/data/sample/sample.csv.gz`` (user_id,item_id,rating,timestamp) and ``items.json``
(item id -> title) are produced by ``python -m pipelines.make_sample``, which calls
:func:`write_sample`; generation is deterministic and the gzip header carries no mtime, so
regenerating gives byte-identical files.

The generative model (:func:`generate_sample`) gives the sample what real rating data has and
a popularity-only sample lacks: *who rates what* and *how they rate it* both depend on taste.

* ``G`` genres. Item ``i`` has genre loadings ``l_i = p * e_{g_i} + (1 - p) * d_i`` (a primary
  genre ``g_i`` with weight ``p`` plus a Dirichlet spread ``d_i``), so ``sum(l_i) = 1``.
* User ``u`` is a mixture of a few genres, ``theta_u ~ Dirichlet(alpha * 1_G)`` (small
  ``alpha``: one or two dominant genres). The affinity ``a_ui = theta_u . l_i`` lies in [0, 1]
  and has rank ``G`` as a matrix.
* Popularity ``pi_i ∝ rank_i^-s`` (Zipf over a random permutation of the items).
* Exposure: user ``u`` rates ``n_u`` distinct items (power-law activity, at least
  ``min_count``), drawn without replacement with weights ``pi_i * (eps + a_ui)^gamma`` (Gumbel
  top-k: the ``n_u`` largest ``log w_ui + Gumbel`` keys are an exact weighted sample without
  replacement). Popularity explains part of the exposure, taste the rest.
* Rating: ``r_ui = round(mu + b_u + b_i + c * G/2 * (a_ui - mean_j a_uj) + x_u . y_i + e)``
  clipped to 1..5, with ``b_i`` partly tied to log-popularity (popular items are rated a little
  higher, as on MovieLens), a small rank-``rank`` within-genre term ``x_u . y_i`` and Gaussian
  noise ``e``.

On this sample every learned ranking model beats popularity and every rating model beats the
bias baseline, with margins like MovieLens-100K's (the measured table is in tfmf/demo.py).
"""
from __future__ import annotations

import gzip
import io
import json
from importlib import resources
from pathlib import Path

import numpy as np

from tfmf.data.interactions import InteractionData
from tfmf.data.readers import read_table

SAMPLE_FILE = "sample.csv.gz"
TITLES_FILE = "items.json"
RATING_SCALE = (1.0, 5.0)


def _activity_counts(rng: np.random.Generator, n_users: int, nnz: int, exponent: float,
                     min_count: int, max_count: int) -> np.ndarray:
    """Per-user rating counts: power law in a random user order, each in [min, max], sum nnz."""
    weight = (rng.permutation(n_users) + 1.0) ** -exponent
    counts = min_count + np.floor((nnz - min_count * n_users) * weight / weight.sum()).astype(np.int64)
    counts = np.minimum(counts, max_count)
    while counts.sum() < nnz:  # the floor's remainder (and anything cut by the cap)
        room = np.flatnonzero(counts < max_count)
        extra = rng.choice(room, int(nnz - counts.sum()), p=weight[room] / weight[room].sum())
        np.add.at(counts, extra, 1)
        counts = np.minimum(counts, max_count)
    return counts


def generate_sample(n_users: int = 600, n_items: int = 400, nnz: int = 30_000, genres: int = 8,
                    rank: int = 4, seed: int = 20240501) -> dict[str, np.ndarray]:
    """Ratings whose exposure and values both follow genre tastes (see the module docstring).

    Args:
      n_users, n_items, nnz: shape and number of ratings (every user rates >= 15 items).
      genres: number of taste clusters G.
      rank: dimension of the small within-genre low-rank rating term.
      seed: RNG seed.

    Returns:
      Columns user_id, item_id (1-based ints, sorted by user then item), rating (1..5
      integer stars), timestamp.
    """
    rng = np.random.default_rng(seed)
    # Taste: items load mostly on one genre, users mix a few genres.
    primary = rng.integers(0, genres, n_items)
    loadings = 0.2 * rng.dirichlet(np.full(genres, 0.5), n_items)
    loadings[np.arange(n_items), primary] += 0.8
    theta = rng.dirichlet(np.full(genres, 0.3), n_users)
    affinity = theta @ loadings.T  # [n_users, n_items], rank G, in [0, 1]
    log_pop = -0.8 * np.log(rng.permutation(n_items) + 1.0)
    # Exposure: n_u items per user, weights pop * (eps + affinity)^gamma, Gumbel top-k.
    counts = _activity_counts(rng, n_users, nnz, 0.6, 15, int(0.6 * n_items))
    keys = log_pop[None, :] + 1.2 * np.log(0.03 + affinity) + rng.gumbel(size=affinity.shape)
    order = np.argsort(-keys, axis=1, kind="stable")
    users = np.repeat(np.arange(n_users), counts)
    items = np.concatenate([np.sort(order[u, :c]) for u, c in enumerate(counts)])
    # Ratings: biases + centred genre taste + a small within-genre term + noise.
    scale = np.sqrt(0.35 / np.sqrt(rank))
    x = rng.standard_normal((n_users, rank)) * scale
    y = rng.standard_normal((n_items, rank)) * scale
    b_user = rng.normal(0.0, 0.3, n_users)
    b_item = 0.25 * (log_pop - log_pop.mean()) / log_pop.std() + rng.normal(0.0, 0.3, n_items)
    taste = (affinity - affinity.mean(axis=1, keepdims=True)) * (genres / 2.0)
    score = (3.1 + b_user[users] + b_item[items] + taste[users, items]
             + np.einsum("nk,nk->n", x[users], y[items]) + rng.normal(0.0, 0.5, len(users)))
    rating = np.clip(np.rint(score), 1, 5).astype(np.int64)
    # Each user is active over a random window within 2020; ratings spread uniformly inside it.
    start = 1_577_836_800 + rng.integers(0, 300 * 86_400, n_users)
    span = rng.integers(86_400, 60 * 86_400, n_users)
    ts = start[users] + (rng.random(len(users)) * span[users]).astype(np.int64)
    return {"user_id": users.astype(np.int64) + 1, "item_id": items.astype(np.int64) + 1,
            "rating": rating, "timestamp": ts}


def write_sample(out_dir: str | Path) -> list[Path]:
    """Writes sample.csv.gz and items.json deterministically; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = generate_sample()
    table = np.stack([cols[k] for k in ("user_id", "item_id", "rating", "timestamp")], axis=1)
    buf = io.BytesIO()
    buf.write(b"user_id,item_id,rating,timestamp\n")
    np.savetxt(buf, table, fmt="%d", delimiter=",")
    csv_path = out_dir / SAMPLE_FILE
    with open(csv_path, "wb") as f:
        # mtime=0 and no file name in the header: identical bytes on every run.
        with gzip.GzipFile(filename="", mode="wb", fileobj=f, compresslevel=9, mtime=0) as gz:
            gz.write(buf.getvalue())
    titles = {str(i): f"Item {i}" for i in np.unique(cols["item_id"]).tolist()}
    json_path = out_dir / TITLES_FILE
    json_path.write_text(json.dumps(titles, indent=0, sort_keys=False) + "\n", encoding="utf-8")
    return [csv_path, json_path]


def load_sample() -> InteractionData:
    """The embedded sample (about 600 users x 400 items, 30k ratings on a 1..5 scale)."""
    root = resources.files("tfmf.data") / "sample"
    with resources.as_file(root / SAMPLE_FILE) as path:
        data = read_table(path, delimiter=",", header=True, rating_scale=RATING_SCALE,
                          name="sample")
    titles = json.loads((root / TITLES_FILE).read_text(encoding="utf-8"))
    data.item_titles = np.array([titles.get(str(i), "") for i in data.item_ids.tolist()])
    return data
