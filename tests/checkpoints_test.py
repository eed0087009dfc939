"""This project's checkpoints: round trip with shardings, keep-N, keep-best,
parameters, and finding checkpoints of every layout."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from dss_jax import checkpoints, t5x_checkpoints


def _state(mesh, seed=0):
  rng = np.random.RandomState(seed)
  sharded = NamedSharding(mesh, PartitionSpec("data"))
  replicated = NamedSharding(mesh, PartitionSpec())
  return {
    "step": jax.device_put(jnp.int32(seed), replicated),
    "params": {
      "encoder": {
        "kernel": jax.device_put(rng.randn(8, 4).astype(np.float32), sharded)
      }
    },
    "opt_state": (jax.device_put(jnp.zeros((8, 4)), sharded),),
    "rng": jax.device_put(jnp.array([1, 2], jnp.uint32), replicated),
  }


def _abstract(state):
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
    state,
  )


@pytest.fixture
def mesh():
  return jax.sharding.Mesh(np.array(jax.devices()), ("data",))


def test_round_trip_keeps_values_shardings_and_data_position(tmp_path, mesh):
  ckpt = checkpoints.Checkpointer(tmp_path, max_to_keep=2)
  state = _state(mesh, seed=3)
  assert ckpt.save(3, state, batches=7)
  ckpt.wait()
  restored, batches = ckpt.restore(3, _abstract(state))
  ckpt.close()
  assert batches == 7
  got = restored["params"]["encoder"]["kernel"]
  np.testing.assert_array_equal(got, state["params"]["encoder"]["kernel"])
  assert got.sharding.is_equivalent_to(
    state["params"]["encoder"]["kernel"].sharding, 2
  )
  assert (tmp_path / "checkpoints" / "3" / "state").is_dir()


def test_keeps_only_the_latest_n(tmp_path, mesh):
  ckpt = checkpoints.Checkpointer(tmp_path, max_to_keep=2, async_save=False)
  for step in (1, 2, 3):
    ckpt.save(step, _state(mesh, seed=step), batches=step)
  assert not ckpt.save(3, _state(mesh, seed=3), batches=3)  # already there
  ckpt.close()
  assert checkpoints.checkpoint_steps(tmp_path) == [2, 3]


def test_restore_params_reads_newest_step_or_given_step(tmp_path, mesh):
  ckpt = checkpoints.Checkpointer(tmp_path, async_save=False)
  for step in (1, 2):
    ckpt.save(step, _state(mesh, seed=step), batches=step)
  ckpt.close()
  newest = checkpoints.restore_params(tmp_path)
  first = checkpoints.restore_params(tmp_path / "checkpoints" / "1")
  np.testing.assert_array_equal(
    newest["encoder"]["kernel"], _state(mesh, 2)["params"]["encoder"]["kernel"]
  )
  np.testing.assert_array_equal(
    first["encoder"]["kernel"], _state(mesh, 1)["params"]["encoder"]["kernel"]
  )
  assert set(newest) == {"encoder"}  # no optimizer state


def test_restore_params_fails_clearly_without_checkpoint(tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    checkpoints.restore_params(tmp_path)


def test_keep_best_by_metric(tmp_path, mesh):
  ckpt = checkpoints.Checkpointer(
    tmp_path,
    best_metric="accuracy",
    best_mode="max",
    keep_best=1,
    async_save=False,
  )
  for step, accuracy in ((1, 0.5), (2, 0.9), (3, 0.7)):
    ckpt.save_best(step, _state(mesh, step), step, {"accuracy": accuracy})
  ckpt.close()
  kept = sorted(p.name for p in (tmp_path / "best_checkpoints").iterdir())
  assert [k for k in kept if k.isdigit()] == ["2"]


def test_relative_model_dir_saves_and_restores(tmp_path, mesh, monkeypatch):
  """`make demo` writes under a relative out_dir; orbax wants absolute paths."""
  monkeypatch.chdir(tmp_path)
  ckpt = checkpoints.Checkpointer("run/model", async_save=True)
  state = _state(mesh, seed=5)
  assert ckpt.save(5, state, batches=5)
  ckpt.wait()
  ckpt.close()
  params = checkpoints.restore_params("run/model")
  np.testing.assert_array_equal(
    params["encoder"]["kernel"], state["params"]["encoder"]["kernel"]
  )
  assert (tmp_path / "run" / "model" / "checkpoints" / "5" / "state").is_dir()


def _params(seed: int) -> dict:
  rng = np.random.RandomState(seed)
  return {
    "encoder": {"kernel": rng.randn(4, 3).astype(np.float32)},
    "decoder": {"scale": rng.randn(3).astype(np.float32)},
  }


def test_reads_own_orbax_layout_and_lists_steps(tmp_path):
  manager = ocp.CheckpointManager(
    tmp_path / "checkpoints",
    item_handlers={"state": ocp.PyTreeCheckpointHandler()},
  )
  for step in (2, 4):
    state = {
      "params": _params(step),
      "opt_state": {"mu": np.zeros(2)},
      "step": step,
    }
    manager.save(
      step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state))
    )
  manager.wait_until_finished()
  manager.close()
  # A step still being written is not listed.
  (tmp_path / "checkpoints" / "6.orbax-checkpoint-tmp-123").mkdir()
  (tmp_path / "checkpoints" / "8").mkdir()
  assert [r.step for r in checkpoints.list_checkpoints(tmp_path)] == [2, 4]
  # The manager's own directory (e.g. MODEL_DIR/best_checkpoints) works too.
  managed = tmp_path / "checkpoints"
  assert [r.step for r in checkpoints.list_checkpoints(managed)] == [2, 4]
  # T5X's module lists T5X's checkpoint_<step> directories only.
  assert t5x_checkpoints.list_checkpoints(tmp_path) == []

  def load(path, **kwargs):
    return checkpoints.load_params(path, _params(0), **kwargs)

  jax.tree.map(np.testing.assert_array_equal, load(tmp_path), _params(4))
  jax.tree.map(
    np.testing.assert_array_equal, load(tmp_path, step=2), _params(2)
  )
  # A step directory and its state item say their step.
  for path in (managed / "2", managed / "2" / "state"):
    ref = checkpoints.resolve_checkpoint(path)
    assert (ref.step, ref.format) == (2, checkpoints.ORBAX)
    jax.tree.map(np.testing.assert_array_equal, load(path), _params(2))
  flat = checkpoints.read_params(tmp_path)
  # Only the parameters: the optimizer state stays on disk.
  assert sorted(flat) == ["decoder/scale", "encoder/kernel"]
  with pytest.raises(checkpoints.CheckpointError, match="no checkpoint for"):
    checkpoints.resolve_checkpoint(tmp_path, step=3)


def _saved_step(tmp_path, mesh):
  ckpt = checkpoints.Checkpointer(tmp_path, async_save=False)
  ckpt.save(1, _state(mesh, seed=1), batches=1)
  ckpt.close()
  return tmp_path / "checkpoints" / "1"


def _data_files(step_dir):
  return [
    p
    for p in (step_dir / "state").rglob("*")
    if p.is_file() and p.parent.name == "d"
  ]


def test_eval_reads_check_the_saved_checksums(tmp_path, mesh):
  step_dir = _saved_step(tmp_path, mesh)
  flat = checkpoints.read_params(tmp_path)
  np.testing.assert_array_equal(
    flat["encoder/kernel"], _state(mesh, 1)["params"]["encoder"]["kernel"]
  )
  # The arrays read fine but differ from the saved ones.
  record = step_dir / "data" / "metadata"
  values = json.loads(record.read_text())
  values["params_checksum"][0] += 1
  record.write_text(json.dumps(values))
  with pytest.raises(checkpoints.CorruptCheckpointError) as e:
    checkpoints.read_params(tmp_path)
  message = str(e.value)
  assert "\n" not in message
  assert "encoder/kernel does not match its checksum" in message
  assert str(step_dir / "state") in message and str(record) in message


def test_flipped_or_truncated_files_are_refused_in_one_line(tmp_path, mesh):
  step_dir = _saved_step(tmp_path, mesh)
  files = _data_files(step_dir)
  saved = {p: p.read_bytes() for p in files}
  for path in files:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
  with pytest.raises(checkpoints.CorruptCheckpointError) as e:
    checkpoints.read_params(tmp_path)
  assert "\n" not in str(e.value) and str(step_dir) in str(e.value)
  for path, data in saved.items():
    path.write_bytes(data[: len(data) // 3])
  with pytest.raises(checkpoints.CorruptCheckpointError) as e:
    checkpoints.load_params(tmp_path, _state(mesh, 1)["params"])
  assert "\n" not in str(e.value) and str(step_dir) in str(e.value)
  assert "cannot be read (file " in str(e.value)
