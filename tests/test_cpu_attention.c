/* The "cpu" backend through the public API against the double-precision oracle (tests/oracle.c)
 * on the same quantized inputs, dequantized by the test's own conversions.
 *
 * Tolerances (CPU kernels accumulate in float, round the output to bf16 once):
 *   bf16 outputs: ||out - ref|| / ||ref|| < 4e-3 and, per element,
 *                 |err| <= 2^-8 |ref| + 1e-3 max|ref| + 1e-6
 *                 (2^-8: bf16 rounding is at most half an ulp = 2^-8 relative; 1e-3 max|ref|
 *                 covers float accumulation; the GPU bar is looser: 1e-2 and 2e-2 max|ref|).
 *   f32 LSE:      |err| <= 1e-5 |ref| + 1e-5, and -inf exactly where no key is visible.
 *   f32 merge:    |err| <= 1e-5 |ref| + 1e-6 max|ref|; merge of bf16 parts: see merge_bf16_tol.
 *   conversions (cache write, quantize, kv_pack): bit-exact.
 * Outputs are poisoned (0xff bytes = NaN) before every call; every element is checked and a
 * NaN or a poisoned element never passes. Unused cache slots hold NaN. */
#include "mla_internal.h" /* mla_parallel_for, mla_cpu_num_threads (tested directly) */
#include "oracle.h"
#include "test.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static const mla_device cpu_device = {MLA_DEVICE_CPU, 0};

static const oracle_tolerance bf16_tol = {.rel_l2 = 4e-3, .elem_rel = 1.0 / 256, .abs_frac = 1e-3,
                                          .abs = 1e-6};
/* Merged bf16 partial outputs: each part carries its own bf16 rounding (2^-9 of |part|), and
 * a merged value can be smaller than its parts, so the absolute term is 1e-2 max|ref|. */
static const oracle_tolerance merge_bf16_tol = {.rel_l2 = 1e-2, .elem_rel = 1.0 / 256,
                                                .abs_frac = 1e-2, .abs = 1e-6};
static const oracle_tolerance lse_tol = {.rel_l2 = 1e-5, .elem_rel = 1e-5, .abs_frac = 0,
                                         .abs = 1e-5};

static mla_tensor tensor(void *data, mla_dtype dt, int ndim, int64_t d0, int64_t d1, int64_t d2,
                         int64_t d3)
{
    int64_t shape[4] = {d0, d1, d2, d3};
    return mla_tensor_contiguous(data, dt, cpu_device, ndim, shape);
}

static void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "test: out of memory\n");
        exit(2);
    }
    return p;
}

static void *poisoned(size_t bytes)
{
    void *p = xmalloc(bytes);
    memset(p, 0xff, bytes);
    return p;
}

static void check_report(const char *label, const char *what, const oracle_report *r,
                         const oracle_tolerance *tol)
{
    if (r->ok) return;
    char name[256];
    snprintf(name, sizeof name, "%s %s", label, what);
    oracle_print_report(name, r);
    CHECK_MSG(r->ok, "%s: %lld bad elements (nan %lld, poison %lld), rel_l2 %.3g (limit %.3g)",
              name, (long long)r->bad_count, (long long)r->nan_count, (long long)r->poison_count,
              r->rel_l2, tol->rel_l2);
}

static void shuffle_int(int32_t *v, int n)
{
    for (int i = n - 1; i > 0; i--) {
        int j = mla_test_rand_int(0, i);
        int32_t t = v[i];
        v[i] = v[j];
        v[j] = t;
    }
}

/* NaN in the storage format: e4m3 0x7f, bf16 0x7fc0. */
static void fill_nan(mla_dtype dtype, void *buf, float *deq, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        if (dtype == MLA_DTYPE_FP8_E4M3) ((uint8_t *)buf)[i] = 0x7f;
        else ((uint16_t *)buf)[i] = 0x7fc0;
        deq[i] = NAN;
    }
}

/* Default value ranges: bf16 data in [-1, 1]; fp8 data in [-2, 2] (then scaled by 0.5-ish
 * scales), so products stay in the same range either way. */
static float range_of(mla_dtype dt) { return dt == MLA_DTYPE_FP8_E4M3 ? 2.0f : 1.0f; }

/* ------------------------------------------------------------------------------------------
 * Decode
 * ---------------------------------------------------------------------------------------- */
typedef struct prefill_case {
    int heads, nope, rope, v_dim;
    mla_dtype dtype;
    int causal, with_lse;
    int batch;
    const int *lq, *lkv;
    int nan_tail; /* the last nan_tail keys (k and v, all heads) of every request hold NaN */
} prefill_case;
static void run_prefill_case(const prefill_case *c, const char *label);

typedef struct decode_case {
    int batch, q_len, heads, rank, rope, page;
    mla_dtype kv_dtype, q_dtype;
    int with_lse, no_causal;
    int unused_entries; /* value of block-table entries past a sequence's pages (0: a real page) */
    int nan_tail;       /* the last nan_tail tokens of every sequence hold NaN */
    int fp8_math;       /* mla_config.decode_fp8_math (the CPU backend computes exactly anyway) */
    int grow_scores;    /* oracle_plant_growing_scores: a row's maximum moves inside requests */
    const int *seq_lens;
} decode_case;

static void run_decode_case(const decode_case *c, const char *label)
{
    const int B = c->batch, L = c->q_len, H = c->heads, R = c->rank, D = c->rank + c->rope;
    const int fp8_kv = c->kv_dtype == MLA_DTYPE_FP8_E4M3, fp8_q = c->q_dtype == MLA_DTYPE_FP8_E4M3;
    mla_config cfg;
    mla_config_init(&cfg);
    cfg.num_heads = H;
    cfg.kv_lora_rank = R;
    cfg.qk_rope_head_dim = c->rope;
    cfg.page_size = c->page;
    cfg.kv_cache_dtype = c->kv_dtype;
    cfg.max_q_len = 8;
    cfg.scales.q_scale = 0.5f;
    cfg.scales.k_scale = 0.375f; /* ignored (and not warned about) with a bf16 cache */
    cfg.scales.o_scale = 1.25f;
    cfg.has_k_scale = fp8_kv;
    cfg.decode_fp8_math = c->fp8_math;
    mla_backend *be = NULL;
    CHECK_STATUS(mla_backend_create("cpu", &cfg, &be), MLA_OK);
    if (!be) return;

    int max_pages = 1;
    for (int b = 0; b < B; b++) {
        int pages = (c->seq_lens[b] + c->page - 1) / c->page;
        if (pages + 1 > max_pages) max_pages = pages + 1;
    }
    const int num_pages = B * max_pages + 3;
    int32_t *perm = xmalloc((size_t)num_pages * sizeof *perm);
    for (int i = 0; i < num_pages; i++) perm[i] = i;
    shuffle_int(perm, num_pages); /* pages of a request are scattered over the cache */
    int32_t *table = xmalloc((size_t)B * max_pages * sizeof *table);
    int32_t *seq = xmalloc((size_t)B * sizeof *seq);

    const int64_t cache_elems = (int64_t)num_pages * c->page * D;
    void *cache = xmalloc((size_t)cache_elems * mla_dtype_size(c->kv_dtype));
    float *cache_f = xmalloc((size_t)cache_elems * sizeof(float));
    fill_nan(c->kv_dtype, cache, cache_f, cache_elems); /* unused slots must never matter */
    const size_t kv_es = mla_dtype_size(c->kv_dtype);
    for (int b = 0; b < B; b++) {
        seq[b] = c->seq_lens[b];
        int pages = (seq[b] + c->page - 1) / c->page;
        for (int j = 0; j < max_pages; j++)
            table[b * max_pages + j] = j < pages ? perm[b * max_pages + j] : c->unused_entries;
        for (int t = 0; t < seq[b] - c->nan_tail; t++) {
            int64_t row = (int64_t)table[b * max_pages + t / c->page] * c->page + t % c->page;
            oracle_fill(c->kv_dtype, (char *)cache + row * D * kv_es, cache_f + row * D, D,
                        -range_of(c->kv_dtype), range_of(c->kv_dtype));
        }
    }
    const int64_t q_elems = (int64_t)B * L * H * D, out_elems = (int64_t)B * L * H * R;
    void *q = xmalloc((size_t)q_elems * mla_dtype_size(c->q_dtype));
    float *q_f = xmalloc((size_t)q_elems * sizeof(float));
    oracle_fill(c->q_dtype, q, q_f, q_elems, -range_of(c->q_dtype), range_of(c->q_dtype));
    if (c->grow_scores) {
        const oracle_plant_args pa = {
            .batch = B, .q_len = L, .heads = H, .dqk = D, .dv = R, .page_size = c->page, .max_pages = max_pages,
            .q_dtype = c->q_dtype, .kv_dtype = c->kv_dtype, .q = q, .kv = cache, .kv_deq = cache_f,
            .block_table = table, .seq_lens = seq,
            .bmm1 = (double)cfg.scales.softmax_scale * (fp8_q ? 0.5 : 1.0) * (fp8_kv ? 0.375 : 1.0),
        };
        oracle_plant_growing_scores(&pa);
    }
    uint16_t *out = poisoned((size_t)out_elems * 2);
    float *lse = c->with_lse ? poisoned((size_t)B * L * H * sizeof(float)) : NULL;

    mla_decode_args args;
    memset(&args, 0, sizeof args);
    args.q = tensor(q, c->q_dtype, 4, B, L, H, D);
    args.kv_cache = tensor(cache, c->kv_dtype, 3, num_pages, c->page, D, 0);
    args.block_table = tensor(table, MLA_DTYPE_I32, 2, B, max_pages, 0, 0);
    args.seq_lens = tensor(seq, MLA_DTYPE_I32, 1, B, 0, 0, 0);
    args.out = tensor(out, MLA_DTYPE_BF16, 4, B, L, H, R);
    if (lse) args.lse = tensor(lse, MLA_DTYPE_F32, 3, B, L, H, 0);
    args.no_causal_mask = c->no_causal;
    CHECK_STATUS(mla_decode(be, &args), MLA_OK);

    double *ref = xmalloc((size_t)out_elems * sizeof(double));
    double *ref_lse = xmalloc((size_t)B * L * H * sizeof(double));
    oracle_decode_args oa = {
        .batch = B, .q_len = L, .heads = H, .dqk = D, .dv = R,
        .page_size = c->page, .num_pages = num_pages, .max_pages = max_pages,
        .causal = !c->no_causal, .q = q_f, .kv = cache_f, .block_table = table, .seq_lens = seq,
        .bmm1 = (double)cfg.scales.softmax_scale * (fp8_q ? 0.5 : 1.0) * (fp8_kv ? 0.375 : 1.0),
        .bmm2 = 1.25 * (fp8_kv ? 0.375 : 1.0),
        .out = ref, .lse = ref_lse,
    };
    oracle_decode(&oa);
    oracle_report r = oracle_compare_bf16(out, ref, out_elems, bf16_tol);
    check_report(label, "out", &r, &bf16_tol);
    if (lse) {
        r = oracle_compare_f32(lse, ref_lse, (int64_t)B * L * H, lse_tol);
        check_report(label, "lse", &r, &lse_tol);
    }

    free(perm); free(table); free(seq); free(cache); free(cache_f); free(q); free(q_f);
    free(out); free(lse); free(ref); free(ref_lse);
    mla_backend_destroy(be);
}

/* Sequence lengths around page boundaries, a single token, and ones shorter than q_len (rows
 * with no visible key). */
static const int boundary_lens[] = {1, 31, 32, 33, 63, 64, 65, 7, 100};
#define NUM_BOUNDARY_LENS ((int)(sizeof boundary_lens / sizeof boundary_lens[0]))

static void decode_sweep(mla_dtype kv_dtype, mla_dtype q_dtype)
{
    static const int q_lens[] = {1, 2, 4, 8};
    static const int heads[] = {1, 16, 128};
    static const int pages[] = {32, 64};
    for (int a = 0; a < 4; a++)
        for (int h = 0; h < 3; h++)
            for (int p = 0; p < 2; p++) {
                decode_case c = {
                    .batch = NUM_BOUNDARY_LENS, .q_len = q_lens[a], .heads = heads[h],
                    .rank = 64, .rope = 16, .page = pages[p], .kv_dtype = kv_dtype,
                    .q_dtype = q_dtype, .with_lse = (a + h + p) % 2 == 0,
                    .seq_lens = boundary_lens,
                };
                char label[160];
                snprintf(label, sizeof label, "decode %s cache, %s q, q_len %d, H %d, page %d",
                         mla_dtype_name(kv_dtype), mla_dtype_name(q_dtype), c.q_len, c.heads,
                         c.page);
                run_decode_case(&c, label);
            }
}

TEST(cpu_decode_growing_scores)
{
    /* A row whose maximum grows along the sequence (steps of 3..13 in log2 units): the
     * backend's online softmax rescales inside a request. Also checks the planted data. */
    static const int lens[] = {4097, 1000, 130, 2500, 64, 777};
    static const mla_dtype kv[] = {MLA_DTYPE_FP8_E4M3, MLA_DTYPE_BF16};
    for (int i = 0; i < 2; i++)
        for (int a = 0; a < 2; a++) {
            decode_case c = {
                .batch = 6, .q_len = a ? 4 : 1, .heads = a ? 3 : 16, .rank = a ? 64 : 512,
                .rope = a ? 16 : 64, .page = 64, .kv_dtype = kv[i],
                .q_dtype = a ? MLA_DTYPE_FP8_E4M3 : MLA_DTYPE_BF16, .with_lse = 1,
                .grow_scores = 1, .seq_lens = lens,
            };
            char label[160];
            snprintf(label, sizeof label, "growing scores, %s cache, %s q, q_len %d, H %d",
                     mla_dtype_name(c.kv_dtype), mla_dtype_name(c.q_dtype), c.q_len, c.heads);
            run_decode_case(&c, label);
        }
}

TEST(oracle_planted_scores_grow_as_documented)
{
    /* The test data above: the planted part of the keys' scores for their row, in log2 units. */
    enum { H = 2, D = 576, LEN = 1000, PAGE = 64, PAGES = (LEN + PAGE - 1) / PAGE };
    static const double expect[] = {4, 7, 14, 23, 36, 41}; /* 1000 / 128 = 7 -> all 6 plants */
    for (int kvi = 0; kvi < 2; kvi++) {
        const mla_dtype kvt = kvi ? MLA_DTYPE_BF16 : MLA_DTYPE_FP8_E4M3, qt = kvi ? MLA_DTYPE_FP8_E4M3 : MLA_DTYPE_BF16;
        void *q = xmalloc((size_t)H * D * 2);
        float *q_f = xmalloc((size_t)H * D * sizeof(float));
        void *kv = xmalloc((size_t)PAGES * PAGE * D * 2);
        float *kv_f = xmalloc((size_t)PAGES * PAGE * D * sizeof(float));
        oracle_fill(qt, q, q_f, (int64_t)H * D, -2.0f, 2.0f);
        oracle_fill(kvt, kv, kv_f, (int64_t)PAGES * PAGE * D, -1.0f, 1.0f);
        int32_t table[PAGES], len = LEN;
        for (int i = 0; i < PAGES; i++) table[i] = PAGES - 1 - i;
        const double bmm1 = 0.0722 * (kvi ? 1.0 : 0.375);
        const oracle_plant_args pa = {
            .batch = 1, .q_len = 1, .heads = H, .dqk = D, .dv = 512, .page_size = PAGE, .max_pages = PAGES,
            .q_dtype = qt, .kv_dtype = kvt, .q = q, .kv = kv, .kv_deq = kv_f,
            .block_table = table, .seq_lens = &len, .bmm1 = bmm1,
        };
        oracle_plant_growing_scores(&pa);
        for (int i = 0; i < 6; i++) {
            const int key = (i + 1) * LEN / 7;
            const int64_t row = (int64_t)table[key / PAGE] * PAGE + key % PAGE;
            double dot = 0; /* row of head 0 (request 0 % H), the planted rope dims */
            for (int d = 512; d < D; d++) dot += (double)q_f[d] * kv_f[row * D + d];
            const double score = bmm1 * dot * 1.4426950408889634;
            CHECK_MSG(fabs(score - expect[i]) < 0.25 + 0.02 * expect[i], "%s cache: plant %d score %.3f, expected ~%.0f",
                      mla_dtype_name(kvt), i, score, expect[i]);
        }
        free(q); free(q_f); free(kv); free(kv_f);
    }
}

TEST(cpu_decode_bf16_cache_q_len_heads_pages)
{
    decode_sweep(MLA_DTYPE_BF16, MLA_DTYPE_BF16);
}

TEST(cpu_decode_fp8_cache_q_len_heads_pages)
{
    decode_sweep(MLA_DTYPE_FP8_E4M3, MLA_DTYPE_BF16);
}

TEST(cpu_decode_fp8_query)
{
    static const int lens[] = {5, 64, 65};
    for (int kv = 0; kv < 2; kv++) {
        decode_case c = {
            .batch = 3, .q_len = 2, .heads = 16, .rank = 64, .rope = 16, .page = 32,
            .kv_dtype = kv ? MLA_DTYPE_FP8_E4M3 : MLA_DTYPE_BF16, .q_dtype = MLA_DTYPE_FP8_E4M3,
            .with_lse = 1, .seq_lens = lens,
        };
        run_decode_case(&c, kv ? "decode fp8 q, fp8 cache" : "decode fp8 q, bf16 cache");
    }
}

TEST(cpu_decode_fp8_math_switch_keeps_exact_math)
{
    /* decode_fp8_math lets a backend round P to e4m3; the CPU backend does not, so it must
     * stay within the exact bound (4e-3 relative L2). On these rows the float64 oracle with P
     * rounded to e4m3 is 2.3e-2 from the exact one (checked by swapping it in), so a backend
     * that rounded P would fail here. */
    static const int lens[] = {300, 1000, 64, 777};
    decode_case c = {
        .batch = 4, .q_len = 4, .heads = 16, .rank = 64, .rope = 16, .page = 64,
        .kv_dtype = MLA_DTYPE_FP8_E4M3, .q_dtype = MLA_DTYPE_FP8_E4M3, .with_lse = 1,
        .fp8_math = 1, .seq_lens = lens,
    };
    run_decode_case(&c, "decode fp8 q, fp8 cache, decode_fp8_math 1");
}

TEST(cpu_decode_deepseek_v3_shape)
{
    /* H=128 (one GPU without tensor parallelism) and 16 (TP 8), 512 + 64, short sequences. */
    static const int lens[] = {1, 33, 70};
    static const int heads[] = {128, 16};
    for (int h = 0; h < 2; h++)
        for (int kv = 0; kv < 2; kv++) {
            decode_case c = {
                .batch = 3, .q_len = h == 0 ? 1 : 2, .heads = heads[h], .rank = 512, .rope = 64,
                .page = 64, .kv_dtype = kv ? MLA_DTYPE_FP8_E4M3 : MLA_DTYPE_BF16,
                .q_dtype = MLA_DTYPE_BF16, .with_lse = 1, .seq_lens = lens,
            };
            char label[96];
            snprintf(label, sizeof label, "decode DeepSeek-V3 H %d, %s cache", c.heads,
                     mla_dtype_name(c.kv_dtype));
            run_decode_case(&c, label);
        }
}

TEST(cpu_decode_long_sequence)
{
    static const int lens[] = {2000, 1999};
    decode_case c = {
        .batch = 2, .q_len = 2, .heads = 16, .rank = 512, .rope = 64, .page = 64,
        .kv_dtype = MLA_DTYPE_FP8_E4M3, .q_dtype = MLA_DTYPE_BF16, .with_lse = 1,
        .seq_lens = lens,
    };
    run_decode_case(&c, "decode long fp8");
    c.kv_dtype = MLA_DTYPE_BF16;
    c.page = 32;
    c.q_len = 1;
    run_decode_case(&c, "decode long bf16");
}

TEST(cpu_decode_no_causal_mask_and_unused_table_entries)
{
    /* Every query token sees all seq_len keys; block-table entries past a sequence hold -1. */
    static const int lens[] = {3, 40, 64};
    decode_case c = {
        .batch = 3, .q_len = 4, .heads = 4, .rank = 32, .rope = 16, .page = 32,
        .kv_dtype = MLA_DTYPE_FP8_E4M3, .q_dtype = MLA_DTYPE_BF16, .with_lse = 1,
        .no_causal = 1, .unused_entries = -1, .seq_lens = lens,
    };
    run_decode_case(&c, "decode no causal mask");
}

TEST(cpu_decode_nan_reaches_only_rows_that_see_it)
{
    /* The last 2 tokens of each sequence hold NaN: with q_len 4 and the causal mask, query
     * tokens 0 and 1 never see them and must be exact; tokens 2 and 3 must come out NaN (the
     * oracle propagates NaN the same way, and the comparison demands NaN where ref is NaN). */
    static const int lens[] = {40, 64, 65};
    decode_case c = {
        .batch = 3, .q_len = 4, .heads = 16, .rank = 64, .rope = 16, .page = 32,
        .kv_dtype = MLA_DTYPE_FP8_E4M3, .q_dtype = MLA_DTYPE_BF16, .with_lse = 1,
        .nan_tail = 2, .seq_lens = lens,
    };
    run_decode_case(&c, "decode NaN tail");
}

TEST(cpu_decode_thread_counts)
{
    /* The work split depends on the thread count: 1 thread, and more threads than cores. */
    static const int lens[] = {65, 1, 130};
    const char *old = getenv("MLA_NUM_THREADS");
    char saved[32] = "";
    if (old) snprintf(saved, sizeof saved, "%s", old);
    static const char *threads[] = {"1", "7"};
    for (int t = 0; t < 2; t++) {
        setenv("MLA_NUM_THREADS", threads[t], 1);
        decode_case c = {
            .batch = 3, .q_len = 2, .heads = 128, .rank = 64, .rope = 16, .page = 64,
            .kv_dtype = MLA_DTYPE_FP8_E4M3, .q_dtype = MLA_DTYPE_BF16, .with_lse = 1,
            .seq_lens = lens,
        };
        run_decode_case(&c, threads[t][0] == '1' ? "decode 1 thread" : "decode 7 threads");
        static const int lq[] = {20, 3}, lkv[] = {20, 50};
        prefill_case pc = {
            .heads = 8, .nope = 32, .rope = 16, .v_dim = 32, .dtype = MLA_DTYPE_BF16,
            .causal = 1, .with_lse = 1, .batch = 2, .lq = lq, .lkv = lkv,
        };
        run_prefill_case(&pc, threads[t][0] == '1' ? "prefill 1 thread" : "prefill 7 threads");
    }
    if (old) setenv("MLA_NUM_THREADS", saved, 1);
    else unsetenv("MLA_NUM_THREADS");
}

TEST(cpu_decode_rows_without_keys)
{
    /* seq_len 0 and seq_len < q_len: those rows get zero output and -inf LSE. */
    static const int lens[] = {0, 1, 3};
    decode_case c = {
        .batch = 3, .q_len = 8, .heads = 2, .rank = 32, .rope = 16, .page = 32,
        .kv_dtype = MLA_DTYPE_BF16, .q_dtype = MLA_DTYPE_BF16, .with_lse = 1, .seq_lens = lens,
    };
    run_decode_case(&c, "decode rows without keys");
}

TEST(cpu_decode_hook_skips_bad_pages)
{
    /* The base backend refuses bad pages on the CPU, so call the kernel hook directly, as a
     * device backend would run it with skip_index_check: pages -1 and past the cache must not
     * be read (ASan would see) and their keys drop out of the softmax (the oracle skips them
     * too). Request 1 has only bad pages: zero output, -inf LSE. */
    enum { B = 2, L = 2, H = 4, R = 32, P = 16, D = R + P, PAGE = 32, NP = 6, MAXP = 4 };
    int32_t table[B * MAXP] = {3, -1, 5, 0, /* request 0: page 1 bad */ 40, -7, 1, 2};
    int32_t seq[B] = {110, 50};
    uint8_t *cache = xmalloc(NP * PAGE * D);
    float *cache_f = xmalloc(NP * PAGE * D * sizeof(float));
    oracle_fill_fp8(cache, cache_f, NP * PAGE * D, -2, 2);
    uint16_t q[B * L * H * D];
    float qf[B * L * H * D];
    oracle_fill_bf16(q, qf, B * L * H * D, -1, 1);
    uint16_t *out = poisoned(B * L * H * R * 2);
    float *lse = poisoned(B * L * H * sizeof(float));
    mla_decode_problem p = {
        .batch = B, .q_len = L, .num_heads = H, .kv_lora_rank = R, .rope_dim = P,
        .page_size = PAGE, .num_pages = NP, .max_pages_per_seq = MAXP, .max_seq_len = 110,
        .causal = 1, .q_dtype = MLA_DTYPE_BF16, .kv_dtype = MLA_DTYPE_FP8_E4M3,
        .bmm1_scale = 0.125f, .bmm2_scale = 0.5f, .q = q, .kv_cache = cache,
        .block_table = table, .seq_lens = seq, .out = out, .lse = lse,
    };
    CHECK_STATUS(mla_cpu_kernel_set.run_decode(NULL, &p), MLA_OK);
    double ref[B * L * H * R], ref_lse[B * L * H];
    oracle_decode_args oa = {
        .batch = B, .q_len = L, .heads = H, .dqk = D, .dv = R, .page_size = PAGE,
        .num_pages = NP, .max_pages = MAXP, .causal = 1, .q = qf, .kv = cache_f,
        .block_table = table, .seq_lens = seq, .bmm1 = 0.125, .bmm2 = 0.5, .out = ref,
        .lse = ref_lse,
    };
    oracle_decode(&oa);
    oracle_report r = oracle_compare_bf16(out, ref, B * L * H * R, bf16_tol);
    check_report("decode hook, bad pages", "out", &r, &bf16_tol);
    r = oracle_compare_f32(lse, ref_lse, B * L * H, lse_tol);
    check_report("decode hook, bad pages", "lse", &r, &lse_tol);
    for (int i = L * H; i < 2 * L * H; i++)
        CHECK_MSG(lse[i] == -INFINITY, "request with only bad pages: lse[%d] = %g", i, lse[i]);
    free(cache); free(cache_f); free(out); free(lse);
}

/* ------------------------------------------------------------------------------------------
 * Prefill
 * ---------------------------------------------------------------------------------------- */

static void run_prefill_case(const prefill_case *c, const char *label)
{
    const int H = c->heads, Dqk = c->nope + c->rope, Dv = c->v_dim, B = c->batch;
    const int fp8 = c->dtype == MLA_DTYPE_FP8_E4M3;
    mla_config cfg;
    mla_config_init(&cfg);
    cfg.num_heads = H;
    cfg.qk_nope_head_dim = c->nope;
    cfg.qk_rope_head_dim = c->rope;
    cfg.v_head_dim = Dv;
    cfg.kv_cache_dtype = MLA_DTYPE_BF16;
    cfg.scales.softmax_scale = 1.0f / sqrtf((float)Dqk);
    cfg.scales.q_scale = 0.5f;
    cfg.scales.k_scale = 0.25f;
    cfg.scales.v_scale = 0.75f;
    cfg.scales.o_scale = 2.0f;
    mla_backend *be = NULL;
    CHECK_STATUS(mla_backend_create("cpu", &cfg, &be), MLA_OK);
    if (!be) return;

    int32_t *cu_q = xmalloc((size_t)(B + 1) * sizeof *cu_q);
    int32_t *cu_kv = xmalloc((size_t)(B + 1) * sizeof *cu_kv);
    cu_q[0] = cu_kv[0] = 0;
    for (int b = 0; b < B; b++) {
        cu_q[b + 1] = cu_q[b] + c->lq[b];
        cu_kv[b + 1] = cu_kv[b] + c->lkv[b];
    }
    const int64_t TQ = cu_q[B], TK = cu_kv[B];
    const size_t es = mla_dtype_size(c->dtype);
    const float rng = range_of(c->dtype);
    void *q = xmalloc((size_t)(TQ * H * Dqk) * es), *k = xmalloc((size_t)(TK * H * Dqk) * es);
    void *v = xmalloc((size_t)(TK * H * Dv) * es);
    float *qf = xmalloc((size_t)(TQ * H * Dqk) * sizeof(float));
    float *kf = xmalloc((size_t)(TK * H * Dqk) * sizeof(float));
    float *vf = xmalloc((size_t)(TK * H * Dv) * sizeof(float));
    oracle_fill(c->dtype, q, qf, TQ * H * Dqk, -rng, rng);
    oracle_fill(c->dtype, k, kf, TK * H * Dqk, -rng, rng);
    oracle_fill(c->dtype, v, vf, TK * H * Dv, -rng, rng);
    for (int b = 0; b < B && c->nan_tail; b++)
        for (int64_t t = cu_kv[b + 1] - c->nan_tail; t < cu_kv[b + 1]; t++) {
            if (t < cu_kv[b]) continue;
            fill_nan(c->dtype, (char *)k + t * H * Dqk * es, kf + t * H * Dqk, (int64_t)H * Dqk);
            fill_nan(c->dtype, (char *)v + t * H * Dv * es, vf + t * H * Dv, (int64_t)H * Dv);
        }
    uint16_t *out = poisoned((size_t)(TQ * H * Dv) * 2);
    float *lse = c->with_lse ? poisoned((size_t)(TQ * H) * sizeof(float)) : NULL;

    mla_prefill_args args;
    memset(&args, 0, sizeof args);
    args.q = tensor(q, c->dtype, 3, TQ, H, Dqk, 0);
    args.k = tensor(k, c->dtype, 3, TK, H, Dqk, 0);
    args.v = tensor(v, c->dtype, 3, TK, H, Dv, 0);
    args.cu_seqlens_q = tensor(cu_q, MLA_DTYPE_I32, 1, B + 1, 0, 0, 0);
    args.cu_seqlens_kv = tensor(cu_kv, MLA_DTYPE_I32, 1, B + 1, 0, 0, 0);
    args.causal = c->causal;
    args.out = tensor(out, MLA_DTYPE_BF16, 3, TQ, H, Dv, 0);
    if (lse) args.lse = tensor(lse, MLA_DTYPE_F32, 2, TQ, H, 0, 0);
    CHECK_STATUS(mla_prefill(be, &args), MLA_OK);

    double *ref = xmalloc((size_t)(TQ * H * Dv) * sizeof(double));
    double *ref_lse = xmalloc((size_t)(TQ * H) * sizeof(double));
    oracle_prefill_args oa = {
        .batch = B, .heads = H, .dqk = Dqk, .dv = Dv, .causal = c->causal,
        .q = qf, .k = kf, .v = vf, .cu_q = cu_q, .cu_kv = cu_kv,
        .bmm1 = (double)cfg.scales.softmax_scale * (fp8 ? 0.5 * 0.25 : 1.0),
        .bmm2 = 2.0 * (fp8 ? 0.75 : 1.0), .out = ref, .lse = ref_lse,
    };
    oracle_prefill(&oa);
    oracle_report r = oracle_compare_bf16(out, ref, TQ * H * Dv, bf16_tol);
    check_report(label, "out", &r, &bf16_tol);
    if (lse) {
        r = oracle_compare_f32(lse, ref_lse, TQ * H, lse_tol);
        check_report(label, "lse", &r, &lse_tol);
    }
    free(cu_q); free(cu_kv); free(q); free(k); free(v); free(qf); free(kf); free(vf);
    free(out); free(lse); free(ref); free(ref_lse);
    mla_backend_destroy(be);
}

/* Ragged: equal lengths, q shorter than kv (chunked prefix), a request longer than one row
 * block (16), an empty request, and q longer than kv (the first causal rows see no key). */
static const int ragged_lq[] = {5, 3, 37, 0, 6, 1};
static const int ragged_lkv[] = {5, 40, 37, 10, 4, 70};

TEST(cpu_prefill_causal_and_not_bf16_fp8)
{
    for (int dt = 0; dt < 2; dt++)
        for (int causal = 0; causal < 2; causal++) {
            prefill_case c = {
                .heads = 4, .nope = 32, .rope = 16, .v_dim = 32,
                .dtype = dt ? MLA_DTYPE_FP8_E4M3 : MLA_DTYPE_BF16, .causal = causal,
                .with_lse = causal || dt, .batch = 6, .lq = ragged_lq, .lkv = ragged_lkv,
            };
            char label[96];
            snprintf(label, sizeof label, "prefill %s %s", mla_dtype_name(c.dtype),
                     causal ? "causal" : "non-causal");
            run_prefill_case(&c, label);
        }
}

TEST(cpu_prefill_nan_reaches_only_rows_that_see_it)
{
    /* Causal, the last 3 keys of each request are NaN: the rows whose window ends before them
     * must be exact (a row block of 16 mixes clean and NaN rows), the others NaN. */
    static const int lq[] = {20, 9}, lkv[] = {20, 30};
    prefill_case c = {
        .heads = 2, .nope = 32, .rope = 16, .v_dim = 32, .dtype = MLA_DTYPE_FP8_E4M3,
        .causal = 1, .with_lse = 1, .batch = 2, .lq = lq, .lkv = lkv, .nan_tail = 3,
    };
    run_prefill_case(&c, "prefill NaN tail");
}

TEST(cpu_prefill_deepseek_v3_shape)
{
    /* 128 + 64 / 128 dims, 16 heads, q 20 over kv 90 and 33 over 33. */
    static const int lq[] = {20, 33}, lkv[] = {90, 33};
    for (int dt = 0; dt < 2; dt++) {
        prefill_case c = {
            .heads = 16, .nope = 128, .rope = 64, .v_dim = 128,
            .dtype = dt ? MLA_DTYPE_FP8_E4M3 : MLA_DTYPE_BF16, .causal = 1, .with_lse = 1,
            .batch = 2, .lq = lq, .lkv = lkv,
        };
        run_prefill_case(&c, dt ? "prefill DeepSeek-V3 fp8" : "prefill DeepSeek-V3 bf16");
    }
}

/* ------------------------------------------------------------------------------------------
 * merge_state
 * ---------------------------------------------------------------------------------------- */
static mla_backend *small_backend(int heads, mla_dtype kv_dtype, int page)
{
    mla_config cfg;
    mla_config_init(&cfg);
    cfg.num_heads = heads;
    cfg.kv_lora_rank = 64;
    cfg.qk_rope_head_dim = 16;
    cfg.qk_nope_head_dim = 32;
    cfg.v_head_dim = 32;
    cfg.page_size = page;
    cfg.kv_cache_dtype = kv_dtype;
    cfg.max_q_len = 8;
    cfg.has_k_scale = kv_dtype == MLA_DTYPE_FP8_E4M3;
    mla_backend *be = NULL;
    CHECK_STATUS(mla_backend_create("cpu", &cfg, &be), MLA_OK);
    return be;
}

TEST(cpu_merge_state_f32_against_oracle)
{
    /* Random partial states, with rows where one side or both sides saw no key (-inf), and
     * o aliasing o_a, lse aliasing lse_b. */
    enum { T = 9, H = 3, DIM = 40, N = T * H };
    mla_backend *be = small_backend(H, MLA_DTYPE_BF16, 64);
    if (!be) return;
    float *oa = xmalloc(N * DIM * sizeof(float)), *ob = xmalloc(N * DIM * sizeof(float));
    float la[N], lb[N];
    oracle_fill_f32(oa, N * DIM, -1.0f, 1.0f);
    oracle_fill_f32(ob, N * DIM, -1.0f, 1.0f);
    for (int r = 0; r < N; r++) {
        la[r] = mla_test_rand_uniform(-5.0f, 15.0f);
        lb[r] = mla_test_rand_uniform(-5.0f, 15.0f);
        if (r % 7 == 1) la[r] = -INFINITY;
        if (r % 7 == 2) lb[r] = -INFINITY;
        if (r % 7 == 3) la[r] = lb[r] = -INFINITY;
        if (r % 7 == 4) la[r] = lb[r] + 60.0f; /* exp underflows on one side */
    }
    /* An empty side's o is garbage (poison); it must not reach the output. */
    for (int r = 0; r < N; r++) {
        if (la[r] == -INFINITY) memset(oa + r * DIM, 0xff, DIM * sizeof(float));
        if (lb[r] == -INFINITY) memset(ob + r * DIM, 0xff, DIM * sizeof(float));
    }
    double *ref = xmalloc(N * DIM * sizeof(double)), ref_lse[N];
    oracle_merge(N, DIM, oa, la, ob, lb, ref, ref_lse);

    for (int alias = 0; alias < 2; alias++) {
        float *o = alias ? oa : poisoned(N * DIM * sizeof(float));
        float lb_copy[N], lse_sep[N];
        memcpy(lb_copy, lb, sizeof lb);
        memset(lse_sep, 0xff, sizeof lse_sep);
        float *lse = alias ? lb_copy : lse_sep;
        mla_merge_state_args a;
        memset(&a, 0, sizeof a);
        a.o_a = tensor(oa, MLA_DTYPE_F32, 3, T, H, DIM, 0);
        a.lse_a = tensor(la, MLA_DTYPE_F32, 2, T, H, 0, 0);
        a.o_b = tensor(ob, MLA_DTYPE_F32, 3, T, H, DIM, 0);
        a.lse_b = tensor(lb_copy, MLA_DTYPE_F32, 2, T, H, 0, 0);
        a.o = tensor(o, MLA_DTYPE_F32, 3, T, H, DIM, 0);
        a.lse = tensor(lse, MLA_DTYPE_F32, 2, T, H, 0, 0);
        CHECK_STATUS(mla_merge_state(be, &a), MLA_OK);
        oracle_tolerance tol = {.rel_l2 = 1e-5, .elem_rel = 1e-5, .abs_frac = 1e-6, .abs = 0};
        oracle_report r = oracle_compare_f32(o, ref, N * DIM, tol);
        check_report(alias ? "merge aliased" : "merge", "o", &r, &tol);
        r = oracle_compare_f32(lse, ref_lse, N, lse_tol);
        check_report(alias ? "merge aliased" : "merge", "lse", &r, &lse_tol);
        if (!alias) free(o);
    }
    free(oa); free(ob); free(ref);
    mla_backend_destroy(be);
}

TEST(cpu_merge_state_hook_in_place_across_widths)
{
    /* The public API refuses an o that aliases an input of another dtype; the hook still
     * handles it (rows are ordered so no input is overwritten before it is read). */
    enum { N = 50, DIM = 24 };
    float la[N], lb[N];
    float *ob = xmalloc(N * DIM * sizeof(float)), *oa_f = xmalloc(N * DIM * sizeof(float));
    oracle_fill_f32(ob, N * DIM, -1, 1);
    for (int r = 0; r < N; r++) {
        la[r] = mla_test_rand_uniform(-3, 3);
        lb[r] = mla_test_rand_uniform(-3, 3);
    }
    for (int widen = 0; widen < 2; widen++) {
        /* widen 0: o_a f32 -> o bf16 in place; widen 1: o_a bf16 -> o f32 in place. */
        void *buf = xmalloc(N * DIM * sizeof(float));
        if (widen) oracle_fill_bf16(buf, oa_f, N * DIM, -1, 1);
        else {
            oracle_fill_f32(buf, N * DIM, -1, 1);
            memcpy(oa_f, buf, N * DIM * sizeof(float));
        }
        double *ref = xmalloc(N * DIM * sizeof(double)), ref_lse[N];
        oracle_merge(N, DIM, oa_f, la, ob, lb, ref, ref_lse);
        mla_merge_problem p = {
            .tokens = N, .num_heads = 1, .dim = DIM,
            .in_dtype_a = widen ? MLA_DTYPE_BF16 : MLA_DTYPE_F32, .in_dtype_b = MLA_DTYPE_F32,
            .out_dtype = widen ? MLA_DTYPE_F32 : MLA_DTYPE_BF16,
            .o_a = buf, .o_b = ob, .lse_a = la, .lse_b = lb, .o = buf, .lse = NULL,
        };
        CHECK_STATUS(mla_cpu_kernel_set.run_merge_state(NULL, &p), MLA_OK);
        oracle_report r = widen ? oracle_compare_f32(buf, ref, N * DIM, bf16_tol)
                                : oracle_compare_bf16(buf, ref, N * DIM, bf16_tol);
        check_report(widen ? "merge hook widening in place" : "merge hook narrowing in place",
                     "o", &r, &bf16_tol);
        free(buf);
        free(ref);
    }
    free(ob);
    free(oa_f);
}

TEST(cpu_merge_state_of_split_prefill_equals_whole)
{
    /* Attention over keys [0, n) = merge(attention over [0, s), attention over [s, n)):
     * two non-causal prefills on the two halves (bf16 out + LSE), merged into f32, against
     * the oracle over the whole key set. Per-part bf16 rounding (2^-9) dominates the error. */
    enum { H = 4, DQK = 48, DV = 32, LQ = 7, LKV = 90, SPLIT = 37 };
    mla_backend *be = small_backend(H, MLA_DTYPE_BF16, 64);
    if (!be) return;
    uint16_t *q = xmalloc(LQ * H * DQK * 2), *k = xmalloc(LKV * H * DQK * 2);
    uint16_t *v = xmalloc(LKV * H * DV * 2);
    float *qf = xmalloc(LQ * H * DQK * 4), *kf = xmalloc(LKV * H * DQK * 4);
    float *vf = xmalloc(LKV * H * DV * 4);
    oracle_fill_bf16(q, qf, LQ * H * DQK, -1, 1);
    oracle_fill_bf16(k, kf, LKV * H * DQK, -1, 1);
    oracle_fill_bf16(v, vf, LKV * H * DV, -1, 1);
    uint16_t *part_o[2];
    float *part_lse[2];
    const int32_t cu_q[2] = {0, LQ};
    const int kv_begin[2] = {0, SPLIT}, kv_len[2] = {SPLIT, LKV - SPLIT};
    for (int s = 0; s < 2; s++) {
        int32_t cu_kv[2] = {0, kv_len[s]};
        part_o[s] = poisoned(LQ * H * DV * 2);
        part_lse[s] = poisoned(LQ * H * 4);
        mla_prefill_args a;
        memset(&a, 0, sizeof a);
        a.q = tensor(q, MLA_DTYPE_BF16, 3, LQ, H, DQK, 0);
        a.k = tensor(k + (size_t)kv_begin[s] * H * DQK, MLA_DTYPE_BF16, 3, kv_len[s], H, DQK, 0);
        a.v = tensor(v + (size_t)kv_begin[s] * H * DV, MLA_DTYPE_BF16, 3, kv_len[s], H, DV, 0);
        a.cu_seqlens_q = tensor((void *)cu_q, MLA_DTYPE_I32, 1, 2, 0, 0, 0);
        a.cu_seqlens_kv = tensor(cu_kv, MLA_DTYPE_I32, 1, 2, 0, 0, 0);
        a.causal = 0;
        a.out = tensor(part_o[s], MLA_DTYPE_BF16, 3, LQ, H, DV, 0);
        a.lse = tensor(part_lse[s], MLA_DTYPE_F32, 2, LQ, H, 0, 0);
        CHECK_STATUS(mla_prefill(be, &a), MLA_OK);
    }
    float *o = poisoned(LQ * H * DV * 4), *lse = poisoned(LQ * H * 4);
    mla_merge_state_args m;
    memset(&m, 0, sizeof m);
    m.o_a = tensor(part_o[0], MLA_DTYPE_BF16, 3, LQ, H, DV, 0);
    m.lse_a = tensor(part_lse[0], MLA_DTYPE_F32, 2, LQ, H, 0, 0);
    m.o_b = tensor(part_o[1], MLA_DTYPE_BF16, 3, LQ, H, DV, 0);
    m.lse_b = tensor(part_lse[1], MLA_DTYPE_F32, 2, LQ, H, 0, 0);
    m.o = tensor(o, MLA_DTYPE_F32, 3, LQ, H, DV, 0);
    m.lse = tensor(lse, MLA_DTYPE_F32, 2, LQ, H, 0, 0);
    CHECK_STATUS(mla_merge_state(be, &m), MLA_OK);

    const mla_config *cfg = mla_backend_config(be);
    const int32_t cu_whole[2] = {0, LKV};
    double *ref = xmalloc(LQ * H * DV * sizeof(double)), ref_lse[LQ * H];
    oracle_prefill_args oa = {
        .batch = 1, .heads = H, .dqk = DQK, .dv = DV, .causal = 0, .q = qf, .k = kf, .v = vf,
        .cu_q = cu_q, .cu_kv = cu_whole, .bmm1 = cfg->scales.softmax_scale,
        .bmm2 = cfg->scales.o_scale, .out = ref, .lse = ref_lse,
    };
    oracle_prefill(&oa);
    oracle_report r = oracle_compare_f32(o, ref, LQ * H * DV, merge_bf16_tol);
    check_report("merge of split prefill", "o", &r, &merge_bf16_tol);
    r = oracle_compare_f32(lse, ref_lse, LQ * H, lse_tol);
    check_report("merge of split prefill", "lse", &r, &lse_tol);

    /* bf16 output, written over o_b (same width aliasing). */
    m.o = m.o_b;
    m.lse = (mla_tensor){0};
    CHECK_STATUS(mla_merge_state(be, &m), MLA_OK);
    r = oracle_compare_bf16(part_o[1], ref, LQ * H * DV, merge_bf16_tol);
    check_report("merge of split prefill (bf16, o = o_b)", "o", &r, &merge_bf16_tol);

    for (int s = 0; s < 2; s++) {
        free(part_o[s]);
        free(part_lse[s]);
    }
    free(q); free(k); free(v); free(qf); free(kf); free(vf); free(o); free(lse); free(ref);
    mla_backend_destroy(be);
}

/* ------------------------------------------------------------------------------------------
 * kv_cache_write, then decode against the written cache
 * ---------------------------------------------------------------------------------------- */
static void run_cache_write_case(mla_dtype kv_dtype, mla_dtype in_dtype, mla_dtype slot_dtype)
{
    enum { H = 8, R = 64, P = 16, D = R + P, PAGE = 32, PAGES = 7, SEQ = 150, MAXP = 5 };
    const float k_scale = kv_dtype == MLA_DTYPE_FP8_E4M3 ? 0.25f : 1.0f;
    mla_config cfg;
    mla_config_init(&cfg);
    cfg.num_heads = H;
    cfg.kv_lora_rank = R;
    cfg.qk_rope_head_dim = P;
    cfg.page_size = PAGE;
    cfg.kv_cache_dtype = kv_dtype;
    cfg.scales.k_scale = k_scale;
    cfg.has_k_scale = kv_dtype == MLA_DTYPE_FP8_E4M3;
    mla_backend *be = NULL;
    CHECK_STATUS(mla_backend_create("cpu", &cfg, &be), MLA_OK);
    if (!be) return;
    char label[128];
    snprintf(label, sizeof label, "cache write %s <- %s, %s slots", mla_dtype_name(kv_dtype),
             mla_dtype_name(in_dtype), mla_dtype_name(slot_dtype));

    /* One request of SEQ tokens over scattered pages; the token list also holds padding
     * entries (slot -1) that must be skipped. */
    int32_t table[MAXP], perm[PAGES];
    for (int i = 0; i < PAGES; i++) perm[i] = i;
    shuffle_int(perm, PAGES);
    for (int j = 0; j < MAXP; j++) table[j] = perm[j];
    const int N = SEQ + 6;
    int64_t *slot = xmalloc((size_t)N * sizeof *slot);
    int *token_of = xmalloc((size_t)N * sizeof *token_of);
    int t = 0;
    for (int n = 0; n < N; n++) {
        if (n % 26 == 5) { /* padding */
            slot[n] = -1;
            token_of[n] = -1;
            continue;
        }
        slot[n] = (int64_t)table[t / PAGE] * PAGE + t % PAGE;
        token_of[n] = t++;
    }
    CHECK(t == SEQ);
    const size_t ies = mla_dtype_size(in_dtype), kes = mla_dtype_size(kv_dtype);
    void *ckv = xmalloc((size_t)N * R * ies), *kpe = xmalloc((size_t)N * P * ies);
    float *ckv_f = xmalloc((size_t)N * R * 4), *kpe_f = xmalloc((size_t)N * P * 4);
    oracle_fill(in_dtype, ckv, ckv_f, (int64_t)N * R, -0.5f, 0.5f);
    oracle_fill(in_dtype, kpe, kpe_f, (int64_t)N * P, -0.5f, 0.5f);
    const int64_t cache_elems = (int64_t)PAGES * PAGE * D;
    void *cache = xmalloc((size_t)cache_elems * kes);
    float *cache_f = xmalloc((size_t)cache_elems * 4);
    fill_nan(kv_dtype, cache, cache_f, cache_elems); /* slots never written stay NaN */
    void *slots = xmalloc((size_t)N * mla_dtype_size(slot_dtype));
    for (int n = 0; n < N; n++) {
        if (slot_dtype == MLA_DTYPE_I64) ((int64_t *)slots)[n] = slot[n];
        else ((int32_t *)slots)[n] = (int32_t)slot[n];
    }

    mla_kv_cache_write_args w;
    memset(&w, 0, sizeof w);
    w.c_kv = tensor(ckv, in_dtype, 2, N, R, 0, 0);
    w.k_pe = tensor(kpe, in_dtype, 2, N, P, 0, 0);
    w.slots = tensor(slots, slot_dtype, 1, N, 0, 0, 0);
    w.kv_cache = tensor(cache, kv_dtype, 3, PAGES, PAGE, D, 0);
    CHECK_STATUS(mla_kv_cache_write(be, &w), MLA_OK);

    /* Expected cache, built by the test: stored = convert(x * (1 / k_scale)); k_scale is a
     * power of two, so x / k_scale is the same number. */
    uint8_t *expect = xmalloc((size_t)cache_elems * kes);
    float *dummy = xmalloc((size_t)cache_elems * 4);
    fill_nan(kv_dtype, expect, dummy, cache_elems);
    for (int n = 0; n < N; n++) {
        if (slot[n] < 0) continue;
        for (int d = 0; d < D; d++) {
            double x = (d < R ? ckv_f[(int64_t)n * R + d] : kpe_f[(int64_t)n * P + d - R]) /
                       (double)k_scale;
            int64_t e = slot[n] * D + d;
            if (kv_dtype == MLA_DTYPE_FP8_E4M3) {
                expect[e] = oracle_fp8_from_double(x);
                cache_f[e] = (float)oracle_fp8_value(expect[e]);
            } else {
                ((uint16_t *)expect)[e] = oracle_bf16_from_double(x);
                cache_f[e] = (float)oracle_bf16_value(((uint16_t *)expect)[e]);
            }
        }
    }
    int64_t mismatches = 0, first = -1;
    for (int64_t i = 0; i < cache_elems * (int64_t)kes; i++)
        if (((uint8_t *)cache)[i] != expect[i] && mismatches++ == 0) first = i;
    CHECK_MSG(mismatches == 0, "%s: %lld cache bytes differ (first at byte %lld)", label,
              (long long)mismatches, (long long)first);

    /* Decode against the written cache (q_len 2, so the causal window is exercised too). */
    enum { L = 2 };
    int32_t seq = SEQ;
    uint16_t *q = xmalloc(L * H * D * 2);
    float *qf = xmalloc(L * H * D * 4);
    oracle_fill_bf16(q, qf, L * H * D, -1, 1);
    uint16_t *out = poisoned(L * H * R * 2);
    float *lse = poisoned(L * H * 4);
    mla_decode_args a;
    memset(&a, 0, sizeof a);
    a.q = tensor(q, MLA_DTYPE_BF16, 4, 1, L, H, D);
    a.kv_cache = w.kv_cache;
    a.block_table = tensor(table, MLA_DTYPE_I32, 2, 1, MAXP, 0, 0);
    a.seq_lens = tensor(&seq, MLA_DTYPE_I32, 1, 1, 0, 0, 0);
    a.out = tensor(out, MLA_DTYPE_BF16, 4, 1, L, H, R);
    a.lse = tensor(lse, MLA_DTYPE_F32, 3, 1, L, H, 0);
    CHECK_STATUS(mla_decode(be, &a), MLA_OK);
    double ref[L * H * R], ref_lse[L * H];
    const double kv_scale = kv_dtype == MLA_DTYPE_FP8_E4M3 ? k_scale : 1.0;
    oracle_decode_args oa = {
        .batch = 1, .q_len = L, .heads = H, .dqk = D, .dv = R, .page_size = PAGE,
        .num_pages = PAGES, .max_pages = MAXP, .causal = 1, .q = qf, .kv = cache_f,
        .block_table = table, .seq_lens = &seq,
        .bmm1 = (double)cfg.scales.softmax_scale * kv_scale,
        .bmm2 = (double)cfg.scales.o_scale * kv_scale, .out = ref, .lse = ref_lse,
    };
    oracle_decode(&oa);
    oracle_report r = oracle_compare_bf16(out, ref, L * H * R, bf16_tol);
    check_report(label, "decode out", &r, &bf16_tol);
    r = oracle_compare_f32(lse, ref_lse, L * H, lse_tol);
    check_report(label, "decode lse", &r, &lse_tol);

    free(slot); free(token_of); free(ckv); free(kpe); free(ckv_f); free(kpe_f); free(cache);
    free(cache_f); free(slots); free(expect); free(dummy); free(q); free(qf); free(out); free(lse);
    mla_backend_destroy(be);
}

TEST(cpu_kv_cache_write_round_trip)
{
    run_cache_write_case(MLA_DTYPE_FP8_E4M3, MLA_DTYPE_BF16, MLA_DTYPE_I32);
    run_cache_write_case(MLA_DTYPE_FP8_E4M3, MLA_DTYPE_F32, MLA_DTYPE_I64);
    run_cache_write_case(MLA_DTYPE_BF16, MLA_DTYPE_BF16, MLA_DTYPE_I64);
    run_cache_write_case(MLA_DTYPE_BF16, MLA_DTYPE_F32, MLA_DTYPE_I32);
}

/* ------------------------------------------------------------------------------------------
 * quantize_fp8 and kv_pack: bit-exact
 * ---------------------------------------------------------------------------------------- */
TEST(cpu_quantize_fp8_bit_exact)
{
    mla_backend *be = small_backend(4, MLA_DTYPE_FP8_E4M3, 64);
    if (!be) return;
    static const mla_dtype dts[] = {MLA_DTYPE_BF16, MLA_DTYPE_FP16, MLA_DTYPE_F32};
    static const float scales[] = {0.25f, 0.3f};
    const int64_t n = 200003; /* several worker chunks, odd tail */
    for (int di = 0; di < 3; di++)
        for (int si = 0; si < 2; si++) {
            mla_dtype dt = dts[di];
            float scale = scales[si];
            void *in = xmalloc((size_t)n * mla_dtype_size(dt));
            float *in_f = xmalloc((size_t)n * 4);
            /* A third tiny (e4m3 subnormals and zero), the rest wide (saturation: |x / scale|
             * beyond 448). */
            const int64_t tiny = n / 3;
            oracle_fill(dt, in, in_f, tiny, -0.01f, 0.01f);
            oracle_fill(dt, (char *)in + tiny * mla_dtype_size(dt), in_f + tiny, n - tiny,
                        -150.0f, 150.0f);
            uint8_t *out = poisoned((size_t)n);
            mla_quantize_fp8_args a;
            memset(&a, 0, sizeof a);
            a.input = tensor(in, dt, 2, 1, n, 0, 0);
            a.output = tensor(out, MLA_DTYPE_FP8_E4M3, 1, n, 0, 0, 0);
            a.scale = scale;
            CHECK_STATUS(mla_quantize_fp8(be, &a), MLA_OK);
            int64_t bad = 0;
            for (int64_t i = 0; i < n; i++) {
                /* Contract: round_e4m3(x / scale). Kernels multiply by 1/scale in float; with a
                 * non-power-of-two scale that product may differ from x / scale by one float
                 * ulp, so accept the code of either (they differ only next to a rounding
                 * midpoint). */
                uint8_t want = oracle_fp8_from_double((double)in_f[i] / scale);
                uint8_t want2 = oracle_fp8_from_double((double)(in_f[i] * (1.0f / scale)));
                if (out[i] != want && out[i] != want2 && bad++ < 4)
                    CHECK_MSG(0, "quantize %s scale %g: x=%a got 0x%02x want 0x%02x",
                              mla_dtype_name(dt), scale, in_f[i], out[i], want);
            }
            CHECK_MSG(bad == 0, "quantize %s scale %g: %lld wrong codes", mla_dtype_name(dt),
                      scale, (long long)bad);
            free(in);
            free(in_f);
            free(out);
        }
    mla_backend_destroy(be);
}

TEST(cpu_kv_pack_bit_exact)
{
    /* k_nope and v are views with padded strides into larger buffers, k_pe is [N, 1, rope]. */
    enum { N = 37, H = 5, NOPE = 32, ROPE = 16, VD = 24, KPAD = 40, VPAD = 7 };
    mla_config cfg;
    mla_config_init(&cfg);
    cfg.num_heads = H;
    cfg.qk_nope_head_dim = NOPE;
    cfg.qk_rope_head_dim = ROPE;
    cfg.v_head_dim = VD;
    mla_backend *be = NULL;
    CHECK_STATUS(mla_backend_create("cpu", &cfg, &be), MLA_OK);
    if (!be) return;
    /* k_nope rows live inside [N, H, KPAD]; v rows inside [N, H + 1, VD + VPAD]. */
    uint16_t *kn = xmalloc((size_t)N * H * KPAD * 2), *kp = xmalloc((size_t)N * ROPE * 2);
    uint16_t *vb = xmalloc((size_t)N * (H + 1) * (VD + VPAD) * 2);
    oracle_fill_bf16(kn, NULL, (int64_t)N * H * KPAD, -3, 3);
    oracle_fill_bf16(kp, NULL, (int64_t)N * ROPE, -3, 3);
    oracle_fill_bf16(vb, NULL, (int64_t)N * (H + 1) * (VD + VPAD), -3, 3);
    for (int fp8 = 0; fp8 < 2; fp8++) {
        mla_dtype odt = fp8 ? MLA_DTYPE_FP8_E4M3 : MLA_DTYPE_BF16;
        size_t es = mla_dtype_size(odt);
        uint8_t *ko = poisoned((size_t)N * H * (NOPE + ROPE) * es);
        uint8_t *vo = poisoned((size_t)N * H * VD * es);
        mla_kv_pack_args a;
        memset(&a, 0, sizeof a);
        a.k_nope = tensor(kn, MLA_DTYPE_BF16, 3, N, H, NOPE, 0);
        a.k_nope.strides[0] = H * KPAD;
        a.k_nope.strides[1] = KPAD;
        a.k_pe = tensor(kp, MLA_DTYPE_BF16, 3, N, 1, ROPE, 0);
        a.v = tensor(vb + VPAD, MLA_DTYPE_BF16, 3, N, H, VD, 0);
        a.v.strides[0] = (H + 1) * (VD + VPAD);
        a.v.strides[1] = VD + VPAD;
        a.k_out = tensor(ko, odt, 3, N, H, NOPE + ROPE, 0);
        a.v_out = tensor(vo, odt, 3, N, H, VD, 0);
        a.k_scale = 0.5f;
        a.v_scale = 0.125f;
        CHECK_STATUS(mla_kv_pack(be, &a), MLA_OK);
        int64_t bad = 0;
        for (int n = 0; n < N; n++)
            for (int h = 0; h < H; h++) {
                for (int d = 0; d < NOPE + ROPE; d++) {
                    uint16_t src = d < NOPE ? kn[((int64_t)n * H + h) * KPAD + d]
                                            : kp[(int64_t)n * ROPE + d - NOPE];
                    int64_t e = ((int64_t)n * H + h) * (NOPE + ROPE) + d;
                    int ok = fp8 ? ko[e] == oracle_fp8_from_double(oracle_bf16_value(src) / 0.5)
                                 : ((uint16_t *)ko)[e] == src;
                    bad += !ok;
                }
                for (int d = 0; d < VD; d++) {
                    uint16_t src = vb[VPAD + ((int64_t)n * (H + 1) + h) * (VD + VPAD) + d];
                    int64_t e = ((int64_t)n * H + h) * VD + d;
                    int ok = fp8 ? vo[e] == oracle_fp8_from_double(oracle_bf16_value(src) / 0.125)
                                 : ((uint16_t *)vo)[e] == src;
                    bad += !ok;
                }
            }
        CHECK_MSG(bad == 0, "kv_pack to %s: %lld wrong elements", mla_dtype_name(odt),
                  (long long)bad);
        free(ko);
        free(vo);
    }
    free(kn); free(kp); free(vb);
    mla_backend_destroy(be);
}

/* ------------------------------------------------------------------------------------------
 * The worker threads
 * ---------------------------------------------------------------------------------------- */
typedef struct visit_ctx {
    atomic_int *hits;
    int64_t n;
    atomic_int nested_bad;
} visit_ctx;

static void count_inner(void *vctx, int64_t i)
{
    atomic_int *cell = (atomic_int *)vctx;
    (void)i;
    atomic_fetch_add(cell, 1);
}

static void visit(void *vctx, int64_t i)
{
    visit_ctx *c = (visit_ctx *)vctx;
    if (i < 0 || i >= c->n) {
        atomic_store(&c->nested_bad, 1);
        return;
    }
    atomic_fetch_add(&c->hits[i], 1);
    if (i % 1000 == 0) { /* a nested loop runs to completion inside a worker */
        atomic_int inner;
        atomic_init(&inner, 0);
        mla_parallel_for(10, count_inner, &inner);
        if (atomic_load(&inner) != 10) atomic_store(&c->nested_bad, 1);
    }
}

TEST(cpu_parallel_for_visits_each_index_once)
{
    static const int64_t sizes[] = {0, 1, 2, 7, 1000, 100003};
    const char *old = getenv("MLA_NUM_THREADS");
    char saved[32] = "";
    if (old) snprintf(saved, sizeof saved, "%s", old);
    static const char *threads[] = {"1", "3", "64", "500", "junk"};
    for (int t = 0; t < 5; t++) {
        setenv("MLA_NUM_THREADS", threads[t], 1);
        int nt = mla_cpu_num_threads();
        CHECK_MSG(nt >= 1 && nt <= 64, "MLA_NUM_THREADS=%s gives %d threads", threads[t], nt);
        if (t == 0) CHECK(nt == 1);
        if (t == 1) CHECK(nt == 3);
        if (t == 3) CHECK(nt == 64); /* capped */
        for (int s = 0; s < 6; s++) {
            visit_ctx c;
            c.n = sizes[s];
            c.hits = xmalloc((size_t)(c.n + 1) * sizeof(atomic_int));
            for (int64_t i = 0; i < c.n; i++) atomic_init(&c.hits[i], 0);
            atomic_init(&c.nested_bad, 0);
            mla_parallel_for(c.n, visit, &c);
            int64_t wrong = 0;
            for (int64_t i = 0; i < c.n; i++) wrong += atomic_load(&c.hits[i]) != 1;
            CHECK_MSG(wrong == 0 && !atomic_load(&c.nested_bad),
                      "threads %s, n %lld: %lld indices not visited exactly once", threads[t],
                      (long long)c.n, (long long)wrong);
            free(c.hits);
        }
    }
    if (old) setenv("MLA_NUM_THREADS", saved, 1);
    else unsetenv("MLA_NUM_THREADS");
}

static void *visit_from_thread(void *arg)
{
    visit_ctx *c = (visit_ctx *)arg;
    mla_parallel_for(c->n, visit, c);
    return NULL;
}

TEST(cpu_parallel_for_from_several_caller_threads)
{
    /* Each caller gets its own workers; no shared pool to corrupt. */
    enum { CALLERS = 3, N = 20000 };
    visit_ctx c[CALLERS];
    pthread_t tid[CALLERS];
    int started[CALLERS];
    for (int k = 0; k < CALLERS; k++) {
        c[k].n = N;
        c[k].hits = xmalloc(N * sizeof(atomic_int));
        for (int i = 0; i < N; i++) atomic_init(&c[k].hits[i], 0);
        atomic_init(&c[k].nested_bad, 0);
        started[k] = pthread_create(&tid[k], NULL, visit_from_thread, &c[k]) == 0;
        if (!started[k]) visit_from_thread(&c[k]);
    }
    for (int k = 0; k < CALLERS; k++) {
        if (started[k]) pthread_join(tid[k], NULL);
        int wrong = 0;
        for (int i = 0; i < N; i++) wrong += atomic_load(&c[k].hits[i]) != 1;
        CHECK_MSG(wrong == 0 && !atomic_load(&c[k].nested_bad),
                  "caller %d: %d indices not visited exactly once", k, wrong);
        free(c[k].hits);
    }
}
