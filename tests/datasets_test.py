"""Real TFDS builds of dss_annotated from the paper's files and from a store.

A store that holds nothing, or nothing of the card's examples, is refused.
"""

import json

import pytest
import tensorflow_datasets as tfds

from dss_jax import cards, datasets
from dss_jax.teacher import prompts, sources
from dss_jax.teacher import store as store_lib


@pytest.fixture
def paper_env(paper_data_dir, monkeypatch):
  monkeypatch.setenv(sources.PAPER_DATA_ENV, str(paper_data_dir))
  return paper_data_dir


def _rows(path):
  """Rows of one of the paper's JSON-lines files (full release or slice)."""
  return sum(1 for line in path.read_text().splitlines() if line.strip())


# CQA test accuracy of the released teacher by the test split's row count:
# the full release (the paper's 1,221 rows) and tests/testdata's slice.
_CQA_TEST_AGREEMENT = {1221: 77.23, 200: 77.5}


def test_cqa_palm_build(paper_env, tmp_path):
  builder = datasets.build_annotated("cqa", "palm", data_dir=str(tmp_path))
  splits = builder.info.splits
  train_rows = _rows(paper_env / "cqa" / "cqa_train.json")
  test_rows = _rows(paper_env / "cqa" / "cqa_test.json")
  assert splits["train"].num_examples == train_rows  # 9,741 in the release
  assert splits["test"].num_examples == test_rows  # 1,221 in the release
  assert "validation" not in splits
  # Reading back by the public name works without the builder object.
  reread = tfds.builder(datasets.tfds_name("cqa", "palm"), data_dir=tmp_path)
  assert reread.info.splits["train"].num_examples == train_rows
  rows = list(tfds.as_numpy(builder.as_dataset(split="test")))
  by_id = {r["id"].decode(): r for r in rows}
  row = by_id["080ef6941410139d6869e78122bc741e"]  # the first test row
  assert row["gold_label"] == b"wooded area"
  assert row["teacher_label"] == b"wooded area"
  assert row["teacher"] == b"palm-540b"
  assert (
    row["input"]
    .decode()
    .startswith(
      "A beaver is know for building prowess, their supplies come from where?"
      "\nAnswer Choices:\n(a) british columbia\n(b) body of water"
    )
  )
  assert row["rationale"].decode().endswith("supplies that beavers need.")
  assert list(row["rationales"]) == [row["rationale"]]
  assert json.loads(row["fields"])["choices"][2] == "wooded area"
  agree = sum(r["teacher_label"] == r["gold_label"] for r in rows)
  assert round(100 * agree / len(rows), 2) == _CQA_TEST_AGREEMENT[test_rows]


def test_nli_palm_build_has_validation_with_names(paper_env, tmp_path):
  builder = datasets.build_annotated("anli1", "palm", data_dir=str(tmp_path))
  assert set(builder.info.splits) == {"validation"}
  rows = list(tfds.as_numpy(builder.as_dataset(split="validation")))
  assert len(rows) == 64
  assert {r["gold_label"] for r in rows} <= {
    b"entailment",
    b"neutral",
    b"contradiction",
  }
  # The student's input, as the official code builds it: premise</s>hypothesis.
  first = json.loads(rows[0]["fields"])
  assert rows[0]["input"].decode() == (
    first["premise"] + "</s>" + first["hypothesis"]
  )
  assert all(r["input"].count(b"</s>") == 1 for r in rows)


def test_store_source_build_votes(paper_env, tmp_path):
  card = cards.load_card("svamp")
  root = sources.find_root(paper_env)
  examples = sources.read_examples(card, "test", root)[:2]
  sampling = prompts.SamplingConfig(temperature=0.7)
  store_path = tmp_path / "svamp_fake.jsonl"
  completions = {
    # Two of three samples agree by value: (10 * 45) and (45 * 10).
    examples[0].id: [
      "Ten per bed. The answer is (10 * 45).",
      "Beds times seeds. The answer is (45 * 10).",
      "Wrong. The answer is (10 + 45).",
    ],
    examples[1].id: ["no answer here", "still none"],
  }
  hashes = {}
  with store_lib.AnnotationStore(store_path) as store:
    for example in examples:
      request = prompts.build_requests(
        card, example.id, "test", example.fields, sampling
      )[0]
      hashes[example.id] = request.prompt_hash
      for i, text in enumerate(completions[example.id]):
        store.append(
          store_lib.CompletionRecord(
            id=example.id,
            prompt_hash=request.prompt_hash,
            teacher="fake-teacher",
            sample=i,
            completion=text,
            split="test",
          )
        )
  builder = datasets.build_annotated(
    "svamp", "fake", data_dir=str(tmp_path / "tfds"), store=str(store_path)
  )
  assert builder.info.splits["test"].num_examples == 200
  rows = {
    r["id"].decode(): r for r in tfds.as_numpy(builder.as_dataset(split="test"))
  }
  voted = rows[examples[0].id]
  assert voted["teacher_label"] == b"(10 * 45)"
  assert [bytes(x) for x in voted["rationales"]] == [
    b"Ten per bed.",
    b"Beds times seeds.",
  ]
  assert voted["teacher"] == b"fake-teacher"
  assert voted["prompt_hash"] == hashes[examples[0].id].encode()
  assert rows[examples[1].id]["teacher_label"] == b""
  assert rows[examples[1].id]["rationale"] == b""
  # An example the store has never seen is kept with empty teacher fields.
  assert rows["test-000199"]["teacher"] == b""
  # Reading back by name, from files (the config is not in the code).
  reread = tfds.builder(
    datasets.tfds_name("svamp", "fake"), data_dir=tmp_path / "tfds"
  )
  assert reread.info.splits["train"].num_examples == _rows(
    paper_env / "svamp" / "svamp_train.json"
  )


def test_a_store_that_answers_none_of_the_cards_examples_is_refused(
  paper_env, tmp_path
):
  store_path = tmp_path / "other.jsonl"
  store_path.write_text("")
  with pytest.raises(datasets.errors.UserError, match="holds no completions"):
    datasets.build_annotated(
      "svamp", "mine", data_dir=str(tmp_path / "tfds"), store=str(store_path)
    )
  # Another card's completions: not one id of SVAMP's rows.
  with store_lib.AnnotationStore(store_path) as store:
    store.append(
      store_lib.CompletionRecord(
        id="train-0123456789abcdef",
        prompt_hash="h",
        teacher="t",
        sample=0,
        completion="The answer is 3.",
        split="train",
      )
    )
  with pytest.raises(datasets.errors.UserError, match="answers none of card"):
    datasets.build_annotated(
      "svamp", "mine", data_dir=str(tmp_path / "tfds"), store=str(store_path)
    )
  # Nothing is left that a later build would take as done.
  assert not list((tmp_path / "tfds").glob("dss_annotated/svamp_mine/*"))
