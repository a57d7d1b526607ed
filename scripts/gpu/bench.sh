#!/usr/bin/env bash
# Call 1 on a GPU machine (carry .gpu/a): the CubeCL kernels against the
# float64 oracle, then the KD loss, importance and distillation-step
# figures beside PyTorch's on the same card. Writes the log to $OUT.
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
exec > >(tee "$OUT/bench.log") 2>&1
source scripts/gpu/env.sh
# Carried folders do not outlive the next call; /tmp does, while the machine
# stays warm: keep what call 2 needs there.
mkdir -p /tmp/gpu && cp .gpu/a/gguf.part1 /tmp/gpu/
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "CUDA_PATH=$CUDA_PATH"
run() { echo; echo "\$ $*"; local t=$SECONDS; timeout 120 "$@"; echo "[exit $? in $((SECONDS - t)) s]"; }
# CI=true: a kernel test that finds no CUDA device fails instead of skipping.
for t in kernels_kd_cube kernels_kd_sparse_cube kernels_importance kernels_attention_cube kernels_adamw_cube kernels_rows_cube kernels_matmul_cube; do
    [ -x "$BIN/$t" ] && CI=true run "$BIN/$t" --test-threads 4
done
run distillery bench kd --device cuda --check --repeats 20 --top-k 64
run distillery bench kd --device cuda --check --repeats 20 --dtype bf16
run distillery bench kd --device cuda --check --repeats 5 --loss jsd --beta 0.1 --temperature 2
run python3 scripts/bench_kd_torch.py --device cuda --dtype fp32 --repeats 20
run python3 scripts/bench_kd_torch.py --device cuda --dtype bf16 --repeats 20
run distillery bench importance --device cuda --check --iters 200
# One batch of 8 x 512 at widths 96 to 14,336: per-call time against bytes
# separates a fixed cost per call from the per-byte cost (BENCHMARKS.md,
# importance reduction on CUDA).
run distillery bench importance --device cuda --iters 400 --shape 8x512x96 \
    --shape 8x512x576 --shape 8x512x1536 --shape 8x512x6144 --shape 8x512x14336
cfg=.gpu/a
run distillery bench distill $cfg/teacher_config.json --student $cfg/student_config.json \
    --device cuda --rows 32 --seq 512 --steps 4 --peak-tflops 989 | tee /tmp/distill-bench.txt
grep -o '[0-9.]* tokens/s' /tmp/distill-bench.txt | head -1 | cut -d' ' -f1 > /tmp/gpu/tokens_per_s || true
run distillery bench distill $cfg/teacher_config.json --device cuda --rows 8 --seq 512 --steps 4 --peak-tflops 989
run python3 scripts/bench_distill_torch.py $cfg/teacher_config.json --device cuda --rows 8 --seq 512 --steps 4
echo "bench.sh done in $SECONDS s"
