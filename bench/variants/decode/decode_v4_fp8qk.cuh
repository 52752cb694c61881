// Split-KV MLA decode, version 4: fp8 cache, H * q_len >= 64. Opt-in (MLA_DECODE_VARIANT=v4):
// 3% faster than v3 on an H200 (B 64, H 128, 4k: 0.271 vs 0.279 ms) until v3 got one bulk copy
// per page (0.260 ms), and the two-term query below gives LSE errors up to ~9e-3, over the
// tests' 1e-3 + 1e-3|lse| (outputs pass). Kept as
// the measured answer to "does fp8 QK^T plus overlap pay here?": not while the kernel is bound
// by its CUDA-core instruction stream (bench/NOTES.md "Decode", v4). Same split-KV framework
// as decode_v3_wgmma.cuh (Params, scheduler, cursor walk, partials, combine).
//
// v3 converted every fp8 key block to an fp16 tile before S = Q K^T and ran conversion, S,
// softmax and P V one after another. v4 removes the K conversion and overlaps the rest:
//   S = Q K^T on fp8 tensor cores straight from the raw fp8 stage. Q is split per row into
//     two e4m3 terms, q * 2^e_r ~= qh + ql (qh = e4m3(q 2^e_r), ql = e4m3(q 2^e_r - qh)), so
//     S = (qh + ql) K^T is two fp8 wgmma chains into one accumulator: ~2^-8 relative error per
//     query element, about bf16's, and exact for an fp8 query (ql = 0, one chain). e_r puts
//     the row maximum in [128, 256).
//   O += P V stays 16-bit: V (dims 0..511) is converted from the stage to an fp16 tile (exact,
//     cvt e4m3x2 -> f16x2), each warpgroup converting the half it reads.
//   Pipeline per block j (both warpgroups): wait S_j; row max; barrier; issue S_{j+1} (async)
//     -> softmax of j and P_j to smem -> wait P V_{j-1} -> rescale O, convert V_j -> barrier ->
//     issue P V_j (async) and the loads of block j+2. The tensor cores work on S_{j+1} and
//     P V_j while the CUDA cores do softmax and conversion.
// Smem: Q (qh, ql) 2 x 36 KB, two fp8 stages of 36 KB (64-byte swizzle, the K-major layout
// fp8 wgmma reads), the fp16 V tile 64 KB and two P tiles of 8 KB (128-byte swizzle, as v3).
#pragma once
#include "decode_v3_wgmma.cuh"

#include <stdint.h>

namespace mla_decode_v4 {

using mla_decode_v1::Params;
using mla_decode_v1::Cursor;
using mla_decode_v1::Pref;
using mla_decode_v1::kDqk;
using mla_decode_v1::kDv;
using mla_decode_v3::blk_off;
using mla_decode_v3::kBlk;

constexpr int kM = 64;   // query rows per CTA
constexpr int kBN = 64;  // keys per block
constexpr int kNT = 256; // two warpgroups
constexpr int kCb8 = kM * 64; // one 64-byte-wide column block of a 64-row fp8 tile (4 KB)
constexpr int kTile8 = 9 * kCb8; // 64 rows x 576 fp8 (36 KB)

struct V4Cfg {
    static constexpr int offQh = 0;
    static constexpr int offQl = offQh + kTile8;
    static constexpr int offStage = offQl + kTile8;        // two stages
    static constexpr int offV = offStage + 2 * kTile8;     // fp16 V tile, 8 column blocks
    static constexpr int offP = offV + 8 * kBlk;           // two P tiles
    static constexpr int offRedMax = offP + 2 * kM * kBN * 2;
    static constexpr int offRedSum = offRedMax + 2 * kM * 4;
    static constexpr int offRowScale = offRedSum + 2 * kM * 4;
    static constexpr int offFlags = offRowScale + kM * 4;
    static constexpr int kSmem = offFlags + 16 + 1024; // + slack to align the base to 1024
    static_assert(offV % 1024 == 0 && offP % 1024 == 0 && offStage % 1024 == 0, "swizzle atoms");
    static_assert(kSmem <= 227 * 1024, "shared memory");
};

// Byte offset of 16-byte chunk c (0..35) of row r in a 64-row fp8 tile of 64-byte-wide column
// blocks with the 64-byte swizzle (chunk bits 4-5 xor address bits 7-8).
__device__ __forceinline__ uint32_t off8(int r, int c)
{
    return (uint32_t)((c >> 2) * kCb8 + r * 64 + (((c & 3) ^ ((r >> 1) & 3)) << 4));
}

// D(64x32) += A(64x32, smem K-major) * B(32x32, smem K-major), e4m3 in, fp32 accumulate.
__device__ __forceinline__ void wgmma_m64n32k32_e4m3(float (&d)[16], uint64_t da, uint64_t db, int accumulate)
{
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k32.f32.e4m3.e4m3 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
        "%16, %17, p, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "l"(da), "l"(db), "r"(accumulate));
}

__device__ __forceinline__ uint16_t f32x2_to_e4m3x2(float lo, float hi)
{
    uint16_t r;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(r) : "f"(hi), "f"(lo));
    return r;
}
__device__ __forceinline__ float2 e4m3x2_to_f32x2(uint16_t v)
{
    const uint32_t h = mla_decode_v1::e4m3x2_to_f16x2(v);
    return __half22float2(*reinterpret_cast<const __half2 *>(&h));
}

// Issues the cp.async copies of key block c (raw fp8 rows) into the stage at `sbase` in the
// off8 layout and commits one group (empty when the cursor is done). Thread t copies row
// t / 4 (one key), chunks t % 4 + 4i: the key's validity and source row are worked out once.
// Keys past seq_len and keys on pages with an out-of-range index are zero-filled, never read;
// *flags records which of the block's pages are valid.
__device__ __forceinline__ void issue_block(const Params &p, const Cursor &c, const Pref &f, uint32_t sbase,
                                            int *flags)
{
    if (c.b < p.batch) {
        const int seq = f.seq;
        const int key0 = c.blk * kBN;
        int ok = 0;
        if (key0 < seq) {
            if (f.idx0 >= 0 && f.idx0 < p.num_pages) ok |= 1;
            else if (threadIdx.x == 0 && p.err) atomicOr(p.err, MLA_DEVERR_PAGE_INDEX);
        }
        if (kBN > p.page_size && key0 + p.page_size < seq) {
            if (f.idx1 >= 0 && f.idx1 < p.num_pages) ok |= 2;
            else if (threadIdx.x == 0 && p.err) atomicOr(p.err, MLA_DEVERR_PAGE_INDEX);
        }
        if (threadIdx.x == 0) *flags = ok;
        const int r = threadIdx.x >> 2, c4 = threadIdx.x & 3;
        const int key = key0 + r;
        const int k = r >> p.page_shift; // page of the block: 0 or 1 (key0 is page aligned)
        const bool valid = key < seq && ((ok >> k) & 1);
        const uint8_t *src = p.kv;
        if (valid) src += ((size_t)(k ? f.idx1 : f.idx0) * p.page_size + (key & (p.page_size - 1))) * kDqk + c4 * 16;
        const uint32_t dst = sbase + (uint32_t)(r * 64 + ((c4 ^ ((r >> 1) & 3)) << 4));
        const int bytes = valid ? 16 : 0;
#pragma unroll
        for (int i = 0; i < 9; i++) mla_decode_v1::cp_async16(dst + (uint32_t)(i * kCb8), src + (valid ? i * 64 : 0), bytes);
    }
    mla_decode_v1::cp_async_commit();
}

// Q rows [hb*64, hb*64+64) of request b as (qh, ql) e4m3 tiles, and each row's logit factor
// scale_log2 * 2^-e_r in row_scale. Four threads per row. Rows past the request are zero.
__device__ __forceinline__ void load_q(const Params &p, int b, int hb, uint8_t *sqh, uint8_t *sql,
                                       float *row_scale)
{
    const int r = threadIdx.x >> 2, part = threadIdx.x & 3;
    const int gr = hb * kM + r;
    const bool live = gr < p.rows;
    const size_t e0 = ((size_t)b * p.rows + (live ? gr : 0)) * kDqk;
    if (p.q_fp8) {
        // Already e4m3 (q_scale is in bmm1): qh = q, ql = 0, e = 0.
        for (int c = part; c < 36; c += 4) {
            uint4 v = make_uint4(0, 0, 0, 0);
            if (live) v = *reinterpret_cast<const uint4 *>((const uint8_t *)p.q + e0 + c * 16);
            *reinterpret_cast<uint4 *>(sqh + off8(r, c)) = v;
            *reinterpret_cast<uint4 *>(sql + off8(r, c)) = make_uint4(0, 0, 0, 0);
        }
        if (part == 0) row_scale[r] = p.scale_log2;
        return;
    }
    const uint16_t *q = (const uint16_t *)p.q + e0;
    // Pass 1: the row's largest finite magnitude (the row is re-read from L2 in pass 2).
    float amax = 0.f;
    if (live)
        for (int c = part; c < 72; c += 4) {
            const uint4 raw = *reinterpret_cast<const uint4 *>(q + c * 8);
            const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const float lo = fabsf(mla_decode_v1::bf16_bits_to_float(w[k] & 0xffff));
                const float hi = fabsf(mla_decode_v1::bf16_bits_to_float(w[k] >> 16));
                if (lo <= 3.40282347e38f) amax = fmaxf(amax, lo); // skips inf and NaN
                if (hi <= 3.40282347e38f) amax = fmaxf(amax, hi);
            }
        }
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
    // 2^e with amax * 2^e in [128, 256): qh then uses e4m3's top binades without saturating.
    int e = 0;
    if (amax > 0.f) e = min(100, max(-100, 7 - ilogbf(amax)));
    const float up = ldexpf(1.0f, e);
    if (part == 0) row_scale[r] = p.scale_log2 * ldexpf(1.0f, -e);
    for (int c = part; c < 72; c += 4) {
        uint2 hv = make_uint2(0, 0), lv = make_uint2(0, 0);
        if (live) {
            const uint4 raw = *reinterpret_cast<const uint4 *>(q + c * 8);
            const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
            uint32_t h[2] = {0, 0}, l[2] = {0, 0};
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const float x0 = mla_decode_v1::bf16_bits_to_float(w[k] & 0xffff) * up;
                const float x1 = mla_decode_v1::bf16_bits_to_float(w[k] >> 16) * up;
                const uint16_t hb2 = f32x2_to_e4m3x2(x0, x1);
                const float2 hf = e4m3x2_to_f32x2(hb2);
                const uint16_t lb2 = f32x2_to_e4m3x2(x0 - hf.x, x1 - hf.y); // exact differences
                h[k >> 1] |= (uint32_t)hb2 << ((k & 1) * 16);
                l[k >> 1] |= (uint32_t)lb2 << ((k & 1) * 16);
            }
            hv = make_uint2(h[0], h[1]);
            lv = make_uint2(l[0], l[1]);
        }
        // bf16 chunk c (8 elements) is half of fp8 chunk c / 2.
        *reinterpret_cast<uint2 *>(sqh + off8(r, c >> 1) + (c & 1) * 8) = hv;
        *reinterpret_cast<uint2 *>(sql + off8(r, c >> 1) + (c & 1) * 8) = lv;
    }
}

// S(64 x 32 keys of warpgroup wg) = (qh + ql) K^T from the stage at aStage; one commit group.
__device__ __forceinline__ void issue_s(float (&s)[16], uint32_t aQh, uint32_t aQl, uint32_t aStage, int wg,
                                        bool with_lo)
{
    using namespace mla_sm90;
    const uint64_t dh = mla_decode_v3::opaque_desc(smem_desc(aQh, 16, 512, 2));
    const uint64_t dl = mla_decode_v3::opaque_desc(smem_desc(aQl, 16, 512, 2));
    const uint64_t dk = mla_decode_v3::opaque_desc(smem_desc(aStage + (uint32_t)(wg * 32 * 64), 16, 512, 2));
    mla_decode_v3::acc_fence(s);
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < kDqk / 32; ks++) {
        const uint32_t off = (uint32_t)((ks >> 1) * kCb8 + (ks & 1) * 32);
        wgmma_m64n32k32_e4m3(s, mla_decode_v3::desc_add(dh, off), mla_decode_v3::desc_add(dk, off), ks > 0);
    }
    if (with_lo) {
#pragma unroll
        for (int ks = 0; ks < kDqk / 32; ks++) {
            const uint32_t off = (uint32_t)((ks >> 1) * kCb8 + (ks & 1) * 32);
            wgmma_m64n32k32_e4m3(s, mla_decode_v3::desc_add(dl, off), mla_decode_v3::desc_add(dk, off), 1);
        }
    }
    wgmma_commit(); // waited (and fenced) at the top of the next step
}

__global__ void __launch_bounds__(kNT, 1) decode_fp8qk_kernel(const __grid_constant__ Params p)
{
    using C = V4Cfg;
    using namespace mla_sm90; // wgmma_fence / commit / wait, smem_desc
    extern __shared__ uint8_t smem_raw[];
    const uint32_t raw_addr = mla_decode_v1::smem_u32(smem_raw);
    const uint32_t base = (raw_addr + 1023u) & ~1023u;
    uint8_t *smem = smem_raw + (base - raw_addr);
    float *sRedMax = reinterpret_cast<float *>(smem + C::offRedMax);
    float *sRedSum = reinterpret_cast<float *>(smem + C::offRedSum);
    float *sRowScale = reinterpret_cast<float *>(smem + C::offRowScale);
    int *sFlags = reinterpret_cast<int *>(smem + C::offFlags);
    const uint32_t aQh = base + C::offQh, aQl = base + C::offQl, aStage = base + C::offStage;
    const uint32_t aV = base + C::offV, aP = base + C::offP;

    const int part = blockIdx.x, hb = blockIdx.y;
    const int tid = threadIdx.x, lane = tid & 31;
    const int wg = tid >> 7;                              // S keys 32wg.., O columns 256wg..
    const int wtid = tid & 127;                           // thread within the warpgroup
    const int r_lo = ((tid >> 5) & 3) * 16 + (lane >> 2); // this thread's rows: r_lo, r_lo + 8
    const int qd = lane & 3;
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
    const int tau = *p.s.tau;
    constexpr float v_scale = 1.0f; // V tile values are the cache values
    const bool with_lo = !p.q_fp8;

    Cursor cons;
    {
        const int b0 = p.s.part_begin[part];
        if (b0 >= p.batch) return; // empty part (uniform over the CTA)
        mla_decode_v1::cursor_range(p, part, tau, b0, cons);
    }
    Cursor prod = cons;
    Pref pref = mla_decode_v1::prefetch_block<kBN>(p, prod);
    for (int st = 0; st < 2; st++) {
        issue_block(p, prod, pref, aStage + (uint32_t)(st * kTile8), &sFlags[st]);
        mla_decode_v1::cursor_next(p, part, tau, prod);
        pref = mla_decode_v1::prefetch_block<kBN>(p, prod);
    }

    float o[128];
#pragma unroll
    for (int i = 0; i < 128; i++) o[i] = 0.f;
    mla_decode_v3::acc_fence(o); // initialised before the first S chain is in flight
    // S chains always accumulate into s_acc (fixed registers: ptxas keeps a wgmma chain
    // asynchronous only when its accumulators are not shuffled); softmax works on a copy.
    float s_acc[16];
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
    int lim_row[2] = {0, 0};
    int lim_min = 0; // smallest key limit over the CTA's rows (the request's first token)
    float row_f[2] = {0.f, 0.f};
    bool first_block = true; // of the request: P V overwrites O
    int j = 0; // block counter of this CTA: stage j & 1, P tile j & 1

    // Starts request cons.b: Q tiles, row limits and factors, then S of its first block
    // (stage j & 1; its copies are the older of the two groups in flight).
    auto begin_request = [&](float (&s)[16]) {
        load_q(p, cons.b, hb, smem + C::offQh, smem + C::offQl, sRowScale);
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
        mla_decode_v1::cp_async_wait<1>();
        mla_decode_v3::fence_proxy_async();
        __syncthreads(); // Q tiles, row factors and block j's stage visible
        row_f[0] = sRowScale[r_lo];
        row_f[1] = sRowScale[r_lo + 8];
        issue_s(s, aQh, aQl, aStage + (uint32_t)((j & 1) * kTile8), wg, with_lo);
    };

    // One key block: S_j was issued into s_acc; S_{j+1} is issued into s_acc once S_j is
    // copied out. Returns false when the CTA's work is done.
    auto step = [&]() -> bool {
        // S_j and P V_{j-1} done. (Waiting for P V_{j-1} here rather than later keeps the
        // group count static, which ptxas needs to keep the chains asynchronous.)
        wgmma_wait<0>();
        mla_decode_v3::acc_fence(s_acc);
        float cur[16];
#pragma unroll
        for (int i = 0; i < 16; i++) cur[i] = s_acc[i];
        const int stage = j & 1;
        const int pmask = sFlags[stage];
        const int key0 = cons.blk * kBN;
        const int page0 = key0 >> p.page_shift;
        const bool last = cons.blk + 1 >= cons.hi;
        // ---- mask, scale, row max of this warpgroup's 32 keys ----
        // Blocks inside every row's key range on valid pages (most blocks) need no mask.
        const bool full = key0 + kBN <= lim_min && pmask == (kBN > p.page_size ? 3 : 1);
        float mx[2] = {-INFINITY, -INFINITY};
        if (full) {
#pragma unroll
            for (int i = 0; i < 16; i++) {
                cur[i] *= row_f[(i >> 1) & 1];
                mx[(i >> 1) & 1] = fmaxf(mx[(i >> 1) & 1], cur[i]);
            }
        } else {
#pragma unroll
            for (int i = 0; i < 4; i++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int key = key0 + wg * 32 + i * 8 + 2 * qd + (e & 1);
                    const bool valid = key < lim_row[e >> 1] && ((pmask >> ((key >> p.page_shift) - page0)) & 1);
                    const float v = valid ? cur[4 * i + e] * row_f[e >> 1] : -INFINITY;
                    cur[4 * i + e] = v;
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
        if (!last) {
            mla_decode_v1::cp_async_wait<0>(); // block j+1 landed (this thread's copies)
            mla_decode_v3::fence_proxy_async();
        }
        __syncthreads(); // maxima visible; block j+1's stage complete; S_j done in both warpgroups

        // ---- running max over both warpgroups, rescale O ----
        float alpha[2], ref[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const float m = fmaxf(m_run[h], fmaxf(sRedMax[r_lo + h * 8], sRedMax[kM + r_lo + h * 8]));
            ref[h] = m == -INFINITY ? 0.f : m; // a row with no key yet: exp2 gives 0, not NaN
            alpha[h] = mla_decode_v1::fast_exp2(m_run[h] - ref[h]);
            m_run[h] = m;
        }
        // Rescale O before S_{j+1} is issued: ptxas keeps wgmma chains asynchronous only if no
        // ordinary instruction writes an accumulator while any chain is in flight.
        // Skipped when no row of the warp changed its maximum (most blocks once a row has
        // seen a few): alpha is then exactly 1.
        if (__any_sync(0xffffffffu, alpha[0] != 1.0f || alpha[1] != 1.0f)) {
            mla_decode_v3::acc_fence(o);
#pragma unroll
            for (int i = 0; i < 32; i++) {
                o[4 * i + 0] *= alpha[0];
                o[4 * i + 1] *= alpha[0];
                o[4 * i + 2] *= alpha[1];
                o[4 * i + 3] *= alpha[1];
            }
        }
        mla_decode_v3::acc_fence(o); // keeps the multiplies ahead of the S_{j+1} chain
        if (!last) issue_s(s_acc, aQh, aQl, aStage + (uint32_t)((stage ^ 1) * kTile8), wg, with_lo);

        // ---- P_j (fp16) to P tile j & 1 (overlaps S_{j+1}); convert this warpgroup's half of V_j ----
        uint8_t *sP = smem + C::offP + stage * (kM * kBN * 2);
        float ls[2] = {0.f, 0.f};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float p0 = mla_decode_v1::fast_exp2(cur[4 * i + 0] - ref[0]);
            const float p1 = mla_decode_v1::fast_exp2(cur[4 * i + 1] - ref[0]);
            const float p2 = mla_decode_v1::fast_exp2(cur[4 * i + 2] - ref[1]);
            const float p3 = mla_decode_v1::fast_exp2(cur[4 * i + 3] - ref[1]);
            ls[0] += p0 + p1;
            ls[1] += p2 + p3;
            const int c = wg * 4 + i;
            *reinterpret_cast<uint32_t *>(sP + blk_off(r_lo, c) + 4 * qd) = mla_decode_v1::pack2<true>(p0, p1);
            *reinterpret_cast<uint32_t *>(sP + blk_off(r_lo + 8, c) + 4 * qd) = mla_decode_v1::pack2<true>(p2, p3);
        }
        l_run[0] = l_run[0] * alpha[0] + ls[0];
        l_run[1] = l_run[1] * alpha[1] + ls[1];

        {
            const uint8_t *src = smem + C::offStage + stage * kTile8;
            uint8_t *vt = smem + C::offV;
            // 64 keys x 16 fp8 chunks (dims 256wg..256wg+255) per warpgroup; cvt e4m3x2 -> f16x2
            // is exact. Two chunks per iteration for independent load/convert/store chains.
#pragma unroll 2
            for (int u = wtid; u < kBN * 16; u += 128) {
                const int r = u >> 4, ch = wg * 16 + (u & 15);
                const uint4 raw = *reinterpret_cast<const uint4 *>(src + off8(r, ch));
                const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
                uint32_t h[8];
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    h[2 * k] = mla_decode_v1::e4m3x2_to_f16x2((uint16_t)(w[k] & 0xffffu));
                    h[2 * k + 1] = mla_decode_v1::e4m3x2_to_f16x2((uint16_t)(w[k] >> 16));
                }
                *reinterpret_cast<uint4 *>(vt + blk_off(r, 2 * ch)) = make_uint4(h[0], h[1], h[2], h[3]);
                *reinterpret_cast<uint4 *>(vt + blk_off(r, 2 * ch + 1)) = make_uint4(h[4], h[5], h[6], h[7]);
            }
        }
        mla_decode_v3::fence_proxy_async(); // P and V tile stores -> wgmma
        __syncthreads();        // P_j complete (both halves); stage j free (S_j read, V_j converted)
        issue_block(p, prod, pref, aStage + (uint32_t)(stage * kTile8), &sFlags[stage]);
        mla_decode_v1::cursor_next(p, part, tau, prod);
        pref = mla_decode_v1::prefetch_block<kBN>(p, prod);

        // ---- O[:, 256wg..+256] += P_j V_j (async) ----
        {
            const uint64_t dp0 = mla_decode_v3::opaque_desc(smem_desc(aP + (uint32_t)(stage * kM * kBN * 2), 16, 1024, 1));
            const uint64_t dv0 = mla_decode_v3::opaque_desc(smem_desc(aV + (uint32_t)(wg * 4 * kBlk), kBlk, 1024, 1));
            mla_decode_v3::acc_fence(o);
            wgmma_fence();
            // The first block of a request overwrites O (scale-d = 0) instead of accumulating:
            // O is never redefined by ordinary instructions, and nothing from the previous
            // request (not even a NaN) carries over.
#pragma unroll
            for (int ks = 0; ks < kBN / 16; ks++)
                mla_decode_v3::wgmma_m64n256k16_ss_tb<true>(o, mla_decode_v3::desc_add(dp0, (uint32_t)(ks * 32)),
                                                            mla_decode_v3::desc_add(dv0, (uint32_t)(ks * 16 * 128)),
                                                            ks > 0 || !first_block);
            wgmma_commit();
        }
        first_block = false;
        const int b = cons.b;
        mla_decode_v1::cursor_next(p, part, tau, cons);
        j++;
        if (!last) return true;

        // ---- end of this request's piece: normalize and write ----
        wgmma_wait<0>();
        mla_decode_v3::acc_fence(o);
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
        const int nsplit = p.s.num_splits[b];
        const int slot = p.s.slot_base[b] + part - p.s.first_part[b];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int r = r_lo + h * 8;
            const float L = sRedSum[r] + sRedSum[kM + r];
            const float inv = L > 0.f ? v_scale / L : 0.f;
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
        m_run[0] = m_run[1] = -INFINITY;
        l_run[0] = l_run[1] = 0.f;
        first_block = true;
        if (cons.b >= p.batch) return false;
        // Everyone has read sRedSum and finished S of the old request before Q is replaced.
        __syncthreads();
        begin_request(s_acc);
        return true;
    };

    begin_request(s_acc);
    while (step()) {
    }
    wgmma_wait<0>(); // already complete; tells ptxas no chain is in flight at exit
    mla_decode_v1::cp_async_wait<0>(); // no copy may outlive the CTA's shared memory
}

} // namespace mla_decode_v4
