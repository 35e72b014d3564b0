"""The ``seed002`` timing policy: seed 002's assumptions laid over the roofline model.

Seed 002 (``../shared/seeds/002_e810cd7dac6db39e.txt``) searches SG2260E deployments of
DeepSeek-V3 with a simulator it does not print. What it states (one 128 TFLOPS figure,
273 GB/s × 0.893, 64 GB/s inside a TP group and 16 GB/s between groups), what its own
tables decide and, where it is silent, what the tool it calls documents (DS_TPU) are data in
``params/policy/seed002.yaml``. This module only turns that data into the hardware and
workload the roofline sees:

* every op runs at the weight dtype's peak with no compute efficiency (attention included),
  and its compute time is *added* to its memory time (``compute_memory_overlap: 0``, which
  the seed's tables decide) instead of hidden under it;
* a one-byte KV cache (DS_TPU's FP8_BYTES loads), one-byte dispatch and combine;
* links at the stated bandwidth × DS_TPU's ``bw_urate``, DS_TPU's 0.59 µs start latency;
* a TP group of any size is one direct-link domain (its all-reduce at the intra-group
  bandwidth; EP traffic to chips outside the group at the inter-group bandwidth).

Everything else (which weights each chip reads, KV read by every TP rank, two-batch
overlap, memory) is the roofline's: no formula is repeated here. ``batch`` keeps the
roofline's meaning, sequences per attention-DP rank; seed 002's "Batch" is per chip, i.e.
``batch / tp``, and the policy's ``batch_per: device`` makes that the search's default.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from .. import counts
from ..errors import InputError
from ..profiles import EFFICIENCY_FIELDS, EFFICIENCY_OPTIONAL, Hardware, Model, Spec, Workload, load_mapping
from ..units import dtype_bytes
from . import roofline

POLICY_SPEC = Spec(
    "map",
    children={
        "name": Spec("str"),
        "sources": Spec("strings"),
        "compute_efficiency": Spec("fraction", upper=1),
        "link_efficiency": Spec("fraction", upper=1),
        "latency_us": Spec("number", zero_ok=True),
        "tp_group_is_link_domain": Spec("bool"),
        "dispatch_dtype": Spec("dtype"),
        "combine_dtype": Spec("dtype"),
        "kv_dtype": Spec("dtype"),
        "compute_memory_overlap": Spec("fraction", zero_ok=True, upper=1),
        "batch_per": Spec("str"),
    },
)
BATCH_PER = ("rank", "device")  # as moecalc.search counts a layout's batch


@dataclass(frozen=True)
class Seed002Policy:
    path: Path
    compute_efficiency: float
    link_efficiency: float
    latency_us: float
    tp_group_is_link_domain: bool
    dispatch_dtype: str
    combine_dtype: str
    kv_dtype: str
    compute_memory_overlap: float  # 0: each op's compute time adds to its memory time
    batch_per: str  # what a search's batch counts unless the caller says


@lru_cache(maxsize=8)
def load_policy(name_or_path: str = "seed002") -> Seed002Policy:
    path, d = load_mapping("policy", name_or_path, POLICY_SPEC)
    d.pop("name"), d.pop("sources")
    if d["batch_per"] not in BATCH_PER:
        raise InputError(f"{path}: field 'batch_per': must be one of {', '.join(BATCH_PER)}, got {d['batch_per']!r}")
    return Seed002Policy(path=path, **d)


def seed_view(hw: Hardware, wl: Workload, policy: Seed002Policy | None = None) -> tuple[Hardware, Workload]:
    """`hw` and `wl` as seed 002 sees them. DRAM efficiency stays the profile's (0.893 on
    SG2260E is the seed's own figure); compute and link efficiencies and every fixed
    latency are the policy's; the roofline's optional effects (tile padding, usable-memory
    share, ...) are off, as the seed states none."""
    p = policy or load_policy()
    roofline.efficiency(hw)  # one error here if the profile lacks what the roofline needs
    source = f"{p.path.name} (seed 002)"
    seed = {name: p.compute_efficiency for name in ("gemm", "grouped_gemm", "attention")}
    seed.update({name: p.link_efficiency for name in ("scale_up", "scale_out")})
    seed.update({name: p.latency_us for name in EFFICIENCY_FIELDS if name.endswith("_latency_us")})
    seed["tbo_overhead_us"] = p.latency_us
    seed["compute_memory_overlap"] = p.compute_memory_overlap
    eff = {name: None for name in EFFICIENCY_OPTIONAL}
    eff.update({name: entry for name, entry in hw.efficiency.items() if name not in EFFICIENCY_OPTIONAL})
    eff.update({name: {"value": value, "source": source} for name, value in seed.items()})
    peak = hw.peak(wl.weight_dtype)
    # One compute figure for all math: the BF16 attention runs at the weight dtype's peak too.
    seed_hw = replace(hw, efficiency=eff, peak_flops={**hw.peak_flops, wl.weight_dtype: peak, "bf16": peak})
    seed_wl = replace(wl, dispatch_dtype=p.dispatch_dtype, combine_dtype=p.combine_dtype, kv_dtype=p.kv_dtype)
    return seed_hw, seed_wl


def decode(
    m: Model,
    hw: Hardware,
    wl: Workload,
    layout: roofline.Layout,
    kv_len,
    mtp_accept: float = 1.0,
    mtp_draft: int = 1,
    policy: Seed002Policy | None = None,
) -> roofline.DecodeStep:
    """roofline.decode under seed 002's assumptions (same signature, same DecodeStep)."""
    p = policy or load_policy()
    seed_hw, seed_wl = seed_view(hw, wl, p)
    if p.tp_group_is_link_domain:
        # The domain follows each layout's TP group; roofline's link primitives are elementwise.
        seed_hw = replace(seed_hw, scale_up_domain=np.asarray(layout.tp))
    return roofline.decode(m, seed_hw, seed_wl, layout, kv_len, mtp_accept, mtp_draft)


# ---------------------------------------------------------------- seed 002's block table

BLOCKS = ("Embedding", "MM_QKV", "MLA", "Attention_FC", "Dense_MLP", "MoE", "LM_Head")


def blocks(
    m: Model,
    hw: Hardware,
    wl: Workload,
    layout: roofline.Layout,
    kv_len,
    policy: Seed002Policy | None = None,
) -> dict[str, object]:
    """Seconds of each block of seed 002's §6 table, serial schedule: Dense_MLP from a dense
    layer, MoE from an MoE layer, the attention blocks from either (they are the same), the
    embedding and LM head once per step. The TP all-reduce after attention is booked under
    Attention_FC, norms with the block they feed."""
    p = policy or load_policy()
    step = decode(m, hw, wl, layout, kv_len, policy=p)
    seed_hw, seed_wl = seed_view(hw, wl, p)
    dev = roofline.device(seed_hw, seed_wl)
    tokens = np.asarray(layout.batch, dtype=float)
    moe, dense = step.moe_layer, step.dense_layer
    pick = lambda ops, names: sum(ops[k] for k in names if k in ops)  # noqa: E731
    # The lookup reads one embedding row (activation dtype) per token and writes it.
    lookup = 2.0 * counts.hidden_bytes(m, tokens, dtype_bytes(seed_wl.activation_dtype))
    return {
        "Embedding": roofline.elementwise_time(lookup, dev),
        "MM_QKV": pick(moe, ("attn_norm", "qkv_a_proj", "q_b_proj", "q_absorb", "rope_cache")),
        "MLA": pick(moe, ("attention",)),
        "Attention_FC": pick(moe, ("o_absorb", "o_proj", "all_reduce")),
        "Dense_MLP": pick(dense, ("mlp_norm", "dense_mlp", "all_reduce_mlp")),
        "MoE": pick(moe, ("moe_norm", "gate", "shared_expert", "routed_experts", "a2a_kernels", "dispatch", "combine")),
        "LM_Head": step.head,
    }
