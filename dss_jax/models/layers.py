"""T5 v1.1 layers in flax.linen, with T5X's parameter names and logical axes.

Bias-free dense maps with 2-D kernels, RMS layer norm, bucketed relative
position biases, multi-head attention with a decoding cache, the gated MLP
and the token embedding. Each parameter is created with
`flax.linen.partitioning.param_with_axes`, so its logical axis names land in
the `params_axes` collection as in T5X.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen import partitioning as nn_partitioning

if TYPE_CHECKING:
  from jax.typing import DTypeLike

  from dss_jax.models.config import T5Config

Array = jax.Array
Initializer = Callable[..., Array]

param_with_axes = nn_partitioning.param_with_axes
with_sharding_constraint = nn_partitioning.with_sharding_constraint

# Additive attention bias for masked positions. Large but finite so that a
# fully masked row (padding queries) still gives a finite softmax.
NEG_INF = -1e10


_default_kernel_init = nn.initializers.variance_scaling(
  1.0, "fan_in", "truncated_normal"
)
_attention_kernel_init = nn.initializers.variance_scaling(
  1.0, "fan_in", "normal"
)


def _activation(name: str) -> Callable[[Array], Array]:
  if name == "linear":
    return lambda x: x
  if name == "gelu":
    # T5 v1.1 used the tanh approximation (as flax's and HF's "gelu_new").
    return functools.partial(jax.nn.gelu, approximate=True)
  return getattr(nn, name)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense_dot(
  x: Array, kernel: Array, preferred_element_type: DTypeLike | None
) -> Array:
  """`x @ kernel` over the last axis of `x`, with a hand-written backward.

  The gradients are the ones autodiff gives (same dots and precision, the
  cotangent taken in the inputs' dtype); only the kernel's gradient is
  written as x^T g in [in, out] order. Autodiff computes it as (g^T x)^T, which XLA:CPU lowers to a
  transposed copy of g (recomputing its elementwise producers, e.g. the
  GELU backward) feeding a dot YNNPACK does not take: the T5-small MLP
  block's forward and backward took 1.7x longer, a whole training step 1.4x.
  Accelerators run either form natively. (No forward-mode autodiff here.)
  """
  return jax.lax.dot_general(
    x,
    kernel,
    (((x.ndim - 1,), (0,)), ((), ())),
    preferred_element_type=preferred_element_type,
  )


def _dense_dot_fwd(x, kernel, preferred_element_type):
  return _dense_dot(x, kernel, preferred_element_type), (x, kernel)


def _dense_dot_bwd(preferred_element_type, residuals, grad):
  x, kernel = residuals
  # A float32 result (the logits) gets a float32 cotangent; the backward
  # matmuls take it in the computation dtype, as the forward took its
  # inputs, so bfloat16 models stay on bfloat16 matrix units (TF32 doubled
  # the logits' backward time on an H100) with float32 accumulation.
  grad = grad.astype(x.dtype)
  dx = jax.lax.dot_general(
    grad,
    kernel,
    (((grad.ndim - 1,), (1,)), ((), ())),
    preferred_element_type=preferred_element_type,
  )
  leading = tuple(range(x.ndim - 1))
  dkernel = jax.lax.dot_general(
    x,
    grad,
    ((leading, leading), ((), ())),
    preferred_element_type=preferred_element_type,
  )
  return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


_dense_dot.defvjp(_dense_dot_fwd, _dense_dot_bwd)


class DenseGeneral(nn.Module):
  """Bias-free linear map over the trailing `num_in_axes` axes.

  The kernel is stored 2-D (product of input dims, product of output dims),
  T5X's layout; the matmul contracts the last axis directly, so attention
  head splitting is a free reshape, not a transpose.

  Attributes:
    features: output shape appended after the batch dims.
    kernel_axes: logical axis names of the 2-D kernel.
    num_in_axes: how many trailing input axes are contracted.
    dtype: computation dtype.
    kernel_init: initializer of the 2-D kernel.
    out_dtype: result dtype (float32 accumulation is always used).
  """

  features: int | tuple[int, ...]
  kernel_axes: tuple[str, str]
  num_in_axes: int = 1
  dtype: DTypeLike = jnp.float32
  kernel_init: Initializer = _default_kernel_init
  out_dtype: DTypeLike | None = None

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    features = (
      (self.features,) if isinstance(self.features, int) else self.features
    )
    in_shape = inputs.shape[-self.num_in_axes :]
    kernel = param_with_axes(
      "kernel",
      self.kernel_init,
      (int(np.prod(in_shape)), int(np.prod(features))),
      jnp.float32,
      axes=self.kernel_axes,
    )
    batch_shape = inputs.shape[: -self.num_in_axes]
    x = inputs.reshape(batch_shape + (kernel.shape[0],)).astype(self.dtype)
    out_dtype = self.out_dtype or self.dtype
    y = _dense_dot(
      x,
      kernel.astype(self.dtype),
      jnp.float32 if out_dtype == jnp.float32 else None,
    )
    return y.astype(out_dtype).reshape(batch_shape + features)


class RMSNorm(nn.Module):
  """T5's layer norm: scale only, no mean subtraction, no bias."""

  dtype: DTypeLike = jnp.float32
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = param_with_axes(
      "scale",
      nn.initializers.ones,
      (x.shape[-1],),
      jnp.float32,
      axes=("embed",),
    )
    x = x.astype(jnp.float32)
    mean2 = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    return (x * jax.lax.rsqrt(mean2 + self.epsilon) * scale).astype(self.dtype)


def relative_position_bucket(
  relative_position: Array,
  bidirectional: bool,
  num_buckets: int,
  max_distance: int,
) -> Array:
  """Maps key-minus-query distances to T5's log-spaced buckets.

  Args:
    relative_position: int array, memory position minus query position.
    bidirectional: encoder (True) or causal decoder (False).
    num_buckets: number of buckets.
    max_distance: distances at or beyond this share the last bucket.

  Returns:
    int32 bucket ids of the same shape.
  """
  n = -relative_position
  ret = jnp.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    ret = ret + (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  # The epsilon matches T5X/Mesh TF so bucket boundaries agree bit for bit.
  val_if_large = max_exact + (
    jnp.log(n.astype(jnp.float32) / max_exact + np.finfo(np.float32).eps)
    / np.log(max_distance / max_exact)
    * (num_buckets - max_exact)
  ).astype(jnp.int32)
  val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
  return (ret + jnp.where(is_small, n, val_if_large)).astype(jnp.int32)


class RelativePositionBiases(nn.Module):
  """T5's bucketed relative position bias, one table per stack."""

  num_buckets: int
  max_distance: int
  num_heads: int
  dtype: DTypeLike

  @nn.compact
  def __call__(
    self,
    query_positions: Array,
    key_positions: Array,
    bidirectional: bool,
  ) -> Array:
    """Returns the bias [1, heads, q_len, k_len].

    Args:
      query_positions: int [q_len].
      key_positions: int [k_len].
      bidirectional: encoder (True) or decoder (False).
    """
    table = param_with_axes(
      "rel_embedding",
      nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
      (self.num_heads, self.num_buckets),
      jnp.float32,
      axes=("heads", "relpos_buckets"),
    )
    buckets = relative_position_bucket(
      key_positions[None, :] - query_positions[:, None],
      bidirectional,
      self.num_buckets,
      self.max_distance,
    )
    # A one-hot contraction (not a gather): deterministic gradients and a
    # matmul the accelerators like; the table has only num_buckets rows.
    one_hot = jax.nn.one_hot(buckets, self.num_buckets, dtype=self.dtype)
    bias = jnp.einsum("hn,qkn->hqk", table.astype(self.dtype), one_hot)
    return bias[None]


def make_attention_bias(
  query_valid: Array,
  key_valid: Array,
  query_segment_ids: Array | None = None,
  key_segment_ids: Array | None = None,
  causal: bool = False,
  dtype: DTypeLike = jnp.float32,
) -> Array:
  """Additive attention mask bias [batch, 1, q_len, k_len] (0 or -1e10).

  Args:
    query_valid: bool [batch, q_len], non-padding queries.
    key_valid: bool [batch, k_len], non-padding keys.
    query_segment_ids: optional int [batch, q_len] for packed examples.
    key_segment_ids: optional int [batch, k_len].
    causal: also mask keys after the query (self-attention of a decoder).
    dtype: result dtype.

  Returns:
    The bias.
  """
  mask = query_valid[:, :, None] & key_valid[:, None, :]
  if query_segment_ids is not None:
    mask &= query_segment_ids[:, :, None] == key_segment_ids[:, None, :]
  if causal:
    q_len, k_len = query_valid.shape[1], key_valid.shape[1]
    mask &= jnp.arange(q_len)[:, None] >= jnp.arange(k_len)[None, :]
  return jnp.where(mask, 0.0, NEG_INF).astype(dtype)[:, None]


def _batch_sum(x: Array) -> Array:
  """Sum over the leading (batch) axis, keeping it as size 1."""

  def reduce(x):
    return jnp.sum(x, axis=0, keepdims=True)

  def contract(x):
    # XLA:CPU hands a reduce over the leading axis to YNNPACK, which runs
    # it ~90x slower than memory speed (18 ms instead of 0.2 ms for the
    # [8, 6, 256, 256] logits of T5 small); a contraction with a ones
    # vector is a plain matrix-vector product there. The ones come first:
    # [1, b] @ [b, rest] reads x in its own layout, where x first needs a
    # transposed copy of x (0.76 ms instead of 0.15 ms for those logits).
    # It accumulates in float32, as jnp.sum does for 16-bit inputs.
    ones = jnp.ones((x.shape[0],), x.dtype)
    total = jnp.einsum(
      "b,b...->...",
      ones,
      x,
      precision=jax.lax.Precision.HIGHEST,
      preferred_element_type=jnp.float32,
    )
    return total.astype(x.dtype)[None]

  # GPUs and TPUs keep the plain reduce (fusable, no matmul unit).
  return jax.lax.platform_dependent(x, cpu=contract, default=reduce)


@jax.custom_vjp
def _add_shared_bias(logits: Array, bias: Array) -> Array:
  """`logits + bias` for a bias [1, ...] shared by every batch row.

  The same math as the plain add; only the bias gradient, the sum over the
  batch of the logits' gradient, is computed explicitly by `_batch_sum`
  instead of by the reduce that autodiff emits for the broadcast.
  """
  return logits + bias


def _add_shared_bias_fwd(logits, bias):
  return logits + bias, None


def _add_shared_bias_bwd(_, grad):
  return grad, _batch_sum(grad)


_add_shared_bias.defvjp(_add_shared_bias_fwd, _add_shared_bias_bwd)


class MultiHeadAttention(nn.Module):
  """Multi-head dot-product attention with T5X's projections and cache.

  Attributes:
    config: model config.
    cache_mode: None (no cache), "self" (append one token per step) or
      "cross" (keys and values of the encoder output, computed once).
    deterministic: disable dropout.
  """

  config: T5Config
  cache_mode: str | None = None
  deterministic: bool = True
  causal: bool = False

  @nn.compact
  def __call__(
    self,
    inputs_q: Array,
    inputs_kv: Array | None,
    bias: Array | None,
    mask_bias: Array | None,
    decode_position: Array | None = None,
    lengths: tuple[Array, Array] | None = None,
  ) -> Array:
    """Attends; shapes [batch, q_len, embed] -> [batch, q_len, embed].

    Args:
      inputs_q: queries' input.
      inputs_kv: keys' and values' input (may be None when the cross cache
        already holds them).
      bias: position bias broadcastable to [batch, heads, q_len, k_len].
      mask_bias: additive mask broadcastable to the same shape.
      decode_position: int32 scalar, the step being decoded ("self" cache).
      lengths: (query lengths, key lengths) [batch] when padding is only
        trailing and nothing is packed; lets the cuDNN fused kernel replace
        `mask_bias` (with `causal` for decoder self-attention).

    Returns:
      The attention output.
    """
    cfg = self.config
    dtype = cfg.activation_dtype
    heads, head_dim = cfg.num_heads, cfg.head_dim
    depth_scaling = np.sqrt(head_dim).astype(np.float32)

    def query_init(*args):
      return _attention_kernel_init(*args) / depth_scaling

    projection = functools.partial(
      DenseGeneral,
      features=(heads, head_dim),
      kernel_axes=("embed", "joined_kv"),
      dtype=dtype,
    )
    query = projection(kernel_init=query_init, name="query")(inputs_q)
    key_proj = projection(kernel_init=_attention_kernel_init, name="key")
    value_proj = projection(kernel_init=_attention_kernel_init, name="value")
    logical = ("batch", "length", "heads", "kv")
    query = with_sharding_constraint(query, logical)

    if self.cache_mode == "cross" and self.has_variable("cache", "cached_key"):
      # Every decoding step after the first reuses the encoder's keys.
      key = self.get_variable("cache", "cached_key")
      value = self.get_variable("cache", "cached_value")
    else:
      key = key_proj(inputs_kv)
      value = value_proj(inputs_kv)
      key = with_sharding_constraint(key, logical)
      value = with_sharding_constraint(value, logical)
      if self.cache_mode == "cross":
        self.put_variable("cache", "cached_key", key)
        self.put_variable("cache", "cached_value", value)
      elif self.cache_mode == "self":
        initialized = self.has_variable("cache", "cached_key")
        cached_key = self.variable(
          "cache", "cached_key", jnp.zeros, key.shape, key.dtype
        )
        cached_value = self.variable(
          "cache", "cached_value", jnp.zeros, value.shape, value.dtype
        )
        if initialized:
          # One new token: write it at the step's slot, attend to the whole
          # cache (later slots are masked by the caller's mask bias).
          start = (0, decode_position, 0, 0)
          key = jax.lax.dynamic_update_slice(cached_key.value, key, start)
          value = jax.lax.dynamic_update_slice(cached_value.value, value, start)
          cached_key.value = key
          cached_value.value = value

    use_fused = (
      cfg.attention_impl == "cudnn"
      and lengths is not None
      and self.cache_mode is None
      and (self.deterministic or cfg.dropout_rate == 0.0)
    )
    if use_fused:
      # cuDNN flash attention: no [batch, heads, q, k] tensors in memory.
      # T5 has no 1/sqrt(d) at runtime (folded into the query init).
      out = jax.nn.dot_product_attention(
        query,
        key,
        value,
        bias=None if bias is None else bias.astype(dtype),
        scale=1.0,
        is_causal=self.causal,
        query_seq_lengths=lengths[0],
        key_value_seq_lengths=lengths[1],
        implementation="cudnn",
      )
    else:
      out = self._attend(query, key, value, bias, mask_bias)
    return DenseGeneral(
      features=inputs_q.shape[-1],
      kernel_axes=("joined_kv", "embed"),
      num_in_axes=2,
      dtype=dtype,
      kernel_init=_attention_kernel_init,
      name="out",
    )(out)

  def _attend(self, query, key, value, bias, mask_bias):
    """Plain XLA attention: logits, biases, softmax, weighted values."""
    cfg = self.config
    dtype = cfg.activation_dtype
    logits_dtype = jnp.float32 if cfg.float32_attention_logits else dtype
    logits = jnp.einsum(
      "bqhd,bkhd->bhqk", query, key, preferred_element_type=logits_dtype
    )
    if bias is not None:
      bias = bias.astype(logits_dtype)
      if logits.shape[0] > 1 and bias.shape == (1,) + logits.shape[1:]:
        # The position bias [1, heads, q, k] is shared by the batch (and by
        # every layer); see `_add_shared_bias` for why its gradient is custom.
        logits = _add_shared_bias(logits, bias)
      else:
        logits = logits + bias
    if mask_bias is not None:
      logits = logits + mask_bias.astype(logits_dtype)
    # The softmax itself always runs in float32; the casts fuse into it.
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(dtype)
    if not self.deterministic and cfg.dropout_rate > 0.0:
      # T5X drops whole query rows per key (broadcast over queries).
      weights = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(
        weights, deterministic=False
      )
    return jnp.einsum("bhqk,bkhd->bqhd", weights, value)


class MlpBlock(nn.Module):
  """Gated MLP: product of activated input projections, then `wo`."""

  config: T5Config
  deterministic: bool = True

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    cfg = self.config
    dtype = cfg.activation_dtype
    hidden = None
    for idx, act in enumerate(cfg.mlp_activations):
      name = "wi" if len(cfg.mlp_activations) == 1 else f"wi_{idx}"
      h = DenseGeneral(
        cfg.mlp_dim, kernel_axes=("embed", "mlp"), dtype=dtype, name=name
      )(inputs)
      h = _activation(act)(h)
      hidden = h if hidden is None else hidden * h
    hidden = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(
      hidden, deterministic=self.deterministic
    )
    hidden = with_sharding_constraint(hidden, ("batch", "length", "mlp"))
    return DenseGeneral(
      inputs.shape[-1], kernel_axes=("mlp", "embed"), dtype=dtype, name="wo"
    )(hidden)


class Embed(nn.Module):
  """Token embedding [vocab, embed], float32 storage."""

  num_embeddings: int
  features: int
  dtype: DTypeLike = jnp.float32

  def setup(self):
    self.embedding = param_with_axes(
      "embedding",
      nn.initializers.normal(stddev=1.0),
      (self.num_embeddings, self.features),
      jnp.float32,
      axes=("vocab", "embed"),
    )

  def __call__(self, tokens: Array) -> Array:
    x = jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)
    return with_sharding_constraint(x, ("batch", "length", "embed"))

  def attend(self, query: Array) -> Array:
    """Logits against every embedding row, float32."""
    return jnp.einsum(
      "...e,ve->...v",
      query,
      self.embedding.astype(query.dtype),
      preferred_element_type=jnp.float32,
    )
