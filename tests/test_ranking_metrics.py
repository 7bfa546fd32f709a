"""Batched TF ranking metrics against a brute-force NumPy reference."""
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

import tfmf  # noqa: F401
from tfmf.config import EvalConfig
from tfmf.data.interactions import InteractionData
from tfmf.evaluation.ranking import evaluate_known_users, evaluate_strong, ranking_metrics


def brute_force(scores, targets, exclude, k):
    """Per-user (ndcg, recall, precision, ap) by sorting each row in Python."""
    out = []
    for u in range(scores.shape[0]):
        s = scores[u].astype(np.float64).copy()
        s[exclude[u]] = -np.inf
        # Stable sort of -score: ties go to the lower item index (as tf.math.top_k).
        ranked = np.argsort(-s, kind="stable")[:k]
        t = set(np.flatnonzero(targets[u]))
        if not t:
            out.append(None)
            continue
        hits = np.array([i in t for i in ranked], float)
        m = min(k, len(t))
        disc = 1.0 / np.log2(np.arange(2, len(hits) + 2))
        ndcg = (hits * disc).sum() / disc[:m].sum()
        prec_j = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        out.append((ndcg, hits.sum() / m, hits.sum() / k, (hits * prec_j).sum() / m))
    return out


def random_case(seed, n_users=13, n_items=17, ties=False):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n_users, n_items)).astype(np.float32)
    if ties:  # few distinct values: many ties
        scores = np.round(scores).astype(np.float32)
    targets = rng.random((n_users, n_items)) < 0.2
    targets[0] = False                       # a user without targets (skipped)
    targets[1] = False
    targets[1, 3] = True                      # exactly one target (fewer than K)
    exclude = (rng.random((n_users, n_items)) < 0.2) & ~targets
    return scores, targets, exclude


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True)])
@pytest.mark.parametrize("k", [1, 3, 5, 17, 40])
def test_metrics_match_brute_force(seed, ties, k):
    scores, targets, exclude = random_case(seed, ties=ties)
    got = ranking_metrics(scores, sp.csr_matrix(targets), [k], exclude=sp.csr_matrix(exclude))
    ref = brute_force(scores, targets, exclude, min(k, scores.shape[1]))
    for u, r in enumerate(ref):
        if r is None:
            assert all(np.isnan(v[u]) for v in got.values())
            continue
        ndcg, rec, prec, ap = r
        prec = prec * min(k, scores.shape[1]) / k  # precision always divides by K itself
        np.testing.assert_allclose(
            [got[f"ndcg@{k}"][u], got[f"recall@{k}"][u], got[f"precision@{k}"][u],
             got[f"map@{k}"][u]], [ndcg, rec, prec, ap], rtol=1e-5, atol=1e-6)


def test_perfect_ranking_scores_one():
    rng = np.random.default_rng(3)
    targets = rng.random((8, 30)) < 0.3
    targets[:, 0] = True
    scores = targets.astype(np.float32) + 0.01 * rng.random((8, 30)).astype(np.float32)
    got = ranking_metrics(scores, sp.csr_matrix(targets), [1, 5, 100])
    for key in ("ndcg@1", "ndcg@5", "ndcg@100", "recall@1", "recall@5", "recall@100",
                "map@5", "map@100", "precision@1"):
        np.testing.assert_allclose(got[key], 1.0, rtol=1e-6, err_msg=key)


def test_excluded_items_never_ranked():
    scores = np.array([[9.0, 8.0, 1.0, 0.5]], np.float32)
    targets = sp.csr_matrix(np.array([[1, 0, 1, 0]], np.float32))
    exclude = sp.csr_matrix(np.array([[0, 1, 0, 0]], np.float32))
    got = ranking_metrics(scores, targets, [2], exclude=exclude)
    # Ranking without item 1 is [0, 2]: both targets in the top 2.
    assert got["recall@2"][0] == pytest.approx(1.0)
    assert ranking_metrics(scores, targets, [2])["recall@2"][0] == pytest.approx(0.5)


class FixedScores:
    """A fitted-model stand-in whose scores are a fixed table (rows = users)."""

    task = "implicit"

    def __init__(self, table, seen=None):
        self.table, self._seen, self.calls = table, seen, []

    def score(self, users=None, user_items=None):
        if users is not None:
            self.calls.append(len(users))
            return self.table[users]
        self.calls.append(user_items.shape[0])
        # Fold-in: score = row id encoded in the first column of user_items.
        return self.table[np.asarray(user_items[:, :1].toarray()[:, 0], int) - 1]


def test_evaluate_strong_batches_and_matches_reference():
    scores, targets, exclude = random_case(4, n_users=11, n_items=9)
    fold_in = exclude.copy()
    fold_in[:, 0] = True                      # item 0 encodes user id + 1 for FixedScores
    fold_in_vals = fold_in.astype(np.float32)
    fold_in_vals[:, 0] = np.arange(1, 12)
    targets[:, 0] = False
    split = SimpleNamespace(fold_in=sp.csr_matrix(fold_in_vals), target=sp.csr_matrix(targets),
                            test_users=np.arange(11))
    model = FixedScores(scores)
    cfg = EvalConfig(metrics=["ndcg", "recall"], ks=[2, 5], batch_size=4)
    got = evaluate_strong(model, split, cfg)
    assert model.calls == [4, 4, 3]
    assert sorted(got) == ["ndcg@2", "ndcg@5", "recall@2", "recall@5"]
    for k in (2, 5):
        ref = [r for r in brute_force(scores, targets, fold_in, k) if r is not None]
        assert got[f"ndcg@{k}"] == pytest.approx(np.mean([r[0] for r in ref]), rel=1e-5)
        assert got[f"recall@{k}"] == pytest.approx(np.mean([r[1] for r in ref]), rel=1e-5)


def test_evaluate_known_users_filters_training_items():
    scores, targets, seen = random_case(5, n_users=10, n_items=12)
    u, i = np.nonzero(targets)
    test = InteractionData(users=u, items=i, values=np.ones(len(u)), user_ids=np.arange(10),
                           item_ids=np.arange(12), implicit=True)
    model = FixedScores(scores, sp.csr_matrix(seen.astype(np.float32)))
    got = evaluate_known_users(model, test, EvalConfig(metrics=["map"], ks=[4], batch_size=3))
    ref = [r for r in brute_force(scores, targets, seen, 4) if r is not None]
    assert list(got) == ["map@4"]
    assert got["map@4"] == pytest.approx(np.mean([r[3] for r in ref]), rel=1e-5)
