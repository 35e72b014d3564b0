"""Load and validate the YAML profiles under params/ into frozen dataclasses in SI units.

A profile is named either by its stem (``h800`` → ``params/hardware/h800.yaml``) or by a
path to a YAML file. Every field is checked for presence, type, range and spelling; the
first problem raises one :class:`InputError` line that names the file and the field.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from .checks import MAX_COUNT, escape
from .errors import InputError
from .units import DTYPE_BYTES, GB, GB_PER_S, PEAK_DTYPE, MiB, TFLOPS, US

PARAMS_DIR = Path(os.environ.get("MOECALC_PARAMS", Path(__file__).resolve().parent.parent / "params"))
KINDS = ("hardware", "model", "workload", "policy", "framework")
TINY = 1e-12  # smallest non-zero number a profile may give, in its own unit
# Largest value a profile number may have once in SI units (FLOP/s, byte, byte/s, s). Any
# accelerator quantity is far below it (10^12 × today's peak FLOP/s); it keeps the products
# of a few such values, and their sums over layers and kernels, far from float overflow.
HUGE_SI = 1e30
# Every YAML file read_yaml has parsed in this process, resolved. The book driver reads it at
# the end of each page, so that a page's hash covers the profiles it used and no others.
FILES_READ: set[Path] = set()


# ---------------------------------------------------------------- schema and validation


@dataclass(frozen=True)
class Spec:
    """How one YAML field is checked and converted.

    kind: "number" (finite, > 0 unless `zero_ok`), "fraction" (in [0, 1) or (0, 1]),
    "int" (> 0 unless `zero_ok`), "str", "bool", "dtype", "strings" (a non-empty list of
    strings), or "map" (a nested mapping checked against `children`; with `any_keys` the
    keys are free and every value is checked against `children["*"]`).
    """

    kind: str
    unit: float = 1.0
    required: bool = True
    zero_ok: bool = False
    upper: float | None = None  # inclusive upper bound, e.g. 1 for fractions
    children: Mapping[str, "Spec"] | None = None
    any_keys: Callable[[str], bool] | None = None
    default: Any = None
    si: float = 1.0  # for a value kept in its own unit (µs): its factor to SI, for the range check only


def _fail(path: Path, name: str, message: str) -> InputError:
    return InputError(f"{path}: field '{name}': {message}")


def _check(value: Any, spec: Spec, path: Path, name: str) -> Any:
    kind = spec.kind
    if kind in ("number", "fraction"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(path, name, f"must be a number, got {value!r}")
        if math.isnan(value) or math.isinf(value):
            raise _fail(path, name, f"must be finite, got {value!r}")
        if value < 0 or (value == 0 and not spec.zero_ok):
            raise _fail(path, name, f"must be {'≥ 0' if spec.zero_ok else '> 0'}, got {value!r}")
        if spec.upper is not None and value > spec.upper:
            raise _fail(path, name, f"must be ≤ {spec.upper:g}, got {value!r}")
        if 0 < value < TINY:  # zero in effect: dividing by it overflows to inf
            raise _fail(path, name, f"must be {'0 or ' if spec.zero_ok else ''}≥ {TINY:g}, got {value!r}")
        si = float(value) * spec.unit * spec.si
        if not math.isfinite(si) or si > HUGE_SI:  # checked after conversion: what the model uses
            raise _fail(path, name, f"is too large, got {value!r} ({si:.3g} in SI units, at most {HUGE_SI:g})")
        return float(value) * spec.unit
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(path, name, f"must be an integer, got {value!r}")
        if value < 0 or (value == 0 and not spec.zero_ok):
            raise _fail(path, name, f"must be {'≥ 0' if spec.zero_ok else '> 0'}, got {value!r}")
        if value > MAX_COUNT:  # floats hold integers exactly only up to here
            raise _fail(path, name, f"is too large, got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str) or not value.strip():
            raise _fail(path, name, f"must be a non-empty string, got {value!r}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise _fail(path, name, f"must be true or false, got {value!r}")
        return value
    if kind == "dtype":
        if value not in DTYPE_BYTES:
            raise _fail(path, name, f"must be one of {', '.join(DTYPE_BYTES)}, got {value!r}")
        return value
    if kind == "strings":
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, str) and v.strip() for v in value)
        ):
            raise _fail(path, name, "must be a non-empty list of strings")
        return tuple(value)
    if kind == "map":
        if not isinstance(value, dict):
            raise _fail(path, name, f"must be a mapping, got {type(value).__name__}")
        return _check_mapping(value, spec, path, prefix=f"{name}.")
    raise AssertionError(f"unknown spec kind {kind}")  # a bug in a schema, not bad input


def _check_mapping(data: Mapping[str, Any], spec: Spec, path: Path, prefix: str = "") -> dict[str, Any]:
    children = spec.children or {}
    out: dict[str, Any] = {}
    if spec.any_keys is not None:
        if not data:
            raise _fail(path, prefix.rstrip("."), "must not be empty")
        for key, value in data.items():
            if not isinstance(key, str) or not spec.any_keys(key):
                raise _fail(path, f"{prefix}{key}", "unknown key")
            out[key] = _check(value, children["*"], path, f"{prefix}{key}")
        return out
    for key in data:
        if key not in children:
            raise _fail(path, f"{prefix}{key}", "unknown key")
    for key, child in children.items():
        if key in data and data[key] is not None:
            out[key] = _check(data[key], child, path, f"{prefix}{key}")
        elif child.required:
            raise _fail(path, f"{prefix}{key}", "missing")
        else:
            out[key] = child.default
    return out


class _DuplicateKey(Exception):
    def __init__(self, key: str, first: int, line: int):
        super().__init__(key)
        self.key, self.first, self.line = key, first, line


def _unique_key_loader():
    """yaml's SafeLoader, refusing a mapping that gives one key twice (PyYAML would keep the
    last value silently, and a later error would blame something else)."""
    import yaml

    # libyaml's parser where PyYAML has it (the same constructors and resolver, about 5× faster:
    # every book page reads the calibration data), the pure-Python one otherwise
    class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
        def construct_mapping(self, node, deep=False):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise _DuplicateKey(escape(str(key)), seen[key], line)
                    seen[key] = line
                except TypeError:  # an unhashable key: SafeLoader reports it
                    continue
            return super().construct_mapping(node, deep)

    return Loader


class _LazyLoader:
    loader = None


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse one YAML file into a mapping, or raise a one-line InputError."""
    import yaml  # imported here: only loading needs it

    if _LazyLoader.loader is None:
        _LazyLoader.loader = _unique_key_loader()
    _UniqueKeyLoader = _LazyLoader.loader

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:  # a binary or mis-encoded file
        raise InputError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except _DuplicateKey as exc:
        raise InputError(f"{path}: field '{exc.key}': given twice (line {exc.first} and line {exc.line})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise InputError(f"{path}: not valid YAML{where}: {problem}") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer past Python's 4,300-digit limit
        raise InputError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    FILES_READ.add(Path(path).resolve())
    if data is None:
        raise InputError(f"{path}: empty profile")
    if not isinstance(data, dict):
        raise InputError(f"{path}: a profile must be a mapping of fields, got {type(data).__name__}")
    return data


def resolve(kind: str, name_or_path: str | os.PathLike[str]) -> Path:
    """A profile name (file stem under params/<kind>/) or a path to a YAML file → its path."""
    text = os.fspath(name_or_path)
    if not text:
        raise InputError(f"missing {kind} profile name")
    candidate = Path(text)
    as_path = candidate.suffix in (".yaml", ".yml") or os.sep in text or "/" in text
    path = candidate if as_path else PARAMS_DIR / kind / f"{text}.yaml"
    try:
        found = path.is_file()
    except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL byte
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InputError(f"{kind} profile {escape(text[:80])}{'…' if len(text) > 80 else ''}: {reason}") from None
    if found:
        return path
    if as_path:
        raise InputError(f"{kind} profile file not found: {escape(text)}")
    known = ", ".join(available(kind)) or "none"
    raise InputError(f"unknown {kind} profile {escape(repr(text))} (known: {known})")


def available(kind: str) -> list[str]:
    """Stems of the profiles of one kind that ship in params/."""
    return sorted(p.stem for p in (PARAMS_DIR / kind).glob("*.yaml"))


def load_mapping(kind: str, name_or_path: str | os.PathLike[str], spec: Spec) -> tuple[Path, dict[str, Any]]:
    path = resolve(kind, name_or_path)
    return path, _check_mapping(read_yaml(path), spec, path)


# ---------------------------------------------------------------- hardware

_DTYPE_KEY = DTYPE_BYTES.__contains__

# The roofline policy's efficiency factors. Each entry is {value, source}: fractions are of
# the datasheet figure, latencies in microseconds. Optional: seed003 does not need them.
EFFICIENCY_FIELDS: dict[str, tuple[str, str]] = {
    "gemm": ("fraction", "dense GEMM FLOP/s, of the weight dtype's peak"),
    "grouped_gemm": ("fraction", "MoE grouped GEMM FLOP/s, of the weight dtype's peak"),
    "attention": ("fraction", "attention-core FLOP/s, of the BF16 peak"),
    "memory": ("fraction", "achievable HBM bandwidth, of the datasheet"),
    "scale_up": ("fraction", "achievable scale-up (NVLink) bandwidth, of the datasheet per direction"),
    "scale_out": ("fraction", "achievable scale-out (RDMA) bandwidth, of the datasheet"),
    "scale_out_normal": ("fraction", "scale-out (RDMA) bandwidth of the prefill (DeepEP normal) all-to-all, of the datasheet"),
    "low_latency_domain": ("count", "peers the decode (low-latency) all-to-all reaches over the scale-up link, the rest over RDMA (1: RDMA to every peer)"),
    "kernel_latency_us": ("latency", "fixed cost of one kernel (launch, tail), µs"),
    "all_reduce_latency_us": ("latency", "fixed cost of one TP all-reduce, µs"),
    "dispatch_latency_us": ("latency", "fixed cost of one low-latency dispatch or combine, µs"),
    "tbo_overhead_us": ("latency", "extra cost per layer of splitting a step into two micro-batches, µs"),
    "attention_prefill": ("fraction", "prefill attention-core FLOP/s (causal, FlashAttention-style), of the BF16 peak"),
    "comm_sms": ("count", "SMs the prefill all-to-all kernels take from compute while they overlap it"),
    "mma_tile_rows": ("count", "rows of the smallest tensor-core tile: GEMM rows are padded up to a multiple"),
    "launch_gap_us": ("latency", "idle time before each kernel inside a CUDA graph, µs"),
    "all_reduce_latency_node_us": ("latency", "fixed cost of one small all-reduce over a whole scale-up domain, µs"),
    "all_reduce_latency_internode_us": ("latency", "fixed cost of one small all-reduce across two scale-up domains, µs"),
    "attention_sparse": ("fraction", "sparse (top-k) MLA decode FLOP/s, FP8 cache dequantized to BF16, of the BF16 peak"),
    "attention_sparse_prefill": ("fraction", "sparse (top-k) MLA prefill FLOP/s, BF16, of the BF16 peak"),
    "indexer": ("fraction", "lightning-indexer FP8 logits FLOP/s (DeepGEMM mqa_logits), of the FP8 peak"),
}
# Entries a profile may leave out, and what their absence means: no such effect.
EFFICIENCY_OPTIONAL = {
    "attention_prefill": "the decode `attention` fraction",
    "comm_sms": "0 SMs",
    "mma_tile_rows": "1 row (no padding)",
    "launch_gap_us": "no gap",
    "all_reduce_latency_node_us": "the two-device all_reduce_latency_us",
    "all_reduce_latency_internode_us": "the whole-domain latency",
    "attention_sparse": "the dense MLA decode `attention` fraction (transferred)",
    "attention_sparse_prefill": "the dense `attention_prefill` fraction (transferred)",
    "indexer": "the dense `gemm` fraction (transferred)",
    "scale_out_normal": "the `scale_out` fraction",
    "low_latency_domain": "the scale-up domain",
}
_EFFICIENCY_ENTRY = {
    "fraction": Spec("map", children={"value": Spec("fraction", upper=1), "source": Spec("str")}),
    "latency": Spec("map", children={"value": Spec("number", zero_ok=True, si=US), "source": Spec("str")}),
    "count": Spec("map", children={"value": Spec("int", zero_ok=True), "source": Spec("str")}),
}
EFFICIENCY_SPEC = Spec(
    "map",
    required=False,
    children={
        name: replace(_EFFICIENCY_ENTRY[kind], required=name not in EFFICIENCY_OPTIONAL)
        for name, (kind, _) in EFFICIENCY_FIELDS.items()
    },
)

# A kernel period ("2025-02"): what it was, and the efficiency entries whose values differed then.
PERIOD_KEY = re.compile(r"\d{4}-\d{2}")
PERIOD_SPEC = Spec("map", children={
    "description": Spec("str"),
    **{name: replace(_EFFICIENCY_ENTRY[kind], required=False) for name, (kind, _) in EFFICIENCY_FIELDS.items()},
})

HARDWARE_SPEC = Spec(
    "map",
    children={
        "name": Spec("str"),
        "vendor": Spec("str", required=False),
        "peak_tflops": Spec("map", children={"*": Spec("number", unit=TFLOPS)}, any_keys=_DTYPE_KEY),
        "memory_gb": Spec("number", unit=GB),
        "memory_reported_mib": Spec("number", unit=MiB, required=False),
        "memory_bandwidth_gb_s": Spec("number", unit=GB_PER_S),
        "scale_up_bandwidth_gb_s": Spec("number", unit=GB_PER_S),
        "scale_up_domain": Spec("int"),
        "scale_out_bandwidth_gb_s": Spec("number", unit=GB_PER_S),
        "compute_units": Spec("int"),
        "sources": Spec("strings"),
        "efficiency": EFFICIENCY_SPEC,
        # Optional: efficiencies of earlier kernel releases, for measurements taken with them.
        "kernel_periods": Spec("map", required=False, any_keys=lambda k: bool(PERIOD_KEY.fullmatch(k)),
                               children={"*": PERIOD_SPEC}),
        # Optional, at the end of a profile: cost and power per device, for $/Mtok and tokens/J.
        "price": Spec("map", required=False, children={
            "usd_per_gpu_hour": Spec("number"), "source": Spec("str"), "date": Spec("str")}),
        "power": Spec("map", required=False, children={"watts": Spec("number"), "source": Spec("str")}),
    },
)


@dataclass(frozen=True)
class Hardware:
    """One accelerator, datasheet figures in SI units."""

    key: str  # the profile's file stem, used in page paths and tables
    path: Path
    name: str
    peak_flops: Mapping[str, float]  # FLOP/s, dense, per dtype
    memory_bytes: float  # the datasheet's figure (GB), as seed policies read it
    memory_bandwidth: float  # byte/s
    scale_up_bandwidth: float  # byte/s per direction, per device
    scale_up_domain: int  # devices per scale-up (NVLink) domain
    scale_out_bandwidth: float  # byte/s per device (its NIC share)
    compute_units: int  # SMs or cores
    sources: tuple[str, ...]
    vendor: str | None = None
    efficiency: Mapping[str, Any] = field(default_factory=dict)
    price: Mapping[str, Any] | None = None  # {usd_per_gpu_hour, source, date}, or None: cost unavailable
    power: Mapping[str, Any] | None = None  # {watts, source} (datasheet board power), or None
    memory_reported: float | None = None  # bytes the device reports (nvidia-smi memory.total), if known
    kernel_periods: Mapping[str, Any] = field(default_factory=dict)  # "2025-02" → {description, entries}
    period: str | None = None  # the kernel period whose entries `efficiency` holds (at_period), None: current

    @property
    def memory_device_bytes(self) -> float:
        """The capacity frameworks apply their memory fractions to: what the device reports
        (``memory_reported_mib``), else the datasheet figure."""
        return self.memory_reported if self.memory_reported is not None else self.memory_bytes

    def peak(self, dtype: str) -> float:
        """Dense peak FLOP/s for `dtype`; fp16 and bf16 share a peak where only one is given,
        and the block-scaled 4-bit formats (nvfp4, mxfp4) run at the fp4 peak."""
        for candidate in (dtype, PEAK_DTYPE.get(dtype)):
            if candidate in self.peak_flops:
                return self.peak_flops[candidate]
        key = PEAK_DTYPE.get(dtype, dtype) if dtype in ("nvfp4", "mxfp4") else dtype
        raise InputError(f"{self.path}: field 'peak_tflops.{key}': missing (needed for {dtype} math)")


def load_hardware(name_or_path: str | os.PathLike[str]) -> Hardware:
    path, d = load_mapping("hardware", name_or_path, HARDWARE_SPEC)
    return Hardware(
        key=path.stem,
        path=path,
        name=d["name"],
        vendor=d["vendor"],
        peak_flops=d["peak_tflops"],
        memory_bytes=d["memory_gb"],
        memory_reported=d["memory_reported_mib"],
        memory_bandwidth=d["memory_bandwidth_gb_s"],
        scale_up_bandwidth=d["scale_up_bandwidth_gb_s"],
        scale_up_domain=d["scale_up_domain"],
        scale_out_bandwidth=d["scale_out_bandwidth_gb_s"],
        compute_units=d["compute_units"],
        sources=d["sources"],
        efficiency={k: v for k, v in (d["efficiency"] or {}).items() if v is not None},  # absent: not listed
        price=d.get("price"),
        power=d.get("power"),
        kernel_periods={period: {k: v for k, v in entries.items() if v is not None}
                        for period, entries in (d.get("kernel_periods") or {}).items()},
    )


def at_period(hw: Hardware, period: str | None) -> Hardware:
    """`hw` with the efficiency entries its profile gives for an earlier kernel period
    (``kernel_periods``) in place of the current ones; `hw` itself for None."""
    if period is None:
        return hw
    if period not in hw.kernel_periods:
        have = ", ".join(hw.kernel_periods) or "none"
        raise InputError(f"{hw.path}: no kernel period {period!r} in field 'kernel_periods' (has: {have})")
    entries = {k: v for k, v in hw.kernel_periods[period].items() if k != "description"}
    return replace(hw, efficiency={**hw.efficiency, **entries}, period=period)


# ---------------------------------------------------------------- model

# Field names are those of the model's Hugging Face config.json.
_MODEL_FIELDS = {
    "vocab_size": Spec("int"),
    "hidden_size": Spec("int"),
    "intermediate_size": Spec("int"),
    "moe_intermediate_size": Spec("int"),
    "num_hidden_layers": Spec("int"),
    "first_k_dense_replace": Spec("int", zero_ok=True),
    "num_attention_heads": Spec("int"),
    "n_routed_experts": Spec("int"),
    "n_shared_experts": Spec("int", zero_ok=True),
    "num_experts_per_tok": Spec("int"),
    "n_group": Spec("int"),
    "topk_group": Spec("int"),
    "routed_scaling_factor": Spec("number"),
    "q_lora_rank": Spec("int"),
    "kv_lora_rank": Spec("int"),
    "qk_nope_head_dim": Spec("int"),
    "qk_rope_head_dim": Spec("int"),
    "v_head_dim": Spec("int"),
    "num_nextn_predict_layers": Spec("int", zero_ok=True, required=False, default=0),
    "tie_word_embeddings": Spec("bool", required=False, default=False),
    # DeepSeek Sparse Attention (DeepSeek-V3.2): the lightning indexer's heads and head width,
    # and the KV tokens each query attends to. All three or none (dense MLA).
    "index_n_heads": Spec("int", required=False),
    "index_head_dim": Spec("int", required=False),
    "index_topk": Spec("int", required=False),
}
SPARSE_FIELDS = ("index_n_heads", "index_head_dim", "index_topk")
# Keys of a DeepSeek-V3 config.json that do not change the arithmetic: accepted so that a
# config.json can be pasted as it is, and otherwise ignored.
_HF_IGNORED = (
    "architectures", "attention_bias", "attention_dropout", "auto_map", "aux_loss_alpha",
    "bos_token_id", "eos_token_id", "ep_size", "hidden_act", "initializer_range",
    "max_position_embeddings", "model_type", "moe_layer_freq", "norm_topk_prob",
    "num_key_value_heads", "pretraining_tp", "quantization_config", "rms_norm_eps",
    "rope_scaling", "rope_theta", "scoring_func", "seq_aux", "topk_method", "torch_dtype",
    "transformers_version", "use_cache",
)
MODEL_SPEC = Spec(
    "map",
    children={
        "name": Spec("str"),
        "sources": Spec("strings"),
        **_MODEL_FIELDS,
    },
)


@dataclass(frozen=True)
class Model:
    """A DeepSeek-V3-architecture model (MLA attention, shared + routed experts)."""

    key: str
    path: Path
    name: str
    sources: tuple[str, ...]
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    moe_intermediate_size: int
    num_hidden_layers: int
    first_k_dense_replace: int
    num_attention_heads: int
    n_routed_experts: int
    n_shared_experts: int
    num_experts_per_tok: int
    n_group: int
    topk_group: int
    routed_scaling_factor: float
    q_lora_rank: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    num_nextn_predict_layers: int = 0
    tie_word_embeddings: bool = False
    index_n_heads: int | None = None
    index_head_dim: int | None = None
    index_topk: int | None = None

    @property
    def sparse(self) -> bool:
        """True when attention is DeepSeek Sparse Attention (an indexer picks index_topk keys)."""
        return self.index_topk is not None

    @property
    def n_dense_layers(self) -> int:
        return self.first_k_dense_replace

    @property
    def n_moe_layers(self) -> int:
        return self.num_hidden_layers - self.first_k_dense_replace

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def kv_cache_dim(self) -> int:
        """Elements cached per token per layer: the compressed latent plus the RoPE key."""
        return self.kv_lora_rank + self.qk_rope_head_dim


def load_model(name_or_path: str | os.PathLike[str]) -> Model:
    path = resolve("model", name_or_path)
    raw = read_yaml(path)
    raw = {k: v for k, v in raw.items() if k not in _HF_IGNORED}
    d = _check_mapping(raw, MODEL_SPEC, path)
    if d["first_k_dense_replace"] >= d["num_hidden_layers"]:
        raise _fail(path, "first_k_dense_replace", "must be smaller than num_hidden_layers")
    if d["num_experts_per_tok"] > d["n_routed_experts"]:
        raise _fail(path, "num_experts_per_tok", "must not exceed n_routed_experts")
    if d["n_routed_experts"] % d["n_group"] or d["topk_group"] > d["n_group"]:
        raise _fail(path, "n_group", "must divide n_routed_experts and be ≥ topk_group")
    given = [k for k in SPARSE_FIELDS if d[k] is not None]
    if given and len(given) < len(SPARSE_FIELDS):
        missing = next(k for k in SPARSE_FIELDS if d[k] is None)
        raise _fail(path, missing, f"missing (sparse attention needs all of {', '.join(SPARSE_FIELDS)}; "
                                   f"{', '.join(given)} given)")
    if given and d["index_head_dim"] < d["qk_rope_head_dim"]:
        raise _fail(path, "index_head_dim", f"must be ≥ qk_rope_head_dim ({d['qk_rope_head_dim']}): the indexer "
                                            "ropes that many of its dimensions")
    return Model(key=path.stem, path=path, **d)


# ---------------------------------------------------------------- workload

WORKLOAD_SPEC = Spec(
    "map",
    children={
        "name": Spec("str"),
        "sources": Spec("strings"),
        "prompt_len": Spec("int"),  # tokens per request, average
        "output_len": Spec("int"),  # tokens generated per request, average
        "kv_cache_hit_rate": Spec("fraction", zero_ok=True, upper=0.999),  # prefix-cache hits / prompt tokens
        "avg_kv_len": Spec("int", required=False),  # KV length per output token; default prompt + output/2
        "min_tokens_per_user": Spec("number", required=False),  # decode SLO, tokens/s per request
        "max_ttft_s": Spec("number", required=False),
        "max_memory_gb": Spec("number", required=False, unit=GB),  # cap per device
        "weight_dtype": Spec("dtype", required=False, default="fp8"),
        # routed experts only (e.g. nvfp4 experts with fp8 attention); default: weight_dtype
        "expert_weight_dtype": Spec("dtype", required=False),
        "activation_dtype": Spec("dtype", required=False, default="bf16"),
        "kv_dtype": Spec("dtype", required=False, default="bf16"),
        "dispatch_dtype": Spec("dtype", required=False, default="fp8"),
        "combine_dtype": Spec("dtype", required=False, default="bf16"),
    },
)


@dataclass(frozen=True)
class Workload:
    key: str
    path: Path
    name: str
    sources: tuple[str, ...]
    prompt_len: int
    output_len: int
    kv_cache_hit_rate: float
    avg_kv_len: int
    min_tokens_per_user: float | None
    max_ttft_s: float | None
    max_memory_bytes: float | None
    weight_dtype: str
    activation_dtype: str
    kv_dtype: str
    dispatch_dtype: str
    combine_dtype: str
    expert_weight_dtype: str | None = None  # routed experts' weights; None: weight_dtype

    @property
    def expert_dtype(self) -> str:
        """The routed experts' weight dtype (the workload's weight dtype unless it names one)."""
        return self.expert_weight_dtype or self.weight_dtype


def load_workload(name_or_path: str | os.PathLike[str]) -> Workload:
    path, d = load_mapping("workload", name_or_path, WORKLOAD_SPEC)
    avg_kv_len = d.pop("avg_kv_len") or d["prompt_len"] + d["output_len"] // 2
    max_memory = d.pop("max_memory_gb")
    return Workload(key=path.stem, path=path, avg_kv_len=avg_kv_len, max_memory_bytes=max_memory, **d)
