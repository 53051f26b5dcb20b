"""Evaluation: a trained run answering questions (`predictor`), multiple-choice scoring with
confidence intervals (`benchmark`), baselines (`oracle`), held-out scoring after a run
(`heldout`) and its pictures (`report`). Frames come from `data.clips`, as in training."""
