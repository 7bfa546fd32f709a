#!/usr/bin/env bash
# One host, N processes, Gloo on CPU:
#
#   pipelines/horovodrun_local.sh NP CONFIG [horovod_train args...]
#   pipelines/horovodrun_local.sh 2 configs/sample_biased_mf.yaml --set train.epochs=5 --run-dir runs/mf-np2
#
# Runs `horovodrun --gloo -np NP -H localhost:NP python -m pipelines.horovod_train --config CONFIG ...`
# (through horovodrun_multihost.sh with the single host localhost:NP). Each rank gets cores/NP
# TensorFlow intra-op threads so ranks do not oversubscribe the CPU. A rank that dies makes
# horovodrun exit non-zero; HOROVOD_GLOO_TIMEOUT_SECONDS (default 60) bounds the wait for a peer
# that hangs. DRY_RUN=1 prints the command instead of running it.
set -euo pipefail
if [[ $# -lt 2 || ! "$1" =~ ^[0-9]+$ ]]; then
  echo "usage: $0 NP CONFIG [--set k=v ...] [--run-dir DIR] [--resume]" >&2
  exit 2
fi
NP="$1"; shift
CORES="$(nproc 2>/dev/null || echo 1)"
THREADS=$(( CORES / NP > 0 ? CORES / NP : 1 ))
export TF_NUM_INTRAOP_THREADS="${TF_NUM_INTRAOP_THREADS:-$THREADS}"
export TF_NUM_INTEROP_THREADS="${TF_NUM_INTEROP_THREADS:-1}"
export HOROVOD_GLOO_TIMEOUT_SECONDS="${HOROVOD_GLOO_TIMEOUT_SECONDS:-60}"
export START_TIMEOUT="${START_TIMEOUT:-60}"
USE_GLOO=1 exec bash "$(dirname "$0")/horovodrun_multihost.sh" "localhost:$NP" "$@"
