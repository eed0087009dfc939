"""Shared pytest setup: 8 fake CPU devices, no GPUs for TF, a clean registry.

One XLA compilation cache serves the whole run (workers and subprocesses).

The environment variables must be set before JAX or TensorFlow is imported
anywhere, so this module sets them at import time, before any test module loads.
"""

import os

# Eight fake XLA CPU devices, so sharding tests run real meshes on a laptop or CI
# (the optax and T5X habit). Appended, not replaced, to keep a user's own flags.
#
# Each fake device runs its part of a step on its own thread, and a collective
# waits for all eight. On a busy 2-core machine (two test workers, other jobs)
# a thread can be descheduled long enough that XLA's default 40 s limit for
# all threads to reach a collective ends the whole process; a slow arrival is
# load, not a deadlock, so the limit is raised well above any test's runtime
# on such a machine (a real deadlock still ends the process).
_FLAGS = (
  "--xla_force_host_platform_device_count=8",
  "--xla_cpu_collective_call_terminate_timeout_seconds=900",
  "--xla_cpu_collective_call_warn_stuck_timeout_seconds=120",
)
for _flag in _FLAGS:
  if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + " " + _flag
    ).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# TensorFlow only feeds data here; it must never grab a GPU that JAX needs.
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# No test may reach the network; TFDS must not try GCS for metadata.
os.environ.setdefault("NO_GCE_CHECK", "true")

import dataclasses  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402

# One persistent XLA compilation cache for every run of the suite: most tests
# compile the same tiny-model steps, in this process, in the other test
# worker and in the entry points they start as subprocesses (which inherit
# the environment). The first compilation of a program writes it; every later
# one, in any of those processes and in later runs, reads it back (a warm
# cache took accumulation, recipe and trainer_loop tests from 156 s to 88 s).
# The folder is $JAX_COMPILATION_CACHE_DIR when set, else one per user under
# $XDG_CACHE_HOME (~/.cache); the controller of an xdist run sets it before
# it starts its workers. An entry is keyed by the program, the XLA flags and
# the JAX version, so a stale one is never read, and the size limit evicts
# the least recently used. Every program is kept, however small or quick to
# compile (JAX's defaults keep only those over one second), and the size
# limit also turns on JAX's file lock, so concurrent processes (or two runs
# of the suite) never read a half-written entry.
_XLA_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_RUN_XLA_CACHE = None  # the fallback folder, removed after the run
if _XLA_CACHE_ENV not in os.environ:
  _cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(
    os.path.expanduser("~"), ".cache"
  )
  _cache_dir = os.path.join(_cache_home, "dss_jax", "test_xla_cache")
  try:
    os.makedirs(_cache_dir, exist_ok=True)
  except OSError:  # no writable home: a folder for this run only
    import tempfile

    _cache_dir = _RUN_XLA_CACHE = tempfile.mkdtemp(
      prefix="dss_jax_test_xla_cache_"
    )
  os.environ[_XLA_CACHE_ENV] = _cache_dir
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 << 30))

from dss_jax import host  # noqa: E402

# Before JAX starts: the suite is mostly small XLA:CPU steps (see dss_jax.host).
host.keep_freed_memory()

import pytest  # noqa: E402

_REPO = pathlib.Path(__file__).resolve().parents[1]
# The paper's released data (see tests/testdata/dss_paper/README.md): a folder
# named by $DSS_PAPER_DATA_DIR, else a shared copy beside the checkout, else
# the slices that ship with the tests (a few hundred rows per dataset).
# DSS_PAPER_DATA_DIR=tests/testdata/dss_paper runs the suite as a fresh clone
# without the shared copy does.
PAPER_DATA_ENV = "DSS_PAPER_DATA_DIR"
_SHARED_PAPER_DATA = _REPO.parent / "shared" / "data" / "dss_paper"
PAPER_DATA_SLICES = _REPO / "tests" / "testdata" / "dss_paper"
# Rows of the full release's CQA train split; fewer means a slice.
_FULL_CQA_TRAIN_ROWS = 9741


def _paper_data() -> pathlib.Path:
  """The paper data folder the tests use (see `paper_data_dir`)."""
  local = os.environ.get(PAPER_DATA_ENV)
  if local:
    path = pathlib.Path(local).resolve()
    if not path.is_dir():
      raise pytest.UsageError(
        f"error: {PAPER_DATA_ENV}={local}: no such folder; unset it to test "
        f"on the slices in {PAPER_DATA_SLICES.relative_to(_REPO)}"
      )
    return path
  if (_SHARED_PAPER_DATA / "cqa" / "cqa_train.json").is_file():
    return _SHARED_PAPER_DATA
  return PAPER_DATA_SLICES


def _is_full_release(path: pathlib.Path) -> bool:
  train = path / "cqa" / "cqa_train.json"
  if not train.is_file():
    return False
  with train.open() as f:
    return sum(1 for line in f if line.strip()) >= _FULL_CQA_TRAIN_ROWS


def pytest_configure(config: pytest.Config) -> None:
  del config
  import tensorflow as tf

  tf.config.set_visible_devices([], "GPU")


def pytest_unconfigure(config: pytest.Config) -> None:
  del config
  if _RUN_XLA_CACHE is not None:
    import shutil

    shutil.rmtree(_RUN_XLA_CACHE, ignore_errors=True)


def pytest_report_header() -> str:
  """Names the paper data the run uses, so a skip or a count is explained."""
  path = _paper_data()
  kind = "full release" if _is_full_release(path) else "slices"
  return f"paper data: {path} ({kind})"


@pytest.fixture(scope="session")
def repo_dir() -> pathlib.Path:
  """The repository root."""
  return _REPO


@pytest.fixture(scope="session")
def paper_data_dir() -> pathlib.Path:
  """The paper's released teacher outputs, in the release's layout.

  $DSS_PAPER_DATA_DIR, else ../shared/data/dss_paper beside the checkout,
  else the slices in tests/testdata/dss_paper (never a skip). Tests written
  against it hold on the slices and on the full release alike.
  """
  return _paper_data()


@pytest.fixture(scope="session")
def paper_data_slices() -> pathlib.Path:
  """The slices of the paper data in tests/testdata (pinned numbers)."""
  return PAPER_DATA_SLICES


@pytest.fixture(scope="session")
def full_paper_data_dir() -> pathlib.Path:
  """The full release (all 9,741 CQA train rows), for tests that need it."""
  path = _paper_data()
  if not _is_full_release(path):
    pytest.skip(
      "needs the paper's full released data: set DSS_PAPER_DATA_DIR to a "
      "copy with cqa/ and svamp/ whole (from the official datasets.zip; "
      "layout in tests/testdata/dss_paper/README.md)"
    )
  return path


@pytest.fixture(autouse=True)
def clear_seqio_registry():
  """Removes the SeqIO tasks and mixtures a test registered, after the test."""
  import seqio

  tasks = set(seqio.TaskRegistry.names())
  mixtures = set(seqio.MixtureRegistry.names())
  yield
  for name in set(seqio.MixtureRegistry.names()) - mixtures:
    seqio.MixtureRegistry.remove(name)
  for name in set(seqio.TaskRegistry.names()) - tasks:
    seqio.TaskRegistry.remove(name)


def _jaxpr_eqns(jaxpr):
  """Equations of a jaxpr and of every jaxpr nested in their parameters."""
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else (param,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _jaxpr_eqns(inner)


@pytest.fixture
def jaxpr_eqns():
  """`jaxpr_eqns(jaxpr)` walks a jaxpr's equations, nested ones included."""
  return _jaxpr_eqns


@dataclasses.dataclass
class Ran:
  """What an entry point run in-process left: exit status and output."""

  returncode: int
  stdout: str
  stderr: str


@pytest.fixture
def run_entry_point(capfd, monkeypatch):
  """`run_entry_point("dss_jax.train", *args)`: `python -m`, in this process.

  Runs the module as `__main__` (its flags defined and parsed by its own
  `if __name__ == "__main__":` block, as `python -m` does) and returns a
  `Ran`. Without a process's start (seconds of imports), for command lines
  that fail before anything compiles. What a run changes in the process is
  undone after it: the flags it defined and parsed, gin's config, the SeqIO
  tasks it registered and its TFDS folder, the environment, the loggers'
  levels and handlers, the working folder (chdir with monkeypatch before).
  The command's exit stays a SystemExit (`cli.exit_process` would end the
  process: tests/cli_test.py runs it in a process of its own).
  """
  import logging
  import runpy
  import warnings

  import gin
  import seqio
  from absl import app, flags

  # As after a process's first `app.run`: absl's help flags exist; its
  # logging handler and faulthandler, process-wide, stay pytest's.
  app.define_help_flags()
  monkeypatch.setattr(app._run_init, "done", True)
  # The command's end is this process's only when it runs alone: here it
  # stays the SystemExit that `cli.exit_process` receives.
  from dss_jax import cli

  def stay(code=0):
    raise SystemExit(code)

  monkeypatch.setattr(cli, "exit_process", stay)

  def run(module: str, *args: str) -> Ran:
    defined = set(flags.FLAGS)
    environ = dict(os.environ)
    tasks = set(seqio.TaskRegistry.names())
    tfds_data_dir = seqio.utils._TFDS_DATA_DIR_OVERRIDE  # --tfds_data_dir
    mixtures = set(seqio.MixtureRegistry.names())
    loggers = [logging.getLogger(), logging.getLogger("absl")]
    levels = [(x, x.level, list(x.handlers)) for x in loggers]
    capfd.readouterr()
    monkeypatch.setattr(sys, "argv", [module, *args])
    returncode = 0
    try:
      with warnings.catch_warnings():
        # runpy warns that the module is imported already (tests import it).
        warnings.simplefilter("ignore", RuntimeWarning)
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
      if isinstance(e.code, str):
        print(e.code, file=sys.stderr)
        returncode = 1
      else:
        returncode = e.code or 0
    finally:
      # The entry point's flags go; flags of a library it imported first
      # stay, as that library is not imported again.
      for name in set(flags.FLAGS) - defined:
        owner = flags.FLAGS.find_module_defining_flag(name) or ""
        if owner.startswith("dss_jax") or owner.endswith(".py"):
          delattr(flags.FLAGS, name)
      flags.FLAGS.unparse_flags()  # sets absl's logger level: restored below
      for logger, level, handlers in levels:
        logger.setLevel(level)
        logger.handlers[:] = handlers
      gin.clear_config()
      seqio.set_tfds_data_dir_override(tfds_data_dir)
      for name in set(seqio.MixtureRegistry.names()) - mixtures:
        seqio.MixtureRegistry.remove(name)
      for name in set(seqio.TaskRegistry.names()) - tasks:
        seqio.TaskRegistry.remove(name)
      os.environ.clear()
      os.environ.update(environ)
    out = capfd.readouterr()
    return Ran(returncode, out.out, out.err)

  return run
