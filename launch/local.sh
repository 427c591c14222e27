#!/usr/bin/env bash
# Run imgcls as N processes on this machine (127.0.0.1), as on N hosts: each process gets its
# share of the devices and of every batch; jax.distributed connects them; process 0 writes.
#
#   launch/local.sh --processes=2 --config=configs/digits.py --workdir=runs/digits-2p
#       [--port=12355] [--devices-per-process=1] [--dry-run] [-- --config.train.epochs=3 ...]
set -euo pipefail
source "$(dirname "$0")/common.sh"

processes=2 port=12355 devices=1 config="" workdir=""
python=${PYTHON:-.venv/bin/python}
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --processes=*) processes=${1#*=} ;;
    --port=*) port=${1#*=} ;;
    --devices-per-process=*) devices=${1#*=} ;;
    --config=*) config=${1#*=} ;;
    --workdir=*) workdir=${1#*=} ;;
    --dry-run) DRY_RUN=1 ;;
    --help|-h) sed -n '2,7p' "$0"; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument $1" ;;
  esac
  shift
done
need config "$config"; need workdir "$workdir"
[[ "$processes" =~ ^[0-9]+$ && "$processes" -ge 1 ]] || die "--processes must be a positive integer"

pids=()
for ((i = 0; i < processes; i++)); do
  env_vars=(
    IMGCLS_COORDINATOR="127.0.0.1:$port" IMGCLS_NUM_PROCESSES="$processes" IMGCLS_PROCESS_ID="$i"
    XLA_FLAGS="--xla_force_host_platform_device_count=$devices"
  )
  if [[ "$DRY_RUN" == 1 ]]; then
    run env "${env_vars[@]}" "$python" -m imgcls.main --config="$config" --workdir="$workdir" "${extra[@]}"
  else
    run env "${env_vars[@]}" "$python" -m imgcls.main --config="$config" --workdir="$workdir" "${extra[@]}" &
    pids+=($!)
  fi
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit "$status"
