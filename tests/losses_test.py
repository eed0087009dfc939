"""Cross-entropy normalization (per sequence, per packed segment, per token)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dss_jax import losses

# One compiled program per call shape instead of dozens of eager ops.
_ce = jax.jit(
  losses.cross_entropy_loss,
  static_argnames=("normalization", "z_loss", "label_smoothing"),
)


def _logits(seed, shape):
  return jnp.asarray(
    np.random.RandomState(seed).normal(size=shape), jnp.float32
  )


def _token_nll(logits, targets):
  logp = jax.nn.log_softmax(logits)
  return -np.take_along_axis(
    np.asarray(logp), np.asarray(targets)[..., None], -1
  )[..., 0]


def test_per_sequence_weighs_each_sequence_equally():
  logits = _logits(0, (2, 6, 11))
  # A 1-token label and a 6-token rationale.
  targets = jnp.array([[3, 0, 0, 0, 0, 0], [4, 5, 6, 7, 8, 9]])
  nll = _token_nll(logits, targets)
  per_seq = np.array([nll[0, 0], nll[1].mean()])
  loss, aux = _ce(logits, targets)
  np.testing.assert_allclose(loss, per_seq.mean(), rtol=1e-6)
  np.testing.assert_allclose(aux["per_sequence_loss"], per_seq, rtol=1e-6)
  assert float(aux["num_sequences"]) == 2.0
  assert float(aux["num_tokens"]) == 7.0
  tokens, _ = _ce(logits, targets, normalization="tokens")
  np.testing.assert_allclose(tokens, (nll[0, 0] + nll[1].sum()) / 7, rtol=1e-6)
  # The rationale dominates token normalization, not per-sequence.
  assert abs(float(tokens) - per_seq[1]) < abs(float(loss) - per_seq[1])


def test_packed_segments_are_sequences():
  logits = _logits(1, (2, 8, 7))
  targets = jnp.array([[1, 2, 3, 4, 5, 6, 0, 0], [2, 2, 2, 2, 2, 2, 2, 2]])
  segments = jnp.array([[1, 2, 2, 2, 3, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
  nll = _token_nll(logits, targets)
  means = [nll[0, 0], nll[0, 1:4].mean(), nll[0, 4:6].mean(), nll[1].mean()]
  loss, aux = _ce(logits, targets, segment_ids=segments)
  np.testing.assert_allclose(loss, np.mean(means), rtol=1e-6)
  assert float(aux["num_sequences"]) == 4.0
  np.testing.assert_allclose(
    aux["per_sequence_loss"], [np.mean(means[:3]), means[3]], rtol=1e-6
  )


def test_weights_mask_tokens_and_empty_batch_is_finite():
  logits = _logits(2, (1, 4, 5))
  targets = jnp.array([[1, 2, 3, 4]])
  weights = jnp.array([[1.0, 1.0, 0.0, 0.0]])
  nll = _token_nll(logits, targets)
  loss, _ = _ce(logits, targets, weights)
  np.testing.assert_allclose(loss, nll[0, :2].mean(), rtol=1e-6)
  empty, aux = _ce(logits, targets, jnp.zeros((1, 4)))
  assert float(empty) == 0.0 and float(aux["num_sequences"]) == 0.0


def test_label_smoothing_matches_dense_soft_targets():
  logits = _logits(3, (2, 3, 6))
  targets = jnp.array([[1, 2, 3], [4, 5, 0]])
  eps, vocab = 0.1, 6
  soft = np.full((2, 3, vocab), eps / (vocab - 1))
  np.put_along_axis(soft, np.asarray(targets)[..., None], 1 - eps, -1)
  logp = np.asarray(jax.nn.log_softmax(logits))
  const = -((1 - eps) * np.log(1 - eps) + eps * np.log(eps / (vocab - 1)))
  dense = -(soft * logp).sum(-1) - const
  loss, _ = _ce(logits, targets, label_smoothing=eps, normalization="tokens")
  mask = np.asarray(targets) > 0
  np.testing.assert_allclose(loss, dense[mask].mean(), rtol=1e-5)
  # A perfect prediction of the smoothed distribution scores zero.
  perfect = jnp.asarray(np.log(soft))
  zero, _ = _ce(perfect, targets, label_smoothing=eps)
  assert abs(float(zero)) < 1e-5


def test_z_loss_adds_log_z_squared():
  logits = _logits(4, (1, 2, 5)) + 3.0
  targets = jnp.array([[1, 2]])
  base, _ = _ce(logits, targets)
  with_z, aux = _ce(logits, targets, z_loss=1e-2)
  log_z = np.asarray(jax.nn.logsumexp(logits, -1))[0]
  np.testing.assert_allclose(with_z - base, 1e-2 * np.mean(log_z**2), rtol=1e-5)
  np.testing.assert_allclose(aux["z_loss"], 1e-2 * np.sum(log_z**2), rtol=1e-5)


def test_official_loss_is_alpha_weighted_token_means():
  label_logits, rat_logits = _logits(5, (2, 2, 9)), _logits(6, (2, 7, 9))
  label_t = jnp.array([[3, 1], [4, 1]])
  rat_t = jnp.array([[2, 3, 4, 5, 6, 7, 1], [5, 5, 1, 0, 0, 0, 0]])
  loss, aux = jax.jit(losses.compute_official_loss, static_argnums=4)(
    label_logits, label_t, rat_logits, rat_t, 0.25
  )
  # Independently: mean token NLL over each pass's non-padding targets.
  label_nll = np.asarray(_token_nll(label_logits, label_t))
  rat_nll = np.asarray(_token_nll(rat_logits, rat_t))
  label = label_nll[np.asarray(label_t) > 0].mean()
  rat = rat_nll[np.asarray(rat_t) > 0].mean()
  np.testing.assert_allclose(loss, 0.25 * label + 0.75 * rat, rtol=1e-6)
  np.testing.assert_allclose(aux["rationale_loss"], rat, rtol=1e-6)
  # Token means, not sequence means: the 6-token rationale row weighs 6:2.
  assert not np.isclose(
    rat, np.mean([rat_nll[0, :7].mean(), rat_nll[1, :3].mean()])
  )


def test_unknown_normalization_raises():
  with pytest.raises(ValueError, match="normalization"):
    _ce(_logits(0, (1, 1, 3)), jnp.array([[1]]), normalization="batch")
