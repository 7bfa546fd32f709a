"""Stage lines and progress bars for the CLI and the Python API.

Two helpers, both silent unless asked and on every rank but the chief (rank 0 under Horovod):

* :func:`stage` times a block and prints one line on stderr when it ends::

      load ... 0.41 s
      fit ... 12.30 s

* :func:`progress` wraps an iterable in a tqdm bar (a plain pass-through when disabled).

``verbose=None`` (the default of both) means "whatever :func:`configure` chose": the ``tfmf`` CLI
turns stage lines and bars on (off with ``--quiet``); a Python caller gets them off unless it
calls ``tfmf.progress.configure(True)`` or passes ``verbose=True``. Lower layers (data, models,
training, evaluation) may call these helpers: this module imports nothing of tfmf at import
time (the rank check loads :mod:`tfmf.distributed` lazily).
"""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterable, Iterator, TextIO, TypeVar

T = TypeVar("T")

_enabled = False


def configure(enabled: bool) -> bool:
    """Sets the default of ``verbose=None`` (stage lines and progress bars on or off).

    Returns:
      The previous default, so a caller can restore it.
    """
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    return previous


def is_enabled(verbose: bool | None = None) -> bool:
    """Whether output is wanted: ``verbose`` (None: the configured default) and rank 0."""
    if not (_enabled if verbose is None else verbose):
        return False
    from tfmf import distributed

    return distributed.is_chief()


@contextlib.contextmanager
def stage(name: str, verbose: bool | None = None, stream: TextIO | None = None) -> Iterator[None]:
    """Times the block and prints ``"<name> ... <seconds> s"`` when it ends.

    A block that raises prints nothing and re-raises: the error's own message (which the CLI
    prints first on stderr, ``tfmf: error: ...``) says what failed.

    Args:
      name: the stage (load, split, fit, evaluate, save...).
      verbose: print the line (None: the :func:`configure` default); never off rank 0.
      stream: where to print (default: ``sys.stderr`` at the time the block ends).
    """
    if not is_enabled(verbose):
        yield
        return
    t0 = time.perf_counter()
    yield
    _print(f"{name} ... {time.perf_counter() - t0:.2f} s", stream)


def _print(line: str, stream: TextIO | None) -> None:
    out = stream if stream is not None else sys.stderr
    print(line, file=out, flush=True)


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "",
             enabled: bool | None = None, unit: str = "it") -> Iterable[T]:
    """``iterable`` with a tqdm bar on stderr, or ``iterable`` itself when disabled.

    Args:
      iterable: what to iterate.
      total: number of items (default ``len(iterable)`` when it has one).
      desc: the bar's label.
      enabled: show the bar (None: the :func:`configure` default); never off rank 0.
      unit: the unit shown after the counts.

    Returns:
      An iterable over the same items.
    """
    if not is_enabled(enabled):
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                file=sys.stderr)
