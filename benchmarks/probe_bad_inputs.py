r"""Runs bad inputs and faults through every entry point; counts the verdicts.

    python benchmarks/probe_bad_inputs.py --paper_data_dir=path/to/dss_paper
    python benchmarks/probe_bad_inputs.py --faults   # + corrupt checkpoints,
                                                     #   signals (trains twice)
    python benchmarks/probe_bad_inputs.py --fast     # the smoke subset (CI)

Each probe is one real subprocess (`python -m dss_jax.<entry point> ...`)
with a per-probe timeout. Its verdict comes from what was observed, never
from what was meant:

  handled      a fault the command must survive: exit status and output as
               the probe's check requires (e.g. resumed from an older step)
  one_line     a user error: exit status 2, the last stderr line starts with
               "error:", exactly one such line, no traceback
  traceback    "Traceback" on stderr
  silent       exit status 0 where an error was due, or a check that failed
               on a run that said it succeeded (a silent wrong result)
  unclear      any other failure (e.g. exit status 1 without an error line)
  hang         the timeout passed

Prints a table of every probe and the counts by verdict; the exit status is
1 when any probe is a traceback, silent, unclear or hang.

A case is one `Probe(...)` entry in one of the `*_probes` lists. A probe
that needs a teacher server names the fake server's settings
(`server={...}`, `dss_jax.teacher.testing.FakeTeacherServer`): one is
started for it and `{server}` in its argv and env becomes its URL. A probe
with `processes=2` runs as one multi-process JAX job (T5X's flags added,
`{index}` in env the process index) and its check sees every process.
`fast=True` puts a probe in the smoke subset that `--fast` runs
(tests/probe_smoke_test.py runs it in the test suite, in about a minute).

Besides bad flags, files and servers, the probe reruns work after a change
(an edited card, a changed gold label or released file, another teacher
sample count, task, split or example count): a rerun must redo the work or
refuse in one line naming what changed, and one that reuses the old result
is `silent`. It inserts a row into a card without an id field (every
rationale must stay its row's own), reads damaged or foreign checkpoints,
vocabularies and export folders through eval, infer and export, reads
hand-written results CSVs, and cuts inputs and labels (counted; a cut label
is an error). The probes that train or evaluate need --paper_data_dir.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
VERDICTS = ("handled", "one_line", "traceback", "silent", "unclear", "hang")


@dataclasses.dataclass
class Probe:
  """One bad input or fault.

  Attributes:
    name: what is wrong, in a few words.
    argv: the command, after `python -m`.
    check: None for a user error (want exit status 2 and one line), else a
      function of the finished process that says whether the command
      handled the fault correctly.
    env: extra environment variables.
    setup: runs before the command (writes the bad file, corrupts a step).
    server: settings of a fake teacher server to run during the probe.
    processes: > 1 runs the command as a multi-process JAX job; `check`
      then gets the list of every process's result.
    fast: part of the smoke subset (`--fast`).
  """

  name: str
  argv: list[str]
  check: Callable[[Any], bool] | None = None
  env: dict[str, str] = dataclasses.field(default_factory=dict)
  setup: Callable[[], None] | None = None
  server: dict[str, Any] | None = None
  processes: int = 1
  fast: bool = False


def verdict(probe: Probe, proc: Any) -> str:
  """Classifies one finished probe from its exit status and stderr.

  `proc` is a `CompletedProcess`, a list of them (`processes` > 1) or None
  (the timeout passed).
  """
  if proc is None:
    return "hang"
  if isinstance(proc, list):
    if any("Traceback (most recent" in p.stderr for p in proc):
      return "traceback"
    if probe.check(proc):
      return "handled"
    return "silent" if all(p.returncode == 0 for p in proc) else "unclear"
  if "Traceback (most recent call last)" in proc.stderr:
    return "traceback"
  lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
  errors = [ln for ln in lines if ln.startswith("error:")]
  if probe.check is not None:
    if probe.check(proc):
      return "handled"
    return "silent" if proc.returncode == 0 else "unclear"
  if proc.returncode == 0:
    return "silent"
  if (
    proc.returncode == 2
    and len(errors) == 1
    and lines
    and lines[-1].startswith("error:")
  ):
    return "one_line"
  return "unclear"


def run_probe(
  probe: Probe,
  base_env: dict[str, str],
  cwd: pathlib.Path,
  timeout: float,
  log_dir: pathlib.Path | None = None,
) -> tuple[str, str, float]:
  """Runs one probe; returns (verdict, the line that shows why, seconds).

  With `log_dir`, the stderr of a probe that did not pass is kept there.
  """
  if probe.setup:
    probe.setup()
  start = time.monotonic()
  with _teacher_server(probe.server) as url:
    fill = lambda text: text.replace("{server}", url)  # noqa: E731
    argv = [fill(a) for a in probe.argv]
    env = {**base_env, **{k: fill(v) for k, v in probe.env.items()}}
    if probe.processes > 1:
      proc = _run_job(argv, env, probe.processes, cwd, timeout)
    else:
      try:
        proc = subprocess.run(
          [sys.executable, "-m", *argv],
          cwd=cwd,
          env=env,
          capture_output=True,
          text=True,
          timeout=timeout,
        )
      except subprocess.TimeoutExpired:
        proc = None
  seconds = time.monotonic() - start
  result = verdict(probe, proc)
  procs = proc if isinstance(proc, list) else [proc]
  if log_dir and proc is not None and result not in ("handled", "one_line"):
    log_dir.mkdir(parents=True, exist_ok=True)
    name = "".join(c if c.isalnum() else "_" for c in probe.name)
    (log_dir / f"{name}.stderr").write_text(
      "\n".join(f"--- process {i}\n{p.stderr}" for i, p in enumerate(procs))
    )
  if proc is None:
    shown = f"no exit within {timeout:.0f}s"
  else:
    shown = "; ".join(_last_line(p) for p in procs)
  return result, shown, seconds


def _last_line(proc: subprocess.CompletedProcess) -> str:
  lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
  return f"[{proc.returncode}] " + (lines[-1] if lines else "(no stderr)")


@contextlib.contextmanager
def _teacher_server(settings: dict[str, Any] | None):
  """A fake teacher server with `settings` for one probe (URL), or ""."""
  if settings is None:
    yield ""
    return
  sys.path.insert(0, str(REPO))
  from dss_jax.teacher import testing

  with testing.FakeTeacherServer(**settings) as server:
    yield server.url


def _run_job(
  argv: list[str],
  env: dict[str, str],
  processes: int,
  cwd: pathlib.Path,
  timeout: float,
) -> list[subprocess.CompletedProcess] | None:
  """`argv` as one JAX job of `processes` processes; None if one hangs."""
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
  procs, logs = [], []
  for i in range(processes):
    flags = [
      f"--coordinator_address=127.0.0.1:{port}",
      f"--process_count={processes}",
      f"--process_index={i}",
      "--heartbeat_timeout_seconds=15",
    ]
    # Files, not pipes: a process blocked on a full pipe would hang the job.
    logs.append((tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")))
    procs.append(
      subprocess.Popen(
        [sys.executable, "-m", *argv, *flags],
        cwd=cwd,
        env={k: v.replace("{index}", str(i)) for k, v in env.items()},
        stdout=logs[-1][0],
        stderr=logs[-1][1],
        text=True,
        start_new_session=True,
      )
    )
  deadline = time.monotonic() + timeout
  try:
    for p in procs:
      p.wait(timeout=max(1.0, deadline - time.monotonic()))
  except subprocess.TimeoutExpired:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    return None
  done = []
  for p, (out, err) in zip(procs, logs, strict=True):
    out.seek(0)
    err.seek(0)
    done.append(
      subprocess.CompletedProcess(p.args, p.returncode, out.read(), err.read())
    )
    out.close()
    err.close()
  return done


# ---------------------------------------------------------------------------
# The scratch folder the probes corrupt.


class Scratch:
  """Bad files, written into one temporary folder."""

  def __init__(self, root: pathlib.Path):
    self.root = root

  def path(self, name: str) -> str:
    return str(self.root / name)

  def write(self, name: str, text: str | bytes) -> str:
    path = self.root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
      path.write_bytes(text)
    else:
      path.write_text(text)
    return str(path)

  def card(self, name: str, old: str, new: str, base: str = "cqa") -> str:
    """A copy of a shipped card with one edit."""
    text = (REPO / "tasks" / f"{base}.yaml").read_text()
    assert old in text, (base, old)
    return self.write(f"cards/{name}.yaml", text.replace(old, new, 1))


def _ok_and(words: str) -> Callable[[subprocess.CompletedProcess], bool]:
  def check(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode == 0 and words in proc.stdout + proc.stderr

  return check


def _failed_with_line(code: int, words: str) -> Callable:
  def check(proc: subprocess.CompletedProcess) -> bool:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    return (
      proc.returncode == code
      and bool(lines)
      and lines[-1].startswith("error:")
      and words in lines[-1]
    )

  return check


# ---------------------------------------------------------------------------
# The probes.


def distill_probes(s: Scratch) -> list[Probe]:
  # Each probe its own output folder: one that wrongly started a run must
  # not turn the next probe's error into a stale-run error.
  count = iter(range(1000))

  class _Out(list):
    def __iter__(self):
      yield from ["dss_jax.distill", f"--out_dir={s.path('out')}{next(count)}"]

  d = _Out()
  stale = s.path("stale_out")
  bad_card = s.card("distill_unknown_field", "{question}", "{qestion}")
  probes = [
    Probe("train_steps negative", [*d, "--train_steps=-5"]),
    Probe("train_steps zero", [*d, "--train_steps=0"]),
    Probe("train_steps not a number", [*d, "--train_steps=many"]),
    Probe("fraction above 1", [*d, "--fractions=2"]),
    Probe("fraction zero", [*d, "--fractions=0"]),
    Probe("fraction not a number", [*d, "--fractions=half"]),
    Probe("seed not an integer", [*d, "--seeds=0.5"]),
    Probe("unknown method", [*d, "--methods=prompting"]),
    Probe("unknown model size", [*d, "--model_sizes=huge"]),
    Probe("unknown card", [*d, "--task_card=no_such_card"]),
    Probe("card with unknown template field", [*d, f"--task_card={bad_card}"]),
    Probe("unknown teacher", [*d, "--teacher=oracle"]),
    Probe("learning rate negative", [*d, "--learning_rate=-1"]),
    Probe("batch size zero", [*d, "--batch_size=0"]),
    Probe("rationale rate negative", [*d, "--rationale_rate=-0.5"]),
    Probe("rationale rate infinite", [*d, "--rationale_rate=inf", "--dry_run"]),
    Probe("inputs length zero", [*d, "--inputs_length=0"]),
    Probe("unknown recipe", [*d, "--recipe=paired"]),
    Probe("unknown flag", [*d, "--trian_steps=5"]),
    Probe("stray argument", [*d, "now"]),
    Probe(
      "paper data folder missing",
      [*d, "--task_card=svamp", f"--paper_data={s.path('nowhere')}"],
    ),
    Probe(
      "paper data folder empty",
      [*d, "--task_card=svamp", f"--paper_data={s.path('empty_dir')}"],
      setup=lambda: os.makedirs(s.path("empty_dir"), exist_ok=True),
    ),
    Probe("workers zero", [*d, "--workers=0"]),
    Probe("teacher samples zero", [*d, "--teacher_samples=0"]),
    Probe(
      "vocabulary file missing",
      [*d, f"--student_vocabulary={s.path('no.model')}"],
    ),
    Probe(
      "stale run folder (other steps)",
      [
        "dss_jax.distill",
        f"--out_dir={stale}",
        "--methods=finetune",
        "--model_sizes=demo-xs",
        "--fractions=1",
        "--seeds=0",
        "--train_steps=7",
      ],
      setup=lambda: _stale_run(stale),
    ),
    Probe(
      "run_config.json garbled",
      [
        "dss_jax.distill",
        f"--out_dir={stale}_garbled",
        "--methods=finetune",
        "--model_sizes=demo-xs",
        "--fractions=1",
        "--seeds=0",
      ],
      setup=lambda: _stale_run(f"{stale}_garbled", garble=True),
    ),
  ]
  grid = ["dss_jax.grid_job", f"--out_dir={s.path('grid_out')}"]
  probes += [
    Probe("grid: fraction above 1", [*grid, "--fractions=1.5"]),
    Probe("grid: unknown size", [*grid, "--model_sizes=giant"]),
    Probe("grid: seeds not integers", [*grid, "--seeds=a,b"]),
    Probe("grid: steps negative", [*grid, "--train_steps=-1"]),
    Probe("grid: unknown method", [*grid, "--methods=finetune,zero_shot"]),
  ]
  return probes


def _stale_run(out_dir: str, garble: bool = False) -> None:
  """A finished run folder recorded with 5 train steps (or unreadable)."""
  runs = list(pathlib.Path(out_dir).glob("**/run_config.json"))
  if runs:
    return
  # The layout is grid.run_dir's; the recorded config differs in its steps.
  sys.path.insert(0, str(REPO))
  from dss_jax import grid

  spec = grid.RunSpec("finetune", "demo-xs", 1.0, 0)
  directory = grid.run_dir(pathlib.Path(out_dir), spec)
  directory.mkdir(parents=True, exist_ok=True)
  if garble:
    (directory / grid.CONFIG_FILE).write_text('{"train_steps": 5,')
  else:
    grid.write_run_config(directory, {"train_steps": 5, "card": "arith"})
  (directory / "result.json").write_text(json.dumps({"value": 0.99}))


def annotate_probes(s: Scratch, paper: str | None) -> list[Probe]:
  a = ["dss_jax.annotate", "--noprogress"]
  store = s.path("annotate_store.jsonl")
  replay = [*a, "--card=svamp", "--backend=replay", "--limit=2"]
  if paper:
    replay.append(f"--paper_data_dir={paper}")
  garbled = s.write(
    "garbled_store.jsonl",
    '{"id": "a", "prompt_hash": "h", "teacher": "t", "sample": 0, '
    '"completion": "x"}\nnot json at all\n{"id": "b"}\n',
  )
  probes = [
    Probe("no --card", a),
    Probe("unknown card", [*a, "--card=nope"]),
    Probe("unknown backend", [*a, "--card=svamp", "--backend=oracle"]),
    Probe("concurrency zero", [*a, "--card=svamp", "--concurrency=0"]),
    Probe("num_samples zero", [*a, "--card=svamp", "--num_samples=0"]),
    Probe("limit negative", [*a, "--card=svamp", "--limit=-3"]),
    Probe("price one number", [*a, "--card=svamp", "--price=1"]),
    Probe("price not numbers", [*a, "--card=svamp", "--price=a,b"]),
    Probe("source with spaces", [*a, "--card=svamp", "--source=My Run"]),
    Probe("rpm zero", [*a, "--card=svamp", "--rpm=0"]),
    Probe("timeout negative", [*a, "--card=svamp", "--timeout_s=-1"]),
    Probe("temperature negative", [*a, "--card=svamp", "--temperature=-1"]),
    Probe(
      "paper data folder missing",
      [
        *a,
        "--card=svamp",
        "--backend=replay",
        f"--paper_data_dir={s.path('nowhere')}",
      ],
    ),
    Probe(
      "card hook does not import",
      [
        *a,
        "--card="
        + s.card(
          "bad_hook",
          'answer_marker: "The answer is"',
          'hook: "no_such_module:parse"',
          base="svamp",
        ),
      ],
    ),
    Probe(
      "card YAML broken",
      [*a, "--card=" + s.card("broken_yaml", "name: cqa", "name: [cqa")],
    ),
    Probe(
      "card query template unknown field",
      [
        *a,
        "--card="
        + s.card(
          "bad_query",
          'query_template: "Q: {input}',
          'query_template: "Q: {inpt}',
        ),
      ],
    ),
    Probe(
      "card exemplar template positional field",
      [*a, "--card=" + s.card("positional", "({letter})", "({})")],
    ),
    Probe(
      "gemini without an API key",
      [*a, "--card=svamp", "--backend=gemini", "--limit=1"],
      env={"GEMINI_API_KEY": "", "GOOGLE_API_KEY": ""},
    ),
    Probe(
      "openai server unreachable (calls fail, exit 1)",
      [
        *a,
        "--card=svamp",
        "--backend=openai",
        "--base_url=http://127.0.0.1:9/v1",
        "--model=m",
        "--limit=1",
        "--max_retries=0",
        f"--store={store}",
        *([f"--paper_data_dir={paper}"] if paper else []),
      ],
      check=_failed_with_line(1, "teacher calls failed"),
      env={"OPENAI_API_KEY": "k"},
    ),
  ]
  if paper:
    probes += [
      Probe("unknown split", [*replay, "--split=dev"]),
      Probe("garbled store line", [*replay, f"--store={garbled}"]),
    ]
  return probes


# A key shaped like a real one, planted where a careless server echoes it.
_PLANTED_KEY = "sk-probe-PLANTED0123456789abcdefXYZ"


def _one_fault_line(code: int, words: str) -> Callable:
  """Exit `code`, exactly one `error:` line, the last, holding `words`."""

  def check(proc: subprocess.CompletedProcess) -> bool:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (
      proc.returncode == code
      and len(errors) == 1
      and lines[-1] == errors[0]
      and words in errors[0]
    )

  return check


def _key_nowhere(folder: str) -> Callable:
  """A one-line user error, and the planted key in no output or file."""
  one_line = _one_fault_line(2, "API key")

  def check(proc: subprocess.CompletedProcess) -> bool:
    files = [
      p.read_text(errors="replace")
      for p in pathlib.Path(folder).rglob("*")
      if p.is_file()
    ]
    return one_line(proc) and not any(
      "PLANTED" in text for text in [proc.stdout, proc.stderr, *files]
    )

  return check


def teacher_server_probes(s: Scratch) -> list[Probe]:
  """Slow, odd or careless teacher servers; teachers without a model."""
  n = iter(range(1000))

  def annotate(*flags: str) -> list[str]:
    # The arith card ships its rows: no paper data needed.
    store = s.path(f"server_stores/{next(n)}/s.jsonl")
    return [
      "dss_jax.annotate",
      "--noprogress",
      "--card=arith",
      "--limit=3",
      "--concurrency=1",
      f"--store={store}",
      *flags,
    ]

  openai = ["--backend=openai", "--model=test-model", "--base_url={server}/v1"]
  gemini = ["--backend=gemini", "--base_url={server}"]
  keys = {"OPENAI_API_KEY": "k", "GEMINI_API_KEY": "k"}
  probes = [
    Probe(
      "openai 429 with Retry-After of an hour",
      annotate(*openai),
      _one_fault_line(1, "asks to wait 3600 s"),
      env=keys,
      server={"script": ["ok", "429"], "retry_delay_s": 3600},
      fast=True,
    ),
    Probe(
      "gemini 429 with a retryDelay of two hours",
      annotate(*gemini),
      _one_fault_line(1, "asks to wait 7200 s"),
      env=keys,
      server={"script": ["429"], "retry_delay_s": 7200},
    ),
    Probe(
      "openai 401 body echoes the key",
      annotate(*openai),
      _key_nowhere(s.path("server_stores")),
      env={"OPENAI_API_KEY": _PLANTED_KEY},
      server={"api_key": "the-right-one", "echo_key": True},
      fast=True,
    ),
    Probe(
      "gemini 400 body echoes the key",
      annotate(*gemini),
      _key_nowhere(s.path("server_stores")),
      env={"GEMINI_API_KEY": "AIzaPLANTED0123456789abcdefghijk"},
      server={"api_key": "the-right-one", "echo_key": True},
    ),
    Probe(
      "openai choices as a dict",
      annotate(*openai),
      _one_fault_line(1, "'choices' is a dict"),
      env=keys,
      server={"script": ["choices_dict"]},
      fast=True,
    ),
    Probe(
      "openai choices as strings",
      annotate(*openai),
      _one_fault_line(1, "'choices[0]' is a str"),
      env=keys,
      server={"script": ["ok", "choices_strings"]},
    ),
    Probe(
      "openai usage not a number",
      annotate(*openai),
      _one_fault_line(1, "'usage.prompt_tokens' is 'many'"),
      env=keys,
      server={"script": ["usage_text"]},
    ),
    Probe(
      "openai answer without choices",
      annotate(*openai),
      _one_fault_line(1, "no 'choices' field"),
      env=keys,
      server={"script": ["no_choices"]},
    ),
    Probe(
      "gemini candidates as strings",
      annotate(*gemini),
      _one_fault_line(1, "'candidates' hold no content"),
      env=keys,
      server={"script": ["choices_strings"]},
    ),
    Probe(
      "annotate openai without --model",
      annotate("--backend=openai", "--base_url=http://127.0.0.1:9/v1"),
      fast=True,
    ),
    Probe("annotate --model empty", annotate("--model=")),
    Probe(
      "gemini on Vertex AI without credentials",
      annotate("--vertexai", "--location=us-central1"),
      _one_fault_line(2, "GOOGLE_APPLICATION_CREDENTIALS"),
      env={
        "HOME": s.path("no_home"),
        "CLOUDSDK_CONFIG": s.path("no_gcloud"),
        "GOOGLE_APPLICATION_CREDENTIALS": "",
        "GOOGLE_CLOUD_PROJECT": "",
        "GCE_METADATA_HOST": "127.0.0.1:9",
        "GCE_METADATA_IP": "127.0.0.1:9",
      },
      fast=True,
    ),
  ]
  out = iter(range(1000))

  def distill(*flags: str) -> list[str]:
    return ["dss_jax.distill", f"--out_dir={s.path('seed_out')}{next(out)}"] + [
      *flags
    ]

  probes += [
    Probe(
      "distill two workers on one seed",
      distill("--seeds=4,4", "--workers=2"),
      fast=True,
    ),
    Probe(
      "grid repeats a seed",
      ["dss_jax.grid_job", f"--out_dir={s.path('grid_seed')}", "--seeds=1,2,1"],
    ),
    Probe(
      "distill fractions that share a folder",
      distill("--fractions=0.33333331,0.33333332"),
    ),
    Probe(
      "distill openai teacher without a model", distill("--teacher=openai")
    ),
  ]
  return probes


def multihost_probes(s: Scratch) -> list[Probe]:
  """2-process training jobs on the default path (needs the SVAMP build)."""
  tfds = s.path("tfds")
  hosts = s.path("hosts")

  def one_host_without_data() -> None:
    os.makedirs(f"{hosts}/1", exist_ok=True)
    if not os.path.exists(f"{hosts}/0"):
      os.symlink(tfds, f"{hosts}/0")

  def both_end_in_one_line(procs: list) -> bool:
    first, second = procs
    return (
      _one_fault_line(2, "is not built in")(second)
      and _one_fault_line(1, "process 1 of 2 stopped")(first)
      and not any("Check failure" in p.stderr for p in procs)
    )

  def both_finish(procs: list) -> bool:
    return all(
      p.returncode == 0 and "finished at step 2" in p.stderr for p in procs
    )

  argv = _train_argv(s.path("mh_run"), 2)[:-1]  # the default peak FLOP/s
  return [
    Probe(
      "train on 2 hosts, default path",
      [*argv, '--gin.MODEL_DIR="' + s.path("mh_ok") + '"'],
      both_finish,
      processes=2,
      env={"XLA_FLAGS": "--xla_force_host_platform_device_count=1"},
    ),
    Probe(
      "train on 2 hosts, host 1 without its data",
      argv,
      both_end_in_one_line,
      env={"TFDS_DATA_DIR": f"{hosts}/{{index}}"},
      setup=one_host_without_data,
      processes=2,
    ),
  ]


def gin_probes(s: Scratch) -> list[Probe]:
  bad_gin = s.write("bad.gin", "TRAIN_STEPS = = 3\n")
  t = ["dss_jax.train", "--gin_file=tiny.gin"]
  model_dir = f'--gin.MODEL_DIR="{s.path("train_dir")}"'
  task = '--gin.MIXTURE_OR_TASK_NAME="dss_svamp_palm"'
  e = ["dss_jax.eval", "--gin_file=models/t5_1_1_tiny.gin"]
  e += ["--gin_file=runs/eval.gin"]
  ckpt = f'--gin.CHECKPOINT_PATH="{s.path("no_run")}"'
  i = ["dss_jax.infer", "--gin_file=models/t5_1_1_tiny.gin"]
  i += ["--gin_file=runs/infer.gin", f'--gin.OUTPUT_FILE="{s.path("o.jsonl")}"']
  bad_jsonl = s.write("in_bad.jsonl", '{"input": "a"}\n{"input": \n')
  list_jsonl = s.write("in_list.jsonl", '["a", "b"]\n')
  fields_jsonl = s.write("in_fields.jsonl", '{"question": "q"}\n')
  return [
    Probe("train: gin file missing", ["dss_jax.train", "--gin_file=no.gin"]),
    Probe(
      "train: gin file garbled", ["dss_jax.train", f"--gin_file={bad_gin}"]
    ),
    Probe("train: unknown configurable", [*t, "--gin.nosuch.param=1"]),
    Probe("train: binding not a value", [*t, "--gin.TRAIN_STEPS=abc def"]),
    Probe("train: no MODEL_DIR", [*t, task]),
    Probe("train: no gin file at all", ["dss_jax.train"]),
    Probe(
      "train: unknown task", [*t, model_dir, '--gin.MIXTURE_OR_TASK_NAME="x"']
    ),
    Probe("train: stray argument", [*t, "go"]),
    Probe(
      "train: steps negative", [*t, model_dir, task, "--gin.TRAIN_STEPS=-5"]
    ),
    Probe(
      "train: batch size zero", [*t, model_dir, task, "--gin.BATCH_SIZE=0"]
    ),
    Probe(
      "train: learning rate negative",
      [*t, model_dir, task, "--gin.LEARNING_RATE=-1"],
    ),
    Probe(
      "train: checkpoint period zero",
      [*t, model_dir, task, "--gin.CHECKPOINT_PERIOD=0"],
    ),
    Probe(
      "train: feature length zero",
      [
        *t,
        model_dir,
        task,
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 0, 'targets': 8}",
      ],
    ),
    Probe(
      "train: MODEL_DIR is a file",
      [*t, f'--gin.MODEL_DIR="{s.write("a_file", "x")}"', task],
    ),
    Probe(
      "train: unknown mixture name (typo)",
      [*t, model_dir, '--gin.MIXTURE_OR_TASK_NAME="dss_svamp_plam"'],
    ),
    Probe(
      "train: unknown recipe",
      [*t, model_dir, task, '--gin.RECIPE="paired"'],
    ),
    Probe("train: unknown flag", [*t, "--gin_fille=x.gin"]),
    Probe("eval: no gin file", ["dss_jax.eval"]),
    Probe(
      "eval: checkpoint missing", [*e, ckpt, '--gin.MIXTURE_OR_TASK_NAME="x"']
    ),
    Probe(
      "eval: unknown task",
      [
        *e,
        f'--gin.CHECKPOINT_PATH="{s.path("empty_run")}"',
        '--gin.MIXTURE_OR_TASK_NAME="dss_nope"',
      ],
      setup=lambda: os.makedirs(s.path("empty_run"), exist_ok=True),
    ),
    Probe(
      "eval: unknown mode",
      [
        *e,
        ckpt,
        '--gin.MIXTURE_OR_TASK_NAME="x"',
        '--gin.CHECKPOINT_MODE="best"',
      ],
    ),
    Probe("eval: stray argument", [*e, "x"]),
    Probe(
      "infer: neither task nor file",
      [*i, ckpt, "--gin.MIXTURE_OR_TASK_NAME=None"],
    ),
    Probe(
      "infer: input file missing",
      [
        *i,
        ckpt,
        "--gin.MIXTURE_OR_TASK_NAME=None",
        f'--gin.INPUT_FILE="{s.path("none.jsonl")}"',
      ],
    ),
    Probe(
      "infer: input JSONL malformed",
      [
        *i,
        ckpt,
        "--gin.MIXTURE_OR_TASK_NAME=None",
        f'--gin.INPUT_FILE="{bad_jsonl}"',
      ],
    ),
    Probe(
      "infer: input JSONL line not an object",
      [
        *i,
        ckpt,
        "--gin.MIXTURE_OR_TASK_NAME=None",
        f'--gin.INPUT_FILE="{list_jsonl}"',
      ],
    ),
    Probe(
      "infer: input fields miss the card's",
      [
        *i,
        ckpt,
        "--gin.MIXTURE_OR_TASK_NAME=None",
        f'--gin.INPUT_FILE="{fields_jsonl}"',
        '--gin.CARD="cqa"',
      ],
    ),
    Probe("export: no flags", ["dss_jax.export"]),
    Probe(
      "export: checkpoint missing",
      [
        "dss_jax.export",
        "--gin_file=models/t5_1_1_tiny.gin",
        f"--checkpoint={s.path('nope')}",
        f"--output_dir={s.path('exp')}",
      ],
    ),
    Probe(
      "export: unknown dtype",
      [
        "dss_jax.export",
        f"--checkpoint={s.path('nope')}",
        f"--output_dir={s.path('exp')}",
        "--dtype=float8",
      ],
    ),
    Probe(
      "export: no model gin",
      [
        "dss_jax.export",
        f"--checkpoint={s.path('nope')}",
        f"--output_dir={s.path('exp')}",
      ],
    ),
  ]


def data_probes(s: Scratch) -> list[Probe]:
  ds = ["dss_jax.datasets", f"--data_dir={s.path('tfds_probe')}"]
  r = ["dss_jax.report"]
  header = "method,model_size,fraction,seed,metric,value\n"
  return [
    Probe("datasets: no --card", ds),
    Probe("datasets: unknown card", [*ds, "--card=nope"]),
    Probe("datasets: unknown keep", [*ds, "--card=svamp", "--keep=all"]),
    Probe(
      "datasets: no store for a new source",
      [
        *ds,
        "--card=svamp",
        "--source=my_run",
        f"--store={s.path('none.jsonl')}",
      ],
    ),
    Probe(
      "datasets: garbled store",
      [
        *ds,
        "--card=svamp",
        "--source=my_run",
        f"--store={s.path('garbled_store.jsonl')}",
      ],
    ),
    Probe("report: results missing", [*r, f"--results={s.path('none.csv')}"]),
    Probe(
      "report: results empty", [*r, "--results=" + s.write("empty.csv", "")]
    ),
    Probe(
      "report: results wrong columns",
      [*r, "--results=" + s.write("cols.csv", "a,b\n1,2\n")],
    ),
    Probe(
      "report: value not a number",
      [*r, "--results=" + s.write("nan.csv", header + "dss,s,1,0,acc,high\n")],
    ),
    Probe(
      "report: teacher accuracy above 1",
      [
        *r,
        "--results=" + s.write("ok.csv", header + "dss,s,1,0,acc,0.5\n"),
        "--teacher_accuracy=57",
      ],
    ),
    Probe("dss-jax: unknown command", ["dss_jax", "trian"]),
    Probe(
      "dss-jax train: gin file missing",
      ["dss_jax", "train", "--gin_file=no.gin"],
    ),
    Probe(
      "dss-jax annotate: unknown card", ["dss_jax", "annotate", "--card=nope"]
    ),
  ]


# ---------------------------------------------------------------------------
# Results reused after a change, reads checked, reports, truncation.


def _run_quietly(argv: list[str], env: dict[str, str], what: str) -> None:
  """Runs a setup command; stops the probe run if it fails."""
  proc = subprocess.run(
    [sys.executable, "-m", *argv],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  if proc.returncode != 0:
    print(proc.stderr[-3000:], file=sys.stderr)
    raise SystemExit(f"could not {what}, which a probe needs")


def _jsonl(path: str, rows: list[dict[str, Any]]) -> None:
  pathlib.Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))


def _read_jsonl(path: str) -> list[dict[str, Any]]:
  return [json.loads(x) for x in pathlib.Path(path).read_text().splitlines()]


def _mini_card(folder: str, train: int = 8, test: int = 4) -> str:
  """A user card without an id_field reading JSONL files (the demo's
  problems), as a user writes one."""
  sys.path.insert(0, str(REPO))
  from dss_jax import synthetic

  text = (REPO / "tasks" / "arith.yaml").read_text()
  text = text.replace(
    'reader: "dss_jax.synthetic:read_split"',
    "files: {train: train.jsonl, test: test.jsonl}",
  ).replace("  id_field: id\n", "")
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, "mini.yaml")
  pathlib.Path(path).write_text(text.replace("name: arith", "name: mini"))
  for split, count, seed in (("train", train, 1), ("test", test, 2)):
    problems = synthetic.generate_problems(count, seed=seed, split=split)
    _jsonl(
      os.path.join(folder, f"{split}.jsonl"),
      [{"input": p.question, "label": p.answer} for p in problems],
    )
  return path


def _distill_argv(card: str, out: str, *flags: str) -> list[str]:
  """The smallest distill job of `card` (offline teacher, 1 step)."""
  return [
    "dss_jax.distill",
    f"--task_card={card}",
    "--teacher=offline",
    "--student_vocabulary=byte",
    "--methods=finetune",
    "--model_sizes=demo-xs",
    "--fractions=1.0",
    "--seeds=0",
    "--train_steps=1",
    "--batch_size=4",
    "--inputs_length=64",
    "--targets_length=26",
    "--label_length=4",
    "--eval_examples=4",
    "--validation_period=0",
    "--workers=1",
    "--noprogress_bars",
    f"--out_dir={out}",
    *flags,
  ]


def _tfds_rationales(folder: str) -> dict[bytes, bytes]:
  """{input: rationale} of the train split of a built TFDS folder."""
  import tensorflow_datasets as tfds  # noqa: PLC0415 (the check's only)

  [version] = pathlib.Path(folder).glob("*/*/1.0.0")
  rows = tfds.builder_from_directory(str(version)).as_dataset(split="train")
  return {r["input"]: r["rationale"] for r in rows.as_numpy_iterator()}


def change_probes(s: Scratch, env: dict[str, str]) -> list[Probe]:
  """A rerun after a change redoes the work or refuses in one line naming
  the change; a rerun that reuses the old result is silent."""
  base_card = s.path("change/card/mini.yaml")
  base_out = s.path("change/out")

  def distilled(name: str) -> str:
    """A finished distill job copied to `change/<name>`, its card (one
    path for every probe: a run's identity is its card's contents, and a
    moved card would be a change of its own) restored as it was."""
    pristine = s.path("change/card_as_written")
    if not os.path.exists(f"{base_out}/results.csv"):
      _mini_card(pristine)
      _copy(pristine, os.path.dirname(base_card))
      _run_quietly(_distill_argv(base_card, base_out), env, "distill")
    _copy(pristine, os.path.dirname(base_card))
    _copy(base_out, s.path(f"change/{name}"))
    return base_card

  def edit_card() -> None:
    card = pathlib.Path(distilled("edited"))
    card.write_text(card.read_text().replace("Q: ", "Question: ", 1))

  def edit_label() -> None:
    test = pathlib.Path(distilled("relabelled")).parent / "test.jsonl"
    rows = _read_jsonl(str(test))
    rows[0]["label"] = rows[0]["label"] + 1
    _jsonl(str(test), rows)

  def rerun(name: str, *flags: str) -> list[str]:
    return _distill_argv(base_card, s.path(f"change/{name}"), *flags)

  # The annotate store of a card without id_field, then one row inserted
  # at the top: every row's rationale must still be its own.
  ids_card = s.path("change/ids/mini.yaml")
  ids_flags = [
    "--noprogress",
    f"--card={ids_card}",
    "--backend=offline",
    "--build_tfds",
  ]

  def annotate_then_insert() -> None:
    _mini_card(os.path.dirname(ids_card), train=12)
    _run_quietly(
      [
        "dss_jax.annotate",
        *ids_flags,
        f"--store={s.path('change/ids_store.jsonl')}",
        f"--data_dir={s.path('change/ids_tfds')}",
      ],
      env,
      "annotate",
    )
    train = os.path.join(os.path.dirname(ids_card), "train.jsonl")
    rows = _read_jsonl(train)
    _jsonl(train, [{"input": "What is 4 + 4 - 1?", "label": 7}, *rows])

  def rationales_are_their_own(proc: subprocess.CompletedProcess) -> bool:
    if proc.returncode != 0:
      return False
    fresh_tfds = s.path("change/ids_fresh_tfds")
    _run_quietly(
      [
        "dss_jax.annotate",
        *ids_flags,
        f"--store={s.path('change/ids_fresh.jsonl')}",
        f"--data_dir={fresh_tfds}",
      ],
      env,
      "annotate afresh",
    )
    reused = _tfds_rationales(s.path("change/ids_tfds"))
    return len(reused) == 13 and reused == _tfds_rationales(fresh_tfds)

  # Annotations exist; a second sample per example must reach the teacher.
  samples_card = s.path("change/samples/mini.yaml")
  samples_store = s.path("change/samples.jsonl")

  def annotated_once() -> None:
    _mini_card(os.path.dirname(samples_card), train=6)
    _run_quietly(
      [
        "dss_jax.annotate",
        "--noprogress",
        f"--card={samples_card}",
        "--backend=offline",
        f"--store={samples_store}",
      ],
      env,
      "annotate",
    )

  def second_sample_asked(proc: subprocess.CompletedProcess) -> bool:
    samples = {r["sample"] for r in _read_jsonl(samples_store)}
    return proc.returncode == 0 and samples == {0, 1}

  # The paper's released data, copied, built, then one test label changed.
  paper = s.path("change/paper")
  palm_tfds = s.path("change/palm_tfds")
  palm = ["dss_jax.datasets", "--card=svamp", "--source=palm"]
  palm_env = {"DSS_PAPER_DATA_DIR": paper}

  def palm_built_then_changed() -> None:
    _copy(env["DSS_PAPER_DATA_DIR"] + "/svamp", f"{paper}/svamp")
    _run_quietly(
      [*palm, f"--data_dir={palm_tfds}"],
      {**env, **palm_env},
      "build svamp_palm",
    )
    test = f"{paper}/svamp/svamp_test.json"
    rows = _read_jsonl(test)
    rows[0]["label"] = "( 2.0 + 40.0 )"
    _jsonl(test, rows)

  probes = [
    Probe(
      "rerun: annotate asks a second sample per example",
      [
        "dss_jax.annotate",
        "--noprogress",
        f"--card={samples_card}",
        "--backend=offline",
        f"--store={samples_store}",
        "--num_samples=2",
      ],
      check=second_sample_asked,
      setup=annotated_once,
      fast=True,
    ),
    Probe(
      "rerun: a row inserted into a card without id_field",
      [
        "dss_jax.annotate",
        *ids_flags,
        f"--store={s.path('change/ids_store.jsonl')}",
        f"--data_dir={s.path('change/ids_tfds')}",
      ],
      check=rationales_are_their_own,
      setup=annotate_then_insert,
    ),
    Probe(
      "rerun: distill after the card was edited",
      rerun("edited"),
      check=_failed_with_line(2, "card_sha256"),
      setup=edit_card,
    ),
    Probe(
      "rerun: distill after a gold label changed",
      rerun("relabelled"),
      check=_failed_with_line(2, "source_files"),
      setup=edit_label,
    ),
    Probe(
      "rerun: distill with another teacher sample count",
      rerun("samples", "--teacher_samples=2"),
      check=_failed_with_line(2, "num_samples 1 -> 2"),
      setup=lambda: distilled("samples"),
    ),
    Probe(
      "rerun: datasets --source=palm after the released data changed",
      [*palm, f"--data_dir={palm_tfds}"],
      check=lambda p: (
        p.returncode == 0
        and "svamp_test.json changed since it was built" in p.stderr
      ),
      env=palm_env,
      setup=palm_built_then_changed,
    ),
  ]
  return probes


class _TrainedRun:
  """One tiny SVAMP run, trained when a probe first needs it; copied."""

  def __init__(self, s: Scratch, env: dict[str, str]):
    self.root = s.path("trained_once")
    self.s = s
    self.env = env

  def copy(self, name: str) -> str:
    if not _steps(self.root):
      _run_quietly(_train_argv(self.root, 2), self.env, "train a tiny run")
    dst = self.s.path(name)
    _copy(self.root, dst)
    return dst


def read_probes(s: Scratch, env: dict[str, str]) -> list[Probe]:
  """Eval, infer and export of a run: reads checked, stale results redone,
  cut inputs counted (needs the SVAMP build)."""
  trained = _TrainedRun(s, env)
  lengths = "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 48}"

  def ev(run: str, *bindings: str) -> list[str]:
    return [
      "dss_jax.eval",
      "--gin_file=models/t5_1_1_tiny.gin",
      "--gin_file=runs/eval.gin",
      '--gin.MIXTURE_OR_TASK_NAME="dss_svamp_palm_label"',
      '--gin.vocab.get_vocabulary.name="byte"',
      f'--gin.CHECKPOINT_PATH="{s.path(run)}"',
      '--gin.EVAL_SPLIT="test"',
      "--gin.BATCH_SIZE=4",
      "--gin.MAX_DECODE_LENGTH=4",
      lengths,
      *bindings,
    ]

  def inf(run: str, input_file: str, *bindings: str) -> list[str]:
    return [
      "dss_jax.infer",
      "--gin_file=models/t5_1_1_tiny.gin",
      "--gin_file=runs/infer.gin",
      f'--gin.CHECKPOINT_PATH="{s.path(run)}"',
      f'--gin.OUTPUT_FILE="{s.path(run)}/answers.jsonl"',
      "--gin.MIXTURE_OR_TASK_NAME=None",
      f'--gin.INPUT_FILE="{input_file}"',
      '--gin.VOCABULARY="byte"',
      "--gin.INPUT_LENGTH=32",
      "--gin.MAX_DECODE_LENGTH=4",
      "--gin.BATCH_SIZE=4",
      *bindings,
    ]

  def export(run: str, out: str, *flags: str) -> list[str]:
    return [
      "dss_jax.export",
      "--gin_file=models/t5_1_1_tiny.gin",
      f"--checkpoint={s.path(run)}",
      f"--output_dir={s.path(out)}",
      "--vocabulary=byte",
      *flags,
    ]

  def flipped(name: str) -> None:
    # Every data file of the newest step, so that the parameters (not only
    # the optimizer state, which eval, infer and export never read) change.
    step = pathlib.Path(trained.copy(name)) / "checkpoints"
    step = step / str(_steps(str(step.parent))[-1]) / "state"
    for path in step.rglob("*"):
      if path.is_file() and path.parent.name == "d":
        data = bytearray(path.read_bytes())
        for i in range(len(data) // 2, min(len(data), len(data) // 2 + 64)):
          data[i] ^= 0xFF
        path.write_bytes(bytes(data))

  def other_vocabulary(name: str) -> None:
    path = pathlib.Path(trained.copy(name)) / "vocabulary.json"
    ident = json.loads(path.read_text())
    path.write_text(json.dumps({**ident, "vocab_size": 131}))

  def scored(name: str) -> None:
    trained.copy(name)
    _run_quietly(ev(name, "--gin.NUM_EXAMPLES=2"), env, "evaluate")

  def rows_out(run: str, count: int) -> Callable:
    def check(proc: subprocess.CompletedProcess) -> bool:
      out = s.path(f"{run}/answers.jsonl")
      return (
        proc.returncode == 0
        and os.path.exists(out)
        and len(_read_jsonl(out)) == count
      )

    return check

  def stale_export(name: str, run: str) -> None:
    trained.copy(run)
    folder = pathlib.Path(s.path(name))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    # An earlier export's files, of a SentencePiece student.
    (folder / "config.json").write_text("{}")
    (folder / "spiece.model").write_bytes(b"stale")

  def one_fault(words: str) -> Callable:
    """One fault line (exit 1 or 2) naming `words`."""
    return lambda p: any(_one_fault_line(c, words)(p) for c in (1, 2))

  array = s.write(
    "read/questions.json",
    json.dumps(
      [{"input": "1 + 2"}, {"input": "3 + 4"}, {"input": "5"}], indent=2
    ),
  )
  upper = s.write(
    "read/questions.JSONL",
    "".join(json.dumps({"input": f"{n} + 1"}) + "\n" for n in range(5)),
  )
  long_inputs = s.write(
    "read/long.txt", "2 + 3\n" + "seven plus " * 20 + "one\n"
  )
  return [
    Probe(
      "eval: a bit-flipped checkpoint",
      ev("read_flip_eval"),
      check=one_fault("read_flip_eval"),
      setup=lambda: flipped("read_flip_eval"),
    ),
    Probe(
      "infer: a bit-flipped checkpoint",
      inf("read_flip_infer", upper),
      check=one_fault("read_flip_infer"),
      setup=lambda: flipped("read_flip_infer"),
    ),
    Probe(
      "export: a bit-flipped checkpoint",
      export("read_flip_export", "read_flip_hf"),
      check=lambda p: (
        one_fault("read_flip_export")(p)
        and not os.path.exists(s.path("read_flip_hf"))
      ),
      setup=lambda: flipped("read_flip_export"),
    ),
    Probe(
      "infer: the run was trained with another vocabulary",
      inf("read_vocab_infer", upper),
      setup=lambda: other_vocabulary("read_vocab_infer"),
    ),
    Probe(
      "export: the run was trained with another vocabulary",
      export("read_vocab_export", "read_vocab_hf"),
      setup=lambda: other_vocabulary("read_vocab_export"),
    ),
    Probe(
      "export: a folder holding an earlier export",
      export("read_export", "read_stale_hf"),
      setup=lambda: stale_export("read_stale_hf", "read_export"),
    ),
    Probe(
      "export --overwrite: an earlier export's spiece.model removed",
      export("read_export", "read_stale_hf2", "--overwrite"),
      check=lambda p: (
        p.returncode == 0
        and not os.path.exists(s.path("read_stale_hf2/spiece.model"))
        and os.path.exists(s.path("read_stale_hf2/config.json"))
      ),
      setup=lambda: stale_export("read_stale_hf2", "read_export"),
    ),
    Probe(
      "infer: a .json file holding one array",
      inf("read_json", array),
      check=rows_out("read_json", 3),
      setup=lambda: trained.copy("read_json"),
    ),
    Probe(
      "infer: a .JSONL file",
      inf("read_upper", upper),
      check=rows_out("read_upper", 5),
      setup=lambda: trained.copy("read_upper"),
    ),
    Probe(
      "infer: a long input counted as cut",
      inf("read_long", long_inputs),
      check=lambda p: (
        rows_out("read_long", 2)(p)
        and "1 of 2 inputs longer than 32 tokens were cut" in p.stdout
      ),
      setup=lambda: trained.copy("read_long"),
    ),
    Probe(
      "eval: scored again for another example count",
      ev("read_scored_n", "--gin.NUM_EXAMPLES=3"),
      check=_ok_and("scored again: num_examples 2 -> 3"),
      setup=lambda: scored("read_scored_n"),
    ),
    Probe(
      "eval: scored again for another split",
      ev(
        "read_scored_split", "--gin.NUM_EXAMPLES=2", '--gin.EVAL_SPLIT="train"'
      ),
      check=_ok_and("split 'test' -> 'train'"),
      setup=lambda: scored("read_scored_split"),
    ),
    Probe(
      "train: a finished MODEL_DIR rerun with another task",
      [
        *_train_argv(s.path("read_other_task"), 2),
        '--gin.MIXTURE_OR_TASK_NAME="dss_svamp_palm_label"',
      ],
      check=_failed_with_line(2, "MIXTURE_OR_TASK_NAME"),
      setup=lambda: trained.copy("read_other_task"),
    ),
    Probe(
      "train: inputs longer than their length are counted",
      [
        *_train_argv(s.path("read_cut_inputs"), 1),
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 48}",
      ],
      check=lambda p: (
        p.returncode == 0
        and "inputs longer than 8 tokens were cut" in p.stdout + p.stderr
      ),
    ),
    Probe(
      "train: a label longer than its length",
      [
        *_train_argv(s.path("read_cut_label"), 1),
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}",
      ],
      check=_failed_with_line(2, "would be cut"),
    ),
  ]


def report_probes(s: Scratch) -> list[Probe]:
  """Results CSVs a user writes by hand (the summary table read back)."""
  header = "card,method,model_size,fraction,seed,metric,value\n"
  rows = lambda card, *values: "".join(  # noqa: E731
    f"{card},dss,base,1,{seed},accuracy,{v}\n" for seed, v in enumerate(values)
  )

  def summary_holds(folder: str, present: list[str], absent: list[str]):
    def check(proc: subprocess.CompletedProcess) -> bool:
      path = pathlib.Path(s.path(folder)) / "summary.md"
      if proc.returncode != 0 or not path.is_file():
        return False
      text = path.read_text()
      return all(w in text for w in present) and not any(
        w in text for w in absent
      )

    return check

  r = ["dss_jax.report"]
  return [
    Probe(
      "report: values given in percent",
      [
        *r,
        "--results=" + s.write("rep_pct/r.csv", header + rows("svamp", 59, 61)),
      ],
      check=summary_holds("rep_pct", ["60.00"], ["6000"]),
      fast=True,
    ),
    Probe(
      "report: two cards in one CSV",
      [
        *r,
        "--results="
        + s.write(
          "rep_two/r.csv",
          header + rows("svamp", 0.2, 0.2) + rows("cqa", 0.8, 0.8),
        ),
      ],
      check=summary_holds(
        "rep_two", ["svamp", "cqa", "20.00", "80.00"], ["50.00"]
      ),
      fast=True,
    ),
    Probe(
      "report: fraction 0",
      [
        *r,
        "--results="
        + s.write(
          "rep_zero/r.csv", header + "svamp,dss,base,0,0,accuracy,0.5\n"
        ),
      ],
    ),
  ]


# ---------------------------------------------------------------------------
# Faults of a real run (--faults): checkpoints, vocabularies, signals.


def _train_argv(model_dir: str, steps: int) -> list[str]:
  return [
    "dss_jax.train",
    "--gin_file=tiny.gin",
    f'--gin.MODEL_DIR="{model_dir}"',
    '--gin.MIXTURE_OR_TASK_NAME="dss_svamp_palm"',
    f"--gin.TRAIN_STEPS={steps}",
    "--gin.CHECKPOINT_PERIOD=1",
    "--gin.BATCH_SIZE=2",
    # Targets long enough for SVAMP's labels in bytes (a cut label is an
    # error); the rationales are cut and counted.
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 48}",
    "--gin.trainer.train.peak_flops=1e12",
  ]


def _steps(model_dir: str) -> list[int]:
  folder = pathlib.Path(model_dir) / "checkpoints"
  if not folder.is_dir():
    return []
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def _copy(src: str, dst: str) -> None:
  shutil.rmtree(dst, ignore_errors=True)
  shutil.copytree(src, dst)


def _corrupt(model_dir: str, how: str) -> None:
  """Damages the newest step's parameter files (`how`: flip, zero, delete)."""
  step = pathlib.Path(model_dir) / "checkpoints" / str(_steps(model_dir)[-1])
  files = sorted(
    (p for p in step.rglob("*") if p.is_file() and p.stat().st_size > 64),
    key=lambda p: -p.stat().st_size,
  )
  if how == "delete":
    for path in files[: max(1, len(files) // 2)]:
      path.unlink()
    return
  for path in files[:1]:
    data = bytearray(path.read_bytes())
    if how == "zero":
      data = bytearray(len(data))
    else:
      for i in range(len(data) // 3, len(data) // 3 + 64):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _resumed_from_older(model_dir: str, steps: int) -> Callable:
  def check(proc: subprocess.CompletedProcess) -> bool:
    text = proc.stderr
    return (
      proc.returncode == 0
      and "is corrupt" in text
      and "resumed from step" in text
      and _steps(model_dir)[-1] == steps
    )

  return check


def fault_probes(s: Scratch, base_env: dict[str, str]) -> list[Probe]:
  """Probes on a trained tiny run; trains it first (one compile)."""
  run = s.path("trained")
  proc = subprocess.run(
    [sys.executable, "-m", *_train_argv(run, 2)],
    cwd=REPO,
    env=base_env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  if proc.returncode != 0 or len(_steps(run)) < 2:
    print(proc.stderr[-3000:], file=sys.stderr)
    raise SystemExit("could not train the tiny run the fault probes need")
  probes = []
  for how in ("flip", "zero", "delete"):
    copy = s.path(f"corrupt_{how}")
    probes.append(
      Probe(
        f"train: latest checkpoint {how}",
        _train_argv(copy, 3),
        check=_resumed_from_older(copy, 3),
        setup=lambda c=copy, h=how: (_copy(run, c), _corrupt(c, h)),
      )
    )
  every = s.path("corrupt_all")

  def corrupt_all() -> None:
    _copy(run, every)
    for step in _steps(every):
      for path in (pathlib.Path(every) / "checkpoints" / str(step)).rglob("*"):
        if path.is_file() and path.stat().st_size > 64:
          path.write_bytes(bytes(path.stat().st_size))

  probes.append(
    Probe(
      "train: every checkpoint corrupt",
      _train_argv(every, 3),
      setup=corrupt_all,
    )
  )
  e = [
    "dss_jax.eval",
    "--gin_file=models/t5_1_1_tiny.gin",
    "--gin_file=runs/eval.gin",
  ]
  e += [
    '--gin.MIXTURE_OR_TASK_NAME="dss_svamp_palm_label"',
    '--gin.vocab.get_vocabulary.name="byte"',
  ]
  small = s.path("small_vocab")
  garbled = s.path("garbled_vocab")

  def vocab_file(dst: str, text: str) -> None:
    _copy(run, dst)
    (pathlib.Path(dst) / "vocabulary.json").write_text(text)

  ident = json.loads((pathlib.Path(run) / "vocabulary.json").read_text())
  probes += [
    Probe(
      "eval: vocabulary smaller than the training one",
      [*e, f'--gin.CHECKPOINT_PATH="{small}"'],
      setup=lambda: vocab_file(small, json.dumps({**ident, "vocab_size": 131})),
    ),
    Probe(
      "eval: vocabulary.json garbled",
      [*e, f'--gin.CHECKPOINT_PATH="{garbled}"'],
      setup=lambda: vocab_file(garbled, "{not json"),
    ),
  ]
  return probes


def signal_probe(
  s: Scratch, base_env: dict[str, str], signum: int, timeout: float
) -> tuple[str, str, float]:
  """Sends `signum` after the first checkpoint, resumes; loses <= 1 step."""
  run = s.path(f"signal_{signum}")
  start = time.monotonic()
  first = subprocess.Popen(
    [sys.executable, "-m", *_train_argv(run, 100_000)],
    cwd=REPO,
    env=base_env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  deadline = time.monotonic() + timeout
  while not _steps(run) and time.monotonic() < deadline:
    if first.poll() is not None:
      return "unclear", f"[{first.returncode}] exited before a checkpoint", 0.0
    time.sleep(0.5)
  if not _steps(run):
    first.kill()
    return "hang", "no checkpoint in time", time.monotonic() - start
  first.send_signal(signum)
  try:
    _, err = first.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    first.kill()
    return "hang", "no exit after the signal", time.monotonic() - start
  kept = _steps(run)
  if "Traceback" in err and signum != signal.SIGKILL:
    return "traceback", err.strip().splitlines()[-1], time.monotonic() - start
  if not kept:
    return "silent", "no checkpoint kept", time.monotonic() - start
  target = kept[-1] + 1
  second = subprocess.run(
    [sys.executable, "-m", *_train_argv(run, target)],
    cwd=REPO,
    env=base_env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  ok = (
    second.returncode == 0
    and f"resumed from step {kept[-1]}" in second.stderr
    and _steps(run)[-1] == target
  )
  shown = f"[{first.returncode}, then {second.returncode}] kept {kept}"
  return ("handled" if ok else "silent"), shown, time.monotonic() - start


# ---------------------------------------------------------------------------


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--paper_data_dir", default=os.environ.get("DSS_PAPER_DATA_DIR")
  )
  parser.add_argument("--faults", action="store_true")
  parser.add_argument(
    "--fast", action="store_true", help="only the smoke subset (fast=True)"
  )
  parser.add_argument("--timeout_s", type=float, default=180.0)
  parser.add_argument(
    "--only", default="", help="run probes naming this (a|b: either)"
  )
  parser.add_argument(
    "--log_dir", default=None, help="keep stderr of probes that failed here"
  )
  args = parser.parse_args()
  scratch = Scratch(pathlib.Path(tempfile.mkdtemp(prefix="dss_probe_")))
  env = dict(os.environ)
  env.update(
    PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
    JAX_PLATFORMS="cpu",
    CUDA_VISIBLE_DEVICES="",
    TFDS_DATA_DIR=scratch.path("tfds"),
    DSS_ANNOTATIONS_DIR=scratch.path("annotations"),
    # The caller's compilation cache when it names one (the test suite's),
    # else the scratch folder's: the probes' tiny runs compile alike.
    JAX_COMPILATION_CACHE_DIR=(
      env.get("JAX_COMPILATION_CACHE_DIR") or scratch.path("xla_cache")
    ),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
  )
  env.pop("DSS_PAPER_DATA_DIR", None)
  if args.paper_data_dir:
    env["DSS_PAPER_DATA_DIR"] = args.paper_data_dir
  probes = (
    distill_probes(scratch)
    + annotate_probes(scratch, args.paper_data_dir)
    + gin_probes(scratch)
    + data_probes(scratch)
    + teacher_server_probes(scratch)
    + report_probes(scratch)
    + change_probes(scratch, env)
  )
  if args.paper_data_dir and not args.fast:
    probes += multihost_probes(scratch) + read_probes(scratch, env)
  if args.fast:
    probes = [p for p in probes if p.fast]
  if args.paper_data_dir and not args.fast:
    # The gin probes then reach the trainer's own checks (and --faults
    # trains on it).
    sys.path.insert(0, str(REPO))
    os.environ["DSS_PAPER_DATA_DIR"] = args.paper_data_dir
    from dss_jax import datasets

    datasets.build_annotated("svamp", "palm", data_dir=scratch.path("tfds"))
  if args.faults:
    if not args.paper_data_dir:
      raise SystemExit("--faults trains on SVAMP: pass --paper_data_dir")
    probes += fault_probes(scratch, env)
  results = []
  for probe in probes:
    if args.only and not any(w in probe.name for w in args.only.split("|")):
      continue
    log_dir = pathlib.Path(args.log_dir) if args.log_dir else None
    result = run_probe(probe, env, REPO, args.timeout_s, log_dir)
    results.append((probe.name, *result))
    print(f"{result[0]:<10} {result[2]:6.1f}s  {probe.name}: {result[1][:150]}")
    sys.stdout.flush()
  if args.faults and not args.fast:
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):
      name = f"train: {signal.Signals(signum).name} after a checkpoint, resume"
      if args.only and not any(w in name for w in args.only.split("|")):
        continue
      result = signal_probe(scratch, env, signum, args.timeout_s)
      results.append((name, *result))
      print(f"{result[0]:<10} {result[2]:6.1f}s  {name}: {result[1][:150]}")
  counts = {v: sum(r[1] == v for r in results) for v in VERDICTS}
  print(
    f"\n{len(results)} probes: "
    + ", ".join(f"{v} {n}" for v, n in counts.items())
  )
  shutil.rmtree(scratch.root, ignore_errors=True)
  bad = sum(counts[v] for v in ("traceback", "silent", "unclear", "hang"))
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
