"""Where the shipped task cards and gin files are, installed or in a checkout.

`tasks/` and `gin_configs/` live at the top of the repository. The wheel maps
them into the package as `dss_jax/_tasks/` and `dss_jax/gin_configs/` (see
`setup.py`), so an installed dss-jax finds them through `importlib.resources`;
a checkout (or an editable install of one) finds the same files beside the
package.

    from dss_jax import resources
    resources.tasks_dir() / "cqa.yaml"
    resources.gin_configs_dir() / "tiny.gin"

The T5X gin files include each other by paths that start with
`gin_configs/` ('gin_configs/t5x/train.gin'), the way T5X's own files start
with `t5x/`. One folder resolves them, installed or checked out: the folder
that holds `gin_configs/` (the checkout's root, or the installed `dss_jax/`).
This prints it, for T5X's `--gin_search_paths`:

    python -m dss_jax.resources
    python -m t5x.train --gin_search_paths="$(python -m dss_jax.resources)" \\
      --gin_file=gin_configs/t5x/models/t5_1_1_base.gin ...
"""

import importlib.resources
import pathlib

# Top-level folder in the repository -> its name inside the installed package.
# `gin_configs` keeps its name, so that include paths starting with it resolve
# from the package folder as they do from the checkout's root.
_SHIPPED = {"tasks": "_tasks", "gin_configs": "gin_configs"}


def _shipped_dir(name: str) -> pathlib.Path:
  """The folder `name` ("tasks" or "gin_configs"), installed or checked out.

  Args:
    name: the folder's name at the top of the repository.

  Returns:
    The installed copy when the package carries one, otherwise the checkout's
    folder beside the package.
  """
  # The installed copy first: a site-packages/ may hold an unrelated `tasks/`
  # beside the package, a checkout never holds `dss_jax/_tasks/`.
  installed = importlib.resources.files(__package__) / _SHIPPED[name]
  if isinstance(installed, pathlib.Path) and installed.is_dir():
    return installed
  return pathlib.Path(__file__).resolve().parents[1] / name


def tasks_dir() -> pathlib.Path:
  """The folder of the built-in task cards (`tasks/`)."""
  return _shipped_dir("tasks")


def gin_configs_dir() -> pathlib.Path:
  """The folder of the shipped gin files (`gin_configs/`)."""
  return _shipped_dir("gin_configs")


def gin_search_path() -> pathlib.Path:
  """The folder to pass to T5X's `--gin_search_paths`.

  Returns:
    The folder that holds `gin_configs/`: the checkout's root, or the
    installed package's folder. From it, `gin_configs/t5x/...` (the files'
    own include paths and the `--gin_file` values the docs show) resolve.
  """
  return gin_configs_dir().parent


if __name__ == "__main__":
  # `python -m dss_jax.resources`: the search path, for shell substitution.
  print(gin_search_path())
