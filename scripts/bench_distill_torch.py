"""PyTorch baseline for `distillery bench distill`: the same distillation
step with transformers' Llama, fp32 (or bf16 autocast), on the CPU or a CUDA
device: the teacher's forward under no_grad, the student's forward, forward
KL on the logits (`F.kl_div(log_softmax(s), log_softmax(t), log_target=True)`,
mean over tokens), backward, and an AdamW step. Same token ids as the Rust
bench.

    python3 scripts/bench_distill_torch.py TEACHER_DIR --student STUDENT_DIR --rows 4 --seq 256 --steps 3

The baselines the GPU figures are measured against:

- fp32 eager: `--precision fp32 --attn eager` (the defaults);
- bf16: `--precision bf16 --attn sdpa --fused-adamw` (autocast, PyTorch's
  fused attention and its fused AdamW);
- compiled: the bf16 one with `--compile` (`torch.compile` of both models;
  its compilation runs in the untimed warm-up steps).

On CUDA it also prints the peak memory PyTorch allocated.

Both are Hugging Face model folders (e.g. `distillery export` of the GGUF
teacher, and of a `prune` stage's output, in f32) or `config.json` files (random
weights, as the Rust bench takes them: speed does not depend on them).
"""

import argparse
import time

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM


def load(path: str, device: torch.device, attn: str) -> torch.nn.Module:
    if path.endswith(".json"):
        torch.manual_seed(1)
        config = LlamaConfig.from_json_file(path)
        config._attn_implementation = attn
        model = LlamaForCausalLM(config)
    else:
        # Any class the folder declares: `distillery export` writes a pruned
        # student whose hidden size is not a multiple of its heads as
        # MistralForCausalLM (the same computation, which LlamaConfig refuses).
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attn)
    return model.to(device, torch.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("teacher")
    parser.add_argument("--student")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16: the forwards under torch.autocast in bfloat16 (mixed precision; weights, "
        "gradients and optimizer stay fp32)",
    )
    parser.add_argument("--attn", choices=["eager", "sdpa"], default="eager", help="transformers' attention")
    parser.add_argument("--fused-adamw", action="store_true", help="AdamW(fused=True)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 1, 3 with --compile)")
    args = parser.parse_args()
    device = torch.device(args.device)
    warmup = args.warmup if args.warmup is not None else (3 if args.compile else 1)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    teacher = load(args.teacher, device, args.attn).eval()
    student = load(args.student or args.teacher, device, args.attn).train()
    vocab = teacher.config.vocab_size
    ids = torch.tensor(
        [
            [((r * args.seq + i) * 2_654_435_761 + 17) % vocab for i in range(args.seq)]
            for r in range(args.rows)
        ]
    ).to(device)
    inputs = ids[:, :-1]
    optim = torch.optim.AdamW(
        student.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1, fused=args.fused_adamw or None
    )
    if args.compile:
        teacher = torch.compile(teacher)
        student = torch.compile(student)
    print(
        f"teacher {sum(p.numel() for p in teacher.parameters()) / 1e6:.1f}M, "
        f"student {sum(p.numel() for p in student.parameters()) / 1e6:.1f}M parameters; "
        f"{args.rows} rows x {args.seq} tokens per step; {args.precision}, {args.attn} attention"
        + (", fused AdamW" if args.fused_adamw else "")
        + (", torch.compile" if args.compile else "")
        + "; "
        + (torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads")
    )
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(warmup + args.steps):
        sync()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            with torch.no_grad():
                t = teacher(inputs).logits.float()
            s = student(inputs).logits.float()
        v = t.shape[-1]
        loss = F.kl_div(
            F.log_softmax(s.reshape(-1, v), -1),
            F.log_softmax(t.reshape(-1, v), -1),
            reduction="batchmean",
            log_target=True,
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)
        sync()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    mean = sum(times) / len(times)
    print(f"step {mean:.3f} s")
    print(f"distillation: {args.rows * args.seq / mean:.1f} tokens/s (mean of {len(times)} steps)")
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        print(f"memory: PyTorch's peak allocation {peak:.2f} GiB")


if __name__ == "__main__":
    main()
