"""The main job: card -> teacher -> TFDS -> SeqIO -> train -> eval -> report.

`run(config)` runs the stages in order, each skipping work already done:

  1. annotate and 2. build the dataset (`dss_jax.distill.stages`);
  3. train and score one student per `grid.RunSpec`, side by side in
     worker processes (`dss_jax.distill.student`, `dss_jax.workers`);
  4. write the report: results CSV, tables and plots (`dss_jax.report`).

It holds the job folder's lock, checks every run folder and the plan's
memory before the teacher is paid, and prints the summary. In Python:

  from dss_jax.distill import config, job
  job.run(config.make_config({"seeds": (0,), "train_steps": 200}))
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
from absl import logging

from dss_jax import grid as grid_lib
from dss_jax import (
  host,
  report,
)
from dss_jax import plan as plan_lib
from dss_jax import workers as workers_lib
from dss_jax.distill.config import DistillConfig, job_plan
from dss_jax.distill.stages import DataStages
from dss_jax.distill.student import Student
from dss_jax.teacher import store as store_lib


def _enable_compilation_cache(directory: pathlib.Path) -> None:
  # Runs of one grid share shapes: a persistent XLA cache turns every
  # compilation after the first into a disk read, also across restarts.
  if jax.config.jax_compilation_cache_dir:
    return  # the user's own cache wins
  jax.config.update("jax_compilation_cache_dir", str(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def write_report(
  data: DataStages, rows: Sequence[Mapping[str, Any]]
) -> dict[str, pathlib.Path]:
  """Stage 4: results.csv, summary tables and plots."""
  results = grid_lib.write_results_csv(rows, data.out_dir / "results.csv")
  paths = report.write_report(
    results,
    data.out_dir,
    teacher_accuracy=data.teacher_accuracy("test"),
    teacher_name=data.teacher_name(),
    title=data.card.name,
  )
  return {"results_csv": results, **paths}


def run(
  config: DistillConfig, log: Callable[[str], None] = print
) -> dict[str, pathlib.Path]:
  """Runs every stage of a job, skipping finished work.

  Args:
    config: the job.
    log: where progress lines go.

  Returns:
    Name -> written file (results CSV, summary tables, plots).

  Raises:
    errors.UserError: another job writes `out_dir`, or a stale run folder.
    errors.MachineError: the disk is full or a folder read-only (what was
      stored or checkpointed before is kept; rerunning resumes).
  """
  data = DataStages(config, log)
  # One job writes a folder at a time; a second is refused in one line.
  with (
    store_lib.os_faults(data.out_dir, "taking the job's lock"),
    store_lib.WriterLock(data.out_dir / LOCK_FILE, "job folder", data.out_dir),
    store_lib.os_faults(data.out_dir, "running the job"),
  ):
    return _run_stages(config, data, log)


# Beside a job's outputs while it runs: who writes the folder.
LOCK_FILE = ".dss_job.lock"


def _run_stages(
  config: DistillConfig, data: DataStages, log: Callable[[str], None]
) -> dict[str, pathlib.Path]:
  start = time.monotonic()
  if config.compilation_cache:
    _enable_compilation_cache(data.out_dir / "xla_cache")
  specs = config.specs()
  # Before any expensive stage: a stale run folder stops the job now.
  for spec in specs:
    grid_lib.check_run_config(
      grid_lib.run_dir(data.out_dir, spec), config.run_identity(spec)
    )
  # And a student that cannot fit the device, before the teacher is paid.
  plan = job_plan(config)
  plan_lib.check_memory(plan)
  data.annotate()
  data.build_dataset()
  # Runs a job before this one finished are reused, not timed again (their
  # folders were checked above; the grid runner checks them once more).
  stored = sum(
    grid_lib.read_result(grid_lib.run_dir(data.out_dir, s)) is not None
    for s in specs
  )
  train_start = time.monotonic()
  workers = config.workers or workers_lib.default_workers()
  if workers > 1 and len(specs) > 1:
    rows = workers_lib.run_grid(
      specs,
      functools.partial(_run_in_worker, config),
      data.out_dir,
      workers=workers,
      log_dir=data.out_dir / "logs",
      identity=config.run_identity,
      setup=functools.partial(_setup_worker, config),
      log=log,
      progress=config.progress,
    )
  else:
    rows = grid_lib.run_grid(
      specs,
      Student(config, data).run,
      data.out_dir,
      identity=config.run_identity,
      log=log,
    )
  train_seconds = time.monotonic() - train_start
  paths = write_report(data, rows)
  _add_plan_to_summary(
    paths["summary_md"],
    plan,
    rows,
    data.teacher_dollars,
    train_seconds,
    stored,
  )
  examples = Student(config, data).show_examples()
  log("")
  log(paths["summary_md"].read_text())
  pair = report.data_efficiency(
    report.summarize(report.read_results(paths["results_csv"]))
  )
  if pair is not None:
    log(report.data_efficiency_text(pair))
  if examples:
    log(examples)
  log(f"{'results_csv:':<20}{paths['results_csv']}")
  for name in (
    "summary_md",
    "summary_csv",
    "accuracy_by_method",
    "data_efficiency",
    "accuracy_vs_data",
    "accuracy_vs_size",
  ):
    if name in paths:
      log(f"{name + ':':<20}{paths[name]}")
  runs = data.out_dir / "runs"
  teacher = (
    "the released PaLM outputs"
    if config.backend == "replay"
    else data.store_path
  )
  log(f"{'checkpoints:':<20}{runs}/<method>/<size>/<frac>/<seed>/checkpoints")
  log(
    f"{'predictions:':<20}{runs}/<method>/<size>/<frac>/<seed>/inference_eval"
  )
  log(f"{'teacher answers:':<20}{teacher}")
  log(f"{'tfds data:':<20}{config.data_dir}")
  log(f"{'logs:':<20}{data.out_dir / 'logs'}")
  log(f"{'wall time:':<20}{time.monotonic() - start:.0f}s")
  return paths


def _add_plan_to_summary(
  summary: pathlib.Path,
  plan: plan_lib.Plan,
  rows: Sequence[Mapping[str, Any]],
  dollars: float,
  train_seconds: float,
  stored: int = 0,
) -> None:
  """Appends the plan, with the job's actual times and dollars, to summary.md.

  A run's actual time is its `train_seconds` (training and validation; a
  run stored before this job counts with its own time), averaged over the
  runs of its method and size; the total is this job's training stage,
  which says how many of the runs an earlier job trained (`stored`).
  """
  seconds: dict[tuple[str, str], list[float]] = {}
  for row in rows:
    key = (str(row["method"]), str(row["model_size"]))
    seconds.setdefault(key, []).append(float(row["train_seconds"]))
  actual = {
    "dollars": dollars,
    "seconds": {k: sum(v) / len(v) for k, v in seconds.items()},
    "total_seconds": train_seconds,
    "stored_runs": stored,
  }
  text = summary.read_text().rstrip("\n")
  summary.write_text(f"{text}\n\n{plan_lib.format_plan(plan, actual)}")


# A worker process's student (`dss_jax.workers`), built on its first run.
_WORKER_STUDENT: Student | None = None


def _setup_worker(config: DistillConfig) -> None:
  host.keep_freed_memory()
  if config.compilation_cache:
    _enable_compilation_cache(pathlib.Path(config.out_dir) / "xla_cache")


def _run_in_worker(
  config: DistillConfig, spec: grid_lib.RunSpec, directory: pathlib.Path
) -> dict[str, Any]:
  global _WORKER_STUDENT
  if _WORKER_STUDENT is None:
    # The worker's output goes to its log file; bars there are noise.
    quiet = dataclasses.replace(config, progress=False)
    _WORKER_STUDENT = Student(quiet, DataStages(quiet, log=logging.info))
  result = _WORKER_STUDENT.run(spec, directory)
  if spec == _WORKER_STUDENT.showcase_spec():
    # Here, beside the other runs still training, rather than in the main
    # process after the last one.
    _WORKER_STUDENT.write_examples(spec, directory)
  return result
