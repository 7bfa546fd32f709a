"""Memory preflight: estimates, the refusal before a large allocation, and ``train --dry-run``."""
import os
import subprocess
import sys
from collections import namedtuple

import numpy as np
import pytest

import tfmf  # noqa: F401
from tfmf import dryrun, memory, registry
from tfmf.config import load_config
from tfmf.data.interactions import InteractionData
from tfmf.errors import ConfigError, MemoryBudgetError
from tfmf.models.ease import EASE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_VM = namedtuple("svmem", "total available")


@pytest.fixture
def available(monkeypatch):
    """Sets psutil's available-memory figure (bytes) seen by tfmf.memory."""
    import psutil

    monkeypatch.delenv("TFMF_MEMORY_LIMIT", raising=False)

    def set_(nbytes):
        monkeypatch.setattr(psutil, "virtual_memory", lambda: _VM(64 * 10**9, int(nbytes)))
    return set_


def items_data(n_items=3000, n_users=20):
    rng = np.random.default_rng(0)
    u = rng.integers(0, n_users, 4000)
    i = rng.integers(0, n_items, 4000)
    key = np.unique(u * n_items + i)
    return InteractionData(users=key // n_items, items=key % n_items,
                           values=np.ones(len(key), np.float32), user_ids=np.arange(n_users),
                           item_ids=np.arange(n_items), implicit=True)


def test_ease_estimate_scales_with_items_and_dtype():
    f32, f64 = memory.ease_fit_bytes(20_000, "float32"), memory.ease_fit_bytes(20_000, "float64")
    assert 1.6e9 <= f32 <= 2.5e9          # one float32 matrix + half of one
    assert f64 == 2 * f32
    assert memory.ease_fit_bytes(10_000, "float32") * 4 == f32


def test_ease_fit_that_cannot_fit_stops_before_allocating_and_names_the_key(available):
    d = items_data()
    need64 = memory.ease_fit_bytes(d.n_items, "float64", "blocked", d.nnz)
    # Fits in float32, not in float64: the message says to switch the dtype.
    available(memory.DEFAULT_MARGIN + need64 - 1)
    with pytest.raises(MemoryBudgetError) as e:
        EASE(dtype="float64", solver="blocked").fit(d)
    msg = str(e.value)
    assert "model.dtype: float32" in msg and e.value.key == "model.dtype"
    assert f"needs {need64 / 1e9:.1f} GB" in msg and "available" in msg
    assert isinstance(e.value, ConfigError)
    EASE(dtype="float32", solver="blocked").fit(d)  # same budget, half the bytes: fits
    # Nothing fits: float32 names the item filter instead.
    available(memory.DEFAULT_MARGIN)
    with pytest.raises(MemoryBudgetError, match="data.min_item_interactions"):
        EASE(dtype="float32").fit(d)


def test_score_blocks_are_checked(available):
    m = EASE(dtype="float32", solver="lapack").fit(items_data(500))
    available(memory.DEFAULT_MARGIN + memory.score_block_bytes(10, 500) - 1)
    with pytest.raises(MemoryBudgetError, match="eval.batch_size"):
        m.score(np.arange(10))
    assert m.score(np.arange(5)).shape == (5, 500)


def test_every_registered_model_has_an_estimate():
    for name in registry.names():
        if name.startswith("_"):  # test-only models other test modules register
            continue
        cfg = load_config(raw={"model": {"name": name}})
        stages = dryrun.estimate_run(cfg, 10_000, 5_000, 1_000_000)
        assert name in dryrun.MODEL_ESTIMATES
        assert [s for s, _, _ in stages][0] == "read ratings"
        assert all(b > 0 for _, b, _ in stages) and any(s.startswith("fit") for s, _, _ in stages)


def _dry_run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "tfmf", "train", "--dry-run", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT, **(env or {})})


def test_dry_run_prints_stages_without_training(tmp_path):
    r = _dry_run("--config", os.path.join(ROOT, "configs", "sample_ease.yaml"),
                 "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    for stage in ("read ratings", "fit: EASE item x item matrices", "evaluation score blocks"):
        assert stage in r.stdout
    assert "400 items" in r.stdout and "nothing was trained" in r.stdout
    assert not (tmp_path / "run").exists()


def test_dry_run_that_does_not_fit_exits_2_with_the_key():
    # A 60k-item synthetic catalogue (counts from the config: nothing is generated) on a
    # machine with 4 GB: EASE needs 14.9 GB in float32 (default lapack solver).
    r = _dry_run("--config", os.path.join(ROOT, "configs", "sample_ease.yaml"),
                 "--set", "data.source=synthetic-implicit",
                 "--set", "data.synthetic.n_items=60000", "--set", "data.synthetic.nnz=100000",
                 env={"TFMF_MEMORY_LIMIT": "4e9"})
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "NO" in r.stdout
    assert "EASE item x item matrices" in r.stderr and "14.9 GB" in r.stderr
    assert "data.min_item_interactions" in r.stderr and "3.0 GB are available" in r.stderr


_MAPPED_PROBE = r"""
import ctypes, sys
import numpy as np
from tfmf import memory

class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                "usmblks", "fsmblks", "uordblks", "fordblks",
                                                "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
mapped = lambda: libc.mallinfo2().hblkhd
MB = 1 << 20
big = np.ones(24 * MB, np.uint8)  # freeing a 24 MB mapped block raises glibc's threshold
del big
held = []  # kept: a freed chunk would be reused whatever the threshold


def grow(label):
    base = mapped()
    held.append(np.ones(2 * MB, np.uint8))
    print(label, mapped() - base)


grow("before")
with memory.large_blocks_unmapped():
    grow("inside")
grow("after")
"""


def test_large_blocks_get_their_own_mapping_only_while_data_is_built():
    """Inside ``large_blocks_unmapped`` a new 2 MB array is its own mapping (freed to the OS at
    once) even after glibc's dynamic threshold rose; before and after, it comes from the heap.
    In a fresh process: the allocator's state is process-wide."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        pytest.skip("needs glibc >= 2.33")
    out = subprocess.run([sys.executable, "-c", _MAPPED_PROBE], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    got = dict(zip(out[::2], map(int, out[1::2])))
    assert got["before"] == 0
    assert got["inside"] >= 2 << 20
    assert got["after"] == 0
