// Experiment builds only (-DMLA_DECODE_TRACE; bench/probes/decode_trace.cu): %globaltimer
// stamps at the phase boundaries of one decode call (scheduler, split kernel per CTA, combine),
// kept for the last MLA_TRACE_CALLS calls, to see where a call's fixed cost goes. Without the
// macro nothing here is defined and the hooks (#ifdef MLA_DECODE_TRACE blocks in the kernels)
// are not compiled, so the kernels are unchanged.
#pragma once

#ifdef MLA_DECODE_TRACE
#define MLA_TRACE_CALLS 16
#define MLA_TRACE_CTAS 2048
// Split kernel, per call slot and CTA: entry, after griddepcontrol.wait, first key block
// issued, first key block ready, end of the walk, (smid << 32) | key blocks walked.
__device__ unsigned long long g_mla_trace_split[MLA_TRACE_CALLS][MLA_TRACE_CTAS][6];
// Scheduler: entry, after its wait, end.
__device__ unsigned long long g_mla_trace_sched[MLA_TRACE_CALLS][3];
// Combine, per call slot and CTA: entry, after its wait (thread 0), then the latest warp's
// weights ready (the LSEs' max and sum known), splits summed (before the output stores) and
// end. Only per-CTA slots: a grid-wide atomicMax from every warp (4096 of them on one address at
// batch 1) would queue in the L2 beside the loads being timed.
enum { kTrEntry, kTrWaited, kTrWeights, kTrSummed, kTrEnd, kTrCombFields };
__device__ unsigned long long g_mla_trace_combc[MLA_TRACE_CALLS][MLA_TRACE_CTAS][kTrCombFields];
__device__ unsigned int g_mla_trace_call; // calls so far; the scheduler counts after its wait

__device__ __forceinline__ unsigned long long mla_trace_now()
{
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
    return t;
}
__device__ __forceinline__ unsigned int mla_trace_smid()
{
    unsigned int s;
    asm volatile("mov.u32 %0, %%smid;\n" : "=r"(s));
    return s;
}
// The call being run, read after a kernel's griddepcontrol.wait (its scheduler has counted).
__device__ __forceinline__ unsigned int mla_trace_slot()
{
    return (*(volatile unsigned int *)&g_mla_trace_call - 1u) % MLA_TRACE_CALLS;
}

// Scheduler, thread 0, after its wait: counts the call and resets the combine's slot.
__device__ __forceinline__ void mla_trace_sched_begin(unsigned long long t_entry)
{
    if (threadIdx.x != 0) return;
    const unsigned int id = atomicAdd(&g_mla_trace_call, 1u) % MLA_TRACE_CALLS;
    g_mla_trace_sched[id][0] = t_entry;
    g_mla_trace_sched[id][1] = mla_trace_now();
}
// Scheduler, every thread at its end (a CTA barrier inside).
__device__ __forceinline__ void mla_trace_sched_end()
{
    __syncthreads();
    if (threadIdx.x == 0) g_mla_trace_sched[mla_trace_slot()][2] = mla_trace_now();
}
// Split kernel, thread 0 at the end of its walk.
__device__ __forceinline__ void mla_trace_split_end(unsigned long long t0, unsigned long long t1,
                                                    unsigned long long t2, unsigned long long t3, int blocks)
{
    const unsigned int cta = blockIdx.x + gridDim.x * blockIdx.y;
    if (threadIdx.x != 0 || cta >= MLA_TRACE_CTAS) return;
    unsigned long long *r = g_mla_trace_split[mla_trace_slot()][cta];
    r[0] = t0;
    r[1] = t1;
    r[2] = t2;
    r[3] = t3;
    r[4] = mla_trace_now();
    r[5] = ((unsigned long long)mla_trace_smid() << 32) | (unsigned int)blocks;
}
// Combine, thread 0 after its wait; every warp's lane 0 at the later marks (mla_trace_comb_mark).
// Per-CTA marks are kept with atomicMax and never reset: %globaltimer only grows, so a slot's
// stale value from 16 calls earlier is always overtaken.
__device__ __forceinline__ unsigned int mla_trace_comb_cta()
{
    return blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
}
__device__ __forceinline__ void mla_trace_comb_waited(unsigned long long t_entry)
{
    const unsigned int cta = mla_trace_comb_cta();
    if (threadIdx.x != 0 || cta >= MLA_TRACE_CTAS) return;
    unsigned long long *r = g_mla_trace_combc[mla_trace_slot()][cta];
    r[kTrEntry] = t_entry;
    r[kTrWaited] = mla_trace_now();
}
__device__ __forceinline__ void mla_trace_comb_mark(int field)
{
    const unsigned int cta = mla_trace_comb_cta();
    if ((threadIdx.x & 31) != 0 || cta >= MLA_TRACE_CTAS) return;
    atomicMax(&g_mla_trace_combc[mla_trace_slot()][cta][field], mla_trace_now());
}
__device__ __forceinline__ void mla_trace_comb_end() { mla_trace_comb_mark(kTrEnd); }
#endif
