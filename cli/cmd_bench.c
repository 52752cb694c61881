/* `mla bench`: times decode (and the cache write that feeds it) and prefill: median ms of
 * --iters runs after --warmup untimed runs, with GB/s and TFLOP/s. CUDA events on a GPU. */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct bench_ctx {
    const char *backend;
    int on_gpu;
    int heads, batch, q_len, page_size, causal, iters, warmup, op, prefill_batch;
    int skip_index_check;
    int fp8_math; /* mla_config.decode_fp8_math */
    mla_dtype kv_dtype, q_dtype;
    const cli_options *opts;
    mla_backend *be;
} bench_ctx;

typedef enum { BENCH_CACHE_WRITE, BENCH_DECODE, BENCH_PREFILL } bench_kind;

typedef struct bench_target {
    bench_kind kind;
    const cli_decode_problem *dp;
    cli_decode_buffers *dd;
    const cli_prefill_problem *pp;
    cli_prefill_buffers *pd;
} bench_target;

static void print_help(void)
{
    printf("usage: mla bench [options]\n"
           "Times decode (plus the mla_kv_cache_write that fills its cache) and prefill: the\n"
           "median of --iters runs after --warmup runs, with GB/s and TFLOP/s.\n"
           "decode flops = 2*H*q_len*seq*(576+512), bytes = cache rows read + q + out + lse;\n"
           "prefill flops = 2*H*(192+128)*visible (query, key) pairs, bytes = q + k + v + out.\n"
           "CPU defaults: decode H=16 batch 2 seq 1024; prefill H=16 1x256; 5 iters.\n"
           "GPU defaults: decode H=128 batch 64 seq 4096; prefill H=128 2x4096; 20 iters.\n\n");
    cli_print_options_help();
}

static mla_status run_once(bench_ctx *c, const bench_target *t)
{
    switch (t->kind) {
    case BENCH_CACHE_WRITE: return cli_decode_write_cache(c->be, t->dp, t->dd);
    case BENCH_DECODE: return cli_decode_run(c->be, t->dp, t->dd, 0, 1);
    default: return cli_prefill_run(c->be, t->pp, t->pd, 0, 1);
    }
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median and minimum in ms; returns -1 after printing the error. */
static int time_op(bench_ctx *c, const bench_target *t, const char *label, double *median,
                   double *min)
{
    double *ms = malloc(sizeof(double) * c->iters);
    cli_timer timer;
    if (!ms || cli_timer_init(&timer, c->on_gpu)) {
        free(ms);
        return -1;
    }
    int rc = -1;
    for (int i = 0; i < c->warmup + c->iters; i++) {
        if (i < c->warmup)
            cli_stage("%s: warm-up (%d/%d)...", label, i + 1, c->warmup);
        else
            cli_stage("%s: timing (%d/%d)...", label, i - c->warmup + 1, c->iters);
        cli_timer_start(&timer);
        mla_status st = run_once(c, t);
        double elapsed = cli_timer_stop_ms(&timer);
        if (st != MLA_OK) {
            cli_stage_clear();
            cli_print_library_error(label, st);
            goto done;
        }
        if (elapsed < 0) goto done;
        if (i >= c->warmup) ms[i - c->warmup] = elapsed;
    }
    cli_stage_clear();
    qsort(ms, c->iters, sizeof(double), compare_doubles);
    *median = c->iters % 2 ? ms[c->iters / 2] : 0.5 * (ms[c->iters / 2 - 1] + ms[c->iters / 2]);
    *min = ms[0];
    rc = 0;
done:
    cli_stage_clear();
    cli_timer_destroy(&timer);
    free(ms);
    return rc;
}

static void print_result(const char *what, double median, double min, double bytes,
                         double flops)
{
    printf("  %-12s median %9.3f ms  (min %9.3f)  %8.1f GB/s", what, median, min,
           bytes / (median * 1e-3) / 1e9);
    if (flops > 0)
        printf("  %8.2f TFLOP/s\n", flops / (median * 1e-3) / 1e12);
    else
        printf("\n");
}

static int bench_decode(bench_ctx *c, cli_rng *rng)
{
    int *lens = malloc(sizeof(int) * c->batch);
    if (!lens) return -1;
    if (c->opts->seq_lens.n)
        cli_expand_list(&c->opts->seq_lens, c->batch, lens);
    else
        for (int b = 0; b < c->batch; b++) lens[b] = c->on_gpu ? 4096 : 1024;
    long long total = 0;
    for (int b = 0; b < c->batch; b++) total += lens[b];
    printf("decode: H=%d batch=%d q_len=%d seq=%lld tokens (mean %lld) page=%d kv=%s q=%s\n",
           c->heads, c->batch, c->q_len, total, total / c->batch, c->page_size,
           mla_dtype_name(c->kv_dtype), mla_dtype_name(c->q_dtype));
    fflush(stdout);
    cli_stage("decode: generating inputs...");
    cli_decode_problem p;
    int rc = cli_decode_problem_make(&p, c->batch, c->q_len, c->heads, c->page_size, lens,
                                     c->q_dtype, c->kv_dtype, c->causal,
                                     mla_backend_config(c->be)->scales.softmax_scale, rng);
    free(lens);
    if (rc) return -1;
    cli_decode_buffers d;
    cli_stage("decode: uploading inputs...");
    if (cli_decode_upload(&p, c->on_gpu, &d)) {
        cli_stage_clear();
        cli_decode_problem_free(&p);
        return -1;
    }
    rc = -1;
    double median, min;
    size_t kv_elem = mla_dtype_size(c->kv_dtype);
    bench_target t = {.kind = BENCH_CACHE_WRITE, .dp = &p, .dd = &d};
    if (time_op(c, &t, "cache_write", &median, &min)) goto done;
    /* bf16 c_kv/k_pe rows + slots read, cache rows written */
    double write_bytes = (double)p.num_tokens * (CLI_DECODE_QK_DIM * (2.0 + kv_elem) + 4.0);
    print_result("cache_write", median, min, write_bytes, 0);
    fflush(stdout);

    t.kind = BENCH_DECODE;
    if (time_op(c, &t, "decode", &median, &min)) goto done;
    double bytes = (double)total * CLI_DECODE_QK_DIM * kv_elem + (double)p.q_bytes +
                   2.0 * p.out_elems + 4.0 * p.lse_elems;
    double flops = 2.0 * c->heads * c->q_len * (double)total *
                   (CLI_DECODE_QK_DIM + CLI_KV_LORA_RANK);
    print_result("decode", median, min, bytes, flops);
    rc = 0;
done:
    cli_decode_buffers_free(&d);
    cli_decode_problem_free(&p);
    return rc;
}

static int bench_prefill(bench_ctx *c, cli_rng *rng)
{
    const cli_options *o = c->opts;
    int n = c->prefill_batch;
    int *q_lens = malloc(sizeof(int) * n), *kv_lens = malloc(sizeof(int) * n);
    if (!q_lens || !kv_lens) {
        free(q_lens);
        free(kv_lens);
        return -1;
    }
    for (int b = 0; b < n; b++) {
        q_lens[b] = o->prefill_lens.n ? o->prefill_lens.v[b % o->prefill_lens.n]
                                      : (c->on_gpu ? 4096 : 256);
        kv_lens[b] = o->prefill_kv_lens.n ? o->prefill_kv_lens.v[b % o->prefill_kv_lens.n]
                                          : q_lens[b];
    }
    cli_stage("prefill: generating inputs...");
    cli_prefill_problem p;
    int rc = cli_prefill_problem_make(&p, n, c->heads, q_lens, kv_lens, c->q_dtype, c->causal,
                                      mla_backend_config(c->be)->scales.softmax_scale, rng);
    free(q_lens);
    free(kv_lens);
    if (rc) return -1;
    cli_stage_clear();
    double pairs = cli_prefill_visible_pairs(&p);
    printf("prefill: H=%d batch=%d q=%d kv=%d tokens dtype=%s %s (%.3g visible pairs)\n",
           c->heads, n, p.total_q, p.total_kv, mla_dtype_name(c->q_dtype),
           c->causal ? "causal" : "non-causal", pairs);
    fflush(stdout);
    cli_prefill_buffers d;
    cli_stage("prefill: uploading inputs...");
    if (cli_prefill_upload(&p, c->on_gpu, &d)) {
        cli_stage_clear();
        cli_prefill_problem_free(&p);
        return -1;
    }
    rc = -1;
    double median, min;
    bench_target t = {.kind = BENCH_PREFILL, .pp = &p, .pd = &d};
    if (time_op(c, &t, "prefill", &median, &min) == 0) {
        double bytes = (double)(p.q_bytes + p.k_bytes + p.v_bytes) + 2.0 * p.out_elems +
                       4.0 * p.lse_elems;
        double flops = 2.0 * c->heads * (CLI_PREFILL_QK_DIM + CLI_V_DIM) * pairs;
        print_result("prefill", median, min, bytes, flops);
        rc = 0;
    }
    cli_prefill_buffers_free(&d);
    cli_prefill_problem_free(&p);
    return rc;
}

int cli_cmd_bench(int argc, char **argv)
{
    cli_options o;
    int help = 0;
    int rc = cli_parse_options("bench", argc, argv, 2, &o, &help);
    if (rc != CLI_EXIT_OK) return rc;
    if (help) {
        print_help();
        return CLI_EXIT_OK;
    }
    mla_backend_info info;
    rc = cli_resolve_backend("bench", o.backend, &info);
    if (rc != CLI_EXIT_OK) return rc;
    bench_ctx c;
    memset(&c, 0, sizeof c);
    c.backend = info.name;
    c.opts = &o;
    c.on_gpu = info.caps.device_type == MLA_DEVICE_CUDA;
    c.heads = cli_or_default(o.heads, c.on_gpu ? 128 : 16);
    c.batch = cli_or_default(o.batch, c.on_gpu ? 64 : 2);
    c.q_len = cli_or_default(o.q_len, 1);
    c.page_size = cli_or_default(o.page_size, 64);
    c.kv_dtype = (mla_dtype)cli_or_default(o.kv_dtype, MLA_DTYPE_FP8_E4M3);
    c.q_dtype = (mla_dtype)cli_or_default(o.q_dtype, MLA_DTYPE_BF16);
    c.causal = cli_or_default(o.causal, 1);
    c.prefill_batch = cli_or_default(o.prefill_batch, c.on_gpu ? 2 : 1);
    c.iters = cli_or_default(o.iters, c.on_gpu ? 20 : 5);
    c.warmup = cli_or_default(o.warmup, c.on_gpu ? 3 : 1);
    c.op = o.op ? o.op : CLI_OP_ALL;
    c.skip_index_check = cli_or_default(o.skip_index_check, 0);
    c.fp8_math = cli_or_default(o.fp8_math, 0);
    uint64_t seed = o.seed_given ? o.seed : cli_fresh_seed();

    mla_status st = cli_backend_create(info.name, c.heads, c.page_size, c.kv_dtype, c.q_len,
                                       c.skip_index_check, c.fp8_math,
                                       &c.be);
    if (st != MLA_OK) {
        cli_print_library_error("creating backend", st);
        return CLI_EXIT_FAIL;
    }
    c.page_size = mla_backend_config(c.be)->page_size;
    char device[160];
    cli_device_name(c.on_gpu, device, sizeof device);
    printf("mla bench: backend %s on %s, %d warm-up + %d timed runs (%s), seed %llu%s\n",
           info.name, device, c.warmup, c.iters, c.on_gpu ? "CUDA events" : "wall clock",
           (unsigned long long)seed, mla_backend_config(c.be)->decode_fp8_math ? ", decode_fp8_math 1" : "");
    if (c.on_gpu)
        printf("index checks: %s\n",
               c.skip_index_check ? "skipped (--skip-index-check 1): kernel time"
                                  : "on (block table, seq_lens and slots copied to the host and "
                                    "checked per call; --skip-index-check 1 times the kernels "
                                    "alone)");
    cli_rng rng;
    cli_rng_seed(&rng, seed);
    int failed = 0;
    if ((c.op & CLI_OP_DECODE) && bench_decode(&c, &rng)) failed = 1;
    if ((c.op & CLI_OP_PREFILL) && bench_prefill(&c, &rng)) failed = 1;
    mla_backend_destroy(c.be);
    return failed ? CLI_EXIT_FAIL : CLI_EXIT_OK;
}
