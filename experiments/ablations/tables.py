"""The paper's ablations as config variants of experiments/paper.py.

`get_config("table3/perceiver")` is the full-size recipe with that change;
`get_config("table3/perceiver,runlocal")` the same change on the laptop recipe, e.g.

  longvid run experiments/ablations/tables.py:table3/perceiver,runlocal

and `get_config("table3/perceiver,local")` on `experiments/local.py`, the recipe that learns on
the long-video benchmark. There tables 3–6 keep that recipe's sampler (AVS, one frame per shot)
where the paper's ablations sample uniformly, and a variant whose tokens no longer belong to one
frame each (a temporal stride, the Perceiver) states the frame times in one sentence instead of
before each frame's tokens.

Tables (all at the recipe's frame budget k = data.num_frames). Each variant differs from the
base recipe only in the ablated keys (plus seq_len where its token count needs more room;
`tests/test_ablations.py` diffs them):
  table2  frame sampling: uniform vs AVS, each trained and evaluated with its sampler, beside
          the peer samplers FiLA and LongVU (which choose by the run's own encoder features)
  table3  compressor at the recipe's own strides: SVC vs avgpool3d vs Perceiver with as many
          tokens (4x4x4, 1/64 of them, in the paper's recipes; 1x2x2 in experiments/local.py),
          and avgpool3d 2x4x4
  table4  SVC strides (t, h, w): 2x2x2, 4x4x4, 1x8x8, 4x8x8, 8x4x4. The cascade has one block
          per factor of 2 of the largest stride (log2 max(t, h, w) blocks: 2 for 4x4x4, 3 for
          8x4x4), each block striding by 2 along the axes that still need it
  table5  SVC with AE pretraining vs a random-init SVC (no AE stage) trained with the projector
          in the later stages
  table6  latent constraint: none, vae, residual

`tools/ablations.py` trains and evaluates every variant of a table and writes the table.
"""

from __future__ import annotations

import math
import pathlib

import ml_collections

from longvid_jax import config as config_lib
from longvid_jax.models import build, reducers

ROOT = pathlib.Path(__file__).resolve().parents[2]


# what each table of the paper finds; `tools/ablations.py` prints it above our rows
PAPER = {
    "table2": "AVS > uniform at equal k",
    "table3": "SVC > avgpool3d and Perceiver at 64x fewer tokens",
    "table4": "balanced 4x4x4 is the best trade-off; spatial-only 1x8x8 and the heavier "
              "4x8x8 / 8x4x4 lose accuracy",
    "table5": "AE-pretrained SVC > randomly initialised SVC",
    "table6": "residual latent > vae > none (an unconstrained latent makes alignment unstable)",
}


def _reducer(name: str, **args) -> dict:
  return {"model.reducer": ml_collections.ConfigDict({"name": name, "args": args})}


def _svc(c, **changes) -> dict:
  args = dict(c.model.reducer.args)
  args.update(changes)
  return _reducer("svc", **args)


def _built(c, reducer: ml_collections.ConfigDict):
  """(the reducer module, the encoder's h×w token grid) the config names."""
  return (reducers.REDUCERS.get(reducer.name)(**dict(reducer.args or {})),
          build.encoder_config(c.model).grid)


def _tokens(c, reducer: ml_collections.ConfigDict) -> int:
  module, grid = _built(c, reducer)
  return module.num_tokens(int(c.data.num_frames), *grid)


def _room(c, changes: dict) -> dict:
  """`changes` to the reducer, with every seq_len grown by the extra visual tokens it makes, so
  the text still fits."""
  extra = max(0, _tokens(c, changes["model.reducer"]) - _tokens(c, c.model.reducer))
  if not extra:
    return changes
  grow = {"data.seq_len": c.data.seq_len + extra}
  grow.update({f"stages.{name}.seq_len": s.seq_len + extra for name, s in c.stages.items()
               if s.seq_len is not None})
  return {**changes, **grow}


def _strides(c, strides: tuple[int, int, int]) -> dict:
  return _room(c, _svc(c, strides=strides))


# table -> variant -> (config changes as {dotted key: value}, inference sampler)
def variants(c, sampler: str = "uniform") -> dict[str, dict[str, tuple[dict, str]]]:
  """`sampler`: the frame sampler of tables 3–6 (table 2 is the sampler)."""
  bottleneck = c.model.reducer.args.bottleneck
  strides = tuple(c.model.reducer.args.strides)  # table3 compares at the recipe's own ratio
  return {
      "table2": {name: ({}, name) for name in ("uniform", "avs", "fila", "longvu")},
      "table3": {
          "svc": (_svc(c), sampler),
          "avgpool3d": (_reducer("avgpool3d", strides=strides), sampler),
          "avgpool3d_2x4x4": (_room(c, _reducer("avgpool3d", strides=(2, 4, 4))), sampler),
          "perceiver": (_reducer("perceiver", ratio=1 / math.prod(strides), depth=2), sampler),
      },
      "table4": {f"{t}x{h}x{w}": (_strides(c, (t, h, w)), sampler)
                 for t, h, w in ((2, 2, 2), (4, 4, 4), (1, 8, 8), (4, 8, 8), (8, 4, 4))},
      "table5": {
          "pretrained": ({}, sampler),
          # no AE stage: the compressor starts from its random init and learns with the
          # projector in every later stage instead of staying frozen at random
          "random": ({"recipe": tuple(s for s in c.recipe if s != "ae_pretrain"),
                      **{f"stages.{n}.trainable": (*c.stages[n].trainable, "reducer")
                         for n in c.recipe if n != "ae_pretrain"}}, sampler),
      },
      "table6": {k: (_svc(c, constraint=k, bottleneck=bottleneck), sampler)
                 for k in ("none", "vae", "residual")},
  }


MODES = ("", "runlocal", "local")


def base(mode: str = "") -> ml_collections.ConfigDict:
  """"": the paper's full-size recipe; "runlocal": its laptop size; "local":
  experiments/local.py."""
  if mode not in MODES:
    raise ValueError(f"unknown mode {mode!r}; use runlocal, local or nothing")
  if mode == "local":
    return config_lib.load(str(ROOT / "experiments" / "local.py"))
  return config_lib.load(str(ROOT / "experiments" / "paper.py") + (":runlocal" if mode else ""))


def get_config(arg=None):
  """arg: "table/variant" optionally followed by ",runlocal" or ",local"."""
  if not arg:
    raise ValueError("name a variant, e.g. tables.py:table3/perceiver,runlocal")
  spec, _, mode = arg.partition(",")
  c = base(mode)
  table, _, variant = spec.partition("/")
  table_variants = variants(c, c.data.sampler if mode == "local" else "uniform").get(table)
  if table_variants is None or variant not in table_variants:
    raise ValueError(f"unknown variant {spec!r}; choose from "
                     + ", ".join(f"{t}/{v}" for t, vs in variants(c).items() for v in vs))
  changes, sampler = table_variants[variant]
  for key, value in changes.items():
    config_lib.assign(c, key, value, what=f"variant {spec}")
  c.data.sampler = sampler
  module, grid = _built(c, c.model.reducer)
  if c.data.timestamp_style == "interleaved" and not config_lib.frames_apart(
      module, int(c.data.num_frames), *grid):
    c.data.timestamp_style = "sentence"
  return c
