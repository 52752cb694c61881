// Probe: cycles of the decode kernels' wgmma phases in isolation (no loads, no softmax), so
// that a kernel's measured cycles per block can be split into tensor time and the rest.
// Two warpgroups per CTA, one CTA per SM, shared-memory operands laid out as in
// decode_v3_wgmma.cuh (64-row column-block tiles, 128-byte swizzle). Each mode runs `iters`
// times a chain and its wait, and reports clock64 cycles per iteration (median CTA).
//   0: S  = 36 x m64n32k16, A = Q tile, B = 32 keys of the K tile (v3's S, per warpgroup)
//   1: PV =  4 x m64n256k16, A = P tile, B = V N-major (imm-trans-b = 1) (v3's P V)
//   2: S then PV (v3's two chains back to back, one block)
//   3: S' = 36 x m64n32k16 as 0 but each warpgroup on its own K tile (no shared A reads)
//   4: S64 = 18 x m64n64k16 (half the dims, 64 keys): a dimension split of S between the
//      warpgroups
// Build and run on the device: nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a
//   -Isrc/cuda -Isrc/cuda/sm90 -Isrc/core -Iinclude --expt-relaxed-constexpr bench/probes/wgmma_rates.cu -o
//   build/wgmma_rates && build/wgmma_rates
#include "../../src/cuda/sm90/ws_common.cuh"

#include <algorithm>
#include <cstdio>
#include <vector>

using namespace mla_sm90;
using namespace mla_decode_v3;
using mla_decode_ws::wgmma_m64n64k16_f16;

constexpr int kTileBytes = 64 * 576 * 2;

template <int mode>
__global__ void __launch_bounds__(256, 1) probe(int iters, long long *cycles, float *sink)
{
    extern __shared__ uint8_t smem_raw[];
    const uint32_t raw = mla_decode_v1::smem_u32(smem_raw);
    const uint32_t base = (raw + 1023u) & ~1023u;
    const uint32_t aQ = base, aK0 = base + kTileBytes, aK1 = base + 2 * kTileBytes;
    const int wg = threadIdx.x >> 7;
    // Small finite values everywhere (0x3c00 = 1.0 in f16 would overflow nothing either).
    for (uint32_t i = threadIdx.x; i < 3 * kTileBytes / 4; i += 256)
        asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(base + 4 * i), "r"(0x20002000u));
    fence_proxy_async();
    __syncthreads();
    constexpr bool kS = mode == 0 || mode == 2 || mode == 3, kS64 = mode == 4, kPV = mode == 1 || mode == 2;
    float s[kS ? 16 : 1], s64[kS64 ? 32 : 1], o[kPV ? 128 : 1];
    for (float &x : s) x = 0.f;
    for (float &x : s64) x = 0.f;
    for (float &x : o) x = 0.f;
    const uint64_t dq = opaque_desc(smem_desc(aQ, 16, 1024, 1));
    const uint64_t dk = opaque_desc(smem_desc((mode == 3 && wg ? aK1 : aK0) + (uint32_t)(mode == 3 ? 0 : wg * 32 * 128), 16, 1024, 1));
    const uint64_t dk64 = opaque_desc(smem_desc(aK0, 16, 1024, 1));
    const uint64_t dp = opaque_desc(smem_desc(aK0 + 8u * kBlk, 16, 1024, 1));
    const uint64_t dv = opaque_desc(smem_desc(aK0 + (uint32_t)(wg * 4 * kBlk), kBlk, 1024, 1));
    acc_fence(s);
    acc_fence(s64);
    acc_fence(o);
    __syncthreads();
    const long long t0 = clock64();
    for (int it = 0; it < iters; it++) {
        if constexpr (kS) {
            wgmma_fence();
#pragma unroll
            for (int ks = 0; ks < 36; ks++) {
                const uint32_t off = (uint32_t)((ks >> 2) * kBlk + (ks & 3) * 32);
                wgmma_m64n32k16_ss<true>(s, desc_add(dq, off), desc_add(dk, off), 1);
            }
            wgmma_commit();
            wgmma_wait<0>();
            acc_fence(s);
        }
        if constexpr (kS64) {
            wgmma_fence();
#pragma unroll
            for (int ks = 0; ks < 18; ks++) {
                const uint32_t off = (uint32_t)(((ks + 18 * wg) >> 2) * kBlk + ((ks + 18 * wg) & 3) * 32);
                wgmma_m64n64k16_f16(s64, desc_add(dq, off), desc_add(dk64, off), 1);
            }
            wgmma_commit();
            wgmma_wait<0>();
            acc_fence(s64);
        }
        if constexpr (kPV) {
            wgmma_fence();
#pragma unroll
            for (int ks = 0; ks < 4; ks++)
                wgmma_m64n256k16_ss_tb<true>(o, desc_add(dp, (uint32_t)(ks * 32)), desc_add(dv, (uint32_t)(ks * 16 * 128)), 1);
            wgmma_commit();
            wgmma_wait<0>();
            acc_fence(o);
        }
    }
    const long long t1 = clock64();
    float acc = 0.f;
    for (float x : s) acc += x;
    for (float x : s64) acc += x;
    for (float x : o) acc += x;
    sink[blockIdx.x * 256 + threadIdx.x] = acc;
    if (threadIdx.x == 0) cycles[blockIdx.x] = t1 - t0;
}

int main()
{
    int sms = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    const int smem = 3 * kTileBytes + 1024;
    void (*const kernels[])(int, long long *, float *) = {probe<0>, probe<1>, probe<2>, probe<3>, probe<4>};
    for (auto k : kernels) cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    long long *cyc;
    float *sink;
    cudaMalloc(&cyc, sms * sizeof(long long));
    cudaMalloc(&sink, sms * 256 * sizeof(float));
    const int iters = 2000;
    const char *names[] = {"S  36 x m64n32k16 (v3)", "PV 4 x m64n256k16 tnspB", "S + PV (v3 block)",
                           "S  36 x m64n32k16, own K per WG", "S  18 x m64n64k16 (dim split)"};
    const double model[] = {36 * 2 * 16, 4 * 2 * 128, 36 * 2 * 16 + 4 * 2 * 128, 36 * 2 * 16, 18 * 2 * 32};
    printf("tensor model: m64nNk16 f16 = N/2 cycles per warpgroup instruction, 2 warpgroups share the SM\n");
    printf("| mode | cycles/iter | model (tensor only) | ratio |\n|---|---|---|---|\n");
    for (int mode = 0; mode < 5; mode++) {
        kernels[mode]<<<sms, 256, smem>>>(iters, cyc, sink);
        if (cudaDeviceSynchronize() != cudaSuccess) {
            printf("mode %d: %s\n", mode, cudaGetErrorString(cudaGetLastError()));
            return 1;
        }
        std::vector<long long> h(sms);
        cudaMemcpy(h.data(), cyc, sms * sizeof(long long), cudaMemcpyDeviceToHost);
        std::sort(h.begin(), h.end());
        const double c = (double)h[sms / 2] / iters;
        printf("| %s | %.0f | %.0f | %.2f |\n", names[mode], c, model[mode], c / model[mode]);
    }
    return 0;
}
