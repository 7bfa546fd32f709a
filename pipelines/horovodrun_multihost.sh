#!/usr/bin/env bash
# Several hosts (GPU or CPU):
#
#   pipelines/horovodrun_multihost.sh HOSTS CONFIG [horovod_train args...]
#   pipelines/horovodrun_multihost.sh host1:4,host2:4 configs/ml20m_mult_vae.yaml --run-dir /shared/runs/vae
#
# NP is the sum of the slots in HOSTS. Requirements: passwordless ssh from this host to every
# host, the same checkout and venv path on every host, and Horovod built with
#   HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_WITH_TENSORFLOW=1 pip install --no-build-isolation horovod==0.28.1
# on GPU hosts, so gradient allreduce/allgather run on NCCL (one GPU per rank, pinned by
# tfmf.distributed.init from the local rank). The controller is horovodrun's default (MPI when
# Horovod was built with it); USE_GLOO=1 adds --gloo (no MPI needed; tensors still go over
# NCCL on GPU builds, Gloo on CPU builds). Only rank 0 writes the run directory, so it needs to
# exist on host 1 only (use shared storage if you want to resume from another host).
# Extra environment: SSH_PORT, NETWORK_INTERFACE (e.g. eth0), START_TIMEOUT; DRY_RUN=1 prints.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [[ $# -lt 2 ]]; then
  echo "usage: $0 HOST1:SLOTS[,HOST2:SLOTS...] CONFIG [--set k=v ...] [--run-dir DIR]" >&2
  exit 2
fi
HOSTS="$1"; CONFIG="$2"; shift 2
NP=0
IFS=',' read -ra ENTRIES <<< "$HOSTS"
for entry in "${ENTRIES[@]}"; do
  slots="${entry##*:}"
  [[ "$entry" == *:* && "$slots" =~ ^[0-9]+$ ]] || { echo "bad host entry '$entry' (want host:slots)" >&2; exit 2; }
  NP=$(( NP + slots ))
done
PY="${PYTHON:-$ROOT/.venv/bin/python}"
HOROVODRUN="${HOROVODRUN:-$(dirname "$PY")/horovodrun}"
export HOROVOD_GLOO_TIMEOUT_SECONDS="${HOROVOD_GLOO_TIMEOUT_SECONDS:-120}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
CMD=("$HOROVODRUN")
[[ "${USE_GLOO:-0}" == "1" ]] && CMD+=(--gloo)
CMD+=(-np "$NP" -H "$HOSTS" --start-timeout "${START_TIMEOUT:-120}")
[[ -n "${SSH_PORT:-}" ]] && CMD+=(-p "$SSH_PORT")
[[ -n "${NETWORK_INTERFACE:-}" ]] && CMD+=(--network-interface "$NETWORK_INTERFACE")
CMD+=("$PY" -m pipelines.horovod_train --config "$CONFIG" "$@")
if [[ "${DRY_RUN:-0}" == "1" ]]; then
  echo "${CMD[*]}"
  exit 0
fi
cd "$ROOT"
exec "${CMD[@]}"
