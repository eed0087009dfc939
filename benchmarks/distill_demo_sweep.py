r"""Proxy sweep behind the offline demo's defaults (docs/distill.md).

Standard finetuning against distilling step-by-step (the sampled 1 : 1
mixture, per-sequence loss) on the demo's arithmetic problems, with the
demo's students (`dss_jax.models.t5`), AdamW and linear decay, the offline
teacher's rationales; the three seeds of a cell train at once under
`jax.vmap`, and batches are sampled with replacement in the jitted loop (no
SeqIO, no TFDS, so it runs wherever JAX does, a GPU included). Test
accuracy is greedy decoding of the label task on 300 test problems.

    python benchmarks/distill_demo_sweep.py CONFIGS.json PART NPARTS OUT.jsonl
    python benchmarks/distill_demo_sweep.py --smoke   # one tiny cell, seconds

CONFIGS.json is a list of cells, e.g.

    [{"gen": {"min_ops": 2, "max_ops": 2, "max_operand": 9, "max_factor": 5},
      "size": "demo", "steps": 1000, "batch": 32, "lr": 3e-3,
      "n_train": 1800, "cells": [["ft", 1.0], ["dss", 1.0], ["dss", 0.5]]}]

PART/NPARTS split the list over processes (several share one GPU). The
results of 2026-11-30 are the table in docs/distill.md, "How the demo was
chosen": its "full sentences" rows come from the problem text before the
terse templates (git history of dss_jax/synthetic.py).

`--smoke` runs `SMOKE_CELL` (the smallest student distilling for a few
steps, 16 test problems) and prints its record; OUT.jsonl is optional
there (tests/benchmarks_test.py runs it).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dss_jax import losses, optimizers, synthetic
from dss_jax.models import config, t5
from dss_jax.models.config import T5Config
from dss_jax.teacher.backends import offline

SIZES = {
  # The demo's own students, and wider ones for the sweep.
  "xs": config.STUDENT_SIZES["demo-xs"],
  "demo": config.STUDENT_SIZES["demo"],
  "m": dict(
    emb_dim=96,
    num_heads=4,
    head_dim=24,
    mlp_dim=192,
    num_encoder_layers=2,
    num_decoder_layers=2,
  ),
  "l": config.STUDENT_SIZES["demo-l"],
  "l2": dict(
    emb_dim=128,
    num_heads=4,
    head_dim=32,
    mlp_dim=256,
    num_encoder_layers=2,
    num_decoder_layers=2,
  ),
}


def enc(text, length):
  ids = [b + 3 for b in text.encode()][: length - 1] + [1]
  return ids + [0] * (length - len(ids))


def make_data(gen, n_train, n_test):
  train = synthetic.generate_problems(n_train, split="train", seed=0, **gen)
  seen = {p.question for p in train}
  test = [
    p
    for p in synthetic.generate_problems(
      2 * n_test, split="test", seed=0, **gen
    )
    if p.question not in seen
  ][:n_test]
  teacher = offline.OfflineTeacher()
  rows = []
  for p in train:
    text, _ = teacher.solve(p.question)
    rat = text.split("The answer is")[0].strip()
    rows.append((p.question, str(p.answer), rat))
  tacc = np.mean([teacher.solve(p.question)[1] == p.answer for p in test])
  lin = max(len(p.question) for p in train + test) + 10 + 1
  lin = -(-lin // 8) * 8
  lt = max(len(r[2]) for r in rows) + 1
  lab = max(len(r[1]) for r in rows) + 2

  def arr(xs, n):
    return jnp.asarray(np.array([enc(x, n) for x in xs], np.int32))

  d = dict(
    ft_in=arr([r[0] for r in rows], lin),
    pred_in=arr(["predict: " + r[0] for r in rows], lin),
    expl_in=arr(["explain: " + r[0] for r in rows], lin),
    lab_t=arr([r[1] for r in rows], lab),
    lab_tl=arr([r[1] for r in rows], lt),
    rat_t=arr([r[2] for r in rows], lt),
    test_ft=arr([p.question for p in test], lin),
    test_pred=arr(["predict: " + p.question for p in test], lin),
    test_gold=[str(p.answer) for p in test],
  )
  return d, dict(lin=lin, lt=lt, lab=lab, tacc=float(tacc), n=len(rows))


def shift(t):
  return jnp.pad(t, ((0, 0), (1, 0)))[:, :-1]


def run(cfg, d, meta, seeds=(0, 1, 2)):
  size = cfg["size"]
  model = t5.Transformer(
    T5Config(vocab_size=384, dropout_rate=0.0, **SIZES[size])
  )
  steps, B, lr = cfg["steps"], cfg["batch"], cfg["lr"]
  tx = optimizers.AdamW(
    learning_rate=optimizers.LearningRateSchedule(
      peak=lr, name="linear", warmup_steps=cfg.get("warmup", 50)
    )
  ).build(steps)
  n = meta["n"]
  results = {}
  for method, frac in cfg["cells"]:
    dss = method == "dss"
    lt = meta["lt"] if dss else meta["lab"]

    def loss_fn(params, e, t):
      logits = model.apply(
        {"params": params}, e, shift(t), t, enable_dropout=False
      )
      loss, _ = losses.cross_entropy_loss(
        logits, t, normalization="per_sequence"
      )
      return loss

    def step(carry, key, perm, n_use, dss=dss):
      params, opt = carry
      k1, k2 = jax.random.split(key)
      if dss:
        idx = perm[jax.random.randint(k1, (2 * B,), 0, n_use)]
        task = jax.random.bernoulli(k2, cfg.get("p_label", 0.5), (2 * B,))
        e = jnp.where(task[:, None], d["pred_in"][idx], d["expl_in"][idx])
        t = jnp.where(task[:, None], d["lab_tl"][idx], d["rat_t"][idx])
      else:
        idx = perm[jax.random.randint(k1, (B,), 0, n_use)]
        e, t = d["ft_in"][idx], d["lab_t"][idx]
      loss, g = jax.value_and_grad(loss_fn)(params, e, t)
      up, opt = tx.update(g, opt, params)
      return (optax.apply_updates(params, up), opt), loss

    def train(seed, perm, n_use, lt=lt):
      key = jax.random.PRNGKey(seed)
      ki, kt = jax.random.split(key)
      e0 = jnp.ones((2, meta["lin"]), jnp.int32)
      t0 = jnp.ones((2, lt), jnp.int32)
      params = model.init(ki, e0, t0, t0, enable_dropout=False)["params"]
      opt = tx.init(params)
      (params, _), ls = jax.lax.scan(
        lambda c, k: step(c, k, perm, n_use),
        (params, opt),
        jax.random.split(kt, steps),
      )
      return params, ls[-50:].mean()

    def decode(params, e):
      dec = jnp.zeros((e.shape[0], meta["lab"]), jnp.int32)
      ones = jnp.ones_like(dec)
      for i in range(meta["lab"] - 1):
        logits = model.apply(
          {"params": params}, e, dec, ones, enable_dropout=False
        )
        dec = dec.at[:, i + 1].set(jnp.argmax(logits[:, i], -1))
      return dec[:, 1:]

    n_use = int(frac * n)
    perms = jnp.stack(
      [jnp.asarray(np.random.RandomState(s).permutation(n)) for s in seeds]
    )
    t0 = time.time()
    params, final_loss = jax.jit(jax.vmap(train, (0, 0, None)))(
      jnp.asarray(seeds), perms, n_use
    )
    test_in = d["test_pred"] if dss else d["test_ft"]
    toks = np.asarray(jax.jit(jax.vmap(decode, (0, None)))(params, test_in))
    accs = []
    for s in range(len(seeds)):
      correct = 0
      for row, gold in zip(toks[s], d["test_gold"], strict=True):
        out = []
        for tok in row:
          if tok == 1 or tok == 0:
            break
          out.append(int(tok) - 3)
        pred = bytes([max(0, min(255, x)) for x in out]).decode(
          errors="replace"
        )
        correct += pred == gold
      accs.append(100 * correct / len(d["test_gold"]))
    results[f"{method}@{frac}"] = dict(
      accs=accs,
      mean=float(np.mean(accs)),
      loss=np.asarray(final_loss).tolist(),
      secs=round(time.time() - t0, 1),
    )
  return results


# --smoke: one cell of the smallest student, both methods, a few steps.
SMOKE_CELL = {
  "gen": {"min_ops": 1, "max_ops": 1, "max_operand": 9, "max_factor": 3},
  "size": "xs",
  "steps": 4,
  "warmup": 1,
  "batch": 4,
  "lr": 3e-3,
  "n_train": 32,
  # The distilling cell only: finetuning's is the same code on other arrays,
  # and each cell compiles its own training loop (the smoke run's cost).
  "cells": [["dss", 1.0]],
}
# Test problems per cell (--smoke: 16).
N_TEST = 300


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("configs", nargs="?", help="CONFIGS.json")
  parser.add_argument("part", nargs="?", type=int, default=0)
  parser.add_argument("nparts", nargs="?", type=int, default=1)
  parser.add_argument("out", nargs="?", help="OUT.jsonl (appended to)")
  parser.add_argument(
    "--smoke", action="store_true", help=f"runs only {SMOKE_CELL}"
  )
  args = parser.parse_args(argv)
  if args.smoke:
    configs, n_test = [SMOKE_CELL], 16
  elif args.configs and args.out:
    with open(args.configs) as f:
      configs, n_test = json.load(f), N_TEST
  else:
    parser.error("CONFIGS.json PART NPARTS OUT.jsonl are required")
  out = open(args.out, "a") if args.out else None
  cache = {}
  for i, cfg in enumerate(configs):
    if i % args.nparts != args.part:
      continue
    key = json.dumps([cfg["gen"], cfg.get("n_train", 2000)], sort_keys=True)
    if key not in cache:
      cache[key] = make_data(cfg["gen"], cfg.get("n_train", 2000), n_test)
    d, meta = cache[key]
    t0 = time.time()
    res = run(cfg, d, meta)
    rec = dict(
      cfg=cfg,
      meta={k: v for k, v in meta.items()},
      res=res,
      secs=round(time.time() - t0, 1),
    )
    if out is not None:
      out.write(json.dumps(rec) + "\n")
      out.flush()
    print(json.dumps(rec), flush=True)
  if out is not None:
    out.close()


if __name__ == "__main__":
  main()
