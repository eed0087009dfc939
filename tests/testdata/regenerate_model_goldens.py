"""Regenerates the golden parameter tree and PartitionSpecs of T5 v1.1 base.

    python tests/testdata/regenerate_model_goldens.py

Writes `t5_1_1_base_params.txt` next to this file: one line per parameter,
`path shape logical_axes standard_spec fsdp_spec`, from `jax.eval_shape` (no
memory is allocated). `tests/model_tree_test.py` compares the live model
against it and checks it against T5X's layer definitions; review a diff of
this file as carefully as a code change.
"""

import pathlib

import flax
import jax
import jax.numpy as jnp
from flax.linen import partitioning as nn_partitioning

from dss_jax import partitioning
from dss_jax.models import t5

GOLDEN = pathlib.Path(__file__).resolve().parent / "t5_1_1_base_params.txt"


def _spec(axes: tuple[str | None, ...]) -> str:
  return "(" + ",".join(str(a) for a in axes) + ")"


def golden_lines() -> list[str]:
  """The golden file's lines for the current code."""
  config = t5.t5_1_1_config("base")
  model = t5.Transformer(config)

  def init():
    tokens = jnp.ones((2, 8), jnp.int32)
    return model.init(
      jax.random.PRNGKey(0), tokens, tokens, tokens, enable_dropout=False
    )

  variables = jax.eval_shape(init)
  flat = flax.traverse_util.flatten_dict(variables["params"], sep="/")
  axes = flax.traverse_util.flatten_dict(
    t5.get_logical_axes(variables["params"]), sep="/"
  )
  lines = []
  for path in sorted(flat):
    logical = tuple(axes[path])
    standard = nn_partitioning.logical_to_mesh_axes(
      logical, partitioning.STANDARD_LOGICAL_AXIS_RULES
    )
    fsdp = nn_partitioning.logical_to_mesh_axes(
      logical, partitioning.FSDP_LOGICAL_AXIS_RULES
    )
    shape = "x".join(str(d) for d in flat[path].shape)
    lines.append(
      f"{path} {shape} {_spec(logical)} {_spec(tuple(standard))} "
      f"{_spec(tuple(fsdp))}"
    )
  return lines


def main() -> None:
  GOLDEN.write_text("\n".join(golden_lines()) + "\n")
  print(f"wrote {GOLDEN}")


if __name__ == "__main__":
  main()
