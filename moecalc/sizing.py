"""Sizing a deployment by hand: the few quotients the chapter "Plan a deployment" works
through before the search gives the exact answer.

* the fewest devices whose usable memory holds one copy of the weights and the KV cache of
  the sequences a target needs (a lower bound: replicated parts and indivisible layouts
  only raise it);
* the sequences in flight a target needs at a per-user speed (Little's law);
* the prompt tokens per second prefill must compute to feed a decode target;
* the prefill instances (TP1 × DP n, EP n) that compute them, each with its first-token time.

Vectorized where a caller sweeps (sequences, targets); SI units throughout.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from .errors import InputError
from .frameworks import load_framework
from .policies import roofline
from .profiles import Hardware, Model, Workload


def usable_bytes(hw: Hardware, memory_cap: float | None = None, framework=None) -> float:
    """Bytes of one device that weights and KV may use under the framework's memory rule (default
    SGLang's, a share of what the device reports, whatever the weights), or a cap if smaller."""
    usable = float(np.min(roofline.usable_memory(hw, load_framework(framework), 0.0)))
    return usable if memory_cap is None else min(usable, memory_cap)


def fewest_devices(m: Model, hw: Hardware, wl: Workload, sequences, kv_len, memory_cap: float | None = None):
    """(weights, KV, fewest devices): one copy of every weight (`wl`'s dtypes) plus the KV cache
    of `sequences` sequences at `kv_len` tokens, over one device's usable memory, rounded up."""
    one = roofline.Layout(tp=1, dp=1, moe_tp=1, ep=1)  # every weight on one device: the model's whole size
    weights = float(roofline.weight_bytes_per_device(m, wl, one))
    kv = np.asarray(roofline.kv_bytes_per_device(m, wl, np.asarray(sequences, dtype=float), kv_len), dtype=float)
    return weights, kv, np.ceil((weights + kv) / usable_bytes(hw, memory_cap)).astype(int)


def sequences_in_flight(target_tokens_per_s, tokens_per_s_per_user):
    """Little's law: sequences decoding at once to emit `target` tokens/s at a per-user speed."""
    per_user = np.asarray(tokens_per_s_per_user, dtype=float)
    if np.any(per_user <= 0):
        raise InputError("tokens/s per user must be positive")
    return np.asarray(target_tokens_per_s, dtype=float) / per_user


def prefill_demand(target_output_tokens_per_s, wl: Workload, kv_cache_hit_rate: float | None = None):
    """Prompt tokens/s prefill computes to feed `target` output tokens/s: each request brings
    prompt_len tokens per output_len it generates, less its prefix-cache hits."""
    hit = wl.kv_cache_hit_rate if kv_cache_hit_rate is None else kv_cache_hit_rate
    return np.asarray(target_output_tokens_per_s, dtype=float) * wl.prompt_len / wl.output_len * (1.0 - hit)


def prefill_instances(m: Model, hw: Hardware, wl: Workload, devices: Iterable[int], tokens_per_device: float,
                      demand_tokens_per_s: float, kv_cache_hit_rate: float | None = None) -> list[dict[str, Any]]:
    """Prefill on instances of n devices (TP1 × DPn attention, EPn): for each n, the better of
    serial and two-batch overlap at `tokens_per_device` new tokens per device per forward (its
    forward time is the first-token time of the prompts in it), whether weights and that batch's
    KV fit, and how many instances compute `demand` tokens/s. Fitting ones, fewest devices first."""
    n = np.array(sorted(set(int(d) for d in devices)), dtype=float)[:, None]
    runs = [roofline.prefill(m, hw, wl, roofline.Layout(tp=1, dp=n, moe_tp=1, ep=n, tbo=tbo), tokens_per_device,
                             kv_cache_hit_rate=kv_cache_hit_rate) for tbo in (False, True)]
    out = []
    for i, d in enumerate(n[:, 0].astype(int)):
        times = [float(np.broadcast_to(r.time, n.shape)[i, 0]) for r in runs]
        k = int(np.argmin(times))
        run = runs[k]
        need = float(np.broadcast_to(run.weight_bytes + run.kv_bytes, n.shape)[i, 0])
        per_device = float(np.broadcast_to(run.tokens_per_s_per_device, n.shape)[i, 0])
        copies = int(np.ceil(demand_tokens_per_s / (per_device * d)))
        out.append({"devices": int(d), "tbo": bool(k), "first_token_s": times[k], "tokens_per_s_per_device": per_device,
                    "memory_gb": need / 1e9, "fits": need <= float(np.broadcast_to(run.memory_usable, n.shape)[i, 0]), "instances": copies,
                    "total_devices": copies * int(d), "busy": demand_tokens_per_s / (copies * int(d) * per_device)})
    return sorted((e for e in out if e["fits"]), key=lambda e: (e["total_devices"], e["devices"]))
