"""Launch commands in and out: SGLang and vLLM command lines ⇄ a layout and per-rank limits.

``parse`` reads a launch command (the tokens after ``--``, or a shell text with line
continuations, ``export K=V`` lines and SGLang-recipe-style ```# comment``` tokens), checks
every flag against the framework's own argument definitions at a stated version
(``params/framework/launch/<framework>-<version>-args.yaml``, extracted from its wheel by
``tools/extract_framework_args.py``), and applies the framework's rules at that version
(``params/framework/launch/<framework>-<version>-rules.yaml`` for its constants; each rule below
names the function of the framework it follows) to give:

* the layout: attention TP × DP, MoE TP × EP, dense-FFN TP, LM head split or data-parallel,
  devices and nodes;
* the per-rank limits the framework derives (running requests, chunked prefill, CUDA-graph
  batches, DeepEP low-latency tokens per rank, memory fraction), each with its rule.

``emit`` goes the other way: the command(s) that set up a given layout, one per node, whose
``parse`` gives the same layout back.
"""

from __future__ import annotations

import difflib
import math
import re
import shlex
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Mapping, Sequence

from .errors import InputError
from .profiles import PARAMS_DIR, Hardware, Model, available, read_yaml

FRAMEWORKS = ("sglang", "vllm")
GIB = 2**30
# Programs that start a launch command (dropped before the flags).
_PROGRAMS = {
    "sglang": (("python3", "-m", "sglang.launch_server"), ("python", "-m", "sglang.launch_server")),
    "vllm": (("vllm", "serve"), ("python3", "-m", "vllm.entrypoints.openai.api_server"),
             ("python", "-m", "vllm.entrypoints.openai.api_server")),
}


def _key(version: str) -> tuple:
    return tuple(int(x) if x.isdigit() else -1 for x in re.split(r"[.+-]", version))


@lru_cache(maxsize=None)
def _tables(framework: str, kind: str) -> dict[str, Any]:
    """{version: path} of the framework's flag tables (kind "args") or rule files ("rules")."""
    if framework not in FRAMEWORKS:
        raise InputError(f"unknown framework {framework!r} (known: {', '.join(FRAMEWORKS)})")
    out = {}  # the version is in the file name (the file's own `version` is checked on loading)
    for path in sorted((PARAMS_DIR / "framework" / "launch").glob(f"{framework}-*-{kind}.yaml")):
        out[path.name[len(framework) + 1:-len(f"-{kind}.yaml")]] = path
    return out


def _load(framework: str, kind: str, version: str) -> Mapping[str, Any]:
    path = _tables(framework, kind)[version]
    data = read_yaml(path)
    if str(data.get("version")) != version:
        raise InputError(f"{path}: field 'version': {data.get('version')!r} does not match the file name ({version})")
    return data


def versions(framework: str) -> list[str]:
    """The versions whose flag table is present, oldest first."""
    return sorted(_tables(framework, "args"), key=_key)


@lru_cache(maxsize=None)
def default_version(framework: str) -> str:
    """The framework profile's version (params/framework/<name>.yaml) if its flag table is
    present, else the newest table present."""
    known = versions(framework)
    profile = str(read_yaml(PARAMS_DIR / "framework" / f"{framework}.yaml")["version"])
    return profile if profile in known else known[-1]


def _version(framework: str, version: str | None) -> str:
    known = versions(framework)
    v = default_version(framework) if version is None else str(version)
    if v not in known:
        raise InputError(f"no {framework} {v} flag table in params/framework/launch/ (present: {', '.join(known)})")
    return v


@lru_cache(maxsize=None)
def flag_definitions(framework: str, version: str | None = None) -> Mapping[str, Any]:
    """The framework's flags as its own parser defines them at `version` (default:
    :func:`default_version`): version, sources, flags."""
    return _load(framework, "args", _version(framework, version))


@lru_cache(maxsize=None)
def rules(framework: str, version: str | None = None) -> Mapping[str, Any]:
    """The constants and defaults the framework's code applies at `version`: its own rules file,
    else the newest older one (whose ``version`` then says which release they were read from)."""
    v = _version(framework, version)
    files = _tables(framework, "rules")
    older = [x for x in files if _key(x) <= _key(v)]
    if not older:
        raise InputError(f"no {framework} rules at or before {v} in params/framework/launch/")
    return _load(framework, "rules", max(older, key=_key))


# ---------------------------------------------------------------- tokens and flags


def tokenize(text: str) -> tuple[list[str], dict[str, str]]:
    """Shell text → (tokens, environment). Joins backslash-newline continuations, takes
    ``export K=V`` lines and leading ``K=V`` words as environment, drops backtick comment
    tokens (```# ===== ... =====``` expand to nothing in a shell) and ``#`` comments."""
    env: dict[str, str] = {}
    tokens: list[str] = []
    text = text.replace("\\\r\n", " ").replace("\\\n", " ")
    text = re.sub(r"`[^`]*`", " ", text)  # command substitutions used as comments
    for line in text.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            raise InputError(f"launch command: cannot split {line.strip()[:60]!r}: {exc}") from None
        if words[:1] == ["export"]:
            for w in words[1:]:
                k, eq, v = w.partition("=")
                if eq:
                    env[k] = v
            continue
        for w in words:
            if w == "\\":  # a continuation backslash left alone on its line
                continue
            if not tokens and "=" in w and not w.startswith("-"):
                k, _, v = w.partition("=")
                env[k] = v
                continue
            tokens.append(w)
    return tokens, env


def _drop_program(framework: str, tokens: list[str]) -> tuple[list[str], str | None]:
    """Tokens without the program that runs them; vLLM's positional model tag is returned."""
    for prog in _PROGRAMS[framework]:
        if tuple(tokens[:len(prog)]) == prog:
            tokens = tokens[len(prog):]
            break
    if framework == "vllm" and tokens and not tokens[0].startswith("-"):
        return tokens[1:], tokens[0]
    return tokens, None


def _convert(flag: str, kind: str, text: str, version: str, framework: str):
    base = kind.rstrip("+")
    try:
        if base == "int":
            return int(text)
        if base == "float":
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value
    except ValueError:
        raise InputError(f"{flag}: expected {'an integer' if base == 'int' else 'a number'}, got {text!r} "
                         f"({framework} {version})") from None
    return text


def parse_flags(framework: str, tokens: Sequence[str], version: str | None = None) -> dict[str, Any]:
    """Flags → {canonical flag: value}, each checked against the framework's definitions:
    an unknown flag (with the closest known one), a missing value, a value of the wrong type
    or outside its choices is one error naming the flag and the framework version."""
    defs = flag_definitions(framework, version)
    known, version = defs["flags"], defs["version"]
    out: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("-"):
            raise InputError(f"launch command: unexpected word {tok!r} (not a flag of {framework} {version})")
        name, eq, inline = tok.partition("=")
        spec = known.get(name)
        if spec is None:
            close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
            elsewhere = [v for v in versions(framework) if v != str(version) and name in flag_definitions(framework, v)["flags"]]
            raise InputError(f"unknown {framework} {version} flag {name}"
                             + (f" (did you mean {close[0]}?)" if close else "")
                             + f"; checked against {defs['sources'][0].split(' ')[0]}"
                             + (f"; {framework} {', '.join(elsewhere)} has it (--version {elsewhere[-1]})" if elsewhere else ""))
        canon = spec.get("negates") or spec.get("alias_of") or name
        kind = spec["kind"]
        i += 1
        if kind == "flag":
            if eq:
                raise InputError(f"{name} takes no value ({framework} {version}), got {tok!r}")
            out[canon] = not spec.get("negates")
            continue
        values = [inline] if eq else []
        if not eq:
            while i < len(tokens) and not (tokens[i].startswith("--") or
                                           (tokens[i].startswith("-") and not _number(tokens[i]))):
                values.append(tokens[i])
                i += 1
                if not kind.endswith("+"):
                    break
        if not values:
            raise InputError(f"{name} needs a value ({framework} {version})")
        converted = [_convert(name, kind, v, version, framework) for v in values]
        choices = spec.get("choices")
        if choices and any(v not in choices for v in converted):
            bad = next(v for v in converted if v not in choices)
            raise InputError(f"{name}: {bad!r} is not one of {', '.join(map(str, choices))} ({framework} {version})")
        out[canon] = converted if kind.endswith("+") else converted[0]
    return out


def _number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------- the parsed command


@dataclass(frozen=True)
class Limit:
    """One per-rank limit the framework derives: its value, the rule and where it comes from."""

    name: str
    value: Any
    rule: str
    ok: bool | None = None  # a check (True/False) or a plain value (None)


@dataclass(frozen=True)
class LaunchLayout:
    attention_tp: int
    attention_dp: int
    moe_tp: int
    ep: int
    dense_tp: int
    lm_head: str  # "tp" (vocab split over the attention TP group) or "dp" (... per attention-DP rank)
    devices: int
    nodes: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def roofline(self, batch: float = 1, tbo: bool = False):
        from .policies.roofline import Layout

        return Layout(tp=self.attention_tp, dp=self.attention_dp, moe_tp=self.moe_tp, ep=self.ep, batch=batch, tbo=tbo)

    def describe(self) -> str:
        return (f"attention TP{self.attention_tp} × DP{self.attention_dp}, MoE TP{self.moe_tp} × EP{self.ep}, "
                f"dense FFN TP{self.dense_tp}, LM head {'data-parallel' if self.lm_head == 'dp' else 'TP-split'}, "
                f"{self.devices} devices on {self.nodes} node{'s' if self.nodes > 1 else ''}")


@dataclass(frozen=True)
class Launch:
    framework: str
    version: str
    model_path: str | None
    role: str  # "prefill", "decode" or "mixed"
    flags: Mapping[str, Any]
    env: Mapping[str, str]
    layout: LaunchLayout
    limits: tuple[Limit, ...]
    running_per_rank: int | None  # requests per attention-DP rank (framework limit)
    chunk_per_rank: int | None  # prefill tokens per attention-DP rank per forward
    graph_bs: tuple[int, ...]  # CUDA-graph batch sizes (empty: graphs off)
    mem_fraction: float
    kv_dtype: str  # moecalc KV format: "bf16", "fp8+scales" or "fp8"
    spec_draft_tokens: int  # tokens verified per request per step beyond the first (0: no speculation)
    notes: tuple[str, ...] = field(default_factory=tuple)

    def limit(self, name: str) -> Limit:
        return next(x for x in self.limits if x.name == name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "framework": self.framework, "version": self.version, "model_path": self.model_path, "role": self.role,
            "layout": self.layout.as_dict(), "requests_per_rank": self.running_per_rank,
            "chunked_prefill_per_rank": self.chunk_per_rank, "cuda_graph_bs": list(self.graph_bs),
            "mem_fraction": self.mem_fraction, "kv_format": self.kv_dtype,
            "draft_tokens": self.spec_draft_tokens,
            "limits": [{"name": x.name, "value": x.value, "rule": x.rule, "ok": x.ok} for x in self.limits],
            "flags": dict(self.flags), "env": dict(self.env), "notes": list(self.notes),
        }


def model_for(path: str | None) -> str | None:
    """The model profile a ``--model-path`` names, if one matches its last component."""
    if not path:
        return None
    stem = path.rstrip("/").split("/")[-1].lower()
    names = available("model")
    return stem if stem in names else next((n for n in names if stem.startswith(n) or n in stem), None)


def _divides(what: str, a: int, b: int, framework: str, version: str) -> None:
    if a < 1 or b < 1 or b % a:
        raise InputError(f"{what}: {a} does not divide {b} ({framework} {version})")


def _graph_sizes(r: Mapping[str, Any], speculative: bool, max_bs: int) -> tuple[int, ...]:
    out = []
    for start, stop, step in r["cuda_graph_bs"]["speculative" if speculative else "normal"]:
        out.extend(range(start, min(stop, max_bs + 1), step))
    if r["cuda_graph_bs"].get("append_max"):  # 0.5.23: max_bs itself is always captured
        out.append(max_bs)
    return tuple(sorted(b for b in set(out) if b <= max_bs))


def _memory_default(r: Mapping[str, Any], hw: Hardware | None, key: str, tp: int):
    gib = None if hw is None else hw.memory_bytes / GIB
    for row in r["memory_defaults"]:
        if row["below_gib"] is None or (gib is not None and gib < row["below_gib"]):
            v = row[key]
            return v[0 if tp < 4 else 1] if isinstance(v, list) else v
    return None


def parse(framework: str, command: str | Sequence[str], m: Model | None = None, hw: Hardware | None = None,
          version: str | None = None) -> Launch:
    """A launch command (text or tokens) → :class:`Launch`. `m` (the model profile) decides
    the model-specific rules (SGLang forces DP attention for sparse-attention models) and
    the divisibility checks; `hw` the memory-dependent defaults and the node size; `version` the
    framework release whose flags and rules apply (default: :func:`default_version`)."""
    tokens, env = tokenize(command) if isinstance(command, str) else (list(command), {})
    tokens, tag = _drop_program(framework, tokens)
    version = _version(framework, version)
    flags = parse_flags(framework, tokens, version)
    return (_sglang if framework == "sglang" else _vllm)(flags, env, tag, m, hw, version)


_SGLANG_WHERE = {"running": "tp_worker.py (TpModelWorker)", "chunk": "server_args.py _handle_data_parallelism",
                 "memory": "_handle_gpu_memory_settings", "graphs": "_generate_cuda_graph_batch_sizes"}
_SGLANG_CANONICAL = {"--tp-size": "--tensor-parallel-size", "--dp-size": "--data-parallel-size",
                     "--ep-size": "--expert-parallel-size"}


def _sglang(f: Mapping[str, Any], env: Mapping[str, str], _tag, m: Model | None, hw: Hardware | None,
            version: str) -> Launch:
    r = rules("sglang", version)
    # 0.5.23 made the short spellings canonical (--tp-size, alias --tensor-parallel-size): read the
    # flags under the names below whichever a release's table calls canonical
    f = {_SGLANG_CANONICAL.get(k, k): v for k, v in f.items()}
    V = f"SGLang {version}"
    notes: list[str] = []
    if str(r["version"]) != version:
        notes.append(f"rules read from SGLang {r['version']} (no rules file for {version})")
    names = r.get("flag_names", {})
    where = {**_SGLANG_WHERE, **r.get("where", {})}  # the functions the rules below follow, at this release
    max_bs_flag = names.get("cuda_graph_max_bs", "--cuda-graph-max-bs")
    bs_flag = names.get("cuda_graph_bs", "--cuda-graph-bs")
    tp, dp = f.get("--tensor-parallel-size", 1), f.get("--data-parallel-size", 1)
    dp_attention = bool(f.get("--enable-dp-attention"))
    if m is not None and m.sparse and r["nsa"]["enable_dp_attention"]:  # 0.5.5 _handle_model_specific_adjustments
        if not dp_attention or dp != tp:
            notes.append(f"{V} forces DP attention with dp = tp for DeepSeek NSA models (was dp {dp}, "
                         f"--enable-dp-attention {'on' if dp_attention else 'off'})")
        dp_attention, dp = True, tp
    if dp == 1:  # _handle_data_parallelism
        dp_attention = False
    if dp_attention:
        _divides("--dp-size into --tp-size (DP attention)", dp, tp, "sglang", version)
        attn_tp, attn_dp, devices = tp // dp, dp, tp
    else:
        attn_tp, attn_dp, devices = tp, dp, tp * dp  # dp independent replicas
    a2a = f.get("--moe-a2a-backend", "none")
    if a2a in ("deepep", "mooncake"):  # _handle_a2a_moe: ep_size = tp_size
        ep = tp
        if f.get("--expert-parallel-size", tp) != tp:
            notes.append(f"--ep-size {f['--expert-parallel-size']} is overridden: {V} sets ep = tp = {tp} with --moe-a2a-backend {a2a}")
    else:
        ep = f.get("--expert-parallel-size", 1)
    _divides("--ep-size into --tp-size", ep, tp, "sglang", version)
    moe_tp = tp // ep
    dense_tp = f.get("--moe-dense-tp-size") or tp
    if "--moe-dense-tp-size" in f and dense_tp != 1:
        raise InputError(f"--moe-dense-tp-size: {V} supports only 1 (or unset), got {dense_tp}")
    lm_head = "dp" if (f.get("--enable-dp-lm-head") and dp_attention) else "tp"
    nnodes = f.get("--nnodes", 1)
    _divides("--nnodes into the devices", nnodes, devices, "sglang", version)
    if hw is not None and devices // nnodes > hw.scale_up_domain:
        raise InputError(f"{devices} devices on {nnodes} node(s) is {devices // nnodes} per node; {hw.name} nodes hold "
                         f"{hw.scale_up_domain}")
    if m is not None:
        if m.num_attention_heads % attn_tp:
            raise InputError(f"attention TP {attn_tp} does not divide the {m.num_attention_heads} heads of {m.name}")
        slots = m.n_routed_experts + f.get("--ep-num-redundant-experts", 0)
        if slots % ep:
            raise InputError(f"EP {ep} does not divide the {slots} routed expert copies of {m.name}")
    layout = LaunchLayout(attn_tp, attn_dp, moe_tp, ep, dense_tp, lm_head, devices, nnodes)

    role = f.get("--disaggregation-mode", "null")
    role = {"prefill": "prefill", "decode": "decode"}.get(role, "mixed")
    needs = r.get("decode_dp_requires")
    if needs and role == "decode" and dp > 1 and not f.get(needs):  # 0.5.5 _handle_disaggregation asserts it
        raise InputError(f"{V} refuses a decode server with dp {dp} without {needs} "
                         "(server_args.py _handle_disaggregation: the prefill side must balance round-robin so the "
                         "decode side knows each request's DP rank)")
    limits: list[Limit] = []
    per_dp = dp if dp_attention else 1
    running = f.get("--max-running-requests")
    running_rank = None if running is None else running // per_dp
    if running is not None:
        limits.append(Limit("max running requests per rank", running_rank,
                            f"{where['running']}: --max-running-requests {running} // dp {per_dp}"
                            + (" under DP attention" if dp_attention else "")))
    chunk = f.get("--chunked-prefill-size") or _memory_default(r, hw, "chunked_prefill_size", tp)
    chunk_rank = None
    if chunk is not None and chunk > 0 and role != "decode":
        chunk_rank = chunk // per_dp
        limits.append(Limit("chunked prefill tokens per rank", chunk_rank,
                            f"{where['chunk']}: chunked_prefill_size {chunk} // dp {per_dp}"
                            + ("" if "--chunked-prefill-size" in f else " (default for this GPU's memory, "
                               f"{where['memory']})")))
    speculative = f.get("--speculative-algorithm")
    steps = f.get("--speculative-num-steps", 0) if speculative else 0
    draft = 0
    if speculative in ("EAGLE", "EAGLE3", "NEXTN"):
        draft = f.get("--speculative-num-draft-tokens") or steps + 1
        if f.get("--speculative-eagle-topk", 1) == 1 and draft != steps + 1:
            notes.append(f"{V} sets --speculative-num-draft-tokens to num-steps + 1 = {steps + 1} when eagle-topk is 1")
            draft = steps + 1
        limits.append(Limit("tokens verified per request per step", draft,
                            f"{speculative}, {steps} draft step(s), top-{f.get('--speculative-eagle-topk', 1)}: "
                            f"num_draft_tokens {draft} = the request's current token + {draft - 1} drafted "
                            f"(at most {draft} tokens accepted per step)"))
    graphs_off = role == "prefill" or f.get("--disable-cuda-graph") or f.get("--deepep-mode") == "normal"
    if graphs_off:
        graph_bs: tuple[int, ...] = ()
        why = ("prefill server (_handle_disaggregation)" if role == "prefill" else
               "--deepep-mode normal (_handle_a2a_moe)" if f.get("--deepep-mode") == "normal" else "--disable-cuda-graph")
        limits.append(Limit("CUDA graphs", "off", f"disabled: {why}"))
    else:
        if bs_flag in f:
            graph_bs = tuple(sorted(set(f[bs_flag])))
            rule = f"{bs_flag} as given"
        else:
            max_bs = f.get(max_bs_flag) or _memory_default(r, hw, "cuda_graph_max_bs", tp)
            graph_bs = _graph_sizes(r, speculative is not None, max_bs)
            rule = f"{where['graphs']} up to {max_bs}"
        limits.append(Limit("CUDA-graph batch sizes", list(graph_bs), rule))
        if running_rank is not None:
            limits.append(Limit("requests per rank within the largest graph", f"{running_rank} ≤ {max(graph_bs)}",
                                "a decode batch above the largest captured size runs eagerly (no graph)",
                                running_rank <= max(graph_bs)))
    if a2a == "deepep" and f.get("--deepep-mode", "auto") in ("low_latency", "auto") and role != "prefill":
        cap = int(env.get(r["deepep_low_latency_tokens_per_rank"]["env"], r["deepep_low_latency_tokens_per_rank"]["value"]))
        biggest = max(graph_bs) if graph_bs else (running_rank or 0)
        need = biggest * max(draft, 1)
        limits.append(Limit("DeepEP low-latency tokens per rank", f"{need} ≤ {cap}",
                            f"largest decode batch per rank {biggest} × {max(draft, 1)} token(s) per request; "
                            f"buffer {cap} ({r['deepep_low_latency_tokens_per_rank']['env']})", need <= cap))
    mem = f.get("--mem-fraction-static")
    if mem is None:
        mem = 0.8 if m is not None and m.sparse else 0.88
        notes.append(f"--mem-fraction-static unset: taken as {mem} (SGLang's estimate depends on the GPU; "
                     "0.5.3 forced 0.8 for NSA models)")
    limits.append(Limit("memory fraction for weights + KV pool", mem, "--mem-fraction-static: the share of GPU "
                        "memory SGLang gives the weights and the KV pool (the rest: activations, graphs, buffers)"))
    kv = f.get("--kv-cache-dtype", "auto")
    if m is not None and m.sparse and kv == "auto":  # NSA: auto → bfloat16 on Hopper, fp8_e4m3 on Blackwell
        kv = "fp8_e4m3" if hw is not None and hw.compute_units and "fp4" in hw.peak_flops else "bfloat16"
    kv_format = "fp8+scales" if kv == "fp8_e4m3" and m is not None and m.sparse else ("fp8" if kv.startswith("fp8") else "bf16")
    for name in ("SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT", "SGLANG_DISAGGREGATION_WAITING_TIMEOUT"):
        key = "disaggregation_bootstrap_timeout_s" if "BOOTSTRAP" in name else "disaggregation_waiting_timeout_s"
        if role != "mixed":
            limits.append(Limit(name.lower().replace("sglang_", "").replace("_", " ") + " (s)",
                                float(env.get(name, r[key]["value"])),
                                f"{'set by the command' if name in env else 'default'}; {r[key]['source']}"))
    return Launch("sglang", version, f.get("--model-path"), role, dict(f), dict(env), layout, tuple(limits),
                  running_rank, chunk_rank, graph_bs, float(mem), kv_format, max(draft - 1, 0), tuple(notes))


def _vllm(f: Mapping[str, Any], env: Mapping[str, str], tag, m: Model | None, hw: Hardware | None,
          version: str) -> Launch:
    r = rules("vllm", version)
    tp, dp = f.get("--tensor-parallel-size", 1), f.get("--data-parallel-size", 1)
    ep_on = bool(f.get("--enable-expert-parallel"))
    devices = tp * dp
    # fused_moe/config.py FusedMoEParallelConfig.make: MoE TP is flattened across DP; with
    # expert parallelism the experts are split EP = tp × dp ways instead
    moe_tp, ep = (1, devices) if ep_on else (devices, 1)
    local = f.get("--data-parallel-size-local", dp)
    _divides("--data-parallel-size-local into --data-parallel-size", local, dp, "vllm", version)
    nodes = dp // local
    if hw is not None and tp * local > hw.scale_up_domain:
        raise InputError(f"{tp * local} devices per node (TP {tp} × local DP {local}); {hw.name} nodes hold "
                         f"{hw.scale_up_domain}")
    if m is not None:
        if m.num_attention_heads % tp:
            raise InputError(f"attention TP {tp} does not divide the {m.num_attention_heads} heads of {m.name}")
        if ep > 1 and m.n_routed_experts % ep:
            raise InputError(f"EP {ep} does not divide the {m.n_routed_experts} routed experts of {m.name}")
    layout = LaunchLayout(tp, dp, moe_tp, ep, tp, "tp", devices, nodes)
    seqs = f.get("--max-num-seqs", r["max_num_seqs_default"]["value"])
    limits = [Limit("max running requests per rank", seqs, "--max-num-seqs applies per engine, i.e. per data-parallel "
                    f"rank ({r['max_num_seqs_default']['source']})")]
    sizes = f.get("--cuda-graph-sizes")
    if f.get("--enforce-eager"):
        graph_bs: tuple[int, ...] = ()
        limits.append(Limit("CUDA graphs", "off", "--enforce-eager"))
    else:
        if not sizes:
            sizes = [min(seqs * 2, 512)]
        graph_bs = (tuple(sorted(set(sizes))) if len(sizes) > 1
                    else tuple([b for b in (1, 2, 4) if b <= sizes[0]] + list(range(8, sizes[0] + 1, 8))))
        limits.append(Limit("CUDA-graph batch sizes", list(graph_bs), r["cuda_graph_sizes_default"]["rule"]))
    mem = f.get("--gpu-memory-utilization", r["gpu_memory_utilization_default"]["value"])
    limits.append(Limit("memory fraction for weights + KV pool", mem, "--gpu-memory-utilization "
                        f"({r['gpu_memory_utilization_default']['source']})"))
    batched = f.get("--max-num-batched-tokens")
    kv = f.get("--kv-cache-dtype", "auto")
    kv_format = "fp8" if str(kv).startswith("fp8") else "bf16"
    return Launch("vllm", version, tag or f.get("--model"), "mixed", dict(f), dict(env), layout, tuple(limits), seqs,
                  batched, graph_bs, float(mem), kv_format, 0, ())


# ---------------------------------------------------------------- emit


def emit(framework: str, layout: LaunchLayout, model_path: str, role: str = "decode",
         requests_per_rank: int | None = None, address: str = "NODE0_IP:5000",
         chunk_per_rank: int | None = None, version: str | None = None) -> list[str]:
    """The launch command(s), one per node, that set up `layout` (and, given, the prompt tokens
    per attention-DP rank per step of chunked prefill); parse gives them back."""
    version = _version(framework, version)
    r = rules(framework, version)
    names = r.get("flag_names", {})
    L = layout
    if framework == "sglang":
        if L.attention_dp > 1 and L.dense_tp not in (1, L.attention_tp * L.attention_dp):
            raise InputError(f"SGLang {version} runs the dense FFN at TP1 (--moe-dense-tp-size 1) or the full TP; "
                             f"not TP{L.dense_tp}")
        tp = L.attention_tp * L.attention_dp
        if L.moe_tp * L.ep != tp:
            raise InputError(f"SGLang {version}: MoE TP {L.moe_tp} × EP {L.ep} must cover the {tp} devices")
        words = ["python3", "-m", "sglang.launch_server", "--model-path", model_path, "--tp-size", str(tp)]
        if L.attention_dp > 1:
            words += ["--dp-size", str(L.attention_dp), "--enable-dp-attention"]
            if L.dense_tp == 1:
                words += ["--moe-dense-tp-size", "1"]
            if L.lm_head == "dp":
                words += ["--enable-dp-lm-head"]
        if L.ep > 1 and L.moe_tp == 1:
            words += ["--moe-a2a-backend", "deepep", "--deepep-mode",
                      {"prefill": "normal", "decode": "low_latency"}.get(role, "auto")]
        elif L.ep > 1:
            words += ["--ep-size", str(L.ep)]
        if role in ("prefill", "decode"):
            words += ["--disaggregation-mode", role]
            if role == "decode" and L.attention_dp > 1 and r.get("decode_dp_requires"):
                words += [r["decode_dp_requires"]]
            if role == "prefill" and L.attention_dp > 1:
                words += ["--load-balance-method", "round_robin"]
        if requests_per_rank:
            words += ["--max-running-requests", str(requests_per_rank * L.attention_dp)]
            if role != "prefill":
                words += [names.get("cuda_graph_max_bs", "--cuda-graph-max-bs"), str(requests_per_rank)]
        if chunk_per_rank:  # SGLang divides the flag by the attention DP size (_handle_data_parallelism)
            words += ["--chunked-prefill-size", str(chunk_per_rank * L.attention_dp)]
        if L.nodes == 1:
            return [shlex.join(words)]
        return [shlex.join(words + ["--dist-init-addr", address, "--nnodes", str(L.nodes), "--node-rank", str(i)])
                for i in range(L.nodes)]
    if framework == "vllm":
        devices = L.attention_tp * L.attention_dp
        if (L.moe_tp, L.ep) not in ((1, devices), (devices, 1)):
            raise InputError(f"vLLM {version} runs the MoE either EP over all {devices} devices "
                             f"(--enable-expert-parallel) or TP over them; not MoE TP{L.moe_tp} × EP{L.ep}")
        if L.dense_tp != L.attention_tp or L.lm_head != "tp":
            raise InputError(f"vLLM {version} runs the dense FFN and LM head at the attention TP")
        words = ["vllm", "serve", model_path, "--tensor-parallel-size", str(L.attention_tp)]
        if L.attention_dp > 1:
            words += ["--data-parallel-size", str(L.attention_dp)]
        if L.ep > 1:
            words += ["--enable-expert-parallel"]
        if requests_per_rank:
            words += ["--max-num-seqs", str(requests_per_rank)]
        if chunk_per_rank:  # per engine core, i.e. per data-parallel rank
            words += ["--max-num-batched-tokens", str(chunk_per_rank)]
        if L.nodes == 1:
            return [shlex.join(words)]
        if L.attention_dp % L.nodes:
            raise InputError(f"vLLM {version}: {L.nodes} nodes must each hold whole data-parallel ranks "
                             f"(DP {L.attention_dp})")
        local = L.attention_dp // L.nodes
        host, _, port = address.partition(":")
        base = words + ["--data-parallel-size-local", str(local), "--data-parallel-address", host,
                        "--data-parallel-rpc-port", port or "13345"]
        return [shlex.join(base if i == 0 else base + ["--headless", "--data-parallel-start-rank", str(i * local)])
                for i in range(L.nodes)]
    raise InputError(f"unknown framework {framework!r} (known: {', '.join(FRAMEWORKS)})")


def layout_for(framework: str, tp: int, dp: int, moe_tp: int, ep: int, devices_per_node: int) -> LaunchLayout:
    """A roofline layout (attention TP × DP, MoE TP × EP) as the framework can launch it.
    SGLang runs the dense FFN at TP1 (``--moe-dense-tp-size 1``) under pure attention DP,
    otherwise over the whole TP group, and its LM head per attention-DP rank
    (``--enable-dp-lm-head``) when there is attention DP; vLLM runs both at the attention TP."""
    devices = tp * dp
    nodes = max(1, math.ceil(devices / devices_per_node))
    if framework == "sglang":
        return LaunchLayout(tp, dp, moe_tp, ep, 1 if tp == 1 else devices, "dp" if dp > 1 else "tp", devices, nodes)
    return LaunchLayout(tp, dp, moe_tp, ep, tp, "tp", devices, nodes)
