"""Tests for dss_jax.hf_export: the student as a Hugging Face transformers T5.

The logits test runs the exported PyTorch model and the Flax model on the same
inputs and needs torch and transformers (the `export` extra); it skips with a
reason without them.

Run: .venv/bin/pytest tests/hf_export_test.py -q
"""

from __future__ import annotations

import functools
import json

import jax
import numpy as np
import pytest
import seqio

from dss_jax import hf_export, t5x_checkpoints
from dss_jax.models import t5


def _inputs(vocab_size: int):
  rng = np.random.default_rng(0)
  enc = rng.integers(2, vocab_size, size=(2, 9))
  enc[1, 6:] = 0  # padding in the second example
  targets = rng.integers(2, vocab_size, size=(2, 6))
  targets[1, 4:] = 0
  dec_in = np.concatenate([np.zeros((2, 1), targets.dtype), targets[:, :-1]], 1)
  return enc, dec_in, targets


@functools.cache
def _cached_model_and_params(overrides: tuple):
  model, config = t5.make_test_model(**dict(overrides))
  enc, dec_in, targets = _inputs(config.vocab_size)
  params = model.init(
    jax.random.PRNGKey(0), enc, dec_in, targets, enable_dropout=False
  )["params"]
  # Perturb every weight (norm scales start at exactly 1) so a parameter
  # mapped to the wrong place cannot go unnoticed.
  rng = np.random.default_rng(1)
  params = jax.tree.map(
    lambda x: (
      np.asarray(x) + 0.2 * rng.standard_normal(x.shape).astype(np.float32)
    ),
    params,
  )
  return model, config, params


def _model_and_params(**overrides):
  return _cached_model_and_params(tuple(sorted(overrides.items())))


def _expected_names(config) -> set[str]:
  names = {
    "shared.weight",
    "lm_head.weight",
    "encoder.final_layer_norm.weight",
    "decoder.final_layer_norm.weight",
    "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
    "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
  }
  for i in range(config.num_encoder_layers):
    b = f"encoder.block.{i}.layer"
    names |= {f"{b}.0.SelfAttention.{p}.weight" for p in "qkvo"}
    names |= {f"{b}.0.layer_norm.weight", f"{b}.1.layer_norm.weight"}
    names |= {
      f"{b}.1.DenseReluDense.{w}.weight" for w in ("wi_0", "wi_1", "wo")
    }
  for i in range(config.num_decoder_layers):
    b = f"decoder.block.{i}.layer"
    names |= {f"{b}.0.SelfAttention.{p}.weight" for p in "qkvo"}
    names |= {f"{b}.1.EncDecAttention.{p}.weight" for p in "qkvo"}
    names |= {f"{b}.{j}.layer_norm.weight" for j in range(3)}
    names |= {
      f"{b}.2.DenseReluDense.{w}.weight" for w in ("wi_0", "wi_1", "wo")
    }
  return names


def test_weight_mapping_names_shapes_and_transposes():
  _, config, params = _model_and_params()
  tensors = hf_export.to_hf_state_dict(params, config)
  assert set(tensors) == _expected_names(config)
  query = np.asarray(
    params["encoder"]["layers_1"]["attention"]["query"]["kernel"]
  )
  np.testing.assert_array_equal(
    tensors["encoder.block.1.layer.0.SelfAttention.q.weight"], query.T
  )
  rel = np.asarray(params["decoder"]["relpos_bias"]["rel_embedding"])
  np.testing.assert_array_equal(
    tensors[
      "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    ],
    rel.T,
  )
  # No rescaling anywhere: T5X and HF both keep 1/sqrt(d_kv) in the query.
  assert tensors["lm_head.weight"].shape == (config.vocab_size, config.emb_dim)


def test_scanned_params_unstack_to_the_same_tensors():
  _, config, params = _model_and_params(scan_layers=True)
  tensors = hf_export.to_hf_state_dict(params, config)
  assert set(tensors) == _expected_names(config)
  stacked = np.asarray(params["encoder"]["encoder"]["mlp"]["wo"]["kernel"])
  np.testing.assert_array_equal(
    tensors["encoder.block.1.layer.1.DenseReluDense.wo.weight"], stacked[:, 1].T
  )


def test_config_json_and_bfloat16_storage(tmp_path):
  from safetensors.numpy import load_file

  _, config, params = _model_and_params()
  out = hf_export.export_hf(params, config, tmp_path / "hf", dtype="bfloat16")
  cfg = json.loads((out / "config.json").read_text())
  assert cfg["feed_forward_proj"] == "gated-gelu"
  assert (cfg["d_model"], cfg["d_kv"], cfg["num_heads"]) == (
    config.emb_dim,
    config.head_dim,
    config.num_heads,
  )
  assert cfg["tie_word_embeddings"] is False
  assert load_file(str(out / "model.safetensors"))[
    "shared.weight"
  ].dtype.name == ("bfloat16")


def test_activations_without_hf_equivalent_fail():
  assert hf_export.feed_forward_proj(("relu",)) == "relu"
  assert hf_export.feed_forward_proj(("gelu",)) == "gelu_new"
  with pytest.raises(
    hf_export.ExportError, match="no Hugging Face T5 equivalent"
  ):
    hf_export.feed_forward_proj(("linear", "gelu"))


@pytest.mark.parametrize(
  "overrides",
  [{}, {"logits_via_embedding": True}, {"scan_layers": True}],
  ids=["untied", "tied", "scanned"],
)
def test_exported_pytorch_logits_match_flax(tmp_path, overrides):
  torch = pytest.importorskip(
    "torch", reason="torch not installed (export extra)"
  )
  transformers = pytest.importorskip(
    "transformers", reason="transformers not installed (export extra)"
  )
  model, config, params = _model_and_params(**overrides)
  enc, dec_in, targets = _inputs(config.vocab_size)
  flax_logits = np.asarray(
    model.apply({"params": params}, enc, dec_in, targets, enable_dropout=False)
  )
  out = hf_export.export_hf(params, config, tmp_path / "hf")
  hf = transformers.T5ForConditionalGeneration.from_pretrained(out).eval()
  with torch.no_grad():
    hf_logits = hf(
      input_ids=torch.tensor(enc),
      attention_mask=torch.tensor(enc > 0),
      decoder_input_ids=torch.tensor(dec_in),
    ).logits.numpy()
  real = targets > 0  # positions past a target's end are padding
  np.testing.assert_allclose(
    hf_logits[real], flax_logits[real], atol=1e-4, rtol=1e-4
  )


def test_export_checkpoint_from_t5x_layout(tmp_path):
  from safetensors.numpy import load_file

  model, config, params = _model_and_params()
  t5x_checkpoints.save_t5x_checkpoint(params, tmp_path / "model", 10)
  out = hf_export.export_checkpoint(
    model, str(tmp_path / "model"), str(tmp_path / "hf")
  )
  tensors = load_file(str(out / "model.safetensors"))
  np.testing.assert_array_equal(
    tensors["shared.weight"], np.asarray(params["token_embedder"]["embedding"])
  )


@pytest.mark.parametrize("kind", ["byte", "sentencepiece"])
def test_tokenizer_files_match_seqio_ids(tmp_path, kind):
  transformers = pytest.importorskip(
    "transformers", reason="transformers not installed (export extra)"
  )
  import seqio

  from dss_jax import vocab as vocab_lib

  if kind == "byte":
    vocabulary = seqio.ByteVocabulary()
  else:
    texts = [
      "the cat sat on the mat",
      "a dog ate my homework",
      "2 + 3 = 5",
    ] * 20
    model_file = vocab_lib.train_sentencepiece(texts, tmp_path / "sp.model", 60)
    vocabulary = seqio.SentencePieceVocabulary(str(model_file), extra_ids=5)
  _, config, params = _model_and_params()
  out = hf_export.export_hf(
    params, config, tmp_path / "hf", vocabulary=vocabulary
  )
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  text = "the cat ate 5"
  ids = tokenizer(text).input_ids
  assert ids[-1] == 1  # EOS appended, as SeqIO's add_eos
  assert ids[:-1] == list(vocabulary.encode(text))
  assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_an_export_folder_is_written_fresh(tmp_path):
  from dss_jax import vocab as vocab_lib

  _, config, params = _model_and_params()
  texts = ["the cat sat on the mat", "a dog ate my homework"] * 20
  model_file = vocab_lib.train_sentencepiece(texts, tmp_path / "sp.model", 40)
  spm_vocab = seqio.SentencePieceVocabulary(str(model_file), extra_ids=5)
  out = tmp_path / "hf"
  hf_export.export_hf(params, config, out, vocabulary=spm_vocab)
  assert (out / "spiece.model").exists()
  with pytest.raises(ValueError, match="is not empty .* pass --overwrite"):
    hf_export.export_hf(params, config, out, vocabulary=seqio.ByteVocabulary())
  hf_export.export_hf(
    params, config, out, vocabulary=seqio.ByteVocabulary(), overwrite=True
  )
  # The earlier export's SentencePiece model does not stay beside ByT5's.
  assert sorted(p.name for p in out.iterdir()) == [
    "config.json",
    "model.safetensors",
    "tokenizer_config.json",
  ]
  (out / "notes.txt").write_text("mine")
  with pytest.raises(ValueError, match=r"files an export does not write"):
    hf_export.export_hf(params, config, out, overwrite=True)
  assert (out / "notes.txt").read_text() == "mine"
  with pytest.raises(ValueError, match="is a file"):
    hf_export.export_hf(params, config, out / "notes.txt")
  # /proc takes no new folders (ENOENT); below a file (ENOTDIR).
  for folder in ("/proc/dss_hf", out / "notes.txt" / "hf"):
    with pytest.raises(ValueError, match="cannot be made"):
      hf_export.export_hf(params, config, folder)


def _export(run_entry_point, tmp_path, *args):
  """`python -m dss_jax.export`, in-process as `__main__`."""
  (tmp_path / "tiny_model.gin").write_text(
    "from __gin__ import dynamic_registration\n"
    "from dss_jax.models import t5\n"
    "MODEL = @t5.Transformer()\n"
    "t5.Transformer.config = @t5.t5_1_1_config()\n"
    't5.t5_1_1_config.size = "tiny"\n'
  )
  return run_entry_point(
    "dss_jax.export", f"--gin_file={tmp_path / 'tiny_model.gin'}", *args
  )


def test_export_refuses_damaged_checkpoints_and_other_vocabularies(
  tmp_path, repo_dir, monkeypatch, run_entry_point
):
  from dss_jax import checkpoints
  from dss_jax import vocab as vocab_lib

  monkeypatch.chdir(repo_dir)
  model, _ = t5.make_test_model()
  tokens = np.ones((1, 4), np.int32)
  params = model.init(
    jax.random.PRNGKey(0), tokens, tokens, tokens, enable_dropout=False
  )["params"]
  run_dir = tmp_path / "run"
  saver = checkpoints.Checkpointer(run_dir, async_save=False)
  saver.save(4, {"params": params, "step": np.int32(4)}, batches=4)
  saver.close()
  vocab_lib.write_identity(str(run_dir), seqio.ByteVocabulary())
  # Another vocabulary than the run's: refused before anything is written.
  other = vocab_lib.train_sentencepiece(
    ["the cat sat on the mat"] * 40, tmp_path / "sp.model", 40
  )
  run = _export(
    run_entry_point,
    tmp_path,
    f"--checkpoint={run_dir}",
    f"--output_dir={tmp_path / 'hf'}",
    f"--vocabulary={other}",
  )
  assert run.returncode == 2, run.stderr[-2000:]
  last = run.stderr.strip().splitlines()[-1]
  assert last.startswith("error: --vocabulary=") and "trained" in last, last
  assert not (tmp_path / "hf").exists()
  # A flipped bit in the parameters: refused, naming the checkpoint.
  meta = run_dir / "checkpoints" / "4" / "data" / "metadata"
  values = json.loads(meta.read_text())
  values["params_checksum"][3] ^= 1
  meta.write_text(json.dumps(values))
  run = _export(
    run_entry_point,
    tmp_path,
    f"--checkpoint={run_dir}",
    f"--output_dir={tmp_path / 'hf'}",
    "--vocabulary=byte",
  )
  assert run.returncode == 2, run.stderr[-2000:]
  assert "Traceback" not in run.stderr
  last = run.stderr.strip().splitlines()[-1]
  state = run_dir / "checkpoints" / "4" / "state"
  assert last.startswith(f"error: checkpoint {state}: parameter "), last
  assert "does not match its checksum" in last
  assert not (tmp_path / "hf").exists()
