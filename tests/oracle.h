/* Test oracle: naive double-precision MLA attention (decode, prefill, merge) over float inputs,
 * independent of the library's code. The tests dequantize their inputs with the conversions
 * below (written from the format definitions with ldexp/rint, sharing nothing with
 * src/core/convert.c), so oracle and kernel see the same quantized values.
 * Also: random fills of bf16 / fp8 buffers and output comparison. Used by the CPU tests and by
 * the GPU tests. */
#ifndef MLA_TEST_ORACLE_H
#define MLA_TEST_ORACLE_H

#include "mla.h"

#include <stdint.h>

/* ---- independent conversions ---- */
double oracle_fp8_value(uint8_t code);        /* e4m3fn code -> value (NaN for 0x7f/0xff) */
double oracle_bf16_value(uint16_t bits);
double oracle_fp16_value(uint16_t bits);
/* Nearest representable, ties to the even code; fp8: |x| > 448 and +-inf -> +-448, NaN ->
 * 0x7f; bf16/fp16: overflow -> inf, NaN -> canonical 0x7fff. */
uint8_t oracle_fp8_from_double(double x);
uint16_t oracle_bf16_from_double(double x);
uint16_t oracle_fp16_from_double(double x);

/* ---- random fills: raw buffer plus the dequantized values the oracle uses ---- */
/* bf16 values uniform in [lo, hi), rounded to bf16. deq may be NULL. */
void oracle_fill_bf16(uint16_t *buf, float *deq, int64_t n, float lo, float hi);
/* fp8 codes of values uniform in [lo, hi) (rounded to e4m3); deq = code value (unscaled). */
void oracle_fill_fp8(uint8_t *buf, float *deq, int64_t n, float lo, float hi);
void oracle_fill_f32(float *buf, int64_t n, float lo, float hi);
/* Fills a buffer of `dtype` (bf16 or fp8_e4m3 or f32) and its dequantized copy. */
void oracle_fill(mla_dtype dtype, void *buf, float *deq, int64_t n, float lo, float hi);

/* ---- data whose row maxima move inside a request ---- */
/* For each request of >= 128 keys, overwrites the rope dims [dv, dqk) of up to 6 keys spread
 * over its length with c * q (quantized to the cache dtype; q = the last query token's row of
 * head b % heads), so that this part of that row's score grows key by key: ~4 at the first,
 * then steps of 3, 7, 9, 13, 5 and 11 (log2 units; the value dims keep their random data and
 * add their random share, sd ~0.6 with the tests' ranges). Online softmaxes then rescale
 * inside a request, with jumps below and above 2^8. Keys past seq_lens are not touched. */
typedef struct oracle_plant_args {
    int batch, q_len, heads, dqk, dv, page_size, max_pages;
    mla_dtype q_dtype, kv_dtype;       /* bf16 or fp8_e4m3 each */
    const void *q;                     /* [batch, q_len, heads, dqk] */
    void *kv;                          /* [pages, page_size, dqk] */
    float *kv_deq;                     /* its dequantized copy, kept in step (may be NULL) */
    const int32_t *block_table;        /* [batch, max_pages] */
    const int32_t *seq_lens;           /* [batch] */
    double bmm1;                       /* score = bmm1 * q.k (natural log units) */
} oracle_plant_args;
void oracle_plant_growing_scores(const oracle_plant_args *a);

/* ---- the oracle ---- */
typedef struct oracle_decode_args {
    int batch, q_len, heads, dqk, dv;
    int page_size, num_pages, max_pages;
    int causal;
    const float *q;             /* [batch, q_len, heads, dqk] (values without q_scale) */
    const float *kv;            /* [num_pages, page_size, dqk] (values without k_scale) */
    const int32_t *block_table; /* [batch, max_pages]; keys on pages outside [0, num_pages)
                                 * are skipped, as mla.h says kernels do */
    const int32_t *seq_lens;    /* [batch] */
    double bmm1, bmm2;          /* logit = bmm1 * q.k; out = bmm2 * sum p v / sum p */
    double *out;                /* [batch, q_len, heads, dv] */
    double *lse;                /* [batch, q_len, heads] (-inf when no key is visible) */
    int p_e4m3;                 /* nonzero: P rounded to e4m3 as e4m3(256 p) / 256 for P V
                                 * (sums unrounded): the fp8-math decode kernel's path */
} oracle_decode_args;
void oracle_decode(const oracle_decode_args *a);

typedef struct oracle_prefill_args {
    int batch, heads, dqk, dv;
    int causal;
    const float *q, *k, *v;     /* [total_q, heads, dqk], [total_kv, heads, dqk], [.., dv] */
    const int32_t *cu_q, *cu_kv;
    double bmm1, bmm2;
    double *out;                /* [total_q, heads, dv] */
    double *lse;                /* [total_q, heads] */
} oracle_prefill_args;
void oracle_prefill(const oracle_prefill_args *a);

/* rows = tokens * heads; o_* [rows, dim]. */
void oracle_merge(int64_t rows, int dim, const float *o_a, const float *lse_a, const float *o_b,
                  const float *lse_b, double *o, double *lse);

/* ---- comparison ---- */
typedef struct oracle_tolerance {
    double rel_l2;   /* ||out - ref|| / ||ref|| must stay below this */
    double elem_rel; /* per element: |err| <= elem_rel * |ref| + abs_frac * max|ref| + abs */
    double abs_frac;
    double abs;
} oracle_tolerance;

typedef struct oracle_report {
    int64_t n;
    int64_t nan_count;      /* NaN in the output where the reference is not NaN */
    int64_t poison_count;   /* elements still holding the poison pattern */
    int64_t bad_count;      /* elements outside the per-element tolerance (NaN included) */
    int64_t first_bad;      /* index of the first bad element, -1 if none */
    double max_abs_err, max_ref, rel_l2;
    double first_bad_out, first_bad_ref;
    int ok;                 /* bad_count == 0 && rel_l2 < tol.rel_l2 */
} oracle_report;

/* Output kinds: bf16 (poison 0xffff), f32 (poison 0xffffffff bits). An -inf/+inf reference
 * must be matched exactly. */
oracle_report oracle_compare_bf16(const uint16_t *out, const double *ref, int64_t n,
                                  oracle_tolerance tol);
oracle_report oracle_compare_f32(const float *out, const double *ref, int64_t n,
                                 oracle_tolerance tol);
/* Prints one line "label: n=.. max_abs=.. rel=.. bad=.. nan=.. poison=.. first bad i out ref". */
void oracle_print_report(const char *label, const oracle_report *r);

#endif
