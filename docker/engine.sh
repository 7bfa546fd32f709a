#!/usr/bin/env bash
# The container engine with the flags a sandboxed root without full privileges needs; used by
# the Makefile's docker targets and tests/test_docker.py, so both invoke the engine the same way.
#
#   docker/engine.sh build|run|image|... ARGS...      ENGINE=podman (default) or docker
#
# podman, as measured on this project's machines (see docker/README.md, "Engine notes"):
#   - crun refuses cgroup v1/v2 hybrid hosts ("cgroups in hybrid mode not supported"): use runc.
#   - the sandbox lacks CAP_SYS_RESOURCE, so podman's default rlimits (nofile 1048576, a large
#     nproc) cannot be set ("setrlimit RLIMIT_NOFILE: Operation not permitted"): pass limits no
#     higher than the host's hard limits.
# Set PODMAN_RUNTIME= (empty) or PODMAN_LIMITS= to drop either where they are not needed.
set -euo pipefail
ENGINE="${ENGINE:-podman}"
[[ $# -ge 1 ]] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }
cmd="$1"; shift

if [[ "$ENGINE" != podman ]]; then
  exec "$ENGINE" "$cmd" "$@"
fi

global=()
if [[ -n "${PODMAN_RUNTIME-runc}" ]] && command -v "${PODMAN_RUNTIME:-runc}" >/dev/null; then
  global=(--runtime "${PODMAN_RUNTIME:-runc}")
fi
limits=()
if [[ -z "${PODMAN_LIMITS+x}" ]]; then
  nofile="$(ulimit -Hn)"
  [[ "$nofile" == unlimited || "$nofile" -gt 1048576 ]] && nofile=1048576
  # 32768 processes: enough for TensorFlow's thread pools in a few ranks, and within what this
  # sandbox lets a container set.
  limits=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=32768:32768")
else
  read -r -a limits <<< "$PODMAN_LIMITS"
fi
case "$cmd" in
  build|run|create) exec podman "${global[@]}" "$cmd" "${limits[@]}" "$@" ;;
  *)                exec podman "${global[@]}" "$cmd" "$@" ;;
esac
