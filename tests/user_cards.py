"""A user's own task card for tests: the demo card reading JSON-lines files.

    card_path = user_cards.files_card(tmp_path / "card", train=48, test=16)

The card (`mini`) has no `id_field`, so its ids come from content; its rows
are the demo's arithmetic problems, which the offline teacher answers.
"""

import json
import pathlib

from dss_jax import synthetic

_ARITH = pathlib.Path(__file__).parents[1] / "tasks" / "arith.yaml"


def files_card(folder: pathlib.Path, train: int = 48, test: int = 16) -> str:
  """Writes mini.yaml, train.jsonl and test.jsonl into `folder`.

  Args:
    folder: where the card and its files go (created).
    train: training problems.
    test: test problems.

  Returns:
    The card's path.
  """
  text = _ARITH.read_text()
  text = text.replace(
    'reader: "dss_jax.synthetic:read_split"',
    "files: {train: train.jsonl, test: test.jsonl}",
  ).replace("  id_field: id\n", "")
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "mini.yaml").write_text(text.replace("name: arith", "name: mini"))
  for split, count, seed in (("train", train, 1), ("test", test, 2)):
    problems = synthetic.generate_problems(count, seed=seed, split=split)
    (folder / f"{split}.jsonl").write_text(
      "".join(
        json.dumps({"input": p.question, "label": p.answer}) + "\n"
        for p in problems
      )
    )
  return str(folder / "mini.yaml")
