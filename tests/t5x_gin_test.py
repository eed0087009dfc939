"""Tests of the T5X gin files in gin_configs/t5x/.

Always (no T5X needed): every file parses with gin's own parser, and every
(model, method, dataset) composition, with includes followed, resolves its
macros to the paper's settings and to task names our SeqIO registry has.

With T5X installed (as docs/tpu.md describes): the same compositions parse
with T5X's configurables, and a tiny T5X model trains a few steps through
`python -m t5x.train` on a DSS mixture from our registry, starting from a
checkpoint this project wrote; `python -m t5x.eval` scores it; and the
checkpoint restores into our model. Without T5X those tests skip, saying so.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any, NamedTuple

import gin
import pytest
from gin import config_parser

from dss_jax import errors, resources, vocab
from dss_jax import step as step_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
GIN_DIR = REPO / "gin_configs" / "t5x"
CARDS = ("cqa", "svamp", "anli1", "esnli")
MODELS = tuple(
  f"{family}_{size}"
  for family in ("t5_1_1", "flan_t5")
  for size in ("small", "base", "large", "xl", "xxl")
)
# Method run file -> (training task macro, label source or None).
METHODS = {
  "standard_finetune": ("GOLD_FINETUNE_TASK", None),
  "standard_distill": ("DISTILL_TASK", None),
  "dss_gold": ("DSS_MIXTURE", "gold"),
  "dss_teacher": ("DSS_MIXTURE", "teacher"),
  "dss_official": ("DSS_PAIRED_TASK", "gold"),
  "dss_official_teacher": ("DSS_PAIRED_TASK", "teacher"),
}
# Sequences a step trains on, per method, at the paper's settings (64 inputs
# a step; the XXL students 32): the baselines and the official recipe count
# inputs (an official example holds both sequences of its input), the sampled
# mixture counts sequences, twice the inputs.
PAPER_BATCH = {
  "standard_finetune": (64, 32),
  "standard_distill": (64, 32),
  "dss_gold": (128, 64),
  "dss_teacher": (128, 64),
  "dss_official": (64, 32),
  "dss_official_teacher": (64, 32),
}
# Eval and infer files -> the task macro they run.
EVAL_FILES = {
  "eval_dss": "DSS_LABEL_TASK",
  "eval_standard": "GOLD_FINETUNE_TASK",
  "infer_dss": "DSS_LABEL_TASK",
  "infer_rationale": "DSS_RATIONALE_TASK",
  "infer_standard": "GOLD_FINETUNE_TASK",
}
# Files that other files include; they are not launched on their own.
PARTS = ("train", "eval_common", "infer_common", "models/student")
T5X_INSTALLED = importlib.util.find_spec("t5x") is not None
NO_T5X = "T5X is not installed (docs/tpu.md says how; it is not on PyPI)"


_ROWS_PER_STEP = "dss_jax.step.rows_per_step"


class Ref(NamedTuple):
  """`@name` or `@name()` in a gin value."""

  name: str
  evaluate: bool


class Macro(NamedTuple):
  """`%NAME` in a gin value."""

  name: str


class _Delegate(config_parser.ParserDelegate):
  """Keeps references as plain values, so no configurable must exist."""

  def configurable_reference(self, scoped_configurable_name, evaluate):
    return Ref(scoped_configurable_name, evaluate)

  def macro(self, macro_name):
    return Macro(macro_name)


def _parse(path: pathlib.Path) -> list[Any]:
  with path.open() as f:
    return list(config_parser.ConfigParser(f, _Delegate()))


def _gin_files() -> list[pathlib.Path]:
  return sorted(GIN_DIR.rglob("*.gin"))


class Composition:
  """The bindings of gin files parsed in order, includes followed.

  T5X's own files (`t5x/...`) are recorded, not read, so this works without
  T5X; what they define is checked by the T5X tests below.
  """

  def __init__(self, *names: str):
    self.macros: dict[str, Any] = {}
    self.bindings: dict[tuple[str, str, str], Any] = {}
    self.t5x_includes: list[str] = []
    self.macros_used: set[str] = set()
    for name in names:
      self._read(GIN_DIR / f"{name}.gin")

  def _read(self, path: pathlib.Path) -> None:
    for statement in _parse(path):
      if isinstance(statement, config_parser.IncludeStatement):
        if statement.filename.startswith("t5x/"):
          self.t5x_includes.append(statement.filename)
        else:
          self._read(REPO / statement.filename)
      elif isinstance(statement, config_parser.BindingStatement):
        self._collect_macros(statement.value)
        if not statement.arg_name and "." not in statement.selector:
          self.macros[statement.selector] = statement.value
        else:
          key = (statement.scope, statement.selector, statement.arg_name)
          self.bindings[key] = statement.value

  def _collect_macros(self, value: Any) -> None:
    if isinstance(value, Macro):
      self.macros_used.add(value.name)
    elif isinstance(value, dict):
      for v in value.values():
        self._collect_macros(v)
    elif isinstance(value, list | tuple) and not isinstance(value, Ref):
      for v in value:
        self._collect_macros(v)

  def resolve(self, value: Any) -> Any:
    """Follows macro chains (`%A` bound to `%B` ...) to a value.

    `@dss_jax.step.rows_per_step()` (the mixture's rows) is called with its
    bindings, as gin would: it needs no T5X.
    """
    seen = set()
    while isinstance(value, Macro):
      assert value.name not in seen, f"macro cycle at {value.name}"
      seen.add(value.name)
      assert value.name in self.macros, f"macro {value.name} is never bound"
      value = self.macros[value.name]
    if value == Ref(_ROWS_PER_STEP, True):
      return step_lib.rows_per_step(
        **{
          arg: self.resolve(v)
          for (scope, selector, arg), v in self.bindings.items()
          if selector == _ROWS_PER_STEP and not scope
        }
      )
    return value

  def macro(self, name: str) -> Any:
    return self.resolve(Macro(name))

  def binding(self, selector: str, arg: str, scope: str = "") -> Any:
    return self.resolve(self.bindings[(scope, selector, arg)])


# ---------------------------------------------------------------------------
# Always: syntax and composition.


def test_every_gin_file_parses_and_documents_itself():
  files = _gin_files()
  # 10 model sizes + tiny + student, 4 datasets, 6 methods, packing, train, 2
  # eval, 3 infer and their 2 shared parts.
  assert len(files) >= 31
  for path in files:
    statements = _parse(path)
    assert statements, path
    header = path.read_text().split("\n\n")[0]
    assert header.startswith("# "), f"{path} has no header comment"
    rel = path.relative_to(GIN_DIR).with_suffix("").as_posix()
    if rel not in PARTS:
      assert "python -m t5x." in header, f"{path}: header shows no command"
    # Every include must name a file of ours that exists, or T5X's own.
    for s in statements:
      if isinstance(s, config_parser.IncludeStatement):
        if not s.filename.startswith("t5x/"):
          assert (REPO / s.filename).is_file(), f"{path}: {s.filename}"


def test_run_headers_list_required_macros():
  for name in [*METHODS, *EVAL_FILES]:
    header = (GIN_DIR / f"{name}.gin").read_text().split("\n\n")[0]
    assert "REQUIRED macros:" in header, name


@pytest.mark.parametrize("model", MODELS)
def test_model_files_point_at_public_checkpoints(model):
  family, size = model.rsplit("_", 1)
  comp = Composition(f"models/{model}", "dss_gold", "datasets/cqa")
  assert comp.t5x_includes[0] == f"t5x/examples/t5/t5_1_1/{size}.gin"
  path = comp.macro("INITIAL_CHECKPOINT_PATH")
  assert path.startswith(f"gs://t5-data/pretrained_models/t5x/{family}_{size}/")
  assert path.rsplit("/", 1)[1].startswith("checkpoint_")
  # The paper's XXL student used batch 32 and 4k steps; all others 64 / 10k.
  # The DSS mixture's batch is twice that (see test_batch_and_packing).
  expected = (32, 4000) if size == "xxl" else (64, 10000)
  assert (
    comp.macro("PAPER_BATCH_SIZE"),
    comp.macro("TRAIN_STEPS"),
  ) == expected
  assert comp.macro("INPUTS_PER_STEP") == expected[0]
  assert comp.macro("EXAMPLES_PER_STEP") == 2 * expected[0]
  assert (
    comp.binding("optax.linear_schedule", "transition_steps") == (expected[1])
  )


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_batch_and_packing(model, method):
  comp = Composition(f"models/{model}", method, "datasets/cqa")
  # finetune.gin packs train and train_eval rows; ours must not, so that
  # BATCH_SIZE counts examples as the paper's batch does.
  for scope in ("train", "train_eval"):
    assert comp.binding("utils.DatasetConfig", "pack", scope=scope) is False
  mixture, official = PAPER_BATCH[method]
  expected = official if model.endswith("_xxl") else mixture
  assert comp.macro("BATCH_SIZE") == expected
  # Official examples hold both halves: BATCH_SIZE inputs, 2 x sequences.
  # The mixture samples its halves: BATCH_SIZE sequences, half of them (at
  # lambda 1) label examples. Either way the paper's 64 (XXL 32) inputs.
  inputs = 32 if model.endswith("_xxl") else 64
  if method.startswith("dss_official"):
    assert comp.macro("BATCH_SIZE") == inputs
    assert comp.macro("MODEL") == Ref(
      "t5x_official.PairedEncoderDecoderModel", True
    )
    assert comp.binding(
      "t5x_official.PairedEncoderDecoderModel", "rationale_rate"
    ) == (1.0)
  elif method.startswith("dss_"):
    assert comp.macro("BATCH_SIZE") == 2 * inputs
  else:
    assert comp.macro("BATCH_SIZE") == inputs


def test_the_mixture_rows_follow_the_inputs_and_the_old_macro_must_agree(
  caplog,
):
  comp = Composition("models/t5_1_1_base", "dss_gold", "datasets/cqa")
  comp.macros["PAPER_BATCH_SIZE"] = 16  # --gin.PAPER_BATCH_SIZE=16
  assert comp.macro("BATCH_SIZE") == 32
  comp.macros["INPUTS_PER_STEP"] = 8  # --gin.INPUTS_PER_STEP=8 wins
  assert comp.macro("BATCH_SIZE") == 16
  # PAPER_MIXTURE_BATCH_SIZE counted rows; a user's old override is refused
  # when it disagrees (never silently ignored), and warned about otherwise.
  comp.macros["PAPER_MIXTURE_BATCH_SIZE"] = 64
  with pytest.raises(
    errors.UserError,
    match=r"PAPER_MIXTURE_BATCH_SIZE=64 is no longer read: .* set "
    r"INPUTS_PER_STEP \(or PAPER_BATCH_SIZE\) to 32 for 64 rows",
  ):
    comp.macro("BATCH_SIZE")
  comp.macros["PAPER_MIXTURE_BATCH_SIZE"] = 65
  with pytest.raises(errors.UserError, match=r"\(the mixture trains 2 rows"):
    comp.macro("BATCH_SIZE")
  comp.macros["PAPER_MIXTURE_BATCH_SIZE"] = 16
  with caplog.at_level("WARNING"):
    assert comp.macro("BATCH_SIZE") == 16
  assert "PAPER_MIXTURE_BATCH_SIZE is deprecated" in caplog.text


@pytest.mark.parametrize("method", ["dss_gold", "standard_finetune"])
def test_packing_file_packs_with_its_own_batch(method):
  comp = Composition("models/t5_1_1_base", method, "datasets/cqa", "packing")
  for scope in ("train", "train_eval"):
    assert comp.binding("utils.DatasetConfig", "pack", scope=scope) is True
  assert comp.macros["BATCH_SIZE"] == Macro("PACKED_ROWS")
  # Required: the rows that hold the paper's examples depend on the data.
  assert comp.macros["PACKED_ROWS"] == Macro("gin.REQUIRED")
  # The step's examples are the unpacked batch, packed into PACKED_ROWS.
  converter = "input_pipeline.StepPackedEncDecFeatureConverter"
  assert comp.bindings[("", converter, "rows_per_step")] == Macro("PACKED_ROWS")
  examples = comp.binding(converter, "examples_per_step")
  assert examples == (128 if method == "dss_gold" else 64)


@pytest.mark.parametrize("card", CARDS)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_and_dataset_compose(card, method):
  comp = Composition("models/t5_1_1_base", method, f"datasets/{card}")
  task_macro, label_source = METHODS[method]
  names = {
    "DSS_MIXTURE": f"dss_{card}_palm",
    "DSS_LABEL_TASK": f"dss_{card}_palm_label",
    "GOLD_FINETUNE_TASK": f"dss_{card}_gold_finetune",
    "DISTILL_TASK": f"dss_{card}_palm_distill",
    "DSS_PAIRED_TASK": f"dss_{card}_palm_paired",
  }
  assert comp.macro("MIXTURE_OR_TASK_NAME") == names[task_macro]
  # Inference eval during training scores labels: the label task for DSS,
  # the gold no-prefix task for the baselines.
  eval_task = "DSS_LABEL_TASK" if label_source else "GOLD_FINETUNE_TASK"
  assert comp.macro("EVAL_TASK_NAME") == names[eval_task]
  assert (
    comp.binding(
      "utils.DatasetConfig", "mixture_or_task_name", scope="infer_eval"
    )
    == names[eval_task]
  )
  if label_source:
    options = "dss_jax.seqio_tasks.options"
    assert comp.binding(options, "label_source") == label_source
    assert comp.binding(options, "rationale_rate") == 1.0
  # Paper hyperparameters and the loss normalization that makes the mixture
  # rate lambda.
  assert comp.macro("LOSS_NORMALIZING_FACTOR") == "AVERAGE_PER_SEQUENCE"
  assert comp.macro("LEARNING_RATE") == 5e-5
  assert comp.macro("TASK_FEATURE_LENGTHS")["inputs"] == 1024
  assert comp.macro("OPTIMIZER") == Ref("optimizers.chain", True)
  assert comp.binding("optax.adamw", "learning_rate") == Ref(
    "optax.linear_schedule", True
  )
  assert comp.binding("optax.linear_schedule", "end_value") == 0.0
  assert comp.binding("utils.RestoreCheckpointConfig", "assignment_map") == (
    ("state.*", None),
  )
  assert comp.macro("VOCABULARY") == Ref("dss_jax.vocab.get_vocabulary", True)
  # One macro names the vocabulary file; offline, a local copy goes there.
  assert comp.bindings[("", "dss_jax.vocab.get_vocabulary", "name")] == Macro(
    "VOCABULARY_PATH"
  )
  assert comp.macro("VOCABULARY_PATH") == vocab.T5_SPM_PATH
  assert comp.t5x_includes == [
    "t5x/examples/t5/t5_1_1/base.gin",
    "t5x/configs/runs/finetune.gin",
  ]
  # Every macro our files use is bound in our files (T5X's REQUIRED ones are
  # set on the command line, e.g. MODEL_DIR).
  assert comp.macros_used <= set(comp.macros), comp.macros_used - set(
    comp.macros
  )


@pytest.mark.parametrize("card", CARDS)
@pytest.mark.parametrize("name", sorted(EVAL_FILES))
def test_eval_and_infer_compose(card, name):
  comp = Composition("models/t5_1_1_base", name, f"datasets/{card}")
  expected = {
    "DSS_LABEL_TASK": f"dss_{card}_palm_label",
    "DSS_RATIONALE_TASK": f"dss_{card}_palm_rationale",
    "GOLD_FINETUNE_TASK": f"dss_{card}_gold_finetune",
  }[EVAL_FILES[name]]
  assert comp.macro("MIXTURE_OR_TASK_NAME") == expected
  assert comp.macro("DROPOUT_RATE") == 0.0
  # The split is a macro with the default named in the shared file, so
  # --gin.EVAL_SPLIT (eval) or --gin.SPLIT (infer) is never ignored.
  split_macro = "EVAL_SPLIT" if name.startswith("eval") else "SPLIT"
  assert comp.bindings[("", "utils.DatasetConfig", "split")] == Macro(
    split_macro
  )
  assert comp.binding("utils.DatasetConfig", "split") == "test"
  script = "eval" if name.startswith("eval") else "infer"
  assert comp.t5x_includes[-1] == f"t5x/configs/runs/{script}.gin"
  assert comp.macros_used <= set(comp.macros)


def test_dataset_task_names_are_registered():
  import seqio

  from dss_jax import cards, seqio_tasks

  for card in CARDS:
    assert card in cards.list_cards()
    seqio_tasks.register_card(card, "palm")
    registered = set(seqio.TaskRegistry.names()) | set(
      seqio.MixtureRegistry.names()
    )
    comp = Composition(f"datasets/{card}")
    for macro, name in comp.macros.items():
      assert name in registered, f"{macro}={name} is not a registered name"


# ---------------------------------------------------------------------------
# With T5X: T5X's own parse, and a real train / eval / restore round trip.


@contextlib.contextmanager
def _main_module(module_name: str) -> Iterator[None]:
  """T5X run gins `import __main__`: make it the T5X script being run."""
  import importlib

  saved = sys.modules["__main__"]
  sys.modules["__main__"] = importlib.import_module(module_name)
  try:
    yield
  finally:
    sys.modules["__main__"] = saved


def _t5x_parse(files: list[str], bindings: tuple[str, ...] = ()) -> None:
  import t5x

  gin.clear_config(clear_constants=True)
  gin.add_config_file_search_path(str(REPO))
  gin.add_config_file_search_path(
    os.path.dirname(os.path.dirname(t5x.__file__))
  )
  gin.parse_config_files_and_bindings(
    [str(GIN_DIR / f"{f}.gin") for f in files],
    bindings,
    finalize_config=False,
  )


@pytest.fixture
def clean_gin():
  yield
  gin.clear_config(clear_constants=True)


@pytest.mark.t5x
@pytest.mark.skipif(not T5X_INSTALLED, reason=NO_T5X)
def test_t5x_parses_every_composition(clean_gin):
  del clean_gin
  combos = [(f"models/{m}", "dss_gold", "datasets/cqa") for m in MODELS]
  combos += [
    ("models/t5_1_1_base", method, f"datasets/{card}")
    for method in METHODS
    for card in CARDS
  ]
  for files in combos:
    with _main_module("t5x.train"):
      _t5x_parse(list(files))
    # T5X's own files now take part: its model gin binds the factor to None
    # and finetune.gin BATCH_SIZE to 128 packed rows; ours must win.
    factor = gin.query_parameter("%LOSS_NORMALIZING_FACTOR")
    assert factor == "AVERAGE_PER_SEQUENCE", files
    assert str(gin.query_parameter("%BATCH_SIZE")) == "%EXAMPLES_PER_STEP"
    examples = gin.query_parameter("%EXAMPLES_PER_STEP")
    if files[1] in ("dss_gold", "dss_teacher"):
      # Derived from the inputs by the function gin calls.
      assert str(examples) == f"@{_ROWS_PER_STEP}()"
      rows = examples.scoped_configurable_fn()
    else:
      assert str(examples) == "%INPUTS_PER_STEP"
      assert str(gin.query_parameter("%INPUTS_PER_STEP")) == "%PAPER_BATCH_SIZE"
      rows = gin.query_parameter("%PAPER_BATCH_SIZE")
    assert rows in PAPER_BATCH[files[1]]
    for scope in ("train", "train_eval"):
      assert gin.query_parameter(f"{scope}/utils.DatasetConfig.pack") is False
  for name in EVAL_FILES:
    script = "t5x.eval" if name.startswith("eval") else "t5x.infer"
    split_macro = "EVAL_SPLIT" if name.startswith("eval") else "SPLIT"
    files = ["models/t5_1_1_base", name, "datasets/svamp"]
    with _main_module(script):
      _t5x_parse(files)
    # T5X's own eval.gin / infer.gin bind the split too; ours must win.
    split = gin.query_parameter("utils.DatasetConfig.split")
    assert str(split) == f"%{split_macro}"
    assert gin.query_parameter(f"%{split_macro}") == "test"
    with _main_module(script):
      _t5x_parse(files, (f"{split_macro} = 'validation'",))
    assert gin.query_parameter(f"%{split_macro}") == "validation"
    with _main_module(script):
      _t5x_parse(files, ("VOCABULARY_PATH = 'byte'",))
    name = gin.query_parameter("dss_jax.vocab.get_vocabulary.name")
    assert str(name) == "%VOCABULARY_PATH"
    # The model's and the tasks' vocabulary, as T5X builds it.
    assert vocab.get_vocabulary() == vocab.get_vocabulary("byte")


def _t5x_env(tfds_dir: pathlib.Path) -> dict[str, str]:
  env = dict(os.environ)
  env["TFDS_DATA_DIR"] = str(tfds_dir)
  # One CPU device: the run is about the wiring, not sharding, and is faster.
  env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(
    "--xla_force_host_platform_device_count=8", ""
  )
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _run(
  args: list[str],
  env: dict[str, str],
  log: pathlib.Path,
  cwd: pathlib.Path = REPO,
) -> None:
  with log.open("w") as f:
    proc = subprocess.run(
      [sys.executable, "-m", *args],
      cwd=cwd,
      env=env,
      stdout=f,
      stderr=subprocess.STDOUT,
      timeout=600,
      check=False,
    )
  if proc.returncode != 0:
    tail = log.read_text()[-4000:]
    pytest.fail(f"{' '.join(args[:1])} exited {proc.returncode}:\n{tail}")


@pytest.mark.t5x
@pytest.mark.skipif(not T5X_INSTALLED, reason=NO_T5X)
def test_t5x_trains_evals_and_restores_into_our_model(
  tmp_path, paper_data_dir, monkeypatch
):
  import jax
  import jax.numpy as jnp
  import numpy as np

  from dss_jax import datasets, t5x_checkpoints
  from dss_jax.models import t5

  monkeypatch.setenv("DSS_PAPER_DATA_DIR", str(paper_data_dir))
  tfds_dir = tmp_path / "tfds"
  datasets.build_annotated("svamp", "palm", data_dir=str(tfds_dir))

  # The dimensions of T5X's t5_1_1/tiny.gin with our tiny.gin's vocabulary.
  model, _ = t5.make_test_model(
    vocab_size=384, emb_dim=8, num_heads=4, head_dim=3, mlp_dim=16
  )
  tokens = jnp.ones((2, 8), jnp.int32)
  init = model.init(
    jax.random.key(0), tokens, tokens, tokens, enable_dropout=False
  )
  init_params = jax.tree.map(np.asarray, init["params"])
  # Like the public checkpoints: T5X's legacy format at a large step.
  initial = t5x_checkpoints.save_t5x_checkpoint(
    init_params, tmp_path / "pretrained", step=1_000_000
  )

  env = _t5x_env(tfds_dir)
  model_dir = tmp_path / "model"
  steps = 3
  _run(
    [
      "t5x.train",
      "--gin_file=gin_configs/t5x/models/tiny.gin",
      "--gin_file=gin_configs/t5x/dss_teacher.gin",
      "--gin_file=gin_configs/t5x/datasets/svamp.gin",
      f"--gin.MODEL_DIR='{model_dir}'",
      f"--gin.INITIAL_CHECKPOINT_PATH='{initial}'",
      f"--gin.TRAIN_STEPS={steps}",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 128, 'targets': 64}",
      # Scoring happens below through t5x.eval; skip it during training.
      "--gin.train.train_eval_dataset_cfg=None",
      "--gin.train.infer_eval_dataset_cfg=None",
    ],
    env,
    tmp_path / "train.log",
  )
  # The optimizer state and step of the initial checkpoint were dropped: the
  # run counted from 0, and its first checkpoint holds our parameters.
  assert (model_dir / "checkpoint_0").is_dir()
  assert (model_dir / f"checkpoint_{steps}").is_dir()
  at_start = t5x_checkpoints.read_params(model_dir, step=0)
  for name, value in t5x_checkpoints._flatten(init_params).items():
    np.testing.assert_allclose(at_start[name], value, rtol=1e-6, err_msg=name)

  eval_dir = tmp_path / "eval"
  # From another folder, as from an installed package: the files and their
  # includes resolve from the one search path dss_jax.resources prints.
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  _run(
    [
      "t5x.eval",
      f"--gin_search_paths={resources.gin_search_path()}",
      "--gin_file=gin_configs/t5x/models/tiny.gin",
      "--gin_file=gin_configs/t5x/eval_dss.gin",
      "--gin_file=gin_configs/t5x/datasets/svamp.gin",
      f"--gin.CHECKPOINT_PATH='{model_dir}/checkpoint_{steps}'",
      f"--gin.EVAL_OUTPUT_DIR='{eval_dir}'",
      "--gin.utils.DatasetConfig.batch_size=8",
      "--gin.seqio.Evaluator.num_examples=8",
    ],
    env,
    tmp_path / "eval.log",
    cwd=elsewhere,
  )
  metrics_file = (
    eval_dir / "inference_eval" / "dss_svamp_palm_label-metrics.jsonl"
  )
  metrics = [json.loads(line) for line in metrics_file.read_text().splitlines()]
  assert metrics and metrics[-1]["step"] == steps
  assert 0.0 <= metrics[-1]["accuracy"] <= 100.0

  # T5X's checkpoint restores into our model, and the parameters trained.
  trained = t5x_checkpoints.load_params(model_dir, init_params, step=steps)
  moved = [
    float(np.abs(trained_leaf - init_leaf).max())
    for trained_leaf, init_leaf in zip(
      jax.tree.leaves(trained), jax.tree.leaves(init_params), strict=True
    )
  ]
  assert max(moved) > 0.0
  logits = model.apply(
    {"params": trained}, tokens, tokens, tokens, enable_dropout=False
  )
  assert logits.shape == (2, 8, 384)
  assert bool(jnp.isfinite(logits).all())
