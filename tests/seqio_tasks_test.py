"""Tests for dss_jax.seqio_tasks on real TFDS builds of the paper's data."""

import math
import os

import gin
import numpy as np
import pytest
import seqio
from seqio import test_utils

import dss_jax.seqio_tasks  # noqa: F401  (registers the built-in cards)
from dss_jax import seqio_tasks

BYTE = seqio.ByteVocabulary()

# SVAMP examples of the released data (ids from dss_jax.datasets).
LUKE = {  # train-000000, in the training part of the hold-out
  "input": "Luke scored 84 points after playing 2 rounds of a trivia game. "
  "If he gained the same number of points each round\n"
  "How many points did he score per round?",
  "gold": "( 84.0 / 2.0 )",
  "teacher": "(84 / 2)",
  "rationale": "Luke scored 84 points after 2 rounds. So he scored 84 points "
  "in 2 rounds. 84 / 2 = 42.",
}
FAYE = {  # train-000001, held out for validation; the teacher got it wrong
  "input": "Faye was placing her pencils and crayons into 7 rows with 36 "
  "pencils and 30 crayons in each row.\nHow many crayons does she have?",
  "gold": "( 7.0 * 30.0 )",
  "teacher": "(7 * 36)",
}


def _rows(paper_data_dir, card, split):
  """Rows of a split in the paper data (the full release or the test slices)."""
  path = paper_data_dir / card / f"{card}_{split}.json"
  return sum(1 for line in path.read_text().splitlines() if line.strip())


def _held_out(rows):
  """Validation examples held out of `rows` train rows: ceil(10%)."""
  return math.ceil(rows / 10)


# SVAMP train rows whose released teacher answer does not parse, among those
# kept for training, by train rows: 11 of the release's 720; 3 of the slice's
# 270 (tests/testdata has the first 300 rows).
_SVAMP_UNPARSED_KEPT = {800: 11, 300: 3}


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory, paper_data_dir):
  """svamp_palm and cqa_palm, built once per test run from the paper's files."""
  from dss_jax import datasets

  data_dir = str(tmp_path_factory.mktemp("tfds"))
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("DSS_PAPER_DATA_DIR", str(paper_data_dir))
    for card in ("svamp", "cqa"):
      datasets.build_annotated(card, "palm", data_dir=data_dir)
  return data_dir


@pytest.fixture(autouse=True)
def _restore_state():
  yield
  gin.clear_config()
  # Tests re-register built-in names with their own data dir; other tests
  # in the run expect the import-time registrations.
  seqio_tasks.register_builtin()


def _tokens(text):
  return [b + 3 for b in text.encode("utf-8")] + [1]


def _golden(inputs, targets):
  return {
    "inputs_pretokenized": inputs,
    "inputs": _tokens(inputs),
    "targets_pretokenized": targets,
    "targets": _tokens(targets),
  }


def _only(name, split, inputs):
  ds = seqio.get_mixture_or_task(name).get_dataset(
    None, split=split, shuffle=False
  )
  return ds.filter(lambda ex: ex["inputs_pretokenized"] == inputs)


def _ids(name, split="train"):
  """Example ids of a task's split, from its data source (no tokenizing)."""
  ds = seqio.get_mixture_or_task(name).source.get_dataset(
    split=split, shuffle=False
  )
  ids = [ex["id"].decode() for ex in ds.as_numpy_iterator()]
  assert len(ids) == len(set(ids))
  return set(ids)


def test_import_registers_builtin_cards():
  registry = seqio.TaskRegistry.names()
  for card in ("cqa", "svamp", "anli1", "esnli"):
    for suffix in (
      "_palm_label",
      "_palm_rationale",
      "_gold_finetune",
      "_palm_distill",
    ):
      assert f"dss_{card}{suffix}" in registry
    assert f"dss_{card}_palm" in seqio.MixtureRegistry.names()


def test_register_builtin_finds_built_sources(tmp_path):
  for config in ("cqa_gemini_2_5_flash", "svamp_palm"):
    version = tmp_path / "dss_annotated" / config / "1.0.0"
    version.mkdir(parents=True)
    (version / "dataset_info.json").write_text("{}")
  names = seqio_tasks.register_builtin(str(tmp_path))
  assert "dss_cqa_gemini_2_5_flash" in names
  assert "dss_cqa_gemini_2_5_flash_rationale" in seqio.TaskRegistry.names()
  assert "dss_svamp_gemini_2_5_flash" not in names
  assert seqio_tasks.built_sources(["cqa", "svamp"], str(tmp_path)) == [
    ("cqa", "gemini_2_5_flash"),
    ("svamp", "palm"),
  ]


def test_golden_examples_per_task(tfds_dir):
  seqio_tasks.register_card("svamp", "palm", data_dir=tfds_dir, vocabulary=BYTE)
  # Train split: each task's own target.
  test_utils.assert_dataset(
    _only("dss_svamp_palm_label", "train", "predict: " + LUKE["input"]),
    _golden("predict: " + LUKE["input"], LUKE["gold"]),
  )
  test_utils.assert_dataset(
    _only("dss_svamp_palm_rationale", "train", "explain: " + LUKE["input"]),
    _golden("explain: " + LUKE["input"], LUKE["rationale"]),
  )
  test_utils.assert_dataset(
    _only("dss_svamp_gold_finetune", "train", LUKE["input"]),
    _golden(LUKE["input"], LUKE["gold"]),
  )
  test_utils.assert_dataset(
    _only("dss_svamp_palm_distill", "train", LUKE["input"]),
    _golden(LUKE["input"], LUKE["teacher"]),
  )
  # Evaluation splits score against the gold label, also for distillation.
  test_utils.assert_dataset(
    _only("dss_svamp_palm_distill", "validation", FAYE["input"]),
    _golden(FAYE["input"], FAYE["gold"]),
  )
  test_utils.assert_dataset(
    _only("dss_svamp_palm_label", "train", "predict: " + FAYE["input"]), []
  )


def test_import_time_tasks_follow_later_gin_bindings(
  tfds_dir, paper_data_dir, tmp_path, monkeypatch
):
  # The tasks registered when the module was imported (no data dir, no
  # vocabulary given): everything is resolved when the data is read.
  monkeypatch.setenv("TFDS_DATA_DIR", tfds_dir)
  # A gin file as the trainers parse it: import, then bindings; then a
  # command-line binding on top (what --gin.X=Y and --gin_bindings add).
  config = tmp_path / "run.gin"
  config.write_text(
    "from __gin__ import dynamic_registration\n"
    "import dss_jax.seqio_tasks\n"
    "import dss_jax.vocab\n"
    "dss_jax.seqio_tasks.options.label_source = 'gold'\n"
    "dss_jax.vocab.get_vocabulary.name = 'byte'\n"
  )
  gin.parse_config_files_and_bindings(
    [str(config)], ["dss_jax.seqio_tasks.options.label_source = 'teacher'"]
  )
  test_utils.assert_dataset(
    _only("dss_svamp_palm_label", "train", "predict: " + LUKE["input"]),
    _golden("predict: " + LUKE["input"], LUKE["teacher"]),
  )
  test_utils.assert_dataset(
    _only("dss_svamp_palm_label", "validation", "predict: " + FAYE["input"]),
    _golden("predict: " + FAYE["input"], FAYE["gold"]),
  )
  # Unparsable teacher answers (13 of 800, 11 of the 720 kept for training)
  # are not trained on.
  rows = _rows(paper_data_dir, "svamp", "train")
  kept = rows - _held_out(rows)
  assert len(_ids("dss_svamp_palm_label")) == kept - _SVAMP_UNPARSED_KEPT[rows]


@pytest.mark.parametrize("rate", [0.5, 1.0, 2.0])
def test_mixture_rationale_share_matches_lambda(tfds_dir, rate):
  seqio_tasks.register_card("svamp", "palm", data_dir=tfds_dir, vocabulary=BYTE)
  gin.parse_config(f"dss_jax.seqio_tasks.options.rationale_rate = {rate}")
  mixture = seqio.get_mixture_or_task("dss_svamp_palm")
  ds = mixture.get_dataset(
    None,
    split="train",
    shuffle=True,
    seed=0,
    num_epochs=None,
    copy_pretokenized=True,
    passthrough_features=["inputs_pretokenized"],
  )
  inputs = [
    ex["inputs_pretokenized"] for ex in ds.take(5000).as_numpy_iterator()
  ]
  share = np.mean([x.startswith(b"explain: ") for x in inputs])
  assert abs(share - rate / (1 + rate)) < 0.02


def test_explicit_rate_wins_over_gin(tfds_dir):
  seqio_tasks.register_card(
    "svamp", "palm", data_dir=tfds_dir, rationale_rate=3.0
  )
  gin.parse_config("dss_jax.seqio_tasks.options.rationale_rate = 0.5")
  mixture = seqio.get_mixture_or_task("dss_svamp_palm")
  rationale = seqio.get_mixture_or_task("dss_svamp_palm_rationale")
  assert mixture.get_rate(rationale) == 3.0


def test_fractions_nested_and_identical_across_methods(
  tfds_dir, paper_data_dir
):
  seqio_tasks.register_card("svamp", "palm", data_dir=tfds_dir, vocabulary=BYTE)
  rows = _rows(paper_data_dir, "svamp", "train")
  kept = rows - _held_out(rows)  # 720 of the release's 800
  previous = set()
  for fraction in (0.125, 0.25, 0.5, 0.75, 1.0):
    count = math.ceil(fraction * kept)  # 90, 180, 360, 540, 720 of 720
    gin.clear_config()
    gin.parse_config(f"dss_jax.seqio_tasks.options.train_fraction = {fraction}")
    gold = _ids("dss_svamp_gold_finetune")
    assert len(gold) == count
    assert previous <= gold
    previous = gold
    if fraction in (0.125, 0.5):
      assert _ids("dss_svamp_palm_label") == gold
      # Examples without a teacher answer drop out, the rest are the same.
      rationale = _ids("dss_svamp_palm_rationale")
      assert rationale == _ids("dss_svamp_palm_distill")
      assert rationale <= gold and len(gold) - len(rationale) <= 13
  validation = _ids("dss_svamp_gold_finetune", "validation")
  test = _ids("dss_svamp_gold_finetune", "test")
  assert len(validation) == _held_out(rows) and not validation & previous
  assert len(test) == _rows(paper_data_dir, "svamp", "test")
  assert not test & (validation | previous)


def test_fraction_seed_changes_subset(tfds_dir, paper_data_dir):
  seqio_tasks.register_card(
    "svamp", "palm", data_dir=tfds_dir, vocabulary=BYTE, train_fraction=0.25
  )
  first = _ids("dss_svamp_gold_finetune")
  seqio_tasks.register_card(
    "svamp",
    "palm",
    data_dir=tfds_dir,
    vocabulary=BYTE,
    train_fraction=0.25,
    fraction_seed=1,
  )
  second = _ids("dss_svamp_gold_finetune")
  rows = _rows(paper_data_dir, "svamp", "train")
  count = math.ceil(0.25 * (rows - _held_out(rows)))  # 180 of the release's 720
  assert len(first) == len(second) == count and first != second


def test_cqa_replay_keeps_every_train_example(tfds_dir, paper_data_dir):
  names = seqio_tasks.register_card(
    "cqa", "palm", data_dir=tfds_dir, vocabulary=BYTE
  )
  assert names == [
    "dss_cqa_palm_label",
    "dss_cqa_palm_rationale",
    "dss_cqa_palm",
    "dss_cqa_gold_finetune",
    "dss_cqa_palm_distill",
  ]
  train = _ids("dss_cqa_gold_finetune", "train")
  validation = _ids("dss_cqa_gold_finetune", "validation")
  # 9,741 released train examples; 10% (975) held out as in the official code.
  rows = _rows(paper_data_dir, "cqa", "train")
  assert len(train | validation) == rows
  assert len(validation) == _held_out(rows)
  test_rows = _rows(paper_data_dir, "cqa", "test")
  assert len(_ids("dss_cqa_gold_finetune", "test")) == test_rows  # 1,221
  task = seqio.get_mixture_or_task("dss_cqa_palm_label")
  assert task.metric_fns[0].__name__ == "label_accuracy"
  svamp = seqio_tasks.register_card("svamp", "palm", data_dir=tfds_dir)
  assert (
    seqio.get_mixture_or_task(svamp[0]).metric_fns[0].__name__
    == "equation_accuracy"
  )
  assert (
    seqio.get_mixture_or_task(svamp[1]).metric_fns[0].__name__
    == "rationale_rouge_l"
  )


def test_register_twice_is_harmless(tfds_dir, paper_data_dir):
  first = seqio_tasks.register_card(
    "svamp", "palm", data_dir=tfds_dir, vocabulary=BYTE
  )
  second = seqio_tasks.register_card(
    "svamp", "palm", data_dir=tfds_dir, vocabulary=BYTE
  )
  assert first == second
  assert len(_ids("dss_svamp_palm_label", "test")) == _rows(
    paper_data_dir, "svamp", "test"
  )


def test_missing_dataset_names_the_command(tmp_path):
  seqio_tasks.register_card(
    "cqa", "palm", data_dir=str(tmp_path), vocabulary=BYTE
  )
  task = seqio.get_mixture_or_task("dss_cqa_palm_label")
  with pytest.raises(
    seqio_tasks.DatasetNotFoundError, match="python -m dss_jax.datasets --card="
  ) as e:
    task.get_dataset(None, split="train")
  assert "--config=cqa_palm" in str(e.value)
  seqio_tasks.register_card(
    "cqa", "my_teacher", data_dir=str(tmp_path), vocabulary=BYTE
  )
  with pytest.raises(
    seqio_tasks.DatasetNotFoundError,
    match="python -m dss_jax.annotate --task_card=cqa --teacher_source=my_teacher",
  ):
    seqio.get_mixture_or_task("dss_cqa_my_teacher").get_dataset(
      None, split="train"
    )


def test_invalid_options_fail_early():
  with pytest.raises(ValueError, match="label_source"):
    seqio_tasks.register_card("cqa", "palm", label_source="silver")
  with pytest.raises(ValueError, match="train_fraction"):
    seqio_tasks.register_card("cqa", "palm", train_fraction=1.5)


def test_vocabulary_from_gin_and_feature_converter(tfds_dir):
  seqio_tasks.register_card("svamp", "palm", data_dir=tfds_dir)
  gin.parse_config('dss_jax.vocab.get_vocabulary.name = "byte"')
  ds = seqio.get_dataset(
    "dss_svamp_palm",
    task_feature_lengths={"inputs": 64, "targets": 32},
    dataset_split="test",
    shuffle=False,
    num_epochs=1,
    feature_converter=seqio.EncDecFeatureConverter(pack=False),
  )
  batch = next(ds.batch(4).as_numpy_iterator())
  assert batch["encoder_input_tokens"].shape == (4, 64)
  assert batch["decoder_target_tokens"].shape == (4, 32)
  # Byte ids: "predict: " or "explain: " starts every input.
  first = bytes(int(t) - 3 for t in batch["encoder_input_tokens"][0][:9])
  assert first in (b"predict: ", b"explain: ")


def test_tfds_data_dir_override(tfds_dir, monkeypatch):
  monkeypatch.setattr(seqio.utils, "_TFDS_DATA_DIR_OVERRIDE", tfds_dir)
  assert seqio_tasks.resolve_data_dir() == tfds_dir
  assert seqio_tasks.dataset_dir("cqa", "palm") == os.path.join(
    tfds_dir, "dss_annotated", "cqa_palm", "1.0.0"
  )


@pytest.fixture(scope="session")
def nli_tfds_dir(tmp_path_factory, paper_data_dir):
  """anli1_palm and esnli_palm (the 64-row samples), plus a readable anli1."""
  import yaml

  from dss_jax import cards, datasets

  root = tmp_path_factory.mktemp("nli")
  data = yaml.safe_load((cards.TASKS_DIR / "anli1.yaml").read_text())
  data.update(name="anli1_readable", student_input={"join": "template"})
  readable = root / "anli1_readable.yaml"
  readable.write_text(yaml.safe_dump(data))
  data_dir = str(root / "tfds")
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("DSS_PAPER_DATA_DIR", str(paper_data_dir))
    for card in ("anli1", "esnli", str(readable)):
      datasets.build_annotated(card, "palm", data_dir=data_dir)
  return data_dir, str(readable)


def _paper_pairs(paper_data_dir, card):
  """(premise, hypothesis) of the sample's rows, read straight from its file."""
  import json

  path = paper_data_dir / f"{card}_sample" / f"{card}_valid.json"
  rows = [json.loads(line) for line in path.read_text().splitlines()]
  return [(r["premise"], r["hypothesis"]) for r in rows]


def _task_inputs(name):
  ds = seqio.get_mixture_or_task(name).get_dataset(
    None, split="validation", shuffle=False
  )
  return {
    ex["inputs_pretokenized"].decode(): ex["inputs"].tolist()
    for ex in ds.as_numpy_iterator()
  }


def _official_t5_tokenizer(model_path, out_dir):
  """transformers' T5TokenizerFast set up as transformers 4.24 converted it.

  The official code (README: transformers v4.24.0) tokenizes with
  `AutoTokenizer`, i.e. T5TokenizerFast converted from the SentencePiece
  model: precompiled normalizer, runs of spaces collapsed, Metaspace
  pre-tokenizer. transformers 5 puts a WhitespaceSplit before the Metaspace,
  which drops a field's trailing whitespace (4.24 kept it as a lone "\u2581"
  piece before the EOS, on 2 of ANLI's 64 sample rows); this restores 4.24.
  """
  import shutil

  transformers = pytest.importorskip(
    "transformers", reason="transformers not installed (export extra)"
  )
  from tokenizers import Regex, normalizers, pre_tokenizers

  out_dir.mkdir()
  shutil.copy(model_path, out_dir / "spiece.model")
  tokenizer = transformers.T5TokenizerFast.from_pretrained(str(out_dir))
  backend = tokenizer.backend_tokenizer
  backend.normalizer = normalizers.Sequence(
    [backend.normalizer, normalizers.Replace(Regex(" {2,}"), " ")]
  )
  backend.pre_tokenizer = pre_tokenizers.Metaspace(
    replacement="\u2581", prepend_scheme="always", split=True
  )
  return tokenizer


@pytest.mark.parametrize("card", ["anli1", "esnli"])
def test_nli_inputs_match_official_t5_tokenizer(
  card, nli_tfds_dir, paper_data_dir, tmp_path
):
  from dss_jax import vocab

  pairs = _paper_pairs(paper_data_dir, card)
  model_path = vocab.train_sentencepiece(
    [text for pair in pairs for text in pair], tmp_path / "nli.model", 500
  )
  sentencepiece = seqio.SentencePieceVocabulary(str(model_path), extra_ids=100)
  tokenizer = _official_t5_tokenizer(model_path, tmp_path / "hf")
  assert tokenizer.eos_token == "</s>" and tokenizer.eos_token_id == 1
  data_dir, _ = nli_tfds_dir
  names = seqio_tasks.register_card(
    card, "palm", data_dir=data_dir, vocabulary=sentencepiece
  )
  for name, prefix in (
    (names[0], "predict: "),
    (names[1], "explain: "),
    (names[3], ""),  # standard finetuning: no prefix, as in run.py
  ):
    # run.py: tokenizer(prefix + tokenizer.eos_token.join([premise, hyp])).
    official = {prefix + tokenizer.eos_token.join(pair) for pair in pairs}
    inputs = _task_inputs(name)
    # The rationale task drops rows whose completion gave no rationale.
    assert len(inputs) == 64 if prefix != "explain: " else len(inputs) > 32
    for text, ids in inputs.items():
      assert text in official
      assert ids == tokenizer(text)["input_ids"], text


@pytest.mark.parametrize("card", ["anli1", "esnli"])
def test_nli_inputs_bytes_are_premise_eos_hypothesis(
  card, nli_tfds_dir, paper_data_dir
):
  data_dir, _ = nli_tfds_dir
  names = seqio_tasks.register_card(
    card, "palm", data_dir=data_dir, vocabulary=BYTE
  )
  inputs = _task_inputs(names[0])
  assert len(inputs) == 64
  for premise, hypothesis in _paper_pairs(paper_data_dir, card):
    expected = _tokens("predict: " + premise)[:-1] + [1] + _tokens(hypothesis)
    assert inputs[f"predict: {premise}</s>{hypothesis}"] == expected


def test_nli_readable_option_keeps_template_inputs(
  nli_tfds_dir, paper_data_dir
):
  data_dir, readable = nli_tfds_dir
  names = seqio_tasks.register_card(
    readable, "palm", data_dir=data_dir, vocabulary=BYTE
  )
  inputs = _task_inputs(names[0])
  pairs = _paper_pairs(paper_data_dir, "anli1")
  assert len(inputs) == len(pairs) == 64
  for premise, hypothesis in pairs:
    text = f"predict: Premise: {premise}\nHypothesis: {hypothesis}"
    assert inputs[text] == _tokens(text)


@pytest.mark.parametrize("card", ["anli1", "esnli"])
def test_nli_paired_task_feeds_both_halves_premise_eos_hypothesis(
  card, nli_tfds_dir, paper_data_dir
):
  data_dir, _ = nli_tfds_dir
  seqio_tasks.register_card(card, "palm", data_dir=data_dir, vocabulary=BYTE)
  ds = seqio.get_mixture_or_task(f"dss_{card}_palm_paired").get_dataset(
    None, split="validation", shuffle=False
  )
  examples = list(ds.as_numpy_iterator())
  assert examples
  pairs = set(_paper_pairs(paper_data_dir, card))
  for ex in examples:
    text = ex["inputs_pretokenized"].decode().removeprefix("predict: ")
    premise, hypothesis = text.split("</s>")
    assert (premise, hypothesis) in pairs
    for key, prefix in (
      ("inputs", "predict: "),
      ("rationale_inputs", "explain: "),
    ):
      expected = _tokens(prefix + premise)[:-1] + [1] + _tokens(hypothesis)
      assert ex[key].tolist() == expected
