/* `mla serve-sim` engine: a continuous-batching serving loop over the serving layer of
 * libmla (mla.h section 5) with a page allocator over a fixed pool, checked step by step
 * against a double-precision oracle computed from the tokens themselves (never read back from
 * the cache). Self-contained (mla.h + the CUDA runtime when built with it), so the C test
 * suite can run it too. */
#ifndef MLA_SERVE_SIM_H
#define MLA_SERVE_SIM_H

#include "mla.h"

#include <stdint.h>
#include <stdio.h>

typedef struct serve_sim_config {
    const char *backend;     /* registered backend name ("cpu", "hopper") */
    int steps;               /* scheduler steps to run */
    uint64_t seed;
    int heads, kv_lora_rank, rope_dim, nope_dim, v_dim, page_size;
    mla_dtype kv_dtype;
    int num_pages;           /* the fixed pool */
    int max_running;         /* admitted requests (prefilling + decoding) at once */
    int max_prompt, max_output;
    int prefill_budget;      /* prompt tokens per step; longer prompts are chunked */
    int prefix_chunk;        /* extend: prefix positions per chunk */
    int spec_tokens;         /* draft tokens per verify (0: no speculative decoding) */
    int check_requests;      /* requests compared with the oracle per forward call */
    int check_rows;          /* extend: new-token rows compared per request (0: all) */
    int use_graphs;          /* decode through a captured graph (emulated on the CPU) */
    int arrivals;            /* at most this many new requests per step */
    FILE *log;               /* per-step lines and the summary; NULL: silent */
    int log_every;           /* progress line every N steps (1: every step) */
} serve_sim_config;

typedef struct serve_sim_result {
    int64_t steps, admitted, finished, rejected, waits;
    int64_t prefill_tokens, decode_tokens, verify_tokens, accepted_drafts, draft_extend_tokens;
    int64_t shared_prefix_tokens;
    int64_t checks, mismatches;
    double backend_seconds, wall_seconds;
    mla_status error;        /* MLA_OK, or the library error that stopped the run */
} serve_sim_result;

/* Defaults for the CPU (small model shape) or a GPU (DeepSeek-V3 dims at TP8: 16 heads). */
void serve_sim_defaults(serve_sim_config *c, int on_gpu);
/* Runs the simulation. Returns 0 when every check passed and no library call failed. */
int serve_sim_run(const serve_sim_config *c, serve_sim_result *r);

#endif
