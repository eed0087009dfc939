"""Source readers: dataset rows and the paper's released teacher outputs.

A card's source is one of: the paper's layout (`paper_folder`), JSON-lines files
(`files`), or a reader hook (`reader`). The paper's layout (the official
repository's `datasets.zip`, or a local copy named by `DSS_PAPER_DATA_DIR`):

    <folder>/<folder>_<split>.json      one JSON object per line
    <folder>/llm/<split>_CoT_<i>.json   JSON lists of raw PaLM-540B completions;
                                        files i = 0, 1, ... in order align
                                        one-to-one with the lines above

A `<folder>_sample` folder (the first examples of a large split) is read when
`<folder>` is absent. Without a local folder the zip is downloaded once and
cached (tensorflow_datasets' download manager, so `tfds build` works offline
afterwards).
"""

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import tensorflow_datasets as tfds

from dss_jax import answers, errors
from dss_jax import cards as cards_lib

PAPER_DATA_ENV = "DSS_PAPER_DATA_DIR"
DATASETS_ZIP_URL = (
  "https://github.com/google-research/distilling-step-by-step/raw/main/"
  "datasets.zip"
)
PALM_TEACHER = "palm-540b"
# The source name of the paper's released PaLM-540B outputs: it names their
# TFDS config and SeqIO tasks, and the teacher job that replays them.
PALM_SOURCE = "palm"


@dataclasses.dataclass(frozen=True)
class SourceExample:
  """One dataset row, reduced to what annotation needs.

  Attributes:
    id: a stable id: the dataset's own, else one derived from the input
      fields (`content_id`; "<split>-<index>" for the paper's files).
    fields: the card's input fields.
    gold_label: the gold label as text ('' when unlabeled).
  """

  id: str
  fields: dict[str, Any]
  gold_label: str


def find_root(path: os.PathLike | str) -> pathlib.Path:
  """The folder that holds the dataset folders (cqa/, svamp/, ...).

  The zip nests everything under `datasets/`; a local copy may not.

  Args:
    path: a folder or an extracted zip.

  Returns:
    The layout root.

  Raises:
    FileNotFoundError: when no dataset folder is found.
  """
  path = pathlib.Path(path)
  for candidate in (path, path / "datasets"):
    if any(candidate.glob("*/llm")):
      return candidate
  nested = sorted(p.parent.parent for p in path.glob("*/*/llm"))
  if nested:
    return nested[0]
  raise errors.MissingFileError(f"no <dataset>/llm/ folders under {path}")


def default_root(download_dir: str | None = None) -> pathlib.Path:
  """The paper data: $DSS_PAPER_DATA_DIR, else the downloaded, cached zip.

  Args:
    download_dir: where to cache the zip (tfds' default download dir if None).

  Returns:
    The layout root.
  """
  local = os.environ.get(PAPER_DATA_ENV)
  if local:
    return find_root(local)
  manager = tfds.download.DownloadManager(
    download_dir=download_dir
    or os.path.join(os.path.expanduser("~"), "tensorflow_datasets", "downloads")
  )
  return find_root(manager.download_and_extract(DATASETS_ZIP_URL))


def _folder(card: cards_lib.TaskCard, root: pathlib.Path) -> pathlib.Path:
  name = card.source.paper_folder
  if name is None:
    raise cards_lib.CardError(f"{card.path}: source.paper_folder is not set")
  for candidate in (root / name, root / f"{name}_sample"):
    if candidate.is_dir():
      return candidate
  raise errors.MissingFileError(f"{root}: no folder {name}/ or {name}_sample/")


def available_splits(
  card: cards_lib.TaskCard, root: pathlib.Path
) -> dict[str, str]:
  """The card's splits (TFDS name -> file split) that exist under `root`."""
  folder = _folder(card, root)
  name = card.source.paper_folder
  return {
    tfds_split: file_split
    for tfds_split, file_split in card.source.splits.items()
    if (folder / f"{name}_{file_split}.json").is_file()
  }


# Bad rows reported at once, each with its file and line; more would bury
# the first ones, which are usually enough to see the pattern.
MAX_ROW_ERRORS = 5


class DataError(errors.UserError):
  """Rows of a source file the job cannot use (file:line for each)."""


def _raise_row_errors(origin: str, problems: list[str], rows: int) -> None:
  if not problems:
    return
  shown = "; ".join(problems[:MAX_ROW_ERRORS])
  more = len(problems) - MAX_ROW_ERRORS
  raise DataError(
    f"{len(problems)} bad row{'s' if len(problems) > 1 else ''} in {origin} "
    f"({rows} read): {shown}{f'; and {more} more' if more > 0 else ''}; fix "
    "or remove them and rerun"
  )


def _rows(path: pathlib.Path) -> list[tuple[int, dict[str, Any]]]:
  """The JSON objects of a JSON-lines file with their line numbers.

  Raises:
    DataError: undecodable bytes, lines that are not JSON objects (a torn
      last line included) or a file without rows, each named `file:line`.
    errors.MissingFileError: no such file.
  """
  try:
    data = path.read_bytes()
  except FileNotFoundError:
    raise errors.MissingFileError(f"{path}: no such source file") from None
  except IsADirectoryError:
    raise errors.UserError(f"{path}: a folder, not a JSON-lines file") from None
  rows, problems = [], []
  lines = data.split(b"\n")
  for number, raw in enumerate(lines, start=1):
    if not raw.strip():
      continue
    where = f"{path}:{number}"
    try:
      line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      problems.append(f"{where}: not UTF-8 (byte {e.start})")
      continue
    try:
      row = json.loads(line)
    except ValueError as e:
      torn = number == len(lines) and not data.endswith(b"\n")
      problems.append(
        f"{where}: {'truncated' if torn else 'not'} JSON ({e.msg})"
      )
      continue
    if not isinstance(row, dict):
      problems.append(f"{where}: a JSON {type(row).__name__}, not an object")
      continue
    rows.append((number, row))
  _raise_row_errors(str(path), problems, len(rows) + len(problems))
  if not rows:
    raise DataError(
      f"{path}: no rows (an empty file); a split needs one JSON object per line"
    )
  return rows


def content_id(split: str, fields: Mapping[str, Any]) -> str:
  """An example id derived from its input fields, not from its position.

  Args:
    split: the source split.
    fields: the card's input fields of the row.

  Returns:
    "<split>-<16 hex digits of the SHA-256 of the canonical fields JSON>".
  """
  digest = hashlib.sha256(cards_lib.fields_json(fields).encode("utf-8"))
  return f"{split}-{digest.hexdigest()[:16]}"


def _gold_label(
  card: cards_lib.TaskCard, row: Mapping[str, Any]
) -> tuple[str, str | None]:
  """The gold label of a row, or ('', problem) when it is not usable."""
  field = card.source.label_field
  value = row.get(field) if field else None
  names = card.source.label_names
  if isinstance(value, bool):
    return "", f"label {value!r} is a boolean, not a label"
  if isinstance(value, (dict, list)):
    return "", f"label {value!r} is a {type(value).__name__}, not a label"
  if isinstance(value, int) and names is not None:
    if not 0 <= value < len(names):
      return "", (
        f"label index {value} out of range (source.label_names has "
        f"{len(names)}: 0..{len(names) - 1})"
      )
  elif isinstance(value, int) and card.labels:
    return "", (
      f"integer label {value} but the card has no source.label_names to map "
      f"it to one of {', '.join(card.labels)}"
    )
  label = card.gold_label(row)
  if label and card.labels and label not in card.labels:
    return "", (
      f"label {label!r} is not one of the card's labels "
      f"({', '.join(card.labels)})"
    )
  return label, None


def _is_empty(value: Any) -> bool:
  """None, or a string, list or mapping with nothing in it."""
  if isinstance(value, str):
    return not value.strip()
  return value is None or (isinstance(value, (list, dict)) and not value)


def examples_from_rows(
  card: cards_lib.TaskCard,
  rows: Iterable[Mapping[str, Any]],
  split: str,
  *,
  origin: str | None = None,
  lines: Sequence[int] | None = None,
  content_ids: bool = True,
) -> Iterator[SourceExample]:
  """Turns raw rows into SourceExamples (ids, input fields, gold labels).

  Without the card's `id_field`, an example's id is derived from its input
  fields (`content_id`), so inserting or reordering rows never moves an
  annotation onto another example; rows that repeat an earlier row's inputs
  get the same id with "-2", "-3", ... appended (the teacher sees the same
  prompt for them). `content_ids=False` keeps "<split>-<index>" ids (the
  paper's released files, whose completions align with rows by position).

  Args:
    card: the task card.
    rows: the rows, in source order.
    split: the source split.
    origin: where the rows come from, for errors (a file or reader hook).
    lines: each row's line in `origin` (default: its 1-based position).
    content_ids: derive ids from content when the card has no `id_field`.

  Returns:
    The examples, in source order.

  Raises:
    DataError: rows without the id or an input field, duplicate ids, gold
      labels outside the card's label space (the first few, file:line each).
  """
  id_field = card.source.id_field
  origin = origin or f"split {split!r}"
  examples, problems = [], []
  first_line: dict[str, int] = {}
  repeats = 0
  for index, row in enumerate(rows):
    line = lines[index] if lines is not None else index + 1
    where = f"{origin}:{line}"
    missing = [f for f in card.source.input_fields if f not in row]
    if id_field and id_field not in row:
      missing.insert(0, id_field)
    if missing:
      problems.append(
        f"{where}: no field {', '.join(repr(m) for m in missing)}"
      )
      continue
    if all(_is_empty(row[f]) for f in card.source.input_fields):
      # The teacher would be asked about nothing, the student trained on a
      # bare prefix.
      problems.append(
        f"{where}: no input: {', '.join(card.source.input_fields)} empty"
      )
      continue
    label, problem = _gold_label(card, row)
    if problem:
      problems.append(f"{where}: {problem}")
      continue
    fields = cards_lib.input_fields(card, row)
    if id_field:
      example_id = str(row[id_field])
      if example_id in first_line:
        problems.append(
          f"{where}: duplicate id {example_id!r} (first at line "
          f"{first_line[example_id]})"
        )
        continue
    elif content_ids:
      base_id = example_id = content_id(split, fields)
      occurrence = 1
      while example_id in first_line:
        occurrence += 1
        example_id = f"{base_id}-{occurrence}"
      repeats += occurrence > 1
    else:
      example_id = f"{split}-{index:06d}"
    first_line[example_id] = line
    examples.append(
      SourceExample(id=example_id, fields=fields, gold_label=label)
    )
  _raise_row_errors(origin, problems, len(examples) + len(problems))
  if repeats:
    logging.warning(
      "%s: %d rows repeat the inputs of an earlier row (no id_field in %s); "
      "their ids get -2, -3, ... appended",
      origin,
      repeats,
      card.path or card.name,
    )
  return iter(examples)


def _read_file(
  card: cards_lib.TaskCard,
  path: pathlib.Path,
  split: str,
  content_ids: bool = True,
) -> list[SourceExample]:
  numbered = _rows(path)
  return list(
    examples_from_rows(
      card,
      [row for _, row in numbered],
      split,
      origin=str(path),
      lines=[number for number, _ in numbered],
      content_ids=content_ids,
    )
  )


def read_examples(
  card: cards_lib.TaskCard, split: str, root: pathlib.Path
) -> list[SourceExample]:
  """Reads one split of a card's paper-layout source.

  Args:
    card: the task card.
    split: the split's name in the files ("train", "valid", "test").
    root: the layout root.

  Returns:
    The examples in file order.
  """
  folder = _folder(card, root)
  path = folder / f"{card.source.paper_folder}_{split}.json"
  # The released completions align with the rows by position (and the
  # paper's files are a fixed release): positional ids, as the paper's.
  return _read_file(card, path, split, content_ids=False)


def read_completions(
  card: cards_lib.TaskCard, split: str, root: pathlib.Path
) -> list[str]:
  """Reads the released teacher completions of one split, in order."""
  folder = _folder(card, root) / "llm"
  completions: list[str] = []
  index = 0
  while (path := folder / f"{split}_CoT_{index}.json").is_file():
    try:
      part = json.loads(path.read_bytes().decode("utf-8"))
    except ValueError as e:
      raise DataError(
        f"{path}: not a JSON list of completions ({errors.one_line(e)})"
      ) from None
    if not isinstance(part, list) or not all(isinstance(x, str) for x in part):
      raise DataError(f"{path}: not a JSON list of completion strings")
    completions.extend(part)
    index += 1
  if not completions:
    raise errors.MissingFileError(f"no {split}_CoT_<i>.json under {folder}")
  return completions


def read_replay(
  card: cards_lib.TaskCard, split: str, root: pathlib.Path
) -> list[tuple[SourceExample, str]]:
  """Examples of a split paired with their released completions.

  Raises:
    DataError: when the counts differ (the files would be misaligned).
  """
  examples = read_examples(card, split, root)
  completions = read_completions(card, split, root)
  if len(examples) != len(completions):
    folder = _folder(card, root)
    raise DataError(
      f"{folder}/{card.source.paper_folder}_{split}.json has "
      f"{len(examples)} examples but {folder}/llm/{split}_CoT_*.json hold "
      f"{len(completions)} completions; the released files align line by "
      "line: restore them from datasets.zip"
    )
  return list(zip(examples, completions, strict=True))


def source_splits(
  card: cards_lib.TaskCard, root: pathlib.Path | None = None
) -> dict[str, str]:
  """The splits a card's source offers: TFDS split name -> source split name.

  Args:
    card: the task card.
    root: the paper layout root (paper_folder sources only).

  Returns:
    The mapping; for paper sources only the splits whose files exist.
  """
  if card.source.paper_folder:
    return available_splits(card, root or default_root())
  if card.source.files:
    return {name: name for name in card.source.files}
  return dict(card.source.splits)


def read_source(
  card: cards_lib.TaskCard,
  split: str,
  root: pathlib.Path | None = None,
) -> list[SourceExample]:
  """Reads one split of any kind of card source.

  Args:
    card: the task card.
    split: the split's name in the source (as in `source_splits` values).
    root: the paper layout root (paper_folder sources only; default_root()).

  Returns:
    The examples in source order.
  """
  if card.source.paper_folder:
    return read_examples(card, split, root or default_root())
  if card.source.files:
    return _read_file(card, split_file(card, split), split)
  reader = answers.load_hook(card.source.reader)
  rows = list(reader(split))
  for index, row in enumerate(rows):
    if not isinstance(row, Mapping):
      raise DataError(
        f"{card.source.reader}({split!r}) row {index + 1}: a "
        f"{type(row).__name__}, not a mapping of fields"
      )
  return list(
    examples_from_rows(
      card, rows, split, origin=f"{card.source.reader}({split!r}) row"
    )
  )


def split_file(card: cards_lib.TaskCard, split: str) -> pathlib.Path:
  """The file of a split of a card with `files` (relative to the card)."""
  path = pathlib.Path(card.source.files[split])
  if not path.is_absolute() and card.path:
    path = pathlib.Path(card.path).parent / path
  return path


def source_files(
  card: cards_lib.TaskCard, root: pathlib.Path | None = None
) -> list[pathlib.Path]:
  """The files a card's examples (and released completions) are read from.

  Args:
    card: the task card.
    root: the paper layout root (paper_folder sources; default_root()).

  Returns:
    The files, sorted; none for a reader hook (its code is its data).
  """
  if card.source.paper_folder:
    folder = _folder(card, root or default_root())
    name = card.source.paper_folder
    files = [folder / f"{name}_{s}.json" for s in card.source.splits.values()]
    files += folder.glob("llm/*_CoT_*.json")
    return sorted(p for p in files if p.is_file())
  return sorted(split_file(card, s) for s in card.source.files)


# Files above this size are fingerprinted by size and modification time;
# hashing the largest released split (e-SNLI) on every run would cost
# seconds, and an edit changes its mtime anyway.
_HASH_LIMIT_BYTES = 64 << 20


def fingerprint(paths: Iterable[pathlib.Path]) -> dict[str, str]:
  """What files hold: SHA-256 (size and mtime for large files), by path.

  Args:
    paths: the files.

  Returns:
    path -> "sha256:<hex>" or "size:<bytes>,mtime_ns:<ns>"; a missing file
    is "missing".
  """
  prints = {}
  for path in paths:
    try:
      stat = path.stat()
    except FileNotFoundError:
      prints[str(path)] = "missing"
      continue
    if stat.st_size > _HASH_LIMIT_BYTES:
      prints[str(path)] = f"size:{stat.st_size},mtime_ns:{stat.st_mtime_ns}"
    else:
      digest = hashlib.sha256(path.read_bytes()).hexdigest()
      prints[str(path)] = f"sha256:{digest}"
  return prints
