"""Parse failures and teacher accuracy of the paper's released PaLM outputs.

Applies the task cards' parsers (the official repository's rules) to every
released completion and scores the parsed labels against gold (SVAMP by
equation value, with the safe evaluator). Prints a markdown table.

    DSS_PAPER_DATA_DIR=path/to/dss_paper python benchmarks/teacher_replay.py
    python benchmarks/teacher_replay.py --smoke   # the test slices, seconds

Without DSS_PAPER_DATA_DIR or --paper_data_dir, the official datasets.zip is
downloaded once and cached. `--smoke` reads the slices of the release that
ship with the tests (tests/testdata/dss_paper) unless --paper_data_dir is
given; tests/benchmarks_test.py runs it.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from collections.abc import Sequence

# Runs from a source checkout without `pip install -e .`.
_REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))

from dss_jax import cards  # noqa: E402
from dss_jax.teacher import sources  # noqa: E402

CARDS = ("cqa", "svamp", "anli1", "esnli")


# The paper data's slices that ship with the tests: what --smoke reads.
SMOKE_PAPER_DATA = _REPO / "tests" / "testdata" / "dss_paper"


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--paper_data_dir", default=None)
  parser.add_argument(
    "--smoke", action="store_true", help="the test slices (seconds)"
  )
  args = parser.parse_args(argv)
  if args.smoke and not args.paper_data_dir:
    args.paper_data_dir = str(SMOKE_PAPER_DATA)
  root = (
    sources.find_root(args.paper_data_dir)
    if args.paper_data_dir
    else sources.default_root()
  )
  print("| dataset | split | examples | parse failures | teacher accuracy |")
  print("|---|---|---:|---:|---:|")
  start = time.perf_counter()
  for name in CARDS:
    card = cards.load_card(name)
    for split in sources.available_splits(card, root).values():
      pairs = sources.read_replay(card, split, root)
      parsed = [card.parse_completion(text) for _, text in pairs]
      failures = sum(not p.ok for p in parsed)
      correct = sum(
        card.is_correct(p.label, example.gold_label)
        for p, (example, _) in zip(parsed, pairs, strict=True)
      )
      print(
        f"| {name} | {split} | {len(pairs):,} | {failures} | "
        f"{100 * correct / len(pairs):.2f}% |"
      )
  print(f"\n({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
  main()
