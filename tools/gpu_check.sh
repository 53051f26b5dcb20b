#!/usr/bin/env bash
# Accelerator check, at most 8 minutes: the GPU tests (cuDNN flash attention against XLA in
# bfloat16, sharded init, one train step of each stage), then tools/bench_mfu.py on a ~1B
# LLM (MFU and tokens/s). Without a GPU it says so and exits 0.
#   bash tools/gpu_check.sh            # from the repository root, in the test venv
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' 2>/dev/null; then
  echo "gpu_check: JAX sees no GPU here ($(python -c 'import jax; print(jax.default_backend())' \
    2>/dev/null || echo 'jax missing')); nothing to check"
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c 'import jax; print("jax", jax.__version__, jax.devices())'
timeout 300 python -m pytest -q -p no:cacheprovider tests/test_gpu.py
# ~1.04B decoder (hidden 2048, 18 layers, 16 heads, SwiGLU 5504, vocab 32000) behind the
# reduced vision path; bf16 compute, one device
timeout 180 python tools/bench_mfu.py --reduced --mesh 1:1,1,1 --per_device_batch 4 --steps 5 \
  --set 'model.llm.args.hidden_size=2048' --set 'model.llm.args.intermediate_size=5504' \
  --set 'model.llm.args.num_layers=18' --set 'model.llm.args.num_heads=16' \
  --set 'model.llm.args.num_kv_heads=16' --set 'model.llm.args.vocab_size=32000' \
  --set 'model.llm.args.dtype=bfloat16' --set 'data.seq_len=2048'
