"""tools/probe_tokens.py: its ridge probe reads a label that is linearly present and only guesses
one that is not, so its numbers in docs/results.md mean what they say."""


import numpy as np


import probe_tokens


def test_ridge_probe_reads_present_labels_and_not_absent_ones():
  rng = np.random.default_rng(0)
  names = np.array(["red", "green", "blue"])
  y = names[rng.integers(0, 3, 240)]
  # like real tokens: each class shifts every dimension a little, under unit noise
  means = 0.3 * rng.normal(size=(3, 500))
  x = means[np.searchsorted(np.sort(names), y)] + rng.normal(size=(240, 500))
  assert probe_tokens.ridge_accuracy(x[:180], list(y[:180]), x[180:], list(y[180:])) > 0.95
  shuffled = list(rng.permutation(y))
  acc = probe_tokens.ridge_accuracy(x[:180], shuffled[:180], x[180:], shuffled[180:])
  assert acc < 0.6  # chance is 1/3; 60 test samples
