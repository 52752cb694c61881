// Split-KV MLA decode for 17..32 query rows (H * q_len: H = 32, or H = 16 with q_len 2) with an
// fp8 cache: the swap kernel's transposed products (decode_v2_swap.cuh) for all 32 rows at
// once, on two math warpgroups that take the key blocks in turn:
//   S^T (64 keys x 32 rows) = K Q^T              wgmma m64n32k16, A = K converted in registers
//   O^T (256 dims x 32 rows) += V^T P^T          wgmma m64n32k16, A = V^T converted in registers
// Warpgroup h computes S^T and the softmax of its own blocks (j % 2 == h) and, for every block,
// the O^T of its half of the dims, [256 h, 256 h + 256). So each block's K is converted once
// (by its owner) and each byte of V once (by the warpgroup of its half), where the two 16-row
// head blocks of the swap kernel convert and multiply every block twice.
//
// The running row maxima pass between the warpgroups with P^T: block j's owner writes P^T_j
// into the rope block of j's stage (only S^T reads the rope) and m_j, alpha_j (= exp2(m_{j-1} -
// m_j)) into small rings by stage, then arrives on done[j % 2]. Per own block j a warpgroup
// issues S^T(j) (independent of the other warpgroup), waits for done(j - 1) and runs the
// softmax of j (the chain between the warpgroups is the softmax alone), then the other's block
// j - 1 (rescale its O^T half by alpha_{j-1}, V^T P^T_{j-1}), then its own O^T half of j. At a
// request's end each warpgroup writes its half of the dims; their partial row sums meet in
// shared memory. 4 stages of 64 keys are kept in flight by TMA (v2's kConvTma layout); the last
// of the 8 warps to release a stage (both warpgroups' P V) issues the next block into it.
//
// Index maps as in decode_v2_swap.cuh (Q^T in the permuted k order, S^T's key rows f(g)); the
// O^T rows of warpgroup h: m-tile i, warp w row g + 8 hh is dim 256 h + 8 (8 w + g) + 2 i + hh,
// so one 8-byte load per key row feeds the 4 m-tiles and a thread ends with 8 consecutive dims
// per query row. One CTA per SM (4 stages of 36 KB, two Q^T tiles of 36 KB and small rings:
// 220 KB).
#pragma once
#include "decode_v2_swap.cuh"
#include "wgmma_operands.cuh"

namespace mla_decode_s32 {

using namespace mla_decode_v2;
using mla_decode_v2s::lds128;
using mla_decode_v2s::swap_row_key;
using mla_decode_v2s::word;

// Two math warpgroups and nothing else: with a ninth warp (a producer) ptxas allocates for 168
// registers per thread (three warps on one SM sub-partition; setmaxnreg does not change what
// it allocates), and the math then spills and its wgmmas are serialised (C7511).
constexpr int kBN = 64, kRows = 32, kStages = 4, kMath = 128, kNT = 2 * kMath;
using mla_decode_v2s::kLazyMax; // the lazy form's bound on P (2^8)
// Build-time knobs for experiments (defaults measured best, bench/NOTES.md nineteenth session:
// 4 accumulators spilled, or, with the other's P V retired before the softmax, 2.5% slower).
#ifndef MLA_S32_NA
#define MLA_S32_NA 2
#endif
#ifndef MLA_S32_SPANS
#define MLA_S32_SPANS 2
#endif
constexpr int kNA = MLA_S32_NA;       // S^T accumulators (independent wgmma chains)
constexpr int kSpans = MLA_S32_SPANS; // S^T spans (4 k-steps of A registers) in flight

struct S32Cfg {
    static constexpr int kStageBytes = kBN * kRow8;                 // 36 KB, stw_off<64>'s layout
    static constexpr int kQBytes = 9 * kRows * 128;                 // Q^T: 9 column blocks x 32 rows
    static constexpr int offStage = 0;
    static constexpr int offQ = kStages * kStageBytes;              // [warpgroup]
    static constexpr int offRope = 4 * kBN * 128;                   // in a stage: the rope block, P^T_j after S^T
    static constexpr int offRed = offQ + 2 * kQBytes;               // [warpgroup][4 warps][32]
    static constexpr int offM = offRed + 2 * 4 * kRows * 4;         // [stage][32]: m_j
    static constexpr int offAlpha = offM + kStages * kRows * 4;     // [stage][32]: alpha_j
    static constexpr int offLsum = offAlpha + kStages * kRows * 4;  // [request parity][warpgroup][32]: row sums
    static constexpr int offFlags = offLsum + 2 * 2 * kRows * 4;    // [stage] page masks
    static constexpr int offCnt = offFlags + 4 * kStages;           // [stage] releases so far
    static constexpr int offBar = offCnt + 4 * kStages;             // full[4], done[2], lsum[2][2]
    static constexpr int kSmem = offBar + 8 * (kStages + 6) + 1024; // + alignment slack
    static_assert(offQ % 1024 == 0 && kStageBytes % 1024 == 0 && offRope % 1024 == 0,
                  "swizzled tiles need 1024-byte alignment");
    static_assert(kRows * 128 == kBN * 64, "P^T (32 rows x 64 keys, f16) fills the rope block");
    static_assert(kSmem <= 227 * 1024, "shared memory");
};

// D(64x32) += A(64x16, registers) * B(16x32, shared memory K-major, 128-byte swizzle), f16.
__device__ __forceinline__ void wgmma_m64n32k16_rs(float (&d)[16], const uint32_t (&a)[4], uint64_t db, int acc)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 "
                 MLA_WG_REGS16 ", {%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n"
                 : MLA_WG_ACC16(d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc));
}
__device__ __forceinline__ uint2 lds64(uint32_t addr)
{
    uint2 v;
    asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "r"(addr));
    return v;
}
__device__ __forceinline__ float ldsf(uint32_t addr)
{
    float v;
    asm volatile("ld.shared.f32 %0, [%1];\n" : "=f"(v) : "r"(addr));
    return v;
}
__device__ __forceinline__ void stsf(uint32_t addr, float v)
{
    asm volatile("st.shared.f32 [%0], %1;\n" ::"r"(addr), "f"(v) : "memory");
}
__device__ __forceinline__ void arrive(uint32_t bar)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

// kQ8 (fp8 query): D(64x32) += A(64x32 e4m3, shared memory K-major) * B(32x32 e4m3, shared
// memory K-major), both by descriptor.
__device__ __forceinline__ void wgmma_m64n32k32_e4m3(float (&d)[16], uint64_t da, uint64_t db, int acc)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n32k32.f32.e4m3.e4m3 "
                 MLA_WG_REGS16 ", %16, %17, p, 1, 1;\n}\n"
                 : MLA_WG_ACC16(d)
                 : "l"(da), "l"(db), "r"(acc));
}

// kQ8: the fp8 query rows of request b (32 rows, rows >= p.rows zero) as they are, in the
// stage's K-major layout for 32 rows (stw_off<32>: four column blocks of 32 x 128 bytes in the
// 128-byte swizzle, the rope as 32 x 64 bytes in the 64-byte one), by one warpgroup (thread ct
// of 128); two passes of 16 rows keep 20 load registers in flight.
__device__ __forceinline__ void load_q8_32(const Params &p, int b, uint32_t sQ, int ct)
{
    constexpr int kChunks = 16 * 36, kIt = (kChunks + kMath - 1) / kMath;
    const uint8_t *q = (const uint8_t *)p.q + (size_t)b * p.rows * kDqk;
#pragma unroll 1
    for (int half = 0; half < 2; half++) {
        uint4 x[kIt];
#pragma unroll
        for (int i = 0; i < kIt; i++) {
            const int c = 16 * 36 * half + ct + kMath * i, r = c / 36;
            x[i] = make_uint4(0, 0, 0, 0);
            if (ct + kMath * i < kChunks && r < p.rows) x[i] = __ldg(reinterpret_cast<const uint4 *>(q + (size_t)c * 16));
        }
#pragma unroll
        for (int i = 0; i < kIt; i++) {
            const int c = 16 * 36 * half + ct + kMath * i;
            if (ct + kMath * i < kChunks) mla_decode_ws::st_shared16(sQ + stw_off<kRows>(c / 36, c % 36), x[i]);
        }
    }
}

// Q^T of request b for 32 rows (rows >= p.rows zero) by one warpgroup (thread ct of 128), in
// decode_v2_swap.cuh's permuted k order: chunk (q, u, hi) of row n holds dims
// 64 q + 16 t + 4 u + 2 hi + {0, 1} for t = 0..3; column block q is 32 rows x 128 bytes.
// Two passes of 16 rows keep 36 load registers in flight, not 72.
__device__ __forceinline__ void load_qt32(const Params &p, int b, uint32_t sQ, int ct)
{
    constexpr int kPass = 2, kIt = kRows / kPass * 72 / kMath;
    static_assert(kRows / kPass * 72 % kMath == 0, "Q^T chunks per thread");
#pragma unroll 1
    for (int half = 0; half < kPass; half++) {
        uint32_t x[kIt][4];
#pragma unroll
        for (int i = 0; i < kIt; i++) {
            const int ci = ct + kMath * i, n = kRows / kPass * half + ci / 72, rem = ci % 72;
            const int d0 = 64 * (rem >> 3) + 4 * ((rem >> 1) & 3) + 2 * (rem & 1);
            const size_t e = ((size_t)b * p.rows + min(n, p.rows - 1)) * kDqk + d0;
#pragma unroll
            for (int t = 0; t < 4; t++) {
                if (p.q_fp8) x[i][t] = __ldg(reinterpret_cast<const uint16_t *>((const uint8_t *)p.q + e + 16 * t));
                else x[i][t] = __ldg(reinterpret_cast<const uint32_t *>((const uint16_t *)p.q + e + 16 * t));
            }
        }
#pragma unroll
        for (int i = 0; i < kIt; i++) {
            const int ci = ct + kMath * i, n = kRows / kPass * half + ci / 72, rem = ci % 72;
            uint32_t hw[4];
#pragma unroll
            for (int t = 0; t < 4; t++) {
                hw[t] = p.q_fp8 ? e4m3x2_to_f16x2((uint16_t)x[i][t]) : bf16x2_to_f16x2_sat(x[i][t]);
                if (n >= p.rows) hw[t] = 0u;
            }
            const uint32_t addr = sQ + (uint32_t)((rem >> 3) * (kRows * 128) + n * 128 + (((rem & 7) ^ (n & 7)) << 4));
            mla_decode_ws::st_shared16(addr, make_uint4(hw[0], hw[1], hw[2], hw[3]));
        }
    }
}

// Key block c into stage s: five TMA boxes per 64-row page (four 128-byte column blocks and
// the rope block), per 32-row page with page 32. A page past seq_len or with a bad index is not
// loaded (flagged in sFlags; the owner zeroes its V rows). Issued by one thread: the first four
// blocks by thread 0, each later one by the warp that releases the stage last.
__device__ __forceinline__ void issue_stage(const Params &p, const Cursor &c, const Pref &f, int s, uint32_t sStage,
                                            uint32_t full, uint32_t aFlags)
{
    using C = S32Cfg;
    constexpr uint32_t kW = 4 * 128 + 64; // bytes of one key row over the five boxes
    const int key0 = c.blk * kBN;
    const int ok = block_page_mask<kBN>(p, key0, f, true);
    asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(aFlags + 4u * s), "r"(ok) : "memory"); // read after the full barrier
    const uint32_t bar = full + 8u * s, dst = sStage + (uint32_t)(s * C::kStageBytes);
    if (p.page_size == 64) {
        const bool valid = ok & 1;
        mla_sm90::mbar_arrive_expect_tx(bar, valid ? 64u * kW : 0u);
        if (valid) {
            const int row = f.idx0 * 64;
#pragma unroll
            for (int w = 0; w < 4; w++) mla_sm90::tma_load_2d(dst + (uint32_t)(w * kBN * 128), &p.kv_tma[0], 128 * w, row, bar);
            mla_sm90::tma_load_2d(dst + (uint32_t)(4 * kBN * 128), &p.kv_tma[1], 512, row, bar);
        }
    } else { // page 32: half hh of the block is page hh
        int row[2];
        uint32_t bytes = 0;
#pragma unroll
        for (int hh = 0; hh < 2; hh++) {
            const bool valid = ((ok >> hh) & 1) && key0 + 32 * hh < f.seq;
            row[hh] = valid ? (hh ? f.idx1 : f.idx0) * 32 : -1;
            bytes += valid ? 32u * kW : 0u;
        }
        mla_sm90::mbar_arrive_expect_tx(bar, bytes);
#pragma unroll
        for (int hh = 0; hh < 2; hh++) {
            if (row[hh] < 0) continue;
#pragma unroll
            for (int w = 0; w < 4; w++)
                mla_sm90::tma_load_2d(dst + (uint32_t)(w * kBN * 128 + hh * 32 * 128), &p.kv_tma[0], 128 * w, row[hh], bar);
            mla_sm90::tma_load_2d(dst + (uint32_t)(4 * kBN * 128 + hh * 32 * 64), &p.kv_tma[1], 512, row[hh], bar);
        }
    }
}

// A named barrier of `threads` threads that also returns whether `pred` held in any of them.
__device__ __forceinline__ bool named_bar_or(int id, int threads, bool pred)
{
    uint32_t r;
    asm volatile("{\n.reg .pred p, q;\nsetp.ne.u32 p, %1, 0;\nbarrier.cta.red.or.pred q, %2, %3, p;\nselp.u32 %0, 1, 0, q;\n}\n"
                 : "=r"(r) : "r"((uint32_t)pred), "r"(id), "r"(threads) : "memory");
    return r != 0;
}

// kLazy: the owner's softmax against a lazy reference (MLA_DECODE_FP8_ROWS32=lazy / lazy8; the
// default form since 2026-12-05, 2-4% faster): see its branch below.
// kQ8 (fp8 query only; MLA_DECODE_FP8_ROWS32=seesaw8 / lazy8; lazy8 12-14% faster than lazy): the owner's
// S^T = K Q^T as wgmma m64n32k32 e4m3 from the stage and the fp8 query tile (decode_v2_swap.cuh's
// swap8 for 32 rows): no K loads or conversions on the owner's chain; four float32-added
// accumulators of at most 5 k-steps each; the key rows are the tile's own (fg = g).
// kPick: the seesaw side of MLA_DECODE_FP8_ROWS32=pick (decode_v2_swap.cuh rows32_seesaw_side);
// launched after the head-block grid, so its wait also covers that grid's partials.
template <bool kLazy, bool kQ8 = false, bool kPick = false>
__global__ void __launch_bounds__(kNT, 1) decode_fp8_m32_seesaw_kernel(const __grid_constant__ Params p)
{
    using C = S32Cfg;
    using namespace mla_sm90;
    using mla_decode_v3::acc_fence;
    using mla_decode_v3::desc_add;
    using mla_decode_v3::fence_proxy_async;
    extern __shared__ __align__(128) uint8_t smem_raw[];
    uint8_t *smem = smem_raw;
    {
        const uint32_t a = smem_u32(smem_raw);
        smem += ((a + 1023u) & ~1023u) - a;
    }
    const uint32_t sBase = smem_u32(smem);
    const uint32_t full = sBase + C::offBar, done = full + 8u * kStages, lbar = done + 16u;
    const uint32_t aFlags = sBase + C::offFlags;
    const int part = blockIdx.x;
    if (threadIdx.x == 0) {
        tma_prefetch_map(&p.kv_tma[0]);
        tma_prefetch_map(&p.kv_tma[1]);
        for (int i = 0; i < kStages; i++) mbar_init(full + 8u * i, 1);
        for (int i = 0; i < 2; i++) mbar_init(done + 8u * i, kMath); // every thread of the owner
        for (int i = 0; i < 4; i++) mbar_init(lbar + 8u * i, kMath);  // [request parity][warpgroup]
        for (int i = 0; i < kStages; i++) reinterpret_cast<int *>(smem + C::offCnt)[i] = 0;
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
    if (kPick && !mla_decode_v2s::rows32_seesaw_side(p)) return; // the head blocks took this call
    const int tau = *p.s.tau;
    Cursor cur;
    const int seq0 = part_first_cursor(p, part, cur);
    if (cur.b >= p.batch) return;
    // Issue cursor (every thread): the block that goes into a stage when its last
    // release comes, four blocks after the released one. Warps 0..3 issue blocks 0..3.
    Cursor ic = cur;
    Pref icf = prefetch_block_seq<kBN>(p, ic, seq0);
    for (int i = 0; i < kStages; i++) { // lane 0 of warp i issues block i (a TMA costs its thread ~50-100 cycles)
        if (threadIdx.x == 32u * i && ic.b < p.batch) issue_stage(p, ic, icf, i, sBase + C::offStage, full, aFlags);
        cursor_next(p, part, tau, ic);
        icf = prefetch_block<kBN>(p, ic);
    }

    // Thread index in the warpgroup, opaque to ptxas (decode_bf16_swap.cuh: a visible
    // threadIdx.x & 127 cost 40 registers there); the warpgroup by a shuffle from lane 0, which
    // ptxas knows to be warp-uniform: computed otherwise, every wgmma sat in a "divergent" path
    // and ptxas serialised them (C7520).
    int tid, h;
    asm("and.b32 %0, %1, 127;\n" : "=r"(tid) : "r"((int)threadIdx.x));
    h = __shfl_sync(0xffffffffu, (int)threadIdx.x >> 7, 0);
    const int lane = tid & 31, w = tid >> 5, g = lane >> 2, t = lane & 3;
    const int bar_wg = 1 + h;
    const uint32_t sQ = sBase + C::offQ + (uint32_t)(h * C::kQBytes);
    // Shared-memory float arrays by 32-bit address (index * 4 added where used).
    const uint32_t aRed = sBase + C::offRed + (uint32_t)(h * 4 * kRows * 4), aM = sBase + C::offM,
                   aAlpha = sBase + C::offAlpha, aLsum = sBase + C::offLsum;
    const float qk_scale = p.scale_log2;

    // Per-thread offsets inside a stage. K (S^T's A): as decode_v2_swap.cuh. V (O^T's A): key
    // rows 2t (+1, +8, +9) of a 16-key step, 8 bytes at dims 256 h + 64 w + 8 g, i.e. column
    // block 2h + w / 2, chunk 4 (w & 1) + g / 2 (xor the row's low 3 bits), byte 8 (g & 1):
    // each half warp covers the 32 banks once.
    const int fg = kQ8 ? g : swap_row_key(g);
    const uint32_t kb0 = (uint32_t)((16 * w + fg) * 128 + ((t ^ fg) << 4));
    const uint32_t kb1 = (uint32_t)((16 * w + fg) * 128 + (((4 | t) ^ fg) << 4));
    const uint32_t kbr = (uint32_t)(4 * kBN * 128 + (16 * w + fg) * 64 + ((t ^ (fg >> 1)) << 4));
    const int vch = 4 * (w & 1) + (g >> 1);
    const uint32_t vcb = (uint32_t)((2 * h + (w >> 1)) * kBN * 128 + 8 * (g & 1));
    const uint32_t vb0 = vcb + (uint32_t)((2 * t) * 128 + ((vch ^ (2 * t)) << 4));
    const uint32_t vb1 = vcb + (uint32_t)((2 * t + 1) * 128 + ((vch ^ (2 * t + 1)) << 4));
    const uint64_t qdesc0 = smem_desc(sQ, 16, 1024, 1);
    // kQ8: the fp8 tiles' descriptors (dims [0, 512) in the 128-byte swizzle, the rope in the
    // 64-byte one) of this warpgroup's query tile and of stage 0's key tile.
    const uint64_t q8r = smem_desc(sQ + 4 * kRows * 128, 16, 512, 2);
    const uint64_t k8d = smem_desc(sBase + C::offStage, 16, 1024, 1),
                   k8r = smem_desc(sBase + C::offStage + 4 * kBN * 128, 16, 512, 2);
    const uint64_t pdesc0 = smem_desc(sBase + C::offStage + C::offRope, 16, 1024, 1); // stage 0's P^T

    float o[4][16]; // m-tile i: o[i][4 jj + 2 hh + e] = dim 256 h + 8 (8 w + g) + 2 i + hh, row 8 jj + 2 t + e
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int k = 0; k < 16; k++) o[i][k] = 0.f;
    float l_run[8]; // partial row sums of this thread's rows n = 8 (r / 2) + 2 t + (r & 1)
#pragma unroll
    for (int r = 0; r < 8; r++) {
        l_run[r] = 0.f;
    }
    int lim_min = 0, cur_seq = 0, qb = -1, nfin = 0; // nfin: requests finished (same count in both warpgroups)
    auto row_of = [&](int r) { return 8 * (r >> 1) + 2 * t + (r & 1); };
    auto stage_addr = [&](int j) { return sBase + (uint32_t)(C::offStage + (j & (kStages - 1)) * C::kStageBytes); };
    // This warp is done with block j's stage (its loads retired). The eighth release of a use
    // issues block j + 4 into it: each release is an acq_rel add on the stage's counter, so the
    // last one sees the other warps' reads (fenced to the async proxy) before its TMA. The issue
    // cursor advances in every lane: only the TMA issue sits in a one-lane branch (a spin wait or
    // a cursor walk there put the wgmmas after it in a "divergent" path, C7520).
    auto release_stage = [&](int j) {
        fence_proxy_async(); // the zeroed V rows (generic writes) before the next TMA
        __syncwarp();
        const int st = j & (kStages - 1);
        int old = 0;
        if (lane == 0)
            asm volatile("atom.acq_rel.cta.shared::cta.add.u32 %0, [%1], 1;\n"
                         : "=r"(old) : "r"(sBase + (uint32_t)C::offCnt + 4u * st) : "memory");
        old = __shfl_sync(0xffffffffu, old, 0);
        if ((old & 7) == 7 && ic.b < p.batch && lane == 0) issue_stage(p, ic, icf, st, sBase + C::offStage, full, aFlags);
        __syncwarp();
        cursor_next(p, part, tau, ic);
        icf = prefetch_block<kBN>(p, ic);
    };
    auto rescale = [&](const float (&alpha)[8]) {
        bool any = false;
#pragma unroll
        for (int r = 0; r < 8; r++) any |= alpha[r] != 1.0f;
        if (__any_sync(0xffffffffu, any)) { // most blocks leave every row's maximum alone
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int k = 0; k < 16; k++) o[i][k] *= alpha[2 * (k >> 2) + (k & 1)];
        }
#pragma unroll
        for (int r = 0; r < 8; r++) l_run[r] *= alpha[r];
    };
    // O^T (this warpgroup's 256 dims) += V^T P^T of block j: 4 k-steps of 16 keys, 4 m-tiles.
    auto pv_issue = [&](int j) {
        const uint32_t st = stage_addr(j);
        const uint64_t pd0 = mla_decode_v3::opaque_desc(desc_add(pdesc0, (uint32_t)((j & (kStages - 1)) * C::kStageBytes)));
#pragma unroll
        for (int i = 0; i < 4; i++) acc_fence(o[i]);
        wgmma_fence();
        uint2 vn[4];
        auto v_load = [&](int kk, uint2 (&v)[4]) {
            const uint32_t base = st + (uint32_t)(kk * 2048);
            v[0] = lds64(base + vb0);        // key 16 kk + 2t
            v[1] = lds64(base + vb1);        // key 16 kk + 2t + 1
            v[2] = lds64(base + vb0 + 1024); // + 8
            v[3] = lds64(base + vb1 + 1024);
        };
        v_load(0, vn);
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            const uint2 v0 = vn[0], v1 = vn[1], v2 = vn[2], v3 = vn[3];
            if (kk < 3) v_load(kk + 1, vn);
            if (kk >= 2) wgmma_wait<1>(); // two k-steps of A registers in flight
            uint32_t a[4][4];
#pragma unroll
            for (int wd = 0; wd < 2; wd++) {
                const uint32_t x0 = wd ? v0.y : v0.x, x1 = wd ? v1.y : v1.x, x2 = wd ? v2.y : v2.x, x3 = wd ? v3.y : v3.x;
                mla_decode_ws::e4m3x4_to_f16x4(__byte_perm(x0, x1, 0x5140), a[2 * wd][0], a[2 * wd][1]);
                mla_decode_ws::e4m3x4_to_f16x4(__byte_perm(x2, x3, 0x5140), a[2 * wd][2], a[2 * wd][3]);
                mla_decode_ws::e4m3x4_to_f16x4(__byte_perm(x0, x1, 0x7362), a[2 * wd + 1][0], a[2 * wd + 1][1]);
                mla_decode_ws::e4m3x4_to_f16x4(__byte_perm(x2, x3, 0x7362), a[2 * wd + 1][2], a[2 * wd + 1][3]);
            }
            const uint64_t pd = desc_add(pd0, (uint32_t)(kk * 32));
#pragma unroll
            for (int i = 0; i < 4; i++) wgmma_m64n32k16_rs(o[i], a[i], pd, 1);
            wgmma_commit();
        }
    };
    // The other warpgroup's block j: its P^T and alpha, then this warpgroup's O^T half (issued).
    auto helper_issue = [&](int j) {
        float alpha[8];
#pragma unroll
        for (int r = 0; r < 8; r++) alpha[r] = ldsf(aAlpha + 4u * ((j & (kStages - 1)) * kRows + row_of(r)));
        rescale(alpha);
        pv_issue(j);
    };
    // Request b's end (its last block of this part is jl): each warpgroup writes its half of the
    // dims; the row sums of both warpgroups meet in sLsum. (Each warpgroup keeping whole row sums
    // instead, published with P, needs no barrier here but was 4-5% slower from 8k keys.)
    auto finish = [&](int b, int jl) {
#pragma unroll
        for (int i = 0; i < 4; i++) acc_fence(o[i]);
#pragma unroll
        for (int r = 0; r < 8; r++) {
            float v = l_run[r];
            v += __shfl_xor_sync(0xffffffffu, v, 4);
            v += __shfl_xor_sync(0xffffffffu, v, 8);
            v += __shfl_xor_sync(0xffffffffu, v, 16);
            if (g == 0) stsf(aRed + 4u * (w * kRows + row_of(r)), v);
        }
        mla_decode_v1::named_bar(bar_wg, kMath);
        // This warpgroup's sums into sLsum[request parity][h], then its mbarrier of that parity
        // (all its threads arrive; racecheck did not take a 256-thread named barrier of both
        // warpgroups as ordering these writes and the other's reads). By parity: the other
        // warpgroup reads buffer p before it arrives for the next request, and this one writes
        // buffer p again only after waiting for that arrival; and a barrier cannot complete twice
        // before the other warpgroup has waited on it.
        const uint32_t aL = aLsum + 4u * (uint32_t)((nfin & 1) * 2 * kRows);
        if (w == 0 && g == 0) {
#pragma unroll
            for (int r = 0; r < 8; r++) {
                const int n = row_of(r);
                stsf(aL + 4u * (h * kRows + n), (ldsf(aRed + 4u * n) + ldsf(aRed + 4u * (kRows + n))) +
                                                    (ldsf(aRed + 4u * (2 * kRows + n)) + ldsf(aRed + 4u * (3 * kRows + n))));
            }
        }
        mla_decode_v1::named_bar(bar_wg, kMath); // sRed read before the next softmax writes it
        arrive(lbar + 8u * (uint32_t)(2 * (nfin & 1) + h));
        mbar_wait(lbar + 8u * (uint32_t)(2 * (nfin & 1) + (h ^ 1)), (uint32_t)(nfin >> 1) & 1u);
        __syncwarp();
        const int nsplit = p.s.num_splits[b];
        const int slot = p.s.slot_base[b] + part - p.s.first_part[b];
        const int c = 8 * w + g; // this thread's 8 output dims [256 h + 8 c, +8)
#pragma unroll
        for (int r = 0; r < 8; r++) {
            const int n = row_of(r);
            if (n >= p.rows) continue;
            const float L = ldsf(aL + 4u * n) + ldsf(aL + 4u * (kRows + n));
            const float inv = L > 0.f ? 1.0f / L : 0.f;
            const int kx = 4 * (r >> 1) + (r & 1); // o[i][kx] dim 2 i, o[i][kx + 2] dim 2 i + 1
            const float sc = nsplit == 1 ? inv * p.bmm2 : inv;
            uint32_t wv[4];
            const size_t row = (size_t)b * p.rows + n, prow = (size_t)slot * p.rows + n;
            if (nsplit == 1) {
#pragma unroll
                for (int i = 0; i < 4; i++) wv[i] = pack2<false>(o[i][kx] * sc, o[i][kx + 2] * sc);
                *reinterpret_cast<uint4 *>(p.out + row * kDv + 256 * h + 8 * c) = make_uint4(wv[0], wv[1], wv[2], wv[3]);
            } else {
                // float16 partials (decode_split.cuh): |O / l| <= 448 for an fp8 cache.
#pragma unroll
                for (int i = 0; i < 4; i++) wv[i] = pack2<true>(o[i][kx] * sc, o[i][kx + 2] * sc);
                *reinterpret_cast<uint4 *>(reinterpret_cast<uint16_t *>(p.s.part_o) + prow * kDv + 256 * h + 8 * c) =
                    make_uint4(wv[0], wv[1], wv[2], wv[3]);
            }
            if (h == 0 && c == 0) {
                const float m = ldsf(aM + 4u * ((jl & (kStages - 1)) * kRows + n));
                const float lse = L > 0.f ? (m + log2f(L)) * 0.69314718055994531f : -INFINITY;
                if (nsplit > 1) p.s.part_lse[prow] = lse;
                else if (p.lse) p.lse[row] = lse;
            }
        }
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int k = 0; k < 16; k++) o[i][k] = 0.f;
#pragma unroll
        for (int r = 0; r < 8; r++) l_run[r] = 0.f;
        nfin++;
    };

    const int first_b = cur.b;
    // pend: block j - 1 (the other warpgroup's) still needs this warpgroup's O^T half.
    bool pend = false, pend_last = false;
    int pend_b = 0;
    auto take_pending = [&]() { // the cursor's block becomes the pending one
        pend = cur.b < p.batch;
        pend_b = cur.b;
        pend_last = cur.blk + 1 >= cur.hi;
        cursor_next(p, part, tau, cur);
    };
    if (h == 1) take_pending();
    // One trip per own block j (j % 2 == h); no branch on the owner inside the trip: a wgmma
    // under such a branch made ptxas serialise them all (C7520).
    int j = h;
    for (; cur.b < p.batch; j += 2) {
        const int b = cur.b, key0 = cur.blk * kBN;
        const bool last = cur.blk + 1 >= cur.hi, start = j == 0 || pend_last;
        const int pend_j = j - 1;
        cursor_next(p, part, tau, cur);
        bool sync = false;
        if (b != qb) {
            if constexpr (kQ8) load_q8_32(p, b, sQ, tid);
            else load_qt32(p, b, sQ, tid);
            qb = b;
            const int seq = b == first_b ? seq0 : p.s.seq_eff[b];
            lim_min = p.causal ? seq - p.q_len + 1 : seq;
            cur_seq = seq;
            sync = true;
        }
        mbar_wait(full + 8u * (j & (kStages - 1)), (uint32_t)(j / kStages) & 1u);
        __syncwarp();
        const uint32_t st = stage_addr(j);
        int pmask;
        asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(pmask) : "r"(aFlags + 4u * (j & (kStages - 1))));
        const int full_mask = kBN > p.page_size ? 3 : 1;
        if (key0 + kBN > cur_seq || pmask != full_mask) {
            // V bytes of rows not loaded or past seq_len -> 0 (stale bytes could be NaN
            // patterns, which P = 0 does not cancel); the other warpgroup reads them after done.
#pragma unroll 4
            for (int it = 0; it < kBN * 32 / kMath; it++) {
                const int i = tid + kMath * it, r = i >> 5, cb = (i >> 3) & 3, c16 = i & 7;
                const bool ok = key0 + r < cur_seq && ((pmask >> (kBN > p.page_size ? r >> 5 : 0)) & 1);
                if (!ok) mla_decode_ws::st_shared16(st + (uint32_t)(cb * kBN * 128 + r * 128 + c16 * 16), make_uint4(0, 0, 0, 0));
            }
            sync = true;
        }
        if (sync) { // Q^T stores -> wgmma, zeroed rows -> every thread's loads
            fence_proxy_async();
            mla_decode_v1::named_bar(bar_wg, kMath);
        }

        float s[16];
        if constexpr (kQ8) {
            // ---- S^T = K Q^T: 18 k-steps of 32 dims, e4m3, both operands by descriptor ----
            float acc[4][16];
            const uint32_t soff = (uint32_t)((j & (kStages - 1)) * C::kStageBytes);
            const uint64_t kd = mla_decode_v3::opaque_desc(desc_add(k8d, soff)), kr = mla_decode_v3::opaque_desc(desc_add(k8r, soff));
            const uint64_t qd = mla_decode_v3::opaque_desc(qdesc0), qr = mla_decode_v3::opaque_desc(q8r);
            wgmma_fence();
#pragma unroll
            for (int ks = 0; ks < 18; ks++) {
                const uint64_t da = ks < 16 ? desc_add(kd, (uint32_t)((ks >> 2) * (kBN * 128) + (ks & 3) * 32))
                                            : desc_add(kr, (uint32_t)((ks - 16) * 32));
                const uint64_t db = ks < 16 ? desc_add(qd, (uint32_t)((ks >> 2) * (kRows * 128) + (ks & 3) * 32))
                                            : desc_add(qr, (uint32_t)((ks - 16) * 32));
                wgmma_m64n32k32_e4m3(acc[ks & 3], da, db, ks >= 4);
            }
            wgmma_commit();
            wgmma_wait<0>();
#pragma unroll
            for (int u = 0; u < 4; u++) acc_fence(acc[u]);
#pragma unroll
            for (int k = 0; k < 16; k++) s[k] = (acc[0][k] + acc[1][k]) + (acc[2][k] + acc[3][k]);
        } else {
            // ---- S^T = K Q^T: 9 spans of 64 dims, 4 k-steps each, into kNA accumulators ----
            float sacc[kNA][16];
#pragma unroll
            for (int u = 0; u < kNA; u++) {
#pragma unroll
                for (int k = 0; k < 16; k++) sacc[u][k] = 0.f;
                acc_fence(sacc[u]);
            }
            auto k_addr = [&](int q) -> uint32_t {
                return q < 8 ? st + (uint32_t)((q >> 1) * kBN * 128) + ((q & 1) ? kb1 : kb0) : st + kbr;
            };
            {
                uint4 kn0 = lds128(k_addr(0)), kn1 = lds128(k_addr(0) + 1024);
                const uint64_t qd = mla_decode_v3::opaque_desc(qdesc0);
                wgmma_fence();
#pragma unroll
                for (int q = 0; q < 9; q++) {
                    const uint4 k0 = kn0, k1 = kn1;
                    if (q < 8) {
                        kn0 = lds128(k_addr(q + 1));
                        kn1 = lds128(k_addr(q + 1) + (q + 1 < 8 ? 1024 : 512));
                    }
                    if (q >= kSpans) wgmma_wait<kSpans - 1>(); // bounds the A registers in flight
                    uint32_t a[4][4];
#pragma unroll
                    for (int u = 0; u < 4; u++) {
                        mla_decode_ws::e4m3x4_to_f16x4(word(k0, u), a[u][0], a[u][2]);
                        mla_decode_ws::e4m3x4_to_f16x4(word(k1, u), a[u][1], a[u][3]);
                    }
#pragma unroll
                    for (int u = 0; u < 4; u++)
                        wgmma_m64n32k16_rs(sacc[u % kNA], a[u], desc_add(qd, (uint32_t)(q * kRows * 128 + u * 32)), q > 0 || u >= kNA);
                    wgmma_commit();
                }
            }
            // S^T retires before the other's block: its A registers and accumulators would not fit
            // next to the P V operands (ptxas then serialises the wgmmas, C7511/C7512).
            wgmma_wait<0>();
#pragma unroll
            for (int u = 0; u < kNA; u++) acc_fence(sacc[u]);
#pragma unroll
            for (int k = 0; k < 16; k++) {
                float v = sacc[0][k];
#pragma unroll
                for (int u = 1; u < kNA; u++) v += sacc[u][k];
                s[k] = v;
            }
        }
        // m_{j-1} (and the ring of m, alpha free again): the other warpgroup's done(j - 1).
        if (pend) {
            mbar_wait(done + 8u * (pend_j & 1), (uint32_t)(pend_j >> 1) & 1u);
            __syncwarp();
        }

        float alpha[8], ref[8], mnew[8];
        {
            // ---- mask, scale, column (query row) max over the 64 keys ----
            const int page0 = key0 >> p.page_shift;
            const bool all_valid = key0 + kBN <= lim_min && pmask == full_mask;
            float mx[8];
#pragma unroll
            for (int r = 0; r < 8; r++) mx[r] = -INFINITY;
            if (all_valid) {
#pragma unroll
                for (int k = 0; k < 16; k++) {
                    const int r = 2 * (k >> 2) + (k & 1);
                    s[k] *= qk_scale;
                    mx[r] = fmaxf(mx[r], s[k]);
                }
            } else {
#pragma unroll
                for (int k = 0; k < 16; k++) {
                    const int r = 2 * (k >> 2) + (k & 1), hh = (k >> 1) & 1;
                    const int key = key0 + 16 * w + 8 * hh + fg;
                    const int gr = row_of(r); // (the row's key limit, computed here: a rare path)
                    const int lim = gr >= p.rows ? -1 : p.causal ? cur_seq - p.q_len + gr / p.heads + 1 : cur_seq;
                    const bool valid = (key < lim) & (((pmask >> ((key >> p.page_shift) - page0)) & 1) != 0);
                    const float v = valid ? s[k] * qk_scale : -INFINITY;
                    s[k] = v;
                    mx[r] = fmaxf(mx[r], v);
                }
            }
            bool exchange = true;
            if constexpr (kLazy) {
                // The lazy form (as decode_v2_swap.cuh's): P^T against m_{j-1} (P <= 2^8 while no
                // score exceeds it by more than kLazyMax); the first barrier ORs the "exceeded"
                // flags, and only then the maxima are exchanged (a piece's first block, or a jump
                // above 2^8). That barrier also orders every warp's S^T rope loads before the
                // P^T stores into the rope.
                bool exceeded = false;
#pragma unroll
                for (int r = 0; r < 8; r++) {
                    // m_{j-1} from the other warpgroup (done(j - 1) waited for above), unless j starts a piece.
                    mnew[r] = start ? -INFINITY : ldsf(aM + 4u * (((j - 1) & (kStages - 1)) * kRows + row_of(r)));
                    ref[r] = mnew[r] == -INFINITY ? 0.f : mnew[r];
                    alpha[r] = 1.0f;
                    exceeded |= mx[r] > mnew[r] + kLazyMax;
                }
                exchange = named_bar_or(bar_wg, kMath, exceeded);
            }
            if (exchange) {
#pragma unroll
                for (int r = 0; r < 8; r++) {
                    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 4));
                    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 8));
                    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 16));
                    if (g == 0) stsf(aRed + 4u * (w * kRows + row_of(r)), mx[r]);
                }
                mla_decode_v1::named_bar(bar_wg, kMath);
#pragma unroll
                for (int r = 0; r < 8; r++) {
                    const int n = row_of(r);
                    // m_{j-1} from the other warpgroup (done(j - 1) waited for above), unless j starts a piece.
                    const float mp = start ? -INFINITY : ldsf(aM + 4u * (((j - 1) & (kStages - 1)) * kRows + n));
                    const float m = fmaxf(fmaxf(mp, fmaxf(ldsf(aRed + 4u * n), ldsf(aRed + 4u * (kRows + n)))),
                                          fmaxf(ldsf(aRed + 4u * (2 * kRows + n)), ldsf(aRed + 4u * (3 * kRows + n))));
                    ref[r] = m == -INFINITY ? 0.f : m;
                    alpha[r] = fast_exp2(mp - ref[r]);
                    mnew[r] = m;
                }
            }
        }
        // P^T[n][key] as f16 (row n: 128 bytes, chunk (key / 8) ^ (n & 7)) in the stage's rope
        // block: only S^T reads the rope, and the stage lives until both P V halves are done.
        const uint32_t sPj = st + (uint32_t)C::offRope;
        float psum[8];
#pragma unroll
        for (int r = 0; r < 8; r++) psum[r] = 0.f;
#pragma unroll
        for (int k = 0; k < 16; k++) {
            const int r = 2 * (k >> 2) + (k & 1), hh = (k >> 1) & 1;
            const int n = row_of(r), key = 16 * w + 8 * hh + fg;
            const float pv = fast_exp2(s[k] - ref[r]);
            psum[r] += pv;
            const __half hv = __float2half_rn(pv);
            const uint32_t addr = sPj + (uint32_t)(n * 128 + (((key >> 3) ^ (n & 7)) << 4) + ((key & 7) << 1));
            asm volatile("st.shared.b16 [%0], %1;\n" ::"r"(addr), "h"(*reinterpret_cast<const uint16_t *>(&hv)) : "memory");
        }
        if (w == 0 && g == 0) {
#pragma unroll
            for (int r = 0; r < 8; r++) {
                stsf(aM + 4u * ((j & (kStages - 1)) * kRows + row_of(r)), mnew[r]);
                stsf(aAlpha + 4u * ((j & (kStages - 1)) * kRows + row_of(r)), alpha[r]);
            }
        }
        fence_proxy_async(); // P^T stores -> both warpgroups' wgmma
        mla_decode_v1::named_bar(bar_wg, kMath);
        // Every thread arrives: its own writes (P^T, m, alpha, zeroed V rows) are then released
        // to the other warpgroup directly (with one arrival after the barrier, racecheck saw the
        // m / alpha writes of the other threads as unsynchronised).
        arrive(done + 8u * (j & 1));

        // ---- the other warpgroup's block j - 1, off the chain of maxima ----
        if (pend) helper_issue(pend_j);
        // (One wait on every path: a wait only under `if (pend)` left paths to the reads of o
        // below that ptxas could not rule out, and it serialised every wgmma, C7514/C7520.)
        wgmma_wait<0>();
        if (pend) {
            release_stage(pend_j);
            // The previous request ended with the other's block: this warpgroup's half of it.
            if (pend_last) finish(pend_b, pend_j);
            pend = false;
        }

        // ---- this warpgroup's O^T half of block j ----
        rescale(alpha);
#pragma unroll
        for (int r = 0; r < 8; r++) l_run[r] += psum[r];
        pv_issue(j);
        wgmma_wait<0>();
        release_stage(j);
        if (last) finish(b, j);
        take_pending();
    }
    if (pend) { // the part's last block is the other warpgroup's
        mbar_wait(done + 8u * ((j - 1) & 1), (uint32_t)((j - 1) >> 1) & 1u);
        __syncwarp();
        helper_issue(j - 1);
        wgmma_wait<0>();
        release_stage(j - 1);
        finish(pend_b, j - 1);
    }
}

} // namespace mla_decode_s32
