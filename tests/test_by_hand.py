"""One decode step of DeepSeek-V3 on H800, derived by hand: every op's FLOPs and bytes from
config.json's numbers and the datasheet, written out here, not taken from moecalc.

Layout: two nodes of 8 H800, attention TP2 × DP8, MoE TP1 × EP16, 32 sequences per attention-DP
rank at KV length 4,096, FP8 weights and KV cache (seed 003's workload), no overlap, no MTP.

Only the efficiency factors (calibrated data with sources) are read from the profile. The
kernel-level op times, the weight and KV memory and the MFU are pinned; a term someone adds
to the step later (launch gaps, host overhead, ...) must show up as an op of its own, listed
in EXTRA_OPS, never as a silent change of these numbers.
"""

from __future__ import annotations

import pytest

from moecalc import profiles
from moecalc.errors import InputError
from moecalc.policies import roofline as rl

# config.json of DeepSeek-V3
H, Q_LORA, KV_LORA, ROPE, NOPE, V = 7168, 1536, 512, 64, 128, 128
HEADS, VOCAB, INTER, MOE_INTER = 128, 129280, 18432, 2048
E, K, SHARED, LAYERS, DENSE = 256, 8, 1, 61, 3
MOE = LAYERS - DENSE
# H100/H800 SXM datasheet: dense peaks, HBM, NVLink per direction
FP8_PEAK, BF16_PEAK, HBM_BW, NVLINK_BW, HBM = 1979e12, 989.5e12, 3350e9, 200e9, 80e9
IB_BW, NODE = 50e9, 8  # one 400 Gb/s InfiniBand NIC per GPU; 8 GPUs per NVLink node

TP, DP, MOE_TP, EP, BATCH, KV_LEN = 2, 8, 1, 16, 32, 4096
# bytes per element: FP8 weights; GEMM inputs FP8 with one FP32 scale per 128; BF16 activations;
# FP8 KV cache; FP8 dispatch (with scales), BF16 combine
W, X, A, KVB, DISP, COMB = 1.0, 1.0 + 4 / 128, 2.0, 1.0, 1.0 + 4 / 128, 2.0

# Ops a step has besides the kernels below; empty today. Add a new term here, on purpose.
EXTRA_OPS: dict[str, set[str]] = {"dense": set(), "moe": set()}


@pytest.fixture(scope="module")
def setup():
    m = profiles.load_model("deepseek-v3")
    hw = profiles.load_hardware("h800")
    wl = profiles.load_workload("seed-003")
    assert (wl.weight_dtype, wl.kv_dtype, wl.activation_dtype) == ("fp8", "fp8", "bf16")
    layout = rl.Layout(tp=TP, dp=DP, moe_tp=MOE_TP, ep=EP, batch=BATCH, tbo=False)
    return m, hw, wl, layout, rl.decode(m, hw, wl, layout, KV_LEN)


@pytest.fixture(scope="module")
def eff():
    e = profiles.load_hardware("h800").efficiency
    return {k: v["value"] for k, v in e.items()}


class Roof:
    """The roofline by hand: per kernel max(FLOPs / rate, bytes / bandwidth), the output
    write after it, plus the kernel floor."""

    def __init__(self, e):
        self.gemm = FP8_PEAK * e["gemm"]
        self.grouped = FP8_PEAK * e["grouped_gemm"]
        self.attn = BF16_PEAK * e["attention"]
        self.bw = HBM_BW * e["memory"]
        self.nvl = NVLINK_BW * e["scale_up"]
        self.ib = IB_BW * e["scale_out"]
        self.lat = e["kernel_latency_us"] * 1e-6
        self.ar_lat = e["all_reduce_latency_us"] * 1e-6
        self.a2a_lat = e["dispatch_latency_us"] * 1e-6
        self.tile = e["mma_tile_rows"]

    def pad(self, rows):
        return -(-rows // self.tile) * self.tile if rows == int(rows) else (int(rows / self.tile) + 1) * self.tile

    def kernel(self, flops, nbytes, rate, written=0.0):
        return max(flops / rate, nbytes / self.bw) + written / self.bw + self.lat

    def gemm_op(self, rows, n_in, n_out, w=W, rate=None, groups=1.0):
        flops = 2 * n_in * n_out * groups * self.pad(rows)
        return self.kernel(flops, groups * (n_in * n_out * w + rows * n_in * X), rate or self.gemm,
                           groups * rows * n_out * A)

    def memory_op(self, nbytes):
        return nbytes / self.bw + self.lat


def _expected_ops(r: Roof):
    T = BATCH  # new tokens of the attention-DP rank
    h = HEADS // TP  # heads per TP rank
    norm = lambda tokens: r.memory_op(tokens * H * (3 * A + X))  # noqa: E731  residual add + RMSNorm + FP8 cast
    attn = {
        "attn_norm": norm(T),
        "qkv_a_proj": r.gemm_op(T, H, Q_LORA + KV_LORA + ROPE),
        "q_b_proj": r.gemm_op(T, Q_LORA, h * (NOPE + ROPE)),
        "q_absorb": r.gemm_op(T, h * NOPE, KV_LORA, w=2.0, rate=r.attn),
        "rope_cache": r.memory_op(T * (Q_LORA + KV_LORA + ROPE) * 2 * A + T * (KV_LORA + ROPE) * KVB),
        # FlashMLA: 64 query rows (h heads × 1 token, one tile) per sequence over 4,096 latents
        "attention": r.kernel(2 * BATCH * r.pad(h) * KV_LEN * (KV_LORA + ROPE + KV_LORA),
                              BATCH * (KV_LEN * (KV_LORA + ROPE) * KVB + h * (KV_LORA + ROPE + KV_LORA) * A), r.attn),
        "o_absorb": r.gemm_op(T, h * KV_LORA, V, w=2.0, rate=r.attn),
        "o_proj": r.gemm_op(T, h * V, H),
        # ring all-reduce over 2 GPUs on NVLink: each sends and receives half the message
        "all_reduce": 2 * (TP - 1) / TP * T * H * A / r.nvl + r.ar_lat,
    }
    dense = {
        **attn,
        "mlp_norm": norm(T),
        "dense_mlp": (r.gemm_op(T, H, 2 * INTER / TP) + r.memory_op(T * INTER / TP * (2 * A + X))
                      + r.gemm_op(T, INTER / TP, H)),
        "all_reduce_mlp": 2 * (TP - 1) / TP * T * H * A / r.nvl + r.ar_lat,
    }
    local = T / TP  # tokens each GPU routes
    group = T * DP  # tokens of the EP group: 256
    pairs = group * K / EP  # token-expert pairs per EP rank: 128
    held = E / EP  # experts per GPU: 16
    hit = held * (1 - (1 - K / E) ** group)  # of them, the distinct ones 256 tokens hit
    copies = local * K
    moe = {
        **attn,
        "moe_norm": norm(local),
        "gate": r.gemm_op(local, H, E, w=A) + r.memory_op(local * E * 4),
        "shared_expert": (r.gemm_op(local, H, 2 * MOE_INTER * SHARED) + r.memory_op(local * MOE_INTER * (2 * A + X))
                          + r.gemm_op(local, MOE_INTER * SHARED, H)),
        "routed_experts": (r.gemm_op(pairs / hit, H, 2 * MOE_INTER, rate=r.grouped, groups=hit)
                           + r.memory_op(hit * pairs / hit * MOE_INTER * (2 * A + X))
                           + r.gemm_op(pairs / hit, MOE_INTER, H, rate=r.grouped, groups=hit)),
        "a2a_kernels": (r.memory_op(local * H * A + copies * H * DISP) + r.memory_op(pairs * H * DISP)
                        + r.memory_op(pairs * H * COMB) + r.memory_op(copies * H * COMB + local * H * A)),
        # DeepEP low latency over 16 GPUs: of the copies, 1/16 stay, 7/16 cross NVLink to the
        # node's other GPUs and 8/16 cross InfiniBand, both at once
        "dispatch": max(copies * H * DISP * 7 / 16 / r.nvl, copies * H * DISP * 8 / 16 / r.ib) + r.a2a_lat,
        "combine": max(copies * H * COMB * 7 / 16 / r.nvl, copies * H * COMB * 8 / 16 / r.ib) + r.a2a_lat,
    }
    head = norm(T) + r.gemm_op(T, H, VOCAB / TP, w=A) + r.memory_op(T * VOCAB / TP * 4)
    return dense, moe, head


def test_every_kernel_by_hand(setup, eff):
    *_, step = setup
    dense, moe, head = _expected_ops(Roof(eff))
    for name, got, want in (("dense", step.dense_layer, dense), ("moe", step.moe_layer, moe)):
        assert set(got) - set(want) == EXTRA_OPS[name], f"new {name}-layer terms: list them in EXTRA_OPS"
        assert set(want) <= set(got)
        for op, t in want.items():
            assert float(got[op]) == pytest.approx(t, rel=1e-9), (name, op)
    assert float(step.head) == pytest.approx(head, rel=1e-9)


def test_step_time_is_the_kernels_plus_the_listed_extras(setup, eff):
    *_, step = setup
    dense, moe, head = _expected_ops(Roof(eff))
    extra = (DENSE * sum(float(step.dense_layer[o]) for o in EXTRA_OPS["dense"])
             + MOE * sum(float(step.moe_layer[o]) for o in EXTRA_OPS["moe"]))
    kernels = DENSE * sum(dense.values()) + MOE * sum(moe.values()) + head
    assert float(step.step_time) == pytest.approx(kernels + extra, rel=1e-9)
    assert float(step.step_time) == float(step.step_time_no_overlap)  # tbo off
    # the numbers as of this writing, so a changed efficiency is seen too (H800 profile)
    assert kernels == pytest.approx(28.709e-3, rel=1e-4)


def test_weights_and_kv_by_hand(setup):
    *_, step = setup
    mla = H * Q_LORA + H * (KV_LORA + ROPE) + (Q_LORA * HEADS * (NOPE + ROPE) + KV_LORA * HEADS * (NOPE + V)
                                              + HEADS * V * H) / TP
    expert = 3 * H * MOE_INTER
    fp8 = LAYERS * mla + DENSE * 3 * H * INTER / TP + MOE * (E / EP / MOE_TP + SHARED) * expert
    # BF16: embedding (replicated) and LM head (split by TP), router with its bias, RMSNorms
    bf16 = VOCAB * H * (1 + 1 / TP) + MOE * (H * E + E) + LAYERS * (2 * H + Q_LORA + KV_LORA) + H
    assert float(step.weight_bytes) == pytest.approx(fp8 * 1 + bf16 * 2, rel=1e-12)
    assert float(step.kv_bytes) == BATCH * KV_LEN * (KV_LORA + ROPE) * KVB * LAYERS
    assert float(step.weight_bytes) / 1e9 == pytest.approx(53.182, abs=0.001)
    assert float(step.kv_bytes) / 1e9 == pytest.approx(4.606, abs=0.001)
    assert float(step.memory_capacity) == HBM


def test_mfu_by_hand(setup, eff):
    m, hw, wl, layout, step = setup
    T = BATCH
    mla = (2 * T * H * Q_LORA + 2 * T * Q_LORA * HEADS * (NOPE + ROPE) + 2 * T * H * (KV_LORA + ROPE)
           + 2 * T * HEADS * NOPE * KV_LORA + 2 * HEADS * T * KV_LEN * (KV_LORA + ROPE) + 2 * HEADS * T * KV_LEN * KV_LORA
           + 2 * T * HEADS * KV_LORA * V + 2 * T * HEADS * V * H)
    flops = (MOE * (mla + 6 * T * (K + SHARED) * H * MOE_INTER) + DENSE * (mla + 6 * T * H * INTER)
             + 2 * T * H * VOCAB) / TP  # each GPU of the TP pair does half
    assert float(step.flops_per_device) == pytest.approx(flops, rel=1e-12)
    assert float(rl.mfu(step, hw, wl)) == pytest.approx(flops / float(step.step_time) / FP8_PEAK, rel=1e-12)
    tokens_per_s = BATCH / float(step.step_time) / TP  # per GPU
    assert float(rl.tokens_per_s_per_device(step, layout)) == pytest.approx(tokens_per_s, rel=1e-12)


# ---------------------------------------------------------------- the MoE-TP error path


@pytest.mark.parametrize("moe_tp", [3, 5, 7, 2048 * 3])
def test_moe_tp_must_divide_the_expert_width(setup, moe_tp):
    m, *_ = setup
    ep = 8
    layout = rl.Layout(tp=1, dp=moe_tp * ep, moe_tp=moe_tp, ep=ep, batch=1)
    with pytest.raises(InputError, match=rf"MoE TP {moe_tp} does not divide the expert width 2048"):
        rl.check_layout(m, layout)


def test_moe_tp_dividing_the_width_is_accepted(setup):
    m, *_ = setup
    rl.check_layout(m, rl.Layout(tp=1, dp=16, moe_tp=2, ep=8, batch=1))


def test_moe_tp_error_on_the_command_line():
    import subprocess
    import sys
    from pathlib import Path

    moecalc = Path(sys.executable).parent / "moecalc"
    r = subprocess.run([str(moecalc), "decode", "--hardware", "h800", "--tp", "1", "--dp", "24", "--moe-tp", "3",
                        "--batch", "4", "--kv-len", "100"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == "moecalc: error: MoE TP 3 does not divide the expert width 2048\n"


# ---------------------------------------------------------------- prefill attention's causal factor


def test_prefill_attention_is_causal(setup):
    """A 4,096-token prompt, no cache hits: each query attends to itself and what precedes
    it, so one head scores 4096 · 4097 / 2 pairs, not 4096²."""
    m, hw, wl, *_ = setup
    from dataclasses import replace

    wl0 = replace(wl, kv_cache_hit_rate=0.0)
    layout = rl.Layout(tp=1, dp=8, moe_tp=1, ep=8, batch=1)
    p = rl.prefill(m, hw, wl0, layout, 4096, 4096, 0.0)
    r = Roof({k: v["value"] for k, v in hw.efficiency.items()})
    rate = BF16_PEAK * hw.efficiency["attention_prefill"]["value"]
    pairs = 4096 * 4097 / 2
    flops = 2 * HEADS * pairs * (NOPE + ROPE + V)
    nbytes = HEADS * A * (4096 + 4096) * (NOPE + ROPE + V)
    want = max(flops / rate, nbytes / r.bw) + r.lat
    assert float(p.moe_layer["attention"]) == pytest.approx(want, rel=1e-9)
    full = max(2 * HEADS * 4096**2 * (NOPE + ROPE + V) / rate, nbytes / r.bw) + r.lat
    assert float(p.moe_layer["attention"]) < 0.51 * full  # about half of non-causal
