# shellcheck shell=bash
# Shared helpers of the Cloud TPU scripts; sourced, never run.
#
# Every script here parses its flags with `tpu::parse_common` and runs each
# command through `tpu::run`, so that `--dry-run` prints the exact commands
# (one per line, shell-quoted, ready to paste) instead of running them.

# The globals set here (QUEUED, SHIFT, ...) are read by the sourcing scripts.
# shellcheck disable=SC2034

set -euo pipefail

DRY_RUN=0
NAME="${TPU_NAME:-}"
ZONE="${TPU_ZONE:-}"
PROJECT="${TPU_PROJECT:-}"
QUEUED=0

# Quotes one argument for a POSIX shell only when it needs it, so printed
# commands stay readable and can still be pasted: bare when safe, else in
# single quotes, else (it holds a single quote) in double quotes when nothing
# in it expands there, else in single quotes with each ' written '\''.
tpu::quote() {
  local arg=$1
  if [[ -n "$arg" && "$arg" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
    printf '%s' "$arg"
  elif [[ "$arg" != *\'* ]]; then
    printf "'%s'" "$arg"
  elif [[ "$arg" != *[\$\`\\!]* ]]; then
    printf '"%s"' "${arg//\"/\\\"}"
  else
    printf "'%s'" "${arg//\'/\'\\\'\'}"
  fi
}

# Prints a command as one shell line.
tpu::format() {
  local out="" arg
  for arg in "$@"; do
    out+="${out:+ }$(tpu::quote "$arg")"
  done
  printf '%s\n' "$out"
}

# Runs a command, or only prints it under --dry-run. Echoes it to stderr
# first when running, so logs show what ran.
tpu::run() {
  if ((DRY_RUN)); then
    tpu::format "$@"
  else
    printf '+ %s\n' "$(tpu::format "$@")" >&2
    "$@"
  fi
}

tpu::die() {
  printf '%s: %s\n' "$(basename "$0")" "$*" >&2
  exit 2
}

# The flags of `gcloud compute tpus ...` that every call repeats.
tpu::scope_flags() {
  SCOPE_FLAGS=("--zone=${ZONE}")
  if [[ -n "$PROJECT" ]]; then
    SCOPE_FLAGS+=("--project=${PROJECT}")
  fi
}

# Parses one common flag; returns 1 when the flag is not a common one.
# Sets SHIFT to the number of arguments consumed.
tpu::parse_common() {
  SHIFT=1
  case "$1" in
    -h | --help)
      # The calling script's header comment is its usage.
      sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
      exit 0
      ;;
    --dry-run) DRY_RUN=1 ;;
    --queued) QUEUED=1 ;;
    --name=* | --zone=* | --project=*)
      tpu::set_common "${1%%=*}" "${1#*=}"
      ;;
    --name | --zone | --project)
      [[ $# -ge 2 ]] || tpu::die "$1 needs a value"
      tpu::set_common "$1" "$2"
      SHIFT=2
      ;;
    *) return 1 ;;
  esac
}

tpu::set_common() {
  case "$1" in
    --name) NAME=$2 ;;
    --zone) ZONE=$2 ;;
    --project) PROJECT=$2 ;;
  esac
}

# Fails unless --name and --zone (or TPU_NAME and TPU_ZONE) are set.
tpu::require_target() {
  [[ -n "$NAME" ]] || tpu::die "--name (or TPU_NAME) is required"
  [[ -n "$ZONE" ]] || tpu::die "--zone (or TPU_ZONE) is required"
  tpu::scope_flags
}

# Runs a shell command on the TPU VM's workers ("all" or a worker index).
tpu::ssh() {
  local worker=$1 command=$2
  tpu::run gcloud compute tpus tpu-vm ssh "$NAME" "${SCOPE_FLAGS[@]}" \
    "--worker=${worker}" "--command=${command}"
}

# The software image matching an accelerator type (Cloud TPU docs, "TPU
# software versions"): v4 runs the Ubuntu 22.04 base image; v5e, v5p and
# v6e need their own.
tpu::default_runtime() {
  case "$1" in
    v4-*) echo "tpu-ubuntu2204-base" ;;
    v5litepod-* | v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    *) return 1 ;;
  esac
}
