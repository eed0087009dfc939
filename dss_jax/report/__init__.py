"""Tables and plots of distillation results, in the style of the paper.

Reads the results CSV that `dss-jax distill` and `dss-jax grid` write (one row
per finished run) and produces:

* `summary.csv` and `summary.md`: mean, standard deviation, standard error and
  count of the metric per (method, model size, data fraction), at the last
  step; `summary.md` also at the checkpoint picked on validation, whose
  summary is `summary_picked.csv`;
* `accuracy_by_method.png`: one bar per method (mean, standard error, seeds
  as dots) with the teacher's accuracy as a line, for runs at one data size;
* `data_efficiency.png`: distilling step-by-step against % of training data,
  with standard finetuning's full-data mean as a dashed line (the paper's
  claim that it needs less data to match finetuning), when the results have
  distilling step-by-step runs on less data than finetuning's largest;
* `accuracy_vs_data.png`: accuracy against the percentage of training data,
  one line per method with standard-error bars (the paper's Figures 4 and 5);
* `accuracy_vs_size.png`: accuracy against student size, with the teacher's
  few-shot accuracy as a horizontal line (the paper's Figures 6 and 7).

Run on an existing results file (the command line is `report/__main__.py`):

  python -m dss_jax.report --results=runs/grid/results.csv --out_dir=runs/grid
"""

from __future__ import annotations

import csv
import dataclasses
import math
import pathlib
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from dss_jax import errors

if TYPE_CHECKING:
  from matplotlib.axes import Axes

# Columns of the results CSV, in order. `value` is the metric in [0, 1] at the
# last step; `value_picked` the same metric at the checkpoint picked on the
# validation split (`picked_step`), empty when no validation was scored.
RESULT_FIELDS = (
  "card",
  "source",
  "method",
  "model_size",
  "num_params",
  "fraction",
  "seed",
  "metric",
  "value",
  "value_picked",
  "picked_step",
  "steps",
  "train_seconds",
  "run_dir",
  "checkpoint",
)

# The paper's names for the methods, for legends and tables.
METHOD_TITLES = {
  "finetune": "Standard finetuning",
  "distill": "Standard distillation",
  "dss_gold": "Distilling step-by-step",
  "dss_teacher": "Distilling step-by-step (teacher labels)",
}
# Fixed colors so the same method looks the same in every figure.
_METHOD_STYLE = {
  "finetune": ("tab:blue", "o"),
  "distill": ("tab:orange", "s"),
  "dss_gold": ("tab:red", "^"),
  "dss_teacher": ("tab:purple", "v"),
}


@dataclasses.dataclass(frozen=True)
class Summary:
  """The metric over seeds for one (method, model size, fraction) cell."""

  method: str
  model_size: str
  num_params: int
  fraction: float
  metric: str
  mean: float
  std: float
  stderr: float
  count: int
  values: tuple[float, ...]
  card: str = ""


def read_results(path: str | pathlib.Path) -> list[dict[str, str]]:
  """Reads a results CSV; a missing file reads as no rows."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  with path.open(newline="") as f:
    return list(csv.DictReader(f))


# Columns a results row needs to be summarized, and which hold numbers.
_NEEDED = ("method", "model_size", "fraction", "seed", "metric", "value")
_NUMBERS = ("fraction", "value", "value_picked", "num_params")


def check_results(
  rows: Sequence[Mapping[str, str]], path: str | pathlib.Path
) -> None:
  """Refuses a results CSV that cannot be summarized, naming the line.

  Args:
    rows: the rows `read_results` read from `path`.
    path: the CSV, for the message.

  Raises:
    errors.UserError: a needed column is missing or a number is not one.
  """
  missing = [c for c in _NEEDED if c not in rows[0]]
  if missing:
    raise errors.UserError(
      f"{path}: not a results CSV, no column {missing}; it is written by "
      "dss-jax distill (results.csv)"
    )
  for line, row in enumerate(rows, start=2):  # line 1 is the header
    for column in _NUMBERS:
      text = row.get(column)
      if text in ("", None):
        if column in _NEEDED:
          raise errors.UserError(f"{path}:{line}: {column} is empty")
        continue
      try:
        number = float(text)
      except ValueError:
        raise errors.UserError(
          f"{path}:{line}: {column} {text!r} is not a number"
        ) from None
      if not math.isfinite(number):
        raise errors.UserError(f"{path}:{line}: {column} is {text}")
    fraction = float(row["fraction"])
    if not 0 < fraction <= 1:
      raise errors.UserError(
        f"{path}:{line}: fraction {row['fraction']} is not in (0, 1]; it is "
        "the share of the training data a run used (1 = all)"
      )


# Spellings of a per-row `unit` column that mean "values are percentages".
_PERCENT_UNITS = ("%", "percent", "pct")


def to_fractions(
  rows: Sequence[Mapping[str, str]], path: str | pathlib.Path
) -> list[dict[str, str]]:
  """The rows with metric values as fractions in [0, 1].

  Values may be given as fractions (0.59) or percentages (59): a row whose
  optional ``unit`` column says ``%``/``percent`` is a percentage, and so is
  every row of a (card, metric) whose values go above 1 (a metric in [0, 1]
  never does). Check the rows with `check_results` first.

  Args:
    rows: rows of a results CSV.
    path: the CSV, for messages.

  Returns:
    New rows, ``value`` and ``value_picked`` in [0, 1].

  Raises:
    errors.UserError: a negative value, or one above 100 (file:line).
  """
  in_percent: set[tuple[str, str]] = set()
  for line, row in enumerate(rows, start=2):
    for column in ("value", "value_picked"):
      text = row.get(column)
      if text in ("", None):
        continue
      value = float(text)
      if not 0 <= value <= 100:
        raise errors.UserError(
          f"{path}:{line}: {column} {text} is neither a fraction in [0, 1] "
          "nor a percentage in [0, 100]"
        )
      if value > 1:
        in_percent.add((row.get("card", ""), row["metric"]))
  out = []
  for row in rows:
    unit = str(row.get("unit") or "").strip().lower()
    percent = unit in _PERCENT_UNITS or (
      (row.get("card", ""), row["metric"]) in in_percent
    )
    row = dict(row)
    if percent:
      for column in ("value", "value_picked"):
        if row.get(column) not in ("", None):
          row[column] = repr(float(row[column]) / 100)
    out.append(row)
  return out


def append_result(path: str | pathlib.Path, row: Mapping[str, object]) -> None:
  """Appends one run's row to a results CSV, writing the header if new.

  Args:
    path: the CSV file.
    row: values keyed by `RESULT_FIELDS`; missing keys are left empty.

  Raises:
    KeyError: `row` has a key that is not a result field.
  """
  unknown = set(row) - set(RESULT_FIELDS)
  if unknown:
    raise KeyError(f"not result fields: {sorted(unknown)}")
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  is_new = not path.exists() or path.stat().st_size == 0
  with path.open("a", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
    if is_new:
      writer.writeheader()
    writer.writerow({k: row.get(k, "") for k in RESULT_FIELDS})


def _method_order(method: str) -> tuple[int, str]:
  order = list(METHOD_TITLES)
  return (order.index(method) if method in order else len(order), method)


def summarize(
  rows: Iterable[Mapping[str, str]],
  metric: str | None = None,
  value_field: str = "value",
) -> list[Summary]:
  """Groups runs by (card, metric, method, model size, fraction) and
  aggregates over seeds.

  Runs of different cards (or metrics) are never averaged together. A run
  that appears twice (same cell and seed) counts once, with its last value,
  so re-running a finished run never doubles its weight.

  Args:
    rows: rows of a results CSV.
    metric: the metric to keep; by default every card's own.
    value_field: "value" (last step) or "value_picked" (the checkpoint
      picked on validation).

  Returns:
    One `Summary` per cell, sorted by card, model size, method and fraction.
  """
  cells: dict[tuple[str, str, str, str, float], dict[str, float]] = {}
  params: dict[str, int] = {}
  for row in rows:
    value = row.get(value_field)
    if (metric is not None and row["metric"] != metric) or value in ("", None):
      continue
    key = (
      row.get("card") or "",
      row["metric"],
      row["method"],
      row["model_size"],
      float(row["fraction"]),
    )
    cells.setdefault(key, {})[row["seed"]] = float(value)
    if row.get("num_params"):
      params[row["model_size"]] = int(float(row["num_params"]))
  summaries = []
  for (card, cell_metric, method, size, fraction), by_seed in cells.items():
    values = tuple(by_seed.values())
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    summaries.append(
      Summary(
        method=method,
        model_size=size,
        num_params=params.get(size, 0),
        fraction=fraction,
        metric=cell_metric,
        mean=statistics.fmean(values),
        std=std,
        stderr=std / math.sqrt(len(values)),
        count=len(values),
        values=values,
        card=card,
      )
    )
  summaries.sort(
    key=lambda s: (
      s.card,
      s.metric,
      s.num_params,
      s.model_size,
      _method_order(s.method),
      s.fraction,
    )
  )
  return summaries


def markdown_table(
  summaries: Sequence[Summary], teacher_accuracy: float | None = None
) -> str:
  """A Markdown table, accuracies in percent as `mean ± std (n=seeds)`.

  Args:
    summaries: output of `summarize`.
    teacher_accuracy: the teacher's accuracy on the test split, shown as a
      last line when given.

  Returns:
    The table text.
  """
  lines = [
    "| method | model | % data | mean | std | stderr | seeds | runs |",
    "|---|---|---:|---:|---:|---:|---:|---|",
  ]
  for s in summaries:
    runs = ", ".join(f"{100 * v:.1f}" for v in s.values)
    lines.append(
      f"| {METHOD_TITLES.get(s.method, s.method)} | {s.model_size} | "
      f"{100 * s.fraction:g} | {100 * s.mean:.2f} | {100 * s.std:.2f} | "
      f"{100 * s.stderr:.2f} | {s.count} | {runs} |"
    )
  if teacher_accuracy is not None:
    lines.append(
      f"| Teacher (few-shot CoT) | - | - | {100 * teacher_accuracy:.2f} "
      "| - | - | - | - |"
    )
  return "\n".join(lines) + "\n"


def write_summary_csv(
  summaries: Sequence[Summary], path: str | pathlib.Path
) -> None:
  """Writes the aggregated cells as CSV."""
  fields = [f.name for f in dataclasses.fields(Summary)]
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    for s in summaries:
      row = dataclasses.asdict(s)
      row["values"] = " ".join(f"{v:.6f}" for v in s.values)
      writer.writerow(row)


def _plot_methods(
  ax: Axes, cells: Sequence[Summary], x: Callable[[Summary], float]
) -> None:
  """One line per method: mean accuracy against `x`, s.e. as bars."""
  for method in sorted({s.method for s in cells}, key=_method_order):
    points = sorted((s for s in cells if s.method == method), key=x)
    color, marker = _METHOD_STYLE.get(method, (None, "o"))
    ax.errorbar(
      [x(s) for s in points],
      [100 * s.mean for s in points],
      yerr=[100 * s.stderr for s in points],
      label=METHOD_TITLES.get(method, method),
      color=color,
      marker=marker,
      capsize=3,
    )


def _percent_of_data(summary: Summary) -> float:
  return 100 * summary.fraction


def _pyplot():
  # Imported here: a file backend (reports are written on servers without
  # displays) must be chosen before pyplot loads.
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # Imported here: after the backend.

  return plt


def _save(fig, path: str | pathlib.Path) -> pathlib.Path:
  """Writes a finished figure to `path` and frees it."""
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  _pyplot().close(fig)
  return pathlib.Path(path)


def plot_accuracy_vs_data(
  summaries: Sequence[Summary],
  path: str | pathlib.Path,
  *,
  title: str = "",
  model_size: str | None = None,
) -> pathlib.Path:
  """Accuracy against % of training data, standard-error bars per method.

  Args:
    summaries: output of `summarize`.
    path: the PNG to write.
    title: the figure title (for example the dataset name).
    model_size: the student size to plot; by default the largest present.

  Returns:
    The written path.
  """
  plt = _pyplot()
  if model_size is None and summaries:
    model_size = max(summaries, key=lambda s: s.num_params).model_size
  cells = [s for s in summaries if s.model_size == model_size]
  fig, ax = plt.subplots(figsize=(4.5, 3.5))
  _plot_methods(ax, cells, _percent_of_data)
  fractions = sorted({100 * s.fraction for s in cells})
  if len(fractions) > 1 and min(fractions) > 0:
    # The paper's data axis doubles per tick (12.5, 25, 50, 100).
    ax.set_xscale("log", base=2)
  ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
  ax.set_xlabel("% of training data")
  ax.set_ylabel("Accuracy (%)")
  ax.set_title(f"{title} ({model_size})".strip() if title else str(model_size))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  return _save(fig, path)


def plot_accuracy_vs_size(
  summaries: Sequence[Summary],
  path: str | pathlib.Path,
  *,
  teacher_accuracy: float | None = None,
  teacher_name: str = "teacher",
  title: str = "",
  fraction: float | None = None,
) -> pathlib.Path:
  """Accuracy against student size, the teacher's accuracy as a line.

  Args:
    summaries: output of `summarize`.
    path: the PNG to write.
    teacher_accuracy: the teacher's few-shot accuracy, drawn horizontally.
    teacher_name: legend label of the teacher line.
    title: the figure title.
    fraction: the data fraction to plot; by default the largest present.

  Returns:
    The written path.
  """
  plt = _pyplot()
  if fraction is None and summaries:
    fraction = max(s.fraction for s in summaries)
  cells = [s for s in summaries if s.fraction == fraction]
  sizes = sorted({(s.num_params, s.model_size) for s in cells})
  position = {size: i for i, (_, size) in enumerate(sizes)}
  fig, ax = plt.subplots(figsize=(4.5, 3.5))
  _plot_methods(ax, cells, lambda s: position[s.model_size])
  if teacher_accuracy is not None:
    ax.axhline(
      100 * teacher_accuracy,
      color="black",
      linestyle="--",
      label=f"Few-shot CoT ({teacher_name})",
    )
  ax.set_xticks(
    range(len(sizes)),
    [f"{size}\n{_human_params(n)}" if n else size for n, size in sizes],
  )
  ax.set_xlabel("student model size")
  ax.set_ylabel("Accuracy (%)")
  name = f"{100 * fraction:g}% data" if fraction is not None else ""
  ax.set_title(f"{title} ({name})" if title else name)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  return _save(fig, path)


def plot_accuracy_by_method(
  summaries: Sequence[Summary],
  path: str | pathlib.Path,
  *,
  teacher_accuracy: float | None = None,
  teacher_name: str = "teacher",
  title: str = "",
) -> pathlib.Path:
  """One bar per method (largest size and fraction), seeds as dots.

  The figure for a run at a single data size, such as the offline demo.

  Args:
    summaries: output of `summarize`.
    path: the PNG to write.
    teacher_accuracy: the teacher's few-shot accuracy, drawn horizontally.
    teacher_name: legend label of the teacher line.
    title: the figure title.

  Returns:
    The written path.
  """
  plt = _pyplot()
  size = max(summaries, key=lambda s: s.num_params).model_size
  fraction = max(s.fraction for s in summaries)
  cells = sorted(
    (s for s in summaries if s.model_size == size and s.fraction == fraction),
    key=lambda s: _method_order(s.method),
  )
  fig, ax = plt.subplots(figsize=(4.5, 3.5))
  for i, s in enumerate(cells):
    color, _ = _METHOD_STYLE.get(s.method, ("tab:gray", "o"))
    ax.bar(
      i, 100 * s.mean, yerr=100 * s.stderr, color=color, alpha=0.7, capsize=4
    )
    ax.plot([i] * len(s.values), [100 * v for v in s.values], "k.", alpha=0.6)
  if teacher_accuracy is not None:
    ax.axhline(
      100 * teacher_accuracy,
      color="black",
      linestyle="--",
      label=f"Few-shot CoT ({teacher_name})",
    )
    ax.legend(fontsize=7)
  ax.set_xticks(
    range(len(cells)),
    [
      METHOD_TITLES.get(s.method, s.method).replace(" ", "\n", 1) for s in cells
    ],
    fontsize=7,
  )
  ax.set_ylabel("Accuracy (%)")
  name = f"{size}, {100 * fraction:g}% data, mean ± s.e. over seeds"
  ax.set_title(f"{title} ({name})" if title else name, fontsize=8)
  ax.grid(alpha=0.3, axis="y")
  return _save(fig, path)


def data_efficiency(
  summaries: Sequence[Summary],
  *,
  method: str = "dss_gold",
  baseline: str = "finetune",
) -> tuple[Summary, Summary] | None:
  """The paper's data-efficiency comparison, if the results hold it.

  Args:
    summaries: output of `summarize`.
    method: the data-efficient method.
    baseline: the method trained on all the data.

  Returns:
    (`method` on the smallest fraction where its mean reaches the
    baseline's full-data mean, else on its smallest fraction; `baseline` on
    its largest fraction), for the largest model size with both; None when
    `method` has no run on less data than the baseline's largest fraction.
  """
  for size in sorted(
    {s.model_size for s in summaries},
    key=lambda m: -max(s.num_params for s in summaries if s.model_size == m),
  ):
    cells = [s for s in summaries if s.model_size == size]
    full = [s for s in cells if s.method == baseline]
    if not full:
      continue
    reference = max(full, key=lambda s: s.fraction)
    less = sorted(
      (
        s
        for s in cells
        if s.method == method and s.fraction < reference.fraction
      ),
      key=lambda s: s.fraction,
    )
    if not less:
      continue
    matching = [s for s in less if s.mean >= reference.mean]
    return (matching[0] if matching else less[0]), reference
  return None


def data_efficiency_text(pair: tuple[Summary, Summary]) -> str:
  """One sentence: does the method on less data match the baseline?"""
  ours, reference = pair
  verb = "matches or beats" if ours.mean >= reference.mean else "falls below"
  return (
    f"{METHOD_TITLES.get(ours.method, ours.method)} on "
    f"{100 * ours.fraction:g}% of the training data "
    f"({100 * ours.mean:.1f} ± {100 * ours.stderr:.1f}) {verb} "
    f"{METHOD_TITLES.get(reference.method, reference.method).lower()} on "
    f"{100 * reference.fraction:g}% ({100 * reference.mean:.1f} ± "
    f"{100 * reference.stderr:.1f}); mean ± s.e. over seeds.\n"
  )


def plot_data_efficiency(
  summaries: Sequence[Summary],
  path: str | pathlib.Path,
  *,
  title: str = "",
  method: str = "dss_gold",
  baseline: str = "finetune",
) -> pathlib.Path:
  """Accuracy against % of data, the baseline's full-data mean as a line.

  The figure of the paper's data-efficiency claim at a glance: where the
  method's curve crosses the dashed line, it matches the baseline trained on
  all the data.

  Args:
    summaries: output of `summarize`.
    path: the PNG to write.
    title: the figure title (the dataset).
    method: the data-efficient method.
    baseline: the method whose largest-fraction mean is the dashed line.

  Returns:
    The written path.

  Raises:
    ValueError: the results hold no such comparison (`data_efficiency`).
  """
  pair = data_efficiency(summaries, method=method, baseline=baseline)
  if pair is None:
    raise ValueError(f"no {method} runs on less data than {baseline}'s")
  ours, reference = pair
  plt = _pyplot()
  cells = [s for s in summaries if s.model_size == reference.model_size]
  fig, ax = plt.subplots(figsize=(4.5, 3.5))
  _plot_methods(ax, cells, _percent_of_data)
  color, _ = _METHOD_STYLE.get(baseline, ("black", "o"))
  ax.axhline(
    100 * reference.mean,
    color=color,
    linestyle="--",
    label=f"{METHOD_TITLES.get(baseline, baseline)}, "
    f"{100 * reference.fraction:g}% data",
  )
  ax.annotate(
    f"{100 * ours.fraction:g}% data",
    (100 * ours.fraction, 100 * ours.mean),
    textcoords="offset points",
    xytext=(6, -12),
    fontsize=7,
  )
  fractions = sorted({100 * s.fraction for s in cells})
  ax.set_xscale("log", base=2)
  ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
  ax.set_xlabel("% of training data")
  ax.set_ylabel("Accuracy (%)")
  name = f"{reference.model_size}, mean ± s.e. over seeds"
  ax.set_title(f"{title} ({name})" if title else name, fontsize=8)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  return _save(fig, path)


def _human_params(n: int) -> str:
  for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
    if n >= scale:
      return f"{n / scale:.3g}{suffix}"
  return str(n)


def write_report(
  results_csv: str | pathlib.Path,
  out_dir: str | pathlib.Path,
  *,
  teacher_accuracy: float | None = None,
  teacher_name: str = "teacher",
  title: str = "",
) -> dict[str, pathlib.Path]:
  """Writes the summary tables and whichever plots the results support.

  The method plot is always written; the data plot needs two or more
  fractions, the size plot two or more model sizes.

  Args:
    results_csv: the per-run results.
    out_dir: where to write.
    teacher_accuracy: the teacher's accuracy on the test split, if known.
    teacher_name: the teacher's name for the legend.
    title: figure title prefix (the dataset).

  Returns:
    Name -> written file (`summary_csv`, `summary_md`, and the plots).

  Raises:
    errors.UserError: the results file is missing, has no rows, or a row
      lacks a column or a number (the message names the line).
  """
  if not pathlib.Path(results_csv).is_file():
    raise errors.MissingFileError(f"no results in {results_csv}: no such file")
  rows = read_results(results_csv)
  if not rows:
    raise errors.UserError(f"no results in {results_csv}")
  check_results(rows, results_csv)
  rows = to_fractions(rows, results_csv)
  if teacher_accuracy is not None and not 0 <= teacher_accuracy <= 1:
    raise errors.UserError(
      f"--teacher_accuracy must be in [0, 1], got {teacher_accuracy}"
    )
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  summaries = summarize(rows)
  paths = {
    "summary_csv": out_dir / "summary.csv",
    "summary_md": out_dir / "summary.md",
  }
  write_summary_csv(summaries, paths["summary_csv"])
  picked = summarize(rows, value_field="value_picked")
  groups = sorted({(s.card, s.metric) for s in summaries})
  sections = []
  for card, metric in groups:
    last = [s for s in summaries if (s.card, s.metric) == (card, metric)]
    chosen = [s for s in picked if (s.card, s.metric) == (card, metric)]
    text = markdown_table(last, teacher_accuracy)
    if chosen:
      # Both protocols, named: the paper's numbers are means over runs, and
      # the official code scores the test split during training.
      text = (
        "Test accuracy at the last step:\n\n"
        + text
        + "\nTest accuracy at the checkpoint picked on validation:\n\n"
        + markdown_table(chosen, teacher_accuracy)
      )
    heading = f"{card or 'results'}: {metric}"
    sections.append(f"## {heading}\n\n{text}")
  if picked:
    paths["summary_picked_csv"] = out_dir / "summary_picked.csv"
    write_summary_csv(picked, paths["summary_picked_csv"])
  paths["summary_md"].write_text("\n".join(sections))
  for card, metric in groups:
    cells = [s for s in summaries if (s.card, s.metric) == (card, metric)]
    suffix = f"_{card}_{metric}" if len(groups) > 1 else ""
    name = f"{title} {card}".strip() if len(groups) > 1 else title
    paths.update(
      _write_plots(cells, out_dir, suffix, teacher_accuracy, teacher_name, name)
    )
  return paths


def _write_plots(
  summaries: Sequence[Summary],
  out_dir: pathlib.Path,
  suffix: str,
  teacher_accuracy: float | None,
  teacher_name: str,
  title: str,
) -> dict[str, pathlib.Path]:
  """The plots of one card's cells (`write_report`)."""
  paths = {}
  pair = data_efficiency(summaries)
  paths[f"accuracy_by_method{suffix}"] = plot_accuracy_by_method(
    summaries,
    out_dir / f"accuracy_by_method{suffix}.png",
    teacher_accuracy=teacher_accuracy,
    teacher_name=teacher_name,
    title=title,
  )
  if pair is not None:
    paths[f"data_efficiency{suffix}"] = plot_data_efficiency(
      summaries, out_dir / f"data_efficiency{suffix}.png", title=title
    )
  if len({s.fraction for s in summaries}) > 1:
    paths[f"accuracy_vs_data{suffix}"] = plot_accuracy_vs_data(
      summaries, out_dir / f"accuracy_vs_data{suffix}.png", title=title
    )
  if len({s.model_size for s in summaries}) > 1:
    paths[f"accuracy_vs_size{suffix}"] = plot_accuracy_vs_size(
      summaries,
      out_dir / f"accuracy_vs_size{suffix}.png",
      teacher_accuracy=teacher_accuracy,
      teacher_name=teacher_name,
      title=title,
    )
  return paths
