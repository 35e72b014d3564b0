"""Wall time of one `moecalc` CLI call (a new process each time), as a new user pays it.

Usage: python benchmarks/cli_speed.py [--runs N] [--json]
Prints the median and best of N runs for a few representative commands.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "flops": ["flops"],
    "prefill seed003": ["prefill", "--hardware", "h800", "--tp", "4", "--policy", "seed003", "--json"],
    "decode seed003": ["decode", "--hardware", "h800", "--tp", "1", "--batch", "128", "--kv-len", "4383",
                       "--policy", "seed003", "--json"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    exe = shutil.which("moecalc", path=str(Path(sys.executable).parent)) or "moecalc"
    results = {}
    for name, argv in COMMANDS.items():
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            subprocess.run([exe, *argv], check=True, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - start)
        results[name] = {"median_s": statistics.median(times), "best_s": min(times), "runs": args.runs}
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name, r in results.items():
            print(f"{name:18s} median {r['median_s'] * 1e3:6.1f} ms   best {r['best_s'] * 1e3:6.1f} ms   ({r['runs']} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
