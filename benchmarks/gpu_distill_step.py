r"""The paper-scale distilling step-by-step step on one GPU, against its plan.

    python benchmarks/gpu_distill_step.py [--steps=50] [--microbatches=1] \
      [--inputs_length=512] [--targets_length=128] [--peak_tflops=989]
    python benchmarks/gpu_distill_step.py --smoke   # tiny model, CPU, seconds

T5 v1.1 Base (vocabulary 32,128), bfloat16 activations, float32 parameters
and AdamW state, the official recipe's step as `dss-jax distill
--recipe=official` trains it: 64 inputs, each with its label row and its
rationale row (128 sequences), loss alpha * L_label + (1 - alpha) *
L_rationale with token means over the whole step, trained by
`dss_jax.step.Trainer` as the job's trainer does (jitted, donated state,
`--microbatches` exact accumulation). Rows have random lengths (inputs
64..inputs_length, labels 2..8 tokens, rationales 16..targets_length), padded
as the demo's pipeline pads them (no packing). The input pipeline itself
(SeqIO, TFDS) is not run: each step's batch is placed from host memory,
the same for every step.

It prints, every 10 steps, the step time, tokens/s (padded and real), MFU
against the chip's datasheet dense bf16 peak (`dss_jax.flops`) and the
device's peak memory, then `dss_jax.plan`'s estimate of the same step
(memory per device and time at the plan's MFU) beside the measurement.

Not yet run on a GPU; the smoke mode runs in tests/benchmarks_test.py.
"""

from __future__ import annotations

import argparse
import pathlib
import resource
import sys
import time

import numpy as np

# Run from a checkout without installing the package.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from dss_jax import host  # noqa: E402

host.add_xla_flag_defaults()

import jax  # noqa: E402
import optax  # noqa: E402

from dss_jax import flops, partitioning, plan  # noqa: E402
from dss_jax import step as step_lib  # noqa: E402
from dss_jax.models import t5  # noqa: E402

LABEL, RATIONALE = 1, 2  # decoder_task_ids of the two tasks


def make_batch(
  rng: np.random.RandomState,
  inputs: int,
  inputs_length: int,
  targets_length: int,
  vocab: int,
) -> dict[str, np.ndarray]:
  """`inputs` label rows then `inputs` rationale rows, padded."""
  n = 2 * inputs
  enc = np.zeros((n, inputs_length), np.int32)
  tgt = np.zeros((n, targets_length), np.int32)
  task = np.zeros((n, targets_length), np.int32)
  for i in range(inputs):
    n_in = rng.randint(min(64, inputs_length), inputs_length + 1)
    tokens = rng.randint(2, vocab, n_in)
    for row, task_id, lo, hi in (
      (i, LABEL, 2, min(8, targets_length)),
      (inputs + i, RATIONALE, min(16, targets_length), targets_length),
    ):
      enc[row, :n_in] = tokens
      n_t = rng.randint(lo, hi + 1)
      tgt[row, :n_t] = rng.randint(2, vocab, n_t)
      tgt[row, n_t - 1] = 1  # EOS
      task[row, :n_t] = task_id
  return {
    "encoder_input_tokens": enc,
    "decoder_input_tokens": np.pad(tgt[:, :-1], ((0, 0), (1, 0))),
    "decoder_target_tokens": tgt,
    "decoder_loss_weights": (tgt > 0).astype(np.int32),
    step_lib.TASK_IDS: task,
  }


def peak_memory_bytes() -> tuple[float, str]:
  """The device's peak bytes in use (an accelerator) or the peak RSS (CPU)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return float(stats["peak_bytes_in_use"]), "device peak"
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0, "RSS"


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--smoke", action="store_true")
  parser.add_argument("--size", default="base")
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--inputs", type=int, default=64, help="inputs a step")
  parser.add_argument("--inputs_length", type=int, default=512)
  parser.add_argument("--targets_length", type=int, default=128)
  parser.add_argument("--microbatches", type=int, default=1)
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--peak_tflops", type=float, default=None)
  args = parser.parse_args(argv)
  if args.smoke:
    args.size, args.steps, args.inputs = "tiny", 4, 4
    args.inputs_length, args.targets_length = 32, 16
    args.dtype = "float32"
  vocab = 512 if args.size == "tiny" else 32_128
  config = t5.t5_1_1_config(
    args.size, vocab_size=vocab, dtype=args.dtype, dropout_rate=0.0
  )
  rows = 2 * args.inputs
  trainer = step_lib.Trainer(
    t5.Transformer(config),
    optax.adamw(5e-5),
    partitioning.Partitioner(devices=jax.devices()[:1]),
    task_names=("label", "rationale"),
    task_weights=step_lib.StepConfig(
      recipe="official", rationale_rate=1.0
    ).task_weights(2),
    loss=step_lib.official_loss(step_lib.LossConfig()),
    num_microbatches=args.microbatches,
    dropout=False,
  )
  batch = make_batch(
    np.random.RandomState(0),
    args.inputs,
    args.inputs_length,
    args.targets_length,
    config.vocab_size,
  )
  real = int(
    np.count_nonzero(batch["encoder_input_tokens"])
    + np.count_nonzero(batch["decoder_loss_weights"])
  )
  padded = rows * (args.inputs_length + args.targets_length)
  step_flops = flops.train_flops_per_step(
    config, rows, args.inputs_length, args.targets_length
  )
  peak = flops.peak_flops_per_second(
    None if args.peak_tflops is None else args.peak_tflops * 1e12
  )
  device = jax.devices()[0]
  print(
    f"{device.device_kind}: t5 {args.size} {args.dtype}, {rows} rows of "
    f"{args.inputs_length}/{args.targets_length}, {args.microbatches} "
    f"micro-batch(es), {step_flops / 1e12:.3g} TFLOP a step, peak "
    f"{peak / 1e12:.3g} TFLOP/s",
    flush=True,
  )
  state = trainer.init_state(jax.random.PRNGKey(0), batch)
  device_batch = trainer.device_batch(batch)
  start = time.perf_counter()
  state, metrics = trainer.train_step(state, device_batch)
  float(metrics["loss"])
  print(
    f"compile + first step: {time.perf_counter() - start:.1f} s", flush=True
  )
  times = []
  window, last = time.perf_counter(), 0
  for i in range(1, args.steps + 1):
    state, metrics = trainer.train_step(state, device_batch)
    if i % 10 == 0 or i == args.steps:
      loss = float(metrics["loss"])  # waits for the step
      now = time.perf_counter()
      steps = i - last
      times.append((steps, now - window))
      window, last = now, i
      step_s = times[-1][1] / steps
      used, kind = peak_memory_bytes()
      print(
        f"step {i}: {step_s * 1e3:.1f} ms/step, {padded / step_s:,.0f} tok/s "
        f"({real / step_s:,.0f} real), MFU {step_flops / step_s / peak:.1%}, "
        f"{kind} {used / 2**30:.2f} GiB, loss {loss:.4f}",
        flush=True,
      )
  # The last window's steps are past compilation and warm.
  steps, seconds = times[-1]
  step_s = seconds / steps
  estimate = plan.memory_of(
    args.size,
    config,
    rows,
    args.inputs_length,
    args.targets_length,
    microbatches=args.microbatches,
  )
  used, kind = peak_memory_bytes()
  planned_s = step_flops / (peak * plan._H100_MFU)  # noqa: SLF001
  print(
    f"plan: {estimate.total / 2**30:.2f} GiB per device (state "
    f"{(estimate.total - estimate.activations) / 2**30:.2f}, activations "
    f"{estimate.activations / 2**30:.2f}); measured {kind} "
    f"{used / 2**30:.2f} GiB ({used / estimate.total:.0%} of the plan)"
  )
  print(
    f"plan: {planned_s * 1e3:.1f} ms/step at the plan's "
    f"{plan._H100_MFU:.1%} MFU; measured {step_s * 1e3:.1f} ms "  # noqa: SLF001
    f"({step_flops / step_s / peak:.1%} MFU)"
  )


if __name__ == "__main__":
  main()
