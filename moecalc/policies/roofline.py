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
from ..frameworks import Framework, load_framework
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
    all_reduce_latency: float  # seconds, two devices
    dispatch_latency: float
    tbo_overhead: float
    comm_sms: int
    mma_tile_rows: int
    launch_gap: float = 0.0  # seconds between consecutive kernels of a CUDA graph
    all_reduce_latency_node: float = 0.0  # seconds, a whole scale-up domain (0: as two devices)
    all_reduce_latency_internode: float = 0.0  # seconds, across two domains (0: as one domain)
    compute_memory_overlap: float = 1.0  # 1: a kernel takes max(compute, memory); 0: their sum
    sources: Mapping[str, str] = field(default_factory=dict)
    # DeepSeek Sparse Attention kernels (absent from a profile: the dense factors, transferred)
    attention_sparse: float = 0.0
    attention_sparse_prefill: float = 0.0
    indexer: float = 0.0
    scale_out_normal: float = 0.0  # the prefill (DeepEP normal) all-to-all's share of the RDMA link
    low_latency_domain: int = 0  # peers the decode all-to-all reaches over NVLink (0: the scale-up domain)


# What an optional entry means when a profile leaves it out (see profiles.EFFICIENCY_OPTIONAL).
# `compute_memory_overlap` is no hardware-profile field but a policy's opinion: the roofline's
# is 1 (a kernel takes the longer of its compute and memory time); seed002 passes 0 (added).
_ABSENT = {"comm_sms": 0, "mma_tile_rows": 1, "launch_gap_us": 0.0, "all_reduce_latency_node_us": 0.0,
           "all_reduce_latency_internode_us": 0.0, "compute_memory_overlap": 1.0, "low_latency_domain": 0}
# Optional entries that default to another entry of the same profile (transferred from dense).
_TRANSFERRED = {"attention_prefill": "attention", "attention_sparse": "attention",
                "attention_sparse_prefill": "attention_prefill", "indexer": "gemm", "scale_out_normal": "scale_out"}


def efficiency(hw: Hardware) -> Efficiency:
    """The roofline efficiencies of `hw`, or one error naming what its profile lacks."""
    e = hw.efficiency or {}
    missing = [n for n in EFFICIENCY_FIELDS if n not in EFFICIENCY_OPTIONAL and not e.get(n)]
    if missing:
        raise InputError(f"{hw.path}: field 'efficiency.{missing[0]}': missing (the roofline policy needs it)")

    def value(name: str):
        entry = e.get(name)
        if entry is None:
            return value(_TRANSFERRED[name]) if name in _TRANSFERRED else _ABSENT[name]
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
        launch_gap=value("launch_gap_us"),
        all_reduce_latency_node=value("all_reduce_latency_node_us"),
        all_reduce_latency_internode=value("all_reduce_latency_internode_us"),
        compute_memory_overlap=value("compute_memory_overlap"),
        attention_sparse=value("attention_sparse"),
        attention_sparse_prefill=value("attention_sparse_prefill"),
        indexer=value("indexer"),
        scale_out_normal=value("scale_out_normal"),
        low_latency_domain=int(value("low_latency_domain")),
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
    scale_out_normal_bandwidth: float  # the prefill (DeepEP normal) all-to-all's RDMA rate
    expert_flops: float | None = None  # routed-expert grouped GEMMs at the expert dtype's peak; None: grouped_flops

    @property
    def routed_flops(self) -> float:
        return self.grouped_flops if self.expert_flops is None else self.expert_flops
    sparse_attention_flops: float = 0.0  # sparse MLA decode (BF16 math on an FP8 cache)
    absorb_flops: float = 0.0  # absorbed MLA's per-head BMMs on BF16 copies of wkv_b (BF16 whatever the cache)
    sparse_prefill_attention_flops: float = 0.0  # sparse MLA prefill (BF16)
    indexer_flops: float = 0.0  # lightning-indexer logits (FP8)

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
            scale_out_normal_bandwidth=self.scale_out_normal_bandwidth,
            expert_flops=None if self.expert_flops is None else self.expert_flops * share,
            sparse_attention_flops=self.sparse_attention_flops * share,
            absorb_flops=self.absorb_flops * share,
            sparse_prefill_attention_flops=self.sparse_prefill_attention_flops * share,
            indexer_flops=self.indexer_flops * share,
        )


def device(hw: Hardware, wl: Workload | None = None, weight_dtype: str | None = None) -> Device:
    """`hw` after its efficiencies, computing GEMMs at the peak of the weight dtype (routed
    experts at the peak of the workload's expert dtype, e.g. fp4 for nvfp4 experts)."""
    e = efficiency(hw)
    peak = hw.peak(weight_dtype or (wl.weight_dtype if wl is not None else "fp8"))
    bf16 = hw.peak("bf16")
    expert_peak = hw.peak(wl.expert_dtype) if wl is not None and wl.expert_weight_dtype else None
    # decode attention on an FP8 cache runs FlashMLA's FP8 kernel on FP8 tensor cores
    # (deepseek-ai/FlashMLA#54), where the GPU has them; a BF16 cache, at the BF16 peak
    fp8_kv = wl is not None and wl.kv_dtype == "fp8" and "fp8" in hw.peak_flops
    return Device(
        expert_flops=None if expert_peak is None else expert_peak * e.grouped_gemm,
        gemm_flops=peak * e.gemm,
        grouped_flops=peak * e.grouped_gemm,
        attention_flops=(hw.peak("fp8") if fp8_kv else bf16) * e.attention,
        prefill_attention_flops=bf16 * e.attention_prefill,
        memory_bandwidth=hw.memory_bandwidth * e.memory,
        scale_up_bandwidth=hw.scale_up_bandwidth * e.scale_up,
        scale_out_bandwidth=hw.scale_out_bandwidth * e.scale_out,
        scale_up_domain=hw.scale_up_domain,
        compute_units=hw.compute_units,
        eff=e,
        scale_out_normal_bandwidth=hw.scale_out_bandwidth * e.scale_out_normal,
        sparse_attention_flops=bf16 * e.attention_sparse,
        absorb_flops=bf16 * e.attention,
        sparse_prefill_attention_flops=bf16 * e.attention_sparse_prefill,
        indexer_flops=hw.peak("fp8") * e.indexer if "fp8" in hw.peak_flops else peak * e.indexer,
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


def sparse_mla_decode_time(seqs, q_per_seq, keys, heads, m: Model, kv_bytes: float, act_bytes: float, dev: Device):
    """FlashMLA's token-level sparse decoding (DeepSeek Sparse Attention): each of a sequence's
    q_per_seq queries gathers its *own* `keys` selected latents (queries do not share reads as
    in dense decoding); FLOPs as FlashMLA counts them, 2 · heads · keys · (kv_cache_dim +
    kv_lora_rank) per query, heads padded to the tile; at the sparse-kernel efficiency."""
    queries = seqs * q_per_seq
    flops = 2.0 * queries * padded_rows(heads, dev.eff.mma_tile_rows) * keys * (m.kv_cache_dim + m.kv_lora_rank)
    nbytes = queries * (keys * m.kv_cache_dim * kv_bytes + heads * (m.kv_cache_dim + m.kv_lora_rank) * act_bytes)
    return op_time(flops, nbytes, dev.sparse_attention_flops, dev)


def sparse_mla_prefill_time(pairs, tokens, kv_tokens, heads, m: Model, act_bytes: float, dev: Device):
    """FlashMLA's token-level sparse prefill (MQA mode, absorbed: d_qk = kv_cache_dim,
    d_v = kv_lora_rank): `pairs` selected (query, key) pairs per head; q and o per token,
    every key's BF16 latent read at least once."""
    flops = 2.0 * heads * pairs * (m.kv_cache_dim + m.kv_lora_rank)
    nbytes = act_bytes * (tokens * heads * (m.kv_cache_dim + m.kv_lora_rank) + kv_tokens * m.kv_cache_dim)
    return op_time(flops, nbytes, dev.sparse_prefill_attention_flops, dev)


def indexer_logits_time(pairs, key_reads, queries, m: Model, dev: Device):
    """DeepGEMM's FP8 MQA logits (the lightning indexer): 2 · index heads · index_head_dim
    FLOPs per (query, key) pair at the indexer efficiency of the FP8 peak; reads each
    sequence's cached index keys once (`key_reads` key rows, FP8 + scale) and the FP8
    queries, writes one FP32 logit per pair."""
    hi, di = m.index_n_heads, m.index_head_dim
    flops = 2.0 * hi * di * pairs
    nbytes = key_reads * counts.index_cache_bytes_per_token(m, 1) + queries * hi * (di + FP32_BYTES) + pairs * FP32_BYTES
    return op_time(flops, nbytes, dev.indexer_flops, dev)


def attention_prefill_time(pairs, tokens, kv_tokens, heads, qk_dim: int, v_dim: int, act_bytes: float, dev: Device):
    """Plain (non-absorbed) causal attention: `pairs` (query, key) pairs per head, each
    2 · (qk_dim + v_dim) FLOPs; q and k (qk_dim), v and o (v_dim) read or written once."""
    flops = 2.0 * heads * pairs * (qk_dim + v_dim)
    nbytes = heads * act_bytes * (tokens + kv_tokens) * (qk_dim + v_dim)
    return op_time(flops, nbytes, dev.prefill_attention_flops, dev)


# ---------------------------------------------------------------- communication


def all_reduce_latency(n, dev: Device):
    """Fixed cost of one small all-reduce over n devices (nccl-tests latencies): the
    two-device figure, rising with log2(n) to the whole-domain figure, and the cross-domain
    figure once the group spans scale-up domains (NVLink, then InfiniBand)."""
    n = np.asarray(n, dtype=float)
    e = dev.eff
    two, node = e.all_reduce_latency, e.all_reduce_latency_node or e.all_reduce_latency
    inter = e.all_reduce_latency_internode or node
    d = np.maximum(np.asarray(dev.scale_up_domain, dtype=float), 2.0)  # an array under seed 002's two-level switch
    share = np.clip(np.log2(np.maximum(n, 2.0) / 2.0) / np.maximum(np.log2(d / 2.0), 1e-9), 0.0, 1.0)
    return np.where(n > d, inter, two + (node - two) * share)


def all_reduce_time(tokens, hidden: int, tp, dev: Device, bytes_per_element: float = 2.0,
                    fw: Framework | None = None):
    """All-reduce of tokens × hidden across tp devices (0 at tp = 1). Inside a scale-up domain
    a ring: each device sends and receives 2 (tp − 1) / tp of the message over the scale-up
    link. Across domains NCCL's hierarchical path: reduce-scatter and all-gather inside each
    domain (scale-up link), and between domains only each device's 1/d share of the message,
    2 (N − 1) / N of it over its scale-out link (N domains of d devices). Plus the latency
    floor for the group's size and span (:func:`all_reduce_latency`). A framework with its
    own one-shot all-reduce (``custom_all_reduce``) may use it inside a domain for messages
    up to its limit, where it is the faster: every device reads the other tp − 1 copies over
    the scale-up link, after a floor that rises with log2(tp) from its two-GPU to its
    whole-domain figure."""
    tp = np.asarray(tp, dtype=float)
    message = tokens * hidden * bytes_per_element
    d = np.minimum(tp, dev.scale_up_domain)
    nodes = np.maximum(tp / dev.scale_up_domain, 1.0)
    intra = 2.0 * (d - 1.0) / d * message / dev.scale_up_bandwidth
    inter = np.where(nodes > 1, 2.0 * (nodes - 1.0) / nodes * message / d / dev.scale_out_bandwidth, 0.0)
    t = intra + inter + all_reduce_latency(tp, dev)
    if fw is not None and fw.custom_ar_max_bytes > 0:
        domain = np.maximum(np.asarray(dev.scale_up_domain, dtype=float), 2.0)
        share = np.clip(np.log2(np.maximum(tp, 2.0) / 2.0) / np.maximum(np.log2(domain / 2.0), 1e-9), 0.0, 1.0)
        one_shot = (tp - 1.0) * message / dev.scale_up_bandwidth + fw.custom_ar_two + (fw.custom_ar_node
                                                                                        - fw.custom_ar_two) * share
        t = np.where((tp <= domain) & (message <= fw.custom_ar_max_bytes), np.minimum(one_shot, t), t)
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
    RDMA parts run at once, plus the kernel's latency floor. 0 when there is one rank. Peers
    beyond ``low_latency_domain`` (DeepEP before 2025-06: none) are reached over RDMA."""
    _, intra, inter = remote_shares(ranks, dev.eff.low_latency_domain or dev.scale_up_domain)
    t = np.maximum(nbytes * intra / dev.scale_up_bandwidth, nbytes * inter / dev.scale_out_bandwidth)
    return np.where(np.asarray(ranks) > 1, t + dev.eff.dispatch_latency, 0.0)


def allgather_reducescatter_time(tokens, hidden: int, tp, dp, dispatch_bytes: float, combine_bytes: float,
                                 dev: Device):
    """MoE tokens without an all-to-all kernel (vLLM's and TensorRT-LLM's default path): the
    `tokens` of each attention-DP rank are all-gathered over the dp ranks before the experts
    (each device receives the other dp − 1 ranks' tokens), and the expert outputs, partial
    sums over every device's experts, are reduce-scattered over all tp · dp devices and
    gathered back inside each TP group. Ring collectives: over the scale-up link inside a
    domain, the scale-out link beyond it, each paying the all-reduce latency floor.
    Returns (gather, reduce) seconds; 0 on one device."""
    tp = np.asarray(tp, dtype=float)
    dp = np.asarray(dp, dtype=float)
    n = tp * dp
    bw = np.where(n <= dev.scale_up_domain, dev.scale_up_bandwidth, dev.scale_out_bandwidth)
    floor = all_reduce_latency(n, dev)
    gather = (dp - 1.0) * tokens * hidden * dispatch_bytes / bw + floor
    reduce = ((n - 1.0) / n * dp * tokens + (tp - 1.0) / tp * tokens) * hidden * combine_bytes / bw + floor
    return np.where(dp > 1, gather, 0.0), np.where(n > 1, reduce, 0.0)


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
    t = np.maximum(rdma / dev.scale_out_normal_bandwidth, nvl / dev.scale_up_bandwidth) * imbalance
    return np.where(ep > 1, t + dev.eff.dispatch_latency, 0.0)


def expected_experts_hit(m: Model, tokens, experts_per_device):
    """Expected distinct routed experts of one device that `tokens` tokens hit, each token
    choosing top-k of the experts uniformly (perfect balance: what EPLB aims at). Exact by
    linearity: each expert is missed by a token with probability 1 − k/E."""
    miss = (1.0 - m.num_experts_per_tok / m.n_routed_experts) ** np.asarray(tokens, dtype=float)
    return experts_per_device * (1.0 - miss)


_MAX_PICKS = 160  # tokens picking one group beyond which each of its experts is hit (miss < 1e-4)


def _log_binom_pmf(n, p, ks):
    """log P(K = ks) for K ~ Binomial(n, p), n an array (…, 1), ks a row 0..K (no scipy)."""
    n = np.asarray(n, dtype=float)
    i = np.arange(1, ks.size, dtype=float)
    steps = np.log(np.maximum(n - i + 1.0, 1e-300)) - np.log(i)  # log C(n, k) by running sums
    log_comb = np.concatenate([np.zeros(steps.shape[:-1] + (1,)), np.cumsum(steps, axis=-1)], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 × log 0 = 0 (p = 1: one group, every token picks it)
        hit = np.where(ks > 0, ks * np.log(p), 0.0)
        miss = np.where(n - ks > 0, (n - ks) * np.log1p(-p), 0.0)
    return np.where(ks <= n, log_comb + hit + miss, -np.inf)


def _busiest_rank_hits(n_experts: int, topk: int, n_group: int, topk_group: int, tokens, ranks: int,
                       slots: float):
    """Expected largest number of distinct routed experts any of `ranks` EP ranks holds that
    `tokens` tokens (an array) hit, under group-limited routing on balanced scores: each token
    picks topk_group of n_group groups (uniformly) and, in each picked group, each expert with
    probability (topk / topk_group) / experts-per-group. A rank holds `slots` experts, whole
    groups or part of one. Given the n tokens that picked a group, its experts on the rank are
    hit independently; n is Binomial(tokens, topk_group / n_group) per group, groups
    independent, ranks independent: E[max] = Σ_d (1 − F(d)^ranks)."""
    tokens = np.asarray(tokens, dtype=float).ravel()  # whole numbers of tokens
    per_group = n_experts / n_group
    in_group = max(min(slots, per_group), 1.0)  # the rank's experts in one group
    groups_here = max(int(round(slots / per_group)), 1) if slots >= per_group else 1
    s = int(round(in_group))
    n = np.arange(0, _MAX_PICKS + 1, dtype=float)
    picks = np.exp(_log_binom_pmf(tokens[:, None], topk_group / n_group, n[None, :]))  # (T, n)
    picks[:, -1] += np.maximum(1.0 - picks.sum(axis=1), 0.0)  # the tail beyond _MAX_PICKS: every expert hit
    q = 1.0 - (1.0 - (topk / topk_group) / per_group) ** n  # an expert hit, given n picks of its group
    d = np.arange(s + 1, dtype=float)
    hits = np.exp(_log_binom_pmf(np.full((n.size, 1), float(s)), np.clip(q, 1e-300, 1 - 1e-16)[:, None], d[None, :]))
    hits[0] = np.r_[1.0, np.zeros(s)]  # no pick, no hit
    hits[-1] = np.r_[np.zeros(s), 1.0]
    one = picks @ hits  # (T, s + 1): distinct hits in one group's share of the rank
    dist = one
    for _ in range(groups_here - 1):  # the rank's other whole groups, independent: convolve
        out = np.zeros((dist.shape[0], dist.shape[1] + s))
        for i in range(dist.shape[1]):
            out[:, i:i + s + 1] += dist[:, i:i + 1] * one
        dist = out
    cdf = np.clip(np.cumsum(dist, axis=1), 0.0, 1.0)
    return np.sum(1.0 - cdf[:, :-1] ** ranks, axis=1)


def busiest_rank_experts_hit(m: Model, tokens, ranks, slots):
    """Vectorized :func:`_busiest_rank_hits` for the model's routing: the distinct routed
    experts the busiest of `ranks` EP ranks (each holding `slots` expert copies) reads when
    the EP group routes `tokens` tokens. One matrix product per distinct (ranks, slots) over
    every token count, so a search over millions of layouts stays fast."""
    t, r, s = np.broadcast_arrays(np.asarray(tokens, dtype=float), np.asarray(ranks, dtype=float),
                                  np.asarray(slots, dtype=float))
    out = np.zeros(t.shape)
    pairs = np.unique(np.stack([r.ravel(), s.ravel()], axis=1), axis=0)
    for ranks_, slots_ in pairs:  # a handful of EP sizes, not layouts
        sel = (r == ranks_) & (s == slots_)
        if ranks_ <= 1:  # one rank: the busiest is the mean one
            out[sel] = expected_experts_hit(m, t[sel], slots_)
            continue
        ts = t[sel]
        lo, hi = np.floor(ts), np.ceil(ts)  # whole tokens; a fractional count (half a batch) interpolates
        uniq, inverse = np.unique(np.concatenate([lo, hi]), return_inverse=True)
        # past the point where a group's every expert is hit almost surely, every rank reads all it holds
        full = uniq * m.topk_group / m.n_group > 4 * _MAX_PICKS
        vals = np.full(uniq.shape, float(round(slots_)) if slots_ >= 1 else 1.0)
        if np.any(~full):
            vals[~full] = _busiest_rank_hits(m.n_routed_experts, m.num_experts_per_tok, m.n_group, m.topk_group,
                                             uniq[~full], int(ranks_), float(slots_))
        vals = vals[inverse.ravel()]
        v_lo, v_hi = vals[:ts.size], vals[ts.size:]
        out[sel] = v_lo + (ts - lo) * (v_hi - v_lo)
    return out if out.ndim else float(out)


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


def fewest_redundant_experts(m: Model, ep) -> int:
    """The fewest extra expert copies that make the routed experts divide over `ep` ranks
    (0 when they already do): e.g. 32 for 256 experts on EP144, 48 for 384."""
    return int((-m.n_routed_experts) % int(ep))


# ---------------------------------------------------------------- memory


def weight_bytes_per_device(m: Model, wl: Workload, layout: Layout, redundant_experts: int = 0, mtp: bool = False,
                            shared_split: bool = False):
    """Weights one device holds. The FP8 checkpoint quantizes the attention, dense-MLP and
    expert matrices (`weight_dtype`; routed experts in the workload's `expert_dtype`); embedding, LM head, router and norms stay in the
    activation dtype. MLA down-projections are replicated, the rest split by TP; dense MLPs
    split by TP; routed experts ((E + redundant) / ep copies per EP rank) split by MoE-TP;
    shared experts and router replicated; the embedding replicated, the LM head split by TP.
    With MTP, one more MoE layer and its 2·hidden → hidden projection. `shared_split`: the
    shared experts split by TP too (frameworks that all-reduce the MoE instead of an
    all-to-all kernel)."""
    wb, ab, eb = dtype_bytes(wl.weight_dtype), dtype_bytes(wl.activation_dtype), dtype_bytes(wl.expert_dtype)
    tp = np.asarray(layout.tp, dtype=float)
    shapes = counts.mla_weight_shapes(m, "plain")
    replicated = sum(i * o for k, (i, o) in shapes.items() if k in ("wq_a", "wkv_a"))
    split = sum(i * o for k, (i, o) in shapes.items() if k not in ("wq_a", "wkv_a"))
    mla_layer = replicated + split / tp
    experts_here = (m.n_routed_experts + redundant_experts) / np.asarray(layout.ep, dtype=float)
    shared = m.n_shared_experts / (tp if shared_split else 1.0)
    routed = experts_here / np.asarray(layout.moe_tp, dtype=float) * (eb / wb)  # in weight-dtype bytes
    moe_layer = (routed + shared) * counts.expert_params(m)
    extra = m.num_nextn_predict_layers if mtp else 0
    if m.sparse:  # the indexer, replicated: wq_b and wk quantized, weights_proj and k_norm not
        plain_idx = m.hidden_size * m.index_n_heads + 2 * m.index_head_dim
        mla_layer = mla_layer + (counts.indexer_params(m) - plain_idx) + plain_idx * ab / wb
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


def usable_memory(hw: Hardware, framework: Framework | str | None, weights):
    """Bytes per device the framework lets weights and KV cache take together: its memory
    rule (:meth:`moecalc.frameworks.Framework.usable_memory`) over the capacity the device
    reports (``memory_reported_mib``, else the datasheet)."""
    return load_framework(framework).usable_memory(hw.memory_device_bytes, weights)


def max_batch(m: Model, hw: Hardware, wl: Workload, layout: Layout, kv_len, redundant_experts: int = 0,
              mtp: bool = False, kv_bytes_per_token=None, memory_cap=None, framework: Framework | str | None = None):
    """Largest whole number of sequences per attention-DP rank whose KV cache fits beside the
    weights on one device: floor((usable − weights) / (kv_len × KV bytes per token)), 0 when
    the weights alone leave no room. The inverse of ``DecodeStep.fits``: usable memory is what
    the framework's memory rule allows (:func:`usable_memory`; or `memory_cap` bytes if
    smaller, e.g. a workload's cap); weights as :func:`weight_bytes_per_device`. Every TP rank of a group
    holds the whole group's cache, so a device holds ``max_batch`` sequences' KV and serves
    ``max_batch / tp`` of them. `kv_bytes_per_token` (all layers, MTP's included if any)
    overrides the workload's KV dtype, e.g. for an FP8 cache with its scales
    (:func:`moecalc.counts.kv_format_bytes_per_token`). Arrays broadcast over layouts."""
    fw = load_framework(framework)
    weights = weight_bytes_per_device(m, wl, layout, redundant_experts, mtp, fw.a2a_decode == "allgather_reducescatter")
    usable = usable_memory(hw, fw, weights)
    if memory_cap is not None:
        usable = np.minimum(usable, float(memory_cap))
    free = usable - weights
    per_seq = (kv_bytes_per_device(m, wl, 1.0, kv_len, mtp) if kv_bytes_per_token is None
               else np.asarray(kv_len, dtype=float) * kv_bytes_per_token)
    return np.maximum(np.floor(free / per_seq), 0.0)


# ---------------------------------------------------------------- layer ops


# Op names, in the order a layer runs them.
# The lightning indexer (sparse attention only) runs after the projections, before attention.
INDEXER_OPS = ("index_q_proj", "index_k_proj", "index_prep", "index_logits", "index_topk")
ATTENTION_PREP = ("attn_norm", "qkv_a_proj", "q_b_proj", "kv_b_proj", "q_absorb", "rope_cache") + INDEXER_OPS
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
    fw: Framework
    overheads: bool = True  # serving's small kernels, launch gaps and the busiest EP rank (off: a seed's accounting)
    eb: float = 1.0  # routed-expert weight bytes per element (scales included)


def _gemm(c: _Ctx, rows, n_in, n_out, flop_rate=None, groups=1.0, w_bytes=None):
    return gemm_time(rows, n_in, n_out, c.wb if w_bytes is None else w_bytes, c.xb, c.ab, c.dev, flop_rate, groups)


def _norm(c: _Ctx, tokens, width):
    """Fused residual add + RMSNorm + quantization: read x and residual, write both."""
    return elementwise_time(tokens * width * (3.0 * c.ab + c.xb), c.dev)


def _swiglu(c: _Ctx, rows, width, groups=1.0):
    """SiLU(gate) · up, quantized for the down projection: read 2·width, write width."""
    return elementwise_time(groups * rows * width * (2.0 * c.ab + c.xb), c.dev)


def _mlp(c: _Ctx, rows, hidden, width, flop_rate=None, groups=1.0, w_bytes=None):
    """gate-up GEMM, SwiGLU, down GEMM (three kernels)."""
    return (_gemm(c, rows, hidden, 2 * width, flop_rate, groups, w_bytes) + _swiglu(c, rows, width, groups)
            + _gemm(c, rows, width, hidden, flop_rate, groups, w_bytes))


def _indexer(c: _Ctx, tokens, pairs, key_reads):
    """The lightning indexer of DeepSeek Sparse Attention for `tokens` new tokens on one TP
    rank, replicated on every TP rank (SGLang's and DeepSeek's reference Indexer use
    unsplit linears): project q (from the q latent) and the one shared key (from the hidden
    state), rope/rotate/quantize both and cache the key, FP8 logits over `pairs` (query, key)
    pairs reading `key_reads` cached keys, then the top-k selection over each query's logits.
    Empty for dense MLA."""
    m = c.m
    if not m.sparse:
        return {}
    hi, di = m.index_n_heads, m.index_head_dim
    row = counts.index_cache_bytes_per_token(m, 1)
    return {
        "index_q_proj": _gemm(c, tokens, m.q_lora_rank, hi * di),
        "index_k_proj": _gemm(c, tokens, m.hidden_size, di) + _gemm(c, tokens, m.hidden_size, hi, w_bytes=c.ab),
        "index_prep": elementwise_time(tokens * (hi * di * (2.0 * c.ab + 1.0) + di * 2.0 * c.ab + row), c.dev),
        "index_logits": indexer_logits_time(pairs, key_reads, tokens, m, c.dev),
        "index_topk": elementwise_time(pairs * FP32_BYTES + tokens * m.index_topk * FP32_BYTES, c.dev),
    }


def _select(sparse, when_sparse: Mapping[str, object], when_dense: Mapping[str, object]) -> dict[str, object]:
    """Op by op, the sparse kernels' times where `sparse` (KV longer than top-k), else the dense ones."""
    keys = list(dict.fromkeys([*when_dense, *when_sparse]))
    return {k: np.where(sparse, when_sparse.get(k, 0.0), when_dense.get(k, 0.0)) for k in keys}


def _attention_decode(c: _Ctx, tokens, seqs, q_per_seq, kv_len):
    """Absorbed MLA for `tokens` = seqs × q_per_seq new tokens on one TP rank. With sparse
    attention, the indexer, and once kv_len exceeds index_topk FlashMLA's sparse kernel over
    the top-k keys (up to top-k the selection keeps every key: the dense computation)."""
    m = c.m
    h = m.num_attention_heads / c.tp
    bf16 = dtype_bytes("bf16")
    ops = _attention_decode_dense(c, tokens, seqs, q_per_seq, kv_len, h, bf16)
    if not m.sparse:
        return ops
    ops.update(_indexer(c, tokens, seqs * q_per_seq * kv_len, seqs * kv_len))
    sparse = np.asarray(kv_len) > m.index_topk
    keys = np.minimum(kv_len, m.index_topk)
    ops["attention"] = np.where(sparse, sparse_mla_decode_time(seqs, q_per_seq, keys, h, m, c.kvb, c.ab, c.dev),
                                ops["attention"])
    return ops


def _attention_decode_dense(c: _Ctx, tokens, seqs, q_per_seq, kv_len, h, bf16):
    m = c.m
    return {
        "attn_norm": _norm(c, tokens, m.hidden_size),
        "qkv_a_proj": _gemm(c, tokens, m.hidden_size, m.q_lora_rank + m.kv_cache_dim),  # wq_a and wkv_a fused
        "q_b_proj": _gemm(c, tokens, m.q_lora_rank, h * m.qk_head_dim),
        # q_nope · W_UK and latent · W_UV per head, batched GEMMs on BF16 copies of wkv_b
        "q_absorb": _gemm(c, tokens, h * m.qk_nope_head_dim, m.kv_lora_rank, c.dev.absorb_flops, w_bytes=bf16),
        "rope_cache": elementwise_time(tokens * (m.q_lora_rank + m.kv_cache_dim) * 2 * c.ab
                                       + tokens * m.kv_cache_dim * c.kvb, c.dev),
        "attention": mla_decode_time(seqs, q_per_seq, kv_len, h, m, c.kvb, c.ab, c.dev),
        "o_absorb": _gemm(c, tokens, h * m.kv_lora_rank, m.v_head_dim, c.dev.absorb_flops, w_bytes=bf16),
        "o_proj": _gemm(c, tokens, h * m.v_head_dim, m.hidden_size),
        "all_reduce": all_reduce_time(tokens, m.hidden_size, c.tp, c.dev, c.ab, c.fw),
    }


def _attention_prefill(c: _Ctx, tokens, seqs, q_len, kv_len):
    """Plain causal MLA for `seqs` sequences of q_len new tokens over kv_len keys (the
    cached prefix plus the new tokens) on one TP rank: K and V up-projected for every key.
    With sparse attention: the indexer over every visible key, and once kv_len exceeds
    index_topk, FlashMLA's sparse prefill in MQA (absorbed) mode over each query's top-k keys
    where it beats the plain form run with a mask (up to top-k every key is kept: the dense
    computation)."""
    m = c.m
    h = m.num_attention_heads / c.tp
    dense = _attention_prefill_dense(c, tokens, seqs, q_len, kv_len, h)
    if not m.sparse:
        return dense
    dense.update(_indexer(c, tokens, seqs * counts.attention_pairs(q_len, kv_len, causal=True), seqs * kv_len))
    if not np.any(np.asarray(kv_len) > m.index_topk):
        return dense
    bf16 = dtype_bytes("bf16")
    pairs = seqs * counts.attended_pairs(m, q_len, kv_len, causal=True)
    sparse = {k: v for k, v in dense.items() if k not in ("kv_b_proj", "attention")}
    sparse["q_absorb"] = _gemm(c, tokens, h * m.qk_nope_head_dim, m.kv_lora_rank, c.dev.absorb_flops, w_bytes=bf16)
    sparse["attention"] = sparse_mla_prefill_time(pairs, tokens, seqs * kv_len, h, m, c.ab, c.dev)
    sparse["o_absorb"] = _gemm(c, tokens, h * m.kv_lora_rank, m.v_head_dim, c.dev.absorb_flops, w_bytes=bf16)
    # Beyond top-k the faster of the two: the sparse MQA-mode kernel over the selected keys, or
    # the dense (MHA-mode) computation with the selection as a mask, which DeepSeek runs for
    # short prompts ("a masked MHA mode to simulate DSA", DeepSeek-V3.2-Exp report §2.1)
    faster = _total(sparse) < _total(dense)
    return _select((np.asarray(kv_len) > m.index_topk) & faster, sparse, dense)


def _attention_prefill_dense(c: _Ctx, tokens, seqs, q_len, kv_len, h):
    m = c.m
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
        "all_reduce": all_reduce_time(tokens, m.hidden_size, c.tp, c.dev, c.ab, c.fw),
    }


def _moe(c: _Ctx, tokens, phase: str):
    """MoE ops on one device whose attention DP rank holds `tokens` tokens: the TP ranks
    split them, route top-k, and the EP group's tokens meet at their experts."""
    m = c.m
    local = tokens / c.tp  # tokens each device routes (reduce-scatter after TP attention)
    total = tokens * c.dp  # tokens in the whole EP group
    pairs = total * m.num_experts_per_tok / c.ep * c.imbalance  # token-expert pairs on the busiest EP rank
    # the step waits for the busiest EP rank: the most distinct experts any rank reads
    hit = busiest_rank_experts_hit(m, total, c.ep, c.slots) if c.overheads else expected_experts_hit(m, total, c.slots)
    hit = np.maximum(hit, 1e-9)
    width = m.moe_intermediate_size / c.moe_tp
    ops = {
        "moe_norm": _norm(c, local, m.hidden_size),
        "gate": _gemm(c, local, m.hidden_size, m.n_routed_experts, w_bytes=c.ab)
        + elementwise_time(local * m.n_routed_experts * FP32_BYTES, c.dev),  # router GEMM + top-k
        "shared_expert": _mlp(c, local, m.hidden_size, m.moe_intermediate_size * m.n_shared_experts),
        "routed_experts": _mlp(c, pairs / hit, m.hidden_size, width, c.dev.routed_flops, hit, c.eb),
    }
    copies = local * m.num_experts_per_tok
    kind = c.fw.a2a_decode if phase == "decode" else c.fw.a2a_prefill
    if kind == "allgather_reducescatter":  # no all-to-all kernel: NCCL collectives over the EP group
        ops["dispatch"], ops["combine"] = allgather_reducescatter_time(tokens, m.hidden_size, c.tp, c.dp,
                                                                       c.dispatch_bytes, c.combine_bytes, c.dev)
        # the shared expert is split like the attention (TP): every token, 1/tp of its width
        # (same FLOPs as a replicated expert on tokens / tp, 1/tp of its weights read)
        ops["shared_expert"] = _mlp(c, tokens, m.hidden_size, m.moe_intermediate_size * m.n_shared_experts / c.tp)
    elif kind == "deepep_low_latency":  # low-latency kernels: one message per expert copy
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
        "all_reduce_mlp": all_reduce_time(tokens, m.hidden_size, c.tp, c.dev, c.ab, c.fw),
    }


def _head(c: _Ctx, tokens):
    """Final norm, LM head (vocab split over TP, BF16 weights) and sampling, once per step."""
    m = c.m
    v = m.vocab_size / c.tp
    return (_norm(c, tokens, m.hidden_size) + _gemm(c, tokens, m.hidden_size, v, w_bytes=c.ab)
            + elementwise_time(tokens * v * FP32_BYTES, c.dev))


def _context(m: Model, hw: Hardware, wl: Workload, layout: Layout, expert_imbalance, redundant_experts: int,
             framework: Framework | str | None = None, overheads: bool = True) -> _Ctx:
    imbalance = np.asarray(expert_imbalance, dtype=float)
    if not np.all(imbalance >= 1.0):
        raise InputError(f"expert imbalance is max/mean load per EP rank, so ≥ 1; got {expert_imbalance}")
    if redundant_experts < 0:
        raise InputError(f"redundant experts must be ≥ 0, got {redundant_experts}")
    dev = device(hw, wl)
    ep = np.asarray(layout.ep, dtype=float)
    # Its physical ceiling: the busiest EP rank gets at most min(k, experts it holds) of each
    # token's k routed copies, the mean rank k / ep of them, so max/mean ≤ ep · min(k, slots) / k
    # (all the load on one rank at most: ≤ ep).
    k = m.num_experts_per_tok
    ceiling = ep * np.minimum(k, (m.n_routed_experts + redundant_experts) / ep) / k
    over = (imbalance > ceiling * (1 + 1e-12)) & (ep > 1)  # at EP1 there is no other rank: it means nothing
    if np.any(over):
        i = np.unravel_index(np.argmax(over), over.shape) if np.ndim(over) else ()
        e, c = float(np.broadcast_to(ep, over.shape)[i]), float(np.broadcast_to(ceiling, over.shape)[i])
        raise InputError(f"expert imbalance {float(np.broadcast_to(imbalance, over.shape)[i]):g} is impossible: with "
                         f"EP {e:g} the busiest rank can take at most {c:g} × the mean load (all of each token's "
                         f"top-{k} experts it holds)")
    imbalance = np.minimum(imbalance, ceiling)  # 1 at EP1, where one rank holds all the load
    return _Ctx(
        m=m, dev=dev, wb=dtype_bytes(wl.weight_dtype), xb=gemm_input_bytes(wl.weight_dtype, wl.activation_dtype),
        ab=dtype_bytes(wl.activation_dtype), kvb=dtype_bytes(wl.kv_dtype),
        dispatch_bytes=wire_bytes(wl.dispatch_dtype), combine_bytes=wire_bytes(wl.combine_dtype),
        tp=np.asarray(layout.tp, dtype=float), dp=np.asarray(layout.dp, dtype=float),
        moe_tp=np.asarray(layout.moe_tp, dtype=float), ep=ep, imbalance=imbalance,
        slots=(m.n_routed_experts + redundant_experts) / ep, fw=load_framework(framework), overheads=overheads,
        eb=dtype_bytes(wl.expert_dtype),
    )


def _total(ops: Mapping[str, object]):
    return sum(np.asarray(v, dtype=float) for v in ops.values())


# Kernels each op launches as the roofline prices it (the ones whose floor it pays). NCCL and
# DeepEP transfers count one kernel each when they run; the low-latency kernels' send and
# receive halves are the four of ``a2a_kernels``, their transfers none of their own.
KERNELS = {
    "attn_norm": 1, "qkv_a_proj": 1, "q_b_proj": 1, "kv_b_proj": 1, "q_absorb": 1, "rope_cache": 1,
    "attention": 1, "o_absorb": 1, "o_proj": 1, "all_reduce": 1, "moe_norm": 1, "gate": 2,
    "shared_expert": 3, "routed_experts": 3, "a2a_kernels": 4, "dispatch": 1, "combine": 1,
    "mlp_norm": 1, "dense_mlp": 3, "all_reduce_mlp": 1,
}
_NO_KERNEL_OF_ITS_OWN = {"deepep_low_latency": ("dispatch", "combine")}
# Small kernels a serving engine launches around those, each paying a kernel floor: counted in
# DeepSeek-V3's decode layer as SGLang runs it (per-kernel trace of DeepSeek's H800 decode
# profile with its SGLang/B200 counterpart, zdszero.github.io 'deepseek_profile', D4 table):
# the q_a / kv_a RMSNorm (rmsnorm_split_col), the FP8 quantization before q_b and before
# o_proj (per_token_group_quant_fp8), three more rotary kernels (elementwise, unrolled and
# index elementwise), the copy before o_proj, the router's split-K reduce and score
# distribution, the up/gate output copy (vectorized_elementwise) and the quantization under
# the combine. 21 priced + 11 here = 32 kernels per MoE layer.
EXTRA_KERNELS = {"attn_norm": 1, "q_b_proj": 1, "rope_cache": 3, "o_proj": 2, "gate": 2, "routed_experts": 1,
                 "shared_expert": 1}


def _graph_overheads(ops: Mapping[str, object], c: "_Ctx", skip=()) -> dict:
    """Each op plus what its kernels cost beyond their own time: the small kernels it also
    launches (:data:`EXTRA_KERNELS`, a kernel floor each) and the launch gap before every
    kernel inside a CUDA graph (``launch_gap_us``)."""
    e = c.dev.eff
    if not c.overheads:
        return dict(ops)
    out = {}
    for k, v in ops.items():
        runs = np.asarray(v) > 0
        n = KERNELS.get(k, 1) * (k not in skip) + EXTRA_KERNELS.get(k, 0)
        out[k] = v + runs * (EXTRA_KERNELS.get(k, 0) * e.kernel_latency + n * e.launch_gap)
    return out


def kernels(ops: Mapping[str, object], c: "_Ctx | None" = None):
    """Kernels one layer launches: :data:`KERNELS` of every op that takes time (arrays over
    layouts where an op vanishes, e.g. the all-reduce at TP 1)."""
    skip = _NO_KERNEL_OF_ITS_OWN.get(c.fw.a2a_decode, ()) if c is not None else ()
    return sum(KERNELS.get(k, 1) * (np.asarray(v) > 0) for k, v in ops.items() if k not in skip)


def _eager(ops: Mapping[str, object], in_graph, launch: float, skip=()) -> dict:
    """Op times when the step runs outside a CUDA graph: the host launches every kernel, so an
    op takes at least its kernels × the host launch cost (the GPU waits for the CPU)."""
    return {k: np.where(in_graph, v, np.maximum(v, KERNELS.get(k, 1) * launch * (k not in skip) * (np.asarray(v) > 0)))
            for k, v in ops.items()}


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
    memory_capacity: float  # bytes the device reports (what frameworks apply their fractions to)
    memory_usable: object = 0.0  # bytes per device for weights + KV under the framework's memory rule
    step_time_tbo: object = None  # seconds per step with two-batch overlap, whatever the layout says
    tbo_dense_layer: Mapping[str, object] | None = None  # op → seconds, one dense layer, one of TBO's two micro-batches
    tbo_moe_layer: Mapping[str, object] | None = None  # op → seconds, one MoE layer, one of TBO's two micro-batches
    framework: str = ""  # the framework profile's name and version
    in_graph: object = True  # the step replays a CUDA graph (else the host launches each kernel)

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
    framework: Framework | str | None = None,
    overheads: bool = True,
) -> DecodeStep:
    """One decode step of `layout.batch` sequences per attention DP rank at KV length kv_len.

    With ``mtp_accept > 1`` each step verifies ``1 + mtp_draft`` tokens per sequence through
    the model, runs the MTP module once, and keeps ``mtp_accept`` tokens on average.
    ``expert_imbalance`` (max/mean routed load per EP rank, ≥ 1) scales the busiest rank's
    expert GEMMs and its dispatch/combine; ``redundant_experts`` are extra expert copies
    (EPLB), held (E + redundant) / ep per EP rank. ``framework`` (a profile name, path or
    :class:`~moecalc.frameworks.Framework`; default SGLang) sets the memory rule, the CUDA
    graph limit above which the host launches every kernel, the host time per step and the
    MoE all-to-all. ``overheads=False`` drops what serving adds around the priced kernels
    (small kernels, launch gaps) and reads the mean EP rank's experts instead of the
    busiest's: a seed's own accounting."""
    if not mtp_accept >= 1.0 or not math.isfinite(mtp_accept):
        raise InputError(f"MTP acceptance is accepted tokens per step, ≥ 1; got {mtp_accept}")
    mtp = mtp_accept > 1.0
    per_seq = 1.0 + mtp_draft if mtp else 1.0
    if mtp_accept > per_seq:
        raise InputError(f"MTP acceptance {mtp_accept:g} exceeds the {per_seq:g} tokens a step verifies")
    c = _context(m, hw, wl, layout, expert_imbalance, redundant_experts, framework, overheads)
    batch = np.asarray(layout.batch, dtype=float)
    tbo = np.asarray(layout.tbo, dtype=bool)
    kv = np.asarray(kv_len, dtype=float)
    c.fw.check_graph(batch, c.tp)
    graph = c.fw.in_graph(batch, c.tp)
    skip = _NO_KERNEL_OF_ITS_OWN.get(c.fw.a2a_decode, ())

    def layer(seqs, q_per_seq):
        tokens = seqs * q_per_seq
        attn = _attention_decode(c, tokens, seqs, q_per_seq, kv)
        dense = _graph_overheads({**attn, **_dense(c, tokens)}, c, skip)
        moe = _graph_overheads({**attn, **_moe(c, tokens, "decode")}, c, skip)
        return _eager(dense, graph, c.fw.eager_launch, skip), _eager(moe, graph, c.fw.eager_launch, skip)

    def step(seqs):
        """(dense layer ops, MoE layer ops, head) for `seqs` sequences per attention DP rank."""
        dense, moe = layer(seqs, per_seq)
        head = _head(c, seqs * per_seq)
        if mtp:  # the MTP module drafts each token: embedding and hidden state concatenated and
            # projected, one MoE layer, and its own pass through the (shared) LM head, on one
            # token per sequence, once per draft token (DeepSeek-V3 report §2.2)
            _, draft = layer(seqs, 1.0)
            head = head + mtp_draft * (_total(draft) + _gemm(c, seqs, 2 * m.hidden_size, m.hidden_size)
                                       + _head(c, seqs))
        return dense, moe, head

    nd, nm = m.n_dense_layers, m.n_moe_layers
    dense, moe, head = step(batch)
    serial = nd * _total(dense) + nm * _total(moe) + head
    d2, m2, h2 = step(batch / 2)
    overhead = c.dev.eff.tbo_overhead
    tbo_time = (nd * tbo_layer_time(d2, DENSE_STAGES, overhead) + nm * tbo_layer_time(m2, DECODE_STAGES, overhead)
                + 2.0 * h2)
    # the host's work per step (scheduling, output processing) beside or after the GPU's
    serial, tbo_time = c.fw.step_time(serial), c.fw.step_time(tbo_time)
    _check_time(serial, hw, c.fw)
    _check_time(tbo_time, hw, c.fw)

    # FLOPs the step needs per device (for MFU): absorbed MLA, wkv_a on the new tokens only.
    tokens = batch * per_seq
    mla = (counts.mla_flops(m, tokens, kv, 1.0, "absorbed") + 2.0 * tokens * m.hidden_size * m.kv_cache_dim
           + counts.indexer_flops(m, tokens, kv) * c.tp)  # the indexer is replicated on every TP rank
    moe_ffn = counts.expert_flops(m, tokens * (m.num_experts_per_tok + m.n_shared_experts))
    flops = (nm * (mla + moe_ffn) + nd * (mla + counts.dense_mlp_flops(m, tokens)) + counts.lm_head_flops(m, tokens)) / c.tp
    weights = weight_bytes_per_device(m, wl, layout, redundant_experts, mtp, c.fw.a2a_decode == "allgather_reducescatter")
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
        weight_bytes=weights,
        kv_bytes=kv_bytes_per_device(m, wl, batch, kv, mtp),
        memory_capacity=hw.memory_device_bytes,
        memory_usable=c.fw.usable_memory(hw.memory_device_bytes, weights),
        step_time_tbo=tbo_time,
        tbo_dense_layer=d2,
        tbo_moe_layer=m2,
        framework=f"{c.fw.name} {c.fw.version}",
        in_graph=graph,
    )


def _check_time(t, hw: Hardware, fw: Framework) -> None:
    """One error when the profiles make a step take no time or an infinite one."""
    t = np.asarray(t, dtype=float)
    if not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise InputError(f"{hw.path} with {fw.path}: the profiles give a step time of "
                         f"{float(t.flat[int(np.argmin(np.where(np.isfinite(t), t, -1)))]):g} s; check their "
                         "efficiencies, floors and overheads")


def tokens_per_s_per_device(step: DecodeStep, layout: Layout):
    """Output tokens per second per device: each attention DP rank (tp devices) emits
    batch × accepted tokens per step."""
    return step.batch * step.tokens_per_step / step.step_time / np.asarray(layout.tp, dtype=float)


def mfu(step, hw: Hardware, wl: Workload):
    """Model FLOPs utilization of the weight dtype's peak (decode step or prefill pass)."""
    time = step.step_time if isinstance(step, DecodeStep) else step.time
    return step.flops_per_device / time / hw.peak(wl.weight_dtype)


def check_fits(step: "DecodeStep | PrefillPass", hw: Hardware, what: str,
               framework: Framework | str | None = None) -> None:
    """One error, saying by how much, when a scalar step's weights and KV do not fit: under
    the memory rule of the framework the step was computed with, or of `framework` if given."""
    need = float(np.max(step.memory_bytes))
    if framework is None:
        have, name = float(np.min(step.memory_usable)), step.framework
    else:
        fw = load_framework(framework)
        have, name = float(np.min(usable_memory(hw, fw, step.weight_bytes))), f"{fw.name} {fw.version}"
    if need > have:
        under = f" under {name}'s memory rule" if name else ""
        raise InputError(
            f"{what} does not fit on {hw.name}: it needs {need / 1e9:.1f} GB per device (weights "
            f"{float(np.max(step.weight_bytes)) / 1e9:.1f} GB + KV cache {float(np.max(step.kv_bytes)) / 1e9:.1f} GB), "
            f"{have / 1e9:.1f} GB are usable{under}, over by {(need - have) / 1e9:.1f} GB")


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
    memory_usable: object
    # op → seconds of one of TBO's two micro-batches (half the tokens, on the SMs the all-to-all leaves)
    tbo_dense_layer: Mapping[str, object] | None = None
    tbo_moe_layer: Mapping[str, object] | None = None
    framework: str = ""  # the framework profile's name and version

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
    framework: Framework | str | None = None,
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
    c = _context(m, hw, wl, layout, expert_imbalance, redundant_experts, framework)
    q = np.maximum((1.0 - hit) * L, 1.0)  # new tokens per prompt
    tbo = np.asarray(layout.tbo, dtype=bool)

    def forward(tokens_dev, dev: Device):
        cc = replace(c, dev=dev)
        tokens = tokens_dev * cc.tp  # tokens of the attention DP rank
        seqs = tokens / q
        attn = _attention_prefill(cc, tokens, seqs, q, L)
        dense = _graph_overheads({**attn, **_dense(cc, tokens)}, cc)
        moe = _graph_overheads({**attn, **_moe(cc, tokens, "prefill")}, cc)
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
    if m.sparse:  # beyond top-k: the cheaper of absorbed (MQA-mode) sparse and masked dense attention; the indexer
        sparse_pairs = seqs * counts.attended_pairs(m, q, L, causal=True)
        attn_flops = np.where(L > m.index_topk, np.minimum(attn_flops, 2.0 * m.num_attention_heads * sparse_pairs
                                                           * (m.kv_cache_dim + m.kv_lora_rank)), attn_flops)
        attn_flops = attn_flops + seqs * counts.indexer_flops(m, q, L, causal=True) * c.tp
    mla_gemm = sum(v for k, v in counts.mla_ops(m, tokens, tokens, 0.0, "plain").items()
                   if k not in counts.ATTENTION_OPS and k not in ("w_uk", "w_uv"))
    mla_gemm = mla_gemm + 2.0 * seqs * L * m.kv_lora_rank * m.num_attention_heads * (m.qk_nope_head_dim + m.v_head_dim)
    mla = attn_flops + mla_gemm
    moe_ffn = counts.expert_flops(m, tokens * (m.num_experts_per_tok + m.n_shared_experts))
    flops = (nm * (mla + moe_ffn) + nd * (mla + counts.dense_mlp_flops(m, tokens)) + counts.lm_head_flops(m, seqs)) / c.tp
    kv = kv_bytes_per_device(m, wl, seqs, L)
    weights = weight_bytes_per_device(m, wl, layout, redundant_experts,
                                      shared_split=c.fw.a2a_prefill == "allgather_reducescatter")
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
        weight_bytes=weights,
        kv_bytes=kv,
        memory_usable=c.fw.usable_memory(hw.memory_device_bytes, weights),
        tbo_dense_layer=d2,
        tbo_moe_layer=m2,
        framework=f"{c.fw.name} {c.fw.version}",
    )
