"""Vocabularies for the DSS tasks and models, selectable by name from gin.

`get_vocabulary(name)` is gin-configurable, so one binding picks the
vocabulary of both the SeqIO tasks and the model:

    dss_jax.vocab.get_vocabulary.name = "byte"

Names:

* `"t5"` (default): the T5 / T5 v1.1 SentencePiece model on GCS
  (`T5_SPM_PATH`), whose 32,100 pieces already hold the 100 sentinels (so no
  extra ids are added, as in T5X's gin files); the T5X checkpoints' embedding
  tables pad it to 32,128 rows. Needs access to `gs://t5-data`.
* `"byte"`: `seqio.ByteVocabulary()`, no files at all (tests, the demo).
* `"local"`: a SentencePiece model trained here on the text of the released
  paper data (`$DSS_PAPER_DATA_DIR`), cached; for machines without GCS.
* any other string: a path to a SentencePiece `.model` file, local or
  `gs://`. A model that holds T5's sentinels (`<extra_id_0>` ..., as
  `T5_SPM_PATH` and a local copy of it do) gets no extra ids; any other gets
  T5's 100 appended.

The model gin files (`gin_configs/models/t5_1_1_*.gin`, `flan_t5_*.gin` and
`gin_configs/t5x/models/student.gin`) bind the name to one macro,
`VOCABULARY_PATH`, whose default is `T5_SPM_PATH`; offline, copy the file and
pass `--gin.VOCABULARY_PATH="/path/to/sentencepiece.model"`. A SentencePiece
model that cannot be read stops with one `errors.UserError` naming that macro,
when it is first used (SeqIO reads the file lazily), not at construction.

`train_sentencepiece(texts, model_path)` trains such a model on any text.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import pathlib
from collections.abc import Iterable, Iterator

import gin
import sentencepiece as spm
import seqio
import tensorflow as tf

from dss_jax import errors

T5_SPM_PATH = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
# T5's sentinel ids (<extra_id_0> ... <extra_id_99>). The GCS model of
# `T5_SPM_PATH` ("100extra") already contains them, so it takes none on top;
# models trained here have 8,000 plain pieces and get the 100 appended.
T5_EXTRA_IDS = 100
# Local models: big enough for English rationales, small enough to train in
# seconds on the paper's few megabytes of text.
LOCAL_VOCAB_SIZE = 8_000


def _cache_dir() -> pathlib.Path:
  root = os.environ.get("DSS_CACHE_DIR") or os.path.join(
    os.path.expanduser("~"), ".cache", "dss_jax"
  )
  return pathlib.Path(root) / "vocab"


@gin.configurable(module="dss_jax.vocab")
def get_vocabulary(name: str = "t5") -> seqio.Vocabulary:
  """Returns the vocabulary called `name`.

  Args:
    name: `"t5"`, `"byte"`, `"local"` or a path to a SentencePiece model.

  Returns:
    A `seqio.Vocabulary`. Calls with the same name return the same object, so
    tasks and models built from one name compare equal.

  Raises:
    FileNotFoundError: for a path that does not exist, or `"local"` without
      `$DSS_PAPER_DATA_DIR`.
  """
  return _vocabulary(name)


@functools.cache
def _vocabulary(name: str) -> seqio.Vocabulary:
  if name in ("t5", T5_SPM_PATH):
    # SentencePieceVocabulary reads the model lazily, on first use, so naming
    # the GCS default costs nothing where it is never used.
    return SentencePieceVocabulary(T5_SPM_PATH, extra_ids=0)
  if name == "byte":
    return seqio.ByteVocabulary()
  if name == "local":
    return local_vocabulary()
  if "://" not in name and not os.path.exists(name):
    raise errors.MissingFileError(
      f"vocabulary {name!r} (VOCABULARY_PATH) is neither 't5', 'byte', "
      "'local' nor an existing SentencePiece model file"
    )
  try:
    extra_ids = 0 if _has_sentinels(_read_model(name)) else T5_EXTRA_IDS
  except RuntimeError as e:  # sentencepiece's parse error
    raise errors.UserError(
      f"vocabulary {name} is not a SentencePiece model (it does not parse); "
      "give a model file that sentencepiece trained, 't5' or 'byte'"
    ) from e
  return SentencePieceVocabulary(name, extra_ids=extra_ids)


def _unreadable(path: str, reason: object) -> errors.UserError:
  """The one line for a SentencePiece model that cannot be read."""
  copy = ""
  if path.startswith("gs://"):
    copy = f"copy it to this machine (gcloud storage cp {path} .) and "
  return errors.UserError(
    f"cannot read the vocabulary {path} ({str(reason).splitlines()[0]}); "
    f"{copy}point the gin macro VOCABULARY_PATH at a readable SentencePiece "
    'model: --gin.VOCABULARY_PATH="/path/to/sentencepiece.model" (T5X: '
    "--gin.VOCABULARY_PATH=\"'/path/to/sentencepiece.model'\"), or at "
    '"byte" for a model trained with the byte vocabulary'
  )


def _read_model(path: str) -> bytes:
  """The bytes of a SentencePiece model file, local or on GCS.

  Raises:
    errors.UserError: the file cannot be read (no network, no access).
  """
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      return f.read()
  except (tf.errors.OpError, OSError) as e:
    raise _unreadable(path, e) from e


def _has_sentinels(model: bytes) -> bool:
  """Whether a SentencePiece model already holds T5's `<extra_id_0>`."""
  processor = spm.SentencePieceProcessor(model_proto=model)
  return processor.piece_to_id("<extra_id_0>") != processor.unk_id()


class SentencePieceVocabulary(seqio.SentencePieceVocabulary):
  """SeqIO's SentencePiece vocabulary, with one line for an unreadable file.

  SeqIO reads the model on first use, deep inside a data pipeline or a
  model's construction; offline, a `gs://` model then fails with a network
  traceback. This names the file and the macro that points elsewhere.
  """

  def _model_context(self):
    try:
      return super()._model_context()
    except (tf.errors.OpError, OSError) as e:
      raise _unreadable(self.sentencepiece_model_file, e) from e


def train_sentencepiece(
  texts: Iterable[str],
  model_path: str | os.PathLike[str],
  vocab_size: int = LOCAL_VOCAB_SIZE,
) -> pathlib.Path:
  """Trains a T5-style SentencePiece model (unigram) on `texts`.

  Ids follow T5's convention, which SeqIO and the models assume: pad 0,
  eos 1, unk 2, no bos.

  Args:
    texts: training sentences.
    model_path: where to write the `.model` file (its folder is created).
    vocab_size: number of pieces.

  Returns:
    The path of the written model.
  """
  model_path = pathlib.Path(model_path)
  model_path.parent.mkdir(parents=True, exist_ok=True)
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(texts),
    model_writer=model,
    vocab_size=vocab_size,
    model_type="unigram",
    pad_id=0,
    eos_id=1,
    unk_id=2,
    bos_id=-1,
    character_coverage=1.0,
    # Unknown sizes of real text: let the trainer shrink instead of failing.
    hard_vocab_limit=False,
    minloglevel=2,
  )
  # Written in one go so a concurrent reader never sees half a file.
  tmp = model_path.with_suffix(f".tmp{os.getpid()}")
  tmp.write_bytes(model.getvalue())
  tmp.replace(model_path)
  return model_path


def _lines(text: str) -> Iterator[str]:
  return (line for line in text.splitlines() if line.strip())


def _paper_texts(data_dir: pathlib.Path) -> Iterator[str]:
  """The text of the paper's examples and teacher completions, by line."""
  for path in sorted(data_dir.glob("*/*.json")):
    with path.open(encoding="utf-8") as f:
      for line in f:
        for value in json.loads(line).values():
          values = value if isinstance(value, list) else [value]
          for v in values:
            if isinstance(v, str):
              yield from _lines(v)
  # Teacher completions: the rationales the student learns to write.
  for path in sorted(data_dir.glob("*/llm/*.json")):
    for completion in json.loads(path.read_text(encoding="utf-8")):
      yield from _lines(completion)


def local_vocabulary(
  data_dir: str | os.PathLike[str] | None = None,
  vocab_size: int = LOCAL_VOCAB_SIZE,
) -> SentencePieceVocabulary:
  """A SentencePiece vocabulary trained on the released paper data, cached.

  The model is trained once per (data, size) and kept under
  `$DSS_CACHE_DIR/vocab` (default `~/.cache/dss_jax/vocab`).

  Args:
    data_dir: a folder in the paper's data layout; `$DSS_PAPER_DATA_DIR` when
      None.
    vocab_size: number of pieces (100 sentinel ids are added on top).

  Returns:
    The vocabulary.

  Raises:
    FileNotFoundError: when no data folder is given or found.
  """
  data_dir = data_dir or os.environ.get("DSS_PAPER_DATA_DIR")
  if not data_dir or not pathlib.Path(data_dir).is_dir():
    raise errors.MissingFileError(
      "the 'local' vocabulary trains on the paper data: set DSS_PAPER_DATA_DIR "
      "to its folder, or call dss_jax.vocab.train_sentencepiece on your own "
      "text and pass the .model path as the vocabulary name"
    )
  data_dir = pathlib.Path(data_dir)
  files = sorted(data_dir.glob("*/*.json")) + sorted(
    data_dir.glob("*/llm/*.json")
  )
  key = hashlib.sha256()
  for path in files:
    key.update(f"{path.relative_to(data_dir)}:{path.stat().st_size}".encode())
  key.update(str(vocab_size).encode())
  model_path = _cache_dir() / f"local_{vocab_size}_{key.hexdigest()[:12]}.model"
  if not model_path.exists():
    train_sentencepiece(_paper_texts(data_dir), model_path, vocab_size)
  return SentencePieceVocabulary(str(model_path), extra_ids=T5_EXTRA_IDS)


class ConfiguredVocabulary(seqio.Vocabulary):
  """The vocabulary `get_vocabulary()` gives at the time of use.

  SeqIO wants a vocabulary object when a task is registered, but tasks are
  registered when `dss_jax.seqio_tasks` is imported, before gin has parsed
  the bindings that follow the import. This stand-in asks gin on every use,
  so `dss_jax.vocab.get_vocabulary.name = "byte"` (in a gin file or on the
  command line) switches the registered tasks and a model built with
  `@dss_jax.vocab.get_vocabulary()` together. It compares equal to the
  vocabulary it stands for, so T5X's task/model vocabulary check passes.
  """

  def __init__(self):
    super().__init__(extra_ids=0)

  @property
  def resolved(self) -> seqio.Vocabulary:
    """The vocabulary currently selected in gin."""
    return get_vocabulary()

  @property
  def bos_id(self) -> int | None:
    return self.resolved.bos_id

  @property
  def eos_id(self) -> int | None:
    return self.resolved.eos_id

  @property
  def pad_id(self) -> int:
    return self.resolved.pad_id

  @property
  def unk_id(self) -> int | None:
    return self.resolved.unk_id

  @property
  def extra_ids(self) -> int:
    return self.resolved.extra_ids

  @property
  def vocab_size(self) -> int:
    return self.resolved.vocab_size

  @property
  def _base_vocab_size(self) -> int:
    return self.resolved._base_vocab_size

  def _encode(self, s):
    return self.resolved._encode(s)

  def _decode(self, ids):
    return self.resolved._decode(ids)

  def _encode_tf(self, s):
    return self.resolved._encode_tf(s)

  def _decode_tf(self, ids):
    return self.resolved._decode_tf(ids)

  # The public methods delegate whole, so a subclass's own encode/decode
  # (SentencePiece's handling of extra ids, for one) is kept.
  def encode(self, s):
    return self.resolved.encode(s)

  def decode(self, ids):
    return self.resolved.decode(ids)

  def encode_tf(self, s):
    return self.resolved.encode_tf(s)

  def decode_tf(self, ids):
    return self.resolved.decode_tf(ids)

  def __getattr__(self, name: str):
    # Vocabulary-specific attributes (e.g. `sp_model`, `tokenizer`).
    if name.startswith("__"):
      raise AttributeError(name)
    return getattr(self.resolved, name)

  def __eq__(self, other: object) -> bool:
    if isinstance(other, ConfiguredVocabulary):
      other = other.resolved
    return self.resolved == other

  def __hash__(self) -> int:
    # The resolved vocabulary may define __eq__ without __hash__.
    return hash(id(self.resolved))

  def __repr__(self) -> str:
    return f"ConfiguredVocabulary({self.resolved!r})"


VOCABULARY_FILE = "vocabulary.json"


def identity(vocabulary: seqio.Vocabulary) -> dict[str, object]:
  """What makes two vocabularies tokenize alike: kind, size, pieces.

  Args:
    vocabulary: any SeqIO vocabulary (a `ConfiguredVocabulary` is resolved).

  Returns:
    {"kind", "vocab_size", "extra_ids", "sha256"}: the class name, the id
    count, the extra ids and, for SentencePiece, a hash of the model's bytes
    (its pieces); None where the class has no model file.
  """
  if isinstance(vocabulary, ConfiguredVocabulary):
    vocabulary = vocabulary.resolved
  model = getattr(vocabulary, "sp_model", None)
  return {
    "kind": type(vocabulary).__name__,
    "vocab_size": int(vocabulary.vocab_size),
    "extra_ids": int(vocabulary.extra_ids),
    "sha256": hashlib.sha256(model).hexdigest() if model else None,
  }


def describe(ident: dict[str, object]) -> str:
  """A short readable name of a vocabulary identity."""
  digest = f", pieces {str(ident['sha256'])[:8]}" if ident.get("sha256") else ""
  return f"{ident['kind']} of {ident['vocab_size']} ids{digest}"


def check_same(
  trained: dict[str, object], used: seqio.Vocabulary, what: str
) -> None:
  """Refuses a vocabulary that differs from the one a model was trained on.

  Args:
    trained: the identity stored with the checkpoints.
    used: the vocabulary about to tokenize for that model.
    what: who uses it, for the message.

  Raises:
    errors.UserError: one line naming both vocabularies.
  """
  ident = identity(used)
  if ident != trained:
    raise errors.UserError(
      f"{what} uses a {describe(ident)}, but the checkpoint was trained "
      f"with a {describe(trained)}; score it with its training vocabulary "
      '(the gin macro VOCABULARY_PATH of the model files: "byte", or the '
      "SentencePiece model file; or dss_jax.vocab.get_vocabulary.name)"
    )


def read_identity(model_dir: str) -> dict[str, object] | None:
  """The vocabulary identity a model dir was trained with, if recorded."""
  path = os.path.join(model_dir, VOCABULARY_FILE)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    text = f.read()
  try:
    ident = json.loads(text)
  except json.JSONDecodeError as e:
    ident = e
  if not isinstance(ident, dict) or "vocab_size" not in ident:
    raise errors.UserError(
      f"{path}: not a vocabulary record ({ident}); restore it from the "
      "run that trained this model, or delete it to trust the vocabulary "
      "given now"
    )
  return ident


def write_identity(model_dir: str, vocabulary: seqio.Vocabulary) -> None:
  """Records the training vocabulary in a model dir, or refuses a change.

  Raises:
    errors.UserError: the model dir was trained with another vocabulary.
  """
  stored = read_identity(model_dir)
  if stored is not None:
    check_same(stored, vocabulary, f"training in {model_dir}")
    return
  tf.io.gfile.makedirs(model_dir)
  with tf.io.gfile.GFile(os.path.join(model_dir, VOCABULARY_FILE), "w") as f:
    json.dump(identity(vocabulary), f, indent=2)
