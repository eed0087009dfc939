#!/usr/bin/env bash
# Deletes a TPU VM, or the queued resource (and its VM) made by create.sh.
#
#   tpu_scripts/delete.sh --name=dss-v4 --zone=us-central2-b [--queued] \
#     [--project=PROJECT] [--dry-run]
#
# Deletes without asking (--quiet): the VM's disks go with it, while
# checkpoints and logs written to gs:// stay.

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

while [[ $# -gt 0 ]]; do
  if tpu::parse_common "$@"; then
    shift "$SHIFT"
    continue
  fi
  case "$1" in
    *) tpu::die "unknown flag $1" ;;
  esac
done
tpu::require_target

if ((QUEUED)); then
  # --force deletes the node the queued resource holds as well.
  tpu::run gcloud compute tpus queued-resources delete "$NAME" \
    "${SCOPE_FLAGS[@]}" --force --quiet
else
  tpu::run gcloud compute tpus tpu-vm delete "$NAME" "${SCOPE_FLAGS[@]}" \
    --quiet
fi
