"""Task cards: one YAML file per dataset, validated by a typed schema.

A card says where a dataset comes from, how its inputs are written (the paper's
formats), what the teacher is shown (few-shot chain-of-thought exemplars), how a
teacher completion is parsed and how answers are scored. Adding a dataset means
adding a card under `tasks/`; Python is needed only for a custom reader or
parser, named by a dotted-path hook.

    from dss_jax import cards
    card = cards.load_card("cqa")          # tasks/cqa.yaml
    card.format_input(fields)      # "question\\nAnswer Choices:\\n(a) ..."
    card.format_student_input(fields)  # what the student reads (see below)
    card.parse_completion(text)            # ParsedAnswer(rationale, label)

The teacher always reads `input_template`. The student reads it too unless
the card sets `student_input: {join: eos, fields: [...]}`: then its input is
those fields joined by `EOS_SEPARATOR` ("</s>"), which tokenizing turns into
the EOS id, as the official code feeds NLI pairs to T5 (see
`dss_jax.preprocessors.encode_at_eos`). `student_input: {join: template}`
(the default) keeps the readable template.

Errors name the file and the field, e.g.
`tasks/cqa.yaml: parser.answer_marker: Field required`.

Cards of your own live anywhere: `DSS_TASK_CARDS` lists card files or folders
of `*.yaml` cards, separated by ":" (`user_card_paths`). `load_card(name)`
finds them by their `name:` as it finds the built-in ones. A card may not
take the name of a built-in card or of another card in `DSS_TASK_CARDS`, and
a key written twice in a card is an error: the one that would silently win
is never chosen.
"""

import json
import os
import pathlib
import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import pydantic
import yaml

from dss_jax import answers, errors, resources

ParsedAnswer = answers.ParsedAnswer

# Hugging Face's T5 tokenizers read this literal as the EOS token wherever it
# appears; the official code joins NLI premise and hypothesis with it.
EOS_SEPARATOR = "</s>"
# What the student's two tasks prepend to its input, as in the official code:
# `predict: <input>` -> label, `explain: <input>` -> rationale. Standard
# finetuning and distillation read the input with no prefix.
LABEL_PREFIX = "predict: "
RATIONALE_PREFIX = "explain: "

# The built-in cards: `tasks/` of a checkout, or the copy a wheel ships.
TASKS_DIR = resources.tasks_dir()
# Card files or folders of cards of the user's own, ":"-separated.
TASK_CARDS_ENV = "DSS_TASK_CARDS"
CARD_SUFFIXES = (".yaml", ".yml")


class CardError(errors.UserError):
  """A task card is missing, malformed or inconsistent."""


class _Strict(pydantic.BaseModel):
  # A typo in a hand-written card must fail loudly, not be ignored.
  model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class SourceSpec(_Strict):
  """Where a dataset's examples come from.

  Attributes:
    paper_folder: folder in the released `datasets.zip` layout
      (`<folder>/<folder>_<split>.json`, `<folder>/llm/<split>_CoT_<i>.json`).
      `<folder>_sample` is accepted as well (the shared test sample).
    splits: TFDS split name -> split name in the files (e.g. validation: valid).
    files: TFDS split name -> a JSON-lines file, for datasets outside the
      paper's layout (relative paths are relative to the card).
    reader: a hook "package.module:function(split) -> iterable of dicts" used
      instead of files.
    id_field: the field that holds a stable example id; without one the id is
      derived from the input fields ("<split>-<hash>"), so it does not move
      when rows are inserted (the paper's released files, whose teacher
      outputs align by line, keep "<split>-<index>").
    label_field: the field with the gold label ('' / absent when unlabeled).
    label_names: maps integer gold labels to names (NLI: 0 -> entailment).
    input_fields: the fields the input template and prompts use.
  """

  paper_folder: str | None = None
  splits: dict[str, str] = {"train": "train", "test": "test"}
  files: dict[str, str] = {}
  reader: str | None = None
  id_field: str | None = None
  label_field: str | None = "label"
  label_names: list[str] | None = None
  input_fields: list[str]

  @pydantic.model_validator(mode="after")
  def _one_kind(self) -> "SourceSpec":
    kinds = [bool(self.paper_folder), bool(self.files), bool(self.reader)]
    if sum(kinds) != 1:
      raise ValueError(
        f"give exactly one of paper_folder, files, reader (got {sum(kinds)})"
      )
    return self


class ParserSpec(_Strict):
  """How a teacher completion becomes (rationale, label); see answers.py."""

  answer_marker: str | None = None
  cut_at: list[str] = []
  label_regex: str | None = None
  label_group: int = 0
  strip_suffix: str = "."
  hook: str | None = None

  @pydantic.model_validator(mode="after")
  def _marker_or_hook(self) -> "ParserSpec":
    if (self.answer_marker is None) == (self.hook is None):
      raise ValueError("give exactly one of answer_marker, hook")
    if self.label_regex is not None:
      try:
        groups = re.compile(self.label_regex).groups
      except re.error as e:
        raise ValueError(f"label_regex does not compile: {e}") from e
      if self.label_group > groups:
        raise ValueError(
          f"label_group {self.label_group} but the regex has {groups} groups"
        )
    return self


class Exemplar(_Strict):
  """One few-shot chain-of-thought demonstration.

  Attributes:
    fields: the raw input fields, as a dataset row would have them.
    rationale: the reasoning, written in the style the parser expects.
    label: the answer (for choice cards, one of the choices).
  """

  fields: dict[str, Any]
  rationale: str
  label: str


class PromptSpec(_Strict):
  """How exemplars and the query are laid out for the teacher.

  Templates are `str.format` strings. They see the raw fields, `{input}` (the
  card-formatted input), and in exemplars `{rationale}`, `{label}` and, for
  choice cards, `{letter}` (a, b, ...).
  """

  instruction: str = ""
  exemplar_template: str
  query_template: str
  separator: str = "\n\n"
  stop: list[str] = []


class StudentInputSpec(_Strict):
  """How the student's input text is written.

  Attributes:
    join: "template" writes `input_template` (what the teacher reads); "eos"
      joins `fields` with `EOS_SEPARATOR`, which becomes the EOS id when
      tokenized (the official code's NLI inputs: premise, EOS, hypothesis).
    fields: with join "eos", the input fields in order (at least two).
  """

  join: Literal["template", "eos"] = "template"
  fields: list[str] = []

  @pydantic.model_validator(mode="after")
  def _fields_match_join(self) -> "StudentInputSpec":
    if self.join == "eos" and len(self.fields) < 2:
      raise ValueError("join 'eos' needs at least two fields")
    if self.join == "template" and self.fields:
      raise ValueError(
        "join 'template' takes no fields (the template names them)"
      )
    return self


class TaskCard(_Strict):
  """A validated task card. Field meanings are in the module docstring."""

  name: str = pydantic.Field(pattern=r"^[a-z][a-z0-9_]*$")
  description: str = ""
  source: SourceSpec
  input_template: str
  student_input: StudentInputSpec = StudentInputSpec()
  answer_type: Literal["choice", "nli", "equation", "free"]
  labels: list[str] | None = None
  choices_field: str | None = None
  exemplars: list[Exemplar] = pydantic.Field(min_length=1)
  prompt: PromptSpec
  parser: ParserSpec
  metric: Literal["accuracy", "equation_accuracy"] = "accuracy"
  path: str | None = pydantic.Field(default=None, exclude=True)

  @pydantic.model_validator(mode="after")
  def _consistent(self) -> "TaskCard":
    if self.answer_type == "nli" and not self.labels:
      raise ValueError("answer_type 'nli' needs labels")
    if self.answer_type == "choice" and not self.choices_field:
      raise ValueError("answer_type 'choice' needs choices_field")
    if self.answer_type == "equation" and self.metric != "equation_accuracy":
      raise ValueError(
        "answer_type 'equation' needs metric 'equation_accuracy'"
      )
    unknown = [
      f for f in self.student_input.fields if f not in self.source.input_fields
    ]
    if unknown:
      # Raised from the nested model it would lack the card's input fields.
      raise ValueError(
        f"student_input.fields: {unknown} not in source.input_fields "
        f"{self.source.input_fields}"
      )
    for template in (
      self.input_template,
      self.prompt.exemplar_template,
      self.prompt.query_template,
    ):
      _check_template(template)
    for i, exemplar in enumerate(self.exemplars):
      missing = set(self.source.input_fields) - set(exemplar.fields)
      if missing:
        raise ValueError(f"exemplars[{i}].fields lacks {sorted(missing)}")
      if self.labels and exemplar.label not in self.labels:
        raise ValueError(
          f"exemplars[{i}].label {exemplar.label!r} not in labels"
        )
      if self.answer_type == "choice":
        choices = exemplar.fields.get(self.choices_field) or []
        if exemplar.label not in choices:
          raise ValueError(
            f"exemplars[{i}].label {exemplar.label!r} not in its "
            f"{self.choices_field}"
          )
    return self

  # ---------------------------------------------------------------- inputs
  def format_input(self, fields: Mapping[str, Any]) -> str:
    """Writes an example's input in the paper's format.

    Args:
      fields: the raw input fields (e.g. question, choices).

    Returns:
      The input text (no "predict: " prefix).
    """
    return self.input_template.format(**fields)

  def format_student_input(self, fields: Mapping[str, Any]) -> str:
    """Writes an example's input as the student reads it (`student_input`).

    Args:
      fields: the raw input fields.

    Returns:
      The template text, or the fields joined by `EOS_SEPARATOR` (no
      "predict: " prefix).
    """
    if self.student_input.join == "template":
      return self.format_input(fields)
    return EOS_SEPARATOR.join(
      str(fields[name]) for name in self.student_input.fields
    )

  def gold_label(self, row: Mapping[str, Any]) -> str:
    """The gold label of a dataset row as text ('' when it has none)."""
    field = self.source.label_field
    value = row.get(field) if field else None
    if value is None:
      return ""
    if self.source.label_names is not None and isinstance(value, int):
      return self.source.label_names[value]
    return str(value)

  # ---------------------------------------------------------------- prompts
  def _template_values(self, fields: Mapping[str, Any]) -> dict[str, Any]:
    return {**fields, "input": self.format_input(fields)}

  def format_exemplar(self, exemplar: Exemplar) -> str:
    """One demonstration as the teacher sees it."""
    values = self._template_values(exemplar.fields)
    values.update(rationale=exemplar.rationale, label=exemplar.label)
    if self.answer_type == "choice":
      index = list(exemplar.fields[self.choices_field]).index(exemplar.label)
      values["letter"] = string.ascii_lowercase[index]
    return self.prompt.exemplar_template.format(**values)

  def build_prompt(self, fields: Mapping[str, Any]) -> str:
    """The few-shot prompt for one example.

    Args:
      fields: the example's raw input fields.

    Returns:
      Instruction, exemplars and the query, joined by the card's separator.
    """
    parts = [self.prompt.instruction] if self.prompt.instruction else []
    parts += [self.format_exemplar(e) for e in self.exemplars]
    parts.append(
      self.prompt.query_template.format(**self._template_values(fields))
    )
    return self.prompt.separator.join(parts)

  # ---------------------------------------------------------------- answers
  def parse_completion(self, text: str) -> ParsedAnswer:
    """Parses a teacher completion with the card's rules.

    Args:
      text: the raw completion.

    Returns:
      ParsedAnswer(rationale, label); label is None when unparsable.
    """
    spec = self.parser
    if spec.hook is not None:
      return answers.parse_with_hook(text, spec.hook)
    return answers.parse_with_rules(
      text,
      answer_marker=spec.answer_marker,
      cut_at=spec.cut_at,
      label_regex=spec.label_regex,
      label_group=spec.label_group,
      strip_suffix=spec.strip_suffix,
      labels=self.labels if self.answer_type == "nli" else None,
    )

  def is_correct(self, predicted: str | None, gold: str) -> bool:
    """Scores one answer with the card's metric (exact match or by value)."""
    if predicted is None or not gold:
      return False
    if self.metric == "equation_accuracy":
      return answers.equations_equal(predicted, gold)
    return predicted == gold

  def label_key(self, label: str) -> str:
    """A key under which equal answers vote together (self-consistency).

    Equations vote by value, so "(10 * 45)" and "(45 * 10)" agree.
    """
    if self.metric == "equation_accuracy":
      value = answers.evaluate_equation(label)
      if value is not None:
        return repr(round(value, 9))
    return label


def _check_template(template: str) -> None:
  try:
    list(string.Formatter().parse(template))
  except ValueError as e:
    raise ValueError(f"bad template {template!r}: {e}") from e


# Where a template is read from, and the names it may use besides the
# source's input fields (see `PromptSpec`).
_TEMPLATES: dict[str, tuple[str, ...]] = {
  "input_template": (),
  "prompt.query_template": ("input",),
  "prompt.exemplar_template": ("input", "rationale", "label"),
}

LineOf = Callable[[tuple[str | int, ...]], int | None]


def _template_names(template: str) -> list[str]:
  """The field names a `str.format` template uses ('' for `{}` or `{0}`)."""
  names = []
  for _, field, _, _ in string.Formatter().parse(template):
    if field is None:
      continue
    # "choices[0]" and "a.b" read the field "choices" and "a".
    name = re.split(r"[.\[]", field, maxsplit=1)[0]
    names.append("" if name.isdigit() else name)
  return names


def _template_problem(card: TaskCard) -> tuple[tuple[str, ...], str] | None:
  """The first template that names a field it will not get, if any.

  Returns:
    (the template's location in the card, the message), or None.
  """
  for where, extra in _TEMPLATES.items():
    template = card
    for part in where.split("."):
      template = getattr(template, part)
    known = list(card.source.input_fields) + list(extra)
    if where == "prompt.exemplar_template":
      # Exemplars may carry fields of their own beyond the input fields.
      shared = set.intersection(*(set(e.fields) for e in card.exemplars))
      known += sorted(shared - set(known))
      if card.answer_type == "choice":
        known.append("letter")
    for name in _template_names(template):
      if name not in known:
        shown = "{" + name + "}" if name else "a positional {}"
        allowed = ", ".join("{" + k + "}" for k in known)
        return (
          tuple(where.split(".")),
          f"unknown field {shown}; this template can use {allowed} "
          "(source.input_fields and the names it is given)",
        )
  return None


def _where(
  origin: str, loc: tuple[str | int, ...], line_of: LineOf | None
) -> str:
  """`origin: line N: a.b[2].c` (the line where the YAML says it)."""
  line = line_of(loc) if line_of else None
  at = f"line {line}: " if line else ""
  parts = [f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc]
  field = "".join(parts).lstrip(".") or "(card)"
  return f"{origin}: {at}{field}"


def _describe(
  error: pydantic.ValidationError, origin: str, line_of: LineOf | None
) -> str:
  lines = []
  items = error.errors()
  if line_of is not None:
    # The first error is the one whose line is named: one the YAML says
    # where (an unknown key), before one it cannot (a missing key).
    items.sort(key=lambda item: line_of(tuple(item["loc"])) is None)
  for i, item in enumerate(items):
    message = item["msg"].removeprefix("Value error, ")
    loc = tuple(item["loc"])
    if i == 0:
      lines.append(f"{_where(origin, loc, line_of)}: {message}")
    else:
      lines.append(f"{_where('', loc, None).lstrip(': ')}: {message}")
  return "; ".join(lines)


def card_from_dict(
  data: object, origin: str = "<dict>", line_of: LineOf | None = None
) -> TaskCard:
  """Validates a card given as a dict.

  Args:
    data: the parsed YAML.
    origin: the file name used in error messages.
    line_of: the YAML line of a field location, for error messages.

  Returns:
    The card.

  Raises:
    CardError: naming `origin` and the failing field (and its line); also
      when a template names a field it will not be given, or a parser hook
      does not import.
  """
  if not isinstance(data, dict):
    raise CardError(
      f"{origin}: a card must be a mapping, got {type(data).__name__}"
    )
  try:
    card = TaskCard.model_validate({**data, "path": origin})
  except pydantic.ValidationError as e:
    raise CardError(_describe(e, origin, line_of)) from None
  problem = _template_problem(card)
  if problem is not None:
    loc, message = problem
    raise CardError(f"{_where(origin, loc, line_of)}: {message}")
  if card.parser.hook is not None:
    try:
      answers.load_hook(card.parser.hook)
    except errors.UserError as e:
      where = _where(origin, ("parser", "hook"), line_of)
      raise CardError(f"{where}: {e}") from None
  return card


def _yaml_line_of(text: str) -> LineOf:
  """Maps a field location to the 1-based line of its key in `text`."""

  def line_of(loc: tuple[str | int, ...]) -> int | None:
    try:
      node = yaml.compose(text)
    except yaml.YAMLError:
      return None
    line = None
    for part in loc:
      if isinstance(node, yaml.MappingNode):
        match = [(k, v) for k, v in node.value if k.value == part]
        if not match:
          break
        line = match[0][0].start_mark.line + 1
        node = match[0][1]
      elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
        if part >= len(node.value):
          break
        node = node.value[part]
        line = node.start_mark.line + 1
      else:
        break
    return line

  return line_of


class _UniqueKeyLoader(yaml.SafeLoader):
  """PyYAML's safe loader, except that a key given twice is an error.

  PyYAML keeps the last of two equal keys without a word, so a card edited
  by appending a field would silently drop the first one.
  """

  def construct_mapping(self, node, deep=False):
    if isinstance(node, yaml.MappingNode):
      seen: dict[Any, int] = {}
      for key_node, _ in node.value:
        key = self.construct_object(key_node, deep=True)
        try:
          first = seen.get(key)
        except TypeError:  # an unhashable key; PyYAML reports it itself
          continue
        if first is not None:
          raise yaml.constructor.ConstructorError(
            None,
            None,
            f"duplicate key {key!r} (first at line {first}); keep one",
            key_node.start_mark,
          )
        seen[key] = key_node.start_mark.line + 1
    return super().construct_mapping(node, deep=deep)


def _is_path(name_or_path: str) -> bool:
  return (
    name_or_path.endswith(CARD_SUFFIXES)
    or os.sep in name_or_path
    or pathlib.Path(name_or_path).exists()
  )


def _resolve(name_or_path: str) -> pathlib.Path:
  if _is_path(name_or_path):
    return pathlib.Path(name_or_path)
  builtin = TASKS_DIR / f"{name_or_path}.yaml"
  if builtin.is_file():
    return builtin
  for card in user_cards():
    if card.name == name_or_path:
      return pathlib.Path(card.path)
  return builtin


def _read_card(path: pathlib.Path) -> TaskCard:
  """Loads and validates one card file (no check against other cards)."""
  if not path.is_file():
    known = ", ".join(list_cards()) or "none"
    try:
      mine = ", ".join(c.name for c in user_cards()) or "none"
    except CardError:
      mine = "they do not load"  # that error comes where they are used
    raise CardError(
      f"{path}: no such task card (built-in cards: {known}; cards in "
      f"{TASK_CARDS_ENV}: {mine})"
    )
  try:
    text = path.read_text()
  except (OSError, UnicodeDecodeError) as e:
    raise CardError(f"{path}: cannot read the card: {e}") from None
  try:
    data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (safe)
  except yaml.YAMLError as e:
    mark = getattr(e, "problem_mark", None)
    at = f"line {mark.line + 1}: " if mark else ""
    problem = getattr(e, "problem", None) or errors.one_line(e)
    raise CardError(f"{path}: {at}invalid YAML: {problem}") from None
  line_of = _yaml_line_of(text)
  card = card_from_dict(data, origin=str(path), line_of=line_of)
  _refuse_builtin_name(card, path, line_of)
  return card


def _refuse_builtin_name(
  card: TaskCard, path: pathlib.Path, line_of: LineOf
) -> None:
  """A card outside tasks/ may not take a built-in card's name.

  Its tasks, TFDS configs and annotation stores would carry the same names as
  the built-in card's, and whichever registered last would win. A byte-exact
  copy of the built-in card is the same card, so it is accepted.
  """
  builtin = TASKS_DIR / f"{card.name}.yaml"
  if not builtin.is_file() or path.resolve() == builtin.resolve():
    return
  if path.read_bytes() == builtin.read_bytes():
    return
  raise CardError(
    f"{_where(str(path), ('name',), line_of)}: {card.name!r} is the name of "
    f"the built-in card {builtin}; rename your card (e.g. name: "
    f"my_{card.name}) so that neither replaces the other"
  )


def load_card(name_or_path: str) -> TaskCard:
  """Loads and validates a task card.

  Args:
    name_or_path: a built-in card name ("cqa" -> tasks/cqa.yaml), the name of
      a card in `DSS_TASK_CARDS`, or a path.

  Returns:
    The card.

  Raises:
    CardError: when the file is missing, is not YAML (or repeats a key),
      fails validation or takes a built-in card's name; the message names
      the file and the field.
  """
  return _read_card(_resolve(os.fspath(name_or_path)))


def user_card_paths(
  spec: str | None = None, origin: str = TASK_CARDS_ENV
) -> list[pathlib.Path]:
  """The card files a `DSS_TASK_CARDS` value names.

  Args:
    spec: card files or folders (each folder's `*.yaml` and `*.yml` cards),
      separated by ":"; None reads `$DSS_TASK_CARDS`.
    origin: where `spec` came from, for error messages (the variable or the
      flag).

  Returns:
    The files, in the order given, each once.

  Raises:
    CardError: an entry that does not exist, naming `origin` and the entry.
  """
  if spec is None:
    spec = os.environ.get(TASK_CARDS_ENV, "")
  paths, seen = [], set()
  for entry in spec.split(os.pathsep):
    if not entry.strip():
      continue
    path = pathlib.Path(entry).expanduser()
    if path.is_dir():
      found = sorted(p for p in path.iterdir() if p.suffix in CARD_SUFFIXES)
    elif path.is_file():
      found = [path]
    else:
      raise CardError(
        f"{origin}: {entry}: no such card file or folder; fix the path or "
        f"remove it from {origin}"
      )
    for file in found:
      if file.resolve() not in seen:
        seen.add(file.resolve())
        paths.append(file)
  return paths


def user_cards(
  spec: str | None = None, origin: str = TASK_CARDS_ENV
) -> list[TaskCard]:
  """Loads the cards `DSS_TASK_CARDS` names (see `user_card_paths`).

  Args:
    spec: the ":"-separated files and folders; None reads the variable.
    origin: where `spec` came from, for error messages.

  Returns:
    The cards, each with its `path`. Byte-exact copies of built-in cards are
    left out (they are the built-in cards).

  Raises:
    CardError: a card that fails to load (file and line), or two cards with
      one name (both files named).
  """
  by_name: dict[str, TaskCard] = {}
  for path in user_card_paths(spec, origin):
    card = _read_card(path)
    if card.name in list_cards():
      continue  # a copy of the built-in card (_read_card refuses others)
    first = by_name.setdefault(card.name, card)
    if first is not card:
      line_of = _yaml_line_of(path.read_text())
      raise CardError(
        f"{_where(str(path), ('name',), line_of)}: {card.name!r} is also the "
        f"name of {first.path} (both in {origin}); rename one of them"
      )
  return list(by_name.values())


def add_task_cards(
  values: Sequence[str], origin: str = "--task_cards"
) -> list[TaskCard]:
  """Adds card files or folders to `$DSS_TASK_CARDS` (the `--task_cards` flag).

  The entry points call this before `dss_jax.seqio_tasks` is imported, so
  the import (and every process started from this one) registers the cards.
  Paths are made absolute, for processes that start in another folder.

  Args:
    values: card files or folders, each possibly ":"-separated.
    origin: the flag they came from, for error messages.

  Returns:
    Every card `$DSS_TASK_CARDS` now names.

  Raises:
    CardError: a path that does not exist (naming `origin`), a card that
      fails to load, or two cards with one name.
  """
  entries = [
    e for value in values for e in value.split(os.pathsep) if e.strip()
  ]
  if entries:
    user_card_paths(os.pathsep.join(entries), origin)
    added = [str(pathlib.Path(e).expanduser().resolve()) for e in entries]
    current = os.environ.get(TASK_CARDS_ENV, "")
    os.environ[TASK_CARDS_ENV] = os.pathsep.join(
      e for e in [current, *added] if e
    )
  return user_cards()


def list_cards() -> list[str]:
  """The names of the built-in cards (files under tasks/)."""
  return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def fields_json(fields: Mapping[str, Any]) -> str:
  """Canonical JSON of an example's input fields (sorted keys, UTF-8)."""
  return json.dumps(dict(fields), sort_keys=True, ensure_ascii=False)


def input_fields(card: TaskCard, row: Mapping[str, Any]) -> dict[str, Any]:
  """The card's input fields of a dataset row.

  Raises:
    CardError: when the row lacks one of them.
  """
  try:
    return {name: row[name] for name in card.source.input_fields}
  except KeyError as e:
    raise CardError(f"{card.path}: row lacks input field {e}") from None


__all__ = (
  "EOS_SEPARATOR",
  "TASK_CARDS_ENV",
  "LABEL_PREFIX",
  "RATIONALE_PREFIX",
  "CardError",
  "ParsedAnswer",
  "StudentInputSpec",
  "TaskCard",
  "add_task_cards",
  "card_from_dict",
  "fields_json",
  "input_fields",
  "list_cards",
  "load_card",
  "user_card_paths",
  "user_cards",
)
