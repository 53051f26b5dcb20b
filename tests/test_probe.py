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


def test_frame_labels_read_the_shot_each_sampled_frame_lies_in():
  from longvid_jax.data import records
  timeline = [{"start_frame": 0, "end_frame": 10, "kind": "clip"},
              {"start_frame": 10, "end_frame": 12, "kind": "shapes", "color": "red",
               "shape": "circle", "count": 2, "background": "black"},
              {"start_frame": 12, "end_frame": 30, "kind": "clip"}]
  rec = records.Record(id="v/needle", video="v.mp4", meta={"timeline": timeline})
  got = probe_tokens.frame_labels(rec, np.array([0, 9, 10, 11, 12, 29]))
  footage, shape = ("clip", "-", "-", "-", "-"), ("shapes", "red", "circle", "2", "black")
  assert got == [footage] * 2 + [shape] * 2 + [footage] * 2
