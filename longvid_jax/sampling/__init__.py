"""Frame sampling: the TransNetV2 shot-boundary detector and the samplers built on it."""

from longvid_jax.sampling.samplers import SAMPLERS, Selection, sample, shot_start_scores

__all__ = ["SAMPLERS", "Selection", "sample", "shot_start_scores"]
