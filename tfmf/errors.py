"""Error types with enough context to act on: the file and line, or the config key."""
from __future__ import annotations


class TfmfError(Exception):
    """Base class for errors tfmf reports to users (the CLI exits non-zero with the message)."""


class DataError(TfmfError, ValueError):
    """Bad input data, located by file and (1-based) line when known.

    Args:
      message: what is wrong.
      path: the file that holds it.
      line: 1-based line number in that file (header included), if known.
    """

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.path = str(path) if path is not None else None
        self.line = line
        self.reason = message
        where = ""
        if self.path is not None:
            where = self.path + (f":{line}" if line is not None else "") + ": "
        super().__init__(where + message)


class ConfigError(TfmfError, ValueError):
    """Bad configuration, located by dotted key (e.g. ``train.learning_rate``) and file."""

    def __init__(self, message: str, key: str | None = None, path: str | None = None):
        self.key = key
        self.path = str(path) if path is not None else None
        self.reason = message
        where = ""
        if self.path:
            where += self.path + ": "
        if key:
            where += f"{key}: "
        super().__init__(where + message)


class TrainingDiverged(TfmfError, RuntimeError):
    """The loss became NaN/inf; names the epoch and step."""

    def __init__(self, epoch: int, step: int, loss: float | None = None):
        self.epoch, self.step, self.loss = epoch, step, loss
        super().__init__(
            f"training diverged at epoch {epoch}, step {step} (loss={loss}); "
            "lower the learning rate or add gradient clipping. The last good checkpoint "
            "is kept in the run directory."
        )


class MemoryBudgetError(ConfigError):
    """A step's estimated memory exceeds what is available (checked before allocating).

    Args:
      message: what needs how much, what is available, and the key to change.
      key: the config key that shrinks the step (e.g. ``model.dtype``).
      needed / available: bytes.
    """

    def __init__(self, message: str, key: str | None = None, needed: int | None = None,
                 available: int | None = None):
        self.needed, self.available = needed, available
        super().__init__(message, key=None)
        self.key = key


class CheckpointError(TfmfError, RuntimeError):
    """A checkpoint to resume from is truncated or corrupt (``path`` names it)."""

    def __init__(self, message: str, path: str | None = None):
        self.path = str(path) if path is not None else None
        super().__init__(message)


class Interrupted(TfmfError, RuntimeError):
    """Training stopped on a signal after ``epoch``, whose checkpoint was written."""

    def __init__(self, epoch: int, signal_name: str):
        self.epoch, self.signal_name = epoch, signal_name
        super().__init__(f"stopped by {signal_name} after epoch {epoch}; its checkpoint is in "
                         "the run directory: continue with `tfmf train --resume RUN_DIR`")
