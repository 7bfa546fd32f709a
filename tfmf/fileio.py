"""Atomic file writes: the one implementation every layer uses.

A reader (another process, a resumed run, ``tfmf evaluate``) must never see half a file: each
writer produces a temporary sibling and renames it into place (``os.replace`` is atomic on
POSIX within one filesystem). A failed write (full disk, kill) leaves the previous file intact
and removes the temporary. No TensorFlow here: the data layer uses it too.

A write that fails for lack of space (ENOSPC, a quota, a file-size limit) raises
:class:`DiskFullError`, a user-facing error (the CLI prints it and exits 2) naming the file and
saying what is kept; TensorFlow's own writers (checkpoints, SavedModels) report the same
condition in their message only, which :func:`is_disk_full` recognises too.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from typing import Any, Callable

import numpy as np

from tfmf.errors import TfmfError

#: errno values that mean "no room to write": no space, quota, RLIMIT_FSIZE / file too large.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
#: The same conditions as TensorFlow's file system layer words them (strerror of the errno).
_DISK_FULL_TEXT = tuple(os.strerror(e) for e in DISK_FULL_ERRNOS)


class DiskFullError(TfmfError, OSError):
    """A write failed for lack of space; the message names the file and what is kept.

    Args:
      detail: what could not be written, why, and what is kept.
      path: the file or directory that could not be written.
      hint: what to do (default: free space and run the command again).
    """

    def __init__(self, detail: str, path: str | None = None, hint: str | None = None):
        self.detail = detail
        self.hint = hint or "free space and run the command again"
        self.message = f"{detail}: {self.hint}"
        super().__init__(errno.ENOSPC, self.message, path)

    def __str__(self) -> str:
        return self.message


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` (an OSError or a TensorFlow error) reports a full disk or a size limit."""
    if isinstance(exc, DiskFullError):
        return True
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    text = str(exc)
    return any(t in text for t in _DISK_FULL_TEXT)


def disk_full_reason(exc: BaseException) -> str:
    """The OS's words for a disk-full ``exc`` (e.g. "No space left on device")."""
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return next((t for t in _DISK_FULL_TEXT if t in text), text.splitlines()[0][:200])


def _disk_full(path: str, existed: bool, exc: BaseException) -> DiskFullError:
    kept = ("its previous version is kept unchanged" if existed
            else "nothing was written there")
    return DiskFullError(f"cannot write {path}: {disk_full_reason(exc)}; {kept} and no partial "
                         "file remains", path)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Calls ``write(tmp_path)`` and renames the result onto ``path``.

    Args:
      path: destination file.
      write: writes the complete content to the temporary path it is given (which keeps
        ``path``'s extension, so writers that infer a format from it still work).

    Raises:
      DiskFullError: no space (or a size limit) for the new content; ``path`` is unchanged and
        no temporary remains.
      OSError: any other failed write, with the same guarantee.
    """
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    existed = os.path.exists(path)
    try:
        os.makedirs(parent, exist_ok=True)
        root, ext = os.path.splitext(os.path.basename(path))
        fd, tmp = tempfile.mkstemp(prefix=f".{root}.", suffix=f".tmp{ext}", dir=parent)
        os.close(fd)
    except OSError as exc:
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise _disk_full(path, existed, exc) from None
        raise
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, Exception) and is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise _disk_full(path, existed, exc) from None
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
    A write that fails for lack of space (also inside TensorFlow, e.g. a SavedModel) is raised
    as :class:`DiskFullError`; the previous ``path`` is kept.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.path.abspath(os.fspath(path))

    def __enter__(self) -> str:
        parent = os.path.dirname(self.path)
        self.existed = os.path.lexists(self.path)
        try:
            os.makedirs(parent, exist_ok=True)
            self.tmp = tempfile.mkdtemp(prefix=os.path.basename(self.path) + ".tmp-", dir=parent)
        except OSError as exc:
            if is_disk_full(exc) and not isinstance(exc, DiskFullError):
                raise _disk_full(self.path, self.existed, exc) from None
            raise
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide the result from others
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if (isinstance(exc, Exception) and is_disk_full(exc)
                    and not isinstance(exc, DiskFullError)):
                raise _disk_full(self.path, self.existed, exc) from None
            return False
        old = None
        if os.path.lexists(self.path):
            old = self.tmp + ".old"
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False
