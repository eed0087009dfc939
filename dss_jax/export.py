r"""Exports a checkpoint to a Hugging Face transformers T5 (`dss_jax.hf_export`).

    python -m dss_jax.export \
      --gin_file=models/t5_1_1_base.gin \
      --checkpoint=/tmp/dss_cqa_base \
      --output_dir=/tmp/dss_cqa_base_hf

The gin file defines MODEL (the student; `--gin.NAME=value` binds gin as in
`train`); the directory then loads with
`transformers.T5ForConditionalGeneration.from_pretrained`. The weight
mapping is in `dss_jax/hf_export.py`'s docstring.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

from absl import app, flags

from dss_jax import gin_flags

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the command line (called when the command starts); the gin
  flags come from `gin_flags.run`."""
  flags.DEFINE_string(
    "checkpoint",
    None,
    "Model dir, step dir or T5X checkpoint to export.",
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "step",
    None,
    "Step to export (default: latest).",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "output_dir", None, "Directory to write.", flag_values=flag_values
  )
  flags.DEFINE_enum(
    "dtype",
    "float32",
    ["float32", "bfloat16"],
    "Storage.",
    flag_values=flag_values,
  )
  flags.DEFINE_bool(
    "overwrite",
    False,
    "Replace an earlier export in --output_dir (its files are removed "
    "first); without it a non-empty folder is refused.",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "vocabulary",
    None,
    "Vocabulary to ship as the tokenizer ('t5', 'byte' or a path).",
    flag_values=flag_values,
  )


def main(argv: Sequence[str]) -> None:
  """Exports the checkpoint the flags name."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = FLAGS
  if not f.checkpoint or not f.output_dir:
    raise app.UsageError("--checkpoint and --output_dir are required")
  # Imported here: once the flags are parsed, since the export loads
  # TensorFlow and JAX.
  from dss_jax import hf_export

  def export_from_gin() -> pathlib.Path:
    return hf_export.export_checkpoint(
      gin_flags.model_from_gin(),
      f.checkpoint,
      f.output_dir,
      step=f.step,
      dtype=f.dtype,
      vocabulary=f.vocabulary,
      overwrite=f.overwrite,
    )

  out = gin_flags.call_with_gin_flags(export_from_gin, configure=False)
  print(f"exported to {out}")


if __name__ == "__main__":
  define_flags()
  # One process writes the export: no multi-process job to join.
  gin_flags.run(main, "model file(s) defining MODEL", join_job=False)
