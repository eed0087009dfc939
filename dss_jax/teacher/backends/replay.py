"""Replay backend: the paper's released PaLM-540B completions as a teacher.

Answers a request for example id X with the released completion of X, so the
runner, the store and the TFDS builder can be exercised end to end on real
teacher text without a network. Every sample index gets the same text (the
paper released one completion per example).
"""

import pathlib

from dss_jax import cards as cards_lib
from dss_jax.teacher import prompts, sources
from dss_jax.teacher.backends import base


class ReplayBackend(base.TeacherBackend):
  """Looks completions up by example id."""

  def __init__(
    self,
    card: cards_lib.TaskCard,
    root: pathlib.Path | None = None,
    splits: list[str] | None = None,
  ):
    """Loads the released completions of a card.

    Args:
      card: a card with a `paper_folder` source.
      root: the paper layout root (default: $DSS_PAPER_DATA_DIR or the zip).
      splits: file split names to load (default: all available).
    """
    self.name = sources.PALM_TEACHER
    root = root or sources.default_root()
    names = splits or list(sources.available_splits(card, root).values())
    self._by_id: dict[str, str] = {}
    for split in names:
      for example, text in sources.read_replay(card, split, root):
        self._by_id[example.id] = text

  async def generate(self, request: prompts.TeacherRequest) -> base.Completion:
    try:
      text = self._by_id[request.example_id]
    except KeyError:
      raise base.RequestError(
        f"no released completion for id {request.example_id!r}"
      ) from None
    return base.Completion(text, "REPLAY")
