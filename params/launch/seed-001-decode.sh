# Seed 001 (decode instance, node 0), verbatim from seeds/001_b1534e11af3c9090.txt §2 (environment) and §4.
export NVSHMEM_BOOTSTRAP_UID_SOCK_IFNAME=eth0
export NVSHMEM_IB_TRAFFIC_CLASS=98
export NVSHMEM_IB_GID_INDEX=3
export SGLANG_DP_ATTENTION_HANDSHAKE_PORT_DELTA=30
export SGLANG_DISAGGREGATION_WAITING_TIMEOUT=80
export SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT=80
export SGLANG_DG_CACHE_DIR=/workspace/cache/deep_gemm_h200
export MC_IB_TC=98
export NCCL_IB_TC=98
python3 -m sglang.launch_server \
--model-path deepseek-v3.2 \
--host 0.0.0.0 \
--port 8055 \
--trust-remote-code \
--served-model-name DeepSeek-V3.2 \
\
`# ===== PD分离配置 =====` \
--disaggregation-mode decode \
--disaggregation-ib-device mlx5_0,mlx5_1,mlx5_2,mlx5_5,mlx5_6,mlx5_7,mlx5_8,mlx5_9 \
--disaggregation-transfer-backend mooncake \
\
`# ===== 多节点配置 =====` \
--dist-init-addr 10.93.161.35:19378 \
--nnodes 2 \
--node-rank 0 \
\
`# ===== 并行策略 =====` \
--tensor-parallel-size 16 \
--data-parallel-size 16 \
--enable-dp-attention \
--moe-dense-tp-size 1 \
--enable-dp-lm-head \
\
`# ===== MoE 配置 =====` \
--moe-a2a-backend deepep \
--deepep-mode low_latency \
--ep-num-redundant-experts 0 \
--prefill-round-robin-balance \
\
`# ===== 内存与调度 =====` \
--mem-fraction-static 0.8 \
--max-running-requests 1024 \
\
`# ===== (EAGLE) =====` \
--speculative-algorithm EAGLE \
--speculative-num-steps 1 \
--speculative-eagle-topk 1 \
--speculative-num-draft-tokens 2 \
\
`# ===== Attention 与 tool =====` \
--attention-backend nsa \
--tool-call-parser deepseekv32 \
--reasoning-parser deepseek-v3 \
\
`# ===== CUDA Graph =====` \
--cuda-graph-bs 1 2 3 4 5 6 8 10 12 16 24 32 64 \
\
`# ===== debug =====` \
--log-requests \
--log-requests-level 0 \
--collect-tokens-histogram \
--enable-metrics \
--enable-cache-report \
--gc-warning-threshold-secs 0.1
