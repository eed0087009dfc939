"""The plan before work (`dss_jax.plan`, `--dry_run`) and the memory check.

* `dss-jax grid --task_card=cqa --dry_run` (the paper's CQA grid) prints
  teacher calls, tokens, dollars, FLOPs and the accelerators in seconds, as
  a real subprocess, and writes nothing;
* the parameter and AdamW byte counts equal a real train state's exactly;
* the whole estimate meets XLA's compiled buffer sizes of a real training
  step within 20%, and the step's measured peak RSS growth (a subprocess)
  within 20%;
* a student that cannot fit is refused in one line naming the flags, by the
  dry run and by the real job before its teacher is called.
"""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest

from dss_jax import errors, flops, optimizers, partitioning, plan
from dss_jax import step as step_lib
from dss_jax.distill import config as job_config
from dss_jax.distill import job as distill_job
from dss_jax.models import t5
from dss_jax.models.config import t5_1_1_config


def _rows(path: pathlib.Path) -> int:
  with path.open() as f:
    return sum(1 for line in f if line.strip())


def _env(repo_dir, paper_data_dir):
  env = dict(os.environ)
  env["PYTHONPATH"] = f"{repo_dir}:{env.get('PYTHONPATH', '')}"
  env["DSS_PAPER_DATA_DIR"] = str(paper_data_dir)
  return env


def test_dry_run_prints_the_paper_cqa_grid_plan_in_seconds(
  tmp_path, repo_dir, paper_data_dir
):
  out_dir = tmp_path / "out"
  start = time.monotonic()
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "dss_jax",
      "grid",
      "--task_card=cqa",
      "--dry_run",
      f"--out_dir={out_dir}",
    ],
    cwd=tmp_path,
    env=_env(repo_dir, paper_data_dir),
    capture_output=True,
    text=True,
    timeout=300,
  )
  elapsed = time.monotonic() - start
  assert elapsed < 60, elapsed
  text = proc.stdout
  calls = _rows(paper_data_dir / "cqa" / "cqa_train.json") + _rows(
    paper_data_dir / "cqa" / "cqa_test.json"
  )
  # Replayed PaLM outputs: one call per train and test row, at $0.
  assert f"| {calls:,} | train " in text
  assert "$0.00" in text and "replay: $0" in text
  assert "mean of the paper's released PaLM completions" in text
  # The paper grid: its methods x sizes x fractions x seeds.
  config = job_config.make_config({"card": "cqa"}, grid=True)
  assert f"| total | | {len(config.specs())} |" in text
  step = flops.train_flops_per_step(
    job_config.student_config("base", 32_100, 0.1), 128, 1024, 256
  )
  assert f"| dss_gold | base | {len(config.fractions) * 3} | 128 | " in text
  assert f"{step * config.train_steps:.3g}" in text
  for name in ("TPU v4", "TPU v5e", "TPU v5p", "A100 80GB", "H100 SXM"):
    assert f"{name}/run" in text
  assert "37.3%: the T5-Base model step measured on an H100" in text
  assert "GFLOP/s float32 matmul (measured now)" in text
  small = 4 * plan.parameter_count(
    job_config.student_config("small", 32_100, 0.1)
  )
  mib = 2**20
  assert (
    f"| small | {small / mib:.0f} MiB | {2 * small / mib:.0f} MiB |" in text
  )
  # The paper's padded 1024 + 256 tokens at 128 sequences a step need far
  # more than a CPU host has: the plan is printed, then the refusal the run
  # would make (the dry run itself succeeds).
  assert proc.returncode == 0, proc.stderr[-2000:]
  last = text.strip().splitlines()[-1]
  assert last.startswith("the run would stop here: t5 small float32 needs ~")
  # The flag values that would fit, then the other ways out.
  assert "; use --microbatches=" in last
  assert "or a smaller --model_sizes or --batch_size" in last
  # Nothing written: no output folder, nothing in the working directory.
  assert not out_dir.exists()
  assert list(tmp_path.iterdir()) == []


def test_teacher_dollars_at_the_named_model_price(paper_data_dir, monkeypatch):
  config = job_config.make_config(
    {
      "card": "cqa",
      "backend": "gemini",
      "teacher_model": "gemini-2.5-flash",
      "paper_data_dir": str(paper_data_dir),
    }
  )
  teacher = plan.teacher_plan(config)
  assert teacher.calls == sum(teacher.rows.values()) > 0
  price_in, price_out = (0.30, 2.50)
  expected = (
    teacher.input_tokens * price_in + teacher.output_tokens * price_out
  ) / 1e6
  assert teacher.dollars == pytest.approx(expected, rel=1e-4)
  assert teacher.dollars > 0
  # Without the paper's data the counts are unknown, not guessed (another
  # test in this process may have set the variable).
  monkeypatch.delenv("DSS_PAPER_DATA_DIR", raising=False)
  unknown = plan.teacher_plan(job_config.make_config({"card": "cqa"}))
  assert unknown.calls is None and unknown.dollars is None
  job = dataclasses.replace(job_config.job_plan(config, 1e11), teacher=unknown)
  text = plan.format_plan(job)
  assert "| unknown | unknown | unknown | unknown | unknown |" in text
  assert "the paper's data is not here" in text


def _step_setup(
  size, vocab, rows, li, lt, dropout, dtype="float32", microbatches=1
):
  if size in ("tiny", "small"):
    config = t5_1_1_config(
      size, vocab_size=-(-vocab // 128) * 128, dropout_rate=dropout
    )
    config = dataclasses.replace(config, dtype=dtype)
  else:
    config = job_config.student_config(size, vocab, dropout, dtype)
  trainer = step_lib.Trainer(
    t5.Transformer(config),
    optimizers.AdamW(
      learning_rate=optimizers.LearningRateSchedule(peak=1e-3, name="linear")
    ).build(10),
    partitioning.Partitioner(devices=jax.devices()[:1]),
    dropout=dropout > 0,
    num_microbatches=microbatches,
  )
  batch = {
    name: jnp.ones((rows, length), jnp.int32)
    for name, length in (
      ("encoder_input_tokens", li),
      ("decoder_input_tokens", lt),
      ("decoder_target_tokens", lt),
      ("decoder_loss_weights", lt),
    )
  }
  return config, trainer, batch


def test_parameter_and_optimizer_bytes_equal_a_real_state():
  config, trainer, batch = _step_setup("demo", 259, 8, 16, 8, 0.0)
  state = trainer.init_state(jax.random.PRNGKey(0), batch)
  memory = plan.memory_of("demo", config, 8, 16, 8)
  params = sum(x.nbytes for x in jax.tree_util.tree_leaves(state.params))
  moments = sum(
    x.nbytes for x in jax.tree_util.tree_leaves(state.opt_state) if x.ndim > 0
  )
  assert memory.parameters == params
  assert memory.gradients == params
  assert memory.optimizer == moments


@pytest.mark.parametrize(
  "setting",
  [("demo", 259, 64, 64, 26, 0.0), ("tiny", 32_100, 16, 256, 64, 0.1)],
)
def test_memory_estimate_meets_the_compiled_step(setting):
  size, vocab, rows, li, lt, dropout = setting
  config, trainer, batch = _step_setup(*setting)
  compiled = (
    jax.jit(trainer._step, donate_argnums=(0,))
    .lower(trainer.abstract_state(batch), batch)
    .compile()
  )
  stats = compiled.memory_analysis()
  # Inputs (state and batch) plus temporaries; the new state aliases the
  # donated one.
  measured = stats.argument_size_in_bytes + stats.temp_size_in_bytes
  estimate = plan.memory_of(size, config, rows, li, lt).total
  assert estimate == pytest.approx(measured, rel=0.2)


_RSS_SCRIPT = """
import json, pathlib, sys
from dss_jax import host
dtype, micro, kept = sys.argv[2], int(sys.argv[3]), sys.argv[4] == "kept"
if kept:  # as every entry point does, before JAX computes anything
  assert host.keep_freed_memory()
import jax
sys.path.insert(0, sys.argv[1])
import plan_test
from dss_jax import plan

def status(key):
  for line in pathlib.Path("/proc/self/status").read_text().splitlines():
    if line.startswith(key + ":"):
      return int(line.split()[1]) * 1024

setting = ("demo-l", 8100, 16, 256, 64, 0.1)
config, trainer, batch = plan_test._step_setup(*setting, dtype, micro)
step = jax.jit(trainer._step, donate_argnums=(0,)).lower(
  trainer.abstract_state(batch), batch).compile()
state = trainer.init_state(jax.random.PRNGKey(0), batch)
jax.block_until_ready(state)
base = status("VmRSS")
pathlib.Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM
# The kept heap settles within 10 steps (the same peak after 30).
for _ in range(10 if kept else 3):
  state, _ = step(state, batch)
jax.block_until_ready(state)
memory = plan.memory_of(setting[0], config, *setting[2:5], microbatches=micro)
print(json.dumps({"growth": status("VmHWM") - base,
                  "estimate": memory.activations + memory.gradients}))
"""


@pytest.mark.slow
@pytest.mark.parametrize(
  "dtype, microbatches, kept",
  [
    ("float32", 1, ""),
    ("bfloat16", 1, ""),
    ("float32", 4, ""),
    ("float32", 1, "kept"),
  ],
)
def test_memory_estimate_meets_a_training_step_peak_rss(
  repo_dir, dtype, microbatches, kept
):
  if not pathlib.Path("/proc/self/clear_refs").exists():
    pytest.fail("needs Linux's /proc/self/clear_refs to reset the peak RSS")
  proc = subprocess.run(
    [
      sys.executable,
      "-c",
      _RSS_SCRIPT,
      str(repo_dir / "tests"),
      dtype,
      str(microbatches),
      kept or "default",
    ],
    # One malloc arena: with one per busy thread the same step's peak RSS
    # follows the machine's load, not the step (float32, 4 micro-batches:
    # 121 MB idle, 155-183 MB under load; one arena: 133-149 MB either way).
    env={**_env(repo_dir, repo_dir), "MALLOC_ARENA_MAX": "1"},
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  # With the state in memory, three steps add the gradients and the step's
  # activations and temporaries.
  print(dtype, microbatches, kept, got)
  if not kept:
    assert got["estimate"] == pytest.approx(got["growth"], rel=0.2)
  else:
    # Keeping freed memory (the entry points' setting) holds 2.5-2.7 or 3.6
    # times the live temporaries (the same step, from run to run); the
    # host-RAM check counts them KEPT_HEAP_FACTOR times.
    assert got["growth"] > 1.5 * got["estimate"]
    assert got["growth"] <= plan.KEPT_HEAP_FACTOR * got["estimate"]


def test_a_student_that_cannot_fit_is_refused_in_one_line(tmp_path):
  config = job_config.make_config(
    {
      "model_sizes": ("xxl",),
      "seeds": (0,),
      "methods": ("finetune",),
      "out_dir": str(tmp_path / "out"),
      "workers": 1,
    }
  )
  job = job_config.job_plan(config, cpu_peak_flops=1e11)
  with pytest.raises(errors.UserError) as e:
    plan.check_memory(job)
  message = str(e.value)
  assert "\n" not in message
  assert message.startswith("t5 xxl float32 needs ~")
  assert "per device" in message and "host RAM" in message
  assert "use a smaller --model_sizes or --batch_size" in message
  # The real job refuses too, before the teacher is called or TFDS built.
  with pytest.raises(errors.UserError, match="^t5 xxl float32 needs"):
    distill_job.run(config, log=lambda line: None)
  assert not (tmp_path / "out" / "annotations").exists()
  assert not (tmp_path / "out" / "tfds").exists()
  # The demo fits this host, but not a 1 MB device shared by 2 workers.
  demo = job_config.job_plan(job_config.make_config({}), cpu_peak_flops=1e11)
  plan.check_memory(demo)
  small = dataclasses.replace(demo, device_memory_bytes=1e6, workers=2)
  with pytest.raises(errors.UserError, match="2 runs side by side.*workers=1"):
    plan.check_memory(small)


def test_the_host_ram_check_counts_the_heap_a_cpu_process_keeps():
  # The suite's process keeps freed memory as every entry point does
  # (conftest.py), so the plan a user's CPU job gets counts it.
  job = job_config.job_plan(job_config.make_config({}), cpu_peak_flops=1e11)
  assert job.kept_heap
  [memory] = job.memory
  temporaries = memory.gradients + memory.activations
  assert job.needs(memory) == pytest.approx(
    memory.total + (plan.KEPT_HEAP_FACTOR - 1) * temporaries
  )
  # RAM that holds the step's live bytes but not the kept heap: refused.
  ram = (memory.total + job.needs(memory)) / 2
  tight = dataclasses.replace(job, device_memory_bytes=ram, workers=1)
  with pytest.raises(errors.UserError, match="x4 for the heap this process"):
    plan.check_memory(tight)
  plan.check_memory(dataclasses.replace(tight, kept_heap=False))
  assert "counts a step's gradients and activations x4" in plan.format_plan(job)


def test_the_refusal_names_the_partitions_and_micro_batches_that_fit():
  config = job_config.make_config(
    {
      "card": "cqa",
      "model_sizes": ("xxl",),
      "seeds": (0,),
      "methods": ("finetune",),
      "activation_dtype": "bfloat16",
      # A short step, so that the state is what does not fit.
      "batch_size": 8,
      "inputs_length": 256,
      "label_length": 16,
    }
  )
  job = job_config.job_plan(config, cpu_peak_flops=1e11)
  assert job.memory[0].parameters > 40 * plan.GIB  # 11B float32 parameters
  # On an 80 GB accelerator: the state alone is too big for one chip, so
  # only model partitions help, not accumulation.
  h100 = dataclasses.replace(
    job,
    device_name="H100 SXM",
    device_memory_bytes=80e9,
    workers=1,
    kept_heap=False,
  )
  with pytest.raises(errors.UserError) as e:
    plan.check_memory(h100)
  message = str(e.value)
  assert message.startswith("t5 xxl bfloat16 needs ~"), message
  assert (
    "; use --num_partitions=" in message and "--microbatches" not in message
  )
  parts = int(message.split("--num_partitions=")[1].split(" ")[0].strip(","))
  assert job.memory_with("xxl", 1, parts, "bfloat16").total <= 80e9
  assert job.memory_with("xxl", 1, parts // 2, "bfloat16").total > 80e9
  # Accumulation shrinks the activations: a base student whose batch does
  # not fit is told the micro-batches that would.
  base = job_config.job_plan(
    job_config.make_config(
      {
        "card": "cqa",
        "model_sizes": ("base",),
        "seeds": (0,),
        "methods": ("finetune",),
        "activation_dtype": "bfloat16",
      }
    ),
    cpu_peak_flops=1e11,
  )
  whole = base.memory[0]
  # Two micro-batches fit: half the activations, a second gradient.
  limit = whole.total - whole.activations / 2 + whole.gradients
  small = dataclasses.replace(
    base,
    device_name="H100 SXM",
    device_memory_bytes=limit,
    workers=1,
    kept_heap=False,
  )
  with pytest.raises(errors.UserError, match="--microbatches=2,"):
    plan.check_memory(small)
  # More micro-batches: smaller activations, a second gradient buffer.
  one, four = (
    base.memory_with("base", 1, 1, "bfloat16"),
    base.memory_with("base", 4, 1, "bfloat16"),
  )
  assert four.activations == pytest.approx(one.activations / 4)
  assert four.gradients == 2 * one.gradients
  # bfloat16 halves the activations but the float32 logits (on
  # accelerators; XLA:CPU computes bfloat16 in float32 buffers).
  f32 = base.memory_with("base", 1, 1, "float32")
  if jax.default_backend() == "cpu":
    assert one.activations == f32.activations
  else:
    assert one.activations < 0.75 * f32.activations
