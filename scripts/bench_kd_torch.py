"""PyTorch baseline for `distillery bench kd`: forward KL as
`F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="batchmean",
log_target=True)`, forward and backward with respect to the student logits,
on fp32 (or bf16) tensors on the CPU or a CUDA device. Prints the same
figures as the Rust bench.

    python3 scripts/bench_kd_torch.py --rows 1024 --vocab 49152 --repeats 10
    python3 scripts/bench_kd_torch.py --device cuda --dtype bf16
"""

import argparse
import time

import torch
import torch.nn.functional as F


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    torch.manual_seed(1)
    # Uniform in [-4, 4), as the Rust bench draws its logits.
    s = (torch.rand(args.rows, args.vocab) * 8 - 4).to(device, dtype).requires_grad_()
    t = (torch.rand(args.rows, args.vocab) * 8 - 4).to(device, dtype)
    tau = args.temperature

    def step() -> float:
        sync()
        started = time.perf_counter()
        loss = F.kl_div(
            F.log_softmax(s if tau == 1 else s / tau, -1),
            F.log_softmax(t if tau == 1 else t / tau, -1),
            reduction="batchmean",
            log_target=True,
        )
        (grad,) = torch.autograd.grad(loss, s)
        sync()
        seconds = time.perf_counter() - started
        del grad
        step.loss = loss.item()
        return seconds

    for _ in range(2):
        step()
    times = sorted(step() for _ in range(max(args.repeats, 1)))
    median = times[len(times) // 2]
    print(
        f"torch {torch.__version__}, "
        + (torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads")
        + f", {args.rows} x {args.vocab} {args.dtype}, tau {tau}: loss {step.loss:.6f}"
    )
    print(
        f"forward + backward: {median * 1e3:.2f} ms median, {times[0] * 1e3:.2f} ms min "
        f"of {len(times)} (after 2 untimed)"
    )


if __name__ == "__main__":
    main()
