"""Parameters, FLOPs and bytes of every op of a DeepSeek-V3-architecture model.

Pure counting: no hardware, no time. Every function that takes a token count (batch,
sequence or KV length) also takes a numpy array of them and answers element-wise.
FLOPs are 2 × multiply-accumulates; parameters are element counts; bytes are bytes.

MLA comes in three forms (``mode``):

* ``"plain"``: the reference implementation's forward pass, K and V up-projected for every
  cached token (what prefill runs).
* ``"absorbed"``: W_UK folded into the query and W_UV into the output *at run time*, per
  head, as DeepSeek's inference code and FlashMLA do in decode: attention runs over the
  576-wide latent, the weights stay the original 187 M.
* ``"premultiplied"``: seed 003's version, which multiplies the weights ahead of time
  (wq_b_nope · W_UK and W_UV · wo): 598 M parameters and about 3.2× the FLOPs per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Union

import numpy as np

from .profiles import Model
from .units import dtype_bytes

Tokens = Union[int, float, np.ndarray]
MLAMode = Literal["plain", "absorbed", "premultiplied"]
MLA_MODES: tuple[MLAMode, ...] = ("plain", "absorbed", "premultiplied")


def _linear(n_in: int, n_out: int, bias: bool) -> int:
    return n_in * n_out + (n_out if bias else 0)


# ---------------------------------------------------------------- parameters


def mla_weight_shapes(m: Model, mode: MLAMode = "plain") -> dict[str, tuple[int, int]]:
    """(in, out) of each weight matrix of one MLA block."""
    h = m.num_attention_heads
    if mode == "premultiplied":
        return {
            "wq_a": (m.hidden_size, m.q_lora_rank),
            "wq_b_rope": (m.q_lora_rank, h * m.qk_rope_head_dim),
            "q_absorb": (m.q_lora_rank, h * m.kv_lora_rank),  # wq_b_nope · W_UK
            "wkv_a": (m.hidden_size, m.kv_cache_dim),
            "o_absorb": (h * m.kv_lora_rank, m.hidden_size),  # W_UV · wo
        }
    return {
        "wq_a": (m.hidden_size, m.q_lora_rank),
        "wq_b": (m.q_lora_rank, h * m.qk_head_dim),
        "wkv_a": (m.hidden_size, m.kv_cache_dim),
        "wkv_b": (m.kv_lora_rank, h * (m.qk_nope_head_dim + m.v_head_dim)),
        "wo": (h * m.v_head_dim, m.hidden_size),
    }


def mla_params(m: Model, mode: MLAMode = "plain", bias: bool = False) -> int:
    """Weights of one MLA block. ``bias=True`` counts nn.Linear biases, as ptflops does on
    seed 003's code; DeepSeek-V3's projections have none (``attention_bias: false``)."""
    return sum(_linear(i, o, bias) for i, o in mla_weight_shapes(m, mode).values())


def dense_mlp_params(m: Model, bias: bool = False) -> int:
    """w1 (gate), w3 (up) and w2 (down) of one dense SwiGLU MLP."""
    return 2 * _linear(m.hidden_size, m.intermediate_size, bias) + _linear(m.intermediate_size, m.hidden_size, bias)


def expert_params(m: Model, bias: bool = False) -> int:
    """w1, w3 and w2 of one routed or shared expert."""
    return 2 * _linear(m.hidden_size, m.moe_intermediate_size, bias) + _linear(
        m.moe_intermediate_size, m.hidden_size, bias
    )


def gate_params(m: Model, bias: bool = True) -> int:
    """Router weight, plus its per-expert score-correction bias (which DeepSeek-V3 has)."""
    return _linear(m.hidden_size, m.n_routed_experts, bias)


def embedding_params(m: Model) -> int:
    """One vocab × hidden table: the input embedding, and again the LM head unless tied."""
    return m.vocab_size * m.hidden_size


def indexer_params(m: Model) -> int:
    """Weights of one layer's lightning indexer (DeepSeek Sparse Attention; 0 for dense MLA):
    wq_b (q latent → index heads × index_head_dim), wk (hidden → one index_head_dim key),
    k_norm (LayerNorm weight and bias) and weights_proj (hidden → one weight per index head),
    as DeepSeek-V3.2-Exp's inference/model.py class Indexer defines them."""
    if not m.sparse:
        return 0
    hi, di = m.index_n_heads, m.index_head_dim
    return m.q_lora_rank * hi * di + m.hidden_size * di + 2 * di + m.hidden_size * hi


def norm_params(m: Model) -> int:
    """RMSNorm weights: two per layer, one each for the q and kv latents, one final."""
    return m.num_hidden_layers * (2 * m.hidden_size + m.q_lora_rank + m.kv_lora_rank) + m.hidden_size


@dataclass(frozen=True)
class ParamRow:
    block: str
    per_layer: int
    layers: int

    @property
    def total(self) -> int:
        return self.per_layer * self.layers


def param_table(m: Model, bias: bool = False, norms: bool = True) -> list[ParamRow]:
    """Parameter count per block of the main model (without the MTP module).

    ``bias=True, norms=False`` is seed 003's accounting (ptflops on nn.Linear with biases)."""
    experts = m.n_routed_experts + m.n_shared_experts
    rows = [
        ParamRow("MLA", mla_params(m, "plain", bias), m.num_hidden_layers),
        *([ParamRow("Indexer", indexer_params(m), m.num_hidden_layers)] if m.sparse else []),
        ParamRow("DenseMLP", dense_mlp_params(m, bias), m.n_dense_layers),
        ParamRow("Expert", expert_params(m, bias) * experts, m.n_moe_layers),
        ParamRow("Gate", gate_params(m, bias=True), m.n_moe_layers),
        ParamRow("Embedding", embedding_params(m), 1),
        ParamRow("Output", 0 if m.tie_word_embeddings else embedding_params(m), 1),
    ]
    if norms:
        rows.append(ParamRow("RMSNorm", norm_params(m), 1))
    return rows


def total_params(m: Model, bias: bool = False, norms: bool = True) -> int:
    return sum(row.total for row in param_table(m, bias, norms))


def activated_params(m: Model) -> int:
    """Parameters one token touches: every dense part, the shared and its top-k experts."""
    moe = (m.num_experts_per_tok + m.n_shared_experts) * expert_params(m) + gate_params(m)
    return (
        m.num_hidden_layers * (mla_params(m) + indexer_params(m))
        + m.n_dense_layers * dense_mlp_params(m)
        + m.n_moe_layers * moe
        + embedding_params(m) * (1 if m.tie_word_embeddings else 2)
        + norm_params(m)
    )


# ---------------------------------------------------------------- FLOPs


def attention_pairs(q_len: Tokens, kv_len: Tokens, causal: bool = False) -> Tokens:
    """(query, key) pairs one head scores. Causal: the q_len new tokens are the last of kv_len
    and each sees only what precedes it; otherwise every query sees all kv_len keys."""
    q = np.asarray(q_len, dtype=float)
    kv = np.asarray(kv_len, dtype=float)
    pairs = q * (kv - q) + q * (q + 1) / 2 if causal else q * kv
    return pairs if isinstance(q_len, np.ndarray) or isinstance(kv_len, np.ndarray) else float(pairs)


def _capped_prefix(n, k):
    """Σ_{v=1..n} min(v, k): keys seen by queries that see 1, 2, …, n keys, at most k each."""
    n = np.asarray(n, dtype=float)
    return np.where(n <= k, n * (n + 1) / 2, k * (k + 1) / 2 + (n - k) * k)


def attended_pairs(m: Model, q_len: Tokens, kv_len: Tokens, causal: bool = False) -> Tokens:
    """(query, key) pairs one head's attention core scores: :func:`attention_pairs` for dense
    MLA; with DeepSeek Sparse Attention each query scores only the min(visible, index_topk)
    keys its indexer selects. Equal to the dense count while kv_len ≤ index_topk."""
    if not m.sparse:
        return attention_pairs(q_len, kv_len, causal)
    k = float(m.index_topk)
    q = np.asarray(q_len, dtype=float)
    kv = np.asarray(kv_len, dtype=float)
    pairs = _capped_prefix(kv, k) - _capped_prefix(kv - q, k) if causal else q * np.minimum(kv, k)
    return pairs if isinstance(q_len, np.ndarray) or isinstance(kv_len, np.ndarray) else float(pairs)


def indexer_ops(m: Model, q_len: Tokens, kv_len: Tokens, causal: bool = False) -> dict[str, Tokens]:
    """FLOPs of one layer's lightning indexer for q_len queries over kv_len keys (empty for
    dense MLA). The indexer projects each new token to index_n_heads query heads (from the q
    latent) and one shared key (from the hidden state, cached), scores *every* visible key per
    query and head in FP8 (``index_logits``), weighs the ReLU'd scores by one learnt weight per
    head and sums over heads (``index_weighting``); the top-k selection that follows is
    comparisons, not FLOPs."""
    if not m.sparse:
        return {}
    hi, di = m.index_n_heads, m.index_head_dim
    q = q_len
    pairs = attention_pairs(q_len, kv_len, causal)
    return {
        "index_wq_b": 2 * q * m.q_lora_rank * hi * di,
        "index_wk": 2 * q * m.hidden_size * di,  # the new tokens' keys; cached keys are reused
        "index_weights_proj": 2 * q * m.hidden_size * hi,
        "index_logits": 2 * hi * di * pairs,
        "index_weighting": 2 * hi * pairs,
    }


def indexer_flops(m: Model, q_len: Tokens, kv_len: Tokens, causal: bool = False) -> Tokens:
    """Total FLOPs of one layer's indexer (0 for dense MLA)."""
    return sum(indexer_ops(m, q_len, kv_len, causal).values(), 0 * np.asarray(q_len, dtype=float))


def mla_ops(
    m: Model,
    q_len: Tokens,
    kv_len: Tokens,
    kv_cache_rate: float = 0.0,
    mode: MLAMode = "plain",
    causal: bool = False,
) -> dict[str, Tokens]:
    """FLOPs of each op of one MLA block for q_len queries over kv_len keys (with sparse
    attention, the attention core scores only the selected keys: :func:`attended_pairs`; the
    indexer that selects them is :func:`indexer_ops`).

    ``kv_cache_rate`` is the share of the kv_len tokens whose latent is already cached, so
    their down-projection (wkv_a) is skipped; every other op is unchanged (seed 003's reading).
    """
    if mode not in MLA_MODES:
        raise ValueError(f"unknown MLA mode {mode!r}")
    h, d = m.num_attention_heads, m.hidden_size
    q, kv = q_len, kv_len
    pairs = attended_pairs(m, q_len, kv_len, causal)
    kv_down = 2 * kv * d * m.kv_cache_dim * (1 - kv_cache_rate)
    if mode == "plain":
        return {
            "wq_a": 2 * q * d * m.q_lora_rank,
            "wq_b": 2 * q * m.q_lora_rank * h * m.qk_head_dim,
            "wkv_a": kv_down,
            "w_uk": 2 * kv * m.kv_lora_rank * h * m.qk_nope_head_dim,
            "w_uv": 2 * kv * m.kv_lora_rank * h * m.v_head_dim,
            "score": 2 * h * pairs * m.qk_head_dim,
            "score_v": 2 * h * pairs * m.v_head_dim,
            "wo": 2 * q * h * m.v_head_dim * d,
        }
    if mode == "premultiplied":
        return {
            "wq_a": 2 * q * d * m.q_lora_rank,
            "wq_b_rope": 2 * q * m.q_lora_rank * h * m.qk_rope_head_dim,
            "q_absorb": 2 * q * h * m.q_lora_rank * m.kv_lora_rank,
            "wkv_a": kv_down,
            "score": 2 * h * pairs * (m.kv_lora_rank + m.qk_rope_head_dim),
            "score_v": 2 * h * pairs * m.kv_lora_rank,
            "o_absorb": 2 * q * h * m.kv_lora_rank * d,
        }
    return {  # absorbed at run time
        "wq_a": 2 * q * d * m.q_lora_rank,
        "wq_b": 2 * q * m.q_lora_rank * h * m.qk_head_dim,
        "wkv_a": kv_down,
        "q_uk": 2 * q * h * m.qk_nope_head_dim * m.kv_lora_rank,  # q_nope · W_UK per head
        "score": 2 * h * pairs * (m.kv_lora_rank + m.qk_rope_head_dim),
        "score_v": 2 * h * pairs * m.kv_lora_rank,
        "o_uv": 2 * q * h * m.kv_lora_rank * m.v_head_dim,  # latent output · W_UV per head
        "wo": 2 * q * h * m.v_head_dim * d,
    }


# Ops that multiply activations by activations (attention proper); every other MLA op is a
# GEMM against a weight matrix.
ATTENTION_OPS = frozenset({"score", "score_v"})


def mla_flops(
    m: Model,
    q_len: Tokens,
    kv_len: Tokens,
    kv_cache_rate: float = 0.0,
    mode: MLAMode = "plain",
    causal: bool = False,
) -> Tokens:
    """Total FLOPs of one MLA block (see :func:`mla_ops`)."""
    return sum(mla_ops(m, q_len, kv_len, kv_cache_rate, mode, causal).values())


def dense_mlp_flops(m: Model, tokens: Tokens) -> Tokens:
    return 2 * 3 * tokens * m.hidden_size * m.intermediate_size


def expert_flops(m: Model, tokens: Tokens) -> Tokens:
    """FLOPs of `tokens` token-expert pairs through one expert's SwiGLU."""
    return 2 * 3 * tokens * m.hidden_size * m.moe_intermediate_size


def gate_flops(m: Model, tokens: Tokens) -> Tokens:
    return 2 * tokens * m.hidden_size * m.n_routed_experts


def lm_head_flops(m: Model, tokens: Tokens) -> Tokens:
    return 2 * tokens * m.hidden_size * m.vocab_size


# ---------------------------------------------------------------- bytes


INDEX_SCALE_GROUP = 128  # FP8 indexer-key values sharing one FP32 scale (DeepSeek-V3.2-Exp's block_size)


def index_cache_bytes_per_token(m: Model, layers: int | None = None) -> float:
    """Bytes of the lightning indexer's own key cache per token (0 for dense MLA): one
    index_head_dim key in FP8 plus one FP32 scale per INDEX_SCALE_GROUP values, per layer,
    whatever the MLA cache's format (128 + 4 = 132 B per layer for DeepSeek-V3.2). This is
    DeepSeek-V3.2-Exp inference/model.py's Indexer buffers (k_cache float8_e4m3fn
    [.., index_head_dim] and k_scale_cache float32 [.., index_head_dim // 128]) and SGLang's
    NSATokenToKVPool.index_k_with_scale_buffer (page_size × (128 + 128 // 128 × 4) bytes per page)."""
    if not m.sparse:
        return 0.0
    n = m.num_hidden_layers if layers is None else layers
    per_layer = m.index_head_dim * dtype_bytes("fp8") + math.ceil(m.index_head_dim / INDEX_SCALE_GROUP) * dtype_bytes("fp32")
    return per_layer * n


def kv_bytes_per_token(m: Model, bytes_per_element: float, layers: int | None = None) -> float:
    """KV-cache bytes one token occupies: the 512-wide latent and the 64-wide RoPE key, per
    layer (all layers unless `layers` is given), plus the indexer's key cache for sparse
    attention (:func:`index_cache_bytes_per_token`). No latent quantization scales."""
    n = m.num_hidden_layers if layers is None else layers
    return m.kv_cache_dim * bytes_per_element * n + index_cache_bytes_per_token(m, n)


# KV-cache formats, per token and layer: "fp8" the latent and RoPE key in FP8 without scales
# (seed 003's accounting), "fp8+scales" FlashMLA's FP8 layout, "bf16" DeepSeek's reference
# implementation (and SGLang's default).
KV_FORMATS = ("fp8", "fp8+scales", "bf16")
KV_SCALE_GROUP = 128  # FP8 latent values sharing one FP32 scale in FlashMLA's FP8 cache


def kv_format_bytes_per_token(m: Model, kv_format: str, layers: int | None = None) -> float:
    """KV-cache bytes one token occupies in `kv_format` (see KV_FORMATS), all layers unless
    `layers` is given. ``"fp8+scales"`` is FlashMLA's FP8 cache: the kv_lora_rank-wide latent in
    FP8 with one FP32 scale per KV_SCALE_GROUP values, the RoPE key in BF16
    (512 + 4 × 4 + 64 × 2 = 656 B per layer for DeepSeek-V3)."""
    n = m.num_hidden_layers if layers is None else layers
    if kv_format == "fp8+scales":
        per_layer = (m.kv_lora_rank * dtype_bytes("fp8") + m.kv_lora_rank / KV_SCALE_GROUP * dtype_bytes("fp32")
                     + m.qk_rope_head_dim * dtype_bytes("bf16"))
        return per_layer * n + index_cache_bytes_per_token(m, n)
    if kv_format in KV_FORMATS:
        return kv_bytes_per_token(m, dtype_bytes(kv_format), layers=n)
    raise ValueError(f"unknown KV format {kv_format!r} (known: {', '.join(KV_FORMATS)})")


def hidden_bytes(m: Model, tokens: Tokens, bytes_per_element: float) -> Tokens:
    """Bytes of `tokens` hidden-state vectors: one all-reduce message, one token's dispatch."""
    return tokens * m.hidden_size * bytes_per_element


def dispatch_bytes(m: Model, tokens: Tokens, bytes_per_element: float) -> Tokens:
    """Bytes a rank sends to dispatch `tokens` tokens to their top-k experts (every copy)."""
    return hidden_bytes(m, tokens, bytes_per_element) * m.num_experts_per_tok


def combine_bytes(m: Model, tokens: Tokens, bytes_per_element: float) -> Tokens:
    """Bytes a rank receives when its tokens' top-k expert outputs come back."""
    return dispatch_bytes(m, tokens, bytes_per_element)


# ---------------------------------------------------------------- roofline placement


@dataclass(frozen=True)
class Traffic:
    """FLOPs and HBM bytes of one op on one device: where it sits on a roofline.

    Bytes are what the op must move at least once: its weights, the KV cache it reads and
    its activations in and out (no re-reads, no spills: a lower bound on traffic)."""

    flops: Tokens
    weight_bytes: Tokens
    kv_bytes: Tokens
    activation_bytes: Tokens

    @property
    def bytes(self) -> Tokens:
        return self.weight_bytes + self.kv_bytes + self.activation_bytes

    @property
    def intensity(self) -> Tokens:
        """Arithmetic intensity, FLOP per byte: above the device's FLOPS / bandwidth ratio
        (its ridge point) the op is compute-bound, below it memory-bound."""
        return self.flops / self.bytes


def gemm_traffic(tokens: Tokens, n_in: int, n_out: int, weight_bpe: float, act_bpe: float, copies: float = 1) -> Traffic:
    """`tokens` rows through `copies` weight matrices of n_in × n_out each (e.g. the experts
    a device holds, `tokens` rows each): 2·t·n_in·n_out FLOPs per copy, each weight read once."""
    return Traffic(
        flops=copies * 2 * tokens * n_in * n_out,
        weight_bytes=copies * n_in * n_out * weight_bpe,
        kv_bytes=0 * tokens,
        activation_bytes=copies * tokens * (n_in + n_out) * act_bpe,
    )


def layer_traffic(
    m: Model,
    q_len: Tokens,
    kv_len: Tokens,
    batch: Tokens = 1,
    mode: MLAMode = "absorbed",
    tokens_per_expert: Tokens | None = None,
    experts_per_device: float = 1.0,
    weight_bpe: float = 1.0,
    kv_bpe: float = 1.0,
    act_bpe: float = 2.0,
) -> dict[str, Traffic]:
    """FLOPs and bytes of each op of one MoE layer (plus the dense MLP, gate and LM head for
    reference) on one device that serves `batch` sequences of `q_len` new tokens over
    `kv_len` keys, attention unsplit (TP1).

    * MLA weight GEMMs (``wq_a``, ``wq_b``, ``wkv_a`` …, per `mode`) see ``batch × q_len``
      rows; ``wkv_a`` only the new tokens (the rest of the latent is cached); in the plain
      form the K/V up-projections see every key.
    * ``attention`` (scores and score·V together) reads the KV cache once in the absorbed and
      premultiplied forms (``kv_cache_dim`` elements per key at `kv_bpe`), or the up-projected
      K and V activations in the plain form.
    * ``routed_experts``: the `experts_per_device` experts a device holds, `tokens_per_expert`
      rows each (default: the batch's top-k picks spread evenly over all experts);
      ``shared_expert``, ``gate``, ``dense_mlp`` (dense layers only) and ``lm_head`` (once per
      step) see every token.
    """
    t = batch * q_len
    h = m.num_attention_heads
    shapes = mla_weight_shapes(m, "premultiplied" if mode == "premultiplied" else "plain")
    ops: dict[str, Traffic] = {}
    if mode == "premultiplied":
        gemms = {k: (t, *shapes[k]) for k in ("wq_a", "wq_b_rope", "q_absorb", "wkv_a", "o_absorb")}
    else:
        gemms = {k: (t, *shapes[k]) for k in ("wq_a", "wq_b", "wkv_a")}
        if mode == "plain":
            gemms["w_uk"] = (batch * kv_len, m.kv_lora_rank, h * m.qk_nope_head_dim)
            gemms["w_uv"] = (batch * kv_len, m.kv_lora_rank, h * m.v_head_dim)
        else:  # absorbed at run time: W_UK and W_UV applied per head to the new tokens
            gemms["q_uk"] = (t, m.kv_lora_rank, h * m.qk_nope_head_dim)
            gemms["o_uv"] = (t, m.kv_lora_rank, h * m.v_head_dim)
        gemms["wo"] = (t, *shapes["wo"])
    for name, (rows, n_in, n_out) in gemms.items():
        ops[name] = gemm_traffic(rows, n_in, n_out, weight_bpe, act_bpe)
    flops = mla_ops(m, q_len, kv_len, 0.0, mode)
    core = batch * (flops["score"] + flops["score_v"])
    if mode == "plain":
        kv = 0 * core
        act = batch * (q_len * h * (m.qk_head_dim + m.v_head_dim) + kv_len * h * (m.qk_head_dim + m.v_head_dim)) * act_bpe
    else:
        # sparse attention beyond top-k: each query gathers its own top-k latents
        keys = (np.where(np.asarray(kv_len) > m.index_topk, q_len * m.index_topk, kv_len) if m.sparse else kv_len)
        kv = batch * keys * m.kv_cache_dim * kv_bpe
        act = t * h * (m.kv_cache_dim + m.kv_lora_rank) * act_bpe
    ops["attention"] = Traffic(flops=core, weight_bytes=0 * core, kv_bytes=kv, activation_bytes=act)
    if m.sparse:  # the lightning indexer's logits: every cached index key once per sequence, FP32 logits out
        logits = batch * indexer_ops(m, q_len, kv_len)["index_logits"]
        ops["indexer"] = Traffic(flops=logits, weight_bytes=0 * logits,
                                 kv_bytes=batch * kv_len * index_cache_bytes_per_token(m, 1),
                                 activation_bytes=batch * q_len * kv_len * dtype_bytes("fp32"))
    ops["gate"] = gemm_traffic(t, m.hidden_size, m.n_routed_experts, weight_bpe, act_bpe)
    ops["shared_expert"] = gemm_traffic(t, m.hidden_size, 3 * m.moe_intermediate_size, weight_bpe, act_bpe,
                                        m.n_shared_experts)
    if tokens_per_expert is None:
        tokens_per_expert = t * m.num_experts_per_tok / m.n_routed_experts
    ops["routed_experts"] = gemm_traffic(tokens_per_expert, m.hidden_size, 3 * m.moe_intermediate_size, weight_bpe,
                                         act_bpe, experts_per_device)
    ops["dense_mlp"] = gemm_traffic(t, m.hidden_size, 3 * m.intermediate_size, weight_bpe, act_bpe)
    ops["lm_head"] = gemm_traffic(t, m.hidden_size, m.vocab_size, weight_bpe, act_bpe)
    return ops


def roofline(intensity: Tokens, peak_flops: float, bandwidth: float) -> Tokens:
    """Attainable FLOP/s of an op of arithmetic `intensity` (FLOP/byte) on a device with
    `peak_flops` (FLOP/s) and memory `bandwidth` (byte/s): min(peak, intensity × bandwidth).
    The ridge point, peak / bandwidth, is where the two limits meet."""
    return np.minimum(peak_flops, np.asarray(intensity, dtype=float) * bandwidth)


def kv_transfer_rate(m: Model, tokens_per_s: Tokens, bytes_per_element: float | None = None,
                     kv_format: str | None = None) -> Tokens:
    """Bytes per second of KV cache that prefill hands to decode when it finishes
    `tokens_per_s` prompt tokens per second: every layer's latent and RoPE key per token, at
    `bytes_per_element` (no scales) or in `kv_format` (see :func:`kv_format_bytes_per_token`)."""
    if (bytes_per_element is None) == (kv_format is None):
        raise ValueError("give one of bytes_per_element and kv_format")
    per_token = (kv_bytes_per_token(m, bytes_per_element) if kv_format is None
                 else kv_format_bytes_per_token(m, kv_format))
    return np.asarray(tokens_per_s, dtype=float) * per_token
