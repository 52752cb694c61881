// Probe: per-SM rates of the instructions that make up the v2 decode kernel's inner loop
// (decode_v2_fp8reg.cuh), to split its measured cycles per key block into pipes. Each mode
// runs `iters` iterations of an unrolled, dependency-light body in every warp of `ctas` CTAs
// of `warps` warps per SM, and reports clock64 cycles per iteration (median CTA) and the
// resulting warp instructions per cycle per SM.
//   0: 8 x mma.sync m16n8k16 f16 -> f32 (8 independent accumulators)
//   1: 16 x cvt.rn.f16x2.e4m3x2
//   2: 8 x integer e4m3x4 -> f16x4 conversion (e4m3x4_to_f16x4_scaled: 2 pairs each)
//   3: v2's mix per 16 keys of one warp: 8 mma + 16 cvt (QK 36 mma / 72 cvt, P V 32 / 64 per
//      64 keys, i.e. ~2 cvt per mma)
//   4: as 3 with half of the cvt replaced by the integer conversion (MLA_DECODE_V2_CONV=kcvt)
//   5: 8 x mma.sync m16n8k32 e4m3 -> f32 (twice the k of mode 0 per instruction)
// Build and run on the device: nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a
//   -Isrc/cuda -Isrc/cuda/sm90 -Isrc/core -Iinclude --expt-relaxed-constexpr
//   bench/probes/v2_pipe_rates.cu -o build/v2_pipe_rates && build/v2_pipe_rates
#include "../../src/cuda/sm90/decode_v2_fp8reg.cuh"

#include <algorithm>
#include <cstdio>
#include <vector>

using namespace mla_decode_v1;
using mla_decode_v2::mma16832_e4m3;

// One integer e4m3x4 -> f16x4 conversion (two pairs) into words 2i, 2i + 1.
__device__ __forceinline__ void int_conv(uint32_t (&w)[16], int i, int it)
{
    uint32_t lo, hi;
    e4m3x4_to_f16x4_scaled(w[2 * i] ^ (uint32_t)it, lo, hi);
    w[2 * i] = lo;
    w[2 * i + 1] ^= hi;
}

template <int mode>
__global__ void probe(int iters, uint32_t seed, long long *cycles, float *sink)
{
    float acc[8][4];
#pragma unroll
    for (int i = 0; i < 8; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
    uint32_t a[4] = {seed, seed * 3u, seed * 5u, seed * 7u};
    uint32_t w[16];
#pragma unroll
    for (int i = 0; i < 16; i++) w[i] = seed * (2u * i + 11u) + threadIdx.x;
    uint32_t x = 0;
    __syncthreads();
    const long long t0 = clock64();
    for (int it = 0; it < iters; it++) {
        if constexpr (mode == 0 || mode == 3 || mode == 4) {
#pragma unroll
            for (int i = 0; i < 8; i++) mma16816<true>(acc[i], a, w[2 * i], w[2 * i + 1]);
        }
        if constexpr (mode == 5) {
#pragma unroll
            for (int i = 0; i < 8; i++) mma16832_e4m3(acc[i], a, w[2 * i], w[2 * i + 1]);
        }
        if constexpr (mode == 1 || mode == 3) {
#pragma unroll
            for (int i = 0; i < 16; i++) {
                w[i] = e4m3x2_to_f16x2((uint16_t)(w[i] >> 8)) ^ (uint32_t)it;
            }
        }
        if constexpr (mode == 2) {
#pragma unroll
            for (int i = 0; i < 8; i++) int_conv(w, i, it);
        }
        if constexpr (mode == 4) {
#pragma unroll
            for (int i = 0; i < 8; i++) w[i] = e4m3x2_to_f16x2((uint16_t)(w[i] >> 8)) ^ (uint32_t)it;
#pragma unroll
            for (int i = 4; i < 8; i++) int_conv(w, i, it);
        }
        // Pin this iteration's results in program order: the conversions are plain (not
        // volatile) code that the compiler may otherwise move across the clock reads. (This
        // alone did not fix the conversion-only modes' 0 cycles; the sink test below did.)
#pragma unroll
        for (int i = 0; i < 16; i++) asm volatile("" : "+r"(w[i]));
    }
    __syncthreads();
    const long long t1 = clock64();
#pragma unroll
    for (int i = 0; i < 16; i++) x ^= w[i];
    float s = (float)x;
#pragma unroll
    for (int i = 0; i < 8; i++) s += acc[i][0] + acc[i][1] + acc[i][2] + acc[i][3];
    // keeps the work alive (a test against a constant was folded away: s is integer-valued
    // in the conversion-only modes 1 and 2, so it could never equal 1234.5)
    if (__float_as_uint(s) == seed) sink[0] = s;
    if (threadIdx.x == 0) cycles[blockIdx.x] = t1 - t0;
}

template <int mode> void run(int warps, int ctas_per_sm, int sms, const char *name, double instr_per_iter)
{
    const int iters = 4096, grid = sms * ctas_per_sm;
    long long *d_cyc;
    float *d_sink;
    cudaMalloc(&d_cyc, sizeof(long long) * grid);
    cudaMalloc(&d_sink, sizeof(float));
    probe<mode><<<grid, 32 * warps>>>(16, 1u, d_cyc, d_sink); // warm-up
    probe<mode><<<grid, 32 * warps>>>(iters, 0x9e3779b9u, d_cyc, d_sink);
    cudaError_t e = cudaDeviceSynchronize();
    if (e != cudaSuccess) {
        printf("%s: %s\n", name, cudaGetErrorString(e));
        return;
    }
    std::vector<long long> h(grid);
    cudaMemcpy(h.data(), d_cyc, sizeof(long long) * grid, cudaMemcpyDeviceToHost);
    std::sort(h.begin(), h.end());
    const double c = (double)h[grid / 2] / iters;
    // warp instructions of this kind issued per cycle per SM
    const double rate = instr_per_iter * warps * ctas_per_sm / c;
    printf("| %-34s | %2d x %d | %8.1f | %6.3f |\n", name, ctas_per_sm, warps, c, rate);
    cudaFree(d_cyc);
    cudaFree(d_sink);
}

int main()
{
    int sms = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    printf("| mode | CTAs x warps per SM | cycles/iter | counted units (warp instr, or pairs for mode 2)/cycle/SM |\n|---|---|---|---|\n");
    for (int cw = 0; cw < 2; cw++) {
        const int ctas = cw ? 4 : 2; // v2 runs 2 CTAs of 4 warps per SM; 4 x 4 for headroom
        run<0>(4, ctas, sms, "mma m16n8k16 f16 (per mma)", 8);
        run<1>(4, ctas, sms, "cvt f16x2.e4m3x2 (per cvt)", 16);
        run<2>(4, ctas, sms, "int e4m3x4 conversion (per pair)", 16);
        run<3>(4, ctas, sms, "8 mma + 16 cvt (per mma)", 8);
        run<4>(4, ctas, sms, "8 mma + 8 cvt + 4 int (per mma)", 8);
        run<5>(4, ctas, sms, "mma m16n8k32 e4m3 (per mma)", 8);
    }
    return 0;
}
