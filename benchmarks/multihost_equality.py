r"""Prints how closely several JAX processes train like one, on this machine.

    DSS_PAPER_DATA_DIR=/path/to/dss_paper python benchmarks/multihost_equality.py
    python benchmarks/multihost_equality.py --smoke   # about a minute

Builds the paper's SVAMP data (TFDS, into a temporary folder), then trains
the tiny student with `python -m dss_jax.train` on the `dss_svamp_palm`
mixture four times, every run on the same global batches (DATA_SHARDS=2):

  * 2 processes x 2 CPU devices against 1 process x 4 devices: the largest
    absolute difference of any parameter at each checkpoint (the processes
    all-reduce over gloo, the single process in memory, in another order);
  * 2 processes x 1 device against 1 process x 2 devices: whether the
    parameters are bit-identical (a sum of two partial sums has one order).

The processes are started by tests/multihost.py (jax.distributed on
127.0.0.1), compiling into $JAX_COMPILATION_CACHE_DIR when it is set (else a
temporary cache). `--steps` and `--checkpoint_period` change the run length.
`--work_dir` keeps the data and the runs there (default: a temporary folder,
removed). `--smoke` trains only the second pair, 2 steps, on the slices of
the paper data that ship with the tests (unless --paper_data_dir is given);
tests/multihost_test.py runs it at its own run length and trains its
resumed runs against the 2 x 1 run it keeps.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np

_REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO / "tests"))

import multihost  # noqa: E402


def _train(tfds_dir, cache, model_dir, processes, devices, steps, period):
  args = [
    "--gin_file=tiny.gin",
    f'--gin.MODEL_DIR="{model_dir}"',
    '--gin.MIXTURE_OR_TASK_NAME="dss_svamp_palm"',
    f"--gin.TRAIN_STEPS={steps}",
    f"--gin.CHECKPOINT_PERIOD={period}",
    "--gin.BATCH_SIZE=8",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 96, 'targets': 48}",
    "--gin.DATA_SHARDS=2",
    "--gin.trainer.train.keep_checkpoints=100",
    "--gin.trainer.train.peak_flops=1e12",
    "--gin.trainer.train.progress_bar=False",
  ]
  job = multihost.start_module(
    "dss_jax.train",
    args,
    model_dir.parent / f"{model_dir.name}_logs",
    processes=processes,
    devices=devices,
    env={
      "TFDS_DATA_DIR": str(tfds_dir),
      "JAX_COMPILATION_CACHE_DIR": str(cache),
    },
  )
  start = time.monotonic()
  job.wait(timeout=1800)
  print(
    f"trained {processes} x {devices} devices: {steps} steps in "
    f"{time.monotonic() - start:.0f} s",
    flush=True,
  )


def _params(model_dir, step):
  import jax

  from dss_jax import checkpoints

  params = checkpoints.restore_params(model_dir / "checkpoints" / str(step))
  return {
    jax.tree_util.keystr(k): np.asarray(v)
    for k, v in jax.tree_util.tree_leaves_with_path(params)
  }


def _compare(a_dir, b_dir, steps, period, label):
  for step in range(period, steps + 1, period):
    a, b = _params(a_dir, step), _params(b_dir, step)
    diff = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    same = a.keys() == b.keys() and all(
      np.array_equal(a[k].view(np.uint32), b[k].view(np.uint32)) for k in a
    )
    print(
      f"{label} step {step:3d}: max |diff| {diff:.3g}, bit-identical {same}",
      flush=True,
    )


# Each compared pair: (label, (processes, devices), (processes, devices)).
PAIRS = (("2x2 vs 1x4", (2, 2), (1, 4)), ("2x1 vs 1x2", (2, 1), (1, 2)))
# The paper data's slices that ship with the tests: what --smoke reads.
SMOKE_PAPER_DATA = _REPO / "tests" / "testdata" / "dss_paper"
# --smoke: the bit-identical pair (the cheaper one) for one checkpoint.
SMOKE = dict(steps=2, checkpoint_period=2, pairs=1)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=12)
  parser.add_argument("--checkpoint_period", type=int, default=4)
  parser.add_argument(
    "--pairs", type=int, default=len(PAIRS), help="the last N pairs only"
  )
  parser.add_argument(
    "--paper_data_dir", default=None, help="default: $DSS_PAPER_DATA_DIR"
  )
  parser.add_argument(
    "--work_dir",
    default=None,
    help="keep the data and the runs here (default: a temporary folder)",
  )
  parser.add_argument(
    "--smoke",
    action="store_true",
    help=f"small sizes (flags given still count): {SMOKE}",
  )
  args = parser.parse_args(argv)
  if args.smoke:
    parser.set_defaults(**SMOKE, paper_data_dir=str(SMOKE_PAPER_DATA))
    args = parser.parse_args(argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  import tensorflow_datasets as tfds
  from absl import logging

  from dss_jax import datasets

  tfds.disable_progress_bar()
  # Only the figures: no INFO lines, no orbax warnings about step folders.
  logging.set_verbosity(logging.ERROR)

  with contextlib.ExitStack() as stack:
    if args.work_dir:
      tmp = pathlib.Path(args.work_dir)
      tmp.mkdir(parents=True, exist_ok=True)
    else:
      tmp = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory()))
    datasets.build_annotated(
      "svamp",
      "palm",
      data_dir=str(tmp / "tfds"),
      paper_data_dir=args.paper_data_dir,
    )
    pairs = PAIRS[len(PAIRS) - args.pairs :]
    # The caller's compilation cache when it names one (the test suite's,
    # which its multi-host tests of the same tiny runs fill), else a new one.
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or tmp / "xla_cache"
    for _, *runs in pairs:
      for processes, devices in runs:
        _train(
          tmp / "tfds",
          cache,
          tmp / f"{processes}x{devices}",
          processes,
          devices,
          args.steps,
          args.checkpoint_period,
        )
    for label, (p_a, d_a), (p_b, d_b) in pairs:
      _compare(
        tmp / f"{p_a}x{d_a}",
        tmp / f"{p_b}x{d_b}",
        args.steps,
        args.checkpoint_period,
        label,
      )


if __name__ == "__main__":
  main()
