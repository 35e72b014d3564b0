"""Seed 000 audited: its arithmetic recomputed under its own premises, its premises
corrected with moecalc's counts and the roofline policy, and the plan's targets checked."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from moecalc import cli, counts, schedule
from moecalc.reproduce import SEEDS, seed000
from moecalc.units import GiB

KEYS = {"table", "row", "column", "published", "value", "computed", "unit", "match", "note", "corrected"}


@pytest.fixture(scope="module")
def records():
    return seed000.records()


@pytest.fixture(scope="module")
def setup():
    return seed000._profiles()


def by_row(records, start):
    found = [r for r in records if r["row"].startswith(start)]
    assert found, start
    return found


def test_every_record_is_well_formed(records):
    assert SEEDS["seed-000"]() == records
    assert len(records) >= 15
    for r in records:
        assert set(r) == KEYS, r
        assert math.isfinite(r["computed"]) and r["computed"] >= 0
        erratum = r["note"].startswith("erratum:")
        assert erratum == (r["corrected"] is not None), r["row"]  # a wrong premise carries its correction
        if erratum:
            assert math.isfinite(r["corrected"]) and r["corrected"] > 0


def test_its_arithmetic_holds_but_for_two_slips(records):
    slips = [r["row"] for r in records if not r["match"]]
    assert slips == ["tokens/s at η = 0.78", "GPUs used by TP=8 / EP=4 / DP=1"]
    eta = by_row(records, "tokens/s at η = 0.78")[0]
    assert eta["computed"] == pytest.approx(49.92) and "49.9k" in eta["note"]


def test_the_kv_cache_counts_every_layer_and_does_not_fit(records, setup):
    m, hw, wl = setup
    per_token = counts.kv_bytes_per_token(m, 2.0)
    assert per_token == 61 * 576 * 2
    for r in by_row(records, "KV cache"):
        assert r["corrected"] == pytest.approx(seed000.SESSIONS * seed000.CONTEXT * per_token / GiB)
        assert r["corrected"] / r["computed"] >= 8  # 8.6× to 34× the seed's cases
        assert r["corrected"] / seed000.LAYOUT["dp"] > hw.memory_bytes / GiB  # per GPU, more than it has


def test_weights_per_gpu_split_only_what_tp_and_ep_split(records, setup):
    m, hw, wl = setup
    whole_bf16 = by_row(records, "weights, FP16, total")[0]
    per_gpu = by_row(records, "weights per GPU, total")[0]
    assert per_gpu["computed"] == pytest.approx(whole_bf16["computed"] * 1e3 / 32)  # the seed: total / 32
    assert per_gpu["corrected"] > per_gpu["computed"]  # TP8 replicates or splits 8 ways what EP does not spread
    assert whole_bf16["corrected"] == pytest.approx(whole_bf16["computed"] / 2, rel=0.01)  # the FP8 checkpoint


def test_targets_against_the_roofline():
    bf16, fp8 = seed000.targets()
    for t in (bf16, fp8):
        assert t["sessions_at_32k"] < seed000.SESSIONS <= t["sessions_at_mean_kv"]
        assert 0 < t["ttft_s"] < 1.2
        assert t["system_tokens_per_s"] < seed000.TARGET_TOKENS_PER_S
        assert t["output_tokens_per_s"] == pytest.approx(seed000.SESSIONS * t["tokens_per_s_per_user"])
    for key in ("sessions_at_32k", "tokens_per_s_per_user", "prefill_tokens_per_s", "system_tokens_per_s"):
        assert fp8[key] > bf16[key], key  # half the weight bytes
    assert fp8["ttft_s"] < bf16["ttft_s"]


def test_serving_refuses_sessions_that_do_not_fit(setup):
    from moecalc.errors import InputError

    with pytest.raises(InputError, match="does not fit"):
        seed000.serving(*setup, sessions=4 * 10_000)


def test_colocated_rate_is_the_inverse_of_the_cluster_seconds_per_request():
    assert schedule.colocated_request_rate(4000.0, 1000.0, 4000, 500) == pytest.approx(1 / (1.0 + 0.5))
    rates = schedule.colocated_request_rate(np.array([1e3, 1e4, np.inf]), 1e3, 1000, 100)
    assert np.all(np.diff(rates) > 0) and rates[-1] == pytest.approx(10.0)  # infinite prefill: decode alone


def test_the_seed_all_reduce_message_is_tp_times_too_small(setup):
    m, hw, wl = setup
    for tokens in (50, 4096):
        a = seed000.all_reduce(m, hw, wl, tokens)
        assert a["moecalc_bytes"] == seed000.LAYOUT["tp"] * a["seed_bytes"]
        assert a["moecalc_s"] > a["seed_s"]


def test_every_flag_has_a_verdict():
    flags = seed000.vllm_flags()
    assert {f["flag"].split()[0] for f in flags} >= {"--expert-parallel-size", "--kv-cache-dtype", "--enable-moe"}
    for f in flags:
        assert f["verdict"] and (f["verdict"].startswith("exists") or f["instead"])


def test_the_cli_prints_the_records(capsys, records):
    assert cli.main(["reproduce", "seed-000", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(records))
