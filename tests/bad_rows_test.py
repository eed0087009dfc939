"""Bad source rows end in one line naming file:line, never a traceback.

Covers the readers (`dss_jax.teacher.sources`): undecodable, torn and
non-object lines, missing id or input fields, rows with no input, labels
that are objects or lists, duplicate ids, labels outside the card's label
space, empty files, and released files whose counts differ;
ids derived from content for cards without `id_field`; and the dataset
command (`python -m dss_jax.datasets`) on a broken copy of the paper's files.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import user_cards

from dss_jax import cards, errors
from dss_jax.distill import config as job_config
from dss_jax.distill import stages
from dss_jax.teacher import sources

_NLI_CARD = """\
name: mynli
source:
  files: {train: train.jsonl, test: test.jsonl}
  id_field: uid
  label_field: label
  label_names: [entailment, neutral, contradiction]
  input_fields: [premise, hypothesis]
input_template: "Premise: {premise}\\nHypothesis: {hypothesis}"
answer_type: nli
labels: [entailment, neutral, contradiction]
prompt:
  exemplar_template: "{input}\\nAnswer: {label}"
  query_template: "{input}\\nAnswer:"
parser:
  answer_marker: "Answer:"
exemplars:
  - fields: {premise: "A dog runs.", hypothesis: "An animal moves."}
    rationale: "A dog is an animal."
    label: entailment
"""


def _nli_card(tmp_path, train_lines: list[bytes]) -> cards.TaskCard:
  (tmp_path / "card.yaml").write_text(_NLI_CARD)
  (tmp_path / "train.jsonl").write_bytes(b"".join(train_lines))
  (tmp_path / "test.jsonl").write_text(
    json.dumps({"uid": "t", "premise": "p", "hypothesis": "h", "label": 0})
    + "\n"
  )
  return cards.load_card(str(tmp_path / "card.yaml"))


def _row(uid, label=0, **extra) -> bytes:
  row = {"uid": uid, "premise": f"p{uid}", "hypothesis": "h", "label": label}
  row.update(extra)
  return (json.dumps(row) + "\n").encode()


def test_unreadable_lines_are_named_with_file_and_line(tmp_path):
  card = _nli_card(
    tmp_path,
    [
      _row("a"),
      b'{"uid": "b", "premise": "caf\xe9"}\n',  # Latin-1, not UTF-8
      b"[1, 2]\n",
      _row("c"),
      b'{"uid": "d", "premise": "p", "hyp',  # torn last line
    ],
  )
  with pytest.raises(sources.DataError) as error:
    sources.read_source(card, "train")
  message = str(error.value)
  path = tmp_path / "train.jsonl"
  assert message.startswith(f"3 bad rows in {path} (5 read): ")
  assert f"{path}:2: not UTF-8" in message
  assert f"{path}:3: a JSON list, not an object" in message
  assert f"{path}:5: truncated JSON" in message
  assert "\n" not in message


def test_fields_ids_and_labels_are_checked_at_load(tmp_path):
  card = _nli_card(
    tmp_path,
    [
      _row("a"),
      _row("a"),  # duplicate id
      b'{"premise": "p", "hypothesis": "h", "label": 0}\n',  # no id
      _row("b", label=7),  # index out of range
      _row("c", label="maybe"),  # not a label of the card
      _row("d", label=True),
      b'{"uid": "e", "premise": "p", "label": 1}\n',  # no hypothesis
    ],
  )
  with pytest.raises(sources.DataError) as error:
    sources.read_source(card, "train")
  message = str(error.value)
  path = tmp_path / "train.jsonl"
  assert message.startswith(f"6 bad rows in {path} (7 read): ")
  assert f"{path}:2: duplicate id 'a' (first at line 1)" in message
  assert f"{path}:3: no field 'uid'" in message
  assert f"{path}:4: label index 7 out of range" in message
  assert (
    f"{path}:5: label 'maybe' is not one of the card's labels "
    "(entailment, neutral, contradiction)"
  ) in message
  assert f"{path}:6: label True is a boolean" in message
  assert "and 1 more" in message  # the first five, then a count


def test_integer_labels_need_label_names(tmp_path):
  card = _nli_card(tmp_path, [_row("a", label=1)])
  assert sources.read_source(card, "train")[0].gold_label == "neutral"
  text = (tmp_path / "card.yaml").read_text()
  (tmp_path / "card.yaml").write_text(
    text.replace("  label_names: [entailment, neutral, contradiction]\n", "")
  )
  card = cards.load_card(str(tmp_path / "card.yaml"))
  with pytest.raises(sources.DataError, match="no source.label_names"):
    sources.read_source(card, "train")


def test_rows_without_input_or_with_a_structured_label_are_refused(tmp_path):
  card = _nli_card(
    tmp_path,
    [
      _row("a"),
      _row("b", premise="  ", hypothesis=""),  # no input at all
      _row("c", premise=None, hypothesis=None),
      _row("d", label={"name": "entailment"}),
      _row("e", label=[0]),
      _row("f", premise=""),  # one empty field of two: still an input
    ],
  )
  with pytest.raises(sources.DataError) as error:
    sources.read_source(card, "train")
  message = str(error.value)
  path = tmp_path / "train.jsonl"
  assert message.startswith(f"4 bad rows in {path} (6 read): ")
  assert f"{path}:2: no input: premise, hypothesis empty" in message
  assert f"{path}:3: no input: premise, hypothesis empty" in message
  assert f"{path}:4: label {{'name': 'entailment'}} is a dict" in message
  assert f"{path}:5: label [0] is a list, not a label" in message


def test_an_empty_split_file_is_an_error(tmp_path):
  card = _nli_card(tmp_path, [b"\n"])
  with pytest.raises(sources.DataError, match=r"train.jsonl: no rows"):
    sources.read_source(card, "train")


def test_ids_without_an_id_field_follow_content_not_position(tmp_path):
  card = cards.load_card(user_cards.files_card(tmp_path, train=41, test=4))
  before = {e.fields["input"]: e.id for e in sources.read_source(card, "train")}
  path = tmp_path / "train.jsonl"
  lines = path.read_text().splitlines(keepends=True)
  inserted = json.dumps(
    {"input": "Eve has 2 cups. She buys 3 more.", "label": 5}
  )
  # One row inserted at the top, and a row repeated at the end.
  path.write_text(inserted + "\n" + "".join(lines) + lines[0])
  after = sources.read_source(card, "train")
  assert len(after) == 43
  moved = [e for e in after[1:42] if before[e.fields["input"]] != e.id]
  assert moved == []
  assert after[-1].id == after[1].id + "-2"  # same inputs, told apart
  assert len({e.id for e in after}) == 43


def _paper_copy(paper_data_dir, tmp_path) -> pathlib.Path:
  root = tmp_path / "paper"
  shutil.copytree(paper_data_dir / "svamp", root / "svamp")
  return root


def test_released_files_whose_counts_differ_are_refused(
  paper_data_dir, tmp_path
):
  root = _paper_copy(paper_data_dir, tmp_path)
  test_file = root / "svamp" / "svamp_test.json"
  lines = test_file.read_text().splitlines(keepends=True)
  test_file.write_text("".join(lines[:-1]))
  card = cards.load_card("svamp")
  with pytest.raises(sources.DataError) as error:
    sources.read_replay(card, "test", root)
  assert f"{test_file} has {len(lines) - 1} examples but " in str(error.value)
  assert f"llm/test_CoT_*.json hold {len(lines)} completions" in str(
    error.value
  )


def test_the_dataset_command_names_a_bad_line(paper_data_dir, tmp_path):
  root = _paper_copy(paper_data_dir, tmp_path)
  test_file = root / "svamp" / "svamp_test.json"
  lines = test_file.read_text().splitlines(keepends=True)
  lines[6] = lines[6][:20] + "\n"
  test_file.write_text("".join(lines))
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "dss_jax.datasets",
      "--card=svamp",
      "--source=palm",
      f"--data_dir={tmp_path / 'tfds'}",
    ],
    capture_output=True,
    text=True,
    timeout=300,
    env={
      **os.environ,
      "JAX_PLATFORMS": "cpu",
      sources.PAPER_DATA_ENV: str(root),
    },
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
  assert len(errors) == 1, proc.stderr[-2000:]
  assert f"{test_file}:7: not JSON" in errors[0]
  assert "Traceback" not in proc.stderr


def test_a_test_split_without_labels_stops_the_job(tmp_path):
  card = user_cards.files_card(tmp_path / "card", train=8, test=4)
  test_file = tmp_path / "card" / "test.jsonl"
  rows = [json.loads(line) for line in test_file.read_text().splitlines()]
  test_file.write_text(
    "".join(json.dumps({"input": r["input"]}) + "\n" for r in rows)
  )
  config = job_config.DistillConfig(
    card=card,
    backend="offline",
    out_dir=str(tmp_path / "out"),
    progress=False,
    compilation_cache=False,
  )
  job = stages.DataStages(config, log=lambda line: None)
  job.annotate()
  with pytest.raises(errors.UserError) as error:
    job.build_dataset()
  assert str(error.value) == (
    f"the test split of {card} has no gold labels (0 of 4 rows have field "
    "'label'); the job scores its students on them: give a labeled test split"
  )
