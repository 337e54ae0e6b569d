#!/usr/bin/env bash
# The accelerator measurements, as one run: speed against the official code,
# sampling and serving throughput, and training MFU, on the GPU or TPU that JAX
# sees. Each command prints JSON lines; all of them are collected in OUT.
#
#   git clone https://github.com/FoundationVision/LlamaGen /src/LlamaGen
#   git clone https://github.com/bytedance/1d-tokenizer /src/1d-tokenizer
#   bash benchmarks/accelerator.sh /src/LlamaGen /src/1d-tokenizer results/h100
#
# The official side needs torch with CUDA (and omegaconf, einops, torchvision
# for TiTok) installed next to vwt_jax[cuda]. Goals it checks against: 8
# images with CFG from GPT-XL at 384 px in at most 1 s on one H100, at least
# half of the memory bound per decode step (`memory_bound_fraction`), GPT-XL
# training at 45 % MFU or more.
set -euo pipefail

if [[ $# -ne 3 ]]; then
  echo "usage: $0 LLAMAGEN_CHECKOUT TITOK_CHECKOUT OUT_DIR" >&2
  exit 2
fi
llamagen=$1
titok=$2
out=$3
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
if [[ -n "$(ls -A "$out")" ]]; then
  echo "$out is not empty: give a new folder (results are never overwritten)" >&2
  exit 2
fi

run() {
  local name=$1
  shift
  echo "== $name: $*" >&2
  python "$@" | tee "$out/$name.jsonl"
}

python -c "import jax; print(jax.devices())" | tee "$out/devices.txt"
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.csv"
fi

run vs_official_bf16 "$here/vs_official.py" --llamagen "$llamagen" --titok "$titok" \
    --dtype bfloat16 --repeats 3 --official_compile \
    --cases gpt-B:8,gpt-L:8,gpt-XL:8,gpt-XL@24:8,gpt-B:32,gpt-XL:32,gpt-B:1
run vs_official_fp32 "$here/vs_official.py" --llamagen "$llamagen" --titok "$titok" \
    --repeats 3 \
    --cases titok-L-32:32,titok-B-64:32,titok-S-128:32,vq-16:32,train-gpt-B:32,train-titok-S-128:32
run sampling "$here/sampling.py" --configs B,L,XL --batches 1,8,32,64 --cfg on --repeats 3 \
    --no-baseline
run serving "$here/serving.py" --config XL --grid 24 --requests 256 --batch_size 32
for size in B L XL; do
  run "train_step_$size" "$here/train_step.py" --config "$here/../configs/llamagen.py:$size" \
      --steps 10 --warmup 3
done
echo "results in $out" >&2
