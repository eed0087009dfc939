"""Teacher annotation: prompts, LLM backends, the store and the runner.

Submodules are imported on use so that reading a card does not load HTTP
clients: `prompts` (requests and their hashes), `sources` (dataset rows, the
paper's released outputs), `backends` (gemini, openai, replay, offline),
`store` (the append-only store), `runner` (the resumable annotation runner),
`aggregate` (self-consistency votes) and `testing` (a test double: a local
Gemini/OpenAI-compatible server). The cards' answer parsing is
`dss_jax.answers`, one layer below.
"""
