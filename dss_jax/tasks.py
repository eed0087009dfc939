r"""`dss-jax tasks`: the SeqIO tasks and mixtures that are registered, and why.

    dss-jax tasks                                   # = python -m dss_jax.tasks
    dss-jax tasks --task_cards=my_cards/ --tfds_data_dir=~/tensorflow_datasets

Lists what `import dss_jax.seqio_tasks` registers in this environment (the
built-in cards and the cards of `$DSS_TASK_CARDS` and `--task_cards`),
grouped by card and annotation source: the card file each came from, the
tasks, the mixture and its rates, and for each split whether the TFDS data
dir holds it (with its example count) or the command that builds it.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from absl import app, flags, logging

from dss_jax import cards, cli, workers

if TYPE_CHECKING:
  from dss_jax import seqio_tasks

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the command line (called when the command starts)."""
  flags.DEFINE_multi_string(
    "task_cards",
    [],
    "Cards of your own: card files or folders of *.yaml cards, "
    "':'-separated or repeated; added to $DSS_TASK_CARDS.",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "tfds_data_dir",
    None,
    "TFDS data dir to look for built sources in (default: $TFDS_DATA_DIR, "
    "else ~/tensorflow_datasets).",
    flag_values=flag_values,
  )


def _split_counts(
  registration: seqio_tasks.Registration, data_dir: str
) -> tuple[dict[str, int], bool] | None:
  """Example count of each split the tasks expose, and whether validation
  is held out of train; None when the dataset is not built."""
  # Imported here: after the TensorFlow log settings of `main`.
  import tensorflow_datasets as tfds

  from dss_jax import seqio_tasks

  try:
    path = seqio_tasks.dataset_dir(
      registration.card, registration.source, data_dir
    )
  except seqio_tasks.DatasetNotFoundError:
    return None
  counts = {
    name: split.num_examples
    for name, split in tfds.builder_from_directory(path).info.splits.items()
  }
  held_out = "validation" not in counts and "train" in counts
  if held_out:
    # As `seqio_tasks`: ceil(10%) of train held out as validation.
    held = math.ceil(seqio_tasks.VALIDATION_HOLDOUT * counts["train"])
    counts["train"], counts["validation"] = counts["train"] - held, held
  return counts, held_out


def _splits_line(registration: seqio_tasks.Registration, data_dir: str) -> str:
  """`splits (...): train 45, validation 5 (held out of train), ...`."""
  # Imported here: after the TensorFlow log settings of `main`.
  from dss_jax import seqio_tasks

  card, source = registration.card, registration.source
  config = f"{seqio_tasks.DATASET_NAME}/{card}_{source}"
  found = _split_counts(registration, data_dir)
  if found is None:
    return (
      f"splits {', '.join(seqio_tasks.SPLITS)}: not built ({config} is not "
      f"in {data_dir}; build it with `python -m dss_jax.datasets "
      f"--card={card} --source={source}` or `python -m dss_jax.annotate "
      "... --build_tfds`)"
    )
  counts, held_out = found
  parts = []
  for split in seqio_tasks.SPLITS:
    if split not in counts:
      parts.append(f"{split} not built")
    elif split == "validation" and held_out:
      parts.append(f"{split} {counts[split]} (held out of train)")
    else:
      parts.append(f"{split} {counts[split]}")
  return f"splits ({config}, built): {', '.join(parts)}"


def _rates_line(mixture_name: str) -> str:
  """`mixture dss_x_y: dss_x_y_label 1.0, dss_x_y_rationale 1.0 (lambda)`."""
  # Imported here: after the TensorFlow log settings of `main`.
  import seqio

  mixture = seqio.get_mixture_or_task(mixture_name)
  rates = []
  for task in mixture.tasks:
    note = " (lambda)" if task.name.endswith("_rationale") else ""
    rates.append(f"{task.name} {mixture.get_rate(task):g}{note}")
  return f"mixture {mixture_name}: rates {', '.join(rates)}"


def describe(data_dir: str) -> list[str]:
  """The listing: one block per card, one sub-block per source.

  Args:
    data_dir: the TFDS data dir the splits are looked up in.

  Returns:
    The lines to print.
  """
  # Imported here: after the TensorFlow log settings of `main`.
  from dss_jax import seqio_tasks

  by_card: dict[tuple[str, str], list[seqio_tasks.Registration]] = {}
  for registration in seqio_tasks.registrations():
    key = (registration.card, registration.card_path)
    by_card.setdefault(key, []).append(registration)
  lines = [f"DSS tasks and mixtures (TFDS data dir: {data_dir})"]
  for (card, path), registrations in sorted(by_card.items()):
    lines += ["", f"card {card}: {path}"]
    for registration in registrations:
      lines += [
        f"  source {registration.source}",
        f"    {_splits_line(registration, registration.data_dir or data_dir)}",
        f"    {_rates_line(registration.mixture)}",
        f"    tasks: {', '.join(registration.tasks)}",
      ]
  if not by_card:
    lines.append("none")
  return lines


def main(argv: Sequence[str]) -> None:
  """Registers the tasks as an entry point would, then lists them."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cards.add_task_cards(FLAGS.task_cards)
  if FLAGS.tfds_data_dir:
    os.environ["TFDS_DATA_DIR"] = os.path.expanduser(FLAGS.tfds_data_dir)
  # TensorFlow's C++ banners and absl's INFO lines are not the listing.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  workers.redirect_native_stderr(os.devnull)
  logging.set_verbosity(logging.ERROR)
  # Imported here: registration happens at import, after the flags above
  # have set $DSS_TASK_CARDS and $TFDS_DATA_DIR.
  from dss_jax import seqio_tasks

  print("\n".join(describe(seqio_tasks.resolve_data_dir())))
  sys.stdout.flush()


if __name__ == "__main__":
  define_flags()
  cli.run(main)
