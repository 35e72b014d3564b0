"""The roofline policy against published system-level measurements.

``params/measurements/systems.yaml`` lists end-to-end figures (DeepSeek's H800 day-6 averages
and profile-derived throughputs, LMSYS's H100 prefill and decode), each with its source, its
conditions and the deployment parameters kernel data cannot pin (expert-load imbalance,
redundant experts, MTP acceptance), each named and sourced there. :func:`validate` runs the
roofline policy at each point's conditions and returns published vs computed with the signed
error ``(computed − published) / published``: positive means the model is optimistic (too
fast). Efficiencies come from the hardware profiles, calibrated on kernels only
(:mod:`moecalc.calibrate`); nothing here feeds back into them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping

from . import bands, serving
from .errors import InputError
from .frameworks import load_framework
from .profiles import PARAMS_DIR, Hardware, Model, Workload, at_period, load_hardware, load_model, read_yaml
from .policies import roofline as rl
from .units import DTYPE_BYTES

SYSTEMS_FILE = PARAMS_DIR / "measurements" / "systems.yaml"
MODEL = "deepseek-v3"
PHASES = ("decode", "prefill", "aggregated")
METRICS = {
    "output_tokens_per_s_per_node": "decode",
    "output_tokens_per_s_per_gpu": "decode",
    "tokens_per_s_per_user": "decode",
    "tbo_throughput_ratio": "decode",
    "input_tokens_per_s_per_node": "prefill",
    "input_tokens_per_s_per_gpu": "prefill",
    "aggregated_output_tokens_per_s_per_gpu": "aggregated",
}
NODE = 8  # GPUs per node in the *_per_node metrics (the published figures' 8-GPU nodes)
_COMMON = ("id", "source", "setup", "phase", "hardware", "layout", "dtypes", "deployment", "metric", "published",
           "tolerance_pct", "attribution")
# aggregated: prefill and decode on the same GPUs (in-flight batching), prompts of isl and
# outputs of osl tokens, at most chunk_tokens prompt tokens per step (serving.agg_pool)
_PHASE_FIELDS = {"decode": ("kv_len", "mtp_accept"), "prefill": ("tokens_per_gpu", "prompt_len", "kv_cache_hit_rate"),
                 "aggregated": ("isl", "osl", "chunk_tokens", "mtp_accept")}
# Optional: decode's MTP draft tokens per step (default 1); the serving framework's profile
# (params/framework/; default SGLang); the kernel period the system ran (the hardware
# profile's kernel_periods, e.g. "2025-02"; default: the current kernels); the model profile
# (default deepseek-v3); the framework's all-to-all where the run chose another than its
# profile's (e.g. SGLang without --moe-a2a-backend deepep: allgather_reducescatter); the
# cluster's NIC bandwidth per GPU where it differs from the hardware profile's.
_ANY = ("framework", "kernels", "model", "a2a", "scale_out_bandwidth_gb_s")
_OPTIONAL = {"decode": ("mtp_draft",) + _ANY, "prefill": _ANY, "aggregated": _ANY}
_A2A = ("deepep_low_latency", "deepep_normal", "allgather_reducescatter")
_LAYOUT = {"decode": ("tp", "dp", "moe_tp", "ep", "batch", "tbo"), "prefill": ("tp", "dp", "moe_tp", "ep", "tbo"),
           "aggregated": ("tp", "dp", "moe_tp", "ep", "batch", "tbo")}
_DTYPES = ("weight", "kv", "dispatch", "combine")
_DTYPES_OPTIONAL = ("expert",)  # routed experts' weight dtype, default: weight
_DEPLOYMENT = ("expert_imbalance", "redundant_experts")


@dataclass(frozen=True)
class SystemPoint:
    id: str
    source: str
    setup: str
    phase: str
    hardware: str
    layout: Mapping[str, Any]
    dtypes: Mapping[str, str]
    deployment: Mapping[str, float]
    metric: str
    published: float
    tolerance_pct: float
    attribution: str
    conditions: Mapping[str, float]  # kv_len, mtp_accept (decode) or tokens_per_gpu, prompt_len, kv_cache_hit_rate
    mtp_draft: int = 1
    framework: str = "sglang"
    kernels: str | None = None  # kernel period (profiles.at_period), None: current
    model: str = MODEL
    a2a: str | None = None  # the all-to-all the run used, for both phases; None: the framework's
    scale_out_bandwidth: float | None = None  # byte/s per GPU, where the cluster's NICs differ from the profile's


def _number(where: str, key: str, value: Any, lower: float = 0.0, strict: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value in (float("inf"),):
        raise InputError(f"{where}: field '{key}': must be a number, got {value!r}")
    if value < lower or (strict and value == lower):
        raise InputError(f"{where}: field '{key}': must be {'>' if strict else '≥'} {lower:g}, got {value!r}")
    return float(value)


@lru_cache(maxsize=None)
def _framework(name: str):
    """A point's framework profile, read once per process (a band evaluates a point 5 times)."""
    return load_framework(name)


def _framework_name(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise InputError(f"{where}: field 'framework': must be a framework profile name, got {value!r}")
    load_framework(value)  # one error line if it is unknown
    return value


def load_points(path: Path | None = None) -> list[SystemPoint]:
    """Every system point of the data file, checked field by field (one error line)."""
    path = Path(path or SYSTEMS_FILE)
    points = read_yaml(path).get("points")
    if not isinstance(points, list) or not points:
        raise InputError(f"{path}: field 'points': must be a non-empty list")
    out, seen = [], set()
    for i, p in enumerate(points):
        where = f"{path}: points[{i}]"
        if not isinstance(p, dict):
            raise InputError(f"{where}: must be a mapping")
        phase = p.get("phase")
        if phase not in PHASES:
            raise InputError(f"{where}: field 'phase': must be decode or prefill, got {phase!r}")
        for key in _COMMON + _PHASE_FIELDS[phase]:
            if key not in p:
                raise InputError(f"{where}: field '{key}': missing")
        unknown = set(p) - set(_COMMON) - set(_PHASE_FIELDS[phase]) - set(_OPTIONAL[phase])
        if unknown:
            raise InputError(f"{where}: field '{sorted(unknown)[0]}': unknown key for a {phase} point")
        if p["id"] in seen:
            raise InputError(f"{where}: duplicate id {p['id']!r}")
        seen.add(p["id"])
        if METRICS.get(p["metric"]) != phase:
            raise InputError(f"{where}: field 'metric': {p['metric']!r} is not a {phase} metric "
                             f"(known: {', '.join(k for k, v in METRICS.items() if v == phase)})")
        for key, names, extra in (("layout", _LAYOUT[phase], ()), ("dtypes", _DTYPES, _DTYPES_OPTIONAL),
                                  ("deployment", _DEPLOYMENT, ())):
            block = p[key]
            if not isinstance(block, dict) or not set(names) <= set(block) <= set(names) | set(extra):
                raise InputError(f"{where}: field '{key}': must have exactly {', '.join(names)}"
                                 + (f" (and optionally {', '.join(extra)})" if extra else ""))
        for k in p["dtypes"]:
            if p["dtypes"][k] not in DTYPE_BYTES:
                raise InputError(f"{where}: field 'dtypes.{k}': unknown dtype {p['dtypes'][k]!r}")
        if not isinstance(p["layout"]["tbo"], bool):
            raise InputError(f"{where}: field 'layout.tbo': must be true or false")
        for k in _LAYOUT[phase][:-1]:
            _number(where, f"layout.{k}", p["layout"][k], 1.0, strict=False)
        _number(where, "deployment.expert_imbalance", p["deployment"]["expert_imbalance"], 1.0, strict=False)
        _number(where, "deployment.redundant_experts", p["deployment"]["redundant_experts"], 0.0, strict=False)
        conditions = {k: _number(where, k, p[k], 0.0, strict=k != "kv_cache_hit_rate") for k in _PHASE_FIELDS[phase]}
        for key in ("source", "setup", "attribution"):
            if not isinstance(p[key], str):
                raise InputError(f"{where}: field '{key}': must be text")
        kernels = p.get("kernels")
        if kernels is not None:
            if not isinstance(kernels, str):
                raise InputError(f"{where}: field 'kernels': must be a kernel period such as \"2025-02\", got {kernels!r}")
            at_period(load_hardware(p["hardware"]), kernels)  # one error line if the profile lacks it
        model = p.get("model", MODEL)
        if not isinstance(model, str):
            raise InputError(f"{where}: field 'model': must be a model profile name, got {model!r}")
        _model(model)  # one error line if it is unknown
        a2a = p.get("a2a")
        if a2a is not None and a2a not in _A2A:
            raise InputError(f"{where}: field 'a2a': must be one of {', '.join(_A2A)}, got {a2a!r}")
        nic = p.get("scale_out_bandwidth_gb_s")
        nic = None if nic is None else _number(where, "scale_out_bandwidth_gb_s", nic) * 1e9
        draft = p.get("mtp_draft", 1)
        if isinstance(draft, bool) or not isinstance(draft, int) or draft < 1:
            raise InputError(f"{where}: field 'mtp_draft': must be a whole number ≥ 1, got {draft!r}")
        out.append(SystemPoint(
            id=p["id"], source=p["source"], setup=p["setup"], phase=phase, hardware=p["hardware"],
            layout=p["layout"], dtypes=p["dtypes"], deployment=p["deployment"], metric=p["metric"],
            published=_number(where, "published", p["published"]),
            tolerance_pct=_number(where, "tolerance_pct", p["tolerance_pct"]),
            attribution=p["attribution"].strip(), conditions=conditions, mtp_draft=draft,
            framework=_framework_name(where, p.get("framework", "sglang")), kernels=kernels,
            model=model, a2a=a2a, scale_out_bandwidth=nic,
        ))
    return out


def workload(point: SystemPoint) -> Workload:
    """The point's conditions as a workload (dtypes, prompt, cache hits)."""
    d = point.dtypes
    c = point.conditions
    prompt = int(c.get("prompt_len", c.get("isl", c.get("kv_len", 1))))
    return Workload(
        key=point.id, path=SYSTEMS_FILE, name=point.id, sources=(point.source,),
        prompt_len=prompt, output_len=int(c.get("osl", 1)), kv_cache_hit_rate=c.get("kv_cache_hit_rate", 0.0),
        avg_kv_len=int(c.get("kv_len", prompt + c.get("osl", 0) / 2)), min_tokens_per_user=None, max_ttft_s=None,
        max_memory_bytes=None, weight_dtype=d["weight"], activation_dtype="bf16", kv_dtype=d["kv"],
        dispatch_dtype=d["dispatch"], combine_dtype=d["combine"], expert_weight_dtype=d.get("expert"),
    )


def _layout(point: SystemPoint, **override) -> rl.Layout:
    values = {**point.layout, **override}
    return rl.Layout(tp=values["tp"], dp=values["dp"], moe_tp=values["moe_tp"], ep=values["ep"],
                     batch=values.get("batch", 1), tbo=values["tbo"])


@lru_cache(maxsize=None)
def _model(name: str) -> Model:
    return load_model(name)


def point_hardware(point: SystemPoint, hw: Hardware) -> Hardware:
    """`hw` as the point's cluster had it: its NICs, where the point names them."""
    if point.scale_out_bandwidth is None:
        return hw
    return replace(hw, scale_out_bandwidth=point.scale_out_bandwidth)


def compute(point: SystemPoint, m: Model | None, hw: Hardware, expert_imbalance: float | None = None) -> float:
    """The model's figure for `point`, in its metric (imbalance overridable, for solving). `m`
    is used where the point names no other model than the default."""
    if m is None or m.key != point.model:
        m = _model(point.model)
    hw = point_hardware(point, hw)
    wl = workload(point)
    imbalance = point.deployment["expert_imbalance"] if expert_imbalance is None else expert_imbalance
    fw = _framework(point.framework)
    if point.a2a is not None:
        fw = replace(fw, a2a_decode=point.a2a, a2a_prefill=point.a2a)
    kw = dict(expert_imbalance=imbalance, redundant_experts=int(point.deployment["redundant_experts"]),
              framework=fw)
    c = point.conditions
    per_node = NODE if point.metric.endswith("_per_node") else 1.0
    if point.phase == "aggregated":
        layout = _layout(point)
        rl.check_layout(m, layout, kw["redundant_experts"])
        fw = replace(fw, expert_imbalance=imbalance)
        pool = serving.agg_pool(m, hw, wl, layout, c["chunk_tokens"], c["isl"], c["osl"], 0.0, c["mtp_accept"], fw,
                                kw["redundant_experts"], max_utilization=1.0)
        if not bool(pool.fits):
            raise InputError(f"{point.id}: batch {layout.batch} does not fit in memory")
        if float(pool.batch) < layout.batch:
            raise InputError(f"{point.id}: the chunk of {c['chunk_tokens']:g} tokens cannot admit prompts for "
                             f"batch {layout.batch}")
        acc = max(c["mtp_accept"], 1.0)
        return float(pool.batch * acc / pool.step / layout.tp)
    if point.phase == "prefill":
        layout = _layout(point)
        rl.check_layout(m, rl.Layout(tp=layout.tp, dp=layout.dp, moe_tp=layout.moe_tp, ep=layout.ep, batch=1),
                        kw["redundant_experts"])
        p = rl.prefill(m, hw, wl, layout, c["tokens_per_gpu"], c["prompt_len"], c["kv_cache_hit_rate"], **kw)
        rl.check_fits(p, hw, f"prefill of {c['tokens_per_gpu']:g} tokens per GPU")
        return float(p.input_tokens_per_s_per_device) * per_node

    def throughput(tbo: bool) -> float:
        layout = _layout(point, tbo=tbo)
        rl.check_layout(m, layout, kw["redundant_experts"])
        step = rl.decode(m, hw, wl, layout, c["kv_len"], c["mtp_accept"], point.mtp_draft, **kw)
        rl.check_fits(step, hw, f"batch {layout.batch} at KV length {c['kv_len']:g}")
        if point.metric == "tokens_per_s_per_user":
            return float(step.tokens_per_s_per_user)
        return float(rl.tokens_per_s_per_device(step, layout)) * per_node

    if point.metric == "tbo_throughput_ratio":
        return throughput(True) / throughput(False)
    return throughput(bool(point.layout["tbo"]))


def validate(points: list[SystemPoint] | None = None) -> list[dict[str, Any]]:
    """One record per system point: published, computed, signed error in %, within tolerance."""
    points = load_points() if points is None else points
    m = load_model(MODEL)
    hardware: dict[str, Hardware] = {}
    records = []
    for p in points:
        hw = hardware.get(p.hardware) or hardware.setdefault(p.hardware, load_hardware(p.hardware))
        hw = at_period(hw, p.kernels)
        computed = compute(p, m, hw)
        low, high = bands.band(lambda h: compute(p, m, h), hw)
        low, high = min(low, computed), max(high, computed)  # a ratio of two runs can move by rounding only
        error = (computed - p.published) / p.published * 100.0
        records.append({
            "id": p.id,
            "source": p.source,
            "setup": p.setup,
            "metric": p.metric,
            "published": p.published,
            "computed": computed,
            "error_pct": error,
            "tolerance_pct": p.tolerance_pct,
            "within": abs(error) <= p.tolerance_pct,
            "band_low": low,
            "band_high": high,
            "in_band": low <= p.published <= high,
            "attribution": p.attribution,
            "hardware": hw.name,
            "phase": p.phase,
            "framework": p.framework,
            "kernels": p.kernels or "current",
        })
    return records


def imbalance_for_ratio(point: SystemPoint, ratio: float, m: Model | None = None, hw: Hardware | None = None,
                        upper: float = 4.0) -> float:
    """The expert imbalance at which `point`'s figure falls to `ratio` × its balanced figure
    (bisection; the figure falls monotonically as the imbalance grows)."""
    if not 0.0 < ratio <= 1.0:
        raise InputError(f"a throughput ratio from imbalance must be in (0, 1], got {ratio}")
    m = m or load_model(MODEL)
    hw = hw or at_period(load_hardware(point.hardware), point.kernels)
    f: Callable[[float], float] = lambda x: compute(point, m, hw, x)  # noqa: E731
    balanced = f(1.0)
    lo, hi = 1.0, upper
    if f(hi) > ratio * balanced:
        raise InputError(f"{point.id}: even an imbalance of {upper:g} does not lower the figure by {1 - ratio:.0%}")
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if f(mid) > ratio * balanced else (lo, mid)
    return 0.5 * (lo + hi)


def band_summary(records: list[dict[str, Any]]) -> dict[str, float]:
    """Coverage (share of published values inside their band, %) and the median band half-width
    (% of the computed figure: (high − low) / 2 / computed), over `records` from :func:`validate`."""
    if not records:
        raise InputError("no validation records to summarize")
    inside = sum(1 for r in records if r["band_low"] <= r["published"] <= r["band_high"])
    half = sorted((r["band_high"] - r["band_low"]) / 2.0 / r["computed"] * 100.0 for r in records)
    n = len(half)
    median = half[n // 2] if n % 2 else 0.5 * (half[n // 2 - 1] + half[n // 2])
    return {"points": n, "inside": inside, "coverage_pct": inside / n * 100.0, "median_halfwidth_pct": median}
