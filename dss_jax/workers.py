"""Runs the cells of a grid side by side, one worker process per CPU core.

The demo's students are tiny: a training step is a chain of small matmuls that
one core runs nearly as fast as two, so two single-threaded processes, each
training its own run, finish a grid in a little more than half the time of one
two-threaded process. `run_grid` here is `dss_jax.grid.run_grid` with a pool
of such workers (both check the folders with `grid.unfinished_runs` and train
a run with `grid.run_one`; only the order and the processes differ):

    rows = workers.run_grid(specs, run_fn, root, workers=2,
                            log_dir=root / "logs")

Each worker is a fresh (spawned) Python process: XLA and TensorFlow start
there with one thread, its stdout and stderr (TensorFlow's and XLA's own C++
lines included) go to `<log_dir>/worker<i>.log`, and Python logging goes to
the same file, so the terminal only shows what the caller logs. A run that
finished (its `result.json` exists) is skipped, as in `dss_jax.grid`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging as py_logging
import multiprocessing
import os
import pathlib
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import tqdm
from absl import logging

from dss_jax import grid as grid_lib
from dss_jax import host

# One XLA:CPU thread: the pool, not XLA, spreads the work over the cores.
SINGLE_THREAD_XLA_FLAGS = (
  "--xla_cpu_multi_thread_eigen=false",
  "intra_op_parallelism_threads=1",
)

# From <linux/prctl.h>.
_PR_SET_PDEATHSIG = 1

# Whether `redirect_native_stderr` gave Python's stderr its own descriptor.
_terminal_kept = False

RunFn = grid_lib.RunFn


def default_workers() -> int:
  """One worker per core this process may use, at most 2.

  More than two small runs side by side only share the same memory
  bandwidth, and on a laptop the user still wants a responsive machine.
  """
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # macOS has no affinity API
    cores = os.cpu_count() or 1
  return max(1, min(2, cores))


def _quiet_process(log_path: str) -> None:
  """Sends this process's output, C++ included, to `log_path`."""
  host.add_xla_flags(SINGLE_THREAD_XLA_FLAGS)
  # TensorFlow reads these when it is first imported, which happens later,
  # inside the run: no cuInit or oneDNN banners, one thread per pool.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
  os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
  pathlib.Path(log_path).parent.mkdir(parents=True, exist_ok=True)
  sink = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
  # File descriptors, not just sys.stdout: the C++ libraries write to them.
  os.dup2(sink, 1)
  os.dup2(sink, 2)
  os.close(sink)
  sys.stdout = os.fdopen(1, "w", buffering=1)
  sys.stderr = os.fdopen(2, "w", buffering=1)
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  py_logging.captureWarnings(True)


def _stop_with_parent() -> None:
  """Asks Linux to send this process SIGTERM when its parent dies.

  A pool's workers are stopped when the parent exits normally, but not when
  it is killed; they would train on, unseen. SIGTERM makes the trainer save
  a checkpoint and stop, so a rerun resumes the run.
  """
  if not sys.platform.startswith("linux"):
    return
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
  except (OSError, AttributeError):
    pass


def redirect_native_stderr(path: str | pathlib.Path) -> None:
  """Points file descriptor 2 at `path`; Python's `sys.stderr` stays put.

  For the main process: TensorFlow's and XLA's C++ code writes banners and
  warnings straight to descriptor 2, whatever the log level, while progress
  bars and errors from Python should still reach the terminal. Python's
  stderr becomes a new descriptor for the terminal, and descriptor 2 a file.

  Calling it again points descriptor 2 at another file.

  Args:
    path: the file for the C++ libraries' lines (appended to).
  """
  global _terminal_kept
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  sys.stderr.flush()
  if not _terminal_kept:  # a second call only moves descriptor 2 on
    sys.stderr = os.fdopen(os.dup(2), "w", buffering=1)
    _terminal_kept = True
  sink = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
  os.dup2(sink, 2)
  os.close(sink)


def worker_cpus(index: int, workers: int) -> set[int] | None:
  """The cores worker `index` (1-based) of `workers` keeps to, or None.

  The cores this process may use are split into `workers` equal groups. XLA
  sizes its CPU thread pool from the cores a process may use, so a worker
  confined to one core runs each step on one thread: the XLA flags alone
  still leave XLA:CPU running independent operations on a pool of all the
  cores, and two workers then contend for both (on the demo's student a
  step took 10% more CPU time unconfined than confined).

  Args:
    index: the worker, from 1.
    workers: workers side by side.

  Returns:
    The worker's cores; None where there is no affinity API or fewer cores
    than workers.
  """
  try:
    cpus = sorted(os.sched_getaffinity(0))
  except AttributeError:  # macOS
    return None
  share = len(cpus) // workers
  if not share or index > workers:
    return None
  return set(cpus[(index - 1) * share : index * share])


def _init_worker(
  log_dir: str, counter, workers: int, setup: Callable[[], None] | None
) -> None:
  _stop_with_parent()
  with counter.get_lock():
    counter.value += 1
    index = counter.value
  cpus = worker_cpus(index, workers)
  if cpus:
    # Before XLA and TensorFlow start their thread pools (the first run).
    os.sched_setaffinity(0, cpus)
  _quiet_process(str(pathlib.Path(log_dir) / f"worker{index}.log"))
  if setup is not None:
    setup()


def run_grid(
  specs: Sequence[grid_lib.RunSpec],
  run_fn: RunFn,
  root: str | pathlib.Path,
  *,
  workers: int,
  log_dir: str | pathlib.Path,
  identity: grid_lib.IdentityFn | None = None,
  setup: Callable[[], None] | None = None,
  log: Callable[[str], None] = print,
  progress: bool = True,
) -> list[dict[str, Any]]:
  """Runs every unfinished cell in `workers` processes; returns all results.

  Args:
    specs: the grid.
    run_fn: trains and evaluates one run in the given folder and returns its
      result row, as for `dss_jax.grid.run_grid`; it must pickle (a module
      function, or a `functools.partial` of one).
    root: the grid's output folder.
    workers: processes side by side.
    log_dir: where each worker's output goes (`worker<i>.log`).
    identity: the values that decide a spec's result, as for
      `dss_jax.grid.run_grid`: every folder is checked before anything
      trains, and records them before its run starts.
    setup: called once in each worker before its first run (picklable).
    log: where the per-run lines go.
    progress: a progress bar over the runs.

  Returns:
    The result rows of all finished runs of `specs`, in `specs`' order.

  Raises:
    StaleRunError: a run folder holds a run of another configuration.
    errors.UserError: two specs share a run folder.
  """
  root = pathlib.Path(root)
  todo = grid_lib.unfinished_runs(specs, root, identity=identity, log=log)
  # Runs with rationales take longest; starting them first keeps the
  # workers busy to the end (longest processing time first).
  todo.sort(key=lambda s: not s.uses_rationales)
  if not todo:
    return grid_lib.collect_results(root, specs)
  if identity is not None:
    for spec in todo:
      grid_lib.write_run_config(grid_lib.run_dir(root, spec), identity(spec))
  workers = max(1, min(workers, len(todo)))
  log(
    f"grid: {len(todo)} runs in {workers} worker processes "
    f"(their logs: {log_dir}/worker<i>.log)"
  )
  context = multiprocessing.get_context("spawn")
  counter = context.Value("i", 0)
  bar = tqdm.tqdm(
    total=len(todo),
    desc="runs",
    unit="run",
    file=sys.stderr,
    dynamic_ncols=True,
    disable=not progress,
  )
  write = bar.write if progress else log
  start = time.monotonic()
  with context.Pool(
    workers, _init_worker, (str(log_dir), counter, workers, setup)
  ) as pool:
    for spec, result in pool.imap_unordered(
      functools.partial(grid_lib.run_one, run_fn, str(root)), todo
    ):
      value = result.get("value")
      shown = f"{100 * value:.1f}%" if isinstance(value, float) else value
      write(
        f"grid: {spec.name}: test {result.get('metric', '')} {shown} "
        f"({result['train_seconds']:.0f}s training, "
        f"{time.monotonic() - start:.0f}s so far)"
      )
      bar.update()
  bar.close()
  return grid_lib.collect_results(root, specs)
