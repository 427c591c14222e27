#!/usr/bin/env bash
# Shared helpers of the launch scripts: dry-run aware command execution and argument checks.

DRY_RUN=${DRY_RUN:-0}

# run CMD...: print the command (shell-quoted) and, unless --dry-run, execute it.
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  if [[ "$DRY_RUN" != 1 ]]; then
    "$@"
  fi
}

die() {
  echo "error: $*" >&2
  exit 2
}

need() {
  local name=$1 value=$2
  [[ -n "$value" ]] || die "--$name is required (see --help)"
}
