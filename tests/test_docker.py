"""The GPU Dockerfile parses and pins the same stack as setup.cfg (no Docker engine needed)."""
from __future__ import annotations

import configparser
import json
import os
import re
import shlex

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILE = os.path.join(ROOT, "docker", "Dockerfile")
PINNED = ["tensorflow", "tf_keras", "tensorflow-recommenders", "keras-tuner", "horovod", "numpy"]


def _parse_simple() -> list[tuple[str, str]]:
    """A small Dockerfile parser: joins backslash continuations, skips comments (as Docker does)."""
    out, buf = [], ""
    with open(DOCKERFILE) as fh:
        for raw in fh:
            line = raw.rstrip("\n")
            if line.lstrip().startswith("#") or (not line.strip() and not buf):
                continue
            if line.endswith("\\"):
                buf += line[:-1] + " "
                continue
            buf += line
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
            buf = ""
    assert not buf, "dangling line continuation at end of Dockerfile"
    return out


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, value) pairs from dockerfile-parse (dev extra), else the small parser."""
    try:
        from dockerfile_parse import DockerfileParser
    except ImportError:
        return _parse_simple()
    parser = DockerfileParser(path=DOCKERFILE)
    return [(i["instruction"], " ".join(i["value"].split())) for i in parser.structure
            if i["instruction"] != "COMMENT"]


def test_simple_parser_agrees_with_dockerfile_parse():
    pytest.importorskip("dockerfile_parse")
    assert _parse_simple() == _instructions()


def _setup_requirements() -> dict[str, Requirement]:
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    lines = cfg["options"]["install_requires"].splitlines()
    lines += cfg["options.extras_require"]["distributed"].splitlines()
    reqs = [Requirement(l.strip()) for l in lines if l.strip() and not l.strip().startswith("#")]
    return {canonicalize_name(r.name): r for r in reqs}


def _pip_requirements(instructions) -> dict[str, Requirement]:
    """Requirement specs quoted in the Dockerfile's `pip install` RUN lines."""
    out = {}
    for word, value in instructions:
        if word != "RUN" or "pip install" not in value:
            continue
        for token in shlex.split(value, posix=True):
            if re.match(r"^[A-Za-z0-9_.\-]+\s*(==|~=|>=|<=|<|>|!=)", token):
                req = Requirement(token)
                out[canonicalize_name(req.name)] = req
    return out


def test_dockerfile_parses_with_expected_structure():
    ins = _instructions()
    words = [w for w, _ in ins]
    assert words[0] == "FROM"
    assert ins[0][1] == "tensorflow/tensorflow:2.18.1-gpu"
    entry = [v for w, v in ins if w == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["tfmf"]
    # Horovod is compiled with NCCL + Gloo, TensorFlow only, against the installed TF.
    horovod_run = next(v for w, v in ins if w == "RUN" and "horovod==" in v)
    for flag in ("HOROVOD_GPU_OPERATIONS=NCCL", "HOROVOD_WITH_TENSORFLOW=1", "HOROVOD_WITH_GLOO=1",
                 "HOROVOD_WITHOUT_MPI=1", "HOROVOD_WITHOUT_PYTORCH=1", "HOROVOD_WITHOUT_MXNET=1",
                 "--no-build-isolation"):
        assert flag in horovod_run, flag
    # cmake (needed by the Horovod build) is installed before the Horovod step.
    runs = [v for w, v in ins if w == "RUN"]
    assert any("cmake" in v for v in runs[: runs.index(horovod_run)])
    # Every COPY source exists in the build context (the repository root).
    for w, v in ins:
        if w == "COPY":
            for src in v.split()[:-1]:
                assert os.path.exists(os.path.join(ROOT, src)), src


@pytest.mark.parametrize("name", PINNED)
def test_dockerfile_pins_match_setup_cfg(name):
    setup = _setup_requirements()
    docker = _pip_requirements(_instructions())
    key = canonicalize_name(name)
    assert key in setup, f"{name} missing from setup.cfg"
    assert key in docker, f"{name} is not pinned in docker/Dockerfile"
    assert docker[key].specifier == setup[key].specifier, (
        f"{name}: Dockerfile {docker[key].specifier} != setup.cfg {setup[key].specifier}")


def test_docker_readme_documents_gpus_and_horovodrun():
    with open(os.path.join(ROOT, "docker", "README.md")) as fh:
        text = fh.read()
    assert "docker build -f docker/Dockerfile" in text
    assert "--gpus all" in text
    assert "horovodrun" in text
    for script in re.findall(r"pipelines/(\w+\.sh)", text):
        assert os.path.exists(os.path.join(ROOT, "pipelines", script)), script


def test_run_instructions_are_valid_shell():
    import subprocess

    runs = [v for w, v in _instructions() if w == "RUN"]
    assert len(runs) >= 3
    for cmd in runs:
        res = subprocess.run(["sh", "-n", "-c", cmd], capture_output=True, text=True)
        assert res.returncode == 0, f"{cmd[:80]}...: {res.stderr}"
