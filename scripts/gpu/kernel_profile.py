"""Where a CubeCL run's device time goes, by kernel family.

CubeCL profiles every launch when run with

    CUBECL_DEBUG_OPTION=profile CUBECL_DEBUG_LOG=/tmp/profile.log distillery bench distill ...

and logs one line per launch, `| <duration> | <kernel name> | ...`. Each
launch is timed on its own (the runtime waits for it), so the figures are
device time per kernel, not the step's wall time; the launch counts are
exact. This script sums them by family and prints a table:

    python3 scripts/gpu/kernel_profile.py /tmp/profile.log --steps 5

`--steps` divides by the number of steps the log covers (a bench's untimed
first step included), for launches and milliseconds per step.
"""

import argparse
import re
import sys
from collections import defaultdict

LAUNCH = re.compile(r"^\| ([0-9.]+)(ns|µs|us|ms|s)\s*\| ([A-Za-z0-9_]+)")
UNIT = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}

# First match wins: (family, name prefixes).
FAMILIES = [
    ("matrix products", ("Matmul",)),
    ("attention (ours)", ("Attention", "SaturatingCast")),
    ("RMSNorm, RoPE, SwiGLU (ours)", ("RmsNorm", "Rope", "Swiglu", "WeightedColumnPartials", "SumPartials")),
    ("AdamW (ours)", ("Adamw",)),
    ("gradient norm (ours)", ("SquarePartials",)),
    ("KD loss (ours)", ("Kd", "SumToFirst")),
    ("importance (ours)", ("SeqPartialSums", "AccumulateRows", "Channel", "Cosine", "Block")),
    # The bf16 products' operands: Burn's casts (rounding to bf16) and our
    # two-part splits and weight stacks.
    ("bf16 operands: casts, two-part splits", ("Cast", "SideBySide")),
    ("elementwise (Burn)", ("KernelBinop", "KernelScalarBinop", "Unary", "Cast", "Mask", "Clamp", "Powf", "Full")),
    ("reductions (Burn)", ("SharedSum", "Reduce", "Sum", "Mean", "Argmax", "Max")),
    ("copies, gathers, layout (Burn)", ("Copy", "Select", "Gather", "Scatter", "Slice", "Index", "Cat", "Repeat")),
]


def family(name: str) -> str:
    for label, prefixes in FAMILIES:
        if name.startswith(prefixes):
            return label
    return "other: " + name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log")
    parser.add_argument("--steps", type=int, default=1, help="steps the log covers")
    parser.add_argument("--kernels", action="store_true", help="also list each kernel name")
    args = parser.parse_args()

    by_family = defaultdict(lambda: [0, 0.0])
    by_kernel = defaultdict(lambda: [0, 0.0])
    with open(args.log, encoding="utf-8", errors="replace") as log:
        for line in log:
            m = LAUNCH.match(line)
            if not m:
                continue
            ms = float(m.group(1)) * UNIT[m.group(2)]
            name = m.group(3)
            for table, key in ((by_family, family(name)), (by_kernel, name)):
                table[key][0] += 1
                table[key][1] += ms
    if not by_family:
        sys.exit(f"{args.log}: no profiled launches (run with CUBECL_DEBUG_OPTION=profile)")

    total_n = sum(n for n, _ in by_family.values())
    total_ms = sum(ms for _, ms in by_family.values())
    s = args.steps
    print(f"{total_n / s:.0f} launches and {total_ms / s:.1f} ms of device time per step ({s} steps)")
    print()
    print("| family | launches per step | ms per step | share |")
    print("|---|---:|---:|---:|")
    for label, (n, ms) in sorted(by_family.items(), key=lambda kv: -kv[1][1]):
        print(f"| {label} | {n / s:.0f} | {ms / s:.2f} | {100 * ms / total_ms:.0f}% |")
    if args.kernels:
        print()
        print("| kernel | launches per step | ms per step |")
        print("|---|---:|---:|")
        for name, (n, ms) in sorted(by_kernel.items(), key=lambda kv: -kv[1][1]):
            print(f"| {name} | {n / s:.0f} | {ms / s:.2f} |")


if __name__ == "__main__":
    main()
