// Probe: where a swap-kernel CTA's time per 64-key block goes (the fp8-cache kernel for
// H * q_len <= 16, src/cuda/sm90/decode_v2_swap.cuh, and its opt-in forms). Builds the decode
// launcher, scheduler and combine with -DMLA_SEESAW_TIMELINE, runs one bf16-query, fp8-cache
// decode a few times, clears the stamps, runs it once more and prints, for each of the first
// four CTAs, the mean duration of every phase over its steady blocks (the first two and the
// last left out), in ns, for lane 0 of warp 0 and of warp 3, then CTA 0's first blocks as raw
// offsets.
// Build and run on the device:
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Iinclude -Isrc/core -Isrc/cuda
//     --expt-relaxed-constexpr bench/probes/swap_timeline.cu -o build/swap_timeline
//   build/swap_timeline [B seq H]   (default 64 16384 16; H 1..16)
//   MLA_DECODE_V2_CONV=lazy|swapq3 build/swap_timeline ...   (the opt-in forms)
// Events (MLA_SWAP_TL in decode_v2_swap.cuh), per block: 0 block start, 1 stage landed and all
// warps in (top barrier), 2 next block issued and cursor advanced, 3 S^T retired, 4 maxima
// exchanged (default) / P^T published (lazy: the OR barrier), 5 P^T ready for P V, 6 P V
// issued, 7 block end.
#define MLA_SEESAW_TIMELINE 1
#include "../../src/cuda/common/decode_schedule.cu"
#include "../../src/cuda/common/combine.cu"
#include "../../src/cuda/sm90/decode.cu"

#include "probe_decode.h"
#include "seesaw_timeline.h"

int main(int argc, char **argv)
{
    const int B = argc > 1 ? atoi(argv[1]) : 64, seq = argc > 2 ? atoi(argv[2]) : 16384,
              H = argc > 3 ? atoi(argv[3]) : 16;
    if (B < 1 || B > 4096 || seq < 64 || H < 1 || H > 16) {
        fprintf(stderr, "usage: swap_timeline [B (1..4096) seq (>= 64) H (1..16)]\n");
        return 2;
    }
    probe_decode pd;
    if (probe_decode_setup(&pd, B, H, seq, seq, MLA_DTYPE_BF16, MLA_DTYPE_FP8_E4M3, 0)) return 1;
    float ms = 0;
    double cyc_ns = 0;
    uint32_t flags = 0;
    if (seesaw_trace_once(&pd, &ms, &cyc_ns, &flags)) return 1;
    const char *conv = getenv("MLA_DECODE_V2_CONV");
    printf("swap_timeline: %s, B %d H %d seq %d, bf16 query, fp8 cache, MLA_DECODE_V2_CONV=%s; traced call %.4f ms "
           "(one call, not in a graph); %.3f SM cycles per ns; device flags 0x%x\n",
           pd.prop.name, B, H, seq, conv ? conv : "(default)", ms, cyc_ns, flags);
    if (tl_count[0][0] == 0) {
        printf("no stamps: the call did not run the swap kernel (MLA_DECODE_V2_CONV / _LAYOUT / _BN set?)\n");
        return 1;
    }
    printf("Mean ns per steady block, first %d CTAs (w0 / w3: lane 0 of warp 0 / 3):\n\n", MLA_SEESAW_TL_CTAS);
    printf("| CTA | blocks | warp | wait stage + barrier | issue next | S^T | exchange / OR barrier | "
           "to P V | P V issue | block end | to next block | block period |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (int c = 0; c < MLA_SEESAW_TL_CTAS; c++)
        for (int r = 0; r < 2; r++) {
            const tl_events ev = tl[c][r];
            const int n = tl_count[c][r];
            printf("| %d | %d | %s | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f |\n", c, n,
                   r ? "w3" : "w0", mean_gap(ev, n, 0, 1, false, cyc_ns), mean_gap(ev, n, 1, 2, false, cyc_ns),
                   mean_gap(ev, n, 2, 3, false, cyc_ns), mean_gap(ev, n, 3, 4, false, cyc_ns),
                   mean_gap(ev, n, 4, 5, false, cyc_ns), mean_gap(ev, n, 5, 6, false, cyc_ns),
                   mean_gap(ev, n, 6, 7, false, cyc_ns), mean_gap(ev, n, 7, 0, true, cyc_ns),
                   mean_gap(ev, n, 0, 0, true, cyc_ns));
        }
    printf("\nCTA 0, ns from warp 0's first block start (events 0-7):\n");
    const long long t0 = tl[0][0][0][0];
    const int show = tl_count[0][0] < 6 ? tl_count[0][0] : 6;
    for (int i = 0; i < show; i++)
        for (int r = 0; r < 2; r++) {
            printf("block %d %s:", i, r ? "w3" : "w0");
            for (int e = 0; e < 8; e++)
                if (tl[0][r][e][i]) printf(" %d:%.0f", e, (double)(tl[0][r][e][i] - t0) / cyc_ns);
            printf("\n");
        }
    return 0;
}
