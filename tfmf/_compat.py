"""Keras 2 (tf_keras) selection and TensorFlow's log noise, both set before TensorFlow loads.

TensorFlow 2.16+ ships Keras 3 as ``tf.keras``; TensorFlow Recommenders 0.7.7 and
KerasTuner 1.3.5 need Keras 2. ``TF_USE_LEGACY_KERAS=1`` makes ``tf.keras`` resolve to
``tf_keras``, but only if it is set before ``tf.keras`` is first resolved.

TensorFlow's C++ side logs a dozen lines on every start (cuFFT/cuDNN/cuBLAS factory
registration, cuInit on a machine without a GPU, the oneDNN notice, TF-TRT). Two mechanisms:

* ``TF_CPP_MIN_LOG_LEVEL``, read once by TensorFlow's C++ logging when it loads: tfmf sets it
  to 3 (fatal only) unless the user set it in the environment, whose value always wins.
* The cuDNN/cuBLAS factory lines are written through absl *before* ``absl::InitializeLog()``,
  where no level applies. While ``import tensorflow`` runs, an import hook points file
  descriptor 2 at a temporary file, then replays it minus the C++ log lines (``I``/``W``/``E``
  severities; fatal lines and everything else pass).

:func:`configure_tf_logging` with ``verbose=True`` (the CLI's ``--verbose``) undoes both and
leaves TensorFlow's Python loggers at their defaults; with ``verbose=False`` it also raises the
``tensorflow`` and ``absl`` Python loggers to ERROR.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import sys
import tempfile

_HELP = (
    "tfmf needs Keras 2 (tf_keras) but TensorFlow was already imported with Keras 3 as "
    "tf.keras. Import tfmf before tensorflow, or set TF_USE_LEGACY_KERAS=1 in the "
    "environment before starting Python."
)


def select_legacy_keras() -> None:
    """Sets TF_USE_LEGACY_KERAS=1; raises ImportError if Keras 3 already won."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
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


# --------------------------------------------------------------------------- TF log noise
_LEVEL_VAR = "TF_CPP_MIN_LOG_LEVEL"
#: The user's own setting (captured when tfmf is first imported); None: tfmf chooses.
_USER_LEVEL = os.environ.get(_LEVEL_VAR)
_QUIET_LEVEL = "3"
#: C++ log lines (TensorFlow's own format, then absl's) of severity I/W/E, and absl's banner.
_CPP_LOG_LINE = re.compile(
    rb"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] "
    rb"|[IWE]\d{4} \d\d:\d\d:[\d.]+\s+\d+ \S+:\d+\] "
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called)")
_PY_LOGGERS = ("tensorflow", "absl")


def configure_tf_logging(verbose: bool = False) -> None:
    """Quiets (or restores) TensorFlow's C++ and Python logging.

    Call before TensorFlow is imported for the C++ part to apply (``import tfmf`` does, quiet;
    the CLI again with ``--verbose``). A ``TF_CPP_MIN_LOG_LEVEL`` the user set in the
    environment is never changed, and then no import-time lines are filtered either.

    Args:
      verbose: True restores TensorFlow's defaults (all C++ INFO lines, Python warnings);
        False keeps fatal C++ lines only and Python errors only.
    """
    if _USER_LEVEL is None:
        if verbose:
            os.environ.pop(_LEVEL_VAR, None)
        else:
            os.environ[_LEVEL_VAR] = _QUIET_LEVEL
    if verbose or _USER_LEVEL is not None:
        _uninstall_import_filter()
    else:
        _install_import_filter()
    for name in _PY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.ERROR)


def quiet_defaults() -> None:
    """What ``import tfmf`` does: C++ level and import filter only (Python loggers untouched)."""
    if _USER_LEVEL is None:
        os.environ.setdefault(_LEVEL_VAR, _QUIET_LEVEL)
        _install_import_filter()


class _QuietTensorFlowImport:
    """``sys.meta_path`` finder: the first ``import tensorflow`` runs under :func:`filtered_stderr`."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow":
            return None
        _uninstall_import_filter()  # once; and find_spec below must not find us again
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader:
    """Delegates to TensorFlow's own loader; runs the package's ``__init__`` filtered."""

    def __init__(self, inner):
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:
        with filtered_stderr():
            self._inner.exec_module(module)

    def __getattr__(self, name):  # get_resource_reader, is_package, get_source, ...
        return getattr(self._inner, name)


_FINDER = _QuietTensorFlowImport()


def _install_import_filter() -> None:
    if "tensorflow" not in sys.modules and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def _uninstall_import_filter() -> None:
    while _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


@contextlib.contextmanager
def filtered_stderr():
    """Captures file descriptor 2 (C++ and Python writes alike) and replays it on exit minus
    the C++ I/W/E log lines. A no-op where fd 2 cannot be duplicated."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        _flush_stderr()
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            _flush_stderr()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().splitlines(keepends=True)
                    if not _CPP_LOG_LINE.match(line)]
            if kept:
                os.write(2, b"".join(kept))


def _flush_stderr() -> None:
    with contextlib.suppress(Exception):
        sys.stderr.flush()
