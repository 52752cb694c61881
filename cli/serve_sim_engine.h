/* The serve-sim engine (see serve_sim.h), as a header holding the implementation so that the
 * test programs can compile it in (and rebuild when it changes); included exactly once per
 * program: by cli/serve_sim.c, tests/test_serving_sim.c, tests/gpu/test_gpu_serving.c.
 * One step of the scheduler:
 *   1. arrivals: 0..arrivals new requests (random prompt/output lengths; some belong to a
 *      prefix group and share its first tokens: page-aligned shared pages, refcounted);
 *   2. admission in FIFO order: a request reserves every page it can ever need up front, so a
 *      running request never meets an empty pool; one that cannot fit now waits, one that can
 *      never fit is rejected with a message;
 *   3. prefill: admitted prompts get up to prefill_budget tokens per step (long prompts are
 *      chunked), run as extend over their cached prefix (chunked prefix + callback);
 *   4. decode: running requests decode one token, or (speculative) verify spec_tokens drafts,
 *      accept a random number of them and run draft_extend over the accepted ones;
 *   5. finished requests free their pages.
 * Every forward call is compared on a sample of requests with a double-precision oracle that
 * recomputes each token's latent from its content key, so a wrong page, a stale slot or a
 * freed page still in use shows as a mismatch. */
#ifndef MLA_SERVE_SIM_ENGINE_H
#define MLA_SERVE_SIM_ENGINE_H

#include "serve_sim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef MLA_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

enum { RQ_WAITING, RQ_PREFILL, RQ_RUNNING, RQ_DONE };
#define SIM_GROUPS 4

typedef struct sim_req {
    int id, state;
    int prompt, output, group;
    int row;          /* req_to_token row while admitted */
    int len;          /* tokens in the cache */
    int generated;
    int reserved;     /* pages reserved and not yet taken */
    int npages;
    int *pages;       /* page j holds positions [j * ps, (j + 1) * ps) */
    uint64_t *keys;   /* content key of every position */
    int capacity;     /* positions it may ever write: prompt + output + spec */
    int versions;     /* fresh keys handed out (generated and draft tokens) */
    int waited;
} sim_req;

typedef struct sim {
    const serve_sim_config *c;
    serve_sim_result *r;
    mla_backend *be;
    mla_config cfg;
    int on_gpu, failed;
    int H, R, P, D, Dqk, Dv, ps, req_cap, max_tokens;
    uint64_t rng;
    /* pool */
    int *free_pages, num_free, unreserved, *refcount;
    int *free_rows, num_free_rows;
    int32_t *r2t;
    void *r2t_dev, *cache;
    /* requests: queue of waiting, list of active */
    sim_req **waiting, **active;
    int num_waiting, num_active, next_id;
    int group_len[SIM_GROUPS];
    /* model */
    int *map_k, *map_v;   /* up-projection: one latent element per output element */
    float *w_k, *w_v;
    /* staging */
    void *d_q, *d_out, *d_lse, *d_ckv, *d_kpe, *d_k, *d_v, *d_rpi, *d_seq, *d_ext;
    uint16_t *h_q, *h_out, *h_ckv, *h_kpe, *h_k, *h_v, *h_lat;
    float *h_lse;
    size_t h_lat_rows;
    int32_t *h_rpi, *h_seq, *h_ext;
    sim_req **batch;
    mla_batch_metadata *md_prefill, *md_decode, *md_verify, *md_draft;
    mla_graph *graph, *verify_graph; /* decode (q_len 1) and target_verify (spec + 1) */
    void *graph_stream;
    double t_backend;
} sim;

/* ---- random numbers and token contents ---- */
static uint64_t mix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
static uint64_t sim_rand(sim *s) { return s->rng = mix64(s->rng); }
static int sim_int(sim *s, int lo, int hi) { return lo + (int)(sim_rand(s) % (uint64_t)(hi - lo + 1)); }
static float sim_unit(sim *s) { return (float)((sim_rand(s) >> 40) * (1.0 / 16777216.0)); }

/* Latent element d of the token with content `key`, as bf16 bits. */
static uint16_t latent_bits(uint64_t key, int d)
{
    const double u = (double)(mix64(key * 1315423911ull + (uint64_t)d) >> 11) * (1.0 / 9007199254740992.0);
    return mla_float_to_bf16((float)(3.0 * u - 1.5));
}
static double bf16v(uint16_t b) { return mla_bf16_to_float(b); }

/* What the cache holds for that element, dequantized (value * k_scale for fp8). */
static double cached_value(const sim *s, uint64_t key, int d)
{
    const float x = mla_bf16_to_float(latent_bits(key, d));
    if (s->cfg.kv_cache_dtype != MLA_DTYPE_FP8_E4M3) return x;
    const float k = s->cfg.scales.k_scale;
    return (double)mla_fp8_e4m3_to_float(mla_float_to_fp8_e4m3(x * (1.0f / k))) * k;
}
/* The bf16 row mla_gather_cache produces for that element. */
static uint16_t gathered_bits(const sim *s, uint64_t key, int d)
{
    const uint16_t b = latent_bits(key, d);
    if (s->cfg.kv_cache_dtype != MLA_DTYPE_FP8_E4M3) return b;
    const float k = s->cfg.scales.k_scale;
    return mla_float_to_bf16(mla_fp8_e4m3_to_float(mla_float_to_fp8_e4m3(mla_bf16_to_float(b) * (1.0f / k))) * k);
}

/* The model's up-projection of one latent row (bf16) to K [H, Dqk] and V [H, Dv]: a sparse
 * stand-in for the GEMM a real model runs (one product per output, rounded to bf16). */
static void up_project(const sim *s, const uint16_t *lat, uint16_t *k, uint16_t *v)
{
    for (int i = 0; i < s->H * s->Dqk; i++) k[i] = mla_float_to_bf16(mla_bf16_to_float(lat[s->map_k[i]]) * s->w_k[i]);
    for (int i = 0; i < s->H * s->Dv; i++) v[i] = mla_float_to_bf16(mla_bf16_to_float(lat[s->map_v[i]]) * s->w_v[i]);
}

/* ---- memory on the backend's device ---- */
static int sim_fail(sim *s, const char *what, mla_status st)
{
    if (s->c->log) fprintf(s->c->log, "serve-sim: %s failed: %s: %s\n", what, mla_status_string(st), mla_last_error());
    if (s->r->error == MLA_OK) s->r->error = st;
    s->failed = 1;
    return -1;
}
static int dev_alloc(sim *s, void **p, size_t bytes)
{
    *p = NULL;
    if (s->on_gpu) {
#ifdef MLA_HAVE_CUDA
        if (cudaMalloc(p, bytes ? bytes : 1) != cudaSuccess) *p = NULL;
#endif
    } else {
        *p = calloc(1, bytes ? bytes : 1);
    }
    if (!*p) return sim_fail(s, "allocation", MLA_ERR_OUT_OF_MEMORY);
    return 0;
}
static void dev_free(sim *s, void *p)
{
    (void)s;
    if (!p) return;
#ifdef MLA_HAVE_CUDA
    if (s->on_gpu) {
        cudaFree(p);
        return;
    }
#endif
    free(p);
}
static int h2d(sim *s, void *dst, const void *src, size_t bytes)
{
    (void)s;
#ifdef MLA_HAVE_CUDA
    if (s->on_gpu) return cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice) == cudaSuccess ? 0 : sim_fail(s, "cudaMemcpy", MLA_ERR_DEVICE);
#endif
    memcpy(dst, src, bytes);
    return 0;
}
static int d2h(sim *s, void *dst, const void *src, size_t bytes)
{
    (void)s;
#ifdef MLA_HAVE_CUDA
    if (s->on_gpu) return cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost) == cudaSuccess ? 0 : sim_fail(s, "cudaMemcpy", MLA_ERR_DEVICE);
#endif
    memcpy(dst, src, bytes);
    return 0;
}
static void dev_sync(sim *s)
{
#ifdef MLA_HAVE_CUDA
    if (s->on_gpu && cudaDeviceSynchronize() != cudaSuccess) sim_fail(s, "cudaDeviceSynchronize", MLA_ERR_DEVICE);
#else
    (void)s;
#endif
}
static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static mla_tensor t1(const sim *s, void *d, int64_t a) { return mla_tensor_contiguous(d, MLA_DTYPE_I32, s->cfg.device, 1, (int64_t[]){a}); }
static mla_tensor t2(const sim *s, void *d, mla_dtype dt, int64_t a, int64_t b)
{
    return mla_tensor_contiguous(d, dt, s->cfg.device, 2, (int64_t[]){a, b});
}
static mla_tensor t3(const sim *s, void *d, mla_dtype dt, int64_t a, int64_t b, int64_t c)
{
    return mla_tensor_contiguous(d, dt, s->cfg.device, 3, (int64_t[]){a, b, c});
}

/* ---- pool ---- */
static int pages_for(const sim *s, int tokens) { return (tokens + s->ps - 1) / s->ps; }

/* Takes pages so positions [0, upto) of r have slots (from its reservation). */
static int ensure_pages(sim *s, sim_req *q, int upto)
{
    while (q->npages * s->ps < upto) {
        if (q->reserved <= 0 || s->num_free <= 0) {
            if (s->c->log) fprintf(s->c->log, "serve-sim: allocator: request %d has no reserved page left\n", q->id);
            s->failed = 1;
            return -1;
        }
        const int page = s->free_pages[--s->num_free];
        q->reserved--;
        s->refcount[page] = 1;
        const int j = q->npages++;
        q->pages[j] = page;
        int32_t *row = s->r2t + (int64_t)q->row * s->req_cap;
        const int n = (j + 1) * s->ps <= s->req_cap ? s->ps : s->req_cap - j * s->ps;
        for (int o = 0; o < n; o++) row[j * s->ps + o] = page * s->ps + o;
        if (h2d(s, (int32_t *)s->r2t_dev + (int64_t)q->row * s->req_cap + j * s->ps, row + j * s->ps, (size_t)n * 4)) return -1;
    }
    return 0;
}

static void release(sim *s, sim_req *q)
{
    for (int j = 0; j < q->npages; j++)
        if (--s->refcount[q->pages[j]] == 0) {
            s->free_pages[s->num_free++] = q->pages[j];
            s->unreserved++;
        }
    s->unreserved += q->reserved;
    q->reserved = 0;
    q->npages = 0;
    if (q->row >= 0) s->free_rows[s->num_free_rows++] = q->row;
    q->row = -1;
}

static void free_req(sim_req *q)
{
    if (!q) return;
    free(q->pages);
    free(q->keys);
    free(q);
}

static uint64_t fresh_key(sim_req *q) { return mix64(((uint64_t)q->id << 32) ^ (uint64_t)(0x80000000u + q->versions++)); }

static sim_req *new_request(sim *s)
{
    sim_req *q = calloc(1, sizeof *q);
    if (!q) return NULL;
    q->id = s->next_id++;
    q->row = -1;
    q->group = sim_unit(s) < 0.35f ? sim_int(s, 0, SIM_GROUPS - 1) : -1;
    const int min_prompt = q->group >= 0 ? s->group_len[q->group] + 1 : 1;
    q->prompt = sim_int(s, min_prompt < s->c->max_prompt ? min_prompt : s->c->max_prompt, s->c->max_prompt);
    if (q->group >= 0 && q->prompt <= s->group_len[q->group]) q->group = -1;
    q->output = sim_int(s, 1, s->c->max_output);
    q->capacity = q->prompt + q->output + s->c->spec_tokens;
    q->pages = calloc((size_t)pages_for(s, q->capacity), sizeof *q->pages);
    q->keys = calloc((size_t)q->capacity, sizeof *q->keys);
    if (!q->pages || !q->keys) {
        free_req(q);
        return NULL;
    }
    for (int p = 0; p < q->prompt; p++)
        q->keys[p] = q->group >= 0 && p < s->group_len[q->group] ? mix64(0xABCDEF00ull + (uint64_t)q->group * 1000003ull + (uint64_t)p)
                                                                   : mix64(((uint64_t)q->id << 32) ^ (uint64_t)p);
    return q;
}

/* Admission: FIFO; every page the request may need is reserved now. */
static void admit(sim *s)
{
    while (s->num_waiting > 0 && !s->failed) {
        sim_req *q = s->waiting[0];
        const int total = pages_for(s, q->capacity);
        int drop = 0;
        if (total > s->c->num_pages || q->capacity > s->req_cap) {
            if (s->c->log)
                fprintf(s->c->log, "serve-sim: request %d rejected: prompt %d + output %d needs %d pages, the pool has %d\n",
                        q->id, q->prompt, q->output, total, s->c->num_pages);
            s->r->rejected++;
            drop = 1;
        } else {
            /* A live request of the same group with the shared prompt cached lends its pages. */
            sim_req *donor = NULL;
            const int shared = q->group >= 0 ? s->group_len[q->group] / s->ps * s->ps : 0;
            for (int i = 0; i < s->num_active && shared > 0 && !donor; i++)
                if (s->active[i]->group == q->group && s->active[i]->len >= shared) donor = s->active[i];
            const int lent = donor ? shared / s->ps : 0;
            const int need = total - lent;
            if (need > s->unreserved || s->num_free_rows == 0) {
                if (!q->waited && s->c->log && s->c->log_every == 1)
                    fprintf(s->c->log, "serve-sim: request %d waits: needs %d pages, %d unreserved, %d free rows\n", q->id, need,
                            s->unreserved, s->num_free_rows);
                q->waited = 1;
                s->r->waits++;
                return;
            }
            s->unreserved -= need;
            q->reserved = need;
            q->row = s->free_rows[--s->num_free_rows];
            int32_t *row = s->r2t + (int64_t)q->row * s->req_cap;
            for (int j = 0; j < lent; j++) {
                q->pages[j] = donor->pages[j];
                s->refcount[q->pages[j]]++;
                for (int o = 0; o < s->ps; o++) row[j * s->ps + o] = q->pages[j] * s->ps + o;
            }
            q->npages = lent;
            q->len = lent * s->ps;
            s->r->shared_prefix_tokens += q->len;
            if (lent && h2d(s, (int32_t *)s->r2t_dev + (int64_t)q->row * s->req_cap, row, (size_t)lent * s->ps * 4)) return;
            q->state = RQ_PREFILL;
            s->active[s->num_active++] = q;
            s->r->admitted++;
        }
        memmove(s->waiting, s->waiting + 1, (size_t)(--s->num_waiting) * sizeof *s->waiting);
        if (drop) free_req(q);
    }
}

/* ---- oracle ---- */

/* Compares `rows` output rows (H x width bf16 each, LSE [H]) with the reference; returns 1 when
 * they match: relative L2 error per row below 2e-2, no NaN, LSE within 1e-2. */
static int rows_match(const uint16_t *out, const float *lse, const double *ref, const double *ref_lse, int H, int width)
{
    for (int h = 0; h < H; h++) {
        double num = 0, den = 0;
        for (int d = 0; d < width; d++) {
            const double o = bf16v(out[h * width + d]), x = ref[h * width + d];
            if (isnan(o)) return 0;
            num += (o - x) * (o - x);
            den += x * x;
        }
        if (num > 4e-4 * (den + 1e-12)) return 0;
        if (isinf(ref_lse[h]) ? lse[h] != (float)ref_lse[h] : !(fabs(lse[h] - ref_lse[h]) <= 1e-2)) return 0;
    }
    return 1;
}

/* Decode-mode row: query q (H x D bf16) over the first `visible` positions of a request whose
 * dequantized cache rows are kv [seq, D]; sc: scratch of `visible` doubles, qd: of D. The
 * query is converted once per head and P V runs over keys in the outer loop (contiguous kv
 * rows); every output still sums its keys in order, as a per-column loop would. */
static void oracle_decode_row(const sim *s, int visible, const uint16_t *q, const double *kv, double *sc, double *qd,
                              double *out, double *lse)
{
    const int H = s->H, D = s->D, R = s->R;
    const double scale = s->cfg.scales.softmax_scale;
    for (int h = 0; h < H; h++) {
        for (int d = 0; d < D; d++) qd[d] = bf16v(q[h * D + d]);
        double m = -INFINITY;
        for (int t = 0; t < visible; t++) {
            const double *k = kv + (int64_t)t * D;
            double a = 0;
            for (int d = 0; d < D; d++) a += qd[d] * k[d];
            sc[t] = a * scale;
            if (sc[t] > m) m = sc[t];
        }
        double sum = 0;
        for (int t = 0; t < visible; t++) sum += (sc[t] = exp(sc[t] - m));
        double *o = out + h * R;
        for (int d = 0; d < R; d++) o[d] = 0;
        for (int t = 0; t < visible; t++) {
            const double *v = kv + (int64_t)t * D, p = sc[t];
            for (int d = 0; d < R; d++) o[d] += p * v[d];
        }
        for (int d = 0; d < R; d++) o[d] = visible ? o[d] / sum * s->cfg.scales.o_scale : 0;
        lse[h] = visible ? m + log(sum) : -INFINITY;
    }
}

/* Picks up to n distinct indices of [0, count) into idx; returns how many. */
static int sample(sim *s, int count, int n, int *idx)
{
    int k = 0;
    for (int i = 0; i < count; i++) {
        if (k < n) idx[k++] = i;
        else {
            int j = sim_int(s, 0, i);
            if (j < n) idx[j] = i;
        }
    }
    return k;
}

/* Checks decode-mode output rows of a batch: request b has ext[b] new rows ending at seq[b]. */
static void check_decode_like(sim *s, int B, const char *what)
{
    const int H = s->H, D = s->D, R = s->R;
    int idx[4096];
    const int n = sample(s, B, s->c->check_requests, idx);
    int64_t rows_before[4097];
    rows_before[0] = 0;
    for (int b = 0; b < B; b++) rows_before[b + 1] = rows_before[b] + s->h_ext[b];
    const int64_t T = rows_before[B];
    if (d2h(s, s->h_out, s->d_out, (size_t)T * H * R * 2) || d2h(s, s->h_lse, s->d_lse, (size_t)T * H * 4)) return;
    int max_seq = 0;
    for (int i = 0; i < n; i++) max_seq = s->h_seq[idx[i]] > max_seq ? s->h_seq[idx[i]] : max_seq;
    double *kv = malloc(((size_t)max_seq * D + max_seq + 1 + D) * sizeof *kv), *ref = malloc((size_t)H * R * sizeof *ref), lse[128];
    for (int i = 0; i < n && kv && ref; i++) {
        const int b = idx[i];
        const sim_req *rq = s->batch[b];
        int ok = 1;
        for (int t = 0; t < s->h_seq[b]; t++)
            for (int d = 0; d < D; d++) kv[(int64_t)t * D + d] = cached_value(s, rq->keys[t], d);
        for (int j = 0; j < s->h_ext[b]; j++) {
            const int64_t row = rows_before[b] + j;
            double *sc = kv + (int64_t)max_seq * D;
            oracle_decode_row(s, s->h_seq[b] - s->h_ext[b] + j + 1, s->h_q + row * H * D, kv, sc, sc + max_seq + 1, ref, lse);
            ok &= rows_match(s->h_out + row * H * R, s->h_lse + row * H, ref, lse, H, R);
        }
        s->r->checks++;
        if (!ok) {
            s->r->mismatches++;
            if (s->c->log) fprintf(s->c->log, "serve-sim: MISMATCH in %s: request %d (seq %d, new %d)\n", what, rq->id, s->h_seq[b], s->h_ext[b]);
        }
    }
    free(kv);
    free(ref);
}

/* ---- forward passes ---- */

static mla_metadata_args md_args(sim *s, mla_forward_mode mode, int B, int q_len)
{
    mla_metadata_args a = {
        .mode = mode,
        .req_to_token = t2(s, s->r2t_dev, MLA_DTYPE_I32, s->c->max_running, s->req_cap),
        .req_pool_indices = t1(s, s->d_rpi, B),
        .seq_lens = t1(s, s->d_seq, B),
        .q_len = q_len,
        .host_seq_lens = s->h_seq,
    };
    if (mode == MLA_FORWARD_DRAFT_EXTEND || mode == MLA_FORWARD_EXTEND) {
        a.extend_lens = t1(s, s->d_ext, B);
        a.host_extend_lens = s->h_ext;
    }
    return a;
}

/* Uploads the batch's index arrays, q and the new tokens' latent (rows: ext[b] positions ending
 * at seq[b] of each request). */
static int upload_batch(sim *s, int B, int q_width)
{
    int64_t T = 0;
    for (int b = 0; b < B; b++) {
        const sim_req *q = s->batch[b];
        s->h_rpi[b] = q->row;
        for (int j = 0; j < s->h_ext[b]; j++, T++) {
            const uint64_t key = q->keys[s->h_seq[b] - s->h_ext[b] + j];
            for (int d = 0; d < s->R; d++) s->h_ckv[T * s->R + d] = latent_bits(key, d);
            for (int d = 0; d < s->P; d++) s->h_kpe[T * s->P + d] = latent_bits(key, s->R + d);
        }
    }
    for (int64_t i = 0; i < T * s->H * q_width; i++) s->h_q[i] = mla_float_to_bf16(2.0f * sim_unit(s) - 1.0f);
    if (h2d(s, s->d_rpi, s->h_rpi, (size_t)B * 4) || h2d(s, s->d_seq, s->h_seq, (size_t)B * 4) ||
        h2d(s, s->d_ext, s->h_ext, (size_t)B * 4) || h2d(s, s->d_q, s->h_q, (size_t)T * s->H * q_width * 2) ||
        h2d(s, s->d_ckv, s->h_ckv, (size_t)T * s->R * 2) || h2d(s, s->d_kpe, s->h_kpe, (size_t)T * s->P * 2))
        return -1;
    return (int)T;
}

static mla_forward_args decode_args(sim *s, int T)
{
    mla_forward_args f = {
        .q = t3(s, s->d_q, MLA_DTYPE_BF16, T, s->H, s->D),
        .out = t3(s, s->d_out, MLA_DTYPE_BF16, T, s->H, s->R),
        .lse = t2(s, s->d_lse, MLA_DTYPE_F32, T, s->H),
        .c_kv = t2(s, s->d_ckv, MLA_DTYPE_BF16, T, s->R),
        .k_pe = t2(s, s->d_kpe, MLA_DTYPE_BF16, T, s->P),
        .kv_cache = t3(s, s->cache, s->cfg.kv_cache_dtype, s->c->num_pages, s->ps, s->D),
    };
    return f;
}

static int run_call(sim *s, const char *what, mla_status st)
{
    if (st != MLA_OK) return sim_fail(s, what, st);
    dev_sync(s);
    return s->failed ? -1 : 0;
}

/* Decode (or verify with q_len L) of the requests in s->batch[0..B). */
static int decode_batch(sim *s, int B, int L)
{
    for (int b = 0; b < B; b++) {
        sim_req *q = s->batch[b];
        if (ensure_pages(s, q, q->len + L)) return -1;
        for (int j = 0; j < L; j++) q->keys[q->len + j] = fresh_key(q);
        s->h_seq[b] = q->len + L;
        s->h_ext[b] = L;
    }
    const int T = upload_batch(s, B, s->D);
    if (T < 0) return -1;
    const mla_forward_mode mode = L == 1 ? MLA_FORWARD_DECODE : MLA_FORWARD_TARGET_VERIFY;
    mla_metadata_args ma = md_args(s, mode, B, L);
    mla_forward_args fa = decode_args(s, T);
    const double t0 = now_s();
    mla_status st;
    mla_graph *graph = mode == MLA_FORWARD_DECODE ? s->graph : s->verify_graph;
    if (graph) {
        st = mla_graph_replay(graph, &ma, s->graph_stream);
    } else {
        mla_batch_metadata *md = mode == MLA_FORWARD_DECODE ? s->md_decode : s->md_verify;
        st = mla_metadata_build(md, &ma);
        if (st == MLA_OK) st = mode == MLA_FORWARD_DECODE ? mla_forward_decode(s->be, md, &fa) : mla_forward_target_verify(s->be, md, &fa);
    }
    if (run_call(s, mla_forward_mode_name(mode), st)) return -1;
    s->t_backend += now_s() - t0;
    check_decode_like(s, B, mla_forward_mode_name(mode));
    return 0;
}

/* After a verify: request b accepted acc[b] drafts; its accepted tokens and the bonus token
 * (fresh content) run as a ragged draft_extend, rewriting their cache rows. */
static int draft_extend_batch(sim *s, int B, const int *acc)
{
    for (int b = 0; b < B; b++) {
        sim_req *q = s->batch[b];
        q->keys[q->len + acc[b]] = fresh_key(q);
        s->h_ext[b] = acc[b] + 1;
        s->h_seq[b] = q->len + acc[b] + 1;
    }
    const int T = upload_batch(s, B, s->D);
    if (T < 0) return -1;
    mla_metadata_args ma = md_args(s, MLA_FORWARD_DRAFT_EXTEND, B, 0);
    mla_forward_args fa = decode_args(s, T);
    const double t0 = now_s();
    mla_status st = mla_metadata_build(s->md_draft, &ma);
    if (st == MLA_OK) st = mla_forward_draft_extend(s->be, s->md_draft, &fa);
    if (run_call(s, "draft_extend", st)) return -1;
    s->t_backend += now_s() - t0;
    s->r->draft_extend_tokens += T;
    check_decode_like(s, B, "draft_extend");
    return 0;
}

/* The extend model's callback: K/V of gathered prefix rows. */
static mla_status prefix_kv(void *user, const mla_prefix_chunk *c)
{
    sim *s = user;
    const size_t n = (size_t)c->num_rows;
    if (n > s->h_lat_rows) {
        uint16_t *p = realloc(s->h_lat, n * ((size_t)s->D + (size_t)s->H * (s->Dqk + s->Dv)) * 2);
        if (!p) return MLA_ERR_OUT_OF_MEMORY;
        s->h_lat = p;
        s->h_lat_rows = n;
    }
    uint16_t *lat = s->h_lat, *k = lat + n * s->D, *v = k + n * s->H * s->Dqk;
    if (d2h(s, lat, c->latent.data, n * s->D * 2)) return MLA_ERR_DEVICE;
    for (size_t i = 0; i < n; i++) up_project(s, lat + i * s->D, k + i * s->H * s->Dqk, v + i * s->H * s->Dv);
    if (h2d(s, c->k.data, k, n * s->H * s->Dqk * 2) || h2d(s, c->v.data, v, n * s->H * s->Dv * 2)) return MLA_ERR_DEVICE;
    return MLA_OK;
}

static void check_extend(sim *s, int B, int64_t T)
{
    const int H = s->H, Dqk = s->Dqk, Dv = s->Dv, D = s->D;
    if (d2h(s, s->h_out, s->d_out, (size_t)T * H * Dv * 2) || d2h(s, s->h_lse, s->d_lse, (size_t)T * H * 4)) return;
    int idx[4096];
    const int n = sample(s, B, s->c->check_requests, idx);
    int64_t first[4097];
    first[0] = 0;
    for (int b = 0; b < B; b++) first[b + 1] = first[b] + s->h_ext[b];
    uint16_t lat[1024];
    double ref[128 * 128], lse[128];
    for (int i = 0; i < n; i++) {
        const int b = idx[i], seq = s->h_seq[b], e = s->h_ext[b], pre = seq - e;
        const sim_req *rq = s->batch[b];
        uint16_t *kk = malloc((size_t)seq * H * (Dqk + Dv) * 2);
        double *sc = malloc(((size_t)seq + Dqk) * sizeof *sc), *qd = sc + seq; /* scores, query row */
        if (!kk || !sc) {
            free(kk);
            free(sc);
            return;
        }
        uint16_t *vv = kk + (size_t)seq * H * Dqk;
        for (int t = 0; t < seq; t++) {
            for (int d = 0; d < D; d++) lat[d] = t < pre ? gathered_bits(s, rq->keys[t], d) : latent_bits(rq->keys[t], d);
            up_project(s, lat, kk + (size_t)t * H * Dqk, vv + (size_t)t * H * Dv);
        }
        int rows[4096];
        const int nrows = sample(s, e, s->c->check_rows > 0 ? s->c->check_rows : e, rows);
        int ok = 1;
        for (int ri = 0; ri < nrows; ri++) {
            const int j = rows[ri];
            const int64_t row = first[b] + j;
            const uint16_t *qr = s->h_q + row * H * Dqk;
            for (int h = 0; h < H; h++) { /* q converted once per head; P V with keys outer */
                for (int d = 0; d < Dqk; d++) qd[d] = bf16v(qr[h * Dqk + d]);
                double m = -INFINITY;
                for (int t = 0; t <= pre + j; t++) {
                    const uint16_t *k = kk + ((size_t)t * H + h) * Dqk;
                    double a = 0;
                    for (int d = 0; d < Dqk; d++) a += qd[d] * bf16v(k[d]);
                    sc[t] = a * s->cfg.scales.softmax_scale;
                    if (sc[t] > m) m = sc[t];
                }
                double sum = 0;
                for (int t = 0; t <= pre + j; t++) sum += (sc[t] = exp(sc[t] - m));
                double *o = ref + h * Dv;
                for (int d = 0; d < Dv; d++) o[d] = 0;
                for (int t = 0; t <= pre + j; t++) {
                    const uint16_t *v = vv + ((size_t)t * H + h) * Dv;
                    for (int d = 0; d < Dv; d++) o[d] += sc[t] * bf16v(v[d]);
                }
                for (int d = 0; d < Dv; d++) o[d] = o[d] / sum * s->cfg.scales.o_scale;
                lse[h] = m + log(sum);
            }
            ok &= rows_match(s->h_out + row * H * Dv, s->h_lse + row * H, ref, lse, H, Dv);
        }
        s->r->checks++;
        if (!ok) {
            s->r->mismatches++;
            if (s->c->log) fprintf(s->c->log, "serve-sim: MISMATCH in extend: request %d (prefix %d, new %d)\n", rq->id, pre, e);
        }
        free(kk);
        free(sc);
    }
}

/* Prefill step: chunks of the admitted prompts within the token budget. */
static int prefill_step(sim *s, int *prefilled_reqs, int *prefilled_tokens)
{
    int B = 0, budget = s->c->prefill_budget;
    for (int i = 0; i < s->num_active && budget > 0; i++) {
        sim_req *q = s->active[i];
        if (q->state != RQ_PREFILL) continue;
        const int n = q->prompt - q->len < budget ? q->prompt - q->len : budget;
        if (n <= 0) continue;
        if (ensure_pages(s, q, q->len + n)) return -1;
        s->batch[B] = q;
        s->h_seq[B] = q->len + n;
        s->h_ext[B] = n;
        B++;
        budget -= n;
    }
    *prefilled_reqs = B;
    *prefilled_tokens = s->c->prefill_budget - budget;
    if (B == 0) return 0;
    const int T = upload_batch(s, B, s->Dqk);
    if (T < 0) return -1;
    /* The new tokens' K/V from their (unquantized) latent, as the model computes them. */
    uint16_t lat[1024];
    for (int t = 0; t < T; t++) {
        for (int d = 0; d < s->R; d++) lat[d] = s->h_ckv[(int64_t)t * s->R + d];
        for (int d = 0; d < s->P; d++) lat[s->R + d] = s->h_kpe[(int64_t)t * s->P + d];
        up_project(s, lat, s->h_k + (int64_t)t * s->H * s->Dqk, s->h_v + (int64_t)t * s->H * s->Dv);
    }
    if (h2d(s, s->d_k, s->h_k, (size_t)T * s->H * s->Dqk * 2) || h2d(s, s->d_v, s->h_v, (size_t)T * s->H * s->Dv * 2)) return -1;
    mla_metadata_args ma = md_args(s, MLA_FORWARD_EXTEND, B, 0);
    mla_forward_args fa = {
        .q = t3(s, s->d_q, MLA_DTYPE_BF16, T, s->H, s->Dqk),
        .k = t3(s, s->d_k, MLA_DTYPE_BF16, T, s->H, s->Dqk),
        .v = t3(s, s->d_v, MLA_DTYPE_BF16, T, s->H, s->Dv),
        .out = t3(s, s->d_out, MLA_DTYPE_BF16, T, s->H, s->Dv),
        .lse = t2(s, s->d_lse, MLA_DTYPE_F32, T, s->H),
        .c_kv = t2(s, s->d_ckv, MLA_DTYPE_BF16, T, s->R),
        .k_pe = t2(s, s->d_kpe, MLA_DTYPE_BF16, T, s->P),
        .kv_cache = t3(s, s->cache, s->cfg.kv_cache_dtype, s->c->num_pages, s->ps, s->D),
        .prefix_kv = prefix_kv,
        .prefix_kv_user = s,
        .prefix_chunk_size = s->c->prefix_chunk,
    };
    const double t0 = now_s();
    mla_status st = mla_metadata_build(s->md_prefill, &ma);
    if (st == MLA_OK) st = mla_forward_extend(s->be, s->md_prefill, &fa);
    if (run_call(s, "extend", st)) return -1;
    s->t_backend += now_s() - t0;
    check_extend(s, B, T);
    for (int b = 0; b < B; b++) {
        s->batch[b]->len = s->h_seq[b];
        if (s->batch[b]->len == s->batch[b]->prompt) s->batch[b]->state = RQ_RUNNING;
    }
    s->r->prefill_tokens += T;
    return 0;
}

/* Decode step: plain decode for some running requests, verify + draft_extend for others. */
static int decode_step(sim *s, int *decoded, int *verified, int *accepted)
{
    const int L = s->c->spec_tokens + 1;
    sim_req *spec[4096];
    int nplain = 0, nspec = 0;
    for (int i = 0; i < s->num_active; i++) {
        sim_req *q = s->active[i];
        if (q->state != RQ_RUNNING) continue;
        if (L > 1 && q->output - q->generated >= 2 && sim_unit(s) < 0.5f)
            spec[nspec++] = q;
        else
            s->batch[nplain++] = q;
    }
    *decoded = nplain;
    *verified = nspec;
    *accepted = 0;
    if (nplain > 0) {
        if (decode_batch(s, nplain, 1)) return -1;
        for (int b = 0; b < nplain; b++) {
            s->batch[b]->len++;
            s->batch[b]->generated++;
        }
        s->r->decode_tokens += nplain;
    }
    if (nspec > 0) {
        for (int b = 0; b < nspec; b++) s->batch[b] = spec[b];
        if (decode_batch(s, nspec, L)) return -1;
        s->r->verify_tokens += (int64_t)nspec * L;
        int acc[4096];
        for (int b = 0; b < nspec; b++) {
            const sim_req *q = spec[b];
            const int most = q->output - q->generated - 1 < L - 1 ? q->output - q->generated - 1 : L - 1;
            acc[b] = sim_int(s, 0, most);
            *accepted += acc[b];
        }
        if (draft_extend_batch(s, nspec, acc)) return -1;
        for (int b = 0; b < nspec; b++) {
            spec[b]->len += acc[b] + 1;
            spec[b]->generated += acc[b] + 1;
        }
        s->r->accepted_drafts += *accepted;
    }
    return 0;
}

/* ---- setup ---- */

void serve_sim_defaults(serve_sim_config *c, int on_gpu)
{
    memset(c, 0, sizeof *c);
    c->backend = on_gpu ? "hopper" : "cpu";
    c->steps = 300;
    c->seed = 1;
    c->heads = on_gpu ? 16 : 4;
    c->kv_lora_rank = on_gpu ? 512 : 64;
    c->rope_dim = on_gpu ? 64 : 16;
    c->nope_dim = on_gpu ? 128 : 32;
    c->v_dim = on_gpu ? 128 : 32;
    c->page_size = on_gpu ? 64 : 32;
    c->kv_dtype = MLA_DTYPE_FP8_E4M3;
    c->num_pages = on_gpu ? 2048 : 160;
    c->max_running = on_gpu ? 64 : 12;
    c->max_prompt = on_gpu ? 1024 : 160;
    c->max_output = on_gpu ? 128 : 48;
    c->prefill_budget = on_gpu ? 2048 : 192;
    c->prefix_chunk = on_gpu ? 512 : 48;
    c->spec_tokens = 3;
    c->check_requests = on_gpu ? 2 : 4;
    c->check_rows = on_gpu ? 4 : 8;
    c->use_graphs = 0;
    c->arrivals = 2;
    c->log = stdout;
    c->log_every = 1;
}

static void sim_free(sim *s)
{
    mla_graph_destroy(s->graph);
    mla_graph_destroy(s->verify_graph);
    mla_metadata_destroy(s->md_prefill);
    mla_metadata_destroy(s->md_decode);
    mla_metadata_destroy(s->md_verify);
    mla_metadata_destroy(s->md_draft);
    void *dev[] = {s->r2t_dev, s->cache, s->d_q, s->d_out, s->d_lse, s->d_ckv, s->d_kpe, s->d_k, s->d_v, s->d_rpi, s->d_seq, s->d_ext};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) dev_free(s, dev[i]);
#ifdef MLA_HAVE_CUDA
    if (s->graph_stream) cudaStreamDestroy((cudaStream_t)s->graph_stream);
#endif
    for (int i = 0; i < s->num_waiting; i++) free_req(s->waiting[i]);
    for (int i = 0; i < s->num_active; i++) free_req(s->active[i]);
    void *host[] = {s->free_pages, s->refcount, s->free_rows, s->r2t, s->waiting, s->active, s->map_k, s->map_v, s->w_k, s->w_v,
                    s->h_q, s->h_out, s->h_ckv, s->h_kpe, s->h_k, s->h_v, s->h_lat, s->h_lse, s->h_rpi, s->h_seq, s->h_ext, s->batch};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
    mla_backend_destroy(s->be);
}

static int sim_setup(sim *s)
{
    const serve_sim_config *c = s->c;
    mla_config cfg;
    mla_config_init(&cfg);
    cfg.num_heads = c->heads;
    cfg.kv_lora_rank = c->kv_lora_rank;
    cfg.qk_rope_head_dim = c->rope_dim;
    cfg.qk_nope_head_dim = c->nope_dim;
    cfg.v_head_dim = c->v_dim;
    cfg.page_size = c->page_size;
    cfg.kv_cache_dtype = c->kv_dtype;
    cfg.max_q_len = c->spec_tokens + 1;
    cfg.max_batch = c->max_running;
    cfg.scales.k_scale = c->kv_dtype == MLA_DTYPE_FP8_E4M3 ? 0.5f : 1.0f;
    cfg.has_k_scale = c->kv_dtype == MLA_DTYPE_FP8_E4M3;
    mla_backend_info info;
    mla_status st = mla_backend_find(c->backend, &info);
    if (st != MLA_OK) return sim_fail(s, "mla_backend_find", st);
    s->on_gpu = info.caps.device_type == MLA_DEVICE_CUDA;
    cfg.device.type = info.caps.device_type;
    if (c->kv_lora_rank != 512 || c->nope_dim != 128) cfg.scales.softmax_scale = 1.0f / sqrtf((float)(c->nope_dim + c->rope_dim));
    st = mla_backend_create(c->backend, &cfg, &s->be);
    if (st != MLA_OK) return sim_fail(s, "mla_backend_create", st);
    s->cfg = *mla_backend_config(s->be);
    s->H = c->heads;
    s->R = c->kv_lora_rank;
    s->P = c->rope_dim;
    s->D = s->R + s->P;
    s->Dqk = c->nope_dim + c->rope_dim;
    s->Dv = c->v_dim;
    s->ps = s->cfg.page_size;
    s->req_cap = c->max_prompt + c->max_output + c->spec_tokens + 1;
    s->max_tokens = c->prefill_budget > c->max_running * (c->spec_tokens + 1) ? c->prefill_budget : c->max_running * (c->spec_tokens + 1);
    s->rng = mix64(c->seed);
    const int N = c->num_pages, M = c->max_running, T = s->max_tokens, H = s->H;
    s->free_pages = malloc((size_t)N * sizeof(int));
    s->refcount = calloc((size_t)N, sizeof(int));
    s->free_rows = malloc((size_t)M * sizeof(int));
    s->r2t = malloc((size_t)M * s->req_cap * 4);
    s->waiting = calloc((size_t)(c->steps + 1) * (c->arrivals + 1), sizeof(sim_req *));
    s->active = calloc((size_t)M, sizeof(sim_req *));
    s->batch = calloc((size_t)M, sizeof(sim_req *));
    s->map_k = malloc((size_t)H * s->Dqk * sizeof(int));
    s->map_v = malloc((size_t)H * s->Dv * sizeof(int));
    s->w_k = malloc((size_t)H * s->Dqk * sizeof(float));
    s->w_v = malloc((size_t)H * s->Dv * sizeof(float));
    const int qw = s->D > s->Dqk ? s->D : s->Dqk, ow = s->R > s->Dv ? s->R : s->Dv;
    s->h_q = malloc((size_t)T * H * qw * 2);
    s->h_out = malloc((size_t)T * H * ow * 2);
    s->h_lse = malloc((size_t)T * H * 4);
    s->h_ckv = malloc((size_t)T * s->R * 2);
    s->h_kpe = malloc((size_t)T * s->P * 2);
    s->h_k = malloc((size_t)T * H * s->Dqk * 2);
    s->h_v = malloc((size_t)T * H * s->Dv * 2);
    s->h_rpi = malloc((size_t)M * 4);
    s->h_seq = malloc((size_t)M * 4);
    s->h_ext = malloc((size_t)M * 4);
    if (!s->free_pages || !s->refcount || !s->free_rows || !s->r2t || !s->waiting || !s->active || !s->batch || !s->map_k ||
        !s->map_v || !s->w_k || !s->w_v || !s->h_q || !s->h_out || !s->h_lse || !s->h_ckv || !s->h_kpe || !s->h_k || !s->h_v ||
        !s->h_rpi || !s->h_seq || !s->h_ext)
        return sim_fail(s, "host allocation", MLA_ERR_OUT_OF_MEMORY);
    for (int i = 0; i < N; i++) s->free_pages[i] = N - 1 - i;
    for (int i = N - 1; i > 0; i--) { /* scattered pages */
        int j = sim_int(s, 0, i), t = s->free_pages[i];
        s->free_pages[i] = s->free_pages[j];
        s->free_pages[j] = t;
    }
    s->num_free = s->unreserved = N;
    for (int i = 0; i < M; i++) s->free_rows[i] = M - 1 - i;
    s->num_free_rows = M;
    for (int64_t i = 0; i < (int64_t)M * s->req_cap; i++) s->r2t[i] = -1;
    for (int i = 0; i < H * s->Dqk; i++) {
        s->map_k[i] = sim_int(s, 0, s->D - 1);
        s->w_k[i] = 2.0f * sim_unit(s) - 1.0f;
    }
    for (int i = 0; i < H * s->Dv; i++) {
        s->map_v[i] = sim_int(s, 0, s->D - 1);
        s->w_v[i] = 2.0f * sim_unit(s) - 1.0f;
    }
    for (int g = 0; g < SIM_GROUPS; g++) s->group_len[g] = sim_int(s, s->ps, c->max_prompt / 2 > s->ps ? c->max_prompt / 2 : s->ps);
    const size_t cache_bytes = (size_t)N * s->ps * s->D * mla_dtype_size(s->cfg.kv_cache_dtype);
    if (dev_alloc(s, &s->r2t_dev, (size_t)M * s->req_cap * 4) || h2d(s, s->r2t_dev, s->r2t, (size_t)M * s->req_cap * 4) ||
        dev_alloc(s, &s->cache, cache_bytes) || dev_alloc(s, &s->d_q, (size_t)T * H * qw * 2) ||
        dev_alloc(s, &s->d_out, (size_t)T * H * ow * 2) || dev_alloc(s, &s->d_lse, (size_t)T * H * 4) ||
        dev_alloc(s, &s->d_ckv, (size_t)T * s->R * 2) || dev_alloc(s, &s->d_kpe, (size_t)T * s->P * 2) ||
        dev_alloc(s, &s->d_k, (size_t)T * H * s->Dqk * 2) || dev_alloc(s, &s->d_v, (size_t)T * H * s->Dv * 2) ||
        dev_alloc(s, &s->d_rpi, (size_t)M * 4) || dev_alloc(s, &s->d_seq, (size_t)M * 4) || dev_alloc(s, &s->d_ext, (size_t)M * 4))
        return -1;
    const int ctx = s->req_cap;
    if ((st = mla_metadata_create(s->be, M, ctx, &s->md_prefill)) != MLA_OK || (st = mla_metadata_create(s->be, M, ctx, &s->md_decode)) != MLA_OK ||
        (st = mla_metadata_create(s->be, M, ctx, &s->md_verify)) != MLA_OK || (st = mla_metadata_create(s->be, M, ctx, &s->md_draft)) != MLA_OK)
        return sim_fail(s, "mla_metadata_create", st);
    if (c->use_graphs) {
#ifdef MLA_HAVE_CUDA
        if (s->on_gpu && cudaStreamCreate((cudaStream_t *)&s->graph_stream) != cudaSuccess) return sim_fail(s, "cudaStreamCreate", MLA_ERR_DEVICE);
#endif
        mla_forward_args ga = decode_args(s, M);
        ga.stream = s->graph_stream;
        st = mla_graph_capture(s->be, s->md_decode, MLA_FORWARD_DECODE, 1, &ga, &s->graph);
        if (st != MLA_OK) return sim_fail(s, "mla_graph_capture", st);
        if (c->spec_tokens > 0) {
            mla_forward_args va = decode_args(s, M * (c->spec_tokens + 1));
            va.stream = s->graph_stream;
            st = mla_graph_capture(s->be, s->md_verify, MLA_FORWARD_TARGET_VERIFY, c->spec_tokens + 1, &va, &s->verify_graph);
            if (st != MLA_OK) return sim_fail(s, "mla_graph_capture (target_verify)", st);
        }
    }
    return 0;
}

int serve_sim_run(const serve_sim_config *c, serve_sim_result *r)
{
    memset(r, 0, sizeof *r);
    sim s;
    memset(&s, 0, sizeof s);
    s.c = c;
    s.r = r;
    FILE *log = c->log;
    if (c->spec_tokens < 0 || c->spec_tokens > 7 || c->steps < 0 || c->max_running < 1 || c->max_running > 4096 || c->num_pages < 1 ||
        c->max_prompt < 1 || c->max_output < 1 || c->prefill_budget < 1 || c->check_requests < 0 || c->arrivals < 0) {
        if (log) fprintf(log, "serve-sim: invalid configuration (spec 0..7, running 1..4096, positive sizes)\n");
        r->error = MLA_ERR_INVALID_ARGUMENT;
        return 1;
    }
    const double t_start = now_s();
    if (sim_setup(&s) == 0) {
        if (log)
            fprintf(log, "serve-sim: backend %s, H=%d rank=%d rope=%d nope=%d v=%d, page %d, %s cache, pool %d pages, %d steps, seed %llu%s\n",
                    c->backend, s.H, s.R, s.P, c->nope_dim, s.Dv, s.ps, mla_dtype_name(s.cfg.kv_cache_dtype), c->num_pages, c->steps,
                    (unsigned long long)c->seed, s.graph ? ", decode and verify via graph replay" : "");
        for (int step = 0; step < c->steps && !s.failed; step++) {
            const int arrivals = sim_int(&s, 0, c->arrivals);
            for (int i = 0; i < arrivals; i++) {
                sim_req *q = new_request(&s);
                if (!q) {
                    sim_fail(&s, "host allocation", MLA_ERR_OUT_OF_MEMORY);
                    break;
                }
                s.waiting[s.num_waiting++] = q;
            }
            admit(&s);
            int pre_reqs = 0, pre_tok = 0, dec = 0, ver = 0, acc = 0;
            if (!s.failed) prefill_step(&s, &pre_reqs, &pre_tok);
            if (!s.failed) decode_step(&s, &dec, &ver, &acc);
            /* Finished requests give their pages back. */
            int done = 0;
            for (int i = 0; i < s.num_active;) {
                sim_req *q = s.active[i];
                if (q->state == RQ_RUNNING && q->generated >= q->output) {
                    release(&s, q);
                    free_req(q);
                    s.active[i] = s.active[--s.num_active];
                    r->finished++;
                    done++;
                } else {
                    i++;
                }
            }
            /* Allocator invariant: unreserved pages = free pages - pages still reserved. */
            int reserved = 0;
            for (int i = 0; i < s.num_active; i++) reserved += s.active[i]->reserved;
            if (s.unreserved != s.num_free - reserved) {
                if (log) fprintf(log, "serve-sim: allocator invariant broken at step %d\n", step);
                s.failed = 1;
            }
            r->steps++;
            if (log && c->log_every > 0 && (step % c->log_every == 0 || step == c->steps - 1))
                fprintf(log, "step %4d: prefill %2d req %4d tok | decode %3d | verify %3d (+%d drafts) | active %3d waiting %3d done %lld | pages free %4d/%d | checks %lld mismatches %lld\n",
                        step, pre_reqs, pre_tok, dec, ver, acc, s.num_active, s.num_waiting, (long long)r->finished, s.num_free,
                        c->num_pages, (long long)r->checks, (long long)r->mismatches);
        }
    }
    r->backend_seconds = s.t_backend;
    r->wall_seconds = now_s() - t_start;
    const int failed = s.failed || r->mismatches > 0 || r->error != MLA_OK;
    if (log) {
        const int64_t tokens = r->prefill_tokens + r->decode_tokens + r->verify_tokens + r->draft_extend_tokens;
        fprintf(log, "serve-sim: %lld steps, %lld requests admitted, %lld finished, %lld rejected, %lld waits; shared-prefix tokens %lld\n",
                (long long)r->steps, (long long)r->admitted, (long long)r->finished, (long long)r->rejected, (long long)r->waits,
                (long long)r->shared_prefix_tokens);
        fprintf(log, "serve-sim: tokens: prefill %lld, decode %lld, verify %lld (accepted drafts %lld), draft_extend %lld\n",
                (long long)r->prefill_tokens, (long long)r->decode_tokens, (long long)r->verify_tokens, (long long)r->accepted_drafts,
                (long long)r->draft_extend_tokens);
        fprintf(log, "serve-sim: throughput %.0f tokens/s in the backend (%.3f s), %.0f tokens/s wall with checks (%.3f s)\n",
                r->backend_seconds > 0 ? (double)tokens / r->backend_seconds : 0.0, r->backend_seconds,
                r->wall_seconds > 0 ? (double)tokens / r->wall_seconds : 0.0, r->wall_seconds);
        fprintf(log, "serve-sim: %lld checks, %lld mismatches: %s\n", (long long)r->checks, (long long)r->mismatches, failed ? "FAIL" : "PASS");
    }
    sim_free(&s);
    return failed ? 1 : 0;
}

#endif
