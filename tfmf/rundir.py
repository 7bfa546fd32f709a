"""The run directory: its layout, its lock, and every file a run writes there.

One owner for one concept: the runner, the CLI, tuning and export ask this module where a file
lives and how it is written; nothing else knows the layout::

    config.yaml        the validated config snapshot (written first)
    .lock              the pid of the process training into the directory (removed at exit)
    history.csv        one row per epoch (Keras CSVLogger; trimmed to the checkpoint on resume)
    tensorboard/       TensorBoard scalars (Keras TensorBoard callback)
    checkpoints/       the Keras BackupAndRestore state (resume)
    model/             the fitted Recommender (recommender.json written last)
    ids.npz            raw user/item ids (+ titles) for the model's indices
    learning_curve.png
    metrics.json       written LAST and atomically: its presence marks a complete run

Every write is atomic (:mod:`tfmf.fileio`), so a kill or a full disk leaves the previous
version of each file, never half of one. A write that fails for lack of space raises
:class:`~tfmf.fileio.DiskFullError` saying how to continue: a run whose last writes (model/,
ids, plot, metrics.json) failed is not finished, and ``tfmf train --resume`` finishes it from
its last checkpoint once space is freed.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import time

import numpy as np

from tfmf.errors import ConfigError
from tfmf.fileio import (DiskFullError, atomic_directory, atomic_write, atomic_write_json,
                         atomic_write_text, disk_full_reason, is_disk_full)

CONFIG, HISTORY, METRICS, IDS = "config.yaml", "history.csv", "metrics.json", "ids.npz"
MODEL, CHECKPOINTS, TENSORBOARD, CURVE, LOCK = (
    "model", "checkpoints", "tensorboard", "learning_curve.png", ".lock")
#: What a finished run must hold (metrics.json last: without it model/ may be stale).
FINISHED = (CONFIG, os.path.join(MODEL, "recommender.json"), IDS, METRICS)


class RunDir:
    """A run directory (see the module docstring for its layout).

    Args:
      path: the directory (created by :meth:`prepare`).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._locked = False

    def __fspath__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"RunDir({self.path!r})"

    def file(self, name: str) -> str:
        """Path of one entry of the layout (e.g. ``HISTORY``)."""
        return os.path.join(self.path, name)

    @property
    def checkpoints(self) -> str:
        return self.file(CHECKPOINTS)

    @property
    def history(self) -> str:
        return self.file(HISTORY)

    @property
    def tensorboard(self) -> str:
        return self.file(TENSORBOARD)

    @staticmethod
    def new(output_dir: str, run_name: str | None, model_name: str, source: str) -> "RunDir":
        """``output_dir/run_name`` or ``output_dir/<model>-<source>-<timestamp>``."""
        name = run_name
        if not name:
            src = os.path.splitext(os.path.basename(source))[0]
            name = f"{model_name}-{src}-{time.strftime('%Y%m%d-%H%M%S')}"
        return RunDir(os.path.join(output_dir, name))

    # ------------------------------------------------------------------ lifecycle
    def prepare(self, config_yaml: str, *, resume: bool = False,
                check_resumable=None) -> None:
        """Creates the directory, takes the lock and snapshots the config.

        Args:
          config_yaml: the validated config as YAML (written atomically as config.yaml).
          resume: continue a run; ``check_resumable(self)`` is called first when given.
          check_resumable: raises ConfigError when the snapshot forbids resuming.

        Raises:
          ConfigError: the directory is not writable (key ``output_dir``), already holds a
            finished run (``run_name``), or another live process trains into it.
        """
        try:
            os.makedirs(self.path, exist_ok=True)
            atomic_write_text(self.file(".write-test"), "")
            os.remove(self.file(".write-test"))
        except OSError as exc:
            raise ConfigError(f"cannot write run directory {self.path!r}: {exc.strerror}",
                              key="output_dir") from None
        self.lock()
        try:
            if not resume and self.finished():
                raise ConfigError(f"run directory {self.path!r} already holds a finished run; "
                                  "choose another run_name or output_dir", key="run_name")
            if resume and check_resumable is not None:
                check_resumable(self)
            if resume and self.finished():
                # The new snapshot describes the continued run: the old metrics no longer match
                # it, and metrics.json must only mark a complete run.
                os.remove(self.file(METRICS))
            atomic_write_text(self.file(CONFIG), config_yaml)
        except BaseException:
            self.unlock()
            raise

    def lock(self) -> None:
        """Takes ``.lock`` (O_EXCL with our pid); a lock whose pid is dead is stale and taken over.

        Raises:
          ConfigError: a live process holds the lock (its pid is named).
        """
        path = self.file(LOCK)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = _read_pid(path)
                if owner is not None and owner != os.getpid() and _alive(owner):
                    raise ConfigError(
                        f"run directory {self.path!r} is in use by process {owner} (lock file "
                        f"{path}); wait for it, or choose another run_name", key="run_name"
                    ) from None
                os.remove(path)  # stale: its owner is gone
                continue
            try:
                with os.fdopen(fd, "w") as fh:
                    fh.write(f"{os.getpid()}\n")
            except OSError as exc:
                os.remove(path)
                if is_disk_full(exc):
                    raise DiskFullError(f"cannot write the lock file {path}: "
                                        f"{disk_full_reason(exc)}; nothing was written",
                                        path) from None
                raise
            self._locked = True
            return
        raise ConfigError(f"could not take the lock {path}", key="run_name")

    def unlock(self) -> None:
        """Releases the lock if this object holds it."""
        if self._locked:
            self._locked = False
            if _read_pid(self.file(LOCK)) == os.getpid():
                os.remove(self.file(LOCK))

    def finished(self) -> bool:
        return os.path.exists(self.file(METRICS))

    def check_finished(self) -> None:
        """Raises FileNotFoundError naming the first file a finished run lacks."""
        if not os.path.isdir(self.path):
            raise FileNotFoundError(errno.ENOENT, "run directory not found", self.path)
        for name in FINISHED:
            if not os.path.exists(self.file(name)):
                raise FileNotFoundError(errno.ENOENT, "not a finished run (train it, or "
                                        "--resume it, first): missing", self.file(name))

    # ------------------------------------------------------------------ files
    def has_checkpoint(self) -> bool:
        """Whether checkpoints/ holds a checkpoint (so ``--resume`` can continue the run)."""
        chief = os.path.join(self.checkpoints, "chief")
        return os.path.isdir(chief) and any(f.endswith(".index") for f in os.listdir(chief))

    @contextlib.contextmanager
    def finishing(self):
        """Around the writes that finish a run: a full disk says how to finish it later."""
        try:
            yield
        except DiskFullError as exc:
            if self.has_checkpoint():
                hint = ("the run is not finished (no metrics.json) and its last checkpoint is "
                        "kept: free space, then `tfmf train --resume "
                        f"{self.path}` finishes it")
            else:
                hint = ("the run is not finished (no metrics.json): free space, then train it "
                        "again")
            raise DiskFullError(exc.detail, exc.filename, hint) from None

    def write_metrics(self, payload: dict) -> None:
        """metrics.json, atomically; written last, it marks the run complete."""
        with self.finishing():
            atomic_write_json(self.file(METRICS), payload)

    def read_metrics(self) -> dict:
        with open(self.file(METRICS)) as fh:
            return json.load(fh)

    def save_model(self, recommender) -> None:
        """The fitted Recommender into model/, replacing any previous one atomically."""
        with self.finishing(), atomic_directory(self.file(MODEL)) as tmp:
            recommender.save(tmp)

    def model_path(self) -> str:
        return self.file(MODEL)

    def save_ids(self, data) -> None:
        with self.finishing():
            save_id_maps(self.file(IDS), data)

    def load_ids(self) -> dict:
        return load_id_maps(self.file(IDS))

    def read_history(self) -> list[dict]:
        """history.csv as dicts of numbers ([] when absent)."""
        if not os.path.exists(self.history):
            return []
        with open(self.history, newline="") as fh:
            rows = list(csv.DictReader(fh))
        out = []
        for r in rows:
            conv = {}
            for k, v in r.items():
                if v in ("", None):
                    continue
                try:
                    conv[k] = int(v) if k in ("epoch", "steps") else float(v)
                except ValueError:
                    conv[k] = v
            out.append(conv)
        return out

    def trim_history(self, epochs: int) -> None:
        """Keeps the first ``epochs`` rows of history.csv (a resumed run redoes the rest).

        A kill between the CSV row of an epoch and its checkpoint leaves a row the checkpoint
        does not have; trimming to the checkpoint's epoch makes the resumed history exact.
        """
        if not os.path.exists(self.history):
            return
        with open(self.history, newline="") as fh:
            lines = fh.read().splitlines(keepends=True)
        if len(lines) > epochs + 1:
            try:
                atomic_write_text(self.history, "".join(lines[:epochs + 1]))
            except DiskFullError as exc:
                raise DiskFullError(exc.detail, exc.filename,
                                    f"free space, then `tfmf train --resume {self.path}` "
                                    "again") from None

    def plot_learning_curve(self, history: list[dict]) -> None:
        with self.finishing():
            plot_learning_curve(history, self.file(CURVE))


def _read_pid(path: str) -> int | None:
    try:
        with open(path) as fh:
            return int(fh.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def save_id_maps(path: str, data) -> None:
    """Raw user/item ids (and titles) of an InteractionData, atomically."""
    arrays = {"user_ids": data.user_ids, "item_ids": data.item_ids}
    if data.item_titles is not None:
        arrays["item_titles"] = data.item_titles
    atomic_write(path, lambda tmp: np.savez(tmp, **arrays))


def load_id_maps(path: str) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def plot_learning_curve(history: list[dict], path: str) -> None:
    """Training loss and every validation metric per epoch as a PNG (skipped without history).

    The loss (or, for sampling fits, the train RMSE of each draw) is on the left axis; the
    validation metrics (RMSE, or NDCG@K / Recall@K on validation users) on the right.
    """
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    train_keys = [k for k in ("loss", "data") if k in history[0]] or [
        k for k in ("rmse",) if k in history[0]]
    for key in train_keys:
        ax.plot(epochs, [h.get(key, np.nan) for h in history], label=f"train {key}")
    val_keys = [k for k in history[-1] if k.startswith("val_")]
    if val_keys:
        ax2 = ax.twinx()
        for k in val_keys:
            ax2.plot(epochs, [h.get(k, np.nan) for h in history], "--", label=k)
        ax2.set_ylabel("validation")
        ax2.legend(loc="upper right")
    ax.set_xlabel("epoch")
    if train_keys:
        ax.legend(loc="upper left")
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80))
    finally:
        plt.close(fig)
