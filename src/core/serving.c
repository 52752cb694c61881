/* Forward modes of the serving layer over the decode kernels: decode, target_verify (uniform
 * q_len) and draft_extend (ragged, run front-padded). Each one writes the new tokens into the
 * cache, quantizes q when asked or needed, and attends through mla_decode, so every check of
 * the base backend applies. Extend (prefill with a chunked prefix) is in chunked_prefix.c. */
#include "serving_internal.h"

#include <stdlib.h>
#include <string.h>

static mla_status check_built(const mla_batch_metadata *md, const char *op, mla_forward_mode mode)
{
    if (!md->built)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                             "%s: the metadata has not been built (or its last build failed); "
                             "call mla_metadata_build first",
                             op);
    if (md->mode != mode)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                             "%s: the metadata was built for mode %s, this call is %s", op,
                             mla_forward_mode_name(md->mode), mla_forward_mode_name(mode));
    return MLA_OK;
}

mla_status mla_serving_check_call(mla_backend *be, mla_batch_metadata *md,
                                  const mla_forward_args *a, const char *op)
{
    if (!be || !md || !a)
        return mla_set_error(MLA_ERR_NULL_POINTER, "%s: %s is NULL", op,
                             !be ? "backend" : !md ? "metadata" : "args");
    if (md->backend != be)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                             "%s: the metadata was created for another backend", op);
    /* Here, not only in the attention call: a batch without new tokens never reaches it, and
     * a bad scale is the caller's error whatever the batch holds. */
    if (a->scales) MLA_TRY(mla_check_scales(op, a->scales));
    return MLA_OK;
}

static mla_status check_common(mla_backend *be, mla_batch_metadata *md, const mla_forward_args *a,
                               const char *op)
{
    MLA_TRY(mla_serving_check_call(be, md, a, op));
    if (a->quantize_q != 0 && a->quantize_q != 1)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT, "%s: quantize_q = %d must be 0 or 1", op,
                             a->quantize_q);
    return MLA_OK;
}

mla_status mla_serving_check_writes(const mla_batch_metadata *md, const mla_forward_args *a,
                                    const char *op, int64_t tokens, int cache_optional)
{
    const mla_config *c = &md->cfg;
    const mla_device *dev = &c->device;
    if ((a->c_kv.data == NULL) != (a->k_pe.data == NULL))
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                             "%s: c_kv and k_pe must be given together (one is absent)", op);
    if (a->c_kv.data) {
        const uint32_t in_dt = MLA_DT(MLA_DTYPE_BF16) | MLA_DT(MLA_DTYPE_F32);
        MLA_TRY(mla_check_tensor(&a->c_kv, op, "c_kv", dev, in_dt, 2,
                                 (int64_t[]){tokens, c->kv_lora_rank}, 0));
        MLA_TRY(mla_check_tensor(&a->k_pe, op, "k_pe", dev, MLA_DT(a->c_kv.dtype), 2,
                                 (int64_t[]){tokens, c->qk_rope_head_dim}, 0));
    }
    MLA_TRY(mla_check_tensor(&a->kv_cache, op, "kv_cache", dev, MLA_DT(c->kv_cache_dtype), 3,
                             (int64_t[]){-1, c->page_size, c->kv_lora_rank + c->qk_rope_head_dim},
                             cache_optional ? MLA_CHECK_OPTIONAL : 0));
    /* The new tokens are written before attention reads the pages, so a cache too small for
     * the batch's pages must be refused here, not by the attention call after the write. */
    if (a->kv_cache.data && md->max_slot >= a->kv_cache.shape[0] * c->page_size)
        return mla_set_error(MLA_ERR_OUT_OF_RANGE,
                             "%s: kv_cache has %lld pages but the batch refers to slot %lld "
                             "(page %lld); nothing was written",
                             op, (long long)a->kv_cache.shape[0], (long long)md->max_slot,
                             (long long)(md->max_slot / c->page_size));
    const mla_tensor *outs[] = {&a->out, &a->lse, &a->kv_cache};
    const char *const out_names[] = {"out", "lse", "kv_cache"};
    const mla_tensor *ins[] = {&a->q, &a->k, &a->v, &a->c_kv, &a->k_pe, &a->prefix_k, &a->prefix_v};
    const char *const in_names[] = {"q", "k", "v", "c_kv", "k_pe", "prefix_k", "prefix_v"};
    return mla_check_outputs_disjoint(op, outs, out_names, 3, ins, in_names, 7);
}

/* q, out, lse and the optional c_kv/k_pe pair of a decode-mode call with `tokens` rows. */
static mla_status check_decode_tensors(const mla_batch_metadata *md, const mla_forward_args *a,
                                       const char *op, int64_t tokens)
{
    const mla_config *c = &md->cfg;
    const mla_device *dev = &c->device;
    const int H = c->num_heads, R = c->kv_lora_rank, P = c->qk_rope_head_dim;
    MLA_TRY(mla_check_tensor(&a->q, op, "q", dev, md->caps.query_dtypes | MLA_DT(MLA_DTYPE_BF16),
                             3, (int64_t[]){tokens, H, R + P}, 0));
    MLA_TRY(mla_check_tensor(&a->out, op, "out", dev, MLA_DT(MLA_DTYPE_BF16), 3,
                             (int64_t[]){tokens, H, R}, 0));
    MLA_TRY(mla_check_tensor(&a->lse, op, "lse", dev, MLA_DT(MLA_DTYPE_F32), 2,
                             (int64_t[]){tokens, H}, MLA_CHECK_OPTIONAL));
    /* All before the cache write: a call refused later must not have written anything. */
    return mla_serving_check_writes(md, a, op, tokens, 0);
}

/* Writes the new tokens' c_kv || k_pe at the metadata's slots (rows of inactive requests have
 * slot -1 and are skipped). */
static mla_status write_new_tokens(mla_backend *be, const mla_batch_metadata *md,
                                   const mla_forward_args *a, int64_t tokens)
{
    if (!a->c_kv.data || tokens == 0) return MLA_OK;
    mla_kv_cache_write_args w = {
        .c_kv = a->c_kv,
        .k_pe = a->k_pe,
        .slots = mla_tensor_contiguous(md->slots, MLA_DTYPE_I32, md->cfg.device, 1,
                                       (int64_t[]){tokens}),
        .kv_cache = a->kv_cache,
        .scales = a->scales,
        .stream = a->stream,
    };
    return mla_kv_cache_write(be, &w);
}

/* The query the kernel gets: q itself, or q quantized to fp8 (scale q_scale) in scratch. */
static mla_status prepare_query(mla_backend *be, mla_batch_metadata *md, const mla_forward_args *a,
                                int64_t tokens, void **q, mla_dtype *dtype)
{
    const mla_config *c = &md->cfg;
    *q = a->q.data;
    *dtype = a->q.dtype;
    const int kernel_takes_bf16 = (md->caps.query_dtypes & MLA_DT(MLA_DTYPE_BF16)) != 0;
    if (a->q.dtype == MLA_DTYPE_FP8_E4M3 || (!a->quantize_q && kernel_takes_bf16)) return MLA_OK;
    const int64_t n = tokens * c->num_heads * (c->kv_lora_rank + c->qk_rope_head_dim);
    void *q8;
    MLA_TRY(mla_serving_scratch(md, MLA_SCRATCH_Q_FP8, (size_t)(n ? n : 1), &q8));
    const mla_scales *s = a->scales ? a->scales : &c->scales;
    mla_quantize_fp8_args qa = {
        .input = a->q,
        .output = mla_tensor_contiguous(q8, MLA_DTYPE_FP8_E4M3, c->device, 1, &n),
        .scale = s->q_scale,
        .stream = a->stream,
    };
    MLA_TRY(mla_quantize_fp8(be, &qa));
    *q = q8;
    *dtype = MLA_DTYPE_FP8_E4M3;
    return MLA_OK;
}

/* An eager call on metadata that a CUDA graph was captured over runs with the graph's shape:
 * max_batch rows (the inactive ones masked by KV length 0) and the same max_seq_len bound.
 * Split-KV kernels may cut the work by the whole batch, so only the same shape gives results
 * bit-identical to a replay. q is copied into max_batch-row scratch, out/lse copied back. */
static mla_status decode_padded_like_graph(mla_backend *be, mla_batch_metadata *md,
                                           const mla_forward_args *a, int batch, const void *q,
                                           mla_dtype q_dtype)
{
    const mla_config *c = &md->cfg;
    const mla_device dev = c->device;
    const int cap = md->capacity, L = md->q_len, H = c->num_heads, R = c->kv_lora_rank,
              D = R + c->qk_rope_head_dim;
    const size_t qrow = (size_t)H * D * mla_dtype_size(q_dtype), orow = (size_t)H * R * 2,
                 lrow = (size_t)H * 4, rows = (size_t)cap * L, used = (size_t)batch * L;
    void *pq, *po, *pl = NULL;
    MLA_TRY(mla_serving_scratch(md, MLA_SCRATCH_PAD_Q, rows * qrow, &pq));
    MLA_TRY(mla_serving_scratch(md, MLA_SCRATCH_PAD_OUT, rows * orow, &po));
    if (a->lse.data) MLA_TRY(mla_serving_scratch(md, MLA_SCRATCH_PAD_LSE, rows * lrow, &pl));
    MLA_TRY(mla_serving_copy(md, pq, q, used * qrow, a->stream));
    mla_decode_args d = {
        .q = mla_view4(pq, q_dtype, dev, cap, L, H, D),
        .kv_cache = a->kv_cache,
        .block_table = mla_view2(md->block_table, MLA_DTYPE_I32, dev, cap, md->max_pages_per_seq),
        .seq_lens = mla_tensor_contiguous(md->seq_lens, MLA_DTYPE_I32, dev, 1, (int64_t[]){cap}),
        .out = mla_view4(po, MLA_DTYPE_BF16, dev, cap, L, H, R),
        .max_seq_len = md->max_pages_per_seq * c->page_size,
        .scales = a->scales,
        .plan = mla_serving_decode_plan(md, cap, L),
        .stream = a->stream,
    };
    if (pl) d.lse = mla_view3(pl, MLA_DTYPE_F32, dev, cap, L, H);
    MLA_TRY(mla_decode(be, &d));
    MLA_TRY(mla_serving_copy(md, a->out.data, po, used * orow, a->stream));
    if (pl) MLA_TRY(mla_serving_copy(md, a->lse.data, pl, used * lrow, a->stream));
    return MLA_OK;
}

mla_status mla_forward_uniform(mla_backend *be, mla_batch_metadata *md, const char *op,
                               mla_forward_mode mode, const mla_forward_args *a, int batch,
                               void *workspace, size_t workspace_bytes)
{
    MLA_TRY(check_common(be, md, a, op));
    MLA_TRY(check_built(md, op, mode));
    const mla_config *c = &md->cfg;
    const int L = md->q_len, H = c->num_heads, R = c->kv_lora_rank;
    const int64_t tokens = (int64_t)batch * L;
    MLA_TRY(check_decode_tensors(md, a, op, tokens));
    MLA_TRY(write_new_tokens(be, md, a, tokens));
    if (batch == 0) return MLA_OK;
    void *q;
    mla_dtype q_dtype;
    MLA_TRY(prepare_query(be, md, a, tokens, &q, &q_dtype));
    if (md->graph_users > 0 && batch < md->capacity)
        return decode_padded_like_graph(be, md, a, batch, q, q_dtype);
    const mla_device dev = c->device;
    mla_decode_args d = {
        .q = mla_view4(q, q_dtype, dev, batch, L, H, R + c->qk_rope_head_dim),
        .kv_cache = a->kv_cache,
        .block_table = mla_view2(md->block_table, MLA_DTYPE_I32, dev, batch, md->max_pages_per_seq),
        .seq_lens = mla_tensor_contiguous(md->seq_lens, MLA_DTYPE_I32, dev, 1, (int64_t[]){batch}),
        .out = mla_view4(a->out.data, MLA_DTYPE_BF16, dev, batch, L, H, R),
        .workspace = workspace,
        .workspace_bytes = workspace_bytes,
        /* With a graph over this metadata (batch == max_batch here) the bound is the graph's,
         * see decode_padded_like_graph. */
        .max_seq_len = md->graph_users > 0 ? md->max_pages_per_seq * c->page_size
                       : md->host_known ? md->max_seq_len
                                        : 0,
        .scales = a->scales,
        .plan = mla_serving_decode_plan(md, batch, L), /* the build's: shared by the layers */
        .stream = a->stream,
    };
    if (a->lse.data) d.lse = mla_view3(a->lse.data, MLA_DTYPE_F32, dev, batch, L, H);
    return mla_decode(be, &d);
}

mla_status mla_forward_decode(mla_backend *be, mla_batch_metadata *md, const mla_forward_args *a)
{
    mla_clear_error();
    if (!md) return mla_set_error(MLA_ERR_NULL_POINTER, "mla_forward_decode: metadata is NULL");
    return mla_forward_uniform(be, md, "mla_forward_decode", MLA_FORWARD_DECODE, a, md->batch,
                               NULL, 0);
}

mla_status mla_forward_target_verify(mla_backend *be, mla_batch_metadata *md,
                                     const mla_forward_args *a)
{
    mla_clear_error();
    if (!md)
        return mla_set_error(MLA_ERR_NULL_POINTER, "mla_forward_target_verify: metadata is NULL");
    return mla_forward_uniform(be, md, "mla_forward_target_verify", MLA_FORWARD_TARGET_VERIFY, a,
                               md->batch, NULL, 0);
}

/* Draft extend: request b brings e_b <= L new tokens (L = the longest). Its rows go to the end
 * of a [L]-row block (front padding), so the decode kernel's bottom-right causal rule gives
 * token j the keys [0, seq_len - e_b + j]; padded rows are computed and dropped. */
mla_status mla_forward_draft_extend(mla_backend *be, mla_batch_metadata *md,
                                    const mla_forward_args *a)
{
    static const char op[] = "mla_forward_draft_extend";
    mla_clear_error();
    MLA_TRY(check_common(be, md, a, op));
    MLA_TRY(check_built(md, op, MLA_FORWARD_DRAFT_EXTEND));
    const mla_config *c = &md->cfg;
    const int B = md->batch, L = md->q_len, H = c->num_heads, R = c->kv_lora_rank,
              D = R + c->qk_rope_head_dim;
    const int64_t tokens = md->num_new_tokens;
    MLA_TRY(check_decode_tensors(md, a, op, tokens));
    MLA_TRY(write_new_tokens(be, md, a, tokens));
    if (B == 0) return MLA_OK;
    void *q;
    mla_dtype q_dtype;
    MLA_TRY(prepare_query(be, md, a, tokens, &q, &q_dtype));
    const mla_device dev = c->device;
    int uniform = 1;
    for (int b = 0; b < B; b++) uniform &= md->host_extend_lens[b] == L;
    mla_decode_args d = {
        .kv_cache = a->kv_cache,
        .block_table = mla_view2(md->block_table, MLA_DTYPE_I32, dev, B, md->max_pages_per_seq),
        .seq_lens = mla_tensor_contiguous(md->seq_lens, MLA_DTYPE_I32, dev, 1, (int64_t[]){B}),
        .max_seq_len = md->max_seq_len,
        .scales = a->scales,
        .stream = a->stream,
    };
    if (uniform) { /* nothing to pad */
        d.q = mla_view4(q, q_dtype, dev, B, L, H, D);
        d.out = mla_view4(a->out.data, MLA_DTYPE_BF16, dev, B, L, H, R);
        if (a->lse.data) d.lse = mla_view3(a->lse.data, MLA_DTYPE_F32, dev, B, L, H);
        return mla_decode(be, &d);
    }
    const size_t qrow = (size_t)H * D * mla_dtype_size(q_dtype), orow = (size_t)H * R * 2,
                 lrow = (size_t)H * 4;
    const size_t padded = (size_t)B * L;
    void *pq, *po, *pl = NULL;
    MLA_TRY(mla_serving_scratch(md, MLA_SCRATCH_PAD_Q, padded * qrow, &pq));
    MLA_TRY(mla_serving_scratch(md, MLA_SCRATCH_PAD_OUT, padded * orow, &po));
    if (a->lse.data) MLA_TRY(mla_serving_scratch(md, MLA_SCRATCH_PAD_LSE, padded * lrow, &pl));
    size_t row = 0;
    for (int b = 0; b < B; b++) {
        const int e = md->host_extend_lens[b];
        const size_t dst = (size_t)b * L + (size_t)(L - e);
        MLA_TRY(mla_serving_copy(md, (char *)pq + dst * qrow, (char *)q + row * qrow, e * qrow,
                                 a->stream));
        row += (size_t)e;
    }
    d.q = mla_view4(pq, q_dtype, dev, B, L, H, D);
    d.out = mla_view4(po, MLA_DTYPE_BF16, dev, B, L, H, R);
    if (pl) d.lse = mla_view3(pl, MLA_DTYPE_F32, dev, B, L, H);
    MLA_TRY(mla_decode(be, &d));
    row = 0;
    for (int b = 0; b < B; b++) {
        const int e = md->host_extend_lens[b];
        const size_t src = (size_t)b * L + (size_t)(L - e);
        MLA_TRY(mla_serving_copy(md, (char *)a->out.data + row * orow, (char *)po + src * orow,
                                 e * orow, a->stream));
        if (pl)
            MLA_TRY(mla_serving_copy(md, (char *)a->lse.data + row * lrow,
                                     (char *)pl + src * lrow, e * lrow, a->stream));
        row += (size_t)e;
    }
    return MLA_OK;
}
