"""The test harness itself: fake devices exist, so sharding tests never skip."""

import jax


def test_eight_fake_cpu_devices():
  devices = jax.devices()
  assert len(devices) == 8, (
    "tests/conftest.py must give JAX 8 fake CPU devices before JAX starts; "
    f"got {devices}"
  )
  assert all(d.platform == "cpu" for d in devices)
