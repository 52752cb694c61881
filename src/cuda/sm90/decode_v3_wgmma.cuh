// Split-KV MLA decode, version 3: wgmma tensor-core math for H * q_len >= 64 (the default
// there until the seesaw took those rows: v7 for an fp8 cache, v9 for bf16; now the fallback
// when v9's tensor map cannot be made, and MLA_DECODE_VARIANT=v3; device record in
// bench/NOTES.md "Decode"), in the split-KV framework of
// decode_v1_mma.cuh (same Params, scheduler, cursor walk, partials layout and combine).
//
// One CTA = (part of the key work, 64 query rows), 256 threads = two warpgroups, one CTA per
// SM, 64-key blocks (the same Plan as decode_v1's M = 64 kernel). Per block:
//   load   : cp.async of the raw block (fp8: 64 x 576 bytes into a staging ring, converted to
//            an fp16 tile, values x 2^-8 exactly, by integer bit moves as in v1; bf16: straight
//            into the tile ring). Keys past seq_len and keys on bad pages are zero-filled.
//   S      : warpgroup w computes S[:, 32w .. 32w+32) = Q K^T with wgmma m64n32k16 (Q and K
//            both from shared memory, K-major, 128-byte swizzle, 36 k-steps over 576 dims).
//   softmax: row maxima exchanged between the warpgroups through shared memory; P (16-bit)
//            written to shared memory as a 64 x 64 K-major tile.
//   O     += P V: warpgroup w owns O[:, 256w .. 256w+256) (128 fp32 registers per thread) and
//            issues wgmma m64n256k16 with V = the first 512 columns of the same tile, read
//            N-major (imm-trans-b), 4 k-steps of 16 keys.
// Tiles (Q, K, P) are stored as column blocks of 64 16-bit elements: [block][row][128 bytes],
// 16-byte chunk c of row r at chunk position c ^ (r & 7) (the 128-byte swizzle wgmma reads).
// Everything runs in lock-step (no producer warpgroup): generic stores that wgmma reads are
// published with fence.proxy.async before a CTA barrier, and each wgmma batch is waited for
// (wait_group 0) before the barrier that lets its operands be overwritten.
#pragma once
#include "decode_v1_mma.cuh"
#include "prefill_wgmma.cuh"
#include "mbarrier.cuh"
#include "wgmma_operands.cuh"

#include <cuda_fp16.h>
#include <stdint.h>

namespace mla_decode_v3 {

using mla_decode_v1::Params;
using mla_decode_v1::Cursor;
using mla_decode_v1::Pref;
using mla_decode_v1::kDqk;
using mla_decode_v1::kDv;

constexpr int kM = 64;       // query rows per CTA
constexpr int kBN = 64;      // keys per block
constexpr int kNT = 256;     // two warpgroups
constexpr int kNS = 2;       // load stages
constexpr int kBlk = kM * 128; // one 64-element column block of a 64-row tile (8 KB)

template <bool FP8> struct V3Cfg {
    static constexpr int kQ = kM * kDqk * 2;             // 72 KB, 9 column blocks
    static constexpr int kTile = FP8 ? kBN * kDqk * 2 : 0; // fp16 tile converted from the stage
    static constexpr int kStage = FP8 ? kBN * kDqk : kBN * kDqk * 2;
    static constexpr int offQ = 0;
    static constexpr int offTile = offQ + kQ;
    static constexpr int offStage = offTile + kTile;
    static constexpr int offP = offStage + kNS * kStage;
    static constexpr int offRedMax = offP + kM * kBN * 2;
    static constexpr int offRedSum = offRedMax + 2 * kM * 4;
    static constexpr int offFlags = offRedSum + 2 * kM * 4;
    static constexpr int offBar = offFlags + 16;       // fp8: one mbarrier per stage
    static constexpr int kSmem = offBar + 16 + 1024;   // + slack to align the base to 1024
    static_assert(offTile % 1024 == 0 && offStage % 1024 == 0 && offP % 1024 == 0, "swizzle atoms");
    static_assert(kStage % 1024 == 0, "stage alignment");
    static_assert(kSmem <= 227 * 1024, "shared memory");
};

// Byte offset of 16-byte chunk c (8 elements, 0..71) of row r in a 64-row tile of column blocks.
__device__ __forceinline__ uint32_t blk_off(int r, int c)
{
    return (uint32_t)((c >> 3) * kBlk + r * 128 + (((c & 7) ^ (r & 7)) << 4));
}

__device__ __forceinline__ void fence_proxy_async()
{
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// A descriptor the compiler cannot hoist out of the block loop: the per-k-step descriptors
// are then formed by one 32-bit add each where they are used, instead of 36 x 2 loop-invariant
// 64-bit values held in registers next to the 128-register O tile.
__device__ __forceinline__ uint64_t opaque_desc(uint64_t d)
{
    uint64_t r;
    asm volatile("mov.b64 %0, %1;\n" : "=l"(r) : "l"(d));
    return r;
}
// desc + byte offset (offsets stay inside the shared window, so the 14-bit address field
// cannot carry into the next field).
__device__ __forceinline__ uint64_t desc_add(uint64_t d, uint32_t bytes) { return d + (uint64_t)(bytes >> 4); }

template <int N> __device__ __forceinline__ void acc_fence(float (&d)[N])
{
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(d[i])::"memory");
}

// D(64x32) += A(64x16, smem K-major) * B(16x32, smem K-major); f16 or bf16 in, fp32 accumulate.
template <bool F16>
__device__ __forceinline__ void wgmma_m64n32k16_ss(float (&d)[16], uint64_t da, uint64_t db, int accumulate)
{
    if constexpr (F16)
        asm volatile(
            "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 "
            MLA_WG_REGS16 ", %16, %17, p, 1, 1, 0, 0;\n}\n"
            : MLA_WG_ACC16(d)
            : "l"(da), "l"(db), "r"(accumulate));
    else
        asm volatile(
            "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
            MLA_WG_REGS16 ", %16, %17, p, 1, 1, 0, 0;\n}\n"
            : MLA_WG_ACC16(d)
            : "l"(da), "l"(db), "r"(accumulate));
}

// D(64x256) += A(64x16, smem K-major) * B(16x256, smem N-major: imm-trans-b = 1).
template <bool F16>
__device__ __forceinline__ void wgmma_m64n256k16_ss_tb(float (&d)[128], uint64_t da, uint64_t db, int accumulate)
{
    if constexpr (F16)
        asm volatile(
            "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 "
            MLA_WG_REGS128 ", %128, %129, p, 1, 1, 0, 1;\n}\n"
            : MLA_WG_ACC128(d)
            : "l"(da), "l"(db), "r"(accumulate));
    else
        asm volatile(
            "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
            MLA_WG_REGS128 ", %128, %129, p, 1, 1, 0, 1;\n}\n"
            : MLA_WG_ACC128(d)
            : "l"(da), "l"(db), "r"(accumulate));
}

// bf16: issues the cp.async copies of key block c into the stage at `sbase` (the swizzled
// column-block tile that wgmma reads) and commits one group (an empty group when the cursor
// is done, so group counting stays uniform). Keys past seq_len and keys on pages with an
// out-of-range index are zero-filled, never read; *flags records which of the block's pages
// are valid (bit k: page k of the block). (fp8 uses issue_block_bulk.)
__device__ __forceinline__ void issue_block_bf16(const Params &p, const Cursor &c, const Pref &f, uint32_t sbase,
                                                 int *flags)
{
    if (c.b < p.batch) {
        const int seq = f.seq;
        const int key0 = c.blk * kBN;
        const int ok = mla_decode_v1::block_page_mask<kBN>(p, key0, f);
        if (threadIdx.x == 0) *flags = ok;
        // Thread t copies row t / 4 (one key), chunks t % 4 + 4i: the key's validity and source
        // row are worked out once per block, not once per chunk.
        constexpr int kChunks = 72;
        constexpr int kRowBytes = kDqk * 2;
        const int r = threadIdx.x >> 2, c4 = threadIdx.x & 3;
        const int key = key0 + r;
        const int k = r >> p.page_shift; // page of the block: 0 or 1 (key0 is page aligned)
        const bool valid = key < seq && ((ok >> k) & 1);
        const uint8_t *src = p.kv;
        if (valid) src += ((size_t)(k ? f.idx1 : f.idx0) * p.page_size + (key & (p.page_size - 1))) * kRowBytes + c4 * 16;
        const int bytes = valid ? 16 : 0;
#pragma unroll
        for (int i = 0; i < kChunks / 4; i++) {
            const int ch = c4 + 4 * i;
            const uint32_t dst = sbase + blk_off(r, ch);
            mla_decode_v1::cp_async16(dst, src + (valid ? i * 64 : 0), bytes);
        }
    }
    mla_decode_v1::cp_async_commit();
}

// fp8: key block c into the stage at sbase by thread 0: one bulk copy per valid page (64 x 576
// or 32 x 576 contiguous bytes), completion counted on the stage's mbarrier (which is always
// armed, with 0 bytes when nothing is valid). Rows past seq_len inside a copied page hold
// whatever the cache has there; the conversion writes zeros for them. *flags: valid pages.
__device__ __forceinline__ void issue_block_bulk(const Params &p, const Cursor &c, const Pref &f, uint32_t sbase,
                                                 uint32_t bar, int *flags)
{
    if (c.b >= p.batch || threadIdx.x != 0) return;
    const int ok = mla_decode_v1::block_page_mask<kBN>(p, c.blk * kBN, f);
    *flags = ok;
    const uint32_t page_bytes = (uint32_t)(p.page_size * kDqk);
    mla_decode_v3::fence_proxy_async(); // the stage's earlier generic reads before the async writes
    mla_sm90::mbar_arrive_expect_tx(bar, page_bytes * (uint32_t)__popc(ok));
    if (ok & 1) mla_sm90::bulk_copy_g2s(sbase, p.kv + (size_t)f.idx0 * page_bytes, page_bytes, bar);
    if (ok & 2) mla_sm90::bulk_copy_g2s(sbase + page_bytes, p.kv + (size_t)f.idx1 * page_bytes, page_bytes, bar);
}

// Q rows [hb*64, hb*64+64) of request b into the column-block tile (fp16 for the fp8-cache
// kernel, bf16 otherwise; conversions as decode_v1's load_q); rows past the request's rows
// are zero.
template <bool FP8> __device__ __forceinline__ void load_q(const Params &p, int b, int hb, uint8_t *sq)
{
    mla_decode_v1::load_q_rows<FP8, kM, kNT, 3>(p, b, hb, [&](int r, int ch, uint4 v) {
        *reinterpret_cast<uint4 *>(sq + blk_off(r, ch)) = v;
    });
}

// Float16 split partials for the fp8-cache kernels of this file, decode_v6_seesaw.cuh and
// decode_v10_fp8mma.cuh (build with -DMLA_WIDE_HALF_PARTIALS; written 2026-12-04 without device
// time, not yet measured). With an fp8 cache O / l is a convex combination of e4m3 values
// (|O / l| <= 448; v10's e4m3 P: <= 448 x 17/16), so float16 holds it with 2^-11 relative
// rounding, 4x finer than the bf16 output; half the partial bytes written and read back by the
// combine (B64 H128 4k: 33.5 -> 16.7 MB), as the H * q_len <= 16 kernel already does.
#ifdef MLA_WIDE_HALF_PARTIALS
constexpr bool kWideHalfPartials = true;
#else
constexpr bool kWideHalfPartials = false;
#endif

// Request b's end: this thread's share of the CTA's 64 x 512 output (rows r_lo and r_lo + 8,
// columns 256 wg + 8 i + 2 qd of the wgmma accumulator layout), once both warpgroups' row
// sums are in sRedSum. One split: bf16 output (times bmm2) and LSE; several: fp32 (kHalf:
// float16) partials and partial LSE into the split workspace for the combine. Shared with
// decode_v6_seesaw.cuh and decode_v10_fp8mma.cuh.
template <bool kHalf>
__device__ __forceinline__ void write_rows(const Params &p, const float (&o)[128], const float *sRedSum,
                                           const float (&m_run)[2], int b, int part, int hb, int wg, int r_lo,
                                           int qd)
{
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
            } else if constexpr (kHalf) {
                const size_t prow = (size_t)slot * p.rows + gr;
                __half *dst = reinterpret_cast<__half *>(p.s.part_o) + prow * kDv + wg * 256 + 2 * qd;
#pragma unroll
                for (int i = 0; i < 32; i++)
                    *reinterpret_cast<__half2 *>(dst + i * 8) =
                        __floats2half2_rn(o[4 * i + 2 * h] * inv, o[4 * i + 2 * h + 1] * inv);
                if (wg == 0 && qd == 0) p.s.part_lse[prow] = lse;
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
}

template <bool FP8>
__global__ void __launch_bounds__(kNT, 1) decode_wgmma_kernel(const __grid_constant__ Params p)
{
    using C = V3Cfg<FP8>;
    using namespace mla_sm90; // wgmma_fence / commit / wait, smem_desc
    extern __shared__ uint8_t smem_raw[];
    // Swizzled tiles need 1024-byte aligned bases (the swizzle is a function of the address).
    const uint32_t raw_addr = mla_decode_v1::smem_u32(smem_raw);
    const uint32_t base = (raw_addr + 1023u) & ~1023u;
    uint8_t *smem = smem_raw + (base - raw_addr);
    uint8_t *sQ = smem + C::offQ;
    uint8_t *sP = smem + C::offP;
    float *sRedMax = reinterpret_cast<float *>(smem + C::offRedMax);
    float *sRedSum = reinterpret_cast<float *>(smem + C::offRedSum);
    int *sFlags = reinterpret_cast<int *>(smem + C::offFlags);
    const uint32_t aQ = base + C::offQ, aTile = base + C::offTile, aStage = base + C::offStage, aP = base + C::offP;

    const int part = blockIdx.x, hb = blockIdx.y;
    const int tid = threadIdx.x, lane = tid & 31;
    const int wg = tid >> 7;                   // warpgroup: S keys 32wg.., O columns 256wg..
    const int r_lo = ((tid >> 5) & 3) * 16 + (lane >> 2); // this thread's rows: r_lo, r_lo + 8
    const int qd = lane & 3;
    // Launched as a programmatic dependent of the scheduler: wait for its results, and let
    // the combine kernel get scheduled as soon as every CTA is running.
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
    const int tau = *p.s.tau;
    const float qk_scale = p.scale_log2; // tiles hold the cache values (fp8: exact in fp16)

    const uint32_t aBar = base + C::offBar;
    if (FP8 && tid == 0) {
        for (int i = 0; i < kNS; i++) mla_sm90::mbar_init(aBar + 8u * i, 1);
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    if constexpr (FP8) __syncthreads(); // barriers initialised before anyone uses them

    Cursor cons;
    const int seq0 = mla_decode_v1::part_first_cursor(p, part, cons);
    if (cons.b >= p.batch) return; // empty part (uniform over the CTA)
    Cursor prod = cons;
    Pref pref = mla_decode_v1::prefetch_block_seq<kBN>(p, prod, seq0);
    // Prologue: fp8 keeps kNS blocks in flight (a stage frees as soon as it is converted);
    // bf16 computes from the stage itself, so kNS-1 ahead.
    int nprod = 0;
    for (; nprod < (FP8 ? kNS : kNS - 1); nprod++) {
        if constexpr (FP8)
            issue_block_bulk(p, prod, pref, aStage + (uint32_t)(nprod * C::kStage), aBar + 8u * nprod, &sFlags[nprod]);
        else
            issue_block_bf16(p, prod, pref, aStage + (uint32_t)(nprod * C::kStage), &sFlags[nprod]);
        mla_decode_v1::cursor_next(p, part, tau, prod);
        pref = mla_decode_v1::prefetch_block<kBN>(p, prod);
    }
    uint32_t phases = 0; // fp8: parity of each stage's mbarrier for its next completion
    int seq_cur = 0;     // seq_len of the request being computed

    float o[128];
#pragma unroll
    for (int i = 0; i < 128; i++) o[i] = 0.f;
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
    int lim_row[2] = {0, 0}; // exclusive key limit of this thread's two rows
    int lim_min = 0;         // smallest key limit over the CTA's rows (the request's first token)
    bool new_req = true;

    for (int j = 0; cons.b < p.batch; j++) {
        const int stage = j % kNS;
        __syncthreads(); // everyone is done with block j-1 (tile, stage, P, Q; wgmma waited)
        if constexpr (!FP8) {
            const int ps = nprod % kNS;
            issue_block_bf16(p, prod, pref, aStage + (uint32_t)(ps * C::kStage), &sFlags[ps]);
            mla_decode_v1::cursor_next(p, part, tau, prod);
            pref = mla_decode_v1::prefetch_block<kBN>(p, prod);
            nprod++;
        }
        if (new_req) {
            load_q<FP8>(p, cons.b, hb, sQ);
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
            seq_cur = seq;
            new_req = false;
        }
        if constexpr (FP8) {
            mla_sm90::mbar_wait(aBar + 8u * stage, (phases >> stage) & 1u); // block j landed
            phases ^= 1u << stage;
        } else {
            mla_decode_v1::cp_async_wait<kNS - 1>(); // block j landed (this thread's copies)
        }
        fence_proxy_async(); // this thread's Q stores and (bf16) cp.async data -> wgmma
        __syncthreads();     // block j's copies (all threads) and Q visible
        const int pmask = sFlags[stage]; // read before the stage is reissued
        const int key0 = cons.blk * kBN;

        uint32_t aK;
        if constexpr (FP8) {
            // fp8 stage -> fp16 tile (exact: cvt e4m3x2 -> f16x2, fewer instructions than the
            // integer conversion). Rows past seq_len or on invalid pages become zeros: the bulk
            // copy brought whole pages (or nothing), and a NaN there must not reach P V.
            const uint8_t *src = smem + C::offStage + stage * C::kStage;
            uint8_t *tile = smem + C::offTile;
            const bool partial = key0 + kBN > seq_cur || pmask != (kBN > p.page_size ? 3 : 1);
#pragma unroll
            for (int u = tid; u < kBN * 36; u += kNT) {
                const int r = u / 36, ch = u % 36;
                uint4 raw = *reinterpret_cast<const uint4 *>(src + r * kDqk + ch * 16);
                if (partial && !(key0 + r < seq_cur && ((pmask >> (r >> p.page_shift)) & 1)))
                    raw = make_uint4(0, 0, 0, 0);
                const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
                uint32_t h[8];
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    h[2 * k] = mla_decode_v1::e4m3x2_to_f16x2((uint16_t)(w[k] & 0xffffu));
                    h[2 * k + 1] = mla_decode_v1::e4m3x2_to_f16x2((uint16_t)(w[k] >> 16));
                }
                *reinterpret_cast<uint4 *>(tile + blk_off(r, 2 * ch)) = make_uint4(h[0], h[1], h[2], h[3]);
                *reinterpret_cast<uint4 *>(tile + blk_off(r, 2 * ch + 1)) = make_uint4(h[4], h[5], h[6], h[7]);
            }
            fence_proxy_async(); // tile stores -> wgmma
            __syncthreads();     // tile ready, stage free
            issue_block_bulk(p, prod, pref, aStage + (uint32_t)(stage * C::kStage), aBar + 8u * stage, &sFlags[stage]);
            mla_decode_v1::cursor_next(p, part, tau, prod);
            pref = mla_decode_v1::prefetch_block<kBN>(p, prod);
            nprod++;
            aK = aTile;
        } else {
            aK = aStage + (uint32_t)(stage * C::kStage);
        }

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
            wgmma_m64n32k16_ss<FP8>(s, desc_add(dq0, off), desc_add(dk0, off), ks > 0);
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
        __syncthreads(); // both warpgroups' maxima visible
        float alpha[2], ref[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const float m = fmaxf(m_run[h], fmaxf(sRedMax[r_lo + h * 8], sRedMax[kM + r_lo + h * 8]));
            // A row that has seen no key yet keeps m = -inf; use 0 so exp2 gives 0, not NaN.
            ref[h] = m == -INFINITY ? 0.f : m;
            alpha[h] = mla_decode_v1::fast_exp2(m_run[h] - ref[h]);
            m_run[h] = m;
        }
        // ---- P = exp2(S - m) to shared memory (64 x 64 K-major tile), sums, rescale O ----
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
        __syncthreads();     // both halves of P written

        // ---- O[:, 256wg..+256] += P V: V = dims 256wg.. of the tile (column blocks 4wg..4wg+3),
        // N-major; 4 k-steps of 16 keys (two 8-key core-matrix rows of 1024 bytes each) ----
        const uint64_t dp0 = opaque_desc(smem_desc(aP, 16, 1024, 1));
        const uint64_t dv0 = opaque_desc(smem_desc(aK + (uint32_t)(wg * 4 * kBlk), kBlk, 1024, 1));
        acc_fence(o);
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < kBN / 16; ks++)
            wgmma_m64n256k16_ss_tb<FP8>(o, desc_add(dp0, (uint32_t)(ks * 32)), desc_add(dv0, (uint32_t)(ks * 16 * 128)), 1);
        wgmma_commit();
        wgmma_wait<0>();
        acc_fence(o);

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
            __syncthreads();
            write_rows<FP8 && kWideHalfPartials>(p, o, sRedSum, m_run, b, part, hb, wg, r_lo, qd);
#pragma unroll
            for (int i = 0; i < 128; i++) o[i] = 0.f;
            m_run[0] = m_run[1] = -INFINITY;
            l_run[0] = l_run[1] = 0.f;
            new_req = true;
        }
    }
    mla_decode_v1::cp_async_wait<0>(); // no copy may outlive the CTA's shared memory
}

} // namespace mla_decode_v3
