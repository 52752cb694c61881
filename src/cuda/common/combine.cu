// Split-KV decode combine: merges the float32 partials (O / l, LSE) of each split request
// into the bf16 output and the optional LSE. One CTA per (query row, request, 128 columns);
// requests written directly by the decode kernel (one split) return at once.
#include "mla_cuda.h"
#include "decode_split.cuh"

#include <cuda_bf16.h>
#include <math.h>

namespace {

__device__ __forceinline__ float block_reduce(float v, bool is_max, float *red)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float y = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, y) : v + y;
    }
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float r = red[0];
    for (int w = 1; w < nw; w++) r = is_max ? fmaxf(r, red[w]) : r + red[w];
    __syncthreads(); // red is reused
    return r;
}

// One CTA per (query row, request, 128-column chunk); blockDim = 32 * G: thread (group g,
// lane c) sums splits g, g+G, ... for columns chunk*128 + 4c .. +3. G > 1 shortens the chain
// of dependent loads when a request has many splits (batch 1: ~2 splits per SM).
__global__ void __launch_bounds__(512)
decode_combine_kernel(mla_decode_sched s, int rows, int dv, float bmm2_scale,
                      uint16_t *__restrict__ out, float *__restrict__ lse_out)
{
    __shared__ float weight[MLA_DECODE_MAX_PARTS];
    __shared__ float red[32];
    __shared__ float4 acc_sh[15 * 32];
    asm volatile("griddepcontrol.wait;\n" ::: "memory"); // the decode kernel's partials
    const int row = blockIdx.x, b = blockIdx.y, chunk = blockIdx.z;
    const int ns = s.num_splits[b];
    if (ns <= 1) return;
    const int base = s.slot_base[b];

    float mx = -INFINITY;
    for (int i = threadIdx.x; i < ns; i += blockDim.x) {
        const float l = s.part_lse[(size_t)(base + i) * rows + row];
        weight[i] = l;
        mx = fmaxf(mx, l);
    }
    mx = block_reduce(mx, true, red);
    float sum = 0.0f;
    for (int i = threadIdx.x; i < ns; i += blockDim.x)
        sum += mx == -INFINITY ? 0.0f : expf(weight[i] - mx);
    sum = block_reduce(sum, false, red);
    for (int i = threadIdx.x; i < ns; i += blockDim.x)
        weight[i] = mx == -INFINITY ? 0.0f : expf(weight[i] - mx) / sum;
    __syncthreads();

    const int groups = blockDim.x >> 5, g = threadIdx.x >> 5, c = threadIdx.x & 31;
    const int col4 = chunk * 32 + c;
    const bool active = col4 * 4 < dv; // dv = 512: always; kept so a barrier is never skipped
    {
        float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
        const float4 *src = reinterpret_cast<const float4 *>(s.part_o) + col4;
        const size_t stride4 = (size_t)rows * (dv / 4); // float4s per slot
        const float4 *row_src = src + (size_t)row * (dv / 4);
        int i = active ? g : ns;
#pragma unroll 1
        for (; i + 7 * groups < ns; i += 8 * groups) {
            float4 v[8];
#pragma unroll
            for (int u = 0; u < 8; u++) v[u] = row_src[(size_t)(base + i + u * groups) * stride4];
#pragma unroll
            for (int u = 0; u < 8; u++) {
                const float w = weight[i + u * groups];
                acc.x += w * v[u].x;
                acc.y += w * v[u].y;
                acc.z += w * v[u].z;
                acc.w += w * v[u].w;
            }
        }
        for (; i < ns; i += groups) {
            const float w = weight[i];
            const float4 v = row_src[(size_t)(base + i) * stride4];
            acc.x += w * v.x;
            acc.y += w * v.y;
            acc.z += w * v.z;
            acc.w += w * v.w;
        }
        if (g > 0) acc_sh[(g - 1) * 32 + c] = acc;
        __syncthreads();
        if (g == 0 && active) {
            for (int k = 1; k < groups; k++) {
                const float4 o = acc_sh[(k - 1) * 32 + c];
                acc.x += o.x;
                acc.y += o.y;
                acc.z += o.z;
                acc.w += o.w;
            }
            __nv_bfloat162 lo = __floats2bfloat162_rn(acc.x * bmm2_scale, acc.y * bmm2_scale);
            __nv_bfloat162 hi = __floats2bfloat162_rn(acc.z * bmm2_scale, acc.w * bmm2_scale);
            uint2 packed;
            packed.x = *reinterpret_cast<uint32_t *>(&lo);
            packed.y = *reinterpret_cast<uint32_t *>(&hi);
            *reinterpret_cast<uint2 *>(out + ((size_t)b * rows + row) * dv + col4 * 4) = packed;
        }
    }
    if (lse_out && chunk == 0 && threadIdx.x == 0)
        lse_out[(size_t)b * rows + row] = mx == -INFINITY ? -INFINITY : mx + logf(sum);
}

} // namespace

cudaError_t mla_launch_decode_combine(const mla_decode_sched *s, int batch, int rows, int dv,
                                      int num_parts, float bmm2_scale, void *out, float *lse,
                                      cudaStream_t stream)
{
    // Expected splits per request ~ num_parts / batch + 1: give long chains more groups.
    const int expect = num_parts / batch + 1;
    int groups = 1;
    while (groups < 16 && groups * 8 < expect) groups *= 2;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)rows, (unsigned)batch, (unsigned)((dv + 127) / 128));
    cfg.blockDim = dim3(32u * groups);
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    return cudaLaunchKernelEx(&cfg, decode_combine_kernel, *s, rows, dv, bmm2_scale,
                              (uint16_t *)out, lse);
}
