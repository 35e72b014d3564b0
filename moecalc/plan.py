"""Every serving plan of a model on N devices for a workload, as numpy arrays.

A **disaggregated** plan is a prefill option (instance size G_p, attention TP, tokens per
device per forward, TBO; ``n_p`` instances) paired with a decode option (G_d, TP, batch per
attention-DP rank, TBO, MTP; ``n_d`` instances) with ``n_p·G_p + n_d·G_d ≤ N``. An
**aggregated** plan is one pool of ``n`` instances (G, TP, batch, chunk, TBO, MTP). MoE runs
EP = G (MoE-TP 1) with EPLB's redundant experts where EP divides them.

Each option is evaluated once by :mod:`moecalc.serving` (one vectorized roofline call per
phase); plans are their pairings, a (prefill option × decode option) matrix masked by the GPU
budget. The request rate of a plan is the largest both pools carry within the SLOs: the
prefill pool's is the highest utilization on a grid at which TTFT = M/D/c wait + forward + KV
transfer (+ the batch-formation wait) meets the TTFT SLO; the decode pool's is its capacity at its batch if its TPOT meets
the TPOT SLO; the NICs cap both. The objective is **goodput**: output tokens/s per GPU of the
cluster within both SLOs. Each rejected plan gets its first failing reason, in REASONS order.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from . import serving
from .frameworks import Framework, load_framework
from .errors import InputError
from .policies import roofline
from .profiles import Hardware, Model, Workload
from .search import check_size

REASONS = ("prefill out of memory", "decode out of memory", "TPOT above the SLO", "TTFT above the SLO",
           "out of memory")  # the last for aggregated plans
PREFILL_TOKENS = (4096, 8192, 16384)  # new tokens per device per prefill forward
CHUNKS = (2048, 4096, 8192, 16384)  # aggregated: prompt tokens per attention-DP rank per step
BATCHES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)
TPS = (1, 2, 4, 8)
UTILIZATION = np.linspace(0.02, 0.98, 49)  # prefill-pool loads tried against the TTFT SLO


def option_bound(n: int, node: int) -> int:
    """An upper bound on the largest option array a plan on `n` devices builds, computed
    without building anything: per instance size G, (attention TP × grid × TBO) configs times
    n // G instance counts, the grid being the prefill tokens × the load grid (the TTFT array)
    or the aggregated batches × chunks, whichever is larger. Sizes are the divisors of a node
    and the multiples k·node ≤ n, whose n // (k·node) sum to at most (n / node)(1 + ln(n / node))."""
    per_config = len(TPS) * 2 * max(len(PREFILL_TOKENS) * len(UTILIZATION), len(BATCHES) * len(CHUNKS))
    counts = sum(n // g for g in range(1, node + 1) if node % g == 0 and g <= n)
    whole = n / node
    if whole >= 2:
        counts += whole * (1.0 + np.log(whole))
    return int(min(counts * per_config, 2.0**62))


def instance_sizes(m: Model, hw: Hardware, n: int, redundant: int) -> list[int]:
    """Devices per instance: divisors of a node, or whole nodes, up to N, that EP can split."""
    node = hw.scale_up_domain
    sizes = [g for g in range(1, n + 1) if (node % g == 0 or g % node == 0)]
    return [g for g in sizes if bool(serving.ep_ok(m, g, redundant))]


def _grid(**axes):
    """Every combination of the axes, flattened (one array per axis)."""
    names = list(axes)
    mesh = np.meshgrid(*[np.asarray(axes[k]) for k in names], indexing="ij")
    return {k: v.ravel() for k, v in zip(names, mesh)}


def _layouts(m: Model, sizes: list[int]):
    """(G, tp) pairs with tp dividing G, the heads and a node."""
    rows = [(g, t) for g in sizes for t in TPS if g % t == 0 and m.num_attention_heads % t == 0]
    return np.array(rows, dtype=np.int64).reshape(-1, 2)


def _by_redundancy(m: Model, ep, fw: Framework, fn):
    """Call fn(mask, redundant) for each redundancy group of EP sizes; results scattered back."""
    red = serving.redundant_for(m, ep, fw.redundant_experts)
    out = None
    for r in np.unique(red):
        mask = red == r
        res = fn(mask, int(r))
        if out is None:
            out = {k: np.zeros(ep.shape, dtype=np.asarray(v).dtype) for k, v in res.items()}
        for k, v in res.items():
            out[k][mask] = np.broadcast_to(v, mask.sum())
    return out


def _prefill_options(m, hw, wl, n, isl, hit, ttft_slo, sizes, fw):
    lay = _layouts(m, sizes)
    g = _grid(row=np.arange(len(lay)), tokens=PREFILL_TOKENS, tbo=(False, True))
    G, tp = lay[g["row"], 0], lay[g["row"], 1]

    def run(mask, r):
        L = roofline.Layout(tp=tp[mask], dp=G[mask] // tp[mask], moe_tp=1, ep=G[mask], tbo=g["tbo"][mask])
        p = serving.prefill_pool(m, hw, wl, L, g["tokens"][mask].astype(float), isl, hit, replace(fw, redundant_experts=r))
        return {"forward": p.forward, "mu": p.service_rate, "fits": p.fits,
                "tps_dev": p.input_tokens_per_s_per_device}

    ev = _by_redundancy(m, G, fw, run)
    nbytes = float(serving.kv_transfer_bytes(m, isl, serving.kv_format(wl, m)))
    bw = serving.nic_bandwidth(hw) * fw.kv_nics
    t_kv = serving.kv_transfer_time(nbytes, bw, bw, fw.kv_setup, ev["forward"], m.num_hidden_layers, fw.kv_layerwise)
    # options: config × instance count
    cfg = np.repeat(np.arange(len(G)), n // G)
    count = np.concatenate([np.arange(1, n // x + 1) for x in G]) if len(G) else np.zeros(0, int)
    # TTFT on the utilization grid, per option: wait + forward + transfer
    mu = ev["mu"][cfg][:, None]
    rho = UTILIZATION[None, :]
    lam = rho * count[:, None] * mu
    fwd = ev["forward"][cfg][:, None]
    ttft = (serving.queue_wait(lam, mu, count[:, None]) + serving.batch_wait(rho, fwd) + fwd
            + np.broadcast_to(t_kv, ev["forward"].shape)[cfg][:, None])
    ok = ttft <= ttft_slo
    best = np.where(ok.any(axis=1), (ok * rho).max(axis=1), 0.0)  # highest load meeting the SLO
    return {
        "cfg": cfg, "count": count, "gpus": (G[cfg] * count), "G": G[cfg], "tp": tp[cfg],
        "tokens": g["tokens"][cfg], "tbo": g["tbo"][cfg], "fits": ev["fits"][cfg],
        "ttft_ok": best > 0, "rate": best * count * ev["mu"][cfg], "capacity": count * ev["mu"][cfg],
        "forward": ev["forward"][cfg], "t_kv": np.broadcast_to(t_kv, ev["forward"].shape)[cfg],
        "mu": ev["mu"][cfg], "tps_dev": ev["tps_dev"][cfg],
    }, nbytes


def _decode_options(m, hw, wl, n, isl, osl, tpot_slo, sizes, fw):
    lay = _layouts(m, sizes)
    mtps = (1.0, fw.mtp_accept) if fw.mtp_accept > 1.0 else (1.0,)
    out = []
    for acc in mtps:  # MTP changes the step's shape (tokens per sequence): one call each
        g = _grid(row=np.arange(len(lay)), batch=BATCHES, tbo=(False, True))
        G, tp = lay[g["row"], 0], lay[g["row"], 1]

        def run(mask, r):
            L = roofline.Layout(tp=tp[mask], dp=G[mask] // tp[mask], moe_tp=1, ep=G[mask],
                                batch=g["batch"][mask].astype(float), tbo=g["tbo"][mask])
            d = serving.decode_pool(m, hw, wl, L, isl, osl, acc, fw, r)
            return {"tpot": d.tpot, "fits": d.fits, "cap": d.capacity, "tps_dev": d.output_tokens_per_s_per_device}

        ev = _by_redundancy(m, G, fw, run)
        out.append(dict(G=G, tp=tp, batch=g["batch"], tbo=g["tbo"], mtp=np.full(G.shape, acc), **ev))
    d = {k: np.concatenate([o[k] for o in out]) for k in out[0]}
    cfg = np.repeat(np.arange(len(d["G"])), n // d["G"])
    count = np.concatenate([np.arange(1, n // x + 1) for x in d["G"]])
    opt = {k: v[cfg] for k, v in d.items()}
    opt.update(cfg=cfg, count=count, gpus=opt["G"] * count, rate=count * opt["cap"], tpot_ok=opt["tpot"] <= tpot_slo)
    return opt


def _agg_options(m, hw, wl, n, isl, osl, hit, ttft_slo, tpot_slo, sizes, fw):
    lay = _layouts(m, sizes)
    mtps = (1.0, fw.mtp_accept) if fw.mtp_accept > 1.0 else (1.0,)
    out = []
    for acc in mtps:
        g = _grid(row=np.arange(len(lay)), batch=BATCHES, chunk=CHUNKS, tbo=(False, True))
        G, tp = lay[g["row"], 0], lay[g["row"], 1]

        def run(mask, r):
            L = roofline.Layout(tp=tp[mask], dp=G[mask] // tp[mask], moe_tp=1, ep=G[mask],
                                batch=g["batch"][mask].astype(float), tbo=g["tbo"][mask])
            a = serving.agg_pool(m, hw, wl, L, g["chunk"][mask].astype(float), isl, osl, hit, acc, fw, r)
            return {"step": a.step, "tpot": a.tpot, "fits": a.fits, "rps": a.requests_per_s, "ranks": a.ranks,
                    "batch_eff": a.batch, "share": a.prefill_share}

        ev = _by_redundancy(m, G, fw, run)
        out.append(dict(G=G, tp=tp, batch=g["batch"], chunk=g["chunk"], tbo=g["tbo"], mtp=np.full(G.shape, acc), **ev))
    d = {k: np.concatenate([o[k] for o in out]) for k in out[0]}
    cfg = np.repeat(np.arange(len(d["G"])), n // d["G"])
    count = np.concatenate([np.arange(1, n // x + 1) for x in d["G"]])
    opt = {k: v[cfg] for k, v in d.items()}
    pool = serving.AggPool(step=opt["step"], step_decode_only=None, tpot=opt["tpot"], tpot_no_prefill=None,
                           batch=opt["batch_eff"], prompt_tokens_per_step=None, utilization=None, prefill_share=None,
                           fits=opt["fits"], gpus=opt["G"], requests_per_s=opt["rps"], ranks=opt["ranks"])
    opt["ttft"] = serving.agg_ttft(pool, opt["chunk"], isl, hit, count)
    opt.update(count=count, gpus=opt["G"] * count, rate=opt["rps"] * count)
    reason = np.select([~opt["fits"], opt["tpot"] > tpot_slo, opt["ttft"] > ttft_slo], [4, 2, 3], -1)
    opt["reason"] = reason
    return opt


def plan(m: Model, hw: Hardware, wl: Workload, gpus: int, *, isl: int | None = None, osl: int | None = None,
         hit: float | None = None, ttft_ms: float | None = None, tpot_ms: float | None = None,
         fw: Framework | None = None, top: int = 10) -> dict[str, Any]:
    """Every disaggregated and aggregated plan on `gpus` devices; the best of each and the
    reasons the rest fail. SLOs default to the workload's (TTFT; TPOT = 1 / min tokens/s per
    user); a missing SLO does not constrain."""
    fw = fw or load_framework("sglang")
    isl = wl.prompt_len if isl is None else isl
    osl = wl.output_len if osl is None else osl
    hit = wl.kv_cache_hit_rate if hit is None else hit
    for name, v in (("GPU count", gpus), ("ISL", isl), ("OSL", osl), ("TTFT SLO", ttft_ms), ("TPOT SLO", tpot_ms)):
        serving._check_positive(name, v)
    ttft_slo = ttft_ms / 1e3 if ttft_ms is not None else (wl.max_ttft_s or np.inf)
    tpot_slo = tpot_ms / 1e3 if tpot_ms is not None else (1.0 / wl.min_tokens_per_user if wl.min_tokens_per_user else np.inf)
    check_size(option_bound(gpus, hw.scale_up_domain), f"a plan on {gpus:,} GPUs", "plan fewer --gpus (a part "
               "of the cluster, then scale)", "pool options")  # before any array of that size exists
    sizes = instance_sizes(m, hw, gpus, fw.redundant_experts)
    if not sizes:
        raise InputError(f"no instance size up to {gpus} GPUs lets EP split {m.name}'s experts")

    P, nbytes = _prefill_options(m, hw, wl, gpus, isl, hit, ttft_slo, sizes, fw)
    D = _decode_options(m, hw, wl, gpus, isl, osl, tpot_slo, sizes, fw)
    # Plans pair a prefill option with a decode option within the budget. A plan whose pool
    # fails on its own (memory, SLO) is counted exactly, by GPU counts, without pairing it;
    # the rest are paired as a matrix and their goodput computed.
    d_sorted = np.sort(D["gpus"])
    partners = np.searchsorted(d_sorted, gpus - P["gpus"], side="right")  # decode options each prefill fits with
    plans = int(partners.sum())
    p_bad = np.select([~P["fits"], ~P["ttft_ok"]], [0, 3], -1)
    d_bad = np.select([~D["fits"], ~D["tpot_ok"]], [1, 2], -1)
    dis_counts = {r: 0 for r in REASONS[:4]}
    for code in (0, 3):
        dis_counts[REASONS[code]] = int(partners[p_bad == code].sum())
    p_ok = np.flatnonzero(p_bad < 0)
    for code in (1, 2):  # plans whose prefill passes but whose decode fails
        g = np.sort(D["gpus"][d_bad == code])
        dis_counts[REASONS[code]] = int(np.searchsorted(g, gpus - P["gpus"][p_ok], side="right").sum())
    d_ok = np.flatnonzero(d_bad < 0)
    Pv = {k: v[p_ok] for k, v in P.items()}
    Dv = {k: v[d_ok] for k, v in D.items()}
    nic = serving.nic_bandwidth(hw)
    fit = Pv["gpus"][:, None] + Dv["gpus"][None, :] <= gpus
    lam = np.minimum(np.minimum(Pv["rate"][:, None], Dv["rate"][None, :]),
                     np.minimum(Pv["gpus"][:, None], Dv["gpus"][None, :]) * (nic / nbytes))
    good = np.where(fit, lam * (osl / gpus), -1.0)
    dis_feasible = int(np.count_nonzero(fit))
    P, D = Pv, Dv

    A = _agg_options(m, hw, wl, gpus, isl, osl, hit, ttft_slo, tpot_slo, sizes, fw)
    agood = np.where(A["reason"] < 0, A["rate"] * osl / gpus, -1.0)
    agg_counts = {REASONS[i]: int(np.count_nonzero(A["reason"] == i)) for i in (4, 2, 3)}

    def dis_row(flat: int) -> dict[str, Any]:
        i, j = divmod(int(flat), good.shape[1])
        r = float(lam[i, j])
        gp, gd = int(P["gpus"][i]), int(D["gpus"][j])
        wait = float(serving.queue_wait(r, P["mu"][i], P["count"][i]))
        out_tps, in_tps = r * osl, r * isl
        node = hw.scale_up_domain
        c_out, c_in = serving.cost(hw, gd, out_tps), serving.cost(hw, gp, in_tps)
        tpj = serving.tokens_per_joule(hw, gp + gd, in_tps + out_tps)
        return {
            "mode": "disagg",
            "prefill": {"instances": int(P["count"][i]), "gpus_per_instance": int(P["G"][i]), "tp": int(P["tp"][i]),
                        "dp": int(P["G"][i] // P["tp"][i]), "ep": int(P["G"][i]), "tokens_per_gpu": int(P["tokens"][i]),
                        "tbo": bool(P["tbo"][i])},
            "decode": {"instances": int(D["count"][j]), "gpus_per_instance": int(D["G"][j]), "tp": int(D["tp"][j]),
                       "dp": int(D["G"][j] // D["tp"][j]), "ep": int(D["G"][j]), "batch": int(D["batch"][j]),
                       "tbo": bool(D["tbo"][j]), "mtp_accept": float(D["mtp"][j])},
            "gpus_used": gp + gd,
            "goodput_tokens_per_s_per_gpu": float(good[i, j]),
            "arrival_rate": r,
            "ttft_ms": (wait + float(serving.batch_wait(r / P["capacity"][i], P["forward"][i])) + float(P["forward"][i])
                        + float(P["t_kv"][i])) * 1e3,
            "kv_transfer_ms": float(P["t_kv"][i]) * 1e3,
            "tpot_ms": float(D["tpot"][j]) * 1e3,
            "limiting_pool": "prefill" if P["rate"][i] < D["rate"][j] else "decode",
            "prefill_decode_gpu_ratio": gp / gd,
            "input_tokens_per_s_per_node": in_tps / gp * node,
            "output_tokens_per_s_per_node": out_tps / gd * node,
            "prefill_capacity_tokens_per_s_per_node": float(P["tps_dev"][i]) * node,
            "decode_capacity_tokens_per_s_per_node": float(D["tps_dev"][j]) * node,
            "usd_per_mtok_output": None if c_out is None else float(c_out),
            "usd_per_mtok_input": None if c_in is None else float(c_in),
            "tokens_per_joule": None if tpj is None else float(tpj),
        }

    def agg_row(k: int) -> dict[str, Any]:
        r = float(A["rate"][k])
        g = int(A["gpus"][k])
        share = float(A["share"][k])
        out_tps, in_tps = r * osl, r * isl
        c_out, c_in = serving.cost(hw, g * (1 - share), out_tps), serving.cost(hw, g * share, in_tps)
        tpj = serving.tokens_per_joule(hw, g, in_tps + out_tps)
        node = hw.scale_up_domain
        return {
            "mode": "agg",
            "layout": {"instances": int(A["count"][k]), "gpus_per_instance": int(A["G"][k]), "tp": int(A["tp"][k]),
                       "dp": int(A["G"][k] // A["tp"][k]), "ep": int(A["G"][k]), "batch": int(A["batch"][k]),
                       "batch_running": float(A["batch_eff"][k]), "chunk": int(A["chunk"][k]),
                       "tbo": bool(A["tbo"][k]), "mtp_accept": float(A["mtp"][k])},
            "gpus_used": g,
            "goodput_tokens_per_s_per_gpu": float(agood[k]),
            "arrival_rate": r,
            "ttft_ms": float(A["ttft"][k]) * 1e3,
            "kv_transfer_ms": 0.0,
            "tpot_ms": float(A["tpot"][k]) * 1e3,
            "limiting_pool": None,
            "input_tokens_per_s_per_node": in_tps / g * node,
            "output_tokens_per_s_per_node": out_tps / g * node,
            "usd_per_mtok_output": None if c_out is None else float(c_out),
            "usd_per_mtok_input": None if c_in is None else float(c_in),
            "tokens_per_joule": None if tpj is None else float(tpj),
        }

    def ranked(values: np.ndarray, k: int, headroom) -> np.ndarray:
        """Best first by goodput (to 6 significant digits); ties (the non-limiting pool's
        options) by `headroom`, the plan's summed pool capacities; then array order."""
        flat = values.ravel()
        n = int(np.count_nonzero(flat > 0))
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        pos = flat[flat > 0]
        cut = np.partition(pos, n - min(k, n))[n - min(k, n)]
        idx = np.flatnonzero(flat >= cut * (1 - 1e-6))  # the top k and everything tied with them
        key = np.round(flat[idx] / cut, 6)
        room = np.broadcast_to(headroom, values.shape).ravel()[idx]
        return idx[np.lexsort((idx, -room, -key))][:k]

    dtop = [dis_row(i) for i in ranked(good, top, P["capacity"][:, None] + D["rate"][None, :])]
    atop = [agg_row(i) for i in ranked(agood, top, A["rate"])]
    if not dtop and not atop:
        counts = {**{k: v for k, v in dis_counts.items()}, **{f"agg: {k}": v for k, v in agg_counts.items()}}
        # the binding constraint: the SLO that rejects the plans that fit in memory, if any do
        slo = {k: v for k, v in counts.items() if "memory" not in k and v}
        binding = max(slo or counts, key=(slo or counts).get)
        raise InputError(f"no feasible plan on {gpus} × {hw.name} for ISL {isl:,} / OSL {osl:,}: the binding constraint "
                         f"is {binding} ({counts[binding]:,} plans); TTFT ≤ {ttft_slo * 1e3:g} ms, "
                         f"TPOT ≤ {tpot_slo * 1e3:g} ms")
    return {
        "hardware": hw.name, "model": m.name, "workload": wl.name, "gpus": gpus, "isl": isl, "osl": osl,
        "cache_hit": hit, "framework": f"{fw.name} {fw.version}",
        "ttft_slo_ms": None if not np.isfinite(ttft_slo) else ttft_slo * 1e3,
        "tpot_slo_ms": None if not np.isfinite(tpot_slo) else tpot_slo * 1e3,
        "queue_model": serving.QUEUE_MODEL,
        "objective": "goodput: output tokens/s per GPU of the cluster within both SLOs",
        "plans": plans + int(A["reason"].size),
        "disagg": {"plans": plans, "paired": int(fit.size), "feasible": dis_feasible, "rejected": dis_counts,
                   "best": dtop[0] if dtop else None, "top": dtop},
        "agg": {"plans": int(A["reason"].size), "feasible": int(np.count_nonzero(agood > 0)),
                "rejected": agg_counts, "best": atop[0] if atop else None, "top": atop},
        "cost_note": serving.cost_note(hw),
    }
