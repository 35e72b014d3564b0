"""Error bands (moecalc.bands): spreads from calibration residuals, propagated through the
model; coverage and width of the validation bands. Expected values worked out by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moecalc import bands, profiles, validate
from moecalc.policies import roofline as rl

MOECALC = Path(sys.executable).parent / "moecalc"
RULE = {"low_percentile": 10, "high_percentile": 90, "min_halfwidth_pct": 3, "max_halfwidth_pct": 25, "min_points": 3}


def test_percentile_spread_by_hand():
    # five ratios 0.8 … 1.2: P10 at index 0.4 → 0.8 + 0.4 × 0.1 = 0.84; P90 at index 3.6 → 1.16
    assert bands.percentile_spread([0.8, 0.9, 1.0, 1.1, 1.2], RULE) == pytest.approx((0.84, 1.16))
    # a perfect fit still gets the ±3 % floor (published figures are rounded)
    assert bands.percentile_spread([1.0, 1.0, 1.0], RULE) == pytest.approx((0.97, 1.03))
    # every point slower than the model: the band still holds the point estimate, capped at −25 %
    assert bands.percentile_spread([0.5, 0.5, 0.6], RULE) == pytest.approx((0.75, 1.03))


def test_speed_ratio_flips_for_times():
    assert bands.speed_ratio({"metric": "tflops", "measured": 110.0, "model": 100.0}) == pytest.approx(1.1)
    assert bands.speed_ratio({"metric": "us", "measured": 110.0, "model": 100.0}) == pytest.approx(100 / 110)


def _record(hw, kernel, pins, measured, model=100.0, metric="tflops"):
    return {"hardware": hw, "kernel": kernel, "pins": pins, "measured": measured, "model": model, "metric": metric}


def test_spread_rule_on_synthetic_records(monkeypatch):
    """gemm: three points that pin it and one unpinned gemm point check it (4 ratios); attention:
    one pinned point (by construction ≈ 1): the pooled spread; a TRANSFERRED entry: pooled."""
    recs = (_record("h800", "gemm", "gemm", 80), _record("h800", "gemm", "gemm", 100),
            _record("h800", "gemm", "gemm", 110), _record("h800", "gemm", None, 120),
            _record("h800", "mla_decode", "attention", 100), _record("h20", "gemm", "gemm", 50))
    monkeypatch.setattr(bands, "_calibration", lambda: (RULE, recs))
    hw = profiles.load_hardware("h800")
    s = bands.spreads(hw)
    # gemm ratios 0.8, 1.0, 1.1, 1.2: P10 at index 0.3 → 0.86; P90 at index 2.7 → 1.17
    assert s["gemm"] == pytest.approx((0.86, 1.17))
    # pooled: every record but the lone attention pin (and the lone h20 gemm pin)
    pooled = bands.percentile_spread([0.8, 1.0, 1.1, 1.2], RULE)
    assert s["attention"] == pytest.approx(pooled)
    b200 = profiles.load_hardware("b200")
    assert bands.spreads(b200)["gemm"] == pytest.approx(pooled)  # TRANSFERRED from H800


def test_same_die_transfer_carries_the_source_spread(monkeypatch):
    """H100's gemm is TRANSFERRED from H800 (same GH100 die): it takes H800's gemm spread, not the
    pooled one; GB200's gemm comes from B200 (same die), whose gemm comes from H800 (another die):
    pooled. The same records as above."""
    recs = (_record("h800", "gemm", "gemm", 80), _record("h800", "gemm", "gemm", 100),
            _record("h800", "gemm", "gemm", 110), _record("h800", "gemm", None, 120),
            _record("h800", "mla_decode", "attention", 100))
    rule = {**RULE, "same_die": [["h800", "h100", "h200"], ["b200", "gb200"]]}
    monkeypatch.setattr(bands, "_calibration", lambda: (rule, recs))
    assert bands.spreads(profiles.load_hardware("h100"))["gemm"] == pytest.approx((0.86, 1.17))
    pooled = bands.percentile_spread([0.8, 1.0, 1.1, 1.2], RULE)
    assert bands.spreads(profiles.load_hardware("gb200"))["gemm"] == pytest.approx(pooled)
    assert bands.transfer_source("TRANSFERRED from H800 (fit to ...)") == "h800"
    assert bands.transfer_source("TRANSFERRED from H800/H100 (FlashAttention-3)") == "h800"
    assert bands.transfer_source("fit to DeepGEMM's rows") is None
    assert bands.same_die("h100", "h800", rule) and not bands.same_die("h20", "h800", rule)


def test_at_scales_fractions_and_floors():
    hw = profiles.load_hardware("h800")
    spread = {"gemm": (0.9, 1.1), "kernel_latency_us": (0.8, 1.25), "memory": (0.9, 1.2)}
    slow, fast = bands.at(hw, "low", spread), bands.at(hw, "high", spread)
    e = hw.efficiency
    assert slow.efficiency["gemm"]["value"] == pytest.approx(e["gemm"]["value"] * 0.9)
    assert fast.efficiency["kernel_latency_us"]["value"] == pytest.approx(e["kernel_latency_us"]["value"] / 1.25)
    assert slow.efficiency["kernel_latency_us"]["value"] == pytest.approx(e["kernel_latency_us"]["value"] / 0.8)
    assert fast.efficiency["memory"]["value"] == 1.0  # a fraction never exceeds its datasheet figure
    assert slow.efficiency["attention"] == e["attention"]  # outside the spread: unchanged


@pytest.mark.parametrize("name", ["h800", "h20", "b200", "gb200"])
def test_band_contains_the_point_for_decode_and_prefill(model, workload, name):
    hw = profiles.load_hardware(name)
    lay = rl.Layout(tp=1, dp=16, moe_tp=1, ep=16, batch=np.array([1.0, 16.0, 64.0]), tbo=False)
    tput = lambda h: rl.tokens_per_s_per_device(rl.decode(model, h, workload, lay, 2000), lay)  # noqa: E731
    lo, hi = bands.band(tput, hw)
    point = tput(hw)
    assert np.all(lo < point) and np.all(point < hi)
    tpot = lambda h: rl.decode(model, h, workload, lay, 2000).tpot  # noqa: E731
    tlo, thi = bands.band(tpot, hw)
    assert np.all(tlo < tpot(hw)) and np.all(tpot(hw) < thi)
    pre = lambda h: rl.prefill(model, h, workload, rl.Layout(tp=1, dp=16, ep=16), 8192, 2000, 0.0).time  # noqa: E731
    plo, phi = bands.band(pre, hw)
    assert plo < float(pre(hw)) < phi


def test_band_is_monotone_in_the_spread(model, workload):
    hw = profiles.load_hardware("h800")
    lay = rl.Layout(tp=1, dp=32, moe_tp=1, ep=32, batch=128, tbo=True)
    f = lambda h: rl.tokens_per_s_per_device(rl.decode(model, h, workload, lay, 4096), lay)  # noqa: E731
    widths = []
    for w in (0.0, 0.05, 0.10, 0.20):
        spread = {n: (1 - w, 1 + w) for n in bands.SPREAD_FIELDS}
        lo, hi = bands.band(f, hw, spread)
        widths.append((lo, hi))
    assert widths[0][0] == pytest.approx(widths[0][1])  # no spread, no band
    for (lo1, hi1), (lo2, hi2) in zip(widths, widths[1:]):
        assert lo2 < lo1 and hi2 > hi1


def test_band_summary_on_a_tiny_set():
    recs = [{"published": 100.0, "computed": 100.0, "band_low": 90.0, "band_high": 110.0},
            {"published": 120.0, "computed": 100.0, "band_low": 90.0, "band_high": 110.0},
            {"published": 95.0, "computed": 100.0, "band_low": 80.0, "band_high": 120.0}]
    s = validate.band_summary(recs)
    assert s["inside"] == 2 and s["coverage_pct"] == pytest.approx(200 / 3)
    assert s["median_halfwidth_pct"] == pytest.approx(10.0)  # half-widths 10, 10, 20 %


def test_every_shipped_spread_is_bounded():
    for name in ("h800", "h20", "h100", "b200", "gb200"):
        for entry, (lo, hi) in bands.spreads(profiles.load_hardware(name)).items():
            assert 0.75 <= lo <= 0.97 and 1.03 <= hi <= 1.25, (name, entry, lo, hi)


def test_cli_decode_and_prefill_report_bands():
    r = subprocess.run([str(MOECALC), "decode", "--hardware", "h800", "--tp", "1", "--dp", "32", "--ep", "32",
                        "--batch", "32", "--kv-len", "2000", "--json"], capture_output=True, text=True, timeout=60)
    d = json.loads(r.stdout)
    for k in ("tpot_ms", "tokens_per_s_per_user", "tokens_per_s_per_gpu", "tokens_per_s_per_node"):
        assert d["band_low"][k] < d[k] < d["band_high"][k], k
    r = subprocess.run([str(MOECALC), "prefill", "--hardware", "h800", "--tp", "1", "--dp", "32", "--ep", "32",
                        "--tokens-per-gpu", "8192", "--json"], capture_output=True, text=True, timeout=60)
    d = json.loads(r.stdout)
    for k in ("time_ms", "tokens_per_s_per_gpu", "input_tokens_per_s_per_node"):
        assert d["band_low"][k] < d[k] < d["band_high"][k], k


def test_cli_search_reports_bands():
    r = subprocess.run([str(MOECALC), "search", "--hardware", "h800", "--devices", "8,16", "--top", "3", "--json"],
                       capture_output=True, text=True, timeout=60)
    d = json.loads(r.stdout)
    rows = d["top"] + [e["best"] for e in d["by_devices"] if e["best"]]
    assert len(rows) >= 4
    for row in rows:
        for k in ("tokens_per_s_per_device", "tpot_ms", "tokens_per_s_per_user"):
            assert row["band_low"][k] < row[k] < row["band_high"][k], k


def test_mixed_corners_move_a_compute_over_communication_ratio(model, workload):
    """A TBO gain compares compute with communication: with both groups slow or both fast it
    barely moves, at the mixed corners it does; a throughput's extremes stay all-slow/all-fast."""
    hw = profiles.load_hardware("h800")
    spread = {n: (0.9, 1.1) for n in bands.SPREAD_FIELDS}
    mixed = bands.at(hw, "low", spread, comm_side="high")
    assert mixed.efficiency["gemm"]["value"] == pytest.approx(hw.efficiency["gemm"]["value"] * 0.9)
    assert mixed.efficiency["scale_out"]["value"] == pytest.approx(min(hw.efficiency["scale_out"]["value"] * 1.1, 1))
    lay = rl.Layout(tp=1, dp=72, moe_tp=1, ep=72, batch=256)
    gain = lambda h: (lambda s: s.step_time_no_overlap / s.step_time_tbo)(rl.decode(model, h, workload, lay, 2000))  # noqa: E731
    lo, hi = bands.band(gain, hw, spread)
    assert hi - lo > 0.02 * float(gain(hw))
    tput = lambda h: rl.decode(model, h, workload, lay, 2000).tokens_per_s_per_user  # noqa: E731
    assert bands.band(tput, hw, spread) == pytest.approx(
        (float(tput(bands.at(hw, "low", spread))), float(tput(bands.at(hw, "high", spread)))))


def test_a_missing_band_rule_is_one_clear_error(tmp_path, monkeypatch):
    import yaml

    from moecalc import calibrate
    from moecalc.errors import InputError

    data = yaml.safe_load(calibrate.KERNELS_FILE.read_text(encoding="utf-8"))
    data["band_rule"].pop("min_points")
    bad = tmp_path / "kernels.yaml"
    bad.write_text(yaml.safe_dump(data), encoding="utf-8")
    monkeypatch.setattr(calibrate, "KERNELS_FILE", bad)
    bands._calibration.cache_clear()
    try:
        with pytest.raises(InputError, match="band_rule"):
            bands.spreads(profiles.load_hardware("h800"))
    finally:
        bands._calibration.cache_clear()
