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
resumes. A NaN/Inf loss exits with status 1 and one error line.
"""

from __future__ import annotations

import os
import pathlib
import sys
from collections.abc import Sequence

import gin
from absl import app, flags, logging

_GIN_FILE = flags.DEFINE_multi_string(
  "gin_file", [], "Gin files to parse, in order."
)
_GIN_BINDINGS = flags.DEFINE_multi_string(
  "gin_bindings", [], "Gin bindings, applied after the files."
)
_GIN_SEARCH_PATHS = flags.DEFINE_list(
  "gin_search_paths", [], "Folders to look for gin files (and their includes)."
)

_GIN_CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "gin_configs"


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
  """Turns T5X's `--gin.NAME=value` into `--gin_bindings=NAME=value`."""
  out = []
  for arg in argv:
    if arg.startswith("--gin.") and "=" in arg:
      name, value = arg[len("--gin.") :].split("=", 1)
      out.append(f"--gin_bindings={name} = {value}")
    else:
      out.append(arg)
  return out


def parse_gin(
  files: Sequence[str],
  bindings: Sequence[str],
  search_paths: Sequence[str] = (),
) -> None:
  """Parses gin files and bindings, with the repo's gin_configs searchable."""
  for path in [os.getcwd(), str(_GIN_CONFIGS), *search_paths]:
    gin.add_config_file_search_path(path)
  gin.parse_config_files_and_bindings(
    list(files), list(bindings), finalize_config=False
  )
  gin.finalize()


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Imported here so `--help` stays fast and JAX starts after flag parsing.
  from dss_jax import trainer

  parse_gin(_GIN_FILE.value, _GIN_BINDINGS.value, _GIN_SEARCH_PATHS.value)
  logging.info("gin config:\n%s", gin.config_str())
  try:
    result = gin.get_configurable(trainer.train)()
  except trainer.NonFiniteLossError as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  if result.preempted:
    logging.info("stopped by SIGTERM at step %d; checkpoint saved", result.step)
  else:
    logging.info("finished at step %d", result.step)


def run() -> None:
  """Console entry point."""
  app.run(main, flags_parser=lambda a: flags.FLAGS(rewrite_gin_args(a)))


if __name__ == "__main__":
  run()
