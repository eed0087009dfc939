"""The experiment grid: expansion, per-run resumability, results collection."""

import dataclasses
import subprocess
import sys

import pytest
from absl import flags

from dss_jax import errors, grid, report
from dss_jax.distill import __main__ as distill
from dss_jax.distill import config as job_config


def test_expand_is_the_full_product_smallest_models_first():
  specs = grid.expand(grid.METHODS, ["demo-xs", "demo"], [1.0, 0.25], [0, 1])
  assert len(specs) == 4 * 2 * 2 * 2
  assert len(set(specs)) == len(specs)
  assert [s.model_size for s in specs[:16]] == ["demo-xs"] * 16
  assert specs[0] == grid.RunSpec("finetune", "demo-xs", 0.25, 0)
  assert grid.run_dir("out", specs[0]).as_posix() == (
    "out/runs/finetune/demo-xs/frac25/seed0"
  )
  with pytest.raises(ValueError, match="method"):
    grid.RunSpec("prompting", "demo", 1.0, 0)
  with pytest.raises(ValueError, match="fraction"):
    grid.RunSpec("finetune", "demo", 0.0, 0)
  # Two runs of one grid never share a folder.
  with pytest.raises(errors.UserError, match="seeds 0 appears twice"):
    grid.expand(["finetune"], ["demo"], [1.0], [0, 0])
  with pytest.raises(errors.UserError, match="fractions 0.5 appears twice"):
    grid.expand(["finetune"], ["demo"], [0.5, 1.0, 0.5], [0])
  assert grid.repeated("fractions", [0.1234561, 0.1234562]) == [0.1234562]
  assert grid.repeated("methods", ["finetune", "dss_gold"]) == []


def test_finished_runs_are_not_redone_and_a_crash_resumes(tmp_path):
  specs = grid.expand(["finetune", "dss_gold"], ["demo"], [1.0], [0, 1])
  calls = []

  def run_fn(spec, directory):
    calls.append(spec)
    if spec.seed == 1 and spec.method == "dss_gold" and len(calls) < 5:
      raise RuntimeError("killed")
    return {"method": spec.method, "seed": spec.seed, "value": 0.5}

  with pytest.raises(RuntimeError):
    grid.run_grid(specs, run_fn, tmp_path, log=lambda _: None)
  assert len(calls) == 4
  assert len(grid.collect_results(tmp_path, specs)) == 3
  rows = grid.run_grid(specs, run_fn, tmp_path, log=lambda _: None)
  # Only the crashed run ran again.
  assert calls[4:] == [specs[3]]
  assert len(rows) == 4
  assert all(r["run_dir"] for r in rows)
  path = grid.write_results_csv(rows, tmp_path / "results.csv")
  assert len(report.read_results(path)) == 4
  rows = grid.run_grid(specs, run_fn, tmp_path, log=lambda _: None)
  assert len(calls) == 5


def test_a_run_folder_is_reused_only_by_the_same_configuration(tmp_path):
  spec = grid.RunSpec("dss_gold", "demo", 1.0, 0)
  config = job_config.DistillConfig(out_dir=str(tmp_path))
  calls = []

  def run_fn(spec, directory):
    calls.append(spec)
    return {"method": spec.method, "seed": spec.seed, "value": 0.5}

  def run(config):
    return grid.run_grid(
      [spec], run_fn, tmp_path, identity=config.run_identity, log=print
    )

  run(config)
  run(config)  # the same configuration: reused, not trained again
  assert len(calls) == 1
  for changed, words in (
    (dict(train_steps=300), f"train_steps {config.train_steps} -> 300"),
    (dict(recipe="official"), "recipe 'mixture' -> 'official'"),
    (dict(card="svamp", backend="replay"), "card 'arith' -> 'svamp'"),
  ):
    other = dataclasses.replace(config, **changed)
    with pytest.raises(grid.StaleRunError, match=words) as error:
      run(other)
    assert "another --out_dir" in str(error.value)
    assert "\n" not in str(error.value)
  assert len(calls) == 1
  # A folder from before configurations were recorded is refused too.
  (grid.run_dir(tmp_path, spec) / grid.CONFIG_FILE).unlink()
  with pytest.raises(grid.StaleRunError, match="not recorded"):
    run(config)


def test_a_torn_result_counts_as_unfinished(tmp_path):
  (tmp_path / grid.RESULT_FILE).write_text('{"value": ')
  assert grid.read_result(tmp_path) is None
  grid.write_result(tmp_path, {"value": 1})
  assert grid.read_result(tmp_path) == {"value": 1}


def test_flags_pick_demo_paper_and_grid_defaults():
  flag_values = flags.FlagValues()
  distill.define_flags(flag_values)
  flag_values(["distill"])
  config = distill.config_from_flags(flag_values)
  assert config.card == "arith" and config.backend == "offline"
  assert config.methods == ("finetune", "dss_gold")
  assert len(config.seeds) >= 3
  config = distill.config_from_flags(flag_values, grid_defaults=True)
  assert config.methods == grid.METHODS
  # The five points of the paper's data-size figures (Figures 2-3).
  assert config.fractions == (0.125, 0.25, 0.5, 0.75, 1.0)
  assert config.fractions == grid.PAPER_FRACTIONS
  flag_values(["distill", "--task_card=svamp", "--seeds=4", "--fractions=0.5"])
  config = distill.config_from_flags(flag_values)
  assert config.backend == "replay" and config.source_name == "palm"
  assert config.vocabulary == "t5" and config.train_steps == 10_000
  assert config.seeds == (4,) and config.fractions == (0.5,)
  with pytest.raises(ValueError, match="model size"):
    job_config.DistillConfig(model_sizes=("huge",))


def test_every_flag_sets_a_config_field():
  flag_values = flags.FlagValues()
  distill.define_flags(flag_values)
  assert sorted(flag_values) == sorted(distill.FIELD_OF_FLAG)
  fields = {f.name for f in dataclasses.fields(job_config.DistillConfig)}
  assert set(distill.FIELD_OF_FLAG.values()) <= fields
  # A bad value is named by its flag, not by the library's field.
  flag_values(
    ["distill", "--teacher_samples=0", "--student_vocabulary=x.model"]
  )
  with pytest.raises(errors.UserError, match="^--teacher_samples must be >= 1"):
    distill.config_from_flags(flag_values)
  flag_values(["distill", "--teacher_samples=1"])
  with pytest.raises(errors.UserError, match="^--student_vocabulary=x.model: "):
    distill.config_from_flags(flag_values)


@pytest.mark.parametrize(
  "flag, words",
  [
    ("--train_steps=-5", "--train_steps must be >= 1, got -5"),
    ("--fractions=2", "--fractions must be in (0, 1]"),
    ("--fractions=half", "--fractions must be comma-separated numbers"),
    ("--recipe=paired", "--recipe must be one of mixture, official"),
    ("--methods=prompting", "--methods: unknown method 'prompting'"),
    # Two workers on one run folder would fail in orbax and hang.
    ("--seeds=0,0", "--seeds must be distinct, got (0, 0)"),
    ("--workers=2 --seeds=3,1,3", "--seeds must be distinct"),
    ("--fractions=0.1234561,0.1234562", "--fractions must be distinct"),
  ],
)
def test_bad_flags_stop_before_any_stage_in_one_line(
  tmp_path, run_entry_point, flag, words
):
  # `python -m dss_jax.distill`, in-process (errors_test runs a real one).
  out = tmp_path / "out"
  proc = run_entry_point("dss_jax.distill", *flag.split(), f"--out_dir={out}")
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
  assert len(lines) == 1 and words in lines[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert not out.exists()  # nothing annotated, built or trained


def test_the_library_run_as_a_command_names_the_grid_command():
  proc = subprocess.run(
    [sys.executable, "-m", "dss_jax.grid", "--fractions=2"],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
    "error: dss_jax.grid is the grid library, not a command; run "
    "`python -m dss_jax.grid_job ...` or `dss-jax grid ...`"
  )
