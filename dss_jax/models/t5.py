"""T5 v1.1 / Flan-T5 encoder-decoder in flax.linen with T5X's parameter tree.

API beyond the team contract (additions only; nothing in it changed):
`T5Config` also has `float32_attention_logits` (False, as T5X) and
`attention_impl` ("xla" | "cudnn"); `make_test_params(config)` gives random
parameters without the slow XLA compile of `model.init` (use it in tests);
`param_shapes(config)`; the decoding cache must be initialized with the real
encoder output (`dss_jax.decoding.init_cache` does it), because the
cross-attention keys and values are cached once.

The student of distilling step-by-step. Parameter names, shapes and logical
axis names follow T5X's `t5x/examples/t5/network.py` (the layout of the public
`gs://t5-data/pretrained_models/t5x/t5_1_1_*` and `flan_t5_*` checkpoints), so
those checkpoints load here and checkpoints written here load under T5X:

    token_embedder/embedding                      [vocab, embed]
    encoder/relpos_bias/rel_embedding             [heads, relpos_buckets]
    encoder/layers_N/pre_attention_layer_norm/scale
    encoder/layers_N/attention/{query,key,value}/kernel   [embed, joined_kv]
    encoder/layers_N/attention/out/kernel         [joined_kv, embed]
    encoder/layers_N/pre_mlp_layer_norm/scale
    encoder/layers_N/mlp/{wi_0,wi_1}/kernel       [embed, mlp]
    encoder/layers_N/mlp/wo/kernel                [mlp, embed]
    encoder/encoder_norm/scale
    decoder/relpos_bias/rel_embedding
    decoder/layers_N/{pre_self_attention_layer_norm, self_attention,
      pre_cross_attention_layer_norm, encoder_decoder_attention,
      pre_mlp_layer_norm, mlp}
    decoder/decoder_norm/scale
    decoder/logits_dense/kernel                   [embed, vocab]

With `scan_layers=True` the per-layer subtrees are stacked into
`encoder/encoder/...` and `decoder/decoder/...` with a `layers` axis at
position 1 of every kernel (T5X's scalable_t5 scan layout); the relative
position table stays shared per stack. Logical axis names live in the
`params_axes` collection (`flax.linen.partitioning.param_with_axes`, as T5X)
and `get_logical_axes(params)` rebuilds them from the tree alone.

Differences from T5X that do not change the parameter tree or the math:
  * the query scaling 1/sqrt(head_dim) is folded into the query init (as T5X);
  * embeddings use a gather, not a one-hot matmul (cheaper on CPU and GPU);
  * the logits matmul runs in the activation dtype with float32 accumulation
    and a float32 result (T5X runs it fully in float32);
  * the attention softmax always runs in float32 (fused, so free);
  * `attention_impl="cudnn"` swaps in the fused cuDNN kernel on NVIDIA GPUs
    (masks expressed as sequence lengths; packed batches use XLA attention);
  * the decoder caches the cross-attention keys and values at cache
    initialization, and the cache layout is [batch, length, heads, head_dim].
    Initialize the cache with the real encoder output (see
    `dss_jax.decoding.init_cache`).
  * `encoder_positions` / `decoder_positions` are accepted for API parity and
    ignored: relative positions inside a packed segment equal those of the
    unpacked example, and cross-segment pairs are masked.

Layers live in `dss_jax.models.layers`, the config in
`dss_jax.models.config`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen import partitioning as nn_partitioning

from dss_jax.models.config import T5Config, t5_1_1_config
from dss_jax.models.layers import (
  NEG_INF,
  DenseGeneral,
  Embed,
  MlpBlock,
  MultiHeadAttention,
  RelativePositionBiases,
  RMSNorm,
  make_attention_bias,
  with_sharding_constraint,
)

Array = jax.Array
# A parameter tree: nested dicts keyed by T5X's names
# (`encoder/layers_0/attention/query/kernel`), arrays at the leaves (or
# `jax.ShapeDtypeStruct`s, or the `PartitionSpec`s of `get_logical_axes`).
Params = Mapping[str, Any]

__all__ = [
  "Params",
  "T5Config",
  "Transformer",
  "get_logical_axes",
  "make_test_model",
  "make_test_params",
  "param_shapes",
  "t5_1_1_config",
]


def make_test_model(**overrides: Any) -> tuple[Transformer, T5Config]:
  """Returns a tiny float32 model for tests, and its config.

  Args:
    **overrides: T5Config fields to replace.

  Returns:
    (Transformer, T5Config).
  """
  config = t5_1_1_config("tiny", **overrides)
  return Transformer(config), config


def param_shapes(config: T5Config) -> Params:
  """The parameter tree as `jax.ShapeDtypeStruct`s (nothing allocated)."""
  model = Transformer(config)

  def init():
    tokens = jnp.ones((1, 1), jnp.int32)
    return model.init(
      jax.random.PRNGKey(0), tokens, tokens, tokens, enable_dropout=False
    )["params"]

  return jax.eval_shape(init)


def make_test_params(config: T5Config, seed: int = 0) -> Params:
  """Random parameters with the real tree and T5X's init scales, via numpy.

  For tests: `model.init` compiles one RNG program per parameter, which
  takes XLA's CPU compiler ~10 s even for the tiny model; this takes
  milliseconds. Kernels are normal with std 1/sqrt(fan_in) (the query's
  also divided by sqrt(head_dim)), embeddings std 1, norms ones.

  Args:
    config: the model config.
    seed: numpy seed.

  Returns:
    A params tree (no "params" wrapper) of float32 jax arrays.
  """
  rng = np.random.RandomState(seed)

  def one(path, leaf):
    names = [getattr(p, "key", "") for p in path]
    shape = leaf.shape
    if names[-1] == "scale":
      return jnp.ones(shape, jnp.float32)
    if names[-1] == "embedding":
      std = 1.0
    else:
      std = 1.0 / np.sqrt(shape[0])
      if names[-2] == "query":
        std /= np.sqrt(config.head_dim)
    return jnp.asarray(rng.normal(0.0, std, shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(one, param_shapes(config))


def _dropout(cfg: T5Config, x: Array, deterministic: bool) -> Array:
  return nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(
    x, deterministic=deterministic
  )


class EncoderLayer(nn.Module):
  """Pre-norm self-attention + MLP block."""

  config: T5Config
  deterministic: bool = True

  @nn.compact
  def __call__(
    self,
    x: Array,
    bias: Array,
    mask_bias: Array,
    lengths: tuple[Array, Array] | None = None,
  ):
    cfg = self.config
    dtype = cfg.activation_dtype
    x = with_sharding_constraint(x, ("batch", "length", "embed"))
    y = RMSNorm(dtype, name="pre_attention_layer_norm")(x)
    y = MultiHeadAttention(
      cfg, deterministic=self.deterministic, name="attention"
    )(y, y, bias, mask_bias, lengths=lengths)
    x = x + _dropout(cfg, y, self.deterministic)
    y = RMSNorm(dtype, name="pre_mlp_layer_norm")(x)
    y = MlpBlock(cfg, self.deterministic, name="mlp")(y)
    x = x + _dropout(cfg, y, self.deterministic)
    return (x, None) if cfg.scan_layers else x


class DecoderLayer(nn.Module):
  """Pre-norm causal self-attention, cross-attention and MLP block."""

  config: T5Config
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(
    self,
    x: Array,
    encoded: Array | None,
    bias: Array,
    mask_bias: Array,
    cross_mask_bias: Array,
    decode_position: Array | None,
    self_lengths: tuple[Array, Array] | None = None,
    cross_lengths: tuple[Array, Array] | None = None,
  ):
    cfg = self.config
    dtype = cfg.activation_dtype
    x = with_sharding_constraint(x, ("batch", "length", "embed"))
    y = RMSNorm(dtype, name="pre_self_attention_layer_norm")(x)
    y = MultiHeadAttention(
      cfg,
      cache_mode="self" if self.decode else None,
      deterministic=self.deterministic,
      causal=True,
      name="self_attention",
    )(y, y, bias, mask_bias, decode_position, self_lengths)
    x = x + _dropout(cfg, y, self.deterministic)
    y = RMSNorm(dtype, name="pre_cross_attention_layer_norm")(x)
    y = MultiHeadAttention(
      cfg,
      cache_mode="cross" if self.decode else None,
      deterministic=self.deterministic,
      name="encoder_decoder_attention",
    )(y, encoded, None, cross_mask_bias, lengths=cross_lengths)
    x = x + _dropout(cfg, y, self.deterministic)
    y = RMSNorm(dtype, name="pre_mlp_layer_norm")(x)
    y = MlpBlock(cfg, self.deterministic, name="mlp")(y)
    x = x + _dropout(cfg, y, self.deterministic)
    return (x, None) if cfg.scan_layers else x


def _maybe_remat(cfg: T5Config, layer_cls: type[nn.Module]) -> type[nn.Module]:
  if cfg.remat_policy == "none":
    return layer_cls
  policy = (
    jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims
    if cfg.remat_policy == "minimal"
    else None
  )
  # Under scan, CSE across iterations cannot happen, so skip its barrier.
  return nn_partitioning.remat(
    layer_cls, prevent_cse=not cfg.scan_layers, policy=policy
  )


def _run_layers(
  cfg: T5Config,
  layer_cls: type[nn.Module],
  num_layers: int,
  stack_name: str,
  x: Array,
  args: tuple[Any, ...],
  **layer_kwargs: Any,
) -> Array:
  """Applies `num_layers` layers, unrolled (layers_N) or scanned."""
  layer_cls = _maybe_remat(cfg, layer_cls)
  if not cfg.scan_layers:
    for i in range(num_layers):
      x = layer_cls(cfg, name=f"layers_{i}", **layer_kwargs)(x, *args)
    return x
  # T5X's scan layout: parameters stacked on axis 1, cache on axis 0.
  scanned = nn_partitioning.scan_with_axes(
    layer_cls,
    variable_axes={"params": 1, "cache": 0},
    split_rngs={"params": True, "dropout": True},
    in_axes=(nn.broadcast,) * len(args),
    length=num_layers,
    axis_name="layers",
  )
  x, _ = scanned(cfg, name=stack_name, **layer_kwargs)(x, *args)
  return x


def _fused_attention(cfg: T5Config, segment_ids: Array | None) -> bool:
  # The fused kernel masks by sequence length, which cannot express packing;
  # it exists on NVIDIA GPUs for 16-bit inputs only. Elsewhere the same
  # config silently runs XLA attention, so one gin file serves all devices.
  return (
    cfg.attention_impl == "cudnn"
    and segment_ids is None
    and cfg.dtype == "bfloat16"
    and jax.default_backend() == "gpu"
  )


def _lengths(valid: Array) -> Array:
  # Rows of padding only keep one key, so the kernel never sees an empty
  # softmax; their outputs carry no loss weight.
  return jnp.maximum(jnp.sum(valid, axis=-1, dtype=jnp.int32), 1)


class Encoder(nn.Module):
  """Embedding dropout, encoder layers, final norm."""

  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(
    self,
    tokens: Array,
    segment_ids: Array | None = None,
    deterministic: bool = True,
  ) -> Array:
    cfg = self.config
    dtype = cfg.activation_dtype
    length = tokens.shape[1]
    positions = jnp.arange(length, dtype=jnp.int32)
    bias = RelativePositionBiases(
      cfg.relative_attention_num_buckets,
      cfg.relative_attention_max_distance,
      cfg.num_heads,
      dtype,
      name="relpos_bias",
    )(positions, positions, True)
    valid = tokens > 0
    mask_bias = make_attention_bias(
      valid, valid, segment_ids, segment_ids, dtype=dtype
    )
    lengths = None
    if _fused_attention(cfg, segment_ids):
      lengths = (_lengths(valid),) * 2
    x = self.shared_embedding(tokens.astype(jnp.int32))
    x = _dropout(cfg, x, deterministic).astype(dtype)
    x = _run_layers(
      cfg,
      EncoderLayer,
      cfg.num_encoder_layers,
      "encoder",
      x,
      (bias, mask_bias, lengths),
      deterministic=deterministic,
    )
    x = RMSNorm(dtype, name="encoder_norm")(x)
    return _dropout(cfg, x, deterministic)


class Decoder(nn.Module):
  """Decoder layers over the target prefix, attending to the encoder."""

  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(
    self,
    encoded: Array,
    encoder_input_tokens: Array,
    decoder_input_tokens: Array,
    decoder_target_tokens: Array | None,
    encoder_segment_ids: Array | None = None,
    decoder_segment_ids: Array | None = None,
    deterministic: bool = True,
    decode: bool = False,
  ) -> Array:
    cfg = self.config
    dtype = cfg.activation_dtype
    batch, length = decoder_input_tokens.shape
    rel_bias = RelativePositionBiases(
      cfg.relative_attention_num_buckets,
      cfg.relative_attention_max_distance,
      cfg.num_heads,
      dtype,
      name="relpos_bias",
    )
    enc_valid = encoder_input_tokens > 0
    decode_position = None
    self_lengths = cross_lengths = None
    stepping = decode and self.has_variable("cache", "decode_position")
    if decode:
      position = self.variable(
        "cache", "decode_position", lambda: jnp.array(0, jnp.int32)
      )
    if stepping:
      # One token at step `position`; keys are the whole cache length.
      decode_position = position.value
      max_length = self.get_variable("cache", "max_decode_length_marker").shape[
        0
      ]
      key_positions = jnp.arange(max_length, dtype=jnp.int32)
      bias = rel_bias(decode_position[None], key_positions, False)
      mask_bias = jnp.where(key_positions <= decode_position, 0.0, NEG_INF)
      mask_bias = mask_bias.astype(dtype)[None, None, None, :]
      cross_mask_bias = make_attention_bias(
        jnp.ones((batch, length), bool), enc_valid, dtype=dtype
      )
      position.value = decode_position + 1
    else:
      positions = jnp.arange(length, dtype=jnp.int32)
      bias = rel_bias(positions, positions, False)
      if decode:
        # Cache initialization: remember the cache length without a config
        # field, as the shape of a tiny marker array.
        self.variable(
          "cache", "max_decode_length_marker", jnp.zeros, (length,), jnp.int8
        )
        dec_valid = jnp.ones((batch, length), bool)
        mask_bias = make_attention_bias(
          dec_valid, dec_valid, causal=True, dtype=dtype
        )
        cross_mask_bias = make_attention_bias(dec_valid, enc_valid, dtype=dtype)
      else:
        dec_valid = decoder_target_tokens > 0
        mask_bias = make_attention_bias(
          dec_valid,
          dec_valid,
          decoder_segment_ids,
          decoder_segment_ids,
          causal=True,
          dtype=dtype,
        )
        cross_mask_bias = make_attention_bias(
          dec_valid,
          enc_valid,
          decoder_segment_ids,
          encoder_segment_ids,
          dtype=dtype,
        )
        if _fused_attention(cfg, decoder_segment_ids):
          dec_lengths = _lengths(dec_valid)
          self_lengths = (dec_lengths, dec_lengths)
          cross_lengths = (dec_lengths, _lengths(enc_valid))

    y = self.shared_embedding(decoder_input_tokens.astype(jnp.int32))
    y = _dropout(cfg, y, deterministic).astype(dtype)
    y = _run_layers(
      cfg,
      DecoderLayer,
      cfg.num_decoder_layers,
      "decoder",
      y,
      (
        encoded,
        bias,
        mask_bias,
        cross_mask_bias,
        decode_position,
        self_lengths,
        cross_lengths,
      ),
      deterministic=deterministic,
      decode=decode,
    )
    y = RMSNorm(dtype, name="decoder_norm")(y)
    y = _dropout(cfg, y, deterministic)
    if cfg.logits_via_embedding:
      logits = self.shared_embedding.attend(y)
      # Rescale as T5X does for tied embeddings (unit-variance embeddings).
      return logits / jnp.sqrt(y.shape[-1]).astype(jnp.float32)
    return DenseGeneral(
      cfg.vocab_size,
      kernel_axes=("embed", "vocab"),
      dtype=dtype,
      out_dtype=jnp.float32,
      name="logits_dense",
    )(y)


class Transformer(nn.Module):
  """T5 encoder-decoder with T5X's `network.Transformer` call signature."""

  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = Embed(
      cfg.vocab_size, cfg.emb_dim, cfg.activation_dtype, name="token_embedder"
    )
    self.encoder = Encoder(cfg, self.token_embedder, name="encoder")
    self.decoder = Decoder(cfg, self.token_embedder, name="decoder")

  def encode(
    self,
    encoder_input_tokens: Array,
    encoder_segment_ids: Array | None = None,
    enable_dropout: bool = True,
  ) -> Array:
    """Encodes [batch, in_len] tokens to [batch, in_len, embed]."""
    return self.encoder(
      encoder_input_tokens, encoder_segment_ids, not enable_dropout
    )

  def decode(
    self,
    encoded: Array,
    encoder_input_tokens: Array,
    decoder_input_tokens: Array,
    decoder_target_tokens: Array | None = None,
    encoder_segment_ids: Array | None = None,
    decoder_segment_ids: Array | None = None,
    decoder_positions: Array | None = None,
    enable_dropout: bool = True,
    decode: bool = False,
    max_decode_length: int | None = None,
  ) -> Array:
    """Returns float32 logits [batch, tgt_len, vocab].

    With `decode=True` and no cache yet, this initializes the cache (its
    length is `decoder_input_tokens.shape[1]`); with a cache, it consumes one
    token per call. `decoder_positions` and `max_decode_length` are accepted
    for T5X parity; the cache length fixes the latter.

    Raises:
      ValueError: packed inputs while decoding.
    """
    del decoder_positions, max_decode_length
    if decode and encoder_segment_ids is not None:
      raise ValueError("packed inputs (segment ids) cannot be decoded")
    if not decode and decoder_target_tokens is None:
      raise ValueError("decoder_target_tokens is required unless decoding")
    return self.decoder(
      encoded,
      encoder_input_tokens,
      decoder_input_tokens,
      decoder_target_tokens,
      encoder_segment_ids,
      decoder_segment_ids,
      deterministic=not enable_dropout,
      decode=decode,
    )

  def __call__(
    self,
    encoder_input_tokens: Array,
    decoder_input_tokens: Array,
    decoder_target_tokens: Array,
    encoder_segment_ids: Array | None = None,
    decoder_segment_ids: Array | None = None,
    encoder_positions: Array | None = None,
    decoder_positions: Array | None = None,
    enable_dropout: bool = True,
    decode: bool = False,
    max_decode_length: int | None = None,
  ) -> Array:
    """Teacher-forced logits [batch, tgt_len, vocab] (float32).

    Args:
      encoder_input_tokens: int [batch, in_len], 0 = padding.
      decoder_input_tokens: int [batch, tgt_len], targets shifted right.
      decoder_target_tokens: int [batch, tgt_len], 0 = padding.
      encoder_segment_ids: packed segment ids of the inputs (0 = padding).
      decoder_segment_ids: packed segment ids of the targets.
      encoder_positions: ignored (see the module docstring).
      decoder_positions: ignored.
      enable_dropout: apply dropout (needs a "dropout" rng).
      decode: use and update the decoder cache.
      max_decode_length: ignored; the cache length sets it.

    Returns:
      Logits.
    """
    del encoder_positions
    encoded = self.encode(
      encoder_input_tokens, encoder_segment_ids, enable_dropout
    )
    return self.decode(
      encoded,
      encoder_input_tokens,
      decoder_input_tokens,
      decoder_target_tokens,
      encoder_segment_ids,
      decoder_segment_ids,
      decoder_positions,
      enable_dropout,
      decode,
      max_decode_length,
    )


# ----------------------------------------------------------------------------
# Logical axes.
# ----------------------------------------------------------------------------

# Logical axes of each leaf of the unscanned tree, keyed by (parent, leaf).
_LEAF_AXES: Mapping[tuple[str, str], tuple[str, ...]] = {
  ("token_embedder", "embedding"): ("vocab", "embed"),
  ("relpos_bias", "rel_embedding"): ("heads", "relpos_buckets"),
  ("query", "kernel"): ("embed", "joined_kv"),
  ("key", "kernel"): ("embed", "joined_kv"),
  ("value", "kernel"): ("embed", "joined_kv"),
  ("out", "kernel"): ("joined_kv", "embed"),
  ("wi", "kernel"): ("embed", "mlp"),
  ("wi_0", "kernel"): ("embed", "mlp"),
  ("wi_1", "kernel"): ("embed", "mlp"),
  ("wo", "kernel"): ("mlp", "embed"),
  ("logits_dense", "kernel"): ("embed", "vocab"),
}


def leaf_logical_axes(path: Sequence[str], ndim: int) -> tuple[str, ...]:
  """Logical axes of the parameter at `path` (names) with rank `ndim`.

  Raises:
    ValueError: for a path that is not a T5 parameter or a wrong rank.
  """
  if path[-1] == "scale":
    axes = ("embed",)
  else:
    key = (path[-2], path[-1])
    if key not in _LEAF_AXES:
      raise ValueError(f"no logical axes known for {'/'.join(path)}")
    axes = _LEAF_AXES[key]
  if ndim == len(axes) + 1:
    # A scanned stack: the layers axis sits at position 1 (T5X's layout).
    axes = (axes[0], "layers") + axes[1:]
  if ndim != len(axes):
    raise ValueError(f"{'/'.join(path)} has rank {ndim}, expected {axes}")
  return axes


def get_logical_axes(params: Params) -> Params:
  """Logical axis names of every parameter, from the tree's paths and ranks.

  Works on arrays, `jax.ShapeDtypeStruct`s, and scanned or unscanned trees
  (a T5X checkpoint's tree included), without running the model.

  Args:
    params: a nested dict of parameters (no "params" wrapper needed).

  Returns:
    The same tree with `jax.sharding.PartitionSpec`s of logical names.
  """

  def one(path, leaf):
    names = [getattr(p, "key", str(p)) for p in path]
    names = [n for n in names if n != "params"]
    return jax.sharding.PartitionSpec(
      *leaf_logical_axes(names, len(np.shape(leaf)))
    )

  return jax.tree_util.tree_map_with_path(one, params)
