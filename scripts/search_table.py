#!/usr/bin/env python3
"""The architecture search's table from a run of recipes/minitron-search.yaml.

For every candidate (the expansions of the `candidate` prune stage): its
shape, parameters, held-out loss right after pruning and after the short
distillation (both from the `search_table` evaluation, on the same held-out
rows), and its rank by each; then the Spearman rank correlation between the
two rankings, and, for the candidates the `longer` stage distils further,
between the short and the longer distillation's held-out losses (from each
stage's training.json, on the same rows).

    python3 scripts/search_table.py recipes/minitron-search.yaml \\
        --store /tmp/search-store [--distillery target/release/distillery]

Needs only the standard library.
"""

import argparse
import json
import os
import re
import sys

from store_stages import stage_dirs


def ranks(values):
    """Rank of each value, 1 for the lowest; ties share their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a, b):
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    return cov / (va * vb) ** 0.5 if va and vb else float("nan")


def last_heldout_loss(out):
    """The last held-out loss a training stage's summary recorded, or None
    when the stage has not run."""
    summary = out and os.path.join(out, "training.json")
    if not summary or not os.path.exists(summary):
        return None
    with open(summary) as f:
        return json.load(f)["last_eval"]["loss"]


def axes(stage):
    """`candidate[hidden=448,ffn=1024]` -> "hidden=448,ffn=1024"."""
    m = re.search(r"\[(.*)\]$", stage)
    return m.group(1) if m else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipe")
    ap.add_argument("--store", required=True)
    ap.add_argument("--distillery", default="target/release/distillery")
    args = ap.parse_args()

    dirs = stage_dirs(args.distillery, args.recipe, args.store)
    table = os.path.join(dirs["search_table"], "metrics.json")
    if not os.path.exists(table):
        sys.exit(f"{table} is missing: run the recipe up to `search_table` first")
    with open(table) as f:
        models = {m["stage"]: m for m in json.load(f)["models"]}

    rows = []
    for stage, m in models.items():
        if not stage.startswith("candidate["):
            continue
        key = axes(stage)
        short = models.get(f"short[{key}]")
        if short is None:
            sys.exit(f"the evaluation has no `short[{key}]` beside `{stage}`")
        rows.append(
            {
                "axes": key,
                "shape": dict(kv.split("=") for kv in key.split(",")),
                "parameters": m["parameters"],
                "pruned": m["loss"],
                "short": short["loss"],
            }
        )
    pruned_rank = ranks([r["pruned"] for r in rows])
    short_rank = ranks([r["short"] for r in rows])
    rows = [dict(r, pruned_rank=p, short_rank=s) for r, p, s in zip(rows, pruned_rank, short_rank)]
    rows.sort(key=lambda r: r["short_rank"])

    print("| hidden | ffn | heads | layers | parameters | loss after pruning (rank) | after the short distillation (rank) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        s = r["shape"]
        print(
            f"| {s['hidden']} | {s['ffn']} | {s['heads']} | {s['layers']} "
            f"| {r['parameters'] / 1e6:.2f}M | {r['pruned']:.4f} ({r['pruned_rank']:g}) "
            f"| {r['short']:.4f} ({r['short_rank']:g}) |"
        )
    print()
    print(
        f"Spearman, ranking after pruning against after the short distillation "
        f"({len(rows)} candidates): {spearman([r['pruned'] for r in rows], [r['short'] for r in rows]):+.3f}"
    )

    # Short against longer: both from the runs' own last held-out
    # evaluation, on the same rows. `longer[rank=N]` distils the candidate
    # that `top[rank=N]` selected; `longer[AXES]` the candidate of AXES.
    longer_of = {}
    for stage, out in dirs.items():
        key = axes(stage)
        if not stage.startswith("longer[") or key is None:
            continue
        if key.startswith("rank="):
            top = dirs.get(f"top[{key}]")
            selection = top and os.path.join(top, "selection.json")
            if not selection or not os.path.exists(selection):
                continue
            with open(selection) as f:
                key = axes(json.load(f)["continued_from"])
        longer_of[key] = last_heldout_loss(out)
    longer = []
    for r in rows:
        short = last_heldout_loss(dirs.get(f"short[{r['axes']}]"))
        long = longer_of.get(r["axes"])
        if short is not None and long is not None:
            longer.append((r["axes"], short, long))
    if len(longer) >= 2:
        print()
        print("| candidate | short distillation | longer distillation |")
        print("|---|---:|---:|")
        for key, short, long in longer:
            print(f"| {key} | {short:.4f} | {long:.4f} |")
        rho = spearman([s for _, s, _ in longer], [l for _, _, l in longer])
        print()
        print(f"Spearman, short against longer distillation ({len(longer)} candidates): {rho:+.3f}")


if __name__ == "__main__":
    main()
