"""Test support: N JAX processes on this machine, joined as one job.

Each process sees `devices` fake CPU devices; together they form one mesh of
N * devices devices, and collectives cross processes over gloo (TCP on
127.0.0.1), as hosts of a pod slice do over the network.

    job = multihost.start_module("dss_jax.train", args, log_dir, processes=2)
    results = job.wait(timeout=300)          # every exit status 0, or fails
    results = multihost.run_function(fn, {"x": 1}, log_dir, processes=2)

`start_module` runs an entry point with T5X's `--coordinator_address`,
`--process_count` and `--process_index` flags; `run_function` runs a
module-level function (`module:name`, importable from tests/) in every
process after `jax.distributed.initialize`, and returns what each returned
(JSON). Output goes to one log per process; a failure names the process and
shows the tail of its log. Every process runs in its own session, and
`wait` kills all of them when its timeout passes, so a hung collective
never hangs the test suite.

Run as a script, this file is that worker: `python tests/multihost.py
module:function` with the job in the environment (`_ENV_*`).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

_REPO = pathlib.Path(__file__).resolve().parents[1]
_TESTS = pathlib.Path(__file__).resolve().parent

# Seconds after which a silent process counts as dead: short, so the
# survivors of a killed process stop soon (JAX's default is 100 s), long
# enough for a slow compile on a busy 2-core machine (heartbeats come from a
# background thread, so compiling does not silence a process).
HEARTBEAT_TIMEOUT_S = 15
_ENV_COORDINATOR = "DSS_TEST_COORDINATOR"
_ENV_PROCESSES = "DSS_TEST_PROCESSES"
_ENV_INDEX = "DSS_TEST_PROCESS_INDEX"
_RESULT = "MULTIHOST_RESULT "


class MultihostError(AssertionError):
  """A process of the job failed or timed out; says which, with its log."""


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on now."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(devices: int, **extra: str) -> dict[str, str]:
  """The environment of one process: CPU only, `devices` fake devices."""
  env = dict(os.environ)
  env.update(
    JAX_PLATFORMS="cpu",
    # The collective limits as in conftest.py (a busy machine is slow).
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
    "--xla_cpu_collective_call_terminate_timeout_seconds=900 "
    "--xla_cpu_collective_call_warn_stuck_timeout_seconds=120",
    CUDA_VISIBLE_DEVICES="",
    TF_CPP_MIN_LOG_LEVEL="2",
    PYTHONPATH=os.pathsep.join(
      [str(_REPO), str(_TESTS), env.get("PYTHONPATH", "")]
    ),
  )
  env.update(extra)
  return env


@dataclasses.dataclass
class Result:
  """How one process ended."""

  index: int
  returncode: int
  log: str

  def result(self) -> Any:
    """What `run_function`'s function returned in this process."""
    for line in reversed(self.log.splitlines()):
      if line.startswith(_RESULT):
        return json.loads(line[len(_RESULT) :])
    raise MultihostError(f"process {self.index} returned nothing:\n{self.log}")


class Job:
  """Processes started together; `wait` collects them or kills them all."""

  def __init__(self, procs: Sequence[subprocess.Popen], logs: Sequence[Any]):
    self.procs = list(procs)
    self._logs = list(logs)

  def signal(self, index: int, signum: int) -> None:
    """Sends `signum` to process `index` only."""
    self.procs[index].send_signal(signum)

  def kill_all(self) -> None:
    """SIGKILLs every process of the job that still runs (and its children)."""
    for p in self.procs:
      if p.poll() is None:
        try:
          os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
          pass
    for p in self.procs:
      p.wait()

  def log(self, index: int) -> str:
    """Everything process `index` wrote so far (stdout and stderr)."""
    return pathlib.Path(self._logs[index].name).read_text(errors="replace")

  def wait(
    self, timeout: float, expect: Mapping[int, int] | int | None = 0
  ) -> list[Result]:
    """Waits for every process, killing all of them after `timeout` s.

    Args:
      timeout: seconds for the whole job.
      expect: the exit status every process must end with ({index:
        status} for some), or None to check nothing.

    Returns:
      One `Result` per process, in index order.

    Raises:
      MultihostError: the timeout passed (all processes killed), or a
        process ended with another status; names it and shows its log tail.
    """
    deadline = time.monotonic() + timeout
    for p in self.procs:
      try:
        p.wait(timeout=max(0.0, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        running = [i for i, q in enumerate(self.procs) if q.poll() is None]
        self.kill_all()
        raise MultihostError(
          f"processes {running} still ran after {timeout:.0f} s (killed)\n"
          + self._tails(running)
        ) from None
    for f in self._logs:
      f.close()
    results = [
      Result(i, p.returncode, self.log(i)) for i, p in enumerate(self.procs)
    ]
    if expect is not None:
      want = (
        expect
        if isinstance(expect, Mapping)
        else dict.fromkeys(range(len(results)), expect)
      )
      bad = [
        r.index
        for r in results
        if r.index in want and r.returncode != want[r.index]
      ]
      if bad:
        raise MultihostError(
          ", ".join(
            f"process {i} exited {results[i].returncode} (expected {want[i]})"
            for i in bad
          )
          + "\n"
          + self._tails(bad)
        )
    return results

  def _tails(self, indices: Sequence[int], chars: int = 4000) -> str:
    return "\n".join(
      f"--- process {i} log tail ---\n{self.log(i)[-chars:]}" for i in indices
    )


def start(
  argv: Callable[[int], Sequence[str]],
  log_dir: pathlib.Path,
  processes: int = 2,
  devices: int = 2,
  env: Mapping[str, str] | None = None,
  cwd: pathlib.Path = _REPO,
) -> Job:
  """Starts `processes` processes, each with `argv(index)`.

  Args:
    argv: the command line of process `index`.
    log_dir: where process i writes `process_<i>.log`.
    processes: how many.
    devices: fake CPU devices of each process.
    env: more environment for every process; `{index}` in a value becomes
      the process index.
    cwd: the working directory.

  Returns:
    The running job.
  """
  log_dir.mkdir(parents=True, exist_ok=True)
  procs, logs = [], []
  try:
    for i in range(processes):
      extra = {k: v.replace("{index}", str(i)) for k, v in (env or {}).items()}
      log = open(log_dir / f"process_{i}.log", "w")  # noqa: SIM115
      logs.append(log)
      procs.append(
        subprocess.Popen(
          list(argv(i)),
          cwd=cwd,
          env=process_env(devices, **extra),
          stdout=log,
          stderr=subprocess.STDOUT,
          stdin=subprocess.DEVNULL,
          start_new_session=True,
        )
      )
  except BaseException:
    Job(procs, logs).kill_all()
    raise
  return Job(procs, logs)


def start_module(
  module: str,
  args: Sequence[str],
  log_dir: pathlib.Path,
  processes: int = 2,
  devices: int = 2,
  env: Mapping[str, str] | None = None,
) -> Job:
  """Starts `python -m module args` as one job of `processes` processes.

  With more than one process, each gets T5X's multi-process flags for a
  coordinator on a free port of 127.0.0.1, and a short heartbeat timeout.
  """
  distributed = []
  if processes > 1:
    distributed = [
      f"--coordinator_address=127.0.0.1:{free_port()}",
      f"--process_count={processes}",
      f"--heartbeat_timeout_seconds={HEARTBEAT_TIMEOUT_S}",
    ]

  def argv(i: int) -> list[str]:
    index = [f"--process_index={i}"] if processes > 1 else []
    return [sys.executable, "-m", module, *args, *distributed, *index]

  return start(argv, log_dir, processes, devices, env)


def start_function(
  function: Callable[..., Any],
  kwargs: Mapping[str, Any],
  log_dir: pathlib.Path,
  processes: int = 2,
  devices: int = 2,
) -> Job:
  """Starts `function(**kwargs)` in every process (see `run_function`)."""
  target = f"{function.__module__}:{function.__qualname__}"
  env = {
    _ENV_COORDINATOR: f"127.0.0.1:{free_port()}",
    _ENV_PROCESSES: str(processes),
    _ENV_INDEX: "{index}",
  }
  argv = [sys.executable, str(pathlib.Path(__file__)), target]
  return start(
    lambda i: [*argv, json.dumps(dict(kwargs))],
    log_dir,
    processes,
    devices,
    env,
  )


def run_function(
  function: Callable[..., Any],
  kwargs: Mapping[str, Any],
  log_dir: pathlib.Path,
  processes: int = 2,
  devices: int = 2,
  timeout: float = 300,
) -> list[Any]:
  """Calls `function(**kwargs)` in every process of a job.

  Args:
    function: a module-level function of a module importable from tests/
      (a test module, say); it may use `jax.process_index()` and
      collectives.
    kwargs: JSON-serializable arguments.
    log_dir: for the processes' logs.
    processes: how many.
    devices: fake CPU devices of each process.
    timeout: seconds for the whole job.

  Returns:
    What the function returned in each process (through JSON), by index.
  """
  job = start_function(function, kwargs, log_dir, processes, devices)
  return [r.result() for r in job.wait(timeout)]


def _worker(target: str, kwargs_json: str) -> None:
  import jax
  from absl import logging

  # As under the entry points' `app.run`: INFO lines reach the log.
  logging.set_verbosity(logging.INFO)

  processes = int(os.environ[_ENV_PROCESSES])
  if processes > 1:
    jax.distributed.initialize(
      os.environ[_ENV_COORDINATOR],
      num_processes=processes,
      process_id=int(os.environ[_ENV_INDEX]),
      heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
    )
  module, name = target.split(":")
  function = getattr(importlib.import_module(module), name)
  result = function(**json.loads(kwargs_json))
  print(_RESULT + json.dumps(result), flush=True)


if __name__ == "__main__":
  _worker(*sys.argv[1:])
