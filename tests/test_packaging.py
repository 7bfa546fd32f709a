"""Plain packaging: `python -m build` makes a wheel that carries the embedded sample and the
sample configs, installs into a fresh venv and trains from outside the source tree.

The install test creates a fresh venv (no ``--system-site-packages``) and installs the wheel
with ``pip install --no-deps``; a ``.pth`` file makes the *running* interpreter's
site-packages (TensorFlow, Horovod, ...) importable after the venv's own. So what is under test
is the wheel itself (its files, entry point, package data, data_files), not a 600 MB
re-download of the pinned stack, and it runs without network in about a minute.
``install_requires`` resolving from PyPI is what `make install` exercises.
"""
from __future__ import annotations

import configparser
import glob
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_data_files_list_every_sample_config():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = set(cfg["options.data_files"]["share/tfmf/configs"].split())
    present = {f"configs/{p.name}" for p in (ROOT / "configs").glob("sample_*.yaml")}
    assert listed == present


def test_dev_extra_has_build():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert any(r.strip().startswith("build") for r in cfg["options.extras_require"]["dev"].split("\n"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: build with the setuptools already here (offline, seconds).
    res = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation",
                          "--outdir", str(out), str(ROOT)], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (whl,) = out.glob("tfmf-*.whl")
    return whl


@pytest.mark.slow
def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("tfmf/data/sample/sample.csv.gz", "tfmf/data/sample/items.json", "tfmf/cli.py",
              "tfmf/demo.py", "tfmf/progress.py"):
        assert f in names, f
    configs = {n.rsplit("/", 1)[1] for n in names if "/share/tfmf/configs/" in n}
    assert configs == {p.name for p in (ROOT / "configs").glob("sample_*.yaml")}
    assert not any(n.startswith(("tests/", "pipelines/")) for n in names)


@pytest.mark.slow
def test_wheel_installs_and_trains_outside_the_tree(wheel, tmp_path):
    # No PYTHONPATH: the checkout on it (with the tfmf.egg-info `build` leaves there) would make
    # pip skip the wheel as already installed, and tfmf would be imported from the checkout.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL")}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300, env=env)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True, env=env).stdout.strip()
    res = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                          str(wheel)], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    # Then the running environment's packages, after the venv's own (see the module docstring;
    # written after the install, or pip would take a tfmf found there as already installed).
    Path(purelib, "zz_tfmf_test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()

    def tfmf(*args, timeout=600):
        return subprocess.run([str(venv / "bin" / "tfmf"), *map(str, args)], cwd=work, env=env,
                              capture_output=True, text=True, timeout=timeout)

    res = tfmf("--help")
    assert res.returncode == 0 and "usage: tfmf" in res.stdout, res.stderr
    # The wheel's tfmf, not the checkout's: imported from the venv.
    where = subprocess.run([str(py), "-c", "import tfmf; print(tfmf.__file__)"], cwd=work,
                           env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(purelib), where
    config = Path(sysconfig.get_path("data", vars={"base": str(venv)}), "share", "tfmf",
                  "configs", "sample_biased_mf.yaml")
    assert config.is_file(), sorted(glob.glob(str(venv / "share" / "**"), recursive=True))
    res = tfmf("train", "--config", config, "--run-dir", work / "run", "--set", "train.epochs=2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "rmse" in res.stdout and (work / "run" / "metrics.json").is_file()
    found = subprocess.run([str(py), "-c", "from tfmf.demo import sample_configs; "
                            "print(len(sample_configs()))"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert int(found) == len(list((ROOT / "configs").glob("sample_*.yaml"))) - 1  # minus _tune
    # `tfmf demo` runs them all; two fast ones here.
    configs = [config.parent / f"sample_{n}.yaml" for n in ("bias_baseline", "popularity")]
    res = tfmf("demo", "--configs", *configs)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "vs popularity" in res.stdout and (work / "runs" / "demo" / "sample_popularity").is_dir()
