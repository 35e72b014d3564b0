"""The ``serve`` and ``plan`` commands: argument parsing and tables (registered from cli.py)."""

from __future__ import annotations

import argparse
from typing import Any

from . import checks
from .errors import InputError

SPEC_FIELDS = {"tp", "dp", "ep", "moe_tp", "instances", "batch", "tokens", "tbo", "mtp"}


def parse_spec(text: str, what: str) -> dict[str, Any]:
    """'tp=1,dp=32,ep=32,instances=4' → a dict; one error naming the field that does not parse."""
    out: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in SPEC_FIELDS:
            raise InputError(f"--{what}: field {key or part!r} is not one of {', '.join(sorted(SPEC_FIELDS))} "
                             f"(expected e.g. tp=1,dp=32,ep=32,instances=4)")
        if key == "mtp":
            v = checks.parse_number(value.strip(), f"--{what}: field 'mtp'")
            if not 1.0 <= v <= 2.0:
                raise InputError(f"--{what}: field 'mtp' must be accepted tokens per step (1 to 2), got {value!r}")
            out[key] = v
            continue
        if key == "tbo" and value.strip().lower() in ("on", "off", "true", "false", "0", "1"):
            out[key] = value.strip().lower() in ("on", "true", "1")
            continue
        v = checks.parse_count(value.strip(), f"--{what}: field {key!r}")  # ASCII digits, as every option
        if v > 2**31:
            raise InputError(f"--{what}: field {key!r} must be at most {2**31:,}, got {value!r}")
        out[key] = v
    return out


def _framework(args):
    from .frameworks import load_framework  # lazy: keeps the CLI's start fast

    return load_framework(args.framework)


def _workload(args):
    from . import profiles

    m = profiles.load_model(args.model)
    hw = profiles.load_hardware(args.hardware)
    wl = profiles.load_workload(args.workload)
    return m, hw, wl


def cmd_serve(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from . import serving
    from .cli import _emit

    m, hw, wl = _workload(args)
    if args.kv_dtype:
        wl = replace(wl, kv_dtype=args.kv_dtype)
    fw = _framework(args)
    isl = args.isl or wl.prompt_len
    osl = args.osl or wl.output_len
    hit = wl.kv_cache_hit_rate if args.cache_hit is None else args.cache_hit
    if args.mode == "disagg":
        if not args.prefill or not args.decode:
            raise InputError("--mode disagg needs --prefill and --decode specs (e.g. tp=1,dp=32,ep=32,instances=1)")
        if args.arrival_rate is not None and args.concurrency is not None:
            raise InputError("give --arrival-rate or --concurrency, not both")
        p, d = parse_spec(args.prefill, "prefill"), parse_spec(args.decode, "decode")
        if "batch" not in d:
            raise InputError("--decode: field 'batch' is missing (sequences per attention-DP rank)")
        data = serving.serve_disagg(m, hw, wl, p, d, isl=isl, osl=osl, hit=hit, rate=args.arrival_rate,
                                    concurrency=args.concurrency, gpus=args.gpus, mtp_accept=d.get("mtp", 1.0), fw=fw)
    else:
        if args.prefill or args.decode or args.arrival_rate is not None:
            raise InputError("--prefill, --decode and --arrival-rate are for --mode disagg; aggregated takes "
                             "--tp/--dp/--ep/--moe-tp/--instances and --concurrency")
        spec = {"tp": args.tp, "dp": args.dp or 1, "moe_tp": args.moe_tp or 1, "instances": args.instances,
                "tbo": bool(args.tbo)}
        spec["ep"] = args.ep or spec["tp"] * spec["dp"] // spec["moe_tp"]
        data = serving.serve_agg(m, hw, wl, spec, isl=isl, osl=osl, hit=hit, concurrency=args.concurrency,
                                 chunk=args.chunk, gpus=args.gpus, mtp_accept=args.mtp_accept or 1.0, fw=fw)
    data = {"hardware": hw.name, "model": m.name, "framework": f"{fw.name} {fw.version}", **data}

    def text() -> str:
        from . import report

        rows = [(k, v) for k, v in data.items() if not isinstance(v, dict)]
        for part in ("prefill", "decode", "layout"):
            if part in data:
                rows.append((part, ", ".join(f"{k}={v}" for k, v in data[part].items())))
        return report.table(["metric", "value"], [(k, "n/a" if v is None else v) for k, v in rows], digits=3,
                            title=f"{m.name} served on {hw.name}, {args.mode}")

    return _emit(args, data, text)


def cmd_plan(args: argparse.Namespace) -> int:
    from . import plan
    from .cli import _emit

    m, hw, wl = _workload(args)
    fw = _framework(args)
    data = plan.plan(m, hw, wl, args.gpus, isl=args.isl, osl=args.osl, hit=args.cache_hit, ttft_ms=args.ttft_ms,
                     tpot_ms=args.tpot_ms, fw=fw, top=args.top)
    if args.emit:
        from .cli_launch import emit_plan

        data["launch"] = emit_plan(args.emit, m, hw, data)

    def text() -> str:
        from . import report

        def slo(v):
            return "none" if v is None else f"{v:,.0f} ms"

        out = [f"{m.name} on {args.gpus} × {hw.name}, ISL {data['isl']:,} / OSL {data['osl']:,}, TTFT SLO "
               f"{slo(data['ttft_slo_ms'])}, TPOT SLO {slo(data['tpot_slo_ms'])}; {data['plans']:,} plans; queue "
               f"{data['queue_model']}"]
        for mode in ("disagg", "agg"):
            s = data[mode]
            rows = [("plans", s["plans"]), ("feasible", s["feasible"])] + [(f"rejected: {k}", v)
                                                                         for k, v in s["rejected"].items()]
            out += ["", report.table([mode, "count"], rows)]
            b = s["best"]
            if b:
                shown = [(k, "n/a" if v is None else (", ".join(f"{a}={c}" for a, c in v.items()) if isinstance(v, dict)
                                                      else v)) for k, v in b.items()]
                out += ["", report.table(["best " + mode, "value"], shown, digits=3)]
        launch = data.get("launch", {})
        for pool, e in [(f"disagg {r}", launch["disagg"][r]) for r in ("prefill", "decode") if "disagg" in launch] + (
                [("agg", launch["agg"])] if "agg" in launch else []):
            out += ["", f"{args.emit} launch command(s) for one {pool} instance of the best plan "
                        f"(it runs {e['instances']}; one command per node):", *e["commands"]]
        return "\n".join(out)

    return _emit(args, data, text)


def register(sub, command) -> None:
    """Add ``serve`` and ``plan`` to the CLI; `command(name, run, help)` makes a subparser."""
    from .cli import positive_float, positive_int

    def common(p):
        p.add_argument("--hardware", required=True, help="hardware profile name or YAML path")
        p.add_argument("--model", default="deepseek-v3", help="model profile name or YAML path")
        p.add_argument("--workload", default="seed-004", help="workload profile (ISL, OSL, cache hits, SLOs, dtypes)")
        p.add_argument("--framework", default="sglang",
                       help="serving framework profile (params/framework/<name>.yaml: sglang, trtllm, vllm, "
                            "or a YAML path): memory rule, graphs, chunk size, KV hand-off; default sglang")
        p.add_argument("--isl", type=positive_int, help="prompt tokens per request (default: the workload's)")
        p.add_argument("--osl", type=positive_int, help="output tokens per request (default: the workload's)")
        p.add_argument("--cache-hit", type=_hit, help="prefix-cache hit rate (default: the workload's)")

    p = command("serve", cmd_serve, "one serving point, aggregated or prefill/decode-disaggregated: TTFT, TPOT, "
                "throughput, KV transfer, cost")
    common(p)
    p.add_argument("--mode", required=True, choices=["agg", "disagg"])
    p.add_argument("--prefill", help="disagg: prefill spec tp=,dp=,ep=,moe_tp=,instances=,tokens= (per GPU per forward),tbo=")
    p.add_argument("--decode", help="disagg: decode spec tp=,dp=,ep=,moe_tp=,instances=,batch= (per rank),tbo=,mtp=")
    p.add_argument("--arrival-rate", type=positive_float, help="requests per second (disagg)")
    p.add_argument("--concurrency", type=positive_float, help="requests in flight (both modes)")
    p.add_argument("--gpus", type=positive_int, help="GPUs available: the instances must fit")
    p.add_argument("--tp", type=positive_int, default=1, help="agg: attention TP")
    p.add_argument("--dp", type=positive_int, help="agg: attention DP")
    p.add_argument("--ep", type=positive_int, help="agg: EP (default tp × dp / moe-tp)")
    p.add_argument("--moe-tp", type=positive_int, help="agg: MoE TP")
    p.add_argument("--instances", type=positive_int, default=1, help="agg: instances")
    p.add_argument("--tbo", action="store_true", help="agg: two-batch overlap")
    p.add_argument("--chunk", type=positive_int, help="agg: prompt tokens per attention-DP rank per step "
                   "(default: the framework's chunked-prefill size)")
    p.add_argument("--mtp-accept", type=_mtp, help="agg: MTP accepted tokens per step (1-2)")
    p.add_argument("--kv-dtype", choices=["bf16", "fp8"], help="KV-cache dtype (default: the workload's)")

    p = command("plan", cmd_plan, "every aggregated and disaggregated plan on N GPUs for a workload, by goodput")
    common(p)
    p.add_argument("--gpus", type=positive_int, required=True, help="GPUs in the cluster")
    p.add_argument("--ttft-ms", type=positive_float, help="TTFT SLO in ms (default: the workload's)")
    p.add_argument("--tpot-ms", type=positive_float, help="TPOT SLO in ms (default: 1000 / the workload's tokens/s per user)")
    p.add_argument("--top", type=positive_int, default=10, help="plans listed per mode (default 10)")
    p.add_argument("--emit", choices=["sglang", "vllm"],
                   help="also print the launch commands of the best plan's pools (prefill, decode; aggregated)")


def _hit(text: str) -> float:
    from .cli import _hit_rate

    return _hit_rate(text)


def _mtp(text: str) -> float:
    from .cli import positive_float

    v = positive_float(text)
    if not 1.0 <= v <= 2.0:
        raise argparse.ArgumentTypeError(f"must be between 1 and 2, got {text!r}")
    return v
