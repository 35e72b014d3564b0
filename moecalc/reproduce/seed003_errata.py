"""Seed 003's errata: where its figures or premises are wrong, each with a corrected figure.

Every corrected figure is computed here, at run time, from :mod:`moecalc.counts` and
:mod:`moecalc.policies.seed003` (with explicit, small arithmetic on counted quantities),
under the assumptions stated with it. :func:`render_markdown` writes the book page
``book/errata-seed-003.md`` (``moecalc reproduce seed-003 --errata``); a test keeps the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from .. import counts
from ..policies import seed003 as policy
from ..profiles import load_hardware, load_model, load_workload
from ..units import GB, GB_PER_S, GFLOP, MILLION, MS, TFLOPS, BILLION, KiB, MiB, dtype_bytes

SEED_FILE = "../shared/seeds/003_7b871464023dcd82.txt"

# FlashMLA's FP8 KV-cache layout (DeepSeek-V3.2): per token and layer, the 512-wide latent in
# FP8 with one FP32 scale per 128-element tile, and the 64-wide RoPE key kept in BF16.
FP8_TILE = 128


@dataclass(frozen=True)
class Erratum:
    id: str
    title: str
    section: str  # where in seed 003
    seed_says: str  # what the seed says, with its figure
    seed_figure: str  # the figure as the seed prints or implies it, for the summary table
    corrected: float  # the corrected figure, computed at run time, in `corrected_unit`
    corrected_unit: str
    corrected_text: str  # the corrected figure as the page prints it
    why: str
    assumptions: str
    table: tuple[Sequence[str], Sequence[Sequence[str]]] | None = None  # an optional detail table


def _n(x: float, digits: int = 2) -> str:
    return f"{x:,.{digits}f}"


def errata() -> list[Erratum]:
    m = load_model("deepseek-v3")
    wl = load_workload("seed-003")
    h800, h20, h20_3e = (load_hardware(k) for k in ("h800", "h20", "h20-3e"))
    pol = policy.load_policy()
    seq, hit = wl.prompt_len, wl.kv_cache_hit_rate
    fp8, bf16 = dtype_bytes("fp8"), dtype_bytes("bf16")
    out: list[Erratum] = []

    # E1: the expert FLOP typo.
    expert_ptflops = 2 * counts.expert_params(m, bias=True) / MILLION  # ptflops MACs per token = params
    expert_flops = counts.expert_flops(m, 1) / MILLION
    out.append(Erratum(
        "E1", "Expert FLOPs per token: 488.1M is a typo for 88.1M", "§1.4 数据汇总 (FLOPs table)",
        "The FLOPs table gives one expert 488.1M FLOPs per token.", "488.1M",
        expert_flops, "MFLOP", f"{expert_ptflops:.1f}M ({_n(expert_flops)}M without biases)",
        f"One expert is three {m.hidden_size:,} × {m.moe_intermediate_size:,} matrices: 2 × 3 × "
        f"{m.hidden_size:,} × {m.moe_intermediate_size:,} = {_n(expert_flops)} MFLOP per token. The seed's "
        "own §1.3 says 44.05M MACs, about 88.1 MFLOPS; the table's leading 4 is a slip. Its timing code uses "
        "the right formula, so no time in the seed is affected.",
        "2 FLOPs per multiply-accumulate; ptflops counts one more MAC per bias.",
    ))

    # E2: the parameter ratio of premultiplied to plain MLA.
    premult = counts.mla_params(m, "premultiplied")
    ratio_seed = premult / counts.mla_params(m, bias=True)
    ratio_clean = premult / counts.mla_params(m)
    out.append(Erratum(
        "E2", "Absorbed MLA parameter ratio: 3.197 on its own figures is 3.196", "§1.1.2 矩阵吸收模式",
        "\"参数量也增加到 598.14M(同样约 3.197 倍)\": the premultiplied MLA has 3.197× the 187.17M parameters.",
        "3.197", ratio_seed, "ratio", f"{ratio_seed:.3f}",
        f"598.147072M / 187.17M = {ratio_seed:.4f}; the seed reuses its FLOPs ratio (3.19689, which does round "
        f"to 3.197). Against the bias-free 187.11M (see E10) the ratio is {ratio_clean:.4f}: the 3.197 holds "
        "only if both sides are counted the same way.",
        "Parameters as counted by counts.mla_params (premultiplied form: no biases).",
    ))

    # E3: the hidden 0.8 × 0.85 derate.
    rows = []
    for hw in (h800, h20):
        decode_rates = policy.rates(hw, pol, 0)
        prefill_rates = policy.rates(hw, pol, policy.prefill_comm_sms(hw, pol))
        for dtype, get in (("bf16", "fp16_flops"), ("fp8", "fp8_flops")):
            peak = hw.peak(dtype)
            rows.append((hw.name, dtype.upper(), _n(peak / TFLOPS, 1), _n(pol.discount_rate * peak / TFLOPS, 1),
                         _n(getattr(decode_rates, get) / TFLOPS, 1), _n(getattr(prefill_rates, get) / TFLOPS, 1)))
    stated = replace(pol, peak_derate=1.0)
    tps_seed = policy.prefill(m, h800, seq, hit, 4).tokens_per_s_per_node_overlap
    tps_stated = policy.prefill(m, h800, seq, hit, 4, policy=stated).tokens_per_s_per_node_overlap
    h800_fp8 = policy.rates(h800, pol, 0).fp8_flops
    out.append(Erratum(
        "E3", "A hidden 68 % derate: every FLOPS figure is 0.8 × 0.85 of the datasheet", "§1.4 GPU_perf",
        f"\"整体性能按峰值 85% 估计\" (85 % of peak), while its code passes fp8_flops = "
        f"{pol.peak_derate * h800.peak('fp8') / TFLOPS:.1f} for the "
        f"H800's {h800.peak('fp8') / TFLOPS:,.0f}: {_n(h800_fp8 / TFLOPS, 1)} TFLOPS FP8 in decode.",
        f"{_n(h800_fp8 / TFLOPS, 1)} TFLOPS (H800 FP8)",
        pol.discount_rate * h800.peak("fp8") / TFLOPS, "TFLOPS",
        f"{_n(pol.discount_rate * h800.peak('fp8') / TFLOPS, 1)} TFLOPS",
        f"Its GPU_perf figures are {pol.peak_derate:g} × the datasheet (H800 FP8 "
        f"{pol.peak_derate * h800.peak('fp8') / TFLOPS:.1f}, BF16 {pol.peak_derate * h800.peak('bf16') / TFLOPS:.1f}; "
        f"H20 FP8 {pol.peak_derate * h20.peak('fp8') / TFLOPS:.1f}), then × {pol.discount_rate:g}: "
        f"{pol.peak_derate * pol.discount_rate:.0%} of the datasheet, and × (SMs − communication SMs) / SMs "
        f"in prefill on top. The 85 % the text states would raise the H800 TP4 prefill from "
        f"{_n(tps_seed, 1)} to {_n(tps_stated, 1)} tokens/s per node (overlapped).",
        "Dense (non-sparse) datasheet peaks; the 0.8 is undocumented in the seed and kept by the seed003 "
        "policy as `peak_derate` so its figures reproduce.",
        table=(("GPU", "dtype", "datasheet TFLOPS", "stated 85 %", "seed decode (68 %)", "seed prefill"), rows),
    ))

    # E4: binary prefixes read as decimal ones.
    r = policy.rates(h800, pol, policy.prefill_comm_sms(h800, pol))
    ar_bytes = counts.hidden_bytes(m, seq, bf16)
    ar_seed = policy.all_reduce_time(m, r, seq)
    ar_true = ar_bytes / r.scale_up_bandwidth
    rd = policy.rates(h800, pol, 0)
    batch = 128
    d128 = policy.decode(m, h800, batch, seq, 1, output_len=wl.output_len)
    kv_bytes = seq * counts.kv_bytes_per_token(m, fp8, layers=1) * batch
    kv_true = kv_bytes / rd.memory_bandwidth
    # The seed's KV-load time: its TP1 SparseMLA (no all-reduce) minus the MLA compute.
    gemm, attn = policy.mla_times(m, rd, 1, seq, 1.0, "premultiplied")
    kv_seed = d128.layers["SparseMLA"] - (gemm + attn) * batch
    mem_seed = d128.memory_available
    mem_true = h800.memory_bytes * pol.memory_util_rate
    out.append(Erratum(
        "E4", "MiB and GiB divided by GB/s", "§2.1, §2.4, §3.2, §3.3",
        f"All-reduce and all-to-all sizes are bytes / 1024 / 1024 divided by GB/s and called ms; KV loads are "
        f"bytes / 1024³ over GB/s; the 80 GB of HBM is multiplied by 1024³. H800 prefill TP4 all-reduce: "
        f"{_n(ar_seed / MS, 3)} ms.",
        f"{_n(ar_seed / MS, 3)} ms (H800 all-reduce)", ar_true / MS, "ms", f"{_n(ar_true / MS, 3)} ms",
        f"2^20 B is 1.049 MB and 2^30 B is 1.074 GB, while 1 GB/s is 10^9 B/s: every communication time in the "
        f"seed is {1 - 1e6 / MiB:.1%} short and every KV-load time {1 - GB / 2**30:.1%} short, and the usable "
        f"memory is {2**30 / GB - 1:.1%} too large. The H800 all-reduce of {seq:,} × 7,168 × 2 B = "
        f"{_n(ar_bytes / 1e6)} MB over {_n(r.scale_up_bandwidth / GB_PER_S, 1)} GB/s takes {_n(ar_true / MS, 3)} ms, "
        f"not {_n(ar_seed / MS, 3)}; loading batch {batch}'s FP8 KV for one layer ({_n(kv_bytes / 1e6, 1)} MB) "
        f"takes {_n(kv_true / MS, 4)} ms, not {_n(kv_seed / MS, 4)}; 0.9 × 80 GB is {_n(mem_true / GB, 1)} GB, "
        f"not {_n(mem_seed / GB, 1)}.",
        "The seed's derated bandwidths (0.85 × datasheet), decimal GB and GB/s as the datasheets mean them.",
        table=(("quantity", "seed", "corrected"), (
            ("H800 prefill all-reduce, TP4 (ms)", _n(ar_seed / MS, 4), _n(ar_true / MS, 4)),
            (f"H800 decode KV load, batch {batch}, one layer (ms)", _n(kv_seed / MS, 4), _n(kv_true / MS, 4)),
            ("H800 usable memory, 0.9 × 80 GB (GB)", _n(mem_seed / GB, 1), _n(mem_true / GB, 1)),
        )),
    ))

    # E5: H20 figures that are not the datasheet's.
    # the seed003 policy without its H20 bandwidth overrides: the datasheet figures apply
    datasheet = replace(pol, hardware={**pol.hardware,
                                       h20.name: {"comm_sms_prefill": policy.prefill_comm_sms(h20, pol)}})
    tp = policy.best_decode_tp(m, h20, 32, seq)
    d_seed = policy.decode(m, h20, 32, seq, tp, output_len=wl.output_len)
    d_sheet = policy.decode(m, h20, 32, seq, tp, output_len=wl.output_len, policy=datasheet)
    over = pol.hardware[h20.name]
    out.append(Erratum(
        "E5", "H20 memory and NVLink bandwidths below the datasheet", "§1.4 GPU table and GPU_perf; §3",
        f"H20 memory bandwidth {over['memory_bandwidth_gb_s'] / GB_PER_S:,.0f} GB/s (the H800's figure) and, in "
        f"its code, NVLink {over['scale_up_bandwidth_gb_s'] / GB_PER_S:,.0f} GB/s (its own table says 450). H20 "
        f"decode TP{tp}, batch 32: TPOT {_n(d_seed.tpot_overlap / MS, 3)} ms overlapped, "
        f"{_n(d_seed.tpot / MS, 3)} ms not.",
        f"H20 TPOT {_n(d_seed.tpot_overlap / MS, 3)} ms", d_sheet.tpot_overlap / MS, "ms",
        f"{_n(d_sheet.tpot_overlap / MS, 3)} ms ({_n(d_sheet.tpot / MS, 3)} ms not overlapped)",
        f"The HGX H20 datasheet gives {h20.memory_bandwidth / GB_PER_S:,.0f} GB/s HBM3 and "
        f"{h20.scale_up_bandwidth / GB_PER_S:,.0f} GB/s NVLink per direction. Rerun with them (everything else "
        f"the seed's), the H20 decode step gets faster; tokens/s per GPU overlapped go from "
        f"{_n(d_seed.tokens_per_s_per_gpu_overlap, 1)} to {_n(d_sheet.tokens_per_s_per_gpu_overlap, 1)}.",
        "params/hardware/h20.yaml (datasheet); the seed003 policy without its H20 bandwidth overrides; "
        f"KV length {seq:,} and TP{tp} as in the seed's TL;DR.",
    ))

    # E6: the KV-transfer table's units.
    rows = []
    real = {}
    for hw in (h800, h20):
        p = policy.prefill(m, hw, seq, hit, 4)
        for label, tps, seed_fig in (("Sum(Overlap)", p.tokens_per_s_per_node_overlap, p.kv_transfer_overlap),
                                     ("Sum", p.tokens_per_s_per_node, p.kv_transfer)):
            for dtype in ("fp8", "bf16"):
                gbs = tps * counts.kv_bytes_per_token(m, dtype_bytes(dtype)) / GB
                real[hw.name, label, dtype] = gbs
                rows.append((f"{hw.name} {dtype.upper()}", label, _n(seed_fig[dtype], 1), _n(gbs, 2)))
    worst = real[h800.name, "Sum(Overlap)", "bf16"]
    nic = h800.scale_out_bandwidth / GB_PER_S
    out.append(Erratum(
        "E6", "The KV-transfer table is MiB/s for one layer, not GB/s per node", "§2.7 KVCache 计算",
        f"H800 prefill produces {_n(policy.prefill(m, h800, seq, hit, 4).kv_transfer_overlap['bf16'], 1)} GB/s "
        f"of FP16 KV cache per node, which \"已超过连接 CPU 的 400Gbps(50GB/s)网卡带宽\".",
        f"{_n(policy.prefill(m, h800, seq, hit, 4).kv_transfer_overlap['bf16'], 1)} GB/s (H800 FP16)", worst, "GB/s",
        f"{_n(worst, 2)} GB/s",
        f"Its formula is tokens/s per node × 576 / 1024 / 1024: 576 elements is one layer's latent, one byte each, "
        f"and / 2^20 makes MiB. A token's KV over all {m.num_hidden_layers} layers is "
        f"{counts.kv_bytes_per_token(m, fp8):,.0f} B in FP8 and {counts.kv_bytes_per_token(m, bf16):,.0f} B in "
        f"BF16, so an H800 node emits {_n(worst, 2)} GB/s of BF16 KV at the seed's own prefill rate: "
        f"{worst / nic:.0%} of one {nic:.0f} GB/s NIC. The conclusion that BF16 KV needs GPU-direct RDMA because "
        "it exceeds the CPU NIC does not follow from these numbers.",
        "The seed's own tokens/s per node (TP4, all 4,383 prompt tokens of each sequence produce KV that must "
        "reach decode); decimal GB; no quantization scales (see E9 for those).",
        table=(("GPU, KV dtype", "row", "seed (its \"GB/s\")", "GB/s per node, 61 layers"), rows),
    ))

    # E7: decode never reads the weights.
    ep, redundant = pol.decode_ep, pol.decode_redundant_experts
    experts_held = policy.experts_per_gpu(m, ep, redundant)
    weight_bytes = fp8 * (
        m.num_hidden_layers * counts.mla_params(m)
        + m.n_dense_layers * counts.dense_mlp_params(m)
        + m.n_moe_layers * (experts_held * counts.expert_params(m) + counts.gate_params(m))
        + counts.embedding_params(m)  # the LM head, read once per step
    )
    weight_time = weight_bytes / rd.memory_bandwidth
    rows = []
    for b in (32, 64, 128):
        d = policy.decode(m, h800, b, seq, 1, output_len=wl.output_len)
        rows.append((str(b), _n(d.tpot_overlap / MS, 3), _n(weight_time / MS, 3),
                     _n((d.tpot_overlap + weight_time) / MS, 3), f"{weight_time / d.tpot_overlap:.0%}"))
    d32 = policy.decode(m, h800, 32, seq, 1, output_len=wl.output_len)
    mla_time = m.n_dense_layers * d32.layers["DenseMLA"] + m.n_moe_layers * d32.layers["SparseMLA"]
    out.append(Erratum(
        "E7", "Decode reads the KV cache but never the weights", "§3.3-§3.6",
        f"TPOT = compute + KV-cache load; H800 TP1 batch 32: {_n(d32.tpot_overlap / MS, 3)} ms overlapped.",
        f"H800 TPOT {_n(d32.tpot_overlap / MS, 3)} ms", (d32.tpot_overlap + weight_time) / MS, "ms",
        f"{_n((d32.tpot_overlap + weight_time) / MS, 3)} ms (+{_n(weight_time / MS, 2)} ms of weight reads)",
        f"Every step streams every weight the GPU holds through HBM once. One H800 in the seed's EP{ep} decode "
        f"(TP1 attention, {experts_held:g} experts per MoE layer: {(m.n_routed_experts + redundant) // ep} routed "
        f"+ {m.n_shared_experts} shared) holds {_n(weight_bytes / GB)} GB of FP8 weights; at the seed's "
        f"{_n(rd.memory_bandwidth / GB_PER_S, 1)} GB/s that is {_n(weight_time / MS, 2)} ms per step whatever the "
        f"batch, against {_n(mla_time / MS, 2)} ms for all 61 MLA layers at batch 32. Added the seed's way "
        "(times add), it is:",
        f"FP8 weights, 1 B per parameter, no biases; MLA absorbed at run time, so the original "
        f"{_n(counts.mla_params(m) / MILLION)}M weights per layer are read (the seed's premultiplied form would read "
        f"{_n(premult / MILLION)}M); {m.n_dense_layers} dense MLPs, the router and the LM head; norms and the "
        "embedding rows (a few per token) left out; the seed's derated bandwidth, decimal GB.",
        table=(("batch", "seed TPOT(Overlap) ms", "weight reads ms", "sum ms", "weights / seed TPOT"), rows),
    ))

    # E8: decode all-reduce sized by the sequence length.
    rows = []
    best_tp = policy.best_decode_tp(m, h20, 32, seq)
    for hw, tp, b in ((h20, best_tp, 32), (h20_3e, 8, 32), (h20_3e, 8, 64)):
        rr = policy.rates(hw, pol, 0)
        d = policy.decode(m, hw, b, seq, tp, output_len=wl.output_len)
        ar_seq, ar_batch = policy.all_reduce_time(m, rr, seq), policy.all_reduce_time(m, rr, b)
        fixed = d.tpot_overlap - m.n_moe_layers * (ar_seq - ar_batch)
        rows.append((f"{hw.name} TP{tp}", str(b), _n(ar_seq / MS, 4), _n(ar_batch / MS, 4),
                     _n(d.tpot_overlap / MS, 3), _n(fixed / MS, 3)))
        if hw is h20:
            h20_fixed, h20_seed = fixed, d.tpot_overlap
    out.append(Erratum(
        "E8", "Decode all-reduce sized by the sequence length, not the tokens in flight", "§3.3 decode_mla_elapse_time",
        f"all_reduce_comm_size = seq_len × dim × 2 B in decode too: {seq:,} × 7,168 × 2 B = "
        f"{_n(counts.hidden_bytes(m, seq, bf16) / 1e6)} MB per layer. H20 TP{best_tp}, batch 32: TPOT "
        f"{_n(h20_seed / MS, 3)} ms overlapped.",
        f"H20 TPOT {_n(h20_seed / MS, 3)} ms", h20_fixed / MS, "ms", f"{_n(h20_fixed / MS, 3)} ms",
        f"A decode step all-reduces one hidden vector per sequence in the batch (batch × 7,168 × 2 B, "
        f"{_n(counts.hidden_bytes(m, 32, bf16) / 1e3, 1)} kB at batch 32), not one per prompt token: "
        f"the seed's message is {seq / 32:.0f}× too large at batch 32. "
        "Corrected with everything else left as the seed has it (its size / bandwidth formula, which also "
        "omits the 2 (n − 1) / n of a ring all-reduce):",
        "Only the all-reduce size changes; the seed's MiB-per-GB/s units (E4) are kept so the change is isolated. "
        "H800 rows are TP1 and have no all-reduce.",
        table=(("GPU", "batch", "seed AR ms/layer", "batch-sized AR ms/layer", "seed TPOT(Overlap) ms",
                "corrected ms"), rows),
    ))

    # E9: FP8 KV without scales; the reference implementation caches BF16.
    lat, rope = m.kv_lora_rank, m.qk_rope_head_dim
    seed_kv = counts.kv_bytes_per_token(m, fp8, layers=1)
    flashmla_kv = lat * fp8 + (lat / FP8_TILE) * dtype_bytes("fp32") + rope * bf16
    ref_kv = counts.kv_bytes_per_token(m, bf16, layers=1)
    bw = rd.memory_bandwidth
    rows = []
    for label, per_layer in (("seed FP8, no scales", seed_kv), ("FP8 with tile scales (FlashMLA)", flashmla_kv),
                             ("BF16 (reference implementation)", ref_kv)):
        extra = m.num_hidden_layers * seq * batch * (per_layer - seed_kv) / bw
        rows.append((label, f"{per_layer:,.0f}", _n(per_layer * m.num_hidden_layers / KiB),
                     _n((d128.tpot_overlap + extra) / MS, 3)))
    out.append(Erratum(
        "E9", "FP8 KV cache counted without its scales; the reference caches BF16", "§1.1.1, §1.4, §3.2-§3.6",
        f"KV cache 576 B per token per layer in FP8 ({_n(counts.kv_bytes_per_token(m, fp8) / KiB)} KB per token).",
        "576 B", flashmla_kv, "B per token per layer", f"{flashmla_kv:,.0f} B (FP8 + scales) or {ref_kv:,.0f} B (BF16)",
        f"FP8 needs scales: FlashMLA's FP8 cache stores the {lat} latent values in FP8 ({lat * fp8:.0f} B), "
        f"{lat // FP8_TILE} FP32 scales, one per {FP8_TILE} values ({lat / FP8_TILE * 4:.0f} B), and the {rope}-wide "
        f"RoPE key in BF16 ({rope * bf16:.0f} B): {flashmla_kv:.0f} B. DeepSeek's reference inference code keeps "
        f"the latent cache in BF16: {ref_kv:,.0f} B. KV loads and KV memory grow by {flashmla_kv / seed_kv - 1:.0%} "
        f"or {ref_kv / seed_kv - 1:.0%}. H800 TP1 batch {batch} TPOT(Overlap), with the extra bytes loaded "
        "(the seed's way, times add):",
        f"KV length {seq:,} as in the seed; the extra load at its derated {_n(bw / GB_PER_S, 1)} GB/s, decimal GB.",
        table=(("KV format", "B per token per layer", "KiB per token (61 layers)", f"TPOT(Overlap) ms, batch {batch}"),
               rows),
    ))

    # E10: biases in the parameter totals.
    seed_total = counts.total_params(m, bias=True, norms=False)
    true_total = counts.total_params(m)
    out.append(Erratum(
        "E10", "nn.Linear biases counted as parameters", "§1.1-§1.4",
        "MLA 187.17M per layer, model 671.16B in total.", "187.17M; 671.16B",
        true_total / BILLION, "B params", f"{_n(counts.mla_params(m) / MILLION)}M; {_n(true_total / BILLION)}B",
        f"The seed runs ptflops on nn.Linear modules built with their default bias=True; DeepSeek-V3's projections "
        f"have no biases (config.json: attention_bias false). Without them an MLA block has "
        f"{_n(counts.mla_params(m) / MILLION)}M parameters and the main model {_n(true_total / BILLION)}B "
        f"(biases counted exactly: {_n(seed_total / BILLION)}B; the seed's 671.16B is the sum of its rounded "
        "and truncated column). DeepSeek's 671B is this figure; the 14B MTP module is apart.",
        "counts.total_params: MLA, dense MLPs, 257 experts × 58 layers, router weights and their score-correction "
        "bias (which DeepSeek-V3 has), embedding, LM head and RMSNorm weights; no MTP module.",
    ))

    # E11: weight-premultiplied absorption.
    seed_1 = counts.mla_flops(m, 1, 1, 0.0, "premultiplied")
    run_1 = counts.mla_flops(m, 1, 1, 0.0, "absorbed")
    seed_kv_f = counts.mla_flops(m, 1, seq, 1.0, "premultiplied")
    run_kv_f = counts.mla_flops(m, 1, seq, 1.0, "absorbed")
    g_p, a_p = policy.mla_times(m, rd, 1, seq, 1.0, "premultiplied")
    g_a, a_a = policy.mla_times(m, rd, 1, seq, 1.0, "absorbed")
    d32_fixed = d32.tpot_overlap - m.num_hidden_layers * 32 * ((g_p + a_p) - (g_a + a_a))
    out.append(Erratum(
        "E11", "Absorbed MLA multiplied into the weights ahead of time", "§1.1.2, §3.2-§3.6",
        f"Decode uses mla_matabsob_flops: {seed_1 / GFLOP:.4f} GFLOP per token at KV length 1, "
        f"{seed_kv_f / GFLOP:.4f} at {seq:,}; 598.14M parameters per layer.",
        f"{seed_kv_f / GFLOP:.3f} GFLOP per token", run_kv_f / GFLOP, "GFLOP", f"{run_kv_f / GFLOP:.3f} GFLOP",
        f"Absorption is done at run time, per head (DeepSeek's inference code, FlashMLA): q_nope · W_UK and the "
        f"latent output · W_UV are small per-head products, and the weights stay the original "
        f"{_n(counts.mla_params(m) / MILLION)}M. Premultiplying instead gives {seed_1 / run_1:.2f}× the FLOPs per "
        f"token at short KV ({seed_1 / GFLOP:.3f} vs {run_1 / GFLOP:.3f} GFLOP) and {seed_kv_f / run_kv_f:.2f}× at "
        f"{seq:,}, and {premult / counts.mla_params(m):.1f}× the weights to hold and read. "
        f"Priced the seed's way, H800 TP1 batch 32 TPOT(Overlap) "
        f"falls from {_n(d32.tpot_overlap / MS, 3)} to {_n(d32_fixed / MS, 3)} ms.",
        "counts.mla_flops(mode=\"absorbed\") vs mode=\"premultiplied\", decode (q_len 1, every KV token cached); "
        "the seed's rates and its FP8/FP16 split of the ops.",
    ))

    # E12: prefill attention without causal masking, hits only on wkv_a.
    new = seq * (1 - hit)
    seed_ops = counts.mla_ops(m, seq, seq, hit, "plain")
    true_ops = counts.mla_ops(m, new, seq, hit, "plain", causal=True)
    seed_f, true_f = sum(seed_ops.values()), sum(true_ops.values())
    seed_att = sum(v for k, v in seed_ops.items() if k in counts.ATTENTION_OPS)
    true_att = sum(v for k, v in true_ops.items() if k in counts.ATTENTION_OPS)
    out.append(Erratum(
        "E12", "Prefill attention: no causal mask, cache hits only on wkv_a", "§2.1 prefill_mla_elapse_time",
        f"One {seq:,}-token prefill with {hit:.1%} cache hits: mla_flops(q_len = kv_len = {seq:,}) with the hit "
        f"rate applied to the KV down-projection only, {seed_f / GFLOP:,.1f} GFLOP per layer.",
        f"{seed_f / GFLOP:,.1f} GFLOP per layer", true_f / GFLOP, "GFLOP", f"{true_f / GFLOP:,.1f} GFLOP",
        f"With {hit:.1%} of the prompt in the prefix cache only {new:,.0f} tokens are new: they alone need the "
        f"query projections, wo and scores, and each scores only the keys before it (causal). The attention "
        f"proper (scores and score × V) falls from {seed_att / GFLOP:,.1f} to {true_att / GFLOP:,.1f} GFLOP per "
        f"layer and the whole MLA from {seed_f / GFLOP:,.1f} to {true_f / GFLOP:,.1f} GFLOP "
        f"({true_f / seed_f:.0%}): {1 - true_f / seed_f:.0%} of the seed's prefill MLA FLOPs are work a real "
        "prefill does not do.",
        f"Plain MLA (as the seed uses for prefill): the cached tokens' latents are up-projected again (W_UK, W_UV) "
        f"for all {seq:,} keys; causal pairs q (kv − q) + q (q + 1) / 2 (counts.attention_pairs).",
    ))
    return out


# ---------------------------------------------------------------- rendering


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return lines


def render_markdown() -> str:
    """The errata page, MyST markdown."""
    items = errata()
    lines = [
        "(errata-seed-003)=",
        "# Seed 003 errata",
        "",
        "Seed 003 (`" + SEED_FILE + "`) is the analytical model this book starts from; "
        "`moecalc reproduce seed-003` recomputes every figure it prints. This page lists where the seed is "
        "wrong: typos, hidden assumptions and premises that do not hold. Each corrected figure is computed by "
        "`moecalc` when the page is generated, under the assumptions stated with it.",
        "",
        "```{note}",
        "Generated by `moecalc reproduce seed-003 --errata > book/errata-seed-003.md`; do not edit by hand. "
        "A test fails when this file and the code disagree.",
        "```",
        "",
        "## Summary",
        "",
    ]
    lines += _md_table(("#", "erratum", "seed section", "seed figure", "corrected"),
                       [(e.id, e.title, e.section, e.seed_figure, e.corrected_text) for e in items])
    for e in items:
        lines += ["", f"({e.id.lower()}-seed-003)=", f"## {e.id}. {e.title}", "",
                  f"**Seed ({e.section}).** {e.seed_says}", "",
                  f"**Corrected.** {e.corrected_text}.", "",
                  f"**Why.** {e.why}", ""]
        if e.table is not None:
            lines += _md_table(*e.table) + [""]
        lines += [f"**Assumptions.** {e.assumptions}"]
    return "\n".join(lines) + "\n"
