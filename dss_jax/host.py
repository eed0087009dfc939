"""Settings of the host process that the XLA CPU runtime needs to run fast.

XLA:CPU allocates each step's temporary buffers (activations, gradients) with
malloc. glibc hands allocations of more than a few megabytes to mmap and unmaps
them on free, so every training step faults its temporaries in again, page by
page: on a 2-core machine a third of a demo run went to the kernel (about 63,000
page faults a step for the demo's student). Keeping freed memory in the heap
removes most of it: 200 steps of the demo's finetuning run through
`python -m dss_jax.train` went from 5.0M to 0.35M page faults, 9.7 s to 2.1 s
of system time and 34 s to 28 s of wall time.

    from dss_jax import host
    host.keep_freed_memory()   # first thing in an entry point's main

Set DSS_JAX_SYSTEM_MALLOC=1 to keep glibc's defaults.

`add_xla_flag_defaults()` adds the XLA flags this project's models run faster
with, unless XLA_FLAGS already sets them: on GPUs, no merging of the dots
that share an operand (attention's query, key and value projections). XLA
merges them into one matmul and then copies each result out of it, and merges
their weight gradients after copying the activations' gradients side by side:
a T5 v1.1 base training step on an H100 spent 3-4 ms of 80 in those copies,
and the step went from 79.6 to 75.9 ms without the merging.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Sequence

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# The largest value mallopt takes (an int): never give memory back.
_NEVER = (1 << 31) - 1

_applied = False


def keep_freed_memory() -> bool:
  """Tells glibc's malloc to reuse freed memory instead of returning it.

  Call it before JAX starts its thread pools (the first computation). One
  arena, no mmap for large blocks, no trimming: the process keeps its peak
  memory, which a training or eval job reaches on its first step anyway.

  Returns:
    True when the settings were applied (Linux with glibc), else False.
  """
  global _applied
  if _applied:
    return True
  if not sys.platform.startswith("linux") or os.environ.get(
    "DSS_JAX_SYSTEM_MALLOC"
  ):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # musl and others have no mallopt
    return False
  _applied = all(
    mallopt(param, value) == 1
    for param, value in (
      (_M_ARENA_MAX, 1),
      (_M_MMAP_MAX, 0),
      (_M_TRIM_THRESHOLD, _NEVER),
    )
  )
  return _applied


def keeps_freed_memory() -> bool:
  """Whether `keep_freed_memory` applied its settings in this process."""
  return _applied


# Flag defaults for XLA_FLAGS; GPU flags are ignored by the other backends.
XLA_FLAG_DEFAULTS = ("--xla_gpu_dot_merger_threshold_mb=0",)


def add_xla_flags(defaults: Sequence[str]) -> str:
  """Adds `defaults` to XLA_FLAGS where it leaves them unset.

  Call it before JAX starts its backends (the first computation); later,
  XLA has read its flags. A flag already set keeps its value.

  Args:
    defaults: flags as XLA_FLAGS spells them (`--name=value`).

  Returns:
    The resulting XLA_FLAGS.
  """
  flags = os.environ.get("XLA_FLAGS", "").split()
  names = {f.split("=", 1)[0] for f in flags}
  for flag in defaults:
    if flag.split("=", 1)[0] not in names:
      flags.append(flag)
  os.environ["XLA_FLAGS"] = " ".join(flags)
  return os.environ["XLA_FLAGS"]


def add_xla_flag_defaults() -> str:
  """Adds `XLA_FLAG_DEFAULTS` to XLA_FLAGS where it leaves them unset.

  Returns:
    The resulting XLA_FLAGS.
  """
  return add_xla_flags(XLA_FLAG_DEFAULTS)
