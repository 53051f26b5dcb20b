"""Broken or hostile checkpoint files fail with an error naming the file and the fault; nothing
in them is ever executed."""

import json
import pathlib
import pickle
import re
import struct

import gguf
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import save_file

from longvid_jax.interop import gguf as gguf_lib
from longvid_jax.interop import hf
from longvid_jax.interop import llm_tables
from longvid_jax.interop import tables
from longvid_jax.models.llm import LLMConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
CFG = LLMConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=4,
                num_kv_heads=2, tie_embeddings=False)
HF_CONFIG = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=64,
                 hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                 num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                 max_position_embeddings=128, tie_word_embeddings=False, hidden_act="silu")


def _params():
  flat = {k: np.full(s, 0.01, np.float32) for k, s in llm_tables.expected_shapes(CFG).items()}
  return traverse_util.unflatten_dict(flat, sep="/")


def _hf_dir(path: pathlib.Path, config=None, tensors=None) -> pathlib.Path:
  path.mkdir()
  (path / "config.json").write_text(json.dumps(HF_CONFIG if config is None else config))
  if tensors is None:
    tensors = tables.to_theirs(_params(), llm_tables.HF_RULES, CFG)
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
            str(path / "model.safetensors"))
  return path


def _gguf(path: pathlib.Path, edit=None, shapes=None) -> pathlib.Path:
  w = gguf.GGUFWriter(str(path), "llama")
  kv = dict(block_count=1, context_length=128, embedding_length=16, feed_forward_length=32,
            head_count=4, head_count_kv=2, vocab_size=64)
  if edit:
    kv.update(edit)
  for key, v in kv.items():
    if isinstance(v, str):
      w.add_string(f"llama.{key.replace('head_count', 'attention.head_count')}", v)
    else:
      getattr(w, f"add_{key}")(v)
  w.add_layer_norm_rms_eps(1e-5)
  for name, x in tables.to_theirs(_params(), llm_tables.GGUF_RULES, CFG).items():
    shape = (shapes or {}).get(name, x.shape)
    w.add_tensor(name, np.zeros(shape, np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


def test_valid_files_load(tmp_path):
  params, cfg = hf.load_hf(_hf_dir(tmp_path / "ok"))
  assert cfg.hidden_size == 16
  params, cfg = gguf_lib.load_gguf(_gguf(tmp_path / "ok.gguf"))
  assert cfg.num_kv_heads == 2


def test_gguf_faults_name_the_file(tmp_path):
  junk = tmp_path / "junk.gguf"
  junk.write_bytes(b"GGUF" + bytes(range(256)) * 4)
  with pytest.raises(ValueError, match=r"junk\.gguf is not a readable GGUF"):
    gguf_lib.load_gguf(junk)
  with pytest.raises(ValueError, match=r"zero\.gguf.*head_count=0 must be a positive integer"):
    gguf_lib.load_gguf(_gguf(tmp_path / "zero.gguf", dict(head_count=0)))
  with pytest.raises(ValueError, match=r"text\.gguf.*malformed GGUF metadata"):
    gguf_lib.load_gguf(_gguf(tmp_path / "text.gguf", dict(embedding_length="big")))
  with pytest.raises(ValueError, match=r"shape\.gguf.*blk\.0\.ffn_up\.weight.*has shape"):
    gguf_lib.load_gguf(_gguf(tmp_path / "shape.gguf", shapes={"blk.0.ffn_up.weight": (16, 16)}))


def test_safetensors_faults_name_the_file(tmp_path):
  d = _hf_dir(tmp_path / "junk")
  (d / "model.safetensors").write_bytes(b"\x00" * 64)
  with pytest.raises(ValueError, match=r"junk/model\.safetensors is not a readable safetensors"):
    hf.load_hf(d)
  d = _hf_dir(tmp_path / "huge")  # header length claims far more bytes than the file has
  data = (d / "model.safetensors").read_bytes()
  (d / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + data[8:])
  with pytest.raises(ValueError, match=r"huge/model\.safetensors is not a readable"):
    hf.load_hf(d)
  d = _hf_dir(tmp_path / "cut")
  data = (d / "model.safetensors").read_bytes()
  (d / "model.safetensors").write_bytes(data[:len(data) - 100])
  with pytest.raises(ValueError, match=r"cut/model\.safetensors is not a readable"):
    hf.load_hf(d)
  tensors = tables.to_theirs(_params(), llm_tables.HF_RULES, CFG)
  tensors["model.layers.0.mlp.up_proj.weight"] = np.zeros((7, 16), np.float32)
  with pytest.raises(ValueError, match=r"up_proj\.weight' in .*shape/model\.safetensors has "
                     r"shape \(16, 7\)"):
    hf.load_hf(_hf_dir(tmp_path / "shape", tensors=tensors))
  tensors["model.layers.0.mlp.up_proj.weight"] = np.zeros((32, 16), np.int64)
  with pytest.raises(ValueError, match=r"up_proj\.weight' in .*int/model\.safetensors has dtype"):
    hf.load_hf(_hf_dir(tmp_path / "int", tensors=tensors))


def test_shard_index_cannot_leave_the_directory(tmp_path):
  d = _hf_dir(tmp_path / "idx")
  (tmp_path / "outside.safetensors").write_bytes((d / "model.safetensors").read_bytes())
  (d / "model.safetensors").unlink()
  index = d / "model.safetensors.index.json"
  index.write_text(json.dumps({"weight_map": {"x": "../outside.safetensors"}}))
  with pytest.raises(ValueError, match=r"index\.json: shard '\.\./outside\.safetensors' is not"):
    hf.load_hf(d)
  index.write_text(json.dumps({"weight_map": ["model.safetensors"]}))
  with pytest.raises(ValueError, match=r"index\.json: 'weight_map' must map"):
    hf.load_hf(d)


@pytest.mark.parametrize("config, match", [
    ("{not json", r"config\.json is not valid JSON"),
    ([1, 2], r"config\.json must hold a JSON object"),
    ({**HF_CONFIG, "architectures": ["GPT2LMHeadModel"]}, r"config\.json: architecture"),
    ({**HF_CONFIG, "hidden_size": -16}, r"config\.json: .*hidden_size"),
    ({**HF_CONFIG, "vocab_size": "many"}, r"config\.json: vocab_size='many' must be a positive"),
    ({**HF_CONFIG, "num_attention_heads": 0}, r"config\.json: "),
    ({k: v for k, v in HF_CONFIG.items() if k != "hidden_size"},
     r"config\.json: missing field 'hidden_size'"),
], ids=["syntax", "list", "arch", "negative", "string", "zero_heads", "missing"])
def test_bad_config_json(tmp_path, config, match):
  d = tmp_path / "m"
  d.mkdir()
  (d / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
  with pytest.raises(ValueError, match=match):
    hf.read_config(d)


class _Payload:
  """Unpickling this would create the marker file."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickled_checkpoints_are_never_opened(tmp_path):
  d = tmp_path / "torch_only"
  d.mkdir()
  (d / "config.json").write_text(json.dumps(HF_CONFIG))
  marker = tmp_path / "executed"
  (d / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
  with pytest.raises(FileNotFoundError, match="only safetensors checkpoints are read"):
    hf.load_hf(d)
  assert not marker.exists()


def test_library_never_unpickles_untrusted_data():
  offenders = []
  for f in (ROOT / "longvid_jax").rglob("*.py"):
    text = f.read_text()
    for m in re.finditer(r"pickle\.loads?\(|allow_pickle\s*=\s*True|torch\.load\(", text):
      call = text[m.start():m.start() + 300].split("\n\n")[0]  # the call's arguments
      if m.group(0) == "torch.load(" and "weights_only=True" in call:
        continue
      offenders.append(f"{f.relative_to(ROOT)}: {call.splitlines()[0]}")
  assert not offenders, offenders
