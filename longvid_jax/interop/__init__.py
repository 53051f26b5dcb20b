"""Checkpoint formats ↔ our params. Each family registers its converter here: vision towers in
`vision.CONVERTERS`, reducers with a PyTorch port in `compressor.PORTS`, LLMs through
`hf.read_config` / `llm_tables` (and `gguf`); `files` finds models and reads safetensors;
`export` writes and reads whole runs."""
