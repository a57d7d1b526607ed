#!/usr/bin/env bash
# The model forward against transformers on this CPU, both sides back to
# back in one run: `distillery bench forward` in f32 and bf16 and
# scripts/bench_forward_torch.py (fp32 and bf16), at 1 x 512 and 4 x 256.
#
#   scripts/cpu/bench_forward.sh GGUF TEACHER_DIR
#
# GGUF: the teacher's GGUF; TEACHER_DIR: `distillery export` of it in f32.
# Needs a release build and a python3 with torch and transformers
# ($PYTHON, default python3).
set -euo pipefail
gguf=${1:?usage: $0 GGUF TEACHER_DIR}
teacher=${2:?usage: $0 GGUF TEACHER_DIR}
python=${PYTHON:-python3}
bin=$(dirname "$0")/../../target/release/distillery

lscpu | grep -E "Model name|^CPU\(s\)" | sed 's/  */ /g'
grep -o -w -E "avx2|avx512f|avx512_bf16|amx_bf16" /proc/cpuinfo | sort -u | tr '\n' ' '
echo
for precision in f32 bf16; do
  echo "== distillery $precision"
  "$bin" bench forward "$gguf" --rows 1,4 --seq 512,256 --runs 5 --decode 0 --precision "$precision" | grep -E "tokens/s"
done
echo "== transformers"
"$python" "$(dirname "$0")/../bench_forward_torch.py" "$teacher" --runs 5 2>&1 | grep -v "Loading weights"
