"""Eval-only jobs: score one checkpoint, the latest, or every one of a run.

    python -m dss_jax.eval \
      --gin_file=models/t5_1_1_base.gin \
      --gin_file=runs/eval.gin \
      --gin.CHECKPOINT_PATH=\"/tmp/dss_cqa_base\" \
      --gin.MIXTURE_OR_TASK_NAME=\"dss_cqa_palm_label\" \
      --gin.CHECKPOINT_MODE=\"all\"

Flags mirror T5X's eval: gin files and bindings (``--gin.NAME=value`` is
accepted as T5X spells it). Metrics go to ``<output dir>/<task>-metrics.jsonl``
with predictions and TensorBoard summaries beside them; see
`dss_jax.evaluation.evaluate_checkpoints` and gin_configs/runs/eval.gin.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from absl import app

from dss_jax import gin_flags


def main(argv: Sequence[str]) -> None:
  """Runs the eval job configured by gin and prints its metrics."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Imported here: JAX starts after the host settings of `gin_flags.run`.
  from dss_jax import evaluation

  results = gin_flags.call_with_gin_flags(evaluation.evaluate_checkpoints)
  for line in results.truncation:
    print(line)
  if results.reused:
    steps = ", ".join(str(s) for s in sorted(results.reused))
    print(
      f"reused step(s) {steps}: already scored on split {results.split!r} "
      "with the same task, examples, checkpoint, decoding and vocabulary "
      f"(recorded in {results.record}; delete it to score again)"
    )
  for step, metrics in sorted(results.items()):
    line = {"step": step, "split": results.split, "task": results.task}
    print(json.dumps(line | metrics, sort_keys=True))


if __name__ == "__main__":
  gin_flags.run(main, "a model file (MODEL) and runs/eval.gin")
