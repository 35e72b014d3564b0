"""The ``moecalc`` command line. Every command prints a readable table, or with ``--json``
one JSON document on stdout. Every bad input becomes one line on stderr and exit status 2.

Heavy modules are imported inside the commands that need them, so a call stays fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, NoReturn

from .errors import InputError

MS = 1e3  # seconds → milliseconds, for printing
GB = 1e9


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage block
        raise InputError(message)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def positive_int_list(text: str) -> list[int]:
    return [positive_int(part) for part in text.split(",")]


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _emit(args: argparse.Namespace, data: dict[str, Any], text: Callable[[], str]) -> int:
    from . import report

    print(report.dumps(data) if args.json else text())
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
                title="KV cache: (kv_lora_rank + qk_rope_head_dim) per layer, no scales",
            ),
        ]
        return "\n".join(out)

    return _emit(args, data, text)


# ---------------------------------------------------------------- prefill / decode


def cmd_prefill(args: argparse.Namespace) -> int:
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
    from . import report
    from .policies import seed003

    m, hw, wl = _load(args, "model", "hardware", "workload")
    d = seed003.decode(m, hw, args.batch, args.kv_len, args.tp, output_len=wl.output_len, ep=args.ep)
    needed, available = float(d.memory_needed), d.memory_available
    if needed > available:
        raise InputError(
            f"batch {args.batch} does not fit on {hw.name} at TP{args.tp}: it needs {needed / GB:.1f} GB per GPU "
            f"(weights + KV cache), {available / GB:.1f} GB are usable, over by {(needed - available) / GB:.1f} GB"
        )
    data = {
        "policy": "seed003",
        "hardware": hw.name,
        "model": m.name,
        "tp": args.tp,
        "batch": args.batch,
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
        head = (f"{m.name} decode on {hw.name}, policy seed003: TP{args.tp}, batch {args.batch} per GPU, "
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


# ---------------------------------------------------------------- reproduce


def cmd_reproduce(args: argparse.Namespace) -> int:
    from . import report
    from .reproduce import SEEDS

    records = SEEDS[args.seed]()
    matched = sum(r["match"] for r in records)
    errata = sum(r["note"].startswith("erratum:") for r in records)
    if args.json:
        print(report.dumps(records))
        return 0
    rows = [(r["table"], r["row"], r["column"], r["published"], r["computed"], r["unit"], "yes" if r["match"] else "NO")
            for r in records]
    print(report.table(["table", "row", "column", "published", "computed", "unit", "match"], rows, digits=4,
                       title=f"seed {args.seed}: {len(records)} printed figures, {matched} match, {errata} errata"))
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="moecalc", description=__doc__.splitlines()[0])
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
        p.add_argument("--policy", default="seed003", choices=["seed003"], help="timing policy")

    p = command("flops", cmd_flops, "parameters, FLOPs per token and KV bytes per token of a model")
    p.add_argument("--model", default="deepseek-v3", help="model profile name or YAML path")
    p.add_argument("--kv-len", type=positive_int, default=1, help="KV length for MLA FLOPs per token (default 1)")

    p = command("prefill", cmd_prefill, "prefill time and tokens/s per node")
    profiles(p)
    p.add_argument("--tp", type=positive_int, required=True, help="attention tensor-parallel size")
    p.add_argument("--seq-len", type=positive_int, help="prompt tokens per sequence (default: the workload's)")

    p = command("decode", cmd_decode, "time per output token, tokens/s and memory of one decode step")
    profiles(p)
    p.add_argument("--tp", type=positive_int, required=True, help="attention tensor-parallel size")
    p.add_argument("--batch", type=positive_int, required=True, help="sequences per GPU")
    p.add_argument("--kv-len", type=positive_int, required=True, help="KV-cache tokens per sequence")
    p.add_argument("--ep", type=positive_int, help="expert-parallel size (memory only; default: the policy's)")

    p = command("reproduce", cmd_reproduce, "every figure a seed prints, recomputed")
    p.add_argument("seed", choices=["seed-003"], help="which seed document")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except InputError as exc:
        print(f"moecalc: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
