"""Worker processes of a grid each keep to their own cores."""

import os
import pathlib
import time

import pytest

from dss_jax import errors, grid, workers


@pytest.mark.parametrize(
  "cpus, index, count, want",
  [
    (range(8), 1, 2, {0, 1, 2, 3}),
    (range(8), 2, 2, {4, 5, 6, 7}),
    ([2, 5], 2, 2, {5}),
    (range(5), 2, 2, {2, 3}),  # the odd core stays unused
    ([0], 1, 2, None),  # fewer cores than workers: no confinement
    (range(2), 3, 2, None),  # a replacement worker: no confinement
  ],
)
def test_worker_cpus_splits_the_allowed_cores(
  monkeypatch, cpus, index, count, want
):
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(cpus))
  assert workers.worker_cpus(index, count) == want


def _report_cores(spec, directory):
  del directory
  # Each run waits for the other to start, so the two runs are in the two
  # workers (a worker blocked here cannot take the second run).
  barrier = pathlib.Path(os.environ["WORKERS_TEST_BARRIER"])
  (barrier / str(spec.seed)).touch()
  deadline = time.monotonic() + 120
  while len(list(barrier.iterdir())) < 2:
    assert time.monotonic() < deadline, "the other run never started"
    time.sleep(0.05)
  return {"method": spec.method, "cores": sorted(os.sched_getaffinity(0))}


@pytest.mark.skipif(
  not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
  reason="needs an affinity API and two cores",
)
def test_each_worker_runs_on_its_own_cores(tmp_path, monkeypatch):
  barrier = tmp_path / "started"
  barrier.mkdir()
  monkeypatch.setenv("WORKERS_TEST_BARRIER", str(barrier))
  specs = [grid.RunSpec("finetune", "demo", 1.0, seed) for seed in (0, 1)]
  rows = workers.run_grid(
    specs,
    _report_cores,
    tmp_path,
    workers=2,
    log_dir=tmp_path / "logs",
    log=lambda _: None,
    progress=False,
  )
  cores = [set(row["cores"]) for row in rows]
  assert len(cores) == 2 and all(cores)
  assert not cores[0] & cores[1], cores
  assert cores[0] | cores[1] <= os.sched_getaffinity(0)


def test_two_runs_in_one_folder_are_refused_before_any_worker_starts(
  tmp_path,
):
  # Specs made by hand (not through grid.expand): seed 0 twice.
  spec = grid.RunSpec("finetune", "demo-xs", 1.0, 0)
  with pytest.raises(errors.UserError, match="would share .*seed0"):
    workers.run_grid(
      [spec, spec],
      _never_called,
      tmp_path,
      workers=2,
      log_dir=tmp_path / "logs",
    )
  assert not (tmp_path / "logs").exists()
  assert not (tmp_path / "runs").exists()


def _never_called(spec, folder):
  raise AssertionError("no run may start")
