"""The paper's step on the T5X path, measured through T5X's own data path.

On the real CQA data (the paper's released PaLM annotations), with the gin
files of gin_configs/t5x/ parsed by gin as `t5x.train` parses them, the first
training batches come from `t5x.utils.get_dataset` with the gin-bound
`train/utils.DatasetConfig` and the model's FEATURE_CONVERTER_CLS:

- the sampled mixture (dss_gold.gin, T5-Base settings): 128 unpacked rows a
  step, about half of them label examples;
- the official recipe (dss_official.gin, dss_official_teacher.gin): 64 inputs
  a step, each with its label and its rationale, both of the same input, with
  the gold or teacher label as the gin file says;
- the official loss on a fixed batch equals a numpy implementation of the
  official formula; T5X's metrics come out; `python -m t5x.train` runs the
  official recipe with inference eval on the label task.

Without T5X these tests skip, saying so (docs/tpu.md says how to install it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import gin
import numpy as np
import pytest

T5X_INSTALLED = importlib.util.find_spec("t5x") is not None
pytestmark = [
  pytest.mark.t5x,
  pytest.mark.skipif(
    not T5X_INSTALLED,
    reason="T5X is not installed (docs/tpu.md says how; it is not on PyPI)",
  ),
]

REPO = pathlib.Path(__file__).resolve().parents[1]
GIN_DIR = REPO / "gin_configs" / "t5x"
# A byte vocabulary decodes without files: the prefixes are plain bytes.
BYTE = ("dss_jax.vocab.get_vocabulary.name = 'byte'",)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory, paper_data_dir):
  """cqa_palm (and svamp_palm for the training run), from the paper's files."""
  from dss_jax import datasets

  data_dir = tmp_path_factory.mktemp("tfds")
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("DSS_PAPER_DATA_DIR", str(paper_data_dir))
    for card in ("cqa", "svamp"):
      datasets.build_annotated(card, "palm", data_dir=str(data_dir))
  return data_dir


@pytest.fixture
def cqa(tfds_dir, monkeypatch):
  """The CQA names registered on the test's data."""
  from dss_jax import seqio_tasks

  monkeypatch.setenv("TFDS_DATA_DIR", str(tfds_dir))
  seqio_tasks.register_card("cqa", "palm", data_dir=str(tfds_dir))
  yield
  gin.clear_config(clear_constants=True)
  seqio_tasks.register_builtin()


@gin.configurable("dss_test_probe")
def _probe(model=gin.REQUIRED, train_cfg=gin.REQUIRED):
  return model, train_cfg


def _configure(files: list[str], bindings: tuple[str, ...] = ()):
  """Parses run files as `t5x.train` does; returns (model, train config)."""
  import importlib

  import t5x

  gin.clear_config(clear_constants=True)
  gin.add_config_file_search_path(str(REPO))
  gin.add_config_file_search_path(
    os.path.dirname(os.path.dirname(t5x.__file__))
  )
  saved = sys.modules["__main__"]
  # T5X's run gins `import __main__` and bind `train_script.train`.
  sys.modules["__main__"] = importlib.import_module("t5x.train")
  try:
    gin.parse_config_files_and_bindings(
      [str(GIN_DIR / f"{f}.gin") for f in files],
      [
        *BYTE,
        "MODEL_DIR = 'unused'",
        "dss_test_probe.model = %MODEL",
        "dss_test_probe.train_cfg = @train/utils.DatasetConfig()",
        # A fixed sampling seed: T5X otherwise takes the clock.
        "train/utils.DatasetConfig.seed = 0",
        *bindings,
      ],
      finalize_config=False,
    )
  finally:
    sys.modules["__main__"] = saved
  return _probe()


def _first_batches(model, cfg, steps: int) -> list[dict]:
  from t5x import utils

  ds = utils.get_dataset(
    cfg,
    shard_id=0,
    num_shards=1,
    feature_converter_cls=model.FEATURE_CONVERTER_CLS,
  )
  return list(ds.take(steps).as_numpy_iterator())


def _decode(tokens: np.ndarray) -> list[str]:
  from dss_jax import vocab

  byte = vocab.get_vocabulary("byte")
  return [byte.decode(row.tolist()) for row in tokens]


def _cqa_targets(label_source: str) -> tuple[dict, dict]:
  """input -> label and input -> rationale of CQA train, from the sources."""
  from dss_jax import seqio_tasks

  tables = []
  for kind in (label_source, "rationale"):
    source = seqio_tasks._AnnotatedSource(
      "cqa", "palm", None, kind, seqio_tasks._Overrides()
    )
    ds = source("train", shuffle_files=False)
    tables.append(
      {
        ex["input"].decode(): ex["target"].decode()
        for ex in ds.as_numpy_iterator()
      }
    )
  return tables[0], tables[1]


def test_mixture_step_is_128_unpacked_rows_half_labels(cqa):
  del cqa
  model, cfg = _configure(["models/t5_1_1_base", "dss_gold", "datasets/cqa"])
  assert (cfg.batch_size, cfg.pack) == (128, False)
  assert cfg.mixture_or_task_name == "dss_cqa_palm"
  steps = 4
  batches = _first_batches(model, cfg, steps)
  labels = 0
  for batch in batches:
    # One example a row: no packing features, and 128 rows.
    assert "encoder_segment_ids" not in batch
    assert batch["encoder_input_tokens"].shape == (128, 1024)
    assert (batch["decoder_loss_weights"].sum(axis=1) > 0).all()
    inputs = _decode(batch["encoder_input_tokens"][:, :9])
    assert set(inputs) <= {"predict: ", "explain: "}
    labels += inputs.count("predict: ")
  share = labels / (128 * steps)
  # Rate 1:1: each row is a label example with probability 1/2; over 512
  # rows the share's standard deviation is 2.2%, so this is > 4 sigma wide.
  assert 0.4 < share < 0.6, share


@pytest.mark.parametrize(
  ("run_file", "examples"), [("dss_gold", 128), ("standard_finetune", 64)]
)
def test_packed_steps_keep_the_unpacked_examples(cqa, run_file, examples):
  del cqa
  files = ["models/t5_1_1_base", run_file, "datasets/cqa", "packing"]
  # Byte tokens: a CQA rationale fills most of a 256-token target row.
  model, cfg = _configure(files, ("PACKED_ROWS = 64",))
  assert (cfg.batch_size, cfg.pack) == (64, True)
  # Gin binds the converter when T5X builds it: read before reconfiguring.
  batches = _first_batches(model, cfg, 3)
  unpacked_model, unpacked = _configure(files[:3])
  assert unpacked.batch_size == examples
  plain = _first_batches(unpacked_model, unpacked, 3)
  for batch, want in zip(batches, plain, strict=True):
    assert batch["encoder_input_tokens"].shape == (64, 1024)
    segments = batch["decoder_segment_ids"]
    real = batch["decoder_loss_weights"] > 0
    rows, _ = np.nonzero(real)
    # Every example of the unpacked step, once: the same target lengths.
    lengths = np.unique(rows * 1000 + segments[real], return_counts=True)[1]
    assert len(lengths) == examples
    assert sorted(lengths) == sorted(
      want["decoder_loss_weights"].sum(axis=1).tolist()
    )


@pytest.mark.parametrize(
  ("run_file", "label_source"),
  [("dss_official", "gold"), ("dss_official_teacher", "teacher")],
)
def test_official_step_is_64_inputs_each_with_both_halves(
  cqa, run_file, label_source
):
  del cqa
  model, cfg = _configure(["models/t5_1_1_base", run_file, "datasets/cqa"])
  assert (cfg.batch_size, cfg.pack) == (64, False)
  assert cfg.mixture_or_task_name == "dss_cqa_palm_paired"
  assert model.alpha == 0.5
  labels, rationales = _cqa_targets(label_source)
  for batch in _first_batches(model, cfg, steps=2):
    assert "encoder_segment_ids" not in batch
    for half in ("", "rationale_"):
      assert batch[f"{half}encoder_input_tokens"].shape == (64, 1024)
      assert batch[f"{half}decoder_target_tokens"].shape == (64, 256)
      assert (batch[f"{half}decoder_loss_weights"].sum(axis=1) > 0).all()
    label_inputs = _decode(batch["encoder_input_tokens"])
    rationale_inputs = _decode(batch["rationale_encoder_input_tokens"])
    label_targets = _decode(batch["decoder_target_tokens"])
    rationale_targets = _decode(batch["rationale_decoder_target_tokens"])
    for row in range(64):
      assert label_inputs[row].startswith("predict: ")
      assert rationale_inputs[row].startswith("explain: ")
      # Row b of each half is the same input: the step's rationales come
      # from the inputs of its labels.
      text = label_inputs[row][len("predict: ") :]
      assert rationale_inputs[row][len("explain: ") :] == text
      # ... with that input's label (gold or teacher) and rationale.
      assert label_targets[row] == labels[text]
      # Targets are cut to 255 bytes and EOS (256 byte tokens).
      want = rationales[text].encode()[:255].decode(errors="ignore")
      assert rationale_targets[row] == want
    # 64 distinct inputs a step.
    assert len(set(label_inputs)) == 64


def _numpy_official_loss(logits, batch, alpha):
  """alpha * mean-token-CE(label) + (1 - alpha) * mean-token-CE(rationale)."""

  def mean_ce(logits, targets, weights):
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    token_ce = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    return (token_ce * weights).sum() / weights.sum()

  label = mean_ce(
    logits[0], batch["decoder_target_tokens"], batch["decoder_loss_weights"]
  )
  rationale = mean_ce(
    logits[1],
    batch["rationale_decoder_target_tokens"],
    batch["rationale_decoder_loss_weights"],
  )
  return alpha * label + (1 - alpha) * rationale, label, rationale


@pytest.mark.parametrize(("rate", "alpha"), [(1.0, 0.5), (3.0, 0.25)])
def test_official_loss_matches_the_formula(cqa, rate, alpha):
  import jax
  import jax.numpy as jnp

  del cqa
  model, cfg = _configure(
    ["models/tiny", "dss_official", "datasets/cqa"],
    (
      f"RATIONALE_RATE = {rate}",
      "TASK_FEATURE_LENGTHS = {'inputs': 96, 'targets': 48}",
      "BATCH_SIZE = 4",
    ),
  )
  assert model.alpha == alpha
  (batch,) = _first_batches(model, cfg, steps=1)
  shapes = {k: v.shape for k, v in batch.items()}
  params = model.get_initial_variables(jax.random.key(0), shapes)["params"]
  loss, metrics = model.loss_fn(
    params, jax.tree.map(jnp.asarray, batch), dropout_rng=None
  )
  # Logits of each half from separate forward passes, as the official code
  # runs them; the loss arithmetic is numpy's.
  features = (
    "encoder_input_tokens",
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_loss_weights",
  )
  logits = [
    np.asarray(
      model._compute_logits(params, {k: batch[half + k] for k in features})
    )
    for half in ("", "rationale_")
  ]
  want, label, rationale = _numpy_official_loss(logits, batch, alpha)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  # The label and rationale means differ, so alpha matters in this check.
  assert abs(label - rationale) > 1e-3
  # T5X's metrics come out and compute as T5X's trainer computes them (the
  # timing ones need the trainer's clock, so they are left out here).
  computed = {
    k: float(np.asarray(m.compute()))
    for k, m in metrics.items()
    if not k.startswith("timing/")
  }
  np.testing.assert_allclose(computed["loss"], want, rtol=1e-5)
  np.testing.assert_allclose(computed["label_loss"], label, rtol=1e-5)
  np.testing.assert_allclose(computed["rationale_loss"], rationale, rtol=1e-5)
  assert 0.0 <= computed["accuracy"] <= 1.0
  assert 0.0 <= computed["label_accuracy"] <= 1.0
  # 4 inputs, 2 sequences each.
  assert float(metrics["timing/seqs"].compute()) == 8


def test_official_converter_keeps_plain_tasks_plain(cqa):
  """Inference eval runs the `_label` task through the model's converter."""
  import seqio

  from dss_jax import paired

  del cqa
  gin.parse_config(BYTE)
  lengths = {"inputs": 96, "targets": 48}
  task = seqio.get_mixture_or_task("dss_cqa_palm_label")
  ds = task.get_dataset(lengths, split="validation", shuffle=False)
  ours = paired.PairedEncDecFeatureConverter(pack=False)(ds, lengths)
  theirs = seqio.EncDecFeatureConverter(pack=False)(ds, lengths)
  for a, b in zip(
    ours.take(3).as_numpy_iterator(),
    theirs.take(3).as_numpy_iterator(),
    strict=True,
  ):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  paired_ds = seqio.get_mixture_or_task("dss_cqa_palm_paired").get_dataset(
    lengths, split="train", shuffle=False
  )
  with pytest.raises(ValueError, match="cannot be packed"):
    paired.PairedEncDecFeatureConverter(pack=True)(paired_ds, lengths)


def test_t5x_trains_the_official_recipe_with_label_eval(tfds_dir, tmp_path):
  env = dict(os.environ)
  env["TFDS_DATA_DIR"] = str(tfds_dir)
  # One CPU device: the run is about the wiring, not sharding.
  env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(
    "--xla_force_host_platform_device_count=8", ""
  )
  env["JAX_PLATFORMS"] = "cpu"
  model_dir = tmp_path / "model"
  args = [
    sys.executable,
    "-m",
    "t5x.train",
    "--gin_file=gin_configs/t5x/models/tiny.gin",
    "--gin_file=gin_configs/t5x/dss_official.gin",
    "--gin_file=gin_configs/t5x/datasets/svamp.gin",
    f"--gin.MODEL_DIR='{model_dir}'",
    "--gin.TRAIN_STEPS=2",
    "--gin.EVAL_PERIOD=2",
    "--gin.EVAL_STEPS=1",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 128, 'targets': 64}",
    # Inference eval on 8 examples of the label task, decoded greedily.
    "--gin.infer_eval/utils.DatasetConfig.batch_size=8",
    "--gin.seqio.Evaluator.num_examples=8",
    "--gin.utils.SaveCheckpointConfig.period=2",
  ]
  log = tmp_path / "train.log"
  with log.open("w") as f:
    proc = subprocess.run(
      args,
      cwd=REPO,
      env=env,
      stdout=f,
      stderr=subprocess.STDOUT,
      timeout=900,
      check=False,
    )
  assert proc.returncode == 0, log.read_text()[-4000:]
  # Inference eval scored the label task (plain features, decoded labels).
  infer = model_dir / "inference_eval" / "dss_svamp_palm_label-metrics.jsonl"
  scores = [json.loads(line) for line in infer.read_text().splitlines()]
  assert scores[-1]["step"] == 2
  assert 0.0 <= scores[-1]["accuracy"] <= 100.0
  # Training eval ran the official loss on the paired validation split, and
  # training logged the per-task losses (TensorBoard event files).
  assert list((model_dir / "training_eval" / "dss_svamp_palm_paired").iterdir())
  events = list((model_dir / "train").glob("events.out.tfevents.*"))
  assert events
  tags = _event_tags(events)
  assert {"loss", "label_loss", "rationale_loss", "accuracy"} <= tags
  assert "effective_batch_size/decoder_target_tokens" in tags


def _event_tags(paths: list[pathlib.Path]) -> set[str]:
  import tensorflow as tf

  tags = set()
  for path in paths:
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        tags.add(value.tag)
  return tags
