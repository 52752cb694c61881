/* Extend (prefill over a cached prefix) in the base backend, built only from public operations
 * so every kernel set gets it: the new tokens attend causally among themselves, then over the
 * prefix non-causally in chunks (each chunk's K/V up-projected by the caller from rows gathered
 * out of the paged cache), every part with its LSE, merged with mla_merge_state. */
#include "serving_internal.h"

#include <stdlib.h>
#include <string.h>

/* ---- gather ---- */

static mla_status check_gather_indices(const char *op, int B, int M, int ps, int num_pages,
                                       int64_t rows, const int32_t *bt, const int32_t *start,
                                       const int32_t *cu)
{
    if (cu[0] != 0)
        return mla_set_error(MLA_ERR_OUT_OF_RANGE, "%s: cu_rows[0] = %d, must be 0", op, cu[0]);
    for (int b = 0; b < B; b++) {
        if (cu[b + 1] < cu[b])
            return mla_set_error(MLA_ERR_OUT_OF_RANGE, "%s: cu_rows decreases at %d (%d > %d)",
                                 op, b + 1, cu[b], cu[b + 1]);
        const int64_t n = cu[b + 1] - cu[b];
        if (start[b] < 0 || start[b] + n > (int64_t)M * ps)
            return mla_set_error(MLA_ERR_OUT_OF_RANGE,
                                 "%s: request %d gathers tokens [%d, %lld), outside its block "
                                 "table's %lld tokens",
                                 op, b, start[b], (long long)(start[b] + n),
                                 (long long)M * ps);
        if (n == 0) continue;
        for (int64_t j = start[b] / ps; j <= (start[b] + n - 1) / ps; j++) {
            const int32_t pg = bt[(int64_t)b * M + j];
            if (pg < 0 || pg >= num_pages)
                return mla_set_error(MLA_ERR_OUT_OF_RANGE,
                                     "%s: block_table[%d][%lld] = %d is outside [0, %d)", op, b,
                                     (long long)j, pg, num_pages);
        }
    }
    if (cu[B] != rows)
        return mla_set_error(MLA_ERR_OUT_OF_RANGE, "%s: cu_rows[%d] = %d, out has %lld rows", op,
                             B, cu[B], (long long)rows);
    return MLA_OK;
}

static mla_status host_copy(const mla_kernel_set *ks, const mla_config *cfg, const mla_tensor *t,
                            void *stream, int32_t **out)
{
    const size_t bytes = (size_t)mla_tensor_numel(t) * 4;
    *out = malloc(bytes ? bytes : 1);
    if (!*out) return mla_set_error(MLA_ERR_OUT_OF_MEMORY, "mla_gather_cache: out of host memory");
    if (ks->device_type == MLA_DEVICE_CPU) {
        memcpy(*out, t->data, bytes);
        return MLA_OK;
    }
    return ks->copy_to_host(cfg, *out, t->data, bytes, stream);
}

mla_status mla_gather_cache(mla_backend *be, const mla_gather_cache_args *a)
{
    static const char op[] = "mla_gather_cache";
    mla_clear_error();
    if (!be || !a)
        return mla_set_error(MLA_ERR_NULL_POINTER, "%s: %s is NULL", op, be ? "args" : "backend");
    const mla_kernel_set *ks = mla_serving_kernel_set(be);
    const mla_config *cfg = mla_backend_config(be);
    const mla_device *dev = &cfg->device;
    const int D = cfg->kv_lora_rank + cfg->qk_rope_head_dim, ps = cfg->page_size;
    const uint32_t i32 = MLA_DT(MLA_DTYPE_I32);
    MLA_TRY(mla_check_tensor(&a->kv_cache, op, "kv_cache", dev, MLA_DT(cfg->kv_cache_dtype), 3,
                             (int64_t[]){-1, ps, D}, 0));
    MLA_TRY(mla_check_tensor(&a->block_table, op, "block_table", dev, i32, 2, NULL, 0));
    const int64_t B = a->block_table.shape[0], M = a->block_table.shape[1];
    MLA_TRY(mla_check_tensor(&a->token_start, op, "token_start", dev, i32, 1, (int64_t[]){B}, 0));
    MLA_TRY(mla_check_tensor(&a->cu_rows, op, "cu_rows", dev, i32, 1, (int64_t[]){B + 1}, 0));
    MLA_TRY(mla_check_tensor(&a->out, op, "out", dev, MLA_DT(MLA_DTYPE_BF16), 2,
                             (int64_t[]){-1, D}, 0));
    if (mla_ranges_overlap(&a->out, &a->kv_cache) || mla_ranges_overlap(&a->out, &a->block_table))
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT, "%s: out overlaps an input", op);
    const mla_scales *s = a->scales ? a->scales : &cfg->scales;
    MLA_TRY(mla_check_scale(op, "scales.k_scale", s->k_scale));
    const int64_t rows = a->out.shape[0], num_pages = a->kv_cache.shape[0];
    if (rows > INT32_MAX || num_pages > INT32_MAX || B > (1 << 24) || M * ps > INT32_MAX)
        return mla_set_error(MLA_ERR_UNSUPPORTED, "%s: sizes beyond 2^31-1", op);
    if (B == 0) {
        if (rows != 0)
            return mla_set_error(MLA_ERR_OUT_OF_RANGE, "%s: no requests but out has %lld rows", op,
                                 (long long)rows);
        return MLA_OK;
    }
    const int on_host = ks->device_type == MLA_DEVICE_CPU;
    const int checks = on_host || (!cfg->skip_index_check && ks->copy_to_host &&
                                   !(ks->stream_is_capturing && ks->stream_is_capturing(a->stream)));
    if (checks) {
        int32_t *bt = NULL, *st_h = NULL, *cu = NULL;
        mla_status st = host_copy(ks, cfg, &a->block_table, a->stream, &bt);
        if (st == MLA_OK) st = host_copy(ks, cfg, &a->token_start, a->stream, &st_h);
        if (st == MLA_OK) st = host_copy(ks, cfg, &a->cu_rows, a->stream, &cu);
        if (st == MLA_OK)
            st = check_gather_indices(op, (int)B, (int)M, ps, (int)num_pages, rows, bt, st_h, cu);
        free(bt);
        free(st_h);
        free(cu);
        if (st != MLA_OK) return st;
    }
    if (rows == 0) return MLA_OK;
    mla_gather_problem p = {
        .batch = (int)B,
        .rows = (int)rows,
        .row_dim = D,
        .page_size = ps,
        .num_pages = (int)num_pages,
        .max_pages_per_seq = (int)M,
        .kv_dtype = cfg->kv_cache_dtype,
        .k_scale = cfg->kv_cache_dtype == MLA_DTYPE_FP8_E4M3 ? s->k_scale : 1.0f,
        .kv_cache = a->kv_cache.data,
        .block_table = a->block_table.data,
        .token_start = a->token_start.data,
        .cu_rows = a->cu_rows.data,
        .out = a->out.data,
        .stream = a->stream,
    };
    if (on_host) {
        mla_host_gather_cache(&p);
        return MLA_OK;
    }
    if (!ks->run_gather_cache)
        return mla_set_error(MLA_ERR_UNSUPPORTED, "%s: backend '%s' provides no gather kernel", op,
                             ks->name);
    return ks->run_gather_cache(cfg, &p);
}

/* ---- extend ---- */

typedef struct extend_ctx {
    mla_backend *be;
    mla_batch_metadata *md;
    const mla_forward_args *a;
    const char *op;
    int B, T, H, Dqk, Dv, max_ext;
    mla_tensor cu_q;       /* the metadata's cumulative new-token counts */
    /* the running merged state: (o, lse) of everything attended so far */
    mla_tensor cur_o, cur_lse;
    int parts_left;        /* prefix parts still to merge */
} extend_ctx;

/* Attends q over one set of prefix keys (k, v with cu_kv) and merges it into the running state;
 * the last part writes the caller's out/lse. */
static mla_status attend_and_merge(extend_ctx *x, const mla_tensor *k, const mla_tensor *v,
                                   const mla_tensor *cu_kv, int max_kv)
{
    mla_batch_metadata *md = x->md;
    const mla_device dev = md->cfg.device;
    const size_t rows = (size_t)x->T * x->H;
    void *co, *cl;
    MLA_TRY(mla_serving_scratch(md, MLA_SCRATCH_CHUNK_O, rows * x->Dv * 2, &co));
    MLA_TRY(mla_serving_scratch(md, MLA_SCRATCH_CHUNK_LSE, rows * 4, &cl));
    mla_prefill_args pa = {
        .q = x->a->q,
        .k = *k,
        .v = *v,
        .cu_seqlens_q = x->cu_q,
        .cu_seqlens_kv = *cu_kv,
        .max_seqlen_q = x->max_ext,
        .max_seqlen_kv = max_kv,
        .causal = 0,
        .out = mla_view3(co, MLA_DTYPE_BF16, dev, x->T, x->H, x->Dv),
        .lse = mla_view2(cl, MLA_DTYPE_F32, dev, x->T, x->H),
        .scales = x->a->scales,
        .stream = x->a->stream,
    };
    MLA_TRY(mla_prefill(x->be, &pa));
    mla_merge_state_args m = {
        .o_a = x->cur_o,
        .lse_a = x->cur_lse,
        .o_b = pa.out,
        .lse_b = pa.lse,
        .stream = x->a->stream,
    };
    if (--x->parts_left == 0) {
        m.o = x->a->out;
        m.lse = x->a->lse;
        return mla_merge_state(x->be, &m);
    }
    /* Intermediate states stay in float32 so only the final output is rounded to bf16. */
    void *ao, *al;
    MLA_TRY(mla_serving_scratch(md, MLA_SCRATCH_ACC_O, rows * x->Dv * 4, &ao));
    MLA_TRY(mla_serving_scratch(md, MLA_SCRATCH_ACC_LSE, rows * 4, &al));
    m.o = mla_view3(ao, MLA_DTYPE_F32, dev, x->T, x->H, x->Dv);
    m.lse = mla_view2(al, MLA_DTYPE_F32, dev, x->T, x->H);
    MLA_TRY(mla_merge_state(x->be, &m));
    x->cur_o = m.o;
    x->cur_lse = m.lse;
    return MLA_OK;
}

static mla_status check_extend_tensors(const mla_batch_metadata *md, const mla_forward_args *a,
                                       const char *op, int64_t T, int64_t total_prefix)
{
    const mla_config *c = &md->cfg;
    const mla_device *dev = &c->device;
    const int H = c->num_heads, P = c->qk_rope_head_dim,
              Dqk = c->qk_nope_head_dim + P, Dv = c->v_head_dim;
    const uint32_t bf16 = MLA_DT(MLA_DTYPE_BF16);
    MLA_TRY(mla_check_tensor(&a->q, op, "q", dev, bf16, 3, (int64_t[]){T, H, Dqk}, 0));
    MLA_TRY(mla_check_tensor(&a->k, op, "k", dev, bf16, 3, (int64_t[]){T, H, Dqk}, 0));
    MLA_TRY(mla_check_tensor(&a->v, op, "v", dev, bf16, 3, (int64_t[]){T, H, Dv}, 0));
    MLA_TRY(mla_check_tensor(&a->out, op, "out", dev, bf16, 3, (int64_t[]){T, H, Dv}, 0));
    MLA_TRY(mla_check_tensor(&a->lse, op, "lse", dev, MLA_DT(MLA_DTYPE_F32), 2,
                             (int64_t[]){T, H}, MLA_CHECK_OPTIONAL));
    const int has_buffers = a->prefix_k.data != NULL || a->prefix_v.data != NULL;
    if (a->prefix_kv && has_buffers)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                             "%s: give the prefix K/V either by callback (prefix_kv) or by "
                             "buffers (prefix_k/prefix_v), not both",
                             op);
    if (total_prefix > 0 && !a->prefix_kv && !has_buffers)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                             "%s: the batch has %lld cached prefix tokens but neither prefix_kv "
                             "nor prefix_k/prefix_v is given",
                             op, (long long)total_prefix);
    if (has_buffers) {
        MLA_TRY(mla_check_tensor(&a->prefix_k, op, "prefix_k", dev, bf16, 3,
                                 (int64_t[]){total_prefix, H, Dqk}, 0));
        MLA_TRY(mla_check_tensor(&a->prefix_v, op, "prefix_v", dev, bf16, 3,
                                 (int64_t[]){total_prefix, H, Dv}, 0));
    }
    if (a->prefix_chunk_size < 0 || a->prefix_chunk_size > (1 << 30))
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                             "%s: prefix_chunk_size = %d is outside [0, 2^30] (0 = 4096)", op,
                             a->prefix_chunk_size);
    /* All before the cache write: a call refused later must not have written anything. The
     * cache is needed only to write or gather latents. */
    return mla_serving_check_writes(md, a, op, T, 1);
}

mla_status mla_forward_extend(mla_backend *be, mla_batch_metadata *md, const mla_forward_args *a)
{
    static const char op[] = "mla_forward_extend";
    mla_clear_error();
    MLA_TRY(mla_serving_check_call(be, md, a, op));
    if (!md->built || md->mode != MLA_FORWARD_EXTEND)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                             "%s: the metadata was not built for mode extend (last build: %s)",
                             op, md->built ? mla_forward_mode_name(md->mode) : "none or failed");
    const mla_config *c = &md->cfg;
    const mla_device dev = c->device;
    const int B = md->batch, T = md->num_new_tokens, H = c->num_heads;
    const int Dqk = c->qk_nope_head_dim + c->qk_rope_head_dim, Dv = c->v_head_dim;
    int64_t total_prefix = 0;
    int max_prefix = 0;
    for (int b = 0; b < B; b++) {
        const int pre = md->host_seq_lens[b] - md->host_extend_lens[b];
        total_prefix += pre;
        if (pre > max_prefix) max_prefix = pre;
    }
    MLA_TRY(check_extend_tensors(md, a, op, T, total_prefix));
    if (a->c_kv.data && T > 0) {
        mla_kv_cache_write_args w = {
            .c_kv = a->c_kv,
            .k_pe = a->k_pe,
            .slots = mla_tensor_contiguous(md->slots, MLA_DTYPE_I32, dev, 1, (int64_t[]){T}),
            .kv_cache = a->kv_cache,
            .scales = a->scales,
            .stream = a->stream,
        };
        MLA_TRY(mla_kv_cache_write(be, &w));
    }
    if (T == 0) return MLA_OK;
    extend_ctx x = {.be = be, .md = md, .a = a, .op = op, .B = B, .T = T, .H = H, .Dqk = Dqk,
                    .Dv = Dv, .max_ext = md->q_len};
    x.cu_q = mla_tensor_contiguous(md->cu_seqlens_q, MLA_DTYPE_I32, dev, 1, (int64_t[]){B + 1});
    const int chunk = a->prefix_chunk_size > 0 ? a->prefix_chunk_size : 4096;
    const int use_buffers = a->prefix_kv == NULL;
    x.parts_left = max_prefix == 0 ? 0 : use_buffers ? 1 : (max_prefix + chunk - 1) / chunk;

    /* 1. The new tokens among themselves, causal (straight into out when there is no prefix). */
    mla_prefill_args self = {
        .q = a->q,
        .k = a->k,
        .v = a->v,
        .cu_seqlens_q = x.cu_q,
        .cu_seqlens_kv = x.cu_q,
        .max_seqlen_q = md->q_len,
        .max_seqlen_kv = md->q_len,
        .causal = 1,
        .out = a->out,
        .lse = a->lse,
        .scales = a->scales,
        .stream = a->stream,
    };
    if (x.parts_left > 0) {
        void *o, *l;
        MLA_TRY(mla_serving_scratch(md, MLA_SCRATCH_EXT_O, (size_t)T * H * Dv * 2, &o));
        MLA_TRY(mla_serving_scratch(md, MLA_SCRATCH_EXT_LSE, (size_t)T * H * 4, &l));
        self.out = mla_view3(o, MLA_DTYPE_BF16, dev, T, H, Dv);
        self.lse = mla_view2(l, MLA_DTYPE_F32, dev, T, H);
    }
    MLA_TRY(mla_prefill(be, &self));
    if (x.parts_left == 0) return MLA_OK;
    x.cur_o = self.out;
    x.cur_lse = self.lse;

    /* Host index arrays of the prefix parts: token_start [B], cu_rows [B + 1]. */
    int32_t *host_idx = malloc((size_t)(2 * B + 1) * sizeof *host_idx);
    if (!host_idx) return mla_set_error(MLA_ERR_OUT_OF_MEMORY, "%s: out of host memory", op);
    int32_t *start = host_idx, *cu = host_idx + B;
    void *dev_idx;
    mla_status st = mla_serving_scratch(md, MLA_SCRATCH_CHUNK_IDX,
                                        (size_t)(2 * B + 1) * sizeof *host_idx, &dev_idx);
    const mla_tensor start_t =
        mla_tensor_contiguous(dev_idx, MLA_DTYPE_I32, dev, 1, (int64_t[]){B});
    const mla_tensor cu_t =
        mla_tensor_contiguous((int32_t *)dev_idx + B, MLA_DTYPE_I32, dev, 1, (int64_t[]){B + 1});

    if (st == MLA_OK && use_buffers) {
        /* 2a. Prefix K/V given whole: one non-causal part. */
        cu[0] = 0;
        for (int b = 0; b < B; b++)
            cu[b + 1] = cu[b] + md->host_seq_lens[b] - md->host_extend_lens[b];
        st = mla_serving_copy(md, dev_idx, host_idx, (size_t)(2 * B + 1) * 4, a->stream);
        if (st == MLA_OK) st = attend_and_merge(&x, &a->prefix_k, &a->prefix_v, &cu_t, max_prefix);
    }
    for (int ci = 0; st == MLA_OK && !use_buffers && x.parts_left > 0; ci++) {
        /* 2b. Chunk ci: positions [ci * chunk, (ci + 1) * chunk) of every prefix. */
        cu[0] = 0;
        int max_rows = 0;
        for (int b = 0; b < B; b++) {
            const int pre = md->host_seq_lens[b] - md->host_extend_lens[b];
            const int64_t first = (int64_t)ci * chunk;
            int n = pre > first ? (int)(pre - first < chunk ? pre - first : chunk) : 0;
            start[b] = n > 0 ? (int32_t)first : 0;
            cu[b + 1] = cu[b] + n;
            if (n > max_rows) max_rows = n;
        }
        const int rows = cu[B];
        const int D = c->kv_lora_rank + c->qk_rope_head_dim;
        void *lat, *kc, *vc;
        st = mla_serving_copy(md, dev_idx, host_idx, (size_t)(2 * B + 1) * 4, a->stream);
        if (st == MLA_OK)
            st = mla_serving_scratch(md, MLA_SCRATCH_LATENT, (size_t)rows * D * 2, &lat);
        if (st == MLA_OK)
            st = mla_serving_scratch(md, MLA_SCRATCH_CHUNK_K, (size_t)rows * H * Dqk * 2, &kc);
        if (st == MLA_OK)
            st = mla_serving_scratch(md, MLA_SCRATCH_CHUNK_V, (size_t)rows * H * Dv * 2, &vc);
        if (st != MLA_OK) break;
        mla_gather_cache_args g = {
            .kv_cache = a->kv_cache,
            .block_table = mla_view2(md->block_table, MLA_DTYPE_I32, dev, B, md->max_pages_per_seq),
            .token_start = start_t,
            .cu_rows = cu_t,
            .out = mla_view2(lat, MLA_DTYPE_BF16, dev, rows, D),
            .scales = a->scales,
            .stream = a->stream,
        };
        st = mla_gather_cache(be, &g);
        if (st != MLA_OK) break;
        mla_prefix_chunk pc = {
            .chunk_index = ci,
            .batch = B,
            .num_rows = rows,
            .host_cu_rows = cu,
            .host_token_start = start,
            .latent = g.out,
            .k = mla_view3(kc, MLA_DTYPE_BF16, dev, rows, H, Dqk),
            .v = mla_view3(vc, MLA_DTYPE_BF16, dev, rows, H, Dv),
            .stream = a->stream,
        };
        st = a->prefix_kv(a->prefix_kv_user, &pc);
        if (st != MLA_OK) {
            char msg[256];
            snprintf(msg, sizeof msg, "%s", mla_last_error());
            st = mla_set_error(st, "%s: the prefix_kv callback failed on chunk %d: %s%s%s", op,
                               ci, mla_status_string(st), *msg ? ": " : "", msg);
            break;
        }
        st = attend_and_merge(&x, &pc.k, &pc.v, &cu_t, max_rows);
    }
    free(host_idx);
    return st;
}
