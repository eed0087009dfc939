#!/usr/bin/env bash
# Creates a Cloud TPU VM, directly or through a queued resource.
#
#   tpu_scripts/create.sh --name=dss-v4 --zone=us-central2-b \
#     --accelerator-type=v4-8 [--version=RUNTIME] [--project=PROJECT] \
#     [--queued] [--spot | --reserved] [--dry-run]
#
# --version defaults to the software image of the accelerator's generation:
# v4-* tpu-ubuntu2204-base, v5litepod-* (v5e) v2-alpha-tpuv5-lite,
# v5p-* v2-alpha-tpuv5, v6e-* v2-alpha-tpuv6e.
# --queued asks for the capacity through a queued resource of the same name
# (the only way to get v5e/v5p/v6e slices in many zones) and waits until it is
# ACTIVE. --dry-run prints the gcloud commands instead of running them.
# TPU_NAME, TPU_ZONE and TPU_PROJECT stand in for the flags of the same name.

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ACCELERATOR_TYPE="v4-8"
RUNTIME=""
CAPACITY=()
# Seconds between two looks at a queued resource's state.
POLL_SECONDS=30

while [[ $# -gt 0 ]]; do
  if tpu::parse_common "$@"; then
    shift "$SHIFT"
    continue
  fi
  case "$1" in
    --accelerator-type=*) ACCELERATOR_TYPE=${1#*=} ;;
    --version=*) RUNTIME=${1#*=} ;;
    --spot) CAPACITY=(--spot) ;;
    --reserved) CAPACITY=(--reserved) ;;
    *) tpu::die "unknown flag $1" ;;
  esac
  shift
done

tpu::require_target
if [[ -z "$RUNTIME" ]]; then
  RUNTIME=$(tpu::default_runtime "$ACCELERATOR_TYPE") ||
    tpu::die "no default --version for $ACCELERATOR_TYPE; pass --version"
fi

if ((QUEUED)); then
  tpu::run gcloud compute tpus queued-resources create "$NAME" \
    "${SCOPE_FLAGS[@]}" "--node-id=${NAME}" \
    "--accelerator-type=${ACCELERATOR_TYPE}" "--runtime-version=${RUNTIME}" \
    "${CAPACITY[@]}"
  describe=(gcloud compute tpus queued-resources describe "$NAME"
    "${SCOPE_FLAGS[@]}" "--format=value(state.state)")
  if ((DRY_RUN)); then
    tpu::format "${describe[@]}"
    exit 0
  fi
  while true; do
    state=$("${describe[@]}")
    printf 'queued resource %s: %s\n' "$NAME" "$state" >&2
    case "$state" in
      ACTIVE) break ;;
      FAILED | SUSPENDED) tpu::die "queued resource $NAME is $state" ;;
    esac
    sleep "$POLL_SECONDS"
  done
else
  tpu::run gcloud compute tpus tpu-vm create "$NAME" "${SCOPE_FLAGS[@]}" \
    "--accelerator-type=${ACCELERATOR_TYPE}" "--version=${RUNTIME}" \
    "${CAPACITY[@]}"
fi
