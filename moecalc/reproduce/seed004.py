"""Seed 004: a summary of LMSYS's 96 × H100 PD-disaggregated DeepSeek deployment, checked.

Seed 004 (``../shared/seeds/004_4617c708244df820.txt``) summarises LMSYS's blog of 2025-05-05
and then proposes a test plan of its own. It prints six figures and makes three technical
claims. :func:`records` returns one record per figure and claim in the common format (see
:mod:`moecalc.reproduce`). The figures are *measurements*, not arithmetic: ``computed`` is
moecalc's figure under the blog's stated setup (the conditions of
``params/measurements/systems.yaml``), and ``match`` says whether it lies within that
point's tolerance (10 %), not whether it rounds to the printed digits; arithmetic figures
(node counts, ratios, the price) match at their printed precision. Claims have ``value``
None and ``match`` True when the model confirms them. The seed's "test plan" is listed by
:func:`test_plan`, each item marked as the seed writer's proposal or as LMSYS's method.
"""

from __future__ import annotations

from typing import Any

from .. import serving
from ..policies import roofline
from ..profiles import PARAMS_DIR, load_hardware, load_model, read_yaml
from .. import validate
from .seed003 import matches

SEED = "../shared/seeds/004_4617c708244df820.txt"
GPUS, GPUS_PER_NODE = 96, 8
PREFILL_NODES, DECODE_NODES = 4, 9  # the blog's evaluation setup (systems.yaml: EP32 prefill, EP72 decode)
API_PRICES = PARAMS_DIR / "measurements" / "api-prices.yaml"


def api_price(point_id: str = "deepseek-chat") -> dict[str, Any]:
    for p in read_yaml(API_PRICES)["points"]:
        if p["id"] == point_id:
            return p
    raise KeyError(point_id)


def _record(table, row, published, value, computed, unit, match, note) -> dict[str, Any]:
    return {"table": table, "row": row, "column": "value", "published": published, "value": value,
            "computed": float(computed), "unit": unit, "match": bool(match), "note": note}


def records() -> list[dict[str, Any]]:
    m, hw = load_model("deepseek-v3"), load_hardware("h100")
    points = {p.id: p for p in validate.load_points()}
    pre, dec = points["lmsys-headline-prefill-2k"], points["lmsys-decode-2k"]
    pre_model, dec_model = validate.compute(pre, m, hw), validate.compute(dec, m, hw)
    r: list[dict[str, Any]] = []

    def measured(row, published, point, computed):
        err = (computed - point.published) / point.published * 100
        r.append(_record("summary", row, published, point.published, computed, "tokens/s per node",
                         abs(err) <= point.tolerance_pct,
                         f"measurement: roofline at the blog's setup ({point.id}: {point.setup}); error "
                         f"{err:+.1f} % against a ±{point.tolerance_pct:g} % tolerance. {point.attribution}"))

    measured("input tokens/s per node, 2,000-token input", "52.3k", pre, pre_model)
    measured("output tokens/s per node, 2,000-token input", "22.3k", dec, dec_model)

    r.append(_record("summary", "nodes (96 H100)", "12", 12, GPUS / GPUS_PER_NODE, "nodes",
                     matches(GPUS / GPUS_PER_NODE, "12"), "96 GPUs / 8 per node"))
    used = PREFILL_NODES + DECODE_NODES
    r.append(_record("summary", "nodes of the blog's own evaluation setup", "12", 12, used, "nodes", False,
                     f"flag: the blog evaluates {PREFILL_NODES} prefill nodes (EP32) + {DECODE_NODES} decode nodes "
                     f"(EP72) = {used} nodes, against its headline 12 nodes (96 GPUs); the seed repeats the 12"))

    price = hw.price["usd_per_gpu_hour"]
    usd = float(serving.cost(hw, GPUS_PER_NODE, dec_model))
    usd_pub = float(serving.cost(hw, GPUS_PER_NODE, dec.published))
    r.append(_record("summary", "$ per 1M output tokens", "0.20", 0.20, usd, "USD", matches(usd, "0.20"),
                     f"decode GPUs only, at ${price:.2f} per H100-hour (params/hardware/h100.yaml price: "
                     f"{hw.price['source']}, {hw.price['date']}) and the model's {dec_model:,.0f} output tokens/s per "
                     f"node; with the published 22,282: ${usd_pub:.3f}. The seed names no GPU price; the blog's "
                     f"$0.20 implies about $2 per GPU-hour"))
    api = api_price("deepseek-chat")
    ratio = usd / api["usd_per_mtok_output"]
    r.append(_record("summary", "share of DeepSeek's official Chat API price", "0.2", 0.2, ratio, "ratio",
                     matches(ratio, "0.2"),
                     f"'about one fifth': ${usd:.3f} / ${api['usd_per_mtok_output']:.2f} ({api['source']})"))
    for row, point_id, ds_id in (("input per node vs DeepSeek's profile (prefill)", "lmsys-headline-prefill-2k",
                                  "deepseek-profile-prefill"),
                                 ("output per node vs DeepSeek's profile (decode)", "lmsys-decode-2k",
                                  "deepseek-profile-decode")):
        a, b = points[point_id], points[ds_id]
        published_ratio = a.published / b.published
        model_ratio = validate.compute(a, m, hw) / validate.compute(b, m, load_hardware(b.hardware))
        r.append(_record("summary", f"'nearly matches DeepSeek': {row}", "1.0", 1.0, published_ratio, "ratio",
                         abs(published_ratio - 1) <= 0.1,
                         f"the published figures' ratio {a.published:,.0f} / {b.published:,.0f} (H100 vs DeepSeek's "
                         f"H800 profile, {b.source.split(';')[0]}); the model's ratio of the same two setups is "
                         f"{model_ratio:.3f}. 'Nearly matches' holds within 10 % only where the ratio is 0.9-1.1"))

    # claims
    dev = roofline.device(hw)
    fp8 = roofline.wire_bytes("fp8")
    for tokens in (128, 4096):
        normal = float(roofline.normal_a2a_time(tokens, m.hidden_size * fp8, 32, m, dev))
        ll = float(roofline.low_latency_a2a_time(tokens * m.num_experts_per_tok * m.hidden_size * fp8, 32, dev))
        r.append(_record("claims", f"DeepEP normal vs low-latency dispatch, {tokens} tokens per GPU, EP32",
                         "normal for prefill (throughput), low-latency for decode", None, ll / normal,
                         "low-latency time / normal time", True,
                         f"model: normal {normal * 1e6:,.0f} µs, low-latency {ll * 1e6:,.0f} µs. Throughput side "
                         "confirmed: normal kernels send each token once per remote node (node-limited routing) and "
                         "forward over NVLink, low-latency ones send every expert copy over RDMA. The latency side "
                         "is outside the model: both get the same floor here, while DeepEP's normal kernels need a "
                         "CPU-synchronised notify step and do not run inside CUDA graphs, which decode needs; PD "
                         "disaggregation lets each pool use its own mode, as the blog says"))
    dense_tp = m.intermediate_size / 32
    r.append(_record("claims", "dense FFN under TP32: 18,432 / 32", "576", 576, dense_tp, "columns",
                     matches(dense_tp, "576"), "confirmed: 18,432 / 32 = 576"))
    r.append(_record("claims", "576 is not a multiple of 128", "4.5", 4.5, dense_tp / 128, "× 128",
                     dense_tp % 128 != 0,
                     "confirmed: 576 / 128 = 4.5, so a TP32 shard of the dense FFN does not fill whole 128-wide "
                     "tiles (FP8 block scales are 128 × 128); DP dense FFN keeps the full 18,432 per GPU"))
    lay = roofline.Layout(tp=1, dp=72, moe_tp=1, ep=72, batch=1)
    wl = validate.workload(dec)
    per_gpu = float(roofline.weight_bytes_per_device(m, wl, lay, 32))
    whole = float(roofline.weight_bytes_per_device(m, wl, roofline.Layout(), 0))
    r.append(_record("claims", "'DP replicates the whole model' (decode EP72, DP72 attention)", "1", 1.0,
                     per_gpu / whole, "share of the model's weights per GPU", False,
                     f"refuted for this deployment: each GPU holds {per_gpu / 1e9:.1f} GB of the {whole / 1e9:.0f} GB "
                     "(FP8) model: attention, dense layers, embedding and LM head are replicated across DP ranks, "
                     "the routed experts are split by EP (4 of 288 copies per GPU). DP replicates the attention, "
                     "not the model"))
    return r


# The seed's "test plan" (its second half), item by item: who proposes it.
TEST_PLAN: tuple[tuple[str, str, str], ...] = (
    ("tools: SGLang, DeepEP, DeepGEMM", "LMSYS", "the blog's own stack"),
    ("tools: vllm-benchmark, Nsight, Prometheus + Grafana, NCCL debug, ELK", "seed writer",
     "not in the blog; LMSYS benchmarks with SGLang's own bench scripts and publishes profiles"),
    ("metrics: input and output tokens/s", "LMSYS", "the blog's headline metrics"),
    ("metrics: peak vs steady state, 1-B/4-B/8-B concurrency", "seed writer", "the blog reports steady throughput at "
     "fixed tokens per device"),
    ("metrics: GPU/NVLink/network utilisation, memory, load imbalance", "partly LMSYS",
     "the blog shows expert-load balancedness and kernel breakdowns; the utilisation dashboards are the writer's"),
    ("expert routing hit rate, 'expert collapse'", "seed writer", "not in the blog"),
    ("stability: deadlocks, leaks, error rates, node failure recovery", "seed writer", "not in the blog"),
    ("phase 1: 1-8 GPUs, dense vs MoE vs EP+DP", "seed writer", "the blog starts at 4 prefill + 9 decode nodes"),
    ("phase 2: fixed batch, growing expert count; DeepEP mode switching", "seed writer",
     "the blog fixes the mode per pool (normal for prefill, low-latency for decode); no expert-count sweep"),
    ("phase 3: EPLB, DeepGEMM, TBO on/off", "LMSYS", "the blog's ablations (TBO, EPLB; DeepGEMM as part of the stack)"),
    ("phase 3: 'Memory-Aware Allocation (MAA)'", "seed writer", "no such feature in the blog (it describes "
     "DisposableTensor for memory)"),
    ("vLLM baseline vs SGLang; dense vs sparse", "seed writer", "the blog compares with DeepSeek's profile, not vLLM"),
    ("datasets AlpacaEval / MMLU / GSM8K; eval_runner.py", "seed writer", "the blog uses random and in-distribution "
     "prompts for throughput and EPLB statistics"),
)


def test_plan() -> list[dict[str, str]]:
    return [{"item": i, "origin": o, "note": n} for i, o, n in TEST_PLAN]
