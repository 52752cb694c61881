// Split-KV decode scheduler: one CTA turns seq_lens into the per-request / per-part plan
// described in decode_split.cuh. Runs on the GPU so that a captured graph replays with any
// seq_lens; its cost is a few block-wide scans, independent of sequence length.
#include "mla_cuda.h"
#include "decode_split.cuh"

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

__global__ void __launch_bounds__(kSchedThreads)
decode_schedule_kernel(const int32_t *__restrict__ seq_lens, int batch, int max_keys,
                       int block_n, int num_parts, uint32_t *flags, mla_decode_sched s)
{
    __shared__ int warp_sums[32];
    const int C = MLA_DECODE_OVERHEAD;
    // The decode kernel may start launching now; it waits for this grid's completion.
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
    // 1. clamp lengths, count blocks, prefix-sum the cost.
    int carry = 0;
    for (int base = 0; base < batch; base += kSchedThreads) {
        const int b = base + (int)threadIdx.x;
        int cost = 0;
        if (b < batch) {
            int len = seq_lens[b];
            if (len < 0 || len > max_keys) {
                if (flags) atomicOr(flags, MLA_DEVERR_SEQ_LEN);
                len = len < 0 ? 0 : max_keys;
            }
            int nb = (len + block_n - 1) / block_n;
            if (nb < 1) nb = 1; // an empty request still writes zeros / -inf
            s.seq_eff[b] = len;
            s.num_blocks[b] = nb;
            cost = nb + C;
        }
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
        int slots = 0;
        if (b < batch) {
            const int u0 = s.req_start[b] + C;
            const int first = u0 / tau;
            const int last = (u0 + s.num_blocks[b] - 1) / tau;
            s.first_part[b] = first;
            s.num_splits[b] = last - first + 1;
            slots = last > first ? last - first + 1 : 0;
        }
        int total;
        int before = block_exclusive_scan(slots, &total, warp_sums);
        if (b < batch) s.slot_base[b] = carry + before;
        carry += total;
    }
    __syncthreads();

    // 3. first request of each part: smallest b whose last part is >= p.
    for (int p = threadIdx.x; p < num_parts; p += kSchedThreads) {
        int lo = 0, hi = batch;
        while (lo < hi) {
            const int mid = (lo + hi) >> 1;
            const int last = s.first_part[mid] + s.num_splits[mid] - 1;
            if (last >= p) hi = mid;
            else lo = mid + 1;
        }
        if (lo < batch && s.first_part[lo] > p) lo = batch; // no request reaches this part
        s.part_begin[p] = lo;
    }
}

} // namespace

cudaError_t mla_launch_decode_schedule(const int32_t *seq_lens, int batch, int max_keys,
                                       int block_n, int num_parts,
                                       uint32_t *device_error_flags, const mla_decode_sched *s,
                                       cudaStream_t stream)
{
    decode_schedule_kernel<<<1, kSchedThreads, 0, stream>>>(seq_lens, batch, max_keys, block_n,
                                                            num_parts, device_error_flags, *s);
    return cudaGetLastError();
}
