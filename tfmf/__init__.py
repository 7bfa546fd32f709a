"""tfmf: matrix factorization and Mult-VAE recommenders on TensorFlow with Keras 2.

Importing tfmf selects Keras 2 (``tf_keras``) before TensorFlow is imported; see
:mod:`tfmf._compat`. Heavy modules are imported lazily so ``tfmf --help`` stays fast.
"""
from tfmf._compat import select_legacy_keras as _select_legacy_keras

_select_legacy_keras()

__version__ = "0.1.0"


def __getattr__(name: str):
    """``tfmf.models``, ``tfmf.data``, ``tfmf.training``... load on first use (TF stays lazy)."""
    import importlib

    if name in ("data", "models", "training", "evaluation", "tuning", "distributed", "registry",
                "runner", "rundir", "export", "config"):
        return importlib.import_module(f"tfmf.{name}")
    raise AttributeError(f"module 'tfmf' has no attribute {name!r}")
