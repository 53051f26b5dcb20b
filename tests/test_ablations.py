"""Every ablation variant is a valid config, at laptop size and full size: a variant that could
not start (e.g. 2×2×2 strides overflowing data.seq_len) fails here, not an hour into a table."""

import pathlib

import pytest

from longvid_jax import config as config_lib

tables = config_lib.module(pathlib.Path(__file__).resolve().parents[1] / "experiments" /
                           "ablations" / "tables.py")
BASE = tables.base(True)
NAMES = [f"{t}/{v}" for t, vs in tables.variants(BASE).items() for v in vs]


@pytest.mark.parametrize("mode", ["runlocal", ""])
def test_every_variant_validates(mode):
  for name in NAMES:
    c = tables.get_config(f"{name},{mode}" if mode else name)
    config_lib.validate(c)
    if name.startswith("table4/"):
      assert tuple(c.model.reducer.args.strides) == tuple(
          int(x) for x in name.split("/")[1].split("x"))
