"""EDLAE (EASE with dropout-emphasized denoising): the closed form and its config key."""
import numpy as np
import pytest
import scipy.sparse as sp

import tfmf  # noqa: F401

from tfmf.config import load_config
from tfmf.data.interactions import InteractionData
from tfmf.errors import ConfigError
from tfmf.models.ease import EASE, EASEConfig


def _data(seed=0, n_users=120, n_items=40):
    rng = np.random.default_rng(seed)
    x = sp.random(n_users, n_items, density=0.15, random_state=rng, format="coo")
    return InteractionData(users=x.row, items=x.col, values=np.ones(x.nnz),
                           user_ids=np.arange(n_users), item_ids=np.arange(n_items),
                           implicit=True)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_edlae_is_ease_with_a_per_item_penalty(dtype):
    d = _data()
    l2, p = 5.0, 0.4
    x = d.to_csr().toarray().astype(np.float64)
    g = x.T @ x
    lam = l2 + p / (1 - p) * np.diag(g)
    P = np.linalg.inv(g + np.diag(lam))
    want = -P / np.diag(P)[None, :]
    np.fill_diagonal(want, 0.0)
    got = EASE(EASEConfig(l2=l2, dropout=p, dtype=dtype)).fit(d).B
    np.testing.assert_allclose(got, want, rtol=1e-3 if dtype == "float32" else 1e-6,
                               atol=1e-5 if dtype == "float32" else 1e-9)
    # dropout 0 is plain EASE; dropout > 0 differs from it.
    plain = EASE(EASEConfig(l2=l2, dtype=dtype)).fit(d).B
    np.testing.assert_array_equal(EASE(EASEConfig(l2=l2, dropout=0.0, dtype=dtype)).fit(d).B,
                                  plain)
    assert np.abs(plain - got).max() > 1e-3


def test_dropout_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match="model.dropout"):
        load_config(raw={"model": {"name": "ease", "dropout": 1.0}})
