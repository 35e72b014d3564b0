"""Units and conversions. Everything inside moecalc is SI: FLOP, byte, second, FLOP/s, byte/s.

Profiles and printed tables use human units; they convert here, at the edges. The seeds mix
decimal and binary prefixes (GB vs GiB, MB vs MiB): both are spelled out so that every
conversion says which one it means.
"""

from __future__ import annotations

KB = 1e3
MB = 1e6
GB = 1e9
TB = 1e12
KiB = 2.0**10
MiB = 2.0**20
GiB = 2.0**30

MILLION = 1e6
BILLION = 1e9

GFLOP = 1e9
TFLOPS = 1e12  # FLOP/s
GB_PER_S = 1e9  # byte/s
GBIT_PER_S = 1e9 / 8  # byte/s

MS = 1e-3  # seconds
US = 1e-6  # seconds

# Storage size of one element, in bytes. fp4/int4 pack two elements per byte.
DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "fp4": 0.5,
    "int4": 0.5,
    # Block-scaled 4-bit formats, scales included (storage and traffic per element):
    # NVFP4: E2M1 values with one FP8 (E4M3) scale per 16 (NVIDIA, "Introducing NVFP4 for
    # Efficient and Accurate Low-Precision Inference", developer blog 2025-06: 16-value blocks,
    # E4M3 block scale, plus one FP32 scale per tensor, negligible): 0.5 + 1/16 bytes.
    # MXFP4: E2M1 values with one E8M0 scale per 32 (OCP Microscaling Formats (MX) v1.0,
    # section 5: block size 32, shared 8-bit exponent): 0.5 + 1/32 bytes.
    "nvfp4": 0.5 + 1.0 / 16,
    "mxfp4": 0.5 + 1.0 / 32,
}

# Which datasheet peak a dtype's math runs at, when it has no peak of its own.
PEAK_DTYPE: dict[str, str] = {"fp16": "bf16", "bf16": "fp16", "nvfp4": "fp4", "mxfp4": "fp4"}


def dtype_bytes(dtype: str) -> float:
    """Bytes per element of `dtype` (a key of DTYPE_BYTES)."""
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r} (known: {', '.join(DTYPE_BYTES)})") from None
