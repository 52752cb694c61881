/* CPU reference kernels for the small operations: merge_state, kv_cache_write, quantize_fp8,
 * kv_pack. */
#include "cpu_kernels.h"

#include <math.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------
 * merge_state: (o_a, lse_a) + (o_b, lse_b) over disjoint key sets.
 * ---------------------------------------------------------------------------------------- */
typedef struct merge_ctx {
    const mla_merge_problem *p;
    int64_t rows;
    int reverse; /* serial rows in reverse order (output wider than an aliased input) */
} merge_ctx;

static void merge_row(const mla_merge_problem *p, int64_t row, int reverse)
{
    const int dim = p->dim;
    const int64_t base = row * dim;
    float la = p->lse_a[row], lb = p->lse_b[row];
    float wa, wb, lse;
    if (la == -INFINITY && lb == -INFINITY) {
        wa = wb = 0.0f;
        lse = -INFINITY;
    } else if (la == -INFINITY) {
        wa = 0.0f; /* the empty side contributes nothing, even if its o holds garbage */
        wb = 1.0f;
        lse = lb;
    } else if (lb == -INFINITY) {
        wa = 1.0f;
        wb = 0.0f;
        lse = la;
    } else {
        /* NaN in either lse propagates through exp into the weights and the lse. */
        double m = la > lb ? la : lb;
        double ea = exp((double)la - m), eb = exp((double)lb - m);
        double sum = ea + eb;
        wa = (float)(ea / sum);
        wb = (float)(eb / sum);
        lse = (float)(m + log(sum));
    }
    /* Element d is read before it is written, so same-width aliasing is safe; an output wider
     * than an aliased input is walked backwards (see mla_cpu_run_merge_state). */
    for (int k = 0; k < dim; k++) {
        int d = reverse ? dim - 1 - k : k;
        float xa = wa != 0.0f ? mla_load_as_float(p->o_a, p->in_dtype_a, base + d) : 0.0f;
        float xb = wb != 0.0f ? mla_load_as_float(p->o_b, p->in_dtype_b, base + d) : 0.0f;
        float y = wa * xa + wb * xb;
        mla_cpu_store_float(p->o, p->out_dtype, base + d, y);
    }
    if (p->lse) p->lse[row] = lse;
}

static void merge_item(void *vctx, int64_t row)
{
    merge_ctx *c = (merge_ctx *)vctx;
    merge_row(c->p, c->reverse ? c->rows - 1 - row : row, c->reverse);
}

static int aliases_with_other_width(const void *out, mla_dtype out_dtype, const void *in,
                                    mla_dtype in_dtype)
{
    return out == in && mla_dtype_size(out_dtype) != mla_dtype_size(in_dtype);
}

mla_status mla_cpu_run_merge_state(void *state, const mla_merge_problem *p)
{
    (void)state;
    merge_ctx c = {.p = p, .rows = (int64_t)p->tokens * p->num_heads};
    if (c.rows <= 0) return MLA_OK;
    /* Same-width aliasing is element-wise in place and safe in parallel. An output aliasing an
     * input of another width overlaps other elements and rows: run serially, narrowing
     * outputs forward and widening ones backward (rows and elements), so every input element
     * is read before the output overwrites it. */
    int odd_a = aliases_with_other_width(p->o, p->out_dtype, p->o_a, p->in_dtype_a);
    int odd_b = aliases_with_other_width(p->o, p->out_dtype, p->o_b, p->in_dtype_b);
    if (odd_a || odd_b) {
        mla_dtype in = odd_a ? p->in_dtype_a : p->in_dtype_b;
        c.reverse = mla_dtype_size(p->out_dtype) > mla_dtype_size(in);
        for (int64_t i = 0; i < c.rows; i++) merge_item(&c, i);
        return MLA_OK;
    }
    mla_parallel_for(c.rows, merge_item, &c);
    return MLA_OK;
}

/* ------------------------------------------------------------------------------------------
 * kv_cache_write: row = c_kv || k_pe, times inv_k_scale, converted to the cache dtype.
 * Serial and in order, so a slot written twice deterministically keeps the last token.
 * ---------------------------------------------------------------------------------------- */
mla_status mla_cpu_run_kv_cache_write(void *state, const mla_cache_write_problem *p)
{
    (void)state;
    const int R = p->kv_lora_rank, P = p->rope_dim, D = R + P;
    const int64_t capacity = (int64_t)p->num_pages * p->page_size;
    for (int n = 0; n < p->n; n++) {
        int64_t slot = p->slot_dtype == MLA_DTYPE_I64 ? ((const int64_t *)p->slots)[n]
                                                       : ((const int32_t *)p->slots)[n];
        if (slot < 0 || slot >= capacity) continue; /* < 0: padding; beyond: never written */
        const int64_t dst = slot * D; /* slot = page * page_size + offset: rows are contiguous */
        for (int d = 0; d < R; d++) {
            float x = mla_load_as_float(p->c_kv, p->in_dtype, (int64_t)n * R + d);
            mla_cpu_store_float(p->kv_cache, p->kv_dtype, dst + d, x * p->inv_k_scale);
        }
        for (int d = 0; d < P; d++) {
            float x = mla_load_as_float(p->k_pe, p->in_dtype, (int64_t)n * P + d);
            mla_cpu_store_float(p->kv_cache, p->kv_dtype, dst + R + d, x * p->inv_k_scale);
        }
    }
    return MLA_OK;
}

/* ------------------------------------------------------------------------------------------
 * quantize_fp8: out = e4m3(x * inv_scale), in chunks over the threads.
 * ---------------------------------------------------------------------------------------- */
#define QUANT_CHUNK 65536

static void quantize_chunk(void *vctx, int64_t chunk)
{
    const mla_quantize_problem *p = (const mla_quantize_problem *)vctx;
    int64_t begin = chunk * QUANT_CHUNK;
    int64_t end = begin + QUANT_CHUNK < p->n ? begin + QUANT_CHUNK : p->n;
    for (int64_t i = begin; i < end; i++)
        p->output[i] = mla_float_to_fp8_e4m3(mla_load_as_float(p->input, p->in_dtype, i) *
                                             p->inv_scale);
}

mla_status mla_cpu_run_quantize_fp8(void *state, const mla_quantize_problem *p)
{
    (void)state;
    if (p->n <= 0) return MLA_OK;
    mla_parallel_for((p->n + QUANT_CHUNK - 1) / QUANT_CHUNK, quantize_chunk, (void *)p);
    return MLA_OK;
}

/* ------------------------------------------------------------------------------------------
 * kv_pack: k_out[n, h] = k_nope[n, h] || k_pe[n] (broadcast over heads), v_out[n, h] = v[n, h],
 * bf16 inputs; bf16 outputs copy the bits, fp8 outputs are e4m3(x * inv_scale).
 * ---------------------------------------------------------------------------------------- */
static void pack_values(void *dst, mla_dtype out_dtype, int64_t dst_off, const uint16_t *src,
                        int n, float inv_scale)
{
    if (out_dtype == MLA_DTYPE_BF16) {
        memcpy((uint16_t *)dst + dst_off, src, (size_t)n * sizeof(uint16_t));
        return;
    }
    for (int d = 0; d < n; d++)
        mla_cpu_store_float(dst, out_dtype, dst_off + d, mla_bf16_to_float(src[d]) * inv_scale);
}

static void kv_pack_token(void *vctx, int64_t n)
{
    const mla_kv_pack_problem *p = (const mla_kv_pack_problem *)vctx;
    const int H = p->num_heads, dk = p->nope_dim + p->rope_dim;
    const uint16_t *k_nope = (const uint16_t *)p->k_nope;
    const uint16_t *k_pe = (const uint16_t *)p->k_pe + n * p->k_pe_stride_n;
    const uint16_t *v = (const uint16_t *)p->v;
    for (int h = 0; h < H; h++) {
        int64_t krow = (n * H + h) * (int64_t)dk;
        pack_values(p->k_out, p->out_dtype, krow,
                    k_nope + n * p->k_nope_stride_n + h * p->k_nope_stride_h, p->nope_dim,
                    p->inv_k_scale);
        pack_values(p->k_out, p->out_dtype, krow + p->nope_dim, k_pe, p->rope_dim,
                    p->inv_k_scale);
        pack_values(p->v_out, p->out_dtype, (n * H + h) * (int64_t)p->v_dim,
                    v + n * p->v_stride_n + h * p->v_stride_h, p->v_dim, p->inv_v_scale);
    }
}

mla_status mla_cpu_run_kv_pack(void *state, const mla_kv_pack_problem *p)
{
    (void)state;
    if (p->n <= 0 || p->num_heads <= 0) return MLA_OK;
    mla_parallel_for(p->n, kv_pack_token, (void *)p);
    return MLA_OK;
}
