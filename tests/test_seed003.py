"""Properties of the seed003 timing policy over grids of batch, sequence length, TP and
hardware: finite, non-negative, monotone in the load, never slower on faster hardware."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from moecalc.errors import InputError
from moecalc.policies import seed003 as policy
from moecalc.units import TFLOPS

BATCHES = np.array([1, 2, 8, 32, 96, 128, 512])
KV_LENS = np.array([1, 64, 1000, 4383, 32768])
SEQ_LENS = np.array([1, 128, 1000, 4383, 16384])
TPS = (1, 4, 8)


def _decode_grid(model, hw, tp, pol=None):
    """One vectorized call over batch × KV length (rows × columns)."""
    return policy.decode(model, hw, BATCHES[:, None], KV_LENS[None, :], tp, output_len=1210, policy=pol)


def _finite_nonnegative(x):
    x = np.asarray(x, dtype=float)
    return bool(np.all(np.isfinite(x)) and np.all(x >= 0))


# ---------------------------------------------------------------- decode


@pytest.mark.parametrize("tp", TPS)
@pytest.mark.parametrize("gpu", ["H800", "H20", "H20_3e"])
def test_decode_grid_is_finite_and_monotone(model, gpus, gpu, tp):
    d = _decode_grid(model, gpus[gpu], tp)
    for t in (d.tpot, d.tpot_overlap, *d.layers.values()):
        assert _finite_nonnegative(t)
    for t in (d.tpot, d.tpot_overlap):
        assert np.all(np.diff(t, axis=0) > 0), "time per token must grow with the batch"
        assert np.all(np.diff(t, axis=1) > 0), "time per token must grow with the KV length"
    assert np.all(d.tpot >= d.tpot_overlap)
    assert np.all(np.diff(d.memory_needed, axis=0) > 0)


def test_decode_vectorized_equals_scalar_calls(model, gpus):
    d = _decode_grid(model, gpus["H20"], 4)
    for i, b in enumerate(BATCHES):
        for j, kv in enumerate(KV_LENS):
            one = policy.decode(model, gpus["H20"], int(b), int(kv), 4, output_len=1210)
            assert d.tpot[i, j] == pytest.approx(one.tpot, rel=1e-12)
            assert d.tpot_overlap[i, j] == pytest.approx(one.tpot_overlap, rel=1e-12)


def _faster(hw, what):
    if what == "peak":
        return replace(hw, peak_flops={k: 2 * v for k, v in hw.peak_flops.items()})
    return replace(hw, **{what: 2 * getattr(hw, what)})


FASTER = ("peak", "memory_bandwidth", "scale_up_bandwidth", "scale_out_bandwidth")


@pytest.mark.parametrize("what", FASTER)
@pytest.mark.parametrize("gpu", ["H800", "H20"])
def test_decode_never_slower_on_faster_hardware(model, gpus, gpu, what):
    for tp in TPS:
        base = _decode_grid(model, gpus[gpu], tp)
        fast = _decode_grid(model, _faster(gpus[gpu], what), tp)
        assert np.all(fast.tpot <= base.tpot)
        assert np.all(fast.tpot_overlap <= base.tpot_overlap)


@pytest.mark.parametrize("what", FASTER)
def test_each_h800_figure_matters_somewhere(model, gpus, what):
    """The H800 has no seed overrides: doubling any figure speeds up some decode or prefill."""
    hw, fast = gpus["H800"], _faster(gpus["H800"], what)
    decode_gain = _decode_grid(model, hw, 4).tpot - _decode_grid(model, fast, 4).tpot
    prefill_gain = (policy.prefill(model, hw, SEQ_LENS, 0.563, 4).time
                    - policy.prefill(model, fast, SEQ_LENS, 0.563, 4).time)
    assert np.any(decode_gain > 0) or np.any(prefill_gain > 0)


def test_h800_tp1_time_is_proportional_to_batch(model, gpus):
    # TP1 has no all-reduce and no fixed cost: every term of the seed's decode is ∝ batch.
    d96 = policy.decode(model, gpus["H800"], 96, 4383, 1)
    d128 = policy.decode(model, gpus["H800"], 128, 4383, 1)
    assert d96.tpot == pytest.approx(0.75 * d128.tpot, rel=1e-12)
    assert d96.tpot_overlap == pytest.approx(0.75 * d128.tpot_overlap, rel=1e-12)


def test_tp_splits_attention_and_adds_an_all_reduce(model, gpus):
    hw = gpus["H20"]
    tp1 = policy.decode(model, hw, 32, 4383, 1).layers["SparseMLA"]
    tp4 = policy.decode(model, hw, 32, 4383, 4).layers["SparseMLA"]
    r = policy.rates(hw, policy.load_policy(), 0)
    load_kv = policy.decode(model, hw, 32, 4383, 1).layers["SparseMLA"] - sum(
        policy.mla_times(model, r, 1, 4383, 1.0, "premultiplied")) * 32
    assert tp4 == pytest.approx((tp1 - load_kv) / 4 + load_kv + policy.all_reduce_time(model, r, 4383), rel=1e-12)


def test_best_tp_is_the_seeds(model, gpus):
    # the seed's TL;DR labels: H800(TP1) at 32-128, H20(TP4) at 32
    for batch in (32, 64, 128):
        assert policy.best_decode_tp(model, gpus["H800"], batch, 4383) == 1
    assert policy.best_decode_tp(model, gpus["H20"], 32, 4383) == 4
    assert policy.best_decode_tp(model, gpus["H20_3e"], 32, 4383, force_tp8=True) == 8


def test_h800_batch_128_fits_only_with_fp8_kv(model, gpus):
    # seed §3.2: "H800 在 MLA 矩阵吸收模式下,需要 KVCache 用 FP8 存储才能满足 batchsize=128 需求"
    pol = policy.load_policy()
    need_fp8, have = policy.decode_memory(model, gpus["H800"], pol, 1, 128, 4383, 1210, kv_dtype="fp8")
    need_bf16, _ = policy.decode_memory(model, gpus["H800"], pol, 1, 128, 4383, 1210, kv_dtype="bf16")
    assert need_fp8 <= have < need_bf16


def test_rates_carry_the_hidden_derate(gpus):
    pol = policy.load_policy()
    hw = gpus["H800"]
    decode = policy.rates(hw, pol, 0)
    assert decode.fp8_flops == pytest.approx(0.8 * 0.85 * 1979 * TFLOPS)
    prefill = policy.rates(hw, pol, policy.prefill_comm_sms(hw, pol))
    assert prefill.fp8_flops == pytest.approx(decode.fp8_flops * (132 - 24) / 132)


def test_bad_tp_and_ep_are_input_errors(model, gpus):
    with pytest.raises(InputError, match="does not divide"):
        policy.decode(model, gpus["H800"], 32, 4383, 3)
    with pytest.raises(InputError):
        policy.prefill(model, gpus["H800"], 4383, 0.563, 16)
    with pytest.raises(InputError, match="EP"):
        policy.decode(model, gpus["H800"], 32, 4383, 1, ep=10_000)


# ---------------------------------------------------------------- prefill


@pytest.mark.parametrize("tp", (1, 2, 4, 8))
@pytest.mark.parametrize("gpu", ["H800", "H20"])
def test_prefill_grid_is_finite_and_monotone(model, gpus, gpu, tp):
    p = policy.prefill(model, gpus[gpu], SEQ_LENS, 0.563, tp)
    for t in (p.time, p.time_overlap, *p.layers.values()):
        assert _finite_nonnegative(t)
    assert np.all(np.diff(p.time) > 0) and np.all(np.diff(p.time_overlap) > 0)
    assert np.all(p.time >= p.time_overlap)
    # more cache hits never cost time
    hits = policy.prefill(model, gpus[gpu], SEQ_LENS, 0.9, tp)
    assert np.all(hits.time <= p.time)


@pytest.mark.parametrize("what", FASTER)
@pytest.mark.parametrize("gpu", ["H800", "H20"])
def test_prefill_never_slower_on_faster_hardware(model, gpus, gpu, what):
    for tp in (4, 8):
        base = policy.prefill(model, gpus[gpu], SEQ_LENS, 0.563, tp)
        fast = policy.prefill(model, _faster(gpus[gpu], what), SEQ_LENS, 0.563, tp)
        assert np.all(fast.time <= base.time) and np.all(fast.time_overlap <= base.time_overlap)
        assert np.all(fast.tokens_per_s_per_node >= base.tokens_per_s_per_node)


def test_prefill_expert_work_is_linear_in_tokens(model, gpus):
    p1 = policy.prefill(model, gpus["H800"], 1000, 0.563, 4)
    p2 = policy.prefill(model, gpus["H800"], 2000, 0.563, 4)
    for op in ("DenseMLP", "SharedExpert", "RoutedExpert", "Dispatch", "Combine"):
        assert p2.layers[op] == pytest.approx(2 * p1.layers[op], rel=1e-12), op
    # attention is quadratic: doubling the prompt more than doubles TP1 MLA
    assert p2.layers["MLA"] > 2 * p1.layers["MLA"]


def test_routed_experts_are_eight_times_shared(model, gpus):
    p = policy.prefill(model, gpus["H20"], 4383, 0.563, 4)
    assert p.layers["RoutedExpert"] == pytest.approx(model.num_experts_per_tok * p.layers["SharedExpert"])
    assert p.layers["Combine"] == pytest.approx(2 * p.layers["Dispatch"])
