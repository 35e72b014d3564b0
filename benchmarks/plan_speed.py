"""Plans per second of the serving planner (moecalc.plan).

Usage: python benchmarks/plan_speed.py [--json] [--gpus N] [--hardware H] [--workload W] [--runs R]

The space: DeepSeek-V3 on 96 × H100 (LMSYS's cluster) for seed 004's workload (2,000-token
prompts): every disaggregated plan (prefill instance size × attention TP × tokens per forward ×
TBO × instances, paired with decode instance size × TP × batch × TBO × MTP × instances, within
the GPU budget) and every aggregated plan. `plans` counts them all; `seconds` is the best of a
few runs of the whole `plan` call (evaluate the options, pair them, count the reasons, rank).
`paired` counts the plans whose goodput is computed element by element (pairs of pools that
each pass on their own, and every aggregated plan); the others fail on one pool alone and are
counted exactly from the GPU sums, without pairing.
"""

from __future__ import annotations

import argparse
import json
import time

from moecalc import plan, profiles


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--gpus", type=int, default=96)
    parser.add_argument("--hardware", default="h100")
    parser.add_argument("--workload", default="seed-004")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    m = profiles.load_model("deepseek-v3")
    hw = profiles.load_hardware(args.hardware)
    wl = profiles.load_workload(args.workload)
    best = float("inf")
    for _ in range(args.runs):
        start = time.perf_counter()
        result = plan.plan(m, hw, wl, args.gpus)
        best = min(best, time.perf_counter() - start)
    out = {"plans": result["plans"], "seconds": round(best, 4), "plans_per_second": round(result["plans"] / best),
           # pairs of valid pools evaluated as a matrix; the rest fail on one pool and are counted exactly
           "paired": result["disagg"]["paired"] + result["agg"]["plans"]}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{out['plans']:,} plans in {best:.3f} s: {out['plans_per_second']:,.0f} plans/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
