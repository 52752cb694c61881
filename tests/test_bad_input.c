/* Every bad input gets a clear status, and a failing call writes nothing: outputs sit between
 * guard bytes and are compared byte for byte before and after. Each case mutates one field of
 * a valid call, and the valid call is checked to succeed first, so a failure is caused by the
 * mutation alone. */
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define GUARD 64
#define PATTERN 0xA5

typedef struct {
    uint8_t *base;
    size_t bytes;
    void *ptr;
} guarded;

static guarded guarded_alloc(size_t bytes)
{
    guarded g;
    g.bytes = bytes;
    g.base = malloc(bytes + 2 * GUARD);
    memset(g.base, PATTERN, bytes + 2 * GUARD);
    g.ptr = g.base + GUARD;
    return g;
}

static int guarded_untouched(const guarded *g)
{
    for (size_t i = 0; i < g->bytes + 2 * GUARD; i++)
        if (g->base[i] != PATTERN) return 0;
    return 1;
}

static void guarded_reset(guarded *g) { memset(g->base, PATTERN, g->bytes + 2 * GUARD); }

static void fill_random_bf16(uint16_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) p[i] = mla_float_to_bf16(mla_test_rand_uniform(-1.0f, 1.0f));
}

static void fill_random_fp8(uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) p[i] = mla_float_to_fp8_e4m3(mla_test_rand_uniform(-2.0f, 2.0f));
}

static const mla_device cpu = {MLA_DEVICE_CPU, 0};

static mla_tensor tensor(void *data, mla_dtype dt, int ndim, int64_t d0, int64_t d1, int64_t d2,
                         int64_t d3)
{
    int64_t shape[4] = {d0, d1, d2, d3};
    return mla_tensor_contiguous(data, dt, cpu, ndim, shape);
}

/* A small valid decode problem: H=4, kv_lora_rank 32, rope 16, page 32, batch 2, q_len 2. */
enum { H = 4, R = 32, P = 16, D = R + P, PAGE = 32, PAGES = 6, MAXP = 3, B = 2, L = 2 };

typedef struct {
    mla_backend *be;
    uint16_t q[B * L * H * D];
    uint8_t cache[PAGES * PAGE * D];
    int32_t block_table[B * MAXP];
    int32_t seq_lens[B];
    guarded out, lse;
    mla_decode_args args;
} decode_case;

static void decode_case_init(decode_case *c)
{
    mla_config cfg;
    mla_config_init(&cfg);
    cfg.num_heads = H;
    cfg.kv_lora_rank = R;
    cfg.qk_rope_head_dim = P;
    cfg.page_size = PAGE;
    cfg.max_q_len = 8;
    CHECK_STATUS(mla_backend_create("cpu", &cfg, &c->be), MLA_OK);
    fill_random_bf16(c->q, sizeof c->q / 2);
    fill_random_fp8(c->cache, sizeof c->cache);
    const int32_t bt[B * MAXP] = {5, 0, 3, 2, 4, 1};
    memcpy(c->block_table, bt, sizeof bt);
    c->seq_lens[0] = 70;
    c->seq_lens[1] = 33;
    c->out = guarded_alloc((size_t)B * L * H * R * 2);
    c->lse = guarded_alloc((size_t)B * L * H * 4);
    memset(&c->args, 0, sizeof c->args);
    c->args.q = tensor(c->q, MLA_DTYPE_BF16, 4, B, L, H, D);
    c->args.kv_cache = tensor(c->cache, MLA_DTYPE_FP8_E4M3, 3, PAGES, PAGE, D, 0);
    c->args.block_table = tensor(c->block_table, MLA_DTYPE_I32, 2, B, MAXP, 0, 0);
    c->args.seq_lens = tensor(c->seq_lens, MLA_DTYPE_I32, 1, B, 0, 0, 0);
    c->args.out = tensor(c->out.ptr, MLA_DTYPE_BF16, 4, B, L, H, R);
    c->args.lse = tensor(c->lse.ptr, MLA_DTYPE_F32, 3, B, L, H, 0);
}

static void decode_case_free(decode_case *c)
{
    mla_backend_destroy(c->be);
    free(c->out.base);
    free(c->lse.base);
}

/* Runs args (a mutated copy), expects `status` with `needle` in the message and untouched
 * outputs. */
static void expect_decode_error(decode_case *c, const mla_decode_args *args, mla_status status,
                                const char *needle, const char *what)
{
    guarded_reset(&c->out);
    guarded_reset(&c->lse);
    mla_status st = mla_decode(c->be, args);
    CHECK_MSG(st == status, "%s: got %s (%s), expected %s", what, mla_status_string(st),
              mla_last_error(), mla_status_string(status));
    CHECK_MSG(strstr(mla_last_error(), needle), "%s: message '%s' lacks '%s'", what,
              mla_last_error(), needle);
    CHECK_MSG(guarded_untouched(&c->out) && guarded_untouched(&c->lse),
              "%s: a failing call wrote to its outputs", what);
}

TEST(bad_input_decode_each_argument)
{
    decode_case c;
    decode_case_init(&c);
    /* The unmutated call works and writes every output element. */
    CHECK_STATUS(mla_decode(c.be, &c.args), MLA_OK);
    CHECK(!guarded_untouched(&c.out));
    mla_decode_args a;
#define CASE(mutation, status, needle)                                                 \
    do {                                                                               \
        a = c.args;                                                                    \
        mutation;                                                                      \
        expect_decode_error(&c, &a, status, needle, #mutation);                        \
    } while (0)
    CASE(a.q.data = NULL, MLA_ERR_NULL_POINTER, "'q'");
    CASE(a.q.dtype = MLA_DTYPE_F32, MLA_ERR_SHAPE_MISMATCH, "dtype");
    CASE(a.q.shape[2] = H + 1, MLA_ERR_SHAPE_MISMATCH, "'q' has shape");
    CASE(a.q.shape[3] = D - 1, MLA_ERR_SHAPE_MISMATCH, "'q' has shape");
    CASE(a.q.ndim = 3, MLA_ERR_SHAPE_MISMATCH, "dims");
    CASE(a.q = tensor(c.q, MLA_DTYPE_BF16, 4, B, 0, H, D), MLA_ERR_UNSUPPORTED, "q_len = 0");
    CASE(a.q.device.type = MLA_DEVICE_CUDA, MLA_ERR_INVALID_ARGUMENT, "device");
    CASE(a.q.strides[0] += 1, MLA_ERR_UNSUPPORTED, "contiguous");
    CASE(a.kv_cache.data = NULL, MLA_ERR_NULL_POINTER, "kv_cache");
    CASE(a.kv_cache.dtype = MLA_DTYPE_BF16, MLA_ERR_SHAPE_MISMATCH, "kv_cache");
    CASE(a.kv_cache.shape[1] = 64, MLA_ERR_SHAPE_MISMATCH, "kv_cache");
    CASE(a.block_table.dtype = MLA_DTYPE_I64, MLA_ERR_SHAPE_MISMATCH, "block_table");
    CASE(a.block_table.shape[0] = B + 1, MLA_ERR_SHAPE_MISMATCH, "block_table");
    CASE(a.seq_lens.shape[0] = 1, MLA_ERR_SHAPE_MISMATCH, "seq_lens");
    CASE(a.seq_lens.data = NULL, MLA_ERR_NULL_POINTER, "seq_lens");
    CASE(a.out.dtype = MLA_DTYPE_F32, MLA_ERR_SHAPE_MISMATCH, "'out'");
    CASE(a.out.shape[3] = D, MLA_ERR_SHAPE_MISMATCH, "'out'");
    CASE(a.lse.shape[2] = 1, MLA_ERR_SHAPE_MISMATCH, "'lse'");
    CASE(a.out.data = c.q, MLA_ERR_INVALID_ARGUMENT, "overlaps");
    CASE(a.lse.data = (char *)c.out.ptr + 8, MLA_ERR_INVALID_ARGUMENT, "overlaps");
    CASE(a.max_seq_len = -1, MLA_ERR_INVALID_ARGUMENT, "max_seq_len");
    CASE(a.max_seq_len = 50, MLA_ERR_INVALID_ARGUMENT, "exceeds max_seq_len");
    CASE(a.no_causal_mask = 7, MLA_ERR_INVALID_ARGUMENT, "no_causal_mask");
    CASE(a.workspace_bytes = 16, MLA_ERR_NULL_POINTER, "workspace");
    char ws_buf[64];
    CASE((a.workspace = ws_buf + (((uintptr_t)ws_buf & 15u) == 8 ? 0 : 8), a.workspace_bytes = 32),
         MLA_ERR_INVALID_ARGUMENT, "16-byte aligned");
    mla_scales bad_scales = {.softmax_scale = NAN, .q_scale = 1, .k_scale = 1, .v_scale = 1,
                             .o_scale = 1};
    CASE(a.scales = &bad_scales, MLA_ERR_INVALID_ARGUMENT, "softmax_scale");
#undef CASE
    CHECK_STATUS(mla_decode(NULL, &c.args), MLA_ERR_NULL_POINTER);
    CHECK_STATUS(mla_decode(c.be, NULL), MLA_ERR_NULL_POINTER);
    decode_case_free(&c);
}

TEST(bad_input_decode_index_contents)
{
    decode_case c;
    decode_case_init(&c);
    int32_t saved_bt[B * MAXP];
    memcpy(saved_bt, c.block_table, sizeof saved_bt);
    /* seq_len beyond the block table's capacity (3 pages of 32) */
    c.seq_lens[0] = MAXP * PAGE + 1;
    expect_decode_error(&c, &c.args, MLA_ERR_OUT_OF_RANGE, "capacity", "seq_len > capacity");
    c.seq_lens[0] = -3;
    expect_decode_error(&c, &c.args, MLA_ERR_OUT_OF_RANGE, "negative", "negative seq_len");
    c.seq_lens[0] = 70;
    /* page indices outside [0, PAGES) within the used pages */
    c.block_table[2] = PAGES;
    expect_decode_error(&c, &c.args, MLA_ERR_OUT_OF_RANGE, "block_table[0][2] = 6",
                        "page == num_pages");
    c.block_table[2] = -1;
    expect_decode_error(&c, &c.args, MLA_ERR_OUT_OF_RANGE, "block_table[0][2] = -1",
                        "negative page");
    memcpy(c.block_table, saved_bt, sizeof saved_bt);
    /* An unused block-table entry (request 1 needs 2 pages) may hold anything. */
    c.block_table[MAXP + 2] = 12345;
    CHECK_STATUS(mla_decode(c.be, &c.args), MLA_OK);
    decode_case_free(&c);
}

TEST(bad_input_decode_short_seq_gives_zero_rows_not_error)
{
    /* seq_len < q_len: the first query tokens see no key: zero output, -inf LSE. */
    decode_case c;
    decode_case_init(&c);
    c.seq_lens[1] = 1; /* q_len 2: token 0 of request 1 sees nothing, token 1 sees key 0 */
    CHECK_STATUS(mla_decode(c.be, &c.args), MLA_OK);
    const uint16_t *out = c.out.ptr;
    const float *lse = c.lse.ptr;
    for (int h = 0; h < H; h++) {
        int row = (1 * L + 0) * H + h;
        CHECK(isinf(lse[row]) && lse[row] < 0);
        for (int d = 0; d < R; d++) CHECK(out[(size_t)row * R + d] == 0);
        CHECK(isfinite(lse[(1 * L + 1) * H + h]));
    }
    decode_case_free(&c);
}

TEST(bad_input_decode_plan)
{
    decode_case c;
    decode_case_init(&c);
    mla_decode_plan *plan = NULL;
    /* creation */
    CHECK_STATUS(mla_decode_plan_create(NULL, B, L, MAXP, &plan), MLA_ERR_NULL_POINTER);
    CHECK_STATUS(mla_decode_plan_create(c.be, B, L, MAXP, NULL), MLA_ERR_NULL_POINTER);
    CHECK_STATUS(mla_decode_plan_create(c.be, 0, L, MAXP, &plan), MLA_ERR_INVALID_ARGUMENT);
    CHECK(strstr(mla_last_error(), "batch = 0"));
    CHECK_STATUS(mla_decode_plan_create(c.be, B, 0, MAXP, &plan), MLA_ERR_UNSUPPORTED);
    CHECK_STATUS(mla_decode_plan_create(c.be, B, 1 << 20, MAXP, &plan), MLA_ERR_UNSUPPORTED);
    CHECK_STATUS(mla_decode_plan_create(c.be, B, L, 0, &plan), MLA_ERR_INVALID_ARGUMENT);
    CHECK(plan == NULL);
    mla_decode_plan_destroy(NULL);
    CHECK_STATUS(mla_decode_plan_create(c.be, B, L, MAXP, &plan), MLA_OK);

    /* reference output without a plan */
    CHECK_STATUS(mla_decode(c.be, &c.args), MLA_OK);
    const size_t out_bytes = (size_t)B * L * H * R * 2, lse_bytes = (size_t)B * L * H * 4;
    uint8_t *ref_out = malloc(out_bytes), *ref_lse = malloc(lse_bytes);
    memcpy(ref_out, c.out.ptr, out_bytes);
    memcpy(ref_lse, c.lse.ptr, lse_bytes);

    mla_decode_args a = c.args;
    a.plan = plan;
    expect_decode_error(&c, &a, MLA_ERR_INVALID_ARGUMENT, "not built", "unbuilt plan");
    /* builds that fail leave it unbuilt */
    CHECK_STATUS(mla_decode_plan_build(NULL, &c.args.seq_lens, NULL), MLA_ERR_NULL_POINTER);
    CHECK_STATUS(mla_decode_plan_build(plan, NULL, NULL), MLA_ERR_NULL_POINTER);
    mla_tensor wrong = c.args.seq_lens;
    wrong.shape[0] = B + 1;
    CHECK_STATUS(mla_decode_plan_build(plan, &wrong, NULL), MLA_ERR_SHAPE_MISMATCH);
    c.seq_lens[1] = MAXP * PAGE + 1;
    CHECK_STATUS(mla_decode_plan_build(plan, &c.args.seq_lens, NULL), MLA_ERR_OUT_OF_RANGE);
    CHECK(strstr(mla_last_error(), "seq_lens[1] = 97 exceeds the block table capacity 96"));
    c.seq_lens[1] = -1;
    CHECK_STATUS(mla_decode_plan_build(plan, &c.args.seq_lens, NULL), MLA_ERR_OUT_OF_RANGE);
    CHECK(strstr(mla_last_error(), "mla_decode_plan_build: seq_lens[1] = -1 is negative"));
    c.seq_lens[1] = 33;
    expect_decode_error(&c, &a, MLA_ERR_INVALID_ARGUMENT, "not built", "plan after a failed build");

    /* built: the same results as without a plan, bit for bit */
    CHECK_STATUS(mla_decode_plan_build(plan, &c.args.seq_lens, NULL), MLA_OK);
    guarded_reset(&c.out);
    guarded_reset(&c.lse);
    CHECK_STATUS(mla_decode(c.be, &a), MLA_OK);
    CHECK(memcmp(c.out.ptr, ref_out, out_bytes) == 0 && memcmp(c.lse.ptr, ref_lse, lse_bytes) == 0);

    /* lengths that differ from the plan's are refused; rebuilding accepts them */
    c.seq_lens[0] = 69;
    expect_decode_error(&c, &a, MLA_ERR_INVALID_ARGUMENT, "seq_lens[0] = 69 differs from the 70",
                        "changed seq_lens");
    CHECK_STATUS(mla_decode_plan_build(plan, &c.args.seq_lens, NULL), MLA_OK);
    CHECK_STATUS(mla_decode(c.be, &a), MLA_OK);
    c.seq_lens[0] = 70;
    CHECK_STATUS(mla_decode_plan_build(plan, &c.args.seq_lens, NULL), MLA_OK);

    /* a plan for another shape or backend */
    mla_decode_plan *other = NULL;
    CHECK_STATUS(mla_decode_plan_create(c.be, B - 1, L, MAXP, &other), MLA_OK);
    a.plan = other;
    expect_decode_error(&c, &a, MLA_ERR_INVALID_ARGUMENT, "the plan is for batch 1", "plan batch");
    mla_decode_plan_destroy(other);
    CHECK_STATUS(mla_decode_plan_create(c.be, B, 1, MAXP, &other), MLA_OK);
    a.plan = other;
    expect_decode_error(&c, &a, MLA_ERR_INVALID_ARGUMENT, "q_len 1", "plan q_len");
    mla_decode_plan_destroy(other);
    CHECK_STATUS(mla_decode_plan_create(c.be, B, L, MAXP + 1, &other), MLA_OK);
    a.plan = other;
    expect_decode_error(&c, &a, MLA_ERR_INVALID_ARGUMENT, "4 pages", "plan width");
    mla_decode_plan_destroy(other);
    mla_backend *be2 = NULL;
    CHECK_STATUS(mla_backend_create("cpu", mla_backend_config(c.be), &be2), MLA_OK);
    CHECK_STATUS(mla_decode_plan_create(be2, B, L, MAXP, &other), MLA_OK);
    CHECK_STATUS(mla_decode_plan_build(other, &c.args.seq_lens, NULL), MLA_OK);
    a.plan = other;
    expect_decode_error(&c, &a, MLA_ERR_INVALID_ARGUMENT, "another backend", "plan of another backend");
    mla_decode_plan_destroy(other);
    mla_backend_destroy(be2);

    mla_decode_plan_destroy(plan);
    free(ref_out);
    free(ref_lse);
    decode_case_free(&c);
}

/* ---- prefill ---- */
enum { PH = 2, PN = 16, PR = 8, PV = 16, PD = PN + PR };

TEST(bad_input_prefill_each_argument)
{
    mla_config cfg;
    mla_config_init(&cfg);
    cfg.num_heads = PH;
    cfg.qk_nope_head_dim = PN;
    cfg.qk_rope_head_dim = PR;
    cfg.v_head_dim = PV;
    mla_backend *be = NULL;
    CHECK_STATUS(mla_backend_create("cpu", &cfg, &be), MLA_OK);
    enum { TQ = 7, TK = 12 };
    uint16_t q[TQ * PH * PD], k[TK * PH * PD], v[TK * PH * PV];
    fill_random_bf16(q, TQ * PH * PD);
    fill_random_bf16(k, TK * PH * PD);
    fill_random_bf16(v, TK * PH * PV);
    int32_t cu_q[3] = {0, 3, TQ}, cu_k[3] = {0, 5, TK};
    guarded out = guarded_alloc((size_t)TQ * PH * PV * 2), lse = guarded_alloc((size_t)TQ * PH * 4);
    mla_prefill_args ok = {
        .q = tensor(q, MLA_DTYPE_BF16, 3, TQ, PH, PD, 0),
        .k = tensor(k, MLA_DTYPE_BF16, 3, TK, PH, PD, 0),
        .v = tensor(v, MLA_DTYPE_BF16, 3, TK, PH, PV, 0),
        .cu_seqlens_q = tensor(cu_q, MLA_DTYPE_I32, 1, 3, 0, 0, 0),
        .cu_seqlens_kv = tensor(cu_k, MLA_DTYPE_I32, 1, 3, 0, 0, 0),
        .causal = 1,
        .out = tensor(out.ptr, MLA_DTYPE_BF16, 3, TQ, PH, PV, 0),
        .lse = tensor(lse.ptr, MLA_DTYPE_F32, 2, TQ, PH, 0, 0),
    };
    CHECK_STATUS(mla_prefill(be, &ok), MLA_OK);
    mla_prefill_args a;
    int32_t bad_cu[3];
#define CASE(mutation, status, needle)                                                 \
    do {                                                                               \
        a = ok;                                                                        \
        memcpy(bad_cu, cu_q, sizeof bad_cu);                                           \
        mutation;                                                                      \
        guarded_reset(&out);                                                           \
        guarded_reset(&lse);                                                           \
        mla_status st_ = mla_prefill(be, &a);                                          \
        CHECK_MSG(st_ == status && strstr(mla_last_error(), needle),                   \
                  "%s: got %s (%s)", #mutation, mla_status_string(st_), mla_last_error()); \
        CHECK_MSG(guarded_untouched(&out) && guarded_untouched(&lse), "%s wrote", #mutation); \
    } while (0)
    CASE(a.k.dtype = MLA_DTYPE_FP8_E4M3, MLA_ERR_SHAPE_MISMATCH, "'k'");
    CASE(a.v.shape[2] = PD, MLA_ERR_SHAPE_MISMATCH, "'v'");
    CASE(a.v.shape[0] = TK - 1, MLA_ERR_SHAPE_MISMATCH, "'v'");
    CASE(a.q.shape[1] = PH + 1, MLA_ERR_SHAPE_MISMATCH, "'q'");
    CASE(a.cu_seqlens_kv.shape[0] = 2, MLA_ERR_SHAPE_MISMATCH, "cu_seqlens_kv");
    CASE(a.cu_seqlens_q.dtype = MLA_DTYPE_I64, MLA_ERR_SHAPE_MISMATCH, "cu_seqlens_q");
    CASE((bad_cu[0] = 1, a.cu_seqlens_q.data = bad_cu), MLA_ERR_OUT_OF_RANGE, "must be 0");
    CASE((bad_cu[1] = 8, a.cu_seqlens_q.data = bad_cu), MLA_ERR_OUT_OF_RANGE, "decreasing");
    CASE((bad_cu[2] = 6, a.cu_seqlens_q.data = bad_cu), MLA_ERR_OUT_OF_RANGE, "number of rows");
    CASE(a.causal = 2, MLA_ERR_INVALID_ARGUMENT, "causal");
    CASE(a.max_seqlen_q = 2, MLA_ERR_INVALID_ARGUMENT, "max_seqlen");
    CASE(a.out.data = v, MLA_ERR_INVALID_ARGUMENT, "overlaps");
    CASE(a.lse.shape[1] = 3, MLA_ERR_SHAPE_MISMATCH, "'lse'");
    CASE(a.q.data = NULL, MLA_ERR_NULL_POINTER, "'q'");
#undef CASE
    free(out.base);
    free(lse.base);
    mla_backend_destroy(be);
}

/* ---- merge_state, cache write, quantize, kv_pack ---- */

TEST(bad_input_merge_state)
{
    mla_config cfg;
    mla_config_init(&cfg);
    cfg.num_heads = 2;
    mla_backend *be = NULL;
    CHECK_STATUS(mla_backend_create("cpu", &cfg, &be), MLA_OK);
    enum { T = 3, MH = 2, MD = 8 };
    float oa[T * MH * MD], ob[T * MH * MD], la[T * MH], lb[T * MH];
    for (int i = 0; i < T * MH * MD; i++) {
        oa[i] = mla_test_rand_uniform(-1, 1);
        ob[i] = mla_test_rand_uniform(-1, 1);
    }
    for (int i = 0; i < T * MH; i++) {
        la[i] = mla_test_rand_uniform(-2, 2);
        lb[i] = mla_test_rand_uniform(-2, 2);
    }
    guarded o = guarded_alloc(sizeof oa);
    mla_merge_state_args ok = {
        .o_a = tensor(oa, MLA_DTYPE_F32, 3, T, MH, MD, 0),
        .lse_a = tensor(la, MLA_DTYPE_F32, 2, T, MH, 0, 0),
        .o_b = tensor(ob, MLA_DTYPE_F32, 3, T, MH, MD, 0),
        .lse_b = tensor(lb, MLA_DTYPE_F32, 2, T, MH, 0, 0),
        .o = tensor(o.ptr, MLA_DTYPE_F32, 3, T, MH, MD, 0),
    };
    CHECK_STATUS(mla_merge_state(be, &ok), MLA_OK);
    mla_merge_state_args a = ok;
    a.o_b.shape[2] = MD + 1;
    guarded_reset(&o);
    CHECK_STATUS(mla_merge_state(be, &a), MLA_ERR_SHAPE_MISMATCH);
    CHECK(guarded_untouched(&o));
    a = ok;
    a.lse_b.dtype = MLA_DTYPE_BF16;
    CHECK_STATUS(mla_merge_state(be, &a), MLA_ERR_SHAPE_MISMATCH);
    a = ok;
    a.o.data = oa + 1; /* partial overlap with o_a */
    CHECK_STATUS(mla_merge_state(be, &a), MLA_ERR_INVALID_ARGUMENT);
    CHECK(strstr(mla_last_error(), "overlaps"));
    a = ok;
    a.o.data = oa; /* exact alias: in place is allowed */
    CHECK_STATUS(mla_merge_state(be, &a), MLA_OK);
    CHECK(guarded_untouched(&o));
    free(o.base);
    mla_backend_destroy(be);
}

TEST(bad_input_kv_cache_write_refuses_before_writing)
{
    mla_config cfg;
    mla_config_init(&cfg);
    cfg.num_heads = 1;
    cfg.kv_lora_rank = R;
    cfg.qk_rope_head_dim = P;
    cfg.page_size = PAGE;
    mla_backend *be = NULL;
    CHECK_STATUS(mla_backend_create("cpu", &cfg, &be), MLA_OK);
    enum { N = 5, CP = 2 };
    float ckv[N * R], kpe[N * P];
    for (int i = 0; i < N * R; i++) ckv[i] = mla_test_rand_uniform(-3, 3);
    for (int i = 0; i < N * P; i++) kpe[i] = mla_test_rand_uniform(-3, 3);
    int32_t slots[N] = {0, 33, -1, 63, 5};
    guarded cache = guarded_alloc((size_t)CP * PAGE * D);
    mla_kv_cache_write_args ok = {
        .c_kv = tensor(ckv, MLA_DTYPE_F32, 2, N, R, 0, 0),
        .k_pe = tensor(kpe, MLA_DTYPE_F32, 2, N, P, 0, 0),
        .slots = tensor(slots, MLA_DTYPE_I32, 1, N, 0, 0, 0),
        .kv_cache = tensor(cache.ptr, MLA_DTYPE_FP8_E4M3, 3, CP, PAGE, D, 0),
    };
    CHECK_STATUS(mla_kv_cache_write(be, &ok), MLA_OK);
    CHECK(!guarded_untouched(&cache));
    struct {
        int slot_index;
        int32_t slot;
        mla_status status;
        const char *needle;
    } slot_cases[] = {
        {1, CP * PAGE, MLA_ERR_OUT_OF_RANGE, "slots[1] = 64"},
        {3, 0, MLA_ERR_INVALID_ARGUMENT, "written twice"},
    };
    for (int i = 0; i < 2; i++) {
        int32_t saved = slots[slot_cases[i].slot_index];
        slots[slot_cases[i].slot_index] = slot_cases[i].slot;
        guarded_reset(&cache);
        mla_status st = mla_kv_cache_write(be, &ok);
        CHECK_MSG(st == slot_cases[i].status && strstr(mla_last_error(), slot_cases[i].needle),
                  "slot case %d: %s (%s)", i, mla_status_string(st), mla_last_error());
        CHECK(guarded_untouched(&cache));
        slots[slot_cases[i].slot_index] = saved;
    }
    /* NaN / Inf data: refused, cache untouched; a NaN in a skipped row (slot -1) is fine. */
    const float bad[] = {NAN, INFINITY, -INFINITY};
    for (int i = 0; i < 3; i++) {
        ckv[4 * R + 7] = bad[i];
        guarded_reset(&cache);
        CHECK_STATUS(mla_kv_cache_write(be, &ok), MLA_ERR_NONFINITE);
        CHECK(strstr(mla_last_error(), "c_kv[4][7]"));
        CHECK(guarded_untouched(&cache));
        ckv[4 * R + 7] = 0.5f;
    }
    kpe[0] = NAN;
    CHECK_STATUS(mla_kv_cache_write(be, &ok), MLA_ERR_NONFINITE);
    kpe[0] = 0.25f;
    ckv[2 * R] = NAN; /* row 2 is skipped */
    CHECK_STATUS(mla_kv_cache_write(be, &ok), MLA_OK);
    mla_kv_cache_write_args a = ok;
    a.k_pe.shape[1] = P + 1;
    CHECK_STATUS(mla_kv_cache_write(be, &a), MLA_ERR_SHAPE_MISMATCH);
    a = ok;
    a.slots.dtype = MLA_DTYPE_F32;
    CHECK_STATUS(mla_kv_cache_write(be, &a), MLA_ERR_SHAPE_MISMATCH);
    a = ok;
    a.kv_cache.dtype = MLA_DTYPE_BF16;
    CHECK_STATUS(mla_kv_cache_write(be, &a), MLA_ERR_SHAPE_MISMATCH);
    free(cache.base);
    mla_backend_destroy(be);
}

TEST(bad_input_quantize_and_kv_pack)
{
    mla_config cfg;
    mla_config_init(&cfg);
    cfg.num_heads = PH;
    cfg.qk_nope_head_dim = PN;
    cfg.qk_rope_head_dim = PR;
    cfg.v_head_dim = PV;
    mla_backend *be = NULL;
    CHECK_STATUS(mla_backend_create("cpu", &cfg, &be), MLA_OK);
    float in[40];
    for (int i = 0; i < 40; i++) in[i] = mla_test_rand_uniform(-500, 500);
    guarded out = guarded_alloc(40);
    mla_quantize_fp8_args q = {
        .input = tensor(in, MLA_DTYPE_F32, 2, 4, 10, 0, 0),
        .output = tensor(out.ptr, MLA_DTYPE_FP8_E4M3, 1, 40, 0, 0, 0),
        .scale = 1.5f,
    };
    CHECK_STATUS(mla_quantize_fp8(be, &q), MLA_OK);
    const float bad_scales[] = {0.0f, -1.0f, NAN, INFINITY};
    for (int i = 0; i < 4; i++) {
        mla_quantize_fp8_args a = q;
        a.scale = bad_scales[i];
        guarded_reset(&out);
        CHECK_STATUS(mla_quantize_fp8(be, &a), MLA_ERR_INVALID_ARGUMENT);
        CHECK(guarded_untouched(&out));
    }
    mla_quantize_fp8_args a = q;
    a.output.shape[0] = 39;
    CHECK_STATUS(mla_quantize_fp8(be, &a), MLA_ERR_SHAPE_MISMATCH);
    a = q;
    a.output.dtype = MLA_DTYPE_BF16;
    CHECK_STATUS(mla_quantize_fp8(be, &a), MLA_ERR_SHAPE_MISMATCH);
    a = q;
    a.input.ndim = 0;
    CHECK_STATUS(mla_quantize_fp8(be, &a), MLA_ERR_SHAPE_MISMATCH);
    CHECK(guarded_untouched(&out));
    free(out.base);

    enum { N = 3 };
    uint16_t kn[N * PH * PN], kpe[N * PR], v[N * PH * PV];
    fill_random_bf16(kn, N * PH * PN);
    fill_random_bf16(kpe, N * PR);
    fill_random_bf16(v, N * PH * PV);
    guarded ko = guarded_alloc(N * PH * PD), vo = guarded_alloc(N * PH * PV);
    mla_kv_pack_args ok = {
        .k_nope = tensor(kn, MLA_DTYPE_BF16, 3, N, PH, PN, 0),
        .k_pe = tensor(kpe, MLA_DTYPE_BF16, 3, N, 1, PR, 0),
        .v = tensor(v, MLA_DTYPE_BF16, 3, N, PH, PV, 0),
        .k_out = tensor(ko.ptr, MLA_DTYPE_FP8_E4M3, 3, N, PH, PD, 0),
        .v_out = tensor(vo.ptr, MLA_DTYPE_FP8_E4M3, 3, N, PH, PV, 0),
        .k_scale = 1.0f,
        .v_scale = 2.0f,
    };
    CHECK_STATUS(mla_kv_pack(be, &ok), MLA_OK);
    mla_kv_pack_args b = ok;
    b.k_pe.shape[1] = 2;
    guarded_reset(&ko);
    guarded_reset(&vo);
    CHECK_STATUS(mla_kv_pack(be, &b), MLA_ERR_SHAPE_MISMATCH);
    b = ok;
    b.v_scale = 0.0f;
    CHECK_STATUS(mla_kv_pack(be, &b), MLA_ERR_INVALID_ARGUMENT);
    b = ok;
    b.v_out.dtype = MLA_DTYPE_BF16; /* must match k_out */
    CHECK_STATUS(mla_kv_pack(be, &b), MLA_ERR_SHAPE_MISMATCH);
    b = ok;
    b.k_nope.strides[2] = 2;
    CHECK_STATUS(mla_kv_pack(be, &b), MLA_ERR_UNSUPPORTED);
    b = ok;
    b.k_out.data = kn; /* output over an input */
    CHECK_STATUS(mla_kv_pack(be, &b), MLA_ERR_INVALID_ARGUMENT);
    CHECK(guarded_untouched(&ko) && guarded_untouched(&vo));
    free(ko.base);
    free(vo.base);
    mla_backend_destroy(be);
}
