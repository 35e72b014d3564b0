"""Seed 001 audited: a DeepSeek-V3.2 2P1D SGLang recipe on 32 × H200, item by item.

Seed 001 (``../shared/seeds/001_b1534e11af3c9090.txt``) prints no performance figures: it is a
launch recipe (two 8-GPU prefill instances, one 16-GPU decode instance over two nodes) with
tables that explain its flags. Auditing it means reading its commands as SGLang does
(:mod:`moecalc.launch`, SGLang 0.5.5's own rules and flag definitions; the commands are in
``params/launch/seed-001-{prefill,decode}.sh`` verbatim), checking them against memory and
kernel limits, and checking its claims. :func:`records` gives one record per checkable
item in the common format (:mod:`moecalc.reproduce`): ``published`` is what the seed prints
or sets, ``computed`` what its flags actually do or what moecalc computes, ``match`` whether
they agree, and a note starting ``erratum:`` where the seed is wrong. :func:`prediction`
gives its throughput, TTFT and TPOT for the stated workload (``params/workload/seed-001.yaml``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .. import counts, launch
from ..cli_launch import estimate, framework_for, memory
from ..policies import roofline
from ..profiles import PARAMS_DIR, load_hardware, load_model, load_workload
from ..units import GB

SEED = "../shared/seeds/001_b1534e11af3c9090.txt"
COMMANDS = {role: PARAMS_DIR / "launch" / f"seed-001-{role}.sh" for role in ("prefill", "decode")}
SGLANG = "0.5.5"  # the release of seed 001's time, whose flags and rules its commands are read under
PREFILL_INSTANCES = 2
# EAGLE (MTP head) acceptance of the one drafted token: DeepSeek-V3 technical report
# (arXiv:2412.19437) §5.4.3, "the acceptance rate of the second token prediction ranges between
# 85% and 90%": 1 + 0.85 accepted tokens per step at the low end. V3.2's MTP module has the
# same architecture; no V3.2 figure is published.
MTP_ACCEPT = 1.85
MTP_SOURCE = "DeepSeek-V3 technical report §5.4.3: second-token acceptance 85-90 %"
CONTEXTS = (4096, 16384, 32768, 65536, 131072, 163840)  # 163,840 = V3.2's max_position_embeddings


def _profiles():
    return load_model("deepseek-v3.2"), load_hardware("h200"), load_workload("seed-001")


def commands(m=None, hw=None) -> dict[str, launch.Launch]:
    m, hw, _ = _profiles() if m is None else (m, hw, None)
    return {role: launch.parse("sglang", path.read_text(encoding="utf-8"), m, hw, SGLANG) for role, path in COMMANDS.items()}


class _Records(list):
    def add(self, table: str, row: str, published: str, computed: Any, unit: str, match: bool, note: str,
            erratum: bool = False, value: float | None = None) -> None:
        self.append({"table": table, "row": row, "column": "value", "published": published, "value": value,
                     "computed": computed, "unit": unit, "match": bool(match),
                     "note": ("erratum: " if erratum else "") + note})


def prediction(m=None, hw=None, wl=None) -> dict[str, Any]:
    """2P1D under the roofline for the workload: prefill and decode separately, then the
    request rate the slower side allows (no serving planner: no queueing is modelled)."""
    if m is None:
        m, hw, wl = _profiles()
    cmd = commands(m, hw)
    pre, dec = cmd["prefill"], cmd["decode"]
    e_pre = estimate(pre, m, hw, wl, wl.avg_kv_len, MTP_ACCEPT, wl.prompt_len)["prefill"]
    e_dec = estimate(dec, m, hw, wl, wl.avg_kv_len, MTP_ACCEPT, wl.prompt_len)["decode"]
    prefill_tps = e_pre["tokens_per_s_total"] * PREFILL_INSTANCES
    decode_tps = e_dec["tokens_per_s_total"]
    wl_kv = replace(wl, kv_dtype="bf16" if pre.kv_dtype == "bf16" else "fp8")
    # a lone prompt on one prefill rank (unloaded TTFT), and its KV handed to decode over the
    # prefill GPU's own NIC (Mooncake, RDMA)
    lone = roofline.prefill(m, hw, wl_kv, pre.layout.roofline(), wl.prompt_len, prompt_len=wl.prompt_len,
                            framework=framework_for(pre))
    kv_bytes = wl.prompt_len * counts.kv_format_bytes_per_token(m, pre.kv_dtype)
    transfer = kv_bytes / (hw.scale_out_bandwidth * roofline.efficiency(hw).scale_out)
    rate = min(prefill_tps / wl.prompt_len, decode_tps / wl.output_len)
    return {
        "workload": {"prompt_len": wl.prompt_len, "output_len": wl.output_len, "kv_len": wl.avg_kv_len,
                     "kv_format": pre.kv_dtype, "mtp_accept": MTP_ACCEPT, "mtp_source": MTP_SOURCE},
        "prefill": {"instances": PREFILL_INSTANCES, "tokens_per_rank_per_forward": pre.chunk_per_rank,
                    "forward_s": e_pre["forward_ms"] / 1e3, "tokens_per_s": prefill_tps,
                    "requests_per_s": prefill_tps / wl.prompt_len},
        "decode": {"requests_per_rank": e_dec["batch_per_rank"], "tpot_s": e_dec["tpot_ms"] / 1e3,
                   "tokens_per_s_per_user": e_dec["tokens_per_s_per_user"], "tokens_per_s": decode_tps,
                   "requests_per_s": decode_tps / wl.output_len},
        "ttft_unloaded_s": float(lone.time) + transfer,
        "ttft_full_chunk_s": e_pre["forward_ms"] / 1e3 + transfer,
        "kv_transfer_s": transfer,
        "requests_per_s": rate,
        "bound_by": "prefill" if prefill_tps / wl.prompt_len < decode_tps / wl.output_len else "decode",
        "output_tokens_per_s": rate * wl.output_len,
        "decode_concurrency_needed": rate * wl.output_len * e_dec["tpot_ms"] / 1e3,
    }


def fit_table(m=None, hw=None, wl=None) -> list[dict[str, Any]]:
    """Requests per attention-DP rank whose KV fits in the pool against context length, for
    each instance at its memory fraction (BF16 cache as SGLang sets it, and FP8 for comparison)."""
    if m is None:
        m, hw, wl = _profiles()
    rows = []
    for role, L in commands(m, hw).items():
        for fmt in ("bf16", "fp8+scales"):
            mem = memory(replace(L, kv_dtype=fmt), m, hw, wl)
            for ctx in CONTEXTS:
                rows.append({"instance": role, "kv_format": fmt, "context": ctx,
                             "requests_per_rank": mem["tokens_per_rank"] // ctx,
                             "limit_per_rank": L.running_per_rank, "kv_pool_gb": mem["kv_pool_gb"]})
    return rows


def records() -> list[dict[str, Any]]:
    m, hw, wl = _profiles()
    dense = replace(m, index_n_heads=None, index_head_dim=None, index_topk=None)  # V3.2 without DSA: V3's MLA
    cmd = commands(m, hw)
    pre, dec = cmd["prefill"], cmd["decode"]
    r = _Records()

    # ---------------------------------------------------------- §1 topology and layouts
    r.add("§1, §4", "decode: 'cross-node TP=16'", "16", dec.layout.attention_tp, "attention TP", False,
          f"--tp-size 16 --dp-size 16 --enable-dp-attention set up attention TP{dec.layout.attention_tp} × "
          f"DP{dec.layout.attention_dp} (each GPU runs attention alone for its own requests), MoE "
          f"TP{dec.layout.moe_tp} × EP{dec.layout.ep} (--moe-a2a-backend deepep sets ep = tp), dense FFN "
          f"TP{dec.layout.dense_tp} (--moe-dense-tp-size 1), LM head per DP rank (--enable-dp-lm-head): no "
          "tensor parallelism crosses the nodes; only the DeepEP all-to-all does.", erratum=True, value=16.0)
    r.add("§4", "decode MoE expert parallelism", "16", dec.layout.ep, "EP", dec.layout.ep == 16,
          "SGLang 0.5.5 _handle_a2a_moe: ep_size = tp_size with --moe-a2a-backend deepep: 256 experts, "
          f"{m.n_routed_experts // dec.layout.ep} per GPU.", value=16.0)
    r.add("§3", "prefill instance layout", "8", pre.layout.attention_dp, "attention DP", pre.layout.attention_dp == 8,
          f"each prefill instance: {pre.layout.describe()}.", value=8.0)
    total = PREFILL_INSTANCES * pre.layout.devices + dec.layout.devices
    r.add("§1", "GPUs in all", "32", total, "GPUs", total == 32, "2 prefill instances × 8 + 16 decode.", value=32.0)

    # ---------------------------------------------------------- per-rank limits
    chunk = pre.flags["--chunked-prefill-size"]
    r.add("§3", "--chunked-prefill-size (prefill)", f"{chunk}", pre.chunk_per_rank, "tokens per DP rank per forward",
          False, f"SGLang divides chunked_prefill_size by dp under DP attention (server_args.py "
          f"_handle_data_parallelism): {chunk:,} / {pre.layout.attention_dp} = {pre.chunk_per_rank:,} tokens per "
          "rank and forward, not 65,536; a prompt longer than that is prefilled in several forwards.",
          erratum=True, value=float(chunk))
    for role, L in (("prefill", pre), ("decode", dec)):
        total_req = L.flags["--max-running-requests"]
        r.add("§3, §4", f"--max-running-requests ({role}), instance total", f"{total_req}",
              L.running_per_rank * L.layout.attention_dp, "requests per instance",
              L.running_per_rank * L.layout.attention_dp == total_req,
              f"tp_worker.py: max_running_requests // dp under DP attention: {total_req} / {L.layout.attention_dp} = "
              f"{L.running_per_rank} per DP rank (each GPU), {L.running_per_rank * L.layout.attention_dp} per instance.",
              value=float(total_req))
    r.add("§4 table", "decode limit 'higher than prefill, for more concurrent decode'", "1024",
          dec.running_per_rank, "requests per DP rank", dec.running_per_rank > pre.running_per_rank,
          f"per rank both are {dec.running_per_rank} (1,024 / 16 = 512 / 8); in all, decode holds 1,024 and the two "
          f"prefill instances 2 × 512 = 1,024: the same concurrency, not more.", erratum=True, value=1024.0)
    r.add("§4", "--cuda-graph-bs, largest", "64", max(dec.graph_bs), "requests per rank", max(dec.graph_bs) == 64 ==
          dec.running_per_rank, "the largest captured batch equals the per-rank running limit (64): every decode "
          "batch replays a graph; batches between captured sizes (e.g. 33-63) are padded up to the next one.",
          value=64.0)

    # ---------------------------------------------------------- memory at --mem-fraction-static 0.8
    for role, L in (("prefill", pre), ("decode", dec)):
        mem = memory(L, m, hw, wl)
        r.add("§3, §4", f"{role}: weights + KV pool at --mem-fraction-static 0.8", "0.8",
              mem["usable_gb"] * GB / hw.memory_device_bytes, "share of GPU memory", mem["fits"],
              f"KV pool {mem['kv_pool_gb']:.1f} GB per GPU: 0.8 × {hw.memory_device_bytes / GB:.1f} GB (nvidia-smi) = {mem['usable_gb']:.1f} GB for "
              f"weights {mem['weights_gb']:.1f} GB (EP{L.layout.ep}, with the MTP layer EAGLE drafts with) and KV: "
              f"{mem['tokens_per_rank']:,} tokens at {mem['kv_bytes_per_token']:,.0f} B/token ({L.kv_dtype}: SGLang "
              f"0.5.5 defaults DeepSeek NSA to a BF16 cache on Hopper), i.e. "
              f"{mem['context_per_request_at_limit']:,} tokens per request at {L.running_per_rank} requests per rank.",
              value=0.8)
    fits = fit_table(m, hw, wl)
    long = next(x for x in fits if x["instance"] == "decode" and x["kv_format"] == "bf16" and x["context"] == 131072)
    r.add("§6.2", "decode: the 64 requests per rank its limits allow, at 128K tokens each", "64", long["requests_per_rank"], "requests per rank",
          long["requests_per_rank"] >= 64, f"at 128K tokens of context only {long['requests_per_rank']} requests fit "
          f"per rank ({long['kv_pool_gb']:.1f} GB pool), far from the 64 the limits allow: long contexts are bound "
          "by KV memory, which sparse attention does not shrink.", erratum=True, value=64.0)
    pre_long = next(x for x in fits if x["instance"] == "prefill" and x["kv_format"] == "bf16" and x["context"] == 131072)
    r.add("§3", "prefill: one 128K prompt per rank at 0.8", "1", pre_long["requests_per_rank"], "prompts per rank",
          pre_long["requests_per_rank"] >= 1, f"EP8 leaves {pre_long['kv_pool_gb']:.1f} GB per GPU for KV: "
          f"{pre_long['requests_per_rank']} prompt(s) of 128K tokens per rank.", value=1.0)

    # ---------------------------------------------------------- DeepEP modes
    ll = dec.limit("DeepEP low-latency tokens per rank")
    cap = launch.rules("sglang", SGLANG)["deepep_low_latency_tokens_per_rank"]["value"]
    r.add("§4, §6.1", "decode: DeepEP low_latency tokens per rank", f"{cap}", max(dec.graph_bs) * 2,
          "tokens per rank per dispatch", ll.ok, f"{max(dec.graph_bs)} requests × 2 tokens (EAGLE verify) = "
          f"{max(dec.graph_bs) * 2}: exactly the low-latency buffer's {cap} tokens per rank "
          "(SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK, deepep.py). Any larger graph batch or one more draft "
          "token overflows it unless that variable is raised.", value=float(cap))
    dev = roofline.device(hw, wl)
    t_normal = float(roofline.normal_a2a_time(pre.chunk_per_rank, m.hidden_size * roofline.wire_bytes("fp8"),
                                              pre.layout.ep, m, dev))
    r.add("§3, §6.1", "prefill: DeepEP normal mode", "8192", pre.chunk_per_rank,
          "tokens per rank per forward", pre.chunk_per_rank > cap, f"normal kernels take any token count "
          f"({t_normal * 1e3:.2f} ms per dispatch and layer here, roofline); 8,192 tokens "
          f"per rank is {pre.chunk_per_rank // cap}× what the low-latency buffer holds, so prefill must use normal "
          "mode (which disables CUDA graphs, as SGLang logs). Intranode EP8: NVLink only.", value=float(pre.chunk_per_rank))

    # ---------------------------------------------------------- EAGLE
    drafted = dec.spec_draft_tokens
    r.add("§6.3", "EAGLE: 'speculates 2 tokens each time'", "2", drafted, "drafted tokens per step", drafted == 2,
          f"--speculative-num-steps 1, --speculative-eagle-topk 1, --speculative-num-draft-tokens 2: one draft step "
          f"proposes 1 token; the 2 'draft tokens' are the request's current token plus that one, verified together "
          f"(SGLang forces num_draft_tokens = num_steps + 1 at topk 1). At most 2 tokens per step; expected "
          f"1 + p = {MTP_ACCEPT} ({MTP_SOURCE}).", erratum=True, value=2.0)

    # ---------------------------------------------------------- NSA claims
    L = 131072
    core = lambda mm: sum(v for k, v in counts.mla_ops(mm, 1, L, 1.0, "absorbed").items() if k in counts.ATTENTION_OPS)
    ratio = (core(m) + counts.indexer_flops(m, 1, L)) / core(dense)
    r.add("§6.2", "NSA 'greatly reduces compute' (decode at 128K)", "大幅降低 (greatly reduces)", ratio,
          "attention FLOPs, V3.2 / dense", ratio < 0.2, f"at 128K tokens the attention core scores 2,048 of 131,072 keys ({2048 / L:.4f} of dense) and "
          f"the FP8 indexer adds {counts.indexer_flops(m, 1, L) / core(dense):.3f}: compute does fall.")
    kv_v32, kv_v3 = counts.kv_bytes_per_token(m, 2.0), counts.kv_bytes_per_token(dense, 2.0)
    r.add("§6.2", "NSA 'greatly reduces memory'", "大幅降低 (greatly reduces)", kv_v32 / kv_v3,
          "KV bytes per token, V3.2 / dense", False,
          f"every token stays cached (the indexer must score all of them) and the indexer adds its own FP8 key: "
          f"{kv_v32:,.0f} vs {kv_v3:,.0f} B per token in BF16 (+{100 * (kv_v32 / kv_v3 - 1):.1f} %). Memory grows.",
          erratum=True)
    r.add("§6.2", "'NSA (Native Sparse Attention)'", "NSA", "DSA", "attention mechanism", False,
          "DeepSeek-V3.2 uses DeepSeek Sparse Attention (a lightning indexer and top-k token selection, DeepSeek-V3.2-Exp "
          "report §2.1); 'Native Sparse Attention' is a different DeepSeek paper (arXiv:2502.11089). SGLang merely "
          "names its V3.2 backend 'nsa'.", erratum=True)

    # ---------------------------------------------------------- flag tables against SGLang 0.5.5
    flags = launch.flag_definitions("sglang", SGLANG)["flags"]
    used = sorted(set(pre.flags) | set(dec.flags))
    r.add("§3, §4", "flags the commands use, unknown to SGLang 0.5.5", "0", 0, "flags", True,
          f"all {len(used)} flags parse against sglang/srt/server_args.py 0.5.5 (moecalc launch parse).", value=0.0)
    later = launch.flag_definitions("sglang", "0.5.23")
    spelled = sorted({t.split("=")[0] for path in COMMANDS.values()
                      for t in launch.tokenize(path.read_text(encoding="utf-8"))[0] if t.startswith("--")})
    gone = [f for f in spelled if f not in later["flags"]]
    old = [f for f in spelled if later["flags"].get(f, {}).get("deprecated")]
    r.add("§3, §4", f"flags the commands use, unknown to SGLang {later['version']}", "0", len(gone), "flags", not gone,
          f"version drift, not an error of the seed: at SGLang {later['version']} (the release "
          f"params/framework/sglang.yaml reads) {', '.join(gone)} no longer exist (0.5.23 has --cuda-graph-bs-decode, and "
          "--load-balance-method offers follow_bootstrap_room) and "
          f"{', '.join(old)} is deprecated (--attn-dp-size). The recipe needs an SGLang of its time (0.5.3-0.5.5).",
          value=0.0)
    r.add("§4 table", "--prefill-round-robin-balance", "decode round-robins KV from the prefill instances",
          flags["--prefill-round-robin-balance"]["kind"], "flag", False,
          "SGLang's help: 'Prefill is round robin balanced. This is used to promise decode server can get the correct "
          "dp rank.' It tells the decode server that the prefill side dispatched requests round-robin over its DP "
          "ranks (--load-balance-method round_robin, which the prefill command sets), so the decode side can infer "
          "each request's DP rank; SGLang refuses a decode server with dp > 1 without it.", erratum=True)
    runner = flags["--moe-runner-backend"]["choices"]
    r.add("§7", "table headed '--moe-a2a-backend' listing auto/triton/deep_gemm/flashinfer_trtllm/cutlass",
          "--moe-a2a-backend", "--moe-runner-backend", "flag", False,
          f"those are the choices of --moe-runner-backend ({', '.join(runner)}); --moe-a2a-backend takes "
          f"{', '.join(flags['--moe-a2a-backend']['choices'])}.", erratum=True)
    r.add("§6.1", "--moe-dense-tp-size 1: 'dense layers (shared expert) at TP1'", "1", dec.layout.dense_tp,
          "dense FFN TP", dec.layout.dense_tp == 1, "SGLang's help: 'TP size for MoE dense MLP layers': the "
          f"first_k_dense_replace = {m.first_k_dense_replace} dense-MLP layers run unsplit on each GPU; the shared "
          "expert is part of the MoE layers, not what this flag names.", value=1.0)
    r.add("§6.3", "--deepep-mode: normal for prefill, low_latency for decode", "2", 2, "modes", True,
          "as SGLang's help describes them (and what its 'auto' picks per batch).", value=2.0)

    # ---------------------------------------------------------- disaggregation timeouts
    p = prediction(m, hw, wl)
    worst = 163840 * counts.kv_format_bytes_per_token(m, pre.kv_dtype)
    worst_t = worst / (hw.scale_out_bandwidth * roofline.efficiency(hw).scale_out)
    for name in ("SGLANG_DISAGGREGATION_WAITING_TIMEOUT", "SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT"):
        value = float(dec.env.get(name, 300))
        r.add("§2", name, f"{value:g}", worst_t, "s: KV transfer of a 160K-token prompt", worst_t < value,
              f"default 300 s (disaggregation/mooncake/conn.py); the seed's {value:g} s is far above the KV transfer "
              f"itself ({p['kv_transfer_s'] * 1e3:.0f} ms for a {wl.prompt_len:,}-token prompt, {worst_t:.2f} s for "
              f"160K tokens = {worst / GB:.1f} GB over one 400 Gb/s NIC); what it bounds is queueing plus prefill "
              "(the waiting timeout runs from bootstrap to transfer done): under overload, prompts that wait more "
              f"than {value:g} s are aborted instead of served late.", value=value)

    return r
