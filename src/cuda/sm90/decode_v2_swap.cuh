// Split-KV MLA decode for H * q_len <= 16 rows (up to 32 as two head blocks) with an fp8 cache,
// "swap" form of version 2: the products are transposed so that the 64 keys of a block fill
// wgmma's M = 64 and the 16 query rows are its N, with no padding:
//   S^T (64 keys x 16 rows) = K (64 x 576) Q^T          wgmma m64n16k16, A = K from registers
//   O^T (512 dims x 16 rows) += V^T (512 x 64) P^T      8 x wgmma m64n16k16, A = V^T from registers
// Both A operands are built in registers straight from the raw fp8 stage (cvt e4m3x2 -> f16x2,
// exact; V^T's key pairs interleaved with one prmt per two conversions), so the stage is read
// once by plain 16-byte loads and nothing is written back to shared memory except P^T (2 KB).
// Q^T (16 rows x 576, f16) and P^T (16 rows x 64 keys) are K-major B tiles in the 128-byte
// swizzle. Per warp and 64-key block: 34 shared loads of the stage, 272 conversions, 64 byte
// permutes and 68 wgmma; 925 instructions in all (ncu), against 1129 for version 2's mma.sync
// form (bench/NOTES.md, seventeenth session).
//
// Index maps (the k order of an MMA is free; both operands use the same one):
//   * S^T's k: k-step 4q + u, slot s = 8 hi + 2 t + e  <->  dim 64 q + 16 t + 4 u + 2 hi + e, so
//     thread t's A slots for 4 k-steps are the 16 consecutive bytes [64 q + 16 t, +16) of a key
//     row; Q^T is stored in the same order.
//   * S^T's rows: warp w row g + 8 h is key 16 w + 8 h + f(g), f(g) = (g >> 1) ^ (5 (g & 1)): the
//     two rows of a quarter warp then differ in bits 0 and 2, which keeps the K loads free of
//     bank conflicts in both the 128-byte-swizzled column blocks and the 64-byte rope block.
//   * O^T's rows: m-tile i, warp w row g + 8 h is dim 16 (8 w + g) + 2 i + h, so one 16-byte
//     load of a key row (dims [16 c, +16), c = 8 w + g) feeds all 8 m-tiles, and the thread ends
//     with 16 consecutive output dims per query row. V^T's k slot s of k-step kk is key 16 kk + s.
// 128 threads (one warpgroup), 64-key blocks in 2 stages filled by TMA (version 2's kConvTma
// stage, issue_block_tma), two CTAs per SM; same scheduler, cursor and partials as version 2.
#pragma once
#include "decode_v2_fp8reg.cuh"
#include "timeline.cuh" // MLA_SEESAW_TL: bench/probes/swap_timeline.cu
#include "wgmma_operands.cuh"

namespace mla_decode_v2s {

using namespace mla_decode_v2;

constexpr int kBN = 64;
// The lazy form: how far (log2 units) a block's score may exceed its row's reference before the
// reference moves (P <= 2^8 in f16).
constexpr float kLazyMax = 8.f;
struct SwapCfg {
    static constexpr int kStageBytes = kBN * kRow8; // 36 KB, stw_off<64>'s layout
    static constexpr int offStage = 0;
    static constexpr int offQ = 2 * kStageBytes;     // Q^T: 9 column blocks x 16 rows x 128 B
    static constexpr int offP = offQ + 9 * 2048;     // P^T: 16 rows x 128 B
    static constexpr int offRedMax = offP + 2048;    // [4 warps][16 rows]
    static constexpr int offRedSum = offRedMax + 256;
    static constexpr int offFlags = offRedSum + 256;
    static constexpr int offBar = offFlags + 16;
    static constexpr int kSmem = offBar + 16 + 1024; // + alignment slack (base aligned to 1024)
    // The lazy form's second P^T buffer (block parity): see the kernel's kLazy branch.
    static constexpr int offP2 = (offBar + 16 + 1023) / 1024 * 1024;
    static constexpr int kSmemLazy = offP2 + 2048 + 1024;
    static_assert(offQ % 1024 == 0 && offP % 1024 == 0 && offP2 % 1024 == 0, "swizzled tiles need 1024-byte alignment");
    static_assert(2 * (kSmemLazy + 1024) <= 228 * 1024, "two CTAs per SM");
};

// Rows 17..32 with an fp8 cache: the 32-row seesaw (decode_fp8_seesaw32.cuh) is the faster
// kernel from this many keys in the whole call, two 16-row head blocks of this kernel below
// (H200 A/Bs, bench/NOTES.md nineteenth and twenty-second sessions; decode.cu's key rule).
constexpr long long kSeesaw32MinKeys = 320LL * 1024;

// MLA_DECODE_FP8_ROWS32=pick, where the host does not know the call's keys: the head-block launch
// of this kernel and the seesaw's launch both run on the same split layout, and after the
// scheduler each CTA reads the call's key blocks (units up to the last request, less its
// overheads, plus its blocks: two loads) to learn which side of the rule the call is on; the
// other launch's CTAs leave at once. Counting blocks of 64 keys, an empty request counts one.
__device__ __forceinline__ bool rows32_seesaw_side(const Params &p)
{
    const int last = p.batch - 1;
    const long long blocks = (long long)p.s.req_start[last] - (long long)MLA_DECODE_OVERHEAD * last +
                             p.s.num_blocks[last];
    return blocks * kBN >= kSeesaw32MinKeys;
}

// D(64x16) += A(64x16, registers) * B(16x16, shared memory K-major, 128-byte swizzle), f16.
__device__ __forceinline__ void wgmma_m64n16k16_rs(float (&d)[8], const uint32_t (&a)[4], uint64_t db, int acc)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n16k16.f32.f16.f16 "
                 MLA_WG_REGS8 ", {%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n"
                 : MLA_WG_ACC8(d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc));
}
__device__ __forceinline__ uint4 lds128(uint32_t addr)
{
    uint4 v;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr));
    return v;
}
__device__ __forceinline__ uint32_t word(const uint4 &v, int i) { return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w; }
// Key of S^T row g (+ 8 h) of warp w, below the block's first key.
__device__ __forceinline__ int swap_row_key(int g) { return (g >> 1) ^ (5 * (g & 1)); }

// Q^T rows [row0, row0 + 16) of request b into the tile at sQ (rows >= p.rows zero): 16 rows x
// 72 chunks of 8 f16 (column blocks of 16 rows x 128 bytes), chunk (q, u, hi) of row n holding
// dims 64 q + 16 t + 4 u + 2 hi + {0, 1} for t = 0..3. All loads are issued before `between`
// runs.
template <bool kFp8, int kPasses = 1, typename F>
__device__ __forceinline__ void load_qt_t(const Params &p, int b, int row0, uint32_t sQ, F between)
{
    constexpr int R = kM, T = kNT, kChunks = R * 72, kIt = kChunks / T / kPasses;
    static_assert(kChunks % (T * kPasses) == 0, "Q^T chunks per thread");
#pragma unroll 1
    for (int pass = 0; pass < kPasses; pass++) {
    uint32_t x[kIt][4];
#pragma unroll
    for (int i = 0; i < kIt; i++) {
        const int ci = (int)threadIdx.x + T * (i + kIt * pass), n = ci / 72, rem = ci % 72;
        const int d0 = 64 * (rem >> 3) + 4 * ((rem >> 1) & 3) + 2 * (rem & 1);
        const size_t e = ((size_t)b * p.rows + min(row0 + n, p.rows - 1)) * kDqk + d0;
#pragma unroll
        for (int t = 0; t < 4; t++) {
            if constexpr (kFp8) x[i][t] = __ldg(reinterpret_cast<const uint16_t *>((const uint8_t *)p.q + e + 16 * t));
            else x[i][t] = __ldg(reinterpret_cast<const uint32_t *>((const uint16_t *)p.q + e + 16 * t));
        }
    }
    if (pass == 0) between();
#pragma unroll
    for (int i = 0; i < kIt; i++) {
        const int ci = (int)threadIdx.x + T * (i + kIt * pass), n = ci / 72, rem = ci % 72;
        uint32_t h[4];
#pragma unroll
        for (int t = 0; t < 4; t++) {
            if constexpr (kFp8) h[t] = e4m3x2_to_f16x2((uint16_t)x[i][t]);
            else h[t] = bf16x2_to_f16x2_sat(x[i][t]);
            if (row0 + n >= p.rows) h[t] = 0u;
        }
        const uint32_t addr = sQ + (uint32_t)((rem >> 3) * (R * 128) + n * 128 + (((rem & 7) ^ (n & 7)) << 4));
        mla_decode_ws::st_shared16(addr, make_uint4(h[0], h[1], h[2], h[3]));
    }
    }
}

template <int N> struct QPasses { static constexpr int value = N; }; // load_qt_t's passes, as a lambda argument

// kLazy: the softmax against a lazy reference (MLA_DECODE_V2_CONV=lazy, and lazy8, the default
// since 2026-12-05: 2.5-3.5% faster from 16k keys on an H200, bench/NOTES.md): see the branch below.
// kQLoop: passes of a new request's Q^T load inside the loop (1: all 36 load registers in flight
// at once; 3: 12, with the rows prefetched into L1 a block ahead, which takes the kernel from 255
// registers to 235-239: the opt-in "swapq3" form, to tell this effect from the lazy softmax's).
// kQ8 (fp8 query only; "swap8", and "lazy8" with kLazy, the default; 5.5-6% faster): S^T = K Q^T as wgmma m64n16k32 e4m3 with both
// operands in shared memory (A = the stage's key tile as TMA wrote it, B = the fp8 query tile,
// both K-major in the 128- and 64-byte swizzles; decode_v2_fp8reg.cuh's w8 layout): no K
// conversion, no K loads, 18 MMAs instead of 36. Products of e4m3 values are exact; the fp8
// tensor cores keep fewer accumulator bits than float32 (~14, DeepSeek-V3 report), so each of
// five accumulators takes at most 4 k-steps (128 dims) and they are added in float32. The key
// rows are then the tile's own (fg = g).
// kPick: the head-block side of MLA_DECODE_FP8_ROWS32=pick (rows32_seesaw_side).
template <bool kLazy, int kQLoop = kLazy ? 3 : 1, bool kQ8 = false, bool kPick = false>
__global__ void __launch_bounds__(kNT, 2) decode_fp8_m16_swap_kernel(const __grid_constant__ Params p)
{
    using C = SwapCfg;
    using namespace mla_sm90;
    extern __shared__ __align__(128) uint8_t smem_raw[];
    uint8_t *smem = smem_raw;
    {
        const uint32_t a = smem_u32(smem_raw);
        smem += ((a + 1023u) & ~1023u) - a;
    }
    const uint32_t sBase = smem_u32(smem);
    const uint32_t sQ = sBase + C::offQ, sP = sBase + C::offP;
    float *sRedMax = reinterpret_cast<float *>(smem + C::offRedMax);
    float *sRedSum = reinterpret_cast<float *>(smem + C::offRedSum);
    int *sFlags = reinterpret_cast<int *>(smem + C::offFlags);
    const uint32_t barBase = sBase + C::offBar;

    // Head block hb (blockIdx.y) takes query rows [16 hb, 16 hb + 16): rows 17..32 run as two
    // head blocks whose CTAs read the same key blocks (the second mostly from L2).
    const int part = blockIdx.x, row0 = kM * (int)blockIdx.y;
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    // Timeline stamps (-DMLA_SEESAW_TIMELINE only): lane 0 of warps 0 and 3, per block j.
#define MLA_SWAP_TL(ev)                                  \
    do {                                                 \
        MLA_SEESAW_TL(tid == 0, 0, ev, j);               \
        MLA_SEESAW_TL(tid == 96, 1, ev, j);              \
    } while (0)
#ifdef MLA_DECODE_TRACE // bench/probes/decode_trace.cu: the same stamps as version 2
    const unsigned long long tr_entry = mla_trace_now();
    unsigned long long tr_issued = 0, tr_first = 0;
    int tr_blocks = 0;
#endif
    if (tid == 0) {
        tma_prefetch_map(&p.kv_tma[0]);
        tma_prefetch_map(&p.kv_tma[1]);
        for (int i = 0; i < 2; i++) mbar_init(barBase + 8u * i, kNT / 32); // issue_block_tma
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#ifdef MLA_DECODE_TRACE
    const unsigned long long tr_waited = mla_trace_now();
#endif
    if (kPick && rows32_seesaw_side(p)) return; // the seesaw's launch takes this call
    const int tau = *p.s.tau;
    const float qk_scale = p.scale_log2;

    Cursor cons;
    const int seq0 = part_first_cursor(p, part, cons);
    if (cons.b >= p.batch) {
#ifdef MLA_DECODE_TRACE
        mla_trace_split_end(tr_entry, tr_waited, 0, 0, 0);
#endif
        return;
    }

    // Per-thread shared-memory offsets inside a stage (see the header's maps).
    const int fg = kQ8 ? g : swap_row_key(g);
    const uint32_t kb0 = (uint32_t)((16 * w + fg) * 128 + ((t ^ fg) << 4));       // even 64-dim spans
    const uint32_t kb1 = (uint32_t)((16 * w + fg) * 128 + (((4 | t) ^ fg) << 4)); // odd spans
    const uint32_t kbr = (uint32_t)(4 * kBN * 128 + (16 * w + fg) * 64 + ((t ^ (fg >> 1)) << 4));
    const uint32_t vb0 = (uint32_t)(w * kBN * 128 + (2 * t) * 128 + ((g ^ (2 * t)) << 4));
    const uint32_t vb1 = (uint32_t)(w * kBN * 128 + (2 * t + 1) * 128 + ((g ^ (2 * t + 1)) << 4));

    float o[8][8]; // O^T m-tile i: o[i][4 j + 2 h + e] = dim 16 (8 w + g) + 2 i + h, row 8 j + 2 t + e
#pragma unroll
    for (int i = 0; i < 8; i++)
#pragma unroll
        for (int k = 0; k < 8; k++) o[i][k] = 0.f;
    // Running max and partial sums of this thread's 4 rows n = 8 j + 2 t + e, index 2 j + e.
    float m_run[4], l_run[4];
    int lim_row[4];
    int lim_min = 0, cur_seq = 0;
#pragma unroll
    for (int r = 0; r < 4; r++) {
        m_run[r] = -INFINITY;
        l_run[r] = 0.f;
        lim_row[r] = 0;
    }
    auto set_limits = [&](int seq) {
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const int gr = row0 + 8 * (r >> 1) + 2 * t + (r & 1);
            lim_row[r] = gr >= p.rows ? -1 : p.causal ? seq - p.q_len + gr / p.heads + 1 : seq;
        }
        lim_min = p.causal ? seq - p.q_len + 1 : seq;
        cur_seq = seq;
    };
    // (Inside the loop the lazy form loads a new request's Q^T in three passes of 12 registers:
    // with all 36 in flight next to o, ptxas spilled ~110 bytes in its loop. See kQLoop.)
    auto load_q = [&](int b, auto between, auto passes) {
        if constexpr (kQ8) {
            (void)passes;
            load_q8_tile(p, b, smem + C::offQ, between, row0); // (the launcher: fp8 query)
        } else {
            constexpr int kQPasses = decltype(passes)::value;
            if (p.q_fp8) load_qt_t<true, kQPasses>(p, b, row0, sQ, between);
            else load_qt_t<false, kQPasses>(p, b, row0, sQ, between);
        }
    };
    auto issue = [&](int s, const Cursor &c, const Pref &f) {
        issue_block_tma<kBN>(p, c, f, sBase + (uint32_t)(C::offStage + s * C::kStageBytes), &sFlags[s], barBase + 8u * s);
    };
    // Descriptor bases, made opaque once per block so that each k-step's descriptor is one add
    // (formed from the address per wgmma, they cost ~3.5 uniform instructions each: 245 of the
    // 1157 instructions per warp and block, ncu).
    const uint64_t qdesc0 = smem_desc(sQ, 16, 1024, 1), pdesc0 = smem_desc(sP, 16, 1024, 1);
    // kQ8: the fp8 tiles' descriptors, dims [0, 512) (128-byte swizzle) and the rope (64-byte),
    // of the query tile and of stage 0's key tile.
    const uint64_t q8d = smem_desc(sQ, 16, 1024, 1), q8r = smem_desc(sQ + 4 * kM * 128, 16, 512, 2);
    const uint64_t k8d = smem_desc(sBase + C::offStage, 16, 1024, 1),
                   k8r = smem_desc(sBase + C::offStage + 4 * kBN * 128, 16, 512, 2);
    const uint64_t pdesc1 = smem_desc(sBase + C::offP2, 16, 1024, 1); // kLazy only

    Cursor prod = cons;
    Pref pref;
    load_q(cons.b, [&] { pref = prefetch_block_seq<kBN>(p, prod, seq0); }, QPasses<1>{});
    set_limits(seq0);
    issue(0, prod, pref);
    cursor_next(p, part, tau, prod);
    pref = prefetch_block<kBN>(p, prod);
    int nprod = 1;
    bool new_req = false;
#ifdef MLA_DECODE_TRACE
    tr_issued = mla_trace_now();
#endif

    int j = 0;
    for (; cons.b < p.batch; j++) {
        const int stage = j & 1;
        MLA_SWAP_TL(0); // block start
        if (new_req) {
            int seq;
            load_q(cons.b, [&] { seq = p.s.seq_eff[cons.b]; }, QPasses<kQLoop>{});
            set_limits(seq);
            new_req = false;
        }
        mbar_wait(barBase + 8u * stage, (uint32_t)(j >> 1) & 1u);
        mla_decode_v3::fence_proxy_async(); // Q^T and P^T stores -> wgmma
        __syncthreads();
        MLA_SWAP_TL(1); // stage landed, all warps in
#ifdef MLA_DECODE_TRACE
        if (j == 0) tr_first = mla_trace_now();
        tr_blocks++;
#endif
        issue(nprod & 1, prod, pref);
        if constexpr (kQLoop > 1) {
            // The block just issued starts a new request: its Q^T rows into L1 now, a block
            // ahead of load_q, so that the three passes find them there instead of paying three
            // L2 round trips. Addresses only, no registers held.
            if (prod.b != cons.b && prod.b < p.batch) {
                const int nr = min(kM, p.rows - row0);
                const uint32_t esz = p.q_fp8 ? 1u : 2u, lines = ((uint32_t)nr * kDqk * esz + 127u) / 128u;
                const uint8_t *q0 = (const uint8_t *)p.q + ((size_t)prod.b * p.rows + row0) * kDqk * esz;
                for (uint32_t l = (uint32_t)tid; l < lines; l += kNT)
                    asm volatile("prefetch.global.L1 [%0];\n" ::"l"(q0 + 128u * l));
            }
        }
        cursor_next(p, part, tau, prod);
        pref = prefetch_block<kBN>(p, prod);
        nprod++;
        MLA_SWAP_TL(2); // next block issued, cursor advanced
        const int pmask = sFlags[stage];
        const uint32_t st = sBase + (uint32_t)(C::offStage + stage * C::kStageBytes);
        const int key0 = cons.blk * kBN;
        const int full_mask = kBN > p.page_size ? 3 : 1;
        if (key0 + kBN > cur_seq || pmask != full_mask) {
            // V bytes of rows not loaded or past seq_len -> 0 (stale bytes could be NaN
            // patterns, which P = 0 does not cancel). Only a request's last block and bad pages.
            uint8_t *stp = smem + C::offStage + stage * C::kStageBytes;
            for (int i = tid; i < kBN * 32; i += kNT) {
                const int r = i >> 5, cb = (i >> 3) & 3, c16 = i & 7;
                const bool ok = key0 + r < cur_seq && ((pmask >> (kBN > p.page_size ? r >> 5 : 0)) & 1);
                if (!ok) *reinterpret_cast<uint4 *>(stp + cb * kBN * 128 + r * 128 + c16 * 16) = make_uint4(0, 0, 0, 0);
            }
            mla_decode_v3::fence_proxy_async(); // before a later TMA rewrites these bytes
            __syncthreads();
        }

        float s[8];
        if constexpr (kQ8) {
            // ---- S^T = K Q^T: 18 k-steps of 32 dims, e4m3, both operands by descriptor ----
            float acc[5][8];
            const uint64_t kd = mla_decode_v3::opaque_desc(mla_decode_v3::desc_add(k8d, (uint32_t)(stage * C::kStageBytes)));
            const uint64_t kr = mla_decode_v3::opaque_desc(mla_decode_v3::desc_add(k8r, (uint32_t)(stage * C::kStageBytes)));
            const uint64_t qd = mla_decode_v3::opaque_desc(q8d), qr = mla_decode_v3::opaque_desc(q8r);
            wgmma_fence();
#pragma unroll
            for (int ks = 0; ks < 18; ks++) {
                // k-step ks into acc[ks % 5]: consecutive MMAs independent, <= 4 k-steps per accumulator
                const uint64_t da = ks < 16 ? mla_decode_v3::desc_add(kd, (uint32_t)((ks >> 2) * (kBN * 128) + (ks & 3) * 32))
                                            : mla_decode_v3::desc_add(kr, (uint32_t)((ks - 16) * 32));
                const uint64_t db = ks < 16 ? mla_decode_v3::desc_add(qd, (uint32_t)((ks >> 2) * (kM * 128) + (ks & 3) * 32))
                                            : mla_decode_v3::desc_add(qr, (uint32_t)((ks - 16) * 32));
                wgmma_m64n16k32_e4m3(acc[ks % 5], da, db, ks >= 5);
            }
            wgmma_commit();
            wgmma_wait<0>();
            MLA_SWAP_TL(3); // S^T retired
#pragma unroll
            for (int u = 0; u < 5; u++) mla_decode_v3::acc_fence(acc[u]);
#pragma unroll
            for (int k = 0; k < 8; k++) s[k] = ((acc[0][k] + acc[1][k]) + (acc[2][k] + acc[3][k])) + acc[4][k];
        } else {
            // ---- S^T = K Q^T: 9 spans of 64 dims, 4 k-steps each ----
            // Four accumulators (k-step u of every span into sacc[u]): one chain of 36 dependent
            // m64n16k16 would run at the MMA's latency, not its rate. A span's raw bytes are
            // loaded one span ahead and all its A registers converted before its four wgmmas, so
            // that one warpgroup.arrive covers them.
            float sacc[4][8];
#pragma unroll
            for (int u = 0; u < 4; u++) {
#pragma unroll
                for (int k = 0; k < 8; k++) sacc[u][k] = 0.f;
                mla_decode_v3::acc_fence(sacc[u]);
            }
            auto k_addr = [&](int q) -> uint32_t {
                return q < 8 ? st + (uint32_t)((q >> 1) * kBN * 128) + ((q & 1) ? kb1 : kb0) : st + kbr;
            };
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
                if (q >= 3) wgmma_wait<2>(); // bounds the A registers in flight to three spans
                uint32_t a[4][4];
#pragma unroll
                for (int u = 0; u < 4; u++) {
                    mla_decode_ws::e4m3x4_to_f16x4(word(k0, u), a[u][0], a[u][2]);
                    mla_decode_ws::e4m3x4_to_f16x4(word(k1, u), a[u][1], a[u][3]);
                }
#pragma unroll
                for (int u = 0; u < 4; u++) wgmma_m64n16k16_rs(sacc[u], a[u], mla_decode_v3::desc_add(qd, (uint32_t)(q * 2048 + u * 32)), q);
                wgmma_commit();
            }
            wgmma_wait<0>();
            MLA_SWAP_TL(3); // S^T retired
#pragma unroll
            for (int u = 0; u < 4; u++) mla_decode_v3::acc_fence(sacc[u]);
#pragma unroll
            for (int k = 0; k < 8; k++) s[k] = (sacc[0][k] + sacc[1][k]) + (sacc[2][k] + sacc[3][k]);
        }
#pragma unroll
        for (int i = 0; i < 8; i++) mla_decode_v3::acc_fence(o[i]);

        // ---- mask and scale; the row maxima; P^T ----
        // s *= scale with masked keys -inf (a CTA-uniform full/partial split: per-element
        // `full || ...` compiled to a branch region per element); on_v(row, value) sees each.
        auto mask_scale = [&](auto on_v) {
            const int page0 = key0 >> p.page_shift;
            const bool full = key0 + kBN <= lim_min && pmask == full_mask;
            if (full) {
#pragma unroll
                for (int k = 0; k < 8; k++) {
                    s[k] *= qk_scale;
                    on_v(2 * (k >> 2) + (k & 1), s[k]);
                }
            } else {
#pragma unroll
                for (int k = 0; k < 8; k++) {
                    const int r = 2 * (k >> 2) + (k & 1), h = (k >> 1) & 1;
                    const int key = key0 + 16 * w + 8 * h + fg;
                    const bool valid = (key < lim_row[r]) & (((pmask >> ((key >> p.page_shift) - page0)) & 1) != 0);
                    const float v = valid ? s[k] * qk_scale : -INFINITY;
                    s[k] = v;
                    on_v(r, v);
                }
            }
        };
        // This thread's row maxima mx over the 4 warps (a CTA barrier), folded into m_run; ref is
        // the new reference (0 for a row with no key yet), alpha = exp2(old m_run - ref).
        auto exchange_max = [&](float (&mx)[4], float (&ref)[4], float (&alpha)[4]) {
#pragma unroll
            for (int r = 0; r < 4; r++) {
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 4));
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 8));
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 16));
            }
            if (g == 0) {
#pragma unroll
                for (int r = 0; r < 4; r++) sRedMax[w * 16 + 8 * (r >> 1) + 2 * t + (r & 1)] = mx[r];
            }
            __syncthreads();
#pragma unroll
            for (int r = 0; r < 4; r++) {
                const int n = 8 * (r >> 1) + 2 * t + (r & 1);
                float m = m_run[r];
#pragma unroll
                for (int v = 0; v < 4; v++) m = fmaxf(m, sRedMax[v * 16 + n]);
                ref[r] = m == -INFINITY ? 0.f : m;
                alpha[r] = fast_exp2(m_run[r] - ref[r]);
                m_run[r] = m;
                l_run[r] *= alpha[r];
            }
        };
        // P^T[n][key] = exp2(s - ref) as f16 into the tile at sPt (row n: 128 bytes, chunk
        // (key / 8) ^ (n & 7)); the row sums added to sum.
        auto store_pt = [&](uint32_t sPt, const float (&ref)[4], float (&sum)[4]) {
#pragma unroll
            for (int k = 0; k < 8; k++) {
                const int r = 2 * (k >> 2) + (k & 1), h = (k >> 1) & 1;
                const int n = 8 * (r >> 1) + 2 * t + (r & 1), key = 16 * w + 8 * h + fg;
                const float pv = fast_exp2(s[k] - ref[r]);
                sum[r] += pv;
                const __half hv = __float2half_rn(pv);
                const uint32_t addr = sPt + (uint32_t)(n * 128 + ((((key >> 3) ^ (n & 7))) << 4) + ((key & 7) << 1));
                asm volatile("st.shared.b16 [%0], %1;\n" ::"r"(addr), "h"(*reinterpret_cast<const uint16_t *>(&hv)) : "memory");
            }
        };
        // o *= alpha, skipped when no row of the warp changed its maximum (alpha exactly 1).
        auto rescale_o = [&](const float (&alpha)[4]) {
            if (__any_sync(0xffffffffu, alpha[0] != 1.0f || alpha[1] != 1.0f || alpha[2] != 1.0f || alpha[3] != 1.0f)) {
#pragma unroll
                for (int i = 0; i < 8; i++)
#pragma unroll
                    for (int k = 0; k < 8; k++) o[i][k] *= alpha[2 * (k >> 2) + (k & 1)];
            }
        };
        float ref[4], alpha[4];
        if constexpr (!kLazy) {
            float mx[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
            mask_scale([&](int r, float v) { mx[r] = fmaxf(mx[r], v); });
            exchange_max(mx, ref, alpha);
            MLA_SWAP_TL(4); // maxima exchanged
            store_pt(sP, ref, l_run);
            rescale_o(alpha);
            mla_decode_v3::fence_proxy_async(); // P^T stores -> wgmma
            __syncthreads();
        } else {
            // The lazy form: P^T against the reference m_run of the blocks before, with no
            // exchange of this block's maxima, valid while no score exceeds it by more than
            // kLazyMax (P <= 2^8 in f16; the float sums are exact in any reference). The barrier
            // that publishes P^T also ORs the threads' "exceeded" flags; only when one is set (a
            // piece's first block, m_run = -inf, or a maximum that moved by more than 2^8) the
            // block takes the exchange and forms P^T again.
            // P^T alternates between two buffers by block parity: it is stored here before any
            // barrier of this block, while other warps' P V of the block before may still read
            // the other buffer (a warp's wgmma wait retires its own share of the warpgroup's
            // MMAs only); the block before that one was retired by every warp before this
            // block's first barrier.
            const uint32_t sPj = (j & 1) ? sBase + C::offP2 : sP;
            mask_scale([](int, float) {});
            bool exceeded = false; // (m_run = -inf: any finite score exceeds; a row with none keeps P = 0)
#pragma unroll
            for (int k = 0; k < 8; k++) exceeded |= s[k] > m_run[2 * (k >> 2) + (k & 1)] + kLazyMax;
            float psum[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
            for (int r = 0; r < 4; r++) ref[r] = m_run[r] == -INFINITY ? 0.f : m_run[r];
            store_pt(sPj, ref, psum);
            mla_decode_v3::fence_proxy_async(); // P^T stores -> wgmma
            const bool any_exceeded = __syncthreads_or(exceeded);
            MLA_SWAP_TL(4); // P^T published (or the exchange ahead)
            if (any_exceeded) {
                float mx[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
#pragma unroll
                for (int k = 0; k < 8; k++) mx[2 * (k >> 2) + (k & 1)] = fmaxf(mx[2 * (k >> 2) + (k & 1)], s[k]);
                exchange_max(mx, ref, alpha);
#pragma unroll
                for (int r = 0; r < 4; r++) psum[r] = 0.f;
                store_pt(sPj, ref, psum);
                rescale_o(alpha);
                mla_decode_v3::fence_proxy_async(); // P^T stores -> wgmma
                __syncthreads();
            }
#pragma unroll
            for (int r = 0; r < 4; r++) l_run[r] += psum[r];
        }
        MLA_SWAP_TL(5); // P^T ready for P V
        // ---- O^T += V^T P^T: 4 k-steps of 16 keys, 8 m-tiles of 64 dims ----
#pragma unroll
        for (int i = 0; i < 8; i++) mla_decode_v3::acc_fence(o[i]);
        wgmma_fence();
        uint4 vn[4];
        auto v_load = [&](int kk, uint4 (&v)[4]) {
            const uint32_t base = st + (uint32_t)(kk * 2048);
            v[0] = lds128(base + vb0); // key 16 kk + 2t
            v[1] = lds128(base + vb1); // key 16 kk + 2t + 1
            v[2] = lds128(base + vb0 + 1024); // + 8
            v[3] = lds128(base + vb1 + 1024);
        };
        v_load(0, vn);
        const uint64_t pdd = mla_decode_v3::opaque_desc(kLazy && (j & 1) ? pdesc1 : pdesc0);
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            const uint4 v0 = vn[0], v1 = vn[1], v2 = vn[2], v3 = vn[3];
            if (kk < 3) v_load(kk + 1, vn);
            if (kk >= 2) wgmma_wait<1>(); // two k-steps of A registers in flight
            const uint64_t pd = mla_decode_v3::desc_add(pdd, (uint32_t)(kk * 32));
            uint32_t a[8][4];
#pragma unroll
            for (int jw = 0; jw < 4; jw++) {
                const uint32_t x0 = word(v0, jw), x1 = word(v1, jw), x2 = word(v2, jw), x3 = word(v3, jw);
                mla_decode_ws::e4m3x4_to_f16x4(__byte_perm(x0, x1, 0x5140), a[2 * jw][0], a[2 * jw][1]);
                mla_decode_ws::e4m3x4_to_f16x4(__byte_perm(x2, x3, 0x5140), a[2 * jw][2], a[2 * jw][3]);
                mla_decode_ws::e4m3x4_to_f16x4(__byte_perm(x0, x1, 0x7362), a[2 * jw + 1][0], a[2 * jw + 1][1]);
                mla_decode_ws::e4m3x4_to_f16x4(__byte_perm(x2, x3, 0x7362), a[2 * jw + 1][2], a[2 * jw + 1][3]);
            }
#pragma unroll
            for (int i = 0; i < 8; i++) wgmma_m64n16k16_rs(o[i], a[i], pd, 1);
            wgmma_commit();
        }
        MLA_SWAP_TL(6); // P V issued
        // P V stays in flight into the next block (its loop top and first S^T spans); the
        // next block's S^T waits retire it before o or P^T are touched again.

        // ---- end of this request's piece ----
        const int b = cons.b;
        const bool last = cons.blk + 1 >= cons.hi;
        cursor_next(p, part, tau, cons);
        if (last) {
            wgmma_wait<0>();
#pragma unroll
            for (int i = 0; i < 8; i++) mla_decode_v3::acc_fence(o[i]);
            float lsum[4];
#pragma unroll
            for (int r = 0; r < 4; r++) {
                float v = l_run[r];
                v += __shfl_xor_sync(0xffffffffu, v, 4);
                v += __shfl_xor_sync(0xffffffffu, v, 8);
                v += __shfl_xor_sync(0xffffffffu, v, 16);
                lsum[r] = v;
            }
            if (g == 0) {
#pragma unroll
                for (int r = 0; r < 4; r++) sRedSum[w * 16 + 8 * (r >> 1) + 2 * t + (r & 1)] = lsum[r];
            }
            __syncthreads();
            const int nsplit = p.s.num_splits[b];
            const int slot = p.s.slot_base[b] + part - p.s.first_part[b];
            const int c = 8 * w + g; // this thread's 16 output dims [16 c, +16)
#pragma unroll
            for (int r = 0; r < 4; r++) {
                const int n = 8 * (r >> 1) + 2 * t + (r & 1), gr = row0 + n;
                if (gr >= p.rows) continue;
                float L = 0.f;
#pragma unroll
                for (int v = 0; v < 4; v++) L += sRedSum[v * 16 + n];
                const float inv = L > 0.f ? 1.0f / L : 0.f;
                const float lse = L > 0.f ? (m_run[r] + log2f(L)) * 0.69314718055994531f : -INFINITY;
                const int kx = 4 * (r >> 1) + (r & 1); // o[i][kx] dim 2 i, o[i][kx + 2] dim 2 i + 1
                const size_t row = (size_t)b * p.rows + gr;
                if (nsplit == 1) {
                    const float sc = inv * p.bmm2;
                    uint32_t wv[8];
#pragma unroll
                    for (int i = 0; i < 8; i++) wv[i] = pack2<false>(o[i][kx] * sc, o[i][kx + 2] * sc);
                    uint4 *dst = reinterpret_cast<uint4 *>(p.out + row * kDv + 16 * c);
                    dst[0] = make_uint4(wv[0], wv[1], wv[2], wv[3]);
                    dst[1] = make_uint4(wv[4], wv[5], wv[6], wv[7]);
                    if (p.lse && c == 0) p.lse[row] = lse;
                } else {
                    // float16 partials (decode_split.cuh): |O / l| <= 448 for an fp8 cache.
                    const size_t prow = (size_t)slot * p.rows + gr;
                    uint32_t wv[8];
#pragma unroll
                    for (int i = 0; i < 8; i++) wv[i] = pack2<true>(o[i][kx] * inv, o[i][kx + 2] * inv);
                    uint4 *dst = reinterpret_cast<uint4 *>(reinterpret_cast<uint16_t *>(p.s.part_o) + prow * kDv + 16 * c);
                    dst[0] = make_uint4(wv[0], wv[1], wv[2], wv[3]);
                    dst[1] = make_uint4(wv[4], wv[5], wv[6], wv[7]);
                    if (c == 0) p.s.part_lse[prow] = lse;
                }
            }
#pragma unroll
            for (int i = 0; i < 8; i++)
#pragma unroll
                for (int k = 0; k < 8; k++) o[i][k] = 0.f;
#pragma unroll
            for (int r = 0; r < 4; r++) {
                m_run[r] = -INFINITY;
                l_run[r] = 0.f;
            }
            new_req = true;
        }
        MLA_SWAP_TL(7); // block end (a request's end written)
    }
#ifdef MLA_SEESAW_TIMELINE
    if (tid == 0) mla_seesaw_tl_count(0, j);
    if (tid == 96) mla_seesaw_tl_count(1, j);
#endif
#undef MLA_SWAP_TL
    // Nothing in flight here: the loop ends only after a request's last block, which waited.
#ifdef MLA_DECODE_TRACE
    mla_trace_split_end(tr_entry, tr_waited, tr_issued, tr_first, tr_blocks);
#endif
}

} // namespace mla_decode_v2s
