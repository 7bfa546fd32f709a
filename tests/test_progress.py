"""tfmf.progress: stage lines and progress bars, silent unless enabled and only on rank 0."""
from __future__ import annotations

import io
import re

import pytest

from tfmf import distributed, progress


@pytest.fixture(autouse=True)
def _restore_default():
    was = progress.configure(False)
    yield
    progress.configure(was)


def test_stage_prints_one_timed_line():
    out = io.StringIO()
    with progress.stage("fit", verbose=True, stream=out):
        pass
    assert re.fullmatch(r"fit \.\.\. \d+\.\d\d s\n", out.getvalue())


def test_a_failing_stage_reraises_and_leaves_the_error_first():
    out = io.StringIO()
    with pytest.raises(ValueError), progress.stage("load", verbose=True, stream=out):
        raise ValueError("bad")
    assert out.getvalue() == ""  # the CLI's "tfmf: error: ..." is the first line the user sees


def test_default_follows_configure():
    out = io.StringIO()
    with progress.stage("split", stream=out):
        pass
    assert out.getvalue() == ""  # the Python API default: quiet
    assert progress.configure(True) is False
    with progress.stage("split", stream=out):
        pass
    assert out.getvalue().startswith("split ... ")
    with progress.stage("save", verbose=False, stream=out):  # an explicit False wins
        pass
    assert "save" not in out.getvalue()


def test_only_rank_zero_reports(monkeypatch):
    monkeypatch.setattr(distributed, "is_chief", lambda: False)
    out = io.StringIO()
    with progress.stage("fit", verbose=True, stream=out):
        pass
    assert out.getvalue() == ""
    items = [1, 2, 3]
    assert progress.progress(items, enabled=True) is items


def test_progress_bar_or_passthrough(capsys):
    items = [1, 2, 3]
    assert progress.progress(items, enabled=False) is items
    bar = progress.progress(items, total=3, desc="sweeps", enabled=True)
    assert bar is not items and list(bar) == items
    assert "sweeps" in capsys.readouterr().err
