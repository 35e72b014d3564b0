"""Properties of the roofline policy over random valid inputs (hypothesis).

Random hardware (peaks, bandwidths, efficiencies, floors), layouts the model can split,
batches, KV lengths and dtypes. Every time, size and rate is finite and ≥ 0; time never
falls when the batch, the KV length or the KV dtype grows; never rises when a bandwidth, a
peak or an efficiency grows. Deterministic (derandomize) and bounded (max_examples), so it
runs in a few seconds in `make test`.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moecalc import profiles
from moecalc.policies import roofline as rl

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

M = profiles.load_model("deepseek-v3")
WL = profiles.load_workload("seed-003")
H800 = profiles.load_hardware("h800")
FRACTIONS = ("gemm", "grouped_gemm", "attention", "attention_prefill", "memory", "scale_up", "scale_out")
LATENCIES = ("kernel_latency_us", "all_reduce_latency_us", "dispatch_latency_us", "tbo_overhead_us")
BANDWIDTHS = ("memory_bandwidth", "scale_up_bandwidth", "scale_out_bandwidth")


def _with_efficiency(hw, **values):
    eff = {k: dict(v) for k, v in hw.efficiency.items()}
    for k, v in values.items():
        eff[k] = {"value": v, "source": "test"}
    return replace(hw, efficiency=eff)


@st.composite
def hardware(draw):
    fp8 = draw(st.floats(50e12, 5e15))
    hw = replace(
        H800,
        peak_flops={"fp8": fp8, "bf16": fp8 * draw(st.floats(0.25, 1.0))},
        memory_bytes=1e15,  # room for any layout: memory is a result here, not a filter
        memory_bandwidth=draw(st.floats(300e9, 20e12)),
        scale_up_bandwidth=draw(st.floats(20e9, 2e12)),
        scale_up_domain=draw(st.sampled_from([1, 2, 4, 8, 16, 72])),
        scale_out_bandwidth=draw(st.floats(5e9, 200e9)),
        compute_units=draw(st.integers(32, 200)),
    )
    values = {k: draw(st.floats(0.05, 1.0)) for k in FRACTIONS}
    values.update({k: draw(st.floats(0.0, 50.0)) for k in LATENCIES})
    values["comm_sms"] = draw(st.integers(0, 24))
    values["mma_tile_rows"] = draw(st.sampled_from([1, 16, 64]))
    return _with_efficiency(hw, **values)


@st.composite
def layouts(draw):
    ep = draw(st.sampled_from([1, 2, 4, 8, 16, 32, 64, 128, 256]))
    moe_tp = draw(st.sampled_from([1, 2, 4, 8]))
    devices = ep * moe_tp
    tp = draw(st.sampled_from([t for t in (1, 2, 4, 8, 16, 32) if devices % t == 0 and 128 % t == 0]))
    return rl.Layout(tp=tp, dp=devices // tp, moe_tp=moe_tp, ep=ep, batch=draw(st.integers(1, 1024)),
                     tbo=draw(st.booleans()))


def _workload(draw_dtype: str):
    return replace(WL, kv_dtype=draw_dtype)


def _step(hw, layout, kv, dtype="fp8"):
    return rl.decode(M, hw, _workload(dtype), layout, kv)


def _nonneg_finite(name, value):
    a = np.asarray(value, dtype=float)
    assert np.all(np.isfinite(a)) and np.all(a >= 0), (name, value)


KV = st.integers(1, 131072)
DTYPE = st.sampled_from(["fp8", "bf16"])


@SETTINGS
@given(hardware(), layouts(), KV, DTYPE)
def test_decode_outputs_are_finite_and_non_negative(hw, layout, kv, dtype):
    step = _step(hw, layout, kv, dtype)
    for name in ("step_time", "step_time_no_overlap", "step_time_tbo", "tpot", "tokens_per_s_per_user", "head",
                 "weight_bytes", "kv_bytes", "memory_bytes", "flops_per_device"):
        _nonneg_finite(name, getattr(step, name))
    assert float(step.step_time) > 0
    for ops in (step.dense_layer, step.moe_layer, step.tbo_dense_layer, step.tbo_moe_layer):
        for op, t in ops.items():
            _nonneg_finite(op, t)
    _nonneg_finite("tokens_per_s_per_device", rl.tokens_per_s_per_device(step, layout))
    mfu = float(rl.mfu(step, hw, _workload(dtype)))
    assert 0 < mfu <= 1.0, mfu  # never more than the peak


@SETTINGS
@given(hardware(), layouts(), KV, st.integers(1, 512), st.integers(0, 65536))
def test_decode_time_never_falls_as_batch_or_length_grows(hw, layout, kv, more_batch, more_kv):
    t = float(_step(hw, layout, kv).step_time)
    bigger = replace(layout, batch=layout.batch + more_batch)
    assert float(_step(hw, bigger, kv).step_time) >= t * (1 - 1e-12)
    assert float(_step(hw, layout, kv + more_kv).step_time) >= t * (1 - 1e-12)


@SETTINGS
@given(hardware(), layouts(), KV)
def test_decode_time_never_falls_as_the_kv_dtype_grows(hw, layout, kv):
    assert float(_step(hw, layout, kv, "bf16").step_time) >= float(_step(hw, layout, kv, "fp8").step_time) * (1 - 1e-12)


@SETTINGS
@given(hardware(), layouts(), KV, st.sampled_from(BANDWIDTHS + ("fp8", "bf16")), st.floats(1.0, 10.0))
def test_decode_time_never_rises_with_more_bandwidth_or_peak(hw, layout, kv, what, factor):
    t = float(_step(hw, layout, kv).step_time)
    if what in BANDWIDTHS:
        faster = replace(hw, **{what: getattr(hw, what) * factor})
    else:
        faster = replace(hw, peak_flops={**hw.peak_flops, what: hw.peak_flops[what] * factor})
    assert float(_step(faster, layout, kv).step_time) <= t * (1 + 1e-12)


@SETTINGS
@given(hardware(), layouts(), KV, st.sampled_from(FRACTIONS), st.floats(0.0, 1.0))
def test_decode_time_never_rises_with_more_efficiency(hw, layout, kv, what, share):
    before = hw.efficiency[what]["value"]
    better = _with_efficiency(hw, **{what: before + (1.0 - before) * share})
    assert float(_step(better, layout, kv).step_time) <= float(_step(hw, layout, kv).step_time) * (1 + 1e-12)


@SETTINGS
@given(hardware(), layouts(), st.integers(1, 32768), st.integers(1, 32768), st.floats(0.0, 0.95))
def test_prefill_outputs_are_finite_and_non_negative(hw, layout, tokens, prompt, hit):
    wl = replace(WL, kv_cache_hit_rate=hit)
    p = rl.prefill(M, hw, wl, layout, tokens, prompt, hit)
    for name in ("time", "time_no_overlap", "time_tbo", "tokens_per_s_per_device", "input_tokens_per_s_per_device",
                 "weight_bytes", "kv_bytes", "flops_per_device"):
        _nonneg_finite(name, getattr(p, name))
    assert float(p.time) > 0
    assert 0 < float(rl.mfu(p, hw, wl)) <= 1.0


@SETTINGS
@given(hardware(), layouts(), st.integers(1, 16), st.integers(1, 8192), st.integers(1, 8), st.integers(1, 8192))
def test_prefill_time_never_falls_as_prompts_grow(hw, layout, seqs, prompt, more_seqs, more_prompt):
    """Whole prompts per device (no cache hits): more of them, or longer ones, never take less
    time. (At a fixed token count a longer prompt means fewer prompts, so fewer LM-head rows:
    that can be faster, rightly.)"""
    wl = replace(WL, kv_cache_hit_rate=0.0)
    t = lambda s, L: float(rl.prefill(M, hw, wl, layout, s * L, L, 0.0).time)  # noqa: E731
    base = t(seqs, prompt)
    assert t(seqs + more_seqs, prompt) >= base * (1 - 1e-12)
    assert t(seqs, prompt + more_prompt) >= base * (1 - 1e-12)


def test_the_suite_is_deterministic():
    """derandomize: the same examples every run, so a failure here reproduces."""
    assert SETTINGS.derandomize and SETTINGS.database is None and math.isfinite(SETTINGS.max_examples)


@pytest.mark.parametrize("dtype", ["fp8", "bf16"])
def test_h800_profile_itself_satisfies_the_properties(dtype):
    layout = rl.Layout(tp=1, dp=128, moe_tp=1, ep=128, batch=128)
    a, b = _step(H800, layout, 4096, dtype), _step(H800, replace(layout, batch=129), 4096, dtype)
    assert 0 < float(a.step_time) <= float(b.step_time)
