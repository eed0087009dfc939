"""Sharded training on 8 fake CPU devices equals one device.

tests/conftest.py sets `--xla_force_host_platform_device_count=8`; without
those devices these tests fail (they never skip).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dss_jax import losses, partitioning
from dss_jax.models import t5

# Adam's first step is lr * g / (|g| + eps): for |g| near eps it magnifies
# the float32 reduction-order noise that differs between layouts (unused
# relative-position buckets get ~1e-12 of noise). eps = 1e-3 keeps the
# update Lipschitz in g at this scale, so a tight tolerance stays meaningful;
# the gradients themselves are compared tightly as well.
_OPTIMIZER = optax.adamw(1e-3, eps=1e-3, weight_decay=0.01)


def _batch():
  rng = np.random.RandomState(0)
  enc = rng.randint(1, 500, (8, 12))
  enc[2, 7:] = 0
  dec = rng.randint(1, 500, (8, 6))
  dec[5, 3:] = 0
  dec = jnp.asarray(dec)
  return {
    "encoder_input_tokens": jnp.asarray(enc),
    "decoder_input_tokens": jnp.pad(dec[:, :-1], ((0, 0), (1, 0))),
    "decoder_target_tokens": dec,
  }


def _train_step(model, params, opt_state, batch):
  def loss_fn(p):
    logits = model.apply({"params": p}, **batch, enable_dropout=False)
    return losses.cross_entropy_loss(logits, batch["decoder_target_tokens"])[0]

  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, opt_state = _OPTIMIZER.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss, grads


@pytest.fixture(scope="module")
def reference():
  # 8 heads so that every mesh's model axis divides the head count.
  model, cfg = t5.make_test_model(
    num_heads=8, num_encoder_layers=1, num_decoder_layers=1
  )
  params = t5.make_test_params(cfg)
  batch = _batch()
  step = jax.jit(functools.partial(_train_step, model), device=jax.devices()[0])
  new_params, _, loss, grads = step(params, _OPTIMIZER.init(params), batch)
  return model, params, batch, new_params, loss, grads


def test_eight_devices_present():
  assert jax.device_count() >= 8, "conftest must set 8 fake CPU devices"


@pytest.mark.parametrize(
  "data,model_axis,fsdp",
  [(8, 1, False), (4, 2, False), (2, 4, False), (1, 8, False), (4, 2, True)],
)
def test_sharded_step_matches_single_device(reference, data, model_axis, fsdp):
  model, params, batch, ref_params, ref_loss, ref_grads = reference
  part = partitioning.Partitioner(data=data, model=model_axis, fsdp=fsdp)
  assert part.mesh.shape == {"data": data, "model": model_axis}
  opt_state = _OPTIMIZER.init(params)
  param_sh, opt_sh = part.shardings(params), part.shardings(opt_state)
  step = part.jit(
    functools.partial(_train_step, model),
    in_shardings=(param_sh, opt_sh, part.batch_sharding()),
    out_shardings=(param_sh, opt_sh, part.replicated(), param_sh),
    donate_argnums=(0, 1),
  )
  sharded = jax.device_put(jax.tree.map(jnp.copy, params), param_sh)
  new_params, _, loss, grads = step(
    sharded, jax.device_put(opt_state, opt_sh), batch
  )
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  for got, want in zip(
    jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True
  ):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
  for got, want in zip(
    jax.tree.leaves(new_params), jax.tree.leaves(ref_params), strict=True
  ):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  wi = new_params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
  expected = jax.sharding.PartitionSpec("data" if fsdp else None, "model")
  assert wi.sharding.spec == expected


def test_model_constraints_apply_under_the_partitioner(reference):
  model, params, batch, *_ = reference
  part = partitioning.Partitioner(data=4, model=2)

  def forward(p, b):
    return model.apply({"params": p}, **b, enable_dropout=False)

  text = part.jit(forward).lower(params, batch).as_text()
  # The logical (batch, length, heads, kv) constraint of q/k/v became a
  # mesh sharding: batch over "data", heads over "model".
  assert "sharding_constraint %" in text
  assert '[{"data"}, {}, {"model"}, {}]' in text


def test_batch_sharding_and_rules_come_from_one_partitioner():
  part = partitioning.Partitioner(data=4, model=2)
  assert part.batch_sharding().spec == jax.sharding.PartitionSpec("data")
  batch = part.put_batch({"x": np.arange(16).reshape(8, 2)})
  assert batch["x"].sharding.spec == jax.sharding.PartitionSpec("data")
  # Rules given to the partitioner replace the standard ones everywhere:
  # without a rule for `batch` the batch is replicated.
  custom = partitioning.Partitioner(data=4, model=2, logical_axis_rules=())
  assert custom.rules == ()
  assert custom.batch_sharding().is_fully_replicated
  fsdp = partitioning.Partitioner(fsdp=True)
  assert fsdp.rules == partitioning.FSDP_LOGICAL_AXIS_RULES


def test_make_mesh_validates_sizes():
  assert partitioning.make_mesh().shape == {"data": 8, "model": 1}
  assert partitioning.make_mesh(model=4).shape == {"data": 2, "model": 4}
  with pytest.raises(ValueError, match="does not divide"):
    partitioning.make_mesh(model=3)
  with pytest.raises(ValueError, match="needs"):
    partitioning.make_mesh(data=3, model=2)


def test_rules_match_t5x_standard_rules():
  rules = dict(partitioning.STANDARD_LOGICAL_AXIS_RULES)
  assert rules["batch"] == "data" and rules["vocab"] == "model"
  assert rules["mlp"] == "model" and rules["joined_kv"] == "model"
  assert rules["heads"] == "model" and rules["embed"] is None
  assert rules["relpos_buckets"] is None and rules["layers"] is None
  assert ("embed", "data") in partitioning.FSDP_LOGICAL_AXIS_RULES


def test_indivisible_dimension_is_replicated():
  cfg = t5.t5_1_1_config("tiny")  # 4 heads on a model axis of 8
  part = partitioning.Partitioner(data=1, model=8)
  sh = part.shardings(t5.param_shapes(cfg))
  assert sh["encoder"]["relpos_bias"]["rel_embedding"].spec == (
    jax.sharding.PartitionSpec(None, None)
  )
  assert sh["decoder"]["logits_dense"]["kernel"].spec == (
    jax.sharding.PartitionSpec(None, "model")
  )


def test_initialize_distributed_is_a_no_op_on_one_host(monkeypatch):
  for var in (
    "JAX_COORDINATOR_ADDRESS",
    "MEGASCALE_COORDINATOR_ADDRESS",
    "SLURM_JOB_ID",
    "OMPI_COMM_WORLD_SIZE",
    "TPU_WORKER_HOSTNAMES",
  ):
    monkeypatch.delenv(var, raising=False)
  assert partitioning.initialize_distributed() is False
