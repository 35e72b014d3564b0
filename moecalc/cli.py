"""The ``moecalc`` command line. Every command prints a readable table, or with ``--json``
one JSON document on stdout. Every bad input becomes one line on stderr and exit status 2.

Heavy modules are imported inside the commands that need them, so a call stays fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, NoReturn

from . import checks
from .errors import InputError

MS = 1e3  # seconds → milliseconds, for printing
MAX_COUNT = checks.MAX_COUNT  # largest integer count a float holds exactly
GB = 1e9
# weight dtypes the routed experts may take (block-scaled 4-bit formats included; see units.DTYPE_BYTES)
EXPERT_DTYPES = ["bf16", "fp8", "nvfp4", "mxfp4"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage block
        raise InputError(message)


def _typed(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a checks parser: its InputError becomes argparse's message,
    which names the option."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except InputError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("value: ")) from None
    convert.__name__ = parse.__name__
    return convert


@_typed
def positive_int(text: str) -> int:
    return checks.parse_count(text)


def positive_int_list(text: str) -> list[int]:
    return [positive_int(part) for part in text.split(",")]


@_typed
def positive_float(text: str) -> float:
    value = checks.parse_number(text)
    if not value > 0:
        raise InputError(f"must be a positive number, got {text!r}")
    return value


def _at_least_one(text: str) -> float:
    value = positive_float(text)
    if value < 1.0:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


@_typed
def _non_negative_int(text: str) -> int:
    return checks.parse_count(text, zero_ok=True)


@_typed
def _hit_rate(text: str) -> float:
    value = checks.parse_number(text)
    if not 0.0 <= value < 1.0:
        raise InputError(f"must be a fraction in [0, 1), got {text!r}")
    return value


def _file_name(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("must be a file name, got an empty one")
    return text


def _inputs(args: argparse.Namespace) -> str:
    """The options a user gave, for an error about a result they led to."""
    given = [f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
             if k not in ("run", "command", "json") and v not in (None, False)]
    return ", ".join(given)


def _emit(args: argparse.Namespace, data: Any, text: Callable[[], str], signed: tuple[str, ...] = ()) -> int:
    """Print `data` as JSON (with --json) or `text()`: every command's output passes here,
    so that nothing non-finite, or negative outside the signed fields (checks.SIGNED and
    `signed`), is ever printed."""
    from . import report

    bad = checks.first_bad_number(data, signed=signed)
    if bad:
        raise InputError(f"the result {bad[0]} would be {bad[1]!r}: these inputs are outside the model's range "
                         f"({_inputs(args)})")
    _print(report.dumps(data) if getattr(args, "json", False) else text())
    return 0


def _load(args: argparse.Namespace, *kinds: str):
    from . import profiles

    loaders = {"hardware": profiles.load_hardware, "model": profiles.load_model, "workload": profiles.load_workload}
    return [loaders[k](getattr(args, k)) for k in kinds]


# ---------------------------------------------------------------- flops


def cmd_flops(args: argparse.Namespace) -> int:
    from . import counts, report
    from .units import DTYPE_BYTES

    (m,) = _load(args, "model")
    exact = counts.param_table(m, bias=False, norms=True)
    seed = {r.block: r for r in counts.param_table(m, bias=True, norms=False)}
    params = [
        {
            "block": r.block,
            "per_layer": r.per_layer,
            "layers": r.layers,
            "total": r.total,
            "per_layer_with_biases": seed[r.block].per_layer if r.block in seed else None,
        }
        for r in exact
    ]
    kv = args.kv_len
    flops = {
        "mla_plain": counts.mla_flops(m, 1, kv, 0.0, "plain"),
        "mla_absorbed": counts.mla_flops(m, 1, kv, 0.0, "absorbed"),
        "mla_premultiplied": counts.mla_flops(m, 1, kv, 0.0, "premultiplied"),
        "dense_mlp": counts.dense_mlp_flops(m, 1),
        "expert": counts.expert_flops(m, 1),
        "gate": counts.gate_flops(m, 1),
        "lm_head": counts.lm_head_flops(m, 1),
    }
    if m.sparse:  # DeepSeek Sparse Attention: the indexer scores every cached key
        flops["indexer"] = counts.indexer_flops(m, 1, kv)
    kv_bytes = {d: counts.kv_bytes_per_token(m, b) for d, b in DTYPE_BYTES.items() if d in ("bf16", "fp8")}
    data = {
        "model": m.name,
        "kv_len": kv,
        "params": params,
        "total_params": counts.total_params(m),
        "total_params_with_biases": counts.total_params(m, bias=True, norms=False),
        "activated_params": counts.activated_params(m),
        "mla_params": {mode: counts.mla_params(m, mode) for mode in counts.MLA_MODES},
        "flops_per_token": flops,
        "kv_bytes_per_token": kv_bytes,
    }

    def text() -> str:
        rows = [
            (p["block"], p["per_layer"] / 1e6, p["layers"], p["total"] / 1e9,
             (p["per_layer_with_biases"] or 0) / 1e6)
            for p in params
        ]
        rows.append(("total", None, None, data["total_params"] / 1e9, None))
        out = [
            report.table(
                ["block", "per layer (M)", "layers", "total (B)", "per layer with biases (M)"],
                rows,
                digits=2,
                title=f"{m.name}: parameters (main model, no MTP; seed 003 counts nn.Linear biases)",
            ),
            f"activated per token: {data['activated_params'] / 1e9:.2f} B",
            "",
            report.table(
                ["op", "MFLOP per token"],
                [(k, v / 1e6) for k, v in flops.items()],
                digits=2,
                title=f"FLOPs per token (MLA at KV length {kv}, no cache hits)",
            ),
            "",
            report.table(
                ["KV dtype", "bytes per token (all layers)", "KiB"],
                [(d, b, b / 1024) for d, b in kv_bytes.items()],
                digits=2,
                title="KV cache: (kv_lora_rank + qk_rope_head_dim) per layer, no scales"
                + (f", plus the indexer's FP8 keys ({counts.index_cache_bytes_per_token(m, 1):g} B per layer)"
                   if m.sparse else ""),
            ),
        ]
        return "\n".join(out)

    return _emit(args, data, text)


# ---------------------------------------------------------------- prefill / decode


def cmd_prefill(args: argparse.Namespace) -> int:
    if args.policy == "roofline":
        return _prefill_roofline(args)
    _only_roofline(args, ("dp", "moe_tp", "ep", "tbo", "tokens_per_gpu", "kv_cache_hit_rate", "dtype", "framework",
                          "expert_dtype", "expert_imbalance", "redundant_experts"))
    return _prefill_seed003(args)


def _prefill_seed003(args: argparse.Namespace) -> int:
    from . import report
    from .policies import seed003

    m, hw, wl = _load(args, "model", "hardware", "workload")
    seq_len = args.seq_len or wl.prompt_len
    p = seed003.prefill(m, hw, seq_len, wl.kv_cache_hit_rate, args.tp)
    layers = {"MLA": m.n_dense_layers, "DenseMLP": m.n_dense_layers}
    data = {
        "policy": "seed003",
        "hardware": hw.name,
        "model": m.name,
        "tp": p.tp,
        "dp": p.dp,
        "ep": p.tp * p.dp,
        "nodes": p.nodes,
        "seq_len": seq_len,
        "kv_cache_hit_rate": wl.kv_cache_hit_rate,
        "per_layer_ms": {k: v * MS for k, v in p.layers.items()},
        "layers": {k: layers.get(k, m.n_moe_layers) for k in p.layers},
        "time_overlap_ms": p.time_overlap * MS,
        "time_ms": p.time * MS,
        "tokens_per_s_per_node_overlap": p.tokens_per_s_per_node_overlap,
        "tokens_per_s_per_node": p.tokens_per_s_per_node,
    }

    def text() -> str:
        head = (f"{m.name} prefill on {hw.name}, policy seed003: TP{p.tp} × DP{p.dp} attention, EP{p.tp * p.dp} "
                f"experts over {p.nodes} nodes, {seq_len:,} tokens per sequence, {wl.kv_cache_hit_rate:.1%} cache hits")
        rows = [(k, data["layers"][k], v) for k, v in data["per_layer_ms"].items()]
        summary = [
            ("time, all-to-all overlapped (ms)", data["time_overlap_ms"]),
            ("time, nothing overlapped (ms)", data["time_ms"]),
            ("tokens/s per node, overlapped", data["tokens_per_s_per_node_overlap"]),
            ("tokens/s per node, not overlapped", data["tokens_per_s_per_node"]),
        ]
        return "\n".join([report.table(["op", "layers", "ms per layer"], rows, title=head), "",
                          report.table(["metric", "value"], summary, digits=1)])

    return _emit(args, data, text)


def cmd_decode(args: argparse.Namespace) -> int:
    if args.policy == "roofline":
        return _decode_roofline(args)
    _only_roofline(args, ("dp", "moe_tp", "tbo", "dtype", "expert_dtype", "mtp_accept", "expert_imbalance",
                          "redundant_experts", "framework"))
    return _decode_seed003(args)


def _decode_seed003(args: argparse.Namespace) -> int:
    from . import report
    from .policies import seed003

    m, hw, wl = _load(args, "model", "hardware", "workload")
    # --batch means sequences per attention-DP rank under every policy; seed 003's algebra is per GPU
    if m.num_attention_heads % args.tp == 0 and args.batch % args.tp:  # (a bad TP: seed003.decode says so)
        raise InputError(f"--batch {args.batch} (sequences per attention-DP rank of TP{args.tp} GPUs) must be a "
                         f"multiple of the TP for seed 003's per-GPU model")
    per_gpu = args.batch // args.tp
    d = seed003.decode(m, hw, per_gpu, args.kv_len, args.tp, output_len=wl.output_len, ep=args.ep)
    needed, available = float(d.memory_needed), d.memory_available
    if needed > available:
        raise InputError(
            f"batch {args.batch} does not fit on {hw.name} at TP{args.tp} ({per_gpu} sequences per GPU): it needs {needed / GB:.1f} GB per GPU "
            f"(weights + KV cache), {available / GB:.1f} GB are usable, over by {(needed - available) / GB:.1f} GB"
        )
    data = {
        "policy": "seed003",
        "hardware": hw.name,
        "model": m.name,
        "tp": args.tp,
        "batch": args.batch,
        "batch_meaning": "sequences per attention-DP rank (tp GPUs)",
        "batch_per_gpu": per_gpu,
        "kv_len": args.kv_len,
        "tpot_ms": d.tpot * MS,
        "tpot_overlap_ms": d.tpot_overlap * MS,
        "tokens_per_s_per_user": d.tokens_per_s_per_user,
        "tokens_per_s_per_user_overlap": d.tokens_per_s_per_user_overlap,
        "tokens_per_s_per_gpu": d.tokens_per_s_per_gpu,
        "tokens_per_s_per_gpu_overlap": d.tokens_per_s_per_gpu_overlap,
        "memory_per_gpu_gb": needed / GB,
        "memory_available_gb": available / GB,
        "fits": needed <= available,
        "per_layer_ms": {k: float(v) * MS for k, v in d.layers.items()},
    }

    def text() -> str:
        head = (f"{m.name} decode on {hw.name}, policy seed003: TP{args.tp}, {args.batch} sequences per attention-DP "
                f"rank ({per_gpu} per GPU), "
                f"KV length {args.kv_len:,}")
        rows = [
            ("TPOT, nothing overlapped (ms)", data["tpot_ms"]),
            ("TPOT, dispatch/combine overlapped (ms)", data["tpot_overlap_ms"]),
            ("tokens/s per user", data["tokens_per_s_per_user"]),
            ("tokens/s per user, overlapped", data["tokens_per_s_per_user_overlap"]),
            ("tokens/s per GPU", data["tokens_per_s_per_gpu"]),
            ("tokens/s per GPU, overlapped", data["tokens_per_s_per_gpu_overlap"]),
            ("memory needed per GPU (GB)", data["memory_per_gpu_gb"]),
            ("memory usable per GPU (GB)", data["memory_available_gb"]),
        ]
        ops = [(k, v) for k, v in data["per_layer_ms"].items()]
        return "\n".join([report.table(["metric", "value"], rows, title=head), "",
                          report.table(["op", "ms per layer"], ops)])

    return _emit(args, data, text)


# ---------------------------------------------------------------- prefill / decode, roofline policy


def _only_roofline(args: argparse.Namespace, names: tuple[str, ...]) -> None:
    given = [n for n in names if getattr(args, n, None) not in (None, False)]
    if given:
        raise InputError(f"--{given[0].replace('_', '-')} applies to the roofline policy only, not --policy {args.policy}")


def _layout(args: argparse.Namespace, m, batch: int, redundant: int):
    """The layout from --tp/--dp/--moe-tp/--ep, the missing sizes derived so that
    tp × dp = moe_tp × ep (devices); one error if they cannot be."""
    from .policies import roofline

    tp, moe_tp = args.tp, args.moe_tp or 1
    dp, ep = args.dp, args.ep
    if dp is None and ep is None:
        dp = 1
    if dp is None:
        if (moe_tp * ep) % tp:
            raise InputError(f"layout does not cover whole devices: moe-tp × ep = {moe_tp * ep} is not a multiple of tp = {tp}")
        dp = moe_tp * ep // tp
    if ep is None:
        if (tp * dp) % moe_tp:
            raise InputError(f"layout does not cover whole devices: tp × dp = {tp * dp} is not a multiple of moe-tp = {moe_tp}")
        ep = tp * dp // moe_tp
    layout = roofline.Layout(tp=tp, dp=dp, moe_tp=moe_tp, ep=ep, batch=batch, tbo=bool(args.tbo))
    roofline.check_layout(m, layout, redundant)
    return layout


def _framework(args: argparse.Namespace):
    from .frameworks import load_framework

    return load_framework(getattr(args, "framework", None))


def _framework_json(fw) -> dict[str, Any]:
    return {"name": fw.name, "version": fw.version, "profile": fw.key}


def _with_kv_dtype(wl, dtype: str | None, expert_dtype: str | None = None):
    from dataclasses import replace

    wl = wl if dtype is None else replace(wl, kv_dtype=dtype)
    return wl if expert_dtype is None else replace(wl, expert_weight_dtype=expert_dtype)


BAND_MEANING = ("band_low/band_high: the lowest and highest figure with the efficiencies and floors at the slow "
                "and fast ends of their calibration spreads, compute and links as two independent groups "
                "(moecalc.bands)")


def _bands(figures: Callable, hw, names: tuple[str, ...]) -> tuple[dict[str, float], dict[str, float]]:
    """band_low and band_high of each named figure (figures(hardware) returns them in order)."""
    from . import bands

    lo, hi = bands.band(lambda h: [float(v) for v in figures(h)], hw)
    return dict(zip(names, map(float, lo))), dict(zip(names, map(float, hi)))


def _layout_json(layout) -> dict[str, Any]:
    return {"tp": layout.tp, "dp": layout.dp, "moe_tp": layout.moe_tp, "ep": layout.ep, "batch": layout.batch,
            "tbo": layout.tbo, "devices": layout.tp * layout.dp}


def _ms(ops) -> dict[str, float]:
    return {k: float(v) * MS for k, v in ops.items()}


def _decode_roofline(args: argparse.Namespace) -> int:
    from . import report
    from .policies import roofline

    m, hw, wl = _load(args, "model", "hardware", "workload")
    wl = _with_kv_dtype(wl, args.dtype, args.expert_dtype)
    redundant = args.redundant_experts or 0
    imbalance = args.expert_imbalance or 1.0
    layout = _layout(args, m, args.batch, redundant)
    accept = args.mtp_accept or 1.0
    fw = _framework(args)
    step = roofline.decode(m, hw, wl, layout, args.kv_len, accept, expert_imbalance=imbalance,
                           redundant_experts=redundant, framework=fw)
    roofline.check_fits(step, hw, f"batch {args.batch} at KV length {args.kv_len:,} ({wl.kv_dtype} KV)")
    per_gpu = float(roofline.tokens_per_s_per_device(step, layout))

    def figures(h):
        s = roofline.decode(m, h, wl, layout, args.kv_len, accept, expert_imbalance=imbalance,
                            redundant_experts=redundant, framework=fw)
        gpu = roofline.tokens_per_s_per_device(s, layout)
        return [s.tpot * MS, s.step_time * MS, s.tokens_per_s_per_user, gpu, gpu * hw.scale_up_domain]

    low, high = _bands(figures, hw, ("tpot_ms", "step_ms", "tokens_per_s_per_user", "tokens_per_s_per_gpu",
                                     "tokens_per_s_per_node"))
    data = {
        "policy": "roofline",
        "framework": _framework_json(fw),
        "hardware": hw.name,
        "model": m.name,
        "workload": wl.name,
        "layout": _layout_json(layout),
        "batch_meaning": "sequences per attention-DP rank (tp GPUs)",
        "kv_len": args.kv_len,
        "kv_dtype": wl.kv_dtype,
        "weight_dtype": wl.weight_dtype,
        "expert_weight_dtype": wl.expert_dtype,
        "mtp_accept": accept,
        "expert_imbalance": imbalance,
        "redundant_experts": redundant,
        "tpot_ms": float(step.tpot) * MS,
        "step_ms": float(step.step_time) * MS,
        "step_ms_no_overlap": float(step.step_time_no_overlap) * MS,
        "step_ms_tbo": float(step.step_time_tbo) * MS,
        "tokens_per_s_per_user": float(step.tokens_per_s_per_user),
        "tokens_per_s_per_gpu": per_gpu,
        "tokens_per_s_per_node": per_gpu * hw.scale_up_domain,
        "gpus_per_node": hw.scale_up_domain,
        "memory_per_gpu_gb": float(step.memory_bytes) / GB,
        "memory_weights_gb": float(step.weight_bytes) / GB,
        "memory_kv_gb": float(step.kv_bytes) / GB,
        "memory_usable_gb": float(step.memory_usable) / GB,
        "memory_capacity_gb": float(step.memory_capacity) / GB,
        "fits": bool(step.fits),
        "cuda_graph": bool(step.in_graph),
        "mfu": float(roofline.mfu(step, hw, wl)),
        "layers": {"dense": m.n_dense_layers, "moe": m.n_moe_layers},
        "per_layer_ms": {"dense": _ms(step.dense_layer), "moe": _ms(step.moe_layer)},
        "head_ms": float(step.head) * MS,
        "band_low": low,
        "band_high": high,
        "band_meaning": BAND_MEANING,
    }

    def text() -> str:
        lay = data["layout"]
        head = (f"{m.name} decode on {lay['devices']} × {hw.name}, policy roofline, {fw.name} {fw.version}: "
                f"attention TP{lay['tp']} × "
                f"DP{lay['dp']}, MoE TP{lay['moe_tp']} × EP{lay['ep']}, {args.batch} sequences per attention-DP "
                f"rank, KV length {args.kv_len:,} ({wl.kv_dtype}), {'two-batch overlap' if layout.tbo else 'no overlap'}"
                + (f", MTP {accept:g} tokens per step" if accept > 1 else ""))
        rows = [
            ("TPOT (ms)", data["tpot_ms"], low["tpot_ms"], high["tpot_ms"]),
            ("step, no overlap (ms)", data["step_ms_no_overlap"]),
            ("step, two-batch overlap (ms)", data["step_ms_tbo"]),
            ("tokens/s per user", data["tokens_per_s_per_user"], low["tokens_per_s_per_user"],
             high["tokens_per_s_per_user"]),
            ("tokens/s per GPU", data["tokens_per_s_per_gpu"], low["tokens_per_s_per_gpu"], high["tokens_per_s_per_gpu"]),
            (f"tokens/s per node ({hw.scale_up_domain} GPUs)", data["tokens_per_s_per_node"],
             low["tokens_per_s_per_node"], high["tokens_per_s_per_node"]),
            ("MFU", data["mfu"]),
            ("memory per GPU (GB): weights", data["memory_weights_gb"]),
            ("memory per GPU (GB): KV cache", data["memory_kv_gb"]),
            ("memory per GPU (GB): usable", data["memory_usable_gb"]),
        ]
        ops = [(k, data["per_layer_ms"]["dense"].get(k), data["per_layer_ms"]["moe"].get(k))
               for k in dict.fromkeys([*data["per_layer_ms"]["dense"], *data["per_layer_ms"]["moe"]])]
        rows = [r + (None,) * (4 - len(r)) for r in rows]
        return "\n".join([report.table(["metric", "value", "band low", "band high"], rows, title=head), "",
                          report.table(["op", f"dense layer (ms, ×{m.n_dense_layers})", f"MoE layer (ms, ×{m.n_moe_layers})"],
                                       ops, title="per-layer op times, full batch, no overlap"),
                          f"LM head (and MTP module), once per step: {data['head_ms']:.3f} ms"])

    return _emit(args, data, text)


def _prefill_roofline(args: argparse.Namespace) -> int:
    from . import report
    from .policies import roofline

    if args.tokens_per_gpu is None:
        raise InputError("--tokens-per-gpu is required with --policy roofline (new prompt tokens per GPU per forward)")
    m, hw, wl = _load(args, "model", "hardware", "workload")
    wl = _with_kv_dtype(wl, args.dtype, args.expert_dtype)
    redundant = args.redundant_experts or 0
    imbalance = args.expert_imbalance or 1.0
    layout = _layout(args, m, 1, redundant)
    prompt = args.seq_len or wl.prompt_len
    hit = wl.kv_cache_hit_rate if args.kv_cache_hit_rate is None else args.kv_cache_hit_rate
    fw = _framework(args)
    p = roofline.prefill(m, hw, wl, layout, args.tokens_per_gpu, prompt, hit, expert_imbalance=imbalance,
                         redundant_experts=redundant, framework=fw)
    roofline.check_fits(p, hw, f"prefill of {args.tokens_per_gpu:,} tokens per GPU")
    per_gpu = float(p.tokens_per_s_per_device)

    def figures(h):
        q = roofline.prefill(m, h, wl, layout, args.tokens_per_gpu, prompt, hit, expert_imbalance=imbalance,
                             redundant_experts=redundant, framework=fw)
        return [q.time * MS, q.tokens_per_s_per_device, q.tokens_per_s_per_device * hw.scale_up_domain,
                q.input_tokens_per_s_per_device, q.input_tokens_per_s_per_device * hw.scale_up_domain]

    low, high = _bands(figures, hw, ("time_ms", "tokens_per_s_per_gpu", "tokens_per_s_per_node",
                                     "input_tokens_per_s_per_gpu", "input_tokens_per_s_per_node"))
    lay = _layout_json(layout)
    lay.pop("batch")
    data = {
        "policy": "roofline",
        "framework": _framework_json(fw),
        "hardware": hw.name,
        "model": m.name,
        "workload": wl.name,
        "layout": lay,
        "tokens_per_gpu": args.tokens_per_gpu,
        "prompt_len": prompt,
        "kv_cache_hit_rate": hit,
        "weight_dtype": wl.weight_dtype,
        "expert_weight_dtype": wl.expert_dtype,
        "expert_imbalance": imbalance,
        "redundant_experts": redundant,
        "time_ms": float(p.time) * MS,
        "time_ms_no_overlap": float(p.time_no_overlap) * MS,
        "time_ms_tbo": float(p.time_tbo) * MS,
        "tokens_per_s_per_gpu": per_gpu,
        "tokens_per_s_per_node": per_gpu * hw.scale_up_domain,
        "input_tokens_per_s_per_gpu": float(p.input_tokens_per_s_per_device),
        "input_tokens_per_s_per_node": float(p.input_tokens_per_s_per_device) * hw.scale_up_domain,
        "gpus_per_node": hw.scale_up_domain,
        "mfu": float(roofline.mfu(p, hw, wl)),
        "memory_per_gpu_gb": float(p.memory_bytes) / GB,
        "memory_usable_gb": float(p.memory_usable) / GB,
        "layers": {"dense": m.n_dense_layers, "moe": m.n_moe_layers},
        "per_layer_ms": {"dense": _ms(p.dense_layer), "moe": _ms(p.moe_layer)},
        "head_ms": float(p.head) * MS,
        "band_low": low,
        "band_high": high,
        "band_meaning": BAND_MEANING,
    }

    def text() -> str:
        head = (f"{m.name} prefill on {lay['devices']} × {hw.name}, policy roofline, {fw.name} {fw.version}: "
                f"attention TP{lay['tp']} × "
                f"DP{lay['dp']}, MoE TP{lay['moe_tp']} × EP{lay['ep']}, {args.tokens_per_gpu:,} new tokens per GPU, "
                f"prompts of {prompt:,} with {hit:.1%} cache hits, {'two-batch overlap' if layout.tbo else 'no overlap'}")
        rows = [
            ("forward time (ms)", data["time_ms"], low["time_ms"], high["time_ms"]),
            ("forward, no overlap (ms)", data["time_ms_no_overlap"], None, None),
            ("forward, two-batch overlap (ms)", data["time_ms_tbo"], None, None),
            ("computed tokens/s per GPU", data["tokens_per_s_per_gpu"], low["tokens_per_s_per_gpu"],
             high["tokens_per_s_per_gpu"]),
            (f"computed tokens/s per node ({hw.scale_up_domain} GPUs)", data["tokens_per_s_per_node"],
             low["tokens_per_s_per_node"], high["tokens_per_s_per_node"]),
            ("input tokens/s per node, cache hits included", data["input_tokens_per_s_per_node"],
             low["input_tokens_per_s_per_node"], high["input_tokens_per_s_per_node"]),
            ("MFU", f"{data['mfu']:.1%}", None, None),
        ]
        ops = [(k, data["per_layer_ms"]["dense"].get(k), data["per_layer_ms"]["moe"].get(k))
               for k in dict.fromkeys([*data["per_layer_ms"]["dense"], *data["per_layer_ms"]["moe"]])]
        return "\n".join([report.table(["metric", "value", "band low", "band high"], rows, digits=1, title=head), "",
                          report.table(["op", f"dense layer (ms, ×{m.n_dense_layers})", f"MoE layer (ms, ×{m.n_moe_layers})"],
                                       ops, title="per-layer op times, no overlap")])

    return _emit(args, data, text)


# ---------------------------------------------------------------- validate / calibrate


def cmd_validate(args: argparse.Namespace) -> int:
    from . import report, validate

    records = validate.validate()

    def fig(v: float) -> str:
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.4g}"

    def text() -> str:
        rows = [(r["id"], r["metric"], fig(r["published"]), fig(r["computed"]), r["error_pct"],
                 r["tolerance_pct"], "yes" if r["within"] else "no", f"{fig(r['band_low'])} - {fig(r['band_high'])}",
                 "yes" if r["in_band"] else "no") for r in records]
        s = validate.band_summary(records)
        return (report.table(["point", "metric", "published", "computed", "error %", "± %", "within", "band", "in band"],
                             rows, digits=1,
                             title="roofline policy vs published system-level figures (params/measurements/systems.yaml)")
                + f"\n\npublished values inside their band: {s['inside']} of {s['points']} ({s['coverage_pct']:.0f} %); "
                f"median band half-width ±{s['median_halfwidth_pct']:.1f} %")

    return _emit(args, records, text)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from . import calibrate, report

    records = calibrate.evaluate()

    def text() -> str:
        rows = [(r["hardware"], r["id"], r["metric"], r["measured"], r["model"], r["error_pct"], r["pins"] or "")
                for r in records]
        return report.table(["hardware", "point", "metric", "measured", "model", "error %", "pins"], rows, digits=1,
                            title="roofline op functions vs published kernel figures (params/measurements/kernels.yaml)")

    return _emit(args, records, text)


# ---------------------------------------------------------------- search


def cmd_search(args: argparse.Namespace) -> int:
    from . import report, search

    m, hw, wl = _load(args, "model", "hardware", "workload")
    wl = _with_kv_dtype(wl, None, args.expert_dtype)
    tbo = {"both": (False, True), "on": (True,), "off": (False,)}[args.tbo]
    fw = _framework(args)
    if args.policy != "roofline" and args.framework is not None:
        raise InputError(f"--framework applies to the roofline policy only, not --policy {args.policy}")
    result = search.search(
        m, hw, wl, args.devices, search.parse_batches(args.batch), policy=args.policy,
        min_tokens_per_user=args.min_tokens_per_user, max_memory_gb=args.max_memory_gb, tp=args.tp,
        moe_tp=args.moe_tp, tbo=tbo, batch_per=args.batch_per, kv_len=args.kv_len, framework=fw,
        redundant_experts=args.redundant_experts or 0, mtp_accept=args.mtp_accept or 1.0,
    )
    data = {"hardware": hw.name, "model": m.name, "workload": wl.name, **result.summary(args.top)}
    listed = data["top"] + [e["best"] for e in data.get("by_devices", []) if e["best"]]
    search.add_bands(listed, m, hw, wl, data["kv_len"], args.policy, fw, args.redundant_experts or 0,
                     args.mtp_accept or 1.0)
    if args.policy == "roofline":
        data["band_meaning"] = BAND_MEANING
    if args.csv:
        data["csv"] = {"path": args.csv, "rows": result.write_csv(args.csv)}
    if args.emit:
        from .cli_launch import emit_for

        data["launch"] = emit_for(args.emit, m, hw, data["best"])

    def text() -> str:
        slo = data["min_tokens_per_user"]
        head = (f"{m.name} decode on {', '.join(str(d) for d in data['devices'])} × {hw.name}, policy {args.policy}"
                + (f" ({data['framework']})" if data.get("framework") else "") + ", "
                f"KV length {data['kv_len']:,}, SLO {'none' if slo is None else f'{slo:g} tokens/s per user'}, "
                f"memory ≤ {data['max_memory_gb']:.1f} GB per device")
        counts = [("evaluated", data["evaluated"]), ("feasible", data["feasible"])]
        counts += [(f"rejected: {k}", v) for k, v in data["rejected"].items()]
        cols = ["devices", "tp", "dp", "moe_tp", "ep", "batch", "batch_per_device", "tbo", "tokens_per_s_per_user",
                "tokens_per_s_per_device", "total_tokens_per_s", "tpot_ms", "memory_gb", "mfu"]
        out = [head, f"batch = {data['batch_meaning']}", "", report.table(["layouts", "count"], counts)]
        if data["top"]:
            band = ["band low", "band high"] if "band_low" in data["top"][0] else []
            rows = [[r[c] for c in cols] + ([r["band_low"]["tokens_per_s_per_device"],
                                             r["band_high"]["tokens_per_s_per_device"]] if band else [])
                    for r in data["top"]]
            out += ["", report.table(cols + band, rows, digits=2,
                                     title=f"top {len(data['top'])} by tokens/s per device"
                                           + (" (band: of tokens/s per device)" if band else ""))]
        else:
            out += ["", "no layout meets the constraints"]
        if "by_devices" in data:
            rows = [[e["devices"], *([e["best"][c] for c in cols[1:]] if e["best"] else [None] * (len(cols) - 1))]
                    for e in data["by_devices"]]
            out += ["", report.table(cols, rows, digits=2, title="best per device count")]
            out += [f"{e['devices']} devices: no feasible layout, {e['why_none']}" for e in data["by_devices"]
                    if e["why_none"]]
        if args.csv:
            out += ["", f"wrote {data['csv']['rows']:,} layouts to {args.csv}"]
        if args.emit:
            out += ["", f"{args.emit} launch command(s) for the best layout (one per node):", *data["launch"]["commands"]]
        return "\n".join(out)

    return _emit(args, data, text)


# ---------------------------------------------------------------- reproduce


def cmd_reproduce(args: argparse.Namespace) -> int:
    from . import report
    from .reproduce import SEEDS

    if args.errata:
        if args.seed != "seed-003":
            raise InputError(f"--errata: {args.seed} has no errata page; its errata are the records noted 'erratum:'")
        if args.json:
            raise InputError("--errata prints a markdown page; it cannot be combined with --json")
        from .reproduce import seed003_errata  # the one seed with an errata page so far

        _print(seed003_errata.render_markdown(), end="")
        return 0
    records = SEEDS[args.seed]()
    matched = sum(r["match"] for r in records)
    errata = sum(r["note"].startswith("erratum:") for r in records)
    truncated = sum(r["note"].startswith("truncated:") for r in records)

    def text() -> str:
        rows = [(r["table"], r["row"], r["column"], r["published"], r["computed"], r["unit"],
                 "yes" if r["match"] else "NO") for r in records]
        return report.table(["table", "row", "column", "published", "computed", "unit", "match"], rows, digits=4,
                            title=f"seed {args.seed}: {len(records)} printed figures, {matched} match, {errata} errata, "
                                  f"{truncated} printed truncated")

    # a seed's own figures may be signed changes (seed 002: "vs EP128 −32 %")
    return _emit(args, records, text, signed=("published", "value", "computed"))


# ---------------------------------------------------------------- book


def cmd_book(args: argparse.Namespace) -> int:
    from . import book

    book.build(force=args.force, workers=args.jobs, html=not args.no_html, strict=not args.allow_warnings,
               only=args.only or ())
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="moecalc", description="How fast DeepSeek-V3/R1-class MoE models run in inference: "
                     "counts, timing policies, deployment search, seed reproductions and the book.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    def command(name: str, run: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(run=run)
        p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
        return p

    def profiles(p: argparse.ArgumentParser, hardware: bool = True, workload: bool = True) -> None:
        p.add_argument("--model", default="deepseek-v3", help="model profile name or YAML path")
        if hardware:
            p.add_argument("--hardware", required=True, help="hardware profile name (params/hardware/) or YAML path")
        if workload:
            p.add_argument("--workload", default="seed-003", help="workload profile name or YAML path")
        p.add_argument("--policy", default="roofline", choices=["roofline", "seed003"],
                       help="timing policy (default roofline; seed003 reproduces seed 003)")

    def expert_dtype(p: argparse.ArgumentParser) -> None:
        p.add_argument("--expert-dtype", choices=EXPERT_DTYPES,
                       help="routed experts' weight dtype, e.g. nvfp4 with fp8 attention (roofline; default: the "
                            "workload's expert_weight_dtype, else its weight_dtype)")

    def roofline_options(p: argparse.ArgumentParser) -> None:
        """The layout and deployment options prefill and decode share under the roofline policy."""
        p.add_argument("--dp", type=positive_int, help="attention data-parallel size (roofline; default: devices / tp)")
        p.add_argument("--moe-tp", type=positive_int, help="MoE tensor-parallel size (roofline; default 1)")
        p.add_argument("--tbo", action="store_true", default=None, help="two-batch overlap (roofline)")
        p.add_argument("--dtype", choices=["fp8", "bf16"], help="KV-cache dtype (roofline; default: the workload's)")
        expert_dtype(p)
        p.add_argument("--expert-imbalance", type=_at_least_one,
                       help="max/mean routed-expert load per EP rank (roofline; default 1 = perfect balance)")
        p.add_argument("--redundant-experts", type=_non_negative_int,
                       help="extra expert copies for load balancing, (E + r) / ep per EP rank (roofline; default 0)")
        framework_option(p)

    def framework_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--framework", metavar="{sglang,trtllm,vllm} or PATH",
                       help="serving framework profile (params/framework/) or YAML path: memory rule, CUDA graphs, "
                            "host time per step, MoE all-to-all (roofline; default sglang)")

    p = command("flops", cmd_flops, "parameters, FLOPs per token and KV bytes per token of a model")
    p.add_argument("--model", default="deepseek-v3", help="model profile name or YAML path")
    p.add_argument("--kv-len", type=positive_int, default=1, help="KV length for MLA FLOPs per token (default 1)")

    p = command("prefill", cmd_prefill, "prefill time and tokens/s per node")
    profiles(p)
    p.add_argument("--tp", type=positive_int, required=True, help="attention tensor-parallel size")
    p.add_argument("--seq-len", type=positive_int, help="prompt tokens per sequence (default: the workload's)")
    p.add_argument("--ep", type=positive_int, help="expert-parallel size (roofline; default: devices / moe-tp)")
    p.add_argument("--tokens-per-gpu", type=positive_int, help="new prompt tokens per GPU per forward (roofline)")
    p.add_argument("--kv-cache-hit-rate", type=_hit_rate, help="prefix-cache hit rate (roofline; default: the workload's)")
    roofline_options(p)

    p = command("decode", cmd_decode, "time per output token, tokens/s and memory of one decode step")
    profiles(p)
    p.add_argument("--tp", type=positive_int, required=True, help="attention tensor-parallel size")
    p.add_argument("--batch", type=positive_int, required=True,
                   help="sequences per attention-DP rank (TP GPUs; = per GPU at TP1), under every policy")
    p.add_argument("--kv-len", type=positive_int, required=True, help="KV-cache tokens per sequence")
    p.add_argument("--ep", type=positive_int,
                   help="expert-parallel size (roofline: default devices / moe-tp; seed003: memory only)")
    p.add_argument("--mtp-accept", type=_at_least_one,
                   help="MTP: accepted tokens per step, 1 to 2 (roofline; default 1 = no MTP)")
    roofline_options(p)

    p = command("search", cmd_search, "every deployment layout on N devices, filtered by memory and SLO, ranked")
    p.add_argument("--hardware", required=True, help="hardware profile name (params/hardware/) or YAML path")
    p.add_argument("--model", default="deepseek-v3", help="model profile name or YAML path")
    p.add_argument("--workload", default="seed-003", help="workload profile name or YAML path (SLO, memory cap, KV length)")
    p.add_argument("--devices", type=positive_int_list, required=True, help="device counts, e.g. 128 or 16,32,64")
    p.add_argument("--min-tokens-per-user", type=positive_float, help="SLO, tokens/s per user (default: the workload's)")
    p.add_argument("--max-memory-gb", type=positive_float, help="memory cap per device, GB (default: the workload's)")
    p.add_argument("--top", type=positive_int, default=10, help="layouts to list (default 10)")
    p.add_argument("--policy", default="roofline", choices=["roofline", "seed002"], help="timing policy")
    p.add_argument("--csv", metavar="PATH", type=_file_name, help="write every evaluated layout and its reason to PATH")
    p.add_argument("--batch", default="1-512",
                   help="sequences per attention-DP rank (TP devices; = per device at TP1): a range 1-512 or a list "
                        "6,8,10 (default 1-512)")
    p.add_argument("--batch-per", default="rank", choices=["rank", "device"],
                   help="--batch counts sequences per attention-DP rank (default, under every policy) or per "
                        "device (seed 002's 'Batch')")
    p.add_argument("--mtp-accept", type=_at_least_one,
                   help="MTP: accepted tokens per step, 1 to 2 (default 1 = no MTP)")
    p.add_argument("--redundant-experts", type=_non_negative_int,
                   help="extra expert copies for load balancing; EP must divide E + r (roofline; default 0)")
    p.add_argument("--tp", type=positive_int_list, help="only these attention TP sizes")
    p.add_argument("--moe-tp", type=positive_int_list, help="only these MoE TP sizes")
    p.add_argument("--tbo", default="both", choices=["both", "on", "off"], help="two-batch overlap (default: both)")
    p.add_argument("--kv-len", type=positive_int, help="KV length per sequence (default: the workload's average)")
    expert_dtype(p)
    framework_option(p)

    p.add_argument("--emit", choices=["sglang", "vllm"], help="also print the launch command(s) for the best layout")
    from . import cli_launch  # launch commands in and out (moecalc/cli_launch.py)

    cli_launch.register(sub, command)

    command("validate", cmd_validate, "the roofline policy against every published system-level figure")
    command("calibrate", cmd_calibrate, "the roofline op functions against every published kernel figure")

    from . import cli_serve  # serve and plan: parsing and tables in their own module

    cli_serve.register(sub, command)

    p = command("reproduce", cmd_reproduce, "every figure a seed prints, recomputed")
    p.add_argument("seed", choices=["seed-000", "seed-001", "seed-002", "seed-003", "seed-004"], help="which seed document")
    p.add_argument("--errata", action="store_true", help="print the seed's errata page (MyST markdown) instead")

    p = sub.add_parser("book", help="execute the book's notebooks (what changed) and build its HTML",
                       description="execute the book's notebooks (what changed) and build its HTML")
    p.set_defaults(run=cmd_book)
    p.add_argument("--force", action="store_true", help="re-execute every notebook, even if its inputs are unchanged")
    p.add_argument("--jobs", type=positive_int, help="notebooks executed at once (default: 2, or 1 on one core)")
    p.add_argument("--no-html", action="store_true", help="execute only; skip the HTML build")
    p.add_argument("--only", action="append", metavar="PROFILE/CHAPTER",
                   help="execute only the pages matching this shell pattern (h800/decode, */prefill, common/*); "
                        "repeatable; the others are left as they are")
    p.add_argument("--allow-warnings", action="store_true", help="do not fail the HTML build on Sphinx warnings")
    return parser


class _StdoutError(Exception):
    """stdout could not take the output (a closed pipe, a full disk, a closed descriptor)."""


def _print(text: str, end: str = "\n") -> None:
    """Every command's output goes through here, so a failing stdout is one error."""
    if sys.stdout is None:  # started with stdout closed (`moecalc ... >&-`)
        raise _StdoutError("stdout is closed")
    try:
        sys.stdout.write(text + end)
    except OSError as exc:
        raise _StdoutError(exc.strerror or str(exc)) from None


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null, so that the interpreter's last flush of what is left in
    stdout's buffer cannot fail a second time (and print a traceback)."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    except OSError:
        pass


def _error(message: str) -> None:
    print(f"moecalc: error: {checks.escape(message)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    import warnings

    # numpy's overflow and division warnings: every result is checked for finiteness where
    # it is emitted (_emit), which names the field; the warning would only add noise
    warnings.filterwarnings("ignore", category=RuntimeWarning,
                            message=r"(overflow|invalid value|divide by zero|underflow) encountered")
    try:
        if sys.stdout is None:
            raise _StdoutError("stdout is closed")
        args = build_parser().parse_args(argv)
        status = args.run(args)
        try:
            sys.stdout.flush()
        except OSError as exc:
            raise _StdoutError(exc.strerror or str(exc)) from None
        return status
    except InputError as exc:
        _error(str(exc))
        return 2
    except KeyboardInterrupt:
        return 130
    except _StdoutError as exc:
        _silence_stdout()
        _error(f"cannot write the output to stdout: {exc}")
        return 1
    except MemoryError:
        _error("out of memory (this machine has 24 GiB); ask for a smaller computation")
        return 1
    except OSError as exc:  # a file or stream error no command turned into an InputError
        _silence_stdout()
        where = f"{exc.filename}: " if exc.filename else ""
        _error(f"{where}{exc.strerror or exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
