/* Test fixture for the serving layer (tests/test_serving*.c, tests/gpu/test_gpu_serving.c):
 * a backend with a paged cache, a req_to_token map with shuffled pages, an *expected* cache
 * kept by the test from the scalar rules of DESIGN.md (never read back from the library), and
 * a double-precision oracle that walks req_to_token directly (not the library's block table).
 * Header-only (static functions) so the GPU test binary can use it without Makefile changes. */
#ifndef MLA_SERVING_FIXTURE_H
#define MLA_SERVING_FIXTURE_H

#include "mla.h"
#include "oracle.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef MLA_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

typedef struct sv_env {
    mla_backend *be;
    mla_config cfg;
    int on_gpu;
    int H, R, P, D, Dqk, Dv, ps, num_pages, max_reqs, req_cap;
    float k_scale;
    size_t esize;            /* bytes per cache element */
    uint8_t *expected;       /* host: the cache as the scalar rules predict it */
    void *cache;             /* the backend's cache (device or host) */
    int32_t *r2t;            /* host req_to_token [max_reqs, req_cap] */
    void *r2t_dev;
    int32_t *row_pages;      /* pages owned by each pool row: [max_reqs, req_cap / ps + 1] */
    int *free_pages;
    int num_free;
    float *wk, *wv;          /* up-projection of the extend model: [H, Dqk, D], [H, Dv, D] */
    void *d_rows, *d_seq, *d_ext; /* device copies of one batch's index arrays (64 each) */
} sv_env;

/* ---- memory on the backend's device ---- */
static inline void *sv_alloc(const sv_env *e, size_t bytes)
{
    void *p = NULL;
    if (e->on_gpu) {
#ifdef MLA_HAVE_CUDA
        if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) p = NULL;
#endif
    } else {
        p = malloc(bytes ? bytes : 1);
    }
    CHECK_MSG(p != NULL, "allocation of %zu bytes failed", bytes);
    return p;
}
static inline void sv_free(const sv_env *e, void *p)
{
    (void)e;
    if (!p) return;
#ifdef MLA_HAVE_CUDA
    if (e->on_gpu) {
        cudaFree(p);
        return;
    }
#endif
    free(p);
}
static inline void sv_upload(const sv_env *e, void *dst, const void *src, size_t bytes)
{
    (void)e;
#ifdef MLA_HAVE_CUDA
    if (e->on_gpu) {
        CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice) == cudaSuccess);
        return;
    }
#endif
    memcpy(dst, src, bytes);
}
static inline void sv_download(const sv_env *e, void *dst, const void *src, size_t bytes)
{
    (void)e;
#ifdef MLA_HAVE_CUDA
    if (e->on_gpu) {
        CHECK(cudaDeviceSynchronize() == cudaSuccess);
        CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost) == cudaSuccess);
        return;
    }
#endif
    memcpy(dst, src, bytes);
}
static inline void sv_poison(const sv_env *e, void *dst, size_t bytes)
{
    (void)e;
#ifdef MLA_HAVE_CUDA
    if (e->on_gpu) {
        CHECK(cudaMemset(dst, 0xff, bytes) == cudaSuccess);
        return;
    }
#endif
    memset(dst, 0xff, bytes);
}
/* A device copy of host data. */
static inline void *sv_dev_copy(const sv_env *e, const void *src, size_t bytes)
{
    void *p = sv_alloc(e, bytes);
    if (p) sv_upload(e, p, src, bytes);
    return p;
}

static inline mla_device sv_device(const sv_env *e) { return e->cfg.device; }

static inline mla_tensor sv_t1(const sv_env *e, void *d, mla_dtype dt, int64_t a)
{
    return mla_tensor_contiguous(d, dt, sv_device(e), 1, (int64_t[]){a});
}
static inline mla_tensor sv_t2(const sv_env *e, void *d, mla_dtype dt, int64_t a, int64_t b)
{
    return mla_tensor_contiguous(d, dt, sv_device(e), 2, (int64_t[]){a, b});
}
static inline mla_tensor sv_t3(const sv_env *e, void *d, mla_dtype dt, int64_t a, int64_t b, int64_t c)
{
    return mla_tensor_contiguous(d, dt, sv_device(e), 3, (int64_t[]){a, b, c});
}

/* ---- setup ---- */
/* Small shape for the CPU (H 4, rank 64, rope 16, nope 32, v 32) or DeepSeek-V3 dims. */
static inline int sv_init(sv_env *e, const char *backend, mla_device dev, int deepseek, int page_size,
                   mla_dtype kv_dtype, int num_pages, int max_reqs, int req_cap)
{
    memset(e, 0, sizeof *e);
    mla_config_init(&e->cfg);
    e->cfg.device = dev;
    e->on_gpu = dev.type == MLA_DEVICE_CUDA;
    if (!deepseek) {
        e->cfg.num_heads = 4;
        e->cfg.kv_lora_rank = 64;
        e->cfg.qk_rope_head_dim = 16;
        e->cfg.qk_nope_head_dim = 32;
        e->cfg.v_head_dim = 32;
    } else {
        e->cfg.num_heads = 16;
    }
    e->cfg.page_size = page_size;
    e->cfg.kv_cache_dtype = kv_dtype;
    e->cfg.max_q_len = 8;
    e->cfg.scales.softmax_scale = 0.125f;
    e->cfg.scales.k_scale = kv_dtype == MLA_DTYPE_FP8_E4M3 ? 0.5f : 1.0f;
    e->cfg.scales.q_scale = 0.25f;
    e->cfg.scales.o_scale = 1.0f;
    mla_status st = mla_backend_create(backend, &e->cfg, &e->be);
    CHECK_STATUS(st, MLA_OK);
    if (st != MLA_OK) return -1;
    e->cfg = *mla_backend_config(e->be);
    e->H = e->cfg.num_heads;
    e->R = e->cfg.kv_lora_rank;
    e->P = e->cfg.qk_rope_head_dim;
    e->D = e->R + e->P;
    e->Dqk = e->cfg.qk_nope_head_dim + e->P;
    e->Dv = e->cfg.v_head_dim;
    e->ps = e->cfg.page_size;
    e->k_scale = e->cfg.scales.k_scale;
    e->esize = mla_dtype_size(kv_dtype);
    e->num_pages = num_pages;
    e->max_reqs = max_reqs;
    e->req_cap = req_cap;
    const size_t cache_bytes = (size_t)num_pages * e->ps * e->D * e->esize;
    e->expected = malloc(cache_bytes);
    for (size_t i = 0; i < cache_bytes; i++) e->expected[i] = (uint8_t)mla_test_rand_u64();
    /* Unwritten rows hold random finite bytes: no NaN codes, so a stray read shows as a wrong
     * value rather than hiding behind NaN propagation. */
    if (kv_dtype == MLA_DTYPE_FP8_E4M3)
        for (size_t i = 0; i < cache_bytes; i++)
            if ((e->expected[i] & 0x7f) == 0x7f) e->expected[i] &= 0xfe;
    if (kv_dtype == MLA_DTYPE_BF16)
        for (size_t i = 1; i < cache_bytes; i += 2) e->expected[i] &= 0x3f; /* |x| < 2 */
    e->cache = sv_dev_copy(e, e->expected, cache_bytes);
    e->r2t = malloc((size_t)max_reqs * req_cap * 4);
    for (int64_t i = 0; i < (int64_t)max_reqs * req_cap; i++) e->r2t[i] = -7; /* unassigned */
    e->r2t_dev = sv_dev_copy(e, e->r2t, (size_t)max_reqs * req_cap * 4);
    e->d_rows = sv_alloc(e, 64 * 4);
    e->d_seq = sv_alloc(e, 64 * 4);
    e->d_ext = sv_alloc(e, 64 * 4);
    const int per_row = req_cap / e->ps + 1;
    e->row_pages = malloc((size_t)max_reqs * per_row * 4);
    for (int64_t i = 0; i < (int64_t)max_reqs * per_row; i++) e->row_pages[i] = -1;
    e->free_pages = malloc((size_t)num_pages * sizeof(int));
    for (int i = 0; i < num_pages; i++) e->free_pages[i] = i;
    for (int i = num_pages - 1; i > 0; i--) { /* shuffled: pages of a request are scattered */
        int j = (int)(mla_test_rand_u64() % (uint64_t)(i + 1));
        int t = e->free_pages[i];
        e->free_pages[i] = e->free_pages[j];
        e->free_pages[j] = t;
    }
    e->num_free = num_pages;
    /* Up-projection weights of the extend model. */
    e->wk = malloc((size_t)e->H * e->Dqk * e->D * sizeof(float));
    e->wv = malloc((size_t)e->H * e->Dv * e->D * sizeof(float));
    const float w = 1.0f / sqrtf((float)e->D);
    for (int64_t i = 0; i < (int64_t)e->H * e->Dqk * e->D; i++)
        e->wk[i] = mla_test_rand_uniform(-w, w);
    for (int64_t i = 0; i < (int64_t)e->H * e->Dv * e->D; i++)
        e->wv[i] = mla_test_rand_uniform(-w, w);
    return 0;
}

static inline void sv_destroy(sv_env *e)
{
    sv_free(e, e->cache);
    sv_free(e, e->r2t_dev);
    sv_free(e, e->d_rows);
    sv_free(e, e->d_seq);
    sv_free(e, e->d_ext);
    free(e->expected);
    free(e->r2t);
    free(e->row_pages);
    free(e->free_pages);
    free(e->wk);
    free(e->wv);
    mla_backend_destroy(e->be);
    memset(e, 0, sizeof *e);
}

/* Gives pool row r slots for tokens [0, n): page-aligned, pages taken from the shuffled free
 * list as needed (a row keeps the pages it already has). */
static inline void sv_assign(sv_env *e, int r, int n)
{
    const int per_row = e->req_cap / e->ps + 1;
    for (int t = 0; t < n; t++) {
        int *page = &e->row_pages[r * per_row + t / e->ps];
        if (*page < 0) {
            CHECK_MSG(e->num_free > 0, "fixture: out of pages");
            if (e->num_free == 0) return;
            *page = e->free_pages[--e->num_free];
        }
        e->r2t[(int64_t)r * e->req_cap + t] = *page * e->ps + t % e->ps;
    }
    sv_upload(e, (int32_t *)e->r2t_dev + (int64_t)r * e->req_cap, e->r2t + (int64_t)r * e->req_cap,
              (size_t)n * 4);
}

/* Returns pool row r's pages to the free list; its req_to_token entries become unassigned. */
static inline void sv_release(sv_env *e, int r)
{
    const int per_row = e->req_cap / e->ps + 1;
    for (int j = 0; j < per_row; j++) {
        int *page = &e->row_pages[r * per_row + j];
        if (*page >= 0) e->free_pages[e->num_free++] = *page;
        *page = -1;
    }
    for (int t = 0; t < e->req_cap; t++) e->r2t[(int64_t)r * e->req_cap + t] = -7;
    sv_upload(e, (int32_t *)e->r2t_dev + (int64_t)r * e->req_cap, e->r2t + (int64_t)r * e->req_cap,
              (size_t)e->req_cap * 4);
}

/* Records the expected cache row of `slot` for bf16 inputs c_kv/k_pe. */
static inline void sv_expect_row(sv_env *e, int64_t slot, const uint16_t *ckv, const uint16_t *kpe)
{
    uint8_t *row = e->expected + slot * e->D * e->esize;
    for (int d = 0; d < e->D; d++) {
        double x = oracle_bf16_value(d < e->R ? ckv[d] : kpe[d - e->R]);
        if (e->esize == 1)
            row[d] = oracle_fp8_from_double(x / e->k_scale);
        else {
            uint16_t b = oracle_bf16_from_double(x);
            memcpy(row + 2 * d, &b, 2);
        }
    }
}

/* Random latent for n tokens (bf16) plus the expected-cache update at `slots`. */
static inline void sv_make_latent(sv_env *e, int n, const int32_t *slots, uint16_t *ckv, uint16_t *kpe)
{
    oracle_fill_bf16(ckv, NULL, (int64_t)n * e->R, -1.5f, 1.5f);
    oracle_fill_bf16(kpe, NULL, (int64_t)n * e->P, -1.5f, 1.5f);
    for (int i = 0; i < n; i++)
        if (slots[i] >= 0) sv_expect_row(e, slots[i], ckv + (int64_t)i * e->R, kpe + (int64_t)i * e->P);
}

/* Writes random latent for tokens [t0, t1) of pool row r through mla_kv_cache_write. */
static inline void sv_fill_tokens(sv_env *e, int r, int t0, int t1)
{
    const int n = t1 - t0;
    if (n <= 0) return;
    uint16_t *ckv = malloc((size_t)n * e->R * 2), *kpe = malloc((size_t)n * e->P * 2);
    int32_t *slots = malloc((size_t)n * 4);
    for (int i = 0; i < n; i++) slots[i] = e->r2t[(int64_t)r * e->req_cap + t0 + i];
    sv_make_latent(e, n, slots, ckv, kpe);
    void *dc = sv_dev_copy(e, ckv, (size_t)n * e->R * 2), *dp = sv_dev_copy(e, kpe, (size_t)n * e->P * 2),
         *ds = sv_dev_copy(e, slots, (size_t)n * 4);
    mla_kv_cache_write_args w = {
        .c_kv = sv_t2(e, dc, MLA_DTYPE_BF16, n, e->R),
        .k_pe = sv_t2(e, dp, MLA_DTYPE_BF16, n, e->P),
        .slots = sv_t1(e, ds, MLA_DTYPE_I32, n),
        .kv_cache = sv_t3(e, e->cache, e->cfg.kv_cache_dtype, e->num_pages, e->ps, e->D),
    };
    CHECK_STATUS(mla_kv_cache_write(e->be, &w), MLA_OK);
    sv_free(e, dc);
    sv_free(e, dp);
    sv_free(e, ds);
    free(ckv);
    free(kpe);
    free(slots);
}

static inline mla_tensor sv_cache_tensor(const sv_env *e)
{
    return sv_t3(e, e->cache, e->cfg.kv_cache_dtype, e->num_pages, e->ps, e->D);
}

/* The backend's cache equals the expected one, byte for byte. */
static inline int sv_check_cache(const sv_env *e, const char *label)
{
    const size_t bytes = (size_t)e->num_pages * e->ps * e->D * e->esize;
    uint8_t *got = malloc(bytes);
    sv_download(e, got, e->cache, bytes);
    int64_t bad = 0, first = -1;
    for (size_t i = 0; i < bytes; i++)
        if (got[i] != e->expected[i]) {
            if (first < 0) first = (int64_t)i;
            bad++;
        }
    CHECK_MSG(bad == 0, "%s: %lld cache bytes differ from the expected cache (first at byte %lld, "
              "slot %lld)", label, (long long)bad, (long long)first,
              (long long)(first / (int64_t)(e->D * e->esize)));
    free(got);
    return bad == 0;
}

/* Dequantized expected cache value of token t of pool row r, element d. */
static inline double sv_cache_value(const sv_env *e, int r, int t, int d)
{
    const int64_t slot = e->r2t[(int64_t)r * e->req_cap + t];
    const uint8_t *row = e->expected + slot * e->D * e->esize;
    if (e->esize == 1) return oracle_fp8_value(row[d]) * e->k_scale;
    uint16_t b;
    memcpy(&b, row + 2 * d, 2);
    return oracle_bf16_value(b);
}

/* Oracle of one decode-mode query row: request on pool row r sees tokens [0, visible) of its
 * row; q (D values, already the values the kernel sees) scaled by bmm1. out [H][R], lse [H]. */
static inline void sv_oracle_decode_token(const sv_env *e, int r, int visible, const double *q,
                                   double bmm1, double bmm2, double *out, double *lse)
{
    double *kv = malloc((size_t)(visible > 0 ? visible : 1) * e->D * sizeof *kv);
    double *s = malloc((size_t)(visible > 0 ? visible : 1) * sizeof *s);
    for (int t = 0; t < visible; t++)
        for (int d = 0; d < e->D; d++) kv[(int64_t)t * e->D + d] = sv_cache_value(e, r, t, d);
    for (int h = 0; h < e->H; h++) {
        const double *qh = q + (int64_t)h * e->D;
        double m = -INFINITY;
        for (int t = 0; t < visible; t++) {
            double acc = 0;
            for (int d = 0; d < e->D; d++) acc += qh[d] * kv[(int64_t)t * e->D + d];
            s[t] = acc * bmm1;
            if (s[t] > m) m = s[t];
        }
        double sum = 0;
        for (int t = 0; t < visible; t++) sum += exp(s[t] - m);
        for (int d = 0; d < e->R; d++) {
            double acc = 0;
            for (int t = 0; t < visible; t++) acc += exp(s[t] - m) * kv[(int64_t)t * e->D + d];
            out[(int64_t)h * e->R + d] = visible > 0 ? acc / sum * bmm2 : 0.0;
        }
        lse[h] = visible > 0 ? m + log(sum) : -INFINITY;
    }
    free(kv);
    free(s);
}

/* Up-projection of the extend model: k [H, Dqk], v [H, Dv] from one latent row (bf16 values),
 * float accumulation, rounded to bf16 (what a bf16 GEMM would give, near enough). */
static inline void sv_up_project(const sv_env *e, const uint16_t *latent, uint16_t *k, uint16_t *v)
{
    float x[1024];
    for (int j = 0; j < e->D; j++) x[j] = (float)oracle_bf16_value(latent[j]);
    for (int h = 0; h < e->H; h++) {
        for (int d = 0; d < e->Dqk; d++) {
            const float *w = e->wk + ((int64_t)h * e->Dqk + d) * e->D;
            float acc = 0;
            for (int j = 0; j < e->D; j++) acc += w[j] * x[j];
            k[(int64_t)h * e->Dqk + d] = oracle_bf16_from_double(acc);
        }
        for (int d = 0; d < e->Dv; d++) {
            const float *w = e->wv + ((int64_t)h * e->Dv + d) * e->D;
            float acc = 0;
            for (int j = 0; j < e->D; j++) acc += w[j] * x[j];
            v[(int64_t)h * e->Dv + d] = oracle_bf16_from_double(acc);
        }
    }
}

/* The latent row the library's gather must produce for token t of pool row r (bf16 bits). */
static inline void sv_expected_latent(const sv_env *e, int r, int t, uint16_t *row)
{
    for (int d = 0; d < e->D; d++) {
        const int64_t slot = e->r2t[(int64_t)r * e->req_cap + t];
        const uint8_t *c = e->expected + slot * e->D * e->esize;
        if (e->esize == 1)
            row[d] = oracle_bf16_from_double((double)(float)(oracle_fp8_value(c[d]) * e->k_scale));
        else
            memcpy(&row[d], c + 2 * d, 2);
    }
}

#define SV_OUT_TOL ((oracle_tolerance){.rel_l2 = 1e-2, .elem_rel = 2e-2, .abs_frac = 1e-2, .abs = 1e-5})
#define SV_LSE_TOL ((oracle_tolerance){.rel_l2 = 1e-4, .elem_rel = 1e-4, .abs_frac = 0, .abs = 2e-3})

#endif
