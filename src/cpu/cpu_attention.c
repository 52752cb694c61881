/* CPU reference attention: paged MLA decode and ragged prefill.
 *
 * Both run the same engine: a group of query rows that share one key sequence (decode: the
 * heads of one query token, since MLA has a single latent KV head; prefill: up to
 * PREFILL_ROWS query tokens of one head) walks the keys in blocks of KEY_BLOCK. Each key row is
 * dequantized to float once per block and reused by every row of the group. Softmax is the
 * online (running max) form, logits and outputs accumulate in float, the softmax denominator
 * in double. A key outside a row's window, or on a bad page, is never read into the sums, so
 * NaN in unused cache slots cannot leak into the output. */
#include "cpu_kernels.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define KEY_BLOCK 64
#define PREFILL_ROWS 16
#define DECODE_MAX_GROUP 16

/* Converts n elements starting at element `offset` of base into dst. */
static void load_row_float(float *dst, const void *base, mla_dtype dtype, int64_t offset, int n,
                           const float *fp8_table)
{
    switch (dtype) {
    case MLA_DTYPE_FP8_E4M3: {
        const uint8_t *src = (const uint8_t *)base + offset;
        for (int d = 0; d < n; d++) dst[d] = fp8_table[src[d]];
        break;
    }
    case MLA_DTYPE_BF16: {
        const uint16_t *src = (const uint16_t *)base + offset;
        for (int d = 0; d < n; d++) dst[d] = mla_bf16_to_float(src[d]);
        break;
    }
    case MLA_DTYPE_F32: memcpy(dst, (const float *)base + offset, (size_t)n * sizeof(float)); break;
    default:
        for (int d = 0; d < n; d++) dst[d] = mla_load_as_float(base, dtype, offset + d);
        break;
    }
}

static void build_fp8_table(float table[256])
{
    for (int v = 0; v < 256; v++) table[v] = mla_fp8_e4m3_to_float((uint8_t)v);
}

/* 4-wide float vectors (GCC/Clang vector extensions; 16 bytes = one SSE/NEON register, so
 * no ABI change): -O2 does not vectorize these loops by itself (its cost model allows no
 * scalar epilogue), and they are nearly all of the time. Unaligned access goes through
 * memcpy. */
typedef float v4f __attribute__((vector_size(16)));

static inline v4f load_v4f(const float *p)
{
    v4f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store_v4f(float *p, v4f v) { memcpy(p, &v, sizeof v); }

static float dot_float(const float *a, const float *b, int n)
{
    v4f s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
    int d = 0;
    for (; d + 16 <= n; d += 16) {
        s0 += load_v4f(a + d) * load_v4f(b + d);
        s1 += load_v4f(a + d + 4) * load_v4f(b + d + 4);
        s2 += load_v4f(a + d + 8) * load_v4f(b + d + 8);
        s3 += load_v4f(a + d + 12) * load_v4f(b + d + 12);
    }
    for (; d + 4 <= n; d += 4) s0 += load_v4f(a + d) * load_v4f(b + d);
    s0 = (s0 + s1) + (s2 + s3);
    float s = (s0[0] + s0[1]) + (s0[2] + s0[3]);
    for (; d < n; d++) s += a[d] * b[d];
    return s;
}

/* acc += w0 v0 + w1 v1 + w2 v2 + w3 v3: one load/store of acc per four keys. */
static void axpy4_float(float *acc, const float *const v[4], const float w[4], int n)
{
    int d = 0;
    for (; d + 4 <= n; d += 4) {
        v4f t = (w[0] * load_v4f(v[0] + d) + w[1] * load_v4f(v[1] + d)) +
                (w[2] * load_v4f(v[2] + d) + w[3] * load_v4f(v[3] + d));
        store_v4f(acc + d, load_v4f(acc + d) + t);
    }
    for (; d < n; d++) acc[d] += (w[0] * v[0][d] + w[1] * v[1][d]) + (w[2] * v[2][d] + w[3] * v[3][d]);
}

static void scale_float(float *x, float a, int n)
{
    int d = 0;
    for (; d + 4 <= n; d += 4) store_v4f(x + d, a * load_v4f(x + d));
    for (; d < n; d++) x[d] *= a;
}

/* Running softmax state of a group of query rows that share one key sequence. */
typedef struct attn_group {
    int rows, dqk, dv;
    float bmm1_scale;
    const float *q;  /* [rows, dqk], unscaled */
    const int *visible; /* [rows]: row r sees keys [0, visible[r]) */
    float *logits;   /* [rows, KEY_BLOCK] scratch */
    float *acc;      /* [rows, dv] */
    float *row_max;  /* [rows] */
    double *row_sum; /* [rows] */
} attn_group;

static void group_reset(attn_group *g)
{
    memset(g->acc, 0, (size_t)g->rows * (size_t)g->dv * sizeof(float));
    for (int r = 0; r < g->rows; r++) {
        g->row_max[r] = -INFINITY;
        g->row_sum[r] = 0.0;
    }
}

/* Folds keys [j0, j0 + n) into every row. keys: [n, dqk]; values: row jj at vals + jj*vstride;
 * key_ok[jj] = 0 for a key that must be ignored (bad page). Loops run key-outer / row-inner
 * and over column chunks, so a key row and the accumulators in use stay in L1 while every
 * row of the group consumes them. */
#define VALUE_CHUNK 128
static void group_add_block(attn_group *g, int j0, int n, const float *keys, const float *vals,
                            int vstride, const unsigned char *key_ok)
{
    int vis[DECODE_MAX_GROUP > PREFILL_ROWS ? DECODE_MAX_GROUP : PREFILL_ROWS];
    int any_row = 0, max_vis = 0;
    for (int r = 0; r < g->rows; r++) {
        int v = g->visible[r] - j0; /* keys [0, v) of this block are visible to row r */
        if (v < 0) v = 0;
        if (v > n) v = n;
        if (isnan(g->row_sum[r])) v = 0; /* already poisoned by NaN data */
        vis[r] = v;
        any_row |= v > 0;
        if (v > max_vis) max_vis = v;
    }
    if (!any_row) return;

    /* Logits: s[r][jj] = bmm1 * q_r . k_jj, -inf where masked. */
    for (int jj = 0; jj < max_vis; jj++) {
        const float *k = keys + (size_t)jj * g->dqk;
        for (int r = 0; r < g->rows; r++) {
            if (jj >= vis[r]) continue;
            float *s = g->logits + (size_t)r * KEY_BLOCK;
            s[jj] = key_ok[jj] ? g->bmm1_scale * dot_float(g->q + (size_t)r * g->dqk, k, g->dqk)
                               : -INFINITY;
        }
    }

    /* Online softmax update per row; logits become weights p = exp(s - max). */
    for (int r = 0; r < g->rows; r++) {
        if (vis[r] == 0) continue;
        float *s = g->logits + (size_t)r * KEY_BLOCK;
        float block_max = -INFINITY;
        int nan_seen = 0;
        for (int jj = 0; jj < vis[r]; jj++) {
            if (s[jj] > block_max) block_max = s[jj];
            nan_seen |= isnan(s[jj]);
        }
        if (nan_seen) {
            /* NaN in visible q/k data must reach the output, not vanish from the max. */
            g->row_sum[r] = NAN;
            vis[r] = 0;
            continue;
        }
        if (block_max == -INFINITY) { /* nothing usable in this block for this row */
            vis[r] = 0;
            continue;
        }
        float new_max = g->row_max[r] > block_max ? g->row_max[r] : block_max;
        if (g->row_max[r] != new_max) {
            /* exp(-inf) = 0 clears the (all-zero) accumulator of a fresh row. */
            float alpha = expf(g->row_max[r] - new_max);
            scale_float(g->acc + (size_t)r * g->dv, alpha, g->dv);
            g->row_sum[r] *= (double)alpha;
            g->row_max[r] = new_max;
        }
        double sum = 0.0;
        for (int jj = 0; jj < vis[r]; jj++) {
            s[jj] = expf(s[jj] - new_max); /* masked keys: exp(-inf) = 0 */
            sum += (double)s[jj];
        }
        g->row_sum[r] += sum;
    }

    /* acc_r += sum_jj p[r][jj] v_jj, column chunk by chunk, four keys per pass over the
     * accumulator. A key masked for a row (outside its window, bad page, p = 0) is replaced by
     * a zero row, so NaN in it cannot leak in through 0 * NaN. */
    static const float zero_row[VALUE_CHUNK];
    for (int d0 = 0; d0 < g->dv; d0 += VALUE_CHUNK) {
        int len = g->dv - d0 < VALUE_CHUNK ? g->dv - d0 : VALUE_CHUNK;
        for (int r = 0; r < g->rows; r++) {
            if (vis[r] == 0) continue;
            const float *p = g->logits + (size_t)r * KEY_BLOCK;
            float *acc = g->acc + (size_t)r * g->dv + d0;
            for (int jj = 0; jj < vis[r]; jj += 4) {
                const float *v[4];
                float w[4];
                int used = 0;
                for (int u = 0; u < 4; u++) {
                    int j = jj + u;
                    int live = j < vis[r] && key_ok[j] && p[j] != 0.0f;
                    v[u] = live ? vals + (size_t)j * vstride + d0 : zero_row;
                    w[u] = live ? p[j] : 0.0f;
                    used |= live;
                }
                if (used) axpy4_float(acc, v, w, len);
            }
        }
    }
}

/* Writes row r: bf16 out = acc / sum * bmm2_scale; lse = ln(sum) + max. A row that saw no key
 * gets zeros and -inf. */
static void group_store_row(const attn_group *g, int r, float bmm2_scale, uint16_t *out,
                            float *lse)
{
    double sum = g->row_sum[r];
    const float *acc = g->acc + (size_t)r * g->dv;
    if (isnan(sum)) {
        for (int d = 0; d < g->dv; d++) out[d] = 0x7fffu; /* the canonical bf16 NaN */
        if (lse) *lse = NAN;
        return;
    }
    if (!(sum > 0.0)) {
        memset(out, 0, (size_t)g->dv * sizeof(uint16_t));
        if (lse) *lse = -INFINITY;
        return;
    }
    double factor = (double)bmm2_scale / sum;
    for (int d = 0; d < g->dv; d++) out[d] = mla_float_to_bf16((float)((double)acc[d] * factor));
    if (lse) *lse = (float)(log(sum) + (double)g->row_max[r]);
}

/* One allocation holds all per-work-item scratch; returns NULL when out of memory. */
static void *alloc_group(attn_group *g, int rows, int dqk, int dv, float **q, int **visible,
                         float **keys, float **vals, int val_rows)
{
    size_t floats = (size_t)rows * dqk + (size_t)rows * KEY_BLOCK + (size_t)rows * dv + rows +
                    (size_t)KEY_BLOCK * dqk + (size_t)val_rows * dv;
    size_t bytes = floats * sizeof(float) + (size_t)rows * sizeof(double) +
                   (size_t)rows * sizeof(int) + 64;
    char *mem = malloc(bytes);
    if (!mem) return NULL;
    double *sums = (double *)mem; /* doubles first keeps them aligned */
    float *f = (float *)(sums + rows);
    g->rows = rows;
    g->dqk = dqk;
    g->dv = dv;
    g->row_sum = sums;
    *q = f; f += (size_t)rows * dqk;
    g->logits = f; f += (size_t)rows * KEY_BLOCK;
    g->acc = f; f += (size_t)rows * dv;
    g->row_max = f; f += rows;
    *keys = f; f += (size_t)KEY_BLOCK * dqk;
    *vals = f; f += (size_t)val_rows * dv;
    *visible = (int *)f;
    g->q = *q;
    g->visible = *visible;
    return mem;
}

/* ------------------------------------------------------------------------------------------
 * Decode
 * ---------------------------------------------------------------------------------------- */
typedef struct decode_ctx {
    const mla_decode_problem *p;
    int group;         /* heads per work item */
    int groups_per_token;
    float fp8_table[256];
    atomic_int failed; /* set when a work item ran out of memory */
} decode_ctx;

static void decode_item(void *vctx, int64_t item)
{
    decode_ctx *c = (decode_ctx *)vctx;
    const mla_decode_problem *p = c->p;
    const int dqk = p->kv_lora_rank + p->rope_dim, dv = p->kv_lora_rank;
    const int gi = (int)(item % c->groups_per_token);
    const int64_t token = item / c->groups_per_token; /* b * q_len + i */
    const int b = (int)(token / p->q_len), i = (int)(token % p->q_len);
    const int h0 = gi * c->group;
    const int rows = p->num_heads - h0 < c->group ? p->num_heads - h0 : c->group;

    attn_group g;
    float *q, *keys, *vals;
    int *visible;
    void *mem = alloc_group(&g, rows, dqk, dv, &q, &visible, &keys, &vals, 0);
    if (!mem) {
        atomic_store(&c->failed, 1);
        return;
    }
    g.bmm1_scale = p->bmm1_scale;

    /* Window of this query token, clamped to what the block table can address. */
    int64_t seq_len = p->seq_lens[b];
    int64_t addressable = (int64_t)p->max_pages_per_seq * p->page_size;
    if (seq_len > addressable) seq_len = addressable;
    int64_t vis = p->causal ? seq_len - p->q_len + i + 1 : seq_len;
    if (vis < 0) vis = 0;
    if (vis > seq_len) vis = seq_len;

    for (int r = 0; r < rows; r++) {
        int64_t qoff = (token * p->num_heads + h0 + r) * (int64_t)dqk;
        load_row_float(q + (size_t)r * dqk, p->q, p->q_dtype, qoff, dqk, c->fp8_table);
        visible[r] = (int)vis;
    }
    group_reset(&g);

    const int32_t *pages = p->block_table + (int64_t)b * p->max_pages_per_seq;
    unsigned char key_ok[KEY_BLOCK];
    for (int64_t j0 = 0; j0 < vis; j0 += KEY_BLOCK) {
        int n = vis - j0 < KEY_BLOCK ? (int)(vis - j0) : KEY_BLOCK;
        for (int jj = 0; jj < n; jj++) {
            int64_t j = j0 + jj;
            int32_t page = pages[j / p->page_size];
            key_ok[jj] = page >= 0 && page < p->num_pages;
            if (!key_ok[jj]) continue; /* bad page: skipped, never read */
            int64_t row = (int64_t)page * p->page_size + j % p->page_size;
            load_row_float(keys + (size_t)jj * dqk, p->kv_cache, p->kv_dtype, row * dqk, dqk,
                           c->fp8_table);
        }
        /* V is the first kv_lora_rank columns of the same rows. */
        group_add_block(&g, (int)j0, n, keys, keys, dqk, key_ok);
    }

    for (int r = 0; r < rows; r++) {
        int64_t orow = token * p->num_heads + h0 + r;
        group_store_row(&g, r, p->bmm2_scale, (uint16_t *)p->out + orow * dv,
                        p->lse ? p->lse + orow : NULL);
    }
    free(mem);
}

mla_status mla_cpu_run_decode(void *state, const mla_decode_problem *p)
{
    (void)state;
    if (p->batch <= 0 || p->q_len <= 0 || p->num_heads <= 0) return MLA_OK;
    decode_ctx *c = malloc(sizeof *c);
    if (!c) return mla_set_error(MLA_ERR_OUT_OF_MEMORY, "cpu decode: out of host memory");
    c->p = p;
    atomic_init(&c->failed, 0);
    build_fp8_table(c->fp8_table);
    /* Heads share the dequantized key rows, so group them, but keep enough work items for
     * every thread (batch 1, q_len 1 is the common latency case). */
    int64_t tokens = (int64_t)p->batch * p->q_len;
    int64_t want_items = 4 * (int64_t)mla_cpu_num_threads();
    int64_t group = (tokens * p->num_heads + want_items - 1) / want_items;
    if (group > DECODE_MAX_GROUP) group = DECODE_MAX_GROUP;
    if (group > p->num_heads) group = p->num_heads;
    if (group < 1) group = 1;
    c->group = (int)group;
    c->groups_per_token = (p->num_heads + c->group - 1) / c->group;
    mla_parallel_for(tokens * c->groups_per_token, decode_item, c);
    int failed = atomic_load(&c->failed);
    free(c);
    if (failed) return mla_set_error(MLA_ERR_OUT_OF_MEMORY, "cpu decode: out of host memory");
    return MLA_OK;
}

/* ------------------------------------------------------------------------------------------
 * Prefill
 * ---------------------------------------------------------------------------------------- */
typedef struct prefill_block {
    int b, q_start, rows; /* rows [q_start, q_start + rows) of request b */
} prefill_block;

typedef struct prefill_ctx {
    const mla_prefill_problem *p;
    const prefill_block *blocks;
    float fp8_table[256];
    atomic_int failed;
} prefill_ctx;

static void prefill_item(void *vctx, int64_t item)
{
    prefill_ctx *c = (prefill_ctx *)vctx;
    const mla_prefill_problem *p = c->p;
    const int H = p->num_heads, dqk = p->qk_dim, dv = p->v_dim;
    const prefill_block *blk = &c->blocks[item / H];
    const int h = (int)(item % H);
    const int64_t q0 = p->cu_seqlens_q[blk->b], kv0 = p->cu_seqlens_kv[blk->b];
    const int64_t lq = p->cu_seqlens_q[blk->b + 1] - q0;
    int64_t lkv = p->cu_seqlens_kv[blk->b + 1] - kv0;
    if (lkv > p->total_kv - kv0) lkv = p->total_kv - kv0; /* defensive: stay inside k/v */
    if (lkv < 0) lkv = 0;

    attn_group g;
    float *q, *keys, *vals;
    int *visible;
    void *mem = alloc_group(&g, blk->rows, dqk, dv, &q, &visible, &keys, &vals, KEY_BLOCK);
    if (!mem) {
        atomic_store(&c->failed, 1);
        return;
    }
    g.bmm1_scale = p->bmm1_scale;

    int64_t max_vis = 0;
    for (int r = 0; r < blk->rows; r++) {
        int64_t i = blk->q_start + r;
        int64_t vis = p->causal ? lkv - lq + i + 1 : lkv;
        if (vis < 0) vis = 0;
        if (vis > lkv) vis = lkv;
        visible[r] = (int)vis;
        if (vis > max_vis) max_vis = vis;
        load_row_float(q + (size_t)r * dqk, p->q, p->dtype, ((q0 + i) * H + h) * (int64_t)dqk,
                       dqk, c->fp8_table);
    }
    group_reset(&g);

    unsigned char key_ok[KEY_BLOCK];
    memset(key_ok, 1, sizeof key_ok);
    for (int64_t j0 = 0; j0 < max_vis; j0 += KEY_BLOCK) {
        int n = max_vis - j0 < KEY_BLOCK ? (int)(max_vis - j0) : KEY_BLOCK;
        for (int jj = 0; jj < n; jj++) {
            int64_t t = (kv0 + j0 + jj) * H + h;
            load_row_float(keys + (size_t)jj * dqk, p->k, p->dtype, t * dqk, dqk, c->fp8_table);
            load_row_float(vals + (size_t)jj * dv, p->v, p->dtype, t * dv, dv, c->fp8_table);
        }
        group_add_block(&g, (int)j0, n, keys, vals, dv, key_ok);
    }

    for (int r = 0; r < blk->rows; r++) {
        int64_t orow = (q0 + blk->q_start + r) * H + h;
        group_store_row(&g, r, p->bmm2_scale, (uint16_t *)p->out + orow * dv,
                        p->lse ? p->lse + orow : NULL);
    }
    free(mem);
}

mla_status mla_cpu_run_prefill(void *state, const mla_prefill_problem *p)
{
    (void)state;
    if (p->batch <= 0 || p->num_heads <= 0 || p->total_q <= 0) return MLA_OK;
    /* Split every request's query rows into blocks of PREFILL_ROWS; work item = (block, head). */
    int64_t num_blocks = 0;
    for (int b = 0; b < p->batch; b++) {
        int64_t lq = (int64_t)p->cu_seqlens_q[b + 1] - p->cu_seqlens_q[b];
        if (lq > 0) num_blocks += (lq + PREFILL_ROWS - 1) / PREFILL_ROWS;
    }
    if (num_blocks == 0) return MLA_OK;
    prefill_block *blocks = malloc((size_t)num_blocks * sizeof *blocks);
    prefill_ctx *c = malloc(sizeof *c);
    if (!blocks || !c) {
        free(blocks);
        free(c);
        return mla_set_error(MLA_ERR_OUT_OF_MEMORY, "cpu prefill: out of host memory");
    }
    int64_t k = 0;
    for (int b = 0; b < p->batch; b++) {
        int64_t q0 = p->cu_seqlens_q[b];
        int64_t lq = (int64_t)p->cu_seqlens_q[b + 1] - q0;
        if (q0 + lq > p->total_q) lq = p->total_q - q0; /* defensive: stay inside q/out */
        for (int64_t s = 0; s < lq; s += PREFILL_ROWS) {
            blocks[k].b = b;
            blocks[k].q_start = (int)s;
            blocks[k].rows = lq - s < PREFILL_ROWS ? (int)(lq - s) : PREFILL_ROWS;
            k++;
        }
    }
    c->p = p;
    c->blocks = blocks;
    atomic_init(&c->failed, 0);
    build_fp8_table(c->fp8_table);
    mla_parallel_for(k * p->num_heads, prefill_item, c);
    int failed = atomic_load(&c->failed);
    free(c);
    free(blocks);
    if (failed) return mla_set_error(MLA_ERR_OUT_OF_MEMORY, "cpu prefill: out of host memory");
    return MLA_OK;
}
