// Split-KV MLA decode, version 2p: version 2 (decode_v2_fp8reg.cuh: fp8 cache, H * q_len <= 16,
// padded stage rows, K and V converted by cvt) software-pipelined across key blocks.
// ncu on version 2 (H200, B64 H16 32k, bench/NOTES.md 2026-12-03 third session) found no pipe
// above 40% busy, 1.94 warps per scheduler and 4.7 cycles per issued instruction, mostly
// dependency waits: a warp runs the scores, the softmax and P V of one block one after another,
// each with little independent work. Here iteration j computes the partial scores of block
// j+1 and P V of block j in one straight-line region (two independent instruction streams
// for the scheduler to interleave), then the softmax of block j+1.
// Three blocks are then resident (V of j, K of j+1, the copies in flight), so blocks are 32
// keys in 4 stages: ~88 KB per CTA, two CTAs per SM as in version 2.
// Retired to bench/variants (was opt-in, MLA_DECODE_V2_PIPE=1, at commit b1b9857): slower than version 2 on an H200
// (2026-12-03, ms, against version 2's padded form with 64-key blocks): B64 H16 32k 0.431 vs
// 0.393, B128 4k 0.129 vs 0.116, batch 1 64k 0.0310 vs 0.0281; faster than version 2 with
// 32-key blocks (B128 16k 0.446 vs 0.468). ncu: issued IPC 1.72 vs 1.64, but 15% more
// instructions per key (the per-block softmax and barriers of 32-key blocks).
// Barriers per block: A (block j+1 landed; P(j) visible; the score buffer free), B (partial
// scores of j+1 visible; every warp done with block j's stage and with P(j)), C (row maxima,
// and at the end of a request's piece its row sums, visible).
#pragma once
#include "decode_v2_fp8reg.cuh" // in src/cuda/sm90/ when restored

namespace mla_decode_v2p {

using namespace mla_decode_v1;
using mla_decode_v2::kM;
using mla_decode_v2::kNT;

constexpr int kBN = 32;

// kConv: version 2's conversion bits; only the cvt conversion on padded rows is built.
template <int kConv>
__global__ void __launch_bounds__(kNT, 2) decode_fp8_m16_pipe_kernel(const __grid_constant__ Params p)
{
    using namespace mla_decode_v2;
    constexpr bool kH1 = (kConv & kConvH1) != 0;
    static_assert((kConv & kConvCvt) == kConvCvt && (kConv & kConvPad) != 0 &&
                      (kConv & (kConvQ8 | kConvW8)) == 0,
                  "version 2p: cvt conversions on padded stage rows");
    using C = V2Cfg<kBN, true>;
    constexpr int kNS = C::NS, kSRow = C::SRow, kStageBytes = C::kStageBytes;
    static_assert(kNS == 4 && C::NTK == 4 && C::NTW == 1, "32-key blocks in 4 stages");
    extern __shared__ __align__(128) uint8_t smem[];
    uint8_t *sStage = smem + C::offStage;
    float *sS = reinterpret_cast<float *>(smem + C::offS);
    uint8_t *sP = smem + C::offP;
    float *sRedMax = reinterpret_cast<float *>(smem + C::offRedMax);
    float *sRedSum = reinterpret_cast<float *>(smem + C::offRedSum);
    int *sFlags = reinterpret_cast<int *>(smem + C::offFlags);

    const int part = blockIdx.x;
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
    const int tau = *p.s.tau;
    const float qk_scale = p.scale_log2;

    Cursor cq; // the block whose scores come next
    {
        const int b0 = p.s.part_begin[part];
        if (b0 >= p.batch) return;
        cursor_range(p, part, tau, b0, cq);
    }
    float o[16][4]; // n-tiles 4J + j of this warp's 128 dims (version 2's permuted order)
#pragma unroll
    for (int i = 0; i < 16; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    uint32_t qf[9][4];
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
    int lim_row[2] = {0, 0}, lim_min = 0;
    auto set_limits = [&](int seq) {
#pragma unroll
        for (int h = 0; h < 2; h++)
            lim_row[h] = p.causal ? seq - p.q_len + min(g + 8 * h, p.rows - 1) / p.heads + 1 : seq;
        lim_min = p.causal ? seq - p.q_len + 1 : seq;
    };

    // ---- the pieces of a block (version 2's code at 32 keys) ----
    // Partial scores over this warp's 144 dims, all 32 keys of the block in stage st.
    auto scores = [&](const uint8_t *st, float (&sp)[4][4]) {
#pragma unroll
        for (int i = 0; i < 4; i++) sp[i][0] = sp[i][1] = sp[i][2] = sp[i][3] = 0.f;
#pragma unroll
        for (int ks = 0; ks < 9; ks++) {
#pragma unroll
            for (int nt = 0; nt < 4; nt++) {
                const uint32_t kw = *reinterpret_cast<const uint32_t *>(st + st8p_off(nt * 8 + g, 9 * w + ks) + 4 * t);
                uint32_t b0, b1;
                conv4<true, kH1>(kw, b0, b1);
                mma16816<true>(sp[nt], qf[ks], b0, b1);
            }
        }
    };
    auto store_scores = [&](const float (&sp)[4][4]) {
#pragma unroll
        for (int nt = 0; nt < 4; nt++) {
            *reinterpret_cast<float2 *>(sS + (w * kM + g) * kSRow + nt * 8 + 2 * t) = make_float2(sp[nt][0], sp[nt][1]);
            *reinterpret_cast<float2 *>(sS + (w * kM + g + 8) * kSRow + nt * 8 + 2 * t) = make_float2(sp[nt][2], sp[nt][3]);
        }
    };
    // O += P V for the block in stage st (P in sP).
    const uint32_t pbase = smem_u32(sP);
    auto pv = [&](const uint8_t *st) {
#pragma unroll
        for (int kk = 0; kk < 2; kk++) {
            uint32_t a[4];
            ldsm_x4(a, pbase + p_off<kBN>(lane & 15, 2 * kk + (lane >> 4)));
            const int r0 = kk * 16 + 2 * t;
#pragma unroll
            for (int J = 0; J < 4; J++) {
                const int ch = 8 * w + 2 * J + (g >> 2), by = 4 * (g & 3);
                const uint32_t w0 = *reinterpret_cast<const uint32_t *>(st + st8p_off(r0, ch) + by);
                const uint32_t w1 = *reinterpret_cast<const uint32_t *>(st + st8p_off(r0 + 1, ch) + by);
                const uint32_t w2 = *reinterpret_cast<const uint32_t *>(st + st8p_off(r0 + 8, ch) + by);
                const uint32_t w3 = *reinterpret_cast<const uint32_t *>(st + st8p_off(r0 + 9, ch) + by);
                uint32_t b0[4], b1[4];
                conv4<true, kH1>(__byte_perm(w0, w1, 0x5140), b0[0], b0[1]);
                conv4<true, kH1>(__byte_perm(w0, w1, 0x7362), b0[2], b0[3]);
                conv4<true, kH1>(__byte_perm(w2, w3, 0x5140), b1[0], b1[1]);
                conv4<true, kH1>(__byte_perm(w2, w3, 0x7362), b1[2], b1[3]);
#pragma unroll
                for (int jj = 0; jj < 4; jj++) mma16816<true>(o[4 * J + jj], a, b0[jj], b1[jj]);
            }
        }
    };
    // Scores of block c: the four partials summed for this warp's 8 keys, masked and scaled;
    // the warp's row maxima to sRedMax.
    float s[4];
    auto softmax_max = [&](const Cursor &c, int pmask) {
        const int col = w * 8 + 2 * t;
        {
            const float2 a = *reinterpret_cast<const float2 *>(sS + g * kSRow + col);
            const float2 b = *reinterpret_cast<const float2 *>(sS + (g + 8) * kSRow + col);
            s[0] = a.x, s[1] = a.y, s[2] = b.x, s[3] = b.y;
        }
#pragma unroll
        for (int v = 1; v < 4; v++) {
            const float2 a = *reinterpret_cast<const float2 *>(sS + (v * kM + g) * kSRow + col);
            const float2 b = *reinterpret_cast<const float2 *>(sS + (v * kM + g + 8) * kSRow + col);
            s[0] += a.x, s[1] += a.y, s[2] += b.x, s[3] += b.y;
        }
        const int key0 = c.blk * kBN;
        float mx[2] = {-INFINITY, -INFINITY};
        // a 32-key block lies on one page; blocks inside every row's key range need no mask
        const bool full = key0 + kBN <= lim_min && pmask == 1;
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const bool valid = full || (key0 + col + (e & 1) < lim_row[e >> 1] && (pmask & 1));
            s[e] = valid ? s[e] * qk_scale : -INFINITY;
            mx[e >> 1] = fmaxf(mx[e >> 1], s[e]);
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
    };
    // P of the block (after barrier C) to sP; running max and sum; O rescaled. A row whose
    // running max was reset (a new request) gets alpha = 0, and O is cleared, not multiplied
    // (a non-finite O from an earlier request must not leak into the next).
    auto softmax_p = [&]() {
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
        const float p0 = fast_exp2(s[0] - ref[0]), p1 = fast_exp2(s[1] - ref[0]);
        const float p2 = fast_exp2(s[2] - ref[1]), p3 = fast_exp2(s[3] - ref[1]);
        l_run[0] = l_run[0] * alpha[0] + (p0 + p1);
        l_run[1] = l_run[1] * alpha[1] + (p2 + p3);
        *reinterpret_cast<uint32_t *>(sP + p_off<kBN>(g, w) + 4 * t) = pack2<true>(p0, p1);
        *reinterpret_cast<uint32_t *>(sP + p_off<kBN>(g + 8, w) + 4 * t) = pack2<true>(p2, p3);
        if (__any_sync(0xffffffffu, alpha[0] != 1.0f || alpha[1] != 1.0f)) {
#pragma unroll
            for (int i = 0; i < 16; i++) {
                o[i][0] = alpha[0] == 0.f ? 0.f : o[i][0] * alpha[0];
                o[i][1] = alpha[0] == 0.f ? 0.f : o[i][1] * alpha[0];
                o[i][2] = alpha[1] == 0.f ? 0.f : o[i][2] * alpha[1];
                o[i][3] = alpha[1] == 0.f ? 0.f : o[i][3] * alpha[1];
            }
        }
    };
    // End of request b's piece (after barrier C, row sums in sRedSum): O / l to the output or
    // the float16 partials, as version 2.
    auto finish = [&](int b) {
        const int nsplit = p.s.num_splits[b];
        const int slot = p.s.slot_base[b] + part - p.s.first_part[b];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            float L = 0.f;
#pragma unroll
            for (int v = 0; v < 4; v++) L += sRedSum[v * kM + g + 8 * h];
            const float inv = L > 0.f ? 1.0f / L : 0.f;
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
        m_run[0] = m_run[1] = -INFINITY; // O is cleared by the next softmax_p (alpha = 0)
        l_run[0] = l_run[1] = 0.f;
    };

    // ---- prologue: Q, four blocks in flight, scores and P of the first block ----
    Cursor prod = cq;
    int seq0;
    Pref pref;
    load_q_frags(p, cq.b, w, g, t, qf, [&] {
        seq0 = p.s.seq_eff[cq.b];
        pref = prefetch_block<kBN>(p, prod);
    });
    set_limits(seq0);
    int nprod = 0;
    for (; nprod < kNS; nprod++) {
        issue_block_v2<kBN, false, true>(p, prod, pref, sStage + nprod * kStageBytes, &sFlags[nprod]);
        cursor_next(p, part, tau, prod);
        pref = prefetch_block<kBN>(p, prod);
    }
    cp_async_wait<kNS - 1>();
    __syncthreads();
    {
        float sp[4][4];
        scores(sStage, sp);
        store_scores(sp);
    }
    __syncthreads();
    softmax_max(cq, sFlags[0]);
    __syncthreads();
    softmax_p();

    // ---- iteration j: scores of block j+1 and P V of block j, then the softmax of j+1 ----
    Cursor cv = cq; // block j
    cursor_next(p, part, tau, cq);
    for (int j = 0; cv.b < p.batch; j++) {
        const bool has_next = cq.b < p.batch;
        const bool last = cv.blk + 1 >= cv.hi; // block j ends its request's piece
        if (has_next && last) { // block j+1 starts the next request
            int seq;
            load_q_frags(p, cq.b, w, g, t, qf, [&] { seq = p.s.seq_eff[cq.b]; });
            set_limits(seq);
        }
        // Blocks j+2 and j+3 may still be in flight.
        cp_async_wait<kNS - 2>();
        __syncthreads(); // A
        const uint8_t *stv = sStage + (j % kNS) * kStageBytes;
        if (has_next) {
            float sp[4][4];
            scores(sStage + ((j + 1) % kNS) * kStageBytes, sp);
            pv(stv);
            store_scores(sp);
        } else {
            pv(stv);
        }
        __syncthreads(); // B
        // Block j's stage is free: block j+4 goes there.
        issue_block_v2<kBN, false, true>(p, prod, pref, sStage + (nprod % kNS) * kStageBytes, &sFlags[nprod % kNS]);
        cursor_next(p, part, tau, prod);
        pref = prefetch_block<kBN>(p, prod);
        nprod++;
        if (has_next) softmax_max(cq, sFlags[(j + 1) % kNS]);
        if (last) {
#pragma unroll
            for (int h = 0; h < 2; h++) {
                float v = l_run[h];
                v += __shfl_xor_sync(0xffffffffu, v, 1);
                v += __shfl_xor_sync(0xffffffffu, v, 2);
                if (t == 0) sRedSum[w * kM + g + 8 * h] = v;
            }
        }
        __syncthreads(); // C
        if (last) finish(cv.b);
        if (has_next) softmax_p();
        cv = cq;
        cursor_next(p, part, tau, cq);
    }
    cp_async_wait<0>();
}

} // namespace mla_decode_v2p
