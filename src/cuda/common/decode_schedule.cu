// Split-KV decode scheduler: one CTA turns seq_lens into the per-request / per-part plan
// described in decode_split.cuh. Runs on the GPU so that a captured graph replays with any
// seq_lens; its cost is a few block-wide scans, independent of sequence length.
#include "mla_cuda.h"
#include "decode_split.cuh"
#include "decode_trace.cuh"

namespace {

constexpr int kSchedThreads = 1024;

// Exclusive block-wide scan of one int per thread; returns the block total in *total.
__device__ int block_exclusive_scan(int v, int *total, int *warp_sums)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        int y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    if (lane == 31) warp_sums[warp] = x;
    __syncthreads();
    if (warp == 0) {
        int w = warp_sums[lane];
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            int y = __shfl_up_sync(0xffffffffu, w, o);
            if (lane >= o) w += y;
        }
        warp_sums[lane] = w; // inclusive over warps
    }
    __syncthreads();
    int before = (warp > 0 ? warp_sums[warp - 1] : 0) + x - v;
    *total = warp_sums[31];
    __syncthreads(); // warp_sums is reused by the next call
    return before;
}

// Part p's first request: the smallest b whose last part is >= p, or batch when that request
// starts after p (no request reaches p). first/last: per-request part ranges.
template <typename First, typename Last>
__device__ __forceinline__ int part_first_request(int p, int batch, const First &first, const Last &last)
{
    int lo = 0, hi = batch;
    while (lo < hi) {
        const int mid = (lo + hi) >> 1;
        if (last(mid) >= p) hi = mid;
        else lo = mid + 1;
    }
    return lo < batch && first(lo) > p ? batch : lo;
}

// Request b's clamped length and key blocks into the plan (flags a length out of range);
// returns its key blocks.
__device__ __forceinline__ int plan_blocks(const int32_t *__restrict__ seq_lens, int b, int max_keys, int block_n,
                                           uint32_t *flags, const mla_decode_sched &s)
{
    int len = seq_lens[b];
    if (len < 0 || len > max_keys) {
        if (flags) atomicOr(flags, MLA_DEVERR_SEQ_LEN);
        len = len < 0 ? 0 : max_keys;
    }
    const int nb = max(1, (len + block_n - 1) / block_n); // an empty request still writes zeros / -inf
    s.seq_eff[b] = len;
    s.num_blocks[b] = nb;
    return nb;
}

// Parts touching request b (first unit start, nb key blocks) into the plan: its first and last
// part; returns the partial slots it needs (0 when one part covers it).
__device__ __forceinline__ int plan_parts(int b, int start, int nb, int tau, const mla_decode_sched &s, int &first,
                                          int &last)
{
    const int u0 = start + MLA_DECODE_OVERHEAD;
    first = u0 / tau;
    last = (u0 + nb - 1) / tau;
    s.first_part[b] = first;
    s.num_splits[b] = last - first + 1;
    return last > first ? last - first + 1 : 0;
}

// Part p's start record (decode_split.cuh): its first request b0 (from part_first_request),
// the key blocks of b0 it begins and ends at, and b0's seq_eff. start/nb/seq: b0's first unit,
// key blocks and clamped length.
__device__ __forceinline__ void plan_part_start(int p, int b0, int batch, int tau, int start, int nb, int seq,
                                                const mla_decode_sched &s)
{
    int4 r = make_int4(batch, 0, 0, 0);
    if (b0 < batch) {
        const int s0 = start + MLA_DECODE_OVERHEAD;
        r = make_int4(b0, max(0, p * tau - s0), min(nb, (p + 1) * tau - s0), seq);
    }
    reinterpret_cast<int4 *>(s.part_start)[p] = r;
}

// The part size for a batch whose requests all cost `cost` units: k whole requests per part
// (k = ceil(batch / num_parts)) when that is at most 1/16 above the even split tau, so that no
// request straddles a part boundary (no float32 partials written and read back by the
// combine); tau otherwise. E.g. B 64, H 128, 4k keys: 66 units per request over 66 parts:
// tau 64 splits every request in two, 66 splits none (2 parts idle).
__device__ __forceinline__ int uniform_tau(int tau, int cost, int batch, int num_parts)
{
    const int whole = cost * ((batch + num_parts - 1) / num_parts);
    return whole * 16 <= tau * 17 ? whole : tau;
}

// Also lists the requests of more than MLA_DECODE_HEAVY_SPLITS splits (mla_decode_heavy_list).
__global__ void __launch_bounds__(kSchedThreads)
decode_schedule_kernel(const int32_t *__restrict__ seq_lens, int batch, int max_keys,
                       int block_n, int num_parts, int align_uniform, uint32_t *flags, mla_decode_sched s)
{
    constexpr int heavy_min = MLA_DECODE_HEAVY_SPLITS;
    __shared__ int warp_sums[32];
    __shared__ int first_s[kSchedThreads], last_s[kSchedThreads];
    __shared__ int start_s[kSchedThreads], nb_s[kSchedThreads], seq_s[kSchedThreads];
    const int C = MLA_DECODE_OVERHEAD;
    // Launched as a programmatic dependent of whatever precedes it on the stream (so that its
    // launch overlaps that grid's tail): wait for that grid before reading seq_lens, which it
    // may have written, and before overwriting this workspace, which a previous decode's
    // combine may still read. Then the decode kernel may start launching; it waits for this
    // grid's completion.
#ifdef MLA_DECODE_TRACE
    const unsigned long long trace_entry = mla_trace_now();
#endif
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#ifdef MLA_DECODE_TRACE
    mla_trace_sched_begin(trace_entry);
#endif
    if (batch <= kSchedThreads) {
        // One request per thread: every per-request value stays in a register or in shared
        // memory, so the plan costs one global load (seq_lens) and two block scans, with no
        // global round trips between the steps.
        const int b = threadIdx.x;
        const int nb = b < batch ? plan_blocks(seq_lens, b, max_keys, block_n, flags, s) : 0;
        int total;
        const int start = block_exclusive_scan(b < batch ? nb + C : 0, &total, warp_sums);
        int tau = max(1, (total + num_parts - 1) / num_parts);
        if (align_uniform) {
            if (b == 0) nb_s[0] = nb; // read back after the barrier below
            __syncthreads();
            const int nb0 = nb_s[0];
            if (__syncthreads_or(b < batch && nb != nb0) == 0 && batch > 0)
                tau = uniform_tau(tau, nb0 + C, batch, num_parts);
        }
        if (b == 0) *s.tau = tau;
        int slots = 0;
        if (b < batch) {
            s.req_start[b] = start;
            slots = plan_parts(b, start, nb, tau, s, first_s[b], last_s[b]);
            start_s[b] = start;
            nb_s[b] = nb;
            seq_s[b] = s.seq_eff[b]; // this thread's own store
        }
        const int slot0 = block_exclusive_scan(slots, &total, warp_sums); // its barriers publish the *_s arrays
        if (b < batch) s.slot_base[b] = slot0;
        { // every thread reaches the scan's barriers
            const int heavy = b < batch && last_s[b] - first_s[b] + 1 > heavy_min;
            const int at = block_exclusive_scan(heavy, &total, warp_sums);
            if (heavy) mla_decode_heavy_list(s, batch)[1 + at] = b;
            if (b == 0) mla_decode_heavy_list(s, batch)[0] = total;
        }
        for (int p = threadIdx.x; p < num_parts; p += kSchedThreads) {
            const int b0 = part_first_request(p, batch, [&](int i) { return first_s[i]; },
                                              [&](int i) { return last_s[i]; });
            const int i = min(b0, batch - 1);
            plan_part_start(p, b0, batch, tau, start_s[i], nb_s[i], seq_s[i], s);
        }
#ifdef MLA_DECODE_TRACE
        mla_trace_sched_end();
#endif
        return;
    }
    // Larger batches: the same plan in passes of kSchedThreads requests through the workspace.
    // 1. clamp lengths, count blocks, prefix-sum the cost.
    int carry = 0;
    for (int base = 0; base < batch; base += kSchedThreads) {
        const int b = base + (int)threadIdx.x;
        const int cost = b < batch ? plan_blocks(seq_lens, b, max_keys, block_n, flags, s) + C : 0;
        int total;
        int before = block_exclusive_scan(cost, &total, warp_sums);
        if (b < batch) s.req_start[b] = carry + before;
        carry += total;
    }
    const int tau = max(1, (carry + num_parts - 1) / num_parts);
    if (threadIdx.x == 0) *s.tau = tau;
    __syncthreads(); // global writes above visible to the whole CTA

    // 2. parts touching each request, and partial slots for the split ones.
    carry = 0;
    for (int base = 0; base < batch; base += kSchedThreads) {
        const int b = base + (int)threadIdx.x;
        int slots = 0, first, last;
        if (b < batch) slots = plan_parts(b, s.req_start[b], s.num_blocks[b], tau, s, first, last);
        int total;
        int before = block_exclusive_scan(slots, &total, warp_sums);
        if (b < batch) s.slot_base[b] = carry + before;
        carry += total;
    }
    { // the heavy-request list (num_splits[b] was written by this thread)
        carry = 0;
        for (int base = 0; base < batch; base += kSchedThreads) {
            const int b = base + (int)threadIdx.x;
            const int heavy = b < batch && s.num_splits[b] > heavy_min;
            int total;
            const int at = block_exclusive_scan(heavy, &total, warp_sums);
            if (heavy) mla_decode_heavy_list(s, batch)[1 + carry + at] = b;
            carry += total;
        }
        if (threadIdx.x == 0) mla_decode_heavy_list(s, batch)[0] = carry;
    }
    __syncthreads();

    // 3. each part's start record (first request: smallest b whose last part is >= p).
    for (int p = threadIdx.x; p < num_parts; p += kSchedThreads) {
        const int b0 = part_first_request(p, batch, [&](int i) { return s.first_part[i]; },
                                          [&](int i) { return s.first_part[i] + s.num_splits[i] - 1; });
        const int i = min(b0, batch - 1);
        plan_part_start(p, b0, batch, tau, s.req_start[i], s.num_blocks[i], s.seq_eff[i], s);
    }
#ifdef MLA_DECODE_TRACE
    mla_trace_sched_end();
#endif
}

} // namespace

cudaError_t mla_launch_decode_schedule(const int32_t *seq_lens, int batch, int max_keys,
                                       int block_n, int num_parts, int align_uniform,
                                       uint32_t *device_error_flags, const mla_decode_sched *s,
                                       cudaStream_t stream)
{
    cudaLaunchAttribute attr;
    cudaLaunchConfig_t cfg = mla_pdl_launch_config(dim3(1), dim3(kSchedThreads), 0, stream, &attr);
    return cudaLaunchKernelEx(&cfg, decode_schedule_kernel, seq_lens, batch, max_keys, block_n, num_parts,
                              align_uniform, device_error_flags, *s);
}
