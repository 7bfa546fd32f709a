"""``tune-quick``: ``tfmf tune --quick`` against the shipped ML-100K default configs on a
dataset none of them was tuned on.

    python -m pipelines.benchmark tune-quick --scale full --out runs/bench

The dataset (``play_counts``, below) is synthetic play counts with known structure, written to
a CSV file and read back through the public loader (``data.source: <file>``, ``implicit:
true``, the play count as the confidence value): a catalogue ~3.6x ML-100K's, ~5x sparser, a
steeper popularity skew, and heavy-tailed counts instead of 1-5 stars.

Per model (iALS, EASE, Mult-VAE; ``--scale tiny`` runs EASE on a toy set), both sides use the
same data section and the same first user fold (20% of the users held out, their items split
80% fold-in / 20% targets), and the model/train sections of ``configs/ml100k_<model>.yaml``:

* default: ``tfmf train --config <that config>`` -- what a new user gets today;
* quick: ``tfmf tune --quick --config <that config>`` with the default budget and trial cap,
  run as its own process, timed from start to exit (start-up, loading, search, final fit).

Both score the held-out users once (NDCG@100, Recall@20). The quick search sees only
validation users carved from the training users; the test users reach nothing but the final
evaluation.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

from pipelines.benchmark import CONFIGS, ROOT, ratio, suite

#: play_counts(): users x items, latent genres, Zipf exponent of item popularity.
FULL_SHAPE = dict(n_users=3000, n_items=6000, genres=30, popularity=1.1, seed=0)
TINY_SHAPE = dict(n_users=300, n_items=200, genres=5, popularity=1.0, seed=0)
MODELS = {"full": ("ials", "ease", "mult_vae"), "tiny": ("ease",)}
METRICS = ("ndcg@100", "recall@20")


def play_counts(n_users: int, n_items: int, genres: int, popularity: float, seed: int = 0):
    """Synthetic listening data: ``(users, items, plays)`` int arrays (0-based ids).

    Structure: each item belongs to one genre and has a Zipf popularity weight
    (``rank^-popularity``, ranks shuffled across genres); each user likes 1-3 genres
    (Dirichlet weights) plus a 10% share of uniform taste. A user's item count is log-normal
    (median 20, at least 8); items are drawn without replacement with probability proportional
    to popularity x the user's weight of the item's genre. Plays are ``1 + NegBin``, with a
    mean that grows with the user's weight of the genre, so counts carry signal but are
    heavy-tailed (a few hundred at most).

    Args:
      n_users, n_items, genres: sizes.
      popularity: Zipf exponent of the item weights (ML-100K's ratings fit ~0.8).
      seed: RNG seed.
    """
    rng = np.random.default_rng(seed)
    genre = rng.integers(0, genres, n_items)
    pop = (1.0 + rng.permutation(n_items)) ** -popularity
    users, items, plays = [], [], []
    for u in range(n_users):
        liked = rng.choice(genres, size=rng.integers(1, 4), replace=False)
        w = np.full(genres, 0.1 / genres)
        w[liked] += 0.9 * rng.dirichlet(np.ones(len(liked)))
        p = pop * w[genre]
        p /= p.sum()
        n = int(np.clip(rng.lognormal(np.log(20), 0.8), 8, n_items // 4))
        chosen = rng.choice(n_items, size=n, replace=False, p=p)
        mean = 1.0 + 30.0 * w[genre[chosen]]
        plays.append(1 + rng.negative_binomial(1, 1.0 / mean))
        users.append(np.full(n, u))
        items.append(chosen)
    return np.concatenate(users), np.concatenate(items), np.concatenate(plays)


def write_csv(path: str, users, items, plays) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    order = np.lexsort((items, users))
    with open(path, "w") as fh:
        fh.write("user,item,plays\n")
        for u, i, c in zip(users[order], items[order], plays[order]):
            fh.write(f"u{u},i{i},{c}\n")


def data_section(path: str) -> dict:
    """The data section both sides use: the CSV through the public loader."""
    return {"source": path, "implicit": True,
            "columns": {"user": "user", "item": "item", "rating": "plays"},
            "min_user_interactions": 5,
            "split": {"kind": "user_folds", "n_folds": 5, "fold_in_fraction": 0.8, "seed": 0}}


def shipped_config(model: str, data: dict, out: str, tiny: bool) -> str:
    """configs/ml100k_<model>.yaml with the data section replaced; written to ``out``."""
    import yaml

    with open(os.path.join(CONFIGS, f"ml100k_{model}.yaml")) as fh:
        raw = yaml.safe_load(fh)
    raw["data"] = data
    raw.setdefault("train", {})["verbose"] = 0
    if tiny and model == "mult_vae":
        raw["train"]["epochs"] = 2
    path = os.path.join(out, f"default_{model}.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(raw, fh, sort_keys=False)
    return path


def _tfmf(*argv: str) -> tuple[float, str]:
    """Runs ``python -m tfmf ARGV`` in its own process; (wall seconds, stdout)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tfmf", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"tfmf {' '.join(argv)} failed ({proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def _metrics(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "metrics.json")) as fh:
        return json.load(fh)["metrics"]


@suite("tune-quick")
def tune_quick(args) -> dict:
    from tfmf.config import load_config
    from tfmf.runner import first_split, load_data

    tiny = args.scale == "tiny"
    shape = TINY_SHAPE if tiny else FULL_SHAPE
    out = os.path.abspath(os.path.join(args.out, "tune-quick-" + args.scale))
    csv_path = os.path.join(out, "plays.csv")
    t0 = time.perf_counter()
    write_csv(csv_path, *play_counts(**shape))
    gen_s = time.perf_counter() - t0
    data = data_section(csv_path)
    probe = load_config(raw={"model": {"name": "popularity"}, "data": data})
    loaded = load_data(probe)
    fold = first_split(probe, loaded)
    counts = np.bincount(loaded.items, minlength=loaded.n_items)
    info = {"users": loaded.n_users, "items": loaded.n_items, "plays_rows": loaded.nnz,
            "density": loaded.nnz / (loaded.n_users * loaded.n_items),
            "top1%_items_share": float(np.sort(counts)[::-1][:max(1, loaded.n_items // 100)].sum()
                                       / counts.sum()),
            "max_plays": float(loaded.values.max()), "median_plays": float(np.median(loaded.values)),
            "test_users": int(len(np.unique(fold.target.users)))}
    rows, notes, detail = [], [], {}
    budget = ["--budget", "90s", "--max-trials", "3"] if tiny else []
    for model in MODELS[args.scale]:
        cfg_path = shipped_config(model, data, out, tiny)
        d_dir, q_dir = os.path.join(out, f"default-{model}"), os.path.join(out, f"quick-{model}")
        for d in (d_dir, q_dir):
            if os.path.exists(d):
                import shutil

                shutil.rmtree(d)
        d_s, _ = _tfmf("train", "--config", cfg_path, "--run-dir", d_dir, "--quiet")
        q_s, q_out = _tfmf("tune", "--quick", "--config", cfg_path, "--run-dir", q_dir, *budget)
        with open(os.path.join(q_dir, "summary.json")) as fh:
            summary = json.load(fh)["models"][0]
        dm, qm = _metrics(d_dir), _metrics(os.path.join(q_dir, model))
        rows.append({"model": model, "config": "shipped default (ml100k)", "trials": None,
                     **{k: dm[k] for k in METRICS}, "wall_s": d_s})
        rows.append({"model": model, "config": "tune --quick", "trials": summary["trials"],
                     **{k: qm[k] for k in METRICS}, "wall_s": q_s,
                     "ndcg_x_default": ratio(qm["ndcg@100"], dm["ndcg@100"])})
        detail[model] = {"default_test": dm, "quick_test": qm, "chosen": summary["best_values"],
                         "val_default": summary["base_score"], "val_chosen": summary["best_score"],
                         "stopped_by": summary["stopped_by"], "quick_stdout": q_out[-4000:]}
        print(f"{model}: default ndcg@100 {dm['ndcg@100']:.4f} -> quick {qm['ndcg@100']:.4f} "
              f"({q_s:.0f} s; {summary['best_values']})", flush=True)
    notes += [
        f"Data: synthetic play counts (pipelines/bench_tune_quick.py play_counts{shape}), "
        f"written to CSV and read with data.source=<file>, implicit: true, plays as the value: "
        f"{info['users']} users x {info['items']} items, {info['plays_rows']} rows, density "
        f"{info['density']:.4f} (ML-100K 0.063), top 1% of items hold "
        f"{info['top1%_items_share']:.0%} of the rows, plays median {info['median_plays']:.0f} "
        f"max {info['max_plays']:.0f}. Generated in {gen_s:.1f} s.",
        f"Both rows of a model: the same first user fold ({info['test_users']} held-out users, "
        "80/20 fold-in/target), scored once on those users.",
        "default: configs/ml100k_<model>.yaml with only its data section replaced, trained by "
        "`tfmf train`. quick: `tfmf tune --quick --config <the same file>` with the default "
        "budget and trial cap" + (" (tiny: --budget 90s --max-trials 3)" if tiny else "")
        + "; the search sees validation users carved from the training users only.",
        "wall_s: the whole process (Python + TensorFlow start-up, loading, search, final fit, "
        "evaluation), one process at a time on this machine.",
        "chosen values: " + "; ".join(f"{m}: " + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in d["chosen"].items()) for m, d in detail.items()),
    ]
    return {"tables": {"Held-out users of synthetic play counts: shipped default vs "
                       "tune --quick": rows},
            "notes": notes, "dataset": info, "detail": detail}
