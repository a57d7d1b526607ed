#!/usr/bin/env python3
"""Loads a model folder written by Distillery with Hugging Face transformers
(no custom code) and compares its logits on the reference prompts with the
reference logits in ../shared/assets/reference.

Needs `pip install torch transformers numpy zstandard` (not part of CI).

    python3 scripts/check_with_transformers.py FOLDER [--tolerance 1e-3]
"""
import argparse
import io
import json
import pathlib
import sys

import numpy as np
import torch
import zstandard
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = pathlib.Path(__file__).resolve().parent.parent
REFERENCE = ROOT.parent / "shared" / "assets" / "reference"


def load_npy_zst(path):
    raw = zstandard.ZstdDecompressor().decompress(path.read_bytes(), max_output_size=1 << 31)
    return np.load(io.BytesIO(raw))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("--tolerance", type=float, default=1e-3)
    args = parser.parse_args()

    model = AutoModelForCausalLM.from_pretrained(args.folder, dtype=torch.float32)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(args.folder)
    reference = json.loads((REFERENCE / "reference.json").read_text())
    worst = 0.0
    ok = True
    for name in ["plain", "chat"]:
        ids = np.load(REFERENCE / f"{name}_input_ids.npy").astype(np.int64).reshape(1, -1)
        want = load_npy_zst(REFERENCE / f"{name}_logits.npy.zst").astype(np.float32)
        with torch.no_grad():
            got = model(torch.from_numpy(ids)).logits[0].numpy()
        diff = float(np.abs(got - want).max())
        top_same = bool((np.argsort(-got, axis=-1)[:, :10] == np.argsort(-want, axis=-1)[:, :10]).all())
        worst = max(worst, diff)
        print(f"{name}: {ids.shape[1]} tokens, max |logit diff| {diff:.2e}, identical top-10: {top_same}")
        ok &= diff <= args.tolerance and top_same
    text = reference["reference"]["plain"]["text"] if "text" in reference["reference"]["plain"] else None
    if text:
        same_ids = tokenizer(text)["input_ids"] == np.load(REFERENCE / "plain_input_ids.npy").tolist()
        print(f"tokenizer gives the reference ids: {same_ids}")
        ok &= same_ids
    print("OK" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
