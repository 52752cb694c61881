// Probe: how fast an SM turns e4m3 bytes into f16, by the hardware conversion
// (cvt.rn.f16x2.e4m3x2, SASS F2FP.F16.E4M3.UNPACK_B), by integer bit moves plus an exact HMUL2
// by 256 (decode_v1_mma.cuh's e4m3x4_to_f16x4_scaled, which gives x * 2^-8), and by the two
// mixed word by word. Question from v7's producer (bench/NOTES.md, sixteenth session): is its
// in-place conversion (144 F2FP per thread per block, ~770 ns) bound by the F2FP rate, and
// would splitting the words over the two paths convert faster?
// Every thread converts 8 independent words per trip (no dependence between trips except the
// input bump), 4 warps x 4 CTAs per SM; the SM clock of each CTA's thread 0 brackets the loop.
// Build and run on the device:
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a bench/probes/fp8_convert_rate.cu
//     -o build/fp8_convert_rate && build/fp8_convert_rate
#include <cuda_fp16.h>
#include <stdint.h>
#include <stdio.h>

__device__ __forceinline__ void conv_cvt(uint32_t w, uint32_t &lo, uint32_t &hi)
{
    asm("{\n.reg .b16 l, h;\nmov.b32 {l, h}, %2;\ncvt.rn.f16x2.e4m3x2 %0, l;\ncvt.rn.f16x2.e4m3x2 %1, h;\n}\n"
        : "=r"(lo), "=r"(hi)
        : "r"(w));
}

// Bit moves: f16 bits of x * 2^-8, then x 256 (a power of two: exact). NaN is not kept.
__device__ __forceinline__ void conv_alu(uint32_t w, uint32_t &lo, uint32_t &hi)
{
    const uint32_t m = w & 0x7f7f7f7fu, s = w & 0x80808080u;
    uint32_t l = __byte_perm(m, 0u, 0x4140) * 128u + __byte_perm(s, 0u, 0x1404);
    uint32_t h = __byte_perm(m, 0u, 0x4342) * 128u + __byte_perm(s, 0u, 0x3424);
    const __half2 k = __half2half2(__ushort_as_half((unsigned short)0x5C00)); // 256
    __half2 a = __hmul2(*reinterpret_cast<__half2 *>(&l), k), b = __hmul2(*reinterpret_cast<__half2 *>(&h), k);
    lo = *reinterpret_cast<uint32_t *>(&a);
    hi = *reinterpret_cast<uint32_t *>(&b);
}

// kMode 0: every word by cvt; 1: every word by bit moves; 2: odd words by bit moves; 3: one
// word in four by bit moves.
template <int kMode> __global__ void convert_loop(uint32_t seed, int trips, uint32_t *out, long long *cycles)
{
    uint32_t w[8];
#pragma unroll
    for (int j = 0; j < 8; j++) w[j] = seed + threadIdx.x * 8u + (uint32_t)j * 0x01020304u;
    uint32_t acc = 0;
    __syncthreads();
    const long long t0 = clock64();
    for (int i = 0; i < trips; i++) {
#pragma unroll
        for (int j = 0; j < 8; j++) {
            uint32_t lo, hi;
            const bool alu = kMode == 1 || (kMode == 2 && (j & 1)) || (kMode == 3 && (j & 3) == 3);
            if (alu) conv_alu(w[j], lo, hi);
            else conv_cvt(w[j], lo, hi);
            acc ^= lo ^ hi;
            w[j] += 0x01010101u;
        }
    }
    __syncthreads();
    const long long t1 = clock64();
    out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
    if (threadIdx.x == 0) cycles[blockIdx.x] = t1 - t0;
}

#define CK(x)                                                                                     \
    do {                                                                                          \
        cudaError_t e_ = (x);                                                                     \
        if (e_ != cudaSuccess) {                                                                  \
            fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_));                              \
            return 1;                                                                             \
        }                                                                                         \
    } while (0)

template <int kMode> static int run(const char *name, int sms, int per_sm, int threads, int trips)
{
    const int blocks = sms * per_sm;
    uint32_t *out;
    long long *cyc;
    CK(cudaMalloc(&out, sizeof(uint32_t) * blocks * threads));
    CK(cudaMalloc(&cyc, sizeof(long long) * blocks));
    convert_loop<kMode><<<blocks, threads>>>(1u, trips / 10, out, cyc); // warm-up
    convert_loop<kMode><<<blocks, threads>>>(7u, trips, out, cyc);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    long long *h = (long long *)malloc(sizeof(long long) * blocks);
    CK(cudaMemcpy(h, cyc, sizeof(long long) * blocks, cudaMemcpyDeviceToHost));
    double mean = 0;
    for (int b = 0; b < blocks; b++) mean += (double)h[b];
    mean /= blocks;
    // e4m3 bytes converted per SM per cycle (all CTAs of an SM run the loop at the same time)
    const double bytes_per_sm = (double)per_sm * threads * trips * 8 * 4;
    printf("| %s | %.0f | %.1f | %.0f |\n", name, mean, bytes_per_sm / mean, 36864.0 / (bytes_per_sm / mean));
    free(h);
    cudaFree(out);
    cudaFree(cyc);
    return 0;
}

int main()
{
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    const int sms = prop.multiProcessorCount, per_sm = 4, threads = 128, trips = 4096;
    printf("fp8_convert_rate: %s, %d SMs, %d CTAs x %d threads per SM, %d trips of 8 words\n\n", prop.name, sms,
           per_sm, threads, trips);
    printf("| path | SM cycles | e4m3 bytes per SM cycle | cycles per 36 KB block (v7's conversion) |\n");
    printf("|---|---|---|---|\n");
    if (run<0>("cvt (F2FP) only", sms, per_sm, threads, trips)) return 1;
    if (run<1>("bit moves + HMUL2 only", sms, per_sm, threads, trips)) return 1;
    if (run<2>("half and half", sms, per_sm, threads, trips)) return 1;
    if (run<3>("one word in four by bit moves", sms, per_sm, threads, trips)) return 1;
    return 0;
}
