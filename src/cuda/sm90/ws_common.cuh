// Pieces shared by the warp-specialised decode kernels (decode_v6_seesaw.cuh; the retired v5
// in bench/variants; bench/probes): the fp8 producer warpgroup's loads, conversion and
// stores, and a wgmma m64n64k16 wrapper.
#pragma once
#include "decode_v3_wgmma.cuh"
#include "wgmma_operands.cuh"

#include <stdint.h>

namespace mla_decode_ws {

using mla_decode_v1::Params;
using mla_decode_v1::Cursor;
using mla_decode_v1::Pref;
using mla_decode_v1::kDqk;
using mla_decode_v3::blk_off;
using mla_decode_v3::kBlk;

constexpr int kBN = 64;           // keys per block
constexpr int kMathThreads = 256; // warpgroups 0, 1; the producer is warpgroup 2

__device__ __forceinline__ void mbar_arrive(uint32_t bar)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ uint4 ld_stream(const uint8_t *src)
{
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(src));
    return v;
}
__device__ __forceinline__ void st_shared16(uint32_t addr, uint4 v)
{
    asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
                 : "memory");
}
__device__ __forceinline__ void prefetch_l2(const void *src, uint32_t bytes)
{
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(src), "r"(bytes) : "memory");
}

// Producer thread t owns key row r = t / 2 of every block and the 16-byte source chunks
// c = (t & 1) + 2i of that row (i = 0 .. kChunks-1): one row base per block, and every
// load and store address is that base plus a compile-time offset (no per-chunk address
// math, which made the first version of this producer issue 1250 instructions per warp per
// block and bound the kernel; ncu, bench/NOTES.md). In the fp16 tile, 16-bit chunk q of row
// r sits in column block q / 8 at position (q % 8) ^ (r % 8): for the two stores of source
// chunk c (16-bit chunks 2c, 2c+1) that is column block i / 2 and a position that depends
// only on (i odd, t odd, r % 8), so four base addresses cover all 2 x kChunks stores; across
// a warp (16 rows x 2 threads) every store instruction hits all eight 16-byte bank positions.
namespace src {
constexpr int kRow = kDqk;           // source bytes per key row (fp8)
constexpr int kChunks = kRow / 32;   // 16-byte chunks per thread
static_assert(kChunks == 18, "produce() issues chunks 0..17");
} // namespace src

// Where producer thread t's row of one block comes from.
struct SrcRow {
    const uint8_t *src; // chunk 0 of this thread (row base + 16 (t & 1)); valid rows only
    bool valid;         // below seq_len and on a valid page
    int ok;             // valid pages of the block (bit k: page k)
};

__device__ __forceinline__ SrcRow source_row(const Params &p, const Cursor &c, const Pref &f, int t, bool report)
{
    SrcRow sr;
    const int key0 = c.blk * kBN, r = t >> 1;
    sr.ok = mla_decode_v1::block_page_mask<kBN>(p, key0, f, report);
    const int pg = r >> p.page_shift; // 0, or 1 for the second 32-key page
    sr.valid = key0 + r < f.seq && ((sr.ok >> pg) & 1);
    const int idx = sr.valid ? (pg ? f.idx1 : f.idx0) : 0;
    sr.src = p.kv + ((size_t)idx * p.page_size + (r & (p.page_size - 1))) * src::kRow + (t & 1) * 16;
    return sr;
}

// Loads chunks [I0, I0 + N) of this thread's row into d.
template <int I0, int N> __device__ __forceinline__ void load_chunks(const SrcRow &sr, uint4 (&d)[N])
{
#pragma unroll
    for (int k = 0; k < N; k++) {
        d[k] = make_uint4(0, 0, 0, 0); // rows past seq_len / on bad pages: zeros, never read
        if (sr.valid) d[k] = ld_stream(sr.src + 32 * (I0 + k));
    }
}

// Two e4m3 pairs of one 32-bit word to two f16x2 words (exact); the halves are split in PTX
// so that ptxas can feed them to the conversion without separate shifts.
__device__ __forceinline__ void e4m3x4_to_f16x4(uint32_t w, uint32_t &lo, uint32_t &hi)
{
    asm("{\n.reg .b16 l, h;\nmov.b32 {l, h}, %2;\ncvt.rn.f16x2.e4m3x2 %0, l;\ncvt.rn.f16x2.e4m3x2 %1, h;\n}\n"
        : "=r"(lo), "=r"(hi)
        : "r"(w));
}

// bases[x]: tile address of 16-bit chunk 2c + (x & 1) for chunks c with i % 2 == x >> 1,
// minus the column block (added as the compile-time offset (i / 2) * kBlk).
template <int I0, int N> __device__ __forceinline__ void store_chunks(const uint4 (&d)[N], const uint32_t (&bases)[4])
{
#pragma unroll
    for (int k = 0; k < N; k++) {
        const int i = I0 + k;
        uint32_t h[8];
        e4m3x4_to_f16x4(d[k].x, h[0], h[1]);
        e4m3x4_to_f16x4(d[k].y, h[2], h[3]);
        e4m3x4_to_f16x4(d[k].z, h[4], h[5]);
        e4m3x4_to_f16x4(d[k].w, h[6], h[7]);
        st_shared16(bases[2 * (i & 1)] + (i >> 1) * kBlk, make_uint4(h[0], h[1], h[2], h[3]));
        st_shared16(bases[2 * (i & 1) + 1] + (i >> 1) * kBlk, make_uint4(h[4], h[5], h[6], h[7]));
    }
}

// D(64x64) += A(64x16) * B(16x64), both K-major in shared memory (128-byte swizzle), f16
// (or bf16: wgmma_m64n64k16_bf16).
#define MLA_WGMMA_M64N64K16(NAME, TYPES)                                                    \
    __device__ __forceinline__ void NAME(float (&d)[32], uint64_t da, uint64_t db, int acc) \
    {                                                                                       \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                           \
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPES " "                \
                     MLA_WG_REGS32 ", %32, %33, p, 1, 1, 0, 0;\n}\n"                        \
                     : MLA_WG_ACC32(d)                                                      \
                     : "l"(da), "l"(db), "r"(acc));                                         \
    }
MLA_WGMMA_M64N64K16(wgmma_m64n64k16_f16, "f16.f16")
MLA_WGMMA_M64N64K16(wgmma_m64n64k16_bf16, "bf16.bf16")
#undef MLA_WGMMA_M64N64K16

} // namespace mla_decode_ws
