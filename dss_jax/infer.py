"""Label predictions and generated rationales from a trained student.

For a task split (inputs and targets from SeqIO):

    python -m dss_jax.infer \
      --gin_file=models/t5_1_1_base.gin \
      --gin_file=runs/infer.gin \
      --gin.CHECKPOINT_PATH=\"/tmp/dss_cqa_base\" \
      --gin.MIXTURE_OR_TASK_NAME=\"dss_cqa_palm_label\" \
      --gin.OUTPUT_FILE=\"/tmp/cqa_test_predictions.jsonl\"

For your own inputs, a JSONL file of raw fields formatted by a task card (or
of ``{"input": "<already formatted>"}``), or a text file with one formatted
input per line:

    python -m dss_jax.infer ... \
      --gin.INPUT_FILE=\"questions.jsonl\" --gin.CARD=\"cqa\" \
      --gin.RATIONALES=True --gin.OUTPUT_FILE=\"/tmp/answers.jsonl\"

Every input is decoded with the ``predict: `` prefix (the label); with
RATIONALES also with ``explain: `` (the rationale the student learned from the
teacher), which costs a second decode. Each output line holds ``id``,
``input``, ``prediction`` and, when known, ``rationale`` and ``target``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from absl import app

from dss_jax import gin_flags


def main(argv: Sequence[str]) -> None:
  """Runs the inference configured by gin and prints its summary."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Imported here: JAX, TensorFlow and SeqIO start after the host settings
  # of `gin_flags.run`.
  from dss_jax import inference

  result = gin_flags.call_with_gin_flags(inference.infer)
  summary = {"examples": len(result.rows), **result.metrics}
  if result.split is not None:
    summary = {"split": result.split, **summary}
  if result.inputs_cut:
    summary["inputs_cut"] = result.inputs_cut
    print(
      f"{result.inputs_cut} of {len(result.rows)} inputs longer than "
      f"{result.input_length} tokens were cut (INPUT_LENGTH)"
    )
  print(json.dumps(summary))


if __name__ == "__main__":
  gin_flags.run(main, "a model file (MODEL) and runs/infer.gin")
