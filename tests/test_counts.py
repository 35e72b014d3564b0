"""counts.py against seed 003's printed figures and against derivations written out by hand
from DeepSeek-V3's config.json (literal dimensions here, not the code's formulas)."""

from __future__ import annotations

import numpy as np
import pytest

from moecalc import counts

# DeepSeek-V3 config.json, spelled out so the hand derivations do not lean on the profile.
D, H, QR, KVR, NOPE, ROPE, V = 7168, 128, 1536, 512, 128, 64, 128
INTER, MOE_INTER, VOCAB, LAYERS, DENSE, EXPERTS = 18432, 2048, 129280, 61, 3, 256


def test_profile_is_the_config_we_derive_from(model):
    assert (model.hidden_size, model.num_attention_heads, model.q_lora_rank, model.kv_lora_rank) == (D, H, QR, KVR)
    assert (model.qk_nope_head_dim, model.qk_rope_head_dim, model.v_head_dim) == (NOPE, ROPE, V)
    assert (model.intermediate_size, model.moe_intermediate_size, model.vocab_size) == (INTER, MOE_INTER, VOCAB)
    assert (model.num_hidden_layers, model.n_dense_layers, model.n_routed_experts) == (LAYERS, DENSE, EXPERTS)


# ---------------------------------------------------------------- parameters


def test_mla_params_by_hand(model):
    weights = D * QR + QR * H * (NOPE + ROPE) + D * (KVR + ROPE) + KVR * H * (NOPE + V) + H * V * D
    biases = QR + H * (NOPE + ROPE) + (KVR + ROPE) + H * (NOPE + V) + D
    assert counts.mla_params(model) == weights == 187_105_280
    assert counts.mla_params(model, bias=True) == weights + biases


def test_mla_params_match_seed_ptflops(model):
    # ptflops on the seed's nn.Linear modules (biases on): "187.17 M" for the block.
    assert round(counts.mla_params(model, bias=True) / 1e6, 2) == 187.17
    shapes = counts.mla_weight_shapes(model)
    printed = {"wq_a": 11.01, "wq_b": 37.77, "wkv_a": 4.13, "wkv_b": 16.81, "wo": 117.45}
    for name, value in printed.items():
        n_in, n_out = shapes[name]
        assert round((n_in * n_out + n_out) / 1e6, 2) == value, name


def test_premultiplied_mla_params(model):
    # seed §1.1.2 mla_matabsob_mem(args)/1e6 prints 598.147072
    by_hand = D * QR + QR * H * ROPE + H * QR * KVR + D * (KVR + ROPE) + H * KVR * D
    assert counts.mla_params(model, "premultiplied") == by_hand == 598_147_072
    # run-time absorption keeps the original weights
    assert counts.mla_params(model, "absorbed") == counts.mla_params(model, "plain")


def test_mlp_and_expert_params(model):
    assert counts.dense_mlp_params(model) == 3 * D * INTER
    assert counts.expert_params(model) == 3 * D * MOE_INTER
    # seed §1.2 / §1.3 ptflops: 396.41 M and 44.05 M with biases
    assert round(counts.dense_mlp_params(model, bias=True) / 1e6, 2) == 396.41
    assert round(counts.expert_params(model, bias=True) / 1e6, 2) == 44.05
    assert counts.gate_params(model) == D * EXPERTS + EXPERTS  # router weight + score-correction bias
    assert counts.embedding_params(model) == VOCAB * D


def test_total_params(model):
    seed_way = counts.total_params(model, bias=True, norms=False)
    exact = counts.total_params(model)
    assert exact == sum(row.total for row in counts.param_table(model))
    # DeepSeek-V3's published size is 671B (the 14B MTP module apart).
    assert 671.0e9 <= exact < 671.05e9
    # biases add one element per output of every Linear: 0.17B over the model
    assert 0.1e9 < seed_way - counts.total_params(model, norms=False) < 0.2e9
    norms = LAYERS * (2 * D + QR + KVR) + D
    assert exact - counts.total_params(model, norms=False) == norms


# ---------------------------------------------------------------- FLOPs


def test_mla_flops_match_seed_printout(model):
    # seed §1.1.1: mla_flops(1,1,args,0) = (0.37429248000000004, 0.139329536, 0.234962944)
    ops = counts.mla_ops(model, 1, 1)
    attn = ops["score"] + ops["score_v"] + ops["wo"]  # the seed's ATTN_FP16 group
    assert counts.mla_flops(model, 1, 1) == pytest.approx(0.37429248e9, rel=1e-15)
    assert sum(ops.values()) - attn == 139_329_536
    assert attn == 234_962_944


def test_premultiplied_flops_match_seed_printout(model):
    # seed §1.1.2: mla_matabsob_flops(1,1,args,0) = (1.196572672, 0.256770048, 0.939802624)
    ops = counts.mla_ops(model, 1, 1, mode="premultiplied")
    attn = ops["score"] + ops["score_v"] + ops["o_absorb"]
    assert sum(ops.values()) == 1_196_572_672
    assert attn == 939_802_624


def test_plain_mla_flops_by_hand(model):
    q, kv = 7, 11
    gemm = q * D * QR + q * QR * H * (NOPE + ROPE) + kv * D * (KVR + ROPE) + kv * KVR * H * (NOPE + V)
    attention = H * q * kv * (NOPE + ROPE + V)
    assert counts.mla_flops(model, q, kv) == 2 * (gemm + attention + q * H * V * D)


def test_absorbed_mla_flops_by_hand(model):
    q, kv = 3, 50
    macs = (q * D * QR + q * QR * H * (NOPE + ROPE) + kv * D * (KVR + ROPE)
            + q * H * NOPE * KVR  # q_nope · W_UK per head
            + H * q * kv * (KVR + ROPE) + H * q * kv * KVR  # scores over the latent, score · latent
            + q * H * KVR * V  # · W_UV per head
            + q * H * V * D)
    assert counts.mla_flops(model, q, kv, mode="absorbed") == 2 * macs


def test_absorption_ratios_match_seed(model):
    def ratio(q, kv, rate):
        return counts.mla_flops(model, q, kv, rate, "premultiplied") / counts.mla_flops(model, q, kv, rate)

    assert round(ratio(1, 1, 0.0), 3) == 3.197
    assert 3.3028 <= ratio(4989, 4989, 0.0) < 3.3029  # the seed prints 3.3028 (truncated)
    assert round(ratio(1, 4989, 1.0), 3) == 0.015


def test_cache_rate_only_skips_wkv_a(model):
    full = counts.mla_ops(model, 100, 400, 0.0)
    half = counts.mla_ops(model, 100, 400, 0.5)
    assert half["wkv_a"] == pytest.approx(full["wkv_a"] / 2)
    assert {k: v for k, v in half.items() if k != "wkv_a"} == {k: v for k, v in full.items() if k != "wkv_a"}


def test_attention_pairs():
    assert counts.attention_pairs(5, 9) == 45
    assert counts.attention_pairs(4, 4, causal=True) == 1 + 2 + 3 + 4
    assert counts.attention_pairs(1, 9, causal=True) == 9  # the newest token sees every key
    assert counts.attention_pairs(3, 10, causal=True) == 8 + 9 + 10


def test_causal_prefill_halves_attention_proper(model):
    n = 4096
    plain = counts.mla_ops(model, n, n)
    causal = counts.mla_ops(model, n, n, causal=True)
    assert causal["score"] / plain["score"] == pytest.approx((n + 1) / (2 * n))
    assert causal["wq_a"] == plain["wq_a"]


def test_mlp_and_expert_flops(model):
    assert counts.dense_mlp_flops(model, 1) == 2 * 3 * D * INTER
    assert counts.expert_flops(model, 1) == 2 * 3 * D * MOE_INTER  # 88.08 M: the seed's "488.1M" is a typo
    assert round(2 * counts.dense_mlp_params(model, bias=True) / 1e6, 1) == 792.8  # seed: ~792.82 MFLOPS
    assert counts.lm_head_flops(model, 2) == 2 * 2 * D * VOCAB
    assert counts.gate_flops(model, 1) == 2 * D * EXPERTS


# ---------------------------------------------------------------- bytes


def test_kv_bytes(model):
    assert counts.kv_bytes_per_token(model, 1.0, layers=1) == 576  # seed: 576B(FP8)
    assert counts.kv_bytes_per_token(model, 2.0) == 2 * 576 * 61
    # seed §1.4: 68.62KB (FP16) and 34.31KB (FP8), KB meaning 1,024 B
    assert counts.kv_bytes_per_token(model, 2.0) / 1024 == 68.625
    assert round(counts.kv_bytes_per_token(model, 1.0) / 1024, 2) == 34.31


def test_communication_bytes(model):
    assert counts.hidden_bytes(model, 4383, 2) == 4383 * D * 2
    assert counts.dispatch_bytes(model, 32, 1) == 32 * D * 8
    assert counts.combine_bytes(model, 32, 2) == 2 * counts.dispatch_bytes(model, 32, 1)


# ---------------------------------------------------------------- vectorization

TOKENS = np.array([1, 2, 7, 128, 4383, 32768])


@pytest.mark.parametrize("mode", ["plain", "absorbed", "premultiplied"])
@pytest.mark.parametrize("causal", [False, True])
def test_mla_flops_vectorized(model, mode, causal):
    q = np.array([1, 1, 5, 64, 100, 4383])
    kv = TOKENS
    array = counts.mla_flops(model, q, kv, 0.3, mode, causal)
    assert isinstance(array, np.ndarray) and array.shape == q.shape
    scalar = [counts.mla_flops(model, int(a), int(b), 0.3, mode, causal) for a, b in zip(q, kv)]
    np.testing.assert_allclose(array, scalar, rtol=1e-14)


def test_mla_flops_broadcast_grid(model):
    q = np.array([1, 8])[:, None]
    kv = TOKENS[None, :]
    grid = counts.mla_flops(model, q, kv, mode="absorbed")
    assert grid.shape == (2, len(TOKENS))
    for i, a in enumerate([1, 8]):
        for j, b in enumerate(TOKENS):
            assert grid[i, j] == pytest.approx(counts.mla_flops(model, a, int(b), mode="absorbed"), rel=1e-14)


@pytest.mark.parametrize("fn", [counts.dense_mlp_flops, counts.expert_flops, counts.gate_flops, counts.lm_head_flops])
def test_token_functions_vectorized(model, fn):
    array = fn(model, TOKENS)
    assert array.shape == TOKENS.shape
    np.testing.assert_array_equal(array, [fn(model, int(t)) for t in TOKENS])


@pytest.mark.parametrize("fn", [counts.hidden_bytes, counts.dispatch_bytes, counts.combine_bytes])
def test_byte_functions_vectorized(model, fn):
    array = fn(model, TOKENS, 2.0)
    np.testing.assert_array_equal(array, [fn(model, int(t), 2.0) for t in TOKENS])


def test_attention_pairs_vectorized():
    q, kv = np.array([1, 3, 4]), np.array([9, 10, 4])
    for causal in (False, True):
        array = counts.attention_pairs(q, kv, causal)
        assert array.tolist() == [counts.attention_pairs(int(a), int(b), causal) for a, b in zip(q, kv)]
    assert isinstance(counts.attention_pairs(3, 10), float)  # scalars stay scalars
