/* Batch metadata of the serving layer: creation of the fixed-size buffers, the build from a
 * req_to_token map (on the host, or by the kernel set's device hook), its checks, and the
 * multi-step draft helper that prepares several steps at once. */
#include "serving_internal.h"

#include <stdlib.h>
#include <string.h>

const char *mla_forward_mode_name(mla_forward_mode mode)
{
    switch (mode) {
    case MLA_FORWARD_DECODE: return "decode";
    case MLA_FORWARD_TARGET_VERIFY: return "target_verify";
    case MLA_FORWARD_DRAFT_EXTEND: return "draft_extend";
    case MLA_FORWARD_EXTEND: return "extend";
    }
    return "unknown";
}

const mla_kernel_set *mla_serving_kernel_set(const mla_backend *be)
{
    return mla_find_kernel_set(mla_backend_name(be));
}

int mla_serving_on_host(const mla_kernel_set *ks) { return ks->device_type == MLA_DEVICE_CPU; }

mla_tensor mla_view2(void *data, mla_dtype dt, mla_device dev, int64_t a, int64_t b)
{
    return mla_tensor_contiguous(data, dt, dev, 2, (int64_t[]){a, b});
}

mla_tensor mla_view3(void *data, mla_dtype dt, mla_device dev, int64_t a, int64_t b, int64_t c)
{
    return mla_tensor_contiguous(data, dt, dev, 3, (int64_t[]){a, b, c});
}

mla_tensor mla_view4(void *data, mla_dtype dt, mla_device dev, int64_t a, int64_t b, int64_t c,
                     int64_t d)
{
    return mla_tensor_contiguous(data, dt, dev, 4, (int64_t[]){a, b, c, d});
}

mla_status mla_serving_copy(const mla_batch_metadata *md, void *dst, const void *src,
                            size_t bytes, void *stream)
{
    if (bytes == 0 || dst == src) return MLA_OK;
    if (mla_serving_on_host(md->ks)) {
        memmove(dst, src, bytes);
        return MLA_OK;
    }
    if (!md->ks->copy_async)
        return mla_set_error(MLA_ERR_UNSUPPORTED,
                             "backend '%s' provides no copy hook, which the serving layer needs",
                             md->ks->name);
    return md->ks->copy_async(&md->cfg, dst, src, bytes, stream);
}

mla_status mla_serving_to_host(const mla_batch_metadata *md, void *dst, const void *src,
                               size_t bytes, void *stream)
{
    if (bytes == 0) return MLA_OK;
    if (mla_serving_on_host(md->ks)) {
        memmove(dst, src, bytes);
        return MLA_OK;
    }
    if (!md->ks->copy_to_host)
        return mla_set_error(MLA_ERR_UNSUPPORTED, "backend '%s' cannot copy to the host",
                             md->ks->name);
    return md->ks->copy_to_host(&md->cfg, dst, src, bytes, stream);
}

mla_status mla_serving_scratch(mla_batch_metadata *md, int which, size_t bytes, void **ptr)
{
    mla_scratch *s = &md->scratch[which];
    if (s->bytes < bytes) {
        /* Only the fp8 query is read by captured graphs; other scratch may move (a free on a
         * device synchronizes it first). */
        if (which == MLA_SCRATCH_Q_FP8 && md->graph_users > 0 && s->ptr)
            return mla_set_error(MLA_ERR_WORKSPACE_TOO_SMALL,
                                 "a scratch buffer of the batch metadata must grow to %zu bytes "
                                 "while a CUDA graph uses it; capture with the largest batch",
                                 bytes);
        size_t grow = s->bytes + s->bytes / 2;
        size_t want = bytes > grow ? bytes : grow;
        if (s->ptr) md->ks->free(&md->cfg, s->ptr);
        s->ptr = NULL;
        s->bytes = 0;
        MLA_TRY(md->ks->alloc(&md->cfg, want, &s->ptr));
        s->bytes = want;
    }
    *ptr = s->ptr;
    return MLA_OK;
}

/* ---- creation ---- */

static void free_buffers(mla_batch_metadata *md)
{
    void *bufs[] = {md->block_table, md->seq_lens, md->cu_seqlens_q, md->cu_seqlens_kv, md->slots};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) md->ks->free(&md->cfg, bufs[i]);
    for (int i = 0; i < MLA_SCRATCH_COUNT; i++)
        if (md->scratch[i].ptr) md->ks->free(&md->cfg, md->scratch[i].ptr);
}

static mla_status metadata_create(const char *op, mla_backend *be, int max_batch, int max_context,
                                  mla_batch_metadata **out)
{
    if (!out) return mla_set_error(MLA_ERR_NULL_POINTER, "%s: out is NULL", op);
    *out = NULL;
    if (!be) return mla_set_error(MLA_ERR_NULL_POINTER, "%s: backend is NULL", op);
    if (max_batch < 1 || max_batch > (1 << 20))
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT, "%s: max_batch = %d is outside [1, 2^20]",
                             op, max_batch);
    if (max_context < 1 || max_context > (1 << 30))
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                             "%s: max_context = %d is outside [1, 2^30]", op, max_context);
    const mla_kernel_set *ks = mla_serving_kernel_set(be);
    if (!ks) return mla_set_error(MLA_ERR_INTERNAL, "%s: backend has no kernel set", op);
    mla_batch_metadata *md = calloc(1, sizeof *md);
    if (!md) return mla_set_error(MLA_ERR_OUT_OF_MEMORY, "%s: out of host memory", op);
    md->backend = be;
    md->ks = ks;
    md->cfg = *mla_backend_config(be);
    ks->get_capabilities(&md->caps);
    md->capacity = max_batch;
    md->max_context = max_context;
    const int ps = md->cfg.page_size;
    md->max_pages_per_seq = (int)(((int64_t)max_context + ps - 1) / ps);
    md->slot_capacity = max_batch * md->caps.max_q_len;
    const int64_t bt = (int64_t)max_batch * md->max_pages_per_seq;
    mla_status st = MLA_OK;
    if (bt > INT32_MAX)
        st = mla_set_error(MLA_ERR_UNSUPPORTED,
                           "%s: block table of %d requests x %d pages exceeds 2^31-1 entries", op,
                           max_batch, md->max_pages_per_seq);
    if (st == MLA_OK) st = ks->alloc(&md->cfg, (size_t)bt * 4, (void **)&md->block_table);
    if (st == MLA_OK) st = ks->alloc(&md->cfg, (size_t)max_batch * 4, (void **)&md->seq_lens);
    if (st == MLA_OK)
        st = ks->alloc(&md->cfg, (size_t)(max_batch + 1) * 4, (void **)&md->cu_seqlens_q);
    if (st == MLA_OK)
        st = ks->alloc(&md->cfg, (size_t)(max_batch + 1) * 4, (void **)&md->cu_seqlens_kv);
    if (st == MLA_OK)
        st = ks->alloc(&md->cfg, (size_t)md->slot_capacity * 4, (void **)&md->slots);
    if (st == MLA_OK) {
        md->host_seq_lens = calloc((size_t)max_batch, sizeof(int32_t));
        md->host_extend_lens = calloc((size_t)max_batch, sizeof(int32_t));
        md->plans = calloc((size_t)md->caps.max_q_len + 1, sizeof *md->plans);
        if (!md->host_seq_lens || !md->host_extend_lens || !md->plans)
            st = mla_set_error(MLA_ERR_OUT_OF_MEMORY, "%s: out of host memory", op);
    }
    if (st != MLA_OK) {
        mla_metadata_destroy(md);
        return st;
    }
    *out = md;
    return MLA_OK;
}

mla_status mla_metadata_create(mla_backend *be, int max_batch, int max_context,
                               mla_batch_metadata **out)
{
    mla_clear_error();
    return metadata_create("mla_metadata_create", be, max_batch, max_context, out);
}

void mla_metadata_destroy(mla_batch_metadata *md)
{
    if (!md) return;
    free_buffers(md);
    if (md->plans)
        for (int l = 0; l <= md->caps.max_q_len; l++) mla_decode_plan_destroy(md->plans[l]);
    free(md->plans);
    free(md->host_seq_lens);
    free(md->host_extend_lens);
    free(md);
}

/* ---- decode plans ---- */

mla_status mla_serving_plan_decode(mla_batch_metadata *md, int rows, int q_len,
                                   const int32_t *host_lens, void *stream)
{
    md->plan_rows = 0;
    if (rows < 1) return MLA_OK;
    mla_decode_plan **pl = &md->plans[q_len];
    if (!*pl) {
        /* Creation allocates, which a stream capture forbids: that build's forwards then
         * schedule inline, as they would without plans. */
        if (md->ks->stream_is_capturing && md->ks->stream_is_capturing(stream)) return MLA_OK;
        MLA_TRY(mla_decode_plan_create(md->backend, md->capacity, q_len, md->max_pages_per_seq, pl));
    }
    MLA_TRY(mla_decode_plan_set_batch(*pl, rows));
    const mla_tensor sl =
        mla_tensor_contiguous(md->seq_lens, MLA_DTYPE_I32, md->cfg.device, 1, (int64_t[]){rows});
    MLA_TRY(mla_decode_plan_build_known(*pl, &sl, host_lens, stream));
    md->plan_rows = rows;
    md->plan_q_len = q_len;
    return MLA_OK;
}

const mla_decode_plan *mla_serving_decode_plan(const mla_batch_metadata *md, int rows, int q_len)
{
    return md->plan_rows > 0 && md->plan_rows == rows && md->plan_q_len == q_len
               ? md->plans[q_len]
               : NULL;
}

/* ---- checks ---- */

mla_status mla_check_metadata_indices(const char *op, mla_forward_mode mode, int batch,
                                      int q_len, int seq_len_offset, int max_q_len,
                                      const int32_t *rpi, const int32_t *seq_lens,
                                      const int32_t *extend_lens, int max_reqs,
                                      int req_capacity, int max_context, int page_size,
                                      mla_row_reader read_row, void *read_ctx, int64_t *max_slot)
{
    *max_slot = -1;
    const int limit = max_context < req_capacity ? max_context : req_capacity;
    int32_t *row = NULL;
    if (read_row && limit > 0) {
        row = malloc((size_t)limit * sizeof *row);
        if (!row) return mla_set_error(MLA_ERR_OUT_OF_MEMORY, "%s: out of host memory", op);
    }
    mla_status st = MLA_OK;
    for (int b = 0; b < batch && st == MLA_OK; b++) {
        const int r = rpi[b];
        const int64_t s = (int64_t)seq_lens[b] + seq_len_offset;
        const int e = q_len > 0 ? q_len : extend_lens[b];
        if (r < 0 || r >= max_reqs) {
            st = mla_set_error(MLA_ERR_OUT_OF_RANGE,
                               "%s: req_pool_indices[%d] = %d is outside [0, %d)", op, b, r,
                               max_reqs);
        } else if (mode == MLA_FORWARD_DRAFT_EXTEND && (e < 1 || e > max_q_len)) {
            st = mla_set_error(MLA_ERR_OUT_OF_RANGE,
                               "%s: extend_lens[%d] = %d is outside [1, %d] (draft_extend)", op,
                               b, e, max_q_len);
        } else if (mode == MLA_FORWARD_EXTEND && e < 0) {
            st = mla_set_error(MLA_ERR_OUT_OF_RANGE, "%s: extend_lens[%d] = %d is negative", op,
                               b, e);
        } else if (s < e || s > limit) {
            st = mla_set_error(MLA_ERR_OUT_OF_RANGE,
                               "%s: seq_lens[%d]%s = %lld is outside [%d, %d] (new tokens %d; "
                               "max_context %d, req_to_token holds %d tokens per request)",
                               op, b, seq_len_offset ? " + step" : "", (long long)s, e, limit, e,
                               max_context, req_capacity);
        } else if (row) {
            st = read_row(read_ctx, r, (int)s, row);
            for (int t = 0; t < s && st == MLA_OK; t++) {
                const int32_t slot = row[t];
                const int off = t % page_size;
                if (slot > *max_slot) *max_slot = slot;
                if (slot < 0 || slot % page_size != off)
                    st = mla_set_error(MLA_ERR_OUT_OF_RANGE,
                                       "%s: req_to_token[%d][%d] = %d (request %d, token %d) is "
                                       "not a page-aligned slot: token %d must sit at offset %d "
                                       "of a page of %d",
                                       op, r, t, slot, b, t, t, off, page_size);
                else if (off != 0 && slot / page_size != row[t - off] / page_size)
                    st = mla_set_error(MLA_ERR_OUT_OF_RANGE,
                                       "%s: req_to_token[%d][%d] = %d is on page %d but token %d "
                                       "of the same page-aligned run is on page %d",
                                       op, r, t, slot, slot / page_size, t - off,
                                       row[t - off] / page_size);
            }
        }
    }
    free(row);
    return st;
}

/* ---- host build ---- */

void mla_host_build_metadata(const mla_metadata_problem *p)
{
    const int ps = p->page_size;
    p->cu_seqlens_q[0] = 0;
    p->cu_seqlens_kv[0] = 0;
    for (int b = 0; b < p->batch; b++) {
        const int s = p->seq_lens[b] + p->seq_len_offset;
        const int e = p->q_len > 0 ? p->q_len : p->extend_lens[b];
        const int32_t *row = p->req_to_token + (int64_t)p->req_pool_indices[b] * p->req_capacity;
        int32_t *bt = p->block_table + (int64_t)b * p->max_pages_per_seq;
        p->seq_lens_out[b] = s;
        p->cu_seqlens_q[b + 1] = p->cu_seqlens_q[b] + e;
        p->cu_seqlens_kv[b + 1] = p->cu_seqlens_kv[b] + s;
        for (int j = 0; j < p->max_pages_per_seq; j++) {
            int32_t page = 0; /* beyond the sequence: a valid page no kernel reads */
            if ((int64_t)j * ps < s) {
                const int32_t slot = row[(int64_t)j * ps];
                page = slot >= 0 && slot % ps == 0 ? slot / ps : -1;
            }
            bt[j] = page;
        }
        for (int j = 0; j < e; j++) p->slots[p->cu_seqlens_q[b] + j] = row[s - e + j];
    }
    for (int b = p->batch; b < p->capacity; b++) p->seq_lens_out[b] = 0;
    for (int i = p->cu_seqlens_q[p->batch]; i < p->slot_capacity; i++) p->slots[i] = -1;
}

void mla_host_gather_cache(const mla_gather_problem *p)
{
    const int D = p->row_dim, ps = p->page_size;
    for (int b = 0; b < p->batch; b++) {
        for (int i = p->cu_rows[b]; i < p->cu_rows[b + 1]; i++) {
            const int64_t t = (int64_t)p->token_start[b] + (i - p->cu_rows[b]);
            const int32_t page = p->block_table[(int64_t)b * p->max_pages_per_seq + t / ps];
            uint16_t *dst = p->out + (int64_t)i * D;
            if (page < 0 || page >= p->num_pages) { /* validated away; never read out of bounds */
                memset(dst, 0, (size_t)D * 2);
                continue;
            }
            const int64_t base = ((int64_t)page * ps + t % ps) * D;
            for (int d = 0; d < D; d++) {
                float x = mla_load_as_float(p->kv_cache, p->kv_dtype, base + d);
                if (p->kv_dtype == MLA_DTYPE_FP8_E4M3) x *= p->k_scale;
                dst[d] = mla_float_to_bf16(x);
            }
        }
    }
}

/* ---- build ---- */

typedef struct device_row_reader {
    const mla_batch_metadata *md;
    const int32_t *req_to_token;
    int req_capacity;
    void *stream;
} device_row_reader;

static mla_status read_device_row(void *ctx, int row, int n, int32_t *buf)
{
    device_row_reader *r = ctx;
    return mla_serving_to_host(r->md, buf, r->req_to_token + (int64_t)row * r->req_capacity,
                               (size_t)n * sizeof *buf, r->stream);
}

static mla_status read_host_row(void *ctx, int row, int n, int32_t *buf)
{
    device_row_reader *r = ctx;
    memcpy(buf, r->req_to_token + (int64_t)row * r->req_capacity, (size_t)n * sizeof *buf);
    return MLA_OK;
}

static int index_checks_enabled(const mla_batch_metadata *md, void *stream)
{
    if (mla_serving_on_host(md->ks)) return 1;
    if (md->cfg.skip_index_check || !md->ks->copy_to_host) return 0;
    return !(md->ks->stream_is_capturing && md->ks->stream_is_capturing(stream));
}

static mla_status build_metadata(mla_batch_metadata *md, const mla_metadata_args *a,
                                 int seq_len_offset, const char *op)
{
    if (!md) return mla_set_error(MLA_ERR_NULL_POINTER, "%s: metadata is NULL", op);
    md->built = 0; /* until this build succeeds: any failure leaves the metadata unusable */
    if (!a) return mla_set_error(MLA_ERR_NULL_POINTER, "%s: args is NULL", op);
    md->plan_rows = 0;
    const mla_device *dev = &md->cfg.device;
    const uint32_t i32 = MLA_DT(MLA_DTYPE_I32);
    const int ragged = a->mode == MLA_FORWARD_DRAFT_EXTEND || a->mode == MLA_FORWARD_EXTEND;
    if (a->mode != MLA_FORWARD_DECODE && a->mode != MLA_FORWARD_TARGET_VERIFY && !ragged)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                             "%s: mode = %d is not a forward mode (decode 0, target_verify 1, "
                             "draft_extend 2, extend 3)",
                             op, (int)a->mode);
    MLA_TRY(mla_check_tensor(&a->req_to_token, op, "req_to_token", dev, i32, 2, NULL, 0));
    MLA_TRY(mla_check_tensor(&a->req_pool_indices, op, "req_pool_indices", dev, i32, 1, NULL, 0));
    const int64_t B = a->req_pool_indices.shape[0];
    if (B > md->capacity)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                             "%s: batch = %lld exceeds the metadata's max_batch = %d", op,
                             (long long)B, md->capacity);
    MLA_TRY(mla_check_tensor(&a->seq_lens, op, "seq_lens", dev, i32, 1, (int64_t[]){B}, 0));
    if (ragged) {
        MLA_TRY(mla_check_tensor(&a->extend_lens, op, "extend_lens", dev, i32, 1, (int64_t[]){B},
                                 0));
    } else if (a->extend_lens.data) {
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                             "%s: extend_lens must be absent for mode %s (q_len gives the new "
                             "tokens)",
                             op, mla_forward_mode_name(a->mode));
    }
    const int64_t max_reqs = a->req_to_token.shape[0], req_capacity = a->req_to_token.shape[1];
    int64_t entries;
    if (__builtin_mul_overflow(max_reqs, req_capacity, &entries) || entries > INT32_MAX)
        return mla_set_error(MLA_ERR_UNSUPPORTED, "%s: req_to_token has more than 2^31-1 entries",
                             op);
    int q_len = 0;
    if (a->mode == MLA_FORWARD_DECODE) {
        q_len = a->q_len == 0 ? 1 : a->q_len;
        if (q_len != 1)
            return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                                 "%s: q_len = %d for decode, must be 1 (use target_verify for "
                                 "more tokens)",
                                 op, a->q_len);
    } else if (a->mode == MLA_FORWARD_TARGET_VERIFY) {
        q_len = a->q_len;
        if (q_len < 1 || q_len > md->caps.max_q_len)
            return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                                 "%s: q_len = %d for target_verify is outside [1, %d]", op,
                                 a->q_len, md->caps.max_q_len);
    }
    const int on_host = mla_serving_on_host(md->ks);
    const int checks = index_checks_enabled(md, a->stream);

    /* Host values of the small index arrays: the tensors themselves on the CPU, the caller's
     * mirrors, or a copy when reading device memory is allowed. */
    int32_t *rpi_h = NULL, *sl_h = NULL, *el_h = NULL;
    const int32_t *rpi = NULL, *sl = NULL, *el = NULL;
    mla_status st = MLA_OK;
    if (on_host) {
        rpi = a->req_pool_indices.data;
        sl = a->seq_lens.data;
        el = ragged ? a->extend_lens.data : NULL;
    } else {
        if (checks && B > 0) {
            /* The device values are what the kernels use: read them, and hold the caller's
             * mirrors to them. */
            rpi_h = malloc((size_t)B * 4);
            sl = sl_h = malloc((size_t)B * 4);
            if (ragged) el = el_h = malloc((size_t)B * 4);
            if (!rpi_h || !sl || (ragged && !el))
                st = mla_set_error(MLA_ERR_OUT_OF_MEMORY, "%s: out of host memory", op);
            if (st == MLA_OK)
                st = mla_serving_to_host(md, rpi_h, a->req_pool_indices.data, (size_t)B * 4,
                                         a->stream);
            if (st == MLA_OK)
                st = mla_serving_to_host(md, sl_h, a->seq_lens.data, (size_t)B * 4, a->stream);
            if (st == MLA_OK && el_h)
                st = mla_serving_to_host(md, el_h, a->extend_lens.data, (size_t)B * 4, a->stream);
            for (int b = 0; b < B && st == MLA_OK; b++) {
                if (a->host_seq_lens && a->host_seq_lens[b] != sl_h[b])
                    st = mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                                       "%s: host_seq_lens[%d] = %d but seq_lens[%d] = %d on the "
                                       "device",
                                       op, b, a->host_seq_lens[b], b, sl_h[b]);
                else if (el_h && a->host_extend_lens && a->host_extend_lens[b] != el_h[b])
                    st = mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                                       "%s: host_extend_lens[%d] = %d but extend_lens[%d] = %d "
                                       "on the device",
                                       op, b, a->host_extend_lens[b], b, el_h[b]);
            }
            rpi = rpi_h;
        } else {
            sl = a->host_seq_lens;
            el = ragged ? a->host_extend_lens : NULL;
        }
        if (st == MLA_OK && ragged && B > 0 && (!sl || !el))
            st = mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                               "%s: mode %s on a device backend needs host_seq_lens and "
                               "host_extend_lens (index data cannot be read now: "
                               "skip_index_check or stream capture)",
                               op, mla_forward_mode_name(a->mode));
    }
    const int host_known = sl != NULL && (!ragged || el != NULL);
    int64_t max_slot = -1;
    if (st == MLA_OK && host_known) {
        device_row_reader reader = {md, a->req_to_token.data, (int)req_capacity, a->stream};
        mla_row_reader read = !checks ? NULL : on_host ? read_host_row : read_device_row;
        if (rpi) {
            st = mla_check_metadata_indices(op, a->mode, (int)B, q_len, seq_len_offset,
                                            md->caps.max_q_len, rpi, sl, el, (int)max_reqs,
                                            (int)req_capacity, md->max_context,
                                            md->cfg.page_size, read, &reader, &max_slot);
        } else { /* mirrors only (no pool indices on the host): lengths still checked */
            int32_t *zeros = calloc((size_t)B, 4);
            if (!zeros) st = mla_set_error(MLA_ERR_OUT_OF_MEMORY, "%s: out of host memory", op);
            if (st == MLA_OK)
                st = mla_check_metadata_indices(op, a->mode, (int)B, q_len, seq_len_offset,
                                                md->caps.max_q_len, zeros, sl, el, 1,
                                                (int)req_capacity, md->max_context,
                                                md->cfg.page_size, NULL, NULL, &max_slot);
            free(zeros);
        }
    }
    /* New tokens and maxima. */
    int64_t num_new = (int64_t)B * q_len;
    int max_seq = 0, max_ext = q_len;
    if (st == MLA_OK && host_known) {
        num_new = 0;
        for (int b = 0; b < B; b++) {
            const int e = ragged ? el[b] : q_len;
            num_new += e;
            if (e > max_ext) max_ext = e;
            if (sl[b] + seq_len_offset > max_seq) max_seq = sl[b] + seq_len_offset;
            md->host_seq_lens[b] = sl[b] + seq_len_offset;
            md->host_extend_lens[b] = e;
        }
        for (int b = (int)B; b < md->capacity; b++) md->host_seq_lens[b] = 0; /* inactive rows */
    } else {
        max_seq = md->max_pages_per_seq * md->cfg.page_size;
    }
    if (st == MLA_OK && num_new > INT32_MAX)
        st = mla_set_error(MLA_ERR_UNSUPPORTED, "%s: more than 2^31-1 new tokens", op);
    if (st == MLA_OK && num_new > md->slot_capacity) {
        if (md->graph_users > 0) {
            st = mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                               "%s: %lld new tokens exceed the %d slots captured by a CUDA graph",
                               op, (long long)num_new, md->slot_capacity);
        } else {
            int32_t *slots = NULL;
            st = md->ks->alloc(&md->cfg, (size_t)num_new * 4, (void **)&slots);
            if (st == MLA_OK) {
                md->ks->free(&md->cfg, md->slots);
                md->slots = slots;
                md->slot_capacity = (int)num_new;
            }
        }
    }
    free(rpi_h);
    free(sl_h);
    free(el_h);
    md->built = 0;
    if (st != MLA_OK) return st;

    mla_metadata_problem p = {
        .batch = (int)B,
        .capacity = md->capacity,
        .q_len = ragged ? 0 : q_len,
        .seq_len_offset = seq_len_offset,
        .page_size = md->cfg.page_size,
        .max_pages_per_seq = md->max_pages_per_seq,
        .req_capacity = (int)req_capacity,
        .req_to_token = a->req_to_token.data,
        .req_pool_indices = a->req_pool_indices.data,
        .seq_lens = a->seq_lens.data,
        .extend_lens = ragged ? a->extend_lens.data : NULL,
        .block_table = md->block_table,
        .seq_lens_out = md->seq_lens,
        .cu_seqlens_q = md->cu_seqlens_q,
        .cu_seqlens_kv = md->cu_seqlens_kv,
        .slots = md->slots,
        .slot_capacity = md->slot_capacity,
        .stream = a->stream,
    };
    if (on_host) {
        mla_host_build_metadata(&p);
    } else {
        if (!md->ks->run_build_metadata)
            return mla_set_error(MLA_ERR_UNSUPPORTED,
                                 "%s: backend '%s' provides no metadata kernel", op, md->ks->name);
        MLA_TRY(md->ks->run_build_metadata(&md->cfg, &p));
    }
    /* The decode modes' forwards (one per layer) share one split schedule. While a graph is
     * captured over the metadata they run max_batch rows, so that is what gets planned. */
    if (!ragged)
        MLA_TRY(mla_serving_plan_decode(md, md->graph_users > 0 ? md->capacity : (int)B, q_len,
                                        host_known ? md->host_seq_lens : NULL, a->stream));
    md->built = 1;
    md->mode = a->mode;
    md->batch = (int)B;
    md->q_len = max_ext > 0 ? max_ext : 1;
    md->num_new_tokens = (int)num_new;
    md->max_seq_len = max_seq;
    md->host_known = host_known;
    md->max_slot = max_slot;
    return MLA_OK;
}

mla_status mla_metadata_build(mla_batch_metadata *md, const mla_metadata_args *a)
{
    mla_clear_error();
    return build_metadata(md, a, 0, "mla_metadata_build");
}

mla_status mla_metadata_get(const mla_batch_metadata *md, mla_metadata_view *v)
{
    mla_clear_error();
    if (!md || !v)
        return mla_set_error(MLA_ERR_NULL_POINTER, "mla_metadata_get: %s is NULL",
                             md ? "view" : "metadata");
    memset(v, 0, sizeof *v);
    if (!md->built)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                             "mla_metadata_get: the metadata has not been built (or its last "
                             "build failed)");
    const mla_device dev = md->cfg.device;
    v->mode = md->mode;
    v->batch = md->batch;
    v->max_batch = md->capacity;
    v->q_len = md->q_len;
    v->num_new_tokens = md->num_new_tokens;
    v->max_seq_len = md->max_seq_len;
    v->max_pages_per_seq = md->max_pages_per_seq;
    v->block_table = mla_view2(md->block_table, MLA_DTYPE_I32, dev, md->capacity,
                               md->max_pages_per_seq);
    int64_t n = md->capacity;
    v->seq_lens = mla_tensor_contiguous(md->seq_lens, MLA_DTYPE_I32, dev, 1, &n);
    n = md->batch + 1;
    v->cu_seqlens_q = mla_tensor_contiguous(md->cu_seqlens_q, MLA_DTYPE_I32, dev, 1, &n);
    v->cu_seqlens_kv = mla_tensor_contiguous(md->cu_seqlens_kv, MLA_DTYPE_I32, dev, 1, &n);
    n = md->num_new_tokens;
    v->new_slots = mla_tensor_contiguous(md->slots, MLA_DTYPE_I32, dev, 1, &n);
    v->decode_plan = mla_serving_decode_plan(md, md->plan_rows, md->plan_q_len);
    v->decode_plan_batch = v->decode_plan ? md->plan_rows : 0;
    return MLA_OK;
}

/* ---- multi-step draft ---- */

struct mla_multistep_draft {
    int num_steps;
    mla_batch_metadata **steps;
};

mla_status mla_multistep_draft_create(mla_backend *be, int num_steps, int max_batch,
                                      int max_context, mla_multistep_draft **out)
{
    static const char op[] = "mla_multistep_draft_create";
    mla_clear_error();
    if (!out) return mla_set_error(MLA_ERR_NULL_POINTER, "%s: out is NULL", op);
    *out = NULL;
    if (!be) return mla_set_error(MLA_ERR_NULL_POINTER, "%s: backend is NULL", op);
    if (num_steps < 1 || num_steps > 64)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT, "%s: num_steps = %d is outside [1, 64]",
                             op, num_steps);
    mla_multistep_draft *d = calloc(1, sizeof *d);
    if (d) d->steps = calloc((size_t)num_steps, sizeof *d->steps);
    if (!d || !d->steps) {
        free(d);
        return mla_set_error(MLA_ERR_OUT_OF_MEMORY, "%s: out of host memory", op);
    }
    d->num_steps = num_steps;
    for (int s = 0; s < num_steps; s++) {
        mla_status st = metadata_create(op, be, max_batch, max_context, &d->steps[s]);
        if (st != MLA_OK) {
            mla_multistep_draft_destroy(d);
            return st;
        }
    }
    *out = d;
    return MLA_OK;
}

void mla_multistep_draft_destroy(mla_multistep_draft *d)
{
    if (!d) return;
    for (int s = 0; s < d->num_steps; s++) mla_metadata_destroy(d->steps[s]);
    free(d->steps);
    free(d);
}

mla_status mla_multistep_draft_build(mla_multistep_draft *d, const mla_metadata_args *a)
{
    static const char op[] = "mla_multistep_draft_build";
    mla_clear_error();
    if (!d || !a)
        return mla_set_error(MLA_ERR_NULL_POINTER, "%s: %s is NULL", op, d ? "args" : "draft");
    if (a->mode != MLA_FORWARD_DECODE)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                             "%s: mode = %s, the draft steps are decode steps", op,
                             mla_forward_mode_name(a->mode));
    /* Every step after the first sees one more token; a host mirror is shifted by the build. */
    for (int s = 0; s < d->num_steps; s++) MLA_TRY(build_metadata(d->steps[s], a, s, op));
    return MLA_OK;
}

mla_batch_metadata *mla_multistep_draft_metadata(mla_multistep_draft *d, int step)
{
    if (!d || step < 0 || step >= d->num_steps) return NULL;
    return d->steps[step];
}
