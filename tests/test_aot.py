"""The ahead-of-time planner compiles the real train step from abstract values on fake devices,
and sharding shows in its per-device memory."""


import aot_plan


def test_reduced_plan_compiles_and_fsdp_shrinks_the_state(capsys):
  rows = aot_plan.main(["--reduced", "--mesh", "8:8,1,1", "--mesh", "8:1,4,2"])
  replicated, sharded = rows
  assert replicated["batch"] == 8 and sharded["batch"] == 4
  assert all(r["peak"] > 0 and r["xla_flops"] > 0 and r["model_flops"] > 0 for r in rows)
  # params and Adam moments are split 8 ways; the small batch shard hardly counts
  assert sharded["args"] < replicated["args"] / 3
  table = capsys.readouterr().out
  assert "| 8 | 1,4,2 | 4 |" in table
