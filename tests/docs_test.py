"""The shell blocks of README.md and docs/*.md run, or say what they need.

Every fenced shell block (```sh, and bash/shell/console spellings) carries a
mark on the line right before its fence:

    <!-- docs-test: run -->         executed here, in order, per file
    <!-- docs-test: skip NEED -->   not executed; NEED is one of NEEDS below

`test_shell_blocks_are_marked` fails on an unmarked block, an unknown NEED or
a mark with no block under it, naming file:line. `test_doc_runs` runs a file's
`run` blocks (and its `t5x` blocks where T5X is importable) in order with bash
in one temporary folder that looks like a checkout (the repository's
top-level folders linked in), so a block may use what an earlier one made,
exported variables and the working directory included. The environment is
small and offline: this Python's bin first on PATH (`python`, `dss-jax`), the
checkout first on PYTHONPATH, DSS_PAPER_DATA_DIR on the slices in
tests/testdata/dss_paper, TFDS_DATA_DIR and HOME inside the temporary folder,
NO_GCE_CHECK=true and an unreachable HTTP(S) proxy for everything but
127.0.0.1. `test_doc_needs` has one skipped item per block not run, its reason
naming the need (`pytest -rs tests/docs_test.py` lists them all).
"""

import dataclasses
import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

_REPO = pathlib.Path(__file__).resolve().parents[1]
_DOCS = [_REPO / "README.md", *sorted((_REPO / "docs").glob("*.md"))]
_SLICES = _REPO / "tests" / "testdata" / "dss_paper"

# What a skipped block needs, and what to give it.
NEEDS = {
  "cloud": "a Google Cloud project, bucket or VM (gcloud, gs://)",
  "tpu": "a Cloud TPU",
  "gpu": "a GPU",
  "t5x": "T5X installed (runs here when `import t5x` works)",
  "key": "a teacher API key (GEMINI_API_KEY, OPENAI_API_KEY)",
  "full-data": "the paper's full released data (DSS_PAPER_DATA_DIR)",
  "long": "minutes to hours of compute, or package downloads",
}
_SHELLS = {"sh", "bash", "shell", "console", "zsh"}
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
_MARK = re.compile(r"^\s*<!--\s*docs-test:\s*(.*?)\s*-->\s*$")
# Seconds one block may take; a block that needs longer is `skip long`.
_BLOCK_TIMEOUT_S = 300
# The repository's top-level entries a doc's command may name (the docs are
# written for a user at the root of a checkout).
_CHECKOUT = (
  "Makefile",
  "README.md",
  "benchmarks",
  "docs",
  "dss_jax",
  "gin_configs",
  "pyproject.toml",
  "setup.py",
  "tasks",
  "tests",
  "tpu_scripts",
)


@dataclasses.dataclass(frozen=True)
class Block:
  """One fenced shell block of a doc.

  Attributes:
    doc: the doc's path relative to the repository.
    line: the 1-based line of the opening fence.
    text: the block's lines.
    mark: "run", "skip", or "" when unmarked.
    need: the NEED of a skip mark ("" otherwise).
  """

  doc: str
  line: int
  text: str
  mark: str
  need: str

  @property
  def where(self) -> str:
    return f"{self.doc}:{self.line}"

  @property
  def runs(self) -> bool:
    return self.mark == "run" or (
      self.mark == "skip" and self.need == "t5x" and _T5X
    )


def parse_doc(path: pathlib.Path) -> tuple[list[Block], list[str]]:
  """The shell blocks of a Markdown file and the problems with their marks.

  Args:
    path: the Markdown file.

  Returns:
    The shell blocks in file order, and one "file:line: what" per problem.
  """
  doc = str(path.relative_to(_REPO))
  lines = path.read_text().splitlines()
  blocks, problems = [], []
  pending = None  # (line, mark text) of a mark waiting for its block
  index = 0
  while index < len(lines):
    fence = _FENCE.match(lines[index])
    mark = _MARK.match(lines[index])
    if mark:
      if pending:
        problems.append(f"{doc}:{pending[0]}: mark with no shell block")
      pending = (index + 1, mark.group(1))
      index += 1
      continue
    if not fence:
      if pending and lines[index].strip():
        problems.append(f"{doc}:{pending[0]}: mark with no shell block")
        pending = None
      index += 1
      continue
    # A fenced block: find its closing fence (same character, at least as
    # long), as CommonMark does.
    ticks, language = fence.group(1), fence.group(2).lower()
    end = index + 1
    while end < len(lines) and not re.match(
      rf"^\s*{re.escape(ticks[0])}{{{len(ticks)},}}\s*$", lines[end]
    ):
      end += 1
    text = "\n".join(lines[index + 1 : end])
    marked = pending if pending and pending[0] == index else None
    if pending and not marked:
      problems.append(f"{doc}:{pending[0]}: mark with no shell block")
    if language in _SHELLS:
      blocks.append(_block(doc, index + 1, text, marked, problems))
    elif pending:
      problems.append(f"{doc}:{pending[0]}: mark with no shell block")
    pending = None
    index = end + 1
  if pending:
    problems.append(f"{doc}:{pending[0]}: mark with no shell block")
  return blocks, problems


def _block(doc, line, text, marked, problems) -> Block:
  """A Block from its fence and mark; appends what is wrong to `problems`."""
  if marked is None:
    problems.append(
      f"{doc}:{line}: shell block without a mark; put "
      "'<!-- docs-test: run -->' or '<!-- docs-test: skip NEED -->' "
      f"(NEED: {', '.join(NEEDS)}) on the line before the fence"
    )
    return Block(doc, line, text, "", "")
  words = marked[1].split()
  if words == ["run"]:
    return Block(doc, line, text, "run", "")
  if len(words) == 2 and words[0] == "skip" and words[1] in NEEDS:
    return Block(doc, line, text, "skip", words[1])
  problems.append(
    f"{doc}:{line - 1}: unknown mark {marked[1]!r}; use 'run' or "
    f"'skip NEED' with NEED one of {', '.join(NEEDS)}"
  )
  return Block(doc, line, text, "", "")


_T5X = importlib.util.find_spec("t5x") is not None
_PARSED = {path: parse_doc(path) for path in _DOCS}
_BLOCKS = [block for blocks, _ in _PARSED.values() for block in blocks]


def _doc_id(path: pathlib.Path) -> str:
  return str(path.relative_to(_REPO))


# ---------------------------------------------------------------------------
# The parser itself, on a doc written for the test.
# ---------------------------------------------------------------------------


def test_parse_doc_finds_marks_and_problems(tmp_path, monkeypatch):
  monkeypatch.setattr(sys.modules[__name__], "_REPO", tmp_path)
  doc = tmp_path / "doc.md"
  doc.write_text(
    "# A doc\n"
    "<!-- docs-test: run -->\n"
    "```sh\n"
    "echo one\n"
    "```\n"
    "```python\n"
    "print('not shell')\n"
    "```\n"
    "<!-- docs-test: skip cloud -->\n"
    "```bash\n"
    "gcloud storage ls\n"
    "```\n"
    "```sh\n"
    "echo unmarked\n"
    "```\n"
    "<!-- docs-test: skip wifi -->\n"
    "```sh\n"
    "echo unknown need\n"
    "```\n"
    "<!-- docs-test: run -->\n"
    "\n"
    "Text, then a block: the mark is not on the line before it.\n"
    "````sh\n"
    "```\n"
    "````\n"
  )
  blocks, problems = parse_doc(doc)
  assert [(b.line, b.mark, b.need) for b in blocks] == [
    (3, "run", ""),
    (10, "skip", "cloud"),
    (13, "", ""),
    (17, "", ""),
    (23, "", ""),
  ]
  assert blocks[0].text == "echo one"
  assert blocks[4].text == "```"  # a longer fence holds a shorter one
  assert [p.split(": ")[0] for p in problems] == [
    "doc.md:13",
    "doc.md:16",
    "doc.md:20",
    "doc.md:23",
  ]
  assert "unknown mark 'skip wifi'" in problems[1]
  assert "mark with no shell block" in problems[2]


# ---------------------------------------------------------------------------
# The repository's docs.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("doc", _DOCS, ids=_doc_id)
def test_shell_blocks_are_marked(doc):
  _, problems = _PARSED[doc]
  assert not problems, "\n".join(problems)


_SKIPPED = [
  block for block in _BLOCKS if block.mark == "skip" and not block.runs
]


@pytest.mark.parametrize(
  "block", _SKIPPED, ids=[f"{b.where}-{b.need}" for b in _SKIPPED]
)
def test_doc_needs(block):
  first = block.text.strip().splitlines()[0] if block.text.strip() else ""
  pytest.skip(
    f"{block.where} needs {block.need}: {NEEDS[block.need]} ({first})"
  )


_XLA_CACHE_ENV = (
  "JAX_COMPILATION_CACHE_DIR",
  "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
  "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES",
  "JAX_COMPILATION_CACHE_MAX_SIZE",
)


def _environment(root: pathlib.Path) -> dict[str, str]:
  """The small, offline environment the blocks run in."""
  bin_dir = str(pathlib.Path(sys.executable).parent)
  (root / "home").mkdir()
  env = {
    "PATH": os.pathsep.join([bin_dir, "/usr/local/bin", "/usr/bin", "/bin"]),
    "HOME": str(root / "home"),
    "LANG": "C.UTF-8",
    # The checkout first; then the caller's own entries (T5X's sources, for
    # a T5X that is importable here without being installed).
    "PYTHONPATH": os.pathsep.join(
      [str(_REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    ),
    "VIRTUAL_ENV": str(pathlib.Path(bin_dir).parent),
    "DSS_PAPER_DATA_DIR": str(_SLICES),
    "TFDS_DATA_DIR": str(root / "tensorflow_datasets"),
    "NO_GCE_CHECK": "true",
    "JAX_PLATFORMS": "cpu",
    "CUDA_VISIBLE_DEVICES": "",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    # No network: a request to anything but this machine goes to a closed
    # port (port 9, discard) and fails at once instead of downloading.
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
  }
  # The suite's compilation cache (conftest.py): the blocks compile the
  # programs other tests compiled already (speed only, same programs).
  env.update({k: v for k, v in os.environ.items() if k in _XLA_CACHE_ENV})
  return env


def _checkout(root: pathlib.Path) -> pathlib.Path:
  """A folder that looks like a checkout: the repository's entries linked."""
  work = root / "checkout"
  work.mkdir()
  for name in _CHECKOUT:
    if (_REPO / name).exists():
      (work / name).symlink_to(_REPO / name)
  return work


def _run_block(block: Block, work: pathlib.Path, env, state: pathlib.Path):
  """Runs one block after the state (exports, folder) the last one left."""
  script = "\n".join(
    [
      "set -eo pipefail",
      f'if [ -f "{state}" ]; then source "{state}"; fi',
      block.text,
      # The next block starts from this block's variables and folder.
      f'{{ export -p; printf "cd %q\\n" "$PWD"; }} > "{state}"',
    ]
  )
  start = time.monotonic()
  try:
    done = subprocess.run(
      ["bash", "--noprofile", "--norc", "-c", script],
      cwd=work,
      env=env,
      stdin=subprocess.DEVNULL,
      capture_output=True,
      text=True,
      timeout=_BLOCK_TIMEOUT_S,
    )
  except subprocess.TimeoutExpired as e:
    # TimeoutExpired keeps bytes even under text=True.
    output = (e.stdout or b"").decode(errors="replace")[-3000:]
    return (
      f"{block.where}: still running after {_BLOCK_TIMEOUT_S} s; make the "
      f"doc's command small, or mark it 'skip long'\n{block.text}\n{output}"
    )
  if done.returncode:
    took = time.monotonic() - start
    output = (done.stdout + done.stderr)[-3000:]
    return (
      f"{block.where}: exit status {done.returncode} after {took:.1f} s\n"
      f"--- block ---\n{block.text}\n--- output (tail) ---\n{output}"
    )
  return None


_RUN_DOCS = [
  doc for doc in _DOCS if any(block.runs for block in _PARSED[doc][0])
]


@pytest.mark.slow
@pytest.mark.parametrize("doc", _RUN_DOCS, ids=_doc_id)
def test_doc_runs(doc, tmp_path):
  assert (_SLICES / "cqa").is_dir(), f"{_SLICES} is missing"
  env = _environment(tmp_path)
  work = _checkout(tmp_path)
  state = tmp_path / "state.sh"
  ran = []
  for block in _PARSED[doc][0]:
    if not block.runs:
      continue
    failure = _run_block(block, work, env, state)
    assert failure is None, failure
    ran.append(block.where)
  assert ran
