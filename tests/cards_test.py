"""Tests for task cards: schema validation, input formats, prompts."""

import os

import pytest
import yaml

from dss_jax import cards


def _cqa_dict():
  return yaml.safe_load((cards.TASKS_DIR / "cqa.yaml").read_text())


def test_builtin_cards_load():
  names = cards.list_cards()
  for name in ("cqa", "svamp", "anli1", "esnli"):
    assert name in names
    card = cards.load_card(name)
    assert card.name == name
    assert len(card.exemplars) >= 8


def test_cqa_input_matches_official_format():
  card = cards.load_card("cqa")
  text = card.format_input(
    {"question": "Where?", "choices": ["a1", "b1", "c1", "d1", "e1"]}
  )
  assert text == (
    "Where?\nAnswer Choices:\n(a) a1\n(b) b1\n(c) c1\n(d) d1\n(e) e1"
  )


def test_prompt_has_exemplars_and_ends_with_query():
  card = cards.load_card("cqa")
  prompt = card.build_prompt(
    {"question": "Where?", "choices": ["a1", "b1", "c1", "d1", "e1"]}
  )
  assert prompt.count("So the answer is (") == len(card.exemplars)
  assert "So the answer is (b) refrigerator." in prompt
  assert prompt.endswith("(e) e1\nA:")
  # Every exemplar parses back to its own label with the card's parser.
  for exemplar in card.exemplars:
    rendered = card.format_exemplar(exemplar)
    answer = rendered.split("\nA: ", 1)[1]
    assert card.parse_completion(answer).label == exemplar.label


@pytest.mark.parametrize("name", ["svamp", "anli1", "esnli"])
def test_exemplars_parse_back(name):
  card = cards.load_card(name)
  query_tail = card.prompt.query_template.rsplit("{input}", 1)[1]
  for exemplar in card.exemplars:
    rendered = card.format_exemplar(exemplar)
    completion = rendered.split(query_tail, 1)[1]
    parsed = card.parse_completion(completion)
    assert card.is_correct(parsed.label, exemplar.label), rendered


def test_missing_field_names_file_and_field(tmp_path):
  data = _cqa_dict()
  del data["parser"]["answer_marker"]
  path = tmp_path / "broken.yaml"
  path.write_text(yaml.safe_dump(data))
  with pytest.raises(cards.CardError) as e:
    cards.load_card(str(path))
  assert str(path) in str(e.value)
  assert "parser" in str(e.value)
  assert "answer_marker" in str(e.value)


def test_typo_is_rejected(tmp_path):
  data = _cqa_dict()
  data["input_templat"] = data.pop("input_template")
  path = tmp_path / "typo.yaml"
  path.write_text(yaml.safe_dump(data))
  with pytest.raises(cards.CardError, match=r"typo\.yaml: .*input_templat"):
    cards.load_card(str(path))


def test_exemplar_label_outside_choices_is_rejected(tmp_path):
  data = _cqa_dict()
  data["exemplars"][2]["label"] = "a pigeon"
  path = tmp_path / "bad_label.yaml"
  path.write_text(yaml.safe_dump(data))
  with pytest.raises(cards.CardError, match=r"exemplars\[2\]\.label"):
    cards.load_card(str(path))


def test_invalid_yaml_and_missing_card(tmp_path):
  path = tmp_path / "x.yaml"
  path.write_text("name: [unclosed")
  with pytest.raises(cards.CardError, match="invalid YAML"):
    cards.load_card(str(path))
  with pytest.raises(cards.CardError, match="no such task card"):
    cards.load_card("no_such_card")


def test_parser_hook(tmp_path, monkeypatch):
  (tmp_path / "my_parser.py").write_text(
    "def parse(text):\n  r, _, l = text.partition('=>')\n  return r, l\n"
  )
  monkeypatch.syspath_prepend(str(tmp_path))
  data = _cqa_dict()
  data["parser"] = {"hook": "my_parser:parse"}
  card = cards.card_from_dict(data, origin="hooked.yaml")
  parsed = card.parse_completion("because reasons => zoo ")
  assert parsed == cards.ParsedAnswer("because reasons", "zoo")
  assert card.parse_completion("no arrow").label is None


def _anli_dict():
  return yaml.safe_load((cards.TASKS_DIR / "anli1.yaml").read_text())


@pytest.mark.parametrize("name", ["anli1", "esnli"])
def test_nli_student_reads_premise_eos_hypothesis(name):
  card = cards.load_card(name)
  fields = {"premise": "A dog runs.", "hypothesis": "An animal moves."}
  # The official code's `tokenizer.eos_token.join([premise, hypothesis])`.
  assert card.format_student_input(fields) == "A dog runs.</s>An animal moves."
  # The teacher still reads the plain-text template.
  assert card.format_input(fields) == (
    "Premise: A dog runs.\nHypothesis: An animal moves."
  )
  assert card.build_prompt(fields).endswith(
    "Premise: A dog runs.\nHypothesis: An animal moves.\n"
    + card.prompt.query_template.split("\n")[-1]
  )


def test_student_input_template_option_is_the_readable_input():
  data = _anli_dict()
  data["student_input"] = {"join": "template"}
  card = cards.card_from_dict(data, "readable.yaml")
  fields = {"premise": "A dog runs.", "hypothesis": "An animal moves."}
  assert card.format_student_input(fields) == (
    "Premise: A dog runs.\nHypothesis: An animal moves."
  )
  # Cards without the field (cqa) default to the template as well.
  assert cards.load_card("cqa").student_input.join == "template"


@pytest.mark.parametrize(
  "student_input, message",
  [
    (
      {"join": "eos", "fields": ["premise", "claim"]},
      r"bad\.yaml: .*student_input\.fields: \['claim'\] not in "
      r"source\.input_fields",
    ),
    (
      {"join": "eos", "fields": ["premise"]},
      r"bad\.yaml: student_input: join 'eos' needs at least two fields",
    ),
    (
      {"join": "template", "fields": ["premise", "hypothesis"]},
      r"bad\.yaml: student_input: join 'template' takes no fields",
    ),
    (
      {"join": "tab", "fields": ["premise", "hypothesis"]},
      r"bad\.yaml: student_input\.join: Input should be 'template' or 'eos'",
    ),
    (
      {"join": "eos", "field": ["premise", "hypothesis"]},
      r"bad\.yaml: student_input\.field: Extra inputs",
    ),
  ],
)
def test_student_input_errors_name_file_and_field(student_input, message):
  data = _anli_dict()
  data["student_input"] = student_input
  with pytest.raises(cards.CardError, match=message):
    cards.card_from_dict(data, "bad.yaml")


def _edited_card(tmp_path, base, old, new, name="edited"):
  """A shipped card's text with one edit, written to tmp_path."""
  text = (cards.TASKS_DIR / f"{base}.yaml").read_text()
  assert old in text, (base, old)
  path = tmp_path / f"{name}.yaml"
  path.write_text(text.replace(old, new, 1))
  return path, text.replace(old, new, 1).splitlines()


@pytest.mark.parametrize(
  "base, old, new, where, field",
  [
    ("cqa", "(e) {choices[4]}", "(e) {choice[4]}", "input_template", "choice"),
    (
      "cqa",
      'query_template: "Q: {input}',
      'query_template: "Q: {inptu}',
      "prompt.query_template",
      "inptu",
    ),
    ("cqa", "({letter})", "({lettr})", "prompt.exemplar_template", "lettr"),
    (
      "esnli",
      "Premise: {premise}",
      "Premise: {premis}",
      "input_template",
      "premis",
    ),
    (
      "svamp",
      'exemplar_template: "Q: {input}',
      'exemplar_template: "Q: {question}',
      "prompt.exemplar_template",
      "question",
    ),
  ],
)
def test_template_field_unknown_to_the_card_fails_at_load(
  tmp_path, base, old, new, where, field
):
  path, lines = _edited_card(tmp_path, base, old, new)
  with pytest.raises(cards.CardError) as e:
    cards.load_card(str(path))
  message = str(e.value)
  assert "\n" not in message
  assert message.startswith(f"{path}: line ")
  assert f"{where}: unknown field {{{field}}}" in message
  # The line number points at the template's key in the file.
  number = int(message.split(": line ")[1].split(":")[0])
  key = where.split(".")[-1]
  assert lines[number - 1].lstrip().startswith(f"{key}:"), lines[number - 1]


def test_letter_is_a_field_of_choice_cards_only(tmp_path):
  path, _ = _edited_card(
    tmp_path, "svamp", "The answer is {label}.", "The answer is ({letter})."
  )
  with pytest.raises(cards.CardError, match=r"unknown field \{letter\}"):
    cards.load_card(str(path))


def test_positional_template_field_and_unclosed_brace(tmp_path):
  path, _ = _edited_card(tmp_path, "cqa", "({letter})", "({})", name="pos")
  with pytest.raises(cards.CardError, match="unknown field a positional"):
    cards.load_card(str(path))
  path, _ = _edited_card(
    tmp_path, "cqa", 'query_template: "Q: {input}', 'query_template: "Q: {in'
  )
  with pytest.raises(cards.CardError, match="bad template"):
    cards.load_card(str(path))


def test_parser_hook_that_does_not_import_fails_at_load(tmp_path):
  path, lines = _edited_card(
    tmp_path,
    "svamp",
    'answer_marker: "The answer is"',
    'hook: "no_such_module:parse"',
  )
  with pytest.raises(cards.CardError) as e:
    cards.load_card(str(path))
  assert "parser.hook: cannot import 'no_such_module:parse'" in str(e.value)
  number = int(str(e.value).split(": line ")[1].split(":")[0])
  assert "hook:" in lines[number - 1]


def test_yaml_errors_and_schema_errors_name_the_line(tmp_path):
  path, _ = _edited_card(tmp_path, "cqa", "name: cqa", "name: [cqa")
  with pytest.raises(cards.CardError, match=r"line \d+: invalid YAML"):
    cards.load_card(str(path))
  path, lines = _edited_card(tmp_path, "cqa", "answer_type:", "answer_typ:")
  with pytest.raises(cards.CardError) as e:
    cards.load_card(str(path))
  assert "answer_typ: Extra inputs are not permitted" in str(e.value)


def test_duplicate_keys_are_errors_with_their_line(tmp_path):
  path, lines = _edited_card(
    tmp_path, "cqa", "metric: accuracy", "metric: accuracy\nmetric: accuracy"
  )
  with pytest.raises(cards.CardError) as e:
    cards.load_card(str(path))
  first = lines.index("metric: accuracy") + 1
  second = [i for i, ln in enumerate(lines, 1) if ln == "metric: accuracy"][1]
  assert str(e.value) == (
    f"{path}: line {second}: invalid YAML: duplicate key 'metric' (first at "
    f"line {first}); keep one"
  )
  # Also inside a flow mapping on one line.
  path, _ = _edited_card(
    tmp_path, "cqa", "metric: accuracy", "metric: {a: 1, a: 2}", name="flow"
  )
  with pytest.raises(cards.CardError, match="duplicate key 'a'"):
    cards.load_card(str(path))


def test_cards_of_dss_task_cards_load_by_name(tmp_path, monkeypatch):
  path, _ = _edited_card(tmp_path, "svamp", "name: svamp", "name: my_svamp")
  other = tmp_path / "other"
  other.mkdir()
  monkeypatch.setenv(cards.TASK_CARDS_ENV, f"{other}:{tmp_path}")
  card = cards.load_card("my_svamp")
  assert (card.name, card.path) == ("my_svamp", str(path))
  with pytest.raises(cards.CardError) as e:
    cards.load_card("no_such_card")
  assert "cards in DSS_TASK_CARDS: my_svamp" in str(e.value)


def test_add_task_cards_extends_the_variable_with_absolute_paths(
  tmp_path, monkeypatch
):
  path, _ = _edited_card(tmp_path, "svamp", "name: svamp", "name: my_svamp")
  monkeypatch.setenv(cards.TASK_CARDS_ENV, "")
  monkeypatch.chdir(tmp_path)
  added = cards.add_task_cards([path.name])
  assert [c.name for c in added] == ["my_svamp"]
  assert os.environ[cards.TASK_CARDS_ENV] == str(path)
  with pytest.raises(cards.CardError) as e:
    cards.add_task_cards(["nowhere/"], "--task_cards")
  assert str(e.value).startswith(
    "--task_cards: nowhere/: no such card file or folder"
  )
