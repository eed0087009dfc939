"""Optimizers for the built-in trainer: AdamW (the paper) and Adafactor (T5X).

Plain dataclasses that gin binds (see gin_configs/runs/train.gin). Each one
builds an optax `GradientTransformation` once the number of training steps is
known, so the learning-rate schedule can decay to zero at the last step.

The paper trains with AdamW, learning rate 5e-5 and linear decay (the Hugging
Face `Seq2SeqTrainer` default); T5X finetunes with Adafactor at a constant 1e-3.
Gradient clipping by global norm is part of the chain; gradient accumulation is
done by the trainer (micro-batches inside one jitted step), not here, so the
optimizer sees exactly one update per logged step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import optax

from dss_jax import errors

ScheduleName = Literal["linear", "constant", "rsqrt", "cosine"]


def check_learning_rate(value: float, setting: str = "LEARNING_RATE") -> float:
  """Refuses a learning rate that is not a finite number > 0.

  Args:
    value: the peak learning rate.
    setting: the flag or macro it came from, for the message.

  Returns:
    The value as a float.

  Raises:
    errors.UserError: nan, inf, zero, negative or not a number.
  """
  try:
    rate = float(value)
  except (TypeError, ValueError):
    rate = math.nan
  if not (math.isfinite(rate) and rate > 0):
    raise errors.UserError(
      f"{setting} must be a finite number > 0 (the paper's is 5e-5), got "
      f"{value!r}"
    )
  return rate


def _check_finite(owner: str, **values: float | None) -> None:
  for name, value in values.items():
    if value is not None and not math.isfinite(float(value)):
      raise errors.UserError(f"{owner}.{name} must be finite, got {value!r}")


@dataclasses.dataclass(frozen=True)
class LearningRateSchedule:
  """A learning-rate schedule with optional linear warmup.

  Attributes:
    peak: the learning rate after warmup.
    name: "linear" decays linearly to `end_fraction * peak` at the last step
      (the Hugging Face default the paper used); "constant" keeps `peak`;
      "rsqrt" is T5's inverse square root decay after warmup; "cosine" decays
      to `end_fraction * peak` along a half cosine.
    warmup_steps: steps of linear warmup from 0 to `peak`.
    end_fraction: the final learning rate as a fraction of `peak`.
  """

  peak: float = 5e-5
  name: ScheduleName = "linear"
  warmup_steps: int = 0
  end_fraction: float = 0.0

  def __post_init__(self):
    # A negative rate would train uphill and still "finish", an infinite one
    # turns every parameter into NaN at the first step (gin sets these from
    # LEARNING_RATE and friends).
    check_learning_rate(self.peak)
    if self.warmup_steps < 0:
      raise errors.UserError(
        f"warmup_steps must be >= 0, got {self.warmup_steps}"
      )
    if not 0 <= self.end_fraction <= 1:
      raise errors.UserError(
        f"end_fraction must be in [0, 1], got {self.end_fraction}"
      )
    if self.name not in ("linear", "constant", "rsqrt", "cosine"):
      raise errors.UserError(
        f"unknown learning-rate schedule {self.name!r}; choose linear, "
        "constant, rsqrt or cosine"
      )

  def build(self, total_steps: int) -> optax.Schedule:
    """Returns the schedule as a function of the step.

    Args:
      total_steps: the number of optimizer updates of the whole run.

    Returns:
      An optax schedule.

    Raises:
      ValueError: for an unknown schedule name.
    """
    decay_steps = max(1, total_steps - self.warmup_steps)
    end = self.peak * self.end_fraction
    if self.name == "linear":
      decay = optax.linear_schedule(self.peak, end, decay_steps)
    elif self.name == "constant":
      decay = optax.constant_schedule(self.peak)
    elif self.name == "cosine":
      decay = optax.cosine_decay_schedule(
        self.peak, decay_steps, alpha=self.end_fraction
      )
    elif self.name == "rsqrt":
      # T5: lr = peak * sqrt(warmup / step) after warmup; at least 1 step so
      # the schedule is finite with no warmup.
      warmup = max(1, self.warmup_steps)

      def decay(step):
        return self.peak * (warmup / (step + warmup)) ** 0.5

    else:
      raise ValueError(f"unknown learning-rate schedule {self.name!r}")
    if self.warmup_steps <= 0:
      return decay
    warmup = optax.linear_schedule(0.0, self.peak, self.warmup_steps)
    return optax.join_schedules([warmup, decay], [self.warmup_steps])


@dataclasses.dataclass(frozen=True)
class AdamW:
  """AdamW with the paper's defaults (lr 5e-5, linear decay, no warmup).

  Attributes:
    learning_rate: the schedule.
    b1: Adam beta1.
    b2: Adam beta2.
    eps: Adam epsilon (1e-8, as in PyTorch and Hugging Face).
    weight_decay: decoupled weight decay (Hugging Face default 0.0).
    clip_norm: clip gradients to this global norm first; None disables it.
  """

  learning_rate: LearningRateSchedule = LearningRateSchedule()
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.0
  clip_norm: float | None = 1.0

  def __post_init__(self):
    _check_finite(
      "AdamW",
      b1=self.b1,
      b2=self.b2,
      eps=self.eps,
      weight_decay=self.weight_decay,
      clip_norm=self.clip_norm,
    )
    if self.clip_norm is not None and not self.clip_norm > 0:
      raise errors.UserError(
        f"AdamW.clip_norm must be > 0 or None, got {self.clip_norm!r}"
      )

  def build(self, total_steps: int) -> optax.GradientTransformation:
    """Returns the optax transformation for a run of `total_steps`."""
    adamw = optax.adamw(
      self.learning_rate.build(total_steps),
      b1=self.b1,
      b2=self.b2,
      eps=self.eps,
      weight_decay=self.weight_decay,
    )
    return _with_clipping(adamw, self.clip_norm)

  def schedule(self, total_steps: int) -> optax.Schedule:
    """Returns the learning-rate schedule, for logging."""
    return self.learning_rate.build(total_steps)


@dataclasses.dataclass(frozen=True)
class Adafactor:
  """Adafactor as T5X finetunes with it (constant 1e-3, factored moments).

  Attributes:
    learning_rate: the schedule.
    decay_rate: T5X's second-moment decay exponent.
    clipping_threshold: Adafactor's own update clipping.
    momentum: first-moment decay; None (T5X default) keeps no first moment.
    multiply_by_parameter_scale: scale updates by the parameter RMS.
    clip_norm: clip gradients to this global norm first; None disables it.
  """

  learning_rate: LearningRateSchedule = LearningRateSchedule(
    peak=1e-3, name="constant"
  )
  decay_rate: float = 0.8
  clipping_threshold: float | None = 1.0
  momentum: float | None = None
  multiply_by_parameter_scale: bool = True
  clip_norm: float | None = None

  def __post_init__(self):
    _check_finite(
      "Adafactor",
      decay_rate=self.decay_rate,
      clipping_threshold=self.clipping_threshold,
      momentum=self.momentum,
      clip_norm=self.clip_norm,
    )

  def build(self, total_steps: int) -> optax.GradientTransformation:
    """Returns the optax transformation for a run of `total_steps`."""
    adafactor = optax.adafactor(
      self.learning_rate.build(total_steps),
      decay_rate=self.decay_rate,
      clipping_threshold=self.clipping_threshold,
      momentum=self.momentum,
      multiply_by_parameter_scale=self.multiply_by_parameter_scale,
    )
    return _with_clipping(adafactor, self.clip_norm)

  def schedule(self, total_steps: int) -> optax.Schedule:
    """Returns the learning-rate schedule, for logging."""
    return self.learning_rate.build(total_steps)


Optimizer = AdamW | Adafactor


def _with_clipping(
  tx: optax.GradientTransformation, clip_norm: float | None
) -> optax.GradientTransformation:
  if clip_norm is None:
    return tx
  return optax.chain(optax.clip_by_global_norm(clip_norm), tx)
