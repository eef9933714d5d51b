"""The LLM layer: one generation interface (`base`), its disk cache and backend factory (`generator`),
the backends (transformers, vLLM, OpenAI-compatible), a local OpenAI-compatible server, and model
preparation (`models`: the embedded SmolLM2 GGUF, hub ids, folders, LoRA checkpoints)."""
