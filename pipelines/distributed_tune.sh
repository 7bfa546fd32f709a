#!/usr/bin/env bash
# Distributed KerasTuner search on this machine: one chief (serves the oracle over gRPC) and
# N workers (run trials), using KerasTuner's own KERASTUNER_TUNER_ID / KERASTUNER_ORACLE_IP /
# KERASTUNER_ORACLE_PORT protocol. Workers on other hosts join with the same env
# (KERASTUNER_TUNER_ID=tunerN, KERASTUNER_ORACLE_IP=<chief address>) and `python -m tfmf.tuning`.
#
# Usage: pipelines/distributed_tune.sh CONFIG OUT_DIR [N_WORKERS] [--set key=value ...]
#   e.g. pipelines/distributed_tune.sh configs/sample_biased_mf_tune.yaml runs/tune-dist 2
# Env: PYTHON (default .venv/bin/python or python3), ORACLE_IP (127.0.0.1), ORACLE_PORT (a
#   free port). The chief is told the worker count (TFMF_TUNE_WORKERS) and exits once every
#   worker has been told to stop.
# Logs: OUT_DIR/logs/{chief,tuner0,...}.log. Report (trials.csv, best_config.yaml, plots) is
# written by the chief into OUT_DIR. Exit code: non-zero if any process failed.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,14p' "$0"; exit 2
fi
CONFIG=$1; OUT=$2; shift 2
WORKERS=2
if [[ $# -gt 0 && $1 != --* ]]; then WORKERS=$1; shift; fi
EXTRA=()
while [[ $# -gt 0 ]]; do EXTRA+=("$1"); shift; done

HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$HERE/.venv/bin/python}
[[ -x $PY ]] || PY=python3
IP=${ORACLE_IP:-127.0.0.1}
PORT=${ORACLE_PORT:-$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
mkdir -p "$OUT/logs"

PIDS=()
cleanup() {
  # Stop only the processes this script started.
  for pid in "${PIDS[@]:-}"; do
    [[ -n $pid ]] && kill "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT INT TERM

launch() {  # launch TUNER_ID: one search process with KerasTuner's distribution env
  KERASTUNER_TUNER_ID=$1 KERASTUNER_ORACLE_IP=$IP KERASTUNER_ORACLE_PORT=$PORT \
    "$PY" -m tfmf.tuning --config "$CONFIG" --out "$OUT" "${EXTRA[@]}" >"$OUT/logs/$1.log" 2>&1 &
  PIDS+=($!)
}

echo "oracle at $IP:$PORT; chief + $WORKERS worker(s); logs in $OUT/logs"
# Workers block (gRPC wait_for_ready, short reconnect back-off) until the chief serves; the
# chief knows how many workers to expect and serves until each has been told to stop.
WORKER_PIDS=()
for ((i = 0; i < WORKERS; i++)); do launch "tuner$i"; WORKER_PIDS+=("${PIDS[-1]}"); done
TFMF_TUNE_WORKERS=$WORKERS launch chief
CHIEF_PID=${PIDS[-1]}

status=0
for pid in "${WORKER_PIDS[@]}"; do wait "$pid" || status=1; done
wait "$CHIEF_PID" || status=1
PIDS=()
grep -h "trial " "$OUT"/logs/tuner*.log || true
tail -n 1 "$OUT/logs/chief.log"
exit $status
