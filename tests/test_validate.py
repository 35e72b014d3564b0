"""Calibration (kernel level) and validation (system level) of the roofline policy.

* every efficiency entry of every hardware profile has a source, and a transferred one says
  from where;
* every kernel point is within its stated tolerance, and the entries a set of points pins
  really are the fit to those points (mean log error ≈ 0);
* every system point is computed, within its tolerance or carrying an attribution;
* the stored expert-imbalance deployment parameter still solves the ratio it is defined by.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from moecalc import calibrate, profiles, validate
from moecalc.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
MOECALC = Path(sys.executable).parent / "moecalc"
ROOFLINE_HARDWARE = ("h800", "h20", "h20-3e", "h100", "h200", "b200", "gb200")


@pytest.fixture(scope="module")
def kernel_records():
    return calibrate.evaluate()


@pytest.fixture(scope="module")
def system_records():
    return validate.validate()


# ---------------------------------------------------------------- efficiency sources


@pytest.mark.parametrize("name", profiles.available("hardware"))
def test_every_efficiency_factor_has_a_source(name):
    raw = yaml.safe_load((profiles.PARAMS_DIR / "hardware" / f"{name}.yaml").read_text(encoding="utf-8"))
    for key, entry in (raw.get("efficiency") or {}).items():
        assert isinstance(entry, dict) and set(entry) == {"value", "source"}, (name, key)
        assert isinstance(entry["source"], str) and len(entry["source"].strip()) > 20, (name, key)


@pytest.mark.parametrize("name", ROOFLINE_HARDWARE)
def test_roofline_profiles_are_complete_and_say_what_is_transferred(name):
    hw = profiles.load_hardware(name)
    # optional entries given too, except the all-to-alls' own link entries: only an
    # earlier kernel period sets it (kernel_periods); absent, it is scale_out's
    assert set(profiles.EFFICIENCY_FIELDS) - set(hw.efficiency) <= {"scale_out_normal", "low_latency_domain"}, name
    for key, entry in hw.efficiency.items():
        src = entry["source"]
        if "TRANSFERRED" in src:
            assert "from" in src, (name, key)  # says from which GPU's measurement
    for src in hw.sources:
        assert src.strip()


def test_pinned_entries_exist_on_their_hardware():
    for p in calibrate.load_points():
        hw = profiles.at_period(profiles.load_hardware(p.hardware), p.period)
        if p.pins:
            assert hw.efficiency.get(p.pins), (p.id, p.pins)
        if p.period:  # a period point pins an entry its period sets, not a current one
            assert p.pins is None or p.pins in hw.kernel_periods[p.period], (p.id, p.pins)


# ---------------------------------------------------------------- calibration


def test_every_kernel_point_is_evaluated_and_within_tolerance(kernel_records):
    assert len(kernel_records) >= 60
    misses = [(r["id"], round(r["error_pct"], 1), r["tolerance_pct"]) for r in kernel_records if not r["within"]]
    assert not misses, misses
    for r in kernel_records:
        assert math.isfinite(r["model"]) and r["model"] > 0


def test_calibration_covers_every_kernel_family(kernel_records):
    families = {(r["hardware"], r["kernel"]) for r in kernel_records}
    for kernel in ("gemm", "grouped_gemm", "mla_decode", "attention_prefill", "deepep_normal", "deepep_low_latency"):
        assert ("h800", kernel) in families, kernel


def test_pinned_values_are_the_fit_to_their_points(kernel_records):
    """An entry pinned by several points sits where their mean log error is about zero: the
    profile value really is the calibration, not a number nudged afterwards."""
    groups = defaultdict(list)
    for r in kernel_records:
        if r["pins"]:
            # rates: model/measured; times: measured/model (a slower model is a lower rate)
            ratio = r["model"] / r["measured"]
            groups[(r["hardware"], r["pins"])].append(math.log(ratio if r["metric"] != "us" else 1 / ratio))
    assert groups
    for key, logs in groups.items():
        mean = sum(logs) / len(logs)
        assert abs(mean) < 0.035, (key, mean, len(logs))


def test_kernel_record_by_hand():
    """DeepGEMM's dense FP8 GEMM m=64, n=2112, k=7168 on H800 (its README: 206 TFLOPS): by
    hand, 2·64·2112·7168 FLOPs; the tile pads nothing (64 rows); bytes 64·7168·1.03125 +
    2112·7168 read, 2·64·2112 written after; the datasheet's 1,979 TFLOPS and 3,350 GB/s
    times the profile's calibrated efficiencies, plus the kernel floor."""
    p = next(p for p in calibrate.load_points() if p.id == "deepgemm-dense-m64-n2112-k7168")
    e = {k: v["value"] for k, v in profiles.load_hardware("h800").efficiency.items()}  # calibrated data
    flops = 2 * 64 * 2112 * 7168
    read = 64 * 7168 * (1 + 4 / 128) + 2112 * 7168
    bw = 3350e9 * e["memory"]
    t = max(flops / (1979e12 * e["gemm"]), read / bw) + 2 * 64 * 2112 / bw + e["kernel_latency_us"] * 1e-6
    (r,) = calibrate.evaluate([p])
    assert r["metric"] == "tflops"
    assert r["model"] == pytest.approx(flops / t / 1e12, rel=1e-9)
    assert r["error_pct"] == pytest.approx((flops / t / 1e12 / r["measured"] - 1) * 100, rel=1e-9)


def test_fit_fraction_by_hand():
    """One compute-bound point pins a fraction: DeepGEMM's contiguous grouped GEMM, 4 groups of
    8,192 × 4,096 × 7,168 at 1,297 TFLOPS on H800. By hand: 2·4·8192·4096·7168 FLOPs take
    FLOPs / 1,297e12 s; less the BF16 output written after the loop (4·8192·4096·2 B at
    3,350 GB/s × memory efficiency) and the kernel floor, the rest is the main loop at
    1,979 TFLOPS × x (the reads, 4·(8192 + 4096)·7168 B, take less)."""
    p = next(p for p in calibrate.load_points() if p.id == "deepgemm-contiguous-g4-m8192-n4096-k7168")
    e = {k: v["value"] for k, v in profiles.load_hardware("h800").efficiency.items()}
    flops = 2 * 4 * 8192 * 4096 * 7168
    bw = 3350e9 * e["memory"]
    loop = flops / 1297e12 - 4 * 8192 * 4096 * 2 / bw - e["kernel_latency_us"] * 1e-6
    assert 4 * (8192 + 4096) * 7168 / bw < loop
    assert calibrate.fit_fraction([p], "grouped_gemm") == pytest.approx(flops / loop / 1979e12, rel=1e-4)
    with pytest.raises(InputError):
        calibrate.fit_fraction([], "grouped_gemm")


def test_kernel_points_file_is_checked(tmp_path):
    bad = tmp_path / "k.yaml"
    bad.write_text("points:\n  - id: x\n    hardware: h800\n    kernel: warp_drive\n    conditions: {}\n"
                   "    metric: tflops\n    measured: 1\n    tolerance_pct: 5\n    source: s\n", encoding="utf-8")
    with pytest.raises(InputError, match="kernel"):
        calibrate.load_points(bad)


# ---------------------------------------------------------------- validation


def test_every_system_point_is_computed(system_records):
    assert len(system_records) >= 10
    for r in system_records:
        assert set(r) >= {"source", "setup", "metric", "published", "computed", "error_pct"}
        assert math.isfinite(r["computed"]) and r["computed"] > 0


STORED = yaml.safe_load((ROOT / "tests" / "data" / "validation_errors.yaml").read_text(encoding="utf-8"))
BAND = 0.3  # percentage points: a change of accuracy beyond this is a change to accept on purpose


def test_every_point_is_within_tolerance_or_explained(system_records):
    """The points outside their tolerance are exactly the accepted ones (stored within:
    false), and each says why with a figure: a new miss fails here until it is explained and
    accepted (tests/data/regenerate.py)."""
    outside = {r["id"] for r in system_records if not r["within"]}
    accepted = {k for k, v in STORED["validate"].items() if not v["within"]}
    assert outside == accepted, {"new misses": outside - accepted, "no longer missing": accepted - outside}
    for r in system_records:
        if not r["within"]:
            assert any(ch.isdigit() for ch in r["attribution"]) and len(r["attribution"]) > 80, r["id"]


@pytest.mark.parametrize("phase", ["validate", "calibrate"])
def test_every_error_is_the_accepted_one(system_records, kernel_records, phase):
    records = system_records if phase == "validate" else kernel_records
    stored = STORED[phase]
    assert [r["id"] for r in records] == list(stored), "points added or removed: regenerate tests/data"
    moved = {r["id"]: (round(r["error_pct"], 2), stored[r["id"]]["error_pct"]) for r in records
             if abs(r["error_pct"] - stored[r["id"]]["error_pct"]) > BAND}
    assert not moved, f"errors moved (now, accepted): {moved}; if intended, run tests/data/regenerate.py"


def test_records_by_hand():
    """Two records checked by hand against their published figure, not recomputed with the
    code's own error formula."""
    rec = {r["id"]: r for r in validate.validate(validate.load_points())}
    decode = rec["lmsys-decode-2k"]
    assert decode["published"] == 22282  # LMSYS: 22,282 output tokens/s per node
    # with the low-latency kernels of May 2025 (RDMA to every peer): about 6 % below it
    assert 20_500 < decode["computed"] < 21_500
    assert decode["error_pct"] == pytest.approx(100 * (decode["computed"] / 22282 - 1))
    assert decode["within"] is True and decode["tolerance_pct"] == 10
    ratio = rec["lmsys-decode-tbo-gain-32"]
    assert ratio["published"] == 0.73 and ratio["within"] is False  # TBO at batch 32 costs LMSYS 27 %
    # the model loses 15-20 % (each micro-batch pays its kernel floors, small kernels and launch
    # gaps again): 0.80 / 0.73 = +9.6 % to 0.85 / 0.73 = +16.4 %, beyond the ±10 % but for the
    # lowest ratios: an accepted miss
    assert 0.8 < ratio["computed"] < 0.85
    assert ratio["tolerance_pct"] == 10 and abs(ratio["computed"] / 0.73 - 1) > 0.10


def test_the_reference_figures_are_all_there(system_records):
    ids = {r["id"] for r in system_records}
    for required in ("deepseek-profile-prefill", "deepseek-profile-decode", "deepseek-day6-prefill",
                     "deepseek-day6-decode", "lmsys-prefill-1k", "lmsys-prefill-2k", "lmsys-prefill-4k",
                     "lmsys-decode-2k"):
        assert required in ids
    tol = {r["id"]: r["tolerance_pct"] for r in system_records}
    assert tol["deepseek-profile-prefill"] == tol["deepseek-profile-decode"] == 5  # the issue's ±5 %


def test_no_system_point_is_within_tolerance_by_construction_only(system_records):
    """The one point whose deployment parameter comes from its own source ratio says so."""
    rec = {r["id"]: r for r in system_records}
    four, perfect = rec["lmsys-prefill-4k"], rec["lmsys-prefill-4k-perfect-eplb"]
    assert "Not independent" in four["attribution"]
    assert four["error_pct"] == pytest.approx(perfect["error_pct"], abs=0.5)


def test_stored_imbalance_solves_its_defining_ratio():
    points = {p.id: p for p in validate.load_points()}
    solved = validate.imbalance_for_ratio(points["lmsys-prefill-4k-perfect-eplb"], 50302 / 59337)
    stored = {p.deployment["expert_imbalance"] for p in points.values() if p.deployment["expert_imbalance"] != 1.0}
    assert stored and all(abs(v - solved) < 0.01 for v in stored), (stored, solved)


def test_system_points_file_is_checked(tmp_path):
    data = yaml.safe_load(validate.SYSTEMS_FILE.read_text(encoding="utf-8"))
    data["points"][0]["layout"].pop("ep")
    bad = tmp_path / "s.yaml"
    bad.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(InputError, match="layout"):
        validate.load_points(bad)


def test_validate_cli_json(system_records):
    r = subprocess.run([str(MOECALC), "validate", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert [d["id"] for d in data] == [s["id"] for s in system_records]
    for d in data:
        assert set(d) >= {"source", "setup", "metric", "published", "computed", "error_pct"}
