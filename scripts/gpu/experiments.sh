#!/usr/bin/env bash
# A call on a warm GPU machine after call 1 (carry .gpu/b): runs a recipe
# (default recipes/minitron-compare.yaml; RECIPE=... for another, e.g.
# recipes/minitron-claims.yaml) within a time limit, then copies each
# training stage's metrics, each evaluation's table, metrics and items, and
# the report to $OUT. The store stays in /tmp while the machine is warm, so
# a later call with the same arguments resumes where this one stopped.
#   bash scripts/gpu/experiments.sh SECONDS [--set PATH=VALUE ...]
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
exec > >(tee "$OUT/experiments.log") 2>&1
source scripts/gpu/env.sh
source scripts/gpu/assets.sh
seconds=${1:-400}
shift || true
recipe=${RECIPE:-recipes/minitron-compare.yaml}
store=/tmp/store-experiments
timeout -s INT "$seconds" distillery run $recipe --store $store "$@"
echo "[run exit $?]"
distillery report $recipe --store $store "$@" -o "$OUT/report.html"
# Each stored stage's manifest.json names its stage: copy the training
# stages' metrics and the evaluation's table under those names.
for manifest in $store/store/*/manifest.json; do
    dir=$(dirname "$manifest")
    stage=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["stage"])' "$manifest")
    [ -f "$dir/out/metrics.jsonl" ] && cp "$dir/out/metrics.jsonl" "$OUT/metrics-$stage.jsonl"
    [ -f "$dir/out/table.md" ] && cp "$dir/out/table.md" "$OUT/table-$stage.md"
    [ -f "$dir/out/metrics.json" ] && cp "$dir/out/metrics.json" "$OUT/metrics-$stage.json"
    [ -f "$dir/out/items.json" ] && cp "$dir/out/items.json" "$OUT/items-$stage.json"
done
cat "$OUT"/table-*.md 2>/dev/null
echo "experiments.sh done in $SECONDS s"
