"""Tests for dss_jax.vocab: named vocabularies, local SentencePiece, gin.

Also the model gin files' one vocabulary macro, VOCABULARY_PATH, and the one
`error:` line of an unreadable vocabulary through `python -m dss_jax.train`.
"""

import io
import os
import subprocess
import sys

import gin
import pytest
import sentencepiece as spm
import seqio

from dss_jax import errors, gin_flags, vocab

_SIZED_MODELS = [
  f"models/{family}_{size}.gin"
  for family in ("t5_1_1", "flan_t5")
  for size in ("small", "base", "large", "xl", "xxl")
]


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  gin.clear_config()


def test_byte_vocabulary_is_shared():
  byte = vocab.get_vocabulary("byte")
  assert isinstance(byte, seqio.ByteVocabulary)
  assert vocab.get_vocabulary("byte") is byte
  assert byte.encode("ab") == [100, 101]


def test_t5_vocabulary_is_the_gcs_model_without_loading_it():
  t5 = vocab.get_vocabulary()
  assert isinstance(t5, seqio.SentencePieceVocabulary)
  assert t5.sentencepiece_model_file == vocab.T5_SPM_PATH
  # The "100extra" model holds its sentinels: 32,100 ids, under the 32,128
  # embedding rows of the T5X checkpoints.
  assert t5.extra_ids == 0


def test_unknown_path_raises(tmp_path):
  with pytest.raises(FileNotFoundError, match="neither 't5', 'byte'"):
    vocab.get_vocabulary(str(tmp_path / "missing.model"))


def test_a_file_that_is_not_a_sentencepiece_model_is_one_user_error(tmp_path):
  junk = tmp_path / "junk.model"
  junk.write_bytes(b"\x00not a model")
  with pytest.raises(errors.UserError, match="is not a SentencePiece model"):
    vocab.get_vocabulary(str(junk))


def test_train_sentencepiece_follows_t5_ids(tmp_path):
  texts = [
    "The answer must be something that is in the water.",
    "Of the above choices, only being clear is in the water.",
    "Luke scored 84 points after 2 rounds, so 84 / 2 = 42.",
  ] * 20
  path = vocab.train_sentencepiece(texts, tmp_path / "spm" / "tiny.model", 60)
  sp = vocab.get_vocabulary(str(path))
  assert (sp.pad_id, sp.eos_id, sp.unk_id) == (0, 1, 2)
  assert sp.extra_ids == 100
  ids = sp.encode("only being clear")
  assert sp.decode(ids) == "only being clear"
  assert 1 not in ids


def test_local_vocabulary_is_cached(paper_data_dir, tmp_path, monkeypatch):
  monkeypatch.setenv("DSS_CACHE_DIR", str(tmp_path))
  small = paper_data_dir / "anli1_sample"
  # A copy of one small folder keeps the training to a fraction of a second.
  data = tmp_path / "data" / "anli1_sample"
  data.mkdir(parents=True)
  for f in small.glob("*.json"):
    (data / f.name).write_bytes(f.read_bytes())
  first = vocab.local_vocabulary(tmp_path / "data", vocab_size=300)
  models = list((tmp_path / "vocab").glob("local_300_*.model"))
  assert len(models) == 1
  mtime = models[0].stat().st_mtime_ns
  second = vocab.local_vocabulary(tmp_path / "data", vocab_size=300)
  assert models[0].stat().st_mtime_ns == mtime
  assert first.sentencepiece_model_file == second.sentencepiece_model_file
  text = "The premise does not say the man is happy."
  assert first.decode(first.encode(text)) == text


def test_local_vocabulary_needs_data(monkeypatch):
  monkeypatch.delenv("DSS_PAPER_DATA_DIR", raising=False)
  with pytest.raises(FileNotFoundError, match="DSS_PAPER_DATA_DIR"):
    vocab.local_vocabulary()


def test_configured_vocabulary_follows_gin():
  configured = vocab.ConfiguredVocabulary()
  assert configured == vocab.get_vocabulary("t5")
  gin.parse_config('dss_jax.vocab.get_vocabulary.name = "byte"')
  byte = vocab.get_vocabulary()
  assert isinstance(byte, seqio.ByteVocabulary)
  # Both orders: T5X compares task != model vocabulary.
  assert configured == byte and not (configured != byte)
  assert byte == configured.resolved
  assert configured.encode("hi") == byte.encode("hi")
  assert configured.vocab_size == byte.vocab_size
  assert configured.eos_id == 1
  encoded = configured.encode_tf("hi")
  assert configured.decode_tf(encoded).numpy() == b"hi"


def test_an_unreadable_model_is_one_user_error_naming_the_macro():
  # SeqIO reads the file on first use; offline, a gs:// model fails there.
  missing = "file:///nonexistent/dss_vocab_test/sentencepiece.model"
  lazy = vocab.SentencePieceVocabulary(missing, extra_ids=0)
  with pytest.raises(errors.UserError) as raised:
    _ = lazy.vocab_size
  message = str(raised.value)
  assert "\n" not in message
  assert message.startswith(f"cannot read the vocabulary {missing}")
  assert "--gin.VOCABULARY_PATH=" in message and '"byte"' in message
  # A path other than the default is read at once (its sentinels decide
  # its extra ids): the same line.
  with pytest.raises(errors.UserError, match="VOCABULARY_PATH"):
    vocab.get_vocabulary(missing)


def test_gcs_message_says_how_to_copy_the_default():
  message = str(vocab._unreadable(vocab.T5_SPM_PATH, "no network"))
  assert f"gcloud storage cp {vocab.T5_SPM_PATH} ." in message


def test_a_local_copy_of_a_model_with_sentinels_gets_no_extra_ids(tmp_path):
  # Like T5's "100extra" model: the sentinels are pieces of the model, so a
  # local copy must not get 100 more (32,200 ids instead of 32,100).
  sentinels = [f"<extra_id_{i}>" for i in range(100)]
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(["the cat sat on the mat", "a dog ran"] * 50),
    model_writer=model,
    vocab_size=130,
    model_type="unigram",
    pad_id=0,
    eos_id=1,
    unk_id=2,
    bos_id=-1,
    user_defined_symbols=sentinels,
    hard_vocab_limit=False,
    minloglevel=2,
  )
  path = tmp_path / "sentencepiece.model"
  path.write_bytes(model.getvalue())
  copy = vocab.get_vocabulary(str(path))
  assert copy.extra_ids == 0
  pieces = spm.SentencePieceProcessor(model_proto=model.getvalue())
  assert copy.vocab_size == pieces.get_piece_size()
  # The sentinel is one of the model's own pieces.
  assert pieces.piece_to_id("<extra_id_0>") in copy.encode("cat <extra_id_0>")


@pytest.mark.parametrize("model_file", _SIZED_MODELS)
def test_model_files_read_the_vocabulary_from_one_macro(model_file, tmp_path):
  gin_flags.parse_gin([model_file], [])
  default = vocab.get_vocabulary()
  assert default.sentencepiece_model_file == vocab.T5_SPM_PATH
  assert default.extra_ids == 0  # not read: the default stays lazy
  gin.clear_config()
  local = tmp_path / "sentencepiece.model"
  vocab.train_sentencepiece(["one two three"] * 20, local, vocab_size=20)
  gin_flags.parse_gin([model_file], [f'VOCABULARY_PATH = "{local}"'])
  assert vocab.get_vocabulary().sentencepiece_model_file == str(local)
  gin.clear_config()
  gin_flags.parse_gin([model_file], ['VOCABULARY_PATH = "byte"'])
  assert isinstance(vocab.get_vocabulary(), seqio.ByteVocabulary)


def test_train_with_an_unreadable_vocabulary_says_one_line(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  missing = "file:///nonexistent/dss_vocab_test/sentencepiece.model"
  run = subprocess.run(
    [
      *(sys.executable, "-m", "dss_jax.train"),
      *("--gin_file=models/t5_1_1_small.gin", "--gin_file=runs/train.gin"),
      f'--gin.MODEL_DIR="{tmp_path / "run"}"',
      '--gin.MIXTURE_OR_TASK_NAME="dss_svamp_palm"',
      f'--gin.VOCABULARY_PATH="{missing}"',
      f"--tfds_data_dir={tmp_path / 'tfds'}",
    ],
    capture_output=True,
    text=True,
    env=env,
    cwd=tmp_path,
    timeout=300,
  )
  assert run.returncode == errors.USER_ERROR_STATUS, run.stderr[-2000:]
  last = run.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: cannot read the vocabulary {missing}")
  assert "--gin.VOCABULARY_PATH=" in last
  assert "Traceback" not in run.stderr
