"""Annotation throughput against a rate-limited local server, and kill cost.

Starts the local fake Gemini server (dss_jax.teacher.testing) with a fixed
latency per call and a server-side limit on requests per rolling minute, then:

1. runs the annotation runner on CQA prompts with the client-side limit set
   to the server's and reports the requests per minute achieved (calls
   finished / wall time, from the first call to the last) and any 429s;
2. runs `python -m dss_jax.annotate` as a subprocess, SIGKILLs it mid-run,
   reruns it to completion and reports how many calls were made twice
   (server calls minus distinct requests; at most the concurrency).

    DSS_PAPER_DATA_DIR=path/to/dss_paper python benchmarks/teacher_throughput.py \
      --latency_s=1 --server_rpm=600 --requests=1000 --concurrency=16
    python benchmarks/teacher_throughput.py --smoke   # seconds

`--smoke` measures the same on a few requests with a short latency, on the
slices of the paper data that ship with the tests (unless --paper_data_dir
is given); tests/benchmarks_test.py runs it.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

# Runs from a source checkout without `pip install -e .`.
_REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))

from dss_jax import cards  # noqa: E402
from dss_jax.teacher import prompts, runner, sources  # noqa: E402
from dss_jax.teacher.backends import gemini  # noqa: E402
from dss_jax.teacher.testing import FakeTeacherServer  # noqa: E402


def _throughput(
  args: argparse.Namespace, root: pathlib.Path, workdir: str
) -> None:
  card = cards.load_card("cqa")
  examples = sources.read_examples(card, "train", root)[: args.requests]
  requests = runner.build_job(card, examples, "train", prompts.SamplingConfig())
  with FakeTeacherServer(
    latency_s=args.latency_s, requests_per_minute=args.server_rpm
  ) as server:
    backend = gemini.GeminiBackend(base_url=server.url)
    config = runner.RunnerConfig(
      concurrency=args.concurrency,
      requests_per_minute=args.client_rpm or None,
      progress=False,
    )
    stats = runner.annotate(
      backend, requests, os.path.join(workdir, "throughput.jsonl"), config
    )
    times = server.answered_times
    rejected = server.counts["429"]
  span = times[-1] - times[0] if len(times) > 1 else float("nan")
  # n answers span n-1 intervals; per-minute rate over the answering span.
  rpm = 60.0 * (len(times) - 1) / span
  wall_rpm = 60.0 * stats.completed / stats.elapsed_s
  print(
    f"throughput: {stats.completed} calls, latency {args.latency_s}s, server "
    f"limit {args.server_rpm}/min, client limit {args.client_rpm or 'none'}/min, "
    f"concurrency {args.concurrency}: {rpm:.1f} req/min over the answering "
    f"span ({100 * rpm / args.server_rpm:.1f}% of the limit), {wall_rpm:.1f} "
    f"req/min including start-up; 429s from the server: {rejected}; retries: "
    f"{stats.retries}; wall {stats.elapsed_s:.1f}s"
  )


def _kill_and_resume(
  args: argparse.Namespace, root: pathlib.Path, workdir: str
) -> None:
  store = pathlib.Path(workdir) / "killed.jsonl"
  with FakeTeacherServer(
    latency_s=args.latency_s, requests_per_minute=args.server_rpm
  ) as server:
    command = [
      sys.executable,
      "-m",
      "dss_jax.annotate",
      "--card=cqa",
      "--split=test",
      f"--limit={args.kill_requests}",
      f"--base_url={server.url}",
      f"--concurrency={args.concurrency}",
      f"--rpm={args.client_rpm or 0}",
      f"--store={store}",
      "--progress=false",
    ]
    if not args.client_rpm:
      command.remove("--rpm=0")
    env = {
      **os.environ,
      "PYTHONPATH": str(_REPO),
      "GEMINI_API_KEY": "benchmark",
      "DSS_PAPER_DATA_DIR": str(root),
    }
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    while (
      not store.exists()
      or store.read_text().count("\n") < args.kill_requests // 2
    ):
      if process.poll() is not None:
        # It ended before half its calls were stored: it failed (its stderr
        # says why), and waiting for more would never end.
        raise SystemExit(
          f"error: {command[2]} exited with status {process.returncode} "
          "before the kill"
        )
      time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    at_kill = store.read_text().count("\n")
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    calls = server.counts["requests"] - server.counts["429"]
  stored = store.read_text().count("\n")
  print(
    f"kill and resume: {args.kill_requests} requests, SIGKILL after "
    f"{at_kill} were stored; {stored} stored in the end, {calls} answered "
    f"calls in total -> {calls - stored} repeated (concurrency "
    f"{args.concurrency})"
  )


# The paper data's slices that ship with the tests: what --smoke reads.
SMOKE_PAPER_DATA = _REPO / "tests" / "testdata" / "dss_paper"
# --smoke: few calls, short latency, a limit the calls stay under.
SMOKE = dict(
  latency_s=0.05,
  server_rpm=6000,
  client_rpm=6000,
  requests=24,
  kill_requests=40,
  concurrency=4,
)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--paper_data_dir", default=None)
  parser.add_argument("--latency_s", type=float, default=1.0)
  parser.add_argument("--server_rpm", type=int, default=600)
  parser.add_argument("--client_rpm", type=float, default=600)
  parser.add_argument("--requests", type=int, default=1000)
  parser.add_argument("--kill_requests", type=int, default=200)
  parser.add_argument("--concurrency", type=int, default=16)
  parser.add_argument(
    "--smoke",
    action="store_true",
    help=f"small sizes (flags given still count): {SMOKE}",
  )
  args = parser.parse_args(argv)
  if args.smoke:
    parser.set_defaults(**SMOKE, paper_data_dir=str(SMOKE_PAPER_DATA))
    args = parser.parse_args(argv)
  os.environ.setdefault("GEMINI_API_KEY", "benchmark")
  root = (
    sources.find_root(args.paper_data_dir)
    if args.paper_data_dir
    else sources.default_root()
  )
  with tempfile.TemporaryDirectory() as workdir:
    _throughput(args, root, workdir)
    _kill_and_resume(args, root, workdir)


if __name__ == "__main__":
  main()
