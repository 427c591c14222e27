#!/usr/bin/env bash
# Train imgcls on one GPU machine (this one, or another over ssh): install JAX with CUDA in a
# virtual environment, run, and (remote) copy the workdir back.
#
#   launch/gpu_node.sh --config=configs/pollen.py --workdir=runs/pollen [--host=user@gpu-box]
#       [--cuda=cuda12] [--dry-run] [-- --config.data.dir=/data/pollen ...]
set -euo pipefail
source "$(dirname "$0")/common.sh"

host="" config="" workdir="" cuda="cuda12"
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --host=*) host=${1#*=} ;;
    --config=*) config=${1#*=} ;;
    --workdir=*) workdir=${1#*=} ;;
    --cuda=*) cuda=${1#*=} ;;
    --dry-run) DRY_RUN=1 ;;
    --help|-h) sed -n '2,7p' "$0"; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument $1" ;;
  esac
  shift
done
need config "$config"; need workdir "$workdir"

install="python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[$cuda]==0.10.2'"
train=".venv/bin/python -m imgcls.main --config=$config --workdir=$workdir"
for arg in "${extra[@]}"; do
  train+=" $(printf '%q' "$arg")"
done

if [[ -z "$host" ]]; then
  cd "$(git rev-parse --show-toplevel)"
  run bash -c "$install"
  run bash -c "$train"
else
  run rsync -a --exclude .venv --exclude runs "$(git rev-parse --show-toplevel)/" "$host:imgcls/"
  run ssh "$host" "cd imgcls && $install && $train"
  run mkdir -p "$(dirname "$workdir")"
  run rsync -a "$host:imgcls/$workdir" "$(dirname "$workdir")/"
fi
