"""Optimizer settings are refused where they enter (dss_jax.optimizers).

A learning rate of inf or nan passes a `> 0` check (or not) and turns every
parameter into NaN at the first step; the dataclasses gin builds refuse it in
one line, for the built-in trainer's LEARNING_RATE and every other path.
"""

import math

import pytest

from dss_jax import optimizers


@pytest.mark.parametrize("rate", [math.inf, -math.inf, math.nan, 0.0, -1e-3])
def test_learning_rates_that_cannot_train_are_refused(rate):
  with pytest.raises(ValueError, match="LEARNING_RATE must be a finite"):
    optimizers.LearningRateSchedule(peak=rate)
  with pytest.raises(ValueError, match="--learning_rate must be a finite"):
    optimizers.check_learning_rate(rate, "--learning_rate")


def test_optimizer_settings_must_be_finite():
  assert optimizers.check_learning_rate(5e-5) == 5e-5
  with pytest.raises(ValueError, match="AdamW.b2 must be finite"):
    optimizers.AdamW(b2=math.nan)
  with pytest.raises(ValueError, match="AdamW.clip_norm must be > 0"):
    optimizers.AdamW(clip_norm=0.0)
  with pytest.raises(ValueError, match="Adafactor.decay_rate must be"):
    optimizers.Adafactor(decay_rate=math.inf)


def test_train_entry_point_refuses_an_infinite_learning_rate(
  tmp_path, repo_dir, monkeypatch, run_entry_point
):
  # 1e999 is how a gin binding spells inf; nothing is read or written first.
  monkeypatch.chdir(repo_dir)
  run = run_entry_point(
    "dss_jax.train",
    "--gin_file=tiny.gin",
    f'--gin.MODEL_DIR="{tmp_path / "run"}"',
    '--gin.MIXTURE_OR_TASK_NAME="dss_svamp_palm"',
    "--gin.LEARNING_RATE=1e999",
    "--gin.trainer.train.peak_flops=1e12",
  )
  assert run.returncode == 2, run.stderr[-2000:]
  assert run.stderr.strip().splitlines()[-1] == (
    "error: LEARNING_RATE must be a finite number > 0 (the paper's is "
    "5e-5), got inf"
  )
  assert "Traceback" not in run.stderr
  assert not (tmp_path / "run" / "checkpoints").exists()
