"""Serving-framework profiles: what SGLang, TensorRT-LLM or vLLM add around the kernels.

A framework profile (``params/framework/<name>.yaml``) holds, each entry ``{value, source}``
with the framework version it was read from:

* its memory rule: how much of the device the weights and KV cache may take. SGLang's
  ``mem_fraction_static`` and vLLM's ``gpu_memory_utilization`` are fractions of the device's
  total memory (as it reports it); TensorRT-LLM's ``free_gpu_memory_fraction`` is a fraction
  of what is left once weights and runtime buffers are in place. ``reserved_gib`` is the
  memory outside that fraction that the framework keeps for activations, CUDA graphs and
  communication buffers;
* the largest decode batch it captures in a CUDA graph, and whether a larger one can run at
  all (``required``) or runs eagerly, paying a host launch per kernel;
* the host time per step and whether an overlapped scheduler hides it behind the GPU;
* which all-to-all kernels carry the MoE tokens in decode and in prefill;
* its serving behaviour (``serving:``, read by :mod:`moecalc.serving`): the chunked-prefill
  size, whether the KV cache goes to the decode pool layer by layer during the forward or after
  it, over how many NICs, and the deployment settings a plan starts from (MTP acceptance, EPLB
  imbalance, redundant experts).

:func:`load_framework` validates a profile like the other profiles (one line naming the file
and the field); the roofline policy reads the result (:mod:`moecalc.policies.roofline`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from .errors import InputError
from .profiles import Spec, _fail, load_mapping
from .units import GiB, US

DEFAULT = "sglang"
MEMORY_RULES = ("total", "free")
# How the MoE tokens travel: DeepEP's low-latency kernels (one message per expert copy),
# DeepEP's normal kernels (node-limited, NVLink forwarding), or an all-gather of every token
# of the EP group before the experts and a reduce-scatter after them (no all-to-all kernel).
A2A_KINDS = ("deepep_low_latency", "deepep_normal", "allgather_reducescatter")


def _entry(kind: str, required: bool = True, **kw) -> Spec:
    return Spec("map", required=required, children={"value": Spec(kind, **kw), "source": Spec("str")})


FRAMEWORK_SPEC = Spec(
    "map",
    children={
        "name": Spec("str"),
        "version": Spec("str"),
        "sources": Spec("strings"),
        "memory": Spec("map", children={
            "rule": _entry("str"),
            "fraction": _entry("fraction", upper=1),
            "reserved_gib": _entry("number", zero_ok=True),
        }),
        "cuda_graph": Spec("map", children={
            "max_batch": _entry("int"),
            "max_batch_tp4": _entry("int", required=False),
            "required": _entry("bool"),
            "eager_launch_us": _entry("number", zero_ok=True),
        }),
        "scheduler": Spec("map", children={
            "overlap": _entry("bool"),
            "host_step_us": _entry("number", zero_ok=True),
        }),
        "all_to_all": Spec("map", children={
            "decode": _entry("str"),
            "prefill": _entry("str"),
        }),
        # the framework's own one-shot all-reduce inside an NVLink domain, for small messages
        "custom_all_reduce": Spec("map", required=False, children={
            "latency_two_us": _entry("number"),
            "latency_node_us": _entry("number"),
            "max_kib": _entry("number"),
        }),
        "serving": Spec("map", children={
            "chunked_prefill_tokens": _entry("int"),
            "kv_transfer_layerwise": _entry("bool"),
            "kv_transfer_setup_us": _entry("number", zero_ok=True),
            "kv_transfer_nics": _entry("int"),
            "mtp_accept": _entry("number", upper=2),
            "expert_imbalance": _entry("number"),
            "redundant_experts": _entry("int", zero_ok=True),
        }),
    },
)


@dataclass(frozen=True)
class Framework:
    """One serving framework's behaviour, in SI units (bytes, seconds)."""

    key: str
    path: Path
    name: str
    version: str
    memory_rule: str  # "total" or "free"
    memory_fraction: float
    reserved_bytes: float
    graph_max_batch: int  # sequences per attention-DP rank (TP < 4)
    graph_max_batch_tp4: int  # the same at attention TP ≥ 4
    graph_required: bool
    eager_launch: float  # seconds per kernel outside a CUDA graph
    overlap_scheduler: bool
    host_step: float  # seconds of host work per step
    a2a_decode: str
    a2a_prefill: str
    sources: Mapping[str, str] = field(default_factory=dict)
    custom_ar_two: float = 0.0  # seconds, the one-shot all-reduce's floor on 2 GPUs (0: NCCL only)
    custom_ar_node: float = 0.0  # seconds, on a whole scale-up domain
    custom_ar_max_bytes: float = 0.0  # messages above this go to NCCL
    # serving (params/framework/<name>.yaml `serving:`)
    chunk_tokens: int = 8192  # prompt tokens per attention-DP rank per aggregated step
    kv_layerwise: bool = False  # KV sent layer by layer during the forward
    kv_setup: float = 0.0  # seconds per KV transfer
    kv_nics: int = 1  # NICs one request's transfer crosses in parallel, per side
    mtp_accept: float = 1.0
    expert_imbalance: float = 1.0
    redundant_experts: int = 0

    # ------------------------------------------------------------ memory

    def usable_memory(self, capacity: float, weights):
        """Bytes per device that weights and KV cache may take together, given the device's
        reported `capacity` and the `weights` (bytes, array over layouts) it holds.

        total: fraction × capacity − reserved (SGLang, vLLM);
        free:  weights + fraction × (capacity − weights − reserved) (TensorRT-LLM)."""
        if self.memory_rule == "total":
            return np.asarray(self.memory_fraction * capacity - self.reserved_bytes + 0.0 * np.asarray(weights))
        free = capacity - np.asarray(weights, dtype=float) - self.reserved_bytes
        return np.asarray(weights, dtype=float) + self.memory_fraction * np.maximum(free, 0.0)

    # ------------------------------------------------------------ CUDA graphs

    def graph_limit(self, tp):
        """Largest decode batch (sequences per attention-DP rank) a CUDA graph covers."""
        return np.where(np.asarray(tp) >= 4, self.graph_max_batch_tp4, self.graph_max_batch)

    def in_graph(self, batch, tp):
        """True where a decode step of `batch` sequences per rank replays a CUDA graph."""
        return np.asarray(batch) <= self.graph_limit(tp)

    def check_graph(self, batch, tp) -> None:
        """One error when a framework that requires CUDA graphs is given a larger batch."""
        if self.graph_required and not np.all(self.in_graph(batch, tp)):
            limit = int(np.min(self.graph_limit(tp)))
            raise InputError(
                f"{self.name} {self.version} runs decode only inside CUDA graphs (cuda_graph.required in "
                f"{self.path}) and captures batches up to {limit} sequences per attention-DP rank; "
                f"batch {int(np.max(batch))} is larger")

    # ------------------------------------------------------------ host

    def step_time(self, gpu_time):
        """A step's wall time from its GPU time: the host work runs beside the GPU with an
        overlapped scheduler (the step takes the longer of the two), after it without."""
        gpu_time = np.asarray(gpu_time, dtype=float)
        if self.overlap_scheduler:
            return np.maximum(gpu_time, self.host_step)
        return gpu_time + self.host_step


def _value(d: Mapping, section: str, key: str):
    entry = d[section][key]
    return None if entry is None else entry["value"]


def load_framework(name_or_path: str | os.PathLike[str] | Framework | None = None) -> Framework:
    """A framework profile by name (``sglang``, ``trtllm``, ``vllm``) or YAML path; the
    default is SGLang. A :class:`Framework` is returned as it is."""
    if isinstance(name_or_path, Framework):
        return name_or_path
    path, d = load_mapping("framework", DEFAULT if name_or_path is None else name_or_path, FRAMEWORK_SPEC)
    rule = _value(d, "memory", "rule")
    if rule not in MEMORY_RULES:
        raise _fail(path, "memory.rule.value", f"must be one of {', '.join(MEMORY_RULES)}, got {rule!r}")
    for phase in ("decode", "prefill"):
        kind = _value(d, "all_to_all", phase)
        if kind not in A2A_KINDS:
            raise _fail(path, f"all_to_all.{phase}.value", f"must be one of {', '.join(A2A_KINDS)}, got {kind!r}")
    max_batch = _value(d, "cuda_graph", "max_batch")
    srv = d["serving"]
    for key in ("mtp_accept", "expert_imbalance"):
        if srv[key]["value"] < 1:
            raise _fail(path, f"serving.{key}.value", f"must be ≥ 1, got {srv[key]['value']!r}")
    sections = ("memory", "cuda_graph", "scheduler", "all_to_all", "custom_all_reduce", "serving")
    sources = {f"{s}.{k}": e["source"] for s in sections for k, e in (d[s] or {}).items() if e is not None}
    car = d["custom_all_reduce"] or {}
    return Framework(
        key=path.stem, path=path, name=d["name"], version=d["version"],
        memory_rule=rule, memory_fraction=_value(d, "memory", "fraction"),
        reserved_bytes=_value(d, "memory", "reserved_gib") * GiB,
        graph_max_batch=max_batch, graph_max_batch_tp4=_value(d, "cuda_graph", "max_batch_tp4") or max_batch,
        graph_required=_value(d, "cuda_graph", "required"),
        eager_launch=_value(d, "cuda_graph", "eager_launch_us") * US,
        overlap_scheduler=_value(d, "scheduler", "overlap"),
        host_step=_value(d, "scheduler", "host_step_us") * US,
        a2a_decode=_value(d, "all_to_all", "decode"), a2a_prefill=_value(d, "all_to_all", "prefill"),
        sources=sources,
        custom_ar_two=car["latency_two_us"]["value"] * US if car else 0.0,
        custom_ar_node=car["latency_node_us"]["value"] * US if car else 0.0,
        custom_ar_max_bytes=car["max_kib"]["value"] * 1024.0 if car else 0.0,
        chunk_tokens=srv["chunked_prefill_tokens"]["value"], kv_layerwise=srv["kv_transfer_layerwise"]["value"],
        kv_setup=srv["kv_transfer_setup_us"]["value"] * US, kv_nics=srv["kv_transfer_nics"]["value"],
        mtp_accept=srv["mtp_accept"]["value"], expert_imbalance=srv["expert_imbalance"]["value"],
        redundant_experts=srv["redundant_experts"]["value"],
    )


# A framework that adds nothing around the kernels: all of the device's memory, every batch in
# a graph, no host time. For policies that reproduce a seed's own accounting (seed002).
NEUTRAL = Framework(
    key="neutral", path=Path("(none)"), name="no framework", version="-", memory_rule="total", memory_fraction=1.0,
    reserved_bytes=0.0, graph_max_batch=2**31, graph_max_batch_tp4=2**31, graph_required=False, eager_launch=0.0,
    overlap_scheduler=True, host_step=0.0, a2a_decode="deepep_low_latency", a2a_prefill="deepep_normal",
)

