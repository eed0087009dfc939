"""The official Distilling Step-by-Step step as a T5X model.

The paper's code (google-research/distilling-step-by-step, `TaskPrefixTrainer`)
runs the model on a batch of inputs twice, on `predict: <input>` -> label and
on `explain: <input>` -> rationale, and trains on

    alpha * L_label + (1 - alpha) * L_rationale,

each L the cross-entropy averaged over that task's real (non-padding) target
tokens in the batch (Hugging Face's mean with ignore index), alpha 0.5.
`PairedEncoderDecoderModel` computes exactly that on the paired examples of
`dss_jax.paired` (task `dss_<card>_<source>_paired`), so T5X's BATCH_SIZE
counts inputs, as the paper's batch does. alpha is `1 / (1 + rationale_rate)`
(`dss_jax.step.StepConfig`, whose weights the built-in trainer uses too): the
mixture rate lambda of the sampled recipe stays the one knob, and the paper's
alpha 0.5 is lambda 1.

Only T5X run files (gin_configs/t5x/dss_official*.gin) and tests import this
module; it needs T5X installed (docs/tpu.md). Tests:
tests/t5x_official_test.py checks the loss against a numpy implementation of
the formula and the batches T5X builds for it on real data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import clu.metrics as clu_metrics
import jax
import jax.numpy as jnp
from t5x import losses, models
from t5x import metrics as metrics_lib

from dss_jax import paired
from dss_jax import step as step_lib

Array = jax.Array
PyTree = Any
MODEL_FEATURES = (
  "encoder_input_tokens",
  "decoder_input_tokens",
  "decoder_target_tokens",
  "decoder_loss_weights",
)


class PairedEncoderDecoderModel(models.EncoderDecoderModel):
  """T5X's EncoderDecoderModel trained with the official two-task loss.

  Batches with `rationale_*` features (training and training-eval on the
  `_paired` task) get the official loss; batches without them (other tasks)
  get T5X's usual loss. Inference and scoring are T5X's own.
  """

  FEATURE_CONVERTER_CLS = paired.PairedEncDecFeatureConverter

  def __init__(self, *args: Any, rationale_rate: float = 1.0, **kwargs: Any):
    """Takes EncoderDecoderModel's arguments, and lambda.

    Args:
      *args: passed to `t5x.models.EncoderDecoderModel`.
      rationale_rate: lambda; the loss weighs labels by
        `alpha = 1 / (1 + lambda)` and rationales by `1 - alpha`.
      **kwargs: passed to `t5x.models.EncoderDecoderModel`.
    """
    super().__init__(*args, **kwargs)
    step = step_lib.StepConfig(recipe="official", rationale_rate=rationale_rate)
    self.alpha, self.rationale_weight = step.task_weights(2)

  def loss_fn(
    self,
    params: PyTree,
    batch: Mapping[str, Array],
    dropout_rng: Array | None,
  ) -> tuple[Array, dict]:
    """The official loss on paired batches; T5X's loss on others.

    Args:
      params: model parameters.
      batch: model features of B inputs, both halves (`rationale_*`).
      dropout_rng: rng for dropout, None when evaluating.

    Returns:
      The loss and T5X's metrics over all 2 B sequences, plus
      `label_loss`, `rationale_loss` and `label_accuracy`.
    """
    if paired.RATIONALE + "encoder_input_tokens" not in batch:
      return super().loss_fn(params, batch, dropout_rng)
    # Rows are independent without packing, so one pass over the 2 B rows
    # equals the official code's two passes; row b < B is the label half.
    joined = {
      k: jnp.concatenate([batch[k], batch[paired.RATIONALE + k]], axis=0)
      for k in MODEL_FEATURES
    }
    num_inputs = batch["encoder_input_tokens"].shape[0]
    logits = self._compute_logits(params, joined, dropout_rng)
    targets = joined["decoder_target_tokens"]
    weights = joined["decoder_loss_weights"].astype(jnp.float32)
    is_label = (jnp.arange(targets.shape[0]) < num_inputs)[:, None]
    label_weights = jnp.where(is_label, weights, 0.0)
    rationale_weights = weights - label_weights

    def task_mean(task_weights: Array) -> tuple[Array, Array]:
      # A mean over the task's real target tokens, as Hugging Face's
      # cross-entropy with ignore index; max() guards an all-pad batch.
      count = jnp.maximum(jnp.sum(task_weights), 1.0)
      loss, z_loss, _ = losses.compute_weighted_cross_entropy(
        logits,
        targets=targets,
        weights=task_weights,
        label_smoothing=self._label_smoothing,
        z_loss=self._z_loss,
        loss_normalizing_factor=count,
      )
      return loss, z_loss

    label_loss, label_z = task_mean(label_weights)
    rationale_loss, rationale_z = task_mean(rationale_weights)
    loss = self.alpha * label_loss + self.rationale_weight * rationale_loss
    z_loss = self.alpha * label_z + self.rationale_weight * rationale_z
    metrics = models.compute_base_metrics(
      logits=logits,
      targets=targets,
      mask=weights,
      loss=loss,
      z_loss=z_loss,
      segment_ids={
        k: joined[k] != 0
        for k in ("encoder_input_tokens", "decoder_target_tokens")
      },
    )
    metrics.update(
      {
        "label_loss": metrics_lib.AveragePerStep(total=label_loss),
        "rationale_loss": metrics_lib.AveragePerStep(total=rationale_loss),
        "label_accuracy": clu_metrics.Accuracy.from_model_output(
          logits=logits,
          labels=targets.astype(jnp.int32),
          mask=label_weights,
        ),
      }
    )
    return loss, metrics
