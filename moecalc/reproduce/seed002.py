"""Seed 002's printed figures, each recomputed with moecalc.

Seed 002 (``../shared/seeds/002_e810cd7dac6db39e.txt``) walks through a search for the best
decode deployment of DeepSeek-V3 (W8A16) on 128 SG2260E chips. :func:`records` returns one
record per figure it prints: the chip-count table, the MoE-TP and MLA-TP comparisons, the
evaluation table, the filter counts, the chosen layout and its metrics, the top five, the
block-time breakdown and the few numbers its prose states. Every ``computed`` comes from
:mod:`moecalc.policies.seed002` (seed 002's assumptions over the roofline model) and
:mod:`moecalc.search`; nothing is typed in. Seed 002's "Batch" is sequences per chip; the
policies take sequences per attention-DP rank, ``tp`` times as many.

Besides the common record fields each record has ``tolerance``, relative: ``match`` is
``|computed − value| ≤ tolerance · |value|``. Bookkeeping figures (counts, total batch, the
DRAM bandwidth product) must agree to the printed digit; model figures within
:data:`MODEL_TOLERANCE`. A figure moecalc has no model for (the prefill rows) has
``computed: None`` and a note that starts ``not recomputed:``.

:func:`readings` evaluates the policy and the other readings of the seed (KV dtype, compute
overlapped or added, DS_TPU's link figures) against its printed figures and its search.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import numpy as np

from .. import search
from ..policies import roofline, seed002
from ..profiles import Hardware, Model, Workload, load_hardware, load_model, load_workload
from ..units import GB_PER_S, MS, US, GiB, dtype_bytes
from .seed003 import parse  # one parser of printed figures for every seed

SEED = "../shared/seeds/002_e810cd7dac6db39e.txt"
# A model figure within 3 % of the printed one is taken as reproduced. Why 3 %: the seed's
# choice rests on TP4 B10 running at 10.3 tokens/s per user against a 10 tokens/s SLO, a 3 %
# margin, and its neighbouring batches (B8 11.3, B12 9.4) lie 9-10 % apart; a looser tolerance
# would call a figure reproduced that flips the seed's own SLO decision (10 % accepted 9.35
# for 10.3). Its figures print 2-3 significant digits (±0.5 % at 10.3), so 3 % is not tighter
# than they are precise.
MODEL_TOLERANCE = 0.03
CHIPS = 128
KV_LEN = 4096  # "4K Input", DS_TPU's kv_seq_len
BATCHES = (6, 8, 10, 12, 16)  # its batch candidates per chip
TPS = (2, 4, 8)  # its MLA-TP candidates
# Tokens/s per user it prints for (MLA-TP, batch per chip) at 128 chips, EP128: §4 (TP4), §5's
# top five (TP2) and §3.2 (TP8: 84 TPS per chip / 10 sequences).
PRINTED = {(4, 6): 11.6, (4, 8): 11.3, (4, 10): 10.3, (4, 12): 9.4, (4, 16): 7.8, (2, 8): 10.8, (2, 10): 10.1,
           (8, 10): 8.4}
TOP3 = ((4, 10), (2, 10), (4, 8))  # its ranking's first three, §5 3)
FEASIBLE = 8  # §5 "满足TPS per Batch ≥ 10 : 8个"


class _Records(list):
    def add(self, table: str, row: str, column: str, published: str, computed: Any, unit: str, note: str = "",
            *, exact: bool = False, value: float | None = None, tolerance: float | None = None,
            erratum: str | None = None) -> None:
        """One record. `exact`: bookkeeping, must agree to the printed digit; `value` and
        `tolerance` for a printed range ("-10~15%" is 12.5 ± 2.5)."""
        parsed, decimals = parse(published.replace(",", "").lstrip("~"))
        value = parsed if value is None else value
        if tolerance is None:
            tolerance = 0.5 * 10.0**-decimals / abs(value) if exact else MODEL_TOLERANCE
        if computed is None:
            match = False
            note = "not recomputed: " + note
        else:
            computed = float(computed)
            match = bool(np.isfinite(computed)) and abs(computed - value) <= tolerance * abs(value) * (1 + 1e-9)
        if erratum:
            note = f"erratum: {erratum}" + (f" [{note}]" if note else "")
        self.append({
            "table": table,
            "row": row,
            "column": column,
            "published": published,
            "value": float(value),
            "computed": computed,
            "unit": unit,
            "match": match,
            "note": note,
            "tolerance": float(tolerance),
        })


# ---------------------------------------------------------------- the model at seed 002's layouts


def _profiles() -> tuple[Model, Hardware, Workload]:
    return load_model("deepseek-v3"), load_hardware("sg2260e"), load_workload("seed-002")


def _layout(chips: int, tp: int, bs: int, moe_tp: int = 1) -> roofline.Layout:
    """Seed 002's (chips, MLA_TP, Batch per chip, MoE_TP) as a roofline layout."""
    return roofline.Layout(tp=tp, dp=chips // tp, moe_tp=moe_tp, ep=chips // moe_tp, batch=bs * tp)


def _metrics(m: Model, hw: Hardware, wl: Workload, layout: roofline.Layout,
             policy: seed002.Seed002Policy | None = None) -> dict[str, float]:
    """Seed 002's columns for one layout: TPS per batch (tokens/s per user), per chip, DRAM in
    GiB (its code divides by 1 << 30), MFU in %, TPOT in ms."""
    step = seed002.decode(m, hw, wl, layout, KV_LEN, policy=policy)
    return {
        "tps_batch": float(step.tokens_per_s_per_user),
        "tps_chip": float(roofline.tokens_per_s_per_device(step, layout)),
        "dram_gib": float(step.memory_bytes) / GiB,
        "mfu_pct": float(roofline.mfu(step, hw, wl)) * 100,
        "tpot_ms": float(step.tpot) / MS,
    }


def _blocks_us(m: Model, hw: Hardware, wl: Workload, layout: roofline.Layout) -> dict[str, float]:
    return {k: float(v) / US for k, v in seed002.blocks(m, hw, wl, layout, KV_LEN).items()}


def _decode(policy: seed002.Seed002Policy | None) -> Callable[..., roofline.DecodeStep] | None:
    """seed002.decode under `policy` (None: the policy file's)."""
    return None if policy is None else lambda *a, **k: seed002.decode(*a, **k, policy=policy)


def seed_space(m: Model, hw: Hardware, wl: Workload, policy: seed002.Seed002Policy | None = None) -> search.Result:
    """Seed 002's own search space: 128 chips, MLA-TP 2/4/8, MoE-TP 1, no TBO, batch 6-16 per chip."""
    return search.search(m, hw, wl, [CHIPS], BATCHES, policy="seed002", tp=TPS, moe_tp=[1], tbo=[False],
                         batch_per="device", kv_len=KV_LEN, decode=_decode(policy))


def full_space(m: Model, hw: Hardware, wl: Workload, policy: seed002.Seed002Policy | None = None) -> search.Result:
    """Every layout of 128 chips (any TP and MoE-TP, 1-512 sequences per chip, TBO on or off)."""
    return search.search(m, hw, wl, [CHIPS], policy="seed002", batch_per="device", kv_len=KV_LEN,
                         decode=_decode(policy))


# ---------------------------------------------------------------- sections


def _section_1(r: _Records, m: Model, hw: Hardware, wl: Workload) -> None:
    eff = roofline.efficiency(hw)
    r.add("§1 背景信息", "SG2260E", "DRAM带宽 (273 GB/s × 0.893)", "244", hw.memory_bandwidth * eff.memory / GB_PER_S,
          "GB/s", "the seed's own product, from the hardware profile", exact=True)
    one_level = replace(hw, scale_out_bandwidth=hw.scale_up_bandwidth)
    two = _metrics(m, hw, wl, _layout(CHIPS, 4, 10))["tps_chip"]
    one = _metrics(m, one_level, wl, _layout(CHIPS, 4, 10))["tps_chip"]
    step = seed002.decode(m, hw, wl, _layout(CHIPS, 4, 10), KV_LEN)
    a2a = m.n_moe_layers * float(step.moe_layer["dispatch"] + step.moe_layer["combine"]) / float(step.step_time)
    r.add("§1 网络拓扑", "两层 Switch (vs 一层)", "性能影响", "-10~15%", (two / one - 1) * 100, "%",
          "TPS per chip at TP4, batch 10, with 16 GB/s between TP groups against 64 GB/s everywhere; the seed "
          "repeats the claim in §1 ⚠1 and §6 ('TP Group间直连, 可提升10-15%'). Dispatch and combine carry "
          f"one byte per element for 10 tokens per chip: {a2a:.1%} of the step at 16 GB/s, so no link speed-up "
          "can gain 10-15 %", value=-12.5, tolerance=0.2)


def _section_2(r: _Records, m: Model, hw: Hardware, wl: Workload) -> None:
    table = "§3.1 芯片数量选择"
    base = _metrics(m, hw, wl, _layout(CHIPS, 4, 10))["tps_chip"]
    prefill = ("seed 002 labels this row prefill ({ftl}) with 'TP4+SP{sp}' sequence parallelism; moecalc's "
               "search is decode only and models no sequence parallelism")
    for chips, sp, ftl, tps, total, rel in ((16, 4, "FTL=2.2s", "462", "7,392", "427%"),
                                            (32, 8, "FTL=2.5s", "407", "13,024", "376%")):
        note = prefill.format(ftl=ftl, sp=sp)
        r.add(table, f"{chips}", "TPS/Chip", tps, None, "tokens/s per chip", note)
        r.add(table, f"{chips}", "总吞吐量", total, None, "tokens/s", note + f"; {tps} × {chips} = {total} holds")
        r.add(table, f"{chips}", "相对效率", rel, None, "% of 128 chips",
              note + f"; {tps} / 108 is truncated, not rounded, to {rel}")
        r.add(table, f"{chips}", "FTL", ftl.split("=")[1], None, "s", note)
    rows = ((64, 8, "69", "4,416", "64%", ""), (128, 10, "108", "13,824", "100%", ""),
            (256, 12, "138", "35,328", "128%", " (the seed calls it '总吞吐量翻倍'; 35,328 / 13,824 = 2.56×)"))
    ep256 = ep256_from_seed(m)
    for chips, bs, tps, total, rel, extra in rows:
        got = _metrics(m, hw, wl, _layout(chips, 4, bs))["tps_chip"]
        err = {CHIPS: ("its own §4 table gives 103 for this layout (10 × 10.3 TPS per batch); 108 is carried into "
                       "§3.1, §3.2 and §5."),
               256: (f"its §4 row TP4 B12 (9.4 tokens/s per user, {ep256['tpot_ms']:.1f} ms) with §6's EP256 saving "
                     f"(MoE 634 → 433 µs in each of {m.n_moe_layers} MoE layers, {ep256['saving_ms']:.1f} ms) runs "
                     f"{ep256['tpot_ms'] - ep256['saving_ms']:.1f} ms: {ep256['per_user']:.2f} tokens/s per user, "
                     f"{ep256['per_chip']:.1f} per chip, not 138.")}.get(chips)
        r.add(table, f"{chips}", "TPS/Chip", tps, got, "tokens/s per chip",
              f"TP4, DP{chips // 4}, EP{chips}, batch {bs} per chip", erratum=err)
        total_err = {CHIPS: "13,824 = 108 × 128; its table's 103 gives 13,184.",
                     256: f"35,328 = 138 × 256; with {ep256['per_chip']:.1f} per chip it is "
                          f"{ep256['per_chip'] * 256:,.0f}."}.get(chips)
        r.add(table, f"{chips}", "总吞吐量", total, got * chips, "tokens/s", f"TPS/chip × {chips}{extra}",
              erratum=total_err)
        r.add(table, f"{chips}", "相对效率", rel, got / base * 100, "% of 128 chips", "TPS/chip over 128 chips'",
              erratum=(f"138 / 108; {ep256['per_chip']:.1f} / 103 (its §4 figure for 128 chips) is "
                       f"{ep256['per_chip'] / 103:.0%}." if chips == 256 else None))


def ep256_from_seed(m: Model) -> dict[str, float]:
    """Seed 002's 256-chip row recomputed from its own figures: the §4 TP4 B12 step (1000 / 9.4
    ms) less §6's EP256 MoE saving (634 → 433 µs per MoE layer), 12 sequences per chip."""
    tpot = 1000 / 9.4
    saving = m.n_moe_layers * (634 - 433) / 1000
    per_user = 1000 / (tpot - saving)
    return {"tpot_ms": tpot, "saving_ms": saving, "per_user": per_user, "per_chip": 12 * per_user}


def _section_3(r: _Records, m: Model, hw: Hardware, wl: Workload) -> None:
    # TBO criterion: "SG2260E实测: 单芯Batch>4时仅能达到12-15 TPS per Batch".
    got = _metrics(m, hw, wl, _layout(CHIPS, 4, 5))["tps_batch"]
    r.add("§3.2 策略1 TBO", "单芯 Batch > 4", "TPS per Batch", "12-15", got, "tokens/s per user",
          "the fastest batch above 4, i.e. 5 per chip at TP4; the seed calls it measured (实测)",
          value=13.5, tolerance=1.5 / 13.5)
    # MoE-TP at TP4, batch 10, 128 chips.
    table = "§3.2 策略2 MoE TP"
    tps = {k: _metrics(m, hw, wl, _layout(CHIPS, 4, 10, k))["tps_chip"] for k in (1, 2, 4)}
    for k, printed, delta in ((1, "108", None), (2, "98", "-9.3%"), (4, "93", "-13.9%")):
        r.add(table, f"MOE_TP {k}", "128 芯实测 TPS/Chip", printed, tps[k], "tokens/s per chip",
              f"TP4, EP{CHIPS // k}, batch 10 per chip"
              + (f"; each expert copy goes to all {k} MoE-TP ranks of its group" if k > 1 else ""),
              erratum="as §3.1: its §4 table gives 103 for this layout." if k == 1 else None)
        if delta:
            r.add(table, f"MOE_TP {k}", "vs MOE_TP 1", delta, (tps[k] / tps[1] - 1) * 100, "%",
                  erratum=f"{delta} is {printed} / 108 − 1; against its §4's 103 it is "
                          f"{float(printed) / 103 - 1:+.1%}.")
    # MLA-TP at batch 10.
    table = "§3.2 策略3 MLA_TP"
    for tp, printed in ((2, "101"), (4, "108"), (8, "84")):
        r.add(table, f"MLA_TP {tp}", "TPS/Chip", printed, _metrics(m, hw, wl, _layout(CHIPS, tp, 10))["tps_chip"],
              "tokens/s per chip", f"DP{CHIPS // tp}, batch 10 per chip",
              erratum="as §3.1: its §4 table gives 103 for this layout." if tp == 4 else None)
    # Its configuration table: 5 batch candidates per TP, 15 in all.
    space = seed_space(m, hw, wl).space
    for tp in TPS:
        r.add("§3.3 生成候选配置", f"MLA_TP {tp}", "配置数", "5", np.count_nonzero(space.tp == tp) * len(space.batch),
              "layouts", exact=True)


def _section_4(r: _Records, m: Model, hw: Hardware, wl: Workload) -> None:
    table = "§4 评估结果示例 (128 芯)"
    printed = {6: ("768", "11.6", "89", "12.2", "11.8"), 8: ("1024", "11.3", "90", "12.7", "12.1"),
               10: ("1280", "10.3", "103", "13.1", "12.6"), 12: ("1536", "9.4", "112", "13.5", "13.0"),
               16: ("2048", "7.8", "125", "14.2", "13.8")}
    tpot = {bs: 1000 / float(p[1]) for bs, p in printed.items()}  # ms, as the seed derives it
    step_ms = ("; the TPOTs it implies (1000 / TPS per batch: " + ", ".join(f"{t:.1f}" for t in tpot.values())
               + f" ms) rise by {tpot[8] - tpot[6]:.1f} ms from batch 6 to 8 but {tpot[10] - tpot[8]:.1f} ms "
               "from 8 to 10, where every per-sequence cost is linear in the batch")
    # FLOPs per sequence its MFU column implies: MFU × 128 TFLOPS × TPOT / batch.
    implied = {bs: float(p[4]) / 100 * hw.peak(wl.weight_dtype) * tpot[bs] / 1e3 / bs / 1e9 for bs, p in printed.items()}
    mfu_note = ("model FLOPs per chip over 128 TFLOPS × TPOT; its MFU × peak × TPOT per sequence gives "
                + ", ".join(f"{g:.0f}" for g in implied.values())
                + " GFLOP for batch 6-16, where the FLOPs per token do not depend on the batch")
    kv_slope = {}
    for bs in (6, 16):
        kv_slope[bs] = _metrics(m, hw, wl, _layout(CHIPS, 4, bs))["dram_gib"]
    ours = (kv_slope[16] - kv_slope[6]) / 10
    seeds = (float(printed[16][3]) - float(printed[6][3])) / 10
    kv = seed002.load_policy().kv_dtype
    per_seq = KV_LEN * m.kv_cache_dim * dtype_bytes(kv) * m.num_hidden_layers / GiB
    dram_note = (f"its code divides by 1 << 30: GiB, labelled GB. It grows {seeds:.2f} GiB per added sequence per "
                 f"chip; in moecalc {ours:.2f} GiB, as every chip of a TP4 group holds the {kv.upper()} latent cache "
                 f"of all four chips' sequences ({per_seq:.2f} GiB each at 4K tokens); memory decides nothing here "
                 "(every layout needs under a third of the 60 GB cap)")
    for bs, (total, tpsb, tpsc, dram, mfu) in printed.items():
        layout = _layout(CHIPS, 4, bs)
        got = _metrics(m, hw, wl, layout)
        row = f"Batch {bs}, TP4"
        r.add(table, row, "Total_Batch", total, bs * 4 * (CHIPS // 4), "sequences", "batch × tp × dp", exact=True)
        r.add(table, row, "TPS/Batch", tpsb, got["tps_batch"], "tokens/s per user",
              ("" if bs != 8 else "seed 002 has TPS per batch = 1000 / TPOT") + (step_ms if bs == 8 else ""))
        err = None
        if bs == 6:
            err = "TPS/Chip must be batch × TPS/Batch = 6 × 11.6 = 69.6 (every other row obeys this); 89 is printed."
        r.add(table, row, "TPS/Chip", tpsc, got["tps_chip"], "tokens/s per chip", "batch per chip × TPS per batch",
              erratum=err)
        r.add(table, row, "DRAM(GB)", dram, got["dram_gib"], "GiB", dram_note)
        r.add(table, row, "MFU(%)", mfu, got["mfu_pct"], "%", mfu_note)


def _section_5(r: _Records, m: Model, hw: Hardware, wl: Workload) -> None:
    res = seed_space(m, hw, wl)
    rej = res.rejected()
    table = "§5 筛选与优选"
    r.add(table, "原始配置数", "", "15", res.evaluated, "layouts", exact=True)
    feasible_slo = res.evaluated - rej["below the SLO"] - rej["indivisible"]  # no layout here is out of memory
    kept = ", ".join(f"TP{x['tp']} B{x['batch_per_device']:g}" for x in (res.layout(*i) for i in res.ranked()))
    choice = _metrics(m, hw, wl, _layout(CHIPS, 4, 10))["tps_batch"]
    tp8 = _metrics(m, hw, wl, _layout(CHIPS, 8, 8))["tps_batch"]
    count_note = (f"moecalc keeps {kept}. The seed's 8 are TP2 and TP4 at batch 6-10 and TP8 at 6 and 8 (its '7 "
                  "filtered, mainly batch ≥ 12' are the six at 12 and 16 plus TP8 B10 at 8.4); TP8 B8 runs at "
                  f"{tp8:.2f} tokens/s per user here. For its TP8 B8 to reach 10 while its TP8 B10 runs 8.4, each "
                  "sequence added per chip would cost ≥ 9.5 ms at TP8, against its 4.3-4.7 ms at TP4 (B8→B12): at "
                  "TP8 a chip reads the cache of 8 sequences per added one instead of 4, which doubles only the "
                  "cache's part of those 4.3-4.7 ms. Every reading here that keeps TP4 B11 below 10 tokens/s "
                  "per user, as the seed's 10.3 and 9.4 imply, keeps TP8 B8 below 10 too")
    r.add(table, "满足TPS per Batch ≥ 10", "", "8", feasible_slo, "layouts", count_note, exact=True)
    r.add(table, "满足DRAM ≤ 60 GB", "", "8", res.feasible, "layouts",
          "every one of the 15 layouts needs under 60 GB per chip in moecalc too; as above for the count",
          exact=True)
    r.add(table, "被过滤的配置", "", "7", rej["below the SLO"] + rej["out of memory"], "layouts",
          "'主要是Batch ≥ 12 的配置': batch 12 and 16 at three TPs are 6 layouts, and TP8 B10 (8.4) the seventh",
          exact=True)
    best = res.ranked(1)
    chosen = res.layout(*best[0]) if best else {}
    note = (f"moecalc's best in the seed's own 15-layout space (seed002 policy) is TP{chosen.get('tp')} at batch "
            f"{chosen.get('batch_per_device', 0):g} per chip, as in the seed")
    for row, printed, key in (("MLA_TP", "4", "tp"), ("MLA_DP", "32", "dp"), ("MOE_TP", "1", "moe_tp"),
                              ("MOE_EP", "128", "ep"), ("单芯Batch", "10", "batch_per_device")):
        r.add(table + " a) 最优配置", row, "配置参数", printed, chosen.get(key), "", note, exact=True)
    r.add(table + " a) 最优配置", "总Batch", "配置参数", "1280",
          chosen["batch"] * chosen["dp"] if chosen else None, "sequences", note, exact=True)
    got = _metrics(m, hw, wl, _layout(CHIPS, 4, 10))
    at = "at the seed's choice, TP4 DP32 EP128, batch 10 per chip"
    t = table + " a) 性能指标"
    r.add(t, "TP4 B10", "TPS per Batch", "10.30", got["tps_batch"], "tokens/s per user", at)
    r.add(t, "TP4 B10", "TPS per Chip", "108.00", got["tps_chip"], "tokens/s per chip", at,
          erratum="10 sequences per chip × 10.3 tokens/s = 103, as its §4 table prints for this layout.")
    r.add(t, "TP4 B10", "总吞吐量", "13,824.00", got["tps_chip"] * CHIPS, "tokens/s", at,
          erratum="108 × 128; with its own 103 TPS per chip it is 13,184.")
    r.add(t, "TP4 B10", "MFU", "12.6%", got["mfu_pct"], "%", at)
    r.add(t, "TP4 B10", "DRAM占用", "12.70 GB", got["dram_gib"], "GiB", at,
          erratum="its §4 table prints 13.1 for the same layout (and the unit is GiB).")
    r.add(t, "TP4 B10", "TPOT", "97.1 ms", got["tpot_ms"], "ms", at + "; 1000 / 10.3 = 97.1 holds")


def _section_5_top(r: _Records, m: Model, hw: Hardware, wl: Workload) -> None:
    table = "§5 3) Top 5配置对比"
    ref = _metrics(m, hw, wl, _layout(CHIPS, 4, 10))["tps_chip"]
    rows = ((1, 4, 10, "10.30", "108.00", None), (2, 2, 10, "10.10", "101.00", "-6.5%"),
            (3, 4, 8, "11.30", "90.00", "-16.7%"), (4, 4, 6, "11.60", "89.00", "-17.6%"),
            (5, 2, 8, "10.80", "86.00", "-20.4%"))
    for rank, tp, bs, tpsb, tpsc, delta in rows:
        got = _metrics(m, hw, wl, _layout(CHIPS, tp, bs))
        row = f"Rank {rank}: TP{tp} B{bs}"
        r.add(table, row, "TPS/Batch", tpsb, got["tps_batch"], "tokens/s per user")
        err = None
        if rank == 1:
            err = "as §5: 10 × 10.3 = 103."
        elif rank == 4:
            err = "6 × 11.6 = 69.6, not 89, which also ranks it above TP2 batch 8 (86)."
        r.add(table, row, "TPS/Chip", tpsc, got["tps_chip"], "tokens/s per chip", erratum=err)
        if delta:
            own = 6 * 11.6 if rank == 4 else float(tpsc)  # rank 4's 89 is itself an erratum (6 × 11.6)
            r.add(table, row, "vs Rank 1", delta, (got["tps_chip"] / ref - 1) * 100, "%",
                  "TPS per chip against rank 1's",
                  erratum=f"{delta} is {tpsc} / 108 − 1; with its §4's 103"
                          + (" and 6 × 11.6 = 69.6" if rank == 4 else "") + f" it is {own / 103 - 1:+.1%}.")


def block_step_ms(m: Model, us: dict[str, float]) -> float:
    """One decode step (ms) from seed 002's §6 block times (µs): the attention blocks in every
    layer, Dense_MLP in the dense layers, MoE in the MoE layers, embedding and LM head once."""
    attention = us["MM_QKV"] + us["MLA"] + us["Attention_FC"]
    return (m.num_hidden_layers * attention + m.n_dense_layers * us["Dense_MLP"] + m.n_moe_layers * us["MoE"]
            + us["Embedding"] + us["LM_Head"]) / 1000


def _section_6(r: _Records, m: Model, hw: Hardware, wl: Workload) -> None:
    table = "§6 2) a) Block耗时分析 (每层)"
    blocks = _blocks_us(m, hw, wl, _layout(CHIPS, 4, 10))
    total = sum(blocks.values())
    printed = {"Embedding": ("7", "0.2"), "MM_QKV": ("264", "7.9"), "MLA": ("379", "11.4"),
               "Attention_FC": ("173", "5.2"), "Dense_MLP": ("589", "17.7"), "MoE": ("634", "19.0"),
               "LM_Head": ("1326", "39.8")}
    one_byte = 40 * KV_LEN * m.kv_cache_dim / (hw.memory_bandwidth * roofline.efficiency(hw).memory) / US
    notes = {
        "MLA": f"the one-byte latent KV of the TP4 group's 40 sequences read by each chip ({one_byte:.0f} µs, close "
               "to the seed's 379) plus the attention's compute at 128 TFLOPS, added",
        "MoE": "two routed experts and the shared expert read per chip, dispatch and combine at 16 GB/s",
        "LM_Head": "once per step (in moecalc BF16 weights, vocab split by TP)",
    }
    step_ms = block_step_ms(m, {k: float(v[0]) for k, v in printed.items()})
    for name, (us, pct) in printed.items():
        r.add(table, name, "Time(μs)", us, blocks[name], "µs", notes.get(name, ""),
              erratum=("the LM head runs once per step, not per layer: 1,326 µs is 1.4 % of its 97.1 ms step, "
                       f"not 39.8 %. Its blocks, the attention ones in all {m.num_hidden_layers} layers, Dense_MLP "
                       f"in {m.n_dense_layers}, MoE in {m.n_moe_layers}, embedding and head once, add to "
                       f"{step_ms:.1f} ms per step, not the 97.1 ms TPOT of its §5." if name == "LM_Head" else None))
        r.add(table, name, "占比(%)", pct, blocks[name] / total * 100, "%",
              "share of the seven blocks' sum, each counted once, as the seed does",
              erratum=("its shares add to 101.2 % and imply a total of 3,332 µs, while its blocks add to "
                       "3,372 µs." if name == "LM_Head" else None))
    ep256 = _blocks_us(m, hw, wl, _layout(256, 4, 10))["MoE"]
    r.add("§6 2) c) 优化建议", "EP256 (256 芯)", "MoE 耗时", "433 μs", ep256, "µs",
          "TP4 DP64 EP256 at batch 10 per chip: one routed expert per chip instead of two")
    r.add("§6 2) c) 优化建议", "EP256 (256 芯)", "vs EP128", "-32%", (ep256 / blocks["MoE"] - 1) * 100, "%")


def records() -> list[dict]:
    """One record per printed figure of seed 002 (see the module docstring)."""
    m, hw, wl = _profiles()
    r = _Records()
    _section_1(r, m, hw, wl)
    _section_2(r, m, hw, wl)
    _section_3(r, m, hw, wl)
    _section_4(r, m, hw, wl)
    _section_5(r, m, hw, wl)
    _section_5_top(r, m, hw, wl)
    _section_6(r, m, hw, wl)
    return list(r)


# ---------------------------------------------------------------- for the book


def signed_error(record: dict) -> float | None:
    """(computed − printed) / printed, or None where moecalc has no figure."""
    if record["computed"] is None or record["value"] == 0:
        return None
    return record["computed"] / record["value"] - 1.0


def reading_cases(base: seed002.Seed002Policy | None = None) -> list[tuple[str, str, seed002.Seed002Policy]]:
    """(name, what changes, policy): the seed002 policy and the other readings of the seed,
    each one assumption of the policy file changed (the last: the previous policy, both
    decisive ones changed)."""
    p = base or seed002.load_policy()
    return [
        ("seed002 policy", "one-byte KV, compute added, DS_TPU's bw_urate and start latency", p),
        ("stated figures only", "links at 64 / 16 GB/s exactly, no latency (the seed states neither)",
         replace(p, link_efficiency=1.0, latency_us=0.0)),
        ("DS_TPU overlap", "80 % of the shorter of compute and memory time hidden (DS_TPU §7.3)",
         replace(p, compute_memory_overlap=0.8)),
        ("compute hidden", "max(compute, memory) per op, as the roofline", replace(p, compute_memory_overlap=1.0)),
        ("BF16 KV", "a two-byte latent cache", replace(p, kv_dtype="bf16")),
        ("compute at 70 %", "every op at 70 % of 128 TFLOPS", replace(p, compute_efficiency=0.7)),
        ("BF16 dispatch", "dispatch and combine in BF16 (A16)",
         replace(p, dispatch_dtype="bf16", combine_dtype="bf16")),
        ("BF16 KV, compute hidden", "the previous seed002 policy: BF16 cache, max(compute, memory), stated links",
         replace(p, kv_dtype="bf16", compute_memory_overlap=1.0, link_efficiency=1.0, latency_us=0.0)),
    ]


def reading_fit(m: Model, hw: Hardware, wl: Workload, policy: seed002.Seed002Policy | None = None,
                full: bool = True) -> dict[str, Any]:
    """How one reading reproduces the seed: tokens/s per user at its 8 printed (TP, batch)
    points (signed errors), its feasible count and ranking over its own 15 layouts, and (with
    `full`) the best layout over every layout of 128 chips."""
    keys = list(PRINTED)
    tp = np.array([k[0] for k in keys], dtype=float)
    bs = np.array([k[1] for k in keys], dtype=float)
    layout = roofline.Layout(tp=tp, dp=CHIPS / tp, moe_tp=1, ep=CHIPS, batch=bs * tp)
    rates = seed002.decode(m, hw, wl, layout, KV_LEN, policy=policy).tokens_per_s_per_user
    errors = {k: float(rates[i]) / PRINTED[k] - 1 for i, k in enumerate(keys)}
    res = seed_space(m, hw, wl, policy)
    ranked = [res.layout(*i) for i in res.ranked()]
    out = {
        "rate": {k: float(rates[i]) for i, k in enumerate(keys)},
        "error": errors,
        "rms": float(np.sqrt(np.mean(np.square(list(errors.values()))))),
        "within": sum(abs(e) <= MODEL_TOLERANCE for e in errors.values()),
        "feasible": res.feasible,
        "ranked": [(x["tp"], int(x["batch_per_device"]), x["tokens_per_s_per_user"], x["tokens_per_s_per_device"])
                   for x in ranked],
        "top3": tuple((x["tp"], int(x["batch_per_device"])) for x in ranked[:3]) == TOP3,
    }
    if full:
        out["best"] = full_space(m, hw, wl, policy).summary(1)["best"]
    return out


def readings(m: Model | None = None, hw: Hardware | None = None, wl: Workload | None = None) -> list[dict]:
    """:func:`reading_fit` of every case of :func:`reading_cases`, with its name and what it changes."""
    if m is None:
        m, hw, wl = _profiles()
    return [{"case": name, "what": what, "policy": p, **reading_fit(m, hw, wl, p)} for name, what, p in reading_cases()]
