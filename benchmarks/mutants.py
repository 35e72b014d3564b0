"""Do the package tests bite? Plant small, plausible bugs one at a time and run `pytest tests`.

Usage: python benchmarks/mutants.py [--only NAME] [--keep]

Each mutant is one textual edit of one file under moecalc/. For each, the repository
(moecalc/, tests/, params/, book/ sources, pyproject.toml) is copied to a temporary
directory, the edit applied there (an edit that no longer matches the code is reported as
STALE: update it), and ``pytest tests -x`` run against the copy (PYTHONPATH points at it, so
the copy's moecalc is the one imported, in-process and by the `moecalc` command the CLI tests
run). A mutant is KILLED when a test fails, SURVIVED when all pass. Exit status 1 if any
survives or is stale. A tool, not part of `make test`: it runs the tests once per mutant.

The first five are issue 10's, which survived the tests before it; the others are a few
more plausible slips in the same code.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name → (file, text in the code, the mutant's text)
MUTANTS: dict[str, tuple[str, str, str]] = {
    "fp8-kv-timed-as-bf16": (
        "moecalc/policies/roofline.py",
        "ab=dtype_bytes(wl.activation_dtype), kvb=dtype_bytes(wl.kv_dtype),",
        "ab=dtype_bytes(wl.activation_dtype), kvb=dtype_bytes(\"bf16\"),",
    ),
    "moe-tp-divisibility-check-removed": (
        "moecalc/policies/roofline.py",
        "    if m.moe_intermediate_size % moe_tp:\n        raise InputError(",
        "    if False:\n        raise InputError(",
    ),
    "lm-head-memory-not-split-by-tp": (
        "moecalc/policies/roofline.py",
        "plain = (counts.embedding_params(m) * (1 + head / tp)",
        "plain = (counts.embedding_params(m) * (1 + head)",
    ),
    "decode-mfu-not-divided-by-tp": (
        "moecalc/policies/roofline.py",
        "+ counts.lm_head_flops(m, tokens)) / c.tp\n",
        "+ counts.lm_head_flops(m, tokens))\n",
    ),
    "lm-head-weights-read-as-fp8": (
        "moecalc/policies/roofline.py",
        "_gemm(c, tokens, m.hidden_size, v, w_bytes=c.ab)",
        "_gemm(c, tokens, m.hidden_size, v, w_bytes=c.wb)",
    ),
    # a few more
    "prefill-attention-not-causal": (
        "moecalc/policies/roofline.py",
        "    pairs = seqs * counts.attention_pairs(q_len, kv_len, causal=True)\n    return {",
        "    pairs = seqs * counts.attention_pairs(q_len, kv_len, causal=False)\n    return {",
    ),
    "all-reduce-ignores-ring-factor": (
        "moecalc/policies/roofline.py",
        "intra = 2.0 * (d - 1.0) / d * message / dev.scale_up_bandwidth",
        "intra = message / dev.scale_up_bandwidth",
    ),
    "kv-cache-missing-rope-key": (
        "moecalc/counts.py",
        "return m.kv_cache_dim * bytes_per_element * n",
        "return m.kv_lora_rank * bytes_per_element * n",
    ),
}

SKIPPED = (".git", ".venv", "_build", "__pycache__", "*.pyc", "*.egg-info", ".pytest_cache", ".hypothesis")


def copy_tree(dest: Path) -> None:
    """The repository as the tests see it: sources, params, book pages, README."""
    shutil.copytree(ROOT, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*SKIPPED))


def run(name: str | None, keep: bool, pytest_args: list[str]) -> tuple[str, float, str]:
    """Run the tests on a copy with mutant `name` planted (None: the unmutated baseline)."""
    path, old, new = MUTANTS[name] if name else ("moecalc/__init__.py", "", "")
    tmp = Path(tempfile.mkdtemp(prefix=f"mutant-{name or 'baseline'}-"))
    try:
        copy_tree(tmp)
        target = tmp / path
        text = target.read_text(encoding="utf-8")
        if name and text.count(old) != 1:
            return "STALE", 0.0, f"{path}: the text to mutate occurs {text.count(old)} times"
        if name:
            target.write_text(text.replace(old, new), encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(tmp), "PYTHONDONTWRITEBYTECODE": "1"}
        probe = subprocess.run([sys.executable, "-c", "import moecalc; print(moecalc.__file__)"], cwd=tmp, env=env,
                               capture_output=True, text=True)
        if not probe.stdout.startswith(str(tmp)):  # the installed moecalc would hide the mutant
            return "STALE", 0.0, f"the copy is not the moecalc imported: {probe.stdout.strip() or probe.stderr}"
        start = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=", "-x", "-q",
                            *pytest_args, "tests"], cwd=tmp, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        failed = [line for line in r.stdout.splitlines() if line.startswith("FAILED")]
        return ("KILLED" if r.returncode else "SURVIVED"), seconds, (failed[0] if failed else r.stdout.strip().splitlines()[-1])
    finally:
        if keep:
            print(f"  kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=list(MUTANTS), help="run only this mutant (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the mutated copies")
    parser.add_argument("--deselect", action="append", default=[], metavar="NODEID",
                        help="leave out a test that fails without any mutant (e.g. before `moecalc book` reruns)")
    args = parser.parse_args()
    pytest_args = [f"--deselect={d}" for d in args.deselect]
    # a mutant only counts as killed if the tests pass without it
    status, seconds, detail = run(None, args.keep, pytest_args)
    print(f"{'baseline':9s} {'(no mutant)':36s} {seconds:5.1f} s  {detail}", flush=True)
    if status != "SURVIVED":
        print("the tests fail without any mutant: fix them (or --deselect) first")
        return 1
    bad = 0
    for name in args.only or MUTANTS:
        status, seconds, detail = run(name, args.keep, pytest_args)
        bad += status != "KILLED"
        print(f"{status:9s} {name:36s} {seconds:5.1f} s  {detail}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
