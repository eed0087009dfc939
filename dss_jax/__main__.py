"""The `dss-jax` command: lists the entry points and dispatches to them.

dss-jax                      # lists the entry points
dss-jax distill [FLAGS]      # same as python -m dss_jax.distill [FLAGS]

`dss-jax COMMAND` runs the command's module as `python -m` does (as
`__main__`), so each entry point defines its flags and starts in one place,
under its own `if __name__ == "__main__":`, and `--help` shows its flags.
"""

import runpy
import sys

# name -> (module, one-line purpose). Each module is a thin absl entry point
# with a `main` for `app.run`; `--helpfull` on any of them lists every flag.
ENTRY_POINTS: dict[str, tuple[str, str]] = {
  "distill": (
    "dss_jax.distill",
    "the main job: card -> teacher -> TFDS -> SeqIO -> train -> eval -> report",
  ),
  "grid": (
    "dss_jax.grid_job",
    "the paper's grid: methods x data fractions x seeds x model sizes",
  ),
  "annotate": (
    "dss_jax.annotate",
    "teacher annotation of a dataset (gemini, openai-compatible, replay)",
  ),
  "datasets": (
    "dss_jax.datasets",
    "build the TFDS dataset of an annotation (dss_annotated/<card>_<source>)",
  ),
  "tasks": (
    "dss_jax.tasks",
    "the registered SeqIO tasks and mixtures, their cards and built splits",
  ),
  "train": ("dss_jax.train", "built-in trainer, T5X-style gin flags"),
  "eval": ("dss_jax.eval", "score one, the latest or every checkpoint"),
  "infer": ("dss_jax.infer", "predict labels and rationales"),
  "export": ("dss_jax.export", "a checkpoint as a Hugging Face T5"),
  "report": ("dss_jax.report", "tables and plots from a results CSV"),
}


def usage() -> str:
  lines = [
    "usage: dss-jax COMMAND [FLAGS]   (or python -m dss_jax.COMMAND)",
    "",
  ]
  width = max(len(name) for name in ENTRY_POINTS)
  for name, (module, purpose) in ENTRY_POINTS.items():
    lines.append(f"  {name:<{width}}  {purpose}  [{module}]")
  lines.append("")
  lines.append("Run `dss-jax COMMAND --help` for a command's flags.")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  """Dispatches `dss-jax COMMAND ...` to `python -m dss_jax.COMMAND ...`."""
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help", "list"):
    print(usage())
    return 0
  command = argv[1]
  if command not in ENTRY_POINTS:
    print(usage(), file=sys.stderr)
    print(f"\nerror: unknown command {command!r}", file=sys.stderr)
    return 2
  # runpy puts the module's file in sys.argv[0], as `python -m` does.
  sys.argv = [command, *argv[2:]]
  runpy.run_module(
    ENTRY_POINTS[command][0], run_name="__main__", alter_sys=True
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
