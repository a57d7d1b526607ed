"""PyTorch baseline for `distillery bench forward`: transformers' Llama
forward (logits for every position, no gradient) on the CPU, in tokens/s,
for batches of `rows x seq` tokens, in fp32 and bf16. Token ids follow the
Rust bench's formula (speed does not depend on them).

    python3 scripts/bench_forward_torch.py MODEL --shapes 1x512,4x256 --runs 5 --dtype fp32,bf16

MODEL is a Hugging Face model folder (e.g. what a `load_model` stage writes)
or a `config.json` (random weights: speed does not depend on them).
"""

import argparse
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def load(path: str, dtype: torch.dtype) -> LlamaForCausalLM:
    if path.endswith(".json"):
        torch.manual_seed(1)
        model = LlamaForCausalLM(LlamaConfig.from_json_file(path))
    else:
        model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.to(dtype).eval()


def tokens(rows: int, seq: int, vocab: int) -> torch.Tensor:
    # The formula of the Rust bench's `deterministic_tokens`.
    return torch.tensor(
        [[((r * seq + i) * 2_654_435_761 + 17) % vocab for i in range(seq)] for r in range(rows)]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("--shapes", default="1x512,4x256", help="rows x seq, comma separated")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dtype", default="fp32,bf16", help="fp32, bf16 or both")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    for name in args.dtype.split(","):
        model = load(args.model, dtypes[name])
        vocab = model.config.vocab_size
        for shape in args.shapes.split(","):
            rows, seq = (int(x) for x in shape.split("x"))
            ids = tokens(rows, seq, vocab)
            with torch.inference_mode():
                model(ids)  # untimed: first-call allocations and oneDNN setup
                times = []
                for _ in range(args.runs):
                    start = time.perf_counter()
                    model(ids).logits.float().sum().item()
                    times.append(time.perf_counter() - start)
            secs = statistics.median(times)
            print(
                f"transformers {name}, batch {rows} x {seq} tokens: {secs * 1e3:.1f} ms median of "
                f"{args.runs}, {rows * seq / secs:.0f} tokens/s ({torch.get_num_threads()} threads, "
                f"torch {torch.__version__})"
            )


if __name__ == "__main__":
    main()
