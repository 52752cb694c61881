/* `mla check`: runs decode (after writing the cache with mla_kv_cache_write) and prefill on a
 * backend with fresh random inputs and poisoned outputs, and compares every element with a
 * reference: the CPU backend "cpu", or for "cpu" itself an independent double-precision
 * computation. Exit status 1 when anything fails. */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OUT_REL_TOL 1e-2 /* ||out - ref|| / ||ref|| for bf16 outputs */
#define ROW_REL_TOL 5e-2 /* the same per output row: catches a wrong head or token */
#define LSE_ABS_TOL 1e-2 /* natural-log units; LSE is float in every backend */
/* fp8 prefill on tensor cores rounds P to e4m3 (3 mantissa bits) before P·V: ~2e-2 relative
 * error against the float reference is the format's, not a bug (bench/NOTES.md, Prefill). The
 * same bound for decode with --fp8-math 1, an fp8 query and an fp8 cache on a GPU (the e4m3-P
 * decode kernel: up to 2.5e-2 on 32k-key rows, bench/NOTES.md). */
#define FP8_PREFILL_REL_TOL 3e-2
#define FP8_PREFILL_ROW_REL_TOL 1e-1

typedef struct check_ctx {
    const char *backend;
    int on_gpu, against_naive;
    int heads, batch, q_len, page_size, causal, op, iters;
    int fp8_math; /* --fp8-math: the tested backend's decode_fp8_math */
    mla_dtype kv_dtype, q_dtype;
    const cli_options *opts;
    int prefill_batch;
    int seq_lo, seq_hi; /* random decode lengths when --seq-len is not given */
    mla_backend *tested, *reference;
    int passed, total;
} check_ctx;

static void print_help(void)
{
    printf("usage: mla check [options]\n"
           "Runs decode (on a KV cache written with mla_kv_cache_write) and prefill on a\n"
           "DeepSeek-V3-like problem and compares every output element with the CPU reference\n"
           "backend (or, for --backend cpu, with a double-precision computation in the tool).\n"
           "PASS needs rel err ||out-ref||/||ref|| < %.0e (< %.0e for every row of one head\n"
           "and token), LSE abs err < %.0e, no NaN, and a byte-exact cache (fp8 prefill on\n"
           "the GPU, and decode with --fp8-math 1, fp8 query and fp8 cache on the GPU:\n"
           "< 3e-2 and < 1e-1 per row, since P is rounded to e4m3). Exit status:\n"
           "0 all PASS, 1 a FAIL or library error, 2 usage.\n"
           "CPU defaults: decode H=16 batch 4 seq 1000..4000 q_len 1 fp8 page 64;\n"
           "prefill H=16 q 256,192 kv 256,256 causal. GPU defaults: H=128, batch 32,\n"
           "seq 3072..5120; prefill q 2048,1536 kv 2048,2048.\n\n",
           OUT_REL_TOL, ROW_REL_TOL, LSE_ABS_TOL);
    cli_print_options_help();
}

static void record(check_ctx *c, int pass)
{
    c->total++;
    c->passed += pass;
}

static void print_lens(const char *label, const int *v, int n)
{
    printf(" %s=", label);
    if (n <= 8) {
        for (int i = 0; i < n; i++) printf("%s%d", i ? "," : "", v[i]);
        return;
    }
    long long sum = 0;
    int lo = v[0], hi = v[0];
    for (int i = 0; i < n; i++) {
        sum += v[i];
        lo = v[i] < lo ? v[i] : lo;
        hi = v[i] > hi ? v[i] : hi;
    }
    printf("%d..%d (mean %lld)", lo, hi, sum / n);
}

/* The CPU backend with the tested backend's (adjusted) settings, created on first use. */
static int reference_backend(check_ctx *c)
{
    if (c->reference) return 0;
    mla_status st = cli_backend_create("cpu", c->heads, c->page_size, c->kv_dtype, c->q_len, 0, 0,
                                       &c->reference);
    if (st != MLA_OK) {
        cli_print_library_error("creating the cpu reference backend", st);
        return -1;
    }
    return 0;
}

/* The reference outputs: doubles from the tool's own computation, or the CPU backend's
 * bf16 out and f32 LSE. */
typedef struct reference_outputs {
    void *out, *lse;
    cli_values out_values, lse_values;
} reference_outputs;

static int reference_alloc(check_ctx *c, reference_outputs *r, size_t out_elems,
                           size_t lse_elems)
{
    size_t out_size = c->against_naive ? sizeof(double) : sizeof(uint16_t);
    size_t lse_size = c->against_naive ? sizeof(double) : sizeof(float);
    r->out = malloc(out_size * out_elems);
    r->lse = malloc(lse_size * lse_elems);
    r->out_values = (cli_values){r->out, c->against_naive ? CLI_VALUES_F64 : CLI_VALUES_BF16};
    r->lse_values = (cli_values){r->lse, c->against_naive ? CLI_VALUES_F64 : CLI_VALUES_F32};
    if (r->out && r->lse) return 0;
    fprintf(stderr, "mla: out of host memory for the reference outputs\n");
    return -1;
}

static void reference_free(reference_outputs *r)
{
    free(r->out);
    free(r->lse);
}

static void report_op(check_ctx *c, const char *op, const reference_outputs *r,
                      const uint16_t *out, const float *lse, const uint16_t *out_nolse,
                      size_t out_elems, size_t lse_elems, size_t row_len)
{
    char what[32];
    cli_values got = {out, CLI_VALUES_BF16};
    cli_error_stats s = cli_compare(got, r->out_values, out_elems, row_len);
    int fp8_pv = c->on_gpu && c->q_dtype == MLA_DTYPE_FP8_E4M3 &&
                 (strcmp(op, "prefill") == 0 || (c->fp8_math && c->kv_dtype == MLA_DTYPE_FP8_E4M3));
    double rel_tol = fp8_pv ? FP8_PREFILL_REL_TOL : OUT_REL_TOL;
    double row_tol = fp8_pv ? FP8_PREFILL_ROW_REL_TOL : ROW_REL_TOL;
    snprintf(what, sizeof what, "%s out", op);
    record(c, cli_report_values(what, &s, rel_tol, row_tol));
    s = cli_compare((cli_values){lse, CLI_VALUES_F32}, r->lse_values, lse_elems, 1);
    snprintf(what, sizeof what, "%s lse", op);
    record(c, cli_report_lse(what, &s, LSE_ABS_TOL));
    if (out_nolse) {
        s = cli_compare((cli_values){out_nolse, CLI_VALUES_BF16}, r->out_values, out_elems,
                        row_len);
        snprintf(what, sizeof what, "%s no-lse", op);
        record(c, cli_report_values(what, &s, rel_tol, row_tol));
    }
}

static int compare_decode(check_ctx *c, const cli_decode_problem *p, const uint16_t *out,
                          const float *lse, const uint16_t *out_nolse)
{
    reference_outputs r;
    int rc = reference_alloc(c, &r, p->out_elems, p->lse_elems);
    if (rc == 0 && c->against_naive) {
        rc = cli_reference_decode_naive(p, p->cache_expected, r.out, r.lse);
        if (rc) fprintf(stderr, "mla: out of host memory for the decode reference\n");
    } else if (rc == 0) {
        mla_status st = cli_reference_decode_cpu(c->reference, p, p->cache_expected, r.out, r.lse);
        if (st != MLA_OK) cli_print_library_error("decode on the cpu reference backend", st);
        rc = st == MLA_OK ? 0 : -1;
    }
    cli_stage_clear();
    if (rc == 0)
        report_op(c, "decode", &r, out, lse, out_nolse, p->out_elems, p->lse_elems,
                  CLI_KV_LORA_RANK);
    reference_free(&r);
    return rc;
}

static int check_decode(check_ctx *c, cli_rng *rng)
{
    int *lens = malloc(sizeof(int) * c->batch);
    if (!lens) return -1;
    if (c->opts->seq_lens.n)
        cli_expand_list(&c->opts->seq_lens, c->batch, lens);
    else
        for (int b = 0; b < c->batch; b++) lens[b] = cli_rng_int(rng, c->seq_lo, c->seq_hi);

    printf("decode: H=%d batch=%d q_len=%d", c->heads, c->batch, c->q_len);
    print_lens("seq_lens", lens, c->batch);
    printf(" page=%d kv=%s q=%s%s\n", c->page_size, mla_dtype_name(c->kv_dtype),
           mla_dtype_name(c->q_dtype), c->q_len > 1 ? (c->causal ? " causal" : " non-causal") : "");
    fflush(stdout);

    cli_stage("decode: generating inputs...");
    cli_decode_problem p;
    const float softmax_scale = mla_backend_config(c->tested)->scales.softmax_scale;
    int rc = cli_decode_problem_make(&p, c->batch, c->q_len, c->heads, c->page_size, lens,
                                     c->q_dtype, c->kv_dtype, c->causal, softmax_scale, rng);
    free(lens);
    if (rc) return -1;

    cli_decode_buffers d;
    uint8_t *cache = malloc(p.cache_bytes);
    uint16_t *out = malloc(2 * p.out_elems), *out_nolse = malloc(2 * p.out_elems);
    float *lse = malloc(sizeof(float) * p.lse_elems);
    rc = -1;
    if (!cache || !out || !out_nolse || !lse) {
        fprintf(stderr, "mla: out of host memory for decode outputs\n");
        goto done_host;
    }
    cli_stage("decode: uploading inputs...");
    if (cli_decode_upload(&p, c->on_gpu, &d)) goto done_host;

    cli_stage("decode: writing %lld cache rows on %s...", (long long)p.num_tokens, c->backend);
    mla_status st = cli_decode_write_cache(c->tested, &p, &d);
    if (st != MLA_OK) {
        cli_stage_clear();
        cli_print_library_error("mla_kv_cache_write", st);
        goto done;
    }
    if (cli_buffer_download(&d.cache, cache, "kv cache")) goto done;
    cli_stage_clear();
    record(c, cli_report_bytes("cache_write", cache, p.cache_expected, p.cache_bytes));
    fflush(stdout);

    cli_stage("decode: running on %s...", c->backend);
    st = cli_decode_run(c->tested, &p, &d, 1, 1);
    if (st == MLA_OK && (cli_buffer_download(&d.out, out, "decode out") ||
                         cli_buffer_download(&d.lse, lse, "decode lse")))
        goto done;
    if (st == MLA_OK) {
        cli_stage("decode: running on %s without LSE...", c->backend);
        st = cli_decode_run(c->tested, &p, &d, 1, 0);
        if (st == MLA_OK && cli_buffer_download(&d.out, out_nolse, "decode out")) goto done;
    }
    if (st != MLA_OK) {
        cli_stage_clear();
        cli_print_library_error("mla_decode", st);
        goto done;
    }
    rc = compare_decode(c, &p, out, lse, out_nolse);
done:
    cli_decode_buffers_free(&d);
done_host:
    cli_stage_clear();
    free(cache);
    free(out);
    free(out_nolse);
    free(lse);
    cli_decode_problem_free(&p);
    return rc;
}

static int compare_prefill(check_ctx *c, const cli_prefill_problem *p, const uint16_t *out,
                           const float *lse)
{
    reference_outputs r;
    int rc = reference_alloc(c, &r, p->out_elems, p->lse_elems);
    if (rc == 0 && c->against_naive) {
        rc = cli_reference_prefill_naive(p, r.out, r.lse);
        if (rc) fprintf(stderr, "mla: out of host memory for the prefill reference\n");
    } else if (rc == 0) {
        mla_status st = cli_reference_prefill_cpu(c->reference, p, r.out, r.lse);
        if (st != MLA_OK) cli_print_library_error("prefill on the cpu reference backend", st);
        rc = st == MLA_OK ? 0 : -1;
    }
    cli_stage_clear();
    if (rc == 0)
        report_op(c, "prefill", &r, out, lse, NULL, p->out_elems, p->lse_elems, CLI_V_DIM);
    reference_free(&r);
    return rc;
}

static int check_prefill(check_ctx *c, cli_rng *rng)
{
    static const int cpu_q[] = {256, 192}, cpu_kv[] = {256, 256};
    static const int gpu_q[] = {2048, 1536}, gpu_kv[] = {2048, 2048};
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
                                      : (c->on_gpu ? gpu_q : cpu_q)[b % 2];
        kv_lens[b] = o->prefill_kv_lens.n ? o->prefill_kv_lens.v[b % o->prefill_kv_lens.n]
                     : o->prefill_lens.n  ? q_lens[b]
                                          : (c->on_gpu ? gpu_kv : cpu_kv)[b % 2];
    }
    printf("prefill: H=%d batch=%d", c->heads, n);
    print_lens("q_lens", q_lens, n);
    print_lens("kv_lens", kv_lens, n);
    printf(" dtype=%s %s\n", mla_dtype_name(c->q_dtype), c->causal ? "causal" : "non-causal");
    fflush(stdout);

    cli_stage("prefill: generating inputs...");
    cli_prefill_problem p;
    const float softmax_scale = mla_backend_config(c->tested)->scales.softmax_scale;
    int rc = cli_prefill_problem_make(&p, n, c->heads, q_lens, kv_lens, c->q_dtype, c->causal,
                                      softmax_scale, rng);
    free(q_lens);
    free(kv_lens);
    if (rc) return -1;
    rc = -1;
    cli_prefill_buffers d;
    uint16_t *out = malloc(2 * p.out_elems);
    float *lse = malloc(sizeof(float) * p.lse_elems);
    if (!out || !lse) {
        fprintf(stderr, "mla: out of host memory for prefill outputs\n");
        goto done_host;
    }
    cli_stage("prefill: uploading inputs...");
    if (cli_prefill_upload(&p, c->on_gpu, &d)) goto done_host;
    cli_stage("prefill: running on %s...", c->backend);
    mla_status st = cli_prefill_run(c->tested, &p, &d, 1, 1);
    if (st != MLA_OK) {
        cli_stage_clear();
        cli_print_library_error("mla_prefill", st);
        goto done;
    }
    if (cli_buffer_download(&d.out, out, "prefill out") ||
        cli_buffer_download(&d.lse, lse, "prefill lse"))
        goto done;
    rc = compare_prefill(c, &p, out, lse);
done:
    cli_prefill_buffers_free(&d);
done_host:
    cli_stage_clear();
    free(out);
    free(lse);
    cli_prefill_problem_free(&p);
    return rc;
}

int cli_cmd_check(int argc, char **argv)
{
    cli_options o;
    int help = 0;
    int rc = cli_parse_options("check", argc, argv, 2, &o, &help);
    if (rc != CLI_EXIT_OK) return rc;
    if (help) {
        print_help();
        return CLI_EXIT_OK;
    }
    mla_backend_info info;
    rc = cli_resolve_backend("check", o.backend, &info);
    if (rc != CLI_EXIT_OK) return rc;

    check_ctx c;
    memset(&c, 0, sizeof c);
    c.backend = info.name;
    c.opts = &o;
    c.on_gpu = info.caps.device_type == MLA_DEVICE_CUDA;
    c.against_naive = strcmp(info.name, "cpu") == 0;
    c.heads = cli_or_default(o.heads, c.on_gpu ? 128 : 16);
    c.batch = cli_or_default(o.batch, c.on_gpu ? 32 : 4);
    c.seq_lo = c.on_gpu ? 3072 : 1000;
    c.seq_hi = c.on_gpu ? 5120 : 4000;
    c.q_len = cli_or_default(o.q_len, 1);
    c.page_size = cli_or_default(o.page_size, 64);
    c.kv_dtype = (mla_dtype)cli_or_default(o.kv_dtype, MLA_DTYPE_FP8_E4M3);
    c.q_dtype = (mla_dtype)cli_or_default(o.q_dtype, MLA_DTYPE_BF16);
    c.causal = cli_or_default(o.causal, 1);
    c.prefill_batch = cli_or_default(o.prefill_batch, 2);
    c.iters = cli_or_default(o.iters, 1);
    c.fp8_math = cli_or_default(o.fp8_math, 0);
    c.op = o.op ? o.op : CLI_OP_ALL;
    uint64_t seed = o.seed_given ? o.seed : cli_fresh_seed();

    mla_status st = cli_backend_create(info.name, c.heads, c.page_size, c.kv_dtype, c.q_len,
                                       cli_or_default(o.skip_index_check, 0), c.fp8_math,
                                       &c.tested);
    if (st != MLA_OK) {
        cli_print_library_error("creating backend", st);
        return CLI_EXIT_FAIL;
    }
    c.page_size = mla_backend_config(c.tested)->page_size; /* as adjusted by the check */
    char device[160];
    cli_device_name(c.on_gpu, device, sizeof device);
    printf("mla check: backend %s on %s, reference: %s, seed %llu%s\n", info.name, device,
           c.against_naive ? "double-precision computation in the tool" : "cpu backend",
           (unsigned long long)seed,
           mla_backend_config(c.tested)->decode_fp8_math ? ", decode_fp8_math 1" : "");
    fflush(stdout);
    if (!c.against_naive && reference_backend(&c)) {
        mla_backend_destroy(c.tested);
        return CLI_EXIT_FAIL;
    }

    int failed_to_run = 0;
    double t0 = cli_now_seconds();
    for (int it = 0; it < c.iters; it++) {
        cli_rng rng;
        cli_rng_seed(&rng, seed + (uint64_t)it);
        if (c.iters > 1) printf("round %d/%d (seed %llu)\n", it + 1, c.iters,
                                (unsigned long long)(seed + (uint64_t)it));
        if ((c.op & CLI_OP_DECODE) && check_decode(&c, &rng)) failed_to_run = 1;
        if ((c.op & CLI_OP_PREFILL) && check_prefill(&c, &rng)) failed_to_run = 1;
        fflush(stdout);
    }
    mla_backend_destroy(c.tested);
    mla_backend_destroy(c.reference);
    int pass = !failed_to_run && c.passed == c.total;
    printf("check: %s (%d/%d passed%s) in %.1f s; rerun with --seed %llu\n",
           pass ? "PASS" : "FAIL", c.passed, c.total,
           failed_to_run ? ", an operation failed to run" : "",
           cli_now_seconds() - t0, (unsigned long long)seed);
    return pass ? CLI_EXIT_OK : CLI_EXIT_FAIL;
}
