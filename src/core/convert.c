/* Scalar dtype conversions, bit-exact with the GPU conversions (DESIGN.md "FP8 e4m3 rules"):
 * fp8 e4m3 ("fn": no infinity, max 448, NaN = S.1111.111) as produced by Hopper's
 * cvt.rn.satfinite.e4m3x2.f32, bf16 and fp16 with round-to-nearest-even. Integer bit
 * manipulation only, so the result never depends on the FPU rounding mode or on
 * flush-to-zero settings. NaN inputs give the canonical NaN the GPU cvt instructions give
 * (fp8 0x7f, bf16 0x7fff, fp16 0x7fff, whatever the sign or payload): checked on an H200
 * against cvt.rn.satfinite.e4m3x2.f32, cvt.rn.bf16.f32 and cvt.rn.f16.f32 for all 2^32
 * float inputs (0 mismatches). */
#include "mla_internal.h"

#include <string.h>

static uint32_t float_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static float bits_float(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* m >> shift rounded to nearest, ties to even; shift in 1..31. */
static uint32_t shift_right_rne(uint32_t m, unsigned shift)
{
    uint32_t q = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return q;
}

uint8_t mla_float_to_fp8_e4m3(float x)
{
    uint32_t b = float_bits(x);
    uint8_t sign = (uint8_t)((b >> 24) & 0x80u);
    uint32_t u = b & 0x7fffffffu;
    if (u > 0x7f800000u) return 0x7fu; /* NaN -> the canonical NaN, sign dropped, as the GPU does */
    if (u == 0x7f800000u) return (uint8_t)(sign | 0x7eu); /* satfinite: inf -> 448 */
    uint32_t e = u >> 23;
    /* Below 2^-10 (half the smallest subnormal 2^-9): rounds to zero (2^-10 ties to 0). */
    if (e < 117u) return sign;
    uint32_t m = (u & 0x7fffffu) | 0x800000u; /* 24-bit significand, value m * 2^(e-150) */
    uint32_t code;
    if (e >= 121u) {
        /* e4m3 normal (|x| >= 2^-6): keep 3 fraction bits; a carry out of the fraction
         * bumps the exponent field, which the addition does by itself. */
        if (e > 135u) return (uint8_t)(sign | 0x7eu); /* |x| >= 512: saturate */
        code = ((e - 121u) << 3) + shift_right_rne(m, 20);
    } else {
        /* e4m3 subnormal: count of 2^-9 units; 8 units is the smallest normal 0x08. */
        code = shift_right_rne(m, 141u - e);
    }
    if (code > 0x7eu) code = 0x7eu; /* beyond 448 (incl. 464 and up): saturate, never NaN */
    return (uint8_t)(sign | code);
}

float mla_fp8_e4m3_to_float(uint8_t v)
{
    uint32_t sign = (uint32_t)(v & 0x80u) << 24;
    uint32_t exp = (v >> 3) & 0xfu;
    uint32_t man = v & 0x7u;
    if (exp == 0xfu && man == 0x7u) return bits_float(sign | 0x7fc00000u);
    if (exp == 0) {
        float mag = (float)man * 0x1p-9f; /* exact */
        return sign ? -mag : mag;
    }
    return bits_float(sign | ((exp + 120u) << 23) | (man << 20));
}

uint16_t mla_float_to_bf16(float x)
{
    uint32_t b = float_bits(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) return 0x7fffu; /* canonical quiet NaN, as the GPU */
    /* Adding 0x7fff plus the kept lsb rounds to nearest even; overflow carries into inf. */
    b += 0x7fffu + ((b >> 16) & 1u);
    return (uint16_t)(b >> 16);
}

float mla_bf16_to_float(uint16_t v)
{
    return bits_float((uint32_t)v << 16);
}

uint16_t mla_float_to_fp16(float x)
{
    uint32_t b = float_bits(x);
    uint16_t sign = (uint16_t)((b >> 16) & 0x8000u);
    uint32_t u = b & 0x7fffffffu;
    if (u > 0x7f800000u) return 0x7fffu; /* canonical quiet NaN, as the GPU */
    if (u == 0x7f800000u) return (uint16_t)(sign | 0x7c00u);
    uint32_t e = u >> 23;
    if (e < 102u) return sign; /* below 2^-25 (half the smallest subnormal 2^-24), ties incl. */
    if (e > 142u) return (uint16_t)(sign | 0x7c00u); /* >= 65536: overflow to inf */
    uint32_t m = (u & 0x7fffffu) | 0x800000u;
    uint32_t code;
    if (e >= 113u)
        code = ((e - 113u) << 10) + shift_right_rne(m, 13); /* normal; carry bumps exponent */
    else
        code = shift_right_rne(m, 126u - e); /* subnormal: count of 2^-24 units */
    if (code > 0x7c00u) code = 0x7c00u; /* cannot happen for e <= 142, kept as a guard */
    return (uint16_t)(sign | code);
}

float mla_fp16_to_float(uint16_t v)
{
    uint32_t sign = (uint32_t)(v & 0x8000u) << 16;
    uint32_t exp = (v >> 10) & 0x1fu;
    uint32_t man = v & 0x3ffu;
    if (exp == 0x1fu) return bits_float(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        float mag = (float)man * 0x1p-24f; /* exact */
        return sign ? -mag : mag;
    }
    return bits_float(sign | ((exp + 112u) << 23) | (man << 13));
}

size_t mla_dtype_size(mla_dtype dtype)
{
    switch (dtype) {
    case MLA_DTYPE_BF16: return 2;
    case MLA_DTYPE_FP16: return 2;
    case MLA_DTYPE_FP8_E4M3: return 1;
    case MLA_DTYPE_F32: return 4;
    case MLA_DTYPE_I32: return 4;
    case MLA_DTYPE_I64: return 8;
    }
    return 0;
}

const char *mla_dtype_name(mla_dtype dtype)
{
    switch (dtype) {
    case MLA_DTYPE_BF16: return "bf16";
    case MLA_DTYPE_FP16: return "fp16";
    case MLA_DTYPE_FP8_E4M3: return "fp8_e4m3";
    case MLA_DTYPE_F32: return "f32";
    case MLA_DTYPE_I32: return "i32";
    case MLA_DTYPE_I64: return "i64";
    }
    return "unknown";
}
