"""Model FLOPs of a T5 training step, and the peak they are measured against.

MFU (model FLOPs utilization) = `train_flops_per_step` x steps/s over
`peak_flops_per_second`: a datasheet peak on accelerators, and on CPUs a
float32 matmul measured on the spot (`measure_matmul_flops`).
"""

from __future__ import annotations

import functools
import logging
import time
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
  from dss_jax.models.config import T5Config

# Peak dense bfloat16 FLOP/s per chip, for MFU on accelerators (vendor
# datasheets; H100/H200 SXM dense, TPU per chip). CPUs are measured instead.
PEAK_FLOPS_BY_DEVICE_KIND = {
  "NVIDIA H100 80GB HBM3": 989e12,
  "NVIDIA H100": 989e12,
  "NVIDIA H200": 989e12,
  "NVIDIA A100-SXM4-80GB": 312e12,
  "NVIDIA A100-SXM4-40GB": 312e12,
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,
  "TPU v5e": 197e12,
  "TPU v5p": 459e12,
  "TPU v5": 459e12,
  "TPU v6 lite": 918e12,
  "TPU v6e": 918e12,
}


def train_flops_per_step(
  config: T5Config, batch_size: int, inputs_length: int, targets_length: int
) -> float:
  """Model FLOPs of one training step (forward + backward = 3x forward).

  Counts every matmul with weights (2 FLOPs per multiply-add, the 6*N*tokens
  rule split by the tokens each weight sees: the decoder's cross-attention
  keys and values project encoder tokens), the output projection, and the
  attention score and value matmuls, on the padded lengths (the work the
  hardware does). Embedding gathers, the position-bias lookup, norms and
  softmax are not counted, as in the PaLM MFU definition.

  Args:
    config: a `T5Config` (emb_dim, num_heads, head_dim, mlp_dim, layers,
      vocab_size, mlp_activations).
    batch_size: global rows per step.
    inputs_length: encoder length.
    targets_length: decoder length.

  Returns:
    FLOPs per training step.
  """
  d, hd = config.emb_dim, config.num_heads * config.head_dim
  mlp = (len(config.mlp_activations) + 1) * d * config.mlp_dim
  proj = d * hd  # one of the query, key, value and out projections
  li, lt = inputs_length, targets_length
  enc = config.num_encoder_layers * li * (4 * proj + mlp)
  # Decoder tokens: self-attention's 4 projections, cross-attention's query
  # and out, the MLP; encoder tokens: cross-attention's key and value.
  dec = config.num_decoder_layers * (lt * (6 * proj + mlp) + li * 2 * proj)
  logits = lt * d * config.vocab_size
  forward = 2 * (enc + dec + logits)
  # Scores q.k and the weighted sum of values: 2 matmuls of 2*L_q*L_k*hd.
  forward += 4 * hd * config.num_encoder_layers * li * li
  forward += 4 * hd * config.num_decoder_layers * (lt * lt + lt * li)
  return 3.0 * forward * batch_size


def measure_matmul_flops(size: int = 1024, seconds: float = 0.5) -> float:
  """Measured float32 matmul FLOP/s of this process's first device.

  The device is a local one: on several hosts `jax.devices()[0]` belongs to
  process 0, and another process may not place data on it.

  The defaults take 0.4-0.8 s. Side 1024 reads as high as 2048 (a best of
  175-195 GFLOP/s on a 2-core machine measured in one process either way,
  1024 up to 211) in a quarter of the time (0.7 s against 2.9 s).

  Args:
    size: side of the square matrices.
    seconds: roughly how long to measure, after one untimed call.

  Returns:
    FLOP/s of the best of a few timed repetitions.
  """
  x = jax.device_put(
    jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32),
    jax.local_devices()[0],
  )

  @jax.jit
  def chain(a):
    # Four dependent matmuls per call amortize the dispatch overhead.
    for _ in range(4):
      a = a @ x * (1.0 / size)
    return a

  chain(x).block_until_ready()
  best, deadline = 0.0, time.perf_counter() + seconds
  while time.perf_counter() < deadline:
    start = time.perf_counter()
    chain(x).block_until_ready()
    elapsed = time.perf_counter() - start
    best = max(best, 4 * 2 * size**3 / elapsed)
  return best


@functools.cache
def measured_cpu_peak() -> float:
  """This process's measured float32 matmul FLOP/s, measured once.

  The plan of a job and every model it trains read the same measurement.
  """
  return measure_matmul_flops()


def peak_flops_per_second(peak_flops: float | None = None) -> float:
  """Peak FLOP/s of all devices: given, from the device table, or measured.

  Args:
    peak_flops: per-device peak to use as is; None looks the device kind up,
      and on CPU measures a float32 matmul, once per process (all fake CPU
      devices of a process share its cores, so the CPU peak counts once per
      process, not once per device).

  Returns:
    FLOP/s of the whole job. Every process answers from its own (local)
    devices, so no process waits for another here; on CPU hosts each
    process measures its own cores.
  """
  device = jax.local_devices()[0]
  count = jax.device_count()
  if peak_flops is not None:
    return peak_flops * (
      jax.process_count() if device.platform == "cpu" else count
    )
  if device.platform == "cpu":
    return measured_cpu_peak() * jax.process_count()
  for kind, flops in PEAK_FLOPS_BY_DEVICE_KIND.items():
    if device.device_kind.startswith(kind):
      return flops * count
  logging.warning("unknown device %s: MFU not reported", device.device_kind)
  return float("nan")
