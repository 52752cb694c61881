// Element-wise GPU operations: merge_state, kv_cache_write, quantize_fp8, kv_pack.
// All memory-bound; each matches the CPU reference (src/cpu/cpu_ops.c) bit for bit except
// merge_state, whose exp/log may differ by float rounding.
#include "mla_cuda.h"
#include "fp8_convert.cuh"

#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

namespace {

constexpr int kOpThreads = 256;

__device__ __forceinline__ float load_as_float(const void *base, mla_dtype dtype, int64_t i)
{
    switch (dtype) {
    case MLA_DTYPE_BF16: return mla_bf16_bits_to_f32(static_cast<const uint16_t *>(base)[i]);
    case MLA_DTYPE_FP16: return mla_f16_bits_to_f32(static_cast<const uint16_t *>(base)[i]);
    case MLA_DTYPE_F32: return static_cast<const float *>(base)[i];
    default: return 0.0f;
    }
}

__device__ __forceinline__ void store_from_float(void *base, mla_dtype dtype, int64_t i, float x)
{
    switch (dtype) {
    case MLA_DTYPE_BF16: static_cast<uint16_t *>(base)[i] = mla_f32_to_bf16_bits(x); break;
    case MLA_DTYPE_FP8_E4M3: static_cast<uint8_t *>(base)[i] = mla_f32_to_e4m3(x); break;
    case MLA_DTYPE_F32: static_cast<float *>(base)[i] = x; break;
    default: break;
    }
}

static unsigned blocks_for(int64_t work, int per_block)
{
    int64_t b = (work + per_block - 1) / per_block;
    if (b < 1) b = 1;
    if (b > 1048576) b = 1048576; // kernels below loop over the rest (grid-stride)
    return (unsigned)b;
}

// ---------------------------------------------------------------------------------------
// merge_state: one warp per (token, head) row. The weights are computed in double like the
// CPU reference; the side whose lse is -inf is never read (its o may hold garbage).
// ---------------------------------------------------------------------------------------
struct MergeWeights {
    float wa, wb, lse;
};

__device__ __forceinline__ MergeWeights merge_weights(float la, float lb)
{
    MergeWeights w;
    if (la == -INFINITY && lb == -INFINITY) {
        w.wa = w.wb = 0.0f;
        w.lse = -INFINITY;
    } else if (la == -INFINITY) {
        w.wa = 0.0f;
        w.wb = 1.0f;
        w.lse = lb;
    } else if (lb == -INFINITY) {
        w.wa = 1.0f;
        w.wb = 0.0f;
        w.lse = la;
    } else {
        const double m = la > lb ? la : lb;
        const double ea = exp((double)la - m), eb = exp((double)lb - m);
        const double sum = ea + eb;
        w.wa = (float)(ea / sum);
        w.wb = (float)(eb / sum);
        w.lse = (float)(m + log(sum));
    }
    return w;
}

__device__ __forceinline__ float merge_value(const mla_merge_problem &p, const MergeWeights &w, int64_t i)
{
    const float xa = w.wa != 0.0f ? load_as_float(p.o_a, p.in_dtype_a, i) : 0.0f;
    const float xb = w.wb != 0.0f ? load_as_float(p.o_b, p.in_dtype_b, i) : 0.0f;
    return __fadd_rn(__fmul_rn(w.wa, xa), __fmul_rn(w.wb, xb)); // no FMA: same rounding as the CPU
}

__global__ void merge_state_kernel(const mla_merge_problem p)
{
    const int64_t rows = (int64_t)p.tokens * p.num_heads;
    const int lane = threadIdx.x & 31;
    const int64_t warps = (int64_t)gridDim.x * (kOpThreads / 32);
    for (int64_t row = (int64_t)blockIdx.x * (kOpThreads / 32) + (threadIdx.x >> 5); row < rows; row += warps) {
        const MergeWeights w = merge_weights(p.lse_a[row], p.lse_b[row]);
        const int64_t base = row * p.dim;
        // Same-width aliasing of o with o_a/o_b is element-wise in place: each lane reads an
        // element before writing it. lse may alias lse_a/lse_b: every lane has read both above.
        for (int d = lane; d < p.dim; d += 32) store_from_float(p.o, p.out_dtype, base + d, merge_value(p, w, base + d));
        __syncwarp();
        if (p.lse && lane == 0) p.lse[row] = w.lse;
    }
}

// An output aliasing an input of another width overlaps other rows: one thread walks the
// elements in the order the CPU reference uses (forward when narrowing, backward when
// widening), so every input element is read before it is overwritten. A rare, slow path.
__global__ void merge_state_serial_kernel(const mla_merge_problem p, int reverse)
{
    const int64_t rows = (int64_t)p.tokens * p.num_heads;
    for (int64_t k = 0; k < rows; k++) {
        const int64_t row = reverse ? rows - 1 - k : k;
        const MergeWeights w = merge_weights(p.lse_a[row], p.lse_b[row]);
        const int64_t base = row * p.dim;
        for (int d = 0; d < p.dim; d++) store_from_float(p.o, p.out_dtype, base + d, merge_value(p, w, base + d));
        if (p.lse) p.lse[row] = w.lse;
    }
}

size_t dtype_bytes(mla_dtype t) { return t == MLA_DTYPE_F32 ? 4 : t == MLA_DTYPE_FP8_E4M3 ? 1 : 2; }

// ---------------------------------------------------------------------------------------
// kv_cache_write: one warp per token; row = c_kv || k_pe times inv_k_scale, stored as the
// cache dtype at slot * D. slot < 0 is padding; slot beyond the cache is never written and
// raises MLA_DEVERR_SLOT.
// ---------------------------------------------------------------------------------------
__global__ void kv_cache_write_kernel(const mla_cache_write_problem p, uint32_t *flags)
{
    const int lane = threadIdx.x & 31;
    const int R = p.kv_lora_rank, P = p.rope_dim, D = R + P;
    const int64_t capacity = (int64_t)p.num_pages * p.page_size;
    const int64_t warps = (int64_t)gridDim.x * (kOpThreads / 32);
    for (int64_t n = (int64_t)blockIdx.x * (kOpThreads / 32) + (threadIdx.x >> 5); n < p.n; n += warps) {
        const int64_t slot = p.slot_dtype == MLA_DTYPE_I64 ? static_cast<const int64_t *>(p.slots)[n]
                                                           : (int64_t) static_cast<const int32_t *>(p.slots)[n];
        if (slot < 0) continue;
        if (slot >= capacity) {
            if (lane == 0 && flags) atomicOr(flags, MLA_DEVERR_SLOT);
            continue;
        }
        const int64_t dst = slot * D;
        for (int d = lane; d < R; d += 32)
            store_from_float(p.kv_cache, p.kv_dtype, dst + d,
                             __fmul_rn(load_as_float(p.c_kv, p.in_dtype, n * R + d), p.inv_k_scale));
        for (int d = lane; d < P; d += 32)
            store_from_float(p.kv_cache, p.kv_dtype, dst + R + d,
                             __fmul_rn(load_as_float(p.k_pe, p.in_dtype, n * P + d), p.inv_k_scale));
    }
}

// ---------------------------------------------------------------------------------------
// quantize_fp8: out = e4m3(x * inv_scale); 8 elements per thread when aligned.
// ---------------------------------------------------------------------------------------
template <int IN_BYTES>
__global__ void quantize_fp8_vec8_kernel(const uint8_t *in, mla_dtype in_dtype, uint8_t *out, int64_t n8, float inv_scale)
{
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += stride) {
        float x[8];
        if (IN_BYTES == 4) {
            const float4 a = reinterpret_cast<const float4 *>(in)[2 * i];
            const float4 b = reinterpret_cast<const float4 *>(in)[2 * i + 1];
            x[0] = a.x; x[1] = a.y; x[2] = a.z; x[3] = a.w;
            x[4] = b.x; x[5] = b.y; x[6] = b.z; x[7] = b.w;
        } else {
            const uint4 a = reinterpret_cast<const uint4 *>(in)[i];
            const uint32_t w[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
            for (int k = 0; k < 4; k++) {
                if (in_dtype == MLA_DTYPE_BF16) {
                    x[2 * k] = mla_bf16_bits_to_f32((uint16_t)(w[k] & 0xffffu));
                    x[2 * k + 1] = mla_bf16_bits_to_f32((uint16_t)(w[k] >> 16));
                } else {
                    x[2 * k] = mla_f16_bits_to_f32((uint16_t)(w[k] & 0xffffu));
                    x[2 * k + 1] = mla_f16_bits_to_f32((uint16_t)(w[k] >> 16));
                }
            }
        }
        uint32_t lo = 0, hi = 0;
#pragma unroll
        for (int k = 0; k < 2; k++) {
            lo |= (uint32_t)mla_f32x2_to_e4m3x2(__fmul_rn(x[2 * k], inv_scale), __fmul_rn(x[2 * k + 1], inv_scale)) << (16 * k);
            hi |= (uint32_t)mla_f32x2_to_e4m3x2(__fmul_rn(x[4 + 2 * k], inv_scale), __fmul_rn(x[5 + 2 * k], inv_scale)) << (16 * k);
        }
        reinterpret_cast<uint2 *>(out)[i] = make_uint2(lo, hi);
    }
}

__global__ void quantize_fp8_scalar_kernel(const void *in, mla_dtype in_dtype, uint8_t *out, int64_t begin, int64_t n,
                                           float inv_scale)
{
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = begin + (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        out[i] = mla_f32_to_e4m3(__fmul_rn(load_as_float(in, in_dtype, i), inv_scale));
}

// ---------------------------------------------------------------------------------------
// kv_pack: one warp per (token, head): k_out = k_nope || k_pe (broadcast), v_out = v.
// VEC = 8 moves 16-byte chunks (dims, strides and pointers allow it), else single elements.
// bf16 outputs copy the bits; fp8 outputs are e4m3(x * inv_scale).
// ---------------------------------------------------------------------------------------
template <int VEC, bool FP8>
__device__ __forceinline__ void pack_chunk(const uint16_t *src, uint8_t *dst_base, int64_t dst_elem, float inv_scale)
{
    if (VEC == 8) {
        const uint4 v = *reinterpret_cast<const uint4 *>(src);
        if (!FP8) {
            *reinterpret_cast<uint4 *>(dst_base + 2 * dst_elem) = v;
        } else {
            const uint32_t w[4] = {v.x, v.y, v.z, v.w};
            uint32_t o[2] = {0, 0};
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const float a = __fmul_rn(mla_bf16_bits_to_f32((uint16_t)(w[k] & 0xffffu)), inv_scale);
                const float b = __fmul_rn(mla_bf16_bits_to_f32((uint16_t)(w[k] >> 16)), inv_scale);
                o[k >> 1] |= (uint32_t)mla_f32x2_to_e4m3x2(a, b) << (16 * (k & 1));
            }
            *reinterpret_cast<uint2 *>(dst_base + dst_elem) = make_uint2(o[0], o[1]);
        }
    } else {
        const uint16_t v = *src;
        if (!FP8)
            reinterpret_cast<uint16_t *>(dst_base)[dst_elem] = v;
        else
            dst_base[dst_elem] = mla_f32_to_e4m3(__fmul_rn(mla_bf16_bits_to_f32(v), inv_scale));
    }
}

template <int VEC, bool FP8> __global__ void kv_pack_kernel(const mla_kv_pack_problem p)
{
    const int lane = threadIdx.x & 31;
    const int H = p.num_heads, dk = p.nope_dim + p.rope_dim;
    const int nope_chunks = p.nope_dim / VEC, rope_chunks = p.rope_dim / VEC, v_chunks = p.v_dim / VEC;
    const int total_chunks = nope_chunks + rope_chunks + v_chunks;
    const int64_t rows = (int64_t)p.n * H;
    const int64_t warps = (int64_t)gridDim.x * (kOpThreads / 32);
    const uint16_t *k_nope = static_cast<const uint16_t *>(p.k_nope);
    const uint16_t *k_pe = static_cast<const uint16_t *>(p.k_pe);
    const uint16_t *v = static_cast<const uint16_t *>(p.v);
    uint8_t *k_out = static_cast<uint8_t *>(p.k_out);
    uint8_t *v_out = static_cast<uint8_t *>(p.v_out);
    for (int64_t row = (int64_t)blockIdx.x * (kOpThreads / 32) + (threadIdx.x >> 5); row < rows; row += warps) {
        const int64_t n = row / H;
        const int h = (int)(row % H);
        for (int c = lane; c < total_chunks; c += 32) {
            if (c < nope_chunks) {
                const int d = c * VEC;
                pack_chunk<VEC, FP8>(k_nope + n * p.k_nope_stride_n + h * p.k_nope_stride_h + d, k_out, row * dk + d,
                                     p.inv_k_scale);
            } else if (c < nope_chunks + rope_chunks) {
                const int d = (c - nope_chunks) * VEC;
                pack_chunk<VEC, FP8>(k_pe + n * p.k_pe_stride_n + d, k_out, row * dk + p.nope_dim + d, p.inv_k_scale);
            } else {
                const int d = (c - nope_chunks - rope_chunks) * VEC;
                pack_chunk<VEC, FP8>(v + n * p.v_stride_n + h * p.v_stride_h + d, v_out, row * (int64_t)p.v_dim + d,
                                     p.inv_v_scale);
            }
        }
    }
}

bool aligned(const void *ptr, uintptr_t bytes) { return ((uintptr_t)ptr % bytes) == 0; }

} // namespace

extern "C" int mla_cuda_merge_state(const mla_merge_problem *p)
{
    const int64_t rows = (int64_t)p->tokens * p->num_heads;
    if (rows <= 0) return 0;
    cudaStream_t stream = static_cast<cudaStream_t>(p->stream);
    const bool odd_a = p->o == p->o_a && dtype_bytes(p->out_dtype) != dtype_bytes(p->in_dtype_a);
    const bool odd_b = p->o == p->o_b && dtype_bytes(p->out_dtype) != dtype_bytes(p->in_dtype_b);
    if (odd_a || odd_b) {
        const mla_dtype in = odd_a ? p->in_dtype_a : p->in_dtype_b;
        merge_state_serial_kernel<<<1, 1, 0, stream>>>(*p, dtype_bytes(p->out_dtype) > dtype_bytes(in) ? 1 : 0);
    } else {
        merge_state_kernel<<<blocks_for(rows, kOpThreads / 32), kOpThreads, 0, stream>>>(*p);
    }
    return (int)cudaGetLastError();
}

extern "C" int mla_cuda_kv_cache_write(const mla_cache_write_problem *p, uint32_t *device_error_flags)
{
    if (p->n <= 0) return 0;
    kv_cache_write_kernel<<<blocks_for(p->n, kOpThreads / 32), kOpThreads, 0, static_cast<cudaStream_t>(p->stream)>>>(
        *p, device_error_flags);
    return (int)cudaGetLastError();
}

extern "C" int mla_cuda_quantize_fp8(const mla_quantize_problem *p)
{
    if (p->n <= 0) return 0;
    cudaStream_t stream = static_cast<cudaStream_t>(p->stream);
    const size_t in_bytes = dtype_bytes(p->in_dtype);
    int64_t vec_end = 0;
    if (aligned(p->input, 16) && aligned(p->output, 8)) {
        const int64_t n8 = p->n / 8;
        vec_end = n8 * 8;
        if (n8 > 0) {
            const unsigned blocks = blocks_for(n8, kOpThreads);
            if (in_bytes == 4)
                quantize_fp8_vec8_kernel<4><<<blocks, kOpThreads, 0, stream>>>(
                    static_cast<const uint8_t *>(p->input), p->in_dtype, p->output, n8, p->inv_scale);
            else
                quantize_fp8_vec8_kernel<2><<<blocks, kOpThreads, 0, stream>>>(
                    static_cast<const uint8_t *>(p->input), p->in_dtype, p->output, n8, p->inv_scale);
        }
    }
    if (vec_end < p->n)
        quantize_fp8_scalar_kernel<<<blocks_for(p->n - vec_end, kOpThreads), kOpThreads, 0, stream>>>(
            p->input, p->in_dtype, p->output, vec_end, p->n, p->inv_scale);
    return (int)cudaGetLastError();
}

extern "C" int mla_cuda_kv_pack(const mla_kv_pack_problem *p)
{
    const int64_t rows = (int64_t)p->n * p->num_heads;
    if (rows <= 0) return 0;
    cudaStream_t stream = static_cast<cudaStream_t>(p->stream);
    const bool fp8 = p->out_dtype == MLA_DTYPE_FP8_E4M3;
    const size_t out_elem = fp8 ? 1 : 2;
    // 16-byte input chunks need every dim, stride and pointer to be a multiple of 8 elements.
    const bool vec = p->nope_dim % 8 == 0 && p->rope_dim % 8 == 0 && p->v_dim % 8 == 0 &&
                     p->k_nope_stride_n % 8 == 0 && p->k_nope_stride_h % 8 == 0 && p->k_pe_stride_n % 8 == 0 &&
                     p->v_stride_n % 8 == 0 && p->v_stride_h % 8 == 0 && aligned(p->k_nope, 16) &&
                     aligned(p->k_pe, 16) && aligned(p->v, 16) && aligned(p->k_out, 8 * out_elem) &&
                     aligned(p->v_out, 8 * out_elem);
    const unsigned blocks = blocks_for(rows, kOpThreads / 32);
    if (vec)
        fp8 ? kv_pack_kernel<8, true><<<blocks, kOpThreads, 0, stream>>>(*p)
            : kv_pack_kernel<8, false><<<blocks, kOpThreads, 0, stream>>>(*p);
    else
        fp8 ? kv_pack_kernel<1, true><<<blocks, kOpThreads, 0, stream>>>(*p)
            : kv_pack_kernel<1, false><<<blocks, kOpThreads, 0, stream>>>(*p);
    return (int)cudaGetLastError();
}
