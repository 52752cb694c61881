/* Serving-layer test cases shared by the CPU suite (tests/test_serving.c) and the GPU suite
 * (tests/gpu/test_gpu_serving.c): batches over the fixture, the metadata view check, and one
 * forward of each mode compared with the oracle. Every tensor goes through the fixture's
 * device memory helpers, so the same code checks the CPU and the CUDA path. */
#ifndef MLA_SERVING_CASES_H
#define MLA_SERVING_CASES_H

#include "serving_fixture.h"

/* One batch: pool rows, KV lengths after the forward, new tokens per request. */
typedef struct sv_batch {
    int B;
    int rows[64], seq[64], ext[64];
} sv_batch;

/* B distinct pool rows, lengths in [min_len, max_len] (raised to the new tokens), slots
 * assigned, prefix tokens written into the cache. */
static inline void make_batch(sv_env *e, sv_batch *b, int B, int min_len, int max_len, int min_ext,
                       int max_ext)
{
    b->B = B;
    int perm[256];
    for (int i = 0; i < e->max_reqs; i++) perm[i] = i;
    for (int i = e->max_reqs - 1; i > 0; i--) {
        int j = mla_test_rand_int(0, i), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (int i = 0; i < B; i++) {
        b->rows[i] = perm[i];
        b->ext[i] = mla_test_rand_int(min_ext, max_ext);
        b->seq[i] = mla_test_rand_int(min_len, max_len);
        if (b->seq[i] < b->ext[i]) b->seq[i] = b->ext[i];
        sv_release(e, b->rows[i]);
        sv_assign(e, b->rows[i], b->seq[i]);
        sv_fill_tokens(e, b->rows[i], 0, b->seq[i] - b->ext[i]);
    }
}

/* Metadata arguments of batch b: its index arrays are uploaded into the environment's
 * device buffers (one batch at a time), with host mirrors on device backends. */
static inline mla_metadata_args batch_args(sv_env *e, const sv_batch *b, mla_forward_mode mode, int q_len)
{
    sv_upload(e, e->d_rows, b->rows, sizeof b->rows);
    sv_upload(e, e->d_seq, b->seq, sizeof b->seq);
    sv_upload(e, e->d_ext, b->ext, sizeof b->ext);
    mla_metadata_args a = {
        .mode = mode,
        .req_to_token = sv_t2(e, e->r2t_dev, MLA_DTYPE_I32, e->max_reqs, e->req_cap),
        .req_pool_indices = sv_t1(e, e->d_rows, MLA_DTYPE_I32, b->B),
        .seq_lens = sv_t1(e, e->d_seq, MLA_DTYPE_I32, b->B),
        .q_len = q_len,
    };
    if (mode == MLA_FORWARD_DRAFT_EXTEND || mode == MLA_FORWARD_EXTEND)
        a.extend_lens = sv_t1(e, e->d_ext, MLA_DTYPE_I32, b->B);
    if (e->on_gpu) {
        a.host_seq_lens = b->seq;
        a.host_extend_lens = b->ext;
    }
    return a;
}

static inline int total_new(const sv_batch *b)
{
    int n = 0;
    for (int i = 0; i < b->B; i++) n += b->ext[i];
    return n;
}

/* ---- metadata ---- */

static inline void check_view(sv_env *e, const sv_batch *b, mla_batch_metadata *md, int max_batch)
{
    mla_metadata_view v;
    CHECK_STATUS(mla_metadata_get(md, &v), MLA_OK);
    CHECK(v.batch == b->B);
    CHECK(v.max_batch == max_batch);
    CHECK(v.num_new_tokens == total_new(b));
    /* Decode modes plan their batch (no graph here); the ragged modes plan nothing. */
    const int planned = (v.mode == MLA_FORWARD_DECODE || v.mode == MLA_FORWARD_TARGET_VERIFY) && b->B > 0;
    CHECK_MSG((v.decode_plan != NULL) == planned && v.decode_plan_batch == (planned ? b->B : 0),
              "%s batch %d: view plan %p for %d rows", mla_forward_mode_name(v.mode), b->B,
              (const void *)v.decode_plan, v.decode_plan_batch);
    /* Host copies of the metadata buffers (downloaded on device backends). */
    const size_t bt_n = (size_t)max_batch * v.max_pages_per_seq, n_new = (size_t)v.num_new_tokens;
    int32_t *bt = malloc(bt_n * 4), *sl = malloc((size_t)max_batch * 4), *cq = malloc((size_t)(b->B + 1) * 4),
            *ck = malloc((size_t)(b->B + 1) * 4), *slots = malloc((n_new + 1) * 4);
    sv_download(e, bt, v.block_table.data, bt_n * 4);
    sv_download(e, sl, v.seq_lens.data, (size_t)max_batch * 4);
    sv_download(e, cq, v.cu_seqlens_q.data, (size_t)(b->B + 1) * 4);
    sv_download(e, ck, v.cu_seqlens_kv.data, (size_t)(b->B + 1) * 4);
    sv_download(e, slots, v.new_slots.data, n_new * 4);
    int max_seq = 0, nq = 0, nk = 0;
    CHECK(cq[0] == 0 && ck[0] == 0);
    for (int i = 0; i < b->B; i++) {
        const int r = b->rows[i], s = b->seq[i], x = b->ext[i];
        if (s > max_seq) max_seq = s;
        CHECK_MSG(sl[i] == s, "seq_lens[%d] = %d, expected %d", i, sl[i], s);
        for (int j = 0; j * e->ps < s; j++) {
            const int want = e->r2t[(int64_t)r * e->req_cap + j * e->ps] / e->ps;
            CHECK_MSG(bt[(int64_t)i * v.max_pages_per_seq + j] == want,
                      "block_table[%d][%d] = %d, expected page %d", i, j,
                      bt[(int64_t)i * v.max_pages_per_seq + j], want);
        }
        for (int j = 0; j < x; j++)
            CHECK_MSG(slots[nq + j] == e->r2t[(int64_t)r * e->req_cap + s - x + j],
                      "new_slots[%d] = %d, expected %d", nq + j, slots[nq + j],
                      e->r2t[(int64_t)r * e->req_cap + s - x + j]);
        nq += x;
        nk += s;
        CHECK_MSG(cq[i + 1] == nq && ck[i + 1] == nk, "cu_seqlens at %d: q %d/%d kv %d/%d", i + 1,
                  cq[i + 1], nq, ck[i + 1], nk);
    }
    for (int i = b->B; i < max_batch; i++) CHECK_MSG(sl[i] == 0, "inactive row %d has seq_len %d", i, sl[i]);
    CHECK_MSG(v.max_seq_len == max_seq, "max_seq_len %d, expected %d", v.max_seq_len, max_seq);
    free(bt);
    free(sl);
    free(cq);
    free(ck);
    free(slots);
}


/* Runs the forward of `mode` over batch b (new tokens b.ext, written through the call) and
 * compares out, lse and the cache with the oracle. Decode and target_verify run it for two
 * layers of one build (the second with a fresh query and no cache write), as a model does:
 * they share the build's decode plan. */
static inline void run_decode_mode(sv_env *e, sv_batch *b, mla_forward_mode mode, int q_len,
                            int quantize_q, int with_lse, int max_batch)
{
    const int T = total_new(b), H = e->H, D = e->D, R = e->R;
    mla_batch_metadata *md = NULL;
    CHECK_STATUS(mla_metadata_create(e->be, max_batch, e->req_cap, &md), MLA_OK);
    mla_metadata_args ma = batch_args(e, b, mode, q_len);
    CHECK_STATUS(mla_metadata_build(md, &ma), MLA_OK);
    uint16_t *q = malloc((size_t)T * H * D * 2), *ckv = malloc((size_t)T * R * 2),
             *kpe = malloc((size_t)T * e->P * 2), *out = malloc((size_t)T * H * R * 2);
    float *lse = malloc((size_t)T * H * 4);
    int32_t *slots = malloc((size_t)(T ? T : 1) * 4);
    for (int i = 0, n = 0; i < b->B; i++)
        for (int j = 0; j < b->ext[i]; j++, n++)
            slots[n] = e->r2t[(int64_t)b->rows[i] * e->req_cap + b->seq[i] - b->ext[i] + j];
    sv_make_latent(e, T, slots, ckv, kpe);
    void *dq = sv_alloc(e, (size_t)T * H * D * 2), *dckv = sv_dev_copy(e, ckv, (size_t)T * R * 2),
         *dkpe = sv_dev_copy(e, kpe, (size_t)T * e->P * 2), *dout = sv_alloc(e, (size_t)T * H * R * 2),
         *dlse = sv_alloc(e, (size_t)T * H * 4);
    double *ref = malloc((size_t)T * H * R * sizeof *ref), *ref_lse = malloc((size_t)T * H * sizeof *ref_lse);
    double *qv = malloc((size_t)H * D * sizeof *qv);
    const int layers = mode == MLA_FORWARD_DRAFT_EXTEND ? 1 : 2;
    for (int layer = 0; layer < layers; layer++) {
        oracle_fill_bf16(q, NULL, (int64_t)T * H * D, -1.0f, 1.0f);
        sv_upload(e, dq, q, (size_t)T * H * D * 2);
        sv_poison(e, dout, (size_t)T * H * R * 2);
        sv_poison(e, dlse, (size_t)T * H * 4);
        mla_forward_args fa = {
            .q = sv_t3(e, dq, MLA_DTYPE_BF16, T, H, D),
            .out = sv_t3(e, dout, MLA_DTYPE_BF16, T, H, R),
            .kv_cache = sv_cache_tensor(e),
            .quantize_q = quantize_q,
        };
        if (layer == 0) { /* the new tokens enter the cache once */
            fa.c_kv = sv_t2(e, dckv, MLA_DTYPE_BF16, T, R);
            fa.k_pe = sv_t2(e, dkpe, MLA_DTYPE_BF16, T, e->P);
        }
        if (with_lse) fa.lse = sv_t2(e, dlse, MLA_DTYPE_F32, T, H);
        mla_status st = mode == MLA_FORWARD_DECODE          ? mla_forward_decode(e->be, md, &fa)
                        : mode == MLA_FORWARD_TARGET_VERIFY ? mla_forward_target_verify(e->be, md, &fa)
                                                            : mla_forward_draft_extend(e->be, md, &fa);
        CHECK_STATUS(st, MLA_OK);
        sv_download(e, out, dout, (size_t)T * H * R * 2);
        sv_download(e, lse, dlse, (size_t)T * H * 4);
        sv_check_cache(e, mla_forward_mode_name(mode));
        /* Oracle: token j of request i sees its first seq - ext + j + 1 tokens. */
        const double qs = e->cfg.scales.q_scale;
        const double bmm1 = e->cfg.scales.softmax_scale, bmm2 = e->cfg.scales.o_scale;
        for (int i = 0, n = 0; i < b->B; i++)
            for (int j = 0; j < b->ext[i]; j++, n++) {
                for (int k = 0; k < H * D; k++) {
                    double x = oracle_bf16_value(q[(int64_t)n * H * D + k]);
                    qv[k] = quantize_q ? oracle_fp8_value(oracle_fp8_from_double(x / qs)) * qs : x;
                }
                sv_oracle_decode_token(e, b->rows[i], b->seq[i] - b->ext[i] + j + 1, qv, bmm1, bmm2,
                                       ref + (int64_t)n * H * R, ref_lse + (int64_t)n * H);
            }
        oracle_report rep = oracle_compare_bf16(out, ref, (int64_t)T * H * R, SV_OUT_TOL);
        if (!rep.ok) oracle_print_report(mla_forward_mode_name(mode), &rep);
        CHECK_MSG(rep.ok, "%s (q_len %d, quantize_q %d, layer %d): output differs from the oracle",
                  mla_forward_mode_name(mode), q_len, quantize_q, layer);
        if (with_lse) {
            rep = oracle_compare_f32(lse, ref_lse, (int64_t)T * H, SV_LSE_TOL);
            if (!rep.ok) oracle_print_report("lse", &rep);
            CHECK_MSG(rep.ok, "%s layer %d: lse differs from the oracle", mla_forward_mode_name(mode), layer);
        }
    }
    free(q);
    free(ckv);
    free(kpe);
    free(out);
    free(lse);
    free(slots);
    free(ref);
    free(ref_lse);
    free(qv);
    sv_free(e, dq);
    sv_free(e, dckv);
    sv_free(e, dkpe);
    sv_free(e, dout);
    sv_free(e, dlse);
    mla_metadata_destroy(md);
}


typedef struct extend_model {
    sv_env *e;
    int calls;
    int fail_at; /* chunk index whose callback fails, -1 never */
    const sv_batch *b;
    int chunk;
} extend_model;

static inline mla_status up_project_chunk(void *user, const mla_prefix_chunk *c)
{
    extend_model *m = user;
    sv_env *e = m->e;
    m->calls++;
    if (c->chunk_index == m->fail_at) return MLA_ERR_INTERNAL;
    CHECK(c->latent.shape[0] == c->num_rows && c->latent.shape[1] == e->D);
    CHECK(c->host_cu_rows[0] == 0 && c->host_cu_rows[c->batch] == c->num_rows);
    /* Host copies (the model's GEMM runs on the host here; device buffers are copied). */
    const size_t n = (size_t)c->num_rows;
    uint16_t *lat = malloc((n + 1) * e->D * 2), *kh = malloc((n + 1) * e->H * e->Dqk * 2),
             *vh = malloc((n + 1) * e->H * e->Dv * 2);
    sv_download(e, lat, c->latent.data, n * e->D * 2);
    uint16_t want[1024];
    for (int i = 0; i < c->batch; i++)
        for (int row = c->host_cu_rows[i]; row < c->host_cu_rows[i + 1]; row++) {
            const int t = c->host_token_start[i] + row - c->host_cu_rows[i];
            CHECK(t == c->chunk_index * m->chunk + row - c->host_cu_rows[i]);
            sv_expected_latent(e, m->b->rows[i], t, want);
            CHECK_MSG(memcmp(want, lat + (int64_t)row * e->D, (size_t)e->D * 2) == 0,
                      "gathered latent of request %d token %d differs", i, t);
        }
    for (int row = 0; row < c->num_rows; row++)
        sv_up_project(e, lat + (int64_t)row * e->D, kh + (int64_t)row * e->H * e->Dqk, vh + (int64_t)row * e->H * e->Dv);
    sv_upload(e, c->k.data, kh, n * e->H * e->Dqk * 2);
    sv_upload(e, c->v.data, vh, n * e->H * e->Dv * 2);
    free(lat);
    free(kh);
    free(vh);
    return MLA_OK;
}

/* Extend oracle: new token j of request i attends the up-projected prefix (from the expected
 * cache) and the new tokens 0..j. */
static inline void extend_oracle(sv_env *e, const sv_batch *b, const uint16_t *q, const uint16_t *k,
                          const uint16_t *v, double *out, double *lse)
{
    const int H = e->H, Dqk = e->Dqk, Dv = e->Dv;
    const double scale = e->cfg.scales.softmax_scale, o_scale = e->cfg.scales.o_scale;
    uint16_t lat[1024];
    for (int i = 0, n0 = 0; i < b->B; i++) {
        const int pre = b->seq[i] - b->ext[i], x = b->ext[i];
        uint16_t *pk = malloc((size_t)(pre + 1) * H * Dqk * 2), *pv = malloc((size_t)(pre + 1) * H * Dv * 2);
        for (int t = 0; t < pre; t++) {
            sv_expected_latent(e, b->rows[i], t, lat);
            sv_up_project(e, lat, pk + (int64_t)t * H * Dqk, pv + (int64_t)t * H * Dv);
        }
        double *s = malloc((size_t)(pre + x + 1) * sizeof *s);
        for (int j = 0; j < x; j++)
            for (int h = 0; h < H; h++) {
                const uint16_t *qh = q + ((int64_t)(n0 + j) * H + h) * Dqk;
                const int nk = pre + j + 1;
                double m = -INFINITY;
                for (int t = 0; t < nk; t++) {
                    const uint16_t *kh = t < pre ? pk + ((int64_t)t * H + h) * Dqk
                                                 : k + ((int64_t)(n0 + t - pre) * H + h) * Dqk;
                    double acc = 0;
                    for (int d = 0; d < Dqk; d++) acc += oracle_bf16_value(qh[d]) * oracle_bf16_value(kh[d]);
                    s[t] = acc * scale;
                    if (s[t] > m) m = s[t];
                }
                double sum = 0;
                for (int t = 0; t < nk; t++) sum += exp(s[t] - m);
                for (int d = 0; d < Dv; d++) {
                    double acc = 0;
                    for (int t = 0; t < nk; t++) {
                        const uint16_t *vh = t < pre ? pv + ((int64_t)t * H + h) * Dv
                                                     : v + ((int64_t)(n0 + t - pre) * H + h) * Dv;
                        acc += exp(s[t] - m) * oracle_bf16_value(vh[d]);
                    }
                    out[((int64_t)(n0 + j) * H + h) * Dv + d] = acc / sum * o_scale;
                }
                lse[(int64_t)(n0 + j) * H + h] = m + log(sum);
            }
        n0 += x;
        free(pk);
        free(pv);
        free(s);
    }
}

/* use_buffers: prefix K/V passed whole instead of by callback. */
static inline void run_extend(sv_env *e, sv_batch *b, int chunk, int use_buffers, int with_lse)
{
    const int T = total_new(b), H = e->H, Dqk = e->Dqk, Dv = e->Dv;
    mla_batch_metadata *md = NULL;
    CHECK_STATUS(mla_metadata_create(e->be, b->B, e->req_cap, &md), MLA_OK);
    mla_metadata_args ma = batch_args(e, b, MLA_FORWARD_EXTEND, 0);
    CHECK_STATUS(mla_metadata_build(md, &ma), MLA_OK);
    uint16_t *q = malloc((size_t)(T + 1) * H * Dqk * 2), *k = malloc((size_t)(T + 1) * H * Dqk * 2),
             *v = malloc((size_t)(T + 1) * H * Dv * 2), *out = malloc((size_t)(T + 1) * H * Dv * 2),
             *ckv = malloc((size_t)(T + 1) * e->R * 2), *kpe = malloc((size_t)(T + 1) * e->P * 2);
    float *lse = malloc((size_t)(T + 1) * H * 4);
    int32_t *slots = malloc((size_t)(T + 1) * 4);
    oracle_fill_bf16(q, NULL, (int64_t)T * H * Dqk, -1.0f, 1.0f);
    oracle_fill_bf16(k, NULL, (int64_t)T * H * Dqk, -1.0f, 1.0f);
    oracle_fill_bf16(v, NULL, (int64_t)T * H * Dv, -1.0f, 1.0f);
    for (int i = 0, n = 0; i < b->B; i++)
        for (int j = 0; j < b->ext[i]; j++, n++)
            slots[n] = e->r2t[(int64_t)b->rows[i] * e->req_cap + b->seq[i] - b->ext[i] + j];
    sv_make_latent(e, T, slots, ckv, kpe);
    void *dq = sv_dev_copy(e, q, (size_t)(T + 1) * H * Dqk * 2), *dk = sv_dev_copy(e, k, (size_t)(T + 1) * H * Dqk * 2),
         *dv = sv_dev_copy(e, v, (size_t)(T + 1) * H * Dv * 2), *dckv = sv_dev_copy(e, ckv, (size_t)(T + 1) * e->R * 2),
         *dkpe = sv_dev_copy(e, kpe, (size_t)(T + 1) * e->P * 2), *dout = sv_alloc(e, (size_t)(T + 1) * H * Dv * 2),
         *dlse = sv_alloc(e, (size_t)(T + 1) * H * 4), *dpk = NULL, *dpv = NULL;
    sv_poison(e, dout, (size_t)(T + 1) * H * Dv * 2);
    sv_poison(e, dlse, (size_t)(T + 1) * H * 4);
    extend_model model = {.e = e, .fail_at = -1, .b = b, .chunk = chunk ? chunk : 4096};
    mla_forward_args fa = {
        .q = sv_t3(e, dq, MLA_DTYPE_BF16, T, H, Dqk),
        .k = sv_t3(e, dk, MLA_DTYPE_BF16, T, H, Dqk),
        .v = sv_t3(e, dv, MLA_DTYPE_BF16, T, H, Dv),
        .out = sv_t3(e, dout, MLA_DTYPE_BF16, T, H, Dv),
        .c_kv = sv_t2(e, dckv, MLA_DTYPE_BF16, T, e->R),
        .k_pe = sv_t2(e, dkpe, MLA_DTYPE_BF16, T, e->P),
        .kv_cache = sv_cache_tensor(e),
        .prefix_chunk_size = chunk,
    };
    if (with_lse) fa.lse = sv_t2(e, dlse, MLA_DTYPE_F32, T, H);
    int total_prefix = 0, max_prefix = 0;
    for (int i = 0; i < b->B; i++) {
        total_prefix += b->seq[i] - b->ext[i];
        if (b->seq[i] - b->ext[i] > max_prefix) max_prefix = b->seq[i] - b->ext[i];
    }
    uint16_t *pk = NULL, *pv = NULL;
    if (use_buffers) {
        pk = malloc((size_t)(total_prefix + 1) * H * Dqk * 2);
        pv = malloc((size_t)(total_prefix + 1) * H * Dv * 2);
        uint16_t lat[1024];
        for (int i = 0, n = 0; i < b->B; i++)
            for (int t = 0; t < b->seq[i] - b->ext[i]; t++, n++) {
                sv_expected_latent(e, b->rows[i], t, lat);
                sv_up_project(e, lat, pk + (int64_t)n * H * Dqk, pv + (int64_t)n * H * Dv);
            }
        dpk = sv_dev_copy(e, pk, (size_t)(total_prefix + 1) * H * Dqk * 2);
        dpv = sv_dev_copy(e, pv, (size_t)(total_prefix + 1) * H * Dv * 2);
        fa.prefix_k = sv_t3(e, dpk, MLA_DTYPE_BF16, total_prefix, H, Dqk);
        fa.prefix_v = sv_t3(e, dpv, MLA_DTYPE_BF16, total_prefix, H, Dv);
    } else {
        fa.prefix_kv = up_project_chunk;
        fa.prefix_kv_user = &model;
    }
    CHECK_STATUS(mla_forward_extend(e->be, md, &fa), MLA_OK);
    /* A batch without new tokens (random extend lengths can all be 0) has no queries, so the
     * call asks for no prefix chunk. */
    const int expect_calls = T > 0 ? (max_prefix + model.chunk - 1) / model.chunk : 0;
    if (!use_buffers)
        CHECK_MSG(model.calls == expect_calls,
                  "callback ran %d times for prefix %d in chunks of %d (%d new tokens), expected %d",
                  model.calls, max_prefix, model.chunk, T, expect_calls);
    sv_download(e, out, dout, (size_t)T * H * Dv * 2);
    sv_download(e, lse, dlse, (size_t)T * H * 4);
    sv_check_cache(e, "extend");
    double *ref = malloc((size_t)(T + 1) * H * Dv * sizeof *ref), *ref_lse = malloc((size_t)(T + 1) * H * sizeof *ref_lse);
    extend_oracle(e, b, q, k, v, ref, ref_lse);
    oracle_report rep = oracle_compare_bf16(out, ref, (int64_t)T * H * Dv, SV_OUT_TOL);
    if (!rep.ok) oracle_print_report("extend out", &rep);
    CHECK_MSG(rep.ok, "extend (chunk %d, buffers %d): output differs from the oracle", chunk, use_buffers);
    if (with_lse) {
        rep = oracle_compare_f32(lse, ref_lse, (int64_t)T * H, SV_LSE_TOL);
        if (!rep.ok) oracle_print_report("extend lse", &rep);
        CHECK_MSG(rep.ok, "extend (chunk %d): lse differs from the oracle", chunk);
    }
    /* A failing callback stops the call with its status and a message naming the chunk. */
    if (!use_buffers && expect_calls > 0) {
        model.fail_at = 0;
        CHECK_STATUS(mla_forward_extend(e->be, md, &fa), MLA_ERR_INTERNAL);
        CHECK(strstr(mla_last_error(), "prefix_kv") != NULL);
    }
    free(q);
    free(k);
    free(v);
    free(out);
    free(ckv);
    free(kpe);
    free(lse);
    free(slots);
    free(ref);
    free(ref_lse);
    free(pk);
    free(pv);
    void *dev[] = {dq, dk, dv, dckv, dkpe, dout, dlse, dpk, dpv};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) sv_free(e, dev[i]);
    mla_metadata_destroy(md);
}


#endif
