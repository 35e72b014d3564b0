"""Properties of the roofline timing policy (moecalc.policies.roofline).

Nothing here copies an expected number from the policy's own output: every assertion is a
property that a wrong model could break (monotonicity, limits, agreement with an
independent Monte Carlo, scalar = vectorized, memory accounting against the parameter count,
physical orderings), or a CLI contract (one-line errors).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moecalc import counts, profiles
from moecalc.errors import InputError
from moecalc.policies import roofline as rl

ROOT = Path(__file__).resolve().parent.parent
MOECALC = Path(sys.executable).parent / "moecalc"
HARDWARE = ("h800", "h20", "h20-3e", "h100", "h200", "b200")  # the profiles the roofline is calibrated for


@pytest.fixture(scope="module", params=HARDWARE)
def hw(request):
    return profiles.load_hardware(request.param)


def _layouts():
    """A spread of serving layouts: (tp, dp, moe_tp, ep)."""
    return [(1, 1, 1, 1), (8, 1, 1, 8), (4, 2, 1, 8), (1, 8, 1, 8), (1, 32, 1, 32), (1, 128, 1, 128),
            (2, 64, 1, 128), (1, 256, 1, 256), (8, 4, 4, 8), (1, 16, 2, 8)]


def _step(m, hw, wl, lay, batch, kv, tbo, **kw):
    tp, dp, moe_tp, ep = lay
    layout = rl.Layout(tp=tp, dp=dp, moe_tp=moe_tp, ep=ep, batch=batch, tbo=tbo)
    return rl.decode(m, hw, wl, layout, kv, **kw)


# ---------------------------------------------------------------- basic sanity


def test_times_are_finite_and_positive(m, hw, wl):
    batch = np.array([1, 2, 7, 64, 255, 1024])[:, None]
    kv = np.array([1, 100, 4989, 32768])[None, :]
    for lay in _layouts():
        for tbo in (False, True):
            s = _step(m, hw, wl, lay, batch, kv, tbo)
            for name, value in (("step", s.step_time), ("serial", s.step_time_no_overlap), ("tbo", s.step_time_tbo)):
                v = np.asarray(value)
                assert np.all(np.isfinite(v)) and np.all(v > 0), (lay, tbo, name)
            for ops in (s.dense_layer, s.moe_layer):
                for op, v in ops.items():
                    assert np.all(np.isfinite(v)) and np.all(np.asarray(v) >= 0), op


def test_prefill_times_are_finite_and_positive(m, hw, wl):
    tokens = np.array([1, 512, 4096, 16384])
    for tp, dp, moe_tp, ep in _layouts():
        for tbo in (False, True):
            layout = rl.Layout(tp=tp, dp=dp, moe_tp=moe_tp, ep=ep, tbo=tbo)
            p = rl.prefill(m, hw, wl, layout, tokens, 4096, 0.5)
            assert np.all(np.isfinite(p.time)) and np.all(p.time > 0)
            assert np.all(p.tokens_per_s_per_device > 0)
            assert np.allclose(p.input_tokens_per_s_per_device, p.tokens_per_s_per_device / 0.5)


# ---------------------------------------------------------------- monotonicity


@pytest.mark.parametrize("tbo", [False, True])
def test_step_time_grows_with_batch(m, hw, wl, tbo):
    batch = np.arange(1, 513)
    for lay in _layouts():
        t = _step(m, hw, wl, lay, batch, 4096, tbo).step_time
        assert np.all(np.diff(t) >= -1e-12 * t[1:]), lay


@pytest.mark.parametrize("tbo", [False, True])
def test_step_time_grows_with_kv_length(m, hw, wl, tbo):
    kv = np.arange(1, 65536, 97)
    for lay in _layouts():
        t = _step(m, hw, wl, lay, 64, kv, tbo).step_time
        assert np.all(np.diff(t) >= -1e-12 * t[1:]), lay


def test_prefill_time_grows_with_tokens_and_prompt(m, hw, wl):
    layout = rl.Layout(tp=1, dp=32, moe_tp=1, ep=32, tbo=True)
    t = rl.prefill(m, hw, wl, layout, np.arange(256, 32768, 256), 4096, 0.0).time
    assert np.all(np.diff(t) >= 0)
    prompt = np.arange(16, 32768, 64)  # four prompts per device, each longer: more work
    t = rl.prefill(m, hw, wl, layout, 4 * prompt, prompt, 0.0).time
    assert np.all(np.diff(t) >= 0)


def _faster(hw: profiles.Hardware, what: str) -> profiles.Hardware:
    """`hw` with one capability 25 % better (an efficiency at most 1, a floor 25 % shorter)."""
    if what == "peak":
        return dataclasses.replace(hw, peak_flops={k: v * 1.25 for k, v in hw.peak_flops.items()})
    if what in ("memory_bandwidth", "scale_up_bandwidth", "scale_out_bandwidth"):
        return dataclasses.replace(hw, **{what: getattr(hw, what) * 1.25})
    e = dict(hw.efficiency)
    entry = dict(e[what])
    if what.endswith("_us"):
        entry["value"] = entry["value"] * 0.75
    elif what in ("comm_sms", "mma_tile_rows"):
        entry["value"] = max(entry["value"] // 2, 1 if what == "mma_tile_rows" else 0)
    elif what == "usable_memory":
        return hw  # capacity, not speed
    else:
        entry["value"] = min(entry["value"] * 1.25, 1.0)
    e[what] = entry
    return dataclasses.replace(hw, efficiency=e)


CAPABILITIES = ("peak", "memory_bandwidth", "scale_up_bandwidth", "scale_out_bandwidth", "gemm", "grouped_gemm",
                "attention", "attention_prefill", "memory", "scale_up", "scale_out", "kernel_latency_us",
                "all_reduce_latency_us", "dispatch_latency_us", "tbo_overhead_us", "comm_sms", "mma_tile_rows")


@pytest.mark.parametrize("what", CAPABILITIES)
def test_more_capability_never_slows_down(m, wl, what):
    batch = np.array([1, 16, 128, 512])[:, None]
    kv = np.array([128, 4096, 32768])[None, :]
    for name in ("h800", "h20", "b200"):
        hw = profiles.load_hardware(name)
        better = _faster(hw, what)
        for lay in _layouts():
            for tbo in (False, True):
                a = _step(m, hw, wl, lay, batch, kv, tbo).step_time
                b = _step(m, better, wl, lay, batch, kv, tbo).step_time
                assert np.all(b <= a * (1 + 1e-12)), (name, lay, tbo)
            layout = rl.Layout(tp=lay[0], dp=lay[1], moe_tp=lay[2], ep=lay[3], tbo=True)
            pa = rl.prefill(m, hw, wl, layout, np.array([512, 16384]), 4096, 0.3).time
            pb = rl.prefill(m, better, wl, layout, np.array([512, 16384]), 4096, 0.3).time
            assert np.all(pb <= pa * (1 + 1e-12)), (name, lay)


def test_imbalance_and_redundancy_never_speed_up(m, wl):
    hw = profiles.load_hardware("h800")
    lay = (1, 144, 1, 144)
    base = _step(m, hw, wl, lay, 64, 4096, True, redundant_experts=32)
    worse = _step(m, hw, wl, lay, 64, 4096, True, redundant_experts=32, expert_imbalance=1.3)
    assert worse.step_time > base.step_time
    with pytest.raises(InputError):
        _step(m, hw, wl, lay, 64, 4096, True, expert_imbalance=0.9)


# ---------------------------------------------------------------- expected experts and nodes hit


def test_expected_experts_hit_limits(m):
    k, e = m.num_experts_per_tok, m.n_routed_experts
    # one token hits a device holding x experts with expected k/E of them each
    for held in (1, 2, 8, 32, 256):
        assert rl.expected_experts_hit(m, 1, held) == pytest.approx(held * k / e)
    # many tokens hit everything, never more
    assert rl.expected_experts_hit(m, 1e6, 8) == pytest.approx(8.0)
    hits = rl.expected_experts_hit(m, np.arange(1, 5000), 8)
    assert np.all(np.diff(hits) >= 0) and np.all(hits <= 8.0) and hits[100] > hits[10]


def _monte_carlo_units_hit(e, k, groups, top_groups, units, trials=20000, seed=0):
    """DeepSeek-V3's node-limited routing, simulated: random scores, the best top_groups
    groups by their best expert, then the best k experts inside them."""
    rng = np.random.default_rng(seed)
    scores = rng.random((trials, e))
    group_best = scores.reshape(trials, groups, -1).max(axis=2)
    chosen = np.argsort(-group_best, axis=1)[:, :top_groups]
    mask = np.zeros((trials, groups), dtype=bool)
    np.put_along_axis(mask, chosen, True, axis=1)
    masked = np.where(np.repeat(mask, e // groups, axis=1), scores, -1.0)
    experts = np.argsort(-masked, axis=1)[:, :k]
    unit = experts // (e // units)
    return np.mean([len(np.unique(row)) for row in unit])


@pytest.mark.parametrize("units", [1, 2, 4, 8, 16, 32, 64])
def test_expected_units_hit_matches_simulated_routing(m, units):
    e, k, g, tg = m.n_routed_experts, m.num_experts_per_tok, m.n_group, m.topk_group
    exact = rl.expected_units_hit(e, k, g, tg, units)
    assert exact == pytest.approx(_monte_carlo_units_hit(e, k, g, tg, units), rel=0.02)
    assert 1.0 <= exact <= min(units, k)


def _monte_carlo_busiest_rank(e, k, groups, top_groups, ep, tokens, trials=1500, seed=1):
    """The largest number of distinct experts any EP rank holds that `tokens` tokens hit,
    averaged over random routings (DeepSeek-V3's group-limited top-k on random scores)."""
    rng = np.random.default_rng(seed)
    scores = rng.random((trials * tokens, e))
    group_best = scores.reshape(-1, groups, e // groups).max(axis=2)
    chosen = np.argsort(-group_best, axis=1)[:, :top_groups]
    mask = np.zeros(group_best.shape, dtype=bool)
    np.put_along_axis(mask, chosen, True, axis=1)
    masked = np.where(np.repeat(mask, e // groups, axis=1), scores, -1.0)
    experts = np.argsort(-masked, axis=1)[:, :k].reshape(trials, tokens * k)
    hit = np.zeros((trials, e), dtype=bool)
    np.put_along_axis(hit, experts, True, axis=1)
    return hit.reshape(trials, ep, e // ep).sum(axis=2).max(axis=1).mean()


@pytest.mark.parametrize("ep, tokens", [(8, 4), (16, 2), (16, 20), (32, 64), (2, 4)])
def test_busiest_rank_reads_the_most_experts(m, ep, tokens):
    """The step waits for the EP rank that reads the most distinct experts: against a
    simulation of the routing (the issue's figures: EP8 at 4 tokens ≈ 7.2 experts where the
    mean is 3.8; EP16 at 2 tokens 3.4 ×; EP16 at 20 tokens 1.5 ×)."""
    e, k, g, tg = m.n_routed_experts, m.num_experts_per_tok, m.n_group, m.topk_group
    got = rl.busiest_rank_experts_hit(m, tokens, ep, e / ep)
    simulated = _monte_carlo_busiest_rank(e, k, g, tg, ep, tokens)
    assert got == pytest.approx(simulated, rel=0.12)
    assert got >= float(rl.expected_experts_hit(m, tokens, e / ep)) - 1e-9
    # vectorized: arrays of token counts and EP sizes give the scalar answers
    arr = rl.busiest_rank_experts_hit(m, np.array([[tokens], [tokens * 3]]), np.array([[ep], [ep]]), e / ep)
    assert arr[0, 0] == pytest.approx(got) and arr[1, 0] >= got


def test_node_limited_routing_bounds_rdma(m):
    # while each node holds whole expert groups (up to n_group = 8 nodes), a token reaches at
    # most topk_group = 4 nodes: RDMA copies per token stop growing with EP (the point of
    # DeepSeek-V3's group-limited routing); uniform top-8 routing would reach up to 8
    nodes = np.array([2, 4, 8])
    limited = rl.expected_units_hit(m.n_routed_experts, m.num_experts_per_tok, m.n_group, m.topk_group, nodes)
    uniform = rl.expected_units_hit(m.n_routed_experts, m.num_experts_per_tok, 1, 1, nodes)
    assert np.all(limited <= m.topk_group + 1e-9)
    assert limited[-1] < uniform[-1]
    assert np.all(np.diff(limited) >= 0)


# ---------------------------------------------------------------- fits / errors


def test_decode_answers_what_fits_and_refuses_what_does_not(m, hw, wl):
    batch = np.array([1, 8, 64, 256, 1024, 4096])
    for lay in _layouts():
        for kv in (512, 4989, 32768):
            s = _step(m, hw, wl, lay, batch, kv, True)
            fits = np.asarray(s.fits)
            assert np.all(np.isfinite(s.step_time))
            for b, ok in zip(batch, fits):
                one = _step(m, hw, wl, lay, int(b), kv, True)
                if ok:
                    rl.check_fits(one, hw, "x")  # no error
                else:
                    with pytest.raises(InputError, match=r"over by [\d.]+ GB"):
                        rl.check_fits(one, hw, "x")
            # fitting is monotone: more sequences never fit where fewer did not
            assert np.all(np.diff(fits.astype(int)) <= 0)


def test_max_batch_is_where_fits_turns_false(m, hw, wl):
    """roofline.max_batch is the inverse of DecodeStep.fits, for arrays of layouts and KV
    lengths; attention TP replicates the cache, so sequences per device fall with TP."""
    tp = np.array([1.0, 2.0, 4.0, 8.0])[:, None]
    kv = np.array([1024.0, 4989.0, 32768.0])[None, :]
    lay = rl.Layout(tp=tp, dp=128 / tp, moe_tp=1, ep=128)
    cap = rl.max_batch(m, hw, wl, lay, kv, redundant_experts=32)
    assert cap.shape == (4, 3) and np.all(cap == np.floor(cap))
    for extra, fits in ((0, True), (1, False)):
        step = rl.decode(m, hw, wl, dataclasses.replace(lay, batch=np.maximum(cap + extra, 1)), kv,
                         redundant_experts=32)
        assert np.all(np.asarray(step.fits)[cap > 0] == fits)
    assert np.all(np.diff(cap / tp, axis=0) < 0)  # per device: TP holds the cache tp times
    assert np.all(np.diff(cap, axis=1) < 0)  # longer sequences, fewer of them
    # an FP8 cache with its scales holds fewer sequences; a cap below the usable memory, fewer still
    scaled = rl.max_batch(m, hw, wl, lay, kv, 32, kv_bytes_per_token=counts.kv_format_bytes_per_token(m, "fp8+scales"))
    assert np.all(scaled <= cap) and np.any(scaled < cap)
    capped = rl.max_batch(m, hw, wl, lay, kv, 32, memory_cap=30e9)
    assert np.all(capped <= cap)
    assert float(rl.max_batch(m, hw, wl, rl.Layout(tp=1, dp=1, moe_tp=1, ep=1), 4096)) == 0  # 671 B on one GPU


def test_tbo_micro_batch_ops_add_up_to_the_tbo_time(m, wl):
    """The micro-batch op times the policy exposes are the ones its TBO schedule overlaps."""
    hw = profiles.load_hardware("h800")
    lay = rl.Layout(tp=1, dp=32, moe_tp=1, ep=32, batch=np.array([8.0, 64.0, 256.0]), tbo=True)
    d = rl.decode(m, hw, wl, lay, 4096)
    half = rl.decode(m, hw, wl, dataclasses.replace(lay, batch=lay.batch / 2), 4096)
    for op, t in d.tbo_moe_layer.items():
        assert np.allclose(t, half.moe_layer[op])
    nd, nm = m.n_dense_layers, m.n_moe_layers
    p = rl.prefill(m, hw, wl, dataclasses.replace(lay, batch=1), np.array([2048.0, 16384.0]))
    e = rl.efficiency(hw)
    total = (nd * rl.tbo_layer_time(p.tbo_dense_layer, rl.DENSE_STAGES, e.tbo_overhead)
             + nm * rl.tbo_layer_time(p.tbo_moe_layer, rl.PREFILL_STAGES, e.tbo_overhead))
    assert np.all(total < p.time_tbo) and np.all(total > 0.95 * p.time_tbo)  # the rest: two LM heads


def test_memory_accounts_for_every_parameter(m, wl):
    """On one device (TP1, EP1) the weights are the whole model: the FP8-quantized matrices
    at one byte, embedding, head, router and norms at two."""
    layout = rl.Layout(tp=1, dp=1, moe_tp=1, ep=1)
    total = counts.total_params(m)
    plain = 2 * counts.embedding_params(m) + m.n_moe_layers * counts.gate_params(m) + counts.norm_params(m)
    expected = (total - plain) * 1.0 + plain * 2.0
    assert rl.weight_bytes_per_device(m, wl, layout) == pytest.approx(expected)
    # EP splits the routed experts only: at EP256 a device holds 1/256 of them
    ep256 = rl.weight_bytes_per_device(m, wl, rl.Layout(tp=1, dp=256, moe_tp=1, ep=256))
    routed = m.n_routed_experts * counts.expert_params(m) * m.n_moe_layers
    assert expected - ep256 == pytest.approx(routed * (1 - 1 / 256))


def test_kv_cache_bytes(m, wl):
    per_token = counts.kv_bytes_per_token(m, 1.0)  # seed-003 workload: FP8 KV
    assert rl.kv_bytes_per_device(m, wl, 10, 1000) == pytest.approx(10 * 1000 * per_token)


def test_bad_layouts_are_refused(m):
    with pytest.raises(InputError, match="same devices"):
        rl.check_layout(m, rl.Layout(tp=2, dp=4, moe_tp=1, ep=4))
    with pytest.raises(InputError, match="larger than the 256"):
        rl.check_layout(m, rl.Layout(tp=1, dp=512, moe_tp=1, ep=512))
    with pytest.raises(InputError, match="does not divide the 256"):
        rl.check_layout(m, rl.Layout(tp=1, dp=48, moe_tp=1, ep=48))
    rl.check_layout(m, rl.Layout(tp=1, dp=144, moe_tp=1, ep=144), redundant_experts=32)  # 288 copies
    with pytest.raises(InputError, match="attention heads"):
        rl.check_layout(m, rl.Layout(tp=3, dp=1, moe_tp=1, ep=3))


def test_mtp_acceptance_is_bounded(m, wl):
    hw = profiles.load_hardware("h800")
    lay = (1, 128, 1, 128)
    with pytest.raises(InputError, match="exceeds"):
        _step(m, hw, wl, lay, 64, 4096, True, mtp_accept=2.5)
    with pytest.raises(InputError):
        _step(m, hw, wl, lay, 64, 4096, True, mtp_accept=0.5)
    plain = _step(m, hw, wl, lay, 64, 4096, True)
    mtp = _step(m, hw, wl, lay, 64, 4096, True, mtp_accept=1.8)
    # verifying two tokens costs more per step, but fewer steps per token are needed at this load
    assert mtp.step_time > plain.step_time
    assert mtp.tokens_per_s_per_user > plain.tokens_per_s_per_user
    assert mtp.kv_bytes > plain.kv_bytes and mtp.weight_bytes > plain.weight_bytes  # the MTP layer's KV and weights


# ---------------------------------------------------------------- vectorized = scalar


def test_vectorized_decode_equals_scalar(m, wl):
    rng = np.random.default_rng(1)
    hw = profiles.load_hardware("h20")
    n = 40
    lays = [_layouts()[i] for i in rng.integers(0, len(_layouts()), n)]
    tp, dp, moe_tp, ep = (np.array([lay[j] for lay in lays]) for j in range(4))
    batch = rng.integers(1, 300, n)
    kv = rng.integers(1, 20000, n)
    tbo = rng.integers(0, 2, n).astype(bool)
    layout = rl.Layout(tp=tp, dp=dp, moe_tp=moe_tp, ep=ep, batch=batch, tbo=tbo)
    v = rl.decode(m, hw, wl, layout, kv, expert_imbalance=1.1)
    for i in range(n):
        s = rl.decode(m, hw, wl, rl.Layout(tp=int(tp[i]), dp=int(dp[i]), moe_tp=int(moe_tp[i]), ep=int(ep[i]),
                                            batch=int(batch[i]), tbo=bool(tbo[i])), int(kv[i]), expert_imbalance=1.1)
        assert float(s.step_time) == pytest.approx(v.step_time[i], rel=1e-12)
        assert float(s.memory_bytes) == pytest.approx(v.memory_bytes[i], rel=1e-12)
        lay_i = rl.Layout(tp=int(tp[i]), dp=int(dp[i]), moe_tp=int(moe_tp[i]), ep=int(ep[i]), batch=int(batch[i]))
        assert float(rl.tokens_per_s_per_device(s, lay_i)) == pytest.approx(
            rl.tokens_per_s_per_device(v, layout)[i], rel=1e-12)


def test_vectorized_prefill_equals_scalar(m, wl):
    hw = profiles.load_hardware("h100")
    tokens = np.array([512, 4096, 16384, 9000])
    prompt = np.array([1024, 4096, 2048, 8000])
    ep = np.array([8, 32, 16, 64])
    layout = rl.Layout(tp=1, dp=ep, moe_tp=1, ep=ep, tbo=np.array([True, False, True, True]))
    v = rl.prefill(m, hw, wl, layout, tokens, prompt, 0.2)
    for i in range(len(tokens)):
        one = rl.Layout(tp=1, dp=int(ep[i]), moe_tp=1, ep=int(ep[i]), tbo=bool(layout.tbo[i]))
        s = rl.prefill(m, hw, wl, one, int(tokens[i]), int(prompt[i]), 0.2)
        assert float(s.time) == pytest.approx(v.time[i], rel=1e-12)


# ---------------------------------------------------------------- physics the model must show


def test_two_batch_overlap_loses_at_small_batch_and_wins_at_large(m, wl):
    """LMSYS: in decode TBO gains only above 64-128 tokens per device and loses below."""
    hw = profiles.load_hardware("h100")
    lay = (1, 72, 1, 72)
    small = [_step(m, hw, wl, lay, 8, 2000, t, redundant_experts=32).step_time for t in (False, True)]
    large = [_step(m, hw, wl, lay, 256, 2000, t, redundant_experts=32).step_time for t in (False, True)]
    assert small[1] > small[0]
    assert large[1] < large[0]


def test_decode_is_memory_bound_at_batch_one(m, wl):
    """At one sequence per GPU a step reads at least the weights a GPU holds and cannot be
    faster than that over the achievable HBM bandwidth."""
    hw = profiles.load_hardware("h800")
    layout = rl.Layout(tp=1, dp=8, moe_tp=1, ep=8, batch=1)
    s = rl.decode(m, hw, wl, layout, 100)
    bw = hw.memory_bandwidth * rl.efficiency(hw).memory
    # every routed expert a token hits, all attention and dense weights, the LM head
    assert float(s.step_time) > float(rl.weight_bytes_per_device(m, wl, layout)) * 0.05 / bw
    assert rl.mfu(s, hw, wl) < 0.01


def test_decode_is_bandwidth_bound_and_prefill_compute_bound(m, wl):
    """On H800, decode at a small batch gains more from 25 % more HBM bandwidth than from
    25 % more FLOPS; prefill of long prompts the other way round."""
    hw = profiles.load_hardware("h800")
    more_bw, more_flops = _faster(hw, "memory_bandwidth"), _faster(hw, "peak")
    lay = rl.Layout(tp=1, dp=32, moe_tp=1, ep=32, batch=16, tbo=False)
    base = rl.decode(m, hw, wl, lay, 4096).step_time
    # (with seed 003's FP8 cache the attention runs on FP8 tensor cores and is memory-bound too,
    # so more FLOPS may not help decode at all)
    assert rl.decode(m, more_bw, wl, lay, 4096).step_time < rl.decode(m, more_flops, wl, lay, 4096).step_time <= base
    base = rl.prefill(m, hw, wl, lay, 16384, 8192, 0.0).time
    assert rl.prefill(m, more_flops, wl, lay, 16384, 8192, 0.0).time < rl.prefill(m, more_bw, wl, lay, 16384, 8192,
                                                                                    0.0).time < base


def test_h20_tensor_tile_makes_small_batches_compute_bound(m, wl):
    """H20's FP8 ridge point (296 TFLOPS / 4 TB/s) sits below the 64-row tile's arithmetic
    intensity, so its decode GEMMs cost the same from 1 to 64 tokens (InferSim measures the
    same), while on H800 (ridge ~590 FLOP/B) they are memory-bound."""
    h20 = profiles.load_hardware("h20")
    dev = rl.device(h20, wl)
    one, sixty_four = (rl.gemm_time(r, 7168, 1536, 1.0, 1.03, 2.0, dev) for r in (1, 64))
    assert one == pytest.approx(sixty_four, rel=0.02)
    assert rl.gemm_time(65, 7168, 1536, 1.0, 1.03, 2.0, dev) > 1.3 * sixty_four  # a second tile


# ---------------------------------------------------------------- CLI


def _run(*argv):
    return subprocess.run([str(MOECALC), *argv], capture_output=True, text=True, timeout=60)


BAD_CLI = {
    "devices-mismatch": (["decode", "--hardware", "h800", "--tp", "2", "--dp", "4", "--ep", "4", "--batch", "8",
                          "--kv-len", "100"], r"tp × dp = 8 but moe-tp × ep = 4"),
    "ep-too-large": (["decode", "--hardware", "h800", "--tp", "1", "--dp", "512", "--ep", "512", "--batch", "8",
                      "--kv-len", "100"], r"EP 512 is larger than the 256 routed expert"),
    "does-not-fit": (["decode", "--hardware", "h800", "--tp", "1", "--dp", "8", "--ep", "8", "--batch", "512",
                      "--kv-len", "32768"], r"does not fit on H800 SXM5: .* over by [\d.]+ GB"),
    "mtp-too-high": (["decode", "--hardware", "h800", "--tp", "1", "--batch", "8", "--kv-len", "100",
                      "--mtp-accept", "3"], r"exceeds the 2 tokens"),
    "mtp-below-one": (["decode", "--hardware", "h800", "--tp", "1", "--batch", "8", "--kv-len", "100",
                       "--mtp-accept", "0.5"], r"--mtp-accept: must be at least 1"),
    "roofline-option-on-seed003": (["decode", "--policy", "seed003", "--hardware", "h800", "--tp", "1", "--batch",
                                    "8", "--kv-len", "100", "--tbo"], r"--tbo applies to the roofline policy only"),
    "prefill-needs-tokens": (["prefill", "--hardware", "h800", "--tp", "1", "--ep", "32"],
                             r"--tokens-per-gpu is required"),
    "prefill-bad-hit-rate": (["prefill", "--hardware", "h800", "--tp", "1", "--ep", "32", "--tokens-per-gpu", "100",
                              "--kv-cache-hit-rate", "1"], r"--kv-cache-hit-rate: must be a fraction"),
    "uneven-devices": (["decode", "--hardware", "h800", "--tp", "4", "--ep", "6", "--batch", "8", "--kv-len", "100"],
                       r"not a multiple of tp = 4"),
    "bad-imbalance": (["decode", "--hardware", "h800", "--tp", "1", "--batch", "8", "--kv-len", "100",
                       "--expert-imbalance", "0.5"], r"--expert-imbalance: must be at least 1"),
}


@pytest.mark.parametrize("case", list(BAD_CLI))
def test_bad_cli_input_is_one_line(case):
    argv, pattern = BAD_CLI[case]
    r = _run(*argv)
    assert r.returncode != 0 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("moecalc: error: "), r.stderr
    assert "Traceback" not in r.stderr
    assert __import__("re").search(pattern, lines[0]), lines[0]


def test_cli_decode_json_is_consistent():
    r = _run("decode", "--hardware", "h800", "--tp", "1", "--dp", "128", "--ep", "128", "--batch", "128",
             "--kv-len", "4096", "--dtype", "bf16", "--tbo", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["policy"] == "roofline" and d["fits"] is True and d["kv_dtype"] == "bf16"
    assert d["layout"] == {"tp": 1, "dp": 128, "moe_tp": 1, "ep": 128, "batch": 128, "tbo": True, "devices": 128}
    assert d["tokens_per_s_per_gpu"] == pytest.approx(128 * d["tokens_per_s_per_user"])
    assert d["tpot_ms"] == pytest.approx(1e3 / d["tokens_per_s_per_user"])
    assert d["step_ms"] == pytest.approx(d["step_ms_tbo"]) and d["step_ms_tbo"] < d["step_ms_no_overlap"]
    assert d["memory_per_gpu_gb"] == pytest.approx(d["memory_weights_gb"] + d["memory_kv_gb"])
    assert d["memory_per_gpu_gb"] <= d["memory_usable_gb"] <= d["memory_capacity_gb"]
    assert set(d["per_layer_ms"]["moe"]) >= {"attention", "routed_experts", "dispatch", "combine"}
    # the default policy is roofline: the same call without --policy gives the same answer
    r2 = _run("decode", "--policy", "roofline", "--hardware", "h800", "--tp", "1", "--dp", "128", "--ep", "128",
              "--batch", "128", "--kv-len", "4096", "--dtype", "bf16", "--tbo", "--json")
    assert json.loads(r2.stdout) == d


def test_cli_prefill_json_is_consistent():
    r = _run("prefill", "--hardware", "h100", "--tp", "1", "--ep", "32", "--tokens-per-gpu", "16384",
             "--seq-len", "4096", "--kv-cache-hit-rate", "0.5", "--tbo", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["layout"]["dp"] == 32 and d["layout"]["devices"] == 32
    assert d["tokens_per_s_per_gpu"] == pytest.approx(16384 / (d["time_ms"] / 1e3))
    assert d["tokens_per_s_per_node"] == pytest.approx(8 * d["tokens_per_s_per_gpu"])
    assert d["input_tokens_per_s_per_node"] == pytest.approx(2 * d["tokens_per_s_per_node"])
    assert 0 < d["mfu"] < 1
