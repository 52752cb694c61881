// Serving-layer device kernels: batch metadata built from a req_to_token map (block tables,
// KV lengths, cumulative lengths, cache slots of the new tokens) into fixed-size buffers, and
// the gather of paged cache rows into contiguous bf16 rows for chunked-prefix extend. Both
// match the host versions in src/core/metadata.c bit for bit.
#include "mla_cuda.h"
#include "fp8_convert.cuh"

#include <cuda_runtime.h>
#include <stdint.h>

namespace {

constexpr int kScanThreads = 1024;
constexpr int kRowThreads = 256;

__device__ __forceinline__ int new_tokens_of(const mla_metadata_problem &p, int b)
{
    return p.q_len > 0 ? p.q_len : p.extend_lens[b];
}

// One block: cumulative lengths by a block-wide scan over per-thread partial sums, KV lengths,
// and the inactive rows (KV length 0).
__global__ void __launch_bounds__(kScanThreads) metadata_lengths_kernel(const mla_metadata_problem p)
{
    __shared__ int scan_q[kScanThreads], scan_kv[kScanThreads];
    const int tid = threadIdx.x;
    const int per = (p.batch + kScanThreads - 1) / kScanThreads;
    const int b0 = tid * per, b1 = min(b0 + per, p.batch);
    int sum_q = 0, sum_kv = 0;
    for (int b = b0; b < b1; b++) {
        sum_q += new_tokens_of(p, b);
        sum_kv += p.seq_lens[b] + p.seq_len_offset;
    }
    scan_q[tid] = sum_q;
    scan_kv[tid] = sum_kv;
    __syncthreads();
    for (int off = 1; off < kScanThreads; off *= 2) {
        const int add_q = tid >= off ? scan_q[tid - off] : 0;
        const int add_kv = tid >= off ? scan_kv[tid - off] : 0;
        __syncthreads();
        scan_q[tid] += add_q;
        scan_kv[tid] += add_kv;
        __syncthreads();
    }
    int run_q = scan_q[tid] - sum_q, run_kv = scan_kv[tid] - sum_kv; // exclusive prefixes
    if (tid == 0) {
        p.cu_seqlens_q[0] = 0;
        p.cu_seqlens_kv[0] = 0;
    }
    for (int b = b0; b < b1; b++) {
        const int s = p.seq_lens[b] + p.seq_len_offset;
        run_q += new_tokens_of(p, b);
        run_kv += s;
        p.cu_seqlens_q[b + 1] = run_q;
        p.cu_seqlens_kv[b + 1] = run_kv;
        p.seq_lens_out[b] = s;
    }
    for (int b = p.batch + tid; b < p.capacity; b += kScanThreads) p.seq_lens_out[b] = 0;
}

// One block per request: its block-table row (page of each page-aligned run; -1 when the first
// slot of a run is negative or not page-aligned; 0 past the sequence) and its new tokens' slots.
__global__ void metadata_rows_kernel(const mla_metadata_problem p)
{
    const int b = blockIdx.x;
    const int ps = p.page_size;
    const int s = p.seq_lens[b] + p.seq_len_offset;
    const int32_t *row = p.req_to_token + (int64_t)p.req_pool_indices[b] * p.req_capacity;
    int32_t *bt = p.block_table + (int64_t)b * p.max_pages_per_seq;
    for (int j = threadIdx.x; j < p.max_pages_per_seq; j += blockDim.x) {
        int32_t page = 0;
        if ((int64_t)j * ps < s) {
            const int32_t slot = row[(int64_t)j * ps];
            page = slot >= 0 && slot % ps == 0 ? slot / ps : -1;
        }
        bt[j] = page;
    }
    const int e = new_tokens_of(p, b);
    const int first = p.cu_seqlens_q[b + 1] - e;
    for (int j = threadIdx.x; j < e; j += blockDim.x) p.slots[first + j] = row[s - e + j];
}

// Slots past the batch's new tokens: -1 (skipped by the cache write).
__global__ void metadata_slot_tail_kernel(const mla_metadata_problem p)
{
    const int begin = p.cu_seqlens_q[p.batch];
    for (int i = begin + blockIdx.x * blockDim.x + threadIdx.x; i < p.slot_capacity; i += gridDim.x * blockDim.x)
        p.slots[i] = -1;
}

// Exact e4m3 decode (e4m3fn: no infinities, 0x7f/0xff are NaN).
__device__ __forceinline__ float e4m3_to_f32(uint8_t v)
{
    const uint32_t sign = (uint32_t)(v >> 7) << 31, e = (v >> 3) & 15u, m = v & 7u;
    if (e == 15u && m == 7u) return __int_as_float(0x7fc00000u | sign);
    if (e == 0u) return __int_as_float(__float_as_int((float)m * 0.001953125f) | sign); // m * 2^-9
    return __int_as_float(sign | ((e + 120u) << 23) | (m << 20));
}

// One warp per output row: find its request (binary search over cu_rows), read the cache row
// through the block table, dequantize, round to bf16.
__global__ void gather_cache_kernel(const mla_gather_problem p)
{
    const int lane = threadIdx.x & 31;
    const int64_t warps = (int64_t)gridDim.x * (kRowThreads / 32);
    for (int64_t r = (int64_t)blockIdx.x * (kRowThreads / 32) + (threadIdx.x >> 5); r < p.rows; r += warps) {
        int lo = 0, hi = p.batch - 1; // last b with cu_rows[b] <= r
        while (lo < hi) {
            const int mid = (lo + hi + 1) >> 1;
            if (p.cu_rows[mid] <= r) lo = mid; else hi = mid - 1;
        }
        const int b = lo;
        const int64_t t = (int64_t)p.token_start[b] + (r - p.cu_rows[b]);
        const int32_t page = p.block_table[(int64_t)b * p.max_pages_per_seq + t / p.page_size];
        uint16_t *dst = p.out + r * p.row_dim;
        if (page < 0 || page >= p.num_pages) {
            for (int d = lane; d < p.row_dim; d += 32) dst[d] = 0;
            continue;
        }
        const int64_t base = ((int64_t)page * p.page_size + t % p.page_size) * p.row_dim;
        if (p.kv_dtype == MLA_DTYPE_FP8_E4M3) {
            const uint8_t *src = static_cast<const uint8_t *>(p.kv_cache) + base;
            for (int d = lane; d < p.row_dim; d += 32)
                dst[d] = mla_f32_to_bf16_bits(__fmul_rn(e4m3_to_f32(src[d]), p.k_scale));
        } else {
            const uint16_t *src = static_cast<const uint16_t *>(p.kv_cache) + base;
            for (int d = lane; d < p.row_dim; d += 32) dst[d] = src[d];
        }
    }
}

} // namespace

extern "C" int mla_cuda_build_metadata(const mla_metadata_problem *p)
{
    cudaStream_t stream = static_cast<cudaStream_t>(p->stream);
    metadata_lengths_kernel<<<1, kScanThreads, 0, stream>>>(*p);
    if (p->batch > 0) metadata_rows_kernel<<<p->batch, kRowThreads, 0, stream>>>(*p);
    if (p->slot_capacity > 0) {
        int blocks = (p->slot_capacity + kRowThreads - 1) / kRowThreads;
        if (blocks > 1024) blocks = 1024;
        metadata_slot_tail_kernel<<<blocks, kRowThreads, 0, stream>>>(*p);
    }
    return (int)cudaGetLastError();
}

extern "C" int mla_cuda_gather_cache(const mla_gather_problem *p)
{
    if (p->rows <= 0 || p->batch <= 0) return 0;
    int64_t blocks = ((int64_t)p->rows + kRowThreads / 32 - 1) / (kRowThreads / 32);
    if (blocks > 65536) blocks = 65536;
    gather_cache_kernel<<<(unsigned)blocks, kRowThreads, 0, static_cast<cudaStream_t>(p->stream)>>>(*p);
    return (int)cudaGetLastError();
}
