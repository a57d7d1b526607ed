#!/usr/bin/env python3
"""Makes tests/fixtures/interop: small random models in the shapes pruning
makes, written by the other tools themselves, for the Rust tests to load and
match without torch.

For each case:
  hf/            save_pretrained() of a transformers model (f32 safetensors,
                 config.json, tokenizer files)
  logits.json    its token ids and f32 logits on three prompts (transformers)
  <case>.f32.gguf  (and .q8_0.gguf where rows split into blocks of 32)
                 llama.cpp's own convert_hf_to_gguf.py applied to hf/

Cases:
  mistral_indivisible  hidden 40 over 3 heads of 16 (not a multiple, so
                       MistralForCausalLM), GQA 3:1, ffn 37, untied
  llama_gqa_tied       hidden 48, 6 heads over 2 kv heads, tied embeddings
  llama3_rope          head_dim 32 != hidden / heads, Llama-3 rope scaling,
                       untied

Usage:
  pip install torch transformers gguf
  python3 scripts/make_interop_fixtures.py --llama-cpp DIR [--out DIR]

DIR is a llama.cpp checkout (or the vendor/llama.cpp folder of the
llama-cpp-python source package) holding convert_hf_to_gguf.py. Its
pre-tokenizer lookup hashes the tokenization of a fixed text and knows only
published tokenizers, so the tiny tokenizer here is declared as "smollm"
(digits split one by one, then the GPT-2 byte-level regex: what it is).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
)

VOCAB = 320
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog 12 times in 2024.",
    "A model is pruned in width and depth, then distilled from its teacher.",
    "Numbers like 3.14159 and 42 are split into single digits first.",
    "She sells sea shells by the sea shore; the shells she sells are sea shells.",
    "Knowledge distillation trains a small student to match a large teacher.",
] * 20
PROMPTS = [
    "The quick brown fox",
    "Distilled students 123 match their teacher.",
    "<|im_start|>user\nWhat is 7 + 5?<|im_end|>\n",
]

CASES = {
    "mistral_indivisible": (
        MistralConfig,
        MistralForCausalLM,
        dict(
            hidden_size=40,
            num_attention_heads=3,
            num_key_value_heads=1,
            head_dim=16,
            intermediate_size=37,
            tie_word_embeddings=False,
            sliding_window=None,
        ),
    ),
    "llama_gqa_tied": (
        LlamaConfig,
        LlamaForCausalLM,
        dict(
            hidden_size=48,
            num_attention_heads=6,
            num_key_value_heads=2,
            intermediate_size=64,
            tie_word_embeddings=True,
        ),
    ),
    "llama3_rope": (
        LlamaConfig,
        LlamaForCausalLM,
        dict(
            hidden_size=64,
            num_attention_heads=4,
            num_key_value_heads=4,
            head_dim=32,
            intermediate_size=96,
            tie_word_embeddings=False,
            rope_theta=500000.0,
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            ),
        ),
    ),
}


def tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def model(config_class, model_class, shape, vocab):
    config = config_class(
        vocab_size=vocab,
        num_hidden_layers=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        initializer_range=0.1,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        **shape,
    )
    m = model_class(config).eval()
    # Norm weights start at one; random ones catch a misplaced norm.
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    return m


def convert(llama_cpp: Path, hf_dir: Path, out: Path, outtype: str):
    """Runs llama.cpp's converter with the pre-tokenizer lookup answered."""
    runner = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(llama_cpp)!r})
        sys.argv = ["convert_hf_to_gguf.py", {str(hf_dir)!r}, "--outfile", {str(out)!r},
                    "--outtype", {outtype!r}]
        from conversion import base
        base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "smollm"
        import runpy
        runpy.run_path({str(llama_cpp / "convert_hf_to_gguf.py")!r}, run_name="__main__")
        """
    )
    subprocess.run([sys.executable, "-c", runner], check=True, env=dict(os.environ))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-cpp", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/interop"))
    args = parser.parse_args()
    torch.manual_seed(0)
    tok = tokenizer()
    vocab = len(tok)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (config_class, model_class, shape) in CASES.items():
        case = args.out / name
        if case.exists():
            shutil.rmtree(case)
        hf = case / "hf"
        m = model(config_class, model_class, shape, vocab)
        m.save_pretrained(hf)
        tok.save_pretrained(hf)
        prompts = []
        with torch.no_grad():
            for text in PROMPTS:
                ids = tok(text, add_special_tokens=False).input_ids
                logits = m(torch.tensor([ids])).logits[0]
                prompts.append(
                    {
                        "text": text,
                        "ids": ids,
                        "logits": [[float(f"{x:.8e}") for x in row] for row in logits.tolist()],
                    }
                )
        (case / "logits.json").write_text(json.dumps({"prompts": prompts}) + "\n")
        convert(args.llama_cpp, hf, case / f"{name}.f32.gguf", "f32")
        rows = [shape["hidden_size"], shape["intermediate_size"]]
        if all(r % 32 == 0 for r in rows):
            convert(args.llama_cpp, hf, case / f"{name}.q8_0.gguf", "q8_0")
        print(f"wrote {case}")


if __name__ == "__main__":
    main()
