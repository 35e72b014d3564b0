"""``moecalc launch parse`` and ``search --emit``: the command line around moecalc.launch.

``launch parse --framework sglang [--version 0.5.5] [--hardware h200] [--model ...] [--file cmd.sh] -- <command>``
prints the layout the command sets up, the per-rank limits the framework derives (rule,
version), the memory check under its memory fraction and the roofline's decode or prefill
estimate for that layout.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from .errors import InputError

MS = 1e3
GB = 1e9


def framework_for(L):
    """The framework profile (params/framework/<name>.yaml) with the command's own memory
    fraction and largest CUDA-graph batch: what the roofline's memory and graph rules use."""
    from .frameworks import load_framework

    fw = load_framework(L.framework)
    graph = max(L.graph_bs) if L.graph_bs else fw.graph_max_batch
    return replace(fw, memory_fraction=L.mem_fraction, graph_max_batch=graph, graph_max_batch_tp4=graph)


def memory(L, m, hw, wl) -> dict[str, Any]:
    """Weights, KV pool and the tokens it holds per attention-DP rank under the command's
    memory fraction (every TP rank of a group holds the whole group's cache)."""
    from . import counts
    from .policies import roofline

    mtp = L.spec_draft_tokens > 0
    redundant = L.flags.get("--ep-num-redundant-experts", 0) or 0
    weights = float(roofline.weight_bytes_per_device(m, wl, L.layout.roofline(), redundant, mtp))
    usable = float(framework_for(L).usable_memory(hw.memory_device_bytes, weights))
    layers = m.num_hidden_layers + (m.num_nextn_predict_layers if mtp else 0)
    per_token = counts.kv_format_bytes_per_token(m, L.kv_dtype, layers=layers)
    pool = usable - weights
    tokens = max(pool, 0.0) / per_token
    out = {"usable_gb": usable / GB, "weights_gb": weights / GB, "kv_pool_gb": pool / GB,
           "kv_bytes_per_token": per_token, "kv_format": L.kv_dtype, "tokens_per_rank": int(tokens),
           "fits": pool > 0}
    if L.running_per_rank:
        out["context_per_request_at_limit"] = int(tokens // L.running_per_rank)
    return out


def estimate(L, m, hw, wl, kv_len: int, mtp_accept: float, prompt_len: int | None) -> dict[str, Any]:
    """The roofline's decode step (decode or mixed roles) or prefill forward for the layout."""
    import numpy as np

    from .policies import roofline

    kv_dtype = "bf16" if L.kv_dtype == "bf16" else "fp8"
    wl = replace(wl, kv_dtype=kv_dtype)
    redundant = L.flags.get("--ep-num-redundant-experts", 0) or 0
    out: dict[str, Any] = {}
    if L.role in ("decode", "mixed"):
        mem = memory(L, m, hw, wl)
        cap = mem["tokens_per_rank"] // kv_len
        batch = min(L.running_per_rank or (max(L.graph_bs) if L.graph_bs else 1), cap)
        if batch < 1:
            raise InputError(f"no request of {kv_len:,} tokens fits in the KV pool of {mem['kv_pool_gb']:.1f} GB")
        accept = mtp_accept if L.spec_draft_tokens else 1.0
        step = roofline.decode(m, hw, wl, L.layout.roofline(batch=batch), kv_len, accept, max(L.spec_draft_tokens, 1),
                               redundant_experts=redundant, framework=framework_for(L))
        t = float(np.minimum(step.step_time_no_overlap, step.step_time_tbo))
        out["decode"] = {"batch_per_rank": int(batch), "kv_len": kv_len, "accepted_tokens_per_step": accept,
                         "step_ms": t * MS, "tpot_ms": t / accept * MS, "tokens_per_s_per_user": accept / t,
                         "tokens_per_s_per_device": batch * accept / t / L.layout.attention_tp,
                         "tokens_per_s_total": batch * accept / t * L.layout.attention_dp}
    if L.role in ("prefill", "mixed"):
        chunk = L.chunk_per_rank or 8192
        p = roofline.prefill(m, hw, wl, L.layout.roofline(), chunk / L.layout.attention_tp,
                             prompt_len=prompt_len or wl.prompt_len, redundant_experts=redundant,
                             framework=framework_for(L))
        t = float(np.minimum(p.time_no_overlap, p.time_tbo))
        out["prefill"] = {"tokens_per_rank": chunk, "prompt_len": prompt_len or wl.prompt_len, "forward_ms": t * MS,
                          "tokens_per_s_per_device": chunk / L.layout.attention_tp / t,
                          "tokens_per_s_total": chunk * L.layout.attention_dp / t}
    return out


def cmd_launch_parse(args: argparse.Namespace) -> int:
    from . import launch, profiles, report

    text = None
    if args.file:
        try:
            with open(args.file, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise InputError(f"--file: cannot read {args.file}: {exc.strerror or exc}") from None
    command = [a for a in args.command if a != "--"]
    if text is None and not command:
        raise InputError("give the launch command after --, or --file PATH")
    source = text if text is not None else command
    # the model: --model, else the profile the command's model path names
    tokens = launch.tokenize(text)[0] if text is not None else command
    path = next((tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t in ("--model-path", "--model")), None)
    if args.framework == "vllm" and path is None:
        path = launch._drop_program("vllm", list(tokens))[1]
    name = args.model or launch.model_for(path)
    if name is None:
        raise InputError(f"cannot tell the model from {path!r}: give --model (known: {', '.join(profiles.available('model'))})")
    m = profiles.load_model(name)
    hw = profiles.load_hardware(args.hardware) if args.hardware else None
    L = launch.parse(args.framework, source, m, hw, args.version)
    data: dict[str, Any] = {"model": m.name, **L.as_dict(), "layout_text": L.layout.describe()}
    if hw is not None:
        wl = profiles.load_workload(args.workload)
        data["hardware"] = hw.name
        data["memory"] = memory(L, m, hw, wl)
        if data["memory"]["fits"]:
            data["estimate"] = estimate(L, m, hw, wl, args.kv_len or wl.avg_kv_len, args.mtp_accept, args.prompt_len)

    def text_out() -> str:
        out = [f"{L.framework} {L.version}, {m.name}, {L.role} server: {L.layout.describe()}", ""]
        rows = [(x.name, x.value if not isinstance(x.value, list) else " ".join(map(str, x.value)),
                 "" if x.ok is None else ("ok" if x.ok else "NO"), x.rule) for x in L.limits]
        out.append(report.table(["limit", "value", "check", "rule"], rows, title="per-rank limits"))
        for n in L.notes:
            out.append(f"note: {n}")
        if "memory" in data:
            mm = data["memory"]
            out += ["", f"memory on {hw.name}: usable {mm['usable_gb']:.1f} GB (fraction {L.mem_fraction}), weights "
                        f"{mm['weights_gb']:.1f} GB, KV pool {mm['kv_pool_gb']:.1f} GB = {mm['tokens_per_rank']:,} tokens "
                        f"per rank at {mm['kv_bytes_per_token']:,.0f} B/token ({mm['kv_format']})"
                    + (f"; {mm['context_per_request_at_limit']:,} tokens per request at the running limit"
                       if "context_per_request_at_limit" in mm else "")]
        for phase, e in data.get("estimate", {}).items():
            out.append(f"{phase} (roofline): " + ", ".join(f"{k} {report.fmt(v, 2)}" for k, v in e.items()))
        return "\n".join(out)

    print(report.dumps(data) if args.json else text_out())
    return 0


def emit_for(framework: str, m, hw, best: dict[str, Any] | None, role: str = "decode") -> dict[str, Any]:
    """The launch command(s) for a search's or a plan's best layout (`role`: decode, prefill, or
    mixed for an aggregated pool), and the layout their parse gives back."""
    from . import launch

    if best is None:
        raise InputError("--emit: no layout meets the constraints, so there is no command to print")
    lay = launch.layout_for(framework, int(best["tp"]), int(best["dp"]), int(best.get("moe_tp", 1)), int(best["ep"]),
                            hw.scale_up_domain)
    batch = best.get("batch")  # sequences per attention-DP rank; a prefill pool has none
    chunk = best.get("chunk")  # an aggregated pool's prompt tokens per rank per step
    commands = launch.emit(framework, lay, m.key, role, None if batch is None else int(batch),
                           chunk_per_rank=None if chunk is None else int(chunk))
    parsed = launch.parse(framework, commands[0], m, hw)
    back = parsed.layout
    return {"framework": framework, "role": role, "commands": commands, "layout": lay.as_dict(),
            "parsed_back": back.as_dict(), "round_trip": back == lay and (chunk is None or parsed.chunk_per_rank == chunk)}


def emit_plan(framework: str, m, hw, data: dict[str, Any]) -> dict[str, Any]:
    """Launch commands for a plan's best disaggregated plan (one prefill and one decode
    instance; the plan says how many of each) and its best aggregated plan, where they exist."""
    out: dict[str, Any] = {}
    dis, agg = data["disagg"]["best"], data["agg"]["best"]
    if dis:
        out["disagg"] = {"prefill": {"instances": dis["prefill"]["instances"],
                                     **emit_for(framework, m, hw, dis["prefill"], "prefill")},
                         "decode": {"instances": dis["decode"]["instances"],
                                    **emit_for(framework, m, hw, dis["decode"], "decode")}}
    if agg:
        out["agg"] = {"instances": agg["layout"]["instances"], **emit_for(framework, m, hw, agg["layout"], "mixed")}
    if not out:
        raise InputError("--emit: no plan meets the SLOs, so there is no command to print")
    return out


def register(sub, command) -> None:
    """Add ``launch`` (with its ``parse`` subcommand) to the CLI's subparsers."""
    from . import launch
    from .cli import _at_least_one, positive_int  # the strict parsers every option uses

    p = sub.add_parser("launch", help="read a serving framework's launch command: layout, limits, memory, estimate",
                       description="read a serving framework's launch command")
    lsub = p.add_subparsers(dest="launch_command", required=True, parser_class=type(p), metavar="ACTION")
    q = lsub.add_parser("parse", help="a launch command → layout, per-rank limits, memory check and estimate",
                        description="a launch command (after --) → layout, per-rank limits, memory and estimate")
    q.set_defaults(run=cmd_launch_parse)
    q.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    q.add_argument("--framework", required=True, choices=launch.FRAMEWORKS)
    q.add_argument("--version", help="the framework release whose flags and rules apply (" + "; ".join(
        f"{fw}: {', '.join(launch.versions(fw))}, default {launch.default_version(fw)}" for fw in launch.FRAMEWORKS)
        + "; the default is the framework profile's version if its flag table is present, else the newest)")
    q.add_argument("--model", help="model profile (default: the one the command's model path names)")
    q.add_argument("--hardware", help="hardware profile: adds the memory check and the estimate")
    q.add_argument("--workload", default="seed-003", help="workload profile for KV length and prompt length")
    q.add_argument("--kv-len", type=positive_int, help="decode KV length (default: the workload's average)")
    q.add_argument("--prompt-len", type=positive_int, help="prefill prompt length (default: the workload's)")
    q.add_argument("--mtp-accept", type=_at_least_one, default=1.0,
                   help="accepted tokens per step with speculative decoding (default 1: no gain assumed)")
    q.add_argument("--file", help="read the command from this file (shell text: continuations, exports)")
    q.add_argument("command", nargs=argparse.REMAINDER, help="the launch command, after --")
