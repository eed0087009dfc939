"""TFDS dataset of teacher-annotated examples: `dss_annotated/<card>_<source>`.

One config per (task card, teacher source):

* `<card>_palm` for the four built-in cards: the paper's released PaLM-540B
  outputs, read from $DSS_PAPER_DATA_DIR or from the official `datasets.zip`
  (downloaded once and cached by the TFDS download manager);
* `<card>_<source>` for a store written by the annotation runner
  (`python -m dss_jax.annotate`), e.g. `cqa_gemini_2_5_flash`.

Build from the command line (`datasets/__main__.py`), any source:

    DSS_PAPER_DATA_DIR=path/to/dss_paper python -m dss_jax.datasets \\
      --card=cqa --source=palm --data_dir=$TFDS_DATA_DIR
    python -m dss_jax.datasets --card=cqa --source=gemini_2_5_flash \\
      --store=annotations/cqa_gemini_2_5_flash.jsonl

or with the TFDS CLI for the palm configs (its CLI imports apache-beam):

    tfds build dss_annotated --imports=dss_jax.datasets --config=cqa_palm

or from Python:

    build_annotated("cqa", "palm", data_dir=...)
    build_annotated("cqa", "gemini_2_5_flash", store="annotations/cqa.jsonl")

Every split of the source is kept whole (test rows are needed for gold-label
evaluation); rows whose completions do not parse have teacher_label '' and
rationale '', and consumers filter them where they train on teacher output.
A build with no rationale in a split says so (`annotation_counts`).

A built dataset records what it was made from (`INPUTS_FILE`: the card, the
source files' hashes, the store's hash, the settings); when any of it
changed it is rebuilt, and a line names what changed.
"""

import collections
import contextlib
import hashlib
import json
import logging
import os
import pathlib
import re
from collections.abc import Callable, Iterator
from typing import Any

import tensorflow_datasets as tfds
from etils import epath

from dss_jax import cards as cards_lib
from dss_jax import errors
from dss_jax.teacher import aggregate, sources
from dss_jax.teacher import store as store_lib

VERSION = "1.0.0"
# Cards whose teacher outputs the paper released.
PAPER_CARDS = ("cqa", "svamp", "anli1", "esnli")
# What a source name may be: it names a TFDS config and SeqIO tasks.
SOURCE_NAME = re.compile(r"[a-z][a-z0-9_]*")
# TFDS split names; the paper's files call validation "valid".
_SPLITS = {"train": tfds.Split.TRAIN, "validation": tfds.Split.VALIDATION}


class DssAnnotatedConfig(tfds.core.BuilderConfig):
  """Which card and teacher source a dss_annotated config holds."""

  def __init__(
    self,
    *,
    card: str,
    source: str,
    store: str | None = None,
    teacher: str | None = None,
    keep: str = "vote",
    paper_data_dir: str | None = None,
    **kwargs: Any,
  ):
    """Creates a config named `<card>_<source>`.

    Args:
      card: a built-in card name or a card path.
      source: "palm", or the name of an annotation run.
      store: the runner's JSON-lines store (non-palm sources).
      teacher: only store records of this teacher (default: all).
      keep: rationales to keep under self-consistency ("vote" or
        "vote_or_gold").
      paper_data_dir: the paper's data layout (paper_folder cards; default
        $DSS_PAPER_DATA_DIR, else the downloaded zip).
      **kwargs: passed to tfds.core.BuilderConfig.

    Raises:
      errors.UserError: a source name that cannot name a dataset, or
        "palm" with an annotation store (palm is the released outputs).
    """
    check_source_name(source, store=store, teacher=teacher)
    # A card given by path is named by its `name:` field, as SeqIO names it.
    card_name = (
      cards_lib.load_card(card).name
      if card.endswith((".yaml", ".yml"))
      else card
    )
    super().__init__(
      name=f"{card_name}_{source}",
      version=VERSION,
      description=f"{card_name} annotated by teacher source {source!r}.",
      **kwargs,
    )
    self.card = card
    self.card_name = card_name
    self.source = source
    self.store = store
    self.teacher = teacher
    self.keep = keep
    self.paper_data_dir = paper_data_dir


def check_source_name(
  source: str, store: str | None = None, teacher: str | None = None
) -> None:
  """Refuses a source name that cannot name a dataset or misnames one.

  Args:
    source: the source name.
    store: the annotation store the dataset is built from, if any.
    teacher: the teacher whose store records are kept, if any.

  Raises:
    errors.UserError: not lower-case letters, digits and _ (spaces, "../",
      upper case), or "palm" for anything but the paper's released outputs
      (another teacher, or a store whose records are not kept to them).
  """
  if not isinstance(source, str) or not SOURCE_NAME.fullmatch(source):
    raise errors.UserError(
      f"source name {source!r}: use lower-case letters, digits and _, "
      "starting with a letter (it names the dataset and its tasks)"
    )
  # A store may hold palm only when its records are kept to the replayed
  # PaLM-540B teacher (what `annotate --backend=replay --build_tfds` builds).
  if source == sources.PALM_SOURCE and (
    (teacher is not None and teacher != sources.PALM_TEACHER)
    or (store is not None and teacher is None)
  ):
    raise errors.UserError(
      f"source name {sources.PALM_SOURCE!r} is the paper's released PaLM-540B "
      f"outputs, but this build would come from "
      f"{'store ' + store if store else 'teacher ' + str(teacher)}; name "
      "the annotation after its teacher (e.g. --source=gemini_2_5_flash)"
    )


class DssAnnotated(tfds.core.GeneratorBasedBuilder):
  """Teacher-annotated examples for Distilling Step-by-Step."""

  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
    DssAnnotatedConfig(card=name, source=sources.PALM_SOURCE)
    for name in PAPER_CARDS
  ]
  # tfds derives this from the package's resources, which needs the
  # `importlib_resources` backport on some installs; the module file is the
  # same answer without it (tfds looks for checksums.tsv next to it).
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    text = tfds.features.Text()
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          "id": text,
          "input": text,
          "fields": text,
          "gold_label": text,
          "teacher_label": text,
          "rationale": text,
          "rationales": tfds.features.Sequence(tfds.features.Text()),
          "teacher": text,
          "prompt_hash": text,
        }
      ),
      homepage="https://github.com/google-research/distilling-step-by-step",
      citation=_CITATION,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config: DssAnnotatedConfig = self.builder_config
    card = cards_lib.load_card(config.card)
    root = None
    if card.source.paper_folder:
      local = _paper_data_dir(config)
      root = sources.find_root(
        local or dl_manager.download_and_extract(sources.DATASETS_ZIP_URL)
      )
    self.counts: dict[str, dict[str, int]] = {}
    splits = sources.source_splits(card, root)
    records = (
      None if config.source == sources.PALM_SOURCE else _store_records(config)
    )
    return {
      _SPLITS.get(name, name): self._generate_examples(
        card, split, root, records
      )
      for name, split in splits.items()
    }

  def _generate_examples(
    self,
    card: cards_lib.TaskCard,
    split: str,
    root: pathlib.Path | None,
    records: dict[str, list[store_lib.CompletionRecord]] | None,
  ) -> Iterator[tuple[str, dict[str, Any]]]:
    counts = self.counts.setdefault(
      split, {"examples": 0, "rationales": 0, "gold_labels": 0, "asked": 0}
    )
    rows = (
      self._palm_examples(card, split, root)
      if records is None
      else self._store_examples(card, split, root, records)
    )
    for key, features in rows:
      counts["examples"] += 1
      counts["rationales"] += bool(features["rationale"])
      counts["gold_labels"] += bool(features["gold_label"])
      counts["asked"] += bool(features["teacher"])  # a completion stored
      yield key, features

  def _palm_examples(
    self, card: cards_lib.TaskCard, split: str, root: pathlib.Path
  ) -> Iterator[tuple[str, dict[str, Any]]]:
    for example, completion in sources.read_replay(card, split, root):
      annotation = aggregate.aggregate(card, [completion])
      yield (
        example.id,
        _features(card, example, annotation, sources.PALM_TEACHER, ""),
      )

  def _store_examples(
    self,
    card: cards_lib.TaskCard,
    split: str,
    root: pathlib.Path | None,
    records: dict[str, list[store_lib.CompletionRecord]],
  ) -> Iterator[tuple[str, dict[str, Any]]]:
    keep = self.builder_config.keep
    for example in sources.read_source(card, split, root):
      samples = _latest_prompt(records.get(example.id, []))
      annotation = aggregate.aggregate(
        card, [r.completion for r in samples], example.gold_label, keep=keep
      )
      teacher = samples[0].teacher if samples else ""
      digest = samples[0].prompt_hash if samples else ""
      yield example.id, _features(card, example, annotation, teacher, digest)


def _features(
  card: cards_lib.TaskCard,
  example: sources.SourceExample,
  annotation: aggregate.Annotation,
  teacher: str,
  digest: str,
) -> dict[str, Any]:
  return {
    "id": example.id,
    # What the student reads; the teacher's readable text is in the card.
    "input": card.format_student_input(example.fields),
    "fields": cards_lib.fields_json(example.fields),
    "gold_label": example.gold_label,
    "teacher_label": annotation.teacher_label,
    "rationale": annotation.rationale,
    "rationales": list(annotation.rationales),
    "teacher": teacher,
    "prompt_hash": digest,
  }


def _store_records(
  config: DssAnnotatedConfig,
) -> dict[str, list[store_lib.CompletionRecord]]:
  path = config.store or store_lib.default_store_path(
    config.card_name, config.source
  )
  if not pathlib.Path(path).is_file():
    raise errors.MissingFileError(
      f"no annotation store for {config.name} at {path}; run "
      "`python -m dss_jax.annotate` first or pass store="
    )
  by_id = collections.defaultdict(list)
  for record in store_lib.read_records(path):
    if config.teacher is None or record.teacher == config.teacher:
      by_id[record.id].append(record)
  if not by_id:
    of = f" of teacher {config.teacher}" if config.teacher else ""
    raise errors.UserError(
      f"annotation store {path} holds no completions{of}; run "
      "`python -m dss_jax.annotate` into it first, or check --store"
    )
  return by_id


def _latest_prompt(
  records: list[store_lib.CompletionRecord],
) -> list[store_lib.CompletionRecord]:
  """The samples of the most recently used prompt hash, by sample index.

  A store may hold calls made with an older version of a card's exemplars;
  only one prompt's samples vote together.
  """
  if not records:
    return []
  latest = records[-1].prompt_hash
  return sorted(
    (r for r in records if r.prompt_hash == latest), key=lambda r: r.sample
  )


def tfds_name(card: str, source: str) -> str:
  """The TFDS name of a (card, source) pair.

  Args:
    card: the card name, e.g. "cqa".
    source: the teacher source, e.g. "palm".

  Returns:
    "dss_annotated/<card>_<source>:1.0.0"; the explicit version lets tfds load
    configs of annotation runs (not known to the code) from their files.
  """
  return f"dss_annotated/{card}_{source}:{VERSION}"


def build_annotated(
  card: str,
  source: str,
  data_dir: str | None = None,
  *,
  store: str | None = None,
  teacher: str | None = None,
  keep: str = "vote",
  download_dir: str | None = None,
  paper_data_dir: str | None = None,
  log: Callable[[str], None] | None = None,
) -> tfds.core.DatasetBuilder:
  """Builds (if needed) and returns the dataset of one (card, source).

  Args:
    card: a card name ("cqa") or path.
    source: "palm" or an annotation run's name.
    data_dir: the TFDS data dir (tfds' default when None).
    store: the runner's store for non-palm sources
      (default: store.default_store_path(card, source)).
    teacher: keep only this teacher's store records.
    keep: "vote" or "vote_or_gold" (self-consistency rationale filter).
    download_dir: where to cache datasets.zip when no local copy is set.
    paper_data_dir: the paper's data layout (default $DSS_PAPER_DATA_DIR,
      else the downloaded zip).
    log: where the line saying why a dataset is rebuilt, or that a split
      has no rationale, goes (default: a logged warning).

  Returns:
    The prepared builder; `builder.as_dataset(split="train")` reads it.

  Raises:
    errors.UserError: a bad source name or data dir, bad source rows.
    errors.MachineError: the disk is full or the data dir read-only.
  """
  config = DssAnnotatedConfig(
    card=card,
    source=source,
    store=store,
    teacher=teacher,
    keep=keep,
    paper_data_dir=paper_data_dir,
  )

  log = log or logging.warning
  _check_data_dir(data_dir)

  def make_builder() -> DssAnnotated:
    if (
      source == sources.PALM_SOURCE
      and config.name in DssAnnotated.builder_configs
    ):
      return DssAnnotated(config=config.name, data_dir=data_dir)
    return DssAnnotated(config=config, data_dir=data_dir)

  builder = make_builder()
  with _paper_data_env(paper_data_dir):
    fingerprint = _inputs_fingerprint(config)
  marker = epath.Path(builder.data_dir) / INPUTS_FILE
  if epath.Path(builder.data_dir, "dataset_info.json").exists():
    changed = _changed_inputs(marker, fingerprint)
    if changed:
      # A dataset never outlives what it was made from.
      log(
        f"rebuilding {builder.data_dir}: {changed} changed since it was built"
      )
      epath.Path(builder.data_dir).rmtree()
      builder = make_builder()
  with (
    store_lib.os_faults(builder.data_dir, "building the TFDS dataset"),
    _paper_data_env(paper_data_dir),
  ):
    builder.download_and_prepare(
      download_dir=download_dir,
      download_config=tfds.download.DownloadConfig(try_download_gcs=False),
    )
    counts = getattr(builder, "counts", None)
    if counts is None:  # reused: what the build recorded
      counts = _read_marker(marker).get("counts", {})
    marker.write_text(json.dumps({"inputs": fingerprint, "counts": counts}))
  asked = [c.get("asked") for c in counts.values()]
  if (
    source != sources.PALM_SOURCE
    and asked
    and None not in asked
    and not any(asked)
  ):
    # A store of another card, or of the same card's other rows: every
    # example would go without a teacher's answer.
    epath.Path(builder.data_dir).rmtree()
    raise errors.UserError(
      f"annotation store {config.store or 'of ' + config.name} answers none "
      f"of card {card}'s examples (its ids are another card's or other "
      "rows'); annotate this card into it, or check --store and --card"
    )
  _warn_without_rationales(builder, counts, log)
  return builder


def annotation_counts(
  builder: tfds.core.DatasetBuilder,
) -> dict[str, dict[str, int]]:
  """Per source split: examples, rationales and gold labels of a build.

  Args:
    builder: a builder `build_annotated` prepared.

  Returns:
    split -> {"examples", "rationales", "gold_labels"}; {} when unknown.
  """
  marker = epath.Path(builder.data_dir) / INPUTS_FILE
  return _read_marker(marker).get("counts", {})


def inputs_digest(builder: tfds.core.DatasetBuilder) -> str | None:
  """A hash of what a build was made from (None when not recorded); caches
  of values computed from a dataset keep it to know they are current."""
  inputs = _read_marker(epath.Path(builder.data_dir) / INPUTS_FILE).get(
    "inputs"
  )
  if inputs is None:
    return None
  return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _read_marker(marker: epath.Path) -> dict[str, Any]:
  try:
    data = json.loads(marker.read_text())
  except (OSError, ValueError):
    return {}
  return data if isinstance(data, dict) and "inputs" in data else {}


def _changed_inputs(marker: epath.Path, fingerprint: dict[str, Any]) -> str:
  """What differs between a build's recorded inputs and `fingerprint`."""
  stored = _read_marker(marker).get("inputs")
  if not isinstance(stored, dict):
    return "what it was made from (not recorded)"
  changed = []
  for key in sorted(set(stored) | set(fingerprint)):
    old, new = stored.get(key), fingerprint.get(key)
    if old == new:
      continue
    if key == "source_files" and isinstance(old, dict):
      files = sorted(
        name
        for name in set(old) | set(new or {})
        if old.get(name) != (new or {}).get(name)
      )
      changed.append(
        f"source file {files[0]}" + (" and others" * (len(files) > 1))
      )
    else:
      changed.append(_INPUT_NAMES.get(key, key))
  return ", ".join(changed)


_INPUT_NAMES = {
  "card": "the card",
  "store": "the annotation store",
  "teacher": "the teacher filter",
  "keep": "keep",
  "source_files": "the source files",
}


def _check_data_dir(data_dir: str | None) -> None:
  """A TFDS data dir that is a file, or cannot be written, in one line."""
  if data_dir is None or "://" in data_dir:
    return
  path = pathlib.Path(data_dir)
  if path.exists() and not path.is_dir():
    raise errors.UserError(
      f"TFDS data dir {data_dir} is a file; give a folder (--data_dir)"
    )
  with store_lib.os_faults(path, "preparing the TFDS data dir"):
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".dss_write_probe_{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()


def _warn_without_rationales(
  builder: tfds.core.DatasetBuilder,
  counts: dict[str, dict[str, int]],
  log: Callable[[str], None],
) -> None:
  for split, count in counts.items():
    if count["examples"] and not count["rationales"]:
      log(
        f"warning: {builder.builder_config.name} {split}: 0 of "
        f"{count['examples']} examples have a rationale (no parsable teacher "
        "answer); distilling step-by-step cannot train on it"
      )


# Beside a built version: what it was built from (see `build_annotated`).
INPUTS_FILE = "dss_inputs.json"


@contextlib.contextmanager
def _paper_data_env(paper_data_dir: str | None) -> Iterator[None]:
  """$DSS_PAPER_DATA_DIR set to `paper_data_dir` while a build reads it (the
  built-in palm configs are registered without one)."""
  if not paper_data_dir:
    yield
    return
  before = os.environ.get(sources.PAPER_DATA_ENV)
  os.environ[sources.PAPER_DATA_ENV] = paper_data_dir
  try:
    yield
  finally:
    if before is None:
      del os.environ[sources.PAPER_DATA_ENV]
    else:
      os.environ[sources.PAPER_DATA_ENV] = before


def _paper_data_dir(config: DssAnnotatedConfig) -> str | None:
  return config.paper_data_dir or os.environ.get(sources.PAPER_DATA_ENV)


def _inputs_fingerprint(config: DssAnnotatedConfig) -> dict[str, Any]:
  """What a dataset is made from: the card, the source files, the store."""
  card = cards_lib.load_card(config.card)
  if card.source.paper_folder and not _paper_data_dir(config):
    # The downloaded release: the zip's address names its contents.
    files: dict[str, str] = {"download": sources.DATASETS_ZIP_URL}
  else:
    root = None
    if card.source.paper_folder:
      root = sources.find_root(_paper_data_dir(config))
    files = sources.fingerprint(sources.source_files(card, root))
  store = None
  if config.source != sources.PALM_SOURCE:
    path = pathlib.Path(
      config.store
      or store_lib.default_store_path(config.card_name, config.source)
    )
    if path.is_file():
      store = hashlib.sha256(path.read_bytes()).hexdigest()
  return {
    "card": hashlib.sha256(card.model_dump_json().encode()).hexdigest(),
    "store": store,
    "teacher": config.teacher,
    "keep": config.keep,
    "source_files": files,
  }


def load_fields(example: dict[str, Any]) -> dict[str, Any]:
  """Decodes the `fields` feature of a numpy example back to a dict."""
  raw = example["fields"]
  return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)


_CITATION = """\
@inproceedings{hsieh2023distilling,
  title={Distilling Step-by-Step! Outperforming Larger Language Models with
         Less Training Data and Smaller Model Sizes},
  author={Hsieh, Cheng-Yu and Li, Chun-Liang and Yeh, Chih-Kuan and
          Nakhost, Hootan and Fujii, Yasuhisa and Ratner, Alexander and
          Krishna, Ranjay and Lee, Chen-Yu and Pfister, Tomas},
  booktitle={Findings of ACL},
  year={2023}
}
"""
