"""Reads T5X checkpoints (both on-disk formats) and writes ones T5X restores.

Two layouts are understood, local or on ``gs://``:

* T5X's legacy format, used by the public
  ``gs://t5-data/pretrained_models/t5x/...`` checkpoints: a step directory
  ``checkpoint_<step>/`` with a msgpack file ``checkpoint`` holding
  ``{"version": 3, "optimizer": {"target": ..., "state": ...}}``, where each
  partitioned array is a TensorStore spec (a dict) pointing at a zarr array in
  a sibling directory named after the parameter (``target.encoder.layers_0...``)
  and small arrays are stored inline.
* T5X's orbax format: ``checkpoint_<step>/state/`` written by orbax's
  ``PyTreeCheckpointHandler`` with the same ``{"target", "state"}`` tree.

This project's own checkpoints are `dss_jax.checkpoints`' concern; its
``resolve_checkpoint`` and ``load_params`` take a checkpoint of any layout and
come here for T5X's.

Only the parameters (the ``target`` subtree) are read: optimizer state is never
materialized, which halves host memory for Adam-style optimizers. Names are
compared to the model's by path, missing and extra ones are reported, and a
shape mismatch fails with one line naming the parameter and both shapes.

With ``shardings`` (``load_params``, as INITIAL_CHECKPOINT_PATH uses it),
each host reads from a legacy checkpoint only the TensorStore slices its own
devices hold, so a model sharded over a pod slice is never read whole onto
one host (tests/multihost_test.py counts the bytes each process reads).

``save_t5x_checkpoint`` writes parameters in the legacy layout, which is what
T5X's eval and infer restore by default (``utils.RestoreCheckpointConfig`` uses
``checkpoints.Checkpointer``), so a student trained here scores under
``python -m t5x.eval``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.serialization
import flax.traverse_util
import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from absl import logging
from etils import epath

from dss_jax import errors

Params = Mapping[str, Any]

LEGACY = "t5x_legacy"
ORBAX = "orbax"

# T5X writes checkpoint format version 3 since 2021: bfloat16 arrays are stored
# natively by TensorStore rather than as uint16.
_T5X_VERSION = 3
# The msgpack file name inside a legacy step directory.
_MSGPACK_FILE = "checkpoint"
# T5X names step directories checkpoint_<step>.
T5X_STEP_DIR = re.compile(r"^checkpoint_(\d+)$")
# The orbax item that holds the train state, in T5X and in this project.
STATE_ITEM = "state"
# Files an orbax item or step directory holds once it is complete.
ORBAX_MARKERS = ("_METADATA", "manifest.ocdbt", "_CHECKPOINT_METADATA")
# T5X aims at 64 MiB chunks: big enough for few files, small enough to let
# many hosts write slices of one array in parallel.
_CHUNK_BYTES = 64 * 1024 * 1024
# T5X writes specs with a placeholder bucket and fills in the real one when
# reading, so checkpoints can be copied between buckets.
_DUMMY_BUCKET = "t5x-dummy-bucket"


def _run(coroutine: Any) -> Any:
  """Runs a coroutine to completion, also from inside a running event loop.

  Notebooks (Colab, Jupyter) already run a loop, where asyncio.run fails; the
  coroutine then gets a fresh loop on a worker thread.
  """
  try:
    asyncio.get_running_loop()
  except RuntimeError:
    return asyncio.run(coroutine)
  with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
    return pool.submit(asyncio.run, coroutine).result()


class CheckpointError(errors.UserError):
  """A checkpoint that cannot be used, with a one-line reason."""


@dataclasses.dataclass(frozen=True)
class CheckpointRef:
  """One checkpoint on disk.

  Attributes:
    path: for the legacy format the msgpack ``checkpoint`` file; for orbax the
      item directory that holds the train state tree.
    step: the training step, or None when the path does not say it.
    format: ``LEGACY`` or ``ORBAX``.
  """

  path: str
  step: int | None
  format: str


@dataclasses.dataclass
class ParamReport:
  """How a checkpoint's parameter names compare with the model's.

  Attributes:
    missing: names the model has and the checkpoint lacks.
    extra: names the checkpoint has and the model lacks (ignored).
  """

  missing: list[str] = dataclasses.field(default_factory=list)
  extra: list[str] = dataclasses.field(default_factory=list)


# ---------------------------------------------------------------------------
# Finding checkpoints.


def is_dir(path: epath.Path) -> bool:
  """`path.is_dir()`, False where a remote file system cannot say."""
  try:
    return path.is_dir()
  except Exception:  # noqa: BLE001 - remote file systems raise many types.
    return False


def absolute_path(path: str | os.PathLike[str]) -> epath.Path:
  """`path` made absolute when it is local; orbax refuses relative paths."""
  path = epath.Path(path)
  return path if "://" in str(path) else path.absolute()


def step_dir_ref(
  step_dir: epath.Path, step: int | None
) -> CheckpointRef | None:
  """Returns the checkpoint inside one step directory, None if incomplete.

  A step directory holds a legacy msgpack ``checkpoint`` file, or is (or
  holds as its ``state`` item) an orbax checkpoint.
  """
  if any((step_dir / m).exists() for m in ("_METADATA", "manifest.ocdbt")):
    return CheckpointRef(os.fspath(step_dir), step, ORBAX)
  msgpack = step_dir / _MSGPACK_FILE
  if msgpack.exists() and not is_dir(msgpack):
    return CheckpointRef(os.fspath(msgpack), step, LEGACY)
  state = step_dir / STATE_ITEM
  if is_dir(state):
    if (state / "_METADATA").exists() or (state / "manifest.ocdbt").exists():
      return CheckpointRef(os.fspath(state), step, ORBAX)
    if (state / _MSGPACK_FILE).exists():
      return CheckpointRef(os.fspath(state / _MSGPACK_FILE), step, LEGACY)
  return None


def list_checkpoints(model_dir: str | os.PathLike[str]) -> list[CheckpointRef]:
  """Lists T5X's complete ``checkpoint_<step>`` checkpoints, oldest first.

  Directories still being written (no msgpack file or orbax metadata yet)
  are left out, so a running job can be followed.

  Args:
    model_dir: a T5X model directory.

  Returns:
    The checkpoints, sorted by step.
  """
  root = epath.Path(model_dir)
  found: dict[int, CheckpointRef] = {}
  if not is_dir(root):
    return []
  for child in root.iterdir():
    match = T5X_STEP_DIR.match(child.name)
    if not match or not is_dir(child):
      continue
    ref = step_dir_ref(child, int(match.group(1)))
    if ref is not None:
      found.setdefault(ref.step, ref)
  return [found[s] for s in sorted(found)]


def pick_step(
  refs: Sequence[CheckpointRef], step: int | None, path: Any
) -> CheckpointRef:
  """The checkpoint of `step` (default: the latest) among `refs`.

  Raises:
    CheckpointError: no checkpoint has that step.
  """
  if step is None:
    return refs[-1]
  for ref in refs:
    if ref.step == step:
      return ref
  steps = [r.step for r in refs]
  raise CheckpointError(f"no checkpoint for step {step} in {path}; has {steps}")


def resolve_checkpoint(
  path: str | os.PathLike[str], step: int | None = None
) -> CheckpointRef:
  """Finds the T5X checkpoint a user pointed at.

  Args:
    path: a T5X model directory (then ``step``, or the latest step, is
      used), a step directory, a legacy msgpack ``checkpoint`` file, or an
      orbax item directory.
    step: which step to take from a model directory.

  Returns:
    The checkpoint.

  Raises:
    CheckpointError: the path does not exist or holds no checkpoint.
  """
  p = epath.Path(path)
  if not p.exists():
    raise CheckpointError(f"checkpoint path does not exist: {path}")
  if not is_dir(p):
    # A file is taken as T5X's msgpack; reading it says if it is not one.
    match = T5X_STEP_DIR.match(p.parent.name)
    return CheckpointRef(
      os.fspath(p), int(match.group(1)) if match else None, LEGACY
    )
  refs = list_checkpoints(p)
  if refs:
    return pick_step(refs, step, path)
  match = T5X_STEP_DIR.match(p.name)
  ref = step_dir_ref(p, int(match.group(1)) if match else None)
  if ref is not None:
    return ref
  if any((p / m).exists() for m in ORBAX_MARKERS):
    match = T5X_STEP_DIR.match(p.parent.name)
    return CheckpointRef(
      os.fspath(p), int(match.group(1)) if match else None, ORBAX
    )
  try:
    empty = not any(True for _ in p.iterdir())
  except Exception:  # noqa: BLE001
    empty = True
  if empty:
    raise CheckpointError(f"checkpoint directory is empty: {path}")
  raise CheckpointError(
    f"no checkpoint found in {path} (expected checkpoint_<step>/, "
    "checkpoints/<step>/, a msgpack 'checkpoint' file or orbax metadata)"
  )


# ---------------------------------------------------------------------------
# Reading.


def _is_ts_spec(value: Any) -> bool:
  # The same test T5X applies: old (tensorstore < 0.1.14) specs keep "path" at
  # the top level, new ones inside "kvstore"; both have these three keys.
  return isinstance(value, Mapping) and {
    "driver",
    "kvstore",
    "metadata",
  } <= set(value)


def _absolute_spec(spec: Mapping[str, Any], ckpt_dir: str) -> dict[str, Any]:
  """Turns a spec with a path relative to the step directory into one to open.

  The driver follows where the checkpoint is now, not where it was written:
  the public checkpoints were written to GCS and may be read from a local copy.
  """
  spec = dict(spec)
  kvstore = dict(spec["kvstore"])
  relative = kvstore.pop("path", None) or spec.pop("path", None)
  if relative is None:
    raise CheckpointError(f"tensorstore spec without a path in {ckpt_dir}")
  # Chunking and compression are read from the array's own .zarray file, so a
  # checkpoint rechunked after writing still opens.
  metadata = {"shape": list(spec["metadata"]["shape"])}
  match = re.fullmatch(r"gs://([^/]+)/?(.*)", ckpt_dir, re.DOTALL)
  if match:
    prefix = match.group(2).rstrip("/")
    kvstore = {
      "driver": "gcs",
      "bucket": match.group(1),
      "path": f"{prefix}/{relative}" if prefix else relative,
    }
  else:
    kvstore = {"driver": "file", "path": os.path.join(ckpt_dir, relative)}
  return {
    "driver": spec["driver"],
    "kvstore": kvstore,
    "metadata": metadata,
    **({"dtype": spec["dtype"]} if "dtype" in spec else {}),
  }


def _legacy_target_specs(msgpack_path: str) -> tuple[dict[str, Any], str]:
  """The flat ``target`` entries (specs or inline arrays), and their dir."""
  contents = flax.serialization.msgpack_restore(
    epath.Path(msgpack_path).read_bytes()
  )
  if not isinstance(contents, Mapping):
    raise CheckpointError(f"not a T5X msgpack checkpoint: {msgpack_path}")
  # Version 0 files (early flax) hold the optimizer state dict at top level.
  optimizer = contents.get("optimizer", contents)
  if "target" not in optimizer:
    raise CheckpointError(
      f"T5X checkpoint has no 'target' parameters: {msgpack_path} "
      f"(top-level keys {sorted(optimizer)})"
    )
  flat = _flatten(optimizer["target"], is_leaf=_is_ts_spec)
  ckpt_dir = os.path.dirname(os.fspath(msgpack_path))
  if msgpack_path.startswith("gs://"):
    ckpt_dir = msgpack_path.rsplit("/", 1)[0]
  return flat, ckpt_dir


def _read_legacy_target(msgpack_path: str) -> dict[str, Any]:
  """Reads the ``target`` subtree of a legacy T5X checkpoint as numpy."""
  flat, ckpt_dir = _legacy_target_specs(msgpack_path)

  async def read_all() -> list[np.ndarray]:
    async def read_one(value: Any) -> np.ndarray:
      if not _is_ts_spec(value):
        return np.asarray(value)
      store = await ts.open(_absolute_spec(value, ckpt_dir), open=True)
      return np.asarray(await store.read())

    return await asyncio.gather(*(read_one(v) for v in flat.values()))

  arrays = _run(read_all())
  return dict(zip(flat, arrays, strict=True))


def orbax_tree(item_dir: str | os.PathLike[str]) -> Mapping[str, Any]:
  """The tree metadata of an orbax item (shapes and dtypes, no arrays)."""
  # The handler reads only the item's tree metadata (the checkpointer would
  # also look for, and warn about, step-level metadata an item dir lacks).
  metadata = ocp.PyTreeCheckpointHandler().metadata(epath.Path(item_dir))
  return getattr(metadata, "tree", metadata)


def _target_key(tree: Mapping[str, Any], item_dir: str) -> str | None:
  if "target" in tree:
    return "target"
  if "encoder" in tree or "decoder" in tree:
    return None  # a bare parameter tree
  raise CheckpointError(
    f"orbax checkpoint has neither 'target' nor 'params': {item_dir} "
    f"(top-level keys {sorted(tree)})"
  )


def read_orbax_subtree(
  item_dir: str | os.PathLike[str], key: str | None
) -> dict[str, np.ndarray]:
  """Reads one subtree of an orbax item, flat, as host numpy arrays.

  Only that subtree is read: an optimizer state beside it is never
  materialized.

  Args:
    item_dir: the orbax item directory.
    key: the top-level key of the subtree; None reads the whole tree.

  Returns:
    ``{"a/b/c": array}``.
  """
  # orbax refuses relative paths.
  item_dir = str(absolute_path(item_dir))
  tree = orbax_tree(item_dir)
  sub = tree[key] if key else tree
  restore_args = jax.tree.map(
    lambda _: ocp.RestoreArgs(restore_type=np.ndarray), dict(sub)
  )
  item = jax.tree.map(lambda _: 0, dict(sub))
  if key:
    restore_args, item = {key: restore_args}, {key: item}
  restored = ocp.PyTreeCheckpointer().restore(
    item_dir,
    args=ocp.args.PyTreeRestore(
      item=item, restore_args=restore_args, partial_restore=True
    ),
  )
  restored = restored[key] if key else restored
  return {k: np.asarray(v) for k, v in _flatten(restored).items()}


def read_ref(ref: CheckpointRef) -> dict[str, np.ndarray]:
  """Reads the parameters of one T5X checkpoint, flat, on the host.

  Args:
    ref: a legacy msgpack file, or an orbax item with T5X's ``target``
      tree (or a bare parameter tree).

  Returns:
    ``{"encoder/layers_0/attention/query/kernel": array, ...}``.

  Raises:
    CheckpointError: no parameters in it.
  """
  start = time.time()
  if ref.format == LEGACY:
    flat = _read_legacy_target(ref.path)
  else:
    item_dir = str(absolute_path(ref.path))
    flat = read_orbax_subtree(
      item_dir, _target_key(orbax_tree(item_dir), item_dir)
    )
  logging.info(
    "Read %d parameters from %s (%s) in %.1fs",
    len(flat),
    ref.path,
    ref.format,
    time.time() - start,
  )
  return flat


def read_params(
  path: str | os.PathLike[str], step: int | None = None
) -> dict[str, np.ndarray]:
  """Reads a T5X checkpoint's parameters, flat, without a model to compare to.

  Args:
    path: see ``resolve_checkpoint``.
    step: see ``resolve_checkpoint``.

  Returns:
    ``{"encoder/layers_0/attention/query/kernel": array, ...}`` on the host.

  Raises:
    CheckpointError: no readable checkpoint at ``path``.
  """
  return read_ref(resolve_checkpoint(path, step))


# ---------------------------------------------------------------------------
# Matching against the model.


def _flatten(tree: Mapping[str, Any], is_leaf=None) -> dict[str, Any]:
  """Flattens a nested dict to ``"a/b/c"`` names (T5X's naming)."""
  out: dict[str, Any] = {}

  def visit(prefix: str, node: Any) -> None:
    if isinstance(node, Mapping) and not (is_leaf and is_leaf(node)):
      for k, v in node.items():
        visit(f"{prefix}/{k}" if prefix else str(k), v)
    else:
      out[prefix] = node

  visit("", tree)
  return out


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  return flax.traverse_util.unflatten_dict(
    {tuple(k.split("/")): v for k, v in flat.items()}
  )


def match_params(
  loaded: Mapping[str, np.ndarray],
  reference: Params,
  *,
  source: str = "checkpoint",
  fallback: Params | None = None,
) -> tuple[dict[str, Any], ParamReport]:
  """Fits flat checkpoint arrays to a model's parameter tree.

  Args:
    loaded: flat ``name -> array`` as from ``read_params``.
    reference: the model's parameters, or their shapes (``jax.eval_shape`` of
      ``init``); each loaded array is cast to the reference's dtype.
    source: where ``loaded`` came from, for messages.
    fallback: parameters to use for names the checkpoint lacks (for instance
      a freshly initialized model); without it a missing name is an error.

  Returns:
    The nested parameter tree shaped like ``reference`` and the report.

  Raises:
    CheckpointError: a shape differs (different model size) or, without a
      fallback, a parameter is missing.
  """
  report = _check_fit(loaded, reference, source, fallback is not None)
  ref_flat = _flatten(reference)
  fallback_flat = _flatten(fallback) if fallback is not None else {}
  out = {}
  for name, want in ref_flat.items():
    value = loaded[name] if name in loaded else fallback_flat[name]
    out[name] = np.asarray(value).astype(want.dtype)
  return _unflatten(out), report


def _check_fit(
  loaded: Mapping[str, Any], reference: Params, source: str, fallback: bool
) -> ParamReport:
  """Checks flat `loaded` (arrays or shapes) against the model's names.

  Raises `CheckpointError` on a shape mismatch, and on missing names unless
  there is a `fallback`; see `match_params`.
  """
  ref_flat = _flatten(reference)
  report = ParamReport(
    missing=[k for k in ref_flat if k not in loaded],
    extra=sorted(k for k in loaded if k not in ref_flat),
  )
  for name, want in ref_flat.items():
    if name in loaded and tuple(loaded[name].shape) != tuple(want.shape):
      raise CheckpointError(
        f"{source} does not fit this model (different size?): parameter "
        f"{name} has shape {tuple(loaded[name].shape)} in the checkpoint but "
        f"{tuple(want.shape)} in the model"
      )
  if report.missing and not fallback:
    shown = ", ".join(report.missing[:5])
    more = (
      f" and {len(report.missing) - 5} more" if len(report.missing) > 5 else ""
    )
    raise CheckpointError(
      f"{source} lacks {len(report.missing)} model parameter(s): {shown}{more}"
    )
  if report.missing:
    logging.warning(
      "Parameters missing from %s, kept from the fallback: %s",
      source,
      report.missing,
    )
  if report.extra:
    logging.warning(
      "Parameters in %s unused by the model: %s", source, report.extra
    )
  return report


def load_ref(
  ref: CheckpointRef,
  reference: Params,
  *,
  source: str,
  fallback: Params | None = None,
  shardings: Any = None,
  read: Callable[[CheckpointRef], Mapping[str, np.ndarray]] = read_ref,
) -> dict[str, Any]:
  """Restores a model's parameters from one found checkpoint.

  Args:
    ref: the checkpoint.
    reference: the model's parameters or their shapes.
    source: where the checkpoint came from, for messages.
    fallback: parameters for names the checkpoint lacks (see
      ``match_params``).
    shardings: optional tree of ``jax.sharding.Sharding`` like ``reference``;
      the arrays are placed with them, and each host reads from a legacy
      checkpoint only the slices its devices hold.
    read: reads ``ref``'s parameters, flat (default: T5X's formats).

  Returns:
    The parameter tree (numpy, or jax arrays when ``shardings`` is given).

  Raises:
    CheckpointError: see ``match_params``.
  """
  if shardings is not None and ref.format == LEGACY:
    return _load_legacy_sharded(
      ref.path, reference, shardings, source, fallback
    )
  params, _ = match_params(
    read(ref), reference, source=source, fallback=fallback
  )
  if shardings is not None:
    params = jax.tree.map(jax.device_put, params, shardings)
  return params


def load_params(
  path: str | os.PathLike[str],
  reference: Params,
  *,
  step: int | None = None,
  fallback: Params | None = None,
  shardings: Any = None,
) -> dict[str, Any]:
  """Restores a model's parameters from a T5X checkpoint.

  `dss_jax.checkpoints.load_params` takes this project's checkpoints too.

  Args:
    path: see ``resolve_checkpoint``; local or ``gs://``.
    reference: the model's parameters or their shapes.
    step: the step to take from a model directory (default: latest).
    fallback: parameters for names the checkpoint lacks (see
      ``match_params``).
    shardings: optional tree of ``jax.sharding.Sharding`` like ``reference``;
      the arrays are placed with them.

  Returns:
    The parameter tree (numpy, or jax arrays when ``shardings`` is given).

  Raises:
    CheckpointError: see ``resolve_checkpoint`` and ``match_params``.
  """
  return load_ref(
    resolve_checkpoint(path, step),
    reference,
    source=f"checkpoint {path}",
    fallback=fallback,
    shardings=shardings,
  )


def _load_legacy_sharded(
  msgpack_path: str,
  reference: Params,
  shardings: Any,
  source: str,
  fallback: Params | None,
) -> dict[str, Any]:
  """Builds each parameter from the slices this host's devices hold.

  `jax.make_array_from_callback` asks for the index of every local device;
  each distinct index is read once, as a TensorStore slice, so a host reads
  only its devices' part of a sharded parameter.
  """
  start = time.time()
  flat, ckpt_dir = _legacy_target_specs(msgpack_path)

  async def open_all() -> list[Any]:
    async def open_one(value: Any) -> Any:
      if not _is_ts_spec(value):
        return np.asarray(value)
      return await ts.open(_absolute_spec(value, ckpt_dir), open=True)

    return await asyncio.gather(*(open_one(v) for v in flat.values()))

  stores = dict(zip(flat, _run(open_all()), strict=True))
  _check_fit(stores, reference, source, fallback is not None)
  ref_flat = _flatten(reference)
  sharding_flat = _flatten(
    shardings, is_leaf=lambda x: not isinstance(x, Mapping)
  )
  fallback_flat = _flatten(fallback) if fallback is not None else {}
  out = {}
  for name, want in ref_flat.items():
    sharding = sharding_flat[name]
    if name not in stores:
      value = np.asarray(fallback_flat[name]).astype(want.dtype)
      out[name] = jax.device_put(value, sharding)
      continue
    out[name] = jax.make_array_from_callback(
      tuple(want.shape),
      sharding,
      _slice_reader(stores[name], np.dtype(want.dtype)),
    )
  logging.info(
    "Read this host's slices of %d parameters from %s in %.1fs",
    len(out),
    msgpack_path,
    time.time() - start,
  )
  return _unflatten(out)


def _slice_reader(store: Any, dtype: np.dtype) -> Any:
  """A callback reading (once per distinct index) slices of one array."""
  cache: dict[Any, np.ndarray] = {}

  def read(index: tuple[slice, ...]) -> np.ndarray:
    key = tuple((s.start, s.stop, s.step) for s in index)
    if key not in cache:
      if isinstance(store, np.ndarray):
        cache[key] = store[index].astype(dtype)
      else:
        cache[key] = np.asarray(store[index].read().result()).astype(dtype)
    return cache[key]

  return read


# ---------------------------------------------------------------------------
# Writing the legacy format.


def _chunk_shape(shape: Sequence[int], itemsize: int) -> list[int]:
  """The full shape, halved along its largest divisible axis to <= 64 MiB."""
  chunks = list(shape)
  while chunks and int(np.prod(chunks)) * itemsize > _CHUNK_BYTES:
    axis = int(np.argmax(chunks))
    size = chunks[axis]
    divisor = next((d for d in range(2, size + 1) if size % d == 0), size)
    if divisor == size and size == 1:
      break
    chunks[axis] = size // divisor
  return [max(int(c), 1) for c in chunks]


def save_t5x_checkpoint(
  params: Params,
  directory: str | os.PathLike[str],
  step: int,
  *,
  dtype: Any = None,
) -> str:
  """Writes parameters as a T5X legacy checkpoint ``<directory>/checkpoint_<step>``.

  The layout is the one T5X's ``checkpoints.Checkpointer.save`` produces: one
  gzip-compressed zarr array per parameter in a directory named
  ``target.<path with dots>``, and a msgpack ``checkpoint`` file holding
  ``{"version": 3, "optimizer": {"target": <spec per parameter>, "state":
  {"step": step}}}``. No optimizer state is written: T5X's eval and infer
  restore an ``InferenceState`` that needs only ``target`` and ``step``.

  Args:
    params: the parameter tree (T5X names).
    directory: the T5X model directory (local or ``gs://``).
    step: the step number.
    dtype: optional dtype to store, e.g. ``"bfloat16"``.

  Returns:
    The step directory written.
  """
  directory = os.fspath(directory)
  final_dir = f"{directory.rstrip('/')}/checkpoint_{int(step)}"
  remote = final_dir.startswith("gs://")
  if epath.Path(final_dir).exists():
    raise CheckpointError(f"checkpoint already exists: {final_dir}")
  # Locally write to a temporary name and rename at the end, as T5X does, so
  # a reader never sees half a checkpoint; T5X's step listing ignores it.
  work_dir = final_dir if remote else f"{final_dir}.tmp-{int(time.time())}"
  epath.Path(work_dir).mkdir(parents=True, exist_ok=True)
  flat = _flatten(params)

  def spec_for(name: str, arr: np.ndarray) -> dict[str, Any]:
    relative = f"target.{name.replace('/', '.')}"
    kvstore: dict[str, Any] = {"driver": "file", "path": relative}
    if remote:
      kvstore = {"driver": "gcs", "bucket": _DUMMY_BUCKET, "path": relative}
    return {
      "driver": "zarr",
      "dtype": np.dtype(arr.dtype).name,
      "kvstore": kvstore,
      "metadata": {
        "compressor": {"id": "gzip"},
        "shape": list(arr.shape),
        "chunks": _chunk_shape(arr.shape, arr.dtype.itemsize),
      },
    }

  arrays = {}
  for name, value in flat.items():
    arr = np.asarray(jax.device_get(value))
    if dtype is not None:
      arr = arr.astype(dtype)
    arrays[name] = arr
  specs = {name: spec_for(name, arr) for name, arr in arrays.items()}

  async def write_all() -> None:
    async def write_one(name: str) -> None:
      store = await ts.open(
        _absolute_spec(specs[name], work_dir)
        | {"metadata": specs[name]["metadata"]},
        create=True,
        open=True,
      )
      await store.write(arrays[name])

    await asyncio.gather(*(write_one(n) for n in arrays))

  _run(write_all())
  # Specs go into the msgpack normalized the way TensorStore prints them,
  # exactly as T5X serializes its ts.Spec objects.
  target = {n: ts.Spec(s).to_json() for n, s in specs.items()}
  contents = {
    "version": _T5X_VERSION,
    "optimizer": {
      "target": _unflatten(target),
      "state": {"step": np.asarray(int(step), np.int32)},
    },
  }
  (epath.Path(work_dir) / _MSGPACK_FILE).write_bytes(
    flax.serialization.msgpack_serialize(contents)
  )
  if not remote:
    os.replace(work_dir, final_dir)
  logging.info("Wrote T5X checkpoint %s", final_dir)
  return final_dir
