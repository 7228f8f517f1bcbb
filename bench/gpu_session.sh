#!/usr/bin/env bash
# One GPU session's checks and benchmarks, in one call (a lent GPU is scarce: minutes, not hours).
#
#   bash bench/gpu_session.sh            # OUT=<folder for logs and weights>, default ./gpu-out
#   STAGES="tests throughput" bash bench/gpu_session.sh      # a subset (default: all five)
#   Each device call may run 600 s: split the stages, e.g. "dense compile", then "tests".
#
# 1. tests/test_cuda.py (CUDA inference, SegFormer AMP training, DiffGF training on the GPU);
# 2. bench/inference.py on CUDA: reference vs production (float32 and float16 autocast), b0/b2,
#    with and without TTA, on a 2048² scene;
# 3. a dense 10,000² MiT-b2 scene disk to disk on the GPU (time, GPU memory, RSS);
# 4. demo DiffGF trained on the GPU for DIFFGF_MINUTES, then evaluated against FillNodata on the
#    model card's held-out tiles;
# 5. compile: the production forward compiled (torch.compile, CUDA graphs) — MiT-b2 with TTA in
#    float16 on the 2048² scene against the reference, then the dense 10,000² scene.
# Python packages the GPU image lacks travel as wheels in .whl/ (see docs/benchmarks.md).
set -u
OUT=${OUT:-gpu-out}
STAGES=${STAGES:-tests throughput dense compile diffgf}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=$PWD:/tmp/site
else
    export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, diffusers, rasterio; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'diffusers', diffusers.__version__, 'rasterio', \
rasterio.__version__, 'cpus', torch.get_num_threads())" | tee -a "$OUT/gpu.txt"

if [[ $STAGES == *tests* ]]; then
echo "== tests/test_cuda.py"
timeout 240 python3 -m pytest -q -p no:cacheprovider --noconftest tests/test_cuda.py 2>&1 \
    | tee "$OUT/test_cuda.log" | tail -8
fi

if [[ $STAGES == *throughput* ]]; then
echo "== throughput"
timeout 130 python3 bench/inference.py --device cuda --amp both --size 2048 --batch-size 32 \
    --threads 8 --no-rss 2>&1 | tee "$OUT/gpu_throughput.jsonl"
fi

if [[ $STAGES == *dense* ]]; then
echo "== dense 10000^2 MiT-b2, TTA, disk to disk"
timeout 100 python3 bench/inference.py --device cuda --no-throughput --rss-dense --tta on \
    --batch-size 32 --threads 8 2>&1 | tee "$OUT/gpu_dense.jsonl"
fi

if [[ $STAGES == *compile* ]]; then
echo "== compiled forward (torch.compile, reduce-overhead)"
timeout 200 python3 bench/inference.py --device cuda --amp on --size 2048 --batch-size 32 \
    --threads 8 --variants b2 --tta on --no-rss --compile auto 2>&1 | tee "$OUT/gpu_compile.jsonl"
timeout 150 python3 bench/inference.py --device cuda --no-throughput --rss-dense --tta on \
    --batch-size 32 --threads 8 --compile auto 2>&1 | tee "$OUT/gpu_compile_dense.jsonl"
fi

if [[ $STAGES == *diffgf* ]]; then
echo "== DiffGF on the GPU"
ICE="import typer; from producer.restoration.commands import register; app = typer.Typer(); \
register(app); app()"
timeout $(( ${DIFFGF_MINUTES:-2} * 60 + 60 )) python3 -c "$ICE" train-diffgf --out "$OUT/diffgf" \
    --crop 64 --batch 16 --vae-steps 1500 --unet-steps 200000 --device cuda --workers 12 \
    --checkpoint-every 100000 --max-minutes "${DIFFGF_MINUTES:-2}" 2>&1 | tail -3
rm -f "$OUT/diffgf/checkpoint.safetensors" "$OUT/diffgf/checkpoint.json" \
    "$OUT/diffgf/checkpoint.optim.safetensors"
timeout 90 python3 -c "$ICE" evaluate-restoration --diffgf "$OUT/diffgf/diffgf.safetensors" \
    --synthetic 12 --size 256 --steps 20 --seed 0 --out "$OUT/diffgf/eval.json" 2>&1 | tail -20
ls -la "$OUT" "$OUT/diffgf"
fi
