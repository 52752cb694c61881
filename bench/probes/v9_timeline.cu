// Probe: who waits for whom inside a v9 CTA (the bf16-cache seesaw, src/cuda/sm90/
// decode_v6_seesaw.cuh, kProdTmaBf16). Builds the decode launcher, scheduler and combine with
// -DMLA_SEESAW_TIMELINE, runs one bf16-query, bf16-cache decode a few times, clears the
// stamps, runs it once more and prints, for each traced CTA, the mean duration of every phase
// over its steady pairs or blocks (the first two and the last left out), in ns, plus the first
// pairs of CTA 0 as raw offsets.
// Build and run on the device:
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Iinclude -Isrc/core -Isrc/cuda
//     --expt-relaxed-constexpr bench/probes/v9_timeline.cu -o build/v9_timeline
//   build/v9_timeline [B H seq]   (default 128 128 8192; H >= 64; seq a multiple of 128 keeps
//   every pair inside one request, which the load-latency column assumes)
// Events (MLA_SEESAW_TL in decode_v6_seesaw.cuh). Math, per pair: 0 S start, 1 column block 0
// landed, 2 S done; warpgroup 0: 3 P published, 4 P V(a) done, 5 after barrier B, 6 tile b's V
// ready, 7 P V(b) done; warpgroup 1: 3 barrier A passed, tile a's V ready and its P V(a)
// issued, 4 P published, 5 barrier B arrived, 6 P V(a) done (waited for), 7 P V(b) done.
// Producer (warp 0's lane 0), per block: 0 rows ready, 1 "empty lo" (column blocks 0-3 free),
// 2 its low column block issued, 3 "empty hi", 4 its high column blocks issued.
#define MLA_SEESAW_TIMELINE 1
#include "../../src/cuda/common/decode_schedule.cu"
#include "../../src/cuda/common/combine.cu"
#include "../../src/cuda/sm90/decode.cu"

#include "probe_decode.h"
#include "seesaw_timeline.h"

int main(int argc, char **argv)
{
    seesaw_trace t;
    if (const int rc = seesaw_trace_main(&t, argc, argv, "v9_timeline", 128, 8192, MLA_DTYPE_BF16, MLA_DTYPE_BF16, 0))
        return rc;
    const double cyc_ns = t.cyc_ns;
    if (seesaw_print_intro(&t, "v9_timeline", "bf16 query and cache", true,
                           "MLA_DECODE_VARIANT set? tensor map refused?"))
        return 1;
    print_seesaw_math_table(cyc_ns, "wait col 0", "rest of S");
    printf("\n| CTA | blocks | wait empty lo | issue lo | wait empty hi | issue hi | to next block | block period | "
           "lo issued -> S's column block 0 landed (openers) |\n");
    printf("|---|---|---|---|---|---|---|---|---|\n");
    for (int c = 0; c < MLA_SEESAW_TL_CTAS; c++) {
        const tl_events ev = tl[c][2];
        const int n = tl_count[c][2];
        // Block 2i is pair i's opener when every request has an even number of blocks.
        double lat = 0;
        int k = 0;
        for (int i = 2; i + 1 < tl_count[c][0] && 2 * i < n && 2 * i < MLA_SEESAW_TL_SEQ; i++)
            if (ev[2][2 * i] && tl[c][0][1][i] && tl[c][0][1][i] >= ev[2][2 * i]) {
                lat += (double)(tl[c][0][1][i] - ev[2][2 * i]);
                k++;
            }
        printf("| %d | %d | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f |\n", c, n,
               mean_gap(ev, n, 0, 1, false, cyc_ns), mean_gap(ev, n, 1, 2, false, cyc_ns),
               mean_gap(ev, n, 2, 3, false, cyc_ns), mean_gap(ev, n, 3, 4, false, cyc_ns),
               mean_gap(ev, n, 4, 0, true, cyc_ns), mean_gap(ev, n, 0, 0, true, cyc_ns), k ? lat / k / cyc_ns : -1.0);
    }
    printf("\nCTA 0, ns from its first S start (math: per pair, events 0-7; producer: per block, events 0-4):\n");
    print_raw_offsets(cyc_ns);
    return 0;
}
