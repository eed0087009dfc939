"""dss-jax: Distilling Step-by-Step (Hsieh et al., 2023) in JAX/Flax.

A teacher LLM writes a rationale and a label per training input; SeqIO mixes a
label task and a rationale task (the mixture rate is the paper's lambda); a T5
student trains sharded with `jax.jit` on TPU, GPU or CPU, by T5X or by the
built-in trainer. Run `python -m dss_jax` for the entry points.
"""

__version__ = "0.1.0"
