"""Atomic file writes: the one implementation every layer uses.

A reader (another process, a resumed run, ``tfmf evaluate``) must never see half a file: each
writer produces a temporary sibling and renames it into place (``os.replace`` is atomic on
POSIX within one filesystem). A failed write (full disk, kill) leaves the previous file intact
and removes the temporary. No TensorFlow here: the data layer uses it too.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Callable

import numpy as np


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Calls ``write(tmp_path)`` and renames the result onto ``path``.

    Args:
      path: destination file.
      write: writes the complete content to the temporary path it is given (which keeps
        ``path``'s extension, so writers that infer a format from it still work).

    Raises:
      OSError: the write failed (e.g. ENOSPC); ``path`` is unchanged and no temporary remains.
    """
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    root, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{root}.", suffix=f".tmp{ext}", dir=parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """``text`` into ``path`` atomically (UTF-8)."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike, payload: Any) -> None:
    """``payload`` as indented JSON (numpy scalars/arrays converted) into ``path`` atomically."""
    atomic_write_text(path, json.dumps(payload, indent=2, default=json_default))


def json_default(o: Any) -> Any:
    """``json.dumps`` fallback for numpy scalars and arrays."""
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


class atomic_directory:
    """Context manager: a temp directory beside ``path`` that replaces ``path`` on success.

    Readers never see a half-written directory: on error the temp dir is removed; on success an
    existing ``path`` is moved aside, the temp dir renamed into place, and the old one deleted.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.path.abspath(os.fspath(path))

    def __enter__(self) -> str:
        parent = os.path.dirname(self.path)
        os.makedirs(parent, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix=os.path.basename(self.path) + ".tmp-", dir=parent)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide the result from others
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        old = None
        if os.path.lexists(self.path):
            old = self.tmp + ".old"
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False
