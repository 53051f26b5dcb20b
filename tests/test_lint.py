"""The code base passes ruff with the project's settings (pyproject.toml [tool.ruff])."""

import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ruff_is_clean():
  ruff = shutil.which("ruff")
  if ruff is None:
    pytest.skip("ruff is not installed (pip install -e '.[test]' installs it)")
  out = subprocess.run([ruff, "check", "longvid_jax", "tests", "tools", "experiments", "configs"],
                       cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, out.stdout[-4000:]
