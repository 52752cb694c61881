// Split-KV MLA decode, versions 6, 7 and 9: FlashMLA-style "seesaw" of two math warpgroups
// fed by a producer warpgroup, H * q_len >= 64 (MLA_DECODE_VARIANT=v6 | v7).
//   v6 (kProdRegs, fp8 cache): v5's register producer (global -> registers -> fp16 tile).
//     Correct, but 8-9% slower than v3 on an H100: the producer cannot keep enough of a block
//     in flight in 56 registers (bench/NOTES.md "Decode", v6/v7).
//   v7 (kProdBulk, the default for an fp8 cache): the raw fp8 block is bulk-copied into the
//     freed tile and converted in place; 1.18-1.28x faster than v3 (same run, H100).
//   v9 (kProdTmaBf16, the default for a bf16 cache): no conversion; lane 0 of each producer
//     warp loads its column blocks of each block into the freed tile with TMA boxes in the
//     wgmma layout (64 rows when the block's halves are adjacent cache rows), one barrier per
//     column block, the tile handed back in halves; bf16 MMAs. 1.17-1.36x faster than v3 with
//     one barrier each way per tile, then 3-9% from the halves (two H200 A/Bs, bench/NOTES.md).
// ptxas (-Xptxas -v, setmaxnreg 56/224): math warpgroups without spills; producer 4 bytes (v6),
// 20 bytes (v7). A request's first P V chain overwrites O (scale-d = 0): zeroing o[128] at
// each request end spilled ~1 KB.
//
// Why: v3 and v5 run S (smem-bound m64n32: 1728 cycles per block, bench/probes), softmax
// and P V strictly in turn; the tensor chains are ~2750 of ~6000 cycles per block. Here the
// key blocks are taken in pairs (a, b) of one request, tile 0 holds a and tile 1 holds b:
//   warpgroup 0: S_a = Q K_a^T (m64n64k16: full rate) -> m0 = max(m, rowmax S_a),
//     scale0, P_a = exp2(S_a - m0) into tile 0's rope column block -> signal A -> O_L *= scale0,
//     O_L += P_a V_a[:, 0:256] -> wait B -> O_L *= scale1, O_L += P_b V_b[:, 0:256].
//   warpgroup 1: S_b = Q K_b^T -> wait A -> O_R *= scale0, issue O_R += P_a
//     V_a[:, 256:512] -> (under it) m1 = max(m0, rowmax S_b), scale1, P_b into tile 1's rope
//     block (v7: a block of its own, V6Cfg::offPb) -> signal B -> wait for the P_a V_a chain
//     -> O_R *= scale1, O_R += P_b V_b[:, 256:512].
// So one warpgroup's softmax runs while the other's MMAs do, and S runs at the tensor rate.
// Row sums: warpgroup 0 keeps l0 = (l0 scale0 + sum P_a) scale1, warpgroup 1 keeps
// l1 = l1 scale0 scale1 + sum P_b; L = l0 + l1 at the end. A pair without b (a request piece
// with an odd block count) skips S_b, P_b and its P V chains (scale1 = 1).
// Producers: each block into tile 0 when it opens a pair, tile 1 otherwise; tile 0 is
// handed back mid-pair, tile 1 at its end.
#pragma once
#include "ws_common.cuh"

#include <stdint.h>

#include "timeline.cuh" // MLA_SEESAW_TL

namespace mla_decode_v6 {

using namespace mla_decode_ws; // producer helpers, wgmma m64n64 (ws_common.cuh)

using mla_decode_v1::Params;
using mla_decode_v1::Cursor;
using mla_decode_v1::Pref;
using mla_decode_v1::kDqk;
using mla_decode_v1::kDv;
using mla_decode_v3::blk_off;
using mla_decode_v3::kBlk;

constexpr int kM = 64;          // query rows per CTA
constexpr int kNT = 384;        // math warpgroups 0, 1 + producer warpgroup 2
constexpr int kTile = kBN * kDqk * 2;
// Named barriers (0 is __syncthreads): 1 both math warpgroups; 2 "A" (0 -> 1: m0, scale0,
// P_a ready); 3 "B" (1 -> 0: m1, scale1, P_b ready); 4, 5 inside warpgroup 0, 1.
constexpr int kBarMath = 1, kBarA = 2, kBarB = 3, kBarWg = 4;
constexpr int kBarProd = 6; // the producer warpgroup (bulk producer's two conversion phases)
// Register split after setmaxnreg: must add up to the launch allocation (168 x 384).
constexpr int kRegProducer = 56;
constexpr int kRegMath = 224;
// v9: one "full" barrier per 64-column block of each tile, and each tile handed back in two
// halves (produce_tma_bf16), so the next block's first column blocks load while the other
// warpgroup's P V still reads the rest. With one barrier each way per tile, the math
// warpgroups' wait for a tile held 25% of the stall samples (ncu, H200, 2026-12-04); the
// split barriers alone were 0.5-2% slower, with the halves 3-9% faster (bench/NOTES.md).
constexpr int kColBlocks = kDqk / 64;
__device__ __forceinline__ uint32_t col_bar(uint32_t aBar, int T, int cb)
{
    return aBar + 48u + 8u * (uint32_t)(T * kColBlocks + cb);
}
// v9's hand-back of tile T: "empty lo" (column blocks 0-3) in the empty[T] slot, "empty hi"
// (4-8) in the raw[T] slot, which only the bulk producer (v7) uses otherwise.
__device__ __forceinline__ uint32_t empty_lo_bar(uint32_t aBar, int T) { return aBar + 8u * (uint32_t)(2 + T); }
__device__ __forceinline__ uint32_t empty_hi_bar(uint32_t aBar, int T) { return aBar + 8u * (uint32_t)(4 + T); }
// v7: warpgroup 0 is done with tile 1 (its V half, column blocks 0-3); in the col[1][0] slot,
// which only v9 uses otherwise. empty[1] then counts warpgroup 1 only (produce_bulk).
__device__ __forceinline__ uint32_t low_free_bar(uint32_t aBar) { return col_bar(aBar, 1, 0); }

struct V6Cfg {
    static constexpr int offQ = 0;
    static constexpr int offTile = offQ + kM * kDqk * 2;
    // v7: P of tile 1's block (P_b) has its own column block, so that the raw block after it
    // can land once warpgroup 1 is done with the tile (see produce_bulk)
    static constexpr int offPb = offTile + 2 * kTile;
    static constexpr int offPair = offPb + kBlk; // m0, scale0, m1, scale1 per row
    static constexpr int offRedSum = offPair + 4 * kM * 4;
    static constexpr int offFlags = offRedSum + 2 * kM * 4;
    // full[2], empty[2] (v9: empty lo), raw[2] (bulk producer; v9: empty hi), col[2][9] (v9;
    // v7 uses col[1][0] as low_free_bar)
    static constexpr int offBar = offFlags + 16;
    static constexpr int kSmem = offBar + 48 + 2 * kColBlocks * 8 + 1024; // + slack to align the base to 1024
    static_assert(offTile % 1024 == 0 && kTile % 1024 == 0 && offPb % 1024 == 0, "swizzle atoms");
    static_assert(kSmem <= 227 * 1024, "shared memory");
};

// ---------------------------------------------------------------- producer (warpgroup 2)

// The producer walks the blocks in cursor order; a block opens a pair (tile 0) unless the
// previous block opened one in the same request (tile 1). Most chunks are loaded before the
// wait for the tile, the next block's pages are prefetched into L2 before it.
__device__ __forceinline__ void produce(const Params &p, int part, int tau, Cursor c, uint32_t aTile, uint32_t aBar,
                                        int *sFlags)
{
    const int t = threadIdx.x - kMathThreads;
    Pref f = mla_decode_v1::prefetch_block<kBN>(p, c);
    int pos = 0;           // tile of block c
    uint32_t phases = 0;   // bit T: parity of tile T's next "empty" completion to wait for, ^1
    while (c.b < p.batch) {
        const SrcRow sr = source_row(p, c, f, t, t == 0);
        uint4 x0[3], x1[3], y[4], z[4], w[4];
        load_chunks<0, 3>(sr, x0);
        load_chunks<3, 3>(sr, x1);
        Cursor n = c;
        mla_decode_v1::cursor_next(p, part, tau, n);
        const int npos = pos == 0 && n.b == c.b ? 1 : 0;
        f = mla_decode_v1::prefetch_block<kBN>(p, n);
        const int T = pos;
        mla_sm90::mbar_wait(aBar + 8u * (2 + T), ((phases >> T) & 1u) ^ 1u);
        phases ^= 1u << T;
        uint32_t bases[4];
        {
            const int r = t >> 1, odd = t & 1;
            const uint32_t tile = aTile + (uint32_t)(T * kTile) + (uint32_t)(r * 128);
#pragma unroll
            for (int q = 0; q < 4; q++) bases[q] = tile + ((((q >> 1) * 4 + 2 * odd + (q & 1)) ^ (r & 7)) << 4);
        }
        store_chunks<0, 3>(x0, bases);
        load_chunks<6, 4>(sr, y);
        store_chunks<3, 3>(x1, bases);
        load_chunks<10, 4>(sr, z);
        store_chunks<6, 4>(y, bases);
        load_chunks<14, 4>(sr, w);
        store_chunks<10, 4>(z, bases);
        store_chunks<14, 4>(w, bases);
        if (t == 0) sFlags[T] = sr.ok;
        mla_decode_v3::fence_proxy_async(); // tile stores -> the math warpgroups' wgmma
        mbar_arrive(aBar + 8u * T);         // full[T]
        if (t == 0 && n.b < p.batch) {
            const int ok = mla_decode_v1::block_page_mask<kBN>(p, n.blk * kBN, f, false);
            const uint32_t page_bytes = (uint32_t)(p.page_size * kDqk);
            if (ok & 1) prefetch_l2(p.kv + (size_t)f.idx0 * page_bytes, page_bytes);
            if (ok & 2) prefetch_l2(p.kv + (size_t)f.idx1 * page_bytes, page_bytes);
        }
        c = n;
        pos = npos;
    }
}

// ---------------------------------------------------------------- bulk producer (v7)
// The producer above holds at most ~10 of a block's 18 chunks per thread in registers, so
// every block costs it one or two exposed global-load latencies (ncu: 75% of its stall
// samples long-scoreboard, the math warpgroups 36% waiting for a full tile). This one moves
// the raw fp8 block into the upper half of the freed tile with bulk copies (no registers,
// issued the moment the tile is handed back) and converts it to fp16 in place.
// In place: the raw block is rows of 576 bytes at kRawOff = 36864; column blocks 0..3 of
// the fp16 tile end at 32768, below it, so they are written straight away; column blocks
// 4..8 overlap the raw block, so every thread first reads its remaining raw chunks into
// registers, then the producer warpgroup synchronises, then they are written.
constexpr int kRawOff = kTile - kBN * kDqk;
static_assert(4 * kBlk <= kRawOff, "column blocks 0..3 lie below the raw block");

__device__ __forceinline__ uint4 ld_shared16(uint32_t addr)
{
    uint4 v;
    asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"(addr)
                 : "memory");
    return v;
}

// Thread 0: key block c into tile T as raw fp8, one bulk copy per valid page, counted on
// raw[T]; its valid pages and row limit into sFlags[T], sFlags[2 + T] (read by the
// conversion, and sFlags[T] by the math warpgroups).
__device__ __forceinline__ void issue_raw(const Params &p, const Cursor &c, uint32_t aT, uint32_t rawBar, int *sFlags,
                                          int T)
{
    const Pref f = mla_decode_v1::prefetch_block<kBN>(p, c);
    const int key0 = c.blk * kBN;
    const int ok = mla_decode_v1::block_page_mask<kBN>(p, key0, f, true);
    sFlags[T] = ok;
    sFlags[2 + T] = f.seq - key0;
    const uint32_t page_bytes = (uint32_t)(p.page_size * kDqk);
    mla_decode_v3::fence_proxy_async(); // earlier generic accesses to the tile before the async writes
    mla_sm90::mbar_arrive_expect_tx(rawBar, page_bytes * (uint32_t)__popc(ok));
    if (ok & 1) mla_sm90::bulk_copy_g2s(aT + kRawOff, p.kv + (size_t)f.idx0 * page_bytes, page_bytes, rawBar);
    if (ok & 2)
        mla_sm90::bulk_copy_g2s(aT + kRawOff + page_bytes, p.kv + (size_t)f.idx1 * page_bytes, page_bytes, rawBar);
}

// Raw chunks of column blocks [G0, G0 + N) of rows R (x[2 i]) and R + 32 (x[2 i + 1]), zeros
// for invalid rows; rb: row R's first chunk of this thread.
template <int G0, int N>
__device__ __forceinline__ void load_raw(uint4 (&x)[2 * N], uint32_t rb, bool v0, bool v1)
{
#pragma unroll
    for (int i = 0; i < N; i++) {
        x[2 * i] = v0 ? ld_shared16(rb + 64 * (G0 + i)) : make_uint4(0, 0, 0, 0);
        x[2 * i + 1] = v1 ? ld_shared16(rb + 32 * kDqk + 64 * (G0 + i)) : make_uint4(0, 0, 0, 0);
    }
}

// Their fp16 values into column blocks [G0, G0 + N) of the tile (ob0, ob1: row R's two 16-byte
// positions in column block 0).
template <int G0, int N>
__device__ __forceinline__ void store_f16(const uint4 (&x)[2 * N], uint32_t ob0, uint32_t ob1)
{
#pragma unroll
    for (int k = 0; k < 2 * N; k++) {
        const uint32_t off = (uint32_t)((G0 + (k >> 1)) * kBlk) + ((k & 1) ? 32u * 128u : 0u);
        uint32_t w[8];
        e4m3x4_to_f16x4(x[k].x, w[0], w[1]);
        e4m3x4_to_f16x4(x[k].y, w[2], w[3]);
        e4m3x4_to_f16x4(x[k].z, w[4], w[5]);
        e4m3x4_to_f16x4(x[k].w, w[6], w[7]);
        st_shared16(ob0 + off, make_uint4(w[0], w[1], w[2], w[3]));
        st_shared16(ob1 + off, make_uint4(w[4], w[5], w[6], w[7]));
    }
}

// Converts the raw block of tile aT to the fp16 tile in place (rows past the limit or on
// invalid pages become zeros: a NaN there must not reach P V). Thread t: rows R = 2 s + h
// and R + 32, source chunks 4 g + j (g = column block), with s = t / 8, h = (t / 4) % 2,
// j = t % 4. A quarter warp reads 2 rows x 64 contiguous bytes (rows 576 bytes apart: the
// two halves of the banks) and writes the even, then the odd 16-byte positions of two rows
// (swizzle (u ^ R % 8)): no bank conflicts.
__device__ __forceinline__ void convert_in_place(uint32_t aT, int t, int ok, int lim, int page_shift)
{
    const int s = t >> 3, h = (t >> 2) & 1, j = t & 3;
    const int R = 2 * s + h;
    const bool v0 = R < lim && ((ok >> (R >> page_shift)) & 1);
    const bool v1 = R + 32 < lim && ((ok >> ((R + 32) >> page_shift)) & 1);
    const uint32_t rb = aT + (uint32_t)(kRawOff + R * kDqk + 16 * j);
    const uint32_t ob0 = aT + (uint32_t)(R * 128 + (((2 * j) ^ (R & 7)) << 4));
    const uint32_t ob1 = aT + (uint32_t)(R * 128 + (((2 * j + 1) ^ (R & 7)) << 4));
    {
        uint4 x[8];
        load_raw<0, 4>(x, rb, v0, v1);
        store_f16<0, 4>(x, ob0, ob1);
    }
    uint4 y[10];
    load_raw<4, 5>(y, rb, v0, v1);
    mla_decode_v1::named_bar(kBarProd, kNT - kMathThreads); // every raw read before any overwrite
    store_f16<4, 5>(y, ob0, ob1);
}

// Pairs as in produce(): an opener into tile 0, its partner (the next block, same request)
// into tile 1. Per pair: convert the opener, then the partner, as their raw blocks land;
// then, as each tile is handed back, issue the next pair's bulk copies into it. (Waiting for
// tile 0 before the partner is converted would deadlock: tile 0 is handed back only after
// warpgroup 1 has computed S of the partner.) Tile 1 is handed back in two steps: its raw
// region (column blocks 4.5-8) once warpgroup 1 is done with it (empty[1]; P_b lives in its
// own block), column blocks 0-3 once warpgroup 0 is (low_free_bar, waited before the
// conversion): tile 1's raw copy started at the pair's very end, and copy plus conversion
// (~1.1 + 0.8 us) was what warpgroup 1 waited for (v7 timeline, sixteenth session).
__device__ __forceinline__ void produce_bulk(const Params &p, int part, int tau, Cursor c, uint32_t aTile, uint32_t aBar,
                                             int *sFlags)
{
    const int t = threadIdx.x - kMathThreads;
    uint32_t ephase = 0; // bit T: parity of tile T's next "empty" completion to wait for, ^1
    uint32_t rphase = 0; // bit T: parity of raw[T]'s next completion
    uint32_t lphase = 0; // parity of low_free_bar's next completion to wait for, ^1
#ifdef MLA_SEESAW_TIMELINE
    int tl_issued = 0, tl_block = 0; // blocks issued, blocks converted (both in block order)
#endif
    // Every issue into tile T first waits for its previous occupant to be handed back (the
    // first wait of each tile returns at once: the phase before the first counts as done).
    auto issue = [&](const Cursor &x, int T) {
        mla_sm90::mbar_wait(aBar + 8u * (2 + T), ((ephase >> T) & 1u) ^ 1u);
        ephase ^= 1u << T;
        MLA_SEESAW_TL(t == 0, 2, 3, tl_issued); // tile free
        if (t == 0) issue_raw(p, x, aTile + (uint32_t)(T * kTile), aBar + 32u + 8u * T, sFlags, T);
        MLA_SEESAW_TL(t == 0, 2, 4, tl_issued); // raw copies issued
#ifdef MLA_SEESAW_TIMELINE
        tl_issued++;
#endif
    };
    auto issue_pair = [&](const Cursor &x) {
        issue(x, 0);
        Cursor y = x;
        mla_decode_v1::cursor_next(p, part, tau, y);
        if (y.b == x.b) issue(y, 1);
    };
    issue_pair(c);
    while (c.b < p.batch) {
        Cursor nb = c;
        mla_decode_v1::cursor_next(p, part, tau, nb);
        const bool has_b = nb.b == c.b;
#pragma unroll 1
        for (int T = 0; T < (has_b ? 2 : 1); T++) {
            MLA_SEESAW_TL(t == 0, 2, 0, tl_block); // before the wait for the raw block
            mla_sm90::mbar_wait(aBar + 32u + 8u * T, (rphase >> T) & 1u);
            rphase ^= 1u << T;
            MLA_SEESAW_TL(t == 0, 2, 1, tl_block); // raw block landed
            if (T == 1) { // column blocks 0-3 hold warpgroup 0's V half of tile 1's previous block
                mla_sm90::mbar_wait(low_free_bar(aBar), (lphase & 1u) ^ 1u);
                lphase ^= 1u;
            }
            convert_in_place(aTile + (uint32_t)(T * kTile), t, sFlags[T], sFlags[2 + T], p.page_shift);
            mla_decode_v3::fence_proxy_async(); // tile stores -> the math warpgroups' wgmma
            mbar_arrive(aBar + 8u * T);         // full[T]
            MLA_SEESAW_TL(t == 0, 2, 2, tl_block); // converted, full[T] arrived
#ifdef MLA_SEESAW_TIMELINE
            tl_block++;
            if (t == 0) mla_seesaw_tl_count(2, tl_block);
#endif
        }
        Cursor na = nb;
        if (has_b) mla_decode_v1::cursor_next(p, part, tau, na);
        if (na.b < p.batch) issue_pair(na);
        c = na;
    }
}

// ---------------------------------------------------------------- TMA producer (bf16 cache, v9)
// A bf16 block needs no conversion: the producer moves it into the freed tile in the wgmma
// layout with TMA boxes of 64 dims x 64 rows when the block's halves are adjacent cache rows,
// else x 32 rows per half (128-byte swizzle; Params::kv_tma[1] and [0] as decode.cu's
// encode_kv_maps_bf16 makes them), each column block counted on its own barrier col_bar(T,
// cb) (expected bytes plus one arrival). A tile is handed back in two halves:
// column blocks 0-3 when warpgroup 0's P V chain is done with it ("empty lo"), 4-8 when both
// are (4-7 are warpgroup 1's V, 8 holds P). Halves on an invalid page or wholly past seq_len
// are not loaded; the math warpgroups zero the V rows that were not loaded or lie past
// seq_len (zero_v_rows).
struct TmaRows {
    int row[2];     // first cache row of each 32-row half, -1: not loaded
    uint32_t bytes; // per column block
    int ok;         // block_page_mask
};

__device__ __forceinline__ TmaRows tma_rows(const Params &p, const Cursor &c, const Pref &f, bool report)
{
    TmaRows r;
    const int key0 = c.blk * kBN;
    r.ok = mla_decode_v1::block_page_mask<kBN>(p, key0, f, report);
    const bool two_pages = kBN > p.page_size; // page 32: half h is page h
    r.bytes = 0;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const bool valid = ((r.ok >> (two_pages ? h : 0)) & 1) && key0 + 32 * h < f.seq;
        const int idx = two_pages && h ? f.idx1 : f.idx0;
        r.row[h] = valid ? idx * p.page_size + (two_pages ? 0 : (key0 & (p.page_size - 1)) + 32 * h) : -1;
        r.bytes += valid ? 32u * 64u * 2u : 0u;
    }
    return r;
}

// Column block cb of tile T (at aT) from the rows in r: one 64-row box (Params::kv_tma[1])
// when the block's halves are adjacent cache rows, else one 32-row box per loaded half.
__device__ __forceinline__ void issue_col(const Params &p, const TmaRows &r, uint32_t aT, uint32_t aBar, int T, int cb)
{
    mla_decode_v3::fence_proxy_async(); // earlier generic accesses to the tile before the async writes
    const uint32_t cbar = col_bar(aBar, T, cb), dst = aT + (uint32_t)(cb * kBlk);
    mla_sm90::mbar_arrive_expect_tx(cbar, r.bytes); // completes at once when no half is loaded
    if (r.row[0] >= 0 && r.row[1] == r.row[0] + 32) {
        mla_sm90::tma_load_2d(dst, &p.kv_tma[1], 64 * cb, r.row[0], cbar);
        return;
    }
#pragma unroll
    for (int h = 0; h < 2; h++)
        if (r.row[h] >= 0) mla_sm90::tma_load_2d(dst + (uint32_t)(h * 32 * 128), &p.kv_tma[0], 64 * cb, r.row[h], cbar);
}

// Lane 0 of producer warp w: blocks paired into tiles as in produce(); the next block's page
// indices are loaded before the waits for its tile. Warp w issues column block w after "empty
// lo" and w + 4 after "empty hi" (warp 0 also 8): a TMA instruction costs its thread ~50-100
// cycles (bench/probes/tma_box_width.cu), and one thread issuing all 18 boxes of a tile kept
// the tile's last column block ~1 us behind its "empty" (v10 showed the same; fifteenth
// session). sFlags[T] is written by warp 0 once both warpgroups are done with the tile (the
// math reads it until then) and before its arrival on column block 4; S reads it after all
// nine column blocks.
__device__ __forceinline__ void produce_tma_bf16(const Params &p, int part, int tau, Cursor c, uint32_t aTile,
                                                 uint32_t aBar, int *sFlags, int w)
{
    mla_sm90::tma_prefetch_map(&p.kv_tma[0]);
    mla_sm90::tma_prefetch_map(&p.kv_tma[1]);
    Pref f = mla_decode_v1::prefetch_block<kBN>(p, c);
    int pos = 0;
    uint32_t ephase = 0; // bit T: parity of tile T's next "empty" completions to wait for, ^1
#ifdef MLA_SEESAW_TIMELINE
    int tl_block = 0;
#endif
    while (c.b < p.batch) {
        Cursor n = c;
        mla_decode_v1::cursor_next(p, part, tau, n);
        const Pref fn = mla_decode_v1::prefetch_block<kBN>(p, n);
        const int T = pos;
        const uint32_t par = ((ephase >> T) & 1u) ^ 1u;
        ephase ^= 1u << T;
        const TmaRows r = tma_rows(p, c, f, w == 0);
        const uint32_t aT = aTile + (uint32_t)(T * kTile);
        MLA_SEESAW_TL(w == 0, 2, 0, tl_block); // block's rows ready, before the waits
        mla_sm90::mbar_wait(empty_lo_bar(aBar, T), par);
        MLA_SEESAW_TL(w == 0, 2, 1, tl_block); // "empty lo": column blocks 0-3 free
        issue_col(p, r, aT, aBar, T, w);
        MLA_SEESAW_TL(w == 0, 2, 2, tl_block);
        mla_sm90::mbar_wait(empty_hi_bar(aBar, T), par);
        MLA_SEESAW_TL(w == 0, 2, 3, tl_block); // "empty hi": column blocks 4-8 free
        if (w == 0) sFlags[T] = r.ok;
        issue_col(p, r, aT, aBar, T, w + 4);
        if (w == 0) issue_col(p, r, aT, aBar, T, 8);
        MLA_SEESAW_TL(w == 0, 2, 4, tl_block);
#ifdef MLA_SEESAW_TIMELINE
        tl_block++;
        if (w == 0) mla_seesaw_tl_count(2, tl_block);
#endif
        pos = pos == 0 && n.b == c.b ? 1 : 0;
        f = fn;
        c = n;
    }
}

// ---------------------------------------------------------------- math warpgroups

__device__ __forceinline__ void bar_arrive(int id, int threads)
{
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// v9: V rows of the tile at aT that were not loaded (invalid page, half past seq_len) or lie
// past seq_len -> 0 in this warpgroup's columns [256 wg, +256), which only it reads: stale
// bytes there could be NaN patterns, which P = 0 does not cancel. Uniform over the warpgroup;
// only a request's last block and bad pages take it. Call after every read of those columns
// by the other warpgroup's S (the hand-off barriers order it).
__device__ __forceinline__ void zero_v_rows(uint32_t aT, int wg, int key0, int seq, int pmask, int page_size)
{
    const bool two_pages = kBN > page_size;
    if (key0 + kBN <= seq && pmask == (two_pages ? 3 : 1)) return;
    for (int i = (int)threadIdx.x & 127; i < kBN * 32; i += 128) {
        const int r = i >> 5, cb = 4 * wg + ((i >> 3) & 3);
        const bool ok = key0 + r < seq && ((pmask >> (two_pages ? r >> 5 : 0)) & 1);
        if (!ok) st_shared16(aT + (uint32_t)(cb * kBlk + r * 128 + (i & 7) * 16), make_uint4(0, 0, 0, 0));
    }
    mla_decode_v3::fence_proxy_async(); // zeros -> this warpgroup's wgmma and the next TMA writes
    mla_decode_v1::named_bar(kBarWg + wg, 128);
}

// O[:, 256 wg ..] += P V for the tile at aT: P at aP (the tile's rope column block, or v7's
// P_b block), V = its column blocks 4 wg .. 4 wg + 3 read N-major. pv_issue issues and commits
// the chain; O must not be touched until pv_wait (warpgroup 1 runs its softmax in between).
// fresh: the request's first chain
// overwrites O (scale-d = 0 on its first k-step) instead of O being zeroed by ordinary
// stores (128 of them per request end made ptxas spill).
template <bool kF16>
__device__ __forceinline__ void pv_issue(float (&o)[128], uint32_t aT, uint32_t aP, int wg, bool fresh)
{
    using namespace mla_sm90;
    using mla_decode_v3::desc_add;
    const uint64_t dp0 = mla_decode_v3::opaque_desc(smem_desc(aP, 16, 1024, 1));
    const uint64_t dv0 = mla_decode_v3::opaque_desc(smem_desc(aT + (uint32_t)(wg * 4 * kBlk), kBlk, 1024, 1));
    mla_decode_v3::acc_fence(o);
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < kBN / 16; ks++)
        mla_decode_v3::wgmma_m64n256k16_ss_tb<kF16>(o, desc_add(dp0, (uint32_t)(ks * 32)),
                                                     desc_add(dv0, (uint32_t)(ks * 16 * 128)), ks > 0 || !fresh);
    wgmma_commit();
}

__device__ __forceinline__ void pv_wait(float (&o)[128])
{
    mla_sm90::wgmma_wait<0>();
    mla_decode_v3::acc_fence(o);
}

template <bool kF16>
__device__ __forceinline__ void pv_chain(float (&o)[128], uint32_t aT, uint32_t aP, int wg, bool fresh)
{
    pv_issue<kF16>(o, aT, aP, wg, fresh);
    pv_wait(o);
}

__device__ __forceinline__ void scale_o(float (&o)[128], float a0, float a1)
{
    // Skipped when no row of the warp changed its maximum (factor exactly 1: most blocks).
    if (__any_sync(0xffffffffu, a0 != 1.0f || a1 != 1.0f)) {
#pragma unroll
        for (int i = 0; i < 32; i++) {
            o[4 * i + 0] *= a0;
            o[4 * i + 1] *= a0;
            o[4 * i + 2] *= a1;
            o[4 * i + 3] *= a1;
        }
    }
}

// New row maxima from prev and mx, the factor sc = exp2(prev - new) for what came before, and
// (when mine) s -> exp2(s - new) with the rows' partial sums in ls. A row that has seen no
// key keeps -inf and uses 0 as its reference, so exp2 gives 0, not NaN. Shared with
// decode_v10_fp8mma.cuh (the masking before it and v10's row-sum store stay inline in each:
// as shared helpers they changed the measured kernels' SASS).
__device__ __forceinline__ void softmax_block(float (&s)[32], const float (&prev)[2], const float (&mx)[2], bool mine,
                                              float (&mnew)[2], float (&sc)[2], float (&ls)[2])
{
#pragma unroll
    for (int h = 0; h < 2; h++) {
        mnew[h] = fmaxf(prev[h], mx[h]);
        const float ref = mnew[h] == -INFINITY ? 0.f : mnew[h];
        sc[h] = mla_decode_v1::fast_exp2(prev[h] - ref);
        if (mine) {
#pragma unroll
            for (int i = 0; i < 8; i++) {
                s[4 * i + 2 * h] = mla_decode_v1::fast_exp2(s[4 * i + 2 * h] - ref);
                s[4 * i + 2 * h + 1] = mla_decode_v1::fast_exp2(s[4 * i + 2 * h + 1] - ref);
                ls[h] += s[4 * i + 2 * h] + s[4 * i + 2 * h + 1];
            }
        }
    }
}

// A request's end: this warpgroup's row sums (times factor) into sRedSum[wg], then both
// math warpgroups meet so that write_rows can add the two halves.
__device__ __forceinline__ void publish_row_sums(const float (&l_run)[2], float factor, float *sRedSum, int wg,
                                                 int r_lo, int qd)
{
    float lsum[2];
#pragma unroll
    for (int h = 0; h < 2; h++) {
        float v = l_run[h];
        v += __shfl_xor_sync(0xffffffffu, v, 1);
        v += __shfl_xor_sync(0xffffffffu, v, 2);
        lsum[h] = v;
    }
    if (qd == 0) {
        sRedSum[wg * kM + r_lo] = lsum[0] * factor;
        sRedSum[wg * kM + r_lo + 8] = lsum[1] * factor;
    }
    mla_decode_v1::named_bar(kBarMath, kMathThreads);
}

// kProd: the register producer (v6), the bulk in-place producer (v7), both for an fp8 cache
// (fp16 tiles and MMAs), or the TMA producer for a bf16 cache (v9: bf16 tiles and MMAs).
constexpr int kProdRegs = 0, kProdBulk = 1, kProdTmaBf16 = 2;
template <int kProd>
__global__ void __launch_bounds__(kNT, 1) decode_seesaw_kernel(const __grid_constant__ Params p)
{
    using namespace mla_sm90; // wgmma_fence / commit / wait, smem_desc, mbar_*
    using mla_decode_v3::acc_fence;
    using mla_decode_v3::desc_add;
    using mla_decode_v3::fence_proxy_async;
    using mla_decode_v3::opaque_desc;
    extern __shared__ uint8_t smem_raw[];
    const uint32_t raw_addr = mla_decode_v1::smem_u32(smem_raw);
    const uint32_t base = (raw_addr + 1023u) & ~1023u;
    uint8_t *smem = smem_raw + (base - raw_addr);
    uint8_t *sQ = smem + V6Cfg::offQ;
    float *sPair = reinterpret_cast<float *>(smem + V6Cfg::offPair); // [m0 | scale0 | m1 | scale1][64]
    float *sRedSum = reinterpret_cast<float *>(smem + V6Cfg::offRedSum);
    int *sFlags = reinterpret_cast<int *>(smem + V6Cfg::offFlags);
    const uint32_t aQ = base + V6Cfg::offQ, aTile = base + V6Cfg::offTile, aBar = base + V6Cfg::offBar;

    const int part = blockIdx.x, hb = blockIdx.y;
    const int tid = threadIdx.x;
    if (tid == 0) {
        for (int i = 0; i < 2; i++) {
            // full: every producer thread (v9 waits on col_bar instead; this one stays idle)
            mbar_init(aBar + 8u * i, kProd == kProdTmaBf16 ? 1 : kNT - kMathThreads);
            if (kProd == kProdTmaBf16) {
                mbar_init(empty_lo_bar(aBar, i), 128);          // warpgroup 0
                mbar_init(empty_hi_bar(aBar, i), kMathThreads); // every math thread
            } else {
                // empty: every math thread; v7's tile 1: warpgroup 1 (its V half and the raw
                // block's bytes), warpgroup 0 arrives on low_free_bar
                mbar_init(aBar + 8u * (2 + i), kProd == kProdBulk && i == 1 ? 128 : kMathThreads);
                mbar_init(aBar + 8u * (4 + i), 1);            // raw: thread 0's arrive + the bytes
            }
            if (kProd == kProdTmaBf16)
                for (int cb = 0; cb < kColBlocks; cb++) mbar_init(col_bar(aBar, i, cb), 1);
            if (kProd == kProdBulk && i == 1) mbar_init(low_free_bar(aBar), 128);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads(); // the only CTA-wide barrier: the producer leaves early

    asm volatile("griddepcontrol.wait;\n" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
    const int tau = *p.s.tau;
    Cursor a;
    mla_decode_v1::part_first_cursor(p, part, a);
    if (a.b >= p.batch) return; // empty part (uniform over the CTA)
    if (tid >= kMathThreads) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegProducer));
        if constexpr (kProd == kProdTmaBf16) {
            if ((tid & 31) == 0) produce_tma_bf16(p, part, tau, a, aTile, aBar, sFlags, (tid - kMathThreads) >> 5);
        } else if constexpr (kProd == kProdBulk) {
            produce_bulk(p, part, tau, a, aTile, aBar, sFlags);
        } else {
            produce(p, part, tau, a, aTile, aBar, sFlags);
        }
        return;
    }
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegMath));

    const int lane = tid & 31;
    const int wg = tid >> 7;                              // 0: block a, O[:, 0:256]; 1: block b, O[:, 256:512]
    const int r_lo = ((tid >> 5) & 3) * 16 + (lane >> 2); // this thread's rows: r_lo, r_lo + 8
    const int qd = lane & 3;
    const float qk_scale = p.scale_log2;
    const uint32_t aMine = aTile + (uint32_t)(wg * kTile); // the tile of this warpgroup's block
    constexpr bool kF16 = kProd != kProdTmaBf16; // fp16 tiles (fp8 cache) or bf16 (bf16 cache)
    constexpr bool kSepPb = kProd == kProdBulk;  // P_b in its own block (V6Cfg::offPb)
    const uint32_t aPa = aTile + 8u * kBlk, aPb = kSepPb ? base + V6Cfg::offPb : aTile + kTile + 8u * kBlk;

    float o[128]; // written first by each request's first P V chain (scale-d = 0)
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
    int lim_row[2] = {0, 0};
    int lim_min = 0;
    int cur_seq = 0; // v9: the request's seq_len (zero_v_rows)
    bool new_req = true;
    bool fresh = true;   // O holds nothing of this request yet (its first P V overwrites it)
    uint32_t phases = 0; // bit T: parity of tile T's next "full" completion
#ifdef MLA_SEESAW_TIMELINE
    int tl_pair = 0;
    // v9's and v7's stamps (v9_timeline.cu, v7_timeline.cu)
    const bool tl_me = (kProd == kProdTmaBf16 || kProd == kProdBulk) && (tid & 127) == 0;
#endif

    while (a.b < p.batch) {
        Cursor bcur = a;
        mla_decode_v1::cursor_next(p, part, tau, bcur);
        const bool has_b = bcur.b == a.b; // a request never reappears in a part's walk
        if (new_req) {
            mla_decode_v1::named_bar(kBarMath, kMathThreads); // the previous request is done with Q
            mla_decode_v3::load_q<kProd != kProdTmaBf16>(p, a.b, hb, sQ);
            const int seq = p.s.seq_eff[a.b];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int gr = hb * kM + r_lo + h * 8;
                lim_row[h] = p.causal ? seq - p.q_len + min(gr, p.rows - 1) / p.heads + 1 : seq;
            }
            lim_min = p.causal ? seq - p.q_len + 1 : seq;
            if constexpr (kProd == kProdTmaBf16) cur_seq = seq;
            new_req = false;
            fence_proxy_async(); // this thread's Q stores -> wgmma
            mla_decode_v1::named_bar(kBarMath, kMathThreads);
        }

        // ---- S of this warpgroup's block (m64n64, 36 k-steps), masked and scaled ----
        // s[4i + e]: row r_lo + 8 (e >> 1), key 8 i + 2 qd + (e & 1) of the block.
        float s[32];
        float mx[2] = {-INFINITY, -INFINITY};
        const bool mine = wg == 0 || has_b;
        MLA_SEESAW_TL(tl_me, wg, 0, tl_pair); // S start
        if (mine) {
            if constexpr (kProd == kProdTmaBf16) mbar_wait(col_bar(aBar, wg, 0), (phases >> wg) & 1u);
            else mbar_wait(aBar + 8u * wg, (phases >> wg) & 1u);
            MLA_SEESAW_TL(tl_me, wg, 1, tl_pair); // column block 0 landed (v7: the tile)
            int pmask = kProd == kProdTmaBf16 ? 0 : sFlags[wg];
            const int key0 = (wg ? bcur.blk : a.blk) * kBN;
#pragma unroll
            for (int i = 0; i < 32; i++) s[i] = 0.f;
            const uint64_t dq0 = opaque_desc(smem_desc(aQ, 16, 1024, 1));
            const uint64_t dk0 = opaque_desc(smem_desc(aMine, 16, 1024, 1));
            acc_fence(s);
            wgmma_fence();
#pragma unroll
            for (int ks = 0; ks < kDqk / 16; ks++) {
                const uint32_t off = (uint32_t)((ks >> 2) * kBlk + (ks & 3) * 32);
                if constexpr (kProd == kProdTmaBf16) {
                    if ((ks & 3) == 0 && ks > 0) { // the wait's loop needs a fence before the next wgmma
                        mbar_wait(col_bar(aBar, wg, ks >> 2), (phases >> wg) & 1u);
                        wgmma_fence();
                    }
                    wgmma_m64n64k16_bf16(s, desc_add(dq0, off), desc_add(dk0, off), ks > 0);
                } else {
                    wgmma_m64n64k16_f16(s, desc_add(dq0, off), desc_add(dk0, off), ks > 0);
                }
            }
            wgmma_commit();
            wgmma_wait<0>();
            acc_fence(s);
            MLA_SEESAW_TL(tl_me, wg, 2, tl_pair); // S done
            if constexpr (kProd == kProdTmaBf16) pmask = sFlags[wg]; // after the last column block's wait
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

        // ---- softmax of this warpgroup's block; P into its tile's rope column block (v7's P_b:
        // its own block) ----
        // Warpgroup 0 starts from the running max; warpgroup 1 from warpgroup 0's new max.
        // Written once, called in each warpgroup's branch: warpgroup 1 has a P V chain in
        // flight around it, and ptxas serialises every wgmma when a path it cannot rule out
        // (the other warpgroup's branch) reads O between a chain's issue and its wait.
        float mnew[2], sc[2];
        float ls[2] = {0.f, 0.f};
        auto softmax_p = [&](const float(&prev)[2], int bar_wg, int tl_ev) {
            softmax_block(s, prev, mx, mine, mnew, sc, ls);
            if (mine) {
                uint8_t *sP = kSepPb && wg == 1 ? smem + V6Cfg::offPb : smem + V6Cfg::offTile + wg * kTile + 8 * kBlk;
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    *reinterpret_cast<uint32_t *>(sP + blk_off(r_lo, i) + 4 * qd) =
                        mla_decode_v1::pack2<kProd != kProdTmaBf16>(s[4 * i + 0], s[4 * i + 1]);
                    *reinterpret_cast<uint32_t *>(sP + blk_off(r_lo + 8, i) + 4 * qd) =
                        mla_decode_v1::pack2<kProd != kProdTmaBf16>(s[4 * i + 2], s[4 * i + 3]);
                }
            }
            if (qd == 0) {
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    sPair[2 * wg * kM + r_lo + 8 * h] = mnew[h];
                    sPair[(2 * wg + 1) * kM + r_lo + 8 * h] = sc[h];
                }
            }
            fence_proxy_async(); // P stores -> wgmma (this warpgroup's and the other's)
            mla_decode_v1::named_bar(bar_wg, 128); // this warpgroup's P complete
            MLA_SEESAW_TL(tl_me, wg, tl_ev, tl_pair); // P published
        };
        if (wg == 0) {
            softmax_p(m_run, kBarWg, 3);
            bar_arrive(kBarA, kMathThreads);
            l_run[0] = l_run[0] * sc[0] + ls[0];
            l_run[1] = l_run[1] * sc[1] + ls[1];
            if (!fresh) scale_o(o, sc[0], sc[1]);
            if constexpr (kProd == kProdTmaBf16) zero_v_rows(aTile, 0, a.blk * kBN, cur_seq, sFlags[0], p.page_size);
            pv_chain<kF16>(o, aTile, aPa, 0, fresh); // P_a V_a[:, 0:256]
            MLA_SEESAW_TL(tl_me, 0, 4, tl_pair); // P V a done
            mbar_arrive(aBar + 16u); // empty[0] (v9: empty lo[0]): done with tile 0
            if constexpr (kProd == kProdTmaBf16) mbar_arrive(empty_hi_bar(aBar, 0));
            mla_decode_v1::named_bar(kBarB, kMathThreads); // m1, scale1 and P_b are published
            MLA_SEESAW_TL(tl_me, 0, 5, tl_pair); // after barrier B
            float sc1[2];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                sc1[h] = sPair[3 * kM + r_lo + 8 * h];
                m_run[h] = sPair[2 * kM + r_lo + 8 * h];
                l_run[h] *= sc1[h];
            }
            scale_o(o, sc1[0], sc1[1]);
            if (has_b) {
                // Tile 1 was waited for by warpgroup 1; waiting here too (the phase cannot move
                // on before this warpgroup hands the tile back) makes the producer's stores
                // visible to this warpgroup's wgmma without leaning on barrier transitivity.
                if constexpr (kProd == kProdTmaBf16) { // after warpgroup 1's S_b (barrier B)
                    // its V column blocks, and the last one: sFlags[1] is written before that
                    for (int cb = 0; cb < 4; cb++) mbar_wait(col_bar(aBar, 1, cb), (phases >> 1) & 1u);
                    mbar_wait(col_bar(aBar, 1, kColBlocks - 1), (phases >> 1) & 1u);
                    zero_v_rows(aTile + kTile, 0, bcur.blk * kBN, cur_seq, sFlags[1], p.page_size);
                } else {
                    mbar_wait(aBar + 8u, (phases >> 1) & 1u);
                }
                MLA_SEESAW_TL(tl_me, 0, 6, tl_pair); // tile b's V ready
                pv_chain<kF16>(o, aTile + kTile, aPb, 0, false); // P_b V_b[:, 0:256]
                MLA_SEESAW_TL(tl_me, 0, 7, tl_pair); // P V b done
                mbar_arrive(kSepPb ? low_free_bar(aBar) : aBar + 24u); // empty[1] (v7: low_free, v9: empty lo[1])
                if constexpr (kProd == kProdTmaBf16) mbar_arrive(empty_hi_bar(aBar, 1));
            }
        } else {
            float prev[2], sc0[2];
            mla_decode_v1::named_bar(kBarA, kMathThreads); // m0, scale0 and P_a are published
#pragma unroll
            for (int h = 0; h < 2; h++) {
                prev[h] = sPair[r_lo + 8 * h];
                sc0[h] = sPair[kM + r_lo + 8 * h];
            }
            // P_a V_a[:, 256:512] goes to the tensor cores now and runs under this
            // warpgroup's softmax of block b (which touches s, not O); pv_wait after barrier B.
            if (!fresh) scale_o(o, sc0[0], sc0[1]);
            if constexpr (kProd == kProdTmaBf16) { // after warpgroup 0's S_a (barrier A)
                for (int cb = 4; cb < 8; cb++) mbar_wait(col_bar(aBar, 0, cb), phases & 1u);
                zero_v_rows(aTile, 1, a.blk * kBN, cur_seq, sFlags[0], p.page_size);
            } else {
                mbar_wait(aBar, phases & 1u); // tile 0 (see warpgroup 0's wait for tile 1)
            }
            MLA_SEESAW_TL(tl_me, 1, 3, tl_pair); // tile a's V ready
            pv_issue<kF16>(o, aTile, aPa, 1, fresh); // P_a V_a[:, 256:512]
            softmax_p(prev, kBarWg + 1, 4);
            bar_arrive(kBarB, kMathThreads);
            MLA_SEESAW_TL(tl_me, 1, 5, tl_pair); // barrier B arrived
            l_run[0] = l_run[0] * sc0[0] * sc[0] + ls[0];
            l_run[1] = l_run[1] * sc0[1] * sc[1] + ls[1];
            pv_wait(o); // P_a V_a[:, 256:512], issued before the softmax
            MLA_SEESAW_TL(tl_me, 1, 6, tl_pair); // P V a done
            mbar_arrive(kProd == kProdTmaBf16 ? empty_hi_bar(aBar, 0) : aBar + 16u); // empty[0]
            scale_o(o, sc[0], sc[1]);
            m_run[0] = mnew[0];
            m_run[1] = mnew[1];
            if (has_b) {
                if constexpr (kProd == kProdTmaBf16)
                    zero_v_rows(aTile + kTile, 1, bcur.blk * kBN, cur_seq, sFlags[1], p.page_size);
                pv_chain<kF16>(o, aTile + kTile, aPb, 1, false); // P_b V_b[:, 256:512]
                MLA_SEESAW_TL(tl_me, 1, 7, tl_pair); // P V b done
                mbar_arrive(kProd == kProdTmaBf16 ? empty_hi_bar(aBar, 1) : aBar + 24u); // empty[1]
            }
        }
        phases ^= has_b ? 3u : 1u;
        fresh = false;
#ifdef MLA_SEESAW_TIMELINE
        tl_pair++;
        if (tl_me) mla_seesaw_tl_count(wg, tl_pair);
#endif

        // ---- advance; end of this request's piece: normalize and write ----
        const int b = a.b;
        const Cursor &lastc = has_b ? bcur : a;
        const bool last = lastc.blk + 1 >= lastc.hi;
        if (has_b) {
            a = bcur;
            mla_decode_v1::cursor_next(p, part, tau, a);
        } else {
            a = bcur;
        }
        if (last) { // uniform over the math warpgroups
            publish_row_sums(l_run, 1.0f, sRedSum, wg, r_lo, qd);
            mla_decode_v3::write_rows<kProd != kProdTmaBf16 && mla_decode_v3::kWideHalfPartials>(
                p, o, sRedSum, m_run, b, part, hb, wg, r_lo, qd);
            m_run[0] = m_run[1] = -INFINITY;
            l_run[0] = l_run[1] = 0.f;
            new_req = true;
            fresh = true;
        }
    }
}

} // namespace mla_decode_v6
