// Probe: who waits for whom inside a v10 CTA (src/cuda/sm90/decode_v10_fp8mma.cuh). Builds the
// decode launcher, scheduler and combine with -DMLA_SEESAW_TIMELINE (clock64 stamps of each
// role's phase boundaries in the first MLA_SEESAW_TL_CTAS CTAs), runs one fp8-query, fp8-cache
// decode with decode_fp8_math a few times, clears the stamps, runs it once more and prints, for
// each traced CTA, the mean duration of every phase over its steady pairs (the first two pairs
// and the last are left out), in ns, plus the first pairs of CTA 0 as raw offsets.
// Build and run on the device:
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Iinclude -Isrc/core -Isrc/cuda
//     --expt-relaxed-constexpr bench/probes/v10_timeline.cu -o build/v10_timeline
//   build/v10_timeline [B H seq]   (default 64 128 4096; H * q_len >= 64)
// Events (decode_v10_fp8mma.cuh, MLA_SEESAW_TL): math warpgroup w, per pair: 0 S issued, 1 S
// done, 2 P stored, 3 V^T(a) ready, 4 P V(a) done, 5 after barrier B (w 0) or A (w 1), 6 V^T(b)
// ready, 7 P V(b) done. Producer, per block: 0 K landed, 1 tile half 0 free, 2 half 0
// transposed, 3 half 1 free, 4 half 1 transposed; per K issue (warp 0): 6 issue entered, 5 slot
// free, 7 its TMA instructions issued.
#define MLA_SEESAW_TIMELINE 1
#include "../../src/cuda/common/decode_schedule.cu"
#include "../../src/cuda/common/combine.cu"
#include "../../src/cuda/sm90/decode.cu"

#include "probe_decode.h"
#include "seesaw_timeline.h"

int main(int argc, char **argv)
{
    seesaw_trace t;
    if (const int rc = seesaw_trace_main(&t, argc, argv, "v10_timeline", 64, 4096, MLA_DTYPE_FP8_E4M3,
                                         MLA_DTYPE_FP8_E4M3, 1))
        return rc;
    const double cyc_ns = t.cyc_ns;
    if (seesaw_print_intro(&t, "v10_timeline", "fp8 query and cache, fp8 math", false,
                           "tensor map refused? see decode.cu's takes_v10"))
        return 1;
    printf("| CTA | pairs | wg | S | softmax+P | wait V^T a | P V a | barrier | wait V^T b | P V b | to next S | pair period |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (int c = 0; c < MLA_SEESAW_TL_CTAS; c++)
        for (int w = 0; w < 2; w++) {
            const tl_events ev = tl[c][w];
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
    for (int c = 0; c < MLA_SEESAW_TL_CTAS; c++) {
        const tl_events ev = tl[c][2];
        const int n = tl_count[c][2];
        // wait K: from the previous block's half 1 transposed to this block's K landed
        double wk = 0;
        int k = 0;
        for (int i = 2; i + 1 < n && i < MLA_SEESAW_TL_SEQ; i++)
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
    printf("\nCTA 0, ns from its first S (math: per pair, events 0-7; producer: per block, events 0-4, "
           "then the K issue of the same index, events 6, 5 and 7):\n");
    print_raw_offsets(cyc_ns);
    return 0;
}
