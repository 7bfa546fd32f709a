"""EASE at an item count where OpenBLAS's threaded Cholesky used to segfault (order >= 16,000).

The Gram matrix comes from few users, so its exact inverse is cheap by the Woodbury identity::

    G = lambda I + X^T X,  P = G^{-1} = (I - X^T (lambda I + X X^T)^{-1} X) / lambda

and a few columns of B = -P / diag(P) (zero diagonal) are checked against it in float64.
"""
import numpy as np
import pytest

import tfmf  # noqa: F401
from tfmf.data.interactions import InteractionData
from tfmf.models.ease import EASE

N_ITEMS = 16_000
N_USERS = 120


def woodbury_columns(x: np.ndarray, lam: float, cols: np.ndarray) -> np.ndarray:
    """Columns ``cols`` of B for Gram ``x^T x + lam I``, exactly (float64)."""
    x = x.astype(np.float64)
    inner = np.linalg.inv(lam * np.eye(x.shape[0]) + x @ x.T)       # [users, users]
    p = -(x.T @ (inner @ x[:, cols])) / lam                          # [n, len(cols)]
    p[cols, np.arange(len(cols))] += 1.0 / lam
    b = -p / p[cols, np.arange(len(cols))][None, :]
    b[cols, np.arange(len(cols))] = 0.0
    return b


@pytest.mark.slow
def test_ease_at_16000_items_completes_and_matches_woodbury(solver="auto"):
    """The default CPU solver: single-threaded potrf/potri, the calls that segfaulted threaded
    (the blocked solver runs at 20k items in the speed-ease suite; every solver at small n in
    tests/test_ease.py)."""
    rng = np.random.default_rng(0)
    # Every user touched ~15% of the items: dense Gram, and the dense-user assembly path.
    x = rng.random((N_USERS, N_ITEMS)) < 0.15
    u, i = np.nonzero(x)
    d = InteractionData(users=u, items=i, values=np.ones(len(u), np.float32),
                        user_ids=np.arange(N_USERS), item_ids=np.arange(N_ITEMS), implicit=True)
    lam = 50.0
    m = EASE(l2=lam, dtype="float32", solver=solver).fit(d)
    cols = np.array([0, 1, 7_777, N_ITEMS - 1])
    ref = woodbury_columns(x, lam, cols)
    got = m.B[:, cols].astype(np.float64)
    assert np.all(np.diag(m.B[cols][:, cols]) == 0)
    np.testing.assert_allclose(got, ref, atol=2e-4 * np.abs(ref).max())
    # The ranking a user gets is the float64 one.
    scores = x[:5].astype(np.float32) @ m.B[:, cols]
    np.testing.assert_array_equal(np.argsort(-scores, axis=1),
                                  np.argsort(-(x[:5].astype(np.float64) @ ref), axis=1))
