// Device-side conversions that must agree bit for bit with the CPU rules (src/core/convert.c,
// DESIGN.md "FP8 e4m3 rules"): round to nearest even, finite values beyond +-448 and +-inf
// saturate to +-448, NaN becomes the canonical NaN 0x7f (bf16: 0x7fff), as the cvt
// instructions give.
#pragma once
#include <stdint.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

// Two floats to two e4m3 bytes (lo in the low byte).
__device__ __forceinline__ uint16_t mla_f32x2_to_e4m3x2(float lo, float hi)
{
    uint16_t r;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ uint8_t mla_f32_to_e4m3(float x)
{
    return (uint8_t)(mla_f32x2_to_e4m3x2(x, 0.0f) & 0xffu);
}

__device__ __forceinline__ float mla_bf16_bits_to_f32(uint16_t v) { return __uint_as_float((uint32_t)v << 16); }

__device__ __forceinline__ float mla_f16_bits_to_f32(uint16_t v)
{
    __half h;
    *reinterpret_cast<uint16_t *>(&h) = v;
    return __half2float(h);
}

// Round to nearest even; NaN becomes 0x7fff.
__device__ __forceinline__ uint16_t mla_f32_to_bf16_bits(float x)
{
    __nv_bfloat16 b = __float2bfloat16_rn(x);
    return *reinterpret_cast<uint16_t *>(&b);
}
