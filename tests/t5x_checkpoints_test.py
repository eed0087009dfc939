"""Tests for dss_jax.t5x_checkpoints: T5X legacy and orbax checkpoints.

Checkpoints are written inside the tests, in T5X's layouts, with TensorStore
and orbax directly (the way T5X's ``checkpoints.py`` does it). When T5X itself
is importable, further tests check the files against T5X's own Checkpointer
and OrbaxCheckpointManagerInterface in both directions.

Run: .venv/bin/pytest tests/t5x_checkpoints_test.py -q
"""

from __future__ import annotations

import asyncio
import os

import flax.serialization
import numpy as np
import pytest
import tensorstore as ts

from dss_jax import checkpoints
from dss_jax import t5x_checkpoints as tc

_EMB, _HEADS_KV, _VOCAB, _MLP = 8, 12, 16, 20


def _params(seed: int = 0, emb: int = _EMB) -> dict:
  """A small parameter tree with T5X's names (not a whole model)."""
  rng = np.random.default_rng(seed)

  def arr(*shape):
    return rng.normal(size=shape).astype(np.float32)

  return {
    "token_embedder": {"embedding": arr(_VOCAB, emb)},
    "encoder": {
      "relpos_bias": {"rel_embedding": arr(2, 32)},
      "layers_0": {
        "attention": {"query": {"kernel": arr(emb, _HEADS_KV)}},
        "mlp": {"wi_0": {"kernel": arr(emb, _MLP)}},
        "pre_attention_layer_norm": {"scale": arr(emb)},
      },
      "encoder_norm": {"scale": arr(emb)},
    },
    "decoder": {"logits_dense": {"kernel": arr(emb, _VOCAB)}},
  }


def _assert_tree_equal(got: dict, want: dict) -> None:
  got_flat, want_flat = tc._flatten(got), tc._flatten(want)
  assert sorted(got_flat) == sorted(want_flat)
  for name, value in want_flat.items():
    np.testing.assert_array_equal(
      np.asarray(got_flat[name]), value, err_msg=name
    )


def _write_like_t5x(step_dir: str, params: dict, *, old_spec: bool = False):
  """Writes a legacy T5X checkpoint by hand, the way T5X's Checkpointer does.

  Every array goes through TensorStore into ``target.<dotted name>`` with a
  gzip zarr spec; the msgpack file records the relative specs. Optimizer state
  (Adafactor's factored second moments) and the step ride along, the step
  inline, as in the public checkpoints. ``old_spec`` writes specs the way
  tensorstore < 0.1.14 did (path at the top level, GCS with a dummy bucket),
  as in checkpoints written to GCS years ago.
  """
  os.makedirs(step_dir)
  state = {
    "target": params,
    "state": {
      "step": np.asarray(1000, np.int32),
      "param_states": {
        "encoder": {
          "layers_0": {
            "attention": {
              "query": {
                "kernel": {
                  "v_row": np.ones(_EMB, np.float32),
                  "v_col": np.ones(_HEADS_KV, np.float32),
                }
              }
            }
          }
        }
      },
    },
  }
  flat = tc._flatten(state)

  async def write():
    specs = {}
    for name, arr in flat.items():
      if name == "state/step":
        specs[name] = arr
        continue
      relative = name.replace("/", ".")
      metadata = {
        "compressor": {"id": "gzip"},
        "shape": list(arr.shape),
        "chunks": list(arr.shape),
      }
      store = await ts.open(
        {
          "driver": "zarr",
          "dtype": arr.dtype.name,
          "kvstore": {
            "driver": "file",
            "path": os.path.join(step_dir, relative),
          },
          "metadata": metadata,
        },
        create=True,
      )
      await store.write(arr)
      if old_spec:
        specs[name] = {
          "driver": "zarr",
          "dtype": arr.dtype.name,
          "kvstore": {"driver": "gcs", "bucket": "t5x-dummy-bucket"},
          "path": relative,
          "metadata": metadata,
        }
      else:
        specs[name] = ts.Spec(
          {
            "driver": "zarr",
            "dtype": arr.dtype.name,
            "kvstore": {"driver": "file", "path": relative},
            "metadata": metadata,
          }
        ).to_json()
    return specs

  specs = asyncio.run(write())
  contents = {"version": 3, "optimizer": tc._unflatten(specs)}
  with open(os.path.join(step_dir, "checkpoint"), "wb") as f:
    f.write(flax.serialization.msgpack_serialize(contents))


# ---------------------------------------------------------------------------
# Reading checkpoints in T5X's layouts.


@pytest.mark.parametrize("old_spec", [False, True])
def test_reads_hand_written_legacy_checkpoint(tmp_path, old_spec):
  params = _params()
  _write_like_t5x(str(tmp_path / "checkpoint_1000"), params, old_spec=old_spec)
  ref = tc.resolve_checkpoint(tmp_path)
  assert (ref.step, ref.format) == (1000, tc.LEGACY)
  flat = tc.read_params(tmp_path)
  # Only the target subtree: the optimizer's v_row/v_col are not read.
  assert not any("v_row" in k for k in flat)
  restored = tc.load_params(tmp_path, params)
  _assert_tree_equal(restored, params)
  # The step dir and the msgpack file itself work as paths too, and
  # `checkpoints`, which takes every layout, reads T5X's through here.
  for path in (
    tmp_path / "checkpoint_1000",
    tmp_path / "checkpoint_1000/checkpoint",
  ):
    _assert_tree_equal(tc.load_params(path, params), params)
    _assert_tree_equal(checkpoints.load_params(path, params), params)


def test_reads_t5x_orbax_layout(tmp_path):
  import orbax.checkpoint as ocp

  params = _params(1)
  # T5X's OrbaxCheckpointManagerInterface: step prefix "checkpoint", item
  # "state" with an OCDBT PyTreeCheckpointHandler holding the state dict.
  manager = ocp.CheckpointManager(
    tmp_path,
    options=ocp.CheckpointManagerOptions(step_prefix="checkpoint"),
    item_handlers={"state": ocp.PyTreeCheckpointHandler(use_ocdbt=True)},
  )
  state = {
    "target": params,
    "state": {"step": np.int32(7), "param_states": {"m": np.zeros(3)}},
  }
  manager.save(7, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state)))
  manager.wait_until_finished()
  manager.close()
  ref = tc.resolve_checkpoint(tmp_path)
  assert (ref.step, ref.format) == (7, tc.ORBAX)
  flat = tc.read_params(tmp_path)
  assert "m" not in flat and "param_states/m" not in flat
  _assert_tree_equal(tc.load_params(tmp_path, params), params)


# ---------------------------------------------------------------------------
# Writing.


def test_save_writes_t5x_layout_and_round_trips(tmp_path):
  params = _params(3)
  step_dir = tc.save_t5x_checkpoint(params, tmp_path, 42)
  assert step_dir == f"{tmp_path}/checkpoint_42"
  names = sorted(os.listdir(step_dir))
  assert "checkpoint" in names
  assert "target.encoder.layers_0.attention.query.kernel" in names
  assert not [n for n in os.listdir(tmp_path) if ".tmp" in n]
  with open(os.path.join(step_dir, "checkpoint"), "rb") as f:
    contents = flax.serialization.msgpack_restore(f.read())
  assert contents["version"] == 3
  assert int(contents["optimizer"]["state"]["step"]) == 42
  spec = contents["optimizer"]["target"]["encoder"]["layers_0"]["attention"][
    "query"
  ]["kernel"]
  assert spec["driver"] == "zarr"
  assert spec["kvstore"] == {
    "driver": "file",
    "path": "target.encoder.layers_0.attention.query.kernel/",
  }
  assert spec["metadata"]["compressor"]["id"] == "gzip"
  assert spec["metadata"]["shape"] == [_EMB, _HEADS_KV]
  _assert_tree_equal(tc.load_params(tmp_path, params), params)
  with pytest.raises(tc.CheckpointError, match="already exists"):
    tc.save_t5x_checkpoint(params, tmp_path, 42)


def test_save_bfloat16_restores_as_model_dtype(tmp_path):
  params = _params(4)
  tc.save_t5x_checkpoint(params, tmp_path, 1, dtype="bfloat16")
  assert (
    tc.read_params(tmp_path)["token_embedder/embedding"].dtype.name
    == "bfloat16"
  )
  restored = tc.load_params(tmp_path, params)
  got = restored["token_embedder"]["embedding"]
  assert got.dtype == np.float32
  np.testing.assert_allclose(
    got, params["token_embedder"]["embedding"], rtol=1e-2
  )


def test_chunking_keeps_chunks_under_64_mib():
  shape = (32128, 4096)  # T5-XXL's embedding, float32: 526 MB
  chunks = tc._chunk_shape(shape, 4)
  assert np.prod(chunks) * 4 <= 64 * 1024 * 1024
  assert all(s % c == 0 for s, c in zip(shape, chunks, strict=True))
  assert tc._chunk_shape((8, 12), 4) == [8, 12]


def test_gcs_specs_resolve_to_the_real_bucket():
  spec = {
    "driver": "zarr",
    "dtype": "float32",
    "kvstore": {"driver": "file", "path": "target.x/"},
    "metadata": {"shape": [2], "chunks": [2], "compressor": {"id": "gzip"}},
  }
  out = tc._absolute_spec(spec, "gs://bucket/models/t5/checkpoint_5")
  assert out["kvstore"] == {
    "driver": "gcs",
    "bucket": "bucket",
    "path": "models/t5/checkpoint_5/target.x/",
  }
  assert tc._absolute_spec(spec, "/d/checkpoint_5")["kvstore"] == {
    "driver": "file",
    "path": "/d/checkpoint_5/target.x/",
  }


# ---------------------------------------------------------------------------
# Errors, one line each.


def test_error_missing_and_empty_path(tmp_path):
  with pytest.raises(tc.CheckpointError, match="does not exist: .*nowhere"):
    tc.read_params(tmp_path / "nowhere")
  (tmp_path / "empty").mkdir()
  with pytest.raises(tc.CheckpointError, match="is empty"):
    tc.read_params(tmp_path / "empty")
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "notes.txt").write_text("x")
  with pytest.raises(tc.CheckpointError, match="no checkpoint found"):
    tc.read_params(tmp_path / "other")


def test_error_different_model_size_names_parameter_and_shapes(tmp_path):
  tc.save_t5x_checkpoint(_params(emb=16), tmp_path, 1)
  with pytest.raises(tc.CheckpointError) as err:
    tc.load_params(tmp_path, _params(emb=_EMB))
  message = str(err.value)
  assert "\n" not in message
  assert "token_embedder/embedding" in message
  assert f"({_VOCAB}, 16)" in message and f"({_VOCAB}, {_EMB})" in message


def test_missing_and_extra_names_are_reported(tmp_path):
  saved = _params()
  saved["encoder"]["unused"] = {"kernel": np.zeros(3, np.float32)}
  del saved["decoder"]
  tc.save_t5x_checkpoint(saved, tmp_path, 1)
  model = _params()
  with pytest.raises(
    tc.CheckpointError, match="lacks 1 .*decoder/logits_dense/kernel"
  ):
    tc.load_params(tmp_path, model)
  fallback = _params(9)
  params, report = tc.match_params(
    tc.read_params(tmp_path), model, fallback=fallback
  )
  assert report.missing == ["decoder/logits_dense/kernel"]
  assert report.extra == ["encoder/unused/kernel"]
  np.testing.assert_array_equal(
    params["decoder"]["logits_dense"]["kernel"],
    fallback["decoder"]["logits_dense"]["kernel"],
  )


# ---------------------------------------------------------------------------
# Against T5X itself (skipped without it; T5X is not on PyPI).


def _t5x_inference_state(params: dict):
  from flax.linen import partitioning as flax_partitioning
  from t5x import train_state as train_state_lib

  def axes(arr: np.ndarray):
    # Replicated (unnamed) axes: the tiny shapes need not divide the mesh, and
    # T5X still writes every axis-annotated array through TensorStore.
    return flax_partitioning.AxisMetadata(names=(None,) * arr.ndim)

  params_axes = tc._unflatten(
    {name + "_axes": axes(arr) for name, arr in tc._flatten(params).items()}
  )
  return train_state_lib.InferenceState.create(
    {"params": params, "params_axes": params_axes}
  )


@pytest.mark.t5x
def test_t5x_checkpointer_restores_our_checkpoint(tmp_path):
  t5x_checkpoints = pytest.importorskip(
    "t5x.checkpoints", reason="T5X is not installed (not on PyPI)"
  )
  from t5x import partitioning

  params = _params(5)
  tc.save_t5x_checkpoint(params, tmp_path, 12)
  partitioner = partitioning.PjitPartitioner(num_partitions=1)
  state = _t5x_inference_state(_params(0))
  checkpointer = t5x_checkpoints.Checkpointer(
    state, partitioner, checkpoints_dir=str(tmp_path)
  )
  restored = checkpointer.restore(path=str(tmp_path / "checkpoint_12"))
  assert int(restored.step) == 12
  _assert_tree_equal(_to_numpy(restored.params), params)


@pytest.mark.t5x
def test_reads_checkpoints_written_by_t5x(tmp_path):
  t5x_checkpoints = pytest.importorskip(
    "t5x.checkpoints", reason="T5X is not installed (not on PyPI)"
  )
  from t5x import partitioning

  params = _params(6)
  partitioner = partitioning.PjitPartitioner(num_partitions=1)
  state = _t5x_inference_state(params).replace(step=np.asarray(30, np.int32))
  t5x_checkpoints.Checkpointer(
    state, partitioner, checkpoints_dir=str(tmp_path / "legacy")
  ).save(state)
  assert tc.resolve_checkpoint(tmp_path / "legacy").format == tc.LEGACY
  _assert_tree_equal(tc.load_params(tmp_path / "legacy", params), params)

  # T5X's manager takes the parent of a directory that does not exist yet.
  (tmp_path / "orbax").mkdir()
  manager = t5x_checkpoints.OrbaxCheckpointManagerInterface(
    str(tmp_path / "orbax"), state, partitioner
  )
  manager.save(state)
  manager.wait_until_finished()
  manager.close()
  assert tc.resolve_checkpoint(tmp_path / "orbax").format == tc.ORBAX
  _assert_tree_equal(tc.load_params(tmp_path / "orbax", params), params)


def _to_numpy(tree):
  import flax.core
  import jax

  return jax.tree.map(np.asarray, flax.core.unfreeze(tree))
