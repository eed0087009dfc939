r"""GPU training throughput of T5 v1.1 base: this trainer vs PyTorch, and MFU.

    python benchmarks/gpu_t5_base.py [--steps=10] [--batch=64] \
      [--rows=xla,packed,cudnn,torch] [--peak_tflops=989] [--profile_dir=DIR]
    python benchmarks/gpu_t5_base.py --smoke   # tiny model, any device

`--smoke` runs every row the device has (cuDNN attention only on a GPU) in
one process, on the tiny test model in float32 with rows of 32 / 16 tokens,
batch 2, one device, one step per window: seconds on a CPU
(tests/benchmarks_test.py runs it).

T5 v1.1 base (vocabulary 32,128), bfloat16 activations with float32
parameters, batch 64, inputs 512, targets 128, AdamW (lr 5e-5), on one GPU:
  * this trainer (`dss_jax.step.Trainer`: jitted step, donated state) with
    packing off (every row padded to 512 / 128) and on (examples first-fit
    packed into rows of 512 / 128 with segment ids), and packing off with the
    model's fused cuDNN flash attention (`attention_impl="cudnn"`);
  * Hugging Face `T5ForConditionalGeneration` in PyTorch (bf16 autocast,
    fused `torch.optim.AdamW`), packing off (HF T5 has no packed masks).

Each row runs in its own process (both frameworks keep the GPU memory they
take). Steps are timed as `Trainer`'s loop runs them, with one step queued
behind the running one (the host reads a step's loss after dispatching the
next); the median of 3 windows of `--steps` steps is reported. Examples have
random lengths (inputs 64..512, targets 8..128, uniform), the same for every
trainer, so "real tok/s" (non-padding input + target tokens per second) shows
what packing buys; "tok/s" counts padded positions. MFU = model FLOPs of the
padded batch (`dss_jax.flops.train_flops_per_step`) per second over the
chip's dense bf16 datasheet peak (989 TFLOP/s for H100/H200 SXM; override
with --peak_tflops); "MFU/meas" is over a bf16 8192^3 matmul measured on the
card in the same process. `--profile_dir` traces 3 steps of each dss_jax row
and prints GPU kernel time by class and the 30 costliest kernels.

Measured 2026-11-26 on one NVIDIA H100 80GB HBM3 (jax 0.11.2, flax 0.12.10,
torch 2.11.0+cu130), 28.00 TFLOP of model math per step, bf16 matmul measured
at 784-794 TFLOP/s (the runs printed 25.91 TFLOP, a count that took the
cross-attention keys and values over decoder tokens; recomputed here):

    row (packing off)                        step ms  TFLOP/s    MFU  MFU/meas
    dss_jax, cuDNN attention                    75.9    368.9  37.3%     47.0%
      the same with XLA's dot merging           79.6    351.8  35.6%     44.8%
      the same, earlier version (a)             86.4    324.1  32.8%     40.8%
    dss_jax, XLA attention, earlier (a)        127.0    220.5  22.3%     27.8%
    HF T5 PyTorch                              376.5     74.4   7.5%      9.5%

  (a) the previous version of this script, which synchronized after every
      step, with the logits' backward matmuls still in TF32.
The packed row was not measured on this card (it ran out of memory after
the PyTorch row in one process, which is why rows now get a process each).
The profile (`--profile_dir`) of the 86.4 ms step: 36.8 ms of matmuls
(~640 TFLOP/s; 2.4 ms of it the logits' backward in TF32, now bf16), 13.8 ms
of cuDNN flash attention (4.0 of it the position bias's gradient), 27.0 ms
of XLA fusions (layer norms, gated GELU, AdamW, the copies around merged
dots), and 8.5 ms with no kernel running (now hidden by the queued step). Needs jax with CUDA, flax, optax, numpy;
torch and transformers for the PyTorch row (skipped with a note otherwise).
No TensorFlow, SeqIO or data files needed.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import pathlib
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

import numpy as np

# JAX and PyTorch share the card: JAX must not reserve 75% of it up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# Run from a checkout without installing the package.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# As the entry points do: this project's XLA flag defaults (dss_jax/host.py).
from dss_jax import host  # noqa: E402

host.add_xla_flag_defaults()

import jax  # noqa: E402
import optax  # noqa: E402

from dss_jax import hf_export, partitioning  # noqa: E402
from dss_jax import step as step_lib  # noqa: E402
from dss_jax.flops import peak_flops_per_second, train_flops_per_step  # noqa: E402
from dss_jax.models import t5  # noqa: E402

INPUTS, TARGETS = 512, 128
# --smoke: the tiny test model, short rows, one step per timed window.
# float32: XLA:CPU and PyTorch on a CPU emulate bfloat16, slowly (compiling the
# tiny model's step took 5x as long).
SMOKE = dict(
  size="tiny",
  dtype="float32",
  devices=1,
  batch=2,
  steps=1,
  inputs=32,
  targets=16,
)


def _examples(
  rng: np.random.RandomState, count: int, vocab: int, lengths: tuple[int, int]
) -> list:
  """Random-length (inputs, targets) token arrays ending in EOS (id 1)."""
  inputs_length, targets_length = lengths
  out = []
  for _ in range(count):
    # Inputs 1/8 to all of their row (64..512), targets 1/16 (8..128).
    n_in = rng.randint(inputs_length // 8, inputs_length + 1)
    n_tgt = rng.randint(targets_length // 16, targets_length + 1)
    inputs = rng.randint(2, vocab, size=n_in).astype(np.int32)
    targets = rng.randint(2, vocab, size=n_tgt).astype(np.int32)
    inputs[-1] = targets[-1] = 1
    out.append((inputs, targets))
  return out


def _padded_batch(
  examples: list, lengths: tuple[int, int]
) -> dict[str, np.ndarray]:
  rows = len(examples)
  batch = {
    "encoder_input_tokens": np.zeros((rows, lengths[0]), np.int32),
    "decoder_target_tokens": np.zeros((rows, lengths[1]), np.int32),
  }
  for i, (inputs, targets) in enumerate(examples):
    batch["encoder_input_tokens"][i, : len(inputs)] = inputs
    batch["decoder_target_tokens"][i, : len(targets)] = targets
  targets = batch["decoder_target_tokens"]
  batch["decoder_input_tokens"] = np.pad(targets[:, :-1], ((0, 0), (1, 0)))
  batch["decoder_loss_weights"] = (targets > 0).astype(np.int32)
  return batch


def _packed_batches(
  examples: list, rows: int, lengths: tuple[int, int]
) -> list[dict[str, np.ndarray]]:
  """First-fit packs examples into batches of `rows` rows of 512 / 128."""
  inputs_length, targets_length = lengths
  batches, current = [], None

  def new_batch():
    z = lambda n: np.zeros((rows, n), np.int32)  # noqa: E731
    return {
      "encoder_input_tokens": z(inputs_length),
      "encoder_segment_ids": z(inputs_length),
      "encoder_positions": z(inputs_length),
      "decoder_target_tokens": z(targets_length),
      "decoder_input_tokens": z(targets_length),
      "decoder_segment_ids": z(targets_length),
      "decoder_positions": z(targets_length),
      "decoder_loss_weights": z(targets_length),
      "_fill": np.zeros((rows, 3), np.int32),  # input used, target used, segs
    }

  for inputs, targets in examples:
    placed = False
    while not placed:
      if current is None:
        current = new_batch()
      fill = current["_fill"]
      for r in range(rows):
        ni, nt, seg = fill[r]
        if (
          ni + len(inputs) <= inputs_length
          and nt + len(targets) <= targets_length
        ):
          seg += 1
          e, d = slice(ni, ni + len(inputs)), slice(nt, nt + len(targets))
          current["encoder_input_tokens"][r, e] = inputs
          current["encoder_segment_ids"][r, e] = seg
          current["encoder_positions"][r, e] = np.arange(len(inputs))
          current["decoder_target_tokens"][r, d] = targets
          current["decoder_input_tokens"][r, d] = np.concatenate(
            [[0], targets[:-1]]
          )
          current["decoder_segment_ids"][r, d] = seg
          current["decoder_positions"][r, d] = np.arange(len(targets))
          current["decoder_loss_weights"][r, d] = 1
          fill[r] = (ni + len(inputs), nt + len(targets), seg)
          placed = True
          break
      if not placed:
        batches.append(current)
        current = None
  return [{k: v for k, v in b.items() if k != "_fill"} for b in batches]


def _real_tokens(batch: dict[str, np.ndarray]) -> int:
  return int(
    np.count_nonzero(batch["encoder_input_tokens"])
    + np.count_nonzero(batch["decoder_loss_weights"])
  )


def _kernel_class(name: str) -> str:
  n = name.lower()
  if any(k in n for k in ("gemm", "xmma", "nvjet", "cutlass", "matmul")):
    return "matmul"
  if any(k in n for k in ("cudnn", "flash", "fmha", "sdpa", "attn")):
    return "fused attention"
  if "triton" in n:
    return "triton fusion"
  if "memcpy" in n or "memset" in n:
    return "copies"
  return "xla fusion"


def profile_steps(tr, state, batches: list, label: str, out_dir: str):
  """Traces 3 steps; prints GPU kernel time per step by class and the top ops.

  Writes the trace (TensorBoard profile plugin layout) and the compiled HLO
  under `out_dir`, so kernel names can be traced back to model code.
  """
  from jax.profiler import ProfileData

  slug = "".join(c if c.isalnum() else "_" for c in label)
  pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)
  trace_dir = pathlib.Path(out_dir) / f"trace_{slug}"
  lowered = tr._train_step.lower(state, batches[0])  # noqa: SLF001
  (pathlib.Path(out_dir) / f"hlo_{slug}.txt").write_text(
    lowered.compile().as_text()
  )
  steps = 3
  with jax.profiler.trace(str(trace_dir)):
    for i in range(steps):
      state, metrics = tr.train_step(state, batches[i % len(batches)])
    jax.block_until_ready(metrics["loss"])
  (xplane,) = trace_dir.glob("**/*.xplane.pb")
  by_class, by_op = {}, {}
  for plane in ProfileData.from_file(str(xplane)).planes:
    if not plane.name.startswith("/device:GPU"):
      continue
    for line in plane.lines:
      if "stream" not in line.name.lower():
        continue
      for event in line.events:
        ms = event.duration_ns / 1e6 / steps
        cls = _kernel_class(event.name)
        by_class[cls] = by_class.get(cls, 0.0) + ms
        op = dict(event.stats).get("hlo_op", event.name)
        key = (cls, str(op)[:60], event.name[:50])
        by_op[key] = by_op.get(key, 0.0) + ms
  print(f"profile of {label}: GPU kernel ms per step by class")
  for cls, ms in sorted(by_class.items(), key=lambda kv: -kv[1]):
    print(f"  {cls:<18}{ms:8.2f}")
  print(f"  {'total':<18}{sum(by_class.values()):8.2f}")
  print("  top ops (ms/step, class, hlo op, kernel):")
  for (cls, op, kernel), ms in sorted(by_op.items(), key=lambda kv: -kv[1])[
    :30
  ]:
    print(f"  {ms:7.2f}  {cls:<16} {op:<40} {kernel}")
  return state


# Timed windows of `--steps` steps each; the median window is reported.
WINDOWS = 3


def _mean_real_tokens(batches: list) -> float:
  return statistics.mean(_real_tokens(b) for b in batches)


def bench_jax(
  config,
  batches: list,
  steps: int,
  profile_dir: str = "",
  label: str = "",
  devices: int = 0,
) -> dict:
  """Median step time and real tokens/s of this trainer over `batches`."""
  tr = step_lib.Trainer(
    t5.Transformer(config),
    optax.adamw(5e-5),
    partitioning.Partitioner(devices=jax.devices()[:devices] or None),
    dropout=config.dropout_rate > 0,
  )
  device_batches = [tr.device_batch(b) for b in batches]
  # numpy init: XLA compiles the model's per-parameter RNG slowly, and the
  # values do not change the step time.
  state = tr.init_state(
    jax.random.PRNGKey(0),
    device_batches[0],
    params=t5.make_test_params(config),
  )
  for b in device_batches[:3]:  # compile and warm up
    state, metrics = tr.train_step(state, b)
  jax.block_until_ready(metrics["loss"])

  def window(first: int) -> float:
    # As `Trainer`'s loop: the host reads each step's metrics only after
    # dispatching the next one, so one step is always queued on the device.
    nonlocal state
    start, pending = time.perf_counter(), None
    for i in range(first, first + steps):
      state, metrics = tr.train_step(state, device_batches[i % len(batches)])
      if pending is not None:
        float(pending["loss"])
      pending = metrics
    float(pending["loss"])
    return (time.perf_counter() - start) / steps

  step_s = statistics.median(window(w * steps) for w in range(WINDOWS))
  if profile_dir:
    profile_steps(tr, state, device_batches, label, profile_dir)
  return {"step_s": step_s, "real": _mean_real_tokens(batches) / step_s}


def bench_torch(config, batches: list, steps: int, compile_model: bool):
  """The same for Hugging Face T5 in PyTorch (bf16 autocast), or None.

  Autocast follows the model's dtype: float32 (--smoke) runs without it.
  """
  try:
    import torch
    import transformers
  except ImportError as e:
    print(f"PyTorch row skipped: {e}")
    return None
  torch.manual_seed(0)
  torch.backends.cuda.matmul.allow_tf32 = True
  # The same mapping as the exported checkpoints (dss_jax.hf_export).
  hf_config = transformers.T5Config(**hf_export.hf_config(config))
  # CUDA when there is one; the CPU path only smoke-tests this script.
  device = "cuda" if torch.cuda.is_available() else "cpu"
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  model = transformers.T5ForConditionalGeneration(hf_config).to(device)
  model.train()
  optimizer = torch.optim.AdamW(
    model.parameters(), lr=5e-5, fused=device == "cuda"
  )
  forward = torch.compile(model) if compile_model else model
  tensors = []
  for b in batches:
    inputs = torch.from_numpy(b["encoder_input_tokens"]).long().to(device)
    labels = torch.from_numpy(b["decoder_target_tokens"]).long().to(device)
    labels[labels == 0] = -100
    tensors.append((inputs, (inputs != 0).long(), labels))

  def step(inputs, mask, labels):
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(
      device, dtype=torch.bfloat16, enabled=config.dtype == "bfloat16"
    ):
      loss = forward(input_ids=inputs, attention_mask=mask, labels=labels).loss
    loss.backward()
    optimizer.step()

  for t in tensors[:3]:
    step(*t)
  sync()

  def window(first: int) -> float:
    # No per-step synchronization either: the host queues steps ahead.
    start = time.perf_counter()
    for i in range(first, first + steps):
      step(*tensors[i % len(tensors)])
    sync()
    return (time.perf_counter() - start) / steps

  step_s = statistics.median(window(w * steps) for w in range(WINDOWS))
  return {"step_s": step_s, "real": _mean_real_tokens(batches) / step_s}


def measured_matmul_tflops(size: int = 8192, reps: int = 10) -> float:
  """bf16 matmul TFLOP/s of the first device on random data (best of 3)."""
  import jax.numpy as jnp

  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  a, b = (jax.random.normal(k, (size, size), jnp.bfloat16) for k in keys)
  f = jax.jit(lambda a, b: a @ b)
  f(a, b).block_until_ready()
  best = float("inf")
  for _ in range(3):
    start = time.perf_counter()
    for _ in range(reps):
      out = f(a, b)
    out.block_until_ready()
    best = min(best, (time.perf_counter() - start) / reps)
  return 2 * size**3 / best / 1e12


def print_header(args, flops: float, peak: float, measured: float) -> None:
  if measured:
    print(
      f"measured bf16 matmul (8192^3, random data):"
      f" {measured / 1e12:.0f} TFLOP/s (MFU/meas is against it)",
      flush=True,
    )
  print(
    f"{jax.devices()[0].device_kind}: T5 v1.1 {args.size} {_SHORT[args.dtype]},"
    f" batch {args.batch}, inputs {args.inputs}, targets {args.targets}, AdamW,"
    f" dropout {args.dropout}; {flops / 1e12:.2f} TFLOP/step;"
    f" peak {peak / 1e12:.0f} TFLOP/s",
    flush=True,
  )
  print(
    f"{'trainer':<26}{'packing':>8}{'step ms':>9}{'tok/s':>10}"
    f"{'real tok/s':>12}{'TFLOP/s':>9}{'MFU':>7}"
    + (f"{'MFU/meas':>9}" if measured else ""),
    flush=True,
  )


ROWS = ("xla", "packed", "cudnn", "torch")
_SHORT = {"bfloat16": "bf16", "float32": "f32"}


def main(argv: Sequence[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--dropout", type=float, default=0.0)
  parser.add_argument("--peak_tflops", type=float, default=0.0)
  parser.add_argument("--torch_compile", action="store_true")
  parser.add_argument(
    "--rows",
    default=",".join(ROWS),
    help="comma-separated rows to run, of: " + ", ".join(ROWS),
  )
  parser.add_argument(
    "--row_only",
    action="store_true",
    help="print the measured row only (no header)",
  )
  parser.add_argument(
    "--profile_dir",
    default="",
    help="trace 3 steps of each dss_jax row here and print a kernel summary",
  )
  parser.add_argument(
    "--size", default="base", help="T5 v1.1 size; 'tiny' smoke-tests on CPU"
  )
  parser.add_argument(
    "--dtype",
    default="bfloat16",
    choices=tuple(_SHORT),
    help="activations (float32 parameters)",
  )
  parser.add_argument(
    "--devices", type=int, default=0, help="train on the first N (0: all)"
  )
  parser.add_argument("--inputs", type=int, default=INPUTS)
  parser.add_argument("--targets", type=int, default=TARGETS)
  parser.add_argument(
    "--smoke",
    action="store_true",
    help=f"small sizes, rows in one process (flags given still count): {SMOKE}",
  )
  args = parser.parse_args(argv)
  if args.smoke:
    parser.set_defaults(**SMOKE)
    args = parser.parse_args(argv)
  rows = args.rows.split(",")
  unknown = set(rows) - set(ROWS)
  if unknown:
    parser.error(f"--rows: unknown {sorted(unknown)}; choose from {ROWS}")
  if len(rows) > 1 and not args.smoke:
    # One process per row: each framework's allocator keeps what it took,
    # so rows sharing a process run out of GPU memory (seen on an H100).
    others = [a for a in argv if not a.startswith("--rows")]
    for i, row in enumerate(rows):
      subprocess.run(
        [sys.executable, __file__, *others, f"--rows={row}"]
        + (["--row_only"] if i else []),
        check=False,
      )
    return

  config = t5.t5_1_1_config(
    args.size, dtype=args.dtype, dropout_rate=args.dropout
  )
  lengths = (args.inputs, args.targets)
  rng = np.random.RandomState(0)
  examples = _examples(
    rng, args.batch * (args.steps + 3), config.vocab_size, lengths
  )
  padded = [
    _padded_batch(examples[i : i + args.batch], lengths)
    for i in range(0, len(examples), args.batch)
  ]
  packed = _packed_batches(examples, args.batch, lengths)
  peak = (
    args.peak_tflops * 1e12 * jax.device_count()
    if args.peak_tflops
    else peak_flops_per_second()
  )
  flops = train_flops_per_step(config, args.batch, *lengths)
  tokens = args.batch * sum(lengths)
  measured = 0.0
  if jax.devices()[0].platform == "gpu":
    measured = measured_matmul_tflops() * 1e12
  if not args.row_only:
    print_header(args, flops, peak, measured)

  def report(name: str, packing: str, r: dict | None) -> None:
    if r is None:
      return
    s = r["step_s"]
    print(
      f"{name:<26}{packing:>8}{s * 1e3:>9.1f}{tokens / s:>10.0f}"
      f"{r['real']:>12.0f}{flops / s / 1e12:>9.1f}{flops / s / peak:>7.1%}"
      + (f"{flops / s / measured:>9.1%}" if measured else ""),
      flush=True,
    )

  bench = functools.partial(
    bench_jax,
    steps=args.steps,
    profile_dir=args.profile_dir,
    devices=args.devices,
  )
  for row in rows:
    if row == "xla":
      report("dss_jax", "off", bench(config, padded, label="xla"))
    elif row == "packed":
      report("dss_jax", "on", bench(config, packed, label="packed"))
    elif row == "cudnn" and jax.devices()[0].platform == "gpu":
      # The model's fused flash attention applies to unpacked batches.
      cudnn = dataclasses.replace(config, attention_impl="cudnn")
      report(
        "dss_jax cudnn attention", "off", bench(cudnn, padded, label="cudnn")
      )
    elif row == "torch":
      name = "HF T5 PyTorch" + (" (compile)" if args.torch_compile else "")
      report(
        name, "off", bench_torch(config, padded, args.steps, args.torch_compile)
      )


if __name__ == "__main__":
  main()
