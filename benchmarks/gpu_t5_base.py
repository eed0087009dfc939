r"""GPU training throughput of T5 v1.1 base: this trainer vs PyTorch, and MFU.

    python benchmarks/gpu_t5_base.py [--steps=10] [--batch=64] [--peak_tflops=989]

T5 v1.1 base (vocabulary 32,128), bfloat16 activations with float32
parameters, batch 64, inputs 512, targets 128, AdamW (lr 5e-5), on one GPU:
  * this trainer (`dss_jax.trainer.Trainer`: jitted step, donated state) with
    packing off (every row padded to 512 / 128) and on (examples first-fit
    packed into rows of 512 / 128 with segment ids), and packing off with the
    model's fused cuDNN flash attention (`attention_impl="cudnn"`);
  * Hugging Face `T5ForConditionalGeneration` in PyTorch (bf16 autocast,
    `torch.optim.AdamW`), packing off (HF T5 has no packed attention masks).

Examples have random lengths (inputs 64..512, targets 8..128, uniform), the
same for every trainer, so "real tok/s" (non-padding input + target tokens per
second) shows what packing buys; "tok/s" counts padded positions. MFU = model
FLOPs of the padded batch (`dss_jax.trainer.train_flops_per_step`) per second
over the chip's dense bf16 peak (989 TFLOP/s for H100/H200 SXM; override with
--peak_tflops). Needs jax with CUDA, flax, optax, numpy; torch and
transformers for the PyTorch row (skipped with a note otherwise). No
TensorFlow, SeqIO or data files needed.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import statistics
import sys
import time

import numpy as np

# Run from a checkout without installing the package.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import optax  # noqa: E402

from dss_jax import export, partitioning, trainer  # noqa: E402
from dss_jax.models import t5  # noqa: E402

INPUTS, TARGETS = 512, 128


def _examples(rng: np.random.RandomState, count: int, vocab: int) -> list:
  """Random-length (inputs, targets) token arrays ending in EOS (id 1)."""
  out = []
  for _ in range(count):
    n_in, n_tgt = rng.randint(64, INPUTS + 1), rng.randint(8, TARGETS + 1)
    inputs = rng.randint(2, vocab, size=n_in).astype(np.int32)
    targets = rng.randint(2, vocab, size=n_tgt).astype(np.int32)
    inputs[-1] = targets[-1] = 1
    out.append((inputs, targets))
  return out


def _padded_batch(examples: list) -> dict[str, np.ndarray]:
  rows = len(examples)
  batch = {
    "encoder_input_tokens": np.zeros((rows, INPUTS), np.int32),
    "decoder_target_tokens": np.zeros((rows, TARGETS), np.int32),
  }
  for i, (inputs, targets) in enumerate(examples):
    batch["encoder_input_tokens"][i, : len(inputs)] = inputs
    batch["decoder_target_tokens"][i, : len(targets)] = targets
  targets = batch["decoder_target_tokens"]
  batch["decoder_input_tokens"] = np.pad(targets[:, :-1], ((0, 0), (1, 0)))
  batch["decoder_loss_weights"] = (targets > 0).astype(np.int32)
  return batch


def _packed_batches(examples: list, rows: int) -> list[dict[str, np.ndarray]]:
  """First-fit packs examples into batches of `rows` rows of 512 / 128."""
  batches, current = [], None

  def new_batch():
    z = lambda n: np.zeros((rows, n), np.int32)  # noqa: E731
    return {
      "encoder_input_tokens": z(INPUTS),
      "encoder_segment_ids": z(INPUTS),
      "encoder_positions": z(INPUTS),
      "decoder_target_tokens": z(TARGETS),
      "decoder_input_tokens": z(TARGETS),
      "decoder_segment_ids": z(TARGETS),
      "decoder_positions": z(TARGETS),
      "decoder_loss_weights": z(TARGETS),
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
        if ni + len(inputs) <= INPUTS and nt + len(targets) <= TARGETS:
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


def bench_jax(config, batches: list, steps: int) -> dict:
  """Median step time and real tokens/s of this trainer over `batches`."""
  tr = trainer.Trainer(
    t5.Transformer(config),
    optax.adamw(5e-5),
    partitioning.make_mesh(),
    partitioning.STANDARD_LOGICAL_AXIS_RULES,
    dropout=config.dropout_rate > 0,
  )
  device_batches = [tr.device_batch(b) for b in batches]
  state = tr.init_state(jax.random.PRNGKey(0), device_batches[0])
  for b in device_batches[:3]:  # compile and warm up
    state, metrics = tr.train_step(state, b)
  jax.block_until_ready(metrics["loss"])
  times, real = [], 0
  for i in range(steps):
    b = device_batches[i % len(device_batches)]
    real += _real_tokens(batches[i % len(batches)])
    start = time.perf_counter()
    state, metrics = tr.train_step(state, b)
    jax.block_until_ready(metrics["loss"])
    times.append(time.perf_counter() - start)
  return {"step_s": statistics.median(times), "real": real / sum(times)}


def bench_torch(config, batches: list, steps: int, compile_model: bool):
  """The same for Hugging Face T5 in PyTorch (bf16 autocast), or None."""
  try:
    import torch
    import transformers
  except ImportError as e:
    print(f"PyTorch row skipped: {e}")
    return None
  torch.manual_seed(0)
  torch.backends.cuda.matmul.allow_tf32 = True
  # The same mapping as the exported checkpoints (dss_jax.export).
  hf_config = transformers.T5Config(**export.hf_config(config))
  # CUDA when there is one; the CPU path only smoke-tests this script.
  device = "cuda" if torch.cuda.is_available() else "cpu"
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  model = transformers.T5ForConditionalGeneration(hf_config).to(device)
  model.train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
  forward = torch.compile(model) if compile_model else model
  tensors = []
  for b in batches:
    inputs = torch.from_numpy(b["encoder_input_tokens"]).long().to(device)
    labels = torch.from_numpy(b["decoder_target_tokens"]).long().to(device)
    labels[labels == 0] = -100
    tensors.append((inputs, (inputs != 0).long(), labels))

  def step(inputs, mask, labels):
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=torch.bfloat16):
      loss = forward(input_ids=inputs, attention_mask=mask, labels=labels).loss
    loss.backward()
    optimizer.step()

  for t in tensors[:3]:
    step(*t)
  sync()
  times, real = [], 0
  for i in range(steps):
    real += _real_tokens(batches[i % len(batches)])
    start = time.perf_counter()
    step(*tensors[i % len(tensors)])
    sync()
    times.append(time.perf_counter() - start)
  return {"step_s": statistics.median(times), "real": real / sum(times)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--dropout", type=float, default=0.0)
  parser.add_argument("--peak_tflops", type=float, default=0.0)
  parser.add_argument("--torch_compile", action="store_true")
  parser.add_argument("--skip_torch", action="store_true")
  parser.add_argument(
    "--no_cudnn",
    action="store_true",
    help="skip the row with the model's fused cuDNN attention",
  )
  parser.add_argument(
    "--size", default="base", help="T5 v1.1 size; 'tiny' smoke-tests on CPU"
  )
  args = parser.parse_args()

  config = t5.t5_1_1_config(
    args.size, dtype="bfloat16", dropout_rate=args.dropout
  )
  rng = np.random.RandomState(0)
  examples = _examples(rng, args.batch * (args.steps + 3), config.vocab_size)
  padded = [
    _padded_batch(examples[i : i + args.batch])
    for i in range(0, len(examples), args.batch)
  ]
  packed = _packed_batches(examples, args.batch)
  peak = (
    args.peak_tflops * 1e12 * jax.device_count()
    if args.peak_tflops
    else trainer.peak_flops_per_second()
  )
  flops = trainer.train_flops_per_step(config, args.batch, INPUTS, TARGETS)
  tokens = args.batch * (INPUTS + TARGETS)

  results = [
    ("dss_jax", "off", bench_jax(config, padded, args.steps)),
    ("dss_jax", "on", bench_jax(config, packed, args.steps)),
  ]
  if not args.no_cudnn and jax.devices()[0].platform == "gpu":
    # The model's fused flash attention applies to unpacked bf16 batches.
    cudnn = dataclasses.replace(config, attention_impl="cudnn")
    results.append(
      ("dss_jax cudnn attention", "off", bench_jax(cudnn, padded, args.steps))
    )
  if not args.skip_torch:
    name = "HF T5 PyTorch" + (" (compile)" if args.torch_compile else "")
    results.append(
      (name, "off", bench_torch(config, padded, args.steps, args.torch_compile))
    )

  print(
    f"{jax.devices()[0].device_kind}: T5 v1.1 {args.size} bf16, batch {args.batch},"
    f" inputs {INPUTS}, targets {TARGETS}, AdamW, dropout {args.dropout};"
    f" {flops / 1e12:.2f} TFLOP/step; peak {peak / 1e12:.0f} TFLOP/s"
  )
  print(
    f"{'trainer':<26}{'packing':>8}{'step ms':>9}{'tok/s':>10}"
    f"{'real tok/s':>12}{'TFLOP/s':>9}{'MFU':>7}"
  )
  for name, packing, r in results:
    if r is None:
      continue
    s = r["step_s"]
    print(
      f"{name:<26}{packing:>8}{s * 1e3:>9.1f}{tokens / s:>10.0f}"
      f"{r['real']:>12.0f}{flops / s / 1e12:>9.1f}{flops / s / peak:>7.1%}"
    )


if __name__ == "__main__":
  main()
