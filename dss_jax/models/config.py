"""T5 v1.1 / Flan-T5 configuration: the model's hyperparameters and sizes."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

# The T5 v1.1 sizes (Raffel et al. 2020; T5X configs/models/t5_1_1/*.gin).
# Vocabulary 32,128 = the 32,000 SentencePiece pieces padded to a multiple of
# 128 for the matmul units.
_SIZES: dict[str, dict[str, Any]] = {
  "tiny": dict(
    vocab_size=512,
    emb_dim=32,
    num_heads=4,
    num_encoder_layers=2,
    num_decoder_layers=2,
    head_dim=8,
    mlp_dim=64,
    dropout_rate=0.0,
  ),
  "small": dict(
    emb_dim=512,
    num_heads=6,
    num_encoder_layers=8,
    num_decoder_layers=8,
    head_dim=64,
    mlp_dim=1024,
  ),
  "base": dict(
    emb_dim=768,
    num_heads=12,
    num_encoder_layers=12,
    num_decoder_layers=12,
    head_dim=64,
    mlp_dim=2048,
  ),
  "large": dict(
    emb_dim=1024,
    num_heads=16,
    num_encoder_layers=24,
    num_decoder_layers=24,
    head_dim=64,
    mlp_dim=2816,
  ),
  "xl": dict(
    emb_dim=2048,
    num_heads=32,
    num_encoder_layers=24,
    num_decoder_layers=24,
    head_dim=64,
    mlp_dim=5120,
  ),
  "xxl": dict(
    emb_dim=4096,
    num_heads=64,
    num_encoder_layers=24,
    num_decoder_layers=24,
    head_dim=64,
    mlp_dim=10240,
  ),
}

_REMAT_POLICIES = ("none", "minimal", "full")


# The public T5 v1.1 sizes, each with a T5X checkpoint ("tiny" is for tests).
T5_SIZES = tuple(size for size in _SIZES if size != "tiny")

# Students small enough for a CPU. Widths are T5 v1.1's shape (gated GELU,
# no biases) scaled down; "demo" trains a run of the arith demo in about a
# minute on one core. In a sweep on the demo task (docs/distill.md) "demo"
# learned more in the demo's budget than both "demo-xs" (less stable) and a
# 128-wide student (slower to start at the demo's learning rate).
# A student is one of these or one of `T5_SIZES` (`dss-jax distill --model_sizes`).
STUDENT_SIZES: dict[str, dict[str, int]] = {
  "demo-xs": dict(
    emb_dim=32,
    num_heads=2,
    head_dim=16,
    mlp_dim=64,
    num_encoder_layers=2,
    num_decoder_layers=2,
  ),
  "demo": dict(
    emb_dim=64,
    num_heads=4,
    head_dim=16,
    mlp_dim=128,
    num_encoder_layers=2,
    num_decoder_layers=2,
  ),
  "demo-l": dict(
    emb_dim=128,
    num_heads=4,
    head_dim=32,
    mlp_dim=256,
    num_encoder_layers=3,
    num_decoder_layers=3,
  ),
}


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyperparameters of a T5 v1.1 encoder-decoder.

  Attributes:
    vocab_size: vocabulary size (32,128 for the T5 SentencePiece model).
    emb_dim: model width.
    num_heads: attention heads.
    num_encoder_layers: encoder depth.
    num_decoder_layers: decoder depth.
    head_dim: width of one head.
    mlp_dim: hidden width of the gated MLP.
    mlp_activations: one activation per input projection (`wi_0`, `wi_1`);
      their product feeds `wo`. ("gelu", "linear") is T5 v1.1's gated GELU.
    dropout_rate: dropout after embeddings, attention weights, sublayers.
    dtype: activation dtype, "bfloat16" or "float32"; parameters are float32.
    logits_via_embedding: tie the output layer to the token embedding.
    scan_layers: run the layers with `nn.scan` (stacked parameter layout).
    remat_policy: "none", "minimal" (keep matmul outputs without batch dims)
      or "full" (recompute everything) rematerialization per layer.
    relative_attention_num_buckets: relative position buckets.
    relative_attention_max_distance: distance beyond which buckets merge.
    float32_attention_logits: keep the attention logits in float32 even
      when `dtype` is bfloat16 (T5X's default is False; the softmax itself
      always runs in float32).
    attention_impl: "xla" (portable einsum attention) or "cudnn" (the fused
      flash-attention kernel; used on NVIDIA GPUs with bfloat16, unpacked
      batches and no attention dropout, and "xla" otherwise).
  """

  vocab_size: int = 32128
  emb_dim: int = 512
  num_heads: int = 8
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  head_dim: int = 64
  mlp_dim: int = 2048
  mlp_activations: tuple[str, ...] = ("gelu", "linear")
  dropout_rate: float = 0.1
  dtype: str = "float32"
  logits_via_embedding: bool = False
  scan_layers: bool = False
  remat_policy: str = "none"
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  float32_attention_logits: bool = False
  attention_impl: str = "xla"

  def __post_init__(self):
    if self.dtype not in ("bfloat16", "float32"):
      raise ValueError(f"dtype must be bfloat16 or float32, got {self.dtype!r}")
    if self.attention_impl not in ("xla", "cudnn"):
      raise ValueError(
        f"attention_impl must be xla or cudnn, got {self.attention_impl!r}"
      )
    if self.remat_policy not in _REMAT_POLICIES:
      raise ValueError(
        f"remat_policy must be one of {_REMAT_POLICIES}, got "
        f"{self.remat_policy!r}"
      )
    # Gin and YAML hand over lists; a frozen dataclass must stay hashable.
    object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))

  @property
  def activation_dtype(self) -> jnp.dtype:
    """The jnp dtype of activations."""
    return jnp.dtype(self.dtype)


def t5_1_1_config(size: str, **overrides: Any) -> T5Config:
  """Returns the T5 v1.1 (= Flan-T5) configuration of a named size.

  Args:
    size: one of "tiny" (tests), "small", "base", "large", "xl", "xxl".
    **overrides: T5Config fields to replace, e.g. `dtype="bfloat16"`.

  Returns:
    The configuration.

  Raises:
    ValueError: for an unknown size.
  """
  if size not in _SIZES:
    raise ValueError(f"unknown T5 size {size!r}; known: {sorted(_SIZES)}")
  return T5Config(**{**_SIZES[size], **overrides})
