"""Error bands: how far to trust a roofline figure, from the kernel calibration's residuals.

Each efficiency factor and latency floor of a hardware profile gets a *spread*, a pair
``(low, high)`` of speed ratios: how much slower (``low`` < 1) or faster (``high`` > 1) than
the model the kernels that pin it really ran. For entry E of hardware H (``band_rule`` in
``params/measurements/kernels.yaml`` holds the numbers):

* its points are the kernel points of H that pin E, plus the unpinned points of H of the same
  kernel (they check E without having set it); each gives ``q = measured speed / model speed``
  (a rate: measured / model; a time: model / measured);
* with at least ``min_points`` of them and a value measured on H, the spread is their
  ``low_percentile`` and ``high_percentile`` (numpy's linear interpolation);
* a value TRANSFERRED from a GPU of the same die (``same_die`` in the rule: H800, H100 and
  H200 are one GH100 die; B200 and GB200 one Blackwell die) carries the source GPU's spread
  of that entry: the same kernels on the same silicon, so the source's residuals are the
  evidence (recursively, if the source itself transferred it);
* with fewer (a factor pinned by one point meets it by construction, so its residual says
  nothing), or for a value TRANSFERRED from another die, the spread is the pooled one: the
  same percentiles over every kernel point of every GPU, lone pins left out;
* every spread contains 1 (the point estimate) and is widened to at least ±``min_halfwidth_pct``
  (the rounding of published figures) and narrowed to at most ±``max_halfwidth_pct``.

A fraction is multiplied by the ratio (capped at 1), a latency floor divided by it. The band
of a figure (:func:`band`) spans the figure evaluated at the four corners of two groups of
entries: what the GPU computes (GEMMs, attention, memory, kernel floors) and what the links
carry (scale-up, scale-out, all-reduce and dispatch floors), each group at its slow or its
fast end. Within a group the errors are taken as fully correlated, between the groups as
independent: a throughput's band is its all-slow and all-fast figures (wider, where several
factors matter, than independent errors would give; where one dominates, that factor's
percentile band), and a figure that compares compute with communication (the gain of
two-batch overlap) moves at the mixed corners.
"""

from __future__ import annotations

import re
from dataclasses import replace
from functools import lru_cache
from typing import Callable, Mapping

import numpy as np

from .errors import InputError
from .profiles import EFFICIENCY_FIELDS, Hardware, load_hardware, read_yaml

# The entries that get a spread: rates (fractions of a datasheet figure) and floors (µs).
SPREAD_FIELDS = tuple(n for n, (kind, _) in EFFICIENCY_FIELDS.items() if kind in ("fraction", "latency")
                      and n not in ("usable_memory", "tbo_overhead_us"))

Spread = Mapping[str, tuple[float, float]]
# The two groups whose errors are taken as independent of each other (see the docstring).
COMMUNICATION = ("scale_up", "scale_out", "scale_out_normal", "all_reduce_latency_us", "dispatch_latency_us")


@lru_cache(maxsize=1)
def _calibration() -> tuple[dict, tuple]:
    """(band rule, calibration records), computed once per process."""
    from . import calibrate

    rule = read_yaml(calibrate.KERNELS_FILE).get("band_rule")
    keys = ("low_percentile", "high_percentile", "min_halfwidth_pct", "max_halfwidth_pct", "min_points")
    if not isinstance(rule, dict) or any(not isinstance(rule.get(k), (int, float)) for k in keys):
        raise InputError(f"{calibrate.KERNELS_FILE}: field 'band_rule': must give {', '.join(keys)}")
    return rule, tuple(calibrate.evaluate())


def speed_ratio(record: Mapping) -> float:
    """measured speed / model speed of one calibration record (> 1: the kernel ran faster)."""
    if record["metric"] == "us":
        return record["model"] / record["measured"]
    return record["measured"] / record["model"]


def percentile_spread(ratios, rule: Mapping) -> tuple[float, float]:
    """(low, high) of `ratios` under the band rule: percentiles, containing 1, floored and capped."""
    q = np.asarray(ratios, dtype=float)
    lo, hi = np.percentile(q, [rule["low_percentile"], rule["high_percentile"]])
    wmin, wmax = rule["min_halfwidth_pct"] / 100.0, rule["max_halfwidth_pct"] / 100.0
    lo = float(np.clip(min(lo, 1.0 - wmin), 1.0 - wmax, 1.0))
    hi = float(np.clip(max(hi, 1.0 + wmin), 1.0, 1.0 + wmax))
    return lo, hi


def pooled_records(records) -> list:
    """Every calibration record except a lone pin (the only point setting its entry on its GPU
    meets it by construction: its residual is rounding, not evidence)."""
    pins: dict[tuple, int] = {}
    for r in records:
        if r["pins"] is not None:
            pins[(r["hardware"], r["pins"])] = pins.get((r["hardware"], r["pins"]), 0) + 1
    return [r for r in records if r["pins"] is None or pins[(r["hardware"], r["pins"])] > 1]


_TRANSFER = re.compile(r"\s*TRANSFERRED\s+from\s+([A-Za-z0-9-]+)", re.IGNORECASE)


def transfer_source(source: str) -> str | None:
    """The hardware key a TRANSFERRED entry names first ('TRANSFERRED from H800 (...)' → 'h800'),
    None if the entry is not transferred or names no GPU."""
    match = _TRANSFER.match(str(source))
    return match.group(1).lower() if match else None


def same_die(a: str, b: str, rule: Mapping) -> bool:
    """Whether hardware keys `a` and `b` are one die under the rule's ``same_die`` groups."""
    return any(a in group and b in group for group in rule.get("same_die") or ())


def spreads(hw: Hardware) -> dict[str, tuple[float, float]]:
    """The spread of each entry of `hw`'s efficiency section (see the module docstring)."""
    rule, records = _calibration()
    pooled = percentile_spread([speed_ratio(r) for r in pooled_records(records)], rule)
    # an entry of an earlier kernel period (profiles.at_period) is judged by that period's points
    period_entries = set(hw.kernel_periods.get(hw.period, {})) if hw.period else set()
    out = {}
    for name in SPREAD_FIELDS:
        entry = (hw.efficiency or {}).get(name)
        if not entry:
            continue
        period = hw.period if name in period_entries else None
        own = [r for r in records if r["hardware"] == hw.key and r.get("period") == period]
        kernels = {r["kernel"] for r in own if r["pins"] == name}
        points = [r for r in own if r["pins"] == name or (r["pins"] is None and r["kernel"] in kernels)]
        transferred = str(entry.get("source", "")).lstrip().upper().startswith("TRANSFERRED")
        src = transfer_source(entry.get("source", ""))
        if transferred and src and src != hw.key and same_die(hw.key, src, rule):
            out[name] = spreads(load_hardware(src)).get(name, pooled)
        elif transferred or len(points) < rule["min_points"]:
            out[name] = pooled
        else:
            out[name] = percentile_spread([speed_ratio(r) for r in points], rule)
    return out


def at(hw: Hardware, side: str, spread: Spread | None = None, comm_side: str | None = None) -> Hardware:
    """`hw` with every spread entry at its slow (``side='low'``) or fast (``'high'``) end; the
    communication entries at `comm_side` if given (a mixed corner), else at `side` too."""
    comm_side = side if comm_side is None else comm_side
    if side not in ("low", "high") or comm_side not in ("low", "high"):
        raise InputError(f"band side must be low or high, got {side!r} / {comm_side!r}")
    spread = spreads(hw) if spread is None else spread
    eff = dict(hw.efficiency or {})
    for name, (lo, hi) in spread.items():
        if name not in eff or not eff[name]:
            continue
        ratio = lo if (comm_side if name in COMMUNICATION else side) == "low" else hi
        kind = EFFICIENCY_FIELDS[name][0]
        value = eff[name]["value"]
        value = min(value * ratio, 1.0) if kind == "fraction" else value / ratio
        eff[name] = {**eff[name], "value": value}
    return replace(hw, efficiency=eff)


def band(fn: Callable[[Hardware], object], hw: Hardware, spread: Spread | None = None):
    """(low, high) of `fn(hw)` (a number or an array, e.g. over layouts) across the spread of
    `hw`'s efficiencies: `fn` evaluated at the four corners (compute slow or fast × links slow
    or fast), elementwise min and max (a time rises where a throughput falls)."""
    corners = [np.asarray(fn(at(hw, s, spread, c)), dtype=float) for s in ("low", "high") for c in ("low", "high")]
    lo, hi = np.minimum.reduce(corners), np.maximum.reduce(corners)
    return (float(lo), float(hi)) if lo.ndim == 0 else (lo, hi)
