#!/usr/bin/env python3
"""Takes a stored model out with `distillery export` and checks it in the
other tools themselves (not part of CI):

  transformers  the Hugging Face export (f32) loads with AutoModelForCausalLM
                (no custom code); its logits on the reference prompts equal
                ours (`distillery generate --logits`) within --tolerance;
  llama.cpp     the f32 GGUF's logits on the same prompts (with an f32
                KV cache) equal ours within --tolerance; the
                GGUF exports (f32, f16) give the same greedy
                continuations of three prompts as `distillery generate`;
                held-out perplexity of q8_0 and q4_0 against f16, measured
                the way ../shared/assets/reference/teacher_perplexity.json
                was (the first 12 windows of 512 tokens, no BOS).

Needs `pip install torch transformers numpy zstandard llama-cpp-python`.
On a CPU with AMX, build llama-cpp-python with CMAKE_ARGS="-DGGML_NATIVE=OFF
-DGGML_AVX512=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON": its AMX path
crashed on quantized models (the shared teacher's Q4_1 file included) on
the machine this script was written on.

    python3 scripts/check_exports.py RECIPE STAGE [--store DIR] [--out DIR]
"""
import argparse
import io
import json
import math
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import torch
import zstandard
from llama_cpp import Llama
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = pathlib.Path(__file__).resolve().parent.parent
ASSETS = ROOT.parent / "shared" / "assets"
REFERENCE = ASSETS / "reference"
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):",
]
NEW_TOKENS = 32
PPL_WINDOWS, PPL_WINDOW = 12, 512


def run(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True)


def ours_greedy(distillery, model, prompt):
    out = run(distillery, "generate", str(model), "--prompt", prompt,
              "--max-tokens", str(NEW_TOKENS), "--device", "cpu").stdout
    return out[:-1] if out.endswith("\n") else out


def ours_logits(distillery, model, text, path):
    run(distillery, "generate", str(model), "--prompt", text, "--max-tokens", "0",
        "--device", "cpu", "--logits", str(path))
    return np.load(path)


def logits_agree(label, ours, theirs, tolerance):
    """Prints how two [tokens, vocab] logit arrays differ; True when within
    tolerance everywhere with the same argmax at every position."""
    if ours.shape != theirs.shape:
        print(f"{label}: shapes differ, ours {ours.shape}, theirs {theirs.shape}")
        return False
    diff = float(np.abs(ours - theirs).max())
    same_top = bool((ours.argmax(-1) == theirs.argmax(-1)).all())
    print(f"{label}: {ours.shape[0]} tokens, max |logit diff| {diff:.2e}, same argmax: {same_top}")
    return diff <= tolerance and same_top


def llama_cpp_greedy(gguf, prompt):
    llm = Llama(model_path=str(gguf), n_ctx=512, verbose=False)
    r = llm.create_completion(prompt, max_tokens=NEW_TOKENS, temperature=0.0, top_k=1)
    return r["choices"][0]["text"]


def llama_cpp_perplexity(gguf, text):
    llm = Llama(model_path=str(gguf), n_ctx=PPL_WINDOW, logits_all=True, verbose=False)
    tokens = llm.tokenize(text.encode(), add_bos=False, special=False)
    nll, count = 0.0, 0
    for w in range(PPL_WINDOWS):
        window = tokens[w * PPL_WINDOW:(w + 1) * PPL_WINDOW]
        if len(window) < PPL_WINDOW:
            break
        llm.reset()
        llm.eval(window)
        logits = np.asarray(llm.scores[:PPL_WINDOW], dtype=np.float64)
        logits -= logits.max(axis=-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        nll -= sum(logp[i, window[i + 1]] for i in range(PPL_WINDOW - 1))
        count += PPL_WINDOW - 1
    return math.exp(nll / count), count


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe")
    parser.add_argument("stage")
    parser.add_argument("--store")
    parser.add_argument("--out", help="keep the exports here (default: a temporary folder)")
    parser.add_argument("--distillery", default=str(ROOT / "target" / "release" / "distillery"))
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()
    out = pathlib.Path(args.out or tempfile.mkdtemp(prefix="distillery-exports-"))
    out.mkdir(parents=True, exist_ok=True)
    store = ["--store", args.store] if args.store else []
    exports = {"hf": out / "hf", **{d: out / f"{args.stage}.{d}.gguf"
                                     for d in ["f32", "f16", "q8_0", "q4_0"]}}
    for kind, path in exports.items():
        dtype = "f32" if kind == "hf" else kind
        r = run(args.distillery, "export", args.recipe, args.stage, str(path),
                "--dtype", dtype, "--overwrite", *store)
        print(r.stderr.strip())
    ok = True

    print("\n## transformers")
    model = AutoModelForCausalLM.from_pretrained(exports["hf"], dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(exports["hf"])
    print(f"loaded as {type(model).__name__}")
    reference = json.loads((REFERENCE / "reference.json").read_text())["reference"]
    for name in ["plain", "chat"]:
        text = reference[name]["text"]
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            theirs = model(ids).logits[0].numpy()
        ours = ours_logits(args.distillery, exports["hf"], text, out / f"{name}_logits.npy")
        ok &= logits_agree(name, ours, theirs, args.tolerance)
    ours_text = {p: ours_greedy(args.distillery, exports["hf"], p) for p in PROMPTS}
    for prompt in PROMPTS:
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        gen = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
        theirs = tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
        print(f"greedy {prompt!r}: same text: {ours_text[prompt] == theirs}")
        ok &= ours_text[prompt] == theirs

    print("\n## llama.cpp")
    for name in ["plain", "chat"]:
        ours = np.load(out / f"{name}_logits.npy")
        # An f32 KV cache (type 0): llama.cpp's default f16 cache rounds the
        # keys and values, which moves logits by about 1e-2.
        llm = Llama(model_path=str(exports["f32"]), n_ctx=512, logits_all=True, verbose=False,
                    type_k=0, type_v=0)
        ids = llm.tokenize(reference[name]["text"].encode(), add_bos=False, special=True)
        llm.eval(ids)
        theirs = np.asarray(llm.scores[:len(ids)], dtype=np.float32)
        ok &= logits_agree(f"{name} (f32 GGUF, f32 cache)", ours, theirs, args.tolerance)
    for prompt in PROMPTS:
        ours = ours_text[prompt]
        for dtype in ["f32", "f16"]:
            theirs = llama_cpp_greedy(exports[dtype], prompt)
            same = ours == theirs
            print(f"greedy {dtype} {prompt!r}: same text: {same}")
            if not same:
                print(f"  ours:      {ours!r}\n  llama.cpp: {theirs!r}")
            ok &= same
    raw = zstandard.ZstdDecompressor().decompress(
        (ASSETS / "corpus" / "heldout_ppl.txt.zst").read_bytes(), max_output_size=1 << 30)
    text = raw.decode()
    ppl = {}
    for dtype in ["f16", "q8_0", "q4_0"]:
        ppl[dtype], n = llama_cpp_perplexity(exports[dtype], text)
        size = exports[dtype].stat().st_size / 1e6
        print(f"perplexity {dtype}: {ppl[dtype]:.3f} over {n} predictions ({size:.1f} MB)")
    rel = ppl["q8_0"] / ppl["f16"] - 1
    print(f"q8_0 vs f16: {100 * rel:+.2f}%")
    ok &= abs(rel) <= 0.01
    print("\nOK" if ok else "\nMISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
