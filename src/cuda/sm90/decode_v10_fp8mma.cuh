// Split-KV MLA decode, version 10: the seesaw of decode_v6_seesaw.cuh with fp8 tensor-core
// math for S and for P V (fp8 query and fp8 cache, H * q_len >= 64; opt-in through
// mla_config.decode_fp8_math or MLA_DECODE_VARIANT=v10, because P in e4m3 costs accuracy,
// below).
//
// Why: v7 (the fp8 default) converts every block to fp16 in shared memory (36 KB read, 72 KB
// written) and runs f16 MMAs; the conversion's shared traffic and the f16 tensor rate hold it
// at 422-446 TFLOP/s (bench/NOTES.md). e4m3 wgmma runs at twice the f16 rate and reads half
// the operand bytes, but has no transposed operands: both must be K-major.
//   S = Q K^T: A = Q (rows x dims), B = K (keys x dims): both K-major as the cache stores them,
//     so S reads the raw fp8 block as TMA lands it (boxes of 64 dims x 64 keys, or x 32 keys
//     per page at page 32, 64-byte swizzle).
//   O += P V: A = P (rows x keys), B = V^T must be (dims x keys) with keys contiguous: the
//     producer warpgroup transposes the block's first 512 columns into a V^T tile (32 KB read,
//     32 KB written, ldmatrix + byte permutes + stmatrix.trans) while the math warpgroups run S.
//   P is rounded to e4m3 as P * 256 (P <= 1, so the largest value is 256 < 448 and values down
//     to 2^-17 stay representable); the row sums use the unrounded P; the output divides the
//     factor out (the row sums are passed as 256 L, the running max as m - 8).
// Accuracy: P in e4m3 has 3 mantissa bits. tests/gpu/test_gpu_decode.c bounds the error by
// the float64 oracle's own error with P rounded the same way (the "fp8-quantized reference
// path"); the kernel matches that path's error to ~1% of itself, which is up to 2.5e-2
// relative L2 for 32k-key rows (v7, fp16 P: within 1e-2). Measured (H200, bench/RESULTS.md,
// 2026-12-04, thirteenth session): 1.26-1.37x faster than v7 on the same fp8-query inputs,
// 591-624 TFLOP/s at B128 H128 8k-16k, 497 at B64 4k; with the transposition skipped (wrong
// results, a bound; measured with the byte-permute transposer's build) 673-713. Fifteenth
// session, with the K boxes issued by the four producer warps (issue_k_warp): 601 TFLOP/s at
// B64 4k, 626 at B128 4k, 680 at 8k, 667-696 at 16k, 704 at B64 16k (1.5-1.6x v7).
//
// Shared memory: Q (fp8, 9 column blocks of 64 dims x 64 rows, 64-byte swizzle) | a ring of
// three K slots (block i in slot i % 3, the layout of Q with keys for rows) | two tiles of
// V^T (512 rows of 64 keys) + P (64 rows of 64 keys), both 64-byte swizzle. Hand-offs
// (mbarriers): kfull[slot][cb] (TMA bytes of column block cb), kempty[slot][w] (S of the
// block's warpgroup and producer warp w's transposition are done with the slot's column blocks
// that warp w reloads), vfull[tile] (V^T written), vempty
// [tile][wg] (warpgroup wg done with the tile's V^T and P). The K loads run two blocks ahead
// of the transposition, independently of the tiles: with K inside the two tiles (the first
// form) each load waited for the previous transposition of its tile, 0.648 ms at B128 H128
// 8k against 0.560 with the ring.
#pragma once
#include "decode_v6_seesaw.cuh"
#include "wgmma_operands.cuh"

#include <stdint.h>

namespace mla_decode_v10 {

using namespace mla_decode_ws;
using mla_decode_v1::Params;
using mla_decode_v1::Cursor;
using mla_decode_v1::Pref;
using mla_decode_v1::kDqk;

constexpr int kM = 64;
constexpr int kNT = 384;
constexpr int kCb = kDqk / 64;       // column blocks of 64 dims
constexpr int kCbBytes = 64 * 64;    // one fp8 column block of 64 rows (4 KB)
constexpr int kKBytes = kCb * kCbBytes;  // one K slot: 64 keys x 576 dims (36864)
constexpr int kSlots = 3;                // K ring: block i in slot i % 3
constexpr int kOffVt = 0;                // within a tile: V^T (512 x 64 keys) | P (64 x 64 keys)
constexpr int kOffP = kOffVt + 512 * 64; // 32768
constexpr int kTile = kOffP + kM * 64;   // 36864
constexpr int kBarMath = 1, kBarA = 2, kBarB = 3, kBarWg = 4;
// Registers after setmaxnreg (88 + 2 x 208 = 3 x 168, the launch allocation): no spills
// (72 / 216 spilled 60 bytes in the transposer).
constexpr int kRegProducer = 88, kRegMath = 208;
constexpr float kPScale = 256.f, kPScaleLog2 = 8.f;
// -DMLA_V10_VFULL_HALVES: V^T handed over per half (vfull[tile][half], warpgroup h waits for
// half h only) instead of whole; measurement switch, see produce().
#ifdef MLA_V10_VFULL_HALVES
constexpr int kVFullPerTile = 2;
#else
constexpr int kVFullPerTile = 1;
#endif

struct Cfg {
    static constexpr int offQ = 0;
    static constexpr int offK = offQ + kKBytes;
    static constexpr int offTile = offK + kSlots * kKBytes;
    static constexpr int offPair = offTile + 2 * kTile;
    static constexpr int offRedSum = offPair + 4 * kM * 4;
    static constexpr int offFlags = offRedSum + 2 * kM * 4;
    // per producer warp and K slot: which keys hold data (Rows10::valid)
    static constexpr int offValid = offFlags + 16;
    static constexpr int offBar = offValid + 8 * 4 * kSlots;
    static constexpr int kBars = kSlots * kCb + 4 * kSlots + 2 * kVFullPerTile + 4;
    static constexpr int kSmem = offBar + 8 * kBars + 1024;
    static_assert(offTile % 1024 == 0 && kTile % 1024 == 0, "swizzle atoms");
    static_assert(kSmem <= 227 * 1024, "shared memory");
};

// Barrier addresses (8 bytes each) from the barrier base: kfull[slot][cb], kempty[slot][warp],
// vfull[tile] (or vfull[tile][half]), vempty[tile][warpgroup].
constexpr int kBarKEmpty = kSlots * kCb, kBarVFull = kBarKEmpty + 4 * kSlots;
constexpr int kBarVEmpty = kBarVFull + 2 * kVFullPerTile;
__device__ __forceinline__ uint32_t kfull_bar(uint32_t b, int s, int cb) { return b + 8u * (uint32_t)(s * kCb + cb); }
// kempty[slot][w]: producer warp w may refill its column blocks of the slot (S's warpgroup and
// warp w's transposition are done with them).
__device__ __forceinline__ uint32_t kempty_bar(uint32_t b, int s, int w)
{
    return b + 8u * (uint32_t)(kBarKEmpty + 4 * s + w);
}
__device__ __forceinline__ uint32_t vfull_bar(uint32_t b, int T, int h)
{
    return b + 8u * (uint32_t)(kBarVFull + T * kVFullPerTile + (kVFullPerTile == 2 ? h : 0));
}
__device__ __forceinline__ uint32_t vempty_bar(uint32_t b, int T, int wg)
{
    return b + 8u * (uint32_t)(kBarVEmpty + 2 * wg + T);
}


// Byte offset of (row r, byte col c) in a 64-byte-swizzled region of 64-byte rows.
__device__ __forceinline__ uint32_t sw64(int r, int c)
{
    return (uint32_t)(r * 64 + ((((c >> 4) ^ (r >> 1)) & 3) << 4) + (c & 15));
}

__device__ __forceinline__ uint64_t desc64(uint32_t addr)
{
    return mla_decode_v3::opaque_desc(mla_sm90::smem_desc(addr, 16, 512, 2));
}

// A value the compiler cannot treat as loop-invariant: address arithmetic derived from it is
// redone where it is used instead of being hoisted out of the block loop into (spilled)
// registers.
__device__ __forceinline__ uint32_t opaque_u32(uint32_t v)
{
    uint32_t r;
    asm volatile("mov.b32 %0, %1;\n" : "=r"(r) : "r"(v));
    return r;
}

__device__ __forceinline__ uint32_t ld_shared32(uint32_t addr)
{
    uint32_t v;
    asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(addr) : "memory");
    return v;
}
__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel)
{
    uint32_t d;
    asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
    return d;
}
// Two floats to two e4m3 bytes (lo at the lower address), round to nearest, saturating.
__device__ __forceinline__ uint16_t pack_e4m3x2(float lo, float hi)
{
    uint16_t d;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(d) : "f"(hi), "f"(lo));
    return d;
}

// D(64x64) += A(64x32) * B(32x64), e4m3, both K-major in shared memory.
__device__ __forceinline__ void wgmma_m64n64k32_e4m3(float (&d)[32], uint64_t da, uint64_t db, int acc)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 "
                 MLA_WG_REGS32 ", %32, %33, p, 1, 1;\n}\n"
                 : MLA_WG_ACC32(d)
                 : "l"(da), "l"(db), "r"(acc));
}

// D(64x256) += A(64x32) * B(32x256), e4m3, both K-major in shared memory.
__device__ __forceinline__ void wgmma_m64n256k32_e4m3(float (&d)[128], uint64_t da, uint64_t db, int acc)
{
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k32.f32.e4m3.e4m3 "
        MLA_WG_REGS128 ", %128, %129, p, 1, 1;\n}\n"
        : MLA_WG_ACC128(d)
        : "l"(da), "l"(db), "r"(acc));
}

// Q rows [64 hb, +64) of request b (fp8 query) into the K-region layout; rows past the
// request's rows are zero. 64 x 36 chunks of 16 bytes over 256 threads.
__device__ __forceinline__ void load_q8(const Params &p, int b, int hb, uint8_t *sQ)
{
    constexpr int kChunks = kM * 36, kIt = kChunks / kMathThreads;
    const uint8_t *q = (const uint8_t *)p.q;
    const int tid = (int)opaque_u32(threadIdx.x); // offsets recomputed per request, not kept live
    uint4 x[kIt];
#pragma unroll
    for (int i = 0; i < kIt; i++) {
        const int c = tid + kMathThreads * i, r = c / 36, ch = c % 36;
        const int gr = hb * kM + r;
        x[i] = make_uint4(0, 0, 0, 0);
        if (gr < p.rows) x[i] = __ldg(reinterpret_cast<const uint4 *>(q + ((size_t)b * p.rows + gr) * kDqk + ch * 16));
    }
#pragma unroll
    for (int i = 0; i < kIt; i++) {
        const int c = tid + kMathThreads * i, r = c / 36, ch = c % 36;
        *reinterpret_cast<uint4 *>(sQ + (ch >> 2) * kCbBytes + sw64(r, (ch & 3) * 16)) = x[i];
    }
}

// ---------------------------------------------------------------- producer (warpgroup 2)

// A block's cache rows for TMA and which of its keys hold data; lane 0 of each producer warp
// (thread 0 reports bad pages). The rows and byte count are v9's tma_rows
// (decode_v6_seesaw.cuh) for fp8 columns: kept as written and measured rather than rebuilt on
// tma_rows after the device time was spent.
struct Rows10 {
    int row[2];     // first cache row of each 32-key half, -1: not loaded
    uint32_t bytes; // per column block
    int ok;         // block_page_mask
    uint64_t valid; // bit k: key k is below seq_len and on a valid page
};

__device__ __forceinline__ Rows10 rows10(const Params &p, const Cursor &c, const Pref &f, bool report)
{
    Rows10 r;
    const int key0 = c.blk * kBN;
    r.ok = mla_decode_v1::block_page_mask<kBN>(p, key0, f, report);
    const bool two_pages = kBN > p.page_size;
    r.bytes = 0;
    r.valid = 0;
    const int nk = min(max(f.seq - key0, 0), kBN);
    const uint64_t below = nk >= 64 ? ~0ull : ((1ull << nk) - 1ull);
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const bool ok = ((r.ok >> (two_pages ? h : 0)) & 1) && key0 + 32 * h < f.seq;
        const int idx = two_pages && h ? f.idx1 : f.idx0;
        r.row[h] = ok ? idx * p.page_size + (two_pages ? 0 : (key0 & (p.page_size - 1)) + 32 * h) : -1;
        r.bytes += ok ? 32u * 64u : 0u;
        if (ok) r.valid |= 0xffffffffull << (32 * h);
    }
    r.valid &= below;
    return r;
}

// Lane 0 of producer warp w: the column blocks of K slot s (at aS) that warp w transposes
// (w and w + 4; warp 3 also the rope block 8, which only S reads), one barrier per column
// block. A TMA instruction costs its thread ~50-100 cycles whatever the box size
// (bench/probes/tma_box_width.cu: 18 boxes of 32 rows took 827 cycles, 9 of 64 rows 462, on
// an otherwise idle SM; 989 ns per block inside v10), so a block whose two halves are adjacent
// cache rows (page 64, or two adjacent pages of 32) goes as one 64-row box per column block
// (Params::kv_tma[0]), and the boxes are spread over the four warps: with thread 0 issuing
// all 18 for every block, warp 0's transposition waited ~1 us per block behind them and the
// math warpgroups waited for V^T (fifteenth session's timeline).
__device__ __forceinline__ void issue_k_warp(const Params &p, const Rows10 &r, uint32_t aS, uint32_t aBar, int s,
                                             int w)
{
    mla_decode_v3::fence_proxy_async();
    const bool one_box = r.row[0] >= 0 && r.row[1] == r.row[0] + 32;
#pragma unroll
    for (int i = 0; i < 3; i++) {
        const int cb = i == 2 ? 8 : w + 4 * i;
        if (i == 2 && w != 3) break;
        const uint32_t bar = kfull_bar(aBar, s, cb), dst = aS + (uint32_t)(cb * kCbBytes);
        mla_sm90::mbar_arrive_expect_tx(bar, r.bytes);
        if (one_box) {
            mla_sm90::tma_load_2d(dst, &p.kv_tma[0], 64 * cb, r.row[0], bar);
        } else {
#pragma unroll
            for (int h = 0; h < 2; h++)
                if (r.row[h] >= 0)
                    mla_sm90::tma_load_2d(dst + (uint32_t)(h * 32 * 64), &p.kv_tma[1], 64 * cb, r.row[h], bar);
        }
    }
}

// Half h of V^T (dims 256 h .. 256 h + 255) of tile aT from K slot aS, keys outside `valid`
// as zeros. Thread t of the producer warpgroup: warp w takes column block cb = w + 4 h; lane
// = (d4 << 2) | kg: 16 keys kg*16.. x 4 dims per unit, 2 units (the block's two 32-byte
// halves). Bank conflicts are avoided three ways, all undone without moving data: odd key
// groups read their rows pairwise swapped (j ^ 1: the other 64-byte half of the banks; undone
// by the first byte-permute selectors), key groups 2 and 3 take the two units in the other
// order (the other 32 bytes of the row), and odd d4 store their dims pairwise swapped (undone
// by the second selectors). Every load address is one XOR of a per-unit register with a
// constant (the row and swizzle bits, 4..9, are disjoint from the rest of the address). (A
// first form that predicated each load on its key's validity and added the swizzle per load
// ran ~1400 instructions per warp per block; the math warpgroups waited on it, 2.5x slower
// than with the transposition skipped: ncu, 2026-12-04.) Partial blocks mask after the loads.
template <bool kMasked>
__device__ __forceinline__ void transpose_v_units(uint32_t aS, uint32_t aT, int t, int h, uint32_t vk)
{
    const int w = t >> 5, lane = t & 31, kg = lane & 3, d4 = (lane >> 2) & 7;
    const uint32_t x = (uint32_t)(kg & 1);
    const int b2 = (kg >> 1) & 1, o = d4 & 1;
    const uint32_t s01 = x ? 0x1504u : 0x5140u, s23 = x ? 0x3726u : 0x7362u;
    const uint32_t sA = o ? 0x7632u : 0x5410u, sB = o ? 0x5410u : 0x7632u;
    const int cb = w + 4 * h;
    const uint32_t base = aS + (uint32_t)(cb * kCbBytes + kg * 16 * 64 + (d4 & 3) * 4);
    // V^T row n = 64 cb + 32 ch + 4 d4 + (e ^ o), chunk kg ^ ((n >> 1) & 3) = kg ^ 2 o ^ (e >> 1)
    uint32_t st[4];
#pragma unroll
    for (int e = 0; e < 4; e++)
        st[e] = aT + kOffVt + (uint32_t)(cb * 64 * 64 + (d4 * 4 + (e ^ o)) * 64 + ((kg ^ (2 * o) ^ (e >> 1)) & 3) * 16);
#pragma unroll
    for (int u = 0; u < 2; u++) {
        const int ch = u ^ b2; // which 32-byte half of the block's rows
        const uint32_t cl = (uint32_t)(ch * 2 + (d4 >> 2));
        const uint32_t y = (x * 64u) | (((x * 8u) ^ (cl * 16u)) & 48u);
        const uint32_t ub = base ^ y;
        uint32_t R[16];
#pragma unroll
        for (int j = 0; j < 16; j++) R[j] = ld_shared32(ub ^ (uint32_t)(j * 64 + ((j * 8) & 48)));
        if constexpr (kMasked) {
#pragma unroll
            for (int j = 0; j < 16; j++) R[j] = (vk >> ((uint32_t)j ^ x)) & 1u ? R[j] : 0u;
        }
        const uint32_t so = (uint32_t)(ch * 32 * 64);
#pragma unroll
        for (int qq = 0; qq < 4; qq++) {
            const uint32_t t0 = prmt(R[4 * qq], R[4 * qq + 1], s01), t1 = prmt(R[4 * qq], R[4 * qq + 1], s23);
            const uint32_t t2 = prmt(R[4 * qq + 2], R[4 * qq + 3], s01), t3 = prmt(R[4 * qq + 2], R[4 * qq + 3], s23);
            R[4 * qq + 0] = prmt(t0, t2, sA); // dim slot 0 of key quad qq, and so on
            R[4 * qq + 1] = prmt(t0, t2, sB);
            R[4 * qq + 2] = prmt(t1, t3, sA);
            R[4 * qq + 3] = prmt(t1, t3, sB);
        }
#pragma unroll
        for (int e = 0; e < 4; e++) st_shared16(st[e] + so, make_uint4(R[e], R[4 + e], R[8 + e], R[12 + e]));
    }
}

// The same with ldmatrix / stmatrix (the default since 2026-12-04: B128 H128 8k 0.555 ->
// 0.501 ms, 16k 1.062 -> 0.970 on an H200; bench/NOTES.md). Per 16 keys x 16 dims,
// ldmatrix reads two 8 x 16-byte matrices (matrix 0: one key of each pair 2m, 2m+1, matrix 1:
// the other; rows chosen with distinct residues mod 8, so the 64-byte swizzle spreads them
// over all banks), two byte permutes per thread build 16-bit (key 2m, key 2m+1) pairs of one
// dim, and stmatrix.trans writes them as V^T rows (dims chosen per row with distinct residues
// mod 8 for the same reason). Per warp per block: 16 ldmatrix.x4, 64 permutes, 16 stmatrix.x4
// and no per-access address arithmetic (~116 instructions), against ~310 for
// transpose_v_units. bench/probes/v10_ldsm_model.py replays the lane arithmetic on the CPU.
// Lane L: matrix i = L / 8, its row rr = L % 8; fragment row m = L / 4, quad q = L % 4.
template <bool kMasked>
__device__ __forceinline__ void transpose_v_ldsm(uint32_t aS, uint32_t aT, int t, int h, uint64_t valid)
{
    const int w = t >> 5, L = t & 31, cb = w + 4 * h;
    const int i = L >> 3, rr = L & 7, bl = i >> 1, mm = i & 1;
    // ldmatrix row address of lane L: key kg*16 + koff, kg = 2 (j >> 2) + bl; chunk dg ^ swizzle.
    const int er = rr >= 4;                                 // pairs 4..7: matrix 0 holds the odd key
    const int koff = 2 * rr + (mm ? 1 - er : er);
    const uint32_t lbase = aS + (uint32_t)(cb * kCbBytes + (bl * 16 + koff) * 64 + (((koff >> 1) & 3) << 4));
    // stmatrix row address: dim n = 64 cb + 16 dg + doff, chunk (key group) ^ ((n >> 1) & 3).
    const int qq = rr >> 1, sidx = mm;                      // stored row rr of matrix (bl, s)
    const int doff = 4 * qq + ((qq < 2) == (sidx == 0) ? 0 : 2) + (rr & 1);
    const uint32_t sdrow = aT + kOffVt + (uint32_t)((cb * 64 + doff) * 64);
    const uint32_t sx = (uint32_t)(bl ^ ((doff >> 1) & 3));
    const uint32_t st0 = sdrow + (sx << 4), st1 = sdrow + ((sx ^ 2u) << 4);
    // permute selectors of this thread's fragment (row m = L / 4, quad q = L % 4)
    const int m = L >> 2, q = L & 3;
    const bool e = m >= 4;
    const uint32_t lo = e ? 0x1504u : 0x5140u, hi = e ? 0x3726u : 0x7362u;
    const uint32_t sel0 = q < 2 ? lo : hi, sel1 = q < 2 ? hi : lo;
    // All eight loads first, then the stores: each asm carries a memory clobber, so loads and
    // stores interleaved per step kept one ldmatrix in flight per warp (6% slower than
    // transpose_v_units, H200 2026-12-04).
    uint32_t r[8][4];
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const int dg = j & 3, kp = j >> 2;
        const uint32_t la = (lbase ^ (uint32_t)(dg << 4)) + (uint32_t)(kp * 2048);
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[j][0]), "=r"(r[j][1]), "=r"(r[j][2]), "=r"(r[j][3])
                     : "r"(la)
                     : "memory");
    }
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const int dg = j & 3, kp = j >> 2;
        uint32_t r0 = r[j][0], r1 = r[j][1], r2 = r[j][2], r3 = r[j][3];
        if constexpr (kMasked) { // keys of this thread's words: block b's 2m + e and 2m + 1 - e
#pragma unroll
            for (int b = 0; b < 2; b++) {
                const int k0 = (2 * kp + b) * 16 + 2 * m + (e ? 1 : 0), k1 = k0 ^ 1;
                uint32_t &x0 = b ? r2 : r0, &x1 = b ? r3 : r1;
                x0 = (valid >> k0) & 1 ? x0 : 0u;
                x1 = (valid >> k1) & 1 ? x1 : 0u;
            }
        }
        const uint32_t w00 = prmt(r0, r1, sel0), w01 = prmt(r0, r1, sel1);
        const uint32_t w10 = prmt(r2, r3, sel0), w11 = prmt(r2, r3, sel1);
        const uint32_t sa = (kp ? st1 : st0) + (uint32_t)(dg * 16 * 64);
        asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(sa),
                     "r"(w00), "r"(w01), "r"(w10), "r"(w11)
                     : "memory");
    }
}

// The V transposition: ldmatrix / stmatrix by default; the byte-permute form
// (transpose_v_units) with -DMLA_V10_UNITS_TRANSPOSE, kept because it is the measured
// alternative (B128 H128 8k 0.555 ms against 0.501, H200 2026-12-04, bench/NOTES.md).
__device__ __forceinline__ void transpose_v(uint32_t aS, uint32_t aT, int t_, int h, uint64_t valid)
{
    const int t = (int)opaque_u32((uint32_t)t_);
#ifndef MLA_V10_UNITS_TRANSPOSE
    if (valid == ~0ull) transpose_v_ldsm<false>(aS, aT, t, h, valid); // every key holds data
    else transpose_v_ldsm<true>(aS, aT, t, h, valid);
#else
    if (valid == ~0ull) { // uniform: the block's keys are all below seq_len on valid pages
        transpose_v_units<false>(aS, aT, t, h, 0u);
    } else {
        const uint32_t vk = (uint32_t)(valid >> ((t & 3) * 16)) & 0xffffu; // this key group's bits
        transpose_v_units<true>(aS, aT, t, h, vk);
    }
#endif
}

// The producer warpgroup. Lane 0 of each warp issues its column blocks of block i's K into slot
// i % 3 two blocks ahead of the transposition (the slot is free once S and the transposition of
// block i - 1 are done with it; the block-table reads for it start one block earlier, under a
// wait and a transposition); then every thread transposes block i's V into the tile it takes
// (pairs as in the seesaw: an opener into tile 0, its partner in the same request into tile 1)
// once its K has landed and the tile's previous V^T is free. (With K in the tiles themselves,
// one K load per tile waited for the transposition before it, and the math warpgroups waited
// for V^T: 0.648 ms at B128 H128 8k against 0.432 with the transposition skipped.) Each V^T
// half is read by one warpgroup only, but handing the halves over separately (vfull per half,
// the switch -DMLA_V10_VFULL_HALVES) measured 1.5x slower with the byte-permute transposer
// (0.853 against 0.566 ms) and still 6-8% slower with this one (B128 H128 8k 0.526 against
// 0.493 ms, H200, fourteenth session). Unchecked guess: a warpgroup given its half early starts
// P V while the other still runs S, and the two contend for the tensor cores. The block is
// handed over whole. sValid[warp][slot] (the warp's lane 0, from the block table, before its
// TMA) tells the warp's transposer which keys hold data without global loads of its own.
__device__ __forceinline__ void produce(const Params &p, int part, int tau, Cursor c, uint32_t aK, uint32_t aTile,
                                        uint32_t aBar, int *sFlags, uint64_t *sValid)
{
    const int t = threadIdx.x - kMathThreads, w = t >> 5, lane = t & 31;
    if (lane == 0) {
        mla_sm90::tma_prefetch_map(&p.kv_tma[0]);
        mla_sm90::tma_prefetch_map(&p.kv_tma[1]);
    }
    uint32_t kiss = 0; // bit s: uses of slot s issued so far, mod 2
    uint32_t ktr = 0;  // bit s: uses of slot s transposed so far, mod 2
    uint32_t vtr = 0;  // bit T: uses of tile T so far, mod 2
    int s_iss = 0, s_tr = 0, pos = 0;
    auto next = [&](Cursor x) {
        mla_decode_v1::cursor_next(p, part, tau, x);
        return x;
    };
#ifdef MLA_SEESAW_TIMELINE
    int tl_issued = 0, tl_block = 0;
#endif
    auto issue = [&](const Cursor &x, const Pref &f) {
        if (x.b >= p.batch) return;
        if (lane == 0) {
            MLA_SEESAW_TL(t == 0, 2, 6, tl_issued); // before the rows and the wait for the slot
            const Rows10 r = rows10(p, x, f, t == 0);
            mla_sm90::mbar_wait(kempty_bar(aBar, s_iss, w), ((kiss >> s_iss) & 1u) ^ 1u);
            MLA_SEESAW_TL(t == 0, 2, 5, tl_issued); // slot free: TMA issued next
            if (w == 0) sFlags[s_iss] = r.ok;
            sValid[w * kSlots + s_iss] = r.valid;
            issue_k_warp(p, r, aK + (uint32_t)(s_iss * kKBytes), aBar, s_iss, w);
            MLA_SEESAW_TL(t == 0, 2, 7, tl_issued); // warp 0's TMA instructions issued
        }
#ifdef MLA_SEESAW_TIMELINE
        tl_issued++;
#endif
        kiss ^= 1u << s_iss;
        s_iss = s_iss == kSlots - 1 ? 0 : s_iss + 1;
    };
    // Only the issuing lanes read the block table; the other lanes never use the result.
    auto pref = [&](const Cursor &x) { return lane == 0 ? mla_decode_v1::prefetch_block<kBN>(p, x) : Pref{0, -1, -1}; };
    Cursor c1 = next(c), c2 = next(c1);
    issue(c, pref(c));
    issue(c1, pref(c1));
    Pref f2 = pref(c2);
    while (c.b < p.batch) {
        issue(c2, f2);
        const Cursor c3 = next(c2);
        f2 = pref(c3); // in flight during this block's waits and transposition
        const uint32_t kpar = (ktr >> s_tr) & 1u, vpar = (vtr >> pos) & 1u;
        mla_sm90::mbar_wait(kfull_bar(aBar, s_tr, w), kpar);
        mla_sm90::mbar_wait(kfull_bar(aBar, s_tr, w + 4), kpar);
        MLA_SEESAW_TL(t == 0, 2, 0, tl_block); // K landed (warp 0's column blocks)
#ifndef MLA_V10_SKIP_TRANSPOSE // measurement only (EXTRA_NVCCFLAGS): V^T left stale, wrong results
        const uint64_t valid = sValid[w * kSlots + s_tr]; // written by lane 0 before its TMA
        const uint32_t aS = aK + (uint32_t)(s_tr * kKBytes), aT = aTile + (uint32_t)(pos * kTile);
        // Half h of V^T is read by warpgroup h only: start on it as soon as that one is done
        // (both waits before either half: 1-2% slower, H200 2026-12-04).
        mla_sm90::mbar_wait(vempty_bar(aBar, pos, 0), vpar ^ 1u);
        MLA_SEESAW_TL(t == 0, 2, 1, tl_block);
        transpose_v(aS, aT, t, 0, valid);
        MLA_SEESAW_TL(t == 0, 2, 2, tl_block);
#ifdef MLA_V10_VFULL_HALVES
        mla_decode_v3::fence_proxy_async(); // half 0's stores -> warpgroup 0's wgmma
        mbar_arrive(vfull_bar(aBar, pos, 0));
#endif
        mla_sm90::mbar_wait(vempty_bar(aBar, pos, 1), vpar ^ 1u);
        MLA_SEESAW_TL(t == 0, 2, 3, tl_block);
        transpose_v(aS, aT, t, 1, valid);
        MLA_SEESAW_TL(t == 0, 2, 4, tl_block);
#else
        mla_sm90::mbar_wait(vempty_bar(aBar, pos, 0), vpar ^ 1u);
        mla_sm90::mbar_wait(vempty_bar(aBar, pos, 1), vpar ^ 1u);
#ifdef MLA_V10_VFULL_HALVES
        mbar_arrive(vfull_bar(aBar, pos, 0));
#endif
#endif
        mla_decode_v3::fence_proxy_async(); // V^T stores -> wgmma
        mbar_arrive(vfull_bar(aBar, pos, kVFullPerTile - 1)); // the whole tile, or half 1
        mbar_arrive(kempty_bar(aBar, s_tr, w)); // this warp's column blocks only
#ifdef MLA_SEESAW_TIMELINE
        tl_block++;
        if (t == 0) mla_seesaw_tl_count(2, tl_block);
#endif
        ktr ^= 1u << s_tr;
        vtr ^= 1u << pos;
        s_tr = s_tr == kSlots - 1 ? 0 : s_tr + 1;
        pos = pos == 0 && c1.b == c.b ? 1 : 0;
        c = c1;
        c1 = c2;
        c2 = c3;
    }
}

// ---------------------------------------------------------------- math warpgroups

// O[:, 256 wg ..] += P V for tile aT (P and V^T of the tile), 2 k-steps of 32 keys.
__device__ __forceinline__ void pv_chain(float (&o)[128], uint32_t aT, int wg, bool fresh)
{
    using namespace mla_sm90;
    const uint64_t dp = desc64(aT + kOffP);
    const uint64_t dv = desc64(aT + kOffVt + (uint32_t)(wg * 256 * 64));
    mla_decode_v3::acc_fence(o);
    wgmma_fence();
    wgmma_m64n256k32_e4m3(o, dp, dv, !fresh);
    wgmma_m64n256k32_e4m3(o, mla_decode_v3::desc_add(dp, 32), mla_decode_v3::desc_add(dv, 32), 1);
    wgmma_commit();
    wgmma_wait<0>();
    mla_decode_v3::acc_fence(o);
}

__global__ void __launch_bounds__(kNT, 1) decode_fp8mma_kernel(const __grid_constant__ Params p)
{
    using namespace mla_sm90;
    using mla_decode_v3::acc_fence;
    using mla_decode_v3::desc_add;
    using mla_decode_v3::fence_proxy_async;
    using mla_decode_v6::bar_arrive;
    using mla_decode_v6::scale_o;
    using mla_decode_v6::softmax_block;
    extern __shared__ uint8_t smem_raw[];
    const uint32_t raw_addr = mla_decode_v1::smem_u32(smem_raw);
    const uint32_t base = (raw_addr + 1023u) & ~1023u;
    uint8_t *smem = smem_raw + (base - raw_addr);
    uint8_t *sQ = smem + Cfg::offQ;
    float *sPair = reinterpret_cast<float *>(smem + Cfg::offPair);
    float *sRedSum = reinterpret_cast<float *>(smem + Cfg::offRedSum);
    int *sFlags = reinterpret_cast<int *>(smem + Cfg::offFlags);
    const uint32_t aQ = base + Cfg::offQ, aK = base + Cfg::offK, aTile = base + Cfg::offTile;
    const uint32_t aBar = base + Cfg::offBar;

    const int part = blockIdx.x, hb = blockIdx.y;
    const int tid = threadIdx.x;
    if (tid == 0) {
        for (int sl = 0; sl < kSlots; sl++) {
            for (int cb = 0; cb < kCb; cb++) mbar_init(kfull_bar(aBar, sl, cb), 1);
            for (int w = 0; w < 4; w++) mbar_init(kempty_bar(aBar, sl, w), 128 + 32); // S's warpgroup + warp w
        }
        for (int T = 0; T < 2; T++) {
            for (int h = 0; h < kVFullPerTile; h++) mbar_init(vfull_bar(aBar, T, h), 128);
            mbar_init(vempty_bar(aBar, T, 0), 128);
            mbar_init(vempty_bar(aBar, T, 1), 128);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    asm volatile("griddepcontrol.wait;\n" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
    const int tau = *p.s.tau;
    Cursor a;
    mla_decode_v1::part_first_cursor(p, part, a);
    if (a.b >= p.batch) return;
    if (tid >= kMathThreads) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegProducer));
        produce(p, part, tau, a, aK, aTile, aBar, sFlags, reinterpret_cast<uint64_t *>(smem + Cfg::offValid));
        return;
    }
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegMath));

    const int lane = tid & 31;
    const int wg = tid >> 7;
    const int r_lo = ((tid >> 5) & 3) * 16 + (lane >> 2);
    const int qd = lane & 3;
    const float qk_scale = p.scale_log2;

    float o[128];
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
    int lim_row[2] = {0, 0};
    int lim_min = 0;
    bool new_req = true, fresh = true;
    uint32_t phases = 0; // bit T: uses of tile T so far, mod 2
    uint32_t kphases = 0; // bit s: uses of K slot s so far, mod 2
    int s_a = 0;          // K slot of the pair's opener
#ifdef MLA_SEESAW_TIMELINE
    int tl_pair = 0;
    const bool tl_me = (tid & 127) == 0;
#endif

    while (a.b < p.batch) {
        Cursor bcur = a;
        mla_decode_v1::cursor_next(p, part, tau, bcur);
        const bool has_b = bcur.b == a.b;
        if (new_req) {
            mla_decode_v1::named_bar(kBarMath, kMathThreads);
            load_q8(p, a.b, hb, sQ);
            const int seq = p.s.seq_eff[a.b];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int gr = hb * kM + r_lo + h * 8;
                lim_row[h] = p.causal ? seq - p.q_len + min(gr, p.rows - 1) / p.heads + 1 : seq;
            }
            lim_min = p.causal ? seq - p.q_len + 1 : seq;
            new_req = false;
            fence_proxy_async();
            mla_decode_v1::named_bar(kBarMath, kMathThreads);
        }

        // ---- S of this warpgroup's block (m64n64k32 e4m3, 18 k-steps) ----
        MLA_SEESAW_TL(tl_me, wg, 0, tl_pair);
        float s[32];
        float mx[2] = {-INFINITY, -INFINITY};
        const bool mine = wg == 0 || has_b;
        const uint32_t par = (phases >> wg) & 1u;
        const int s_b = s_a == kSlots - 1 ? 0 : s_a + 1;
        const int s_mine = wg ? s_b : s_a;
        if (mine) {
            const int key0 = (wg ? bcur.blk : a.blk) * kBN;
            const uint32_t kpar = (kphases >> s_mine) & 1u;
#pragma unroll
            for (int i = 0; i < 32; i++) s[i] = 0.f;
            const uint64_t dq0 = desc64(aQ), dk0 = desc64(aK + (uint32_t)(s_mine * kKBytes));
            const uint32_t kb = opaque_u32(kfull_bar(aBar, s_mine, 0));
            acc_fence(s);
#pragma unroll
            for (int ks = 0; ks < kDqk / 32; ks++) {
                if ((ks & 1) == 0) {
                    mbar_wait(kb + 8u * (uint32_t)(ks >> 1), kpar);
                    wgmma_fence();
                }
                const uint32_t off = (uint32_t)((ks >> 1) * kCbBytes + (ks & 1) * 32);
                wgmma_m64n64k32_e4m3(s, desc_add(dq0, off), desc_add(dk0, off), ks > 0);
            }
            wgmma_commit();
            wgmma_wait<0>();
            acc_fence(s);
            MLA_SEESAW_TL(tl_me, wg, 1, tl_pair);
            const int pmask = sFlags[s_mine];
#pragma unroll
            for (int w = 0; w < 4; w++) mbar_arrive(kempty_bar(aBar, s_mine, w)); // K slot and its sFlags read
            // masked, scaled, row maxima: as in decode_v6_seesaw.cuh
            const int page0 = key0 >> p.page_shift;
            const bool full = key0 + kBN <= lim_min && pmask == (kBN > p.page_size ? 3 : 1);
            if (full) {
#pragma unroll
                for (int i = 0; i < 32; i++) {
                    s[i] *= qk_scale;
                    mx[(i >> 1) & 1] = fmaxf(mx[(i >> 1) & 1], s[i]);
                }
            } else {
#pragma unroll
                for (int i = 0; i < 8; i++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int key = key0 + i * 8 + 2 * qd + (e & 1);
                        const bool valid = key < lim_row[e >> 1] && ((pmask >> ((key >> p.page_shift) - page0)) & 1);
                        const float v = valid ? s[4 * i + e] * qk_scale : -INFINITY;
                        s[4 * i + e] = v;
                        mx[e >> 1] = fmaxf(mx[e >> 1], v);
                    }
            }
#pragma unroll
            for (int h = 0; h < 2; h++) {
                mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
                mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
            }
        }

        // ---- softmax; P (x 256, e4m3) into this warpgroup's tile ----
        float prev[2], mnew[2], sc[2], sc0[2];
        if (wg == 1) {
            mla_decode_v1::named_bar(kBarA, kMathThreads);
            MLA_SEESAW_TL(tl_me, 1, 5, tl_pair); // warpgroup 1: after barrier A
#pragma unroll
            for (int h = 0; h < 2; h++) {
                prev[h] = sPair[r_lo + 8 * h];
                sc0[h] = sPair[kM + r_lo + 8 * h];
            }
        } else {
            prev[0] = m_run[0];
            prev[1] = m_run[1];
        }
        float ls[2] = {0.f, 0.f};
        softmax_block(s, prev, mx, mine, mnew, sc, ls);
        if (mine) {
            // The other warpgroup's P V on this tile's previous block is done with P.
            mbar_wait(vempty_bar(aBar, wg, wg ^ 1), par ^ 1u);
            uint8_t *sP = smem + Cfg::offTile + wg * kTile + kOffP;
#pragma unroll
            for (int i = 0; i < 8; i++) {
                const int k = 8 * i + 2 * qd;
                *reinterpret_cast<uint16_t *>(sP + sw64(r_lo, k)) =
                    pack_e4m3x2(s[4 * i + 0] * kPScale, s[4 * i + 1] * kPScale);
                *reinterpret_cast<uint16_t *>(sP + sw64(r_lo + 8, k)) =
                    pack_e4m3x2(s[4 * i + 2] * kPScale, s[4 * i + 3] * kPScale);
            }
        }
        if (qd == 0) {
#pragma unroll
            for (int h = 0; h < 2; h++) {
                sPair[2 * wg * kM + r_lo + 8 * h] = mnew[h];
                sPair[(2 * wg + 1) * kM + r_lo + 8 * h] = sc[h];
            }
        }
        fence_proxy_async();
        mla_decode_v1::named_bar(kBarWg + wg, 128);
        MLA_SEESAW_TL(tl_me, wg, 2, tl_pair); // P stored
        if (wg == 0) {
            bar_arrive(kBarA, kMathThreads);
            l_run[0] = l_run[0] * sc[0] + ls[0];
            l_run[1] = l_run[1] * sc[1] + ls[1];
            if (!fresh) scale_o(o, sc[0], sc[1]);
            mbar_wait(vfull_bar(aBar, 0, wg), phases & 1u);
            MLA_SEESAW_TL(tl_me, 0, 3, tl_pair);
            pv_chain(o, aTile, 0, fresh);
            MLA_SEESAW_TL(tl_me, 0, 4, tl_pair);
            mbar_arrive(vempty_bar(aBar, 0, 0));
            mla_decode_v1::named_bar(kBarB, kMathThreads);
            MLA_SEESAW_TL(tl_me, 0, 5, tl_pair); // warpgroup 0: after barrier B
            float sc1[2];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                sc1[h] = sPair[3 * kM + r_lo + 8 * h];
                m_run[h] = sPair[2 * kM + r_lo + 8 * h];
                l_run[h] *= sc1[h];
            }
            scale_o(o, sc1[0], sc1[1]);
            if (has_b) {
                mbar_wait(vfull_bar(aBar, 1, wg), (phases >> 1) & 1u);
                MLA_SEESAW_TL(tl_me, 0, 6, tl_pair);
                pv_chain(o, aTile + kTile, 0, false);
                MLA_SEESAW_TL(tl_me, 0, 7, tl_pair);
                mbar_arrive(vempty_bar(aBar, 1, 0));
            }
        } else {
            bar_arrive(kBarB, kMathThreads);
            l_run[0] = l_run[0] * sc0[0] * sc[0] + ls[0];
            l_run[1] = l_run[1] * sc0[1] * sc[1] + ls[1];
            if (!fresh) scale_o(o, sc0[0], sc0[1]);
            mbar_wait(vfull_bar(aBar, 0, wg), phases & 1u);
            MLA_SEESAW_TL(tl_me, 1, 3, tl_pair);
            pv_chain(o, aTile, 1, fresh);
            MLA_SEESAW_TL(tl_me, 1, 4, tl_pair);
            mbar_arrive(vempty_bar(aBar, 0, 1));
            scale_o(o, sc[0], sc[1]);
            m_run[0] = mnew[0];
            m_run[1] = mnew[1];
            if (has_b) {
                mbar_wait(vfull_bar(aBar, 1, wg), (phases >> 1) & 1u);
                MLA_SEESAW_TL(tl_me, 1, 6, tl_pair);
                pv_chain(o, aTile + kTile, 1, false);
                MLA_SEESAW_TL(tl_me, 1, 7, tl_pair);
                mbar_arrive(vempty_bar(aBar, 1, 1));
            }
        }
#ifdef MLA_SEESAW_TIMELINE
        tl_pair++;
        if (tl_me) mla_seesaw_tl_count(wg, tl_pair);
#endif
        phases ^= has_b ? 3u : 1u;
        kphases ^= (1u << s_a) | (has_b ? 1u << s_b : 0u);
        s_a = has_b ? (s_b == kSlots - 1 ? 0 : s_b + 1) : s_b;
        fresh = false;

        const int b = a.b;
        const Cursor &lastc = has_b ? bcur : a;
        const bool last = lastc.blk + 1 >= lastc.hi;
        a = bcur;
        if (has_b) mla_decode_v1::cursor_next(p, part, tau, a);
        if (last) {
            float lsum[2];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                float v = l_run[h];
                v += __shfl_xor_sync(0xffffffffu, v, 1);
                v += __shfl_xor_sync(0xffffffffu, v, 2);
                lsum[h] = v;
            }
            if (qd == 0) { // O holds 256 P V: the sums as 256 L, the max as m - 8 (same LSE)
                sRedSum[wg * kM + r_lo] = lsum[0] * kPScale;
                sRedSum[wg * kM + r_lo + 8] = lsum[1] * kPScale;
            }
            mla_decode_v1::named_bar(kBarMath, kMathThreads);
            const float m_adj[2] = {m_run[0] - kPScaleLog2, m_run[1] - kPScaleLog2};
            mla_decode_v3::write_rows<mla_decode_v3::kWideHalfPartials>(p, o, sRedSum, m_adj, b, part, hb, wg,
                                                                        r_lo, qd);
            m_run[0] = m_run[1] = -INFINITY;
            l_run[0] = l_run[1] = 0.f;
            new_req = true;
            fresh = true;
        }
    }
}

} // namespace mla_decode_v10
