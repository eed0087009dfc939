"""The paper-data slices in tests/testdata keep the release's layout.

tests/conftest.py falls back to these slices when no full copy of the
paper's data is found, so their rows and completions must align as the
release's do, and tests/testdata/make_dss_paper_slices.py must regenerate
them byte for byte from the full release.
"""

import importlib.util
import json

import pytest

from dss_jax import cards
from dss_jax.teacher import sources


def _generator(repo_dir):
  path = repo_dir / "tests" / "testdata" / "make_dss_paper_slices.py"
  spec = importlib.util.spec_from_file_location("make_slices", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize(
  "card,split,rows",
  [
    ("cqa", "train", 300),
    ("cqa", "test", 200),
    ("svamp", "train", 300),
    ("svamp", "test", 200),
    ("anli1", "valid", 64),
    ("esnli", "valid", 64),
  ],
)
def test_slices_align_rows_and_completions(
  paper_data_slices, card, split, rows
):
  pairs = sources.read_replay(cards.load_card(card), split, paper_data_slices)
  assert len(pairs) == rows
  assert all(isinstance(text, str) and text for _, text in pairs)


def test_slices_name_their_license(paper_data_slices):
  readme = (paper_data_slices / "README.md").read_text()
  for words in ("Apache-2.0", "CommonsenseQA", "SVAMP", "ANLI", "e-SNLI"):
    assert words in readme


def test_generator_regenerates_the_slices(
  repo_dir, full_paper_data_dir, paper_data_slices, tmp_path
):
  generator = _generator(repo_dir)
  for (folder, split), rows in generator.SLICES.items():
    generator.make_slice(full_paper_data_dir, tmp_path, folder, split, rows)
  made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.json"))
  shipped = sorted(
    p.relative_to(paper_data_slices) for p in paper_data_slices.rglob("*.json")
  )
  assert made == shipped
  for path in made:
    assert (tmp_path / path).read_bytes() == (
      paper_data_slices / path
    ).read_bytes(), path
  # The slices are the first rows of the release, completions included.
  first = json.loads(
    (full_paper_data_dir / "cqa" / "llm" / "train_CoT_0.json").read_text()
  )
  assert (
    json.loads(
      (paper_data_slices / "cqa" / "llm" / "train_CoT_0.json").read_text()
    )
    == first[:150]
  )
