"""The main job's data stages: the teacher's annotations and the TFDS build.

`DataStages(config)` holds the job's card and output folder; `annotate`
(stage 1) asks the teacher for what the append-only store lacks, and
`build_dataset` (stage 2) builds the annotated TFDS dataset; each skips work
already done and redoes or refuses work made from other inputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import pathlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import tensorflow_datasets as tfds
from absl import logging

from dss_jax import (
  cards,
  datasets,
  errors,
)
from dss_jax.distill.config import (
  AnnotationIncompleteError,
  ConfigError,
  DistillConfig,
)
from dss_jax.teacher import jobs, runner
from dss_jax.teacher import store as store_lib


def _changed_keys(marker: pathlib.Path, identity: Mapping[str, Any]) -> str:
  """The values of `identity` that differ from those `marker` recorded."""
  try:
    stored = json.loads(marker.read_text()).get("identity")
  except (OSError, ValueError, AttributeError):
    stored = None
  if not isinstance(stored, dict):
    return "what it was made from (not recorded)"
  return ", ".join(
    f"{key} {stored.get(key)!r} -> {identity.get(key)!r}"
    if key not in ("card_sha256", "source_files")
    else {"card_sha256": "the card", "source_files": "the source files"}[key]
    for key in sorted(set(stored) | set(identity))
    if stored.get(key) != identity.get(key)
  )


def _stored_dollars(marker: pathlib.Path) -> float:
  """The teacher's cost a finished annotation recorded (0 if unreadable)."""
  try:
    return float(json.loads(marker.read_text())["stats"]["cost_usd"])
  except (OSError, ValueError, KeyError, TypeError):
    return 0.0


class DataStages:
  """The job's data stages; each skips work that is already done."""

  def __init__(self, config: DistillConfig, log: Callable[[str], None] = print):
    """Prepares the output folder.

    Args:
      config: the job.
      log: where progress lines go.
    """
    self.config = config
    self.out_dir = pathlib.Path(config.out_dir)
    if self.out_dir.exists() and not self.out_dir.is_dir():
      raise ConfigError(
        "out_dir", f"={config.out_dir} is a file; give a folder for the job"
      )
    with store_lib.os_faults(self.out_dir, "creating the output folder"):
      self.out_dir.mkdir(parents=True, exist_ok=True)
    self.log = log
    self._card: cards.TaskCard | None = None
    # What the teacher's calls cost, as the runner counted them (the plan's
    # actual dollars in summary.md).
    self.teacher_dollars = 0.0

  @property
  def card(self) -> cards.TaskCard:
    if self._card is None:
      self._card = cards.load_card(self.config.card)
    return self._card

  @property
  def store_path(self) -> pathlib.Path:
    return (
      self.out_dir
      / "annotations"
      / f"{self.card.name}_{self.config.source_name}.jsonl"
    )

  # ------------------------------------------------------------- annotation
  def annotate(self) -> None:
    """Stage 1: the teacher writes rationales and labels (skipped for replay)."""
    config = self.config
    marker = (
      self.out_dir
      / "annotations"
      / f"{self.card.name}_{config.source_name}.done"
    )
    if config.backend == "replay":
      self.log("annotate: replaying the paper's released teacher outputs")
      return
    identity = config.annotation_identity()
    if marker.exists():
      changed = _changed_keys(marker, identity)
      if not changed:
        self.log(f"annotate: done before ({marker})")
        self.teacher_dollars = _stored_dollars(marker)
        return
      # The store keeps every answer; only what it lacks is asked for.
      self.log(
        f"annotate: {changed} changed since {marker} was written; asking the "
        "teacher for what the store lacks"
      )
    job = jobs.plan_job(
      self.card,
      config.annotate_splits,
      num_samples=config.num_samples,
      paper_data_dir=config.paper_data_dir,
      skip_missing_splits=True,
    )
    examples, requests = job.examples, job.requests
    backend = jobs.make_teacher(config.teacher, self.card, job.root)
    self.log(f"annotate: {len(requests)} teacher calls to {backend.name}")
    self.store_path.parent.mkdir(parents=True, exist_ok=True)
    stats = runner.annotate(
      backend,
      requests,
      str(self.store_path),
      runner.RunnerConfig(
        concurrency=config.concurrency,
        requests_per_minute=config.requests_per_minute,
        progress=config.progress,
        max_retry_wait_s=config.max_retry_wait_s,
      ),
    )
    summary = runner.summarize(
      self.card, examples, requests, str(self.store_path), backend.name
    )
    self.log(
      f"annotate: {stats.completed} calls made, {stats.already_stored} stored "
      f"before, {stats.failed} failed; {summary.unparsable} unparsable; "
      f"teacher accuracy {summary.accuracy:.1f}% over {summary.annotated}"
    )
    self.teacher_dollars = stats.cost_usd
    if stats.failed:
      raise AnnotationIncompleteError(
        f"{stats.failed} of {len(requests)} teacher calls failed; rerun the "
        "same command to retry them"
      )
    marker.write_text(
      json.dumps(
        {"identity": identity, "stats": dataclasses.asdict(stats)}, indent=2
      )
    )

  # -------------------------------------------------------------------- TFDS
  def build_dataset(self) -> None:
    """Stage 2: the annotated TFDS dataset (tfds skips a prepared one)."""
    config = self.config
    start = time.monotonic()
    # TFDS prints its own banners to stdout and draws nested bars for a
    # build of seconds; the stage line below says what happened.
    tfds.disable_progress_bar()
    banners = io.StringIO()
    with contextlib.redirect_stdout(banners):
      builder = self.build()
    if banners.getvalue().strip():
      logging.info("tfds: %s", banners.getvalue().strip())
    self.log(
      f"tfds: {datasets.tfds_name(self.card.name, config.source_name)} in "
      f"{builder.data_dir} ({time.monotonic() - start:.1f}s)"
    )
    self._check_counts(datasets.annotation_counts(builder))

  def build(self) -> tfds.core.DatasetBuilder:
    """The job's annotated dataset (`datasets.build_annotated`)."""
    config = self.config
    return datasets.build_annotated(
      config.card,
      config.source_name,
      data_dir=config.data_dir,
      store=None if config.backend == "replay" else str(self.store_path),
      paper_data_dir=config.paper_data_dir,
      log=self.log,
    )

  def _check_counts(self, counts: Mapping[str, Mapping[str, int]]) -> None:
    """Refuses to train what the data cannot give: rationales for a
    distilling step-by-step run, gold labels to score the test split."""

    def count(split: str, what: str) -> tuple[int, int] | None:
      found = counts.get(self.card.source.splits.get(split, split))
      found = found or counts.get(split)
      return (found[what], found["examples"]) if found else None

    rationales = count("train", "rationales")
    uses_rationales = any(s.uses_rationales for s in self.config.specs())
    if uses_rationales and rationales is not None and not rationales[0]:
      where = (
        self.store_path
        if self.config.backend != "replay"
        else "the released outputs"
      )
      raise errors.UserError(
        f"no rationales to distill: 0 of {rationales[1]} train examples "
        f"have a parsable teacher answer (in {where}); check the teacher's "
        "answers against the card's parser, or train only "
        "--methods=finetune"
      )
    gold = count("test", "gold_labels")
    if gold is not None and not gold[0]:
      raise errors.UserError(
        f"the test split of {self.card.path or self.card.name} has no gold "
        f"labels (0 of {gold[1]} rows have field "
        f"{self.card.source.label_field!r}); the job scores its students on "
        "them: give a labeled test split"
      )

  def teacher_accuracy(self, split: str = "test") -> float | None:
    """The teacher's accuracy against gold on a split (None if unannotated)."""
    name = f"{self.card.name}_{self.config.source_name}_{split}"
    cache = self.out_dir / f"teacher_accuracy_{name}.json"
    builder = self.build()
    # Scored from this build of the dataset only.
    built = datasets.inputs_digest(builder)
    if cache.exists():
      cached = json.loads(cache.read_text())
      if cached.get("dataset") == built:
        return cached["accuracy"]
    if split not in builder.info.splits:
      return None
    total = correct = 0
    for row in builder.as_dataset(split=split).as_numpy_iterator():
      teacher = row["teacher_label"].decode()
      if not row["teacher"] or not row["gold_label"]:
        # Not annotated on this split, or no gold label to score against;
        # unparsable answers count as wrong.
        continue
      total += 1
      correct += self.card.is_correct(
        teacher or None, row["gold_label"].decode()
      )
    accuracy = correct / total if total else None
    cache.write_text(
      json.dumps({"accuracy": accuracy, "examples": total, "dataset": built})
    )
    return accuracy

  def teacher_name(self) -> str:
    if self.config.backend == "replay":
      return "PaLM 540B"
    if self.config.backend == "offline":
      return "offline teacher"
    return self.config.teacher_model or self.config.backend
