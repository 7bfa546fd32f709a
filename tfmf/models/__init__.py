"""Models: Keras models trained by ``fit()`` and the Recommenders built on them.

Keras models (``compile()`` + ``fit()`` on :mod:`tfmf.data` pipelines):
:class:`~tfmf.models.mf.MatrixFactorization`, :class:`~tfmf.models.mf.BiasedMatrixFactorization`,
:class:`~tfmf.models.vae.MultVAEModel`. Recommenders (``fit(train)``, ``recommend``,
``recalculate_user``; one per registry name): :class:`~tfmf.models.mf.MF`,
:class:`~tfmf.models.mf.BiasedMF`, :class:`~tfmf.models.als.ALS`, :class:`~tfmf.models.als.IALS`,
:class:`~tfmf.models.bayesian.BayesianMF`, :class:`~tfmf.models.vae.MultVAE`,
:class:`~tfmf.models.vae.MultDAE`, :class:`~tfmf.models.recvae.RecVAE`,
:class:`~tfmf.models.ease.EASE` and the baselines.
Imports are lazy so that ``import tfmf.models`` does not load TensorFlow.
"""
from __future__ import annotations

import importlib

_WHERE = {
    "MatrixFactorization": "mf", "BiasedMatrixFactorization": "mf", "MFConfig": "mf",
    "BiasedMFConfig": "mf", "FactorRecommender": "mf", "MF": "mf", "BiasedMF": "mf",
    "MultVAEModel": "vae", "MultVAEConfig": "vae", "MultDAEConfig": "vae", "MultVAE": "vae",
    "MultDAE": "vae", "ALS": "als", "IALS": "als", "ALSConfig": "als", "IALSConfig": "als",
    "BayesianMF": "bayesian", "BayesianMFConfig": "bayesian", "EASE": "ease",
    "RecVAE": "recvae", "RecVAEConfig": "recvae", "RecVAEModel": "recvae",
    "Recommender": "base",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"tfmf.models.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'tfmf.models' has no attribute {name!r}")
