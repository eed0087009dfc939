"""Student models: T5 v1.1 / Flan-T5 with T5X's parameter tree."""

from dss_jax.models.t5 import (
  T5Config,
  Transformer,
  get_logical_axes,
  make_test_model,
  t5_1_1_config,
)

__all__ = [
  "T5Config",
  "Transformer",
  "get_logical_axes",
  "make_test_model",
  "t5_1_1_config",
]
