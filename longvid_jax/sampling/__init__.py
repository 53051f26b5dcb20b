"""Frame sampling: the TransNetV2 shot-boundary network and the samplers built on its scores.
Pure computation on arrays (decoding and the shot cache live in `data/`); a new sampler is a
dataclass registered in `samplers.SAMPLERS`."""

from longvid_jax.sampling.samplers import SAMPLERS, Selection, sample, shot_start_scores

__all__ = ["SAMPLERS", "Selection", "sample", "shot_start_scores"]
