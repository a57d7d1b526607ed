"""PyTorch baseline for `distillery bench attention`: causal grouped-query
attention as `F.scaled_dot_product_attention(q, k, v, is_causal=True,
enable_gqa=True)`, forward alone and forward with backward (the gradient of
`sum(out * dout)`), on the CPU or a CUDA device, in fp32 or bf16. Prints the
same figures as the Rust bench, with the same FLOP count.

    python3 scripts/bench_attention_torch.py --rows 2 --seq 64
    python3 scripts/bench_attention_torch.py --device cuda --dtype bf16
    python3 scripts/bench_attention_torch.py --device cuda --kernel math   # no fused kernel
"""

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

KERNELS = {
    "default": None,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}


def forward_flops(rows: int, seq: int, heads: int, head_dim: int) -> float:
    """`distillery bench attention`'s count: two products over the visible
    (query, key) pairs, two FLOPs per multiply-add."""
    pairs = seq * (seq + 1) // 2
    return 4.0 * pairs * rows * heads * head_dim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--kernel", default="default", choices=sorted(KERNELS),
                        help="SDPA's backend: default lets torch pick")
    args = parser.parse_args()
    if args.kv_heads <= 0 or args.heads % args.kv_heads:
        parser.error(f"--heads ({args.heads}) must be a positive multiple of --kv-heads ({args.kv_heads})")
    device = torch.device(args.device)
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    torch.manual_seed(3)

    def draw(heads: int) -> torch.Tensor:
        # [rows, heads, seq, d], uniform in [-1, 1) as the Rust bench draws.
        x = torch.rand(args.rows, heads, args.seq, args.head_dim) * 2 - 1
        return x.to(device, dtype)

    q, k, v, dout = draw(args.heads), draw(args.kv_heads), draw(args.kv_heads), draw(args.heads)
    q.requires_grad_()
    k.requires_grad_()
    v.requires_grad_()

    def attend() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    def timed(body) -> tuple[float, float]:
        times = []
        for i in range(args.repeats + 2):
            sync()
            started = time.perf_counter()
            body()
            sync()
            if i >= 2:
                times.append(time.perf_counter() - started)
        times.sort()
        return times[len(times) // 2], times[0]

    def forward() -> None:
        with torch.no_grad():
            attend()

    def training() -> None:
        out = attend()
        q.grad = k.grad = v.grad = None
        (out * dout).sum().backward()

    kernel = KERNELS[args.kernel]
    context = sdpa_kernel(kernel) if kernel is not None else contextlib.nullcontext()
    with context:
        fwd = timed(forward)
        train = timed(training)

    flops = forward_flops(args.rows, args.seq, args.heads, args.head_dim)
    where = "GPU" if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(
        f"torch SDPA ({args.kernel}), causal attention, {args.rows} x {args.seq} positions, "
        f"{args.heads} query heads on {args.kv_heads} key/value heads of {args.head_dim}, "
        f"{args.dtype}, {where}"
    )
    for what, (median, least), work in (("forward", fwd, flops), ("forward + backward", train, 3.5 * flops)):
        print(
            f"{what}: {median * 1e3:.3f} ms (min {least * 1e3:.3f} ms), "
            f"{work / median / 1e12:.3f} TFLOP/s of {work / 1e9:.3f} GFLOP"
        )


if __name__ == "__main__":
    main()
