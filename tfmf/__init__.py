"""tfmf: matrix factorization and Mult-VAE recommenders on TensorFlow with Keras 2.

Importing tfmf selects Keras 2 (``tf_keras``) and quiets TensorFlow's C++ start-up logging
before TensorFlow is imported; see :mod:`tfmf._compat` (``tfmf.configure_tf_logging``).
Heavy modules are imported lazily so ``tfmf --help`` stays fast.
"""
from tfmf._compat import configure_tf_logging
from tfmf._compat import quiet_defaults as _quiet_defaults
from tfmf._compat import select_legacy_keras as _select_legacy_keras

_select_legacy_keras()
# TensorFlow's C++ start-up lines are hidden unless TF_CPP_MIN_LOG_LEVEL is set by the user;
# configure_tf_logging(verbose=True) restores them (before TensorFlow is imported).
_quiet_defaults()

__version__ = "0.1.0"


def __getattr__(name: str):
    """``tfmf.models``, ``tfmf.data``, ``tfmf.training``... load on first use (TF stays lazy)."""
    import importlib

    if name in ("data", "models", "training", "evaluation", "tuning", "distributed", "registry",
                "runner", "rundir", "export", "config"):
        return importlib.import_module(f"tfmf.{name}")
    raise AttributeError(f"module 'tfmf' has no attribute {name!r}")
