"""The ``roofline`` timing policy: physical, per op, vectorized over layouts.

Each op costs ``max(FLOPs / (peak × compute efficiency), bytes / (bandwidth × memory
efficiency)) + a launch floor``; communication costs ``bytes / (link bandwidth × link
efficiency) + a latency floor``. Efficiencies and floors are data: the ``efficiency`` section
of each hardware profile, each with its source (calibrated on published kernel figures).

Layouts follow the serving systems (SGLang, DeepSeek): attention runs TP × DP over
``tp · dp`` devices, each attention DP rank holding ``batch`` sequences; the MoE runs
``moe_tp × ep`` over the same devices (``tp · dp = moe_tp · ep``). Every argument may be a
numpy array: the layout search evaluates millions of layouts in one call.

Decode reads, per step and device: the attention and dense weights of its TP shard, the
routed experts it holds that the step's tokens actually hit, the shared expert, and its
sequences' KV cache. MLA is absorbed at run time in decode and plain (causal) in prefill.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from .. import counts
from ..errors import InputError
from ..profiles import EFFICIENCY_FIELDS, Hardware, Model, Workload
from ..units import US, dtype_bytes

# ---------------------------------------------------------------- efficiency data


@dataclass(frozen=True)
class Efficiency:
    gemm: float
    grouped_gemm: float
    attention: float
    memory: float
    scale_up: float
    scale_out: float
    kernel_latency: float  # seconds
    all_reduce_latency: float
    dispatch_latency: float
    tbo_overhead: float
    sources: Mapping[str, str] = field(default_factory=dict)


def efficiency(hw: Hardware) -> Efficiency:
    """The roofline efficiencies of `hw`, or one error naming what its profile lacks."""
    missing = [name for name in EFFICIENCY_FIELDS if name not in (hw.efficiency or {})]
    if missing:
        raise InputError(f"{hw.path}: field 'efficiency.{missing[0]}': missing (the roofline policy needs it)")
    e = hw.efficiency
    value = {k: e[k]["value"] * (US if k.endswith("_us") else 1.0) for k in EFFICIENCY_FIELDS}
    return Efficiency(
        gemm=value["gemm"],
        grouped_gemm=value["grouped_gemm"],
        attention=value["attention"],
        memory=value["memory"],
        scale_up=value["scale_up"],
        scale_out=value["scale_out"],
        kernel_latency=value["kernel_latency_us"],
        all_reduce_latency=value["all_reduce_latency_us"],
        dispatch_latency=value["dispatch_latency_us"],
        tbo_overhead=value["tbo_overhead_us"],
        sources={k: e[k]["source"] for k in EFFICIENCY_FIELDS},
    )


# ---------------------------------------------------------------- one op on one device


@dataclass(frozen=True)
class Device:
    """What one device can do per second, after efficiencies (SI)."""

    gemm_flops: float  # weight-dtype GEMMs
    grouped_flops: float
    attention_flops: float
    memory_bandwidth: float
    scale_up_bandwidth: float
    scale_out_bandwidth: float
    scale_up_domain: int
    eff: Efficiency


def device(hw: Hardware, wl: Workload) -> Device:
    e = efficiency(hw)
    peak = hw.peak(wl.weight_dtype)
    return Device(
        gemm_flops=peak * e.gemm,
        grouped_flops=peak * e.grouped_gemm,
        attention_flops=hw.peak("bf16") * e.attention,
        memory_bandwidth=hw.memory_bandwidth * e.memory,
        scale_up_bandwidth=hw.scale_up_bandwidth * e.scale_up,
        scale_out_bandwidth=hw.scale_out_bandwidth * e.scale_out,
        scale_up_domain=hw.scale_up_domain,
        eff=e,
    )


def op_time(flops, nbytes, flop_rate: float, dev: Device):
    """Roofline time of one kernel: compute- or memory-bound, plus its launch floor."""
    return np.maximum(flops / flop_rate, nbytes / dev.memory_bandwidth) + dev.eff.kernel_latency


def gemm_time(tokens, n_in, n_out, w_bytes: float, a_bytes: float, dev: Device, flop_rate: float | None = None):
    """A tokens × n_in by n_in × n_out GEMM: reads the weight and the input, writes the output."""
    flops = 2.0 * tokens * n_in * n_out
    nbytes = n_in * n_out * w_bytes + tokens * (n_in + n_out) * a_bytes
    return op_time(flops, nbytes, flop_rate or dev.gemm_flops, dev)


# ---------------------------------------------------------------- communication


def all_reduce_time(tokens, hidden: int, tp, dev: Device):
    """Ring all-reduce of tokens × hidden BF16 across tp devices (0 at tp = 1).

    Each device sends and receives 2 (tp − 1) / tp of the message; inside a scale-up domain
    over the scale-up link, beyond it over the scale-out link."""
    tp = np.asarray(tp, dtype=float)
    message = tokens * hidden * dtype_bytes("bf16")
    bw = np.where(tp <= dev.scale_up_domain, dev.scale_up_bandwidth, dev.scale_out_bandwidth)
    t = 2.0 * (tp - 1.0) / tp * message / bw + dev.eff.all_reduce_latency
    return np.where(tp > 1, t, 0.0)


def remote_shares(ep, domain: int):
    """Shares of a token's expert copies that stay on the device, cross the scale-up domain
    (same node) and cross the scale-out network, with destinations uniform over ep ranks."""
    ep = np.asarray(ep, dtype=float)
    local_ranks = np.minimum(ep, domain)
    return 1.0 / ep, (local_ranks - 1.0) / ep, (ep - local_ranks) / ep


def a2a_time(nbytes, ep, moe_tp, dev: Device):
    """Dispatch or combine of `nbytes` (every copy of every token a device sends) across ep
    ranks: the NVLink and RDMA parts run in parallel; MoE-TP sends each copy to all moe_tp
    ranks of the expert's group. 0 when there is a single EP rank."""
    _, intra, inter = remote_shares(ep, dev.scale_up_domain)
    nbytes = nbytes * moe_tp
    t = np.maximum(nbytes * intra / dev.scale_up_bandwidth, nbytes * inter / dev.scale_out_bandwidth)
    return np.where(np.asarray(ep) > 1, t + dev.eff.dispatch_latency, 0.0)


def expected_experts_hit(m: Model, tokens, experts_per_device):
    """Expected distinct routed experts of one device that `tokens` tokens hit, each token
    choosing top-k of the experts uniformly (perfect balance: what EPLB aims at)."""
    miss = (1.0 - m.num_experts_per_tok / m.n_routed_experts) ** np.asarray(tokens, dtype=float)
    return experts_per_device * (1.0 - miss)


# ---------------------------------------------------------------- layouts


@dataclass(frozen=True)
class Layout:
    """Attention TP × DP and MoE TP × EP over the same devices; `batch` sequences per
    attention DP rank; `tbo` splits each step into two overlapped micro-batches."""

    tp: object = 1
    dp: object = 1
    moe_tp: object = 1
    ep: object = 1
    batch: object = 1
    tbo: object = False

    @property
    def devices(self):
        return np.asarray(self.tp) * np.asarray(self.dp)


def check_layout(m: Model, layout: Layout) -> None:
    """One error for the first thing wrong with a scalar layout."""
    tp, dp, moe_tp, ep = (int(v) for v in (layout.tp, layout.dp, layout.moe_tp, layout.ep))
    if min(tp, dp, moe_tp, ep, int(layout.batch)) < 1:
        raise InputError("tp, dp, moe-tp, ep and batch must all be positive")
    if tp * dp != moe_tp * ep:
        raise InputError(f"layout does not cover the same devices: tp × dp = {tp * dp} but moe-tp × ep = {moe_tp * ep}")
    if m.num_attention_heads % tp:
        raise InputError(f"TP {tp} does not divide the {m.num_attention_heads} attention heads of {m.name}")
    if ep > m.n_routed_experts:
        raise InputError(f"EP {ep} is larger than the {m.n_routed_experts} routed experts of {m.name}")
    if m.n_routed_experts % ep:
        raise InputError(f"EP {ep} does not divide the {m.n_routed_experts} routed experts of {m.name}")
    if m.moe_intermediate_size % moe_tp:
        raise InputError(f"MoE TP {moe_tp} does not divide the expert width {m.moe_intermediate_size}")


# ---------------------------------------------------------------- memory


def weight_bytes_per_device(m: Model, wl: Workload, layout: Layout):
    """Weights one device holds: MLA (down-projections replicated, the rest split by TP),
    dense MLPs split by TP, its routed experts (split by MoE-TP), shared experts and gate
    replicated, the embedding replicated and the LM head split by TP."""
    wb = dtype_bytes(wl.weight_dtype)
    tp = np.asarray(layout.tp, dtype=float)
    shapes = counts.mla_weight_shapes(m, "plain")
    replicated = sum(i * o for k, (i, o) in shapes.items() if k in ("wq_a", "wkv_a"))
    split = sum(i * o for k, (i, o) in shapes.items() if k not in ("wq_a", "wkv_a"))
    mla = m.num_hidden_layers * (replicated + split / tp)
    dense = m.n_dense_layers * counts.dense_mlp_params(m) / tp
    routed_here = m.n_routed_experts / np.asarray(layout.ep, dtype=float)
    moe = m.n_moe_layers * (
        routed_here * counts.expert_params(m) / np.asarray(layout.moe_tp, dtype=float)
        + m.n_shared_experts * counts.expert_params(m)
        + counts.gate_params(m)
    )
    embed = counts.embedding_params(m) * (1 + (0 if m.tie_word_embeddings else 1) / tp)
    return (mla + dense + moe + embed + counts.norm_params(m)) * wb


def kv_bytes_per_device(m: Model, wl: Workload, batch, kv_len):
    """KV cache of an attention DP rank's sequences; every TP rank holds all of it, since the
    MLA latent is shared by all heads."""
    return np.asarray(batch, dtype=float) * kv_len * counts.kv_bytes_per_token(m, dtype_bytes(wl.kv_dtype))


# ---------------------------------------------------------------- decode


@dataclass(frozen=True)
class DecodeStep:
    """One decode step: per-layer op times (seconds, arrays over layouts) and metrics."""

    dense_layer: Mapping[str, object]  # op → seconds, one dense layer, no overlap
    moe_layer: Mapping[str, object]  # op → seconds, one MoE layer, no overlap
    head: object  # LM head (and MTP module) once per step
    step_time: object  # seconds per step under the layout's schedule
    step_time_no_overlap: object
    tokens_per_step: object  # accepted tokens per sequence per step
    batch: object
    devices: object
    flops_per_device: object
    weight_bytes: object
    kv_bytes: object
    memory_capacity: float

    @property
    def tpot(self):
        return self.step_time / self.tokens_per_step

    @property
    def tokens_per_s_per_user(self):
        return self.tokens_per_step / self.step_time

    @property
    def memory_bytes(self):
        return self.weight_bytes + self.kv_bytes


COMM_OPS = ("all_reduce", "dispatch", "combine")


def decode(
    m: Model,
    hw: Hardware,
    wl: Workload,
    layout: Layout,
    kv_len,
    mtp_accept: float = 1.0,
    mtp_draft: int = 1,
) -> DecodeStep:
    """One decode step of `layout.batch` sequences per attention DP rank at KV length kv_len.

    With ``mtp_accept > 1`` each step verifies ``1 + mtp_draft`` tokens per sequence through
    the model (plus the MTP module once) and keeps ``mtp_accept`` of them on average."""
    dev = device(hw, wl)
    wb, ab, kvb = dtype_bytes(wl.weight_dtype), dtype_bytes(wl.activation_dtype), dtype_bytes(wl.kv_dtype)
    tp = np.asarray(layout.tp, dtype=float)
    dp = np.asarray(layout.dp, dtype=float)
    moe_tp = np.asarray(layout.moe_tp, dtype=float)
    ep = np.asarray(layout.ep, dtype=float)
    batch = np.asarray(layout.batch, dtype=float)
    tbo = np.asarray(layout.tbo, dtype=bool)
    per_seq = 1.0 + mtp_draft if mtp_accept > 1.0 else 1.0
    if mtp_accept > per_seq:
        raise InputError(f"MTP acceptance {mtp_accept} exceeds the {per_seq:g} tokens a step verifies")

    def layer(tokens, seqs):
        """Op times of one layer for `tokens` tokens of `seqs` sequences per attention DP rank."""
        h = m.num_attention_heads / tp
        d, kvl = m.hidden_size, m.kv_lora_rank
        attn = {
            "mla_proj": gemm_time(tokens, d, m.q_lora_rank, wb, ab, dev)
            + gemm_time(tokens, d, m.kv_cache_dim, wb, ab, dev)
            + gemm_time(tokens, m.q_lora_rank, h * m.qk_head_dim, wb, ab, dev)
            + gemm_time(tokens, h * m.qk_nope_head_dim, kvl, wb, ab, dev)  # q_nope · W_UK
            + gemm_time(tokens, h * kvl, m.v_head_dim, wb, ab, dev)  # latent · W_UV
            + gemm_time(tokens, h * m.v_head_dim, d, wb, ab, dev),  # wo
            "mla_core": op_time(
                2.0 * h * tokens * kv_len * (m.kv_cache_dim + kvl),
                seqs * kv_len * m.kv_cache_dim * kvb,
                dev.attention_flops,
                dev,
            ),
            "all_reduce": all_reduce_time(tokens, d, tp, dev),
        }
        return attn

    def moe_ops(tokens):
        """MoE ops on one device whose attention DP rank has `tokens` tokens."""
        local = tokens / tp  # tokens each device routes after the TP all-reduce
        total = tokens * dp  # tokens in the whole EP group this step
        experts_here = m.n_routed_experts / ep
        pairs = total * m.num_experts_per_tok / ep  # token-expert pairs per expert group
        hit = expected_experts_hit(m, total, experts_here)
        e_params = counts.expert_params(m)
        routed_flops = counts.expert_flops(m, pairs) / moe_tp
        routed_bytes = hit * e_params / moe_tp * wb + pairs * 2 * m.hidden_size * ab
        copies = local * m.num_experts_per_tok
        return {
            "gate": gemm_time(local, m.hidden_size, m.n_routed_experts, 4.0, ab, dev),  # router runs in FP32
            "shared_expert": op_time(
                counts.expert_flops(m, local * m.n_shared_experts),
                m.n_shared_experts * e_params * wb + local * 2 * m.hidden_size * ab,
                dev.gemm_flops,
                dev,
            ) + dev.eff.kernel_latency,  # two GEMM launches (gate-up, down)
            "routed_experts": op_time(routed_flops, routed_bytes, dev.grouped_flops, dev) + dev.eff.kernel_latency,
            "dispatch": a2a_time(counts.dispatch_bytes(m, local, dtype_bytes(wl.dispatch_dtype)), ep, moe_tp, dev),
            "combine": a2a_time(counts.combine_bytes(m, local, dtype_bytes(wl.combine_dtype)), ep, moe_tp, dev),
        }

    def dense_ops(tokens):
        return {
            "dense_mlp": gemm_time(tokens, m.hidden_size, 2 * m.intermediate_size / tp, wb, ab, dev)
            + gemm_time(tokens, m.intermediate_size / tp, m.hidden_size, wb, ab, dev),
            "all_reduce_mlp": all_reduce_time(tokens, m.hidden_size, tp, dev),
        }

    def step(tokens, seqs):
        """(dense layer ops, MoE layer ops, head time) for one (micro-)batch."""
        attn = layer(tokens, seqs)
        dense = {**attn, **dense_ops(tokens)}
        moe = {**attn, **moe_ops(tokens)}
        head = gemm_time(tokens, m.hidden_size, m.vocab_size / tp, wb, ab, dev)
        if per_seq > 1:  # the MTP module: one more MoE layer and the head, once per step
            head = head + sum(moe.values()) + gemm_time(tokens, 2 * m.hidden_size, m.hidden_size, wb, ab, dev)
        return dense, moe, head

    tokens = batch * per_seq
    dense, moe, head = step(tokens, batch)
    nd, nm = m.n_dense_layers, m.n_moe_layers
    serial = nd * sum(dense.values()) + nm * sum(moe.values()) + head

    # Two-batch overlap: two micro-batches of half the sequences; while one computes, the
    # other communicates. Each micro-batch re-reads the weights, which is why TBO loses at
    # small batch. Per layer: 2 × max(compute, communication) of a micro-batch + overhead.
    d2, m2, h2 = step(tokens / 2, batch / 2)

    def overlapped(ops):
        comm = sum(v for k, v in ops.items() if k in COMM_OPS or k == "all_reduce_mlp")
        comp = sum(v for k, v in ops.items() if not (k in COMM_OPS or k == "all_reduce_mlp"))
        return 2.0 * np.maximum(comp, comm) + dev.eff.tbo_overhead

    tbo_time = nd * overlapped(d2) + nm * overlapped(m2) + 2.0 * h2
    step_time = np.where(tbo, tbo_time, serial)

    # FLOPs the step needs per device (for MFU): wkv_a runs on the new tokens only.
    mla = counts.mla_flops(m, tokens, kv_len, 1.0, "absorbed") + 2.0 * tokens * m.hidden_size * m.kv_cache_dim
    moe_ffn = counts.expert_flops(m, tokens * (m.num_experts_per_tok + m.n_shared_experts))
    flops = (nm * (mla + moe_ffn) + nd * (mla + counts.dense_mlp_flops(m, tokens)) + counts.lm_head_flops(m, tokens)) / tp
    return DecodeStep(
        dense_layer=dense,
        moe_layer=moe,
        head=head,
        step_time=step_time,
        step_time_no_overlap=serial,
        tokens_per_step=mtp_accept if per_seq > 1 else 1.0,
        batch=batch,
        devices=tp * dp,
        flops_per_device=flops,
        weight_bytes=weight_bytes_per_device(m, wl, layout),
        kv_bytes=kv_bytes_per_device(m, wl, batch, kv_len),
        memory_capacity=hw.memory_bytes,
    )


def tokens_per_s_per_device(step: DecodeStep, layout: Layout):
    """Output tokens per second per device: each attention DP rank (tp devices) emits
    batch × accepted tokens per step."""
    return step.batch * step.tokens_per_step / step.step_time / np.asarray(layout.tp, dtype=float)


def mfu(step: DecodeStep, hw: Hardware, wl: Workload):
    """Model FLOPs utilization of the weight dtype's peak."""
    return step.flops_per_device / step.step_time / hw.peak(wl.weight_dtype)
