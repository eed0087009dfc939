#!/usr/bin/env bash
# Streams the log of a job that tpu_scripts/launch.sh started.
#
#   tpu_scripts/logs.sh --name=dss-v4 --zone=us-central2-b \
#     --run-name=cqa_t5_1_1_base_dss_gold_train [--worker=0] [--dry-run]
#
# Without --run-name it lists the logs on the worker. Ctrl-C stops the
# stream, not the job. --worker picks another worker of a pod slice.

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUN_NAME=""
WORKER=0
while [[ $# -gt 0 ]]; do
  if tpu::parse_common "$@"; then
    shift "$SHIFT"
    continue
  fi
  case "$1" in
    --run-name=*) RUN_NAME=${1#*=} ;;
    --worker=*) WORKER=${1#*=} ;;
    *) tpu::die "unknown flag $1" ;;
  esac
  shift
done
tpu::require_target

if [[ -z "$RUN_NAME" ]]; then
  tpu::ssh "$WORKER" "ls -lt ~/dss-logs"
else
  tpu::ssh "$WORKER" "tail -n +1 -F ~/dss-logs/$(tpu::quote "$RUN_NAME").log"
fi
