r"""Builds one `dss_annotated/<card>_<source>` config (`dss_jax.datasets`).

    DSS_PAPER_DATA_DIR=path/to/dss_paper python -m dss_jax.datasets \
      --card=cqa --source=palm --data_dir=$TFDS_DATA_DIR
    python -m dss_jax.datasets --card=cqa --source=gemini_2_5_flash \
      --store=annotations/cqa_gemini_2_5_flash.jsonl
"""

from collections.abc import Sequence

from absl import app, flags

from dss_jax import cards, cli, datasets
from dss_jax.teacher import sources

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the command line (called when the command starts)."""
  flags.DEFINE_string(
    "card",
    None,
    "Task card: a built-in name, a card in --task_cards, or a path.",
    required=True,
    flag_values=flag_values,
  )
  flags.DEFINE_multi_string(
    "task_cards",
    [],
    "Cards of your own: card files or folders of *.yaml cards, "
    "':'-separated or repeated; added to $DSS_TASK_CARDS.",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "source",
    sources.PALM_SOURCE,
    "Teacher source: palm (the paper's released outputs) or an annotation "
    "run's name.",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "data_dir", None, "TFDS data dir.", flag_values=flag_values
  )
  flags.DEFINE_string(
    "store",
    None,
    "The annotation store (sources other than palm).",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "teacher",
    None,
    "Only the store records of this teacher (default: all).",
    flag_values=flag_values,
  )
  flags.DEFINE_enum(
    "keep",
    "vote",
    ["vote", "vote_or_gold"],
    "Rationales to keep under self-consistency.",
    flag_values=flag_values,
  )


def main(argv: Sequence[str]) -> None:
  """Builds the config the flags name and prints its splits."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cards.add_task_cards(FLAGS.task_cards)
  builder = datasets.build_annotated(
    FLAGS.card,
    FLAGS.source,
    data_dir=FLAGS.data_dir,
    store=FLAGS.store,
    teacher=FLAGS.teacher,
    keep=FLAGS.keep,
  )
  name = datasets.tfds_name(builder.builder_config.card_name, FLAGS.source)
  for split_name, split in builder.info.splits.items():
    print(
      f"{name} {split_name}: {split.num_examples} examples in "
      f"{builder.data_dir}"
    )


if __name__ == "__main__":
  define_flags()
  cli.run(main)
