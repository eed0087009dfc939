"""Tests for dss_jax.vocab: named vocabularies, local SentencePiece, gin."""

import gin
import pytest
import seqio

from dss_jax import vocab


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
