r"""Tables and plots from an existing results CSV (`dss_jax.report`).

python -m dss_jax.report --results=runs/grid/results.csv --out_dir=runs/grid
"""

import pathlib
from collections.abc import Sequence

from absl import app, flags

from dss_jax import cli, report

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the command line (called when the command starts)."""
  flags.DEFINE_string(
    "results", None, "results CSV", required=True, flag_values=flag_values
  )
  flags.DEFINE_string(
    "out_dir", None, "default: the CSV's folder", flag_values=flag_values
  )
  flags.DEFINE_float(
    "teacher_accuracy",
    None,
    "teacher's test accuracy in [0, 1]",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "title", "", "figure title (the dataset)", flag_values=flag_values
  )


def main(argv: Sequence[str]) -> None:
  """Writes the report of `--results` and prints its summary."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  paths = report.write_report(
    FLAGS.results,
    FLAGS.out_dir or pathlib.Path(FLAGS.results).parent,
    teacher_accuracy=FLAGS.teacher_accuracy,
    title=FLAGS.title,
  )
  print(paths["summary_md"].read_text())
  for name, path in paths.items():
    print(f"{name}: {path}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
