/* Decode benchmark of the "hopper" backend through the public API.
 *
 * Each case: random inputs (never zeros), one CUDA graph per input set (the decode call is
 * captured, so launch gaps stay out), several input sets whose caches together exceed L2,
 * rotated every call; warm-up, then `reps` replays each between two CUDA events; median
 * ("ms1"). The headline time ("ms") is per call of a graph of 16 back-to-back calls (how the
 * layers of a model run in a serving loop), median of reps/4 replays. "plan": the same chain
 * with one mla_decode_plan built at its start and used by all 16 calls (the layers of one
 * forward step sharing their batch's plan), per call, replayed in turn with the plain chain
 * ("pair": clocks drift under sustained load, so the plan is compared within its pair).
 * Reported: time, effective GB/s (cache bytes read + q + out), TFLOP/s (2 * (576 + 512) per
 * head per key per query token), and the roofline fraction t_floor / t with
 * t_floor = max(bytes / copy bandwidth, flops / 16-bit MMA peak), both ceilings measured in the
 * same run (cudaMemcpy D2D counting read + write; 8192^3 cuBLASLt GEMMs). "fp8roof" uses the
 * fp8 GEMM peak instead (the floor a kernel with fp8 tensor-core math would have).
 *
 * "MHz": the SM clock right after the case's timed replays (bench/clock_probe.cu), which
 * sustained load can lower; the decode kernels' per-block cost follows it.
 *
 * Usage: decode [--reps N] [--quick | --bars] [--case B,q_len,H,seq,fp8|bf16[,q8|qq][,fm][,long=N]]...
 * (--case, up to 64 times, runs those cases only, page 64: for A/B runs and profilers such as
 * ncu. q8: fp8 query; qq: a bf16 query quantized to fp8 (mla_quantize_fp8, scale 1) in each
 * timed call before its decode; fm: mla_config.decode_fp8_math = 1 (e4m3 P with an fp8 query and cache);
 * long=N: request 0 has N keys, the others seq: the split-KV balance for one long request
 * among short ones. --bars: the cases of issue #3's speed bars, then one verdict line per case
 * against its bar, for the headline time and for the shared-plan column, and for each H16 grid
 * the fixed cost per call and the steady state's slowdown fitted from its cases.) */
#include "mla.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef MLA_HAVE_CUDA
int main(void)
{
    printf("decode bench: built without CUDA, nothing to measure\n");
    return 0;
}
#else
#include "bench_common.h"

#define DQK 576
#define DV 512

typedef struct bench_case {
    int batch, q_len, heads, seq, page;
    mla_dtype kv;
    const char *note;
    /* 0: bf16 query; 1: fp8 query (q_scale 1); Q_QUANT: a bf16 query that each call quantizes
     * to fp8 with mla_quantize_fp8 (scale 1) before its decode, timed with it: what a caller
     * with a bf16 query pays for the fp8 kernels (mla_forward_args.quantize_q does the same) */
    int q_fp8;
    int long_seq; /* > 0: request 0 has this many keys instead of seq */
    int fp8_math; /* mla_config.decode_fp8_math */
} bench_case;

enum { Q_QUANT = 2 };

static double g_copy_gbps, g_bf16_tflops, g_fp8_tflops;

/* One call of a case: the decode, after the query's quantization for Q_QUANT (q_src: the bf16
 * query, a->q: the fp8 buffer the decode reads). */
static mla_status bench_call(mla_backend *be, const bench_case *c, const mla_decode_args *a, void *q_src)
{
    if (c->q_fp8 == Q_QUANT) {
        mla_quantize_fp8_args qa;
        memset(&qa, 0, sizeof qa);
        qa.input = a->q;
        qa.input.data = q_src;
        qa.input.dtype = MLA_DTYPE_BF16;
        qa.output = a->q;
        qa.scale = 1.0f;
        qa.stream = a->stream;
        const mla_status st = mla_quantize_fp8(be, &qa);
        if (st != MLA_OK) return st;
    }
    return mla_decode(be, a);
}

/* What a case measured (per call, ms) and its fractions of the floors, for the bar verdicts. */
typedef struct case_result {
    double ms, ms_plan;
    double t_mem, t_mma; /* floors, seconds: bytes / copy bandwidth, flops / bf16 peak */
    double flops;
    double mhz;
    int flagged; /* the backend's device error flags were set */
} case_result;

/* Medians of n timed launches of each of k graphs, launched in turn (after one warm-up launch
 * of each), so that clock or power drift over the run reaches all alike; ms[k]; t: k*n floats. */
static int median_launches_ms(const cudaGraphExec_t *g, int k, cudaStream_t st, float *t, int n,
                              double *ms)
{
    cudaEvent_t c0, c1;
    CUDA_OK(cudaEventCreate(&c0));
    CUDA_OK(cudaEventCreate(&c1));
    for (int j = 0; j < k; j++) CUDA_OK(cudaGraphLaunch(g[j], st));
    for (int i = 0; i < k * n; i++) {
        CUDA_OK(cudaEventRecord(c0, st));
        CUDA_OK(cudaGraphLaunch(g[i % k], st));
        CUDA_OK(cudaEventRecord(c1, st));
        CUDA_OK(cudaEventSynchronize(c1));
        cudaEventElapsedTime(&t[(i % k) * n + i / k], c0, c1);
    }
    cudaEventDestroy(c0);
    cudaEventDestroy(c1);
    for (int j = 0; j < k; j++) {
        qsort(t + j * n, (size_t)n, sizeof(float), cmp_float);
        ms[j] = t[j * n + n / 2];
    }
    return 0;
}

static int run_case(const bench_case *c, int reps, case_result *res)
{
    const int B = c->batch, L = c->q_len, H = c->heads, P = c->page;
    const size_t esz = mla_dtype_size(c->kv);
    const int seq0 = c->long_seq > 0 ? c->long_seq : c->seq; /* request 0's keys */
    const int max_seq = seq0 > c->seq ? seq0 : c->seq;
    const int pages_per_seq = (max_seq + P - 1) / P; /* block-table row length */
    const int pages0 = (seq0 + P - 1) / P, pages_rest = (c->seq + P - 1) / P;
    const size_t set_pages = (size_t)pages0 + (size_t)(B - 1) * pages_rest; /* pages a set reads */
    const size_t set_bytes = set_pages * P * DQK * esz;
    /* enough sets that one rotation touches > 4x the 50 MB L2, at most 8 */
    int nsets = (int)((200u << 20) / set_bytes) + 1;
    if (nsets < 2) nsets = 2;
    if (nsets > 8) nsets = 8;
    mla_config cfg;
    mla_config_init(&cfg);
    cfg.num_heads = H;
    cfg.page_size = P;
    cfg.kv_cache_dtype = c->kv;
    cfg.max_q_len = L;
    cfg.max_batch = B;
    cfg.skip_index_check = 1;
    cfg.decode_fp8_math = c->fp8_math;
    cfg.device = (mla_device){MLA_DEVICE_CUDA, 0};
    mla_backend *be = NULL;
    if (mla_backend_create("hopper", &cfg, &be) != MLA_OK) {
        fprintf(stderr, "backend: %s\n", mla_last_error());
        return -1;
    }
    const size_t total_pages = set_pages * nsets;
    void *cache = NULL, *q = NULL, *q_src = NULL, *out = NULL, *ws = NULL, *tables = NULL, *seqs = NULL;
    const mla_dtype qdt = c->q_fp8 ? MLA_DTYPE_FP8_E4M3 : MLA_DTYPE_BF16;
    const size_t q_bytes = (size_t)B * L * H * DQK * mla_dtype_size(qdt), out_bytes = (size_t)B * L * H * DV * 2;
    size_t ws_bytes = 0;
    mla_decode_workspace_size(be, B, L, &ws_bytes);
    CUDA_OK(cudaMalloc(&cache, total_pages * P * DQK * esz));
    CUDA_OK(cudaMalloc(&q, q_bytes));
    if (c->q_fp8 == Q_QUANT) {
        CUDA_OK(cudaMalloc(&q_src, q_bytes * 2));
        if (fill_device(q_src, q_bytes * 2, MLA_DTYPE_BF16, 2.0f)) return -1;
    }
    CUDA_OK(cudaMalloc(&out, out_bytes));
    CUDA_OK(cudaMalloc(&ws, ws_bytes));
    const size_t table_len = (size_t)B * pages_per_seq; /* entries of one set's block table */
    CUDA_OK(cudaMalloc(&tables, (size_t)nsets * table_len * 4));
    CUDA_OK(cudaMalloc(&seqs, (size_t)B * 4));
    if (fill_device(cache, total_pages * P * DQK * esz, c->kv, 1.0f) ||
        fill_device(q, q_bytes, qdt, 2.0f))
        return -1;
    /* each set owns its own pages, shuffled; table entries past a request's length point at
     * page 0 (never read) */
    int32_t *ht = malloc((size_t)nsets * table_len * 4), *hs = malloc((size_t)B * 4);
    int32_t *perm = malloc(set_pages * 4);
    for (int s = 0; s < nsets; s++) {
        for (size_t i = 0; i < set_pages; i++) perm[i] = (int32_t)(s * set_pages + i);
        for (size_t i = set_pages - 1; i > 0; i--) {
            size_t j = rand_u32() % (i + 1);
            int32_t x = perm[i];
            perm[i] = perm[j];
            perm[j] = x;
        }
        int32_t *t = ht + (size_t)s * table_len;
        size_t next = 0;
        for (int b = 0; b < B; b++)
            for (int k = 0; k < pages_per_seq; k++)
                t[(size_t)b * pages_per_seq + k] = k < (b ? pages_rest : pages0) ? perm[next++] : 0;
    }
    free(perm);
    for (int b = 0; b < B; b++) hs[b] = b ? c->seq : seq0;
    CUDA_OK(cudaMemcpy(tables, ht, (size_t)nsets * table_len * 4, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(seqs, hs, (size_t)B * 4, cudaMemcpyHostToDevice));
    free(ht);
    free(hs);

    cudaStream_t st;
    CUDA_OK(cudaStreamCreate(&st));
    cudaGraphExec_t *exec = calloc((size_t)nsets, sizeof *exec);
    mla_decode_args *args = calloc((size_t)nsets, sizeof *args);
    mla_device dev = {MLA_DEVICE_CUDA, 0};
    for (int s = 0; s < nsets; s++) {
        mla_decode_args a;
        memset(&a, 0, sizeof a);
        a.q = mla_tensor_contiguous(q, qdt, dev, 4, (int64_t[]){B, L, H, DQK});
        a.kv_cache = mla_tensor_contiguous(cache, c->kv, dev, 3, (int64_t[]){(int64_t)total_pages, P, DQK});
        a.block_table = mla_tensor_contiguous((int32_t *)tables + (size_t)s * table_len, MLA_DTYPE_I32,
                                              dev, 2, (int64_t[]){B, pages_per_seq});
        a.seq_lens = mla_tensor_contiguous(seqs, MLA_DTYPE_I32, dev, 1, (int64_t[]){B});
        a.out = mla_tensor_contiguous(out, MLA_DTYPE_BF16, dev, 4, (int64_t[]){B, L, H, DV});
        a.workspace = ws;
        a.workspace_bytes = ws_bytes;
        a.max_seq_len = max_seq;
        a.stream = st;
        /* one plain call first: surfaces errors outside capture */
        if (bench_call(be, c, &a, q_src) != MLA_OK) {
            fprintf(stderr, "decode: %s\n", mla_last_error());
            return -1;
        }
        CUDA_OK(cudaStreamSynchronize(st));
        cudaGraph_t g;
        CUDA_OK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
        mla_status ms = bench_call(be, c, &a, q_src);
        CUDA_OK(cudaStreamEndCapture(st, &g));
        if (ms != MLA_OK) {
            fprintf(stderr, "decode (capture): %s\n", mla_last_error());
            return -1;
        }
        CUDA_OK(cudaGraphInstantiate(&exec[s], g, 0));
        cudaGraphDestroy(g);
        args[s] = a;
    }
    /* A chain of kChain calls (rotating the sets) in one graph, as a model's layers run in a
     * serving loop: no gaps between graph launches in the per-call time. */
    enum { kChain = 16 };
    cudaGraphExec_t chain = NULL;
    {
        cudaGraph_t g;
        CUDA_OK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
        mla_status ms = MLA_OK;
        for (int i = 0; i < kChain && ms == MLA_OK; i++) ms = bench_call(be, c, &args[i % nsets], q_src);
        CUDA_OK(cudaStreamEndCapture(st, &g));
        if (ms != MLA_OK) {
            fprintf(stderr, "decode (chain capture): %s\n", mla_last_error());
            return -1;
        }
        CUDA_OK(cudaGraphInstantiate(&chain, g, 0));
        cudaGraphDestroy(g);
    }
    /* The same chain with one decode plan built at its start and shared by the 16 calls (as
     * the layers of one forward step share their batch's plan): no scheduling step per call. */
    cudaGraphExec_t chain_plan = NULL;
    mla_decode_plan *plan = NULL;
    {
        mla_tensor seq_t = mla_tensor_contiguous(seqs, MLA_DTYPE_I32, dev, 1, (int64_t[]){B});
        if (mla_decode_plan_create(be, B, L, pages_per_seq, &plan) != MLA_OK ||
            mla_decode_plan_build(plan, &seq_t, st) != MLA_OK) {
            fprintf(stderr, "decode plan: %s\n", mla_last_error());
            return -1;
        }
        cudaGraph_t g;
        CUDA_OK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
        mla_status ms = mla_decode_plan_build(plan, &seq_t, st);
        for (int i = 0; i < kChain && ms == MLA_OK; i++) {
            mla_decode_args a = args[i % nsets];
            a.plan = plan;
            ms = bench_call(be, c, &a, q_src);
        }
        CUDA_OK(cudaStreamEndCapture(st, &g));
        if (ms != MLA_OK) {
            fprintf(stderr, "decode (plan chain capture): %s\n", mla_last_error());
            return -1;
        }
        CUDA_OK(cudaGraphInstantiate(&chain_plan, g, 0));
        cudaGraphDestroy(g);
    }
    cudaEvent_t *ev = malloc(sizeof(cudaEvent_t) * (size_t)(reps + 1));
    for (int i = 0; i <= reps; i++) cudaEventCreate(&ev[i]);
    for (int i = 0; i < 2 * nsets; i++) CUDA_OK(cudaGraphLaunch(exec[i % nsets], st));
    for (int i = 0; i < reps; i++) {
        CUDA_OK(cudaEventRecord(ev[i], st));
        CUDA_OK(cudaGraphLaunch(exec[i % nsets], st));
        if (i == reps - 1) CUDA_OK(cudaEventRecord(ev[reps], st));
    }
    CUDA_OK(cudaStreamSynchronize(st));
    float *t = malloc(sizeof(float) * (size_t)reps);
    for (int i = 0; i < reps; i++) cudaEventElapsedTime(&t[i], ev[i], ev[i + 1 < reps ? i + 1 : reps]);
    qsort(t, (size_t)reps, sizeof(float), cmp_float);
    const double ms_single = t[reps / 2];
    const int chain_reps = reps / 4 > 5 ? reps / 4 : 5;
    float *tc = malloc(sizeof(float) * 2 * (size_t)chain_reps);
    /* The headline chain alone (as in every earlier run of this bench), then the plain and
     * the plan chain in turn: under sustained load the clocks drift (10 replays of a 16-call
     * chain at B=128 32k read 5-10% slower than the first 5), so the plan is compared with
     * the plain chain of its own pair. */
    double ms = 0, pair[2] = {0, 0};
    const cudaGraphExec_t both[2] = {chain, chain_plan};
    if (median_launches_ms(&chain, 1, st, tc, chain_reps, &ms) ||
        median_launches_ms(both, 2, st, tc, chain_reps, pair))
        return -1;
    ms /= kChain;
    const double ms_pair = pair[0] / kChain, ms_plan = pair[1] / kChain;
    const double mhz = bench_sm_clock_mhz(st);
    cudaGraphExecDestroy(chain_plan);
    mla_decode_plan_destroy(plan);
    free(tc);
    cudaGraphExecDestroy(chain);
    free(args);
    uint32_t flags = 0;
    mla_backend_device_errors(be, &flags);

    const double keys = (double)(B - 1) * c->seq + seq0;
    /* the query as the caller holds it: bf16 for Q_QUANT */
    const double bytes = keys * DQK * esz + (double)q_bytes * (c->q_fp8 == Q_QUANT ? 2 : 1) + (double)out_bytes;
    const double flops = 2.0 * H * L * keys * (DQK + DV);
    const double t_mem = bytes / (g_copy_gbps * 1e9);
    const double t_mma = flops / (g_bf16_tflops * 1e12), t_fp8 = flops / (g_fp8_tflops * 1e12);
    const double sec = ms * 1e-3;
    char long_note[48];
    snprintf(long_note, sizeof long_note, ", request 0: %d keys", seq0);
    char kv_label[16];
    snprintf(kv_label, sizeof kv_label, "%s%s%s", c->kv == MLA_DTYPE_FP8_E4M3 ? "fp8" : "bf16",
             c->q_fp8 == Q_QUANT ? "/qq" : c->q_fp8 ? "/q8" : "", c->fp8_math ? "/fm" : "");
    printf("| %-4s | %3d | %d | %3d | %6d | %2d | %8.4f | %8.4f | %8.4f | %8.4f | %6.0f | %6.1f | %5.1f%% | %5.1f%% | %s%s%s | %4.0f |\n",
           kv_label, B, L, H, c->seq, P, ms, ms_single, ms_pair, ms_plan,
           bytes / sec / 1e9, flops / sec / 1e12,
           100.0 * (t_mem > t_mma ? t_mem : t_mma) / sec,
           100.0 * (t_mem > t_fp8 ? t_mem : t_fp8) / sec, t_mem > t_mma ? "mem" : "mma",
           c->long_seq > 0 ? long_note : "", flags ? " FLAGS!" : "", mhz);
    fflush(stdout);
    if (res) *res = (case_result){ms, ms_plan, t_mem, t_mma, flops, mhz, flags != 0};

    for (int i = 0; i <= reps; i++) cudaEventDestroy(ev[i]);
    for (int s = 0; s < nsets; s++) cudaGraphExecDestroy(exec[s]);
    free(ev);
    free(exec);
    free(t);
    cudaStreamDestroy(st);
    cudaFree(cache);
    cudaFree(q);
    cudaFree(q_src);
    cudaFree(out);
    cudaFree(ws);
    cudaFree(tables);
    cudaFree(seqs);
    mla_backend_destroy(be);
    return 0;
}

/* Issue #3's speed bars, one entry per case (page 64, q_len 1, DeepSeek-V3 dims). The bars are
 * set on an H100; on another card the verdicts say how this card compares, not the bar's. */
enum bar_metric {
    BAR_MEM,   /* t_mem / t: fraction of the copy-bandwidth floor */
    BAR_ROOF,  /* max(t_mem, t_mma) / t: fraction of the case's own roofline (bf16 cache) */
    BAR_TFLOPS /* TFLOP/s */
};
typedef struct bar_case {
    bench_case c;
    enum bar_metric metric;
    double need; /* fraction, or TFLOP/s */
    const char *bar;
} bar_case;

/* Appends the cases batches x seqs (q_len 1, page 64) with one bar; returns the new count.
 * q_mode: bench_case.q_fp8; an fp8 query (given or quantized in the call) runs with fp8 math. */
static int add_bar_grid(bar_case *out, int n, const int *batches, int nb, const int *seqs, int ns, int heads,
                        mla_dtype kv, int q_mode, enum bar_metric metric, double need, const char *bar)
{
    for (int i = 0; i < nb; i++)
        for (int j = 0; j < ns; j++)
            out[n++] = (bar_case){{batches[i], 1, heads, seqs[j], 64, kv, "", q_mode, 0, q_mode != 0},
                                  metric, need, bar};
    return n;
}

static int bar_cases(bar_case *out)
{
    const mla_dtype F = MLA_DTYPE_FP8_E4M3, W = MLA_DTYPE_BF16;
    const int bs16[] = {32, 64, 128}, seqs16[] = {4096, 16384, 32768};
    const int bs128[] = {64, 128}, seqs128[] = {4096, 8192, 16384}, one[] = {1}, long64k[] = {65536};
    int n = 0;
    n = add_bar_grid(out, n, bs16, 3, seqs16, 3, 16, F, 0, BAR_MEM, 0.85, "H16 fp8: 85% of copy");
    /* 600 TFLOP/s with the 16-bit math (bf16 query), then with an fp8 query and e4m3 P V */
    n = add_bar_grid(out, n, bs128, 2, seqs128, 3, 128, F, 0, BAR_TFLOPS, 600, "H128 fp8: 600 TFLOP/s");
    n = add_bar_grid(out, n, bs128, 2, seqs128, 3, 128, F, 1, BAR_TFLOPS, 600,
                     "H128 fp8, fp8 query + fp8 math: 600 TFLOP/s");
    /* a bf16 query quantized by the library inside each timed call, then the same kernels */
    n = add_bar_grid(out, n, bs128, 2, seqs128, 3, 128, F, Q_QUANT, BAR_TFLOPS, 600,
                     "H128 fp8, bf16 query quantized in the call + fp8 math: 600 TFLOP/s");
    n = add_bar_grid(out, n, one, 1, long64k, 1, 16, F, 0, BAR_MEM, 0.70, "batch 1 fp8: 70% of copy");
    n = add_bar_grid(out, n, one, 1, long64k, 1, 128, F, 0, BAR_MEM, 0.70, "batch 1 fp8: 70% of copy");
    /* bf16 cache: "the same cases, same fraction of its own roofline"; for H128 the fraction
     * the fp8 bar asks, 600 of the H100's 748 bf16 TFLOP/s (KERNEL_NOTES.md) */
    n = add_bar_grid(out, n, bs16, 3, seqs16, 3, 16, W, 0, BAR_ROOF, 0.85, "H16 bf16: 85% of roofline");
    n = add_bar_grid(out, n, bs128, 2, seqs128, 3, 128, W, 0, BAR_ROOF, 600.0 / 748.0, "H128 bf16: 80% of roofline");
    n = add_bar_grid(out, n, one, 1, long64k, 1, 16, W, 0, BAR_ROOF, 0.70, "batch 1 bf16: 70% of roofline");
    n = add_bar_grid(out, n, one, 1, long64k, 1, 128, W, 0, BAR_ROOF, 0.70, "batch 1 bf16: 70% of roofline");
    return n;
}

/* A case's value against its bar for a per-call time of ms. */
static double bar_value(const bar_case *b, const case_result *r, double ms)
{
    const double sec = ms * 1e-3;
    if (b->metric == BAR_TFLOPS) return r->flops / sec / 1e12;
    if (b->metric == BAR_MEM) return r->t_mem / sec;
    return (r->t_mem > r->t_mma ? r->t_mem : r->t_mma) / sec;
}

static void print_bar_value(const bar_case *b, double v)
{
    if (b->metric == BAR_TFLOPS) printf("%6.1f TFLOP/s", v);
    else printf("%5.1f%%", 100.0 * v);
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median_of(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* What keeps a memory-bound bar from being met: a line through each grid's headline times
 * against its copy floor, t = F + k * t_mem. F is the fixed cost of a call (scheduling,
 * prologue, pipeline fill, tail, combine), k the steady state's slowdown against the copy rate;
 * a fraction f of copy then needs t_mem >= F / (1 / f - k), and none is reached while
 * k >= 1 / f. Theil-Sen (k the median of the pairwise slopes, F the median intercept), not
 * least squares: one case slowed by the clock (B128 32k at 0.684 ms in the twenty-second
 * session's table, 0.603 as a single graph) would tilt a least-squares line (F 6.8 us instead
 * of 20.4 there) but not the medians; the case furthest off the line is named. Printed for the
 * grids with at least three memory-bound cases (the H16 ones). */
static void print_fixed_cost_fits(const bar_case *bars, const case_result *res, const int *ran, int n)
{
    int header = 0;
    for (int i = 0; i < n; i++) {
        if (bars[i].metric == BAR_TFLOPS || (i > 0 && bars[i - 1].bar == bars[i].bar)) continue;
        double xs[16], ys[16], v[16 * 15 / 2];
        int idx[16], m = 0;
        for (int j = i; j < n && bars[j].bar == bars[i].bar && m < 16; j++) {
            if (!ran[j] || res[j].flagged || res[j].t_mem < res[j].t_mma) continue; /* mem-bound cases */
            xs[m] = res[j].t_mem * 1e6;
            ys[m] = res[j].ms * 1e3;
            idx[m++] = j;
        }
        if (m < 3) continue;
        int np = 0;
        for (int a = 0; a < m; a++)
            for (int b = a + 1; b < m; b++)
                if (xs[b] != xs[a]) v[np++] = (ys[b] - ys[a]) / (xs[b] - xs[a]);
        if (np == 0) continue;
        const double k = median_of(v, np);
        for (int a = 0; a < m; a++) v[a] = ys[a] - k * xs[a];
        const double F = median_of(v, m);
        int worst = 0;
        for (int a = 1; a < m; a++)
            if (fabs(ys[a] - F - k * xs[a]) > fabs(ys[worst] - F - k * xs[worst])) worst = a;
        if (!header) {
            printf("\nfixed cost per call, fitted (headline us = F + k x copy floor us, Theil-Sen over the grid's "
                   "memory-bound cases):\n\n| bar | cases | F (us) | k | furthest off the line | "
                   "floor the bar needs (us) |\n|---|---|---|---|---|---|\n");
            header = 1;
        }
        const bench_case *wc = &bars[idx[worst]].c;
        printf("| %s | %d | %.1f | %.3f | B%d %dk %+.1f us | ", bars[i].bar, m, F, k, wc->batch, wc->seq / 1024,
               ys[worst] - F - k * xs[worst]);
        const double f = bars[i].need;
        if (k >= 1.0 / f) printf("none (k >= %.3f) |\n", 1.0 / f);
        else printf("%.0f |\n", F > 0 ? F / (1.0 / f - k) : 0.0);
    }
}

/* Runs the bar cases and prints one verdict per case: the headline (a scheduling step per
 * call) decides; the shared-plan column (one plan per forward step, as FlashMLA's published
 * times leave its metadata step out) is printed beside it. Returns the number of cases that
 * did not run or set device error flags (a bar not met is a verdict, not a failure). */
static int run_bars(int reps, const char *device)
{
    static bar_case bars[64];
    static case_result res[64];
    const int n = bar_cases(bars);
    int ran[64] = {0};
    for (int i = 0; i < n; i++) ran[i] = run_case(&bars[i].c, reps, &res[i]) == 0;
    printf("\nBars of issue #3 on %s (set for an H100; copy %.0f GB/s, bf16 %.0f TFLOP/s measured above)\n\n",
           device, g_copy_gbps, g_bf16_tflops);
    printf("| bar | case | headline | shared plan | MHz | verdict |\n|---|---|---|---|---|---|\n");
    int met = 0, met_plan = 0, broken = 0;
    double mhz_lo = 1e9, mhz_hi = 0;
    for (int i = 0; i < n; i++) {
        const bar_case *b = &bars[i];
        printf("| %s | B%d H%d %dk%s | ", b->bar, b->c.batch, b->c.heads, b->c.seq / 1024,
               b->c.fp8_math ? " q8 fm" : "");
        if (!ran[i]) {
            printf("- | - | - | FAIL (did not run) |\n");
            broken++;
            continue;
        }
        const double v = bar_value(b, &res[i], res[i].ms), vp = bar_value(b, &res[i], res[i].ms_plan);
        const int ok = !res[i].flagged && v >= b->need, ok_plan = !res[i].flagged && vp >= b->need;
        broken += res[i].flagged;
        met += ok;
        met_plan += ok_plan;
        if (res[i].mhz > 0 && res[i].mhz < mhz_lo) mhz_lo = res[i].mhz;
        if (res[i].mhz > mhz_hi) mhz_hi = res[i].mhz;
        print_bar_value(b, v);
        printf(" | ");
        print_bar_value(b, vp);
        printf(" | %4.0f | %s |\n", res[i].mhz,
               res[i].flagged ? "FAIL (device error flags)"
               : ok           ? "met"
               : ok_plan      ? "met with a shared plan only"
                              : "not met");
    }
    printf("\nbars: %d of %d cases met (headline), %d with a shared plan; SM clock after the cases %.0f-%.0f MHz\n",
           met, n, met_plan, mhz_hi > 0 ? mhz_lo : 0.0, mhz_hi);
    print_fixed_cost_fits(bars, res, ran, n);
    return broken;
}

int main(int argc, char **argv)
{
    int reps = 50, quick = 0, bars = 0;
    static bench_case cases[64];
    int n = 0, picked = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick")) quick = 1;
        else if (!strcmp(argv[i], "--bars")) bars = 1;
        else if (!strcmp(argv[i], "--case") && i + 1 < argc && picked < 64) {
            bench_case one = {0, 0, 0, 0, 64, MLA_DTYPE_FP8_E4M3, "", 0, 0, 0};
            char rest[64] = "";
            int ok = sscanf(argv[++i], "%d,%d,%d,%d,%63s", &one.batch, &one.q_len, &one.heads, &one.seq, rest) == 5 &&
                     one.batch >= 1 && one.q_len >= 1 && one.heads >= 1 && one.seq >= 1;
            /* rest: fp8|bf16, then optional q8 and long=N, comma-separated */
            int tok_i = 0;
            for (char *tok = strtok(rest, ","); ok && tok; tok = strtok(NULL, ","), tok_i++) {
                if (tok_i == 0 && (!strcmp(tok, "fp8") || !strcmp(tok, "bf16")))
                    one.kv = strcmp(tok, "fp8") ? MLA_DTYPE_BF16 : MLA_DTYPE_FP8_E4M3;
                else if (tok_i > 0 && !strcmp(tok, "q8")) one.q_fp8 = 1;
                else if (tok_i > 0 && !strcmp(tok, "qq")) one.q_fp8 = Q_QUANT;
                else if (tok_i > 0 && !strcmp(tok, "fm")) one.fp8_math = 1;
                else if (tok_i > 0 && sscanf(tok, "long=%d", &one.long_seq) == 1 && one.long_seq >= 1) continue;
                else ok = 0;
            }
            if (!ok || tok_i == 0) {
                fprintf(stderr, "decode bench: --case wants B,q_len,H,seq,fp8|bf16[,q8|qq][,fm][,long=N] (got '%s')\n", argv[i]);
                return 2;
            }
            cases[picked++] = one;
        } else {
            fprintf(stderr, "usage: decode [--reps N] [--quick | --bars] [--case B,q_len,H,seq,fp8|bf16[,q8|qq][,fm][,long=N]]...\n");
            return 2;
        }
    }
    if (bars && (picked || quick)) {
        fprintf(stderr, "decode bench: --bars runs its own cases; leave out --case and --quick\n");
        return 2;
    }
    if (reps < 3) reps = 3;
    struct cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
        printf("decode bench: no CUDA device\n");
        return 1;
    }
    g_copy_gbps = copy_gbps();
    g_bf16_tflops = gemm_tflops(0, 10);
    g_fp8_tflops = gemm_tflops(1, 10);
    const char *peak_src = "measured (cuBLASLt 8192^3)";
    if (g_bf16_tflops <= 0 || g_fp8_tflops <= 0) {
        g_bf16_tflops = 748;
        g_fp8_tflops = 1344;
        peak_src = "KERNEL_NOTES.md (cuBLASLt unavailable)";
    }
    printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
    printf("copy D2D %.0f GB/s; bf16 GEMM %.0f TFLOP/s, fp8 GEMM %.0f TFLOP/s (%s)\n",
           g_copy_gbps, g_bf16_tflops, g_fp8_tflops, peak_src);
    printf("roof = max(bytes/copy_bw, flops/bf16_peak)/t (the kernel's MMAs are 16-bit); "
           "fp8roof uses the fp8 peak\n\n");
    printf("ms: per call inside a graph of %d back-to-back calls; ms1: a graph of one call "
           "(includes the gap between graph launches); pair / plan: the same chain and one whose 16 calls "
           "share a decode plan built at its start (no scheduling step per call), replayed in turn "
           "after ms; rates and roof use ms\n\n", 16);
    printf("| kv | B | q | H | seq | pg | ms | ms1 | pair | plan | GB/s | TFLOP/s | roof | fp8roof | bound | MHz |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    if (bars) return run_bars(reps, prop.name) ? 1 : 0;
    const mla_dtype F = MLA_DTYPE_FP8_E4M3, W = MLA_DTYPE_BF16;
    if (picked) { // the --case list only, in order
        int rc = 0;
        for (int i = 0; i < picked; i++)
            if (run_case(&cases[i], reps, NULL)) rc = 1;
        return rc;
    }
    const int bs16[] = {32, 64, 128}, seqs16[] = {4096, 16384, 32768};
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++)
            if (!quick || (bs16[i] == 64 && seqs16[j] != 16384))
                cases[n++] = (bench_case){bs16[i], 1, 16, seqs16[j], 64, F, "", 0, 0, 0};
    const int bs128[] = {64, 128}, seqs128[] = {4096, 8192, 16384};
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++)
            if (!quick || (bs128[i] == 64 && seqs128[j] == 4096))
                cases[n++] = (bench_case){bs128[i], 1, 128, seqs128[j], 64, F, "", 0, 0, 0};
    cases[n++] = (bench_case){1, 1, 16, 65536, 64, F, "", 0, 0, 0};
    cases[n++] = (bench_case){1, 1, 128, 65536, 64, F, "", 0, 0, 0};
    cases[n++] = (bench_case){64, 1, 16, 4096, 64, W, "", 0, 0, 0};
    /* fp8 query with decode_fp8_math (e4m3 P V), and without it for comparison */
    cases[n++] = (bench_case){64, 1, 128, 4096, 64, F, "", 1, 0, 1};
    if (!quick) {
        cases[n++] = (bench_case){128, 1, 128, 8192, 64, F, "", 1, 0, 0};
        cases[n++] = (bench_case){128, 1, 128, 8192, 64, F, "", 1, 0, 1};
        cases[n++] = (bench_case){128, 1, 128, 16384, 64, F, "", 1, 0, 1};
        cases[n++] = (bench_case){128, 1, 16, 32768, 64, W, "", 0, 0, 0};
        cases[n++] = (bench_case){64, 1, 128, 4096, 64, W, "", 0, 0, 0};
        cases[n++] = (bench_case){128, 1, 128, 8192, 64, W, "", 0, 0, 0};
        cases[n++] = (bench_case){1, 1, 16, 65536, 64, W, "", 0, 0, 0};
        cases[n++] = (bench_case){1, 1, 128, 65536, 64, W, "", 0, 0, 0};
        cases[n++] = (bench_case){64, 4, 16, 8192, 64, F, "", 0, 0, 0};
        cases[n++] = (bench_case){4, 4, 16, 81920, 64, F, "", 0, 0, 0};
        cases[n++] = (bench_case){4, 4, 32, 81920, 64, F, "", 0, 0, 0};
        cases[n++] = (bench_case){64, 1, 16, 16384, 32, F, "", 0, 0, 0};
        /* 32 query rows (H 32, or H 16 with one speculative token): the H = 32 */
        cases[n++] = (bench_case){64, 1, 32, 16384, 64, F, "", 0, 0, 0};
        cases[n++] = (bench_case){64, 2, 16, 16384, 64, F, "", 0, 0, 0};
        cases[n++] = (bench_case){64, 1, 32, 16384, 64, W, "", 0, 0, 0};
        /* one 128k request among 63 of 1k: the split-KV balance (the uneven case) */
        cases[n++] = (bench_case){64, 1, 16, 1024, 64, F, "", 0, 131072, 0};
    }
    int rc = 0;
    for (int i = 0; i < n; i++)
        if (run_case(&cases[i], reps, NULL)) rc = 1;
    return rc;
}
#endif
