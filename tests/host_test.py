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


def test_opt_out_keeps_glibc_defaults():
  code = "from dss_jax import host; print(host.keep_freed_memory())"
  out = subprocess.run(
    [sys.executable, "-c", code],
    env={"DSS_JAX_SYSTEM_MALLOC": "1", "PATH": ""},
    capture_output=True,
    text=True,
    check=True,
  )
  assert out.stdout.strip() == "False"
