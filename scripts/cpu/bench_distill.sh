#!/usr/bin/env bash
# The distillation step against PyTorch on this CPU, both sides back to
# back in one run: `distillery bench distill` in f32 and bf16 and
# scripts/bench_distill_torch.py in fp32 and bf16 autocast, 135M -> 135M and
# 135M -> 84M (the quickstart's pruned student), ROUNDS times.
#
#   scripts/cpu/bench_distill.sh TEACHER_DIR STUDENT_DIR [ROUNDS]
#
# TEACHER_DIR: `distillery export` of the teacher in f32; STUDENT_DIR: the
# same of the quickstart's `pruned` stage. Needs a release build and a
# python3 with torch and transformers ($PYTHON, default python3).
set -euo pipefail
teacher=${1:?usage: $0 TEACHER_DIR STUDENT_DIR [ROUNDS]}
student=${2:?usage: $0 TEACHER_DIR STUDENT_DIR [ROUNDS]}
rounds=${3:-2}
python=${PYTHON:-python3}
bin=$(dirname "$0")/../../target/release/distillery
common=(--rows 4 --seq 256 --steps 3)

lscpu | grep -E "Model name|^CPU\(s\)" | sed 's/  */ /g'
grep -o -w -E "avx2|avx512f|avx512_bf16|amx_bf16" /proc/cpuinfo | sort -u | tr '\n' ' '
echo
for round in $(seq "$rounds"); do
  for pair in "135M->135M:" "135M->84M:--student $student"; do
    name=${pair%%:*}
    student_arg=(${pair#*:})
    for precision in f32 bf16; do
      echo "== round $round, $name, distillery $precision"
      "$bin" bench distill "$teacher" "${student_arg[@]}" "${common[@]}" --precision "$precision" | grep -E "step|tokens/s"
    done
    for precision in fp32 bf16; do
      echo "== round $round, $name, PyTorch $precision"
      "$python" "$(dirname "$0")/../bench_distill_torch.py" "$teacher" "${student_arg[@]}" "${common[@]}" --precision "$precision" | grep -E "step|tokens/s"
    done
  done
done
