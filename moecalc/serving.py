"""Serving a workload end to end: one aggregated pool, or prefill ▶ KV transfer ▶ decode.

Built on the roofline policy's per-phase times (:func:`moecalc.policies.roofline.prefill` and
``decode``); nothing below this module imports it. Every function takes numpy arrays (of
layouts, batches, rates) and answers element-wise, so :mod:`moecalc.plan` evaluates every plan
with the same code the ``serve`` command runs for one.

**Queueing model: M/D/c** (Poisson arrivals, deterministic service, c servers), by the
Allen–Cunneen approximation: the M/M/c (Erlang C) mean wait times (1 + c_s²)/2 with service
coefficient of variation c_s = 0. It is exact for c = 1 (Pollaczek–Khinchine) and close for
c > 1 at moderate load. Where it breaks down (the book shows it): bursty or correlated arrivals
(not Poisson); prompts of very different lengths (service not deterministic); a batch server
(a prefill forward serves many requests at once, so a lightly loaded instance runs smaller,
faster forwards than the full-batch time used here); ρ → 1, where the mean wait diverges and
the real system sheds or queues without bound.

**Disaggregated**: TTFT = wait at the prefill pool (M/D/c, c = prefill instances, service = one
request's share of a full forward) + the batch-formation wait (an arrival finds its instance
busy with probability ρ and waits out the running forward, on average half of it: ρ·T/2) + one
full forward + the exposed KV transfer; TPOT is the
decode pool's step time over accepted tokens per step at its batch. The request rate is the
smaller of the pools' capacities (the *limiting pool*).

**Aggregated** (chunked prefill, SGLang's mixed batches): every step of an attention-DP rank
runs its decode batch plus up to `chunk` prompt tokens. In steady state prompts arrive as fast
as sequences finish, so a step carries ``u = batch × new prompt tokens / output tokens`` prompt
tokens (capped by the chunk, which then caps the batch). Step = decode step + prefill of those
u tokens (added: the mixed batch's weight reads are counted twice, an upper bound on the
interference); TPOT = step / accepted tokens per step; TTFT = M/D/c wait (c = ranks, each
serving chunk tokens per step) + half a step (the running one) + ⌈new prompt tokens / chunk⌉ steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping

import numpy as np

from . import counts
from .errors import InputError
from .frameworks import Framework, load_framework
from .policies import roofline
from .profiles import Hardware, Model, Workload

SECONDS_PER_HOUR = 3600.0
QUEUE_MODEL = "M/D/c (Allen–Cunneen: Erlang-C wait × (1 + c_s²)/2, c_s = 0)"
SERVING_FIELDS = ("chunked_prefill_tokens", "kv_transfer_layerwise", "kv_transfer_setup_us", "kv_transfer_nics",
                  "mtp_accept", "expert_imbalance", "redundant_experts")


# ---------------------------------------------------------------- framework serving data
# A framework profile (params/framework/<name>.yaml, :class:`moecalc.frameworks.Framework`)
# carries its serving section too: chunk, KV hand-off, deployment settings. Per-deployment
# overrides are ``dataclasses.replace(fw, redundant_experts=0)``.


def roofline_kw(fw: Framework) -> dict[str, Any]:
    """Keyword arguments every roofline call of this framework's deployment takes."""
    return {"expert_imbalance": fw.expert_imbalance, "framework": fw}


def serving_sources(fw: Framework) -> dict[str, str]:
    """The source of each entry of `fw`'s serving section."""
    return {k: fw.sources[f"serving.{k}"] for k in SERVING_FIELDS}


def redundant_for(m: Model, ep, redundant: int):
    """EPLB's redundant copies where EP divides E + redundant, else none (EP must divide E)."""
    ep = np.asarray(ep)
    return np.where((m.n_routed_experts + redundant) % ep == 0, redundant, 0)


def ep_ok(m: Model, ep, redundant: int):
    ep = np.asarray(ep)
    return ((m.n_routed_experts + redundant) % ep == 0) | (m.n_routed_experts % ep == 0)


# ---------------------------------------------------------------- queueing


def erlang_c(c, a):
    """Probability that an arrival waits in M/M/c with offered load a = λ/μ (Erlang C),
    vectorized over c (servers, integers ≥ 1) and a; 1 where a ≥ c (unstable). Erlang B by
    its recursion B_k = a B_{k−1} / (k + a B_{k−1}), then C = c B / (c − a (1 − B))."""
    c = np.asarray(c, dtype=np.int64)
    a = np.asarray(a, dtype=float)
    c, a = np.broadcast_arrays(c, a)
    # the recursion runs to each element's own c: elements sorted by c, the finished ones dropped
    order = np.argsort(c, axis=None, kind="stable")
    cs, av = c.ravel()[order], a.ravel()[order]
    bs = np.ones(cs.shape)
    for k in range(1, int(cs[-1]) + 1 if cs.size else 1):
        i = np.searchsorted(cs, k)  # cs[i:] ≥ k
        x = av[i:] * bs[i:]
        bs[i:] = x / (k + x)
    b = np.empty(cs.shape)
    b[order] = bs
    b = b.reshape(a.shape)
    stable = a < c
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(stable, c * b / (c - a * (1.0 - b)), 1.0)
    return out if out.ndim else float(out)


def queue_wait(lam, mu, c, cs2: float = 0.0):
    """Mean wait in queue (s) of M/G/c by Allen–Cunneen: Erlang-C wait × (1 + c_s²)/2; the
    default c_s² = 0 is M/D/c. inf where λ ≥ c μ (the queue grows without bound)."""
    lam, mu = np.asarray(lam, dtype=float), np.asarray(mu, dtype=float)
    c = np.asarray(c)
    cap = c * mu
    with np.errstate(divide="ignore", invalid="ignore"):
        w = erlang_c(c, lam / mu) / (cap - lam) * (1.0 + cs2) / 2.0
        w = np.where(lam < cap, w, np.inf)
    return np.where(lam <= 0, 0.0, w)


def batch_wait(rho, forward):
    """Mean wait for the forward running when a request arrives at a batch server busy a
    share `rho` of the time: rho × forward / 2 (the residual of a deterministic forward)."""
    return np.asarray(rho, dtype=float) * np.asarray(forward, dtype=float) / 2.0


# ---------------------------------------------------------------- KV transfer


def kv_format(wl: Workload, m: Model) -> str:
    """The cache format a workload's KV dtype means in serving, as the KV-cache chapter reads
    the frameworks' code: FP8 for dense MLA is 576 B per token and layer with one per-tensor
    scale (SGLang 0.5.23 `MLATokenToKVPool`, TensorRT-LLM, vLLM 0.33.0 `fp8`); for DeepSeek
    Sparse Attention it is FlashMLA's sparse layout with per-128 scales, 656 B (vLLM 0.33.0
    `fp8_ds_mla`); BF16 the reference one."""
    if wl.kv_dtype != "fp8":
        return "bf16"
    return "fp8+scales" if m.sparse else "fp8"


def kv_transfer_bytes(m: Model, prompt_len, kv_fmt: str = "bf16"):
    """Bytes of one request's KV cache handed from prefill to decode: every prompt token's
    latent and RoPE key, every layer, in the cache's format (prefix-cache hits included: the
    decode side has none of it)."""
    return np.asarray(prompt_len, dtype=float) * counts.kv_format_bytes_per_token(m, kv_fmt)


def nic_bandwidth(hw: Hardware) -> float:
    """Achievable RDMA bandwidth of one device's NIC share (bytes/s)."""
    return hw.scale_out_bandwidth * roofline.efficiency(hw).scale_out


def kv_transfer_time(nbytes, bw_send: float, bw_recv: float, setup: float, forward_time=0.0, layers: int = 1,
                     layerwise: bool = False):
    """Exposed KV-transfer time (s): setup + bytes over the slower side's NICs; layer-pipelined
    transfers hide all but the last layer's share behind the forward that produces them."""
    full = np.asarray(nbytes, dtype=float) / min(bw_send, bw_recv)
    if layerwise:
        full = np.maximum(full - np.asarray(forward_time) * (layers - 1) / layers, full / layers)
    return setup + full


# ---------------------------------------------------------------- cost and energy


def cost(hw: Hardware, gpus, tokens_per_s):
    """$ per million tokens when `gpus` devices produce `tokens_per_s`; None without a price."""
    if not hw.price:
        return None
    return hw.price["usd_per_gpu_hour"] * np.asarray(gpus, dtype=float) / SECONDS_PER_HOUR / np.asarray(
        tokens_per_s, dtype=float) * 1e6


def tokens_per_joule(hw: Hardware, gpus, tokens_per_s):
    """Tokens per joule at datasheet board power (an upper bound on energy: TDP, not draw)."""
    if not hw.power:
        return None
    return np.asarray(tokens_per_s, dtype=float) / (np.asarray(gpus, dtype=float) * hw.power["watts"])


# ---------------------------------------------------------------- the pools, vectorized


@dataclass(frozen=True)
class PrefillPool:
    """A prefill instance's figures (arrays over layouts)."""

    forward: object  # s per full forward
    requests_per_forward: object
    service_rate: object  # requests/s one instance completes (μ)
    input_tokens_per_s_per_device: object  # prompt tokens, cache hits included
    fits: object
    gpus: object


def prefill_pool(m: Model, hw: Hardware, wl: Workload, layout: roofline.Layout, tokens_per_device, isl, hit: float,
                 fw: Framework) -> PrefillPool:
    """One prefill instance of `layout` running forwards of `tokens_per_device` new tokens."""
    red = redundant_for(m, layout.ep, fw.redundant_experts)
    red_scalar = int(np.max(red))  # one redundancy per call: the caller groups layouts by it
    p = roofline.prefill(m, hw, wl, layout, tokens_per_device, isl, hit, redundant_experts=red_scalar, **roofline_kw(fw))
    gpus = np.asarray(layout.tp) * np.asarray(layout.dp)
    q = np.maximum((1.0 - hit) * np.asarray(isl, dtype=float), 1.0)
    per_forward = np.asarray(tokens_per_device, dtype=float) * gpus / q
    return PrefillPool(forward=p.time, requests_per_forward=per_forward, service_rate=per_forward / p.time,
                       input_tokens_per_s_per_device=p.input_tokens_per_s_per_device,
                       fits=p.memory_bytes <= p.memory_usable, gpus=gpus)


@dataclass(frozen=True)
class DecodePool:
    step: object  # s per step
    tpot: object
    tokens_per_step: float
    fits: object
    gpus: object
    capacity: object  # requests/s one instance finishes at full batch
    output_tokens_per_s_per_device: object


def decode_pool(m: Model, hw: Hardware, wl: Workload, layout: roofline.Layout, isl, osl, mtp_accept: float,
                fw: Framework, red: int) -> DecodePool:
    """One decode instance at `layout.batch` sequences per rank, at the mean KV length
    isl + osl/2: in steady state a full batch holds sequences at every stage of their output,
    so its KV cache (and step time) is that of the mean."""
    isl, osl = np.asarray(isl, dtype=float), np.asarray(osl, dtype=float)
    s = roofline.decode(m, hw, wl, layout, isl + osl / 2.0, mtp_accept, redundant_experts=red, **roofline_kw(fw))
    mtp = mtp_accept > 1.0
    weights = roofline.weight_bytes_per_device(m, wl, layout, red, mtp)
    kv = roofline.kv_bytes_per_device(m, wl, layout.batch, isl + osl / 2.0, mtp)
    gpus = np.asarray(layout.tp) * np.asarray(layout.dp)
    per_dev = roofline.tokens_per_s_per_device(s, layout)
    return DecodePool(step=s.step_time, tpot=s.tpot, tokens_per_step=s.tokens_per_step,
                      fits=weights + kv <= s.memory_usable, gpus=gpus,
                      capacity=per_dev * gpus / osl, output_tokens_per_s_per_device=per_dev)


@dataclass(frozen=True)
class AggPool:
    step: object
    step_decode_only: object
    tpot: object
    tpot_no_prefill: object
    batch: object  # sequences per rank actually decoding (capped by the chunk)
    prompt_tokens_per_step: object
    utilization: object  # of the chunk budget
    prefill_share: object  # of step time
    fits: object
    gpus: object
    requests_per_s: object  # per instance
    ranks: object


def agg_pool(m: Model, hw: Hardware, wl: Workload, layout: roofline.Layout, chunk, isl, osl, hit: float,
             mtp_accept: float, fw: Framework, red: int, max_utilization: float = 0.95) -> AggPool:
    """One aggregated instance: decode batch and prompt chunks in every step (module doc).
    `max_utilization` caps the chunk's use, so the prefill queue stays stable."""
    isl, osl = np.asarray(isl, dtype=float), np.asarray(osl, dtype=float)
    q = np.maximum((1.0 - hit) * isl, 1.0)
    chunk = np.asarray(chunk, dtype=float)
    acc = mtp_accept if mtp_accept > 1.0 else 1.0
    want = np.asarray(layout.batch, dtype=float)
    # prompt tokens a step must carry so that prompts enter as fast as sequences finish
    batch = np.minimum(want, max_utilization * chunk * osl / (q * acc))
    batch = np.maximum(np.floor(batch), 1.0)
    u = batch * acc * q / osl
    lay = replace(layout, batch=batch)
    s = roofline.decode(m, hw, wl, lay, isl + osl / 2.0, mtp_accept, redundant_experts=red, **roofline_kw(fw))
    tp = np.asarray(layout.tp, dtype=float)
    pre = roofline.prefill(m, hw, wl, lay, np.maximum(u / tp, 1.0), isl, hit, redundant_experts=red, **roofline_kw(fw))
    step = s.step_time + pre.time
    mtp = mtp_accept > 1.0
    weights = roofline.weight_bytes_per_device(m, wl, lay, red, mtp)
    kv = roofline.kv_bytes_per_device(m, wl, batch, isl + osl / 2.0, mtp)  # steady state: the mean
    gpus = tp * np.asarray(layout.dp)
    ranks = np.asarray(layout.dp, dtype=float)
    return AggPool(step=step, step_decode_only=s.step_time, tpot=step / acc, tpot_no_prefill=s.step_time / acc,
                   batch=batch, prompt_tokens_per_step=u, utilization=u / chunk, prefill_share=pre.time / step,
                   fits=weights + kv <= s.memory_usable, gpus=gpus,
                   requests_per_s=ranks * batch * acc / (osl * step), ranks=ranks)


def agg_ttft(pool: AggPool, chunk, isl, hit: float, instances):
    """Wait for a chunk slot (M/D/c, c = every rank of every instance) + the prompt's chunks."""
    q = np.maximum((1.0 - hit) * np.asarray(isl, dtype=float), 1.0)
    chunk = np.asarray(chunk, dtype=float)
    mu = chunk / (q * pool.step)  # requests/s one rank's chunk budget prefills
    c = np.asarray(pool.ranks * instances).astype(np.int64)
    lam = pool.requests_per_s * instances
    return queue_wait(lam, mu, c) + 0.5 * pool.step + np.ceil(q / chunk) * pool.step


# ---------------------------------------------------------------- one serving point


def _check_positive(name: str, value) -> None:
    if value is None:
        return
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise InputError(f"{name} must be a positive finite number, got {value}")


def _layout(m: Model, spec: Mapping[str, int], what: str, redundant: int) -> roofline.Layout:
    tp, dp = int(spec.get("tp", 1)), int(spec.get("dp", 1))
    moe_tp = int(spec.get("moe_tp", 1))
    ep = int(spec.get("ep", tp * dp // moe_tp))
    lay = roofline.Layout(tp=tp, dp=dp, moe_tp=moe_tp, ep=ep, batch=int(spec.get("batch", 1)),
                          tbo=bool(spec.get("tbo", False)))
    try:
        roofline.check_layout(m, lay, int(redundant_for(m, ep, redundant)))
    except InputError as exc:
        raise InputError(f"{what}: {exc}") from None
    return lay


def serve_disagg(m: Model, hw: Hardware, wl: Workload, prefill: Mapping[str, int], decode: Mapping[str, int], *,
                 isl: int, osl: int, hit: float = 0.0, rate: float | None = None, concurrency: float | None = None,
                 gpus: int | None = None, mtp_accept: float = 1.0, fw: Framework | None = None) -> dict[str, Any]:
    """One disaggregated serving point (scalars). `prefill` and `decode` are layout specs
    (tp, dp, ep, moe_tp, instances, tbo; prefill `tokens` per device per forward, decode
    `batch`). Give an arrival `rate` (requests/s) or a `concurrency` (requests in flight,
    closed loop), or neither: the pools' capacity at 95 % prefill load."""
    fw = fw or load_framework("sglang")
    for name, v in (("ISL", isl), ("OSL", osl), ("arrival rate", rate), ("concurrency", concurrency)):
        _check_positive(name, v)
    lp = _layout(m, prefill, "prefill", fw.redundant_experts)
    ld = _layout(m, decode, "decode", fw.redundant_experts)
    n_p, n_d = int(prefill.get("instances", 1)), int(decode.get("instances", 1))
    used = n_p * int(lp.tp * lp.dp) + n_d * int(ld.tp * ld.dp)
    if gpus is not None and used > gpus:
        raise InputError(f"instances do not fit: {n_p} prefill × {lp.tp * lp.dp} + {n_d} decode × {ld.tp * ld.dp} "
                         f"= {used} GPUs > {gpus}")
    tokens = int(prefill.get("tokens", 16384))
    pp = prefill_pool(m, hw, wl, lp, tokens, isl, hit, fw)
    if not bool(pp.fits):
        raise InputError(f"prefill does not fit on {hw.name}: {tokens:,} tokens per GPU per forward")
    red_d = int(redundant_for(m, ld.ep, fw.redundant_experts))
    dp_ = decode_pool(m, hw, wl, ld, isl, osl, mtp_accept, fw, red_d)
    if not bool(dp_.fits):
        raise InputError(f"decode does not fit on {hw.name}: batch {ld.batch} per rank at mean KV length "
                         f"{isl + osl / 2:,g}")
    mu, forward = float(pp.service_rate), float(pp.forward)
    cap_p, cap_d = n_p * mu, n_d * float(dp_.capacity)
    nbytes = float(kv_transfer_bytes(m, isl, kv_format(wl, m)))
    bw = nic_bandwidth(hw) * fw.kv_nics
    t_kv = float(kv_transfer_time(nbytes, bw, bw, fw.kv_setup, forward, m.num_hidden_layers, fw.kv_layerwise))
    tpot = float(dp_.tpot)

    def ttft(lam: float) -> float:
        return float(queue_wait(lam, mu, n_p)) + batch_wait(lam / cap_p, forward) + forward + t_kv

    cap = min(cap_p, cap_d)
    if rate is not None:
        lam = float(rate)
        if lam >= cap_p:
            raise InputError(f"arrival rate {lam:g} requests/s saturates the prefill pool (capacity {cap_p:.3g}/s)")
        if lam > cap_d:
            raise InputError(f"arrival rate {lam:g} requests/s exceeds the decode pool's capacity {cap_d:.3g}/s "
                             f"at batch {ld.batch}")
    elif concurrency is not None:  # closed loop: λ = N / (TTFT(λ) + osl · TPOT at full batch), by bisection
        lo, hi = 0.0, min(cap_d, cap_p * (1 - 1e-9))
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if mid * (ttft(mid) + osl * tpot) < concurrency else (lo, mid)
        lam = lo
    else:
        lam = min(cap_d, 0.95 * cap_p)
    limiting = "prefill" if cap_p < cap_d else "decode"
    # the decode pool runs only the sequences the load brings (Little's law): the smallest
    # batch per rank whose capacity carries λ, evaluated over every batch up to the spec's at once
    sizes = np.arange(1, ld.batch + 1, dtype=float)
    run = decode_pool(m, hw, wl, replace(ld, batch=sizes), isl, osl, mtp_accept, fw, red_d)
    enough = n_d * np.asarray(run.capacity) >= lam * (1 - 1e-12)
    b_run = int(sizes[np.argmax(enough)]) if enough.any() else ld.batch
    tpot_run = float(np.asarray(run.tpot)[b_run - 1])
    n_gpus = used
    out_tps, in_tps = lam * osl, lam * isl
    gp, gd = n_p * int(lp.tp * lp.dp), n_d * int(ld.tp * ld.dp)
    per_node = hw.scale_up_domain
    price_out = cost(hw, gd, out_tps)
    price_in = cost(hw, gp, in_tps)
    tpj = tokens_per_joule(hw, n_gpus, in_tps + out_tps)
    return {
        "mode": "disagg",
        "queue_model": QUEUE_MODEL,
        "isl": isl, "osl": osl, "cache_hit": hit,
        "gpus": n_gpus,
        "prefill": {"tp": lp.tp, "dp": lp.dp, "moe_tp": lp.moe_tp, "ep": lp.ep, "tbo": bool(lp.tbo),
                    "instances": n_p, "tokens_per_gpu": tokens, "gpus": gp},
        "decode": {"tp": ld.tp, "dp": ld.dp, "moe_tp": ld.moe_tp, "ep": ld.ep, "tbo": bool(ld.tbo),
                   "instances": n_d, "batch": ld.batch, "mtp_accept": mtp_accept, "gpus": gd},
        "arrival_rate": lam,
        "ttft_ms": ttft(lam) * 1e3,
        "ttft_queue_ms": float(queue_wait(lam, mu, n_p)) * 1e3,
        "ttft_batch_wait_ms": batch_wait(lam / cap_p, forward) * 1e3,
        "prefill_forward_ms": forward * 1e3,
        "kv_transfer_ms": t_kv * 1e3,
        "kv_transfer_bytes": nbytes,
        "kv_format": kv_format(wl, m),
        "nic_load_prefill": lam * nbytes / (gp * nic_bandwidth(hw)),
        "nic_load_decode": lam * nbytes / (gd * nic_bandwidth(hw)),
        "tpot_ms": tpot_run * 1e3,
        "tpot_full_batch_ms": tpot * 1e3,
        "decode_running_batch": b_run,
        "prefill_utilization": lam / cap_p,
        "decode_utilization": lam / cap_d,
        "prefill_capacity_rps": cap_p,
        "decode_capacity_rps": cap_d,
        "limiting_pool": limiting,
        "tokens_per_s_per_gpu": out_tps / n_gpus,
        "output_tokens_per_s_per_gpu": out_tps / n_gpus,
        "input_tokens_per_s_per_gpu": in_tps / n_gpus,
        "input_tokens_per_s_per_node": in_tps / gp * per_node,
        "output_tokens_per_s_per_node": out_tps / gd * per_node,
        "prefill_capacity_tokens_per_s_per_node": float(pp.input_tokens_per_s_per_device) * per_node,
        "decode_capacity_tokens_per_s_per_node": float(dp_.output_tokens_per_s_per_device) * per_node,
        "usd_per_mtok_output": None if price_out is None else float(price_out),
        "usd_per_mtok_input": None if price_in is None else float(price_in),
        "tokens_per_joule": None if tpj is None else float(tpj),
        "cost_note": cost_note(hw),
    }


def cost_note(hw: Hardware) -> str:
    parts = [f"price ${hw.price['usd_per_gpu_hour']:.2f}/GPU-h ({hw.price['date']})" if hw.price
             else "cost unavailable: no price in the hardware profile",
             f"power {hw.power['watts']:g} W per GPU (board power, source in the profile)" if hw.power
             else "energy unavailable: no power in the hardware profile"]
    return "; ".join(parts)


def serve_agg(m: Model, hw: Hardware, wl: Workload, spec: Mapping[str, int], *, isl: int, osl: int,
              hit: float = 0.0, concurrency: float | None = None, chunk: int | None = None, gpus: int | None = None,
              mtp_accept: float = 1.0, fw: Framework | None = None) -> dict[str, Any]:
    """One aggregated serving point: `spec` is the layout (tp, dp, ep, moe_tp, tbo, instances);
    `concurrency` requests in flight over all instances (default: what fills memory)."""
    fw = fw or load_framework("sglang")
    for name, v in (("ISL", isl), ("OSL", osl), ("concurrency", concurrency), ("chunk", chunk)):
        _check_positive(name, v)
    lay = _layout(m, spec, "layout", fw.redundant_experts)
    n = int(spec.get("instances", 1))
    per = int(lay.tp * lay.dp)
    if gpus is not None and n * per > gpus:
        raise InputError(f"instances do not fit: {n} × {per} = {n * per} GPUs > {gpus}")
    red = int(redundant_for(m, lay.ep, fw.redundant_experts))
    mtp = mtp_accept > 1.0
    if concurrency is None:
        b = float(roofline.max_batch(m, hw, wl, lay, isl + osl / 2.0, red, mtp, framework=fw))
        if b < 1:
            raise InputError(f"no sequence of {isl + osl / 2:,g} tokens fits beside the weights on {hw.name}")
    else:
        b = float(concurrency) / (n * lay.dp)
        if b < 1:
            raise InputError(f"concurrency {concurrency:g} is below one sequence per attention-DP rank ({n * lay.dp})")
    chunk = chunk or fw.chunk_tokens
    pool = agg_pool(m, hw, wl, replace(lay, batch=b), chunk, isl, osl, hit, mtp_accept, fw, red)
    if not bool(pool.fits):
        raise InputError(f"batch {b:g} per rank at mean KV length {isl + osl / 2:,g} does not fit on {hw.name}")
    ttft = float(agg_ttft(pool, chunk, isl, hit, n))
    lam = float(pool.requests_per_s) * n
    total = n * per
    out_tps, in_tps = lam * osl, lam * isl
    share = float(pool.prefill_share)
    price_out = cost(hw, total * (1 - share), out_tps)
    price_in = cost(hw, total * share, in_tps)
    tpj = tokens_per_joule(hw, total, in_tps + out_tps)
    node = hw.scale_up_domain
    return {
        "mode": "agg",
        "queue_model": QUEUE_MODEL,
        "isl": isl, "osl": osl, "cache_hit": hit, "gpus": total,
        "layout": {"tp": lay.tp, "dp": lay.dp, "moe_tp": lay.moe_tp, "ep": lay.ep, "tbo": bool(lay.tbo),
                   "instances": n, "batch": float(pool.batch), "chunk": int(chunk), "mtp_accept": mtp_accept},
        "arrival_rate": lam,
        "ttft_ms": ttft * 1e3,
        "tpot_ms": float(pool.tpot) * 1e3,
        "tpot_no_prefill_ms": float(pool.tpot_no_prefill) * 1e3,
        "prefill_interference": float(pool.tpot / pool.tpot_no_prefill) - 1.0,
        "prompt_tokens_per_step": float(pool.prompt_tokens_per_step),
        "chunk_utilization": float(pool.utilization),
        "prefill_share_of_step": share,
        "tokens_per_s_per_gpu": out_tps / total,
        "output_tokens_per_s_per_gpu": out_tps / total,
        "input_tokens_per_s_per_gpu": in_tps / total,
        "input_tokens_per_s_per_node": in_tps / total * node,
        "output_tokens_per_s_per_node": out_tps / total * node,
        "kv_transfer_ms": 0.0,
        "limiting_pool": None,
        "usd_per_mtok_output": None if price_out is None else float(price_out),
        "usd_per_mtok_input": None if price_in is None else float(price_in),
        "tokens_per_joule": None if tpj is None else float(tpj),
        "cost_note": cost_note(hw) + ("; agg GPU cost split by the step's prefill share" if hw.price else ""),
    }


# ---------------------------------------------------------------- pool balance


def pool_ratio(m: Model, hw: Hardware, wl: Workload, prefill_layout: roofline.Layout, tokens: int,
               decode_layout: roofline.Layout, isl, osl, hit: float = 0.0, mtp_accept: float = 1.0,
               fw: Framework | None = None):
    """Prefill GPUs per decode GPU that balance the two pools, over arrays of ISL and OSL:
    (requests/s a decode GPU finishes) / (requests/s a prefill GPU prefills). The decode batch
    is the layout's, or what fits at the mean KV length isl + osl/2 if that is smaller.
    Returns (ratio, decode batch per rank)."""
    fw = fw or load_framework("sglang")
    isl, osl = np.broadcast_arrays(np.asarray(isl, dtype=float), np.asarray(osl, dtype=float))
    red_p = int(redundant_for(m, prefill_layout.ep, fw.redundant_experts))
    red_d = int(redundant_for(m, decode_layout.ep, fw.redundant_experts))
    p = roofline.prefill(m, hw, wl, prefill_layout, tokens, isl, hit, redundant_experts=red_p, **roofline_kw(fw))
    per_gpu_prefill = p.input_tokens_per_s_per_device / isl
    fit = roofline.max_batch(m, hw, wl, decode_layout, isl + osl / 2.0, red_d, mtp_accept > 1.0, framework=fw)
    batch = np.maximum(np.minimum(float(decode_layout.batch), fit), 1.0)
    d = decode_pool(m, hw, wl, replace(decode_layout, batch=batch), isl, osl, mtp_accept, fw, red_d)
    per_gpu_decode = d.output_tokens_per_s_per_device / osl
    return per_gpu_decode / per_gpu_prefill, batch
