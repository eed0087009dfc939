r"""Trains a student with the built-in trainer; flags mirror T5X's train.py.

    python -m dss_jax.train \
      --gin_file=gin_configs/tiny.gin \
      --gin_file=gin_configs/runs/train.gin \
      --gin.MODEL_DIR=\"/tmp/dss_tiny\" \
      --gin.MIXTURE_OR_TASK_NAME=\"dss_svamp_palm\" \
      --gin.TRAIN_STEPS=100

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

from absl import app, logging

from dss_jax import gin_flags


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Imported here: `--help` stays fast and JAX starts after flag parsing.
  from dss_jax import trainer

  try:
    result = gin_flags.call_with_gin_flags(trainer.train, finalize=True)
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
