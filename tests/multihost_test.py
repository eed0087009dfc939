"""Multi-host correctness, on one machine: 2 JAX processes x 2 CPU devices.

Each test starts real processes through `tests/multihost.py` (jax.distributed
on 127.0.0.1, gloo collectives) and checks them against one process with 4
devices:
  * the harness: one 4-device mesh, a global sum over both processes' data,
    and a killed process makes the other exit non-zero in bounded time;
  * input sharding: each host reads only its own input shards, every global
    step holds each example once, and the global batches equal those of one
    process reading all shards.
"""

from __future__ import annotations

import os
import signal
import time

import multihost
import numpy as np
import pytest


def global_sum(local_values: list[float]) -> dict:
  """Sums every process's `local_values` (one per local device) globally."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import Mesh, NamedSharding, PartitionSpec

  mesh = Mesh(np.array(jax.devices()), ("data",))
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  local = np.asarray(local_values, np.float32) * (1 + jax.process_index())
  array = jax.make_array_from_process_local_data(sharding, local)
  total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, PartitionSpec()))(
    array
  )
  return {
    "process": jax.process_index(),
    "processes": jax.process_count(),
    "devices": jax.device_count(),
    "local_devices": jax.local_device_count(),
    "sum": float(total),
  }


def test_two_processes_form_one_mesh_and_reduce_across(tmp_path):
  results = multihost.run_function(
    global_sum, {"local_values": [1.0, 2.0]}, tmp_path, timeout=180
  )
  # Process 0 holds [1, 2], process 1 holds [2, 4]: 9 in all.
  assert [r["process"] for r in results] == [0, 1]
  for r in results:
    assert (r["processes"], r["devices"], r["local_devices"]) == (2, 4, 2)
    assert r["sum"] == 9.0


def wait_forever_in_collectives() -> None:
  """All-reduces forever; ends only when the job breaks."""
  import jax
  from jax.experimental import multihost_utils

  print("ready", flush=True)
  while True:
    multihost_utils.process_allgather(np.array(jax.process_index()))
    time.sleep(0.05)


@pytest.mark.parametrize("victim", [0, 1])
def test_kill_9_of_one_process_stops_the_other_in_bounded_time(
  tmp_path, victim
):
  target = f"{__name__}:{wait_forever_in_collectives.__name__}"
  job = multihost.start(
    lambda i: [multihost.sys.executable, multihost.__file__, target, "{}"],
    tmp_path,
    env={
      multihost._ENV_COORDINATOR: f"127.0.0.1:{multihost.free_port()}",
      multihost._ENV_PROCESSES: "2",
      multihost._ENV_INDEX: "{index}",
    },
  )
  try:
    deadline = time.monotonic() + 120
    while not all("ready" in job.log(i) for i in (0, 1)):
      assert time.monotonic() < deadline, job.log(0) + job.log(1)
      assert all(p.poll() is None for p in job.procs), job.log(0) + job.log(1)
      time.sleep(0.2)
    start = time.monotonic()
    job.signal(victim, signal.SIGKILL)
    survivor = 1 - victim
    # The heartbeat timeout (15 s) plus the time to notice it.
    results = job.wait(
      timeout=3 * multihost.HEARTBEAT_TIMEOUT_S + 30, expect=None
    )
    took = time.monotonic() - start
  finally:
    job.kill_all()
  assert results[victim].returncode == -signal.SIGKILL
  assert results[survivor].returncode != 0, results[survivor].log[-3000:]
  assert took < 3 * multihost.HEARTBEAT_TIMEOUT_S + 30


# ----------------------------------------------------------------------------
# Training through `python -m dss_jax.train`: 2 x 2 devices against 1 x 4.
# ----------------------------------------------------------------------------

TRAIN_STEPS = 12
CHECKPOINT_PERIOD = 4
BATCH_SIZE = 8
LENGTHS = {"inputs": 96, "targets": 48}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory, paper_data_dir):
  from dss_jax import datasets

  data_dir = tmp_path_factory.mktemp("tfds")
  os.environ["DSS_PAPER_DATA_DIR"] = str(paper_data_dir)
  datasets.build_annotated("svamp", "palm", data_dir=str(data_dir))
  return data_dir


@pytest.fixture(scope="module")
def xla_cache(tmp_path_factory):
  """One compilation cache for the module's runs (resumes compile less)."""
  return tmp_path_factory.mktemp("xla_cache")


def _train_args(model_dir, train_steps=TRAIN_STEPS, *extra):
  return [
    "--gin_file=tiny.gin",
    f'--gin.MODEL_DIR="{model_dir}"',
    '--gin.MIXTURE_OR_TASK_NAME="dss_svamp_palm"',
    f"--gin.TRAIN_STEPS={train_steps}",
    f"--gin.CHECKPOINT_PERIOD={CHECKPOINT_PERIOD}",
    f"--gin.BATCH_SIZE={BATCH_SIZE}",
    f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
    "--gin.trainer.train.keep_checkpoints=10",
    "--gin.trainer.train.peak_flops=1e12",
    "--gin.trainer.train.progress_bar=False",
    *extra,
  ]


def _train(
  tfds_dir, xla_cache, model_dir, processes, devices, *extra, steps=TRAIN_STEPS
) -> multihost.Job:
  return multihost.start_module(
    "dss_jax.train",
    _train_args(model_dir, steps, *extra),
    model_dir.parent / f"{model_dir.name}_logs",
    processes=processes,
    devices=devices,
    env={
      "TFDS_DATA_DIR": str(tfds_dir),
      "JAX_COMPILATION_CACHE_DIR": str(xla_cache),
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    },
  )


def _params(model_dir, step):
  import jax

  from dss_jax import checkpoints

  params = checkpoints.restore_params(model_dir / "checkpoints" / str(step))
  return {
    jax.tree_util.keystr(k): np.asarray(v)
    for k, v in jax.tree_util.tree_leaves_with_path(params)
  }


def _max_abs_diff(a, b) -> float:
  assert a.keys() == b.keys()
  return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def _bitwise_equal(a, b) -> bool:
  return a.keys() == b.keys() and all(
    np.array_equal(a[k].view(np.uint32), b[k].view(np.uint32)) for k in a
  )


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, tfds_dir, xla_cache):
  """An uninterrupted 2 x 2 run: its model dir."""
  model_dir = tmp_path_factory.mktemp("two") / "run"
  _train(tfds_dir, xla_cache, model_dir, 2, 2).wait(timeout=600)
  return model_dir


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory, tfds_dir, xla_cache):
  """The same run on 1 x 4 devices, reading the same 2 input shards."""
  model_dir = tmp_path_factory.mktemp("one") / "run"
  _train(tfds_dir, xla_cache, model_dir, 1, 4, "--gin.DATA_SHARDS=2").wait(
    timeout=600
  )
  return model_dir


def test_two_processes_train_as_one(two_process_run, one_process_run):
  from dss_jax import checkpoints

  steps = list(range(CHECKPOINT_PERIOD, TRAIN_STEPS + 1, CHECKPOINT_PERIOD))
  assert checkpoints.checkpoint_steps(two_process_run) == steps
  assert checkpoints.checkpoint_steps(one_process_run) == steps
  for step in steps:
    two = _params(two_process_run, step)
    one = _params(one_process_run, step)
    diff = _max_abs_diff(two, one)
    print(
      f"step {step}: max |2x2 - 1x4| = {diff:.3g}, bitwise {_bitwise_equal(two, one)}"
    )
    assert diff <= 1e-6


# ----------------------------------------------------------------------------
# Checkpoints and preemption, on 2 devices in all (2 x 1 and 1 x 2): a sum of
# two partial sums is the same in either order, so runs on either layout are
# bitwise equal and a resume on the other layout can be checked bit for bit.
# ----------------------------------------------------------------------------

LONG_STEPS = 40


def _wait_for(job, index, text, timeout=400):
  deadline = time.monotonic() + timeout
  while text not in job.log(index):
    if job.procs[index].poll() is not None or time.monotonic() > deadline:
      job.kill_all()
      pytest.fail(
        f"process {index} never logged {text!r}:\n{job.log(index)[-3000:]}"
      )
    time.sleep(0.2)


@pytest.fixture(scope="module")
def uninterrupted_2x1(tmp_path_factory, tfds_dir, xla_cache):
  model_dir = tmp_path_factory.mktemp("u") / "run"
  _train(tfds_dir, xla_cache, model_dir, 2, 1, steps=LONG_STEPS).wait(600)
  return model_dir


def test_sigterm_to_one_process_then_resume_on_other_process_counts(
  tmp_path, tfds_dir, xla_cache, uninterrupted_2x1
):
  import re
  import shutil

  from dss_jax import checkpoints

  # SIGTERM reaches process 1 only, as a maintenance event may.
  model_dir = tmp_path / "run"
  job = _train(tfds_dir, xla_cache, model_dir, 2, 1, steps=LONG_STEPS)
  _wait_for(job, 0, f"saved checkpoint at step {CHECKPOINT_PERIOD}")
  job.signal(1, signal.SIGTERM)
  results = job.wait(timeout=300)  # both exit 0
  stops = [
    re.findall(r"stopped by SIGTERM at step (\d+)", r.log) for r in results
  ]
  assert stops[0] == stops[1] and len(stops[0]) == 1, stops
  stopped = int(stops[0][0])
  assert CHECKPOINT_PERIOD < stopped < LONG_STEPS
  assert checkpoints.checkpoint_steps(model_dir)[-1] == stopped

  # 2 -> 1: one process with both devices resumes the 2-process checkpoint.
  job = _train(tfds_dir, xla_cache, model_dir, 1, 2, steps=LONG_STEPS)
  log = job.wait(timeout=600)[0].log
  assert f"resumed from step {stopped}" in log
  assert "reading 2 input shards, as the checkpoint did" in log
  want = _params(uninterrupted_2x1, LONG_STEPS)
  assert _bitwise_equal(_params(model_dir, LONG_STEPS), want)

  # 1 -> 2: two processes resume a checkpoint the single process wrote.
  again = tmp_path / "again"
  shutil.copytree(model_dir, again)
  shutil.rmtree(again / "checkpoints" / str(LONG_STEPS))
  resumed_at = checkpoints.checkpoint_steps(again)[-1]
  assert stopped < resumed_at < LONG_STEPS
  job = _train(tfds_dir, xla_cache, again, 2, 1, steps=LONG_STEPS)
  assert f"resumed from step {resumed_at}" in job.wait(timeout=600)[0].log
  assert _bitwise_equal(_params(again, LONG_STEPS), want)
