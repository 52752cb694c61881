// Exhaustive GPU/CPU conversion check (device machine): every float32 bit pattern through
// Hopper's cvt instructions (fp8 e4m3 satfinite, bf16, fp16) against the library's CPU
// conversions (src/core/convert.c), and all 256 fp8 codes back to float. Prints the mismatch
// counts and "N passed, N failed" (one check per conversion); exit status 1 on any mismatch.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "mla.h"

__global__ void convert_all(uint32_t base, uint8_t *f8, uint16_t *bf, uint16_t *hf, uint32_t n)
{
    uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = __uint_as_float(base + i);
    uint16_t pair, b, h;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(pair) : "f"(x), "f"(x));
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(b) : "f"(x));
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
    f8[i] = (uint8_t)(pair & 0xff);
    bf[i] = b;
    hf[i] = h;
}

__global__ void fp8_codes_to_float(float *out)
{
    int v = threadIdx.x;
    uint16_t codes = (uint16_t)(v | (v << 8));
    uint32_t halves;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(halves) : "h"(codes));
    out[v] = __half2float(__ushort_as_half((unsigned short)(halves & 0xffff)));
}

#define CUDA_OK(call)                                                                  \
    do {                                                                               \
        cudaError_t e_ = (call);                                                       \
        if (e_ != cudaSuccess) {                                                       \
            printf("%s: %s\n", #call, cudaGetErrorString(e_));                         \
            printf("0 passed, 1 failed\n");                                            \
            return 1;                                                                  \
        }                                                                              \
    } while (0)

int main()
{
    const uint32_t chunk = 1u << 28;
    uint8_t *d_f8, *h_f8;
    uint16_t *d_bf, *h_bf, *d_hf, *h_hf;
    CUDA_OK(cudaMalloc(&d_f8, chunk));
    CUDA_OK(cudaMalloc(&d_bf, 2ull * chunk));
    CUDA_OK(cudaMalloc(&d_hf, 2ull * chunk));
    CUDA_OK(cudaMallocHost(&h_f8, chunk));
    CUDA_OK(cudaMallocHost(&h_bf, 2ull * chunk));
    CUDA_OK(cudaMallocHost(&h_hf, 2ull * chunk));
    unsigned long long bad_f8 = 0, bad_bf = 0, bad_hf = 0;
    for (uint64_t base = 0; base < (1ull << 32); base += chunk) {
        convert_all<<<chunk / 256, 256>>>((uint32_t)base, d_f8, d_bf, d_hf, chunk);
        CUDA_OK(cudaGetLastError());
        CUDA_OK(cudaMemcpy(h_f8, d_f8, chunk, cudaMemcpyDeviceToHost));
        CUDA_OK(cudaMemcpy(h_bf, d_bf, 2ull * chunk, cudaMemcpyDeviceToHost));
        CUDA_OK(cudaMemcpy(h_hf, d_hf, 2ull * chunk, cudaMemcpyDeviceToHost));
#pragma omp parallel for reduction(+ : bad_f8, bad_bf, bad_hf) schedule(static)
        for (int64_t i = 0; i < (int64_t)chunk; i++) {
            uint32_t u = (uint32_t)(base + i);
            float x;
            memcpy(&x, &u, 4);
            bad_f8 += mla_float_to_fp8_e4m3(x) != h_f8[i];
            bad_bf += mla_float_to_bf16(x) != h_bf[i];
            bad_hf += mla_float_to_fp16(x) != h_hf[i];
        }
    }
    float *d_back, h_back[256];
    CUDA_OK(cudaMalloc(&d_back, sizeof h_back));
    fp8_codes_to_float<<<1, 256>>>(d_back);
    CUDA_OK(cudaMemcpy(h_back, d_back, sizeof h_back, cudaMemcpyDeviceToHost));
    int bad_back = 0;
    for (int v = 0; v < 256; v++) {
        float c = mla_fp8_e4m3_to_float((uint8_t)v);
        int both_nan = c != c && h_back[v] != h_back[v];
        if (!both_nan && memcmp(&c, &h_back[v], 4) != 0) bad_back++;
    }
    printf("float->fp8 e4m3 mismatches over 2^32 inputs: %llu\n", bad_f8);
    printf("float->bf16 mismatches over 2^32 inputs: %llu\n", bad_bf);
    printf("float->fp16 mismatches over 2^32 inputs: %llu\n", bad_hf);
    printf("fp8->float mismatches over 256 codes: %d\n", bad_back);
    int failed = (bad_f8 != 0) + (bad_bf != 0) + (bad_hf != 0) + (bad_back != 0);
    printf("%d passed, %d failed\n", 4 - failed, failed);
    return failed ? 1 : 0;
}
