#!/usr/bin/env bash
# One GPU session's checks and benchmarks, in one call (a lent GPU is scarce: minutes, not hours).
#
#   bash bench/gpu_session.sh            # OUT=<folder for logs and weights>, default ./gpu-out
#   STAGES="tests throughput" bash bench/gpu_session.sh      # a subset (default: all five)
#   STAGES=goal bash bench/gpu_session.sh    # the ≥ 10× goal's measurements and the CUDA tests,
#                                            # fitted into one 600 s device call (DEADLINE=570)
#   STAGES=explore DEADLINE=270 bash ...     # every configuration's dense steady state, a profile
#   STAGES=split DEADLINE=565 bash ...       # split-TF32 products: accuracy, the tests, speed
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

# Seconds left of DEADLINE (default 570 s: one device call may run 600) for a stage, at most $1.
left() { local rest=$(( ${DEADLINE:-570} - SECONDS )); (( rest < $1 )) && echo $(( rest > 1 ? rest : 1 )) || echo "$1"; }

# The dense steady states not measured first: MiT-b2 without TTA, MiT-b0 with and without, batch
# 32, appended to $1 (a JSON-lines file); $DENSE is the stage's dense command.
dense_others() {
    timeout "$(left 75)" $DENSE --tta off --rss-variant b2 --batch-size 32 2>&1 | tee -a "$1"
    timeout "$(left 105)" $DENSE --tta both --rss-variant b0 --batch-size 32 2>&1 | tee -a "$1"
}

if [[ $STAGES == *goal* ]]; then
echo "== goal 1: MiT-b2 TTA 2048², reference vs production, eager and compiled, fp32 and fp16"
timeout "$(left 230)" python3 bench/inference.py --device cuda --amp both --size 2048 \
    --batch-size 32 --threads 8 --variants b2 --tta on --no-rss --compile auto 2>&1 \
    | tee "$OUT/goal_b2_tta.jsonl"
echo "== goal 2: dense 10,000² MiT-b2 TTA, compiled exact float32, disk to disk"
timeout "$(left 100)" python3 bench/inference.py --device cuda --no-throughput --rss-dense \
    --rss-exact --tta on --batch-size 32 --threads 8 --compile auto 2>&1 \
    | tee "$OUT/goal_dense.jsonl"
echo "== goal 3: tests/test_cuda.py"
timeout "$(left 150)" python3 -m pytest -v -p no:cacheprovider --noconftest tests/test_cuda.py \
    2>&1 | tee "$OUT/test_cuda.log" | grep -E "PASS|FAIL|ERROR|passed|failed|Error"
echo "== goal 4: MiT-b2 without TTA, MiT-b0 with and without, compiled exact float32"
timeout "$(left 120)" python3 bench/inference.py --device cuda --amp off --size 2048 \
    --batch-size 32 --threads 8 --variants b2 --tta off --no-rss --compile auto 2>&1 \
    | tee "$OUT/goal_others.jsonl"
timeout "$(left 200)" python3 bench/inference.py --device cuda --amp off --size 2048 \
    --batch-size 32 --threads 8 --variants b0 --tta both --no-rss --compile auto 2>&1 \
    | tee -a "$OUT/goal_others.jsonl"
echo "== goal: done after $SECONDS s"
fi

if [[ $STAGES == *explore* ]]; then
# the steady state of every configuration on the dense 10,000² scene (written once), compiled
# exact float32; then a profile; then the in-memory 2048² scene against the reference
DENSE="python3 bench/inference.py --device cuda --no-throughput --rss-dense --rss-exact \
    --threads 8 --compile auto --rss-scene /tmp/scene"
echo "== explore 1: dense MiT-b2 TTA, batch 64 (16 windows × 4 views per call)"
timeout "$(left 120)" $DENSE --tta on --batch-size 64 2>&1 | tee "$OUT/explore_dense.jsonl"
echo "== explore 2: dense MiT-b2 without TTA, MiT-b0 with and without, batch 32"
dense_others "$OUT/explore_dense.jsonl"
echo "== explore 3: where an eager batch spends its GPU time (MiT-b2, TTA, exact float32)"
timeout "$(left 40)" python3 bench/profile_forward.py --variant b2 --tta on --batch-size 32 \
    2>&1 | tee "$OUT/profile_b2.txt"
echo "== explore 4: MiT-b2 TTA 2048², compiled exact float32 in the steady state"
timeout "$(left 60)" python3 bench/inference.py --device cuda --amp off --size 2048 \
    --batch-size 32 --threads 8 --variants b2 --tta on --no-rss --compile auto 2>&1 \
    | tee "$OUT/explore_b2_tta.jsonl"
echo "== explore: done after $SECONDS s"
fi

if [[ $STAGES == *split* ]]; then
# float32 products as three TF32 tensor-core products (producer/segmentation/split_tf32.py):
# first whether they keep the reference's classes, then whether they reach the 10x goal
echo "== split 1: MiT-b2 TTA 2048², reference vs exact float32 and split TF32, compiled"
timeout "$(left 200)" python3 bench/inference.py --device cuda --amp off --split-tf32 \
    --size 2048 --batch-size 32 --threads 8 --variants b2 --tta on --no-rss --compile auto \
    2>&1 | tee "$OUT/split_b2_tta.jsonl"
DENSE="python3 bench/inference.py --device cuda --no-throughput --rss-dense --rss-exact \
    --threads 8 --compile auto --rss-scene /tmp/scene --split-tf32"
echo "== split 2: dense 10,000² MiT-b2 TTA, compiled split TF32, batch 32"
timeout "$(left 110)" $DENSE --tta on --batch-size 32 2>&1 | tee "$OUT/split_dense.jsonl"
echo "== split 3: CUDA inference (split TF32 included) and DiffGF against the CPU"
timeout "$(left 150)" python3 -m pytest -v -p no:cacheprovider --noconftest tests/test_cuda.py \
    tests/test_restoration.py -k "matches_the_cpu" 2>&1 | tee "$OUT/test_cuda_split.log" \
    | grep -E "PASS|FAIL|ERROR|passed|failed|Error"
echo "== split 4: dense MiT-b2 without TTA, MiT-b0 with and without"
dense_others "$OUT/split_dense.jsonl"
echo "== split 5: where an eager split batch spends its GPU time"
timeout "$(left 40)" python3 bench/profile_forward.py --variant b2 --tta on --batch-size 32 \
    --split-tf32 2>&1 | tee "$OUT/profile_b2_split.txt"
echo "== split: done after $SECONDS s"
fi

if [[ $STAGES == *tests* ]]; then
echo "== tests/test_cuda.py, and DiffGF restoration on CUDA against the CPU"
timeout 240 python3 -m pytest -q -p no:cacheprovider --noconftest tests/test_cuda.py \
    "tests/test_restoration.py::test_diffgf_on_cuda_matches_the_cpu_up_to_rounding" 2>&1 \
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
