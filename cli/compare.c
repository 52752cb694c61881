/* Error measures of an output against a reference (every element), and result lines. The
 * value conversions here are written independently of the library's. */
#include "cli.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

double cli_bf16_to_double(uint16_t v)
{
    uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return (double)f;
}

/* e4m3: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinity, S.1111.111 is NaN. */
static double decode_e4m3(uint8_t v)
{
    int sign = v >> 7, exponent = (v >> 3) & 15, mantissa = v & 7;
    if (exponent == 15 && mantissa == 7) return NAN;
    double magnitude = exponent == 0 ? ldexp(mantissa / 8.0, -6)
                                     : ldexp(1.0 + mantissa / 8.0, exponent - 7);
    return sign ? -magnitude : magnitude;
}

static double e4m3_table[256];
static pthread_once_t e4m3_once = PTHREAD_ONCE_INIT;

static void fill_e4m3_table(void)
{
    for (int v = 0; v < 256; v++) e4m3_table[v] = decode_e4m3((uint8_t)v);
}

double cli_fp8_e4m3_to_double(uint8_t v)
{
    pthread_once(&e4m3_once, fill_e4m3_table); /* the references call this from threads */
    return e4m3_table[v];
}

static double value_at(cli_values v, size_t i)
{
    switch (v.kind) {
    case CLI_VALUES_BF16: return cli_bf16_to_double(((const uint16_t *)v.data)[i]);
    case CLI_VALUES_F32: return (double)((const float *)v.data)[i];
    default: return ((const double *)v.data)[i];
    }
}

cli_error_stats cli_compare(cli_values out, cli_values ref, size_t n, size_t row_len)
{
    cli_error_stats s;
    memset(&s, 0, sizeof s);
    double err2 = 0, ref2 = 0, row_err2 = 0, row_ref2 = 0;
    for (size_t i = 0; i < n; i++) {
        double got = value_at(out, i), want = value_at(ref, i);
        s.count++;
        if (isnan(got) || isnan(want)) { /* NaN never passes, on either side */
            s.nonfinite++;
        } else if (isinf(got) || isinf(want)) {
            /* A bf16 output is never infinite; an LSE is -inf exactly for a row without keys. */
            if (out.kind == CLI_VALUES_BF16 || ref.kind == CLI_VALUES_BF16)
                s.nonfinite++;
            else if (got != want)
                s.mismatched_inf++;
        } else {
            double e = fabs(got - want);
            if (e > s.max_abs_err) s.max_abs_err = e;
            err2 += e * e;
            ref2 += want * want;
            row_err2 += e * e;
            row_ref2 += want * want;
        }
        if ((i + 1) % row_len == 0) { /* a wrong row hides in the global norm: check each */
            double row = row_ref2 > 0 ? sqrt(row_err2 / row_ref2) : sqrt(row_err2);
            if (row > s.worst_row_rel_err) s.worst_row_rel_err = row;
            row_err2 = row_ref2 = 0;
        }
    }
    s.rel_err = ref2 > 0 ? sqrt(err2 / ref2) : sqrt(err2);
    return s;
}

int cli_report_values(const char *what, const cli_error_stats *s, double rel_tol,
                      double row_rel_tol)
{
    int pass = s->nonfinite == 0 && s->mismatched_inf == 0 && s->rel_err < rel_tol &&
               s->worst_row_rel_err < row_rel_tol;
    printf("  %-14s max_abs_err %.3e  rel_err %.3e (tol %.0e)  worst row %.3e (tol %.0e)  "
           "nan %lld/%lld  %s\n",
           what, s->max_abs_err, s->rel_err, rel_tol, s->worst_row_rel_err, row_rel_tol,
           (long long)(s->nonfinite + s->mismatched_inf), (long long)s->count,
           pass ? "PASS" : "FAIL");
    return pass;
}

int cli_report_lse(const char *what, const cli_error_stats *s, double abs_tol)
{
    int pass = s->nonfinite == 0 && s->mismatched_inf == 0 && s->max_abs_err < abs_tol;
    printf("  %-14s max_abs_err %.3e (tol %.0e)  nan %lld/%lld  inf mismatches %lld  %s\n",
           what, s->max_abs_err, abs_tol, (long long)s->nonfinite, (long long)s->count,
           (long long)s->mismatched_inf, pass ? "PASS" : "FAIL");
    return pass;
}

int cli_report_bytes(const char *what, const uint8_t *got, const uint8_t *want, size_t n)
{
    size_t mismatched = 0, first = 0;
    for (size_t i = 0; i < n; i++) {
        if (got[i] != want[i] && mismatched++ == 0) first = i;
    }
    int pass = mismatched == 0;
    printf("  %-14s mismatched bytes %zu/%zu", what, mismatched, n);
    if (!pass)
        printf(" (first at byte %zu: 0x%02x, expected 0x%02x)", first, got[first], want[first]);
    printf("  %s\n", pass ? "PASS" : "FAIL");
    return pass;
}
