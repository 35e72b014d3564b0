"""moecalc.sizing: the quotients of the chapter "Plan a deployment", checked by hand."""

import math

import numpy as np
import pytest

from moecalc import profiles, sizing
from moecalc.errors import InputError


@pytest.fixture(scope="module")
def m():
    return profiles.load_model("deepseek-v3")


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


def test_prefill_instances_fit_and_cover_the_demand(m, wl):
    hw = profiles.load_hardware("h20")
    demand = float(sizing.prefill_demand(8000, wl))
    out = sizing.prefill_instances(m, hw, wl, [8, 16, 32], wl.prompt_len, demand)
    # 8 × H20 cannot hold 671 GB of weights in 8 × 96 GB at the profile's usable share
    assert 8 not in [e["devices"] for e in out]
    for e in out:
        capacity = e["instances"] * e["devices"] * e["tokens_per_s_per_device"]
        assert capacity >= demand and (e["instances"] - 1) * e["devices"] * e["tokens_per_s_per_device"] < demand
        assert 0 < e["busy"] <= 1 and e["fits"]
    assert np.all(np.diff([e["total_devices"] for e in out]) >= 0)
