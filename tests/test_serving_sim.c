/* serve-sim on the CPU backend inside the C suite: hundreds of scheduler steps with zero
 * oracle mismatches, a pool too small for some requests (they wait or are rejected, never a
 * crash or a corrupted cache), and decode + verify through the (emulated) graph path. The engine is
 * compiled into this test from the CLI's source. */
#include "../cli/serve_sim_engine.h"

#include "test.h"

static void print_result(const serve_sim_result *r)
{
    fprintf(stderr,
            "    steps %lld admitted %lld finished %lld rejected %lld waits %lld prefill %lld decode %lld "
            "verify %lld accepted %lld draft_extend %lld shared %lld checks %lld mismatches %lld error %s\n",
            (long long)r->steps, (long long)r->admitted, (long long)r->finished, (long long)r->rejected,
            (long long)r->waits, (long long)r->prefill_tokens, (long long)r->decode_tokens,
            (long long)r->verify_tokens, (long long)r->accepted_drafts, (long long)r->draft_extend_tokens,
            (long long)r->shared_prefix_tokens, (long long)r->checks, (long long)r->mismatches,
            mla_status_string(r->error));
}

TEST(serve_sim_cpu_300_steps_zero_mismatches)
{
    serve_sim_config c;
    serve_sim_defaults(&c, 0);
    c.steps = 300;
    c.seed = mla_test_rand_u64();
    c.check_requests = 2;
    c.check_rows = 4;
    c.log = NULL;
    serve_sim_result r;
    const int rc = serve_sim_run(&c, &r);
    CHECK_MSG(rc == 0 && r.mismatches == 0 && r.error == MLA_OK, "serve-sim failed (seed %llu)",
              (unsigned long long)c.seed);
    CHECK(r.steps == 300);
    /* Every path ran: chunked prefill over shared prefixes, decode, verify with partial
     * acceptance, draft_extend, and requests finishing (their pages reused). */
    CHECK(r.finished > 50);
    CHECK(r.prefill_tokens > 0 && r.decode_tokens > 0 && r.verify_tokens > 0);
    CHECK(r.accepted_drafts > 0 && r.draft_extend_tokens > 0 && r.shared_prefix_tokens > 0);
    CHECK(r.checks > 500);
    if (rc != 0 || r.mismatches) print_result(&r);
}

TEST(serve_sim_pool_exhaustion_waits_and_rejects)
{
    serve_sim_config c;
    serve_sim_defaults(&c, 0);
    c.steps = 150;
    c.seed = mla_test_rand_u64();
    c.num_pages = 12;     /* 384 tokens */
    c.max_prompt = 700;   /* about half the requests need more than 12 pages: rejected (with
                           * 400, one in 14 did, and some seeds saw none reach the queue's head) */
    c.max_output = 24;
    c.check_requests = 2;
    c.check_rows = 4;
    c.log = NULL;
    serve_sim_result r;
    const int rc = serve_sim_run(&c, &r);
    CHECK_MSG(rc == 0 && r.mismatches == 0 && r.error == MLA_OK, "serve-sim failed (seed %llu)",
              (unsigned long long)c.seed);
    CHECK_MSG(r.rejected > 0, "no request was rejected");
    CHECK_MSG(r.waits > 0, "no request waited for pages");
    CHECK(r.finished > 5);
    if (rc != 0 || !r.rejected || !r.waits) print_result(&r);
}

TEST(serve_sim_graphs_bf16_page64)
{
    serve_sim_config c;
    serve_sim_defaults(&c, 0);
    c.steps = 120;
    c.seed = mla_test_rand_u64();
    c.use_graphs = 1;
    c.page_size = 64;
    c.kv_dtype = MLA_DTYPE_BF16;
    c.spec_tokens = 2;
    c.check_requests = 3;
    c.check_rows = 4;
    c.log = NULL;
    serve_sim_result r;
    const int rc = serve_sim_run(&c, &r);
    CHECK_MSG(rc == 0 && r.mismatches == 0 && r.error == MLA_OK, "serve-sim failed (seed %llu)",
              (unsigned long long)c.seed);
    CHECK(r.decode_tokens > 50 && r.verify_tokens > 50); /* both through their graphs */
    if (rc != 0) print_result(&r);
}
