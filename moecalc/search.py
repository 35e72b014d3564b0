"""Deployment search: every layout of a model on N devices, evaluated in one vectorized call.

A layout is ``(tp, dp, moe_tp, ep, batch, tbo)`` with ``tp · dp = moe_tp · ep = devices``:
attention runs TP × DP, the MoE runs MoE-TP × EP over the same devices. ``batch`` is the
timing policies' meaning, *sequences per attention-DP rank* (one rank is ``tp`` devices), so
each device serves ``batch / tp`` sequences; ``batch_per="device"`` lets the caller give the
per-device figure instead (seed 002's "Batch"), which becomes ``batch · tp`` per rank.

The space is built per device count from its divisor pairs (a short Python loop), then
evaluated as numpy arrays in one call of the policy: the unique ``(tp, dp, moe_tp, ep)`` run
down one axis, batch along another, and one call gives both schedules (the roofline computes
the serial and the two-batch-overlap time of every layout). Each layout gets the first
reason it fails, in this order: indivisible (TP does not divide the heads, EP the routed
experts, or MoE-TP the expert width), out of memory, below the SLO.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .checks import atomic_write, escape, parse_count
from .errors import InputError
from .frameworks import Framework, load_framework
from .policies import roofline
from .profiles import Hardware, Model, Workload
from .units import GB, MS

REASONS = ("indivisible", "out of memory", "below the SLO", "beyond the framework's CUDA graphs")
FEASIBLE, INDIVISIBLE, OUT_OF_MEMORY, BELOW_SLO, BEYOND_GRAPHS = 0, 1, 2, 3, 4
BATCH_PER = ("rank", "device")
BATCH_MEANING = {
    "rank": "sequences per attention-DP rank (tp devices); each device serves batch / tp",
    "device": "sequences per device; an attention-DP rank of tp devices serves batch × tp",
}
METRICS = ("tokens_per_s_per_user", "tokens_per_s_per_device", "total_tokens_per_s", "tpot_ms", "memory_gb", "mfu")


def policies() -> dict[str, Callable[..., roofline.DecodeStep]]:
    """Timing policies the search can use: same signature as roofline.decode."""
    from .policies import seed002

    return {"roofline": roofline.decode, "seed002": seed002.decode}


def default_batch_per(policy: str) -> str:
    """What a search's batch counts when the caller does not say: the policy file's
    ``batch_per`` where it has one (seed 002 counts sequences per chip), else per rank."""
    from .policies import seed002

    files = {"seed002": seed002.load_policy}
    return files[policy]().batch_per if policy in files else "rank"


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


# The most layouts (layouts × batches × schedules, over every device count and batch range)
# one search may evaluate. The roofline keeps a few dozen float64 arrays of the search's
# shape alive at once, about 200 bytes per layout at its peak (measured: 2.6 GB for 1.3e7
# layouts); this machine has 24 GiB and 2 cores shared by several jobs, so a search may take
# at most about 4 GB and some 20 s.
MAX_LAYOUTS = 20_000_000
MACHINE = "this machine: 24 GiB of memory, 2 cores"


def check_size(n: int, what: str = "search", hint: str = "narrow --batch, --devices, --tp or --moe-tp",
               unit: str = "layouts") -> None:
    """Refuse a computation of `n` layouts (or other array elements) before anything of that
    size is allocated."""
    if n > MAX_LAYOUTS:
        raise InputError(f"{what} of {n:,} {unit} is too large: at most {MAX_LAYOUTS:,} fit in the memory and "
                         f"time one run may take on {MACHINE}; {hint}")


def parse_batches(text: str) -> np.ndarray:
    """"1-512" (a range), "6,8,10" (a list) or "10" → sorted unique positive integers.
    Numbers are ASCII digits, each at most checks.MAX_COUNT; all ranges together are
    refused if they hold more batch sizes than a search may evaluate layouts."""
    bounds = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            a = parse_count(lo.strip(), "--batch")
            b = parse_count(hi.strip(), "--batch") if sep else a
        except InputError as exc:
            raise InputError(f"{exc} (expected a range like 1-512 or a list like 6,8,10, got "
                             f"{escape(repr(text))[:60]})") from None
        if b < a:
            raise InputError(f"--batch: {escape(part.strip())!r} is not a range of positive batch sizes")
        bounds.append((a, b))
    check_size(sum(b - a + 1 for a, b in bounds), "a search over --batch")  # each batch is ≥ 1 layout
    return np.unique(np.concatenate([np.arange(a, b + 1, dtype=np.int64) for a, b in bounds]))


# ---------------------------------------------------------------- the space


@dataclass(frozen=True)
class Space:
    """Unique ``(devices, tp, dp, moe_tp, ep)`` rows (axis U) × batch values (axis B) × the
    schedules in `tbo` (axis T). ``indivisible[u]`` marks rows the model cannot split."""

    devices: np.ndarray
    tp: np.ndarray
    dp: np.ndarray
    moe_tp: np.ndarray
    ep: np.ndarray
    indivisible: np.ndarray
    batch: np.ndarray
    batch_per: str
    tbo: tuple[bool, ...]

    @property
    def size(self) -> int:
        return len(self.tp) * len(self.batch) * len(self.tbo)


def build_space(
    m: Model,
    devices: Iterable[int],
    batches: Sequence[int] | np.ndarray,
    tp: Sequence[int] | None = None,
    moe_tp: Sequence[int] | None = None,
    tbo: Sequence[bool] = (False, True),
    batch_per: str = "rank",
    redundant_experts: int = 0,
) -> Space:
    """Every divisor pair (tp, dp) × (moe_tp, ep) of each device count, optionally only the
    given tp and moe_tp values. EP must divide the routed experts plus `redundant_experts`
    copies. A count with no layout the model can split stays in the space, every layout of it
    rejected as indivisible (``Result.why_none`` says why); one error only if no count has one."""
    devices = list(dict.fromkeys(int(d) for d in devices))
    if not devices:
        raise InputError("no device count given")
    if min(devices) < 1:
        raise InputError(f"device counts must be positive, got {min(devices)}")
    if batch_per not in BATCH_PER:
        raise InputError(f"batch_per must be one of {', '.join(BATCH_PER)}, got {batch_per!r}")
    batch = np.unique(np.asarray(batches, dtype=np.int64))
    if batch.size == 0 or batch[0] < 1:
        raise InputError("batch sizes must be positive integers")
    tbo = tuple(dict.fromkeys(bool(t) for t in tbo))
    if not tbo:
        raise InputError("no schedule (tbo on or off) given")
    most = m.n_routed_experts * m.moe_intermediate_size  # EP ≤ experts and MoE-TP ≤ expert width
    too_many = [n for n in devices if n > most]
    if too_many:
        raise InputError(f"no layout of {m.name} fits {too_many[0]:,} devices: EP can be at most its "
                         f"{m.n_routed_experts} routed experts and MoE-TP at most its expert width "
                         f"{m.moe_intermediate_size}, so at most {most:,} devices")
    check_size(len(devices) * batch.size * len(tbo))  # a floor on the size, before the divisor loop
    rows: list[tuple[int, int, int, int, int]] = []
    for n in devices:  # a loop over device counts and their divisors, not over layouts
        tps = [d for d in divisors(n) if tp is None or d in tp]
        mtps = [d for d in divisors(n) if moe_tp is None or d in moe_tp]
        rows += [(n, a, n // a, b, n // b) for a in tps for b in mtps]
    arr = np.array(rows, dtype=np.int64).reshape(-1, 5)
    d, t, p, mt, e = arr.T
    slots = m.n_routed_experts + int(redundant_experts)  # routed expert copies EP spreads
    indivisible = (
        (m.num_attention_heads % t != 0)
        | (e > slots)
        | (slots % e != 0)
        | (m.moe_intermediate_size % mt != 0)
    )
    if indivisible.all():
        only = "" if tp is None and moe_tp is None else " with the tp / moe-tp values given"
        n = devices[0] if len(devices) == 1 else ", ".join(map(str, devices))
        raise InputError(
            f"no layout of {m.name} fits {n} devices{only}: TP must divide its {m.num_attention_heads} heads, "
            f"EP its {slots} routed expert copies and MoE-TP its expert width {m.moe_intermediate_size}"
        )
    return Space(d, t, p, mt, e, indivisible, batch, batch_per, tbo)


# ---------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Result:
    """Metrics and reasons over the divisible rows: arrays shaped (T, U_valid, B)."""

    space: Space
    valid: np.ndarray  # indices of the divisible rows of the space
    metrics: dict[str, np.ndarray]
    reason: np.ndarray  # FEASIBLE, OUT_OF_MEMORY, BELOW_SLO or BEYOND_GRAPHS
    policy: str
    kv_len: int
    min_tokens_per_user: float | None
    memory_limit: float  # bytes per device (the largest over layouts: the framework's rule depends on weights)
    framework: str = ""  # name and version of the framework profile (roofline)
    cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def evaluated(self) -> int:
        return self.space.size

    def _rows(self, devices: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(space rows, valid rows) of one device count, or all."""
        if devices is None:
            return np.ones(len(self.space.tp), bool), np.ones(len(self.valid), bool)
        return self.space.devices == devices, self.space.devices[self.valid] == devices

    def rejected(self, devices: int | None = None) -> dict[str, int]:
        """Layouts per first failing reason (of one device count, or all)."""
        rows, valid = self._rows(devices)
        reason = self.reason[:, valid, :]
        return {
            "indivisible": int(self.space.indivisible[rows].sum()) * len(self.space.batch) * len(self.space.tbo),
            "out of memory": int(np.count_nonzero(reason == OUT_OF_MEMORY)),
            "below the SLO": int(np.count_nonzero(reason == BELOW_SLO)),
            **({"beyond the framework's CUDA graphs": int(np.count_nonzero(reason == BEYOND_GRAPHS))}
               if np.any(self.reason == BEYOND_GRAPHS) else {}),
        }

    def count(self, devices: int | None = None) -> int:
        """Layouts evaluated (of one device count, or all)."""
        rows, _ = self._rows(devices)
        return int(rows.sum()) * len(self.space.batch) * len(self.space.tbo)

    @property
    def feasible(self) -> int:
        return int(np.count_nonzero(self.reason == FEASIBLE))

    def frontier(self, tp: int | None = None, slo: bool = False) -> list[tuple[int, int, int]]:
        """(t, u, b) of the layouts that fit in memory (and meet the SLO if `slo`) and that
        no other such layout beats on both tokens/s per user and tokens/s per device (of one
        attention TP, or all), fastest per user first."""
        ok = self.reason == FEASIBLE if slo else ~np.isin(self.reason, (OUT_OF_MEMORY, BEYOND_GRAPHS))
        if tp is not None:
            ok = ok & (self.space.tp[self.valid] == tp)[None, :, None]
        t, u, b = np.nonzero(ok)
        if t.size == 0:
            return []
        user = self.metrics["tokens_per_s_per_user"][t, u, b]
        dev = self.metrics["tokens_per_s_per_device"][t, u, b]
        order = np.lexsort((-dev, -user))  # fastest per user first, ties: most per device
        best_so_far = np.maximum.accumulate(dev[order])
        keep = np.r_[True, dev[order][1:] > best_so_far[:-1]]  # beats every faster-per-user layout
        idx = order[keep]
        return list(zip(t[idx].tolist(), u[idx].tolist(), b[idx].tolist()))

    # -------------------------------------------------------- ranking

    def _key(self) -> np.ndarray:
        """Tokens/s per device where feasible, −inf elsewhere (computed once)."""
        if "key" not in self.cache:
            self.cache["key"] = np.where(self.reason == FEASIBLE, self.metrics["tokens_per_s_per_device"], -np.inf)
        return self.cache["key"]

    def ranked(self, k: int | None = None, devices: int | None = None) -> list[tuple[int, int, int]]:
        """(t, u, b) indices of the best feasible layouts, best first: most tokens/s per
        device, then most tokens/s per user, then fewer devices, smaller tp, moe_tp, batch.

        Only the unique layouts whose own best could make the cut are sorted: a layout in
        the top k lies in a row whose best is at least the k-th best row's."""
        key = self._key()
        rows = np.arange(key.shape[1])
        if devices is not None:
            rows = rows[self.space.devices[self.valid] == devices]
        row_best = key[:, rows, :].max(axis=(0, 2)) if rows.size else np.empty(0)
        rows, row_best = rows[np.isfinite(row_best)], row_best[np.isfinite(row_best)]
        if rows.size == 0:
            return []
        if k is not None and k < rows.size:
            rows = rows[row_best >= np.partition(row_best, rows.size - k)[rows.size - k]]
        sub = key[:, rows, :]
        t, u, b = np.nonzero(np.isfinite(sub))
        value = sub[t, u, b]
        u = rows[u]
        spaced = self.valid[u]
        order = np.lexsort((
            self.space.batch[b], self.space.moe_tp[spaced], self.space.tp[spaced], t, self.space.devices[spaced],
            -self.metrics["tokens_per_s_per_user"][t, u, b], -value,
        ))[:k]
        return list(zip(t[order].tolist(), u[order].tolist(), b[order].tolist()))

    def layout(self, t: int, u: int, b: int) -> dict[str, Any]:
        """One evaluated layout as plain numbers."""
        s, row = self.space, int(self.valid[u])
        batch = int(s.batch[b]) * (int(s.tp[row]) if s.batch_per == "device" else 1)
        out: dict[str, Any] = {
            "devices": int(s.devices[row]),
            "tp": int(s.tp[row]),
            "dp": int(s.dp[row]),
            "moe_tp": int(s.moe_tp[row]),
            "ep": int(s.ep[row]),
            "batch": batch,
            "batch_per_device": batch / int(s.tp[row]),
            "tbo": bool(s.tbo[t]),
        }
        out.update({name: float(self.metrics[name][t, u, b]) for name in METRICS})
        return out

    def why_none(self, devices: int) -> str:
        """Why no layout on `devices` is feasible: the furthest any got (an SLO miss says by
        how much, a memory miss by how much the smallest layout overflows)."""
        rows, valid = self._rows(devices)
        if not valid.any():
            return f"indivisible: no TP × DP, MoE-TP × EP split of {devices} devices divides the model"
        reason = self.reason[:, valid, :]
        if np.any(reason == BELOW_SLO):
            user = self.metrics["tokens_per_s_per_user"][:, valid, :][reason == BELOW_SLO].max()
            return (f"below the SLO: the fastest layout that fits gives {user:.1f} tokens/s per user, "
                    f"under {self.min_tokens_per_user:g}")
        least = self.metrics["memory_gb"][:, valid, :].min()
        return (f"out of memory: even the leanest layout needs {least:.1f} GB per device, over the "
                f"{self.memory_limit / GB:.1f} GB limit")

    def summary(self, top: int = 10) -> dict[str, Any]:
        ranked = self.ranked(top)
        out: dict[str, Any] = {
            "policy": self.policy,
            "framework": self.framework or None,
            "devices": [int(d) for d in dict.fromkeys(self.space.devices.tolist())],
            "kv_len": self.kv_len,
            "min_tokens_per_user": self.min_tokens_per_user,
            "max_memory_gb": self.memory_limit / GB,
            "batch_meaning": BATCH_MEANING[self.space.batch_per],
            "evaluated": self.evaluated,
            "feasible": self.feasible,
            "rejected": self.rejected(),
            "best": self.layout(*ranked[0]) if ranked else None,
            "top": [self.layout(*i) for i in ranked],
        }
        if len(out["devices"]) > 1:
            by = []
            for n in out["devices"]:  # one entry per device count
                best = self.ranked(1, devices=n)
                by.append({"devices": n, "evaluated": self.count(n), "rejected": self.rejected(n),
                           "best": self.layout(*best[0]) if best else None,
                           "why_none": None if best else self.why_none(n)})
            out["by_devices"] = by
        return out

    # -------------------------------------------------------- every layout

    def write_csv(self, path: str) -> int:
        """Every evaluated layout, its metrics (empty where indivisible) and its reason."""
        s = self.space
        head = ["devices", "tp", "dp", "moe_tp", "ep", "batch", "batch_per_device", "tbo", *METRICS, "reason"]
        label = np.array(["feasible", *REASONS], dtype=object)

        def write(f) -> int:
            n = 0
            w = csv.writer(f)
            w.writerow(head)
            pos = np.full(len(s.tp), -1)
            pos[self.valid] = np.arange(len(self.valid))
            for t, tbo in enumerate(s.tbo):
                for row in range(len(s.tp)):  # rows of the output file, not evaluations
                    mult = int(s.tp[row]) if s.batch_per == "device" else 1
                    fixed = [int(s.devices[row]), int(s.tp[row]), int(s.dp[row]), int(s.moe_tp[row]), int(s.ep[row])]
                    u = pos[row]
                    for b, value in enumerate(s.batch.tolist()):
                        batch = value * mult
                        if u < 0:
                            values = [""] * len(METRICS)
                            why = "indivisible"
                        else:
                            values = [f"{self.metrics[k][t, u, b]:.6g}" for k in METRICS]
                            why = label[self.reason[t, u, b]]
                        w.writerow([*fixed, batch, f"{batch / fixed[1]:g}", tbo, *values, why])
                        n += 1
            return n

        return atomic_write(path, write, "--csv")  # whole or not at all: no truncated file left behind


def search(
    m: Model,
    hw: Hardware,
    wl: Workload,
    devices: Iterable[int],
    batches: Sequence[int] | np.ndarray = tuple(range(1, 513)),
    policy: str = "roofline",
    min_tokens_per_user: float | None = None,
    max_memory_gb: float | None = None,
    tp: Sequence[int] | None = None,
    moe_tp: Sequence[int] | None = None,
    tbo: Sequence[bool] = (False, True),
    batch_per: str | None = None,
    kv_len: int | None = None,
    redundant_experts: int = 0,
    mtp_accept: float = 1.0,
    decode: Callable[..., roofline.DecodeStep] | None = None,
    framework: "Framework | str | None" = None,
) -> Result:
    """Evaluate every layout of `m` on each device count with one call of the policy.

    `batch_per` defaults to the policy's (:func:`default_batch_per`). SLO and memory cap
    default to the workload's; the memory limit is the smaller of the cap and the capacity
    the policy allows weights and KV cache (the roofline: under the framework's memory rule,
    default SGLang). `kv_len` defaults to the workload's average KV length. `decode`
    replaces the named policy's function (same signature), e.g. seed002.decode under another
    reading of the seed. Batches a framework that requires CUDA graphs cannot capture are
    refused as beyond its graphs. `redundant_experts` (EPLB copies) and `mtp_accept` (MTP's
    accepted tokens per step) are passed to the policy."""
    decode = decode or policies().get(policy)
    if decode is None:
        raise InputError(f"unknown policy {policy!r} (known: {', '.join(policies())})")
    batch_per = default_batch_per(policy) if batch_per is None else batch_per
    if redundant_experts < 0:
        raise InputError(f"redundant experts must be ≥ 0, got {redundant_experts}")
    options: dict[str, Any] = {"mtp_accept": float(mtp_accept)} if mtp_accept != 1.0 else {}
    if redundant_experts:
        if policy != "roofline":
            raise InputError(f"policy {policy} has no redundant experts; use the roofline policy")
        options["redundant_experts"] = int(redundant_experts)
    space = build_space(m, devices, batches, tp, moe_tp, tbo, batch_per, redundant_experts)
    check_size(space.size)  # before the policy allocates arrays of that size
    slo = wl.min_tokens_per_user if min_tokens_per_user is None else float(min_tokens_per_user)
    cap = wl.max_memory_bytes if max_memory_gb is None else float(max_memory_gb) * GB
    kv = wl.avg_kv_len if kv_len is None else int(kv_len)

    valid = np.flatnonzero(~space.indivisible)
    col = lambda a: a[valid].astype(float)[:, None]  # noqa: E731 — unique layouts down axis U
    tp_u = col(space.tp)
    batch = space.batch.astype(float)[None, :]
    if batch_per == "device":
        batch = tp_u * batch
    layout = roofline.Layout(tp=tp_u, dp=col(space.dp), moe_tp=col(space.moe_tp), ep=col(space.ep), batch=batch)
    fw = load_framework(framework)
    if policy == "roofline" and fw.graph_required:  # refuse, per layout, what the framework cannot run
        graph_ok = np.broadcast_to(fw.in_graph(batch, tp_u), (len(valid), len(space.batch)))
        batch = np.where(graph_ok, batch, 1.0)  # evaluated at a runnable batch, then marked
    else:
        graph_ok = None
    if policy == "roofline":
        layout = replace(layout, batch=batch)
        step = decode(m, hw, wl, layout, kv, framework=fw, **options)  # the one evaluation: serial and TBO times
    else:
        step = decode(m, hw, wl, layout, kv, **options)
    capacity = np.asarray(step.memory_usable, dtype=float)  # what the framework lets weights and KV use
    limit = capacity if cap is None else np.minimum(cap, capacity)
    shape = (len(valid), len(space.batch))
    times = {False: step.step_time_no_overlap, True: step.step_time_tbo}
    step_time = np.stack([np.broadcast_to(times[t], shape) for t in space.tbo])  # (T, U, B)
    step = replace(step, step_time=step_time)
    per_device = roofline.tokens_per_s_per_device(step, layout)
    memory = np.broadcast_to(step.memory_bytes, shape)
    metrics = {
        "tokens_per_s_per_user": step.tokens_per_s_per_user,
        "tokens_per_s_per_device": per_device,
        "total_tokens_per_s": per_device * col(space.devices),
        "tpot_ms": step.tpot / MS,
        "memory_gb": np.broadcast_to(memory / GB, step_time.shape),
        "mfu": roofline.mfu(step, hw, wl),
    }
    bad = [k for k, v in metrics.items() if not np.all(np.isfinite(v))]
    if bad:  # a profile that yields inf or NaN is a bug or a broken profile: say so, do not rank it
        raise InputError(f"policy {policy} gave non-finite {bad[0]} on {hw.name}: check the hardware profile")
    reason = np.where(memory > limit, OUT_OF_MEMORY, FEASIBLE).astype(np.int8)
    reason = np.broadcast_to(reason, step_time.shape).copy()
    if graph_ok is not None:
        reason[:, ~graph_ok] = BEYOND_GRAPHS
    if slo is not None:
        reason[(reason == FEASIBLE) & (metrics["tokens_per_s_per_user"] < slo)] = BELOW_SLO
    return Result(space, valid, metrics, reason, policy, kv, slo, float(np.max(limit)),
                  framework=f"{fw.name} {fw.version}" if policy == "roofline" else "")


BAND_METRICS = ("tokens_per_s_per_user", "tokens_per_s_per_device", "total_tokens_per_s", "tpot_ms")


def add_bands(rows: list[dict[str, Any]], m: Model, hw: Hardware, wl: Workload, kv_len: int,
              policy: str = "roofline", framework: "Framework | str | None" = None, redundant_experts: int = 0,
              mtp_accept: float = 1.0) -> list[dict[str, Any]]:
    """Each listed layout (a :meth:`Result.layout` dict) with ``band_low`` and ``band_high`` of
    its times and throughputs (:mod:`moecalc.bands`): the listed layouts as arrays, the policy
    called once per end of the spread. Rows are changed in place and returned."""
    from . import bands

    if not rows or policy != "roofline":
        return rows
    col = lambda k: np.array([r[k] for r in rows], dtype=float)  # noqa: E731
    layout = roofline.Layout(tp=col("tp"), dp=col("dp"), moe_tp=col("moe_tp"), ep=col("ep"), batch=col("batch"))
    tbo = np.array([r["tbo"] for r in rows], dtype=bool)

    def figures(h: Hardware):
        step = roofline.decode(m, h, wl, layout, kv_len, mtp_accept, framework=load_framework(framework),
                               redundant_experts=redundant_experts)
        step = replace(step, step_time=np.where(tbo, step.step_time_tbo, step.step_time_no_overlap))
        per_device = roofline.tokens_per_s_per_device(step, layout)
        return np.stack([step.tokens_per_s_per_user * np.ones(len(rows)), per_device, per_device * col("devices"),
                         step.tpot / MS])

    low, high = bands.band(figures, hw)
    for i, r in enumerate(rows):
        r["band_low"] = {k: float(low[j, i]) for j, k in enumerate(BAND_METRICS)}
        r["band_high"] = {k: float(high[j, i]) for j, k in enumerate(BAND_METRICS)}
    return rows


def replicas(result: Result, target_tokens_per_s: float) -> list[dict[str, Any]]:
    """For each device count of `result`: its best feasible layout and how many copies of it
    serve `target_tokens_per_s` (whole instances: ceil(target / one instance's tokens/s)),
    hence how many devices in all; fewest devices first (ties: fewer instances). A count
    without a feasible layout is left out."""
    if not target_tokens_per_s > 0:
        raise InputError(f"target tokens/s must be positive, got {target_tokens_per_s}")
    out = []
    for n in dict.fromkeys(result.space.devices.tolist()):
        best = result.ranked(1, devices=n)
        if not best:
            continue
        lay = result.layout(*best[0])
        copies = int(np.ceil(target_tokens_per_s / lay["total_tokens_per_s"]))
        out.append({"devices": int(n), "instances": copies, "total_devices": copies * int(n),
                    "tokens_per_s": copies * lay["total_tokens_per_s"], "best": lay})
    return sorted(out, key=lambda e: (e["total_devices"], e["instances"]))
