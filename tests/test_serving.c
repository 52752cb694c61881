/* Serving layer on the CPU backend: metadata from req_to_token (ragged batches, page
 * boundaries, inactive rows), every forward mode against a double oracle that walks
 * req_to_token itself, the cache after every write, multi-step draft, graph replay
 * equality, gather, bad input, and create/destroy cycles (leaks show under ASan). */

#include "serving_cases.h"

static const mla_device cpu_dev = {MLA_DEVICE_CPU, 0};

TEST(serving_metadata_ragged_and_page_boundaries)
{
    sv_env e;
    if (sv_init(&e, "cpu", cpu_dev, 0, 32, MLA_DTYPE_FP8_E4M3, 512, 24, 640)) return;
    mla_batch_metadata *md = NULL;
    CHECK_STATUS(mla_metadata_create(e.be, 12, 640, &md), MLA_OK);
    /* Lengths on and around page boundaries, then random ones. */
    static const int edge[] = {1, 31, 32, 33, 64, 65, 95, 96, 97, 640};
    const mla_forward_mode modes[] = {MLA_FORWARD_DECODE, MLA_FORWARD_TARGET_VERIFY,
                                      MLA_FORWARD_DRAFT_EXTEND, MLA_FORWARD_EXTEND};
    for (int round = 0; round < 8; round++) {
        const mla_forward_mode mode = modes[round % 4];
        const int q_len = mode == MLA_FORWARD_TARGET_VERIFY ? mla_test_rand_int(1, 8) : 1;
        sv_batch b;
        const int B = mla_test_rand_int(1, 12);
        int lo = 1, hi = 1;
        if (mode == MLA_FORWARD_DRAFT_EXTEND) hi = 8;
        if (mode == MLA_FORWARD_EXTEND) lo = 0, hi = 40;
        if (mode == MLA_FORWARD_TARGET_VERIFY) lo = hi = q_len;
        make_batch(&e, &b, B, 1, 640, lo, hi);
        if (round < 4)
            for (int i = 0; i < B && i < 10; i++) {
                b.seq[i] = edge[(i + round) % 10] < b.ext[i] ? b.ext[i] : edge[(i + round) % 10];
                sv_assign(&e, b.rows[i], b.seq[i]);
            }
        /* Poison the metadata's buffers: the build must rewrite every part that is read. */
        mla_metadata_view v;
        if (round > 0 && mla_metadata_get(md, &v) == MLA_OK) {
            sv_poison(&e, v.block_table.data, (size_t)12 * v.max_pages_per_seq * 4);
            sv_poison(&e, v.seq_lens.data, 12 * 4);
        }
        mla_metadata_args a = batch_args(&e, &b, mode, q_len);
        CHECK_STATUS(mla_metadata_build(md, &a), MLA_OK);
        check_view(&e, &b, md, 12);
    }
    /* An empty batch is valid: every row inactive. */
    sv_batch empty = {.B = 0};
    mla_metadata_args a = batch_args(&e, &empty, MLA_FORWARD_DECODE, 1);
    CHECK_STATUS(mla_metadata_build(md, &a), MLA_OK);
    check_view(&e, &empty, md, 12);
    mla_metadata_destroy(md);
    sv_destroy(&e);
}

TEST(serving_metadata_rejects_bad_input)
{
    sv_env e;
    if (sv_init(&e, "cpu", cpu_dev, 0, 32, MLA_DTYPE_FP8_E4M3, 64, 8, 256)) return;
    mla_batch_metadata *md = NULL;
    CHECK_STATUS(mla_metadata_create(e.be, 4, 256, &md), MLA_OK);
    CHECK_STATUS(mla_metadata_create(e.be, 0, 256, &(mla_batch_metadata *){NULL}), MLA_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mla_metadata_create(e.be, 4, 0, &(mla_batch_metadata *){NULL}), MLA_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mla_metadata_create(NULL, 4, 8, &(mla_batch_metadata *){NULL}), MLA_ERR_NULL_POINTER);
    CHECK_STATUS(mla_metadata_create(e.be, 4, 8, NULL), MLA_ERR_NULL_POINTER);
    sv_batch big;
    make_batch(&e, &big, 5, 1, 10, 1, 1); /* 5 > max_batch 4 */
    sv_batch b;
    make_batch(&e, &b, 3, 40, 100, 1, 1);
    mla_metadata_args good = batch_args(&e, &b, MLA_FORWARD_DECODE, 1);
    CHECK_STATUS(mla_metadata_build(md, &good), MLA_OK);
    CHECK_STATUS(mla_metadata_build(NULL, &good), MLA_ERR_NULL_POINTER);
    CHECK_STATUS(mla_metadata_build(md, NULL), MLA_ERR_NULL_POINTER);

    mla_metadata_args a = good;
    a.mode = (mla_forward_mode)9;
    CHECK_STATUS(mla_metadata_build(md, &a), MLA_ERR_INVALID_ARGUMENT);
    /* A failed build leaves the metadata unusable until the next good one. */
    mla_metadata_view v;
    CHECK_STATUS(mla_metadata_get(md, &v), MLA_ERR_INVALID_ARGUMENT);
    a = good;
    a.q_len = 2; /* decode is one token */
    CHECK_STATUS(mla_metadata_build(md, &a), MLA_ERR_INVALID_ARGUMENT);
    a = good;
    a.mode = MLA_FORWARD_TARGET_VERIFY;
    a.q_len = 9;
    CHECK_STATUS(mla_metadata_build(md, &a), MLA_ERR_INVALID_ARGUMENT);
    a = good;
    a.extend_lens = a.seq_lens; /* not for decode */
    CHECK_STATUS(mla_metadata_build(md, &a), MLA_ERR_INVALID_ARGUMENT);
    a = good;
    a.mode = MLA_FORWARD_EXTEND; /* needs extend_lens */
    CHECK_STATUS(mla_metadata_build(md, &a), MLA_ERR_NULL_POINTER);
    a = good;
    a.seq_lens.dtype = MLA_DTYPE_I64;
    CHECK_STATUS(mla_metadata_build(md, &a), MLA_ERR_SHAPE_MISMATCH);
    a = good;
    a.seq_lens.shape[0] = 2;
    CHECK_STATUS(mla_metadata_build(md, &a), MLA_ERR_SHAPE_MISMATCH);

    a = batch_args(&e, &big, MLA_FORWARD_DECODE, 1);
    CHECK_STATUS(mla_metadata_build(md, &a), MLA_ERR_INVALID_ARGUMENT);

    sv_batch bad = b;
    bad.rows[1] = 8; /* pool has 8 rows */
    a = batch_args(&e, &bad, MLA_FORWARD_DECODE, 1);
    CHECK_STATUS(mla_metadata_build(md, &a), MLA_ERR_OUT_OF_RANGE);
    bad = b;
    bad.seq[2] = 257; /* beyond max_context and req_to_token */
    a = batch_args(&e, &bad, MLA_FORWARD_DECODE, 1);
    CHECK_STATUS(mla_metadata_build(md, &a), MLA_ERR_OUT_OF_RANGE);
    bad = b;
    bad.seq[0] = 0; /* a decode token needs a KV position */
    a = batch_args(&e, &bad, MLA_FORWARD_DECODE, 1);
    CHECK_STATUS(mla_metadata_build(md, &a), MLA_ERR_OUT_OF_RANGE);
    bad = b;
    bad.ext[0] = 9; /* draft_extend: at most max_q_len */
    a = batch_args(&e, &bad, MLA_FORWARD_DRAFT_EXTEND, 0);
    CHECK_STATUS(mla_metadata_build(md, &a), MLA_ERR_OUT_OF_RANGE);
    bad.ext[0] = 0;
    CHECK_STATUS(mla_metadata_build(md, &a), MLA_ERR_OUT_OF_RANGE);
    bad = b;
    bad.ext[1] = -1;
    a = batch_args(&e, &bad, MLA_FORWARD_EXTEND, 0);
    CHECK_STATUS(mla_metadata_build(md, &a), MLA_ERR_OUT_OF_RANGE);

    /* req_to_token contents: misaligned slot, negative slot, a page-aligned run split over two
     * pages. Each is refused, and the message names the request's pool row. */
    const int r = b.rows[1];
    int32_t *row = e.r2t + (int64_t)r * e.req_cap;
    const int32_t saved5 = row[5], saved33 = row[33];
    row[5] = row[5] + 1;
    sv_upload(&e, e.r2t_dev, e.r2t, (size_t)e.max_reqs * e.req_cap * 4);
    CHECK_STATUS(mla_metadata_build(md, &good), MLA_ERR_OUT_OF_RANGE);
    CHECK(strstr(mla_last_error(), "page-aligned") != NULL);
    row[5] = -1;
    sv_upload(&e, e.r2t_dev, e.r2t, (size_t)e.max_reqs * e.req_cap * 4);
    CHECK_STATUS(mla_metadata_build(md, &good), MLA_ERR_OUT_OF_RANGE);
    row[5] = saved5;
    row[33] = ((row[32] / 32 + 1) % 64) * 32 + 1; /* offset right, page wrong */
    sv_upload(&e, e.r2t_dev, e.r2t, (size_t)e.max_reqs * e.req_cap * 4);
    CHECK_STATUS(mla_metadata_build(md, &good), MLA_ERR_OUT_OF_RANGE);
    row[33] = saved33;
    sv_upload(&e, e.r2t_dev, e.r2t, (size_t)e.max_reqs * e.req_cap * 4);
    CHECK_STATUS(mla_metadata_build(md, &good), MLA_OK);
    mla_metadata_destroy(md);
    sv_destroy(&e);
}

/* ---- decode modes against the oracle ---- */

TEST(serving_forward_decode_vs_oracle)
{
    const mla_dtype kv[] = {MLA_DTYPE_FP8_E4M3, MLA_DTYPE_BF16};
    for (int k = 0; k < 2; k++) {
        sv_env e;
        if (sv_init(&e, "cpu", cpu_dev, 0, k ? 64 : 32, kv[k], 256, 24, 700)) return;
        for (int quant = 0; quant < 2; quant++) {
            sv_batch b;
            make_batch(&e, &b, mla_test_rand_int(1, 9), 1, 700, 1, 1);
            run_decode_mode(&e, &b, MLA_FORWARD_DECODE, 1, quant, quant == 0, 9);
        }
        sv_destroy(&e);
    }
}

TEST(serving_forward_target_verify_vs_oracle)
{
    sv_env e;
    if (sv_init(&e, "cpu", cpu_dev, 0, 32, MLA_DTYPE_FP8_E4M3, 400, 24, 500)) return;
    const int q_lens[] = {1, 2, 5, 8};
    for (int k = 0; k < 4; k++) {
        sv_batch b;
        const int L = q_lens[k];
        make_batch(&e, &b, mla_test_rand_int(1, 6), L, 500, L, L);
        run_decode_mode(&e, &b, MLA_FORWARD_TARGET_VERIFY, L, k == 2, 1, 6);
    }
    sv_destroy(&e);
}

TEST(serving_forward_draft_extend_vs_oracle)
{
    sv_env e;
    if (sv_init(&e, "cpu", cpu_dev, 0, 32, MLA_DTYPE_FP8_E4M3, 400, 24, 500)) return;
    for (int k = 0; k < 4; k++) {
        sv_batch b;
        make_batch(&e, &b, mla_test_rand_int(1, 7), 1, 500, 1, k == 3 ? 1 : 8);
        if (k == 0) b.ext[0] = 1; /* ragged: 1 next to longer ones */
        run_decode_mode(&e, &b, MLA_FORWARD_DRAFT_EXTEND, 0, k == 1, k != 2, 7);
    }
    /* All requests with the same count: runs unpadded. */
    sv_batch b;
    make_batch(&e, &b, 4, 10, 300, 3, 3);
    run_decode_mode(&e, &b, MLA_FORWARD_DRAFT_EXTEND, 0, 0, 1, 4);
    sv_destroy(&e);
}

/* ---- extend (chunked prefix) ---- */

TEST(serving_forward_extend_chunked_prefix_vs_oracle)
{
    sv_env e;
    if (sv_init(&e, "cpu", cpu_dev, 0, 32, MLA_DTYPE_FP8_E4M3, 300, 24, 300)) return;
    const int chunks[] = {7, 32, 100, 0};
    for (int k = 0; k < 4; k++) {
        sv_batch b;
        make_batch(&e, &b, mla_test_rand_int(1, 5), 1, 200, 0, 24);
        if (k == 0) { /* a request without prefix and one without new tokens */
            b.ext[0] = b.seq[0];
            if (b.B > 1) b.ext[1] = 0;
        }
        run_extend(&e, &b, chunks[k], 0, k != 1);
    }
    sv_batch b;
    make_batch(&e, &b, 4, 1, 150, 1, 20);
    run_extend(&e, &b, 0, 1, 1);
    /* No prefix anywhere: plain causal prefill, no callback needed. */
    make_batch(&e, &b, 3, 1, 20, 20, 20);
    for (int i = 0; i < 3; i++) b.ext[i] = b.seq[i];
    run_extend(&e, &b, 16, 0, 1);
    sv_destroy(&e);
}

TEST(serving_gather_cache_vs_expected)
{
    sv_env e;
    if (sv_init(&e, "cpu", cpu_dev, 0, 32, MLA_DTYPE_FP8_E4M3, 128, 8, 300)) return;
    sv_batch b;
    make_batch(&e, &b, 5, 1, 300, 0, 0);
    mla_batch_metadata *md = NULL;
    CHECK_STATUS(mla_metadata_create(e.be, 5, 300, &md), MLA_OK);
    mla_metadata_args ma = batch_args(&e, &b, MLA_FORWARD_EXTEND, 0);
    CHECK_STATUS(mla_metadata_build(md, &ma), MLA_OK);
    mla_metadata_view v;
    CHECK_STATUS(mla_metadata_get(md, &v), MLA_OK);
    int32_t start[5], cu[6] = {0};
    for (int i = 0; i < 5; i++) {
        start[i] = mla_test_rand_int(0, b.seq[i]);
        cu[i + 1] = cu[i] + mla_test_rand_int(0, b.seq[i] - start[i]);
    }
    uint16_t *out = malloc((size_t)(cu[5] + 1) * e.D * 2), want[1024];
    memset(out, 0xff, (size_t)(cu[5] + 1) * e.D * 2);
    mla_gather_cache_args g = {
        .kv_cache = sv_cache_tensor(&e),
        .block_table = sv_t2(&e, v.block_table.data, MLA_DTYPE_I32, 5, v.max_pages_per_seq),
        .token_start = sv_t1(&e, start, MLA_DTYPE_I32, 5),
        .cu_rows = sv_t1(&e, cu, MLA_DTYPE_I32, 6),
        .out = sv_t2(&e, out, MLA_DTYPE_BF16, cu[5], e.D),
    };
    CHECK_STATUS(mla_gather_cache(e.be, &g), MLA_OK);
    for (int i = 0; i < 5; i++)
        for (int r = cu[i]; r < cu[i + 1]; r++) {
            sv_expected_latent(&e, b.rows[i], start[i] + r - cu[i], want);
            CHECK_MSG(memcmp(want, out + (int64_t)r * e.D, (size_t)e.D * 2) == 0,
                      "gather row %d (request %d) differs", r, i);
        }
    /* Past the block table, a decreasing cu_rows, a page out of range: refused. */
    int32_t bad_start[5];
    memcpy(bad_start, start, sizeof start);
    bad_start[2] = v.max_pages_per_seq * e.ps;
    g.token_start = sv_t1(&e, bad_start, MLA_DTYPE_I32, 5);
    CHECK_STATUS(mla_gather_cache(e.be, &g), cu[3] > cu[2] ? MLA_ERR_OUT_OF_RANGE : MLA_OK);
    g.token_start = sv_t1(&e, start, MLA_DTYPE_I32, 5);
    int32_t bad_cu[6];
    memcpy(bad_cu, cu, sizeof cu);
    bad_cu[0] = 1;
    g.cu_rows = sv_t1(&e, bad_cu, MLA_DTYPE_I32, 6);
    CHECK_STATUS(mla_gather_cache(e.be, &g), MLA_ERR_OUT_OF_RANGE);
    g.cu_rows = sv_t1(&e, cu, MLA_DTYPE_I32, 6);
    g.kv_cache.shape[0] = 1; /* pages beyond a 1-page cache */
    CHECK_STATUS(mla_gather_cache(e.be, &g), cu[5] > 0 ? MLA_ERR_OUT_OF_RANGE : MLA_OK);
    free(out);
    mla_metadata_destroy(md);
    sv_destroy(&e);
}

/* ---- multi-step draft ---- */

TEST(serving_multistep_draft_vs_oracle)
{
    sv_env e;
    if (sv_init(&e, "cpu", cpu_dev, 0, 32, MLA_DTYPE_FP8_E4M3, 256, 16, 400)) return;
    enum { STEPS = 3 };
    mla_multistep_draft *d = NULL;
    CHECK_STATUS(mla_multistep_draft_create(e.be, 0, 4, 400, &d), MLA_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mla_multistep_draft_create(e.be, STEPS, 6, 400, &d), MLA_OK);
    CHECK(mla_multistep_draft_metadata(d, STEPS) == NULL);
    CHECK(mla_multistep_draft_metadata(d, -1) == NULL);
    sv_batch b;
    make_batch(&e, &b, 5, 1, 380, 1, 1);
    /* Slots for every draft position exist up front (the engine allocates them). */
    for (int i = 0; i < b.B; i++) sv_assign(&e, b.rows[i], b.seq[i] + STEPS - 1);
    mla_metadata_args a = batch_args(&e, &b, MLA_FORWARD_DECODE, 1);
    CHECK_STATUS(mla_multistep_draft_build(d, &a), MLA_OK);
    a.mode = MLA_FORWARD_TARGET_VERIFY;
    CHECK_STATUS(mla_multistep_draft_build(d, &a), MLA_ERR_INVALID_ARGUMENT);
    for (int s = 0; s < STEPS; s++) {
        mla_batch_metadata *md = mla_multistep_draft_metadata(d, s);
        sv_batch step = b;
        for (int i = 0; i < b.B; i++) step.seq[i] = b.seq[i] + s;
        check_view(&e, &step, md, 6);
        /* Step s decodes draft token s: run it as the oracle expects. */
        const int T = b.B, H = e.H, D = e.D, R = e.R;
        uint16_t *q = malloc((size_t)T * H * D * 2), *ckv = malloc((size_t)T * R * 2),
                 *kpe = malloc((size_t)T * e.P * 2), *out = malloc((size_t)T * H * R * 2);
        int32_t slots[64];
        for (int i = 0; i < T; i++) slots[i] = e.r2t[(int64_t)b.rows[i] * e.req_cap + step.seq[i] - 1];
        oracle_fill_bf16(q, NULL, (int64_t)T * H * D, -1, 1);
        sv_make_latent(&e, T, slots, ckv, kpe);
        memset(out, 0xff, (size_t)T * H * R * 2);
        mla_forward_args fa = {
            .q = sv_t3(&e, q, MLA_DTYPE_BF16, T, H, D),
            .out = sv_t3(&e, out, MLA_DTYPE_BF16, T, H, R),
            .c_kv = sv_t2(&e, ckv, MLA_DTYPE_BF16, T, R),
            .k_pe = sv_t2(&e, kpe, MLA_DTYPE_BF16, T, e.P),
            .kv_cache = sv_cache_tensor(&e),
        };
        CHECK_STATUS(mla_forward_decode(e.be, md, &fa), MLA_OK);
        sv_check_cache(&e, "multistep");
        double *ref = malloc((size_t)T * H * R * sizeof *ref), lse[128], qv[4096];
        for (int i = 0; i < T; i++) {
            for (int k = 0; k < H * D; k++) qv[k] = oracle_bf16_value(q[(int64_t)i * H * D + k]);
            sv_oracle_decode_token(&e, b.rows[i], step.seq[i], qv, e.cfg.scales.softmax_scale,
                                   e.cfg.scales.o_scale, ref + (int64_t)i * H * R, lse);
        }
        oracle_report rep = oracle_compare_bf16(out, ref, (int64_t)T * H * R, SV_OUT_TOL);
        if (!rep.ok) oracle_print_report("multistep", &rep);
        CHECK_MSG(rep.ok, "draft step %d differs from the oracle", s);
        free(q);
        free(ckv);
        free(kpe);
        free(out);
        free(ref);
    }
    mla_multistep_draft_destroy(d);
    sv_destroy(&e);
}

/* ---- graphs (emulated on the CPU: same contract as the CUDA path) ---- */

TEST(serving_graph_replay_bit_identical_to_eager)
{
    sv_env e;
    if (sv_init(&e, "cpu", cpu_dev, 0, 32, MLA_DTYPE_FP8_E4M3, 256, 16, 300)) return;
    enum { CAP = 6 };
    const mla_forward_mode modes[] = {MLA_FORWARD_DECODE, MLA_FORWARD_TARGET_VERIFY};
    for (int m = 0; m < 2; m++) {
        const int L = m ? 3 : 1, H = e.H, D = e.D, R = e.R, T = CAP * L;
        mla_batch_metadata *md = NULL;
        CHECK_STATUS(mla_metadata_create(e.be, CAP, 300, &md), MLA_OK);
        uint16_t *q = malloc((size_t)T * H * D * 2), *ckv = malloc((size_t)T * R * 2),
                 *kpe = malloc((size_t)T * e.P * 2), *out = malloc((size_t)T * H * R * 2),
                 *eager = malloc((size_t)T * H * R * 2);
        float *lse = malloc((size_t)T * H * 4), *eager_lse = malloc((size_t)T * H * 4);
        /* the emulated (CPU) capture runs the call once: it reads the inputs then too */
        oracle_fill_bf16(q, NULL, (int64_t)T * H * D, -1, 1);
        oracle_fill_bf16(ckv, NULL, (int64_t)T * R, -1, 1);
        oracle_fill_bf16(kpe, NULL, (int64_t)T * e.P, -1, 1);
        mla_forward_args ga = {
            .q = sv_t3(&e, q, MLA_DTYPE_BF16, T, H, D),
            .out = sv_t3(&e, out, MLA_DTYPE_BF16, T, H, R),
            .lse = sv_t2(&e, lse, MLA_DTYPE_F32, T, H),
            .c_kv = sv_t2(&e, ckv, MLA_DTYPE_BF16, T, R),
            .k_pe = sv_t2(&e, kpe, MLA_DTYPE_BF16, T, e.P),
            .kv_cache = sv_cache_tensor(&e),
            .quantize_q = m,
        };
        mla_graph *g = NULL;
        CHECK_STATUS(mla_graph_capture(e.be, md, MLA_FORWARD_EXTEND, 1, &ga, &g), MLA_ERR_UNSUPPORTED);
        CHECK_STATUS(mla_graph_capture(e.be, md, modes[m], m ? 9 : 2, &ga, &g), MLA_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(mla_graph_capture(e.be, md, modes[m], L, &ga, &g), MLA_OK);
        for (int B = 1; B <= CAP; B++) {
            sv_batch b;
            make_batch(&e, &b, B, L, 300, L, L);
            mla_metadata_args a = batch_args(&e, &b, modes[m], L);
            oracle_fill_bf16(q, NULL, (int64_t)T * H * D, -1, 1);
            int32_t slots[64];
            for (int i = 0, n = 0; i < B; i++)
                for (int j = 0; j < L; j++, n++)
                    slots[n] = e.r2t[(int64_t)b.rows[i] * e.req_cap + b.seq[i] - L + j];
            sv_make_latent(&e, B * L, slots, ckv, kpe);
            /* Eager over exactly B requests (views of the first rows). */
            mla_forward_args ea = ga;
            ea.q.shape[0] = ea.out.shape[0] = ea.lse.shape[0] = B * L;
            ea.c_kv.shape[0] = ea.k_pe.shape[0] = B * L;
            ea.out.data = eager;
            ea.lse.data = eager_lse;
            memset(eager, 0xff, (size_t)T * H * R * 2);
            memset(eager_lse, 0xff, (size_t)T * H * 4);
            CHECK_STATUS(mla_metadata_build(md, &a), MLA_OK);
            CHECK_STATUS(m ? mla_forward_target_verify(e.be, md, &ea) : mla_forward_decode(e.be, md, &ea), MLA_OK);
            memset(out, 0xff, (size_t)T * H * R * 2);
            memset(lse, 0xff, (size_t)T * H * 4);
            CHECK_STATUS(mla_graph_replay(g, &a, NULL), MLA_OK);
            CHECK_MSG(memcmp(out, eager, (size_t)B * L * H * R * 2) == 0,
                      "%s batch %d: replayed output differs from the eager call",
                      mla_forward_mode_name(modes[m]), B);
            CHECK_MSG(memcmp(lse, eager_lse, (size_t)B * L * H * 4) == 0,
                      "%s batch %d: replayed lse differs", mla_forward_mode_name(modes[m]), B);
            /* The eager call (run padded to the graph's shape) is also right, not only equal. */
            double *ref = malloc((size_t)B * L * H * R * sizeof *ref), ref_lse[64], qv[4096];
            for (int i = 0, n = 0; i < B; i++)
                for (int j = 0; j < L; j++, n++) {
                    for (int k = 0; k < H * D; k++) {
                        const double x = oracle_bf16_value(q[(int64_t)n * H * D + k]), qs = e.cfg.scales.q_scale;
                        qv[k] = m ? oracle_fp8_value(oracle_fp8_from_double(x / qs)) * qs : x;
                    }
                    sv_oracle_decode_token(&e, b.rows[i], b.seq[i] - L + j + 1, qv, e.cfg.scales.softmax_scale,
                                           e.cfg.scales.o_scale, ref + (int64_t)n * H * R, ref_lse);
                }
            oracle_report rep = oracle_compare_bf16(eager, ref, (int64_t)B * L * H * R, SV_OUT_TOL);
            if (!rep.ok) oracle_print_report("graph eager", &rep);
            CHECK_MSG(rep.ok, "%s batch %d: eager output differs from the oracle", mla_forward_mode_name(modes[m]), B);
            free(ref);
            /* Inactive rows computed nothing from the cache: zero output, -inf lse. */
            for (int64_t i = (int64_t)B * L * H; i < (int64_t)T * H; i++)
                CHECK_MSG(lse[i] == -INFINITY, "inactive lse[%lld] = %g", (long long)i, lse[i]);
            sv_check_cache(&e, "graph replay");
        }
        /* Replay without args uses the metadata as built; a mode mismatch is refused. */
        CHECK_STATUS(mla_graph_replay(g, NULL, NULL), MLA_OK);
        sv_batch b1;
        make_batch(&e, &b1, 1, L, 100, L, L);
        mla_metadata_args wrong = batch_args(&e, &b1, m ? MLA_FORWARD_DECODE : MLA_FORWARD_TARGET_VERIFY, m ? 1 : 2);
        CHECK_STATUS(mla_graph_replay(g, &wrong, NULL), MLA_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(mla_graph_replay(NULL, NULL, NULL), MLA_ERR_NULL_POINTER);
        mla_graph_destroy(g);
        free(q);
        free(ckv);
        free(kpe);
        free(out);
        free(eager);
        free(lse);
        free(eager_lse);
        mla_metadata_destroy(md);
    }
    sv_destroy(&e);
}

/* The decode forwards of a build share the decode plan the build made (also in the metadata
 * view, for a caller's own mla_decode): a change to the metadata's seq_lens after the build is
 * refused (the plan no longer matches them). With a graph over the metadata the build plans
 * max_batch rows; once the graph is gone, forwards on that build run without the plan, and
 * the next build plans the batch again. */
TEST(serving_decode_plan_of_a_build)
{
    sv_env e;
    if (sv_init(&e, "cpu", cpu_dev, 0, 32, MLA_DTYPE_FP8_E4M3, 256, 16, 300)) return;
    enum { CAP = 5, B = 3 };
    const int H = e.H, D = e.D, R = e.R;
    mla_batch_metadata *md = NULL;
    CHECK_STATUS(mla_metadata_create(e.be, CAP, 300, &md), MLA_OK);
    uint16_t *q = malloc((size_t)CAP * H * D * 2), *out = malloc((size_t)CAP * H * R * 2),
             *first = malloc((size_t)B * H * R * 2);
    oracle_fill_bf16(q, NULL, (int64_t)CAP * H * D, -1, 1);
    mla_forward_args ga = {
        .q = sv_t3(&e, q, MLA_DTYPE_BF16, CAP, H, D),
        .out = sv_t3(&e, out, MLA_DTYPE_BF16, CAP, H, R),
        .kv_cache = sv_cache_tensor(&e),
    };
    mla_forward_args ea = ga;
    ea.q.shape[0] = ea.out.shape[0] = B;
    sv_batch b;
    make_batch(&e, &b, B, 2, 300, 0, 0); /* every token already cached: no writes needed */
    mla_metadata_args a = batch_args(&e, &b, MLA_FORWARD_DECODE, 1);
    CHECK_STATUS(mla_metadata_build(md, &a), MLA_OK);
    CHECK_STATUS(mla_forward_decode(e.be, md, &ea), MLA_OK);
    memcpy(first, out, (size_t)B * H * R * 2);
    mla_metadata_view v;
    CHECK_STATUS(mla_metadata_get(md, &v), MLA_OK);
    int32_t *sl = v.seq_lens.data; /* host memory on the CPU backend */
    /* The view's plan serves a caller's own mla_decode over the same rows. */
    CHECK(v.decode_plan != NULL && v.decode_plan_batch == B);
    mla_decode_args d = {
        .q = mla_tensor_contiguous(q, MLA_DTYPE_BF16, cpu_dev, 4, (int64_t[]){B, 1, H, D}),
        .kv_cache = ga.kv_cache,
        .block_table = v.block_table,
        .seq_lens = v.seq_lens,
        .out = mla_tensor_contiguous(out, MLA_DTYPE_BF16, cpu_dev, 4, (int64_t[]){B, 1, H, R}),
        .plan = v.decode_plan,
    };
    d.block_table.shape[0] = d.seq_lens.shape[0] = B;
    memset(out, 0xff, (size_t)CAP * H * R * 2);
    CHECK_STATUS(mla_decode(e.be, &d), MLA_OK);
    CHECK(memcmp(out, first, (size_t)B * H * R * 2) == 0);
    d.block_table.shape[0] = d.seq_lens.shape[0] = d.q.shape[0] = d.out.shape[0] = B - 1;
    CHECK_STATUS(mla_decode(e.be, &d), MLA_ERR_INVALID_ARGUMENT); /* not the plan's batch */
    sl[1] -= 1;
    CHECK_STATUS(mla_forward_decode(e.be, md, &ea), MLA_ERR_INVALID_ARGUMENT);
    CHECK_MSG(strstr(mla_last_error(), "plan") != NULL, "message: %s", mla_last_error());
    sl[1] += 1;
    CHECK_STATUS(mla_forward_decode(e.be, md, &ea), MLA_OK);

    mla_graph *g = NULL;
    CHECK_STATUS(mla_graph_capture(e.be, md, MLA_FORWARD_DECODE, 1, &ga, &g), MLA_OK);
    CHECK_STATUS(mla_metadata_build(md, &a), MLA_OK); /* plans CAP rows: the graph's shape */
    CHECK_STATUS(mla_metadata_get(md, &v), MLA_OK);
    CHECK(v.decode_plan != NULL && v.decode_plan_batch == CAP);
    memset(out, 0xff, (size_t)CAP * H * R * 2);
    CHECK_STATUS(mla_forward_decode(e.be, md, &ea), MLA_OK);
    CHECK(memcmp(out, first, (size_t)B * H * R * 2) == 0);
    CHECK_STATUS(mla_graph_replay(g, NULL, NULL), MLA_OK);
    CHECK(memcmp(out, first, (size_t)B * H * R * 2) == 0);
    mla_graph_destroy(g);
    memset(out, 0xff, (size_t)CAP * H * R * 2);
    CHECK_STATUS(mla_forward_decode(e.be, md, &ea), MLA_OK); /* B rows: runs without the plan */
    CHECK(memcmp(out, first, (size_t)B * H * R * 2) == 0);
    sl[1] -= 1; /* not refused: no plan to disagree with */
    CHECK_STATUS(mla_forward_decode(e.be, md, &ea), MLA_OK);
    sl[1] += 1;
    CHECK_STATUS(mla_metadata_build(md, &a), MLA_OK); /* plans B rows again */
    CHECK_STATUS(mla_metadata_get(md, &v), MLA_OK);
    CHECK(v.decode_plan != NULL && v.decode_plan_batch == B);
    sl[1] -= 1;
    CHECK_STATUS(mla_forward_decode(e.be, md, &ea), MLA_ERR_INVALID_ARGUMENT);
    free(q);
    free(out);
    free(first);
    mla_metadata_destroy(md);
    sv_destroy(&e);
}

/* ---- argument checks of the forward calls ---- */

TEST(serving_forward_rejects_bad_input)
{
    sv_env e;
    if (sv_init(&e, "cpu", cpu_dev, 0, 32, MLA_DTYPE_FP8_E4M3, 64, 8, 128)) return;
    mla_batch_metadata *md = NULL;
    CHECK_STATUS(mla_metadata_create(e.be, 4, 128, &md), MLA_OK);
    const int H = e.H, D = e.D, R = e.R;
    uint16_t q[4 * 4 * 80], out[4 * 4 * 64], ckv[4 * 64], kpe[4 * 16];
    oracle_fill_bf16(q, NULL, 4 * 4 * 80, -1, 1);
    oracle_fill_bf16(ckv, NULL, 4 * 64, -1, 1);
    oracle_fill_bf16(kpe, NULL, 4 * 16, -1, 1);
    mla_forward_args fa = {
        .q = sv_t3(&e, q, MLA_DTYPE_BF16, 2, H, D),
        .out = sv_t3(&e, out, MLA_DTYPE_BF16, 2, H, R),
        .c_kv = sv_t2(&e, ckv, MLA_DTYPE_BF16, 2, R),
        .k_pe = sv_t2(&e, kpe, MLA_DTYPE_BF16, 2, e.P),
        .kv_cache = sv_cache_tensor(&e),
    };
    /* Not built yet. */
    CHECK_STATUS(mla_forward_decode(e.be, md, &fa), MLA_ERR_INVALID_ARGUMENT);
    sv_batch b;
    make_batch(&e, &b, 2, 1, 100, 1, 1);
    mla_metadata_args a = batch_args(&e, &b, MLA_FORWARD_DECODE, 1);
    CHECK_STATUS(mla_metadata_build(md, &a), MLA_OK);
    CHECK_STATUS(mla_forward_decode(NULL, md, &fa), MLA_ERR_NULL_POINTER);
    CHECK_STATUS(mla_forward_decode(e.be, NULL, &fa), MLA_ERR_NULL_POINTER);
    CHECK_STATUS(mla_forward_decode(e.be, md, NULL), MLA_ERR_NULL_POINTER);
    /* Built for decode, called as another mode. */
    CHECK_STATUS(mla_forward_target_verify(e.be, md, &fa), MLA_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mla_forward_extend(e.be, md, &fa), MLA_ERR_INVALID_ARGUMENT);
    mla_forward_args x = fa;
    x.q.shape[0] = 3; /* rows != batch */
    CHECK_STATUS(mla_forward_decode(e.be, md, &x), MLA_ERR_SHAPE_MISMATCH);
    x = fa;
    x.k_pe.data = NULL; /* c_kv alone */
    CHECK_STATUS(mla_forward_decode(e.be, md, &x), MLA_ERR_INVALID_ARGUMENT);
    x = fa;
    x.quantize_q = 2;
    CHECK_STATUS(mla_forward_decode(e.be, md, &x), MLA_ERR_INVALID_ARGUMENT);
    x = fa;
    x.out.dtype = MLA_DTYPE_F32;
    CHECK_STATUS(mla_forward_decode(e.be, md, &x), MLA_ERR_SHAPE_MISMATCH);
    /* Metadata of another backend. */
    mla_backend *other = NULL;
    CHECK_STATUS(mla_backend_create("cpu", &e.cfg, &other), MLA_OK);
    CHECK_STATUS(mla_forward_decode(other, md, &fa), MLA_ERR_INVALID_ARGUMENT);
    mla_backend_destroy(other);
    /* Extend without a prefix source while prefixes exist. */
    sv_batch eb;
    make_batch(&e, &eb, 2, 10, 60, 2, 2);
    a = batch_args(&e, &eb, MLA_FORWARD_EXTEND, 0);
    CHECK_STATUS(mla_metadata_build(md, &a), MLA_OK);
    uint16_t eq[4 * 4 * 48], ek[4 * 4 * 48], ev[4 * 4 * 32], eo[4 * 4 * 32];
    oracle_fill_bf16(eq, NULL, 4 * 4 * 48, -1, 1);
    oracle_fill_bf16(ek, NULL, 4 * 4 * 48, -1, 1);
    oracle_fill_bf16(ev, NULL, 4 * 4 * 32, -1, 1);
    mla_forward_args xa = {
        .q = sv_t3(&e, eq, MLA_DTYPE_BF16, 4, H, e.Dqk),
        .k = sv_t3(&e, ek, MLA_DTYPE_BF16, 4, H, e.Dqk),
        .v = sv_t3(&e, ev, MLA_DTYPE_BF16, 4, H, e.Dv),
        .out = sv_t3(&e, eo, MLA_DTYPE_BF16, 4, H, e.Dv),
        .kv_cache = sv_cache_tensor(&e),
    };
    CHECK_STATUS(mla_forward_extend(e.be, md, &xa), MLA_ERR_INVALID_ARGUMENT);
    xa.prefix_chunk_size = -1;
    CHECK_STATUS(mla_forward_extend(e.be, md, &xa), MLA_ERR_INVALID_ARGUMENT);
    /* A bad scale is refused even when no request has new tokens (the call has no attention
     * to run, but the caller's argument is wrong all the same); the same batch with good
     * scales is a valid no-op. */
    make_batch(&e, &eb, 2, 0, 0, 0, 0);
    a = batch_args(&e, &eb, MLA_FORWARD_EXTEND, 0);
    CHECK_STATUS(mla_metadata_build(md, &a), MLA_OK);
    mla_forward_args za = xa; /* the same tensors, no rows */
    za.q.shape[0] = za.k.shape[0] = za.v.shape[0] = za.out.shape[0] = 0;
    za.prefix_chunk_size = 0;
    mla_scales bad = e.cfg.scales;
    bad.v_scale = NAN;
    za.scales = &bad;
    CHECK_STATUS(mla_forward_extend(e.be, md, &za), MLA_ERR_INVALID_ARGUMENT);
    CHECK(strstr(mla_last_error(), "scales.v_scale") != NULL);
    mla_scales good = e.cfg.scales;
    za.scales = &good;
    CHECK_STATUS(mla_forward_extend(e.be, md, &za), MLA_OK);
    mla_metadata_destroy(md);
    mla_metadata_destroy(NULL);
    mla_multistep_draft_destroy(NULL);
    mla_graph_destroy(NULL);
    CHECK(strcmp(mla_forward_mode_name(MLA_FORWARD_TARGET_VERIFY), "target_verify") == 0);
    CHECK(strcmp(mla_forward_mode_name((mla_forward_mode)77), "unknown") == 0);
    sv_destroy(&e);
}

/* Backends, metadata, drafts and graphs created and destroyed many times, interleaved; under
 * ASan (make sanitize) any leak or use after free fails the run. */
TEST(serving_create_destroy_cycles)
{
    mla_config cfg;
    mla_config_init(&cfg);
    cfg.num_heads = 2;
    cfg.kv_lora_rank = 32;
    cfg.qk_rope_head_dim = 16;
    cfg.qk_nope_head_dim = 16;
    cfg.v_head_dim = 16;
    cfg.page_size = 32;
    cfg.max_q_len = 4;
    for (int i = 0; i < 40; i++) {
        mla_backend *a = NULL, *b = NULL;
        CHECK_STATUS(mla_backend_create("cpu", &cfg, &a), MLA_OK);
        CHECK_STATUS(mla_backend_create("cpu", &cfg, &b), MLA_OK);
        mla_batch_metadata *md = NULL;
        mla_multistep_draft *d = NULL;
        CHECK_STATUS(mla_metadata_create(a, 1 + i % 7, 64 + i, &md), MLA_OK);
        CHECK_STATUS(mla_multistep_draft_create(b, 1 + i % 3, 4, 100, &d), MLA_OK);
        mla_backend_destroy(a); /* metadata must not outlive its backend: destroy it below */
        mla_metadata_destroy(md);
        mla_multistep_draft_destroy(d);
        mla_backend_destroy(b);
    }
}

/* Multi-step draft with one graph per step: capture each step once, build all steps together,
 * replay each with the metadata as built (args NULL); each step's output matches the oracle. */
TEST(serving_multistep_draft_graphs)
{
    sv_env e;
    if (sv_init(&e, "cpu", cpu_dev, 0, 32, MLA_DTYPE_FP8_E4M3, 256, 16, 300)) return;
    enum { STEPS = 3, CAP = 5 };
    const int H = e.H, D = e.D, R = e.R;
    mla_multistep_draft *d = NULL;
    CHECK_STATUS(mla_multistep_draft_create(e.be, STEPS, CAP, 300, &d), MLA_OK);
    uint16_t *q = malloc((size_t)CAP * H * D * 2), *ckv = malloc((size_t)CAP * R * 2),
             *kpe = malloc((size_t)CAP * e.P * 2), *out = malloc((size_t)CAP * H * R * 2);
    mla_forward_args ga = {
        .q = sv_t3(&e, q, MLA_DTYPE_BF16, CAP, H, D),
        .out = sv_t3(&e, out, MLA_DTYPE_BF16, CAP, H, R),
        .c_kv = sv_t2(&e, ckv, MLA_DTYPE_BF16, CAP, R),
        .k_pe = sv_t2(&e, kpe, MLA_DTYPE_BF16, CAP, e.P),
        .kv_cache = sv_cache_tensor(&e),
    };
    mla_graph *g[STEPS] = {0};
    for (int s = 0; s < STEPS; s++)
        CHECK_STATUS(mla_graph_capture(e.be, mla_multistep_draft_metadata(d, s), MLA_FORWARD_DECODE, 1, &ga, &g[s]), MLA_OK);
    /* Not built since the capture: a replay without args is refused. */
    CHECK_STATUS(mla_graph_replay(g[0], NULL, NULL), MLA_ERR_INVALID_ARGUMENT);
    sv_batch b;
    make_batch(&e, &b, 3, 1, 280, 1, 1);
    for (int i = 0; i < b.B; i++) sv_assign(&e, b.rows[i], b.seq[i] + STEPS - 1);
    mla_metadata_args a = batch_args(&e, &b, MLA_FORWARD_DECODE, 1);
    CHECK_STATUS(mla_multistep_draft_build(d, &a), MLA_OK);
    for (int s = 0; s < STEPS && g[s]; s++) {
        int32_t slots[CAP];
        for (int i = 0; i < b.B; i++) slots[i] = e.r2t[(int64_t)b.rows[i] * e.req_cap + b.seq[i] + s - 1];
        oracle_fill_bf16(q, NULL, (int64_t)CAP * H * D, -1, 1);
        sv_make_latent(&e, b.B, slots, ckv, kpe);
        memset(out, 0xff, (size_t)CAP * H * R * 2);
        CHECK_STATUS(mla_graph_replay(g[s], NULL, NULL), MLA_OK);
        sv_check_cache(&e, "multistep graph");
        double *ref = malloc((size_t)b.B * H * R * sizeof *ref), lse[64], qv[4096];
        for (int i = 0; i < b.B; i++) {
            for (int k = 0; k < H * D; k++) qv[k] = oracle_bf16_value(q[(int64_t)i * H * D + k]);
            sv_oracle_decode_token(&e, b.rows[i], b.seq[i] + s, qv, e.cfg.scales.softmax_scale, e.cfg.scales.o_scale,
                                   ref + (int64_t)i * H * R, lse);
        }
        oracle_report rep = oracle_compare_bf16(out, ref, (int64_t)b.B * H * R, SV_OUT_TOL);
        if (!rep.ok) oracle_print_report("multistep graph", &rep);
        CHECK_MSG(rep.ok, "draft step %d replay differs from the oracle", s);
        free(ref);
    }
    for (int s = 0; s < STEPS; s++) mla_graph_destroy(g[s]);
    mla_multistep_draft_destroy(d);
    free(q);
    free(ckv);
    free(kpe);
    free(out);
    sv_destroy(&e);
}
