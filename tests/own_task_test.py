"""A user's own task, from the user's side: a card written outside the repo.

The end-to-end test writes a 50-row yes/no task (card and JSON-lines files)
in a temporary folder, annotates it through the fake OpenAI-compatible
teacher on 127.0.0.1 (`python -m dss_jax.annotate --task_cards=...`), builds
its TFDS dataset, lists it with `dss-jax tasks`, trains the tiny model a few
steps with `python -m dss_jax.train` and scores every checkpoint with
`python -m dss_jax.eval`, each a real subprocess that finds the card through
`DSS_TASK_CARDS` or `--task_cards` only. The other tests pin the errors: a
card that does not load names its file and line, a card never takes a
built-in card's (or another card's) name, a missing path names the variable
or flag.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from dss_jax import cards
from dss_jax.teacher.testing import FakeTeacherServer

CARD = """\
# Is a whole number even? A yes/no task of the user's own.
name: parity
description: Is a whole number even? The label is yes or no.
source:
  files: {train: data/train.jsonl, test: data/test.jsonl}
  id_field: id
  label_field: label
  input_fields: [question]
input_template: "{question}"
answer_type: free
labels: ["yes", "no"]
prompt:
  instruction: Answer with yes or no after one step of reasoning.
  exemplar_template: "Q: {input}\\nA: {rationale} So the answer is {label}."
  query_template: "Q: {input}\\nA:"
  stop: ["\\n\\nQ:"]
parser:
  cut_at: ["Q:"]
  answer_marker: So the answer is
  label_regex: "yes|no"
exemplars:
  - fields: {question: "Is 12 even?"}
    rationale: 12 = 2 * 6, so 12 is even.
    label: "yes"
  - fields: {question: "Is 7 even?"}
    rationale: 7 = 2 * 3 + 1, so 7 is odd.
    label: "no"
"""
SOURCE = "test_model"  # the fake teacher's model "test-model", TFDS-safe
TRAIN_ROWS, TEST_ROWS = 50, 16


def _rows(start: int, count: int, split: str) -> list[dict]:
  return [
    {
      "id": f"{split}-{n}",
      "question": f"Is {n} even?",
      "label": "yes" if n % 2 == 0 else "no",
    }
    for n in range(start, start + count)
  ]


def _write_task(folder: pathlib.Path, text: str = CARD) -> pathlib.Path:
  """The card and its data files, as a user writes them; returns the card."""
  (folder / "data").mkdir(parents=True, exist_ok=True)
  for split, rows in (
    ("train", _rows(100, TRAIN_ROWS, "train")),
    ("test", _rows(300, TEST_ROWS, "test")),
  ):
    lines = [json.dumps(row) for row in rows]
    (folder / "data" / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
  card = folder / "parity.yaml"
  card.write_text(text)
  return card


def _teacher(prompt: str) -> str:
  """Reasons about the last question; wrong when the number ends in 7."""
  n = int(re.findall(r"Q: Is (\d+) even\?", prompt)[-1])
  even = n % 2 == 0 if n % 10 != 7 else True
  kind = "even" if even else "odd"
  answer = "yes" if even else "no"
  return f"{n} is {kind}. So the answer is {answer}.\n\nQ: Is 3 even?"


def _env(**extra: str) -> dict[str, str]:
  repo = str(pathlib.Path(__file__).resolve().parents[1])
  env = {
    k: v
    for k, v in os.environ.items()
    if k not in (cards.TASK_CARDS_ENV, "TFDS_DATA_DIR")
  }
  env.update(
    PYTHONPATH=os.pathsep.join([repo, env.get("PYTHONPATH", "")]),
    JAX_PLATFORMS="cpu",
    XLA_FLAGS="",
    OPENAI_API_KEY="k",
  )
  env.update(extra)
  return env


def _run(args: list[str], env: dict[str, str], cwd, timeout=300):
  return subprocess.run(
    [sys.executable, "-m", *args],
    capture_output=True,
    text=True,
    env=env,
    cwd=cwd,
    timeout=timeout,
    check=False,
  )


def _error_lines(stderr: str) -> list[str]:
  return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


@pytest.mark.slow
def test_own_card_end_to_end(tmp_path):
  """Card -> fake teacher -> TFDS -> tasks -> train -> eval, all by env."""
  work = tmp_path / "mine"  # the user's empty folder
  card = _write_task(work)
  tfds_dir = work / "tfds"
  with FakeTeacherServer(responder=_teacher) as server:
    annotate = _run(
      [
        "dss_jax.annotate",
        f"--task_cards={work}",  # the folder of cards
        "--card=parity",  # found by its name
        "--split=train",
        "--backend=openai",
        "--model=test-model",
        f"--base_url={server.url}/v1",
        "--store=annotations/parity.jsonl",
        "--build_tfds",
        f"--data_dir={tfds_dir}",
        "--noprogress",
      ],
      _env(),
      work,
    )
    assert server.counts["requests"] == TRAIN_ROWS
  assert annotate.returncode == 0, annotate.stderr[-3000:]
  assert f"{TRAIN_ROWS}/{TRAIN_ROWS} examples annotated" in annotate.stdout
  # 5 of 50 numbers end in 7 and the teacher calls each of them even.
  assert "teacher accuracy vs gold 90.00%" in annotate.stdout
  assert (tfds_dir / "dss_annotated" / f"parity_{SOURCE}").is_dir()

  env = _env(DSS_TASK_CARDS=str(card), TFDS_DATA_DIR=str(tfds_dir))
  listing = _run(["dss_jax", "tasks"], env, work)
  assert listing.returncode == 0, listing.stderr[-3000:]
  assert listing.stderr == ""  # no TensorFlow or absl lines
  block = listing.stdout.split("card parity: ", 1)[1].split("\ncard ", 1)[0]
  assert block.startswith(f"{card}\n  source {SOURCE}\n"), block
  assert (
    f"splits (dss_annotated/parity_{SOURCE}, built): train 45, "
    "validation 5 (held out of train), test 16" in block
  )
  assert (
    f"mixture dss_parity_{SOURCE}: rates dss_parity_{SOURCE}_label 1, "
    f"dss_parity_{SOURCE}_rationale 1 (lambda)" in block
  )
  # The built-in cards are listed beside it.
  assert "card svamp: " in listing.stdout

  model_dir = work / "run"
  train = _run(
    [
      "dss_jax.train",
      "--gin_file=tiny.gin",
      f'--gin.MODEL_DIR="{model_dir}"',
      f'--gin.MIXTURE_OR_TASK_NAME="dss_parity_{SOURCE}"',
      "--gin.TRAIN_STEPS=4",
      "--gin.CHECKPOINT_PERIOD=2",
      "--gin.BATCH_SIZE=4",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 32}",
      "--gin.trainer.train.peak_flops=1e12",  # skips the matmul probe
    ],
    env,
    work,
  )
  assert train.returncode == 0, train.stderr[-3000:]
  steps = sorted(int(p.name) for p in (model_dir / "checkpoints").iterdir())
  assert steps == [2, 4]

  # Eval-only over every checkpoint; this time the card comes by the flag.
  evaluate = _run(
    [
      "dss_jax.eval",
      f"--task_cards={card}",
      "--gin_file=models/t5_1_1_tiny.gin",
      "--gin_file=runs/eval.gin",
      f'--gin.CHECKPOINT_PATH="{model_dir}"',
      f'--gin.MIXTURE_OR_TASK_NAME="dss_parity_{SOURCE}_label"',
      '--gin.CHECKPOINT_MODE="all"',
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}",
      "--gin.BATCH_SIZE=8",
      "--gin.dss_jax.vocab.get_vocabulary.name='byte'",
    ],
    _env(TFDS_DATA_DIR=str(tfds_dir)),
    work,
  )
  assert evaluate.returncode == 0, evaluate.stderr[-3000:]
  scored = [
    json.loads(x) for x in evaluate.stdout.splitlines() if x.startswith("{")
  ]
  assert [x["step"] for x in scored] == [2, 4], evaluate.stdout
  for result in scored:
    assert 0.0 <= result[f"dss_parity_{SOURCE}_label/accuracy"] <= 100.0
  # T5X's layout: one metrics line per scored checkpoint.
  metrics = model_dir / "inference_eval"
  lines = (metrics / f"dss_parity_{SOURCE}_label-metrics.jsonl").read_text()
  assert [json.loads(x)["step"] for x in lines.splitlines()] == [2, 4]


# ---------------------------------------------------------------- errors


def test_card_that_does_not_load_names_file_and_line(tmp_path):
  card = _write_task(tmp_path, CARD.replace("answer_type:", "answer_typ:"))
  from dss_jax import seqio_tasks

  with pytest.raises(cards.CardError) as e:
    seqio_tasks.register_user_cards(str(card))
  assert str(e.value).startswith(f"{card}: line 10: ")
  assert "answer_typ" in str(e.value)


def test_duplicate_yaml_key_names_file_and_line(tmp_path):
  card = _write_task(tmp_path, CARD + "metric: accuracy\nmetric: accuracy\n")
  with pytest.raises(cards.CardError) as e:
    cards.user_cards(str(card))
  first = CARD.count("\n") + 1
  assert str(e.value) == (
    f"{card}: line {first + 1}: invalid YAML: duplicate key 'metric' (first "
    f"at line {first}); keep one"
  )


def test_missing_path_names_the_variable_and_the_path(tmp_path):
  missing = tmp_path / "no_such_cards"
  with pytest.raises(cards.CardError) as e:
    cards.user_cards(f"{tmp_path}:{missing}")
  assert str(e.value).startswith(
    f"DSS_TASK_CARDS: {missing}: no such card file or folder"
  )


@pytest.mark.parametrize("name", ["svamp", "arith"])
def test_card_with_a_builtin_name_is_refused(tmp_path, name):
  card = _write_task(tmp_path, CARD.replace("name: parity", f"name: {name}"))
  builtin = cards.TASKS_DIR / f"{name}.yaml"
  expected = (
    f"{card}: line 2: name: {name!r} is the name of the built-in card "
    f"{builtin}; rename your card"
  )
  for load in (cards.load_card, cards.user_cards):
    with pytest.raises(cards.CardError) as e:
      load(str(card))
    assert str(e.value).startswith(expected), str(e.value)
  # A byte-exact copy of a built-in card is that card, not a rival.
  copy = tmp_path / "copy" / f"{name}.yaml"
  copy.parent.mkdir()
  copy.write_bytes(builtin.read_bytes())
  assert cards.load_card(str(copy)).name == name
  assert cards.user_cards(str(copy)) == []


def test_two_cards_with_one_name_are_refused(tmp_path):
  first = _write_task(tmp_path / "a")
  second = _write_task(tmp_path / "b")
  with pytest.raises(cards.CardError) as e:
    cards.user_cards(f"{tmp_path / 'a'}:{second}")
  assert str(e.value) == (
    f"{second}: line 2: name: 'parity' is also the name of {first} (both in "
    "DSS_TASK_CARDS); rename one of them"
  )


def test_user_card_registers_palm_and_built_sources(tmp_path, monkeypatch):
  from dss_jax import seqio_tasks

  card = _write_task(tmp_path)
  # A built source of this card, and one of a card whose name starts with
  # the same letters: only the first is this card's.
  for config in ("parity_mine", "parity_v2_other"):
    version = tmp_path / "tfds" / "dss_annotated" / config / "1.0.0"
    version.mkdir(parents=True)
  other = tmp_path / "v2"
  _write_task(other, CARD.replace("name: parity", "name: parity_v2"))
  monkeypatch.setenv(cards.TASK_CARDS_ENV, f"{card}:{other}")
  names = seqio_tasks.register_user_cards(data_dir=str(tmp_path / "tfds"))
  assert "dss_parity_mine" in names
  assert "dss_parity_v2_other" in names
  by_mixture = {r.mixture: r for r in seqio_tasks.registrations()}
  assert by_mixture["dss_parity_mine"].card_path == str(card)
  # Not card parity with source "v2_other": the longer card name wins.
  mixture = by_mixture["dss_parity_v2_other"]
  assert (mixture.card, mixture.source) == ("parity_v2", "other")


def test_entry_points_report_card_errors_in_one_line(
  tmp_path, monkeypatch, run_entry_point
):
  card = _write_task(tmp_path, CARD.replace("name: parity", "name: svamp"))
  missing = tmp_path / "nowhere.yaml"
  cases = [
    # (command, environment, the start of the one error line); in-process
    # as `__main__` (run_entry_point), except the last, which needs a fresh
    # process's first `import dss_jax.seqio_tasks`.
    (["dss_jax", "tasks", f"--task_cards={missing}"], {}, "--task_cards: "),
    (["dss_jax", "tasks"], {"DSS_TASK_CARDS": str(missing)}, "DSS_TASK_CARDS"),
    (["dss_jax.infer", f"--task_cards={missing}"], {}, "--task_cards: "),
    (["dss_jax", "tasks"], {"DSS_TASK_CARDS": str(card)}, f"{card}: line 2"),
    (
      ["dss_jax.train", f"--task_cards={card}", "--gin_file=tiny.gin"],
      {},
      f"{card}: line 2",
    ),
    # The main job's own route, a card by path: refused before it starts.
    (
      [
        "dss_jax",
        "distill",
        f"--task_card={card}",
        "--teacher=offline",
        f"--out_dir={tmp_path / 'out'}",
      ],
      {},
      f"{card}: line 2",
    ),
    # Read by the gin file's `import dss_jax.seqio_tasks`, as T5X reads it.
    (
      ["dss_jax.train", "--gin_file=tiny.gin"],
      {"DSS_TASK_CARDS": str(card)},
      f"{card}: line 2",
    ),
  ]
  monkeypatch.chdir(tmp_path)
  for name in (cards.TASK_CARDS_ENV, "TFDS_DATA_DIR"):
    monkeypatch.delenv(name, raising=False)
  for i, (args, extra, start) in enumerate(cases):
    if i == len(cases) - 1:
      run = _run(args, _env(**extra), tmp_path, timeout=120)
    else:
      with monkeypatch.context() as env:
        for name, value in extra.items():
          env.setenv(name, value)
        run = run_entry_point(*args)
    assert run.returncode == 2, (args, run.stderr[-2000:])
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    (line,) = _error_lines(run.stderr)
    assert line.startswith(f"error: {start}"), line
  assert not (tmp_path / "out").exists()
