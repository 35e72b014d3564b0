"""How per-op times add up into a layer: nothing overlapped, or two micro-batches overlapped.

With two-batch overlap (TBO) a step is split into two micro-batches; while one computes,
the other's all-to-all (dispatch or combine) is in flight. A schedule is a list of *stages*,
each a pair (compute ops, communication ops) that run at the same time. A stage takes the
longer of its two sides; communication is hidden when it is no longer than the compute it
is paired with, and what is longer is *exposed*:

    stage time = max(compute, comm),   exposed = max(0, comm − compute).

Op times come from a timing policy as ``{op: seconds}`` mappings (numpy arrays allowed);
this module only adds them up. Splitting a batch in two halves every op's time when the
times are linear in the batch (as in seed 003's model), so the stage rule holds at full
batch: two half-batches overlapped take max(compute, comm) in total.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

Stage = tuple[tuple[str, ...], tuple[str, ...]]  # (compute ops, communication ops)

# Seed 003 §2.6 (prefill, its trace of DeepSeek's two micro-batches): attention and the shared
# expert of one micro-batch run under the other's combine; its routed experts under the
# other's dispatch.
SEED003_PREFILL_STAGES: tuple[Stage, ...] = (
    (("TP_MLA", "SharedExpert"), ("Combine",)),
    (("RoutedExpert",), ("Dispatch",)),
)
# Seed 003 §3.7 (decode): dispatch and combine both hide under attention and the shared
# expert ("TimeBudget = SparseMLA + SharedExpert − (Dispatch + Combine)"); routed experts
# run alone.
SEED003_DECODE_STAGES: tuple[Stage, ...] = (
    (("SparseMLA", "SharedExpert"), ("Dispatch", "Combine")),
    (("RoutedExpert",), ()),
)


@dataclass(frozen=True)
class Overlap:
    """One layer under a TBO schedule (seconds; arrays if the op times are arrays)."""

    compute: object  # every compute op, summed
    comm: object  # every communication op, summed
    time: object  # the layer under the schedule: Σ max(compute, comm) over stages
    exposed: object  # communication not hidden: Σ max(0, comm − compute) over stages
    budget: object  # slack of the tightest stage: min over stages with comm of (compute − comm)

    @property
    def hidden(self):
        """True where every stage's communication fits under its compute."""
        return np.asarray(self.exposed) <= 0


def _sum(layer: Mapping[str, object], ops: Sequence[str]):
    total = 0.0
    for op in ops:
        if op not in layer:
            raise KeyError(f"op {op!r} is not in the layer's ops ({', '.join(layer)})")
        total = total + np.asarray(layer[op], dtype=float)
    return total


def two_batch_overlap(layer: Mapping[str, object], stages: Sequence[Stage]) -> Overlap:
    """A layer's time when its stages overlap compute and communication (see module doc)."""
    compute = comm = time = exposed = 0.0
    budget = None
    for compute_ops, comm_ops in stages:
        c, k = _sum(layer, compute_ops), _sum(layer, comm_ops)
        compute, comm = compute + c, comm + k
        time = time + np.maximum(c, k)
        exposed = exposed + np.maximum(k - c, 0.0)
        if comm_ops:
            budget = c - k if budget is None else np.minimum(budget, c - k)
    return Overlap(compute=compute, comm=comm, time=time, exposed=exposed,
                   budget=np.inf if budget is None else budget)


def no_overlap(layer: Mapping[str, object]):
    """A layer's time with every op one after another."""
    return _sum(layer, list(layer))


def step_time(dense_layer_time, moe_layer_time, n_dense: int, n_moe: int):
    """A step (or prefill pass) through `n_dense` dense and `n_moe` MoE layers."""
    return n_dense * np.asarray(dense_layer_time, dtype=float) + n_moe * np.asarray(moe_layer_time, dtype=float)


def bandwidth_to_hide(bandwidth: float, comm, compute):
    """The link bandwidth at which communication that takes `comm` seconds at `bandwidth`
    would take exactly `compute` seconds (communication time ∝ 1 / bandwidth)."""
    return bandwidth * np.asarray(comm, dtype=float) / np.asarray(compute, dtype=float)


def colocated_request_rate(prefill_tokens_per_s, decode_tokens_per_s, prompt_len, output_len):
    """Requests per second when the same devices prefill and decode in turn (colocated
    serving, as vLLM does, first order): each request costs the cluster prompt_len / prefill
    rate plus output_len / decode rate seconds, so the rate is the inverse of their sum."""
    return 1.0 / (np.divide(prompt_len, prefill_tokens_per_s) + np.divide(output_len, decode_tokens_per_s))
