"""The probe's smoke subset (`benchmarks/probe_bad_inputs.py --fast`).

A handful of bad inputs and faults, each a real subprocess of an entry point
(a teacher server that asks to wait an hour, one that echoes the API key,
one answering in the wrong shape, Vertex AI without credentials, a teacher
without a model, two workers on one seed, a second teacher sample asked
after annotations exist, results CSVs in percent or of two cards): none may
end silently, in a traceback or in a hang. The full probe (`python benchmarks/probe_bad_inputs.py
--paper_data_dir=...`) runs every case; this keeps the fast ones in CI.
"""

import os
import pathlib
import re
import subprocess
import sys

_REPO = pathlib.Path(__file__).resolve().parents[1]


def test_the_fast_probes_end_in_one_line_or_are_handled(tmp_path):
  env = {
    **os.environ,
    "PYTHONPATH": str(_REPO),
    "JAX_PLATFORMS": "cpu",
  }
  proc = subprocess.run(
    [
      sys.executable,
      str(_REPO / "benchmarks" / "probe_bad_inputs.py"),
      "--fast",
      f"--log_dir={tmp_path / 'logs'}",
    ],
    capture_output=True,
    text=True,
    timeout=600,
    env=env,
    cwd=tmp_path,
  )
  summary = re.search(r"^(\d+) probes: (.*)$", proc.stdout, re.MULTILINE)
  assert summary, proc.stdout[-3000:] + proc.stderr[-3000:]
  counts = dict(
    (verdict, int(n))
    for verdict, n in re.findall(r"(\w+) (\d+)", summary.group(2))
  )
  assert int(summary.group(1)) >= 5
  bad = {v: counts[v] for v in ("traceback", "silent", "unclear", "hang")}
  assert bad == dict.fromkeys(bad, 0), proc.stdout
  assert counts["handled"] + counts["one_line"] == int(summary.group(1))
  assert proc.returncode == 0, proc.stdout[-3000:]
