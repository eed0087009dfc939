"""Multi-host correctness, on one machine: 2 JAX processes x 2 CPU devices.

Every training run this module starts takes the default path (no peak FLOP/s
given, so each process measures its own CPU, on its own device); the 2 x 1
and 1 x 2 pair is benchmarks/multihost_equality.py's (`--smoke`), which
gives the peak and turns the progress bar off.

Each test starts real processes through `tests/multihost.py` (jax.distributed
on 127.0.0.1, gloo collectives) and checks them against one process with 4
devices:
  * the harness: one 4-device mesh, a global sum over both processes' data,
    and a killed process makes the other exit non-zero in bounded time;
  * one fate: an exception on one process (a user error or a bug) is one
    `error:` line there and one line naming it on the other, both exit
    non-zero at once, and no C++ abort dump; the same through
    `python -m dss_jax.train` for a host whose data is not built;
  * input sharding: each host reads only its own input shards, every global
    step holds each example once, and the global batches equal those of one
    process reading all shards;
  * training through `python -m dss_jax.train`: 2 x 2 devices end within
    1e-6 of 1 x 4 on the same global batches, 2 x 1 bitwise equal to 1 x 2;
  * preemption and checkpoints: SIGTERM to one process stops both at one
    step with status 0; the checkpoint resumes on 1 process and back on 2
    bit-identically to an uninterrupted run.
"""

from __future__ import annotations

import itertools
import os
import signal
import time

import multihost
import numpy as np
import pytest

# The tests that share a module's training runs (module fixtures) run on one
# test worker: `make test` passes `--dist loadfile`, which keeps each test
# file on one worker, so each shared run happens once.


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
  job = multihost.start_function(wait_forever_in_collectives, {}, tmp_path)
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


def fail_on_one_process(victim: int, user_error: bool) -> None:
  """Process `victim` raises; the others sit in collectives meanwhile."""
  import jax
  from jax.experimental import multihost_utils

  from dss_jax import errors, partitioning

  def main():
    multihost_utils.process_allgather(np.array(jax.process_index()))
    if jax.process_index() == victim:
      time.sleep(1)
      if user_error:
        raise errors.UserError("no data here; build it first")
      raise RuntimeError("a bug")
    while True:
      multihost_utils.process_allgather(np.array(jax.process_index()))
      time.sleep(0.05)

  partitioning.run_as_one_job(main, multihost.HEARTBEAT_TIMEOUT_S)


# No C++ abort (JAX's fatal log and its stack dump) on an ordinary error.
_ABORT_MARKS = ("Check failure", "*** ", "Terminating process", "F1", "F2")


def _error_lines(log: str) -> list[str]:
  return [line for line in log.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize(
  "victim,user_error", [(1, True), (0, True), (1, False)]
)
def test_an_exception_on_one_process_ends_every_process_in_one_line(
  tmp_path, victim, user_error
):
  job = multihost.start_function(
    fail_on_one_process, {"victim": victim, "user_error": user_error}, tmp_path
  )
  # Well inside the heartbeat timeout: the failure is announced, not
  # discovered by a missing heartbeat (the startup takes the rest).
  results = job.wait(timeout=120, expect=None)
  survivor = 1 - victim
  want = 2 if user_error else 1
  assert results[victim].returncode == want, results[victim].log[-3000:]
  assert results[survivor].returncode == 1, results[survivor].log[-3000:]
  mine = _error_lines(results[victim].log)
  theirs = _error_lines(results[survivor].log)
  text = "no data here" if user_error else "RuntimeError: a bug"
  assert len(mine) == 1 and text in mine[0], results[victim].log[-3000:]
  assert len(theirs) == 1, results[survivor].log[-3000:]
  assert f"process {victim} of 2 stopped" in theirs[0] and text in theirs[0]
  for r in results:
    assert not any(m in r.log for m in _ABORT_MARKS), r.log[-3000:]
  # A bug keeps its traceback; a user error and the echo on the other
  # process do not.
  assert ("Traceback" in results[victim].log) == (not user_error)
  assert "Traceback" not in results[survivor].log


# ----------------------------------------------------------------------------
# Training through `python -m dss_jax.train`: 2 x 2 devices against 1 x 4.
# ----------------------------------------------------------------------------

TRAIN_STEPS = 12
CHECKPOINT_PERIOD = 4
BATCH_SIZE = 8
LENGTHS = {"inputs": 96, "targets": 48}
_LAUNCHES = itertools.count()


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory, paper_data_dir):
  from dss_jax import datasets

  data_dir = tmp_path_factory.mktemp("tfds")
  os.environ["DSS_PAPER_DATA_DIR"] = str(paper_data_dir)
  datasets.build_annotated("svamp", "palm", data_dir=str(data_dir))
  return data_dir


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
    # No peak_flops or progress_bar override: every process takes the
    # default path (each measures its own CPU's peak for MFU).
    *extra,
  ]


def _train(
  tfds_dir, model_dir, processes, devices, *extra, steps=TRAIN_STEPS
) -> multihost.Job:
  return multihost.start_module(
    "dss_jax.train",
    _train_args(model_dir, steps, *extra),
    # One log folder per launch: a resume must not overwrite the first logs.
    model_dir.parent / f"{model_dir.name}_logs_{next(_LAUNCHES)}",
    processes=processes,
    devices=devices,
    # The processes inherit the suite's compilation cache (conftest.py),
    # so a resume or a second layout reads the first run's programs.
    env={"TFDS_DATA_DIR": str(tfds_dir)},
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
def two_process_run(tmp_path_factory, tfds_dir):
  """An uninterrupted 2 x 2 run: its model dir."""
  model_dir = tmp_path_factory.mktemp("two") / "run"
  _train(tfds_dir, model_dir, 2, 2).wait(timeout=600)
  return model_dir


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory, tfds_dir):
  """The same run on 1 x 4 devices, reading the same 2 input shards."""
  model_dir = tmp_path_factory.mktemp("one") / "run"
  _train(tfds_dir, model_dir, 1, 4, "--gin.DATA_SHARDS=2").wait(timeout=600)
  return model_dir


@pytest.mark.slow
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
      f"step {step}: max |2x2 - 1x4| = {diff:.3g}, "
      f"bitwise {_bitwise_equal(two, one)}"
    )
    # gloo sums the gradients in another order: float32 noise, 4.4e-7 on the
    # full release's SVAMP and 2.1e-6 on the slices in tests/testdata. A real
    # mismatch (a wrong shard, a lost or repeated step) moves parameters by
    # about the learning rate, 1e-3 a step with Adam, 100 times the limit.
    assert diff <= 1e-5


SHORT_STEPS = CHECKPOINT_PERIOD


def test_a_host_without_its_data_ends_the_job_in_one_line(tmp_path, tfds_dir):
  # Process 1's TFDS_DATA_DIR lacks the dataset; process 0's has it.
  data = tmp_path / "data"
  data.mkdir()
  (data / "0").symlink_to(tfds_dir)
  (data / "1").mkdir()
  job = multihost.start_module(
    "dss_jax.train",
    _train_args(tmp_path / "run", SHORT_STEPS),
    tmp_path / "logs",
    processes=2,
    devices=1,
    env={"TFDS_DATA_DIR": str(data / "{index}")},
  )
  ended = {}
  deadline = time.monotonic() + 600
  while len(ended) < 2 and time.monotonic() < deadline:
    for i, p in enumerate(job.procs):
      if i not in ended and p.poll() is not None:
        ended[i] = time.monotonic()
    time.sleep(0.1)
  results = job.wait(timeout=1, expect={0: 1, 1: 2})
  # Process 0 stops as soon as process 1 says why, not after a heartbeat
  # timeout (nor JAX's 300 s shutdown barrier).
  assert ended[0] - ended[1] < multihost.HEARTBEAT_TIMEOUT_S
  mine, theirs = (_error_lines(r.log) for r in (results[1], results[0]))
  assert len(mine) == 1 and "is not built in" in mine[0], results[1].log[-3000:]
  assert len(theirs) == 1, results[0].log[-3000:]
  assert "process 1 of 2 stopped" in theirs[0]
  assert "is not built in" in theirs[0]
  for r in results:
    assert not any(m in r.log for m in _ABORT_MARKS), r.log[-3000:]
    assert "Traceback" not in r.log


def read_global_batches(
  tfds_dir: str, task: str, steps: int, shuffle: bool, data_shards: int | None
) -> list[list[str]]:
  """This process's rows of the first `steps` batches, one key per example."""
  import hashlib

  os.environ["TFDS_DATA_DIR"] = tfds_dir
  import seqio

  from dss_jax import input_pipeline, seqio_tasks

  seqio_tasks.register_card("svamp", "palm", vocabulary=seqio.ByteVocabulary())
  config = input_pipeline.DatasetConfig(
    task, LENGTHS, BATCH_SIZE, shuffle=shuffle, data_shards=data_shards
  )
  batches = input_pipeline.iterate(input_pipeline.make_dataset(config))
  out = []
  for _ in range(steps):
    batch = next(batches)
    rows = np.concatenate(
      [batch["encoder_input_tokens"], batch["decoder_target_tokens"]], axis=1
    )
    out.append([hashlib.sha1(row.tobytes()).hexdigest()[:16] for row in rows])
  return out


@pytest.mark.slow
@pytest.mark.parametrize(
  "task,steps,shuffle",
  [("dss_svamp_palm_label", 100, False), ("dss_svamp_palm", 10, True)],
)
def test_each_host_reads_its_own_shard_and_steps_match_one_process(
  tmp_path, monkeypatch, tfds_dir, task, steps, shuffle
):
  args = {"tfds_dir": str(tfds_dir), "task": task, "steps": steps}
  hosts = multihost.run_function(
    read_global_batches,
    {**args, "shuffle": shuffle, "data_shards": None},
    tmp_path,
  )
  monkeypatch.setenv("TFDS_DATA_DIR", str(tfds_dir))
  one = read_global_batches(**args, shuffle=shuffle, data_shards=2)
  for step in range(steps):
    # Host 0's rows, then host 1's, are the single process's global batch.
    assert hosts[0][step] + hosts[1][step] == one[step]
    # Each example once per global step.
    assert len(set(one[step])) == BATCH_SIZE
  if not shuffle:
    # 800 rows: about one pass over the release's training examples, three
    # over the slices' (a few are duplicates): the hosts' shards are
    # disjoint, and together they hold every example.
    seen = [{k for batch in host for k in batch} for host in hosts]
    assert not seen[0] & seen[1]
    everything = read_global_batches(**args, shuffle=False, data_shards=1)
    assert seen[0] | seen[1] == {k for batch in everything for k in batch}


# ----------------------------------------------------------------------------
# Checkpoints and preemption, on 2 devices in all (2 x 1 and 1 x 2): a sum of
# two partial sums is the same in either order, so runs on either layout are
# bitwise equal and a resume on the other layout can be checked bit for bit.
# ----------------------------------------------------------------------------

# Room for a SIGTERM sent after the first checkpoint to take effect (a step
# or two later) with a checkpoint still to come before the end.
LONG_STEPS = 24


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
def equality_benchmark(tmp_path_factory, paper_data_dir):
  """benchmarks/multihost_equality.py --smoke at this module's run length.

  The benchmark trains 2 x 1 and 1 x 2 devices on the same 2 input shards
  (`work/2x1`, `work/1x2`) and prints how their parameters compare; its
  smoke mode runs here, not in tests/benchmarks_test.py, so the pair is
  trained once. Returns (work folder, what it printed).
  """
  import contextlib
  import io

  import benchmark_scripts

  work = tmp_path_factory.mktemp("equality")
  out = io.StringIO()
  with benchmark_scripts.undone(), contextlib.redirect_stdout(out):
    benchmark_scripts.load("multihost_equality").main(
      [
        "--smoke",
        f"--steps={LONG_STEPS}",
        f"--checkpoint_period={CHECKPOINT_PERIOD}",
        f"--paper_data_dir={paper_data_dir}",
        f"--work_dir={work}",
      ]
    )
  return work, out.getvalue()


@pytest.fixture(scope="module")
def uninterrupted_2x1(equality_benchmark):
  work, _ = equality_benchmark
  return work / "2x1"


@pytest.mark.slow
def test_two_processes_of_one_device_train_as_one(equality_benchmark):
  import re

  from dss_jax import checkpoints

  # 2 x 1 against 1 x 2 reading the same 2 shards: a sum of two partial sums
  # is the same in either order, so the parameters are bitwise equal, at
  # every checkpoint. The benchmark compares them (each parameter's bits, as
  # `_bitwise_equal`) and prints a row per checkpoint.
  work, printed = equality_benchmark
  steps = list(range(CHECKPOINT_PERIOD, LONG_STEPS + 1, CHECKPOINT_PERIOD))
  for layout in ("2x1", "1x2"):
    assert checkpoints.checkpoint_steps(work / layout) == steps
  number = r"[0-9][0-9,]*(?:\.[0-9]+)?"
  for devices in ("2 x 1", "1 x 2"):
    row = rf"^trained {devices} devices: {LONG_STEPS} steps in {number} s$"
    assert re.search(row, printed, re.MULTILINE), printed
  compared = re.findall(
    r"^2x1 vs 1x2 step +(\d+): max \|diff\| (\S+), bit-identical (\w+)$",
    printed,
    re.MULTILINE,
  )
  assert compared == [(str(s), "0", "True") for s in steps], printed


@pytest.mark.slow
def test_sigterm_to_one_process_then_resume_on_other_process_counts(
  tmp_path, tfds_dir, uninterrupted_2x1
):
  import re
  import shutil

  from dss_jax import checkpoints

  # SIGTERM reaches process 1 only, as a maintenance event may.
  model_dir = tmp_path / "run"
  job = _train(tfds_dir, model_dir, 2, 1, steps=LONG_STEPS)
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
  job = _train(tfds_dir, model_dir, 1, 2, steps=LONG_STEPS)
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
  job = _train(tfds_dir, again, 2, 1, steps=LONG_STEPS)
  assert f"resumed from step {resumed_at}" in job.wait(timeout=600)[0].log
  assert _bitwise_equal(_params(again, LONG_STEPS), want)


@pytest.mark.slow
def test_kill_9_of_one_trainer_stops_the_other_in_bounded_time(
  tmp_path, tfds_dir
):
  # Process 1 dies mid-run (kill -9: no handler, no goodbye); process 0 is
  # then inside a step's collectives or between steps.
  job = _train(tfds_dir, tmp_path / "run", 2, 1, steps=LONG_STEPS)
  _wait_for(job, 0, f"saved checkpoint at step {CHECKPOINT_PERIOD}")
  start = time.monotonic()
  job.signal(1, signal.SIGKILL)
  limit = 3 * multihost.HEARTBEAT_TIMEOUT_S + 30
  results = job.wait(timeout=limit, expect=None)
  assert results[1].returncode == -signal.SIGKILL
  assert results[0].returncode != 0, results[0].log[-3000:]
  assert time.monotonic() - start < limit


# ----------------------------------------------------------------------------
# Eval-only jobs and inference: each host decodes its share.
# ----------------------------------------------------------------------------

EVAL_EXAMPLES = 10


def eval_and_infer(tfds_dir: str, model_dir: str, out_dir: str) -> dict:
  """Scores `model_dir`'s last checkpoint and infers, writing to `out_dir`."""
  import pathlib

  os.environ["TFDS_DATA_DIR"] = tfds_dir
  import seqio

  from dss_jax import evaluation, inference, partitioning, seqio_tasks
  from dss_jax.models import config, t5

  seqio_tasks.register_card("svamp", "palm", vocabulary=seqio.ByteVocabulary())
  model = t5.Transformer(config.t5_1_1_config("tiny", dropout_rate=0.0))
  decode = evaluation.DecodeConfig(max_decode_length=16)
  out = pathlib.Path(out_dir)
  scores = evaluation.evaluate_checkpoints(
    model,
    model_dir,
    "dss_svamp_palm_label",
    feature_lengths=LENGTHS,
    output_dir=str(out / "eval"),
    split="test",
    batch_size=4,
    num_examples=EVAL_EXAMPLES,
    decode=decode,
    partitioner=partitioning.Partitioner(),
  )
  inferred = inference.infer(
    model,
    model_dir,
    str(out / "infer.jsonl"),
    mixture_or_task_name="dss_svamp_palm_label",
    split="test",
    input_length=LENGTHS["inputs"],
    max_decode_length=16,
    batch_size=4,
    num_examples=EVAL_EXAMPLES,
    partitioner=partitioning.Partitioner(),
  )
  return {
    "scores": {str(k): v for k, v in scores.items()},
    "predictions": [r["prediction"] for r in inferred.rows],
    "infer_metrics": inferred.metrics,
  }


@pytest.mark.slow
def test_eval_and_infer_decode_a_share_per_host(
  tmp_path, tfds_dir, two_process_run
):
  args = {"tfds_dir": str(tfds_dir), "model_dir": str(two_process_run)}
  two = multihost.run_function(
    eval_and_infer, {**args, "out_dir": str(tmp_path / "two")}, tmp_path / "2"
  )
  (one,) = multihost.run_function(
    eval_and_infer,
    {**args, "out_dir": str(tmp_path / "one")},
    tmp_path / "1",
    processes=1,
    devices=4,
  )
  # Each host decoded half of the examples (eval, then inference).
  logs = [(tmp_path / "2" / f"process_{i}.log").read_text() for i in (0, 1)]
  for i, (start, stop) in enumerate([(0, 5), (5, 10)]):
    line = f"process {i} decodes examples {start}-{stop} of {EVAL_EXAMPLES}"
    assert logs[i].count(line) == 2, logs[i][-3000:]
  # Metrics once, on process 0, equal to one process's; every host has
  # every prediction, the same as one process's.
  step = str(TRAIN_STEPS)
  assert two[0]["scores"] == one["scores"] and step in one["scores"]
  assert two[1]["scores"] == {step: {}}
  assert two[0]["infer_metrics"] == one["infer_metrics"]
  assert two[0]["infer_metrics"] and two[1]["infer_metrics"] == {}
  assert two[0]["predictions"] == two[1]["predictions"] == one["predictions"]
  # One copy of each file, the same as one process writes.
  for name in (
    "infer.jsonl",
    "eval/dss_svamp_palm_label-metrics.jsonl",
    f"eval/dss_svamp_palm_label-{TRAIN_STEPS:06d}.jsonl",
  ):
    written = (tmp_path / "two" / name).read_text()
    assert written == (tmp_path / "one" / name).read_text(), name
  metrics_lines = (
    (tmp_path / "two" / "eval/dss_svamp_palm_label-metrics.jsonl")
    .read_text()
    .splitlines()
  )
  assert len(metrics_lines) == 1


# ----------------------------------------------------------------------------
# Large checkpoints: each host reads only what its devices hold.
# ----------------------------------------------------------------------------

ROWS, COLS = 1024, 1024  # 4 MiB of float32, in 8 chunks of 512 KiB
_FOLD = 4


def _big_array() -> np.ndarray:
  # Random bits, so compression leaves the chunks as large as the data.
  rng = np.random.default_rng(0)
  return rng.standard_normal((ROWS, COLS), dtype=np.float32)


def _bytes_read() -> int:
  """Bytes this process has read through read(2) and friends so far."""
  with open("/proc/self/io") as f:
    return int(dict(line.split(": ") for line in f)["rchar"])


def restore_counting_bytes(legacy: str, orbax_dir: str) -> dict:
  """Restores both checkpoints sharded by rows over every device."""
  import jax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec

  from dss_jax import checkpoints, t5x_checkpoints

  mesh = Mesh(np.array(jax.devices()), ("rows",))
  sharding = NamedSharding(mesh, PartitionSpec("rows"))
  shape = jax.ShapeDtypeStruct((ROWS, COLS), np.float32, sharding=sharding)
  reference = {"encoder": {"kernel": shape}}

  def check(array) -> bool:
    want = _big_array()
    return all(
      np.array_equal(np.asarray(s.data), want[s.index])
      for s in array.addressable_shards
    )

  before = _bytes_read()
  params = t5x_checkpoints.load_params(
    legacy, reference, shardings={"encoder": {"kernel": sharding}}
  )
  legacy_read = _bytes_read() - before
  checkpointer = checkpoints.Checkpointer(orbax_dir, async_save=False)
  before = _bytes_read()
  state, _ = checkpointer.restore(1, {"params": reference})
  orbax_read = _bytes_read() - before
  checkpointer.close()
  return {
    "legacy_bytes": legacy_read,
    "orbax_bytes": orbax_read,
    "legacy_ok": check(params["encoder"]["kernel"]),
    "orbax_ok": check(state["params"]["encoder"]["kernel"]),
  }


def test_restore_reads_only_this_hosts_slices(tmp_path, monkeypatch):
  import jax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec

  from dss_jax import checkpoints, t5x_checkpoints

  # Chunks of 512 KiB stand in for the 64 MiB chunks of a large model.
  monkeypatch.setattr(t5x_checkpoints, "_CHUNK_BYTES", ROWS * COLS * 4 // 8)
  t5x_checkpoints.save_t5x_checkpoint(
    {"encoder": {"kernel": _big_array()}}, tmp_path / "t5x", 1
  )
  # Written from 8 devices, a row block each, as a sharded trainer saves.
  mesh = Mesh(np.array(jax.devices()[:8]), ("rows",))
  array = jax.device_put(
    _big_array(), NamedSharding(mesh, PartitionSpec("rows"))
  )
  checkpointer = checkpoints.Checkpointer(tmp_path / "run", async_save=False)
  checkpointer.save(1, {"params": {"encoder": {"kernel": array}}}, 0)
  checkpointer.close()

  args = {
    "legacy": str(tmp_path / "t5x" / "checkpoint_1"),
    "orbax_dir": str(tmp_path / "run"),
  }
  # The processes count the bytes they read: without the suite's compilation
  # cache (conftest.py), whose entries they would read too.
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")
  hosts = multihost.run_function(restore_counting_bytes, args, tmp_path / "2")
  (one,) = multihost.run_function(
    restore_counting_bytes, args, tmp_path / "1", processes=1, devices=4
  )
  total = ROWS * COLS * 4
  for fmt in ("legacy", "orbax"):
    print(
      f"{fmt}: bytes read per process, 2 x 2: "
      f"{[h[fmt + '_bytes'] for h in hosts]}, 1 x 4: {one[fmt + '_bytes']} "
      f"(array: {total})"
    )
    assert one[fmt + "_ok"] and all(h[fmt + "_ok"] for h in hosts)
    # One process reads the whole array; each of two reads its half (plus
    # metadata and chunk framing), never the other half.
    # (gzip keeps about 92% of normal floats' bytes.)
    assert one[fmt + "_bytes"] >= total * 0.85
    for h in hosts:
      assert 0.4 < h[fmt + "_bytes"] / one[fmt + "_bytes"] < 0.6


class _SavedShards:
  """Stands in for a Checkpointer whose newest step read `shards` shards."""

  directory = "MODEL_DIR/checkpoints"

  def __init__(self, shards):
    self.shards = shards

  def saved_data_shards(self):
    return self.shards


def test_resume_takes_the_checkpoints_data_shards():
  from dss_jax import input_pipeline, trainer

  resumed = trainer._resumed_data_shards
  assert resumed(_SavedShards(None), None) is None  # a new run
  assert resumed(_SavedShards(None), 4) == 4
  assert resumed(_SavedShards(2), None) == 2  # 2 -> 1 process
  assert resumed(_SavedShards(2), 2) == 2
  with pytest.raises(input_pipeline.DataShardsError, match="DATA_SHARDS 4"):
    resumed(_SavedShards(2), 4)
