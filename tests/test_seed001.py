"""Seed 001 audited: every item the issue lists has a record, and the key figures are the
ones SGLang's rules give by hand (numbers written out here, not recomputed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from moecalc.reproduce import SEEDS, seed001

MOECALC = Path(sys.executable).parent / "moecalc"


@pytest.fixture(scope="module")
def records():
    return seed001.records()


def _row(records, text):
    found = [r for r in records if text in r["row"]]
    assert len(found) == 1, (text, [r["row"] for r in records])
    return found[0]


def test_every_item_of_the_issue_is_covered(records):
    rows = " | ".join(r["row"] for r in records)
    for needle in ("cross-node TP=16", "--chunked-prefill-size", "--max-running-requests (decode)",
                   "higher than prefill", "--mem-fraction-static 0.8", "128K", "DeepEP low_latency",
                   "DeepEP normal", "EAGLE", "greatly reduces compute", "greatly reduces memory",
                   "--prefill-round-robin-balance", "'--moe-a2a-backend'", "DISAGGREGATION_WAITING_TIMEOUT",
                   "DISAGGREGATION_BOOTSTRAP_TIMEOUT"):
        assert needle in rows, needle


def test_records_are_well_formed(records):
    for r in records:
        assert {"table", "row", "column", "published", "value", "computed", "unit", "match", "note"} <= set(r)
        assert isinstance(r["match"], bool) and r["note"]
        if r["note"].startswith("erratum:"):
            assert not r["match"], r


def test_key_figures_by_hand(records):
    assert _row(records, "cross-node TP=16")["computed"] == 1  # --tp-size 16 / --dp-size 16
    assert _row(records, "--chunked-prefill-size")["computed"] == 65536 // 8 == 8192
    assert _row(records, "higher than prefill")["computed"] == 1024 // 16 == 512 // 8 == 64
    assert _row(records, "DeepEP low_latency")["computed"] == 64 * 2 == 128
    assert _row(records, "EAGLE")["computed"] == 1  # one drafted token per step
    # V3.2's BF16 KV per token: 61 × (576 × 2 + 128 + 4) vs V3's 61 × 1152
    assert _row(records, "greatly reduces memory")["computed"] == pytest.approx((1152 + 132) / 1152)
    assert _row(records, "greatly reduces compute")["match"]


def test_prediction_is_complete_and_consistent():
    p = seed001.prediction()
    assert p["requests_per_s"] == pytest.approx(min(p["prefill"]["requests_per_s"], p["decode"]["requests_per_s"]))
    assert 0 < p["ttft_unloaded_s"] <= p["ttft_full_chunk_s"]
    assert p["decode"]["requests_per_rank"] == 64
    assert p["decode_concurrency_needed"] <= 1024 or p["bound_by"] == "decode"


def test_cli_json():
    r = subprocess.run([str(MOECALC), "reproduce", "seed-001", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == json.loads(json.dumps(SEEDS["seed-001"]()))
