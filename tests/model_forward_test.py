"""The T5 forward pass: packing masks, scan/remat equivalence, dtypes, dropout."""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np

from dss_jax import losses
from dss_jax.models import t5


def _shift_right(targets, segment_ids=None):
  """Decoder inputs: targets shifted right, 0 at each segment start."""
  shifted = jnp.pad(targets[:, :-1], ((0, 0), (1, 0)))
  if segment_ids is not None:
    starts = segment_ids != jnp.pad(segment_ids[:, :-1], ((0, 0), (1, 0)))
    shifted = jnp.where(starts, 0, shifted)
  return shifted


@functools.partial(jax.jit, static_argnums=0)
def _apply(model, params, *args, **kwargs):
  return model.apply({"params": params}, *args, enable_dropout=False, **kwargs)


_loss = jax.jit(losses.cross_entropy_loss)


def _init(model):
  return t5.make_test_params(model.config)


def test_packed_batch_equals_unpacked_per_segment():
  model, _ = t5.make_test_model()
  params = _init(model)
  rng = np.random.RandomState(0)
  inputs = [rng.randint(2, 500, n) for n in (5, 3)]
  targets = [rng.randint(2, 500, n) for n in (4, 2)]
  # Unpacked: one example per row, padded to the packed row's lengths.
  enc = np.zeros((2, 10), np.int32)
  dec = np.zeros((2, 8), np.int32)
  for i in range(2):
    enc[i, : len(inputs[i])] = inputs[i]
    dec[i, : len(targets[i])] = targets[i]
  enc, dec = jnp.asarray(enc), jnp.asarray(dec)
  logits = _apply(model, params, enc, _shift_right(dec), dec)
  ref_loss, ref_aux = _loss(logits, dec)
  # Packed: both examples in one row, with segment ids and positions.
  p_enc = np.zeros((1, 10), np.int32)
  p_enc[0, :8] = np.concatenate(inputs)
  enc_seg = np.array([[1] * 5 + [2] * 3 + [0] * 2])
  enc_pos = np.array([[0, 1, 2, 3, 4, 0, 1, 2, 0, 0]])
  p_dec = np.zeros((1, 8), np.int32)
  p_dec[0, :6] = np.concatenate(targets)
  dec_seg = np.array([[1] * 4 + [2] * 2 + [0] * 2])
  dec_pos = np.array([[0, 1, 2, 3, 0, 1, 0, 0]])
  p_dec, dec_seg = jnp.asarray(p_dec), jnp.asarray(dec_seg)
  p_logits = _apply(
    model,
    params,
    jnp.asarray(p_enc),
    _shift_right(p_dec, dec_seg),
    p_dec,
    encoder_segment_ids=jnp.asarray(enc_seg),
    decoder_segment_ids=dec_seg,
    encoder_positions=jnp.asarray(enc_pos),
    decoder_positions=jnp.asarray(dec_pos),
  )
  np.testing.assert_allclose(p_logits[0, :4], logits[0, :4], atol=1e-5)
  np.testing.assert_allclose(p_logits[0, 4:6], logits[1, :2], atol=1e-5)
  p_loss, p_aux = _loss(p_logits, p_dec, segment_ids=dec_seg)
  np.testing.assert_allclose(p_loss, ref_loss, rtol=1e-5)
  assert float(p_aux["num_sequences"]) == float(ref_aux["num_sequences"]) == 2
  # Without the segment ids the second example would see the first one
  # (one segment per row: the same program, so no new compile).
  leaky = _apply(
    model,
    params,
    jnp.asarray(p_enc),
    _shift_right(p_dec),
    p_dec,
    encoder_segment_ids=jnp.asarray(p_enc > 0, jnp.int32),
    decoder_segment_ids=jnp.asarray(p_dec > 0, jnp.int32),
    encoder_positions=jnp.asarray(enc_pos),
    decoder_positions=jnp.asarray(dec_pos),
  )
  assert not np.allclose(leaky[0, 4:6], logits[1, :2], atol=1e-3)


def _stack_layers(params):
  """Unscanned T5X tree -> scanned tree (layers on axis 1)."""
  out = {}
  for stack in ("encoder", "decoder"):
    tree = dict(params[stack])
    layers = sorted(
      (k for k in tree if k.startswith("layers_")), key=lambda k: int(k[7:])
    )
    stacked = jax.tree.map(
      lambda *xs: jnp.stack(xs, axis=1), *[tree.pop(k) for k in layers]
    )
    tree[stack] = stacked
    out[stack] = tree
  out["token_embedder"] = params["token_embedder"]
  return out


def test_scan_and_remat_match_unrolled_loss_and_grads():
  model, cfg = t5.make_test_model()
  params = _init(model)
  rng = np.random.RandomState(1)
  enc = jnp.asarray(rng.randint(1, 500, (2, 9)))
  dec = jnp.asarray(rng.randint(1, 500, (2, 6)))

  def loss_fn(m, p):
    logits = m.apply(
      {"params": p}, enc, _shift_right(dec), dec, enable_dropout=False
    )
    return losses.cross_entropy_loss(logits, dec)[0]

  ref_loss, ref_grads = jax.jit(
    jax.value_and_grad(functools.partial(loss_fn, model))
  )(params)
  # Each variant costs a compile; scan + remat together cover both paths.
  for overrides in (dict(scan_layers=True, remat_policy="minimal"),):
    other = t5.Transformer(t5.t5_1_1_config("tiny", **overrides))
    p = _stack_layers(params) if overrides.get("scan_layers") else params
    loss, grads = jax.jit(
      jax.value_and_grad(functools.partial(loss_fn, other))
    )(p)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    expected = (
      _stack_layers(ref_grads) if overrides.get("scan_layers") else ref_grads
    )
    flat = flax.traverse_util.flatten_dict(grads)
    for path, g in flax.traverse_util.flatten_dict(expected).items():
      np.testing.assert_allclose(flat[path], g, atol=2e-6, err_msg=str(path))


def test_bfloat16_activations_close_to_float32():
  model32, _ = t5.make_test_model()
  # attention_impl="cudnn" falls back to XLA attention off GPUs.
  model16, _ = t5.make_test_model(dtype="bfloat16", attention_impl="cudnn")
  params = _init(model32)
  rng = np.random.RandomState(2)
  enc = jnp.asarray(rng.randint(1, 500, (2, 9)))
  dec = jnp.asarray(rng.randint(1, 500, (2, 6)))
  l32 = _apply(model32, params, enc, _shift_right(dec), dec)
  l16 = _apply(model16, params, enc, _shift_right(dec), dec)
  assert l16.dtype == jnp.float32  # logits stay float32 for the loss
  assert float(jnp.max(jnp.abs(l16 - l32))) < 0.1 * float(jnp.std(l32)) + 0.1
  assert jax.tree.leaves(params)[0].dtype == jnp.float32


def test_dropout_needs_rng_and_changes_outputs():
  model, _ = t5.make_test_model(dropout_rate=0.3)
  params = _init(model)
  enc = jnp.arange(1, 19).reshape(2, 9)
  dec = jnp.arange(2, 14).reshape(2, 6)
  args = (enc, _shift_right(dec), dec)
  det = _apply(model, params, *args)
  drop = jax.jit(
    lambda p, r: model.apply({"params": p}, *args, rngs={"dropout": r})
  )
  a, b = (
    drop(params, jax.random.PRNGKey(1)),
    drop(params, jax.random.PRNGKey(2)),
  )
  assert not np.allclose(a, det) and not np.allclose(a, b)


def test_logits_via_embedding_drops_logits_dense():
  model, cfg = t5.make_test_model(logits_via_embedding=True)
  params = _init(model)
  assert "logits_dense" not in params["decoder"]
  enc = jnp.arange(1, 10)[None]
  logits = _apply(model, params, enc, enc[:, :4], enc[:, :4])
  assert logits.shape == (1, 4, cfg.vocab_size)
  assert np.isfinite(np.asarray(logits)).all()


def test_query_scaling_is_folded_into_init():
  cfg = t5.t5_1_1_config("tiny", emb_dim=64, num_heads=8, head_dim=16)
  x = jnp.ones((1, 2, cfg.emb_dim))
  attention = t5.MultiHeadAttention(cfg).init(
    jax.random.PRNGKey(0), x, x, None, None
  )["params"]
  # fan_in-normal init with stddev 1/sqrt(emb); the query also 1/sqrt(head).
  q_std = float(jnp.std(attention["query"]["kernel"]))
  k_std = float(jnp.std(attention["key"]["kernel"]))
  ratio = k_std / q_std
  assert abs(ratio - np.sqrt(cfg.head_dim)) < 0.3
  assert abs(k_std - 1 / np.sqrt(cfg.emb_dim)) < 0.01


def test_dense_gradients_match_autodiff(jaxpr_eqns):
  """The hand-written dense backward gives autodiff's gradients."""
  from dss_jax.models import layers

  kx, kk, kg = jax.random.split(jax.random.PRNGKey(3), 3)
  x = jax.random.normal(kx, (2, 5, 8), jnp.float32)
  kernel = jax.random.normal(kk, (8, 16), jnp.float32)
  g = jax.random.normal(kg, (2, 5, 16), jnp.float32)

  def reference(x, kernel, out_dtype):
    return jnp.einsum(
      "btd,df->btf", x, kernel, preferred_element_type=out_dtype
    )

  def grads(f, x, kernel):
    return jax.grad(lambda x, k: jnp.sum(f(x, k) * g), argnums=(0, 1))(
      x, kernel
    )

  # float32 throughout: exactly autodiff's dots.
  ours = grads(lambda x, k: layers._dense_dot(x, k, None), x, kernel)
  ref = grads(lambda x, k: reference(x, k, jnp.float32), x, kernel)
  for a, b in zip(ours, ref, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)

  # bfloat16 inputs with a float32 result (the logits): the float32
  # cotangent enters the backward matmuls as bfloat16, and the gradients
  # are autodiff's on the bfloat16-rounded cotangent.
  xb, kb = x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
  dx, dk = jax.grad(
    lambda x, k: jnp.sum(layers._dense_dot(x, k, jnp.float32) * g),
    argnums=(0, 1),
  )(xb, kb)
  assert dx.dtype == dk.dtype == jnp.bfloat16
  # Every matmul, forward and backward, takes bfloat16 operands.
  jaxpr = jax.make_jaxpr(
    jax.grad(
      lambda x, k: jnp.sum(layers._dense_dot(x, k, jnp.float32) * g),
      argnums=(0, 1),
    )
  )(xb, kb)
  operand_dtypes = [
    tuple(str(v.aval.dtype) for v in eqn.invars)
    for eqn in jaxpr_eqns(jaxpr.jaxpr)
    if eqn.primitive.name == "dot_general"
  ]
  assert len(operand_dtypes) >= 3, operand_dtypes
  assert set(operand_dtypes) == {("bfloat16", "bfloat16")}, operand_dtypes
  g16 = g.astype(jnp.bfloat16).astype(jnp.float32)
  x32, k32 = xb.astype(jnp.float32), kb.astype(jnp.float32)
  np.testing.assert_allclose(
    dx.astype(jnp.float32), jnp.einsum("btf,df->btd", g16, k32), rtol=2e-2
  )
  np.testing.assert_allclose(
    dk.astype(jnp.float32), jnp.einsum("btd,btf->df", x32, g16), rtol=2e-2
  )
