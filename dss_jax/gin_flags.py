"""T5X-style gin command lines, shared by every gin-driven entry point.

    python -m dss_jax.train --gin_file=tiny.gin --gin.TRAIN_STEPS=100

`--gin_file` (repeatable), `--gin_bindings` (repeatable), `--gin_search_paths`
and T5X's shorthand `--gin.NAME=value` for `--gin_bindings=NAME=value`. Gin
files are looked up in the current folder, `gin_configs/` (the checkout's, or
the copy an installed wheel ships), the folder that holds it (so
`gin_configs/tiny.gin` works installed too) and every `--gin_search_paths`
folder. `--tfds_data_dir` (T5X's flag) is the TFDS data dir the tasks read.

Several processes (hosts without a cluster manager; Cloud TPU VMs need
none of these) join one JAX job with T5X's flags:

    python -m dss_jax.train --coordinator_address=10.0.0.2:1234 \
      --process_count=2 --process_index=0 ...

A process that stops on an error tells the others through the job's
coordination service: it prints its `error:` line, and every other process
prints one line naming it and exits with status 1 within about a second
(`partitioning.JobFate`). `--heartbeat_timeout_seconds` (JAX's default 100)
bounds how long the others wait for a process that dies without a word
(kill -9, a lost machine); they then exit non-zero.

`--task_cards=PATH[:PATH...]` (repeatable) registers cards of your own, as
`DSS_TASK_CARDS` does: it is added to that variable before the gin files
(whose `import dss_jax.seqio_tasks` registers the tasks) are parsed.
"""

from __future__ import annotations

# gin's include lookup calls importlib.util without importing it.
import importlib.util  # noqa: F401
import logging as std_logging
import os
import re
import sys
import tokenize
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import gin
from absl import flags, logging
from gin import resource_reader

from dss_jax import cards, cli, errors, host, resources

if TYPE_CHECKING:
  from dss_jax.models import t5

# `gin_configs/` of a checkout, or the copy a wheel ships.
GIN_CONFIGS_DIR = resources.gin_configs_dir()


def define_gin_flags(what: str = "gin files to parse, in order") -> None:
  """Defines the gin flags unless they exist.

  Entry points call this before `app.run`, so a process that imports several
  of them (tests, notebooks, `dss-jax`) never defines a flag twice.

  Args:
    what: the help text of `--gin_file`.
  """
  if "gin_file" not in flags.FLAGS:
    flags.DEFINE_multi_string("gin_file", [], f"Gin files: {what}.")
  if "gin_bindings" not in flags.FLAGS:
    flags.DEFINE_multi_string(
      "gin_bindings", [], "Gin bindings, applied after the files."
    )
  if "gin_search_paths" not in flags.FLAGS:
    flags.DEFINE_list(
      "gin_search_paths", [], "Folders to look for gin files and includes."
    )


def define_task_cards_flag() -> None:
  """Defines `--task_cards` unless it exists."""
  if "task_cards" not in flags.FLAGS:
    flags.DEFINE_multi_string(
      "task_cards",
      [],
      "Cards of your own: card files or folders of *.yaml cards, "
      "':'-separated or repeated; added to $DSS_TASK_CARDS.",
    )


def apply_task_cards() -> None:
  """Adds `--task_cards` to `$DSS_TASK_CARDS`; registers them if late.

  Raises:
    errors.UserError: a path that does not exist or a card that fails to
      load (file and line).
  """
  values = flags.FLAGS.task_cards
  if not values:
    return
  cards.add_task_cards(values, "--task_cards")
  if "dss_jax.seqio_tasks" in sys.modules:
    # Imported before the flag was read (a caller's own import): register
    # now what the import would have.
    sys.modules["dss_jax.seqio_tasks"].register_user_cards()


def define_distributed_flags() -> None:
  """Defines T5X's multi-process flags unless they exist."""
  if "coordinator_address" in flags.FLAGS:
    return
  flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0, to join a multi-process JAX job (not needed "
    "on Cloud TPU VMs).",
  )
  flags.DEFINE_integer("process_count", None, "Processes in the job.")
  flags.DEFINE_integer("process_index", None, "This process's index.")
  flags.DEFINE_integer(
    "heartbeat_timeout_seconds",
    None,
    "Seconds after which a silent process counts as dead and the others "
    "stop with an error (default: JAX's 100).",
  )


def initialize_distributed_from_flags() -> bool:
  """Joins the multi-process job the flags (or the cluster) describe.

  Returns:
    True if `jax.distributed` was initialized.
  """
  # Imported here: JAX starts after the host settings of `run`.
  from dss_jax import partitioning

  f = flags.FLAGS
  given = [
    v is not None
    for v in (f.coordinator_address, f.process_count, f.process_index)
  ]
  if any(given) and not all(given):
    print(
      "error: --coordinator_address, --process_count and --process_index go "
      "together: set all three or none",
      file=sys.stderr,
    )
    sys.exit(2)
  return partitioning.initialize_distributed(
    f.coordinator_address,
    f.process_count,
    f.process_index,
    heartbeat_timeout_seconds=f.heartbeat_timeout_seconds,
  )


def define_tfds_flag() -> None:
  """Defines T5X's `--tfds_data_dir` unless it exists."""
  if "tfds_data_dir" not in flags.FLAGS:
    flags.DEFINE_string(
      "tfds_data_dir",
      None,
      "TFDS data dir the tasks read (dss_annotated/<card>_<source>), local "
      "or gs://; as T5X's flag. Default: $TFDS_DATA_DIR, else "
      "~/tensorflow_datasets.",
    )


def apply_tfds_data_dir() -> None:
  """Points the SeqIO tasks at `--tfds_data_dir`, as T5X's train.py does.

  Runs before the gin files import `dss_jax.seqio_tasks`, whose registration
  scans that folder for built annotations.
  """
  data_dir = flags.FLAGS.tfds_data_dir
  if not data_dir:
    return
  # Imported here: seqio brings TensorFlow, which `--help` does not need.
  import seqio

  seqio.set_tfds_data_dir_override(data_dir)
  # Anything that reads TFDS's own default (a TFDS build, a subprocess).
  os.environ["TFDS_DATA_DIR"] = data_dir


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
  """Turns T5X's `--gin.NAME=value` into `--gin_bindings=NAME = value`."""
  out = []
  for arg in argv:
    if arg.startswith("--gin.") and "=" in arg:
      name, value = arg[len("--gin.") :].split("=", 1)
      out.append(f"--gin_bindings={name} = {value}")
    else:
      out.append(arg)
  return out


def _package_file_exists(path: str) -> bool:
  """gin's check for a gin file inside a Python package, made safe.

  gin asks Python for a package named like a gin file's folder. A plain
  folder of that name in the working directory (`runs/`, `models/`) is a
  namespace package without a file, and gin's check then raises TypeError
  instead of answering no, so `--gin_file=runs/eval.gin` (or an include of
  `models/...`) crashed in such a folder.
  """
  root = std_logging.getLogger()
  root.addFilter(_not_gin_search_lines)
  try:
    return resource_reader.system_path_file_exists(path)
  except TypeError:
    return False
  finally:
    root.removeFilter(_not_gin_search_lines)


def _not_gin_search_lines(record: std_logging.LogRecord) -> bool:
  """Drops gin's lines about each place it looked for a gin file.

  Each lookup logged an INFO line, and an ERROR line (`Path not found:
  tiny.gin`) for every place a file that exists elsewhere is not: four
  lines for `--gin_file=tiny.gin` on a run that found it.
  """
  return not (
    record.module == "resource_reader"
    and os.path.dirname(record.pathname).endswith("gin")
  )


gin.config._FILE_READERS[:] = [
  (reader, _package_file_exists)
  if exists is resource_reader.system_path_file_exists
  else (reader, exists)
  for reader, exists in gin.config._FILE_READERS
]


def parse_gin(
  files: Sequence[str],
  bindings: Sequence[str],
  search_paths: Sequence[str] = (),
  finalize: bool = False,
) -> None:
  """Parses gin files, then bindings, with `gin_configs/` searchable.

  Args:
    files: gin files, in order.
    bindings: bindings applied after the files.
    search_paths: more folders to find gin files and their includes in.
    finalize: lock the config. Eval jobs leave it open, since modules they
      import later (vocabularies, task registries) still declare
      configurables.

  Raises:
    errors.UserError: a gin file is missing or does not parse, or a binding
      names an unknown configurable or parameter.
  """
  # The search path T5X is given too, so `gin_configs/...` names (as the
  # docs write them) resolve from an installed package as from a checkout.
  folders = [
    os.getcwd(),
    str(GIN_CONFIGS_DIR),
    str(resources.gin_search_path()),
    *search_paths,
  ]
  for path in folders:
    gin.add_config_file_search_path(path)
  for file in files:
    # gin logs every folder it tried before raising; say it in one line.
    remote = "://" in file  # gin reads gs:// files through its readers
    if not remote and not any(
      os.path.isfile(os.path.join(d, file)) for d in folders
    ):
      raise errors.MissingFileError(
        f"--gin_file={file}: no such gin file here, in gin_configs/ or in "
        "--gin_search_paths; check the name"
      )
  try:
    gin.parse_config_files_and_bindings(
      list(files), list(bindings), finalize_config=False
    )
  except errors.UserError as e:
    # Raised by a module a gin file imports (a card of DSS_TASK_CARDS that
    # does not load): its own message says what to fix.
    raise errors.UserError(errors.one_line(e)) from e
  except (OSError, SyntaxError, ValueError, tokenize.TokenError) as e:
    where = ""
    if isinstance(e, SyntaxError) and e.filename:
      where = f" in {e.filename}"
    bare = _bare_word_binding(bindings)
    if bare and "malformed node or string" in str(e):
      # ast's words for an unquoted string say nothing a user can act on.
      name, value = bare
      raise errors.UserError(
        f"gin binding {name}={value}: a string value needs quotes: "
        f"--gin.{name}='\"{value}\"'"
      ) from e
    raise errors.UserError(
      f"gin{where}: {errors.one_line(e)}; check --gin_file and "
      "--gin_bindings (--gin.NAME=value)"
    ) from e
  try:
    if finalize:
      gin.finalize()  # its hooks refuse macros left REQUIRED
    else:
      # The same check for a config left open: a REQUIRED macro left unset
      # would otherwise reach the job as gin's placeholder object.
      gin.config.find_missing_overrides_hook(gin.config._CONFIG)
  except ValueError as e:
    raise _required_error(e) or e from None


def _bare_word_binding(bindings: Sequence[str]) -> tuple[str, str] | None:
  """The first binding whose value is a bare word (an unquoted string)."""
  for binding in bindings:
    name, _, value = binding.partition("=")
    value = value.strip()
    if re.fullmatch(r"[A-Za-z_][\w.\-/]*", value) and value not in (
      "None",
      "True",
      "False",
    ):
      return name.strip(), value
  return None


def _required_error(error: ValueError) -> errors.UserError | None:
  """The user error of a REQUIRED gin macro left unset, if that is it."""
  text = str(error)
  if "`%gin.REQUIRED` but not subsequently overridden" not in text:
    return None
  name = text.split()[0].removesuffix("/macro.value")
  return errors.UserError(
    f"gin: {name} is REQUIRED; set it with --gin.{name}=..."
  )


def call_configured(fn: Callable[[], Any], configure: bool = True) -> Any:
  """Calls `fn` with its gin bindings; an unset REQUIRED macro is one line.

  Args:
    fn: a gin configurable (or, with `configure=False`, any function).
    configure: call it through gin's bindings.

  Returns:
    What `fn` returns.

  Raises:
    errors.UserError: the gin files leave a REQUIRED macro unset, or none
      of them registers `fn`.
  """
  try:
    call = gin.get_configurable(fn) if configure else fn
  except ValueError as e:
    raise errors.UserError(
      f"no gin file configures {getattr(fn, '__name__', fn)}; pass one "
      "with --gin_file (see the command's docstring)"
    ) from e
  try:
    return call()
  except ValueError as e:
    raise _required_error(e) or e from None


def model_from_gin() -> t5.Transformer:
  """Builds the model bound to gin's MODEL macro (a model gin file sets it).

  Raises:
    ValueError: no MODEL macro has been parsed.
  """
  try:
    ref = gin.query_parameter("%MODEL")
  except ValueError as e:
    raise errors.UserError(
      "no MODEL in the gin config; pass a model gin file, e.g. "
      "--gin_file=models/t5_1_1_base.gin"
    ) from e
  if isinstance(ref, gin.config.ConfigurableReference):
    return ref.scoped_configurable_fn()
  return ref


def parse_gin_flags(finalize: bool = False) -> None:
  """Parses the gin flags of this process's command line."""
  parse_gin(
    flags.FLAGS.gin_file,
    flags.FLAGS.gin_bindings,
    flags.FLAGS.gin_search_paths,
    finalize=finalize,
  )


def call_with_gin_flags(
  fn: Callable[[], Any],
  *,
  finalize: bool = False,
  configure: bool = True,
  check: Callable[[], None] | None = None,
) -> Any:
  """Parses this command line's gin flags, then calls `fn` (in `main`).

  Args:
    fn: a gin configurable (or, with `configure=False`, any function).
    finalize: lock the config (see `parse_gin`).
    configure: call `fn` through gin's bindings.
    check: called once the flags are parsed, before `fn` (an entry point's
      own check of the bindings).

  Returns:
    What `fn` returns.

  Raises:
    errors.UserError: a bad gin file or binding, a REQUIRED macro left
      unset, or a user error of `fn` (the runner prints it in one line).
  """
  parse_gin_flags(finalize=finalize)
  if check is not None:
    check()
  logging.info("gin config:\n%s", gin.config_str())
  return call_configured(fn, configure)


def run(
  main: Callable[[Sequence[str]], None], what: str, *, join_job: bool = True
) -> None:
  """`app.run(main)` with the gin flags defined and `--gin.X=` accepted.

  The runner of every entry point that reads gin (`train`, `eval`, `infer`,
  `export`): the entry point defines its own flags, if any, under its
  `if __name__ == "__main__":` and hands its absl `main` here; `main` calls
  `call_with_gin_flags`.

  Args:
    main: the entry point's absl `main`.
    what: the help text of `--gin_file`.
    join_job: before `main`, join the multi-process job that the
      distributed flags or the cluster environment describe (if any).
  """
  host.keep_freed_memory()
  host.add_xla_flag_defaults()
  define_gin_flags(what)
  define_task_cards_flag()
  define_tfds_flag()
  if join_job:
    define_distributed_flags()

  def main_on_all_processes(argv: Sequence[str]) -> None:
    apply_tfds_data_dir()

    def job() -> None:
      apply_task_cards()
      main(argv)

    if not join_job or not initialize_distributed_from_flags():
      job()
      return
    # Imported here: JAX starts after the host settings above.
    from dss_jax import partitioning

    # One failing process ends every process of the job (see JobFate).
    partitioning.run_as_one_job(job, flags.FLAGS.heartbeat_timeout_seconds)

  cli.run(main_on_all_processes, rewrite_gin_args)
