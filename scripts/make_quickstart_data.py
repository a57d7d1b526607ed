#!/usr/bin/env python3
"""Builds data/quickstart/ (the text and benchmarks of recipes/quickstart.yaml).

    python3 scripts/make_quickstart_data.py CORPUS BENCHMARKS [OUT]

CORPUS is a JSONL corpus `{"source", "doc_id", "text"}` (optionally
zstd-compressed), e.g. ../shared/assets/corpus/distill_train.jsonl.zst;
BENCHMARKS is the folder of benchmark JSONL files, e.g.
../shared/assets/benchmarks; OUT defaults to data/quickstart.

Only public-domain sources are taken (State of the Union addresses,
Shakespeare, Milton, the King James Bible): every third document of each of
them, in the corpus's order, so that the selection spans the whole range of
each source (1790 to 2021 for the addresses, Genesis to Jude). The
benchmarks are the first BENCHMARK_ITEMS items of each file, unchanged.
Compression uses the `zstd` command (level 19), so the same inputs and zstd
version give the same bytes.
"""

import json
import os
import subprocess
import sys

PUBLIC_DOMAIN = ("sotu", "shakespeare", "milton", "kjv")
EVERY = 3
BENCHMARKS = ("piqa_validation", "arc_easy_test")
BENCHMARK_ITEMS = 200


def read_lines(path):
    """The file's lines, through `zstd -dc` when it is compressed."""
    if path.endswith(".zst"):
        data = subprocess.run(["zstd", "-dcq", path], check=True, stdout=subprocess.PIPE).stdout
    else:
        with open(path, "rb") as f:
            data = f.read()
    return data.decode("utf-8").splitlines()


def write_zst(path, lines):
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    subprocess.run(["zstd", "-19", "-q", "-f", "-o", path], input=data, check=True)
    return len(data), os.path.getsize(path)


def main(corpus, benchmarks, out="data/quickstart"):
    os.makedirs(os.path.join(out, "benchmarks"), exist_ok=True)
    seen = {s: 0 for s in PUBLIC_DOMAIN}
    kept = []
    for line in read_lines(corpus):
        doc = json.loads(line)
        source = doc.get("source")
        if source not in seen:
            continue
        if seen[source] % EVERY == 0:
            record = {"source": source, "doc_id": doc["doc_id"], "text": doc["text"]}
            kept.append(json.dumps(record, ensure_ascii=False))
        seen[source] += 1
    raw, packed = write_zst(os.path.join(out, "text.jsonl.zst"), kept)
    counts = {s: (n + EVERY - 1) // EVERY for s, n in seen.items()}
    print(f"text.jsonl.zst: {len(kept)} documents {counts}, {raw:,} bytes, {packed:,} compressed")
    for name in BENCHMARKS:
        items = read_lines(os.path.join(benchmarks, name + ".jsonl.zst"))[:BENCHMARK_ITEMS]
        path = os.path.join(out, "benchmarks", name + ".jsonl.zst")
        raw, packed = write_zst(path, items)
        print(f"{os.path.basename(path)}: {len(items)} items, {raw:,} bytes, {packed:,} compressed")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    main(*sys.argv[1:])
