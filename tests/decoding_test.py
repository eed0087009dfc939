"""Decoding with the KV cache: greedy, beam search, sampling, EOS handling."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dss_jax import decoding
from dss_jax.models import t5

_LENGTH = 6


@pytest.fixture(scope="module")
def setup():
  # One layer per stack: the cache logic is per layer, compiles are faster.
  model, cfg = t5.make_test_model(num_encoder_layers=1, num_decoder_layers=1)
  params = t5.make_test_params(cfg, seed=3)
  tokens = np.random.RandomState(0).randint(2, cfg.vocab_size, (3, 7))
  tokens[1, 4:] = 0  # padding must not change the other rows
  return model, params, jnp.asarray(tokens)


@functools.partial(jax.jit, static_argnums=0)
def _full_forward_greedy(model, params, enc):
  """Greedy decoding re-running the whole prefix each step (no cache)."""
  batch = enc.shape[0]
  seq = jnp.zeros((batch, _LENGTH), jnp.int32)
  log_prob = jnp.zeros((batch,))
  for i in range(_LENGTH):
    dec_in = jnp.pad(seq[:, :-1], ((0, 0), (1, 0)))
    logits = model.apply(
      {"params": params},
      enc,
      dec_in,
      jnp.ones_like(dec_in),
      enable_dropout=False,
    )[:, i]
    nxt = jnp.argmax(logits, -1)
    log_prob += jax.nn.log_softmax(logits)[jnp.arange(batch), nxt]
    seq = seq.at[:, i].set(nxt)
  return seq, log_prob


def test_cached_greedy_equals_full_forward_argmax(setup):
  model, params, enc = setup
  # eos_id outside the vocabulary: decode the full length.
  tokens, scores = decoding.decode(
    model,
    params,
    enc,
    max_decode_length=_LENGTH,
    eos_id=-1,
    return_scores=True,
  )
  ref, ref_scores = _full_forward_greedy(model, params, enc)
  np.testing.assert_array_equal(tokens, ref)
  np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)


def test_greedy_stops_at_eos_and_pads_with_zeros(setup):
  model, params, enc = setup
  ref, _ = _full_forward_greedy(model, params, enc)
  eos = int(ref[0, 2])  # make row 0's third token the end of sequence
  tokens = np.asarray(
    decoding.decode(model, params, enc, max_decode_length=_LENGTH, eos_id=eos)
  )
  assert tokens[0, 2] == eos and (tokens[0, 3:] == 0).all()
  np.testing.assert_array_equal(tokens[0, :3], np.asarray(ref)[0, :3])
  assert decoding.trim_after_eos(tokens, eos)[0] == list(np.asarray(ref)[0, :2])


def test_beam_search_beats_greedy_and_scores_are_log_probs(setup):
  model, params, enc = setup
  greedy, greedy_lp = _full_forward_greedy(model, params, enc)
  beams, beam_scores = decoding.decode(
    model,
    params,
    enc,
    max_decode_length=_LENGTH,
    method="beam",
    num_beams=4,
    alpha=0.0,
    eos_id=-1,
    return_scores=True,
  )
  # With no EOS and no length penalty, the score is the log-probability of
  # a full-length sequence, at least greedy's; recompute it independently.
  assert (np.asarray(beam_scores) >= np.asarray(greedy_lp) - 1e-4).all()
  np.testing.assert_allclose(
    beam_scores, _sequence_log_prob(model, params, enc, beams), rtol=1e-4
  )


@functools.partial(jax.jit, static_argnums=0)
def _sequence_log_prob(model, params, enc, tokens):
  dec_in = jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)))
  logits = model.apply(
    {"params": params}, enc, dec_in, jnp.ones_like(dec_in), enable_dropout=False
  )
  lp = jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1)
  return lp[..., 0].sum(-1)


def test_sampling_low_temperature_is_greedy_and_rng_matters(setup):
  model, params, enc = setup
  greedy, _ = _full_forward_greedy(model, params, enc)

  def sample(temperature, seed):
    return decoding.decode(
      model,
      params,
      enc,
      max_decode_length=_LENGTH,
      method="sample",
      temperature=temperature,
      rng=jax.random.PRNGKey(seed),
      eos_id=-1,
    )

  np.testing.assert_array_equal(sample(1e-4, 0), greedy)
  hot_a, hot_b = sample(5.0, 1), sample(5.0, 2)
  assert not np.array_equal(hot_a, hot_b)


def test_unknown_method_raises(setup):
  model, params, enc = setup
  with pytest.raises(ValueError, match="method"):
    decoding.decode(model, params, enc, max_decode_length=2, method="nucleus")


def test_decoding_sharded_like_training(setup):
  from dss_jax import partitioning

  model, params, enc = setup
  want = decoding.decode(model, params, enc, max_decode_length=_LENGTH)
  part = partitioning.Partitioner(data=1, model=2, devices=jax.devices()[:2])
  sharded = jax.device_put(params, part.shardings(params))
  with part.context():
    got = decoding.decode(model, sharded, enc, max_decode_length=_LENGTH)
  np.testing.assert_array_equal(got, want)
  kernel = sharded["decoder"]["logits_dense"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "model")
