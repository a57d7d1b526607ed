"""How many tokens a training run needs to reach another run's held-out loss:
the paper's "N times fewer tokens" at this scale.

Fits the slower run's held-out curve (`metrics.jsonl`, its `eval` lines
after step 0) with a power law plus a floor,

    L(t) = a + b * t^(-c)        (t: tokens seen)

(least squares: `a` and `b` in closed form for each `c` of a fine grid),
and solves `L(t) = target` for `t`, the target being the faster run's last
held-out loss. Says plainly whether that is inside the measured range
(interpolated) or beyond it (extrapolated, and how far), and never when the
fitted floor `a` is above the target. The fit is shown: its parameters,
each point's residual, and how well a fit without the last point predicts
the last point (what extrapolation is worth on this curve).

    python3 scripts/tokens_to_reach.py SCRATCH_METRICS.jsonl DISTILLED_METRICS.jsonl
    python3 scripts/tokens_to_reach.py --recipe R --store S [--set PATH=VALUE ...] --slow scratch --fast distilled_width
    python3 scripts/tokens_to_reach.py --self-test
"""

import argparse
import json
import math
import os
import sys


def eval_points(path):
    """(tokens, held-out loss) of a metrics.jsonl's evaluations after step 0."""
    points = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                m = json.loads(line)
            except json.JSONDecodeError:
                continue  # a half-written last line
            if m.get("kind") == "eval" and m.get("tokens", 0) > 0 and m.get("heldout_loss") is not None:
                points.append((float(m["tokens"]), float(m["heldout_loss"])))
    return points


def fit_for_c(points, c):
    """Least-squares a, b of L = a + b t^-c; returns (sse, a, b)."""
    xs = [t ** -c for t, _ in points]
    ys = [y for _, y in points]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return math.inf, my, 0.0
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    a = my - b * mx
    sse = sum((a + b * x - y) ** 2 for x, y in zip(xs, ys))
    return sse, a, b


def fit(points):
    """The best (a, b, c) over c in [0.01, 3] (log grid, then refined)."""
    if len(points) < 3:
        raise ValueError(f"a fit of three parameters needs at least 3 evaluations, found {len(points)}")
    grid = [0.01 * (300 ** (i / 1999)) for i in range(2000)]
    best = min((fit_for_c(points, c) + (c,) for c in grid), key=lambda r: r[0])
    lo, hi = best[3] / 1.01, best[3] * 1.01
    for _ in range(60):  # golden-section refinement around the grid's best
        m1, m2 = lo + (hi - lo) * 0.382, lo + (hi - lo) * 0.618
        if fit_for_c(points, m1)[0] < fit_for_c(points, m2)[0]:
            hi = m2
        else:
            lo = m1
    c = (lo + hi) / 2
    _, a, b = fit_for_c(points, c)
    return a, b, c


def tokens_for(a, b, c, target):
    """t with a + b t^-c = target, or None when the floor a is not below it."""
    if b <= 0 or target <= a:
        return None
    return (b / (target - a)) ** (1 / c)


def report(slow, fast, slow_name="slow", fast_name="fast"):
    a, b, c = fit(slow)
    target_tokens, target = fast[-1]
    lines = [
        f"fit of {slow_name}'s held-out loss: L(t) = {a:.4f} + {b:.4g} * t^-{c:.4f} "
        f"over {len(slow)} evaluations ({slow[0][0]:,.0f} to {slow[-1][0]:,.0f} tokens)",
        "",
        "| tokens | held-out loss | fit | residual |",
        "|---:|---:|---:|---:|",
    ]
    for t, y in slow:
        f = a + b * t ** -c
        lines.append(f"| {t:,.0f} | {y:.4f} | {f:.4f} | {y - f:+.4f} |")
    if len(slow) == 3:
        lines += ["", "three evaluations for three parameters: the fit passes through every point "
                  "and says nothing of its own error; evaluate more often (`eval_every`)"]
    if len(slow) >= 4:
        a2, b2, c2 = fit(slow[:-1])
        t_last, y_last = slow[-1]
        p = a2 + b2 * t_last ** -c2
        lines += ["", f"held-out check: fitted without the last point, the fit predicts {p:.4f} "
                  f"at {t_last:,.0f} tokens, measured {y_last:.4f} ({p - y_last:+.4f})"]
    needed = tokens_for(a, b, c, target)
    lines.append("")
    lines.append(f"target: {fast_name}'s last held-out loss {target:.4f} at {target_tokens:,.0f} tokens")
    if needed is None:
        lines.append(f"{slow_name} never reaches it on this fit: the fitted floor {a:.4f} is at or above the target")
    else:
        where = (
            "inside the measured range (interpolated)"
            if needed <= slow[-1][0]
            else f"beyond the measured range: extrapolated {needed / slow[-1][0]:.1f}x past the last evaluation"
        )
        lines.append(
            f"{slow_name} needs {needed:,.0f} tokens, {needed / target_tokens:.1f}x {fast_name}'s {target_tokens:,.0f}; {where}"
        )
    return "\n".join(lines), needed


def self_test():
    """Recovers a known curve; solves for a known point; says never below
    the floor; interpolates and extrapolates as it should."""
    a, b, c = 3.2, 40.0, 0.35
    curve = [(t, a + b * t ** -c) for t in (2e4 * 2**k for k in range(10))]
    fa, fb, fc = fit(curve)
    assert abs(fa - a) < 1e-3 and abs(fb - b) / b < 1e-2 and abs(fc - c) < 1e-3, (fa, fb, fc)
    target = a + b * 5e6 ** -c
    t = tokens_for(fa, fb, fc, target)
    assert abs(t - 5e6) / 5e6 < 1e-3, t
    assert tokens_for(fa, fb, fc, a - 0.1) is None
    text, needed = report(curve, [(1e5, a + b * 1e9 ** -c)], "scratch", "distilled")
    assert "extrapolated" in text and abs(needed - 1e9) / 1e9 < 1e-2, text
    text, _ = report(curve, [(1e5, curve[3][1])], "scratch", "distilled")
    assert "interpolated" in text, text
    print("self-test passed")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("slow_metrics", nargs="?", help="metrics.jsonl of the run that needs more tokens (scratch)")
    parser.add_argument("fast_metrics", nargs="?", help="metrics.jsonl whose last held-out loss is the target")
    parser.add_argument("--recipe")
    parser.add_argument("--store")
    parser.add_argument("--slow", help="stage name of the slow run (with --recipe, --store)")
    parser.add_argument("--fast", help="stage name of the fast run")
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                        help="the run's overrides (with --recipe), which its stage keys depend on")
    parser.add_argument("--distillery", default="distillery")
    parser.add_argument("--self-test", action="store_true")
    args = parser.parse_args()
    if args.self_test:
        self_test()
        return
    if args.recipe:
        sys.path.insert(0, os.path.dirname(__file__))
        from store_stages import stage_dirs

        dirs = stage_dirs(args.distillery, args.recipe, args.store, args.set)
        slow_path = os.path.join(dirs[args.slow], "metrics.jsonl")
        fast_path = os.path.join(dirs[args.fast], "metrics.jsonl")
        names = (args.slow, args.fast)
    else:
        if not (args.slow_metrics and args.fast_metrics):
            parser.error("give two metrics.jsonl files, or --recipe, --store, --slow and --fast")
        slow_path, fast_path = args.slow_metrics, args.fast_metrics
        names = (slow_path, fast_path)
    slow, fast = eval_points(slow_path), eval_points(fast_path)
    if not fast:
        sys.exit(f"{fast_path}: no held-out evaluation after step 0")
    try:
        text, _ = report(slow, fast, *names)
    except ValueError as e:
        sys.exit(f"{slow_path}: {e}")
    print(text)


if __name__ == "__main__":
    main()
