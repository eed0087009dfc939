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
import json
import os
import pathlib
from collections.abc import Iterator, Mapping
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


@dataclasses.dataclass(frozen=True)
class SourceExample:
  """One dataset row, reduced to what annotation needs.

  Attributes:
    id: a stable id (the dataset's own, else "<split>-<index>").
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


def _rows(path: pathlib.Path) -> Iterator[dict[str, Any]]:
  with path.open() as f:
    for line in f:
      if line.strip():
        yield json.loads(line)


def examples_from_rows(
  card: cards_lib.TaskCard, rows: Iterator[Mapping[str, Any]], split: str
) -> Iterator[SourceExample]:
  """Turns raw rows into SourceExamples (ids, input fields, gold labels)."""
  id_field = card.source.id_field
  for index, row in enumerate(rows):
    example_id = str(row[id_field]) if id_field else f"{split}-{index:06d}"
    yield SourceExample(
      id=example_id,
      fields=cards_lib.input_fields(card, row),
      gold_label=card.gold_label(row),
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
  return list(examples_from_rows(card, _rows(path), split))


def read_completions(
  card: cards_lib.TaskCard, split: str, root: pathlib.Path
) -> list[str]:
  """Reads the released teacher completions of one split, in order."""
  folder = _folder(card, root) / "llm"
  completions: list[str] = []
  index = 0
  while (path := folder / f"{split}_CoT_{index}.json").is_file():
    with path.open() as f:
      completions.extend(json.load(f))
    index += 1
  if not completions:
    raise errors.MissingFileError(f"no {split}_CoT_<i>.json under {folder}")
  return completions


def read_replay(
  card: cards_lib.TaskCard, split: str, root: pathlib.Path
) -> list[tuple[SourceExample, str]]:
  """Examples of a split paired with their released completions.

  Raises:
    ValueError: when the counts differ (the files would be misaligned).
  """
  examples = read_examples(card, split, root)
  completions = read_completions(card, split, root)
  if len(examples) != len(completions):
    raise ValueError(
      f"{card.name}/{split}: {len(examples)} examples but "
      f"{len(completions)} completions"
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
    path = pathlib.Path(card.source.files[split])
    if not path.is_absolute() and card.path:
      path = pathlib.Path(card.path).parent / path
    return list(examples_from_rows(card, _rows(path), split))
  reader = answers.load_hook(card.source.reader)
  return list(examples_from_rows(card, iter(reader(split)), split))
