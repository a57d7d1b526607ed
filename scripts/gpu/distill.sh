#!/usr/bin/env bash
# Call 2 on the same warm GPU machine (carry .gpu/b; call 1 left the first
# part of the GGUF and its measured speed in /tmp/gpu):
# reassembles the teacher, lays the assets out as ../shared/assets, and runs
# recipes/smollm2-distill-width-gpu.yaml, its token budget lowered only when
# call 1's measured speed says it cannot finish in the time left. Copies the
# metrics, the evaluation table and the report to $OUT.
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
exec > >(tee "$OUT/distill.log") 2>&1
source scripts/gpu/env.sh
seconds=${1:-380}
source scripts/gpu/assets.sh
recipe=recipes/smollm2-distill-width-gpu.yaml
tokens=2097152
if [ -s /tmp/gpu/tokens_per_s ]; then
    # About 90 s go to tokenizing, importance, pruning and evaluation.
    fits=$(python3 -c "print(int(float(open('/tmp/gpu/tokens_per_s').read()) * ($seconds - 90) // 16384 * 16384))")
    if [ "$fits" -lt "$tokens" ]; then
        echo "call 1 measured $(cat /tmp/gpu/tokens_per_s) tokens/s: lowering the budget to $fits tokens"
        tokens=$fits
        sed "s/tokens: 2_097_152/tokens: $tokens/" $recipe >recipes/gpu-run.yaml
        recipe=recipes/gpu-run.yaml
    fi
fi
store=/tmp/store
timeout -s INT "$seconds" distillery run $recipe --store $store
echo "[run exit $?]"
distillery report $recipe --store $store -o "$OUT/report.html"
for f in metrics.jsonl training.json table.md metrics.json; do
    find $store -name "$f" -newer $assets/models -exec cp {} "$OUT/" \;
done
cat "$OUT/table.md" 2>/dev/null
echo "distill.sh done in $SECONDS s"
