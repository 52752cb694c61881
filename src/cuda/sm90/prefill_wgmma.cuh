// wgmma wrappers for the sm90 prefill kernel, and the fence, commit, wait and descriptor helpers
// the decode kernels share. Every wrapper issues one warpgroup-wide async MMA with a 64x128 fp32
// accumulator held as 64 registers per thread (accumulator layout of wgmma m64n128; operand
// lists from wgmma_operands.cuh). Callers fence, commit and wait.
#pragma once
#include "wgmma_operands.cuh"
#include <stdint.h>

namespace mla_sm90 {

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" :: "n"(N) : "memory"); }

// Keeps the compiler from moving accumulator reads/writes across an async MMA.
__device__ __forceinline__ void reg_fence(float (&d)[64])
{
#pragma unroll
    for (int i = 0; i < 64; i++) asm volatile("" : "+f"(d[i])::"memory");
}

// Shared-memory matrix descriptor: start address, leading/stride byte offsets, swizzle mode
// (1 = 128-byte, 2 = 64-byte). Tiles are aligned to their swizzle atom so base_offset is 0.
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr, uint32_t lbo, uint32_t sbo, uint32_t swizzle)
{
    return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)(lbo >> 4) << 16) |
           ((uint64_t)(sbo >> 4) << 32) | ((uint64_t)swizzle << 62);
}

// D(64x128) += A(64x16, smem K-major) * B(16x128, smem K-major), bf16 in, fp32 accumulate.
__device__ __forceinline__ void wgmma_bf16_ss(float (&d)[64], uint64_t da, uint64_t db, int accumulate)
{
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        MLA_WG_REGS64 ", %64, %65, p, 1, 1, 0, 0;\n}\n"
        : MLA_WG_ACC64(d)
        : "l"(da), "l"(db), "r"(accumulate));
}

// D(64x128) += A(64x16, registers) * B(16x128, smem N-major: imm-trans-b = 1).
__device__ __forceinline__ void wgmma_bf16_rs_tb(float (&d)[64], const uint32_t (&a)[4], uint64_t db, int accumulate)
{
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        MLA_WG_REGS64 ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
        : MLA_WG_ACC64(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(accumulate));
}

// D(64x128) += A(64x32, smem K-major) * B(32x128, smem K-major), e4m3 in, fp32 accumulate.
__device__ __forceinline__ void wgmma_e4m3_ss(float (&d)[64], uint64_t da, uint64_t db, int accumulate)
{
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 "
        MLA_WG_REGS64 ", %64, %65, p, 1, 1;\n}\n"
        : MLA_WG_ACC64(d)
        : "l"(da), "l"(db), "r"(accumulate));
}

// D(64x128) += A(64x32, registers) * B(32x128, smem K-major); fp8 wgmma has no transpose.
__device__ __forceinline__ void wgmma_e4m3_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t db, int accumulate)
{
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 "
        MLA_WG_REGS64 ", {%64, %65, %66, %67}, %68, p, 1, 1;\n}\n"
        : MLA_WG_ACC64(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(accumulate));
}

}  // namespace mla_sm90
