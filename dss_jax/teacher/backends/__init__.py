"""Teacher backends behind one interface (base.TeacherBackend).

make_backend("gemini", model="gemini-2.5-flash")
make_backend("openai", model="meta-llama/Llama-3.1-8B-Instruct",
             base_url="http://localhost:8000/v1")
make_backend("replay", card=card)
make_backend("offline")  # the demo's built-in teacher (backends/offline.py)
"""

from typing import Any

from dss_jax.teacher.backends import gemini, offline, openai, replay
from dss_jax.teacher.backends.base import (
  Completion,
  FatalError,
  RequestError,
  RetryableError,
  TeacherBackend,
  TeacherError,
)

BACKENDS = ("gemini", "openai", "replay", "offline")


def make_backend(kind: str, **options: Any) -> TeacherBackend:
  """Creates a backend by name.

  Args:
    kind: "gemini", "openai", "replay" or "offline".
    **options: the backend's constructor arguments.

  Returns:
    The backend.

  Raises:
    ValueError: for an unknown kind.
  """
  if kind == "gemini":
    return gemini.GeminiBackend(**options)
  if kind == "openai":
    return openai.OpenAIBackend(**options)
  if kind == "replay":
    return replay.ReplayBackend(**options)
  if kind == "offline":
    return offline.OfflineBackend(**options)
  raise ValueError(f"unknown backend {kind!r}; choose from {BACKENDS}")


__all__ = [
  "BACKENDS",
  "Completion",
  "FatalError",
  "RequestError",
  "RetryableError",
  "TeacherBackend",
  "TeacherError",
  "make_backend",
]
