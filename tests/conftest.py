"""Shared fixtures for the data tests."""
from __future__ import annotations

import os
from pathlib import Path

import tfmf  # noqa: F401  (selects Keras 2 before anything imports TensorFlow)
import pytest

# ../shared/data beside the project (CI, the README), or $TFMF_DATA_DIR (e.g. a worktree).
ML100K_DIR = Path(os.environ.get("TFMF_DATA_DIR")
                  or Path(__file__).resolve().parents[1].parent / "shared" / "data")


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """The data directory holding a real ml-100k/ copy; skips the test when absent."""
    if not (ML100K_DIR / "ml-100k" / "u.data").is_file():
        pytest.skip(f"real ML-100K not present under {ML100K_DIR}")
    return ML100K_DIR
