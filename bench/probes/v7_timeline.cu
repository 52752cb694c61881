// Probe: who waits for whom inside a v7 CTA (the fp8-cache seesaw with 16-bit math, src/cuda/
// sm90/decode_v6_seesaw.cuh, kProdBulk; the default for a bf16 query on an fp8 cache at
// H * q_len >= 64). Same method as v9_timeline.cu: one traced call, then the mean duration of
// every phase over the steady pairs (math) or blocks (producer) of the first CTAs, in ns.
// Build and run on the device:
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Iinclude -Isrc/core -Isrc/cuda
//     --expt-relaxed-constexpr bench/probes/v7_timeline.cu -o build/v7_timeline
//   build/v7_timeline [B H seq]   (default 128 128 8192; H >= 64)
// Events (MLA_SEESAW_TL). Math, as in v9_timeline.cu except event 1: the tile's full barrier
// (v7 hands a tile over whole, after its conversion). Producer (thread 0 of the producer
// warpgroup), per block in block order: 0 before the wait for the raw fp8 block, 1 raw block
// landed, 2 converted in place and full[T] arrived; 3 its tile handed back (the wait before
// its bulk copies, which happens while the pair before it is converted), 4 copies issued.
#define MLA_SEESAW_TIMELINE 1
#include "../../src/cuda/common/decode_schedule.cu"
#include "../../src/cuda/common/combine.cu"
#include "../../src/cuda/sm90/decode.cu"

#include "probe_decode.h"
#include "seesaw_timeline.h"

int main(int argc, char **argv)
{
    seesaw_trace t;
    if (const int rc = seesaw_trace_main(&t, argc, argv, "v7_timeline", 128, 8192, MLA_DTYPE_BF16,
                                         MLA_DTYPE_FP8_E4M3, 0))
        return rc;
    const double cyc_ns = t.cyc_ns;
    if (seesaw_print_intro(&t, "v7_timeline", "bf16 query, fp8 cache", true, "MLA_DECODE_VARIANT set?")) return 1;
    print_seesaw_math_table(cyc_ns, "wait tile", "S");
    printf("\n| CTA | blocks | wait raw | convert | to next block | block period | tile free -> copies issued | "
           "copies issued -> raw landed |\n");
    printf("|---|---|---|---|---|---|---|---|\n");
    for (int c = 0; c < MLA_SEESAW_TL_CTAS; c++) {
        const tl_events ev = tl[c][2];
        const int n = tl_count[c][2];
        printf("| %d | %d | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f |\n", c, n, mean_gap(ev, n, 0, 1, false, cyc_ns),
               mean_gap(ev, n, 1, 2, false, cyc_ns), mean_gap(ev, n, 2, 0, true, cyc_ns),
               mean_gap(ev, n, 0, 0, true, cyc_ns), mean_gap(ev, n, 3, 4, false, cyc_ns),
               mean_gap(ev, n, 4, 1, false, cyc_ns));
    }
    printf("\nCTA 0, ns from its first S start (math: per pair, events 0-7; producer: per block, events 0-4):\n");
    print_raw_offsets(cyc_ns);
    return 0;
}
