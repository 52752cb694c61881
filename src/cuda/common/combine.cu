// Split-KV decode combine: merges the partials (O / l in float32 or float16, LSE in float32)
// of each split request into the bf16 output and the optional LSE. Requests written directly
// by the decode kernel (one split) return at once. Two shapes, picked from the expected
// splits per request:
//   narrow (<= 16 splits): one warp per (query row, 128 * NC columns), 8 rows per CTA; the
//     warp computes its row's weights with shuffles and sums the splits in order, 8 per
//     round. (Up to 8 before: at batch 32, 16 heads, 9 expected splits, the wide shape's
//     2048 CTAs of 128 threads took 5.5% longer per call, bench/NOTES.md 2026-12-03 fifth.)
//   wide (many splits): one CTA per (query row, request, 4 * CL columns) (merge_splits); G
//     groups of CL threads each sum every G-th split, then the CTA adds the G sums.
// Both keep 8 float4 loads in flight per thread and issue the first ones before the LSE
// work, so that the weights are computed while the partials arrive; both read the split
// counts and slots before waiting for the decode kernel.
// Heavy requests: in an uneven batch the narrow shape would give a request of many splits
// (one 128k request among 1k ones: ~170) only its own few CTAs, each looping over every
// split in rounds of 8 loads (0.0706 ms per call on the H200 for 63 x 1k + 128k, against
// 0.0555 with the workers, bench/NOTES.md 2026-12-03 eighth). So the scheduler lists the
// requests of more than MLA_DECODE_HEAVY_SPLITS splits, their own CTAs skip them, and extra
// CTAs of the same grid (blockIdx.y >= batch) share their (row, columns) items out, each
// item merged by a whole CTA as in the wide shape.
#include "mla_cuda.h"
#include "decode_split.cuh"
#include "decode_trace.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>

namespace {

constexpr int kLoads = 8;          // float4 loads in flight per thread and round
constexpr int kNarrowRows = 8;     // warps (query rows) per narrow CTA
constexpr int kWideThreads = 512;  // most threads of a wide CTA
constexpr int kWideMinLanes = 8;   // fewest float4 columns of a wide CTA (128-byte rows)
#ifndef MLA_COMBINE_NARROW_MAX // experiment builds may move the narrow / wide boundary
#define MLA_COMBINE_NARROW_MAX 16
#endif
constexpr int kNarrowMax = MLA_COMBINE_NARROW_MAX; // expected splits per request the narrow shape takes
constexpr int kTargetCtas = 264;   // ~two CTAs per SM on a 132-SM H100 / H200
constexpr unsigned kMaxGridY = 65535; // CUDA's limit on gridDim.y (the narrow shape's requests)

// Butterflies: every lane ends with the same bits (each step adds a pair commutatively).
__device__ __forceinline__ float warp_max(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Volatile so that the compiler keeps it ahead of the early-exit branch: the split count and
// the slot base then arrive in one round trip instead of two.
__device__ __forceinline__ int load_early(const int *p)
{
    int v;
    asm volatile("ld.global.nc.b32 %0, [%1];\n" : "=r"(v) : "l"(p));
    return v;
}

// Four partial-O columns (float4 index i4 of the partials) as floats: float32 partials are
// one 16-byte load, float16 ones (kHalf) one 8-byte load.
template <bool kHalf> __device__ __forceinline__ float4 load_part4(const void *part_o, size_t i4)
{
    if constexpr (kHalf) {
        const uint2 u = __ldg(reinterpret_cast<const uint2 *>(part_o) + i4);
        const float2 a = __half22float2(*reinterpret_cast<const __half2 *>(&u.x));
        const float2 b = __half22float2(*reinterpret_cast<const __half2 *>(&u.y));
        return make_float4(a.x, a.y, b.x, b.y);
    } else {
        return __ldg(reinterpret_cast<const float4 *>(part_o) + i4);
    }
}

__device__ __forceinline__ void fma4(float4 &acc, float w, const float4 &v)
{
    acc.x += w * v.x;
    acc.y += w * v.y;
    acc.z += w * v.z;
    acc.w += w * v.w;
}

__device__ __forceinline__ void store_bf16x4(uint16_t *dst, float4 a, float scale)
{
    __nv_bfloat162 lo = __floats2bfloat162_rn(a.x * scale, a.y * scale);
    __nv_bfloat162 hi = __floats2bfloat162_rn(a.z * scale, a.w * scale);
    uint2 packed;
    packed.x = *reinterpret_cast<uint32_t *>(&lo);
    packed.y = *reinterpret_cast<uint32_t *>(&hi);
    *reinterpret_cast<uint2 *>(dst) = packed;
}

// (max, sum of exp(x - max)) of a set of LSEs; a max of -inf is the empty set (sum 0). The
// sum's products are rounded separately so that merge(a, b) and merge(b, a) agree to the bit
// (a butterfly then leaves every lane with the same pair).
__device__ __forceinline__ float2 lse_pair_merge(float2 a, float2 b)
{
    const float m = fmaxf(a.x, b.x);
    if (m == -INFINITY) return make_float2(-INFINITY, 0.0f);
    return make_float2(m, __fadd_rn(__fmul_rn(a.y, expf(a.x - m)), __fmul_rn(b.y, expf(b.x - m))));
}

__device__ __forceinline__ float2 warp_pair_merge(float2 p)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        p = lse_pair_merge(p, make_float2(__shfl_xor_sync(0xffffffffu, p.x, o), __shfl_xor_sync(0xffffffffu, p.y, o)));
    return p;
}

// Shared memory of merge_splits for CTAs of at most kThreads threads: the splits' LSEs, each
// warp's (max, sum) pair, and G rows of 4 * CL + 4 floats for the groups' sums (G <=
// kThreads / kWideMinLanes).
template <int kThreads> struct MergeSmem {
    float lse[MLA_DECODE_MAX_PARTS];
    float2 pair[kThreads / 32];
    __align__(16) float red[4 * kThreads + 4 * (kThreads / kWideMinLanes)];
};

// Merges the ns splits of (request b, query row) at columns [4 * CL * chunk, 4 * CL * (chunk
// + 1)) with the whole CTA: blockDim = CL * G, CL = 1 << cl_shift and G powers of two, G >= 4,
// G / 4 <= 32. Thread (group g, lane c) sums splits g, g + G, ... of float4 column c with kLoads
// loads in flight, the first issued before the LSE work. The LSEs' max and sum take one
// barrier: each thread merges its LSEs into a (max, sum) pair, a butterfly merges the warp's,
// and every warp merges the warps' pairs itself. A second barrier adds the G sums. Calls may
// follow each other without a barrier between them: every read of lse and pair comes before
// the second barrier, and red is written only after the first.
template <bool kHalf, int kThreads>
__device__ __forceinline__ void merge_splits(const mla_decode_sched &s, int rows, int dv, int cl_shift,
                                             float bmm2_scale, int b, int row, int chunk, int ns, int base,
                                             uint16_t *__restrict__ out, float *__restrict__ lse_out,
                                             MergeSmem<kThreads> &sm)
{
    const int CL = 1 << cl_shift, G = blockDim.x >> cl_shift;
    const int c = threadIdx.x & (CL - 1), g = threadIdx.x >> cl_shift;
    const int dv4 = dv >> 2;
    const int col4 = chunk * CL + c;
    const bool active = col4 < dv4; // inactive lanes still reach the barriers
    const size_t stride4 = (size_t)rows * dv4;
    const size_t src = (size_t)base * stride4 + (size_t)row * dv4 + col4;

    float4 v[kLoads] = {};
    auto load_round = [&](int i0) {
#pragma unroll
        for (int u = 0; u < kLoads; u++) {
            const int i = i0 + g + u * G;
            if (i < ns && active) v[u] = load_part4<kHalf>(s.part_o, src + (size_t)i * stride4);
        }
    };
    load_round(0); // in flight during the LSE work

    const float *lse = s.part_lse + (size_t)base * rows + row;
    float2 p = make_float2(-INFINITY, 0.0f);
    for (int i = threadIdx.x; i < ns; i += blockDim.x) {
        const float x = __ldg(lse + (size_t)i * rows);
        sm.lse[i] = x;
        p = lse_pair_merge(p, make_float2(x, 1.0f));
    }
    p = warp_pair_merge(p);
    const int lane = threadIdx.x & 31;
    if (lane == 0) sm.pair[threadIdx.x >> 5] = p;
    __syncthreads();
    p = lane < (int)(blockDim.x >> 5) ? sm.pair[lane] : make_float2(-INFINITY, 0.0f);
    p = warp_pair_merge(p);
    const float mx = p.x, inv_sum = 1.0f / p.y; // p.y >= 1 unless mx is -inf
#ifdef MLA_DECODE_TRACE
    mla_trace_comb_mark(kTrWeights);
#endif

    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int i0 = 0; i0 < ns; i0 += kLoads * G) {
        if (i0 > 0) load_round(i0);
#pragma unroll
        for (int u = 0; u < kLoads; u++) {
            const int i = i0 + g + u * G;
            if (i < ns && active && mx != -INFINITY) fma4(acc, expf(sm.lse[i] - mx) * inv_sum, v[u]);
        }
    }

#ifdef MLA_DECODE_TRACE
    mla_trace_comb_mark(kTrSummed);
#endif
    // Add the G sums: P = G / 4 threads per column each add 4 groups, then a butterfly.
    const int CW = CL * 4, S = CW + 4; // padded row of red, float4-aligned
    *reinterpret_cast<float4 *>(sm.red + g * S + 4 * c) = acc;
    __syncthreads();
    const int P = G >> 2, p_shift = __ffs(P) - 1;
    const int col = threadIdx.x >> p_shift, part = threadIdx.x & (P - 1);
    float r = sm.red[part * S + col];
#pragma unroll
    for (int k = 1; k < 4; k++) r += sm.red[(part + k * P) * S + col];
    for (int o = P >> 1; o > 0; o >>= 1) r += __shfl_xor_sync(0xffffffffu, r, o);
    const int gcol = chunk * CW + col;
    if (part == 0 && gcol < dv) {
        const __nv_bfloat16 h = __float2bfloat16_rn(r * bmm2_scale);
        out[((size_t)b * rows + row) * dv + gcol] = *reinterpret_cast<const uint16_t *>(&h);
    }
    if (lse_out && chunk == 0 && threadIdx.x == 0)
        lse_out[(size_t)b * rows + row] = mx == -INFINITY ? -INFINITY : mx + logf(p.y);
}

// A worker CTA of the narrow shape (blockIdx.y >= batch): merges the heavy requests' items,
// (request, query row, CL float4 columns), worker, worker + workers, ..., each with the whole
// CTA (merge_splits; CL = 32 at 8 warps). The heavy list and the first item's split count and
// slot come from the scheduler, which finished before the decode kernel let this grid launch,
// so they are read before the wait, and a worker with nothing to do leaves without waiting.
template <bool kHalf>
__device__ __forceinline__ void combine_heavy_items(const mla_decode_sched &s, int batch, int rows, int dv,
                                                    float bmm2_scale, uint16_t *__restrict__ out,
                                                    float *__restrict__ lse_out, int worker, int workers)
{
    __shared__ MergeSmem<32 * kNarrowRows> sm;
#ifdef MLA_DECODE_TRACE
    const unsigned long long trace_entry = mla_trace_now();
#endif
    const int *heavy = mla_decode_heavy_list(s, batch);
    const int cl_shift = min(5, __ffs((int)blockDim.x) - 3); // G = blockDim / CL >= 4
    const int dv4 = dv >> 2, chunks = (dv4 + (1 << cl_shift) - 1) >> cl_shift;
    const int items = load_early(heavy) * rows * chunks;
    if (worker >= items) return; // uniform over the CTA
    auto item_request = [&](int it, int &b, int &row, int &ch) {
        const int h = it / (rows * chunks), rem = it - h * rows * chunks;
        row = rem / chunks;
        ch = rem - row * chunks;
        b = load_early(heavy + 1 + h);
    };
    int b, row, ch;
    item_request(worker, b, row, ch);
    int ns = load_early(s.num_splits + b), base = load_early(s.slot_base + b);
    asm volatile("griddepcontrol.wait;\n" ::: "memory"); // the decode kernel's partials
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#ifdef MLA_DECODE_TRACE
    mla_trace_comb_waited(trace_entry);
#endif
    for (int it = worker;;) {
        merge_splits<kHalf>(s, rows, dv, cl_shift, bmm2_scale, b, row, ch, ns, base, out, lse_out, sm);
        it += workers;
        if (it >= items) break;
        item_request(it, b, row, ch);
        ns = s.num_splits[b];
        base = s.slot_base[b];
    }
#ifdef MLA_DECODE_TRACE
    mla_trace_comb_end();
#endif
}

// One warp per (query row, request, 32 * NC float4 columns): lane c owns float4 columns
// c, c + 32, ... of the chunk. The lane-strided max / sum and the in-order sum over splits
// are those of the former one-warp kernel, so results match it bit for bit.
// kHeavy: CTAs with blockIdx.y >= batch merge the heavy requests (above), the others skip them.
template <int NC, bool kHalf, bool kHeavy>
__device__ __forceinline__ void combine_narrow(const mla_decode_sched &s, int batch, int rows, int dv,
                                               float bmm2_scale, uint16_t *__restrict__ out,
                                               float *__restrict__ lse_out)
{
    constexpr int U = kLoads / NC; // splits per round
    const int b = blockIdx.y;
    if constexpr (kHeavy) {
        if (b >= batch) { // a worker CTA
            const int per_y = gridDim.x * gridDim.z;
            combine_heavy_items<kHalf>(s, batch, rows, dv, bmm2_scale, out, lse_out,
                                       (b - batch) * per_y + blockIdx.x * gridDim.z + blockIdx.z,
                                       (gridDim.y - batch) * per_y);
            return;
        }
    }
#ifdef MLA_DECODE_TRACE
    const unsigned long long trace_entry = mla_trace_now();
#endif
    // The split counts and slots come from the scheduler, which finished before the decode
    // kernel let this grid launch: read them while that kernel finishes.
    const int ns = load_early(s.num_splits + b);
    const int base = load_early(s.slot_base + b);
    asm volatile("griddepcontrol.wait;\n" ::: "memory"); // the decode kernel's partials
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory"); // a next decode's scheduler may launch
#ifdef MLA_DECODE_TRACE
    mla_trace_comb_waited(trace_entry);
#endif
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    // No barriers below: warps may leave on their own. Heavy requests are the workers' here.
    if (ns <= 1 || (kHeavy && ns > MLA_DECODE_HEAVY_SPLITS) || row >= rows) {
#ifdef MLA_DECODE_TRACE
        mla_trace_comb_end();
#endif
        return;
    }
    const int dv4 = dv >> 2;
    const int col4 = blockIdx.z * 32 * NC + lane;
    const size_t stride4 = (size_t)rows * dv4; // 4-column groups per slot
    const size_t src = (size_t)base * stride4 + (size_t)row * dv4 + col4;
    const float *lse = s.part_lse + (size_t)base * rows + row;
    bool ok[NC];
#pragma unroll
    for (int k = 0; k < NC; k++) ok[k] = col4 + 32 * k < dv4;

    float4 v[U][NC] = {}; // zero where a lane has no column (never stored)
    auto load_round = [&](int i0) {
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int k = 0; k < NC; k++)
                if (i0 + u < ns && ok[k]) v[u][k] = load_part4<kHalf>(s.part_o, src + (size_t)(i0 + u) * stride4 + 32 * k);
    };
    load_round(0); // in flight during the LSE work

    float mx = -INFINITY;
    for (int i = lane; i < ns; i += 32) mx = fmaxf(mx, __ldg(lse + (size_t)i * rows));
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int i = lane; i < ns; i += 32)
        sum += mx == -INFINITY ? 0.0f : expf(__ldg(lse + (size_t)i * rows) - mx);
    sum = warp_sum(sum);
#ifdef MLA_DECODE_TRACE
    mla_trace_comb_mark(kTrWeights);
#endif

    float4 acc[NC];
#pragma unroll
    for (int k = 0; k < NC; k++) acc[k] = make_float4(0.f, 0.f, 0.f, 0.f);
    // Lane j holds the weight of split k0 + j; splits are taken in order, U per round.
    for (int k0 = 0; k0 < ns; k0 += 32) {
        const int nk = min(32, ns - k0);
        const float w = lane < nk && mx != -INFINITY
                            ? expf(__ldg(lse + (size_t)(k0 + lane) * rows) - mx) / sum
                            : 0.0f;
        for (int j = 0; j < nk; j += U) {
            if (k0 + j > 0) load_round(k0 + j);
#pragma unroll
            for (int u = 0; u < U; u++) {
                if (j + u >= nk) break; // uniform over the warp
                const float wu = __shfl_sync(0xffffffffu, w, j + u);
#pragma unroll
                for (int k = 0; k < NC; k++) fma4(acc[k], wu, v[u][k]);
            }
        }
    }
#ifdef MLA_DECODE_TRACE
    mla_trace_comb_mark(kTrSummed);
#endif
    uint16_t *dst = out + ((size_t)b * rows + row) * dv + (size_t)col4 * 4;
#pragma unroll
    for (int k = 0; k < NC; k++)
        if (ok[k]) store_bf16x4(dst + 128 * k, acc[k], bmm2_scale);
    if (lse_out && blockIdx.z == 0 && lane == 0)
        lse_out[(size_t)b * rows + row] = mx == -INFINITY ? -INFINITY : mx + logf(sum);
#ifdef MLA_DECODE_TRACE
    mla_trace_comb_end();
#endif
}

template <int NC, bool kHalf>
__global__ void __launch_bounds__(32 * kNarrowRows, NC == 1 ? 4 : 3)
combine_narrow_kernel(mla_decode_sched s, int rows, int dv, float bmm2_scale,
                      uint16_t *__restrict__ out, float *__restrict__ lse_out)
{
    combine_narrow<NC, kHalf, false>(s, 0, rows, dv, bmm2_scale, out, lse_out);
}

// The narrow shape with the heavy-request workers (grid y = batch + worker rows).
template <int NC, bool kHalf>
__global__ void __launch_bounds__(32 * kNarrowRows, NC == 1 ? 4 : 3)
combine_narrow_heavy_kernel(mla_decode_sched s, int batch, int rows, int dv, float bmm2_scale,
                            uint16_t *__restrict__ out, float *__restrict__ lse_out)
{
    combine_narrow<NC, kHalf, true>(s, batch, rows, dv, bmm2_scale, out, lse_out);
}

// One CTA per (query row, request, CL float4 columns), blockDim = CL * G (merge_splits).
template <bool kHalf>
__global__ void __launch_bounds__(kWideThreads, 2)
combine_wide_kernel(mla_decode_sched s, int rows, int dv, int cl_shift, float bmm2_scale,
                    uint16_t *__restrict__ out, float *__restrict__ lse_out)
{
    __shared__ MergeSmem<kWideThreads> sm;
#ifdef MLA_DECODE_TRACE
    const unsigned long long trace_entry = mla_trace_now();
#endif
    const int row = blockIdx.x, b = blockIdx.y;
    const int ns = load_early(s.num_splits + b); // the scheduler's, as in the narrow kernel
    const int base = load_early(s.slot_base + b);
    asm volatile("griddepcontrol.wait;\n" ::: "memory"); // the decode kernel's partials
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory"); // a next decode's scheduler may launch
#ifdef MLA_DECODE_TRACE
    mla_trace_comb_waited(trace_entry);
#endif
    if (ns > 1) // uniform over the CTA
        merge_splits<kHalf>(s, rows, dv, cl_shift, bmm2_scale, b, row, blockIdx.z, ns, base, out, lse_out, sm);
#ifdef MLA_DECODE_TRACE
    mla_trace_comb_end();
#endif
}

template <bool kHalf>
cudaError_t launch_combine(const mla_decode_sched *s, int batch, int rows, int dv, int num_parts,
                           float bmm2_scale, void *out, float *lse, cudaStream_t stream)
{
    if (batch < 1 || rows < 1 || dv < 4 || dv % 4 != 0) return cudaErrorInvalidValue;
    const int dv4 = dv / 4;
    // Shapes from the expected splits per request (the actual counts are on the GPU only).
    const int expect = num_parts / batch + 1;
    cudaLaunchAttribute attr;
    cudaLaunchConfig_t cfg = mla_pdl_launch_config(dim3(1), dim3(1), 0, stream, &attr); // shape set below
    uint16_t *o = (uint16_t *)out;
    if (expect <= kNarrowMax) {
        // Few splits: more columns per warp keeps kLoads float4s in flight per thread.
        const int nc = expect <= 2 ? 4 : expect <= 4 ? 2 : 1;
        // A power of two of warps (the workers' merge_splits needs one); spare warps leave.
        int warps = 1;
        while (warps < rows && warps < kNarrowRows) warps *= 2;
        const unsigned gx = (unsigned)((rows + warps - 1) / warps), gz = (unsigned)((dv4 + 32 * nc - 1) / (32 * nc));
        cfg.gridDim = dim3(gx, (unsigned)batch, gz);
        cfg.blockDim = dim3(32u * warps);
        // About one worker CTA per two parts: a heavy request has more than
        // MLA_DECODE_HEAVY_SPLITS parts, so there are at most num_parts / 24 of them. Workers
        // with nothing to merge leave before waiting for the decode kernel.
        const unsigned per_y = gx * gz, want = (unsigned)(num_parts / 2 > 1 ? num_parts / 2 : 1);
        const unsigned worker_y = (want + per_y - 1) / per_y;
        if ((unsigned)batch + worker_y <= kMaxGridY) {
            cfg.gridDim.y += worker_y;
            if (nc == 4)
                return cudaLaunchKernelEx(&cfg, combine_narrow_heavy_kernel<4, kHalf>, *s, batch, rows, dv, bmm2_scale, o, lse);
            if (nc == 2)
                return cudaLaunchKernelEx(&cfg, combine_narrow_heavy_kernel<2, kHalf>, *s, batch, rows, dv, bmm2_scale, o, lse);
            return cudaLaunchKernelEx(&cfg, combine_narrow_heavy_kernel<1, kHalf>, *s, batch, rows, dv, bmm2_scale, o, lse);
        }
        // One launch per kMaxGridY requests (grid y holds the request): launch c sees request
        // b0 + y as its request y (split counts, slot bases and outputs shifted; the slots are
        // absolute). Without the heavy workers every request is merged by its own CTAs, as
        // it is above kMaxGridY requests.
        for (int b0 = 0; b0 < batch; b0 += (int)kMaxGridY) {
            const int n = batch - b0 < (int)kMaxGridY ? batch - b0 : (int)kMaxGridY;
            mla_decode_sched c = *s;
            c.num_splits += b0;
            c.slot_base += b0;
            uint16_t *oc = o + (size_t)b0 * rows * dv;
            float *lc = lse ? lse + (size_t)b0 * rows : NULL;
            cfg.gridDim.y = (unsigned)n;
            cudaError_t e = nc == 4   ? cudaLaunchKernelEx(&cfg, combine_narrow_kernel<4, kHalf>, c, rows, dv, bmm2_scale, oc, lc)
                            : nc == 2 ? cudaLaunchKernelEx(&cfg, combine_narrow_kernel<2, kHalf>, c, rows, dv, bmm2_scale, oc, lc)
                                      : cudaLaunchKernelEx(&cfg, combine_narrow_kernel<1, kHalf>, c, rows, dv, bmm2_scale, oc, lc);
            if (e != cudaSuccess) return e;
        }
        return cudaSuccess;
    }
    // Many splits: narrow the column chunk until the grid fills the GPU, then give each
    // thread at most kLoads splits (one round) where the block size allows.
    int cl_shift = 5; // 32 float4 lanes = 128 columns
    while ((1 << cl_shift) > kWideMinLanes &&
           (long long)rows * batch * ((dv4 + (1 << cl_shift) - 1) >> cl_shift) < kTargetCtas)
        cl_shift--;
    const int cl = 1 << cl_shift;
    int groups = 4;
    while (groups * kLoads < expect && groups * cl < kWideThreads) groups *= 2;
    while (groups * cl < 128) groups *= 2;
    cfg.gridDim = dim3((unsigned)rows, (unsigned)batch, (unsigned)((dv4 + cl - 1) / cl));
    cfg.blockDim = dim3((unsigned)(groups * cl));
    return cudaLaunchKernelEx(&cfg, combine_wide_kernel<kHalf>, *s, rows, dv, cl_shift, bmm2_scale, o, lse);
}

} // namespace

cudaError_t mla_launch_decode_combine(const mla_decode_sched *s, int batch, int rows, int dv,
                                      int num_parts, bool half_partials, float bmm2_scale,
                                      void *out, float *lse, cudaStream_t stream)
{
    return half_partials ? launch_combine<true>(s, batch, rows, dv, num_parts, bmm2_scale, out, lse, stream)
                         : launch_combine<false>(s, batch, rows, dv, num_parts, bmm2_scale, out, lse, stream);
}
