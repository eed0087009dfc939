"""Greedy, beam and temperature-sampling decoding with the decoder KV cache.

The encoder runs once; the decoder then consumes one token per step, reading
keys and values of earlier steps (and the encoder's, computed once) from the
`cache` collection, so no step re-runs the prefix. Everything is jittable and
batched: `decode` wraps a `jax.jit` of the whole loop (`lax.while_loop`,
stopping early when every sequence has produced EOS).

    tokens = decode(model, params, inputs, max_decode_length=64)
    tokens = decode(model, params, inputs, max_decode_length=64,
                    method="beam", num_beams=4, alpha=0.6)

Token conventions are SeqIO/T5X's: 0 is padding and the decoder's start
token, `eos_id` (1) ends a sequence; positions after EOS are 0 in the output.
The returned tokens exclude the start token and include EOS.

To decode sharded like training, place the parameters with
`Partitioner.shardings` and call `decode` inside `Partitioner.context()`:
the model's logical sharding constraints then apply to the decoding loop too.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
  from dss_jax.models import t5

Array = jax.Array
PyTree = Any

METHODS = ("greedy", "beam", "sample")

# Log-probability used to rule out a choice (finite so that arithmetic on it
# stays finite, as in T5X's decoding.NEG_INF).
_NEG_INF = -1.0e7


def init_cache(
  model: t5.Transformer,
  params: t5.Params,
  encoded: Array,
  encoder_input_tokens: Array,
  max_decode_length: int,
) -> PyTree:
  """Builds the decoder cache for `max_decode_length` steps.

  Runs the decoder once over a dummy full-length target so that every cache
  variable gets its shape, and the cross-attention keys and values of the
  real `encoded` are stored.

  Args:
    model: a `dss_jax.models.t5.Transformer`.
    params: its parameters (without a "params" wrapper).
    encoded: encoder output [batch, in_len, embed].
    encoder_input_tokens: [batch, in_len], for the padding mask.
    max_decode_length: steps the cache holds.

  Returns:
    The "cache" collection.
  """
  batch = encoder_input_tokens.shape[0]
  dummy = jnp.zeros((batch, max_decode_length), jnp.int32)
  _, state = model.apply(
    {"params": params},
    encoded,
    encoder_input_tokens,
    dummy,
    dummy,
    enable_dropout=False,
    decode=True,
    mutable=["cache"],
    method=model.decode,
  )
  return state["cache"]


def _step_logits(
  model: t5.Transformer,
  params: t5.Params,
  cache: PyTree,
  encoded: Array,
  encoder_input_tokens: Array,
  tokens: Array,
) -> tuple[Array, PyTree]:
  """Log-probabilities [batch, vocab] of the next token, and the new cache."""
  logits, state = model.apply(
    {"params": params, "cache": cache},
    encoded,
    encoder_input_tokens,
    tokens[:, None],
    tokens[:, None],
    enable_dropout=False,
    decode=True,
    mutable=["cache"],
    method=model.decode,
  )
  return logits[:, 0, :], state["cache"]


def _encode(
  model: t5.Transformer, params: t5.Params, encoder_input_tokens: Array
) -> Array:
  return model.apply(
    {"params": params},
    encoder_input_tokens,
    enable_dropout=False,
    method=model.encode,
  )


def _repeat(x: Array, n: int) -> Array:
  """[batch, ...] -> [batch * n, ...], each row repeated n times in a row."""
  return jnp.repeat(x, n, axis=0)


def _map_self_attention_cache(fn, cache: PyTree) -> PyTree:
  """Applies `fn(x, batch_axis)` to the self-attention keys and values.

  Scalar counters and the length marker have no batch axis. The
  cross-attention keys and values are left alone: every beam of an example
  holds the same encoder output, so reordering beams within an example
  cannot change them (and gathering them would move gigabytes per step).
  """

  def one(path, x):
    names = [getattr(p, "key", "") for p in path]
    if names[-1] in ("decode_position", "max_decode_length_marker"):
      return x
    if "encoder_decoder_attention" in names:
      return x
    return fn(x, _batch_axis(x, path))

  return jax.tree_util.tree_map_with_path(one, cache)


def _batch_axis(x: Array, path) -> int:
  # Under nn.scan the cache is stacked on axis 0, so batch is axis 1.
  del x
  names = [getattr(p, "key", "") for p in path]
  return 1 if names[1:2] == ["decoder"] else 0


def greedy_or_sample(
  model: t5.Transformer,
  params: t5.Params,
  encoder_input_tokens: Array,
  max_decode_length: int,
  *,
  sample: bool = False,
  temperature: float | Array = 1.0,
  rng: Array | None = None,
  eos_id: int = 1,
  topk: int = 0,
) -> tuple[Array, Array]:
  """Greedy (temperature 0) or temperature sampling, one token per step.

  Args:
    model: the Transformer.
    params: its parameters.
    encoder_input_tokens: int [batch, in_len].
    max_decode_length: tokens to generate at most.
    sample: False = argmax; True = sample from softmax(logits / T).
    temperature: T (may be traced: changing it does not recompile).
    rng: PRNG key (required when sampling).
    eos_id: end-of-sequence id.
    topk: if > 0, sample only among the k most likely tokens.

  Returns:
    (tokens [batch, max_decode_length], log-probability [batch] of them).
  """
  batch = encoder_input_tokens.shape[0]
  encoded = _encode(model, params, encoder_input_tokens)
  cache = init_cache(
    model, params, encoded, encoder_input_tokens, max_decode_length
  )
  if rng is None:
    rng = jax.random.PRNGKey(0)

  def cond(state):
    step, _, _, done, _, _, _ = state
    return (step < max_decode_length) & ~jnp.all(done)

  def body(state):
    step, tokens, prev, done, score, cache, rng = state
    logits, cache = _step_logits(
      model, params, cache, encoded, encoder_input_tokens, prev
    )
    log_probs = jax.nn.log_softmax(logits)
    if sample:
      rng, key = jax.random.split(rng)
      scaled = logits / temperature
      if topk > 0:
        kth = jax.lax.top_k(scaled, topk)[0][:, -1:]
        scaled = jnp.where(scaled < kth, _NEG_INF, scaled)
      nxt = jax.random.categorical(key, scaled).astype(jnp.int32)
    else:
      nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    nxt = jnp.where(done, 0, nxt)
    token_lp = jnp.take_along_axis(log_probs, nxt[:, None], axis=-1)[:, 0]
    score = score + jnp.where(done, 0.0, token_lp)
    tokens = tokens.at[:, step].set(nxt)
    done = done | (nxt == eos_id)
    return step + 1, tokens, nxt, done, score, cache, rng

  state = (
    jnp.array(0, jnp.int32),
    jnp.zeros((batch, max_decode_length), jnp.int32),
    jnp.zeros((batch,), jnp.int32),
    jnp.zeros((batch,), bool),
    jnp.zeros((batch,), jnp.float32),
    cache,
    rng,
  )
  _, tokens, _, _, score, _, _ = jax.lax.while_loop(cond, body, state)
  return tokens, score


def brevity_penalty(alpha: float, length: Array) -> Array:
  """T5X/GNMT length penalty ((5 + length) / 6) ** alpha."""
  return jnp.power((5.0 + length.astype(jnp.float32)) / 6.0, alpha)


def beam_search(
  model: t5.Transformer,
  params: t5.Params,
  encoder_input_tokens: Array,
  max_decode_length: int,
  *,
  num_beams: int = 4,
  alpha: float = 0.6,
  eos_id: int = 1,
) -> tuple[Array, Array]:
  """Beam search with T5X's length normalization.

  Each beam's score is its log-probability divided by
  `brevity_penalty(alpha, length)` once it finishes; live beams are ranked
  by raw log-probability (T5X's `beam_search`). The loop stops when no live
  beam can beat the worst finished one.

  Args:
    model: the Transformer.
    params: its parameters.
    encoder_input_tokens: int [batch, in_len].
    max_decode_length: tokens to generate at most.
    num_beams: beam width.
    alpha: length-penalty exponent (0 = no penalty).
    eos_id: end-of-sequence id.

  Returns:
    (tokens [batch, num_beams, max_decode_length] best first,
     scores [batch, num_beams] length-normalized log-probabilities).
  """
  batch = encoder_input_tokens.shape[0]
  k = num_beams
  enc_tokens = _repeat(encoder_input_tokens, k)
  encoded = _encode(model, params, encoder_input_tokens)
  encoded = _repeat(encoded, k)
  cache = init_cache(model, params, encoded, enc_tokens, max_decode_length)
  length = max_decode_length

  # Live beams: tokens, raw log-probs (only beam 0 alive at the start).
  live_seqs = jnp.zeros((batch, k, length), jnp.int32)
  live_lp = jnp.tile(
    jnp.array([0.0] + [_NEG_INF] * (k - 1), jnp.float32), (batch, 1)
  )
  fin_seqs = jnp.zeros((batch, k, length), jnp.int32)
  fin_scores = jnp.full((batch, k), _NEG_INF, jnp.float32)
  fin_flags = jnp.zeros((batch, k), bool)

  def gather_beams(x, idx):
    # x [batch, k_src, ...], idx [batch, k_out] -> [batch, k_out, ...]
    return jax.vmap(lambda a, i: a[i])(x, idx)

  def reorder_cache(cache, idx):
    flat = (jnp.arange(batch)[:, None] * k + idx).reshape(-1)

    def take(x, axis):
      return jnp.take(x, flat, axis=axis)

    return _map_self_attention_cache(take, cache)

  def cond(state):
    step, _, live_lp, _, fin_scores, fin_flags, _ = state
    # Best possible finished score of a live beam: its log-prob can only
    # fall, and the penalty is largest at the maximum length.
    best_live = live_lp[:, 0] / brevity_penalty(alpha, jnp.array(length))
    worst_fin = jnp.where(fin_flags, fin_scores, _NEG_INF).min(axis=1)
    all_full = jnp.all(fin_flags, axis=1)
    done = all_full & (worst_fin >= best_live)
    return (step < length) & ~jnp.all(done)

  def body(state):
    step, live_seqs, live_lp, fin_seqs, fin_scores, fin_flags, cache = state
    prev = jnp.where(
      step > 0,
      live_seqs[:, :, jnp.maximum(step - 1, 0)],
      0,
    ).reshape(batch * k)
    logits, cache = _step_logits(
      model, params, cache, encoded, enc_tokens, prev
    )
    vocab = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits).reshape(batch, k, vocab)
    cand_lp = (live_lp[:, :, None] + log_probs).reshape(batch, k * vocab)
    # 2k candidates: enough that k survive even if k of them end with EOS.
    top_lp, top_idx = jax.lax.top_k(cand_lp, 2 * k)
    beam_idx = top_idx // vocab
    token = (top_idx % vocab).astype(jnp.int32)
    seqs = gather_beams(live_seqs, beam_idx)
    seqs = seqs.at[:, :, step].set(token)
    is_eos = token == eos_id

    # New live beams: the best k candidates that did not end.
    live_cand = jnp.where(is_eos, _NEG_INF, top_lp)
    new_live_lp, keep = jax.lax.top_k(live_cand, k)
    new_live_seqs = gather_beams(seqs, keep)
    cache = reorder_cache(cache, gather_beams(beam_idx, keep))

    # New finished beams: merge the ended candidates into the finished set.
    fin_cand = jnp.where(
      is_eos, top_lp / brevity_penalty(alpha, step + 1), _NEG_INF
    )
    all_scores = jnp.concatenate([fin_scores, fin_cand], axis=1)
    all_seqs = jnp.concatenate([fin_seqs, seqs], axis=1)
    all_flags = jnp.concatenate([fin_flags, is_eos], axis=1)
    new_fin_scores, fin_keep = jax.lax.top_k(
      jnp.where(all_flags, all_scores, _NEG_INF), k
    )
    new_fin_seqs = gather_beams(all_seqs, fin_keep)
    new_fin_flags = gather_beams(all_flags, fin_keep)
    return (
      step + 1,
      new_live_seqs,
      new_live_lp,
      new_fin_seqs,
      new_fin_scores,
      new_fin_flags,
      cache,
    )

  state = (
    jnp.array(0, jnp.int32),
    live_seqs,
    live_lp,
    fin_seqs,
    fin_scores,
    fin_flags,
    cache,
  )
  _, live_seqs, live_lp, fin_seqs, fin_scores, fin_flags, _ = (
    jax.lax.while_loop(cond, body, state)
  )
  # Rows where nothing finished fall back to the live beams, scored with the
  # length penalty at full length (T5X does the same).
  any_fin = jnp.any(fin_flags, axis=1)
  live_scores = live_lp / brevity_penalty(alpha, jnp.array(length))
  seqs = jnp.where(any_fin[:, None, None], fin_seqs, live_seqs)
  scores = jnp.where(any_fin[:, None], fin_scores, live_scores)
  return seqs, scores


@functools.partial(
  jax.jit,
  static_argnames=(
    "model",
    "max_decode_length",
    "method",
    "num_beams",
    "eos_id",
    "alpha",
    "topk",
  ),
)
def _decode_jit(
  model,
  params,
  encoder_input_tokens,
  rng,
  *,
  max_decode_length,
  method,
  num_beams,
  temperature,
  eos_id,
  alpha,
  topk,
):
  if method == "beam":
    seqs, scores = beam_search(
      model,
      params,
      encoder_input_tokens,
      max_decode_length,
      num_beams=num_beams,
      alpha=alpha,
      eos_id=eos_id,
    )
    return seqs[:, 0], scores[:, 0]
  return greedy_or_sample(
    model,
    params,
    encoder_input_tokens,
    max_decode_length,
    sample=method == "sample",
    temperature=temperature,
    rng=rng,
    eos_id=eos_id,
    topk=topk,
  )


def decode(
  model: t5.Transformer,
  params: t5.Params,
  encoder_input_tokens: Array,
  *,
  max_decode_length: int,
  method: str = "greedy",
  num_beams: int = 4,
  temperature: float = 1.0,
  rng: Array | None = None,
  eos_id: int = 1,
  alpha: float = 0.6,
  topk: int = 0,
  return_scores: bool = False,
) -> Array | tuple[Array, Array]:
  """Decodes a batch; the contract's entry point.

  Args:
    model: a `dss_jax.models.t5.Transformer` (hashable; the jit key).
    params: its parameters (a "params" wrapper is removed if present).
    encoder_input_tokens: int [batch, in_len], 0 = padding.
    max_decode_length: tokens to generate at most.
    method: "greedy", "beam" or "sample".
    num_beams: beam width ("beam").
    temperature: softmax temperature ("sample").
    rng: PRNG key ("sample"); defaults to PRNGKey(0).
    eos_id: end-of-sequence id.
    alpha: beam length-penalty exponent (T5X's default 0.6).
    topk: restrict sampling to the k most likely tokens (0 = all).
    return_scores: also return each sequence's log-probability (beam:
      length-normalized).

  Returns:
    tokens int32 [batch, max_decode_length] (0 after EOS), and scores
    [batch] if `return_scores`.

  Raises:
    ValueError: for an unknown method.
  """
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  if isinstance(params, dict) and set(params) == {"params"}:
    params = params["params"]
  if rng is None:
    rng = jax.random.PRNGKey(0)
  tokens, scores = _decode_jit(
    model,
    params,
    jnp.asarray(encoder_input_tokens, jnp.int32),
    rng,
    max_decode_length=int(max_decode_length),
    method=method,
    num_beams=int(num_beams),
    temperature=jnp.asarray(temperature, jnp.float32),
    eos_id=int(eos_id),
    alpha=float(alpha),
    topk=int(topk),
  )
  return (tokens, scores) if return_scores else tokens


def trim_after_eos(tokens: np.ndarray, eos_id: int = 1) -> list[list[int]]:
  """Host-side: each row's tokens up to (excluding) the first EOS."""
  out = []
  for row in np.asarray(tokens):
    ids = row.tolist()
    if eos_id in ids:
      ids = ids[: ids.index(eos_id)]
    out.append([t for t in ids if t != 0])
  return out
