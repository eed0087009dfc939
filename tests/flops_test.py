"""dss_jax.flops: the MFU numerator counts exactly the model's matmuls."""

import jax
import jax.numpy as jnp
import numpy as np

from dss_jax import flops
from dss_jax.models import t5


def test_flops_per_step_counts_every_model_matmul(jaxpr_eqns):
  """The MFU numerator equals 3x the forward's matmul FLOPs, counted from
  the model's own dot_generals (the position bias's one-hot lookup aside).
  Unequal encoder and decoder lengths catch a projection counted over the
  wrong tokens (cross-attention keys and values see encoder tokens)."""
  cfg = t5.t5_1_1_config("tiny", relative_attention_num_buckets=24)
  batch, inputs, targets = 3, 20, 6
  model = t5.Transformer(cfg)
  tokens = {
    "encoder_input_tokens": jnp.ones((batch, inputs), jnp.int32),
    "decoder_input_tokens": jnp.ones((batch, targets), jnp.int32),
    "decoder_target_tokens": jnp.ones((batch, targets), jnp.int32),
  }
  params = model.init(jax.random.PRNGKey(0), **tokens)["params"]
  jaxpr = jax.make_jaxpr(lambda p: model.apply({"params": p}, **tokens))(params)
  counted = 0
  for eqn in jaxpr_eqns(jaxpr.jaxpr):
    if eqn.primitive.name != "dot_general":
      continue
    shapes = [v.aval.shape for v in eqn.invars]
    if (cfg.num_heads, cfg.relative_attention_num_buckets) in shapes:
      continue  # the bias table's one-hot lookup, not model math
    (contracting, _), _ = eqn.params["dimension_numbers"]
    k = int(np.prod([shapes[0][i] for i in contracting]))
    counted += 2 * k * int(np.prod(eqn.outvars[0].aval.shape))
  assert flops.train_flops_per_step(cfg, batch, inputs, targets) == 3 * counted


def test_a_given_cpu_peak_counts_once_for_all_fake_devices():
  # The 8 fake CPU devices share the same cores: no multiplying by 8.
  assert jax.device_count() == 8
  assert flops.peak_flops_per_second(123.0) == 123.0


def test_measured_cpu_matmul_rate_is_positive_and_finite():
  rate = flops.measure_matmul_flops(size=128, seconds=0.2)
  assert np.isfinite(rate) and rate > 0


def test_the_cpu_peak_is_measured_once_per_process(monkeypatch):
  calls = []

  def measure(*args, **kwargs):
    calls.append(1)
    return 4.5e11

  monkeypatch.setattr(flops, "measure_matmul_flops", measure)
  flops.measured_cpu_peak.cache_clear()
  try:
    assert flops.peak_flops_per_second() == 4.5e11
    assert flops.peak_flops_per_second() == 4.5e11
    assert len(calls) == 1
  finally:
    flops.measured_cpu_peak.cache_clear()
