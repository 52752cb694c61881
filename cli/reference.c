/* References for `mla check`: the CPU backend on host copies of the inputs (split into small
 * calls so progress can be shown), and an independent double-precision computation that uses
 * no library kernel (for checking the CPU backend itself). */
#include "cli.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PREFILL_CHUNK_ROWS 256 /* query rows per reference call */

static mla_tensor host_tensor(const void *data, mla_dtype dtype, int ndim, int64_t d0,
                              int64_t d1, int64_t d2, int64_t d3)
{
    const int64_t shape[4] = {d0, d1, d2, d3};
    mla_device cpu = {MLA_DEVICE_CPU, 0};
    return mla_tensor_contiguous((void *)data, dtype, cpu, ndim, shape);
}

/* ---- the CPU backend as reference ---- */

typedef struct cpu_decode_ctx {
    mla_backend *cpu;
    const cli_decode_problem *p;
    const uint8_t *cache;
    uint16_t *out;
    float *lse;
    mla_status status;
} cpu_decode_ctx;

/* Request b alone: batch-1 views into the full problem. */
static int cpu_decode_request(void *arg, int b)
{
    cpu_decode_ctx *c = arg;
    const cli_decode_problem *p = c->p;
    size_t rows = (size_t)p->q_len * p->heads;
    size_t q_elem = mla_dtype_size(p->q_dtype);
    mla_decode_args a;
    memset(&a, 0, sizeof a);
    a.q = host_tensor((const uint8_t *)p->q + (size_t)b * rows * CLI_DECODE_QK_DIM * q_elem,
                      p->q_dtype, 4, 1, p->q_len, p->heads, CLI_DECODE_QK_DIM);
    a.kv_cache = host_tensor(c->cache, p->kv_dtype, 3, p->num_pages, p->page_size,
                             CLI_DECODE_QK_DIM, 0);
    a.block_table = host_tensor(p->block_table + (size_t)b * p->max_pages_per_seq,
                                MLA_DTYPE_I32, 2, 1, p->max_pages_per_seq, 0, 0);
    a.seq_lens = host_tensor(p->seq_lens + b, MLA_DTYPE_I32, 1, 1, 0, 0, 0);
    a.out = host_tensor(c->out + (size_t)b * rows * CLI_KV_LORA_RANK, MLA_DTYPE_BF16, 4, 1,
                        p->q_len, p->heads, CLI_KV_LORA_RANK);
    a.lse = host_tensor(c->lse + (size_t)b * rows, MLA_DTYPE_F32, 3, 1, p->q_len, p->heads, 0);
    a.no_causal_mask = !p->causal;
    a.scales = &p->scales;
    c->status = mla_decode(c->cpu, &a);
    return c->status != MLA_OK;
}

mla_status cli_reference_decode_cpu(mla_backend *cpu, const cli_decode_problem *p,
                                    const uint8_t *cache, uint16_t *out, float *lse)
{
    memset(out, 0xff, 2 * p->out_elems); /* the reference is poisoned too */
    memset(lse, 0xff, sizeof(float) * p->lse_elems);
    cpu_decode_ctx c = {.cpu = cpu, .p = p, .cache = cache, .out = out, .lse = lse};
    /* One thread: the CPU backend parallelizes each call itself. */
    cli_run_tasks("decode: computing reference on cpu", p->batch, 1, cpu_decode_request, &c);
    return c.status;
}

typedef struct prefill_chunk {
    int b, row0, rows;
} prefill_chunk;

/* Splits each request into chunks of query rows. A chunk [r0, r0 + n) of a request (lq, lkv)
 * is the request (n, lkv') with lkv' = lkv - lq + r0 + n keys when causal: bottom-right
 * alignment then gives every row the same keys as in the whole request. */
static prefill_chunk *prefill_chunks(const cli_prefill_problem *p, int *count)
{
    int n = 0;
    for (int b = 0; b < p->batch; b++) {
        int lq = p->cu_seqlens_q[b + 1] - p->cu_seqlens_q[b];
        n += (lq + PREFILL_CHUNK_ROWS - 1) / PREFILL_CHUNK_ROWS;
    }
    prefill_chunk *chunks = malloc(sizeof *chunks * (n ? n : 1));
    if (!chunks) return NULL;
    n = 0;
    for (int b = 0; b < p->batch; b++) {
        int lq = p->cu_seqlens_q[b + 1] - p->cu_seqlens_q[b];
        for (int r = 0; r < lq; r += PREFILL_CHUNK_ROWS)
            chunks[n++] = (prefill_chunk){b, r, lq - r < PREFILL_CHUNK_ROWS ? lq - r
                                                                          : PREFILL_CHUNK_ROWS};
    }
    *count = n;
    return chunks;
}

typedef struct cpu_prefill_ctx {
    mla_backend *cpu;
    const cli_prefill_problem *p;
    const prefill_chunk *chunks;
    uint16_t *out;
    float *lse;
    mla_status status;
} cpu_prefill_ctx;

static int cpu_prefill_chunk(void *arg, int i)
{
    cpu_prefill_ctx *c = arg;
    const cli_prefill_problem *p = c->p;
    const prefill_chunk *ch = &c->chunks[i];
    int lq = p->cu_seqlens_q[ch->b + 1] - p->cu_seqlens_q[ch->b];
    int lkv = p->cu_seqlens_kv[ch->b + 1] - p->cu_seqlens_kv[ch->b];
    int64_t keys = cli_visible_keys(lq, lkv, ch->row0 + ch->rows - 1, p->causal);
    size_t row0 = (size_t)p->cu_seqlens_q[ch->b] + ch->row0;
    size_t key0 = (size_t)p->cu_seqlens_kv[ch->b];
    size_t elem = mla_dtype_size(p->dtype);
    size_t H = (size_t)p->heads;
    uint16_t *out = c->out + row0 * H * CLI_V_DIM;
    float *lse = c->lse + row0 * H;
    if (keys == 0) { /* no row of the chunk sees a key: zero output, -inf LSE */
        memset(out, 0, 2 * (size_t)ch->rows * H * CLI_V_DIM);
        for (size_t j = 0; j < (size_t)ch->rows * H; j++) lse[j] = -INFINITY;
        return 0;
    }
    int32_t cu_q[2] = {0, ch->rows}, cu_kv[2] = {0, (int32_t)keys};
    mla_prefill_args a;
    memset(&a, 0, sizeof a);
    a.q = host_tensor((const uint8_t *)p->q + row0 * H * CLI_PREFILL_QK_DIM * elem, p->dtype, 3,
                      ch->rows, p->heads, CLI_PREFILL_QK_DIM, 0);
    a.k = host_tensor((const uint8_t *)p->k + key0 * H * CLI_PREFILL_QK_DIM * elem, p->dtype, 3,
                      keys, p->heads, CLI_PREFILL_QK_DIM, 0);
    a.v = host_tensor((const uint8_t *)p->v + key0 * H * CLI_V_DIM * elem, p->dtype, 3, keys,
                      p->heads, CLI_V_DIM, 0);
    a.cu_seqlens_q = host_tensor(cu_q, MLA_DTYPE_I32, 1, 2, 0, 0, 0);
    a.cu_seqlens_kv = host_tensor(cu_kv, MLA_DTYPE_I32, 1, 2, 0, 0, 0);
    a.causal = p->causal;
    a.out = host_tensor(out, MLA_DTYPE_BF16, 3, ch->rows, p->heads, CLI_V_DIM, 0);
    a.lse = host_tensor(lse, MLA_DTYPE_F32, 2, ch->rows, p->heads, 0, 0);
    a.scales = &p->scales;
    c->status = mla_prefill(c->cpu, &a);
    return c->status != MLA_OK;
}

mla_status cli_reference_prefill_cpu(mla_backend *cpu, const cli_prefill_problem *p,
                                     uint16_t *out, float *lse)
{
    memset(out, 0xff, 2 * p->out_elems);
    memset(lse, 0xff, sizeof(float) * p->lse_elems);
    int n = 0;
    prefill_chunk *chunks = prefill_chunks(p, &n);
    if (!chunks) return MLA_ERR_OUT_OF_MEMORY;
    cpu_prefill_ctx c = {.cpu = cpu, .p = p, .chunks = chunks, .out = out, .lse = lse};
    cli_run_tasks("prefill: computing reference on cpu", n, 1, cpu_prefill_chunk, &c);
    free(chunks);
    return c.status;
}

/* ---- independent double-precision reference ---- */

static double load_value(const void *base, size_t index, mla_dtype dtype)
{
    if (dtype == MLA_DTYPE_FP8_E4M3) return cli_fp8_e4m3_to_double(((const uint8_t *)base)[index]);
    return cli_bf16_to_double(((const uint16_t *)base)[index]);
}

/* Softmax of scores[0..n) in place into probabilities; returns the LSE (-inf when n == 0). */
static double softmax_in_place(double *scores, int64_t n)
{
    if (n == 0) return -INFINITY;
    double max = scores[0];
    for (int64_t j = 1; j < n; j++)
        if (scores[j] > max) max = scores[j];
    double sum = 0;
    for (int64_t j = 0; j < n; j++) {
        scores[j] = exp(scores[j] - max);
        sum += scores[j];
    }
    for (int64_t j = 0; j < n; j++) scores[j] /= sum;
    return max + log(sum);
}

typedef struct naive_decode_ctx {
    const cli_decode_problem *p;
    const uint8_t *cache;
    double *out, *lse;
} naive_decode_ctx;

static int naive_decode_request(void *arg, int b)
{
    naive_decode_ctx *c = arg;
    const cli_decode_problem *p = c->p;
    const int64_t L = p->seq_lens[b], R = (int64_t)p->q_len * p->heads;
    const double q_scale = p->scales.q_scale, k_scale = p->scales.k_scale;
    const double v_scale = k_scale * p->scales.o_scale; /* V shares the cache rows */
    double *qd = malloc(sizeof(double) * R * CLI_DECODE_QK_DIM);
    double *scores = malloc(sizeof(double) * R * (L ? L : 1));
    double *krow = malloc(sizeof(double) * CLI_DECODE_QK_DIM);
    if (!qd || !scores || !krow) {
        free(qd);
        free(scores);
        free(krow);
        return -1;
    }
    for (int64_t r = 0; r < R; r++)
        for (int d = 0; d < CLI_DECODE_QK_DIM; d++)
            qd[r * CLI_DECODE_QK_DIM + d] =
                q_scale * load_value(p->q, ((size_t)b * R + r) * CLI_DECODE_QK_DIM + d, p->q_dtype);
    const int32_t *pages = p->block_table + (size_t)b * p->max_pages_per_seq;
    /* Pass 1: scores of every visible key (row r = token i * H + head). */
    for (int64_t j = 0; j < L; j++) {
        size_t slot = (size_t)pages[j / p->page_size] * p->page_size + j % p->page_size;
        for (int d = 0; d < CLI_DECODE_QK_DIM; d++)
            krow[d] = k_scale * load_value(c->cache, slot * CLI_DECODE_QK_DIM + d, p->kv_dtype);
        for (int64_t r = 0; r < R; r++) {
            double dot = 0;
            const double *qr = qd + r * CLI_DECODE_QK_DIM;
            for (int d = 0; d < CLI_DECODE_QK_DIM; d++) dot += qr[d] * krow[d];
            scores[r * L + j] = p->scales.softmax_scale * dot;
        }
    }
    double *out = c->out + (size_t)b * R * CLI_KV_LORA_RANK;
    int64_t *visible = malloc(sizeof(int64_t) * R);
    if (!visible) {
        free(qd);
        free(scores);
        free(krow);
        return -1;
    }
    for (int64_t r = 0; r < R; r++) {
        visible[r] = cli_visible_keys(p->q_len, L, r / p->heads, p->causal);
        c->lse[(size_t)b * R + r] = softmax_in_place(scores + r * L, visible[r]);
    }
    /* Pass 2: probabilities times V (the first 512 columns of each cache row). */
    memset(out, 0, sizeof(double) * R * CLI_KV_LORA_RANK);
    for (int64_t j = 0; j < L; j++) {
        size_t slot = (size_t)pages[j / p->page_size] * p->page_size + j % p->page_size;
        for (int d = 0; d < CLI_KV_LORA_RANK; d++)
            krow[d] = v_scale * load_value(c->cache, slot * CLI_DECODE_QK_DIM + d, p->kv_dtype);
        for (int64_t r = 0; r < R; r++) {
            if (j >= visible[r]) continue;
            double w = scores[r * L + j];
            for (int d = 0; d < CLI_KV_LORA_RANK; d++) out[r * CLI_KV_LORA_RANK + d] += w * krow[d];
        }
    }
    free(visible);
    free(qd);
    free(scores);
    free(krow);
    return 0;
}

int cli_reference_decode_naive(const cli_decode_problem *p, const uint8_t *cache, double *out,
                               double *lse)
{
    naive_decode_ctx c = {.p = p, .cache = cache, .out = out, .lse = lse};
    return cli_run_tasks("decode: computing double-precision reference", p->batch,
                         cli_num_threads(), naive_decode_request, &c);
}

typedef struct naive_prefill_ctx {
    const cli_prefill_problem *p;
    const prefill_chunk *chunks;
    double *out, *lse;
} naive_prefill_ctx;

static int naive_prefill_chunk(void *arg, int i)
{
    naive_prefill_ctx *c = arg;
    const cli_prefill_problem *p = c->p;
    const prefill_chunk *ch = &c->chunks[i];
    const int H = p->heads;
    int lq = p->cu_seqlens_q[ch->b + 1] - p->cu_seqlens_q[ch->b];
    int lkv = p->cu_seqlens_kv[ch->b + 1] - p->cu_seqlens_kv[ch->b];
    size_t key0 = (size_t)p->cu_seqlens_kv[ch->b];
    const double bmm1 = (double)p->scales.softmax_scale * p->scales.q_scale * p->scales.k_scale;
    const double bmm2 = (double)p->scales.v_scale * p->scales.o_scale;
    double *scores = malloc(sizeof(double) * (lkv ? lkv : 1));
    double *qrow = malloc(sizeof(double) * CLI_PREFILL_QK_DIM);
    if (!scores || !qrow) {
        free(scores);
        free(qrow);
        return -1;
    }
    for (int r = ch->row0; r < ch->row0 + ch->rows; r++) {
        size_t row = (size_t)p->cu_seqlens_q[ch->b] + r;
        int64_t n = cli_visible_keys(lq, lkv, r, p->causal);
        for (int h = 0; h < H; h++) {
            for (int d = 0; d < CLI_PREFILL_QK_DIM; d++)
                qrow[d] = load_value(p->q, (row * H + h) * CLI_PREFILL_QK_DIM + d, p->dtype);
            for (int64_t j = 0; j < n; j++) {
                size_t k_base = ((key0 + j) * H + h) * CLI_PREFILL_QK_DIM;
                double dot = 0;
                for (int d = 0; d < CLI_PREFILL_QK_DIM; d++)
                    dot += qrow[d] * load_value(p->k, k_base + d, p->dtype);
                scores[j] = bmm1 * dot;
            }
            c->lse[row * H + h] = softmax_in_place(scores, n);
            double *o = c->out + (row * H + h) * CLI_V_DIM;
            for (int d = 0; d < CLI_V_DIM; d++) o[d] = 0;
            for (int64_t j = 0; j < n; j++) {
                size_t v_base = ((key0 + j) * H + h) * CLI_V_DIM;
                for (int d = 0; d < CLI_V_DIM; d++)
                    o[d] += scores[j] * bmm2 * load_value(p->v, v_base + d, p->dtype);
            }
        }
    }
    free(scores);
    free(qrow);
    return 0;
}

int cli_reference_prefill_naive(const cli_prefill_problem *p, double *out, double *lse)
{
    int n = 0;
    prefill_chunk *chunks = prefill_chunks(p, &n);
    if (!chunks) return -1;
    naive_prefill_ctx c = {.p = p, .chunks = chunks, .out = out, .lse = lse};
    int rc = cli_run_tasks("prefill: computing double-precision reference", n,
                           cli_num_threads(), naive_prefill_chunk, &c);
    free(chunks);
    return rc;
}
