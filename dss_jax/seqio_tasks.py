"""SeqIO tasks and mixtures of Distilling Step-by-Step; the module T5X imports.

Importing this module registers, for every built-in task card, the `palm`
source (the paper's released PaLM outputs) and every other annotation source
found in the TFDS data dir (`<data_dir>/dss_annotated/<card>_<source>/`):

    dss_<card>_<source>_label       "predict: <input>" -> label
    dss_<card>_<source>_rationale   "explain: <input>" -> teacher rationale
    dss_<card>_<source>             mixture: label at rate 1, rationale at
                                    rate lambda (`rationale_rate`)
    dss_<card>_gold_finetune        "<input>" -> gold label (finetuning)
    dss_<card>_<source>_distill     "<input>" -> teacher label (distillation)

Cards of your own are registered the same way (the `palm` source where the
card names a paper folder, and every source built for it) when
`DSS_TASK_CARDS` names them: card files or folders of cards, ":"-separated,
read at import, so T5X's `MIXTURE_OR_TASK_MODULE` import registers them too.
A card there that fails to load stops the import with its file and line.
`register_card(card, source, ...)` registers one more pair from Python.
Registering the same names again replaces them, so it is harmless.

Run options are read when a dataset is built, not when the module is
imported, so gin bindings parsed after `import dss_jax.seqio_tasks` (in the
same gin file, a later one, or on the command line) take effect:

    dss_jax.seqio_tasks.options.rationale_rate = 2.0     # lambda
    dss_jax.seqio_tasks.options.label_source = "teacher" # or "gold"
    dss_jax.seqio_tasks.options.train_fraction = 0.125   # 12.5% of train
    dss_jax.seqio_tasks.options.fraction_seed = 0
    dss_jax.vocab.get_vocabulary.name = "byte"           # tasks and model

Splits: `train`; `validation` (the dataset's own, or 10% of train held out by
a fixed hash of the example id when it has none; never test); `test`.
Training fractions apply to train only and pick nested, method-independent
subsets (see `dss_jax.preprocessors`). Evaluation splits always score against
the gold label.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from dss_jax import (
  cards,
  errors,
  metrics,
  paired,
  preprocessors,
  step,
  vocab,
)
from dss_jax.teacher import sources

DATASET_NAME = "dss_annotated"
SPLITS = ("train", "validation", "test")
# As the official code: 10% of train becomes validation where a dataset has no
# validation split. Its seed is fixed, so validation never changes with the
# fraction or its seed.
VALIDATION_HOLDOUT = 0.1
HOLDOUT_SEED = 0
LABEL_SOURCES = ("gold", "teacher")


@dataclasses.dataclass(frozen=True)
class DataOptions:
  """What a run trains on; see `options` for the meaning of each field."""

  rationale_rate: float = 1.0
  label_source: str = "gold"
  train_fraction: float = 1.0
  fraction_seed: int = 0

  def __post_init__(self):
    if not step.valid_rationale_rate(self.rationale_rate):
      raise errors.UserError(
        f"rationale_rate (lambda) must be {step.RATIONALE_RATE_RULE}, got "
        f"{self.rationale_rate!r}"
      )
    if self.label_source not in LABEL_SOURCES:
      raise errors.UserError(
        f"label_source must be one of {LABEL_SOURCES}, "
        f"got {self.label_source!r}"
      )
    if not 0.0 < self.train_fraction <= 1.0:
      raise ValueError(
        f"train_fraction must be in (0, 1], got {self.train_fraction}"
      )


@gin.configurable(module="dss_jax.seqio_tasks")
def options(
  rationale_rate: float = 1.0,
  label_source: str = "gold",
  train_fraction: float = 1.0,
  fraction_seed: int = 0,
) -> DataOptions:
  """The run's data options, as bound in gin (called when data is built).

  Args:
    rationale_rate: lambda, the mixture rate of the rationale task (the label
      task's rate is 1). With per-sequence loss normalization, lambda weighs
      the rationale loss against the label loss as in the paper.
    label_source: "gold" (the paper's GT-label setting) or "teacher" (the
      LLM-label setting) for the `_label` task's training targets.
    train_fraction: share of the training split, e.g. 0.125 ... 1.0.
    fraction_seed: seed of the subset; the same for every method.

  Returns:
    The validated options.
  """
  return DataOptions(
    rationale_rate, label_source, train_fraction, fraction_seed
  )


@dataclasses.dataclass(frozen=True)
class _Overrides:
  """Options fixed at registration; None fields follow gin at build time."""

  rationale_rate: float | None = None
  label_source: str | None = None
  train_fraction: float | None = None
  fraction_seed: int | None = None

  def resolve(self) -> DataOptions:
    bound = options()
    return DataOptions(
      *(
        getattr(bound, f.name)
        if getattr(self, f.name) is None
        else getattr(self, f.name)
        for f in dataclasses.fields(DataOptions)
      )
    )


@dataclasses.dataclass(frozen=True)
class Registration:
  """What `register_card` registered for one (card, source).

  Attributes:
    card: the card's name.
    card_path: the card file it was loaded from.
    source: the annotation source.
    data_dir: the TFDS data dir given at registration (None: resolved when
      data is read, see `resolve_data_dir`).
    tasks: the registered task names.
    mixture: the mixture's name.
    paired_task: the official recipe's task (one of `tasks`): each example
      one input with its label and rationale (`dss_jax.paired`).
  """

  card: str
  card_path: str
  source: str
  data_dir: str | None
  tasks: tuple[str, ...]
  mixture: str
  paired_task: str


# Mixture name -> its registration, in registration order.
_REGISTERED: dict[str, Registration] = {}


def registrations() -> list[Registration]:
  """Every (card, source) registered in this process, oldest first."""
  return list(_REGISTERED.values())


def paired_task(mixture: str) -> str | None:
  """The paired task registered with a DSS mixture; None for another name.

  Both trainers' official recipe reads it: T5X as its task, the built-in
  input pipeline to feed both halves of each input into one step.
  """
  registration = _REGISTERED.get(mixture)
  return registration.paired_task if registration else None


class DatasetNotFoundError(errors.MissingFileError):
  """The annotated TFDS dataset of a (card, source) has not been built."""


def _build_commands(card: str, source: str, data_dir: str) -> str:
  if source == sources.PALM_SOURCE:
    return (
      f"  DSS_PAPER_DATA_DIR=<paper data> python -m dss_jax.datasets "
      f"--card={card} --source={source} --data_dir={data_dir}\n"
      f"or: tfds build {DATASET_NAME} --imports=dss_jax.datasets "
      f"--config={card}_{source} --data_dir={data_dir}\n"
      "or in Python: dss_jax.datasets.build_annotated("
      f"{card!r}, {source!r}, data_dir={data_dir!r})"
    )
  return (
    f"  python -m dss_jax.annotate --task_card={card} "
    f"--teacher_source={source} --teacher=... --teacher_model=... "
    f"--build_tfds --data_dir={data_dir}\n"
    "or, when its annotation store exists: dss_jax.datasets.build_annotated("
    f"{card!r}, {source!r}, data_dir={data_dir!r})"
  )


def resolve_data_dir(data_dir: str | None = None) -> str:
  """The TFDS data dir: explicit, else T5X's `--tfds_data_dir`, else TFDS's.

  Args:
    data_dir: an explicit folder, or None.

  Returns:
    The folder to read `dss_annotated` from.
  """
  if data_dir:
    return os.fspath(data_dir)
  # Set by T5X's --tfds_data_dir (seqio.set_tfds_data_dir_override).
  override = getattr(seqio.utils, "_TFDS_DATA_DIR_OVERRIDE", None)
  if override:
    return override
  return os.environ.get("TFDS_DATA_DIR") or os.path.join(
    os.path.expanduser("~"), "tensorflow_datasets"
  )


def _version_key(name: str) -> tuple[int, ...]:
  try:
    return tuple(int(p) for p in name.split("."))
  except ValueError:
    return (-1,)


def dataset_dir(card: str, source: str, data_dir: str | None = None) -> str:
  """The newest prepared version folder of `dss_annotated/<card>_<source>`.

  Args:
    card: card name.
    source: annotation source.
    data_dir: TFDS data dir (see `resolve_data_dir`).

  Returns:
    `<data_dir>/dss_annotated/<card>_<source>/<version>`.

  Raises:
    DatasetNotFoundError: naming the command that builds it.
  """
  root = resolve_data_dir(data_dir)
  config_dir = os.path.join(root, DATASET_NAME, f"{card}_{source}")
  versions = []
  if tf.io.gfile.isdir(config_dir):
    versions = [
      v.rstrip("/")
      for v in tf.io.gfile.listdir(config_dir)
      if tf.io.gfile.exists(
        os.path.join(config_dir, v.rstrip("/"), "dataset_info.json")
      )
    ]
  if not versions:
    raise DatasetNotFoundError(
      f"TFDS dataset {DATASET_NAME}/{card}_{source} is not built in {root}. "
      f"Create it with:\n{_build_commands(card, source, root)}"
    )
  return os.path.join(config_dir, max(versions, key=_version_key))


@functools.lru_cache(maxsize=32)
def _builder(path: str) -> tfds.core.DatasetBuilder:
  # From the folder, not the registered class: sources added by annotation
  # runs have configs the code does not know.
  return tfds.builder_from_directory(path)


@functools.lru_cache(maxsize=64)
def _split_keys(path: str, split: str, seed: int, salt: int) -> np.ndarray:
  """Hash keys of every example id of a split (one pass, cached)."""
  ids = _builder(path).as_dataset(split=split, shuffle_files=False)
  ids = ids.map(lambda ex: ex["id"]).batch(4096)
  keys = [preprocessors.hash_keys(batch, seed, salt).numpy() for batch in ids]
  return np.concatenate(keys) if keys else np.zeros([0], np.int64)


def _read_split(
  path: str, split: str, opts: DataOptions, shuffle_files: bool, seed
) -> tf.data.Dataset:
  """Reads one exposed split: own validation or hold-out, then the fraction."""
  builder = _builder(path)
  own_splits = set(builder.info.splits.keys())
  read_config = tfds.ReadConfig(shuffle_seed=seed)

  def load(name: str) -> tf.data.Dataset:
    if name not in own_splits:
      raise errors.UserError(
        f"{path} has no {name!r} split (it has {sorted(own_splits)})"
      )
    return builder.as_dataset(
      split=name, shuffle_files=shuffle_files, read_config=read_config
    )

  if split == "test":
    return load("test")
  has_validation = "validation" in own_splits
  if split == "validation" and has_validation:
    return load("validation")
  ds = load("train")
  holdout = None
  if not has_validation:
    holdout = preprocessors.rank_threshold(
      _split_keys(path, "train", HOLDOUT_SEED, preprocessors.HOLDOUT_SALT),
      VALIDATION_HOLDOUT,
    )
    ds = preprocessors.filter_by_key(
      ds,
      holdout,
      HOLDOUT_SEED,
      preprocessors.HOLDOUT_SALT,
      keep_below=split == "validation",
    )
  if split == "validation" or opts.train_fraction == 1.0:
    return ds
  keys = _split_keys(
    path, "train", opts.fraction_seed, preprocessors.FRACTION_SALT
  )
  if holdout is not None:
    # The fraction is of the examples left for training after the hold-out.
    held = _split_keys(path, "train", HOLDOUT_SEED, preprocessors.HOLDOUT_SALT)
    keys = keys[held > holdout]
  threshold = preprocessors.rank_threshold(keys, opts.train_fraction)
  return preprocessors.filter_by_key(
    ds, threshold, opts.fraction_seed, preprocessors.FRACTION_SALT
  )


@dataclasses.dataclass(frozen=True)
class _AnnotatedSource:
  """`seqio.FunctionDataSource` function for one task's (input, target)."""

  card: str
  source: str
  data_dir: str | None
  # "label" (gold or teacher per options), "gold", "teacher" or "rationale".
  target: str
  overrides: _Overrides

  def __call__(
    self, split: str, shuffle_files: bool, seed: int | None = None
  ) -> tf.data.Dataset:
    opts = self.overrides.resolve()
    path = dataset_dir(self.card, self.source, self.data_dir)
    ds = _read_split(path, split, opts, shuffle_files, seed)
    kind = self.target
    if kind == "label":
      kind = opts.label_source
    if split != "train" and kind != "rationale":
      # Evaluation is against the gold label in every setting, as in the paper.
      kind = "gold"
    return preprocessors.select_target(ds, kind)


@dataclasses.dataclass(frozen=True)
class _RationaleRate:
  """Mixture rate of the rationale task, read when the mixture is sampled."""

  overrides: _Overrides

  def __call__(self, task: seqio.Task) -> float:
    del task
    return self.overrides.resolve().rationale_rate


def _output_features(vocabulary: seqio.Vocabulary | None) -> dict:
  vocabulary = vocabulary or vocab.ConfiguredVocabulary()
  return {
    "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True),
    "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
  }


def _add_task(
  name: str,
  source_fn: _AnnotatedSource,
  prefix: str,
  features: dict,
  metric_fns: Sequence[Callable[..., dict]],
) -> None:
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
    name,
    source=seqio.FunctionDataSource(
      dataset_fn=source_fn,
      splits=SPLITS,
      # The hold-out and fractions are computed from TFDS; no offline cache.
      caching_permitted=False,
    ),
    preprocessors=[
      functools.partial(preprocessors.add_prefix_and_target, prefix=prefix),
      # SeqIO's tokenize, except that "</s>" in an input is the EOS id (the
      # NLI cards' premise</s>hypothesis, as the official code feeds them).
      preprocessors.tokenize_at_eos,
      seqio.preprocessors.append_eos_after_trim,
    ],
    output_features=features,
    postprocess_fn=metrics.postprocess_text,
    metric_fns=list(metric_fns),
  )


def _add_paired_task(
  name: str,
  card: str,
  source: str,
  data_dir: str | None,
  overrides: _Overrides,
  vocabulary: seqio.Vocabulary | None,
  metric_fns: Sequence[Callable[..., dict]],
) -> None:
  """Registers the official recipe's task: each example holds both halves.

  Its training labels follow `label_source` as the `_label` task's do; see
  `dss_jax.paired` for the features and `dss_jax.t5x_official` for the loss.
  """

  def examples(split, shuffle_files, seed=None):
    opts = overrides.resolve()
    path = dataset_dir(card, source, data_dir)
    ds = _read_split(path, split, opts, shuffle_files, seed)
    kind = opts.label_source if split == "train" else "gold"
    return paired.select_paired_targets(ds, kind)

  features = _output_features(vocabulary)
  for key in paired.TASK_FEATURES:
    features[paired.RATIONALE + key] = features[key]
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
    name,
    source=seqio.FunctionDataSource(
      dataset_fn=examples, splits=SPLITS, caching_permitted=False
    ),
    preprocessors=[
      functools.partial(
        paired.add_paired_prefixes,
        label_prefix=cards.LABEL_PREFIX,
        rationale_prefix=cards.RATIONALE_PREFIX,
      ),
      preprocessors.tokenize_at_eos,
      paired.append_eos_after_trim,
    ],
    output_features=features,
    postprocess_fn=metrics.postprocess_text,
    metric_fns=list(metric_fns),
  )


def register_card(
  card: str,
  source: str,
  *,
  data_dir: str | None = None,
  vocabulary: seqio.Vocabulary | None = None,
  label_source: str | None = None,
  rationale_rate: float | None = None,
  train_fraction: float | None = None,
  fraction_seed: int | None = None,
) -> list[str]:
  """Registers the DSS tasks, mixture and baselines of one card and source.

  Nothing is read here: the dataset is opened when a split is requested, so
  a source can be registered before its dataset is built. Options left as
  None follow the gin-bound `options()` at that time (defaults: gold labels,
  lambda 1, all of train, seed 0).

  Args:
    card: a task card name (e.g. "cqa") or the path of a card file; its
      `metric` picks the label metric and its `name` the task names.
    source: the annotation source (e.g. "palm", "gemini_2_5_flash").
    data_dir: TFDS data dir; None resolves it when data is read.
    vocabulary: fixed vocabulary; None uses `dss_jax.vocab.get_vocabulary()`
      as bound in gin when the vocabulary is first used.
    label_source: "gold" or "teacher" for the `_label` task's training targets.
    rationale_rate: lambda, the rationale task's mixture rate.
    train_fraction: share of train, in (0, 1].
    fraction_seed: seed of the training subset.

  Returns:
    The registered names: label task, rationale task, mixture, gold finetune
    baseline, distill baseline.

  Raises:
    ValueError: for an invalid option.
  """
  overrides = _Overrides(
    rationale_rate, label_source, train_fraction, fraction_seed
  )
  # Fails now, not at training time, for explicit options that are invalid.
  DataOptions(
    *(
      getattr(overrides, f.name)
      if getattr(overrides, f.name) is not None
      else f.default
      for f in dataclasses.fields(DataOptions)
    )
  )
  task_card = cards.load_card(card)
  card = task_card.name
  features = _output_features(vocabulary)
  label_metrics = metrics.metric_fns_for(task_card.metric)
  base = f"dss_{card}_{source}"
  names = {
    "label": f"{base}_label",
    "rationale": f"{base}_rationale",
    "mixture": base,
    "gold": f"dss_{card}_gold_finetune",
    "teacher": f"{base}_distill",
    "paired": f"{base}_paired",
  }

  def source_fn(target: str) -> _AnnotatedSource:
    return _AnnotatedSource(card, source, data_dir, target, overrides)

  _add_task(
    names["label"],
    source_fn("label"),
    cards.LABEL_PREFIX,
    features,
    label_metrics,
  )
  _add_task(
    names["rationale"],
    source_fn("rationale"),
    cards.RATIONALE_PREFIX,
    features,
    [metrics.rationale_rouge_l],
  )
  _add_task(names["gold"], source_fn("gold"), "", features, label_metrics)
  _add_task(names["teacher"], source_fn("teacher"), "", features, label_metrics)
  _add_paired_task(
    names["paired"],
    card,
    source,
    data_dir,
    overrides,
    vocabulary,
    label_metrics,
  )
  if base in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(base)
  # A lambda given here (the main job's, from its step config) is the rate,
  # fixed now; otherwise the gin-bound `options()` when SeqIO samples (T5X).
  rate = _RationaleRate(overrides) if rationale_rate is None else rationale_rate
  seqio.MixtureRegistry.add(
    base, [(names["label"], 1.0), (names["rationale"], rate)]
  )
  _REGISTERED.pop(base, None)
  _REGISTERED[base] = Registration(
    card=card,
    card_path=str(task_card.path),
    source=source,
    data_dir=data_dir,
    tasks=(
      names["label"],
      names["rationale"],
      names["paired"],
      names["gold"],
      names["teacher"],
    ),
    mixture=base,
    paired_task=names["paired"],
  )
  return [
    names[k] for k in ("label", "rationale", "mixture", "gold", "teacher")
  ]


def built_sources(
  card_names: Sequence[str], data_dir: str | None = None
) -> list[tuple[str, str]]:
  """The (card, source) pairs that have a dataset in the TFDS data dir.

  Args:
    card_names: the cards to look for.
    data_dir: TFDS data dir (see `resolve_data_dir`).

  Returns:
    Sorted (card, source) pairs.
  """
  root = os.path.join(resolve_data_dir(data_dir), DATASET_NAME)
  if not tf.io.gfile.isdir(root):
    return []
  pairs = []
  for entry in tf.io.gfile.listdir(root):
    entry = entry.rstrip("/")
    # "<card>_<source>": the longest card name wins, so a card "cqa_v2" is
    # not read as card "cqa" with source "v2_...".
    matches = [c for c in card_names if entry.startswith(f"{c}_")]
    if matches:
      card = max(matches, key=len)
      pairs.append((card, entry[len(card) + 1 :]))
  return sorted(pairs)


def _register_sources(
  card_files: Sequence[str],
  card_names: Sequence[str],
  data_dir: str | None,
  scan: bool = True,
) -> list[str]:
  """Registers each card's built sources, then `palm` for paper cards.

  Args:
    card_files: the cards (names or paths), parallel to `card_names`.
    card_names: their names, as the TFDS configs carry them.
    data_dir: TFDS data dir to scan (see `resolve_data_dir`).
    scan: look for built sources in the data dir (False: `palm` only).

  Returns:
    All registered names.
  """
  file_of = dict(zip(card_names, card_files, strict=True))
  pairs = []
  if scan:
    # Every known name takes part in the match, so that a user's card
    # "cqa_v2" is not read as card "cqa" with source "v2_...".
    known = {*card_names, *cards.list_cards(), *_user_card_names()}
    pairs = [
      p
      for p in built_sources(sorted(known), data_dir)
      if p[0] in file_of and p[1] != sources.PALM_SOURCE
    ]
  # palm last: `dss_<card>_gold_finetune` follows the latest registration and
  # should read the paper's complete datasets where they exist. Only cards
  # whose data the paper released have a palm source.
  pairs += [
    (name, sources.PALM_SOURCE)
    for name in card_names
    if cards.load_card(file_of[name]).source.paper_folder
  ]
  names = []
  for name, source in pairs:
    names += register_card(file_of[name], source, data_dir=data_dir)
  return names


def _user_card_names() -> list[str]:
  """Names of the cards in `DSS_TASK_CARDS`; none if they fail to load."""
  try:
    return [c.name for c in cards.user_cards()]
  except cards.CardError:
    return []  # reported by `register_user_cards`


def register_builtin(data_dir: str | None = None) -> list[str]:
  """Registers the built-in cards: `palm` (paper cards) and built sources.

  Args:
    data_dir: TFDS data dir to scan (see `resolve_data_dir`).

  Returns:
    All registered names.
  """
  card_names = cards.list_cards()
  return _register_sources(card_names, card_names, data_dir)


def register_user_cards(
  spec: str | None = None,
  data_dir: str | None = None,
  origin: str = cards.TASK_CARDS_ENV,
) -> list[str]:
  """Registers the cards of `DSS_TASK_CARDS`, as the built-in ones are.

  Args:
    spec: card files or folders, ":"-separated; None reads `$DSS_TASK_CARDS`.
    data_dir: TFDS data dir to scan for built sources.
    origin: where `spec` came from (a variable or a flag), for errors.

  Returns:
    All registered names.

  Raises:
    cards.CardError: a path that does not exist (naming `origin`), a card
      that fails to load (its file and line), or a card whose name is a
      built-in card's or another card's (both files named).
  """
  user_cards = cards.user_cards(spec, origin)
  if not user_cards:
    return []
  card_files = [str(c.path) for c in user_cards]
  card_names = [c.name for c in user_cards]
  try:
    return _register_sources(card_files, card_names, data_dir)
  except cards.CardError:
    raise
  except Exception as e:  # noqa: BLE001 (a broken data dir: see below)
    # As for the built-in cards, an unreadable data dir must not stop the
    # import: the palm source (if any) is registered without scanning it.
    logging.warning(
      "dss_jax.seqio_tasks: no sources of %s from the TFDS data dir: %s",
      ", ".join(card_names),
      e,
    )
    return _register_sources(card_files, card_names, data_dir, scan=False)


try:
  register_builtin()
except Exception as e:
  # Importing must not fail on a broken data dir or card; users still get
  # `register_card` and a clear error when they ask for a missing task.
  logging.warning("dss_jax.seqio_tasks: built-in registration failed: %s", e)
# Not guarded: a card of the user's that does not load is an error now, with
# its file and line, rather than an unknown task later.
register_user_cards()
