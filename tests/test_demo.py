"""The embedded default (configs/demo.py) with fewer steps, run as `longvid run` with PyTorch
made unimportable and a fresh cache (so the GGUF tokenizer is built and the .pth encoder weights
are read without it): each stage it runs, projector alignment to the real LLM included, lowers
its loss, the run ends with its held-out table, report.png and next commands, and `longvid ask`
answers an open question about a real video with one reply that ends its turn."""

import json
import os
import pathlib
import subprocess
import sys

import matplotlib.image
import pytest

from longvid_jax import assets

DEMO = str(pathlib.Path(__file__).parents[1] / "configs" / "demo.py")

# Runs the CLI with every `import torch` failing and transformers told torch is absent.
WITHOUT_TORCH = """
import importlib.abc, importlib.util, sys

class NoTorch(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] == "torch":
      raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
    return None

sys.meta_path.insert(0, NoTorch())
_find_spec = importlib.util.find_spec
importlib.util.find_spec = (
    lambda n, p=None: None if n.split(".")[0] == "torch" else _find_spec(n, p))
from longvid_jax import cli
args = sys.argv[1:]
while args:  # commands separated by THEN, run in this one process
  cut = args.index("THEN") if "THEN" in args else len(args)
  code = cli.main(args[:cut])
  if code:
    sys.exit(code)
  args = args[cut + 1:]
assert not any(m.split(".")[0] == "torch" for m in sys.modules), "torch was imported"
"""


def _longvid(*args, cache: pathlib.Path) -> subprocess.CompletedProcess:
  env = {**os.environ, "LONGVID_CACHE": str(cache)}
  proc = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *args], env=env,
                        capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


@pytest.mark.slow
def test_demo_runs_without_torch_and_reports(tmp_path):
  """The recipe's models and learning rates; the autoencoder keeps its 40 steps (its loss falls
  slowly and its steps are cheap), the LLM stages take 10 steps of 2 examples and SFT two-turn
  conversations; two held-out videos."""
  cache = tmp_path / "cache"  # only the downloaded packages, nothing converted or built yet
  cache.mkdir()
  for name in ("smollm2_135m_instruct_gguf", "efficientnet_lite0", "cuts_video"):
    assets.asset(name)
    package = f"{assets.ASSETS[name].package}-{assets.ASSETS[name].version}"
    (cache / package).symlink_to(assets.cache_dir() / package)
  workdir = tmp_path / "run"
  stages = ("ae_pretrain", "align", "joint", "sft")
  sets = ["stages.ae_pretrain.checkpoint_every=40",
          "data.qa_turns=2", "data.seq_len=64", "eval.videos=2"]
  sets += [f"stages.{s}.log_every=1" for s in stages]
  sets += [f"stages.{s}.{k}={v}" for s in ("align", "joint", "sft")
           for k, v in (("steps", 10), ("batch_size", 2), ("checkpoint_every", 10))]
  video = str(assets.asset("cuts_video"))
  out = _longvid("run", DEMO, "--workdir", str(workdir),
                 *[a for s in sets for a in ("--set", s)], "THEN",
                 # an open question about a real video, not what SFT asked
                 "ask", str(workdir), video, "What is happening in this video?", "--json",
                 "--max-new-tokens", "48", cache=cache).stdout
  summary = json.loads((workdir / "summary.json").read_text())
  assert [s["status"] for s in summary["stages"]] == ["done"] * 4
  for s in summary["stages"]:
    assert s["final_loss"] < s["first_loss"], s
  held = summary["heldout"]
  assert held["n"] >= 2 * 4 and set(held["tasks"]) == {
      "synthetic/background", "synthetic/color", "synthetic/shape"}
  assert 0 <= held["accuracy"] <= 1 and 0 <= held["blank_accuracy"] <= 1
  picture = matplotlib.image.imread(workdir / "report.png")
  assert picture.shape[0] > 500 and picture.shape[1] > 1000
  assert "next:" in out and f"longvid ask {workdir}" in out
  assert list((cache / "tokenizers").iterdir()), "the GGUF tokenizer was not built here"
  reply = json.loads(out.strip().splitlines()[-1])  # the reply ends with the turn
  assert reply["ended"] and reply["tokens"] < 48 and reply["answer"], reply
