"""Measures DSS mixture shares and split sizes on the paper's released data.

Builds `dss_annotated/<card>_palm` (if needed), then prints the train /
validation / test sizes, the training-fraction sizes, and the share of
rationale examples in draws from the mixture for several lambdas:

    DSS_PAPER_DATA_DIR=path/to/dss_paper \\
      python benchmarks/seqio_mixture_share.py --data_dir=/tmp/dss_tfds --card=svamp
"""

from absl import app, flags, logging

_DATA_DIR = flags.DEFINE_string(
  "data_dir", None, "TFDS data dir.", required=True
)
_CARD = flags.DEFINE_string("card", "svamp", "Paper card (cqa, svamp, ...).")
_DRAWS = flags.DEFINE_integer("draws", 5000, "Examples drawn per lambda.")
_RATES = flags.DEFINE_multi_float("rate", [0.5, 1.0, 2.0], "Lambdas.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  import gin
  import numpy as np
  import seqio

  from dss_jax import datasets, seqio_tasks

  datasets.build_annotated(_CARD.value, "palm", data_dir=_DATA_DIR.value)
  byte = seqio.ByteVocabulary()
  card = _CARD.value
  gold = f"dss_{card}_gold_finetune"
  for fraction in seqio_tasks.PAPER_FRACTIONS:
    seqio_tasks.register_card(
      card,
      "palm",
      data_dir=_DATA_DIR.value,
      vocabulary=byte,
      train_fraction=fraction,
    )
    source = seqio.get_mixture_or_task(gold).source
    sizes = {
      split: sum(1 for _ in source.get_dataset(split=split, shuffle=False))
      for split in seqio_tasks.SPLITS
    }
    print(f"fraction {fraction}: {sizes}")
  seqio_tasks.register_card(
    card, "palm", data_dir=_DATA_DIR.value, vocabulary=byte
  )
  for rate in _RATES.value:
    gin.clear_config()
    gin.parse_config(f"dss_jax.seqio_tasks.options.rationale_rate = {rate}")
    ds = seqio.get_mixture_or_task(f"dss_{card}_palm").get_dataset(
      None,
      split="train",
      shuffle=True,
      seed=0,
      num_epochs=None,
      passthrough_features=["inputs_pretokenized"],
    )
    share = np.mean(
      [
        ex["inputs_pretokenized"].startswith(b"explain: ")
        for ex in ds.take(_DRAWS.value).as_numpy_iterator()
      ]
    )
    print(
      f"lambda {rate}: rationale share {100 * share:.2f}% "
      f"(expected {100 * rate / (1 + rate):.2f}%) over {_DRAWS.value} draws"
    )


if __name__ == "__main__":
  app.run(main)
