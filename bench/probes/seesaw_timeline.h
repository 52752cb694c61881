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
static double mean_gap(tl_events ev, int n, int e0, int e1, bool next, double cyc_ns)
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

// Five warm-up calls, the stamps cleared, one traced call (not in a graph) copied back into
// tl / tl_count; its time, the SM clock rate and the device flags. 0 on success.
static int seesaw_trace_once(probe_decode *pd, float *ms, double *cyc_ns, uint32_t *h_flags)
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

// CTA 0's first pairs as raw offsets (ns) from warpgroup 0's first stamp: per pair the math
// warpgroups' events, then the producer's events of the pair's two blocks.
static void print_raw_offsets(double cyc_ns)
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
