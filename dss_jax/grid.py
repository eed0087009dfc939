r"""The paper's experiment grid: methods x data fractions x seeds x model sizes.

Every cell of the grid is one training run with its own folder; a run that
finished (its `result.json` exists) is never redone, so an interrupted grid
resumes by rerunning the same command. Results go to `results.csv` (one row
per run), then to the tables and plots of `dss_jax.report`.

The four methods (Hsieh et al., 2023, Section 4):

  finetune     standard finetuning on gold labels
  distill      standard task distillation on the teacher's labels
  dss_gold     distilling step-by-step, gold labels + teacher rationales
  dss_teacher  distilling step-by-step, teacher labels + teacher rationales

The offline grid on CPU (the demo card and teacher, three student sizes):

  dss-jax grid --out_dir=runs/grid

The paper's SVAMP grid from the released PaLM outputs, T5-Base, on GPU/TPU
(see docs/distill.md for the pretrained checkpoint and the full flags):

  dss-jax grid --task_card=svamp --teacher=replay --model_sizes=base \
    --student_vocabulary=t5 --train_steps=10000 --batch_size=64 --out_dir=runs/svamp
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import pathlib
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from dss_jax import errors, report

METHODS = ("finetune", "distill", "dss_gold", "dss_teacher")
# Methods that train on the teacher's rationales.
RATIONALE_METHODS = ("dss_gold", "dss_teacher")
# The paper's training-data fractions: the five points of its data-size
# figures (Figures 2-3), which the paper preset runs.
PAPER_FRACTIONS = (0.125, 0.25, 0.5, 0.75, 1.0)
RESULT_FILE = "result.json"
# Everything that decides a run's result, written before it trains; a folder
# is only resumed or reused by a run of the same configuration.
CONFIG_FILE = "run_config.json"


class StaleRunError(errors.UserError):
  """A run folder holds a run of another configuration."""


@dataclasses.dataclass(frozen=True, order=True)
class RunSpec:
  """One cell of the grid.

  Attributes:
    method: one of `METHODS`.
    model_size: a student size name (`dss_jax.models.config.STUDENT_SIZES` or a
      T5 v1.1 size).
    fraction: share of the training split, in (0, 1].
    seed: the seed of initialization, data order and the training subset.
  """

  method: str
  model_size: str
  fraction: float
  seed: int

  def __post_init__(self):
    if self.method not in METHODS:
      raise errors.UserError(
        f"unknown method {self.method!r}; choose from {METHODS}"
      )
    if not 0.0 < self.fraction <= 1.0:
      raise errors.UserError(f"fraction must be in (0, 1], got {self.fraction}")

  @property
  def name(self) -> str:
    """A readable, path-safe name, e.g. `dss_gold/demo/frac100/seed0`."""
    return (
      f"{self.method}/{self.model_size}/frac{100 * self.fraction:g}/"
      f"seed{self.seed}"
    )

  @property
  def uses_rationales(self) -> bool:
    return self.method in RATIONALE_METHODS


def expand(
  methods: Sequence[str],
  model_sizes: Sequence[str],
  fractions: Sequence[float],
  seeds: Sequence[int],
) -> list[RunSpec]:
  """All cells of a grid, smallest models first, then by fraction and seed.

  Small runs first, so that a grid stopped early has complete small-model
  results rather than one big model's.

  Args:
    methods: training methods.
    model_sizes: student sizes, smallest first.
    fractions: training-data fractions.
    seeds: seeds.

  Returns:
    The run specs.

  Raises:
    errors.UserError: an axis repeats a value (`repeated`).
  """
  axes = zip(
    ("methods", "model_sizes", "fractions", "seeds"),
    (methods, model_sizes, fractions, seeds),
    strict=True,
  )
  for axis, values in axes:
    if twice := repeated(axis, values):
      raise errors.UserError(
        f"{axis} {twice[0]!r} appears twice; each value is one run folder"
      )
  return [
    RunSpec(method, size, float(fraction), int(seed))
    for size, fraction, seed, method in itertools.product(
      model_sizes, sorted(fractions), seeds, methods
    )
  ]


def repeated(axis: str, values: Sequence[Any]) -> list[Any]:
  """Values of a grid axis that would share a run folder with another.

  Two runs of one grid must never train into one folder (two trainers on
  one checkpoint folder fail in orbax and hang the job), so an axis holds
  each value once, as its folder names it: seeds 0 and 0, or fractions
  0.1234561 and 0.1234562 (both `frac12.3456`).

  Args:
    axis: "methods", "model_sizes", "fractions" or "seeds".
    values: the axis's values.

  Returns:
    The values whose folder name an earlier value already has.
  """
  seen, out = set(), []
  for value in values:
    key = f"{100 * float(value):g}" if axis == "fractions" else str(value)
    if key in seen:
      out.append(value)
    seen.add(key)
  return out


def check_distinct_folders(
  root: str | pathlib.Path, specs: Sequence[RunSpec]
) -> None:
  """Refuses specs that would train two runs in one folder.

  Raises:
    errors.UserError: naming the folder two specs share.
  """
  seen: dict[pathlib.Path, RunSpec] = {}
  for spec in specs:
    folder = run_dir(root, spec)
    if folder in seen:
      raise errors.UserError(
        f"two runs of one grid would share {folder} ({seen[folder]} and "
        f"{spec}); make each seed and fraction distinct"
      )
    seen[folder] = spec


def run_dir(root: str | pathlib.Path, spec: RunSpec) -> pathlib.Path:
  """The folder of one run: `<root>/runs/<method>/<size>/frac<f>/seed<s>`."""
  return pathlib.Path(root) / "runs" / spec.name


def read_result(directory: str | pathlib.Path) -> dict[str, Any] | None:
  """The stored result of a finished run, or None if it has not finished."""
  path = pathlib.Path(directory) / RESULT_FILE
  if not path.is_file():
    return None
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError:
    return None  # a torn write: the run counts as unfinished


def write_result(
  directory: str | pathlib.Path, result: Mapping[str, Any]
) -> None:
  """Marks a run finished, atomically (a rename), with its result row."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  tmp = directory / (RESULT_FILE + ".tmp")
  tmp.write_text(json.dumps(dict(result), indent=2, sort_keys=True))
  tmp.replace(directory / RESULT_FILE)


def collect_results(
  root: str | pathlib.Path, specs: Iterable[RunSpec] | None = None
) -> list[dict[str, Any]]:
  """The result rows of finished runs (of `specs`, or every run under root)."""
  root = pathlib.Path(root)
  if specs is None:
    dirs = sorted(p.parent for p in (root / "runs").glob(f"**/{RESULT_FILE}"))
  else:
    dirs = [run_dir(root, spec) for spec in specs]
  rows = []
  for directory in dirs:
    result = read_result(directory)
    if result is not None:
      rows.append(result)
  return rows


def write_results_csv(
  rows: Sequence[Mapping[str, Any]], path: str | pathlib.Path
) -> pathlib.Path:
  """Writes result rows to a fresh CSV (`report.RESULT_FIELDS` columns).

  The CSV is rebuilt from the runs' own `result.json` files rather than
  appended to, so it never holds a run twice or a run that was redone.
  """
  path = pathlib.Path(path)
  tmp = path.with_suffix(".tmp")
  tmp.unlink(missing_ok=True)
  for row in rows:
    report.append_result(
      tmp, {k: v for k, v in row.items() if k in report.RESULT_FIELDS}
    )
  if not rows:
    tmp.write_text(",".join(report.RESULT_FIELDS) + "\n")
  tmp.replace(path)
  return path


RunFn = Callable[[RunSpec, pathlib.Path], Mapping[str, Any]]
IdentityFn = Callable[[RunSpec], Mapping[str, Any]]


def check_run_config(
  directory: str | pathlib.Path, config: Mapping[str, Any]
) -> bool:
  """Whether `directory` may hold (or resume) the run `config` describes.

  Args:
    directory: a run folder.
    config: JSON-able values that decide the run's result.

  Returns:
    True if the folder already records this configuration, False if it is
    empty or new.

  Raises:
    StaleRunError: the folder holds a run of another configuration, or one
      whose configuration was never recorded (one line: what differs and how
      to start fresh).
  """
  directory = pathlib.Path(directory)
  path = directory / CONFIG_FILE
  fresh = "; use another --out_dir, or delete the folder to train it again"
  if not path.is_file():
    if directory.is_dir() and any(directory.iterdir()):
      raise StaleRunError(
        f"{directory} holds a run whose configuration was not recorded "
        f"(an older dss-jax){fresh}"
      )
    return False
  try:
    stored = json.loads(path.read_text())
  except ValueError:
    stored = None
  if not isinstance(stored, dict):
    raise StaleRunError(
      f"{path} is not a run configuration (unreadable JSON){fresh}"
    )
  wanted = json.loads(json.dumps(dict(config)))
  if stored == wanted:
    return True
  diffs = [
    f"{key} {stored.get(key)!r} -> {wanted.get(key)!r}"
    for key in sorted(set(stored) | set(wanted))
    if stored.get(key) != wanted.get(key)
  ]
  raise StaleRunError(
    f"{directory} holds a run of another configuration "
    f"({', '.join(diffs[:4])}{', ...' if len(diffs) > 4 else ''}){fresh}"
  )


def write_run_config(
  directory: pathlib.Path, config: Mapping[str, Any]
) -> None:
  """Records the configuration of the run that trains in `directory`."""
  directory.mkdir(parents=True, exist_ok=True)
  tmp = directory / (CONFIG_FILE + ".tmp")
  tmp.write_text(json.dumps(dict(config), indent=2, sort_keys=True))
  tmp.replace(directory / CONFIG_FILE)


def run_grid(
  specs: Sequence[RunSpec],
  run_fn: RunFn,
  root: str | pathlib.Path,
  *,
  identity: IdentityFn | None = None,
  log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
  """Runs every unfinished cell, in order, and returns all results.

  With `identity`, a run folder is reused (its result) or resumed (its
  checkpoints) only when it records the same configuration; every folder is
  checked before anything trains.

  Args:
    specs: the grid.
    run_fn: trains and evaluates one run in the given folder; returns its
      result row (`report.RESULT_FIELDS`). It may resume from checkpoints in
      the folder.
    root: the grid's output folder.
    identity: the values that decide a spec's result (JSON-able).
    log: where progress lines go.

  Returns:
    The result rows of all finished runs of `specs`, in order.

  Raises:
    StaleRunError: a run folder holds a run of another configuration.
  """
  root = pathlib.Path(root)
  todo = unfinished_runs(specs, root, identity=identity, log=log)
  for spec in todo:
    log(f"grid: run {specs.index(spec) + 1}/{len(specs)}: {spec.name}")
    if identity is not None:
      write_run_config(run_dir(root, spec), identity(spec))
    run_one(run_fn, root, spec)
  return collect_results(root, specs)


def unfinished_runs(
  specs: Sequence[RunSpec],
  root: str | pathlib.Path,
  *,
  identity: IdentityFn | None = None,
  log: Callable[[str], None] = print,
) -> list[RunSpec]:
  """The runs of a grid left to train, after checking every folder.

  The start of `run_grid` here and of `dss_jax.workers.run_grid`.

  Args:
    specs: the grid.
    root: the grid's output folder.
    identity: the values that decide a spec's result (JSON-able).
    log: where the line on finished runs goes.

  Returns:
    The specs without a result, in order.

  Raises:
    StaleRunError: a run folder holds a run of another configuration.
    errors.UserError: two specs share a run folder.
  """
  root = pathlib.Path(root)
  # Two runs training one folder (side by side: fail in orbax and hang a
  # pool of workers) would overwrite each other.
  check_distinct_folders(root, specs)
  if identity is not None:
    for spec in specs:
      check_run_config(run_dir(root, spec), identity(spec))
  todo = [s for s in specs if read_result(run_dir(root, s)) is None]
  if len(todo) < len(specs):
    log(
      f"grid: {len(specs) - len(todo)}/{len(specs)} runs already finished; "
      "skipping them"
    )
  return todo


def run_one(
  run_fn: RunFn, root: str | pathlib.Path, spec: RunSpec
) -> tuple[RunSpec, dict[str, Any]]:
  """Trains one run in its folder and writes its result there.

  Args:
    run_fn: trains and evaluates the run (see `run_grid`).
    root: the grid's output folder.
    spec: the run.

  Returns:
    (spec, its result row), with `train_seconds` and `run_dir` added where
    `run_fn` leaves them out.
  """
  directory = run_dir(root, spec)
  start = time.monotonic()
  result = dict(run_fn(spec, directory))
  result.setdefault("train_seconds", round(time.monotonic() - start, 1))
  result.setdefault("run_dir", str(directory))
  write_result(directory, result)
  return spec, result


if __name__ == "__main__":
  # This module is the library; run as a command it would do nothing and
  # exit 0 whatever its flags said.
  print(
    "error: dss_jax.grid is the grid library, not a command; run "
    "`python -m dss_jax.grid_job ...` or `dss-jax grid ...`",
    file=sys.stderr,
  )
  sys.exit(2)
