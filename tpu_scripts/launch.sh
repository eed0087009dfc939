#!/usr/bin/env bash
# Starts a training, eval or inference job on every worker of a TPU VM.
#
#   tpu_scripts/launch.sh --name=dss-v4 --zone=us-central2-b \
#     --job=train --trainer=t5x --model=t5_1_1_base --method=dss_gold \
#     --dataset=cqa --model-dir=gs://BUCKET/dss/cqa_base_dss_gold \
#     --tfds-data-dir=gs://BUCKET/tfds [--recipe=mixture|official] \
#     [--follow] [--dry-run] [-- EXTRA...]
#
#   tpu_scripts/launch.sh ... --job=eval --method=dss_gold \
#     --checkpoint=gs://BUCKET/dss/cqa_base_dss_gold/checkpoint_10000 \
#     --output-dir=gs://BUCKET/dss/cqa_base_dss_gold/eval
#
# --job: train, eval or infer. --trainer: t5x (python -m t5x.train with
# gin_configs/t5x/) or builtin (python -m dss_jax.train with gin_configs/runs/).
# --model: a file name of gin_configs/t5x/models/ (t5_1_1_base, flan_t5_xl,
# ...). --method: standard_finetune, standard_distill, dss_gold, dss_teacher.
# --dataset: a built-in card (cqa, svamp, anli1, esnli, arith) or the file of
# a card of your own (--dataset=path/to/mycard.yaml). A card file is copied
# to ~/dss-tasks/ on every worker and named there in DSS_TASK_CARDS, so the
# workers' `import dss_jax.seqio_tasks` registers it; for --trainer=t5x the
# script writes its dataset gin (as gin_configs/t5x/datasets/cqa.gin) beside
# it. --source: the annotation source (default palm, the paper's released
# PaLM outputs); its TFDS dataset must be in --tfds-data-dir.
# --recipe (DSS methods, --job=train): mixture (default; the sampled SeqIO
# mixture, label rate 1 and rationale rate lambda, at twice the baselines'
# batch: 128 sequences a step, XXL 64) or official (the paper's code exactly:
# 64 inputs a step, XXL 32, each with its label and its rationale example,
# loss alpha * L_label + (1 - alpha) * L_rationale). Baselines train 64
# examples a step (XXL 32). Nothing is packed. Eval and infer are the same
# for both recipes (the label task).
# Arguments after `--` go to the Python command unchanged (gin overrides such
# as --gin.TRAIN_FRACTION=0.125).
#
# The job runs in the background on every worker (so an SSH drop does not
# stop it), writing ~/dss-logs/<run name>.log there; --follow then streams
# worker 0's log (tpu_scripts/logs.sh does that later). Needs
# tpu_scripts/install.sh first.

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

JOB="train"
TRAINER="t5x"
MODEL="t5_1_1_base"
METHOD="dss_gold"
RECIPE="mixture"
DATASET="cqa"
SOURCE="palm"
MODEL_DIR=""
TFDS_DATA_DIR=""
CHECKPOINT=""
OUTPUT_DIR=""
RUN_NAME=""
FOLLOW=0
EXTRA=()
GIN_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../gin_configs" && pwd)"

while [[ $# -gt 0 ]]; do
  if tpu::parse_common "$@"; then
    shift "$SHIFT"
    continue
  fi
  case "$1" in
    --job=*) JOB=${1#*=} ;;
    --trainer=*) TRAINER=${1#*=} ;;
    --model=*) MODEL=${1#*=} ;;
    --method=*) METHOD=${1#*=} ;;
    --recipe=*) RECIPE=${1#*=} ;;
    --dataset=*) DATASET=${1#*=} ;;
    --source=*) SOURCE=${1#*=} ;;
    --model-dir=*) MODEL_DIR=${1#*=} ;;
    --tfds-data-dir=*) TFDS_DATA_DIR=${1#*=} ;;
    --checkpoint=*) CHECKPOINT=${1#*=} ;;
    --output-dir=*) OUTPUT_DIR=${1#*=} ;;
    --run-name=*) RUN_NAME=${1#*=} ;;
    --follow) FOLLOW=1 ;;
    --)
      shift
      EXTRA=("$@")
      break
      ;;
    *) tpu::die "unknown flag $1" ;;
  esac
  shift
done
tpu::require_target

case "$JOB" in
  train | eval | infer) ;;
  *) tpu::die "--job: train, eval or infer" ;;
esac
case "$TRAINER" in
  t5x | builtin) ;;
  *) tpu::die "--trainer: t5x or builtin" ;;
esac
case "$METHOD" in
  standard_finetune | standard_distill | dss_gold | dss_teacher) ;;
  *)
    tpu::die "--method: standard_finetune, standard_distill, dss_gold or" \
      "dss_teacher"
    ;;
esac
case "$RECIPE" in
  mixture) ;;
  official)
    [[ "$METHOD" == dss_* ]] ||
      tpu::die "--recipe=official trains dss_gold or dss_teacher, not $METHOD"
    ;;
  *) tpu::die "--recipe: mixture or official" ;;
esac
MODEL_GIN="${GIN_DIR}/t5x/models/${MODEL}.gin"
[[ -f "$MODEL_GIN" ]] ||
  tpu::die "no model file gin_configs/t5x/models/${MODEL}.gin"
if [[ "$JOB" == train ]]; then
  [[ -n "$MODEL_DIR" ]] || tpu::die "--model-dir is required for --job=train"
else
  [[ -n "$CHECKPOINT" ]] || tpu::die "--checkpoint is required for --job=$JOB"
  [[ -n "$OUTPUT_DIR" ]] || tpu::die "--output-dir is required for --job=$JOB"
fi
# The card: a built-in one, or a file of the user's, named by its `name:`.
TASKS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../tasks" && pwd)"
CARD_FILE=""
if [[ "$DATASET" == *.yaml || "$DATASET" == *.yml || "$DATASET" == */* ]]; then
  [[ -f "$DATASET" ]] || tpu::die "--dataset=$DATASET: no such card file"
  CARD_FILE=$DATASET
  # `name: my_task`, quoted or not (the card schema's name pattern).
  quote="[\"']\{0,1\}"
  name_line="^name:[[:space:]]*${quote}\([a-z][a-z0-9_]*\)${quote}[[:space:]]*$"
  DATASET=$(sed -n "s/${name_line}/\1/p" "$CARD_FILE" | head -n 1)
  [[ -n "$DATASET" ]] ||
    tpu::die "--dataset=$CARD_FILE: no 'name:' line (e.g. name: my_task)"
  if [[ -f "${TASKS_DIR}/${DATASET}.yaml" ]]; then
    # The same rule as dss_jax.cards: only a byte-exact copy may share a
    # built-in card's name.
    cmp -s "$CARD_FILE" "${TASKS_DIR}/${DATASET}.yaml" ||
      tpu::die "--dataset=$CARD_FILE: name: ${DATASET} is the built-in" \
        "card tasks/${DATASET}.yaml; rename your card"
    CARD_FILE=""
  fi
elif [[ ! -f "${TASKS_DIR}/${DATASET}.yaml" ]]; then
  tpu::die "--dataset=$DATASET: no built-in card tasks/${DATASET}.yaml;" \
    "pass your card's file (--dataset=path/to/${DATASET}.yaml)"
fi
DATASET_GIN="${GIN_DIR}/t5x/datasets/${DATASET}.gin"
if [[ -n "$CARD_FILE" || ! -f "$DATASET_GIN" ]]; then
  DATASET_GIN=""
fi
if [[ "$RECIPE" == official ]]; then recipe_tag=_official; else recipe_tag=""; fi
RUN_NAME=${RUN_NAME:-${DATASET}_${MODEL}_${METHOD}${recipe_tag}_${JOB}}

# SeqIO names (dss_jax.seqio_tasks): what the method trains on, and the task
# that scores it (labels only; DSS students get the "predict: " prefix).
gold_task="dss_${DATASET}_gold_finetune"
case "$METHOD" in
  standard_finetune)
    train_task=$gold_task
    eval_task=$gold_task
    ;;
  standard_distill)
    train_task="dss_${DATASET}_${SOURCE}_distill"
    eval_task=$gold_task
    ;;
  dss_*)
    train_task="dss_${DATASET}_${SOURCE}"
    eval_task="dss_${DATASET}_${SOURCE}_label"
    ;;
esac
if [[ "$METHOD" == dss_* ]]; then kind=dss; else kind=standard; fi

gin_str() { printf "%s='%s'" "$1" "$2"; }

# What goes to ~/dss-tasks/ on the workers: the user's card, and for T5X a
# dataset gin where none ships (written here, as the shipped ones are).
STAGE=""
if [[ -n "$CARD_FILE" || ("$TRAINER" == t5x && -z "$DATASET_GIN") ]]; then
  STAGE=$(mktemp -d "${TMPDIR:-/tmp}/dss-tasks.XXXXXX")
  if [[ -n "$CARD_FILE" ]]; then
    cp "$CARD_FILE" "${STAGE}/${DATASET}.yaml"
  fi
  if [[ "$TRAINER" == t5x ]]; then
    base="dss_${DATASET}_${SOURCE}"
    cat >"${STAGE}/${DATASET}.gin" <<EOF
# ${DATASET}: the SeqIO task names for the T5X run, eval and infer files
# (source ${SOURCE}), written by tpu_scripts/launch.sh. The card is
# registered by \`import dss_jax.seqio_tasks\`, which reads DSS_TASK_CARDS.
# No REQUIRED macros.

MIXTURE_OR_TASK_MODULE = 'dss_jax.seqio_tasks'
DSS_MIXTURE = '${base}'
DSS_LABEL_TASK = '${base}_label'
DSS_RATIONALE_TASK = '${base}_rationale'
DSS_PAIRED_TASK = '${base}_paired'
DISTILL_TASK = '${base}_distill'
GOLD_FINETUNE_TASK = 'dss_${DATASET}_gold_finetune'
EOF
  fi
fi

command=()
if [[ "$TRAINER" == t5x ]]; then
  models=(--gin_file="gin_configs/t5x/models/${MODEL}.gin")
  if [[ -n "$DATASET_GIN" ]]; then
    names=(--gin_file="gin_configs/t5x/datasets/${DATASET}.gin")
  else
    # Relative to ~/dss-jax, where the job starts.
    names=(--gin_file="../dss-tasks/${DATASET}.gin")
  fi
  if [[ "$SOURCE" != palm && -n "$DATASET_GIN" ]]; then
    base="dss_${DATASET}_${SOURCE}"
    names+=("$(gin_str --gin.DSS_MIXTURE "$base")"
      "$(gin_str --gin.DSS_LABEL_TASK "${base}_label")"
      "$(gin_str --gin.DSS_RATIONALE_TASK "${base}_rationale")"
      "$(gin_str --gin.DSS_PAIRED_TASK "${base}_paired")"
      "$(gin_str --gin.DISTILL_TASK "${base}_distill")")
  fi
  case "$JOB" in
    train)
      # The T5X files set each method's batch (dss_gold.gin: the mixture at
      # twice the inputs; dss_official*.gin: paired inputs; the model file
      # the paper's 64 or, for XXL, 32 inputs).
      run_file=$METHOD
      if [[ "$RECIPE" == official ]]; then
        run_file=dss_official
        if [[ "$METHOD" == dss_teacher ]]; then
          run_file=dss_official_teacher
        fi
      fi
      command=(python -m t5x.train "${models[@]}"
        --gin_file="gin_configs/t5x/${run_file}.gin" "${names[@]}"
        "$(gin_str --gin.MODEL_DIR "$MODEL_DIR")")
      ;;
    eval | infer)
      command=(python -m "t5x.${JOB}" "${models[@]}"
        --gin_file="gin_configs/t5x/${JOB}_${kind}.gin" "${names[@]}"
        "$(gin_str --gin.CHECKPOINT_PATH "$CHECKPOINT")"
        "$(gin_str "--gin.${JOB^^}_OUTPUT_DIR" "$OUTPUT_DIR")")
      ;;
  esac
  if [[ -n "$TFDS_DATA_DIR" ]]; then
    command+=(--tfds_data_dir="$TFDS_DATA_DIR")
  fi
  command+=(--alsologtostderr)
else
  models=(--gin_file="models/${MODEL}.gin")
  case "$JOB" in
    train)
      # One source of truth for the public checkpoints: the T5X model file.
      pretrained=$(sed -n \
        "s/^PRETRAINED_CHECKPOINT_PATH = '\(.*\)'$/\1/p" "$MODEL_GIN")
      # BATCH_SIZE counts sequences: runs/train.gin (the DSS mixture) 128,
      # runs/train_official.gin 128 (64 inputs, both halves of each),
      # runs/finetune.gin (baselines) 64.
      if [[ "$kind" == standard ]]; then
        run_file=finetune
        xxl_batch=32
      else
        run_file=train
        if [[ "$RECIPE" == official ]]; then run_file=train_official; fi
        xxl_batch=64
      fi
      command=(python -m dss_jax.train "${models[@]}"
        --gin_file="runs/${run_file}.gin"
        "$(gin_str --gin.MODEL_DIR "$MODEL_DIR")"
        "$(gin_str --gin.MIXTURE_OR_TASK_NAME "$train_task")"
        "$(gin_str --gin.INITIAL_CHECKPOINT_PATH "$pretrained")")
      if [[ "$MODEL" == *_xxl ]]; then
        # The paper's XXL recipe, as gin_configs/t5x/models/*_xxl.gin: 32
        # inputs a step (64 sequences for DSS), 4k steps.
        command+=("--gin.BATCH_SIZE=${xxl_batch}" --gin.TRAIN_STEPS=4000)
      fi
      if [[ "$METHOD" == dss_teacher ]]; then
        command+=("$(gin_str \
          --gin.dss_jax.seqio_tasks.options.label_source teacher)")
      fi
      ;;
    eval | infer)
      command=(python -m "dss_jax.${JOB}" "${models[@]}"
        --gin_file="runs/${JOB}.gin"
        "$(gin_str --gin.CHECKPOINT_PATH "$CHECKPOINT")"
        "$(gin_str --gin.MIXTURE_OR_TASK_NAME "$eval_task")")
      if [[ "$JOB" == eval ]]; then
        command+=("$(gin_str --gin.EVAL_OUTPUT_DIR "$OUTPUT_DIR")")
      else
        # runs/infer.gin writes one JSONL file, not a folder.
        command+=("$(gin_str --gin.OUTPUT_FILE \
          "${OUTPUT_DIR%/}/${eval_task}-predictions.jsonl")")
      fi
      ;;
  esac
fi
command+=("${EXTRA[@]}")
# The workers' virtual environment from install.sh; the tilde expands there.
# shellcheck disable=SC2088
command[0]="~/dss-venv/bin/python"

if [[ -n "$STAGE" ]]; then
  tpu::ssh all "mkdir -p ~/dss-tasks"
  tpu::run gcloud compute tpus tpu-vm scp "${STAGE}"/* "${NAME}:dss-tasks/" \
    "${SCOPE_FLAGS[@]}" --worker=all
fi
remote="cd ~/dss-jax && mkdir -p ~/dss-logs && "
if [[ -n "$CARD_FILE" ]]; then
  remote+="export DSS_TASK_CARDS=\$HOME/dss-tasks/${DATASET}.yaml && "
fi
if [[ -n "$TFDS_DATA_DIR" ]]; then
  remote+="export TFDS_DATA_DIR=$(tpu::quote "$TFDS_DATA_DIR") && "
fi
remote+="nohup ${command[0]} $(tpu::format "${command[@]:1}") \
> ~/dss-logs/$(tpu::quote "$RUN_NAME").log 2>&1 < /dev/null &"
tpu::ssh all "$remote"
if ((FOLLOW)); then
  tpu::ssh 0 "tail -n +1 -F ~/dss-logs/$(tpu::quote "$RUN_NAME").log"
fi
