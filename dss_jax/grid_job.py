r"""`dss-jax grid`: the paper's grid through the main job.

    dss-jax grid --out_dir=runs/grid --seeds=0,1,2   # = python -m dss_jax.grid_job
    dss-jax grid --task_card=cqa --dry_run           # its cost, before work

The flags are `dss-jax distill`'s; unset axes take the paper's grid (all four
methods, the data fractions, three student sizes). The grid itself is the
library module `dss_jax.grid`, which imports no entry point.
"""

from collections.abc import Sequence

from absl import flags

from dss_jax import cli
from dss_jax.distill import __main__ as distill


def main(argv: Sequence[str]) -> None:
  """Runs `dss-jax distill` with the paper's grid as defaults."""
  distill.main(argv, grid_defaults=True)


if __name__ == "__main__":
  distill.define_flags()
  distill.define_task_cards_flag()
  distill.define_dry_run_flag()
  # --helpshort lists the job's flags, which the distill module defines.
  for name in (*distill.FIELD_OF_FLAG, "task_cards", "dry_run"):
    flags.declare_key_flag(name)
  cli.run(main)
