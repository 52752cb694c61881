// Phase stamps for the timeline probes (experiment builds only).
#pragma once
#include <stdint.h>

// Experiment builds only (-DMLA_SEESAW_TIMELINE; bench/probes/v10_timeline.cu,
// v9_timeline.cu, swap_timeline.cu): clock64 stamps of each role's phase boundaries in the first
// MLA_SEESAW_TL_CTAS CTAs, per block (producer) or per pair (math warpgroups), to see who
// waits for whom inside a CTA; v9 (kProdTmaBf16 here) and v10 (decode_v10_fp8mma.cuh) stamp
// their own events, listed in their probes. Without the macro the hooks are not compiled and
// the kernels are unchanged.
#ifdef MLA_SEESAW_TIMELINE
#define MLA_SEESAW_TL_CTAS 4
#define MLA_SEESAW_TL_SEQ 256
// [cta][role: math warpgroup 0, 1, producer][event][block or pair].
__device__ long long g_mla_seesaw_tl[MLA_SEESAW_TL_CTAS][3][8][MLA_SEESAW_TL_SEQ];
__device__ int g_mla_seesaw_tl_count[MLA_SEESAW_TL_CTAS][3]; // blocks / pairs stamped
__device__ __forceinline__ void mla_seesaw_tl_stamp(int role, int ev, int seq)
{
    const int cta = (int)(blockIdx.x + gridDim.x * blockIdx.y);
    if (cta < MLA_SEESAW_TL_CTAS && seq < MLA_SEESAW_TL_SEQ) g_mla_seesaw_tl[cta][role][ev][seq] = clock64();
}
__device__ __forceinline__ void mla_seesaw_tl_count(int role, int n)
{
    const int cta = (int)(blockIdx.x + gridDim.x * blockIdx.y);
    if (cta < MLA_SEESAW_TL_CTAS) g_mla_seesaw_tl_count[cta][role] = n;
}
#define MLA_SEESAW_TL(cond, role, ev, seq)                                                       \
    do {                                                                                         \
        if (cond) mla_seesaw_tl_stamp(role, ev, seq);                                            \
    } while (0)
#else
#define MLA_SEESAW_TL(cond, role, ev, seq) ((void)0)
#endif
