// Split-KV MLA decode, version 2: fp8 cache, M = 16 query rows (H * q_len <= 16), no fp16
// tile. Same work model, scheduler and mma.sync math as version 1 (decode_v1_mma.cuh), but
// shaped for shared-memory traffic, which bounded version 1 at ~100 cycles per key per SM
// (Q re-read by every warp for every 8 keys: 2304 B/key; fp8 -> fp16 tile: 1728 B/key):
//   * QK^T is split over the 576 dims: warp w owns dims [144w, 144w + 144) for all 32 keys of
//     the block, its Q fragments stay in registers for the whole request, and the four
//     partial score tiles are summed through shared memory (512 B/key).
//   * K and V fragments are built in registers straight from the fp8 stage (integer
//     e4m3 -> f16 bit moves, values x 2^-8). The k order inside an MMA is free, so a thread's
//     k slots {2t, 2t+1, 2t+8, 2t+9} map to 4 consecutive dims: one 4-byte load per K
//     fragment. For P V the k dim is keys: two key rows are interleaved with prmt, and the n
//     order is permuted (n-tile j of a group of 4, lane group g <-> dim 4g + j) so that each
//     4-byte load feeds 4 n-tiles and each thread ends with 8 consecutive output dims.
//   * Both access patterns must be free of bank conflicts. Default (kConvTma, 64-key blocks):
//     the four warps fill a stage with TMA boxes (128-byte column blocks in the 128-byte
//     swizzle, the rope block in the 64-byte one: stw_off's layout), counted on the stage's
//     mbarrier; warp w's QK^T dims are then [128w, +128) plus 16 rope dims, so the swizzle
//     of every K and V load is a per-thread constant. This took the copy issue (18 cp.async
//     per thread per block, 16% of v2's stall samples, their address registers held until
//     the LSU read them) off the math warps: 8-11% faster than kConvPad on an H200
//     (bench/NOTES.md, 2026-12-03 third session). kConvPad: stage rows padded to 592 bytes,
//     filled by 16-byte cp.async whose sources and destinations, like the K and V loads, are
//     a per-thread base plus compile-time offsets (17-18% faster than the xor-swizzled
//     576-byte rows, whose per-load index math was most of v2's integer instructions). (One
//     cp.async.bulk per padded row was measured 17% slower and retired.)
// 128 threads, 64-key blocks in 2 stages (or 32-key blocks in 4), two CTAs per SM.
#pragma once
#include "decode_v1_mma.cuh"
#include "ws_common.cuh" // wgmma helpers and e4m3x4_to_f16x4
#include "../common/decode_trace.cuh"
#include "wgmma_operands.cuh"

namespace mla_decode_v2 {

using namespace mla_decode_v1;

constexpr int kNT = 128, kM = 16;

// BN keys per block (32: 4 stages; 64: 2 stages, half the per-key barrier and softmax cost).
// kPad: stage rows padded to 592 bytes (st8p_off) instead of the xor swizzle (st8_off).
constexpr int kRowPad = kRow8 + 16;
template <int BN, bool kPad = false> struct V2Cfg {
    static constexpr int NS = BN == 32 ? 4 : 2;
    static constexpr int SRow = BN + 8;   // floats per partial-score row (padding: 2-way at most)
    static constexpr int NTK = BN / 8;    // n-tiles of a warp's partial S (all keys)
    static constexpr int NTW = BN / 32;   // n-tiles a warp owns for the softmax
    static constexpr int kStageBytes = BN * (kPad ? kRowPad : kRow8);
    static constexpr int offStage = 0;
    static constexpr int offS = offStage + NS * kStageBytes;
    static constexpr int offP = offS + 4 * kM * SRow * 4;
    static constexpr int offRedMax = offP + kM * BN * 2;
    static constexpr int offRedSum = offRedMax + 4 * kM * 4;
    static constexpr int offFlags = offRedSum + 4 * kM * 4;
    static constexpr int kSmem = offFlags + 16;
    // kConvW8 (64-key blocks): the fp8 query tile wgmma reads (16 rows x 576 bytes in the
    // stage's column-block layout), after the rest on a 1024-byte boundary; the base of dynamic
    // shared memory is aligned up at run time (the swizzle is a function of the address).
    static constexpr int offQ8 = (kSmem + 1023) & ~1023;
    static constexpr int kSmemW8 = offQ8 + kM * kRow8 + 1024;
    // kConvTma: one mbarrier per stage after the rest; base aligned up to 1024 at run time.
    static constexpr int offBar = (kSmem + 7) & ~7;
    static constexpr int kSmemTma = offBar + 8 * NS + 1024;
};

// Byte offset of (row r, 16-byte chunk c) in a swizzled fp8 stage. Row r starts at bank
// offset 64 (r & 1); the xor makes the effective 128-byte slot of chunk c equal to
// c ^ (r & 7), so 8 consecutive rows at one chunk (K loads) and rows {2t + e} at two adjacent
// chunks (V loads) hit distinct banks. The rope chunks 32..35 (K only) use a 2-bit xor.
__device__ __forceinline__ uint32_t st8_off(int r, int c)
{
    const int s = c < 32 ? ((r & 7) ^ ((r & 1) << 2)) : (r & 3);
    return r * kRow8 + ((c ^ s) << 4);
}
// Padded stage rows: 592 bytes = 148 words, 20 banks apart mod 32, so rows g = 0..7 at one
// chunk (K loads: 8 rows x 4 words) and rows {2t + e} at two adjacent chunks (V loads) land
// on 32 distinct banks without a swizzle. Every address is then a per-thread base plus a
// compile-time offset (the xor's per-load index math was ~1/4 of v2's instructions: ncu,
// bench/NOTES.md 2026-12-03).
__device__ __forceinline__ uint32_t st8p_off(int r, int c) { return (uint32_t)(r * kRowPad + (c << 4)); }

// kConvW8 stage layout, the K-major tiles wgmma reads: dims [0, 512) as four column blocks
// of R rows x 128 bytes (128-byte swizzle: chunk c of row r at c ^ (r & 7)), then the rope
// dims as one block of R rows x 64 bytes (64-byte swizzle: chunk c ^ ((r >> 1) & 3)). The V
// loads of P V (rows {2t, 2t+1} or {2t+8, 2t+9}, two adjacent chunks) hit 32 distinct banks.
template <int R> __device__ __forceinline__ uint32_t stw_off(int r, int c)
{
    return c < 32 ? (uint32_t)((c >> 3) * (R * 128) + r * 128 + (((c & 7) ^ (r & 7)) << 4))
                  : (uint32_t)(4 * R * 128 + r * 64 + (((c & 3) ^ ((r >> 1) & 3)) << 4));
}
template <bool kW8, bool kPad, int kBN> __device__ __forceinline__ uint32_t stage_off(int r, int c)
{
    if constexpr (kW8) return stw_off<kBN>(r, c);
    else if constexpr (kPad) return st8p_off(r, c);
    else return st8_off(r, c);
}

template <int kBN, bool kW8 = false, bool kPad = false>
__device__ __forceinline__ void issue_block_v2(const Params &p, const Cursor &c, const Pref &f,
                                               uint8_t *stage, int *flags)
{
    if (c.b < p.batch) {
        const int seq = f.seq;
        const int key0 = c.blk * kBN;
        const int ok = block_page_mask<kBN>(p, key0, f);
        if (threadIdx.x == 0) *flags = ok;
        const uint32_t sbase = smem_u32(stage);
        // Consecutive threads copy consecutive 16-byte chunks of a row (a warp reads ~512
        // contiguous bytes). v3's mapping (one row per thread group, fewer instructions), tried
        // here together with the mask and rescale skips below, ran 7% slower at H 16.
        // Copy i moves chunk q = tid + kNT i: row r = q / 36, chunk ch = q % 36, stepped
        // incrementally (kNT = 3 rows + 20 chunks) instead of divided per copy; the block's
        // (at most two) page bases are formed once.
        // A 32-key block on a 64-key page starts mid-page: pg0 is the block's first row.
        const size_t page_bytes = (size_t)p.page_size * kRow8;
        const uint8_t *pg0 = p.kv + (size_t)(ok & 1 ? f.idx0 : 0) * page_bytes + (size_t)(key0 & (p.page_size - 1)) * kRow8;
        const uint8_t *pg1 = p.kv + (size_t)(ok & 2 ? f.idx1 : 0) * page_bytes;
        const int rows = min(kBN, seq - key0); // rows inside seq_len (may be <= 0)
        // Rows of page 0 / page 1 that are copied (locals: the cp.async asm clobbers memory,
        // which would otherwise reload the parameters on every copy).
        const int ps = p.page_size;
        if constexpr (kPad) {
            // Thread (warp w, lane l) copies chunk l of rows w + 4k (each copy instruction of a
            // warp moves 512 contiguous bytes) and rope chunk 32 + (tid & 3) of rows tid / 4
            // (+ 32): every source and destination is a per-thread base plus a compile-time
            // offset, ~3 instructions per copy instead of ~20 for the stepped (row, chunk) form.
            // Rows [0, 32) start at pg0; rows [32, 64) continue on the same page (page 64) or
            // start page 1 (page 32). Sources stay in-bounds for masked rows (page 0 of the
            // pool for invalid pages), so only the copy size is selected.
            const int tid = (int)threadIdx.x, w = tid >> 5, l = tid & 31;
            const uint8_t *hi = kBN > 32 ? (ps > 32 ? pg0 + 32 * kRow8 : pg1) : pg0;
            const int lim_lo = ok & 1 ? rows : 0;
            const int lim_hi = (ps > 32 ? ok & 1 : ok & 2) ? rows : 0;
            const uint8_t *src_lo = pg0 + w * kRow8 + l * 16, *src_hi = hi + w * kRow8 + l * 16;
            const uint32_t dst0 = sbase + (uint32_t)(w * kRowPad + l * 16);
#pragma unroll
            for (int k = 0; k < kBN / 4; k++) {
                const bool upper = k >= 8; // row w + 4k >= 32
                const bool valid = w + 4 * k < (upper ? lim_hi : lim_lo);
                const uint8_t *src = (upper ? src_hi : src_lo) + (4 * k - (upper ? 32 : 0)) * kRow8;
                cp_async16(dst0 + (uint32_t)(4 * k * kRowPad), src, valid ? 16 : 0);
            }
            const int rr = tid >> 2, rc = 32 + (tid & 3);
#pragma unroll
            for (int m = 0; m < kBN / 32; m++) {
                const bool valid = rr + 32 * m < (m ? lim_hi : lim_lo);
                cp_async16(sbase + st8p_off(rr + 32 * m, rc), (m ? hi : pg0) + rr * kRow8 + rc * 16, valid ? 16 : 0);
            }
            cp_async_commit();
            return;
        }
        const int lim0 = ok & 1 ? min(rows, ps) : 0;
        const int lim1 = ok & 2 ? rows : 0;
        const uint8_t *const kv = p.kv;
        int r = (int)threadIdx.x / 36, ch = (int)threadIdx.x % 36;
        static_assert(kNT % 36 == 20 && kNT / 36 == 3, "row/chunk stepping assumes 128 threads");
#pragma unroll
        for (int i = 0; i < kBN * 36 / kNT; i++) {
            const bool second = r >= ps; // page of the block: 0 or 1 (only when kBN > ps: key0 page aligned)
            const bool valid = r < (second ? lim1 : lim0);
            const uint8_t *src = second ? pg1 + (((r - ps) * 36 + ch) << 4) : pg0 + ((r * 36 + ch) << 4);
            uint32_t dst;
            if constexpr (kW8) {
                dst = sbase + stw_off<kBN>(r, ch);
            } else { // st8_off without branches
                const int sw = ch < 32 ? ((r & 7) ^ ((r & 1) << 2)) : (r & 3);
                dst = sbase + (uint32_t)(r * kRow8 + ((ch ^ sw) << 4));
            }
            cp_async16(dst, valid ? src : kv, valid ? 16 : 0);
            ch += 20;
            r += 3;
            if (ch >= 36) {
                ch -= 36;
                r += 1;
            }
        }
    }
    cp_async_commit();
}

// kConvTma: the four warps move key block c into `stage` (stw_off<kBN>'s layout, 1024-aligned)
// with TMA boxes (four 128-byte column blocks and the rope block; 64 rows each for page 64,
// else per 32-row half) counted on the stage's mbarrier. Halves on an invalid page or (page
// 32) wholly past seq_len are not loaded; the consumer zeroes their V bytes (and those of rows
// past seq_len), since stale shared memory there could hold NaN patterns that P = 0 would not
// cancel.
template <int kBN>
__device__ __forceinline__ void issue_block_tma(const Params &p, const Cursor &c, const Pref &f, uint32_t stage,
                                                int *flags, uint32_t bar)
{
    // Lane 0 of warp w issues column block w (warp 3 also the rope block) and arrives on the
    // stage barrier (4 arrivals) with its own byte count: a TMA instruction costs its thread
    // ~50-100 cycles whatever the box size (bench/probes/tma_box_width.cu), and with thread 0
    // issuing all ten boxes warp 0 reached every block's CTA barrier that much later.
    if (c.b >= p.batch || (threadIdx.x & 31) != 0) return;
    const int w = threadIdx.x >> 5;
    const int key0 = c.blk * kBN;
    const int ok = block_page_mask<kBN>(p, key0, f, threadIdx.x == 0);
    if (w == 0) *flags = ok;
    const uint32_t dst = stage + (uint32_t)(w * kBN * 128), width = w == 3 ? 128u + 64u : 128u;
    mla_decode_v3::fence_proxy_async(); // earlier generic accesses to the stage before the async writes
    if (kBN == 64 && p.page_size == 64) {
        // One page: the block as one 64-row box per column block (the maps have 64-row boxes
        // for page 64). Rows of the page past seq_len are loaded too; the consumer zeroes them.
        const bool valid = ok & 1;
        mla_sm90::mbar_arrive_expect_tx(bar, valid ? 64u * width : 0u);
        if (valid) {
            const int row = f.idx0 * 64;
            mla_sm90::tma_load_2d(dst, &p.kv_tma[0], 128 * w, row, bar);
            if (w == 3) mla_sm90::tma_load_2d(stage + (uint32_t)(4 * kBN * 128), &p.kv_tma[1], 512, row, bar);
        }
        return;
    }
    int row[kBN / 32];
    uint32_t bytes = 0;
#pragma unroll
    for (int h = 0; h < kBN / 32; h++) {
        const bool two_pages = kBN > p.page_size; // page 32, 64-key block: half h is page h
        const bool valid = (ok >> (two_pages ? h : 0)) & 1 && key0 + 32 * h < f.seq;
        const int idx = two_pages && h ? f.idx1 : f.idx0;
        row[h] = valid ? idx * p.page_size + (two_pages ? 0 : (key0 & (p.page_size - 1)) + 32 * h) : -1;
        bytes += valid ? 32u * width : 0u;
    }
    mla_sm90::mbar_arrive_expect_tx(bar, bytes);
#pragma unroll
    for (int h = 0; h < kBN / 32; h++) {
        if (row[h] < 0) continue;
        mla_sm90::tma_load_2d(dst + (uint32_t)(h * 32 * 128), &p.kv_tma[0], 128 * w, row[h], bar);
        if (w == 3)
            mla_sm90::tma_load_2d(stage + (uint32_t)(4 * kBN * 128 + h * 32 * 64), &p.kv_tma[1], 512, row[h], bar);
    }
}

// Q fragments of warp w's 9 k-steps as f16 (fp8 Q exact; bf16 Q rounded, saturating) for
// the permuted k order: qf[ks] = {row g dims (d, d+1), row g+8 (d, d+1), row g (d+2, d+3),
// row g+8 (d+2, d+3)} with d = (9w + ks) * 16 + 4t; padding rows (>= p.rows) are zero.
// All 18 loads (4 dims each) go out at once and padding rows read a valid row instead of
// branching (a per-pair loader with branches serialized its loads, 22% of the stall samples
// of a batch-1 call: bench/NOTES.md). `between` runs after the loads are issued and before
// their values are used. Load and conversion sit in one branch per Q dtype: split across
// two branches, the merged raw words cost registers the loop does not have (it spilled).
template <bool kFp8> struct QWord {
    using T = uint2; // 4 bf16
};
template <> struct QWord<true> {
    using T = uint32_t; // 4 e4m3
};
// First dim of warp w's k-step ks: dims [144w, 144w + 144), or with kSplit128 (the kConvTma
// stage, whose column blocks are 128 dims wide) dims [128w, 128w + 128) and rope dims
// [512 + 16w, +16).
template <bool kSplit128> __device__ __forceinline__ int warp_dim(int w, int ks)
{
    if constexpr (kSplit128) return ks < 8 ? 128 * w + 16 * ks : 512 + 16 * w;
    else return 144 * w + 16 * ks;
}
template <bool kFp8, bool kSplit128 = false, typename F>
__device__ __forceinline__ void load_q_frags_t(const Params &p, int b, int w, int g, int t, uint32_t (&qf)[9][4], F between)
{
    using T = typename QWord<kFp8>::T;
    const bool v0 = g < p.rows, v1 = g + 8 < p.rows;
    const size_t e0 = ((size_t)b * p.rows + min(g, p.rows - 1)) * kDqk + 4 * t;
    const size_t e1 = ((size_t)b * p.rows + min(g + 8, p.rows - 1)) * kDqk + 4 * t;
    constexpr int kElt = kFp8 ? 1 : 2; // bytes per Q element
    const uint8_t *q = (const uint8_t *)p.q;
    T x0[9], x1[9];
#pragma unroll
    for (int ks = 0; ks < 9; ks++) {
        const int d = warp_dim<kSplit128>(w, ks);
        x0[ks] = __ldg(reinterpret_cast<const T *>(q + (e0 + d) * kElt));
        x1[ks] = __ldg(reinterpret_cast<const T *>(q + (e1 + d) * kElt));
    }
    between();
#pragma unroll
    for (int ks = 0; ks < 9; ks++) {
        if constexpr (kFp8) {
            qf[ks][0] = v0 ? e4m3x2_to_f16x2((uint16_t)(x0[ks] & 0xffff)) : 0u;
            qf[ks][1] = v1 ? e4m3x2_to_f16x2((uint16_t)(x1[ks] & 0xffff)) : 0u;
            qf[ks][2] = v0 ? e4m3x2_to_f16x2((uint16_t)(x0[ks] >> 16)) : 0u;
            qf[ks][3] = v1 ? e4m3x2_to_f16x2((uint16_t)(x1[ks] >> 16)) : 0u;
        } else {
            qf[ks][0] = v0 ? bf16x2_to_f16x2_sat(x0[ks].x) : 0u;
            qf[ks][1] = v1 ? bf16x2_to_f16x2_sat(x1[ks].x) : 0u;
            qf[ks][2] = v0 ? bf16x2_to_f16x2_sat(x0[ks].y) : 0u;
            qf[ks][3] = v1 ? bf16x2_to_f16x2_sat(x1[ks].y) : 0u;
        }
    }
}
template <bool kSplit128 = false, typename F>
__device__ __forceinline__ void load_q_frags(const Params &p, int b, int w, int g, int t, uint32_t (&qf)[9][4], F between)
{
    if (p.q_fp8) load_q_frags_t<true, kSplit128>(p, b, w, g, t, qf, between);
    else load_q_frags_t<false, kSplit128>(p, b, w, g, t, qf, between);
}

// fp8 QK^T (kConv & kConvQ8, fp8 query only): the 576 dims are 18 k-steps of 32 for
// mma.m16n8k32.e4m3, split 5/5/4/4 over the warps (q8_first_step), in the MMA's own k order:
// a K fragment is two 4-byte loads of a key row, dims [32s + 4t, +4) and [32s + 16 + 4t, +4),
// the f16 path's conflict-free pattern (one 8-byte load of 8 consecutive dims would conflict
// 2-way with this swizzle), and qf[ks] = {row g dims 32s + 4t.., row g+8 the same, row g dims
// 32s + 16 + 4t.., row g+8 the same}. Products of e4m3 values are exact in the float32
// accumulator.
__device__ __forceinline__ int q8_first_step(int w) { return w < 2 ? 5 * w : 4 * w + 2; }
__device__ __forceinline__ int q8_steps(int w) { return w < 2 ? 5 : 4; }
template <typename F>
__device__ __forceinline__ void load_q8_frags(const Params &p, int b, int w, int g, int t, uint32_t (&qf)[5][4], F between)
{
    const bool v0 = g < p.rows, v1 = g + 8 < p.rows;
    const int s0 = q8_first_step(w), ns = q8_steps(w);
    const uint8_t *q = (const uint8_t *)p.q;
    const size_t e0 = ((size_t)b * p.rows + min(g, p.rows - 1)) * kDqk + 4 * t;
    const size_t e1 = ((size_t)b * p.rows + min(g + 8, p.rows - 1)) * kDqk + 4 * t;
    uint2 x0[5], x1[5]; // .x: dims [32s + 4t, +4), .y: [32s + 16 + 4t, +4)
#pragma unroll
    for (int ks = 0; ks < 5; ks++) {
        const int st = 32 * (s0 + min(ks, ns - 1)); // a 4-step warp reloads its last step
        x0[ks].x = __ldg(reinterpret_cast<const uint32_t *>(q + e0 + st));
        x0[ks].y = __ldg(reinterpret_cast<const uint32_t *>(q + e0 + st + 16));
        x1[ks].x = __ldg(reinterpret_cast<const uint32_t *>(q + e1 + st));
        x1[ks].y = __ldg(reinterpret_cast<const uint32_t *>(q + e1 + st + 16));
    }
    between();
#pragma unroll
    for (int ks = 0; ks < 5; ks++) {
        qf[ks][0] = v0 ? x0[ks].x : 0u;
        qf[ks][1] = v1 ? x1[ks].x : 0u;
        qf[ks][2] = v0 ? x0[ks].y : 0u;
        qf[ks][3] = v1 ? x1[ks].y : 0u;
    }
}
__device__ __forceinline__ void mma16832_e4m3(float *d, const uint32_t *a, uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// kConvW8 (fp8 query): S^T = K Q^T as wgmma, A = the fp8 key tile of the stage (64 keys x 576,
// K-major as loaded), B = the fp8 query tile (16 rows, K-major): 18 k-steps of 32, no K
// conversion and no mma.sync for QK^T. The accumulator holds S^T: d[4j + e] is key
// 16 w + g + 8 (e >> 1), query row 8 j + 2 t + (e & 1).
__device__ __forceinline__ void wgmma_m64n16k32_e4m3(float (&d)[8], uint64_t da, uint64_t db, int accumulate)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n16k32.f32.e4m3.e4m3 "
                 MLA_WG_REGS8 ", %8, %9, p, 1, 1;\n}\n"
                 : MLA_WG_ACC8(d)
                 : "l"(da), "l"(db), "r"(accumulate));
}
// Descriptor of k-step ks (32 dims) of a tile of R rows in stw_off's layout.
template <int R> __device__ __forceinline__ uint64_t w8_desc(uint32_t tile, int ks)
{
    using mla_sm90::smem_desc;
    return ks < 16 ? smem_desc(tile + (uint32_t)((ks >> 2) * (R * 128) + (ks & 3) * 32), 16, 1024, 1)
                   : smem_desc(tile + (uint32_t)(4 * R * 128 + (ks - 16) * 32), 16, 512, 2);
}
// The fp8 query rows [row0, row0 + 16) of request b into the query tile (rows >= p.rows zero):
// 576 chunks of 16 bytes, all loads issued before `between` runs, stored after it.
template <typename F>
__device__ __forceinline__ void load_q8_tile(const Params &p, int b, uint8_t *sQ, F between, int row0 = 0)
{
    constexpr int kChunks = kM * 36, kIt = (kChunks + kNT - 1) / kNT;
    const uint8_t *q = (const uint8_t *)p.q + ((size_t)b * p.rows + row0) * kDqk;
    uint4 x[kIt];
#pragma unroll
    for (int i = 0; i < kIt; i++) {
        const int c = (int)threadIdx.x + kNT * i, r = c / 36;
        x[i] = make_uint4(0, 0, 0, 0);
        if (c < kChunks && row0 + r < p.rows) x[i] = __ldg(reinterpret_cast<const uint4 *>(q + (size_t)c * 16));
    }
    between();
#pragma unroll
    for (int i = 0; i < kIt; i++) {
        const int c = (int)threadIdx.x + kNT * i;
        if (c < kChunks) *reinterpret_cast<uint4 *>(sQ + stw_off<kM>(c / 36, c % 36)) = x[i];
    }
}

// Four e4m3 bytes to two f16x2 words: with kCvt by the hardware conversion (exact values,
// 1 instruction per pair), else by integer bit moves (values x 2^-8, ~4 instructions per
// pair; see decode_v1_mma.cuh). kScaleK / kScaleV undo the factor.
template <bool kCvt, bool kH1 = false> __device__ __forceinline__ void conv4(uint32_t w, uint32_t &lo, uint32_t &hi)
{
    if constexpr (kCvt && kH1) {
        mla_decode_ws::e4m3x4_to_f16x4(w, lo, hi); // halves as 16-bit operands: no shift
    } else if constexpr (kCvt) {
        lo = e4m3x2_to_f16x2((uint16_t)(w & 0xffffu));
        hi = e4m3x2_to_f16x2((uint16_t)(w >> 16));
    } else {
        e4m3x4_to_f16x4_scaled(w, lo, hi);
    }
}

// kConv picks the conversion per operand: bit 0 set, K by cvt; bit 1 set, V by cvt; a clear
// bit uses the integer bit moves (x 2^-8, undone in the scores or the output). Bit 2
// (kConvQ8, fp8 query only): no K conversion, QK^T in e4m3 MMAs. Bit 3 (kConvW8, fp8 query,
// 64-key blocks): no K conversion, S^T = K Q^T as wgmma from a stage in wgmma's layout. The
// launcher instantiates kConvCvt (with the layout bits below), kConvAlu, kConvQ8 | kConvCvtV
// and kConvW8 | kConvCvtV; the mixed K/V forms measured slower (bench/NOTES.md, 2026-12-03).
constexpr int kConvAlu = 0, kConvCvtK = 1, kConvCvtV = 2, kConvCvt = 3, kConvQ8 = 4, kConvW8 = 8;
// Layout and instruction-count bits: kConvPad, the padded stage rows (st8p_off); kConvH1,
// the cvt conversion fed the high half of a word as a 16-bit operand (no shift).
constexpr int kConvPad = 32, kConvH1 = 64;
// kConvTma: the stage filled by TMA (issue_block_tma) in stw_off's swizzled layout, waited on
// per-stage mbarriers; warp w's QK^T dims are [128w, +128) and rope [512 + 16w, +16)
// (warp_dim<true>), so that each warp's K loads stay in one 128-byte column block.
constexpr int kConvTma = 128;

template <int kConv, int kBN>
__global__ void __launch_bounds__(kNT, 2) decode_fp8_m16_kernel(const __grid_constant__ Params p)
{
    constexpr bool kCvtK = (kConv & 1) != 0, kCvtV = (kConv & 2) != 0, kQ8 = (kConv & kConvQ8) != 0;
    constexpr bool kW8 = (kConv & kConvW8) != 0;
    constexpr bool kTma = (kConv & kConvTma) != 0;
    constexpr bool kPad = (kConv & kConvPad) != 0 && !kW8 && !kTma, kH1 = (kConv & kConvH1) != 0;
    static_assert(!kTma || (!kW8 && !kQ8), "the TMA form converts K");
    static_assert(!kW8 || kBN == 64, "the wgmma form takes 64 keys per block (M = 64)");
    using C = V2Cfg<kBN, kPad>;
    constexpr int kNS = C::NS, kSRow = C::SRow, kStageBytes = C::kStageBytes;
    constexpr float kScaleK = kCvtK || kQ8 || kW8 ? 1.0f : kFp8TileScale, kScaleV = kCvtV ? 1.0f : kFp8TileScale;
    extern __shared__ __align__(128) uint8_t smem_raw[];
    uint8_t *smem = smem_raw;
    if constexpr (kW8 || kTma) { // 1024-byte aligned base for the swizzled tiles (kSmemW8/kSmemTma have the slack)
        const uint32_t a = smem_u32(smem_raw);
        smem += ((a + 1023u) & ~1023u) - a;
    }
    uint8_t *sStage = smem + C::offStage;
    float *sS = reinterpret_cast<float *>(smem + C::offS);
    uint8_t *sP = smem + C::offP;
    float *sRedMax = reinterpret_cast<float *>(smem + C::offRedMax);
    float *sRedSum = reinterpret_cast<float *>(smem + C::offRedSum);
    int *sFlags = reinterpret_cast<int *>(smem + C::offFlags);

    const int part = blockIdx.x;
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
#ifdef MLA_DECODE_TRACE
    const unsigned long long tr_entry = mla_trace_now();
    unsigned long long tr_issued = 0, tr_first = 0;
    int tr_blocks = 0;
#endif
    // Before waiting for the scheduler (none of this reads its plan): the tensor maps and
    // the stage barriers, off the path from the plan to the first copy.
    const uint32_t barBase = smem_u32(smem + C::offBar); // kTma: one mbarrier per stage
    if constexpr (kTma) {
        if (tid == 0) {
            mla_sm90::tma_prefetch_map(&p.kv_tma[0]);
            mla_sm90::tma_prefetch_map(&p.kv_tma[1]);
            for (int i = 0; i < kNS; i++) mla_sm90::mbar_init(barBase + 8u * i, kNT / 32); // issue_block_tma
            asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
        }
        __syncthreads();
    }
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#ifdef MLA_DECODE_TRACE
    const unsigned long long tr_waited = mla_trace_now();
#endif
    const int tau = *p.s.tau;
    const float qk_scale = p.scale_log2 * kScaleK;

    Cursor cons;
    const int seq0 = part_first_cursor(p, part, cons);
    if (cons.b >= p.batch) {
#ifdef MLA_DECODE_TRACE
        mla_trace_split_end(tr_entry, tr_waited, 0, 0, 0);
#endif
        return;
    }
    float o[16][4]; // n-tiles 4J + j of this warp's 128 dims (permuted, see header)
#pragma unroll
    for (int i = 0; i < 16; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    uint32_t qf[kQ8 ? 5 : kW8 ? 1 : 9][4]; // Q fragments of this warp's k-steps (f16 k16, or e4m3 k32)
    // Q fragments of request b (kW8: its query tile); `between` runs while the loads are in flight.
    auto load_q = [&](int b, auto between) {
        if constexpr (kW8) load_q8_tile(p, b, smem + C::offQ8, between);
        else if constexpr (kQ8) load_q8_frags(p, b, w, g, t, qf, between);
        else load_q_frags<kTma>(p, b, w, g, t, qf, between);
    };
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
    int lim_row[2] = {0, 0};
    int lim_min = 0, cur_seq = 0;
    // Rows' key limits: lim_row for this thread's rows g and g + 8, lim_min the smallest over
    // the CTA's rows (the request's first token).
    auto set_limits = [&](int seq) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int gr = g + 8 * h;
            lim_row[h] = p.causal ? seq - p.q_len + min(gr, p.rows - 1) / p.heads + 1 : seq;
        }
        lim_min = p.causal ? seq - p.q_len + 1 : seq;
        cur_seq = seq;
    };
    // Block i into stage s (kTma: one TMA box per warp and column block, else every thread's
    // cp.async).
    auto issue = [&](int s, const Cursor &c, const Pref &f) {
        if constexpr (kTma) issue_block_tma<kBN>(p, c, f, smem_u32(sStage + s * kStageBytes), &sFlags[s], barBase + 8u * s);
        else issue_block_v2<kBN, kW8, kPad>(p, c, f, sStage + s * kStageBytes, &sFlags[s]);
    };
    // The first request's Q is loaded together with the first block's page indices (its
    // seq_len came with the start record) and converted before the prologue's KV copies are
    // issued: issued after them, the Q loads queued behind the copies (15.6% of the stall
    // samples at batch 1). (Keeping the raw Q in registers across the copies instead spilled
    // at 64-key blocks.)
    Cursor prod = cons;
    Pref pref;
    load_q(cons.b, [&] { pref = prefetch_block_seq<kBN>(p, prod, seq0); });
    set_limits(seq0);
    int nprod = 0;
    for (; nprod < kNS - 1; nprod++) {
        issue(nprod, prod, pref);
        cursor_next(p, part, tau, prod);
        pref = prefetch_block<kBN>(p, prod);
    }
    bool new_req = false;
    const uint32_t pbase = smem_u32(sP);
#ifdef MLA_DECODE_TRACE
    tr_issued = mla_trace_now();
#endif

    for (int j = 0; cons.b < p.batch; j++) {
        const int stage = j % kNS;
        if (new_req) {
            int seq;
            load_q(cons.b, [&] { seq = p.s.seq_eff[cons.b]; });
            set_limits(seq);
            new_req = false;
        }
        // Blocks j .. j+kNS-2 are in flight; wait for block j. One barrier then serves both
        // "block j visible" and "block j-1 fully consumed" (its stage, sS, sP), and block
        // j+kNS-1 goes into block j-1's stage after it.
        if constexpr (kTma) mla_sm90::mbar_wait(barBase + 8u * stage, (uint32_t)(j / kNS) & 1u);
        else cp_async_wait<kNS - 2>();
        if constexpr (kW8) mla_decode_v3::fence_proxy_async(); // stage and query stores -> wgmma
        __syncthreads();
#ifdef MLA_DECODE_TRACE
        if (j == 0) tr_first = mla_trace_now();
        tr_blocks++;
#endif
        issue(nprod % kNS, prod, pref);
        cursor_next(p, part, tau, prod);
        pref = prefetch_block<kBN>(p, prod);
        nprod++;
        const int pmask = sFlags[stage];
        const uint8_t *st = sStage + stage * kStageBytes;
        if constexpr (kTma) {
            // V bytes of rows that were not loaded (invalid page, wholly past seq_len) or lie
            // past seq_len -> 0: stale bytes there could be NaN patterns, which P = 0 does not
            // cancel. CTA-uniform; only a request's last block and bad pages take it.
            const int key0 = cons.blk * kBN;
            const int full_mask = kBN > p.page_size ? 3 : 1;
            if (key0 + kBN > cur_seq || pmask != full_mask) {
                for (int i = tid; i < kBN * 32; i += kNT) {
                    const int r = i >> 5, cb = (i >> 3) & 3, c16 = i & 7;
                    const bool ok = key0 + r < cur_seq && ((pmask >> (kBN > p.page_size ? r >> 5 : 0)) & 1);
                    if (!ok) *reinterpret_cast<uint4 *>(const_cast<uint8_t *>(st) + cb * kBN * 128 + r * 128 + c16 * 16) = make_uint4(0, 0, 0, 0);
                }
                mla_decode_v3::fence_proxy_async(); // before a later TMA rewrites these bytes
                __syncthreads();
            }
        }
#ifdef MLA_V2_LOAD_ONLY // experiment builds only (bench/NOTES.md): the load pipeline without the math
        if (pmask >= 0) {
            const bool last = cons.blk + 1 >= cons.hi;
            cursor_next(p, part, tau, cons);
            new_req = last;
            continue;
        }
#endif

        // ---- partial S over this warp's dims, all 32 keys ----
        float sp[C::NTK][4];
#pragma unroll
        for (int i = 0; i < C::NTK; i++) sp[i][0] = sp[i][1] = sp[i][2] = sp[i][3] = 0.f;
        if constexpr (kW8) {
            // S^T of the whole block in one wgmma chain per 4 k-steps: fp8 tensor cores keep
            // fewer accumulator bits than float32 (DeepSeek-V3 report: ~14), so each 128 dims
            // start a fresh accumulator and the five are added in float32.
            using namespace mla_sm90;
            const uint32_t aSt = smem_u32(st), aQ8 = smem_u32(smem + C::offQ8);
            float acc[5][8];
#pragma unroll
            for (int c = 0; c < 5; c++) mla_decode_v3::acc_fence(acc[c]);
            wgmma_fence();
#pragma unroll
            for (int ks = 0; ks < 18; ks++)
                wgmma_m64n16k32_e4m3(acc[ks >> 2], w8_desc<kBN>(aSt, ks), w8_desc<kM>(aQ8, ks), (ks & 3) != 0);
            wgmma_commit();
            wgmma_wait<0>();
#pragma unroll
            for (int c = 0; c < 5; c++) mla_decode_v3::acc_fence(acc[c]);
#pragma unroll
            for (int e = 0; e < 8; e++) {
                const float v = ((acc[0][e] + acc[1][e]) + (acc[2][e] + acc[3][e])) + acc[4][e];
                const int row = 8 * (e >> 2) + 2 * t + (e & 1), key = 16 * w + g + 8 * ((e >> 1) & 1);
                sS[row * kSRow + key] = v;
            }
        } else if constexpr (kQ8) {
            const int s0 = q8_first_step(w), ns = q8_steps(w);
#pragma unroll
            for (int ks = 0; ks < 5; ks++) {
                if (ks >= ns) break; // warp-uniform: warps 2, 3 own 4 steps
                const int ch = 2 * (s0 + ks);
#pragma unroll
                for (int nt = 0; nt < C::NTK; nt++) {
                    const int r = nt * 8 + g;
                    const uint32_t k0 = *reinterpret_cast<const uint32_t *>(st + stage_off<false, kPad, kBN>(r, ch) + 4 * t);
                    const uint32_t k1 = *reinterpret_cast<const uint32_t *>(st + stage_off<false, kPad, kBN>(r, ch + 1) + 4 * t);
                    mma16832_e4m3(sp[nt], qf[ks], k0, k1);
                }
            }
        } else {
#pragma unroll
            for (int ks = 0; ks < 9; ks++) {
                const int ch = 9 * w + ks;
#pragma unroll
                for (int nt = 0; nt < C::NTK; nt++) {
                    const int r = nt * 8 + g;
                    uint32_t koff;
                    if constexpr (kTma) // stw_off<kBN>(r, warp_dim<true>(w, ks) / 16) + 4t, spelled out per k-step
                        koff = ks < 8 ? (uint32_t)(w * kBN * 128 + nt * 1024) + ((uint32_t)(g * 128 + (g << 4) + 4 * t) ^ (uint32_t)(ks << 4))
                                      : (uint32_t)(4 * kBN * 128 + nt * 512 + g * 64 + ((w ^ ((g >> 1) & 3)) << 4) + 4 * t);
                    else
                        koff = stage_off<false, kPad, kBN>(r, ch) + 4 * t;
                    const uint32_t kw = *reinterpret_cast<const uint32_t *>(st + koff);
                    uint32_t b0, b1;
                    conv4<kCvtK, kH1>(kw, b0, b1);
                    mma16816<true>(sp[nt], qf[ks], b0, b1);
                }
            }
        }
#pragma unroll
        for (int nt = 0; nt < (kW8 ? 0 : C::NTK); nt++) {
            *reinterpret_cast<float2 *>(sS + (w * kM + g) * kSRow + nt * 8 + 2 * t) = make_float2(sp[nt][0], sp[nt][1]);
            *reinterpret_cast<float2 *>(sS + (w * kM + g + 8) * kSRow + nt * 8 + 2 * t) = make_float2(sp[nt][2], sp[nt][3]);
        }
        __syncthreads();
        // warp w now owns keys [w * BN/4, +BN/4) (NTW n-tiles): sum the four partials
        float s[C::NTW][4];
#pragma unroll
        for (int u = 0; u < C::NTW; u++) {
            s[u][0] = s[u][1] = s[u][2] = s[u][3] = 0.f;
            const int col = (w * C::NTW + u) * 8 + 2 * t;
#pragma unroll
            for (int v = 0; v < (kW8 ? 1 : 4); v++) { // kW8: one full S, no partials
                const float2 a = *reinterpret_cast<const float2 *>(sS + (v * kM + g) * kSRow + col);
                const float2 c = *reinterpret_cast<const float2 *>(sS + (v * kM + g + 8) * kSRow + col);
                s[u][0] += a.x;
                s[u][1] += a.y;
                s[u][2] += c.x;
                s[u][3] += c.y;
            }
        }

        // ---- mask, scale, row max ----
        const int key0 = cons.blk * kBN;
        const int page0 = key0 >> p.page_shift;
        float mx[2] = {-INFINITY, -INFINITY};
        // Blocks inside every row's key range on valid pages (most blocks) need no mask.
        const bool full = key0 + kBN <= lim_min && pmask == (kBN > p.page_size ? 3 : 1);
#pragma unroll
        for (int u = 0; u < C::NTW; u++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int kl = (w * C::NTW + u) * 8 + 2 * t + (e & 1);
                const bool valid = full || (key0 + kl < lim_row[e >> 1] &&
                                            ((pmask >> (((key0 + kl) >> p.page_shift) - page0)) & 1));
                const float v = valid ? s[u][e] * qk_scale : -INFINITY;
                s[u][e] = v;
                mx[e >> 1] = fmaxf(mx[e >> 1], v);
            }
#pragma unroll
        for (int h = 0; h < 2; h++) {
            mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
            mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
        }
        if (t == 0) {
            sRedMax[w * kM + g] = mx[0];
            sRedMax[w * kM + g + 8] = mx[1];
        }
        __syncthreads();
        float alpha[2], ref[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            float m = m_run[h];
#pragma unroll
            for (int v = 0; v < 4; v++) m = fmaxf(m, sRedMax[v * kM + g + 8 * h]);
            ref[h] = m == -INFINITY ? 0.f : m;
            alpha[h] = fast_exp2(m_run[h] - ref[h]);
            m_run[h] = m;
        }
        l_run[0] *= alpha[0];
        l_run[1] *= alpha[1];
#pragma unroll
        for (int u = 0; u < C::NTW; u++) {
            const float p0 = fast_exp2(s[u][0] - ref[0]), p1 = fast_exp2(s[u][1] - ref[0]);
            const float p2 = fast_exp2(s[u][2] - ref[1]), p3 = fast_exp2(s[u][3] - ref[1]);
            l_run[0] += p0 + p1;
            l_run[1] += p2 + p3;
            const int kc = w * C::NTW + u; // 16-byte chunk of the P row
            *reinterpret_cast<uint32_t *>(sP + p_off<kBN>(g, kc) + 4 * t) = pack2<true>(p0, p1);
            *reinterpret_cast<uint32_t *>(sP + p_off<kBN>(g + 8, kc) + 4 * t) = pack2<true>(p2, p3);
        }
        // Skipped when no row of the warp changed its maximum (alpha exactly 1: most blocks).
        if (__any_sync(0xffffffffu, alpha[0] != 1.0f || alpha[1] != 1.0f)) {
#pragma unroll
            for (int i = 0; i < 16; i++) {
                o[i][0] *= alpha[0];
                o[i][1] *= alpha[0];
                o[i][2] *= alpha[1];
                o[i][3] *= alpha[1];
            }
        }
        __syncthreads();

        // ---- O += P V, V fragments from fp8 rows interleaved in registers ----
#pragma unroll
        for (int kk = 0; kk < kBN / 16; kk++) {
            uint32_t a[4];
            ldsm_x4(a, pbase + p_off<kBN>(lane & 15, 2 * kk + (lane >> 4)));
            const int r0 = kk * 16 + 2 * t;
#pragma unroll
            for (int J = 0; J < 4; J++) {
                const int ch = 8 * w + 2 * J + (g >> 2), by = 4 * (g & 3);
                // kTma (stw_off's layout, column block w): rows r0 + {0, 8} share (r & 7) = 2t,
                // rows r0 + {1, 9} have 2t + 1.
                auto voff = [&](int r, int e) -> uint32_t {
                    if constexpr (kTma)
                        return (uint32_t)(w * kBN * 128 + r * 128 + ((((2 * J + (g >> 2)) ^ (2 * t + e))) << 4) + by);
                    else
                        return stage_off<kW8, kPad, kBN>(r, ch) + by;
                };
                const uint32_t w0 = *reinterpret_cast<const uint32_t *>(st + voff(r0, 0));
                const uint32_t w1 = *reinterpret_cast<const uint32_t *>(st + voff(r0 + 1, 1));
                const uint32_t w2 = *reinterpret_cast<const uint32_t *>(st + voff(r0 + 8, 0));
                const uint32_t w3 = *reinterpret_cast<const uint32_t *>(st + voff(r0 + 9, 1));
                uint32_t b0[4], b1[4];
                conv4<kCvtV, kH1>(__byte_perm(w0, w1, 0x5140), b0[0], b0[1]);
                conv4<kCvtV, kH1>(__byte_perm(w0, w1, 0x7362), b0[2], b0[3]);
                conv4<kCvtV, kH1>(__byte_perm(w2, w3, 0x5140), b1[0], b1[1]);
                conv4<kCvtV, kH1>(__byte_perm(w2, w3, 0x7362), b1[2], b1[3]);
#pragma unroll
                for (int jj = 0; jj < 4; jj++) mma16816<true>(o[4 * J + jj], a, b0[jj], b1[jj]);
            }
        }

        // ---- end of this request's piece ----
        const int b = cons.b;
        const bool last = cons.blk + 1 >= cons.hi;
        cursor_next(p, part, tau, cons);
        if (last) {
            float lsum[2];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                float v = l_run[h];
                v += __shfl_xor_sync(0xffffffffu, v, 1);
                v += __shfl_xor_sync(0xffffffffu, v, 2);
                lsum[h] = v;
            }
            if (t == 0) {
                sRedSum[w * kM + g] = lsum[0];
                sRedSum[w * kM + g + 8] = lsum[1];
            }
            __syncthreads();
            const int nsplit = p.s.num_splits[b];
            const int slot = p.s.slot_base[b] + part - p.s.first_part[b];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                float L = 0.f;
#pragma unroll
                for (int v = 0; v < 4; v++) L += sRedSum[v * kM + g + 8 * h];
                const float inv = L > 0.f ? kScaleV / L : 0.f;
                const float lse = L > 0.f ? (m_run[h] + log2f(L)) * 0.69314718055994531f : -INFINITY;
                const int gr = g + 8 * h;
                if (gr >= p.rows) continue;
                const size_t row = (size_t)b * p.rows + gr;
                // thread holds dims [128w + 32J + 8t, +8) of its row: o[4J + jj][2h + e] is
                // dim 128w + 32J + 8t + 4e + jj
                if (nsplit == 1) {
                    const float sc = inv * p.bmm2;
#pragma unroll
                    for (int J = 0; J < 4; J++) {
                        uint4 v;
                        v.x = pack2<false>(o[4 * J + 0][2 * h] * sc, o[4 * J + 1][2 * h] * sc);
                        v.y = pack2<false>(o[4 * J + 2][2 * h] * sc, o[4 * J + 3][2 * h] * sc);
                        v.z = pack2<false>(o[4 * J + 0][2 * h + 1] * sc, o[4 * J + 1][2 * h + 1] * sc);
                        v.w = pack2<false>(o[4 * J + 2][2 * h + 1] * sc, o[4 * J + 3][2 * h + 1] * sc);
                        *reinterpret_cast<uint4 *>(p.out + row * kDv + 128 * w + 32 * J + 8 * t) = v;
                    }
                    if (p.lse && w == 0 && t == 0) p.lse[row] = lse;
                } else {
                    // float16 partials (decode_split.cuh): |O / l| <= 448 for an fp8 cache.
                    const size_t prow = (size_t)slot * p.rows + gr;
                    uint16_t *dst = reinterpret_cast<uint16_t *>(p.s.part_o) + prow * kDv + 128 * w + 8 * t;
#pragma unroll
                    for (int J = 0; J < 4; J++) {
                        uint4 v;
                        v.x = pack2<true>(o[4 * J + 0][2 * h] * inv, o[4 * J + 1][2 * h] * inv);
                        v.y = pack2<true>(o[4 * J + 2][2 * h] * inv, o[4 * J + 3][2 * h] * inv);
                        v.z = pack2<true>(o[4 * J + 0][2 * h + 1] * inv, o[4 * J + 1][2 * h + 1] * inv);
                        v.w = pack2<true>(o[4 * J + 2][2 * h + 1] * inv, o[4 * J + 3][2 * h + 1] * inv);
                        *reinterpret_cast<uint4 *>(dst + 32 * J) = v;
                    }
                    if (w == 0 && t == 0) p.s.part_lse[prow] = lse;
                }
            }
#pragma unroll
            for (int i = 0; i < 16; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
            m_run[0] = m_run[1] = -INFINITY;
            l_run[0] = l_run[1] = 0.f;
            new_req = true;
        }
    }
#ifdef MLA_DECODE_TRACE
    mla_trace_split_end(tr_entry, tr_waited, tr_issued, tr_first, tr_blocks);
#endif
    cp_async_wait<0>();
}

} // namespace mla_decode_v2
