r"""Measures DSS mixture shares and split sizes on the paper's released data.

Builds `dss_annotated/<card>_palm` (if needed), then prints the train /
validation / test sizes, the training-fraction sizes, and the share of
rationale examples in draws from the mixture for several lambdas:

    DSS_PAPER_DATA_DIR=path/to/dss_paper \
      python benchmarks/seqio_mixture_share.py --data_dir=/tmp/dss_tfds --card=svamp
    python benchmarks/seqio_mixture_share.py --smoke   # seconds

`--smoke` builds into a temporary folder (unless --data_dir is given) from
the slices of the paper data that ship with the tests (unless
--paper_data_dir is given) and draws 200 examples at lambda 1;
tests/benchmarks_test.py runs it.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
from collections.abc import Sequence

_REPO = pathlib.Path(__file__).resolve().parents[1]
# The paper data's slices that ship with the tests: what --smoke reads.
SMOKE_PAPER_DATA = _REPO / "tests" / "testdata" / "dss_paper"
SMOKE = dict(draws=200, rate=[1.0], paper_data_dir=str(SMOKE_PAPER_DATA))


def measure(args: argparse.Namespace) -> None:
  """Prints the split and fraction sizes and the rationale share per lambda."""
  import gin
  import numpy as np
  import seqio

  from dss_jax import datasets, grid, seqio_tasks

  card = args.card
  datasets.build_annotated(
    card, "palm", data_dir=args.data_dir, paper_data_dir=args.paper_data_dir
  )
  byte = seqio.ByteVocabulary()
  gold = f"dss_{card}_gold_finetune"
  for fraction in grid.PAPER_FRACTIONS:
    seqio_tasks.register_card(
      card,
      "palm",
      data_dir=args.data_dir,
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
    card, "palm", data_dir=args.data_dir, vocabulary=byte
  )
  for rate in args.rate:
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
        for ex in ds.take(args.draws).as_numpy_iterator()
      ]
    )
    print(
      f"lambda {rate}: rationale share {100 * share:.2f}% "
      f"(expected {100 * rate / (1 + rate):.2f}%) over {args.draws} draws"
    )
  gin.clear_config()


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data_dir", default=None, help="TFDS data dir.")
  parser.add_argument("--card", default="svamp", help="cqa, svamp, ...")
  parser.add_argument(
    "--draws", type=int, default=5000, help="Examples drawn per lambda."
  )
  parser.add_argument(
    "--rate",
    type=float,
    action="append",
    help="A lambda; repeat the flag for several (default 0.5, 1.0, 2.0).",
  )
  parser.add_argument(
    "--paper_data_dir", default=None, help="default: $DSS_PAPER_DATA_DIR"
  )
  parser.add_argument(
    "--smoke",
    action="store_true",
    help=f"small sizes (flags given still count): {SMOKE}",
  )
  args = parser.parse_args(argv)
  if args.smoke:
    parser.set_defaults(**SMOKE)
    args = parser.parse_args(argv)
  if args.rate is None:
    args.rate = [0.5, 1.0, 2.0]
  if args.data_dir is None and not args.smoke:
    parser.error("--data_dir is required (a TFDS data dir)")

  import tensorflow_datasets as tfds
  from absl import logging

  logging.set_verbosity(logging.WARNING)
  tfds.disable_progress_bar()
  if args.data_dir is not None:
    measure(args)
    return
  with tempfile.TemporaryDirectory() as tmp:
    args.data_dir = tmp
    measure(args)


if __name__ == "__main__":
  main()
