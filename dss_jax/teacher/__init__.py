"""Teacher annotation: prompts, answer parsers, LLM backends and the runner.

Submodules are imported on use so that parsing a card does not load HTTP
clients: `parsers` and `arithmetic` (answers), `prompts` (requests and their
hashes), `sources` (dataset rows, the paper's released outputs), `backends`
(gemini, openai, replay), `store` (the append-only store), `runner` (the
resumable annotation runner), `aggregate` (self-consistency votes) and
`fake_server` (a local Gemini/OpenAI-compatible server for tests).
"""
