#!/usr/bin/env python3
"""How weight magnitude relates to Minitron importance, from a run's store.

Reads the teacher, the Scores artifact and any `method: magnitude` prune
stages of a recipe that has been run (their folders are found through
`distillery plan --json`), then, per width axis:

- recomputes the magnitude score of every unit from the teacher's weights,
  in float64 and independently of the Rust code (the definition in
  docs/RESULTS.md: the L2 norm of every weight pruning the unit removes), and
  checks that each magnitude-pruned stage kept exactly the top units under it;
- prints the Spearman rank correlation between that score and the importance
  score, per layer for ffn neurons and heads, over the model for hidden
  channels; and the overlap between the units each ranking keeps.

    python3 scripts/compare_rankings.py recipes/smollm2-prune-axes.yaml \
        --store /tmp/prune-store [--distillery target/release/distillery]

Needs numpy, safetensors and PyYAML. Exits 1 if a magnitude-pruned stage kept other
units than this script's top ones.
"""

import argparse
import json
import os
import sys

import numpy as np
import yaml
from safetensors.numpy import load_file

from store_stages import stage_dirs


def recipe_stages(recipe):
    """Stage name -> (op, with, inputs), read with PyYAML (the recipes here
    use no `${vars...}` in the prune stages this script reads)."""
    with open(recipe) as f:
        doc = yaml.safe_load(f)
    return {
        name: (s["op"], s.get("with", {}) or {}, s.get("inputs", {}) or {})
        for name, s in doc["stages"].items()
    }


def ranks(x):
    r = np.empty(len(x))
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    return r


def spearman(a, b):
    ra, rb = ranks(a), ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    return float((ra * rb).sum() / np.sqrt((ra * ra).sum() * (rb * rb).sum()))


def col_sq(w):
    return (w * w).sum(axis=0)


def row_sq(w):
    return (w * w).sum(axis=1)


def magnitude_scores(cfg, w):
    """Per axis: hidden [C], ffn [L][F], heads [L][H] (float64)."""
    f = {k: v.astype(np.float64) for k, v in w.items()}
    layers = cfg["num_hidden_layers"]
    heads, head_dim = cfg["num_attention_heads"], cfg["head_dim"]
    embed = f["model.embed_tokens.weight"]
    head = embed if cfg.get("tie_word_embeddings") else f["lm_head.weight"]
    hidden = col_sq(embed) + col_sq(head) * f["model.norm.weight"] ** 2
    ffn, attn = [], []
    for i in range(layers):
        p = f"model.layers.{i}."
        reads_attn = sum(col_sq(f[p + f"self_attn.{m}_proj.weight"]) for m in "qkv")
        hidden += reads_attn * f[p + "input_layernorm.weight"] ** 2
        reads_mlp = col_sq(f[p + "mlp.gate_proj.weight"]) + col_sq(f[p + "mlp.up_proj.weight"])
        hidden += reads_mlp * f[p + "post_attention_layernorm.weight"] ** 2
        hidden += row_sq(f[p + "self_attn.o_proj.weight"]) + row_sq(f[p + "mlp.down_proj.weight"])
        ffn.append(np.sqrt(
            row_sq(f[p + "mlp.gate_proj.weight"])
            + row_sq(f[p + "mlp.up_proj.weight"])
            + col_sq(f[p + "mlp.down_proj.weight"])
        ))
        per_dim = row_sq(f[p + "self_attn.q_proj.weight"]) + col_sq(f[p + "self_attn.o_proj.weight"])
        attn.append(np.sqrt(per_dim.reshape(heads, head_dim).sum(axis=1)))
    return {"hidden": np.sqrt(hidden), "ffn": ffn, "heads": attn}


def top(score, k):
    return set(np.argsort(-score, kind="stable")[:k].tolist())


def check_kept(cfg, mag, params, kept):
    """(set name, whether the stage kept this script's top units) for every
    unit set a magnitude prune stage chose."""
    checks = []
    if "hidden" in params:
        checks.append(("hidden", top(mag["hidden"], params["hidden"]) == set(kept["hidden"])))
    groups = cfg["num_key_value_heads"]
    per_group = cfg["num_attention_heads"] // groups
    for i, layer in enumerate(kept["layers"]):
        if "ffn" in params:
            checks.append((f"ffn layer {i}", top(mag["ffn"][i], params["ffn"]) == set(layer["ffn"])))
        if "heads" in params:
            # Heads are pruned inside each kv group.
            want = set()
            for g in range(groups):
                s = mag["heads"][i][g * per_group:(g + 1) * per_group]
                want |= {g * per_group + j for j in top(s, params["heads"] // groups)}
            checks.append((f"heads layer {i}", want == set(layer["heads"])))
    return checks


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe")
    ap.add_argument("--store", required=True)
    ap.add_argument("--distillery", default="target/release/distillery")
    args = ap.parse_args()

    stages = recipe_stages(args.recipe)
    dirs = stage_dirs(args.distillery, args.recipe, args.store)

    prunes = {n: s for n, s in stages.items() if s[0] == "prune"}
    magnitude = {n: s for n, s in prunes.items() if s[1].get("method") == "magnitude"}
    scored = [n for n, s in prunes.items() if "scores" in s[2]]
    if not scored:
        sys.exit("the recipe has no prune stage with a scores input")
    teacher = prunes[scored[0]][2]["model"]
    scores_stage = prunes[scored[0]][2]["scores"]

    cfg = json.load(open(os.path.join(dirs[teacher], "config.json")))
    mag = magnitude_scores(cfg, load_file(os.path.join(dirs[teacher], "model.safetensors")))
    imp = load_file(os.path.join(dirs[scores_stage], "scores.safetensors"))

    failures = 0
    for name, (_, params, _) in sorted(magnitude.items()):
        checks = check_kept(cfg, mag, params, json.load(open(os.path.join(dirs[name], "pruning.json")))["kept"])
        bad = [c for c, ok in checks if not ok]
        failures += len(bad)
        print(f"{name}: kept the top units by magnitude in {len(checks) - len(bad)}/{len(checks)} "
              f"sets{'' if not bad else '; differs in ' + ', '.join(bad)}")

    print()
    print("Spearman correlation of weight magnitude with importance (1: same order, "
          "0: unrelated, -1: reversed)")
    rho = spearman(mag["hidden"], imp["hidden"].astype(np.float64))
    print(f"hidden channels (whole model): {rho:+.3f}")
    for axis in ("ffn", "heads"):
        per_layer = [spearman(m, s.astype(np.float64)) for m, s in zip(mag[axis], imp[axis])]
        negative = sum(r < 0 for r in per_layer)
        print(f"{axis} per layer: mean {np.mean(per_layer):+.3f}, min {min(per_layer):+.3f}, "
              f"max {max(per_layer):+.3f}, negative in {negative}/{len(per_layer)} layers")
        print("  " + " ".join(f"{r:+.2f}" for r in per_layer))

    # How many units both rankings keep, at the magnitude stages' targets.
    targets = {axis: p[axis] for _, p, _ in magnitude.values() for axis in ("ffn", "hidden") if axis in p}
    if "hidden" in targets:
        k = targets["hidden"]
        both = len(top(mag["hidden"], k) & top(imp["hidden"].astype(np.float64), k))
        print(f"hidden top-{k} overlap: {both}/{k} (chance: {k * k / len(mag['hidden']):.0f})")
    if "ffn" in targets:
        k = targets["ffn"]
        both = [len(top(m, k) & top(s.astype(np.float64), k)) for m, s in zip(mag["ffn"], imp["ffn"])]
        n = len(mag["ffn"][0])
        print(f"ffn top-{k} overlap per layer: mean {np.mean(both):.0f}/{k} (chance: {k * k / n:.0f})")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
