"""The container images: static checks of docker/ (always, fast) and in-container smoke tests.

The static checks parse docker/Dockerfile and need no engine: its stages and targets, the pins
against setup.cfg, the Horovod build flags, the helper scripts' shell syntax.

The `in_container` tests run the built images (`make docker` builds them; `make docker-test`
runs these tests). They are skipped unless TFMF_DOCKER_TESTS=1 is set AND the engine
(TFMF_DOCKER_ENGINE, default podman) answers and has the images, so CI, which builds no image,
skips them.
"""
from __future__ import annotations

import configparser
import json
import math
import os
import re
import shlex
import shutil
import subprocess

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKER = os.path.join(ROOT, "docker")
DOCKERFILE = os.path.join(DOCKER, "Dockerfile")
PINNED = ["tensorflow", "tf_keras", "tensorflow-recommenders", "keras-tuner", "horovod", "numpy"]
TARGETS = ("cpu", "gpu")


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


def _stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions of each named stage (`FROM x AS name`), in order; "" holds the global ARGs."""
    stages: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for word, value in _instructions():
        if word == "FROM":
            m = re.match(r"^(\S+)\s+AS\s+(\S+)$", value, re.IGNORECASE)
            assert m, f"unnamed stage: FROM {value}"
            current = m.group(2)
            assert current not in stages, f"stage {current} defined twice"
            stages[current] = [(word, m.group(1))]
        else:
            stages[current].append((word, value))
    return stages


def _lineage(stages, name) -> list[tuple[str, str]]:
    """A target's instructions including those of the stages it is built FROM."""
    ins = stages[name]
    parent = ins[0][1]
    return (_lineage(stages, parent) if parent in stages else []) + ins


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


def _pip_requirements(instructions) -> list[Requirement]:
    """Requirement specs quoted in `pip install` RUN lines."""
    out = []
    for word, value in instructions:
        if word != "RUN" or "pip install" not in value:
            continue
        for token in shlex.split(value, posix=True):
            if re.match(r"^[A-Za-z0-9_.\-]+(\[[A-Za-z0-9_,\-]+\])?\s*(==|~=|>=|<=|<|>|!=)", token):
                out.append(Requirement(token))
    return out


def test_dockerfile_base_is_a_build_argument():
    stages = _stages()
    args = [v for w, v in stages[""] if w == "ARG"]
    assert any(a.startswith("BASE_IMAGE=") for a in args), args
    assert stages["os"][0] == ("FROM", "${BASE_IMAGE}")
    assert stages["system"][0] == ("FROM", "os") and stages["runtime"][0] == ("FROM", "os")
    for target in TARGETS:
        assert stages[f"{target}-build"][0] == ("FROM", "system"), target
        assert stages[target][0] == ("FROM", "runtime"), target


def test_runtime_stage_has_no_build_tools():
    runs = " ".join(v for w, v in _stages()["runtime"] if w == "RUN")
    assert "python3" in runs and "apt-get clean" in runs
    for tool in ("build-essential", "python3-dev", "cmake", "git "):
        assert tool not in runs, tool


@pytest.mark.parametrize("target", TARGETS)
def test_dockerfile_target_structure(target):
    stages = _stages()
    ins = _lineage(stages, f"{target}-build")
    own = stages[target]
    entry = [v for w, v in own if w == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["tfmf"]
    # The target copies the venv and the source tree out of its own build stage.
    copies = [v for w, v in own if w == "COPY"]
    assert f"--from={target}-build /opt/venv /opt/venv" in copies, copies
    assert f"--from={target}-build /opt/tfmf /opt/tfmf" in copies, copies
    runs = [v for w, v in ins if w == "RUN"]
    # Horovod is compiled with Gloo, TensorFlow only, against the installed TF.
    horovod_run = next(v for v in runs if "horovod==" in v)
    for flag in ("HOROVOD_WITH_TENSORFLOW=1", "HOROVOD_WITH_GLOO=1", "HOROVOD_WITHOUT_MPI=1",
                 "HOROVOD_WITHOUT_PYTORCH=1", "HOROVOD_WITHOUT_MXNET=1", "--no-build-isolation",
                 "gloo_built()"):
        assert flag in horovod_run, flag
    # TensorFlow is installed in an earlier step than Horovod; cmake and the compilers before.
    tf_run = next(v for v in runs if "tensorflow" in v and "pip install" in v)
    assert runs.index(tf_run) < runs.index(horovod_run)
    assert any("cmake" in v and "build-essential" in v for v in runs[: runs.index(horovod_run)])
    if target == "gpu":
        assert "tensorflow[and-cuda]==" in tf_run
        # NCCL is an explicit choice (it needs a CUDA toolkit in the base) and then checked.
        assert "HOROVOD_GPU_OPERATIONS=NCCL" in horovod_run and "nccl_built()" in horovod_run
        assert "ARG HOROVOD_NCCL=0" in [f"{w} {v}" for w, v in stages["gpu-build"]]
    else:
        assert "and-cuda" not in tf_run and "NCCL" not in horovod_run
    # Every COPY source from the build context (the repository root) exists.
    for w, v in ins:
        if w == "COPY" and not v.startswith("--from="):
            for src in v.split()[:-1]:
                assert os.path.exists(os.path.join(ROOT, src)), src


@pytest.mark.parametrize("name", PINNED)
def test_dockerfile_pins_match_setup_cfg(name):
    setup = _setup_requirements()
    key = canonicalize_name(name)
    assert key in setup, f"{name} missing from setup.cfg"
    stages = _stages()
    for target in TARGETS:
        docker = [r for r in _pip_requirements(_lineage(stages, f"{target}-build"))
                  if canonicalize_name(r.name) == key]
        assert docker, f"{name} is not pinned in docker/Dockerfile's {target} target"
        for req in docker:
            assert req.specifier == setup[key].specifier, (
                f"{name} ({target}): Dockerfile {req.specifier} != setup.cfg {setup[key].specifier}")


def test_requirements_from_setup_lists_install_requires():
    import sys

    res = subprocess.run([sys.executable, os.path.join(DOCKER, "requirements-from-setup.py"),
                          os.path.join(ROOT, "setup.cfg")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    got = {canonicalize_name(Requirement(l).name): Requirement(l).specifier
           for l in res.stdout.splitlines()}
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    want = [Requirement(l.strip()) for l in cfg["options"]["install_requires"].splitlines()
            if l.strip() and not l.strip().startswith("#")]
    assert got == {canonicalize_name(r.name): r.specifier for r in want}
    res = subprocess.run([sys.executable, os.path.join(DOCKER, "requirements-from-setup.py"),
                          os.path.join(DOCKER, "no-such-setup.cfg")], capture_output=True, text=True)
    assert res.returncode == 1 and "no-such-setup.cfg" in res.stderr


def test_dockerignore_keeps_local_state_out_of_the_context():
    with open(os.path.join(DOCKER, "Dockerfile.dockerignore")) as fh:
        pats = {l.strip() for l in fh if l.strip() and not l.startswith("#")}
    assert {".git", ".venv", "runs"} <= pats
    # ... but not what the Dockerfile copies.
    assert not pats & {"tfmf", "pipelines", "configs", "setup.cfg", "docker"}


def test_docker_readme_documents_build_run_and_measurements():
    with open(os.path.join(DOCKER, "README.md")) as fh:
        text = fh.read()
    for needle in ("make docker", "make docker-test", "docker/bootstrap-base.sh", "--gpus all",
                   "horovodrun", "BASE_IMAGE", "HOROVOD_NCCL"):
        assert needle in text, needle
    # The measured build times and image sizes are recorded (seconds/minutes, MB/GB).
    assert re.search(r"\d+\s*(s|min)\b", text) and re.search(r"\d+(\.\d+)?\s*(MB|GB)\b", text)
    for script in re.findall(r"pipelines/(\w+\.sh)", text):
        assert os.path.exists(os.path.join(ROOT, "pipelines", script)), script


def test_run_instructions_are_valid_shell():
    runs = [v for w, v in _instructions() if w == "RUN"]
    assert len(runs) >= 5
    for cmd in runs:
        cmd = re.sub(r"^(--mount=\S+\s+)+", "", cmd)  # BuildKit/buildah RUN flags
        res = subprocess.run(["sh", "-n", "-c", cmd], capture_output=True, text=True)
        assert res.returncode == 0, f"{cmd[:80]}...: {res.stderr}"


@pytest.mark.parametrize("script", ["bootstrap-base.sh", "engine.sh"])
def test_helper_scripts_are_valid_bash(script):
    path = os.path.join(DOCKER, script)
    assert os.access(path, os.X_OK), f"{script} is not executable"
    res = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_makefile_has_docker_targets():
    with open(os.path.join(ROOT, "Makefile")) as fh:
        text = fh.read()
    for target in ("docker", "docker-base", "docker-test"):
        assert re.search(rf"^{re.escape(target)}\s*:", text, re.MULTILINE), target


# ---------------------------------------------------------------------------------------------
# In-container smoke tests (make docker-test).

ENGINE = os.environ.get("TFMF_DOCKER_ENGINE", "podman")
IMAGE = os.environ.get("TFMF_DOCKER_IMAGE", "localhost/tfmf")


def _engine(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, ENGINE=ENGINE)
    return subprocess.run([os.path.join(DOCKER, "engine.sh"), *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def _require_image(tag: str) -> str:
    if os.environ.get("TFMF_DOCKER_TESTS") != "1":
        pytest.skip("set TFMF_DOCKER_TESTS=1 (make docker-test) to run the images")
    if shutil.which(ENGINE) is None:
        pytest.skip(f"no container engine {ENGINE!r} on PATH")
    image = f"{IMAGE}:{tag}"
    res = _engine("image", "inspect", image, timeout=60)
    if res.returncode != 0:
        pytest.fail(f"{image} not built (make docker): {res.stderr.strip()}")
    return image


def _run(image: str, script: str, timeout: float = 900) -> str:
    """Run `sh -c script` in a fresh container with no network (all traffic stays on its lo)."""
    res = _engine("run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c", script,
                  timeout=timeout)
    assert res.returncode == 0, (f"exit {res.returncode}\n--- stdout\n{res.stdout[-4000:]}"
                                 f"\n--- stderr\n{res.stderr[-4000:]}")
    return res.stdout


def _last_json(stdout: str) -> dict:
    start = stdout.rindex("\n{") + 1 if "\n{" in stdout else stdout.index("{")
    return json.loads(stdout[start:])


@pytest.mark.parametrize("tag", TARGETS)
def test_in_container_stack(tag):
    image = _require_image(tag)
    out = _run(image, "python3 -c \"import json, tfmf, tensorflow as tf, tf_keras, "
                      "horovod.tensorflow as hvd; print(json.dumps({'tf': tf.__version__, "
                      "'keras': tf_keras.__version__, 'gloo': bool(hvd.gloo_built()), "
                      "'nccl': bool(hvd.nccl_built()), "
                      "'cuda': tf.sysconfig.get_build_info().get('cuda_version')}))\"")
    info = _last_json(out)
    assert info["tf"] == "2.18.1" and info["keras"].startswith("2.18.") and info["gloo"]
    if tag == "gpu":
        # TensorFlow's CUDA 12 libraries came from PyPI and load (no GPU here: CPU fallback).
        assert str(info["cuda"]).startswith("12"), info
        _run(image, "python3 -c 'import nvidia.cudnn, nvidia.cublas, nvidia.nccl'")


@pytest.mark.parametrize("tag", TARGETS)
def test_in_container_tfmf_train_sample(tag):
    image = _require_image(tag)
    out = _run(image, "CUDA_VISIBLE_DEVICES= tfmf train --config configs/sample_biased_mf.yaml "
                      "--set train.epochs=3 --run-dir /tmp/run && cat /tmp/run/metrics.json")
    assert "run directory: /tmp/run" in out
    metrics = _last_json(out)
    flat = json.dumps(metrics)
    rmse = [float(v) for v in re.findall(r'"rmse"\s*:\s*([0-9.eE+-]+)', flat)]
    assert rmse and all(math.isfinite(v) and 0 < v < 2.0 for v in rmse), metrics


def test_in_container_horovodrun_gloo_np2():
    image = _require_image("cpu")
    out = _run(image, "horovodrun --gloo -np 2 -H localhost:2 python -m pipelines.horovod_train "
                      "--config configs/sample_biased_mf.yaml --set train.epochs=2 "
                      "--run-dir /tmp/hvd && test -f /tmp/hvd/metrics.json", timeout=900)
    # horovodrun prefixes each line with the rank and stream, e.g. "[0]<stdout>:".
    rank0 = [re.sub(r"^\[0\]<stdout>:", "", l) for l in out.splitlines()
             if l.startswith("[0]<stdout>:")]
    result = _last_json("\n".join(rank0 or out.splitlines()))
    assert result["world_size"] == 2 and result["run_dir"] == "/tmp/hvd", result
