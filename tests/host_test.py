"""dss_jax.host: glibc takes the settings, once, and the opt-out is honored."""

import subprocess
import sys

import pytest

from dss_jax import host


def test_applied_on_linux_and_idempotent():
  if not sys.platform.startswith("linux"):
    pytest.skip("glibc's mallopt is Linux only")
  assert host.keep_freed_memory()
  assert host.keep_freed_memory()


def _python(code: str, **env: str) -> str:
  """Runs `code` in a fresh interpreter with only `env`; its stdout."""
  out = subprocess.run(
    [sys.executable, "-c", code],
    env={"PATH": "", **env},
    capture_output=True,
    text=True,
    check=True,
  )
  return out.stdout.strip()


def test_opt_out_keeps_glibc_defaults():
  code = "from dss_jax import host; print(host.keep_freed_memory())"
  assert _python(code, DSS_JAX_SYSTEM_MALLOC="1") == "False"


def test_xla_flag_defaults_added_and_user_value_kept(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
  flags = host.add_xla_flag_defaults().split()
  assert flags[0] == "--xla_cpu_enable_fast_math=false"
  assert set(host.XLA_FLAG_DEFAULTS) <= set(flags)
  # Idempotent, and the user's own value of a default flag wins.
  assert host.add_xla_flag_defaults().split() == flags
  monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_dot_merger_threshold_mb=32")
  assert host.add_xla_flag_defaults() == "--xla_gpu_dot_merger_threshold_mb=32"


def test_xla_accepts_the_flag_defaults():
  # XLA aborts on a flag it does not know; this backend must start with them.
  code = (
    "from dss_jax import host; host.add_xla_flag_defaults();"
    " import jax.numpy as jnp; print(int(jnp.ones(3).sum()))"
  )
  assert _python(code, JAX_PLATFORMS="cpu") == "3"
