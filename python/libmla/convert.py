"""numpy helpers for the dtypes numpy lacks: bf16 is carried as uint16 bits, fp8 e4m3 as uint8
bits. Conversions follow the library's rules (round to nearest even; fp8 saturates to +-448,
NaN stays NaN); float32 -> fp8 runs through the library's CPU quantizer, so it is bit-exact
with the kernels."""

import ctypes

import numpy as np

_FP8_TABLE = None


def float32_to_bf16(x):
    """float32 array -> uint16 array of bf16 bits (round to nearest even, NaN stays quiet NaN)."""
    f = np.ascontiguousarray(x, dtype=np.float32)
    u = f.view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(f)
    if nan.any():
        rounded[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded


def bf16_to_float32(x):
    """uint16 bf16 bits (or an ml_dtypes bfloat16 array) -> float32 (exact)."""
    a = np.ascontiguousarray(x)
    if a.dtype.name == "bfloat16":
        a = a.view(np.uint16)
    if a.dtype != np.uint16:
        raise ValueError(f"bf16_to_float32 expects uint16 bf16 bits, got {a.dtype}")
    return (a.astype(np.uint32) << 16).view(np.float32)


def fp8_to_float32(x):
    """uint8 fp8 e4m3 bits (or an ml_dtypes float8_e4m3fn array) -> float32 (exact)."""
    global _FP8_TABLE
    if _FP8_TABLE is None:
        from . import _ffi
        lib = _ffi.lib()
        _FP8_TABLE = np.array([lib.mla_fp8_e4m3_to_float(ctypes.c_uint8(i)) for i in range(256)],
                              dtype=np.float32)
    a = np.ascontiguousarray(x)
    if a.dtype.name == "float8_e4m3fn":
        a = a.view(np.uint8)
    if a.dtype != np.uint8:
        raise ValueError(f"fp8_to_float32 expects uint8 fp8 bits, got {a.dtype}")
    return _FP8_TABLE[a]


def float32_to_fp8(x, scale=1.0):
    """float32 array -> uint8 fp8 e4m3 bits of round_e4m3(x / scale), via the CPU backend."""
    from .ops import quantize_fp8
    f = np.ascontiguousarray(x, dtype=np.float32)
    return quantize_fp8(f, scale, backend="cpu")
