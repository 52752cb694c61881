/* Scalar conversions (mla_float_to_fp8_e4m3 & co.) against the independent references of
 * tests/oracle.c: exact bit equality everywhere, NaN included (canonical NaN codes: fp8 0x7f,
 * bf16/fp16 0x7fff, which is what the Hopper cvt instructions produce). */
#include "oracle.h"
#include "test.h"

#include <math.h>
#include <string.h>

static float float_from_bits(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

static uint32_t bits_of(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

/* A float drawn from a mix of regimes: any bit pattern, the fp8/fp16 range with uniform
 * exponents, exact midpoints between neighbouring codes (ties), the saturation boundary,
 * +-inf and NaN. */
static float random_special_float(void)
{
    uint64_t r = mla_test_rand_u64();
    float sign = (r & 1) ? -1.0f : 1.0f;
    switch ((r >> 1) % 10) {
    case 0: return float_from_bits((uint32_t)(r >> 32)); /* any pattern, incl. denormal/NaN */
    case 1: /* uniform exponent over the e4m3 range and beyond, full mantissa */
        return sign * ldexpf(mla_test_rand_uniform(1.0f, 2.0f), mla_test_rand_int(-14, 10));
    case 2: { /* exact fp8 tie: midpoint of two neighbouring non-negative codes */
        int c = mla_test_rand_int(0, 0x7d);
        double mid = (oracle_fp8_value((uint8_t)c) + oracle_fp8_value((uint8_t)(c + 1))) / 2;
        return sign * (float)mid;
    }
    case 3: return sign * mla_test_rand_uniform(440.0f, 480.0f); /* saturation boundary */
    case 4: { /* exact fp16 / bf16 ties: low bits exactly half an ulp */
        uint32_t u = (uint32_t)(r >> 32);
        return (r >> 8) & 1 ? float_from_bits((u & 0xffff0000u) | 0x8000u)
                            : float_from_bits((u & 0xffffe000u) | 0x1000u);
    }
    case 5: /* fp16 subnormal / overflow regions */
        return (r >> 8) & 1 ? sign * ldexpf(mla_test_rand_uniform(1.0f, 2.0f), mla_test_rand_int(-27, -13))
                            : sign * mla_test_rand_uniform(65000.0f, 66000.0f);
    case 6: /* e4m3 subnormal region and the underflow edge */
        return sign * mla_test_rand_uniform(0.0f, 0x1p-5f);
    case 7: {
        static const float specials[] = {INFINITY, -INFINITY, NAN, -NAN, 448.0f, -448.0f,
                                         464.0f, -464.0f, 480.0f, 0x1p-10f, 0x1p-9f, 0.0f,
                                         -0.0f, 0x1.8p-10f, 65504.0f, 65520.0f, 0x1p-25f,
                                         0x1p-24f, 0x1p-149f, 3.4028235e38f};
        return specials[(r >> 8) % (sizeof specials / sizeof specials[0])];
    }
    default: return sign * mla_test_rand_uniform(0.0f, 8.0f);
    }
}

TEST(convert_fp8_all_bf16_inputs)
{
    /* Every bf16 value (all 2^16 patterns, incl. inf/NaN/denormals) as a float -> e4m3. */
    int bad = 0;
    for (uint32_t b = 0; b < 65536; b++) {
        float x = float_from_bits(b << 16);
        uint8_t got = mla_float_to_fp8_e4m3(x);
        uint8_t want = oracle_fp8_from_double((double)x);
        if (got != want && ++bad <= 8)
            CHECK_MSG(0, "bf16 0x%04x (%a): got 0x%02x want 0x%02x", b, x, got, want);
    }
    CHECK_MSG(bad == 0, "%d of 65536 bf16 inputs convert wrongly", bad);
}

TEST(convert_fp8_random_floats)
{
    int bad = 0;
    for (int i = 0; i < 1000000; i++) {
        float x = random_special_float();
        uint8_t got = mla_float_to_fp8_e4m3(x);
        uint8_t want = oracle_fp8_from_double((double)x);
        if (got != want && ++bad <= 8)
            CHECK_MSG(0, "x=%a (0x%08x): got 0x%02x want 0x%02x", x, bits_of(x), got, want);
    }
    CHECK_MSG(bad == 0, "%d of 10^6 floats convert wrongly", bad);
}

TEST(convert_fp8_rules)
{
    /* The rules spelled out in DESIGN.md, as explicit cases. */
    CHECK(mla_float_to_fp8_e4m3(448.0f) == 0x7e);
    CHECK(mla_float_to_fp8_e4m3(-448.0f) == 0xfe);
    CHECK(mla_float_to_fp8_e4m3(463.9f) == 0x7e);
    CHECK(mla_float_to_fp8_e4m3(464.0f) == 0x7e); /* tie with the (NaN) code 0x7f: saturate */
    CHECK(mla_float_to_fp8_e4m3(500.0f) == 0x7e);
    CHECK(mla_float_to_fp8_e4m3(1e30f) == 0x7e);
    CHECK(mla_float_to_fp8_e4m3(-1e30f) == 0xfe);
    CHECK(mla_float_to_fp8_e4m3(INFINITY) == 0x7e);
    CHECK(mla_float_to_fp8_e4m3(-INFINITY) == 0xfe);
    CHECK(mla_float_to_fp8_e4m3(NAN) == 0x7f);
    CHECK(mla_float_to_fp8_e4m3(-NAN) == 0x7f);
    CHECK(mla_float_to_fp8_e4m3(0.0f) == 0x00);
    CHECK(mla_float_to_fp8_e4m3(-0.0f) == 0x80);
    CHECK(mla_float_to_fp8_e4m3(0x1p-9f) == 0x01);       /* smallest subnormal */
    CHECK(mla_float_to_fp8_e4m3(0x1p-10f) == 0x00);      /* tie -> even (0) */
    CHECK(mla_float_to_fp8_e4m3(0x1.8p-9f) == 0x02);     /* 1.5 units: tie -> even (2) */
    CHECK(mla_float_to_fp8_e4m3(0x1.000002p-10f) == 0x01);
    CHECK(mla_float_to_fp8_e4m3(1.0625f) == 0x38);       /* 1 + 1/16: tie -> 1.0 (even) */
    CHECK(mla_float_to_fp8_e4m3(1.1875f) == 0x3a);       /* 1 + 3/16: tie -> 1.25 (even) */
    CHECK(mla_float_to_fp8_e4m3(0x1.ep-7f) == 0x08);     /* 7.5 units rounds up to 2^-6 */
    for (int c = 0; c < 256; c++) {
        float v = mla_fp8_e4m3_to_float((uint8_t)c);
        double want = oracle_fp8_value((uint8_t)c);
        if (isnan(want)) {
            CHECK_MSG(isnan(v), "code 0x%02x should decode to NaN, got %g", c, v);
            continue;
        }
        CHECK_MSG((double)v == want && !signbit(v) == !signbit(want), "code 0x%02x: got %a want %a",
                  c, v, want);
        /* Round trip: every finite code encodes back to itself. */
        CHECK_MSG(mla_float_to_fp8_e4m3(v) == c, "code 0x%02x does not round-trip", c);
    }
}

TEST(convert_bf16)
{
    int bad = 0;
    for (uint32_t b = 0; b < 65536; b++) {
        float v = mla_bf16_to_float((uint16_t)b);
        double want = oracle_bf16_value((uint16_t)b);
        int ok = isnan(want) ? isnan(v) : ((double)v == want && !signbit(v) == !signbit(want));
        if (!ok && ++bad <= 8) CHECK_MSG(0, "bf16 0x%04x -> %a, want %a", b, v, want);
        if (!isnan(want) && mla_float_to_bf16(v) != b && ++bad <= 8)
            CHECK_MSG(0, "bf16 0x%04x does not round-trip", b);
        if (isnan(want) && mla_float_to_bf16(v) != 0x7fff && ++bad <= 8)
            CHECK_MSG(0, "bf16 NaN 0x%04x -> 0x%04x, want canonical 0x7fff", b, mla_float_to_bf16(v));
    }
    for (int i = 0; i < 1000000; i++) {
        float x = random_special_float();
        uint16_t got = mla_float_to_bf16(x), want = oracle_bf16_from_double((double)x);
        if (got != want && ++bad <= 8)
            CHECK_MSG(0, "x=%a (0x%08x): bf16 got 0x%04x want 0x%04x", x, bits_of(x), got, want);
    }
    CHECK(mla_float_to_bf16(3.4028235e38f) == 0x7f80); /* rounds up past the largest bf16 */
    CHECK(mla_float_to_bf16(float_from_bits(0x3f808000u)) == 0x3f80); /* tie -> even */
    CHECK(mla_float_to_bf16(float_from_bits(0x3f818000u)) == 0x3f82); /* tie -> even */
    CHECK_MSG(bad == 0, "%d bf16 conversions wrong", bad);
}

TEST(convert_fp16)
{
    int bad = 0;
    for (uint32_t b = 0; b < 65536; b++) {
        float v = mla_fp16_to_float((uint16_t)b);
        double want = oracle_fp16_value((uint16_t)b);
        int ok = isnan(want) ? isnan(v) : ((double)v == want && !signbit(v) == !signbit(want));
        if (!ok && ++bad <= 8) CHECK_MSG(0, "fp16 0x%04x -> %a, want %a", b, v, want);
        if (!isnan(want) && mla_float_to_fp16(v) != b && ++bad <= 8)
            CHECK_MSG(0, "fp16 0x%04x does not round-trip", b);
    }
    for (int i = 0; i < 1000000; i++) {
        float x = random_special_float();
        uint16_t got = mla_float_to_fp16(x), want = oracle_fp16_from_double((double)x);
        if (got != want && ++bad <= 8)
            CHECK_MSG(0, "x=%a (0x%08x): fp16 got 0x%04x want 0x%04x", x, bits_of(x), got, want);
    }
    CHECK(mla_float_to_fp16(65504.0f) == 0x7bff);
    CHECK(mla_float_to_fp16(65519.99f) == 0x7bff);
    CHECK(mla_float_to_fp16(65520.0f) == 0x7c00); /* tie with 65536 -> even -> inf */
    CHECK(mla_float_to_fp16(0x1p-24f) == 0x0001);
    CHECK(mla_float_to_fp16(0x1p-25f) == 0x0000); /* tie -> even (0) */
    CHECK(mla_float_to_fp16(-INFINITY) == 0xfc00);
    CHECK(mla_float_to_fp16(NAN) == 0x7fff);
    CHECK_MSG(bad == 0, "%d fp16 conversions wrong", bad);
}

TEST(convert_dtype_size_and_name)
{
    CHECK(mla_dtype_size(MLA_DTYPE_BF16) == 2);
    CHECK(mla_dtype_size(MLA_DTYPE_FP16) == 2);
    CHECK(mla_dtype_size(MLA_DTYPE_FP8_E4M3) == 1);
    CHECK(mla_dtype_size(MLA_DTYPE_F32) == 4);
    CHECK(mla_dtype_size(MLA_DTYPE_I32) == 4);
    CHECK(mla_dtype_size(MLA_DTYPE_I64) == 8);
    CHECK(mla_dtype_size((mla_dtype)99) == 0);
    CHECK(strcmp(mla_dtype_name(MLA_DTYPE_BF16), "bf16") == 0);
    CHECK(strcmp(mla_dtype_name(MLA_DTYPE_FP16), "fp16") == 0);
    CHECK(strcmp(mla_dtype_name(MLA_DTYPE_FP8_E4M3), "fp8_e4m3") == 0);
    CHECK(strcmp(mla_dtype_name(MLA_DTYPE_F32), "f32") == 0);
    CHECK(strcmp(mla_dtype_name(MLA_DTYPE_I32), "i32") == 0);
    CHECK(strcmp(mla_dtype_name(MLA_DTYPE_I64), "i64") == 0);
    CHECK(mla_dtype_name((mla_dtype)99) != NULL);
}
