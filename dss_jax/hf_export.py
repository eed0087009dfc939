"""The student as a Hugging Face transformers T5 (config + safetensors).

The command line is `dss_jax.export`:

    python -m dss_jax.export \
      --gin_file=models/t5_1_1_base.gin \
      --checkpoint=/tmp/dss_cqa_base \
      --output_dir=/tmp/dss_cqa_base_hf

The directory then loads with
``transformers.T5ForConditionalGeneration.from_pretrained`` and serves with the
usual tools. Weights map one to one: T5X (like Mesh TF before it) folds the
1/sqrt(d_kv) attention scaling into the query kernel's initialization, and
Hugging Face's T5 applies no scaling either, so no kernel is rescaled.

Mapping (``N`` = layer; kernels are transposed to torch's [out, in]):

    token_embedder/embedding                       shared.weight
    encoder/relpos_bias/rel_embedding [h, b]       encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight [b, h]
    encoder/layers_N/pre_attention_layer_norm/scale  encoder.block.N.layer.0.layer_norm.weight
    encoder/layers_N/attention/{query,key,value,out}/kernel  encoder.block.N.layer.0.SelfAttention.{q,k,v,o}.weight
    encoder/layers_N/pre_mlp_layer_norm/scale      encoder.block.N.layer.1.layer_norm.weight
    encoder/layers_N/mlp/{wi_0,wi_1,wi,wo}/kernel  encoder.block.N.layer.1.DenseReluDense.{wi_0,wi_1,wi,wo}.weight
    encoder/encoder_norm/scale                     encoder.final_layer_norm.weight
    decoder/relpos_bias/rel_embedding              decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight
    decoder/layers_N/pre_self_attention_layer_norm/scale  decoder.block.N.layer.0.layer_norm.weight
    decoder/layers_N/self_attention/...            decoder.block.N.layer.0.SelfAttention.{q,k,v,o}.weight
    decoder/layers_N/pre_cross_attention_layer_norm/scale  decoder.block.N.layer.1.layer_norm.weight
    decoder/layers_N/encoder_decoder_attention/... decoder.block.N.layer.1.EncDecAttention.{q,k,v,o}.weight
    decoder/layers_N/pre_mlp_layer_norm/scale      decoder.block.N.layer.2.layer_norm.weight
    decoder/layers_N/mlp/...                       decoder.block.N.layer.2.DenseReluDense...
    decoder/decoder_norm/scale                     decoder.final_layer_norm.weight
    decoder/logits_dense/kernel [e, vocab]         lm_head.weight [vocab, e]

Scanned models (``scan_layers=True``, stacks ``encoder/encoder/...`` with the
layer axis at position 1) are unstacked first. Only numpy and safetensors are
needed to export; torch and transformers only to load the result.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import ml_dtypes
import numpy as np
import seqio
from absl import logging
from safetensors.numpy import save_file

from dss_jax import checkpoints, errors
from dss_jax import vocab as vocab_lib
from dss_jax.models import t5
from dss_jax.models.t5 import T5Config

Params = Mapping[str, Any]

_ATTENTION = {"query": "q", "key": "k", "value": "v", "out": "o"}
# Where each sublayer sits in Hugging Face's T5Block.layer list.
_ENCODER_SUBLAYERS = {
  "pre_attention_layer_norm": (0, "layer_norm"),
  "attention": (0, "SelfAttention"),
  "pre_mlp_layer_norm": (1, "layer_norm"),
  "mlp": (1, "DenseReluDense"),
}
_DECODER_SUBLAYERS = {
  "pre_self_attention_layer_norm": (0, "layer_norm"),
  "self_attention": (0, "SelfAttention"),
  "pre_cross_attention_layer_norm": (1, "layer_norm"),
  "encoder_decoder_attention": (1, "EncDecAttention"),
  "pre_mlp_layer_norm": (2, "layer_norm"),
  "mlp": (2, "DenseReluDense"),
}


class ExportError(errors.UserError):
  """A model or parameter tree that has no Hugging Face T5 equivalent."""


def feed_forward_proj(activations: Sequence[str]) -> str:
  """Hugging Face's ``feed_forward_proj`` for T5Config.mlp_activations.

  Args:
    activations: e.g. ("gelu", "linear") for T5 v1.1.

  Returns:
    e.g. "gated-gelu".

  Raises:
    ExportError: activations Hugging Face's T5 cannot express.
  """
  acts = tuple(activations)
  # This model's "gelu" is the tanh approximation: HF calls it "gelu_new"
  # ("gated-gelu" already means gated gelu_new there).
  if len(acts) == 2 and acts[1] == "linear":
    return "gated-gelu" if acts[0] == "gelu" else f"gated-{acts[0]}"
  if len(acts) == 1:
    return "gelu_new" if acts[0] == "gelu" else acts[0]
  raise ExportError(
    f"mlp_activations {acts} has no Hugging Face T5 equivalent "
    "(expected (act,) or (act, 'linear'))"
  )


def hf_config(config: T5Config) -> dict[str, Any]:
  """The ``config.json`` of the equivalent ``T5ForConditionalGeneration``."""
  return {
    "architectures": ["T5ForConditionalGeneration"],
    "model_type": "t5",
    "vocab_size": config.vocab_size,
    "d_model": config.emb_dim,
    "d_kv": config.head_dim,
    "d_ff": config.mlp_dim,
    "num_layers": config.num_encoder_layers,
    "num_decoder_layers": config.num_decoder_layers,
    "num_heads": config.num_heads,
    "relative_attention_num_buckets": config.relative_attention_num_buckets,
    "relative_attention_max_distance": config.relative_attention_max_distance,
    "dropout_rate": config.dropout_rate,
    # The RMSNorm epsilon of dss_jax.models.t5 (and of T5X).
    "layer_norm_epsilon": 1e-6,
    "initializer_factor": 1.0,
    "feed_forward_proj": feed_forward_proj(config.mlp_activations),
    # Hugging Face scales decoder outputs by d_model**-0.5 exactly when the
    # output layer is tied, as T5X does with logits_via_embedding.
    "tie_word_embeddings": bool(config.logits_via_embedding),
    "is_encoder_decoder": True,
    "use_cache": True,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
    "torch_dtype": "float32",
  }


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    name = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, Mapping):
      out.update(_flatten(value, name))
    else:
      out[name] = np.asarray(value)
  return out


def _unstack_scanned(flat: dict[str, np.ndarray], stack: str) -> None:
  """Turns ``<stack>/<stack>/...`` (layer axis 1) into ``<stack>/layers_N``."""
  prefix = f"{stack}/{stack}/"
  for name in [n for n in flat if n.startswith(prefix)]:
    stacked = flat.pop(name)
    for i in range(stacked.shape[1]):
      flat[f"{stack}/layers_{i}/{name[len(prefix) :]}"] = np.take(stacked, i, 1)


def _linear(kernel: np.ndarray) -> np.ndarray:
  """T5X's 2-D [in, out] kernel (heads folded into joined_kv) -> torch [out, in]."""
  if kernel.ndim != 2:
    raise ExportError(f"expected a 2-D kernel, got shape {kernel.shape}")
  return np.ascontiguousarray(kernel.T)


def _layer_entry(
  stack: str, layer: int, rest: list[str], value: np.ndarray
) -> tuple[str, np.ndarray]:
  sublayers = _ENCODER_SUBLAYERS if stack == "encoder" else _DECODER_SUBLAYERS
  if rest[0] not in sublayers:
    raise ExportError(
      f"unexpected parameter {stack}/layers_{layer}/{'/'.join(rest)}"
    )
  index, module = sublayers[rest[0]]
  base = f"{stack}.block.{layer}.layer.{index}.{module}"
  if module == "layer_norm":
    return f"{base}.weight", value
  if module == "DenseReluDense":
    return f"{base}.{rest[1]}.weight", _linear(value)
  if rest[1] not in _ATTENTION or rest[-1] != "kernel":
    raise ExportError(f"unexpected attention parameter {'/'.join(rest)}")
  return f"{base}.{_ATTENTION[rest[1]]}.weight", _linear(value)


def to_hf_state_dict(
  params: Params, config: T5Config, dtype: Any = np.float32
) -> dict[str, np.ndarray]:
  """Maps a T5X-layout parameter tree to Hugging Face T5 tensor names.

  Args:
    params: the student's parameters (``token_embedder``, ``encoder``,
      ``decoder``; a ``params`` wrapper is removed).
    config: the student's configuration.
    dtype: the dtype to store.

  Returns:
    ``{hf_name: array}``, ready for ``safetensors.numpy.save_file``.

  Raises:
    ExportError: a parameter with no Hugging Face counterpart, or one missing.
  """
  if "params" in params and "encoder" not in params:
    params = params["params"]
  flat = _flatten(params)
  _unstack_scanned(flat, "encoder")
  _unstack_scanned(flat, "decoder")
  out: dict[str, np.ndarray] = {}
  for name, value in flat.items():
    parts = name.split("/")
    if name == "token_embedder/embedding":
      out["shared.weight"] = value
    elif name == "decoder/logits_dense/kernel":
      out["lm_head.weight"] = _linear(value)
    elif parts[1:] == ["relpos_bias", "rel_embedding"]:
      key = f"{parts[0]}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
      out[key] = np.ascontiguousarray(value.T)
    elif parts[1] in ("encoder_norm", "decoder_norm"):
      out[f"{parts[0]}.final_layer_norm.weight"] = value
    elif parts[1].startswith("layers_"):
      key, mapped = _layer_entry(parts[0], int(parts[1][7:]), parts[2:], value)
      out[key] = mapped
    else:
      raise ExportError(f"no Hugging Face T5 counterpart for parameter {name}")
  needed = ["shared.weight", "encoder.final_layer_norm.weight"]
  if not config.logits_via_embedding:
    needed.append("lm_head.weight")
  missing = [k for k in needed if k not in out]
  if missing:
    raise ExportError(f"parameters missing for the export: {missing}")
  return {k: np.ascontiguousarray(v.astype(dtype)) for k, v in out.items()}


def export_hf(
  params: Params,
  config: T5Config,
  output_dir: str | os.PathLike[str],
  *,
  dtype: str = "float32",
  vocabulary: seqio.Vocabulary | None = None,
  overwrite: bool = False,
) -> pathlib.Path:
  """Writes ``config.json`` and ``model.safetensors`` (and the tokenizer).

  The folder is written fresh: a folder that is not empty is refused unless
  ``overwrite``, which first removes the files an export writes (so a
  ``spiece.model`` of an earlier export never stays beside another model);
  any other file in it is refused either way.

  Args:
    params: the student's parameters.
    config: its configuration.
    output_dir: the directory to write (created).
    dtype: "float32" or "bfloat16" storage.
    vocabulary: optional ``seqio.SentencePieceVocabulary``; its model is
      copied as ``spiece.model`` with a ``tokenizer_config.json`` so
      ``AutoTokenizer`` loads it.
    overwrite: replace an earlier export in ``output_dir``.

  Returns:
    The output directory.

  Raises:
    errors.UserError: ``output_dir`` is a file, or a folder that is not
      empty (without ``overwrite``) or holds files an export does not write.
  """
  np_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}[dtype]
  tensors = to_hf_state_dict(params, config, np_dtype)
  out = pathlib.Path(output_dir)
  _fresh_output_dir(out, overwrite)
  cfg = hf_config(config) | {"torch_dtype": dtype}
  (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
  save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
  if vocabulary is not None:
    _write_tokenizer(vocabulary, out)
  logging.info("Exported %d tensors to %s", len(tensors), out)
  return out


# Every file an export may write (and an overwrite removes).
EXPORT_FILES = (
  "config.json",
  "model.safetensors",
  "spiece.model",
  "tokenizer_config.json",
)


def _fresh_output_dir(out: pathlib.Path, overwrite: bool) -> None:
  """Makes ``out`` an empty folder, or refuses (see `export_hf`)."""
  if out.exists() and not out.is_dir():
    raise errors.UserError(
      f"--output_dir {out} is a file; name a folder for the export"
    )
  present = sorted(p.name for p in out.iterdir()) if out.exists() else []
  if present and not overwrite:
    raise errors.UserError(
      f"--output_dir {out} is not empty ({', '.join(present[:5])}); export "
      "into a new folder, or pass --overwrite to replace an earlier export"
    )
  foreign = [name for name in present if name not in EXPORT_FILES]
  if foreign:
    raise errors.UserError(
      f"--output_dir {out} holds files an export does not write "
      f"({', '.join(foreign[:5])}); export into a new folder"
    )
  for name in present:
    (out / name).unlink()
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as e:  # below a file's path, read-only, in /proc
    raise errors.UserError(
      f"--output_dir {out} cannot be made ({e.strerror or e}); name a folder "
      "that can be created"
    ) from e


def _write_tokenizer(vocabulary: seqio.Vocabulary, out: pathlib.Path) -> None:
  """Writes the files ``AutoTokenizer.from_pretrained`` needs for the vocab.

  SeqIO's SentencePiece vocabulary and Hugging Face's ``T5Tokenizer`` agree
  on ids (pad 0, eos 1, unk 2, extra ids counted down from the top), as do
  SeqIO's ``ByteVocabulary`` and ``ByT5Tokenizer`` (byte + 3).
  """
  extra_ids = int(getattr(vocabulary, "extra_ids", 0) or 0)
  config: dict[str, Any] = {
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "extra_ids": extra_ids,
  }
  if hasattr(vocabulary, "sp_model"):
    (out / "spiece.model").write_bytes(vocabulary.sp_model)
    config["tokenizer_class"] = "T5Tokenizer"
  elif type(vocabulary).__name__ == "ByteVocabulary":
    config["tokenizer_class"] = "ByT5Tokenizer"
  else:
    logging.warning("No Hugging Face tokenizer for %s; not written", vocabulary)
    return
  (out / "tokenizer_config.json").write_text(
    json.dumps(config, indent=2) + "\n"
  )


def export_checkpoint(
  model: t5.Transformer,
  checkpoint: str,
  output_dir: str,
  *,
  step: int | None = None,
  dtype: str = "float32",
  vocabulary: str | None = None,
  overwrite: bool = False,
) -> pathlib.Path:
  """Restores a checkpoint for ``model`` and exports it.

  The checkpoint's saved checksums are checked (`checkpoints.read_ref`), and
  a tokenizer vocabulary other than the one the run recorded in
  ``vocabulary.json`` is refused, before anything is written.

  Args:
    model: the ``dss_jax.models.t5.Transformer`` (gin's MODEL).
    checkpoint: any path ``dss_jax.t5x_checkpoints`` reads.
    output_dir: where to write.
    step: the step to export (default: latest).
    dtype: "float32" or "bfloat16".
    vocabulary: vocabulary name or path for the tokenizer files.
    overwrite: replace an earlier export in ``output_dir``.

  Returns:
    The output directory.
  """
  ref = checkpoints.resolve_checkpoint(checkpoint, step)
  vocab = None
  if vocabulary:
    vocab = vocab_lib.get_vocabulary(vocabulary)
    trained = vocab_lib.read_identity(_model_dir_of(ref.path))
    if trained is not None:
      vocab_lib.check_same(trained, vocab, f"--vocabulary={vocabulary}")
  params = checkpoints.restore_model_params(model, checkpoint, step=step)
  return export_hf(
    params,
    model.config,
    output_dir,
    dtype=dtype,
    vocabulary=vocab,
    overwrite=overwrite,
  )


def _model_dir_of(checkpoint_path: str) -> str:
  """The run folder above a step folder or T5X checkpoint (where a run's
  ``vocabulary.json`` is)."""
  path = pathlib.Path(os.fspath(checkpoint_path))
  for folder in (path, *path.parents):
    if (folder / vocab_lib.VOCABULARY_FILE).exists():
      return os.fspath(folder)
  return os.fspath(path)
