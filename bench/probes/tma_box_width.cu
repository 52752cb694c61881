// Probe: how fast can one thread per CTA stream 36 KB key blocks (64 rows x 576 bytes) into a
// ring of shared-memory slots by TMA, as a function of the box shape? v10 loads each block as
// 18 boxes of 32 rows x 64 bytes (64-byte swizzle), v2 as 10 boxes of 32 rows x 128 bytes
// (+ the 64-byte rope column). The fifteenth session's v10 timeline showed the producer's TMA
// issue stalling ~1 us per block at 2.5 TB/s of L2-to-SM traffic; this separates the box shape
// from everything else (no math, no transposition: wait a slot, refill it).
// Build and run on the device:
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Isrc/cuda bench/probes/tma_box_width.cu
//     -o build/tma_box_width
//   build/tma_box_width [pages]
// Modes: 0 = 64 B x 32 rows (v10), 1 = 64 B x 64 rows, 2 = 128 B x 32 rows + rope (v2),
// 3 = 128 B x 64 rows + rope. "dup 2": CTA pairs read the same blocks (v10's two head halves).
#include <cuda.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "sm90/mbarrier.cuh"
#include "sm90/tensor_map.h"

constexpr int kRow = 576, kBlk = 64 * kRow; // one 64-key block: 36864 bytes

struct Maps {
    CUtensorMap m64x32, m64x64, m128x32, m128x64;
};

__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

// Block j of sequence k: a page index spread over the buffer (odd multiplier: a bijection mod 2^n).
__device__ __forceinline__ uint32_t page_of(uint32_t k, uint32_t j, uint32_t nseq, uint32_t pages)
{
    return ((k + j * nseq) * 2654435761u) & (pages - 1);
}

__device__ __forceinline__ void issue_block(const Maps &m, int mode, uint32_t slot, uint32_t bar, int row0)
{
    using mla_sm90::tma_load_2d;
    mla_sm90::mbar_arrive_expect_tx(bar, kBlk);
    switch (mode) {
    case 0:
        for (int cb = 0; cb < 9; cb++)
            for (int h = 0; h < 2; h++) tma_load_2d(slot + cb * 4096 + h * 2048, &m.m64x32, 64 * cb, row0 + 32 * h, bar);
        break;
    case 1:
        for (int cb = 0; cb < 9; cb++) tma_load_2d(slot + cb * 4096, &m.m64x64, 64 * cb, row0, bar);
        break;
    case 2:
        for (int h = 0; h < 2; h++) {
            for (int c = 0; c < 4; c++) tma_load_2d(slot + c * 8192 + h * 4096, &m.m128x32, 128 * c, row0 + 32 * h, bar);
            tma_load_2d(slot + 32768 + h * 2048, &m.m64x32, 512, row0 + 32 * h, bar);
        }
        break;
    default:
        for (int c = 0; c < 4; c++) tma_load_2d(slot + c * 8192, &m.m128x64, 128 * c, row0, bar);
        tma_load_2d(slot + 32768, &m.m64x64, 512, row0, bar);
        break;
    }
}

__global__ void stream_kernel(const __grid_constant__ Maps m, int mode, int slots, int nb, int dup, uint32_t pages,
                              unsigned long long *sink, unsigned long long *issue_cycles)
{
    extern __shared__ uint8_t raw[];
    __shared__ __align__(8) uint64_t bars[8];
    const uint32_t base = (smem_u32(raw) + 1023u) & ~1023u;
    if (threadIdx.x != 0) return;
    for (int s = 0; s < slots; s++) mla_sm90::mbar_init(smem_u32(&bars[s]), 1);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    const uint32_t nseq = gridDim.x / dup, k = blockIdx.x / dup;
    for (int j = 0; j < slots && j < nb; j++)
        issue_block(m, mode, base + j * kBlk, smem_u32(&bars[j]), (int)page_of(k, j, nseq, pages) * 64);
    unsigned long long acc = 0, cyc = 0;
    for (int j = 0; j < nb; j++) {
        const int s = j % slots;
        mla_sm90::mbar_wait(smem_u32(&bars[s]), (uint32_t)((j / slots) & 1));
        acc += *(volatile uint8_t *)(raw + (base - smem_u32(raw)) + s * kBlk + (j & 1023));
        if (j + slots < nb) {
            const long long c0 = clock64();
            issue_block(m, mode, base + s * kBlk, smem_u32(&bars[s]),
                        (int)page_of(k, j + slots, nseq, pages) * 64);
            cyc += (unsigned long long)(clock64() - c0);
        }
    }
    if (acc == 0x123456789ull) *sink = acc;
    atomicAdd(issue_cycles, cyc);
}

static bool encode(CUtensorMap *map, void *base, uint64_t rows, uint32_t bw, uint32_t bh, CUtensorMapSwizzle sw)
{
    const cuuint64_t dims[2] = {(cuuint64_t)kRow, rows};
    const cuuint64_t strides[1] = {(cuuint64_t)kRow};
    const cuuint32_t box[2] = {bw, bh}, es[2] = {1, 1};
    return mla_tensor_map_encoder()(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, base, dims, strides, box, es,
                                    CU_TENSOR_MAP_INTERLEAVE_NONE, sw, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                    CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

int main(int argc, char **argv)
{
    cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    // 2^16 pages: 2.4 GB, streamed from DRAM; a small power of two (e.g. 256: 9.4 MB) stays in L2
    // and shows the TMA path's own ceiling.
    const uint32_t pages = argc > 1 ? (uint32_t)atoi(argv[1]) : 1u << 16;
    if (pages < 64 || (pages & (pages - 1)) || pages > (1u << 16)) {
        fprintf(stderr, "usage: tma_box_width [pages: a power of two, 64..65536]\n");
        return 2;
    }
    void *buf;
    if (cudaMalloc(&buf, (size_t)pages * kBlk) != cudaSuccess) return 1;
    cudaMemset(buf, 0x3c, (size_t)pages * kBlk);
    unsigned long long *sink, *issue_cycles;
    cudaMalloc(&sink, 8);
    cudaMalloc(&issue_cycles, 8);
    Maps m;
    const uint64_t rows = (uint64_t)pages * 64;
    if (!mla_tensor_map_encoder() || !encode(&m.m64x32, buf, rows, 64, 32, CU_TENSOR_MAP_SWIZZLE_64B) ||
        !encode(&m.m64x64, buf, rows, 64, 64, CU_TENSOR_MAP_SWIZZLE_64B) ||
        !encode(&m.m128x32, buf, rows, 128, 32, CU_TENSOR_MAP_SWIZZLE_128B) ||
        !encode(&m.m128x64, buf, rows, 128, 64, CU_TENSOR_MAP_SWIZZLE_128B)) {
        fprintf(stderr, "tensor map encode failed\n");
        return 1;
    }
    // Copy bandwidth for reference (read + write), same buffer halves.
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    const size_t half = (size_t)pages * kBlk / 2;
    float best_copy = 1e9f;
    for (int r = 0; r < 5; r++) {
        cudaEventRecord(e0);
        cudaMemcpyAsync(buf, (uint8_t *)buf + half, half, cudaMemcpyDeviceToDevice);
        cudaEventRecord(e1);
        cudaEventSynchronize(e1);
        float ms;
        cudaEventElapsedTime(&ms, e0, e1);
        if (ms < best_copy) best_copy = ms;
    }
    printf("%s, %d SMs; copy %.0f GB/s (read + write); %u pages of 36 KB\n", prop.name, prop.multiProcessorCount,
           2.0 * half / best_copy / 1e6, pages);
    printf("| mode | CTAs/SM | slots | dup | blocks/CTA | us | GB/s into SMs | GB/s unique | %% of copy (unique) | issue, cycles per block |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|\n");
    static const char *names[] = {"64Bx32", "64Bx64", "128Bx32", "128Bx64"};
    const int cfgs[][3] = {{1, 3, 1}, {1, 3, 2}, {2, 3, 1}, {1, 2, 1}, {1, 4, 1}};
    for (const auto &cf : cfgs)
        for (int mode = 0; mode < 4; mode++) {
            const int per_sm = cf[0], slots = cf[1], dup = cf[2];
            const int grid = prop.multiProcessorCount * per_sm, nb = 512 / per_sm;
            const int smem = slots * kBlk + 1024;
            cudaFuncSetAttribute(stream_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
            float t[7];
            cudaMemset(issue_cycles, 0, 8);
            for (int r = 0; r < 7; r++) {
                cudaEventRecord(e0);
                stream_kernel<<<grid, 32, smem>>>(m, mode, slots, nb, dup, pages, sink, issue_cycles);
                cudaEventRecord(e1);
                cudaEventSynchronize(e1);
                cudaEventElapsedTime(&t[r], e0, e1);
            }
            if (cudaGetLastError() != cudaSuccess) {
                printf("launch failed: %s\n", cudaGetErrorString(cudaGetLastError()));
                return 1;
            }
            for (int i = 1; i < 7; i++)
                for (int j = i; j > 0 && t[j] < t[j - 1]; j--) {
                    const float x = t[j];
                    t[j] = t[j - 1];
                    t[j - 1] = x;
                }
            unsigned long long cyc = 0;
            cudaMemcpy(&cyc, issue_cycles, 8, cudaMemcpyDeviceToHost);
            const double ms = t[3], bytes = (double)grid * nb * kBlk;
            printf("| %s | %d | %d | %d | %d | %.1f | %.0f | %.0f | %.1f%% | %.0f |\n", names[mode], per_sm, slots, dup,
                   nb, ms * 1e3, bytes / ms / 1e6, bytes / dup / ms / 1e6,
                   100.0 * (bytes / dup / ms) / (2.0 * half / best_copy), (double)cyc / (7.0 * grid * (nb - slots)));
        }
    return 0;
}
