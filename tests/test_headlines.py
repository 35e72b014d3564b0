"""One set of assumptions across a GPU's pages: the headline figures the decode, KV-cache and
deployment pages state (read back from the CSV tables the executed pages wrote) agree.

The three pages assume the same decode deployment (EP144 with 32 redundant experts, the
workload's KV format and length); the decode page adds the TP the deployment search picks.
So for every GPU profile:

* the largest batch at TP1 is the same on the decode page and in the KV-cache page's lead
  format (the workload's KV dtype) at EP144;
* the decode page's best tokens/s per GPU is the deployment page's best layout's figure when
  that layout runs MoE-TP1 × EP144 (the decode page's split), and never more than it.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from moecalc import book, profiles
from moecalc.profiles import PARAMS_DIR

EXECUTED = book.BOOK_DIR / book.EXECUTED
GPUS = book.hardware_profiles(PARAMS_DIR)


def rows(profile: str, label: str) -> list[dict[str, str]]:
    path = EXECUTED / profile / "tables" / f"{label}.csv"
    assert path.is_file(), f"{path} missing: run `moecalc book`"
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def num(text: str) -> float:
    return float(text)


@pytest.mark.parametrize("gpu", GPUS)
def test_largest_batch_agrees_between_decode_and_kv_cache(gpu):
    decode = next(r for r in rows(gpu, f"{gpu}-decode-memory") if r["attention"].startswith("TP1 ×"))
    kv = next(r for r in rows(gpu, f"{gpu}-kv-cache-max-batch") if r["attention"].startswith("TP1 ×") and r["EP"] == "144")
    wl_kv = decode_workload(gpu).kv_dtype.upper()  # the KV-cache page's lead column is the workload's format
    assert num(decode["largest batch (sequences per GPU)"]) == num(kv[wl_kv])


@pytest.mark.parametrize("gpu", GPUS)
def test_best_tokens_per_gpu_agrees_between_decode_and_deployment(gpu):
    best = rows(gpu, f"{gpu}-decode-best")
    decode_best = max(num(r["tokens/s per GPU"]) for r in best if r["tokens/s per GPU"])
    top = rows(gpu, f"{gpu}-deployment-top")[0]
    deploy_best = num(top["tokens/s per chip"])
    assert decode_best <= deploy_best * (1 + 1e-9)
    if (top["MoE-TP"], top["EP"]) == ("1", "144"):
        # the same layout: the decode page lists the deployment's TP and reaches the same figure
        row = next(r for r in best if r["attention"] == f"TP{top['TP']} × DP{top['DP']}")
        assert num(row["tokens/s per GPU"]) == pytest.approx(deploy_best, rel=1e-9)
        assert decode_best == pytest.approx(deploy_best, rel=1e-9)


def decode_workload(gpu: str):
    hw = profiles.load_hardware(gpu)
    return next(w for w in (profiles.load_workload(c) for c in ("seed-003", "seed-002")) if w.weight_dtype in hw.peak_flops)


def test_h20_decode_page_lists_the_deployment_pages_pick():
    """Issue 15: H20's decode page said 467 tokens/s per GPU (TP1, 4 and 8 only) while the
    deployment page found 524 at TP2. Now the decode page carries the TP the deployment picks
    (whatever the model's numbers make it) and states the same figure."""
    decode = {r["attention"]: r for r in rows("h20", "h20-decode-best")}
    top = rows("h20", "h20-deployment-top")[0]
    assert f"TP{top['TP']} × DP{144 // int(top['TP'])}" in decode
    if top["MoE-TP"] == "1":
        row = decode[f"TP{top['TP']} × DP{144 // int(top['TP'])}"]
        assert num(row["tokens/s per GPU"]) == pytest.approx(num(top["tokens/s per chip"]), rel=1e-9)
