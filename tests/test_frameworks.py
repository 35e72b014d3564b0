"""Framework profiles (params/framework/): loading, memory rules, CUDA graphs, host time,
all-to-all choice, and their CLI. Expected values come from the frameworks' own defaults (as
the profiles cite them) and the device capacities, computed by hand in the comments."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moecalc import frameworks, profiles
from moecalc.errors import InputError
from moecalc.policies import roofline as rl
from moecalc.units import GiB, MiB

H200_REPORTED = 143_771 * MiB  # nvidia-smi memory.total, 150.754820096 GB


@pytest.fixture(scope="module")
def h200():
    return profiles.load_hardware("h200")


MOECALC = Path(sys.executable).with_name("moecalc")


def _cli(*argv):
    return subprocess.run([str(MOECALC), *argv], capture_output=True, text=True, timeout=60)


def _yaml(tmp_path, name="custom", **changes):
    """A copy of sglang.yaml with some entries' values replaced ("section.key": value)."""
    import yaml

    data = yaml.safe_load((profiles.PARAMS_DIR / "framework" / "sglang.yaml").read_text())
    for key, value in changes.items():
        section, field = key.split("__")
        data[section][field] = {"value": value, "source": "test"}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


# ---------------------------------------------------------------- loading


def test_shipped_profiles_hold_the_frameworks_defaults():
    sgl, trt, vll = (frameworks.load_framework(n) for n in ("sglang", "trtllm", "vllm"))
    assert (sgl.memory_rule, sgl.memory_fraction, sgl.reserved_bytes) == ("total", 0.835, 0.0)
    assert (sgl.graph_max_batch, sgl.graph_max_batch_tp4) == (256, 512)  # memory_hook.py, 60-160 GiB GPUs
    assert (trt.memory_rule, trt.memory_fraction, trt.graph_max_batch) == ("free", 0.9, 128)
    assert (vll.memory_rule, vll.memory_fraction, vll.graph_max_batch) == ("total", 0.92, 512)
    assert (sgl.a2a_decode, sgl.a2a_prefill) == ("deepep_low_latency", "deepep_normal")
    assert vll.a2a_decode == trt.a2a_decode == "allgather_reducescatter"
    assert all(f.overlap_scheduler for f in (sgl, trt, vll))
    assert frameworks.load_framework(None).key == "sglang"  # the default
    assert all(v for v in sgl.sources.values())
    # serving: sglang 0.5.23 memory_hook.py and vllm 0.33.0 arg_utils.py both default to 8192
    # prompt tokens per step on 60-160 GiB GPUs; TensorRT-LLM's max_num_tokens is 8192 too
    assert (sgl.chunk_tokens, vll.chunk_tokens, trt.chunk_tokens) == (8192, 8192, 8192)
    assert not any(f.kv_layerwise for f in (sgl, trt, vll))  # all send the KV after the forward
    assert all(f.kv_nics == 1 and f.redundant_experts == 32 for f in (sgl, trt, vll))
    assert all(f.sources[f"serving.{k}"] for f in (sgl, trt, vll) for k in ("chunked_prefill_tokens", "kv_transfer_nics"))


def test_a_profile_without_serving_data_is_one_line(tmp_path):
    import yaml

    data = yaml.safe_load((profiles.PARAMS_DIR / "framework" / "vllm.yaml").read_text())
    del data["serving"]
    path = tmp_path / "bare.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    with pytest.raises(InputError, match=r"field 'serving'"):
        frameworks.load_framework(str(path))


@pytest.mark.parametrize("change, field", [
    ({"memory__rule": "half"}, "memory.rule.value"),
    ({"memory__fraction": 1.5}, "memory.fraction.value"),
    ({"all_to_all__decode": "carrier-pigeon"}, "all_to_all.decode.value"),
    ({"cuda_graph__max_batch": 0}, "cuda_graph.max_batch.value"),
    ({"scheduler__overlap": "yes"}, "scheduler.overlap.value"),
    ({"serving__kv_transfer_nics": 0}, "serving.kv_transfer_nics.value"),
    ({"serving__mtp_accept": 0.5}, "serving.mtp_accept.value"),
    ({"serving__chunked_prefill_tokens": 8192.5}, "serving.chunked_prefill_tokens.value"),
])
def test_bad_profile_is_one_line_naming_file_and_field(tmp_path, change, field):
    path = _yaml(tmp_path, **change)
    with pytest.raises(InputError) as e:
        frameworks.load_framework(str(path))
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and f"'{field}'" in msg


def test_unknown_framework_is_one_line():
    with pytest.raises(InputError, match=r"unknown framework profile 'tgi' \(known: sglang, trtllm, vllm\)"):
        frameworks.load_framework("tgi")
    r = _cli("decode", "--hardware", "h800", "--tp", "1", "--batch", "8", "--kv-len", "100", "--framework", "tgi")
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1
    assert "unknown framework profile 'tgi'" in r.stderr


# ---------------------------------------------------------------- memory rules


def test_memory_rules_by_hand(m, wl, h200):
    assert h200.memory_device_bytes == pytest.approx(150.754820096e9)
    lay = rl.Layout(tp=8, dp=1, moe_tp=1, ep=8, batch=1)
    w = float(rl.weight_bytes_per_device(m, wl, lay))
    # SGLang: 0.835 × 150.7548 GB = 125.880 GB for weights and KV, whatever the weights
    assert float(rl.usable_memory(h200, "sglang", w)) == pytest.approx(0.835 * 150.754820096e9)
    # vLLM: 0.92 × 150.7548 GB − 5 GiB (activations, graphs) = 133.326 GB
    assert float(rl.usable_memory(h200, "vllm", w)) == pytest.approx(0.92 * 150.754820096e9 - 5 * GiB)
    # TensorRT-LLM: the weights, then 0.9 of what is left after them and 5 GiB of runtime buffers
    assert float(rl.usable_memory(h200, "trtllm", w)) == pytest.approx(w + 0.9 * (150.754820096e9 - w - 5 * GiB))


def test_trtllm_answers_what_sglangs_memory_rule_refuses(m, wl, h200):
    """8 × H200, attention TP8, MoE EP8, 75 sequences at 8,192 KV tokens (BF16 KV: 61 layers ×
    576 × 2 B = 70,272 B per token, 43.2 GB for 75 × 8,192 tokens), weights ≈ 89 GB: SGLang's
    0.835 × 150.75 GB = 125.9 GB is too little, TensorRT-LLM's 89 + 0.9 × (150.75 − 89 − 5.4)
    ≈ 139.8 GB holds it."""
    bf16 = profiles.Workload(**{**wl.__dict__, "kv_dtype": "bf16"})
    lay = rl.Layout(tp=8, dp=1, moe_tp=1, ep=8, batch=75)
    kv = float(rl.kv_bytes_per_device(m, bf16, 75, 8192))
    assert kv == pytest.approx(75 * 8192 * 61 * 576 * 2)
    sgl = rl.decode(m, h200, bf16, lay, 8192, framework="sglang")
    with pytest.raises(InputError, match=r"does not fit on H200.*under SGLang 0\.5\.23's memory rule, over by"):
        rl.check_fits(sgl, h200, "batch 75")
    trt = rl.decode(m, h200, bf16, lay, 8192, framework="trtllm")
    rl.check_fits(trt, h200, "batch 75")  # no error
    rl.check_fits(sgl, h200, "batch 75", framework="trtllm")  # the same step under TensorRT-LLM's rule: fits
    with pytest.raises(InputError, match=r"under SGLang 0\.5\.23's memory rule"):
        rl.check_fits(trt, h200, "batch 75", framework="sglang")
    assert float(rl.max_batch(m, h200, bf16, lay, 8192, framework="trtllm")) > 75 > float(
        rl.max_batch(m, h200, bf16, lay, 8192, framework="sglang"))
    # and through the command line
    base = ["decode", "--hardware", "h200", "--tp", "8", "--ep", "8", "--batch", "75", "--kv-len", "8192",
            "--dtype", "bf16", "--json"]
    r = _cli(*base)
    assert r.returncode == 2 and "does not fit" in r.stderr
    r = _cli(*base, "--framework", "trtllm")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["framework"]["name"] == "TensorRT-LLM" and d["fits"] is True
    assert d["memory_capacity_gb"] == pytest.approx(150.754820096)


# ---------------------------------------------------------------- CUDA graphs and host time


def test_batch_beyond_required_graphs_is_refused(tmp_path, m, wl):
    hw = profiles.load_hardware("h800")
    path = _yaml(tmp_path, cuda_graph__required=True, cuda_graph__max_batch=64, cuda_graph__max_batch_tp4=64)
    lay = rl.Layout(tp=1, dp=16, moe_tp=1, ep=16, batch=64)
    rl.decode(m, hw, wl, lay, 2048, framework=str(path))  # at the limit: runs
    with pytest.raises(InputError, match=r"runs decode only inside CUDA graphs .* up to 64 .* batch 65 is larger"):
        rl.decode(m, hw, wl, rl.Layout(tp=1, dp=16, moe_tp=1, ep=16, batch=65), 2048, framework=str(path))
    r = _cli("decode", "--hardware", "h800", "--tp", "1", "--ep", "16", "--batch", "65", "--kv-len", "2048",
             "--framework", str(path))
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "CUDA graphs" in r.stderr
    # the search marks such layouts instead of ranking them
    from moecalc import search

    res = search.search(m, hw, wl, [16], np.array([32, 64, 65, 128]), framework=str(path), tp=[1])
    assert res.rejected()["beyond the framework's CUDA graphs"] > 0
    assert all(row["batch"] <= 64 for row in res.summary(50)["top"])


def test_eager_steps_pay_a_host_launch_per_kernel(m, wl):
    """Above SGLang's 256-sequence graph (TP1) every kernel waits for an 8 µs host launch: a
    MoE layer of the roofline's 21 kernels then takes at least 21 × 8 = 168 µs."""
    hw = profiles.load_hardware("h800")
    lay = rl.Layout(tp=1, dp=8, moe_tp=1, ep=8, batch=np.array([256.0, 257.0]))
    s = rl.decode(m, hw, wl, lay, 128)
    assert list(np.asarray(s.in_graph)) == [True, False]
    moe = {k: np.asarray(v)[1] for k, v in s.moe_layer.items()}
    assert sum(moe.values()) >= 21 * 8e-6
    assert float(np.asarray(s.step_time)[1]) > float(np.asarray(s.step_time)[0])


def test_host_time_hides_behind_the_gpu_only_with_the_overlapped_scheduler(tmp_path, m, wl):
    hw = profiles.load_hardware("h800")
    lay = rl.Layout(tp=1, dp=8, moe_tp=1, ep=8, batch=32)
    on = rl.decode(m, hw, wl, lay, 2048, framework="sglang")
    off = rl.decode(m, hw, wl, lay, 2048, framework=str(_yaml(tmp_path, scheduler__overlap=False)))
    # sglang#5608: 16 / 3053.86 − 16 / 3458.31 s = 0.613 ms of host work per step
    assert float(off.step_time - on.step_time) == pytest.approx(16 / 3053.86 - 16 / 3458.31, abs=5e-6)
    slow_host = _yaml(tmp_path, "slow", scheduler__host_step_us=1e6)  # a second of host work per step
    assert float(rl.decode(m, hw, wl, lay, 2048, framework=str(slow_host)).step_time) == pytest.approx(1.0)


# ---------------------------------------------------------------- all-to-all


def test_allgather_reducescatter_by_hand(m, wl):
    """vLLM's default MoE path at attention TP8, EP8 on one H200 node, 64 sequences: no
    gather (one DP rank holds every token), then the expert outputs reduce-scattered over the
    8 GPUs and gathered back inside the TP group: (7/8 + 7/8) × 64 × 7168 × 2 B over NVLink at
    450 GB/s × 0.70, plus the 8-GPU all-reduce floor (12.5 µs, nccl-tests on 8 H20, DeepEP#303)."""
    hw = profiles.load_hardware("h200")
    s = rl.decode(m, hw, wl, rl.Layout(tp=8, dp=1, moe_tp=1, ep=8, batch=64), 2048, framework="vllm")
    assert float(s.moe_layer["dispatch"]) == 0.0
    # the op also pays one launch gap (1 µs) inside the CUDA graph
    expected = (7 / 8 + 7 / 8) * 64 * 7168 * 2 / (450e9 * 0.70) + 12.5e-6 + 1e-6
    assert float(s.moe_layer["combine"]) == pytest.approx(expected, rel=1e-9)
    assert "a2a_kernels" not in s.moe_layer


# ---------------------------------------------------------------- overheads in the roofline (issue 12, items 2-6)


def test_kernels_per_moe_layer_and_their_gaps(m, wl):
    """SGLang's DeepSeek decode layer runs 32 kernels (the trace's D4 table: 15 attention, 5
    router, the MoE's GEMMs, activations, quantizations and the low-latency send/receive
    halves); the roofline prices 21 and adds 11 small ones. Each of the 32 pays the 1 µs
    launch gap inside a CUDA graph, each of the 11 a 3.2 µs kernel floor: with EP1 at TP1 (no
    communication) a MoE layer is 32 × 1 + 11 × 3.2 = 67.2 µs slower than without them."""
    import dataclasses

    hw = profiles.load_hardware("h800")
    assert sum(rl.KERNELS[k] for k in ("attn_norm", "qkv_a_proj", "q_b_proj", "q_absorb", "rope_cache", "attention",
                                       "o_absorb", "o_proj", "moe_norm", "gate", "shared_expert", "routed_experts",
                                       "a2a_kernels")) == 21
    assert sum(rl.EXTRA_KERNELS.values()) == 11
    bare = dict(hw.efficiency)
    bare["launch_gap_us"] = {"value": 0.0, "source": "test"}
    lay = rl.Layout(tp=1, dp=1, moe_tp=1, ep=1, batch=8)
    with_gaps = rl.decode(m, hw, wl, lay, 1024)
    no_gaps = rl.decode(m, dataclasses.replace(hw, efficiency=bare), wl, lay, 1024)
    ops = [k for k, v in with_gaps.moe_layer.items() if float(v) > 0]
    n_kernels = sum(rl.KERNELS[k] + rl.EXTRA_KERNELS.get(k, 0) for k in ops)
    assert n_kernels == 21 + 11  # at EP1 the transfers vanish, the four send/receive kernels still run
    diff = sum(float(with_gaps.moe_layer[k]) - float(no_gaps.moe_layer[k]) for k in ops)
    assert diff == pytest.approx(n_kernels * 1e-6, rel=1e-9)


def test_all_reduce_latency_grows_with_group_and_span():
    """nccl-tests floors: 6 µs on 2 GPUs (nccl#1259), 12.5 µs on a full 8-GPU node
    (DeepEP#303), 47 µs across two nodes over InfiniBand (nccl#1244); 4 GPUs halfway in
    log2: 6 + (12.5 − 6) / 2 = 9.25 µs."""
    dev = rl.device(profiles.load_hardware("h200"))
    lat = rl.all_reduce_latency(np.array([2, 4, 8, 16]), dev) * 1e6
    assert lat == pytest.approx([6.0, 9.25, 12.5, 47.0])
    # TP16 over two nodes: only each GPU's 1/8 of the message crosses its NIC, twice (N − 1) / N
    msg = 64 * 7168 * 2
    t = float(rl.all_reduce_time(64, 7168, 16, dev, 2.0))
    intra = 2 * 7 / 8 * msg / dev.scale_up_bandwidth
    inter = 2 * (2 - 1) / 2 * msg / 8 / dev.scale_out_bandwidth
    assert t == pytest.approx(intra + inter + 47e-6, rel=1e-9)


def test_fp8_kv_runs_decode_attention_on_fp8_tensor_cores(m, wl):
    """FlashMLA's FP8 kernel (deepseek-ai/FlashMLA#54) on an FP8 cache: H20's 148 TFLOPS BF16
    and 296 FP8 peaks, so compute-bound MLA (128 heads, 2 query tokens) takes half the time."""
    hw = profiles.load_hardware("h20")
    bf16 = profiles.Workload(**{**wl.__dict__, "kv_dtype": "bf16"})
    fp8 = profiles.Workload(**{**wl.__dict__, "kv_dtype": "fp8"})
    assert rl.device(hw, fp8).attention_flops == pytest.approx(2 * rl.device(hw, bf16).attention_flops)
    lay = rl.Layout(tp=1, dp=8, moe_tp=1, ep=8, batch=48)
    a16 = float(rl.decode(m, hw, bf16, lay, 4096, 1.7).moe_layer["attention"])
    a8 = float(rl.decode(m, hw, fp8, lay, 4096, 1.7).moe_layer["attention"])
    assert a8 < a16 and (a16 - a8) / a16 > 0.3


def test_mtp_drafts_with_its_own_head_per_draft_token(m, wl):
    """Each draft token runs the MTP module: its projection (2 · 7,168 → 7,168), one MoE layer
    and the LM head again; two draft tokens cost twice the one-draft module."""
    hw = profiles.load_hardware("h800")
    lay = rl.Layout(tp=1, dp=16, moe_tp=1, ep=16, batch=16)
    no = rl.decode(m, hw, wl, lay, 2048)
    d1 = rl.decode(m, hw, wl, lay, 2048, 1.7, 1)
    d2 = rl.decode(m, hw, wl, lay, 2048, 2.4, 2)
    assert float(d1.head) > 2 * float(no.head)  # the target head on 2 tokens plus the draft's head and layer
    target1 = float(rl._head(rl._context(m, hw, wl, lay, 1.0, 0), 32))
    target2 = float(rl._head(rl._context(m, hw, wl, lay, 1.0, 0), 48))
    assert float(d2.head) - target2 == pytest.approx(2 * (float(d1.head) - target1), rel=1e-9)


def test_shared_expert_split_by_tp_on_the_allgather_path(m, wl, h200):
    """vLLM/TensorRT-LLM split the shared expert by TP: at TP8 each GPU holds 1/8 of it, so
    7/8 × 3 × 7,168 × 2,048 FP8 bytes less per MoE layer (58 of them) than SGLang's replica."""
    lay = rl.Layout(tp=8, dp=1, moe_tp=1, ep=8, batch=8)
    sgl = rl.decode(m, h200, wl, lay, 1024, framework="sglang")
    vll = rl.decode(m, h200, wl, lay, 1024, framework="vllm")
    assert float(sgl.weight_bytes - vll.weight_bytes) == pytest.approx(58 * 7 / 8 * 3 * 7168 * 2048)


def test_a_profile_that_makes_the_step_free_is_refused(m, wl):
    import dataclasses

    hw = profiles.load_hardware("h800")
    free = dataclasses.replace(hw, memory_bandwidth=float("inf"), peak_flops={"fp8": float("inf"), "bf16": float("inf")},
                               scale_up_bandwidth=float("inf"), scale_out_bandwidth=float("inf"))
    e = {k: dict(v) for k, v in hw.efficiency.items()}
    for k in e:
        if k.endswith("_us"):
            e[k]["value"] = 0.0
    free = dataclasses.replace(free, efficiency=e)
    with pytest.raises(InputError, match=r"step time of 0 s"):
        rl.decode(m, free, wl, rl.Layout(tp=1, dp=8, moe_tp=1, ep=8, batch=8), 1024,
                  framework=frameworks.Framework(**{**frameworks.load_framework("sglang").__dict__, "host_step": 0.0}))


def test_framework_custom_all_reduce_inside_a_node():
    """SGLang's own one-shot all-reduce (sgl-project/sglang#2904, H100): 3.7 µs on 2 GPUs,
    5.9 µs on 8 for a tiny message, plus the 7 copies each GPU reads over NVLink at
    450 GB/s × 0.70; the framework takes it where it beats NCCL. Beyond 1 MiB, or across
    nodes, NCCL's path as before."""
    dev = rl.device(profiles.load_hardware("h100"))
    sgl = frameworks.load_framework("sglang")
    assert float(rl.all_reduce_time(1, 512, 8, dev, 1.0, sgl)) == pytest.approx(7 * 512 / (450e9 * 0.7) + 5.9e-6)
    assert float(rl.all_reduce_time(1, 512, 2, dev, 1.0, sgl)) == pytest.approx(512 / (450e9 * 0.7) + 3.7e-6)
    mib = 1024 * 1024  # here NCCL's ring (2 × 7/8 of it over NVLink + 12.5 µs) is the faster, and is taken
    assert float(rl.all_reduce_time(1, mib, 8, dev, 1.0, sgl)) == pytest.approx(
        min(7 * mib / (450e9 * 0.7) + 5.9e-6, 2 * 7 / 8 * mib / (450e9 * 0.7) + 12.5e-6))
    big = 4 * mib
    assert float(rl.all_reduce_time(1, big, 8, dev, 1.0, sgl)) == pytest.approx(float(rl.all_reduce_time(1, big, 8, dev, 1.0)))
    assert float(rl.all_reduce_time(1, 512, 16, dev, 1.0, sgl)) == pytest.approx(float(rl.all_reduce_time(1, 512, 16, dev, 1.0)))
