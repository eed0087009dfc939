"""Results CSV, summary tables and the paper-style plots (dss_jax.report)."""

import math

import pytest

from dss_jax import report

_PNG = b"\x89PNG\r\n\x1a\n"


def _row(method, size, fraction, seed, value, params=1000):
  return {
    "card": "arith",
    "source": "offline",
    "method": method,
    "model_size": size,
    "num_params": params,
    "fraction": fraction,
    "seed": seed,
    "metric": "accuracy",
    "value": value,
  }


def _write(path, rows):
  for row in rows:
    report.append_result(path, row)


def test_summary_has_mean_std_and_standard_error_over_seeds(tmp_path):
  path = tmp_path / "results.csv"
  _write(
    path,
    [
      _row("finetune", "s", 1.0, 0, 0.5),
      _row("finetune", "s", 1.0, 1, 0.6),
      _row("finetune", "s", 1.0, 2, 0.7),
      _row("dss_gold", "s", 1.0, 0, 0.8),
      # A rerun of a finished run replaces it, never double counts.
      _row("dss_gold", "s", 1.0, 0, 0.9),
    ],
  )
  rows = report.read_results(path)
  assert len(rows) == 5
  by_method = {s.method: s for s in report.summarize(rows)}
  finetune = by_method["finetune"]
  assert finetune.mean == pytest.approx(0.6)
  assert finetune.std == pytest.approx(0.1)
  assert finetune.stderr == pytest.approx(0.1 / math.sqrt(3))
  assert finetune.count == 3
  assert by_method["dss_gold"].count == 1
  assert by_method["dss_gold"].mean == pytest.approx(0.9)
  table = report.markdown_table(report.summarize(rows), teacher_accuracy=0.85)
  assert "| Standard finetuning | s | 100 | 60.00 | 10.00 | 5.77 | 3 |" in table
  assert "| Teacher (few-shot CoT) | - | - | 85.00 |" in table


def test_unknown_result_fields_are_rejected(tmp_path):
  with pytest.raises(KeyError, match="accuracy"):
    report.append_result(tmp_path / "r.csv", {"accuracy": 1.0})


def test_report_writes_tables_and_both_figures(tmp_path):
  path = tmp_path / "results.csv"
  rows = []
  for size, params in (("small", 10), ("base", 100)):
    for fraction in (0.125, 0.5, 1.0):
      for seed in (0, 1):
        for method, bonus in (("finetune", 0.0), ("dss_gold", 0.05)):
          value = 0.3 + 0.2 * fraction + bonus + 0.01 * seed
          rows.append(_row(method, size, fraction, seed, value, params))
  _write(path, rows)
  paths = report.write_report(
    path, tmp_path / "out", teacher_accuracy=0.7, title="arith"
  )
  for name in ("accuracy_by_method", "accuracy_vs_data", "accuracy_vs_size"):
    assert paths[name].read_bytes().startswith(_PNG), name
  summary = paths["summary_md"].read_text()
  assert summary.count("Distilling step-by-step") == 6
  header = paths["summary_csv"].read_text().splitlines()[0]
  assert header.startswith("method,model_size,num_params,fraction")


def test_data_efficiency_compares_less_data_with_the_full_baseline(tmp_path):
  rows = [
    _row(method, "s", fraction, seed, value + 0.01 * seed)
    for method, fraction, value in (
      ("finetune", 0.5, 0.2),
      ("finetune", 1.0, 0.3),
      ("dss_gold", 0.25, 0.25),
      ("dss_gold", 0.5, 0.35),
      ("dss_gold", 1.0, 0.5),
    )
    for seed in (0, 1, 2)
  ]
  ours, reference = report.data_efficiency(report.summarize(rows))
  # The smallest fraction that reaches finetuning on all the data.
  assert (ours.method, ours.fraction) == ("dss_gold", 0.5)
  assert (reference.method, reference.fraction) == ("finetune", 1.0)
  text = report.data_efficiency_text((ours, reference))
  assert text.startswith("Distilling step-by-step on 50% of the training")
  assert "(36.0 ± 0.6) matches or beats standard finetuning on 100%" in text
  # Short of it on every fraction: the smallest is shown, as falling below.
  below = [r for r in rows if r["fraction"] != 0.5 or r["method"] != "dss_gold"]
  ours, _ = report.data_efficiency(report.summarize(below))
  assert ours.fraction == 0.25
  assert "falls below" in report.data_efficiency_text((ours, reference))
  path = tmp_path / "results.csv"
  _write(path, rows)
  paths = report.write_report(path, tmp_path / "out", title="arith")
  assert paths["data_efficiency"].read_bytes().startswith(_PNG)
  # Without distilling step-by-step on less data there is nothing to show.
  assert report.data_efficiency(report.summarize(rows[:6])) is None


def test_one_size_and_fraction_gives_the_method_figure_only(tmp_path):
  path = tmp_path / "results.csv"
  _write(path, [_row("finetune", "s", 1.0, 0, 0.5)])
  paths = report.write_report(path, tmp_path)
  assert "accuracy_vs_size" not in paths and "accuracy_vs_data" not in paths
  assert "data_efficiency" not in paths
  assert paths["accuracy_by_method"].read_bytes().startswith(_PNG)
  with pytest.raises(ValueError, match="no results"):
    report.write_report(tmp_path / "missing.csv", tmp_path)


def test_the_command_line_reports_an_existing_csv(
  tmp_path, monkeypatch, run_entry_point
):
  # `python -m dss_jax.report` runs report/__main__.py: the flags there, the
  # work in the library. In-process, as `__main__`.
  path = tmp_path / "results.csv"
  _write(
    path,
    [_row("finetune", "s", 1.0, 0, 0.5), _row("dss_gold", "s", 1.0, 0, 0.75)],
  )
  monkeypatch.chdir(tmp_path)
  proc = run_entry_point(
    "dss_jax.report", f"--results={path}", "--teacher_accuracy=0.8"
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "| Distilling step-by-step | s | 100 | 75.00 |" in proc.stdout
  assert (tmp_path / "summary.md").exists()
  assert f"summary_md: {tmp_path / 'summary.md'}" in proc.stdout


def test_percentages_cards_and_fractions_are_read_as_meant(tmp_path):
  path = tmp_path / "results.csv"
  svamp = dict(card="svamp", metric="equation_accuracy")
  _write(
    path,
    [
      # Percentages (59 means 59%), detected from the data.
      _row("finetune", "s", 1.0, 0, 59.0),
      _row("finetune", "s", 1.0, 1, 61.0),
      # Another card, in fractions: never averaged with arith.
      _row("finetune", "s", 1.0, 0, 0.2) | svamp,
      _row("finetune", "s", 1.0, 1, 0.4) | svamp,
    ],
  )
  paths = report.write_report(path, tmp_path / "out")
  summaries = {
    (s.card, s.metric): s
    for s in report.summarize(
      report.to_fractions(report.read_results(path), path)
    )
  }
  assert summaries["arith", "accuracy"].mean == pytest.approx(0.60)
  assert summaries["svamp", "equation_accuracy"].mean == pytest.approx(0.30)
  text = paths["summary_md"].read_text()
  assert "## arith: accuracy" in text
  assert "## svamp: equation_accuracy" in text
  assert "| Standard finetuning | s | 100 | 60.00 |" in text
  assert "| Standard finetuning | s | 100 | 30.00 |" in text
  assert "6000" not in text
  assert paths["accuracy_by_method_svamp_equation_accuracy"].exists()


@pytest.mark.parametrize(
  "change, message",
  [
    ({"fraction": 0}, r"results.csv:3: fraction 0 is not in \(0, 1\]"),
    ({"fraction": 1.5}, r"results.csv:3: fraction 1.5 is not in"),
    ({"value": 590}, r"results.csv:3: value 590 is neither a fraction"),
    ({"value": -0.1}, r"results.csv:3: value -0.1 is neither"),
  ],
)
def test_impossible_values_name_their_line(tmp_path, change, message):
  path = tmp_path / "results.csv"
  _write(
    path,
    [
      _row("finetune", "s", 1.0, 0, 0.5),
      _row("dss_gold", "s", 1.0, 0, 0.6) | change,
    ],
  )
  with pytest.raises(ValueError, match=message):
    report.write_report(path, tmp_path / "out")
