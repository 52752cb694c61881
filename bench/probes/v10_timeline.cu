// Probe: who waits for whom inside a v10 CTA (src/cuda/sm90/decode_v10_fp8mma.cuh). Builds the
// decode launcher, scheduler and combine with -DMLA_V10_TIMELINE (clock64 stamps of each role's
// phase boundaries in the first MLA_V10_TL_CTAS CTAs), runs one fp8-query, fp8-cache decode
// with decode_fp8_math a few times, clears the stamps, runs it once more and prints, for each
// traced CTA, the mean duration of every phase over its steady pairs (the first two pairs and
// the last are left out), in ns, plus the first pairs of CTA 0 as raw offsets.
// Build and run on the device:
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Iinclude -Isrc/core -Isrc/cuda
//     --expt-relaxed-constexpr bench/probes/v10_timeline.cu -o build/v10_timeline
//   build/v10_timeline [B H seq]   (default 64 128 4096; H * q_len >= 64)
// Events (decode_v10_fp8mma.cuh, MLA_V10_TL): math warpgroup w, per pair: 0 S issued, 1 S done,
// 2 P stored, 3 V^T(a) ready, 4 P V(a) done, 5 after barrier B (w 0) or A (w 1), 6 V^T(b)
// ready, 7 P V(b) done. Producer, per block: 0 K landed, 1 tile half 0 free, 2 half 0
// transposed, 3 half 1 free, 4 half 1 transposed; per K issue (warp 0): 6 issue entered, 5 slot free,
// 7 its TMA instructions issued.
#define MLA_V10_TIMELINE 1
#include "../../src/cuda/common/decode_schedule.cu"
#include "../../src/cuda/common/combine.cu"
#include "../../src/cuda/sm90/decode.cu"

#include "probe_decode.h"

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

static long long tl[MLA_V10_TL_CTAS][3][8][MLA_V10_TL_SEQ];
static int tl_count[MLA_V10_TL_CTAS][3];

// Mean over steady indices [2, n - 1) of stamp(e1) - stamp(e0) (both of index i, or e1 of
// index i + 1 when next), skipping pairs where either stamp is missing; -1 when none.
static double mean_gap(const long long (*ev)[MLA_V10_TL_SEQ], int n, int e0, int e1, bool next, double cyc_ns)
{
    double sum = 0;
    int k = 0;
    for (int i = 2; i + 1 < n && i + (next ? 1 : 0) < MLA_V10_TL_SEQ; i++) {
        const long long a = ev[e0][i], b = ev[e1][i + (next ? 1 : 0)];
        if (!a || !b || b < a) continue;
        sum += (double)(b - a);
        k++;
    }
    return k ? sum / k / cyc_ns : -1.0;
}

int main(int argc, char **argv)
{
    const int B = argc > 1 ? atoi(argv[1]) : 64, H = argc > 2 ? atoi(argv[2]) : 128;
    const int seq = argc > 3 ? atoi(argv[3]) : 4096;
    if (B < 1 || B > 4096 || H < 64 || H > 128 || seq < 64) {
        fprintf(stderr, "usage: v10_timeline [B (1..4096) H (64..128) seq (>= 64)]\n");
        return 2;
    }
    probe_decode pd;
    if (probe_decode_setup(&pd, B, H, seq, seq, MLA_DTYPE_FP8_E4M3, 1)) return 1;
    const cudaDeviceProp &prop = pd.prop;
    const mla_cuda_device_info &dev = pd.dev;
    const mla_decode_problem &pr = pd.pr;
    uint32_t *flags = pd.flags;
    cudaStream_t st = (cudaStream_t)pr.stream;
    if (probe_decode_warm(&pd, 5)) return 1;
    CK(cudaMemcpyToSymbol(mla_decode_v10::g_mla_v10_tl, tl, sizeof tl)); // zeros: a missing stamp reads 0
    CK(cudaMemcpyToSymbol(mla_decode_v10::g_mla_v10_tl_count, tl_count, sizeof tl_count));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    CK(cudaEventRecord(e0, st));
    if (mla_cuda_decode(&dev, &pr, flags) != 0) return 1;
    CK(cudaEventRecord(e1, st));
    CK(cudaStreamSynchronize(st));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    CK(cudaMemcpyFromSymbol(tl, mla_decode_v10::g_mla_v10_tl, sizeof tl));
    CK(cudaMemcpyFromSymbol(tl_count, mla_decode_v10::g_mla_v10_tl_count, sizeof tl_count));
    double *d_rate, cyc_ns = 0;
    CK(cudaMalloc(&d_rate, sizeof(double)));
    clock_rate<<<1, 1>>>(d_rate);
    CK(cudaMemcpy(&cyc_ns, d_rate, sizeof(double), cudaMemcpyDeviceToHost));
    uint32_t h_flags = 0;
    CK(cudaMemcpy(&h_flags, flags, 4, cudaMemcpyDeviceToHost));

    printf("v10_timeline: %s, B %d H %d seq %d, fp8 query and cache, fp8 math; traced call %.4f ms "
           "(one call, not in a graph); %.3f SM cycles per ns; device flags 0x%x\n",
           prop.name, B, H, seq, ms, cyc_ns, h_flags);
    if (tl_count[0][0] == 0) {
        printf("no v10 stamps: the call did not run v10 (tensor map refused? see decode.cu's takes_v10)\n");
        return 1;
    }
    printf("Mean ns per steady pair (math) or block (producer), first %d CTAs:\n\n", MLA_V10_TL_CTAS);
    printf("| CTA | pairs | wg | S | softmax+P | wait V^T a | P V a | barrier | wait V^T b | P V b | to next S | pair period |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (int c = 0; c < MLA_V10_TL_CTAS; c++)
        for (int w = 0; w < 2; w++) {
            const long long(*ev)[MLA_V10_TL_SEQ] = tl[c][w];
            const int n = tl_count[c][w];
            // barrier: warpgroup 0 between P V(a) and barrier B; warpgroup 1's barrier A sits
            // inside softmax+P, so its column shows A's wait measured from S done.
            const double bar = w == 0 ? mean_gap(ev, n, 4, 5, false, cyc_ns) : mean_gap(ev, n, 1, 5, false, cyc_ns);
            const double wb = w == 0 ? mean_gap(ev, n, 5, 6, false, cyc_ns) : mean_gap(ev, n, 4, 6, false, cyc_ns);
            printf("| %d | %d | %d | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f |\n", c, n, w,
                   mean_gap(ev, n, 0, 1, false, cyc_ns), mean_gap(ev, n, 1, 2, false, cyc_ns),
                   mean_gap(ev, n, 2, 3, false, cyc_ns), mean_gap(ev, n, 3, 4, false, cyc_ns), bar, wb,
                   mean_gap(ev, n, 6, 7, false, cyc_ns), mean_gap(ev, n, 7, 0, true, cyc_ns),
                   mean_gap(ev, n, 0, 0, true, cyc_ns));
        }
    printf("\n| CTA | blocks | wait K | wait half 0 free | transpose 0 | wait half 1 free | transpose 1 | "
           "block period | K issue: rows + wait for the slot | K issued -> landed | TMA instructions (issue_k) |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (int c = 0; c < MLA_V10_TL_CTAS; c++) {
        const long long(*ev)[MLA_V10_TL_SEQ] = tl[c][2];
        const int n = tl_count[c][2];
        // wait K: from the previous block's half 1 transposed to this block's K landed
        double wk = 0;
        int k = 0;
        for (int i = 2; i + 1 < n && i < MLA_V10_TL_SEQ; i++)
            if (ev[4][i - 1] && ev[0][i] && ev[0][i] >= ev[4][i - 1]) {
                wk += (double)(ev[0][i] - ev[4][i - 1]);
                k++;
            }
        printf("| %d | %d | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f |\n", c, n, k ? wk / k / cyc_ns : -1.0,
               mean_gap(ev, n, 0, 1, false, cyc_ns), mean_gap(ev, n, 1, 2, false, cyc_ns),
               mean_gap(ev, n, 2, 3, false, cyc_ns), mean_gap(ev, n, 3, 4, false, cyc_ns),
               mean_gap(ev, n, 0, 0, true, cyc_ns), mean_gap(ev, n, 6, 5, false, cyc_ns),
               mean_gap(ev, n, 5, 0, false, cyc_ns), mean_gap(ev, n, 5, 7, false, cyc_ns));
    }
    // Raw offsets of CTA 0's first pairs: every stamp relative to warpgroup 0's first S.
    const long long t0 = tl[0][0][0][0];
    printf("\nCTA 0, ns from its first S (math: per pair, events 0-7; producer: per block, events 0-4, "
           "then the K issue of the same index, events 6, 5 and 7):\n");
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
    return 0;
}
