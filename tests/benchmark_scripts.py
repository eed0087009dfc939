"""Runs a benchmarks/*.py script's `main` in the test's process.

    with benchmark_scripts.undone():
      benchmark_scripts.load("multihost_equality").main(["--smoke"])

A script may set environment variables (XLA flags, TFDS_DATA_DIR), extend
sys.path and quiet absl's logging, as scripts do; `undone` puts them back
so the next test does not see them.
"""

import contextlib
import importlib.util
import os
import pathlib
import sys

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
  """Imports benchmarks/<name>.py as a fresh module."""
  spec = importlib.util.spec_from_file_location(
    f"benchmark_{name}", BENCHMARKS / f"{name}.py"
  )
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up
  try:
    spec.loader.exec_module(module)
  finally:
    del sys.modules[spec.name]
  return module


@contextlib.contextmanager
def undone():
  """Restores the environment, sys.path and absl's verbosity on exit."""
  from absl import logging

  environ, path = dict(os.environ), list(sys.path)
  verbosity = logging.get_verbosity()
  try:
    yield
  finally:
    os.environ.clear()
    os.environ.update(environ)
    sys.path[:] = path
    logging.set_verbosity(verbosity)
