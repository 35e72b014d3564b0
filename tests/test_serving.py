"""Serving: queueing against hand values, KV transfer bytes by hand, cost, the planner against
LMSYS's 96 × H100 figures, seed 004's records and the serve/plan command line's bad inputs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from moecalc import frameworks, plan, profiles, serving
from moecalc.errors import InputError
from moecalc.reproduce import SEEDS

MOECALC = Path(sys.executable).parent / "moecalc"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ctx():
    return (profiles.load_model("deepseek-v3"), profiles.load_hardware("h100"),
            profiles.load_workload("seed-004"), frameworks.load_framework("sglang"))


# ---------------------------------------------------------------- queueing, by hand


def test_erlang_c_hand_values():
    assert serving.erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: P(wait) = ρ
    # c = 2, a = 1: (a²/2! · 2/(2−1)) / (1 + 1 + 1) = 1/3
    assert serving.erlang_c(2, 1.0) == pytest.approx(1 / 3)
    # c = 3, a = 2: a³/3! · 3/(3−2) = 4; Σ_{k<3} a^k/k! = 1 + 2 + 2 = 5; C = 4/9
    assert serving.erlang_c(3, 2.0) == pytest.approx(4 / 9)
    assert np.allclose(serving.erlang_c(np.array([1, 2, 3]), np.array([0.5, 1.0, 2.0])), [0.5, 1 / 3, 4 / 9])


def test_queue_wait_hand_values():
    # M/D/1 (Pollaczek–Khinchine): ρ / (2 μ (1 − ρ)) = 0.5 / (2 · 1 · 0.5) = 0.5 s
    assert serving.queue_wait(0.5, 1.0, 1) == pytest.approx(0.5)
    # M/M/1: ρ / (μ (1 − ρ)) = 1 s
    assert serving.queue_wait(0.5, 1.0, 1, cs2=1.0) == pytest.approx(1.0)
    # M/D/2, λ = μ = 1: C(2, 1) / (2 − 1) / 2 = 1/6
    assert serving.queue_wait(1.0, 1.0, 2) == pytest.approx(1 / 6)
    assert serving.queue_wait(2.0, 1.0, 2) == math.inf  # λ = cμ: unstable
    assert serving.queue_wait(0.0, 1.0, 4) == 0.0


# ---------------------------------------------------------------- KV transfer, by hand


def test_kv_transfer_bytes_by_hand(ctx):
    m = ctx[0]
    # BF16 latent: (512 + 64) × 2 B × 61 layers = 70,272 B per token
    assert serving.kv_transfer_bytes(m, 2000, "bf16") == 2000 * 70_272
    # FlashMLA FP8: 512 B latent + 4 FP32 scales (16 B) + 64 BF16 RoPE (128 B) = 656 B per layer
    assert serving.kv_transfer_bytes(m, 2000, "fp8+scales") == 2000 * 656 * 61


def test_kv_format_the_frameworks_store(ctx):
    from dataclasses import replace

    m, _, wl, _ = ctx
    v32 = profiles.load_model("deepseek-v3.2")
    fp8, bf16 = replace(wl, kv_dtype="fp8"), replace(wl, kv_dtype="bf16")
    # dense MLA in FP8: SGLang/TensorRT-LLM/vLLM store 576 B per token and layer (one per-tensor scale)
    assert serving.kv_format(fp8, m) == "fp8"
    assert serving.kv_transfer_bytes(m, 1000, serving.kv_format(fp8, m)) == 1000 * 576 * 61
    # V3.2's sparse kernels read FlashMLA's 656 B layout, plus the indexer's 128 B FP8 key and 4 B scale
    assert serving.kv_format(fp8, v32) == "fp8+scales"
    assert serving.kv_transfer_bytes(v32, 1000, serving.kv_format(fp8, v32)) == 1000 * (656 + 132) * 61
    assert serving.kv_format(bf16, m) == serving.kv_format(bf16, v32) == "bf16"


def test_kv_transfer_time_by_hand(ctx):
    m, hw, _, fw = ctx
    bw = serving.nic_bandwidth(hw)
    assert bw == pytest.approx(50e9 * 0.88)  # one ConnectX-7 400 Gb/s per GPU at 88 %
    t = serving.kv_transfer_time(140_544_000, bw, bw, 1e-3)
    assert t == pytest.approx(1e-3 + 140_544_000 / 44e9)  # 4.194 ms
    # layer-pipelined: 61 MB at 1 GB/s = 61 ms, under a 1 s forward only the last layer's 1 ms shows
    assert serving.kv_transfer_time(61e6, 1e9, 1e9, 0.0, 1.0, 61, layerwise=True) == pytest.approx(1e-3)
    assert fw.kv_layerwise is False  # SGLang 0.5.23 sends after the forward (params/framework/sglang.yaml serving:)


def test_cost_by_hand(ctx):
    hw = ctx[1]
    # $2.00 per GPU-hour, 8 GPUs, 22,300 tokens/s: 16 / 3600 / 22,300 × 1e6 = $0.1993
    assert serving.cost(hw, 8, 22_300) == pytest.approx(16 / 3600 / 22_300 * 1e6)
    assert serving.tokens_per_joule(hw, 8, 22_400) == pytest.approx(22_400 / 5600)
    assert serving.cost(profiles.load_hardware("h20"), 8, 1000.0) is None  # no price: unavailable, not NaN
    # GB200: $9.08 per Superchip-hour (2 GPUs) = $4.54 per GPU-hour; 72 GPUs at 100,000 tokens/s:
    # 72 × 4.54 / 3600 / 100,000 × 1e6 = $0.908 per million tokens; 1,200 W per GPU
    gb = profiles.load_hardware("gb200")
    assert serving.cost(gb, 72, 100_000) == pytest.approx(0.908)
    assert serving.tokens_per_joule(gb, 72, 86_400) == pytest.approx(1.0)


def test_every_hardware_profile_has_a_price_and_power_or_says_none_is_public():
    """Cost and energy come from a sourced, dated figure, or the profile states that none is public."""
    for path in sorted((ROOT / "params" / "hardware").glob("*.yaml")):
        hw, text = profiles.load_hardware(path.stem), path.read_text()
        if hw.price:
            assert hw.price["source"] and len(hw.price["date"]) == 10, path.name
        else:
            assert "# price: none" in text, path.name
        assert hw.power or "power: none" in text, path.name


# ---------------------------------------------------------------- serving points


def test_disagg_at_lmsys_layout(ctx):
    m, hw, wl, fw = ctx
    r = serving.serve_disagg(m, hw, wl, dict(tp=1, dp=32, ep=32, instances=1, tbo=True, tokens=16384),
                             dict(tp=1, dp=72, ep=72, instances=1, batch=256, tbo=True), isl=2000, osl=100, fw=fw)
    # LMSYS: 22,282 output tokens/s per decode node; 52.3k input per prefill node (model +12 %, attributed)
    assert abs(r["decode_capacity_tokens_per_s_per_node"] / 22_282 - 1) <= 0.10
    assert 0.0 <= r["prefill_capacity_tokens_per_s_per_node"] / 52_300 - 1 <= 0.15
    assert r["limiting_pool"] == "prefill"  # 32 prefill GPUs cannot feed 72 decode GPUs at OSL 100
    assert r["ttft_ms"] > r["prefill_forward_ms"] > 0
    assert r["kv_transfer_ms"] == pytest.approx(1.0 + 140_544_000 / 44e9 * 1e3)
    assert 2000 <= r["ttft_ms"] <= 5000  # LMSYS states TTFT 2-5 s


def test_agg_chunk_arithmetic(ctx):
    m, hw, wl, fw = ctx
    r = serving.serve_agg(m, hw, wl, dict(tp=1, dp=32, ep=32, instances=3, tbo=True), isl=2000, osl=100,
                          concurrency=96 * 64, fw=fw)
    # 64 sequences per rank, each needing 2,000 prompt tokens per 100 output steps: 1,280 per step
    assert r["prompt_tokens_per_step"] == pytest.approx(1280)
    assert r["chunk_utilization"] == pytest.approx(1280 / 8192)
    assert r["tpot_ms"] > r["tpot_no_prefill_ms"]  # prefill interference
    assert r["limiting_pool"] is None and r["kv_transfer_ms"] == 0.0


def test_unpriced_hardware_reports_null(ctx):
    m, _, wl, fw = ctx
    hw = profiles.load_hardware("h800")
    r = serving.serve_agg(m, hw, wl, dict(tp=1, dp=32, ep=32, instances=1, tbo=True), isl=2000, osl=100,
                          concurrency=32 * 32, fw=fw)
    assert r["usd_per_mtok_output"] is None and "cost unavailable" in r["cost_note"]
    assert r["tokens_per_joule"] > 0  # H800 has a power figure


# ---------------------------------------------------------------- the planner


@pytest.fixture(scope="module")
def lmsys_plan(ctx):
    m, hw, wl, fw = ctx
    return plan.plan(m, hw, wl, 96, fw=fw)


def test_plan_counts_and_best(lmsys_plan, ctx):
    p = lmsys_plan
    assert p["plans"] >= 1_000_000
    d = p["disagg"]
    assert d["plans"] == d["feasible"] + sum(d["rejected"].values())
    best = d["best"]
    assert best["gpus_used"] <= 96 and best["ttft_ms"] <= 5000 and best["tpot_ms"] <= 100
    assert p["agg"]["best"]["ttft_ms"] <= 5000 and p["agg"]["best"]["tpot_ms"] <= 100
    # the residual against LMSYS (book/chapters/seed-004.md): the best prefill pool's input
    # capacity per node exceeds 52.3k by the model's +12 % at LMSYS's layout plus a better layout
    assert best["prefill_capacity_tokens_per_s_per_node"] > 52_300
    assert best["goodput_tokens_per_s_per_gpu"] >= p["agg"]["best"]["goodput_tokens_per_s_per_gpu"]


def test_plan_best_replays_in_serve(lmsys_plan, ctx):
    m, hw, wl, fw = ctx
    b = lmsys_plan["disagg"]["best"]
    pre = {k: b["prefill"][k] for k in ("tp", "dp", "ep", "instances", "tbo")} | {"tokens": b["prefill"]["tokens_per_gpu"]}
    dec = {k: b["decode"][k] for k in ("tp", "dp", "ep", "instances", "batch", "tbo")}
    r = serving.serve_disagg(m, hw, wl, pre, dec, isl=2000, osl=100, rate=b["arrival_rate"] * (1 - 1e-9), gpus=96,
                             mtp_accept=b["decode"]["mtp_accept"], fw=fw)
    assert r["ttft_ms"] == pytest.approx(b["ttft_ms"], rel=1e-6)
    assert r["tpot_full_batch_ms"] == pytest.approx(b["tpot_ms"], rel=1e-9)
    assert r["tpot_ms"] <= r["tpot_full_batch_ms"]  # at the load, decode runs a smaller batch


def test_plan_no_feasible_names_the_binding_constraint(ctx):
    m, hw, wl, fw = ctx
    with pytest.raises(InputError, match="binding constraint is TPOT"):
        plan.plan(m, hw, wl, 96, tpot_ms=1.0, fw=fw)
    with pytest.raises(InputError, match="out of memory"):
        plan.plan(m, hw, wl, 8, fw=fw)  # 671 B FP8 weights do not fit 8 × 80 GB


# ---------------------------------------------------------------- seed 004


def test_seed004_records():
    recs = SEEDS["seed-004"]()
    rows = {r["row"]: r for r in recs}
    assert all({"table", "row", "published", "computed", "match", "note"} <= set(r) for r in recs)
    assert rows["nodes of the blog's own evaluation setup"]["computed"] == 13  # 4 prefill + 9 decode
    assert rows["dense FFN under TP32: 18,432 / 32"]["computed"] == 576 and 576 % 128 == 64
    assert rows["$ per 1M output tokens"]["match"]  # $2/GPU-h × 8 / 3600 / ~22.5k × 1e6 ≈ 0.20
    assert not rows["'DP replicates the whole model' (decode EP72, DP72 attention)"]["match"]
    assert all(math.isfinite(r["computed"]) for r in recs)


# ---------------------------------------------------------------- profiles and CLI


def test_price_section_is_optional_and_checked(tmp_path):
    data = yaml.safe_load((ROOT / "params/hardware/h100.yaml").read_text(encoding="utf-8"))
    data["price"]["usd_per_gpu_hour"] = -1
    path = tmp_path / "hw.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(InputError, match="price.usd_per_gpu_hour"):
        profiles.load_hardware(path)
    del data["price"]
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert profiles.load_hardware(path).price is None


def _run(*argv):
    return subprocess.run([str(MOECALC), *argv], capture_output=True, text=True, timeout=120)


DIS = ["serve", "--mode", "disagg", "--hardware", "h100"]
OK_P, OK_D = "tp=1,dp=32,ep=32,instances=1", "tp=1,dp=72,ep=72,instances=1,batch=256"
BAD = {
    "spec-field": (DIS + ["--prefill", "tp=1,dq=32", "--decode", OK_D], "field 'dq'"),
    "spec-value": (DIS + ["--prefill", "tp=x", "--decode", OK_D], "field 'tp'"),
    "decode-no-batch": (DIS + ["--prefill", OK_P, "--decode", "tp=1,dp=72"], "field 'batch'"),
    "rate-zero": (DIS + ["--prefill", OK_P, "--decode", OK_D, "--arrival-rate", "0"], "arrival-rate"),
    "rate-inf": (DIS + ["--prefill", OK_P, "--decode", OK_D, "--arrival-rate", "inf"], "arrival-rate"),
    "concurrency-nan": (DIS + ["--prefill", OK_P, "--decode", OK_D, "--concurrency", "nan"], "concurrency"),
    # ASCII digits only, as every other option (issue 10): no sign, no digit separators, no NaN
    "spec-sign": (DIS + ["--prefill", "tp=+1,dp=32,ep=32,instances=1", "--decode", OK_D], "field 'tp'"),
    "spec-mtp-nan": (DIS + ["--prefill", OK_P, "--decode", OK_D + ",mtp=nan"], "field 'mtp'"),
    "concurrency-separator": (DIS + ["--prefill", OK_P, "--decode", OK_D, "--concurrency", "1_024"], "concurrency"),
    "isl-zero": (DIS + ["--prefill", OK_P, "--decode", OK_D, "--isl", "0"], "isl"),
    "osl-negative": (DIS + ["--prefill", OK_P, "--decode", OK_D, "--osl", "-5"], "osl"),
    "not-fitting": (DIS + ["--prefill", "tp=1,dp=32,ep=32,instances=3", "--decode", OK_D, "--gpus", "96"],
                    "instances do not fit"),
    "rate-saturates": (DIS + ["--prefill", OK_P, "--decode", OK_D, "--arrival-rate", "1e6"], "saturates"),
    "slo-zero": (["plan", "--hardware", "h100", "--gpus", "96", "--ttft-ms", "0"], "ttft-ms"),
    "slo-negative": (["plan", "--hardware", "h100", "--gpus", "96", "--tpot-ms", "-1"], "tpot-ms"),
    "no-feasible": (["plan", "--hardware", "h100", "--gpus", "96", "--tpot-ms", "1"], "binding constraint"),
    "framework": (["plan", "--hardware", "h100", "--gpus", "96", "--framework", "nope"], "unknown framework"),
    # refused before anything is allocated (issue 10): 10^11 GPUs would need petabytes of options
    "too-large": (["plan", "--hardware", "h100", "--gpus", "100000000000"], "too large"),
}


def test_plan_size_bound_by_hand():
    from moecalc import plan

    # 96 GPUs, 8 per node: divisors 1, 2, 4, 8 give 96 + 48 + 24 + 12 = 180 instance counts; the
    # multiples 16..96 of 8 at most 12 × (1 + ln 12) more; each with 4 TPs × 2 schedules × max(3 prefill
    # token counts × 49 loads, 19 batches × 4 chunks) = 8 × 147 configs
    bound = plan.option_bound(96, 8)
    assert bound == int((180 + 12 * (1 + math.log(12))) * 8 * 147)
    assert plan.option_bound(10**11, 8) > 20_000_000 > plan.option_bound(96, 8)


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_one_line_exit_2(name):
    argv, pattern = BAD[name]
    res = _run(*argv)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and pattern in lines[0] and "Traceback" not in res.stderr


def test_serve_and_plan_json():
    res = _run(*DIS, "--prefill", OK_P, "--decode", OK_D, "--json")
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    for key in ("ttft_ms", "tpot_ms", "tokens_per_s_per_gpu", "input_tokens_per_s_per_node",
                "output_tokens_per_s_per_node", "kv_transfer_ms", "limiting_pool", "usd_per_mtok_output"):
        assert key in d
    res = _run("serve", "--mode", "agg", "--hardware", "h800", "--tp", "1", "--dp", "32", "--concurrency", "1024",
               "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["usd_per_mtok_output"] is None  # JSON null, never NaN


@pytest.mark.parametrize("fw, name", [("vllm", "vLLM 0.33.0"), ("trtllm", "TensorRT-LLM")])
def test_serve_and_plan_under_each_framework(fw, name):
    """One profile per framework: serve and plan run under vLLM and TensorRT-LLM too, and their
    MoE all-gather (no DeepEP) makes the same decode pool slower than under SGLang."""
    spec = DIS + ["--prefill", OK_P, "--decode", OK_D, "--json"]
    base, other = _run(*spec), _run(*spec, "--framework", fw)
    assert other.returncode == 0, other.stderr
    a, b = json.loads(base.stdout), json.loads(other.stdout)
    assert b["framework"].startswith(name) and a["framework"] == "SGLang 0.5.23"
    assert b["tpot_ms"] > a["tpot_ms"]
    res = _run("plan", "--hardware", "h100", "--gpus", "16", "--framework", fw, "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["framework"].startswith(name)
    assert not (ROOT / "params" / "serving").exists()  # serving data lives in the framework profiles


def test_plan_best_agg_replays_in_serve(lmsys_plan, ctx):
    m, hw, wl, fw = ctx
    a = lmsys_plan["agg"]["best"]
    lay = a["layout"]
    r = serving.serve_agg(m, hw, wl, {k: lay[k] for k in ("tp", "dp", "ep", "instances", "tbo")}, isl=2000, osl=100,
                          concurrency=lay["batch"] * lay["dp"] * lay["instances"], chunk=lay["chunk"],
                          mtp_accept=lay["mtp_accept"], fw=fw)
    assert r["tpot_ms"] == pytest.approx(a["tpot_ms"], rel=1e-9)
    assert r["ttft_ms"] == pytest.approx(a["ttft_ms"], rel=1e-9)
    assert r["output_tokens_per_s_per_gpu"] == pytest.approx(a["goodput_tokens_per_s_per_gpu"], rel=1e-9)
