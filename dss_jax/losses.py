"""Cross-entropy for the student, normalized so mixture rates mean lambda.

Distilling step-by-step optimizes `L = L_label + lambda * L_rationale`. With
SeqIO the two tasks are mixed at rates 1 : lambda, which realizes that sum only
if every example weighs the same whatever its length. Normalizing by token
count (T5X's default) would let a 60-token rationale outweigh a 2-token label
30:1, so the default here is per-sequence normalization (T5X's
AVERAGE_PER_SEQUENCE): each sequence contributes its token-mean loss. With
packing, "sequence" means segment: each packed segment's token-mean loss, summed
over segments, divided by the number of segments in the batch.

`compute_official_loss` is the official implementation's step: each example is
fed with both prefixes in the same step, and the loss is
`alpha * L_label + (1 - alpha) * L_rationale`, each L a mean over that pass's
real target tokens (Hugging Face's cross-entropy).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

NORMALIZATIONS = ("per_sequence", "tokens")


def _token_losses(
  logits: Array, targets: Array, z_loss: float, label_smoothing: float
) -> tuple[Array, Array]:
  """Per-token cross-entropy (with smoothing and z-loss) and z-loss term."""
  vocab = logits.shape[-1]
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  # Gather the target logit instead of building a [.., vocab] one-hot; the
  # smoothed part needs only the mean logit.
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[
    ..., 0
  ]
  nll = log_z - target_logit
  if label_smoothing > 0.0:
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab - 1)
    mean_logit = jnp.mean(logits, axis=-1)
    # Cross-entropy against the smoothed distribution, minus its entropy so a
    # perfect prediction scores 0 (as T5X's cross_entropy_with_logits).
    smooth_ce = log_z - (
      confidence * target_logit + low * (vocab * mean_logit - target_logit)
    )
    normalizing = -(
      confidence * jnp.log(confidence)
      + (vocab - 1) * low * jnp.log(low + 1e-20)
    )
    nll = smooth_ce - normalizing
  z_term = z_loss * jnp.square(log_z)
  return nll + z_term, z_term


def cross_entropy_loss(
  logits: Array,
  targets: Array,
  weights: Array | None = None,
  segment_ids: Array | None = None,
  normalization: str = "per_sequence",
  z_loss: float = 0.0,
  label_smoothing: float = 0.0,
) -> tuple[Array, dict[str, Array]]:
  """Cross-entropy of teacher-forced logits, normalized per sequence or token.

  Args:
    logits: float [batch, length, vocab].
    targets: int [batch, length].
    weights: float [batch, length] loss weights; defaults to `targets > 0`.
    segment_ids: int [batch, length] packed segment ids (0 = padding); None
      means one sequence per row.
    normalization: "per_sequence" (each sequence's or segment's token mean,
      averaged over the sequences in the batch) or "tokens" (sum over tokens
      divided by the weight sum).
    z_loss: coefficient of `log(Z)^2`, a logit-drift regularizer (PaLM/T5X).
    label_smoothing: mass spread uniformly over the other tokens.

  Returns:
    (loss, aux) with aux: "token_loss_sum" (weighted sum of token losses),
    "z_loss" (weighted sum of z terms), "num_tokens" (weight sum),
    "num_sequences" (sequences or segments counted), "per_sequence_loss"
    ([batch] token-mean loss of each row; for packed rows, the mean of its
    segments' means).

  Raises:
    ValueError: for an unknown normalization.
  """
  if normalization not in NORMALIZATIONS:
    raise ValueError(
      f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}"
    )
  if weights is None:
    weights = (targets > 0).astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  token_loss, z_term = _token_losses(logits, targets, z_loss, label_smoothing)
  token_loss = token_loss * weights
  token_sum = jnp.sum(token_loss)
  num_tokens = jnp.sum(weights)
  segment_means, segment_present = _segment_means(
    token_loss, weights, segment_ids
  )
  num_sequences = jnp.sum(segment_present)
  row_segments = jnp.sum(segment_present, axis=-1)
  per_row = jnp.sum(segment_means, axis=-1) / jnp.maximum(row_segments, 1.0)
  if normalization == "per_sequence":
    loss = jnp.sum(segment_means) / jnp.maximum(num_sequences, 1.0)
  else:
    loss = token_sum / jnp.maximum(num_tokens, 1e-8)
  aux = {
    "token_loss_sum": token_sum,
    "z_loss": jnp.sum(z_term * weights),
    "num_tokens": num_tokens,
    "num_sequences": num_sequences,
    "per_sequence_loss": per_row,
  }
  return loss, aux


def _segment_means(
  token_loss: Array, weights: Array, segment_ids: Array | None
) -> tuple[Array, Array]:
  """Token-mean loss per (row, segment) and whether the segment exists.

  Returns [batch, num_segments] arrays; rows without packing have one
  segment, packed rows `length` slots (segment ids 1..length).
  """
  if segment_ids is None:
    loss_sum = jnp.sum(token_loss, axis=-1, keepdims=True)
    weight_sum = jnp.sum(weights, axis=-1, keepdims=True)
  else:
    batch, length = segment_ids.shape
    # A row has at most `length` segments; give each (row, segment) pair its
    # own flat id and sum with one scatter-add, O(tokens) memory. Padding
    # (segment 0) lands on segment 1's slot with zero weight and zero loss.
    ids = jnp.arange(batch)[:, None] * length + jnp.maximum(segment_ids - 1, 0)
    ids = ids.reshape(-1)
    num = batch * length
    loss_sum = jax.ops.segment_sum(token_loss.reshape(-1), ids, num)
    weight_sum = jax.ops.segment_sum(weights.reshape(-1), ids, num)
    loss_sum = loss_sum.reshape(batch, length)
    weight_sum = weight_sum.reshape(batch, length)
  present = (weight_sum > 0).astype(jnp.float32)
  means = loss_sum / jnp.maximum(weight_sum, 1e-8) * present
  return means, present


def official_loss(
  label_loss: Array, rationale_loss: Array, alpha: float = 0.5
) -> Array:
  """The official combiner: `alpha * L_label + (1 - alpha) * L_rationale`.

  alpha 0.5 (the paper's) is lambda 1 of `L_label + lambda * L_rationale`
  halved; as a mixture rate, lambda gives `alpha = 1 / (1 + lambda)`.

  Args:
    label_loss: scalar loss of the `predict: ` pass.
    rationale_loss: scalar loss of the `explain: ` pass.
    alpha: the label loss's weight, in [0, 1].

  Returns:
    The combined scalar loss.
  """
  return alpha * label_loss + (1.0 - alpha) * rationale_loss


def compute_official_loss(
  label_logits: Array,
  label_targets: Array,
  rationale_logits: Array,
  rationale_targets: Array,
  alpha: float = 0.5,
  **loss_kwargs: float,
) -> tuple[Array, dict[str, Array]]:
  """The official step's loss over its two passes.

  Each pass's loss is a mean over its real (non-padding) target tokens, as
  Hugging Face's seq2seq cross-entropy in the official code, then
  `official_loss` combines them.

  Args:
    label_logits: [batch, label_len, vocab] logits of the label pass.
    label_targets: [batch, label_len].
    rationale_logits: [batch, rationale_len, vocab].
    rationale_targets: [batch, rationale_len].
    alpha: the label loss's weight.
    **loss_kwargs: z_loss, label_smoothing for `cross_entropy_loss`.

  Returns:
    (loss, aux) with aux "label_loss" and "rationale_loss".
  """
  label, _ = cross_entropy_loss(
    label_logits, label_targets, normalization="tokens", **loss_kwargs
  )
  rationale, _ = cross_entropy_loss(
    rationale_logits, rationale_targets, normalization="tokens", **loss_kwargs
  )
  loss = official_loss(label, rationale, alpha)
  return loss, {"label_loss": label, "rationale_loss": rationale}
