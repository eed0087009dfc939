"""A run killed with SIGKILL and resumed ends with the same store."""

import json
import os
import signal
import subprocess
import sys
import time

from dss_jax.teacher.testing import FakeTeacherServer

_EXAMPLES = 60
_CONCURRENCY = 4


def _command(url, store):
  return [
    sys.executable,
    "-m",
    "dss_jax.annotate",
    "--card=svamp",
    "--split=test",
    f"--limit={_EXAMPLES}",
    f"--base_url={url}",
    f"--concurrency={_CONCURRENCY}",
    f"--store={store}",
    "--progress=false",
  ]


def _records(path):
  return sorted(
    json.dumps(json.loads(line), sort_keys=True)
    for line in path.read_text().splitlines()
  )


def _lines(path):
  return path.read_text().count("\n") if path.exists() else 0


def test_sigkill_then_resume_matches_uninterrupted_run(
  repo_dir, paper_data_dir, tmp_path
):
  env = {
    **os.environ,
    "PYTHONPATH": str(repo_dir),
    "GEMINI_API_KEY": "k",
    "DSS_PAPER_DATA_DIR": str(paper_data_dir),
  }
  with FakeTeacherServer(latency_s=0.05) as server:
    clean = tmp_path / "clean.jsonl"
    subprocess.run(
      _command(server.url, clean), env=env, check=True, timeout=120
    )
    assert server.counts["requests"] == _EXAMPLES

    killed = tmp_path / "killed.jsonl"
    before = server.counts["requests"]
    process = subprocess.Popen(_command(server.url, killed), env=env)
    deadline = time.monotonic() + 60
    while _lines(killed) < _EXAMPLES // 3 and time.monotonic() < deadline:
      time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    stored_at_kill = _lines(killed)
    assert 0 < stored_at_kill < _EXAMPLES, "the kill must land mid-run"
    subprocess.run(
      _command(server.url, killed), env=env, check=True, timeout=120
    )
    calls = server.counts["requests"] - before

  assert _records(killed) == _records(clean)
  # Only calls in flight at the kill are made twice.
  assert _EXAMPLES <= calls <= _EXAMPLES + _CONCURRENCY
