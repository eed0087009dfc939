#!/usr/bin/env bash
# Builds the annotated TFDS datasets here and copies them to GCS, where the
# TPU workers read them (launch.sh --tfds-data-dir=gs://...).
#
#   tpu_scripts/data.sh --gcs-dir=gs://BUCKET/tfds \
#     [--datasets=cqa,svamp,anli1,esnli] [--source=palm] \
#     [--local-dir=~/tensorflow_datasets] [--python=python3] [--dry-run]
#
# Builds dss_annotated/<dataset>_<source> for each dataset with
# dss_jax.datasets.build_annotated: source `palm` is the paper's released
# PaLM-540B outputs (the official datasets.zip, downloaded once, or
# $DSS_PAPER_DATA_DIR); other sources are annotation runs of
# `python -m dss_jax.annotate`. --datasets='' only copies --local-dir.
# --python is an interpreter with this project installed. Needs no TPU.

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

GCS_DIR=""
DATASETS="cqa,svamp,anli1,esnli"
SOURCE="palm"
LOCAL_DIR="${TFDS_DATA_DIR:-${HOME}/tensorflow_datasets}"
PYTHON="python3"
while [[ $# -gt 0 ]]; do
  if tpu::parse_common "$@"; then
    shift "$SHIFT"
    continue
  fi
  case "$1" in
    --gcs-dir=*) GCS_DIR=${1#*=} ;;
    --datasets=*) DATASETS=${1#*=} ;;
    --source=*) SOURCE=${1#*=} ;;
    --local-dir=*) LOCAL_DIR=${1#*=} ;;
    --python=*) PYTHON=${1#*=} ;;
    *) tpu::die "unknown flag $1" ;;
  esac
  shift
done
[[ "$GCS_DIR" == gs://* ]] || tpu::die "--gcs-dir=gs://... is required"

IFS=',' read -r -a datasets <<<"$DATASETS"
for dataset in "${datasets[@]}"; do
  tpu::run "$PYTHON" -c "from dss_jax import datasets; \
datasets.build_annotated('${dataset}', '${SOURCE}', data_dir='${LOCAL_DIR}')"
done
tpu::run gcloud storage rsync --recursive "${LOCAL_DIR}/dss_annotated" \
  "${GCS_DIR%/}/dss_annotated"
