"""longvid_jax: compact video representations for long-video multimodal LLMs.

Data flows one way:
video → sampling (which frames) → models.encoders (frames → token grid)
→ models.reducers (compress the grid) → models.projector → models.llm (answer).
Training stages, data, interop and parallelism live in their own packages.
"""

__version__ = "0.1.0"
