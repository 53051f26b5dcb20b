"""Pure Flax modules; they name their axes and read no files.

`encoders/` (register in `ENCODERS`), `reducers/` (register in `REDUCERS`), `projector`, `llm`,
`mllm` (the composition) and `build` (config → modules and param shapes). Checkpoints for them
live in `interop/`."""
