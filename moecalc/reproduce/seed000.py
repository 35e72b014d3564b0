"""Seed 000 audited: a vLLM plan for DeepSeek-V3 on 32 H20, figure by figure.

Seed 000 (``../shared/seeds/000_a309604dd2252f65.txt``) plans a 32-H20 vLLM deployment
(TP8 / "EP4" / DP1, BF16 weights, 200 sessions of up to 32k tokens, ≥ 50k tokens/s,
TTFT < 1.2 s) with first-order estimates. Its arithmetic is right; several of its premises
are not. :func:`records` returns one record per figure it prints, in the common record
format (see :mod:`moecalc.reproduce`): ``computed`` recomputes the figure *under the seed's
own premises* with moecalc's units and counts, so ``match`` says whether its arithmetic
holds. Where a premise is wrong the note starts ``erratum:``, says which and why, and
``corrected`` holds moecalc's figure with the premise fixed, in the same unit (None where
the figure stands). :func:`targets` sets the plan's goals against the roofline policy;
:func:`vllm_flags` lists its launch flags against vLLM's documentation.

The corrected layout is what vLLM can run on 32 GPUs with the seed's TP8: attention TP8 ×
DP4, and ``--enable-expert-parallel``, whose EP size vLLM sets to TP × DP = 32 (moe-tp 1,
EP32). Nothing here is typed in but the seed's printed figures and its stated inputs.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .. import counts, schedule
from ..policies import roofline
from ..profiles import Hardware, Model, Workload, load_hardware, load_model, load_workload
from ..units import GB, GFLOP, TB, TFLOPS, GB_PER_S, GiB, dtype_bytes
from .seed003 import matches, parse

SEED = "../shared/seeds/000_a309604dd2252f65.txt"
GPUS = 32
SESSIONS = 200  # "并发：200 活跃会话"
CONTEXT = 32_000  # the context its KV arithmetic uses ("200×32,000×…"); --max-model-len is 32,768
MAX_MODEL_LEN = 32_768
PARAMS = 671e9  # "671e9 × 2 bytes": its parameter count
ACTIVATED = 37e9  # "激活参数≈37B"
EFFICIENCIES = (0.55, 0.65, 0.78)  # its η cases
D_KV_EFF = (1024, 2048, 4096)  # its "effective KV dims"
TARGET_TOKENS_PER_S = 50_000  # "吞吐：≥ 50,000 tokens/s（系统级）"
# vLLM: EP spans TP × DP (--enable-expert-parallel); TP8 as the seed has it, DP4 to reach 32 GPUs.
LAYOUT = dict(tp=8, dp=4, moe_tp=1, ep=32)


def _profiles() -> tuple[Model, Hardware, Workload]:
    return load_model("deepseek-v3"), load_hardware("h20"), load_workload("seed-000")


def fp8(wl: Workload) -> Workload:
    """The same workload with DeepSeek-V3's native FP8 weights (its released checkpoint)."""
    return replace(wl, weight_dtype="fp8")


def layout(batch: float = 1.0) -> roofline.Layout:
    """The 32-GPU layout vLLM runs for the seed's TP8, `batch` sequences per attention-DP rank."""
    return roofline.Layout(batch=batch, **LAYOUT)


def serving(m: Model, hw: Hardware, wl: Workload, sessions: float = SESSIONS) -> dict[str, float]:
    """Decode, prefill and the two shared on one cluster (vLLM colocates them), under the
    roofline policy: `sessions` spread over the attention-DP ranks at the workload's mean KV
    length, a lone prompt per DP rank for TTFT, prefill capacity at that batch."""
    dp = LAYOUT["dp"]
    per_rank = sessions / dp
    step = roofline.decode(m, hw, wl, layout(per_rank), wl.avg_kv_len)
    roofline.check_fits(step, hw, f"{sessions:g} sessions at KV length {wl.avg_kv_len:,}")
    tpot = min(float(step.step_time_no_overlap), float(step.step_time_tbo))  # the better schedule
    decode_rate = sessions / tpot  # output tokens/s (Little's law: sessions in flight / step time)
    prompt = roofline.prefill(m, hw, wl, layout(), wl.prompt_len / LAYOUT["tp"], wl.prompt_len, 0.0)
    prefill_rate = float(prompt.tokens_per_s_per_device) * GPUS
    rate = float(schedule.colocated_request_rate(prefill_rate, decode_rate, wl.prompt_len, wl.output_len))
    return {
        "tpot_s": tpot,
        "tokens_per_s_per_user": 1.0 / tpot,
        "output_tokens_per_s": decode_rate,
        "ttft_s": float(prompt.time),
        "prefill_tokens_per_s": prefill_rate,
        "requests_per_s": rate,
        "system_tokens_per_s": rate * (wl.prompt_len + wl.output_len),
        "flops_per_output_token": float(step.flops_per_device) * LAYOUT["tp"] / per_rank,
        "flops_per_prompt_token": float(prompt.flops_per_device) * LAYOUT["tp"] / wl.prompt_len,
    }


def max_sessions(m: Model, hw: Hardware, wl: Workload, kv_len: float) -> int:
    """Sessions of `kv_len` tokens the 32 GPUs hold beside the weights (every DP rank full)."""
    return int(roofline.max_batch(m, hw, wl, layout(), kv_len)) * LAYOUT["dp"]


# ---------------------------------------------------------------- the records


class _Records(list):
    def add(self, table: str, row: str, published: str, computed: float, unit: str, corrected: float | None = None,
            erratum: str | None = None, note: str = "") -> None:
        value, _ = parse(published.replace(",", ""))
        if erratum and corrected is None:
            raise ValueError(f"{row}: an erratum needs a corrected figure")
        self.append({
            "table": table,
            "row": row,
            "column": "value",
            "published": published,
            "value": value,
            "computed": float(computed),
            "unit": unit,
            "match": matches(float(computed), published.replace(",", "")),
            "note": f"erratum: {erratum}" + (f" {note}" if note else "") if erratum else note,
            "corrected": None if corrected is None else float(corrected),
        })


def records() -> list[dict[str, Any]]:
    """One record per figure seed 000 prints (repeats of a figure recorded once)."""
    m, hw, wl = _profiles()
    r = _Records()
    bf16, native = wl, fp8(wl)
    one = roofline.Layout(tp=1, dp=1, moe_tp=1, ep=1)

    # header and §2.2: memory
    r.add("header, §2.2", "H20 memory, 96 GB in GiB", "89.4", hw.memory_bytes / GiB, "GiB",
          note="holds: 96 × 10⁹ B = 89.4 GiB, the datasheet's decimal GB read in binary units")
    seed_weights = PARAMS * dtype_bytes("fp16")
    whole_fp8 = roofline.weight_bytes_per_device(m, native, one)
    r.add("§1, §2.2", "weights, FP16, total", "1.342", seed_weights / TB, "TB (10¹² B)", whole_fp8 / TB,
          "DeepSeek-V3 ships FP8 weights (block-scaled FP8 matrices; embeddings, head, router and norms in BF16), so "
          "serving it unquantized means FP8: moecalc counts its 671.03 B parameters at "
          f"{whole_fp8 / GB:,.1f} GB. FP16 would be a 2× up-cast.")
    r.add("§1, §2.2", "weights, FP16, total in GiB", "1249.8", seed_weights / GiB, "GiB", whole_fp8 / GiB,
          "as the row above: the FP8 checkpoint is this size.")
    per_gpu_bf16 = float(roofline.weight_bytes_per_device(m, bf16, layout()))
    per_gpu_fp8 = float(roofline.weight_bytes_per_device(m, native, layout()))
    r.add("§2.2", "weights per GPU, total / (TP × EP = 32)", "41.94", seed_weights / GPUS / GB, "GB (10⁹ B)",
          per_gpu_bf16 / GB,
          "TP8 splits only the attention, dense-MLP and LM-head weights 8 ways; the MLA down-projections, "
          "shared experts, router and embedding are replicated; only the routed experts spread over all 32 GPUs. "
          f"At BF16 each GPU holds {per_gpu_bf16 / GB:.2f} GB (FP8: {per_gpu_fp8 / GB:.2f} GB).")
    r.add("§1, §2.2", "weights per GPU in GiB", "39.06", seed_weights / GPUS / GiB, "GiB", per_gpu_bf16 / GiB,
          f"as the row above: {per_gpu_bf16 / GiB:.2f} GiB at BF16, {per_gpu_fp8 / GiB:.2f} GiB at FP8.")
    r.add("§1, §2.2", "HBM left for KV and runtime", "50.34", 89.4 - 39.06, "GiB",
          (hw.memory_bytes - per_gpu_bf16) / GiB,
          "with the weights per GPU above, 96 GB leaves this much at BF16 "
          f"({(hw.memory_bytes - per_gpu_fp8) / GiB:.2f} GiB at FP8), before vLLM's `--gpu-memory-utilization` and "
          "activation buffers.")

    # §3.2: KV cache
    mla_dim = m.kv_cache_dim * m.num_hidden_layers  # cached values per token, every layer
    total_kv = SESSIONS * CONTEXT * counts.kv_bytes_per_token(m, dtype_bytes(wl.kv_dtype))
    for d, printed in zip(D_KV_EFF, ("12.2", "24.4", "48.8")):
        r.add("§3.2", f"KV cache, 200 × 32,000 tokens, d_kv_eff {d:,}, FP16", printed,
              SESSIONS * CONTEXT * d * dtype_bytes("fp16") / GiB, "GiB", total_kv / GiB,
              f"MLA caches a {m.kv_lora_rank}-wide latent and a {m.qk_rope_head_dim}-wide RoPE key per token in each "
              f"of the {m.num_hidden_layers} layers: d_kv_eff = {mla_dim:,}, not 1,024-4,096. 200 × 32,000 tokens take "
              f"{total_kv / GiB:,.1f} GiB, and TP does not split it: every TP rank holds its DP group's whole "
              f"latent cache, {total_kv / LAYOUT['dp'] / GiB:,.1f} GiB per GPU, more than the 89.4 GiB it has.")

    # §4: FLOPs and the compute-bound throughput
    bf16_serving = serving(m, hw, bf16)
    r.add("§4.1, §10", "FLOPs per token, 2 × 37 B", "74", 2 * ACTIVATED / GFLOP, "GFLOP",
          bf16_serving["flops_per_output_token"] / GFLOP,
          f"2 × moecalc's {counts.activated_params(m) / 1e9:.2f} B activated parameters is "
          f"{2 * counts.activated_params(m) / GFLOP:.1f} GFLOP, but attention is not in it: a decoded token at the "
          f"workload's {wl.avg_kv_len:,}-token KV length costs {bf16_serving['flops_per_output_token'] / GFLOP:.1f} "
          f"GFLOP (absorbed MLA), a 4K-prompt token {bf16_serving['flops_per_prompt_token'] / GFLOP:.1f} GFLOP.")
    peak = hw.peak("bf16") * GPUS
    r.add("§4.1", "cluster peak, 148 TFLOPS × 32", "4.736", peak / 1e15, "PFLOPS", hw.peak("fp8") * GPUS / 1e15,
          f"148 TFLOPS is H20's dense BF16 peak, but the native FP8 weights run their GEMMs at the FP8 peak, "
          f"{hw.peak('fp8') / TFLOPS:.0f} TFLOPS.")
    for eta, printed in zip(EFFICIENCIES, ("35.2", "41.6", "50.0")):
        own = eta * peak / (2 * ACTIVATED)
        slip = "" if matches(own / 1e3, printed) else (
            f"(Its own formula gives {own / 1e3:.1f}k at η = {eta}; {printed}k needs η = "
            f"{TARGET_TOKENS_PER_S * 2 * ACTIVATED / peak:.4f}.)")
        r.add("§4.2", f"tokens/s at η = {eta}", printed, own / 1e3, "k tokens/s",
              bf16_serving["system_tokens_per_s"] / 1e3,
              "a compute bound, but decode is bound by memory, kernel floors and the all-to-all, and 200 sessions "
              "emit at most 200 / TPOT tokens/s (Little's law). Under the roofline policy the 200 sessions decode at "
              f"{bf16_serving['tpot_s'] * 1e3:.0f} ms per step ({bf16_serving['output_tokens_per_s']:,.0f} output "
              f"tokens/s), prefill runs {bf16_serving['prefill_tokens_per_s']:,.0f} input tokens/s, and sharing the "
              f"GPUs between the two the cluster serves {bf16_serving['requests_per_s']:.2f} requests/s of "
              f"{wl.prompt_len:,} + {wl.output_len} tokens: the corrected figure, input and output tokens together, "
              "at any η.", note=slip)
    r.add("§4.2", "η that 50k tokens/s needs", "0.78", TARGET_TOKENS_PER_S * 2 * ACTIVATED / peak, "fraction of peak",
          bf16_serving["system_tokens_per_s"] * 2 * ACTIVATED / peak,
          "η is not the lever: the roofline's throughput above, put into the seed's formula, is this η. What "
          "limits the plan is the step time of 200 sessions, not the FLOP rate.")

    # §1 spec notes, against params/hardware/h20.yaml
    r.add("§1", "H20 dense FP16/BF16 peak", "148", hw.peak("bf16") / TFLOPS, "TFLOPS",
          note="holds (params/hardware/h20.yaml); 296 TFLOPS is the FP8 peak, as the seed says")
    r.add("§1, §4.3", "NVLink per direction", "450", hw.scale_up_bandwidth / GB_PER_S, "GB/s",
          note="holds: 900 GB/s is the bidirectional figure (seed 003 uses 400)")

    # §2.1: the layout
    world = LAYOUT["tp"] * 1 * 1  # TP × PP × DP as its flags give them
    r.add("§2.1, §5.1", "GPUs used by TP=8 / EP=4 / DP=1", "32", world, "GPUs", world,
          "vLLM's world size is TP × PP × DP = 8 × 1 × 1 = 8 GPUs: EP is not a dimension of its own (with "
          "`--enable-expert-parallel` the MoE layers use EP = TP × DP). 32 GPUs take TP8 × DP4 (EP32, as audited "
          "here) or TP8 × PP4.")
    return r


def all_reduce(m: Model, hw: Hardware, wl: Workload, tokens: float) -> dict[str, float]:
    """Seed 000's §4.3 all-reduce formula against moecalc's, for `tokens` tokens in flight on
    one TP8 group: the seed's message N = B·S·H / TP · bytes is the TP-split size, but a ring
    all-reduce moves 2(P−1)/P of the *whole* message (every rank ends with the full sum)."""
    tp = LAYOUT["tp"]
    dev = roofline.device(hw, wl)
    rho = 0.775  # the middle of its ρ = 0.7-0.85
    message = tokens * m.hidden_size * dtype_bytes(wl.activation_dtype)
    seed = 2 * (tp - 1) / tp * (message / tp) / (hw.scale_up_bandwidth * rho)
    return {"tokens": tokens, "seed_s": seed, "moecalc_s": float(roofline.all_reduce_time(tokens, m.hidden_size, tp, dev,
                                                                                          dtype_bytes(wl.activation_dtype))),
            "seed_bytes": message / tp, "moecalc_bytes": message}


def targets() -> list[dict[str, Any]]:
    """The plan's goals, what the seed claims, and what the roofline policy gives on its
    32 H20 at BF16 (the seed's premise) and at FP8 (the checkpoint)."""
    m, hw, wl = _profiles()
    rows = []
    for name, w in (("BF16 weights", wl), ("FP8 weights", fp8(wl))):
        s = serving(m, hw, w)
        rows.append({
            "weights": name,
            "sessions_at_32k": max_sessions(m, hw, w, MAX_MODEL_LEN),
            "sessions_at_mean_kv": max_sessions(m, hw, w, w.avg_kv_len),
            "ttft_s": s["ttft_s"],
            "tokens_per_s_per_user": s["tokens_per_s_per_user"],
            "output_tokens_per_s": s["output_tokens_per_s"],
            "prefill_tokens_per_s": s["prefill_tokens_per_s"],
            "system_tokens_per_s": s["system_tokens_per_s"],
        })
    return rows


# vLLM launch flags of seed 000 §5.2, against vLLM's engine-argument reference.
VLLM_DOCS = ("docs.vllm.ai, 'Engine Arguments' (v0.8.5) and 'Expert Parallel Deployment' (v0.10.1): "
             "'Enable EP by setting the --enable-expert-parallel flag. The EP size is automatically calculated'")


def vllm_flags() -> list[dict[str, str]]:
    """Each launch flag of seed 000 §5.2: whether vLLM has it, and what it has instead."""
    return [
        {"flag": "--tensor-parallel-size 8", "verdict": "exists", "instead": ""},
        {"flag": "--expert-parallel-size 4", "verdict": "no such flag",
         "instead": "--enable-expert-parallel (EP = TP × DP, not set separately)"},
        {"flag": "--pipeline-parallel-size 1", "verdict": "exists", "instead": ""},
        {"flag": "--data-parallel-size 1", "verdict": "exists, but 1 leaves 24 of the 32 GPUs idle",
         "instead": "--data-parallel-size 4 with TP 8"},
        {"flag": "--kv-cache-dtype fp16", "verdict": "not a choice", "instead": "auto (the model dtype), fp8, fp8_e4m3, fp8_e5m2"},
        {"flag": "--enable-moe true", "verdict": "no such flag", "instead": "MoE is read from the model's config"},
        {"flag": "--moe-topk 8", "verdict": "no such flag", "instead": "num_experts_per_tok comes from config.json"},
        {"flag": "--moe-capacity-factor 1.25", "verdict": "no such flag",
         "instead": "none: vLLM's MoE kernels drop no tokens, so there is no capacity factor"},
        {"flag": "--disable-log-stats false", "verdict": "takes no value", "instead": "omit it (stats are logged by default)"},
        {"flag": "--max-num-seqs 2048", "verdict": "exists", "instead": "far above what fits (see the targets table)"},
        {"flag": "--gpu-memory-utilization 0.92", "verdict": "exists", "instead": ""},
        {"flag": "--enforce-eager", "verdict": "exists", "instead": "disables CUDA graphs, which decode at small batch needs"},
    ]
