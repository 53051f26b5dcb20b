"""The torch-free .pth reader against torch.load on the released weights and on files torch
writes here in both layouts (zip and the older single stream). Exact equality is required."""

from __future__ import annotations

import pickle

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from longvid_jax import assets  # noqa: E402
from longvid_jax.interop import pth  # noqa: E402


def _same(ours: dict, ref: dict) -> None:
  assert list(ours) == list(ref)
  for k, t in ref.items():
    t = t.detach()
    want = (t.float().numpy().astype(ml_dtypes.bfloat16) if t.dtype == torch.bfloat16
            else t.numpy())
    assert ours[k].dtype == want.dtype and ours[k].shape == want.shape, k
    np.testing.assert_array_equal(ours[k], want, err_msg=k)


@pytest.mark.parametrize("name", ["transnetv2_weights", "efficientnet_lite0"])
def test_released_weights_match_torch_load(name):
  path = assets.asset(name)  # TransNetV2 is a zip archive, EfficientNet the older stream
  _same(pth.load_state_dict(path), torch.load(path, map_location="cpu", weights_only=True))


@pytest.mark.parametrize("zipped", [True, False])
def test_dtypes_views_and_scalars(tmp_path, zipped):
  g = torch.Generator().manual_seed(0)
  base = torch.randn(6, 8, generator=g)
  state = {
      "f32": torch.randn(3, 4, generator=g),
      "f16": torch.randn(5, generator=g).half(),
      "bf16": torch.randn(2, 3, generator=g).bfloat16(),
      "f64": torch.randn(2, generator=g).double(),
      "i64": torch.arange(7),
      "i32": torch.arange(4, dtype=torch.int32),
      "u8": torch.arange(9, dtype=torch.uint8),
      "bool": torch.tensor([True, False, True]),
      "scalar": torch.tensor(3),
      "empty": torch.zeros(0, 4),
      "slice": base[2:5, 1:7:2],  # offset and strides into a shared storage
      "transposed": base.t(),
      "shared": base,
      "param": torch.nn.Parameter(torch.ones(2, 2)),
  }
  path = tmp_path / "state.pth"
  torch.save(state, path, _use_new_zipfile_serialization=zipped)
  _same(pth.load_state_dict(path), torch.load(path, weights_only=True))


def test_refuses_code_and_damaged_files(tmp_path):
  class Payload:
    def __reduce__(self):
      return (print, ("executed",))

  evil = tmp_path / "evil.pth"
  torch.save({"w": torch.ones(1)}, evil)  # a real archive, then its pickle swapped
  import zipfile
  with zipfile.ZipFile(evil) as zf:
    members = {n: zf.read(n) for n in zf.namelist()}
  pkl = next(n for n in members if n.endswith("data.pkl"))
  members[pkl] = pickle.dumps({"w": Payload()})
  with zipfile.ZipFile(evil, "w") as zf:
    for n, data in members.items():
      zf.writestr(n, data)
  with pytest.raises(ValueError, match="builtins.print is not allowed"):
    pth.load_state_dict(evil)

  legacy = tmp_path / "legacy.pth"
  torch.save({"w": torch.ones(1000)}, legacy, _use_new_zipfile_serialization=False)
  cut = tmp_path / "cut.pth"
  cut.write_bytes(legacy.read_bytes()[:-100])
  with pytest.raises(ValueError, match="truncated"):
    pth.load_state_dict(cut)
  (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
  with pytest.raises(ValueError, match="not a readable PyTorch state dict"):
    pth.load_state_dict(tmp_path / "garbage.pth")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    pth.load_state_dict(tmp_path / "missing.pth")
  torch.save([torch.ones(1)], tmp_path / "list.pth")
  with pytest.raises(ValueError, match="not a state dict"):
    pth.load_state_dict(tmp_path / "list.pth")
