r"""The main job: card -> teacher -> TFDS -> SeqIO -> train -> eval -> report.

With no flags it runs the offline demo on a laptop CPU: the project's own
arithmetic word problems (tasks/arith.yaml), the built-in offline teacher
(teacher/backends/offline.py), a tiny byte-level T5 student, standard
finetuning beside distilling step-by-step over three seeds, then a table and a
plot:

  dss-jax distill                       # = python -m dss_jax.distill
  dss-jax distill --out_dir=demo_output --seeds=0,1,2,3,4
  dss-jax distill --task_card=cqa --dry_run   # the cost, before any work

Each stage is resumable: the teacher's answers go to an append-only store,
the TFDS build is skipped once prepared, and a run whose `result.json`
exists is not trained again. Rerun the same command after an interruption.

Other cards and teachers (see docs/distill.md for the full commands):

  # the paper's SVAMP from the released PaLM-540B outputs, T5-Base, GPU/TPU
  DSS_PAPER_DATA_DIR=... dss-jax distill --task_card=svamp --teacher=replay \
    --model_sizes=base --student_vocabulary=t5 --initial_checkpoint=gs://... \
    --out_dir=runs/svamp_base
  # a new dataset annotated by Gemini
  GEMINI_API_KEY=... dss-jax distill --task_card=path/to/card.yaml \
    --teacher=gemini --teacher_model=gemini-2.5-flash --out_dir=runs/mine
  # or by name, with the card's folder given once (as $DSS_TASK_CARDS does)
  dss-jax distill --task_cards=path/to/cards --task_card=mine ...

This module is the command line only; the job is `dss_jax.distill.job`.
"""

from __future__ import annotations

import functools
import logging as py_logging
import os
import pathlib
import sys
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from absl import app, flags, logging

from dss_jax import cards, cli, errors, grid, host, workers
from dss_jax.teacher import jobs

if TYPE_CHECKING:
  from dss_jax.distill import config as job_config

FLAGS = flags.FLAGS

# The `job_config.DistillConfig` field each flag sets. The flags keep the names
# the docs use, which say on a command line what they set (--teacher_url
# rather than --base_url).
FIELD_OF_FLAG = {
  "task_card": "card",
  "teacher": "backend",
  "teacher_model": "teacher_model",
  "teacher_url": "base_url",
  "teacher_source": "source",
  "teacher_samples": "num_samples",
  "teacher_concurrency": "concurrency",
  "teacher_rpm": "requests_per_minute",
  "max_retry_wait": "max_retry_wait_s",
  "paper_data": "paper_data_dir",
  "methods": "methods",
  "model_sizes": "model_sizes",
  "fractions": "fractions",
  "baseline_fractions": "baseline_fractions",
  "seeds": "seeds",
  "student_vocabulary": "vocabulary",
  "initial_checkpoint": "initial_checkpoint",
  "train_steps": "train_steps",
  "batch_size": "batch_size",
  "recipe": "recipe",
  "learning_rate": "learning_rate",
  "inputs_length": "inputs_length",
  "targets_length": "targets_length",
  "label_length": "label_length",
  "rationale_rate": "rationale_rate",
  "eval_examples": "eval_examples",
  "validation_period": "validation_period",
  "validation_examples": "validation_examples",
  "out_dir": "out_dir",
  "tfds_data_dir": "tfds_data_dir",
  "progress_bars": "progress",
  "workers": "workers",
  "activation_dtype": "activation_dtype",
  "microbatches": "microbatches",
  "num_partitions": "num_partitions",
  "keep_checkpoints": "keep_checkpoints",
  "checkpoint_period": "checkpoint_period",
}


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the flags of `dss-jax distill` and `dss-jax grid`.

  Every default is None, "not set": the job's defaults depend on the card
  (`job_config.make_config`).

  Args:
    flag_values: where to define them.
  """
  define = functools.partial(_define, flag_values)
  define(
    "string",
    "task_card",
    "Card name (built-in or in --task_cards) or path (default: arith).",
  )
  flags.DEFINE_enum(
    "teacher",
    None,
    jobs.BACKENDS,
    "offline, replay (released PaLM), gemini or openai.",
    flag_values=flag_values,
  )
  define(
    "string", "teacher_model", "gemini/openai model, e.g. gemini-2.5-flash."
  )
  define(
    "string", "teacher_url", "OpenAI-compatible /v1 root or Gemini endpoint."
  )
  define(
    "string", "teacher_source", "Annotation name (default: from the teacher)."
  )
  define("integer", "teacher_samples", "Samples per example (vote when > 1).")
  define("integer", "teacher_concurrency", "Teacher calls in flight.")
  define("float", "teacher_rpm", "Client-side teacher requests per minute.")
  define(
    "float",
    "max_retry_wait",
    "Longest teacher retry hint to wait for, in seconds (default 300); a "
    "longer one stops the job (rerun later to go on).",
  )
  define(
    "string", "paper_data", "Released paper data (else $DSS_PAPER_DATA_DIR)."
  )
  define("list", "methods", f"Among {','.join(grid.METHODS)}.")
  define("list", "model_sizes", "demo-xs, demo, demo-l or T5 small ... xxl.")
  define("list", "fractions", "Training-data fractions, e.g. 0.125,0.25,0.5,1.")
  define("list", "baseline_fractions", "Fractions for finetune/distill too.")
  define("list", "seeds", "Seeds, e.g. 0,1,2.")
  define("string", "student_vocabulary", "byte, t5 or a SentencePiece path.")
  define(
    "string", "initial_checkpoint", "Pretrained T5X checkpoint; {size} = size."
  )
  define("integer", "train_steps", "Optimizer steps per run.")
  define(
    "integer", "batch_size", "Training inputs per step (DSS: x2 sequences)."
  )
  define(
    "string", "recipe", "DSS step: mixture (sampled) or official (paired)."
  )
  define("float", "learning_rate", "Peak learning rate.")
  define("integer", "inputs_length", "Input tokens.")
  define("integer", "targets_length", "Target tokens of rationale runs.")
  define("integer", "label_length", "Target tokens of labels.")
  define("float", "rationale_rate", "lambda, the rationale loss weight.")
  define("integer", "eval_examples", "Test examples to score (default: all).")
  define(
    "integer", "validation_period", "Score validation every N steps; 0: off."
  )
  define("integer", "validation_examples", "Validation examples to score.")
  define("string", "out_dir", "Output folder (default: demo_output, runs/...).")
  define("string", "tfds_data_dir", "TFDS data dir (default: <out_dir>/tfds).")
  flags.DEFINE_bool(
    "progress_bars", True, "Show progress bars.", flag_values=flag_values
  )
  define(
    "integer", "workers", "Runs side by side (default: 1 per core, max 2)."
  )
  define(
    "string",
    "activation_dtype",
    "bfloat16 or float32 (default: bfloat16 on GPU/TPU, float32 on CPU).",
  )
  define(
    "integer", "microbatches", "Gradient accumulation: micro-batches a step."
  )
  define("integer", "num_partitions", "Model-parallel ways (T5X's); default 1.")
  define(
    "string", "keep_checkpoints", "Checkpoints kept per run: N or all (1)."
  )
  define(
    "integer", "checkpoint_period", "Save every N steps (train_steps // 4)."
  )


def define_dry_run_flag(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines `--dry_run`, which decides what the command does, not the job.

  Args:
    flag_values: where to define it.
  """
  flags.DEFINE_bool(
    "dry_run",
    False,
    "Print the job's plan (teacher calls, tokens, dollars, training FLOPs, "
    "time here and on accelerators, memory per device) and exit: no "
    "teacher call, no dataset, no model, nothing written.",
    flag_values=flag_values,
  )


def define_task_cards_flag(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines `--task_cards`, which sets the environment, not the job.

  Args:
    flag_values: where to define it.
  """
  flags.DEFINE_multi_string(
    "task_cards",
    [],
    "Cards of your own: card files or folders of *.yaml cards, "
    "':'-separated or repeated; added to $DSS_TASK_CARDS, so that "
    "--task_card can name them.",
    flag_values=flag_values,
  )


def _define(
  flag_values: flags.FlagValues, kind: str, name: str, help_text: str
) -> None:
  getattr(flags, f"DEFINE_{kind}")(
    name, None, help_text, flag_values=flag_values
  )


def _numbers(name: str, values: list[str], number: type) -> tuple[Any, ...]:
  try:
    return tuple(number(v) for v in values)
  except ValueError:
    kind = "numbers" if number is float else "integers"
    raise errors.UserError(
      f"--{name} must be comma-separated {kind}, got {','.join(values)}"
    ) from None


def _keep_checkpoints(value: str) -> int:
  try:
    return int(value)
  except ValueError:
    raise errors.UserError(
      f"--keep_checkpoints must be a number or all, got {value}"
    ) from None


def config_fields(flag_values: flags.FlagValues = FLAGS) -> dict[str, Any]:
  """The `DistillConfig` fields the command line sets (unset flags left out).

  Args:
    flag_values: parsed flags (`define_flags`).

  Returns:
    Field -> value.

  Raises:
    errors.UserError: a list flag that should hold numbers does not.
  """
  fields = {}
  for name, field in FIELD_OF_FLAG.items():
    flag = flag_values[name]
    if flag.value is None or (name == "progress_bars" and not flag.present):
      continue
    value = flag.value
    if name in ("fractions", "baseline_fractions"):
      value = _numbers(name, value, float)
    elif name == "seeds":
      value = _numbers(name, value, int)
    elif name == "keep_checkpoints" and value != "all":
      value = _keep_checkpoints(value)
    elif isinstance(value, list):
      value = tuple(value)
    fields[field] = value
  return fields


def config_from_flags(
  flag_values: flags.FlagValues = FLAGS, grid_defaults: bool = False
) -> job_config.DistillConfig:
  """The job the command line asks for (`job_config.make_config`).

  Args:
    flag_values: parsed flags (`define_flags`).
    grid_defaults: fill unset axes with the paper's grid (`dss-jax grid`).

  Returns:
    The job.

  Raises:
    errors.UserError: a flag value the job cannot run with, named by its
      flag.
  """
  # Imported here: once the flags are parsed, since the job loads
  # TensorFlow and JAX.
  from dss_jax.distill import config as job_config

  flag_of = {field: flag for flag, field in FIELD_OF_FLAG.items()}
  try:
    return job_config.make_config(
      config_fields(flag_values), grid=grid_defaults
    )
  except job_config.ConfigError as e:
    raise errors.UserError(
      f"--{flag_of.get(e.field, e.field)}{e.problem}"
    ) from None


def _log_to_file(log_dir: pathlib.Path) -> None:
  """Sends logs and warnings to `log_dir`; the terminal keeps errors only.

  Checkpointing, SeqIO and TFDS log at INFO and WARNING on every run (SeqIO
  warns about uncached datasets and padded lengths the demo chooses on
  purpose), which would bury the progress bars and the table. The full log
  is `log_dir/distill.INFO`; --stderrthreshold=info brings it back to the
  terminal.
  """
  logging.get_absl_handler().use_absl_log_file("distill", str(log_dir))
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.INFO)
  if not FLAGS["stderrthreshold"].present:
    FLAGS.stderrthreshold = "error"


def main(argv: Sequence[str], grid_defaults: bool = False) -> None:
  """`dss-jax distill`: runs the job the flags describe.

  Args:
    argv: what is left of the command line after the flags.
    grid_defaults: the paper's grid for unset axes (`dss-jax grid`).
  """
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  host.keep_freed_memory()
  host.add_xla_flag_defaults()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  py_logging.captureWarnings(True)
  # Before the job's modules import TensorFlow, whose C++ side writes
  # oneDNN, CUDA and cuInit lines (and later oneDNN and tf.data warnings)
  # to stderr whatever the log level; to a scratch file until the config
  # is valid, so that a bad flag leaves no output folder behind.
  fd, early = tempfile.mkstemp(prefix="dss_jax_native_", suffix=".log")
  os.close(fd)
  workers.redirect_native_stderr(early)
  try:
    # Before the job imports dss_jax.seqio_tasks, which registers them.
    cards.add_task_cards(FLAGS.task_cards)
    if FLAGS.task_card:
      # A card that does not load (or takes a built-in card's name) stops
      # the job here, before anything is imported, written or paid for.
      cards.load_card(FLAGS.task_card)
    config = config_from_flags(grid_defaults=grid_defaults)
  except errors.UserError:
    os.unlink(early)
    raise
  # Imported here: the job's modules load TensorFlow and JAX, which must
  # come after the redirect above.
  from dss_jax import plan
  from dss_jax.distill import config as job_config
  from dss_jax.distill import job

  if FLAGS.dry_run:
    try:
      job = job_config.job_plan(config)
    finally:
      os.unlink(early)
    print(plan.format_plan(job), end="", flush=True)
    # The refusal the real run would make, after the table that explains it;
    # the dry run itself succeeded.
    try:
      plan.check_memory(job)
    except errors.UserError as e:
      print(f"the run would stop here: {errors.one_line(e)}")
    return

  log_dir = pathlib.Path(config.out_dir) / "logs"
  try:
    log_dir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    os.unlink(early)
    raise errors.MachineError(
      f"--out_dir={config.out_dir}: cannot write its logs folder "
      f"({e.strerror or e}); give a writable folder"
    ) from e
  native = log_dir / "native.log"
  workers.redirect_native_stderr(native)
  with open(early, "rb") as lines, open(native, "ab") as kept:
    kept.write(lines.read())
  os.unlink(early)
  _log_to_file(log_dir)
  try:
    job.run(config)
  except job_config.AnnotationIncompleteError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  sys.stdout.flush()


if __name__ == "__main__":
  define_flags()
  define_task_cards_flag()
  define_dry_run_flag()
  cli.run(main)
