r"""Trains a student with the built-in trainer; flags mirror T5X's train.py.

    python -m dss_jax.train \
      --gin_file=gin_configs/tiny.gin \
      --gin_file=gin_configs/runs/train.gin \
      --gin.MODEL_DIR=\"/tmp/dss_tiny\" \
      --gin.MIXTURE_OR_TASK_NAME=\"dss_svamp_palm\" \
      --gin.TRAIN_STEPS=100

The gin macros INPUTS_PER_STEP, RATIONALE_RATE and RECIPE bind the step
(`dss_jax.step.StepConfig`); the rows of a step are derived from them and
logged at start.

`--gin.NAME=value` is shorthand for `--gin_bindings=NAME=value` (as in T5X).
Gin files are looked up in the current directory, the repository's
gin_configs/ folder and every `--gin_search_paths` entry. On SIGTERM the run
saves a checkpoint and exits with status 0; rerunning the same command
resumes. A NaN/Inf loss exits with status 1 and one error line; a user error
(a bad gin file or binding, a corrupt checkpoint, ...) with status 2 and one
`error:` line (see dss_jax/errors.py).

On several hosts every host runs the same command (on GPU or CPU hosts with
`--coordinator_address=HOST:PORT --process_count=N --process_index=I`, see
docs/multihost.md); each reads its own input shards.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import gin
from absl import app, logging

from dss_jax import errors, gin_flags

# Lambda's binding for the mixtures in the registry; runs/train.gin sets it to
# %RATIONALE_RATE, the trainer's lambda.
_OPTIONS_RATE = "dss_jax.seqio_tasks.options.rationale_rate"


def check_rationale_rate_binding() -> None:
  """Refuses lambda bound where the built-in trainer no longer reads it.

  Raises:
    errors.UserError: `dss_jax.seqio_tasks.options.rationale_rate` is bound
      to a value instead of %RATIONALE_RATE.
  """
  try:
    bound = gin.query_parameter(_OPTIONS_RATE)
  except ValueError:
    return
  if isinstance(bound, gin.config.ConfigurableReference):
    return
  raise errors.UserError(
    f"{_OPTIONS_RATE} = {bound!r}: the built-in trainer's lambda is the "
    f"gin macro RATIONALE_RATE; bind --gin.RATIONALE_RATE={bound!r} instead"
  )


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Imported here: `--help` stays fast and JAX starts after flag parsing.
  from dss_jax import trainer

  try:
    result = gin_flags.call_with_gin_flags(
      trainer.train, finalize=True, check=check_rationale_rate_binding
    )
  except trainer.NonFiniteLossError as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  if result.preempted:
    logging.info("stopped by SIGTERM at step %d; checkpoint saved", result.step)
  else:
    logging.info("finished at step %d", result.step)


if __name__ == "__main__":
  gin_flags.run(main, "gin files to parse, in order")
