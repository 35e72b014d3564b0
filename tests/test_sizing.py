"""moecalc.sizing: the quotients of the chapter "Plan a deployment", checked by hand."""

import math

import numpy as np
import pytest
import yaml

from moecalc import profiles, sizing
from moecalc.errors import InputError


@pytest.fixture(scope="module")
def wl():
    return profiles.load_workload("r1-4k-plan")


def test_prefill_demand_is_output_rate_times_prompt_over_output(wl):
    # 8,000 output tokens/s × 4,096 prompt / 1,210 output tokens, no cache hits
    assert float(sizing.prefill_demand(8000, wl)) == pytest.approx(8000 * 4096 / 1210)
    # DeepSeek's 56.3 % hits leave 43.7 % to compute
    assert float(sizing.prefill_demand(8000, wl, 0.563)) == pytest.approx(8000 * 4096 / 1210 * 0.437)


def test_sequences_in_flight_is_littles_law():
    assert float(sizing.sequences_in_flight(8000, 20)) == 400
    with pytest.raises(InputError):
        sizing.sequences_in_flight(8000, 0)


def test_fewest_devices_from_weights_and_cache(m, wl):
    hw = profiles.load_hardware("h200")
    weights, kv, n = sizing.fewest_devices(m, hw, wl, [0, 400], wl.avg_kv_len)
    # 671 B parameters, nearly all FP8 (1 B each); embedding and LM head BF16 (2 × 129,280 × 7,168 × 2 B ≈ 3.7 GB)
    assert 671e9 < weights < 680e9
    # 400 sequences × 4,701 tokens × 61 layers × 576 B (FP8 latent + RoPE key)
    assert float(kv[1]) == pytest.approx(400 * 4701 * 61 * 576)
    usable = sizing.usable_bytes(hw)
    assert list(n) == [math.ceil(weights / usable), math.ceil((weights + 400 * 4701 * 61 * 576) / usable)]


def _sglang_usable(name):
    """SGLang's memory rule by hand: weights + KV pool ≤ mem_fraction_static × the memory the
    device reports (nvidia-smi MiB), nothing reserved beyond; values as the YAML files state them."""
    params = profiles.PARAMS_DIR
    fw = yaml.safe_load((params / "framework" / "sglang.yaml").read_text(encoding="utf-8"))["memory"]
    mib = yaml.safe_load((params / "hardware" / f"{name}.yaml").read_text(encoding="utf-8"))["memory_reported_mib"]
    assert fw["rule"]["value"] == "total" and fw["reserved_gib"]["value"] == 0
    return fw["fraction"]["value"] * mib * 2**20


def test_usable_bytes_is_the_framework_memory_rule():
    # H20: 0.835 × 97,871 MiB = 85.7 GB of the datasheet's 96 GB; H200: 0.835 × 143,771 MiB = 125.9 GB
    assert sizing.usable_bytes(profiles.load_hardware("h20")) == pytest.approx(_sglang_usable("h20"), rel=1e-12)
    assert sizing.usable_bytes(profiles.load_hardware("h20")) / 1e9 == pytest.approx(85.69, abs=0.01)
    assert sizing.usable_bytes(profiles.load_hardware("h200")) == pytest.approx(_sglang_usable("h200"), rel=1e-12)
    assert sizing.usable_bytes(profiles.load_hardware("h200"), memory_cap=100e9) == 100e9


def test_prefill_instances_fit_and_cover_the_demand(m, wl):
    hw = profiles.load_hardware("h20")
    usable = _sglang_usable("h20")
    demand = float(sizing.prefill_demand(8000, wl))
    out = sizing.prefill_instances(m, hw, wl, [8, 16, 32], wl.prompt_len, demand)
    # 8 × H20 (EP8, attention TP1: everything but the routed experts replicated) cannot hold the
    # weights under SGLang's rule: already 1/8 of the FP8 routed experts (58 layers × 256 ×
    # 3 × 7,168 × 2,048), the BF16 embedding and LM head and the FP8 MLA of 61 layers exceed it
    routed = 58 * 256 * 3 * 7168 * 2048 / 8
    embed_head = 2 * 129280 * 7168 * 2
    mla = 61 * (7168 * 1536 + 7168 * 576 + 1536 * 128 * 192 + 512 * 128 * 256 + 128 * 128 * 7168)
    assert routed + embed_head + mla > usable
    assert 8 not in [e["devices"] for e in out]
    assert [e["devices"] for e in out] == [16, 32]  # 16 and 32 devices fit (weights + one batch's KV)
    for e in out:
        assert e["memory_gb"] * 1e9 <= usable
        capacity = e["instances"] * e["devices"] * e["tokens_per_s_per_device"]
        assert capacity >= demand and (e["instances"] - 1) * e["devices"] * e["tokens_per_s_per_device"] < demand
        assert 0 < e["busy"] <= 1 and e["fits"]
    assert np.all(np.diff([e["total_devices"] for e in out]) >= 0)
