"""The embedded sample dataset: small explicit ratings shipped as package data.

``tfmf/data/sample/sample.csv.gz`` (user_id,item_id,rating,timestamp) and ``items.json``
(item id -> title) are produced by ``python -m pipelines.make_sample``, which calls
:func:`write_sample`; generation is deterministic and the gzip header carries no mtime, so
regenerating gives byte-identical files.
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
from tfmf.data.synthetic import power_law_sampler, sample_unique_pairs

SAMPLE_FILE = "sample.csv.gz"
TITLES_FILE = "items.json"
RATING_SCALE = (1.0, 5.0)


def generate_sample(n_users: int = 600, n_items: int = 400, nnz: int = 30_000, rank: int = 4,
                    seed: int = 20240501) -> dict[str, np.ndarray]:
    """Low-rank ratings with user/item biases, power-law popularity/activity and timestamps.

    Args:
      n_users, n_items, nnz: shape and number of ratings.
      rank: latent dimension of the preference model.
      seed: RNG seed.

    Returns:
      Columns user_id, item_id (1-based ints), rating (1..5 integer stars), timestamp.
    """
    rng = np.random.default_rng(seed)
    users, items = sample_unique_pairs(rng, n_users, n_items, nnz,
                                       power_law_sampler(n_users, 0.6, rng),
                                       power_law_sampler(n_items, 0.8, rng))
    U = rng.standard_normal((n_users, rank)) * 0.5
    V = rng.standard_normal((n_items, rank)) * 0.5
    b_user = rng.normal(0.0, 0.35, n_users)
    b_item = rng.normal(0.0, 0.5, n_items)
    score = (3.5 + b_user[users] + b_item[items] + np.einsum("nk,nk->n", U[users], V[items])
             + rng.normal(0.0, 0.6, len(users)))
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
