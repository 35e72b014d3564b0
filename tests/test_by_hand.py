"""One decode step of DeepSeek-V3 on H800, derived by hand: every op's FLOPs and bytes from
config.json's numbers and the datasheet, written out here, not taken from moecalc.

Layout: two nodes of 8 H800, attention TP2 × DP8, MoE TP1 × EP16, 32 sequences per attention-DP
rank at KV length 4,096, FP8 weights and KV cache (seed 003's workload), no overlap, no MTP,
served by SGLang (the default framework profile).

Only the efficiency factors and latency floors (calibrated data with sources) are read from the
hardware and framework profiles. The kernel-level op times, the weight and KV memory and the
MFU are pinned; what serving adds around the priced kernels (the small kernels SGLang launches
beside them, the launch gap before each kernel of the CUDA graph, the host's step time) is
derived separately (OVERHEADS) and pinned on its own. A term someone adds to the step later
must show up as an op of its own, listed in EXTRA_OPS, or as an overhead listed in OVERHEADS,
never as a silent change of these numbers.
"""

from __future__ import annotations

import math

import pytest
import yaml

from moecalc import profiles
from moecalc.errors import InputError
from moecalc.policies import roofline as rl

# config.json of DeepSeek-V3
H, Q_LORA, KV_LORA, ROPE, NOPE, V = 7168, 1536, 512, 64, 128, 128
HEADS, VOCAB, INTER, MOE_INTER = 128, 129280, 18432, 2048
E, K, SHARED, LAYERS, DENSE = 256, 8, 1, 61, 3
N_GROUP, TOPK_GROUP = 8, 4  # group-limited routing: each token picks 4 of 8 groups of 32 experts
MOE = LAYERS - DENSE
# H100/H800 SXM datasheet: dense peaks, HBM, NVLink per direction
FP8_PEAK, BF16_PEAK, HBM_BW, NVLINK_BW, HBM = 1979e12, 989.5e12, 3350e9, 200e9, 80e9
IB_BW, NODE = 50e9, 8  # one 400 Gb/s InfiniBand NIC per GPU; 8 GPUs per NVLink node
REPORTED_MIB = 81559  # nvidia-smi memory.total of an 80 GB H100/H800 SXM5 (what SGLang's fraction applies to)

TP, DP, MOE_TP, EP, BATCH, KV_LEN = 2, 8, 1, 16, 32, 4096
# bytes per element: FP8 weights; GEMM inputs FP8 with one FP32 scale per 128; BF16 activations;
# FP8 KV cache; FP8 dispatch (with scales), BF16 combine
W, X, A, KVB, DISP, COMB = 1.0, 1.0 + 4 / 128, 2.0, 1.0, 1.0 + 4 / 128, 2.0

# The step's priced kernels and serving's overheads (OVERHEADS), seconds, as of this writing
# (kernels: 28.496 ms with a 26 µs low-latency floor; its refit to 28 µs adds 2 µs to each of the
# 58 MoE layers' dispatch and combine, 0.232 ms).
KERNELS_S, OVERHEADS_S = 28.496e-3 + 58 * 2 * 2e-6, 4.0858e-3

# Ops a step has besides the kernels below; empty today. Add a new term here, on purpose.
EXTRA_OPS: dict[str, set[str]] = {"dense": set(), "moe": set()}

# What serving adds inside an op, per op: (kernels the op's own time prices, small kernels SGLang
# launches beside them). Each small kernel pays a kernel floor; in a CUDA graph every kernel,
# priced or small, waits one launch gap (`launch_gap_us`) after the one before it.
# Priced: one per GEMM, norm or elementwise op; an MLP is gate-up GEMM, SwiGLU, down GEMM; the
# router is its GEMM and its top-k; DeepEP low-latency's send and receive halves are the four
# `a2a_kernels` (its transfers, `dispatch` and `combine`, launch nothing of their own).
# Small kernels, from the per-kernel trace of DeepSeek's H800 decode profile as SGLang runs it
# (zdszero.github.io 'deepseek_profile', D4 table): the q_a/kv_a RMSNorm beside the input norm,
# the FP8 quantization before q_b, three more rotary kernels, the copy and FP8 quantization
# before o_proj, the router's split-K reduce and score distribution, the up/gate output copy
# (shared expert) and the quantization under the combine (routed experts).
OVERHEADS: dict[str, tuple[int, int]] = {
    "attn_norm": (1, 1), "qkv_a_proj": (1, 0), "q_b_proj": (1, 1), "q_absorb": (1, 0), "rope_cache": (1, 3),
    "attention": (1, 0), "o_absorb": (1, 0), "o_proj": (1, 2), "all_reduce": (1, 0),
    "mlp_norm": (1, 0), "dense_mlp": (3, 0), "all_reduce_mlp": (1, 0),
    "moe_norm": (1, 0), "gate": (2, 2), "shared_expert": (3, 1), "routed_experts": (3, 1), "a2a_kernels": (4, 0),
    "dispatch": (0, 0), "combine": (0, 0),
}


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


@pytest.fixture(scope="module")
def fw():
    """SGLang's profile as the YAML states it (values only), read without moecalc.frameworks."""
    raw = yaml.safe_load((profiles.PARAMS_DIR / "framework" / "sglang.yaml").read_text(encoding="utf-8"))
    return {f"{sec}.{k}": v["value"] for sec, d in raw.items() if isinstance(d, dict) for k, v in d.items()}


def busiest_rank_experts(tokens: int, ranks: int, held: int) -> float:
    """Distinct experts the busiest of `ranks` EP ranks reads when the EP group routes `tokens`
    tokens, each rank holding `held` experts (here half of one routing group). By definition:
    a token picks the rank's group with probability TOPK_GROUP / N_GROUP and then each of the
    group's experts with probability (K / TOPK_GROUP) / experts per group; given n picks, each
    held expert is missed with probability (1 − that)^n. The busiest rank reads all `held`
    unless every rank misses one (ranks independent): E[max] ≥ held − held · P(miss)^ranks."""
    per_group = E // N_GROUP
    pick, chosen = TOPK_GROUP / N_GROUP, (K / TOPK_GROUP) / per_group
    miss = sum(math.comb(tokens, n) * pick**n * (1 - pick) ** (tokens - n) * (1 - (1 - (1 - chosen) ** n) ** held)
               for n in range(tokens + 1))
    assert 0.001 < miss < 0.01  # one rank misses one of its experts now and then...
    assert held * miss**ranks < 1e-30  # ...but never all 16 at once: the busiest reads all it holds
    return float(held)


class Roof:
    """The roofline by hand: per kernel max(FLOPs / rate, bytes / bandwidth), the output
    write after it, plus the kernel floor."""

    def __init__(self, e, f=None):
        self.gemm = FP8_PEAK * e["gemm"]
        self.grouped = FP8_PEAK * e["grouped_gemm"]
        # the KV cache is FP8: FlashMLA's FP8 decoding kernel runs on the FP8 tensor cores
        # (deepseek-ai/FlashMLA#54) at the calibrated attention share of their peak
        self.attn = FP8_PEAK * e["attention"]
        # the absorption GEMMs multiply BF16 copies of wkv_b: the BF16 peak (memory-bound here
        # at 32 tokens, so the step does not tell which peak the code takes)
        self.absorb = BF16_PEAK * e["attention"]
        self.bw = HBM_BW * e["memory"]
        self.nvl = NVLINK_BW * e["scale_up"]
        self.ib = IB_BW * e["scale_out"]
        self.lat = e["kernel_latency_us"] * 1e-6
        self.ar_lat = e["all_reduce_latency_us"] * 1e-6
        self.a2a_lat = e["dispatch_latency_us"] * 1e-6
        self.tile = e["mma_tile_rows"]
        self.gap = e["launch_gap_us"] * 1e-6
        if f is not None:  # SGLang's one-shot all-reduce on two GPUs, up to its message limit
            self.car_lat = f["custom_all_reduce.latency_two_us"] * 1e-6
            self.car_max = f["custom_all_reduce.max_kib"] * 1024

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


def _all_reduce(r: Roof, tokens):
    """TP2 all-reduce of tokens × H BF16 on NVLink: NCCL's ring (each GPU sends and receives
    half the message, after NCCL's two-GPU floor) or SGLang's one-shot kernel (each GPU reads
    the other's whole message, after its own floor), whichever is faster, for messages up to
    the one-shot's limit."""
    message = tokens * H * A
    ring = 2 * (TP - 1) / TP * message / r.nvl + r.ar_lat
    one_shot = (TP - 1) * message / r.nvl + r.car_lat
    assert message <= r.car_max
    return min(ring, one_shot)


def _expected_ops(r: Roof):
    T = BATCH  # new tokens of the attention-DP rank
    h = HEADS // TP  # heads per TP rank
    norm = lambda tokens: r.memory_op(tokens * H * (3 * A + X))  # noqa: E731  residual add + RMSNorm + FP8 cast
    attn = {
        "attn_norm": norm(T),
        "qkv_a_proj": r.gemm_op(T, H, Q_LORA + KV_LORA + ROPE),
        "q_b_proj": r.gemm_op(T, Q_LORA, h * (NOPE + ROPE)),
        "q_absorb": r.gemm_op(T, h * NOPE, KV_LORA, w=2.0, rate=r.absorb),
        "rope_cache": r.memory_op(T * (Q_LORA + KV_LORA + ROPE) * 2 * A + T * (KV_LORA + ROPE) * KVB),
        # FlashMLA: 64 query rows (h heads × 1 token, one tile) per sequence over 4,096 latents
        "attention": r.kernel(2 * BATCH * r.pad(h) * KV_LEN * (KV_LORA + ROPE + KV_LORA),
                              BATCH * (KV_LEN * (KV_LORA + ROPE) * KVB + h * (KV_LORA + ROPE + KV_LORA) * A), r.attn),
        "o_absorb": r.gemm_op(T, h * KV_LORA, V, w=2.0, rate=r.absorb),
        "o_proj": r.gemm_op(T, h * V, H),
        "all_reduce": _all_reduce(r, T),
    }
    dense = {
        **attn,
        "mlp_norm": norm(T),
        "dense_mlp": (r.gemm_op(T, H, 2 * INTER / TP) + r.memory_op(T * INTER / TP * (2 * A + X))
                      + r.gemm_op(T, INTER / TP, H)),
        "all_reduce_mlp": _all_reduce(r, T),
    }
    local = T / TP  # tokens each GPU routes
    group = T * DP  # tokens of the EP group: 256
    pairs = group * K / EP  # token-expert pairs per EP rank: 128
    held = E // EP  # experts per GPU: 16
    # the step waits for the busiest EP rank: the most distinct experts any rank's 256 tokens hit
    # (a mean rank would read 16 · (1 − (1 − 8/256)^256) = 15.995 of them)
    hit = busiest_rank_experts(group, EP, held)
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
    # final norm, LM head, sampling: the roofline adds no small kernels or launch gaps to the
    # head (it prices those per layer op), so none are derived here
    head = norm(T) + r.gemm_op(T, H, VOCAB / TP, w=A) + r.memory_op(T * VOCAB / TP * 4)
    return dense, moe, head


def _overheads(r: Roof, ops):
    """Per op, what the CUDA graph adds (OVERHEADS): a kernel floor per small kernel and a
    launch gap per kernel, priced or small."""
    return {op: OVERHEADS[op][1] * r.lat + sum(OVERHEADS[op]) * r.gap for op in ops}


def test_every_kernel_by_hand(setup, eff, fw):
    *_, step = setup
    r = Roof(eff, fw)
    dense, moe, head = _expected_ops(r)
    # 32 sequences per rank at TP2: within SGLang's CUDA graphs (up to 256 below TP4), so no
    # host launch per kernel, only the graph's launch gaps
    assert BATCH <= fw["cuda_graph.max_batch"] and bool(step.in_graph)
    for name, got, want in (("dense", step.dense_layer, dense), ("moe", step.moe_layer, moe)):
        assert set(got) - set(want) == EXTRA_OPS[name], f"new {name}-layer terms: list them in EXTRA_OPS"
        assert set(want) <= set(got) and set(want) <= set(OVERHEADS)
        over = _overheads(r, want)
        for op, t in want.items():
            assert float(got[op]) == pytest.approx(t + over[op], rel=1e-9), (name, op)
    assert float(step.head) == pytest.approx(head, rel=1e-9)


def test_kernel_counts_by_hand(setup, eff, fw):
    """The overheads are a kernel floor per small kernel and a launch gap per kernel: 22 priced
    kernels per MoE layer at TP2 (21 and the attention all-reduce) and 11 small ones beside
    them; 14 and 7 per dense layer."""
    *_, step = setup
    moe_ops, dense_ops = set(step.moe_layer), set(step.dense_layer)
    assert sum(OVERHEADS[o][0] for o in moe_ops) == 22 and sum(OVERHEADS[o][1] for o in moe_ops) == 11
    assert sum(OVERHEADS[o][0] for o in dense_ops) == 14 and sum(OVERHEADS[o][1] for o in dense_ops) == 7
    r = Roof(eff, fw)
    over = _overheads(r, moe_ops)
    assert sum(over.values()) == pytest.approx(11 * r.lat + 33 * r.gap, rel=1e-12)


def test_step_time_is_the_kernels_plus_the_listed_extras(setup, eff, fw):
    *_, step = setup
    r = Roof(eff, fw)
    dense, moe, head = _expected_ops(r)
    extra = (DENSE * sum(float(step.dense_layer[o]) for o in EXTRA_OPS["dense"])
             + MOE * sum(float(step.moe_layer[o]) for o in EXTRA_OPS["moe"]))
    kernels = DENSE * sum(dense.values()) + MOE * sum(moe.values()) + head
    overheads = DENSE * sum(_overheads(r, dense).values()) + MOE * sum(_overheads(r, moe).values())
    # SGLang's overlapped scheduler runs the host's work per step beside the GPU's
    assert fw["scheduler.overlap"] is True
    gpu = kernels + overheads + extra
    assert float(step.step_time) == pytest.approx(max(gpu, fw["scheduler.host_step_us"] * 1e-6), rel=1e-9)
    assert float(step.step_time) == float(step.step_time_no_overlap)  # tbo off
    # the numbers as of this writing, so a changed efficiency or overhead is seen too (H800 profile)
    assert kernels == pytest.approx(KERNELS_S, rel=1e-4)
    assert overheads == pytest.approx(OVERHEADS_S, rel=1e-4)


def test_weights_and_kv_by_hand(setup, fw):
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
    # memory: what the device reports (81,559 MiB, more than the datasheet's 80 GB), and of it
    # SGLang's static share for weights and KV pool (--mem-fraction-static)
    capacity = REPORTED_MIB * 2**20
    assert capacity > HBM and float(step.memory_capacity) == capacity
    usable = fw["memory.fraction"] * capacity - fw["memory.reserved_gib"] * 2**30
    assert fw["memory.rule"] == "total" and float(step.memory_usable) == pytest.approx(usable, rel=1e-12)
    assert float(step.memory_usable) / 1e9 == pytest.approx(71.410, abs=0.001)
    assert bool(step.fits) and fp8 * 1 + bf16 * 2 + float(step.kv_bytes) <= usable


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
    # one kernel: its floor, and the launch gap before it (OVERHEADS)
    want = max(flops / rate, nbytes / r.bw) + r.lat + r.gap
    assert float(p.moe_layer["attention"]) == pytest.approx(want, rel=1e-9)
    full = max(2 * HEADS * 4096**2 * (NOPE + ROPE + V) / rate, nbytes / r.bw) + r.lat + r.gap
    assert float(p.moe_layer["attention"]) < 0.51 * full  # about half of non-causal
