#!/usr/bin/env bash
# Builds the CUDA binary (no CUDA needed to build) and, when they fit, the
# CubeCL kernel tests, and packs what a GPU machine needs into two folders,
# each under the 64 MiB one device call carries with the working tree:
#   .gpu/a  binaries (xz), model configs, the first part of the teacher GGUF
#   .gpu/b  the rest of the GGUF, the training corpus, the held-out texts,
#           the benchmarks
# On the GPU machine: scripts/gpu/bench.sh (call 1, carries .gpu/a; its
# arguments split its sections over two calls when they do not fit one), then,
# on the same warm machine with .gpu/b carried, a recipe: issue 13's
# numerics check `RECIPE=recipes/bf16-training.yaml scripts/gpu/experiments.sh
# 300` (300 steps in bf16 and in f32), scripts/gpu/distill.sh, or
# `RECIPE=recipes/minitron-claims.yaml scripts/gpu/experiments.sh 500
# --set vars.tokens=N` (a later call resumes its store).
# Before a GPU session with changed CUDA-only kernels, run
# scripts/gpu/cuda_compile_check.sh here: it compiles them for sm_80 and
# sm_90a without a GPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
assets=../shared/assets
limit=$((61 << 20)) # per folder; the tracked tree travels too
cargo build --release --locked --features cuda
rm -rf .gpu && mkdir -p .gpu/a .gpu/b .gpu/tests
strip -o .gpu/a/distillery target/release/distillery
xz -T2 -6 .gpu/a/distillery
cargo test --release --locked --features cuda -p distillery-ops \
    --test kernels_kd_cube --test kernels_kd_sparse_cube --test kernels_importance \
    --test kernels_attention_cube --test kernels_attention_tiles --test kernels_adamw_cube --test kernels_rows_cube \
    --test kernels_matmul_cube --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])' |
    while read -r name exe; do strip -o ".gpu/tests/$name" "$exe" && xz -T2 -6 ".gpu/tests/$name"; done
python3 - "$assets/reference/config.json" .gpu/a <<'PY'
import json, sys
config = json.load(open(sys.argv[1]))
json.dump(config, open(sys.argv[2] + "/teacher_config.json", "w"), indent=1)
# Llama 3's vocabulary on SmolLM2's shape, for the memory of the logits.
json.dump(dict(config, vocab_size=128256), open(sys.argv[2] + "/llama3_vocab_config.json", "w"), indent=1)
# The width-pruned student of recipes/smollm2-distill-width*.yaml.
config.update(hidden_size=448, intermediate_size=1024)
json.dump(config, open(sys.argv[2] + "/student_config.json", "w"), indent=1)
PY
cp "$assets/corpus/distill_train.jsonl.zst" "$assets"/corpus/heldout_*.txt.zst .gpu/b/
# The benchmarks recipes/minitron-claims.yaml evaluates on (7.5 MB).
for name in hellaswag_validation piqa_validation arc_easy_test arc_challenge_test \
    winogrande_xl_validation lambada_openai_test boolq_validation commonsense_qa_validation \
    mmlu_test openbookqa_test sciq_validation social_iqa_validation copa_validation; do
    cp "$assets/benchmarks/$name.jsonl.zst" ".gpu/b/bench-$name.jsonl.zst"
done
gguf=$assets/models/SmolLM2-135M-Instruct.Q4_1.gguf
size() { du -cb "$@" | tail -1 | cut -f1; }
rest_b=$((limit - $(size .gpu/b)))
first=$(($(stat -c %s "$gguf") - rest_b))
tests=$(size .gpu/tests/*)
if [ $(($(size .gpu/a) + tests + first)) -le $limit ]; then
    mv .gpu/tests/*.xz .gpu/a/
else
    echo "the kernel test binaries ($tests bytes) do not fit: bench --check stands in for them"
fi
head -c "$first" "$gguf" >.gpu/a/gguf.part1
tail -c +"$((first + 1))" "$gguf" >.gpu/b/gguf.part2
rm -rf .gpu/tests
du -sh .gpu/a .gpu/b
ls -la .gpu/a .gpu/b
