"""An append-only, fsynced JSON-lines store of teacher completions.

Each finished teacher call is one line, keyed by (example id, prompt hash,
teacher, sample index). A line is written and fsynced before the call counts as
done, so a run killed at any moment (SIGKILL included) loses at most the calls
that were still in flight; on reopening, a torn last line is cut off and every
complete line is kept, so no finished call is paid for twice.

    store = AnnotationStore("annotations/cqa_gemini_2_5_flash.jsonl")
    if key not in store:
      store.append(CompletionRecord(...))

One process writes a store at a time: opening it takes `<store>.lock`
(`WriterLock`, naming the holder's pid, host and start time), and a second
writer is refused in one line. A fault of the machine (disk full, a
read-only folder) ends in one `errors.MachineError` line, and the lines
stored before it are kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import json
import os
import pathlib
import socket
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

  Thread-safe within a process; one writer process at a time (a second is
  refused: `WriterLock`).
  """

  def __init__(self, path: os.PathLike | str):
    """Opens (or creates) a store, repairing a torn last line.

    Args:
      path: the JSON-lines file.
    """
    self.path = pathlib.Path(path)
    if self.path.is_dir():
      raise errors.UserError(
        f"annotation store {self.path} is a folder; give a .jsonl file path "
        "(or remove the folder)"
      )
    _refuse_special_file(self.path)
    with os_faults(self.path, "opening the annotation store"):
      self.path.parent.mkdir(parents=True, exist_ok=True)
      self._writer = WriterLock(
        self.path.with_name(self.path.name + ".lock"), "annotation store"
      )
    self._records: dict[RecordKey, CompletionRecord] = {}
    # append() may run in worker threads (the runner keeps fsync off its
    # event loop); one lock keeps lines whole and the index consistent.
    self._lock = threading.Lock()
    try:
      with os_faults(self.path, "opening the annotation store"):
        self._repair_and_load()
        self._fd = os.open(
          self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
        )
        self._end = os.fstat(self._fd).st_size
    except BaseException:
      self._writer.release()
      raise

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
    line = json.dumps(dataclasses.asdict(record), ensure_ascii=False) + "\n"
    data = line.encode("utf-8")
    with self._lock:
      if record.key in self._records:
        return
      try:
        written = 0
        while written < len(data):
          written += os.write(self._fd, data[written:])
        os.fsync(self._fd)
      except OSError as e:
        # Cut a half-written line off, so the stored lines stay whole.
        with contextlib.suppress(OSError):
          os.ftruncate(self._fd, self._end)
        raise _machine_error(
          self.path, "storing a teacher answer", e, self
        ) from None
      self._end += len(data)
      self._records[record.key] = record

  def close(self) -> None:
    """Closes the file and releases the writer lock."""
    if self._fd >= 0:
      os.close(self._fd)
      self._fd = -1
      self._writer.release()

  def __del__(self) -> None:
    # A store dropped without close() (an exception while opening, a caller
    # that only counted it) must not keep its writer lock.
    if getattr(self, "_fd", -1) >= 0:
      self.close()

  def __enter__(self) -> AnnotationStore:
    return self

  def __exit__(self, *exc: object) -> None:
    self.close()


class WriterLock:
  """One writer at a time: an exclusive lock on a file naming its holder.

  The lock is an `fcntl.flock` on `path`, held until `release` or the
  process ends (a killed holder's lock is gone with it, so a stale lock
  file is taken over). The file says who holds it: pid, host, start time.
  """

  def __init__(
    self,
    path: os.PathLike | str,
    what: str,
    guarded: os.PathLike | str | None = None,
  ):
    """Takes the lock, or refuses.

    Args:
      path: the lock file (created if absent).
      what: what it guards, for the message ("annotation store").
      guarded: the file or folder it guards (default: `path` less its
        last suffix).

    Raises:
      errors.UserError: another process holds it (naming the holder).
    """
    self.path = pathlib.Path(path)
    guarded = guarded or self.path.with_suffix("")
    self._fd = -1
    self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = self.path.read_text(errors="replace").strip() or "unknown"
      os.close(self._fd)
      self._fd = -1
      raise errors.UserError(
        f"{guarded}: another process is writing "
        f"this {what} ({holder}); wait for it to finish or stop it, then "
        "rerun"
      ) from None
    holder = (
      f"pid {os.getpid()} on {socket.gethostname()}, since "
      f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M:%S} UTC"
    )
    os.ftruncate(self._fd, 0)
    os.write(self._fd, (holder + "\n").encode())

  def release(self) -> None:
    """Releases the lock (the file stays; an unlocked file is free)."""
    if self._fd >= 0:
      with contextlib.suppress(OSError):
        os.ftruncate(self._fd, 0)
      os.close(self._fd)
      self._fd = -1

  def __del__(self) -> None:
    self.release()

  def __enter__(self) -> WriterLock:
    return self

  def __exit__(self, *exc: object) -> None:
    self.release()


# errno values that are the machine's, not the input's: full disk or quota,
# a file size limit, read-only file system, no permission, I/O error.
_MACHINE_ERRNOS = (
  errno.ENOSPC,
  errno.EDQUOT,
  errno.EFBIG,
  errno.EROFS,
  errno.EACCES,
  errno.EPERM,
  errno.EIO,
)


def _machine_error(
  path: pathlib.Path,
  action: str,
  error: OSError,
  store: AnnotationStore | None = None,
) -> Exception:
  kept = (
    f"the {len(store)} answers stored before are kept"
    if store is not None
    else "nothing stored was changed"
  )
  reason = error.strerror or type(error).__name__
  if error.errno in _PATH_ERRNOS:
    return errors.UserError(
      f"{error.filename or path}: {reason} while {action}; {kept}: give a "
      "file path where a file belongs and a folder where a folder does"
    )
  return errors.MachineError(
    f"{error.filename or path}: {reason} while {action}; {kept}: free "
    "space or fix the permissions, then rerun the same command to resume"
  )


# errno values of a path of the wrong kind: the user's to fix.
_PATH_ERRNOS = (errno.ENOTDIR, errno.EISDIR, errno.EEXIST)


@contextlib.contextmanager
def os_faults(path: os.PathLike | str, action: str) -> Iterator[None]:
  """OSErrors inside become one line: `errors.MachineError` for faults of
  the machine (disk full, read-only, no permission), else `UserError` (a
  path whose parent is a file, a folder where a file belongs).

  Args:
    path: the file being worked on, for the message.
    action: what was being done ("writing the run's result").
  """
  try:
    yield
  except (errors.UserError, errors.MachineError):
    raise
  except OSError as e:
    if e.errno not in _MACHINE_ERRNOS + _PATH_ERRNOS:
      raise  # not a fault of the machine or a path: a bug, with its trace
    raise _machine_error(pathlib.Path(path), action, e) from None


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


def _refuse_special_file(path: pathlib.Path) -> None:
  """A store is a regular file: a device such as /dev/full or /dev/zero
  reads without end (the whole store is read at open) and takes no lock."""
  if path.exists() and not path.is_file():
    raise errors.UserError(
      f"annotation store {path} is not a regular file (a device, pipe or "
      "socket); give a .jsonl file path"
    )


def read_records(path: os.PathLike | str) -> list[CompletionRecord]:
  """All complete records of a store file, in write order (read-only)."""
  records = []
  if pathlib.Path(path).is_dir():
    raise errors.UserError(
      f"annotation store {path} is a folder; give the .jsonl file"
    )
  _refuse_special_file(pathlib.Path(path))
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
