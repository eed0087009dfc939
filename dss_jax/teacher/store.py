"""An append-only, fsynced JSON-lines store of teacher completions.

Each finished teacher call is one line, keyed by (example id, prompt hash,
teacher, sample index). A line is written and fsynced before the call counts as
done, so a run killed at any moment (SIGKILL included) loses at most the calls
that were still in flight; on reopening, a torn last line is cut off and every
complete line is kept, so no finished call is paid for twice.

    store = AnnotationStore("annotations/cqa_gemini_2_5_flash.jsonl")
    if key not in store:
      store.append(CompletionRecord(...))
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from dss_jax import errors

if TYPE_CHECKING:
  from dss_jax.teacher import prompts
  from dss_jax.teacher.backends import base


class RecordKey(NamedTuple):
  """What identifies one teacher call."""

  id: str
  prompt_hash: str
  teacher: str
  sample: int


@dataclasses.dataclass(frozen=True)
class CompletionRecord:
  """One finished teacher call.

  Attributes:
    id: the example id.
    prompt_hash: hash of the prompt and sampling settings (prompts.py).
    teacher: the teacher's name, e.g. "gemini-2.5-flash".
    sample: the sample index (0 .. k-1 for self-consistency).
    completion: the raw completion text ('' when the teacher returned none).
    split: the source split the example came from.
    finish_reason: the backend's stop reason (e.g. "STOP", "SAFETY").
    input_tokens: prompt tokens billed.
    output_tokens: completion tokens billed.
  """

  id: str
  prompt_hash: str
  teacher: str
  sample: int
  completion: str
  split: str = ""
  finish_reason: str = ""
  input_tokens: int = 0
  output_tokens: int = 0

  @property
  def key(self) -> RecordKey:
    return RecordKey(self.id, self.prompt_hash, self.teacher, self.sample)

  @classmethod
  def of(
    cls,
    request: prompts.TeacherRequest,
    completion: base.Completion,
    teacher: str,
  ) -> CompletionRecord:
    """The record of a `prompts.TeacherRequest` answered by a backend's
    `base.Completion` (text, finish reason, token counts)."""
    return cls(
      id=request.example_id,
      prompt_hash=request.prompt_hash,
      teacher=teacher,
      sample=request.sample,
      completion=completion.text,
      split=request.split,
      finish_reason=completion.finish_reason,
      input_tokens=completion.input_tokens,
      output_tokens=completion.output_tokens,
    )

  @classmethod
  def from_json(cls, data: dict[str, Any]) -> CompletionRecord:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


class AnnotationStore:
  """The completions of one annotation job, persisted as JSON lines.

  Thread-safe within a process; not safe for several writer processes at
  once (one runner owns a store).
  """

  def __init__(self, path: os.PathLike | str):
    """Opens (or creates) a store, repairing a torn last line.

    Args:
      path: the JSON-lines file.
    """
    self.path = pathlib.Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._records: dict[RecordKey, CompletionRecord] = {}
    # append() may run in worker threads (the runner keeps fsync off its
    # event loop); one lock keeps lines whole and the index consistent.
    self._lock = threading.Lock()
    self._repair_and_load()
    self._file = self.path.open("a", encoding="utf-8")

  def _repair_and_load(self) -> None:
    if not self.path.exists():
      return
    data = self.path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
      # A write interrupted by a kill: the record was never acknowledged (no
      # fsync returned), so dropping it repeats at most that one call.
      with self.path.open("r+b") as f:
        f.truncate(end)
        f.flush()
        os.fsync(f.fileno())
    lines = data[:end].decode("utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, start=1):
      if not line.strip():
        continue
      record = _parse_line(self.path, number, line)
      self._records.setdefault(record.key, record)

  def __contains__(self, key: RecordKey) -> bool:
    return key in self._records

  def __len__(self) -> int:
    return len(self._records)

  def __iter__(self) -> Iterator[CompletionRecord]:
    return iter(self._records.values())

  def get(self, key: RecordKey) -> CompletionRecord | None:
    """The record under `key`, or None."""
    return self._records.get(key)

  def append(self, record: CompletionRecord) -> None:
    """Writes one record durably (write, flush, fsync) before returning.

    A record whose key is already stored is ignored, so a store never holds a
    call twice.

    Args:
      record: the finished call.
    """
    line = json.dumps(dataclasses.asdict(record), ensure_ascii=False)
    with self._lock:
      if record.key in self._records:
        return
      self._file.write(line + "\n")
      self._file.flush()
      os.fsync(self._file.fileno())
      self._records[record.key] = record

  def close(self) -> None:
    """Closes the file."""
    self._file.close()

  def __enter__(self) -> AnnotationStore:
    return self

  def __exit__(self, *exc: object) -> None:
    self.close()


ANNOTATIONS_ENV = "DSS_ANNOTATIONS_DIR"


def default_store_path(card: str, source: str) -> str:
  """Where the runner writes (card, source) by default.

  Args:
    card: the card name.
    source: the source name, e.g. "gemini_2_5_flash".

  Returns:
    $DSS_ANNOTATIONS_DIR/<card>_<source>.jsonl (directory default
    ./annotations).
  """
  root = os.environ.get(ANNOTATIONS_ENV, "annotations")
  return os.path.join(root, f"{card}_{source}.jsonl")


def read_records(path: os.PathLike | str) -> list[CompletionRecord]:
  """All complete records of a store file, in write order (read-only)."""
  records = []
  with pathlib.Path(path).open(encoding="utf-8", errors="replace") as f:
    for number, line in enumerate(f, start=1):
      if line.endswith("\n") and line.strip():
        records.append(_parse_line(path, number, line))
  return records


def _parse_line(
  path: os.PathLike | str, number: int, line: str
) -> CompletionRecord:
  """One store line as a record.

  Raises:
    errors.UserError: the line is not a completion record (naming the file
      and line); a torn last line never gets here (it is cut off on open).
  """
  try:
    data = json.loads(line)
    if not isinstance(data, dict):
      raise TypeError(f"a JSON {type(data).__name__}, not an object")
    # A missing key field is a TypeError here.
    return CompletionRecord.from_json(data)
  except (ValueError, TypeError) as e:
    raise errors.UserError(
      f"{path}:{number}: not a completion record ({errors.one_line(e)}); "
      "delete that line and rerun to ask the teacher again"
    ) from None
