#!/usr/bin/env bash
# One command that turns a rented GPU machine (no network, no PyAV, no compressai) into a
# better base model: installs compressai from a wheels folder, runs the GPU checks (about two
# minutes), then trains the variable-rate model for a fixed wall-clock time and writes the
# model, its loss curve and the checks' figures to OUT. docs/models.md says how to prepare the
# inputs and what a run gave.
#
#   deploy/gpu-training/train_gpu.sh WHEELS TRAIN_PACK EVAL_PACK OUT [MINUTES]
#
# REHEARSE=1 rehearses the whole run on a CPU: tiny check sizes, a few training steps.
# INIT (default ssf-small-vr, the bundled variable-rate model), LR (2e-4) and BATCH (96) tune the run.
set -euo pipefail

if [ $# -lt 4 ]; then
    echo "usage: $0 WHEELS TRAIN_PACK EVAL_PACK OUT [MINUTES]" >&2
    exit 2
fi
wheels=$1 train_pack=$2 eval_pack=$3 out=$4 minutes=${5:-4}
mkdir -p "$out"

# WHEELS holds compressai's, crc32c's and adaptcast's own (`pip wheel --no-deps . ./bench` in the
# repository), so that the code that runs is the code that was tested, installed under its names.
if ! python3 -c "import compressai, crc32c, adaptcast.cli, adaptcast_bench" 2>/dev/null; then
    site=$(mktemp -d)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
adaptcast() { python3 -m adaptcast "$@"; }

model="$out/ssf-small-vr.safetensors"
lambdas=0.0018,0.0035,0.0067,0.013
init=${INIT:-ssf-small-vr}
if [ "${REHEARSE:-0}" = 1 ]; then
    device=cpu checks=(--rehearse --adapt-steps 2) train=(--batch 2 --steps 3 --crop-start 64 --crop 128)
else
    device=cuda checks=() train=(--batch "${BATCH:-96}" --steps 1000000 --crop-start 128 --crop 192)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
fi

echo "== GPU checks (default model)"
adaptcast gpu-checks --eval-pack "$eval_pack" --out "$out/gpu-checks.json" --device "$device" "${checks[@]}"

echo "== training the variable-rate model for $minutes minutes"
adaptcast train-base --frames "$train_pack" -o "$model" --init "$init" --rate-lambdas "$lambdas" \
    --gop 7 --lr "${LR:-2e-4}" --max-minutes "$minutes" --schedule-minutes "$minutes" --device "$device" "${train[@]}" \
    --name ssf-small-vr 2>&1 | tee "$out/train.log"

echo "== the new model, encoded on the GPU and decoded on the CPU, at its lowest and highest quality"
for quality in 0 3; do
    adaptcast gpu-checks --eval-pack "$eval_pack" --model "$model" --out "$out/cross-device-q$quality.json" \
        --device "$device" --checks cross_device --quality "$quality" "${checks[@]}"
done
rm -f "${model%.safetensors}.ckpt"  # the optimizer's state: too big to bring back, and the model resumes as --init
ls -l "$out"
