"""The ``seed003`` timing policy: seed 003's algebra, exactly, with each of its quirks named.

Seed 003 prices every op by its FLOPs or bytes over a derated datasheet figure and adds the
times. Its assumptions are data (``params/policy/seed003.yaml``); its quirks are kept here
so that its printed numbers come out, and each is named where it acts:

* Q1, hidden 68 %: every FLOPS figure is 0.8 × datasheet, then × 0.85 (bandwidths × 0.85).
* Q2, SMs reserved for communication in prefill scale FLOPS by (SMs − comm SMs) / SMs.
* Q3, units: bytes / 2^20 divided by GB/s is read as milliseconds (MiB taken for MB), and
  KV bytes / 2^30 over GB/s as seconds (GiB taken for GB).
* Q4, the all-reduce after TP attention carries seq_len × hidden BF16, in prefill and in
  decode alike (in decode it should be the tokens in flight, batch × hidden).
* Q5, prefill attention is plain MLA at q_len = kv_len = seq_len; the KV-cache hit rate
  only removes the wkv_a down-projection, not the rest of the compute.
* Q6, seed 003's ATTN_FP16 group holds wo (or o_absorb) besides attention proper, so those
  GEMMs run at the FP16 rate.
* Q7, decode uses weight-premultiplied absorbed MLA (about 3.2× the FLOPs of run-time
  absorption), loads only the KV cache (never the weights) and sizes it with whatever
  sequence length it is given: the seed passes the prefill length 4,383 there.
* Q8, decode dense layers run MLA at TP1 whatever the TP of the MoE layers.
* Q9, decode routed and shared experts run at 0.7 × FLOPS (grouped-GEMM factor), and each
  token's 8 dispatch copies all leave the GPU over its NIC.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Mapping

import numpy as np

from .. import counts
from ..errors import InputError
from ..profiles import Hardware, Model, Spec, load_mapping
from ..units import GB, GB_PER_S, GiB, MiB, MS, dtype_bytes

_HW_OVERRIDE = Spec(
    "map",
    children={
        "comm_sms_prefill": Spec("int", zero_ok=True),
        "memory_bandwidth_gb_s": Spec("number", unit=GB_PER_S, required=False),
        "scale_up_bandwidth_gb_s": Spec("number", unit=GB_PER_S, required=False),
        "scale_out_bandwidth_gb_s": Spec("number", unit=GB_PER_S, required=False),
    },
)
POLICY_SPEC = Spec(
    "map",
    children={
        "name": Spec("str"),
        "sources": Spec("strings"),
        "peak_derate": Spec("fraction", upper=1),
        "discount_rate": Spec("fraction", upper=1),
        "grouped_gemm_efficiency": Spec("fraction", upper=1),
        "memory_util_rate": Spec("fraction", upper=1),
        "prefill": Spec(
            "map",
            children={"ep": Spec("int"), "gpus_per_node": Spec("int"), "dispatch_nodes": Spec("int")},
        ),
        "decode": Spec("map", children={"ep": Spec("int"), "redundant_experts": Spec("int", zero_ok=True)}),
        "hardware": Spec("map", children={"*": _HW_OVERRIDE}, any_keys=lambda key: bool(key.strip())),
    },
)


@dataclass(frozen=True)
class Seed003Policy:
    path: Path
    peak_derate: float
    discount_rate: float
    grouped_gemm_efficiency: float
    memory_util_rate: float
    prefill_ep: int
    gpus_per_node: int
    dispatch_nodes: int
    decode_ep: int
    decode_redundant_experts: int
    hardware: Mapping[str, Mapping[str, float | int | None]] = field(default_factory=dict)


@lru_cache(maxsize=None)
def load_policy(name_or_path: str = "seed003") -> Seed003Policy:
    path, d = load_mapping("policy", name_or_path, POLICY_SPEC)
    return Seed003Policy(
        path=path,
        peak_derate=d["peak_derate"],
        discount_rate=d["discount_rate"],
        grouped_gemm_efficiency=d["grouped_gemm_efficiency"],
        memory_util_rate=d["memory_util_rate"],
        prefill_ep=d["prefill"]["ep"],
        gpus_per_node=d["prefill"]["gpus_per_node"],
        dispatch_nodes=d["prefill"]["dispatch_nodes"],
        decode_ep=d["decode"]["ep"],
        decode_redundant_experts=d["decode"]["redundant_experts"],
        hardware=d["hardware"],
    )


# ---------------------------------------------------------------- derated figures (seed's GPU_perf)


@dataclass(frozen=True)
class Rates:
    """Seed 003's ``GPU_perf`` getters, in SI: FLOP/s and byte/s after its derates."""

    fp16_flops: float
    fp8_flops: float
    memory_bandwidth: float
    scale_up_bandwidth: float
    scale_out_bandwidth: float
    memory_bytes: float


def rates(hw: Hardware, policy: Seed003Policy, comm_sms: int) -> Rates:
    over = policy.hardware.get(hw.name, {})
    if comm_sms >= hw.compute_units:
        raise InputError(f"{policy.path}: {comm_sms} communication SMs leave none of {hw.name}'s {hw.compute_units}")
    sm_share = (hw.compute_units - comm_sms) / hw.compute_units  # Q2
    flops = policy.peak_derate * policy.discount_rate * sm_share  # Q1
    bw = policy.discount_rate
    return Rates(
        fp16_flops=hw.peak("bf16") * flops,
        fp8_flops=hw.peak("fp8") * flops,
        memory_bandwidth=(over.get("memory_bandwidth_gb_s") or hw.memory_bandwidth) * bw,
        scale_up_bandwidth=(over.get("scale_up_bandwidth_gb_s") or hw.scale_up_bandwidth) * bw,
        scale_out_bandwidth=(over.get("scale_out_bandwidth_gb_s") or hw.scale_out_bandwidth) * bw,
        memory_bytes=hw.memory_bytes,
    )


def prefill_comm_sms(hw: Hardware, policy: Seed003Policy) -> int:
    return int(policy.hardware.get(hw.name, {}).get("comm_sms_prefill") or 0)


def _mib_time(nbytes, bandwidth: float):
    """Q3: seed 003 divides MiB by GB/s and calls it milliseconds."""
    return nbytes / MiB / (bandwidth / GB_PER_S) * MS


def _gib_time(nbytes, bandwidth: float):
    """Q3: seed 003 divides GiB by GB/s and calls it seconds."""
    return nbytes / GiB / (bandwidth / GB_PER_S)


# Q6: which MLA ops seed 003 prices at the FP8 GEMM rate; the rest go at the FP16 rate.
_FP8_MLA_OPS = frozenset({"wq_a", "wq_b", "wkv_a", "w_uk", "w_uv", "wq_b_rope", "q_absorb"})


def mla_times(m: Model, r: Rates, q_len, kv_len, kv_cache_rate: float, mode: counts.MLAMode):
    """(GEMM_FP8 time, ATTN_FP16 time) of one MLA block on one GPU, in seconds."""
    ops = counts.mla_ops(m, q_len, kv_len, kv_cache_rate, mode)
    fp8 = sum(v for k, v in ops.items() if k in _FP8_MLA_OPS)
    fp16 = sum(v for k, v in ops.items() if k not in _FP8_MLA_OPS)
    return fp8 / r.fp8_flops, fp16 / r.fp16_flops


def all_reduce_time(m: Model, r: Rates, seq_len):
    """Q4: BF16 all-reduce of seq_len × hidden over the scale-up link."""
    return _mib_time(counts.hidden_bytes(m, seq_len, dtype_bytes("bf16")), r.scale_up_bandwidth)


def check_tp(m: Model, tp: int) -> None:
    if tp < 1 or m.num_attention_heads % tp:
        raise InputError(f"TP {tp} does not divide the {m.num_attention_heads} attention heads of {m.name}")


# ---------------------------------------------------------------- prefill (seed §2)


@dataclass(frozen=True)
class Prefill:
    """Seed 003's prefill of one DP group's sequence, per layer and summed (seconds)."""

    tp: int
    dp: int
    nodes: int
    seq_len: object
    layers: Mapping[str, object]  # op → seconds per layer (see PREFILL_OPS)
    time_overlap: object  # all layers, all-to-all hidden behind compute
    time: object  # all layers, nothing hidden
    tokens_per_s_per_node_overlap: object
    tokens_per_s_per_node: object
    kv_transfer_overlap: Mapping[str, object]  # seed §2.7 figure per KV dtype, in its MiB/s
    kv_transfer: Mapping[str, object]


# Ops of the seed's prefill table, in its order, and how many layers each runs in.
PREFILL_OPS = ("MLA", "DenseMLP", "TP_MLA", "SharedExpert", "RoutedExpert", "Dispatch", "Combine")


def prefill(
    m: Model,
    hw: Hardware,
    seq_len,
    kv_cache_rate: float,
    tp: int,
    policy: Seed003Policy | None = None,
) -> Prefill:
    """Seed 003 §2: prefill time of one sequence per DP group, with TP attention and EP experts."""
    policy = policy or load_policy()
    check_tp(m, tp)
    ep, per_node = policy.prefill_ep, policy.gpus_per_node
    if per_node % tp or ep % per_node:
        raise InputError(f"TP {tp} must divide the {per_node} GPUs of a node, and they the EP group of {ep}")
    if m.n_routed_experts % ep:
        raise InputError(f"EP {ep} does not divide the {m.n_routed_experts} routed experts of {m.name}")
    dp = ep // tp
    nodes = ep // per_node
    r = rates(hw, policy, prefill_comm_sms(hw, policy))

    gemm, attn = mla_times(m, r, seq_len, seq_len, kv_cache_rate, "plain")  # Q5
    mla_tp1 = gemm + attn
    mla_tp = mla_tp1 / tp + (all_reduce_time(m, r, seq_len) if tp > 1 else 0.0)
    dense = counts.dense_mlp_flops(m, seq_len) / r.fp8_flops
    shared = counts.expert_flops(m, dp * seq_len / ep) / r.fp8_flops
    routed = counts.expert_flops(m, seq_len * dp * m.num_experts_per_tok / ep) / r.fp8_flops
    # §2.4: each node sends (dispatch_nodes − 1) copies of its DP groups' tokens over 8 NICs,
    # FP8 (one byte per element) out and BF16 back.
    sent = (policy.dispatch_nodes - 1) * (per_node / tp) * counts.hidden_bytes(m, seq_len, dtype_bytes("fp8"))
    dispatch = _mib_time(sent, r.scale_out_bandwidth * per_node)
    combine = 2 * dispatch
    layers = dict(zip(PREFILL_OPS, (mla_tp1, dense, mla_tp, shared, routed, dispatch, combine)))

    nd, nm = m.n_dense_layers, m.n_moe_layers
    overlap = nd * (mla_tp1 + dense) + nm * (mla_tp + shared + routed)
    total = overlap + nm * (dispatch + combine)
    tps_overlap = dp * seq_len / overlap / nodes
    tps = dp * seq_len / total / nodes
    # §2.7: tokens/s × 576 elements / 2^20, which the seed labels GB/s: it is MiB/s for one
    # layer at one byte per element (see the errata page).
    kv_bytes = {k: counts.kv_bytes_per_token(m, dtype_bytes(k), layers=1) for k in ("fp8", "bf16")}
    return Prefill(
        tp=tp,
        dp=dp,
        nodes=nodes,
        seq_len=seq_len,
        layers=layers,
        time_overlap=overlap,
        time=total,
        tokens_per_s_per_node_overlap=tps_overlap,
        tokens_per_s_per_node=tps,
        kv_transfer_overlap={k: tps_overlap * b / MiB for k, b in kv_bytes.items()},
        kv_transfer={k: tps * b / MiB for k, b in kv_bytes.items()},
    )


# ---------------------------------------------------------------- decode (seed §3)


@dataclass(frozen=True)
class Decode:
    """Seed 003's decode step: per-layer op times (seconds) and per-step metrics."""

    tp: int
    batch: object
    kv_len: int
    layers: Mapping[str, object]  # see DECODE_OPS
    tpot_overlap: object  # seconds per output token, dispatch/combine hidden
    tpot: object  # seconds per output token, nothing hidden
    time_budget: object  # §3.7: SparseMLA + SharedExpert − (Dispatch + Combine), per layer
    memory_needed: object  # bytes per GPU (weights + KV), seed's accounting (see decode_memory)
    memory_available: float

    @property
    def tokens_per_s_per_user_overlap(self):
        return 1.0 / self.tpot_overlap

    @property
    def tokens_per_s_per_user(self):
        return 1.0 / self.tpot

    @property
    def tokens_per_s_per_gpu_overlap(self):
        return self.batch / self.tpot_overlap

    @property
    def tokens_per_s_per_gpu(self):
        return self.batch / self.tpot


DECODE_OPS = ("DenseMLA", "DenseMLP", "SparseMLA", "SharedExpert", "RoutedExpert", "Dispatch", "Combine")


def experts_per_gpu(m: Model, ep: int, redundant: int) -> float:
    """Routed experts (with redundant copies) per GPU, plus the shared expert(s): seed §3.1/3.2."""
    if ep < 1 or ep > m.n_routed_experts + redundant:
        raise InputError(f"EP {ep} must be between 1 and the {m.n_routed_experts + redundant} expert copies")
    return (m.n_routed_experts + redundant) / ep + m.n_shared_experts


def decode_memory(m: Model, hw: Hardware, policy: Seed003Policy, tp: int, batch, kv_len: int, output_len: int,
                  ep: int | None = None, kv_dtype: str = "fp8"):
    """Seed §3.2 ``_decoding_batchsize`` as bytes: (needed per GPU, available per GPU).

    Weights at one byte per parameter: absorbed (premultiplied) MLA split over TP, the experts
    an EP rank holds, and everything else; KV for (kv_len + output_len) tokens per request,
    × TP as the seed counts it. The seed reads the datasheet's GB as GiB and keeps 90 %."""
    ep = ep or policy.decode_ep
    n_exp = experts_per_gpu(m, ep, policy.decode_redundant_experts)
    seed_total = counts.total_params(m, bias=True, norms=False)
    mla_plain = counts.mla_params(m, "plain", bias=True)
    expert = counts.expert_params(m, bias=True)
    others = seed_total - mla_plain * m.num_hidden_layers - expert * (m.n_routed_experts + m.n_shared_experts) * m.n_moe_layers
    weights = others + counts.mla_params(m, "premultiplied") * m.num_hidden_layers / tp + expert * m.n_moe_layers * n_exp
    kv_per_request = (kv_len + output_len) * counts.kv_bytes_per_token(m, dtype_bytes(kv_dtype)) * tp
    available = hw.memory_bytes / GB * GiB * policy.memory_util_rate
    return weights + kv_per_request * np.asarray(batch, dtype=float), available


def decode(
    m: Model,
    hw: Hardware,
    batch,
    kv_len: int,
    tp: int,
    output_len: int = 0,
    policy: Seed003Policy | None = None,
    ep: int | None = None,
) -> Decode:
    """Seed 003 §3: one decode step for `batch` sequences per GPU at KV length `kv_len`."""
    policy = policy or load_policy()
    check_tp(m, tp)
    r = rates(hw, policy, comm_sms=0)  # §3: "Decode 阶段不需要独立通信 SM"
    gemm, attn = mla_times(m, r, 1, kv_len, 1.0, "premultiplied")  # Q7
    mla_tp1 = (gemm + attn) * batch
    sparse_mla = mla_tp1 / tp + (all_reduce_time(m, r, kv_len) if tp > 1 else 0.0)  # Q4
    load_kv = _gib_time(kv_len * counts.kv_bytes_per_token(m, dtype_bytes("fp8"), layers=1) * batch, r.memory_bandwidth)
    dense_mla = mla_tp1 + load_kv  # Q8
    sparse_mla = sparse_mla + load_kv
    dense_mlp = counts.dense_mlp_flops(m, batch) / r.fp8_flops
    ggemm = policy.grouped_gemm_efficiency  # Q9
    shared = counts.expert_flops(m, batch) / r.fp8_flops / ggemm
    routed = counts.expert_flops(m, batch * m.num_experts_per_tok) / r.fp8_flops / ggemm
    dispatch = _mib_time(counts.dispatch_bytes(m, batch, dtype_bytes("fp8")), r.scale_out_bandwidth)
    combine = 2 * dispatch
    layers = dict(zip(DECODE_OPS, (dense_mla, dense_mlp, sparse_mla, shared, routed, dispatch, combine)))
    nd, nm = m.n_dense_layers, m.n_moe_layers
    overlap = nd * (dense_mla + dense_mlp) + nm * (sparse_mla + shared + routed)
    total = overlap + nm * (dispatch + combine)
    needed, available = decode_memory(m, hw, policy, tp, batch, kv_len, output_len, ep)
    return Decode(
        tp=tp,
        batch=batch,
        kv_len=kv_len,
        layers=layers,
        tpot_overlap=overlap,
        tpot=total,
        time_budget=sparse_mla + shared - (dispatch + combine),
        memory_needed=needed,
        memory_available=available,
    )


def best_decode_tp(m: Model, hw: Hardware, batch: int, kv_len: int, force_tp8: bool = False) -> int:
    """Seed §3.6 ``mla_tp``: TP4 when TP1 MLA is slower than TP4, else TP1; H20-3e always TP8."""
    if force_tp8:
        return 8
    policy = load_policy()
    r = rates(hw, policy, comm_sms=0)
    gemm, attn = mla_times(m, r, 1, kv_len, 1.0, "premultiplied")
    tp1 = (gemm + attn) * batch
    tp4 = tp1 / 4 + all_reduce_time(m, r, kv_len)
    return 4 if tp1 > tp4 else 1


# Seed §3.1 table: decode EP sizes and their redundant experts (16+ for EPLB), giving 8, 4, 2
# and 1 routed experts per GPU.
EP_REDUNDANT = {34: 16, 72: 32, 144: 32, 320: 64}


def max_decode_batch(m: Model, hw: Hardware, tp: int, kv_len: int, output_len: int, ep: int | None = None,
                     kv_dtype: str = "fp8", policy: Seed003Policy | None = None):
    """Seed §3.2 ``_decoding_batchsize``: the largest batch per GPU whose KV cache fits beside
    the weights, (usable memory − weights) / KV per request, as a real number (the seed prints
    it rounded); negative when the weights alone do not fit. Same accounting as
    :func:`decode_memory` (its GiB-for-GB reading, × TP KV copies, 90 % usable); an `ep` of
    the §3.1 table takes that table's redundant experts."""
    policy = policy or load_policy()
    if ep in EP_REDUNDANT:
        policy = replace(policy, decode_redundant_experts=EP_REDUNDANT[ep])
    weights, available = decode_memory(m, hw, policy, tp, 0, kv_len, output_len, ep, kv_dtype)
    per_request = decode_memory(m, hw, policy, tp, 1, kv_len, output_len, ep, kv_dtype)[0] - weights
    return (available - weights) / per_request
