"""Model profiles beyond DeepSeek-V3 (R1, V3.2 with sparse attention, Kimi-K2) and DSA.

Expected values are derived by hand from each config.json (numbers written out below), or
are identities a wrong implementation would break: V3.2 at KV ≤ top-k is V3 plus exactly
its indexer; beyond top-k the attention core stops growing with the context.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moecalc import counts, profiles
from moecalc.errors import InputError
from moecalc.policies import roofline as rl

MOECALC = Path(sys.executable).parent / "moecalc"
MODELS = ("deepseek-v3", "deepseek-r1", "deepseek-v3.2", "kimi-k2")


@pytest.fixture(scope="module")
def v32():
    return profiles.load_model("deepseek-v3.2")


@pytest.fixture(scope="module")
def kimi():
    return profiles.load_model("kimi-k2")


# ---------------------------------------------------------------- profiles


def test_r1_and_v32_share_v3_architecture(v3, v32):
    r1 = profiles.load_model("deepseek-r1")
    skip = {"key", "path", "name", "sources", "index_n_heads", "index_head_dim", "index_topk"}
    for f in dataclasses.fields(v3):
        if f.name not in skip:
            assert getattr(r1, f.name) == getattr(v3, f.name), f.name
            assert getattr(v32, f.name) == getattr(v3, f.name), f.name
    assert not v3.sparse and not r1.sparse and v32.sparse
    assert (v32.index_n_heads, v32.index_head_dim, v32.index_topk) == (64, 128, 2048)


def test_every_profile_names_its_source():
    for name in MODELS:
        m = profiles.load_model(name)
        assert any("huggingface.co" in s and "config.json" in s for s in m.sources), name


def test_kimi_parameters_by_hand(kimi):
    # config.json: 61 layers, 1 dense, 64 heads, 384 + 1 experts of 2048, vocab 163,840
    mla = 7168 * 1536 + 1536 * 64 * 192 + 7168 * 576 + 512 * 64 * 256 + 64 * 128 * 7168  # 101,122,048
    expert = 3 * 7168 * 2048
    total = (61 * mla + 1 * 3 * 7168 * 18432 + 60 * (385 * expert + 7168 * 384 + 384)
             + 2 * 163840 * 7168 + 61 * (2 * 7168 + 1536 + 512) + 7168)
    assert counts.mla_params(kimi) == 101_122_048
    assert counts.total_params(kimi) == total
    assert 1.02e12 < total < 1.04e12  # "1T total" (Kimi K2 report)


def test_v32_indexer_parameters_by_hand(v3, v32):
    per_layer = 1536 * 64 * 128 + 7168 * 128 + 2 * 128 + 7168 * 64  # wq_b, wk, k_norm, weights_proj
    assert per_layer == 13_959_424
    assert counts.indexer_params(v32) == per_layer and counts.indexer_params(v3) == 0
    assert counts.total_params(v32) - counts.total_params(v3) == 61 * per_layer


def _write(tmp_path, base: str, **changes) -> Path:
    import yaml

    data = yaml.safe_load((profiles.PARAMS_DIR / "model" / f"{base}.yaml").read_text())
    for k, v in changes.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("changes, needle", [
    ({"index_topk": 0}, "index_topk"),
    ({"index_topk": -5}, "index_topk"),
    ({"index_n_heads": 1.5}, "index_n_heads"),
    ({"index_n_heads": 0}, "index_n_heads"),
    ({"index_head_dim": None}, "index_head_dim"),
    ({"index_head_dim": 32}, "index_head_dim"),
    ({"some_new_config_field": 3}, "some_new_config_field"),
])
def test_bad_sparse_or_unknown_fields(tmp_path, changes, needle):
    path = _write(tmp_path, "deepseek-v3.2", **changes)
    with pytest.raises(InputError, match=needle):
        profiles.load_model(path)
    r = subprocess.run([str(MOECALC), "flops", "--model", str(path)], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr


# ---------------------------------------------------------------- DSA counts


def test_indexer_flops_by_hand(v32):
    L = 5000
    per_query = 2 * 1536 * 8192 + 2 * 7168 * 128 + 2 * 7168 * 64 + 2 * 64 * 128 * L + 2 * 64 * L
    assert counts.indexer_flops(v32, 1, L) == per_query


def test_index_cache_bytes_match_reference_layout(v3, v32):
    # FP8 key of 128 + one FP32 scale per 128 values = 132 B per token and layer (SGLang
    # NSATokenToKVPool: page_size × (128 + 128 // 128 × 4)); 61 layers
    assert counts.index_cache_bytes_per_token(v32) == 61 * 132
    assert counts.kv_bytes_per_token(v32, 1.0) - counts.kv_bytes_per_token(v3, 1.0) == 61 * 132
    # FlashMLA's FP8 latent (656 B) plus the indexer key: 788 B per layer
    assert counts.kv_format_bytes_per_token(v32, "fp8+scales", layers=1) == 656 + 132


@pytest.mark.parametrize("L", [1, 100, 2048])
def test_sparse_pairs_equal_dense_up_to_topk(v3, v32, L):
    for causal in (False, True):
        q = L if causal else 1
        assert counts.attended_pairs(v32, q, L, causal) == counts.attention_pairs(q, L, causal)
        assert counts.mla_flops(v32, q, L, causal=causal) == counts.mla_flops(v3, q, L, causal=causal)


def test_sparse_pairs_beyond_topk(v32):
    assert counts.attended_pairs(v32, 1, 131072) == 2048
    # causal prompt of 4096: queries 1..2048 see 1..2048 keys, the other 2048 see 2048 each
    assert counts.attended_pairs(v32, 4096, 4096, causal=True) == 2048 * 2049 / 2 + 2048 * 2048
    v = counts.attended_pairs(v32, np.array([1, 1]), np.array([1000, 50000]))
    assert list(v) == [1000, 2048]


# ---------------------------------------------------------------- DSA in the roofline


def _layout(**kw):
    return rl.Layout(**{"tp": 1, "dp": 16, "moe_tp": 1, "ep": 16, "batch": 32, **kw})


@pytest.mark.parametrize("hw_name", ["h800", "h200", "b200"])
@pytest.mark.parametrize("L", [512, 2048])
def test_v32_decode_is_v3_plus_indexer_up_to_topk(v3, v32, wl, hw_name, L):
    hw = profiles.load_hardware(hw_name)
    a = rl.decode(v3, hw, wl, _layout(), L)
    b = rl.decode(v32, hw, wl, _layout(), L)
    for layer_a, layer_b in ((a.dense_layer, b.dense_layer), (a.moe_layer, b.moe_layer)):
        assert set(layer_b) - set(layer_a) == set(rl.INDEXER_OPS)
        for op, t in layer_a.items():
            assert float(layer_b[op]) == float(t), op
    indexer = sum(float(b.moe_layer[o]) for o in rl.INDEXER_OPS)
    assert float(b.step_time_no_overlap) == pytest.approx(float(a.step_time_no_overlap) + 61 * indexer, rel=1e-12)
    # memory: V3's weights + 61 replicated indexers (wq_b, wk at FP8; weights_proj, k_norm at BF16)
    idx_bytes = 61 * ((1536 * 8192 + 7168 * 128) * 1 + (7168 * 64 + 256) * 2)
    assert float(b.weight_bytes) - float(a.weight_bytes) == pytest.approx(idx_bytes, rel=1e-12)
    assert float(b.kv_bytes) - float(a.kv_bytes) == pytest.approx(32 * L * 61 * 132, rel=1e-12)


def test_v32_prefill_is_v3_plus_indexer_up_to_topk(v3, v32, wl):
    hw = profiles.load_hardware("h800")
    a = rl.prefill(v3, hw, wl, _layout(), 8192, prompt_len=2048, kv_cache_hit_rate=0.0)
    b = rl.prefill(v32, hw, wl, _layout(), 8192, prompt_len=2048, kv_cache_hit_rate=0.0)
    for op, t in a.moe_layer.items():
        assert float(b.moe_layer[op]) == float(t), op
    assert set(b.moe_layer) - set(a.moe_layer) == set(rl.INDEXER_OPS)


def test_v32_attention_falls_as_topk_predicts(v3, v32, wl):
    hw = profiles.load_hardware("h200")
    lay = _layout(batch=4)
    L = np.array([32768.0, 131072.0])
    a = rl.decode(v3, hw, wl, lay, L)
    b = rl.decode(v32, hw, wl, lay, L)
    att_a, att_b = np.asarray(a.moe_layer["attention"]), np.asarray(b.moe_layer["attention"])
    # dense MLA reads the whole cache: 4× the context, about 4× the time
    assert 3.5 < att_a[1] / att_a[0] < 4.1
    # sparse: 2,048 keys per query whatever the context
    assert att_b[1] == att_b[0]
    # the attention core's FLOPs are top-k / L of dense (counting, exact)
    for L1 in (32768, 131072):
        core = lambda m: sum(v for k, v in counts.mla_ops(m, 1, L1, 1.0, "absorbed").items() if k in counts.ATTENTION_OPS)
        assert core(v32) / core(v3) == pytest.approx(2048 / L1, rel=1e-12)
    # the time falls with top-k / L: never below it, and above it only by the kernels' own
    # difference: with an FP8 cache dense decode runs on FP8 tensor cores at 66.7 % of the FP8
    # peak (FlashMLA#54), the sparse kernel dequantizes to BF16 and runs at 41.4 % of the BF16
    # peak, so per FLOP sparse is at most 0.667 × 2 / 0.414 = 3.22× slower; plus the kernel
    # per-kernel floor (3.2 µs latency + 1 µs CUDA-graph launch gap on H200, taken off both):
    # within 3.22× of the top-k ratio at both lengths
    floor = 3.2e-6 + 1e-6
    ratio = (att_b - floor) / (att_a - floor)
    assert np.all(att_b / att_a >= 2048 / L) and np.all(ratio <= 3.23 * 2048 / L)
    # the indexer still grows linearly with L: it scores every key
    logits = np.asarray(b.moe_layer["index_logits"])
    assert 3.5 < (logits[1] - floor) / (logits[0] - floor) <= 4.0 + 1e-9


def test_kimi_layouts(kimi, wl):
    with pytest.raises(InputError, match="TP 128 does not divide the 64"):
        rl.check_layout(kimi, rl.Layout(tp=128, dp=1, ep=128, batch=1))
    with pytest.raises(InputError, match="EP 256 does not divide the 384"):
        rl.check_layout(kimi, rl.Layout(tp=1, dp=256, ep=256, batch=1))
    rl.check_layout(kimi, rl.Layout(tp=1, dp=96, ep=96, batch=1))
    rl.check_layout(kimi, rl.Layout(tp=64, dp=1, ep=64, batch=1))
    # expected experts hit at EP32 (12 per rank) from 1 token: 12 × 8/384
    assert rl.expected_experts_hit(kimi, 1, 12) == pytest.approx(12 * 8 / 384)
    # n_group = topk_group = 1: no node-limited routing, units hit uniform
    hit = rl.expected_units_hit(384, 8, 1, 1, 4)
    assert hit == pytest.approx(4 * (1 - (288 / 384) * (287 / 383) * (286 / 382) * (285 / 381)
                                     * (284 / 380) * (283 / 379) * (282 / 378) * (281 / 377)))


@pytest.mark.parametrize("model", MODELS[1:])
def test_cli_decode_and_prefill_answer(model):
    base = ["--model", model, "--hardware", "h200", "--tp", "1", "--dp", "32", "--ep", "32"]
    r = subprocess.run([str(MOECALC), "decode", *base, "--batch", "8", "--kv-len", "32768", "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(MOECALC), "prefill", *base, "--seq-len", "8192", "--tokens-per-gpu", "8192", "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_v32_prefill_takes_the_faster_form_beyond_topk(v3, v32, wl):
    """Beyond top-k, prefill runs the sparse MQA-mode kernel only where it beats the dense
    computation with a mask (DeepSeek's 'masked MHA mode' for short prompts): at 4K the
    attention core is V3's; at 128K it is far cheaper and no longer grows as L²."""
    hw = profiles.load_hardware("h800")
    L = np.array([4096.0, 65536.0, 131072.0])
    a = rl.prefill(v3, hw, wl, _layout(), 16384, prompt_len=L, kv_cache_hit_rate=0.0)
    b = rl.prefill(v32, hw, wl, _layout(), 16384, prompt_len=L, kv_cache_hit_rate=0.0)
    att_a, att_b = np.asarray(a.moe_layer["attention"]), np.asarray(b.moe_layer["attention"])
    assert att_b[0] == att_a[0]
    assert np.all(att_b[1:] < att_a[1:] / 4)
    # dense grows with L per token (16,384 tokens per device either way), sparse barely
    assert att_a[2] / att_a[1] > 1.9 and att_b[2] / att_b[1] < 1.1
