"""Layouts per second of the deployment search, against a per-layout Python loop.

Usage: python benchmarks/search_speed.py [--json] [--devices LIST] [--batch RANGE] [--sample N]

The space: DeepSeek-V3 on SG2260E (seed 002's workload), every power of two from 1 to 8,192
chips (EP must divide 256 experts and MoE-TP 2048 columns, so only powers of two split),
every divisor pair of each, batch 1-512 per attention-DP rank, TBO off and on.
`layouts` counts every layout of that space; `divisible` those the model actually
evaluates (the rest are rejected as indivisible without timing). `seconds` is the best of
a few runs of the whole search (build the space, evaluate, rank the top 10 and the best
per device count, count reasons). The loop figure evaluates a random sample of the same
layouts one at a time with scalar arguments, as a search without arrays would.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from moecalc import profiles, search
from moecalc.policies import roofline


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--devices", default=",".join(str(2**k) for k in range(14)))
    parser.add_argument("--batch", default="1-512")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sample", type=int, default=300, help="layouts timed one at a time")
    parser.add_argument("--policy", default="roofline")
    args = parser.parse_args()

    m = profiles.load_model("deepseek-v3")
    hw = profiles.load_hardware("sg2260e")
    wl = profiles.load_workload("seed-002")
    devices = [int(n) for n in args.devices.split(",")]
    batches = search.parse_batches(args.batch)

    best = float("inf")
    for _ in range(args.runs):
        start = time.perf_counter()
        result = search.search(m, hw, wl, devices, batches, policy=args.policy)
        result.summary(top=10)
        best = min(best, time.perf_counter() - start)
    n = result.evaluated

    # The same layouts one at a time: a random sample of the divisible ones.
    decode = search.policies()[args.policy]
    s = result.space
    rng = np.random.default_rng(0)
    rows = rng.choice(result.valid, size=args.sample)
    picks = rng.integers(0, len(s.batch), size=args.sample)
    tbos = rng.integers(0, 2, size=args.sample).astype(bool)
    start = time.perf_counter()
    for row, b, tbo in zip(rows, picks, tbos):
        layout = roofline.Layout(int(s.tp[row]), int(s.dp[row]), int(s.moe_tp[row]), int(s.ep[row]),
                                 int(s.batch[b]), bool(tbo))
        step = decode(m, hw, wl, layout, wl.avg_kv_len)
        float(roofline.tokens_per_s_per_device(step, layout))
    loop = args.sample / (time.perf_counter() - start)

    out = {
        "layouts": n,
        "seconds": round(best, 4),
        "layouts_per_s": round(n / best),
        "divisible": int(result.reason.size),
        "divisible_per_s": round(result.reason.size / best),
        "loop_layouts_per_s": round(loop),
        "loop_sample": args.sample,
        "speedup": round(n / best / loop),
        "device_counts": len(devices),
        "policy": args.policy,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{n:,} layouts in {best:.3f} s: {n / best:,.0f} layouts/s "
              f"(a per-layout loop: {loop:,.0f} layouts/s, {n / best / loop:,.0f}× slower)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
