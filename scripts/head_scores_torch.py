#!/usr/bin/env python3
"""Attention-head importance recomputed with PyTorch, and (optionally) what
removing each head really costs.

1. Recomputes Minitron's head score with forward hooks on transformers'
   Llama: the L2 norm of each head's slice of the `o_proj` input, mean over
   the sequence, L2 over the batch (METHOD.md section 3.2), on rows of a
   corpus, and prints its per-layer Spearman correlation with the `heads`
   scores of a Scores artifact.
2. With --ablation: zeroes one head's output at a time (what pruning that head
   alone does), measures the held-out loss increase, and prints its per-layer
   correlation with the importance scores; then, for every prune stage of the
   recipe with a `heads` target, the sum of those single-head costs over the
   heads it removed (what its loss increase would be if head removals did
   not interact). One forward per head: about 50 min for SmolLM2-135M on 2
   CPU cores (--ablation-layers N ablates only the first N layers).

    python3 scripts/head_scores_torch.py recipes/smollm2-prune-axes.yaml \
        --store /tmp/prune-store [--ablation]

The teacher and Scores folders are found through `distillery plan --json`
(stages `teacher` and `scores`). Needs torch, transformers, safetensors,
zstandard, PyYAML.
"""

import argparse
import json
import os

import torch
import yaml
import zstandard
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from store_stages import stage_dirs


def head_prune_stages(args, dirs, heads):
    """(stage, per layer the query heads it removed) for every prune stage of
    the recipe with a `heads` target, from its stored `pruning.json`."""
    with open(args.recipe) as f:
        stages = yaml.safe_load(f)["stages"]
    out = []
    for name, stage in stages.items():
        if stage["op"] != "prune" or "heads" not in (stage.get("with") or {}):
            continue
        with open(os.path.join(dirs[name], "pruning.json")) as f:
            kept = json.load(f)["kept"]["layers"]
        out.append((name, [sorted(set(range(heads)) - set(layer["heads"])) for layer in kept]))
    return out


def token_rows(tok, path, documents, rows, seq):
    """`rows` x `seq` tokens of the first documents of a .jsonl.zst, joined
    with the eos token (as the `dataset` op packs them)."""
    ids = []
    with zstandard.open(path, "rt") as f:
        for i, line in enumerate(f):
            if i >= documents or len(ids) >= rows * seq:
                break
            ids += tok(json.loads(line)["text"])["input_ids"] + [tok.eos_token_id]
    if len(ids) < rows * seq:
        raise SystemExit(f"{path}: only {len(ids)} tokens in {documents} documents")
    return torch.tensor(ids[: rows * seq]).view(rows, seq)


def spearman(a, b):
    ra = torch.argsort(torch.argsort(a)).double()
    rb = torch.argsort(torch.argsort(b)).double()
    ra -= ra.mean()
    rb -= rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def summary(label, values):
    print(f"{label}: mean {sum(values) / len(values):+.3f}, min {min(values):+.3f}, "
          f"max {max(values):+.3f}")
    print("  " + " ".join(f"{v:+.2f}" for v in values))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe")
    ap.add_argument("--store", required=True)
    ap.add_argument("--distillery", default="target/release/distillery")
    ap.add_argument("--assets", default="../shared/assets")
    ap.add_argument("--ablation", action="store_true")
    ap.add_argument("--ablation-layers", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    dirs = stage_dirs(args.distillery, args.recipe, args.store)
    teacher = dirs["teacher"]
    scores = load_file(os.path.join(dirs["scores"], "scores.safetensors"))
    ours = scores["heads"].double()
    tok = AutoTokenizer.from_pretrained(teacher)
    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()
    cfg = model.config
    heads, head_dim, layers = cfg.num_attention_heads, cfg.head_dim, cfg.num_hidden_layers

    # What each o_proj hook does: accumulate the score, or zero one head.
    state = {"acc": None, "zero": None}

    def hook(i):
        def pre(module, inputs):
            x = inputs[0]
            if state["acc"] is not None:
                per_head = x.double().view(*x.shape[:2], heads, head_dim).norm(dim=-1)
                state["acc"][i] += per_head.mean(dim=1).pow(2).sum(dim=0)
            if state["zero"] is not None and state["zero"][0] == i:
                h = state["zero"][1]
                x = x.clone()
                x[..., h * head_dim:(h + 1) * head_dim] = 0
                return (x,)
            return None
        return pre

    for i, layer in enumerate(model.model.layers):
        layer.self_attn.o_proj.register_forward_pre_hook(hook(i))

    corpus = os.path.join(args.assets, "corpus")
    calibration = token_rows(tok, os.path.join(corpus, "distill_train.jsonl.zst"), 400, 64, 256)
    state["acc"] = torch.zeros(layers, heads, dtype=torch.float64)
    with torch.no_grad():
        for b in range(0, len(calibration), 8):
            model(calibration[b:b + 8])
    torch_scores = state["acc"].sqrt()
    state["acc"] = None
    summary("Spearman(our head scores, PyTorch's) per layer",
            [spearman(ours[i], torch_scores[i]) for i in range(layers)])

    if args.ablation:
        heldout = token_rows(tok, os.path.join(corpus, "heldout_ppl.jsonl.zst"), 10**9, 4, 512)

        def loss():
            with torch.no_grad():
                return float(model(heldout, labels=heldout).loss)

        base = loss()
        ablated = min(layers, args.ablation_layers or layers)
        cost = torch.zeros(ablated, heads, dtype=torch.float64)
        for i in range(ablated):
            for h in range(heads):
                state["zero"] = (i, h)
                cost[i, h] = loss() - base
            print(f"layer {i}: loss increase per head " + " ".join(f"{c:+.3f}" for c in cost[i]),
                  flush=True)
        state["zero"] = None
        print(f"held-out loss with every head: {base:.4f} ({heldout.numel()} tokens)")
        summary("Spearman(importance, loss increase without the head) per layer",
                [spearman(ours[i], cost[i]) for i in range(ablated)])
        for name, removed in head_prune_stages(args, dirs, heads):
            total = sum(float(cost[i, h]) for i, gone in enumerate(removed[:ablated]) for h in gone)
            print(f"{name}: sum of the single-head costs of the heads it removes "
                  f"(layers 0-{ablated - 1}): {total:+.3f}")


if __name__ == "__main__":
    main()
