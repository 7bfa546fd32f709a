"""Hyperparameter search with KerasTuner: cross-validated trials, two-stage and distributed.

``run_tuning(cfg, out_dir)`` is the entry point (``tfmf tune --config F``,
``python -m tfmf.tuning --config F --out DIR``). KerasTuner (and TensorFlow) load only when it
is called, so importing this package stays cheap.
"""
from __future__ import annotations


def run_tuning(cfg, out_dir: str, *, data=None, progress: bool = True):
    """Runs the search described by ``cfg.tune``; see :func:`tfmf.tuning.tuner.run_tuning`."""
    from tfmf.tuning.tuner import run_tuning as _run

    return _run(cfg, out_dir, data=data, progress=progress)


__all__ = ["run_tuning"]
