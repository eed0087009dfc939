"""An installed wheel works outside a checkout.

The wheel is built from a copy of the sources, installed (not editable) into a
fresh virtual environment that sees this environment's dependencies but not
the checkout, and run from a folder outside it: every shipped task card loads,
every gin file is there, `python -m dss_jax.train --gin_file=tiny.gin`
trains a step with the shipped gin file, a `--gin_search_paths` folder and
the data found through `--tfds_data_dir`,
and every include of the T5X gin files resolves from the one folder that
`python -m dss_jax.resources` prints (T5X's `--gin_search_paths`; T5X itself
is not installed there, so its own `t5x/...` files are only named).
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import pytest

from dss_jax import resources

# What a source distribution holds: enough to build the wheel.
_SOURCES = ("setup.py", "pyproject.toml", "README.md")
_FOLDERS = ("dss_jax", "tasks", "gin_configs")


def _run(args, **kwargs) -> subprocess.CompletedProcess:
  result = subprocess.run(args, capture_output=True, text=True, **kwargs)
  assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
  return result


def _build_wheel(repo_dir: pathlib.Path, tmp: pathlib.Path) -> pathlib.Path:
  """Builds the wheel from a copy, so the checkout gets no build/ folder."""
  pytest.importorskip(
    "setuptools", reason="building a wheel offline needs setuptools installed"
  )
  src = tmp / "src"
  src.mkdir()
  for name in _SOURCES:
    shutil.copy(repo_dir / name, src / name)
  for name in _FOLDERS:
    shutil.copytree(
      repo_dir / name,
      src / name,
      ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
  _run(
    [
      *(sys.executable, "-m", "pip", "wheel", "--no-deps"),
      *("--no-build-isolation", "--no-index", "-w", str(tmp / "dist"), "."),
    ],
    cwd=src,
  )
  (wheel,) = (tmp / "dist").glob("dss_jax-*.whl")
  return wheel


@pytest.fixture(scope="module")
def venv_python(repo_dir, tmp_path_factory) -> pathlib.Path:
  """The python of a fresh venv with the wheel installed (not editable)."""
  tmp = tmp_path_factory.mktemp("wheel")
  wheel = _build_wheel(repo_dir, tmp)
  _run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")])
  python = tmp / "venv" / "bin" / "python"
  site = _run(
    [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
  ).stdout.strip()
  _run(
    [
      *(sys.executable, "-m", "pip", "install", "--no-deps", "--no-index"),
      *("--target", site, str(wheel)),
    ]
  )
  # This environment's dependencies, after the venv's own site-packages. A
  # .pth line adds a folder without running that folder's .pth files, so an
  # editable install of the checkout stays invisible.
  paths = dict.fromkeys(sysconfig.get_path(p) for p in ("purelib", "platlib"))
  (pathlib.Path(site) / "dss_jax_test_deps.pth").write_text(
    "\n".join(paths) + "\n"
  )
  return python


def _env(**extra: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="", **extra)
  return env


def test_checkout_finds_its_own_folders(repo_dir):
  assert resources.tasks_dir() == repo_dir / "tasks"
  assert resources.gin_configs_dir() == repo_dir / "gin_configs"


def test_installed_wheel_ships_every_card_and_gin_file(
  venv_python, repo_dir, tmp_path
):
  script = textwrap.dedent("""
    import json
    import dss_jax
    from dss_jax import cards, gin_flags
    cards_loaded = {n: cards.load_card(n).name for n in cards.list_cards()}
    gins = sorted(
      str(p.relative_to(gin_flags.GIN_CONFIGS_DIR))
      for p in gin_flags.GIN_CONFIGS_DIR.rglob("*.gin")
    )
    print(json.dumps({
      "package": dss_jax.__file__,
      "tasks_dir": str(cards.TASKS_DIR),
      "cards": cards_loaded,
      "gins": gins,
    }))
  """)
  out = _run([venv_python, "-c", script], cwd=tmp_path, env=_env()).stdout
  found = json.loads(out.strip().splitlines()[-1])
  venv = venv_python.parents[1]
  package = pathlib.Path(found["package"])
  assert package.is_relative_to(venv), found["package"]
  assert pathlib.Path(found["tasks_dir"]) == package.parent / "_tasks"
  shipped = sorted(p.stem for p in (repo_dir / "tasks").glob("*.yaml"))
  assert sorted(found["cards"]) == shipped
  assert all(name == found["cards"][name] for name in shipped)
  checkout_gins = sorted(
    str(p.relative_to(repo_dir / "gin_configs"))
    for p in (repo_dir / "gin_configs").rglob("*.gin")
  )
  assert found["gins"] == checkout_gins


def test_installed_wheel_trains_with_a_shipped_gin_file(
  venv_python, paper_data_dir, tmp_path
):
  data_dir = tmp_path / "tfds"
  # No TFDS_DATA_DIR: the trainer finds the data through --tfds_data_dir.
  env = {
    k: v
    for k, v in _env(DSS_PAPER_DATA_DIR=str(paper_data_dir)).items()
    if k != "TFDS_DATA_DIR"
  }
  build = (
    "from dss_jax import datasets; "
    f"datasets.build_annotated('svamp', 'palm', data_dir={str(data_dir)!r})"
  )
  _run([venv_python, "-c", build], cwd=tmp_path, env=env)
  # A user's own gin folder, found through --gin_search_paths.
  mine = tmp_path / "my_gin"
  mine.mkdir()
  (mine / "short.gin").write_text(
    "TRAIN_STEPS = 1\nCHECKPOINT_PERIOD = 1\nBATCH_SIZE = 2\n"
    "TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 64}\n"
  )
  model_dir = tmp_path / "run"
  result = _run(
    [
      *(venv_python, "-m", "dss_jax.train", "--gin_file=tiny.gin"),
      *("--gin_file=short.gin", f"--gin_search_paths={mine}"),
      # T5X's flag for the TFDS data dir.
      f"--tfds_data_dir={data_dir}",
      f'--gin.MODEL_DIR="{model_dir}"',
      '--gin.MIXTURE_OR_TASK_NAME="dss_svamp_palm"',
      # A fixed peak skips the CPU matmul measurement (faster start).
      "--gin.trainer.train.peak_flops=1e12",
    ],
    cwd=tmp_path,
    env=env,
    timeout=300,
  )
  assert "finished at step 1" in result.stderr
  assert (model_dir / "checkpoints" / "1").is_dir()


# Run inside the installed venv: follows every include of the shipped T5X gin
# files with gin's own parser, from the folder given as argv[1].
_RESOLVE_INCLUDES = textwrap.dedent("""
  import json, pathlib, sys
  from gin import config_parser

  class Delegate(config_parser.ParserDelegate):
    def configurable_reference(self, name, evaluate):
      return name
    def macro(self, name):
      return name

  search = pathlib.Path(sys.argv[1])
  found = {"ours": [], "t5x": [], "missing": []}
  for path in sorted((search / "gin_configs" / "t5x").rglob("*.gin")):
    with path.open() as f:
      for s in config_parser.ConfigParser(f, Delegate()):
        if not isinstance(s, config_parser.IncludeStatement):
          continue
        if s.filename.startswith("t5x/"):
          found["t5x"].append(s.filename)
        elif (search / s.filename).is_file():
          found["ours"].append(s.filename)
        else:
          found["missing"].append(f"{path.name}: {s.filename}")
  print(json.dumps(found))
""")


def test_installed_t5x_gin_includes_resolve_from_the_printed_search_path(
  venv_python, repo_dir, tmp_path
):
  printed = _run(
    [venv_python, "-m", "dss_jax.resources"], cwd=tmp_path, env=_env()
  ).stdout.strip()
  search = pathlib.Path(printed)
  # The installed package's folder, never the checkout.
  assert search.is_relative_to(venv_python.parents[1]), printed
  assert (search / "__init__.py").is_file(), printed
  out = _run(
    [venv_python, "-c", _RESOLVE_INCLUDES, printed], cwd=tmp_path, env=_env()
  ).stdout
  found = json.loads(out.strip().splitlines()[-1])
  assert found["missing"] == []
  # Every run file includes a shared part of ours, every model file
  # student.gin: the check saw them all.
  assert "gin_configs/t5x/train.gin" in found["ours"]
  assert "gin_configs/t5x/eval_common.gin" in found["ours"]
  assert "gin_configs/t5x/models/student.gin" in found["ours"]
  assert "t5x/configs/runs/finetune.gin" in found["t5x"]
  # The same include strings resolve from the checkout's root.
  for name in found["ours"]:
    assert (repo_dir / name).is_file(), name
