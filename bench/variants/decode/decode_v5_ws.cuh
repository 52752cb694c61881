// Split-KV MLA decode, version 5: v3's wgmma math with a producer warpgroup (warp
// specialization), fp8 cache, H * q_len >= 64. Opt-in (MLA_DECODE_VARIANT=v5). Same Params,
// scheduler, cursor walk, partials layout and combine as decode_v1_mma.cuh; measured in
// bench/NOTES.md "Decode", v5: correct (GPU decode tests 10/10) but no faster than v3.
//
// Why it was tried: v3 runs load, fp8 -> fp16 conversion, S, softmax and P V one after
// another in the same 8 warps. Here a third warpgroup does all of the loading and conversion a
// tile ahead, so the two math warpgroups only wait for the tensor cores and for each other.
//
// One CTA = (part of the key work, 64 query rows), 384 threads, one CTA per SM:
//   warpgroup 2 (producer, 56 registers after setmaxnreg): thread t owns key row t / 2 of
//     each 64-key block; 16-byte global loads of its 18 chunks into registers (8 in flight
//     across the wait for a free tile), cvt e4m3x2 -> f16x2 (exact), stores into a two-tile
//     fp16 ring (rows past seq_len or on bad pages as zeros), published by fence.proxy.async
//     + the tile's "full" mbarrier; the next block's pages are prefetched into L2.
//   warpgroups 0/1 (math, 224 registers): as v3: S[:, 32w..+32] = Q K^T (m64n32k16, 36
//     k-steps), row maxima exchanged through shared memory, P written into the tile's own
//     rope column block (dims 512..575 are dead once S is done, so P needs no buffer of its
//     own and Q + two tiles fit), O[:, 256w..+256] += P V (m64n256k16), then the tile's
//     "empty" mbarrier hands it back. Two 256-thread named barriers per block, none CTA-wide.
// setmaxnreg: the counts must add up to the launch allocation (168 x 384): 64 + 224 hung.
#pragma once
#include "../../../src/cuda/sm90/ws_common.cuh"

#include <stdint.h>

namespace mla_decode_v5 {

using namespace mla_decode_ws; // producer helpers (ws_common.cuh)

using mla_decode_v1::Params;
using mla_decode_v1::Cursor;
using mla_decode_v1::Pref;
using mla_decode_v1::kDqk;
using mla_decode_v1::kDv;
using mla_decode_v3::blk_off;
using mla_decode_v3::kBlk;

constexpr int kM = 64;          // query rows per CTA
constexpr int kNT = 384;        // math warpgroups 0, 1 + producer warpgroup 2
constexpr int kNS = 2;          // tiles in the ring
constexpr int kTile = kBN * kDqk * 2;
constexpr int kBarMath = 1;     // named barrier of the math warpgroups (0 is __syncthreads)
// Register split after setmaxnreg (launch: 168 x 384 = 64512 registers; after: 64 x 128 + 224 x 256 = 65536, the whole file).
constexpr int kRegProducer = 56;
constexpr int kRegMath = 224;

struct V5Cfg {
    static constexpr int offQ = 0;
    static constexpr int offTile = offQ + kM * kDqk * 2;
    static constexpr int offRedMax = offTile + kNS * kTile;
    static constexpr int offRedSum = offRedMax + 2 * kM * 4;
    static constexpr int offFlags = offRedSum + 2 * kM * 4;
    static constexpr int offBar = offFlags + 16; // full[kNS], empty[kNS]
    static constexpr int kSmem = offBar + 8 * 2 * kNS + 1024; // + slack to align the base to 1024
    static_assert(offTile % 1024 == 0 && kTile % 1024 == 0, "swizzle atoms");
    static_assert(kSmem <= 227 * 1024, "shared memory");
};

// ---------------------------------------------------------------- producer (warpgroup 2)

// The producer: one block per iteration into tile j % 2. Most chunks are loaded before
// waiting for the tile to come free, so little load latency (an L2 hit: the block's pages
// were prefetched into L2 one block ahead) follows the wait.
__device__ __forceinline__ void produce(const Params &p, int part, int tau, Cursor prod, uint32_t aTile, uint32_t aBar,
                                        int *sFlags)
{
    const int t = threadIdx.x - kMathThreads;
    Pref f = mla_decode_v1::prefetch_block<kBN>(p, prod);
    for (int j = 0; prod.b < p.batch; j++) {
        const int stage = j & 1;
        const SrcRow sr = source_row(p, prod, f, t, t == 0);
        // Chunks 0..7 in flight across the wait (32 registers: what the producer's budget
        // allows next to its state); 8..17 are issued as the first ones are stored.
        uint4 x0[4], x1[4], y[4], z[3], w[3];
        load_chunks<0, 4>(sr, x0);
        load_chunks<4, 4>(sr, x1);
        // The next block's index data (its pages go to L2 once this block is stored).
        mla_decode_v1::cursor_next(p, part, tau, prod);
        f = mla_decode_v1::prefetch_block<kBN>(p, prod);
        // Wait until the math warpgroups are done with this tile (its previous block); the
        // first use of each tile passes at once (parity of the phase before the first).
        mla_sm90::mbar_wait(aBar + 8u * (kNS + stage), ((j >> 1) & 1) ^ 1);
        // Tile addresses of this thread's chunks (see the comment above src): q = 2 (i odd) + half.
        uint32_t bases[4];
        {
            const int r = t >> 1, odd = t & 1;
            const uint32_t tile = aTile + (uint32_t)(stage * kTile) + (uint32_t)(r * 128);
#pragma unroll
            for (int q = 0; q < 4; q++) bases[q] = tile + ((((q >> 1) * 4 + 2 * odd + (q & 1)) ^ (r & 7)) << 4);
        }
        store_chunks<0, 4>(x0, bases);
        load_chunks<8, 4>(sr, y);
        store_chunks<4, 4>(x1, bases);
        load_chunks<12, 3>(sr, z);
        store_chunks<8, 4>(y, bases);
        load_chunks<15, 3>(sr, w);
        store_chunks<12, 3>(z, bases);
        store_chunks<15, 3>(w, bases);
        if (t == 0) sFlags[stage] = sr.ok;
        mla_decode_v3::fence_proxy_async(); // tile stores -> the math warpgroups' wgmma
        mbar_arrive(aBar + 8u * stage);     // full[stage]
        if (t == 0 && prod.b < p.batch) {
            const int ok = mla_decode_v1::block_page_mask<kBN>(p, prod.blk * kBN, f, false);
            const uint32_t page_bytes = (uint32_t)(p.page_size * kDqk);
            if (ok & 1) prefetch_l2(p.kv + (size_t)f.idx0 * page_bytes, page_bytes);
            if (ok & 2) prefetch_l2(p.kv + (size_t)f.idx1 * page_bytes, page_bytes);
        }
    }
}

// ---------------------------------------------------------------- kernel

__global__ void __launch_bounds__(kNT, 1) decode_ws_fp8_kernel(const __grid_constant__ Params p)
{
    constexpr bool FP8 = true; // 16-bit math type: fp16 (the tiles hold converted fp8)
    using namespace mla_sm90; // wgmma_fence / commit / wait, smem_desc
    using mla_decode_v3::acc_fence;
    using mla_decode_v3::desc_add;
    using mla_decode_v3::fence_proxy_async;
    using mla_decode_v3::opaque_desc;
    extern __shared__ uint8_t smem_raw[];
    const uint32_t raw_addr = mla_decode_v1::smem_u32(smem_raw);
    const uint32_t base = (raw_addr + 1023u) & ~1023u;
    uint8_t *smem = smem_raw + (base - raw_addr);
    uint8_t *sQ = smem + V5Cfg::offQ;
    float *sRedMax = reinterpret_cast<float *>(smem + V5Cfg::offRedMax);
    float *sRedSum = reinterpret_cast<float *>(smem + V5Cfg::offRedSum);
    int *sFlags = reinterpret_cast<int *>(smem + V5Cfg::offFlags);
    const uint32_t aQ = base + V5Cfg::offQ, aTile = base + V5Cfg::offTile, aBar = base + V5Cfg::offBar;

    const int part = blockIdx.x, hb = blockIdx.y;
    const int tid = threadIdx.x;
    if (tid == 0) {
        for (int i = 0; i < kNS; i++) {
            mbar_init(aBar + 8u * i, kNT - kMathThreads); // full: every producer thread
            mbar_init(aBar + 8u * (kNS + i), kMathThreads); // empty: every math thread
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads(); // the only CTA-wide barrier: the producer leaves early

    // Launched as a programmatic dependent of the scheduler: wait for its results, and let
    // the combine kernel get scheduled as soon as every CTA is running.
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
    const int tau = *p.s.tau;
    Cursor cons;
    {
        const int b0 = p.s.part_begin[part];
        if (b0 >= p.batch) return; // empty part (uniform over the CTA)
        mla_decode_v1::cursor_range(p, part, tau, b0, cons);
    }
    if (tid >= kMathThreads) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegProducer));
        produce(p, part, tau, cons, aTile, aBar, sFlags);
        return;
    }
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegMath));

    const int lane = tid & 31;
    const int wg = tid >> 7;                              // S keys 32wg.., O columns 256wg..
    const int r_lo = ((tid >> 5) & 3) * 16 + (lane >> 2); // this thread's rows: r_lo, r_lo + 8
    const int qd = lane & 3;
    const float qk_scale = p.scale_log2;

    float o[128];
#pragma unroll
    for (int i = 0; i < 128; i++) o[i] = 0.f;
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
    int lim_row[2] = {0, 0}; // exclusive key limit of this thread's two rows
    int lim_min = 0;         // smallest key limit over the CTA's rows (the request's first token)
    bool new_req = true;

    for (int j = 0; cons.b < p.batch; j++) {
        const int stage = j & 1;
        if (new_req) {
            mla_decode_v1::named_bar(kBarMath, kMathThreads); // the previous request is done with Q
            mla_decode_v3::load_q<FP8>(p, cons.b, hb, sQ);
            // A length clamped to the table capacity counts as that length (causal too).
            const int seq = p.s.seq_eff[cons.b];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int gr = hb * kM + r_lo + h * 8;
                int lim = seq;
                if (p.causal) {
                    const int tok = min(gr, p.rows - 1) / p.heads;
                    lim = seq - p.q_len + tok + 1;
                }
                lim_row[h] = lim;
            }
            lim_min = p.causal ? seq - p.q_len + 1 : seq;
            new_req = false;
            fence_proxy_async(); // this thread's Q stores -> wgmma
            mla_decode_v1::named_bar(kBarMath, kMathThreads);
        }
        mbar_wait(aBar + 8u * stage, (j >> 1) & 1); // tile of block j converted and published
        const int pmask = sFlags[stage];
        const int key0 = cons.blk * kBN;
        const uint32_t aK = aTile + (uint32_t)(stage * kTile);

        // ---- S[:, 32wg..+32] = Q K^T: 36 k-steps of 16 dims (4 per 64-dim column block) ----
        float s[16];
#pragma unroll
        for (int i = 0; i < 16; i++) s[i] = 0.f;
        const uint64_t dq0 = opaque_desc(smem_desc(aQ, 16, 1024, 1));
        const uint64_t dk0 = opaque_desc(smem_desc(aK + (uint32_t)(wg * 32 * 128), 16, 1024, 1));
        acc_fence(s);
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < kDqk / 16; ks++) {
            const uint32_t off = (uint32_t)((ks >> 2) * kBlk + (ks & 3) * 32);
            mla_decode_v3::wgmma_m64n32k16_ss<FP8>(s, desc_add(dq0, off), desc_add(dk0, off), ks > 0);
        }
        wgmma_commit();
        wgmma_wait<0>();
        acc_fence(s);

        // ---- mask, scale, row max over both warpgroups ----
        // s[4i + e]: row r_lo + 8 (e >> 1), key 32 wg + 8 i + 2 qd + (e & 1) of the block.
        const int page0 = key0 >> p.page_shift;
        // Blocks inside every row's key range on valid pages (most blocks) need no mask.
        const bool full = key0 + kBN <= lim_min && pmask == (kBN > p.page_size ? 3 : 1);
        float mx[2] = {-INFINITY, -INFINITY};
        if (full) {
#pragma unroll
            for (int i = 0; i < 16; i++) {
                s[i] *= qk_scale;
                mx[(i >> 1) & 1] = fmaxf(mx[(i >> 1) & 1], s[i]);
            }
        } else {
#pragma unroll
            for (int i = 0; i < 4; i++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int key = key0 + wg * 32 + i * 8 + 2 * qd + (e & 1);
                    const bool valid = key < lim_row[e >> 1] && ((pmask >> ((key >> p.page_shift) - page0)) & 1);
                    const float v = valid ? s[4 * i + e] * qk_scale : -INFINITY;
                    s[4 * i + e] = v;
                    mx[e >> 1] = fmaxf(mx[e >> 1], v);
                }
            }
        }
#pragma unroll
        for (int h = 0; h < 2; h++) {
            mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
            mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
        }
        if (qd == 0) {
            sRedMax[wg * kM + r_lo] = mx[0];
            sRedMax[wg * kM + r_lo + 8] = mx[1];
        }
        // Both warpgroups' maxima visible; both S chains are complete, so the tile's rope
        // column block (read only by S) is free for P.
        mla_decode_v1::named_bar(kBarMath, kMathThreads);
        float alpha[2], ref[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const float m = fmaxf(m_run[h], fmaxf(sRedMax[r_lo + h * 8], sRedMax[kM + r_lo + h * 8]));
            // A row that has seen no key yet keeps m = -inf; use 0 so exp2 gives 0, not NaN.
            ref[h] = m == -INFINITY ? 0.f : m;
            alpha[h] = mla_decode_v1::fast_exp2(m_run[h] - ref[h]);
            m_run[h] = m;
        }
        // ---- P = exp2(S - m) into the tile's rope column block (64 x 64 K-major), sums ----
        uint8_t *sP = smem + V5Cfg::offTile + stage * kTile + 8 * kBlk;
        float ls[2] = {0.f, 0.f};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float p0 = mla_decode_v1::fast_exp2(s[4 * i + 0] - ref[0]);
            const float p1 = mla_decode_v1::fast_exp2(s[4 * i + 1] - ref[0]);
            const float p2 = mla_decode_v1::fast_exp2(s[4 * i + 2] - ref[1]);
            const float p3 = mla_decode_v1::fast_exp2(s[4 * i + 3] - ref[1]);
            ls[0] += p0 + p1;
            ls[1] += p2 + p3;
            const int c = wg * 4 + i; // 16-byte chunk of the P row (8 keys)
            *reinterpret_cast<uint32_t *>(sP + blk_off(r_lo, c) + 4 * qd) = mla_decode_v1::pack2<FP8>(p0, p1);
            *reinterpret_cast<uint32_t *>(sP + blk_off(r_lo + 8, c) + 4 * qd) = mla_decode_v1::pack2<FP8>(p2, p3);
        }
        l_run[0] = l_run[0] * alpha[0] + ls[0];
        l_run[1] = l_run[1] * alpha[1] + ls[1];
        // Skipped when no row of the warp changed its maximum (alpha exactly 1: most blocks).
        if (__any_sync(0xffffffffu, alpha[0] != 1.0f || alpha[1] != 1.0f)) {
#pragma unroll
            for (int i = 0; i < 32; i++) {
                o[4 * i + 0] *= alpha[0];
                o[4 * i + 1] *= alpha[0];
                o[4 * i + 2] *= alpha[1];
                o[4 * i + 3] *= alpha[1];
            }
        }
        fence_proxy_async(); // P stores -> wgmma
        mla_decode_v1::named_bar(kBarMath, kMathThreads); // both halves of P written

        // ---- O[:, 256wg..+256] += P V: V = dims 256wg.. of the tile (column blocks 4wg..4wg+3),
        // N-major; 4 k-steps of 16 keys ----
        const uint64_t dp0 = opaque_desc(smem_desc(aK + 8u * kBlk, 16, 1024, 1));
        const uint64_t dv0 = opaque_desc(smem_desc(aK + (uint32_t)(wg * 4 * kBlk), kBlk, 1024, 1));
        acc_fence(o);
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < kBN / 16; ks++)
            mla_decode_v3::wgmma_m64n256k16_ss_tb<FP8>(o, desc_add(dp0, (uint32_t)(ks * 32)),
                                                        desc_add(dv0, (uint32_t)(ks * 16 * 128)), 1);
        wgmma_commit();
        wgmma_wait<0>();
        acc_fence(o);
        mbar_arrive(aBar + 8u * (kNS + stage)); // empty[stage]: this thread is done with the tile

        // ---- end of this request's piece: normalize and write ----
        const int b = cons.b;
        const bool last = cons.blk + 1 >= cons.hi;
        mla_decode_v1::cursor_next(p, part, tau, cons);
        if (last) { // uniform over the CTA
            float lsum[2];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                float v = l_run[h];
                v += __shfl_xor_sync(0xffffffffu, v, 1);
                v += __shfl_xor_sync(0xffffffffu, v, 2);
                lsum[h] = v;
            }
            if (qd == 0) {
                sRedSum[wg * kM + r_lo] = lsum[0];
                sRedSum[wg * kM + r_lo + 8] = lsum[1];
            }
            mla_decode_v1::named_bar(kBarMath, kMathThreads);
            const int nsplit = p.s.num_splits[b];
            const int slot = p.s.slot_base[b] + part - p.s.first_part[b];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int r = r_lo + h * 8;
                const float L = sRedSum[r] + sRedSum[kM + r];
                const float inv = L > 0.f ? 1.0f / L : 0.f;
                const float lse = L > 0.f ? (m_run[h] + log2f(L)) * 0.69314718055994531f : -INFINITY;
                const int gr = hb * kM + r;
                if (gr < p.rows) {
                    const size_t row = (size_t)b * p.rows + gr;
                    if (nsplit == 1) {
                        const float sc = inv * p.bmm2;
                        uint16_t *dst = p.out + row * kDv + wg * 256 + 2 * qd;
#pragma unroll
                        for (int i = 0; i < 32; i++)
                            *reinterpret_cast<uint32_t *>(dst + i * 8) =
                                mla_decode_v1::pack2<false>(o[4 * i + 2 * h] * sc, o[4 * i + 2 * h + 1] * sc);
                        if (p.lse && wg == 0 && qd == 0) p.lse[row] = lse;
                    } else {
                        const size_t prow = (size_t)slot * p.rows + gr;
                        float *dst = p.s.part_o + prow * kDv + wg * 256 + 2 * qd;
#pragma unroll
                        for (int i = 0; i < 32; i++)
                            *reinterpret_cast<float2 *>(dst + i * 8) =
                                make_float2(o[4 * i + 2 * h] * inv, o[4 * i + 2 * h + 1] * inv);
                        if (wg == 0 && qd == 0) p.s.part_lse[prow] = lse;
                    }
                }
            }
#pragma unroll
            for (int i = 0; i < 128; i++) o[i] = 0.f;
            m_run[0] = m_run[1] = -INFINITY;
            l_run[0] = l_run[1] = 0.f;
            new_req = true;
        }
    }
}

} // namespace mla_decode_v5
