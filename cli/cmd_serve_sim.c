/* `mla serve-sim`: an end-to-end serving run (continuous batching, chunked prefill, decode,
 * speculative verify + draft_extend, page allocator over a fixed pool) checked step by step
 * against a double-precision oracle. The engine is cli/serve_sim.c. */
#include "cli.h"
#include "serve_sim.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void print_help(void)
{
    printf("usage: mla serve-sim [options]\n"
           "Simulates a serving engine on a backend: requests with random prompt and output\n"
           "lengths arrive, some sharing a prompt prefix (its pages are shared), some decoding\n"
           "speculatively (verify of draft tokens, partial acceptance, draft_extend); prompts are\n"
           "prefilled in chunks over their cached prefix, running requests decode, finished ones\n"
           "free their pages. Every forward call is compared on a sample of requests with a\n"
           "double-precision oracle; prints a line per step, the throughput and PASS/FAIL.\n"
           "Exit status: 0 PASS, 1 FAIL or library error, 2 usage.\n\n"
           "Options (CPU default: small model H=4 rank 64 rope 16 nope 32 v 32, page 32;\n"
           "GPU default: DeepSeek-V3 dims at TP8, H=16 rank 512 rope 64 nope 128 v 128, page 64):\n"
           "  --backend NAME|auto   cpu (default), hopper, or auto (hopper if available)\n"
           "  --steps N             scheduler steps (default 300)\n"
           "  --seed S              random seed (default 1)\n"
           "  --pages N             pages in the pool (CPU 160, GPU 2048)\n"
           "  --max-running N       requests admitted at once (CPU 12, GPU 64)\n"
           "  --max-prompt N        longest prompt (CPU 160, GPU 1024)\n"
           "  --max-output N        longest output (CPU 48, GPU 128)\n"
           "  --prefill-budget N    prompt tokens per step; longer prompts are chunked\n"
           "  --prefix-chunk N      prefix positions per chunk of the chunked-prefix extend\n"
           "  --spec N              draft tokens per verify, 0..7 (default 3; 0 disables)\n"
           "  --heads N             query heads\n"
           "  --page-size N         32 or 64\n"
           "  --kv-dtype fp8|bf16   cache dtype (default fp8, k_scale 0.5)\n"
           "  --check N             requests compared with the oracle per forward call\n"
           "  --graphs              decode through a captured CUDA graph (emulated on the CPU)\n"
           "  --every N             progress line every N steps (default 1)\n"
           "  --quiet               summary only\n");
}

static int parse_int(const char *opt, const char *v, int lo, int hi, int *out)
{
    char *end = NULL;
    errno = 0;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || errno || *end || x < lo || x > hi) {
        fprintf(stderr, "mla serve-sim: %s needs an integer in [%d, %d], got '%s'\n", opt, lo, hi, v ? v : "(nothing)");
        return -1;
    }
    *out = (int)x;
    return 0;
}

int cli_cmd_serve_sim(int argc, char **argv)
{
    const char *backend = "cpu";
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            print_help();
            return CLI_EXIT_OK;
        }
        if (strcmp(argv[i], "--backend") == 0 && i + 1 < argc) backend = argv[i + 1];
    }
    mla_backend_info info;
    int rc = cli_resolve_backend("serve-sim", backend, &info);
    if (rc != CLI_EXIT_OK) return rc;
    serve_sim_config c;
    serve_sim_defaults(&c, info.caps.device_type == MLA_DEVICE_CUDA);
    c.backend = info.name;
    int quiet = 0;
    struct {
        const char *name;
        int lo, hi;
        int *dst;
    } ints[] = {
        {"--steps", 0, 1000000, &c.steps},          {"--pages", 1, 1 << 24, &c.num_pages},
        {"--max-running", 1, 4096, &c.max_running}, {"--max-prompt", 1, 1 << 20, &c.max_prompt},
        {"--max-output", 1, 1 << 20, &c.max_output}, {"--prefill-budget", 1, 1 << 20, &c.prefill_budget},
        {"--prefix-chunk", 1, 1 << 20, &c.prefix_chunk}, {"--spec", 0, 7, &c.spec_tokens},
        {"--heads", 1, 128, &c.heads},              {"--page-size", 1, 4096, &c.page_size},
        {"--check", 0, 4096, &c.check_requests},    {"--every", 1, 1000000, &c.log_every},
    };
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        int handled = 0;
        for (size_t k = 0; k < sizeof ints / sizeof ints[0]; k++)
            if (strcmp(a, ints[k].name) == 0) {
                if (parse_int(a, i + 1 < argc ? argv[i + 1] : NULL, ints[k].lo, ints[k].hi, ints[k].dst)) return CLI_EXIT_USAGE;
                i++;
                handled = 1;
            }
        if (handled) continue;
        if (strcmp(a, "--backend") == 0) {
            i++;
        } else if (strcmp(a, "--seed") == 0 && i + 1 < argc) {
            char *end = NULL;
            errno = 0;
            c.seed = strtoull(argv[++i], &end, 0);
            if (errno || *end) {
                fprintf(stderr, "mla serve-sim: --seed needs an unsigned integer, got '%s'\n", argv[i]);
                return CLI_EXIT_USAGE;
            }
        } else if (strcmp(a, "--kv-dtype") == 0 && i + 1 < argc) {
            const char *v = argv[++i];
            if (strcmp(v, "fp8") == 0 || strcmp(v, "fp8_e4m3") == 0)
                c.kv_dtype = MLA_DTYPE_FP8_E4M3;
            else if (strcmp(v, "bf16") == 0)
                c.kv_dtype = MLA_DTYPE_BF16;
            else {
                fprintf(stderr, "mla serve-sim: --kv-dtype must be fp8 or bf16, got '%s'\n", v);
                return CLI_EXIT_USAGE;
            }
        } else if (strcmp(a, "--graphs") == 0) {
            c.use_graphs = 1;
        } else if (strcmp(a, "--quiet") == 0) {
            quiet = 1;
        } else {
            fprintf(stderr, "mla serve-sim: unknown option '%s' (see mla serve-sim --help)\n", a);
            return CLI_EXIT_USAGE;
        }
    }
    if (quiet) c.log_every = 0;
    serve_sim_result r;
    return serve_sim_run(&c, &r) == 0 ? CLI_EXIT_OK : CLI_EXIT_FAIL;
}
