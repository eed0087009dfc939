r"""CPU training throughput: this trainer vs Hugging Face PyTorch T5, and MFU.

    python benchmarks/train_cpu_throughput.py [--steps=8] [--dropout=0.0]
    python benchmarks/train_cpu_throughput.py --smoke   # tiny model, seconds

Measures in one run, so the machine's drift cancels (the peak is measured
before, between and after the trainers, and the best of the three is used):
  1. the CPU's float32 matmul GFLOP/s (jax, large square matmuls): the peak
     that MFU is computed against;
  2. this trainer (`dss_jax.step.Trainer`) training T5 v1.1 small
     (vocabulary 32,128, float32, batch 8, inputs 256, targets 128, AdamW, no
     packing): step time, tokens/s, MFU;
  3. Hugging Face `T5ForConditionalGeneration` (PyTorch) with the same
     configuration, batch and optimizer (`torch.optim.AdamW`), the stack of the
     official distilling step-by-step implementation.

Both models get the same random full-length batches (no padding), and MFU
uses the same FLOP count (`dss_jax.flops.train_flops_per_step`). Needs
`pip install torch transformers` for part 3 (skipped with a note otherwise).
`--smoke` runs the same parts on the tiny test model with short batches and
a small, short peak measurement (tests/benchmarks_test.py runs it).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Sequence

import numpy as np

# PyTorch's OpenMP threads spin while they wait; on a machine shared with other
# jobs that stalls every barrier (steps measured 5-10x slower and erratic).
# Passive waiting must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Run from a checkout without installing the package.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# As the entry points do: XLA:CPU's per-step temporaries stay in the heap
# (dss_jax/host.py), for both trainers in this process.
from dss_jax import host  # noqa: E402

host.keep_freed_memory()

import jax  # noqa: E402
import optax  # noqa: E402

from dss_jax import hf_export, partitioning  # noqa: E402
from dss_jax import step as step_lib  # noqa: E402
from dss_jax.flops import measure_matmul_flops, train_flops_per_step  # noqa: E402
from dss_jax.models import t5  # noqa: E402

# --smoke: the tiny test model on short rows, a short small peak measurement.
SMOKE = dict(
  size="tiny",
  batch=2,
  inputs=32,
  targets=16,
  steps=2,
  matmul_size=256,
  peak_seconds=0.3,
)


def _batch(
  rng: np.random.RandomState, vocab: int, shape: tuple[int, int, int]
) -> dict[str, np.ndarray]:
  batch, inputs_length, targets_length = shape
  # Token 0 is padding and 1 is EOS; draw real tokens from the rest.
  inputs = rng.randint(2, vocab, size=(batch, inputs_length)).astype(np.int32)
  targets = rng.randint(2, vocab, size=(batch, targets_length)).astype(np.int32)
  return {
    "encoder_input_tokens": inputs,
    "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
    "decoder_target_tokens": targets,
    "decoder_loss_weights": np.ones_like(targets),
  }


def _time_steps(step, steps: int) -> list[float]:
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return times


def bench_jax(
  config: t5.T5Config, steps: int, shape: tuple[int, int, int]
) -> list[float]:
  """Seconds of each timed training step of this trainer."""
  model = t5.Transformer(config)
  tr = step_lib.Trainer(
    model,
    optax.adamw(5e-5),
    partitioning.Partitioner(devices=jax.devices()[:1]),
    dropout=config.dropout_rate > 0,
  )
  rng = np.random.RandomState(0)
  batch = tr.device_batch(_batch(rng, config.vocab_size, shape))
  # numpy init: XLA compiles the model's per-parameter RNG slowly, and the
  # values do not change the step time.
  state = tr.init_state(
    jax.random.PRNGKey(0), batch, params=t5.make_test_params(config)
  )
  holder = {"state": state}

  def step():
    holder["state"], metrics = tr.train_step(holder["state"], batch)
    jax.block_until_ready(metrics["loss"])

  step()  # compile
  return _time_steps(step, steps)


def bench_torch(
  config: t5.T5Config, steps: int, shape: tuple[int, int, int]
) -> list[float] | None:
  """Seconds of each timed training step of HF PyTorch T5, or None."""
  try:
    import torch
    import transformers
  except ImportError as e:
    print(f"PyTorch peer skipped: {e}")
    return None
  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count() or 1)
  # The same mapping as the exported checkpoints (dss_jax.hf_export).
  hf_config = transformers.T5Config(**hf_export.hf_config(config))
  model = transformers.T5ForConditionalGeneration(hf_config).train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
  rng = np.random.RandomState(0)
  batch = _batch(rng, config.vocab_size, shape)
  input_ids = torch.from_numpy(batch["encoder_input_tokens"]).long()
  labels = torch.from_numpy(batch["decoder_target_tokens"]).long()

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = model(input_ids=input_ids, labels=labels).loss
    loss.backward()
    optimizer.step()

  step()  # warm up the allocator
  return _time_steps(step, steps)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=8)
  parser.add_argument("--dropout", type=float, default=0.0)
  parser.add_argument("--matmul_size", type=int, default=2048)
  parser.add_argument(
    "--peak_seconds", type=float, default=3.0, help="per peak measurement"
  )
  parser.add_argument("--size", default="small", help="T5 v1.1 size")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--inputs", type=int, default=256)
  parser.add_argument("--targets", type=int, default=128)
  parser.add_argument(
    "--smoke",
    action="store_true",
    help=f"small sizes (flags given still count): {SMOKE}",
  )
  args = parser.parse_args(argv)
  if args.smoke:
    parser.set_defaults(**SMOKE)
    args = parser.parse_args(argv)

  config = t5.t5_1_1_config(
    args.size, dtype="float32", dropout_rate=args.dropout
  )
  shape = (args.batch, args.inputs, args.targets)
  flops = train_flops_per_step(config, *shape)
  tokens = args.batch * (args.inputs + args.targets)
  peak_before = measure_matmul_flops(args.matmul_size, args.peak_seconds)
  jax_times = bench_jax(config, args.steps, shape)
  peak_between = measure_matmul_flops(args.matmul_size, args.peak_seconds)
  torch_times = bench_torch(config, args.steps, shape)
  peak_after = measure_matmul_flops(args.matmul_size, args.peak_seconds)
  # The best of three: a neighbor's load during one measurement must not
  # lower the peak and so raise the MFU.
  peak = max(peak_before, peak_between, peak_after)

  print(
    f"cores: {os.cpu_count()}  jax {jax.__version__}  devices {jax.devices()}"
  )
  print(
    f"float32 matmul peak ({args.matmul_size}^2): "
    f"{peak_before / 1e9:.1f} GFLOP/s before, {peak_between / 1e9:.1f}"
    f" between, {peak_after / 1e9:.1f} after the trainers"
  )
  print(
    f"T5 v1.1 {args.size}, f32, batch {args.batch}, inputs {args.inputs},"
    f" targets {args.targets}, AdamW, dropout {args.dropout}:"
    f" {flops / 1e9:.4g} GFLOP per step"
  )
  print(
    f"{'trainer':<24}{'step s':>9}{'tokens/s':>11}{'TFLOP/s':>9}{'MFU':>7}"
    "   (median step; fastest-slowest)"
  )
  rows = [("dss_jax (JAX/XLA)", jax_times), ("HF T5 (PyTorch)", torch_times)]
  median = {}
  for name, times in rows:
    if times is None:
      continue
    seconds = median[name] = statistics.median(times)
    print(
      f"{name:<24}{seconds:>9.3f}{tokens / seconds:>11.0f}"
      f"{flops / seconds / 1e12:>9.3f}{flops / seconds / peak:>7.1%}"
      f"   ({min(times):.3f}-{max(times):.3f} s)"
    )
  if torch_times is not None:
    speedup = median["HF T5 (PyTorch)"] / median["dss_jax (JAX/XLA)"]
    print(f"speedup dss_jax / PyTorch: {speedup:.2f}x")


if __name__ == "__main__":
  main()
