// Split-KV MLA decode for 17..32 query rows (H = 32, or H = 16 with q_len 2) with an fp8 cache:
// the swap kernel (decode_v2_swap.cuh) with N = 32 and each key block converted once. One CTA
// of two warpgroups per SM; both take the same block:
//   * S^T (64 keys x 32 rows): warpgroup h converts half of K's 36 k-steps (h = 0: 64-dim spans
//     0-3 and the first half of span 4; h = 1: the second half of span 4 and spans 5-8) into a
//     partial S^T; the partials are swapped through shared memory and each warpgroup adds the
//     other's, so both hold the same S^T (float addition commutes: bit-identical) and run the
//     same softmax. Each writes the P^T rows of its half of the query rows.
//   * O^T (512 dims x 32 rows): warpgroup h owns m-tiles 4h..4h+3, i.e. bytes [8h, 8h + 8) of
//     every 16-byte dim chunk of the swap kernel's map (dims 16 c + 8 h + 2 i + hh), and converts
//     only those V bytes.
// 4 stages of 64 keys by TMA (issued by warpgroup 0's warps, version 2's issue_block_tma),
// Q^T (32 rows, 36 KB) and P^T (4 KB) as K-major B tiles in the 128-byte swizzle.
// Retired (bench/variants/README.md): on an H200 it ran at 38% of copy against 46% for two 16-row
// head blocks of the swap kernel (B64 H32 16k 0.383 vs 0.315 ms), which convert every block
// twice but run as two independent CTAs per SM; bench/NOTES.md. Its include path assumes
// src/cuda/sm90/.
#pragma once
#include "decode_v2_swap.cuh"

namespace mla_decode_v2s {

constexpr int kNT32 = 256, kRows32 = 32;
struct Swap32Cfg {
    static constexpr int kStages = 4;
    static constexpr int kStageBytes = kBN * kRow8;
    static constexpr int offStage = 0;
    static constexpr int offQ = kStages * kStageBytes;     // Q^T: 9 column blocks x 32 rows x 128 B
    static constexpr int offP = offQ + 9 * 4096;           // P^T: 32 rows x 128 B
    static constexpr int offX = offP + 4096;               // S^T partials [2 wg][4 float4][128 threads]
    static constexpr int offRedMax = offX + 2 * 4 * 128 * 16; // [2 wg][4 warps][32 rows]
    static constexpr int offRedSum = offRedMax + 1024;        // [2 wg][4 warps][32 rows]
    static constexpr int offFlags = offRedSum + 1024;
    static constexpr int offBar = offFlags + 16;
    static constexpr int kSmem = offBar + 32 + 1024; // + alignment slack (base aligned to 1024)
    static_assert(offQ % 1024 == 0 && offP % 1024 == 0, "swizzled tiles need 1024-byte alignment");
    static_assert(kSmem <= 227 * 1024, "shared memory");
};

// D(64x32) += A(64x16, registers) * B(16x32, shared memory K-major, 128-byte swizzle), f16.
__device__ __forceinline__ void wgmma_m64n32k16_rs(float (&d)[16], const uint32_t (&a)[4], uint64_t db, int acc)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
                 "{%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc));
}
__device__ __forceinline__ uint2 lds64(uint32_t addr)
{
    uint2 v;
    asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "r"(addr));
    return v;
}

__global__ void __launch_bounds__(kNT32, 1) decode_fp8_m32_swap_kernel(const __grid_constant__ Params p)
{
    using C = Swap32Cfg;
    using namespace mla_sm90;
    constexpr int kS = C::kStages;
    extern __shared__ __align__(128) uint8_t smem_raw[];
    uint8_t *smem = smem_raw;
    {
        const uint32_t a = smem_u32(smem_raw);
        smem += ((a + 1023u) & ~1023u) - a;
    }
    const uint32_t sBase = smem_u32(smem);
    const uint32_t sQ = sBase + C::offQ, sP = sBase + C::offP;
    int *sFlags = reinterpret_cast<int *>(smem + C::offFlags);
    const uint32_t barBase = sBase + C::offBar;

    const int part = blockIdx.x;
    const int tid = threadIdx.x, wg = tid >> 7, wt = tid & 127, lane = tid & 31, w = wt >> 5;
    const int g = lane >> 2, t = lane & 3;
    float *sRedMax = reinterpret_cast<float *>(smem + C::offRedMax) + wg * 128;
    float *sRedSum = reinterpret_cast<float *>(smem + C::offRedSum) + wg * 128;
    if (tid == 0) {
        tma_prefetch_map(&p.kv_tma[0]);
        tma_prefetch_map(&p.kv_tma[1]);
        for (int i = 0; i < kS; i++) mbar_init(barBase + 8u * i, 4); // issue_block_tma: warpgroup 0's warps
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
    const int tau = *p.s.tau;
    const float qk_scale = p.scale_log2;

    Cursor cons;
    const int seq0 = part_first_cursor(p, part, cons);
    if (cons.b >= p.batch) return;

    const int fg = swap_row_key(g);
    const uint32_t kb0 = (uint32_t)((16 * w + fg) * 128 + ((t ^ fg) << 4));
    const uint32_t kb1 = (uint32_t)((16 * w + fg) * 128 + (((4 | t) ^ fg) << 4));
    const uint32_t kbr = (uint32_t)(4 * kBN * 128 + (16 * w + fg) * 64 + ((t ^ (fg >> 1)) << 4));
    const uint32_t vb0 = (uint32_t)(w * kBN * 128 + (2 * t) * 128 + ((g ^ (2 * t)) << 4) + 8 * wg);
    const uint32_t vb1 = (uint32_t)(w * kBN * 128 + (2 * t + 1) * 128 + ((g ^ (2 * t + 1)) << 4) + 8 * wg);
    float4 *xMine = reinterpret_cast<float4 *>(smem + C::offX) + wg * 512 + wt;
    const float4 *xOther = reinterpret_cast<const float4 *>(smem + C::offX) + (wg ^ 1) * 512 + wt;

    float o[4][16]; // m-tile 4 wg + i: o[i][4 j + 2 hh + e] = dim 16 (8 w + g) + 8 wg + 2 i + hh, row 8 j + 2 t + e
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int k = 0; k < 16; k++) o[i][k] = 0.f;
    // This thread's 8 rows n = 8 j + 2 t + e, index r = 2 j + e (the same in both warpgroups).
    float m_run[8], l_run[8];
    int lim_row[8];
    int lim_min = 0, cur_seq = 0;
#pragma unroll
    for (int r = 0; r < 8; r++) {
        m_run[r] = -INFINITY;
        l_run[r] = 0.f;
        lim_row[r] = 0;
    }
    auto set_limits = [&](int seq) {
#pragma unroll
        for (int r = 0; r < 8; r++) {
            const int n = 8 * (r >> 1) + 2 * t + (r & 1);
            lim_row[r] = n >= p.rows ? -1 : p.causal ? seq - p.q_len + n / p.heads + 1 : seq;
        }
        lim_min = p.causal ? seq - p.q_len + 1 : seq;
        cur_seq = seq;
    };
    auto load_q = [&](int b, auto between) {
        if (p.q_fp8) load_qt_t<true, kRows32, kNT32>(p, b, 0, sQ, between);
        else load_qt_t<false, kRows32, kNT32>(p, b, 0, sQ, between);
    };
    auto issue = [&](int s, const Cursor &c, const Pref &f) {
        if (wg == 0)
            issue_block_tma<kBN>(p, c, f, sBase + (uint32_t)(C::offStage + s * C::kStageBytes), &sFlags[s], barBase + 8u * s);
    };
    const uint64_t qdesc0 = smem_desc(sQ, 16, 1024, 1), pdesc0 = smem_desc(sP, 16, 1024, 1);

    Cursor prod = cons;
    Pref pref;
    load_q(cons.b, [&] { pref = prefetch_block_seq<kBN>(p, prod, seq0); });
    set_limits(seq0);
    int nprod = 0;
    for (; nprod < kS - 1; nprod++) {
        issue(nprod, prod, pref);
        cursor_next(p, part, tau, prod);
        pref = prefetch_block<kBN>(p, prod);
    }
    bool new_req = false;

    for (int j = 0; cons.b < p.batch; j++) {
        const int stage = j % kS;
        if (new_req) {
            int seq;
            load_q(cons.b, [&] { seq = p.s.seq_eff[cons.b]; });
            set_limits(seq);
            new_req = false;
        }
        mbar_wait(barBase + 8u * stage, (uint32_t)(j / kS) & 1u);
        mla_decode_v3::fence_proxy_async(); // Q^T and P^T stores -> wgmma
        __syncthreads();
        issue(nprod % kS, prod, pref);
        cursor_next(p, part, tau, prod);
        pref = prefetch_block<kBN>(p, prod);
        nprod++;
        const int pmask = sFlags[stage];
        const uint32_t st = sBase + (uint32_t)(C::offStage + stage * C::kStageBytes);
        const int key0 = cons.blk * kBN;
        const int full_mask = kBN > p.page_size ? 3 : 1;
        if (key0 + kBN > cur_seq || pmask != full_mask) {
            uint8_t *stp = smem + C::offStage + stage * C::kStageBytes;
            for (int i = tid; i < kBN * 32; i += kNT32) {
                const int r = i >> 5, cb = (i >> 3) & 3, c16 = i & 7;
                const bool ok = key0 + r < cur_seq && ((pmask >> (kBN > p.page_size ? r >> 5 : 0)) & 1);
                if (!ok) *reinterpret_cast<uint4 *>(stp + cb * kBN * 128 + r * 128 + c16 * 16) = make_uint4(0, 0, 0, 0);
            }
            mla_decode_v3::fence_proxy_async();
            __syncthreads();
        }

        // ---- partial S^T over this warpgroup's 18 k-steps: 4 whole spans, then half of span 4 ----
        float sacc[2][16]; // k-steps u = 0, 2 into sacc[0], u = 1, 3 into sacc[1] (4 spilled)
#pragma unroll
        for (int u = 0; u < 2; u++) {
#pragma unroll
            for (int k = 0; k < 16; k++) sacc[u][k] = 0.f;
            mla_decode_v3::acc_fence(sacc[u]);
        }
        auto k_addr = [&](int q) -> uint32_t {
            return q < 8 ? st + (uint32_t)((q >> 1) * kBN * 128) + ((q & 1) ? kb1 : kb0) : st + kbr;
        };
        const int qbase = wg ? 5 : 0;
        uint4 kn0 = lds128(k_addr(qbase)), kn1 = lds128(k_addr(qbase) + 1024);
        const uint64_t qd = mla_decode_v3::opaque_desc(qdesc0);
        wgmma_fence();
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int q = qbase + i;
            const uint4 k0 = kn0, k1 = kn1;
            if (i < 3) {
                kn0 = lds128(k_addr(q + 1));
                kn1 = lds128(k_addr(q + 1) + (q + 1 < 8 ? 1024 : 512));
            }
            if (i >= 3) wgmma_wait<2>();
            uint32_t a[4][4];
#pragma unroll
            for (int u = 0; u < 4; u++) {
                mla_decode_ws::e4m3x4_to_f16x4(word(k0, u), a[u][0], a[u][2]);
                mla_decode_ws::e4m3x4_to_f16x4(word(k1, u), a[u][1], a[u][3]);
            }
#pragma unroll
            for (int u = 0; u < 4; u++)
                wgmma_m64n32k16_rs(sacc[u & 1], a[u], mla_decode_v3::desc_add(qd, (uint32_t)(q * 4096 + u * 32)), i | (u >> 1));
            wgmma_commit();
        }
        {
            // span 4, k-steps 16 + 2 wg + {0, 1}: bytes [8 wg, 8 wg + 8) of each thread's chunk
            const uint2 h0 = lds64(k_addr(4) + 8 * wg), h1 = lds64(k_addr(4) + 1024 + 8 * wg);
            wgmma_wait<2>();
            uint32_t a[2][4];
            mla_decode_ws::e4m3x4_to_f16x4(h0.x, a[0][0], a[0][2]);
            mla_decode_ws::e4m3x4_to_f16x4(h1.x, a[0][1], a[0][3]);
            mla_decode_ws::e4m3x4_to_f16x4(h0.y, a[1][0], a[1][2]);
            mla_decode_ws::e4m3x4_to_f16x4(h1.y, a[1][1], a[1][3]);
#pragma unroll
            for (int u = 0; u < 2; u++)
                wgmma_m64n32k16_rs(sacc[u], a[u], mla_decode_v3::desc_add(qd, (uint32_t)(4 * 4096 + (2 * wg + u) * 32)), 1);
            wgmma_commit();
        }
        wgmma_wait<0>();
        float s[16];
#pragma unroll
        for (int u = 0; u < 2; u++) mla_decode_v3::acc_fence(sacc[u]);
#pragma unroll
        for (int k = 0; k < 16; k++) s[k] = sacc[0][k] + sacc[1][k];
#pragma unroll
        for (int i = 0; i < 4; i++) mla_decode_v3::acc_fence(o[i]);
        // swap the partials: both warpgroups then hold the whole S^T
#pragma unroll
        for (int k = 0; k < 4; k++) xMine[k * 128] = make_float4(s[4 * k], s[4 * k + 1], s[4 * k + 2], s[4 * k + 3]);
        __syncthreads();
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const float4 v = xOther[k * 128];
            s[4 * k] += v.x;
            s[4 * k + 1] += v.y;
            s[4 * k + 2] += v.z;
            s[4 * k + 3] += v.w;
        }

        // ---- mask, scale, column (query row) max over the 64 keys; s[4 j + 2 hh + e] ----
        const int page0 = key0 >> p.page_shift;
        const bool full = key0 + kBN <= lim_min && pmask == full_mask;
        float mx[8];
#pragma unroll
        for (int r = 0; r < 8; r++) mx[r] = -INFINITY;
        if (full) {
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
                const bool valid = (key < lim_row[r]) & (((pmask >> ((key >> p.page_shift) - page0)) & 1) != 0);
                const float v = valid ? s[k] * qk_scale : -INFINITY;
                s[k] = v;
                mx[r] = fmaxf(mx[r], v);
            }
        }
#pragma unroll
        for (int r = 0; r < 8; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 4));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 8));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 16));
        }
        if (g == 0) {
#pragma unroll
            for (int r = 0; r < 8; r++) sRedMax[w * 32 + 8 * (r >> 1) + 2 * t + (r & 1)] = mx[r];
        }
        named_bar(1 + wg, 128);
        float alpha[8], ref[8];
#pragma unroll
        for (int r = 0; r < 8; r++) {
            const int n = 8 * (r >> 1) + 2 * t + (r & 1);
            float m = m_run[r];
#pragma unroll
            for (int v = 0; v < 4; v++) m = fmaxf(m, sRedMax[v * 32 + n]);
            ref[r] = m == -INFINITY ? 0.f : m;
            alpha[r] = fast_exp2(m_run[r] - ref[r]);
            m_run[r] = m;
            l_run[r] *= alpha[r];
        }
        // P^T[n][key] as f16; warpgroup wg stores rows [16 wg, 16 wg + 16)
#pragma unroll
        for (int k = 0; k < 16; k++) {
            const int r = 2 * (k >> 2) + (k & 1), hh = (k >> 1) & 1;
            const int n = 8 * (r >> 1) + 2 * t + (r & 1), key = 16 * w + 8 * hh + fg;
            const float pv = fast_exp2(s[k] - ref[r]);
            l_run[r] += pv;
            if ((r >> 2) == wg) {
                const __half hv = __float2half_rn(pv);
                const uint32_t addr = sP + (uint32_t)(n * 128 + ((((key >> 3) ^ (n & 7))) << 4) + ((key & 7) << 1));
                asm volatile("st.shared.b16 [%0], %1;\n" ::"r"(addr), "h"(*reinterpret_cast<const uint16_t *>(&hv)) : "memory");
            }
        }
        bool rescale = false;
#pragma unroll
        for (int r = 0; r < 8; r++) rescale |= alpha[r] != 1.0f;
        if (__any_sync(0xffffffffu, rescale)) {
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int k = 0; k < 16; k++) o[i][k] *= alpha[2 * (k >> 2) + (k & 1)];
        }
        mla_decode_v3::fence_proxy_async(); // P^T stores -> wgmma
        __syncthreads();

        // ---- O^T += V^T P^T over this warpgroup's 4 m-tiles ----
#pragma unroll
        for (int i = 0; i < 4; i++) mla_decode_v3::acc_fence(o[i]);
        wgmma_fence();
        uint2 vn[4];
        auto v_load = [&](int kk, uint2 (&v)[4]) {
            const uint32_t base = st + (uint32_t)(kk * 2048);
            v[0] = lds64(base + vb0);
            v[1] = lds64(base + vb1);
            v[2] = lds64(base + vb0 + 1024);
            v[3] = lds64(base + vb1 + 1024);
        };
        v_load(0, vn);
        const uint64_t pdd = mla_decode_v3::opaque_desc(pdesc0);
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            const uint2 v0 = vn[0], v1 = vn[1], v2 = vn[2], v3 = vn[3];
            if (kk < 3) v_load(kk + 1, vn);
            if (kk >= 2) wgmma_wait<1>();
            const uint64_t pd = mla_decode_v3::desc_add(pdd, (uint32_t)(kk * 32));
            uint32_t a[4][4];
#pragma unroll
            for (int jw = 0; jw < 2; jw++) {
                const uint32_t x0 = jw ? v0.y : v0.x, x1 = jw ? v1.y : v1.x, x2 = jw ? v2.y : v2.x, x3 = jw ? v3.y : v3.x;
                mla_decode_ws::e4m3x4_to_f16x4(__byte_perm(x0, x1, 0x5140), a[2 * jw][0], a[2 * jw][1]);
                mla_decode_ws::e4m3x4_to_f16x4(__byte_perm(x2, x3, 0x5140), a[2 * jw][2], a[2 * jw][3]);
                mla_decode_ws::e4m3x4_to_f16x4(__byte_perm(x0, x1, 0x7362), a[2 * jw + 1][0], a[2 * jw + 1][1]);
                mla_decode_ws::e4m3x4_to_f16x4(__byte_perm(x2, x3, 0x7362), a[2 * jw + 1][2], a[2 * jw + 1][3]);
            }
#pragma unroll
            for (int i = 0; i < 4; i++) wgmma_m64n32k16_rs(o[i], a[i], pd, 1);
            wgmma_commit();
        }

        // ---- end of this request's piece ----
        const int b = cons.b;
        const bool last = cons.blk + 1 >= cons.hi;
        cursor_next(p, part, tau, cons);
        if (last) {
            wgmma_wait<0>();
#pragma unroll
            for (int i = 0; i < 4; i++) mla_decode_v3::acc_fence(o[i]);
            float lsum[8];
#pragma unroll
            for (int r = 0; r < 8; r++) {
                float v = l_run[r];
                v += __shfl_xor_sync(0xffffffffu, v, 4);
                v += __shfl_xor_sync(0xffffffffu, v, 8);
                v += __shfl_xor_sync(0xffffffffu, v, 16);
                lsum[r] = v;
            }
            if (g == 0) {
#pragma unroll
                for (int r = 0; r < 8; r++) sRedSum[w * 32 + 8 * (r >> 1) + 2 * t + (r & 1)] = lsum[r];
            }
            named_bar(1 + wg, 128);
            const int nsplit = p.s.num_splits[b];
            const int slot = p.s.slot_base[b] + part - p.s.first_part[b];
            const int c = 8 * w + g; // this thread's output dims [16 c + 8 wg, +8)
#pragma unroll
            for (int r = 0; r < 8; r++) {
                const int n = 8 * (r >> 1) + 2 * t + (r & 1);
                if (n >= p.rows) continue;
                float L = 0.f;
#pragma unroll
                for (int v = 0; v < 4; v++) L += sRedSum[v * 32 + n];
                const float inv = L > 0.f ? 1.0f / L : 0.f;
                const float lse = L > 0.f ? (m_run[r] + log2f(L)) * 0.69314718055994531f : -INFINITY;
                const int kx = 4 * (r >> 1) + (r & 1); // o[i][kx]: dim 2 i, o[i][kx + 2]: dim 2 i + 1
                const size_t row = (size_t)b * p.rows + n;
                if (nsplit == 1) {
                    const float sc = inv * p.bmm2;
                    uint32_t wv[4];
#pragma unroll
                    for (int i = 0; i < 4; i++) wv[i] = pack2<false>(o[i][kx] * sc, o[i][kx + 2] * sc);
                    *reinterpret_cast<uint4 *>(p.out + row * kDv + 16 * c + 8 * wg) = make_uint4(wv[0], wv[1], wv[2], wv[3]);
                    if (p.lse && c == 0 && wg == 0) p.lse[row] = lse;
                } else {
                    const size_t prow = (size_t)slot * p.rows + n;
                    uint32_t wv[4];
#pragma unroll
                    for (int i = 0; i < 4; i++) wv[i] = pack2<true>(o[i][kx] * inv, o[i][kx + 2] * inv);
                    *reinterpret_cast<uint4 *>(reinterpret_cast<uint16_t *>(p.s.part_o) + prow * kDv + 16 * c + 8 * wg) =
                        make_uint4(wv[0], wv[1], wv[2], wv[3]);
                    if (c == 0 && wg == 0) p.s.part_lse[prow] = lse;
                }
            }
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int k = 0; k < 16; k++) o[i][k] = 0.f;
#pragma unroll
            for (int r = 0; r < 8; r++) {
                m_run[r] = -INFINITY;
                l_run[r] = 0.f;
            }
            new_req = true;
        }
    }
    // Nothing in flight here: the loop ends only after a request's last block, which waited.
}

} // namespace mla_decode_v2s
