"""The ``roofline`` timing policy: physical, per op, vectorized over layouts.

Every kernel costs

    t = max(FLOPs / (peak × compute efficiency), bytes / (HBM bandwidth × memory efficiency))
        + kernel floor,

with the GEMM rows padded up to the tensor-core tile (``mma_tile_rows``); every transfer
costs ``bytes / (link bandwidth × link efficiency) + a latency floor``. Efficiencies and
floors are data: the ``efficiency`` section of each hardware profile, each with its source,
calibrated on published kernel measurements (``params/measurements/kernels.yaml``, checked
by :mod:`moecalc.calibrate`). Effects the kernel data cannot pin (expert-load imbalance,
redundant experts, MTP acceptance) are explicit keyword arguments, never constants.

Layouts follow the serving systems (SGLang, DeepSeek): attention runs TP × DP over
``tp · dp`` devices, each attention DP rank holding ``batch`` sequences; the MoE runs
``moe_tp × ep`` over the same devices (``tp · dp = moe_tp · ep``). Every argument may be a
numpy array: the layout search evaluates millions of layouts in one call.

Decode reads, per step and device: the attention and dense weights of its TP shard, the
routed experts it holds that the step's tokens actually hit (expected distinct experts),
the shared expert, and its sequences' KV cache. MLA is absorbed at run time in decode
(FlashMLA) and plain, causal, in prefill. Decode dispatch/combine are DeepEP low-latency
kernels (one message per expert copy, NVLink inside a node and RDMA across); prefill uses
DeepEP normal kernels (node-limited routing: RDMA once per target node, then NVLink).

Schedules: nothing overlapped, or two-batch overlap (TBO, :mod:`moecalc.schedule`): two
micro-batches of half the sequences; one's attention runs under the other's combine, its
experts under the other's dispatch. Each micro-batch re-reads the weights and pays every
kernel floor again, which is why TBO loses at small batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Mapping

import numpy as np

from .. import counts, schedule
from ..errors import InputError
from ..profiles import EFFICIENCY_FIELDS, EFFICIENCY_OPTIONAL, Hardware, Model, Workload
from ..units import US, dtype_bytes

# ---------------------------------------------------------------- efficiency data


@dataclass(frozen=True)
class Efficiency:
    """A hardware profile's ``efficiency`` section in SI (fractions, seconds, counts)."""

    gemm: float
    grouped_gemm: float
    attention: float
    attention_prefill: float
    memory: float
    scale_up: float
    scale_out: float
    kernel_latency: float  # seconds
    all_reduce_latency: float
    dispatch_latency: float
    tbo_overhead: float
    comm_sms: int
    mma_tile_rows: int
    usable_memory: float
    compute_memory_overlap: float = 1.0  # 1: a kernel takes max(compute, memory); 0: their sum
    sources: Mapping[str, str] = field(default_factory=dict)


# What an optional entry means when a profile leaves it out (see profiles.EFFICIENCY_OPTIONAL).
# `compute_memory_overlap` is no hardware-profile field but a policy's opinion: the roofline's
# is 1 (a kernel takes the longer of its compute and memory time); seed002 passes 0 (added).
_ABSENT = {"comm_sms": 0, "mma_tile_rows": 1, "usable_memory": 1.0, "compute_memory_overlap": 1.0}


def efficiency(hw: Hardware) -> Efficiency:
    """The roofline efficiencies of `hw`, or one error naming what its profile lacks."""
    e = hw.efficiency or {}
    missing = [n for n in EFFICIENCY_FIELDS if n not in EFFICIENCY_OPTIONAL and not e.get(n)]
    if missing:
        raise InputError(f"{hw.path}: field 'efficiency.{missing[0]}': missing (the roofline policy needs it)")

    def value(name: str):
        entry = e.get(name)
        if entry is None:
            return e["attention"]["value"] if name == "attention_prefill" else _ABSENT[name]
        return entry["value"] * (US if name.endswith("_us") else 1.0)

    return Efficiency(
        gemm=value("gemm"),
        grouped_gemm=value("grouped_gemm"),
        attention=value("attention"),
        attention_prefill=value("attention_prefill"),
        memory=value("memory"),
        scale_up=value("scale_up"),
        scale_out=value("scale_out"),
        kernel_latency=value("kernel_latency_us"),
        all_reduce_latency=value("all_reduce_latency_us"),
        dispatch_latency=value("dispatch_latency_us"),
        tbo_overhead=value("tbo_overhead_us"),
        comm_sms=int(value("comm_sms")),
        mma_tile_rows=int(value("mma_tile_rows")),
        usable_memory=value("usable_memory"),
        compute_memory_overlap=value("compute_memory_overlap"),
        sources={k: v["source"] for k, v in e.items() if v},
    )


# ---------------------------------------------------------------- one device


@dataclass(frozen=True)
class Device:
    """What one device does per second after efficiencies (SI), and its floors."""

    gemm_flops: float  # weight-dtype GEMMs
    grouped_flops: float  # MoE grouped GEMMs
    attention_flops: float  # decode attention core (BF16)
    prefill_attention_flops: float  # prefill attention core (BF16)
    memory_bandwidth: float
    scale_up_bandwidth: float
    scale_out_bandwidth: float
    scale_up_domain: int
    compute_units: int
    eff: Efficiency

    def slowed(self, share: float) -> "Device":
        """The device with only `share` of its SMs computing (the rest run communication)."""
        return Device(
            gemm_flops=self.gemm_flops * share,
            grouped_flops=self.grouped_flops * share,
            attention_flops=self.attention_flops * share,
            prefill_attention_flops=self.prefill_attention_flops * share,
            memory_bandwidth=self.memory_bandwidth * share,
            scale_up_bandwidth=self.scale_up_bandwidth,
            scale_out_bandwidth=self.scale_out_bandwidth,
            scale_up_domain=self.scale_up_domain,
            compute_units=self.compute_units,
            eff=self.eff,
        )


def device(hw: Hardware, wl: Workload | None = None, weight_dtype: str | None = None) -> Device:
    """`hw` after its efficiencies, computing GEMMs at the peak of the weight dtype."""
    e = efficiency(hw)
    peak = hw.peak(weight_dtype or (wl.weight_dtype if wl is not None else "fp8"))
    bf16 = hw.peak("bf16")
    return Device(
        gemm_flops=peak * e.gemm,
        grouped_flops=peak * e.grouped_gemm,
        attention_flops=bf16 * e.attention,
        prefill_attention_flops=bf16 * e.attention_prefill,
        memory_bandwidth=hw.memory_bandwidth * e.memory,
        scale_up_bandwidth=hw.scale_up_bandwidth * e.scale_up,
        scale_out_bandwidth=hw.scale_out_bandwidth * e.scale_out,
        scale_up_domain=hw.scale_up_domain,
        compute_units=hw.compute_units,
        eff=e,
    )


# FP8 tensors travel and multiply with one FP32 scale per 128 elements (DeepSeek-V3's
# fine-grained quantization, as DeepGEMM and DeepEP take them): 1 + 4/128 bytes per element.
FP8_SCALE_GROUP = 128
FP32_BYTES = dtype_bytes("fp32")


def wire_bytes(dtype: str) -> float:
    """Bytes per element of a tensor of `dtype` as kernels move it, scales included."""
    b = dtype_bytes(dtype)
    return b + FP32_BYTES / FP8_SCALE_GROUP if b == 1.0 else b


def gemm_input_bytes(weight_dtype: str, activation_dtype: str) -> float:
    """Bytes per element of a GEMM's input activations: quantized to the weights' 8-bit (or
    narrower) format when the weights are (DeepGEMM multiplies FP8 by FP8), else unchanged."""
    return wire_bytes("fp8") if dtype_bytes(weight_dtype) <= 1.0 else dtype_bytes(activation_dtype)


def op_time(flops, nbytes, flop_rate: float, dev: Device, write_bytes=0.0):
    """Roofline time of one kernel: compute- or memory-bound, plus its floor (with a policy's
    ``compute_memory_overlap`` below 1, that share of the shorter time is not hidden). `write_bytes`
    are written after the main loop (a GEMM's output tile leaves once its sum is done), so
    they add to the time instead of overlapping it."""
    compute, memory = np.divide(flops, flop_rate), np.divide(nbytes, dev.memory_bandwidth)
    t = np.maximum(compute, memory)
    if dev.eff.compute_memory_overlap < 1.0:  # the part of the shorter one not hidden adds (DS_TPU §7.3's form)
        t = t + (1.0 - dev.eff.compute_memory_overlap) * np.minimum(compute, memory)
    if np.ndim(write_bytes) or write_bytes:
        w = np.divide(write_bytes, dev.memory_bandwidth)
        t = np.add(t, w, out=t) if isinstance(t, np.ndarray) and t.shape == np.shape(w) else t + w
    return np.add(t, dev.eff.kernel_latency, out=t) if isinstance(t, np.ndarray) else t + dev.eff.kernel_latency


def padded_rows(rows, tile: int):
    """Rows a tensor-core GEMM computes for `rows` rows of input: up to a multiple of the tile."""
    rows = np.asarray(rows, dtype=float)
    return np.ceil(rows / tile) * tile if tile > 1 else rows


def gemm_time(rows, n_in, n_out, w_bytes: float, in_bytes: float, out_bytes: float, dev: Device,
              flop_rate: float | None = None, groups=1.0):
    """`groups` GEMMs (experts) of `rows` × n_in by n_in × n_out each: the main loop reads
    every weight and input once (FLOPs on the rows padded to the tensor-core tile), then the
    output is written (not overlapped: DeepGEMM's K = 512 shapes show it)."""
    flops = (2.0 * n_in * n_out) * groups * padded_rows(rows, dev.eff.mma_tile_rows)
    nbytes = groups * (n_in * n_out * w_bytes + rows * (n_in * in_bytes))
    return op_time(flops, nbytes, flop_rate or dev.gemm_flops, dev, groups * rows * (n_out * out_bytes))


def elementwise_time(nbytes, dev: Device):
    """A memory-bound kernel (norm, activation, quantization, RoPE, top-k): bytes + floor."""
    return nbytes / dev.memory_bandwidth + dev.eff.kernel_latency


def mla_decode_time(seqs, q_per_seq, kv_len, heads, m: Model, kv_bytes: float, act_bytes: float, dev: Device):
    """FlashMLA-style absorbed attention: per sequence, heads × q_per_seq query rows (padded
    to the tile) over kv_len cached latents of kv_cache_dim; FLOPs as FlashMLA counts them,
    2 · rows · kv_len · (kv_cache_dim + kv_lora_rank); bytes: the KV cache once, q and o."""
    rows = heads * q_per_seq
    flops = 2.0 * seqs * padded_rows(rows, dev.eff.mma_tile_rows) * kv_len * (m.kv_cache_dim + m.kv_lora_rank)
    nbytes = seqs * (kv_len * m.kv_cache_dim * kv_bytes + rows * (m.kv_cache_dim + m.kv_lora_rank) * act_bytes)
    return op_time(flops, nbytes, dev.attention_flops, dev)


def attention_prefill_time(pairs, tokens, kv_tokens, heads, qk_dim: int, v_dim: int, act_bytes: float, dev: Device):
    """Plain (non-absorbed) causal attention: `pairs` (query, key) pairs per head, each
    2 · (qk_dim + v_dim) FLOPs; q and k (qk_dim), v and o (v_dim) read or written once."""
    flops = 2.0 * heads * pairs * (qk_dim + v_dim)
    nbytes = heads * act_bytes * (tokens + kv_tokens) * (qk_dim + v_dim)
    return op_time(flops, nbytes, dev.prefill_attention_flops, dev)


# ---------------------------------------------------------------- communication


def all_reduce_time(tokens, hidden: int, tp, dev: Device, bytes_per_element: float = 2.0):
    """Ring all-reduce of tokens × hidden across tp devices (0 at tp = 1): each device sends
    and receives 2 (tp − 1) / tp of the message, inside a scale-up domain over the scale-up
    link, beyond it over the scale-out link."""
    tp = np.asarray(tp, dtype=float)
    message = tokens * hidden * bytes_per_element
    bw = np.where(tp <= dev.scale_up_domain, dev.scale_up_bandwidth, dev.scale_out_bandwidth)
    t = 2.0 * (tp - 1.0) / tp * message / bw + dev.eff.all_reduce_latency
    return np.where(tp > 1, t, 0.0)


def remote_shares(ranks, domain: int):
    """Shares of messages to `ranks` uniformly chosen devices that stay on the device, cross
    the scale-up domain (same node) and cross the scale-out network."""
    ranks = np.asarray(ranks, dtype=float)
    local_ranks = np.minimum(ranks, domain)
    return 1.0 / ranks, (local_ranks - 1.0) / ranks, (ranks - local_ranks) / ranks


def low_latency_a2a_time(nbytes, ranks, dev: Device):
    """DeepEP low-latency dispatch or combine: `nbytes` (every expert copy of every token a
    device sends, or receives back) spread uniformly over `ranks` devices; the NVLink and
    RDMA parts run at once, plus the kernel's latency floor. 0 when there is one rank."""
    _, intra, inter = remote_shares(ranks, dev.scale_up_domain)
    t = np.maximum(nbytes * intra / dev.scale_up_bandwidth, nbytes * inter / dev.scale_out_bandwidth)
    return np.where(np.asarray(ranks) > 1, t + dev.eff.dispatch_latency, 0.0)


def _comb_ratio(pool: float, avoid: float, k: int) -> float:
    """P(k draws without replacement from `pool` items all miss `avoid` given items)."""
    p = 1.0
    for i in range(k):
        p *= max(pool - avoid - i, 0.0) / (pool - i)
    return p


def _units_hit(n_experts: int, topk: int, n_group: int, topk_group: int, units: int) -> float:
    """Expected units hit by one token's top-k experts, with experts split evenly over
    `units` (ranks or nodes) and node-limited routing: topk_group of n_group groups are picked
    (uniformly), each for its best expert, so each picked group holds at least that one
    (its "anchor", anywhere in the group); the other k − topk_group experts are uniform over
    the rest of the picked groups. This matches a simulation of DeepSeek-V3's routing on
    random scores (tests/test_roofline.py). When every group is picked, picking says nothing:
    the k experts are then uniform over all of them."""
    per_group = n_experts / n_group
    if topk_group >= n_group:
        return units * (1.0 - _comb_ratio(n_experts, n_experts / units, topk))
    if units <= n_group:  # a unit holds whole groups: it is hit when one of them is picked
        g = n_group // units
        return units * (1.0 - math.comb(n_group - g, topk_group) / math.comb(n_group, topk_group))
    # a group spans r units: the unit is hit if its group is picked and the anchor or an extra lands in it
    r = units / n_group
    extra_miss = _comb_ratio(topk_group * per_group - topk_group, n_experts / units, topk - topk_group)
    return units * topk_group / n_group * (1.0 - (1.0 - 1.0 / r) * extra_miss)


def expected_units_hit(n_experts: int, topk: int, n_group: int, topk_group: int, units):
    """Vectorized :func:`_units_hit` (exact combinatorics, once per distinct unit count)."""
    u = np.asarray(units)
    values, inverse = np.unique(u, return_inverse=True)
    hit = np.array([_units_hit(n_experts, topk, n_group, topk_group, int(v)) for v in values.ravel()])
    return hit[inverse].reshape(u.shape) if u.ndim else float(hit[0])


def normal_a2a_time(tokens, bytes_per_token: float, ep, m: Model, dev: Device, imbalance=1.0,
                    n_group: int | None = None, topk_group: int | None = None):
    """DeepEP normal (prefill) dispatch or combine of `tokens` tokens a device holds over ep
    ranks, with node-limited routing: each token crosses RDMA once per remote node it hits,
    then NVLink to each further rank it hits there (or directly inside its own node)."""
    ep = np.asarray(ep)
    domain = dev.scale_up_domain
    nodes = np.maximum(ep // domain, 1)
    ranks_per_node = np.minimum(ep, domain)
    g = m.n_group if n_group is None else n_group
    tg = m.topk_group if topk_group is None else topk_group
    k, e = m.num_experts_per_tok, m.n_routed_experts
    nodes_hit = expected_units_hit(e, k, g, tg, nodes)
    ranks_hit = expected_units_hit(e, k, g, tg, ep)
    # the token's own node is hit with probability nodes_hit / nodes (nodes are alike)
    rdma = tokens * nodes_hit * (1.0 - 1.0 / nodes) * bytes_per_token
    # every rank hit is one NVLink hop, except the one the message lands on (or starts from)
    nvl = tokens * ranks_hit * (1.0 - 1.0 / ranks_per_node) * bytes_per_token
    t = np.maximum(rdma / dev.scale_out_bandwidth, nvl / dev.scale_up_bandwidth) * imbalance
    return np.where(ep > 1, t + dev.eff.dispatch_latency, 0.0)


def expected_experts_hit(m: Model, tokens, experts_per_device):
    """Expected distinct routed experts of one device that `tokens` tokens hit, each token
    choosing top-k of the experts uniformly (perfect balance: what EPLB aims at). Exact by
    linearity: each expert is missed by a token with probability 1 − k/E."""
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


def check_layout(m: Model, layout: Layout, redundant_experts: int = 0) -> None:
    """One error for the first thing wrong with a scalar layout."""
    values = [layout.tp, layout.dp, layout.moe_tp, layout.ep, layout.batch]
    if any(np.ndim(v) for v in values):
        raise InputError("check_layout takes one layout (scalars), not arrays")
    if any(not float(v).is_integer() for v in values):
        raise InputError("tp, dp, moe-tp, ep and batch must be whole numbers")
    tp, dp, moe_tp, ep, batch = (int(v) for v in values)
    if min(tp, dp, moe_tp, ep, batch) < 1:
        raise InputError("tp, dp, moe-tp, ep and batch must all be positive")
    if tp * dp != moe_tp * ep:
        raise InputError(f"layout does not cover the same devices: tp × dp = {tp * dp} but moe-tp × ep = {moe_tp * ep}")
    if m.num_attention_heads % tp:
        raise InputError(f"TP {tp} does not divide the {m.num_attention_heads} attention heads of {m.name}")
    slots = m.n_routed_experts + redundant_experts
    if ep > slots:
        raise InputError(f"EP {ep} is larger than the {slots} routed expert copies of {m.name}"
                         + (f" ({m.n_routed_experts} + {redundant_experts} redundant)" if redundant_experts else ""))
    if slots % ep:
        raise InputError(f"EP {ep} does not divide the {slots} routed expert copies of {m.name}")
    if m.moe_intermediate_size % moe_tp:
        raise InputError(f"MoE TP {moe_tp} does not divide the expert width {m.moe_intermediate_size}")


# ---------------------------------------------------------------- memory


def weight_bytes_per_device(m: Model, wl: Workload, layout: Layout, redundant_experts: int = 0, mtp: bool = False):
    """Weights one device holds. The FP8 checkpoint quantizes the attention, dense-MLP and
    expert matrices (`weight_dtype`); embedding, LM head, router and norms stay in the
    activation dtype. MLA down-projections are replicated, the rest split by TP; dense MLPs
    split by TP; routed experts ((E + redundant) / ep copies per EP rank) split by MoE-TP;
    shared experts and router replicated; the embedding replicated, the LM head split by TP.
    With MTP, one more MoE layer and its 2·hidden → hidden projection."""
    wb, ab = dtype_bytes(wl.weight_dtype), dtype_bytes(wl.activation_dtype)
    tp = np.asarray(layout.tp, dtype=float)
    shapes = counts.mla_weight_shapes(m, "plain")
    replicated = sum(i * o for k, (i, o) in shapes.items() if k in ("wq_a", "wkv_a"))
    split = sum(i * o for k, (i, o) in shapes.items() if k not in ("wq_a", "wkv_a"))
    mla_layer = replicated + split / tp
    experts_here = (m.n_routed_experts + redundant_experts) / np.asarray(layout.ep, dtype=float)
    moe_layer = (experts_here / np.asarray(layout.moe_tp, dtype=float) + m.n_shared_experts) * counts.expert_params(m)
    extra = m.num_nextn_predict_layers if mtp else 0
    quantized = ((m.num_hidden_layers + extra) * mla_layer + m.n_dense_layers * counts.dense_mlp_params(m) / tp
                 + (m.n_moe_layers + extra) * moe_layer + extra * 2 * m.hidden_size * m.hidden_size)
    head = 0 if m.tie_word_embeddings else 1
    plain = (counts.embedding_params(m) * (1 + head / tp) + (m.n_moe_layers + extra) * counts.gate_params(m)
             + counts.norm_params(m))
    return quantized * wb + plain * ab


def kv_bytes_per_device(m: Model, wl: Workload, batch, kv_len, mtp: bool = False):
    """KV cache of an attention DP rank's sequences; every TP rank holds all of it, since the
    MLA latent is shared by all heads. No quantization scales (see counts.kv_bytes_per_token)."""
    layers = m.num_hidden_layers + (m.num_nextn_predict_layers if mtp else 0)
    per_token = counts.kv_bytes_per_token(m, dtype_bytes(wl.kv_dtype), layers=layers)
    return np.asarray(batch, dtype=float) * kv_len * per_token


def max_batch(m: Model, hw: Hardware, wl: Workload, layout: Layout, kv_len, redundant_experts: int = 0,
              mtp: bool = False, kv_bytes_per_token=None, memory_cap=None):
    """Largest whole number of sequences per attention-DP rank whose KV cache fits beside the
    weights on one device: floor((usable − weights) / (kv_len × KV bytes per token)), 0 when
    the weights alone leave no room. The inverse of ``DecodeStep.fits``: usable memory is the
    profile's ``usable_memory`` share of its capacity (or `memory_cap` bytes if smaller, e.g.
    a workload's cap); weights as :func:`weight_bytes_per_device`. Every TP rank of a group
    holds the whole group's cache, so a device holds ``max_batch`` sequences' KV and serves
    ``max_batch / tp`` of them. `kv_bytes_per_token` (all layers, MTP's included if any)
    overrides the workload's KV dtype, e.g. for an FP8 cache with its scales
    (:func:`moecalc.counts.kv_format_bytes_per_token`). Arrays broadcast over layouts."""
    usable = hw.memory_bytes * efficiency(hw).usable_memory
    if memory_cap is not None:
        usable = min(usable, float(memory_cap))
    free = usable - weight_bytes_per_device(m, wl, layout, redundant_experts, mtp)
    per_seq = (kv_bytes_per_device(m, wl, 1.0, kv_len, mtp) if kv_bytes_per_token is None
               else np.asarray(kv_len, dtype=float) * kv_bytes_per_token)
    return np.maximum(np.floor(free / per_seq), 0.0)


# ---------------------------------------------------------------- layer ops


# Op names, in the order a layer runs them.
ATTENTION_PREP = ("attn_norm", "qkv_a_proj", "q_b_proj", "kv_b_proj", "q_absorb", "rope_cache")
ATTENTION_CORE = ("attention", "o_absorb", "o_proj")
MOE_GATE = ("moe_norm", "gate")
DENSE_OPS = ("mlp_norm", "dense_mlp")
COMM_OPS = ("all_reduce", "dispatch", "combine", "all_reduce_mlp")

# Two-batch-overlap schedules: stages of (compute of one micro-batch, communication of the
# other in flight meanwhile). Every micro-batch runs every stage, so a layer of two
# micro-batches takes twice the sum over stages of max(compute, communication).
#
# Decode, DeepSeek's five-stage design as SGLang implements it ("deepseek blog decode":
# attention split in two, dispatch and combine each split into send and receive, the second
# micro-batch two stages behind): a micro-batch's dispatch flies while it computes its shared
# expert and the other prepares its attention; its combine flies while the other runs
# attention proper, the output projection and the router; its routed experts overlap nothing.
DECODE_STAGES: tuple[schedule.Stage, ...] = (
    (("shared_expert",) + ATTENTION_PREP, ("dispatch",)),
    (ATTENTION_CORE + MOE_GATE, ("combine", "all_reduce")),
    (("routed_experts", "a2a_kernels"), ()),
)
# Prefill (DeepSeek's prefill profile, SGLang's prefill order): attention and the router run
# under the other micro-batch's combine, the experts under its dispatch.
PREFILL_STAGES: tuple[schedule.Stage, ...] = (
    (ATTENTION_PREP + ATTENTION_CORE + MOE_GATE, ("combine", "all_reduce")),
    (("shared_expert", "routed_experts"), ("dispatch",)),
)
# Dense layers have no all-to-all: only a TP all-reduce can overlap.
DENSE_STAGES: tuple[schedule.Stage, ...] = (
    (ATTENTION_PREP + ATTENTION_CORE + DENSE_OPS, ("all_reduce", "all_reduce_mlp")),
)


def tbo_layer_time(half_ops: Mapping[str, object], stages, overhead: float):
    """A layer of two micro-batches overlapped (`half_ops`: one micro-batch's op times)."""
    present = [(tuple(o for o in comp if o in half_ops), tuple(o for o in comm if o in half_ops))
               for comp, comm in stages]
    return 2.0 * schedule.two_batch_overlap(half_ops, present).time + overhead


@dataclass(frozen=True)
class _Ctx:
    """What every layer op of one call needs (arrays broadcast over layouts)."""

    m: Model
    dev: Device
    wb: float  # weight bytes per element
    xb: float  # GEMM input activation bytes per element
    ab: float  # activation bytes per element
    kvb: float
    dispatch_bytes: float
    combine_bytes: float
    tp: object
    dp: object
    moe_tp: object
    ep: object
    imbalance: object
    slots: object  # routed expert copies per EP rank


def _gemm(c: _Ctx, rows, n_in, n_out, flop_rate=None, groups=1.0, w_bytes=None):
    return gemm_time(rows, n_in, n_out, c.wb if w_bytes is None else w_bytes, c.xb, c.ab, c.dev, flop_rate, groups)


def _norm(c: _Ctx, tokens, width):
    """Fused residual add + RMSNorm + quantization: read x and residual, write both."""
    return elementwise_time(tokens * width * (3.0 * c.ab + c.xb), c.dev)


def _swiglu(c: _Ctx, rows, width, groups=1.0):
    """SiLU(gate) · up, quantized for the down projection: read 2·width, write width."""
    return elementwise_time(groups * rows * width * (2.0 * c.ab + c.xb), c.dev)


def _mlp(c: _Ctx, rows, hidden, width, flop_rate=None, groups=1.0):
    """gate-up GEMM, SwiGLU, down GEMM (three kernels)."""
    return (_gemm(c, rows, hidden, 2 * width, flop_rate, groups) + _swiglu(c, rows, width, groups)
            + _gemm(c, rows, width, hidden, flop_rate, groups))


def _attention_decode(c: _Ctx, tokens, seqs, q_per_seq, kv_len):
    """Absorbed MLA for `tokens` = seqs × q_per_seq new tokens on one TP rank."""
    m = c.m
    h = m.num_attention_heads / c.tp
    bf16 = dtype_bytes("bf16")
    return {
        "attn_norm": _norm(c, tokens, m.hidden_size),
        "qkv_a_proj": _gemm(c, tokens, m.hidden_size, m.q_lora_rank + m.kv_cache_dim),  # wq_a and wkv_a fused
        "q_b_proj": _gemm(c, tokens, m.q_lora_rank, h * m.qk_head_dim),
        # q_nope · W_UK and latent · W_UV per head, batched GEMMs on BF16 copies of wkv_b
        "q_absorb": _gemm(c, tokens, h * m.qk_nope_head_dim, m.kv_lora_rank, c.dev.attention_flops, w_bytes=bf16),
        "rope_cache": elementwise_time(tokens * (m.q_lora_rank + m.kv_cache_dim) * 2 * c.ab
                                       + tokens * m.kv_cache_dim * c.kvb, c.dev),
        "attention": mla_decode_time(seqs, q_per_seq, kv_len, h, m, c.kvb, c.ab, c.dev),
        "o_absorb": _gemm(c, tokens, h * m.kv_lora_rank, m.v_head_dim, c.dev.attention_flops, w_bytes=bf16),
        "o_proj": _gemm(c, tokens, h * m.v_head_dim, m.hidden_size),
        "all_reduce": all_reduce_time(tokens, m.hidden_size, c.tp, c.dev, c.ab),
    }


def _attention_prefill(c: _Ctx, tokens, seqs, q_len, kv_len):
    """Plain causal MLA for `seqs` sequences of q_len new tokens over kv_len keys (the
    cached prefix plus the new tokens) on one TP rank: K and V up-projected for every key."""
    m = c.m
    h = m.num_attention_heads / c.tp
    kv_tokens = seqs * kv_len
    pairs = seqs * counts.attention_pairs(q_len, kv_len, causal=True)
    return {
        "attn_norm": _norm(c, tokens, m.hidden_size),
        "qkv_a_proj": _gemm(c, tokens, m.hidden_size, m.q_lora_rank + m.kv_cache_dim),
        "q_b_proj": _gemm(c, tokens, m.q_lora_rank, h * m.qk_head_dim),
        "kv_b_proj": _gemm(c, kv_tokens, m.kv_lora_rank, h * (m.qk_nope_head_dim + m.v_head_dim)),
        "rope_cache": elementwise_time(tokens * (m.q_lora_rank + m.kv_cache_dim) * 2 * c.ab
                                       + tokens * m.kv_cache_dim * c.kvb, c.dev),
        "attention": attention_prefill_time(pairs, tokens, kv_tokens, h, m.qk_head_dim, m.v_head_dim, c.ab, c.dev),
        "o_proj": _gemm(c, tokens, h * m.v_head_dim, m.hidden_size),
        "all_reduce": all_reduce_time(tokens, m.hidden_size, c.tp, c.dev, c.ab),
    }


def _moe(c: _Ctx, tokens, phase: str):
    """MoE ops on one device whose attention DP rank holds `tokens` tokens: the TP ranks
    split them, route top-k, and the EP group's tokens meet at their experts."""
    m = c.m
    local = tokens / c.tp  # tokens each device routes (reduce-scatter after TP attention)
    total = tokens * c.dp  # tokens in the whole EP group
    pairs = total * m.num_experts_per_tok / c.ep * c.imbalance  # token-expert pairs on the busiest EP rank
    hit = np.maximum(expected_experts_hit(m, total, c.slots), 1e-9)
    width = m.moe_intermediate_size / c.moe_tp
    ops = {
        "moe_norm": _norm(c, local, m.hidden_size),
        "gate": _gemm(c, local, m.hidden_size, m.n_routed_experts, w_bytes=c.ab)
        + elementwise_time(local * m.n_routed_experts * FP32_BYTES, c.dev),  # router GEMM + top-k
        "shared_expert": _mlp(c, local, m.hidden_size, m.moe_intermediate_size * m.n_shared_experts),
        "routed_experts": _mlp(c, pairs / hit, m.hidden_size, width, c.dev.grouped_flops, hit),
    }
    copies = local * m.num_experts_per_tok
    if phase == "decode":  # low-latency kernels: one message per expert copy
        ranks = c.ep * c.moe_tp
        # their send and receive halves run on the compute stream (the transfer in between
        # does not): dispatch packs each copy (FP8 cast), combine sends the expert outputs back
        # and reduces each token's top-k returns; four kernels, each with its floor
        ops["a2a_kernels"] = (
            elementwise_time(local * m.hidden_size * c.ab + copies * m.hidden_size * c.dispatch_bytes, c.dev)
            + elementwise_time(pairs * m.hidden_size * c.dispatch_bytes, c.dev)
            + elementwise_time(pairs * m.hidden_size * c.combine_bytes, c.dev)
            + elementwise_time(copies * m.hidden_size * c.combine_bytes + local * m.hidden_size * c.ab, c.dev))
        ops["dispatch"] = low_latency_a2a_time(copies * m.hidden_size * c.dispatch_bytes * c.moe_tp * c.imbalance,
                                               ranks, c.dev)
        ops["combine"] = low_latency_a2a_time(copies * m.hidden_size * c.combine_bytes * c.imbalance, ranks, c.dev)
    else:  # normal kernels: node-limited routing, permute into and out of the contiguous layout
        ops["routed_experts"] = ops["routed_experts"] + 2 * elementwise_time(pairs * m.hidden_size * 2 * c.ab, c.dev)
        ops["dispatch"] = normal_a2a_time(local, m.hidden_size * c.dispatch_bytes * c.moe_tp, c.ep, m, c.dev,
                                          c.imbalance)
        ops["combine"] = normal_a2a_time(local, m.hidden_size * c.combine_bytes, c.ep, m, c.dev, c.imbalance)
    return ops


def _dense(c: _Ctx, tokens):
    m = c.m
    return {
        "mlp_norm": _norm(c, tokens, m.hidden_size),
        "dense_mlp": _mlp(c, tokens, m.hidden_size, m.intermediate_size / c.tp),
        "all_reduce_mlp": all_reduce_time(tokens, m.hidden_size, c.tp, c.dev, c.ab),
    }


def _head(c: _Ctx, tokens):
    """Final norm, LM head (vocab split over TP, BF16 weights) and sampling, once per step."""
    m = c.m
    v = m.vocab_size / c.tp
    return (_norm(c, tokens, m.hidden_size) + _gemm(c, tokens, m.hidden_size, v, w_bytes=c.ab)
            + elementwise_time(tokens * v * FP32_BYTES, c.dev))


def _context(m: Model, hw: Hardware, wl: Workload, layout: Layout, expert_imbalance, redundant_experts: int) -> _Ctx:
    if np.any(np.asarray(expert_imbalance) < 1.0):
        raise InputError(f"expert imbalance is max/mean load per EP rank, so ≥ 1; got {expert_imbalance}")
    if redundant_experts < 0:
        raise InputError(f"redundant experts must be ≥ 0, got {redundant_experts}")
    dev = device(hw, wl)
    ep = np.asarray(layout.ep, dtype=float)
    return _Ctx(
        m=m, dev=dev, wb=dtype_bytes(wl.weight_dtype), xb=gemm_input_bytes(wl.weight_dtype, wl.activation_dtype),
        ab=dtype_bytes(wl.activation_dtype), kvb=dtype_bytes(wl.kv_dtype),
        dispatch_bytes=wire_bytes(wl.dispatch_dtype), combine_bytes=wire_bytes(wl.combine_dtype),
        tp=np.asarray(layout.tp, dtype=float), dp=np.asarray(layout.dp, dtype=float),
        moe_tp=np.asarray(layout.moe_tp, dtype=float), ep=ep, imbalance=np.asarray(expert_imbalance, dtype=float),
        slots=(m.n_routed_experts + redundant_experts) / ep,
    )


def _total(ops: Mapping[str, object]):
    return sum(np.asarray(v, dtype=float) for v in ops.values())


# ---------------------------------------------------------------- decode


@dataclass(frozen=True)
class DecodeStep:
    """One decode step: per-layer op times (seconds, arrays over layouts) and metrics."""

    dense_layer: Mapping[str, object]  # op → seconds, one dense layer, full batch, no overlap
    moe_layer: Mapping[str, object]  # op → seconds, one MoE layer, full batch, no overlap
    head: object  # LM head (and MTP module) once per step, full batch
    step_time: object  # seconds per step under the layout's schedule
    step_time_no_overlap: object
    tokens_per_step: object  # accepted tokens per sequence per step
    batch: object
    devices: object
    flops_per_device: object
    weight_bytes: object
    kv_bytes: object
    memory_capacity: float
    memory_usable: float = 0.0  # bytes per device for weights + KV (usable_memory × capacity)
    step_time_tbo: object = None  # seconds per step with two-batch overlap, whatever the layout says
    tbo_dense_layer: Mapping[str, object] | None = None  # op → seconds, one dense layer, one of TBO's two micro-batches
    tbo_moe_layer: Mapping[str, object] | None = None  # op → seconds, one MoE layer, one of TBO's two micro-batches

    @property
    def tpot(self):
        return self.step_time / self.tokens_per_step

    @property
    def tokens_per_s_per_user(self):
        return self.tokens_per_step / self.step_time

    @property
    def memory_bytes(self):
        return self.weight_bytes + self.kv_bytes

    @property
    def fits(self):
        return self.memory_bytes <= self.memory_usable


def decode(
    m: Model,
    hw: Hardware,
    wl: Workload,
    layout: Layout,
    kv_len,
    mtp_accept: float = 1.0,
    mtp_draft: int = 1,
    *,
    expert_imbalance=1.0,
    redundant_experts: int = 0,
) -> DecodeStep:
    """One decode step of `layout.batch` sequences per attention DP rank at KV length kv_len.

    With ``mtp_accept > 1`` each step verifies ``1 + mtp_draft`` tokens per sequence through
    the model, runs the MTP module once, and keeps ``mtp_accept`` tokens on average.
    ``expert_imbalance`` (max/mean routed load per EP rank, ≥ 1) scales the busiest rank's
    expert GEMMs and its dispatch/combine; ``redundant_experts`` are extra expert copies
    (EPLB), held (E + redundant) / ep per EP rank."""
    if not mtp_accept >= 1.0 or not math.isfinite(mtp_accept):
        raise InputError(f"MTP acceptance is accepted tokens per step, ≥ 1; got {mtp_accept}")
    mtp = mtp_accept > 1.0
    per_seq = 1.0 + mtp_draft if mtp else 1.0
    if mtp_accept > per_seq:
        raise InputError(f"MTP acceptance {mtp_accept:g} exceeds the {per_seq:g} tokens a step verifies")
    c = _context(m, hw, wl, layout, expert_imbalance, redundant_experts)
    batch = np.asarray(layout.batch, dtype=float)
    tbo = np.asarray(layout.tbo, dtype=bool)
    kv = np.asarray(kv_len, dtype=float)

    def step(seqs):
        """(dense layer ops, MoE layer ops, head) for `seqs` sequences per attention DP rank."""
        tokens = seqs * per_seq
        attn = _attention_decode(c, tokens, seqs, per_seq, kv)
        dense = {**attn, **_dense(c, tokens)}
        moe = {**attn, **_moe(c, tokens, "decode")}
        head = _head(c, tokens)
        if mtp:  # the MTP module: hidden and embedding concatenated, projected, one MoE layer
            head = head + _total(moe) + _gemm(c, tokens, 2 * m.hidden_size, m.hidden_size)
        return dense, moe, head

    nd, nm = m.n_dense_layers, m.n_moe_layers
    dense, moe, head = step(batch)
    serial = nd * _total(dense) + nm * _total(moe) + head
    d2, m2, h2 = step(batch / 2)
    overhead = c.dev.eff.tbo_overhead
    tbo_time = (nd * tbo_layer_time(d2, DENSE_STAGES, overhead) + nm * tbo_layer_time(m2, DECODE_STAGES, overhead)
                + 2.0 * h2)

    # FLOPs the step needs per device (for MFU): absorbed MLA, wkv_a on the new tokens only.
    tokens = batch * per_seq
    mla = counts.mla_flops(m, tokens, kv, 1.0, "absorbed") + 2.0 * tokens * m.hidden_size * m.kv_cache_dim
    moe_ffn = counts.expert_flops(m, tokens * (m.num_experts_per_tok + m.n_shared_experts))
    flops = (nm * (mla + moe_ffn) + nd * (mla + counts.dense_mlp_flops(m, tokens)) + counts.lm_head_flops(m, tokens)) / c.tp
    return DecodeStep(
        dense_layer=dense,
        moe_layer=moe,
        head=head,
        step_time=np.where(tbo, tbo_time, serial),
        step_time_no_overlap=serial,
        tokens_per_step=mtp_accept if mtp else 1.0,
        batch=batch,
        devices=c.tp * c.dp,
        flops_per_device=flops,
        weight_bytes=weight_bytes_per_device(m, wl, layout, redundant_experts, mtp),
        kv_bytes=kv_bytes_per_device(m, wl, batch, kv, mtp),
        memory_capacity=hw.memory_bytes,
        memory_usable=hw.memory_bytes * c.dev.eff.usable_memory,
        step_time_tbo=tbo_time,
        tbo_dense_layer=d2,
        tbo_moe_layer=m2,
    )


def tokens_per_s_per_device(step: DecodeStep, layout: Layout):
    """Output tokens per second per device: each attention DP rank (tp devices) emits
    batch × accepted tokens per step."""
    return step.batch * step.tokens_per_step / step.step_time / np.asarray(layout.tp, dtype=float)


def mfu(step, hw: Hardware, wl: Workload):
    """Model FLOPs utilization of the weight dtype's peak (decode step or prefill pass)."""
    time = step.step_time if isinstance(step, DecodeStep) else step.time
    return step.flops_per_device / time / hw.peak(wl.weight_dtype)


def check_fits(step: "DecodeStep | PrefillPass", hw: Hardware, what: str) -> None:
    """One error, saying by how much, when a scalar step's weights and KV do not fit."""
    need, have = float(np.max(step.memory_bytes)), float(step.memory_usable)
    if need > have:
        raise InputError(
            f"{what} does not fit on {hw.name}: it needs {need / 1e9:.1f} GB per device (weights "
            f"{float(np.max(step.weight_bytes)) / 1e9:.1f} GB + KV cache {float(np.max(step.kv_bytes)) / 1e9:.1f} GB), "
            f"{have / 1e9:.1f} GB are usable, over by {(need - have) / 1e9:.1f} GB")


# ---------------------------------------------------------------- prefill


@dataclass(frozen=True)
class PrefillPass:
    """One prefill forward pass: per-layer op times (seconds) and metrics, per device."""

    dense_layer: Mapping[str, object]
    moe_layer: Mapping[str, object]
    head: object
    time: object  # seconds per forward under the layout's schedule
    time_no_overlap: object
    time_tbo: object
    tokens_per_device: object  # new (computed) tokens per device per forward
    kv_cache_hit_rate: float
    prompt_len: object
    devices_per_node: int
    flops_per_device: object
    weight_bytes: object
    kv_bytes: object
    memory_usable: float
    # op → seconds of one of TBO's two micro-batches (half the tokens, on the SMs the all-to-all leaves)
    tbo_dense_layer: Mapping[str, object] | None = None
    tbo_moe_layer: Mapping[str, object] | None = None

    @property
    def tokens_per_s_per_device(self):
        """Computed (prefix-cache-missed) prompt tokens per second per device."""
        return self.tokens_per_device / self.time

    @property
    def input_tokens_per_s_per_device(self):
        """Prompt tokens per second per device, prefix-cache hits included."""
        return self.tokens_per_s_per_device / (1.0 - self.kv_cache_hit_rate)

    @property
    def tokens_per_s_per_node(self):
        return self.tokens_per_s_per_device * self.devices_per_node

    @property
    def memory_bytes(self):
        return self.weight_bytes + self.kv_bytes


def prefill(
    m: Model,
    hw: Hardware,
    wl: Workload,
    layout: Layout,
    tokens_per_device,
    prompt_len=None,
    kv_cache_hit_rate: float | None = None,
    *,
    expert_imbalance=1.0,
    redundant_experts: int = 0,
) -> PrefillPass:
    """One prefill forward of `tokens_per_device` new prompt tokens per device.

    Prompts are `prompt_len` tokens (default: the workload's) of which the share
    `kv_cache_hit_rate` is a cached prefix: each prompt computes (1 − hit) · prompt_len new
    tokens that attend causally over the whole prompt. An attention DP rank (tp devices)
    runs tp · tokens_per_device tokens; each device routes its share through the experts
    with DeepEP normal kernels. ``layout.batch`` is not used."""
    hit = wl.kv_cache_hit_rate if kv_cache_hit_rate is None else kv_cache_hit_rate
    if not 0.0 <= hit < 1.0:
        raise InputError(f"KV-cache hit rate must be in [0, 1), got {hit}")
    L = np.asarray(wl.prompt_len if prompt_len is None else prompt_len, dtype=float)
    if np.any(L < 1):
        raise InputError("prompt length must be at least one token")
    n = np.asarray(tokens_per_device, dtype=float)
    if np.any(n < 1):
        raise InputError("tokens per device must be at least one")
    c = _context(m, hw, wl, layout, expert_imbalance, redundant_experts)
    q = np.maximum((1.0 - hit) * L, 1.0)  # new tokens per prompt
    tbo = np.asarray(layout.tbo, dtype=bool)

    def forward(tokens_dev, dev: Device):
        cc = replace(c, dev=dev)
        tokens = tokens_dev * cc.tp  # tokens of the attention DP rank
        seqs = tokens / q
        attn = _attention_prefill(cc, tokens, seqs, q, L)
        dense = {**attn, **_dense(cc, tokens)}
        moe = {**attn, **_moe(cc, tokens, "prefill")}
        return dense, moe, _head(cc, seqs)  # the LM head runs on each prompt's last token

    nd, nm = m.n_dense_layers, m.n_moe_layers
    dense, moe, head = forward(n, c.dev)
    serial = nd * _total(dense) + nm * _total(moe) + head
    # TBO: the all-to-all kernels take comm_sms SMs from the compute they overlap
    share = 1.0 - c.dev.eff.comm_sms / c.dev.compute_units
    d2, m2, h2 = forward(n / 2, c.dev.slowed(share))
    overhead = c.dev.eff.tbo_overhead
    tbo_time = (nd * tbo_layer_time(d2, DENSE_STAGES, overhead) + nm * tbo_layer_time(m2, PREFILL_STAGES, overhead)
                + 2.0 * h2)

    tokens = n * c.tp
    seqs = tokens / q
    pairs = seqs * counts.attention_pairs(q, L, causal=True)
    attn_flops = 2.0 * m.num_attention_heads * pairs * (m.qk_head_dim + m.v_head_dim)
    mla_gemm = sum(v for k, v in counts.mla_ops(m, tokens, tokens, 0.0, "plain").items()
                   if k not in counts.ATTENTION_OPS and k not in ("w_uk", "w_uv"))
    mla_gemm = mla_gemm + 2.0 * seqs * L * m.kv_lora_rank * m.num_attention_heads * (m.qk_nope_head_dim + m.v_head_dim)
    mla = attn_flops + mla_gemm
    moe_ffn = counts.expert_flops(m, tokens * (m.num_experts_per_tok + m.n_shared_experts))
    flops = (nm * (mla + moe_ffn) + nd * (mla + counts.dense_mlp_flops(m, tokens)) + counts.lm_head_flops(m, seqs)) / c.tp
    kv = kv_bytes_per_device(m, wl, seqs, L)
    return PrefillPass(
        dense_layer=dense,
        moe_layer=moe,
        head=head,
        time=np.where(tbo, tbo_time, serial),
        time_no_overlap=serial,
        time_tbo=tbo_time,
        tokens_per_device=n,
        kv_cache_hit_rate=hit,
        prompt_len=L,
        devices_per_node=hw.scale_up_domain,
        flops_per_device=flops,
        weight_bytes=weight_bytes_per_device(m, wl, layout, redundant_experts),
        kv_bytes=kv,
        memory_usable=hw.memory_bytes * c.dev.eff.usable_memory,
        tbo_dense_layer=d2,
        tbo_moe_layer=m2,
    )
