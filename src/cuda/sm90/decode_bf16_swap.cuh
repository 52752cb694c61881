// Split-KV MLA decode for H * q_len <= 32 rows with a bf16 cache, "swap" form: the products
// are transposed so that the 64 keys of a block fill wgmma's M = 64 and the N = 16 or 32 query
// rows are its N, and both A operands are the cache tile itself, read by descriptor:
//   S^T (64 keys x N) = K (64 x 576) Q^T           9 x 4 wgmma m64nNk16, A = K (K-major)
//   O^T (512 dims x N) += V^T (512 x 64) P^T       8 x 4 wgmma m64nNk16, A = V^T (MN-major)
// Nothing of the cache passes through registers, so a block costs the warps ~70 wgmma issues,
// the softmax of 64 x N scores and the P^T stores; the MMAs read 64-dim x 16-key pieces of
// the tile straight from the TMA boxes (V^T as the transposed A operand of the same bytes).
//
// The tile lives in a ring of 8 KB column-block slots (64 keys x 64 dims, the 128-byte
// swizzle of the bf16 tensor map's boxes), each with a full and an empty mbarrier, filled by
// one producer thread (the first thread after the math warpgroups) as slots free up. A block's
// 9 column blocks need not be adjacent (every wgmma has its own descriptor), so the producer
// runs ahead by whatever part of a block fits: the ring holds 2.4-2.7 blocks of 72 KB, where
// two whole stages (all that fits next to Q^T) would leave one block in flight while the other
// is read. The math warpgroups wait for a block's 9 boxes before its S^T (waits between the
// wgmmas made ptxas serialize them, C7520). Slot lifetimes: the rope slot is released after S^T, the eight V slots after P V (and the
// request-end staging of O, which reuses them).
//
// Q^T (N rows x 576, bf16) and P^T (N rows x 64 keys, bf16) are K-major B tiles in the
// 128-byte swizzle. One CTA per SM: for up to 16 rows one math warpgroup + a producer warp;
// for 17..32 rows two math warpgroups of 16 rows that read the same ring (each its own Q^T,
// P^T and barrier) + a producer warpgroup (setmaxnreg moves its registers to the math). Plan:
// 64-key blocks, one head block, same scheduler, cursor, float32 partials and combine as
// version 1. H200 (bench/NOTES.md, eighteenth session): 88-95% of copy for H16 from 16k keys
// and B128 4k (v1: 77-86%), 86-87% for 32 rows (v1: 44%).
//
// kFp8 (opt-in, MLA_DECODE_FP8_CONV): an fp8 cache through a converter warpgroup that turns
// each TMA'd fp8 column block into an f16 slot once for all rows. Correct, but 2-3.4x slower
// than decode_v2_swap.cuh: next to an fp8 ring the f16 ring holds 16-18 slots, under two
// blocks, so the converter waits for the math to free a block's slots and the two take turns.
#pragma once
#include "decode_v1_mma.cuh"
#include "decode_v3_wgmma.cuh"
#include "mbarrier.cuh"
#include "prefill_wgmma.cuh"
#include "ws_common.cuh"
#include "wgmma_operands.cuh"

namespace mla_decode_bs {

using mla_decode_v1::Cursor;
using mla_decode_v1::kDqk;
using mla_decode_v1::kDv;
using mla_decode_v1::Params;
using mla_decode_v1::Pref;

constexpr int kBN = 64, kCols = 9, kSlotBytes = kBN * 128;
constexpr int kMathThreads = 128; // per math warpgroup

// N query rows per math warpgroup, kWG math warpgroups (rows [N wg, N wg + N) each), all
// reading the same ring. kFp8: an fp8 cache, loaded by TMA into a ring of 4 KB fp8 slots and
// converted to f16 into the ring of 8 KB slots by a converter warpgroup (the math then runs in
// f16; Q rounded to f16 as in decode_v2_swap.cuh).
template <int N, int kWG, bool kFp8 = false> struct BsCfg {
    static_assert(N == 16 || N == 32, "16 or 32 query rows");
    // One producer warp; with two math warpgroups or an fp8 cache a whole producer (converter)
    // warpgroup, so that registers can move to the math warpgroups (setmaxnreg).
    static constexpr int kNT = kWG * kMathThreads + (kWG > 1 || kFp8 ? 128 : 32);
    // With 384 threads each starts with 168 registers (64512 in all): setmaxnreg.inc waits until
    // the pool can grant it, so producer + math may not ask for more than that in total.
    static constexpr int kRegProd = kFp8 ? 72 : 40, kRegMath = kFp8 ? 216 : 232;
    static_assert(kNT != 384 || kRegProd * 128 + kRegMath * 256 <= 168 * 384, "setmaxnreg pool");
    static constexpr int kRows = N * kWG;
    static constexpr int kSlots = kFp8 ? (kRows == 16 ? 18 : 16) : kRows == 16 ? 24 : 22; // as many as fit
    static constexpr int kSlots8 = kFp8 ? 14 : 0;         // fp8 slots: 64 keys x 64 bytes
    static constexpr int kNA = N == 16 ? 4 : 2;          // S^T accumulators (independent chains)
    static constexpr int offSlots = 0;
    static constexpr int offSlots8 = kSlots * kSlotBytes;
    static constexpr int offQ = offSlots8 + kSlots8 * 4096; // per warpgroup: 9 column blocks x N rows x 128 B
    static constexpr int offP = offQ + kWG * kCols * N * 128; // per warpgroup: N rows x 128 B
    static constexpr int offRedMax = offP + kWG * N * 128;    // [warpgroup][4 warps][N]
    static constexpr int offRedSum = offRedMax + kWG * 4 * N * 4;
    static constexpr int offFlags = offRedSum + kWG * 4 * N * 4; // page masks of 4 blocks in a ring
    static constexpr int offFull = offFlags + 16;
    static constexpr int offEmpty = offFull + 8 * kSlots;
    static constexpr int offFull8 = offEmpty + 8 * kSlots;
    static constexpr int offFlags8 = offFull8 + 8 * kSlots8; // fp8: (page mask, seq_len) of 8 blocks
    static constexpr int kSmem = offFlags8 + (kFp8 ? 64 : 0) + 1024; // + alignment slack
    static_assert(offQ % 1024 == 0 && offP % 1024 == 0 && (N * 128 * kCols) % 1024 == 0,
                  "swizzled tiles need 1024-byte alignment");
    static_assert(kSmem <= 227 * 1024, "shared memory");
    // The request-end staging of O (kRows rows x 2 KB of float) fits in a block's 8 V slots.
    static_assert(kRows * 2048 <= 8 * kSlotBytes, "O staging");
};

__device__ __forceinline__ void st16(uint32_t addr, uint4 v)
{
    asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

// D(64 x N) += A(64 x 16, shared, K-major or with kTA MN-major) * B(16 x N, shared, K-major),
// bf16 in, float accumulate.
template <int N, int kTA, bool kF16 = false>
__device__ __forceinline__ void wgmma_bf16(float (&d)[N / 2], uint64_t da, uint64_t db, int acc)
{
    if constexpr (kF16 && N == 16)
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n16k16.f32.f16.f16 "
                     MLA_WG_REGS8 ", %8, %9, p, 1, 1, %11, 0;\n}\n"
                     : MLA_WG_ACC8(d)
                     : "l"(da), "l"(db), "r"(acc), "n"(kTA));
    else if constexpr (kF16)
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 "
                     MLA_WG_REGS16 ", %16, %17, p, 1, 1, %19, 0;\n}\n"
                     : MLA_WG_ACC16(d)
                     : "l"(da), "l"(db), "r"(acc), "n"(kTA));
    else if constexpr (N == 16)
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 "
                     MLA_WG_REGS8 ", %8, %9, p, 1, 1, %11, 0;\n}\n"
                     : MLA_WG_ACC8(d)
                     : "l"(da), "l"(db), "r"(acc), "n"(kTA));
    else
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
                     MLA_WG_REGS16 ", %16, %17, p, 1, 1, %19, 0;\n}\n"
                     : MLA_WG_ACC16(d)
                     : "l"(da), "l"(db), "r"(acc), "n"(kTA));
}

// The producer: walks the part's blocks and fills the ring, one column block per slot. Keys
// past seq_len on a loaded page are loaded too (the math threads zero their V rows); a page
// past seq_len or with a bad index is not loaded (block_page_mask flags the latter).
template <int N, int kWG>
__device__ __forceinline__ void produce(const Params &p, int part, int tau, Cursor c, int seq0, uint32_t sSlots,
                                        uint32_t full, uint32_t empty, int *sFlags)
{
    using C = BsCfg<N, kWG>;
    Pref f = mla_decode_v1::prefetch_block_seq<kBN>(p, c, seq0);
    int slot = 0, nblk = 0;
    uint32_t ph = 0;
    while (c.b < p.batch) {
        const int key0 = c.blk * kBN;
        const int ok = mla_decode_v1::block_page_mask<kBN>(p, key0, f, true);
        int row[2] = {-1, -1};
        uint32_t bytes = 0;
        if (p.page_size == 64) {
            if (ok & 1) {
                row[0] = f.idx0 * 64;
                bytes = 64 * 128;
            }
        } else {
#pragma unroll
            for (int h = 0; h < 2; h++)
                if (((ok >> h) & 1) && key0 + 32 * h < f.seq) {
                    row[h] = (h ? f.idx1 : f.idx0) * 32;
                    bytes += 32 * 128;
                }
        }
        for (int col = 0; col < kCols; col++) {
            mla_sm90::mbar_wait(empty + 8u * slot, ph ^ 1u);
            if (col == 0) sFlags[nblk & 3] = ok; // read after the full barrier of column 0
            const uint32_t bar = full + 8u * slot, dst = sSlots + (uint32_t)slot * kSlotBytes;
            mla_sm90::mbar_arrive_expect_tx(bar, bytes);
            if (p.page_size == 64) {
                if (row[0] >= 0) mla_sm90::tma_load_2d(dst, &p.kv_tma[1], 64 * col, row[0], bar);
            } else {
#pragma unroll
                for (int h = 0; h < 2; h++)
                    if (row[h] >= 0) mla_sm90::tma_load_2d(dst + (uint32_t)(h * 32 * 128), &p.kv_tma[0], 64 * col, row[h], bar);
            }
            if (++slot == C::kSlots) {
                slot = 0;
                ph ^= 1u;
            }
        }
        nblk++;
        mla_decode_v1::cursor_next(p, part, tau, c);
        f = mla_decode_v1::prefetch_block<kBN>(p, c);
    }
}

// The fp8 cache's producer warpgroup (ct = 0..127): thread 0 keeps kSlots8 fp8 column blocks
// in flight by TMA (64 keys x 64 bytes, unswizzled), and all 128 threads convert each one, in
// order, to f16 into its 8 KB slot in the 128-byte swizzle the math's descriptors expect (two
// 16-byte fp8 chunks per thread). Rows past seq_len or on pages not loaded are written as
// zeros, so the math needs no zeroing pass. The converter is the fp8 ring's only reader, so a
// barrier of its own warpgroup frees a slot for the next TMA.
template <int N, int kWG>
__device__ __forceinline__ void convert_fp8(const Params &p, int part, int tau, Cursor c, int seq0, uint32_t sSlots,
                                            uint32_t sSlots8, uint32_t full, uint32_t empty, uint32_t full8,
                                            int2 *sFl, int ct)
{
    using C = BsCfg<N, kWG, true>;
    constexpr int kBarConv = kWG + 2; // named barrier of this warpgroup (the math use 1..kWG + 1)
    const int lane = ct & 31;
    // Issuer state (thread 0 only).
    Cursor ic = c;
    Pref f = {0, -1, -1};
    int icol = 0, iblk = 0, islot = 0, row[2] = {-1, -1};
    uint32_t ibytes = 0;
    if (ct == 0) f = mla_decode_v1::prefetch_block_seq<kBN>(p, ic, seq0);
    auto issue_next = [&]() {
        if (ic.b >= p.batch) return;
        if (icol == 0) {
            const int key0 = ic.blk * kBN;
            const int ok = mla_decode_v1::block_page_mask<kBN>(p, key0, f, true);
            row[0] = row[1] = -1;
            ibytes = 0;
            if (p.page_size == 64) {
                if (ok & 1) {
                    row[0] = f.idx0 * 64;
                    ibytes = 64 * 64;
                }
            } else {
#pragma unroll
                for (int h = 0; h < 2; h++)
                    if (((ok >> h) & 1) && key0 + 32 * h < f.seq) {
                        row[h] = (h ? f.idx1 : f.idx0) * 32;
                        ibytes += 32 * 64;
                    }
            }
            sFl[iblk & 7] = make_int2(ok, f.seq); // read after the fp8 slot's full barrier
        }
        const uint32_t bar = full8 + 8u * islot, dst = sSlots8 + (uint32_t)islot * 4096u;
        mla_sm90::mbar_arrive_expect_tx(bar, ibytes);
        if (p.page_size == 64) {
            if (row[0] >= 0) mla_sm90::tma_load_2d(dst, &p.kv_tma[1], 64 * icol, row[0], bar);
        } else {
#pragma unroll
            for (int h = 0; h < 2; h++)
                if (row[h] >= 0) mla_sm90::tma_load_2d(dst + (uint32_t)(h * 32 * 64), &p.kv_tma[0], 64 * icol, row[h], bar);
        }
        if (++islot == C::kSlots8) islot = 0;
        if (++icol == kCols) {
            icol = 0;
            iblk++;
            mla_decode_v1::cursor_next(p, part, tau, ic);
            f = mla_decode_v1::prefetch_block<kBN>(p, ic);
        }
    };
    if (ct == 0)
        for (int i = 0; i < C::kSlots8; i++) issue_next();

    int s8 = 0, s16 = 0, blk = 0;
    uint32_t ph8 = 0, ph16 = 0;
    while (c.b < p.batch) {
        const int key0 = c.blk * kBN;
        int2 fl = make_int2(0, 0);
        for (int col = 0; col < kCols; col++) {
            mla_sm90::mbar_wait(full8 + 8u * s8, ph8);
            if (col == 0) fl = sFl[blk & 7];
            mla_sm90::mbar_wait(empty + 8u * s16, ph16 ^ 1u);
#pragma unroll
            for (int k = 0; k < 2; k++) {
                const int id = ct + 128 * k, r = id >> 2, q = id & 3;
                const bool valid = key0 + r < fl.y && ((fl.x >> (p.page_size == 32 ? r >> 5 : 0)) & 1);
                uint4 raw;
                asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                             : "=r"(raw.x), "=r"(raw.y), "=r"(raw.z), "=r"(raw.w)
                             : "r"(sSlots8 + (uint32_t)(s8 * 4096 + r * 64 + q * 16)));
                uint32_t h[8];
                mla_decode_ws::e4m3x4_to_f16x4(raw.x, h[0], h[1]);
                mla_decode_ws::e4m3x4_to_f16x4(raw.y, h[2], h[3]);
                mla_decode_ws::e4m3x4_to_f16x4(raw.z, h[4], h[5]);
                mla_decode_ws::e4m3x4_to_f16x4(raw.w, h[6], h[7]);
                if (!valid) {
#pragma unroll
                    for (int i = 0; i < 8; i++) h[i] = 0u;
                }
                const uint32_t rowa = sSlots + (uint32_t)(s16 * kSlotBytes + r * 128);
                st16(rowa + (uint32_t)(((2 * q) ^ (r & 7)) << 4), make_uint4(h[0], h[1], h[2], h[3]));
                st16(rowa + (uint32_t)(((2 * q + 1) ^ (r & 7)) << 4), make_uint4(h[4], h[5], h[6], h[7]));
            }
            mla_decode_v3::fence_proxy_async(); // f16 stores -> the math's wgmma
            __syncwarp();
            if (lane == 0) mbar_arrive(full + 8u * s16);
            mla_decode_v1::named_bar(kBarConv, 128); // every thread is done with fp8 slot s8
            if (ct == 0) issue_next();                // ... which the next TMA reuses
            if (++s8 == C::kSlots8) {
                s8 = 0;
                ph8 ^= 1u;
            }
            if (++s16 == C::kSlots) {
                s16 = 0;
                ph16 ^= 1u;
            }
        }
        blk++;
        mla_decode_v1::cursor_next(p, part, tau, c);
    }
}

template <int N, int kWG, bool kFp8 = false>
__global__ void __launch_bounds__(BsCfg<N, kWG, kFp8>::kNT, 1) decode_bf16_swap_kernel(const __grid_constant__ Params p)
{
    using C = BsCfg<N, kWG, kFp8>;
    using namespace mla_sm90;
    using mla_decode_v1::fast_exp2;
    using mla_decode_v3::acc_fence;
    using mla_decode_v3::desc_add;
    using mla_decode_v3::fence_proxy_async;
    constexpr int NR = N / 4, NA = C::kNA; // query rows per thread (n = 8 j + 2 t + e, r = 2 j + e)
    // One math warpgroup leaves P V in flight across the block's end: it retires behind the next
    // block's S^T, and the V slots go back then (H200: B32 H16 4k 7% faster, B128 4k 3%, B64 16k
    // 1.4%). With two warpgroups that was 4% slower (B64 H32 16k), so they wait at the end;
    // so does the N = 32 form (not measured with it).
    constexpr bool kDeferPV = kWG == 1 && N == 16;
    extern __shared__ __align__(128) uint8_t smem_raw[];
    uint8_t *smem = smem_raw;
    {
        const uint32_t a = mla_decode_v1::smem_u32(smem_raw);
        smem += ((a + 1023u) & ~1023u) - a;
    }
    const uint32_t sBase = mla_decode_v1::smem_u32(smem);
    const int part = blockIdx.x;
    const bool producer = threadIdx.x >= kWG * kMathThreads;
    const int lane = threadIdx.x & 31, wg = kWG == 1 ? 0 : min((int)threadIdx.x >> 7, kWG - 1);
    // The thread's index in its warpgroup, opaque to ptxas: written as threadIdx.x & 127 the
    // one-warpgroup kernel took 255 registers instead of 215 and ran at 79.5% of copy instead
    // of 89-92% (H200, B64 H16 16k), and the two-warpgroup one at 82% instead of 86%.
    int tid = (int)threadIdx.x;
    if constexpr (kWG > 1) asm("and.b32 %0, %1, 127;\n" : "=r"(tid) : "r"((int)threadIdx.x));
    const int w = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int row0 = N * wg, bar_wg = 1 + wg; // named barrier of this math warpgroup
    const uint32_t sSlots = sBase + C::offSlots;
    const uint32_t sQ = sBase + C::offQ + (uint32_t)(wg * kCols * N * 128), sP = sBase + C::offP + (uint32_t)(wg * N * 128);
    float *sRedMax = reinterpret_cast<float *>(smem + C::offRedMax) + wg * 4 * N;
    float *sRedSum = reinterpret_cast<float *>(smem + C::offRedSum) + wg * 4 * N;
    int *sFlags = reinterpret_cast<int *>(smem + C::offFlags);
    int2 *sFl8 = reinterpret_cast<int2 *>(smem + C::offFlags8);
    const uint32_t full = sBase + C::offFull, empty = sBase + C::offEmpty, full8 = sBase + C::offFull8;
    if (threadIdx.x == 0) {
        tma_prefetch_map(&p.kv_tma[0]);
        tma_prefetch_map(&p.kv_tma[1]);
        for (int i = 0; i < C::kSlots; i++) {
            mbar_init(full + 8u * i, kFp8 ? 4 : 1); // the converter's warps, or the TMA producer
            mbar_init(empty + 8u * i, kWG * kMathThreads / 32);
        }
        for (int i = 0; i < C::kSlots8; i++) mbar_init(full8 + 8u * i, 1);
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
    const int tau = *p.s.tau;

    Cursor cons;
    const int seq0 = mla_decode_v1::part_first_cursor(p, part, cons);
    if (cons.b >= p.batch) return;
    if (producer) { // the producer warp(s); the math threads never wait for them at a CTA barrier
        if constexpr (C::kNT == 384) asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(C::kRegProd) : "memory");
        if constexpr (kFp8)
            convert_fp8<N, kWG>(p, part, tau, cons, seq0, sSlots, sBase + C::offSlots8, full, empty, full8, sFl8,
                                (int)threadIdx.x - kWG * kMathThreads);
        else if (threadIdx.x == kWG * kMathThreads)
            produce<N, kWG>(p, part, tau, cons, seq0, sSlots, full, empty, sFlags);
        return;
    }

    if constexpr (C::kNT == 384) asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(C::kRegMath) : "memory");
    const float qk_scale = p.scale_log2;
    float o[8][N / 2]; // O^T m-tile c: o[c][4 j + 2 h + e] = dim 64 c + 16 w + 8 h + g, row 8 j + 2 t + e
#pragma unroll
    for (int c = 0; c < 8; c++)
#pragma unroll
        for (int k = 0; k < N / 2; k++) o[c][k] = 0.f;
    float m_run[NR], l_run[NR];
    int lim_row[NR];
    int lim_min = 0, cur_seq = 0;
#pragma unroll
    for (int r = 0; r < NR; r++) {
        m_run[r] = -INFINITY;
        l_run[r] = 0.f;
    }
    auto row_of = [&](int r) { return 8 * (r >> 1) + 2 * t + (r & 1); };
    auto set_limits = [&](int seq) {
#pragma unroll
        for (int r = 0; r < NR; r++) {
            const int gr = row0 + row_of(r);
            lim_row[r] = gr >= p.rows ? -1 : p.causal ? seq - p.q_len + gr / p.heads + 1 : seq;
        }
        lim_min = p.causal ? seq - p.q_len + 1 : seq;
        cur_seq = seq;
    };
    auto load_q = [&](int b) {
        mla_decode_v1::load_q_rows<kFp8, N, kMathThreads, (N == 16 ? 9 : 6)>(
            p, b, wg, [&](int r, int ch, uint4 v) {
                st16(sQ + (uint32_t)((ch >> 3) * (N * 128) + r * 128 + (((ch & 7) ^ (r & 7)) << 4)), v);
            },
            tid);
    };
    // Descriptor bases made opaque once, so each wgmma's descriptor is one add.
    const uint64_t kdesc0 = mla_decode_v3::opaque_desc(smem_desc(sSlots, 16, 1024, 1));
    const uint64_t vdesc0 = mla_decode_v3::opaque_desc(smem_desc(sSlots, kSlotBytes, 1024, 1));
    const uint64_t qdesc0 = mla_decode_v3::opaque_desc(smem_desc(sQ, 16, 1024, 1));
    const uint64_t pdesc0 = mla_decode_v3::opaque_desc(smem_desc(sP, 16, 1024, 1));

    load_q(cons.b);
    set_limits(seq0);
    bool new_q = true, new_req = false;
    int pv_pending = -1; // ring slot of column 0 of a block whose P V is still in flight
    int cslot = 0, nblk = 0; // ring slot of the block's column 0, and its phase
    uint32_t cph = 0;
    // The eight V slots of the block whose column 0 is at ring slot base back to the producer
    // (after any generic writes to them: the zeroed rows, the staging).
    auto release_v = [&](int base) {
        fence_proxy_async();
        __syncwarp();
        if (lane == 0) {
#pragma unroll
            for (int c = 0; c < 8; c++) {
                const int sl = base + c;
                mbar_arrive(empty + 8u * (sl >= C::kSlots ? sl - C::kSlots : sl));
            }
        }
    };
    auto slot_of = [&](int col, uint32_t &ph) -> int {
        int s = cslot + col;
        ph = cph;
        if (s >= C::kSlots) {
            s -= C::kSlots;
            ph ^= 1u;
        }
        return s;
    };

    while (cons.b < p.batch) {
        if (new_req) {
            int seq = p.s.seq_eff[cons.b];
            load_q(cons.b);
            set_limits(seq);
            new_req = false;
            new_q = true;
        }
        if (new_q) { // Q^T stores -> wgmma
            fence_proxy_async();
            mla_decode_v1::named_bar(bar_wg, kMathThreads);
            new_q = false;
        }
        const int key0 = cons.blk * kBN;

        // ---- S^T = K Q^T: the 9 boxes landed, then 4 k-steps per column block ----
        float sacc[NA][N / 2];
#pragma unroll
        for (int a = 0; a < NA; a++)
#pragma unroll
            for (int k = 0; k < N / 2; k++) sacc[a][k] = 0.f;
#pragma unroll
        for (int col = 0; col < kCols; col++) {
            uint32_t ph;
            const int s = slot_of(col, ph);
            mbar_wait(full + 8u * s, ph);
        }
        wgmma_fence();
#pragma unroll
        for (int col = 0; col < kCols; col++) {
            uint32_t ph;
            const int s = slot_of(col, ph);
#pragma unroll
            for (int u = 0; u < 4; u++) {
                const int ks = 4 * col + u;
                wgmma_bf16<N, 0, kFp8>(sacc[ks % NA], desc_add(kdesc0, (uint32_t)(s * kSlotBytes + u * 32)),
                                 desc_add(qdesc0, (uint32_t)(col * N * 128 + u * 32)), ks >= NA);
            }
        }
        wgmma_commit();
        if (kDeferPV && pv_pending >= 0) {
            // The previous block's P V retires behind this block's S^T; its V slots go back.
            wgmma_wait<1>();
            release_v(pv_pending);
            pv_pending = -1;
        }
        wgmma_wait<0>();
#pragma unroll
        for (int a = 0; a < NA; a++) acc_fence(sacc[a]);
        {
            uint32_t ph;
            const int s = slot_of(8, ph); // the rope slot is done
            if (lane == 0) mbar_arrive(empty + 8u * s);
        }
        float s[N / 2];
#pragma unroll
        for (int k = 0; k < N / 2; k++) {
            float v = sacc[0][k];
#pragma unroll
            for (int a = 1; a < NA; a++) v += sacc[a][k];
            s[k] = v;
        }

        // ---- mask, scale, column (query row) max over the 64 keys ----
        const int pmask = kFp8 ? sFl8[nblk & 7].x : sFlags[nblk & 3];
        const int full_mask = kBN > p.page_size ? 3 : 1;
        const int page0 = key0 >> p.page_shift;
        const bool all_valid = key0 + kBN <= lim_min && pmask == full_mask;
        float mx[NR];
#pragma unroll
        for (int r = 0; r < NR; r++) mx[r] = -INFINITY;
        if (all_valid) {
#pragma unroll
            for (int k = 0; k < N / 2; k++) {
                const int r = 2 * (k >> 2) + (k & 1);
                s[k] *= qk_scale;
                mx[r] = fmaxf(mx[r], s[k]);
            }
        } else {
#pragma unroll
            for (int k = 0; k < N / 2; k++) {
                const int r = 2 * (k >> 2) + (k & 1), h = (k >> 1) & 1;
                const int key = key0 + 16 * w + 8 * h + g;
                const bool valid = (key < lim_row[r]) & (((pmask >> ((key >> p.page_shift) - page0)) & 1) != 0);
                const float v = valid ? s[k] * qk_scale : -INFINITY;
                s[k] = v;
                mx[r] = fmaxf(mx[r], v);
            }
        }
#pragma unroll
        for (int r = 0; r < NR; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 4));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 8));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 16));
        }
        if (g == 0) {
#pragma unroll
            for (int r = 0; r < NR; r++) sRedMax[w * N + row_of(r)] = mx[r];
        }
        mla_decode_v1::named_bar(bar_wg, kMathThreads);
        if (!kFp8 && (key0 + kBN > cur_seq || pmask != full_mask)) { // (the fp8 converter wrote zeros)
            // (After the barrier: every warp's S^T reads of these slots are done.)
            // V rows of keys past seq_len or on pages not loaded -> 0: their bytes are stale or
            // the page's tail (possibly NaN patterns, which P = 0 does not cancel). Only a
            // request's last block and bad pages.
            for (int i = tid; i < kBN * 8; i += kMathThreads) {
                const int r = i >> 3, col = i & 7;
                const bool ok = key0 + r < cur_seq && ((pmask >> (kBN > p.page_size ? r >> 5 : 0)) & 1);
                if (!ok) {
                    uint32_t ph;
                    const uint32_t row = sSlots + (uint32_t)(slot_of(col, ph) * kSlotBytes + r * 128);
#pragma unroll
                    for (int q = 0; q < 8; q++) st16(row + 16u * q, make_uint4(0, 0, 0, 0));
                }
            }
        }
        float alpha[NR], ref[NR];
#pragma unroll
        for (int r = 0; r < NR; r++) {
            const int n = row_of(r);
            float m = m_run[r];
#pragma unroll
            for (int v = 0; v < 4; v++) m = fmaxf(m, sRedMax[v * N + n]);
            ref[r] = m == -INFINITY ? 0.f : m;
            alpha[r] = fast_exp2(m_run[r] - ref[r]);
            m_run[r] = m;
            l_run[r] *= alpha[r];
        }
        // P^T[n][key] as bf16 (row n: 128 bytes, chunk (key / 8) ^ (n & 7))
#pragma unroll
        for (int k = 0; k < N / 2; k++) {
            const int r = 2 * (k >> 2) + (k & 1), h = (k >> 1) & 1;
            const int n = row_of(r), key = 16 * w + 8 * h + g;
            const float pv = fast_exp2(s[k] - ref[r]);
            l_run[r] += pv;
            uint16_t hv;
            if constexpr (kFp8) hv = __half_as_ushort(__float2half_rn(pv));
            else hv = __bfloat16_as_ushort(__float2bfloat16_rn(pv));
            const uint32_t addr = sP + (uint32_t)(n * 128 + (((key >> 3) ^ (n & 7)) << 4) + ((key & 7) << 1));
            asm volatile("st.shared.b16 [%0], %1;\n" ::"r"(addr), "h"(hv) : "memory");
        }
        // Skipped when no row of the warp changed its maximum (alpha exactly 1: most blocks).
        bool any = false;
#pragma unroll
        for (int r = 0; r < NR; r++) any |= alpha[r] != 1.0f;
        if (__any_sync(0xffffffffu, any)) {
#pragma unroll
            for (int c = 0; c < 8; c++)
#pragma unroll
                for (int k = 0; k < N / 2; k++) o[c][k] *= alpha[2 * (k >> 2) + (k & 1)];
        }
        fence_proxy_async(); // P^T stores and zeroed V rows -> wgmma
        mla_decode_v1::named_bar(bar_wg, kMathThreads);

        // ---- O^T += V^T P^T: m-tile c = column block c, 4 k-steps of 16 keys ----
#pragma unroll
        for (int c = 0; c < 8; c++) acc_fence(o[c]);
        wgmma_fence();
#pragma unroll
        for (int c = 0; c < 8; c++) {
            uint32_t ph;
            const int sl = slot_of(c, ph);
#pragma unroll
            for (int kk = 0; kk < 4; kk++)
                wgmma_bf16<N, 1, kFp8>(o[c], desc_add(vdesc0, (uint32_t)(sl * kSlotBytes + kk * 16 * 128)),
                                 desc_add(pdesc0, (uint32_t)(kk * 32)), 1);
        }
        wgmma_commit();
        if constexpr (!kDeferPV) {
            wgmma_wait<0>();
#pragma unroll
            for (int c = 0; c < 8; c++) acc_fence(o[c]);
        }

        // ---- end of this request's piece: O staged through the block's V slots ----
        const int b = cons.b;
        const bool last = cons.blk + 1 >= cons.hi;
        mla_decode_v1::cursor_next(p, part, tau, cons);
        if (kDeferPV && last) {
            wgmma_wait<0>();
#pragma unroll
            for (int c = 0; c < 8; c++) acc_fence(o[c]);
        }
        if (last) {
            float lsum[NR];
#pragma unroll
            for (int r = 0; r < NR; r++) {
                float v = l_run[r];
                v += __shfl_xor_sync(0xffffffffu, v, 4);
                v += __shfl_xor_sync(0xffffffffu, v, 8);
                v += __shfl_xor_sync(0xffffffffu, v, 16);
                lsum[r] = v;
            }
            if (g == 0) {
#pragma unroll
                for (int r = 0; r < NR; r++) sRedSum[w * N + row_of(r)] = lsum[r];
            }
            // With two math warpgroups both must be past P V before either stages O in the V
            // slots (the warpgroups reach a request's end at the same block).
            if constexpr (kWG > 1) mla_decode_v1::named_bar(kWG + 1, kWG * kMathThreads);
            else mla_decode_v1::named_bar(bar_wg, kMathThreads);
            const int nsplit = p.s.num_splits[b];
            const int pslot = p.s.slot_base[b] + part - p.s.first_part[b];
            // Row n's 512 floats: slot (N wg + n) / 4 of the block, 2 KB per row, 16-byte chunk q
            // at q ^ 2 ((n >> 1) & 3) so that the four rows of a store land on distinct banks.
            auto stage_addr = [&](int n, int q) -> uint32_t {
                uint32_t ph;
                return sSlots + (uint32_t)(slot_of((row0 + n) >> 2, ph) * kSlotBytes + (n & 3) * 2048 + ((q ^ (2 * ((n >> 1) & 3))) << 4));
            };
#pragma unroll
            for (int r = 0; r < NR; r++) {
                const int n = row_of(r);
                float L = 0.f;
#pragma unroll
                for (int v = 0; v < 4; v++) L += sRedSum[v * N + n];
                const float inv = L > 0.f ? 1.0f / L : 0.f;
                const float sc = nsplit == 1 ? inv * p.bmm2 : inv;
                if (w == 0 && g == 0 && row0 + n < p.rows) {
                    const float lse = L > 0.f ? (m_run[r] + log2f(L)) * 0.69314718055994531f : -INFINITY;
                    if (nsplit == 1) {
                        if (p.lse) p.lse[(size_t)b * p.rows + row0 + n] = lse;
                    } else {
                        p.s.part_lse[(size_t)pslot * p.rows + row0 + n] = lse;
                    }
                }
                const int kx = 4 * (r >> 1) + (r & 1); // o[c][kx + 2 h]: dim 64 c + 16 w + 8 h + g
#pragma unroll
                for (int c = 0; c < 8; c++)
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        const int d = 64 * c + 16 * w + 8 * h + g;
                        const uint32_t addr = stage_addr(n, d >> 2) + (uint32_t)((d & 3) * 4);
                        asm volatile("st.shared.f32 [%0], %1;\n" ::"r"(addr), "f"(o[c][kx + 2 * h] * sc) : "memory");
                    }
            }
            mla_decode_v1::named_bar(bar_wg, kMathThreads);
            // 8 floats (two chunks) per thread and step, a row's 64 pairs by consecutive threads.
#pragma unroll 4
            for (int i = tid; i < N * 64; i += kMathThreads) {
                const int n = i >> 6, q2 = i & 63, gr = row0 + n;
                if (gr >= p.rows) continue;
                float4 x0, x1;
                asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];\n"
                             : "=f"(x0.x), "=f"(x0.y), "=f"(x0.z), "=f"(x0.w) : "r"(stage_addr(n, 2 * q2)));
                asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];\n"
                             : "=f"(x1.x), "=f"(x1.y), "=f"(x1.z), "=f"(x1.w) : "r"(stage_addr(n, 2 * q2 + 1)));
                if (nsplit == 1) {
                    uint16_t *dst = p.out + ((size_t)b * p.rows + gr) * kDv + 8 * q2;
                    *reinterpret_cast<uint4 *>(dst) =
                        make_uint4(mla_decode_v1::pack2<false>(x0.x, x0.y), mla_decode_v1::pack2<false>(x0.z, x0.w),
                                   mla_decode_v1::pack2<false>(x1.x, x1.y), mla_decode_v1::pack2<false>(x1.z, x1.w));
                } else {
                    float4 *dst = reinterpret_cast<float4 *>(p.s.part_o + ((size_t)pslot * p.rows + gr) * kDv + 8 * q2);
                    dst[0] = x0;
                    dst[1] = x1;
                }
            }
#pragma unroll
            for (int c = 0; c < 8; c++)
#pragma unroll
                for (int k = 0; k < N / 2; k++) o[c][k] = 0.f;
#pragma unroll
            for (int r = 0; r < NR; r++) {
                m_run[r] = -INFINITY;
                l_run[r] = 0.f;
            }
            new_req = true;
        }
        if (!kDeferPV || last) release_v(cslot);
        else pv_pending = cslot;
        cslot += kCols;
        if (cslot >= C::kSlots) {
            cslot -= C::kSlots;
            cph ^= 1u;
        }
        nblk++;
    }
}

} // namespace mla_decode_bs
