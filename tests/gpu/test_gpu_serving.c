/* Serving layer on the "hopper" backend (device machine only):
 *   - metadata built by the device kernel equals the expected tables (ragged batches, page
 *     boundaries, inactive rows), with and without host mirrors;
 *   - every forward mode (decode, target_verify, draft_extend, extend with chunked prefix)
 *     against the double oracle, cache compared byte for byte;
 *   - CUDA graphs: capture for max_batch, replay for every batch 1..max_batch, out/lse rows
 *     of the batch bit-identical to the eager call, cache intact;
 *   - a backend on device 1 never touches device 0 (when two GPUs exist);
 *   - create/destroy cycles return every byte of device memory;
 *   - serve-sim on the hopper backend (DeepSeek-V3 dims at TP8) with zero mismatches. */
#include "../serving_cases.h"
#include "../../cli/serve_sim_engine.h"

static const mla_device gpu0 = {MLA_DEVICE_CUDA, 0};

TEST(gpu_serving_metadata_kernel)
{
    if (!mla_test_require_backend("hopper")) return;
    sv_env e;
    if (sv_init(&e, "hopper", gpu0, 1, 64, MLA_DTYPE_FP8_E4M3, 1024, 40, 1300)) return;
    mla_batch_metadata *md = NULL;
    CHECK_STATUS(mla_metadata_create(e.be, 16, 1300, &md), MLA_OK);
    static const int edge[] = {1, 63, 64, 65, 128, 129, 191, 192, 193, 1300};
    const mla_forward_mode modes[] = {MLA_FORWARD_DECODE, MLA_FORWARD_TARGET_VERIFY, MLA_FORWARD_DRAFT_EXTEND,
                                      MLA_FORWARD_EXTEND};
    for (int round = 0; round < 12; round++) {
        const mla_forward_mode mode = modes[round % 4];
        const int q_len = mode == MLA_FORWARD_TARGET_VERIFY ? mla_test_rand_int(1, 8) : 1;
        int lo = 1, hi = 1;
        if (mode == MLA_FORWARD_DRAFT_EXTEND) hi = 8;
        if (mode == MLA_FORWARD_EXTEND) lo = 0, hi = 100;
        if (mode == MLA_FORWARD_TARGET_VERIFY) lo = hi = q_len;
        sv_batch b;
        make_batch(&e, &b, mla_test_rand_int(1, 16), 1, 1300, lo, hi);
        if (round < 4)
            for (int i = 0; i < b.B && i < 10; i++) {
                b.seq[i] = edge[(i + round) % 10] < b.ext[i] ? b.ext[i] : edge[(i + round) % 10];
                sv_assign(&e, b.rows[i], b.seq[i]);
            }
        mla_metadata_view v;
        if (round > 0 && mla_metadata_get(md, &v) == MLA_OK) { /* stale contents must not survive */
            sv_poison(&e, v.block_table.data, (size_t)16 * v.max_pages_per_seq * 4);
            sv_poison(&e, v.seq_lens.data, 16 * 4);
        }
        mla_metadata_args a = batch_args(&e, &b, mode, q_len);
        if (round % 3 == 2 && mode != MLA_FORWARD_EXTEND && mode != MLA_FORWARD_DRAFT_EXTEND)
            a.host_seq_lens = NULL; /* read back from the device instead */
        CHECK_STATUS(mla_metadata_build(md, &a), MLA_OK);
        check_view(&e, &b, md, 16);
    }
    /* Host checks still run on CUDA: a misaligned slot is refused. */
    sv_batch b;
    make_batch(&e, &b, 3, 70, 200, 1, 1);
    const int r = b.rows[0];
    e.r2t[(int64_t)r * e.req_cap + 66] += 1;
    sv_upload(&e, e.r2t_dev, e.r2t, (size_t)e.max_reqs * e.req_cap * 4);
    mla_metadata_args a = batch_args(&e, &b, MLA_FORWARD_DECODE, 1);
    CHECK_STATUS(mla_metadata_build(md, &a), MLA_ERR_OUT_OF_RANGE);
    mla_metadata_destroy(md);
    sv_destroy(&e);
}

TEST(gpu_serving_forward_modes_vs_oracle)
{
    if (!mla_test_require_backend("hopper")) return;
    sv_env e;
    if (sv_init(&e, "hopper", gpu0, 1, 64, MLA_DTYPE_FP8_E4M3, 600, 40, 1200)) return;
    for (int quant = 0; quant < 2; quant++) {
        sv_batch b;
        make_batch(&e, &b, mla_test_rand_int(1, 12), 1, 1200, 1, 1);
        run_decode_mode(&e, &b, MLA_FORWARD_DECODE, 1, quant, 1, 12);
    }
    const int q_lens[] = {2, 4, 8};
    for (int k = 0; k < 3; k++) {
        sv_batch b;
        make_batch(&e, &b, mla_test_rand_int(1, 8), q_lens[k], 1000, q_lens[k], q_lens[k]);
        run_decode_mode(&e, &b, MLA_FORWARD_TARGET_VERIFY, q_lens[k], k == 1, 1, 8);
    }
    for (int k = 0; k < 2; k++) {
        sv_batch b;
        make_batch(&e, &b, mla_test_rand_int(2, 8), 1, 1000, 1, 8);
        b.ext[0] = 1;
        run_decode_mode(&e, &b, MLA_FORWARD_DRAFT_EXTEND, 0, k, 1, 8);
    }
    sv_destroy(&e);
    /* Extend: a smaller pool (the oracle's up-projection runs on the host). */
    if (sv_init(&e, "hopper", gpu0, 1, 64, MLA_DTYPE_FP8_E4M3, 64, 8, 400)) return;
    sv_batch b;
    make_batch(&e, &b, 3, 1, 300, 1, 64);
    run_extend(&e, &b, 100, 0, 1);
    make_batch(&e, &b, 3, 1, 200, 1, 40);
    run_extend(&e, &b, 0, 1, 1);
    sv_destroy(&e);
}

/* Graph replay for every batch size 1..cap equals the eager call bit for bit. */
static void graph_case(sv_env *e, mla_forward_mode mode, int L, int cap, int quantize_q, void *stream)
{
    const int H = e->H, D = e->D, R = e->R, T = cap * L;
    mla_batch_metadata *md = NULL;
    CHECK_STATUS(mla_metadata_create(e->be, cap, e->req_cap, &md), MLA_OK);
    uint16_t *q = malloc((size_t)T * H * D * 2), *ckv = malloc((size_t)T * R * 2), *kpe = malloc((size_t)T * e->P * 2),
             *out = malloc((size_t)T * H * R * 2), *eager = malloc((size_t)T * H * R * 2);
    float *lse = malloc((size_t)T * H * 4), *eager_lse = malloc((size_t)T * H * 4);
    void *dq = sv_alloc(e, (size_t)T * H * D * 2), *dckv = sv_alloc(e, (size_t)T * R * 2),
         *dkpe = sv_alloc(e, (size_t)T * e->P * 2), *dout = sv_alloc(e, (size_t)T * H * R * 2),
         *dlse = sv_alloc(e, (size_t)T * H * 4), *deager = sv_alloc(e, (size_t)T * H * R * 2),
         *deager_lse = sv_alloc(e, (size_t)T * H * 4);
    mla_forward_args ga = {
        .q = sv_t3(e, dq, MLA_DTYPE_BF16, T, H, D),
        .out = sv_t3(e, dout, MLA_DTYPE_BF16, T, H, R),
        .lse = sv_t2(e, dlse, MLA_DTYPE_F32, T, H),
        .c_kv = sv_t2(e, dckv, MLA_DTYPE_BF16, T, R),
        .k_pe = sv_t2(e, dkpe, MLA_DTYPE_BF16, T, e->P),
        .kv_cache = sv_cache_tensor(e),
        .quantize_q = quantize_q,
        .stream = stream,
    };
    mla_graph *g = NULL, *bad = NULL;
    mla_forward_args no_stream = ga;
    no_stream.stream = NULL; /* the legacy stream cannot be captured */
    CHECK_STATUS(mla_graph_capture(e->be, md, mode, L, &no_stream, &bad), MLA_ERR_INVALID_ARGUMENT);
    mla_graph_destroy(bad);
    CHECK_STATUS(mla_graph_capture(e->be, md, mode, L, &ga, &g), MLA_OK);
    for (int B = 1; B <= cap && g; B++) {
        sv_batch b;
        make_batch(e, &b, B, L, e->req_cap - 1, L, L);
        mla_metadata_args a = batch_args(e, &b, mode, L);
        a.stream = stream;
        oracle_fill_bf16(q, NULL, (int64_t)T * H * D, -1, 1);
        int32_t slots[64 * 8];
        for (int i = 0, n = 0; i < B; i++)
            for (int j = 0; j < L; j++, n++) slots[n] = e->r2t[(int64_t)b.rows[i] * e->req_cap + b.seq[i] - L + j];
        sv_make_latent(e, B * L, slots, ckv, kpe);
        sv_upload(e, dq, q, (size_t)T * H * D * 2);
        sv_upload(e, dckv, ckv, (size_t)B * L * R * 2);
        sv_upload(e, dkpe, kpe, (size_t)B * L * e->P * 2);
        mla_forward_args ea = ga;
        ea.q.shape[0] = ea.out.shape[0] = ea.lse.shape[0] = B * L;
        ea.c_kv.shape[0] = ea.k_pe.shape[0] = B * L;
        ea.out.data = deager;
        ea.lse.data = deager_lse;
        sv_poison(e, deager, (size_t)T * H * R * 2);
        sv_poison(e, deager_lse, (size_t)T * H * 4);
        CHECK_STATUS(mla_metadata_build(md, &a), MLA_OK);
        CHECK_STATUS(mode == MLA_FORWARD_DECODE ? mla_forward_decode(e->be, md, &ea) : mla_forward_target_verify(e->be, md, &ea),
                     MLA_OK);
        sv_poison(e, dout, (size_t)T * H * R * 2);
        sv_poison(e, dlse, (size_t)T * H * 4);
        CHECK_STATUS(mla_graph_replay(g, &a, stream), MLA_OK);
        CHECK(cudaStreamSynchronize((cudaStream_t)stream) == cudaSuccess);
        sv_download(e, out, dout, (size_t)T * H * R * 2);
        sv_download(e, lse, dlse, (size_t)T * H * 4);
        sv_download(e, eager, deager, (size_t)T * H * R * 2);
        sv_download(e, eager_lse, deager_lse, (size_t)T * H * 4);
        CHECK_MSG(memcmp(out, eager, (size_t)B * L * H * R * 2) == 0, "%s q_len %d batch %d/%d: replay output differs from eager",
                  mla_forward_mode_name(mode), L, B, cap);
        CHECK_MSG(memcmp(lse, eager_lse, (size_t)B * L * H * 4) == 0, "%s q_len %d batch %d/%d: replay lse differs from eager",
                  mla_forward_mode_name(mode), L, B, cap);
        /* The poisoned rows of the batch were all written (no NaN pattern left). */
        int64_t poison = 0;
        for (int64_t i = 0; i < (int64_t)B * L * H * R; i++) poison += out[i] == 0xffff;
        CHECK_MSG(poison == 0, "batch %d: %lld output elements never written", B, (long long)poison);
        sv_check_cache(e, "graph replay");
    }
    uint32_t flags = 0;
    CHECK_STATUS(mla_backend_device_errors(e->be, &flags), MLA_OK);
    CHECK_MSG(flags == 0, "device error flags 0x%x after graph replays", flags);
    mla_graph_destroy(g);
    void *dev[] = {dq, dckv, dkpe, dout, dlse, deager, deager_lse};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) sv_free(e, dev[i]);
    free(q);
    free(ckv);
    free(kpe);
    free(out);
    free(eager);
    free(lse);
    free(eager_lse);
    mla_metadata_destroy(md);
}

TEST(gpu_serving_graph_replay_bit_identical)
{
    if (!mla_test_require_backend("hopper")) return;
    sv_env e;
    if (sv_init(&e, "hopper", gpu0, 1, 64, MLA_DTYPE_FP8_E4M3, 1024, 64, 1100)) return;
    cudaStream_t stream = NULL;
    CHECK(cudaStreamCreate(&stream) == cudaSuccess);
    graph_case(&e, MLA_FORWARD_DECODE, 1, 32, 0, stream);
    graph_case(&e, MLA_FORWARD_DECODE, 1, 8, 1, stream);
    graph_case(&e, MLA_FORWARD_TARGET_VERIFY, 4, 16, 0, stream);
    graph_case(&e, MLA_FORWARD_TARGET_VERIFY, 8, 6, 0, stream);
    cudaStreamDestroy(stream);
    sv_destroy(&e);
}

TEST(gpu_serving_device1_isolation)
{
    if (!mla_test_require_backend("hopper")) return;
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count < 2) {
        mla_test_skip("needs two GPUs, found %d", count);
        return;
    }
    CHECK(cudaSetDevice(0) == cudaSuccess);
    size_t free0_before = 0, free0_after = 0, total = 0;
    CHECK(cudaMemGetInfo(&free0_before, &total) == cudaSuccess);
    const mla_device gpu1 = {MLA_DEVICE_CUDA, 1};
    sv_env e;
    /* sv_init allocates with cudaMalloc on the current device: make it device 1, then back. */
    CHECK(cudaSetDevice(1) == cudaSuccess);
    if (sv_init(&e, "hopper", gpu1, 1, 64, MLA_DTYPE_FP8_E4M3, 128, 8, 500)) return;
    CHECK(cudaSetDevice(0) == cudaSuccess);
    sv_batch b;
    CHECK(cudaSetDevice(1) == cudaSuccess); /* the fixture's uploads */
    make_batch(&e, &b, 4, 1, 400, 1, 1);
    CHECK(cudaSetDevice(0) == cudaSuccess);
    mla_batch_metadata *md = NULL;
    CHECK_STATUS(mla_metadata_create(e.be, 4, 500, &md), MLA_OK);
    int cur = -1;
    CHECK(cudaGetDevice(&cur) == cudaSuccess && cur == 0);
    mla_metadata_args a = batch_args(&e, &b, MLA_FORWARD_DECODE, 1);
    CHECK_STATUS(mla_metadata_build(md, &a), MLA_OK);
    mla_metadata_view v;
    CHECK_STATUS(mla_metadata_get(md, &v), MLA_OK);
    struct cudaPointerAttributes attr;
    CHECK(cudaPointerGetAttributes(&attr, v.block_table.data) == cudaSuccess);
    CHECK_MSG(attr.device == 1, "metadata of a device-1 backend lives on device %d", attr.device);
    CHECK(cudaGetDevice(&cur) == cudaSuccess && cur == 0);
    mla_metadata_destroy(md);
    CHECK(cudaSetDevice(1) == cudaSuccess);
    sv_destroy(&e);
    CHECK(cudaSetDevice(0) == cudaSuccess);
    CHECK(cudaDeviceSynchronize() == cudaSuccess);
    CHECK(cudaMemGetInfo(&free0_after, &total) == cudaSuccess);
    CHECK_MSG(free0_after + (2u << 20) >= free0_before, "device 0 lost %zu bytes to a device-1 backend",
              free0_before - free0_after);
}

TEST(gpu_serving_create_destroy_returns_memory)
{
    if (!mla_test_require_backend("hopper")) return;
    mla_config cfg;
    mla_config_init(&cfg);
    cfg.num_heads = 16;
    cfg.max_q_len = 4;
    cfg.device.type = MLA_DEVICE_CUDA;
    cudaStream_t stream = NULL;
    CHECK(cudaStreamCreate(&stream) == cudaSuccess);
    size_t free_first = 0, free_now = 0, total = 0;
    for (int i = 0; i < 30; i++) {
        mla_backend *be = NULL;
        CHECK_STATUS(mla_backend_create("hopper", &cfg, &be), MLA_OK);
        if (!be) break;
        mla_batch_metadata *md = NULL;
        mla_multistep_draft *d = NULL;
        CHECK_STATUS(mla_metadata_create(be, 8, 4096, &md), MLA_OK);
        CHECK_STATUS(mla_multistep_draft_create(be, 3, 8, 4096, &d), MLA_OK);
        /* A captured graph too: its workspace and executable must go with it. */
        void *q = NULL, *out = NULL, *cache = NULL;
        CHECK(cudaMalloc(&q, 8 * 16 * 576 * 2) == cudaSuccess);
        CHECK(cudaMalloc(&out, 8 * 16 * 512 * 2) == cudaSuccess);
        CHECK(cudaMalloc(&cache, 4 * 64 * 576) == cudaSuccess);
        mla_forward_args ga = {
            .q = mla_tensor_contiguous(q, MLA_DTYPE_BF16, cfg.device, 3, (int64_t[]){8, 16, 576}),
            .out = mla_tensor_contiguous(out, MLA_DTYPE_BF16, cfg.device, 3, (int64_t[]){8, 16, 512}),
            .kv_cache = mla_tensor_contiguous(cache, MLA_DTYPE_FP8_E4M3, cfg.device, 3, (int64_t[]){4, 64, 576}),
            .stream = stream,
        };
        mla_graph *g = NULL;
        CHECK_STATUS(mla_graph_capture(be, md, MLA_FORWARD_DECODE, 1, &ga, &g), MLA_OK);
        mla_graph_destroy(g);
        mla_multistep_draft_destroy(d);
        mla_metadata_destroy(md);
        mla_backend_destroy(be);
        cudaFree(q);
        cudaFree(out);
        cudaFree(cache);
        CHECK(cudaDeviceSynchronize() == cudaSuccess);
        CHECK(cudaMemGetInfo(&free_now, &total) == cudaSuccess);
        if (i == 0) free_first = free_now; /* after the first cycle: context and module loads */
    }
    CHECK_MSG(free_now + (1u << 20) >= free_first, "30 create/destroy cycles lost %zu bytes of device memory",
              free_first - free_now);
    cudaStreamDestroy(stream);
}

TEST(gpu_serving_serve_sim_hopper)
{
    if (!mla_test_require_backend("hopper")) return;
    for (int graphs = 0; graphs < 2; graphs++) {
        serve_sim_config c;
        serve_sim_defaults(&c, 1);
        c.steps = 120;
        c.max_prompt = 512; /* keeps the host oracle to seconds */
        c.check_requests = 1;
        c.seed = mla_test_rand_u64();
        c.use_graphs = graphs;
        c.log = NULL;
        serve_sim_result r;
        const int rc = serve_sim_run(&c, &r);
        CHECK_MSG(rc == 0 && r.mismatches == 0 && r.error == MLA_OK,
                  "serve-sim on hopper (graphs %d, seed %llu): %lld mismatches, error %s: %s", graphs,
                  (unsigned long long)c.seed, (long long)r.mismatches, mla_status_string(r.error), mla_last_error());
        CHECK(r.finished > 20 && r.checks > 100);
        fprintf(stderr, "    serve-sim hopper graphs=%d: %lld tokens in %.3f s of backend time, %lld checks\n", graphs,
                (long long)(r.prefill_tokens + r.decode_tokens + r.verify_tokens + r.draft_extend_tokens), r.backend_seconds,
                (long long)r.checks);
    }
}
