#!/usr/bin/env bash
# Train imgcls on a Cloud TPU VM or pod slice: create it, copy the code, install, run the same
# command on every worker (jax.distributed finds the others), collect the workdir, delete it.
#
#   launch/tpu_vm.sh --name=imgcls-v4 --zone=us-central2-b --type=v4-16 \
#       --config=configs/pollen.py --workdir=runs/pollen [--project=P] [--version=tpu-ubuntu2204-base] \
#       [--data=gs://bucket/pollen] [--keep] [--dry-run] [-- --config.train.epochs=5 ...]
#
# Steps can be run one at a time with --only=create,copy,install,run,collect,delete.
# Data: --data is copied to every worker (gcloud storage cp -r) and --config.data.dir points at it.
set -euo pipefail
source "$(dirname "$0")/common.sh"

name="" zone="" type="" project="" version="tpu-ubuntu2204-base" config="" workdir="" data="" keep=0
only="create,copy,install,run,collect,delete"
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) name=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --type=*) type=${1#*=} ;;
    --project=*) project=${1#*=} ;;
    --version=*) version=${1#*=} ;;
    --config=*) config=${1#*=} ;;
    --workdir=*) workdir=${1#*=} ;;
    --data=*) data=${1#*=} ;;
    --only=*) only=${1#*=} ;;
    --keep) keep=1 ;;
    --dry-run) DRY_RUN=1 ;;
    --help|-h) sed -n '2,13p' "$0"; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument $1" ;;
  esac
  shift
done
need name "$name"; need zone "$zone"; need type "$type"; need config "$config"; need workdir "$workdir"

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$zone")
[[ -n "$project" ]] && where+=(--project="$project")
remote_dir=imgcls
train=(.venv/bin/python -m imgcls.main --config="$config" --workdir="$workdir")
if [[ -n "$data" ]]; then
  train+=(--config.data.dir=data)
fi
train+=("${extra[@]}")
train_line="cd $remote_dir && IMGCLS_DISTRIBUTED=1$(printf ' %q' "${train[@]}")"
archive=${TMPDIR:-/tmp}/imgcls-$name.tar.gz

step() { [[ ",$only," == *",$1,"* ]]; }

if step create; then
  run "${gcloud_tpu[@]}" create "$name" "${where[@]}" --accelerator-type="$type" --version="$version"
fi
if step copy; then  # The committed code only: no virtual environment, runs or data.
  run git -C "$(git rev-parse --show-toplevel)" archive --format=tar.gz -o "$archive" HEAD
  run "${gcloud_tpu[@]}" scp --worker=all "${where[@]}" "$archive" "$name:imgcls.tar.gz"
  run "${gcloud_tpu[@]}" ssh "$name" --worker=all "${where[@]}" \
    --command="mkdir -p $remote_dir && tar -xzf imgcls.tar.gz -C $remote_dir"
  if [[ -n "$data" ]]; then
    run "${gcloud_tpu[@]}" ssh "$name" --worker=all "${where[@]}" \
      --command="gcloud storage cp -r $data $remote_dir/data"
  fi
fi
if step install; then
  run "${gcloud_tpu[@]}" ssh "$name" --worker=all "${where[@]}" \
    --command="cd $remote_dir && python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]==0.10.2'"
fi
if step run; then
  run "${gcloud_tpu[@]}" ssh "$name" --worker=all "${where[@]}" \
    --command="$train_line"
fi
if step collect; then
  run mkdir -p "$(dirname "$workdir")"
  run "${gcloud_tpu[@]}" scp --recurse --worker=0 "${where[@]}" "$name:$remote_dir/$workdir" "$(dirname "$workdir")/"
fi
if step delete && [[ "$keep" != 1 ]]; then
  run "${gcloud_tpu[@]}" delete "$name" "${where[@]}" --quiet
fi
