"""Blackwell with FP4: the GB200 NVL72 profile, NVFP4/MXFP4 expert weights, and the new
system points (LMSYS GB200 Part I/II, TensorRT-LLM's 8 × B200 minimum-latency point).
Expected values are worked out by hand from the format specifications and datasheets."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from moecalc import profiles, validate
from moecalc.errors import InputError
from moecalc.policies import roofline as rl
from moecalc.units import dtype_bytes

MOECALC = Path(sys.executable).parent / "moecalc"
NEW_POINTS = ("lmsys-gb200-decode-part1", "lmsys-gb200-decode-bf16-fp8", "lmsys-gb200-decode-fp8-nvfp4",
              "lmsys-gb200-prefill-bf16-fp8", "lmsys-gb200-prefill-fp8-nvfp4", "trtllm-b200-min-latency")


def test_fp4_bytes_by_hand():
    # NVFP4: 16 values of 4 bits + one 8-bit E4M3 scale = 72 bits = 9 bytes per 16 values
    assert dtype_bytes("nvfp4") == pytest.approx(9 / 16)
    # MXFP4: 32 values of 4 bits + one 8-bit E8M0 scale = 136 bits = 17 bytes per 32 values
    assert dtype_bytes("mxfp4") == pytest.approx(17 / 32)
    assert rl.wire_bytes("nvfp4") == pytest.approx(0.5625)  # no extra FP32 scales: they are FP8's


def test_gb200_loads_with_its_datasheet_figures():
    hw = profiles.load_hardware("gb200")
    assert hw.scale_up_domain == 72  # NVL72: one NVLink domain
    # GB200 NVL72 datasheet, sparse rack totals / 72 GPUs / 2 for dense
    assert hw.peak("fp4") == pytest.approx(1440e15 / 72 / 2)
    assert hw.peak("fp8") == pytest.approx(720e15 / 72 / 2)
    assert hw.peak("bf16") == pytest.approx(360e15 / 72 / 2)
    assert hw.peak("nvfp4") == hw.peak("mxfp4") == hw.peak("fp4")
    assert hw.memory_bandwidth == pytest.approx(576e12 / 72)
    assert hw.scale_up_bandwidth == pytest.approx(130e12 / 72 / 2, rel=0.01)  # NVLink 5: 1.8 TB/s both ways
    for name, entry in hw.efficiency.items():
        if name not in ("tbo_overhead_us", "mma_tile_rows", "usable_memory"):
            assert entry["source"].startswith("TRANSFERRED from"), name  # nothing measured on GB200 yet


def test_fp4_needs_an_fp4_peak(model, workload):
    wl = replace(workload, expert_weight_dtype="nvfp4")
    with pytest.raises(InputError, match="peak_tflops.fp4"):
        rl.decode(model, profiles.load_hardware("h800"), wl, rl.Layout(batch=4), 1000)


def test_nvfp4_expert_weights_by_hand(model, workload):
    """At EP256 a device holds one routed expert per MoE layer: 3 matrices of 7168 × 2048.
    NVFP4 instead of FP8 saves 1 − 9/16 of a byte per weight, over 58 MoE layers."""
    hw = profiles.load_hardware("gb200")
    lay = rl.Layout(tp=1, dp=256, moe_tp=1, ep=256, batch=1)
    fp8 = rl.weight_bytes_per_device(model, replace(workload, weight_dtype="fp8"), lay)
    fp4 = rl.weight_bytes_per_device(model, replace(workload, weight_dtype="fp8", expert_weight_dtype="nvfp4"), lay)
    assert model.n_moe_layers == 58
    assert float(fp8 - fp4) == pytest.approx(58 * 3 * 7168 * 2048 * (1 - 9 / 16))
    dev = rl.device(hw, replace(workload, expert_weight_dtype="nvfp4"))
    assert dev.routed_flops == pytest.approx(10_000e12 * hw.efficiency["grouped_gemm"]["value"])
    assert dev.gemm_flops == pytest.approx(hw.peak(workload.weight_dtype) * hw.efficiency["gemm"]["value"])
    # the default: experts take the weight dtype
    assert rl.device(hw, workload).routed_flops == rl.device(hw, workload).grouped_flops


def test_nvfp4_experts_speed_up_memory_bound_decode(model, workload):
    hw = profiles.load_hardware("gb200")
    lay = rl.Layout(tp=1, dp=8, moe_tp=1, ep=8, batch=8)
    t8 = rl.decode(model, hw, workload, lay, 2000).moe_layer["routed_experts"]
    t4 = rl.decode(model, hw, replace(workload, expert_weight_dtype="nvfp4"), lay, 2000).moe_layer["routed_experts"]
    # weight reads dominate at 8 × 8 tokens over 32 experts per device: at most 9/16 of the bytes
    assert 0.5 < float(t4) / float(t8) < 0.75


def test_workload_expert_dtype_field(tmp_path):
    text = (profiles.PARAMS_DIR / "workload" / "seed-003.yaml").read_text(encoding="utf-8")
    p = tmp_path / "w.yaml"
    p.write_text(text + "\nexpert_weight_dtype: mxfp4\n", encoding="utf-8")
    wl = profiles.load_workload(p)
    assert wl.expert_dtype == "mxfp4" and wl.weight_dtype != "mxfp4"
    assert profiles.load_workload("seed-003").expert_dtype == profiles.load_workload("seed-003").weight_dtype
    p.write_text(text + "\nexpert_weight_dtype: fp3\n", encoding="utf-8")
    with pytest.raises(InputError, match="expert_weight_dtype"):
        profiles.load_workload(p)


@pytest.mark.parametrize("cmd", [
    ["decode", "--hardware", "gb200", "--tp", "1", "--dp", "8", "--ep", "8", "--batch", "64", "--kv-len", "2000"],
    ["prefill", "--hardware", "gb200", "--tp", "1", "--dp", "8", "--ep", "8", "--tokens-per-gpu", "8192"],
])
def test_cli_expert_dtype(cmd):
    out = {}
    for d in ("fp8", "nvfp4"):
        r = subprocess.run([str(MOECALC), *cmd, "--expert-dtype", d, "--json"], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        out[d] = json.loads(r.stdout)
        assert out[d]["expert_weight_dtype"] == d
    assert out["nvfp4"]["tokens_per_s_per_gpu"] > out["fp8"]["tokens_per_s_per_gpu"]


def test_cli_expert_dtype_bad_input():
    r = subprocess.run([str(MOECALC), "decode", "--hardware", "h800", "--tp", "1", "--batch", "4", "--kv-len", "100",
                        "--expert-dtype", "nvfp4"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "peak_tflops.fp4" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([str(MOECALC), "decode", "--hardware", "gb200", "--tp", "1", "--batch", "4", "--kv-len", "100",
                        "--expert-dtype", "int3"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr


# ---------------------------------------------------------------- the new system points


@pytest.fixture(scope="module")
def records():
    return {r["id"]: r for r in validate.validate()}


def test_at_least_18_points_each_with_a_band(records):
    assert len(records) >= 18
    for r in records.values():
        assert r["band_low"] <= r["computed"] <= r["band_high"], r["id"]
        assert math.isfinite(r["band_low"]) and r["band_low"] > 0


@pytest.mark.parametrize("pid", NEW_POINTS)
def test_new_point_loads_and_evaluates(records, pid):
    p = {q.id: q for q in validate.load_points()}[pid]
    r = records[pid]
    assert r["hardware"] in ("GB200", "B200") and math.isfinite(r["computed"]) and r["computed"] > 0
    assert p.source and p.setup and p.tolerance_pct > 0
    if not r["within"]:
        assert len(r["attribution"]) > 80
    # a figure per GPU or per user is not scaled by the 72-GPU domain
    assert r["computed"] < 10 * p.published


def test_point_conditions_are_read(records):
    points = {q.id: q for q in validate.load_points()}
    lo = points["lmsys-gb200-decode-fp8-nvfp4"]
    assert validate.workload(lo).expert_dtype == "nvfp4" and validate.workload(lo).kv_dtype == "fp8"
    trt = points["trtllm-b200-min-latency"]
    assert trt.mtp_draft == 3 and trt.framework == "trtllm" and trt.layout["moe_tp"] == 4 and trt.layout["ep"] == 2
    assert points["deepseek-profile-decode"].mtp_draft == 1 and points["deepseek-profile-decode"].framework == "sglang"


def test_per_gpu_metric_is_per_node_over_eight(records):
    """The same decode conditions in both metrics: per node is 8 × per GPU (published nodes of 8)."""
    p = {q.id: q for q in validate.load_points()}["lmsys-decode-2k"]
    m, hw = profiles.load_model("deepseek-v3"), profiles.load_hardware(p.hardware)
    per_gpu = validate.compute(replace(p, metric="output_tokens_per_s_per_gpu"), m, hw)
    assert validate.compute(p, m, hw) == pytest.approx(8 * per_gpu)


@pytest.mark.parametrize("field,value,match", [("mtp_draft", 0, "mtp_draft"), ("framework", 3, "framework"),
                                               ("dtypes", {"weight": "fp8", "kv": "bf16", "dispatch": "fp8",
                                                           "combine": "bf16", "expert": "fp5"}, "dtypes.expert")])
def test_new_fields_are_checked(tmp_path, field, value, match):
    import yaml

    data = yaml.safe_load(validate.SYSTEMS_FILE.read_text(encoding="utf-8"))
    data["points"] = [p for p in data["points"] if p["id"] == "trtllm-b200-min-latency"]
    data["points"][0][field] = value
    bad = tmp_path / "s.yaml"
    bad.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(InputError, match=match):
        validate.load_points(bad)
