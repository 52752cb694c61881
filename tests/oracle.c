/* Double-precision test oracle. Written from the definitions (DESIGN.md, mla.h), not from the
 * library: conversions via ldexp/frexp/rint, attention as the textbook two-pass softmax. */
#include "oracle.h"

#include "test.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------------------------------------
 * Conversions
 * ---------------------------------------------------------------------------------------- */
double oracle_fp8_value(uint8_t code)
{
    int neg = code >> 7, e = (code >> 3) & 15, m = code & 7;
    if (e == 15 && m == 7) return NAN;
    double mag = e == 0 ? ldexp((double)m, -9) : ldexp(8.0 + m, e - 10);
    return neg ? -mag : mag;
}

double oracle_bf16_value(uint16_t bits)
{
    int neg = bits >> 15, e = (bits >> 7) & 0xff, m = bits & 0x7f;
    double mag;
    if (e == 0xff) mag = m ? NAN : INFINITY;
    else if (e == 0) mag = ldexp((double)m, -133);
    else mag = ldexp(128.0 + m, e - 134);
    return neg ? -mag : mag;
}

double oracle_fp16_value(uint16_t bits)
{
    int neg = bits >> 15, e = (bits >> 10) & 0x1f, m = bits & 0x3ff;
    double mag;
    if (e == 0x1f) mag = m ? NAN : INFINITY;
    else if (e == 0) mag = ldexp((double)m, -24);
    else mag = ldexp(1024.0 + m, e - 25);
    return neg ? -mag : mag;
}

/* The 127 non-negative finite e4m3 values, ascending with the code (0x00..0x7e), computed
 * once from oracle_fp8_value: the fills round hundreds of millions of values through this
 * search, and ldexp in every probe made the data set-up, not the kernels, the bulk of a GPU
 * test pass. */
static double fp8_magnitudes[0x80]; /* [0x7f]: +inf, a sentinel for the search */
static pthread_once_t fp8_magnitudes_once = PTHREAD_ONCE_INIT;

static void fp8_magnitudes_init(void)
{
    for (int c = 0; c < 0x7f; c++) fp8_magnitudes[c] = oracle_fp8_value((uint8_t)c);
    fp8_magnitudes[0x7f] = INFINITY;
}

uint8_t oracle_fp8_from_double(double x)
{
    if (isnan(x)) return 0x7f;
    pthread_once(&fp8_magnitudes_once, fp8_magnitudes_init);
    uint8_t sign = signbit(x) ? 0x80 : 0x00;
    double a = fabs(x);
    if (a >= 448.0) return sign | 0x7e;
    int code = 0; /* largest code with value <= a; fixed steps, no data-dependent branches */
    for (int step = 64; step; step >>= 1) code = fp8_magnitudes[code + step] <= a ? code + step : code;
    if (code < 0x7e) {
        double below = fp8_magnitudes[code], above = fp8_magnitudes[code + 1];
        double dl = a - below, du = above - a;
        if (du < dl || (du == dl && (code & 1))) code++;
    }
    return (uint8_t)(sign | code);
}

/* Rounds |x| to `bits` significant bits (ties to even via rint in the default rounding mode),
 * with the smallest exponent step 2^min_exp (subnormals). */
static double round_significand(double a, int bits, int min_exp)
{
    int e;
    frexp(a, &e); /* a = f * 2^e, f in [0.5, 1) */
    int q = e - bits;
    if (q < min_exp) q = min_exp;
    return ldexp(rint(ldexp(a, -q)), q);
}

uint16_t oracle_bf16_from_double(double x)
{
    if (isnan(x)) return 0x7fff;
    uint16_t sign = signbit(x) ? 0x8000 : 0;
    double a = fabs(x);
    if (a == 0.0) return sign;
    double r = isinf(a) ? INFINITY : round_significand(a, 8, -133);
    if (r >= ldexp(1.0, 128)) return sign | 0x7f80;
    if (r < ldexp(1.0, -126)) return (uint16_t)(sign | (uint16_t)ldexp(r, 133));
    int e;
    double f = frexp(r, &e); /* r = f 2^e, value = (1 + m/128) 2^(e-1) */
    int m = (int)(ldexp(f, 8) - 128.0);
    return (uint16_t)(sign | ((e - 1 + 127) << 7) | m);
}

uint16_t oracle_fp16_from_double(double x)
{
    if (isnan(x)) return 0x7fff;
    uint16_t sign = signbit(x) ? 0x8000 : 0;
    double a = fabs(x);
    if (a == 0.0) return sign;
    double r = isinf(a) ? INFINITY : round_significand(a, 11, -24);
    if (r > 65504.0) return sign | 0x7c00;
    if (r < ldexp(1.0, -14)) return (uint16_t)(sign | (uint16_t)ldexp(r, 24));
    int e;
    double f = frexp(r, &e);
    int m = (int)(ldexp(f, 11) - 1024.0);
    return (uint16_t)(sign | ((e - 1 + 15) << 10) | m);
}

/* ------------------------------------------------------------------------------------------
 * Fills
 * ---------------------------------------------------------------------------------------- */
static void oracle_run_workers(void *(*fn)(void *), void *arg, int64_t items);

/* A fill draws one 64-bit base from the test's random stream and fills chunks of FILL_CHUNK
 * elements, each from the test generator on its own state seeded by (base, chunk index), on
 * the oracle's worker threads: the data depend on the test's seed only, not on the thread
 * count, and the fills of the long GPU cases (up to hundreds of millions of elements) no
 * longer run on one core. */
enum { kFillBf16, kFillFp8, kFillF32, kFillFp16 };
#define FILL_CHUNK ((int64_t)1 << 18)

typedef struct fill_work {
    int kind;
    void *buf;
    float *deq;
    int64_t n;
    float lo, hi;
    uint64_t base;
    atomic_llong next;
} fill_work;

static uint64_t chunk_seed(uint64_t base, int64_t k)
{
    uint64_t z = base + (uint64_t)(k + 1) * 0x9E3779B97F4A7C15ULL; /* splitmix64 */
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return z ? z : 1;
}

static void *fill_worker(void *arg)
{
    fill_work *w = arg;
    for (;;) {
        const int64_t k = atomic_fetch_add(&w->next, 1), i0 = k * FILL_CHUNK;
        if (i0 >= w->n) break;
        const int64_t i1 = i0 + FILL_CHUNK < w->n ? i0 + FILL_CHUNK : w->n;
        uint64_t st = chunk_seed(w->base, k);
        for (int64_t i = i0; i < i1; i++) {
            const float x = mla_test_rand_uniform_from(&st, w->lo, w->hi);
            switch (w->kind) {
            case kFillBf16: {
                const uint16_t h = oracle_bf16_from_double(x);
                ((uint16_t *)w->buf)[i] = h;
                if (w->deq) w->deq[i] = (float)oracle_bf16_value(h);
                break;
            }
            case kFillFp8: {
                const uint8_t c = oracle_fp8_from_double(x);
                ((uint8_t *)w->buf)[i] = c;
                if (w->deq) w->deq[i] = (float)(c & 0x80 ? -fp8_magnitudes[c & 0x7f] : fp8_magnitudes[c]);
                break;
            }
            case kFillF32:
                ((float *)w->buf)[i] = x;
                if (w->deq) w->deq[i] = x;
                break;
            default: {
                const uint16_t h = oracle_fp16_from_double(x);
                ((uint16_t *)w->buf)[i] = h;
                if (w->deq) w->deq[i] = (float)oracle_fp16_value(h);
                break;
            }
            }
        }
    }
    return NULL;
}

static void fill_chunks(int kind, void *buf, float *deq, int64_t n, float lo, float hi)
{
    fill_work w = {.kind = kind, .buf = buf, .deq = deq, .n = n, .lo = lo, .hi = hi};
    w.base = mla_test_rand_u64();
    atomic_init(&w.next, 0);
    const int64_t chunks = (n + FILL_CHUNK - 1) / FILL_CHUNK;
    if (chunks <= 1) fill_worker(&w); /* small fills (one row, one query) stay on this thread */
    else oracle_run_workers(fill_worker, &w, chunks);
}

void oracle_fill_bf16(uint16_t *buf, float *deq, int64_t n, float lo, float hi)
{
    fill_chunks(kFillBf16, buf, deq, n, lo, hi);
}

void oracle_fill_fp8(uint8_t *buf, float *deq, int64_t n, float lo, float hi)
{
    pthread_once(&fp8_magnitudes_once, fp8_magnitudes_init); /* deq reads the table */
    fill_chunks(kFillFp8, buf, deq, n, lo, hi);
}

void oracle_fill_f32(float *buf, int64_t n, float lo, float hi)
{
    fill_chunks(kFillF32, buf, NULL, n, lo, hi);
}

void oracle_fill(mla_dtype dtype, void *buf, float *deq, int64_t n, float lo, float hi)
{
    switch (dtype) {
    case MLA_DTYPE_BF16: fill_chunks(kFillBf16, buf, deq, n, lo, hi); break;
    case MLA_DTYPE_FP8_E4M3: oracle_fill_fp8((uint8_t *)buf, deq, n, lo, hi); break;
    case MLA_DTYPE_F32: fill_chunks(kFillF32, buf, deq, n, lo, hi); break;
    default: fill_chunks(kFillFp16, buf, deq, n, lo, hi); break;
    }
}

/* Steps (log2 units) between one planted key's score and the next: a kernel that moves its row
 * reference only when a block exceeds it by more than 2^8 takes both branches. */
static const double plant_steps[] = {3.0, 7.0, 9.0, 13.0, 5.0, 11.0};
#define PLANTS_MAX ((int)(sizeof plant_steps / sizeof plant_steps[0]))

static double dequant_value(mla_dtype dt, const void *buf, int64_t i)
{
    return dt == MLA_DTYPE_FP8_E4M3 ? oracle_fp8_value(((const uint8_t *)buf)[i])
                                    : oracle_bf16_value(((const uint16_t *)buf)[i]);
}

void oracle_plant_growing_scores(const oracle_plant_args *a)
{
    const int D = a->dqk;
    for (int b = 0; b < a->batch; b++) {
        const int len = a->seq_lens[b];
        const int n = len / 128 < PLANTS_MAX ? len / 128 : PLANTS_MAX;
        /* the last query token sees every key under the causal mask */
        const int64_t qrow = ((int64_t)b * a->q_len + a->q_len - 1) * a->heads + b % a->heads;
        double qq = 0;
        for (int d = a->dv; d < D; d++) {
            const double v = dequant_value(a->q_dtype, a->q, qrow * D + d);
            qq += v * v;
        }
        if (n == 0 || !(qq > 0)) continue;
        double target = 4.0;
        for (int i = 0; i < n; i++) {
            /* rope dims of the key = c q (quantized): that part of the score is bmm1 c |q_rope|^2
             * log2(e) ~ target; the value dims keep their random data, so outputs stay in range */
            const double c = target / (a->bmm1 * qq * 1.4426950408889634);
            const int key = (int)((int64_t)(i + 1) * len / (n + 1));
            const int64_t row = (int64_t)a->block_table[(int64_t)b * a->max_pages + key / a->page_size] * a->page_size +
                                key % a->page_size;
            for (int d = a->dv; d < D; d++) {
                const double x = c * dequant_value(a->q_dtype, a->q, qrow * D + d);
                const int64_t e = row * D + d;
                if (a->kv_dtype == MLA_DTYPE_FP8_E4M3) ((uint8_t *)a->kv)[e] = oracle_fp8_from_double(x);
                else ((uint16_t *)a->kv)[e] = oracle_bf16_from_double(x);
                if (a->kv_deq) a->kv_deq[e] = (float)dequant_value(a->kv_dtype, a->kv, e);
            }
            target += plant_steps[i];
        }
    }
}

/* ------------------------------------------------------------------------------------------
 * Attention
 * ---------------------------------------------------------------------------------------- */
/* Softmax-weighted sum over n keys given their logits (NAN-free callers): out[dv], *lse. */
/* p_e4m3: P V uses each weight exp(s - max) rounded as e4m3(256 p) / 256 (the fp8-math
 * kernels' rounding); the sum and the LSE use the unrounded weights. */
static void softmax_rows(int n, const double *s, const float *const *v, int dv, double bmm2,
                         double *out, double *lse, int p_e4m3)
{
    if (n == 0) {
        for (int d = 0; d < dv; d++) out[d] = 0.0;
        *lse = -INFINITY;
        return;
    }
    double mx = -INFINITY;
    for (int j = 0; j < n; j++) mx = s[j] > mx ? s[j] : mx;
    double sum = 0.0;
    for (int d = 0; d < dv; d++) out[d] = 0.0;
    for (int j = 0; j < n; j++) {
        double p = exp(s[j] - mx);
        sum += p;
        if (p_e4m3) p = oracle_fp8_value(oracle_fp8_from_double(256.0 * p)) / 256.0;
        for (int d = 0; d < dv; d++) out[d] += p * (double)v[j][d];
    }
    for (int d = 0; d < dv; d++) out[d] = out[d] / sum * bmm2;
    *lse = log(sum) + mx;
}

static double dot_double(const float *a, const float *b, int n)
{
    double s = 0.0;
    for (int d = 0; d < n; d++) s += (double)a[d] * (double)b[d];
    return s;
}

/* Query tokens (b, i) handed out in turn to the threads of oracle_run_workers: each token's
 * rows are computed by one thread exactly as before, so results do not depend on the thread
 * count (before, the GPU tests' float64 references ran on one core of the device machine). */
typedef struct oracle_decode_work {
    const oracle_decode_args *a;
    atomic_int next;
} oracle_decode_work;

static void *oracle_decode_worker(void *arg)
{
    oracle_decode_work *w = arg;
    const oracle_decode_args *a = w->a;
    int64_t max_keys = (int64_t)a->max_pages * a->page_size;
    double *s = malloc((size_t)(max_keys + 1) * sizeof *s);
    const float **rows = malloc((size_t)(max_keys + 1) * sizeof *rows);
    if (!s || !rows) abort();
    for (int t; (t = atomic_fetch_add(&w->next, 1)) < a->batch * a->q_len;) {
        const int b = t / a->q_len, i = t % a->q_len;
        int64_t L = a->seq_lens[b];
        int64_t vis = a->causal ? L - a->q_len + i + 1 : L;
        if (vis < 0) vis = 0;
        if (vis > L) vis = L;
        /* Gather the visible key rows through the block table; keys on a page outside
         * [0, num_pages) are skipped (mla.h: kernels skip bad pages). */
        int64_t n = 0;
        for (int64_t j = 0; j < vis; j++) {
            int32_t page = a->block_table[(int64_t)b * a->max_pages + j / a->page_size];
            if (page < 0 || page >= a->num_pages) continue;
            rows[n++] = a->kv + ((int64_t)page * a->page_size + j % a->page_size) * a->dqk;
        }
        for (int h = 0; h < a->heads; h++) {
            int64_t row = ((int64_t)b * a->q_len + i) * a->heads + h;
            const float *q = a->q + row * a->dqk;
            for (int64_t j = 0; j < n; j++) s[j] = a->bmm1 * dot_double(q, rows[j], a->dqk);
            softmax_rows((int)n, s, rows, a->dv, a->bmm2, a->out + row * a->dv, a->lse + row, a->p_e4m3);
        }
    }
    free(s);
    free(rows);
    return NULL;
}

/* fn(arg) on min(online CPUs, 64, items) threads, the caller's included (alone if no thread
 * could be started); fn takes its items from a counter in arg until they run out. */
static void oracle_run_workers(void *(*fn)(void *), void *arg, int64_t items)
{
    long nt = sysconf(_SC_NPROCESSORS_ONLN);
    if (nt > 64) nt = 64;
    if (nt > items) nt = items;
    pthread_t tid[64];
    int started = 0;
    for (; started < nt - 1; started++)
        if (pthread_create(&tid[started], NULL, fn, arg) != 0) break;
    fn(arg);
    for (int k = 0; k < started; k++) pthread_join(tid[k], NULL);
}

void oracle_decode(const oracle_decode_args *a)
{
    oracle_decode_work w = {.a = a};
    atomic_init(&w.next, 0);
    oracle_run_workers(oracle_decode_worker, &w, (int64_t)a->batch * a->q_len);
}

typedef struct oracle_prefill_work {
    const oracle_prefill_args *a;
    int64_t max_kv;
    atomic_llong next;
} oracle_prefill_work;

/* Query tokens handed out in turn, as for decode; token t belongs to the request b with
 * cu_q[b] <= t < cu_q[b + 1]. */
static void *oracle_prefill_worker(void *arg)
{
    oracle_prefill_work *w = arg;
    const oracle_prefill_args *a = w->a;
    double *s = malloc((size_t)(w->max_kv + 1) * sizeof *s);
    const float **vrows = malloc((size_t)(w->max_kv + 1) * sizeof *vrows);
    if (!s || !vrows) abort();
    for (long long t; (t = atomic_fetch_add(&w->next, 1)) < (long long)a->cu_q[a->batch];) {
        int lo = 0, hi = a->batch - 1; /* last b with cu_q[b] <= t */
        while (lo < hi) {
            const int mid = (lo + hi + 1) / 2;
            if (a->cu_q[mid] <= t) lo = mid;
            else hi = mid - 1;
        }
        const int b = lo;
        int64_t q0 = a->cu_q[b], lq = a->cu_q[b + 1] - q0;
        int64_t k0 = a->cu_kv[b], lkv = a->cu_kv[b + 1] - k0;
        int64_t i = t - q0;
        int64_t vis = a->causal ? lkv - lq + i + 1 : lkv;
        if (vis < 0) vis = 0;
        if (vis > lkv) vis = lkv;
        for (int h = 0; h < a->heads; h++) {
            int64_t row = (q0 + i) * a->heads + h;
            for (int64_t j = 0; j < vis; j++) {
                int64_t kr = (k0 + j) * a->heads + h;
                s[j] = a->bmm1 * dot_double(a->q + row * a->dqk, a->k + kr * a->dqk, a->dqk);
                vrows[j] = a->v + kr * a->dv;
            }
            softmax_rows((int)vis, s, vrows, a->dv, a->bmm2, a->out + row * a->dv, a->lse + row, 0);
        }
    }
    free(s);
    free(vrows);
    return NULL;
}

void oracle_prefill(const oracle_prefill_args *a)
{
    oracle_prefill_work w = {.a = a, .max_kv = 0};
    atomic_init(&w.next, 0);
    for (int b = 0; b < a->batch; b++)
        if (a->cu_kv[b + 1] - a->cu_kv[b] > w.max_kv) w.max_kv = a->cu_kv[b + 1] - a->cu_kv[b];
    if (a->batch < 1) return;
    oracle_run_workers(oracle_prefill_worker, &w, a->cu_q[a->batch]);
}

void oracle_merge(int64_t rows, int dim, const float *o_a, const float *lse_a, const float *o_b,
                  const float *lse_b, double *o, double *lse)
{
    for (int64_t r = 0; r < rows; r++) {
        double la = lse_a[r], lb = lse_b[r];
        /* exp(la) and exp(lb) are the softmax denominators of the two key sets. */
        double mx = la > lb ? la : lb;
        if (mx == -INFINITY) {
            for (int d = 0; d < dim; d++) o[r * dim + d] = 0.0;
            lse[r] = -INFINITY;
            continue;
        }
        double wa = la == -INFINITY ? 0.0 : exp(la - mx);
        double wb = lb == -INFINITY ? 0.0 : exp(lb - mx);
        for (int d = 0; d < dim; d++) {
            double xa = wa > 0.0 ? (double)o_a[r * dim + d] * wa : 0.0;
            double xb = wb > 0.0 ? (double)o_b[r * dim + d] * wb : 0.0;
            o[r * dim + d] = (xa + xb) / (wa + wb);
        }
        lse[r] = mx + log(wa + wb);
    }
}

/* ------------------------------------------------------------------------------------------
 * Comparison
 * ---------------------------------------------------------------------------------------- */
static oracle_report compare_values(const double *outv, const int *poisoned, const double *ref,
                                    int64_t n, oracle_tolerance tol)
{
    oracle_report r;
    memset(&r, 0, sizeof r);
    r.n = n;
    r.first_bad = -1;
    for (int64_t i = 0; i < n; i++)
        if (isfinite(ref[i]) && fabs(ref[i]) > r.max_ref) r.max_ref = fabs(ref[i]);
    double err2 = 0.0, ref2 = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double x = outv[i], y = ref[i];
        int bad;
        if (poisoned[i]) r.poison_count++;
        if (isnan(x) && !isnan(y)) r.nan_count++;
        if (isnan(y)) {
            bad = !isnan(x);
        } else if (isinf(y)) {
            bad = x != y; /* -inf lse must be exactly -inf */
        } else {
            double e = fabs(x - y);
            bad = !(e <= tol.elem_rel * fabs(y) + tol.abs_frac * r.max_ref + tol.abs);
            if (!isnan(e) && e > r.max_abs_err) r.max_abs_err = e;
            err2 += isnan(e) ? INFINITY : e * e;
            ref2 += y * y;
        }
        if (poisoned[i]) bad = 1;
        if (bad) {
            if (r.first_bad < 0) {
                r.first_bad = i;
                r.first_bad_out = x;
                r.first_bad_ref = y;
            }
            r.bad_count++;
        }
    }
    r.rel_l2 = ref2 > 0.0 ? sqrt(err2 / ref2) : sqrt(err2);
    r.ok = r.bad_count == 0 && r.rel_l2 < tol.rel_l2;
    return r;
}

oracle_report oracle_compare_bf16(const uint16_t *out, const double *ref, int64_t n,
                                  oracle_tolerance tol)
{
    double *v = malloc((size_t)(n > 0 ? n : 1) * sizeof *v);
    int *poisoned = malloc((size_t)(n > 0 ? n : 1) * sizeof *poisoned);
    for (int64_t i = 0; i < n; i++) {
        v[i] = oracle_bf16_value(out[i]);
        poisoned[i] = out[i] == 0xffff;
    }
    oracle_report r = compare_values(v, poisoned, ref, n, tol);
    free(v);
    free(poisoned);
    return r;
}

oracle_report oracle_compare_f32(const float *out, const double *ref, int64_t n,
                                 oracle_tolerance tol)
{
    double *v = malloc((size_t)(n > 0 ? n : 1) * sizeof *v);
    int *poisoned = malloc((size_t)(n > 0 ? n : 1) * sizeof *poisoned);
    for (int64_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &out[i], sizeof bits);
        v[i] = out[i];
        poisoned[i] = bits == 0xffffffffu;
    }
    oracle_report r = compare_values(v, poisoned, ref, n, tol);
    free(v);
    free(poisoned);
    return r;
}

void oracle_print_report(const char *label, const oracle_report *r)
{
    fprintf(stderr,
            "    %s: n=%lld max_abs_err=%.3g max_ref=%.3g rel_l2=%.3g bad=%lld nan=%lld "
            "poison=%lld",
            label, (long long)r->n, r->max_abs_err, r->max_ref, r->rel_l2, (long long)r->bad_count,
            (long long)r->nan_count, (long long)r->poison_count);
    if (r->first_bad >= 0)
        fprintf(stderr, " first_bad[%lld] out=%.6g ref=%.6g", (long long)r->first_bad,
                r->first_bad_out, r->first_bad_ref);
    fputc('\n', stderr);
}
