"""Seed 003's printed figures, each recomputed with moecalc.

Seed 003 (``../shared/seeds/003_7b871464023dcd82.txt``) is a Chinese analytical model of
DeepSeek-R1 inference on H800 and H20. :func:`records` returns one record per figure it
prints in its result tables, its code printouts (ptflops, ``mla_flops``, the ``print``
lines of §2) and the handful of computed figures its prose states (§1.4 KV sizes, §2.5's
32207, §3.2's 3.13B and 2.91GB, the §1.2/§1.3 per-token MFLOPS). Every ``computed`` comes
from :mod:`moecalc.counts` and :mod:`moecalc.policies.seed003`; nothing is typed in.

Left out, on purpose:

* inputs: ModelArgs, the GPU table and ``GPU_perf`` arguments, batch sizes, layer counts,
  the 73.7K tokens/s DeepSeek publishes. Reading an input back proves nothing; where the
  seed's inputs depart from the datasheet, the errata page says so.
* ptflops' percentage columns: they are ratios of the counts recorded here, and the MAC
  shares depend on how the ptflops version counts the functional ``F.silu`` (not stated).
* prose approximations ("约 3246 token/s", "接近 1.4x") of figures recorded from a table.

How the seed prints: ptflops and pandas round, but figures the author transcribes by hand
are *truncated* (598.147072 → "598.14M", 926.679 → "926.67M", 3.302898 → "3.3028").
``match`` is strictly "rounds to the printed figure", so those records do not match; their
note starts with ``truncated:`` and says that truncating moecalc's figure gives the print.
They are display conventions, not errors, so they are not errata.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Any

from .. import counts
from ..policies import seed003 as policy
from ..profiles import Hardware, Model, load_hardware, load_model, load_workload
from ..units import BILLION, GB_PER_S, GFLOP, MILLION, MS, GiB, KiB, dtype_bytes

SEED = "../shared/seeds/003_7b871464023dcd82.txt"

# ---------------------------------------------------------------- printed figures

_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def parse(published: str) -> tuple[float, int]:
    """The number a printed figure starts with, and its decimals: "187.17 M" → (187.17, 2)."""
    found = _NUMBER.match(published.strip())
    if found is None:
        raise ValueError(f"no number at the start of {published!r}")
    text = found.group()
    return float(text), len(text.partition(".")[2])


def matches(computed: float, published: str, truncated: bool = False) -> bool:
    """Whether `computed` prints as `published` at its printed precision.

    Rounding: within half a unit of the last printed digit (a tie counts either way, as
    Python's "%.2f" prints 68.625 as 68.62). Truncation: within [printed, printed + 1 unit).
    A relative 1e-12 of slack absorbs float noise (0.37429248000000004 is 17 decimals)."""
    value, decimals = parse(published)
    unit = 10.0**-decimals
    slack = 1e-12 * max(abs(value), unit)
    if not math.isfinite(computed):
        return False
    if truncated:
        return value - slack <= computed < value + unit + slack
    return abs(computed - value) <= unit / 2 + slack


def as_printed(x: float, decimals: int, truncated: bool = False) -> float:
    """`x` as the seed writes it at `decimals` places: rounded, or truncated by hand.
    Used where the seed computes on with its own printed figure (1.83M × 58 = 106.14M)."""
    scale = 10**decimals
    return (math.floor(x * scale + 1e-9) if truncated else round(x * scale)) / scale


class _Records(list):
    def add(self, table: str, row: str, column: str, published: str, computed: Any, unit: str,
            note: str = "", *, truncated: bool = False, erratum: str | None = None) -> None:
        value, decimals = parse(published)
        computed = float(computed)
        if truncated:
            if not matches(computed, published, truncated=True):
                raise AssertionError(f"{published}: {computed} does not truncate to the print either")
            note = (f"truncated: the seed truncates here; {computed:.{decimals + 3}f} rounds to "
                    f"{computed:.{decimals}f} and truncates to the printed figure" + (f"; {note}" if note else ""))
        if erratum:
            note = f"erratum: {erratum}" + (f" {note}" if note else "")
        self.append({
            "table": table,
            "row": row,
            "column": column,
            "published": published,
            "value": value,
            "computed": computed,
            "unit": unit,
            "match": matches(computed, published),
            "note": note,
        })


# ---------------------------------------------------------------- setup


def _profiles() -> tuple[Model, dict[str, Hardware], Any]:
    m = load_model("deepseek-v3")
    hw = {"H800": load_hardware("h800"), "H20": load_hardware("h20"), "H20_3e": load_hardware("h20-3e")}
    return m, hw, load_workload("seed-003")


def _ptflops_linears(shapes: dict[str, tuple[int, int]], called: set[str]) -> dict[str, tuple[int, int]]:
    """(params, MACs for one token) of each nn.Linear as ptflops counts them: the bias is a
    parameter and one MAC per output; a Linear whose forward is never called has no MACs."""
    return {name: (i * o + o, (i * o + o) if name in called else 0) for name, (i, o) in shapes.items()}


def _mlp_shapes(hidden: int, inter: int) -> dict[str, tuple[int, int]]:
    return {"w1": (hidden, inter), "w2": (inter, hidden), "w3": (hidden, inter)}


# ---------------------------------------------------------------- sections


def _tldr(r: _Records, m: Model, hw: dict[str, Hardware], wl: Any) -> None:
    table = "TL;DR: Prefill 阶段"
    published = {"H800": ("52240.1", "33741.0"), "H20": ("9377.0", "8536.9")}
    for gpu, (overlap, plain) in published.items():
        p = policy.prefill(m, hw[gpu], wl.prompt_len, wl.kv_cache_hit_rate, tp=4)
        note = "seed003.prefill at TP4 × DP8, EP32 on 4 nodes, 4,383 tokens, 56.3 % hits (§2.5)"
        r.add(table, "TPS(Overlap)", gpu, overlap, p.tokens_per_s_per_node_overlap, "tokens/s per node", note)
        r.add(table, "TPS", gpu, plain, p.tokens_per_s_per_node, "tokens/s per node", note)

    table = "TL;DR: Decoding 阶段"
    columns = [  # (GPU, batch, TPOT(O), TPOT, TPS(O), TPS, Total(O), Total) as printed
        ("H800", 32, "9.858", "17.023", "101.442", "58.746", "3246.137", "1879.856"),
        ("H800", 64, "19.716", "34.045", "50.721", "29.373", "3246.137", "1879.856"),
        ("H800", 128, "39.431", "68.090", "25.360", "14.686", "3246.137", "1879.856"),
        ("H20", 32, "35.367", "42.532", "28.275", "23.512", "904.803", "752.383"),
        ("H20_3e", 32, "29.613", "36.778", "33.768", "27.190", "1080.591", "870.082"),
        ("H20_3e", 64, "49.005", "63.334", "20.406", "15.789", "1306.001", "1010.516"),
    ]
    for gpu, batch, *figures in columns:
        tp = policy.best_decode_tp(m, hw[gpu], batch, wl.prompt_len, force_tp8=gpu == "H20_3e")
        d = policy.decode(m, hw[gpu], batch, wl.prompt_len, tp, output_len=wl.output_len)
        column = f"{gpu}(TP{tp}) BatchSize {batch}"
        note = (f"seed003.decode, TP{tp} chosen as the seed's mla_tp does (H20_3e always TP8), at KV length "
                "4,383: the seed passes the prefill length, not the 4,989 it quotes (Q7)")
        values = [
            ("TPOT(Overlap)", d.tpot_overlap / MS, "ms"),
            ("TPOT", d.tpot / MS, "ms"),
            ("TPS(Overlap)", d.tokens_per_s_per_user_overlap, "tokens/s per user"),
            ("TPS", d.tokens_per_s_per_user, "tokens/s per user"),
            ("Total(Overlap)", d.tokens_per_s_per_gpu_overlap, "tokens/s per GPU"),
            ("Total", d.tokens_per_s_per_gpu, "tokens/s per GPU"),
        ]
        for (row, computed, unit), printed in zip(values, figures):
            r.add(table, row, column, printed, computed, unit, note)


def _section_1(r: _Records, m: Model) -> None:
    # §1.1.1: ptflops on one token through the reference MLA module.
    table = "§1.1.1 MLA 标准实现: ptflops printout"
    mla = _ptflops_linears(counts.mla_weight_shapes(m, "plain"), called={"wq_a", "wq_b", "wkv_a", "wo"})
    mla_macs = sum(macs for _, macs in mla.values())
    r.add(table, "MLA", "Params", "187.17 M", counts.mla_params(m, bias=True) / MILLION, "M params",
          "counts.mla_params(bias=True): ptflops counts nn.Linear biases, which DeepSeek-V3 does not have (187.11M)")
    r.add(table, "MLA", "MACs", "170.36 MMac", mla_macs / MILLION, "M MACs",
          "ptflops' total omits wkv_b: forward() reads its weight in two einsums, never calls it (the seed's point)")
    printed = {"wq_a": ("11.01 M", "11.01 MMac"), "wq_b": ("37.77 M", "37.77 MMac"),
               "wkv_a": ("4.13 M", "4.13 MMac"), "wkv_b": ("16.81 M", "0.0 Mac"), "wo": ("117.45 M", "117.45 MMac")}
    for name, (p_params, p_macs) in printed.items():
        params, macs = mla[name]
        i, o = counts.mla_weight_shapes(m, "plain")[name]
        r.add(table, name, "Params", p_params, params / MILLION, "M params", f"{i} × {o} weight + {o} bias")
        if name == "wkv_b":
            r.add(table, name, "MACs", p_macs, macs, "MACs",
                  "never called, so ptflops counts 0 (its einsums go uncounted)")
        else:
            r.add(table, name, "MACs", p_macs, macs / MILLION, "M MACs", "one token: in × out MACs + one per bias")

    table = "§1.1.1 MLA 标准实现: mla_flops(1,1,args,0)"
    ops = counts.mla_ops(m, 1, 1, 0.0, "plain")
    attn = ops["score"] + ops["score_v"] + ops["wo"]
    note = "counts.mla_ops(plain); the seed's ATTN_FP16 group holds wo besides attention proper (Q6)"
    r.add(table, "tuple[0]", "total", "0.37429248000000004", sum(ops.values()) / GFLOP, "GFLOP", note)
    r.add(table, "tuple[1]", "GEMM_FP8", "0.139329536", (sum(ops.values()) - attn) / GFLOP, "GFLOP", note)
    r.add(table, "tuple[2]", "ATTN_FP16", "0.234962944", attn / GFLOP, "GFLOP", note)

    table = "§1.1.2 矩阵吸收模式: mla_matabsob_flops(1,1,args,0)"
    ops = counts.mla_ops(m, 1, 1, 0.0, "premultiplied")
    attn = ops["score"] + ops["score_v"] + ops["o_absorb"]
    note = "counts.mla_ops(premultiplied): the seed multiplies W_UK into wq_b and W_UV into wo ahead of time"
    r.add(table, "tuple[0]", "total", "1.196572672", sum(ops.values()) / GFLOP, "GFLOP", note)
    r.add(table, "tuple[1]", "gemm_sum", "0.256770048", (sum(ops.values()) - attn) / GFLOP, "GFLOP", note)
    r.add(table, "tuple[2]", "attn_sum", "0.939802624", attn / GFLOP, "GFLOP", note)

    table = "§1.1.2 矩阵吸收模式: ratios and mla_matabsob_mem"

    def ratio(q: int, kv: int, rate: float) -> float:
        return counts.mla_flops(m, q, kv, rate, "premultiplied") / counts.mla_flops(m, q, kv, rate, "plain")

    r.add(table, "FLOPs ratio absorbed / plain", "q_len=1, kv_len=1", "3.197", ratio(1, 1, 0.0), "ratio",
          "3.19689 rounds to 3.197")
    r.add(table, "mla_matabsob_mem(args)/1e6", "", "598.147072", counts.mla_params(m, "premultiplied") / MILLION,
          "M params", "counts.mla_params(premultiplied), no biases")
    r.add(table, "prose: 参数量也增加到", "", "598.14M", counts.mla_params(m, "premultiplied") / MILLION, "M params",
          truncated=True)
    params_ratio = counts.mla_params(m, "premultiplied") / counts.mla_params(m, bias=True)
    r.add(table, "prose: params ratio (同样约 3.197 倍)", "598.14M / 187.17M", "3.197", params_ratio, "ratio",
          erratum=("its own figures give 598.147072 / 187.17 = 3.196 (it reuses the FLOPs ratio); only against "
                   "the bias-free 187.11M does the ratio reach 3.197."))
    r.add(table, "FLOPs ratio, prefill", "q_len=kv_len=4989", "3.3028", ratio(4989, 4989, 0.0), "ratio",
          truncated=True)
    r.add(table, "FLOPs ratio, decode", "q_len=1, kv_len=4989, kv_cache_rate=1", "0.015", ratio(1, 4989, 1.0),
          "ratio", "decode skips wkv_a (cached) and the plain form's per-token K/V up-projection dominates")

    # §1.2 / §1.3: ptflops on one token through a SwiGLU MLP (nn.Linear with biases).
    for section, name, inter, params_fn, printed, per_token in (
        ("§1.2 DenseMLP 计算复杂度", "DenseMLP", m.intermediate_size, counts.dense_mlp_params,
         {"": ("396.41 M", "396.41 MMac"), "w1": ("132.14 M", "132.14 MMac"), "w2": ("132.13 M", "132.13 MMac"),
          "w3": ("132.14 M", "132.14 MMac")}, "792.82"),
        ("§1.3 MoE Expert 计算复杂度", "Expert", m.moe_intermediate_size, counts.expert_params,
         {"": ("44.05 M", "44.05 MMac"), "w1": ("14.68 M", "14.68 MMac"), "w2": ("14.69 M", "14.69 MMac"),
          "w3": ("14.68 M", "14.68 MMac")}, "88.1"),
    ):
        table = f"{section}: ptflops printout"
        linears = _ptflops_linears(_mlp_shapes(m.hidden_size, inter), called={"w1", "w2", "w3"})
        total_macs = sum(macs for _, macs in linears.values())
        r.add(table, name, "Params", printed[""][0], params_fn(m, bias=True) / MILLION, "M params",
              f"counts.{params_fn.__name__}(bias=True): ptflops counts nn.Linear biases")
        r.add(table, name, "MACs", printed[""][1], total_macs / MILLION, "M MACs",
              "the module's Linear MACs (ptflops' 99.995 % share: its total also counts F.silu)")
        for w in ("w1", "w2", "w3"):
            params, macs = linears[w]
            r.add(table, w, "Params", printed[w][0], params / MILLION, "M params", "weight + bias")
            r.add(table, w, "MACs", printed[w][1], macs / MILLION, "M MACs", "one token: in × out + one per bias")
        mflops = 2 * as_printed(total_macs / MILLION, 2)
        r.add(f"{section}: prose", f"{name} per token", "MFLOPS", per_token, mflops, "MFLOP",
              f"2 × its printed {as_printed(total_macs / MILLION, 2)} MMac (ptflops, biases included); "
              f"bias-free the count is {2 * 3 * m.hidden_size * inter / MILLION:.2f}")

    _section_1_4(r, m)


def _section_1_4(r: _Records, m: Model) -> None:
    table = "§1.4 数据汇总: 参数分布"
    rows = {row.block: row for row in counts.param_table(m, bias=True, norms=False)}
    experts = m.n_routed_experts + m.n_shared_experts
    mla_m = rows["MLA"].per_layer / MILLION
    dense_m = rows["DenseMLP"].per_layer / MILLION
    expert_m = counts.expert_params(m, bias=True) / MILLION
    gate_m = rows["Gate"].per_layer / MILLION
    embed_m = rows["Embedding"].per_layer / MILLION

    r.add(f"{table}: prose", "MoE Gating: dim × n_routed_experts + bias", "", "1.83M", gate_m, "M params",
          truncated=True)
    r.add(f"{table}: prose", "Embedding/Output: vocab_size × dim", "", "926.67M", embed_m, "M params",
          truncated=True)

    # Per-layer column, then the seed's totals, which it computes from its printed figures.
    printed_mla = as_printed(mla_m, 2)
    printed_expert = as_printed(expert_m, 2)
    printed_gate = as_printed(gate_m, 2, truncated=True)
    printed_embed = as_printed(embed_m, 2, truncated=True)
    r.add(table, "MLA", "单层参数量", "187.17M", mla_m, "M params", "ptflops count, biases included")
    r.add(table, "DenseMLP", "单层参数量", "396.41M", dense_m, "M params", "ptflops count, biases included")
    r.add(table, "Expert", "单层参数量", "44.05M", expert_m, "M params",
          "per expert; printed '44.05Mx(256_routed+1_shared)'")
    r.add(table, "Gate", "单层参数量", "1.83M", gate_m, "M params", truncated=True)
    r.add(table, "Embedding", "单层参数量", "926.67M", embed_m, "M params", truncated=True)
    r.add(table, "Output", "单层参数量", "926.67M", rows["Output"].per_layer / MILLION, "M params", truncated=True)

    mla_b = rows["MLA"].total / BILLION
    r.add(table, "MLA", "累计参数", "11.41B", mla_b, "B params",
          "187.17M × 61; a bias-free count (187.11M × 61 = 11.413B) would round to it too", truncated=True)
    dense_b = rows["DenseMLP"].total / BILLION
    r.add(table, "DenseMLP", "累计参数", "1.19B", dense_b, "B params", "3 layers, biases included")
    expert_b = rows["Expert"].total / BILLION
    r.add(table, "Expert", "累计参数", "656.6B", expert_b, "B params",
          f"{experts} experts × {m.n_moe_layers} layers, biases included")
    gate_total = printed_gate * m.n_moe_layers
    r.add(table, "Gate", "累计参数", "106.14M", gate_total, "M params",
          f"the seed's printed 1.83M × {m.n_moe_layers}; the exact count is {rows['Gate'].total / MILLION:.2f}M")
    r.add(table, "Embedding", "累计参数", "926.67M", rows["Embedding"].total / MILLION, "M params", truncated=True)
    r.add(table, "Output", "累计参数", "926.67M", rows["Output"].total / MILLION, "M params", truncated=True)
    # The seed sums its printed column, truncations and all.
    column_b = (as_printed(mla_b, 2, truncated=True) + as_printed(dense_b, 2) + as_printed(expert_b, 1)
                + gate_total / 1e3 + 2 * printed_embed / 1e3)
    exact_b = counts.total_params(m, bias=True, norms=False) / BILLION
    r.add(table, "SUM", "累计参数", "671.16B", column_b, "B params",
          f"the sum of its printed column (11.41 + 1.19 + 656.6 + 0.10614 + 2 × 0.92667); the exact "
          f"count with biases is {exact_b:.2f}B, without {counts.total_params(m, norms=False) / BILLION:.2f}B")

    table = "§1.4 数据汇总: 算力消耗"
    premult_m = counts.mla_params(m, "premultiplied") / MILLION
    r.add(table, "MLA", "参数量", "187.17M", mla_m, "M params", "ptflops count, biases included")
    r.add(table, "MLA_absorb", "参数量", "598.14M", premult_m, "M params", truncated=True)
    r.add(table, "DenseMLP", "参数量", "396.41M", dense_m, "M params", "ptflops count, biases included")
    r.add(table, "Expert", "参数量", "44.05M", expert_m, "M params", "ptflops count, biases included")
    r.add(table, "MLA", "运算复杂度(FLops)", "374.29M", counts.mla_flops(m, 1, 1) / MILLION, "MFLOP",
          "mla_flops(1,1,args,0) per token")
    r.add(table, "MLA_absorb", "运算复杂度(FLops)", "1196.57M",
          counts.mla_flops(m, 1, 1, 0.0, "premultiplied") / MILLION, "MFLOP", "mla_matabsob_flops(1,1,args,0)")
    dense_macs = sum(macs for _, macs in _ptflops_linears(
        _mlp_shapes(m.hidden_size, m.intermediate_size), called={"w1", "w2", "w3"}).values())
    r.add(table, "DenseMLP", "运算复杂度(FLops)", "792.82M", 2 * as_printed(dense_macs / MILLION, 2), "MFLOP",
          "2 × its printed 396.41 MMac (the exact 2 × 396.40576 would print 792.81)")
    expert_flops = 2 * as_printed(counts.expert_params(m, bias=True) / MILLION, 2)
    r.add(table, "Expert", "运算复杂度(FLops)", "488.1M", expert_flops, "MFLOP",
          erratum=(f"a typo for 88.1M: 2 × 44.05 MMac = {expert_flops:.1f} (its §1.3 prose says 88.1 MFLOPS; "
                   f"counts.expert_flops(m, 1) = {counts.expert_flops(m, 1) / MILLION:.2f} MFLOP without biases)."))
    kv_layer = counts.kv_bytes_per_token(m, dtype_bytes("fp8"), layers=1)
    note = "(kv_lora_rank + qk_rope_head_dim) × 1 B, no quantization scales (see errata)"
    r.add(table, "MLA", "KVCache用量", "576B", kv_layer, "bytes per token per layer", note)
    r.add(table, "MLA_absorb", "KVCache用量", "576", kv_layer, "bytes per token per layer", note)

    table = "§1.4 数据汇总: KVCache 用量 (prose)"
    r.add(table, "per token, all 61 layers", "FP16", "68.62KB",
          counts.kv_bytes_per_token(m, dtype_bytes("bf16")) / KiB, "KiB",
          "2 × 576 × 61 / 1024 (the seed's KB is KiB) = 68.625 exactly, which Python's %.2f prints 68.62")
    r.add(table, "per token, all 61 layers", "FP8", "34.31KB",
          counts.kv_bytes_per_token(m, dtype_bytes("fp8")) / KiB, "KiB", "576 × 61 / 1024 (the seed's KB is KiB)")


def _section_2(r: _Records, m: Model, hw: dict[str, Hardware], wl: Any) -> None:
    seq, rate = wl.prompt_len, wl.kv_cache_hit_rate
    gpus = ("H800", "H20")
    pre = {(g, tp): policy.prefill(m, hw[g], seq, rate, tp) for g in gpus for tp in (4, 8)}
    pol = policy.load_policy()

    # §2.1: MLA per GPU at TP1, its all-reduce, and the TP4 / TP8 times.
    printout = {"H800": ("0.536", "4.729", "5.265", "0.352", "1.669", "1.011"),
                "H20": ("3.364", "29.671", "33.035", "0.176", "8.435", "4.306")}
    mla = {}
    for g in gpus:
        rr = policy.rates(hw[g], pol, policy.prefill_comm_sms(hw[g], pol))
        gemm, attn = policy.mla_times(m, rr, seq, seq, rate, "plain")
        mla[g] = (("GEMM_FP8 Elapsed time", gemm), ("ATTN_FP16 Elapsed time", attn),
                  ("Total Elapsed time", pre[g, 4].layers["MLA"]),
                  ("AR Elapsed time", policy.all_reduce_time(m, rr, seq)),
                  ("TP4 Elapsed time", pre[g, 4].layers["TP_MLA"]), ("TP8 Elapsed time", pre[g, 8].layers["TP_MLA"]))
        note = ("plain MLA at q_len = kv_len = 4,383, the 56.3 % hit rate only on wkv_a (Q5; its printed code "
                "passes kv_cache_rate=1, its output fits 0.563); FP8/FP16 peaks × 0.8 × 0.85 × "
                f"({hw[g].compute_units} − {policy.prefill_comm_sms(hw[g], pol)}) / {hw[g].compute_units} SMs (Q1, Q2)")
        for (row, t), printed in zip(mla[g], printout[g]):
            if row.startswith("AR"):
                r.add("§2.1 MLA 计算耗时: printout", row, g, printed, t / MS, "ms",
                      "4,383 × 7,168 × 2 B / 2^20 over 0.85 × NVLink GB/s, read as ms (Q3, Q4)"
                      + ("; H20 at the seed's 400 GB/s" if g == "H20" else ""))
            else:
                r.add("§2.1 MLA 计算耗时: printout", row, g, printed, t / MS, "ms", note)
    for g in gpus:
        for column, idx in (("TP1", 2), ("TP4", 4), ("TP8", 5)):
            r.add("§2.1 MLA 计算耗时: table", g, column, printout[g][idx], mla[g][idx][1] / MS, "ms", "as the printout")

    # §2.2: dense MLP over the whole 4,383 tokens (its "q_len = seq_len × (1 − rate)" line is not applied).
    note = "densmlp_flops(4383) over derated FP8: the full sequence, although its text says (1 − hit rate)"
    dense = {"H800": "3.156", "H20": "19.801"}
    for table, row in (("§2.2 DenseMLP 计算耗时: printout", "Elapsed time"), ("§2.2 DenseMLP 计算耗时: table", "DenseMLP耗时")):
        for g in gpus:
            r.add(table, row, g, dense[g], pre[g, 4].layers["DenseMLP"] / MS, "ms", note)

    # §2.3: experts at TP4 (DP8) and TP8 (DP4); §2.4: the all-to-all at the same layouts.
    moe = {4: {"H800": ("0.088", "0.701"), "H20": ("0.550", "4.400")},
           8: {"H800": ("0.044", "0.351"), "H20": ("0.275", "2.200")}}
    for tp in (4, 8):
        dp = 32 // tp
        for kind in ("printout", "table"):
            for g in gpus:
                table = f"§2.3 MoE 计算耗时 TP={tp},DP={dp}: {kind}"
                r.add(table, "Shared Expert", g, moe[tp][g][0], pre[g, tp].layers["SharedExpert"] / MS, "ms",
                      f"{dp} × 4,383 tokens over 32 GPUs through one expert")
                r.add(table, "Routed Expert", g, moe[tp][g][1], pre[g, tp].layers["RoutedExpert"] / MS, "ms",
                      f"{dp} × 4,383 × 8 token-expert pairs over 32 GPUs")
    a2a = {4: ("0.529", "1.057"), 8: ("0.264", "0.529")}
    for tp in (4, 8):
        note = (f"3 remote nodes × {8 // tp} DP group(s) × 4,383 × 7,168 B (FP8) / 2^20 over "
                "8 × 0.85 × 50 GB/s, read as ms (Q3); the same on H800 and H20")
        for kind in ("printout", "table"):
            for g in gpus:
                table = f"§2.4 AlltoAll 通信耗时 TP={tp}: {kind}"
                r.add(table, "Dispatch", g, a2a[tp][0], pre[g, tp].layers["Dispatch"] / MS, "ms", note)
                r.add(table, "Combine", g, a2a[tp][1], pre[g, tp].layers["Combine"] / MS, "ms", "2 × dispatch (BF16)")

    # §2.5: the per-layer tables, their sums, tokens/s per node.
    ops = (("MLA", "MLA"), ("DenseMLP", "DenseMLP"), ("TP_MLA", "TP_MLA"), ("Shared Expert", "SharedExpert"),
           ("Routed Expert", "RoutedExpert"), ("Dispatch", "Dispatch"), ("Combine", "Combine"))
    detail = {4: {"H800": ("5.265", "3.156", "1.669", "0.088", "0.701", "0.529", "1.057"),
                  "H20": ("33.035", "19.801", "8.435", "0.550", "4.400", "0.529", "1.057")},
              8: {"H800": ("5.265", "3.156", "1.011", "0.044", "0.351", "0.264", "0.529"),
                  "H20": ("33.035", "19.801", "4.306", "0.275", "2.200", "0.264", "0.529")}}
    sums = {4: {"H800": ("167.802", "259.803"), "H20": ("934.839", "1026.840")},
            8: {"H800": ("106.754", "152.754"), "H20": ("551.784", "597.784")}}
    tps = {4: {"H800": ("52240.1", "33741.0"), "H20": ("9377.0", "8536.9")},
           8: {"H800": ("41057.0", "28693.1"), "H20": ("7943.3", "7332.1")}}
    for tp in (4, 8):
        dp = 32 // tp
        for i, (row, op) in enumerate(ops):
            for g in gpus:
                r.add(f"§2.5 总耗时 TP={tp},DP={dp}: per-layer table", row, g, detail[tp][g][i],
                      pre[g, tp].layers[op] / MS, "ms", "seed003.prefill per-layer time")
        for g in gpus:
            table = f"§2.5 总耗时 TP={tp},DP={dp}: 累计时间"
            r.add(table, "Sum(Overlap)", g, sums[tp][g][0], pre[g, tp].time_overlap / MS, "ms",
                  "3 × (MLA + DenseMLP) + 58 × (TP_MLA + Shared + Routed)")
            r.add(table, "Sum", g, sums[tp][g][1], pre[g, tp].time / MS, "ms",
                  "Sum(Overlap) + 58 × (Dispatch + Combine)")
        for g in gpus:
            note = f"DP{dp} × 4,383 tokens / time / 4 nodes"
            table = f"§2.5 总耗时 TP={tp}: tokens/s per node"
            r.add(table, "Sum(Overlap)", g, tps[tp][g][0], pre[g, tp].tokens_per_s_per_node_overlap,
                  "tokens/s per node", note)
            r.add(table, "Sum", g, tps[tp][g][1], pre[g, tp].tokens_per_s_per_node, "tokens/s per node", note)
    deepseek_per_node = 73.7e3  # DeepSeek day-6: 73.7K input tokens/s per H800 node, cache hits included
    r.add("§2.5 总耗时: prose", "非命中 token/s (73.7K × (1 − 0.563))", "", "32207",
          deepseek_per_node * (1 - rate), "tokens/s per node",
          "DeepSeek's published 73.7K tokens/s per node × the workload's (1 − hit rate)")

    # §2.6: the TP4 overlap table, then H20 with 3.2 / 1.6 / 0.8 Tb/s of scale-out per node.
    overlap_rows = (("TP_MLA", "TP_MLA"), ("Shared Expert", "SharedExpert"), ("Combine", "Combine"),
                    ("Routed Expert", "RoutedExpert"), ("Dispatch", "Dispatch"))
    for g in gpus:
        p = pre[g, 4]
        printed = dict(zip((op for _, op in ops), detail[4][g]))
        for row, op in overlap_rows:
            r.add("§2.6 Overlap 分析: TP=4 关键项", row, g, printed[op], p.layers[op] / MS, "ms",
                  "the §2.5 TP4 figures, regrouped into two overlapping streams")
    sweep = {"H20-3.2T": (50, ("8.435", "0.550", "0.529", "4.400", "1.057"), ("934.839", "1026.840")),
             "H20-1.6T": (25, ("8.435", "0.550", "1.057", "4.400", "2.115"), ("934.839", "1118.841")),
             "H20-800G": (12.5, ("8.435", "0.550", "2.115", "4.400", "4.230"), ("934.839", "1302.842"))}
    for name, (nic, printed, printed_sums) in sweep.items():
        h20 = replace(hw["H20"], scale_out_bandwidth=nic * GB_PER_S)
        p = policy.prefill(m, h20, seq, rate, tp=4)
        note = f"H20 with {nic:g} GB/s scale-out per GPU (pcie_bw = {nic:g} in its code)"
        for (row, op), figure in zip((("TP_MLA", "TP_MLA"), ("Shared Expert", "SharedExpert"),
                                      ("Dispatch", "Dispatch"), ("Routed Expert", "RoutedExpert"),
                                      ("Combine", "Combine")), printed):
            r.add("§2.6 Overlap 分析: H20 ScaleOut sweep, TP=4", row, name, figure, p.layers[op] / MS, "ms", note)
        r.add("§2.6 Overlap 分析: H20 ScaleOut sweep, 累计时间", "Sum(Overlap)", name, printed_sums[0],
              p.time_overlap / MS, "ms", note)
        r.add("§2.6 Overlap 分析: H20 ScaleOut sweep, 累计时间", "Sum", name, printed_sums[1], p.time / MS, "ms", note)

    # §2.7: tokens/s per node × 576 / 2^20, labelled GB/s.
    kv = {"H800": (("28.7", "57.4"), ("18.5", "37.1")), "H20": (("5.2", "10.3"), ("4.7", "9.4"))}
    note = ("tokens/s per node × 576 × bytes per element / 2^20: MiB/s for ONE layer, which the seed labels "
            "GB/s per node (see errata)")
    for g in gpus:
        p = pre[g, 4]
        for row, by_dtype, figures in (("Sum(Overlap)", p.kv_transfer_overlap, kv[g][0]),
                                       ("Sum", p.kv_transfer, kv[g][1])):
            for dtype, label, printed in (("fp8", "FP8", figures[0]), ("bf16", "FP16", figures[1])):
                r.add("§2.7 KVCache 计算", row, f"{g}({label})", printed, by_dtype[dtype],
                      "MiB/s, one layer (seed: GB/s)", note)


def _section_3(r: _Records, m: Model) -> None:
    # §3.2: 671.16B − MLA(187.17M) × 61 − Expert(44.05M) × 257 × 58, all the seed's printed figures.
    table = "§3.2 Memory 利用率分析"
    rows = {row.block: row for row in counts.param_table(m, bias=True, norms=False)}
    experts = m.n_routed_experts + m.n_shared_experts
    printed_total_b = (
        as_printed(rows["MLA"].total / BILLION, 2, truncated=True) + as_printed(rows["DenseMLP"].total / BILLION, 2)
        + as_printed(rows["Expert"].total / BILLION, 1)
        + as_printed(rows["Gate"].per_layer / MILLION, 2, truncated=True) * rows["Gate"].layers / 1e3
        + 2 * as_printed(rows["Embedding"].per_layer / MILLION, 2, truncated=True) / 1e3
    )
    others_b = (as_printed(printed_total_b, 2)
                - as_printed(rows["MLA"].per_layer / MILLION, 2) * m.num_hidden_layers / 1e3
                - as_printed(counts.expert_params(m, bias=True) / MILLION, 2) * experts * m.n_moe_layers / 1e3)
    exact_b = (rows["DenseMLP"].total + rows["Gate"].total + rows["Embedding"].total + rows["Output"].total) / BILLION
    r.add(table, "other parameters", "", "3.13B", others_b, "B params",
          f"from its printed 671.16B, 187.17M and 44.05M; counted directly (dense MLP, gates, embedding, head, "
          f"biases included) it is {exact_b:.2f}B")
    printed_others = as_printed(others_b, 2)
    r.add(table, "other parameters, memory", "", "2.91GB", printed_others * 1e9 / GiB, "GiB",
          "3.13 × (1000/1024)^3 at one byte per parameter: GiB, labelled GB", truncated=True)


def records() -> list[dict]:
    """One record per printed figure of seed 003 (see the module docstring)."""
    m, hw, wl = _profiles()
    r = _Records()
    _tldr(r, m, hw, wl)
    _section_1(r, m)
    _section_2(r, m, hw, wl)
    _section_3(r, m)
    return list(r)
