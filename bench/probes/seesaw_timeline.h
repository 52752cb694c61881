// Shared by the seesaw timeline probes (v10_timeline.cu, v9_timeline.cu), included after the
// decode sources built with MLA_SEESAW_TIMELINE and after probe_decode.h: one traced call and
// the arithmetic on its stamps (decode_v6_seesaw.cuh, MLA_SEESAW_TL).
#pragma once

// SM clock cycles per ns: clock64 against %globaltimer over ~2 ms of one thread.
__global__ void clock_rate(double *out)
{
    unsigned long long g0, g1;
    asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(g0));
    const long long c0 = clock64();
    do {
        asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(g1));
    } while (g1 - g0 < 2000000ull);
    const long long c1 = clock64();
    *out = (double)(c1 - c0) / (double)(g1 - g0);
}

static long long tl[MLA_SEESAW_TL_CTAS][3][8][MLA_SEESAW_TL_SEQ];
static int tl_count[MLA_SEESAW_TL_CTAS][3];
typedef const long long (*tl_events)[MLA_SEESAW_TL_SEQ];

// Mean over steady indices [2, n - 1) of stamp(e1) - stamp(e0) (both of index i, or e1 of
// index i + 1 when next), skipping pairs where either stamp is missing; -1 when none.
static inline double mean_gap(tl_events ev, int n, int e0, int e1, bool next, double cyc_ns)
{
    double sum = 0;
    int k = 0;
    for (int i = 2; i + 1 < n && i + (next ? 1 : 0) < MLA_SEESAW_TL_SEQ; i++) {
        const long long a = ev[e0][i], b = ev[e1][i + (next ? 1 : 0)];
        if (!a || !b || b < a) continue;
        sum += (double)(b - a);
        k++;
    }
    return k ? sum / k / cyc_ns : -1.0;
}

// One traced decode: its shape, its time (one call, not in a graph), the SM clock rate and the
// device flags; the stamps are in tl / tl_count.
struct seesaw_trace {
    probe_decode pd;
    int B, H, seq;
    float ms;
    double cyc_ns;
    uint32_t flags;
};

static inline int seesaw_trace_once(probe_decode *pd, float *ms, double *cyc_ns, uint32_t *h_flags);

// The probes' main: [B H seq] from the command line (defaults B0 128 seq0), the decode set up
// with these dtypes, traced once. 0 on success, 2 on a usage error, 1 on a CUDA error.
static inline int seesaw_trace_main(seesaw_trace *t, int argc, char **argv, const char *name, int B0, int seq0,
                             mla_dtype q_dtype, mla_dtype kv_dtype, int fp8_math)
{
    t->B = argc > 1 ? atoi(argv[1]) : B0;
    t->H = argc > 2 ? atoi(argv[2]) : 128;
    t->seq = argc > 3 ? atoi(argv[3]) : seq0;
    if (t->B < 1 || t->B > 4096 || t->H < 64 || t->H > 128 || t->seq < 64) {
        fprintf(stderr, "usage: %s [B (1..4096) H (64..128) seq (>= 64)]\n", name);
        return 2;
    }
    if (probe_decode_setup(&t->pd, t->B, t->H, t->seq, t->seq, q_dtype, kv_dtype, fp8_math)) return 1;
    t->ms = 0;
    t->cyc_ns = 0;
    t->flags = 0;
    return seesaw_trace_once(&t->pd, &t->ms, &t->cyc_ns, &t->flags);
}

// Five warm-up calls, the stamps cleared, one traced call (not in a graph) copied back into
// tl / tl_count; its time, the SM clock rate and the device flags. 0 on success.
static inline int seesaw_trace_once(probe_decode *pd, float *ms, double *cyc_ns, uint32_t *h_flags)
{
    cudaStream_t st = (cudaStream_t)pd->pr.stream;
    if (probe_decode_warm(pd, 5)) return 1;
    CK(cudaMemcpyToSymbol(g_mla_seesaw_tl, tl, sizeof tl)); // zeros: a missing stamp reads 0
    CK(cudaMemcpyToSymbol(g_mla_seesaw_tl_count, tl_count, sizeof tl_count));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    CK(cudaEventRecord(e0, st));
    if (mla_cuda_decode(&pd->dev, &pd->pr, pd->flags) != 0) return 1;
    CK(cudaEventRecord(e1, st));
    CK(cudaStreamSynchronize(st));
    CK(cudaEventElapsedTime(ms, e0, e1));
    CK(cudaMemcpyFromSymbol(tl, g_mla_seesaw_tl, sizeof tl));
    CK(cudaMemcpyFromSymbol(tl_count, g_mla_seesaw_tl_count, sizeof tl_count));
    double *d_rate;
    CK(cudaMalloc(&d_rate, sizeof(double)));
    clock_rate<<<1, 1>>>(d_rate);
    CK(cudaMemcpy(cyc_ns, d_rate, sizeof(double), cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(h_flags, pd->flags, 4, cudaMemcpyDeviceToHost));
    return 0;
}

// The probes' opening lines: what was traced (dtypes: the probe's query, cache and math), then
// 1 with a message when the kernel left no stamps (no math stamps, or none of the producer's
// when producer is set; hint says what to check).
static inline int seesaw_print_intro(const seesaw_trace *t, const char *name, const char *dtypes, bool producer,
                              const char *hint)
{
    printf("%s: %s, B %d H %d seq %d, %s; traced call %.4f ms (one call, not in a graph); %.3f SM cycles "
           "per ns; device flags 0x%x\n",
           name, t->pd.prop.name, t->B, t->H, t->seq, dtypes, t->ms, t->cyc_ns, t->flags);
    if (tl_count[0][0] == 0 || (producer && tl_count[0][2] == 0)) {
        printf("no stamps: the call did not run the traced kernel (%s)\n", hint);
        return 1;
    }
    printf("Mean ns per steady pair (math) or block (producer), first %d CTAs:\n\n", MLA_SEESAW_TL_CTAS);
    return 0;
}

// The math warpgroups' table shared by v7_timeline.cu and v9_timeline.cu (same events; v7's
// event 1 is the whole tile, v9's its column block 0): mean ns of each phase per steady pair.
static inline void print_seesaw_math_table(double cyc_ns, const char *wait_label, const char *s_label)
{
    printf("| CTA | pairs | wg | %s | %s | wg0: softmax+P / wg1: barrier A, wait V a | "
           "wg0: P V a / wg1: softmax+P | wg0: barrier B / wg1: arrive B | wg0: wait V b / wg1: rest of P V a | "
           "P V b | to next S | pair period |\n",
           wait_label, s_label);
    printf("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (int c = 0; c < MLA_SEESAW_TL_CTAS; c++)
        for (int w = 0; w < 2; w++) {
            const tl_events ev = tl[c][w];
            const int n = tl_count[c][w];
            printf("| %d | %d | %d | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f |\n", c, n, w,
                   mean_gap(ev, n, 0, 1, false, cyc_ns), mean_gap(ev, n, 1, 2, false, cyc_ns),
                   mean_gap(ev, n, 2, 3, false, cyc_ns), mean_gap(ev, n, 3, 4, false, cyc_ns),
                   mean_gap(ev, n, 4, 5, false, cyc_ns), mean_gap(ev, n, 5, 6, false, cyc_ns),
                   mean_gap(ev, n, 6, 7, false, cyc_ns), mean_gap(ev, n, 7, 0, true, cyc_ns),
                   mean_gap(ev, n, 0, 0, true, cyc_ns));
        }
}

// CTA 0's first pairs as raw offsets (ns) from warpgroup 0's first stamp: per pair the math
// warpgroups' events, then the producer's events of the pair's two blocks.
static inline void print_raw_offsets(double cyc_ns)
{
    const long long t0 = tl[0][0][0][0];
    const int show = tl_count[0][0] < 6 ? tl_count[0][0] : 6;
    for (int i = 0; i < show; i++) {
        for (int w = 0; w < 2; w++) {
            printf("pair %d wg %d:", i, w);
            for (int e = 0; e < 8; e++)
                if (tl[0][w][e][i]) printf(" %d:%.0f", e, (double)(tl[0][w][e][i] - t0) / cyc_ns);
            printf("\n");
        }
        for (int j = 2 * i; j < 2 * i + 2 && j < tl_count[0][2]; j++) {
            printf("block %d prod:", j);
            for (int e = 0; e < 8; e++)
                if (tl[0][2][e][j]) printf(" %d:%.0f", e, (double)(tl[0][2][e][j] - t0) / cyc_ns);
            printf("\n");
        }
    }
}
