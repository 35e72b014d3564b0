"""The deployment search: counts that add up, reasons in order, the vectorized path equal to
one layout at a time, seed 002's 128-chip question, sweeps, and bad input at the CLI."""

from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pytest

from moecalc import cli, profiles, search
from moecalc.policies import roofline

GiB = 2.0**30


@pytest.fixture(scope="module")
def sg2260e():
    return profiles.load_hardware("sg2260e")


@pytest.fixture(scope="module")
def seed002_workload():
    return profiles.load_workload("seed-002")


@pytest.fixture(scope="module")
def result128(model, sg2260e, seed002_workload):
    return search.search(model, sg2260e, seed002_workload, [128])


@pytest.fixture(scope="module")
def sweep(model, sg2260e, seed002_workload):
    return search.search(model, sg2260e, seed002_workload, [16, 32, 64, 128, 256])


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- counts and reasons


def test_space_size_is_every_divisor_pair_times_batches_and_schedules(model):
    # 128 = 2^7: 8 choices of tp and 8 of ep; 512 batch sizes; TBO off and on.
    s = search.build_space(model, [128], np.arange(1, 513))
    assert s.size == 8 * 8 * 512 * 2
    assert set(zip(s.tp.tolist(), s.dp.tolist())) == {(2**k, 2 ** (7 - k)) for k in range(8)}
    assert np.all(s.tp * s.dp == 128) and np.all(s.moe_tp * s.ep == 128)


@pytest.mark.parametrize("fixture", ["result128", "sweep"])
def test_evaluated_is_feasible_plus_rejected(fixture, request):
    r = request.getfixturevalue(fixture)
    s = r.summary()
    assert s["evaluated"] == s["feasible"] + sum(s["rejected"].values())
    assert list(s["rejected"]) == ["indivisible", "out of memory", "below the SLO"]


def test_indivisible_count_by_hand(sweep):
    # Of the five counts only 256 has a TP that does not divide 128 heads (tp = 256), paired
    # with each of the 9 divisors of 256 as EP; every EP ≤ 256 divides 256 experts and every
    # MoE-TP ≤ 256 divides 2048.
    assert sweep.rejected()["indivisible"] == 9 * 512 * 2


def test_each_layout_gets_its_first_failing_reason(sweep, seed002_workload):
    m = sweep.metrics
    # the smaller of the workload's cap and SGLang's rule (mem_fraction_static 0.835 of 64 GB)
    limit = min(seed002_workload.max_memory_bytes / 1e9, 0.835 * 64)
    oom = m["memory_gb"] > limit
    slow = m["tokens_per_s_per_user"] < seed002_workload.min_tokens_per_user
    assert np.any(oom & slow)  # the order matters here: counted as out of memory
    assert sweep.rejected()["out of memory"] == np.count_nonzero(oom)
    assert sweep.rejected()["below the SLO"] == np.count_nonzero(~oom & slow)
    assert sweep.feasible == np.count_nonzero(~oom & ~slow)


def test_impossible_slo_leaves_an_empty_feasible_set(model, sg2260e, seed002_workload):
    r = search.search(model, sg2260e, seed002_workload, [128], min_tokens_per_user=1e4)
    s = r.summary()
    assert s["feasible"] == 0 and s["best"] is None and s["top"] == []
    assert s["rejected"]["below the SLO"] > 0
    assert s["evaluated"] == sum(s["rejected"].values())


def test_top_is_sorted_and_feasible(result128, seed002_workload):
    top = result128.summary(top=20)["top"]
    assert len(top) == 20
    per_device = [t["tokens_per_s_per_device"] for t in top]
    assert per_device == sorted(per_device, reverse=True)
    for t in top:
        assert t["tokens_per_s_per_user"] >= seed002_workload.min_tokens_per_user
        assert t["memory_gb"] <= 60.0
        assert t["tp"] * t["dp"] == t["moe_tp"] * t["ep"] == 128
        # per-device throughput is the DP rank's batch over the step, shared by its tp devices
        assert t["tokens_per_s_per_device"] == pytest.approx(t["batch"] / (t["tpot_ms"] / 1e3) / t["tp"])
        assert t["total_tokens_per_s"] == pytest.approx(t["tokens_per_s_per_device"] * 128)


# ---------------------------------------------------------------- vectorized == one at a time


@pytest.mark.parametrize("policy", ["roofline", "seed002"])
def test_vectorized_equals_scalar_on_a_sample(model, sg2260e, seed002_workload, policy):
    r = search.search(model, sg2260e, seed002_workload, [32, 128], np.arange(1, 65), policy=policy)
    decode = search.policies()[policy]
    rng = np.random.default_rng(1)
    s = r.space
    for _ in range(25):
        t, u, b = (int(rng.integers(n)) for n in r.reason.shape)
        row = r.valid[u]
        got = r.layout(t, u, b)  # its batch is per rank, whatever the policy's default batch meaning
        assert got["batch"] == int(s.batch[b]) * (int(s.tp[row]) if s.batch_per == "device" else 1)
        layout = roofline.Layout(int(s.tp[row]), int(s.dp[row]), int(s.moe_tp[row]), int(s.ep[row]),
                                 got["batch"], s.tbo[t])
        step = decode(model, sg2260e, seed002_workload, layout, seed002_workload.avg_kv_len)
        assert got["tokens_per_s_per_user"] == pytest.approx(float(step.tokens_per_s_per_user), rel=1e-9)
        assert got["tokens_per_s_per_device"] == pytest.approx(
            float(roofline.tokens_per_s_per_device(step, layout)), rel=1e-9)
        assert got["memory_gb"] == pytest.approx(float(step.memory_bytes) / 1e9, rel=1e-9)
        assert got["mfu"] == pytest.approx(float(roofline.mfu(step, sg2260e, seed002_workload)), rel=1e-9)


def test_batch_per_device_is_batch_per_rank_over_tp(model, sg2260e, seed002_workload):
    per_device = search.search(model, sg2260e, seed002_workload, [128], [10], tp=[4], moe_tp=[1], tbo=[False],
                               batch_per="device")
    per_rank = search.search(model, sg2260e, seed002_workload, [128], [40], tp=[4], moe_tp=[1], tbo=[False])
    a, b = per_device.layout(0, 0, 0), per_rank.layout(0, 0, 0)
    assert a["batch"] == b["batch"] == 40 and a["batch_per_device"] == 10
    assert a["tokens_per_s_per_user"] == b["tokens_per_s_per_user"]


# ---------------------------------------------------------------- seed 002's question


def test_best_for_128_sg2260e(result128):
    """Seed 002 chose TP4 DP32 MoE-TP1 EP128 at 10 sequences per chip, 10.3 tokens/s per user.
    The roofline agrees on EP128, MoE-TP 1, no TBO and a per-user rate just above the SLO, but
    picks TP2: MLA's latent KV is shared by every head, so each TP rank reads its whole
    group's cache, and at ~10 sequences per chip TP4 reads more bytes than TP2 (by hand below)."""
    best = result128.summary()["best"]
    assert (best["moe_tp"], best["ep"], best["tbo"]) == (1, 128, False)
    assert 10.0 <= best["tokens_per_s_per_user"] <= 11.5
    assert 6 <= best["batch_per_device"] <= 14
    assert best["tp"] == 2 and best["dp"] == 64  # the documented disagreement with seed 002


def test_why_tp2_beats_tp4_by_hand(model, sg2260e, seed002_workload):
    # Roofline policy. DRAM bytes one chip reads per step at 10 sequences per chip that depend
    # on TP: the BF16 latent KV of its group's sequences (tp × 10 of them, 4096 tokens, 576
    # wide, 61 layers), and its 1/tp share of the INT8 head-split MLA weights (wq_b, wkv_b,
    # wo), of the 3 INT8 dense MLPs (3 × 7168 × 18432 each) and of the BF16 LM head (129280 × 7168).
    kv = 10 * 4096 * 576 * 2 * 61
    mla_split = (1536 * 128 * 192 + 512 * 128 * 256 + 128 * 128 * 7168) * 61
    dense = 3 * 3 * 7168 * 18432
    head = 129280 * 7168 * 2
    by_hand = {tp: tp * kv + (mla_split + dense + head) / tp for tp in (2, 4)}
    assert by_hand[2] < by_hand[4] - 2e9  # TP2 moves over 2 GB less per step
    r = search.search(model, sg2260e, seed002_workload, [128], [10], tp=[2, 4], moe_tp=[1], tbo=[False],
                      batch_per="device")
    rate = {r.layout(0, u, 0)["tp"]: r.layout(0, u, 0)["tokens_per_s_per_user"] for u in range(len(r.valid))}
    assert rate[2] > rate[4]
    # the time difference is those bytes at 273 GB/s × 0.893 (9.74 ms; the rest, all-reduce and
    # the per-op floors, nearly cancels)
    assert 1 / rate[4] - 1 / rate[2] == pytest.approx((by_hand[4] - by_hand[2]) / (273e9 * 0.893), rel=0.03)


def test_sweep_answers_for_each_count(sweep):
    s = sweep.summary()
    assert [e["devices"] for e in s["by_devices"]] == [16, 32, 64, 128, 256]
    for e in s["by_devices"]:
        b = e["best"]
        assert b is not None and b["devices"] == e["devices"]
        assert b["tp"] * b["dp"] == b["moe_tp"] * b["ep"] == e["devices"]
        assert b["tokens_per_s_per_user"] >= 10.0 and b["memory_gb"] <= 60.0
    assert s["best"]["tokens_per_s_per_device"] == max(e["best"]["tokens_per_s_per_device"] for e in s["by_devices"])
    # 16 chips hold all 256 experts on 16 EP ranks (16 each): weights alone take most of 60 GB
    assert s["by_devices"][0]["best"]["memory_gb"] > 40


def test_every_hardware_profile_searches(model):
    workloads = [profiles.load_workload(w) for w in ("seed-003", "seed-002")]  # FP8 and INT8 weights
    for name in profiles.available("hardware"):
        hw = profiles.load_hardware(name)
        wl = next(w for w in workloads if w.weight_dtype in hw.peak_flops)  # a dtype the chip computes in
        r = search.search(model, hw, wl, [8, 16], np.arange(1, 129, 8))
        s = r.summary(3)
        assert s["evaluated"] == s["feasible"] + sum(s["rejected"].values()), name
        for metric in search.METRICS:
            assert np.all(np.isfinite(r.metrics[metric])) and np.all(r.metrics[metric] > 0), (name, metric)


# ---------------------------------------------------------------- CLI


def test_cli_json(capsys):
    code, out, err = run(capsys, "search", "--hardware", "sg2260e", "--workload", "seed-002", "--devices", "64,128",
                         "--top", "3", "--json")
    assert code == 0 and err == ""
    data = json.loads(out)
    for key in ("evaluated", "feasible", "rejected", "best", "top", "by_devices", "batch_meaning"):
        assert key in data
    assert len(data["top"]) == 3 and [e["devices"] for e in data["by_devices"]] == [64, 128]
    for key in ("tp", "dp", "moe_tp", "ep", "batch", "tbo", "tokens_per_s_per_user", "tokens_per_s_per_device",
                "total_tokens_per_s", "tpot_ms", "memory_gb", "mfu"):
        assert key in data["best"]


def test_cli_csv_lists_every_layout_with_its_reason(capsys, tmp_path):
    path = tmp_path / "all.csv"
    code, out, _ = run(capsys, "search", "--hardware", "sg2260e", "--workload", "seed-002", "--devices", "256",
                       "--batch", "1-16", "--csv", str(path), "--json")
    assert code == 0
    data = json.loads(out)
    with path.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == data["evaluated"] == data["csv"]["rows"]
    reasons = Counter(r["reason"] for r in rows)
    assert reasons["feasible"] == data["feasible"]
    assert {k: reasons[k] for k in data["rejected"]} == data["rejected"]
    assert all(r["tokens_per_s_per_user"] == "" for r in rows if r["reason"] == "indivisible")


def test_cli_impossible_slo_exits_zero(capsys):
    code, out, err = run(capsys, "search", "--hardware", "sg2260e", "--workload", "seed-002", "--devices", "128",
                         "--min-tokens-per-user", "1000", "--json")
    data = json.loads(out)
    assert code == 0 and err == "" and data["feasible"] == 0 and data["best"] is None
    assert data["rejected"]["below the SLO"] > 0


@pytest.mark.parametrize("argv", [
    ["--devices", "0"],
    ["--devices", "-4"],
    ["--devices", "96"],  # EP must divide 256 and MoE-TP 2048: no split of 96 chips works
    ["--devices", "3,5"],  # no count of the list has a split
    ["--devices", "1048576"],  # more than 256 experts × 2048 expert columns
    ["--devices", "128", "--workload", "no-such-workload"],
    ["--devices", "128", "--batch", "ten"],
    ["--devices", "128", "--policy", "seed004"],
])
def test_cli_bad_input_is_one_line(capsys, argv):
    base = ["search", "--hardware", "sg2260e", "--workload", "seed-002"]
    code, out, err = run(capsys, *base, *argv)
    assert code != 0 and out == ""
    assert err.count("\n") == 1 and err.startswith("moecalc: error:") and "Traceback" not in err


# ---------------------------------------------------------------- frontier and per-count reasons


def test_cli_a_count_without_layout_gets_its_reason_and_the_others_their_answer(capsys):
    # 24 = moe_tp × ep needs ep | 256 (so ep ≤ 8) and moe_tp = 24 / ep | 2048: 3 divides neither
    code, out, err = run(capsys, "search", "--hardware", "h20", "--devices", "8,16,24,32", "--json")
    data = json.loads(out)
    by = {e["devices"]: e for e in data["by_devices"]}
    assert code == 0 and err == ""
    assert by[24]["best"] is None and by[24]["why_none"].startswith("indivisible")
    assert by[16]["best"] is not None and by[32]["best"] is not None
    # 8 × H20: 671 B parameters in FP8 are ≥ 671 GB / 8 ≈ 84 GB per GPU, over 96 GB's usable share
    assert by[8]["best"] is None and by[8]["why_none"].startswith("out of memory")
    code, out, err = run(capsys, "search", "--hardware", "h20", "--devices", "8,24,32")
    assert code == 0 and "24 devices: no feasible layout, indivisible" in out
    assert "8 devices: no feasible layout, out of memory" in out


def test_cli_search_takes_mtp_and_redundant_experts(capsys):
    base = ["search", "--hardware", "h800", "--devices", "144", "--tp", "1", "--moe-tp", "1", "--json"]
    # 144 does not divide 256 experts, but divides 256 + 32 = 288 copies (2 per GPU, DeepSeek's day-6 decode)
    code, out, err = run(capsys, *base)
    assert code == 2 and "no layout" in err
    code, out, err = run(capsys, *base, "--redundant-experts", "32")
    plain = json.loads(out)["best"]
    assert code == 0 and plain["ep"] == 144
    same = ["--redundant-experts", "32", "--batch", "64", "--tbo", "off"]
    code, out, err = run(capsys, *base, *same)
    one = json.loads(out)["best"]
    code, out, err = run(capsys, *base, *same, "--mtp-accept", "1.7")
    mtp = json.loads(out)["best"]
    # MTP keeps 1.7 tokens per step for a step that verifies 2 per sequence (plus the MTP layer):
    # each user gets more tokens/s, but less than 1.7 × (the step costs more)
    assert code == 0 and one["tokens_per_s_per_user"] < mtp["tokens_per_s_per_user"] < 1.7 * one["tokens_per_s_per_user"]


def test_frontier_is_not_dominated_and_ends_at_the_best(result128):
    r = result128
    pts = r.frontier()
    user = np.array([r.metrics["tokens_per_s_per_user"][i] for i in pts])
    dev = np.array([r.metrics["tokens_per_s_per_device"][i] for i in pts])
    assert len(pts) > 5 and np.all(np.diff(user) < 0) and np.all(np.diff(dev) > 0)
    fits = r.reason != search.OUT_OF_MEMORY
    all_user, all_dev = r.metrics["tokens_per_s_per_user"][fits], r.metrics["tokens_per_s_per_device"][fits]
    for u, d in zip(user, dev):  # nothing that fits is at least as fast per user and faster per device
        assert not np.any((all_user >= u) & (all_dev > d))
    best = r.summary()["best"]
    last = r.layout(*r.frontier(slo=True)[-1])
    assert last["tokens_per_s_per_device"] == best["tokens_per_s_per_device"]


def test_per_count_reasons_add_up(sweep):
    s = sweep.summary()
    assert sum(e["evaluated"] for e in s["by_devices"]) == s["evaluated"]
    for reason, total in s["rejected"].items():
        assert sum(e["rejected"][reason] for e in s["by_devices"]) == total
