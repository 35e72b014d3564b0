"""Kernel periods: a measurement is modelled with the kernels of its time (profiles.at_period)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import yaml

from moecalc import calibrate, profiles, validate
from moecalc.errors import InputError
from moecalc.policies import roofline as rl

H800 = profiles.load_hardware("h800")
FEB = profiles.at_period(H800, "2025-02")


def test_a_period_replaces_only_the_entries_it_lists():
    listed = {k for k in H800.kernel_periods["2025-02"] if k != "description"}
    assert listed == {"attention", "scale_out_normal", "low_latency_domain", "dispatch_latency_us"}
    assert FEB.period == "2025-02" and H800.period is None
    for name, entry in H800.efficiency.items():
        if name not in listed:
            assert FEB.efficiency[name] == entry, name
    # by hand: FlashMLA's release kernel, 580 of the 989.5 BF16 TFLOPS
    assert FEB.efficiency["attention"]["value"] == pytest.approx(580 / 989.5, abs=0.001)
    assert profiles.at_period(H800, None) is H800


def test_an_unknown_period_is_one_error_naming_the_profile():
    with pytest.raises(InputError, match=r"h800\.yaml: no kernel period '2024-11'.*has: 2025-02"):
        profiles.at_period(H800, "2024-11")
    with pytest.raises(InputError, match="has: none"):
        profiles.at_period(profiles.load_hardware("gb200"), "2025-02")


def test_a_malformed_period_in_a_profile_is_refused(tmp_path):
    data = yaml.safe_load(H800.path.read_text(encoding="utf-8"))
    data["kernel_periods"]["Feb 2025"] = data["kernel_periods"].pop("2025-02")
    bad = tmp_path / "h.yaml"
    bad.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(InputError, match="kernel_periods.Feb 2025.*unknown key"):
        profiles.load_hardware(bad)
    data["kernel_periods"] = {"2025-02": {"description": "x", "attention": {"value": 1.7, "source": "y"}}}
    bad.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(InputError, match="attention.value"):
        profiles.load_hardware(bad)


def test_the_all_to_alls_of_the_period_by_hand(model):
    """DeepEP's normal kernels run at scale_out_normal (absent: scale_out); the release-time
    low-latency kernels reach every peer over RDMA, at scale_out, with their own floor."""
    cur, feb = rl.device(H800), rl.device(FEB)
    assert cur.scale_out_normal_bandwidth == cur.scale_out_bandwidth == pytest.approx(50e9 * 0.88)
    assert feb.scale_out_normal_bandwidth == pytest.approx(50e9 * 0.74)
    assert feb.scale_out_bandwidth == cur.scale_out_bandwidth
    nbytes, ranks = 7.5e6, 128  # one rank's dispatch at EP128
    rdma, nvl = 50e9 * 0.88, 200e9 * H800.efficiency["scale_up"]["value"]
    now = max(nbytes * 7 / 128 / nvl, nbytes * 120 / 128 / rdma) + 28e-6  # 7 peers in the node over NVLink
    then = nbytes * 127 / 128 / rdma + 19e-6  # every peer over RDMA
    assert rl.low_latency_a2a_time(nbytes, ranks, cur) == pytest.approx(now)
    assert rl.low_latency_a2a_time(nbytes, ranks, feb) == pytest.approx(then)
    normal = [rl.normal_a2a_time(4096.0, 7168.0, 32, model, d) for d in (cur, feb)]
    floors = [d.eff.dispatch_latency for d in (cur, feb)]
    assert (normal[1] - floors[1]) / (normal[0] - floors[0]) == pytest.approx(0.88 / 0.74)  # RDMA-bound at EP32


def test_the_low_latency_floors_are_their_fits():
    """Both low-latency floors are the log-least-squares fits to their own twelve rows."""
    for period, stored in ((None, 28), ("2025-02", 19)):
        rows = [p for p in calibrate.load_points() if p.hardware == "h800" and p.period == period
                and p.pins == "dispatch_latency_us"]
        assert len(rows) == 12
        assert calibrate.fit_fraction(rows, "dispatch_latency_us", lo=0.0, hi=100.0) == pytest.approx(stored, abs=0.6)


def test_the_release_kernels_are_their_own_calibration_points():
    records = {r["id"]: r for r in calibrate.evaluate()}
    flashmla = records["flashmla-compute-bound-2025-02"]
    assert flashmla["period"] == "2025-02" and flashmla["pins"] == "attention"
    assert flashmla["model"] == pytest.approx(580, rel=0.01)  # pinned: met by construction
    assert records["flashmla-compute-bound-2025-04"]["model"] == pytest.approx(660, rel=0.01)
    feb = [p for p in calibrate.load_points() if p.period == "2025-02" and p.pins == "scale_out_normal"]
    assert len(feb) == 4
    assert calibrate.fit_fraction(feb, "scale_out_normal") == pytest.approx(0.74, abs=0.005)


def test_deepseeks_points_run_the_kernels_of_their_time(model):
    """DeepSeek's profile data and day-6 figures (February-March 2025) use period 2025-02,
    and the computed figure is the one at that period's efficiencies."""
    points = {p.id: p for p in validate.load_points()}
    for pid in ("deepseek-profile-prefill", "deepseek-profile-decode", "deepseek-day6-prefill",
                "deepseek-day6-decode"):
        assert points[pid].kernels == "2025-02", pid
    for p in points.values():  # LMSYS's H100 blog (2025-05-05): the low-latency kernels before NVLink
        if p.id.startswith("lmsys-") and p.hardware == "h100":
            assert p.kernels == "2025-05", p.id
        elif not p.id.startswith("deepseek"):
            assert p.kernels is None, p.id
    decode = points["deepseek-profile-decode"]
    feb = {"attention": 0.586, "scale_out_normal": 0.74, "low_latency_domain": 1, "dispatch_latency_us": 19}
    by_hand = replace(H800, efficiency={**H800.efficiency, **{k: {"value": v, "source": "x"} for k, v in feb.items()}})
    records = {r["id"]: r for r in validate.validate([decode])}
    assert records[decode.id]["computed"] == pytest.approx(validate.compute(decode, model, by_hand))
    assert records[decode.id]["kernels"] == "2025-02"
    # the release kernels are slower: the computed figure falls
    assert records[decode.id]["computed"] < validate.compute(decode, model, H800)


def test_a_system_point_naming_an_unknown_period_is_refused(tmp_path):
    data = yaml.safe_load(validate.SYSTEMS_FILE.read_text(encoding="utf-8"))
    data["points"][0]["kernels"] = "2031-01"
    bad = tmp_path / "s.yaml"
    bad.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(InputError, match="no kernel period '2031-01'"):
        validate.load_points(bad)
    data["points"][0]["kernels"] = 202502
    bad.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(InputError, match="field 'kernels'"):
        validate.load_points(bad)


# ---------------------------------------------------------------- per-point conditions (validate)


def test_an_aggregated_point_is_its_decode_step_plus_the_prompts_it_carries():
    """In-flight batching at 384 per GPU, 1,024-token prompts and 2,048-token outputs: each step
    carries 384 × 1,024 / 2,048 = 192 prompt tokens beside its 384 decode tokens; output tokens/s
    per GPU = 384 / (decode step + prefill of 192 tokens). By hand from the two phase models."""
    p = next(q for q in validate.load_points() if q.id == "trtllm-b200-max-throughput")
    m, hw = profiles.load_model("deepseek-v3"), profiles.load_hardware("b200")
    wl = validate.workload(p)
    fw = replace(validate._framework("trtllm"), expert_imbalance=1.235)
    layout = rl.Layout(tp=1, dp=8, moe_tp=1, ep=8, batch=384, tbo=False)
    kw = dict(expert_imbalance=1.235, redundant_experts=0, framework=fw)
    step = rl.decode(m, hw, wl, layout, 1024 + 2048 / 2, 1.0, **kw).step_time
    prompt = rl.prefill(m, hw, wl, layout, 192.0, 1024, 0.0, **kw).time
    assert validate.compute(p, None, hw) == pytest.approx(384 / float(step + prompt), rel=1e-9)


def test_a_point_may_name_its_model_all_to_all_and_nics():
    points = {q.id: q for q in validate.load_points()}
    v32 = points["sglang-v32-b200-bs8"]
    assert v32.model == "deepseek-v3.2" and v32.a2a == "allgather_reducescatter"
    b200 = profiles.load_hardware("b200")
    as_v3 = validate.compute(replace(v32, model="deepseek-v3"), None, b200)
    assert validate.compute(v32, None, b200) != pytest.approx(as_v3, rel=1e-3)  # the sparse model is used
    with_deepep = validate.compute(replace(v32, a2a="deepep_low_latency"), None, b200)
    assert validate.compute(v32, None, b200) != pytest.approx(with_deepep, rel=1e-3)
    h20 = points["antgroup-h20-decode-base"]
    assert h20.scale_out_bandwidth == pytest.approx(25e9)  # 4 × 400 Gb/s per 8-GPU node
    hw = profiles.load_hardware("h20")
    slower = validate.compute(replace(h20, scale_out_bandwidth=12.5e9), None, hw)
    assert slower < validate.compute(h20, None, hw) < validate.compute(replace(h20, scale_out_bandwidth=50e9), None, hw)


@pytest.mark.parametrize("field, value, match", [
    ("a2a", "nccl", "field 'a2a'"),
    ("model", "deepseek-v9", "deepseek-v9"),
    ("scale_out_bandwidth_gb_s", -25, "scale_out_bandwidth_gb_s"),
])
def test_bad_point_conditions_are_one_error(tmp_path, field, value, match):
    data = yaml.safe_load(validate.SYSTEMS_FILE.read_text(encoding="utf-8"))
    data["points"][1][field] = value
    bad = tmp_path / "s.yaml"
    bad.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(InputError, match=match):
        validate.load_points(bad)
