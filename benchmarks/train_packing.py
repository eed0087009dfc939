r"""Real tokens/s training distilling step-by-step on the released CQA outputs.

    DSS_PAPER_DATA_DIR=<folder with cqa/> python benchmarks/train_packing.py \
      [--tfds_dir=/tmp/dss_tfds] [--steps=6] [--vocab=local]
    python benchmarks/train_packing.py --smoke   # tiny model, seconds

Compares, on the same machine in one run, the throughput of real (non-padding)
input + target tokens while training T5 v1.1 small (float32) on the
`dss_cqa_palm` mixture (label and rationale tasks of the paper's PaLM
outputs):
  * this trainer with packing: each step's `--examples` inputs, each with its
    label and its rationale example (the official recipe's step), packed into
    `--rows` rows of `inputs` 256 / `targets` 128 (short rows waste less
    attention on the cross-segment pairs that the mask throws away);
  * the official recipe (google-research/distilling-step-by-step,
    `TaskPrefixTrainer`): Hugging Face T5 in PyTorch, each batch of source
    examples run twice (`predict:` pass and `explain:` pass), each pass padded
    to its own longest example, loss = 0.5 * label + 0.5 * rationale, AdamW.

Both see the same examples (the label/rationale pairs of the train split) and
the same number of source examples per step (`--examples`).
The TFDS dataset is built into `--tfds_dir` on first use (about a minute).
The "local" vocabulary is a SentencePiece model trained on the paper data
(`dss_jax.vocab`), since the T5 vocabulary lives on GCS; "t5" uses that.
`--smoke` trains the tiny test model with the byte vocabulary on short rows
for one step of 2 inputs, built into a temporary folder from the slices of
the paper data that ship with the tests (unless --tfds_dir and
--paper_data_dir are given); tests/benchmarks_test.py runs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np

# PyTorch's OpenMP threads spin while they wait; on a machine shared with other
# jobs that stalls every barrier (steps measured 5-10x slower and erratic).
# Passive waiting must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Run from a checkout without installing the package.
_REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))

# As the entry points do: XLA:CPU's per-step temporaries stay in the heap
# (dss_jax/host.py), for both trainers in this process.
from dss_jax import host  # noqa: E402

host.keep_freed_memory()

import jax  # noqa: E402
import optax  # noqa: E402

from dss_jax import (  # noqa: E402
  hf_export,
  input_pipeline,
  paired,
  partitioning,
  seqio_tasks,
)
from dss_jax import step as step_lib  # noqa: E402
from dss_jax.models import t5  # noqa: E402

PACKED_LENGTHS = {"inputs": 256, "targets": 128}


# The paper data's slices that ship with the tests: what --smoke reads.
SMOKE_PAPER_DATA = _REPO / "tests" / "testdata" / "dss_paper"
# --smoke: the tiny test model, bytes, short rows, one step of 2 inputs.
SMOKE = dict(
  size="tiny",
  vocab="byte",
  steps=1,
  rows=4,
  examples=2,
  inputs_length=128,
  targets_length=64,
  paper_data_dir=str(SMOKE_PAPER_DATA),
)


def _register(
  tfds_dir: str, vocab_name: str, paper_data_dir: str | None
) -> tuple[object, list[str]]:
  os.environ["TFDS_DATA_DIR"] = tfds_dir
  from dss_jax import datasets, vocab

  datasets.build_annotated(
    "cqa", "palm", data_dir=tfds_dir, paper_data_dir=paper_data_dir
  )
  vocabulary = vocab.get_vocabulary(vocab_name)
  names = seqio_tasks.register_card(
    "cqa", "palm", data_dir=tfds_dir, vocabulary=vocabulary
  )
  return vocabulary, names


def _pairs(count: int) -> list[tuple[dict, dict]]:
  """The first `count` (label, rationale) example pairs, tokenized.

  From the paired task, whose pairing both trainers' official recipe use.
  """
  import seqio

  lengths = {"inputs": 4096, "targets": 4096}
  dataset = seqio.get_mixture_or_task(
    seqio_tasks.paired_task("dss_cqa_palm")
  ).get_dataset(lengths, split="train", shuffle=False)
  halves = ("", paired.RATIONALE)
  return [
    tuple(
      {"inputs": ex[h + "inputs"], "targets": ex[h + "targets"]} for h in halves
    )
    for ex in dataset.take(count).as_numpy_iterator()
  ]


def bench_packed(
  config: t5.T5Config, examples: int, rows: int, steps: int
) -> dict:
  """This trainer, official recipe packed: real tokens/s, examples per step."""
  model = t5.Transformer(config)
  tr = step_lib.Trainer(
    model,
    optax.adamw(5e-5),
    partitioning.Partitioner(devices=jax.devices()[:1]),
    task_names=("label", "rationale"),
    dropout=False,
  )
  ds = input_pipeline.make_dataset(
    input_pipeline.DatasetConfig(
      "dss_cqa_palm",
      PACKED_LENGTHS,
      batch_size=2 * examples,
      pack=True,
      packed_rows=rows,
      paired=True,
    )
  )
  batches = input_pipeline.iterate(ds)
  first = next(batches)
  # numpy init: XLA compiles the model's per-parameter RNG slowly, and the
  # values do not change the step time.
  state = tr.init_state(
    jax.random.PRNGKey(0), first, params=t5.make_test_params(config)
  )
  state, metrics = tr.train_step(state, tr.device_batch(first))  # compile
  jax.block_until_ready(metrics["loss"])
  times, real, examples = [], [], []
  for _ in range(steps):
    batch = next(batches)
    start = time.perf_counter()
    state, metrics = tr.train_step(state, tr.device_batch(batch))
    jax.block_until_ready(metrics["loss"])
    times.append(time.perf_counter() - start)
    real.append(
      np.count_nonzero(batch["encoder_input_tokens"])
      + np.count_nonzero(batch["decoder_loss_weights"])
    )
    examples.append(int(batch["decoder_segment_ids"].max(axis=1).sum()))
  seconds = sum(times)
  return {
    "step_s": statistics.median(times),
    "real_tokens_per_s": sum(real) / seconds,
    "sequences_per_step": float(np.mean(examples)),
    "fill": float(np.mean(real))
    / (rows * (PACKED_LENGTHS["inputs"] + PACKED_LENGTHS["targets"])),
  }


def _pad(seqs: list[np.ndarray], value: int) -> np.ndarray:
  width = max(len(s) for s in seqs)
  out = np.full((len(seqs), width), value, np.int64)
  for i, s in enumerate(seqs):
    out[i, : len(s)] = s
  return out


def bench_official(
  config: t5.T5Config, pairs: list, examples: int, steps: int
) -> dict | None:
  """The official two-pass, pad-to-longest recipe in PyTorch."""
  try:
    import torch
    import transformers
  except ImportError as e:
    print(f"official recipe skipped: {e}")
    return None
  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count() or 1)
  # The same mapping as the exported checkpoints (dss_jax.hf_export).
  hf_config = transformers.T5Config(
    **hf_export.hf_config(dataclasses.replace(config, dropout_rate=0.0))
  )
  model = transformers.T5ForConditionalGeneration(hf_config).train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)

  def one_pass(batch):
    inputs = torch.from_numpy(_pad([ex["inputs"] for ex in batch], 0))
    labels = torch.from_numpy(_pad([ex["targets"] for ex in batch], -100))
    real = int((inputs != 0).sum() + (labels != -100).sum())
    loss = model(
      input_ids=inputs, attention_mask=(inputs != 0).long(), labels=labels
    ).loss
    return loss, real

  def step(chunk):
    optimizer.zero_grad(set_to_none=True)
    label_loss, real_label = one_pass([p[0] for p in chunk])
    rationale_loss, real_rationale = one_pass([p[1] for p in chunk])
    # The official TaskPrefixTrainer: alpha * label + (1 - alpha) * rationale.
    (0.5 * label_loss + 0.5 * rationale_loss).backward()
    optimizer.step()
    return real_label + real_rationale

  chunks = [pairs[i : i + examples] for i in range(0, len(pairs), examples)]
  step(chunks[0])  # warm up
  times, real = [], []
  for chunk in chunks[1 : steps + 1]:
    start = time.perf_counter()
    real.append(step(chunk))
    times.append(time.perf_counter() - start)
  return {
    "step_s": statistics.median(times),
    "real_tokens_per_s": sum(real) / sum(times),
    "sequences_per_step": 2.0 * examples,
  }


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--tfds_dir",
    default=None,
    help="default /tmp/dss_tfds (--smoke: a new one)",
  )
  parser.add_argument(
    "--paper_data_dir", default=None, help="default: $DSS_PAPER_DATA_DIR"
  )
  parser.add_argument("--size", default="small", help="T5 v1.1 size")
  parser.add_argument("--vocab", default="local")
  parser.add_argument("--steps", type=int, default=6)
  parser.add_argument("--rows", type=int, default=5, help="packed rows/step")
  parser.add_argument("--inputs_length", type=int, default=256)
  parser.add_argument("--targets_length", type=int, default=128)
  parser.add_argument(
    "--examples",
    type=int,
    default=6,
    help="inputs per step, each with its label and rationale (both recipes)",
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
  if args.tfds_dir is not None or not args.smoke:
    measure(args, args.tfds_dir or "/tmp/dss_tfds")
    return
  with tempfile.TemporaryDirectory() as tfds_dir:
    measure(args, tfds_dir)


def measure(args: argparse.Namespace, tfds_dir: str) -> None:
  """Trains both recipes and prints their real tokens/s."""
  PACKED_LENGTHS.update(inputs=args.inputs_length, targets=args.targets_length)
  vocabulary, _ = _register(tfds_dir, args.vocab, args.paper_data_dir)
  config = t5.t5_1_1_config(
    args.size,
    dtype="float32",
    dropout_rate=0.0,
    vocab_size=-(-vocabulary.vocab_size // 128) * 128,
  )
  packed = bench_packed(config, args.examples, args.rows, args.steps)
  examples = args.examples
  pairs = _pairs(examples * (args.steps + 1))
  official = bench_official(config, pairs, examples, args.steps)

  print(
    f"T5 v1.1 {args.size} f32 (vocab {config.vocab_size}, {args.vocab}), "
    f"dss_cqa_palm train, {os.cpu_count()} cores"
  )
  print(f"{'recipe':<44}{'step s':>8}{'seqs/step':>10}{'real tok/s':>12}")
  rows = [
    (
      f"dss_jax packed {args.rows}x{PACKED_LENGTHS['inputs']}+"
      f"{PACKED_LENGTHS['targets']} (fill {packed['fill']:.0%})",
      packed,
    ),
    ("official: HF PyTorch, 2 passes, pad-to-longest", official),
  ]
  for name, r in rows:
    if r is None:
      continue
    print(
      f"{name:<44}{r['step_s']:>8.2f}{r['sequences_per_step']:>10.1f}"
      f"{r['real_tokens_per_s']:>12.0f}"
    )
  if official is not None:
    ratio = packed["real_tokens_per_s"] / official["real_tokens_per_s"]
    print(f"real tokens/s, packed / official: {ratio:.2f}x")


if __name__ == "__main__":
  main()
