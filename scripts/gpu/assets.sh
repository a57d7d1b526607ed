# Sourced by the GPU scripts that run recipes: reassembles the teacher from
# the part call 1 left in /tmp/gpu and the part carried in .gpu/b, checks it
# against the assets README's sha256, and lays the carried corpus, held-out
# texts and benchmarks out as ../shared/assets, where the recipes look.
assets=../shared/assets
mkdir -p $assets/models $assets/corpus $assets/benchmarks
cat /tmp/gpu/gguf.part1 .gpu/b/gguf.part2 >$assets/models/SmolLM2-135M-Instruct.Q4_1.gguf
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $assets/models/SmolLM2-135M-Instruct.Q4_1.gguf" |
    sha256sum -c || exit 1
cp .gpu/b/*.txt.zst .gpu/b/distill_train.jsonl.zst $assets/corpus/
for f in .gpu/b/bench-*.jsonl.zst; do [ -f "$f" ] && cp "$f" "$assets/benchmarks/${f#.gpu/b/bench-}"; done
