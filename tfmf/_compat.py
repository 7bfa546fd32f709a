"""Keras 2 (tf_keras) selection, done before TensorFlow is imported.

TensorFlow 2.16+ ships Keras 3 as ``tf.keras``; TensorFlow Recommenders 0.7.7 and
KerasTuner 1.3.5 need Keras 2. ``TF_USE_LEGACY_KERAS=1`` makes ``tf.keras`` resolve to
``tf_keras``, but only if it is set before ``tf.keras`` is first resolved.
"""
from __future__ import annotations

import os
import sys

_HELP = (
    "tfmf needs Keras 2 (tf_keras) but TensorFlow was already imported with Keras 3 as "
    "tf.keras. Import tfmf before tensorflow, or set TF_USE_LEGACY_KERAS=1 in the "
    "environment before starting Python."
)


def select_legacy_keras() -> None:
    """Sets TF_USE_LEGACY_KERAS=1; raises ImportError if Keras 3 already won."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    # Quieter TensorFlow start-up; users can still override it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules:
        return
    keras_version = _resolved_keras_version()
    if keras_version is not None and not keras_version.startswith("2."):
        raise ImportError(f"{_HELP} (tf.keras is Keras {keras_version})")


def _resolved_keras_version() -> str | None:
    """The version tf.keras resolved to, or None if it has not been resolved yet."""
    tf = sys.modules["tensorflow"]
    keras_mod = tf.__dict__.get("keras")
    if keras_mod is None:
        return None
    # TF's lazy loader keeps the resolved module in `_module` once touched.
    inner = getattr(keras_mod, "__dict__", {}).get("_module")
    if inner is None and type(keras_mod).__name__.endswith("LazyLoader"):
        return None
    target = inner if inner is not None else keras_mod
    version = getattr(target, "__version__", None)
    if version is None and hasattr(target, "version"):
        try:
            version = target.version()
        except Exception:  # pragma: no cover - defensive
            version = None
    return version
