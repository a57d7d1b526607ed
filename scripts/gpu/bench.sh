#!/usr/bin/env bash
# Call 1 on a GPU machine (carry .gpu/a): the CubeCL kernels against the
# float64 oracle, then the distillation step's figures beside PyTorch's on
# the same card, in the order of docs/BENCHMARKS.md: where the step's
# device time goes (every launch profiled), the attention op against
# PyTorch's SDPA, tokens/s and MFU in f32 and bf16, the step against
# PyTorch (fp32 eager, bf16 with SDPA and fused AdamW, torch.compile), peak
# memory with a 128k vocabulary with and without the fused linear KD, then
# the KD loss and importance reductions. Writes the log, and each
# profile's table, to $OUT.
#
# All of it may not fit one call's 10 minutes: arguments pick sections,
#   bash scripts/gpu/bench.sh [kernels] [profile] [attention] [mfu] [torch] [memory] [reductions]
# (none: all), so that one call runs some and a later call on the same warm
# machine (carrying .gpu/a again) the rest.
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
exec > >(tee "$OUT/bench.log") 2>&1
source scripts/gpu/env.sh
# Carried folders do not outlive the next call; /tmp does, while the machine
# stays warm: keep what call 2 needs there.
mkdir -p /tmp/gpu && cp .gpu/a/gguf.part1 /tmp/gpu/
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "CUDA_PATH=$CUDA_PATH"
run() { echo; echo "\$ $*"; local t=$SECONDS; timeout "${LIMIT:-120}" "$@"; echo "[exit $? in $((SECONDS - t)) s]"; }
sections=" $* "
want() { [ "$sections" = "  " ] || [[ "$sections" == *" $1 "* ]]; }
cfg=.gpu/a
teacher=$cfg/teacher_config.json
student=$cfg/student_config.json
# The dense bf16 peak of an H100 SXM and of an H200 (the datasheets').
peak=989

# CI=true: a kernel test that finds no CUDA device fails instead of skipping.
want kernels && for t in kernels_matmul_cube kernels_rows_cube kernels_attention_cube kernels_attention_tiles kernels_adamw_cube \
    kernels_kd_cube kernels_kd_sparse_cube kernels_importance; do
    [ -x "$BIN/$t" ] && CI=true run "$BIN/$t" --test-threads 4
done

# 1. Where the device time goes: CubeCL times every launch on its own
# (3 steps: the bench's untimed one and 2 timed). The CUDA build autotunes
# (its first call of each product shape times the candidate kernels), and
# the tuning's launches would be profiled too: an unprofiled step first
# tunes every shape and leaves the choices in CubeCL's cache (target/).
# bf16 runs twice: the teacher's activations in two parts (the default),
# then rounded once (whose teacher holds its weights rounded: no casts).
want profile && for p in f32 bf16 "bf16 --teacher-activations rounded"; do
    name=${p// --teacher-activations /-}
    run distillery bench distill $teacher --student $student --device cuda \
        --rows 8 --seq 512 --steps 1 --precision $p | tail -n 1
    CUBECL_DEBUG_OPTION=profile CUBECL_DEBUG_LOG=/tmp/profile-$name.log \
        run distillery bench distill $teacher --student $student --device cuda \
        --rows 8 --seq 512 --steps 2 --precision $p
    python3 scripts/gpu/kernel_profile.py /tmp/profile-$name.log --steps 3 --kernels | tee "$OUT/profile-$name.md"
done

# 1b. The attention op alone at the MFU run's shape (SmolLM2's 9 heads on
# 3, head size 64), against PyTorch's SDPA: ours in f32, in bf16 (the
# forward's products on tensor cores, attention_tiles_cube) and in bf16
# with the tiles switched off; torch in fp32 and bf16 with the kernel it
# picks (flash in bf16), and fp32 without a fused kernel (math).
if want attention; then
    run distillery bench attention --device cuda --rows 32 --seq 512 --repeats 10
    run distillery bench attention --device cuda --rows 32 --seq 512 --repeats 10 --precision bf16
    DISTILLERY_ATTENTION_TILES=0 run distillery bench attention --device cuda --rows 32 --seq 512 \
        --repeats 10 --precision bf16
    for p in fp32 bf16; do
        run python3 scripts/bench_attention_torch.py --device cuda --rows 32 --seq 512 --dtype $p
    done
    run python3 scripts/bench_attention_torch.py --device cuda --rows 32 --seq 512 --dtype fp32 --kernel math
fi

# 2. Tokens/s and MFU: 135M teacher -> 84M width student, 32 x 512; bf16
# with the teacher's activations in two parts (the default) and rounded
# once (as autocast: the arithmetic of PyTorch's bf16 side in 3).
if want mfu; then
    for p in f32 bf16 "bf16 --teacher-activations rounded"; do
        run distillery bench distill $teacher --student $student --device cuda \
            --rows 32 --seq 512 --steps 4 --peak-tflops $peak --precision $p | tee "/tmp/distill-${p// /_}.txt"
    done
    # Call 2 sizes its run by the faster arithmetic's speed.
    grep -ho '[0-9.]* tokens/s' /tmp/distill-*.txt | sort -g | tail -1 | cut -d' ' -f1 >/tmp/gpu/tokens_per_s || true
fi

# 3. Against PyTorch, 135M -> 135M (transformers cannot load the pruned
# config), 8 x 512, back to back.
if want torch; then
    for p in f32 bf16 "bf16 --teacher-activations rounded"; do
        run distillery bench distill $teacher --device cuda --rows 8 --seq 512 --steps 4 \
            --peak-tflops $peak --precision $p
    done
    torch_bench() { run python3 scripts/bench_distill_torch.py $teacher --device cuda --rows 8 --seq 512 --steps 4 "$@"; }
    torch_bench --precision fp32 --attn eager
    torch_bench --precision bf16 --attn sdpa --fused-adamw
    LIMIT=240 torch_bench --precision bf16 --attn sdpa --fused-adamw --compile
fi

# 4. Peak memory with a Llama-3 vocabulary (128,256, random weights), bf16,
# 8 x 1024: the whole logits against the fused linear KD's chunks.
if want memory; then
    for chunk in "" "--head-chunk-rows 1024"; do
        run distillery bench distill $cfg/llama3_vocab_config.json --device cuda --rows 8 --seq 1024 \
            --steps 2 --precision bf16 $chunk
    done
    run python3 scripts/bench_distill_torch.py $cfg/llama3_vocab_config.json --device cuda --rows 8 \
        --seq 1024 --steps 2 --precision bf16 --attn sdpa --fused-adamw
fi

# 5. The fused KD loss and the importance reductions.
if want reductions; then
    run distillery bench kd --device cuda --check --repeats 20 --top-k 64
    run distillery bench kd --device cuda --check --repeats 20 --dtype bf16
    run python3 scripts/bench_kd_torch.py --device cuda --dtype fp32 --repeats 20
    run python3 scripts/bench_kd_torch.py --device cuda --dtype bf16 --repeats 20
    run distillery bench importance --device cuda --check --iters 200
    # One batch of 8 x 512 at widths 96 to 14,336: per-call time against bytes
    # separates a fixed cost per call from the per-byte cost.
    run distillery bench importance --device cuda --iters 400 --shape 8x512x96 \
        --shape 8x512x576 --shape 8x512x1536 --shape 8x512x6144 --shape 8x512x14336
    # The narrow shape's device time per kernel: far below the wall time per
    # call means the fixed cost is on the host (launch path, buffers).
    CUBECL_DEBUG_OPTION=profile CUBECL_DEBUG_LOG=/tmp/profile-importance.log \
        run distillery bench importance --device cuda --iters 100 --shape 8x512x1536
    python3 scripts/gpu/kernel_profile.py /tmp/profile-importance.log --kernels | tee "$OUT/profile-importance.md"
fi

echo "bench.sh done in $SECONDS s"
