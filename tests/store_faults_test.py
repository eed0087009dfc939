"""`python -m dss_jax.annotate` and `dss-jax distill` under faults.

A full disk (a file size limit), a store path that is a folder or a
device, a second writer, Ctrl-C: each ends in one `error:` line with the
documented status, and the store keeps every whole line stored before, so
the same command resumes. A split named twice is annotated once.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import user_cards

from dss_jax import errors, grid
from dss_jax.distill import job as distill_job
from dss_jax.teacher import store as store_lib
from dss_jax.teacher.testing import FakeTeacherServer

# Runs the annotate command with a file size limit (the disk "fills" at
# that size; writes beyond it fail with EFBIG, as ENOSPC on a full disk).
_LIMITED = """\
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv.pop(1))
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.argv[0] = "dss_jax.annotate"
runpy.run_module("dss_jax.annotate", run_name="__main__", alter_sys=True)
"""


def _env(**extra):
  return {**os.environ, "JAX_PLATFORMS": "cpu", **extra}


def _offline(store, limit, *flags, prefix=("-m", "dss_jax.annotate")):
  return [
    sys.executable,
    *prefix,
    "--card=arith",
    "--split=test",
    f"--limit={limit}",
    "--backend=offline",
    f"--store={store}",
    "--noprogress",
    *flags,
  ]


def _errors(proc):
  return [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]


def _whole_records(path):
  data = path.read_bytes()
  assert data.endswith(b"\n")
  return [json.loads(line) for line in data.decode().splitlines()]


def test_full_disk_keeps_the_store_and_the_rerun_resumes(tmp_path):
  store = tmp_path / "store.jsonl"
  subprocess.run(
    _offline(store, 10),
    check=True,
    timeout=300,
    env=_env(),
    capture_output=True,
  )
  before = store.read_bytes()
  assert len(_whole_records(store)) == 10

  room = len(before) + 3 * (len(before) // 10)  # about three more lines
  full = subprocess.run(
    _offline(store, 40, prefix=("-c", _LIMITED, str(room))),
    capture_output=True,
    text=True,
    timeout=300,
    env=_env(),
  )
  assert full.returncode == 1, full.stderr[-2000:]
  assert "Traceback" not in full.stderr
  [line] = _errors(full)
  assert f"error: {store}: File too large while storing a teacher answer" in (
    line
  )
  assert "answers stored before are kept" in line
  records = _whole_records(store)  # no torn line left behind
  assert store.read_bytes().startswith(before)
  assert 10 <= len(records) < 40

  done = subprocess.run(
    _offline(store, 40),
    capture_output=True,
    text=True,
    timeout=300,
    env=_env(),
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert f"{len(records)} already stored" in done.stdout
  assert len(_whole_records(store)) == 40


def test_a_store_that_is_a_folder_is_one_line(tmp_path):
  store = tmp_path / "store.jsonl"
  store.mkdir()
  proc = subprocess.run(
    _offline(store, 4),
    capture_output=True,
    text=True,
    timeout=300,
    env=_env(),
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert _errors(proc) == [
    f"error: annotation store {store} is a folder; give a .jsonl file path "
    "(or remove the folder)"
  ]


def test_a_store_that_is_not_a_regular_file_is_refused(tmp_path):
  # A pipe, as /dev/full or /dev/zero: read whole at open, it never ends
  # (a device of endless zeros filled memory until the process was killed).
  fifo = tmp_path / "store.jsonl"
  os.mkfifo(fifo)
  for open_store in (store_lib.AnnotationStore, store_lib.read_records):
    with pytest.raises(errors.UserError, match="is not a regular file"):
      open_store(fifo)
  assert not (tmp_path / "store.jsonl.lock").exists()


def test_one_writer_per_store_and_a_dead_holder_is_taken_over(tmp_path):
  store = tmp_path / "store.jsonl"
  with store_lib.AnnotationStore(store):
    second = subprocess.run(
      _offline(store, 4),
      capture_output=True,
      text=True,
      timeout=300,
      env=_env(),
    )
  assert second.returncode == 2, second.stderr[-2000:]
  [line] = _errors(second)
  assert f"error: {store}: another process is writing this annotation " in (
    line
  )
  assert f"(pid {os.getpid()} on " in line
  assert store.read_bytes() == b""

  # A lock file left by a killed writer names it, but holds no lock.
  lock = tmp_path / "store.jsonl.lock"
  lock.write_text("pid 999999 on this host, since 2026-01-01 00:00:00 UTC\n")
  taken = subprocess.run(
    _offline(store, 4),
    capture_output=True,
    text=True,
    timeout=300,
    env=_env(),
  )
  assert taken.returncode == 0, taken.stderr[-2000:]
  assert len(_whole_records(store)) == 4


def test_two_distill_jobs_on_one_folder(tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  with store_lib.WriterLock(out / distill_job.LOCK_FILE, "job folder", out):
    proc = subprocess.run(
      [
        sys.executable,
        "-m",
        "dss_jax.distill",
        f"--out_dir={out}",
        "--seeds=0",
        "--train_steps=2",
      ],
      capture_output=True,
      text=True,
      timeout=300,
      env=_env(),
    )
  assert proc.returncode == 2, proc.stderr[-2000:]
  [line] = _errors(proc)
  assert f"error: {out}: another process is writing this job folder" in line
  assert not (out / "annotations").exists()


def _answer(prompt: str) -> str:
  del prompt
  return "Add them up. The answer is (1 + 1).\n\nQ: next"


def _served(server, store, paper_data_dir, *flags):
  return [
    sys.executable,
    "-m",
    "dss_jax.annotate",
    "--card=svamp",
    "--backend=openai",
    "--model=test-model",
    f"--base_url={server.url}/v1",
    f"--paper_data_dir={paper_data_dir}",
    f"--store={store}",
    "--noprogress",
    *flags,
  ]


def test_ctrl_c_keeps_the_store_and_exits_130(paper_data_dir, tmp_path):
  store = tmp_path / "store.jsonl"
  env = _env(OPENAI_API_KEY="k")
  with FakeTeacherServer(responder=_answer, latency_s=0.1) as server:
    flags = ("--split=test", "--limit=60", "--concurrency=2")
    process = subprocess.Popen(
      _served(server, store, paper_data_dir, *flags),
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (
      not store.exists() or store.read_bytes().count(b"\n") < 5
    ):
      time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert lines == [
      "error: interrupted; what finished is kept: rerun the same command "
      "to resume"
    ]
    stored = len(_whole_records(store))
    assert 5 <= stored < 60
    done = subprocess.run(
      _served(server, store, paper_data_dir, *flags),
      capture_output=True,
      text=True,
      timeout=300,
      env=env,
    )
  assert done.returncode == 0, done.stderr[-2000:]
  assert f"{stored} already stored" in done.stdout


def test_a_split_named_twice_is_annotated_once(paper_data_dir, tmp_path):
  store = tmp_path / "store.jsonl"
  with FakeTeacherServer(responder=_answer) as server:
    proc = subprocess.run(
      _served(server, store, paper_data_dir, "--split=test,test", "--limit=4"),
      capture_output=True,
      text=True,
      timeout=300,
      env=_env(OPENAI_API_KEY="k"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert server.counts["requests"] == 4
  assert len(_whole_records(store)) == 4


def _distill(card, out, train_steps):
  return [
    sys.executable,
    "-m",
    "dss_jax.distill",
    f"--task_card={card}",
    "--teacher=offline",
    "--student_vocabulary=byte",
    "--methods=dss_gold",
    "--model_sizes=demo-xs",
    "--fractions=1.0",
    "--seeds=0",
    f"--train_steps={train_steps}",
    "--batch_size=4",
    "--inputs_length=64",
    "--targets_length=26",
    "--label_length=4",
    "--eval_examples=4",
    "--validation_period=0",
    "--workers=1",
    "--noprogress_bars",
    f"--out_dir={out}",
  ]


@pytest.mark.slow
def test_ctrl_c_in_distill_saves_and_the_rerun_resumes(tmp_path):
  card = user_cards.files_card(tmp_path / "card", train=16, test=4)
  out = tmp_path / "out"
  # 400 steps: a checkpoint every 100 (a quarter), tens of steps a second.
  command = _distill(card, out, 400)
  process = subprocess.Popen(
    command,
    env=_env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  run = grid.run_dir(out, grid.expand(["dss_gold"], ["demo-xs"], [1.0], [0])[0])
  deadline = time.monotonic() + 300
  # The first periodic checkpoint: the training loop is running.
  while (
    time.monotonic() < deadline and not (run / "checkpoints" / "100").exists()
  ):
    time.sleep(0.05)
  process.send_signal(signal.SIGINT)
  _, stderr = process.communicate(timeout=300)
  assert process.returncode == 130, stderr[-3000:]
  assert "Traceback" not in stderr
  [line] = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
  assert line.startswith("error: stopped at step ")
  assert line.endswith("(checkpoint saved); rerun the same command to resume")
  step = int(line.split()[4])
  assert 100 <= step < 400
  assert (run / "checkpoints" / str(step)).is_dir()
  assert not (run / grid.RESULT_FILE).exists()
  # The lock went with the process: the same command takes the folder and
  # resumes the run from that checkpoint.
  done = subprocess.run(
    command, capture_output=True, text=True, timeout=600, env=_env()
  )
  assert done.returncode == 0, done.stderr[-3000:]
  log = "".join(p.read_text() for p in (out / "logs").glob("distill.*INFO*"))
  assert f"resumed from step {step} " in log
  result = json.loads((run / grid.RESULT_FILE).read_text())
  assert result["steps"] == 400
