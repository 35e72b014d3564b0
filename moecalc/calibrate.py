"""The roofline policy against published kernel measurements: model vs measurement, per point.

``params/measurements/kernels.yaml`` lists single-kernel figures (DeepGEMM, DeepEP normal and
low-latency, FlashMLA, FlashAttention-3, InferSim's H20 benchmarks), each with its source and
the conditions it was measured under. :func:`evaluate` runs the roofline policy's *own* op
functions (:mod:`moecalc.policies.roofline`) at each point's conditions with the point's
hardware profile, and reports the model's figure in the point's metric beside the measured
one, with the signed error ``(model − measured) / measured``.

A point may ``pin`` an efficiency entry: that entry's value was set from this point, so the
model meets it by construction (error ≈ 0 up to rounding); every other point is a check of
the kernel model, not of the fit. System-level figures (systems.yaml) are never used here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .checks import MAX_COUNT
from .counts import KV_FORMATS
from .units import DTYPE_BYTES
from .errors import InputError
from .profiles import EFFICIENCY_FIELDS, PARAMS_DIR, at_period, load_hardware, load_model, read_yaml
from .policies import roofline as rl

KERNELS_FILE = PARAMS_DIR / "measurements" / "kernels.yaml"
MODEL = "deepseek-v3"  # DeepEP's and FlashMLA's tests use DeepSeek-V3's hidden size, experts and top-k
KERNELS = ("gemm", "grouped_gemm", "mla_decode", "attention_prefill", "deepep_normal", "deepep_low_latency",
           "all_reduce", "small_kernel", "launch_gap", "host_step", "eager_launch",
           "mla_sparse_decode", "mla_sparse_prefill")
# The overhead terms: a small all-reduce (nccl-tests), a small memory-bound kernel (its floor
# and the launch gap before it), the gap itself, and the framework's host time per step and
# host launch per kernel outside a CUDA graph (conditions name the framework profile).
METRICS = ("tflops", "gb_s", "us")
# Condition values are positive integers (sizes, counts) except these.
_CONDITION_KINDS = {"op": "str", "kv_dtype": "str", "framework": "str", "causal": "bool"}
_REQUIRED = ("id", "hardware", "kernel", "conditions", "metric", "measured", "tolerance_pct", "source")


@dataclass(frozen=True)
class KernelPoint:
    id: str
    hardware: str
    kernel: str
    conditions: Mapping[str, Any]
    metric: str
    measured: float
    tolerance_pct: float
    source: str
    pins: str | None = None
    period: str | None = None  # an earlier kernel release's figure (the profile's kernel_periods)


def load_points(path: Path | None = None) -> list[KernelPoint]:
    """Every kernel point of the data file, checked field by field (one error line)."""
    path = Path(path or KERNELS_FILE)
    data = read_yaml(path)
    points = data.get("points")
    if not isinstance(points, list) or not points:
        raise InputError(f"{path}: field 'points': must be a non-empty list")
    out, seen = [], set()
    for i, p in enumerate(points):
        where = f"{path}: points[{i}]"
        if not isinstance(p, dict):
            raise InputError(f"{where}: must be a mapping")
        for key in _REQUIRED:
            if key not in p:
                raise InputError(f"{where}: field '{key}': missing")
        unknown = set(p) - set(_REQUIRED) - {"pins", "period"}
        if unknown:
            raise InputError(f"{where}: field '{sorted(unknown)[0]}': unknown key")
        if p["id"] in seen:
            raise InputError(f"{where}: duplicate id {p['id']!r}")
        seen.add(p["id"])
        if p["kernel"] not in KERNELS:
            raise InputError(f"{where}: field 'kernel': must be one of {', '.join(KERNELS)}, got {p['kernel']!r}")
        if p["metric"] not in METRICS:
            raise InputError(f"{where}: field 'metric': must be one of {', '.join(METRICS)}, got {p['metric']!r}")
        for key in ("measured", "tolerance_pct"):
            v = p[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v <= 0:
                raise InputError(f"{where}: field '{key}': must be a positive number, got {v!r}")
        if p.get("pins") is not None and p["pins"] not in EFFICIENCY_FIELDS:
            raise InputError(f"{where}: field 'pins': not an efficiency entry: {p['pins']!r}")
        if not isinstance(p["conditions"], dict):
            raise InputError(f"{where}: field 'conditions': must be a mapping")
        for key, v in p["conditions"].items():
            kind = _CONDITION_KINDS.get(key, "count")
            ok = (isinstance(v, str) if kind == "str" else isinstance(v, bool) if kind == "bool"
                  else not isinstance(v, bool) and isinstance(v, int) and 0 < v <= MAX_COUNT)
            if not ok:
                want = {"str": "text", "bool": "true or false", "count": "a positive integer"}[kind]
                raise InputError(f"{where}: field 'conditions.{key}': must be {want}, got {v!r}")
        if p["conditions"].get("kv_dtype", "bf16") not in (*DTYPE_BYTES, *KV_FORMATS):
            raise InputError(f"{where}: field 'conditions.kv_dtype': unknown dtype {p['conditions']['kv_dtype']!r}")
        out.append(KernelPoint(id=p["id"], hardware=p["hardware"], kernel=p["kernel"], conditions=p["conditions"],
                               metric=p["metric"], measured=float(p["measured"]),
                               tolerance_pct=float(p["tolerance_pct"]), source=p["source"], pins=p.get("pins"),
                               period=None if p.get("period") is None else str(p["period"])))
    return out


def _cond(point: KernelPoint, key: str, default: Any = None) -> Any:
    if key in point.conditions:
        return point.conditions[key]
    if default is None:
        raise InputError(f"kernel point {point.id}: conditions lack '{key}'")
    return default


def _gemm(point: KernelPoint, dev: rl.Device, grouped: bool) -> tuple[float, float, float]:
    """(seconds, FLOPs, bytes as DeepGEMM counts them: FP8 inputs and weights, BF16 output)."""
    m, n, k = (_cond(point, "m_per_group" if grouped else "m"), _cond(point, "n"), _cond(point, "k"))
    g = _cond(point, "groups", 1)
    rate = dev.grouped_flops if grouped else dev.gemm_flops
    t = rl.gemm_time(m, k, n, 1.0, rl.wire_bytes("fp8"), 2.0, dev, rate, g)
    return float(t), 2.0 * g * m * n * k, g * (m * k + n * k + 2.0 * m * n)


def _mla_decode(point: KernelPoint, dev: rl.Device, model) -> tuple[float, float, float]:
    """FlashMLA's test: FLOPs 2 · s_q · b · s_k · h · (d + dv), bytes (b·s_k·d + b·s_q·h·(d + dv)) · 2."""
    b, sq, sk, h = (_cond(point, k) for k in ("batch", "s_q", "s_k", "heads"))
    kvb = rl.dtype_bytes(_cond(point, "kv_dtype", "bf16"))
    t = float(rl.mla_decode_time(b, sq, sk, h, model, kvb, 2.0, dev))
    d, dv = model.kv_cache_dim, model.kv_lora_rank
    return t, 2.0 * sq * b * sk * h * (d + dv), (b * sk * d * kvb + b * sq * h * (d + dv) * 2.0)


def _mla_sparse_decode(point: KernelPoint, dev: rl.Device, model) -> tuple[float, float, float]:
    """FlashMLA's sparse decoding test: FLOPs 2 · b · s_q · h · topk · (d + dv); bytes: each query's
    topk gathered rows of the 656-byte FP8 cache (FlashMLA's format) plus q and o."""
    b, sq, h, k = (_cond(point, key) for key in ("batch", "s_q", "heads", "topk"))
    kvb = 656.0 / model.kv_cache_dim  # bytes per cached element in FlashMLA's FP8-with-scales layout
    t = float(rl.sparse_mla_decode_time(b, sq, k, h, model, kvb, 2.0, dev))
    d, dv = model.kv_cache_dim, model.kv_lora_rank
    return t, 2.0 * b * sq * h * k * (d + dv), b * sq * (k * 656.0 + h * (d + dv) * 2.0)


def _mla_sparse_prefill(point: KernelPoint, dev: rl.Device, model) -> tuple[float, float, float]:
    """FlashMLA's sparse prefill test: s_q queries, each over topk of s_kv keys, h heads, MQA mode."""
    sq, skv, h, k = (_cond(point, key) for key in ("s_q", "s_kv", "heads", "topk"))
    pairs = sq * min(k, skv)
    t = float(rl.sparse_mla_prefill_time(pairs, sq, skv, h, model, 2.0, dev))
    return t, 2.0 * h * pairs * (model.kv_cache_dim + model.kv_lora_rank), 0.0


def _attention_prefill(point: KernelPoint, dev: rl.Device) -> tuple[float, float, float]:
    b, s, h = (_cond(point, k) for k in ("batch", "seqlen", "heads"))
    qk, v = _cond(point, "qk_dim"), _cond(point, "v_dim")
    pairs = b * (s * (s + 1) / 2 if _cond(point, "causal", True) else s * s)
    t = float(rl.attention_prefill_time(pairs, b * s, b * s, h, qk, v, 2.0, dev))
    return t, 2.0 * h * pairs * (qk + v), 0.0


def _deepep(point: KernelPoint, dev: rl.Device, model, normal: bool) -> tuple[float, float, float]:
    """(seconds, 0, bytes as DeepEP's benchmark counts them)."""
    ep, tokens, op = _cond(point, "ep"), _cond(point, "tokens"), _cond(point, "op")
    if op not in ("dispatch", "combine"):
        raise InputError(f"kernel point {point.id}: op must be dispatch or combine, got {op!r}")
    per_elem = rl.wire_bytes("fp8") if op == "dispatch" else rl.dtype_bytes("bf16")
    bpt = model.hidden_size * per_elem
    if not normal:
        nbytes = tokens * model.num_experts_per_tok * bpt
        return float(rl.low_latency_a2a_time(nbytes, ep, dev)), 0.0, nbytes
    nodes = max(ep // dev.scale_up_domain, 1)
    # DeepEP V1's tests use one expert group per node and top-min(nodes, 4) groups; a point
    # may give the model's own grouping instead (n_group, topk_group)
    groups = int(_cond(point, "n_group", nodes))
    top_groups = int(_cond(point, "topk_group", min(nodes, 4)))
    t = float(rl.normal_a2a_time(tokens, bpt, ep, model, dev, n_group=groups, topk_group=top_groups))
    units = ep if nodes == 1 else nodes  # intranode counts NVLink receipts, internode RDMA sends
    hit = rl.expected_units_hit(model.n_routed_experts, model.num_experts_per_tok, groups, top_groups, units)
    return t, 0.0, tokens * hit * bpt


def _overhead(point: KernelPoint, dev: rl.Device) -> float:
    """Seconds of one overhead term at the point's conditions."""
    kind = point.kernel
    if kind == "all_reduce":  # ranks, bytes: one all-reduce of `bytes` over `ranks` devices (NCCL, or a framework's own)
        from .frameworks import load_framework

        fw = load_framework(point.conditions["framework"]) if "framework" in point.conditions else None
        return float(rl.all_reduce_time(1.0, float(_cond(point, "bytes")), float(_cond(point, "ranks")), dev, 1.0, fw))
    if kind == "small_kernel":  # bytes moved by one memory-bound kernel, and the gap before it
        return float(rl.elementwise_time(float(_cond(point, "bytes")), dev)) + dev.eff.launch_gap
    if kind == "launch_gap":
        return dev.eff.launch_gap
    from .frameworks import load_framework

    fw = load_framework(_cond(point, "framework"))
    return fw.host_step if kind == "host_step" else fw.eager_launch


def model_value(point: KernelPoint, hw=None, model=None) -> float:
    """The roofline model's figure for `point`, in the point's metric."""
    hw = hw or at_period(load_hardware(point.hardware), point.period)
    model = model or load_model(MODEL)
    dev = rl.device(hw, weight_dtype="fp8")
    kind = point.kernel
    if kind in ("all_reduce", "small_kernel", "launch_gap", "host_step", "eager_launch"):
        if point.metric != "us":
            raise InputError(f"kernel point {point.id}: a {kind} point is a time; use us")
        return _overhead(point, dev) * 1e6
    if kind in ("gemm", "grouped_gemm"):
        t, flops, nbytes = _gemm(point, dev, kind == "grouped_gemm")
    elif kind == "mla_decode":
        t, flops, nbytes = _mla_decode(point, dev, model)
    elif kind == "attention_prefill":
        t, flops, nbytes = _attention_prefill(point, dev)
    elif kind == "mla_sparse_decode":
        t, flops, nbytes = _mla_sparse_decode(point, dev, model)
    elif kind == "mla_sparse_prefill":
        t, flops, nbytes = _mla_sparse_prefill(point, dev, model)
    else:
        t, flops, nbytes = _deepep(point, dev, model, kind == "deepep_normal")
    if point.metric == "us":
        return t * 1e6
    if point.metric == "tflops":
        if not flops:
            raise InputError(f"kernel point {point.id}: a {kind} point has no FLOP count; use gb_s or us")
        return flops / t / 1e12
    return nbytes / t / 1e9


def evaluate(points: list[KernelPoint] | None = None) -> list[dict[str, Any]]:
    """One record per kernel point: measured, model, signed error in %, within tolerance."""
    points = load_points() if points is None else points
    model = load_model(MODEL)
    hardware: dict[str, Any] = {}
    records = []
    for p in points:
        hw = hardware.get(p.hardware) or hardware.setdefault(p.hardware, load_hardware(p.hardware))
        value = model_value(p, at_period(hw, p.period), model)
        # for a time, a model that is too slow has a positive error; for a rate, too fast
        error = (value - p.measured) / p.measured * 100.0
        records.append({
            "id": p.id,
            "hardware": p.hardware,
            "kernel": p.kernel,
            "conditions": dict(p.conditions),
            "metric": p.metric,
            "measured": p.measured,
            "model": value,
            "error_pct": error,
            "tolerance_pct": p.tolerance_pct,
            "within": abs(error) <= p.tolerance_pct,
            "pins": p.pins,
            "period": p.period,
            "source": p.source,
        })
    return records


def fit_fraction(points: list[KernelPoint], entry: str, hw=None, lo: float = 0.2, hi: float = 1.0) -> float:
    """The value of the efficiency fraction `entry` of `hw` (default: the points' GPU) that
    best fits `points` in the log-least-squares sense (the rule the profiles' fits state):
    minimise Σ ln(model / measured)² by golden-section search over [lo, hi]. For sizing what
    a different calibration set would give (e.g. only one layout's grouped-GEMM rows)."""
    if not points:
        raise InputError(f"no kernel points to fit '{entry}' to")
    hw = hw or at_period(load_hardware(points[0].hardware), points[0].period)
    model = load_model(MODEL)

    def cost(x: float) -> float:
        h = replace(hw, efficiency={**hw.efficiency, entry: {"value": x, "source": "fit"}})
        return sum(math.log(model_value(p, h, model) / p.measured) ** 2 for p in points)

    g = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    for _ in range(60):
        c, d = b - g * (b - a), a + g * (b - a)
        a, b = (a, d) if cost(c) < cost(d) else (c, b)
    return 0.5 * (a + b)
