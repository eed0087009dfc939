"""Every benchmark runs: each script's smoke mode (`--smoke`), in this suite.

A benchmark is a script under benchmarks/ that prints measured numbers; an
import of a moved name or a changed signature would otherwise go unnoticed
until someone runs it. Each one has a smoke mode (tiny sizes, seconds) that
runs the same code and prints the same kind of numbers, and this module
runs it and checks that those numbers came out:

  * every benchmarks/*.py has a smoke mode run here, shown in its
    docstring, so a new benchmark cannot be added without one;
  * each smoke mode runs in this process through the script's
    `main(argv)` (no cold start of JAX, TensorFlow and PyTorch per script)
    and prints its measured rows.

Two smoke modes run in the tests whose runs they are, not twice:
benchmarks/probe_bad_inputs.py's (`--fast`) in tests/probe_smoke_test.py,
and benchmarks/multihost_equality.py's (its own training processes, as its
real mode) in tests/multihost_test.py, whose resumed runs compare with the
2 x 1 run it keeps.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import pathlib
import re
import sys

import benchmark_scripts
import pytest

_REPO = pathlib.Path(__file__).resolve().parents[1]
_BENCHMARKS = benchmark_scripts.BENCHMARKS

# Benchmarks whose smoke mode another test runs: name -> (flag, test file).
_ELSEWHERE = {
  "probe_bad_inputs": ("--fast", "tests/probe_smoke_test.py"),
  "multihost_equality": ("--smoke", "tests/multihost_test.py"),
}


def _has_torch() -> bool:
  return all(
    importlib.util.find_spec(name) for name in ("torch", "transformers")
  )


# What each smoke run must print: one pattern per measured row, every
# number in it measured (a row the script prints only when it measured it).
_NUMBER = r"[0-9][0-9,]*(?:\.[0-9]+)?"
_ROWS = {
  "teacher_replay": [
    rf"^\| cqa \| train \| {_NUMBER} \| {_NUMBER} \| {_NUMBER}% \|$",
    rf"^\| svamp \| test \| {_NUMBER} \| {_NUMBER} \| {_NUMBER}% \|$",
  ],
  "teacher_throughput": [
    rf"^throughput: {_NUMBER} calls, .*: {_NUMBER} req/min over the",
    rf"^kill and resume: .* -> -?{_NUMBER} repeated",
  ],
  "seqio_mixture_share": [
    rf"^fraction 0\.125: \{{'train': {_NUMBER}, 'validation': {_NUMBER}",
    rf"^lambda 1\.0: rationale share {_NUMBER}% \(expected 50\.00%\)",
  ],
  "train_cpu_throughput": [
    rf"^float32 matmul peak \(256\^2\): {_NUMBER} GFLOP/s before",
    rf"^dss_jax \(JAX/XLA\) +{_NUMBER} +{_NUMBER} +{_NUMBER} +{_NUMBER}%",
  ]
  + [rf"^HF T5 \(PyTorch\) +{_NUMBER} +{_NUMBER}"] * _has_torch(),
  "gpu_t5_base": [
    rf"^dss_jax +off +{_NUMBER} +{_NUMBER} +{_NUMBER} +{_NUMBER} +{_NUMBER}%",
    rf"^dss_jax +on +{_NUMBER} +{_NUMBER} +{_NUMBER}",
  ]
  + [rf"^HF T5 PyTorch +off +{_NUMBER} +{_NUMBER}"] * _has_torch(),
  "model_throughput": [
    rf'^{{"impl": "jax", .*"tokens_per_s": {_NUMBER}, .*"packed": false',
    rf'^{{"impl": "jax", .*"tokens_per_s": {_NUMBER}, .*"packed": true',
    rf'^{{"decode": "greedy", .*"generated_tokens_per_s": {_NUMBER}',
    rf'^{{"decode": "beam", .*"generated_tokens_per_s": {_NUMBER}',
  ]
  + [rf'^{{"impl": "torch_hf", .*"tokens_per_s": {_NUMBER}'] * _has_torch(),
  "gpu_distill_step": [
    rf"^step {_NUMBER}: {_NUMBER} ms/step, {_NUMBER} tok/s .*MFU {_NUMBER}%",
    rf"^plan: {_NUMBER} ms/step at the plan's {_NUMBER}% MFU; measured",
  ],
  "train_packing": [
    rf"^dss_jax packed 4x128\+64 \(fill {_NUMBER}%\) +{_NUMBER} +{_NUMBER}",
  ]
  + [rf"^official: HF PyTorch, .* +{_NUMBER} +{_NUMBER} +{_NUMBER}$"]
  * _has_torch(),
  "distill_demo_sweep": [
    rf'^{{"cfg": .*"res": {{"dss@1\.0": {{"accs": \[{_NUMBER}, ',
  ],
}


def _benchmark_names() -> set[str]:
  return {path.stem for path in _BENCHMARKS.glob("*.py")}


def test_every_benchmark_has_a_smoke_mode_that_runs_here():
  assert _benchmark_names() == set(_ROWS) | set(_ELSEWHERE), (
    "each benchmarks/*.py needs a smoke mode (`--smoke`: tiny sizes, "
    "seconds) and its measured rows in _ROWS here"
  )
  for name, (flag, runner) in _ELSEWHERE.items():
    source = (_REPO / runner).read_text()
    assert f"{name}.py" in source and flag in source, (runner, flag)
  for name in _benchmark_names():
    flag, _ = _ELSEWHERE.get(name, ("--smoke", None))
    docstring = ast.get_docstring(
      ast.parse((_BENCHMARKS / f"{name}.py").read_text())
    )
    assert docstring and f"{name}.py {flag}" in docstring, (
      f"benchmarks/{name}.py: its docstring must show how to run `{flag}`"
    )


@pytest.fixture
def isolated(monkeypatch, tmp_path):
  """Runs a benchmark in tmp_path and undoes its changes to the process.

  What a script changes (`benchmark_scripts.undone`), and PyTorch's thread
  count; the next test must not see them.
  """
  monkeypatch.chdir(tmp_path)
  torch = sys.modules.get("torch")
  threads = torch.get_num_threads() if torch else None
  with benchmark_scripts.undone():
    # As train_cpu_throughput.py's own default: PyTorch's OpenMP threads
    # spin while they wait, stalling a machine shared with other tests.
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    yield
  torch = sys.modules.get("torch")
  if torch and threads:
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(_ROWS))
def test_smoke_mode_prints_its_measured_rows(name, isolated, capsys):
  del isolated
  benchmark_scripts.load(name).main(["--smoke"])
  out = capsys.readouterr().out
  for row in _ROWS[name]:
    assert re.search(row, out, re.MULTILINE), (
      f"benchmarks/{name}.py --smoke printed no row like {row!r}:\n{out}"
    )
  if name == "distill_demo_sweep":
    (record,) = [json.loads(line) for line in out.splitlines()]
    (accs,) = [cell["accs"] for cell in record["res"].values()]
    assert len(accs) == 3  # the three seeds trained at once
